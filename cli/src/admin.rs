//! Administration: `admin export` and `admin import` of saved-files.json.
use crate::Ctx;
use clap::Subcommand;
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
    /// Load an original saved-files.json of any size: checked whole first (nothing is
    /// imported from a file that is not JSON, not the original format or cut short), then
    /// committed in slices; reports per file. Files already there are skipped.
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
    match cmd {
        AdminCmd::Health(a) => crate::health::run(ctx, a).await,
        AdminCmd::Fsck(a) => crate::fsck::fsck(ctx, a).await,
        AdminCmd::Gc(a) => crate::fsck::gc(ctx, a).await,
        AdminCmd::Balance(a) => crate::fsck::balance(ctx, a).await,
        AdminCmd::Ca(c) => crate::certs::ca(ctx, c),
        AdminCmd::Cert(c) => crate::certs::cert(ctx, c).await,
        AdminCmd::Export { out } => {
            crate::import::export(&ctx.client()?, out.as_deref(), ctx.json).await
        }
        AdminCmd::Import { file } => crate::import::import(&ctx.client()?, &file, ctx.json).await,
    }
}
