//! Write leases, with the token lifetime (1 s), commit grace (1 s), orphan grace (3 s) and
//! lease timeout (3 s) shortened: a put open three times longer than the old commit window
//! commits while `admin gc --apply` runs; a killed writer's chunks are kept while its lease
//! lives and collected after; a commit naming collected chunks is refused.
use dfs_client::Client;
use dfs_proto::CommitRequest;
use dfs_tests::*;
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHUNK: usize = 64 * 1024;
/// Token lifetime + commit grace: the old limit on a write's length.
const WINDOW: Duration = Duration::from_secs(2);

fn cluster() -> Cluster {
    Cluster::up_with(1, 2, SHORT_LEASE_FLAGS, FAST_REPORT_FLAGS)
}

fn gc(c: &Cluster, apply: bool) -> Value {
    let mut a = vec!["--json", "admin", "gc"];
    if apply {
        a.push("--apply");
    }
    c.ctl(&a).json()
}

/// `dfsctl put - remote` reading from a pipe the test feeds.
fn slow_put(c: &Cluster, remote: &str) -> std::process::Child {
    Command::new(bin("dfsctl"))
        .args(["put", "-", remote])
        .env("DFS_META", &c.meta)
        .env("DFS_TLS_CA", c.ca_env())
        .env("DFS_AUTH_FILE", &c.auth)
        .env("DFS_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dfsctl put")
}

#[test]
fn a_put_open_three_windows_long_commits_while_gc_runs() {
    let c = cluster();
    let data = bytes(12 * CHUNK + 100, 5);
    let mut put = slow_put(&c, "/slow");
    let mut stdin = put.stdin.take().unwrap();
    let started = Instant::now();
    let mut leased_seen = 0;
    for piece in data.chunks(CHUNK) {
        stdin.write_all(piece).unwrap();
        stdin.flush().unwrap();
        std::thread::sleep(Duration::from_millis(600));
        let v = gc(&c, true);
        assert_eq!(v["removed"], 0, "a live write's chunk was collected: {v}");
        leased_seen = leased_seen.max(v["leased"].as_u64().unwrap_or(0));
    }
    drop(stdin);
    let out = put.wait_with_output().unwrap();
    let open_for = started.elapsed();
    assert!(
        out.status.success(),
        "put failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(open_for > WINDOW * 3, "open {open_for:?}");
    assert!(leased_seen > 0, "the collector never saw a leased chunk");
    assert_eq!(c.get_data(&c.auth, "/slow"), data);
    // The put released its lease when it was done.
    wait_until(Duration::from_secs(30), "the lease released", || {
        c.ctl(&["--json", "cluster", "status"]).json()["open_leases"] == 0
    });
    // Nothing of the file is an orphan, now or after the grace.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(gc(&c, true)["removed"], 0);
    assert_eq!(c.get_data(&c.auth, "/slow"), data);
}

#[test]
fn a_killed_writer_keeps_its_chunks_until_its_lease_expires_then_they_go() {
    let c = cluster();
    let mut put = slow_put(&c, "/dies");
    let mut stdin = put.stdin.take().unwrap();
    for piece in bytes(4 * CHUNK, 9).chunks(CHUNK) {
        stdin.write_all(piece).unwrap();
        stdin.flush().unwrap();
    }
    wait_until(Duration::from_secs(30), "a write lease", || {
        c.ctl(&["--json", "cluster", "status"]).json()["open_leases"] == 1
    });
    wait_until(Duration::from_secs(30), "chunks on disk", || {
        c.all_chunk_files() >= 6
    });
    let written_at = Instant::now();
    // The collector sees them (chunk reports come every 3 s) as held by the live lease...
    wait_until(
        Duration::from_secs(30),
        "the collector to see leased chunks",
        || gc(&c, false)["leased"].as_u64().unwrap_or(0) > 0,
    );
    // ...and keeps them past the 3 s orphan grace (without the lease they would be due).
    while written_at.elapsed() < Duration::from_secs(5) {
        let v = gc(&c, true);
        assert_eq!(v["removed"], 0, "a live lease's chunk was collected: {v}");
    }
    put.kill().unwrap();
    let _ = put.wait();
    let written = c.all_chunk_files();
    // Then they are ordinary orphans: collected after the 3 s grace.
    let mut removed = 0;
    wait_until(
        Duration::from_secs(60),
        "the dead writer's chunks collected",
        || {
            removed += gc(&c, true)["removed"].as_u64().unwrap_or(0) as usize;
            removed >= written
        },
    );
    wait_until(Duration::from_secs(30), "chunk files deleted", || {
        c.all_chunk_files() == 0
    });
    let m = c.metrics_text("meta-1");
    assert!(
        m.lines()
            .any(|l| l.starts_with("dfs_write_leases_expired_total ") && !l.ends_with(" 0")),
        "{m}"
    );
    c.ctl(&["stat", "/dies"]).fails_with("no such file");
}

#[test]
fn a_commit_naming_collected_chunks_is_refused() {
    let c = cluster();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_rt = rt.enter();
    let cl = Client::connect(&c.client_options(&c.meta)).unwrap();
    let data = bytes(1000, 3);
    let stored = rt.block_on(async {
        let (alloc, chunk_size) = cl.allocate_chunk("/late", 1000).await.unwrap();
        (
            cl.store_chunk(alloc, data.clone()).await.unwrap(),
            chunk_size,
        )
    });
    // No lease: past the window the chunk is an orphan, and the collector takes it.
    let mut removed = 0;
    wait_until(
        Duration::from_secs(60),
        "the unleased chunk collected",
        || {
            removed += gc(&c, true)["removed"].as_u64().unwrap_or(0);
            removed >= 2
        },
    );
    let commit = |lease_id: &str| CommitRequest {
        path: "/late".into(),
        overwrite: false,
        replication: 0,
        size: 1000,
        sha256: sha256_hex(&data),
        chunk_size: stored.1,
        chunks: vec![stored.0.clone()],
        request_id: dfs_client::new_request_id(),
        mode: None,
        lease_id: lease_id.into(),
    };
    rt.block_on(async {
        let r = dfs_client::rpc!(cl.conn, commit_file, commit(""));
        let e = r.expect_err("a commit of a collected chunk was acknowledged");
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        // A lease it never took does not help either.
        let r = dfs_client::rpc!(cl.conn, commit_file, commit("made-up"));
        let e = r.expect_err("a commit under a lease that does not exist was acknowledged");
        assert!(e.message().contains("expired"), "{e:?}");
    });
    c.ctl(&["stat", "/late"]).fails_with("no such file");
}
