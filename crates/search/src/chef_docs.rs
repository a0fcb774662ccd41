//! Search documents from Chef Infra Server's own database (`opscode_chef`), as erchef indexes
//! them: used when a cluster is built from a Chef Backend `pg_dumpall`, whose search index
//! lived in Elasticsearch and is not in the dump.
//!
//! erchef stores each object's JSON in `serialized_object`, gzip-compressed for most object
//! types (plain JSON in some older rows), and indexes a node with its four attribute levels
//! deep-merged to the top (default < normal < override < automatic) plus its name,
//! environment, run list and the recipes and roles named in it.

use serde_json::{Map, Value};
use std::io::Read;

/// The JSON of a `serialized_object` column: gzip-compressed or plain.
pub fn decode_serialized(bytes: &[u8]) -> Result<Value, String> {
    let text = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = String::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_string(&mut out)
            .map_err(|e| format!("not valid gzip data: {e}"))?;
        out
    } else {
        String::from_utf8(bytes.to_vec()).map_err(|_| "neither gzip nor UTF-8 JSON".to_string())?
    };
    serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))
}

/// `b` merged into `a`: objects key by key, anything else replaced.
fn deep_merge(a: &mut Value, b: &Value) {
    match (a, b) {
        (Value::Object(am), Value::Object(bm)) => {
            for (k, v) in bm {
                deep_merge(am.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b.clone(),
    }
}

/// A node as erchef indexes it (attributes merged to the top level).
pub fn node_for_index(node: &Value) -> Value {
    let mut merged = Value::Object(Map::new());
    for level in ["default", "normal", "override", "automatic"] {
        if let Some(attrs) = node.get(level) {
            deep_merge(&mut merged, attrs);
        }
    }
    let Value::Object(m) = &mut merged else {
        unreachable!("starts as an object and objects merge into objects")
    };
    let run_list: Vec<String> = node
        .get("run_list")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let named = |kind: &str| -> Value {
        run_list
            .iter()
            .filter_map(|i| {
                i.strip_prefix(&format!("{kind}["))
                    .and_then(|r| r.strip_suffix(']'))
            })
            .map(|s| Value::String(s.to_string()))
            .collect()
    };
    m.insert("recipe".into(), named("recipe"));
    m.insert("role".into(), named("role"));
    for key in [
        "name",
        "chef_environment",
        "run_list",
        "policy_name",
        "policy_group",
    ] {
        if let Some(v) = node.get(key) {
            m.insert(key.into(), v.clone());
        }
    }
    m.insert("chef_type".into(), Value::String("node".into()));
    merged
}

/// A data bag item as erchef indexes it (its raw data plus the bag's name).
pub fn data_bag_item_for_index(bag: &str, item: &Value) -> Value {
    let mut out = item
        .get("raw_data")
        .cloned()
        .unwrap_or_else(|| item.clone());
    if let Value::Object(m) = &mut out {
        m.insert("data_bag".into(), Value::String(bag.into()));
        m.insert("chef_type".into(), Value::String("data_bag_item".into()));
    }
    out
}

/// The two `_bulk` lines that index one object (`database` is erchef's `chef_<org id>`).
pub fn bulk_lines(
    id: &str,
    database: &str,
    object_type: &str,
    data_bag: Option<&str>,
    object: &Value,
) -> String {
    let mut source = serde_json::json!({
        "X_CHEF_id_CHEF_X": id,
        "X_CHEF_database_CHEF_X": database,
        "X_CHEF_type_CHEF_X": object_type,
        "content": crate::flatten_chef(id, database, object_type, object),
    });
    if let Some(bag) = data_bag {
        source["data_bag"] = Value::String(bag.into());
    }
    format!(
        "{}\n{source}\n",
        serde_json::json!({"index": {"_index": crate::api::INDEX, "_id": id}})
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::Write;

    #[test]
    fn gzip_and_plain_objects_decode() {
        let obj = json!({"name": "web1"});
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(obj.to_string().as_bytes()).unwrap();
        assert_eq!(decode_serialized(&gz.finish().unwrap()).unwrap(), obj);
        assert_eq!(decode_serialized(br#"{"name":"web1"}"#).unwrap(), obj);
        assert!(decode_serialized(&[0x1f, 0x8b, 0, 1]).is_err());
        assert!(decode_serialized(b"not json").is_err());
    }

    #[test]
    fn nodes_are_indexed_with_merged_attributes_and_run_list_parts() {
        let node = json!({
            "name": "web1", "chef_environment": "prod", "json_class": "Chef::Node",
            "run_list": ["recipe[nginx]", "role[base]"],
            "default": {"port": 80, "tags": {"a": 1}},
            "normal": {"tags": {"b": 2}},
            "override": {"port": 8080},
            "automatic": {"platform": "debian"}
        });
        let d = node_for_index(&node);
        assert_eq!(d["port"], 8080);
        assert_eq!(d["tags"], json!({"a": 1, "b": 2}));
        assert_eq!(d["platform"], "debian");
        assert_eq!(d["recipe"], json!(["nginx"]));
        assert_eq!(d["role"], json!(["base"]));
        assert_eq!(d["chef_type"], "node");
        let lines = bulk_lines("abc", "chef_org", "node", None, &d);
        let mut it = lines.lines();
        let action: Value = serde_json::from_str(it.next().unwrap()).unwrap();
        assert_eq!(action["index"]["_id"], "abc");
        let source: Value = serde_json::from_str(it.next().unwrap()).unwrap();
        let content = source["content"].as_str().unwrap();
        for t in [
            "name__=__web1",
            "platform__=__debian",
            "recipe__=__nginx",
            "X_CHEF_type_CHEF_X__=__node",
        ] {
            assert!(content.contains(t), "{t} missing from {content}");
        }
    }

    #[test]
    fn data_bag_items_carry_their_bag() {
        let item = json!({"raw_data": {"id": "alice", "shell": "zsh"}, "data_bag": "users"});
        let d = data_bag_item_for_index("users", &item);
        assert_eq!(d["shell"], "zsh");
        let lines = bulk_lines("x", "chef_org", "data_bag_item", Some("users"), &d);
        assert!(lines.contains("\"data_bag\":\"users\""), "{lines}");
    }
}
