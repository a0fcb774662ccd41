//! The fast paths give exactly what the generic ones give:
//! - id-ordered pages (`id_order::IdPage`, global id ranks across segments) against every
//!   matching id read from the stored `_id` and sorted in Rust, for many offsets, sizes and
//!   both directions, on an index of several segments with updated and deleted documents;
//! - trailing-`*` wildcards (term-dictionary range) against tantivy's regex query.

use larder_search::index::{CommitMeta, LocalIndex, SCHEMA_VERSION};
use larder_search::indexer;
use larder_search::log::LogRow;
use larder_search::query::dsl::SortSpec;
use larder_search::query::parser::parse;
use std::collections::BTreeSet;
use tantivy::collector::DocSetCollector;
use tantivy::query::RegexQuery;

const KINDS: [&str; 6] = ["web", "db", "app", "wéb", "webster", "w"];
const ENVS: [&str; 3] = ["prod", "dev", "prodx"];

fn row(pos: i64, i: usize, generation: usize) -> LogRow {
    let id = format!("{}-{:04}", KINDS[i % KINDS.len()], (i * 7919) % 1000);
    let env = ENVS[(i / 7 + generation) % ENVS.len()];
    let role = if i.is_multiple_of(3) { "base" } else { "other" };
    LogRow {
        pos,
        content: format!(
            "X_CHEF_id_CHEF_X__=__{id} chef_environment__=__{env} name__=__{id} role__=__{role} gen__=__{generation} "
        ),
        id,
        deleted: false,
        database: Some("chef_o".into()),
        object_type: Some("node".into()),
        data_bag: None,
    }
}

/// ~360 live documents in 5 segments: later segments re-index some ids (the old copies are
/// deleted in earlier segments) and delete others.
fn build(dir: &std::path::Path) -> LocalIndex {
    let ix = LocalIndex::create_fresh(dir).unwrap();
    let mut w: tantivy::IndexWriter = ix.index.writer_with_num_threads(1, 20_000_000).unwrap();
    w.set_merge_policy(Box::new(tantivy::indexer::NoMergePolicy));
    let (tx, _rx) = tokio::sync::watch::channel(0);
    let mut pos = 0;
    for generation in 0..5 {
        let mut rows = Vec::new();
        let range = match generation {
            0 => 0..200,
            1 => 150..300,
            2 => 290..400,
            3 => 0..40,
            _ => 380..420,
        };
        for i in range {
            pos += 1;
            let mut r = row(pos, i, generation);
            if generation == 4 && i.is_multiple_of(2) {
                r.deleted = true;
            }
            rows.push(r);
        }
        // Some deletes of ids living in older segments.
        if generation == 3 {
            for i in (100..180).step_by(9) {
                pos += 1;
                let mut r = row(pos, i, generation);
                r.deleted = true;
                rows.push(r);
            }
        }
        indexer::apply(&ix, &w, &rows).unwrap();
        let meta = CommitMeta {
            applied_position: pos,
            log_epoch: "t".into(),
            schema_version: SCHEMA_VERSION,
            log_generation: 0,
        };
        indexer::commit(&ix, &mut w, &meta, &tx).unwrap();
    }
    assert!(ix.reader.searcher().segment_readers().len() >= 4);
    ix
}

#[test]
fn id_pages_match_sorted_matching_ids() {
    let dir = tempfile::tempdir().unwrap();
    let ix = build(dir.path());
    let queries = [
        "*:*",
        "content:name__=__web*",
        "content:name__=__w*",
        "content:role__=__base AND content:chef_environment__=__prod",
        "content:chef_environment__=__prod*",
        "X_CHEF_id_CHEF_X:web*",
        "content:name__=__w?b*",
        "NOT content:role__=__base",
        "content:nothing__=__here",
    ];
    for q in queries {
        let ast = parse(q).unwrap();
        let mut all = ix.matching_ids(&ast).unwrap();
        all.sort();
        let n = all.len();
        let froms = [
            0,
            1,
            5,
            63,
            64,
            65,
            128,
            n / 2,
            n.saturating_sub(1),
            n,
            n + 3,
        ];
        for descending in [false, true] {
            let mut want_all = all.clone();
            if descending {
                want_all.reverse();
            }
            for from in froms {
                for size in [1, 7, 64, 100, 1000] {
                    let (total, hits) = ix
                        .search(&ast, from, size, SortSpec::Id { descending })
                        .unwrap();
                    let got: Vec<String> = hits.into_iter().map(|h| h.id).collect();
                    let want: Vec<String> =
                        want_all.iter().skip(from).take(size).cloned().collect();
                    assert_eq!(total, n, "{q}: total");
                    assert_eq!(
                        got, want,
                        "{q}: from {from} size {size} descending {descending}"
                    );
                }
            }
        }
    }
    // Sanity of the corpus: every live id once, none of the deleted ones.
    let ast = parse("*:*").unwrap();
    let ids = ix.matching_ids(&ast).unwrap();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "an id is live twice");
    assert!(ids.len() > 300 && ids.len() < 420, "{}", ids.len());
}

#[test]
fn prefix_wildcards_match_the_regex_path() {
    let dir = tempfile::tempdir().unwrap();
    let ix = build(dir.path());
    let searcher = ix.reader.searcher();
    let f = ix.fields;
    let cases = [
        ("content", "name__=__web", "name__=__web.*"),
        ("content", "name__=__w", "name__=__w.*"),
        ("content", "name__=__wé", "name__=__wé.*"),
        (
            "content",
            "chef_environment__=__prod",
            "chef_environment__=__prod.*",
        ),
        ("content", "zzz", "zzz.*"),
        ("content", "n", "n.*"),
        ("X_CHEF_id_CHEF_X", "web", "web.*"),
        ("_id", "db-", "db\\-.*"),
    ];
    for (field, prefix, re) in cases {
        let query = format!("{field}:{}*", prefix.replace('-', "\\-"));
        let ast = parse(&query).unwrap();
        let fast = larder_search::query::build::build(&ast, &f).unwrap();
        let field = if field == "content" {
            f.content
        } else {
            f.keyword(field).unwrap()
        };
        let slow = RegexQuery::from_pattern(re, field).unwrap();
        let got = searcher.search(&fast, &DocSetCollector).unwrap();
        let want = searcher.search(&slow, &DocSetCollector).unwrap();
        assert_eq!(got, want, "{query}");
        if prefix != "zzz" {
            assert!(!want.is_empty(), "{query} should match something");
        }
    }
}
