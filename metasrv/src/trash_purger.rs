//! The leader's trash retention: entries deleted longer ago than `--trash-retention` are
//! removed for good, `PURGE_BATCH` entries per Raft command, and their chunks queued for
//! deletion like any removed file's.
//!
//! What must stay true: only the leader proposes a purge, and each command carries its own
//! cutoff, so every member removes the same entries; a new leader simply goes on where the
//! last one stopped (the deletion times are in the replicated state, not in this task).
use crate::service::{now_ms, MetaNode};
use crate::state::command::{CommandV1, Reply};
use crate::state::trash::PURGE_BATCH;
use crate::state::Command;
use std::sync::Arc;
use std::time::Duration;

/// How often the leader looks, given the retention: often enough that nothing stays much
/// past it, never more than once a second or less than once a minute.
fn interval(retention: Duration) -> Duration {
    (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

pub async fn run(node: Arc<MetaNode>) {
    let retention = node.config.trash_retention;
    let retention_ms = retention.as_millis().min(i64::MAX as u128) as i64;
    loop {
        tokio::time::sleep(interval(retention)).await;
        if !node.is_leader()
            || !node
                .read_state()
                .nodes
                .contains_key(crate::state::trash::TRASH)
        {
            continue;
        }
        let now = now_ms();
        loop {
            let cmd = Command::V1(CommandV1::PurgeTrash {
                user: None,
                cutoff_ms: now.saturating_sub(retention_ms),
                limit: PURGE_BATCH,
                now_ms: now,
            });
            match node.propose(cmd).await {
                Ok(Reply::Removed { count }) => {
                    if count > 0 {
                        node.metrics.trash_purged.inc_by(count);
                        tracing::info!(count, "purged expired entries from the trash");
                    }
                    if count < PURGE_BATCH {
                        break;
                    }
                }
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = ?e, "trash purge failed; trying again later");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::interval;
    use std::time::Duration;

    #[test]
    fn interval_is_bounded() {
        assert_eq!(interval(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(interval(Duration::from_secs(8)), Duration::from_secs(2));
        assert_eq!(
            interval(Duration::from_secs(86_400)),
            Duration::from_secs(60)
        );
    }
}
