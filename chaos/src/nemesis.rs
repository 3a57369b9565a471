//! The nemesis: faults injected while the workload runs, each switchable, each bounded (every
//! fault is undone before the next starts), so the run always ends with every node back.
//!
//! The clock is the leader-kill period K. At the start of each period: SIGKILL the current
//! leader, restart it 1–2 s later. Half a period later, one other fault, in rotation:
//! SIGKILL a random chunk server and restart it 1–3 s later; SIGSTOP the leader for 1.5–4 s
//! and SIGCONT it; SIGSTOP a random running chunk server for 2–6 s while the clients write
//! (a frozen server: its sockets stay open, it answers nothing) and SIGCONT it; cut a
//! metadata node's inbound traffic for 3–6 s (every packet to its listen port dropped, its own
//! connections still work; the leader three times in four, else a follower; see `netns`); and
//! a partition for 5.5–8 s, then healed (see below); a power cut (see below); and every fourth
//! time, SIGKILL two of three metadata nodes (the leader among them) for 3 s, during which
//! nothing that needs a quorum may be acknowledged. The rotation is chunk kill, cut, partition,
//! power cut, failing disk, leader pause, chunk freeze (the kinds switched on), skipping the
//! majority kills.
//!
//! Power cuts take turns among four targets: the whole cluster at once, the leader, a chunk
//! server, a follower. Each target is SIGKILLed, then its powerfs drops every byte it wrote and
//! did not fsync, and it is started again 1–2 s later. Every other cut is torn: part of the
//! unsynced bytes reach the disk first (whole sectors, the first half in write order).
//!
//! Failing disks take turns among six (node, fault) pairs (see `DISK_FAULTS`): the node's
//! powerfs fails reads or writes with EIO, or is full, for 3–6 s, then is healed; a node that
//! exited on the fault (a metasrv stops when its Raft storage fails) is started again, and the
//! heal is recorded once it runs.
//!
//! Partitions take turns among six shapes (each node sends from an address of its own, the
//! clients from 127.0.0.1): the leader isolated from every other node (the clients still reach
//! it); a majority/minority split of the metadata group with the chunk servers on both sides;
//! a bridge (two metadata nodes that cannot see each other, both seeing the third); a one-way
//! link (every packet from the leader to the other metadata nodes dropped, or every packet to
//! it from them); the chunk servers cut from the metadata group but not from the clients; the
//! clients cut from one chunk server. The history names the nodes cut off from the majority's
//! side and the note lists the links.
//! With `lose_chunk_after`, the first period starting after that long also SIGKILLs one chunk
//! server for good: it is never started again, and the cluster must re-replicate its chunks.
//! Every fault is recorded in the history at the moment it took effect. A fault's length is
//! capped at 0.8 × half a period (4 s at the CI's 10 s period), so it is undone before the
//! next one starts; a node still stopped when the nemesis ends early is in `paused`, which
//! `Cluster::heal` resumes, and a cut still in place is undone by `Cluster::heal` too.
use crate::cluster::{Cluster, ClusterError};
use crate::history::{Clock, Fault, FaultKind, HistoryError, HistoryWriter, Record};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum NemesisError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    History(#[from] HistoryError),
}

#[derive(Debug, Clone)]
pub struct NemesisConfig {
    /// None: no leader kills.
    pub kill_leader_every: Option<Duration>,
    pub chunk_kills: bool,
    pub pauses: bool,
    /// SIGSTOP a chunk server for a few seconds, then SIGCONT it.
    pub chunk_freezes: bool,
    /// Cut a metadata node's inbound traffic (needs the private network namespace).
    pub cuts: bool,
    /// Partition the nodes (needs the private network namespace and `--own-addresses`).
    pub partitions: bool,
    /// Cut the power of nodes (their data directories on powerfs).
    pub power_cuts: bool,
    /// Make nodes' disks fail for a while (their data directories on powerfs).
    pub disk_faults: bool,
    pub majority_kills: bool,
    /// Kill one chunk server for good this long after the start.
    pub lose_chunk_after: Option<Duration>,
}

/// How long two of three metadata nodes stay dead.
const MAJORITY_DOWN: Duration = Duration::from_secs(3);
/// Period of the other faults when leaders are not killed.
const DEFAULT_PERIOD: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Other {
    Chunk,
    Pause,
    Freeze,
    Cut,
    Partition,
    Power,
    Disk,
    Majority,
}

/// Who loses power, taken in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PowerTarget {
    Cluster,
    Leader,
    Chunk,
    Follower,
}

const POWER_TARGETS: [PowerTarget; 4] = [
    PowerTarget::Cluster,
    PowerTarget::Leader,
    PowerTarget::Chunk,
    PowerTarget::Follower,
];

/// Whose disk fails, and how, taken in turn: the leader's Raft log first (it must stop, and
/// the others elect), then full disks, then failing reads and writes of chunk servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DiskTarget {
    Leader,
    Follower,
    Chunk,
}

const DISK_FAULTS: [(DiskTarget, &str); 6] = [
    (DiskTarget::Leader, "eio-write"),
    (DiskTarget::Chunk, "enospc"),
    (DiskTarget::Follower, "enospc"),
    (DiskTarget::Chunk, "eio-read"),
    (DiskTarget::Chunk, "eio-write"),
    (DiskTarget::Leader, "enospc"),
];

/// The shapes of partition, taken in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    IsolateLeader,
    Split,
    Bridge,
    OneWay,
    ChunksFromMetas,
    ClientsFromChunk,
}

const SHAPES: [Shape; 6] = [
    Shape::IsolateLeader,
    Shape::Split,
    Shape::Bridge,
    Shape::OneWay,
    Shape::ChunksFromMetas,
    Shape::ClientsFromChunk,
];

/// A partition to make: the links to drop (from, to), the nodes cut off from the majority's
/// side, and a note for the history.
type Cutting = (Vec<(String, String)>, Vec<String>, String);

/// Both directions of every link between a node of `a` and a node of `b`.
fn cut_between(a: &[String], b: &[String]) -> Vec<(String, String)> {
    let mut links = Vec::new();
    for x in a {
        for y in b {
            links.push((x.clone(), y.clone()));
            links.push((y.clone(), x.clone()));
        }
    }
    links
}

/// Which other fault each period gets: every fourth a majority kill (when on), the others in
/// turn (chunk kill, cut, leader pause, chunk freeze: those switched on), the turn going on
/// across the majority kills' periods.
struct Rotation {
    others: Vec<Other>,
    majority_kills: bool,
    round: usize,
    nth_other: usize,
}

impl Rotation {
    fn new(cfg: &NemesisConfig) -> Rotation {
        let others = [
            (cfg.chunk_kills, Other::Chunk),
            (cfg.cuts, Other::Cut),
            (cfg.partitions, Other::Partition),
            (cfg.power_cuts, Other::Power),
            (cfg.disk_faults, Other::Disk),
            (cfg.pauses, Other::Pause),
            (cfg.chunk_freezes, Other::Freeze),
        ]
        .into_iter()
        .filter_map(|(on, o)| on.then_some(o))
        .collect();
        Rotation {
            others,
            majority_kills: cfg.majority_kills,
            round: 0,
            nth_other: 0,
        }
    }

    fn next(&mut self) -> Option<Other> {
        let round = self.round;
        self.round += 1;
        if self.majority_kills && round % 4 == 3 {
            return Some(Other::Majority);
        }
        if self.others.is_empty() {
            return None;
        }
        let o = self.others[self.nth_other % self.others.len()];
        self.nth_other += 1;
        Some(o)
    }
}

pub struct Nemesis {
    cluster: Arc<Cluster>,
    history: Arc<HistoryWriter>,
    clock: Clock,
    cfg: NemesisConfig,
    rng: StdRng,
    /// Nodes stopped with SIGSTOP and not yet resumed (for healing after an error).
    pub paused: Vec<String>,
    /// How many partitions were made (their shapes go in turn).
    partitions_made: usize,
    /// How many power cuts were made (their targets go in turn).
    power_cuts_made: usize,
    /// How many disks were made to fail (their targets go in turn).
    disk_faults_made: usize,
}

fn millis(rng: &mut StdRng, lo: u64, hi: u64, cap: Duration) -> Duration {
    let cap = cap.as_millis() as u64;
    let hi = hi.min(cap).max(1);
    Duration::from_millis(rng.gen_range(lo.min(hi)..=hi))
}

impl Nemesis {
    pub fn new(
        cluster: Arc<Cluster>,
        history: Arc<HistoryWriter>,
        clock: Clock,
        cfg: NemesisConfig,
    ) -> Nemesis {
        Nemesis {
            cluster,
            history,
            clock,
            cfg,
            rng: StdRng::from_entropy(),
            paused: Vec::new(),
            partitions_made: 0,
            power_cuts_made: 0,
            disk_faults_made: 0,
        }
    }

    fn record(
        &self,
        kind: FaultKind,
        nodes: &[String],
        note: Option<String>,
    ) -> Result<(), HistoryError> {
        self.history.write(&Record::Fault(Fault {
            kind,
            nodes: nodes.to_vec(),
            at_us: self.clock.now_us(),
            note,
        }))
    }

    /// The leader, once every metadata node runs and one is elected (None after `wait`).
    async fn settled_leader(&self, wait: Duration) -> Result<Option<String>, NemesisError> {
        let deadline = Instant::now() + wait;
        for m in self.cluster.names("meta")? {
            while !self.cluster.is_alive(&m) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        Ok(self
            .cluster
            .leader(left.max(Duration::from_millis(500)))
            .await?)
    }

    /// Start `names` again; one that will not start is given up (`Cluster::restart_or_give_up`)
    /// and recorded as `unrecovered`.
    async fn restart(&self, names: &[String]) -> Result<(), NemesisError> {
        // Recorded before the start: the quorum checker's windows end there.
        self.record(FaultKind::Restart, names, None)?;
        let mut gone = Vec::new();
        for n in names {
            if !self.cluster.restart_or_give_up(n).await {
                gone.push(n.clone());
            }
        }
        if !gone.is_empty() {
            self.record(FaultKind::Unrecovered, &gone, None)?;
        }
        Ok(())
    }

    async fn kill_leader(&mut self, budget: Duration) -> Result<(), NemesisError> {
        let Some(leader) = self.settled_leader(Duration::from_secs(10)).await? else {
            self.record(
                FaultKind::KillLeader,
                &[],
                Some("skipped: no leader elected".into()),
            )?;
            return Ok(());
        };
        self.cluster.kill(&leader).await?;
        let nodes = vec![leader];
        self.record(FaultKind::KillLeader, &nodes, None)?;
        let delay = millis(&mut self.rng, 1000, 2000, budget);
        tokio::time::sleep(delay).await;
        self.restart(&nodes).await
    }

    /// A random chunk server that is running.
    fn live_chunk_server(&mut self) -> Result<Option<String>, NemesisError> {
        let alive: Vec<String> = self
            .cluster
            .names("chunk")?
            .into_iter()
            .filter(|n| self.cluster.is_alive(n))
            .collect();
        Ok(alive.choose(&mut self.rng).cloned())
    }

    async fn kill_chunk(&mut self, budget: Duration) -> Result<(), NemesisError> {
        let Some(victim) = self.live_chunk_server()? else {
            return Ok(());
        };
        self.cluster.kill(&victim).await?;
        let nodes = vec![victim];
        self.record(FaultKind::KillChunk, &nodes, None)?;
        let delay = millis(&mut self.rng, 1000, 3000, budget);
        tokio::time::sleep(delay).await;
        self.restart(&nodes).await
    }

    async fn lose_chunk(&mut self) -> Result<(), NemesisError> {
        let Some(victim) = self.live_chunk_server()? else {
            return Ok(());
        };
        self.cluster.lose(&victim).await?;
        self.record(
            FaultKind::LoseChunk,
            &[victim],
            Some("never restarted".into()),
        )?;
        Ok(())
    }

    async fn pause_leader(&mut self, budget: Duration) -> Result<(), NemesisError> {
        let Some(leader) = self.settled_leader(Duration::from_secs(5)).await? else {
            return Ok(());
        };
        self.cluster.pause(&leader)?;
        self.paused.push(leader.clone());
        let nodes = vec![leader.clone()];
        self.record(FaultKind::Pause, &nodes, None)?;
        let delay = millis(&mut self.rng, 1500, 4000, budget);
        tokio::time::sleep(delay).await;
        self.cluster.resume(&leader)?;
        self.paused.retain(|p| *p != leader);
        self.record(FaultKind::Resume, &nodes, None)?;
        Ok(())
    }

    /// SIGSTOP a running chunk server for 5.5–8 s (at most `budget`), then SIGCONT it. Longer
    /// than the default availability bound when the period allows, so that clients waiting
    /// the freeze out, instead of giving the server up, fail the run.
    async fn freeze_chunk(&mut self, budget: Duration) -> Result<(), NemesisError> {
        let Some(victim) = self.live_chunk_server()? else {
            return Ok(());
        };
        self.cluster.pause(&victim)?;
        self.paused.push(victim.clone());
        let nodes = vec![victim.clone()];
        self.record(FaultKind::FreezeChunk, &nodes, None)?;
        let delay = millis(&mut self.rng, 5500, 8000, budget);
        tokio::time::sleep(delay).await;
        self.cluster.resume(&victim)?;
        self.paused.retain(|p| *p != victim);
        self.record(FaultKind::Resume, &nodes, None)?;
        Ok(())
    }

    /// Cut the inbound traffic of the leader (three times in four) or of a follower for 5.5–8 s
    /// (at most `budget`), then undo it. Longer than the default availability bound when the
    /// period allows, so that a cut leader nobody replaces fails the run.
    async fn cut(&mut self, budget: Duration) -> Result<(), NemesisError> {
        let Some(leader) = self.settled_leader(Duration::from_secs(5)).await? else {
            return Ok(());
        };
        let followers: Vec<String> = self
            .cluster
            .names("meta")?
            .into_iter()
            .filter(|m| *m != leader && self.cluster.is_alive(m))
            .collect();
        let (victim, note) = match followers.choose(&mut self.rng) {
            Some(f) if !self.rng.gen_bool(0.75) => (f.clone(), "a follower"),
            _ => (leader, "the leader"),
        };
        self.cluster.cut(&victim)?;
        let nodes = vec![victim];
        self.record(FaultKind::Cut, &nodes, Some(note.into()))?;
        let delay = millis(&mut self.rng, 5500, 8000, budget);
        tokio::time::sleep(delay).await;
        self.cluster.uncut()?;
        self.record(FaultKind::Uncut, &nodes, None)?;
        Ok(())
    }

    /// The links to drop for `shape`, the nodes they cut off from the majority's side and a
    /// note; None when the cluster has too few nodes up for it.
    fn shape_links(&mut self, shape: Shape, leader: &str) -> Result<Option<Cutting>, NemesisError> {
        let alive = |c: &Cluster, n: &String| c.is_alive(n);
        let metas: Vec<String> = self.cluster.names("meta")?;
        let followers: Vec<String> = metas.iter().filter(|m| *m != leader).cloned().collect();
        let chunks: Vec<String> = self
            .cluster
            .names("chunk")?
            .into_iter()
            .filter(|c| !self.cluster.is_lost(c))
            .collect();
        if followers.len() < 2 || chunks.is_empty() {
            return Ok(None);
        }
        let l = leader.to_string();
        Ok(Some(match shape {
            Shape::IsolateLeader => {
                let others: Vec<String> = followers.iter().chain(&chunks).cloned().collect();
                (
                    cut_between(std::slice::from_ref(&l), &others),
                    vec![l.clone()],
                    format!("{l} (the leader) isolated from every other node"),
                )
            }
            Shape::Split => {
                // A minority of the metadata group (the leader in it half the time) and fewer
                // than half of the chunk servers on one side.
                let mut minority_metas = vec![if self.rng.gen_bool(0.5) {
                    l.clone()
                } else {
                    followers.choose(&mut self.rng).cloned().unwrap_or_default()
                }];
                minority_metas.truncate((metas.len() - 1) / 2);
                let mut shuffled = chunks.clone();
                shuffled.shuffle(&mut self.rng);
                let minority_chunks: Vec<String> = shuffled[..(chunks.len() - 1) / 2].to_vec();
                let minority: Vec<String> = minority_metas
                    .iter()
                    .chain(&minority_chunks)
                    .cloned()
                    .collect();
                let majority: Vec<String> = metas
                    .iter()
                    .chain(&chunks)
                    .filter(|n| !minority.contains(n))
                    .cloned()
                    .collect();
                let note = format!("split: {} | {}", minority.join(","), majority.join(","));
                (cut_between(&minority, &majority), minority, note)
            }
            Shape::Bridge => {
                // Two metadata nodes that cannot see each other; the third sees both.
                let mut ends = metas.clone();
                ends.shuffle(&mut self.rng);
                let bridge = ends.pop().unwrap_or_default();
                let (x, y) = (ends[0].clone(), ends[1].clone());
                // The end that does not lead is the one cut off from the leader's side.
                let off = if y == l { x.clone() } else { y.clone() };
                let note = format!("bridge: {x} and {y} cut from each other, {bridge} sees both");
                (
                    cut_between(std::slice::from_ref(&x), std::slice::from_ref(&y)),
                    vec![off],
                    note,
                )
            }
            Shape::OneWay => {
                let out_of_leader = self.rng.gen_bool(0.5);
                let links = followers
                    .iter()
                    .map(|f| {
                        if out_of_leader {
                            (l.clone(), f.clone())
                        } else {
                            (f.clone(), l.clone())
                        }
                    })
                    .collect();
                let note = if out_of_leader {
                    format!("one way: every packet from {l} (the leader) to the other metadata nodes dropped")
                } else {
                    format!("one way: every packet to {l} (the leader) from the other metadata nodes dropped")
                };
                (links, vec![l.clone()], note)
            }
            Shape::ChunksFromMetas => (
                cut_between(&chunks, &metas),
                chunks.clone(),
                "every chunk server cut from the metadata group (not from the clients)".into(),
            ),
            Shape::ClientsFromChunk => {
                let live: Vec<String> = chunks
                    .iter()
                    .filter(|c| alive(&self.cluster, c))
                    .cloned()
                    .collect();
                let Some(victim) = live.choose(&mut self.rng).cloned() else {
                    return Ok(None);
                };
                (
                    cut_between(
                        &[crate::cluster::CLIENTS.to_string()],
                        std::slice::from_ref(&victim),
                    ),
                    vec![victim.clone()],
                    format!("the clients cut from {victim}"),
                )
            }
        }))
    }

    /// Partition the nodes in the next shape for 5.5–8 s (at most `budget`), then heal.
    async fn partition(&mut self, budget: Duration) -> Result<(), NemesisError> {
        let Some(leader) = self.settled_leader(Duration::from_secs(5)).await? else {
            return Ok(());
        };
        let shape = SHAPES[self.partitions_made % SHAPES.len()];
        self.partitions_made += 1;
        let Some((links, out, note)) = self.shape_links(shape, &leader)? else {
            return Ok(());
        };
        self.cluster.partition(&links, &out)?;
        self.record(FaultKind::Partition, &out, Some(note))?;
        let delay = millis(&mut self.rng, 5500, 8000, budget);
        tokio::time::sleep(delay).await;
        self.cluster.uncut()?;
        self.record(FaultKind::Heal, &out, None)?;
        Ok(())
    }

    /// Cut the power of the next target: SIGKILL, drop its unsynced bytes, restart 1–2 s later.
    async fn power_cut(&mut self, budget: Duration) -> Result<(), NemesisError> {
        let Some(leader) = self.settled_leader(Duration::from_secs(5)).await? else {
            return Ok(());
        };
        let n = self.power_cuts_made;
        let target = POWER_TARGETS[n % POWER_TARGETS.len()];
        // Every other cut is torn, shifted each round so that every target gets both.
        let torn = (n + n / POWER_TARGETS.len()) % 2 == 1;
        self.power_cuts_made += 1;
        let metas = self.cluster.names("meta")?;
        let chunks: Vec<String> = self
            .cluster
            .names("chunk")?
            .into_iter()
            .filter(|c| self.cluster.is_alive(c))
            .collect();
        let followers: Vec<String> = metas.iter().filter(|m| **m != leader).cloned().collect();
        let victims: Vec<String> = match target {
            PowerTarget::Cluster => metas.iter().chain(&chunks).cloned().collect(),
            PowerTarget::Leader => vec![leader],
            PowerTarget::Chunk => chunks.choose(&mut self.rng).cloned().into_iter().collect(),
            PowerTarget::Follower => followers
                .choose(&mut self.rng)
                .cloned()
                .into_iter()
                .collect(),
        };
        if victims.is_empty() {
            return Ok(());
        }
        for v in &victims {
            self.cluster.kill(v).await?;
        }
        let mut dropped = Vec::new();
        for v in &victims {
            dropped.push(format!("{v}: {}", self.cluster.power_cut(v, torn)?));
        }
        let what = if target == PowerTarget::Cluster {
            "the whole cluster"
        } else {
            "one node"
        };
        self.record(
            FaultKind::PowerCut,
            &victims,
            Some(format!("{what}; {}", dropped.join(", "))),
        )?;
        let delay = millis(&mut self.rng, 1000, 2000, budget);
        tokio::time::sleep(delay).await;
        self.restart(&victims).await
    }

    /// Make the next target's disk fail for 3–6 s, heal it, and start the node again if it
    /// exited meanwhile.
    async fn disk_fault(&mut self, budget: Duration) -> Result<(), NemesisError> {
        let Some(leader) = self.settled_leader(Duration::from_secs(5)).await? else {
            return Ok(());
        };
        let (target, fault) = DISK_FAULTS[self.disk_faults_made % DISK_FAULTS.len()];
        self.disk_faults_made += 1;
        let victim = match target {
            DiskTarget::Leader => Some(leader.clone()),
            DiskTarget::Follower => self
                .cluster
                .names("meta")?
                .into_iter()
                .filter(|m| *m != leader)
                .collect::<Vec<_>>()
                .choose(&mut self.rng)
                .cloned(),
            DiskTarget::Chunk => self.live_chunk_server()?,
        };
        let Some(victim) = victim else {
            return Ok(());
        };
        let role = match target {
            DiskTarget::Leader => "the leader",
            DiskTarget::Follower => "a follower",
            DiskTarget::Chunk => "a chunk server",
        };
        self.cluster.disk_fault(&victim, Some(fault))?;
        let one = std::slice::from_ref(&victim);
        self.record(
            FaultKind::DiskFault,
            one,
            Some(format!("{fault} on {role}")),
        )?;
        tokio::time::sleep(millis(&mut self.rng, 3000, 6000, budget)).await;
        self.cluster.disk_fault(&victim, None)?;
        let exited = !self.cluster.is_alive(&victim);
        let note = match exited {
            false => "it kept running",
            true if self.cluster.restart_or_give_up(&victim).await => {
                "it had exited on the fault and was started again"
            }
            true => {
                self.record(FaultKind::Unrecovered, one, None)?;
                "it had exited on the fault and did not start again"
            }
        };
        self.record(FaultKind::DiskHeal, one, Some(note.into()))?;
        Ok(())
    }

    async fn kill_majority(&mut self) -> Result<(), NemesisError> {
        let Some(leader) = self.settled_leader(Duration::from_secs(10)).await? else {
            return Ok(());
        };
        let metas = self.cluster.names("meta")?;
        if metas.len() < 3 {
            return Ok(());
        }
        let others: Vec<String> = metas.into_iter().filter(|m| *m != leader).collect();
        let need = others.len() + 1;
        let kill = need / 2 + need % 2; // a majority: 2 of 3, 3 of 5
        let mut victims = vec![leader];
        victims.extend(others.choose_multiple(&mut self.rng, kill - 1).cloned());
        for v in &victims {
            self.cluster.kill(v).await?;
        }
        self.record(FaultKind::KillMajority, &victims, None)?;
        tokio::time::sleep(MAJORITY_DOWN).await;
        self.restart(&victims).await
    }

    /// Inject faults until `until`; each is undone before the next begins.
    pub async fn run(&mut self, until: Instant) -> Result<(), NemesisError> {
        let period = self.cfg.kill_leader_every.unwrap_or(DEFAULT_PERIOD);
        let half = period / 2;
        // The next fault must fit before the end, with a little quiet time after it.
        let tail = Duration::from_secs(3);
        let mut rotation = Rotation::new(&self.cfg);
        let started = Instant::now();
        let mut slot_start = started + Duration::from_secs(2);
        let mut lose_at = self.cfg.lose_chunk_after.map(|d| started + d);
        loop {
            if slot_start + tail >= until {
                return Ok(());
            }
            tokio::time::sleep_until(slot_start.into()).await;
            if lose_at.is_some_and(|t| Instant::now() >= t) {
                lose_at = None;
                self.lose_chunk().await?;
            }
            if self.cfg.kill_leader_every.is_some() {
                self.kill_leader(period.mul_f64(0.4)).await?;
            }
            let mid = slot_start + half;
            let other = rotation.next();
            let longest = match other {
                Some(Other::Majority) => MAJORITY_DOWN + Duration::from_secs(2),
                Some(_) => half.mul_f64(0.8),
                None => Duration::ZERO,
            };
            if other.is_some() && mid.max(Instant::now()) + longest + tail < until {
                tokio::time::sleep_until(mid.into()).await;
                let budget = half.mul_f64(0.8);
                match other {
                    Some(Other::Chunk) => self.kill_chunk(budget).await?,
                    Some(Other::Pause) => self.pause_leader(budget).await?,
                    Some(Other::Freeze) => self.freeze_chunk(budget).await?,
                    Some(Other::Cut) => self.cut(budget).await?,
                    Some(Other::Partition) => self.partition(budget).await?,
                    Some(Other::Power) => self.power_cut(budget).await?,
                    Some(Other::Disk) => self.disk_fault(budget).await?,
                    Some(Other::Majority) => self.kill_majority().await?,
                    None => {}
                }
            }
            slot_start += period;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(cuts: bool) -> NemesisConfig {
        NemesisConfig {
            kill_leader_every: Some(Duration::from_secs(10)),
            chunk_kills: true,
            pauses: true,
            chunk_freezes: true,
            cuts,
            partitions: cuts,
            power_cuts: cuts,
            disk_faults: cuts,
            majority_kills: true,
            lose_chunk_after: None,
        }
    }

    #[test]
    fn the_ci_round_gets_every_kind_of_fault() {
        // The CI's 160 s at a 16 s period has 10 periods, the last too short for a fault.
        let mut r = Rotation::new(&cfg(true));
        let got: Vec<Option<Other>> = (0..9).map(|_| r.next()).collect();
        use Other::*;
        assert_eq!(
            got,
            [Chunk, Cut, Partition, Majority, Power, Disk, Pause, Majority, Freeze].map(Some)
        );
        let mut r = Rotation::new(&cfg(false));
        let got: Vec<Option<Other>> = (0..7).map(|_| r.next()).collect();
        assert_eq!(
            got,
            [Chunk, Pause, Freeze, Majority, Chunk, Pause, Freeze].map(Some)
        );
        let mut none = cfg(false);
        none.chunk_kills = false;
        none.pauses = false;
        none.chunk_freezes = false;
        none.majority_kills = false;
        assert_eq!(Rotation::new(&none).next(), None);
    }
}
