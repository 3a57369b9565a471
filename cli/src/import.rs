//! `admin import` and `admin export` of an original saved-files.json of any size.
//!
//! What must stay true: neither the file nor the namespace is ever held whole. An import is read
//! twice: first every slice is sent with `dry_run` (the server parses and checks it, commits
//! nothing), so a file that is not JSON, not the original format or cut short is refused before
//! anything is imported; then the same slices are committed, each atomically through Raft. A
//! failure in the second pass says exactly which files were imported (a re-run skips them). An
//! export is written page by page into a temp file that replaces `--out` only when complete.
use crate::output::print_json;
use crate::rpc;
use dfs_client::MetaConn;
use dfs_proto::{ExportRequest, ImportReply, ImportRequest};
use serde::de::{Deserializer as _, Error as _, SeqAccess, Visitor};
use serde_json::json;
use serde_json::value::RawValue;
use std::io::{BufReader, Read, Write};
use std::path::Path;

/// Bytes of JSON per import request (one file larger than this goes alone).
pub const SLICE_BYTES: usize = 1 << 20;

/// Report lines `--json` keeps (the text output streams every line).
pub const REPORT_KEEP: usize = 1000;

/// A valid JSON array holding consecutive files of the import.
#[derive(Debug)]
pub struct Slice {
    pub json: Vec<u8>,
    /// Position of its first file in the whole import (0-based).
    pub first_index: u64,
    pub files: u64,
}

/// Split a JSON array read from `reader` into slices of about `max_bytes`, handed to `emit` in
/// order. Each element is passed on byte for byte, unparsed; the whole input must be one
/// well-formed array. Returns the number of elements; an `emit` that returns false ends the
/// split with an error.
pub fn split(
    reader: impl Read,
    max_bytes: usize,
    mut emit: impl FnMut(Slice) -> bool,
) -> Result<u64, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_reader(reader);
    let splitter = Splitter {
        max_bytes,
        emit: &mut emit,
    };
    let n = de.deserialize_seq(splitter)?;
    de.end()?;
    Ok(n)
}

const STOPPED: &str = "import stopped";

struct Splitter<'e, F> {
    max_bytes: usize,
    emit: &'e mut F,
}

impl<'de, F: FnMut(Slice) -> bool> Visitor<'de> for Splitter<'_, F> {
    type Value = u64;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON array of files")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let (mut json, mut files, mut total) = (vec![b'['], 0u64, 0u64);
        let mut flush = |json: &mut Vec<u8>, files: &mut u64, total: u64| {
            json.push(b']');
            let slice = Slice {
                json: std::mem::replace(json, vec![b'[']),
                first_index: total - *files,
                files: std::mem::take(files),
            };
            (self.emit)(slice)
        };
        while let Some(raw) = seq.next_element::<Box<RawValue>>()? {
            let text = raw.get().as_bytes();
            if files > 0
                && json.len() + text.len() + 2 > self.max_bytes
                && !flush(&mut json, &mut files, total)
            {
                return Err(A::Error::custom(STOPPED));
            }
            if files > 0 {
                json.push(b',');
            }
            json.extend_from_slice(text);
            files += 1;
            total += 1;
        }
        if files > 0 && !flush(&mut json, &mut files, total) {
            return Err(A::Error::custom(STOPPED));
        }
        Ok(total)
    }
}

/// Send every slice of `file` as an import request; `on_reply` sees each answer with the
/// number of files sent so far. Returns the number of files the file holds.
async fn send_slices(
    c: &MetaConn,
    file: &Path,
    dry_run: bool,
    mut on_reply: impl FnMut(u64, ImportReply),
) -> anyhow::Result<u64> {
    let f = std::fs::File::open(file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    // The parse is blocking: it runs on its own thread, a slice or two ahead of the sends.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Slice>(2);
    let splitter = tokio::task::spawn_blocking(move || {
        split(BufReader::with_capacity(1 << 20, f), SLICE_BYTES, |s| {
            tx.blocking_send(s).is_ok()
        })
    });
    while let Some(slice) = rx.recv().await {
        let sent = slice.first_index + slice.files;
        let req = ImportRequest {
            saved_files_json: slice.json,
            dry_run,
            first_index: slice.first_index,
            request_id: uuid::Uuid::new_v4().to_string(),
        };
        // On an error the splitter is left to stop (its send fails once `rx` is dropped).
        on_reply(sent, rpc!(c, import, req)?);
    }
    splitter.await?.map_err(|e| {
        anyhow::anyhow!(
            "{}: not a saved-files.json array of files: {e}",
            file.display()
        )
    })
}

pub async fn import(c: &MetaConn, file: &Path, json_out: bool) -> anyhow::Result<i32> {
    // First pass: everything is checked; nothing is committed.
    let files = send_slices(c, file, true, |_, _| {})
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}; nothing was imported"))?;
    // Second pass: committed slice by slice.
    let (mut imported, mut done, mut report, mut left_off) = (0u64, 0u64, Vec::new(), 0u64);
    let committed = send_slices(c, file, false, |sent, r| {
        imported += r.imported;
        done = sent;
        if !json_out {
            for line in &r.report {
                println!("{line}");
            }
        }
        // --json keeps the first lines only: a report line per file would grow with the file.
        let room = REPORT_KEEP.saturating_sub(report.len());
        left_off += r.report.len().saturating_sub(room) as u64;
        report.extend(r.report.into_iter().take(room));
    })
    .await;
    if let Err(e) = committed {
        anyhow::bail!(
            "{e:#}; files 1 to {done} of {files} were imported before that ({imported} new); \
             running the same import again skips the files already there"
        );
    }
    if json_out {
        print_json(&json!({
            "imported": imported,
            "files": files,
            "report": report,
            "report_left_off": left_off,
        }));
    } else {
        println!("{imported} file(s) imported");
    }
    Ok(0)
}

/// Fetch every page of the export and hand each piece to `sink`; returns the bytes written.
pub(crate) async fn export_pages(c: &MetaConn, sink: &mut impl Write) -> anyhow::Result<u64> {
    let (mut after, mut bytes) = (String::new(), 0u64);
    loop {
        let r = rpc!(c, export, ExportRequest { after })?;
        sink.write_all(&r.saved_files_json)?;
        bytes += r.saved_files_json.len() as u64;
        if r.next.is_empty() {
            return Ok(bytes);
        }
        after = r.next;
    }
}

pub async fn export(c: &MetaConn, out: Option<&Path>, json_out: bool) -> anyhow::Result<i32> {
    match out {
        Some(p) => {
            let mut w = std::io::BufWriter::with_capacity(
                1 << 20,
                dfs_common::durable::AtomicFile::create(p)
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", p.display()))?,
            );
            let bytes = export_pages(c, &mut w).await?;
            w.into_inner()
                .map_err(|e| e.into_error())?
                .commit()
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", p.display()))?;
            if json_out {
                print_json(&json!({"ok": true, "out": p.to_string_lossy(), "bytes": bytes}));
            }
        }
        None => {
            let mut o = std::io::BufWriter::new(std::io::stdout().lock());
            export_pages(c, &mut o).await?;
            o.write_all(b"\n")?;
            o.flush()?;
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slices(input: &str, max: usize) -> Result<Vec<Slice>, serde_json::Error> {
        let mut out = Vec::new();
        split(input.as_bytes(), max, |s| {
            out.push(s);
            true
        })?;
        Ok(out)
    }

    #[test]
    fn slices_are_valid_arrays_that_keep_every_element_byte_for_byte() {
        let input = r#"[ {"name": "a", "x": [1, 2]}, {"name":"b"},
            {"name": "c\u00e9", "y": {"z": null}} ]"#;
        let got = slices(input, 30).unwrap();
        assert!(got.len() >= 2, "{got:?}");
        let mut all = Vec::new();
        for s in &got {
            let v: Vec<serde_json::Value> = serde_json::from_slice(&s.json).unwrap();
            assert_eq!(v.len() as u64, s.files);
            assert_eq!(s.first_index, all.len() as u64);
            all.extend(v);
        }
        let whole: Vec<serde_json::Value> = serde_json::from_str(input).unwrap();
        assert_eq!(all, whole);
        assert!(String::from_utf8(got[0].json.clone())
            .unwrap()
            .contains(r#"{"name": "a", "x": [1, 2]}"#));
    }

    #[test]
    fn an_empty_array_is_no_slice() {
        assert!(slices("[]", 10).unwrap().is_empty());
        assert!(slices(" [ ] \n", 10).unwrap().is_empty());
    }

    #[test]
    fn bad_input_is_refused_with_where() {
        for (input, want) in [
            ("", "EOF"),
            ("hello", "expected value"),
            (r#"{"name": "a"}"#, "expected a JSON array of files"),
            (r#"[{"name": "a"}, {"name": "b""#, "EOF while parsing"),
            (r#"[{"name": "a"}] trailing"#, "trailing characters"),
        ] {
            let e = slices(input, 1 << 20).unwrap_err().to_string();
            assert!(e.contains(want), "{input:?}: {e}");
            assert!(e.contains("line"), "{input:?} says where: {e}");
        }
    }

    #[test]
    fn a_receiver_that_stops_stops_the_split() {
        let input = r#"[{"a":1},{"a":2},{"a":3}]"#;
        let mut n = 0;
        let r = split(input.as_bytes(), 1, |_| {
            n += 1;
            false
        });
        assert!(r.is_err(), "{r:?}");
        assert_eq!(n, 1);
    }
}
