//! Search tier benchmark: durable bulk indexing throughput and query latency on realistic Chef
//! node documents, compared with PostgreSQL alone (pg_trgm GIN over the token text).
//!
//! Run through bench/search/run.sh. Options (env): BENCH_DOCS (default 100000),
//! BENCH_QUERIES (iterations per query, default 200), BENCH_BULK (docs per _bulk, default 500),
//! BENCH_SKIP_PG=1 (skip the PostgreSQL-only baseline); for experiments BENCH_CLIENTS
//! (concurrent bulk clients, default 2), BENCH_PIECE_BYTES (the service's bulk piece size) and
//! BENCH_DURABLE_ONLY=1 (stop after the durable phase).

#[path = "../tests/common/pg.rs"]
mod pg;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len() as u64) as usize]
    }
}

const KINDS: [&str; 5] = ["web", "db", "app", "cache", "lb"];
const ENVS: [&str; 4] = ["prod", "staging", "dev", "qa"];
const ROLES: [&str; 5] = ["webserver", "database", "app", "monitoring", "cache"];
const PLATFORMS: [(&str, &str); 3] = [
    ("ubuntu", "22.04"),
    ("centos", "7.9.2009"),
    ("debian", "12.4"),
];
const FLAGS: [&str; 32] = [
    "fpu",
    "vme",
    "de",
    "pse",
    "tsc",
    "msr",
    "pae",
    "mce",
    "cx8",
    "apic",
    "sep",
    "mtrr",
    "pge",
    "mca",
    "cmov",
    "pat",
    "pse36",
    "clflush",
    "mmx",
    "fxsr",
    "sse",
    "sse2",
    "ss",
    "ht",
    "syscall",
    "nx",
    "pdpe1gb",
    "rdtscp",
    "lm",
    "constant_tsc",
    "avx",
    "avx2",
];

/// A Chef node as the frontend indexes it: merged attributes plus name, environment, run list.
fn node(i: usize, rng: &mut Rng) -> (String, Value) {
    let kind = KINDS[i % KINDS.len()];
    let name = format!("{kind}-{i:06}");
    let env = rng.pick(&ENVS);
    let mut roles = vec![];
    if rng.below(10) < 7 {
        roles.push("base");
    }
    roles.push(ROLES[rng.below(ROLES.len() as u64) as usize]);
    let (platform, pv) = PLATFORMS[rng.below(3) as usize];
    let ip = format!(
        "10.{}.{}.{}",
        rng.below(256),
        rng.below(256),
        rng.below(254) + 1
    );
    let mut packages = serde_json::Map::new();
    for p in 0..(60 + rng.below(40)) {
        packages.insert(format!("pkg-{}-{}", ["lib", "python3", "perl", "x11", "gnu"][p as usize % 5], rng.below(5000)), json!({"version": format!("{}.{}.{}-{}", rng.below(10), rng.below(30), rng.below(100), rng.below(9)), "arch": "amd64"}));
    }
    let mut modules = serde_json::Map::new();
    for _ in 0..(30 + rng.below(20)) {
        modules.insert(
            format!("mod_{}", rng.below(100000)),
            json!({"size": rng.below(900000).to_string(), "refcount": rng.below(8).to_string()}),
        );
    }
    let mut fs = serde_json::Map::new();
    for d in 0..(6 + rng.below(8)) {
        fs.insert(format!("/dev/sda{d}"), json!({"kb_size": rng.below(1 << 30).to_string(), "kb_used": rng.below(1 << 29).to_string(), "percent_used": format!("{}%", rng.below(100)), "mount": format!("/mnt/vol{d}"), "fs_type": "ext4", "mount_options": ["rw", "relatime", "errors=remount-ro"], "uuid": format!("{:016x}", rng.next())}));
    }
    let mut cpu = serde_json::Map::new();
    let ncpu = 2 + rng.below(3);
    for c in 0..ncpu {
        cpu.insert(c.to_string(), json!({"vendor_id": "GenuineIntel", "family": "6", "model": "85", "model_name": "Intel(R) Xeon(R) Platinum 8175M CPU @ 2.50GHz", "mhz": format!("{}.{}", 2000 + rng.below(1500), rng.below(999)), "cache_size": "33792 KB", "flags": FLAGS}));
    }
    cpu.insert("total".into(), json!(ncpu));
    cpu.insert("real".into(), json!(1));
    let obj = json!({
        "name": name,
        "chef_environment": env,
        "role": roles,
        "roles": roles,
        "recipe": roles.iter().map(|r| format!("{r}::default")).collect::<Vec<_>>(),
        "run_list": roles.iter().map(|r| format!("role[{r}]")).collect::<Vec<_>>(),
        "hostname": name, "fqdn": format!("{name}.example.com"), "domain": "example.com",
        "ipaddress": ip, "macaddress": format!("0A:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}", rng.below(256), rng.below(256), rng.below(256), rng.below(256), rng.below(256)),
        "platform": platform, "platform_version": pv, "platform_family": if platform == "centos" { "rhel" } else { "debian" },
        "os": "linux", "uptime_seconds": rng.below(10_000_000), "ohai_time": 1.7e9 + rng.below(10_000_000) as f64,
        "kernel": {"name": "Linux", "release": format!("5.15.0-{}-generic", rng.below(100)), "machine": "x86_64", "modules": modules},
        "network": {"default_gateway": "10.0.0.1", "default_interface": "eth0", "interfaces": {
            "eth0": {"type": "eth", "number": "0", "mtu": "9001", "state": "up", "flags": ["BROADCAST", "MULTICAST", "UP", "LOWER_UP"],
                     "addresses": {ip.clone(): {"family": "inet", "prefixlen": "24", "netmask": "255.255.255.0", "broadcast": "10.0.0.255", "scope": "Global"}}},
            "lo": {"mtu": "65536", "flags": ["LOOPBACK", "UP"], "addresses": {"127.0.0.1": {"family": "inet", "prefixlen": "8", "scope": "Node"}}}}},
        "filesystem": fs,
        "cpu": cpu,
        "memory": {"total": format!("{}kB", 2_000_000 + rng.below(60_000_000)), "free": format!("{}kB", rng.below(2_000_000)), "swap": {"total": "0kB", "free": "0kB"}},
        "packages": packages,
        "languages": {"ruby": {"version": "3.1.2", "platform": "x86_64-linux"}, "python": {"version": "3.10.12"}},
        "nginx": {"worker_processes": 4, "sites": {"default": {"listen": 80, "root": "/var/www/html"}}},
        "tags": [rng.pick(&["blue", "green"]), rng.pick(&["az-a", "az-b", "az-c"])]
    });
    (name, obj)
}

/// Calls `f(id, node object, flattened content)` for each of the `n_docs` generated documents,
/// always the same ones (fixed seed).
fn for_each_doc(n_docs: usize, db: &str, mut f: impl FnMut(String, &Value, String)) {
    let mut rng = Rng(0x9e3779b97f4a7c15);
    for i in 0..n_docs {
        let (name, obj) = node(i, &mut rng);
        let content = larder_search::flatten_chef(&name, db, "node", &obj);
        f(name, &obj, content);
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Builds the request body of iteration k.
type QueryBody<'a> = Box<dyn Fn(usize) -> String + 'a>;

struct Row {
    name: String,
    p50: f64,
    p99: f64,
    hits: u64,
}

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n_docs = env_usize("BENCH_DOCS", 100_000);
    let iters = env_usize("BENCH_QUERIES", 200);
    let per_bulk = env_usize("BENCH_BULK", 500);
    eprintln!("generating {n_docs} node documents ...");
    let t = Instant::now();
    let db = "chef_0123456789abcdef0123456789abcdef";
    let mut bodies: Vec<String> = Vec::new();
    let mut json_bytes = 0usize;
    let mut content_bytes = 0usize;
    let mut body = String::new();
    let mut i = 0;
    for_each_doc(n_docs, db, |name, obj, content| {
        json_bytes += obj.to_string().len();
        content_bytes += content.len();
        body.push_str(&json!({"index": {"_index": "chef", "_id": name}}).to_string());
        body.push('\n');
        body.push_str(&json!({"content": content, "X_CHEF_id_CHEF_X": name, "X_CHEF_database_CHEF_X": db, "X_CHEF_type_CHEF_X": "node"}).to_string());
        body.push('\n');
        i += 1;
        if i % per_bulk == 0 || i == n_docs {
            bodies.push(std::mem::take(&mut body));
        }
    });
    let avg_json = json_bytes / n_docs.max(1);
    let avg_content = content_bytes / n_docs.max(1);
    eprintln!(
        "generated in {:.1}s: avg node JSON {avg_json} B, avg flattened content {avg_content} B",
        t.elapsed().as_secs_f64()
    );

    let server = pg::PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = larder_search::SearchConfig {
        pg: server.target(),
        index_dir: dir.path().join("index"),
        es_major: 7,
        cluster_name: "bench".into(),
        node_name: "bench".into(),
        bulk_piece_bytes: env_usize(
            "BENCH_PIECE_BYTES",
            larder_search::SearchConfig::DEFAULT_BULK_PIECE_BYTES,
        ),
        // The library on a loopback listener it owns: no node, no credentials to check.
        auth: Vec::new(),
        auth_file: None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let svc = tokio::spawn(larder_search::serve(listener, cfg.clone(), stop.clone()));
    let http = reqwest::Client::new();
    loop {
        if let Ok(r) = http.get(format!("{url}/_cluster/health")).send().await {
            let v: Value = r.json().await.unwrap();
            if v["status"] != "red" {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Durable bulk indexing: 2 concurrent clients by default (erchef posts batches
    // concurrently); BENCH_CLIENTS changes it for experiments.
    let clients = env_usize("BENCH_CLIENTS", 2);
    eprintln!(
        "bulk indexing {} requests from {clients} clients ...",
        bodies.len()
    );
    let t0 = Instant::now();
    let queue = std::sync::Arc::new(std::sync::Mutex::new(bodies));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (q, http, url) = (queue.clone(), http.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(b) = q.lock().unwrap().pop() else {
                    break;
                };
                let r = http
                    .post(format!("{url}/_bulk"))
                    .header("content-type", "application/x-ndjson")
                    .body(b)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let durable = t0.elapsed();
    eprintln!(
        "durable in {:.1}s ({:.0} docs/s); waiting for the index to catch up ...",
        durable.as_secs_f64(),
        n_docs as f64 / durable.as_secs_f64()
    );
    if std::env::var("BENCH_DURABLE_ONLY").is_ok_and(|v| v == "1") {
        stop.cancel();
        let _ = svc.await;
        return;
    }
    // `_refresh` waits at most 60 s per call for the index to catch up; a 100k backlog takes longer.
    loop {
        let r = http.post(format!("{url}/_refresh")).send().await.unwrap();
        match r.status().as_u16() {
            200 => break,
            503 => continue,
            s => panic!("_refresh answered {s}: {}", r.text().await.unwrap()),
        }
    }
    let searchable = t0.elapsed();
    let stats = larder_search::index_stats(&cfg.index_dir).unwrap();
    assert_eq!(stats.documents as usize, n_docs);
    let mut stats = stats;
    eprintln!(
        "durable in {:.1}s, searchable in {:.1}s",
        durable.as_secs_f64(),
        searchable.as_secs_f64()
    );
    // Background segment merges after a bulk load compete with queries for the two cores;
    // measure latency once they are done (the index size stops changing) and report when.
    let mut last = 0;
    let mut stable_since = Instant::now();
    while stable_since.elapsed() < Duration::from_secs(3)
        && t0.elapsed() < Duration::from_secs(1800)
    {
        let size = larder_search::index::dir_size(&cfg.index_dir);
        if size != last {
            last = size;
            stable_since = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let settled = t0.elapsed().saturating_sub(Duration::from_secs(3));
    let segments = tantivy::Index::open_in_dir(&cfg.index_dir)
        .and_then(|ix| ix.searchable_segment_ids())
        .map(|ids| ids.len())
        .unwrap_or(0);
    eprintln!("{segments} searchable segments once merges settled");

    let fq = format!("+X_CHEF_database_CHEF_X:{db} +X_CHEF_type_CHEF_X:node");
    let chef_body = |q: &str, from: usize| {
        json!({"stored_fields": "_id", "from": from, "size": 1000, "sort": [{"X_CHEF_id_CHEF_X": {"order": "asc"}}],
               "query": {"bool": {"must": {"query_string": {"query": q}}, "filter": {"query_string": {"query": fq}}}}})
        .to_string()
    };
    let queries: Vec<(&str, QueryBody<'_>)> = vec![
        (
            "`name:web*` → `content:name__=__web*` (rows 1000)",
            Box::new(|_| chef_body("content:name__=__web*", 0)),
        ),
        (
            "`role:base AND chef_environment:prod` (rows 1000)",
            Box::new(|_| {
                chef_body(
                    "content:role__=__base AND content:chef_environment__=__prod",
                    0,
                )
            }),
        ),
        (
            "paginated `*:*` (rows 1000, random page)",
            Box::new(|k| chef_body("*:*", (k * 7919 % (n_docs / 1000).max(1)) * 1000)),
        ),
    ];
    let mut larder_rows = Vec::new();
    for (name, mk) in &queries {
        let mut lat = Vec::with_capacity(iters);
        let mut hits = 0;
        for k in 0..(iters + 10) {
            let b = mk(k);
            let t = Instant::now();
            let r = http
                .get(format!("{url}/chef/_search"))
                .header("content-type", "application/json")
                .body(b)
                .send()
                .await
                .unwrap();
            let v: Value = r.json().await.unwrap();
            let d = t.elapsed();
            hits = v["hits"]["total"]["value"].as_u64().unwrap();
            if k >= 10 {
                lat.push(d);
            }
        }
        lat.sort();
        larder_rows.push(Row {
            name: name.to_string(),
            p50: pct(&lat, 0.5),
            p99: pct(&lat, 0.99),
            hits,
        });
    }
    stop.cancel();
    svc.await.unwrap().unwrap();
    stats.size_bytes = larder_search::index::dir_size(&cfg.index_dir);
    let c = larder_search::pg::connect(&server.target(), "larder_search")
        .await
        .unwrap();
    let log_size: i64 = c
        .query_one("SELECT pg_total_relation_size('search_log')", &[])
        .await
        .unwrap()
        .get(0);

    if std::env::var("BENCH_SKIP_PG").is_ok_and(|v| v == "1") {
        print_larder(
            n_docs,
            avg_json,
            avg_content,
            durable,
            searchable,
            settled,
            &stats,
            log_size,
            iters,
            &larder_rows,
        );
        return;
    }
    // PostgreSQL alone: the token text in a plain text column (lz4 TOAST), the shape Larder's
    // log had before it stored content zstd-compressed, with a trigram GIN over " " || content
    // (token boundaries are spaces). Filled with the same generated documents.
    eprintln!("loading the PostgreSQL-only table ...");
    c.batch_execute(
        "CREATE TABLE pg_only (id text PRIMARY KEY, deleted boolean NOT NULL DEFAULT false,
             db text, type text, content text COMPRESSION lz4 NOT NULL)",
    )
    .await
    .unwrap();
    let insert = c
        .prepare(
            "INSERT INTO pg_only (id, db, type, content)
             SELECT u.id, $1, 'node', u.content FROM unnest($2::text[], $3::text[]) AS u(id, content)",
        )
        .await
        .unwrap();
    let (mut ids, mut contents) = (Vec::new(), Vec::new());
    let mut pending = Vec::new();
    for_each_doc(n_docs, db, |name, _, content| {
        ids.push(name);
        contents.push(content);
        if ids.len() == per_bulk {
            pending.push((std::mem::take(&mut ids), std::mem::take(&mut contents)));
        }
    });
    pending.push((ids, contents));
    for (ids, contents) in pending {
        if !ids.is_empty() {
            c.execute(&insert, &[&db, &ids, &contents]).await.unwrap();
        }
    }
    eprintln!("building pg_trgm GIN index ...");
    c.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_trgm; SET maintenance_work_mem = '1GB'")
        .await
        .unwrap();
    let t = Instant::now();
    c.batch_execute("CREATE INDEX pg_only_trgm ON pg_only USING gin ((' ' || content) gin_trgm_ops); ANALYZE search_log").await.unwrap();
    let gin_build = t.elapsed();
    let sizes = c
        .query_one(
            "SELECT pg_total_relation_size('pg_only'), pg_relation_size('pg_only_trgm')",
            &[],
        )
        .await
        .unwrap();
    let (table_size, gin_size): (i64, i64) = (sizes.get(0), sizes.get(1));
    let pg_queries: Vec<(&str, String, bool)> = vec![
        ("`name:web*`", "SELECT id, count(*) OVER () FROM pg_only WHERE NOT deleted AND db = $1 AND type = 'node' AND (' ' || content) LIKE '% name__=__web%' ORDER BY id LIMIT 1000".into(), false),
        ("`role:base AND chef_environment:prod`", "SELECT id, count(*) OVER () FROM pg_only WHERE NOT deleted AND db = $1 AND type = 'node' AND (' ' || content) LIKE '% role__=__base %' AND (' ' || content) LIKE '% chef_environment__=__prod %' ORDER BY id LIMIT 1000".into(), false),
        ("paginated `*:*`", "SELECT id, count(*) OVER () FROM pg_only WHERE NOT deleted AND db = $1 AND type = 'node' ORDER BY id OFFSET $2 LIMIT 1000".into(), true),
    ];
    let mut pg_rows = Vec::new();
    let pg_iters = iters.min(50);
    for (name, sql, paged) in &pg_queries {
        let stmt = c.prepare(sql).await.unwrap();
        let mut lat = Vec::new();
        let mut hits = 0;
        for k in 0..(pg_iters + 3) {
            let off = ((k * 7919 % (n_docs / 1000).max(1)) * 1000) as i64;
            let t = Instant::now();
            let rows = if *paged {
                c.query(&stmt, &[&db, &off]).await.unwrap()
            } else {
                c.query(&stmt, &[&db]).await.unwrap()
            };
            let d = t.elapsed();
            hits = rows.first().map(|r| r.get::<_, i64>(1) as u64).unwrap_or(0);
            if k >= 3 {
                lat.push(d);
            }
        }
        lat.sort();
        pg_rows.push(Row {
            name: name.to_string(),
            p50: pct(&lat, 0.5),
            p99: pct(&lat, 0.99),
            hits,
        });
    }

    println!("### Search benchmark ({n_docs} node documents, avg {avg_json} B JSON / {avg_content} B flattened)\n");
    println!("| metric | value |\n|---|---|");
    println!(
        "| durable `_bulk` indexing (200 = committed in PostgreSQL) | {:.0} docs/s ({:.1} s) |",
        n_docs as f64 / durable.as_secs_f64(),
        durable.as_secs_f64()
    );
    println!(
        "| until searchable (`_refresh` returned) | {:.0} docs/s ({:.1} s) |",
        n_docs as f64 / searchable.as_secs_f64(),
        searchable.as_secs_f64()
    );
    println!(
        "| background merges settled after | {:.1} s |",
        settled.as_secs_f64()
    );
    println!(
        "| tantivy index size | {:.0} MiB |",
        stats.size_bytes as f64 / 1048576.0
    );
    println!(
        "| PostgreSQL `search_log` size (Larder's log, content front-coded + LZ4) | {:.0} MiB |",
        log_size as f64 / 1048576.0
    );
    println!(
        "| PostgreSQL-only table size (text with lz4 TOAST, without the GIN index) | {:.0} MiB |",
        (table_size - gin_size.min(table_size)) as f64 / 1048576.0
    );
    println!(
        "| pg_trgm GIN build (PostgreSQL-only baseline) | {:.1} s, {:.0} MiB |",
        gin_build.as_secs_f64(),
        gin_size as f64 / 1048576.0
    );
    println!();
    println!("| query | engine | hits | p50 ms | p99 ms |\n|---|---|---|---|---|");
    for (l, p) in larder_rows.iter().zip(&pg_rows) {
        println!(
            "| {} | Larder (tantivy, over HTTP, {iters} runs) | {} | {:.2} | {:.2} |",
            l.name, l.hits, l.p50, l.p99
        );
        println!(
            "| {} | PostgreSQL pg_trgm (SQL, {pg_iters} runs) | {} | {:.2} | {:.2} |",
            p.name, p.hits, p.p50, p.p99
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn print_larder(
    n_docs: usize,
    avg_json: usize,
    avg_content: usize,
    durable: Duration,
    searchable: Duration,
    settled: Duration,
    stats: &larder_search::IndexStats,
    log_size: i64,
    iters: usize,
    rows: &[Row],
) {
    println!("### Search benchmark ({n_docs} node documents, avg {avg_json} B JSON / {avg_content} B flattened), Larder only\n");
    println!("| metric | value |\n|---|---|");
    println!(
        "| durable `_bulk` indexing (200 = committed in PostgreSQL) | {:.0} docs/s ({:.1} s) |",
        n_docs as f64 / durable.as_secs_f64(),
        durable.as_secs_f64()
    );
    println!(
        "| until searchable (`_refresh` returned) | {:.0} docs/s ({:.1} s) |",
        n_docs as f64 / searchable.as_secs_f64(),
        searchable.as_secs_f64()
    );
    println!(
        "| background merges settled after | {:.1} s |",
        settled.as_secs_f64()
    );
    println!(
        "| tantivy index size | {:.0} MiB |",
        stats.size_bytes as f64 / 1048576.0
    );
    println!(
        "| PostgreSQL `search_log` size (content front-coded + LZ4) | {:.0} MiB |",
        log_size as f64 / 1048576.0
    );
    println!();
    println!("| query | engine | hits | p50 ms | p99 ms |\n|---|---|---|---|---|");
    for l in rows {
        println!(
            "| {} | Larder (tantivy, over HTTP, {iters} runs) | {} | {:.2} | {:.2} |",
            l.name, l.hits, l.p50, l.p99
        );
    }
}
