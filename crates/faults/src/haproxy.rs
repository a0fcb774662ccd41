//! haproxy on the client host, configured the way a Chef Infra Server frontend configures it
//! for Chef Backend (chef-backend.md §5): TCP proxying of 5432 and 9200 to whichever backend
//! answers the HTTP health check, `inter 2s rise 1 fall 1`, `shutdown-sessions` on DOWN.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::netns::Netns;

/// haproxy's `inter`: how often it checks each server (Chef frontends' setting).
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// What haproxy checks on each backend node.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    /// `/leader` for Larder / Chef Backend, `/primary` for Patroni.
    pub path: String,
    /// 7331 for Larder, 8008 for Patroni's REST API.
    pub port: u16,
    /// What the suite's own samplers ask: the same check, answered at once (Larder holds a
    /// `/leader` check whose answer is about to change; samplers want the state right now).
    pub sample_path: String,
}

impl HealthCheck {
    pub fn larder() -> Self {
        HealthCheck {
            path: "/leader".into(),
            port: 7331,
            sample_path: "/leader?wait=0".into(),
        }
    }
    /// `larder-faults primary-check` on the pg_auto_failover nodes (same port and path as
    /// Patroni's REST API).
    pub fn primary_check() -> Self {
        Self::patroni()
    }
    pub fn patroni() -> Self {
        HealthCheck {
            path: "/primary".into(),
            port: 8008,
            sample_path: "/primary".into(),
        }
    }
}

/// One proxied service: listens on the client's 127.0.0.1:`port`, forwards to `port` on the
/// node that passes the check.
#[derive(Debug, Clone)]
pub struct Service {
    pub backend: String,
    pub port: u16,
}

pub fn chef_services() -> Vec<Service> {
    vec![
        Service {
            backend: "chef_backend_postgresql".into(),
            port: 5432,
        },
        Service {
            backend: "chef_backend_elasticsearch".into(),
            port: 9200,
        },
    ]
}

/// Renders the configuration, listening on the client's 127.0.0.1. `nodes` are (server name, ip).
pub fn render_config(
    nodes: &[(String, String)],
    check: &HealthCheck,
    services: &[Service],
) -> String {
    render_config_on("127.0.0.1", nodes, check, services)
}

/// [`render_config`] listening on `bind` (tests that run the proxy beside the cluster).
pub fn render_config_on(
    bind: &str,
    nodes: &[(String, String)],
    check: &HealthCheck,
    services: &[Service],
) -> String {
    let mut c = String::new();
    c.push_str("global\n  maxconn 4096\n\n");
    // Timeouts as chef-server writes them.
    c.push_str(
        "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 50s\n  timeout server 50s\n  timeout tunnel 300s\n  timeout client-fin 1s\n  timeout server-fin 1s\n\n",
    );
    for s in services {
        c.push_str(&format!(
            "frontend {b}_front\n  bind {bind}:{p}\n  mode tcp\n  default_backend {b}\n\n",
            b = s.backend,
            p = s.port
        ));
        c.push_str(&format!(
            "backend {}\n  mode tcp\n  option httpchk\n",
            s.backend
        ));
        c.push_str(&format!(
            "  http-check send meth GET uri {} ver HTTP/1.1 hdr Host localhost:{}\n",
            check.path, check.port
        ));
        c.push_str(&format!(
            "  default-server inter {}s rise 1 fall 1 on-marked-down shutdown-sessions\n",
            CHECK_INTERVAL.as_secs()
        ));
        for (name, ip) in nodes {
            c.push_str(&format!(
                "  server {name} {ip}:{} check port {}\n",
                s.port, check.port
            ));
        }
        c.push('\n');
    }
    c
}

pub struct Haproxy {
    pub config: PathBuf,
    pub log: PathBuf,
    child: Child,
}

impl Haproxy {
    /// Writes the config into `dir` and starts haproxy in the foreground (`-db`) inside the
    /// client namespace, then waits until it listens on the first service port.
    pub fn start(client: &Netns, dir: &Path, config_text: &str, first_port: u16) -> Result<Self> {
        let config = dir.join("haproxy.cfg");
        let log = dir.join("haproxy.log");
        std::fs::write(&config, config_text).map_err(|e| Error::io(&config, e))?;
        let cfg = config.to_string_lossy().to_string();
        client.run("haproxy", &["-c", "-q", "-f", &cfg])?;
        let child = client.spawn_daemon("haproxy", &["-db", "-f", &cfg], &log)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let listening = client
                .run("ss", &["-Hltn", &format!("sport = :{first_port}")])
                .map(|s| !s.trim().is_empty())
                .unwrap_or(false);
            if listening {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: format!(
                        "haproxy to listen on 127.0.0.1:{first_port} (log {})",
                        log.display()
                    ),
                    secs: 10.0,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Haproxy { config, log, child })
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_matches_chef_frontend_contract() {
        let nodes = vec![("n1".to_string(), "10.0.0.1".to_string())];
        let c = render_config(&nodes, &HealthCheck::larder(), &chef_services());
        assert!(c.contains("option httpchk"));
        assert!(
            c.contains("http-check send meth GET uri /leader ver HTTP/1.1 hdr Host localhost:7331")
        );
        assert!(
            c.contains("default-server inter 2s rise 1 fall 1 on-marked-down shutdown-sessions")
        );
        assert!(c.contains("server n1 10.0.0.1:5432 check port 7331"));
        assert!(c.contains("server n1 10.0.0.1:9200 check port 7331"));
        assert!(c.contains("bind 127.0.0.1:5432"));
        assert!(c.contains("bind 127.0.0.1:9200"));
        assert!(
            !c.contains("http-check expect"),
            "Chef relies on the 2xx/3xx default"
        );
    }

    #[test]
    fn patroni_check_is_parametrized() {
        let nodes = vec![("n2".to_string(), "10.0.0.2".to_string())];
        let c = render_config(&nodes, &HealthCheck::patroni(), &chef_services()[..1]);
        assert!(c.contains("uri /primary ver HTTP/1.1 hdr Host localhost:8008"));
        assert!(c.contains("server n2 10.0.0.2:5432 check port 8008"));
        assert!(!c.contains(":9200"));
    }
}
