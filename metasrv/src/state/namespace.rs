//! Namespace rules: who may create, see, move and remove what. Pure code on `State`, no IO.
//!
//! Ownership: a user sees and changes only what it owns; an admin sees and changes everything.
//! Anyone may create entries at the root; elsewhere only in directories they may change.
//! A refused command returns an error and leaves the state exactly as it was: every check
//! runs before the first mutation.
//!
//! Inode numbers, modes and times (see `Inode`): a new inode takes the next number from the
//! replicated counter; a commit over an existing file keeps its number, owner, mode and
//! creation time; a rename keeps the number. Adding, removing or renaming an entry sets its
//! directory's mtime and ctime to the command's time.
use super::command::{ApplyError, ErrorKind, ImportedFile, NewVersion, RenameMode, Reply};
use super::{FileData, Inode, RecordKey, State, MODE_MASK, ROOT_INO};
use dfs_common::path;

/// Most replicas a file may ask for.
pub const MAX_REPLICATION: u32 = 16;
/// Longest symbolic link target, in bytes (Linux's PATH_MAX).
pub const MAX_SYMLINK_TARGET: usize = 4096;
/// Most entries in one page of a listing (a caller asking for more gets this many).
pub const MAX_LIST_PAGE: usize = 1000;
/// Most entries one page looks at (entries the caller may not see are skipped but counted), so
/// a page costs bounded work even in a directory full of other users' files.
const MAX_LIST_SCAN: usize = 20 * MAX_LIST_PAGE;

/// One page of a listing and the cursor of the next (empty: this was the last page).
pub type ListPage = (Vec<(String, Inode)>, String);

pub(super) fn checked(p: &str) -> Result<String, ApplyError> {
    path::normalize(p).map_err(|e| ApplyError::new(ErrorKind::InvalidArgument, e.to_string()))
}

impl State {
    pub(super) fn may_change(&self, actor: &str, inode: &Inode) -> bool {
        inode.owner == actor || self.is_admin(actor)
    }

    /// The next inode number (0 until this version's semantics are on, as an older version
    /// would have stored it).
    pub(super) fn alloc_ino(&mut self, touched: &mut Vec<RecordKey>) -> u64 {
        if !self.meta.inode_numbers {
            return 0;
        }
        let n = self.meta.next_ino.max(ROOT_INO + 1);
        self.meta.next_ino = n + 1;
        touched.push(RecordKey::Meta);
        n
    }

    /// An entry of `dir` was added, removed or renamed at `now_ms`.
    pub(super) fn dir_changed(&mut self, dir: &str, now_ms: i64, touched: &mut Vec<RecordKey>) {
        if !self.meta.inode_numbers || now_ms == 0 {
            return;
        }
        if dir == "/" {
            self.meta.root_mtime_ms = now_ms;
            self.meta.root_ctime_ms = now_ms;
            touched.push(RecordKey::Meta);
        } else if let Some(n) = self.nodes.get_mut(dir) {
            n.modified_ms = now_ms;
            n.ctime_ms = now_ms;
            touched.push(RecordKey::Node(dir.to_string()));
        }
    }

    /// When the cluster was initialized (the admin's creation time on older clusters).
    pub fn cluster_created_ms(&self) -> i64 {
        match self.meta.created_ms {
            0 => self.users.get("admin").map_or(0, |u| u.created_ms),
            t => t,
        }
    }

    /// The root directory: owned by `admin`, number 1, created with the cluster.
    pub fn root_inode(&self) -> Inode {
        let created = self.cluster_created_ms();
        let mtime = match self.meta.root_mtime_ms {
            0 => created,
            t => t,
        };
        Inode {
            id: "root".into(),
            ino: ROOT_INO,
            owner: "admin".into(),
            created_ms: created,
            modified_ms: mtime,
            ctime_ms: self.meta.root_ctime_ms,
            mode: self.meta.root_mode,
            file: None,
            symlink: None,
        }
    }

    /// Can `actor` create an entry directly inside `dir`?
    fn check_create_in(&self, actor: &str, dir: &str) -> Result<(), ApplyError> {
        if dir == "/" {
            return Ok(());
        }
        match self.nodes.get(dir) {
            None => Err(ApplyError::not_found(dir)),
            Some(n) if !n.is_dir() => Err(ApplyError::new(
                ErrorKind::FailedPrecondition,
                format!("{dir} is a file, not a directory"),
            )),
            Some(n) if !self.may_change(actor, n) => Err(ApplyError::denied(format!(
                "permission denied: {dir} belongs to another user"
            ))),
            Some(_) => Ok(()),
        }
    }

    /// Paths inside `dir` (not `dir` itself), in order.
    pub(super) fn descendants<'a>(
        &'a self,
        dir: &str,
    ) -> impl Iterator<Item = (&'a String, &'a Inode)> + 'a {
        let prefix = if dir == "/" {
            "/".to_string()
        } else {
            format!("{dir}/")
        };
        self.nodes
            .range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
    }

    /// The ancestors of `path` that do not exist yet, after checking that the ones that do are
    /// directories the actor may create in.
    fn missing_ancestors(&self, actor: &str, path: &str) -> Result<Vec<String>, ApplyError> {
        refuse_trash_target(path)?;
        let mut missing = Vec::new();
        let mut last_existing = "/".to_string();
        for a in path::ancestors(path) {
            match self.nodes.get(a) {
                Some(n) if !n.is_dir() => {
                    return Err(ApplyError::new(
                        ErrorKind::FailedPrecondition,
                        format!("{a} is a file, not a directory"),
                    ))
                }
                Some(_) => last_existing = a.to_string(),
                None => missing.push(a.to_string()),
            }
        }
        // Creating the first missing ancestor (or the entry itself) happens inside the deepest
        // existing one.
        let creator_dir = if missing.is_empty() {
            path::parent(path).unwrap_or("/").to_string()
        } else {
            last_existing
        };
        self.check_create_in(actor, &creator_dir)?;
        Ok(missing)
    }

    fn create_dirs(
        &mut self,
        dirs: &[String],
        owner: &str,
        id: &str,
        now_ms: i64,
        touched: &mut Vec<RecordKey>,
    ) {
        if let Some(first) = dirs.first() {
            self.dir_changed(path::parent(first).unwrap_or("/"), now_ms, touched);
        }
        for (i, d) in dirs.iter().enumerate() {
            let inode = Inode {
                id: format!("{id}.{i}"),
                ino: self.alloc_ino(touched),
                owner: owner.to_string(),
                created_ms: now_ms,
                modified_ms: now_ms,
                ctime_ms: now_ms,
                ..Default::default()
            };
            self.nodes.insert(d.clone(), inode);
            touched.push(RecordKey::Node(d.clone()));
        }
    }

    pub(super) fn mkdir(
        &mut self,
        actor: &str,
        raw: &str,
        parents: bool,
        id: &str,
        now_ms: i64,
        touched: &mut Vec<RecordKey>,
    ) -> Result<Reply, ApplyError> {
        let p = checked(raw)?;
        if p == "/" {
            return if parents {
                Ok(Reply::Done)
            } else {
                Err(exists("/"))
            };
        }
        if let Some(n) = self.nodes.get(&p) {
            return match (n.is_dir(), parents) {
                (false, _) => Err(ApplyError::new(
                    ErrorKind::AlreadyExists,
                    format!("{p} exists and is a file"),
                )),
                (true, true) if self.may_change(actor, n) => Ok(Reply::Done),
                (true, true) => Err(ApplyError::denied(format!(
                    "permission denied: {p} belongs to another user"
                ))),
                (true, false) => Err(exists(&p)),
            };
        }
        let missing = self.missing_ancestors(actor, &p)?;
        if !missing.is_empty() && !parents {
            return Err(ApplyError::new(
                ErrorKind::NotFound,
                format!(
                    "{}: parent directory does not exist (use -p to create it)",
                    missing[0]
                ),
            ));
        }
        let mut all = missing;
        all.push(p);
        self.create_dirs(&all, actor, id, now_ms, touched);
        Ok(Reply::Done)
    }

    pub(super) fn rename(
        &mut self,
        actor: &str,
        from_raw: &str,
        to_raw: &str,
        mode: RenameMode,
        now_ms: i64,
        touched: &mut Vec<RecordKey>,
    ) -> Result<Reply, ApplyError> {
        let from = checked(from_raw)?;
        let mut to = checked(to_raw)?;
        if from == "/" {
            return Err(ApplyError::new(
                ErrorKind::InvalidArgument,
                "cannot move the root directory",
            ));
        }
        let Some(src) = self.nodes.get(&from) else {
            return Err(ApplyError::not_found(&from));
        };
        if !self.may_change(actor, src) {
            return Err(ApplyError::denied(format!(
                "permission denied: {from} belongs to another user"
            )));
        }
        let src_is_dir = src.is_dir();
        // Like mv: moving onto an existing directory moves into it.
        let to_is_dir = to == "/" || self.nodes.get(&to).is_some_and(Inode::is_dir);
        if mode == RenameMode::Move && to_is_dir {
            to = if to == "/" {
                format!("/{}", path::file_name(&from))
            } else {
                format!("{to}/{}", path::file_name(&from))
            };
        }
        if to == from {
            return match mode {
                RenameMode::NoReplace => Err(exists(&to)),
                _ => Ok(Reply::Done),
            };
        }
        if to == "/" {
            return Err(exists("/"));
        }
        if path::is_within(&to, &from) {
            return Err(ApplyError::new(
                ErrorKind::InvalidArgument,
                format!("cannot move {from} into itself"),
            ));
        }
        // The entry `to` replaces, if any (only with `Replace`).
        let mut replaced = None;
        if let Some(t) = self.nodes.get(&to) {
            if mode != RenameMode::Replace {
                return Err(exists(&to));
            }
            if !self.may_change(actor, t) {
                return Err(ApplyError::denied(format!(
                    "permission denied: {to} belongs to another user"
                )));
            }
            match (src_is_dir, t.is_dir()) {
                (true, false) => {
                    return Err(ApplyError::new(
                        ErrorKind::FailedPrecondition,
                        format!("{to} is a file, not a directory"),
                    ))
                }
                (false, true) => {
                    return Err(ApplyError::new(
                        ErrorKind::FailedPrecondition,
                        format!("{to} is a directory"),
                    ))
                }
                (true, true) if self.descendants(&to).next().is_some() => {
                    return Err(ApplyError::new(
                        ErrorKind::FailedPrecondition,
                        format!("{to}: directory not empty"),
                    ))
                }
                _ => replaced = Some(to.clone()),
            }
        }
        refuse_trash_target(&to)?;
        let to_parent = path::parent(&to).unwrap_or("/").to_string();
        self.check_create_in(actor, &to_parent)?;
        let mut moving: Vec<String> = vec![from.clone()];
        for (k, n) in self.descendants(&from) {
            if !self.may_change(actor, n) {
                return Err(ApplyError::denied(format!(
                    "permission denied: {k} belongs to another user"
                )));
            }
            moving.push(k.clone());
        }
        // Every check passed: from here on nothing fails.
        if let Some(t) = replaced {
            if let Some(Inode { file: Some(f), .. }) = self.nodes.remove(&t) {
                self.queue_deletes(&f.chunks, touched);
            }
            touched.push(RecordKey::Node(t));
        }
        let v2 = self.meta.inode_numbers;
        for old in moving {
            let new = format!("{to}{}", &old[from.len()..]);
            if let Some(mut n) = self.nodes.remove(&old) {
                if old == from {
                    // A rename changes the inode (ctime), not its content (mtime); before
                    // this version it set the mtime.
                    if v2 {
                        n.ctime_ms = now_ms;
                    } else {
                        n.modified_ms = now_ms;
                    }
                }
                self.nodes.insert(new.clone(), n);
            }
            touched.push(RecordKey::Node(old));
            touched.push(RecordKey::Node(new));
        }
        self.dir_changed(path::parent(&from).unwrap_or("/"), now_ms, touched);
        self.dir_changed(&to_parent, now_ms, touched);
        Ok(Reply::Done)
    }

    /// What deleting `p` takes: `p` and (with `recursive`) everything below it, in path
    /// order, after checking that it exists and that the actor may change all of it.
    pub(super) fn deletable(
        &self,
        actor: &str,
        p: &str,
        recursive: bool,
    ) -> Result<Vec<String>, ApplyError> {
        let Some(n) = self.nodes.get(p) else {
            return Err(ApplyError::not_found(p));
        };
        if !self.may_change(actor, n) {
            return Err(ApplyError::denied(format!(
                "permission denied: {p} belongs to another user"
            )));
        }
        let mut all = vec![p.to_string()];
        for (k, child) in self.descendants(p) {
            if !recursive {
                return Err(ApplyError::new(
                    ErrorKind::FailedPrecondition,
                    format!("{p}: directory not empty (use -r to remove it and its contents)"),
                ));
            }
            if !self.may_change(actor, child) {
                return Err(ApplyError::denied(format!(
                    "permission denied: {k} belongs to another user"
                )));
            }
            all.push(k.clone());
        }
        Ok(all)
    }

    pub(super) fn remove(
        &mut self,
        actor: &str,
        raw: &str,
        recursive: bool,
        now_ms: i64,
        touched: &mut Vec<RecordKey>,
    ) -> Result<Reply, ApplyError> {
        let p = checked(raw)?;
        if p == "/" {
            return Err(ApplyError::new(
                ErrorKind::InvalidArgument,
                "cannot remove the root directory",
            ));
        }
        let doomed = self.deletable(actor, &p, recursive)?;
        let count = doomed.len() as u64;
        for k in doomed {
            if let Some(Inode { file: Some(f), .. }) = self.nodes.remove(&k) {
                self.queue_deletes(&f.chunks, touched);
            }
            touched.push(RecordKey::Node(k));
        }
        self.dir_changed(path::parent(&p).unwrap_or("/"), now_ms, touched);
        Ok(Reply::Removed { count })
    }

    /// The checks a new file at `path` must pass; shared by allocation and commit.
    pub fn check_file_target(
        &self,
        actor: &str,
        raw: &str,
        overwrite: bool,
    ) -> Result<String, ApplyError> {
        let p = checked(raw)?;
        if p == "/" {
            return Err(ApplyError::new(
                ErrorKind::InvalidArgument,
                "/ is a directory",
            ));
        }
        if !self.users.contains_key(actor) {
            return Err(ApplyError::denied(format!("unknown user {actor}")));
        }
        match self.nodes.get(&p) {
            Some(n) if n.is_dir() => Err(ApplyError::new(
                ErrorKind::FailedPrecondition,
                format!("{p} is a directory"),
            )),
            Some(n) if !self.may_change(actor, n) => Err(ApplyError::denied(format!(
                "permission denied: {p} belongs to another user"
            ))),
            Some(_) if !overwrite => Err(ApplyError::new(
                ErrorKind::AlreadyExists,
                format!("{p} already exists (use -f to replace it)"),
            )),
            _ => {
                self.missing_ancestors(actor, &p)?;
                Ok(p)
            }
        }
    }

    fn check_file_data(&self, f: &FileData) -> Result<(), ApplyError> {
        let bad = |m: String| Err(ApplyError::new(ErrorKind::InvalidArgument, m));
        if f.replication == 0 || f.replication > MAX_REPLICATION {
            return bad(format!(
                "replication must be between 1 and {MAX_REPLICATION}"
            ));
        }
        // Sizes come from the client: add them without overflowing (apply must never panic).
        let total = f.chunks.iter().try_fold(0u64, |t, c| t.checked_add(c.size));
        if total != Some(f.size) {
            let total = total.map_or("more than 2^64".to_string(), |t| t.to_string());
            return bad(format!(
                "chunk sizes add up to {total}, not the file size {}",
                f.size
            ));
        }
        let mut ids = std::collections::HashSet::new();
        for c in &f.chunks {
            if !ids.insert(c.id.as_str()) {
                return bad(format!("chunk {} listed twice", c.id));
            }
            if c.replicas.is_empty() {
                return bad(format!("chunk {} has no replica", c.id));
            }
            if let Some(n) = c
                .replicas
                .iter()
                .find(|n| !self.chunk_servers.contains_key(n))
            {
                return bad(format!("chunk {} names unknown chunk server {n}", c.id));
            }
            // Its deletion was ordered (collected as an orphan after a very slow put): the
            // bytes may already be gone, so the file must not point at them.
            if let Some(n) = c.replicas.iter().find(|n| {
                self.pending_deletes
                    .get(n)
                    .is_some_and(|set| set.contains(&c.id))
            }) {
                return Err(ApplyError::new(
                    ErrorKind::FailedPrecondition,
                    format!(
                        "chunk {} on chunk server {n} is being deleted (the put took too long); put the file again",
                        c.id
                    ),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn commit_file(
        &mut self,
        actor: &str,
        raw: &str,
        file: &FileData,
        new_version: &NewVersion,
        touched: &mut Vec<RecordKey>,
    ) -> Result<Reply, ApplyError> {
        let NewVersion {
            overwrite,
            id,
            now_ms,
            kept,
            mode: new_mode,
        } = *new_version;
        if let Some(m) = new_mode {
            check_mode(m)?;
        }
        let p = self.check_file_target(actor, raw, overwrite)?;
        let with_kept;
        let file = if kept.is_empty() {
            file
        } else {
            with_kept = self.fill_kept_chunks(&p, file, kept)?;
            &with_kept
        };
        self.check_file_data(file)?;
        let missing = self.missing_ancestors(actor, &p)?;
        self.create_dirs(&missing, actor, id, now_ms, touched);
        // A new version of a file is the same inode (number, owner, mode, creation time); a
        // file over a symbolic link is a new one.
        let (created_ms, owner, ino, mode) = match self.nodes.get(&p) {
            Some(old) if old.file.is_some() => {
                (old.created_ms, old.owner.clone(), old.ino, old.mode)
            }
            Some(old) => (
                now_ms,
                old.owner.clone(),
                self.alloc_ino(touched),
                new_mode.unwrap_or(0),
            ),
            None => {
                self.dir_changed(path::parent(&p).unwrap_or("/"), now_ms, touched);
                let ino = self.alloc_ino(touched);
                (now_ms, actor.to_string(), ino, new_mode.unwrap_or(0))
            }
        };
        let new = Inode {
            id: id.to_string(),
            ino,
            owner: owner.clone(),
            created_ms,
            modified_ms: now_ms,
            ctime_ms: now_ms,
            mode,
            file: Some(file.clone()),
            symlink: None,
        };
        if let Some(Inode {
            file: Some(old), ..
        }) = self.nodes.insert(p.clone(), new)
        {
            // Never the chunks the new version lists (the same commit applied twice).
            let listed: std::collections::HashSet<&str> =
                file.chunks.iter().map(|c| c.id.as_str()).collect();
            let gone: Vec<super::ChunkRef> = old
                .chunks
                .into_iter()
                .filter(|c| !listed.contains(c.id.as_str()))
                .collect();
            self.queue_deletes(&gone, touched);
        }
        touched.push(RecordKey::Node(p));
        Ok(Reply::Committed {
            owner,
            created_ms,
            id: id.to_string(),
            modified_ms: now_ms,
            ino,
            mode,
        })
    }

    /// `file` with each chunk named in `kept` replaced by that chunk of the version now at `p`
    /// (its size, checksum and replicas): refused when that version no longer has it (the file
    /// was replaced, removed or renamed since the writer opened it) or cuts chunks differently.
    fn fill_kept_chunks(
        &self,
        p: &str,
        file: &FileData,
        kept: &[String],
    ) -> Result<FileData, ApplyError> {
        let changed = |m: String| ApplyError::new(ErrorKind::FailedPrecondition, m);
        let Some(Inode {
            file: Some(old), ..
        }) = self.nodes.get(p)
        else {
            return Err(changed(format!(
                "{p} has no version to keep chunks from (it was removed or renamed since it was opened); write it again"
            )));
        };
        if old.chunk_size != file.chunk_size {
            return Err(changed(format!(
                "{p} has chunks of {} bytes, the commit has {}",
                old.chunk_size, file.chunk_size
            )));
        }
        let mut out = file.clone();
        for id in kept {
            let slot = out.chunks.iter_mut().find(|c| &c.id == id);
            let was = old.chunks.iter().find(|c| &c.id == id);
            match (slot, was) {
                (Some(slot), Some(was)) => *slot = was.clone(),
                (None, _) => {
                    return Err(ApplyError::new(
                        ErrorKind::InvalidArgument,
                        format!("kept chunk {id} is not listed in the commit"),
                    ))
                }
                (_, None) => {
                    return Err(changed(format!(
                        "{p} was replaced since it was opened (chunk {id} is no longer part of it); write it again"
                    )))
                }
            }
        }
        Ok(out)
    }

    pub(super) fn import(
        &mut self,
        actor: &str,
        files: &[ImportedFile],
        now_ms: i64,
        touched: &mut Vec<RecordKey>,
    ) -> Result<Reply, ApplyError> {
        if !self.is_admin(actor) {
            return Err(ApplyError::denied("only an admin can import metadata"));
        }
        let mut report = Vec::new();
        let mut count = 0;
        for f in files {
            let p = match checked(&f.path) {
                Ok(p) if p != "/" => p,
                Ok(_) => {
                    report.push(format!("skipped {:?}: not a file name", f.path));
                    continue;
                }
                Err(e) => {
                    report.push(format!("skipped {:?}: {e}", f.path));
                    continue;
                }
            };
            if self.nodes.contains_key(&p) {
                report.push(format!("skipped {p}: already exists"));
                continue;
            }
            let missing = match self.missing_ancestors(actor, &p) {
                Ok(m) => m,
                Err(e) => {
                    report.push(format!("skipped {p}: {e}"));
                    continue;
                }
            };
            self.create_dirs(&missing, &f.owner, &f.id, now_ms, touched);
            let data = FileData {
                size: f.size,
                replication: 1,
                sha256: f.sha256.clone(),
                chunk_size: 0,
                chunks: f.chunks.clone(),
            };
            self.dir_changed(path::parent(&p).unwrap_or("/"), now_ms, touched);
            let inode = Inode {
                id: f.id.clone(),
                ino: self.alloc_ino(touched),
                owner: f.owner.clone(),
                created_ms: f.created_ms,
                modified_ms: f.modified_ms,
                file: Some(data),
                ..Default::default()
            };
            self.nodes.insert(p.clone(), inode);
            touched.push(RecordKey::Node(p.clone()));
            count += 1;
            // Short: a reply is remembered for retries (the warning is said once per request).
            report.push(format!(
                "imported {p} ({} bytes, owner {}, {} old chunk(s))",
                f.size,
                f.owner,
                f.chunks.len()
            ));
        }
        Ok(Reply::Imported { report, count })
    }

    /// Look up one entry the actor may see. The root is a directory owned by `admin`.
    pub fn stat(&self, actor: &str, raw: &str) -> Result<(String, Inode), ApplyError> {
        let p = checked(raw)?;
        if p == "/" {
            return Ok((p, self.root_inode()));
        }
        let n = self
            .nodes
            .get(&p)
            .ok_or_else(|| ApplyError::not_found(&p))?;
        if !self.may_change(actor, n) {
            return Err(ApplyError::denied(format!(
                "permission denied: {p} belongs to another user"
            )));
        }
        Ok((p, n.clone()))
    }

    /// Entries of a directory the actor may see (only the ones it owns unless admin), or the
    /// file itself when `path` is a file, whole (tests; services walk `list_page`).
    #[cfg(test)]
    pub fn list(
        &self,
        actor: &str,
        raw: &str,
        recursive: bool,
    ) -> Result<Vec<(String, Inode)>, ApplyError> {
        Ok(self.list_page(actor, raw, recursive, "", 0)?.0)
    }

    /// One page of `list`: at most `limit` entries (0: all of them; otherwise at most
    /// `MAX_LIST_PAGE`) whose name (path below `raw`, when recursive) sorts after `after`,
    /// and the cursor for the next page. Any cursor is just a name to start after: a stale
    /// or made-up one skips or repeats nothing it should not.
    pub fn list_page(
        &self,
        actor: &str,
        raw: &str,
        recursive: bool,
        after: &str,
        limit: usize,
    ) -> Result<ListPage, ApplyError> {
        use std::ops::Bound;
        let (p, n) = self.stat(actor, raw)?;
        if !n.is_dir() {
            return Ok((
                if after.is_empty() {
                    vec![(p, n)]
                } else {
                    vec![]
                },
                String::new(),
            ));
        }
        let (limit, scan) = match limit {
            0 => (usize::MAX, usize::MAX),
            l => (l.min(MAX_LIST_PAGE), MAX_LIST_SCAN),
        };
        let prefix = if p == "/" {
            "/".to_string()
        } else {
            format!("{p}/")
        };
        let mut from = if after.is_empty() {
            Bound::Included(prefix.clone())
        } else {
            Bound::Excluded(format!("{prefix}{after}"))
        };
        let (mut out, mut scanned) = (Vec::new(), 0usize);
        while let Some((k, n)) = self.nodes.range((from, Bound::Unbounded)).next() {
            if !k.starts_with(&prefix) {
                return Ok((out, String::new()));
            }
            let name = &k[prefix.len()..];
            match name.find('/') {
                // Not a direct child: jump past that subtree (`child/…` sorts before `child0`).
                Some(i) if !recursive => {
                    from = Bound::Included(format!("{}0", &k[..prefix.len() + i]));
                    continue;
                }
                _ => {
                    if self.may_change(actor, n) {
                        out.push((k.clone(), n.clone()));
                    }
                    scanned += 1;
                    from = Bound::Excluded(k.clone());
                }
            }
            if out.len() >= limit || scanned >= scan {
                return Ok((out, name.to_string()));
            }
        }
        Ok((out, String::new()))
    }

    pub(super) fn symlink(
        &mut self,
        actor: &str,
        raw: &str,
        target: &str,
        id: &str,
        now_ms: i64,
        touched: &mut Vec<RecordKey>,
    ) -> Result<Reply, ApplyError> {
        let p = checked(raw)?;
        let bad = |m: String| Err(ApplyError::new(ErrorKind::InvalidArgument, m));
        if target.is_empty() {
            return bad("a symbolic link needs a target".into());
        }
        if target.len() > MAX_SYMLINK_TARGET {
            return bad(format!(
                "symbolic link target is {} bytes, longer than {MAX_SYMLINK_TARGET}",
                target.len()
            ));
        }
        if target.contains('\0') {
            return bad("symbolic link target contains a NUL byte".into());
        }
        if !self.users.contains_key(actor) {
            return Err(ApplyError::denied(format!("unknown user {actor}")));
        }
        if p == "/" || self.nodes.contains_key(&p) {
            return Err(exists(&p));
        }
        let missing = self.missing_ancestors(actor, &p)?;
        if let Some(m) = missing.first() {
            return Err(ApplyError::not_found(m));
        }
        self.dir_changed(path::parent(&p).unwrap_or("/"), now_ms, touched);
        let inode = Inode {
            id: id.to_string(),
            ino: self.alloc_ino(touched),
            owner: actor.to_string(),
            created_ms: now_ms,
            modified_ms: now_ms,
            ctime_ms: now_ms,
            mode: 0,
            file: None,
            symlink: Some(target.to_string()),
        };
        self.nodes.insert(p.clone(), inode);
        touched.push(RecordKey::Node(p));
        Ok(Reply::Done)
    }

    pub(super) fn set_attr(
        &mut self,
        actor: &str,
        raw: &str,
        mode: Option<u32>,
        mtime_ms: Option<i64>,
        now_ms: i64,
        touched: &mut Vec<RecordKey>,
    ) -> Result<Reply, ApplyError> {
        let (p, n) = self.stat(actor, raw)?;
        if !self.may_change(actor, &n) {
            return Err(ApplyError::denied(format!(
                "permission denied: {p} belongs to another user"
            )));
        }
        if let Some(m) = mode {
            check_mode(m)?;
            if n.is_symlink() {
                return Err(ApplyError::new(
                    ErrorKind::InvalidArgument,
                    format!("{p}: the mode of a symbolic link cannot be changed"),
                ));
            }
        }
        if p == "/" {
            if let Some(m) = mode {
                self.meta.root_mode = m;
            }
            if let Some(t) = mtime_ms {
                self.meta.root_mtime_ms = t;
            }
            self.meta.root_ctime_ms = now_ms;
            touched.push(RecordKey::Meta);
            return Ok(Reply::Done);
        }
        if let Some(n) = self.nodes.get_mut(&p) {
            if let Some(m) = mode {
                n.mode = m;
            }
            if let Some(t) = mtime_ms {
                n.modified_ms = t;
            }
            n.ctime_ms = now_ms;
            touched.push(RecordKey::Node(p));
        }
        Ok(Reply::Done)
    }

    /// Number every inode that has no number yet, in path order, and turn on this version's
    /// semantics (see `ClusterMeta.inode_numbers`). Deterministic: the same state gives the
    /// same numbers on every member.
    pub(super) fn number_inodes(&mut self, touched: &mut Vec<RecordKey>) -> Reply {
        if self.meta.inode_numbers {
            return Reply::Done;
        }
        let mut next = self.meta.next_ino.max(ROOT_INO + 1);
        for (p, n) in self.nodes.iter_mut() {
            if n.ino == 0 {
                n.ino = next;
                next += 1;
                touched.push(RecordKey::Node(p.clone()));
            }
        }
        self.meta.next_ino = next;
        self.meta.inode_numbers = true;
        if self.meta.created_ms == 0 {
            self.meta.created_ms = self.cluster_created_ms();
        }
        touched.push(RecordKey::Meta);
        Reply::Done
    }

    /// Files, directories and file bytes under `raw` that the actor may see (no copies).
    pub fn usage(&self, actor: &str, raw: &str) -> Result<(u64, u64, u64), ApplyError> {
        let (p, n) = self.stat(actor, raw)?;
        Ok(if n.is_dir() {
            super::count_inodes(
                self.descendants(&p)
                    .filter(|(_, n)| self.may_change(actor, n))
                    .map(|(_, n)| n),
            )
        } else {
            super::count_inodes(std::iter::once(&n))
        })
    }
}

/// Only a delete puts entries in the trash (see `trash`).
fn refuse_trash_target(p: &str) -> Result<(), ApplyError> {
    if super::trash::in_trash(p) {
        return Err(ApplyError::denied(format!(
            "{p} is in the trash: only a delete puts entries there (dfsctl trash restore takes them out)"
        )));
    }
    Ok(())
}

fn exists(p: &str) -> ApplyError {
    ApplyError::new(ErrorKind::AlreadyExists, format!("{p} already exists"))
}

/// Permission bits only (what chmod and a create may set).
fn check_mode(m: u32) -> Result<(), ApplyError> {
    if m & !MODE_MASK != 0 {
        return Err(ApplyError::new(
            ErrorKind::InvalidArgument,
            format!("mode {m:o} has bits beyond permissions ({MODE_MASK:o})"),
        ));
    }
    Ok(())
}
