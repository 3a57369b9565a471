//! The leader forgets expired write leases: the chunks of a write whose writer went silent
//! become ordinary orphans (collected by `admin gc` after the full orphan grace).
//!
//! What must stay true: only the leader proposes, with its own clock in the command, so every
//! member drops the same leases; expiry is decided by the state's `expires_ms`, which the
//! commit and the orphan collector also use, so dropping a lease changes nothing they decide.
use crate::service::{now_ms, MetaNode};
use crate::state::command::{CommandV1, Reply};
use crate::state::Command;
use std::sync::Arc;
use std::time::Duration;

pub async fn run(node: Arc<MetaNode>) {
    let every =
        (node.config.lease_timeout / 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        tokio::time::sleep(every).await;
        if !node.is_leader() {
            continue;
        }
        let now = now_ms();
        let (expired, chunks) = node
            .read_state()
            .leases
            .values()
            .filter(|l| l.expires_ms < now)
            .fold((0u64, 0u64), |(n, c), l| (n + 1, c + l.chunks.len() as u64));
        if expired == 0 {
            continue;
        }
        match node
            .propose(Command::V1(CommandV1::DropExpiredLeases { now_ms: now }))
            .await
        {
            Ok(Reply::Removed { count }) if count > 0 => {
                node.metrics.leases_expired.inc_by(count);
                node.metrics.lease_chunks_released.inc_by(chunks);
                tracing::info!(
                    leases = count,
                    chunks,
                    "write leases expired; their chunks are orphans now"
                );
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = ?e, "dropping expired write leases failed; trying again later")
            }
        }
    }
}
