//! dfsctl: the dfs client and admin tool (library, so the chaos tester reuses the client and
//! the local cluster launcher).
//! Exit codes: 0 ok, 1 the operation failed, 2 usage error (and the codes documented per command).
pub mod admin;
pub mod bench;
pub mod bench_repair;
pub mod bench_scale;
pub mod bench_tree;
pub mod bench_watch;
pub mod certs;
pub mod cluster;
pub mod diskstats;
pub mod docs;
pub mod files;
pub mod fsck;
pub mod health;
pub mod import;
pub mod local;
pub mod local_gateway;
pub mod local_mount;
pub mod mount;
pub mod output;
pub mod transfer;
pub mod trash;
pub mod tree;
pub mod users;
pub mod watch;

/// The client library, under the names this crate always used.
pub use dfs_client::meta as client;
pub use dfs_client::rpc;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "dfsctl",
    version,
    about = "Use and run a dfs cluster: files, users, cluster membership, and a local test cluster.",
    after_help = "Examples:\n  dfsctl local up                     # start 3 metasrv + 3 chunksrv on loopback\n  source .dfs/env                     # point dfsctl at it\n  dfsctl put ./photo.jpg /photos/photo.jpg\n  dfsctl ls -l /photos\n  dfsctl get /photos/photo.jpg ./copy.jpg"
)]
pub struct Cli {
    /// Metadata nodes, comma separated host:port (any member works; the leader is found).
    #[arg(long, env = "DFS_META", global = true, value_delimiter = ',', value_parser = meta_addr)]
    pub meta: Vec<String>,
    /// Auth file with one line user/key [default: auth.txt in the user's config dir].
    /// An empty value (`DFS_AUTH_FILE=`) means unset, as for other Unix variables.
    #[arg(long, env = "DFS_AUTH_FILE", global = true, value_parser = auth_path)]
    pub auth_file: Option<PathBuf>,
    /// Print JSON (one object per result) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Give up on a request after this many seconds (leader changes are retried within it).
    #[arg(long, global = true, default_value_t = 30.0)]
    pub timeout: f64,
    /// Give a chunk server up after this many seconds without progress in a transfer (the
    /// chunk then goes to another server); keep it well under --timeout.
    #[arg(long, env = "DFS_STALL_TIMEOUT", global = true, default_value_t = 5.0)]
    pub stall_timeout: f64,
    /// No progress bars or extra messages.
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
    /// The cluster CA certificate: talk TLS and accept only servers it signed (`dfsctl local
    /// up` prints it). Unset or empty: plain TCP, for a cluster run with --insecure.
    #[arg(long, env = "DFS_TLS_CA", global = true, value_parser = auth_path)]
    pub tls_ca: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// A metadata node address is `host:port` with a port in 1..=65535. Anything else (a URL, a
/// bare host, a port out of range) is a usage error at once, not 30 s of retries.
/// An empty item passes through (an empty `DFS_META` is reported as "no metadata node given").
fn meta_addr(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(String::new());
    }
    if s.contains("://") {
        return Err(format!(
            "give host:port without a scheme (e.g. {})",
            s.split_once("://").map(|(_, r)| r).unwrap_or(s)
        ));
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err("give host:port (e.g. 127.0.0.1:7000)".to_string());
    };
    if host.is_empty() {
        return Err("the host is missing: give host:port".to_string());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(s.to_string()),
        _ => Err(format!("port {port:?} is not a number from 1 to 65535")),
    }
}

/// Any path; "" is kept as an empty path and dropped (meaning unset) when the Ctx is built.
fn auth_path(s: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(s))
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Store a local file (or `-` for stdin) at a remote path.
    #[command(after_help = "Example: dfsctl put ./report.pdf /docs/report.pdf --replication 3")]
    Put(transfer::PutArgs),
    /// Fetch a remote file to a local path (or `-` for stdout).
    #[command(after_help = "Example: dfsctl get /docs/report.pdf ./report.pdf")]
    Get(transfer::GetArgs),
    /// Copy a remote file (or with -r a directory tree) to another remote path.
    #[command(after_help = "Example: dfsctl cp -r /photos /photos-backup")]
    Cp(transfer::CpArgs),
    /// Print a remote file to stdout.
    #[command(after_help = "Example: dfsctl cat /docs/notes.txt")]
    Cat { path: String },
    /// List a directory (or show one file).
    #[command(
        after_help = "Example: dfsctl ls -lh -R /docs",
        disable_help_flag = true
    )]
    Ls(files::LsArgs),
    /// Show one file or directory, with its chunks (numbered from 0, as in `admin fsck`) and
    /// their replicas.
    #[command(after_help = "Example: dfsctl stat /docs/report.pdf")]
    Stat { path: String },
    /// Create a directory.
    #[command(after_help = "Example: dfsctl mkdir -p /a/b/c")]
    Mkdir(files::MkdirArgs),
    /// Move or rename a file or directory (into TO when TO is a directory).
    #[command(
        after_help = "Example: dfsctl mv /docs/old.txt /docs/new.txt   # -f replaces an existing file"
    )]
    Mv(files::MvArgs),
    /// Delete a file, or a directory with -r: into your trash (`dfsctl trash` lists, restores
    /// and purges it), or for good with --skip-trash.
    #[command(
        after_help = "Example: dfsctl rm -r /tmp/scratch   # dfsctl trash restore /tmp/scratch brings it back"
    )]
    Rm(files::RmArgs),
    /// What you deleted: list it, restore it, purge it.
    #[command(subcommand)]
    Trash(trash::TrashCmd),
    /// Remove empty directories.
    #[command(after_help = "Example: dfsctl rmdir /tmp/empty")]
    Rmdir(files::RmdirArgs),
    /// Files, directories and bytes under each path.
    #[command(
        after_help = "Example: dfsctl du -sh /docs /photos",
        disable_help_flag = true
    )]
    Du(files::DuArgs),
    /// Change the replication factor of a file (or of every file under a directory).
    #[command(
        after_help = "Example: dfsctl replication /docs/report.pdf 3 -w   # wait until 3 live replicas"
    )]
    Replication(fsck::ReplicationArgs),
    /// Users and access keys (admin).
    #[command(subcommand)]
    User(users::UserCmd),
    /// Create your own user where the cluster allows it; writes the auth file.
    #[command(after_help = "Example: dfsctl register alice --out ./auth.txt")]
    Register(users::RegisterArgs),
    /// Show who the auth file authenticates as.
    Whoami,
    /// Cluster membership and status.
    #[command(subcommand)]
    Cluster(cluster::ClusterCmd),
    /// Administration: cluster health, saved-files.json import and export.
    #[command(subcommand)]
    Admin(admin::AdminCmd),
    /// A real cluster of local processes on loopback, for trying dfs and for tests.
    #[command(subcommand)]
    Local(local::LocalCmd),
    /// Show a remote directory as a local folder (FUSE; as root, or with fusermount).
    #[command(
        after_help = "Example: dfsctl mount /docs /mnt/docs   # until Ctrl-C, SIGTERM or umount"
    )]
    Mount(mount::MountArgs),
    /// Keep a remote directory a backup of a local folder: upload what changes, as it changes.
    #[command(
        after_help = "Example: dfsctl watch ~/Documents /backup/documents --delete   # --once for cron\n\nExit codes: 0 stopped by SIGINT/SIGTERM, or --once done; 1 an error (the cluster unreachable\nlonger than --timeout; --once: a file failed); 3 a safety stop (the folder gone, unreadable or\nreplaced, or more than --max-delete deletes), nothing deleted."
    )]
    Watch(watch::WatchArgs),
    /// Measure metadata and data throughput and latency.
    Bench(bench::BenchArgs),
    /// Print shell completions.
    #[command(
        after_help = "Example: dfsctl completions bash > ~/.local/share/bash-completion/completions/dfsctl"
    )]
    Completions(docs::CompletionsArgs),
    /// Print the man page (or write one per command with --dir).
    #[command(after_help = "Example: dfsctl man --dir ~/.local/share/man/man1")]
    Man(docs::ManArgs),
}

/// Settings every command shares.
pub struct Ctx {
    pub meta: Vec<String>,
    pub auth_file: Option<PathBuf>,
    pub json: bool,
    pub quiet: bool,
    pub timeout: Duration,
    pub stall_timeout: Duration,
}

impl Ctx {
    /// The same settings, with no output of its own (for commands run inside another one,
    /// e.g. by a benchmark).
    pub fn quieted(&self) -> Ctx {
        Ctx {
            meta: self.meta.clone(),
            auth_file: self.auth_file.clone(),
            json: false,
            quiet: true,
            timeout: self.timeout,
            stall_timeout: self.stall_timeout,
        }
    }

    /// Connections to chunk servers, with this command's stall timeout.
    pub fn pool(&self) -> dfs_client::ChunkPool {
        dfs_client::ChunkPool::with_stall_timeout(self.stall_timeout)
    }

    pub fn client(&self) -> anyhow::Result<client::MetaConn> {
        Ok(client::MetaConn::connect(
            &self.meta,
            self.auth_file.as_deref(),
            self.timeout,
        )?)
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    let ctx = Ctx {
        meta: cli.meta,
        auth_file: cli.auth_file.filter(|p| !p.as_os_str().is_empty()),
        json: cli.json,
        quiet: cli.quiet,
        timeout: Duration::from_secs_f64(cli.timeout.max(0.1)),
        stall_timeout: Duration::from_secs_f64(cli.stall_timeout.max(0.1)),
    };
    match cli.cmd {
        Cmd::Put(a) => transfer::put(&ctx, a).await,
        Cmd::Get(a) => transfer::get(&ctx, a).await,
        Cmd::Cp(a) => transfer::cp(&ctx, a).await,
        Cmd::Cat { path } => transfer::cat(&ctx, &path).await,
        Cmd::Ls(a) => files::ls(&ctx, a).await,
        Cmd::Stat { path } => files::stat(&ctx, &path).await,
        Cmd::Mkdir(a) => files::mkdir(&ctx, a).await,
        Cmd::Mv(a) => files::mv(&ctx, a).await,
        Cmd::Rm(a) => files::rm(&ctx, a).await,
        Cmd::Trash(c) => trash::run(&ctx, c).await,
        Cmd::Rmdir(a) => files::rmdir(&ctx, a).await,
        Cmd::Du(a) => files::du(&ctx, a).await,
        Cmd::Replication(a) => fsck::replication(&ctx, a).await,
        Cmd::User(c) => users::run(&ctx, c).await,
        Cmd::Register(a) => users::register(&ctx, a).await,
        Cmd::Whoami => users::whoami(&ctx).await,
        Cmd::Cluster(c) => cluster::run(&ctx, c).await,
        Cmd::Admin(c) => admin::run(&ctx, c).await,
        Cmd::Local(c) => local::run(&ctx, c).await,
        Cmd::Mount(a) => mount::run(&ctx, a).await,
        Cmd::Watch(a) => watch::run(&ctx, a).await,
        Cmd::Bench(a) => bench::run(&ctx, a).await,
        Cmd::Completions(a) => docs::completions(a),
        Cmd::Man(a) => docs::man(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 26: `ls -lh` printed the help of `ls` and exited 0; it means long format with
    /// human sizes, as in Unix. `--help` still helps, and an unknown flag is a usage error.
    #[test]
    fn ls_lh_is_long_human_not_help() {
        let cli = Cli::try_parse_from(["dfsctl", "ls", "-lh", "/docs"]).unwrap();
        match cli.cmd {
            Cmd::Ls(a) => assert!(a.long && a.human && a.paths == ["/docs"]),
            other => panic!("parsed as {other:?}"),
        }
        let e = Cli::try_parse_from(["dfsctl", "ls", "--help"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
        let e = Cli::try_parse_from(["dfsctl", "ls", "-z"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }

    /// Issue 26: combined flags and several paths as in Unix: `ls -la a b`, `du -sh a b`.
    #[test]
    fn ls_la_and_du_sh_parse() {
        let cli = Cli::try_parse_from(["dfsctl", "ls", "-la", "/a", "/b"]).unwrap();
        match cli.cmd {
            Cmd::Ls(a) => assert!(a.long && a.all && a.paths == ["/a", "/b"]),
            other => panic!("parsed as {other:?}"),
        }
        let cli = Cli::try_parse_from(["dfsctl", "du", "-sh", "/a", "/b"]).unwrap();
        match cli.cmd {
            Cmd::Du(a) => assert!(a.summary && a.human && a.paths == ["/a", "/b"]),
            other => panic!("parsed as {other:?}"),
        }
        let cli = Cli::try_parse_from(["dfsctl", "mv", "-f", "/a", "/b"]).unwrap();
        assert!(matches!(cli.cmd, Cmd::Mv(m) if m.force));
    }

    /// Issue 26: `put --replication 0` was accepted (and stored the default, 2) while
    /// `replication PATH 0` is refused: 0 is a usage error for put too.
    #[test]
    fn put_replication_zero_is_a_usage_error() {
        let e =
            Cli::try_parse_from(["dfsctl", "put", "a", "/a", "--replication", "0"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let cli = Cli::try_parse_from(["dfsctl", "put", "a", "/a", "--replication", "3"]).unwrap();
        assert!(matches!(cli.cmd, Cmd::Put(p) if p.replication == Some(3)));
    }

    /// Issue 26: `--meta http://…`, `--meta 127.0.0.1` and a port over 65535 were retried for
    /// 30 s; they are usage errors (exit 2) at once.
    #[test]
    fn bad_meta_addresses_are_usage_errors() {
        for bad in [
            "http://127.0.0.1:7000",
            "127.0.0.1",
            "127.0.0.1:70000",
            ":7000",
        ] {
            let e = Cli::try_parse_from(["dfsctl", "--meta", bad, "ls"]).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad} accepted");
        }
        let cli = Cli::try_parse_from([
            "dfsctl",
            "--meta",
            "127.0.0.1:7000,[::1]:7001,localhost:1",
            "ls",
        ])
        .unwrap();
        assert_eq!(cli.meta, ["127.0.0.1:7000", "[::1]:7001", "localhost:1"]);
    }

    /// Issue 26: an empty `DFS_AUTH_FILE=` was reported as a flag error ("a value is required
    /// for '--auth-file'"); empty means unset (same parser path as an empty flag value).
    #[test]
    fn empty_auth_file_means_unset() {
        let cli = Cli::try_parse_from(["dfsctl", "--auth-file", "", "ls"]).unwrap();
        assert!(cli.auth_file.unwrap().as_os_str().is_empty());
    }
}
