//! chaos: start a real dfs cluster, run a contending workload while a nemesis kills and pauses
//! nodes, record every operation, then check the history: no acknowledged write lost,
//! linearizable namespace per group of paths, no phantom reads, members converged, files fully
//! replicated, nothing acknowledged without a quorum.
//!
//! One job per module: `cluster` (control of the processes, via `dfsctl local`), `nemesis`
//! (fault schedule), `netns` (the private network namespace and nftables rule of cuts),
//! `disks` (each node's data directory on a powerfs, for power cuts),
//! `workload` (clients), `history` (JSON lines), `checker` (the checks),
//! `report` (table and JSON).
pub mod checker;
pub mod cluster;
pub mod disks;
pub mod history;
pub mod nemesis;
pub mod netns;
pub mod report;
pub mod workload;
