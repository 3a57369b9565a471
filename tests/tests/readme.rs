//! The README's first commands work as written (issue 16): start a local cluster the way
//! `scripts/local-up` does after its build (`dfsctl local up` in the current directory), then
//! run the first `sh` block of "Using the local cluster" verbatim in bash, with no dfsctl on
//! `PATH` beforehand, so `source .dfs/env` must put it there. What must stay true: the block is
//! taken from README.md unchanged, so the README cannot drift from the program.
use dfs_tests::bin;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The first ```sh block after `heading` in the README.
fn readme_block(heading: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let text = std::fs::read_to_string(&path).expect("README.md");
    let after = &text[text.find(heading).expect("README heading") + heading.len()..];
    let start = after.find("```sh\n").expect("sh block") + "```sh\n".len();
    let len = after[start..].find("```").expect("end of sh block");
    after[start..start + len].to_string()
}

/// A `PATH` without any directory holding a `dfsctl`.
fn path_without_dfsctl() -> String {
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .filter(|d| !d.join("dfsctl").exists())
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// Stops the cluster in `dir/.dfs` however the test ends.
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = Command::new(bin("dfsctl"))
            .args(["local", "down", "--dir"])
            .arg(self.0.join(".dfs"))
            .output();
    }
}

fn clean<'a>(cmd: &'a mut Command, dir: &Path) -> &'a mut Command {
    cmd.current_dir(dir)
        .env_remove("DFS_META")
        .env_remove("DFS_AUTH_FILE")
        .env_remove("DFS_LOCAL_DIR")
        .env_remove("DFS_BIN_DIR")
        .env("PATH", path_without_dfsctl())
}

#[test]
fn readme_first_commands_work_as_written() {
    let block = readme_block("## Using the local cluster");
    let dir = tempfile::Builder::new()
        .prefix("dfs-readme-")
        .tempdir()
        .expect("temp dir");
    let _down = Down(dir.path().to_path_buf());

    // What `scripts/local-up` runs after `cargo build`.
    let up = clean(&mut Command::new(bin("dfsctl")), dir.path())
        .args(["local", "up"])
        .output()
        .expect("run dfsctl local up");
    assert!(
        up.status.success(),
        "local up failed: {}",
        String::from_utf8_lossy(&up.stderr)
    );

    let out = clean(&mut Command::new("bash"), dir.path())
        .args(["-euo", "pipefail", "-c", &block])
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the README block failed ({}):\n{block}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    assert!(stdout.contains("hello, dfs"), "cat output: {stdout}");
    assert_eq!(
        std::fs::read(dir.path().join("copy.txt")).expect("copy.txt"),
        std::fs::read(dir.path().join("notes.txt")).expect("notes.txt")
    );
    assert!(dir.path().join("saved-files.json").exists());
    // Issue 26: `get REMOTE DIR/` keeps the name; `local status` from another directory
    // (through DFS_LOCAL_DIR from .dfs/env) shows the cluster ids beside the local names.
    assert_eq!(
        std::fs::read(dir.path().join("saved/notes.txt")).expect("saved/notes.txt"),
        std::fs::read(dir.path().join("notes.txt")).expect("notes.txt")
    );
    assert!(stdout.contains("meta-1 (id 1)"), "local status: {stdout}");
    // Issue 26, bug 3: `--out alice.auth` (a bare name, as written above) works and is 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("alice.auth"))
        .expect("alice.auth")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "alice.auth mode {mode:o}");

    // The "Trees" and "Completions and man pages" blocks, verbatim too, on the same cluster
    // started again (the block above ends with `local down`), after a `./photos` to send and
    // the completion folder the block writes into.
    let trees = readme_block("### Trees");
    let completions = readme_block("### Completions and man pages");
    let script = format!(
        "source .dfs/env\ndfsctl local up > /dev/null\nmkdir -p photos/sub && echo a > photos/a.jpg && echo b > photos/sub/b.jpg\n\
         {trees}\nmkdir -p ~/.local/share/bash-completion/completions\n{completions}"
    );
    let out = clean(&mut Command::new("bash"), dir.path())
        .env("HOME", dir.path())
        .args(["-euo", "pipefail", "-c", &script])
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "the README's tree or completion block failed ({}):\n{script}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["a.jpg", "sub/b.jpg"] {
        assert_eq!(
            std::fs::read(dir.path().join("photos-copy").join(f)).expect("copied back"),
            std::fs::read(dir.path().join("photos").join(f)).unwrap()
        );
    }
    let home = dir.path().join(".local/share");
    let completion = home.join("bash-completion/completions/dfsctl");
    assert!(
        std::fs::metadata(&completion)
            .expect("completion file")
            .len()
            > 0
    );
    assert!(home.join("man/man1/dfsctl.1").exists(), "man pages written");
}
