//! Gray failures: faults where a node is neither up nor down. Each test here runs its cluster
//! in a private network namespace (the test binary re-runs itself under `unshare -n`), so the
//! nftables rules it adds touch nothing outside. Needs root (or user namespaces), `unshare`,
//! `ip` and `nft`.
use dfs_tests::Cluster;
use std::process::Command;
use std::time::{Duration, Instant};

const IN_NETNS: &str = "DFS_TEST_IN_NETNS";

/// Re-run the named test inside a fresh network namespace; true when the caller is that run.
fn in_private_netns(test: &str) -> bool {
    if std::env::var_os(IN_NETNS).is_some() {
        sh("ip link set lo up");
        return true;
    }
    for tool in ["unshare", "ip", "nft"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            found,
            "this test needs `{tool}` on PATH (apt install util-linux iproute2 nftables)"
        );
    }
    let exe = std::env::current_exe().expect("test binary path");
    let out = Command::new("unshare")
        .arg("-n")
        .arg("--")
        .arg(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(IN_NETNS, "1")
        .output()
        .expect("run unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the run in a private network namespace failed:\n{stdout}\n{stderr}"
    );
    eprintln!("{stderr}");
    false
}

fn sh(cmd: &str) {
    let out = Command::new("sh").args(["-c", cmd]).output().expect("sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A leader whose inbound traffic is dropped (its own connections keep working, so its
/// heartbeats still arrive) is replaced: a write is acknowledged through another leader within
/// seconds, and once the rule is gone the cluster has one leader and converges.
#[test]
fn half_reachable_leader_is_replaced() {
    if !in_private_netns("half_reachable_leader_is_replaced") {
        return;
    }
    let c = Cluster::up(3, 0, &[]);
    let old = c.leader();
    c.ctl(&["mkdir", "/before"]).ok();
    let addrs = c.meta_addrs();
    let port = addrs[old as usize - 1]
        .rsplit(':')
        .next()
        .expect("port")
        .to_string();
    let others: Vec<String> = addrs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i as u64 + 1 != old)
        .map(|(_, a)| a.clone())
        .collect();
    let others = others.join(",");
    sh("nft add table inet gray");
    sh("nft 'add chain inet gray input { type filter hook input priority 0; }'");
    sh(&format!(
        "nft add rule inet gray input tcp dport {port} drop"
    ));
    let cut = Instant::now();
    // One write, sent at once through the other members: it waits while they forward to the
    // unreachable leader, and goes to the new leader as soon as one is elected.
    c.ctl_env(
        &others,
        &c.path().join("admin.auth"),
        &["--timeout", "30", "mkdir", "/during"],
        None,
    )
    .ok();
    let took = cut.elapsed();
    eprintln!(
        "first write acknowledged {:.1} s after the leader's inbound traffic was cut",
        took.as_secs_f64()
    );
    // The issue asks for 5 s (3.9 s here, quiet machine); the guard leaves room for a loaded one.
    assert!(took < Duration::from_secs(8), "took {took:?}");
    sh("nft delete table inet gray");
    c.wait_converged(3, 1);
    let leader = c.leader();
    let s = c.status();
    let members = s["members"].as_array().expect("members");
    for m in members {
        let l = m["leader"].as_u64().unwrap_or(leader);
        assert_eq!(l, leader, "members disagree on the leader: {s}");
    }
    c.ctl(&["mkdir", "/after"]).ok();
    c.ctl(&["stat", "/before"]).ok();
}

/// A put whose chunks are placed on a frozen chunk server (SIGSTOP: its sockets stay open, it
/// answers nothing) gives that replica up after the stall timeout and completes with the
/// replicas it has, well inside `--timeout`; the data reads back.
#[test]
fn put_completes_with_a_frozen_chunk_server() {
    let c = Cluster::up(1, 2, &[]);
    let auth = c.path().join("admin.auth");
    c.put_data(&auth, "/warm", b"warm", &[]).ok();
    let frozen = c.freeze("chunk-1");
    // Both servers are targets of every chunk (replication 2 on 2 servers).
    let data = dfs_tests::bytes(20 << 20, 24);
    let t = Instant::now();
    let run = c.put_data(&auth, "/big", &data, &["--timeout", "60"]);
    let took = t.elapsed();
    assert_eq!(run.code, 0, "put failed: {}", run.stderr);
    eprintln!(
        "20 MB put with a frozen chunk server took {:.1} s",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(45), "took {took:?}");
    assert!(c.get_data(&auth, "/big") == data, "data read back differs");
    drop(frozen);
}

/// Issue 24: with one of three chunk servers frozen mid-put, a 200 MB put (replication 2) gives
/// the frozen replica up after the stall timeout, gets a replacement target from the leader and
/// writes the whole chunk there, so the file is fully replicated when the put returns, well
/// inside `--timeout`. The leader counts the stall report, shows the server stalled in
/// `cluster status` and its metrics, and places nothing on it meanwhile; after the server is
/// resumed the cluster is healthy.
#[test]
fn a_frozen_chunk_server_is_replaced_and_reported() {
    // One file per chunk, so the test sees when chunk-1 has started taking this put's chunks.
    let c = Cluster::up_files(1, 3, &[]);
    let auth = c.path().join("admin.auth");
    c.put_data(&auth, "/warm", b"warm", &[]).ok();
    let status = || -> serde_json::Value {
        serde_json::from_str(c.ctl(&["--json", "cluster", "status"]).ok().trim()).unwrap()
    };
    let frozen_id = status()["chunk_servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["addr"] == c.node_addr("chunk-1").as_str())
        .map(|s| s["id"].as_u64().unwrap())
        .expect("id of chunk-1");
    let data = dfs_tests::bytes(200 << 20, 25);
    let local = c.path().join("big.bin");
    std::fs::write(&local, &data).unwrap();
    let before = c.chunk_files("chunk-1").len();
    let t = Instant::now();
    let mut put = c.ctl_spawn(&[
        "--timeout",
        "30",
        "put",
        local.to_str().unwrap(),
        "/big",
        "--replication",
        "2",
    ]);
    // Frozen once it has taken a chunk of this put: its next ones (already placed there)
    // stall, whatever the load on this machine.
    let mut under_way = false;
    while t.elapsed() < Duration::from_secs(60) {
        if put.try_wait().unwrap().is_some() {
            break;
        }
        if c.chunk_files("chunk-1").len() > before {
            under_way = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let frozen = c.freeze("chunk-1");
    let run = dfs_tests::Run::from(put.wait_with_output().unwrap());
    let took = t.elapsed();
    assert!(under_way, "the put ended before chunk-1 took a chunk");
    assert_eq!(run.code, 0, "put failed: {}", run.stderr);
    eprintln!(
        "200 MB put with a frozen chunk server took {:.1} s",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
    // Fully replicated at commit: every chunk names 2 replicas. Only chunks the frozen server
    // had stored before it froze may lack a live one now (their copy there is fine, just
    // unreachable).
    let fsck: serde_json::Value =
        serde_json::from_str(&c.ctl(&["--json", "admin", "fsck", "/big"]).stdout).unwrap();
    for p in fsck["problems"].as_array().unwrap() {
        for ch in p["chunks"].as_array().unwrap() {
            let missing: Vec<u64> = ch["missing"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|m| m.as_u64())
                .collect();
            assert_eq!(missing, vec![frozen_id], "{fsck}");
            assert_eq!(ch["live"], 1, "{fsck}");
            assert!(ch["corrupt"].as_array().unwrap().is_empty(), "{fsck}");
        }
    }
    let s = status();
    let frozen_status = s["chunk_servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"].as_u64() == Some(frozen_id))
        .cloned()
        .unwrap();
    assert_eq!(frozen_status["stalled"], true, "{s}");
    let metrics = c.metrics_text("meta-1");
    assert!(
        metrics.contains("dfs_chunk_servers_stalled 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("stall"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("dfs_stall_reports_total ") && !l.ends_with(" 0")),
        "no stall report counted"
    );
    drop(frozen);
    assert!(c.get_data(&auth, "/big") == data, "data read back differs");
    c.ctl(&["admin", "fsck"]).ok();
}
