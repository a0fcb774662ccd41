//! `larder dev up|down|status`: a local cluster on this machine, one node per loopback address
//! (127.0.0.2, .3, …), each under its own root, every node on the standard ports.

use anyhow::{bail, Context};
use std::path::PathBuf;
use std::process::Command;

#[derive(clap::Subcommand)]
pub enum DevCmd {
    /// Create (or restart) a local cluster and print its status.
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long, default_value = "/tmp/larder-dev")]
        dir: PathBuf,
    },
    /// Stop and remove the local cluster.
    Down {
        #[arg(long, default_value = "/tmp/larder-dev")]
        dir: PathBuf,
    },
    /// Cluster status as seen from the first node.
    Status {
        #[arg(long, default_value = "/tmp/larder-dev")]
        dir: PathBuf,
    },
}

fn larder(root: &PathBuf, args: &[&str]) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let st = Command::new(exe)
        .arg("--root")
        .arg(root)
        .args(args)
        .status()
        .context("cannot run larder")?;
    if !st.success() {
        bail!(
            "`larder --root {} {}` failed",
            root.display(),
            args.join(" ")
        );
    }
    Ok(())
}

fn node_root(dir: &std::path::Path, i: usize) -> PathBuf {
    dir.join(format!("n{i}"))
}

pub async fn run(cmd: DevCmd) -> anyhow::Result<()> {
    match cmd {
        DevCmd::Up { nodes, dir } => {
            if nodes == 0 || nodes % 2 == 0 || nodes > 9 {
                bail!(
                    "--nodes must be odd and between 1 and 9 (a majority must survive a failure)"
                );
            }
            let first = node_root(&dir, 1);
            if first.join("var/opt/larder/node.json").exists() {
                eprintln!(
                    "a local cluster exists in {}; starting its nodes",
                    dir.display()
                );
                for i in 1..=nodes {
                    let r = node_root(&dir, i);
                    if r.exists() {
                        larder(&r, &["start"])?;
                    }
                }
            } else {
                eprintln!("== node n1 (127.0.0.2): create-cluster");
                larder(
                    &first,
                    &[
                        "create-cluster",
                        "--publish-address",
                        "127.0.0.2",
                        "--fqdn",
                        "n1",
                        "-y",
                    ],
                )?;
                let secrets = first.join("etc/larder/chef-backend-secrets.json");
                for i in 2..=nodes {
                    let addr = format!("127.0.0.{}", i + 1);
                    eprintln!("== node n{i} ({addr}): join-cluster");
                    larder(
                        &node_root(&dir, i),
                        &[
                            "join-cluster",
                            "127.0.0.2",
                            "-s",
                            &secrets.display().to_string(),
                            "--publish-address",
                            &addr,
                            "--fqdn",
                            &format!("n{i}"),
                            "-y",
                        ],
                    )?;
                }
            }
            println!();
            larder(&first, &["cluster-status"])?;
            println!("\nEach node lives under {}/nK. Try:", dir.display());
            println!("  larder --root {} status", first.display());
            println!(
                "  watch -n1 larder --root {} cluster-status",
                first.display()
            );
            println!(
                "  kill -9 $(cat {}/run/larder/agent.pid)   # watch another node take over",
                first.display()
            );
            println!(
                "  larder --root {} promote n1              # planned switchover",
                node_root(&dir, 2).display()
            );
            println!("  larder dev down                            # remove it all");
            Ok(())
        }
        DevCmd::Down { dir } => {
            if !dir.exists() {
                println!("no local cluster in {}", dir.display());
                return Ok(());
            }
            for e in std::fs::read_dir(&dir)? {
                let root = e?.path();
                if root.join("var/opt/larder/node.json").exists()
                    || root.join("run/larder").exists()
                {
                    let _ = crate::agent_process::stop_agent(
                        &larder_core::paths::Paths::new(&root),
                        false,
                    )
                    .await;
                }
            }
            std::fs::remove_dir_all(&dir)?;
            println!("local cluster in {} stopped and removed", dir.display());
            Ok(())
        }
        DevCmd::Status { dir } => larder(&node_root(&dir, 1), &["cluster-status"]),
    }
}
