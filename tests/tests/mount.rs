//! `dfsctl mount` against a real local cluster. Each test runs its shell script inside its own
//! mount namespace (`unshare -m --propagation private`), so a mount that dies cannot hang other
//! tests or the host: when the script ends, the namespace and its mounts go with it.
//! The script gets `mnt DIR [REMOTE]` (start a mount, wait until it is live; the pid is in
//! `$MPID`) and `$D` (dfsctl); every mount left running is stopped with SIGTERM on exit.
use dfs_tests::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PRELUDE: &str = r#"
set -euo pipefail
MPIDS=""
cleanup() { for p in $MPIDS; do kill "$p" 2>/dev/null || true; done; for p in $MPIDS; do wait "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
mnt() {
  local dir=$1 remote=${2:-/}
  mkdir -p "$dir"
  "$D" mount "$remote" "$dir" 2>>"$W/mount.log" &
  MPID=$!
  MPIDS="$MPIDS $MPID"
  for _ in $(seq 600); do
    if grep -q " $dir " /proc/self/mountinfo; then return 0; fi
    if ! kill -0 "$MPID" 2>/dev/null; then echo "mount of $dir exited" >&2; cat "$W/mount.log" >&2; return 1; fi
    sleep 0.1
  done
  echo "mount of $dir not live after 60 s" >&2; return 1
}
"#;

fn script_cmd(c: &Cluster, work: &Path, script: &str) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "bash", "-c"])
        .arg(format!("{PRELUDE}\n{script}"))
        .env("D", bin("dfsctl"))
        .env("W", work)
        .env("C", c.path())
        .env("DFS_META", &c.meta)
        .env("DFS_AUTH_FILE", &c.auth)
        .env("DFS_TLS_CA", c.ca_env())
        .env("DFS_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Run `script` in a fresh mount namespace; panic with its output (and the mount log) unless
/// it exits 0. Returns stdout.
fn run_script(c: &Cluster, work: &Path, script: &str) -> String {
    let child = script_cmd(c, work, script).spawn().expect("spawn unshare");
    finish(child, work)
}

fn finish(child: Child, work: &Path) -> String {
    let out = child.wait_with_output().expect("script output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let log = std::fs::read_to_string(work.join("mount.log")).unwrap_or_default();
        panic!(
            "script failed ({}):\nstdout:\n{stdout}\nstderr:\n{}\nmount log:\n{log}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    stdout
}

fn work_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("dfs-mount-")
        .tempdir()
        .expect("temp dir")
}

fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

#[test]
fn cp_rsync_tar_and_dfsctl_see_the_same_files() {
    let c = Cluster::up(3, 3, &["--chunk-size=1048576"]);
    let w = work_dir();
    let src = w.path().join("src");
    for (name, size) in [
        ("empty", 0usize),
        ("one", 1),
        ("a/page", 4096),
        ("a/b/ten", 10 << 20),
        ("a/b/c/hundred", 100 << 20),
    ] {
        write(&src.join(name), &bytes(size, size as u64));
    }
    std::fs::create_dir_all(src.join("a/emptydir")).unwrap();
    // A file put through dfsctl, to be read through the mount.
    c.put_data(&c.auth, "/from-ctl", &bytes(300_000, 7), &[])
        .ok();
    write(&w.path().join("from-ctl"), &bytes(300_000, 7));
    run_script(
        &c,
        w.path(),
        r#"
        M=$W/m
        mnt "$M"
        cp -r "$W/src" "$M/src"
        diff -r "$W/src" "$M/src"
        rsync -a "$W/src/" "$M/rs/"
        rsync -a "$M/rs/" "$W/back/"
        diff -r "$W/src" "$W/back"
        tar -C "$W/src" -cf "$W/t.tar" .
        mkdir "$M/tar"
        tar -C "$M/tar" -xf "$W/t.tar"
        diff -r "$W/src" "$M/tar"
        cmp "$W/from-ctl" "$M/from-ctl"
        df "$M" | tail -1
        "#,
    );
    // Written through the mount, read back through dfsctl.
    assert_eq!(
        c.get_data(&c.auth, "/src/a/b/ten"),
        bytes(10 << 20, 10 << 20)
    );
    assert_eq!(c.get_data(&c.auth, "/tar/one"), bytes(1, 1));
}

/// Reads are ranged (only what is asked, plus read-ahead): slices at odd offsets across chunk
/// boundaries match the local file; a write into the middle of an existing file stages the
/// version it opened and commits it whole.
#[test]
fn ranged_reads_and_in_place_writes_match_a_local_file() {
    let c = Cluster::up(1, 2, &["--chunk-size=1048576"]);
    let w = work_dir();
    write(&w.path().join("big"), &bytes((5 << 20) + 123, 99));
    let out = run_script(
        &c,
        w.path(),
        r#"
        M=$W/m
        mnt "$M"
        cp "$W/big" "$M/big"
        for skip in 0 1 1023 1024 2500 5119 5120 6000; do
          dd if="$W/big" bs=1k skip=$skip count=3 2>/dev/null > "$W/want"
          dd if="$M/big" bs=1k skip=$skip count=3 2>/dev/null > "$W/got"
          cmp "$W/want" "$W/got"
        done
        tail -c 5000 "$M/big" > "$W/got"; tail -c 5000 "$W/big" | cmp - "$W/got"
        printf XYZ | dd of="$W/big" bs=1 seek=3000000 conv=notrunc 2>/dev/null
        printf XYZ | dd of="$M/big" bs=1 seek=3000000 conv=notrunc 2>/dev/null
        cmp "$W/big" "$M/big"
        truncate -s 1500000 "$W/big"; truncate -s 1500000 "$M/big"
        cmp "$W/big" "$M/big"
        # Past the largest file the mount writes (2^20 chunks): EFBIG, and nothing changes.
        ! truncate -s 100T "$M/big" 2>"$W/e"; grep -q "File too large" "$W/e"
        ! dd if=/dev/zero of="$M/big" bs=1 count=1 seek=200T conv=notrunc 2>"$W/e"
        grep -q "File too large" "$W/e"
        cmp "$W/big" "$M/big"
        echo ok
        "#,
    );
    assert!(out.contains("ok"), "{out}");
    let mut want = bytes((5 << 20) + 123, 99);
    want[3_000_000..3_000_003].copy_from_slice(b"XYZ");
    want.truncate(1_500_000);
    assert_eq!(c.get_data(&c.auth, "/big"), want);
}

#[test]
fn two_mounts_see_each_others_closed_files() {
    let c = Cluster::up(3, 3, &[]);
    let w = work_dir();
    let out = run_script(
        &c,
        w.path(),
        r#"
        mnt "$W/m1"
        mnt "$W/m2"
        echo one > "$W/m1/f"
        test "$(cat "$W/m2/f")" = one
        mkdir "$W/m2/d"
        echo two > "$W/m2/d/g"
        test "$(cat "$W/m1/d/g")" = two
        echo again > "$W/m2/f"
        test "$(cat "$W/m1/f")" = again
        mv "$W/m1/d/g" "$W/m1/d/h"
        test "$(cat "$W/m2/d/h")" = two
        rm "$W/m2/d/h"; rmdir "$W/m2/d"
        ! ls "$W/m1/d" 2>/dev/null
        # A delete through the mount goes to the trash, like `dfsctl rm`, and comes back.
        "$D" trash ls
        "$D" trash restore /d/h
        test "$(cat "$W/m1/d/h")" = two
        echo ok
        "#,
    );
    assert!(out.contains("ok"), "{out}");
    assert!(out.contains("/d/h\t/.trash/admin/"), "{out}");
}

/// The metadata's inode numbers, modes, times and symbolic links through the mount: a number
/// survives rename and a new version written through close; chmod and utimens are stored;
/// RENAME_NOREPLACE refuses an existing target and a plain rename replaces it atomically.
#[test]
fn inode_numbers_modes_links_and_noreplace_through_the_mount() {
    let c = Cluster::up(1, 1, &[]);
    let w = work_dir();
    let out = run_script(
        &c,
        w.path(),
        r#"
        M=$W/m
        mnt "$M"
        test "$(stat -c %i "$M")" = 1
        echo one > "$M/a"; echo two > "$M/b"
        A=$(stat -c %i "$M/a")
        mv "$M/a" "$M/c"
        test "$(stat -c %i "$M/c")" = "$A"
        echo more >> "$M/c"
        test "$(stat -c %i "$M/c")" = "$A"
        test "$(cat "$M/c")" = "$(printf 'one
more')"
        chmod 600 "$M/c"
        test "$(stat -c %a "$M/c")" = 600
        touch -m -d '2001-02-03 04:05:06' "$M/c"
        test "$(stat -c %Y "$M/c")" = "$(date -d '2001-02-03 04:05:06' +%s)"
        ln -s c "$M/l"
        test "$(readlink "$M/l")" = c
        test "$(stat -c %F "$M/l")" = "symbolic link"
        test "$(cat "$M/l")" = "$(cat "$M/c")"
        python3 - "$M/b" "$M/c" <<'PY'
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_NOREPLACE = -100, 1
r = libc.renameat2(AT_FDCWD, sys.argv[1].encode(), AT_FDCWD, sys.argv[2].encode(), RENAME_NOREPLACE)
assert r == -1 and ctypes.get_errno() == errno.EEXIST, (r, ctypes.get_errno())
PY
        test "$(cat "$M/c")" = "$(printf 'one
more')"
        B=$(stat -c %i "$M/b")
        mv -f "$M/b" "$M/c"
        test "$(cat "$M/c")" = two
        test "$(stat -c %i "$M/c")" = "$B"
        test ! -e "$M/b"
        mkdir -m 700 "$M/d"
        test "$(stat -c %a "$M/d")" = 700
        mkdir "$M/d/e" "$M/f"; touch "$M/d/e/x"
        ! mv -T "$M/f" "$M/d" 2>/dev/null
        mv -T "$M/f" "$M/d/e" 2>/dev/null && exit 1
        mkdir "$M/g"
        F=$(stat -c %i "$M/f")
        mv -T "$M/f" "$M/g"
        test "$(stat -c %i "$M/g")" = "$F"
        rm "$M/l"
        test ! -e "$M/l"
        ls "$M" | tr '
' ' '
        echo ok
        "#,
    );
    assert!(out.contains("c d g ok"), "{out}");
    let ls = c.ctl(&["ls", "-l", "/"]).ok();
    assert!(ls.contains("/c") && !ls.contains("/l"), "{ls}");
}

/// A chunk server SIGKILLed while a big copy streams through the mount: the copy still
/// completes and is correct. (Under load this used to end the mount itself: dfsctl let SIGPIPE
/// kill the process when a socket to the dead server was written, and the kernel then failed
/// the copy with ECONNABORTED. The mount now ignores SIGPIPE.)
#[test]
fn a_chunk_server_killed_during_a_big_copy_leaves_the_copy_correct() {
    let c = Cluster::up_files(3, 3, &["--chunk-size=1048576"]);
    let w = work_dir();
    let big = bytes(100 << 20, 42);
    write(&w.path().join("big"), &big);
    let killed = w.path().join("killed");
    let copied = w.path().join("copied");
    // The copy runs while this test kills chunk-1; the script checks the result only after the
    // kill (it waits for the `killed` marker).
    let child = script_cmd(
        &c,
        w.path(),
        r#"
        mnt "$W/m"
        cp "$W/big" "$W/m/big"
        touch "$W/copied"
        for _ in $(seq 1200); do test -e "$W/killed" && break; sleep 0.1; done
        test -e "$W/killed"
        cmp "$W/big" "$W/m/big"
        echo ok
        "#,
    )
    .spawn()
    .expect("spawn unshare");
    let start = Instant::now();
    let mut under_way = false;
    while start.elapsed() < Duration::from_secs(300) {
        if c.chunk_files("chunk-1").len() >= 3 {
            under_way = !copied.exists();
            break;
        }
        if copied.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    c.kill("chunk-1");
    std::fs::write(&killed, b"").unwrap();
    let out = finish(child, w.path());
    assert!(out.contains("ok"), "{out}");
    assert!(
        under_way,
        "chunk-1 was killed only after the copy had finished"
    );
    // The file is whole through dfsctl too.
    assert_eq!(c.get_data(&c.auth, "/big"), big);
}

#[test]
fn a_mount_killed_mid_write_leaves_the_previous_version() {
    let c = Cluster::up(3, 3, &[]);
    let w = work_dir();
    let v1 = bytes(3 << 20, 1);
    c.put_data(&c.auth, "/f", &v1, &[]).ok();
    write(&w.path().join("v1"), &v1);
    run_script(
        &c,
        w.path(),
        r#"
        mnt "$W/m"
        # A writer with the file open and 1 MiB written, blocked on a fifo. (Each close of a
        # descriptor commits, dup'ed ones too, so the writer must not dup: dd does.)
        mkfifo "$W/hold"
        perl -e 'open(my $f, ">", $ARGV[0]) or die "open: $!";
          syswrite($f, "x" x 1048576) == 1048576 or die "write: $!";
          open(my $m, ">", $ARGV[1]) or die; close $m;
          open(my $h, "<", $ARGV[2]) or die; <$h>;' "$W/m/f" "$W/written" "$W/hold" 2>/dev/null &
        P=$!
        for _ in $(seq 600); do test -e "$W/written" && break; sleep 0.1; done
        test -e "$W/written"
        kill -9 "$MPID"
        wait "$MPID" || true
        kill "$P" 2>/dev/null || true
        wait "$P" || true
        umount -l "$W/m"
        mnt "$W/m"
        cmp "$W/v1" "$W/m/f"
        "#,
    );
    assert_eq!(c.get_data(&c.auth, "/f"), v1);
}

/// A file being committed does not hold up stats and lookups of other files on the same
/// mount: with one of its chunk's two servers frozen (SIGSTOP), the close waits about 5 s for
/// the stall guard to give that replica up, and lookups are answered meanwhile.
#[test]
fn a_long_close_does_not_block_other_lookups() {
    let c = Cluster::up(1, 2, &["--replication=2"]);
    let w = work_dir();
    write(&w.path().join("part"), &bytes(100_000, 5));
    let out = run_script(
        &c,
        w.path(),
        r#"
        mnt "$W/m"
        echo x > "$W/m/other"
        # One process writes and, once chunk-1 is frozen, closes (the close commits; the
        # chunk's upload to chunk-1 stalls until the stall guard gives that replica up).
        python3 -c '
import os, sys, time
w = sys.argv[1]
fd = os.open(w + "/m/big", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, open(w + "/part", "rb").read())
open(w + "/written", "w").close()
while not os.path.exists(w + "/paused"):
    time.sleep(0.01)
os.close(fd)
open(w + "/closed", "w").close()' "$W" &
        CL=$!
        for _ in $(seq 3000); do test -e "$W/written" && break; sleep 0.01; done
        trap '"$D" local pause --resume --dir "$C" chunk-1 >/dev/null 2>&1 || true; cleanup' EXIT
        "$D" local pause --dir "$C" chunk-1
        touch "$W/paused"
        answered=0
        for i in $(seq 2000); do
          test -e "$W/closed" && break
          stat "$W/m/other" >/dev/null
          ! stat "$W/m/none-$i" 2>/dev/null
          test -e "$W/closed" || answered=$((answered + 1))
        done
        wait "$CL"
        "$D" local pause --resume --dir "$C" chunk-1
        cmp "$W/part" "$W/m/big"
        echo "answered=$answered"
        "#,
    );
    let answered: u32 = out
        .lines()
        .find_map(|l| l.strip_prefix("answered="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        answered >= 2,
        "lookups were not answered while the close ran: {out}"
    );
}

/// `dfsctl local up --mount DIR` mounts the new cluster; `local status` lists the mount;
/// `local down` unmounts it before it stops the nodes.
#[test]
fn local_up_mount_mounts_and_local_down_unmounts() {
    let w = work_dir();
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "bash", "-c"])
        .arg(
            r#"
            set -euo pipefail
            trap '"$D" local down --quiet --dir "$W/c" >/dev/null 2>&1 || true' EXIT
            "$D" local up --quiet --dir "$W/c" --metas 1 --chunks 2 --mount "$W/m" >/dev/null
            grep -q " $W/m " /proc/self/mountinfo
            echo hello > "$W/m/f"
            . "$W/c/env"
            test "$("$D" get /f -)" = hello
            st=$("$D" local status --dir "$W/c"); grep -q "^mount .* $W/m$" <<<"$st"
            # A second up keeps the mount it has.
            "$D" local up --quiet --dir "$W/c" --mount "$W/m" >/dev/null
            down=$("$D" local down --dir "$W/c" 2>&1); grep -q "unmounted $W/m" <<<"$down"
            ! grep -q " $W/m " /proc/self/mountinfo
            st=$("$D" local status --dir "$W/c"); ! grep -q "^mount" <<<"$st"
            echo ok
            "#,
        )
        .env("D", bin("dfsctl"))
        .env("W", w.path())
        .env_remove("DFS_META")
        .env_remove("DFS_AUTH_FILE")
        .env_remove("DFS_LOCAL_DIR")
        .stdin(Stdio::null());
    let out = cmd.output().expect("run unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ok"),
        "{}\nstdout:\n{stdout}\nstderr:\n{}\nmount log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(w.path().join("c/mount.log")).unwrap_or_default()
    );
}

/// A git repository cloned onto the mount is clean and whole: `git status` has nothing to
/// report and `git fsck --full` finds every object (git writes objects through temp files,
/// O_EXCL lock files, renames over existing names and chmod).
#[test]
fn git_clone_onto_the_mount_is_clean_and_checks_out() {
    let c = Cluster::up(1, 2, &[]);
    let w = work_dir();
    let out = run_script(
        &c,
        w.path(),
        r#"
        export GIT_CONFIG_NOSYSTEM=1 HOME="$W" GIT_AUTHOR_NAME=t GIT_AUTHOR_EMAIL=t@t \
          GIT_COMMITTER_NAME=t GIT_COMMITTER_EMAIL=t@t
        git init -q "$W/src"
        cd "$W/src"
        for i in $(seq 30); do mkdir -p "d$((i % 4))"; head -c $((i * 3001)) /dev/urandom > "d$((i % 4))/f$i"; done
        git add -A && git commit -qm one
        echo change >> d1/f1 && git rm -q d2/f2 && git commit -qam two
        cd "$W"
        mnt "$W/m"
        git clone -q "$W/src" "$W/m/repo"
        cd "$W/m/repo"
        test -z "$(git status --porcelain)"
        git fsck --full 2>&1
        test "$(git rev-parse HEAD)" = "$(git -C "$W/src" rev-parse HEAD)"
        diff -r --exclude=.git "$W/src" "$W/m/repo"
        echo ok
        "#,
    );
    assert!(out.contains("ok"), "{out}");
}

/// Renaming a directory of 10,000 files through the mount moves every one of them (one rename
/// in the metadata); the files are created by an import (metadata only) to keep the test short.
#[test]
fn mv_of_a_directory_with_10000_files() {
    let c = Cluster::up(1, 1, &[]);
    let w = work_dir();
    let files: Vec<String> = (0..10_000)
        .map(|i| {
            format!(
                r#"{{"name": "big/f{i:05}", "owner": "admin", "size": "0", "sha256": "", "chunks": []}}"#
            )
        })
        .collect();
    let json = w.path().join("saved-files.json");
    std::fs::write(&json, format!("[{}]", files.join(",\n"))).unwrap();
    c.ctl(&["admin", "import", json.to_str().unwrap()]).ok();
    let out = run_script(
        &c,
        w.path(),
        r#"
        mnt "$W/m"
        test "$(ls "$W/m/big" | wc -l)" = 10000
        mv "$W/m/big" "$W/m/moved"
        test ! -e "$W/m/big"
        test "$(ls "$W/m/moved" | wc -l)" = 10000
        test -f "$W/m/moved/f09999"
        test "$("$D" ls /moved | wc -l)" = 10000
        echo ok
        "#,
    );
    assert!(out.contains("ok"), "{out}");
}

/// A sequential writer streams its chunks out as it passes them: copying 48 MiB with 1 MiB
/// chunks and a 4 MiB staging budget never has more than a few chunks staged (measured from the
/// mount's open staging files); a program that then writes back into a chunk already uploaded
/// (a header patched after the body) reads it back and gets the right bytes.
#[test]
fn sequential_writes_stream_with_bounded_staging() {
    let c = Cluster::up(1, 2, &["--chunk-size=1048576"]);
    let w = work_dir();
    write(&w.path().join("big"), &bytes(48 << 20, 3));
    let out = run_script(
        &c,
        w.path(),
        r#"
        mkdir -p "$W/m"
        "$D" mount --staging-bytes 4M "$W/m" 2>>"$W/mount.log" &
        MPID=$!; MPIDS="$MPID"
        for _ in $(seq 600); do grep -q " $W/m " /proc/self/mountinfo && break; sleep 0.1; done
        # Blocks allocated by the mount's staging files (open, unlinked), in KiB.
        staged() { local t=0 b; for f in /proc/$MPID/fd/*; do
            if [ "$(readlink "$f")" != "${f#x}" ] && readlink "$f" | grep -q '(deleted)'; then
              b=$(stat -L -c %b "$f" 2>/dev/null || echo 0); t=$((t + b / 2)); fi; done; echo $t; }
        cp "$W/big" "$W/m/big" & CP=$!
        max=0
        while kill -0 $CP 2>/dev/null; do s=$(staged); [ "$s" -gt "$max" ] && max=$s; sleep 0.02; done
        wait $CP
        cmp "$W/big" "$W/m/big"
        echo "max_staged_kib=$max"
        # Write 5 MiB, go back into chunk 0 (already uploaded) and patch it, then append.
        perl -e 'open(my $f, "+>", $ARGV[0]) or die "open: $!";
          syswrite($f, "a" x (5 << 20)) == 5 << 20 or die "write: $!";
          sysseek($f, 100, 0) or die; syswrite($f, "XYZ") == 3 or die "patch: $!";
          sysseek($f, 0, 2) or die; syswrite($f, "tail") == 4 or die "append: $!";
          close($f) or die "close: $!";' "$W/m/patched"
        perl -e 'my $d = "a" x (5 << 20); substr($d, 100, 3) = "XYZ"; print $d . "tail"' > "$W/want"
        cmp "$W/want" "$W/m/patched"
        echo ok
        "#,
    );
    assert!(out.contains("ok"), "{out}");
    let max: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("max_staged_kib="))
        .and_then(|n| n.trim().parse().ok())
        .expect("max_staged_kib printed");
    eprintln!("48 MiB sequential copy: at most {max} KiB staged at once");
    assert!(
        max <= 8 << 10,
        "a 48 MiB sequential copy staged {max} KiB at once (budget 4 MiB, 1 MiB chunks)"
    );
    assert_eq!(c.get_data(&c.auth, "/big"), bytes(48 << 20, 3));
}

/// A write into the middle of a big file stages and stores only the chunk it touches: the new
/// version keeps every other chunk of the old one (same chunk ids), and reads back right.
#[test]
fn a_small_write_into_a_big_file_replaces_one_chunk() {
    let c = Cluster::up(1, 2, &["--chunk-size=1048576"]);
    let w = work_dir();
    let data = bytes(20 << 20, 8);
    c.put_data(&c.auth, "/big", &data, &[]).ok();
    let chunks = |c: &Cluster| -> Vec<String> {
        let v: serde_json::Value =
            serde_json::from_str(&c.ctl(&["--json", "stat", "/big"]).ok()).unwrap();
        v["chunks"]
            .as_array()
            .expect("chunks in stat --json")
            .iter()
            .map(|ch| ch["id"].as_str().unwrap().to_string())
            .collect()
    };
    let before = chunks(&c);
    run_script(
        &c,
        w.path(),
        r#"
        mnt "$W/m"
        printf XYZ | dd of="$W/m/big" bs=1 seek=10485800 conv=notrunc 2>/dev/null
        "#,
    );
    let after = chunks(&c);
    assert_eq!(before.len(), 20);
    assert_eq!(after.len(), 20);
    let changed: Vec<usize> = (0..20).filter(|&i| before[i] != after[i]).collect();
    assert_eq!(changed, vec![10], "only the chunk written to is new");
    let mut want = data;
    want[10485800..10485803].copy_from_slice(b"XYZ");
    assert_eq!(c.get_data(&c.auth, "/big"), want);
}

/// The seeded differential test (`tests/scripts/differential.py`): the same random sequence of
/// create, write at offsets, truncate, rename, mkdir, rmdir, unlink, symlink and chmod on a local
/// directory and on the mount, every outcome compared, then both trees. 64 KiB chunks, so files
/// span chunks. `DFS_DIFF_SEED` replays a seed; `DFS_DIFF_OPS` runs longer (default 300).
#[test]
fn seeded_differential_ops_match_a_local_directory() {
    let seed: u64 = std::env::var("DFS_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                % 1_000_000_007
        });
    let ops: u32 = std::env::var("DFS_DIFF_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    eprintln!("differential seed {seed} ({ops} ops; replay with DFS_DIFF_SEED={seed})");
    let c = Cluster::up(1, 2, &["--chunk-size=65536"]);
    let w = work_dir();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/differential.py");
    let out = run_script(
        &c,
        w.path(),
        &format!(
            r#"
            mnt "$W/m"
            mkdir "$W/local" "$W/m/d"
            python3 {} {seed} "$W/local" "$W/m/d" {ops}
            "#,
            script.display()
        ),
    );
    assert!(out.contains("trees equal"), "seed {seed}: {out}");
}

/// A full cluster: a copy through the mount fails with ENOSPC (from `write` or `close`) and
/// nothing half-written becomes visible: an existing file keeps its previous version, a new one
/// stays as it was created (empty).
#[test]
fn a_full_cluster_gives_enospc_and_keeps_the_previous_version() {
    // Room for about two 1 MiB chunks per server.
    let c = Cluster::up_with(1, 2, &["--chunk-size=1048576"], &["--capacity=2500000"]);
    let w = work_dir();
    let small = bytes(100_000, 4);
    c.put_data(&c.auth, "/keep", &small, &[]).ok();
    write(&w.path().join("keep"), &small);
    write(&w.path().join("big"), &bytes(8 << 20, 5));
    let out = run_script(
        &c,
        w.path(),
        r#"
        mnt "$W/m"
        if cp "$W/big" "$W/m/keep" 2>"$W/err1"; then echo "cp over keep succeeded"; exit 1; fi
        grep -q "No space left on device" "$W/err1" || { cat "$W/err1"; exit 1; }
        cmp "$W/keep" "$W/m/keep"
        if cp "$W/big" "$W/m/new" 2>"$W/err2"; then echo "cp to new succeeded"; exit 1; fi
        grep -q "No space left on device" "$W/err2" || { cat "$W/err2"; exit 1; }
        test "$(stat -c %s "$W/m/new")" = 0
        echo ok
        "#,
    );
    assert!(out.contains("ok"), "{out}");
    assert_eq!(c.get_data(&c.auth, "/keep"), small);
    assert_eq!(c.get_data(&c.auth, "/new"), Vec::<u8>::new());
}

/// A file renamed while a program has it open for writing is committed at its new name (its
/// inode), not recreated at the old one.
#[test]
fn a_file_renamed_while_open_is_committed_at_its_new_name() {
    let c = Cluster::up(1, 1, &[]);
    let w = work_dir();
    let out = run_script(
        &c,
        w.path(),
        r#"
        mnt "$W/m"
        echo old > "$W/m/a"
        python3 -c '
import os, sys
m = sys.argv[1]
fd = os.open(m + "/a", os.O_WRONLY | os.O_TRUNC)
os.write(fd, b"one ")
os.rename(m + "/a", m + "/b")
os.write(fd, b"two")
os.close(fd)' "$W/m"
        test ! -e "$W/m/a"
        test "$(cat "$W/m/b")" = "one two"
        echo ok
        "#,
    );
    assert!(out.contains("ok"), "{out}");
    assert_eq!(c.get_data(&c.auth, "/b"), b"one two");
}

/// Issue 24: a chunk server that freezes (SIGSTOP: its sockets stay open, it sends nothing)
/// under a mount that already talks to it does not hang reads: each read of a replica there is
/// given up after the stall timeout (1 s here) and served by the other replica.
#[test]
fn a_frozen_replica_does_not_hang_reads_through_the_mount() {
    let c = Cluster::up(1, 2, &["--replication=2"]);
    let w = work_dir();
    write(&w.path().join("big"), &bytes(20 << 20, 7));
    let out = run_script(
        &c,
        w.path(),
        r#"
        export DFS_STALL_TIMEOUT=1
        mnt "$W/m"
        cp "$W/big" "$W/m/big"
        # Connections to both servers are open now; reads go to the lowest server id first.
        dd if="$W/m/big" of=/dev/null bs=1M iflag=direct 2>/dev/null
        first=$(DFS_LOCAL_DIR="$C" "$D" --json cluster status | python3 -c '
import json, sys
s = json.load(sys.stdin)["chunk_servers"]
print(min(s, key=lambda x: x["id"])["local_name"])')
        trap '"$D" local pause --resume --dir "$C" "$first" >/dev/null 2>&1 || true; cleanup' EXIT
        "$D" local pause --dir "$C" "$first"
        start=$(date +%s.%N)
        timeout 60 dd if="$W/m/big" bs=1M iflag=direct 2>/dev/null | cmp - "$W/big"
        end=$(date +%s.%N)
        "$D" local pause --resume --dir "$C" "$first"
        echo "took=$(python3 -c "print(round($end - $start, 1))")"
        "#,
    );
    eprintln!("20 MB read with a frozen replica: {out}");
    assert!(out.contains("took="), "{out}");
}

/// A file kept open through the mount three times longer than its write tokens' commit
/// window (token lifetime and commit grace shortened to 1 s each) while `admin gc --apply`
/// runs: its uploaded chunks stay under the draft's write lease and the close commits it whole.
#[test]
fn a_file_kept_open_past_its_tokens_window_still_commits() {
    let c = Cluster::up_with(1, 2, SHORT_LEASE_FLAGS, FAST_REPORT_FLAGS);
    let w = work_dir();
    write(&w.path().join("src"), &bytes(10 * 65536 + 7, 11));
    let out = run_script(
        &c,
        w.path(),
        r#"
        mnt "$W/m"
        exec 3>"$W/m/log"
        for i in $(seq 0 10); do
          dd if="$W/src" bs=65536 skip=$i count=1 status=none >&3
          sleep 0.6
          "$D" --json admin gc --apply | grep -q '"removed":0,' || { echo "gc removed a chunk"; exit 1; }
        done
        exec 3>&-
        cmp "$W/src" "$W/m/log"
        "$D" get /log "$W/back" && cmp "$W/src" "$W/back"
        echo ok
        "#,
    );
    assert!(out.contains("ok"), "{out}");
}
