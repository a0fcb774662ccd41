//! The shell side of the VIP and of the role-change hooks. The core decides when the VIP is
//! added, renewed and removed (`larder_core::decide::vip`); this carries it out, keeps what the
//! loop last saw of it, and queues hook events after each decision (never waiting for a hook).

use super::*;
use crate::hooks::{Context, Event, Hooks};
use crate::vip::Vip;
use larder_core::config::Config;
use larder_core::decide::vip::VipView;

pub(super) struct Roles {
    vip: Option<Vip>,
    vip_margin: Duration,
    /// The VIP is on the interface (as last seen or left by an action).
    present: bool,
    hooks: Hooks,
    /// Term for which `on_promote` ran (so it runs once per leadership).
    promoted_term: Option<u64>,
}

impl Roles {
    pub(super) fn new(cfg: &Config) -> Roles {
        Roles {
            vip: Vip::from_config(cfg),
            vip_margin: Duration::from_millis(cfg.leaderl.vip_margin_ms),
            present: false,
            hooks: Hooks::start(&cfg.hooks),
            promoted_term: None,
        }
    }

    /// What the core needs to know about the VIP (`None`: none configured). When `ip` cannot
    /// tell, the VIP counts as present: the safe error (a non-leader then removes it).
    pub(super) async fn observe(&mut self) -> Option<VipView> {
        let vip = self.vip.as_ref()?;
        let present = vip.present().await.unwrap_or(true);
        self.present = present;
        Some(VipView {
            present,
            margin_ms: self.vip_margin.as_millis() as u64,
        })
    }

    pub(super) async fn vip_present(&mut self) -> bool {
        match &self.vip {
            Some(v) => v.present().await.unwrap_or(true),
            None => false,
        }
    }

    /// When the loop must wake to drop a held VIP.
    pub(super) fn vip_deadline(&self, fence_deadline: Instant) -> Option<Instant> {
        (self.vip.is_some() && self.present).then(|| {
            fence_deadline
                .checked_sub(self.vip_margin)
                .unwrap_or(fence_deadline)
        })
    }

    pub(super) async fn add_vip(&mut self, lifetime_s: u32) -> anyhow::Result<()> {
        let Some(vip) = &self.vip else { return Ok(()) };
        vip.add(lifetime_s).await?;
        self.present = true;
        tracing::info!(
            "VIP {} added on {} (kernel lifetime {lifetime_s} s), announced by gratuitous ARP",
            vip.address,
            vip.interface
        );
        Ok(())
    }

    pub(super) async fn renew_vip(&mut self, lifetime_s: u32) -> anyhow::Result<()> {
        let Some(vip) = &self.vip else { return Ok(()) };
        if let Err(e) = vip.renew(lifetime_s).await {
            // Most likely the kernel expired it a moment ago: the next decision adds it again.
            self.present = vip.present().await.unwrap_or(true);
            return Err(e);
        }
        Ok(())
    }

    pub(super) async fn remove_vip(&mut self, reason: &str) -> anyhow::Result<()> {
        let Some(vip) = &self.vip else { return Ok(()) };
        vip.remove().await?;
        self.present = false;
        tracing::info!(
            "VIP {} removed from {}: {reason}",
            vip.address,
            vip.interface
        );
        Ok(())
    }
}

impl HaLoop {
    fn hook_context(&self) -> Context {
        let s = self.state.borrow();
        let cfg = &self.node.cfg;
        Context {
            role: s.role.map(|r| r.as_str().to_string()).unwrap_or_default(),
            term: s.lease.map(|l| l.term).unwrap_or(s.term),
            node_name: cfg.fqdn.clone(),
            node_address: cfg.publish_address.clone(),
            leader_name: s
                .leader
                .as_ref()
                .map(|l| l.name.clone())
                .unwrap_or_default(),
            leader_address: s
                .leader
                .as_ref()
                .map(|l| l.address.clone())
                .unwrap_or_default(),
            vip: cfg.vip.clone(),
            vip_interface: cfg.vip_interface.clone(),
        }
    }

    pub(super) fn roles_fire(&self, event: Event) {
        self.roles.hooks.fire(event, self.hook_context());
    }

    pub(super) fn roles_on_start(&self) {
        self.roles_fire(Event::Start);
    }

    /// After a decision was carried out: publish what became of the VIP and queue the hook
    /// events it amounts to (fence, demote, or — once per term — promote when writable).
    pub(super) fn roles_after(&mut self, decision: &decide::Decision, had_lease: bool) {
        let vip = self.roles.vip.as_ref().map(|v| crate::control::VipStatus {
            address: v.address.clone(),
            interface: v.interface.clone(),
            present: self.roles.present,
        });
        let last_hook = self.roles.hooks.last.lock().unwrap().clone();
        self.state.send_modify(|s| {
            s.vip = vip;
            s.last_hook = last_hook;
        });
        let has = |f: fn(&Action) -> bool| decision.actions.iter().any(f);
        if has(|a| matches!(a, Action::Fence { .. })) {
            self.roles.promoted_term = None;
            self.roles_fire(Event::Fence);
            return;
        }
        if had_lease && has(|a| matches!(a, Action::StepDown { .. } | Action::ReleaseLeadership)) {
            self.roles.promoted_term = None;
            self.roles_fire(Event::Demote);
            return;
        }
        let (term, writable) = {
            let s = self.state.borrow();
            let primary = s.pg.as_ref().is_some_and(|p| p.state == PgState::Primary);
            (
                s.lease.map(|l| l.term),
                primary && decision.role == NodeRole::Leader,
            )
        };
        if let (Some(t), true) = (term, writable) {
            if self.roles.promoted_term != Some(t) {
                self.roles.promoted_term = Some(t);
                self.roles_fire(Event::Promote);
            }
        }
    }
}
