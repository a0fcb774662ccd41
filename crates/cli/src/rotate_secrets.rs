//! `larder rotate-secrets --search [--finish]`: rotate the search API's password without
//! cutting any frontend off (`larder_agent::secret_rotation`): first the new password is
//! accepted beside the old on every node, then the frontends move over, then `--finish`
//! drops the old one.

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
    if postgresql {
        bail!("rotating the PostgreSQL passwords is not available yet (PostgreSQL holds one password per role, so frontends and every node must switch at once; see README, Security); nothing was changed");
    }
    if !search {
        bail!(
            "say which secret to rotate: --search (the search API's password); nothing was changed"
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
