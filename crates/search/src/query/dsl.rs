//! The ES JSON request DSL subset: `query_string`, `bool` (must/filter/should/must_not),
//! `match_all`, `match_none`, `term(s)`, `ids`, `match`, `prefix`, `wildcard`, `exists`,
//! `constant_score`; plus the search request envelope (`from`, `size`, `sort`, `q=`).

use super::parser::{parse, parse_with_default_field};
use super::{Ast, Occur, Pat, QueryError};
use serde_json::{Map, Value};
use std::collections::HashMap;

/// Largest `from + size` accepted.
pub const MAX_RESULT_WINDOW: usize = 1_000_000;

/// Result ordering Larder supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortSpec {
    /// Relevance (the ES default when no sort is given).
    Score,
    /// By document id: `X_CHEF_id_CHEF_X` (what Chef sends) and `_id` are the same value for
    /// every Chef document, so both sort on the `_id` fast field.
    Id { descending: bool },
}

/// A parsed `_search` (or `_count`) request.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub query: Ast,
    pub from: usize,
    pub size: usize,
    pub sort: SortSpec,
    pub track_total_hits: bool,
}

fn bad(msg: impl Into<String>) -> QueryError {
    QueryError(msg.into())
}

/// Builds a search request from an optional JSON body and the URL parameters.
pub fn search_request(
    body: Option<&Value>,
    params: &HashMap<String, String>,
) -> Result<SearchRequest, QueryError> {
    let empty = Map::new();
    let obj = match body {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(m)) => m,
        Some(_) => return Err(bad("request body must be a JSON object")),
    };
    let mut query = match obj.get("query") {
        Some(q) => query(q)?,
        None => Ast::All,
    };
    if let Some(q) = params.get("q") {
        query = parse_with_default_field(q, params.get("df").map(String::as_str))?;
    }
    let num = |key: &str, default: usize| -> Result<usize, QueryError> {
        if let Some(p) = params.get(key) {
            return p
                .parse()
                .map_err(|_| bad(format!("[{key}] must be a non-negative integer")));
        }
        match obj.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .map(|n| n as usize)
                .ok_or_else(|| bad(format!("[{key}] must be a non-negative integer"))),
        }
    };
    let from = num("from", 0)?;
    let size = num("size", 10)?;
    // ES's index.max_result_window is 10,000; Chef pages deeper through big orgs, so allow more,
    // but refuse windows that would only exhaust memory.
    if from.saturating_add(size) > MAX_RESULT_WINDOW {
        return Err(bad(format!(
            "Result window is too large, from + size must be less than or equal to: [{MAX_RESULT_WINDOW}] but was [{}]",
            from.saturating_add(size)
        )));
    }
    let sort = match params.get("sort") {
        Some(s) => sort_param(s)?,
        None => match obj.get("sort") {
            None | Some(Value::Null) => SortSpec::Score,
            Some(v) => sort_body(v)?,
        },
    };
    let track_total_hits = !matches!(obj.get("track_total_hits"), Some(Value::Bool(false)));
    Ok(SearchRequest {
        query,
        from,
        size,
        sort,
        track_total_hits,
    })
}

fn sort_field(field: &str, order: &str) -> Result<SortSpec, QueryError> {
    let descending = match order {
        "asc" | "" => false,
        "desc" => true,
        o => return Err(bad(format!("unknown sort order [{o}]"))),
    };
    match field {
        "_score" => Ok(SortSpec::Score),
        "_id" | "X_CHEF_id_CHEF_X" | "_doc" => Ok(SortSpec::Id { descending }),
        f => Err(bad(format!(
            "No mapping found for [{f}] in order to sort on"
        ))),
    }
}

fn sort_param(s: &str) -> Result<SortSpec, QueryError> {
    let first = s.split(',').next().unwrap_or("");
    let (f, o) = first.split_once(':').unwrap_or((first, "asc"));
    sort_field(f, o)
}

fn sort_body(v: &Value) -> Result<SortSpec, QueryError> {
    // Only the first key decides; Chef sends exactly one.
    let first = match v {
        Value::Array(a) => match a.first() {
            Some(x) => x,
            None => return Ok(SortSpec::Score),
        },
        x => x,
    };
    match first {
        Value::String(f) => sort_field(f, "asc"),
        Value::Object(m) => {
            let (f, spec) = m.iter().next().ok_or_else(|| bad("empty sort object"))?;
            let order = match spec {
                Value::String(o) => o.as_str(),
                Value::Object(o) => o.get("order").and_then(Value::as_str).unwrap_or("asc"),
                _ => return Err(bad("malformed sort")),
            };
            sort_field(f, order)
        }
        _ => Err(bad("malformed sort")),
    }
}

fn one_or_many(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(a) => a.iter().collect(),
        x => vec![x],
    }
}

/// Single `{field: value}` or `{field: {value|query: v}}` pair of leaf queries.
fn field_value<'a>(
    name: &str,
    v: &'a Value,
    inner_key: &str,
) -> Result<(String, &'a Value), QueryError> {
    let m = v
        .as_object()
        .ok_or_else(|| bad(format!("[{name}] query malformed")))?;
    let (f, val) = m
        .iter()
        .next()
        .ok_or_else(|| bad(format!("[{name}] query needs a field")))?;
    let val = match val {
        Value::Object(o) => o
            .get(inner_key)
            .ok_or_else(|| bad(format!("[{name}] query needs [{inner_key}]")))?,
        x => x,
    };
    Ok((f.clone(), val))
}

fn scalar_text(v: &Value) -> Result<String, QueryError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(bad("expected a string value")),
    }
}

/// Translates one ES query object.
pub fn query(v: &Value) -> Result<Ast, QueryError> {
    let m = v
        .as_object()
        .ok_or_else(|| bad("query malformed, must start with an object"))?;
    if m.len() != 1 {
        return Err(bad("query malformed, expected exactly one query type"));
    }
    let (kind, body) = m.iter().next().expect("one key");
    match kind.as_str() {
        "match_all" => Ok(Ast::All),
        "match_none" => Ok(Ast::Nothing),
        "query_string" => {
            let q = body
                .get("query")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("[query_string] requires a string [query]"))?;
            match body.get("default_field").and_then(Value::as_str) {
                Some(df) if df != "*" => parse_with_default_field(q, Some(df)),
                _ => parse(q),
            }
        }
        "bool" => {
            let b = body.as_object().ok_or_else(|| bad("[bool] malformed"))?;
            let mut items = Vec::new();
            for (key, occ) in [
                ("must", Occur::Must),
                ("filter", Occur::Must),
                ("should", Occur::Should),
                ("must_not", Occur::MustNot),
            ] {
                if let Some(x) = b.get(key) {
                    for q in one_or_many(x) {
                        items.push((occ, query(q)?));
                    }
                }
            }
            if items.is_empty() {
                return Ok(Ast::All);
            }
            // With no must/filter, at least one should clause must match: ES and tantivy agree.
            Ok(Ast::Bool(items))
        }
        "constant_score" => query(
            body.get("filter")
                .ok_or_else(|| bad("[constant_score] requires [filter]"))?,
        ),
        "term" => {
            let (f, val) = field_value(kind, body, "value")?;
            Ok(Ast::Term {
                field: Some(f),
                text: scalar_text(val)?,
            })
        }
        "terms" => {
            let (f, vals) = field_value(kind, body, "value")?;
            let vals = vals
                .as_array()
                .ok_or_else(|| bad("[terms] needs an array"))?;
            let mut items = Vec::new();
            for v in vals {
                items.push((
                    Occur::Should,
                    Ast::Term {
                        field: Some(f.clone()),
                        text: scalar_text(v)?,
                    },
                ));
            }
            Ok(if items.is_empty() {
                Ast::Nothing
            } else {
                Ast::Bool(items)
            })
        }
        "ids" => {
            let vals = body
                .get("values")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("[ids] needs [values]"))?;
            let mut items = Vec::new();
            for v in vals {
                items.push((
                    Occur::Should,
                    Ast::Term {
                        field: Some("_id".into()),
                        text: scalar_text(v)?,
                    },
                ));
            }
            Ok(if items.is_empty() {
                Ast::Nothing
            } else {
                Ast::Bool(items)
            })
        }
        "match" => {
            let (f, val) = field_value(kind, body, "query")?;
            let text = scalar_text(val)?;
            let items: Vec<(Occur, Ast)> = if f == "content" {
                text.split_whitespace()
                    .map(|w| {
                        (
                            Occur::Should,
                            Ast::Term {
                                field: Some(f.clone()),
                                text: w.into(),
                            },
                        )
                    })
                    .collect()
            } else {
                vec![(
                    Occur::Should,
                    Ast::Term {
                        field: Some(f),
                        text,
                    },
                )]
            };
            Ok(if items.is_empty() {
                Ast::Nothing
            } else {
                Ast::Bool(items)
            })
        }
        "prefix" => {
            let (f, val) = field_value(kind, body, "value")?;
            let mut pattern: Vec<Pat> = scalar_text(val)?.chars().map(Pat::Lit).collect();
            pattern.push(Pat::Star);
            Ok(Ast::Wildcard {
                field: Some(f),
                pattern,
            })
        }
        "wildcard" => {
            let (f, val) = field_value(kind, body, "value")?;
            let pattern = scalar_text(val)?
                .chars()
                .map(|c| match c {
                    '*' => Pat::Star,
                    '?' => Pat::One,
                    c => Pat::Lit(c),
                })
                .collect();
            Ok(Ast::Wildcard {
                field: Some(f),
                pattern,
            })
        }
        "exists" => {
            let f = body
                .get("field")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("[exists] needs [field]"))?;
            Ok(Ast::Exists { field: f.into() })
        }
        other => Err(bad(format!("unknown query [{other}]"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chef_request_shape() {
        let body = json!({"stored_fields":"_id","from":0,"size":1000,
            "sort":[{"X_CHEF_id_CHEF_X":{"order":"asc"}}],
            "query":{"bool":{"must":{"query_string":{"lowercase_expanded_terms":false,"query":"content:name__=__web*"}},
                             "filter":{"query_string":{"lowercase_expanded_terms":false,"query":"+X_CHEF_type_CHEF_X:node"}}}}});
        let r = search_request(Some(&body), &HashMap::new()).unwrap();
        assert_eq!(r.size, 1000);
        assert_eq!(r.sort, SortSpec::Id { descending: false });
        assert!(matches!(r.query, Ast::Bool(ref v) if v.len() == 2));
    }

    #[test]
    fn rejects_unknown() {
        assert!(query(&json!({"frobnicate":{}})).is_err());
        assert!(search_request(Some(&json!({"sort":[{"title":"asc"}]})), &HashMap::new()).is_err());
    }
}
