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
    /// Print the metadata as the original system's saved-files.json (or write it to --out).
    #[command(after_help = "Example: dfsctl admin export --out saved-files.json")]
    Export {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Load an original saved-files.json as one Raft command; reports per file.
    #[command(after_help = "Example: dfsctl admin import ./cache-metadata/saved-files.json")]
    Import { file: PathBuf },
}

pub async fn run(ctx: &Ctx, cmd: AdminCmd) -> anyhow::Result<i32> {
    let c = ctx.client()?;
    match cmd {
        AdminCmd::Export { out } => {
            let r = rpc!(c, export, Empty {})?;
            match out {
                Some(p) => dfs_common::durable::write_atomic(&p, &r.saved_files_json)?,
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
