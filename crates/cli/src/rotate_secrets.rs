//! `larder rotate-secrets --search [--finish]`: rotate the search API's password without
//! cutting any frontend off (`larder_agent::secret_rotation`): first the new password is
//! accepted beside the old on every node, then the frontends move over, then `--finish`
//! drops the old one.
//!
//! `larder rotate-secrets --postgresql`: new passwords for the PostgreSQL superuser and the
//! replication role on every node in one run (PostgreSQL keeps one password per role), with
//! no failover and no node locked out; the frontends' open connections stay, their next ones
//! need the new password.

use anyhow::bail;
use larder_agent::control::{self, Request};
use larder_core::paths::Paths;

pub async fn rotate_secrets(
    paths: &Paths,
    search: bool,
    postgresql: bool,
    finish: bool,
) -> anyhow::Result<()> {
    crate::report::require_configured(paths)?;
    if search && postgresql {
        bail!("one secret at a time: --search or --postgresql; nothing was changed");
    }
    if postgresql {
        if finish {
            bail!("--finish belongs to --search: a PostgreSQL rotation completes in one run (run `larder rotate-secrets --postgresql` again if one stopped part-way); nothing was changed");
        }
        return rotate_postgresql(paths).await;
    }
    if !search {
        bail!(
            "say which secret to rotate: --search (the search API's password) or --postgresql (the PostgreSQL passwords); nothing was changed"
        );
    }
    let r = control::call(
        &paths.agent_socket(),
        &Request::RotateSearchPassword { finish },
    )
    .await?;
    if !r.ok {
        bail!("{}", r.message);
    }
    if finish {
        println!(
            "✔ the old search password is refused on every node ({})",
            r.message
        );
    } else {
        println!(
            "✔ a new search password is accepted on every node ({}), beside the old one.\n\
             Next, for each frontend: `larder gen-server-config FQDN -f chef-server.rb` on this node, \
             copy it over, `chef-server-ctl reconfigure` there.\n\
             Then: `larder rotate-secrets --search --finish` to refuse the old password.\n\
             The secrets file changed on every node: refresh any copy kept elsewhere.",
            r.message
        );
    }
    Ok(())
}

async fn rotate_postgresql(paths: &Paths) -> anyhow::Result<()> {
    let r = control::call(&paths.agent_socket(), &Request::RotatePostgresqlPasswords).await?;
    if !r.ok {
        bail!("{}", r.message);
    }
    println!(
        "✔ new PostgreSQL passwords (superuser and replication) on every node ({}); every follower streams again with the new replication password.\n\
         Frontends keep the connections they have open, but each new one needs the new password now: \
         for each frontend, `larder gen-server-config FQDN -f chef-server.rb` on this node, \
         copy it over, `chef-server-ctl reconfigure` there.\n\
         The secrets file changed on every node: refresh any copy kept elsewhere.",
        r.message
    );
    Ok(())
}
