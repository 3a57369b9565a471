#!/usr/bin/env python3
"""Seeded differential test: the same random sequence of file operations on a local directory
and on a dfs mount, each operation's outcome (ok or errno) compared as it happens, and the two
trees compared at the end (names, types, sizes, contents, permission bits, link targets).

    differential.py SEED LOCAL_DIR MOUNT_DIR OPS

Exits 1 with the seed, the operation and both outcomes on the first difference.
"""
import errno
import hashlib
import os
import random
import stat
import sys

seed, local, mount, nops = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
rng = random.Random(seed)
MAX_FILE = 300_000


def outcome(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def tree(root):
    """Relative path -> (kind, size, sha256 or target, mode bits)."""
    out = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", 0, os.readlink(p), 0)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", 0, "", stat.S_IMODE(st.st_mode))
            else:
                with open(p, "rb") as f:
                    h = hashlib.sha256(f.read()).hexdigest()
                out[rel] = ("file", st.st_size, h, stat.S_IMODE(st.st_mode))
    return out


def entries(kind):
    t = tree(local)
    return sorted(p for p, v in t.items() if v[0] == kind)


def name():
    return rng.choice("abcdefgh") + str(rng.randrange(40))


def some_dir():
    return rng.choice([""] + entries("dir"))


def op_create():
    p = os.path.join(some_dir(), name())
    data = rng.randbytes(rng.choice([0, 1, 4096, rng.randrange(MAX_FILE)]))
    mode = rng.choice([0o644, 0o600, 0o755])

    def f(root):
        fd = os.open(os.path.join(root, p), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    return f"create {p} ({len(data)} B)", f


def op_write():
    files = entries("file")
    if not files:
        return op_create()
    p = rng.choice(files)
    size = os.path.getsize(os.path.join(local, p))
    off = rng.randrange(size + 70_000)
    data = rng.randbytes(rng.randrange(1, 100_000))

    def f(root):
        fd = os.open(os.path.join(root, p), os.O_WRONLY)
        try:
            os.pwrite(fd, data, off)
        finally:
            os.close(fd)
    return f"write {p} at {off} ({len(data)} B)", f


def op_truncate():
    files = entries("file")
    if not files:
        return op_create()
    p = rng.choice(files)
    size = os.path.getsize(os.path.join(local, p))
    new = rng.randrange(int(size * 1.5) + 10)
    return f"truncate {p} to {new}", lambda root: os.truncate(os.path.join(root, p), new)


def op_rename():
    cands = entries("file") + entries("link") + entries("dir")
    if not cands:
        return op_mkdir()
    src = rng.choice(cands)
    dst_dir = some_dir()
    if dst_dir == src or dst_dir.startswith(src + "/"):
        dst_dir = ""
    dst = os.path.join(dst_dir, name())
    if dst == src:
        return op_mkdir()
    return f"rename {src} -> {dst}", lambda root: os.rename(os.path.join(root, src), os.path.join(root, dst))


def op_mkdir():
    p = os.path.join(some_dir(), name())
    return f"mkdir {p}", lambda root: os.mkdir(os.path.join(root, p))


def op_rmdir():
    dirs = entries("dir")
    if not dirs:
        return op_mkdir()
    p = rng.choice(dirs)
    return f"rmdir {p}", lambda root: os.rmdir(os.path.join(root, p))


def op_unlink():
    cands = entries("file") + entries("link")
    if not cands:
        return op_create()
    p = rng.choice(cands)
    return f"unlink {p}", lambda root: os.unlink(os.path.join(root, p))


def op_symlink():
    p = os.path.join(some_dir(), name())
    target = rng.choice(["../x", "/etc/hostname", "a/b/c", name()])
    return f"symlink {p} -> {target}", lambda root: os.symlink(target, os.path.join(root, p))


def op_chmod():
    cands = entries("file") + entries("dir")
    if not cands:
        return op_create()
    p = rng.choice(cands)
    mode = rng.choice([0o600, 0o640, 0o644, 0o700, 0o755, 0o777])
    return f"chmod {p} {mode:o}", lambda root: os.chmod(os.path.join(root, p), mode)


OPS = [(op_create, 4), (op_write, 4), (op_truncate, 2), (op_rename, 2), (op_mkdir, 2),
       (op_rmdir, 1), (op_unlink, 1), (op_symlink, 1), (op_chmod, 1)]
os.umask(0o022)
for i in range(nops):
    make = rng.choices([o for o, _ in OPS], weights=[w for _, w in OPS])[0]
    what, fn = make()
    a, b = outcome(lambda: fn(local)), outcome(lambda: fn(mount))
    if a != b:
        sys.exit(f"seed {seed}, op {i}: {what}: local {a}, mount {b}")
want, got = tree(local), tree(mount)
if want != got:
    diff = [(p, want.get(p), got.get(p)) for p in sorted(set(want) | set(got)) if want.get(p) != got.get(p)]
    sys.exit(f"seed {seed}: trees differ after {nops} ops: {diff[:10]}")
print(f"seed {seed}: {nops} ops, {len(want)} entries, trees equal")
