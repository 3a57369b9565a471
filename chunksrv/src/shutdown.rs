//! The process-wide stop signal: a `watch` channel that turns `true` once, on SIGTERM/SIGINT.
//!
//! What must stay true: waiting on it returns as soon as the value is (or already was)
//! `true`, or when the sender is gone, so no task outlives a shutdown by waiting here.
use tokio::sync::watch;

/// Resolve once a stop was requested (or nobody can request one any more).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}
