//! A real PostgreSQL 15 server for tests (never a mock): initdb into a temp dir owned by the
//! `postgres` user, started on 127.0.0.1 and a free port, stopped on Drop.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = "/usr/lib/postgresql/15/bin";

pub struct PgServer {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
    uid: u32,
    gid: u32,
}

fn postgres_ids() -> (u32, u32) {
    let u = nix::unistd::User::from_name("postgres")
        .expect("lookup postgres user")
        .expect("the postgres user exists (apt-get install postgresql-15)");
    (u.uid.as_raw(), u.gid.as_raw())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run_as(uid: u32, gid: u32, cmd: &mut Command) {
    let out = cmd.uid(uid).gid(gid).output().expect("spawn postgres tool");
    assert!(
        out.status.success(),
        "{:?} failed: {}{}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PgServer {
    /// A fresh primary (wal_level=replica, replication allowed from 127.0.0.1 without password).
    pub fn start() -> PgServer {
        let (uid, gid) = postgres_ids();
        let dir = tempfile::Builder::new()
            .prefix("larder-pg")
            .tempdir()
            .unwrap();
        nix::unistd::chown(dir.path(), Some(uid.into()), Some(gid.into())).unwrap();
        let data = dir.path().join("data");
        run_as(
            uid,
            gid,
            Command::new(format!("{BIN}/initdb"))
                .args([
                    "-D",
                    data.to_str().unwrap(),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "--no-sync",
                ])
                .env("LC_ALL", "C"),
        );
        let mut s = PgServer {
            dir,
            port: free_port(),
            child: None,
            uid,
            gid,
        };
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhost all all 127.0.0.1/32 trust\nlocal replication all trust\nhost replication all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        s.launch(&data);
        s
    }

    /// A hot standby of `primary` made with pg_basebackup -R, started on its own port.
    pub fn standby_of(primary: &PgServer) -> PgServer {
        let (uid, gid) = postgres_ids();
        let dir = tempfile::Builder::new()
            .prefix("larder-pg-standby")
            .tempdir()
            .unwrap();
        nix::unistd::chown(dir.path(), Some(uid.into()), Some(gid.into())).unwrap();
        let data = dir.path().join("data");
        run_as(
            uid,
            gid,
            Command::new(format!("{BIN}/pg_basebackup")).args([
                "-D",
                data.to_str().unwrap(),
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "--no-sync",
            ]),
        );
        let mut s = PgServer {
            dir,
            port: free_port(),
            child: None,
            uid,
            gid,
        };
        s.launch(&data);
        s
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    fn launch(&mut self, data: &Path) {
        let log = std::fs::File::create(self.dir.path().join("postgres.log")).unwrap();
        nix::unistd::chown(
            &self.dir.path().join("postgres.log"),
            Some(self.uid.into()),
            Some(self.gid.into()),
        )
        .unwrap();
        let child = Command::new(format!("{BIN}/postgres"))
            .args(["-D", data.to_str().unwrap(), "-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args([
                "-c",
                &format!("unix_socket_directories={}", self.socket_dir().display()),
            ])
            .args([
                "-c",
                "shared_buffers=256MB",
                "-c",
                "max_wal_size=4GB",
                "-c",
                "wal_level=replica",
            ])
            .args([
                "-c",
                "max_wal_senders=5",
                "-c",
                "hot_standby=on",
                "-c",
                "fsync=on",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .uid(self.uid)
            .gid(self.gid)
            .process_group(0)
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = Command::new(format!("{BIN}/pg_isready"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                ])
                .stdout(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not become ready: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// Target for the search service (TCP on 127.0.0.1).
    pub fn target(&self) -> larder_search::PgTarget {
        larder_search::PgTarget {
            host: "127.0.0.1".into(),
            port: self.port,
            user: "postgres".into(),
            dbname: "larder_search".into(),
            ..Default::default()
        }
    }

    /// Same server through its unix socket directory.
    pub fn socket_target(&self) -> larder_search::PgTarget {
        larder_search::PgTarget {
            host: self.socket_dir().display().to_string(),
            ..self.target()
        }
    }

    /// Fast shutdown, waited for.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            let _ = c.wait();
        }
    }

    /// Immediate shutdown (no checkpoint): what a crash leaves behind.
    pub fn crash(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGQUIT,
            );
            let _ = c.wait();
        }
    }

    /// Starts the server again on its data directory (after `stop` or `crash`).
    pub fn restart(&mut self) {
        let data = self.data_dir();
        self.launch(&data);
    }

    /// Promotes a standby.
    pub fn promote(&self) {
        run_as(
            self.uid,
            self.gid,
            Command::new(format!("{BIN}/pg_ctl")).args([
                "promote",
                "-w",
                "-D",
                self.data_dir().to_str().unwrap(),
            ]),
        );
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}
