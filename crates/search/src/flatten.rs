//! Chef's flattening of an object into the `content` string (the form erchef sends in `_bulk`).
//!
//! Larder does not need this to serve requests (frontends send `content` already flattened);
//! it is the reference used by tests and the benchmark to build realistic documents.

use serde_json::Value;
use std::collections::BTreeSet;

/// Flattens a Chef object with its three `X_CHEF_*` meta fields prepended.
///
/// `database` is the full database name as erchef writes it (`chef_<orgguid>`).
pub fn flatten_chef(id: &str, database: &str, object_type: &str, object: &Value) -> String {
    let mut tokens = BTreeSet::new();
    add(&mut tokens, "X_CHEF_database_CHEF_X", "", database);
    add(&mut tokens, "X_CHEF_id_CHEF_X", "", id);
    add(&mut tokens, "X_CHEF_type_CHEF_X", "", object_type);
    walk(&mut tokens, &[], object);
    join(tokens)
}

/// Flattens an arbitrary JSON object (no meta fields).
pub fn flatten(object: &Value) -> String {
    let mut tokens = BTreeSet::new();
    walk(&mut tokens, &[], object);
    join(tokens)
}

fn join(tokens: BTreeSet<String>) -> String {
    // Sorted, de-duplicated, each followed by a space (so the string ends with one).
    let mut out = String::with_capacity(tokens.iter().map(|t| t.len() + 1).sum());
    for t in tokens {
        out.push_str(&t);
        out.push(' ');
    }
    out
}

fn add(tokens: &mut BTreeSet<String>, full: &str, leaf: &str, value: &str) {
    tokens.insert(format!("{full}__=__{value}"));
    if !leaf.is_empty() && leaf != full {
        tokens.insert(format!("{leaf}__=__{value}"));
    }
}

fn walk(tokens: &mut BTreeSet<String>, path: &[&str], value: &Value) {
    let full = path.join("_");
    let leaf = path.last().copied().unwrap_or("");
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                // A key is also a value of its parent path.
                if !path.is_empty() {
                    add(tokens, &full, leaf, k);
                }
                let mut child = path.to_vec();
                child.push(k);
                walk(tokens, &child, v);
            }
        }
        Value::Array(items) => {
            for item in items {
                walk(tokens, path, item);
            }
        }
        _ if path.is_empty() => {}
        Value::String(s) => add(tokens, &full, leaf, s),
        Value::Number(n) => add(tokens, &full, leaf, &n.to_string()),
        Value::Bool(b) => add(tokens, &full, leaf, if *b { "true" } else { "false" }),
        Value::Null => add(tokens, &full, leaf, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reference_example() {
        let got = flatten_chef(
            "a1",
            "chef_db1",
            "role",
            &json!({"key1":"value1","key2":"value-2"}),
        );
        assert_eq!(
            got,
            "X_CHEF_database_CHEF_X__=__chef_db1 X_CHEF_id_CHEF_X__=__a1 X_CHEF_type_CHEF_X__=__role key1__=__value1 key2__=__value-2 "
        );
    }

    #[test]
    fn nested_keys_arrays_scalars() {
        let got = flatten(&json!({"a":{"b":"v"},"l":[1,true,null],"x":{"y":{"z":2.5}}}));
        let toks: Vec<&str> = got.split(' ').filter(|t| !t.is_empty()).collect();
        for want in [
            "a__=__b",
            "a_b__=__v",
            "b__=__v",
            "l__=__1",
            "l__=__true",
            "l__=__",
            "x__=__y",
            "x_y__=__z",
            "y__=__z",
            "x_y_z__=__2.5",
            "z__=__2.5",
        ] {
            assert!(toks.contains(&want), "missing {want} in {got}");
        }
        assert!(got.ends_with(' '));
    }
}
