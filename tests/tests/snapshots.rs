//! Snapshots of a large state with real metasrv processes: a member added online to a cluster
//! holding tens of thousands of entries catches up from a snapshot streamed to it in chunks
//! (metasrv/src/store/snapshot_files.rs), while a client keeps writing and no write fails.
use dfs_tests::*;
use serde_json::{json, Value};
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Files imported before node 4 joins (in `FILES / PER_IMPORT` requests of a few MB each).
const FILES: usize = 50_000;
const PER_IMPORT: usize = 10_000;

/// A metasrv started by the test; killed however the test ends.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// `files` entries of an original-format saved-files.json, numbered from `from`, 500 a
/// directory, one chunk each (on no chunk server: the import reports them unrecoverable).
fn saved_files(from: usize, files: usize) -> Vec<u8> {
    let entries: Vec<Value> = (from..from + files)
        .map(|i| {
            json!({
                "created": "2026-11-26 20:00:22.183404",
                "id": format!("00000000-0000-4000-8000-{i:012}"),
                "last_edited": "2026-11-26 20:00:22.183413",
                "name": format!("big/d{}/file-{i}.txt", i / 500),
                "owner": "adrian",
                "permissions": {},
                "size": "132",
                "sha256": "1214b68d350d100ca47d140ead9f854b21f9a12308b2a4159ae5a536fa93b12f",
                "chunks": [{
                    "chunk_id": format!("10000000-0000-4000-8000-{i:012}"),
                    "file_name": format!("file-{i}.txt"),
                    "index": 1,
                    "worker_id": "ac408170-a374-4024-8510-cfb2ee8650fd"
                }]
            })
        })
        .collect();
    serde_json::to_vec(&entries).unwrap()
}

/// `key=<number>` from a log line.
fn field(line: &str, key: &str) -> Option<u64> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Peak resident set of a process, in KiB.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Sorted `ls -R` lines of the whole namespace, through `meta` (from its own state when
/// `stale`).
fn listing(c: &Cluster, meta: &str, stale: bool) -> Option<Vec<String>> {
    let mut args = vec!["--timeout", "30", "ls", "-R"];
    if stale {
        args.push("--stale");
    }
    args.push("/");
    let r = c.ctl_env(meta, &c.auth, &args, None);
    if r.code != 0 {
        return None;
    }
    let mut v: Vec<String> = r.stdout.lines().map(str::to_string).collect();
    v.sort();
    Some(v)
}

#[test]
fn a_new_member_installs_a_large_snapshot_while_clients_write() {
    let started = Instant::now();
    // Slow heartbeats: an import replicates up to 32 entries of 500 files (a few MB) in one
    // AppendEntries, which openraft gives one heartbeat interval; a debug build on a loaded
    // machine needs far more than the default 40 ms for that.
    let c = Cluster::up(
        3,
        0,
        &[
            "--snapshot-every=100",
            "--keep-logs=300",
            "--purge-batch=1",
            "--heartbeat-ms=1000",
            "--election-timeout-ms=3000",
        ],
    );
    for from in (0..FILES).step_by(PER_IMPORT) {
        let f = c.path().join(format!("saved-files-{from}.json"));
        std::fs::write(&f, saved_files(from, PER_IMPORT)).unwrap();
        let out = c
            .ctl(&["--timeout", "120", "admin", "import", f.to_str().unwrap()])
            .ok();
        assert!(
            out.contains(&format!("{PER_IMPORT} file(s) imported")),
            "{out}"
        );
        std::fs::remove_file(&f).unwrap();
    }
    // More entries than the leaders keep after a snapshot: the log from index 1 is purged, so
    // a new member can only start from a snapshot. (The 300 kept, less up to 128 between
    // snapshots, cover what the client writes while node 4 is sent one and installs it, so it
    // does not chase one snapshot after another.)
    let pre: Vec<String> = (0..400).map(|i| format!("/pre/d{i}")).collect();
    let mut args = vec!["--timeout", "120", "mkdir", "-p"];
    args.extend(pre.iter().map(String::as_str));
    c.ctl(&args).ok();
    let imported = started.elapsed();

    let stop = AtomicBool::new(false);
    let writes = AtomicU64::new(0);
    let addr = free_addr();
    let node4 = std::thread::scope(|s| {
        // The writer stops however this ends (a failed assertion too), so the scope can end.
        let _stop = StopOnDrop(&stop);
        // A client writing all along: every write must succeed.
        let writer = s.spawn(|| {
            let mut failures = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let r = c.ctl(&["--timeout", "60", "mkdir", "-p", &format!("/live/w{n}")]);
                if r.code != 0 {
                    failures.push(format!("mkdir /live/w{n}: {}", r.stderr));
                }
                n += 1;
                writes.store(n, Ordering::Relaxed);
                // A steady client, not a flood: about 5 writes a second at most.
                std::thread::sleep(Duration::from_millis(200));
            }
            failures
        });
        // Some writes before node 4 exists, so it joins a cluster under load.
        wait_until(Duration::from_secs(60), "the writer under way", || {
            writes.load(Ordering::Relaxed) >= 3
        });

        // Node 4, empty, joining.
        let node4 = Node(c.spawn_joining_meta(4, &addr));
        let at_join = writes.load(Ordering::Relaxed);
        c.ctl(&["--timeout", "120", "cluster", "add-member", "4", &addr])
            .ok();
        wait_until(Duration::from_secs(120), "node 4 to catch up", || {
            let r = c.ctl(&["--json", "--timeout", "5", "cluster", "status"]);
            let Ok(s) = serde_json::from_str::<Value>(r.stdout.trim()) else {
                return false;
            };
            let Some(ms) = s["members"].as_array() else {
                return false;
            };
            let max = ms
                .iter()
                .map(|m| m["applied"].as_u64().unwrap_or(0))
                .max()
                .unwrap_or(0);
            ms.iter().any(|m| {
                m["id"] == 4 && m["applied"].as_u64() == Some(max) && m["role"] == "follower"
            })
        });
        // The client kept writing while node 4 caught up, and goes on a little after.
        let caught_up = writes.load(Ordering::Relaxed);
        wait_until(Duration::from_secs(60), "writes after the catch-up", || {
            writes.load(Ordering::Relaxed) >= caught_up + 3
        });
        stop.store(true, Ordering::Relaxed);
        let failures = writer.join().unwrap();
        assert!(failures.is_empty(), "client writes failed: {failures:#?}");
        assert!(
            caught_up > at_join,
            "no write went through while node 4 joined ({at_join} before, {caught_up} after)"
        );
        node4
    });
    let writes = writes.load(Ordering::Relaxed);

    // The leaders purged their logs (purge batch 1), so node 4 got the state in a snapshot.
    let log4 = std::fs::read_to_string(c.path().join("meta-4.log")).unwrap();
    let installed: Vec<&str> = log4
        .lines()
        .filter(|l| l.contains("snapshot installed"))
        .collect();
    assert!(
        !installed.is_empty(),
        "node 4 should have installed a snapshot:\n{log4}"
    );
    // Same namespace on node 4 (from its own state) as through the leader: every imported file
    // and every directory the client made.
    let leader_view = listing(&c, &c.meta_addrs().join(","), false).expect("ls -R via the leader");
    assert!(
        leader_view.len() > FILES + pre.len() + writes as usize,
        "{}",
        leader_view.len()
    );
    for i in [0, 1, FILES / 2, FILES - 1] {
        let p = format!("/big/d{}/file-{i}.txt", i / 500);
        assert!(leader_view.contains(&p), "{p} missing");
    }
    wait_until(
        Duration::from_secs(60),
        "node 4 to list the same namespace",
        || listing(&c, &addr, true).as_ref() == Some(&leader_view),
    );

    // Figures (debug build unless built otherwise), for the README and reports.
    let bytes = installed.iter().filter_map(|l| field(l, "bytes")).max();
    let ms = installed.iter().filter_map(|l| field(l, "ms")).max();
    let parse_ms = installed.iter().filter_map(|l| field(l, "parse_ms")).max();
    let mut built = Vec::new();
    for n in 1..=3 {
        let t = std::fs::read_to_string(c.path().join(format!("meta-{n}/log"))).unwrap_or_default();
        built.extend(
            t.lines()
                .filter(|l| l.contains("snapshot built"))
                .filter_map(|l| {
                    Some((
                        field(l, "bytes")?,
                        field(l, "serialize_ms")?,
                        field(l, "ms")?,
                    ))
                }),
        );
    }
    let biggest_build = built.iter().max();
    eprintln!(
        "snapshot figures: {} entries listed; import {:.1}s; installed on node 4: {bytes:?} bytes in \
         {ms:?} ms (parse {parse_ms:?} ms); largest build (bytes, serialize ms, sync+commit ms): {biggest_build:?}; node 4 VmHWM {:?} KiB; \
         {writes} client writes; total {:.1}s",
        leader_view.len(),
        imported.as_secs_f64(),
        vm_hwm_kib(node4.0.id()),
        started.elapsed().as_secs_f64()
    );
    drop(node4);
}
