//! Every file location derives from one root, so several nodes can share a machine (tests, the
//! local demo cluster) and a production node uses the standard FHS directories with root `/`.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    root: PathBuf,
}

impl Paths {
    pub fn new(root: impl Into<PathBuf>) -> Paths {
        Paths { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn config_dir(&self) -> PathBuf {
        self.root.join("etc/larder")
    }
    pub fn config_file(&self) -> PathBuf {
        self.config_dir().join("larder.toml")
    }
    pub fn secrets_file(&self) -> PathBuf {
        self.config_dir().join("chef-backend-secrets.json")
    }
    /// This node's certificate and key, issued from the cluster CA.
    pub fn tls_dir(&self) -> PathBuf {
        self.config_dir().join("tls")
    }
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("var/opt/larder")
    }
    /// Identity and bootstrap state of this node (GUID, initial etcd cluster).
    pub fn node_state_file(&self) -> PathBuf {
        self.data_dir().join("node.json")
    }
    pub fn pg_data(&self) -> PathBuf {
        self.data_dir().join("postgresql/15/data")
    }
    pub fn etcd_data(&self) -> PathBuf {
        self.data_dir().join("etcd")
    }
    pub fn search_index(&self) -> PathBuf {
        self.data_dir().join("search/index")
    }
    pub fn log_dir(&self) -> PathBuf {
        self.root.join("var/log/larder")
    }
    pub fn service_log_dir(&self, service: &str) -> PathBuf {
        self.log_dir().join(service)
    }
    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run/larder")
    }
    pub fn agent_socket(&self) -> PathBuf {
        self.run_dir().join("agent.sock")
    }
    pub fn agent_pid(&self) -> PathBuf {
        self.run_dir().join("agent.pid")
    }
    pub fn pg_socket_dir(&self) -> PathBuf {
        self.run_dir().join("postgresql")
    }
    /// Where `cleanse` keeps a copy of the configuration.
    pub fn cleanse_backup_dir(&self, stamp: &str) -> PathBuf {
        self.root.join(format!("root/larder-cleanse-{stamp}"))
    }
}

impl Default for Paths {
    fn default() -> Self {
        Paths::new("/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn default_root_gives_standard_locations() {
        let p = Paths::default();
        assert_eq!(p.config_file(), PathBuf::from("/etc/larder/larder.toml"));
        assert_eq!(p.data_dir(), PathBuf::from("/var/opt/larder"));
        assert_eq!(p.log_dir(), PathBuf::from("/var/log/larder"));
        assert_eq!(p.run_dir(), PathBuf::from("/run/larder"));
    }
    #[test]
    fn relocated_root() {
        let p = Paths::new("/tmp/n1");
        assert_eq!(
            p.agent_socket(),
            PathBuf::from("/tmp/n1/run/larder/agent.sock")
        );
        assert_eq!(
            p.pg_data(),
            PathBuf::from("/tmp/n1/var/opt/larder/postgresql/15/data")
        );
    }
}
