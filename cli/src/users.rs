//! Users and keys: `user add|list|remove`, `register`, `whoami`.
use crate::output::{print_json, time_ms};
use crate::rpc;
use crate::Ctx;
use clap::{Args, Subcommand};
use dfs_common::auth_file::{self, Credentials};
use dfs_proto::*;
use serde_json::json;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Create a user (admin only). Prints its key once, or writes an auth file with --out.
    #[command(after_help = "Example: dfsctl user add alice --out ./alice.auth")]
    Add {
        name: String,
        /// Write `name/key` to this auth file instead of printing the key.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Make the user an admin.
        #[arg(long)]
        admin: bool,
    },
    /// List users (admin only).
    List,
    /// Remove a user (admin only). Its files stay, owned by the old name.
    Remove { name: String },
}

#[derive(Args, Debug)]
pub struct RegisterArgs {
    pub name: String,
    /// Where to write the auth file [default: the --auth-file path].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

fn save(out: &std::path::Path, name: &str, key: &str) -> anyhow::Result<()> {
    if out.exists() {
        anyhow::bail!(
            "{} already exists; not replacing an auth file (remove it first)",
            out.display()
        );
    }
    auth_file::write(
        out,
        &Credentials {
            user: name.to_string(),
            key: key.to_string(),
        },
    )?;
    Ok(())
}

pub async fn run(ctx: &Ctx, cmd: UserCmd) -> anyhow::Result<i32> {
    let c = ctx.client()?;
    match cmd {
        UserCmd::Add { name, out, admin } => {
            if let Some(o) = &out {
                if o.exists() {
                    anyhow::bail!("{} already exists; not replacing an auth file", o.display());
                }
            }
            let r = rpc!(
                c,
                user_add,
                UserAddRequest {
                    name: name.clone(),
                    admin,
                    request_id: crate::client::new_request_id(),
                }
            )?;
            match out {
                Some(o) => {
                    save(&o, &r.name, &r.key)?;
                    if ctx.json {
                        print_json(&json!({"name": r.name, "auth_file": o}));
                    } else if !ctx.quiet {
                        eprintln!(
                            "user {} created; auth file written to {}",
                            r.name,
                            o.display()
                        );
                    }
                }
                None if ctx.json => print_json(&json!({"name": r.name, "key": r.key})),
                None => {
                    println!("{}/{}", r.name, r.key);
                    if !ctx.quiet {
                        eprintln!("user {} created. The key is shown only once: save the line above as the user's auth.txt", r.name);
                    }
                }
            }
        }
        UserCmd::List => {
            let r = rpc!(c, user_list, Empty {})?;
            for u in r.users {
                if ctx.json {
                    print_json(
                        &json!({"name": u.name, "role": u.role, "created_ms": u.created_ms}),
                    );
                } else {
                    println!("{:<20} {:<6} {}", u.name, u.role, time_ms(u.created_ms));
                }
            }
        }
        UserCmd::Remove { name } => {
            let request_id = crate::client::new_request_id();
            rpc!(
                c,
                user_remove,
                UserRemoveRequest {
                    name: name.clone(),
                    request_id: request_id.clone(),
                }
            )?;
            if ctx.json {
                print_json(&json!({"ok": true, "removed": name}));
            }
        }
    }
    Ok(0)
}

pub async fn register(ctx: &Ctx, a: RegisterArgs) -> anyhow::Result<i32> {
    let out = a
        .out
        .clone()
        .or_else(|| ctx.auth_file.clone())
        .unwrap_or_else(crate::client::default_auth_file);
    if out.exists() {
        anyhow::bail!(
            "{} already exists: you are registered (remove it to register again)",
            out.display()
        );
    }
    let c = crate::client::MetaConn::with_credentials(&ctx.meta, None, ctx.timeout)?;
    let r = rpc!(
        c,
        register,
        UserAddRequest {
            name: a.name.clone(),
            admin: false,
            request_id: crate::client::new_request_id(),
        }
    )?;
    save(&out, &r.name, &r.key)?;
    if ctx.json {
        print_json(&json!({"name": r.name, "auth_file": out}));
    } else if !ctx.quiet {
        eprintln!("registered as {}; key saved in {}", r.name, out.display());
    }
    Ok(0)
}

pub async fn whoami(ctx: &Ctx) -> anyhow::Result<i32> {
    let c = ctx.client()?;
    let u = rpc!(c, who_am_i, Empty {})?;
    if ctx.json {
        print_json(&json!({"name": u.name, "role": u.role}));
    } else {
        println!("{} ({})", u.name, u.role);
    }
    Ok(0)
}
