//! Namespace and user rules, tested without any IO.
use super::command::{ApplyError, Command, CommandV1, ErrorKind, ImportedFile, Reply};
use super::*;

fn state() -> State {
    let mut s = State::default();
    run(
        &mut s,
        CommandV1::Init {
            cluster_id: "c1".into(),
            admin_key_hash: "h".into(),
            now_ms: 1,
        },
    )
    .unwrap();
    for u in ["alice", "bob"] {
        run(
            &mut s,
            CommandV1::AddUser {
                actor: Some("admin".into()),
                name: u.into(),
                role: Role::User,
                key_hash: "k".into(),
                now_ms: 2,
            },
        )
        .unwrap();
    }
    run(
        &mut s,
        CommandV1::RegisterChunkServer {
            uuid: "u1".into(),
            addr: "a:1".into(),
            now_ms: 3,
        },
    )
    .unwrap();
    s
}

/// Apply and check that the touched records describe the whole change.
fn run(s: &mut State, c: CommandV1) -> Result<Reply, ApplyError> {
    let before = s.clone();
    let mut touched = Vec::new();
    let r = s.apply(&Command::V1(c), &mut touched);
    if r.is_err() {
        assert_eq!(*s, before, "a refused command must change nothing");
        assert!(touched.is_empty());
    }
    // Replaying only the touched records onto the old state gives the new state.
    let mut replay = before;
    for k in &touched {
        match s.record(k) {
            Some(v) => replay.load_record(&k.encode(), &v).unwrap(),
            None => match k {
                RecordKey::Node(p) => drop(replay.nodes.remove(p)),
                RecordKey::User(u) => drop(replay.users.remove(u)),
                RecordKey::ChunkServer(i) => drop(replay.chunk_servers.remove(i)),
                RecordKey::PendingDelete(i, c) => {
                    if let Some(set) = replay.pending_deletes.get_mut(i) {
                        set.remove(c);
                        if set.is_empty() {
                            replay.pending_deletes.remove(i);
                        }
                    }
                }
                RecordKey::PendingDeletesV0(_) => unreachable!("never written"),
                RecordKey::RecentRequest(r) => drop(replay.recent_requests.remove(r)),
                RecordKey::Meta => unreachable!("meta always exists"),
            },
        }
    }
    assert_eq!(replay, *s, "touched records must cover every change");
    r
}

fn mkdir(s: &mut State, who: &str, p: &str, parents: bool) -> Result<Reply, ApplyError> {
    run(
        s,
        CommandV1::Mkdir {
            actor: who.into(),
            path: p.into(),
            parents,
            id: "id".into(),
            now_ms: 5,
        },
    )
}

fn file(size: u64) -> FileData {
    let chunks = if size == 0 {
        vec![]
    } else {
        vec![ChunkRef {
            id: format!("chunk-{size}"),
            size,
            crc32c: 0,
            replicas: vec![1],
        }]
    };
    FileData {
        size,
        replication: 1,
        sha256: "x".into(),
        chunk_size: 8,
        chunks,
    }
}

fn commit(
    s: &mut State,
    who: &str,
    p: &str,
    overwrite: bool,
    size: u64,
) -> Result<Reply, ApplyError> {
    run(
        s,
        CommandV1::CommitFile {
            actor: who.into(),
            path: p.into(),
            overwrite,
            file: file(size),
            id: "f".into(),
            now_ms: 9,
            kept: vec![],
        },
    )
}

fn kind(r: Result<Reply, ApplyError>) -> ErrorKind {
    r.unwrap_err().kind
}

#[test]
fn init_happens_once() {
    let mut s = state();
    let r = run(
        &mut s,
        CommandV1::Init {
            cluster_id: "c2".into(),
            admin_key_hash: "z".into(),
            now_ms: 1,
        },
    );
    assert_eq!(r.unwrap(), Reply::Initialized { won: false });
    assert_eq!(s.meta.cluster_id, "c1");
    assert_eq!(s.users["admin"].key_hash, "h");
}

#[test]
fn mkdir_rules() {
    let mut s = state();
    mkdir(&mut s, "alice", "/a", false).unwrap();
    assert_eq!(
        kind(mkdir(&mut s, "alice", "/a", false)),
        ErrorKind::AlreadyExists
    );
    mkdir(&mut s, "alice", "/a", true).unwrap();
    assert_eq!(
        kind(mkdir(&mut s, "alice", "/x/y", false)),
        ErrorKind::NotFound
    );
    mkdir(&mut s, "alice", "/x/y/z", true).unwrap();
    assert!(s.nodes.contains_key("/x/y"));
    assert_eq!(
        kind(mkdir(&mut s, "bob", "/a/b", false)),
        ErrorKind::PermissionDenied
    );
    assert_eq!(
        kind(mkdir(&mut s, "alice", "/a/../b", false)),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(mkdir(&mut s, "alice", "", false)),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(mkdir(&mut s, "alice", "/a\0b", false)),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(mkdir(
            &mut s,
            "alice",
            &format!("/{}", "n".repeat(300)),
            false
        )),
        ErrorKind::InvalidArgument
    );
    commit(&mut s, "alice", "/f", false, 3).unwrap();
    assert_eq!(
        kind(mkdir(&mut s, "alice", "/f", false)),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        kind(mkdir(&mut s, "alice", "/f/g", true)),
        ErrorKind::FailedPrecondition
    );
    mkdir(&mut s, "admin", "/a/adm", false).unwrap();
}

#[test]
fn remove_rules() {
    let mut s = state();
    mkdir(&mut s, "alice", "/d/e", true).unwrap();
    commit(&mut s, "alice", "/d/e/f", false, 4).unwrap();
    assert_eq!(
        kind(run(
            &mut s,
            CommandV1::Remove {
                actor: "alice".into(),
                path: "/d".into(),
                recursive: false
            }
        )),
        ErrorKind::FailedPrecondition
    );
    assert_eq!(
        kind(run(
            &mut s,
            CommandV1::Remove {
                actor: "bob".into(),
                path: "/d".into(),
                recursive: true
            }
        )),
        ErrorKind::PermissionDenied
    );
    assert_eq!(
        kind(run(
            &mut s,
            CommandV1::Remove {
                actor: "alice".into(),
                path: "/".into(),
                recursive: true
            }
        )),
        ErrorKind::InvalidArgument
    );
    let r = run(
        &mut s,
        CommandV1::Remove {
            actor: "alice".into(),
            path: "/d".into(),
            recursive: true,
        },
    )
    .unwrap();
    assert_eq!(r, Reply::Removed { count: 3 });
    assert!(s.nodes.is_empty());
    assert!(
        s.pending_deletes[&1].contains("chunk-4"),
        "chunks of removed files are queued for deletion"
    );
    run(
        &mut s,
        CommandV1::ChunksDeleted {
            node: 1,
            chunks: vec!["chunk-4".into()],
        },
    )
    .unwrap();
    assert!(s.pending_deletes.is_empty());
}

#[test]
fn rename_rules() {
    let mut s = state();
    mkdir(&mut s, "alice", "/a/b", true).unwrap();
    commit(&mut s, "alice", "/a/b/f", false, 1).unwrap();
    mkdir(&mut s, "alice", "/t", false).unwrap();
    let mv = |s: &mut State, who: &str, f: &str, t: &str| {
        run(
            s,
            CommandV1::Rename {
                actor: who.into(),
                from: f.into(),
                to: t.into(),
                now_ms: 7,
            },
        )
    };
    assert_eq!(
        kind(mv(&mut s, "alice", "/a", "/a/b/c")),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(mv(&mut s, "bob", "/a", "/z")),
        ErrorKind::PermissionDenied
    );
    assert_eq!(
        kind(mv(&mut s, "alice", "/nope", "/z")),
        ErrorKind::NotFound
    );
    mv(&mut s, "alice", "/a", "/t").unwrap();
    assert!(s.nodes.contains_key("/t/a/b/f"));
    assert!(!s.nodes.contains_key("/a"));
    mv(&mut s, "alice", "/t/a/b/f", "/g").unwrap();
    assert!(s.nodes["/g"].file.is_some());
    commit(&mut s, "alice", "/h", false, 2).unwrap();
    assert_eq!(
        kind(mv(&mut s, "alice", "/h", "/g")),
        ErrorKind::AlreadyExists
    );
    // A prefix that is not a parent is not moved along.
    mkdir(&mut s, "alice", "/p", false).unwrap();
    mkdir(&mut s, "alice", "/p-q", false).unwrap();
    mv(&mut s, "alice", "/p", "/r").unwrap();
    assert!(s.nodes.contains_key("/p-q"));
}

#[test]
fn commit_rules() {
    let mut s = state();
    commit(&mut s, "alice", "/dir/f", false, 5).unwrap();
    assert!(s.nodes["/dir"].is_dir(), "put creates missing parents");
    assert_eq!(
        kind(commit(&mut s, "alice", "/dir/f", false, 6)),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        kind(commit(&mut s, "bob", "/dir/f", true, 6)),
        ErrorKind::PermissionDenied
    );
    assert_eq!(
        kind(commit(&mut s, "alice", "/dir", true, 6)),
        ErrorKind::FailedPrecondition
    );
    commit(&mut s, "alice", "/dir/f", true, 6).unwrap();
    assert_eq!(s.nodes["/dir/f"].file.as_ref().unwrap().size, 6);
    assert!(
        s.pending_deletes[&1].contains("chunk-5"),
        "the replaced version's chunks are queued"
    );
    commit(&mut s, "alice", "/empty", false, 0).unwrap();
    let mut bad = file(3);
    bad.size = 4;
    let r = run(
        &mut s,
        CommandV1::CommitFile {
            actor: "alice".into(),
            path: "/b".into(),
            overwrite: false,
            file: bad,
            id: "i".into(),
            now_ms: 1,
            kept: vec![],
        },
    );
    assert_eq!(kind(r), ErrorKind::InvalidArgument);
    let mut unknown = file(3);
    unknown.chunks[0].replicas = vec![99];
    let r = run(
        &mut s,
        CommandV1::CommitFile {
            actor: "alice".into(),
            path: "/b".into(),
            overwrite: false,
            file: unknown,
            id: "i".into(),
            now_ms: 1,
            kept: vec![],
        },
    );
    assert_eq!(kind(r), ErrorKind::InvalidArgument);
    assert_eq!(
        kind(commit(&mut s, "ghost", "/g", false, 1)),
        ErrorKind::PermissionDenied
    );
}

#[test]
fn visibility() {
    let mut s = state();
    commit(&mut s, "alice", "/a1", false, 1).unwrap();
    commit(&mut s, "bob", "/b1", false, 2).unwrap();
    mkdir(&mut s, "alice", "/ad/sub", true).unwrap();
    let names = |v: Vec<(String, Inode)>| v.into_iter().map(|(p, _)| p).collect::<Vec<_>>();
    assert_eq!(
        names(s.list("alice", "/", false).unwrap()),
        vec!["/a1", "/ad"]
    );
    assert_eq!(
        names(s.list("alice", "/", true).unwrap()),
        vec!["/a1", "/ad", "/ad/sub"]
    );
    assert_eq!(names(s.list("bob", "/", false).unwrap()), vec!["/b1"]);
    assert_eq!(
        names(s.list("admin", "/", false).unwrap()),
        vec!["/a1", "/ad", "/b1"]
    );
    assert_eq!(
        s.stat("bob", "/a1").unwrap_err().kind,
        ErrorKind::PermissionDenied
    );
    assert_eq!(
        s.list("bob", "/ad", false).unwrap_err().kind,
        ErrorKind::PermissionDenied
    );
    assert_eq!(names(s.list("alice", "/a1", false).unwrap()), vec!["/a1"]);
}

#[test]
fn users() {
    let mut s = state();
    let add = |s: &mut State, actor: Option<&str>, name: &str, role| {
        run(
            s,
            CommandV1::AddUser {
                actor: actor.map(Into::into),
                name: name.into(),
                role,
                key_hash: "k".into(),
                now_ms: 1,
            },
        )
    };
    assert_eq!(
        kind(add(&mut s, Some("alice"), "carol", Role::User)),
        ErrorKind::PermissionDenied
    );
    assert_eq!(
        kind(add(&mut s, None, "evil", Role::Admin)),
        ErrorKind::PermissionDenied
    );
    assert_eq!(
        kind(add(&mut s, Some("admin"), "alice", Role::User)),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        kind(add(&mut s, Some("admin"), "bad/name", Role::User)),
        ErrorKind::InvalidArgument
    );
    add(&mut s, None, "carol", Role::User).unwrap();
    assert_eq!(
        kind(run(
            &mut s,
            CommandV1::RemoveUser {
                actor: "admin".into(),
                name: "admin".into()
            }
        )),
        ErrorKind::FailedPrecondition
    );
    assert_eq!(
        kind(run(
            &mut s,
            CommandV1::RemoveUser {
                actor: "bob".into(),
                name: "carol".into()
            }
        )),
        ErrorKind::PermissionDenied
    );
    run(
        &mut s,
        CommandV1::RemoveUser {
            actor: "admin".into(),
            name: "carol".into(),
        },
    )
    .unwrap();
    assert!(!s.users.contains_key("carol"));
}

#[test]
fn chunk_servers_keep_their_id() {
    let mut s = state();
    let reg = |s: &mut State, uuid: &str, addr: &str| {
        run(
            s,
            CommandV1::RegisterChunkServer {
                uuid: uuid.into(),
                addr: addr.into(),
                now_ms: 1,
            },
        )
        .unwrap()
    };
    assert_eq!(reg(&mut s, "u1", "a:2"), Reply::ChunkServerId { id: 1 });
    assert_eq!(s.chunk_servers[&1].addr, "a:2");
    assert_eq!(reg(&mut s, "u2", "b:1"), Reply::ChunkServerId { id: 2 });
}

#[test]
fn chunk_servers_registered_before_init_keep_unique_ids() {
    let mut s = State::default();
    let reg = |s: &mut State, uuid: &str| {
        run(
            s,
            CommandV1::RegisterChunkServer {
                uuid: uuid.into(),
                addr: "a:1".into(),
                now_ms: 1,
            },
        )
        .unwrap()
    };
    assert_eq!(reg(&mut s, "early"), Reply::ChunkServerId { id: 1 });
    run(
        &mut s,
        CommandV1::Init {
            cluster_id: "c".into(),
            admin_key_hash: "h".into(),
            now_ms: 1,
        },
    )
    .unwrap();
    assert_eq!(reg(&mut s, "late"), Reply::ChunkServerId { id: 2 });
}

#[test]
fn a_batch_applies_each_command_on_its_own() {
    let mut s = state();
    let mk = |p: &str| {
        Command::V1(CommandV1::Mkdir {
            actor: "alice".into(),
            path: p.into(),
            parents: false,
            id: "i".into(),
            now_ms: 1,
        })
    };
    let r = run(
        &mut s,
        CommandV1::Batch {
            cmds: vec![mk("/x"), mk("/x"), mk("/y")],
        },
    )
    .unwrap();
    let Reply::Batch { results } = r else {
        panic!("wrong reply")
    };
    assert!(results[0].is_ok());
    assert_eq!(
        results[1].as_ref().unwrap_err().kind,
        ErrorKind::AlreadyExists
    );
    assert!(results[2].is_ok());
    assert!(s.nodes.contains_key("/x") && s.nodes.contains_key("/y"));
}

fn once(req: &str, c: CommandV1) -> CommandV1 {
    CommandV1::Once {
        request_id: req.into(),
        now_ms: 9,
        cmd: Box::new(Command::V1(c)),
    }
}

#[test]
fn a_retried_commit_is_not_applied_twice() {
    let mut s = state();
    let commit = |s: &mut State, p: &str, req: &str| {
        run(
            s,
            once(
                req,
                CommandV1::CommitFile {
                    actor: "alice".into(),
                    path: p.into(),
                    overwrite: true,
                    file: file(3),
                    id: "f".into(),
                    now_ms: 9,
                    kept: vec![],
                },
            ),
        )
    };
    let original = commit(&mut s, "/b", "req-1").unwrap();
    assert!(matches!(
        &original,
        Reply::Committed { owner, id, created_ms: 9, modified_ms: 9 } if owner == "alice" && id == "f"
    ));
    run(
        &mut s,
        CommandV1::Rename {
            actor: "alice".into(),
            from: "/b".into(),
            to: "/a".into(),
            now_ms: 10,
        },
    )
    .unwrap();
    // The same put's commit arrives again (its reply was lost): nothing changes.
    // It reports what the first attempt committed.
    assert_eq!(commit(&mut s, "/b", "req-1").unwrap(), original);
    assert_eq!(commit(&mut s, "/b", "req-1").unwrap(), original);
    assert!(!s.nodes.contains_key("/b"));
    assert!(s.nodes.contains_key("/a"));
    // A new put is applied.
    commit(&mut s, "/b", "req-2").unwrap();
    assert!(s.nodes.contains_key("/b"));
}

#[test]
fn a_retried_remove_gets_its_first_reply_and_removes_nothing_new() {
    let mut s = state();
    commit(&mut s, "alice", "/f", false, 3).unwrap();
    let rm = |s: &mut State| {
        run(
            s,
            once(
                "rm-1",
                CommandV1::Remove {
                    actor: "alice".into(),
                    path: "/f".into(),
                    recursive: false,
                },
            ),
        )
    };
    assert_eq!(rm(&mut s).unwrap(), Reply::Removed { count: 1 });
    // Someone puts /f again; the lost-reply retry of the rm must not remove it.
    commit(&mut s, "alice", "/f", false, 4).unwrap();
    assert_eq!(rm(&mut s).unwrap(), Reply::Removed { count: 1 });
    assert!(s.nodes.contains_key("/f"));
    // A refused request is not remembered: its retry is judged again.
    let mk = |s: &mut State| {
        run(
            s,
            once(
                "mk-1",
                CommandV1::Mkdir {
                    actor: "alice".into(),
                    path: "/d/e".into(),
                    parents: false,
                    id: "i".into(),
                    now_ms: 5,
                },
            ),
        )
    };
    assert_eq!(kind(mk(&mut s)), ErrorKind::NotFound);
    mkdir(&mut s, "alice", "/d", false).unwrap();
    mk(&mut s).unwrap();
    assert!(s.nodes.contains_key("/d/e"));
    // Requests do not nest.
    let nested = once(
        "n",
        once(
            "m",
            CommandV1::RemoveUser {
                actor: "admin".into(),
                name: "bob".into(),
            },
        ),
    );
    assert_eq!(kind(run(&mut s, nested)), ErrorKind::InvalidArgument);
}

#[test]
fn a_commit_applied_twice_keeps_its_chunks_and_deleted_chunks_are_refused() {
    let mut s = state();
    commit(&mut s, "alice", "/f", true, 3).unwrap();
    // The same commit again (no request id): the file's chunk is not queued for deletion.
    commit(&mut s, "alice", "/f", true, 3).unwrap();
    assert!(s.pending_deletes.is_empty());
    // Replaced by another version: the old chunk is queued, and a commit naming it is refused.
    commit(&mut s, "alice", "/f", true, 4).unwrap();
    assert!(s.pending_deletes[&1].contains("chunk-3"));
    assert_eq!(
        kind(commit(&mut s, "alice", "/g", false, 3)),
        ErrorKind::FailedPrecondition
    );
}

#[test]
fn import_reports_each_file() {
    let mut s = state();
    commit(&mut s, "alice", "/taken", false, 1).unwrap();
    let f = |p: &str| ImportedFile {
        path: p.into(),
        id: "i".into(),
        owner: "adrian".into(),
        size: 132,
        sha256: "s".into(),
        created_ms: 1,
        modified_ms: 2,
        chunks: vec![ChunkRef {
            id: "c".into(),
            size: 132,
            crc32c: 0,
            replicas: vec![],
        }],
    };
    let r = run(
        &mut s,
        CommandV1::Import {
            actor: "admin".into(),
            files: vec![f("/hello.txt"), f("/taken"), f("/../x")],
            now_ms: 1,
        },
    )
    .unwrap();
    let Reply::Imported { report, count } = r else {
        panic!("wrong reply")
    };
    assert_eq!(count, 1);
    assert!(report[0].contains("cannot be recovered"));
    assert!(report[1].contains("already exists"));
    assert!(report[2].starts_with("skipped"));
    assert_eq!(s.nodes["/hello.txt"].owner, "adrian");
    assert_eq!(
        kind(run(
            &mut s,
            CommandV1::Import {
                actor: "alice".into(),
                files: vec![],
                now_ms: 1
            }
        )),
        ErrorKind::PermissionDenied
    );
}

#[test]
fn record_keys_round_trip() {
    for k in [
        RecordKey::Meta,
        RecordKey::Node("/a/b".into()),
        RecordKey::User("x".into()),
        RecordKey::ChunkServer(7),
        RecordKey::PendingDelete(9, "0a1b2c3d-1111-4222-8333-444455556666".into()),
        RecordKey::PendingDeletesV0(9),
    ] {
        assert_eq!(RecordKey::decode(&k.encode()), Some(k));
    }
}

/// Self-healing commands: replication changes, repair copies, replica drops.
#[test]
fn healing_commands_keep_replica_lists_consistent() {
    let mut s = state();
    for u in ["u2", "u3"] {
        run(
            &mut s,
            CommandV1::RegisterChunkServer {
                uuid: u.into(),
                addr: format!("{u}:1"),
                now_ms: 3,
            },
        )
        .unwrap();
    }
    commit(&mut s, "alice", "/f", false, 5).unwrap();
    let setrep = |s: &mut State, who: &str, p: &str, n: u32| {
        run(
            s,
            CommandV1::SetReplication {
                actor: who.into(),
                path: p.into(),
                replication: n,
            },
        )
    };
    assert_eq!(
        kind(setrep(&mut s, "bob", "/f", 2)),
        ErrorKind::PermissionDenied
    );
    assert_eq!(
        kind(setrep(&mut s, "alice", "/f", 0)),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(setrep(&mut s, "alice", "/nope", 2)),
        ErrorKind::NotFound
    );
    setrep(&mut s, "alice", "/f", 2).unwrap();
    assert_eq!(s.nodes["/f"].file.as_ref().unwrap().replication, 2);
    setrep(&mut s, "admin", "/f", 2).unwrap();

    let added = |s: &mut State, file_id: &str, node: NodeId, drop: Vec<NodeId>| {
        run(
            s,
            CommandV1::ReplicaAdded {
                path: "/f".into(),
                file_id: file_id.into(),
                chunk_id: "chunk-5".into(),
                node,
                drop,
            },
        )
    };
    // A repair planned against another version of the file changes nothing.
    assert_eq!(
        kind(added(&mut s, "old", 2, vec![])),
        ErrorKind::FailedPrecondition
    );
    assert_eq!(
        kind(added(&mut s, "f", 9, vec![])),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(added(&mut s, "f", 1, vec![])),
        ErrorKind::AlreadyExists
    );
    added(&mut s, "f", 2, vec![]).unwrap();
    let reps = |s: &State| {
        s.nodes["/f"].file.as_ref().unwrap().chunks[0]
            .replicas
            .clone()
    };
    assert_eq!(reps(&s), vec![1, 2]);
    // A copy that replaces a dead replica drops it and queues its deletion.
    added(&mut s, "f", 3, vec![1]).unwrap();
    assert_eq!(reps(&s), vec![2, 3]);
    assert!(s.pending_deletes[&1].contains("chunk-5"));
    // A server still told to delete the chunk cannot take it again.
    assert_eq!(
        kind(added(&mut s, "f", 1, vec![])),
        ErrorKind::FailedPrecondition
    );

    let drop = |s: &mut State, nodes: Vec<NodeId>| {
        run(
            s,
            CommandV1::DropReplicas {
                path: "/f".into(),
                file_id: "f".into(),
                chunk_id: "chunk-5".into(),
                nodes,
            },
        )
    };
    assert_eq!(
        kind(drop(&mut s, vec![2, 3])),
        ErrorKind::FailedPrecondition
    );
    drop(&mut s, vec![7]).unwrap();
    drop(&mut s, vec![3]).unwrap();
    assert_eq!(reps(&s), vec![2]);
    assert!(s.pending_deletes[&3].contains("chunk-5"));
}

#[test]
fn orphan_deletes_never_touch_a_referenced_replica() {
    let mut s = state();
    commit(&mut s, "alice", "/f", false, 5).unwrap();
    let q = |s: &mut State, node: NodeId, chunks: &[&str]| {
        run(
            s,
            CommandV1::QueueOrphanDeletes {
                node,
                chunks: chunks.iter().map(|c| c.to_string()).collect(),
            },
        )
        .unwrap()
    };
    // chunk-5 is listed on server 1: kept. The orphan is queued once.
    assert_eq!(
        q(&mut s, 1, &["chunk-5", "orphan"]),
        Reply::Queued { count: 1 }
    );
    assert_eq!(q(&mut s, 1, &["orphan"]), Reply::Queued { count: 0 });
    assert!(!s.pending_deletes[&1].contains("chunk-5"));
    assert!(s.pending_deletes[&1].contains("orphan"));
    // Unknown servers and referenced-only lists change nothing.
    assert_eq!(q(&mut s, 9, &["x"]), Reply::Queued { count: 0 });
    let mut fresh = state();
    commit(&mut fresh, "alice", "/f", false, 5).unwrap();
    assert_eq!(q(&mut fresh, 1, &["chunk-5"]), Reply::Queued { count: 0 });
    assert!(fresh.pending_deletes.is_empty());
}

#[test]
fn expired_request_ids_are_pruned() {
    let mut s = state();
    let mut touched = Vec::new();
    for i in 2..super::REQUEST_PRUNE_EVERY {
        s.remember_request(&format!("old-{i}"), 0, Reply::Done, &mut touched);
    }
    // Younger than the memory when the round comes: kept.
    s.remember_request("recent", 2, Reply::Done, &mut touched);
    assert_eq!(s.recent_requests.len(), super::REQUEST_PRUNE_EVERY - 1);
    // The id that fills the next pruning round drops every id older than the memory.
    let now = super::REQUEST_MEMORY_MS + 1;
    s.remember_request("new", now, Reply::Done, &mut touched);
    assert_eq!(s.recent_requests.len(), 2);
    assert!(s.recent_requests.contains_key("new"));
    assert!(s.recent_requests.contains_key("recent"));
}

#[test]
fn chunk_sizes_that_overflow_are_refused_not_a_panic() {
    let mut s = state();
    let huge = |id: &str| ChunkRef {
        id: id.into(),
        size: u64::MAX / 2 + 1,
        crc32c: 0,
        replicas: vec![1],
    };
    let f = FileData {
        size: 0,
        replication: 1,
        sha256: "x".into(),
        chunk_size: 8,
        chunks: vec![huge("a"), huge("b")],
    };
    let r = run(
        &mut s,
        CommandV1::CommitFile {
            actor: "alice".into(),
            path: "/big".into(),
            overwrite: false,
            file: f,
            id: "i".into(),
            now_ms: 1,
            kept: vec![],
        },
    );
    assert_eq!(kind(r), ErrorKind::InvalidArgument);
}

#[test]
fn a_listing_names_each_child_once_and_skips_grandchildren() {
    let mut s = state();
    for d in ["/a", "/a/b", "/a/b/c", "/a-x", "/a-x/y", "/a0", "/b"] {
        mkdir(&mut s, "alice", d, false).unwrap();
    }
    commit(&mut s, "alice", "/a/f", false, 3).unwrap();
    commit(&mut s, "alice", "/a.txt", false, 4).unwrap();
    let names = |p: &str, rec: bool| -> Vec<String> {
        s.list("alice", p, rec)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    };
    assert_eq!(
        names("/", false),
        ["/a", "/a-x", "/a.txt", "/a0", "/b"].map(String::from)
    );
    assert_eq!(names("/a", false), ["/a/b", "/a/f"].map(String::from));
    assert_eq!(
        names("/a", true),
        ["/a/b", "/a/b/c", "/a/f"].map(String::from)
    );
    assert_eq!(s.usage("alice", "/a").unwrap(), (1, 2, 3));
    assert_eq!(s.usage("alice", "/a/f").unwrap(), (1, 0, 3));
}
