//! The history: every operation with its invoke and completion time, arguments and outcome,
//! every fault the nemesis injected, and what the cluster looked like after healing. Written as
//! JSON lines while the run goes (one record per line, flushed), read back for checking, and
//! kept, so `chaos --replay FILE` runs the checkers on it again.
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("cannot write the history {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the history {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: not a history record: {source}")]
    Parse {
        path: PathBuf,
        line: usize,
        source: serde_json::Error,
    },
}

/// What a client did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Put,
    Get,
    Stat,
    Ls,
    Mv,
    Rm,
    Mkdir,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Put,
        Kind::Get,
        Kind::Stat,
        Kind::Ls,
        Kind::Mv,
        Kind::Rm,
        Kind::Mkdir,
    ];

    pub fn is_write(self) -> bool {
        matches!(self, Kind::Put | Kind::Mv | Kind::Rm | Kind::Mkdir)
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Put => "put",
            Kind::Get => "get",
            Kind::Stat => "stat",
            Kind::Ls => "ls",
            Kind::Mv => "mv",
            Kind::Rm => "rm",
            Kind::Mkdir => "mkdir",
        }
    }
}

/// ok: acknowledged (for reads: answered, "not found" included); failed: definitely not
/// applied; unknown: may or may not have happened (timed out, or an error after a retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Failed,
    Unknown,
}

/// What one entry of a directory listing was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "t")]
pub enum Entry {
    Dir,
    File { sha256: String },
}

/// What a read saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "t")]
pub enum Seen {
    Absent,
    Dir,
    File {
        sha256: String,
        size: u64,
    },
    /// `ls` of a group directory: entry name -> what it is.
    Listing {
        entries: BTreeMap<String, Entry>,
    },
}

/// Where a put stopped: allocation and uploads change nothing visible; only the commit does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Allocate,
    Upload,
    Commit,
}

/// Status code names written for answers that are not "ok".
pub mod code {
    pub const OK: &str = "ok";
    pub const NOT_FOUND: &str = "not_found";
    pub const ALREADY_EXISTS: &str = "already_exists";
    pub const FAILED_PRECONDITION: &str = "failed_precondition";
    pub const TIMEOUT: &str = "timeout";
    pub const UPLOAD: &str = "upload";
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One client operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    pub id: u64,
    /// Client number; -1 for the final reads made after healing.
    pub client: i32,
    pub kind: Kind,
    /// Paths of one group are only ever touched together (mv stays inside a group).
    pub group: u32,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub force: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub recursive: bool,
    /// put: size and sha256 of the bytes written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Microseconds since the run started.
    pub invoke_us: u64,
    pub complete_us: u64,
    pub outcome: Outcome,
    /// "ok", or the gRPC code name of the error (`not_found`, `unavailable`, ...), or
    /// `timeout` / `upload`.
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Reads: what the metadata said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen: Option<Seen>,
    /// get: sha256 of the bytes read (set only when every byte was read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_sha256: Option<String>,
    /// get: the metadata answered but the bytes could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_error: Option<String>,
    /// get: the data error was the file being removed or replaced during the read.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub overtaken: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// RPC attempts of the deciding call (MetaConn moves to another node on "unavailable").
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "is_false")]
    pub final_read: bool,
    /// A put to a path of its own in the ledger (`/chaos/ledger/<op id>`), never touched again
    /// but by the final read: what it wrote must be there at the end. Not in any group's
    /// linearizability check.
    #[serde(default, skip_serializing_if = "is_false")]
    pub write_once: bool,
}

impl Op {
    /// A blank operation; the workload and the tests fill in the rest.
    pub fn new(id: u64, client: i32, kind: Kind, group: u32, path: &str) -> Op {
        Op {
            id,
            client,
            kind,
            group,
            path: path.to_string(),
            to: None,
            force: false,
            recursive: false,
            size: None,
            content: None,
            invoke_us: 0,
            complete_us: 0,
            outcome: Outcome::Unknown,
            code: code::TIMEOUT.into(),
            phase: None,
            seen: None,
            bytes_sha256: None,
            data_error: None,
            overtaken: false,
            error: None,
            attempts: 0,
            final_read: false,
            write_once: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// SIGKILL of the current metadata leader.
    KillLeader,
    /// SIGKILL of two of three metadata nodes (the leader among them).
    KillMajority,
    /// SIGKILL of a chunk server.
    KillChunk,
    /// SIGKILL of a chunk server that is never started again (its disk is gone).
    LoseChunk,
    /// SIGSTOP of the current leader.
    Pause,
    /// SIGSTOP of a chunk server while the workload writes (sockets stay open, nothing answers).
    FreezeChunk,
    /// Every packet addressed to a metadata node's listen port dropped (nftables, in the run's
    /// private network namespace); its own outgoing connections keep working.
    Cut,
    /// The cut undone (the rule deleted).
    Uncut,
    /// Packets between chosen nodes dropped, in one or both directions (nftables, each node on
    /// a loopback address of its own). `nodes` are the ones cut off from the side that keeps a
    /// majority of the metadata group; the note says which links.
    Partition,
    /// The partition undone (the rules deleted); names the same nodes.
    Heal,
    /// A power cut: the nodes SIGKILLed, then every byte they wrote and did not fsync dropped
    /// (their data directories are on powerfs); restarted later (`restart`).
    PowerCut,
    /// A node's disk made to fail (its powerfs: EIO on reads or writes, or full); the note
    /// says how.
    DiskFault,
    /// The disk fault undone; the note says whether the node had exited and was restarted.
    DiskHeal,
    /// SIGCONT of a paused node.
    Resume,
    /// A killed node started again.
    Restart,
    /// A node that would not start again after a fault: given up, never started again.
    Unrecovered,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    pub kind: FaultKind,
    pub nodes: Vec<String>,
    /// When the fault took effect (for kills: when the process was seen dead).
    pub at_us: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What the cluster looked like once healed and quiet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Convergence {
    /// Member name -> applied log index (None: did not answer).
    pub applied: BTreeMap<String, Option<u64>>,
    /// Member name -> sha256 of its `cache-metadata/saved-files.json` (None: unreadable).
    pub saved_files: BTreeMap<String, Option<String>>,
    /// Member name -> sha256 of its own (stale) recursive listing of `/`.
    pub namespace: BTreeMap<String, Option<String>>,
    /// Files with fewer replicas than their replication factor, as the leader counts them.
    pub under_replicated_files: Option<u64>,
    /// Milliseconds spent waiting for the members to agree.
    pub waited_ms: u64,
    /// Node -> why it could not be started again, for each node given up after a fault.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unrecovered: BTreeMap<String, String>,
    /// Node -> the first panic in its log, for each node whose log has one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub panics: BTreeMap<String, String>,
    pub note: String,
}

/// The run's settings, first line of the history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInfo {
    pub started: String,
    pub duration_s: u64,
    pub clients: usize,
    pub groups: u32,
    pub metas: u32,
    pub chunks: u32,
    pub chunk_size: u64,
    pub kill_leader_every_s: u64,
    pub chunk_kills: bool,
    /// One chunk server killed for good partway through.
    #[serde(default)]
    pub lose_chunk_server: bool,
    pub pauses: bool,
    pub majority_kills: bool,
    /// SIGSTOP of a chunk server in the rotation of other faults.
    #[serde(default)]
    pub chunk_freezes: bool,
    /// One-way cuts of a metadata node's inbound traffic in the rotation of other faults.
    #[serde(default)]
    pub cuts: bool,
    /// Partitions between nodes in the rotation of other faults.
    #[serde(default)]
    pub partitions: bool,
    /// Power cuts of one node or the whole cluster in the rotation of other faults.
    #[serde(default)]
    pub power_cuts: bool,
    /// Failing disks (EIO, full) in the rotation of other faults.
    #[serde(default)]
    pub disk_faults: bool,
    /// The bug planted in every metasrv or chunksrv (`--plant-bug`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planted_bug: Option<String>,
    /// Replication factor of the files written (0 in older histories: the default).
    #[serde(default)]
    pub replication: u32,
    /// Bound of the availability checker (0 in older histories: the default).
    #[serde(default)]
    pub max_unavailable_ms: u64,
    pub cluster_dir: String,
    /// Grace after an unknown operation's completion during which it may still take effect
    /// (the checker falls back to "forever" before reporting a violation).
    pub unknown_grace_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    Run(RunInfo),
    Op(Op),
    Fault(Fault),
    Convergence(Convergence),
}

/// Microseconds since the run started.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn start() -> Clock {
        Clock {
            start: Instant::now(),
        }
    }

    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

/// The history file being written; shared by the workload and the nemesis.
pub struct HistoryWriter {
    path: PathBuf,
    out: Mutex<std::io::BufWriter<std::fs::File>>,
}

impl HistoryWriter {
    pub fn create(path: &Path) -> Result<HistoryWriter, HistoryError> {
        let file = std::fs::File::create(path).map_err(|source| HistoryError::Write {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(HistoryWriter {
            path: path.to_path_buf(),
            out: Mutex::new(std::io::BufWriter::new(file)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one record and flush it, so a crash of chaos itself loses nothing recorded.
    pub fn write(&self, r: &Record) -> Result<(), HistoryError> {
        let line = serde_json::to_string(r).expect("history records always serialize");
        let mut g = self.out.lock().unwrap_or_else(|p| p.into_inner());
        writeln!(g, "{line}")
            .and_then(|_| g.flush())
            .map_err(|source| HistoryError::Write {
                path: self.path.clone(),
                source,
            })
    }
}

/// Everything a history file holds, split by record type.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub run: Option<RunInfo>,
    pub ops: Vec<Op>,
    pub faults: Vec<Fault>,
    pub convergence: Option<Convergence>,
}

impl History {
    pub fn from_records(records: impl IntoIterator<Item = Record>) -> History {
        let mut h = History::default();
        for r in records {
            match r {
                Record::Run(i) => h.run = Some(i),
                Record::Op(o) => h.ops.push(o),
                Record::Fault(f) => h.faults.push(f),
                Record::Convergence(c) => h.convergence = Some(c),
            }
        }
        h
    }

    pub fn read(path: &Path) -> Result<History, HistoryError> {
        let file = std::fs::File::open(path).map_err(|source| HistoryError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut records = Vec::new();
        for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|source| HistoryError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            if line.trim().is_empty() {
                continue;
            }
            let r: Record = serde_json::from_str(&line).map_err(|source| HistoryError::Parse {
                path: path.to_path_buf(),
                line: i + 1,
                source,
            })?;
            records.push(r);
        }
        Ok(History::from_records(records))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        let w = HistoryWriter::create(&path).unwrap();
        let mut op = Op::new(7, 2, Kind::Ls, 1, "/chaos/g1");
        op.outcome = Outcome::Ok;
        op.code = code::OK.into();
        op.seen = Some(Seen::Listing {
            entries: [(
                "a".to_string(),
                Entry::File {
                    sha256: "ab".into(),
                },
            )]
            .into_iter()
            .collect(),
        });
        w.write(&Record::Run(RunInfo::default())).unwrap();
        w.write(&Record::Op(op.clone())).unwrap();
        w.write(&Record::Fault(Fault {
            kind: FaultKind::KillLeader,
            nodes: vec!["meta-1".into()],
            at_us: 5,
            note: None,
        }))
        .unwrap();
        let h = History::read(&path).unwrap();
        assert_eq!(h.ops, vec![op]);
        assert_eq!(h.faults.len(), 1);
        assert!(h.run.is_some());
    }
}
