//! Namespace commands: ls, stat, mkdir, mv, rm, rmdir, du.
use crate::client::new_request_id;
use crate::output::{file_json, fully_replicated, human_bytes, print_json, time_ms};
use crate::Ctx;
use clap::Args;
use dfs_proto::*;
use serde_json::json;

/// Make a path absolute (`a/b` means `/a/b`); the server checks the rest.
pub fn remote(p: &str) -> String {
    if p.is_empty() || p.starts_with('/') {
        p.to_string()
    } else {
        format!("/{p}")
    }
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Directories or files (several are listed one after the other).
    #[arg(default_value = "/", num_args = 1..)]
    pub paths: Vec<String>,
    /// All entries: the trash (`/.trash`) too, which is hidden unless you list inside it.
    #[arg(short = 'a')]
    pub all: bool,
    /// Long format: type, owner, size, replication, modification time.
    #[arg(short = 'l')]
    pub long: bool,
    /// Recurse into directories.
    #[arg(short = 'R')]
    pub recursive: bool,
    /// With -l, sizes in K, M, G (as `ls -lh`; so `-h` is not help here: use --help).
    #[arg(short = 'h')]
    pub human: bool,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
    /// Answer from the contacted node's state without a leader check (may be slightly stale).
    #[arg(long)]
    pub stale: bool,
}

#[derive(Args, Debug)]
pub struct MkdirArgs {
    /// One or more directories (each is tried; exit 1 if any failed).
    #[arg(required = true, num_args = 1..)]
    pub paths: Vec<String>,
    /// Create missing parents; no error if it exists.
    #[arg(short = 'p')]
    pub parents: bool,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    /// One or more paths (each is tried; exit 1 if any failed).
    #[arg(required = true, num_args = 1..)]
    pub paths: Vec<String>,
    /// Remove a directory and everything in it.
    #[arg(short = 'r', short_alias = 'R')]
    pub recursive: bool,
    /// No error for a path that does not exist (as `rm -f`; so `rm -rf` works).
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Delete for good at once instead of moving to your trash.
    #[arg(long)]
    pub skip_trash: bool,
}

pub async fn ls(ctx: &Ctx, a: LsArgs) -> anyhow::Result<i32> {
    let c = ctx.client()?;
    let a = &a;
    each(ctx, &a.paths, |path| {
        let c = &c;
        async move {
            // The trash is listed with `dfsctl trash ls` (or `ls -a`, or by listing it).
            let hide_trash = !a.all && !dfs_common::path::in_trash(&remote(&path));
            // Printed page by page: a listing of any size is never held whole.
            c.list_pages(&path, a.recursive, a.stale, |page| {
                let entries: Vec<FileInfo> = page
                    .into_iter()
                    .filter(|f| !(hide_trash && dfs_common::path::in_trash(&f.path)))
                    .collect();
                print_listing(ctx, a, &entries);
            })
            .await?;
            Ok(())
        }
    })
    .await
}

/// One listing's lines (each entry shows its full path, so several listings need no headers).
fn print_listing(ctx: &Ctx, a: &LsArgs, entries: &[FileInfo]) {
    for f in entries {
        if ctx.json {
            print_json(&file_json(f, false));
        } else if a.long {
            let kind = match (f.is_dir, f.is_symlink) {
                (true, _) => "d",
                (_, true) => "l",
                _ => "-",
            };
            let rep = if f.is_dir || f.is_symlink {
                "-".to_string()
            } else {
                f.replication.to_string()
            };
            let size = if a.human {
                human_bytes(f.size)
            } else {
                f.size.to_string()
            };
            let link = if f.is_symlink {
                format!(" -> {}", f.symlink_target)
            } else {
                String::new()
            };
            println!(
                "{kind} {:<10} {:>12} {:>2} {} {}{link}",
                f.owner,
                size,
                rep,
                time_ms(f.modified_ms),
                f.path
            );
        } else {
            println!("{}{}", f.path, if f.is_dir { "/" } else { "" });
        }
    }
}

pub async fn stat(ctx: &Ctx, path: &str) -> anyhow::Result<i32> {
    let c = ctx.client()?;
    let path = remote(path);
    let f = crate::rpc!(
        c,
        stat,
        StatRequest {
            path: path.clone(),
            stale: false
        }
    )?;
    if ctx.json {
        print_json(&file_json(&f, true));
        return Ok(0);
    }
    println!("path:        {}", f.path);
    if f.is_symlink {
        println!("type:        symbolic link -> {}", f.symlink_target);
    } else {
        println!(
            "type:        {}",
            if f.is_dir { "directory" } else { "file" }
        );
    }
    println!("owner:       {}", f.owner);
    println!("created:     {}", time_ms(f.created_ms));
    println!("modified:    {}", time_ms(f.modified_ms));
    if !f.is_dir && !f.is_symlink {
        println!("size:        {} ({})", f.size, human_bytes(f.size));
        println!("sha256:      {}", f.sha256);
        println!(
            "replication: {} ({})",
            f.replication,
            if fully_replicated(&f) {
                "fully replicated"
            } else {
                "UNDER-REPLICATED"
            }
        );
        // Numbered from 0, as `admin fsck` and the JSON `index` do (chunk i starts at byte
        // i * chunk size).
        println!("chunks:      {} (numbered from 0)", f.chunks.len());
        for (i, ch) in f.chunks.iter().enumerate() {
            let reps: Vec<String> = ch
                .replicas
                .iter()
                .zip(&ch.replica_addrs)
                .map(|(id, a)| format!("{id}@{a}"))
                .collect();
            println!(
                "  {:>4} {} {:>10} crc32c={:08x} replicas=[{}]",
                i,
                ch.chunk_id,
                ch.size,
                ch.crc32c,
                reps.join(" ")
            );
        }
    }
    Ok(0)
}

/// Run `one` on each path; a failure is printed and the rest still run (as Unix `rm a b`).
async fn each<F, Fut>(ctx: &Ctx, paths: &[String], mut one: F) -> anyhow::Result<i32>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    if let [p] = paths {
        // One path: the error goes up as before (printed once by main).
        one(remote(p)).await?;
        return Ok(0);
    }
    let mut code = 0;
    for p in paths {
        if let Err(e) = one(remote(p)).await {
            crate::output::print_error(ctx.json, &e);
            code = 1;
        }
    }
    Ok(code)
}

pub async fn mkdir(ctx: &Ctx, a: MkdirArgs) -> anyhow::Result<i32> {
    let c = ctx.client()?;
    each(ctx, &a.paths, |path| {
        let c = &c;
        async move {
            let request_id = new_request_id();
            crate::rpc!(
                c,
                mkdir,
                MkdirRequest {
                    path: path.clone(),
                    parents: a.parents,
                    request_id: request_id.clone(),
                }
            )?;
            if ctx.json {
                print_json(&json!({"ok": true, "path": path}));
            }
            Ok(())
        }
    })
    .await
}

#[derive(Args, Debug)]
pub struct MvArgs {
    pub from: String,
    /// New path, or an existing directory to move FROM into (keeping its name).
    pub to: String,
    /// Replace an existing file at TO (it is removed first, then FROM renamed: see README).
    #[arg(short = 'f', long)]
    pub force: bool,
}

async fn rename(
    c: &crate::client::MetaConn,
    from: &str,
    to: &str,
    mode: RenameMode,
) -> Result<(), tonic::Status> {
    let request_id = new_request_id();
    crate::rpc!(
        c,
        rename,
        RenameRequest {
            from: from.to_string(),
            to: to.to_string(),
            request_id: request_id.clone(),
            mode: mode as i32,
        }
    )?;
    Ok(())
}

/// `mv FROM TO`. Onto an existing file it is refused unless -f, as `put` and `get` are.
/// With -f the file at TO is replaced in one atomic rename (a crash leaves either the old TO
/// or FROM at TO, never neither).
pub async fn mv(ctx: &Ctx, a: MvArgs) -> anyhow::Result<i32> {
    let c = ctx.client()?;
    let (from, to) = (remote(&a.from), remote(&a.to));
    let mut replaced = false;
    match rename(&c, &from, &to, RenameMode::RenameMove).await {
        Ok(()) => {}
        Err(s) if s.code() == tonic::Code::AlreadyExists => {
            // The target the server chose: TO itself, or TO/NAME when TO is a directory.
            let target = match stat_of(&c, &to).await? {
                Some(t) if t.is_dir => {
                    format!(
                        "{}/{}",
                        to.trim_end_matches('/'),
                        dfs_common::path::file_name(&from)
                    )
                }
                _ => to.clone(),
            };
            if !a.force {
                anyhow::bail!("{target} exists; not replacing it (use mv -f to replace)");
            }
            let (Some(t), Some(src)) = (stat_of(&c, &target).await?, stat_of(&c, &from).await?)
            else {
                return Err(s.into());
            };
            if t.is_dir {
                anyhow::bail!("{target} is a directory; mv -f replaces only a file");
            }
            if src.is_dir {
                anyhow::bail!("cannot replace the file {target} with the directory {from}");
            }
            rename(&c, &from, &target, RenameMode::RenameReplace).await?;
            replaced = true;
        }
        Err(s) => return Err(s.into()),
    }
    if ctx.json {
        print_json(&json!({"ok": true, "from": from, "to": to, "replaced": replaced}));
    }
    Ok(0)
}

/// The entry at `path`, or None when there is none.
async fn stat_of(c: &crate::client::MetaConn, path: &str) -> anyhow::Result<Option<FileInfo>> {
    match crate::rpc!(
        c,
        stat,
        StatRequest {
            path: path.to_string(),
            stale: false
        }
    ) {
        Ok(f) => Ok(Some(f)),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(s.into()),
    }
}

#[derive(Args, Debug)]
pub struct RmdirArgs {
    /// One or more empty directories (each is tried; exit 1 if any failed).
    #[arg(required = true, num_args = 1..)]
    pub paths: Vec<String>,
}

/// `rmdir DIR...`: removes only empty directories; a file or a non-empty directory is a clear
/// error and nothing is changed (the server's remove without -r refuses a non-empty one).
pub async fn rmdir(ctx: &Ctx, a: RmdirArgs) -> anyhow::Result<i32> {
    let c = ctx.client()?;
    each(ctx, &a.paths, |path| {
        let c = &c;
        async move {
            match stat_of(c, &path).await? {
                None => anyhow::bail!("{path}: no such directory"),
                Some(f) if !f.is_dir => {
                    anyhow::bail!("{path} is not a directory (remove a file with rm)")
                }
                Some(_) => {}
            }
            let request_id = new_request_id();
            let r = crate::rpc!(
                c,
                remove,
                RemoveRequest {
                    path: path.clone(),
                    recursive: false,
                    request_id: request_id.clone(),
                    skip_trash: false,
                }
            );
            match r {
                Ok(_) => {}
                Err(s) if s.message().contains("not empty") => anyhow::bail!(
                    "{path}: directory not empty (rmdir removes only empty directories; rm -r removes it and its contents)"
                ),
                Err(s) => return Err(s.into()),
            }
            if ctx.json {
                print_json(&json!({"ok": true, "path": path}));
            }
            Ok(())
        }
    })
    .await
}

pub async fn rm(ctx: &Ctx, a: RmArgs) -> anyhow::Result<i32> {
    let c = dfs_client::Client::new(ctx.client()?);
    each(ctx, &a.paths, |path| {
        let c = &c;
        async move {
            let r = match c.remove_with(&path, a.recursive, a.skip_trash).await {
                Ok(r) => r,
                Err(dfs_client::Error::NotFound(_)) if a.force => dfs_client::Removed {
                    count: 0,
                    trashed_to: None,
                },
                Err(e) => return Err(e.into()),
            };
            if ctx.json {
                print_json(
                    &json!({"ok": true, "path": path, "removed": r.count, "trashed_to": r.trashed_to}),
                );
            } else if let (Some(to), false) = (&r.trashed_to, ctx.quiet) {
                println!("moved {path} to the trash: {to}");
            }
            Ok(())
        }
    })
    .await
}

#[derive(Args, Debug)]
pub struct DuArgs {
    /// Files or directories (one line each).
    #[arg(default_value = "/", num_args = 1..)]
    pub paths: Vec<String>,
    /// Only the total of each path, as `du -s`: `SIZE<TAB>PATH` (SIZE in bytes, or with -h in
    /// K/M/G).
    #[arg(short = 's')]
    pub summary: bool,
    /// Sizes in KiB, MiB, GiB (the default line always shows them; with -s, SIZE too).
    #[arg(short = 'h')]
    pub human: bool,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

/// `du PATH...`: one line per path with its total bytes, files and directories (dfs keeps
/// the totals per path, so there is no per-subdirectory walk; -s gives the short Unix form).
pub async fn du(ctx: &Ctx, a: DuArgs) -> anyhow::Result<i32> {
    let c = ctx.client()?;
    let a = &a;
    each(ctx, &a.paths, |path| {
        let c = &c;
        async move {
            let u = crate::rpc!(
                c,
                usage,
                StatRequest {
                    path: path.clone(),
                    stale: false
                }
            )?;
            let trash = (u.trash_files > 0).then(|| {
                format!(
                    " (of which in the trash: {} in {} files; `dfsctl trash purge` frees it)",
                    human_bytes(u.trash_bytes),
                    u.trash_files
                )
            });
            if ctx.json {
                print_json(
                    &json!({"path": path, "files": u.files, "dirs": u.dirs, "bytes": u.bytes,
                    "trash_files": u.trash_files, "trash_bytes": u.trash_bytes}),
                );
            } else if a.summary {
                let size = if a.human {
                    human_bytes(u.bytes)
                } else {
                    u.bytes.to_string()
                };
                println!("{size}\t{path}");
                if let Some(t) = trash {
                    eprintln!("{path}:{t}");
                }
            } else {
                println!(
                    "{} in {} files, {} directories: {}{}",
                    human_bytes(u.bytes),
                    u.files,
                    u.dirs,
                    path,
                    trash.unwrap_or_default()
                );
            }
            Ok(())
        }
    })
    .await
}
