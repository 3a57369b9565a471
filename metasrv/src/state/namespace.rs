//! Namespace rules: who may create, see, move and remove what. Pure code on `State`, no IO.
//!
//! Ownership: a user sees and changes only what it owns; an admin sees and changes everything.
//! Anyone may create entries at the root; elsewhere only in directories they may change.
//! A refused command returns an error and leaves the state exactly as it was: every check
//! runs before the first mutation.
use super::command::{ApplyError, ErrorKind, ImportedFile, Reply};
use super::{FileData, Inode, RecordKey, State};
use dfs_common::path;

/// Most replicas a file may ask for.
pub const MAX_REPLICATION: u32 = 16;

fn checked(p: &str) -> Result<String, ApplyError> {
    path::normalize(p).map_err(|e| ApplyError::new(ErrorKind::InvalidArgument, e.to_string()))
}

impl State {
    fn may_change(&self, actor: &str, inode: &Inode) -> bool {
        inode.owner == actor || self.is_admin(actor)
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
    fn descendants<'a>(&'a self, dir: &str) -> impl Iterator<Item = (&'a String, &'a Inode)> + 'a {
        let prefix = if dir == "/" {
            "/".to_string()
        } else {
            format!("{dir}/")
        };
        self.nodes
            .range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
    }

    /// The direct children of `dir`, without walking their subtrees: after a child, the search
    /// jumps past every key under it (`child/…` sorts before `child0`).
    fn children<'a>(&'a self, dir: &str) -> Vec<(&'a String, &'a Inode)> {
        use std::ops::Bound;
        let prefix = if dir == "/" {
            "/".to_string()
        } else {
            format!("{dir}/")
        };
        let mut out = Vec::new();
        let mut from = Bound::Included(prefix.clone());
        while let Some((k, n)) = self.nodes.range((from, Bound::Unbounded)).next() {
            if !k.starts_with(&prefix) {
                break;
            }
            match k[prefix.len()..].find('/') {
                // A deeper entry whose directory was skipped or absent: jump past that subtree.
                Some(i) => from = Bound::Included(format!("{}0", &k[..prefix.len() + i])),
                None => {
                    out.push((k, n));
                    from = Bound::Excluded(k.clone());
                }
            }
        }
        out
    }

    /// The ancestors of `path` that do not exist yet, after checking that the ones that do are
    /// directories the actor may create in.
    fn missing_ancestors(&self, actor: &str, path: &str) -> Result<Vec<String>, ApplyError> {
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
        for (i, d) in dirs.iter().enumerate() {
            let inode = Inode {
                id: format!("{id}.{i}"),
                owner: owner.to_string(),
                created_ms: now_ms,
                modified_ms: now_ms,
                file: None,
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
        // Like mv: moving onto an existing directory moves into it.
        let to_is_dir = to == "/" || self.nodes.get(&to).is_some_and(Inode::is_dir);
        if to_is_dir {
            to = if to == "/" {
                format!("/{}", path::file_name(&from))
            } else {
                format!("{to}/{}", path::file_name(&from))
            };
        }
        if to == from {
            return Ok(Reply::Done);
        }
        if path::is_within(&to, &from) {
            return Err(ApplyError::new(
                ErrorKind::InvalidArgument,
                format!("cannot move {from} into itself"),
            ));
        }
        if self.nodes.contains_key(&to) {
            return Err(exists(&to));
        }
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
        for old in moving {
            let new = format!("{to}{}", &old[from.len()..]);
            if let Some(mut n) = self.nodes.remove(&old) {
                if old == from {
                    n.modified_ms = now_ms;
                }
                self.nodes.insert(new.clone(), n);
            }
            touched.push(RecordKey::Node(old));
            touched.push(RecordKey::Node(new));
        }
        Ok(Reply::Done)
    }

    pub(super) fn remove(
        &mut self,
        actor: &str,
        raw: &str,
        recursive: bool,
        touched: &mut Vec<RecordKey>,
    ) -> Result<Reply, ApplyError> {
        let p = checked(raw)?;
        if p == "/" {
            return Err(ApplyError::new(
                ErrorKind::InvalidArgument,
                "cannot remove the root directory",
            ));
        }
        let Some(n) = self.nodes.get(&p) else {
            return Err(ApplyError::not_found(&p));
        };
        if !self.may_change(actor, n) {
            return Err(ApplyError::denied(format!(
                "permission denied: {p} belongs to another user"
            )));
        }
        let mut doomed = vec![p.clone()];
        if n.is_dir() {
            for (k, child) in self.descendants(&p) {
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
                doomed.push(k.clone());
            }
        }
        let count = doomed.len() as u64;
        for k in doomed {
            if let Some(Inode { file: Some(f), .. }) = self.nodes.remove(&k) {
                self.queue_deletes(&f.chunks, touched);
            }
            touched.push(RecordKey::Node(k));
        }
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

    #[allow(clippy::too_many_arguments)]
    pub(super) fn commit_file(
        &mut self,
        actor: &str,
        raw: &str,
        overwrite: bool,
        file: &FileData,
        id: &str,
        now_ms: i64,
        kept: &[String],
        touched: &mut Vec<RecordKey>,
    ) -> Result<Reply, ApplyError> {
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
        let (created_ms, owner) = match self.nodes.get(&p) {
            Some(old) => (old.created_ms, old.owner.clone()),
            None => (now_ms, actor.to_string()),
        };
        let new = Inode {
            id: id.to_string(),
            owner: owner.clone(),
            created_ms,
            modified_ms: now_ms,
            file: Some(file.clone()),
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
            let inode = Inode {
                id: f.id.clone(),
                owner: f.owner.clone(),
                created_ms: f.created_ms,
                modified_ms: f.modified_ms,
                file: Some(data),
            };
            self.nodes.insert(p.clone(), inode);
            touched.push(RecordKey::Node(p.clone()));
            count += 1;
            report.push(format!(
                "imported {p} ({} bytes, owner {}): metadata only, its {} chunk(s) from the old system cannot be recovered, so the file cannot be read until it is put again",
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
            return Ok((p, root_inode()));
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
    /// file itself when `path` is a file.
    pub fn list(
        &self,
        actor: &str,
        raw: &str,
        recursive: bool,
    ) -> Result<Vec<(String, Inode)>, ApplyError> {
        let (p, n) = self.stat(actor, raw)?;
        if !n.is_dir() {
            return Ok(vec![(p, n)]);
        }
        let entries: Vec<(&String, &Inode)> = if recursive {
            self.descendants(&p).collect()
        } else {
            self.children(&p)
        };
        Ok(entries
            .into_iter()
            .filter(|(_, n)| self.may_change(actor, n))
            .map(|(k, n)| (k.clone(), n.clone()))
            .collect())
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

fn exists(p: &str) -> ApplyError {
    ApplyError::new(ErrorKind::AlreadyExists, format!("{p} already exists"))
}

fn root_inode() -> Inode {
    Inode {
        id: "root".into(),
        owner: "admin".into(),
        created_ms: 0,
        modified_ms: 0,
        file: None,
    }
}
