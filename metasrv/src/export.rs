//! `saved-files.json`: the original system's metadata format, kept as an exported view.
//!
//! Keys, types and order follow shared/origin.md exactly (size is a string, times are local
//! `YYYY-MM-DD HH:MM:SS.ffffff`, pretty-printed with 4 spaces); extra keys come after the
//! original ones. `worker_id` is the first replica's public node id; no secret is ever written.
//! Every node writes it from its own applied state, atomically, about 0.5 s behind (see
//! `run_writer` for large namespaces).
use crate::state::command::ImportedFile;
use crate::state::{ChunkRef, State};
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

/// Render every live file of the state (not what is in the trash) in the original format.
pub fn render(state: &State) -> Vec<u8> {
    let files: Vec<SavedFile> = state
        .nodes
        .iter()
        .filter(|(path, _)| !crate::state::trash::in_trash(path))
        .filter_map(|(path, n)| n.file.as_ref().map(|f| (path, n, f)))
        .map(|(path, n, f)| SavedFile {
            created: fmt_time(n.created_ms),
            id: n.id.clone(),
            last_edited: fmt_time(n.modified_ms),
            name: path.clone(),
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
                    file_name: path.clone(),
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
        })
        .collect();
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    files
        .serialize(&mut ser)
        .expect("in-memory JSON cannot fail");
    out
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("not a saved-files.json array of files: {0}")]
    Json(#[from] serde_json::Error),
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

/// Parse an original `saved-files.json`. Names without a leading `/` become `/name`; sizes are
/// parsed from their strings. Chunks keep their ids but no replica: their bytes are not ours.
pub fn parse_import(bytes: &[u8], now_ms: i64) -> Result<Vec<ImportedFile>, ImportError> {
    let old: Vec<OldFile> = serde_json::from_slice(bytes)?;
    Ok(old
        .into_iter()
        .map(|f| {
            let size = match &f.size {
                serde_json::Value::String(s) => s.trim().parse().unwrap_or(0),
                serde_json::Value::Number(n) => n.as_u64().unwrap_or(0),
                _ => 0,
            };
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
        })
        .collect())
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
            let bytes = render(&state.read().unwrap_or_else(|p| p.into_inner()));
            let took = started.elapsed();
            dfs_common::durable::write_atomic(&p, &bytes).map(|()| took)
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
        let files = parse_import(ORIGIN_EXAMPLE.as_bytes(), 0).unwrap();
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
}
