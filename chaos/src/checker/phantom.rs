//! No phantom reads: every content a read returned (bytes of a get; the sha256 that get, stat or
//! ls reported) was written by a put to that group (mv never leaves a group) that was invoked
//! before the read completed and was not reported as failed. A content only a failed put wrote
//! means a put reported as "definitely not applied" was applied. A get whose bytes did not
//! match the file's sha256 (dfsctl refuses them) is reported too: the servers handed out bytes
//! no put wrote.
use crate::history::{Entry, Kind, Op, Outcome, Seen};
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phantom {
    pub op: u64,
    pub path: String,
    pub content: String,
    pub why: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PhantomReport {
    pub reads_checked: usize,
    pub phantoms: Vec<Phantom>,
}

impl PhantomReport {
    pub fn pass(&self) -> bool {
        self.phantoms.is_empty()
    }
}

/// Contents a read reported: (sha256, from the bytes themselves).
fn contents(o: &Op) -> Vec<(&str, bool)> {
    let mut out = Vec::new();
    match &o.seen {
        Some(Seen::File { sha256, .. }) => out.push((sha256.as_str(), false)),
        Some(Seen::Listing { entries }) => {
            for e in entries.values() {
                if let Entry::File { sha256 } = e {
                    out.push((sha256.as_str(), false));
                }
            }
        }
        _ => {}
    }
    if let Some(b) = &o.bytes_sha256 {
        out.push((b.as_str(), true));
    }
    out
}

/// Earliest invocation of a put that may have written a content, and of one reported failed.
type Writers = (Option<u64>, Option<u64>);

pub fn check(ops: &[Op]) -> PhantomReport {
    // (group, sha256) -> its writers.
    let mut writers: HashMap<(u32, &str), Writers> = HashMap::new();
    for p in ops.iter().filter(|o| o.kind == Kind::Put && !o.final_read) {
        let Some(c) = p.content.as_deref() else {
            continue;
        };
        let e = writers.entry((p.group, c)).or_default();
        let slot = if p.outcome == Outcome::Failed {
            &mut e.1
        } else {
            &mut e.0
        };
        *slot = Some(slot.map_or(p.invoke_us, |t| t.min(p.invoke_us)));
    }
    let mut report = PhantomReport::default();
    for o in ops
        .iter()
        .filter(|o| !o.kind.is_write() && o.outcome == Outcome::Ok)
    {
        report.reads_checked += 1;
        for (sha, from_bytes) in contents(o) {
            let (maybe, failed) = writers.get(&(o.group, sha)).copied().unwrap_or_default();
            let why = match (maybe, failed) {
                (Some(t), _) if t <= o.complete_us => continue,
                (Some(_), _) => "the only put that wrote it started after the read ended",
                (None, Some(t)) if t <= o.complete_us => {
                    "only a put reported as failed (definitely not applied) wrote it"
                }
                _ => "no put wrote it",
            };
            report.phantoms.push(Phantom {
                op: o.id,
                path: o.path.clone(),
                content: sha.to_string(),
                why: format!(
                    "{} returned {}: {why}",
                    o.kind.name(),
                    if from_bytes { "bytes" } else { "a sha256" }
                ),
            });
        }
        if let Some(e) = &o.data_error {
            if e.contains("sha256 of the bytes read") {
                report.phantoms.push(Phantom {
                    op: o.id,
                    path: o.path.clone(),
                    content: String::new(),
                    why: format!("get was served bytes that do not match the file: {e}"),
                });
            }
        }
    }
    report
}
