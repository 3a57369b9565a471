//! put, get and cat commands: file bytes go straight between dfsctl and the chunk servers
//! (the streams themselves live in dfs-client's `transfer`).
//!
//! put: the leader allocates chunk ids and targets; each chunk (at most `IN_FLIGHT` at once, so
//! memory stays bounded by a few chunks) is sent to all its replicas in parallel; a chunk server
//! answers only once the chunk is fsynced. Then one commit makes the file visible.
//! Crash points: before the commit nothing is visible (the chunks are orphans, collected later);
//! after the commit the file is whole. "ok" is printed only after the commit.
//!
//! get: chunks are fetched in parallel (bounded), each checked against its CRC32C before use,
//! another replica tried on error; bytes are written in order to a temp file beside the target,
//! the whole-file sha256 is checked, and only then is the temp file renamed into place.
use crate::files::remote;
use crate::output::print_json;
use crate::Ctx;
use anyhow::{bail, Context};
use clap::Args;
use dfs_client::{get_stream, put_stream, FileSource, PutOptions, ReaderSource};
use dfs_proto::*;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args, Debug)]
pub struct PutArgs {
    /// Local file, or `-` for stdin.
    pub local: String,
    /// Remote path, or an existing remote directory (or `DIR/`) to put the file in under its name.
    pub remote: String,
    /// Replace the remote file if it exists (atomically).
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Copies of each chunk [default: the cluster's, 2]. 0 is refused (it is not "default").
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub replication: Option<u32>,
    /// Copy a local directory tree into the remote directory (its contents go into REMOTE).
    #[arg(short = 'r', long)]
    pub recursive: bool,
    /// With -r: files transferred at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub parallel: u64,
    /// With -r: skip files whose remote copy has the same size and sha256; replace the others.
    #[arg(long)]
    pub update: bool,
    /// With -r: follow symbolic links (they are reported and skipped otherwise).
    #[arg(short = 'L', long)]
    pub dereference: bool,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// Remote path.
    pub remote: String,
    /// Local file (default: the remote file's name in the current directory), an existing
    /// directory (or `DIR/`) to put it in under its name, or `-` for stdout.
    pub local: Option<String>,
    /// Replace an existing local file without asking.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Copy a remote directory tree into the local directory (its contents go into LOCAL).
    #[arg(short = 'r', long)]
    pub recursive: bool,
    /// With -r: files transferred at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub parallel: u64,
    /// With -r: skip local files with the same size and sha256 as the remote ones.
    #[arg(long)]
    pub update: bool,
}

#[derive(Args, Debug)]
pub struct CpArgs {
    /// Remote file or directory.
    pub from: String,
    /// Remote destination (a file copied into an existing directory keeps its name).
    pub to: String,
    /// Copy a directory tree (its contents go into TO).
    #[arg(short = 'r', long)]
    pub recursive: bool,
    /// Replace existing files.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// With -r: files copied at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub parallel: u64,
    /// Copies of each chunk [default: the cluster's].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub replication: Option<u32>,
}

pub async fn cp(ctx: &Ctx, a: CpArgs) -> anyhow::Result<i32> {
    let opts = crate::tree::TreeOpts {
        parallel: a.parallel as usize,
        force: a.force,
        update: false,
        follow: false,
        replication: a.replication.unwrap_or(0),
    };
    crate::tree::cp(ctx, &remote(&a.from), &remote(&a.to), a.recursive, opts).await
}

fn progress(ctx: &Ctx, len: Option<u64>) -> indicatif::ProgressBar {
    // SAFETY: isatty only inspects a file descriptor.
    let tty = unsafe { libc::isatty(2) } == 1;
    if ctx.quiet || ctx.json || !tty {
        return indicatif::ProgressBar::hidden();
    }
    let pb = match len {
        Some(l) => indicatif::ProgressBar::new(l),
        None => indicatif::ProgressBar::new_spinner(),
    };
    let style = indicatif::ProgressStyle::with_template(
        "{bytes}/{total_bytes} {bar:30} {binary_bytes_per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    pb.set_style(style);
    pb
}

pub async fn put(ctx: &Ctx, a: PutArgs) -> anyhow::Result<i32> {
    if a.recursive {
        let opts = crate::tree::TreeOpts {
            parallel: a.parallel as usize,
            force: a.force,
            update: a.update,
            follow: a.dereference,
            replication: a.replication.unwrap_or(0),
        };
        return crate::tree::put_tree(ctx, &a.local, &remote(&a.remote), opts).await;
    }
    if a.update || a.dereference {
        bail!("--update and -L go with -r");
    }
    let conn = ctx.client()?;
    let pool = ctx.pool();
    // Like cp and mv: `put FILE /dir/` and `put FILE /dir` (an existing directory) store
    // /dir/FILE's name. (A directory made between this check and the commit makes the commit
    // fail with "exists", nothing is stored.)
    let into_dir = a.remote.ends_with('/') || is_remote_dir(&conn, &remote(&a.remote)).await;
    let path = if into_dir {
        let name = Path::new(&a.local)
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|_| a.local != "-")
            .with_context(|| {
                format!(
                    "{} is a directory; give a remote file name for stdin",
                    a.remote
                )
            })?;
        remote(&format!("{}/{name}", a.remote.trim_end_matches('/')))
    } else {
        remote(&a.remote)
    };
    let replication = a.replication.unwrap_or(0);
    let started = Instant::now();
    let out = if a.local == "-" {
        let pb = progress(ctx, None);
        let r = put_stream(
            &conn,
            &pool,
            ReaderSource(tokio::io::stdin()),
            &path,
            &PutOptions {
                overwrite: a.force,
                replication,
                size_hint: None,
            },
            &|n| pb.inc(n),
        )
        .await;
        pb.finish_and_clear();
        r?
    } else {
        let f =
            std::fs::File::open(&a.local).with_context(|| format!("cannot open {}", a.local))?;
        let len = f.metadata()?.len();
        let pb = progress(ctx, Some(len));
        let r = put_stream(
            &conn,
            &pool,
            FileSource::new(f),
            &path,
            &PutOptions {
                overwrite: a.force,
                replication,
                size_hint: Some(len),
            },
            &|n| pb.inc(n),
        )
        .await;
        pb.finish_and_clear();
        r?
    };
    let secs = started.elapsed().as_secs_f64();
    let full = crate::output::fully_replicated(&out.file);
    if ctx.json {
        print_json(
            &json!({"ok": true, "path": out.file.path, "size": out.bytes, "sha256": out.file.sha256, "chunks": out.file.chunks.len(), "fully_replicated": full, "seconds": secs}),
        );
    } else if !ctx.quiet {
        eprintln!(
            "stored {} ({} bytes, {} chunk(s)) in {:.2} s{}",
            out.file.path,
            out.bytes,
            out.file.chunks.len(),
            secs,
            if full {
                String::new()
            } else {
                format!(
                    "; UNDER-REPLICATED: fewer live chunk servers with room than replication {}",
                    out.file.replication
                )
            }
        );
    }
    Ok(0)
}

/// Whether `path` is an existing remote directory (any error: no, and the write that follows
/// reports it).
async fn is_remote_dir(conn: &dfs_client::MetaConn, path: &str) -> bool {
    matches!(
        dfs_client::rpc!(
            conn,
            stat,
            StatRequest {
                path: path.to_string(),
                stale: false
            }
        ),
        Ok(f) if f.is_dir
    )
}

fn ask(question: &str) -> bool {
    ask_with(
        question,
        &mut std::io::stdin().lock(),
        &mut std::io::stderr(),
    )
}

/// The prompt on `out`, the answer from `input`: yes only for y, Y or yes.
fn ask_with(question: &str, input: &mut impl std::io::BufRead, out: &mut impl Write) -> bool {
    let _ = write!(out, "{question} [y/N] ");
    let _ = out.flush();
    let mut line = String::new();
    let read = input.read_line(&mut line);
    if !line.ends_with('\n') {
        // End of input (Ctrl-D) without a newline: end the prompt's line, so what follows
        // (the "not replacing" error) is on a line of its own.
        let _ = writeln!(out);
    }
    read.is_ok() && matches!(line.trim(), "y" | "Y" | "yes")
}

pub(crate) fn temp_beside(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("download");
    target.with_file_name(format!(".{name}.dfs-part-{}", std::process::id()))
}

pub async fn get(ctx: &Ctx, a: GetArgs) -> anyhow::Result<i32> {
    if a.recursive {
        let path = remote(&a.remote);
        let local = a
            .local
            .clone()
            .unwrap_or_else(|| dfs_common::path::file_name(&path).to_string());
        let opts = crate::tree::TreeOpts {
            parallel: a.parallel as usize,
            force: a.force,
            update: a.update,
            follow: false,
            replication: 0,
        };
        return crate::tree::get_tree(ctx, &path, &local, opts).await;
    }
    if a.update {
        bail!("--update goes with -r");
    }
    let conn = ctx.client()?;
    let pool = ctx.pool();
    let path = remote(&a.remote);
    let reply = dfs_client::rpc!(
        conn,
        open_read,
        StatRequest {
            path: path.clone(),
            stale: false
        }
    )?;
    let size = reply.file.as_ref().map(|f| f.size).unwrap_or(0);
    let local = a
        .local
        .clone()
        .unwrap_or_else(|| dfs_common::path::file_name(&path).to_string());
    let started = Instant::now();
    if local == "-" {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
        get_stream(&conn, &pool, &reply, &mut out, &dfs_client::no_progress).await?;
        out.flush()?;
        return Ok(0);
    }
    let target = local_target(&local, &path)?;
    if target.exists() && !a.force {
        // SAFETY: isatty only inspects file descriptors.
        let tty = unsafe { libc::isatty(0) == 1 && libc::isatty(2) == 1 };
        if !tty || !ask(&format!("{} exists. Replace it?", target.display())) {
            bail!(
                "{} exists; not replacing it (use -f to replace)",
                target.display()
            );
        }
    }
    let tmp = temp_beside(&target);
    let result = async {
        let f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        let pb = progress(ctx, Some(size));
        let r = get_stream(&conn, &pool, &reply, &mut w, &|n| pb.inc(n)).await;
        pb.finish_and_clear();
        let n = r?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)?;
        Ok::<u64, anyhow::Error>(n)
    }
    .await;
    let n = match result {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let secs = started.elapsed().as_secs_f64();
    if ctx.json {
        print_json(
            &json!({"ok": true, "path": path, "local": target.to_string_lossy(), "size": n, "seconds": secs}),
        );
    } else if !ctx.quiet {
        eprintln!(
            "fetched {path} to {} ({n} bytes) in {secs:.2} s",
            target.display()
        );
    }
    Ok(0)
}

/// Where `get REMOTE LOCAL` writes: LOCAL, or LOCAL/NAME when LOCAL is an existing directory
/// or ends with `/` (as `cp` does). A missing directory is named in the error, not the temp file
/// that would have been made in it.
fn local_target(local: &str, remote_path: &str) -> anyhow::Result<PathBuf> {
    let given = PathBuf::from(local);
    let name = dfs_common::path::file_name(remote_path);
    if given.is_dir() {
        return Ok(given.join(name));
    }
    if local.ends_with('/') {
        bail!("directory {} does not exist", given.display());
    }
    if let Some(parent) = given.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            bail!(
                "cannot write {}: directory {} does not exist",
                given.display(),
                parent.display()
            );
        }
    }
    Ok(given)
}

pub async fn cat(ctx: &Ctx, path: &str) -> anyhow::Result<i32> {
    get(
        ctx,
        GetArgs {
            remote: path.to_string(),
            local: Some("-".into()),
            force: true,
            recursive: false,
            parallel: 1,
            update: false,
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 26: after Ctrl-D at the overwrite prompt, the error was printed on the prompt's
    /// line; the prompt's line is ended first.
    #[test]
    fn prompt_line_is_ended_on_end_of_input() {
        let mut out = Vec::new();
        assert!(!ask_with("x exists. Replace it?", &mut &b""[..], &mut out));
        assert_eq!(out, b"x exists. Replace it? [y/N] \n");
        let mut out = Vec::new();
        assert!(ask_with("q?", &mut &b"y\n"[..], &mut out));
        assert_eq!(out, b"q? [y/N] ", "the typed newline ends the line already");
    }

    /// Issue 26: `get REMOTE DIR` and `get REMOTE DIR/` write DIR/NAME; a missing directory
    /// is named (not the temp file that would have been made in it).
    #[test]
    fn local_target_of_get() {
        let d = tempfile::tempdir().unwrap();
        let ds = d.path().display().to_string();
        assert_eq!(
            local_target(&ds, "/a/f.txt").unwrap(),
            d.path().join("f.txt")
        );
        assert_eq!(
            local_target(&format!("{ds}/"), "/a/f.txt").unwrap(),
            d.path().join("f.txt")
        );
        let e = local_target(&format!("{ds}/no/x"), "/f")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("directory {ds}/no does not exist")),
            "{e}"
        );
        assert_eq!(
            local_target("plain.txt", "/f").unwrap(),
            PathBuf::from("plain.txt")
        );
    }
}
