//! Self-healing on the leader: declare silent chunk servers dead after the dead timeout, copy
//! the chunks that lost replicas (chunk server to chunk server, most endangered first, rate
//! limited), record each copy through Raft only after the target confirmed a durable copy whose
//! size and CRC32C match the metadata, and drop dead, bad and surplus replicas. Also the
//! `Fsck` and `SetReplication` handlers.
//!
//! Safety rules:
//! - No repair until this node has heard the chunk servers' heartbeats for the grace period
//!   (and the dead timeout): as leader, or before, as a follower that heard every heartbeat
//!   without a gap (chunk servers heartbeat every metadata node). So a follower elected
//!   after a leader's crash repairs at once, while a node just started, just resumed from a
//!   pause or just reconnected waits: no repair storm from a stale view.
//! - A round stops as soon as the term changes or this node stops being leader; every command
//!   is re-checked when applied (the file must still be the planned version).
//! - Soft state only: a new leader rebuilds everything from heartbeats.
use crate::inventory::{self, Inventories};
use crate::liveness::LIVE_WINDOW;
use crate::repair::{self, ServerHealth, View};
use crate::service::{now_ms, Caller, MetaNode, OpError, OpResult};
use crate::state::command::CommandV1;
use crate::state::{Command, MAX_LIST_PAGE, MAX_REPLICATION};
use crate::store::blocking;
use crate::types::NodeId;
use dfs_common::token::Op;
use dfs_proto::chunk_client::ChunkClient;
use dfs_proto::*;
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tonic::Status;

/// How often the leader looks for work when there is none.
const IDLE_INTERVAL: Duration = Duration::from_millis(500);
/// Most copies started in one round (then the plan is made again).
const MAX_COPIES_PER_ROUND: usize = 512;
/// Most replica drops proposed in one round.
const MAX_DROPS_PER_ROUND: usize = 512;
/// A server a repair copy failed to reach is not chosen as a target for this long.
const AVOID_FAILED_TARGET: Duration = Duration::from_secs(30);
/// A bad-replica report is forgotten after this long (the replica is replaced well before).
const BAD_REPORT_TTL: Duration = Duration::from_secs(600);
/// Chunk reports older than this are not trusted for orphan collection (servers send one
/// every 30 s).
const MAX_REPORT_AGE: Duration = Duration::from_secs(120);
/// Least time between two orphan scans (each new chunk report triggers one).
const GC_SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// With nothing to repair, the namespace is scanned again after this long when the log moved
/// on, and after `IDLE_SCAN_INTERVAL` anyway.
const CHANGED_SCAN_INTERVAL: Duration = Duration::from_secs(2);
const IDLE_SCAN_INTERVAL: Duration = Duration::from_secs(30);
/// Largest gRPC message to or from a chunk server.
const MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// Self-healing flags (part of metasrv's command line).
#[derive(clap::Args, Debug, Clone)]
pub struct HealArgs {
    /// A chunk server silent for this long is declared dead and its chunks are re-replicated
    /// (never sooner than 4 s, when it stops getting new chunks).
    #[arg(long, env = "DFS_META_DEAD_TIMEOUT_MS", default_value_t = 30_000)]
    pub dead_timeout_ms: u64,
    /// Before any repair, hear the chunk servers for this long: as leader, or as a follower
    /// whose heartbeats never stopped for 2 s [default: the dead timeout].
    #[arg(long, env = "DFS_META_REPAIR_GRACE_MS")]
    pub repair_grace_ms: Option<u64>,
    /// Repair copy rate limit in bytes per second across the cluster (0: unlimited).
    #[arg(long, env = "DFS_META_REPAIR_RATE", default_value_t = 100 * 1024 * 1024)]
    pub repair_rate: u64,
    /// Repair copies running at once (small chunks are latency-bound: a copy is a transfer, a
    /// target fsync and a Raft entry; `--repair-rate` bounds the bytes).
    #[arg(long, env = "DFS_META_REPAIR_CONCURRENCY", default_value_t = 32)]
    pub repair_concurrency: usize,
    /// A chunk no file references is removed (by `dfsctl admin gc --apply`) only after the
    /// leader has seen it unreferenced in the server's reports for this long.
    #[arg(long, env = "DFS_META_GC_GRACE_MS", default_value_t = 3_600_000)]
    pub gc_grace_ms: u64,
}

impl HealArgs {
    pub fn dead_timeout(&self) -> Duration {
        Duration::from_millis(self.dead_timeout_ms.max(1))
    }
    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.repair_grace_ms.unwrap_or(self.dead_timeout_ms))
    }
}

impl Default for HealArgs {
    fn default() -> Self {
        HealArgs {
            dead_timeout_ms: 30_000,
            repair_grace_ms: None,
            repair_rate: 100 * 1024 * 1024,
            repair_concurrency: 32,
            gc_grace_ms: 3_600_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HealError {
    #[error("chunk server {0} has no known address")]
    NoAddress(NodeId),
    #[error("bad chunk server address {0:?}")]
    BadAddress(String),
    #[error("copy from chunk server {source_node} failed: {status}")]
    Copy { source_node: NodeId, status: Status },
    #[error("copy of chunk {chunk} timed out")]
    Timeout { chunk: String },
    #[error("copy of chunk {chunk} does not match the metadata: got {size} bytes crc {crc:08x} on node {node}")]
    Mismatch {
        chunk: String,
        size: u64,
        crc: u32,
        node: NodeId,
    },
    #[error("chunk server {node} did not acknowledge storing chunk {chunk} (no valid receipt in the copy's reply); not recorded")]
    NoReceipt { chunk: String, node: NodeId },
    #[error("recording the copy failed: {0}")]
    Record(String),
    #[error("no source could copy the chunk")]
    NoSource,
}

/// The inputs of a repair plan that decide whether a new one is needed.
struct PlanMemo {
    health: Vec<(NodeId, std::mem::Discriminant<ServerHealth>)>,
    bad: usize,
    applied: u64,
}

impl HealError {
    /// Whether the target (rather than the source or this node) is the likely culprit.
    fn blames_target(&self) -> bool {
        match self {
            HealError::Copy { status, .. } => status.message().contains("writing to"),
            HealError::Timeout { .. }
            | HealError::Mismatch { .. }
            | HealError::NoReceipt { .. } => true,
            _ => false,
        }
    }
}

/// Leader soft state for healing, and counters for metrics.
pub struct Healing {
    pub args: HealArgs,
    leader_since: Mutex<Option<Instant>>,
    bad: Mutex<HashMap<(String, NodeId), Instant>>,
    avoid: Mutex<HashMap<NodeId, Instant>>,
    pacer: tokio::sync::Mutex<Instant>,
    /// Every server's latest complete chunk report, and the one being assembled from pages.
    inventories: Mutex<Inventories>,
    /// (server, chunk) seen unreferenced by this leader since (reset on leadership loss).
    orphans: Mutex<HashMap<(NodeId, String), Instant>>,
    last_gc_scan: Mutex<Option<(u64, Instant)>>,
    /// Bumped on every chunk report.
    inventory_gen: AtomicU64,
    /// What the last plan was made from, when, and whether it found nothing to do.
    last_plan: Mutex<Option<(PlanMemo, Instant, bool)>>,
    /// Orphan candidates seen in the last scan (due or not).
    pub orphans_pending: AtomicU64,
    /// Copies waiting in the last plan.
    pub queue: AtomicU64,
    /// Chunks with no good replica in the last plan.
    pub lost: AtomicU64,
    pub copies_total: AtomicU64,
    pub copy_failures_total: AtomicU64,
    pub copied_bytes_total: AtomicU64,
    pub dropped_replicas_total: AtomicU64,
}

impl Healing {
    pub fn new(args: HealArgs) -> Healing {
        Healing {
            args,
            leader_since: Mutex::new(None),
            bad: Mutex::new(HashMap::new()),
            avoid: Mutex::new(HashMap::new()),
            pacer: tokio::sync::Mutex::new(Instant::now()),
            inventories: Mutex::new(Inventories::default()),
            orphans: Mutex::new(HashMap::new()),
            last_gc_scan: Mutex::new(None),
            inventory_gen: AtomicU64::new(0),
            last_plan: Mutex::new(None),
            orphans_pending: AtomicU64::new(0),
            queue: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            copies_total: AtomicU64::new(0),
            copy_failures_total: AtomicU64::new(0),
            copied_bytes_total: AtomicU64::new(0),
            dropped_replicas_total: AtomicU64::new(0),
        }
    }

    /// One page of a chunk server's chunk report (see `inventory`); a completed report
    /// starts the orphans' clock.
    pub fn record_inventory(&self, node: NodeId, page: inventory::Page) -> inventory::Outcome {
        let (round, number) = (page.round, page.page);
        let out = lock(&self.inventories).page(node, page, Instant::now());
        match out {
            inventory::Outcome::Complete => {
                self.inventory_gen.fetch_add(1, Ordering::Relaxed);
            }
            inventory::Outcome::Dropped => {
                tracing::debug!(
                    chunk_server = node,
                    round,
                    page = number,
                    "inventory page out of order: the listing is dropped, the next one starts over"
                );
            }
            inventory::Outcome::Added | inventory::Outcome::Ignored => {}
        }
        out
    }

    /// Chunks a server deleted (or was told to delete) since its last report: not orphans.
    pub fn forget_chunks(&self, node: NodeId, chunks: &[String]) {
        if chunks.is_empty() {
            return;
        }
        lock(&self.inventories).forget(node, chunks);
    }

    /// Entries of the inventories held, and listings dropped so far (for metrics).
    pub fn inventory_sizes(&self) -> (inventory::Sizes, u64) {
        let mut g = lock(&self.inventories);
        g.drop_stale(Instant::now());
        (g.sizes(), g.dropped_total)
    }

    /// Bad-replica reports and avoided repair targets held now (for metrics). Both expire
    /// (`BAD_REPORT_TTL`, `AVOID_FAILED_TARGET`); reports are also at most one per replica.
    pub fn remembered(&self) -> (usize, usize) {
        (self.bad_set().len(), self.avoid_set().len())
    }

    /// A reader or scrubber found this replica corrupt.
    pub fn report_bad(&self, chunk_id: &str, node: NodeId) {
        lock(&self.bad).insert((chunk_id.to_string(), node), Instant::now());
    }

    /// A copy to `target` failed: leave it out of the next plans for a while.
    fn avoid_target(&self, target: NodeId) {
        lock(&self.avoid).insert(target, Instant::now());
    }

    fn avoid_set(&self) -> HashSet<NodeId> {
        let mut g = lock(&self.avoid);
        g.retain(|_, t| t.elapsed() < AVOID_FAILED_TARGET);
        g.keys().copied().collect()
    }

    fn bad_set(&self) -> HashSet<(String, NodeId)> {
        let mut g = lock(&self.bad);
        g.retain(|_, t| t.elapsed() < BAD_REPORT_TTL);
        g.keys().cloned().collect()
    }

    /// Wait for the rate limit to allow `bytes` more.
    async fn pace(&self, bytes: u64) {
        if self.args.repair_rate == 0 {
            return;
        }
        let start = {
            let mut next = self.pacer.lock().await;
            let now = Instant::now();
            let start = (*next).max(now);
            // A chunk is at most 64 MiB: a bogus size in the metadata cannot stall every repair.
            let bytes = bytes.min(dfs_common::MAX_CHUNK_SIZE);
            *next = start + Duration::from_secs_f64(bytes as f64 / self.args.repair_rate as f64);
            start
        };
        tokio::time::sleep_until(start.into()).await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The servers as this node sees them now. A server never heard from counts from `since`
/// (when this node became leader, or now).
pub fn view(node: &MetaNode, since: Option<Instant>) -> View {
    let dead_after = node.healing.args.dead_timeout();
    let st = node.read_state();
    let mut free = BTreeMap::new();
    let servers = st
        .chunk_servers
        .keys()
        .map(|&id| {
            let h = match node.liveness.get(id) {
                Some(v) if v.last_seen.elapsed() < LIVE_WINDOW => {
                    if let Some(f) = v.free() {
                        free.insert(id, f);
                    }
                    ServerHealth::Live { used: v.used }
                }
                Some(v) if v.last_seen.elapsed() >= dead_after => ServerHealth::Dead,
                Some(_) => ServerHealth::Silent,
                None if since.is_some_and(|s| s.elapsed() >= dead_after) => ServerHealth::Dead,
                None => ServerHealth::Silent,
            };
            (id, h)
        })
        .collect();
    View {
        servers,
        bad: node.healing.bad_set(),
        avoid: node.healing.avoid_set(),
        free,
    }
}

/// The leader's background task. Runs for the life of the process.
pub async fn run(node: std::sync::Arc<MetaNode>) {
    loop {
        let busy = match round(&node).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(node = node.id, error = %e, "repair round failed");
                false
            }
        };
        if !busy {
            tokio::time::sleep(IDLE_INTERVAL).await;
        }
    }
}

fn term(node: &MetaNode) -> u64 {
    node.raft.metrics().borrow().current_term
}

fn still_leader(node: &MetaNode, t: u64) -> bool {
    node.is_leader() && term(node) == t
}

/// On a cluster made by a version without inode numbers, the leader proposes the one entry
/// that numbers every inode (see `CommandV1::NumberInodes`); applying it is idempotent, so a
/// second proposal by a later leader changes nothing.
async fn number_inodes_once(node: &MetaNode) {
    let due = {
        let st = node.read_state();
        !st.meta.cluster_id.is_empty() && !st.meta.inode_numbers
    };
    if due {
        match node.propose(Command::V1(CommandV1::NumberInodes)).await {
            Ok(_) => tracing::info!(node = node.id, "numbered the inodes of an older namespace"),
            Err(e) => {
                tracing::warn!(node = node.id, error = ?e, "numbering inodes failed; will retry")
            }
        }
    }
}

/// One planning pass and its execution. Returns whether it did any work.
async fn round(node: &MetaNode) -> Result<bool, HealError> {
    let h = &node.healing;
    if !node.is_leader() {
        *lock(&h.leader_since) = None;
        lock(&h.orphans).clear();
        *lock(&h.last_plan) = None;
        h.queue.store(0, Ordering::Relaxed);
        return Ok(false);
    }
    number_inodes_once(node).await;
    let leader_since = *lock(&h.leader_since).get_or_insert_with(Instant::now);
    // A server never heard from counts as silent from the earlier of the two.
    let since = match node.liveness.listening_since() {
        Some(l) if l.elapsed() >= h.args.grace().max(h.args.dead_timeout()) => l.min(leader_since),
        _ if leader_since.elapsed() >= h.args.grace() => leader_since,
        _ => return Ok(false),
    };
    let t = term(node);
    // Start the orphans' clock when a new chunk report arrives (they are removed only by
    // `admin gc --apply`, which checks them again).
    let generation = h.inventory_gen.load(Ordering::Relaxed);
    let scan = {
        let mut last = lock(&h.last_gc_scan);
        let due = last.is_none_or(|(g, at)| g != generation && at.elapsed() >= GC_SCAN_INTERVAL);
        if due {
            *last = Some((generation, Instant::now()));
        }
        due
    };
    if scan {
        let pass = blocking(|| gc_pass(node));
        h.orphans_pending
            .store(pass.orphans.len() as u64, Ordering::Relaxed);
    }
    let view = view(node, Some(since));
    // A full scan of the namespace holds the state's read lock: skip it while nothing that
    // could need a repair changed (servers' health, bad reports, applied log).
    let applied = node
        .raft
        .metrics()
        .borrow()
        .last_applied
        .map(|l| l.index)
        .unwrap_or(0);
    let memo = PlanMemo {
        health: view
            .servers
            .iter()
            .map(|(id, s)| (*id, std::mem::discriminant(s)))
            .collect(),
        bad: view.bad.len(),
        applied,
    };
    {
        let last = lock(&h.last_plan);
        if let Some((m, at, empty)) = &*last {
            let quiet = *empty
                && m.health == memo.health
                && m.bad == memo.bad
                && (m.applied == memo.applied || at.elapsed() < CHANGED_SCAN_INTERVAL)
                && at.elapsed() < IDLE_SCAN_INTERVAL;
            if quiet {
                return Ok(false);
            }
        }
    }
    // Planning walks the whole namespace under the state's read lock: off this worker, so the
    // node's other tasks (Raft's heartbeats and votes among them) go on meanwhile.
    let (plan, addrs) = blocking(|| {
        let st = node.read_state();
        let addrs: BTreeMap<NodeId, String> = st
            .chunk_servers
            .iter()
            .map(|(id, s)| (*id, s.addr.clone()))
            .collect();
        (repair::plan(&st, &view), addrs)
    });
    h.queue.store(plan.copies.len() as u64, Ordering::Relaxed);
    h.lost.store(plan.lost as u64, Ordering::Relaxed);
    *lock(&h.last_plan) = Some((
        memo,
        Instant::now(),
        plan.copies.is_empty() && plan.drops.is_empty(),
    ));
    let mut worked = false;

    for d in plan.drops.into_iter().take(MAX_DROPS_PER_ROUND) {
        if !still_leader(node, t) {
            return Ok(false);
        }
        let n = d.nodes.len() as u64;
        let cmd = Command::V1(CommandV1::DropReplicas {
            path: d.path.clone(),
            file_id: d.file_id,
            chunk_id: d.chunk_id.clone(),
            nodes: d.nodes.clone(),
        });
        match node.propose(cmd).await {
            Ok(_) => {
                worked = true;
                h.dropped_replicas_total.fetch_add(n, Ordering::Relaxed);
                tracing::info!(node = node.id, chunk = %d.chunk_id, path = %d.path, dropped = ?d.nodes, "replicas dropped");
            }
            Err(e) => tracing::debug!(node = node.id, error = ?e, "replica drop not recorded"),
        }
    }

    if plan.copies.is_empty() {
        return Ok(worked);
    }
    let total = plan.copies.len();
    let conc = h.args.repair_concurrency.max(1);
    let results: Vec<bool> = futures::stream::iter(plan.copies.into_iter().take(MAX_COPIES_PER_ROUND))
        .map(|c| {
            let addrs = &addrs;
            async move {
                if !still_leader(node, t) {
                    return false;
                }
                match copy_one(node, addrs, &c).await {
                    Ok(()) => true,
                    Err(e) => {
                        h.copy_failures_total.fetch_add(1, Ordering::Relaxed);
                        if e.blames_target() {
                            h.avoid_target(c.target);
                        }
                        tracing::warn!(node = node.id, chunk = %c.chunk_id, path = %c.path, target = c.target, error = %e, "repair copy failed");
                        false
                    }
                }
            }
        })
        .buffer_unordered(conc)
        .collect()
        .await;
    let done = results.iter().filter(|ok| **ok).count();
    tracing::info!(
        node = node.id,
        planned = total,
        copied = done,
        "repair round finished"
    );
    h.queue
        .store(total.saturating_sub(done) as u64, Ordering::Relaxed);
    // A round where every copy failed waits before the next try.
    Ok(done > 0 || worked)
}

/// Copy one chunk to its target from the first source that can, then record it.
async fn copy_one(
    node: &MetaNode,
    addrs: &BTreeMap<NodeId, String>,
    c: &repair::Copy,
) -> Result<(), HealError> {
    let h = &node.healing;
    let target_addr = addrs.get(&c.target).ok_or(HealError::NoAddress(c.target))?;
    h.pace(c.size).await;
    let mut last = HealError::NoSource;
    for &src in &c.sources {
        let Some(src_addr) = addrs.get(&src) else {
            last = HealError::NoAddress(src);
            continue;
        };
        let expires = now_ms() as u64 + 10 * 60 * 1000;
        let msg = ReplicateRequest {
            chunk_id: c.chunk_id.clone(),
            target_addr: target_addr.clone(),
            // Read on this source only; write on the target only, this chunk's size at most.
            read_token: node
                .secret
                .sign_chunk(Op::Read, &c.chunk_id, 0, expires, &[src]),
            write_token: node.secret.sign_chunk(
                Op::Write,
                &c.chunk_id,
                c.size,
                expires,
                &[c.target],
            ),
        };
        let req = crate::network::with_node_auth(msg, &node.secret);
        // The process-wide channel cache metasrv uses for its peers serves chunk servers too.
        let channel = crate::network::channel(src_addr, dfs_common::pki::Role::Chunk)
            .map_err(|_| HealError::BadAddress(src_addr.to_string()))?;
        let mut client = ChunkClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        // At least 1 MB/s, plus slack for connecting and fsync.
        let limit = Duration::from_secs(30) + Duration::from_secs(c.size / (1024 * 1024));
        let reply = match tokio::time::timeout(limit, client.replicate(req)).await {
            Err(_) => {
                last = HealError::Timeout {
                    chunk: c.chunk_id.clone(),
                };
                continue;
            }
            Ok(Err(status)) => {
                last = HealError::Copy {
                    source_node: src,
                    status,
                };
                continue;
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        if reply.size != c.size || reply.crc32c != c.crc32c || reply.node_id != c.target {
            return Err(HealError::Mismatch {
                chunk: c.chunk_id.clone(),
                size: reply.size,
                crc: reply.crc32c,
                node: reply.node_id,
            });
        }
        // The target's own signed word, passed on by the source (which cannot make it).
        if !node.secret.chunk_server_key(c.target).check_receipt(
            &reply.receipt,
            &c.chunk_id,
            c.size,
            c.crc32c,
        ) {
            return Err(HealError::NoReceipt {
                chunk: c.chunk_id.clone(),
                node: c.target,
            });
        }
        let cmd = Command::V1(CommandV1::ReplicaAdded {
            path: c.path.clone(),
            file_id: c.file_id.clone(),
            chunk_id: c.chunk_id.clone(),
            node: c.target,
            drop: c.drop.clone(),
        });
        node.propose(cmd).await.map_err(|e| {
            HealError::Record(match e {
                OpError::Status(s) => s.message().to_string(),
                OpError::NotLeader(_) => "no longer the leader".into(),
            })
        })?;
        h.copies_total.fetch_add(1, Ordering::Relaxed);
        h.copied_bytes_total.fetch_add(c.size, Ordering::Relaxed);
        tracing::info!(node = node.id, chunk = %c.chunk_id, path = %c.path, from = src, to = c.target, dropped = ?c.drop, "chunk re-replicated");
        return Ok(());
    }
    Err(last)
}

/// Most problem files one fsck reply lists (the others are counted in `problems_left_off`), so
/// a reply stays small however many files a dead server took replicas of.
pub const MAX_FSCK_PROBLEMS: usize = 1000;

/// Count one entry of an fsck walk into `out`, and list it if it has a problem.
fn fsck_file(out: &mut FsckReply, path: String, n: &crate::state::Inode, view: &View) {
    let Some(f) = &n.file else { return };
    out.files += 1;
    let want = f.replication as usize;
    let rank = |s: Option<&str>| match s {
        Some("missing") => 3,
        Some("under-replicated") => 2,
        Some(_) => 1,
        None => 0,
    };
    let mut worst = None;
    let mut chunks = Vec::new();
    for (i, ch) in f.chunks.iter().enumerate() {
        out.chunks += 1;
        let h = repair::classify(ch, view);
        out.corrupt_replicas += h.bad.len() as u64;
        let status = fsck_status(h.good.len(), want, ch.replicas.len());
        match status {
            Some("missing") => out.missing_chunks += 1,
            Some("under-replicated") => out.under_replicated_chunks += 1,
            Some(_) => out.over_replicated_chunks += 1,
            None if h.bad.is_empty() => continue,
            None => {}
        }
        if rank(status) > rank(worst) {
            worst = status;
        }
        chunks.push(FsckChunk {
            index: i as u32,
            chunk_id: ch.id.clone(),
            live: h.good.len() as u32,
            expected: f.replication,
            missing: h.missing(),
            corrupt: h.bad.clone(),
        });
    }
    if chunks.is_empty() {
        return;
    }
    if out.problems.len() >= MAX_FSCK_PROBLEMS {
        out.problems_left_off += 1;
        return;
    }
    out.problems.push(FsckFile {
        path,
        size: f.size,
        replication: f.replication,
        status: worst.unwrap_or("corrupt-replica").to_string(),
        chunks,
    });
}

fn fsck_status(good: usize, want: usize, replicas: usize) -> Option<&'static str> {
    if good == 0 {
        Some("missing")
    } else if good < want {
        Some("under-replicated")
    } else if replicas > want {
        Some("over-replicated")
    } else {
        None
    }
}

impl MetaNode {
    pub async fn fsck(&self, c: &Caller, r: FsckRequest) -> OpResult<FsckReply> {
        self.read_gate(false).await?;
        // Users see their own files; an admin sees everything.
        let (actor, _) = self.authenticate(c)?;
        let since = *lock(&self.healing.leader_since);
        let view = view(self, since);
        let path = if r.path.is_empty() { "/" } else { &r.path };
        let mut out = FsckReply {
            dead_servers: view
                .servers
                .iter()
                .filter(|(_, h)| **h == ServerHealth::Dead)
                .map(|(id, _)| *id)
                .collect(),
            repair_queue: self.healing.queue.load(Ordering::Relaxed),
            ..Default::default()
        };
        // The tree is walked a page at a time, the state's read lock held per page only, so a
        // check of millions of files neither copies the namespace nor stalls applies.
        let mut after = String::new();
        loop {
            let (page, next) =
                self.read_state()
                    .list_page(&actor, path, true, &after, MAX_LIST_PAGE)?;
            for (p, n) in page {
                fsck_file(&mut out, p, &n, &view);
            }
            if next.is_empty() {
                return Ok(out);
            }
            after = next;
        }
    }

    pub async fn set_replication(&self, c: &Caller, r: SetReplicationRequest) -> OpResult<Empty> {
        self.write_gate()?;
        let (actor, _) = self.authenticate(c)?;
        if r.replication == 0 || r.replication > MAX_REPLICATION {
            return Err(Status::invalid_argument(format!(
                "replication must be between 1 and {MAX_REPLICATION}"
            ))
            .into());
        }
        let path = dfs_common::path::normalize(&r.path)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.propose(crate::service::client_write(
            &r.request_id,
            CommandV1::SetReplication {
                actor,
                path,
                replication: r.replication,
            },
        )?)
        .await?;
        Ok(Empty {})
    }
}

/// Orphan collection. A chunk on a server is an orphan candidate when the server's latest full
/// report (recent, from a live server) lists it, no file lists that server as one of
/// its replicas, and it is not already queued for deletion there. It becomes due once this
/// leader has seen it so for the whole grace period in a row. Any doubt keeps the chunk: a
/// server that is not live or has no recent report is skipped, leadership loss forgets every
/// candidate, the term must not change during a pass, and applying re-checks references.
struct GcPass {
    orphans: Vec<Orphan>,
    unreported: Vec<NodeId>,
    /// Unreferenced replicas that a live write lease holds (not candidates).
    leased: u64,
    term: u64,
}

fn gc_pass(node: &MetaNode) -> GcPass {
    let h = &node.healing;
    let t = term(node);
    let grace = Duration::from_millis(h.args.gc_grace_ms);
    let inventories = lock(&h.inventories).reports();
    let st = node.read_state();
    let referenced = st.referenced_chunks();
    // A live lease's chunks are not candidates: their grace starts once the lease is gone.
    let leases = st.leased_chunks(crate::service::now_ms());
    let mut leased = 0;
    let mut candidates: HashSet<(NodeId, String)> = HashSet::new();
    let mut unreported = Vec::new();
    for &id in st.chunk_servers.keys() {
        // A report is used only while its server is live and sending it (the last complete
        // listing, or a page of the next one, recent).
        let report = inventories
            .get(&id)
            .filter(|(heard, _)| heard.elapsed() < MAX_REPORT_AGE && node.liveness.is_live(id));
        let Some((_, report)) = report else {
            if node.liveness.is_live(id) {
                unreported.push(id);
            }
            continue;
        };
        let pending = st.pending_deletes.get(&id);
        for c in report.chunks.iter() {
            if referenced.contains(&(c.as_str(), id)) || pending.is_some_and(|p| p.contains(c)) {
                continue;
            }
            if leases.contains(c.as_str()) {
                leased += 1;
            } else {
                candidates.insert((id, c.clone()));
            }
        }
    }
    drop(st);
    let mut seen = lock(&h.orphans);
    seen.retain(|k, _| candidates.contains(k));
    let now = Instant::now();
    let mut orphans: Vec<Orphan> = candidates
        .into_iter()
        .map(|k| {
            let first = *seen.entry(k.clone()).or_insert(now);
            let age = now.duration_since(first);
            Orphan {
                node_id: k.0,
                chunk_id: k.1,
                age_ms: age.as_millis() as u64,
                due: age >= grace,
            }
        })
        .collect();
    orphans.sort_by(|a, b| (a.node_id, &a.chunk_id).cmp(&(b.node_id, &b.chunk_id)));
    GcPass {
        orphans,
        unreported,
        leased,
        term: t,
    }
}

impl MetaNode {
    pub async fn gc(&self, c: &Caller, r: GcRequest) -> OpResult<GcReply> {
        self.write_gate()?;
        self.authenticate_admin(c)?;
        if lock(&self.healing.leader_since).is_none() {
            return Err(Status::unavailable(
                "this leader was elected moments ago and has no chunk reports yet; retry shortly",
            )
            .into());
        }
        let pass = gc_pass(self);
        let mut removed = 0;
        if r.apply {
            let mut by_node: BTreeMap<NodeId, Vec<String>> = BTreeMap::new();
            for o in pass.orphans.iter().filter(|o| o.due) {
                by_node
                    .entry(o.node_id)
                    .or_default()
                    .push(o.chunk_id.clone());
            }
            for (n, chunks) in by_node {
                if !still_leader(self, pass.term) {
                    return Err(Status::aborted(
                        "leadership changed during garbage collection; nothing more was removed, run it again",
                    )
                    .into());
                }
                let count = chunks.len();
                let queued = chunks.clone();
                match self
                    .propose(Command::V1(CommandV1::QueueOrphanDeletes {
                        node: n,
                        chunks,
                    }))
                    .await?
                {
                    crate::state::Reply::Queued { count: q } => {
                        removed += q;
                        self.healing.forget_chunks(n, &queued);
                        tracing::info!(
                            node = self.id,
                            chunk_server = n,
                            orphans = count,
                            queued = q,
                            "orphan chunks queued for deletion"
                        );
                    }
                    _ => return Err(Status::internal("unexpected reply to orphan deletion").into()),
                }
            }
        }
        Ok(GcReply {
            orphans: pass.orphans,
            removed,
            grace_ms: self.healing.args.gc_grace_ms,
            unreported: pass.unreported,
            leased: pass.leased,
        })
    }
}

impl MetaNode {
    /// Plan (and with `apply` run) moves from the most to the least used live chunk servers:
    /// copy, verify, record (the old replica is dropped in the same Raft command and then
    /// deleted).
    pub async fn balance(&self, c: &Caller, r: BalanceRequest) -> OpResult<BalanceReply> {
        self.write_gate()?;
        self.authenticate_admin(c)?;
        let since = *lock(&self.healing.leader_since);
        if r.apply && since.is_none_or(|s| s.elapsed() < self.healing.args.grace()) {
            return Err(Status::unavailable(
                "this leader was elected moments ago and has not heard every chunk server yet; retry shortly",
            )
            .into());
        }
        let t = term(self);
        let view = view(self, since);
        let live = view.live_load();
        let mean = live.values().sum::<u64>() / (live.len().max(1) as u64);
        let pct = if r.threshold_percent == 0 {
            10
        } else {
            r.threshold_percent
        };
        let max_moves = if r.max_moves == 0 {
            1000
        } else {
            r.max_moves as usize
        };
        let (moves, addrs, servers) = {
            let st = self.read_state();
            let addrs: BTreeMap<NodeId, String> = st
                .chunk_servers
                .iter()
                .map(|(id, s)| (*id, s.addr.clone()))
                .collect();
            let servers = live
                .iter()
                .map(|(id, used)| ChunkServerStatus {
                    id: *id,
                    addr: addrs.get(id).cloned().unwrap_or_default(),
                    live: true,
                    used_bytes: *used,
                    ..Default::default()
                })
                .collect();
            let threshold = mean.saturating_mul(pct as u64) / 100;
            (
                repair::balance(&st, &view, threshold, max_moves),
                addrs,
                servers,
            )
        };
        let mut out: Vec<BalanceMove> = moves
            .iter()
            .map(|m| BalanceMove {
                path: m.path.clone(),
                chunk_id: m.chunk_id.clone(),
                from: m.from,
                to: m.to,
                size: m.size,
                ..Default::default()
            })
            .collect();
        let mut moved = 0;
        if r.apply {
            let conc = self.healing.args.repair_concurrency.max(1);
            let results: Vec<(usize, Result<(), String>)> =
                futures::stream::iter(moves.into_iter().enumerate())
                    .map(|(i, m)| {
                        let addrs = &addrs;
                        async move {
                            if !still_leader(self, t) {
                                return (i, Err("leadership changed; not moved".to_string()));
                            }
                            let copy = repair::Copy {
                                path: m.path,
                                file_id: m.file_id,
                                chunk_id: m.chunk_id,
                                size: m.size,
                                crc32c: m.crc32c,
                                sources: vec![m.from],
                                target: m.to,
                                drop: vec![m.from],
                                good: 0,
                            };
                            (
                                i,
                                copy_one(self, addrs, &copy)
                                    .await
                                    .map_err(|e| e.to_string()),
                            )
                        }
                    })
                    .buffer_unordered(conc)
                    .collect()
                    .await;
            for (i, res) in results {
                match res {
                    Ok(()) => {
                        moved += 1;
                        out[i].done = true;
                    }
                    Err(e) => out[i].error = e,
                }
            }
            tracing::info!(
                node = self.id,
                planned = out.len(),
                moved,
                "rebalance finished"
            );
        }
        Ok(BalanceReply {
            moves: out,
            moved,
            servers,
        })
    }
}
