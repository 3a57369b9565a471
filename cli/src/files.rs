//! Namespace commands: ls, stat, mkdir, mv, rm, du.
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
    #[arg(default_value = "/")]
    pub path: String,
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
}

pub async fn ls(ctx: &Ctx, a: LsArgs) -> anyhow::Result<i32> {
    let c = ctx.client()?;
    let path = remote(&a.path);
    let reply = crate::rpc!(
        c,
        list,
        ListRequest {
            path: path.clone(),
            recursive: a.recursive,
            stale: a.stale,
            ..Default::default()
        }
    )?;
    for f in &reply.entries {
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
    Ok(0)
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
        println!("chunks:      {}", f.chunks.len());
        for (i, ch) in f.chunks.iter().enumerate() {
            let reps: Vec<String> = ch
                .replicas
                .iter()
                .zip(&ch.replica_addrs)
                .map(|(id, a)| format!("{id}@{a}"))
                .collect();
            println!(
                "  {:>4} {} {:>10} crc32c={:08x} replicas=[{}]",
                i + 1,
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

pub async fn mv(ctx: &Ctx, from: &str, to: &str) -> anyhow::Result<i32> {
    let c = ctx.client()?;
    let (from, to) = (remote(from), remote(to));
    let request_id = new_request_id();
    crate::rpc!(
        c,
        rename,
        RenameRequest {
            from: from.clone(),
            to: to.clone(),
            request_id: request_id.clone(),
            ..Default::default()
        }
    )?;
    if ctx.json {
        print_json(&json!({"ok": true, "from": from, "to": to}));
    }
    Ok(0)
}

pub async fn rm(ctx: &Ctx, a: RmArgs) -> anyhow::Result<i32> {
    let c = ctx.client()?;
    each(ctx, &a.paths, |path| {
        let c = &c;
        async move {
            let request_id = new_request_id();
            let r = crate::rpc!(
                c,
                remove,
                RemoveRequest {
                    path: path.clone(),
                    recursive: a.recursive,
                    request_id: request_id.clone(),
                }
            );
            let removed = match r {
                Ok(r) => r.removed,
                Err(s) if a.force && s.code() == tonic::Code::NotFound => 0,
                Err(s) => return Err(s.into()),
            };
            if ctx.json {
                print_json(&json!({"ok": true, "path": path, "removed": removed}));
            }
            Ok(())
        }
    })
    .await
}

pub async fn du(ctx: &Ctx, path: &str) -> anyhow::Result<i32> {
    let c = ctx.client()?;
    let path = remote(path);
    let u = crate::rpc!(
        c,
        usage,
        StatRequest {
            path: path.clone(),
            stale: false
        }
    )?;
    if ctx.json {
        print_json(&json!({"path": path, "files": u.files, "dirs": u.dirs, "bytes": u.bytes}));
    } else {
        println!(
            "{} in {} files, {} directories: {}",
            human_bytes(u.bytes),
            u.files,
            u.dirs,
            path
        );
    }
    Ok(0)
}
