//! The workload: N concurrent clients doing put (new content every time, 0 B to a few chunks),
//! put -f, get with verification, mv, rm, mkdir, stat and ls on a small set of paths, so that
//! operations contend. Every operation goes into the history with its outcome:
//!
//! - ok: acknowledged (a read that answered "not found" is ok too: it saw an absent path);
//! - failed: definitely not applied: refused on the first attempt with NotFound, AlreadyExists,
//!   PermissionDenied, InvalidArgument, FailedPrecondition, ...; for put also a failed
//!   allocation or chunk upload (nothing is visible before the commit);
//! - unknown: timed out or unavailable, or any error after `MetaConn` retried on another node
//!   (the first attempt may have been applied; a retried mkdir then says AlreadyExists).
//!
//! Paths come in groups (`/chaos/g<N>/{a,b,c}` files and `/chaos/g<N>/d` a directory); mv stays
//! inside a group and ls lists a group, so the checker can check each group on its own. 8
//! operations in 100 are write-once puts instead: a path of its own in `/chaos/ledger`, never
//! replaced or removed, so that its loss cannot hide behind a later write (the final reads get
//! every one that may have been applied).
//! Metadata calls go through `dfs_client::MetaConn` (failover included); get uses
//! `dfs_client::get_stream`. put is done here step by step (allocate, upload, commit)
//! because its outcome depends on which step failed and on how many attempts the commit took,
//! which `put_stream` does not tell.
use crate::history::{
    code, Clock, Entry, HistoryError, HistoryWriter, Kind, Op, Outcome, Phase, Record, Seen,
};
use dfs_client::MetaConn;
use dfs_client::{get_stream, ChunkPool};
use dfs_proto::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::{Code, Status};

pub const FILES: [&str; 3] = ["a", "b", "c"];
pub const DIR: &str = "d";
pub const ROOT: &str = "/chaos";

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error("cannot connect a client: {0}")]
    Client(String),
    #[error("setting up {path}: {status}")]
    Setup { path: String, status: String },
    #[error("a client task failed: {0}")]
    Task(String),
}

#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub clients: usize,
    pub groups: u32,
    pub chunk_size: u64,
    /// Largest put, in bytes.
    pub max_size: u64,
    /// Deadline of one metadata call, retries on other nodes included.
    pub rpc_timeout: Duration,
    /// Bound on one whole operation.
    pub op_timeout: Duration,
    /// How long a chunk transfer may make no progress before its replica is given up.
    pub stall_timeout: Duration,
    /// Makes the content of this run's puts unique.
    pub run_tag: String,
}

/// Where write-once puts go (one new path each).
pub const LEDGER: &str = "/chaos/ledger";

/// The group number of ledger operations: one past the last group of paths.
pub fn ledger_group(cfg: &WorkloadConfig) -> u32 {
    cfg.groups
}

pub fn group_dir(g: u32) -> String {
    format!("{ROOT}/g{g}")
}

pub fn path_in(g: u32, name: &str) -> String {
    format!("{ROOT}/g{g}/{name}")
}

/// The bytes a put writes: a header naming the run and operation, then pseudo-random bytes
/// seeded by both; truncated to `size`.
pub fn content(run_tag: &str, op: u64, size: u64) -> Vec<u8> {
    let mut out = format!("chaos {run_tag} op {op}\n").into_bytes();
    let seed = Sha256::digest(format!("{run_tag}/{op}").as_bytes());
    let mut x = u64::from_le_bytes(seed[..8].try_into().expect("8 bytes")) | 1;
    while (out.len() as u64) < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(size as usize);
    out
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn code_name(c: Code) -> String {
    match c {
        Code::Ok => code::OK.into(),
        Code::NotFound => code::NOT_FOUND.into(),
        Code::AlreadyExists => code::ALREADY_EXISTS.into(),
        Code::FailedPrecondition => code::FAILED_PRECONDITION.into(),
        Code::Cancelled => "cancelled".into(),
        Code::Unknown => "unknown".into(),
        Code::InvalidArgument => "invalid_argument".into(),
        Code::DeadlineExceeded => "deadline_exceeded".into(),
        Code::PermissionDenied => "permission_denied".into(),
        Code::ResourceExhausted => "resource_exhausted".into(),
        Code::Aborted => "aborted".into(),
        Code::OutOfRange => "out_of_range".into(),
        Code::Unimplemented => "unimplemented".into(),
        Code::Internal => "internal".into(),
        Code::Unavailable => "unavailable".into(),
        Code::DataLoss => "data_loss".into(),
        Code::Unauthenticated => "unauthenticated".into(),
    }
}

/// Failed (certainly not applied) or unknown: only a refusal on the first attempt is certain.
pub fn classify(s: &Status, attempts: u32) -> Outcome {
    let definite = matches!(
        s.code(),
        Code::NotFound
            | Code::AlreadyExists
            | Code::FailedPrecondition
            | Code::PermissionDenied
            | Code::InvalidArgument
            | Code::Unauthenticated
            | Code::OutOfRange
            | Code::Unimplemented
    );
    if definite && attempts <= 1 {
        Outcome::Failed
    } else {
        Outcome::Unknown
    }
}

/// `MetaConn::call` with the attempts counted: (result, attempts).
macro_rules! counted {
    ($conn:expr, $method:ident, $msg:expr) => {{
        let conn: &MetaConn = &$conn;
        let attempts = AtomicU32::new(0);
        let r = conn
            .call(|mut g| {
                attempts.fetch_add(1, Ordering::Relaxed);
                let req = conn.req($msg);
                async move { g.$method(req).await }
            })
            .await;
        (r, attempts.load(Ordering::Relaxed))
    }};
}

/// Shared by every client.
pub struct Shared {
    pub cfg: WorkloadConfig,
    pub history: Arc<HistoryWriter>,
    pub clock: Clock,
    pub meta_addrs: Vec<String>,
    pub auth: std::path::PathBuf,
    /// TLS to the cluster (`None`: it runs `--insecure`).
    pub tls: Option<std::sync::Arc<dfs_common::tls::Tls>>,
    next_id: AtomicU64,
    /// Paths of the ledger puts that may have been applied (acknowledged or unknown): the
    /// final reads read each.
    ledger: std::sync::Mutex<Vec<String>>,
}

impl Shared {
    pub fn new(
        cfg: WorkloadConfig,
        history: Arc<HistoryWriter>,
        clock: Clock,
        meta_addrs: Vec<String>,
        auth: std::path::PathBuf,
        tls: Option<std::sync::Arc<dfs_common::tls::Tls>>,
    ) -> Shared {
        Shared {
            cfg,
            history,
            clock,
            meta_addrs,
            auth,
            tls,
            next_id: AtomicU64::new(1),
            ledger: Default::default(),
        }
    }

    fn conn(&self) -> Result<MetaConn, WorkloadError> {
        MetaConn::connect(&self.meta_addrs, Some(&self.auth), self.cfg.rpc_timeout)
            .and_then(|c| c.with_tls(self.tls.clone()))
            .map_err(|e| WorkloadError::Client(format!("{e:#}")))
    }

    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// Create the group directories (not part of the history: they exist before it starts).
pub async fn setup(shared: &Shared) -> Result<(), WorkloadError> {
    let conn = shared.conn()?;
    let dirs = (0..shared.cfg.groups)
        .map(group_dir)
        .chain([LEDGER.to_string()]);
    for path in dirs {
        dfs_client::rpc!(
            conn,
            mkdir,
            MkdirRequest {
                path: path.clone(),
                parents: true,
                ..Default::default()
            }
        )
        .map_err(|s| WorkloadError::Setup {
            path,
            status: s.message().to_string(),
        })?;
    }
    Ok(())
}

struct Client {
    n: i32,
    shared: Arc<Shared>,
    conn: MetaConn,
    pool: ChunkPool,
    rng: StdRng,
}

/// What the put steps produced.
struct PutEnd {
    outcome: Outcome,
    code: String,
    error: Option<String>,
    attempts: u32,
}

fn phase_of(v: u8) -> Phase {
    match v {
        0 => Phase::Allocate,
        1 => Phase::Upload,
        _ => Phase::Commit,
    }
}

impl Client {
    /// Store one chunk as every dfs client does (`dfs_client::store_chunk`): a replica that
    /// fails or stalls is given up after the stall timeout and replaced by another server.
    async fn upload(&mut self, a: &AllocatedChunk, data: &[u8]) -> Result<ChunkInfo, String> {
        dfs_client::store_chunk(&self.conn, &self.pool, a.clone(), data.to_vec())
            .await
            .map_err(|e| format!("{e:#}"))
    }

    async fn put(&mut self, path: &str, data: &[u8], force: bool, phase: &AtomicU8) -> PutEnd {
        let failed = |code: String, error: String, attempts: u32| PutEnd {
            outcome: Outcome::Failed,
            code,
            error: Some(error),
            attempts,
        };
        phase.store(0, Ordering::Relaxed);
        let cs = self.shared.cfg.chunk_size.max(1) as usize;
        let mut allocated: Vec<AllocatedChunk> = Vec::new();
        let mut chunk_size = cs;
        loop {
            // At least one allocation, even for an empty file (as dfsctl does).
            let needed = data.len().div_ceil(chunk_size);
            if !allocated.is_empty() && allocated.len() >= needed {
                break;
            }
            let count = needed.saturating_sub(allocated.len()).clamp(1, 64) as u32;
            let (r, attempts) = counted!(
                self.conn,
                allocate_chunks,
                AllocateRequest {
                    path: path.to_string(),
                    replication: 0,
                    count,
                    overwrite: force,
                    bytes_left: (data.len() as u64).max(1),
                    ..Default::default()
                }
            );
            match r {
                Ok(a) => {
                    chunk_size = a.chunk_size.max(1) as usize;
                    allocated.extend(a.chunks);
                }
                // Allocation changes nothing, whatever the error.
                Err(s) => return failed(code_name(s.code()), s.message().to_string(), attempts),
            }
        }
        phase.store(1, Ordering::Relaxed);
        let mut chunks = Vec::new();
        for (piece, a) in data.chunks(chunk_size).zip(&allocated) {
            match self.upload(a, piece).await {
                Ok(c) => chunks.push(c),
                Err(e) => return failed(code::UPLOAD.into(), e, 0),
            }
        }
        phase.store(2, Ordering::Relaxed);
        let commit = CommitRequest {
            path: path.to_string(),
            overwrite: force,
            replication: 0,
            size: data.len() as u64,
            sha256: sha256_hex(data),
            chunk_size: chunk_size as u64,
            chunks,
            request_id: uuid::Uuid::new_v4().to_string(),
            mode: None,
            // Chaos puts take seconds: well inside the tokens' commit window, no lease.
            lease_id: String::new(),
        };
        let (r, attempts) = counted!(self.conn, commit_file, commit.clone());
        match r {
            Ok(_) => PutEnd {
                outcome: Outcome::Ok,
                code: code::OK.into(),
                error: None,
                attempts,
            },
            Err(s) => PutEnd {
                outcome: classify(&s, attempts),
                code: code_name(s.code()),
                error: Some(s.message().to_string()),
                attempts,
            },
        }
    }

    fn fail(o: &mut Op, s: &Status, attempts: u32) {
        o.outcome = classify(s, attempts);
        o.code = code_name(s.code());
        o.error = Some(s.message().to_string());
        o.attempts = attempts;
    }

    fn ok(o: &mut Op, attempts: u32) {
        o.outcome = Outcome::Ok;
        o.code = code::OK.into();
        o.attempts = attempts;
    }

    async fn get(&mut self, o: &mut Op) {
        let (r, attempts) = counted!(
            self.conn,
            open_read,
            StatRequest {
                path: o.path.clone(),
                stale: false
            }
        );
        match r {
            Err(s) if s.code() == Code::NotFound => {
                Self::ok(o, attempts);
                o.seen = Some(Seen::Absent);
            }
            Err(s) => Self::fail(o, &s, attempts),
            Ok(reply) => {
                Self::ok(o, attempts);
                let Some(f) = reply.file.as_ref() else {
                    o.data_error = Some("the leader returned no file".into());
                    return;
                };
                if f.is_dir {
                    o.seen = Some(Seen::Dir);
                    return;
                }
                o.seen = Some(Seen::File {
                    sha256: f.sha256.clone(),
                    size: f.size,
                });
                let mut buf = Vec::with_capacity(f.size as usize);
                match get_stream(
                    &self.conn,
                    &self.pool,
                    &reply,
                    &mut buf,
                    &dfs_client::no_progress,
                )
                .await
                {
                    Ok(_) => o.bytes_sha256 = Some(sha256_hex(&buf)),
                    Err(e) => {
                        o.overtaken = matches!(e, dfs_client::Error::ChangedWhileReading { .. });
                        o.data_error = Some(format!("{e:#}"));
                    }
                }
            }
        }
    }

    async fn stat(&mut self, o: &mut Op) {
        let (r, attempts) = counted!(
            self.conn,
            stat,
            StatRequest {
                path: o.path.clone(),
                stale: false
            }
        );
        match r {
            Err(s) if s.code() == Code::NotFound => {
                Self::ok(o, attempts);
                o.seen = Some(Seen::Absent);
            }
            Err(s) => Self::fail(o, &s, attempts),
            Ok(f) => {
                Self::ok(o, attempts);
                o.seen = Some(if f.is_dir {
                    Seen::Dir
                } else {
                    Seen::File {
                        sha256: f.sha256,
                        size: f.size,
                    }
                });
            }
        }
    }

    async fn ls(&mut self, o: &mut Op) {
        let (r, attempts) = counted!(
            self.conn,
            list,
            ListRequest {
                path: o.path.clone(),
                recursive: false,
                stale: false,
                ..Default::default()
            }
        );
        match r {
            Err(s) if s.code() == Code::NotFound => {
                Self::ok(o, attempts);
                o.seen = Some(Seen::Absent);
            }
            Err(s) => Self::fail(o, &s, attempts),
            Ok(l) => {
                Self::ok(o, attempts);
                let entries: BTreeMap<String, Entry> = l
                    .entries
                    .into_iter()
                    .map(|e| {
                        let name = e.path.rsplit('/').next().unwrap_or("").to_string();
                        let v = if e.is_dir {
                            Entry::Dir
                        } else {
                            Entry::File { sha256: e.sha256 }
                        };
                        (name, v)
                    })
                    .collect();
                o.seen = Some(Seen::Listing { entries });
            }
        }
    }

    async fn write_op(&mut self, o: &mut Op) {
        // One id for every attempt of this operation, so a retry is not applied twice.
        let request_id = uuid::Uuid::new_v4().to_string();
        let (r, attempts) = match o.kind {
            Kind::Mv => {
                let (r, a) = counted!(
                    self.conn,
                    rename,
                    RenameRequest {
                        from: o.path.clone(),
                        to: o.to.clone().unwrap_or_default(),
                        request_id: request_id.clone(),
                        ..Default::default()
                    }
                );
                (r.map(|_| ()), a)
            }
            Kind::Rm => {
                let (r, a) = counted!(
                    self.conn,
                    remove,
                    RemoveRequest {
                        path: o.path.clone(),
                        recursive: o.recursive,
                        request_id: request_id.clone(),
                        // Deletes go to the trash, as a user's do: the trash commands
                        // get the leader kills too.
                        skip_trash: false,
                    }
                );
                (r.map(|_| ()), a)
            }
            _ => {
                let (r, a) = counted!(
                    self.conn,
                    mkdir,
                    MkdirRequest {
                        path: o.path.clone(),
                        parents: false,
                        request_id: request_id.clone(),
                    }
                );
                (r.map(|_| ()), a)
            }
        };
        match r {
            Ok(()) => Self::ok(o, attempts),
            Err(s) => Self::fail(o, &s, attempts),
        }
    }

    /// Pick the next operation (arguments only).
    fn choose(&mut self) -> Op {
        let shared = self.shared.clone();
        let g = self.rng.gen_range(0..shared.cfg.groups);
        let file = FILES[self.rng.gen_range(0..FILES.len())];
        let id = shared.id();
        let roll = self.rng.gen_range(0..100);
        if roll < 8 {
            // A write-once put: its own path, which nothing else touches.
            let mut o = Op::new(id, self.n, Kind::Put, ledger_group(&shared.cfg), "");
            o.path = format!("{LEDGER}/{id}");
            o.write_once = true;
            o.size = Some(self.put_size());
            return o;
        }
        let (kind, path) = match roll {
            8..=29 => (Kind::Put, path_in(g, file)),
            30..=49 => (Kind::Get, path_in(g, file)),
            50..=57 => (Kind::Stat, path_in(g, file)),
            58..=59 => (Kind::Stat, path_in(g, DIR)),
            60..=67 => (Kind::Ls, group_dir(g)),
            68..=79 => (Kind::Mv, path_in(g, file)),
            80..=89 => (Kind::Rm, path_in(g, file)),
            90..=94 => (Kind::Mkdir, path_in(g, DIR)),
            _ => (Kind::Rm, path_in(g, DIR)),
        };
        let mut o = Op::new(id, self.n, kind, g, &path);
        match kind {
            Kind::Put => {
                o.force = roll >= 16;
                o.size = Some(self.put_size());
            }
            Kind::Mv => {
                let others: Vec<&str> = FILES.iter().copied().filter(|f| *f != file).collect();
                o.to = Some(path_in(g, others[self.rng.gen_range(0..others.len())]));
            }
            Kind::Rm if path.ends_with(DIR) => o.recursive = self.rng.gen_bool(0.5),
            _ => {}
        }
        o
    }

    /// A put's size: empty, small, up to a chunk, or a few chunks.
    fn put_size(&mut self) -> u64 {
        let cfg = &self.shared.cfg;
        let cs = cfg.chunk_size.max(1);
        match self.rng.gen_range(0..10) {
            0 => 0,
            1..=4 => self.rng.gen_range(1..=4096),
            5..=7 => self.rng.gen_range(4097..=cs.max(4097)),
            _ => self.rng.gen_range(cs + 1..=cfg.max_size.max(cs + 1)),
        }
    }

    /// Run one operation (bounded by the op timeout) and fill in its outcome.
    async fn run(&mut self, mut o: Op) -> Op {
        let timeout = self.shared.cfg.op_timeout;
        let phase = AtomicU8::new(0);
        let data = match (o.kind, o.size) {
            (Kind::Put, Some(size)) => {
                let d = content(&self.shared.cfg.run_tag, o.id, size);
                o.content = Some(sha256_hex(&d));
                d
            }
            _ => Vec::new(),
        };
        o.invoke_us = self.shared.clock.now_us();
        let done = {
            let o = &mut o;
            let (data, phase) = (&data, &phase);
            let this = &mut *self;
            tokio::time::timeout(timeout, async move {
                match o.kind {
                    Kind::Put => {
                        let path = o.path.clone();
                        let end = this.put(&path, data, o.force, phase).await;
                        o.outcome = end.outcome;
                        o.code = end.code;
                        o.error = end.error;
                        o.attempts = end.attempts;
                    }
                    Kind::Get => this.get(o).await,
                    Kind::Stat => this.stat(o).await,
                    Kind::Ls => this.ls(o).await,
                    Kind::Mv | Kind::Rm | Kind::Mkdir => this.write_op(o).await,
                }
            })
            .await
        };
        o.complete_us = self.shared.clock.now_us();
        if o.kind == Kind::Put {
            o.phase = Some(phase_of(phase.load(Ordering::Relaxed)));
        }
        if done.is_err() {
            // Cut off: a put stopped before its commit changed nothing.
            o.outcome = if o.phase.is_some_and(|p| p != Phase::Commit) {
                Outcome::Failed
            } else {
                Outcome::Unknown
            };
            o.code = code::TIMEOUT.into();
            o.error = Some(format!("no answer within {} s", timeout.as_secs()));
        }
        o
    }
}

/// Run the clients until `until`; every operation is recorded as it completes.
pub async fn run(shared: Arc<Shared>, until: Instant) -> Result<(), WorkloadError> {
    let mut tasks = Vec::new();
    for n in 0..shared.cfg.clients {
        let mut c = Client {
            n: n as i32,
            shared: shared.clone(),
            conn: shared.conn()?,
            pool: ChunkPool::new(shared.cfg.stall_timeout, shared.tls.as_ref()),
            rng: StdRng::from_entropy(),
        };
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let o = c.choose();
                let o = c.run(o).await;
                if o.write_once && o.outcome != Outcome::Failed {
                    let mut ledger = c.shared.ledger.lock().unwrap_or_else(|e| e.into_inner());
                    ledger.push(o.path.clone());
                }
                c.shared.history.write(&Record::Op(o))?;
            }
            Ok::<(), WorkloadError>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| WorkloadError::Task(e.to_string()))??;
    }
    Ok(())
}

/// After healing: read every group's listing and every path (bytes included), retrying (for at
/// most `patience` in all) while the answer is not definite or the bytes cannot be read yet. These reads
/// are recorded with `final_read` and are what the lost-write checker compares against.
pub async fn final_reads(shared: Arc<Shared>, patience: Duration) -> Result<(), WorkloadError> {
    let mut c = Client {
        n: -1,
        shared: shared.clone(),
        conn: shared.conn()?,
        pool: ChunkPool::new(shared.cfg.stall_timeout, shared.tls.as_ref()),
        rng: StdRng::from_entropy(),
    };
    let deadline = Instant::now() + patience;
    let ledger_g = ledger_group(&shared.cfg);
    let mut reads = Vec::new();
    for g in 0..shared.cfg.groups {
        reads.push((g, Kind::Ls, group_dir(g)));
        reads.push((g, Kind::Stat, path_in(g, DIR)));
        reads.extend(FILES.iter().map(|f| (g, Kind::Get, path_in(g, f))));
    }
    let ledger: Vec<String> = shared
        .ledger
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    reads.extend(ledger.into_iter().map(|p| (ledger_g, Kind::Get, p)));
    for (g, kind, path) in reads {
        loop {
            let mut o = Op::new(shared.id(), -1, kind, g, &path);
            o.final_read = true;
            o.write_once = g == ledger_g;
            let o = c.run(o).await;
            let done = o.outcome == Outcome::Ok && o.data_error.is_none();
            if done || Instant::now() >= deadline {
                shared.history.write(&Record::Op(o))?;
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Ok(())
}
