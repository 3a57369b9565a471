//! put -r and get -r: whole trees between a local directory and a remote one, with
//! `--parallel` file transfers (each one the ordinary single-file put_stream/get_stream, so each
//! file keeps their crash guarantees: a remote file is visible only when whole, a local file is
//! written to a temp file and renamed into place only after its sha256 checked).
//!
//! What must stay true: one failing file never stops the others; every file is reported (a JSON
//! line each under --json), the summary line and the exit code (1) say how many failed; symlinks
//! and special files are reported and skipped unless -L (then followed, loops refused); get -r
//! never replaces an existing local file without -f. The remote directory is the copy of the
//! local one (its contents go into REMOTE_DIR, as `rsync SRC/ DST`), and back for get -r.
use crate::output::print_json;
use crate::Ctx;
use anyhow::{bail, Context};
use dfs_client::{get_stream, put_stream, ChunkPool, FileSource, MetaConn, PutOptions};
use dfs_proto::*;
use futures::StreamExt;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What a tree copy does with one file.
struct Outcome {
    local: PathBuf,
    remote: String,
    size: u64,
    /// "copied", "unchanged" (--update), "skipped" (not a regular file) or "failed".
    status: &'static str,
    error: Option<String>,
}

#[derive(Default)]
struct Summary {
    copied: u64,
    bytes: u64,
    unchanged: u64,
    skipped: u64,
    failed: u64,
}

impl Summary {
    fn add(&mut self, ctx: &Ctx, pb: &indicatif::ProgressBar, o: &Outcome) {
        match o.status {
            "copied" => {
                self.copied += 1;
                self.bytes += o.size;
            }
            "unchanged" => self.unchanged += 1,
            "skipped" => self.skipped += 1,
            _ => self.failed += 1,
        }
        if ctx.json {
            let mut v = json!({"ok": o.status != "failed", "status": o.status, "local": o.local.to_string_lossy(),
                "path": o.remote, "size": o.size});
            if let Some(e) = &o.error {
                v["error"] = json!(e);
            }
            print_json(&v);
        } else if o.status == "failed" || o.status == "skipped" {
            let msg = format!(
                "{} {}: {}",
                o.status,
                o.local.display(),
                o.error.as_deref().unwrap_or("")
            );
            pb.suspend(|| eprintln!("{msg}"));
        }
        pb.set_message(format!("{} files", self.copied + self.unchanged));
    }

    fn finish(&self, ctx: &Ctx, verb: &str, started: Instant) -> i32 {
        if !ctx.json && (!ctx.quiet || self.failed > 0) {
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "{verb}: {} file(s) copied ({} bytes), {} unchanged, {} skipped (not regular files), {} failed in {secs:.2} s",
                self.copied, self.bytes, self.unchanged, self.skipped, self.failed
            );
        }
        i32::from(self.failed > 0)
    }
}

fn tree_progress(ctx: &Ctx, total: u64) -> indicatif::ProgressBar {
    // SAFETY: isatty only inspects a file descriptor.
    let tty = unsafe { libc::isatty(2) } == 1;
    if ctx.quiet || ctx.json || !tty {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(total);
    let style = indicatif::ProgressStyle::with_template(
        "{msg} {bytes}/{total_bytes} {bar:30} {binary_bytes_per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    pb.set_style(style);
    pb
}

pub(crate) fn join_remote(root: &str, rel: &str) -> String {
    if rel.is_empty() {
        root.to_string()
    } else if root.ends_with('/') {
        format!("{root}{rel}")
    } else {
        format!("{root}/{rel}")
    }
}

/// A local tree: directories and regular files (relative, `/`-separated), and what was skipped.
#[derive(Default)]
struct LocalTree {
    dirs: Vec<String>,
    files: Vec<(PathBuf, String, u64)>,
    skipped: Vec<Outcome>,
}

fn walk(
    dir: &Path,
    rel: &str,
    follow: bool,
    seen: &mut HashSet<PathBuf>,
    remote_root: &str,
    t: &mut LocalTree,
) -> anyhow::Result<()> {
    let canon = std::fs::canonicalize(dir).ok();
    if let Some(c) = &canon {
        if !seen.insert(c.clone()) {
            t.skipped.push(Outcome {
                local: dir.to_path_buf(),
                remote: join_remote(remote_root, rel),
                size: 0,
                status: "skipped",
                error: Some("directory loop (symlink to an ancestor)".into()),
            });
            return Ok(());
        }
    }
    let listed = std::fs::read_dir(dir).and_then(|d| d.collect::<Result<Vec<_>, _>>());
    let mut entries = match listed {
        Ok(e) => e,
        // The top directory must be readable; a subdirectory that is not is one failure.
        Err(e) if !rel.is_empty() => {
            t.skipped.push(Outcome {
                local: dir.to_path_buf(),
                remote: join_remote(remote_root, rel),
                size: 0,
                status: "failed",
                error: Some(format!("cannot read the directory: {e}")),
            });
            return Ok(());
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            t.skipped.push(Outcome {
                local: path,
                remote: String::new(),
                size: 0,
                status: "failed",
                error: Some("the name is not UTF-8".into()),
            });
            continue;
        };
        let child = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let lmeta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                t.skipped.push(Outcome {
                    local: path,
                    remote: join_remote(remote_root, &child),
                    size: 0,
                    status: "failed",
                    error: Some(e.to_string()),
                });
                continue;
            }
        };
        let meta = if lmeta.file_type().is_symlink() {
            if !follow {
                t.skipped.push(Outcome {
                    local: path,
                    remote: join_remote(remote_root, &child),
                    size: 0,
                    status: "skipped",
                    error: Some("symbolic link (use -L to follow)".into()),
                });
                continue;
            }
            match std::fs::metadata(&path) {
                Ok(m) => m,
                Err(err) => {
                    t.skipped.push(Outcome {
                        local: path,
                        remote: join_remote(remote_root, &child),
                        size: 0,
                        status: "skipped",
                        error: Some(format!("dangling symbolic link: {err}")),
                    });
                    continue;
                }
            }
        } else {
            lmeta
        };
        if meta.is_dir() {
            t.dirs.push(child.clone());
            walk(&path, &child, follow, seen, remote_root, t)?;
        } else if meta.is_file() {
            t.files.push((path, child, meta.len()));
        } else {
            t.skipped.push(Outcome {
                local: path,
                remote: join_remote(remote_root, &child),
                size: 0,
                status: "skipped",
                error: Some("not a regular file (device, fifo or socket)".into()),
            });
        }
    }
    // `seen` holds the ancestors only: a second link to a directory is copied again, a link
    // to an ancestor is a loop.
    if let Some(c) = canon {
        seen.remove(&c);
    }
    Ok(())
}

pub(crate) fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// Remote files under `root` (recursive): path -> (size, sha256). Empty when `root` is absent.
async fn remote_files(conn: &MetaConn, root: &str) -> anyhow::Result<Vec<FileInfo>> {
    match conn.list_all(root, true, false).await {
        Ok(l) => Ok(l),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

pub struct TreeOpts {
    pub parallel: usize,
    pub force: bool,
    pub update: bool,
    pub follow: bool,
    pub replication: u32,
}

pub async fn put_tree(ctx: &Ctx, local: &str, root: &str, o: TreeOpts) -> anyhow::Result<i32> {
    let started = Instant::now();
    let local = Path::new(local);
    if !std::fs::metadata(local)
        .with_context(|| format!("cannot read {}", local.display()))?
        .is_dir()
    {
        bail!(
            "{} is not a directory (put without -r copies one file)",
            local.display()
        );
    }
    let conn = ctx.client()?;
    let pool = ctx.pool();
    let mut tree = LocalTree::default();
    walk(local, "", o.follow, &mut HashSet::new(), root, &mut tree)?;
    for d in std::iter::once(String::new()).chain(tree.dirs.iter().cloned()) {
        let path = join_remote(root, &d);
        let r = dfs_client::rpc!(
            conn,
            mkdir,
            MkdirRequest {
                path: path.clone(),
                parents: true,
                request_id: dfs_client::new_request_id(),
            }
        );
        match r {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::AlreadyExists => {}
            Err(e) => bail!("cannot create the remote directory {path}: {e}"),
        }
    }
    let existing: HashMap<String, FileInfo> = if o.update {
        remote_files(&conn, root)
            .await?
            .into_iter()
            .filter(|f| !f.is_dir)
            .map(|f| (f.path.clone(), f))
            .collect()
    } else {
        HashMap::new()
    };
    let total: u64 = tree.files.iter().map(|f| f.2).sum();
    let pb = tree_progress(ctx, total);
    let mut sum = Summary::default();
    for s in &tree.skipped {
        sum.add(ctx, &pb, s);
    }
    let (conn, pool, pb_ref, existing) = (&conn, &pool, &pb, &existing);
    let jobs = tree.files.into_iter().map(|(path, rel, size)| async move {
        let remote = join_remote(root, &rel);
        let mut out = Outcome {
            local: path.clone(),
            remote: remote.clone(),
            size,
            status: "copied",
            error: None,
        };
        if let Some(f) = existing.get(&remote) {
            if f.size == size && sha256_file(&path).ok().as_deref() == Some(f.sha256.as_str()) {
                pb_ref.inc(size);
                out.status = "unchanged";
                return out;
            }
        }
        let r = async {
            let file = std::fs::File::open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            let done = put_stream(
                conn,
                pool,
                FileSource::new(file),
                &remote,
                &PutOptions {
                    overwrite: o.force || o.update,
                    replication: o.replication,
                    size_hint: Some(size),
                },
                &|n| pb_ref.inc(n),
            )
            .await?;
            Ok::<u64, anyhow::Error>(done.bytes)
        }
        .await;
        match r {
            Ok(n) => out.size = n,
            Err(e) => {
                out.status = "failed";
                out.error = Some(format!("{e:#}"));
            }
        }
        out
    });
    let mut results = futures::stream::iter(jobs).buffer_unordered(o.parallel.max(1));
    while let Some(r) = results.next().await {
        sum.add(ctx, &pb, &r);
    }
    pb.finish_and_clear();
    Ok(sum.finish(ctx, "put -r", started))
}

pub async fn get_tree(ctx: &Ctx, root: &str, local: &str, o: TreeOpts) -> anyhow::Result<i32> {
    let started = Instant::now();
    let conn = ctx.client()?;
    let pool = ctx.pool();
    let info = dfs_client::rpc!(
        conn,
        stat,
        StatRequest {
            path: root.to_string(),
            stale: false
        }
    )?;
    if !info.is_dir {
        bail!("{root} is not a directory (get without -r copies one file)");
    }
    let entries = remote_files(&conn, root).await?;
    let local = PathBuf::from(local);
    let prefix = if root.ends_with('/') {
        root.to_string()
    } else {
        format!("{root}/")
    };
    let rel_of = |p: &str| p.strip_prefix(&prefix).unwrap_or(p).to_string();
    std::fs::create_dir_all(&local)
        .with_context(|| format!("cannot create {}", local.display()))?;
    for d in entries.iter().filter(|e| e.is_dir) {
        let p = local.join(rel_of(&d.path));
        std::fs::create_dir_all(&p).with_context(|| format!("cannot create {}", p.display()))?;
    }
    let files: Vec<FileInfo> = entries.into_iter().filter(|e| !e.is_dir).collect();
    let pb = tree_progress(ctx, files.iter().map(|f| f.size).sum());
    let mut sum = Summary::default();
    let (conn, pool, pb_ref) = (&conn, &pool, &pb);
    let jobs = files.into_iter().map(|f| {
        let target = local.join(rel_of(&f.path));
        async move {
            let mut out = Outcome {
                local: target.clone(),
                remote: f.path.clone(),
                size: f.size,
                status: "copied",
                error: None,
            };
            if target.exists() {
                if o.update
                    && std::fs::metadata(&target).map(|m| m.len()).ok() == Some(f.size)
                    && sha256_file(&target).ok().as_deref() == Some(f.sha256.as_str())
                {
                    pb_ref.inc(f.size);
                    out.status = "unchanged";
                    return out;
                }
                if !o.force {
                    out.status = "failed";
                    out.error = Some("exists; not replacing it (use -f to replace)".into());
                    return out;
                }
            }
            if let Err(e) = fetch_one(conn, pool, &f.path, &target, pb_ref).await {
                out.status = "failed";
                out.error = Some(format!("{e:#}"));
            }
            out
        }
    });
    let mut results = futures::stream::iter(jobs).buffer_unordered(o.parallel.max(1));
    while let Some(r) = results.next().await {
        sum.add(ctx, &pb, &r);
    }
    pb.finish_and_clear();
    Ok(sum.finish(ctx, "get -r", started))
}

/// One file to a temp file beside `target`, renamed into place once its sha256 checked.
async fn fetch_one(
    conn: &MetaConn,
    pool: &ChunkPool,
    path: &str,
    target: &Path,
    pb: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    let reply = dfs_client::rpc!(
        conn,
        open_read,
        StatRequest {
            path: path.to_string(),
            stale: false
        }
    )?;
    let tmp = crate::transfer::temp_beside(target);
    let r = async {
        let f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        get_stream(conn, pool, &reply, &mut w, &|n| pb.inc(n)).await?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, target)?;
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// A remote file read in chunk-sized ranges (each checked against its checksums), as the
/// source of a put: `cp` streams with bounded memory and never touches the local disk.
struct RemoteSource<'a> {
    client: &'a dfs_client::Client,
    handle: dfs_client::ReadHandle,
    offset: u64,
}

impl dfs_client::ChunkSource for RemoteSource<'_> {
    async fn next_chunk(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        let buf = self
            .client
            .read_at(&mut self.handle, self.offset, n as u64)
            .await
            .map_err(std::io::Error::other)?;
        self.offset += buf.len() as u64;
        Ok(buf)
    }
}

/// Copy one remote file to another path; fails (nothing changed) if `to` exists without
/// `force`. The copy is checked: its sha256 must be the source's.
async fn copy_one(
    client: &dfs_client::Client,
    from: &str,
    to: &str,
    force: bool,
    replication: u32,
    pb: &indicatif::ProgressBar,
) -> anyhow::Result<u64> {
    let handle = client.open_read(from).await?;
    let (size, sha) = handle
        .file()
        .map(|f| (f.size, f.sha256.clone()))
        .unwrap_or_default();
    let src = RemoteSource {
        client,
        handle,
        offset: 0,
    };
    let opts = PutOptions {
        overwrite: force,
        replication,
        size_hint: Some(size),
    };
    let out = client.put(to, src, &opts, &|n| pb.inc(n)).await?;
    if !sha.is_empty() && out.file.sha256 != sha {
        bail!(
            "{to}: the copy's sha256 {} is not the source's {sha} (the source changed while copying?)",
            out.file.sha256
        );
    }
    Ok(out.bytes)
}

/// `dfsctl cp [-r] FROM TO` inside the cluster (bytes pass through this client: there is no
/// server-side copy). With -r the contents of FROM go into TO, as for put -r.
pub async fn cp(
    ctx: &Ctx,
    from: &str,
    to: &str,
    recursive: bool,
    o: TreeOpts,
) -> anyhow::Result<i32> {
    let started = Instant::now();
    let mut client = dfs_client::Client::new(ctx.client()?);
    client.pool = ctx.pool();
    let info = client.stat(from).await?;
    if !info.is_dir {
        let to = match client.stat(to).await {
            Ok(t) if t.is_dir => join_remote(to, dfs_common::path::file_name(from)),
            _ => to.to_string(),
        };
        let pb = tree_progress(ctx, info.size);
        let r = copy_one(&client, from, &to, o.force, o.replication, &pb).await;
        pb.finish_and_clear();
        let n = r?;
        if ctx.json {
            print_json(&json!({"ok": true, "from": from, "path": to, "size": n}));
        } else if !ctx.quiet {
            eprintln!("copied {from} to {to} ({n} bytes)");
        }
        return Ok(0);
    }
    if !recursive {
        bail!("{from} is a directory (use cp -r)");
    }
    let entries = remote_files(&client.conn, from).await?;
    let prefix = join_remote(from, "").trim_end_matches('/').to_string() + "/";
    let rel_of = |p: &str| p.strip_prefix(&prefix).unwrap_or(p).to_string();
    if to == from || to.starts_with(&prefix) {
        bail!("cannot copy {from} into itself ({to})");
    }
    for d in std::iter::once(String::new())
        .chain(entries.iter().filter(|e| e.is_dir).map(|e| rel_of(&e.path)))
    {
        match client.mkdir(&join_remote(to, &d), true).await {
            Ok(()) | Err(dfs_client::Error::Exists(_)) => {}
            Err(e) => bail!(
                "cannot create the remote directory {}: {e}",
                join_remote(to, &d)
            ),
        }
    }
    let files: Vec<FileInfo> = entries.into_iter().filter(|e| !e.is_dir).collect();
    let pb = tree_progress(ctx, files.iter().map(|f| f.size).sum());
    let mut sum = Summary::default();
    let (client_ref, pb_ref) = (&client, &pb);
    let jobs = files.into_iter().map(|f| {
        let dest = join_remote(to, &rel_of(&f.path));
        async move {
            let mut out = Outcome {
                local: PathBuf::from(&f.path),
                remote: dest.clone(),
                size: f.size,
                status: "copied",
                error: None,
            };
            if let Err(e) =
                copy_one(client_ref, &f.path, &dest, o.force, o.replication, pb_ref).await
            {
                out.status = "failed";
                out.error = Some(format!("{e:#}"));
            }
            out
        }
    });
    let mut results = futures::stream::iter(jobs).buffer_unordered(o.parallel.max(1));
    while let Some(r) = results.next().await {
        sum.add(ctx, &pb, &r);
    }
    pb.finish_and_clear();
    Ok(sum.finish(ctx, "cp -r", started))
}
