//! `dfsctl bench repair`: how fast a `dfsctl local` cluster gets back to full replication after
//! a chunk server is SIGKILLed, and what foreground put/get throughput is left while it does.
//!
//! It writes `--files` files of `--file-mib` MiB (replication 2), measures foreground put+get
//! MB/s, kills the chunk server holding the most of them, waits for the dead timeout, then
//! measures the repair (from the first repaired chunk to fsck HEALTHY: MB/s and chunks/s) while
//! the same foreground loop runs, and finally restarts the server. The repair rate limit is
//! metasrv's `--repair-rate` (run it once with the default and once with `--repair-rate=0`).
use crate::client::MetaConn;
use crate::local::{DirArg, LocalCluster, LocalCmd};
use crate::{rpc, Ctx};
use anyhow::{bail, Context};
use dfs_client::{get_stream, put_stream, ChunkPool, PutOptions, ReaderSource};
use dfs_proto::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

/// Put and get one file over and over until `stop`; returns bytes moved.
async fn foreground(
    conn: Arc<MetaConn>,
    pool: ChunkPool,
    root: String,
    data: Arc<Vec<u8>>,
    stop: Arc<AtomicBool>,
    moved: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let p = format!("{root}/fg{i}");
        i += 1;
        put_stream(
            &conn,
            &pool,
            ReaderSource(&data[..]),
            &p,
            &PutOptions {
                overwrite: true,
                replication: 2,
                size_hint: Some(data.len() as u64),
            },
            &dfs_client::no_progress,
        )
        .await?;
        moved.fetch_add(data.len() as u64, Ordering::Relaxed);
        let r = rpc!(
            conn,
            open_read,
            StatRequest {
                path: p.clone(),
                stale: false
            }
        )?;
        let mut sink = std::io::sink();
        let n = get_stream(&conn, &pool, &r, &mut sink, &dfs_client::no_progress).await?;
        moved.fetch_add(n, Ordering::Relaxed);
        rpc!(
            conn,
            remove,
            RemoveRequest {
                // Scratch data of the benchmark: deleted for good, not kept in the trash.
                skip_trash: true,
                request_id: crate::client::new_request_id(),
                path: p.clone(),
                recursive: false
            }
        )?;
    }
    Ok(())
}

/// Foreground MB/s over `secs` seconds.
async fn measure_foreground(
    conn: &Arc<MetaConn>,
    root: &str,
    data: &Arc<Vec<u8>>,
    until: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<(f64, f64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let moved = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let task = tokio::spawn(foreground(
        conn.clone(),
        ChunkPool::default(),
        root.to_string(),
        data.clone(),
        stop.clone(),
        moved.clone(),
    ));
    let r = until.await;
    stop.store(true, Ordering::Relaxed);
    task.await.context("foreground task")??;
    r?;
    let secs = t.elapsed().as_secs_f64();
    Ok((moved.load(Ordering::Relaxed) as f64 / secs / 1e6, secs))
}

pub async fn run(
    ctx: &Ctx,
    dir: PathBuf,
    files: usize,
    file_mib: u64,
) -> anyhow::Result<serde_json::Value> {
    let cluster = LocalCluster::load(&dir)?;
    let conn = Arc::new(
        MetaConn::connect(&cluster.meta_addrs(), ctx.auth_file.as_deref(), ctx.timeout)?.patient(),
    );
    let pool = ChunkPool::default();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    let root = format!("/bench-repair-{stamp:x}");
    let size = (file_mib << 20) as usize;
    let say = |m: String| {
        if !ctx.quiet && !ctx.json {
            eprintln!("{m}");
        }
    };
    say(format!(
        "writing {files} files of {file_mib} MiB under {root}"
    ));
    for i in 0..files {
        let data = pattern(size, i as u64);
        put_stream(
            &conn,
            &pool,
            ReaderSource(&data[..]),
            &format!("{root}/f{i}"),
            &PutOptions {
                overwrite: false,
                replication: 2,
                size_hint: Some(size as u64),
            },
            &dfs_client::no_progress,
        )
        .await?;
    }
    let fg = Arc::new(pattern(size.max(1 << 20), 999));
    let (base_mbs, _) = measure_foreground(&conn, &format!("{root}/fg"), &fg, async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok(())
    })
    .await?;
    say(format!(
        "foreground put+get before the kill: {base_mbs:.1} MB/s"
    ));

    // The chunk server with the most replicas of these files.
    let status = rpc!(conn, cluster_status, StatusRequest { stale: false })?;
    let list = conn.list_all(&root, true, false).await?;
    let mut held: BTreeMap<u64, usize> = BTreeMap::new();
    for e in list.iter().filter(|e| !e.is_dir) {
        let s = rpc!(
            conn,
            stat,
            StatRequest {
                path: e.path.clone(),
                stale: false
            }
        )?;
        for ch in &s.chunks {
            for r in &ch.replicas {
                *held.entry(*r).or_default() += 1;
            }
        }
    }
    let (&victim, _) = held
        .iter()
        .max_by_key(|(_, n)| **n)
        .context("no chunk was written")?;
    let addr = status
        .chunk_servers
        .iter()
        .find(|s| s.id == victim)
        .map(|s| s.addr.clone())
        .context("victim has no address")?;
    let name = cluster
        .nodes
        .iter()
        .find(|n| n.addr == addr)
        .map(|n| n.name.clone())
        .context("the victim is not a node of this local cluster")?;
    say(format!("SIGKILL {name} (chunk server {victim})"));
    crate::local::run(
        ctx,
        LocalCmd::Kill {
            dir: DirArg { dir: dir.clone() },
            node: name.clone(),
        },
    )
    .await?;
    let killed = Instant::now();
    let fsck = || async { rpc!(conn, fsck, FsckRequest { path: root.clone() }) };
    // Wait until the damage is visible, then until the first repair.
    let mut initial = 0;
    while initial == 0 {
        initial = fsck().await?.under_replicated_chunks;
        if killed.elapsed() > Duration::from_secs(30) {
            bail!("the killed server's chunks never showed as under-replicated");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = loop {
        let r = fsck().await?;
        if r.under_replicated_chunks < initial {
            break Instant::now();
        }
        if killed.elapsed() > Duration::from_secs(600) {
            bail!("no repair started within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    say(format!(
        "{initial} chunks under-replicated; repair started {:.1} s after the kill",
        killed.elapsed().as_secs_f64()
    ));
    let chunk_size = (size as u64).min(
        rpc!(
            conn,
            stat,
            StatRequest {
                path: format!("{root}/f0"),
                stale: false
            }
        )?
        .chunk_size
        .max(1),
    );
    let done = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let done2 = done.clone();
    let (fg_mbs, _) = measure_foreground(&conn, &format!("{root}/fg"), &fg, async {
        loop {
            let r = fsck().await?;
            if r.under_replicated_chunks == 0 && r.missing_chunks == 0 {
                *done2.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(1800) {
                bail!("repair did not finish within 30 minutes");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await?;
    let finished = done
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .unwrap_or_else(Instant::now);
    let secs = finished.duration_since(started).as_secs_f64().max(1e-3);
    let bytes = initial * chunk_size;
    let total = finished.duration_since(killed).as_secs_f64();
    say(format!(
        "repaired {initial} chunks ({:.1} MB) in {secs:.1} s: {:.1} MB/s, {:.1} chunks/s; healthy {total:.1} s after the kill",
        bytes as f64 / 1e6,
        bytes as f64 / secs / 1e6,
        initial as f64 / secs
    ));
    say(format!(
        "foreground put+get during the repair: {fg_mbs:.1} MB/s"
    ));
    crate::local::run(
        ctx,
        LocalCmd::Start {
            dir: DirArg { dir: dir.clone() },
            node: name.clone(),
        },
    )
    .await?;
    rpc!(
        conn,
        remove,
        RemoveRequest {
            // Scratch data of the benchmark: deleted for good, not kept in the trash.
            skip_trash: true,
            request_id: crate::client::new_request_id(),
            path: root.clone(),
            recursive: true
        }
    )?;
    Ok(json!({
        "killed": name,
        "chunks_repaired": initial,
        "bytes_repaired": bytes,
        "repair_seconds": secs,
        "repair_mb_per_s": bytes as f64 / secs / 1e6,
        "repair_chunks_per_s": initial as f64 / secs,
        "healthy_after_kill_seconds": total,
        "foreground_mb_per_s_before": base_mbs,
        "foreground_mb_per_s_during": fg_mbs,
    }))
}
