//! `restore --from-pg-dump FILE`: a new single-node cluster on this node from a `pg_dumpall` of
//! a Chef Backend leader (the cut-over from Chef Backend, see README "From Chef Backend"),
//! with the search index rebuilt from Chef's own objects in `opscode_chef`.
//!
//! The dump is checked before anything is written (its header, an `opscode_chef` database,
//! no database Larder creates itself). It is loaded with psql over the local socket into the
//! new cluster's leader, without the statements that would change Larder's own roles (the
//! superuser the agent connects as, the replication user): a dump of another cluster carries
//! that cluster's password hashes for them. Chef Backend kept search in Elasticsearch, which
//! is not in the dump, so the documents are rebuilt from `opscode_chef` and written through the
//! local search service's `_bulk`, as erchef would.

use anyhow::{bail, Context};
use larder_agent::node::{url_host, Node};
use larder_core::paths::Paths;
use larder_search::chef_docs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

/// The databases a dump creates (`CREATE DATABASE name …` lines), after checking its header.
pub fn dump_databases(reader: impl BufRead) -> Result<Vec<String>, String> {
    let mut header = false;
    let mut dbs = Vec::new();
    for (n, line) in reader.split(b'\n').enumerate() {
        let line = line.map_err(|e| format!("cannot read it: {e}"))?;
        let line = String::from_utf8_lossy(&line);
        if n < 20 && line.starts_with("-- PostgreSQL database cluster dump") {
            header = true;
        }
        if n == 20 && !header {
            break;
        }
        if let Some(rest) = line.strip_prefix("CREATE DATABASE ") {
            let name = rest.split_whitespace().next().unwrap_or("");
            dbs.push(name.trim_end_matches(';').trim_matches('"').to_string());
        }
    }
    if !header {
        return Err("it has no `-- PostgreSQL database cluster dump` header: it is not the plain-text output of pg_dumpall (a compressed file must be uncompressed first; pg_dump's custom format is not a cluster dump)".into());
    }
    Ok(dbs)
}

/// Whether a dump line is loaded: statements creating or altering one of Larder's own `roles`
/// are not (`CREATE ROLE x;`, `ALTER ROLE x WITH …;`, quoted or not).
pub fn keep_line(line: &str, roles: &[&str]) -> bool {
    for verb in ["CREATE ROLE ", "ALTER ROLE "] {
        if let Some(rest) = line.strip_prefix(verb) {
            let name = rest
                .split([' ', ';'])
                .next()
                .unwrap_or("")
                .trim_matches('"');
            if roles.contains(&name) {
                return false;
            }
        }
    }
    true
}

/// Everything checked before anything is written.
fn check_dump(file: &Path) -> anyhow::Result<Vec<String>> {
    let f = std::fs::File::open(file).map_err(|e| {
        anyhow::anyhow!(
            "cannot read the dump {}: {e}; give the file `pg_dumpall` wrote on the old leader; nothing was changed",
            file.display()
        )
    })?;
    if !f.metadata()?.is_file() {
        bail!(
            "{} is not a file; give the file `pg_dumpall` wrote; nothing was changed",
            file.display()
        );
    }
    let dbs = dump_databases(BufReader::new(f)).map_err(|e| {
        anyhow::anyhow!(
            "{} is not a cluster dump: {e}; nothing was changed",
            file.display()
        )
    })?;
    if !dbs.iter().any(|d| d == "opscode_chef") {
        bail!(
            "{} holds no opscode_chef database (it creates: {}): it is not a dump of a Chef Backend leader; nothing was changed",
            file.display(),
            if dbs.is_empty() { "none".to_string() } else { dbs.join(", ") }
        );
    }
    let own = larder_search::PgTarget::DEFAULT_DBNAME;
    if dbs.iter().any(|d| d == own) {
        bail!(
            "{} holds the database {own}, which Larder's search service creates itself (a dump of a Larder cluster?): dump with `pg_dumpall --exclude-database={own}`; nothing was changed",
            file.display()
        );
    }
    Ok(dbs)
}

pub async fn restore(
    paths: &Paths,
    a: &crate::backup::RestoreArgs,
    file: &Path,
) -> anyhow::Result<()> {
    crate::backup::refuse_member(paths)?;
    let dbs = check_dump(file)?;
    crate::prompt::confirm_on_terminal(
        &format!(
            "build a new one-node cluster on this node from {} (databases {})?",
            file.display(),
            dbs.join(", ")
        ),
        a.yes,
    )?;
    crate::bootstrap::create_cluster_for_restore(
        paths,
        a.publish_address.clone(),
        a.fqdn.clone(),
        None,
    )
    .await?;
    let node = Node::load(paths)?;
    let r = async {
        load(&node, file)?;
        reindex(&node).await
    }
    .await;
    match r {
        Ok(counts) => {
            println!(
                "loaded {} into the new cluster and indexed {counts} for search. Point the frontends here (`larder gen-server-config FQDN`, then `chef-server-ctl reconfigure`); `chef-server-ctl reindex` on one of them rebuilds Chef's index of everything",
                file.display()
            );
            Ok(())
        }
        Err(e) => {
            eprintln!("the cluster was created but the dump did not load completely; `larder cleanse` resets this node before another attempt");
            Err(e)
        }
    }
}

/// psql with the superuser over the local socket.
fn psql(node: &Node, db: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(Path::new(&node.cfg.postgresql.bin_dir).join("psql"));
    cmd.arg("-h")
        .arg(node.paths.pg_socket_dir())
        .arg("-p")
        .arg(node.cfg.postgresql.port.to_string())
        .arg("-U")
        .arg(&node.cfg.postgresql.db_superuser)
        .args(["-d", db, "-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .env(
            "PGPASSWORD",
            node.secrets.postgresql.db_superuser_password.expose(),
        );
    cmd
}

fn load(node: &Node, file: &Path) -> anyhow::Result<()> {
    let roles = [
        node.cfg.postgresql.db_superuser.as_str(),
        node.cfg.postgresql.replication_user.as_str(),
    ];
    let mut child = psql(node, "postgres")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("cannot run psql")?;
    let mut stdin = child.stdin.take().expect("piped");
    let reader = BufReader::new(std::fs::File::open(file)?);
    // psql stops at the first error (ON_ERROR_STOP) and closes its input: a write error then
    // only means psql has its error to report.
    let mut wrote = Ok(());
    for line in reader.split(b'\n') {
        let line = line?;
        let keep = std::str::from_utf8(&line).map_or(true, |l| keep_line(l, &roles));
        if keep {
            if let Err(e) = stdin.write_all(&line).and_then(|_| stdin.write_all(b"\n")) {
                wrote = Err(e);
                break;
            }
        }
    }
    drop(stdin);
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "psql stopped loading {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    wrote.context("psql stopped reading the dump")?;
    Ok(())
}

/// Index every node, role, environment, client and data bag item of `opscode_chef`.
async fn reindex(node: &Node) -> anyhow::Result<String> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host_path(node.paths.pg_socket_dir())
        .port(node.cfg.postgresql.port)
        .user(&node.cfg.postgresql.db_superuser)
        .password(node.secrets.postgresql.db_superuser_password.expose())
        .dbname("opscode_chef");
    let (client, conn) = cfg
        .connect(tokio_postgres::NoTls)
        .await
        .context("cannot connect to the loaded opscode_chef database")?;
    tokio::spawn(conn);
    let table = |t: &'static str| {
        let c = &client;
        async move {
            c.query_opt(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = 'public' AND table_name = $1",
                &[&t],
            )
            .await
            .map(|r| r.is_some())
        }
    };
    let mut docs: Vec<String> = Vec::new();
    let mut counts = Vec::new();
    let mut bad = 0usize;
    for (t, kind) in [
        ("nodes", "node"),
        ("roles", "role"),
        ("environments", "environment"),
    ] {
        if !table(t).await? {
            continue;
        }
        let rows = client
            .query(
                &format!("SELECT id::text, org_id::text, serialized_object FROM {t}"),
                &[],
            )
            .await?;
        for r in &rows {
            let (id, org): (String, String) = (r.get(0), r.get(1));
            let bytes: Option<Vec<u8>> = r.get(2);
            match chef_docs::decode_serialized(&bytes.unwrap_or_default()) {
                Ok(obj) => {
                    let obj = if kind == "node" {
                        chef_docs::node_for_index(&obj)
                    } else {
                        obj
                    };
                    docs.push(chef_docs::bulk_lines(
                        &id,
                        &format!("chef_{}", org.trim()),
                        kind,
                        None,
                        &obj,
                    ));
                }
                Err(_) => bad += 1,
            }
        }
        counts.push(format!("{} {t}", rows.len()));
    }
    if table("data_bag_items").await? {
        let rows = client
            .query(
                "SELECT id::text, org_id::text, data_bag_name, serialized_object FROM data_bag_items",
                &[],
            )
            .await?;
        for r in &rows {
            let (id, org, bag): (String, String, String) = (r.get(0), r.get(1), r.get(2));
            let bytes: Option<Vec<u8>> = r.get(3);
            match chef_docs::decode_serialized(&bytes.unwrap_or_default()) {
                Ok(obj) => docs.push(chef_docs::bulk_lines(
                    &id,
                    &format!("chef_{}", org.trim()),
                    "data_bag_item",
                    Some(&bag),
                    &chef_docs::data_bag_item_for_index(&bag, &obj),
                )),
                Err(_) => bad += 1,
            }
        }
        counts.push(format!("{} data bag items", rows.len()));
    }
    if table("clients").await? {
        let rows = client
            .query("SELECT id::text, org_id::text, name FROM clients", &[])
            .await?;
        for r in &rows {
            let (id, org, name): (String, String, String) = (r.get(0), r.get(1), r.get(2));
            let obj = serde_json::json!({"name": name, "clientname": name, "chef_type": "client"});
            docs.push(chef_docs::bulk_lines(
                &id,
                &format!("chef_{}", org.trim()),
                "client",
                None,
                &obj,
            ));
        }
        counts.push(format!("{} clients", rows.len()));
    }
    if counts.is_empty() {
        bail!("opscode_chef has none of Chef Server's object tables (nodes, roles, environments, clients, data_bag_items): is it a Chef Server database?");
    }
    send_bulks(node, &docs).await?;
    if bad > 0 {
        eprintln!("Warning: {bad} objects could not be decoded (neither gzip nor JSON) and were not indexed");
    }
    Ok(counts.join(", "))
}

/// `_bulk` requests of about 4 MiB to the local search service, each checked item by item,
/// over the same TLS and credentials a frontend uses (new clusters refuse plain HTTP).
async fn send_bulks(node: &Node, docs: &[String]) -> anyhow::Result<()> {
    let sec = &node.security;
    let url = format!(
        "{}://{}:{}/_bulk",
        if sec.search_tls { "https" } else { "http" },
        url_host(&node.cfg.publish_address),
        node.cfg.elasticsearch.port
    );
    let mut builder = reqwest::Client::builder();
    if sec.search_tls {
        let ca = reqwest::Certificate::from_pem_bundle(node.trust_pem().as_bytes())
            .context("the cluster CA in the secrets file (larder.ca_cert_pem) is not valid PEM")?;
        builder = builder.tls_certs_only(ca);
    }
    let http = builder.build()?;
    let creds = &node.secrets.elasticsearch;
    let mut i = 0;
    while i < docs.len() {
        let mut body = String::new();
        while i < docs.len() && (body.is_empty() || body.len() + docs[i].len() < 4 << 20) {
            body.push_str(&docs[i]);
            i += 1;
        }
        // The service answers 503 until its database exists on this fresh node (it was just
        // created by the restore): wait for that, bounded, and fail on anything else.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let mut req = http.post(&url);
            if sec.search_auth {
                req = req.basic_auth(&creds.auth_username, Some(creds.auth_password.expose()));
            }
            let r = req
                .header("Content-Type", "application/x-ndjson")
                .body(body.clone())
                .send()
                .await
                .with_context(|| format!("cannot reach the search service at {url}"))?;
            let status = r.status();
            let v: serde_json::Value = r.json().await.unwrap_or_default();
            if status == reqwest::StatusCode::SERVICE_UNAVAILABLE
                && std::time::Instant::now() < deadline
            {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                continue;
            }
            if !status.is_success() || v["errors"] != serde_json::Value::Bool(false) {
                bail!("the search service refused the documents ({status}): {v}");
            }
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_dump_is_recognised_and_its_databases_listed() {
        let dump = "--\n-- PostgreSQL database cluster dump\n--\n\nCREATE ROLE opscode_chef;\nCREATE DATABASE opscode_chef WITH TEMPLATE = template0 OWNER = opscode_chef;\n\\connect opscode_chef\nCREATE DATABASE \"bifrost\" WITH TEMPLATE = template0;\n";
        assert_eq!(
            dump_databases(dump.as_bytes()).unwrap(),
            ["opscode_chef", "bifrost"]
        );
        let e = dump_databases("--\n-- PostgreSQL database dump\n".as_bytes()).unwrap_err();
        assert!(e.contains("not the plain-text output of pg_dumpall"), "{e}");
        assert!(dump_databases(&b"\x1f\x8b binary"[..]).is_err());
    }

    #[test]
    fn larders_own_roles_are_not_touched() {
        let own = ["chef_pgsql", "replicator"];
        assert!(!keep_line("CREATE ROLE chef_pgsql;", &own));
        assert!(!keep_line(
            "ALTER ROLE chef_pgsql WITH SUPERUSER INHERIT PASSWORD 'SCRAM-SHA-256$x';",
            &own
        ));
        assert!(!keep_line(
            "ALTER ROLE \"replicator\" WITH REPLICATION;",
            &own
        ));
        assert!(keep_line("CREATE ROLE opscode_chef;", &own));
        assert!(keep_line("ALTER ROLE opscode_chef WITH LOGIN;", &own));
        assert!(keep_line(
            "INSERT INTO t VALUES ('CREATE ROLE chef_pgsql;');",
            &own
        ));
    }
}
