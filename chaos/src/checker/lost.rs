//! No lost write: every acknowledged put is readable, with exactly its bytes, at the end of the
//! run, unless an operation that could come after it (invoked before it completed or later,
//! acknowledged or unknown) removed, replaced or moved it; every unknown put is either whole or
//! absent (never metadata without its bytes).
//!
//! The final state comes from the final reads made after healing (`final_read` ops): a
//! linearizable `get` of every file path of every group, and of every write-once put that may
//! have been applied, bytes included. A write-once put is never destroyed by a later
//! operation, so an acknowledged one that is not there whole is lost, whatever the timing.
use crate::history::{Kind, Op, Outcome, Seen};
use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostWrite {
    pub op: u64,
    pub path: String,
    pub content: String,
    /// What the end state holds at that path.
    pub found: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LostReport {
    pub checked: usize,
    /// Of those, write-once puts (paths of their own in the ledger).
    pub write_once: usize,
    pub lost: Vec<LostWrite>,
    /// Paths whose final state could not be read (the check cannot vouch for them).
    pub unreadable: Vec<String>,
}

impl LostReport {
    pub fn pass(&self) -> bool {
        self.lost.is_empty() && self.unreadable.is_empty()
    }
}

/// Final state of one path: the metadata's answer, and the sha256 of the bytes read (None if
/// they could not be read).
struct Final<'a> {
    seen: &'a Seen,
    bytes: Option<&'a str>,
}

fn describe(f: Option<&Final>) -> String {
    match f {
        None => "no final read".into(),
        Some(f) => match (f.seen, f.bytes) {
            (Seen::Absent, _) => "absent".into(),
            (Seen::Dir, _) => "a directory".into(),
            (Seen::File { sha256, .. }, Some(b)) if b == sha256 => format!("file {sha256}"),
            (Seen::File { sha256, .. }, _) => {
                format!("file {sha256} whose bytes cannot be read")
            }
            (Seen::Listing { .. }, _) => "a listing".into(),
        },
    }
}

/// Could `d` remove, replace or move what a put to its path wrote (if it came after it)?
fn destroys(d: &Op) -> bool {
    if d.outcome == Outcome::Failed || d.final_read {
        return false;
    }
    match d.kind {
        Kind::Put => d.force,
        Kind::Rm | Kind::Mv => true,
        _ => false,
    }
}

pub fn check(ops: &[Op]) -> LostReport {
    let mut report = LostReport::default();
    let mut finals: HashMap<&str, Final> = HashMap::new();
    for o in ops.iter().filter(|o| o.final_read && o.kind == Kind::Get) {
        match &o.seen {
            Some(seen) if o.outcome == Outcome::Ok => {
                finals.insert(
                    &o.path,
                    Final {
                        seen,
                        bytes: o.bytes_sha256.as_deref(),
                    },
                );
            }
            _ => report.unreadable.push(o.path.clone()),
        }
    }
    // Contents present, whole, somewhere in each group at the end.
    let mut whole: HashSet<(u32, &str)> = HashSet::new();
    let group_of: HashMap<&str, u32> = ops
        .iter()
        .filter(|o| o.final_read)
        .map(|o| (o.path.as_str(), o.group))
        .collect();
    for (path, f) in &finals {
        if let (Seen::File { sha256, .. }, Some(b)) = (f.seen, f.bytes) {
            if b == sha256 {
                whole.insert((group_of[path], sha256.as_str()));
            }
        }
    }
    // Contents some final read's metadata names but whose bytes it could not read whole (a
    // set, not a scan of the final reads per put: a long run has tens of thousands of each).
    let mut named_not_whole: HashSet<(u32, &str)> = HashSet::new();
    for (path, f) in &finals {
        if let Seen::File { sha256, .. } = f.seen {
            if f.bytes != Some(sha256.as_str()) {
                named_not_whole.insert((group_of[path], sha256.as_str()));
            }
        }
    }
    // Per path, the two latest-completing operations that could destroy a file there.
    let mut latest: HashMap<&str, [(u64, u64); 2]> = HashMap::new();
    for d in ops.iter().filter(|d| destroys(d)) {
        let e = latest.entry(d.path.as_str()).or_insert([(0, u64::MAX); 2]);
        let v = (d.complete_us, d.id);
        if e[0].1 == u64::MAX || v.0 >= e[0].0 {
            e[1] = e[0];
            e[0] = v;
        } else if e[1].1 == u64::MAX || v.0 >= e[1].0 {
            e[1] = v;
        }
    }
    // Something could come after `w` and destroy it: it completed after `w` was invoked.
    let destroyed_later = |w: &Op| {
        latest.get(w.path.as_str()).is_some_and(|top| {
            top.iter()
                .any(|(t, id)| *id != u64::MAX && *id != w.id && *t >= w.invoke_us)
        })
    };
    let puts: Vec<&Op> = ops
        .iter()
        .filter(|o| o.kind == Kind::Put && !o.final_read)
        .collect();
    for w in &puts {
        let Some(content) = w.content.as_deref() else {
            continue;
        };
        let at_path = finals.get(w.path.as_str());
        // Metadata names this content but its bytes are gone: lost, whatever came later
        // (an unknown put must be whole or absent, an acknowledged one whole).
        let broken =
            named_not_whole.contains(&(w.group, content)) && !whole.contains(&(w.group, content));
        match w.outcome {
            Outcome::Ok => {
                report.checked += 1;
                report.write_once += usize::from(w.write_once);
                if whole.contains(&(w.group, content)) {
                    continue;
                }
                if broken || !destroyed_later(w) {
                    report.lost.push(LostWrite {
                        op: w.id,
                        path: w.path.clone(),
                        content: content.to_string(),
                        found: describe(at_path),
                    });
                }
            }
            Outcome::Unknown if broken => report.lost.push(LostWrite {
                op: w.id,
                path: w.path.clone(),
                content: content.to_string(),
                found: format!(
                    "{} (an unknown put must be whole or absent)",
                    describe(at_path)
                ),
            }),
            _ => {}
        }
    }
    report.unreadable.sort();
    report.unreadable.dedup();
    report
}
