//! openraft's storage conformance suite against the real sled store, plus reopen checks.
use super::{open, LogStore, StateMachine};
use crate::types::{StorageError, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for SledBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, sm, _) = open(&dir.path().join("sled"), &dir.path().join("snapshots"))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() -> Result<(), StorageError> {
    Suite::test_all(SledBuilder)
}

#[tokio::test]
async fn state_survives_reopen() {
    use crate::state::{Command, CommandV1, Request};
    use openraft::storage::{RaftLogStorage, RaftStateMachine};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sled");
    let snaps = dir.path().join("snapshots");
    {
        let (mut log, mut sm, _) = open(&db, &snaps).unwrap();
        log.save_vote(&Vote::new(3, 1)).await.unwrap();
        let entry = Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(3, 1), 1),
            payload: EntryPayload::Normal(Request {
                cmd: Command::V1(CommandV1::Init {
                    cluster_id: "c".into(),
                    admin_key_hash: "h".into(),
                    now_ms: 1,
                }),
            }),
        };
        sm.apply(vec![entry]).await.unwrap();
    }
    // The flusher thread lets go of the database once it sees its senders gone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (mut log, mut sm, _) = loop {
        match open(&db, &snaps) {
            Ok(r) => break r,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot reopen: {e}"),
        }
    };
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index), Some(1));
    assert_eq!(sm.shared().read().unwrap().meta.cluster_id, "c");
}

#[tokio::test]
async fn whole_list_pending_delete_records_are_split_on_open() {
    use crate::state::RecordKey;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sled");
    let snaps = dir.path().join("snapshots");
    let chunks = [
        "0a1b2c3d-1111-4222-8333-444455556666",
        "1a1b2c3d-1111-4222-8333-444455556666",
    ];
    {
        let sled_db = sled::open(&db).unwrap();
        let tree = sled_db.open_tree(super::TREE_SM).unwrap();
        let v0 = serde_json::to_vec(&chunks).unwrap();
        tree.insert(RecordKey::PendingDeletesV0(4).encode(), v0)
            .unwrap();
        sled_db.flush().unwrap();
    }
    let (_, sm, _) = open(&db, &snaps).unwrap();
    let expected: std::collections::BTreeSet<String> =
        chunks.iter().map(|c| c.to_string()).collect();
    assert_eq!(
        sm.shared().read().unwrap().pending_deletes.get(&4),
        Some(&expected)
    );
    drop(sm);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let sled_db = loop {
        match sled::open(&db) {
            Ok(d) => break d,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            Err(e) => panic!("cannot reopen: {e}"),
        }
    };
    let keys: Vec<Option<RecordKey>> = sled_db
        .open_tree(super::TREE_SM)
        .unwrap()
        .iter()
        .keys()
        .map(|k| RecordKey::decode(&k.unwrap()))
        .collect();
    assert_eq!(
        keys,
        chunks
            .iter()
            .map(|c| Some(RecordKey::PendingDelete(4, c.to_string())))
            .collect::<Vec<_>>()
    );
}

// ---- snapshots backed by files (store/snapshot_files.rs) ----

use crate::state::State;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use std::path::Path;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// A store at `dir` with the cluster initialized and `dirs` directories made (one entry each).
async fn store_with_dirs(dir: &Path, dirs: u64) -> (LogStore, StateMachine) {
    use crate::state::{Command, CommandV1, Request};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
    let (log, mut sm, _) = open(&dir.join("sled"), &dir.join("snapshots")).unwrap();
    let entry = |index: u64, cmd: CommandV1| Entry::<TypeConfig> {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Request {
            cmd: Command::V1(cmd),
        }),
    };
    let mut entries = vec![entry(
        1,
        CommandV1::Init {
            cluster_id: "c".into(),
            admin_key_hash: "h".into(),
            now_ms: 1,
        },
    )];
    for i in 0..dirs {
        entries.push(entry(
            i + 2,
            CommandV1::Mkdir {
                actor: "admin".into(),
                path: format!("/d{i}"),
                parents: false,
                id: format!("id-{i}"),
                now_ms: 2,
            },
        ));
    }
    sm.apply(entries).await.unwrap();
    (log, sm)
}

fn state_of(sm: &StateMachine) -> State {
    sm.shared().read().unwrap().clone()
}

async fn read_all(f: &mut tokio::fs::File) -> Vec<u8> {
    f.seek(std::io::SeekFrom::Start(0)).await.unwrap();
    let mut v = Vec::new();
    f.read_to_end(&mut v).await.unwrap();
    v
}

/// Names in the snapshot directory, sorted.
fn snapshot_dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The state machine's sled tree of a stopped store at `dir` (once its flusher let go).
async fn sm_tree(dir: &Path) -> (sled::Db, sled::Tree) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let db = loop {
        match sled::Config::new().path(dir.join("sled")).open() {
            Ok(db) => break db,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            Err(e) => panic!("cannot open sled: {e}"),
        }
    };
    let tree = db.open_tree(super::TREE_SM).unwrap();
    (db, tree)
}

/// A node record `/stray` that no state has, written straight into the `sm` tree.
fn insert_stray(tree: &sled::Tree) {
    use crate::state::{Inode, RecordKey};
    let stray = Inode {
        id: "stray".into(),
        owner: "admin".into(),
        ..Default::default()
    };
    tree.insert(
        RecordKey::Node("/stray".into()).encode(),
        serde_json::to_vec(&stray).unwrap(),
    )
    .unwrap();
}

/// Apply `cmds` as entries numbered from `first` (each its own entry, in one apply call).
async fn apply_cmds(sm: &mut StateMachine, first: u64, cmds: Vec<crate::state::CommandV1>) {
    use crate::state::{Command, Request};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
    let entries = cmds
        .into_iter()
        .zip(first..)
        .map(|(cmd, index)| Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request {
                cmd: Command::V1(cmd),
            }),
        });
    let replies = sm.apply(entries).await.unwrap();
    for r in replies {
        r.result.unwrap();
    }
}

/// Open a store at `dir` again once the previous one's flusher thread has let go of sled.
async fn reopen(dir: &Path) -> (LogStore, StateMachine) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match open(&dir.join("sled"), &dir.join("snapshots")) {
            Ok((log, sm, _)) => return (log, sm),
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot reopen: {e}"),
        }
    }
}

/// Build on one store, stream the file in chunks the way openraft does (seek + write_all of
/// pieces into the file `begin_receiving_snapshot` gave), install on a second store: same
/// state, same snapshot bytes, and the second store reopens with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_file_round_trips_to_another_store_in_chunks() {
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let (_la, mut a) = store_with_dirs(a_dir.path(), 300).await;
    let built = a
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(built.meta.last_log_id.map(|l| l.index), Some(301));
    let mut sent = a.get_current_snapshot().await.unwrap().expect("a snapshot");
    assert_eq!(sent.meta, built.meta);
    let bytes = read_all(&mut sent.snapshot).await;
    // The data is the state's JSON and nothing else (openraft sends it by offset).
    assert_eq!(
        serde_json::from_slice::<State>(&bytes).unwrap(),
        state_of(&a)
    );

    let (_lb, mut b) = store_with_dirs(b_dir.path(), 3).await;
    let mut rx = b.begin_receiving_snapshot().await.unwrap();
    let chunk = 4096;
    let end = sent.snapshot.seek(std::io::SeekFrom::End(0)).await.unwrap();
    assert_eq!(end, bytes.len() as u64);
    let mut offset = 0u64;
    while offset < end {
        sent.snapshot
            .seek(std::io::SeekFrom::Start(offset))
            .await
            .unwrap();
        let mut buf = vec![0u8; chunk.min((end - offset) as usize)];
        sent.snapshot.read_exact(&mut buf).await.unwrap();
        rx.seek(std::io::SeekFrom::Start(offset)).await.unwrap();
        rx.write_all(&buf).await.unwrap();
        offset += buf.len() as u64;
    }
    rx.shutdown().await.unwrap();
    b.install_snapshot(&sent.meta, rx).await.unwrap();

    assert_eq!(state_of(&b), state_of(&a));
    assert_eq!(b.applied_state().await.unwrap().0, built.meta.last_log_id);
    let mut cur = b.get_current_snapshot().await.unwrap().expect("installed");
    assert_eq!(cur.meta, sent.meta);
    assert_eq!(read_all(&mut cur.snapshot).await, bytes);
    // One data file and its meta; nothing else left behind.
    assert_eq!(snapshot_dir_names(b_dir.path()).len(), 2);

    let want = state_of(&a);
    drop((_lb, b, cur));
    let (_lb, mut b) = reopen(b_dir.path()).await;
    assert_eq!(state_of(&b), want);
    assert_eq!(
        b.get_current_snapshot().await.unwrap().map(|s| s.meta),
        Some(sent.meta)
    );
}

/// A received snapshot cut short is refused with an error and changes nothing: not the state,
/// not the current snapshot; its file is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_received_snapshot_changes_nothing() {
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let (_la, mut a) = store_with_dirs(a_dir.path(), 50).await;
    a.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let mut sent = a.get_current_snapshot().await.unwrap().unwrap();
    let bytes = read_all(&mut sent.snapshot).await;

    let (_lb, mut b) = store_with_dirs(b_dir.path(), 3).await;
    let own = b
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let before = state_of(&b);
    let mut rx = b.begin_receiving_snapshot().await.unwrap();
    rx.write_all(&bytes[..bytes.len() / 2]).await.unwrap();
    rx.shutdown().await.unwrap();
    let err = b.install_snapshot(&sent.meta, rx).await.unwrap_err();
    assert!(err.to_string().contains("snapshot"), "{err}");
    assert_eq!(state_of(&b), before);
    assert_eq!(b.applied_state().await.unwrap().0.map(|l| l.index), Some(4));
    let cur = b.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(cur.meta, own.meta);
    assert_eq!(
        snapshot_dir_names(b_dir.path()).len(),
        2,
        "torn file removed"
    );
}

/// Files a crash can leave (a data file no meta names, a half-written meta temp file) are
/// removed on open, and the committed snapshot is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_a_crash_are_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let (_l, mut sm) = store_with_dirs(dir.path(), 20).await;
    let built = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let snaps = dir.path().join("snapshots");
    let committed = snapshot_dir_names(dir.path());
    std::fs::write(snaps.join("snap-0123456789abcdef"), b"{\"meta\":{\"clus").unwrap();
    std::fs::write(snaps.join(".current.meta.tmp-4242"), b"{\"me").unwrap();
    // A builder that never got to `build_snapshot` leaves nothing either.
    drop(sm.get_snapshot_builder().await);
    drop((_l, sm));
    let (_l, mut sm) = reopen(dir.path()).await;
    assert_eq!(snapshot_dir_names(dir.path()), committed);
    let mut cur = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(cur.meta, built.meta);
    let bytes = read_all(&mut cur.snapshot).await;
    assert_eq!(
        serde_json::from_slice::<State>(&bytes).unwrap(),
        state_of(&sm)
    );
}

/// Store a with 40 directories and a snapshot of them; store b with 2 directories, stopped,
/// with a's snapshot files copied into its snapshot directory: node b as a crash after it
/// committed a received snapshot left it. Returns a, the snapshot's log id and b's applied id.
async fn crashed_after_commit(
    a_dir: &Path,
    b_dir: &Path,
) -> (
    LogStore,
    StateMachine,
    Option<crate::types::LogId>,
    Option<crate::types::LogId>,
) {
    let (la, mut a) = store_with_dirs(a_dir, 40).await;
    let built = a
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let (lb, mut b) = store_with_dirs(b_dir, 2).await;
    let b_applied = b.applied_state().await.unwrap().0;
    drop((lb, b));
    for e in std::fs::read_dir(a_dir.join("snapshots")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), b_dir.join("snapshots").join(e.file_name())).unwrap();
    }
    (la, a, built.meta.last_log_id, b_applied)
}

/// A crash after a received snapshot was committed and before its records were written
/// leaves a snapshot newer than the applied id: open installs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_snapshot_newer_than_the_records_is_installed_on_open() {
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let (_la, a, snapshot, _) = crashed_after_commit(a_dir.path(), b_dir.path()).await;
    let (_lb, mut b) = reopen(b_dir.path()).await;
    assert_eq!(b.applied_state().await.unwrap().0, snapshot);
    assert_eq!(state_of(&b), state_of(&a));
}

/// A crash in the middle of writing a snapshot's records (they go in several batches, the
/// applied id last) leaves a mix: some of the snapshot's records, old records it does not have,
/// and the old applied id. The next open installs the snapshot again over that mix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_install_cut_between_record_batches_is_finished_on_open() {
    use crate::state::RecordKey;
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let (_la, a, snapshot, old_applied) = crashed_after_commit(a_dir.path(), b_dir.path()).await;
    // Half of a's records written, plus one record only the old state had.
    let all: Vec<(RecordKey, Vec<u8>)> = state_of(&a).all_records().collect();
    let (db, tree) = sm_tree(b_dir.path()).await;
    for (k, v) in &all[..all.len() / 2] {
        tree.insert(k.encode(), v.clone()).unwrap();
    }
    insert_stray(&tree);
    db.flush().unwrap();
    drop((tree, db));

    let (_lb, mut b) = reopen(b_dir.path()).await;
    assert!(old_applied < snapshot);
    assert_eq!(b.applied_state().await.unwrap().0, snapshot);
    assert_eq!(state_of(&b), state_of(&a));
    assert!(!state_of(&b).nodes.contains_key("/stray"));
    // And the records on disk are exactly the snapshot's: a second open finds the same.
    drop((_lb, b));
    let (_lb, b) = reopen(b_dir.path()).await;
    assert_eq!(state_of(&b), state_of(&a));
}

/// The previous version's `current.snap` (a line of meta, then the state) is converted on
/// open into data + meta, and served as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_previous_version_snapshot_file_is_converted() {
    let dir = tempfile::tempdir().unwrap();
    let (_l, mut sm) = store_with_dirs(dir.path(), 10).await;
    let (applied, membership) = sm.applied_state().await.unwrap();
    let meta = crate::types::SnapshotMeta {
        last_log_id: applied,
        last_membership: membership,
        snapshot_id: "1-11-old".into(),
    };
    let state = serde_json::to_vec(&state_of(&sm)).unwrap();
    let mut old = serde_json::to_vec(&meta).unwrap();
    old.push(b'\n');
    old.extend_from_slice(&state);
    drop((_l, sm));
    std::fs::write(dir.path().join("snapshots/current.snap"), old).unwrap();
    let (_l, mut sm) = reopen(dir.path()).await;
    let mut cur = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(cur.meta, meta);
    assert_eq!(read_all(&mut cur.snapshot).await, state);
    assert!(!dir.path().join("snapshots/current.snap").exists());
}

/// A snapshot being sent to a follower stays readable to the end when a newer one replaces
/// it meanwhile (its file is unlinked, not truncated), and only the newer one is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_being_sent_survives_a_newer_one() {
    use crate::state::{Command, CommandV1, Request};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
    let dir = tempfile::tempdir().unwrap();
    let (_l, mut sm) = store_with_dirs(dir.path(), 30).await;
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let mut sending = sm.get_current_snapshot().await.unwrap().unwrap();
    let want = serde_json::to_vec(&state_of(&sm)).unwrap();
    sm.apply(vec![Entry::<TypeConfig> {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), 32),
        payload: EntryPayload::Normal(Request {
            cmd: Command::V1(CommandV1::Mkdir {
                actor: "admin".into(),
                path: "/newer".into(),
                parents: false,
                id: "id-newer".into(),
                now_ms: 3,
            }),
        }),
    }])
    .await
    .unwrap();
    let newer = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(newer.meta.last_log_id.map(|l| l.index), Some(32));
    assert_eq!(read_all(&mut sending.snapshot).await, want);
    assert_eq!(snapshot_dir_names(dir.path()).len(), 2);
    let mut cur = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(cur.meta, newer.meta);
    assert_eq!(
        serde_json::from_slice::<State>(&read_all(&mut cur.snapshot).await).unwrap(),
        state_of(&sm)
    );
}

/// An apply that touches more records than one batch holds (here the rename of a directory
/// with 6,000 entries below it: 12,002 records) is written in several batches: reopened, the
/// store has exactly the state it had, and no marker is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_apply_is_written_in_batches_and_reopens_whole() {
    use crate::state::CommandV1;
    let dir = tempfile::tempdir().unwrap();
    let (_l, mut sm) = store_with_dirs(dir.path(), 1).await;
    let mkdir = |path: String| CommandV1::Mkdir {
        actor: "admin".into(),
        path,
        parents: false,
        id: "x".into(),
        now_ms: 3,
    };
    let mut cmds = vec![mkdir("/big".into())];
    cmds.extend((0..6_000).map(|i| mkdir(format!("/big/e{i:05}"))));
    apply_cmds(&mut sm, 3, cmds).await;
    apply_cmds(
        &mut sm,
        6_004,
        vec![CommandV1::Rename {
            actor: "admin".into(),
            from: "/big".into(),
            to: "/moved".into(),
            mode: crate::state::command::RenameMode::NoReplace,
            now_ms: 4,
        }],
    )
    .await;
    let before = state_of(&sm);
    assert!(before.nodes.contains_key("/moved/e05999"));
    assert!(!before.nodes.contains_key("/big/e00000"));
    let applied = sm.applied_state().await.unwrap().0;
    drop((_l, sm));
    let (db, tree) = sm_tree(dir.path()).await;
    assert_eq!(
        tree.get(super::state_machine::KEY_UNFINISHED).unwrap(),
        None
    );
    drop((tree, db));
    let (_l, mut sm) = reopen(dir.path()).await;
    assert_eq!(sm.applied_state().await.unwrap().0, applied);
    assert_eq!(state_of(&sm), before);
}

/// A crash in the middle of a large apply leaves its marker and a mix of records: open throws
/// the mix away and rebuilds the records from the current snapshot, with its applied id (the
/// log after it is applied again by openraft).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_cut_between_batches_is_rebuilt_from_the_snapshot_on_open() {
    use crate::state::CommandV1;
    let dir = tempfile::tempdir().unwrap();
    let (_l, mut sm) = store_with_dirs(dir.path(), 40).await;
    let snapshot = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let at_snapshot = state_of(&sm);
    apply_cmds(
        &mut sm,
        42,
        vec![CommandV1::Mkdir {
            actor: "admin".into(),
            path: "/later".into(),
            parents: false,
            id: "later".into(),
            now_ms: 5,
        }],
    )
    .await;
    drop((_l, sm));
    let (db, tree) = sm_tree(dir.path()).await;
    tree.insert(super::state_machine::KEY_UNFINISHED, b"cut".to_vec())
        .unwrap();
    insert_stray(&tree);
    db.flush().unwrap();
    drop((tree, db));

    let (_l, mut sm) = reopen(dir.path()).await;
    assert_eq!(
        sm.applied_state().await.unwrap().0,
        snapshot.meta.last_log_id
    );
    assert_eq!(state_of(&sm), at_snapshot);
    // The records on disk are the snapshot's, the marker gone: a second open finds the same.
    drop((_l, sm));
    let (db, tree) = sm_tree(dir.path()).await;
    assert_eq!(
        tree.get(super::state_machine::KEY_UNFINISHED).unwrap(),
        None
    );
    drop((tree, db));
    let (_l, sm) = reopen(dir.path()).await;
    assert_eq!(state_of(&sm), at_snapshot);
}

/// The same crash before any snapshot was taken: the records are rebuilt from nothing, and
/// openraft applies the whole log again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_cut_before_any_snapshot_starts_the_records_from_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_l, sm) = store_with_dirs(dir.path(), 3).await;
    drop((_l, sm));
    let (db, tree) = sm_tree(dir.path()).await;
    tree.insert(super::state_machine::KEY_UNFINISHED, b"cut".to_vec())
        .unwrap();
    db.flush().unwrap();
    drop((tree, db));
    let (_l, mut sm) = reopen(dir.path()).await;
    assert_eq!(sm.applied_state().await.unwrap().0, None);
    assert_eq!(state_of(&sm), State::default());
}
