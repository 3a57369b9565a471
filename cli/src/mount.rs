//! `dfsctl mount [REMOTE] MOUNTPOINT`: the cluster as a local folder (FUSE, see the dfs-mount
//! crate). This module is the mount's [`Backend`]: cluster calls made from FUSE threads on this
//! process's tokio runtime. What must stay true: every failure (a dead chunk server, no leader,
//! a timeout) comes back as an errno for that one call; nothing here panics or exits, so the
//! mount outlives any peer. The process unmounts cleanly on SIGINT/SIGTERM and exits when the
//! folder is unmounted from outside (`umount`, `fusermount -u`).
use crate::client::{new_request_id, MetaConn};
use crate::transfer::{get_stream, put_stream, ChunkPool, FileSource};
use crate::Ctx;
use anyhow::Context;
use clap::Args;
use dfs_mount::{Backend, DfsFs, Entry, FsError, FsResult, Options};
use dfs_proto::*;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

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
}

/// How many times a commit is tried when the cluster answers "unavailable" or a transfer fails
/// (a chunk server died mid-put): the staged bytes are local, so a retry is safe.
const STORE_ATTEMPTS: usize = 6;

struct Cluster {
    rt: tokio::runtime::Handle,
    conn: Arc<MetaConn>,
    pool: ChunkPool,
    root: String,
}

/// The errno a program sees for a failed cluster call.
fn to_errno(e: &anyhow::Error) -> FsError {
    let msg = format!("{e:#}");
    let status = e.chain().find_map(|c| c.downcast_ref::<tonic::Status>());
    let errno = match status.map(|s| s.code()) {
        Some(Code::NotFound) => libc::ENOENT,
        Some(Code::AlreadyExists) => libc::EEXIST,
        Some(Code::PermissionDenied) | Some(Code::Unauthenticated) => libc::EACCES,
        Some(Code::InvalidArgument) => libc::EINVAL,
        Some(Code::ResourceExhausted) => libc::ENOSPC,
        Some(Code::FailedPrecondition) if msg.contains("not a directory") => libc::ENOTDIR,
        Some(Code::FailedPrecondition) if msg.contains("is a directory") => libc::EISDIR,
        Some(Code::FailedPrecondition) if msg.contains("not empty") => libc::ENOTEMPTY,
        Some(Code::FailedPrecondition) => libc::EPERM,
        _ => libc::EIO,
    };
    FsError::new(errno, msg)
}

fn entry(f: &FileInfo) -> Entry {
    Entry {
        is_dir: f.is_dir,
        size: f.size,
        mtime_ms: f.modified_ms,
    }
}

impl Cluster {
    fn remote(&self, p: &str) -> String {
        if self.root == "/" {
            p.to_string()
        } else if p == "/" {
            self.root.clone()
        } else {
            format!("{}{p}", self.root)
        }
    }

    fn block<T>(&self, f: impl std::future::Future<Output = anyhow::Result<T>>) -> FsResult<T> {
        self.rt.block_on(f).map_err(|e| to_errno(&e))
    }
}

impl Backend for Cluster {
    fn stat(&self, path: &str) -> FsResult<Entry> {
        let path = self.remote(path);
        self.block(async {
            let f = crate::rpc!(self.conn, stat, StatRequest { path, stale: false })?;
            Ok(entry(&f))
        })
    }

    fn list(&self, path: &str) -> FsResult<Vec<(String, Entry)>> {
        let path = self.remote(path);
        self.block(async {
            let r = crate::rpc!(
                self.conn,
                list,
                ListRequest {
                    path,
                    recursive: false,
                    stale: false
                }
            )?;
            Ok(r.entries
                .iter()
                .map(|f| {
                    let name = dfs_common::path::file_name(&f.path).to_string();
                    (name, entry(f))
                })
                .collect())
        })
    }

    fn mkdir(&self, path: &str) -> FsResult<()> {
        let path = self.remote(path);
        let request_id = new_request_id();
        self.block(async {
            crate::rpc!(
                self.conn,
                mkdir,
                MkdirRequest {
                    path,
                    parents: false,
                    request_id
                }
            )?;
            Ok(())
        })
    }

    fn remove(&self, path: &str) -> FsResult<()> {
        let path = self.remote(path);
        let request_id = new_request_id();
        self.block(async {
            crate::rpc!(
                self.conn,
                remove,
                RemoveRequest {
                    path,
                    recursive: false,
                    request_id
                }
            )?;
            Ok(())
        })
    }

    fn rename(&self, from: &str, to: &str) -> FsResult<()> {
        let (from, to) = (self.remote(from), self.remote(to));
        let request_id = new_request_id();
        self.block(async {
            crate::rpc!(
                self.conn,
                rename,
                RenameRequest {
                    from,
                    to,
                    request_id
                }
            )?;
            Ok(())
        })
    }

    fn fetch(&self, path: &str, dest: &File) -> FsResult<()> {
        let path = self.remote(path);
        let mut out = dest;
        self.block(async {
            let reply = crate::rpc!(self.conn, open_read, StatRequest { path, stale: false })?;
            if reply.file.as_ref().is_some_and(|f| f.is_dir) {
                return Err(tonic::Status::failed_precondition("is a directory").into());
            }
            get_stream(
                &self.conn,
                &self.pool,
                &reply,
                &mut out,
                &indicatif::ProgressBar::hidden(),
            )
            .await?;
            Ok(())
        })
    }

    fn store(&self, path: &str, src: &File) -> FsResult<Entry> {
        let path = self.remote(path);
        let mut last = None;
        for attempt in 0..STORE_ATTEMPTS {
            let r = self.block(async {
                let mut f = src.try_clone().context("staging file")?;
                f.seek(SeekFrom::Start(0))?;
                let size = f.metadata()?.len();
                let out = put_stream(
                    &self.conn,
                    &self.pool,
                    FileSource::new(f),
                    Some(size),
                    &path,
                    true,
                    0,
                    &indicatif::ProgressBar::hidden(),
                )
                .await?;
                Ok(entry(&out.file))
            });
            match r {
                Ok(e) => return Ok(e),
                // Only transient failures are retried; "no such directory" etc. are final.
                Err(e) if e.errno == libc::EIO && attempt + 1 < STORE_ATTEMPTS => {
                    eprintln!("dfs mount: commit of {path} failed, retrying: {}", e.msg);
                    self.rt.block_on(tokio::time::sleep(Duration::from_millis(
                        500 << attempt.min(4),
                    )));
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| FsError::new(libc::EIO, "commit failed")))
    }

    fn usage(&self) -> FsResult<(u64, u64)> {
        self.block(async {
            match crate::rpc!(self.conn, cluster_status, StatusRequest::default()) {
                Ok(s) => {
                    let live = s.chunk_servers.iter().filter(|c| c.live);
                    let (cap, used) =
                        live.fold((0, 0), |(c, u), s| (c + s.capacity_bytes, u + s.used_bytes));
                    Ok((cap, used))
                }
                Err(_) => {
                    // Not allowed to see the cluster: show this user's bytes against a large
                    // nominal capacity rather than failing `df`.
                    let u = crate::rpc!(
                        self.conn,
                        usage,
                        StatRequest {
                            path: "/".into(),
                            stale: true
                        }
                    )?;
                    Ok((u.bytes + (1u64 << 50), u.bytes))
                }
            }
        })
    }
}

pub async fn run(ctx: &Ctx, a: MountArgs) -> anyhow::Result<i32> {
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
    let conn = Arc::new(ctx.client()?);
    let backend = Arc::new(Cluster {
        rt: tokio::runtime::Handle::current(),
        conn: conn.clone(),
        pool: ChunkPool::default(),
        root: root.clone(),
    });
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
    };
    let fs = DfsFs::new(backend, opts);
    let session = dfs_mount::spawn(fs, &mountpoint, &format!("dfs:{root}"))
        .with_context(|| format!("cannot mount on {}", mountpoint.display()))?;
    if !ctx.quiet {
        eprintln!("dfs:{root} mounted on {}", mountpoint.display());
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tick.tick() => {
                if session.guard.is_finished() {
                    // Unmounted from outside.
                    break;
                }
            }
        }
    }
    let r = tokio::task::spawn_blocking(move || session.umount_and_join()).await?;
    // An error here means it was already unmounted from outside: not a failure.
    drop(r);
    Ok(0)
}
