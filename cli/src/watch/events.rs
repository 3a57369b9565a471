//! Filesystem events → hints for the watcher loop. The debouncer (notify-debouncer-full)
//! watches the local root recursively, merges bursts and pairs the two halves of a rename;
//! its results go through an unbounded channel to the async loop.
//!
//! What must stay true: events are only hints. Any event makes the loop walk the tree again
//! (the walk decides what changed); paired renames let it rename remotely instead of putting
//! the bytes again; an overflow (`need_rescan`) or a watch error asks for a full rescan with a
//! fresh remote listing. Nothing here decides to upload or delete.
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

/// What a batch of events says.
#[derive(Debug, Default)]
pub struct Hints {
    /// Something changed: walk again.
    pub any: bool,
    /// Renames the debouncer paired: (from, to), absolute paths.
    pub renames: Vec<(PathBuf, PathBuf)>,
    /// Events were lost or the watch failed: rescan (remote listing too).
    pub rescan: bool,
    /// Error messages (watch errors), said once each.
    pub errors: Vec<String>,
}

impl Hints {
    /// Add a batch. `relevant`: whether a path is watched (not excluded, not the watcher's
    /// own state); events only about other paths, and reads (opens and closes without a
    /// write), are dropped, so the
    /// watcher's own manifest writes and file reads do not wake it again and again.
    pub fn merge(&mut self, r: DebounceEventResult, relevant: impl Fn(&Path) -> bool) {
        match r {
            Ok(events) => {
                for ev in events {
                    if ev.event.need_rescan() {
                        self.rescan = true;
                        self.any = true;
                    }
                    let read_only = matches!(ev.event.kind, EventKind::Access(a)
                        if a != AccessKind::Close(AccessMode::Write));
                    if read_only || !ev.event.paths.iter().any(|p| relevant(p)) {
                        continue;
                    }
                    self.any = true;
                    if let EventKind::Modify(ModifyKind::Name(RenameMode::Both)) = ev.event.kind {
                        if let [from, to] = &ev.event.paths[..] {
                            self.renames.push((from.clone(), to.clone()));
                        }
                    }
                }
            }
            Err(errs) => {
                self.any = true;
                self.rescan = true;
                self.errors.extend(errs.into_iter().map(|e| e.to_string()));
            }
        }
    }
}

pub type Watcher = Debouncer<notify::RecommendedWatcher, RecommendedCache>;

/// Watch `root` recursively; debounced results arrive on the returned channel.
pub fn watch(
    root: &Path,
    debounce: Duration,
) -> anyhow::Result<(Watcher, mpsc::UnboundedReceiver<DebounceEventResult>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut d = new_debouncer(debounce, None, move |r: DebounceEventResult| {
        // The loop gone means the watcher is stopping: nothing to tell.
        let _ = tx.send(r);
    })?;
    d.watch(root, RecursiveMode::Recursive)?;
    Ok((d, rx))
}
