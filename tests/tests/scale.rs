//! A namespace larger than any one message: an original `saved-files.json` of 300,000 files
//! imported in slices and exported in pages, `ls -R` of half a million entries walked in
//! pages, and import files that are not the original format refused before anything changes.
//!
//! Sizes: `DFS_SCALE_FILES` (default 300,000 files) and `DFS_SCALE_ENTRIES` (default 500,000
//! entries) scale the first test up for a benchmark-sized run.
use dfs_tests::*;
use serde::Deserialize;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

fn env_size(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Files per directory in the generated namespace.
const PER_DIR: usize = 500;

/// The path of generated file `i` (no leading slash, as the original system wrote names).
fn name(i: usize) -> String {
    format!("d{:05}/f{:04}.txt", i / PER_DIR, i % PER_DIR)
}

/// A time as the original wrote it, with microseconds.
fn time(i: usize, micros: usize) -> String {
    format!(
        "2026-11-{:02} {:02}:{:02}:{:02}.{:06}",
        1 + i % 28,
        i % 24,
        i % 60,
        (i / 60) % 60,
        (i * 7919 + micros) % 1_000_000
    )
}

/// Write an original-format saved-files.json of `n` files (one or two chunks each), streamed.
fn write_original(path: &Path, n: usize) {
    let mut w = BufWriter::new(std::fs::File::create(path).unwrap());
    w.write_all(b"[\n").unwrap();
    for i in 0..n {
        let chunk = |k: usize| {
            format!(
                r#"{{"chunk_id": "c{i:08}-{k}", "file_name": "{}", "index": {k}, "worker_id": "w{}"}}"#,
                name(i),
                i % 3
            )
        };
        let chunks = if i % 2 == 0 {
            chunk(1)
        } else {
            format!("{},\n            {}", chunk(1), chunk(2))
        };
        write!(
            w,
            r#"{}    {{
        "created": "{}",
        "id": "id-{i:08}",
        "last_edited": "{}",
        "name": "{}",
        "owner": "{}",
        "permissions": {{}},
        "size": "{}",
        "sha256": "{:064x}",
        "chunks": [
            {chunks}
        ]
    }}"#,
            if i == 0 { "" } else { ",\n" },
            time(i, 11),
            time(i, 37),
            name(i),
            ["adrian", "bea"][i % 2],
            i * 13 % 100_000,
            i * 2_654_435_761,
        )
        .unwrap();
    }
    w.write_all(b"\n]\n").unwrap();
    w.into_inner().unwrap().sync_all().unwrap();
}

/// The original keys of one file. The normalizing parse: names get their leading `/`, times
/// are compared to the millisecond (dfs keeps milliseconds), and a chunk's `worker_id` is left
/// out (the old system's workers are not members of this cluster, so an imported chunk has no
/// replica to name).
#[derive(Deserialize, Debug, PartialEq)]
struct File {
    created: String,
    id: String,
    last_edited: String,
    name: String,
    owner: String,
    permissions: serde_json::Map<String, serde_json::Value>,
    size: String,
    sha256: String,
    chunks: Vec<Chunk>,
}

#[derive(Deserialize, Debug, PartialEq)]
struct Chunk {
    chunk_id: String,
    file_name: String,
    index: u64,
}

impl File {
    fn normalized(mut self) -> File {
        let slash = |n: &mut String| {
            if !n.starts_with('/') {
                n.insert(0, '/');
            }
        };
        slash(&mut self.name);
        for c in &mut self.chunks {
            slash(&mut c.file_name);
        }
        for t in [&mut self.created, &mut self.last_edited] {
            t.truncate("2026-11-01 00:00:00.000".len());
        }
        self
    }
}

fn parse(path: &Path) -> Vec<File> {
    let f = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let files: Vec<File> = serde_json::from_reader(f).unwrap();
    files.into_iter().map(File::normalized).collect()
}

#[test]
fn an_original_saved_files_json_round_trips_and_a_big_tree_is_listed_in_pages() {
    let files = env_size("DFS_SCALE_FILES", 300_000);
    let entries = env_size("DFS_SCALE_ENTRIES", 500_000);
    let c = Cluster::up(1, 0, &[]);
    let original = c.path().join("original.json");
    write_original(&original, files);
    let mb = std::fs::metadata(&original).unwrap().len() as f64 / 1e6;

    let t = Instant::now();
    let v = c
        .ctl(&["--json", "admin", "import", original.to_str().unwrap()])
        .json();
    eprintln!("import of {files} files ({mb:.0} MB): {:?}", t.elapsed());
    assert_eq!(
        v["imported"], files as u64,
        "{} {}",
        v["imported"], v["report_left_off"]
    );
    assert_eq!(v["files"], files as u64);
    let kept = v["report"].as_array().unwrap().len() as u64;
    // A line per file (and a note per request), of which --json keeps the first.
    assert!(kept + v["report_left_off"].as_u64().unwrap() > files as u64);
    assert!(kept <= 1000);

    let exported = c.path().join("exported.json");
    let t = Instant::now();
    let out = c
        .ctl(&[
            "--json",
            "admin",
            "export",
            "--out",
            exported.to_str().unwrap(),
        ])
        .json();
    eprintln!("export: {:?}", t.elapsed());
    assert_eq!(out["bytes"], std::fs::metadata(&exported).unwrap().len());
    // Every file comes back with the original's keys and values, in path order.
    let mut want = parse(&original);
    want.sort_by(|a, b| a.name.cmp(&b.name));
    let got = parse(&exported);
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w);
    }
    drop((got, want));
    // The node's own saved-files.json is the same document, byte for byte.
    let saved = c.path().join("meta-1/cache-metadata/saved-files.json");
    let exported_bytes = std::fs::read(&exported).unwrap();
    wait_until(Duration::from_secs(120), "saved-files.json written", || {
        std::fs::read(&saved).ok().as_ref() == Some(&exported_bytes)
    });
    drop(exported_bytes);

    // Grow the tree to `entries` entries with a second import, then walk it in pages.
    let dirs = files.div_ceil(PER_DIR);
    let more = entries.saturating_sub(files + dirs + 1);
    let second = c.path().join("more.json");
    {
        let mut w = BufWriter::new(std::fs::File::create(&second).unwrap());
        w.write_all(b"[").unwrap();
        for i in 0..more {
            write!(
                w,
                r#"{}{{"created": "", "id": "", "last_edited": "", "name": "more/e{:03}/g{i:07}", "owner": "adrian", "permissions": {{}}, "size": "0", "sha256": "", "chunks": []}}"#,
                if i == 0 { "" } else { "," },
                i / 5000
            )
            .unwrap();
        }
        w.write_all(b"]").unwrap();
    }
    c.ctl(&["--json", "admin", "import", second.to_str().unwrap()])
        .json();
    let t = Instant::now();
    let listing = c.ctl(&["ls", "-R", "/"]).ok();
    eprintln!("ls -R /: {:?}", t.elapsed());
    let lines: Vec<&str> = listing.lines().collect();
    let more_dirs = more.div_ceil(5000) + usize::from(more > 0);
    assert_eq!(lines.len(), files + dirs + more + more_dirs);
    assert!(lines.len() >= entries.min(files + dirs + more + more_dirs));
    assert!(
        lines.windows(2).all(|w| w[0] < w[1]),
        "in path order, no repeats"
    );
    assert!(lines.contains(&"/d00000/f0000.txt"));
    assert!(lines.contains(&format!("/d{:05}/", dirs - 1).as_str()));
}

#[test]
fn an_import_file_that_is_not_the_original_format_changes_nothing() {
    let c = Cluster::up(1, 0, &[]);
    let file = c.path().join("bad.json");
    let import = |body: &[u8]| {
        std::fs::write(&file, body).unwrap();
        c.ctl(&["admin", "import", file.to_str().unwrap()])
    };
    let err = import(b"hello").fails_with("nothing was imported");
    assert!(err.contains("not a saved-files.json array"), "{err}");
    import(br#"{"name": "a"}"#).fails_with("nothing was imported");
    // A bad file far into the import (past the first slice) is found before any is imported.
    let good = c.path().join("good.json");
    write_original(&good, 8000);
    let text = std::fs::read_to_string(&good).unwrap();
    let broken = text.replace(
        "\"name\": \"d00015/f0498.txt\",\n        \"owner\": \"adrian\",",
        "\"name\": \"d00015/f0498.txt\",",
    );
    assert_ne!(broken, text);
    let err = import(broken.as_bytes()).fails_with("nothing was imported");
    assert!(
        err.contains("file #7999 (d00015/f0498.txt)") && err.contains("owner"),
        "{err}"
    );
    // Cut short in the middle of a file.
    import(&text.as_bytes()[..text.len() * 3 / 4]).fails_with("nothing was imported");
    assert_eq!(c.ctl(&["ls", "-R", "/"]).ok(), "");
    // The whole file goes in; a second import of it skips every file and adds nothing.
    let v = c
        .ctl(&["--json", "admin", "import", good.to_str().unwrap()])
        .json();
    assert_eq!(v["imported"], 8000);
    let v = c
        .ctl(&["--json", "admin", "import", good.to_str().unwrap()])
        .json();
    assert_eq!(v["imported"], 0);
    assert!(v["report"][0].as_str().unwrap().contains("already exists"));
}
