//! Convergence: once healed and quiet, every metadata member has applied the same log index and
//! holds the same state: byte-identical `cache-metadata/saved-files.json` and the same listing
//! of the whole namespace from its own state. Replication: every file has its replication
//! factor again (the leader's count of under-replicated files is zero). A node whose log shows
//! a panic fails convergence too: a server must refuse or stop cleanly, never panic; and so
//! does a node that would not start again after a fault (it must recover from what its disk
//! holds).
use crate::history::Convergence;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConvergenceReport {
    pub pass: bool,
    pub applied: Option<u64>,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicationReport {
    pub pass: bool,
    pub under_replicated_files: Option<u64>,
}

fn agree<T: PartialEq + std::fmt::Debug + Clone>(
    what: &str,
    m: &BTreeMap<String, Option<T>>,
    problems: &mut Vec<String>,
) -> Option<T> {
    if m.is_empty() {
        problems.push(format!("no member reported its {what}"));
        return None;
    }
    let missing: Vec<&String> = m
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(k, _)| k)
        .collect();
    if !missing.is_empty() {
        problems.push(format!("{what} unknown on {missing:?}"));
        return None;
    }
    let first = m.values().next().cloned().flatten();
    if m.values().any(|v| *v != first) {
        problems.push(format!("members disagree on {what}: {m:?}"));
        return None;
    }
    first
}

pub fn check(c: Option<&Convergence>) -> (ConvergenceReport, ReplicationReport) {
    let Some(c) = c else {
        return (
            ConvergenceReport {
                pass: false,
                applied: None,
                problems: vec!["the history has no convergence record (run cut short?)".into()],
            },
            ReplicationReport::default(),
        );
    };
    let mut problems = Vec::new();
    let applied = agree("applied index", &c.applied, &mut problems);
    agree("saved-files.json", &c.saved_files, &mut problems);
    agree("namespace", &c.namespace, &mut problems);
    for (node, why) in &c.unrecovered {
        problems.push(format!("{node} did not start again after a fault: {why}"));
    }
    for (node, line) in &c.panics {
        problems.push(format!("{node} panicked: {line}"));
    }
    if !c.note.is_empty() && !problems.is_empty() {
        problems.push(c.note.clone());
    }
    (
        ConvergenceReport {
            pass: problems.is_empty(),
            applied,
            problems,
        },
        ReplicationReport {
            pass: c.under_replicated_files == Some(0),
            under_replicated_files: c.under_replicated_files,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_in_a_node_log_fails_convergence() {
        let one = |v: &str| BTreeMap::from([("meta-1".to_string(), Some(v.to_string()))]);
        let mut c = Convergence {
            applied: BTreeMap::from([("meta-1".to_string(), Some(7))]),
            saved_files: one("a"),
            namespace: one("b"),
            under_replicated_files: Some(0),
            ..Default::default()
        };
        assert!(check(Some(&c)).0.pass);
        c.panics.insert(
            "chunk-2".into(),
            "thread 'main' panicked at src/x.rs:1:1".into(),
        );
        let (r, _) = check(Some(&c));
        assert!(!r.pass);
        assert!(r.problems[0].starts_with("chunk-2 panicked"), "{r:?}");
    }

    #[test]
    fn a_node_that_did_not_start_again_fails_convergence() {
        let one = |v: &str| BTreeMap::from([("meta-1".to_string(), Some(v.to_string()))]);
        let c = Convergence {
            applied: BTreeMap::from([("meta-1".to_string(), Some(7))]),
            saved_files: one("a"),
            namespace: one("b"),
            under_replicated_files: Some(0),
            unrecovered: BTreeMap::from([("meta-2".into(), "exited while starting".into())]),
            ..Default::default()
        };
        let (r, _) = check(Some(&c));
        assert!(!r.pass);
        assert!(
            r.problems[0].starts_with("meta-2 did not start again"),
            "{r:?}"
        );
    }
}
