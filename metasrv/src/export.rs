//! `saved-files.json`: the original system's metadata format, kept as an exported view.
//!
//! Keys, types and order follow shared/origin.md exactly (size is a string, times are local
//! `YYYY-MM-DD HH:MM:SS.ffffff`, pretty-printed with 4 spaces); extra keys come after the
//! original ones. `worker_id` is the first replica's public node id; no secret is ever written.
//! Every node writes it from its own applied state, atomically, about 0.5 s behind (see
//! `run_writer` for large namespaces).
use crate::state::command::ImportedFile;
use crate::state::{ChunkRef, FileData, Inode, State};
use chrono::{Local, NaiveDateTime, TimeZone};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

#[derive(Serialize)]
struct SavedChunk {
    chunk_id: String,
    file_name: String,
    index: u64,
    worker_id: String,
    size: u64,
    crc32c: u32,
    replicas: Vec<String>,
}

#[derive(Serialize)]
struct SavedFile {
    created: String,
    id: String,
    last_edited: String,
    name: String,
    owner: String,
    permissions: serde_json::Map<String, serde_json::Value>,
    size: String,
    sha256: String,
    chunks: Vec<SavedChunk>,
    replication: u32,
    chunk_size: u64,
}

fn fmt_time(ms: i64) -> String {
    match Local.timestamp_millis_opt(ms).single() {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
        None => "1970-01-01 00:00:00.000000".into(),
    }
}

fn parse_time(s: &str) -> Option<i64> {
    let naive = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").ok()?;
    Local
        .from_local_datetime(&naive)
        .earliest()
        .map(|t| t.timestamp_millis())
}

fn saved_file(path: &str, n: &Inode, f: &FileData) -> SavedFile {
    SavedFile {
        created: fmt_time(n.created_ms),
        id: n.id.clone(),
        last_edited: fmt_time(n.modified_ms),
        name: path.to_string(),
        owner: n.owner.clone(),
        permissions: serde_json::Map::new(),
        size: f.size.to_string(),
        sha256: f.sha256.clone(),
        chunks: f
            .chunks
            .iter()
            .enumerate()
            .map(|(i, c)| SavedChunk {
                chunk_id: c.id.clone(),
                file_name: path.to_string(),
                index: i as u64 + 1,
                worker_id: c
                    .replicas
                    .first()
                    .map(|r| r.to_string())
                    .unwrap_or_default(),
                size: c.size,
                crc32c: c.crc32c,
                replicas: c.replicas.iter().map(|r| r.to_string()).collect(),
            })
            .collect(),
        replication: f.replication,
        chunk_size: f.chunk_size,
    }
}

/// Where a page of the document starts: after the path `after` (none: the document's start),
/// with `files_before` files already written (the first file is preceded by `[\n`, the others
/// by `,\n`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageStart {
    pub after: Option<String>,
    pub files_before: u64,
}

/// One page: its piece of the document, and where the next page starts (`None`: done).
pub struct Page {
    pub piece: Vec<u8>,
    pub next: Option<PageStart>,
}

/// Render the piece of `saved-files.json` that starts at `start`: the live files (not what is
/// in the trash) in path order, stopping once the piece holds `max_bytes` or `max_scan`
/// entries were looked at. The pieces of consecutive pages are exactly the document that
/// serde_json's pretty printer (4-space indent) makes of the whole list, so a reader that
/// concatenates them gets the original format byte for byte.
pub fn render_page(state: &State, start: &PageStart, max_bytes: usize, max_scan: usize) -> Page {
    use std::ops::Bound;
    let mut piece = Vec::new();
    if start.after.is_none() {
        piece.push(b'[');
    }
    let from = match &start.after {
        None => Bound::Unbounded,
        Some(p) => Bound::Excluded(p.clone()),
    };
    let mut written = start.files_before;
    let mut scanned = 0usize;
    let mut entries = state
        .nodes
        .range::<String, _>((from, Bound::Unbounded))
        .peekable();
    while let Some((path, n)) = entries.next() {
        scanned += 1;
        if let (Some(f), false) = (n.file.as_ref(), dfs_common::path::in_trash(path)) {
            piece.extend_from_slice(if written == 0 { b"\n" } else { b",\n" });
            write_element(&mut piece, &saved_file(path, n, f));
            written += 1;
        }
        // Each page moves on by at least one entry, so paging always ends.
        if (piece.len() >= max_bytes || scanned >= max_scan) && entries.peek().is_some() {
            return Page {
                piece,
                next: Some(PageStart {
                    after: Some(path.clone()),
                    files_before: written,
                }),
            };
        }
    }
    piece.extend_from_slice(if written == 0 { b"]" } else { b"\n]" });
    Page { piece, next: None }
}

/// One element as the pretty printer writes it inside the top-level array (indent 4).
fn write_element(out: &mut Vec<u8>, file: &SavedFile) {
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut one = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut one, fmt);
    [file]
        .serialize(&mut ser)
        .expect("in-memory JSON cannot fail");
    // `[\n    {…}\n]` without the brackets: the element, indented as in the whole list.
    out.extend_from_slice(&one[2..one.len() - 2]);
}

/// Piece size of one export page, and of the steps in which the node's file is written.
pub const PAGE_BYTES: usize = 4 << 20;
/// Most entries one export page looks at (directories and trash are skipped but counted), so a
/// page holds the state's lock for a bounded time.
pub const PAGE_SCAN: usize = 50_000;

/// Write the whole document to `out`, page by page (no copy of it in memory). `read` gives
/// the state for each page: a lock guard taken per page lets applies go on between pages.
pub fn write_all<S: std::ops::Deref<Target = State>>(
    mut read: impl FnMut() -> S,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    let mut start = PageStart::default();
    loop {
        let page = render_page(&read(), &start, PAGE_BYTES, PAGE_SCAN);
        out.write_all(&page.piece)?;
        match page.next {
            Some(n) => start = n,
            None => return Ok(()),
        }
    }
}

/// Render every live file of the state (not what is in the trash) in the original format.
#[cfg(test)]
pub fn render(state: &State) -> Vec<u8> {
    let mut out = Vec::new();
    write_all(|| state, &mut out).expect("writing to memory cannot fail");
    out
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("not a saved-files.json array of files: {0}")]
    Json(#[from] serde_json::Error),
    #[error("file #{index}{name} is not in the saved-files.json format: {reason}")]
    File {
        /// 1-based position in the whole import.
        index: u64,
        /// ` (name)` when the entry has one.
        name: String,
        reason: String,
    },
}

#[derive(Deserialize)]
struct OldChunk {
    chunk_id: String,
}

#[derive(Deserialize)]
struct OldFile {
    #[serde(default)]
    created: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    last_edited: String,
    name: String,
    owner: String,
    size: serde_json::Value,
    #[serde(default)]
    sha256: String,
    #[serde(default)]
    chunks: Vec<OldChunk>,
}

/// Parse (part of) an original `saved-files.json`: a JSON array of files, the first of which
/// is file number `first_index` (0-based) of the whole import, for error messages. Names
/// without a leading `/` become `/name`; sizes are parsed from their strings. Chunks keep
/// their ids but no replica: their bytes are not ours. The first entry that is not a file in
/// the original format fails the whole parse, naming it.
pub fn parse_import(
    bytes: &[u8],
    now_ms: i64,
    first_index: u64,
) -> Result<Vec<ImportedFile>, ImportError> {
    let raw: Vec<&serde_json::value::RawValue> = serde_json::from_slice(bytes)?;
    raw.iter()
        .enumerate()
        .map(|(i, r)| {
            let index = first_index + i as u64 + 1;
            let bad = |reason: String| {
                let name = serde_json::from_str::<serde_json::Value>(r.get())
                    .ok()
                    .and_then(|v| v.get("name")?.as_str().map(|n| format!(" ({n})")))
                    .unwrap_or_default();
                ImportError::File {
                    index,
                    name,
                    reason,
                }
            };
            let f: OldFile = serde_json::from_str(r.get()).map_err(|e| bad(e.to_string()))?;
            let size = match &f.size {
                serde_json::Value::String(s) => s.trim().parse().ok(),
                serde_json::Value::Number(n) => n.as_u64(),
                _ => None,
            }
            .ok_or_else(|| bad(format!("size {} is not a number of bytes", f.size)))?;
            Ok(imported(f, size, now_ms))
        })
        .collect()
}

fn imported(f: OldFile, size: u64, now_ms: i64) -> ImportedFile {
    let path = if f.name.starts_with('/') {
        f.name.clone()
    } else {
        format!("/{}", f.name)
    };
    ImportedFile {
        path,
        id: if f.id.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            f.id
        },
        owner: f.owner,
        size,
        sha256: f.sha256,
        created_ms: parse_time(&f.created).unwrap_or(now_ms),
        modified_ms: parse_time(&f.last_edited).unwrap_or(now_ms),
        chunks: f
            .chunks
            .into_iter()
            .map(|c| ChunkRef {
                id: c.chunk_id,
                size: 0,
                crc32c: 0,
                replicas: vec![],
            })
            .collect(),
    }
}

/// Rewrite `<data-dir>/cache-metadata/saved-files.json` whenever the applied index moves:
/// every 0.5 s, or less often for a namespace so large that rendering it takes more than a
/// tenth of that time (the view then lags by about ten renderings, so it never eats more than
/// a tenth of a core).
pub async fn run_writer(state: Arc<RwLock<State>>, raft: crate::types::Raft, data_dir: PathBuf) {
    let path = saved_files_path(&data_dir);
    let mut written: Option<u64> = None;
    let mut pause = EXPORT_INTERVAL;
    loop {
        tokio::time::sleep(pause).await;
        let applied = raft.metrics().borrow().last_applied.map(|l| l.index);
        if applied.is_none() || applied == written {
            continue;
        }
        let (state, p) = (state.clone(), path.clone());
        // Rendering walks the whole namespace: off the async workers.
        let done = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            // Streamed into the file as it is rendered: no copy of the document in memory.
            // The read lock is taken per page, so applies are never held up for a whole
            // rendering; a file changed meanwhile appears as its page found it (as in an
            // export).
            let mut out = std::io::BufWriter::with_capacity(
                1 << 20,
                dfs_common::durable::AtomicFile::create(&p)?,
            );
            write_all(|| state.read().unwrap_or_else(|p| p.into_inner()), &mut out)?;
            let took = started.elapsed();
            out.into_inner().map_err(|e| e.into_error())?.commit()?;
            Ok::<_, std::io::Error>(took)
        })
        .await;
        match done {
            Ok(Ok(took)) => {
                written = applied;
                pause = EXPORT_INTERVAL.max(took * 10);
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, path = %path.display(), "cannot write saved-files.json")
            }
            Err(e) => tracing::warn!(error = %e, "saved-files.json writer task failed"),
        }
    }
}

/// How often saved-files.json is rewritten when the namespace changes.
const EXPORT_INTERVAL: Duration = Duration::from_millis(500);

pub fn saved_files_path(data_dir: &Path) -> PathBuf {
    data_dir.join("cache-metadata").join("saved-files.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN_EXAMPLE: &str = r#"[
    {
        "created": "2026-11-26 20:00:22.183404",
        "id": "fad66034-2b7d-424c-aeff-da206e6d6b6a",
        "last_edited": "2026-11-26 20:00:22.183413",
        "name": "hello.txt",
        "owner": "adrian",
        "permissions": {},
        "size": "132",
        "sha256": "1214b68d350d100ca47d140ead9f854b21f9a12308b2a4159ae5a536fa93b12f",
        "chunks": [
            {"chunk_id": "a2aa722d-5f47-44a4-8c35-717f135792da", "file_name": "hello.txt", "index": 1, "worker_id": "ac408170-a374-4024-8510-cfb2ee8650fd"},
            {"chunk_id": "ac806cb4-87c3-4a4c-a60b-18b3bca83dd9", "file_name": "hello.txt", "index": 2, "worker_id": "ac408170-a374-4024-8510-cfb2ee8650fd"}
        ]
    }
]"#;

    #[test]
    fn imports_the_origin_example() {
        let files = parse_import(ORIGIN_EXAMPLE.as_bytes(), 0, 0).unwrap();
        assert_eq!(files.len(), 1);
        let f = &files[0];
        assert_eq!(f.path, "/hello.txt");
        assert_eq!(f.size, 132);
        assert_eq!(f.owner, "adrian");
        assert_eq!(f.chunks.len(), 2);
        assert!(f.chunks.iter().all(|c| c.replicas.is_empty()));
        // Times are kept to the millisecond.
        assert_eq!(fmt_time(f.created_ms), "2026-11-26 20:00:22.183000");
    }

    #[test]
    fn renders_original_keys_in_order() {
        use crate::state::{FileData, Inode};
        let mut s = State::default();
        s.nodes.insert(
            "/a.txt".into(),
            Inode {
                id: "i".into(),
                owner: "o".into(),
                created_ms: 1000,
                modified_ms: 2000,
                file: Some(FileData {
                    size: 5,
                    replication: 2,
                    sha256: "h".into(),
                    chunk_size: 8,
                    chunks: vec![ChunkRef {
                        id: "c".into(),
                        size: 5,
                        crc32c: 7,
                        replicas: vec![3, 4],
                    }],
                }),
                ..Default::default()
            },
        );
        s.nodes.insert(
            "/dir".into(),
            Inode {
                id: "d".into(),
                owner: "o".into(),
                created_ms: 0,
                modified_ms: 0,
                file: None,
                ..Default::default()
            },
        );
        let text = String::from_utf8(render(&s)).unwrap();
        let keys = [
            "\"created\"",
            "\"id\"",
            "\"last_edited\"",
            "\"name\"",
            "\"owner\"",
            "\"permissions\"",
            "\"size\"",
            "\"sha256\"",
            "\"chunks\"",
        ];
        let pos: Vec<usize> = keys.iter().map(|k| text.find(k).unwrap()).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "original key order");
        assert!(
            text.contains("\n    {\n        \"created\""),
            "4-space indent"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 1, "directories are not files");
        assert_eq!(v[0]["size"], "5");
        assert_eq!(v[0]["chunks"][0]["worker_id"], "3");
        assert_eq!(v[0]["chunks"][0]["index"], 1);
    }

    fn state_with(n: usize) -> State {
        use crate::state::{FileData, Inode};
        let mut s = State::default();
        for i in 0..n {
            let file = (i % 3 != 0).then(|| FileData {
                size: i as u64,
                replication: 2,
                sha256: format!("h{i}"),
                chunk_size: 8,
                chunks: vec![ChunkRef {
                    id: format!("c{i}"),
                    size: i as u64,
                    crc32c: 7,
                    replicas: vec![3, 4],
                }],
            });
            let inode = Inode {
                id: format!("i{i}"),
                owner: "o".into(),
                created_ms: 1000 + i as i64,
                modified_ms: 2000,
                file,
                ..Default::default()
            };
            s.nodes.insert(format!("/d{}/f{i:04}", i % 7), inode);
        }
        // What is in the trash is not exported.
        let trashed = Inode {
            id: "t".into(),
            file: Some(FileData {
                size: 0,
                replication: 1,
                sha256: String::new(),
                chunk_size: 8,
                chunks: vec![],
            }),
            ..Default::default()
        };
        s.nodes.insert("/.trash/o/x".into(), trashed);
        s
    }

    /// The document as serde_json's pretty printer makes it of the whole list at once.
    fn reference(s: &State) -> Vec<u8> {
        let files: Vec<SavedFile> = s
            .nodes
            .iter()
            .filter(|(p, _)| !dfs_common::path::in_trash(p))
            .filter_map(|(p, n)| n.file.as_ref().map(|f| saved_file(p, n, f)))
            .collect();
        let mut out = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        files
            .serialize(&mut serde_json::Serializer::with_formatter(&mut out, fmt))
            .unwrap();
        out
    }

    #[test]
    fn pages_of_any_size_concatenate_to_the_whole_document() {
        for n in [0, 1, 2, 3, 50] {
            let s = state_with(n);
            let want = reference(&s);
            assert_eq!(render(&s), want, "{n} entries in one pass");
            for (max_bytes, max_scan) in [(1, usize::MAX), (700, 3), (usize::MAX, 1), (1, 1)] {
                let (mut got, mut start, mut pages) = (Vec::new(), PageStart::default(), 0);
                loop {
                    let page = render_page(&s, &start, max_bytes, max_scan);
                    got.extend_from_slice(&page.piece);
                    pages += 1;
                    assert!(pages <= n + 2, "paging moves on");
                    match page.next {
                        Some(next) => start = next,
                        None => break,
                    }
                }
                assert_eq!(
                    String::from_utf8(got).unwrap(),
                    String::from_utf8(want.clone()).unwrap(),
                    "{n} entries, pages of {max_bytes} bytes / {max_scan} entries"
                );
            }
        }
        assert_eq!(render(&State::default()), b"[]");
    }

    #[test]
    fn an_import_names_the_entry_that_is_not_a_file() {
        let bad = r#"[{"name": "a", "owner": "o", "size": "1"}, {"name": "b", "size": "2"}]"#;
        let e = parse_import(bad.as_bytes(), 0, 10).unwrap_err().to_string();
        assert!(e.contains("file #12 (b)") && e.contains("owner"), "{e}");
        let bad = r#"[{"name": "a", "owner": "o", "size": {"n": 1}}]"#;
        let e = parse_import(bad.as_bytes(), 0, 0).unwrap_err().to_string();
        assert!(e.contains("file #1 (a)") && e.contains("size"), "{e}");
        let e = parse_import(b"[1]", 0, 0).unwrap_err().to_string();
        assert!(e.contains("file #1 is not"), "{e}");
        let e = parse_import(b"{}", 0, 0).unwrap_err().to_string();
        assert!(e.contains("not a saved-files.json array"), "{e}");
    }
}
