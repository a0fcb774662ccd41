//! `gen-server-config`: the chef-server.rb a Chef Infra Server frontend needs for this cluster,
//! in one of two styles, with the TLS and credentials the cluster enforces.
//!
//! Keys are chef-server's own (omnibus `private-chef` cookbook attributes): `use_chef_backend`
//! and `chef_backend_members` make the frontend run a local haproxy to the leader, so every URL
//! below is `127.0.0.1`. `postgresql['sslmode']` accepts `disable` (chef-server's default) or
//! `require`. Chef Infra Server 15 replaced `opscode_solr4[...]` with `opensearch[...]` and
//! `search_provider 'opensearch'`, whose `opscode_erchef['search_auth_username'/'_password']`
//! are sent as HTTP Basic credentials.

use crate::agent_client::agent_status;
use crate::report::require_configured;
use anyhow::bail;
use larder_core::paths::Paths;

/// Which frontend generation the file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Style {
    /// Chef Infra Server ≤ 14 with Chef Backend: `opscode_solr4` + `search_provider 'elasticsearch'`.
    ChefBackend,
    /// Chef Infra Server 15: `opensearch['external_url']` + `search_provider 'opensearch'`.
    Opensearch,
}

/// Everything the file depends on.
pub struct Frontend<'a> {
    pub fqdn: &'a str,
    pub members: &'a [String],
    pub superuser: &'a str,
    pub password: &'a str,
    pub pg_port: u16,
    pub es_port: u16,
    pub discovery_port: u16,
    pub pg_require_ssl: bool,
    pub search_tls: bool,
    /// (user, password) when the search API requires authentication.
    pub search_auth: Option<(&'a str, &'a str)>,
}

/// chef-server.rb for a frontend.
pub fn render(f: &Frontend, style: Style) -> String {
    let list = f
        .members
        .iter()
        .map(|m| format!("\"{m}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let scheme = if f.search_tls { "https" } else { "http" };
    let url = format!("{scheme}://127.0.0.1:{}", f.es_port);
    let sslmode = if f.pg_require_ssl {
        "require"
    } else {
        "disable"
    };
    let mut out = format!(
        "# chef-server.rb for a Chef Infra Server frontend of this Larder cluster.\n\
         fqdn \"{fqdn}\"\n\
         use_chef_backend true\n\
         chef_backend_members [{list}]\n\n\
         haproxy['remote_postgresql_port'] = {pg_port}\n\
         haproxy['remote_elasticsearch_port'] = {es_port}\n\
         # Member discovery: frontends GET http://MEMBER:PORT/v2/members (etcd's v2 shape). Larder's\n\
         # etcd accepts only TLS clients with a cluster certificate; its health API serves the list.\n\
         haproxy['etcd_port'] = {discovery}\n\n\
         # PostgreSQL is the cluster's, reached through the local haproxy (TCP: TLS passes through).\n\
         postgresql['external'] = true\n\
         postgresql['vip'] = '127.0.0.1'\n\
         postgresql['db_superuser'] = '{superuser}'\n\
         postgresql['db_superuser_password'] = '{password}'\n\
         postgresql['sslmode'] = '{sslmode}'\n\n",
        fqdn = f.fqdn,
        pg_port = f.pg_port,
        es_port = f.es_port,
        discovery = f.discovery_port,
        superuser = f.superuser,
        password = f.password,
    );
    out.push_str("# Search is Larder's Elasticsearch-compatible service, written in batches.\n");
    if f.search_tls {
        out.push_str(
            "# It speaks HTTPS with the cluster's certificates: install the cluster CA\n\
             # (larder-cluster-ca.pem, written next to this file) in this frontend's trust store.\n",
        );
    }
    match style {
        Style::ChefBackend => out.push_str(&format!(
            "opscode_solr4['external'] = true\n\
             opscode_solr4['external_url'] = '{url}'\n\
             opscode_erchef['search_provider'] = 'elasticsearch'\n"
        )),
        Style::Opensearch => out.push_str(&format!(
            "elasticsearch['enable'] = false\n\
             opensearch['external'] = true\n\
             opensearch['external_url'] = '{url}'\n\
             opscode_erchef['search_provider'] = 'opensearch'\n"
        )),
    }
    out.push_str("opscode_erchef['search_queue_mode'] = 'batch'\n");
    if let Some((user, pass)) = f.search_auth {
        out.push_str(&format!(
            "opscode_erchef['search_auth_username'] = '{user}'\n\
             opscode_erchef['search_auth_password'] = '{pass}'\n"
        ));
    }
    out.push_str(
        "\nbookshelf['storage_type'] = :sql\n\n\
         # No message queue in this topology.\n\
         rabbitmq['enable'] = false\n\
         rabbitmq['management_enabled'] = false\n\
         rabbitmq['queue_length_monitor_enabled'] = false\n\
         opscode_expander['enable'] = false\n\
         dark_launch['actions'] = false\n\n\
         opscode_erchef['nginx_bookshelf_caching'] = :on\n\
         opscode_erchef['s3_url_expiry_window_size'] = '50%'\n",
    );
    out
}

/// The file name the cluster CA is written under, next to `-f FILE`.
pub const CA_FILE: &str = "larder-cluster-ca.pem";

pub async fn gen_server_config(
    paths: &Paths,
    fqdn: &str,
    file: Option<&str>,
    style: Style,
) -> anyhow::Result<()> {
    require_configured(paths)?;
    let node = larder_agent::node::Node::load(paths)?;
    let s = agent_status(paths).await?;
    if s.nodes.is_empty() {
        bail!("the cluster has no registered members yet (is the agent connected to etcd?); see `larder status`");
    }
    let members: Vec<String> = s.nodes.iter().map(|n| n.address.clone()).collect();
    let sec = &node.secrets.elasticsearch;
    let text = render(
        &Frontend {
            fqdn,
            members: &members,
            superuser: &node.cfg.postgresql.db_superuser,
            password: node.secrets.postgresql.db_superuser_password.expose(),
            pg_port: node.cfg.postgresql.port,
            es_port: node.cfg.elasticsearch.port,
            discovery_port: node.cfg.leaderl.http_port,
            pg_require_ssl: node.security.pg_require_ssl,
            search_tls: node.security.search_tls,
            search_auth: node
                .security
                .search_auth
                .then(|| (sec.auth_username.as_str(), sec.auth_password.expose())),
        },
        style,
    );
    match file {
        Some(f) => {
            let path = std::path::Path::new(f);
            larder_agent::node::write_private(path, text.as_bytes())?;
            eprintln!("wrote {f} (mode 0600: it holds the database and search passwords)");
            if node.security.search_tls {
                let ca = path.with_file_name(CA_FILE);
                std::fs::write(&ca, node.trust_pem())?;
                eprintln!(
                    "wrote {} (the cluster CA certificate; public)",
                    ca.display()
                );
            }
        }
        None => print!("{text}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frontend(secure: bool) -> Frontend<'static> {
        static MEMBERS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        Frontend {
            fqdn: "fe1.example.com",
            members: MEMBERS.get_or_init(|| vec!["10.0.0.1".into(), "10.0.0.2".into()]),
            superuser: "chef_pgsql",
            password: "pw",
            pg_port: 5432,
            es_port: 9200,
            discovery_port: 7331,
            pg_require_ssl: secure,
            search_tls: secure,
            search_auth: secure.then_some(("larder", "spw")),
        }
    }

    const COMMON: &[&str] = &[
        "fqdn \"fe1.example.com\"",
        "use_chef_backend true",
        "chef_backend_members [\"10.0.0.1\", \"10.0.0.2\"]",
        "haproxy['remote_postgresql_port'] = 5432",
        "haproxy['remote_elasticsearch_port'] = 9200",
        "haproxy['etcd_port'] = 7331",
        "postgresql['external'] = true",
        "postgresql['vip'] = '127.0.0.1'",
        "postgresql['db_superuser'] = 'chef_pgsql'",
        "postgresql['db_superuser_password'] = 'pw'",
        "opscode_erchef['search_queue_mode'] = 'batch'",
        "bookshelf['storage_type'] = :sql",
        "rabbitmq['enable'] = false",
        "rabbitmq['management_enabled'] = false",
        "rabbitmq['queue_length_monitor_enabled'] = false",
        "opscode_expander['enable'] = false",
        "dark_launch['actions'] = false",
        "opscode_erchef['nginx_bookshelf_caching'] = :on",
        "opscode_erchef['s3_url_expiry_window_size'] = '50%'",
    ];

    /// `style`'s file holds every common key, `specific` and nothing of `absent`.
    fn check_style(style: Style, specific: &[&str], absent: &str) {
        let t = render(&frontend(true), style);
        for key in COMMON.iter().chain(specific) {
            assert!(t.contains(key), "missing {key}\n{t}");
        }
        for key in [
            "opscode_erchef['search_auth_username'] = 'larder'",
            "opscode_erchef['search_auth_password'] = 'spw'",
            "postgresql['sslmode'] = 'require'",
        ] {
            assert!(t.contains(key), "missing {key}\n{t}");
        }
        assert!(!t.contains(absent), "{t}");
    }

    #[test]
    fn chef_backend_style_has_every_frontend_key() {
        check_style(
            Style::ChefBackend,
            &[
                "opscode_solr4['external'] = true",
                "opscode_solr4['external_url'] = 'https://127.0.0.1:9200'",
                "opscode_erchef['search_provider'] = 'elasticsearch'",
            ],
            "opensearch[",
        );
    }

    #[test]
    fn opensearch_style_uses_chef_15_keys() {
        check_style(
            Style::Opensearch,
            &[
                "elasticsearch['enable'] = false",
                "opensearch['external'] = true",
                "opensearch['external_url'] = 'https://127.0.0.1:9200'",
                "opscode_erchef['search_provider'] = 'opensearch'",
            ],
            "opscode_solr4",
        );
    }

    #[test]
    fn an_old_open_cluster_keeps_the_old_settings() {
        let t = render(&frontend(false), Style::ChefBackend);
        assert!(t.contains("opscode_solr4['external_url'] = 'http://127.0.0.1:9200'"));
        assert!(t.contains("postgresql['sslmode'] = 'disable'"));
        assert!(!t.contains("search_auth"));
    }
}
