//! `dfsctl mount [REMOTE] MOUNTPOINT`: the cluster as a local folder (FUSE; the file system is
//! the dfs-mount crate, on the dfs-client library). What must stay true: the process unmounts
//! cleanly on SIGINT/SIGTERM and exits when the folder is unmounted from outside (`umount`,
//! `fusermount -u`); a cluster that cannot be reached at start is a clear error, not a mount.
use crate::Ctx;
use anyhow::Context;
use clap::Args;
use dfs_client::Client;
use dfs_mount::{Backend, ClusterBackend, DfsFs, Options};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct MountArgs {
    /// `[REMOTE] MOUNTPOINT`: the remote directory to show (default `/`) and the local folder.
    #[arg(num_args = 1..=2, required = true, value_names = ["REMOTE", "MOUNTPOINT"])]
    pub paths: Vec<String>,
    /// Seconds the kernel may cache attributes and names.
    #[arg(long, default_value_t = 1.0)]
    pub attr_ttl: f64,
    /// Directory for staging files (open files' bytes) [default: the system temp dir].
    #[arg(long)]
    pub staging_dir: Option<PathBuf>,
    /// Bytes that files being written may stage in --staging-dir (e.g. 2G, 512M); past it,
    /// writers wait for their chunks to be uploaded instead of filling the disk.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub staging_bytes: u64,
}

/// A byte count: a number, optionally followed by K, M, G or T (powers of 1024).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => {
                    return Err(format!(
                        "{s}: use a number of bytes, or K, M, G or T after it"
                    ))
                }
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s} is not a byte count (e.g. 1G, 512M, 1048576)"))
}

pub async fn run(ctx: &Ctx, a: MountArgs) -> anyhow::Result<i32> {
    // A mount lives for hours and talks to servers that come and go: a write to a socket (or
    // a pipe) whose reader died must fail that one call with EPIPE, never end the process.
    // (dfsctl's default lets SIGPIPE end a short command quietly, as Unix tools do; here it
    // killed the mount, and the kernel then aborted every call on the folder.)
    // SAFETY: changing a signal disposition; no handler runs Rust code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let (root, mountpoint) = match a.paths.as_slice() {
        [m] => ("/".to_string(), PathBuf::from(m)),
        [r, m] => (crate::files::remote(r), PathBuf::from(m)),
        _ => anyhow::bail!("usage: dfsctl mount [REMOTE] MOUNTPOINT"),
    };
    let root = if root.len() > 1 {
        root.trim_end_matches('/').to_string()
    } else {
        root
    };
    if !mountpoint.is_dir() {
        anyhow::bail!("{} is not a directory", mountpoint.display());
    }
    let mut client = Client::new(ctx.client()?);
    client.pool = ctx.pool();
    let backend = Arc::new(ClusterBackend::new(
        tokio::runtime::Handle::current(),
        client,
        &root,
    ));
    // Fail now, with a clear message, if the cluster or the remote directory is not there.
    {
        let b = backend.clone();
        let e = tokio::task::spawn_blocking(move || b.stat("/")).await?;
        match e {
            Ok(e) if e.is_dir => {}
            Ok(_) => anyhow::bail!("{root} is not a directory"),
            Err(e) => anyhow::bail!("cannot reach {root}: {}", e.msg),
        }
    }
    let opts = Options {
        attr_ttl: Duration::from_secs_f64(a.attr_ttl.max(0.0)),
        staging_dir: a.staging_dir.unwrap_or_else(std::env::temp_dir),
        // SAFETY: getuid/getgid only read the process's ids.
        uid: unsafe { libc::getuid() },
        // SAFETY: as above.
        gid: unsafe { libc::getgid() },
        staging_bytes: a.staging_bytes,
    };
    let fs = DfsFs::new(backend, opts);
    let session = dfs_mount::spawn(fs, &mountpoint, &format!("dfs:{root}"))
        .with_context(|| format!("cannot mount on {}", mountpoint.display()))?;
    if !ctx.quiet {
        eprintln!("dfs:{root} mounted on {}", mountpoint.display());
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    // Why the mount ends, said on stderr: an end nobody asked for must be visible.
    let why = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break "SIGINT",
            _ = term.recv() => break "SIGTERM",
            _ = tick.tick() => {
                if session.guard.is_finished() {
                    break "the kernel ended the FUSE session (unmounted from outside?)";
                }
            }
        }
    };
    let r = tokio::task::spawn_blocking(move || session.umount_and_join()).await?;
    // An error here usually means it was already unmounted from outside: reported, not fatal.
    match r {
        Ok(()) => eprintln!("dfs:{root} unmounted from {}: {why}", mountpoint.display()),
        Err(e) => eprintln!(
            "dfs:{root} unmounted from {}: {why}; session ended with: {e}",
            mountpoint.display()
        ),
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_take_a_unit() {
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("1X").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
