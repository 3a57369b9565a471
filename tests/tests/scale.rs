//! A namespace larger than any one message: an original `saved-files.json` of 300,000 files
//! imported in slices and exported in pages, fsck of all of them with a bounded list of
//! problems, `ls -R` of half a million entries walked in
//! pages, import files that are not the original format refused before anything changes, and
//! a directory of 100,000 files renamed while another client stats below it.
//!
//! Sizes: `DFS_SCALE_FILES` (default 300,000 files), `DFS_SCALE_ENTRIES` (default 500,000
//! entries), `DFS_SCALE_RENAME_FILES` (100,000) and `DFS_SCALE_RENAME_MEMBERS` (3) scale them
//! for a benchmark-sized run.
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

/// Write an import file of `n` empty files named `name(i)` (no chunks, times "now").
fn write_empty_files(path: &Path, owner: &str, n: usize, name: impl Fn(usize) -> String) {
    let mut w = BufWriter::new(std::fs::File::create(path).unwrap());
    w.write_all(b"[").unwrap();
    for i in 0..n {
        write!(
            w,
            r#"{}{{"created": "", "id": "", "last_edited": "", "name": "{}", "owner": "{owner}", "permissions": {{}}, "size": "0", "sha256": "", "chunks": []}}"#,
            if i == 0 { "" } else { "," },
            name(i)
        )
        .unwrap();
    }
    w.write_all(b"]").unwrap();
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

    // fsck walks the whole tree in pages; every imported chunk names a worker of the old
    // system, so every file is missing its data: the reply lists the first 1,000 of them and
    // counts the rest.
    let t = Instant::now();
    let r = c.ctl(&["--json", "--timeout", "60", "admin", "fsck", "/"]);
    eprintln!("fsck of {files} files: {:?}", t.elapsed());
    assert_eq!(r.code, 1, "missing data is corruption: {}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["files"], files as u64);
    assert_eq!(v["missing_chunks"], (files + files / 2) as u64);
    let problems = v["problems"].as_array().unwrap();
    assert_eq!(problems.len(), files.min(1000));
    assert_eq!(v["problems_left_off"], files.saturating_sub(1000) as u64);
    assert_eq!(problems[0]["path"], "/d00000/f0000.txt");
    assert!(problems.iter().all(|p| p["status"] == "missing"));

    // Grow the tree to `entries` entries with a second import, then walk it in pages.
    let dirs = files.div_ceil(PER_DIR);
    let more = entries.saturating_sub(files + dirs + 1);
    let second = c.path().join("more.json");
    write_empty_files(&second, "adrian", more, |i| {
        format!("more/e{:03}/g{i:07}", i / 5000)
    });
    c.ctl(&["--json", "admin", "import", second.to_str().unwrap()])
        .json();
    let t = Instant::now();
    let listing = c.ctl(&["ls", "-R", "/"]).ok();
    eprintln!("ls -R /: {:?}", t.elapsed());
    let lines: Vec<&str> = listing.lines().collect();
    let more_dirs = more.div_ceil(5000) + usize::from(more > 0);
    assert_eq!(lines.len(), files + dirs + more + more_dirs);
    assert!(lines.len() >= entries, "{} entries listed", lines.len());
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

#[test]
fn a_directory_of_100000_files_renamed_while_another_client_stats_below_it() {
    let files = env_size("DFS_SCALE_RENAME_FILES", 100_000);
    // Three members: the import's large entries reach the followers in byte-bounded batches
    // (without that they fell into elections here), and the rename, which still rewrites every
    // path below the directory in one apply (O(n) until entries are keyed by parent inode),
    // runs on every member at once.
    let members = env_size("DFS_SCALE_RENAME_MEMBERS", 3) as u32;
    let c = Cluster::up(members, 0, &[]);
    let list = c.path().join("big.json");
    write_empty_files(&list, "admin", files, |i| {
        format!("big/s{:02}/f{i:06}", i % 50)
    });
    let v = c
        .ctl(&["--json", "admin", "import", list.to_str().unwrap()])
        .json();
    assert_eq!(v["imported"], files as u64);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_rt = rt.enter();
    // Patient clients: the rename, and stats waiting behind it, take as long as the
    // directory is big (`DFS_SCALE_RENAME_FILES`).
    let mut opts = c.client_options(&c.meta);
    opts.timeout = Duration::from_secs(600);
    let renamer = dfs_client::Client::connect(&opts).unwrap();
    let reader = dfs_client::Client::connect(&opts).unwrap();
    let old_seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let renamed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stats = {
        let (old_seen, renamed) = (old_seen.clone(), renamed.clone());
        rt.spawn(async move {
            use std::sync::atomic::Ordering::SeqCst;
            let (mut old, mut new, mut i) = (0u64, 0u64, 0usize);
            // Until the rename is done and seen 20 times after it.
            while !(renamed.load(SeqCst) && new >= 20) {
                i = (i + 7919) % files;
                let rel = format!("s{:02}/f{i:06}", i % 50);
                match reader.stat(&format!("/big/{rel}")).await {
                    Ok(f) => {
                        assert!(new == 0, "/big/{rel} seen again after /moved was");
                        assert_eq!(f.size, 0);
                        old += 1;
                        old_seen.store(old, SeqCst);
                    }
                    Err(dfs_client::Error::NotFound(_)) => {
                        // Gone from the old path: it is at the new one (a rename is one step).
                        let f = reader.stat(&format!("/moved/{rel}")).await;
                        assert!(f.is_ok(), "{rel} at neither path: {f:?}");
                        new += 1;
                    }
                    Err(e) => panic!("stat /big/{rel}: {e}"),
                }
            }
            (old, new)
        })
    };
    wait_until(Duration::from_secs(60), "stats under way", || {
        old_seen.load(std::sync::atomic::Ordering::SeqCst) >= 20
    });
    let t = Instant::now();
    let r = rt.block_on(renamer.rename("/big", "/moved"));
    if r.is_err() {
        for m in 1..=members {
            let _ = std::fs::copy(
                c.path().join(format!("meta-{m}/log")),
                format!("/tmp/rename-meta-{m}.log"),
            );
        }
    }
    r.unwrap();
    eprintln!(
        "rename of a directory holding {files} files: {:?}",
        t.elapsed()
    );
    renamed.store(true, std::sync::atomic::Ordering::SeqCst);
    let (old, new) = rt.block_on(stats).unwrap();
    eprintln!("stats: {old} at the old path, {new} at the new");
    let moved = rt.block_on(renamer.stat("/moved/s07/f000007")).unwrap();
    assert_eq!(moved.size, 0);
    assert!(rt.block_on(renamer.stat("/big")).is_err());
}
