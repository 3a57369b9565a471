//! The layout file of a local cluster (`cluster.json` under `dfsctl local`'s directory): which
//! metasrv and chunksrv processes make it up, their ports, arguments and pids. `dfsctl local`
//! writes it; the chaos harness and the benchmarks read it to find and kill nodes.
//!
//! What must stay true: the file is replaced atomically (a reader never sees half of it), and
//! a pid counts as a node only while that process is alive and runs the node's binary (a pid
//! reused by another program is not the node).
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LocalClusterError {
    #[error("no local cluster in {dir} (start one with `dfsctl local up --dir {dir}`)")]
    Missing { dir: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a cluster layout: {source}")]
    Format {
        path: String,
        source: serde_json::Error,
    },
    #[error("no node named {name}; nodes: {known}")]
    NoSuchNode { name: String, known: String },
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct LocalNode {
    pub name: String,
    /// "meta" or "chunk".
    pub kind: String,
    pub id: u64,
    pub addr: String,
    pub metrics_addr: String,
    pub data_dir: PathBuf,
    pub args: Vec<String>,
    pub pid: Option<u32>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct LocalCluster {
    pub nodes: Vec<LocalNode>,
}

impl LocalCluster {
    pub fn load(dir: &Path) -> Result<LocalCluster, LocalClusterError> {
        let p = dir.join("cluster.json");
        let path = p.display().to_string();
        let raw = std::fs::read(&p).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => LocalClusterError::Missing {
                dir: dir.display().to_string(),
            },
            _ => LocalClusterError::Io {
                path: path.clone(),
                source,
            },
        })?;
        serde_json::from_slice(&raw).map_err(|source| LocalClusterError::Format { path, source })
    }

    pub fn save(&self, dir: &Path) -> Result<(), LocalClusterError> {
        let p = dir.join("cluster.json");
        let raw = serde_json::to_vec_pretty(self).map_err(|source| LocalClusterError::Format {
            path: p.display().to_string(),
            source,
        })?;
        crate::durable::write_atomic(&p, &raw).map_err(|source| LocalClusterError::Io {
            path: p.display().to_string(),
            source,
        })
    }

    pub fn meta_addrs(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.kind == "meta")
            .map(|n| n.addr.clone())
            .collect()
    }

    pub fn node_mut(&mut self, name: &str) -> Result<&mut LocalNode, LocalClusterError> {
        let known: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .ok_or_else(|| LocalClusterError::NoSuchNode {
                name: name.to_string(),
                known: known.join(", "),
            })
    }
}

/// SIGKILL `n` and wait, up to `within`, until its process is gone (its sockets closed):
/// whether it went. A process holding gigabytes takes seconds to exit, and a node started
/// again meanwhile finds its port taken.
pub async fn kill_and_wait(n: &LocalNode, within: std::time::Duration) -> bool {
    let Some(pid) = n.pid else { return true };
    // SAFETY: kill(2) on a pid recorded for a node we started; no memory is touched.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    let deadline = std::time::Instant::now() + within;
    while alive(n.pid, &n.kind) {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    true
}

/// Is `pid` a live process running the binary of `kind` ("meta": metasrv, else chunksrv), or
/// one still exiting? A zombie whose threads are all gone is not. (A pid reused by a kernel
/// thread, whose command line is empty too, would read as alive: not a worry on the scale of
/// one `local kill`.)
pub fn alive(pid: Option<u32>, kind: &str) -> bool {
    let Some(pid) = pid else { return false };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or("");
    if state.is_empty() || state == "X" {
        return false;
    }
    if state == "Z" {
        // A killed multi-threaded process reads as a zombie once its main thread is gone,
        // while its other threads still exit holding its sockets (a restart on its port
        // would fail): gone only when no other thread is left.
        return std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|d| d.count() > 1);
    }
    let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    if cmd.is_empty() {
        // Its memory is already gone but it has not become a zombie yet: it is exiting (and
        // still holds its sockets). Reading it as "another program" let `local kill` return
        // while the node still ran.
        return true;
    }
    String::from_utf8_lossy(&cmd).contains(if kind == "meta" {
        "metasrv"
    } else {
        "chunksrv"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layout_survives_save_and_load_and_a_missing_one_says_how_to_start() {
        let d = tempfile::tempdir().unwrap();
        match LocalCluster::load(d.path()) {
            Err(e @ LocalClusterError::Missing { .. }) => {
                assert!(e.to_string().contains("dfsctl local up"), "{e}")
            }
            other => panic!("expected Missing, got {other:?}"),
        }
        let mut c = LocalCluster::default();
        c.nodes.push(LocalNode {
            name: "meta-1".into(),
            kind: "meta".into(),
            id: 1,
            addr: "127.0.0.1:1".into(),
            metrics_addr: "127.0.0.1:2".into(),
            data_dir: d.path().join("meta-1"),
            args: vec![],
            pid: None,
        });
        c.save(d.path()).unwrap();
        let mut back = LocalCluster::load(d.path()).unwrap();
        assert_eq!(back.meta_addrs(), vec!["127.0.0.1:1".to_string()]);
        assert!(back.node_mut("chunk-9").is_err());
        assert!(!alive(back.nodes[0].pid, "meta"));
        assert!(
            !alive(Some(std::process::id()), "meta"),
            "a test binary is not metasrv"
        );
    }
}
