//! Upgrade: a metadata node's data directory written by an earlier version starts on this one.
//!
//! The fixture `tests/fixtures/meta-bf04be6.tar.gz` (how it was made: `tests/fixtures/README.md`)
//! is one metasrv's data directory from commit bf04be6: before inode numbers, modes and ctimes,
//! before TLS, with its snapshot in the old single-file format (`current.snap`) and log entries
//! after it. This version must start on it with `--insecure` and the old cluster secret, convert
//! the snapshot once, number every inode once (saying both in its log), keep every entry, owner,
//! key and time, and then take new metadata and new data as any cluster does.
use dfs_tests::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const FIXTURE: &str = "meta-bf04be6.tar.gz";

/// A process of this test, killed when the test ends (passing or not).
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(dir: &Path, name: &str, bin_name: &str, args: &[String]) -> Node {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .unwrap();
    let child = Command::new(bin(bin_name))
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    Node(child)
}

fn spawn_meta(dir: &Path, addr: &str) -> Node {
    let args = [
        "--id=1".to_string(),
        format!("--listen={addr}"),
        format!("--peers=1={addr}"),
        format!("--metrics={}", free_addr()),
        format!("--data-dir={}", dir.join("meta-1").display()),
        format!(
            "--cluster-secret-file={}",
            dir.join("cluster.secret").display()
        ),
        "--insecure".to_string(),
    ];
    spawn(dir, "meta-1", "metasrv", &args)
}

/// `ls -R /` as JSON lines, by path, once the node answers.
fn tree(c: &Cluster, auth: &Path) -> BTreeMap<String, Value> {
    let mut out = None;
    wait_until(Duration::from_secs(60), "the upgraded node answers", || {
        let r = c.ctl_as(auth, &["--json", "--timeout", "5", "ls", "-R", "/"]);
        if r.code == 0 {
            out = Some(r.stdout);
        }
        r.code == 0
    });
    out.unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["path"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

fn log_count(dir: &Path, needle: &str) -> usize {
    std::fs::read_to_string(dir.join("meta-1.log"))
        .unwrap_or_default()
        .matches(needle)
        .count()
}

#[test]
fn a_metadata_directory_from_an_earlier_version_starts_converted_and_keeps_everything() {
    let tmp = tempfile::Builder::new()
        .prefix("dfs-test-")
        .tempdir()
        .unwrap();
    let dir = tmp.path().to_path_buf();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(FIXTURE);
    let untar = Command::new("tar")
        .arg("xzf")
        .arg(&fixture)
        .arg("-C")
        .arg(&dir)
        .status()
        .unwrap();
    assert!(untar.success(), "tar xzf {}", fixture.display());

    let addr = free_addr();
    let mut meta = spawn_meta(&dir, &addr);
    // Plain TCP (the earlier version had no TLS); the fixture's own admin key.
    let c = Cluster {
        dir: tmp,
        meta: addr.clone(),
        auth: dir.join("admin.auth"),
        ca: None,
    };
    let alice = dir.join("alice.auth");

    // The leader numbers the inodes with one Raft entry it proposes once it leads: wait for it
    // (until it is applied, entries read as the earlier version kept them, numbered 0).
    wait_until(
        Duration::from_secs(30),
        "the log says what was converted",
        || {
            log_count(&dir, "converted the previous version's snapshot file") == 1
                && log_count(&dir, "numbered the inodes of an older namespace") == 1
        },
    );
    let before = tree(&c, &c.auth);
    let paths: Vec<&str> = before.keys().map(String::as_str).collect();
    assert_eq!(
        paths,
        [
            "/alice",
            "/alice/notes.md",
            "/alice/photos",
            "/alice/photos/2021",
            "/projects",
            "/projects/dfs-old",
            "/projects/dfs-old/src",
            "/reports",
            "/reports/q1.txt",
            "/scratch",
        ],
        "every entry the earlier version held, nothing else"
    );
    let q1 = &before["/reports/q1.txt"];
    assert_eq!(q1["owner"], "admin");
    assert_eq!(q1["size"], 1234);
    assert_eq!(q1["created_ms"], 1_614_834_367_123_i64);
    assert_eq!(q1["modified_ms"], 1_614_920_767_654_i64);
    assert_eq!(
        q1["sha256"],
        "0f0e0d0c0b0a09080706050403020100f0e0d0c0b0a090807060504030201000"
    );
    assert_eq!(before["/alice/notes.md"]["owner"], "alice");
    assert_eq!(before["/alice/notes.md"]["size"], 20_000_000);
    assert_eq!(before["/projects/dfs-old/src"]["type"], "dir");
    // Modes and ctimes the earlier version did not keep read as the defaults.
    assert_eq!(before["/scratch"]["mode"], "755");
    assert_eq!(q1["mode"], "644");
    assert_eq!(q1["ctime_ms"], q1["modified_ms"]);

    // Every inode got a number, once: distinct, above the root's.
    let inos: BTreeSet<u64> = before
        .values()
        .map(|v| v["ino"].as_u64().unwrap())
        .collect();
    assert_eq!(inos.len(), before.len(), "distinct inode numbers: {inos:?}");
    assert!(inos.iter().all(|&i| i > 1), "{inos:?}");

    // The earlier version's user keys still work, and ownership still holds.
    let mine = tree(&c, &alice);
    assert_eq!(
        mine.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "/alice",
            "/alice/notes.md",
            "/alice/photos",
            "/alice/photos/2021"
        ]
    );
    c.ctl_as(&alice, &["rm", "/reports/q1.txt"])
        .fails_with("permission denied");

    // New metadata: a new inode takes a number never used; a rename keeps the number.
    c.ctl(&["mkdir", "/after-upgrade"]).ok();
    c.ctl(&["mv", "/projects", "/projects-2021"]).ok();
    let after = tree(&c, &c.auth);
    let new_ino = after["/after-upgrade"]["ino"].as_u64().unwrap();
    assert!(new_ino > *inos.iter().max().unwrap(), "{new_ino}");
    assert_eq!(
        after["/projects-2021/dfs-old/src"]["ino"],
        before["/projects/dfs-old/src"]["ino"]
    );

    // New data, through a chunk server of this version.
    let chunk_addr = free_addr();
    let _chunk = spawn(
        &dir,
        "chunk-1",
        "chunksrv",
        &[
            format!("--listen={chunk_addr}"),
            format!("--data-dir={}", dir.join("chunk-1").display()),
            format!("--meta={addr}"),
            format!("--metrics={}", free_addr()),
            format!(
                "--cluster-secret-file={}",
                dir.join("cluster.secret").display()
            ),
            "--insecure".to_string(),
        ],
    );
    wait_until(Duration::from_secs(60), "the chunk server is live", || {
        c.status()["chunk_servers"]
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s["live"] == true))
    });
    let data = bytes(300_000, 7);
    c.put_data(&alice, "/alice/photos/2021/new.jpg", &data, &[])
        .ok();
    assert_eq!(c.get_data(&alice, "/alice/photos/2021/new.jpg"), data);

    // A restart neither converts nor numbers again, and keeps every number.
    drop(meta);
    meta = spawn_meta(&dir, &addr);
    let restarted = tree(&c, &c.auth);
    for (p, v) in &after {
        assert_eq!(restarted[p]["ino"], v["ino"], "{p}");
    }
    assert_eq!(c.get_data(&alice, "/alice/photos/2021/new.jpg"), data);
    assert_eq!(
        log_count(&dir, "converted the previous version's snapshot file"),
        1
    );
    assert_eq!(
        log_count(&dir, "numbered the inodes of an older namespace"),
        1
    );
    // The original format is still what the node writes and exports.
    let export = c.ctl(&["admin", "export"]).ok();
    let files: Vec<Value> = serde_json::from_str(&export).unwrap();
    let names: BTreeSet<&str> = files.iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert!(names.contains("/reports/q1.txt"), "{names:?}");
    assert!(names.contains("/alice/photos/2021/new.jpg"), "{names:?}");
    drop(meta);
}
