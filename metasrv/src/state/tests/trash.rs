//! The trash: deletes that can be undone, purges that cannot, each user's trash its own.
use super::*;
use crate::state::trash::TRASH;

/// 2026-12-07 01:48:28.5 UTC.
const T: i64 = 1_796_608_108_500;
const STAMP: &str = "2026-12-07T01-48-28Z";

fn trash(
    s: &mut State,
    who: &str,
    p: &str,
    recursive: bool,
    now_ms: i64,
) -> Result<Reply, ApplyError> {
    run(
        s,
        CommandV1::Trash {
            actor: who.into(),
            path: p.into(),
            recursive,
            now_ms,
        },
    )
}

fn trashed_to(r: Result<Reply, ApplyError>) -> String {
    match r.unwrap() {
        Reply::Trashed { to, .. } => to,
        other => panic!("expected Trashed, got {other:?}"),
    }
}

fn purge(s: &mut State, user: Option<&str>, cutoff_ms: i64, limit: u64) -> u64 {
    match run(
        s,
        CommandV1::PurgeTrash {
            user: user.map(str::to_string),
            cutoff_ms,
            limit,
            now_ms: cutoff_ms,
        },
    ) {
        Ok(Reply::Removed { count }) => count,
        other => panic!("expected Removed, got {other:?}"),
    }
}

fn mv(
    s: &mut State,
    who: &str,
    from: &str,
    to: &str,
    mode: RenameMode,
) -> Result<Reply, ApplyError> {
    run(
        s,
        CommandV1::Rename {
            actor: who.into(),
            from: from.into(),
            to: to.into(),
            now_ms: T,
            mode,
        },
    )
}

fn queued(s: &State) -> usize {
    s.pending_deletes.values().map(|c| c.len()).sum()
}

#[test]
fn a_deleted_file_keeps_its_chunks_and_comes_back() {
    let mut s = state();
    mkdir(&mut s, "alice", "/a/b", true).unwrap();
    commit(&mut s, "alice", "/a/b/f", false, 10).unwrap();
    let ino = s.nodes["/a/b/f"].ino;
    let to = trashed_to(trash(&mut s, "alice", "/a/b/f", false, T));
    assert_eq!(to, format!("/.trash/alice/{STAMP}/a/b/f"));
    assert!(!s.nodes.contains_key("/a/b/f"));
    assert_eq!(s.nodes[&to].ino, ino, "the inode moves, it is not copied");
    assert_eq!(queued(&s), 0, "its chunks stay until the trash is purged");
    assert_eq!(s.nodes[TRASH].owner, "admin");
    assert_eq!(s.nodes["/.trash/alice"].owner, "alice");
    assert_eq!(s.nodes["/.trash/alice"].mode(), 0o700);

    let (items, next) = s.trash_items("alice", "", 0);
    assert_eq!(next, "");
    assert_eq!(items.len(), 1, "the parents made to hold it are not items");
    assert_eq!(items[0].path, to);
    assert_eq!(items[0].original, "/a/b/f");
    assert_eq!(items[0].deleted_ms, T);
    assert_eq!((items[0].files, items[0].bytes), (1, 10));
    assert_eq!(s.trash_usage(Some("alice")).2, 10);

    // Nobody else sees, restores or purges it.
    assert!(s.trash_items("bob", "", 0).0.is_empty());
    assert_eq!(
        kind(mv(&mut s, "bob", &to, "/stolen", RenameMode::NoReplace)),
        ErrorKind::PermissionDenied
    );
    assert_eq!(purge(&mut s, Some("bob"), T + 10, 100), 0);
    assert!(s.nodes.contains_key(&to));

    // Restore: a rename out of the trash, back where it was.
    mv(&mut s, "alice", &to, "/a/b/f", RenameMode::NoReplace).unwrap();
    assert_eq!(s.nodes["/a/b/f"].ino, ino);
}

#[test]
fn nothing_but_a_delete_puts_entries_in_the_trash() {
    let mut s = state();
    commit(&mut s, "alice", "/f", false, 1).unwrap();
    trash(&mut s, "alice", "/f", false, T).unwrap();
    let denied = ErrorKind::PermissionDenied;
    assert_eq!(
        kind(mkdir(&mut s, "alice", "/.trash/alice/x", true)),
        denied
    );
    assert_eq!(kind(mkdir(&mut s, "admin", "/.trash/new", false)), denied);
    assert_eq!(
        kind(commit(&mut s, "alice", "/.trash/alice/g", false, 2)),
        denied
    );
    commit(&mut s, "alice", "/g", false, 3).unwrap();
    assert_eq!(
        kind(mv(
            &mut s,
            "alice",
            "/g",
            "/.trash/alice/g",
            RenameMode::NoReplace
        )),
        denied
    );
    assert_eq!(kind(symlink(&mut s, "/.trash/l", "/g", T)), denied);
    // On a cluster with no trash yet, nobody makes one by hand either.
    let mut fresh = state();
    assert_eq!(kind(mkdir(&mut fresh, "alice", "/.trash", false)), denied);
}

#[test]
fn the_same_name_deleted_twice_in_one_second_keeps_both() {
    let mut s = state();
    commit(&mut s, "alice", "/f", false, 1).unwrap();
    let first = trashed_to(trash(&mut s, "alice", "/f", false, T));
    commit(&mut s, "alice", "/f", false, 2).unwrap();
    let second = trashed_to(trash(&mut s, "alice", "/f", false, T + 100));
    assert_eq!(second, format!("/.trash/alice/{STAMP}.1/f"));
    // A file never lands inside a deleted directory of the same name.
    mkdir(&mut s, "alice", "/d", false).unwrap();
    commit(&mut s, "alice", "/d/x", false, 3).unwrap();
    let dir = trashed_to(trash(&mut s, "alice", "/d", true, T + 200));
    mkdir(&mut s, "alice", "/d", false).unwrap();
    commit(&mut s, "alice", "/d/y", false, 4).unwrap();
    let y = trashed_to(trash(&mut s, "alice", "/d/y", false, T + 300));
    assert!(!y.starts_with(&format!("{dir}/")), "{y} is inside {dir}");
    let (items, _) = s.trash_items("alice", "", 0);
    let paths: Vec<&str> = items.iter().map(|i| i.path.as_str()).collect();
    assert_eq!(paths.len(), 4, "{paths:?}");
    for p in [&first, &second, &dir, &y] {
        assert!(paths.contains(&p.as_str()), "{p} missing from {paths:?}");
    }
}

#[test]
fn directories_move_whole_and_empty_ones_just_go() {
    let mut s = state();
    mkdir(&mut s, "alice", "/d/e", true).unwrap();
    commit(&mut s, "alice", "/d/e/f", false, 5).unwrap();
    commit(&mut s, "alice", "/d/g", false, 6).unwrap();
    assert_eq!(
        kind(trash(&mut s, "alice", "/d", false, T)),
        ErrorKind::FailedPrecondition
    );
    match trash(&mut s, "alice", "/d", true, T).unwrap() {
        Reply::Trashed { count, .. } => assert_eq!(count, 4),
        other => panic!("{other:?}"),
    }
    let (items, _) = s.trash_items("alice", "", 0);
    assert_eq!(items.len(), 1);
    assert_eq!((items[0].files, items[0].bytes), (2, 11));
    mkdir(&mut s, "alice", "/empty", false).unwrap();
    assert_eq!(
        trash(&mut s, "alice", "/empty", false, T).unwrap(),
        Reply::Removed { count: 1 }
    );
    // Deleting what is already in the trash deletes it for good.
    let before = queued(&s);
    let r = trash(&mut s, "alice", &items[0].path, true, T + 1).unwrap();
    assert_eq!(r, Reply::Removed { count: 4 });
    assert_eq!(queued(&s), before + 2);
    // Another user's file cannot be deleted at all.
    commit(&mut s, "bob", "/b", false, 7).unwrap();
    assert_eq!(
        kind(trash(&mut s, "alice", "/b", false, T)),
        ErrorKind::PermissionDenied
    );
}

#[test]
fn a_purge_takes_what_is_old_enough_in_bounded_batches() {
    let mut s = state();
    mkdir(&mut s, "alice", "/d", false).unwrap();
    for i in 0..5 {
        commit(&mut s, "alice", &format!("/d/f{i}"), false, 10 + i).unwrap();
    }
    trash(&mut s, "alice", "/d", true, T).unwrap();
    commit(&mut s, "alice", "/later", false, 20).unwrap();
    trash(&mut s, "alice", "/later", false, T + 60_000).unwrap();
    commit(&mut s, "bob", "/bobs", false, 21).unwrap();
    trash(&mut s, "bob", "/bobs", false, T).unwrap();

    assert_eq!(purge(&mut s, None, T - 1, 100), 0, "nothing is that old");
    // Two entries per command: children first, so what is left is still a tree.
    assert_eq!(purge(&mut s, Some("alice"), T, 2), 2);
    for k in s.nodes.keys() {
        if let Some(parent) = dfs_common::path::parent(k) {
            assert!(
                parent == "/" || s.nodes.contains_key(parent),
                "{k} lost its parent"
            );
        }
    }
    let mut total = 2;
    loop {
        let n = purge(&mut s, Some("alice"), T, 2);
        total += n;
        if n < 2 {
            break;
        }
    }
    // The time directory, /d and its 5 files; not the later delete, not bob's.
    assert_eq!(total, 7);
    assert_eq!(queued(&s), 5);
    let (items, _) = s.trash_items("alice", "", 0);
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].original, "/later");
    assert_eq!(s.trash_items("bob", "", 0).0.len(), 1);
    // The retention purge takes everyone's.
    assert_eq!(purge(&mut s, None, T + 60_000, 100), 4);
    assert!(s.trash_items("alice", "", 0).0.is_empty());
    assert!(s.trash_items("bob", "", 0).0.is_empty());
}

#[test]
fn trash_listing_pages() {
    let mut s = state();
    for i in 0..5 {
        commit(&mut s, "alice", &format!("/f{i}"), false, 1 + i).unwrap();
        trash(&mut s, "alice", &format!("/f{i}"), false, T).unwrap();
    }
    let (mut seen, mut after) = (Vec::new(), String::new());
    loop {
        let (items, next) = s.trash_items("alice", &after, 2);
        assert!(items.len() <= 2);
        seen.extend(items.into_iter().map(|i| i.original));
        if next.is_empty() {
            break;
        }
        after = next;
    }
    assert_eq!(seen, ["/f0", "/f1", "/f2", "/f3", "/f4"]);
}
