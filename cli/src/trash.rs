//! `dfsctl trash`: list, restore and purge what you deleted. Output only; the calls are in
//! `dfs_client::trash`.
use crate::output::{human_bytes, print_json, time_ms};
use crate::Ctx;
use clap::Subcommand;
use dfs_client::Client;
use serde_json::json;
use std::time::Duration;

#[derive(Subcommand, Debug)]
pub enum TrashCmd {
    /// List what you deleted: when, where it was, where it is now, its size.
    #[command(after_help = "Example: dfsctl trash ls --json")]
    Ls,
    /// Put a deleted file or directory back where it was (its trash path from `trash ls`, or
    /// the path it had: then its latest deletion).
    #[command(
        after_help = "Example: dfsctl trash restore /docs/report.pdf   # -f replaces what is there now"
    )]
    Restore {
        path: String,
        /// Replace a file that is at the original path now (a directory only when empty).
        #[arg(short = 'f', long)]
        force: bool,
    },
    /// Delete for good what you deleted (everything, or what is older than --older-than).
    #[command(after_help = "Example: dfsctl trash purge --older-than 7d")]
    Purge {
        /// Only what was deleted at least this long ago (e.g. 90m, 12h, 7d).
        #[arg(long, value_parser = dfs_common::units::parse_duration)]
        older_than: Option<Duration>,
    },
}

pub async fn run(ctx: &Ctx, cmd: TrashCmd) -> anyhow::Result<i32> {
    let c = Client::new(ctx.client()?);
    match cmd {
        TrashCmd::Ls => {
            let (mut after, mut total) = (String::new(), (0u64, 0u64, 0u64));
            loop {
                let (items, next) = c.trash_page(&after, 0).await?;
                for i in &items {
                    total = (total.0 + 1, total.1 + i.files, total.2 + i.bytes);
                    let is_dir = i.info.as_ref().is_some_and(|f| f.is_dir);
                    if ctx.json {
                        print_json(&json!({
                            "path": i.path, "original_path": i.original_path,
                            "deleted_ms": i.deleted_ms, "type": if is_dir { "dir" } else { "file" },
                            "files": i.files, "bytes": i.bytes,
                        }));
                    } else {
                        println!(
                            "{}  {:>10}  {}{}\t{}",
                            time_ms(i.deleted_ms),
                            human_bytes(i.bytes),
                            i.original_path,
                            if is_dir { "/" } else { "" },
                            i.path
                        );
                    }
                }
                if next.is_empty() {
                    break;
                }
                after = next;
            }
            if !ctx.json && !ctx.quiet {
                eprintln!(
                    "{} deleted entries, {} files, {} (counted as used until purged)",
                    total.0,
                    total.1,
                    human_bytes(total.2)
                );
            }
        }
        TrashCmd::Restore { path, force } => {
            let r = c.trash_restore(&path, force).await?;
            if ctx.json {
                print_json(&json!({"ok": true, "from": r.from, "to": r.to}));
            } else if !ctx.quiet {
                println!("restored {} from {}", r.to, r.from);
            }
        }
        TrashCmd::Purge { older_than } => {
            let n = c.trash_purge(older_than.unwrap_or_default()).await?;
            if ctx.json {
                print_json(&json!({"ok": true, "removed": n}));
            } else if !ctx.quiet {
                println!("removed {n} entries for good");
            }
        }
    }
    Ok(0)
}
