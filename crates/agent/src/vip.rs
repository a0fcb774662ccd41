//! The VIP on the local interface: observed, added, renewed and removed with `ip`, announced
//! with `arping` (iputils). What to do and when is the core's (`larder_core::decide::vip`);
//! this module only carries it out.
//!
//! The address is a /32 on `vip_interface` with a kernel lifetime (`valid_lft`): the kernel
//! removes it by itself when the agent stops refreshing it (frozen, killed), before the
//! fencing deadline.

use larder_core::config::Config;
use std::time::Duration;

const IP: &str = "ip";
const ARPING: &str = "arping";

/// The configured VIP, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vip {
    pub address: String,
    pub interface: String,
}

impl Vip {
    pub fn from_config(cfg: &Config) -> Option<Vip> {
        (!cfg.vip.is_empty()).then(|| Vip {
            address: cfg.vip.clone(),
            interface: cfg.vip_interface.clone(),
        })
    }

    fn cidr(&self) -> String {
        format!("{}/32", self.address)
    }

    /// Whether the address is on the interface now (`None`: `ip` failed).
    pub async fn present(&self) -> Option<bool> {
        let out = run(IP, &["-o", "-4", "addr", "show", "dev", &self.interface])
            .await
            .ok()?;
        Some(lists(&out, &self.address))
    }

    /// Add with a kernel lifetime, then announce it (in the background: gratuitous ARP, five
    /// times 200 ms apart, as keepalived and vip-manager repeat theirs).
    pub async fn add(&self, lifetime_s: u32) -> anyhow::Result<()> {
        let lft = lifetime_s.to_string();
        run(
            IP,
            &[
                "addr",
                "replace",
                &self.cidr(),
                "dev",
                &self.interface,
                "valid_lft",
                &lft,
                "preferred_lft",
                &lft,
            ],
        )
        .await?;
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.announce().await {
                tracing::warn!("gratuitous ARP for the VIP {}: {e:#}", me.address);
            }
        });
        Ok(())
    }

    /// Extend the kernel lifetime of the address (re-adds it if the kernel just expired it).
    pub async fn renew(&self, lifetime_s: u32) -> anyhow::Result<()> {
        let lft = lifetime_s.to_string();
        run(
            IP,
            &[
                "addr",
                "change",
                &self.cidr(),
                "dev",
                &self.interface,
                "valid_lft",
                &lft,
                "preferred_lft",
                &lft,
            ],
        )
        .await
        .map(|_| ())
    }

    /// Remove the address; already gone is fine.
    pub async fn remove(&self) -> anyhow::Result<()> {
        match run(IP, &["addr", "del", &self.cidr(), "dev", &self.interface]).await {
            Ok(_) => Ok(()),
            Err(e) if self.present().await == Some(false) => {
                tracing::debug!("VIP already gone: {e:#}");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Gratuitous ARP (unsolicited requests) so the LAN's caches point at this node now: five
    /// of them 200 ms apart, as keepalived does. Each is its own `arping -c 1`, started on
    /// schedule without waiting for the previous one: bookworm's iputils (20221126) takes `-i`
    /// in whole seconds only ("invalid argument: '0.2'") and each call lingers ~1 s for replies.
    pub async fn announce(&self) -> anyhow::Result<()> {
        let mut sent = tokio::task::JoinSet::new();
        for i in 0..ANNOUNCEMENTS {
            let (interface, address) = (self.interface.clone(), self.address.clone());
            sent.spawn(async move {
                tokio::time::sleep(Duration::from_millis(200 * i as u64)).await;
                let args = ["-U", "-c", "1", "-I", &interface, "-s", &address, &address];
                run(ARPING, &args).await.map(|_| ())
            });
        }
        let mut first_error = None;
        while let Some(r) = sent.join_next().await {
            if let Err(e) = r.map_err(anyhow::Error::from).and_then(|r| r) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

const ANNOUNCEMENTS: u32 = 5;

/// Whether `ip -o addr show` output lists `address` (as `inet ADDRESS/..`).
pub fn lists(ip_output: &str, address: &str) -> bool {
    let needle = format!("inet {address}/");
    ip_output.lines().any(|l| l.contains(&needle))
}

/// Checks only the host can answer, at `create-cluster`/`join-cluster` and agent start: the
/// interface exists; with `probe_in_use`, nobody on the LAN answers ARP for the address (at
/// `create-cluster`, where no node of the cluster can hold it yet).
pub async fn check_host(cfg: &Config, probe_in_use: bool) -> anyhow::Result<()> {
    let Some(vip) = Vip::from_config(cfg) else {
        return Ok(());
    };
    let sys = format!("/sys/class/net/{}", vip.interface);
    if !std::path::Path::new(&sys).exists() {
        anyhow::bail!(
            "vip_interface {:?} does not exist on this host (see `ip link`); set vip_interface (join-cluster -i IFACE) to the interface on the VIP's network",
            vip.interface
        );
    }
    if probe_in_use {
        if vip.present().await == Some(true) {
            anyhow::bail!(
                "vip {} is already configured on {}: remove it (`ip addr del {}/32 dev {}`) or choose a free address",
                vip.address, vip.interface, vip.address, vip.interface
            );
        }
        // Duplicate address detection: exit status 0 means nobody answered.
        let out = tokio::process::Command::new(ARPING)
            .args([
                "-D",
                "-c",
                "2",
                "-w",
                "2",
                "-I",
                &vip.interface,
                &vip.address,
            ])
            .output()
            .await
            .map_err(|e| anyhow::anyhow!("running {ARPING} (install iputils-arping): {e}"))?;
        if !out.status.success() {
            anyhow::bail!(
                "vip {} is already in use on the network of {} (a host answered ARP for it): choose a free address\n{}",
                vip.address,
                vip.interface,
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
    }
    Ok(())
}

async fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::process::Command::new(program).args(args).output(),
    )
    .await
    .map_err(|_| anyhow::anyhow!("{program} {} timed out", args.join(" ")))?
    .map_err(|e| anyhow::anyhow!("running {program}: {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_the_address_in_ip_output() {
        let out = "2: eth0    inet 10.231.5.1/24 brd 10.231.5.255 scope global eth0\\       valid_lft forever preferred_lft forever\n2: eth0    inet 10.231.5.100/32 scope global dynamic eth0\\       valid_lft 1sec preferred_lft 1sec\n";
        assert!(super::lists(out, "10.231.5.100"));
        assert!(!super::lists(out, "10.231.5.10"));
        assert!(super::lists(out, "10.231.5.1"));
    }
}
