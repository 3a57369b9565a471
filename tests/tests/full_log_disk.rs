//! A log that cannot be written (issue 21, found by chaos's failing disks): each node logs to
//! `<data dir>/log`, and on a full or failing disk every log line failed. tracing-subscriber
//! then reported the failure with `eprintln!`, which panics when stderr cannot be written:
//! a metasrv died on its first line ("ready"), a chunk server's pack writer died on its first
//! error and refused every small chunk from then on. Here each node's log is `/dev/full`
//! (every write fails with ENOSPC): the nodes must start, serve and stay up.
use dfs_tests::{bin, wait_until, Cluster};
use std::time::Duration;

#[test]
fn nodes_whose_log_cannot_be_written_keep_serving() {
    let c = Cluster::up(1, 2, &[]);
    for node in ["meta-1", "chunk-1", "chunk-2"] {
        c.kill(node);
        let log = c.path().join(node).join("log");
        std::fs::remove_file(&log).unwrap();
        std::os::unix::fs::symlink("/dev/full", &log).unwrap();
        // At info, so that the nodes log as they run (the tests' default is warn).
        let out = std::process::Command::new(bin("dfsctl"))
            .args(["local", "start", "--dir"])
            .arg(c.path())
            .arg(node)
            .env("DFS_LOG", "info")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    wait_until(Duration::from_secs(30), "both chunk servers live", || {
        let s = c.status();
        let servers = s["chunk_servers"].as_array().cloned().unwrap_or_default();
        servers.len() == 2 && servers.iter().all(|s| s["live"] == true)
    });
    // Small files go into packs, large ones into chunk files: both paths log.
    for (name, len) in [("small", 3_000usize), ("large", 3 << 20)] {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        c.put_data(&c.auth, &format!("/{name}"), &data, &[]).ok();
        assert_eq!(c.get_data(&c.auth, &format!("/{name}")), data, "{name}");
    }
    for node in ["meta-1", "chunk-1", "chunk-2"] {
        let pid = c.node_pid(node);
        // SAFETY: signal 0 only checks that the process exists.
        assert_eq!(unsafe { libc::kill(pid, 0) }, 0, "{node} is gone");
    }
}
