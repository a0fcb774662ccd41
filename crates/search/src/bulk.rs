//! Parsing of `_bulk` NDJSON bodies into actions, in every shape erchef sends (with or without
//! `_type`, `{"delete":{... }}` with its odd spacing) and what ES client libraries send.

use serde::Deserialize;
use serde_json::{Map, Value};
use std::borrow::Cow;
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
/// `content` is kept only in its stored form ([`crate::codec`]), `None` when empty: it is
/// encoded while the source line is parsed, straight from the request body.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Source {
    pub content_z: Option<Vec<u8>>,
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
/// (source lines are tens of KB each). `content` borrows from the body when it has no escapes,
/// so the biggest field of a node document is never copied before it is encoded.
#[derive(serde::Deserialize)]
struct RawSource<'a> {
    #[serde(borrow)]
    content: Option<Scalar<'a>>,
    #[serde(borrow, rename = "X_CHEF_database_CHEF_X")]
    database: Option<Scalar<'a>>,
    #[serde(borrow, rename = "X_CHEF_type_CHEF_X")]
    object_type: Option<Scalar<'a>>,
    #[serde(borrow)]
    data_bag: Option<Scalar<'a>>,
}

/// A string (borrowed from the body when unescaped), or any other JSON value kept as its JSON
/// text; `Null` is no value.
enum Scalar<'a> {
    Text(Cow<'a, str>),
    Null,
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor(std::marker::PhantomData))
    }
}

struct ScalarVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> serde::de::Visitor<'de> for ScalarVisitor<'a> {
    type Value = Scalar<'a>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Text(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Text(Cow::Owned(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Text(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Text(Cow::Owned(v.to_string())))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Text(Cow::Owned(v.to_string())))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::Text(Cow::Owned(v.to_string())))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        // Through Value, so the text is what serde_json writes for the number.
        Ok(Scalar::Text(Cow::Owned(Value::from(v).to_string())))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, a: A) -> Result<Self::Value, A::Error> {
        let v = Value::deserialize(serde::de::value::SeqAccessDeserializer::new(a))?;
        Ok(Scalar::Text(Cow::Owned(v.to_string())))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, a: A) -> Result<Self::Value, A::Error> {
        let v = Value::deserialize(serde::de::value::MapAccessDeserializer::new(a))?;
        Ok(Scalar::Text(Cow::Owned(v.to_string())))
    }
}

impl<'a> Scalar<'a> {
    fn text(self) -> Option<String> {
        match self {
            Scalar::Text(s) => Some(s.into_owned()),
            Scalar::Null => None,
        }
    }
    fn encoded(self) -> Option<Vec<u8>> {
        match self {
            Scalar::Text(s) => crate::codec::encode_content(&s),
            Scalar::Null => None,
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
        content_z: text("content").and_then(|c| crate::codec::encode_content(&c)),
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

/// The non-blank lines of `body` with their 0-based numbers. The newlines are found with
/// memchr: source lines are tens of KB, and a byte-at-a-time split was a visible part of the
/// parsing time.
fn lines(body: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let mut start = 0;
    memchr::memchr_iter(b'\n', body)
        .chain(std::iter::once(body.len()))
        .enumerate()
        .map(move |(n, end)| {
            let line = &body[start..end];
            start = end + 1;
            (n, line)
        })
        .filter(|(_, l)| l.iter().any(|b| !b.is_ascii_whitespace()))
}

/// Parses a bulk body. A malformed line fails the whole request (ES answers 400 too), with the
/// error of the first malformed line.
pub fn parse(body: &[u8], default_index: Option<&str>) -> Result<Vec<BulkItem>, String> {
    let actions = parse_actions(body, default_index);
    let mut items = actions.items;
    for (item, source) in items.iter_mut().zip(parse_sources(&actions.sources)) {
        item.source = source?;
    }
    match actions.error {
        Some(e) => Err(e),
        None => Ok(items),
    }
}

/// The action lines of a body, parsed, with each item's source line still unparsed: the
/// cheap first pass over a body, which fixes the items and where their sources are.
pub struct Actions<'a> {
    /// The items up to the first malformed action line, without their sources.
    pub items: Vec<BulkItem>,
    /// Per item: the number of its action line and its source line (none for deletes).
    pub sources: Vec<SourceLine<'a>>,
    /// The first malformed action line's error (`items` stop before it). Malformed source lines
    /// before it come first in the body, so their errors are reported first.
    pub error: Option<String>,
}

/// An item's source line: the 0-based number of its action line and the line itself.
pub type SourceLine<'a> = (usize, Option<&'a [u8]>);

/// Parses the action lines of `body` (see [`Actions`]).
pub fn parse_actions<'a>(body: &'a [u8], default_index: Option<&str>) -> Actions<'a> {
    let mut lines = lines(body);
    let mut out = Actions {
        items: Vec::new(),
        sources: Vec::new(),
        error: None,
    };
    while let Some((n, line)) = lines.next() {
        match action(n, line, default_index, &mut lines) {
            Ok((item, source)) => {
                out.items.push(item);
                out.sources.push((n, source));
            }
            Err(e) => {
                out.error = Some(e);
                break;
            }
        }
    }
    out
}

/// Splits items into consecutive runs of at least `min_bytes` of source text (the last may have
/// less), as ranges of item numbers: the pieces in which a big body is parsed and written, so
/// that PostgreSQL stores the first piece while the next is parsed.
pub fn chunk_ranges(sources: &[SourceLine<'_>], min_bytes: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (k, (_, line)) in sources.iter().enumerate() {
        bytes += line.map_or(0, <[u8]>::len);
        if bytes >= min_bytes {
            out.push(start..k + 1);
            (start, bytes) = (k + 1, 0);
        }
    }
    if start < sources.len() {
        out.push(start..sources.len());
    }
    out
}

/// Parses an action line (`n` is its 0-based number) into an item without its source, and
/// takes the source line that follows it when the action has one.
fn action<'a>(
    n: usize,
    line: &[u8],
    default_index: Option<&str>,
    lines: &mut impl Iterator<Item = (usize, &'a [u8])>,
) -> Result<(BulkItem, Option<&'a [u8]>), String> {
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
        Some(src)
    };
    let item = BulkItem {
        op,
        index,
        id,
        doc_type: s("_type"),
        source: None,
    };
    Ok((item, source))
}

/// Parses and encodes the source lines, in order (encoding the content is most of a bulk's
/// CPU work). One thread per request is enough: a big body is parsed piece by piece while
/// PostgreSQL stores the previous piece ([`chunk_ranges`]), which keeps a second core busy.
pub fn parse_sources(lines: &[SourceLine<'_>]) -> Vec<Result<Option<Source>, String>> {
    lines
        .iter()
        .map(|(n, line)| line.map(|l| source_line(*n, l)).transpose())
        .collect()
}

/// Parses the source line of the action on line `n`, encoding its content.
fn source_line(n: usize, line: &[u8]) -> Result<Source, String> {
    let raw: RawSource = serde_json::from_slice(line).map_err(|e| {
        format!(
            "Malformed source line after line [{}] (expected an object): {e}",
            n + 1
        )
    })?;
    Ok(Source {
        content_z: raw.content.and_then(Scalar::encoded),
        database: raw.database.and_then(Scalar::text),
        object_type: raw.object_type.and_then(Scalar::text),
        data_bag: raw.data_bag.and_then(Scalar::text),
    })
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
    fn line_numbers_and_blank_lines() {
        let ls: Vec<_> = lines(b"a\n\n  \nb\r\nc").collect();
        assert_eq!(ls, vec![(0, &b"a"[..]), (3, &b"b\r"[..]), (4, &b"c"[..])]);
        assert_eq!(lines(b"").count(), 0);
        assert_eq!(lines(b"x\n").count(), 1);
    }

    #[test]
    fn source_values() {
        let body = concat!(
            "{\"index\":{\"_index\":\"chef\",\"_id\":\"a\"}}\n",
            "{\"content\":\"k__=__v\\u0041 x\",\"X_CHEF_database_CHEF_X\":7,\"X_CHEF_type_CHEF_X\":null,\"data_bag\":[1,{\"b\":true}]}\n",
            "{\"index\":{\"_index\":\"chef\",\"_id\":\"b\"}}\n",
            "{\"content\":\"\",\"data_bag\":1.5}\n",
        );
        let items = parse(body.as_bytes(), None).unwrap();
        let s = items[0].source.as_ref().unwrap();
        let z = s.content_z.as_deref().unwrap();
        assert_eq!(crate::codec::decode(z).unwrap(), "k__=__vA x");
        assert_eq!(s.database.as_deref(), Some("7"));
        assert_eq!(s.object_type, None);
        assert_eq!(s.data_bag.as_deref(), Some("[1,{\"b\":true}]"));
        let s = items[1].source.as_ref().unwrap();
        assert_eq!(s.content_z, None);
        assert_eq!(s.data_bag.as_deref(), Some("1.5"));
    }

    #[test]
    fn big_bodies_parse_and_report_the_first_error() {
        let doc = |i: usize| {
            format!(
                "{{\"index\":{{\"_index\":\"chef\",\"_id\":\"d{i}\"}}}}\n{{\"content\":\"{}\",\"X_CHEF_type_CHEF_X\":\"node\"}}\n",
                format!("k{i}__=__v ").repeat(2000)
            )
        };
        let body: String = (0..200).map(doc).collect();
        let items = parse(body.as_bytes(), None).unwrap();
        assert_eq!(items.len(), 200);
        for (i, it) in items.iter().enumerate() {
            assert_eq!(it.id, format!("d{i}"));
            let z = it.source.as_ref().unwrap().content_z.as_deref().unwrap();
            assert_eq!(
                crate::codec::decode(z).unwrap(),
                format!("k{i}__=__v ").repeat(2000)
            );
        }
        // A bad source line (line 120) before a bad action line (line 301): the source's error.
        let mut lines: Vec<String> = body.lines().map(str::to_string).collect();
        lines[119] = "{\"content\": nope}".into();
        lines[300] = "{\"frob\":{}}".into();
        let err = parse(lines.join("\n").as_bytes(), None).unwrap_err();
        assert!(err.contains("after line [119]"), "{err}");
        lines[119] = body.lines().nth(119).unwrap().to_string();
        let err = parse(lines.join("\n").as_bytes(), None).unwrap_err();
        assert!(err.contains("line [301]"), "{err}");
    }

    #[test]
    fn chunk_ranges_cover_every_item_once() {
        let (a, b) = (vec![b'x'; 600], vec![b'y'; 300]);
        let s: Vec<SourceLine> = vec![
            (0, Some(&a[..])),
            (2, None),
            (3, Some(&b[..])),
            (5, Some(&b[..])),
            (7, Some(&a[..])),
            (9, None),
        ];
        assert_eq!(chunk_ranges(&s, 800), vec![0..3, 3..5, 5..6]);
        assert_eq!(chunk_ranges(&s, 1), vec![0..1, 1..3, 3..4, 4..5, 5..6]);
        assert_eq!(chunk_ranges(&s, usize::MAX), vec![0..6]);
        assert!(chunk_ranges(&[], 10).is_empty());
    }

    #[test]
    fn malformed() {
        assert!(parse(b"{\"index\":{\"_index\":\"chef\",\"_id\":\"x\"}}\n", None).is_err());
        assert!(parse(b"not json\n", None).is_err());
        assert!(parse(b"{\"frob\":{}}\n", None).is_err());
    }
}
