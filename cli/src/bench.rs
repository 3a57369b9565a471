//! `dfsctl bench`: throughput and latency figures measured against a running cluster.
//!
//! - `meta`: mkdir/stat/rename mixes with 1 and N concurrent clients (ops/s, p50/p99);
//! - `data`: a big file put and get (MB/s) next to a local write+fsync baseline and what the
//!   disk wrote during the put, and small files created, stat'ed, read and deleted with 1 and N
//!   clients; peak RSS of client and servers;
//! - `failover`: write unavailability after SIGKILL of the leader of a `dfsctl local` cluster.
use crate::client::MetaConn;
use crate::local::{alive, LocalCluster};
use crate::output::print_json;
use crate::{rpc, Ctx};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use dfs_client::{get_stream, put_stream, ChunkPool, PutOptions, ReaderSource};
use dfs_proto::*;
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchKind,
}

#[derive(Subcommand, Debug)]
pub enum BenchKind {
    /// Metadata operations per second (mkdir, stat, rename).
    #[command(after_help = "Example: dfsctl bench meta --clients 1,64 --seconds 10")]
    Meta {
        /// Concurrency levels to run, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "1,64")]
        clients: Vec<usize>,
        /// Seconds per concurrency level.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Big-file and small-file throughput.
    #[command(
        after_help = "Example: dfsctl bench data --big-mib 1024 --small 2000 --clients 1,16"
    )]
    Data {
        /// Size of the big file in MiB.
        #[arg(long, default_value_t = 1024)]
        big_mib: u64,
        /// Number of 4 KiB files per concurrency level.
        #[arg(long, default_value_t = 1000)]
        small: usize,
        #[arg(long, value_delimiter = ',', default_value = "1,16")]
        clients: Vec<usize>,
        /// Replication factor.
        #[arg(long, default_value_t = 2)]
        replication: u32,
        /// Local cluster dir, to report the servers' peak RSS.
        #[arg(long, env = "DFS_LOCAL_DIR", default_value = ".dfs")]
        dir: PathBuf,
        /// Directory for the local fsync baseline file.
        #[arg(long, default_value = ".")]
        scratch: PathBuf,
    },
    /// The metadata group as the namespace grows: RSS, disk, creates/s, stats/s, ls -l, a big
    /// rename, a restart and an export at each checkpoint (needs a `dfsctl local` cluster).
    #[command(
        after_help = "Example: dfsctl bench scale --files 10000000 --at 0,1000000
Fills with empty files through `admin import` (batched Raft commits); see README \"Namespace at scale\"."
    )]
    Scale {
        /// Files to reach.
        #[arg(long, default_value_t = 1_000_000)]
        files: u64,
        /// Checkpoints to measure at before the last (comma separated; default 0 and a tenth).
        #[arg(long, value_delimiter = ',')]
        at: Vec<u64>,
        /// Files per directory.
        #[arg(long, default_value_t = 10_000)]
        per_dir: u64,
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Seconds for each of the create and stat rates.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Skip the rename of the big directory: until entries are keyed by parent inode it
        /// rewrites every path below in one apply, and a million files took each metasrv past
        /// 11 GiB of RSS on a 24 GiB machine (README "Namespace at scale").
        #[arg(long)]
        skip_rename: bool,
        #[arg(long, env = "DFS_LOCAL_DIR", default_value = ".dfs")]
        dir: PathBuf,
    },
    /// Write unavailability after SIGKILL of the leader (needs a `dfsctl local` cluster).
    #[command(after_help = "Example: dfsctl bench failover --kills 7")]
    Failover {
        #[arg(long, env = "DFS_LOCAL_DIR", default_value = ".dfs")]
        dir: PathBuf,
        #[arg(long, default_value_t = 5)]
        kills: usize,
    },
    /// Re-replication after SIGKILL of a chunk server: repair MB/s and chunks/s, and foreground
    /// put+get MB/s before and during the repair (needs a `dfsctl local` cluster).
    #[command(after_help = "Example: dfsctl bench repair --files 50 --file-mib 8
(metasrv's --dead-timeout-ms and --repair-rate apply; compare --repair-rate=0)")]
    Repair {
        #[arg(long, env = "DFS_LOCAL_DIR", default_value = ".dfs")]
        dir: PathBuf,
        /// Files written before the kill.
        #[arg(long, default_value_t = 50)]
        files: usize,
        /// Size of each file in MiB.
        #[arg(long, default_value_t = 8)]
        file_mib: u64,
    },
    /// put -r of many small files and of a few big ones: files/s and MB/s per --parallel level.
    #[command(
        after_help = "Example (the full sizes): dfsctl bench tree --small 10000 --small-kib 4 --big 10 --big-mib 100"
    )]
    Tree {
        /// Number of small files.
        #[arg(long, default_value_t = 500)]
        small: usize,
        /// Size of each small file in KiB.
        #[arg(long, default_value_t = 4)]
        small_kib: u64,
        /// Number of big files.
        #[arg(long, default_value_t = 3)]
        big: usize,
        /// Size of each big file in MiB.
        #[arg(long, default_value_t = 16)]
        big_mib: u64,
        /// --parallel levels to compare, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "1,4")]
        parallel: Vec<usize>,
        /// Directory for the local trees (removed afterwards).
        #[arg(long, default_value = ".")]
        scratch: PathBuf,
    },
    /// `dfsctl watch`: initial reconcile of many small files (files/s) and the delay from a
    /// local change to its remote visibility (p50/p99).
    #[command(after_help = "Example: dfsctl bench watch --files 10000 --changes 100")]
    Watch {
        /// Small files in the initial tree.
        #[arg(long, default_value_t = 10_000)]
        files: usize,
        /// Bytes per small file.
        #[arg(long, default_value_t = 1024)]
        file_bytes: usize,
        /// Changes made one at a time for the delay figures.
        #[arg(long, default_value_t = 50)]
        changes: usize,
        /// The watcher's --settle (part of every delay).
        #[arg(long, default_value = "200ms", value_parser = crate::watch::parse_duration)]
        settle: Duration,
        /// Directory for the local tree (removed afterwards).
        #[arg(long, default_value = ".")]
        scratch: PathBuf,
    },
}

/// The `p` quantile of sorted durations, in milliseconds.
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

pub(crate) struct Lat {
    ops: usize,
    secs: f64,
    p50: f64,
    p99: f64,
}

pub(crate) fn summarize(mut v: Vec<Duration>, secs: f64) -> Lat {
    v.sort();
    Lat {
        ops: v.len(),
        secs,
        p50: percentile(&v, 0.5),
        p99: percentile(&v, 0.99),
    }
}

impl Lat {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.secs.max(1e-9)
    }
    pub(crate) fn json(&self) -> serde_json::Value {
        json!({"ops": self.ops, "ops_per_sec": (self.rate() * 10.0).round() / 10.0, "p50_ms": self.p50, "p99_ms": self.p99})
    }
    fn line(&self, what: &str) -> String {
        format!(
            "{what:<34} {:>9.0} ops/s   p50 {:>7.2} ms   p99 {:>7.2} ms   ({} ops)",
            self.rate(),
            self.p50,
            self.p99,
            self.ops
        )
    }
}

/// Point the connection at the leader, so the benchmark measures no forwarding hop.
async fn leader_conn(ctx: &Ctx) -> anyhow::Result<Arc<MetaConn>> {
    let conn = ctx.client()?;
    let s = rpc!(conn, cluster_status, StatusRequest { stale: false })?;
    let leader = s
        .members
        .iter()
        .find(|m| m.id == s.leader)
        .map(|m| m.addr.clone());
    let mut addrs = ctx.meta.clone();
    if let Some(l) = leader {
        addrs.retain(|a| *a != l);
        addrs.insert(0, l);
    }
    Ok(Arc::new(MetaConn::connect(
        &addrs,
        ctx.auth_file.as_deref(),
        ctx.timeout,
    )?))
}

pub(crate) fn run_id() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0)
    )
}

async fn meta_bench(
    ctx: &Ctx,
    clients: Vec<usize>,
    seconds: u64,
) -> anyhow::Result<serde_json::Value> {
    let conn = leader_conn(ctx).await?;
    let root = format!("/bench-meta-{}", run_id());
    rpc!(
        conn,
        mkdir,
        MkdirRequest {
            request_id: crate::client::new_request_id(),
            path: root.clone(),
            parents: true
        }
    )?;
    let mut results = Vec::new();
    for &n in &clients {
        let level = format!("{root}/c{n}");
        rpc!(
            conn,
            mkdir,
            MkdirRequest {
                request_id: crate::client::new_request_id(),
                path: level.clone(),
                parents: true
            }
        )?;
        // Phase 1: writes only (mkdir, then rename of what was just made).
        let started = Instant::now();
        let deadline = started + Duration::from_secs(seconds);
        let tasks: Vec<_> = (0..n)
            .map(|w| {
                let (conn, level) = (conn.clone(), level.clone());
                tokio::spawn(async move {
                    let (mut lat, mut made, mut errors) = (Vec::new(), Vec::new(), 0u64);
                    let mut i = 0u64;
                    while Instant::now() < deadline {
                        let a = format!("{level}/w{w}-{i}");
                        let b = format!("{a}-moved");
                        i += 1;
                        let t = Instant::now();
                        if rpc!(
                            conn,
                            mkdir,
                            MkdirRequest {
                                request_id: crate::client::new_request_id(),
                                path: a.clone(),
                                parents: false
                            }
                        )
                        .is_err()
                        {
                            errors += 1;
                            continue;
                        }
                        lat.push(t.elapsed());
                        let t = Instant::now();
                        match rpc!(
                            conn,
                            rename,
                            RenameRequest {
                                request_id: crate::client::new_request_id(),
                                from: a.clone(),
                                to: b.clone(),
                                ..Default::default()
                            }
                        ) {
                            Ok(_) => {
                                lat.push(t.elapsed());
                                made.push(b);
                            }
                            Err(_) => errors += 1,
                        }
                    }
                    (lat, made, errors)
                })
            })
            .collect();
        let (mut writes, mut made, mut errors) = (Vec::new(), Vec::new(), 0);
        for t in tasks {
            let (l, m, e) = t.await?;
            writes.extend(l);
            made.push(m);
            errors += e;
        }
        let w = summarize(writes, started.elapsed().as_secs_f64());
        // Phase 2: linearizable reads only (stat of what phase 1 made).
        let started = Instant::now();
        let deadline = started + Duration::from_secs(seconds);
        let tasks: Vec<_> = made
            .into_iter()
            .map(|paths| {
                let conn = conn.clone();
                tokio::spawn(async move {
                    let (mut lat, mut errors) = (Vec::new(), 0u64);
                    let mut i = 0;
                    while Instant::now() < deadline && !paths.is_empty() {
                        let t = Instant::now();
                        match rpc!(
                            conn,
                            stat,
                            StatRequest {
                                path: paths[i % paths.len()].clone(),
                                stale: false
                            }
                        ) {
                            Ok(_) => lat.push(t.elapsed()),
                            Err(_) => errors += 1,
                        }
                        i += 1;
                    }
                    (lat, errors)
                })
            })
            .collect();
        let mut reads = Vec::new();
        for t in tasks {
            let (l, e) = t.await?;
            reads.extend(l);
            errors += e;
        }
        let r = summarize(reads, started.elapsed().as_secs_f64());
        if !ctx.json {
            println!(
                "{}",
                w.line(&format!("meta writes (mkdir, mv), {n} clients"))
            );
            println!("{}", r.line(&format!("meta reads (stat), {n} clients")));
            if errors > 0 {
                println!("  errors: {errors}");
            }
        }
        results
            .push(json!({"clients": n, "writes": w.json(), "reads": r.json(), "errors": errors}));
    }
    let _ = rpc!(
        conn,
        remove,
        RemoveRequest {
            // Scratch data of the benchmark: deleted for good, not kept in the trash.
            skip_trash: true,
            request_id: crate::client::new_request_id(),
            path: root.clone(),
            recursive: true
        }
    );
    Ok(json!({"meta": results}))
}

/// Write `mib` MiB to a local file with one fsync at the end: what the disk takes.
fn fsync_baseline(dir: &std::path::Path, mib: u64) -> anyhow::Result<f64> {
    let p = dir.join(format!(".dfs-bench-baseline-{}", std::process::id()));
    let buf = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    let r = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&p)?;
        for _ in 0..mib {
            f.write_all(&buf)?;
        }
        f.sync_all()
    })();
    let secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&p);
    r.with_context(|| format!("baseline write in {}", dir.display()))?;
    Ok(mib as f64 * 1.048576 / secs)
}

/// `n` writes of 4 KiB over an already written file, each followed by an fdatasync: what one
/// durable small write costs on this disk. A 4 KiB create waits for three in series (the
/// chunk servers' append, then the Raft log on the leader, then on a follower).
fn sync_latency(dir: &std::path::Path, n: usize) -> anyhow::Result<Lat> {
    use std::os::unix::fs::FileExt;
    let p = dir.join(format!(".dfs-bench-sync-{}", std::process::id()));
    let block = [0x5au8; 4096];
    let mut lat = Vec::with_capacity(n);
    let r = (|| -> std::io::Result<()> {
        let f = std::fs::File::create(&p)?;
        for i in 0..n as u64 {
            f.write_all_at(&block, i * 4096)?;
        }
        f.sync_all()?;
        for i in 0..n as u64 {
            let t = Instant::now();
            f.write_all_at(&block, i * 4096)?;
            f.sync_data()?;
            lat.push(t.elapsed());
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&p);
    r.with_context(|| format!("sync latency probe in {}", dir.display()))?;
    let secs = lat.iter().sum::<Duration>().as_secs_f64();
    Ok(summarize(lat, secs))
}

/// Deterministic, incompressible-enough bytes without holding the file in memory.
struct PatternReader {
    left: u64,
    state: u64,
}

impl tokio::io::AsyncRead for PatternReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let n = (buf.remaining() as u64).min(self.left) as usize / 8 * 8;
        let n = if n == 0 {
            (buf.remaining() as u64).min(self.left) as usize
        } else {
            n
        };
        // Straight into the caller's buffer, one 8-byte store per step.
        let state = &mut self.state;
        let out = buf.initialize_unfilled_to(n);
        let mut words = out.chunks_exact_mut(8);
        for c in &mut words {
            *state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            c.copy_from_slice(&state.to_le_bytes());
        }
        let tail = words.into_remainder();
        let last = state.to_le_bytes();
        tail.copy_from_slice(&last[..tail.len()]);
        buf.advance(n);
        self.left -= n as u64;
        std::task::Poll::Ready(Ok(()))
    }
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmHWM:")
}

/// A KiB figure of `/proc/<pid>/status` (`field` with its colon, e.g. `VmRSS:`).
pub(crate) fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `dfsctl local <step> --dir <dir> <node>` (kill returns once the node is gone, start once
/// it listens).
pub(crate) fn local_step(dir: &std::path::Path, step: &str, node: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new(std::env::current_exe()?)
        .args(["local", step, "--dir"])
        .arg(dir)
        .arg(node)
        .stdout(std::process::Stdio::null())
        .status()?;
    if !status.success() {
        bail!("dfsctl local {step} {node} failed");
    }
    Ok(())
}

async fn small_files(
    conn: Arc<MetaConn>,
    pool: ChunkPool,
    root: &str,
    n: usize,
    clients: usize,
    replication: u32,
) -> anyhow::Result<[Lat; 4]> {
    let data = Arc::new(vec![0xabu8; 4096]);
    let mut phases: Vec<Lat> = Vec::new();
    for phase in 0..4 {
        let started = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|w| {
                let (conn, pool, data, root) =
                    (conn.clone(), pool.clone(), data.clone(), root.to_string());
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    for i in (w..n).step_by(clients) {
                        let p = format!("{root}/f{i}");
                        let t = Instant::now();
                        let ok = match phase {
                            0 => put_stream(
                                &conn,
                                &pool,
                                ReaderSource(&data[..]),
                                &p,
                                &PutOptions {
                                    overwrite: false,
                                    replication,
                                    size_hint: Some(4096),
                                },
                                &dfs_client::no_progress,
                            )
                            .await
                            .map(|_| ()),
                            1 => rpc!(
                                conn,
                                stat,
                                StatRequest {
                                    path: p.clone(),
                                    stale: false
                                }
                            )
                            .map(|_| ())
                            .map_err(Into::into),
                            2 => match rpc!(
                                conn,
                                open_read,
                                StatRequest {
                                    path: p.clone(),
                                    stale: false
                                }
                            ) {
                                Ok(r) => get_stream(
                                    &conn,
                                    &pool,
                                    &r,
                                    &mut std::io::sink(),
                                    &dfs_client::no_progress,
                                )
                                .await
                                .map(|_| ()),
                                Err(e) => Err(e.into()),
                            },
                            _ => rpc!(
                                conn,
                                remove,
                                RemoveRequest {
                                    // Scratch data of the benchmark: deleted for good, not kept in the trash.
                                    skip_trash: true,
                                    request_id: crate::client::new_request_id(),
                                    path: p.clone(),
                                    recursive: false
                                }
                            )
                            .map(|_| ())
                            .map_err(Into::into),
                        };
                        ok?;
                        lat.push(t.elapsed());
                    }
                    Ok::<_, anyhow::Error>(lat)
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await??);
        }
        phases.push(summarize(all, started.elapsed().as_secs_f64()));
    }
    let mut it = phases.into_iter();
    let mut next = || it.next().context("phase");
    Ok([next()?, next()?, next()?, next()?])
}

#[allow(clippy::too_many_arguments)]
async fn data_bench(
    ctx: &Ctx,
    big_mib: u64,
    small: usize,
    clients: Vec<usize>,
    replication: u32,
    dir: PathBuf,
    scratch: PathBuf,
) -> anyhow::Result<serde_json::Value> {
    let conn = leader_conn(ctx).await?;
    let pool = ChunkPool::default();
    let root = format!("/bench-data-{}", run_id());
    rpc!(
        conn,
        mkdir,
        MkdirRequest {
            request_id: crate::client::new_request_id(),
            path: root.clone(),
            parents: true
        }
    )?;
    let mut out = json!({});

    let baseline = fsync_baseline(&scratch, big_mib.min(1024))?;
    let big = format!("{root}/big");
    let bytes = big_mib << 20;
    // The chunk servers of a local cluster keep their data (and backups) under `dir`.
    let disk_before = crate::diskstats::sample(&dir);
    let t = Instant::now();
    put_stream(
        &conn,
        &pool,
        ReaderSource(PatternReader {
            left: bytes,
            state: 7,
        }),
        &big,
        &PutOptions {
            overwrite: false,
            replication,
            size_hint: Some(bytes),
        },
        &dfs_client::no_progress,
    )
    .await?;
    let put_mbs = bytes as f64 / 1e6 / t.elapsed().as_secs_f64();
    let put_disk = disk_before
        .zip(crate::diskstats::sample(&dir))
        .map(|(a, b)| b.since(&a));
    let reply = rpc!(
        conn,
        open_read,
        StatRequest {
            path: big.clone(),
            stale: false
        }
    )?;
    let t = Instant::now();
    get_stream(
        &conn,
        &pool,
        &reply,
        &mut std::io::sink(),
        &dfs_client::no_progress,
    )
    .await?;
    let get_mbs = bytes as f64 / 1e6 / t.elapsed().as_secs_f64();
    let target = 0.85 * baseline / replication as f64;
    if !ctx.json {
        println!("local write+fsync baseline           {baseline:>9.1} MB/s  (put target 85% of baseline / replication {replication} = {target:.1} MB/s)");
        let disk = put_disk.map_or(String::new(), |d| {
            format!(
                "  (disk wrote {:.2} GB = {:.1}x the file, busy {:.0}% of the time)",
                d.written as f64 / 1e9,
                d.written as f64 / bytes.max(1) as f64,
                d.busy * 100.0
            )
        });
        println!(
            "put {big_mib} MiB, replication {replication}           {put_mbs:>9.1} MB/s{disk}"
        );
        println!("get {big_mib} MiB                          {get_mbs:>9.1} MB/s");
    }
    out["big"] = json!({"mib": big_mib, "replication": replication, "put_mb_per_sec": put_mbs, "get_mb_per_sec": get_mbs, "fsync_baseline_mb_per_sec": baseline, "put_target_mb_per_sec": target,
        "put_disk_written_bytes": put_disk.map(|d| d.written), "put_disk_busy_fraction": put_disk.map(|d| d.busy)});
    let sync = sync_latency(&scratch, 200)?;
    if !ctx.json {
        println!("{}", sync.line("local 4 KiB write+fdatasync"));
    }
    out["sync"] = sync.json();
    // The big file goes with the rest at the end: removed now, its chunk deletions (and, on a
    // filesystem mounted with `discard`, gigabytes of TRIMs) would run during the small-file
    // measurements and be counted against them.

    let mut levels = Vec::new();
    for &n in &clients {
        let dir_n = format!("{root}/small-{n}");
        rpc!(
            conn,
            mkdir,
            MkdirRequest {
                request_id: crate::client::new_request_id(),
                path: dir_n.clone(),
                parents: true
            }
        )?;
        let [c, s, r, d] =
            small_files(conn.clone(), pool.clone(), &dir_n, small, n, replication).await?;
        if !ctx.json {
            println!("{}", c.line(&format!("4 KiB create, {n} clients")));
            println!("{}", s.line(&format!("4 KiB stat, {n} clients")));
            println!("{}", r.line(&format!("4 KiB read, {n} clients")));
            println!("{}", d.line(&format!("4 KiB delete, {n} clients")));
        }
        levels.push(json!({"clients": n, "create": c.json(), "stat": s.json(), "read": r.json(), "delete": d.json()}));
    }
    out["small"] = json!(levels);
    let _ = rpc!(
        conn,
        remove,
        RemoveRequest {
            // Scratch data of the benchmark: deleted for good, not kept in the trash.
            skip_trash: true,
            request_id: crate::client::new_request_id(),
            path: root.clone(),
            recursive: true
        }
    );

    // SAFETY: getrusage fills the struct we pass.
    let client_kib = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru.ru_maxrss as u64
    };
    let mut servers = serde_json::Map::new();
    if let Ok(c) = LocalCluster::load(&dir) {
        for n in &c.nodes {
            if let Some(kib) = n
                .pid
                .filter(|_| alive(n.pid, &n.kind))
                .and_then(peak_rss_kib)
            {
                servers.insert(n.name.clone(), json!(kib / 1024));
            }
        }
    }
    if !ctx.json {
        println!(
            "peak RSS: dfsctl {} MiB; servers (MiB): {}",
            client_kib / 1024,
            serde_json::Value::Object(servers.clone())
        );
    }
    out["peak_rss_mib"] = json!({"dfsctl": client_kib / 1024, "servers": servers});
    Ok(out)
}

async fn failover_bench(
    ctx: &Ctx,
    dir: PathBuf,
    kills: usize,
) -> anyhow::Result<serde_json::Value> {
    let conn = Arc::new(MetaConn::connect(
        &LocalCluster::load(&dir)?.meta_addrs(),
        ctx.auth_file.as_deref(),
        Duration::from_secs(30),
    )?);
    let root = format!("/bench-failover-{}", run_id());
    rpc!(
        conn,
        mkdir,
        MkdirRequest {
            request_id: crate::client::new_request_id(),
            path: root.clone(),
            parents: true
        }
    )?;
    let mut gaps = Vec::new();
    for k in 0..kills {
        let s = rpc!(conn, cluster_status, StatusRequest { stale: false })?;
        let leader = s.leader;
        let name = format!("meta-{leader}");
        // Reloaded every round: a restarted node has a new pid.
        let cluster = LocalCluster::load(&dir)?;
        let node = cluster
            .nodes
            .iter()
            .find(|n| n.name == name)
            .context("leader is not a local node")?;
        let pid = node.pid.context("leader has no pid")?;
        // SAFETY: kill(2) on a process of our local cluster.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let killed = Instant::now();
        let mut i = 0;
        loop {
            let p = format!("{root}/k{k}-{i}");
            i += 1;
            if rpc!(
                conn,
                mkdir,
                MkdirRequest {
                    request_id: crate::client::new_request_id(),
                    path: p.clone(),
                    parents: true
                }
            )
            .is_ok()
            {
                break;
            }
        }
        let gap = killed.elapsed();
        gaps.push(gap);
        if !ctx.json {
            println!(
                "kill {}: leader {leader} SIGKILLed, next write acknowledged after {:.0} ms",
                k + 1,
                gap.as_secs_f64() * 1000.0
            );
        }
        local_step(&dir, "start", &name)?;
        // Kill in steady state: wait until the restarted node has caught up (every member at
        // the same log index) and stayed so for a moment.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut steady = 0;
        while steady < 5 && Instant::now() < deadline {
            let s = rpc!(conn, cluster_status, StatusRequest { stale: false })?;
            let max = s
                .members
                .iter()
                .map(|m| m.last_log_index)
                .max()
                .unwrap_or(0);
            let even = s
                .members
                .iter()
                .all(|m| m.reachable && m.last_log_index == max && m.applied == max);
            steady = if even { steady + 1 } else { 0 };
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let lat = summarize(gaps.clone(), 1.0);
    if !ctx.json {
        println!("write unavailability after leader SIGKILL: median {:.0} ms, p99 {:.0} ms, max {:.0} ms over {kills} kills", lat.p50, lat.p99, gaps.iter().max().map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0));
    }
    Ok(
        json!({"failover": {"kills": kills, "median_ms": lat.p50, "p99_ms": lat.p99, "gaps_ms": gaps.iter().map(|d| d.as_millis() as u64).collect::<Vec<_>>()}}),
    )
}

pub async fn run(ctx: &Ctx, a: BenchArgs) -> anyhow::Result<i32> {
    let v = match a.what {
        BenchKind::Meta { clients, seconds } => meta_bench(ctx, clients, seconds).await?,
        BenchKind::Data {
            big_mib,
            small,
            clients,
            replication,
            dir,
            scratch,
        } => data_bench(ctx, big_mib, small, clients, replication, dir, scratch).await?,
        BenchKind::Failover { dir, kills } => failover_bench(ctx, dir, kills).await?,
        BenchKind::Scale {
            files,
            at,
            per_dir,
            clients,
            seconds,
            skip_rename,
            dir,
        } => {
            let at = if at.is_empty() {
                vec![0, files / 10]
            } else {
                at
            };
            let b = crate::bench_scale::ScaleBench {
                files,
                at,
                per_dir,
                clients,
                seconds,
                skip_rename,
                dir,
                auth_file: ctx.auth_file.clone(),
            };
            crate::bench_scale::run(ctx, b).await?
        }
        BenchKind::Repair {
            dir,
            files,
            file_mib,
        } => crate::bench_repair::run(ctx, dir, files, file_mib).await?,
        BenchKind::Tree {
            small,
            small_kib,
            big,
            big_mib,
            parallel,
            scratch,
        } => {
            let b = crate::bench_tree::TreeBench {
                small,
                small_kib,
                big,
                big_mib,
                parallel,
                scratch,
            };
            crate::bench_tree::run(ctx, b).await?
        }
        BenchKind::Watch {
            files,
            file_bytes,
            changes,
            settle,
            scratch,
        } => {
            let b = crate::bench_watch::WatchBench {
                files,
                file_bytes,
                changes,
                settle,
                scratch,
            };
            crate::bench_watch::run(ctx, b).await?
        }
    };
    if ctx.json {
        print_json(&v);
    }
    Ok(0)
}
