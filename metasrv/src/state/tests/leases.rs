//! Write leases: a long write's chunks stay committable while its lease lives, never after.
use super::*;

fn renew(
    s: &mut State,
    who: &str,
    id: &str,
    create: bool,
    chunks: &[&str],
    now: i64,
) -> Result<Reply, ApplyError> {
    run(
        s,
        CommandV1::RenewLease {
            actor: who.into(),
            lease: id.into(),
            path: "/big".into(),
            create,
            chunks: chunks.iter().map(|c| c.to_string()).collect(),
            now_ms: now,
            expires_ms: now + 100,
        },
    )
}

fn commit_leased(s: &mut State, who: &str, lease: &str, now: i64) -> Result<Reply, ApplyError> {
    let mut f = file(10);
    f.chunks[0].id = "c1".into();
    run(
        s,
        CommandV1::CommitFile {
            actor: who.into(),
            path: "/big".into(),
            overwrite: true,
            file: f,
            id: "f".into(),
            now_ms: now,
            kept: vec![],
            mode: None,
            lease: lease.into(),
            leased: vec!["c1".into()],
        },
    )
}

#[test]
fn a_live_lease_carries_a_commit_and_is_released_by_it() {
    let mut s = state();
    assert_eq!(
        kind(renew(&mut s, "alice", "L", false, &["c1"], 1000)),
        ErrorKind::FailedPrecondition
    );
    renew(&mut s, "alice", "L", true, &["c1"], 1000).unwrap();
    renew(&mut s, "alice", "L", false, &["c2"], 1050).unwrap();
    assert_eq!(s.leases["L"].expires_ms, 1150);
    assert!(s.leased_chunks(1100).contains("c1"));
    assert_eq!(s.lease_stats(1100), (1, 1000));
    // Someone else's lease is not theirs to renew or commit under.
    assert_eq!(
        kind(renew(&mut s, "bob", "L", true, &["x"], 1060)),
        ErrorKind::PermissionDenied
    );
    assert_eq!(
        kind(commit_leased(&mut s, "bob", "L", 1060)),
        ErrorKind::PermissionDenied
    );
    commit_leased(&mut s, "alice", "L", 1100).unwrap();
    assert_eq!(s.nodes["/big"].file.as_ref().unwrap().chunks[0].id, "c1");
    // A file kept open is committed again with the same chunks.
    commit_leased(&mut s, "alice", "L", 1120).unwrap();
    // Only its writer ends it.
    run(
        &mut s,
        CommandV1::ReleaseLease {
            actor: "bob".into(),
            lease: "L".into(),
        },
    )
    .unwrap();
    assert_eq!(s.leases.len(), 1);
    run(
        &mut s,
        CommandV1::ReleaseLease {
            actor: "alice".into(),
            lease: "L".into(),
        },
    )
    .unwrap();
    assert!(s.leases.is_empty());
}

#[test]
fn an_expired_lease_never_comes_back_and_carries_no_commit() {
    let mut s = state();
    renew(&mut s, "alice", "L", true, &["c1"], 1000).unwrap();
    assert!(
        s.leased_chunks(1101).is_empty(),
        "expired: its chunks are orphans again"
    );
    assert_eq!(
        kind(commit_leased(&mut s, "alice", "L", 1101)),
        ErrorKind::FailedPrecondition
    );
    assert_eq!(
        kind(renew(&mut s, "alice", "L", false, &[], 1101)),
        ErrorKind::FailedPrecondition
    );
    assert_eq!(
        kind(renew(&mut s, "alice", "L", true, &[], 1101)),
        ErrorKind::FailedPrecondition
    );
    assert_eq!(
        run(&mut s, CommandV1::DropExpiredLeases { now_ms: 1101 }).unwrap(),
        Reply::Removed { count: 1 }
    );
    assert!(s.leases.is_empty());
    // A chunk the lease never held is refused even under a live lease.
    renew(&mut s, "alice", "M", true, &["other"], 2000).unwrap();
    assert_eq!(
        kind(commit_leased(&mut s, "alice", "M", 2001)),
        ErrorKind::PermissionDenied
    );
    assert!(!s.nodes.contains_key("/big"));
}
