//! Namespace and user rules, tested without any IO.
use super::command::{ApplyError, Command, CommandV1, ErrorKind, ImportedFile, RenameMode, Reply};
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
            certified_id: None,
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
                RecordKey::Lease(l) => drop(replay.leases.remove(l)),
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
            mode: None,
            lease: String::new(),
            leased: vec![],
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
                recursive: false,
                now_ms: 0,
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
                recursive: true,
                now_ms: 0,
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
                recursive: true,
                now_ms: 0,
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
            now_ms: 0,
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
                mode: RenameMode::Move,
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
            mode: None,
            lease: String::new(),
            leased: vec![],
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
            mode: None,
            lease: String::new(),
            leased: vec![],
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
                certified_id: None,
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
                certified_id: None,
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
                    mode: None,
                    lease: String::new(),
                    leased: vec![],
                },
            ),
        )
    };
    let original = commit(&mut s, "/b", "req-1").unwrap();
    assert!(matches!(
        &original,
        Reply::Committed { owner, id, created_ms: 9, modified_ms: 9, .. } if owner == "alice" && id == "f"
    ));
    run(
        &mut s,
        CommandV1::Rename {
            actor: "alice".into(),
            from: "/b".into(),
            to: "/a".into(),
            now_ms: 10,
            mode: RenameMode::Move,
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
                    now_ms: 0,
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
    assert!(report[0].starts_with("imported /hello.txt (132 bytes, owner adrian, 1 old chunk(s))"));
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
                certified_id: None,
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
    for i in 0..100 {
        s.remember_request(&format!("old-{i}"), i, Reply::Done, &mut touched);
    }
    s.remember_request("recent", 1_000, Reply::Done, &mut touched);
    assert_eq!(s.recent_requests.len(), 101);
    // An id remembered later drops every id older than the memory, oldest first, and the
    // records of the dropped ones are touched (removed from the store).
    touched.clear();
    let now = super::REQUEST_MEMORY_MS + 50;
    s.remember_request("new", now, Reply::Done, &mut touched);
    assert_eq!(s.recent_requests.len(), 52);
    assert!(s.recent_requests.contains_key("old-50"));
    assert!(!s.recent_requests.contains_key("old-49"));
    assert!(s.recent_requests.contains_key("new") && s.recent_requests.contains_key("recent"));
    assert_eq!(touched.len(), 51);
    assert!(touched.contains(&RecordKey::RecentRequest("old-0".into())));
    assert_eq!(s.recent_requests.oldest(), Some((50, "old-50")));
}

/// What the remembered ids take, as `recent` counts it, from scratch.
fn recount(s: &State) -> u64 {
    s.recent_requests
        .iter()
        .map(|(k, r)| super::recent::cost(k, r))
        .sum()
}

#[test]
fn remembered_request_ids_are_bounded_in_bytes_oldest_first() {
    let mut s = state();
    assert_eq!(s.recent_requests.len(), 0);
    let mut touched = Vec::new();
    let entry = super::recent::cost(
        "req-000",
        &Remembered {
            at_ms: 10,
            reply: Reply::Done,
        },
    );
    // Room for ten such entries.
    let budget = 10 * entry;
    // Out of order in time (clocks of successive leaders differ): the oldest by time goes
    // first, whatever the order of arrival.
    for i in 0..10i64 {
        let at = if i == 3 { 10 } else { 11 + i };
        s.remember_request_within(
            &format!("req-{i:03}"),
            at,
            Reply::Done,
            budget,
            &mut touched,
        );
    }
    assert_eq!(s.recent_requests.len(), 10);
    assert_eq!(s.recent_requests.bytes(), budget);
    touched.clear();
    s.remember_request_within("req-010", 21, Reply::Done, budget, &mut touched);
    assert_eq!(s.recent_requests.len(), 10);
    assert!(!s.recent_requests.contains_key("req-003"));
    assert_eq!(
        touched,
        vec![
            RecordKey::RecentRequest("req-010".into()),
            RecordKey::RecentRequest("req-003".into())
        ]
    );
    // A big reply takes the room of several small ones.
    let big = Reply::Imported {
        report: vec!["x".repeat(100); 3],
        count: 3,
    };
    s.remember_request_within("req-011", 22, big.clone(), budget, &mut touched);
    assert!(s.recent_requests.len() < 10);
    assert!(s.recent_requests.bytes() <= budget);
    assert_eq!(s.recent_requests.bytes(), recount(&s));
    assert_eq!(s.recent_requests.get("req-011").unwrap().reply, big);
    // One entry larger than the whole budget is still kept (alone): its retry must get it.
    s.remember_request_within("req-012", 23, big.clone(), entry, &mut touched);
    assert_eq!(s.recent_requests.len(), 1);
    assert!(s.recent_requests.contains_key("req-012"));

    // The count is derived: the same after a serialization round trip (snapshot install)
    // and after loading the records one by one (restart), and so is the next pruning.
    let mut s = state();
    for i in 0..30i64 {
        s.remember_request_within(&format!("id-{i:02}"), i, Reply::Done, budget, &mut touched);
    }
    let copy: State = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
    assert_eq!(copy, s);
    assert_eq!(copy.recent_requests.bytes(), s.recent_requests.bytes());
    assert_eq!(copy.recent_requests.oldest(), s.recent_requests.oldest());
    let mut loaded = state();
    loaded.recent_requests = Default::default();
    for (k, v) in s.all_records() {
        loaded.load_record(&k.encode(), &v).unwrap();
    }
    assert_eq!(loaded.recent_requests.bytes(), recount(&s));
    let (mut a, mut b) = (s.clone(), loaded);
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    a.remember_request_within("next", 40, Reply::Done, budget / 2, &mut ta);
    b.remember_request_within("next", 40, Reply::Done, budget / 2, &mut tb);
    assert_eq!((a, ta), (b, tb));
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
            mode: None,
            lease: String::new(),
            leased: vec![],
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

// ---------------------------------------------------------------- inodes, modes, times, links

fn rename_as(
    s: &mut State,
    from: &str,
    to: &str,
    mode: RenameMode,
    now: i64,
) -> Result<Reply, ApplyError> {
    run(
        s,
        CommandV1::Rename {
            actor: "alice".into(),
            from: from.into(),
            to: to.into(),
            now_ms: now,
            mode,
        },
    )
}

fn symlink(s: &mut State, p: &str, target: &str, now: i64) -> Result<Reply, ApplyError> {
    run(
        s,
        CommandV1::Symlink {
            actor: "alice".into(),
            path: p.into(),
            target: target.into(),
            id: "l".into(),
            now_ms: now,
        },
    )
}

fn set_attr(
    s: &mut State,
    who: &str,
    p: &str,
    mode: Option<u32>,
    mtime: Option<i64>,
) -> Result<Reply, ApplyError> {
    run(
        s,
        CommandV1::SetAttr {
            actor: who.into(),
            path: p.into(),
            mode,
            mtime_ms: mtime,
            now_ms: 77,
        },
    )
}

fn remove_at(s: &mut State, p: &str, now: i64) -> Result<Reply, ApplyError> {
    run(
        s,
        CommandV1::Remove {
            actor: "alice".into(),
            path: p.into(),
            recursive: true,
            now_ms: now,
        },
    )
}

#[test]
fn inode_numbers_are_stable_across_rename_and_overwrite_and_never_reused() {
    let mut s = state();
    assert_eq!(s.stat("alice", "/").unwrap().1.ino, ROOT_INO);
    mkdir(&mut s, "alice", "/d", false).unwrap();
    commit(&mut s, "alice", "/d/f", false, 3).unwrap();
    let (d, f) = (s.nodes["/d"].ino, s.nodes["/d/f"].ino);
    assert!(
        d > ROOT_INO && f > d,
        "numbers are handed out in order: {d} {f}"
    );
    rename_as(&mut s, "/d/f", "/d/g", RenameMode::Move, 10).unwrap();
    assert_eq!(s.nodes["/d/g"].ino, f, "a rename keeps the number");
    rename_as(&mut s, "/d", "/e", RenameMode::Move, 11).unwrap();
    assert_eq!((s.nodes["/e"].ino, s.nodes["/e/g"].ino), (d, f));
    commit(&mut s, "alice", "/e/g", true, 4).unwrap();
    assert_eq!(s.nodes["/e/g"].ino, f, "a new version keeps the number");
    // A committed reply tells the number too (the mount needs it after close).
    let r = run(
        &mut s,
        CommandV1::CommitFile {
            actor: "alice".into(),
            path: "/e/g".into(),
            overwrite: true,
            file: file(5),
            id: "f2".into(),
            now_ms: 12,
            kept: vec![],
            mode: None,
            lease: String::new(),
            leased: vec![],
        },
    )
    .unwrap();
    assert!(matches!(r, Reply::Committed { ino, .. } if ino == f));
    remove_at(&mut s, "/e", 13).unwrap();
    commit(&mut s, "alice", "/e", false, 6).unwrap();
    let again = s.nodes["/e"].ino;
    assert!(
        again > f,
        "a removed number is not handed out again: {again}"
    );
    // The counter is replicated state: a member that loads the records continues it.
    let mut loaded = State::default();
    for (k, v) in s.all_records() {
        loaded.load_record(&k.encode(), &v).unwrap();
    }
    assert_eq!(loaded, s);
    commit(&mut loaded, "alice", "/n", false, 7).unwrap();
    assert_eq!(loaded.nodes["/n"].ino, again + 1);
}

#[test]
fn an_older_namespace_is_numbered_by_one_entry_in_path_order() {
    let mut s = state();
    mkdir(&mut s, "alice", "/b", false).unwrap();
    commit(&mut s, "alice", "/a", false, 3).unwrap();
    // What a cluster made by the previous version holds: no numbers, no flag.
    s.meta.inode_numbers = false;
    s.meta.next_ino = 0;
    s.meta.created_ms = 0;
    for n in s.nodes.values_mut() {
        n.ino = 0;
    }
    // Records written then (no ino, ctime, mode) still load.
    let old = r#"{"id":"x","owner":"alice","created_ms":4,"modified_ms":5,"file":null}"#;
    s.load_record(b"n/c", old.as_bytes()).unwrap();
    assert_eq!(s.nodes["/c"].ino, 0);
    assert_eq!(s.nodes["/c"].mode(), 0o755);
    assert_eq!(s.nodes["/c"].ctime(), 5);
    // Until numbered, new entries apply as the previous version applied them.
    commit(&mut s, "alice", "/b/x", false, 4).unwrap();
    assert_eq!(s.nodes["/b/x"].ino, 0);
    let mut other = s.clone();
    run(&mut s, CommandV1::NumberInodes).unwrap();
    run(&mut other, CommandV1::NumberInodes).unwrap();
    assert_eq!(s, other, "every member numbers the same way");
    let inos: Vec<u64> = s.nodes.values().map(|n| n.ino).collect();
    assert_eq!(inos, vec![2, 3, 4, 5], "path order: /a /b /b/x /c");
    assert_eq!(
        s.stat("admin", "/").unwrap().1.created_ms,
        1,
        "root: the cluster's birth"
    );
    let before = s.clone();
    run(&mut s, CommandV1::NumberInodes).unwrap();
    assert_eq!(s, before, "numbering twice changes nothing");
    commit(&mut s, "alice", "/z", false, 5).unwrap();
    assert_eq!(s.nodes["/z"].ino, 6);
}

#[test]
fn a_directory_mtime_follows_its_entries() {
    let mut s = state();
    let root = |s: &State| s.stat("admin", "/").unwrap().1;
    assert_eq!(
        root(&s).created_ms,
        1,
        "root is as old as the cluster, not 1970"
    );
    assert_eq!(root(&s).modified_ms, 1);
    mkdir(&mut s, "alice", "/d", false).unwrap();
    assert_eq!((root(&s).modified_ms, root(&s).ctime()), (5, 5));
    commit(&mut s, "alice", "/d/f", false, 3).unwrap();
    assert_eq!(
        s.nodes["/d"].modified_ms, 9,
        "a new file changes its directory"
    );
    assert_eq!(s.nodes["/d"].created_ms, 5, "creation time stays");
    commit(&mut s, "alice", "/d/f", true, 4).unwrap();
    assert_eq!(
        s.nodes["/d"].modified_ms, 9,
        "a new version of a file does not"
    );
    assert_eq!(s.nodes["/d/f"].ctime(), 9);
    mkdir(&mut s, "alice", "/e", false).unwrap();
    rename_as(&mut s, "/d/f", "/e/f", RenameMode::Move, 20).unwrap();
    assert_eq!(s.nodes["/d"].modified_ms, 20);
    assert_eq!(s.nodes["/e"].modified_ms, 20);
    assert_eq!(s.nodes["/e"].ctime(), 20);
    assert_eq!(
        s.nodes["/e/f"].modified_ms, 9,
        "a rename is not a content change"
    );
    assert_eq!(s.nodes["/e/f"].ctime(), 20);
    remove_at(&mut s, "/e/f", 30).unwrap();
    assert_eq!(s.nodes["/e"].modified_ms, 30);
    symlink(&mut s, "/e/l", "f", 40).unwrap();
    assert_eq!(s.nodes["/e"].modified_ms, 40);
    remove_at(&mut s, "/d", 50).unwrap();
    assert_eq!(root(&s).modified_ms, 50);
}

#[test]
fn set_attr_changes_mode_and_mtime_for_the_owner_only() {
    let mut s = state();
    commit(&mut s, "alice", "/f", false, 3).unwrap();
    mkdir(&mut s, "alice", "/d", false).unwrap();
    assert_eq!(s.nodes["/f"].mode(), 0o644);
    assert_eq!(s.nodes["/d"].mode(), 0o755);
    set_attr(&mut s, "alice", "/f", Some(0o600), None).unwrap();
    let f = &s.nodes["/f"];
    assert_eq!(
        (f.mode(), f.modified_ms, f.ctime(), f.created_ms),
        (0o600, 9, 77, 9)
    );
    set_attr(&mut s, "alice", "/f", None, Some(-5)).unwrap();
    assert_eq!(
        (s.nodes["/f"].mode(), s.nodes["/f"].modified_ms),
        (0o600, -5)
    );
    commit(&mut s, "alice", "/f", true, 4).unwrap();
    assert_eq!(s.nodes["/f"].mode(), 0o600, "a new version keeps the mode");
    assert_eq!(
        kind(set_attr(&mut s, "bob", "/f", Some(0o777), None)),
        ErrorKind::PermissionDenied
    );
    assert_eq!(
        kind(set_attr(&mut s, "alice", "/f", Some(0o10644), None)),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(set_attr(&mut s, "alice", "/nope", Some(0o600), None)),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(set_attr(&mut s, "alice", "/", Some(0o700), None)),
        ErrorKind::PermissionDenied
    );
    set_attr(&mut s, "admin", "/", Some(0o700), Some(3)).unwrap();
    let root = s.stat("admin", "/").unwrap().1;
    assert_eq!(
        (root.mode(), root.modified_ms, root.ctime()),
        (0o700, 3, 77)
    );
}

#[test]
fn symlinks_are_their_own_kind() {
    let mut s = state();
    mkdir(&mut s, "alice", "/d", false).unwrap();
    symlink(&mut s, "/d/l", "../some/where", 10).unwrap();
    let l = &s.nodes["/d/l"];
    assert!(l.is_symlink() && !l.is_dir() && l.file.is_none());
    assert_eq!(l.symlink.as_deref(), Some("../some/where"));
    assert_eq!(l.mode(), 0o777);
    assert_eq!(s.totals(), (1, 1, 0), "a link counts as an empty file");
    assert_eq!(
        kind(symlink(&mut s, "/d/l", "x", 11)),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        kind(symlink(&mut s, "/d", "x", 11)),
        ErrorKind::AlreadyExists
    );
    assert_eq!(kind(symlink(&mut s, "/no/l", "x", 11)), ErrorKind::NotFound);
    assert_eq!(
        kind(symlink(&mut s, "/d/l/x", "x", 11)),
        ErrorKind::FailedPrecondition
    );
    assert_eq!(
        kind(symlink(&mut s, "/m", "", 11)),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(symlink(&mut s, "/m", "a\0b", 11)),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(symlink(&mut s, "/m", &"t".repeat(4097), 11)),
        ErrorKind::InvalidArgument
    );
    symlink(&mut s, "/m", &"t".repeat(4096), 11).unwrap();
    assert_eq!(
        kind(set_attr(&mut s, "alice", "/m", Some(0o600), None)),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind(mkdir(&mut s, "alice", "/d/l", false)),
        ErrorKind::AlreadyExists
    );
    // A put over a link replaces it with a new file (a new inode).
    let link_ino = s.nodes["/m"].ino;
    commit(&mut s, "alice", "/m", true, 3).unwrap();
    assert!(s.nodes["/m"].file.is_some() && s.nodes["/m"].ino > link_ino);
    remove_at(&mut s, "/d/l", 12).unwrap();
    assert!(!s.nodes.contains_key("/d/l"));
}

#[test]
fn rename_noreplace_and_replace() {
    let mut s = state();
    commit(&mut s, "alice", "/a", false, 3).unwrap();
    commit(&mut s, "alice", "/b", false, 4).unwrap();
    mkdir(&mut s, "alice", "/d", false).unwrap();
    mkdir(&mut s, "alice", "/e", false).unwrap();
    mkdir(&mut s, "alice", "/full/x", true).unwrap();
    commit(&mut s, "bob", "/bobs", false, 5).unwrap();
    let a = s.nodes["/a"].ino;
    for target in ["/b", "/d", "/a"] {
        assert_eq!(
            kind(rename_as(&mut s, "/a", target, RenameMode::NoReplace, 10)),
            ErrorKind::AlreadyExists,
            "{target}"
        );
    }
    assert_eq!(
        kind(rename_as(&mut s, "/a", "/b", RenameMode::Move, 10)),
        ErrorKind::AlreadyExists
    );
    // Replace: a file over a file, atomically; the old one's chunks are queued.
    rename_as(&mut s, "/a", "/b", RenameMode::Replace, 10).unwrap();
    assert!(!s.nodes.contains_key("/a"));
    assert_eq!(s.nodes["/b"].ino, a);
    assert!(s.pending_deletes[&1].contains("chunk-4"));
    // Never a directory over a file, a file over a directory or over a non-empty one.
    assert_eq!(
        kind(rename_as(&mut s, "/b", "/d", RenameMode::Replace, 11)),
        ErrorKind::FailedPrecondition
    );
    assert_eq!(
        kind(rename_as(&mut s, "/d", "/b", RenameMode::Replace, 11)),
        ErrorKind::FailedPrecondition
    );
    assert_eq!(
        kind(rename_as(&mut s, "/d", "/full", RenameMode::Replace, 11)),
        ErrorKind::FailedPrecondition
    );
    assert_eq!(
        kind(rename_as(&mut s, "/b", "/bobs", RenameMode::Replace, 11)),
        ErrorKind::PermissionDenied
    );
    assert_eq!(
        kind(rename_as(&mut s, "/d", "/", RenameMode::Replace, 11)),
        ErrorKind::AlreadyExists
    );
    // An empty directory over an empty one.
    let d = s.nodes["/d"].ino;
    rename_as(&mut s, "/d", "/e", RenameMode::Replace, 12).unwrap();
    assert_eq!(s.nodes["/e"].ino, d);
    assert!(!s.nodes.contains_key("/d"));
    // Move (dfsctl mv) still moves into a directory; NoReplace to a new name just renames.
    rename_as(&mut s, "/b", "/e", RenameMode::Move, 13).unwrap();
    assert!(s.nodes.contains_key("/e/b"));
    rename_as(&mut s, "/e/b", "/e/c", RenameMode::NoReplace, 14).unwrap();
    assert_eq!(s.nodes["/e/c"].ino, a);
}

#[test]
fn listing_in_pages_walks_2500_entries_once_each() {
    let mut s = state();
    mkdir(&mut s, "alice", "/big", false).unwrap();
    for i in 0..2500u64 {
        let owner = if i % 5 == 0 { "bob" } else { "alice" };
        let p = format!("/big/f{i:05}");
        if owner == "bob" {
            // bob cannot create inside alice's directory: put his files there directly.
            let mut n = s.nodes["/big"].clone();
            n.owner = "bob".into();
            s.nodes.insert(p, n);
        } else {
            mkdir(&mut s, owner, &p, false).unwrap();
            if i % 100 == 1 {
                mkdir(&mut s, owner, &format!("{p}/sub"), false).unwrap();
            }
        }
    }
    let walk = |s: &State, who: &str, recursive: bool, limit: usize| {
        let (mut all, mut after, mut pages) = (Vec::new(), String::new(), 0);
        loop {
            let (entries, next) = s.list_page(who, "/big", recursive, &after, limit).unwrap();
            assert!(entries.len() <= limit.min(namespace::MAX_LIST_PAGE));
            all.extend(entries.into_iter().map(|(p, _)| p));
            pages += 1;
            if next.is_empty() {
                return (all, pages);
            }
            after = next;
        }
    };
    let (alice, pages) = walk(&s, "alice", false, 1000);
    assert_eq!(alice.len(), 2000);
    assert!(pages >= 2, "{pages}");
    assert_eq!(
        alice,
        s.list("alice", "/big", false)
            .unwrap()
            .into_iter()
            .map(|(p, _)| p)
            .collect::<Vec<_>>()
    );
    let (admin, _) = walk(&s, "admin", false, 5000);
    assert_eq!(
        admin.len(),
        2500,
        "the server caps a page, the walk still sees everything"
    );
    let (rec, _) = walk(&s, "alice", true, 333);
    assert_eq!(rec.len(), 2025);
    let mut sorted = rec.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), rec.len(), "no entry twice");
    // A forged or stale cursor is just a name to start after.
    let (p, _) = s.list_page("alice", "/big", false, "f02498", 10).unwrap();
    assert_eq!(
        p.into_iter().map(|(p, _)| p).collect::<Vec<_>>(),
        vec!["/big/f02499"]
    );
    let (p, next) = s
        .list_page("alice", "/big", false, "zzz/../\0", 10)
        .unwrap();
    assert!(p.is_empty() && next.is_empty());
    let (p, _) = s.list_page("alice", "/big", false, "f00001", 1).unwrap();
    assert_eq!(p[0].0, "/big/f00002", "the cursor's subtree is skipped");
}

#[test]
fn a_snapshot_from_the_previous_version_still_loads() {
    // A State as the previous version serialized it into a snapshot: no inode numbers, modes,
    // ctimes, links or root times.
    let old = r#"{
        "meta": {"cluster_id": "c", "next_chunk_server_id": 2},
        "nodes": {
            "/d": {"id": "d", "owner": "alice", "created_ms": 5, "modified_ms": 6, "file": null},
            "/d/f": {"id": "f", "owner": "alice", "created_ms": 7, "modified_ms": 8,
                     "file": {"size": 0, "replication": 1, "sha256": "", "chunk_size": 0, "chunks": []}}
        },
        "users": {"admin": {"name": "admin", "role": "Admin", "key_hash": "h", "created_ms": 3},
                  "alice": {"name": "alice", "role": "User", "key_hash": "k", "created_ms": 4}},
        "chunk_servers": {},
        "pending_deletes": {}
    }"#;
    let mut s: State = serde_json::from_str(old).unwrap();
    assert!(!s.meta.inode_numbers);
    assert_eq!(s.nodes["/d/f"].ino, 0);
    assert_eq!(
        (s.nodes["/d"].mode(), s.nodes["/d/f"].mode()),
        (0o755, 0o644)
    );
    let root = s.stat("admin", "/").unwrap().1;
    assert_eq!((root.ino, root.created_ms, root.modified_ms), (1, 3, 3));
    run(&mut s, CommandV1::NumberInodes).unwrap();
    assert_eq!((s.nodes["/d"].ino, s.nodes["/d/f"].ino), (2, 3));
    assert_eq!(s.meta.created_ms, 3);
    let again: State = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
    assert_eq!(again, s, "the new snapshot round-trips");
}

/// A commit may keep chunks of the version it replaces (a write into the middle of a big file
/// sends only the chunks it changed): they take the stored size, checksum and replicas, are not
/// queued for deletion, and a commit keeping a chunk the current version no longer has (the
/// file was replaced or moved meanwhile) is refused and changes nothing.
#[test]
fn a_commit_keeps_chunks_of_the_version_it_replaces() {
    let mut s = state();
    let chunk = |id: &str, size: u64, crc: u32| ChunkRef {
        id: id.into(),
        size,
        crc32c: crc,
        replicas: vec![1],
    };
    let v1 = FileData {
        size: 20,
        replication: 1,
        sha256: "x".into(),
        chunk_size: 8,
        chunks: vec![chunk("a", 8, 1), chunk("b", 8, 2), chunk("c", 4, 3)],
    };
    let put = |s: &mut State, file: FileData, kept: Vec<String>| {
        run(
            s,
            CommandV1::CommitFile {
                actor: "alice".into(),
                path: "/f".into(),
                overwrite: true,
                file,
                id: "f".into(),
                now_ms: 9,
                kept,
                mode: None,
                lease: String::new(),
                leased: vec![],
            },
        )
    };
    put(&mut s, v1, vec![]).unwrap();
    // v2: chunk b rewritten; a and c kept (sent with made-up sizes/crcs/replicas: ignored).
    let v2 = FileData {
        size: 20,
        replication: 1,
        sha256: String::new(),
        chunk_size: 8,
        chunks: vec![
            ChunkRef {
                replicas: vec![],
                ..chunk("a", 8, 0)
            },
            chunk("b2", 8, 9),
            ChunkRef {
                replicas: vec![],
                ..chunk("c", 4, 0)
            },
        ],
    };
    put(&mut s, v2.clone(), vec!["a".into(), "c".into()]).unwrap();
    let now = s.nodes["/f"].file.clone().unwrap();
    assert_eq!(
        now.chunks,
        vec![chunk("a", 8, 1), chunk("b2", 8, 9), chunk("c", 4, 3)]
    );
    let queued: Vec<&String> = s.pending_deletes.values().flatten().collect();
    assert_eq!(queued, vec!["b"], "only the replaced chunk is deleted");
    // Keeping b (gone since v2) is refused, as is keeping from a path with no file.
    let stale = FileData {
        chunks: vec![chunk("a", 8, 1), chunk("b", 8, 2), chunk("c", 4, 3)],
        ..v2.clone()
    };
    assert_eq!(
        kind(put(&mut s, stale, vec!["b".into()])),
        ErrorKind::FailedPrecondition
    );
    let other = run(
        &mut s,
        CommandV1::CommitFile {
            actor: "alice".into(),
            path: "/g".into(),
            overwrite: true,
            file: v2.clone(),
            id: "g".into(),
            now_ms: 9,
            kept: vec!["a".into()],
            mode: None,
            lease: String::new(),
            leased: vec![],
        },
    );
    assert_eq!(kind(other), ErrorKind::FailedPrecondition);
    // A kept id must be listed in the commit; a different chunk size is refused.
    assert_eq!(
        kind(put(&mut s, v2.clone(), vec!["zz".into()])),
        ErrorKind::InvalidArgument
    );
    let resized = FileData {
        chunk_size: 16,
        ..v2
    };
    assert_eq!(
        kind(put(&mut s, resized, vec!["a".into()])),
        ErrorKind::FailedPrecondition
    );
}

/// A commit that creates a file gives it the mode asked for; a new version of an existing file
/// keeps the file's own; bits beyond permissions are refused and change nothing.
#[test]
fn a_commit_creates_a_file_with_its_mode_and_keeps_an_existing_ones() {
    let mut s = state();
    let with_mode = |p: &str, overwrite: bool, mode: u32| CommandV1::CommitFile {
        actor: "admin".into(),
        path: p.into(),
        overwrite,
        file: file(0),
        id: "f".into(),
        now_ms: 9,
        kept: vec![],
        mode: Some(mode),
        lease: String::new(),
        leased: vec![],
    };
    run(&mut s, with_mode("/a", false, 0o600)).unwrap();
    assert_eq!(s.nodes["/a"].mode(), 0o600);
    run(&mut s, with_mode("/a", true, 0o777)).unwrap();
    assert_eq!(s.nodes["/a"].mode(), 0o600);
    assert_eq!(
        kind(run(&mut s, with_mode("/a", false, 0o644))),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        kind(run(&mut s, with_mode("/b", false, 0o10644))),
        ErrorKind::InvalidArgument
    );
    assert!(!s.nodes.contains_key("/b"));
}

mod leases;
mod trash;
