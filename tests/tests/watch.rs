//! `dfsctl watch` (issue 17, part 2) against a real cluster: a tree of 2,000 files created,
//! modified, renamed and deleted while the watcher runs ends equal remotely (sha256 of every
//! file, then `get -r` + `diff -r`); SIGKILL + restart uploads none of the files already up;
//! a file appended to for 10 s is uploaded once, whole; an editor-style save is one version;
//! `--delete` deletes and `--max-delete` stops a mass delete; removing the local root stops
//! the watcher with an error and deletes nothing; bad input is said and the rest goes on.
//! Every wait is for a condition (remote listing or the watcher's JSON lines), never a sleep.
use dfs_tests::{wait_until, Cluster};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(180);

/// A running `dfsctl --json watch`, its JSON lines collected as they come.
struct Watch {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
    /// The stdout and stderr readers: joined once the process is gone, so its last lines
    /// are all read.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Watch {
    fn start(c: &Cluster, local: &Path, remote: &str, extra: &[&str]) -> Watch {
        let l = local.display().to_string();
        let mut args = vec!["--json", "watch", &l, remote];
        args.extend_from_slice(extra);
        let mut child = c.ctl_spawn(&args);
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().unwrap();
        let l2 = lines.clone();
        let r1 = std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                l2.lock().unwrap().push(v);
            }
        });
        let err = child.stderr.take().unwrap();
        let e2 = stderr.clone();
        let r2 = std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                let mut e = e2.lock().unwrap();
                e.push_str(&line);
                e.push('\n');
            }
        });
        Watch {
            child,
            lines,
            stderr,
            readers: vec![r1, r2],
        }
    }

    fn events(&self, kind: &str) -> Vec<Value> {
        let l = self.lines.lock().unwrap();
        l.iter().filter(|v| v["event"] == kind).cloned().collect()
    }

    fn uploads_of(&self, local_rel: &str) -> usize {
        self.events("upload")
            .iter()
            .filter(|v| v["local"] == local_rel)
            .count()
    }

    fn wait_ready(&self) {
        wait_until(LONG, "the watcher's first reconcile", || {
            !self.events("reconciled").is_empty()
        });
    }

    /// Wait for the process to end by itself; its exit code.
    fn wait_exit(&mut self) -> i32 {
        let mut code = None;
        wait_until(LONG, "the watcher to exit", || {
            code = self
                .child
                .try_wait()
                .unwrap()
                .map(|s| s.code().unwrap_or(-1));
            code.is_some()
        });
        for r in self.readers.drain(..) {
            r.join().unwrap();
        }
        code.unwrap()
    }

    /// Wait until `n` lines of `kind` for `local` (any file when None) have been read.
    fn wait_lines(&self, kind: &str, local: Option<&str>, n: usize) {
        wait_until(LONG, &format!("{n} {kind} lines for {local:?}"), || {
            self.events(kind)
                .iter()
                .filter(|v| local.is_none_or(|l| v["local"] == l))
                .count()
                >= n
        });
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Local regular files under `root` (relative path → sha256), without the watcher's state.
fn local_tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(dir: &Path, rel: &str, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap().map_while(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == ".dfs-watch" {
                continue;
            }
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let Ok(m) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            if m.is_dir() {
                walk(&e.path(), &r, out);
            } else if let Ok(b) = std::fs::read(e.path()) {
                out.insert(r, sha(&b));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, "", &mut out);
    out
}

/// Remote files under `remote` (relative path → sha256).
fn remote_tree(c: &Cluster, remote: &str) -> BTreeMap<String, String> {
    let r = c.ctl(&["--json", "ls", "-R", remote]);
    if r.code != 0 {
        return BTreeMap::new();
    }
    let prefix = format!("{remote}/");
    r.stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "file")
        .map(|v| {
            let p = v["path"].as_str().unwrap();
            (
                p.strip_prefix(&prefix).unwrap_or(p).to_string(),
                v["sha256"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Poll until every remote file equals the local one (sha256) and nothing else is there.
fn wait_equal(c: &Cluster, local: &Path, remote: &str) {
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let l = local_tree(local);
        let r = remote_tree(c, remote);
        if l == r {
            return;
        }
        if std::time::Instant::now() > deadline {
            let differ: Vec<_> = l
                .keys()
                .filter(|k| r.get(*k) != l.get(*k))
                .take(10)
                .collect();
            let extra: Vec<_> = r.keys().filter(|k| !l.contains_key(*k)).take(10).collect();
            panic!("remote never equal to local: differing {differ:?}, only remote {extra:?}");
        }
        // The poll interval (each poll runs `dfsctl ls -R`).
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn write(p: &Path, data: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn tree_created_modified_renamed_deleted_ends_equal() {
    let c = Cluster::up(1, 2, &[]);
    let local = c.path().join("folder");
    std::fs::create_dir_all(&local).unwrap();
    let w = Watch::start(
        &c,
        &local,
        "/backup",
        &[
            "--settle",
            "1s",
            "--delete",
            "--max-delete",
            "5000",
            "--parallel",
            "8",
        ],
    );
    w.wait_ready();
    // 2,000 files in nested folders: 10 × 10 folders of 20 files.
    for i in 0..10 {
        for j in 0..10 {
            for k in 0..20 {
                let p = local.join(format!("d{i}/e{j}/f{k}.txt"));
                write(&p, format!("file {i} {j} {k}\n").repeat(k + 1).as_bytes());
            }
        }
    }
    wait_equal(&c, &local, "/backup");
    // A line is printed just after its upload is visible: wait for the lines too.
    w.wait_lines("upload", None, 2000);
    assert_eq!(w.events("upload").len(), 2000, "{}", w.stderr());
    // Modify, rename files and folders, delete files and a folder, add an empty folder.
    for k in 0..20 {
        write(&local.join(format!("d0/e0/f{k}.txt")), b"changed\n");
    }
    for k in 0..10 {
        std::fs::rename(
            local.join(format!("d1/e1/f{k}.txt")),
            local.join(format!("d1/e1/renamed{k}.txt")),
        )
        .unwrap();
    }
    std::fs::rename(local.join("d2/e2"), local.join("d2/moved")).unwrap();
    std::fs::rename(local.join("d3"), local.join("d3-renamed")).unwrap();
    for k in 0..10 {
        std::fs::remove_file(local.join(format!("d4/e4/f{k}.txt"))).unwrap();
    }
    std::fs::remove_dir_all(local.join("d5/e5")).unwrap();
    wait_equal(&c, &local, "/backup");
    // Renames the debouncer paired went through as dfs renames (no bytes again); one that
    // was not paired is a delete + put, with the same end state.
    w.wait_lines("rename", None, 1);
    w.wait_lines("delete", None, 30);
    let renames = w.events("rename");
    eprintln!(
        "renames paired: {} of 12; uploads after the changes: {}",
        renames.len(),
        w.events("upload").len() - 2000
    );
    assert!(
        !renames.is_empty(),
        "no rename paired: {:?}",
        w.lines.lock().unwrap().len()
    );
    assert!(
        w.events("delete").len() >= 30,
        "{} deletes",
        w.events("delete").len()
    );
    // Contents, byte for byte.
    let back = c.path().join("back");
    c.ctl(&["get", "-r", "/backup", &s(&back)]).ok();
    dfs_tests::assert_same_tree(&local, &back, &[".dfs-watch"]);
}

#[test]
fn sigkill_and_restart_upload_nothing_twice() {
    let c = Cluster::up(1, 2, &[]);
    let local = c.path().join("folder");
    for i in 0..400 {
        write(
            &local.join(format!("a{}/f{i}", i % 7)),
            format!("data {i}").as_bytes(),
        );
    }
    let mut w = Watch::start(&c, &local, "/k", &["--settle", "300ms"]);
    wait_until(LONG, "100 uploads", || w.events("upload").len() >= 100);
    // SIGKILL: no chance to flush or clean up.
    w.child.kill().unwrap();
    w.wait_exit();
    let first: std::collections::BTreeSet<String> = w
        .events("upload")
        .iter()
        .map(|v| v["local"].as_str().unwrap().to_string())
        .collect();
    drop(w);
    let r = c.ctl(&[
        "--json",
        "watch",
        &s(&local),
        "/k",
        "--once",
        "--settle",
        "300ms",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let again: Vec<String> = r
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "upload")
        .map(|v| v["local"].as_str().unwrap().to_string())
        .collect();
    let twice: Vec<_> = again.iter().filter(|p| first.contains(*p)).collect();
    assert!(twice.is_empty(), "uploaded again: {twice:?}");
    assert!(first.len() + again.len() <= 400 && again.len() < 400 - 99);
    assert_eq!(local_tree(&local), remote_tree(&c, "/k"));
    // A third run: everything is unchanged, nothing is sent or even hashed against the remote.
    let r = c.ctl(&["--json", "watch", &s(&local), "/k", "--once"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let sum: Value = r
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == "reconciled")
        .unwrap();
    assert_eq!(sum["uploaded"], 0, "{sum}");
    assert_eq!(sum["unchanged"], 400, "{sum}");
}

#[test]
fn slow_append_is_uploaded_once_whole_and_editor_save_is_one_version() {
    let c = Cluster::up(1, 2, &[]);
    let local = c.path().join("folder");
    write(&local.join("doc.txt"), b"first version\n");
    // Appends come every 100 ms: --settle 3s leaves the writer a wide margin on a busy machine.
    let w = Watch::start(&c, &local, "/s", &["--settle", "3s"]);
    w.wait_ready();
    wait_equal(&c, &local, "/s");
    // Appended every 100 ms for 10 s.
    let mut f = std::fs::File::create(local.join("log.txt")).unwrap();
    for i in 0..100 {
        writeln!(f, "line {i} {}", "x".repeat(100)).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(f);
    // Editor-style save: a temp file written, then renamed over the document.
    write(&local.join(".doc.txt.tmp-edit"), b"second version\n");
    std::fs::rename(local.join(".doc.txt.tmp-edit"), local.join("doc.txt")).unwrap();
    wait_equal(&c, &local, "/s");
    w.wait_lines("upload", Some("doc.txt"), 2);
    w.wait_lines("upload", Some("log.txt"), 1);
    assert_eq!(w.uploads_of("log.txt"), 1, "{}", w.stderr());
    assert_eq!(w.uploads_of("doc.txt"), 2, "{}", w.stderr());
    assert_eq!(w.uploads_of(".doc.txt.tmp-edit"), 0);
    let log = std::fs::read(local.join("log.txt")).unwrap();
    assert!(log.len() > 100 * 100);
    assert_eq!(c.get_data(&c.auth, "/s/log.txt"), log);
}

#[test]
fn delete_propagates_and_max_delete_stops_a_mass_delete() {
    let c = Cluster::up(1, 2, &[]);
    let local = c.path().join("folder");
    for i in 0..20 {
        write(&local.join(format!("f{i:02}")), format!("{i}").as_bytes());
    }
    write(&local.join("sub/x"), b"x");
    let mut w = Watch::start(
        &c,
        &local,
        "/d",
        &["--settle", "300ms", "--delete", "--max-delete", "5"],
    );
    w.wait_ready();
    wait_equal(&c, &local, "/d");
    std::fs::remove_file(local.join("f00")).unwrap();
    std::fs::remove_dir_all(local.join("sub")).unwrap();
    wait_equal(&c, &local, "/d");
    wait_until(LONG, "the emptied remote folder removed", || {
        c.ctl(&["stat", "/d/sub"]).code != 0
    });
    // A mass delete: more than --max-delete at once stops the watcher, deleting nothing.
    for i in 1..11 {
        std::fs::remove_file(local.join(format!("f{i:02}"))).unwrap();
    }
    let code = w.wait_exit();
    assert_eq!(code, 3, "{}", w.stderr());
    let err = w.stderr();
    assert!(err.contains("--max-delete 5"), "{err}");
    assert_eq!(remote_tree(&c, "/d").len(), 19);
    // What the watcher deleted went to the trash, and comes back byte-identical.
    let trash = c.ctl(&["trash", "ls"]).ok();
    assert!(trash.contains("/d/f00\t/.trash/admin/"), "{trash}");
    c.ctl(&["trash", "restore", "/d/f00"]).ok();
    assert_eq!(c.get_data(&c.auth, "/d/f00"), b"0");
    c.ctl(&["trash", "restore", "/d/sub/x"]).ok();
    assert_eq!(c.get_data(&c.auth, "/d/sub/x"), b"x");
}

#[test]
fn removing_or_replacing_the_local_root_stops_with_an_error_and_deletes_nothing() {
    let c = Cluster::up(1, 2, &[]);
    let local = c.path().join("folder");
    for i in 0..10 {
        write(&local.join(format!("a/f{i}")), b"keep me");
    }
    let mut w = Watch::start(&c, &local, "/r", &["--settle", "300ms", "--delete"]);
    w.wait_ready();
    wait_equal(&c, &local, "/r");
    std::fs::remove_dir_all(&local).unwrap();
    let code = w.wait_exit();
    assert_eq!(code, 3, "{}", w.stderr());
    assert!(
        w.stderr().contains("without deleting anything"),
        "{}",
        w.stderr()
    );
    assert_eq!(remote_tree(&c, "/r").len(), 10);
    assert!(w.events("delete").is_empty());
    // The folder moved away and made again (or a file system unmounted from under it): it
    // looks empty, but it is not the folder being watched.
    let local = c.path().join("folder2");
    for i in 0..10 {
        write(&local.join(format!("f{i}")), b"keep me too");
    }
    let mut w = Watch::start(&c, &local, "/r2", &["--settle", "300ms", "--delete"]);
    w.wait_ready();
    wait_equal(&c, &local, "/r2");
    std::fs::rename(&local, c.path().join("folder2.old")).unwrap();
    std::fs::create_dir(&local).unwrap();
    let code = w.wait_exit();
    assert_eq!(code, 3, "{}", w.stderr());
    assert!(
        w.stderr().contains("stopping without deleting anything"),
        "{}",
        w.stderr()
    );
    assert_eq!(remote_tree(&c, "/r2").len(), 10);
}

#[test]
fn bad_input_is_said_and_the_rest_goes_on() {
    let c = Cluster::up(1, 2, &[]);
    // A local folder that does not exist.
    let r = c.ctl(&["watch", "/nonexistent/folder", "/x", "--once"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("/nonexistent/folder"), "{}", r.stderr);
    // A remote directory that belongs to someone else.
    let alice = c.add_user("alice");
    c.ctl(&["mkdir", "/admins"]).ok();
    let local = c.path().join("folder");
    write(&local.join("ok.txt"), b"fine");
    let r = c.ctl_as(&alice, &["watch", &s(&local), "/admins", "--once"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("/admins"), "{}", r.stderr);
    assert!(remote_tree(&c, "/admins").is_empty());
    assert!(
        !local.join(".dfs-watch").exists(),
        "state made for a refused run"
    );
    // A name dfs refuses (a control character): said, the rest uploaded, exit 1 under --once.
    write(&local.join("bad\u{1}name"), b"refused");
    write(&local.join("sub/also ok"), b"fine too");
    write(&local.join("skip.swp"), b"editor swap");
    write(&local.join("build.log"), b"excluded by --exclude");
    write(&local.join("cache/big"), b"excluded folder");
    let r = c.ctl(&[
        "watch",
        &s(&local),
        "/b",
        "--once",
        "--settle",
        "100ms",
        "--exclude",
        "*.log",
        "--exclude",
        "cache",
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.stderr.matches("cannot upload").count(), 1, "{}", r.stderr);
    let remote = remote_tree(&c, "/b");
    assert_eq!(
        remote.keys().collect::<Vec<_>>(),
        ["ok.txt", "sub/also ok"],
        "{}",
        r.stderr
    );
    // A state directory in use by another watcher is refused.
    let state: PathBuf = c.path().join("state");
    let w = Watch::start(&c, &local, "/b", &["--state", &s(&state)]);
    w.wait_ready();
    let r = c.ctl(&["watch", &s(&local), "/b", "--once", "--state", &s(&state)]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("another dfsctl watch"), "{}", r.stderr);
}

#[test]
fn cluster_unreachable_past_timeout_exits_non_zero() {
    let c = Cluster::up(1, 1, &[]);
    let local = c.path().join("folder");
    write(&local.join("a"), b"a");
    let mut w = Watch::start(&c, &local, "/u", &["--settle", "100ms", "--timeout", "2"]);
    w.wait_ready();
    wait_equal(&c, &local, "/u");
    c.kill("meta-1");
    write(&local.join("b"), b"b");
    let code = w.wait_exit();
    assert_eq!(code, 1, "{}", w.stderr());
    assert!(w.stderr().contains("unreachable"), "{}", w.stderr());
}

#[test]
fn systemd_user_unit_verifies() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/dfs-watch@.service");
    let text = std::fs::read_to_string(&unit).expect("unit");
    assert!(text.contains("ExecStart=/usr/local/bin/dfsctl watch"));
    assert!(text.contains("RestartPreventExitStatus=3"));
    // `verify` wants ExecStart to exist: point it at this build's dfsctl.
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("dfs-watch@docs.service");
    let bin = dfs_tests::bin("dfsctl");
    std::fs::write(
        &p,
        text.replace("/usr/local/bin/dfsctl", &bin.display().to_string()),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&p)
        .output()
        .expect("systemd-analyze (Debian: apt-get install systemd)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !text.contains("dfs-watch"),
        "systemd-analyze verify: {text}"
    );
}

#[test]
fn unreadable_file_is_said_and_the_rest_uploaded() {
    use std::os::unix::fs::PermissionsExt;
    let c = Cluster::up(1, 1, &[]);
    // Root reads every file: the watcher runs as nobody, on a folder outside the cluster's
    // private directory.
    let base = tempfile::Builder::new()
        .prefix("dfs-watch-nobody-")
        .tempdir()
        .unwrap();
    let mode = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
    mode(base.path(), 0o755).unwrap();
    let local = base.path().join("folder");
    write(&local.join("ok.txt"), b"readable");
    write(&local.join("secret.txt"), b"not for the watcher");
    mode(&local, 0o777).unwrap();
    mode(&local.join("secret.txt"), 0o000).unwrap();
    let auth = base.path().join("auth");
    std::fs::copy(&c.auth, &auth).unwrap();
    mode(&auth, 0o644).unwrap();
    // The cluster CA too (the cluster's directory is private).
    let ca = base.path().join("ca.pem");
    if let Some(cluster_ca) = &c.ca {
        std::fs::copy(cluster_ca, &ca).unwrap();
        mode(&ca, 0o644).unwrap();
    }
    // SAFETY: geteuid has no preconditions.
    let mut cmd = if unsafe { libc::geteuid() } == 0 {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(dfs_tests::bin("dfsctl"));
        c
    } else {
        std::process::Command::new(dfs_tests::bin("dfsctl"))
    };
    let out = cmd
        .args(["watch", &s(&local), "/n", "--once", "--settle", "100ms"])
        .env("DFS_META", &c.meta)
        .env(
            "DFS_TLS_CA",
            if c.ca.is_some() {
                ca.as_os_str()
            } else {
                "".as_ref()
            },
        )
        .env("DFS_AUTH_FILE", &auth)
        .env("DFS_LOG", "warn")
        .output()
        .expect("setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("secret.txt") && err.contains("retried at the next rescan"),
        "{err}"
    );
    let remote = remote_tree(&c, "/n");
    assert_eq!(remote.keys().collect::<Vec<_>>(), ["ok.txt"], "{err}");
}

#[test]
fn another_remote_directory_starts_a_fresh_manifest() {
    let c = Cluster::up(1, 1, &[]);
    let local = c.path().join("folder");
    write(&local.join("a"), b"a");
    write(&local.join("b"), b"b");
    let once = |remote: &str, extra: &[&str]| {
        let l = s(&local);
        let mut args = vec!["--json", "watch", &l, remote, "--once"];
        args.extend_from_slice(extra);
        let r = c.ctl(&args);
        assert_eq!(r.code, 0, "{}", r.stderr);
        r
    };
    once("/one", &[]);
    // The same folder into another directory: everything goes there too.
    once("/two", &[]);
    assert_eq!(remote_tree(&c, "/two"), local_tree(&local));
    // Back to the first with --delete after a local delete: the manifest was reset for /two,
    // so it knows nothing of what this watcher put in /one; nothing there is deleted (b is
    // hashed and found there already; a stays).
    std::fs::remove_file(local.join("a")).unwrap();
    let r = once("/one", &["--delete"]);
    assert!(!r.stdout.contains("\"delete\""), "{}", r.stdout);
    assert!(r.stdout.contains("\"already_remote\":1"), "{}", r.stdout);
    assert_eq!(remote_tree(&c, "/one").len(), 2);
    assert_eq!(remote_tree(&c, "/two").len(), 2);
}

#[test]
fn rescan_puts_back_what_was_removed_remotely() {
    let c = Cluster::up(1, 1, &[]);
    let local = c.path().join("folder");
    write(&local.join("keep/me"), b"the local folder is the truth");
    let w = Watch::start(&c, &local, "/rs", &["--settle", "200ms", "--rescan", "1s"]);
    w.wait_ready();
    wait_equal(&c, &local, "/rs");
    // Removed behind the watcher's back (no local event): the next rescan sees it.
    c.ctl(&["rm", "-r", "/rs/keep"]).ok();
    wait_equal(&c, &local, "/rs");
    w.wait_lines("upload", Some("keep/me"), 2);
    assert_eq!(w.uploads_of("keep/me"), 2, "{}", w.stderr());
}
