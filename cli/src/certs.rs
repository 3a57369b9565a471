//! certs: `dfsctl admin ca init` and `dfsctl admin cert issue`: the cluster CA and the
//! certificates every node (and, if wanted, a gateway or client) shows to its peers. Offline
//! commands: they read and write files only, no cluster is contacted.
//!
//! What must stay true: the CA key is written 0600 and never replaced (`ca init` refuses an
//! existing CA); a certificate names exactly one identity (`<role> <id>`).
use crate::output::print_json;
use crate::Ctx;
use clap::{Args, Subcommand};
use dfs_common::pki::{self, Identity, Role};
use serde_json::json;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum CaCmd {
    /// Make a new cluster CA (ca.pem, and ca.key readable by you only) in --dir.
    #[command(
        after_help = "Keep ca.key off the nodes: it is needed only to issue certificates.\n\nExample: dfsctl admin ca init --dir /etc/dfs/ca"
    )]
    Init {
        /// Directory for ca.pem and ca.key.
        #[arg(long, default_value = "dfs-ca")]
        dir: PathBuf,
        /// A name for the cluster, written into the CA certificate.
        #[arg(long, default_value = "dfs")]
        name: String,
        /// Days the CA certificate is valid.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum CertCmd {
    /// Issue a certificate (<role>-<id>.pem and .key) signed by the cluster CA.
    #[command(
        after_help = "A metasrv needs --role meta --id <its --id>; a chunk server --role chunk --id N (it then
registers as chunk server N). Reissuing into the same place rotates the certificate: the
node picks the new files up within seconds, or at once on SIGHUP.

Example: dfsctl admin cert issue --ca-dir /etc/dfs/ca --role chunk --id 3 --san host3.example --out /etc/dfs/tls"
    )]
    Issue(IssueArgs),
    /// Shut a node's certificate identity out of the cluster (admin): its calls to metasrv
    /// are refused, chunk servers take no order from it; --allow lets it in again.
    #[command(
        after_help = "`dfsctl cluster remove-member N` revokes `meta N` by itself (add-member lets it in again).
A chunk server that is revoked stops heartbeating: its chunks are re-replicated elsewhere.

Example: dfsctl admin cert revoke --role chunk --id 3"
    )]
    Revoke {
        /// meta, chunk, gateway or client.
        #[arg(long)]
        role: String,
        /// The node id (meta, chunk) or a name (gateway, client).
        #[arg(long)]
        id: String,
        /// Let the identity in again instead.
        #[arg(long)]
        allow: bool,
    },
}

#[derive(Args, Debug)]
pub struct IssueArgs {
    /// meta, chunk, gateway or client.
    #[arg(long)]
    pub role: String,
    /// The node id (meta, chunk) or a name (gateway, client).
    #[arg(long)]
    pub id: String,
    /// Directory of the CA (from `ca init`).
    #[arg(long, default_value = "dfs-ca")]
    pub ca_dir: PathBuf,
    /// Directory to write the certificate and key to.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// Host names or IP addresses the holder is reached at (repeatable; informational for
    /// dfs, which checks the role, useful for other TLS tools).
    #[arg(long)]
    pub san: Vec<String>,
    /// Days the certificate is valid.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
}

pub fn ca(ctx: &Ctx, cmd: CaCmd) -> anyhow::Result<i32> {
    let CaCmd::Init { dir, name, days } = cmd;
    let cert = pki::init_ca(&dir, &name, days)?;
    if ctx.json {
        print_json(&json!({"ok": true, "ca": cert, "key": dir.join(pki::CA_KEY)}));
    } else if !ctx.quiet {
        println!(
            "cluster CA in {} (certificate {}, key {}: keep the key off the nodes)",
            dir.display(),
            cert.display(),
            dir.join(pki::CA_KEY).display()
        );
    }
    Ok(0)
}

pub async fn cert(ctx: &Ctx, cmd: CertCmd) -> anyhow::Result<i32> {
    let a = match cmd {
        CertCmd::Issue(a) => a,
        CertCmd::Revoke { role, id, allow } => {
            let identity = Identity::new(Role::parse(&role)?, &id)?;
            let c = ctx.client()?;
            dfs_client::rpc!(
                c,
                revoke_certificate,
                dfs_proto::RevokeCertificateRequest {
                    identity: identity.to_string(),
                    allow,
                }
            )?;
            let what = if allow { "allowed again" } else { "revoked" };
            if ctx.json {
                print_json(
                    &json!({"ok": true, "identity": identity.to_string(), "revoked": !allow}),
                );
            } else if !ctx.quiet {
                println!("{identity}: {what}");
            }
            return Ok(0);
        }
    };
    let identity = Identity::new(Role::parse(&a.role)?, &a.id)?;
    let out = pki::issue(&a.ca_dir, &identity, &a.san, &a.out, a.days)?;
    if ctx.json {
        print_json(
            &json!({"ok": true, "identity": identity.to_string(), "cert": out.cert, "key": out.key}),
        );
    } else if !ctx.quiet {
        println!(
            "{identity}: certificate {}, key {}",
            out.cert.display(),
            out.key.display()
        );
    }
    Ok(0)
}
