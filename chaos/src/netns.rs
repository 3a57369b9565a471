//! The private network namespace of a run with cuts and partitions, and the nftables rules
//! that make them.
//!
//! A cut drops every packet addressed to one node's listen port while its own outgoing
//! connections keep working (the replies come back to their ephemeral ports). A partition
//! drops every packet from one address to another, for chosen pairs: each node listens on and
//! connects from a loopback address of its own (`dfsctl local up --own-addresses`), clients
//! connect from 127.0.0.1, so a pair of addresses is a pair of nodes. So that the rules
//! touches nothing but the cluster under test, chaos re-executes itself under `unshare -n`
//! (marked by `DFS_CHAOS_IN_NETNS` in the environment), brings the namespace's loopback up and
//! starts the whole cluster in there; the rule lives in one table of its own, `inet dfs_chaos`,
//! created by a cut and deleted when it is undone.
//!
//! What must stay true: nft is never run outside the namespace chaos made (`cut` and
//! `partition` refuse without the marker); at most one cut or partition is in place at a time
//! and `uncut` removes it whatever happened before; missing tools or a refused
//! `unshare`/`nft` are reported as errors naming the tool and `--no-cuts`, never skipped
//! silently.
use std::ffi::OsString;
use std::net::IpAddr;
use std::process::{Command, Stdio};

/// Set in the environment of the chaos process re-executed inside its own network namespace.
pub const IN_NETNS: &str = "DFS_CHAOS_IN_NETNS";
/// The nftables table of the cuts (family inet).
pub const TABLE: &str = "dfs_chaos";

const HINT: &str = "cuts need root, `unshare` (util-linux), `ip` (iproute2) and `nft` (nftables); pass --no-cuts to run without them";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("`{tool}` is not on PATH ({HINT})")]
    Missing { tool: &'static str },
    #[error("`{cmd}` failed: {detail} ({HINT})")]
    Failed { cmd: String, detail: String },
    #[error("refusing to run nft outside the private network namespace chaos makes (no {IN_NETNS} in the environment)")]
    NotInside,
}

/// Whether this process is the re-executed one, inside the private namespace.
pub fn inside() -> bool {
    // The marker alone could be inherited by a process in the host's namespace: the network
    // namespace must also differ from init's.
    let ns = |p: &str| std::fs::read_link(p).ok();
    std::env::var_os(IN_NETNS).is_some()
        && ns("/proc/self/ns/net").is_some_and(|me| Some(me) != ns("/proc/1/ns/net"))
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            let f = d.join(tool);
            std::fs::metadata(&f).is_ok_and(|m| m.is_file())
        })
    })
}

/// Run a command to completion (stdin from `input` when given); an error carries its stderr.
fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<(), NetnsError> {
    let cmd = format!("{program} {}", args.join(" "));
    let failed = |detail: String| NetnsError::Failed {
        cmd: cmd.clone(),
        detail,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        use std::io::Write;
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| failed(format!("writing its input: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| failed(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(failed(if err.is_empty() {
            out.status.to_string()
        } else {
            err
        }))
    }
}

/// Run this executable again with the same arguments inside a new network namespace and return
/// its exit code (2 when it was killed by a signal). The tools are checked, and `unshare -n`
/// tried once, first, so that a refusal is an error of chaos rather than a failed run.
pub fn reexec() -> Result<u8, NetnsError> {
    for tool in ["unshare", "ip", "nft"] {
        if !on_path(tool) {
            return Err(NetnsError::Missing { tool });
        }
    }
    run("unshare", &["-n", "-m", "true"], None)?;
    let exe = std::env::current_exe().map_err(|e| NetnsError::Failed {
        cmd: "current_exe".into(),
        detail: e.to_string(),
    })?;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    // A mount namespace too (private propagation, unshare's default): power cuts mount each
    // node's data directory, and those mounts go with the run.
    let mut child = Command::new("unshare")
        .arg("-n")
        .arg("-m")
        .arg("--")
        .arg(&exe)
        .args(&args)
        .env(IN_NETNS, "1")
        .spawn()
        .map_err(|e| NetnsError::Failed {
            cmd: format!("unshare -n -- {}", exe.display()),
            detail: e.to_string(),
        })?;
    // Ctrl-C reaches the child too (same process group); it stops its cluster and reports.
    // SAFETY: setting a signal disposition to SIG_IGN touches no memory of ours.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    let status = child.wait().map_err(|e| NetnsError::Failed {
        cmd: "waiting for the chaos run in its network namespace".into(),
        detail: e.to_string(),
    })?;
    Ok(status
        .code()
        .and_then(|c| u8::try_from(c).ok())
        .unwrap_or(2))
}

/// Inside the namespace: loopback up, and one try of nft (the table made and deleted), so that a
/// refusal shows before the cluster starts.
pub fn prepare() -> Result<(), NetnsError> {
    if !inside() {
        return Err(NetnsError::NotInside);
    }
    run("ip", &["link", "set", "lo", "up"], None)?;
    run("nft", &["add", "table", "inet", TABLE], None)?;
    run("nft", &["delete", "table", "inet", TABLE], None)
}

/// The nftables script of a cut: drop every TCP packet to `port` on input.
pub fn cut_rules(port: u16) -> String {
    table(&format!("    tcp dport {port} drop\n"))
}

/// The table of a cut or partition: `rules` in its input chain.
fn table(rules: &str) -> String {
    format!(
        "table inet {TABLE} {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n{rules}  }}\n}}\n"
    )
}

/// Put a table in place (one atomic `nft -f -`), only inside the run's namespace.
fn apply(script: &str) -> Result<(), NetnsError> {
    if !inside() {
        return Err(NetnsError::NotInside);
    }
    run("nft", &["-f", "-"], Some(script))
}

/// Drop every packet addressed to `port`.
pub fn cut(port: u16) -> Result<(), NetnsError> {
    apply(&cut_rules(port))
}

/// The nftables script of a partition: drop every packet from `a` to `b`, for each `(a, b)`
/// (a link cut both ways is given as both pairs).
pub fn partition_rules(links: &[(IpAddr, IpAddr)]) -> String {
    let mut rules = String::new();
    for (a, b) in links {
        let family = if a.is_ipv4() { "ip" } else { "ip6" };
        rules.push_str(&format!("    {family} saddr {a} {family} daddr {b} drop\n"));
    }
    table(&rules)
}

/// Drop every packet from `a` to `b` for each pair.
pub fn partition(links: &[(IpAddr, IpAddr)]) -> Result<(), NetnsError> {
    apply(&partition_rules(links))
}

/// Delete the table of the cut or partition in place.
pub fn uncut() -> Result<(), NetnsError> {
    if !inside() {
        return Err(NetnsError::NotInside);
    }
    run("nft", &["delete", "table", "inet", TABLE], None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_drops_only_the_port() {
        let r = cut_rules(7001);
        assert!(r.contains("table inet dfs_chaos"), "{r}");
        assert!(r.contains("tcp dport 7001 drop"), "{r}");
        assert!(r.contains("hook input"), "{r}");
    }

    #[test]
    fn a_partition_drops_only_its_pairs_in_their_direction() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let r = partition_rules(&[
            (ip("127.0.1.1"), ip("127.0.1.2")),
            (ip("127.0.0.1"), ip("127.0.2.3")),
        ]);
        assert!(r.contains("table inet dfs_chaos"), "{r}");
        assert!(
            r.contains("ip saddr 127.0.1.1 ip daddr 127.0.1.2 drop"),
            "{r}"
        );
        assert!(
            r.contains("ip saddr 127.0.0.1 ip daddr 127.0.2.3 drop"),
            "{r}"
        );
        assert!(!r.contains("saddr 127.0.1.2"), "{r}");
    }

    #[test]
    fn nft_is_refused_outside_the_namespace() {
        if inside() {
            return;
        }
        assert!(matches!(partition(&[]), Err(NetnsError::NotInside)));
        assert!(matches!(cut(1), Err(NetnsError::NotInside)));
        assert!(matches!(uncut(), Err(NetnsError::NotInside)));
    }
}
