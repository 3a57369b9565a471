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
//! every fourth time, SIGKILL two of three metadata nodes (the leader among
//! them) for 3 s, during which nothing that needs a quorum may be acknowledged. The rotation
//! is chunk kill, cut, leader pause, chunk freeze (the kinds switched on), skipping the
//! majority kills.
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
    Majority,
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

    async fn restart(&self, names: &[String]) -> Result<(), NemesisError> {
        self.record(FaultKind::Restart, names, None)?;
        for n in names {
            self.cluster.start(n).await?;
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
            majority_kills: true,
            lose_chunk_after: None,
        }
    }

    #[test]
    fn the_ci_round_gets_every_kind_of_fault() {
        // The CI's 75 s at a 10 s period has 7 periods.
        let mut r = Rotation::new(&cfg(true));
        let got: Vec<Option<Other>> = (0..7).map(|_| r.next()).collect();
        use Other::*;
        assert_eq!(
            got,
            [Chunk, Cut, Pause, Majority, Freeze, Chunk, Cut].map(Some)
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
