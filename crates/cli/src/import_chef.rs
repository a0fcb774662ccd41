//! `import-chef-backend`: turn a Chef Backend node's chef-backend.rb and
//! chef-backend-secrets.json into larder.toml and Larder's secrets file, keeping the
//! PostgreSQL passwords so the Chef frontends keep working. Everything is read, mapped and
//! validated before anything is written; a refusal changes nothing.

use anyhow::{bail, Context};
use larder_agent::node::{new_guid, new_password, write_private};
use larder_core::chef_backend::{import_config, parse_chef_secrets, parse_rb};
use larder_core::paths::Paths;
use larder_core::secrets::{EtcdSecrets, LarderSecrets, PgSecrets, SearchSecrets, Secret, Secrets};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct ImportArgs {
    /// Chef Backend's configuration.
    #[arg(long, default_value = "/etc/chef-backend/chef-backend.rb")]
    config: PathBuf,
    /// Chef Backend's secrets file.
    #[arg(long, default_value = "/etc/chef-backend/chef-backend-secrets.json")]
    secrets: PathBuf,
    /// larder.toml to write (default: this node's); the secrets file is written next to it as
    /// chef-backend-secrets.json.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Overwrite an existing larder.toml / secrets file.
    #[arg(short, long)]
    yes: bool,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "larder".into())
}

fn read(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {what} {}", path.display()))
}

pub fn import_chef_backend(paths: &Paths, a: ImportArgs) -> anyhow::Result<()> {
    let rb_name = a.config.display().to_string();
    let rb = read(&a.config, "the Chef Backend configuration")?;
    let settings = parse_rb(&rb, &rb_name)?;
    let imported = import_config(&settings, &rb_name, &hostname())?;
    let sec_name = a.secrets.display().to_string();
    let chef = parse_chef_secrets(&read(&a.secrets, "the Chef Backend secrets")?, &sec_name)?;

    let (cfg_out, own_node) = match &a.output {
        Some(p) => (p.clone(), false),
        None => (paths.config_file(), true),
    };
    let sec_out = cfg_out
        .parent()
        .map(|d| d.join("chef-backend-secrets.json"))
        .unwrap_or_else(|| PathBuf::from("chef-backend-secrets.json"));
    if own_node && paths.node_state_file().exists() {
        bail!("this node already belongs to a Larder cluster ({} exists): importing would replace its secrets and cluster CA; nothing was written. Import on a fresh node, or pass --output FILE", paths.node_state_file().display());
    }
    for p in [&cfg_out, &sec_out] {
        if p.exists() && !a.yes {
            bail!(
                "{} already exists; pass --yes to overwrite it; nothing was written",
                p.display()
            );
        }
    }

    // Chef Backend had no CA: the cluster CA is new. Everything else is Chef's.
    let (ca_cert, ca_key) = larder_agent::pki::generate_ca()?;
    let generated_token = chef.initial_cluster_token.is_none();
    let generated_name = chef.cluster_name.is_none();
    let (auth_username, auth_password) = larder_agent::node::new_search_credentials();
    let secrets = Secrets {
        postgresql: PgSecrets {
            db_superuser_password: chef.db_superuser_password.clone(),
            replication_password: chef.replication_password.clone(),
            ..PgSecrets::default()
        },
        etcd: EtcdSecrets {
            initial_cluster_token: chef
                .initial_cluster_token
                .clone()
                .unwrap_or_else(|| Secret::new(new_password(32))),
        },
        elasticsearch: SearchSecrets {
            cluster_name: chef
                .cluster_name
                .clone()
                .unwrap_or_else(|| format!("larder-{}", &new_guid()[..8])),
            // A new cluster: its frontends get the credentials from gen-server-config.
            auth_username,
            auth_password,
            previous_auth_password: Secret::default(),
        },
        larder: LarderSecrets {
            ca_cert_pem: ca_cert,
            ca_key_pem: Secret::new(ca_key),
        },
    };
    let json = secrets.to_json();
    Secrets::parse(&json, &sec_out.display().to_string())?;

    write_config_file(&cfg_out, &imported.toml)?;
    if let Err(e) = write_private(&sec_out, json.as_bytes()) {
        let _ = std::fs::remove_file(&cfg_out);
        return Err(
            e.context("the secrets file could not be written; larder.toml was removed again")
        );
    }

    println!(
        "wrote {} ({} settings from {rb_name}; the rest keep Larder's defaults)",
        cfg_out.display(),
        imported.mapped.len()
    );
    println!(
        "wrote {} (mode 0600): Chef Backend's PostgreSQL passwords{}{}, and a new cluster CA",
        sec_out.display(),
        if generated_token {
            ", a new etcd token"
        } else {
            ", its etcd token"
        },
        if generated_name {
            ", a new search cluster name"
        } else {
            ", its search cluster name"
        },
    );
    for n in &imported.notes {
        println!("note: {n}");
    }
    if !imported.unmapped.is_empty() {
        eprintln!(
            "warning: {} setting(s) of {rb_name} were not imported:",
            imported.unmapped.len()
        );
        for u in &imported.unmapped {
            eprintln!("  {} (line {}): {}", u.key, u.line, u.reason);
        }
    }
    if !chef.unknown.is_empty() {
        eprintln!(
            "warning: {} key(s) of {sec_name} are not used by Larder: {}",
            chef.unknown.len(),
            chef.unknown.join(", ")
        );
    }
    if own_node {
        println!("next: `larder create-cluster` on this node (it keeps these secrets), then `larder join-cluster` on the others with this secrets file");
    }
    Ok(())
}

/// larder.toml holds no secrets; written whole (temporary file, then rename).
fn write_config_file(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
