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
