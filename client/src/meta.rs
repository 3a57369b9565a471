//! meta: a connection to the metadata group that survives leader changes: requests go to the node
//! that answered last; on "unavailable" (node down, no leader yet) the next node is tried, until
//! the deadline. Any member works, because followers forward to the leader.
//!
//! Which node to use is found by asking every member at once (`Ping`, answered from the node's
//! memory) with a short deadline each: the leader if it answers, else any node that answers.
//! So a frozen node (SIGSTOP, a hung host) costs one ping deadline, not a request timeout, and
//! its place in the address list does not matter. The node that served a call is remembered
//! and used directly until a call to it fails.
use crate::error::{Error, Result};
use dfs_common::auth_file::Credentials;
use dfs_common::headers;
use dfs_common::pki::Role;
use dfs_common::tls::Tls;
use dfs_proto::meta_client::MetaClient;
use dfs_proto::Empty;
use futures::stream::{FuturesUnordered, StreamExt};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

pub type Grpc = MetaClient<Channel>;

/// Longest a single attempt may take before the next node is tried.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// What one ping gave: the member's answer, an error status, or nothing in time.
type PingOutcome = std::result::Result<
    std::result::Result<tonic::Response<dfs_proto::PingReply>, Status>,
    tokio::time::error::Elapsed,
>;

/// An attempt not answered after this long makes the client ask the other members whether one
/// of them leads now (a frozen or unreachable leader is replaced within an election); if one
/// does, the call moves there instead of waiting out the attempt. Writes carry request ids, so
/// the move cannot apply one twice.
const HEDGE_AFTER: Duration = Duration::from_millis(600);
/// How long a node may take to answer a ping before the others are preferred.
const PING_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a node that failed an attempt is not chosen because of a leader hint (a leader
/// this client cannot reach is not tried first on every call).
const HINT_BACKOFF: Duration = Duration::from_secs(10);

pub struct MetaConn {
    addrs: Vec<String>,
    channels: Vec<Channel>,
    current: AtomicUsize,
    /// Whether `current` served a call (then it is used without asking the others first).
    confirmed: AtomicBool,
    /// When each node last failed an attempt.
    failed_at: std::sync::Mutex<Vec<Option<tokio::time::Instant>>>,
    creds: Option<Credentials>,
    timeout: Duration,
    attempt_timeout: Duration,
    /// TLS for this connection and the chunk transfers made with it (`None`: plain TCP).
    tls: Option<Arc<Tls>>,
}

/// A fresh id for one logical write. Create it once per call, outside `rpc!` (which rebuilds
/// its message on every attempt), so each retry carries the same id and is applied at most once.
pub fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub fn default_auth_file() -> PathBuf {
    dirs::config_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("dfs")
        .join("auth.txt")
}

/// How long a new connection (TCP and HTTP/2 handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A lazy channel to `addr`, a server of `role`: over TLS when `tls` is given (the server must
/// show a certificate for that role from the cluster CA), plain TCP otherwise.
pub fn lazy_channel(addr: &str, tls: Option<&Arc<Tls>>, role: Role) -> Result<Channel> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| Error::InvalidName(format!("bad address {addr:?}: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .initial_stream_window_size(4 * 1024 * 1024)
        .initial_connection_window_size(16 * 1024 * 1024)
        // Chunk pieces are 1 MiB: let servers send them in a few large frames.
        .max_frame_size(1024 * 1024);
    Ok(dfs_common::tls::channel(endpoint, tls, role))
}

/// The TLS a client uses when none is given: `DFS_TLS_CA` (the cluster CA, which `dfsctl local
/// up` prints), with `DFS_TLS_CERT` and `DFS_TLS_KEY` if this client has a certificate too.
/// Unset: plain TCP (a cluster started with `--insecure`).
pub fn tls_from_env() -> Result<Option<Arc<Tls>>> {
    let Some(ca) = std::env::var_os("DFS_TLS_CA").filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let files = dfs_common::tls::TlsFiles {
        ca: PathBuf::from(ca),
        cert: std::env::var_os("DFS_TLS_CERT").map(PathBuf::from),
        key: std::env::var_os("DFS_TLS_KEY").map(PathBuf::from),
    };
    Ok(Some(Tls::load(files)?))
}

/// A status's message with the errors beneath it (a TLS handshake failure is only named
/// there), and a hint when TLS is the likely cause.
pub fn with_causes(s: &Status) -> String {
    let mut out = dfs_common::tls::error_chain(s);
    if dfs_common::tls::is_certificate_error(s) || out.contains("InvalidContentType") {
        out.push_str(" (TLS failed: the server runs without TLS, or DFS_TLS_CA / --tls-ca is not this cluster's CA)");
    }
    out
}

impl MetaConn {
    /// Build a connection; credentials are read when the auth file exists.
    pub fn connect(
        addrs: &[String],
        auth_file: Option<&Path>,
        timeout: Duration,
    ) -> Result<MetaConn> {
        let addrs: Vec<String> = addrs
            .iter()
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect();
        if addrs.is_empty() {
            return Err(Error::InvalidName("no metadata node given: pass --meta host:port,... or set DFS_META (`dfsctl local up` prints it)".into()));
        }
        let path = auth_file
            .map(Path::to_path_buf)
            .unwrap_or_else(default_auth_file);
        let creds = match dfs_common::auth_file::read(&path) {
            Ok(c) => Some(c),
            Err(dfs_common::auth_file::AuthFileError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound && auth_file.is_none() =>
            {
                None
            }
            Err(e) => return Err(Error::Permission(e.to_string())),
        };
        Self::with_credentials(&addrs, creds, timeout)
    }

    /// A connection with the given credentials (or none, for self-registration).
    pub fn with_credentials(
        addrs: &[String],
        creds: Option<Credentials>,
        timeout: Duration,
    ) -> Result<MetaConn> {
        if addrs.is_empty() {
            return Err(Error::InvalidName(
                "no metadata node given: pass --meta host:port,... or set DFS_META".into(),
            ));
        }
        let tls = tls_from_env()?;
        let channels = addrs
            .iter()
            .map(|a| lazy_channel(a, tls.as_ref(), Role::Meta))
            .collect::<Result<Vec<_>>>()?;
        Ok(MetaConn {
            tls,
            addrs: addrs.to_vec(),
            channels,
            current: AtomicUsize::new(0),
            confirmed: AtomicBool::new(false),
            failed_at: std::sync::Mutex::new(vec![None; addrs.len()]),
            creds,
            timeout,
            attempt_timeout: ATTEMPT_TIMEOUT.min(timeout),
        })
    }

    /// Another connection to the same members with the same credentials (sharing the
    /// channels), for a task that outlives the borrow of this one.
    pub fn fork(&self) -> MetaConn {
        MetaConn {
            addrs: self.addrs.clone(),
            channels: self.channels.clone(),
            current: AtomicUsize::new(self.current.load(Ordering::Relaxed)),
            confirmed: AtomicBool::new(false),
            failed_at: std::sync::Mutex::new(vec![None; self.addrs.len()]),
            creds: self.creds.clone(),
            timeout: self.timeout,
            attempt_timeout: self.attempt_timeout,
            tls: self.tls.clone(),
        }
    }

    /// Use `tls` (or plain TCP with `None`) instead of what `DFS_TLS_CA` says.
    pub fn with_tls(mut self, tls: Option<Arc<Tls>>) -> Result<Self> {
        self.channels = self
            .addrs
            .iter()
            .map(|a| lazy_channel(a, tls.as_ref(), Role::Meta))
            .collect::<Result<Vec<_>>>()?;
        self.tls = tls;
        Ok(self)
    }

    /// The TLS this connection uses (chunk transfers made with it use the same).
    pub fn tls(&self) -> Option<&Arc<Tls>> {
        self.tls.as_ref()
    }

    /// Let one attempt run as long as the whole call (for slow operations like add-member).
    pub fn patient(mut self) -> Self {
        self.attempt_timeout = self.timeout;
        self
    }

    pub fn user(&self) -> Option<&str> {
        self.creds.as_ref().map(|c| c.user.as_str())
    }

    /// Wrap a message with the caller's credentials.
    pub fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(c) = &self.creds {
            if let (Ok(u), Ok(k)) = (c.user.parse(), c.key.parse()) {
                r.metadata_mut().insert(headers::USER, u);
                r.metadata_mut().insert(headers::KEY, k);
            }
        }
        r
    }

    /// Run `f` against a metadata node, moving to the next one while the cluster is unavailable.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, Status>
    where
        F: Fn(Grpc) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let n = self.addrs.len();
        let mut i = self.current.load(Ordering::Relaxed) % n;
        if !self.confirmed.load(Ordering::Relaxed) {
            i = self.discover(None, deadline).await.unwrap_or(i);
        }
        let mut tried = 0;
        loop {
            let client = MetaClient::new(self.channels[i].clone())
                .max_decoding_message_size(64 * 1024 * 1024)
                .max_encoding_message_size(64 * 1024 * 1024);
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let attempt_end = tokio::time::Instant::now() + self.attempt_timeout.min(left);
            let attempt = tokio::time::timeout_at(attempt_end, f(client));
            // Every HEDGE_AFTER without an answer: does another member lead now?
            let asked = i;
            let hedge = async move {
                loop {
                    tokio::time::sleep(HEDGE_AFTER).await;
                    if let Some(j) = self.other_leader(asked, attempt_end).await {
                        return j;
                    }
                }
            };
            tokio::pin!(attempt, hedge);
            let outcome = tokio::select! {
                r = &mut attempt => Ok(r),
                j = &mut hedge => Err(j),
            };
            let outcome = match outcome {
                Ok(outcome) => outcome,
                Err(j) => {
                    // Another member leads now: this attempt is abandoned and retried there.
                    self.note_failure(i);
                    self.confirmed.store(false, Ordering::Relaxed);
                    tracing::debug!(from = %self.addrs[i], to = %self.addrs[j], "no answer; moving to the new leader");
                    i = j;
                    continue;
                }
            };
            let err = match outcome {
                Ok(Ok(r)) => {
                    // A follower that forwarded the call names the leader: go there directly.
                    let leader = r
                        .metadata()
                        .get(headers::LEADER_HINT)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|a| self.addrs.iter().position(|x| x == a))
                        .filter(|j| !self.failed_recently(*j));
                    self.current.store(leader.unwrap_or(i), Ordering::Relaxed);
                    self.confirmed.store(true, Ordering::Relaxed);
                    return Ok(r.into_inner());
                }
                Ok(Err(s)) if retryable(&s) => s,
                Ok(Err(s)) if self.tls.is_none() && s.message().contains("h2 protocol error") => {
                    return Err(Status::unavailable(format!(
                        "{} answered in a protocol this client does not speak ({}): the cluster uses TLS, so set DFS_TLS_CA or --tls-ca to its CA certificate",
                        self.addrs[i],
                        s.message()
                    )))
                }
                Ok(Err(s)) => return Err(s),
                Err(_) => {
                    Status::deadline_exceeded(format!("{} did not answer in time", self.addrs[i]))
                }
            };
            tried += 1;
            self.confirmed.store(false, Ordering::Relaxed);
            self.note_failure(i);
            if tokio::time::Instant::now() >= deadline {
                return Err(Status::new(
                    err.code(),
                    format!(
                        "no metadata node could serve the request ({}); tried {}",
                        with_causes(&err),
                        self.addrs.join(",")
                    ),
                ));
            }
            if tried % n == 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let next = (i + 1) % n;
            i = match self.discover(Some(i), deadline).await {
                Some(j) => j,
                None => next,
            };
        }
    }

    /// Ping every member at once, each with a short deadline: the first node that answers as
    /// the leader, else (once every ping answered or timed out) a node that answered, not
    /// `avoid` if another did. `None` when no node answered in time.
    async fn discover(
        &self,
        avoid: Option<usize>,
        deadline: tokio::time::Instant,
    ) -> Option<usize> {
        if self.channels.len() == 1 {
            return Some(0);
        }
        let mut pings = self.ping_all(None, deadline);
        let mut answered = Vec::new();
        while let Some((j, r)) = pings.next().await {
            match r {
                Ok(Ok(p)) => {
                    let p = p.into_inner();
                    if p.leader != 0 && p.leader == p.id {
                        return Some(j);
                    }
                    answered.push(j);
                }
                // A node that answers with a status (an older one without Ping) is alive.
                Ok(Err(s)) if !retryable(&s) && s.code() != Code::DeadlineExceeded => {
                    answered.push(j)
                }
                _ => {}
            }
        }
        answered
            .iter()
            .copied()
            .find(|j| Some(*j) != avoid)
            .or(answered.first().copied())
    }
}

impl MetaConn {
    fn note_failure(&self, i: usize) {
        if let Some(at) = self
            .failed_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(i)
        {
            *at = Some(tokio::time::Instant::now());
        }
    }

    /// A ping to every member but `except`, at once, each with the ping deadline (cut to
    /// `until`); they answer in the order they complete, with the member's index.
    fn ping_all(
        &self,
        except: Option<usize>,
        until: tokio::time::Instant,
    ) -> FuturesUnordered<impl Future<Output = (usize, PingOutcome)> + '_> {
        let wait = PING_TIMEOUT.min(until.saturating_duration_since(tokio::time::Instant::now()));
        self.channels
            .iter()
            .enumerate()
            .filter(move |(j, _)| Some(*j) != except)
            .map(move |(j, ch)| {
                let mut g = MetaClient::new(ch.clone());
                async move {
                    (
                        j,
                        tokio::time::timeout(wait, g.ping(tonic::Request::new(Empty {}))).await,
                    )
                }
            })
            .collect()
    }

    /// A member other than `i` that answers a ping as the leader, if any does before `until`
    /// (each ping has the short ping deadline).
    async fn other_leader(&self, i: usize, until: tokio::time::Instant) -> Option<usize> {
        let mut pings = self.ping_all(Some(i), until);
        while let Some((j, r)) = pings.next().await {
            if let Ok(Ok(p)) = r {
                let p = p.into_inner();
                if p.leader != 0 && p.leader == p.id {
                    return Some(j);
                }
            }
        }
        None
    }

    fn failed_recently(&self, i: usize) -> bool {
        let failed = self.failed_at.lock().unwrap_or_else(|p| p.into_inner());
        failed
            .get(i)
            .copied()
            .flatten()
            .is_some_and(|at| at.elapsed() < HINT_BACKOFF)
    }
}

fn retryable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled
    )
}

/// `rpc!(conn, method, message)`: call a Meta method with credentials and failover.
/// The message expression is evaluated once; each attempt sends a clone of it.
#[macro_export]
macro_rules! rpc {
    ($conn:expr, $method:ident, $msg:expr) => {{
        let conn = &$conn;
        // Built once: every retry sends the same request (the same request id, so a write
        // applied by an attempt whose reply was lost is not applied again).
        let msg = $msg;
        conn.call(|mut g| {
            let r = conn.req(msg.clone());
            async move { g.$method(r).await }
        })
        .await
    }};
}
