//! powerfs (issue 21): the file system chaos's power cuts run the nodes on. Mounted in a mount
//! namespace of the test's own (`unshare -m`): what was fsynced survives `powerfs cut`, what
//! was only written is gone, and metadata (creates, renames, directories) stays; a torn cut
//! keeps whole sectors of the first half; a failing disk refuses what it cannot store and
//! works again once healed.
use dfs_tests::bin;
use std::process::{Command, Output};

/// Run `script` in a mount namespace of its own, after `MOUNT` (powerfs served on $W/mnt).
fn run(work: &std::path::Path, script: &str) -> Output {
    Command::new("unshare")
        .args(["-m", "--propagation", "private", "bash", "-c"])
        .arg(format!("{MOUNT}{script}"))
        .env("P", bin("powerfs"))
        .env("W", work)
        .output()
        .unwrap()
}

fn stdout_of(work: &std::path::Path, out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "script failed: {stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(work.join("powerfs.log")).unwrap_or_default()
    );
    stdout
}

const MOUNT: &str = r#"
set -eu
"$P" serve --backing "$W/back" --mountpoint "$W/mnt" --control "$W/ctl.sock" 2>"$W/powerfs.log" &
for i in $(seq 100); do
  if [ -S "$W/ctl.sock" ] && mountpoint -q "$W/mnt"; then break; fi
  sleep 0.05
done
mountpoint -q "$W/mnt"
M="$W/mnt"
"#;

const CUT: &str = r#"
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
    let stdout = stdout_of(work.path(), &run(work.path(), CUT));
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

const TORN: &str = r#"
head -c 3000 /dev/zero | tr '\0' a > "$M/t"
"$P" cut --torn --control "$W/ctl.sock"
echo "torn: size=$(stat -c %s "$M/t") as=$(tr -cd a < "$M/t" | wc -c)"
kill %1; wait
"#;

#[test]
fn a_torn_cut_leaves_whole_sectors_of_the_first_half() {
    let work = tempfile::tempdir().unwrap();
    let stdout = stdout_of(work.path(), &run(work.path(), TORN));
    // 3000 pending bytes: the first 1500, cut to whole sectors, are 1024.
    assert!(stdout.contains("torn: size=1024 as=1024"), "{stdout}");
}

const FAILING: &str = r#"
printf old > "$M/o"; sync "$M/o"
printf pending > "$M/p"
"$P" fail eio-write --control "$W/ctl.sock"
printf x >> "$M/o" 2>/dev/null && echo "eio: append ok" || echo "eio: append refused"
touch "$M/new" 2>/dev/null && echo "eio: create ok" || echo "eio: create refused"
sync "$M/p" 2>/dev/null && echo "eio: fsync ok" || echo "eio: fsync refused"
"$P" heal --control "$W/ctl.sock"
sync "$M/p" && echo "healed: fsync ok p=[$(cat "$M/p")]"
"$P" fail eio-read --control "$W/ctl.sock"
cat "$M/o" >/dev/null 2>&1 && echo "eio-read: read ok" || echo "eio-read: read refused"
"$P" fail enospc --control "$W/ctl.sock"
printf more >> "$M/o" 2>/dev/null && echo "full: append ok" || echo "full: append refused"
mkdir "$M/d" 2>/dev/null && echo "full: mkdir ok" || echo "full: mkdir refused"
printf OLD | dd of="$M/o" conv=notrunc status=none && echo "full: overwrite ok"
echo "full: avail=$(stat -f -c %a "$M")"
rm "$M/p" && echo "full: unlink ok"
"$P" heal --control "$W/ctl.sock"
printf more >> "$M/o"; mkdir "$M/d"; echo "healed: o=[$(cat "$M/o")] dirs=$(ls -d "$M"/d | wc -l)"
kill %1; wait
"#;

#[test]
fn a_failing_disk_refuses_what_it_cannot_store_and_works_once_healed() {
    let work = tempfile::tempdir().unwrap();
    let stdout = stdout_of(work.path(), &run(work.path(), FAILING));
    for want in [
        "eio: append refused",
        "eio: create refused",
        "eio: fsync refused",
        // The failed fsync dropped the bytes (Linux marks failed pages clean): a later
        // fsync succeeds without them.
        "healed: fsync ok p=[]",
        "eio-read: read refused",
        "full: append refused",
        "full: mkdir refused",
        "full: overwrite ok",
        "full: avail=0",
        "full: unlink ok",
        "healed: o=[OLDmore] dirs=1",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
}
