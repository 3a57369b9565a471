//! Self-healing with real processes: a chunk server killed for good is declared dead after the
//! dead timeout and its chunks are copied back to full replication (most endangered first);
//! fsck goes DEGRADED -> HEALTHY; `dfsctl replication` raises and lowers replication.
//! Chunks are 64 KiB and the dead timeout 3 s, so the tests stay short.
use dfs_tests::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const CHUNK: usize = 64 * 1024;
const DEAD_MS: u64 = 3000;

fn put_bytes(c: &Cluster, remote: &str, data: &[u8], extra: &[&str]) {
    c.put_data(&c.auth, remote, data, extra).ok();
}

/// fsck's exit code and JSON report.
fn fsck(c: &Cluster, path: &str) -> (i32, Value) {
    let r = c.ctl(&["--json", "--timeout", "10", "admin", "fsck", path]);
    let v = serde_json::from_str(r.stdout.trim())
        .unwrap_or_else(|e| panic!("fsck JSON ({e}): {} {}", r.stdout, r.stderr));
    (r.code, v)
}

/// Ids of the chunk servers the cluster does not see as live.
fn down_servers(c: &Cluster) -> BTreeSet<u64> {
    c.status()["chunk_servers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["live"] == false)
        .map(|s| s["id"].as_u64().unwrap())
        .collect()
}

fn replicas_of(c: &Cluster, remote: &str) -> Vec<Vec<u64>> {
    let s = c.ctl(&["--json", "stat", remote]).json();
    s["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ch| {
            ch["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_u64().unwrap())
                .collect()
        })
        .collect()
}

fn write_files(c: &Cluster, n: usize, extra: &[&str]) -> Vec<(String, Vec<u8>)> {
    let files: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            let size = match i % 4 {
                0 => 1 + i * 7,
                1 => CHUNK,
                2 => 2 * CHUNK + i,
                _ => 3 * CHUNK - 1,
            };
            (format!("/heal/d{}/f{i}", i % 5), bytes(size, i as u64))
        })
        .collect();
    for (p, d) in &files {
        put_bytes(c, p, d, extra);
    }
    files
}

#[test]
fn a_dead_chunk_server_is_re_replicated_and_fsck_turns_healthy() {
    let dead = format!("--dead-timeout-ms={DEAD_MS}");
    let c = Cluster::up_files(3, 4, &["--chunk-size=65536", &dead]);
    let files = write_files(&c, 200, &[]);
    let (code, v) = fsck(&c, "/");
    assert_eq!(code, 0, "fresh cluster is healthy: {v}");
    assert_eq!(v["status"], "HEALTHY");
    assert_eq!(v["files"], 200);

    c.kill("chunk-4");
    let killed_at = Instant::now();
    // While the server is silent its replicas count as missing: DEGRADED (exit 2).
    wait_until(Duration::from_secs(10), "fsck DEGRADED", || {
        let (code, v) = fsck(&c, "/");
        code == 2 && v["status"] == "DEGRADED" && v["under_replicated_chunks"].as_u64() > Some(0)
    });
    let plain = c.ctl(&["admin", "fsck", "/"]);
    assert_eq!(plain.code, 2);
    assert_eq!(plain.stdout.trim_end().lines().last(), Some("DEGRADED"));
    assert!(
        plain.stdout.contains("UNDER-REPLICATED"),
        "{}",
        plain.stdout
    );
    let gone = down_servers(&c);
    assert_eq!(gone.len(), 1, "one server down: {gone:?}");

    // Back to full replication within the dead timeout plus a bound, with no one's help.
    wait_until(
        Duration::from_millis(DEAD_MS) + Duration::from_secs(60),
        "fsck HEALTHY after re-replication",
        || fsck(&c, "/").0 == 0,
    );
    let took = killed_at.elapsed();
    eprintln!(
        "re-replicated {} files in {took:?} after the kill",
        files.len()
    );
    assert!(
        took >= Duration::from_millis(DEAD_MS),
        "nothing is repaired before the dead timeout"
    );
    let (_, v) = fsck(&c, "/");
    assert_eq!(v["status"], "HEALTHY");
    assert_eq!(v["dead_servers"].as_array().unwrap().len(), 1, "{v}");
    let plain = c.ctl(&["admin", "fsck"]).ok();
    assert_eq!(plain.trim_end().lines().last(), Some("HEALTHY"));

    for (p, d) in &files {
        for reps in replicas_of(&c, p) {
            assert_eq!(reps.len(), 2, "{p}: {reps:?}");
            assert!(
                reps.iter().all(|r| !gone.contains(r)),
                "{p}: {reps:?} names the dead server"
            );
        }
        assert_eq!(&c.get_data(&c.auth, p), d, "{p} reads back right");
    }

    // The server comes back: its replicas were replaced, so they are surplus and removed; no
    // replica is counted twice.
    c.start("chunk-4");
    wait_until(
        Duration::from_secs(60),
        "surplus copies removed from chunk-4",
        || c.chunk_files("chunk-4").is_empty(),
    );
    assert_eq!(fsck(&c, "/").0, 0);
    for (p, _) in files.iter().step_by(7) {
        assert!(replicas_of(&c, p).iter().all(|r| r.len() == 2), "{p}");
    }
}

#[test]
fn with_two_servers_lost_chunks_with_one_replica_left_go_first() {
    // Long enough to see the damage (servers count as down after 4 s) before repair starts.
    const DEAD_MS: u64 = 9000;
    let dead = format!("--dead-timeout-ms={DEAD_MS}");
    // One copy at a time, 4 chunks a second: the order is visible from outside.
    let c = Cluster::up_files(
        3,
        5,
        &[
            "--chunk-size=65536",
            &dead,
            "--repair-concurrency=1",
            "--repair-rate=262144",
        ],
    );
    // Five-chunk files: one allocation spreads its chunks over every server, so any two
    // servers share some chunks and not others.
    let files: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| (format!("/r3/f{i}"), bytes(5 * CHUNK, 1000 + i)))
        .collect();
    for (p, d) in &files {
        put_bytes(&c, p, d, &["--replication", "3"]);
    }
    let first = replicas_of(&c, "/r3/f0")[0].clone();
    let victims = [first[0], first[1]];
    let mut one_left = BTreeSet::new();
    let mut two_left = BTreeSet::new();
    for (p, _) in &files {
        let s = c.ctl(&["--json", "stat", p]).json();
        for ch in s["chunks"].as_array().unwrap() {
            let id = ch["id"].as_str().unwrap().to_string();
            let hit = ch["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| victims.contains(&r.as_u64().unwrap()))
                .count();
            match hit {
                2 => drop(one_left.insert(id)),
                1 => drop(two_left.insert(id)),
                _ => {}
            }
        }
    }
    // Chunk server id -> local node name, through their addresses.
    let addr_of: BTreeMap<u64, String> = c.status()["chunk_servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_u64().unwrap(),
                s["addr"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let local = c.local(&["status", "--json"]).ok();
    for v in victims {
        let name = local
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|n| n["addr"].as_str() == addr_of.get(&v).map(String::as_str))
            .map(|n| n["name"].as_str().unwrap().to_string())
            .expect("local node of a chunk server");
        c.kill(&name);
    }
    wait_until(
        Duration::from_secs(10),
        "fsck sees both servers gone",
        || {
            let (_, v) = fsck(&c, "/r3");
            v["under_replicated_chunks"].as_u64() == Some((one_left.len() + two_left.len()) as u64)
        },
    );
    assert!(!two_left.is_empty(), "some chunks lost only one replica");
    // Until every chunk that had one replica left has two again, no chunk that still had two
    // is brought to three.
    let deadline = Instant::now() + Duration::from_millis(DEAD_MS) + Duration::from_secs(90);
    loop {
        let (code, v) = fsck(&c, "/r3");
        if code == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "not repaired in time: {v}");
        let mut live: BTreeMap<String, u64> = BTreeMap::new();
        for f in v["problems"].as_array().unwrap() {
            for ch in f["chunks"].as_array().unwrap() {
                live.insert(
                    ch["chunk_id"].as_str().unwrap().into(),
                    ch["live"].as_u64().unwrap(),
                );
            }
        }
        let still_one = one_left.iter().any(|id| live.get(id) == Some(&1));
        let two_done = two_left.iter().filter(|id| !live.contains_key(*id)).count();
        assert!(
            !(still_one && two_done > 0),
            "a chunk with two replicas left was repaired while one with a single replica waited: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for (p, d) in &files {
        assert!(replicas_of(&c, p).iter().all(|r| r.len() == 3), "{p}");
        assert_eq!(&c.get_data(&c.auth, p), d);
    }
}

#[test]
fn replication_command_raises_and_lowers_the_factor() {
    let c = Cluster::up_files(3, 4, &["--chunk-size=65536", "--dead-timeout-ms=2000"]);
    let data = bytes(3 * CHUNK + 5, 7);
    put_bytes(&c, "/rep/f", &data, &[]);
    put_bytes(&c, "/rep/g", &data, &[]);
    let out = c
        .ctl(&["--timeout", "60", "replication", "/rep/f", "4", "-w"])
        .ok();
    assert!(out.contains("replication 4 reached"), "{out}");
    for r in replicas_of(&c, "/rep/f") {
        assert_eq!(r.len(), 4);
    }
    assert_eq!(
        c.ctl(&["--json", "stat", "/rep/f"]).json()["replication"],
        4
    );
    // A directory: every file under it.
    c.ctl(&["--timeout", "60", "replication", "/rep", "1", "-w"])
        .ok();
    for f in ["/rep/f", "/rep/g"] {
        for r in replicas_of(&c, f) {
            assert_eq!(r.len(), 1, "{f}");
        }
        assert_eq!(c.get_data(&c.auth, f), data);
    }
    assert_eq!(fsck(&c, "/").0, 0);
    // Bad values and other users' files are refused with one line.
    c.ctl(&["replication", "/rep/f", "0"])
        .fails_with("replication must be");
    c.ctl(&["replication", "/nope", "2"])
        .fails_with("no such file");
    let bob = c.add_user("bob");
    c.ctl_as(&bob, &["replication", "/rep/f", "2"])
        .fails_with("permission denied");
}

#[test]
fn orphans_of_a_killed_put_are_removed_after_the_grace_period_and_nothing_else() {
    let c = Cluster::up_files(
        3,
        2,
        &[
            "--chunk-size=65536",
            "--repair-grace-ms=500",
            "--gc-grace-ms=5000",
            // A write's chunks stay committable for token lifetime + commit grace, which
            // must stay below the orphan grace.
            "--token-ttl-secs=2",
            "--commit-grace=2s",
        ],
    );
    let kept = [
        ("/gc/a", bytes(3 * CHUNK + 1, 1)),
        ("/gc/b", bytes(CHUNK, 2)),
    ];
    for (p, d) in &kept {
        put_bytes(&c, p, d, &[]);
    }
    let committed = 2 * (4 + 1);
    assert_eq!(c.all_chunk_files(), committed);
    c.kill_put_midway("/gc/partial", &bytes(6 * CHUNK, 3), || {
        c.all_chunk_files() >= committed + 4
    });
    let orphans = c.all_chunk_files() - committed;
    // Chunk servers send their full chunk report when they start.
    for s in ["chunk-1", "chunk-2"] {
        c.kill(s);
        c.start(s);
    }
    let gc = |apply: bool| {
        let mut a = vec!["--json", "admin", "gc"];
        if apply {
            a.push("--apply");
        }
        c.ctl(&a).json()
    };
    // A leader knows orphans only from reports it received itself (a new leader waits for
    // the next report, sent every 30 s): allow for an election on a loaded machine.
    let patience = Duration::from_secs(100);
    // Count again while waiting: an upload that was complete when the client died may still
    // land after the first count.
    let mut orphans = orphans;
    wait_until(patience, "gc lists the orphans", || {
        orphans = c.all_chunk_files() - committed;
        gc(false)["orphans"].as_array().map(Vec::len) == Some(orphans)
    });
    // Within the grace period nothing is removed, even with --apply.
    let v = gc(true);
    assert_eq!(v["removed"], 0, "{v}");
    assert!(v["orphans"]
        .as_array()
        .unwrap()
        .iter()
        .all(|o| o["due"] == false));
    let text = c.ctl(&["admin", "gc"]).ok();
    assert!(text.contains("remove them with --apply"), "{text}");
    assert_eq!(c.all_chunk_files(), committed + orphans);

    let mut removed = 0;
    wait_until(patience, "orphans past the grace period removed", || {
        let v = gc(true);
        removed += v["removed"].as_u64().unwrap_or(0) as usize;
        removed >= orphans
    });
    assert_eq!(removed, orphans);
    wait_until(
        Duration::from_secs(30),
        "orphan chunk files removed",
        || c.all_chunk_files() == committed,
    );
    for (p, d) in &kept {
        assert_eq!(&c.get_data(&c.auth, p), d);
    }
    assert_eq!(fsck(&c, "/").0, 0);
}

/// The chunk server id of a local node ("chunk-1"), through its address.
fn server_id(c: &Cluster, name: &str) -> u64 {
    let local = c.local(&["status", "--json"]).ok();
    let addr = local
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|n| n["name"] == name)
        .map(|n| n["addr"].as_str().unwrap().to_string())
        .expect("local node");
    c.status()["chunk_servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["addr"].as_str() == Some(addr.as_str()))
        .map(|s| s["id"].as_u64().unwrap())
        .expect("chunk server id")
}

fn chunk_path(c: &Cluster, server: &str, backup: bool, id: &str) -> std::path::PathBuf {
    let mut p = c.path().join(server);
    if backup {
        p = p.join("backups");
    }
    p.join("chunks").join(&id[..2]).join(id)
}

#[test]
fn the_scrubber_heals_damaged_chunk_files_with_no_client_involved() {
    let c = Cluster::up_with(
        3,
        3,
        &[
            "--chunk-size=65536",
            "--dead-timeout-ms=3000",
            "--repair-grace-ms=500",
        ],
        &["--scrub-every-secs=0.3", "--pack-max=0"],
    );
    let files: Vec<(String, Vec<u8>)> = (0..12)
        .map(|i| {
            (
                format!("/scrub/f{i}"),
                bytes(CHUNK + 100 * i, 50 + i as u64),
            )
        })
        .collect();
    for (p, d) in &files {
        put_bytes(&c, p, d, &[]);
    }
    // The chunk server holding the most chunks, and its chunks with their file.
    let mut best: (String, u64, Vec<(String, String)>) = (String::new(), 0, Vec::new());
    for name in ["chunk-1", "chunk-2", "chunk-3"] {
        let id = server_id(&c, name);
        let mut held = Vec::new();
        for (p, _) in &files {
            let s = c.ctl(&["--json", "stat", p]).json();
            for ch in s["chunks"].as_array().unwrap() {
                if ch["replicas"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r.as_u64() == Some(id))
                {
                    held.push((ch["id"].as_str().unwrap().to_string(), p.clone()));
                }
            }
        }
        if held.len() > best.2.len() {
            best = (name.to_string(), id, held);
        }
    }
    let (name, victim, on_victim) = best;
    let name = name.as_str();
    assert!(on_victim.len() >= 4, "{name} holds {on_victim:?}");
    let originals: Vec<Vec<u8>> = on_victim
        .iter()
        .map(|(id, _)| std::fs::read(chunk_path(&c, name, false, id)).unwrap())
        .collect();
    // Flipped bytes, a truncated file, a deleted file: healed from the local backup.
    let p0 = chunk_path(&c, name, false, &on_victim[0].0);
    let mut b = originals[0].clone();
    b[10] ^= 0xff;
    b[CHUNK / 2] ^= 0x01;
    std::fs::write(&p0, &b).unwrap();
    let p1 = chunk_path(&c, name, false, &on_victim[1].0);
    std::fs::write(&p1, &originals[1][..originals[1].len() / 3]).unwrap();
    let p2 = chunk_path(&c, name, false, &on_victim[2].0);
    std::fs::remove_file(&p2).unwrap();
    // Both local copies ruined: the chunk is copied back from its other replica.
    let (lost, lost_file) = on_victim[3].clone();
    for backup in [false, true] {
        let p = chunk_path(&c, name, backup, &lost);
        let mut b = std::fs::read(&p).unwrap();
        b[100] ^= 0x55;
        std::fs::write(&p, &b).unwrap();
    }
    wait_until(Duration::from_secs(30), "local copies healed", || {
        [&p0, &p1, &p2]
            .iter()
            .zip(&originals)
            .all(|(p, o)| std::fs::read(p).ok().as_ref() == Some(o))
    });
    wait_until(Duration::from_secs(60), "lost replica replaced", || {
        let reps = replicas_of(&c, &lost_file);
        let s = c.ctl(&["--json", "stat", &lost_file]).json();
        let idx = s["chunks"]
            .as_array()
            .unwrap()
            .iter()
            .position(|ch| ch["id"] == lost.as_str())
            .unwrap();
        reps[idx].len() == 2 && !reps[idx].contains(&victim)
    });
    wait_until(Duration::from_secs(30), "fsck HEALTHY", || {
        fsck(&c, "/").0 == 0
    });
    for (p, d) in &files {
        assert_eq!(&c.get_data(&c.auth, p), d, "{p}");
    }
}

#[test]
fn balance_gives_a_new_chunk_server_its_share() {
    let c = Cluster::up_files(3, 3, &["--chunk-size=65536", "--repair-grace-ms=500"]);
    // chunk-3 is away while the files are written, then joins empty.
    c.kill("chunk-3");
    wait_until(Duration::from_secs(10), "chunk-3 seen down", || {
        down_servers(&c).len() == 1
    });
    let files: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| (format!("/bal/f{i}"), bytes(4 * CHUNK, 70 + i)))
        .collect();
    for (p, d) in &files {
        put_bytes(&c, p, d, &[]);
    }
    assert_eq!(c.chunk_files("chunk-3").len(), 0);
    let before = c.all_chunk_files();
    assert_eq!(before, 8 * 4 * 2);
    c.start("chunk-3");
    let new_id = server_id(&c, "chunk-3");
    // Used bytes travel in heartbeats: wait until the plan sees the full servers.
    let mut plan = Value::Null;
    wait_until(Duration::from_secs(20), "a balance plan", || {
        plan = c.ctl(&["--json", "admin", "balance"]).json();
        plan["moves"].as_array().map(Vec::len) >= Some(8)
    });
    let moves = plan["moves"].as_array().unwrap();
    assert!(
        moves
            .iter()
            .all(|m| m["to"] == new_id && m["done"] == false),
        "{plan}"
    );
    assert_eq!(c.chunk_files("chunk-3").len(), 0, "planning moves nothing");
    let text = c.ctl(&["admin", "balance"]).ok();
    assert!(text.contains("run them with --apply"), "{text}");

    let done = c.ctl(&["--json", "admin", "balance", "--apply"]).json();
    let n = done["moved"].as_u64().unwrap() as usize;
    assert!(n >= 8, "{done}");
    assert_eq!(n, done["moves"].as_array().unwrap().len(), "{done}");
    // Copied to chunk-3, then deleted from the old servers.
    wait_until(Duration::from_secs(30), "moved replicas deleted", || {
        c.chunk_files("chunk-3").len() == n && c.all_chunk_files() == before
    });
    assert_eq!(fsck(&c, "/").0, 0);
    for (p, d) in &files {
        assert!(replicas_of(&c, p).iter().all(|r| r.len() == 2), "{p}");
        assert_eq!(&c.get_data(&c.auth, p), d);
    }
}

/// Issue 26, bug 2: a reader that cannot reach a chunk server reads the chunk from another
/// replica and reports nothing: unreachable is not corrupt (that is for the liveness rules),
/// so a restart of a chunk server does not start re-replication.
#[test]
fn a_killed_chunk_server_is_not_reported_corrupt_by_a_reader() {
    let c = Cluster::up_files(1, 3, &["--chunk-size=65536"]);
    let data = bytes(6 * CHUNK + 5, 26);
    put_bytes(&c, "/r3", &data, &["--replication", "3"]);
    // Readers try replicas in this order while every server is live: kill the first of the
    // first chunk, so the read meets the dead server.
    let first = replicas_of(&c, "/r3")[0][0];
    let name = (1..=3)
        .map(|i| format!("chunk-{i}"))
        .find(|n| server_id(&c, n) == first)
        .expect("the first replica's server");
    c.kill(&name);
    assert_eq!(c.get_data(&c.auth, "/r3"), data);
    let reports = c
        .metrics_text("meta-1")
        .lines()
        .find(|l| l.starts_with("dfs_bad_replica_reports_total "))
        .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok());
    assert_eq!(
        reports,
        Some(0.0),
        "a replica on a server that is down is not a bad replica"
    );
    let (_, v) = fsck(&c, "/");
    assert_eq!(v["corrupt_replicas"], 0, "{v}");
}

/// A metric's value on `node` (first sample whose line starts with `name `).
fn metric(c: &Cluster, node: &str, name: &str) -> Option<f64> {
    c.metrics_text(node)
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok())
}

#[test]
fn inventories_sent_in_pages_are_assembled_whole_and_orphans_found_in_them() {
    // Pages of 3 ids: each server's 7+ chunks take at least three heartbeats to list.
    let c = Cluster::up_with(
        1,
        2,
        &[
            "--chunk-size=65536",
            "--repair-grace-ms=500",
            "--token-ttl-secs=2",
            "--commit-grace=2s",
        ],
        &["--pack-max=0", "--heartbeat-ms=100", "--inventory-page=3"],
    );
    let data = bytes(7 * CHUNK, 7);
    put_bytes(&c, "/inv/f", &data, &[]);
    let committed = 2 * 7;
    assert_eq!(c.all_chunk_files(), committed);
    c.kill_put_midway("/inv/partial", &bytes(6 * CHUNK, 8), || {
        c.all_chunk_files() >= committed + 4
    });
    let gc = || c.ctl(&["--json", "admin", "gc"]).json();
    let patience = Duration::from_secs(60);
    // Every chunk on disk is in the inventories the metadata node assembled, and exactly the
    // chunks of no file are orphans (an upload complete when the client died may still land:
    // count again while waiting).
    let mut last = Value::Null;
    wait_until(patience, "the paged inventories hold every chunk", || {
        let on_disk = c.all_chunk_files();
        last = gc();
        metric(&c, "meta-1", "dfs_inventory_chunks") == Some(on_disk as f64)
            && last["orphans"].as_array().map(Vec::len) == Some(on_disk - committed)
            && last["unreported"].as_array().is_some_and(|u| u.is_empty())
    });
    let orphans = last["orphans"].as_array().unwrap();
    assert!(orphans.len() >= 4, "{last}");
    // The listings really come in pages: one is seen being assembled (each takes three
    // heartbeats of the three-second cycle).
    wait_until(patience, "a listing being assembled from pages", || {
        metric(&c, "meta-1", "dfs_inventories_assembling").is_some_and(|n| n >= 1.0)
    });
    // Listings keep coming (every 3 s here) and each replaces the last only when whole: the
    // count never drops to a part of a listing (watched over more than one cycle).
    let on_disk = c.all_chunk_files() as f64;
    for _ in 0..40 {
        let held = metric(&c, "meta-1", "dfs_inventory_chunks").unwrap();
        assert_eq!(held, on_disk, "inventory chunks held");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(c.get_data(&c.auth, "/inv/f"), data);
}
