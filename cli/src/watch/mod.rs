//! `dfsctl watch LOCAL REMOTE`: a folder that backs itself up into the cluster.
//!
//! Start-up walks LOCAL, lists REMOTE and reads the manifest, and uploads what differs
//! (`reconcile`); then filesystem events (`events`) wake the loop, which walks again and
//! uploads files whose mtime is `--settle` old, renames remotely what the debouncer paired,
//! and with `--delete` deletes what this watcher had put and is gone locally. A full rescan
//! (fresh remote listing) runs every `--rescan`, and at once on an overflow or a watch error.
//!
//! What must stay true:
//! - Never a silent stop: every exit says why on stderr, with a non-zero code unless asked to
//!   stop (SIGINT/SIGTERM) or `--once` finished cleanly.
//! - Never a silent or mass delete: deletes only with `--delete`, never when the local root
//!   cannot be read (that is an error exit), never under an unreadable folder, and a pass that
//!   would delete more than `--max-delete` files stops the watcher before deleting any.
//! - Uploads go through the ordinary put (atomic: nothing partial is ever visible); the
//!   manifest line is written only after the commit, so a crash redoes work, never skips it.
//! - One failing file never stops the others: it is said and retried at the next rescan (a
//!   name dfs refuses is said once); only the cluster being unreachable longer than
//!   `--timeout` is fatal.
mod events;
mod manifest;
pub mod reconcile;

use crate::output::print_json;
use crate::tree::{join_remote, sha256_file};
use crate::Ctx;
use anyhow::{bail, Context};
use clap::Args;
use dfs_client::{Client, Error as CError, FileSource, PutOptions};
use dfs_proto::*;
use futures::StreamExt;
use manifest::Manifest;
use reconcile::{Entry, LocalFile, LocalTree, RemoteFile, RemoteTree};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Names never uploaded (editor and download temp files, the watcher's own state).
pub const DEFAULT_EXCLUDES: &[&str] = &["*.swp", "*~", ".#*", "*.part", ".dfs-watch"];

#[derive(Args, Debug, Clone)]
pub struct WatchArgs {
    /// The local folder to back up.
    pub local: PathBuf,
    /// The remote directory it goes into (made if missing; must be yours).
    pub remote: String,
    /// Upload a file once its size and mtime have not changed for this long (e.g. 300ms, 2s).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub settle: Duration,
    /// Full reconcile (fresh remote listing) this often (e.g. 30m, 1h).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub rescan: Duration,
    /// Delete remotely the files this watcher uploaded that are gone locally.
    #[arg(long)]
    pub delete: bool,
    /// Stop, deleting nothing, when one pass would delete more files than this.
    #[arg(long, default_value_t = 50)]
    pub max_delete: usize,
    /// Do not upload names matching GLOB (repeatable; matched against the relative path and
    /// each name in it). Always excluded: *.swp, *~, .#*, *.part, .dfs-watch.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Where the manifest is kept [default: LOCAL/.dfs-watch].
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// One reconcile (waiting for files still being written), then exit: 0, or 1 if a file failed.
    #[arg(long)]
    pub once: bool,
    /// Files uploaded at once.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Copies of each chunk of uploaded files [default: the cluster's].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub replication: Option<u32>,
}

/// A stop that needs a person (exit code 3, not restarted by the systemd unit): the local
/// folder is gone or unreadable, or a pass would delete more than --max-delete files.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SafetyStop(String);

/// `300ms`, `2s`, `5m`, `1h`, or plain seconds (`1.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(Duration::from_secs_f64(v * mult)),
        _ => Err(format!("{s:?} is not a duration (e.g. 300ms, 2s, 5m, 1h)")),
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

fn ctime_ns(m: &std::fs::Metadata) -> i64 {
    m.ctime() * 1_000_000_000 + m.ctime_nsec()
}

/// `above`: the latest ctime of the folders above the file, below the root.
fn local_file(m: &std::fs::Metadata, above: i64) -> LocalFile {
    let mtime_ns = m.mtime() * 1_000_000_000 + m.mtime_nsec();
    let ctime_ns = ctime_ns(m);
    LocalFile {
        size: m.len(),
        mtime_ns,
        ctime_ns,
        changed_ns: mtime_ns.max(ctime_ns).max(above),
    }
}

/// How one upload ended.
enum Done {
    Uploaded(Entry),
    /// The remote already had these bytes (sha256 equal): recorded, nothing sent.
    Same(Entry),
    /// Gone between the walk and the upload.
    Vanished,
    /// Changed while being read: it is uploaded again once it settles.
    Changed,
    Failed(CError),
}

#[derive(Default, Clone, Copy)]
struct Counts {
    uploaded: u64,
    same: u64,
    renamed: u64,
    deleted: u64,
    failed: u64,
}

pub struct Watcher<'a> {
    ctx: &'a Ctx,
    a: WatchArgs,
    root: PathBuf,
    /// The root's (device, inode) at start.
    root_id: (u64, u64),
    remote_root: String,
    client: Arc<Client>,
    excludes: globset::GlobSet,
    /// The state directory's path relative to the root, when it is inside it.
    state_rel: Option<String>,
    manifest: Manifest,
    remote: RemoteTree,
    failed: HashMap<String, LocalFile>,
    /// Remote directories that could not be made (a refused name): not tried again until
    /// the next rescan.
    failed_dirs: HashSet<String>,
    /// Messages said already (refused names, skipped links): said once each.
    said: HashSet<String>,
    unavailable_since: Option<Instant>,
    last_event: Option<Instant>,
    counts: Counts,
    /// The remote view is wrong (a put found its folder gone): list again before the next pass.
    relist: bool,
    /// Files a relist was done for (so a file that keeps failing is not a loop).
    relisted: HashSet<String>,
    /// stderr is a terminal: a status line is kept there.
    tty: bool,
}

impl<'a> Watcher<'a> {
    /// Check the arguments and the remote directory, open the manifest.
    pub async fn new(ctx: &'a Ctx, a: WatchArgs) -> anyhow::Result<Watcher<'a>> {
        let meta = std::fs::metadata(&a.local).map_err(|e| {
            anyhow::anyhow!(
                "cannot watch {}: {e} (give an existing local folder)",
                a.local.display()
            )
        })?;
        if !meta.is_dir() {
            bail!("cannot watch {}: not a directory", a.local.display());
        }
        let root = std::fs::canonicalize(&a.local)
            .with_context(|| format!("cannot resolve {}", a.local.display()))?;
        if !a.remote.starts_with('/') {
            bail!(
                "the remote directory must be an absolute path (e.g. /backup), not {:?}",
                a.remote
            );
        }
        let remote_root = if a.remote.len() > 1 {
            a.remote.trim_end_matches('/').to_string()
        } else {
            a.remote.clone()
        };
        let mut gb = globset::GlobSetBuilder::new();
        for g in DEFAULT_EXCLUDES
            .iter()
            .copied()
            .chain(a.exclude.iter().map(String::as_str))
        {
            gb.add(globset::Glob::new(g).with_context(|| format!("bad --exclude {g:?}"))?);
        }
        let excludes = gb.build()?;
        let mut client = Client::new(ctx.client()?);
        client.pool = ctx.pool();
        let me = dfs_client::rpc!(client.conn, who_am_i, Empty {})
            .map_err(CError::from)
            .context("cannot reach the cluster")?;
        match client.stat(&remote_root).await {
            Ok(info) if !info.is_dir => {
                bail!("{remote_root} is a file: give a remote directory")
            }
            Ok(info) if info.owner != me.name && me.role != "admin" => bail!(
                "{remote_root} belongs to {}, not to you ({}): watch into a directory of yours",
                info.owner,
                me.name
            ),
            Ok(_) => {}
            Err(CError::NotFound(_)) => client
                .mkdir(&remote_root, true)
                .await
                .with_context(|| format!("cannot create the remote directory {remote_root}"))?,
            Err(e) => return Err(e).context(format!("cannot use {remote_root}")),
        }
        // Made only now: bad arguments leave nothing behind.
        let state = a.state.clone().unwrap_or_else(|| root.join(".dfs-watch"));
        std::fs::create_dir_all(&state)
            .with_context(|| format!("cannot create the state directory {}", state.display()))?;
        let state_rel = std::fs::canonicalize(&state)
            .ok()
            .and_then(|s| {
                s.strip_prefix(&root)
                    .ok()
                    .map(|r| r.to_string_lossy().into_owned())
            })
            .filter(|r| !r.is_empty());
        let mut manifest = Manifest::open(&state)?;
        // The manifest speaks of one remote directory: watching into another one starts from
        // nothing (its files are hashed and compared, and never deleted for the old one).
        let remote_file = state.join("remote");
        let before = std::fs::read_to_string(&remote_file).ok();
        if before.as_deref().map(str::trim) != Some(remote_root.as_str()) {
            if before.is_some() {
                manifest.reset()?;
            }
            let tmp = state.join("remote.tmp");
            std::fs::write(&tmp, format!("{remote_root}\n"))
                .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|()| std::fs::rename(&tmp, &remote_file))
                .with_context(|| format!("cannot write {}", remote_file.display()))?;
        }
        Ok(Watcher {
            ctx,
            a,
            root_id: (meta.dev(), meta.ino()),
            root,
            remote_root,
            client: Arc::new(client),
            excludes,
            state_rel,
            manifest,
            remote: RemoteTree::default(),
            failed: HashMap::new(),
            failed_dirs: HashSet::new(),
            said: HashSet::new(),
            unavailable_since: None,
            last_event: None,
            counts: Counts::default(),
            relist: false,
            relisted: HashSet::new(),
            // SAFETY: isatty only inspects a file descriptor.
            tty: unsafe { libc::isatty(2) } == 1,
        })
    }

    fn excluded(&self, rel: &str) -> bool {
        self.excludes.is_match(rel)
            || rel.split('/').any(|n| self.excludes.is_match(n))
            || self
                .state_rel
                .as_deref()
                .is_some_and(|s| rel == s || rel.starts_with(&format!("{s}/")))
    }

    /// Whether an event path is about the watched tree (the root itself counts).
    fn relevant(&self, p: &Path) -> bool {
        match p.strip_prefix(&self.root) {
            Ok(r) => r.as_os_str().is_empty() || r.to_str().is_none_or(|r| !self.excluded(r)),
            Err(_) => false,
        }
    }

    fn remote_path(&self, rel: &str) -> String {
        join_remote(&self.remote_root, rel)
    }

    /// A line on stderr, or a JSON line on stdout under --json.
    fn say(&self, v: Value, text: String) {
        if self.ctx.json {
            print_json(&v);
        } else if !self.ctx.quiet || v["event"] == "error" {
            // Over the status line, if there is one.
            let clear = if self.tty { "\r\x1b[K" } else { "" };
            eprintln!("{clear}{text}");
        }
    }

    /// The status line on a terminal (rewritten after every pass, never on a pipe).
    fn status(&self, plan: &reconcile::Plan) {
        if self.tty && !self.ctx.json && !self.ctx.quiet {
            let c = self.counts;
            eprint!(
                "\r\x1b[Kwatching {} -> {}: {} files up to date, {} uploaded, {} waiting, {} failed",
                self.root.display(),
                self.remote_root,
                self.manifest.entries.len(),
                c.uploaded,
                plan.unsettled,
                self.failed.len()
            );
        }
    }

    /// Said once per run (the same message again is quiet).
    fn say_once(&mut self, key: String, v: Value, text: String) {
        if self.said.insert(key) {
            self.say(v, text);
        }
    }

    /// The local tree, without excluded names. Err when the root itself cannot be read.
    fn walk(&mut self) -> anyhow::Result<LocalTree> {
        // The folder replaced (moved away and made again, or a file system unmounted from
        // under it, leaving the empty mount point) looks like "everything deleted": a stop.
        match std::fs::metadata(&self.root) {
            Ok(m) if (m.dev(), m.ino()) == self.root_id => {}
            Ok(_) => bail!(SafetyStop(format!(
                "the watched folder {} is not the one the watcher started on any more (moved \
                 and made again, or a file system unmounted); stopping without deleting anything",
                self.root.display()
            ))),
            Err(e) => bail!(SafetyStop(format!(
                "cannot read the watched folder {}: {e}; stopping without deleting anything",
                self.root.display()
            ))),
        }
        let mut t = LocalTree::default();
        let mut stack = vec![(self.root.clone(), String::new(), 0i64)];
        let mut notes = Vec::new();
        while let Some((dir, rel, above)) = stack.pop() {
            let listed = std::fs::read_dir(&dir).and_then(|d| d.collect::<Result<Vec<_>, _>>());
            let entries = match listed {
                Ok(e) => e,
                Err(e) if rel.is_empty() => bail!(SafetyStop(format!(
                    "cannot read the watched folder {}: {e}; stopping without deleting anything",
                    self.root.display()
                ))),
                Err(e) => {
                    notes.push((rel.clone(), format!("cannot read the folder: {e}")));
                    t.unreadable.push(rel);
                    continue;
                }
            };
            for e in entries {
                let Some(name) = e.file_name().to_str().map(str::to_string) else {
                    notes.push((
                        e.path().to_string_lossy().into_owned(),
                        "the name is not UTF-8; skipped".into(),
                    ));
                    continue;
                };
                let child = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                if self.excluded(&child) {
                    continue;
                }
                let m = match std::fs::symlink_metadata(e.path()) {
                    Ok(m) => m,
                    // Vanished since the listing.
                    Err(_) => continue,
                };
                if m.is_dir() {
                    let changed = above.max(ctime_ns(&m));
                    t.dirs.insert(child.clone());
                    t.dir_changed_ns.insert(child.clone(), changed);
                    stack.push((e.path(), child, changed));
                } else if m.is_file() {
                    t.files.insert(child, local_file(&m, above));
                } else {
                    notes.push((
                        child,
                        "not a regular file (symbolic link, fifo, socket or device); skipped"
                            .into(),
                    ));
                }
            }
        }
        for (rel, why) in notes {
            self.say_once(
                format!("{rel}\0{why}"),
                json!({"event": "skipped", "local": rel, "reason": why}),
                format!("skipped {rel}: {why}"),
            );
        }
        Ok(t)
    }

    /// The remote tree under the watched directory (recursive listing, page by page).
    async fn list_remote(&mut self) -> Result<(), CError> {
        let mut t = RemoteTree::default();
        let prefix = if self.remote_root == "/" {
            "/".to_string()
        } else {
            format!("{}/", self.remote_root)
        };
        let conn = &self.client.conn;
        conn.list_pages(&self.remote_root, true, false, |page| {
            for f in page {
                let Some(rel) = f.path.strip_prefix(&prefix) else {
                    continue;
                };
                if f.is_dir {
                    t.dirs.insert(rel.to_string());
                } else {
                    t.files.insert(
                        rel.to_string(),
                        RemoteFile {
                            size: f.size,
                            sha256: f.sha256,
                        },
                    );
                }
            }
        })
        .await?;
        self.remote = t;
        Ok(())
    }

    /// A cluster error: fatal once the cluster has been unreachable longer than --timeout.
    fn cluster_trouble(&mut self, e: &CError) -> anyhow::Result<()> {
        if matches!(e, CError::Unavailable(_)) {
            let since = *self.unavailable_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= self.ctx.timeout {
                bail!(
                    "the cluster has been unreachable for {:.0} s (--timeout): {e}; stopping \
                     (nothing is lost: run the watcher again to resume)",
                    since.elapsed().as_secs_f64() + self.ctx.timeout.as_secs_f64()
                );
            }
        }
        Ok(())
    }

    fn rel_of(&self, p: &Path) -> Option<String> {
        let r = p.strip_prefix(&self.root).ok()?.to_str()?.to_string();
        (!r.is_empty() && !self.excluded(&r)).then_some(r)
    }

    async fn ensure_parents(&mut self, rel: &str) -> Result<(), CError> {
        if let Some((parent, _)) = rel.rsplit_once('/') {
            if !self.remote.dirs.contains(parent) {
                self.client.mkdir(&self.remote_path(parent), true).await?;
                let mut d = parent;
                loop {
                    self.remote.dirs.insert(d.to_string());
                    match d.rsplit_once('/') {
                        Some((p, _)) => d = p,
                        None => break,
                    }
                }
            }
        }
        Ok(())
    }

    /// Renames the debouncer paired, done remotely when the remote still has what the
    /// manifest says was uploaded from `from` (else the pass does delete + put).
    async fn renames(&mut self, list: Vec<(PathBuf, PathBuf)>, tree: &LocalTree) {
        for (from, to) in list {
            let (Some(rf), Some(rt)) = (self.rel_of(&from), self.rel_of(&to)) else {
                continue;
            };
            if tree.files.contains_key(&rf) || tree.dirs.contains(&rf) {
                continue;
            }
            let (rfrom, rto) = (self.remote_path(&rf), self.remote_path(&rt));
            if let Some(m) = self.manifest.entries.get(&rf).cloned() {
                let Some(lf) = tree.files.get(&rt).copied() else {
                    continue;
                };
                let remote_ok = self
                    .remote
                    .files
                    .get(&rf)
                    .is_some_and(|r| r.size == m.size && r.sha256 == m.sha256);
                if lf.size != m.size || lf.mtime_ns != m.mtime_ns || !remote_ok {
                    continue;
                }
                if self.ensure_parents(&rt).await.is_err() {
                    continue;
                }
                let r = self
                    .client
                    .rename_with(&rfrom, &rto, RenameMode::RenameReplace)
                    .await;
                if r.is_ok() {
                    // A manifest line lost here only means hashing again later.
                    let _ = self.manifest.rename(&rf, &rt);
                    let _ = self.manifest.set(
                        &rt,
                        Entry {
                            ctime_ns: lf.ctime_ns,
                            ..m
                        },
                    );
                    self.remote.rename(&rf, &rt);
                    self.counts.renamed += 1;
                    self.say(
                        json!({"event": "rename", "from": rfrom, "to": rto}),
                        format!("renamed {rfrom} -> {rto}"),
                    );
                }
            } else if tree.dirs.contains(&rt)
                && self.remote.dirs.contains(&rf)
                && !self.remote.has_under(&rt)
            {
                if self.ensure_parents(&rt).await.is_err() {
                    continue;
                }
                let r = self
                    .client
                    // Replaces an empty folder made there meanwhile, nothing else.
                    .rename_with(&rfrom, &rto, RenameMode::RenameReplace)
                    .await;
                if r.is_err() {
                    continue;
                }
                let _ = self.manifest.rename(&rf, &rt);
                self.remote.rename(&rf, &rt);
                self.counts.renamed += 1;
                self.say(
                    json!({"event": "rename", "from": rfrom, "to": rto, "dir": true}),
                    format!("renamed {rfrom}/ -> {rto}/"),
                );
            }
        }
    }

    /// One pass: walk, pair renames, plan, act. Returns when the loop should look again
    /// without an event (a file settling, deferred deletes, a retry).
    async fn pass(
        &mut self,
        renames: Vec<(PathBuf, PathBuf)>,
    ) -> anyhow::Result<(Option<Instant>, reconcile::Plan)> {
        if self.relist {
            if let Err(e) = self.list_remote().await {
                self.cluster_trouble(&e)?;
            } else {
                self.relist = false;
            }
        }
        let mut tree = self.walk()?;
        if !renames.is_empty() {
            self.renames(renames, &tree).await;
            tree = self.walk()?;
        }
        let excluded = |r: &str| self.excluded(r);
        let plan = reconcile::plan(&reconcile::Inputs {
            local: &tree,
            manifest: &self.manifest.entries,
            remote: &self.remote,
            failed: &self.failed,
            excluded: &excluded,
            now_ns: now_ns(),
            settle_ns: self.a.settle.as_nanos() as i64,
            delete: self.a.delete,
        });
        let mut wake = plan.wake_ns.map(|w| {
            Instant::now() + Duration::from_nanos((w - now_ns()).max(0) as u64 + 20_000_000)
        });
        let mut retry = false;
        // Files gone locally are forgotten or deleted only once the tree has been quiet for
        // --settle: a rename whose event is still on its way is paired first, and a mass
        // delete (or the root going away) is seen whole.
        let quiet_for = self.last_event.map_or(Duration::MAX, |t| t.elapsed());
        let quiet = self.a.once || quiet_for >= self.a.settle;
        let gone = !plan.forget.is_empty() || !plan.deletes.is_empty();
        if !quiet && gone {
            let at = Instant::now() + (self.a.settle - quiet_for);
            wake = Some(wake.map_or(at, |w| w.min(at)));
        }
        if quiet {
            for rel in &plan.forget {
                self.manifest.remove(rel)?;
            }
        }
        for d in &plan.mkdirs {
            if self.failed_dirs.contains(d) {
                continue;
            }
            match self.client.mkdir(&self.remote_path(d), true).await {
                Ok(()) | Err(CError::Exists(_)) => {
                    self.remote.dirs.insert(d.clone());
                    self.unavailable_since = None;
                }
                Err(e) => {
                    self.cluster_trouble(&e)?;
                    if matches!(e, CError::Unavailable(_)) {
                        retry = true;
                    } else {
                        self.failed_dirs.insert(d.clone());
                    }
                    let rp = self.remote_path(d);
                    self.say_once(
                        format!("mkdir\0{d}\0{e}"),
                        json!({"event": "error", "path": rp, "error": e.to_string()}),
                        format!("cannot create {rp}: {e}"),
                    );
                }
            }
        }
        let jobs: Vec<_> = plan
            .uploads
            .iter()
            .map(|u| {
                let (client, path) = (self.client.clone(), self.root.join(&u.rel));
                let (remote, u) = (self.remote_path(&u.rel), u.clone());
                let replication = self.a.replication.unwrap_or(0);
                async move {
                    let d = upload(client, path, remote, replication, &u).await;
                    (u, d)
                }
            })
            .collect();
        let mut results = futures::stream::iter(jobs).buffer_unordered(self.a.parallel.max(1));
        // Each result is said and recorded as it comes (a crash keeps what is done).
        while let Some((u, done)) = results.next().await {
            let rp = self.remote_path(&u.rel);
            match done {
                Done::Uploaded(e) => {
                    self.unavailable_since = None;
                    self.counts.uploaded += 1;
                    self.say(
                        json!({"event": "upload", "path": rp, "local": u.rel, "size": e.size, "sha256": e.sha256}),
                        format!("uploaded {rp} ({} bytes)", e.size),
                    );
                    self.remote.files.insert(
                        u.rel.clone(),
                        RemoteFile {
                            size: e.size,
                            sha256: e.sha256.clone(),
                        },
                    );
                    self.failed.remove(&u.rel);
                    self.manifest.set(&u.rel, e)?;
                }
                Done::Same(e) => {
                    self.counts.same += 1;
                    self.failed.remove(&u.rel);
                    self.manifest.set(&u.rel, e)?;
                }
                Done::Vanished => self.say(
                    json!({"event": "skipped", "local": u.rel, "reason": "vanished before it was uploaded"}),
                    format!("skipped {}: vanished before it was uploaded", u.rel),
                ),
                Done::Changed => {
                    // Looked at again when it settles.
                    let soon = Instant::now() + self.a.settle;
                    wake = Some(wake.map_or(soon, |w| w.min(soon)));
                }
                Done::Failed(e) => {
                    self.counts.failed += 1;
                    self.cluster_trouble(&e)?;
                    let refused = matches!(e, CError::InvalidName(_) | CError::Permission(_));
                    if matches!(e, CError::Unavailable(_)) {
                        retry = true;
                    } else if matches!(e, CError::NotFound(_) | CError::NotADirectory(_))
                        && self.relisted.insert(u.rel.clone())
                    {
                        // The remote folder changed under the watcher (removed by someone):
                        // list it again and retry, once per file until the next rescan.
                        self.relist = true;
                        retry = true;
                    } else {
                        self.failed.insert(u.rel.clone(), u.local);
                    }
                    let v = json!({"event": "error", "local": u.rel, "path": rp, "error": e.to_string()});
                    let text = format!("cannot upload {}: {e}", u.rel);
                    if refused {
                        self.say_once(format!("refused\0{}", u.rel), v, text);
                    } else {
                        self.say(v, format!("{text} (retried at the next rescan)"));
                    }
                }
            }
        }
        if quiet && !plan.deletes.is_empty() {
            if plan.deletes.len() > self.a.max_delete {
                bail!(SafetyStop(format!(
                    "{} files are gone from {} and would be deleted from {}, more than \
                     --max-delete {}: stopping without deleting any (check the folder; if \
                     this is meant, run again with a higher --max-delete)",
                    plan.deletes.len(),
                    self.root.display(),
                    self.remote_root,
                    self.a.max_delete
                )));
            } else {
                for rel in &plan.deletes {
                    let rp = self.remote_path(rel);
                    match self.client.remove(&rp, false).await {
                        Ok(_) | Err(CError::NotFound(_)) => {
                            self.unavailable_since = None;
                            self.manifest.remove(rel)?;
                            self.remote.files.remove(rel);
                            self.counts.deleted += 1;
                            self.say(
                                json!({"event": "delete", "path": rp}),
                                format!("deleted {rp}"),
                            );
                        }
                        Err(e) => {
                            self.cluster_trouble(&e)?;
                            retry = true;
                            self.say(
                                json!({"event": "error", "path": rp, "error": e.to_string()}),
                                format!("cannot delete {rp}: {e}"),
                            );
                        }
                    }
                }
                for d in &plan.rmdirs {
                    if self
                        .client
                        .remove(&self.remote_path(d), false)
                        .await
                        .is_ok()
                    {
                        self.remote.dirs.remove(d);
                    }
                }
            }
        }
        self.manifest.sync()?;
        if retry {
            let at = Instant::now() + Duration::from_secs(1);
            wake = Some(wake.map_or(at, |w| w.min(at)));
        }
        Ok((wake, plan))
    }

    fn summary(&self, started: Instant, plan: &reconcile::Plan) {
        let c = self.counts;
        let secs = started.elapsed().as_secs_f64();
        self.say(
            json!({"event": "reconciled", "uploaded": c.uploaded, "unchanged": plan.unchanged,
                "already_remote": c.same, "renamed": c.renamed, "deleted": c.deleted,
                "failed": c.failed, "waiting": plan.unsettled, "seconds": secs}),
            format!(
                "reconciled {} -> {}: {} uploaded, {} unchanged, {} already there, {} renamed, {} deleted, {} failed, {} still being written, in {secs:.2} s",
                self.root.display(),
                self.remote_root,
                c.uploaded,
                plan.unchanged,
                c.same,
                c.renamed,
                c.deleted,
                c.failed,
                plan.unsettled
            ),
        );
    }

    /// Stopped by a signal: the manifest made durable, the status line ended.
    fn stopped(&mut self) -> anyhow::Result<i32> {
        self.manifest.sync()?;
        if self.tty && !self.ctx.json && !self.ctx.quiet {
            eprintln!();
        }
        Ok(0)
    }

    /// Run until stopped (or once). Ok(exit code).
    pub async fn run(mut self) -> anyhow::Result<i32> {
        use tokio::signal::unix::{signal, SignalKind};
        // Well under --settle: a rename's event arrives before the walk that a settling file
        // triggers could take the new name for a new file (renames are paired by their
        // inotify cookie, not by this delay).
        let debounce =
            (self.a.settle / 4).clamp(Duration::from_millis(50), Duration::from_millis(500));
        // Watch before the first walk: nothing that changes during it is missed.
        let (mut watcher, mut rx) = if self.a.once {
            (None, None)
        } else {
            let (w, rx) = events::watch(&self.root, debounce)
                .with_context(|| format!("cannot watch {}", self.root.display()))?;
            (Some(w), Some(rx))
        };
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        self.list_remote()
            .await
            .with_context(|| format!("cannot list {}", self.remote_root))?;
        let started = Instant::now();
        let mut first = true;
        let mut next_rescan = Instant::now() + self.a.rescan;
        let mut renames = Vec::new();
        let mut wake;
        loop {
            // A signal also ends a pass in the middle (an upload cut short is never visible;
            // its manifest line is not written, so it is redone next time).
            let done = tokio::select! {
                r = self.pass(std::mem::take(&mut renames)) => Some(r),
                _ = term.recv() => None,
                _ = int.recv() => None,
            };
            let Some(done) = done else {
                return self.stopped();
            };
            let plan;
            (wake, plan) = done?;
            if first && (wake.is_none() || !self.a.once) {
                self.summary(started, &plan);
                first = plan.unsettled > 0 && self.a.once;
            }
            if !self.a.once {
                self.status(&plan);
            }
            if self.a.once && wake.is_none() {
                return Ok(i32::from(self.counts.failed > 0));
            }
            // --once does not wait forever for a file that never stops changing (a log).
            let patience = self.a.settle * 10 + Duration::from_secs(10);
            if self.a.once && plan.unsettled > 0 && started.elapsed() > patience {
                self.summary(started, &plan);
                let n = plan.unsettled;
                self.say(
                    json!({"event": "error", "error": format!("{n} files still being written after {:.0} s; not uploaded", patience.as_secs_f64())}),
                    format!("{n} file(s) still being written after {:.0} s were not uploaded; run again later", patience.as_secs_f64()),
                );
                return Ok(1);
            }
            let mut hints = events::Hints::default();
            // Wait for a relevant event or a timer (events about excluded names or reads,
            // e.g. the watcher's own, do not start a pass).
            loop {
                let until = wake.map_or(next_rescan, |w| w.min(next_rescan));
                tokio::select! {
                    r = async { rx.as_mut()?.recv().await }, if rx.is_some() => match r {
                        Some(r) => hints.merge(r, |p| self.relevant(p)),
                        None => bail!("the file watcher stopped; restart dfsctl watch"),
                    },
                    _ = tokio::time::sleep_until(until.into()) => {}
                    _ = term.recv() => return self.stopped(),
                    _ = int.recv() => return self.stopped(),
                }
                if let Some(rx) = rx.as_mut() {
                    while let Ok(r) = rx.try_recv() {
                        hints.merge(r, |p| self.relevant(p));
                    }
                }
                if hints.any || Instant::now() >= until {
                    break;
                }
            }
            if hints.any {
                self.last_event = Some(Instant::now());
            }
            for e in &hints.errors {
                self.say(
                    json!({"event": "error", "error": e}),
                    format!("watch error: {e}; rescanning"),
                );
            }
            if hints.rescan || Instant::now() >= next_rescan {
                if hints.rescan && !self.root.is_dir() {
                    bail!(SafetyStop(format!(
                        "the watched folder {} is gone; stopping without deleting anything",
                        self.root.display()
                    )));
                }
                if let Err(e) = self.list_remote().await {
                    self.cluster_trouble(&e)?;
                    continue;
                }
                self.failed.clear();
                self.failed_dirs.clear();
                self.relisted.clear();
                next_rescan = Instant::now() + self.a.rescan;
                // A watch error may mean the watch is gone: watch again.
                if hints.rescan && !hints.errors.is_empty() {
                    if let Some(w) = watcher.as_mut() {
                        let _ = w.unwatch(&self.root);
                        w.watch(&self.root, notify::RecursiveMode::Recursive)
                            .with_context(|| format!("cannot watch {}", self.root.display()))?;
                    }
                }
            }
            renames = hints.renames;
        }
    }
}

/// Upload one file (or find the remote already equal). Runs `--parallel` at once; owns what
/// it uses, so the loop handles each result as it comes.
async fn upload(
    client: Arc<Client>,
    path: PathBuf,
    remote: String,
    replication: u32,
    u: &reconcile::Upload,
) -> Done {
    let m = match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_file() => m,
        _ => return Done::Vanished,
    };
    let before = local_file(&m, 0);
    if before.size != u.local.size || before.mtime_ns != u.local.mtime_ns {
        return Done::Changed;
    }
    if let Some(r) = u.remote.as_ref().filter(|r| r.size == before.size) {
        let hash = match &u.known_sha256 {
            Some(h) => Ok(h.clone()),
            None => {
                let p = path.clone();
                tokio::task::spawn_blocking(move || sha256_file(&p))
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            }
        };
        match hash {
            Ok(h) if h == r.sha256 => {
                return Done::Same(Entry {
                    size: before.size,
                    mtime_ns: before.mtime_ns,
                    ctime_ns: before.ctime_ns,
                    sha256: h,
                })
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Done::Vanished,
            Err(e) => return Done::Failed(CError::Io(e)),
        }
    }
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Done::Vanished,
        Err(e) => return Done::Failed(CError::Io(e)),
    };
    let opts = PutOptions {
        overwrite: true,
        replication,
        size_hint: Some(before.size),
    };
    let out = match client
        .put(
            &remote,
            FileSource::new(file),
            &opts,
            &dfs_client::no_progress,
        )
        .await
    {
        Ok(o) => o,
        Err(e) => return Done::Failed(e),
    };
    match std::fs::symlink_metadata(&path).map(|m| local_file(&m, 0)) {
        Ok(after) if after.size == before.size && after.mtime_ns == before.mtime_ns => {
            Done::Uploaded(Entry {
                size: out.bytes,
                mtime_ns: before.mtime_ns,
                ctime_ns: before.ctime_ns,
                sha256: out.file.sha256,
            })
        }
        // Changed while it was read (a writer that paused longer than --settle): the
        // uploaded version is whole but not the last; the next pass sends it again.
        _ => Done::Changed,
    }
}

/// Exit codes: 0 stopped by a signal or `--once` clean, 1 an error (the cluster unreachable
/// past --timeout, bad arguments; `--once`: a file failed), 3 a safety stop ([`SafetyStop`]).
pub async fn run(ctx: &Ctx, a: WatchArgs) -> anyhow::Result<i32> {
    let r = Watcher::new(ctx, a).await?.run().await;
    // SAFETY: isatty only inspects a file descriptor.
    if r.is_err() && !ctx.json && unsafe { libc::isatty(2) } == 1 {
        // The error line replaces the status line.
        eprint!("\r\x1b[K");
    }
    match r {
        Err(e) if e.downcast_ref::<SafetyStop>().is_some() => {
            let line = crate::output::error_line(&e);
            if ctx.json {
                eprintln!("{}", json!({"error": line, "code": 3}));
            } else {
                eprintln!("dfsctl: {line}");
            }
            Ok(3)
        }
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file gone (or changed) between the walk and its upload is reported as such before
    /// anything is sent (the client is never called: its address is not even listening).
    #[tokio::test]
    async fn vanished_or_changed_before_upload() {
        let d = tempfile::tempdir().unwrap();
        let conn = dfs_client::MetaConn::connect(
            &["127.0.0.1:9".to_string()],
            None,
            Duration::from_millis(100),
        )
        .unwrap();
        let client = Arc::new(Client::new(conn));
        let f = LocalFile {
            size: 1,
            mtime_ns: 1,
            ctime_ns: 1,
            changed_ns: 1,
        };
        let u = reconcile::Upload {
            rel: "gone".into(),
            local: f,
            known_sha256: None,
            remote: None,
        };
        let gone = d.path().join("gone");
        let r = upload(client.clone(), gone, "/x/gone".into(), 0, &u).await;
        assert!(matches!(r, Done::Vanished));
        let here = d.path().join("here");
        std::fs::write(&here, b"two bytes").unwrap();
        let r = upload(client, here, "/x/here".into(), 0, &u).await;
        assert!(matches!(r, Done::Changed));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
