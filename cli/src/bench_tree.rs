//! `dfsctl bench tree`: files/s and MB/s of `put -r` (the real tree code) for many small files
//! and for a few big ones, with `--parallel 1` and with each other level asked for. The local
//! trees are written under --scratch and removed afterwards, as are the remote copies.
//! Defaults are small (a quick look); the sizes are
//! `--small 10000 --small-kib 4 --big 10 --big-mib 100`.
use crate::Ctx;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub struct TreeBench {
    pub small: usize,
    pub small_kib: u64,
    pub big: usize,
    pub big_mib: u64,
    pub parallel: Vec<usize>,
    pub scratch: PathBuf,
}

fn write_files(dir: &Path, n: usize, size: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for i in 0..n {
        // Distinct contents per file (no two files share chunks by accident).
        let mut data = vec![0u8; size as usize];
        for (j, b) in data.iter_mut().enumerate() {
            *b = (j as u64 ^ (i as u64).wrapping_mul(2654435761)) as u8;
        }
        std::fs::write(dir.join(format!("f{i:06}")), data)?;
    }
    Ok(())
}

pub async fn run(ctx: &Ctx, b: TreeBench) -> anyhow::Result<Value> {
    let root = b
        .scratch
        .join(format!(".dfs-bench-tree-{}", std::process::id()));
    let sets = [
        ("small", b.small, b.small_kib << 10),
        ("big", b.big, b.big_mib << 20),
    ];
    let quiet = ctx.quieted();
    let conn = ctx.client()?;
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let result = async {
        let mut rows = Vec::new();
        for (name, n, size) in sets {
            let local = root.join(name);
            write_files(&local, n, size)?;
            for &p in &b.parallel {
                let remote = format!("/.bench-tree-{run_id}/{name}-p{p}");
                let started = Instant::now();
                let opts = crate::tree::TreeOpts {
                    parallel: p,
                    force: false,
                    update: false,
                    follow: false,
                    replication: 0,
                };
                let code =
                    crate::tree::put_tree(&quiet, &local.display().to_string(), &remote, opts)
                        .await?;
                let secs = started.elapsed().as_secs_f64();
                if code != 0 {
                    anyhow::bail!("put -r of the {name} files failed with --parallel {p}");
                }
                let bytes = n as u64 * size;
                let row = json!({"set": name, "files": n, "file_bytes": size, "parallel": p,
                    "seconds": secs, "files_per_sec": n as f64 / secs,
                    "mb_per_sec": bytes as f64 / 1e6 / secs});
                if !ctx.json {
                    println!(
                        "put -r {n:>6} x {:>9} B  --parallel {p:<3} {:>9.1} files/s {:>8.1} MB/s  ({secs:.2} s)",
                        size,
                        n as f64 / secs,
                        bytes as f64 / 1e6 / secs
                    );
                }
                rows.push(row);
            }
            std::fs::remove_dir_all(&local)?;
        }
        Ok::<_, anyhow::Error>(rows)
    }
    .await;
    let _ = std::fs::remove_dir_all(&root);
    let _ = crate::rpc!(
        conn,
        remove,
        dfs_proto::RemoveRequest {
            // Scratch data of the benchmark: deleted for good, not kept in the trash.
            skip_trash: true,
            path: format!("/.bench-tree-{run_id}"),
            recursive: true,
            request_id: dfs_client::new_request_id(),
        }
    );
    Ok(json!({"bench": "tree", "runs": result?}))
}
