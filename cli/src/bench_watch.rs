//! `dfsctl bench watch`: the folder watcher's two figures, measured through the real watcher
//! code against the cluster: the initial reconcile of `--files` small files (`--once`, files/s)
//! and the delay from a local change to its remote visibility (p50/p99 over `--changes`
//! changes, one at a time, with the watcher running and `--settle` as given: the delay
//! includes it). The local tree is written under --scratch and removed afterwards, as is the
//! remote copy. The size is the default (`--files 10000`).
use crate::bench::percentile;
use crate::watch::{WatchArgs, Watcher};
use crate::Ctx;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub struct WatchBench {
    pub files: usize,
    pub file_bytes: usize,
    pub changes: usize,
    pub settle: Duration,
    pub scratch: PathBuf,
}

fn args(local: &std::path::Path, remote: &str, settle: Duration, once: bool) -> WatchArgs {
    WatchArgs {
        local: local.to_path_buf(),
        remote: remote.to_string(),
        settle,
        rescan: Duration::from_secs(3600),
        delete: false,
        max_delete: 50,
        exclude: Vec::new(),
        state: None,
        once,
        parallel: 8,
        replication: None,
    }
}

pub async fn run(ctx: &Ctx, b: WatchBench) -> anyhow::Result<Value> {
    let root = b
        .scratch
        .join(format!(".dfs-bench-watch-{}", std::process::id()));
    let local = root.join("tree");
    let remote = format!("/.bench-watch-{}", uuid::Uuid::new_v4().simple());
    let q = ctx.quieted();
    let result = async {
        for i in 0..b.files {
            let p = local.join(format!("d{:03}/f{i:06}", i / 100));
            if i % 100 == 0 {
                std::fs::create_dir_all(p.parent().unwrap_or(&local))?;
            }
            let mut data = format!("file {i} ").into_bytes();
            data.resize(b.file_bytes.max(data.len()), b'.');
            std::fs::write(p, data)?;
        }
        // 1. The initial reconcile: every file is new (settle 0: they are all written).
        let started = Instant::now();
        let code = Watcher::new(&q, args(&local, &remote, Duration::ZERO, true))
            .await?
            .run()
            .await?;
        let secs = started.elapsed().as_secs_f64();
        if code != 0 {
            anyhow::bail!("the initial reconcile failed");
        }
        let rate = b.files as f64 / secs;
        if !ctx.json {
            println!(
                "initial reconcile of {} files of {} B: {secs:.2} s, {rate:.1} files/s",
                b.files, b.file_bytes
            );
        }
        // 2. A restart with nothing changed (the manifest saves all hashing and uploads).
        let started = Instant::now();
        Watcher::new(&q, args(&local, &remote, Duration::ZERO, true))
            .await?
            .run()
            .await?;
        let again = started.elapsed().as_secs_f64();
        if !ctx.json {
            println!(
                "restart, nothing changed: {again:.2} s, {:.1} files/s",
                b.files as f64 / again
            );
        }
        // 3. Change → remote visible, with the watcher running.
        let watcher = Watcher::new(&q, args(&local, &remote, b.settle, false)).await?;
        let mut client = dfs_client::Client::new(ctx.client()?);
        client.pool = ctx.pool();
        let measure = async {
            let mut delays = Vec::with_capacity(b.changes);
            for i in 0..b.changes {
                let rel = format!("changes/c{i:04}");
                let data = format!("change {i} at {:?}", Instant::now()).into_bytes();
                let want = hex::encode(Sha256::digest(&data));
                let p = local.join(&rel);
                std::fs::create_dir_all(p.parent().unwrap_or(&local))?;
                let t0 = Instant::now();
                std::fs::write(&p, &data)?;
                loop {
                    if let Ok(f) = client.stat(&format!("{remote}/{rel}")).await {
                        if f.sha256 == want {
                            break;
                        }
                    }
                    if t0.elapsed() > Duration::from_secs(120) {
                        anyhow::bail!("{rel} was not visible remotely after 120 s");
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                delays.push(t0.elapsed());
            }
            Ok::<_, anyhow::Error>(delays)
        };
        let mut delays = tokio::select! {
            d = measure => d?,
            r = watcher.run() => anyhow::bail!("the watcher stopped: {:?}", r),
        };
        delays.sort();
        let (p50, p99) = (percentile(&delays, 0.5), percentile(&delays, 0.99));
        if !ctx.json {
            println!(
                "change -> remote visible ({} changes, --settle {} ms): p50 {p50:.0} ms, p99 {p99:.0} ms",
                b.changes,
                b.settle.as_millis()
            );
        }
        Ok::<_, anyhow::Error>(json!({"bench": "watch", "files": b.files,
            "file_bytes": b.file_bytes, "reconcile_seconds": secs, "reconcile_files_per_sec": rate,
            "unchanged_reconcile_seconds": again,
            "changes": b.changes, "settle_ms": b.settle.as_millis() as u64,
            "visible_p50_ms": p50, "visible_p99_ms": p99}))
    }
    .await;
    let _ = std::fs::remove_dir_all(&root);
    if let Ok(c) = ctx.client() {
        let _ = dfs_client::Client::new(c).remove(&remote, true).await;
    }
    result
}
