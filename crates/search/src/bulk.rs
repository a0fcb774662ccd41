//! Parsing of `_bulk` NDJSON bodies into actions, in every shape erchef sends (with or without
//! `_type`, `{"delete":{... }}` with its odd spacing) and what ES client libraries send.

use serde_json::{Map, Value};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Index,
    Create,
    Delete,
    Update,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Index => "index",
            Op::Create => "create",
            Op::Delete => "delete",
            Op::Update => "update",
        }
    }
}

/// The indexed part of a source line. Other source fields are not indexed (Chef sends none).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Source {
    pub content: String,
    pub database: Option<String>,
    pub object_type: Option<String>,
    pub data_bag: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BulkItem {
    pub op: Op,
    pub index: String,
    pub id: String,
    pub doc_type: Option<String>,
    pub source: Option<Source>,
}

/// The fields of a source line Larder indexes; serde skips the rest without building a map
/// (source lines are tens of KB each).
#[derive(serde::Deserialize)]
struct RawSource {
    content: Option<Scalar>,
    #[serde(rename = "X_CHEF_database_CHEF_X")]
    database: Option<Scalar>,
    #[serde(rename = "X_CHEF_type_CHEF_X")]
    object_type: Option<Scalar>,
    data_bag: Option<Scalar>,
}

/// A string, or any other JSON value kept as its JSON text.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Other(Value),
}

impl Scalar {
    fn text(self) -> Option<String> {
        match self {
            Scalar::Text(s) => Some(s),
            Scalar::Other(Value::Null) => None,
            Scalar::Other(v) => Some(v.to_string()),
        }
    }
}

/// Reads a source object.
pub fn source(m: &Map<String, Value>) -> Source {
    let text = |k: &str| match m.get(k) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    };
    Source {
        content: text("content").unwrap_or_default(),
        database: text("X_CHEF_database_CHEF_X"),
        object_type: text("X_CHEF_type_CHEF_X"),
        data_bag: text("data_bag"),
    }
}

/// An id for documents indexed without one (ES generates them too).
pub fn generate_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:x}{:04x}",
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed) & 0xffff
    )
}

/// Parses a bulk body. A malformed line fails the whole request (ES answers 400 too).
pub fn parse(body: &[u8], default_index: Option<&str>) -> Result<Vec<BulkItem>, String> {
    let mut lines = body
        .split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, l)| l.iter().any(|b| !b.is_ascii_whitespace()));
    let mut items = Vec::new();
    while let Some((n, line)) = lines.next() {
        let action: Value = serde_json::from_slice(line)
            .map_err(|e| format!("Malformed action/metadata line [{}]: {e}", n + 1))?;
        let obj = action.as_object().filter(|o| o.len() == 1).ok_or_else(|| {
            format!(
                "Malformed action/metadata line [{}], expected one action",
                n + 1
            )
        })?;
        let (name, meta) = obj.iter().next().expect("one key");
        let op = match name.as_str() {
            "index" => Op::Index,
            "create" => Op::Create,
            "delete" => Op::Delete,
            "update" => Op::Update,
            other => {
                return Err(format!(
                    "Malformed action/metadata line [{}], expected one of [create, delete, index, update] but found [{other}]",
                    n + 1
                ))
            }
        };
        let meta = meta
            .as_object()
            .ok_or_else(|| format!("Malformed action/metadata line [{}]", n + 1))?;
        let s = |k: &str| meta.get(k).and_then(Value::as_str).map(str::to_string);
        let index = s("_index")
            .or_else(|| default_index.map(str::to_string))
            .ok_or_else(|| format!("action line [{}]: index is missing", n + 1))?;
        let id = match meta.get("_id") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(x)) => x.to_string(),
            _ if op == Op::Index || op == Op::Create => generate_id(),
            _ => return Err(format!("action line [{}]: id is missing", n + 1)),
        };
        let source = if op == Op::Delete {
            None
        } else {
            let (_, src) = lines
                .next()
                .ok_or_else(|| format!("action line [{}] has no source line", n + 1))?;
            let raw: RawSource = serde_json::from_slice(src).map_err(|e| {
                format!(
                    "Malformed source line after line [{}] (expected an object): {e}",
                    n + 1
                )
            })?;
            Some(Source {
                content: raw.content.and_then(Scalar::text).unwrap_or_default(),
                database: raw.database.and_then(Scalar::text),
                object_type: raw.object_type.and_then(Scalar::text),
                data_bag: raw.data_bag.and_then(Scalar::text),
            })
        };
        items.push(BulkItem {
            op,
            index,
            id,
            doc_type: s("_type"),
            source,
        });
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erchef_shapes() {
        let body = concat!(
            "{\"index\":{\"_type\":\"object\",\"_index\":\"chef\",\"_id\":\"a1\"}}\n",
            "{\"content\":\"k__=__v \",\"X_CHEF_id_CHEF_X\":\"a1\",\"X_CHEF_database_CHEF_X\":\"chef_o\",\"X_CHEF_type_CHEF_X\":\"role\"}\n",
            "{\"delete\":{\"_index\":\"chef\",\"_type\":\"object\",\"_id\":\"a2\" }}\n",
            "{\"index\":{\"_index\":\"chef\",\"_id\":\"a3\"}}\n",
            "{\"data_bag\":\"bag\",\"content\":\"x \",\"X_CHEF_id_CHEF_X\":\"a3\",\"X_CHEF_database_CHEF_X\":\"chef_o\",\"X_CHEF_type_CHEF_X\":\"data_bag_item\"}\n",
            "{\"delete\":{\"_index\":\"chef\",\"_id\":\"a4\" }}\n"
        );
        let items = parse(body.as_bytes(), None).unwrap();
        assert_eq!(items.len(), 4);
        assert_eq!(items[0].doc_type.as_deref(), Some("object"));
        assert_eq!(items[1].op, Op::Delete);
        assert_eq!(
            items[2].source.as_ref().unwrap().data_bag.as_deref(),
            Some("bag")
        );
        assert_eq!(items[3].id, "a4");
    }

    #[test]
    fn malformed() {
        assert!(parse(b"{\"index\":{\"_index\":\"chef\",\"_id\":\"x\"}}\n", None).is_err());
        assert!(parse(b"not json\n", None).is_err());
        assert!(parse(b"{\"frob\":{}}\n", None).is_err());
    }
}
