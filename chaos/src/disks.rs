//! Power cuts and failing disks: each node's data directory on a powerfs of its own (`powerfs
//! serve`, which keeps written data in memory until it is fsynced), mounted before the cluster
//! is laid out and unmounted after it stops; `cut` drops a node's unsynced bytes, as a power
//! loss does (a torn cut leaves part of them); `fail` makes its disk fail until `heal`.
//!
//! What must stay true: a node is SIGKILLed (and seen dead) before its disk is cut, so nothing
//! writes between the cut and the restart; the mounts live in the run's own mount namespace
//! (chaos re-executes itself under `unshare -m`), and every powerfs dies with chaos
//! (PR_SET_PDEATHSIG), so an interrupted run leaves no mount behind.
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot run {bin}: {source} (build it with `cargo build --workspace --bins`; --no-power-cuts --no-disk-faults runs without it)")]
    Spawn {
        bin: PathBuf,
        source: std::io::Error,
    },
    #[error("the powerfs of {node} did not mount on {mountpoint} within 10 s (see {log})")]
    NotMounted {
        node: String,
        mountpoint: PathBuf,
        log: PathBuf,
    },
    #[error("no disk for {0}")]
    NoDisk(String),
    #[error("telling the disk of {node} to {command}: {detail}")]
    Control {
        node: String,
        command: String,
        detail: String,
    },
}

struct Disk {
    node: String,
    mountpoint: PathBuf,
    control: PathBuf,
    process: Child,
}

/// The powerfs of every node.
pub struct Disks {
    disks: Vec<Disk>,
}

fn mounted(mountpoint: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = mountpoint.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| m == want))
}

impl Disks {
    /// Mount a powerfs at `cluster_dir/<node>` for each of `nodes`, backed by `disks_dir/<node>`.
    pub fn mount(
        bin_dir: &Path,
        disks_dir: &Path,
        cluster_dir: &Path,
        nodes: &[String],
    ) -> Result<Disks, DiskError> {
        let bin = bin_dir.join("powerfs");
        let mut out = Disks { disks: Vec::new() };
        for node in nodes {
            let backing = disks_dir.join(node);
            let mountpoint = cluster_dir.join(node);
            let control = disks_dir.join(format!("{node}.sock"));
            let log = disks_dir.join(format!("{node}.log"));
            let spawn_err = |source| DiskError::Spawn {
                bin: bin.clone(),
                source,
            };
            let _ = std::fs::create_dir_all(disks_dir);
            let log_file = std::fs::File::create(&log).map_err(spawn_err)?;
            let mut cmd = Command::new(&bin);
            cmd.args(["serve", "--backing"])
                .arg(&backing)
                .arg("--mountpoint")
                .arg(&mountpoint)
                .arg("--control")
                .arg(&control)
                .env("DFS_LOG", "warn,fuser=error")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file);
            // SAFETY: prctl in the child between fork and exec touches no memory of ours.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
            let process = cmd.spawn().map_err(spawn_err)?;
            out.disks.push(Disk {
                node: node.clone(),
                mountpoint: mountpoint.clone(),
                control: control.clone(),
                process,
            });
            let deadline = Instant::now() + Duration::from_secs(10);
            while !(mounted(&mountpoint) && control.exists()) {
                if Instant::now() > deadline {
                    return Err(DiskError::NotMounted {
                        node: node.clone(),
                        mountpoint,
                        log,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(out)
    }

    /// Send `command` to the powerfs of `node`; its answer after `ok`.
    fn send(&self, node: &str, command: &str) -> Result<String, DiskError> {
        let d = self
            .disks
            .iter()
            .find(|d| d.node == node)
            .ok_or_else(|| DiskError::NoDisk(node.to_string()))?;
        let err = |detail: String| DiskError::Control {
            node: node.to_string(),
            command: command.to_string(),
            detail,
        };
        let answer =
            dfs_powerfs::control::send(&d.control, command).map_err(|e| err(e.to_string()))?;
        match answer.strip_prefix("ok") {
            Some(rest) => Ok(rest.trim().to_string()),
            None => Err(err(answer)),
        }
    }

    /// Drop every byte `node` wrote and did not fsync (a torn cut first puts part of them on
    /// its disk); says how much.
    pub fn cut(&self, node: &str, torn: bool) -> Result<String, DiskError> {
        let answer = self.send(node, if torn { "cut torn" } else { "cut" })?;
        let f: Vec<&str> = answer.split(' ').collect();
        Ok(format!(
            "{} unsynced bytes in {} files dropped{}",
            f.first().unwrap_or(&"?"),
            f.get(1).unwrap_or(&"?"),
            if torn {
                ", part of them torn onto the disk"
            } else {
                ""
            }
        ))
    }

    /// Make the disk of `node` fail (`eio-read`, `eio-write` or `enospc`) until `heal`.
    pub fn fail(&self, node: &str, fault: &str) -> Result<(), DiskError> {
        self.send(node, &format!("fail {fault}")).map(|_| ())
    }

    /// End the disk fault of `node`, if any.
    pub fn heal(&self, node: &str) -> Result<(), DiskError> {
        self.send(node, "heal").map(|_| ())
    }

    /// End every disk fault.
    pub fn heal_all(&self) -> Result<(), DiskError> {
        for d in &self.disks {
            self.heal(&d.node)?;
        }
        Ok(())
    }

    /// Unmount every disk (SIGTERM to each powerfs, which unmounts) and wait for them.
    pub fn unmount(mut self) {
        for d in &mut self.disks {
            // SAFETY: kill(2) on a child we spawned and have not reaped.
            unsafe {
                libc::kill(d.process.id() as i32, libc::SIGTERM);
            }
        }
        for d in &mut self.disks {
            let _ = d.process.wait();
            if mounted(&d.mountpoint) {
                // SAFETY: umount2 of a path we mounted; a NUL-terminated copy is passed.
                if let Ok(c) = std::ffi::CString::new(d.mountpoint.to_string_lossy().as_bytes()) {
                    unsafe {
                        libc::umount2(c.as_ptr(), libc::MNT_DETACH);
                    }
                }
            }
        }
    }
}
