//! The trash on a real cluster: `rm` moves to the trash and `trash restore` brings back the
//! same bytes; `rm -r` of a directory of 1,000 files and back; purges by age and by the
//! leader's retention (across a leader change); `--skip-trash`; each user's trash its own;
//! the trash counted as used and kept out of saved-files.json.
use dfs_tests::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

fn json_lines(r: Run) -> Vec<Value> {
    r.ok()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn trash_ls(c: &Cluster, auth: &Path) -> Vec<Value> {
    json_lines(c.ctl_as(auth, &["--json", "trash", "ls"]))
}

#[test]
fn rm_goes_to_the_trash_and_comes_back() {
    let c = Cluster::up(1, 2, &[]);
    let alice = c.add_user("alice");
    let bob = c.add_user("bob");
    let data = bytes(300_000, 7);
    c.ctl_as(&alice, &["mkdir", "/docs"]).ok();
    c.put_data(&alice, "/docs/a.bin", &data, &[]).ok();

    // rm says where it went; the file is gone from its place, its chunks stay.
    let chunks_before = c.all_chunk_files();
    let out = c.ctl_as(&alice, &["rm", "/docs/a.bin"]).ok();
    assert!(
        out.contains("moved /docs/a.bin to the trash: /.trash/alice/"),
        "{out}"
    );
    c.ctl_as(&alice, &["stat", "/docs/a.bin"])
        .fails_with("no such file");
    let items = trash_ls(&c, &alice);
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["original_path"], "/docs/a.bin");
    assert_eq!(items[0]["bytes"], 300_000);
    let trash_path = items[0]["path"].as_str().unwrap().to_string();

    // The trash is counted as used, and says so.
    let du = c.ctl_as(&alice, &["du", "/"]).ok();
    assert!(
        du.contains("of which in the trash: 293.0 KiB in 1 files"),
        "{du}"
    );
    let st = c.ctl(&["--json", "cluster", "status"]).json();
    assert_eq!(
        (st["trash_files"].as_u64(), st["trash_bytes"].as_u64()),
        (Some(1), Some(300_000))
    );
    assert_eq!(st["trash_retention_ms"], 86_400_000);
    // saved-files.json lists live files only.
    let export = c.ctl(&["admin", "export"]).ok();
    assert!(!export.contains("a.bin"), "{export}");

    // Nobody else sees it, restores it, purges it or deletes it.
    assert!(trash_ls(&c, &bob).is_empty());
    c.ctl_as(&bob, &["trash", "restore", &trash_path])
        .fails_with("permission denied");
    c.ctl_as(&bob, &["trash", "restore", "/docs/a.bin"])
        .fails_with("not in your trash");
    assert_eq!(
        c.ctl_as(&bob, &["--json", "trash", "purge"]).json()["removed"],
        0
    );
    c.ctl_as(&bob, &["rm", &trash_path])
        .fails_with("permission denied");
    // Nothing but a delete puts anything there.
    c.ctl_as(&alice, &["mkdir", "-p", "/.trash/alice/x"])
        .fails_with("in the trash");

    // Restore by its original path: the same bytes, the same place.
    c.ctl_as(&alice, &["trash", "restore", "/docs/a.bin"]).ok();
    assert_eq!(c.get_data(&alice, "/docs/a.bin"), data);
    assert!(trash_ls(&c, &alice).is_empty());
    assert!(c.all_chunk_files() >= chunks_before);

    // Restore refuses to replace what is there now, unless -f.
    c.ctl_as(&alice, &["rm", "/docs/a.bin"]).ok();
    c.put_data(&alice, "/docs/a.bin", b"newer", &[]).ok();
    c.ctl_as(&alice, &["trash", "restore", "/docs/a.bin"])
        .fails_with("exists now");
    assert_eq!(c.get_data(&alice, "/docs/a.bin"), b"newer");
    c.ctl_as(&alice, &["trash", "restore", "-f", "/docs/a.bin"])
        .ok();
    assert_eq!(c.get_data(&alice, "/docs/a.bin"), data);

    // A restore recreates the parent that is gone.
    c.ctl_as(&alice, &["rm", "-r", "/docs"]).ok();
    c.ctl_as(&alice, &["trash", "restore", "/docs"]).ok();
    assert_eq!(c.get_data(&alice, "/docs/a.bin"), data);

    // --skip-trash deletes for good.
    c.put_data(&alice, "/gone.bin", b"bye", &[]).ok();
    let r = c
        .ctl_as(&alice, &["--json", "rm", "--skip-trash", "/gone.bin"])
        .json();
    assert_eq!(r["trashed_to"], Value::Null);
    assert!(trash_ls(&c, &alice).is_empty());

    // Purge by age: nothing is an hour old; everything is older than nothing. The chunks go.
    c.ctl_as(&alice, &["rm", "-r", "/docs"]).ok();
    let r = c
        .ctl_as(&alice, &["--json", "trash", "purge", "--older-than", "1h"])
        .json();
    assert_eq!(r["removed"], 0);
    assert_eq!(trash_ls(&c, &alice).len(), 1);
    let r = c.ctl_as(&alice, &["--json", "trash", "purge"]).json();
    assert!(r["removed"].as_u64().unwrap() >= 2, "{r}");
    assert!(trash_ls(&c, &alice).is_empty());
    wait_until(Duration::from_secs(60), "purged chunks deleted", || {
        c.all_chunk_files() < chunks_before
    });
}

#[test]
fn a_directory_of_1000_files_goes_and_comes_back_whole() {
    let c = Cluster::up(1, 2, &[]);
    let src = c.path().join("src");
    for d in 0..10 {
        let dir = src.join(format!("d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            std::fs::write(
                dir.join(format!("f{f}")),
                bytes(100 + d * 100 + f, (d * 1000 + f) as u64),
            )
            .unwrap();
        }
    }
    let s = |p: &Path| p.display().to_string();
    c.ctl(&["put", "-r", &s(&src), "/tree"]).ok();
    let r = c.ctl(&["--json", "rm", "-r", "/tree"]).json();
    assert_eq!(r["removed"], 1011);
    c.ctl(&["ls", "/tree"]).fails_with("no such file");
    let items = trash_ls(&c, &c.auth);
    assert_eq!(items.len(), 1, "one item: the directory");
    assert_eq!(
        (items[0]["files"].as_u64(), items[0]["type"].as_str()),
        (Some(1000), Some("dir"))
    );
    c.ctl(&["trash", "restore", items[0]["path"].as_str().unwrap()])
        .ok();
    let back = c.path().join("back");
    c.ctl(&["get", "-r", "/tree", &s(&back)]).ok();
    assert_same_tree(&src, &back, &[]);
}

#[test]
fn the_leader_purges_expired_entries_across_a_leader_change() {
    let c = Cluster::up(3, 2, &["--trash-retention=3s"]);
    c.put_data(&c.auth, "/old.bin", &bytes(5000, 1), &[]).ok();
    c.ctl(&["rm", "/old.bin"]).ok();
    assert_eq!(trash_ls(&c, &c.auth).len(), 1);
    // The leader that took the delete goes away before the entry expires.
    let first = c.leader();
    c.kill(&format!("meta-{first}"));
    wait_until(Duration::from_secs(60), "the trash purged", || {
        let r = c.ctl(&["--json", "trash", "ls"]);
        r.code == 0 && r.stdout.trim().is_empty()
    });
    let st = c.ctl(&["--json", "cluster", "status"]).json();
    assert_eq!(st["trash_files"], 0);
    let leader = c.leader();
    assert_ne!(leader, first);
    let m = c.metrics_text(&format!("meta-{leader}"));
    assert!(
        m.lines()
            .any(|l| l.starts_with("dfs_trash_purged_total ") && !l.ends_with(" 0")),
        "{m}"
    );
}

#[test]
fn retention_zero_turns_the_trash_off() {
    let c = Cluster::up(1, 1, &["--trash-retention=0", "--replication=1"]);
    c.put_data(&c.auth, "/f", b"x", &[]).ok();
    let r = c.ctl(&["--json", "rm", "/f"]).json();
    assert_eq!(r["trashed_to"], Value::Null);
    assert!(trash_ls(&c, &c.auth).is_empty());
    let out = c.ctl(&["cluster", "status"]).ok();
    assert!(out.contains("trash: off"), "{out}");
}
