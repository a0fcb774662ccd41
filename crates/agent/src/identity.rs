//! Which certificate this node presents and which CAs it trusts: one issued from the cluster
//! CA (the default), or the operator's own (`ssl.certificate`, `ssl.certificate_key`), checked
//! before use; trust is the cluster CA plus `ssl.ca`.

use crate::pki::{self, CertInfo};
use larder_core::config::Config;
use larder_core::secrets::Secrets;

/// The CA certificates this node trusts (PEM): the cluster CA and `ssl.ca`'s.
pub fn trust_pem(cfg: &Config, secrets: &Secrets) -> anyhow::Result<String> {
    let op = if cfg.ssl.ca.is_empty() {
        None
    } else {
        Some(std::fs::read_to_string(&cfg.ssl.ca).map_err(|e| {
            anyhow::anyhow!(
                "cannot read ssl.ca {}: {e}; give the operator CA's PEM file, readable by root",
                cfg.ssl.ca
            )
        })?)
    };
    Ok(pki::trust_bundle(
        &secrets.larder.ca_cert_pem,
        op.as_deref(),
    ))
}

/// A node certificate and key to install (PEM), and what identifies it.
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
    pub info: CertInfo,
    /// From `ssl.certificate` rather than issued here.
    pub operator: bool,
}

/// This node's certificate: the operator's if configured (refused unless it passes
/// [`pki::check_operator_cert`]), else a new one from the cluster CA valid for `days` (default
/// `ssl.duration_days`).
pub fn node_identity(
    cfg: &Config,
    secrets: &Secrets,
    days: Option<u32>,
) -> anyhow::Result<Identity> {
    if let Some((cert_path, key_path)) = cfg.ssl.operator_cert() {
        let read = |key: &str, path: &str| {
            std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read {key} {path}: {e}"))
        };
        let cert_pem = read("ssl.certificate", cert_path)?;
        let key_pem = read("ssl.certificate_key", key_path)?;
        let ca = read("ssl.ca", &cfg.ssl.ca)?;
        let info = pki::check_operator_cert(&cert_pem, &key_pem, &ca, &cfg.publish_address)
            .map_err(|e| anyhow::anyhow!("{e} ({cert_path}); nothing was changed"))?;
        return Ok(Identity {
            cert_pem,
            key_pem,
            info,
            operator: true,
        });
    }
    let validity = days
        .map(|days| pki::Validity { days })
        .unwrap_or_else(|| pki::Validity::of(cfg));
    let (cert_pem, key_pem) = pki::issue_node_cert(
        secrets.larder.ca_key_pem.expose(),
        &cfg.fqdn,
        &cfg.publish_address,
        validity,
    )?;
    let info = pki::cert_info_pem(&cert_pem)?;
    Ok(Identity {
        cert_pem,
        key_pem,
        info,
        operator: false,
    })
}
