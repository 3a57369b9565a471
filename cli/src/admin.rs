//! Administration: `admin export` and `admin import` of saved-files.json.
use crate::output::print_json;
use crate::rpc;
use crate::Ctx;
use clap::Subcommand;
use dfs_proto::*;
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum AdminCmd {
    /// One line per problem, then OK, WARN or ERR (exit 0, 1 or 2).
    #[command(
        after_help = "Checks: leader and quorum, members down or lagging, chunk servers down,\nunder-replicated or unreadable chunks, chunk server disks nearly full.\n\nExample: dfsctl admin health && echo healthy"
    )]
    Health(crate::health::HealthArgs),
    /// Missing, corrupt and under-replicated chunks per file; ends with HEALTHY, DEGRADED or
    /// CORRUPT (exit 0, 2 or 1).
    #[command(
        after_help = "A replica on a chunk server that is not live counts as missing. Chunks are numbered
from 0, as in `dfsctl stat`.

Example: dfsctl admin fsck /photos"
    )]
    Fsck(crate::fsck::FsckArgs),
    /// Chunks that no file references (interrupted puts, lost delete orders); removes the ones
    /// past the grace period only with --apply.
    #[command(after_help = "Example: dfsctl admin gc && dfsctl admin gc --apply")]
    Gc(crate::fsck::GcArgs),
    /// Move replicas from the most to the least used chunk servers (a new server, uneven
    /// use); shows the moves, runs them only with --apply (copy, verify, record, delete).
    #[command(after_help = "Example: dfsctl admin balance && dfsctl admin balance --apply")]
    Balance(crate::fsck::BalanceArgs),
    /// Print the metadata as the original system's saved-files.json (or write it to --out).
    /// The output is that one JSON document (also under --json: it is what `admin import`
    /// reads back); with --out and --json, one object says what was written.
    #[command(after_help = "Example: dfsctl admin export --out saved-files.json")]
    Export {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Load an original saved-files.json as one Raft command; reports per file.
    #[command(after_help = "Example: dfsctl admin import ./cache-metadata/saved-files.json")]
    Import { file: PathBuf },
    /// The cluster's certificate authority, for TLS between every dfs process.
    #[command(subcommand)]
    Ca(crate::certs::CaCmd),
    /// Certificates for metasrv, chunk servers, gateways and clients, signed by the CA.
    #[command(subcommand)]
    Cert(crate::certs::CertCmd),
}

pub async fn run(ctx: &Ctx, cmd: AdminCmd) -> anyhow::Result<i32> {
    if let AdminCmd::Health(a) = cmd {
        return crate::health::run(ctx, a).await;
    }
    let cmd = match cmd {
        AdminCmd::Fsck(a) => return crate::fsck::fsck(ctx, a).await,
        AdminCmd::Gc(a) => return crate::fsck::gc(ctx, a).await,
        AdminCmd::Balance(a) => return crate::fsck::balance(ctx, a).await,
        AdminCmd::Ca(c) => return crate::certs::ca(ctx, c),
        AdminCmd::Cert(c) => return crate::certs::cert(ctx, c).await,
        other => other,
    };
    let c = ctx.client()?;
    match cmd {
        AdminCmd::Health(_)
        | AdminCmd::Fsck(_)
        | AdminCmd::Gc(_)
        | AdminCmd::Balance(_)
        | AdminCmd::Ca(_)
        | AdminCmd::Cert(_) => {
            unreachable!("handled above")
        }
        AdminCmd::Export { out } => {
            let r = rpc!(c, export, Empty {})?;
            match out {
                Some(p) => {
                    dfs_common::durable::write_atomic(&p, &r.saved_files_json)?;
                    if ctx.json {
                        print_json(
                            &json!({"ok": true, "out": p.to_string_lossy(), "bytes": r.saved_files_json.len()}),
                        );
                    }
                }
                None => {
                    let mut o = std::io::stdout().lock();
                    o.write_all(&r.saved_files_json)?;
                    o.write_all(b"\n")?;
                }
            }
        }
        AdminCmd::Import { file } => {
            let bytes = std::fs::read(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let r = rpc!(
                c,
                import,
                ImportRequest {
                    saved_files_json: bytes.clone()
                }
            )?;
            if ctx.json {
                print_json(&json!({"imported": r.imported, "report": r.report}));
            } else {
                for line in &r.report {
                    println!("{line}");
                }
                println!("{} file(s) imported", r.imported);
            }
        }
    }
    Ok(0)
}
