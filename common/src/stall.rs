//! Stall guard for data transfers: a transfer marks progress whenever bytes move; a transfer
//! that makes no progress for the stall timeout is abandoned with an error naming the peer, so
//! a frozen peer (SIGSTOP, hung disk) cannot hang the caller. What must stay true: the guard
//! only ever fails a transfer, it never reports one as done; progress is marked on every piece
//! handed to the peer, so a slow but moving transfer is never abandoned.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a chunk transfer may make no progress before it is given up.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A shared progress mark (milliseconds since the mark was created).
#[derive(Clone)]
pub struct Progress {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Progress {
    /// Note that bytes moved now.
    pub fn mark(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Time since the last progress.
    pub fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// Run `fut`, giving up with `Err(idle)` when `progress` has not moved for `stall`.
pub async fn guard<F: std::future::Future>(
    progress: &Progress,
    stall: Duration,
    fut: F,
) -> Result<F::Output, Duration> {
    tokio::pin!(fut);
    let mut tick = tokio::time::interval(Duration::from_millis(250).min(stall));
    loop {
        tokio::select! {
            out = &mut fut => return Ok(out),
            _ = tick.tick() => {
                let idle = progress.idle();
                if idle >= stall {
                    return Err(idle);
                }
            }
        }
    }
}
