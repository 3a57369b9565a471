//! `dfsctl local up --mount DIR`: the local cluster mounted as a folder too. The mount is an
//! ordinary `dfsctl mount / DIR` process started in the background (its own process group, so
//! it outlives the `local up` that started it), acting as the cluster's admin user. Its pid and
//! folder are kept in `mount.json` beside `cluster.json`, its stderr in `mount.log`.
//!
//! What must stay true: `local up` reports success only once the folder is really mounted (it
//! is in /proc/self/mountinfo), and otherwise says why with the mount's log; `local down`
//! unmounts before it stops the nodes (a mount left on a dead cluster would make every program
//! that touches the folder wait for its timeout); a pid is signalled only while it is still a
//! `dfsctl mount` (a reused pid is left alone).
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What `mount.json` records.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct LocalMount {
    pub pid: u32,
    pub mountpoint: PathBuf,
}

fn record(dir: &Path) -> PathBuf {
    dir.join("mount.json")
}

/// The recorded mount, if its process still runs.
pub fn running(dir: &Path) -> Option<LocalMount> {
    let m: LocalMount = serde_json::from_slice(&std::fs::read(record(dir)).ok()?).ok()?;
    is_mount_process(m.pid).then_some(m)
}

fn is_mount_process(pid: u32) -> bool {
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
    args.first().is_some_and(|a| a.ends_with(b"dfsctl")) && args.contains(&&b"mount"[..])
}

/// Whether `mountpoint` is a mount point now (the kernel's list, with its escaping of blanks).
fn is_mounted(mountpoint: &Path) -> bool {
    let want = mountpoint
        .to_string_lossy()
        .replace('\\', "\\134")
        .replace(' ', "\\040")
        .replace('\t', "\\011")
        .replace('\n', "\\012");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// Mount the cluster (`meta`, with `dir/admin.auth`) on `mountpoint` and wait until it is live.
/// An existing mount of this cluster on the same folder is kept.
pub fn start(
    dir: &Path,
    meta: &[String],
    mountpoint: &Path,
    wait: Duration,
) -> anyhow::Result<LocalMount> {
    use std::os::unix::process::CommandExt;
    std::fs::create_dir_all(mountpoint)
        .with_context(|| format!("cannot create {}", mountpoint.display()))?;
    let mountpoint = std::fs::canonicalize(mountpoint)?;
    if let Some(m) = running(dir) {
        if m.mountpoint == mountpoint && is_mounted(&mountpoint) {
            return Ok(m);
        }
        bail!(
            "this cluster is already mounted on {} (pid {}); `dfsctl local down` unmounts it",
            m.mountpoint.display(),
            m.pid
        );
    }
    if is_mounted(&mountpoint) {
        bail!("{} is already a mount point", mountpoint.display());
    }
    let dir = std::fs::canonicalize(dir)?;
    let log_path = dir.join("mount.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let exe = std::env::current_exe().context("cannot find the dfsctl binary")?;
    let mut child = Command::new(exe)
        .arg("mount")
        .arg("/")
        .arg(&mountpoint)
        .env("DFS_META", meta.join(","))
        .env("DFS_AUTH_FILE", dir.join("admin.auth"))
        .env(
            "DFS_TLS_CA",
            crate::local::local_ca(&dir).unwrap_or_default(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("cannot start dfsctl mount")?;
    let m = LocalMount {
        pid: child.id(),
        mountpoint: mountpoint.clone(),
    };
    dfs_common::durable::write_atomic(&record(&dir), &serde_json::to_vec_pretty(&m)?)?;
    let deadline = Instant::now() + wait;
    loop {
        if is_mounted(&mountpoint) {
            return Ok(m);
        }
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            bail!(
                "the mount on {} exited ({status}):\n    {}",
                mountpoint.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n    ")
            );
        }
        if Instant::now() >= deadline {
            stop(&dir)?;
            bail!(
                "{} was not mounted within {} s (see {})",
                mountpoint.display(),
                wait.as_secs(),
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Unmount: SIGTERM the mount process and wait (10 s) for it to unmount and exit; SIGKILL
/// after that (the kernel then ends the FUSE connection). Returns the folder it unmounted.
pub fn stop(dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let Some(m) = running(dir) else {
        let _ = std::fs::remove_file(record(dir));
        return Ok(None);
    };
    // `running` checked the pid is our `dfsctl mount`.
    crate::local::terminate(m.pid, Duration::from_secs(10), || is_mount_process(m.pid));
    std::fs::remove_file(record(dir))?;
    Ok(Some(m.mountpoint))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_record_means_no_mount_and_stop_is_a_no_op() {
        let d = tempfile::tempdir().unwrap();
        assert!(running(d.path()).is_none());
        assert_eq!(stop(d.path()).unwrap(), None);
        // A record whose pid is not a dfsctl mount (this test process) is not signalled.
        let m = LocalMount {
            pid: std::process::id(),
            mountpoint: d.path().into(),
        };
        std::fs::write(record(d.path()), serde_json::to_vec(&m).unwrap()).unwrap();
        assert!(running(d.path()).is_none());
        assert_eq!(stop(d.path()).unwrap(), None);
    }

    #[test]
    fn the_root_is_mounted_and_a_temp_dir_is_not() {
        assert!(is_mounted(Path::new("/")));
        let d = tempfile::tempdir().unwrap();
        assert!(!is_mounted(d.path()));
    }
}
