//! Access keys never leave the auth files: not in any node's log, metrics, `saved-files.json`
//! or Raft store, and not in the error a wrong key gets (issue 19, hardening).
use dfs_tests::*;
use std::path::Path;

/// Every file under `dir` (recursively) whose bytes contain `needle`, auth files aside.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if !p.to_string_lossy().ends_with(".auth") {
                if let Ok(b) = std::fs::read(&p) {
                    if b.windows(needle.len()).any(|w| w == needle) {
                        found.push(p.display().to_string());
                    }
                }
            }
        }
    }
    found
}

fn key_of(auth: &Path) -> String {
    let line = std::fs::read_to_string(auth).unwrap();
    let (_, key) = line.trim().split_once('/').expect("user/key");
    key.to_string()
}

#[test]
fn access_keys_appear_nowhere_but_in_the_auth_files() {
    let c = Cluster::up(3, 2, &[]);
    let alice = c.add_user("alice");
    c.put_data(&alice, "/a.txt", b"alice's", &[]).ok();
    c.ctl_as(&alice, &["ls", "/"]).ok();
    c.ctl(&["admin", "export"]).ok();
    // A wrong key: its error names the user, never a key.
    let wrong = c.path().join("wrong.auth");
    let guessed = "0".repeat(64);
    std::fs::write(&wrong, format!("alice/{guessed}\n")).unwrap();
    let err = c.ctl_as(&wrong, &["ls", "/"]).fails_with("wrong key");
    assert!(!err.contains(&guessed), "{err}");
    // saved-files.json is written by every member; wait until it lists the file.
    wait_until(
        std::time::Duration::from_secs(30),
        "saved-files.json",
        || !files_containing(c.path(), b"/a.txt").is_empty(),
    );
    let metrics: String = ["meta-1", "meta-2", "meta-3", "chunk-1", "chunk-2"]
        .iter()
        .map(|n| c.metrics_text(n))
        .collect();
    for auth in [&c.auth, &alice] {
        let key = key_of(auth);
        assert!(!metrics.contains(&key), "a key in the metrics");
        assert!(!err.contains(&key));
        let found = files_containing(c.path(), key.as_bytes());
        assert!(
            found.is_empty(),
            "the key of {} is in {found:?}",
            auth.display()
        );
    }
}
