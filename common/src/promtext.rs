//! Prometheus text exposition (format 0.0.4) helpers shared by metasrv and chunksrv, and what
//! every dfs process reports about itself: CPU, memory, file descriptors, threads (from
//! `/proc/self`), and the filesystem holding its data.
//!
//! What must stay true:
//! - Every family is written with `# HELP` and `# TYPE` exactly once, before its samples.
//! - Label values are escaped (`\\`, `\"`, `\n`), so an address or path never breaks a line.
//! - Reading `/proc` never fails the scrape: a value that cannot be read is left out.
use std::fmt::{Display, Write};
use std::path::Path;

/// Write the `# HELP` and `# TYPE` lines of one family.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A gauge family with one unlabeled sample.
pub fn gauge(out: &mut String, name: &str, help: &str, v: impl Display) {
    header(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {v}");
}

/// A counter family with one unlabeled sample.
pub fn counter(out: &mut String, name: &str, help: &str, v: impl Display) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{name} {v}");
}

/// One sample line `name{labels} value` (labels already rendered, without braces).
pub fn sample(out: &mut String, name: &str, labels: &str, v: impl Display) {
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {v}");
    } else {
        let _ = writeln!(out, "{name}{{{labels}}} {v}");
    }
}

/// Escape a label value for the text format.
pub fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// A float the way Prometheus parses it (`+Inf`, `NaN`, or a plain number).
pub fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// `dfs_build_info{component,version} 1`.
pub fn build_info(out: &mut String, component: &str, version: &str) {
    header(
        out,
        "dfs_build_info",
        "gauge",
        "Always 1; the labels say which program and version this is.",
    );
    sample(
        out,
        "dfs_build_info",
        &format!(
            "component=\"{}\",version=\"{}\"",
            escape(component),
            escape(version)
        ),
        1,
    );
}

/// Size and free space of the filesystem holding a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    pub size_bytes: u64,
    /// Bytes an unprivileged process may still write.
    pub avail_bytes: u64,
    pub read_only: bool,
}

/// `statvfs(2)` of `path`, or `None` if it cannot be read.
pub fn fs_stats(path: &Path) -> Option<FsStats> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string and `st` a zeroed, properly sized statvfs
    // that outlives the call; statvfs only writes into it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)] // field types differ between platforms
    let frsize = st.f_frsize as u64;
    #[allow(clippy::unnecessary_cast)]
    Some(FsStats {
        size_bytes: (st.f_blocks as u64).saturating_mul(frsize),
        avail_bytes: (st.f_bavail as u64).saturating_mul(frsize),
        read_only: (st.f_flag & libc::ST_RDONLY) != 0,
    })
}

/// Is `dir` a directory this process can still create files in (exists, writable, on a
/// filesystem that is not mounted read-only)? Cheap: no file is written.
pub fn dir_usable(dir: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let fs = fs_stats(dir).ok_or_else(|| format!("{} cannot be read", dir.display()))?;
    if fs.read_only {
        return Err(format!("{} is on a read-only filesystem", dir.display()));
    }
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| format!("{} is not a valid path", dir.display()))?;
    // SAFETY: access(2) only reads the NUL-terminated path.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        return Err(format!(
            "{} is not writable: {}",
            dir.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Total size of the files under a directory (recursively; unreadable entries count 0).
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// What `/proc/self` says about this process.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub threads: u64,
    pub start_time_seconds: f64,
    pub open_fds: u64,
    pub max_fds: u64,
}

fn sysconf(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf only reads its argument.
    let v = unsafe { libc::sysconf(name) };
    (v > 0).then_some(v as u64)
}

/// Parse the fields after the command name of `/proc/<pid>/stat`.
fn parse_stat(stat: &str, ticks: f64, page: u64, boot_time: f64) -> Option<ProcessStats> {
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state); field N is f[N - 3].
    let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(ProcessStats {
        cpu_seconds: (num(14)? + num(15)?) as f64 / ticks,
        threads: num(20)?,
        start_time_seconds: boot_time + num(22)? as f64 / ticks,
        virtual_bytes: num(23)?,
        resident_bytes: num(24)?.saturating_mul(page),
        ..Default::default()
    })
}

/// Read this process's statistics, or `None` where `/proc` is not available.
pub fn process_stats() -> Option<ProcessStats> {
    let ticks = sysconf(libc::_SC_CLK_TCK).unwrap_or(100) as f64;
    let page = sysconf(libc::_SC_PAGESIZE).unwrap_or(4096);
    let boot_time = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let mut p = parse_stat(&stat, ticks, page, boot_time)?;
    p.open_fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    // SAFETY: getrlimit writes into the zeroed struct it is given.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        #[allow(clippy::unnecessary_cast)]
        {
            p.max_fds = lim.rlim_cur as u64;
        }
    }
    Some(p)
}

/// The `dfs_process_*` families.
pub fn process(out: &mut String) {
    let Some(p) = process_stats() else {
        return;
    };
    counter(
        out,
        "dfs_process_cpu_seconds_total",
        "User and system CPU time used by this process.",
        float(p.cpu_seconds),
    );
    gauge(
        out,
        "dfs_process_resident_memory_bytes",
        "Resident memory (RSS) of this process.",
        p.resident_bytes,
    );
    gauge(
        out,
        "dfs_process_virtual_memory_bytes",
        "Virtual memory size of this process.",
        p.virtual_bytes,
    );
    gauge(
        out,
        "dfs_process_open_fds",
        "Open file descriptors (files, sockets) of this process.",
        p.open_fds,
    );
    gauge(
        out,
        "dfs_process_max_fds",
        "Limit on open file descriptors (RLIMIT_NOFILE).",
        p.max_fds,
    );
    gauge(
        out,
        "dfs_process_threads",
        "Operating system threads of this process.",
        p.threads,
    );
    gauge(
        out,
        "dfs_process_start_time_seconds",
        "Start time of this process, in seconds since the Unix epoch.",
        float(p.start_time_seconds),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_with_odd_names() {
        let line = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 1000 123456789 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let p = parse_stat(line, 100.0, 4096, 1_000_000.0).unwrap();
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.threads, 7);
        assert_eq!(p.start_time_seconds, 1_000_010.0);
        assert_eq!(p.virtual_bytes, 123_456_789);
        assert_eq!(p.resident_bytes, 300 * 4096);
        assert!(parse_stat("garbage", 100.0, 4096, 0.0).is_none());
    }

    #[test]
    fn reads_this_process() {
        let p = process_stats().expect("/proc/self is readable on Linux");
        assert!(p.resident_bytes > 0 && p.threads >= 1 && p.open_fds >= 1 && p.max_fds >= 1);
        let mut out = String::new();
        process(&mut out);
        assert!(out.contains("# TYPE dfs_process_cpu_seconds_total counter\n"));
        assert!(out.contains("\ndfs_process_open_fds "));
    }

    #[test]
    fn escapes_and_formats() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(0.5), "0.5");
        let mut out = String::new();
        sample(&mut out, "x", "", 1);
        sample(&mut out, "x", "a=\"b\"", 2);
        assert_eq!(out, "x 1\nx{a=\"b\"} 2\n");
        let d = tempfile::tempdir().unwrap();
        assert!(dir_usable(d.path()).is_ok());
        assert!(dir_usable(&d.path().join("missing")).is_err());
        let fs = fs_stats(d.path()).unwrap();
        assert!(fs.size_bytes >= fs.avail_bytes && fs.size_bytes > 0);
        std::fs::write(d.path().join("f"), b"12345").unwrap();
        assert_eq!(dir_size(d.path()), 5);
    }
}
