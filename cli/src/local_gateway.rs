//! `dfsctl local up` starts one WebDAV gateway (`dfs-gateway`, found beside `dfsctl`) on a
//! loopback port, plain HTTP (`--insecure-http`: loopback only), in the background (its own
//! process group, so it outlives the `local up` that started it). Its pid, URL and metrics
//! address are kept in `gateway.json` beside `cluster.json`, its log in `gateway.log`.
//!
//! What must stay true: `local up` reports the gateway's URL only once it accepts connections,
//! and a missing `dfs-gateway` binary or a gateway that fails to start is a warning, never a
//! failed `local up` (the cluster itself is up); `local down` stops it; a pid is signalled only
//! while it is still a `dfs-gateway` (a reused pid is left alone).
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What `gateway.json` records.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct LocalGateway {
    pub pid: u32,
    pub url: String,
    pub metrics_addr: String,
}

fn record(dir: &Path) -> PathBuf {
    dir.join("gateway.json")
}

/// The recorded gateway, if its process still runs.
pub fn running(dir: &Path) -> Option<LocalGateway> {
    let g: LocalGateway = serde_json::from_slice(&std::fs::read(record(dir)).ok()?).ok()?;
    is_gateway_process(g.pid).then_some(g)
}

fn is_gateway_process(pid: u32) -> bool {
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    cmd.split(|b| *b == 0)
        .next()
        .is_some_and(|a| a.ends_with(b"dfs-gateway"))
}

/// The `dfs-gateway` binary beside this `dfsctl`.
pub fn binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.join("dfs-gateway");
    p.exists().then_some(p)
}

/// Start the gateway against `meta` on `listen` (metrics on `metrics`) and wait until it
/// accepts connections. A running gateway of this cluster is kept.
pub fn start(
    dir: &Path,
    meta: &[String],
    listen: &str,
    metrics: &str,
    wait: Duration,
) -> anyhow::Result<LocalGateway> {
    use std::os::unix::process::CommandExt;
    if let Some(g) = running(dir) {
        return Ok(g);
    }
    let bin =
        binary().context("dfs-gateway is not beside dfsctl (build it: cargo build --bins)")?;
    let dir = std::fs::canonicalize(dir)?;
    let log_path = dir.join("gateway.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let mut child = Command::new(bin)
        .args(["--listen", listen, "--metrics", metrics, "--insecure-http"])
        .env("DFS_META", meta.join(","))
        .env(
            "DFS_TLS_CA",
            crate::local::local_ca(&dir).unwrap_or_default(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("cannot start dfs-gateway")?;
    let g = LocalGateway {
        pid: child.id(),
        url: format!("http://{listen}/"),
        metrics_addr: metrics.to_string(),
    };
    dfs_common::durable::write_atomic(&record(&dir), &serde_json::to_vec_pretty(&g)?)?;
    let deadline = Instant::now() + wait;
    loop {
        if std::net::TcpStream::connect(listen).is_ok() {
            return Ok(g);
        }
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            let _ = std::fs::remove_file(record(&dir));
            bail!(
                "the gateway exited ({status}):\n    {}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n    ")
            );
        }
        if Instant::now() >= deadline {
            stop(&dir)?;
            bail!(
                "the gateway did not listen on {listen} within {} s (see {})",
                wait.as_secs(),
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM the gateway and wait (5 s) for it to exit; SIGKILL after that. Returns what ran.
pub fn stop(dir: &Path) -> anyhow::Result<Option<LocalGateway>> {
    let Some(g) = running(dir) else {
        let _ = std::fs::remove_file(record(dir));
        return Ok(None);
    };
    // `running` checked the pid is our dfs-gateway.
    crate::local::terminate(g.pid, Duration::from_secs(5), || is_gateway_process(g.pid));
    std::fs::remove_file(record(dir))?;
    Ok(Some(g))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_record_means_no_gateway_and_stop_is_a_no_op() {
        let d = tempfile::tempdir().unwrap();
        assert!(running(d.path()).is_none());
        assert!(stop(d.path()).unwrap().is_none());
    }
}
