//! `dfsctl bench scale`: how the metadata group holds up as the namespace grows.
//!
//! Fills a `dfsctl local` cluster with empty files through the fastest honest path, the admin
//! import (requests of about 1 MiB, each committed in Raft commands of 500 files that every
//! member applies and fsyncs; the files have no chunks), in directories of `--per-dir` files,
//! 100 directories per top-level directory. At each checkpoint it prints: every metasrv's RSS
//! (now and peak) and data directory size, creates/s (mkdir) and stats/s (of random filled
//! files) with `--clients` clients, `ls -l` of one full directory, the rename of the first
//! top-level directory (up to 100 × `--per-dir` files) and back, a follower's restart until it
//! has caught up, a new (empty) member until it has caught up and votes (by a snapshot when
//! the log behind the leader's snapshot was purged: start the cluster with a small
//! `--snapshot-every` to measure that), and `admin export` of the whole namespace (MB/s).
//!
//! What must stay true: it only measures (everything it makes is under `/scale-<run id>`, left
//! in place so the namespace keeps its size); a step that fails is reported with its error and
//! the run goes on.
use crate::bench::{local_step, proc_status_kib, run_id, summarize};
use crate::local::LocalCluster;
use crate::rpc;
use anyhow::Context;
use dfs_client::MetaConn;
use dfs_common::local_cluster::alive;
use dfs_proto::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct ScaleBench {
    pub files: u64,
    pub at: Vec<u64>,
    pub per_dir: u64,
    pub clients: usize,
    pub seconds: u64,
    pub skip_rename: bool,
    pub dir: PathBuf,
    pub auth_file: Option<PathBuf>,
}

/// Directories per top-level directory.
const DIRS_PER_TOP: u64 = 100;
/// Files per import request (about 200 bytes of JSON each).
const FILES_PER_REQUEST: u64 = 4000;
/// Import requests in flight.
const IN_FLIGHT: usize = 2;
/// Renames and restarts of a big namespace take long: their own patience.
const LONG_TIMEOUT: Duration = Duration::from_secs(600);

fn file_path(root: &str, per_dir: u64, k: u64) -> String {
    let d = k / per_dir;
    format!(
        "{root}/t{:03}/d{d:05}/f{:05}",
        d / DIRS_PER_TOP,
        k % per_dir
    )
}

/// One import request's JSON: files `from..to` as empty files of the original format.
fn import_slice(root: &str, per_dir: u64, owner: &str, from: u64, to: u64) -> Vec<u8> {
    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let mut out = Vec::with_capacity(((to - from) * 220) as usize);
    out.push(b'[');
    for k in from..to {
        if k > from {
            out.push(b',');
        }
        let f = json!({
            "created": "", "id": "", "last_edited": "",
            "name": file_path(root, per_dir, k), "owner": owner, "permissions": {},
            "size": "0", "sha256": EMPTY_SHA256, "chunks": [],
        });
        serde_json::to_writer(&mut out, &f).expect("writing to memory cannot fail");
    }
    out.push(b']');
    out
}

/// Import files `from..to`; returns files/s.
async fn fill(
    conn: &Arc<MetaConn>,
    b: &ScaleBench,
    root: &str,
    owner: &str,
    from: u64,
    to: u64,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut k = from;
    while k < to || !tasks.is_empty() {
        while k < to && tasks.len() < IN_FLIGHT {
            let end = (k + FILES_PER_REQUEST).min(to);
            let req = ImportRequest {
                saved_files_json: import_slice(root, b.per_dir, owner, k, end),
                dry_run: false,
                first_index: k,
                request_id: uuid::Uuid::new_v4().to_string(),
            };
            let conn = conn.clone();
            tasks.spawn(async move { rpc!(conn, import, req) });
            k = end;
        }
        if let Some(r) = tasks.join_next().await {
            r??;
        }
    }
    Ok((to - from) as f64 / started.elapsed().as_secs_f64().max(1e-9))
}

/// Ops/s, p50 and p99 (ms) of `op` run by `clients` workers for `seconds`.
async fn rate<F, Fut>(clients: usize, seconds: u64, op: F) -> Value
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..clients {
        let op = op.clone();
        tasks.spawn(async move {
            let (mut lat, mut errors, mut i) = (Vec::new(), 0u64, 0u64);
            while Instant::now() < deadline {
                let t = Instant::now();
                if op(w, i).await {
                    lat.push(t.elapsed());
                } else {
                    errors += 1;
                }
                i += 1;
            }
            (lat, errors)
        });
    }
    let (mut lat, mut errors) = (Vec::new(), 0);
    while let Some(r) = tasks.join_next().await {
        if let Ok((l, e)) = r {
            lat.extend(l);
            errors += e;
        }
    }
    let mut v = summarize(lat, started.elapsed().as_secs_f64()).json();
    v["errors"] = json!(errors);
    v
}

fn dir_bytes(p: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(p) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// RSS now and peak (MiB) and data directory size (MiB) of every live metasrv.
fn nodes(dir: &Path) -> Value {
    let Ok(c) = LocalCluster::load(dir) else {
        return json!([]);
    };
    let mib = |kib: Option<u64>| kib.map(|k| (k as f64 / 1024.0).round());
    c.nodes
        .iter()
        .filter(|n| n.kind == "meta")
        .map(|n| {
            let pid = n.pid.filter(|_| alive(n.pid, &n.kind));
            json!({
                "node": n.name,
                "rss_mib": mib(pid.and_then(|p| proc_status_kib(p, "VmRSS:"))),
                "peak_rss_mib": mib(pid.and_then(|p| proc_status_kib(p, "VmHWM:"))),
                "disk_mib": (dir_bytes(&n.data_dir) as f64 / 1048576.0).round(),
            })
        })
        .collect()
}

async fn timed<T, E: std::fmt::Display>(
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Value {
    let t = Instant::now();
    match f.await {
        Ok(_) => json!((t.elapsed().as_secs_f64() * 1000.0).round() / 1000.0),
        Err(e) => json!(format!("failed: {e}")),
    }
}

/// SIGKILL a follower, start it again, and time until it has applied what the leader had.
async fn restart_follower(
    conn: &MetaConn,
    dir: &Path,
    auth_file: Option<&Path>,
) -> anyhow::Result<()> {
    let s = rpc!(conn, cluster_status, StatusRequest { stale: false })?;
    let target = s
        .members
        .iter()
        .map(|m| m.last_log_index)
        .max()
        .unwrap_or(0);
    let follower = s
        .members
        .iter()
        .find(|m| m.id != s.leader)
        .context("no follower to restart")?
        .id;
    let name = format!("meta-{follower}");
    let addr = s
        .members
        .iter()
        .find(|m| m.id == follower)
        .map(|m| m.addr.clone())
        .unwrap_or_default();
    local_step(dir, "kill", &name)?;
    local_step(dir, "start", &name)?;
    // Caught up: the node itself (a stale read answered from its own state) has applied what
    // the leader had before the kill.
    let own = MetaConn::connect(&[addr], auth_file, LONG_TIMEOUT)?;
    let deadline = Instant::now() + LONG_TIMEOUT;
    loop {
        if let Ok(s) = rpc!(own, cluster_status, StatusRequest { stale: true }) {
            if s.members
                .iter()
                .any(|m| m.id == follower && m.applied >= target)
            {
                return Ok(());
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "{name} did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Start an empty metasrv `id`, add it as a member and time the add (the leader answers once
/// the new node has caught up and votes); then remove it again, stop it and delete its data.
async fn new_member(long: &MetaConn, dir: &Path, id: u32) -> anyhow::Result<Value> {
    let node = crate::local::spawn_joining_meta(dir, id)?;
    let t = Instant::now();
    let added = rpc!(
        long,
        add_member,
        AddMemberRequest {
            id: id as u64,
            addr: node.addr.clone(),
            catch_up_ms: LONG_TIMEOUT.as_millis() as u64,
        }
    );
    let seconds = t.elapsed().as_secs_f64();
    let log = std::fs::read_to_string(node.data_dir.join("log")).unwrap_or_default();
    // Removed even when the add failed: it may have stayed a learner.
    let removed = rpc!(long, remove_member, RemoveMemberRequest { id: id as u64 });
    let stopped = crate::local::kill_and_wait(&node).await;
    let _ = std::fs::remove_dir_all(&node.data_dir);
    added?;
    removed?;
    stopped?;
    Ok(json!({
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "snapshot_installed": log.contains("snapshot installed"),
    }))
}

/// Everything measured at one checkpoint of `n` files.
async fn measure(
    conn: &Arc<MetaConn>,
    long: &Arc<MetaConn>,
    b: &ScaleBench,
    root: &str,
    n: u64,
    member_id: u32,
) -> Value {
    let level = format!("{root}/creates-{n}");
    let _ = rpc!(
        conn,
        mkdir,
        MkdirRequest {
            request_id: crate::client::new_request_id(),
            path: level.clone(),
            parents: true
        }
    );
    let creates = {
        let (conn, level) = (conn.clone(), level.clone());
        rate(b.clients, b.seconds, move |w, i| {
            let (conn, path) = (conn.clone(), format!("{level}/w{w}-{i}"));
            async move {
                rpc!(
                    conn,
                    mkdir,
                    MkdirRequest {
                        request_id: crate::client::new_request_id(),
                        path,
                        parents: false
                    }
                )
                .is_ok()
            }
        })
        .await
    };
    let stats = {
        let (conn, root, per_dir, level) = (conn.clone(), root.to_string(), b.per_dir, level);
        rate(b.clients, b.seconds, move |w, i| {
            // A spread of filled files (on an empty cluster: the directory of the creates).
            let x = (w as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
                ^ i.wrapping_mul(0xbf58_476d_1ce4_e5b9);
            let path = match n {
                0 => level.clone(),
                n => file_path(&root, per_dir, x % n),
            };
            let conn = conn.clone();
            async move { rpc!(conn, stat, StatRequest { path, stale: false }).is_ok() }
        })
        .await
    };
    let full_dir = format!("{root}/t000/d00000");
    let ls = if n >= b.per_dir {
        timed(long.list_all(&full_dir, false, false)).await
    } else {
        Value::Null
    };
    let top = format!("{root}/t000");
    let rename = |from: String, to: String| {
        let long = long.clone();
        async move {
            rpc!(
                long,
                rename,
                RenameRequest {
                    request_id: crate::client::new_request_id(),
                    from,
                    to,
                    ..Default::default()
                }
            )
        }
    };
    let (rename_there, rename_back) = if n > 0 && !b.skip_rename {
        let moved = format!("{root}/t000-moved");
        (
            timed(rename(top.clone(), moved.clone())).await,
            timed(rename(moved, top)).await,
        )
    } else {
        (Value::Null, Value::Null)
    };
    let restart = timed(restart_follower(long, &b.dir, b.auth_file.as_deref())).await;
    let member = new_member(long, &b.dir, member_id)
        .await
        .unwrap_or_else(|e| json!(format!("failed: {e:#}")));
    let t = Instant::now();
    let export = match crate::import::export_pages(long, &mut std::io::sink()).await {
        Ok(bytes) => {
            let secs = t.elapsed().as_secs_f64();
            json!({"mb": (bytes as f64 / 1e5).round() / 10.0, "seconds": (secs * 1000.0).round() / 1000.0,
                   "mb_per_sec": (bytes as f64 / 1e6 / secs.max(1e-9) * 10.0).round() / 10.0})
        }
        Err(e) => json!(format!("failed: {e}")),
    };
    json!({
        "files": n,
        "metasrv": nodes(&b.dir),
        "creates": creates,
        "stats": stats,
        "ls_l_seconds": ls,
        "rename_files": n.min(b.per_dir * DIRS_PER_TOP),
        "rename_seconds": rename_there,
        "rename_back_seconds": rename_back,
        "restart_seconds": restart,
        "new_member": member,
        "export": export,
    })
}

fn print_checkpoint(v: &Value, clients: usize) {
    let num = |v: &Value| match v.as_f64() {
        Some(x) if x.fract() == 0.0 => format!("{x}"),
        Some(x) => format!("{x:.3}"),
        None => v.to_string(),
    };
    println!("== {} files", v["files"]);
    for m in v["metasrv"].as_array().into_iter().flatten() {
        println!(
            "  {}: RSS {} MiB (peak {} MiB), data dir {} MiB",
            m["node"].as_str().unwrap_or("?"),
            num(&m["rss_mib"]),
            num(&m["peak_rss_mib"]),
            num(&m["disk_mib"])
        );
    }
    for (what, k) in [("creates (mkdir)", "creates"), ("stats", "stats")] {
        let r = &v[k];
        println!(
            "  {what}, {clients} clients: {} ops/s, p50 {} ms, p99 {} ms ({} errors)",
            num(&r["ops_per_sec"]),
            num(&r["p50_ms"]),
            num(&r["p99_ms"]),
            r["errors"]
        );
    }
    println!(
        "  ls -l of one full directory: {} s",
        num(&v["ls_l_seconds"])
    );
    println!(
        "  rename of a directory of {} files: {} s (back: {} s)",
        v["rename_files"],
        num(&v["rename_seconds"]),
        num(&v["rename_back_seconds"])
    );
    println!(
        "  follower restart until caught up: {} s",
        num(&v["restart_seconds"])
    );
    let m = &v["new_member"];
    match m["seconds"].as_f64() {
        Some(secs) => println!(
            "  new member until caught up and voting: {secs:.3} s ({})",
            if m["snapshot_installed"] == true {
                "installed a snapshot"
            } else {
                "from the log alone"
            }
        ),
        None => println!("  new member: {m}"),
    }
    let e = &v["export"];
    println!(
        "  admin export: {} MB in {} s ({} MB/s)",
        num(&e["mb"]),
        num(&e["seconds"]),
        num(&e["mb_per_sec"])
    );
}

pub async fn run(ctx: &crate::Ctx, b: ScaleBench) -> anyhow::Result<Value> {
    let addrs = LocalCluster::load(&b.dir)?.meta_addrs();
    let conn = Arc::new(MetaConn::connect(
        &addrs,
        ctx.auth_file.as_deref(),
        ctx.timeout,
    )?);
    // One attempt may take the whole time (a rename of a million files, an add-member), so
    // the client does not give up on an attempt and send it again meanwhile.
    let long =
        Arc::new(MetaConn::connect(&addrs, ctx.auth_file.as_deref(), LONG_TIMEOUT)?.patient());
    let owner = rpc!(conn, who_am_i, Empty {})?.name;
    let root = format!("/scale-{}", run_id());
    let mut at: Vec<u64> = b.at.iter().copied().filter(|&n| n < b.files).collect();
    at.push(b.files);
    at.sort_unstable();
    at.dedup();
    let (mut have, mut out) = (0u64, Vec::new());
    for (i, n) in at.into_iter().enumerate() {
        let fill_rate = if n > have {
            let r = fill(&long, &b, &root, &owner, have, n).await?;
            if !ctx.json {
                println!(
                    "filled {have} -> {n} files: {r:.0} files/s (admin import of empty files)"
                );
            }
            have = n;
            Some(r)
        } else {
            None
        };
        // Each checkpoint adds a member of its own id (100, 101, ...).
        let mut v = measure(&conn, &long, &b, &root, n, 100 + i as u32).await;
        v["fill_files_per_sec"] = json!(fill_rate.map(|r| r.round()));
        if !ctx.json {
            print_checkpoint(&v, b.clients);
        }
        out.push(v);
    }
    Ok(
        json!({"scale": {"root": root, "per_dir": b.per_dir, "clients": b.clients, "checkpoints": out}}),
    )
}
