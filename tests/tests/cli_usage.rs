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
