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
