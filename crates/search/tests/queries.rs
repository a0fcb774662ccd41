//! The query language test set: ≥ 60 Lucene queries (in the form Chef's frontend sends after
//! rewriting) against a small corpus of flattened Chef objects, each with its expected id set
//! worked out by hand from the documents below.

use larder_search::flatten_chef;
use larder_search::index::LocalIndex;
use larder_search::indexer;
use larder_search::log::LogRow;
use larder_search::query::dsl::SortSpec;
use larder_search::query::parser::parse;
use serde_json::json;
use std::collections::BTreeSet;

fn corpus() -> Vec<(
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    serde_json::Value,
)> {
    vec![
        (
            "n1",
            "chef_org1",
            "node",
            None,
            json!({"name":"web1","chef_environment":"prod","run_list":["role[base]","role[webserver]"],"roles":["base","webserver"],"ipaddress":"10.0.0.1","platform":"ubuntu","platform_version":"20.04","memory":{"total":"2048kB"},"tags":["frontend","blue"],"description":"front end web server"}),
        ),
        (
            "n2",
            "chef_org1",
            "node",
            None,
            json!({"name":"web2","chef_environment":"staging","roles":["base","webserver"],"ipaddress":"10.0.0.2","platform":"ubuntu","platform_version":"22.04","tags":["frontend"]}),
        ),
        (
            "n3",
            "chef_org1",
            "node",
            None,
            json!({"name":"db1","chef_environment":"prod","roles":["base","database"],"ipaddress":"10.0.1.1","platform":"centos","platform_version":"7.9","path":"/var/lib/pgsql"}),
        ),
        (
            "n4",
            "chef_org1",
            "node",
            None,
            json!({"name":"db2","chef_environment":"dev","roles":["database"],"ipaddress":"10.0.1.2","platform":"centos","platform_version":"8.5","tags":[]}),
        ),
        (
            "n5",
            "chef_org1",
            "node",
            None,
            json!({"name":"Web3","chef_environment":"prod","roles":["base"],"ipaddress":"192.168.1.5","platform":"debian","platform_version":"12","note":"a:b (x) [y] \"q\" plus+minus-"}),
        ),
        (
            "r1",
            "chef_org1",
            "role",
            None,
            json!({"name":"base","description":"base role for all"}),
        ),
        (
            "r2",
            "chef_org1",
            "role",
            None,
            json!({"name":"webserver","description":"serves web pages fast"}),
        ),
        (
            "e1",
            "chef_org1",
            "environment",
            None,
            json!({"name":"prod","description":"production"}),
        ),
        (
            "d1",
            "chef_org1",
            "data_bag_item",
            Some("users"),
            json!({"id":"alice","shell":"/bin/bash","uid":1001}),
        ),
        (
            "d2",
            "chef_org1",
            "data_bag_item",
            Some("users"),
            json!({"id":"bob","shell":"/bin/zsh","uid":1002}),
        ),
        (
            "d3",
            "chef_org1",
            "data_bag_item",
            Some("secrets"),
            json!({"id":"db_pass","value":"hunter2"}),
        ),
        (
            "c1",
            "chef_org1",
            "client",
            None,
            json!({"name":"web1-client","admin":false}),
        ),
        (
            "x1",
            "chef_org2",
            "node",
            None,
            json!({"name":"web1","chef_environment":"prod","roles":["base"]}),
        ),
    ]
}

fn build_index(dir: &std::path::Path) -> LocalIndex {
    let ix = LocalIndex::create_fresh(dir).unwrap();
    let rows: Vec<LogRow> = corpus()
        .into_iter()
        .enumerate()
        .map(|(i, (id, db, ty, bag, obj))| LogRow {
            pos: i as i64 + 1,
            id: id.into(),
            deleted: false,
            database: Some(db.into()),
            object_type: Some(ty.into()),
            data_bag: bag.map(str::to_string),
            content: flatten_chef(id, db, ty, &obj),
        })
        .collect();
    let mut w: tantivy::IndexWriter = ix.index.writer_with_num_threads(1, 20_000_000).unwrap();
    indexer::apply(&ix, &w, &rows).unwrap();
    let (tx, _rx) = tokio::sync::watch::channel(0);
    let meta = larder_search::index::CommitMeta {
        applied_position: rows.len() as i64,
        log_epoch: "t".into(),
        schema_version: larder_search::index::SCHEMA_VERSION,
        log_generation: 0,
    };
    indexer::commit(&ix, &mut w, &meta, &tx).unwrap();
    ix
}

const ALL: &str = "n1 n2 n3 n4 n5 r1 r2 e1 d1 d2 d3 c1 x1";
const NON_NODES: &str = "r1 r2 e1 d1 d2 d3 c1";

/// (query, expected ids separated by spaces)
fn cases() -> Vec<(&'static str, &'static str)> {
    vec![
        // match all / field exists
        ("*:*", ALL),
        ("content:*", ALL),
        ("_exists_:data_bag", "d1 d2 d3"),
        // fielded terms, exact and case-sensitive tokens
        ("content:name__=__web1", "n1 x1"),
        ("content:name__=__Web3", "n5"),
        ("content:name__=__web3", ""),
        ("content:chef_environment__=__prod", "n1 n3 n5 x1"),
        ("content:memory_total__=__2048kB", "n1"),
        ("content:total__=__2048kB", "n1"),
        ("content:memory__=__total", "n1"),
        ("content:uid__=__1001 OR content:uid__=__1002", "d1 d2"),
        ("content:admin__=__false", "c1"),
        // keyword fields
        ("X_CHEF_type_CHEF_X:role", "r1 r2"),
        ("X_CHEF_database_CHEF_X:chef_org2", "x1"),
        ("+X_CHEF_database_CHEF_X:chef_org1 +X_CHEF_type_CHEF_X:node", "n1 n2 n3 n4 n5"),
        ("data_bag:users", "d1 d2"),
        ("_id:d1", "d1"),
        ("X_CHEF_id_CHEF_X:n*", "n1 n2 n3 n4 n5"),
        // bare terms search every field
        ("node", "n1 n2 n3 n4 n5 x1"),
        ("chef_org2", "x1"),
        // wildcards * and ? anywhere
        ("content:name__=__web*", "n1 n2 x1 c1 r2"),
        ("content:name__=__Web*", "n5"),
        ("content:name__=__web?", "n1 n2 x1"),
        ("content:name__=__w?b*", "n1 n2 x1 c1 r2"),
        ("content:name__=__*1", "n1 x1 n3"),
        ("content:*__=__prod", "n1 n3 n5 x1 e1"),
        ("content:*erver", "n1 n2 r2"),
        ("content:ipaddress__=__10.0.*", "n1 n2 n3 n4"),
        ("content:ipaddress__=__10.0.?.1", "n1 n3"),
        ("content:shell__=__/bin/*", "d1 d2"),
        ("data_bag:u*", "d1 d2"),
        ("content:platform_version__=__*", "n1 n2 n3 n4 n5"),
        ("content:name__=__\\*", ""),
        // phrases
        ("content:\"description__=__serves web pages\"", "r2"),
        ("content:\"description__=__serves pages\"", ""),
        ("content:\"description__=__serves pages\"~1", "r2"),
        ("content:\"description__=__front end\"", "n1"),
        ("content:\"name__=__web1\"", "n1 x1"),
        // ranges: inclusive, exclusive, mixed, open (rewritten with \u{fff0} / empty value)
        ("content:[platform_version__=__20 TO platform_version__=__7]", "n1 n2"),
        ("content:[platform_version__=__20.04 TO platform_version__=__22.04]", "n1 n2"),
        ("content:{platform_version__=__20.04 TO platform_version__=__22.04}", ""),
        ("content:[platform_version__=__20.04 TO platform_version__=__22.04}", "n1"),
        ("content:{platform_version__=__20.04 TO platform_version__=__22.04]", "n2"),
        ("content:[platform_version__=__7 TO platform_version__=__\u{fff0}]", "n3 n4"),
        ("content:[platform_version__= TO platform_version__=__2]", "n5"),
        ("X_CHEF_type_CHEF_X:[node TO *]", "n1 n2 n3 n4 n5 x1 r1 r2"),
        ("X_CHEF_type_CHEF_X:[* TO data_bag_item]", "c1 d1 d2 d3"),
        ("X_CHEF_type_CHEF_X:{client TO environment}", "d1 d2 d3"),
        // boolean operators, symbols, modifiers
        ("content:roles__=__base AND content:chef_environment__=__prod", "n1 n3 n5 x1"),
        ("content:roles__=__base && content:chef_environment__=__prod", "n1 n3 n5 x1"),
        ("content:roles__=__database OR content:name__=__web2", "n2 n3 n4"),
        ("content:roles__=__database || content:name__=__web2", "n2 n3 n4"),
        ("content:name__=__web1 content:name__=__db1", "n1 x1 n3"),
        ("content:roles__=__base AND NOT content:chef_environment__=__prod", "n2"),
        ("content:roles__=__base AND !content:chef_environment__=__prod", "n2"),
        ("+content:roles__=__base -content:chef_environment__=__prod", "n2"),
        ("content:roles__=__base AND content:roles__=__webserver AND content:tags__=__blue", "n1"),
        // pure negative
        ("NOT X_CHEF_type_CHEF_X:node", NON_NODES),
        ("-X_CHEF_type_CHEF_X:node", NON_NODES),
        ("!X_CHEF_type_CHEF_X:node", NON_NODES),
        ("NOT (content:roles__=__base OR content:roles__=__database)", NON_NODES),
        ("-content:roles__=__base -content:roles__=__database", NON_NODES),
        // groups
        ("content:(roles__=__database OR name__=__web2)", "n2 n3 n4"),
        ("content:(+roles__=__base -chef_environment__=__prod)", "n2"),
        ("(content:name__=__web1 OR content:name__=__db1) AND X_CHEF_database_CHEF_X:chef_org1", "n1 n3"),
        ("((content:name__=__web1))", "n1 x1"),
        ("content:tags__=__frontend AND (content:tags__=__blue OR content:platform_version__=__22.04)", "n1 n2"),
        // escapes
        ("content:note__=__a\\:b", "n5"),
        ("content:\\(x\\)", "n5"),
        ("content:\\[y\\]", "n5"),
        ("content:\\\"q\\\"", "n5"),
        ("content:plus+minus-", "n5"),
        ("content:plus\\+minus\\-", "n5"),
        ("content:path__=__\\/var\\/lib\\/pgsql", "n3"),
        ("content:path__=__/var/lib/pgsql", "n3"),
        ("+data_bag:users +content:shell__=__\\/bin\\/bash", "d1"),
        // fuzzy (accepted; Lucene edit distances)
        ("content:name__=__web1~1", "n1 n2 x1"),
        ("content:name__=__web1~0.9", "n1 n2 x1"),
        ("content:name__=__web1~0", "n1 x1"),
        // boosts (accepted, do not change the match set)
        ("content:roles__=__base^2", "n1 n2 n3 n5 x1"),
        ("(content:roles__=__base OR content:roles__=__database)^3 AND content:platform__=__centos", "n3 n4"),
        ("content:\"name__=__web1\"^1.5 OR content:name__=__db2", "n1 x1 n4"),
        // unknown fields match nothing (unmapped in ES)
        ("nosuchfield:value", ""),
    ]
}

#[test]
fn query_set() {
    let dir = tempfile::tempdir().unwrap();
    let ix = build_index(&dir.path().join("ix"));
    let cases = cases();
    assert!(cases.len() >= 60, "only {} queries", cases.len());
    let mut failures = Vec::new();
    for (q, want) in &cases {
        let want: BTreeSet<String> = want.split_whitespace().map(str::to_string).collect();
        let ast = match parse(q) {
            Ok(a) => a,
            Err(e) => {
                failures.push(format!("{q}: parse error {e}"));
                continue;
            }
        };
        let (total, hits) = ix
            .search(&ast, 0, 100, SortSpec::Id { descending: false })
            .unwrap();
        let got: BTreeSet<String> = hits.iter().map(|h| h.id.clone()).collect();
        if got != want || total != want.len() {
            failures.push(format!("{q}: want {want:?}, got {got:?} (total {total})"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} queries wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn sorted_and_paged() {
    let dir = tempfile::tempdir().unwrap();
    let ix = build_index(&dir.path().join("ix"));
    let ast = parse("*:*").unwrap();
    let (total, page) = ix
        .search(&ast, 2, 3, SortSpec::Id { descending: false })
        .unwrap();
    assert_eq!(total, 13);
    let ids: Vec<&str> = page.iter().map(|h| h.id.as_str()).collect();
    // sorted: c1 d1 d2 d3 e1 n1 n2 ...
    assert_eq!(ids, ["d2", "d3", "e1"]);
    let (_, desc) = ix
        .search(&ast, 0, 2, SortSpec::Id { descending: true })
        .unwrap();
    assert_eq!(
        desc.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(),
        ["x1", "r2"]
    );
}

#[test]
fn bad_queries_are_client_errors() {
    for q in [
        "content:(a",
        "content:\"abc",
        "a AND",
        "OR a",
        "content:[a TO b",
        "content:[a b]",
        "content:a^",
        ")",
        "content:",
        "a:b:c",
    ] {
        assert!(parse(q).is_err(), "{q} should be rejected");
    }
}
