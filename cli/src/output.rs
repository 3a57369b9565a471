//! How results and errors are printed: text for people, `--json` for scripts, one error line.
use dfs_proto::FileInfo;
use serde_json::json;

/// One line saying what failed: the server's sentence for gRPC errors, the chain otherwise.
pub fn error_line(e: &anyhow::Error) -> String {
    if let Some(s) = e.downcast_ref::<tonic::Status>() {
        return status_line(s);
    }
    // `{:#}` prints every cause after its context; a cause whose text the message already
    // carries (a thiserror variant showing its `source`) would be said twice.
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !line.contains(&c) {
            line.push_str(": ");
            line.push_str(&c);
        }
    }
    line
}

/// Print a failed command's error on stderr: `dfsctl: LINE`, or under --json one object
/// `{"error": LINE, "code": 1}` (a script parses stderr too).
pub fn print_error(json: bool, e: &anyhow::Error) {
    let line = error_line(e);
    if json {
        eprintln!("{}", serde_json::json!({"error": line, "code": 1}));
    } else {
        eprintln!("dfsctl: {line}");
    }
}

pub fn status_line(s: &tonic::Status) -> String {
    let msg = s.message();
    match s.code() {
        // The server cannot know where the client looked: name the default path, since a
        // request goes out without credentials only when no auth file was given and the
        // default one does not exist.
        tonic::Code::Unauthenticated if msg.starts_with("no credentials") => format!(
            "{msg}; none was given and the default {} does not exist",
            dfs_client::default_auth_file().display()
        ),
        tonic::Code::Unauthenticated => {
            format!("{msg} (check the auth file: --auth-file or DFS_AUTH_FILE)")
        }
        _ if msg.is_empty() => format!("{:?}", s.code()),
        _ => msg.to_string(),
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A duration in milliseconds the way people say it (`24h`, `90m`, `1500ms`).
pub fn human_duration(ms: u64) -> String {
    match ms {
        ms if ms % 86_400_000 == 0 => format!("{}d", ms / 86_400_000),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// A time stamp in local time; "-" when the server has none (0: e.g. the root directory,
/// which no command created), never 1970.
pub fn time_ms(ms: i64) -> String {
    use chrono::TimeZone;
    if ms <= 0 {
        return "-".into();
    }
    match chrono::Local.timestamp_millis_opt(ms).single() {
        Some(t) => t.format("%Y-%m-%d %H:%M").to_string(),
        None => "-".into(),
    }
}

/// Whether every chunk has as many replicas as the file asks for.
pub fn fully_replicated(f: &FileInfo) -> bool {
    f.chunks
        .iter()
        .all(|c| c.replicas.len() as u32 >= f.replication)
}

/// The JSON shape of a file or directory (documented in README.md).
pub fn file_json(f: &FileInfo, with_chunks: bool) -> serde_json::Value {
    let mut v = json!({
        "path": f.path,
        "type": match (f.is_dir, f.is_symlink) {
            (true, _) => "dir",
            (_, true) => "symlink",
            _ => "file",
        },
        "owner": f.owner,
        "size": f.size,
        "replication": f.replication,
        "created_ms": f.created_ms,
        "modified_ms": f.modified_ms,
        "id": f.id,
        "ino": f.ino,
        "mode": format!("{:o}", f.mode),
        "ctime_ms": f.ctime_ms,
    });
    if f.is_symlink {
        v["target"] = json!(f.symlink_target);
    }
    if !f.is_dir {
        v["sha256"] = json!(f.sha256);
        v["chunk_size"] = json!(f.chunk_size);
    }
    if with_chunks && !f.is_dir {
        v["fully_replicated"] = json!(fully_replicated(f));
        v["chunks"] = f
            .chunks
            .iter()
            .map(|c| json!({"id": c.chunk_id, "size": c.size, "crc32c": c.crc32c, "replicas": c.replicas, "addrs": c.replica_addrs}))
            .collect();
    }
    v
}

pub fn print_json(v: &serde_json::Value) {
    println!("{v}");
}

#[cfg(test)]
mod error_line_tests {
    use super::*;

    /// Issue 26: "cannot read auth file X: No such file or directory (os error 2): No such file
    /// or directory (os error 2)": each cause is said once, and causes not yet said still are.
    #[test]
    fn a_cause_is_said_once() {
        let e: anyhow::Error = dfs_common::auth_file::AuthFileError::Read {
            path: "/x".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        }
        .into();
        let line = error_line(&e);
        assert_eq!(line.matches("not found").count(), 1, "{line}");
        let e = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::NotFound))
            .context("cannot open y");
        assert_eq!(error_line(&e), "cannot open y: entity not found");
    }

    /// Issue 26: `stat /` showed a creation time of 1970 (the root has none recorded).
    #[test]
    fn no_time_is_a_dash_not_1970() {
        assert_eq!(time_ms(0), "-");
        assert!(time_ms(1_700_000_000_000).starts_with("2023-"));
    }

    /// Issue 26: "no credentials" named no path; it names the default auth file it looked at.
    #[test]
    fn no_credentials_names_the_default_path() {
        let s = tonic::Status::unauthenticated("no credentials: pass an auth file");
        let line = status_line(&s);
        let default = dfs_client::default_auth_file().display().to_string();
        assert!(line.contains(&default), "{line}");
    }
}
