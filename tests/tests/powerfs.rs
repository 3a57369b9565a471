//! powerfs (issue 21): the file system chaos's power cuts run the nodes on. Mounted in a mount
//! namespace of the test's own (`unshare -m`): what was fsynced survives `powerfs cut`, what
//! was only written is gone, and metadata (creates, renames, directories) stays.
use dfs_tests::bin;
use std::process::Command;

const SCRIPT: &str = r#"
set -eu
"$P" serve --backing "$W/back" --mountpoint "$W/mnt" --control "$W/ctl.sock" 2>"$W/powerfs.log" &
for i in $(seq 100); do
  if [ -S "$W/ctl.sock" ] && mountpoint -q "$W/mnt"; then break; fi
  sleep 0.05
done
mountpoint -q "$W/mnt"
M="$W/mnt"
printf synced > "$M/a"; sync "$M/a"                       # fsync of the file
dd if=/dev/urandom of="$M/big" bs=64k count=16 conv=fsync status=none
printf unsynced > "$M/c"
printf ' and more' >> "$M/a"
mkdir "$M/d"; printf x > "$M/d/e"; mv "$M/d/e" "$M/d/f"
echo "before: a=[$(cat "$M/a")] c=[$(cat "$M/c")] f=[$(cat "$M/d/f")]"
sum_before=$(sha256sum < "$M/big")
"$P" cut --control "$W/ctl.sock"
echo "after: a=[$(cat "$M/a")] c=[$(cat "$M/c")] f=[$(cat "$M/d/f")] c_size=$(stat -c %s "$M/c")"
[ "$(sha256sum < "$M/big")" = "$sum_before" ] && echo "big: intact"
"$P" pending --control "$W/ctl.sock"
kill %1; wait
"#;

#[test]
fn a_power_cut_keeps_what_was_fsynced_and_loses_the_rest() {
    let work = tempfile::tempdir().unwrap();
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "bash", "-c", SCRIPT])
        .env("P", bin("powerfs"))
        .env("W", work.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "script failed: {stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(work.path().join("powerfs.log")).unwrap_or_default()
    );
    assert!(
        stdout.contains("before: a=[synced and more] c=[unsynced] f=[x]"),
        "{stdout}"
    );
    // 9 unsynced bytes of a, 8 of c, 1 of f.
    assert!(
        stdout.contains("cut: 18 unsynced bytes in 3 files"),
        "{stdout}"
    );
    assert!(
        stdout.contains("after: a=[synced] c=[] f=[] c_size=0"),
        "{stdout}"
    );
    assert!(stdout.contains("big: intact"), "{stdout}");
    assert!(
        stdout.contains("pending: 0 unsynced bytes in 0 files"),
        "{stdout}"
    );
}
