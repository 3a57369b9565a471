//! `powerfs`: mount a power-loss file system over a backing directory, or cut its power.
//!
//! ```text
//! powerfs serve --backing DIR --mountpoint DIR --control SOCKET   # runs until SIGTERM/SIGINT
//! powerfs cut --control SOCKET [--torn]                           # drop every unsynced byte
//! powerfs fail eio-read|eio-write|enospc --control SOCKET          # the disk fails until healed
//! powerfs heal --control SOCKET
//! ```
use anyhow::Context;
use clap::{Parser, Subcommand};
use dfs_powerfs::{control, fs::Backing, fs::PowerFs};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "powerfs",
    about = "A FUSE file system that keeps written data in memory until it is fsynced, and loses it on a power cut (for chaos runs)."
)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mount DIR over the backing directory and serve until SIGTERM or SIGINT (then unmount).
    Serve {
        #[arg(long)]
        backing: PathBuf,
        #[arg(long)]
        mountpoint: PathBuf,
        #[arg(long)]
        control: PathBuf,
        /// Pending bytes kept before the largest file is written back (without a sync).
        #[arg(long, default_value_t = 256)]
        max_pending_mib: u64,
    },
    /// Drop every unsynced byte of the powerfs behind SOCKET (a power cut).
    Cut {
        #[arg(long)]
        control: PathBuf,
        /// Put part of each file's unsynced bytes on the disk first (whole 512-byte sectors
        /// of the first half, in write order): a torn write.
        #[arg(long)]
        torn: bool,
    },
    /// Make the disk fail until `heal`: eio-read (reads fail with EIO), eio-write (writes,
    /// fsyncs and changes to the tree fail with EIO; a failed fsync drops the file's unsynced
    /// bytes) or enospc (a full disk: growing writes and new files fail with ENOSPC).
    Fail {
        #[arg(value_parser = ["eio-read", "eio-write", "enospc"])]
        fault: String,
        #[arg(long)]
        control: PathBuf,
    },
    /// End the disk fault made by `fail`.
    Heal {
        #[arg(long)]
        control: PathBuf,
    },
    /// Print the unsynced bytes and files of the powerfs behind SOCKET.
    Pending {
        #[arg(long)]
        control: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DFS_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Not its default eprintln! of a failed log write: that panics when stderr cannot be
        // written (a full or failing log disk), in whichever thread logged.
        .log_internal_errors(false)
        .init();
    match Args::parse().cmd {
        Cmd::Serve {
            backing,
            mountpoint,
            control,
            max_pending_mib,
        } => serve(backing, mountpoint, control, max_pending_mib << 20),
        Cmd::Cut { control, torn } => print(&control, if torn { "cut torn" } else { "cut" }),
        Cmd::Fail { fault, control } => simple(&control, &format!("fail {fault}")),
        Cmd::Heal { control } => simple(&control, "heal"),
        Cmd::Pending { control } => print(&control, "pending"),
    }
}

fn print(control: &std::path::Path, command: &str) -> anyhow::Result<()> {
    let answer = control::send(control, command)
        .with_context(|| format!("no powerfs answers on {}", control.display()))?;
    match answer.strip_prefix("ok ") {
        Some(figures) => {
            let mut f = figures.split(' ');
            let (bytes, files) = (f.next().unwrap_or("0"), f.next().unwrap_or("0"));
            println!("{command}: {bytes} unsynced bytes in {files} files");
            Ok(())
        }
        None => anyhow::bail!("powerfs: {answer}"),
    }
}

/// Send a command whose answer is a bare `ok`.
fn simple(control: &std::path::Path, command: &str) -> anyhow::Result<()> {
    let answer = control::send(control, command)
        .with_context(|| format!("no powerfs answers on {}", control.display()))?;
    match answer.as_str() {
        "ok" => Ok(()),
        _ => anyhow::bail!("powerfs: {answer}"),
    }
}

fn serve(
    backing: PathBuf,
    mountpoint: PathBuf,
    control: PathBuf,
    max_pending: u64,
) -> anyhow::Result<()> {
    // SIGTERM and SIGINT are taken with sigwait below: blocked here, before any thread starts,
    // so that every thread inherits the mask.
    // SAFETY: plain signal-set calls on a zeroed set owned by this frame.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    std::fs::create_dir_all(&backing)
        .with_context(|| format!("cannot create {}", backing.display()))?;
    std::fs::create_dir_all(&mountpoint)
        .with_context(|| format!("cannot create {}", mountpoint.display()))?;
    let disk = Backing::new(backing.clone())
        .with_context(|| format!("cannot use {}", backing.display()))?;
    let fs = PowerFs::new(disk.clone(), max_pending);
    control::serve(&control, disk.clone())
        .with_context(|| format!("cannot listen on {}", control.display()))?;
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        fuser::MountOption::FSName("powerfs".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    cfg.n_threads = Some(4);
    let session = fuser::spawn_mount(fs, &mountpoint, &cfg)
        .with_context(|| format!("cannot mount on {}", mountpoint.display()))?;
    tracing::info!(backing = %backing.display(), mountpoint = %mountpoint.display(), "serving");
    let mut sig: libc::c_int = 0;
    // SAFETY: waits for one of the blocked signals in `set`.
    unsafe { libc::sigwait(&set, &mut sig) };
    tracing::info!(signal = sig, "unmounting");
    drop(session);
    let (bytes, files) = disk.write_back_all();
    tracing::info!(bytes, files, "unmounted; pending writes written back");
    let _ = std::fs::remove_file(&control);
    Ok(())
}
