//! dfsctl's answers that need no cluster (issue 26): errors under --json and the like.
//! Each test runs the real binary with no metadata node, so the error comes at once.
use dfs_tests::bin;
use std::process::Command;

/// Under --json an error is one JSON object on stderr with `error` and `code` (it was plain text).
#[test]
fn json_errors_are_json() {
    let out = Command::new(bin("dfsctl"))
        .args(["--json", "ls", "/"])
        .env_remove("DFS_META")
        .env_remove("DFS_AUTH_FILE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let v: serde_json::Value = serde_json::from_str(err.trim())
        .unwrap_or_else(|e| panic!("stderr is not one JSON object ({e}): {err}"));
    assert_eq!(v["code"], 1);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("no metadata node given"),
        "{v}"
    );
}

/// Several paths at once (`mkdir -p a b`, `rm a b`) and `rm -rf` of a missing path, as in Unix;
/// one failing path is reported, the others still done, exit 1.
#[test]
fn several_paths_and_rm_rf() {
    let c = dfs_tests::Cluster::up(1, 0, &[]);
    c.ctl(&["mkdir", "-p", "/a/x", "/b"]).ok();
    let ls = c.ctl(&["ls", "-R", "/"]).ok();
    assert!(ls.contains("/a/x/") && ls.contains("/b/"), "{ls}");
    c.ctl(&["rm", "-rf", "/a", "/b", "/never"]).ok();
    let ls = c.ctl(&["ls", "-R", "/"]).ok();
    assert!(!ls.contains("/a") && !ls.contains("/b"), "{ls}");
    c.ctl(&["mkdir", "/c"]).ok();
    let r = c.ctl(&["rm", "/missing", "/c"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.stderr.trim_end().lines().count(), 1, "{}", r.stderr);
    assert!(!c.ctl(&["ls", "/"]).ok().contains("/c"), "/c not removed");
}

/// Completions load in bash and cover every shell asked for; man pages render (issue 16).
#[test]
fn completions_and_man_pages() {
    let run = |args: &[&str]| {
        let out = Command::new(bin("dfsctl"))
            .args(args)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let bash = dir.path().join("dfsctl.bash");
    std::fs::write(&bash, run(&["completions", "bash"])).unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("source '{}' && complete -p dfsctl", bash.display()))
        .output()
        .expect("bash");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("_dfsctl dfsctl"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(run(&["completions", "zsh"]).starts_with("#compdef dfsctl"));
    assert!(run(&["completions", "fish"]).contains("complete -c dfsctl"));
    assert!(run(&["man"]).contains(".TH dfsctl 1"));
    let pages = dir.path().join("man");
    run(&["man", "--dir", pages.to_str().unwrap()]);
    let put = std::fs::read_to_string(pages.join("dfsctl-put.1")).expect("dfsctl-put.1");
    assert!(put.contains("recursive"), "{put}");
}

/// Issue 26, the rest of the habits on one small cluster (1 metadata node, 2 chunk servers):
/// `replication` above the live chunk servers warns (and `-w` fails at once); chunks are
/// numbered from 0 in `stat` as in `fsck`; `stat /` shows no 1970; `get` into a directory and
/// `put` into a remote directory keep the name; `mv` onto a file needs `-f`; `ls a b`,
/// `ls -la`, `du -s`/`-sh`, `rmdir`; a missing local directory is named.
#[test]
fn habits_of_cp_mv_ls_du_rmdir_and_replication() {
    let c = dfs_tests::Cluster::up(1, 2, &[]);
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("one.txt");
    std::fs::write(&local, b"one\n").unwrap();
    let local_s = local.to_str().unwrap();

    // a. replication 3 on 2 live chunk servers warns like put does.
    c.ctl(&["put", local_s, "/one.txt"]).ok();
    let r = c.ctl(&["replication", "/one.txt", "3"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("only 2 live chunk server(s)") && r.stderr.contains("UNDER-REPLICATED"),
        "{}",
        r.stderr
    );
    c.ctl(&["replication", "/one.txt", "3", "-w"])
        .fails_with("cannot be reached");
    // c. fsck and stat both number the chunk 0.
    let fsck = c.ctl(&["admin", "fsck", "/one.txt"]);
    assert!(fsck.stdout.contains("  chunk 0 "), "{}", fsck.stdout);
    let stat = c.ctl(&["stat", "/one.txt"]).ok();
    assert!(stat.contains("(numbered from 0)"), "{stat}");
    assert!(
        stat.lines().any(|l| l.trim_start().starts_with("0 ")),
        "{stat}"
    );
    c.ctl(&["replication", "/one.txt", "2"]).ok();
    // d. The root has no creation time: "-", not 1970.
    let root = c.ctl(&["stat", "/"]).ok();
    assert!(!root.contains("1970"), "{root}");

    // e. get into an existing directory (with or without /) keeps the name.
    let into = dir.path().join("into");
    std::fs::create_dir(&into).unwrap();
    c.ctl(&["get", "/one.txt", into.to_str().unwrap()]).ok();
    assert_eq!(std::fs::read(into.join("one.txt")).unwrap(), b"one\n");
    c.ctl(&["get", "-f", "/one.txt", &format!("{}/", into.display())])
        .ok();
    let missing = dir.path().join("nodir");
    let err = c
        .ctl(&["get", "/one.txt", &format!("{}/x.txt", missing.display())])
        .fails_with(&format!("directory {} does not exist", missing.display()));
    assert!(!err.contains("dfs-part"), "{err}");
    // put into an existing remote directory keeps the name, with or without /.
    c.ctl(&["mkdir", "/d"]).ok();
    c.ctl(&["put", local_s, "/d"]).ok();
    assert!(c.ctl(&["ls", "/d"]).ok().contains("/d/one.txt"));
    let r = c.ctl_env(&c.meta, &c.auth, &["put", "-", "/d"], Some(b"x"));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("give a remote file name"), "{}", r.stderr);

    // f. mv onto an existing file: refused with a hint; -f replaces.
    std::fs::write(&local, b"two\n").unwrap();
    c.ctl(&["put", local_s, "/two.txt"]).ok();
    c.ctl(&["mv", "/two.txt", "/one.txt"])
        .fails_with("use mv -f");
    assert_eq!(c.get_data(&c.auth, "/one.txt"), b"one\n");
    c.ctl(&["mv", "-f", "/two.txt", "/one.txt"]).ok();
    assert_eq!(c.get_data(&c.auth, "/one.txt"), b"two\n");
    c.ctl(&["mv", "/d/one.txt", "/one.txt"])
        .fails_with("/one.txt exists");
    // Into a directory holding that name: the message names the file inside.
    c.ctl(&["mv", "/one.txt", "/d"])
        .fails_with("/d/one.txt exists");

    // g. ls a b, ls -la, du -s / -sh, rmdir.
    let ls = c.ctl(&["ls", "-la", "/d", "/one.txt"]).ok();
    assert!(
        ls.contains("/d/one.txt") && ls.contains(" /one.txt"),
        "{ls}"
    );
    let du = c.ctl(&["du", "-s", "/d", "/one.txt"]).ok();
    assert_eq!(du, "4\t/d\n4\t/one.txt\n");
    let du = c.ctl(&["du", "-sh", "/d"]).ok();
    assert_eq!(du, "4 B\t/d\n");
    c.ctl(&["rmdir", "/d"]).fails_with("directory not empty");
    c.ctl(&["rmdir", "/one.txt"]).fails_with("not a directory");
    c.ctl(&["mkdir", "-p", "/e/f"]).ok();
    c.ctl(&["rmdir", "/e/f", "/e"]).ok();
    let ls = c.ctl(&["ls", "/"]).ok();
    assert!(ls.contains("/d/") && !ls.contains("/e"), "{ls}");

    // h. admin export stays one document under --json (the choice the README states); with
    // --out, --json says what was written.
    let doc = c.ctl(&["--json", "admin", "export"]).ok();
    serde_json::from_str::<serde_json::Value>(&doc).expect("one JSON document");
    let out = dir.path().join("saved.json");
    let v = c
        .ctl(&["--json", "admin", "export", "--out", out.to_str().unwrap()])
        .json();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(
        v["bytes"].as_u64(),
        Some(std::fs::metadata(&out).unwrap().len())
    );
}

/// Issue 26: the local cluster's tools. `.dfs/env` sets DFS_LOCAL_DIR (so `local status` works
/// from any directory), `local status` and `cluster status` show local names beside cluster
/// ids, `--json local kill|start` print one object.
#[test]
fn local_names_ids_and_json() {
    let c = dfs_tests::Cluster::up(1, 2, &[]);
    let env = std::fs::read_to_string(c.path().join("env")).unwrap();
    let canon = std::fs::canonicalize(c.path()).unwrap();
    assert!(
        env.contains(&format!("export DFS_LOCAL_DIR='{}'", canon.display())),
        "{env}"
    );
    // No --dir: found through DFS_LOCAL_DIR (the test's directory has no .dfs).
    let status = c.ctl(&["local", "status"]).ok();
    assert!(status.contains("meta-1 (id 1)"), "{status}");
    assert!(
        status.lines().any(|l| l.starts_with("chunk-2 (id ")),
        "{status}"
    );
    let cluster = c.ctl(&["cluster", "status"]).ok();
    assert!(
        cluster.contains("LOCAL NAME") && cluster.contains("chunk-1") && cluster.contains("meta-1"),
        "{cluster}"
    );
    let parse = |out: String| -> serde_json::Value {
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    };
    let v = parse(c.ctl(&["--json", "local", "kill", "chunk-2"]).ok());
    assert_eq!(
        (v["ok"].as_bool(), v["alive"].as_bool()),
        (Some(true), Some(false)),
        "{v}"
    );
    let v = parse(c.ctl(&["--json", "local", "start", "chunk-2"]).ok());
    assert_eq!(
        (v["node"].as_str(), v["alive"].as_bool()),
        (Some("chunk-2"), Some(true)),
        "{v}"
    );
}

/// A node whose store cannot be opened (here `raft` is a file, not sled's directory) exits
/// while starting: `local start` fails, names its log, and the log says why. (A node binds its
/// ports before it opens its store; that `local start` waits for an HTTP answer, not a bound
/// port, is `answers_http`'s unit test: this store fails too fast to tell the two apart.)
#[test]
fn a_node_whose_store_cannot_be_opened_is_not_reported_started() {
    let c = dfs_tests::Cluster::up(3, 1, &[]);
    c.ctl(&["local", "kill", "meta-3"]).ok();
    let raft = c.path().join("meta-3").join("raft");
    std::fs::remove_dir_all(&raft).unwrap();
    std::fs::write(&raft, b"not a store").unwrap();
    let err = c
        .ctl(&["local", "start", "meta-3"])
        .fails_with("meta-3 exited while starting");
    assert!(err.contains("meta-3/log"), "{err}");
    let log = std::fs::read_to_string(c.path().join("meta-3").join("log")).unwrap();
    assert!(log.contains("cannot open the store"), "{log}");
}

/// Issue 26: `admin health` judges a chunk with no good replica as `fsck` does: fsck says
/// CORRUPT, health says ERR (it said OK or WARN: it only looked when a server was down). The
/// only replica is damaged on disk (both local copies) and a reader reports it bad.
#[test]
fn health_says_err_where_fsck_says_corrupt() {
    let c = dfs_tests::Cluster::up_files(1, 2, &[]);
    let data = dfs_tests::bytes(100_000, 26);
    c.put_data(&c.auth, "/r1", &data, &["--replication", "1"])
        .ok();
    let s = c.ctl(&["--json", "stat", "/r1"]).json();
    let id = s["chunks"][0]["id"].as_str().unwrap().to_string();
    let mut damaged = 0;
    for server in ["chunk-1", "chunk-2"] {
        for sub in ["chunks", "backups/chunks"] {
            let p = c.path().join(server).join(sub).join(&id[..2]).join(&id);
            if p.exists() {
                dfs_tests::flip_byte(&p, 10);
                damaged += 1;
            }
        }
    }
    assert!(damaged > 0, "no file for chunk {id}");
    let r = c.ctl(&["cat", "/r1"]);
    assert_eq!(r.code, 1, "the damaged chunk was read: {}", r.stderr);
    dfs_tests::wait_until(
        std::time::Duration::from_secs(30),
        "fsck says CORRUPT",
        || c.ctl(&["admin", "fsck"]).code == 1,
    );
    let h = c.ctl(&["admin", "health"]);
    assert_eq!(h.code, 2, "{}", h.stdout);
    assert!(
        h.stdout
            .contains("ERR  1 chunk(s) of 1 file(s) have no good replica")
            && h.stdout.contains("/r1"),
        "{}",
        h.stdout
    );
}

/// Issue 26: "no credentials" names the default auth file it looked for.
#[test]
fn no_credentials_names_the_default_path() {
    let c = dfs_tests::Cluster::up(1, 0, &[]);
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(bin("dfsctl"))
        .args(["ls", "/"])
        .env("DFS_META", &c.meta)
        .env("DFS_TLS_CA", c.ca_env())
        .env("DFS_AUTH_FILE", "")
        .env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.path().join("cfg"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let default = home.path().join("cfg").join("dfs").join("auth.txt");
    assert!(
        err.contains("no credentials") && err.contains(&default.display().to_string()),
        "{err}"
    );
}
