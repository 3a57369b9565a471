//! `dfsctl put -r` / `get -r` (issue 16) and `cp -r` against a real cluster: a tree with nested and empty
//! folders, files of 0 B to 50 MiB, names with spaces and unicode goes up and comes back equal
//! (`diff -r`); symlinks and fifos are reported and skipped; a file that cannot be sent is
//! reported, the rest copied, exit 1; `--update` sends only what is missing or changed; get -r
//! replaces no local file without -f.
use dfs_tests::{assert_same_tree, Cluster, Run};
use serde_json::Value;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn lines(r: &Run) -> Vec<Value> {
    r.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn count(v: &[Value], status: &str) -> usize {
    v.iter().filter(|l| l["status"] == status).count()
}

fn write(p: &Path, len: usize) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    let data: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
    std::fs::write(p, data).unwrap();
}

/// The regular files and folders of the test tree.
fn make_tree(src: &Path) {
    write(&src.join("empty.bin"), 0);
    write(&src.join("one byte"), 1);
    write(&src.join("a/b/c/deep.txt"), 4096);
    write(&src.join("a/b/ünïcødé 文件.dat"), 100_000);
    write(&src.join("big/fifty.bin"), 50 << 20);
    for i in 0..20 {
        write(&src.join(format!("many/f{i:02}")), 1000 + i);
    }
    std::fs::create_dir_all(src.join("empty dir/inner empty")).unwrap();
}

#[test]
fn put_r_get_r_round_trip_and_update() {
    let c = Cluster::up(1, 2, &[]);
    let src = c.path().join("src");
    make_tree(&src);
    let s = |p: &Path| p.display().to_string();

    // Special files: reported and skipped, not failures.
    std::os::unix::fs::symlink("one byte", src.join("link")).unwrap();
    let fifo = std::ffi::CString::new(src.join("fifo").as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);

    let r = c.ctl(&["--json", "put", "-r", &s(&src), "/tree"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let l = lines(&r);
    assert_eq!(count(&l, "copied"), 25, "{}", r.stdout);
    assert_eq!(count(&l, "skipped"), 2, "{}", r.stdout);
    let big = l
        .iter()
        .find(|v| v["path"] == "/tree/big/fifty.bin")
        .unwrap();
    assert_eq!(big["size"], 50 << 20);

    // Without -f an existing remote file is a failure for that file only.
    let r = c.ctl(&["put", "-r", &s(&src), "/tree"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("25 failed"), "{}", r.stderr);

    // Back, and equal (the skipped special files aside).
    std::fs::remove_file(src.join("link")).unwrap();
    std::fs::remove_file(src.join("fifo")).unwrap();
    let back = c.path().join("back");
    c.ctl(&["get", "-r", "/tree", &s(&back)]).ok();
    assert_same_tree(&src, &back, &[]);

    // cp -r inside the cluster gives an equal tree; cp of one file into a directory keeps its
    // name and replaces nothing without -f.
    let r = c.ctl(&["--json", "cp", "-r", "/tree", "/copy"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(count(&lines(&r), "copied"), 25, "{}", r.stdout);
    let copy = c.path().join("copy");
    c.ctl(&["get", "-r", "/copy", &s(&copy)]).ok();
    assert_same_tree(&src, &copy, &[]);
    c.ctl(&["cp", "/tree/a/b/c/deep.txt", "/copy/empty dir"])
        .ok();
    let st = c
        .ctl(&["--json", "stat", "/copy/empty dir/deep.txt"])
        .json();
    assert_eq!(st["size"], 4096);
    c.ctl(&["cp", "/tree/one byte", "/copy/empty.bin"])
        .fails_with("exists");
    c.ctl(&["cp", "/tree", "/x"]).fails_with("cp -r");
    c.ctl(&["cp", "-r", "/tree", "/tree/sub"])
        .fails_with("into itself");

    // get -r replaces nothing without -f; --update skips what is equal; -f replaces.
    write(&back.join("one byte"), 5);
    let r = c.ctl(&["--json", "get", "-r", "/tree", &s(&back)]);
    assert_eq!(r.code, 1);
    assert_eq!(count(&lines(&r), "failed"), 25, "{}", r.stdout);
    assert_eq!(std::fs::read(back.join("one byte")).unwrap().len(), 5);
    let r = c.ctl(&["--json", "get", "-r", "-f", "--update", "/tree", &s(&back)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let l = lines(&r);
    assert_eq!((count(&l, "copied"), count(&l, "unchanged")), (1, 24));
    assert_same_tree(&src, &back, &[]);

    // After a partial copy, --update sends only what is missing or changed.
    write(&src.join("many/f00"), 77);
    write(&src.join("new/one.txt"), 10);
    let r = c.ctl(&[
        "--json",
        "put",
        "-r",
        "--update",
        "--parallel",
        "2",
        &s(&src),
        "/tree",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let l = lines(&r);
    let copied: Vec<&str> = l
        .iter()
        .filter(|v| v["status"] == "copied")
        .map(|v| v["path"].as_str().unwrap())
        .collect();
    assert_eq!(copied.len(), 2, "{copied:?}");
    assert!(copied.contains(&"/tree/many/f00") && copied.contains(&"/tree/new/one.txt"));
    assert_eq!(count(&l, "unchanged"), 24);
}

#[test]
fn one_bad_file_does_not_stop_the_others() {
    let c = Cluster::up(1, 2, &[]);
    let src = c.path().join("src");
    write(&src.join("good/a"), 10);
    write(&src.join("good/b"), 20);
    // A name that is not UTF-8 cannot be a remote path (tests run as root, so an unreadable
    // mode would not stop the read).
    let bad = src.join(std::ffi::OsStr::from_bytes(b"bad-\xff"));
    std::fs::write(bad, b"x").unwrap();
    let r = c.ctl(&["put", "-r", &src.display().to_string(), "/t"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("2 file(s) copied"), "{}", r.stderr);
    assert!(r.stderr.contains("1 failed"), "{}", r.stderr);
    assert!(r.stderr.contains("not UTF-8"), "{}", r.stderr);
    assert_eq!(c.ctl(&["--json", "stat", "/t/good/b"]).json()["size"], 20);

    // -L follows links: a linked folder is copied, a link to an ancestor is a reported loop.
    std::os::unix::fs::symlink("good", src.join("alias")).unwrap();
    std::os::unix::fs::symlink("..", src.join("good/up")).unwrap();
    let r = c.ctl(&[
        "--json",
        "put",
        "-r",
        "-L",
        &src.display().to_string(),
        "/t2",
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let l = lines(&r);
    assert_eq!(count(&l, "copied"), 4, "{}", r.stdout);
    assert_eq!(count(&l, "skipped"), 2, "{}", r.stdout);
    assert!(r.stdout.contains("loop"), "{}", r.stdout);
    assert_eq!(c.ctl(&["--json", "stat", "/t2/alias/b"]).json()["size"], 20);
}

/// A put -r killed midway, then re-run with --update: the files the first run stored are not
/// sent again, and the rest are.
#[test]
fn update_after_a_killed_put_sends_only_the_rest() {
    use std::io::BufRead;
    let c = Cluster::up(1, 2, &[]);
    let src = c.path().join("src");
    let total = 200;
    for i in 0..total {
        write(&src.join(format!("d{}/f{i:03}", i % 7)), 20_000 + i);
    }
    let s = src.display().to_string();
    let mut child = std::process::Command::new(dfs_tests::bin("dfsctl"))
        .args(["--json", "put", "-r", "--parallel", "1", &s, "/t"])
        .env("DFS_META", &c.meta)
        .env("DFS_TLS_CA", c.ca_env())
        .env("DFS_AUTH_FILE", &c.auth)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start put -r");
    // Kill it once it has reported 5 files stored (each reported only after its commit).
    let mut first = Vec::new();
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
        assert_eq!(v["status"], "copied", "{v}");
        first.push(v["path"].as_str().unwrap().to_string());
        if first.len() == 5 {
            child.kill().expect("kill put -r");
            break;
        }
    }
    let _ = child.wait();
    assert_eq!(first.len(), 5);

    let r = c.ctl(&["--json", "put", "-r", "--update", &s, "/t"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let l = lines(&r);
    let (copied, unchanged) = (count(&l, "copied"), count(&l, "unchanged"));
    assert_eq!(copied + unchanged, total);
    // At least the 5 reported; a commit in flight at the kill may have landed too.
    assert!((5..total).contains(&unchanged), "{unchanged} unchanged");
    for v in l.iter().filter(|v| v["status"] == "copied") {
        assert!(!first.contains(&v["path"].as_str().unwrap().to_string()));
    }
    let back = c.path().join("back");
    c.ctl(&["get", "-r", "/t", &back.display().to_string()])
        .ok();
    assert_same_tree(&src, &back, &[]);
}
