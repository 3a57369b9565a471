//! dfs-gateway: serves the dfs namespace over WebDAV (class 1 and 2) for Windows Explorer,
//! macOS Finder, GNOME Files/Dolphin, rclone, Cyberduck and WinSCP.
//!
//! Stateless apart from WebDAV locks (kept in this process's memory, see the README): every
//! request carries HTTP Basic credentials (dfs user and access key) that metasrv checks, and
//! every file-system decision is taken by metasrv; any number of gateways can stand behind a
//! load balancer (locks then need sticky sessions).
//!
//! What must stay true:
//! - plain HTTP only with `--insecure-http`, and only on a loopback address (keys travel in
//!   every request);
//! - no request path or `Destination` with a `..` or `.` segment, a NUL, or a name over 255
//!   bytes reaches the file system (400); a PROPFIND of depth infinity is refused (403);
//! - a peer's error (metasrv, a chunk server, the HTTP client) fails that request only: the
//!   gateway never exits or panics because of one.
mod auth;
mod davfs;
mod metrics;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use dav_server::{memls::MemLs, DavConfig, DavHandler};
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const EXAMPLES: &str = "\
Examples:
  # On the machine itself, plain HTTP on loopback (a local cluster, tests, behind stunnel):
  dfs-gateway --meta 127.0.0.1:7000 --listen 127.0.0.1:8080 --insecure-http
  curl -u alice:KEY -T notes.txt http://127.0.0.1:8080/docs/notes.txt

  # For the network: HTTPS with a certificate, metrics for Prometheus:
  dfs-gateway --meta meta-1:7000,meta-2:7000,meta-3:7000 --listen 0.0.0.0:443 \\
      --tls-cert /etc/dfs/gateway.crt --tls-key /etc/dfs/gateway.key --metrics 0.0.0.0:9470

  # Then: Windows Explorer \"Map network drive\" https://host/, macOS Finder \"Connect to
  # Server\" https://host/, GNOME Files davs://host/, or
  rclone copy ./photos :webdav:/photos --webdav-url https://host/ --webdav-user alice \\
      --webdav-pass \"$(rclone obscure KEY)\"

User name and password are the dfs user and its access key (the two halves of auth.txt).";

#[derive(Parser, Debug)]
#[command(
    name = "dfs-gateway",
    version,
    about = "Serve the dfs namespace over WebDAV (Explorer, Finder, GNOME Files, rclone)",
    after_help = EXAMPLES
)]
struct Args {
    /// Address to serve WebDAV on.
    #[arg(long, env = "DFS_GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    /// Metadata nodes, host:port,... (any member works).
    #[arg(long, env = "DFS_META", value_delimiter = ',', required = true)]
    meta: Vec<String>,
    /// Serve plain HTTP (only on a loopback address: keys are sent with every request).
    #[arg(long, env = "DFS_GATEWAY_INSECURE_HTTP")]
    insecure_http: bool,
    /// PEM certificate chain for HTTPS.
    #[arg(long, env = "DFS_GATEWAY_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS.
    #[arg(long, env = "DFS_GATEWAY_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The cluster CA certificate: reach metasrv and the chunk servers over TLS, accepting
    /// only servers it signed (unset or empty: plain TCP, for an --insecure cluster).
    #[arg(long, env = "DFS_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Serve Prometheus metrics (dfs_gateway_*) on this address (`/metrics`).
    #[arg(long, env = "DFS_GATEWAY_METRICS")]
    metrics: Option<String>,
    /// Longest a metadata call may take, failover included (e.g. 30s).
    #[arg(long, env = "DFS_TIMEOUT", default_value = "30s", value_parser = dfs_common::units::parse_duration)]
    timeout: Duration,
    /// How long credentials metasrv accepted are trusted before it is asked again.
    #[arg(long, env = "DFS_GATEWAY_AUTH_CACHE", default_value = "5s", value_parser = dfs_common::units::parse_duration)]
    auth_cache: Duration,
}

struct State {
    dav: DavHandler,
    auth: auth::Auth,
    metrics: metrics::Metrics,
}

type Out = UnsyncBoxBody<Bytes, std::io::Error>;

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // Every connection to the cluster reads DFS_TLS_CA (dfs_client::tls_from_env): the flag
    // sets it, before any thread starts.
    match &args.tls_ca {
        Some(ca) if !ca.as_os_str().is_empty() => std::env::set_var("DFS_TLS_CA", ca),
        _ => std::env::remove_var("DFS_TLS_CA"),
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DFS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // Not its default eprintln! of a failed log write: that panics when stderr cannot be
        // written (a full or failing log disk), in whichever thread logged.
        .log_internal_errors(false)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dfs-gateway: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dfs-gateway: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn tls_config(cert: &PathBuf, key: &PathBuf) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read the certificate {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", cert.display()))?;
    if certs.is_empty() {
        bail!("{} holds no certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read a PEM private key from {}", key.display()))?;
    // ring rather than aws-lc-rs (no cmake/C toolchain on CI); rustls deprecates it only for
    // lacking post-quantum key exchange.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS setup")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the certificate and key do not go together")?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let tls = match (&args.tls_cert, &args.tls_key, args.insecure_http) {
        (Some(_), _, true) => bail!("give either --tls-cert/--tls-key or --insecure-http, not both"),
        (Some(c), Some(k), false) => Some(tls_config(c, k)?),
        (None, _, true) => None,
        _ => bail!(
            "no TLS certificate: give --tls-cert and --tls-key, or --insecure-http for plain HTTP on a loopback address"
        ),
    };
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (is the port taken?)", args.listen))?;
    let local = listener.local_addr()?;
    if tls.is_none() && !local.ip().is_loopback() {
        bail!(
            "--insecure-http serves only on a loopback address (127.0.0.1, ::1), not {local}: access keys would cross the network in clear; use --tls-cert/--tls-key"
        );
    }
    let dav = DavHandler::builder()
        .locksystem(MemLs::new())
        .read_buf_size(1 << 20)
        .build_handler();
    let state = Arc::new(State {
        dav,
        auth: auth::Auth::new(args.meta.clone(), args.timeout, args.auth_cache),
        metrics: metrics::Metrics::default(),
    });
    if let Some(addr) = &args.metrics {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot serve metrics on {addr} (is the port taken?)"))?;
        let st = state.clone();
        let handler: dfs_common::http::Handler = Arc::new(move |path: &str| match path {
            "/metrics" => (200, dfs_common::http::PROMETHEUS_TEXT, st.metrics.render()),
            "/healthz" => (200, "text/plain", "ok\n".to_string()),
            _ => (404, "text/plain", "not found\n".to_string()),
        });
        tokio::spawn(dfs_common::http::serve(l, handler));
        tracing::info!("metrics on http://{addr}/metrics");
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(
        "serving WebDAV on {scheme}://{local}/ (metadata: {})",
        args.meta.join(",")
    );
    // Not println!: a closed stdout must not end the gateway.
    {
        use std::io::Write;
        let mut out = std::io::stdout();
        let _ = writeln!(out, "dfs-gateway: serving WebDAV on {scheme}://{local}/");
        let _ = out.flush();
    }
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        let (state, tls) = (state.clone(), tls.clone());
        tokio::spawn(async move {
            match tls {
                Some(acc) => {
                    match tokio::time::timeout(Duration::from_secs(10), acc.accept(sock)).await {
                        Ok(Ok(s)) => serve_conn(state, peer, TokioIo::new(s)).await,
                        Ok(Err(e)) => tracing::debug!("TLS handshake with {peer}: {e}"),
                        Err(_) => tracing::debug!("TLS handshake with {peer} timed out"),
                    }
                }
                None => serve_conn(state, peer, TokioIo::new(sock)).await,
            }
        });
    }
}

async fn serve_conn<I>(state: Arc<State>, peer: SocketAddr, io: I)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(state, peer.ip(), req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .keep_alive(true)
        .serve_connection(io, svc);
    if let Err(e) = conn.await {
        tracing::debug!("connection from {peer}: {e}");
    }
}

fn plain(status: StatusCode, body: &str) -> Response<Out> {
    let mut r = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|n| match n {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Why a request path may not reach the file system, if it may not: a `.`/`..` segment, a
/// NUL or `/` inside a name (percent-encoded), a name over 255 bytes, a path over 4096.
fn bad_path(raw: &str) -> Option<String> {
    let path = raw.split(['?', '#']).next().unwrap_or("");
    let mut total = 0;
    for seg in path.split('/') {
        let dec: Vec<u8> = percent_encoding::percent_decode_str(seg).collect();
        total += dec.len() + 1;
        if dec == b".." || dec == b"." {
            return Some("a path may not contain `.` or `..`".into());
        }
        if dec.iter().any(|&b| b == 0 || b == b'/') {
            return Some("a name may not contain NUL or an encoded `/`".into());
        }
        if dec.len() > dfs_common::path::MAX_NAME_BYTES {
            return Some(format!(
                "a name is longer than {} bytes",
                dfs_common::path::MAX_NAME_BYTES
            ));
        }
    }
    if total > dfs_common::path::MAX_PATH_BYTES {
        return Some(format!(
            "the path is longer than {} bytes",
            dfs_common::path::MAX_PATH_BYTES
        ));
    }
    None
}

/// Whether every `<...>` and `[...]` of an `If` header is closed (quotes respected): dav-server
/// 0.11's parser indexes past the end of one that is not (litmus sends such headers).
fn if_header_well_formed(v: &[u8]) -> bool {
    let mut open: Option<u8> = None;
    let mut quote = false;
    for &c in v {
        match open {
            None if c == b'<' => open = Some(b'>'),
            None if c == b'[' => open = Some(b']'),
            None => {}
            Some(_) if c == b'"' => quote = !quote,
            Some(close) if c == close && !quote => open = None,
            Some(_) => {}
        }
    }
    open.is_none()
}

async fn handle(state: Arc<State>, ip: IpAddr, req: Request<Incoming>) -> Response<Out> {
    let start = Instant::now();
    // Known methods by name; anything else counts as "other" (no label per invented method).
    const KNOWN: [&str; 14] = [
        "OPTIONS",
        "GET",
        "HEAD",
        "PUT",
        "DELETE",
        "PROPFIND",
        "PROPPATCH",
        "MKCOL",
        "COPY",
        "MOVE",
        "LOCK",
        "UNLOCK",
        "POST",
        "PATCH",
    ];
    let method = KNOWN
        .into_iter()
        .find(|m| *m == req.method().as_str())
        .unwrap_or("other");
    let resp = respond(&state, ip, req).await;
    let status = resp.status().as_u16();
    state.metrics.record(method, status, start.elapsed());
    let st = state.clone();
    resp.map(|b| {
        b.map_frame(move |f| {
            if let Some(d) = f.data_ref() {
                st.metrics
                    .bytes_out
                    .fetch_add(d.len() as u64, Ordering::Relaxed);
            }
            f
        })
        .boxed_unsync()
    })
}

async fn respond(state: &Arc<State>, ip: IpAddr, req: Request<Incoming>) -> Response<Out> {
    let creds = auth::parse_basic(req.headers().get(http::header::AUTHORIZATION));
    let user = creds.as_ref().map(|c| c.user.clone()).unwrap_or_default();
    let client = match state.auth.check(ip, creds).await {
        Ok(c) => c,
        Err(auth::Denied::Unauthorized) => {
            if !user.is_empty() {
                state.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
            }
            let mut r = plain(
                StatusCode::UNAUTHORIZED,
                "log in with your dfs user name and access key\n",
            );
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Basic realm=\"dfs\", charset=\"UTF-8\""),
            );
            return r;
        }
        Err(auth::Denied::TooMany) => {
            state.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
            let mut r = plain(
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed logins from this address; try again in a minute\n",
            );
            r.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("60"),
            );
            return r;
        }
        Err(auth::Denied::Unavailable(m)) => {
            tracing::warn!("cannot check credentials of {user:?}: {m}");
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "the dfs metadata service did not answer; try again\n",
            );
        }
    };
    if let Some(why) = bad_path(req.uri().path()) {
        return plain(StatusCode::BAD_REQUEST, &format!("{why}\n"));
    }
    if let Some(dest) = req.headers().get("destination") {
        let dest = dest.to_str().unwrap_or("\0");
        let path = match dest.parse::<http::Uri>() {
            Ok(u) => u.path().to_string(),
            Err(_) => return plain(StatusCode::BAD_REQUEST, "Destination is not a URI\n"),
        };
        if let Some(why) = bad_path(&path) {
            return plain(StatusCode::BAD_REQUEST, &format!("Destination: {why}\n"));
        }
    }
    if let Some(v) = req.headers().get("if") {
        if !if_header_well_formed(v.as_bytes()) {
            return plain(
                StatusCode::BAD_REQUEST,
                "the If header has an unterminated <tag> or [etag]\n",
            );
        }
    }
    if req.method().as_str() == "PROPFIND"
        && req
            .headers()
            .get("depth")
            .and_then(|d| d.to_str().ok())
            .is_some_and(|d| d.trim().eq_ignore_ascii_case("infinity"))
    {
        let mut r = Response::new(
            Full::new(Bytes::from_static(
                b"<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<D:error xmlns:D=\"DAV:\"><D:propfind-finite-depth/></D:error>\n",
            ))
            .map_err(|n| match n {})
            .boxed_unsync(),
        );
        *r.status_mut() = StatusCode::FORBIDDEN;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/xml; charset=utf-8"),
        );
        return r;
    }
    let st = state.clone();
    let req = req.map(move |b| {
        b.map_frame(move |f| {
            if let Some(d) = f.data_ref() {
                st.metrics
                    .bytes_in
                    .fetch_add(d.len() as u64, Ordering::Relaxed);
            }
            f
        })
    });
    let whole_tree_deletes = matches!(req.method().as_str(), "DELETE" | "MOVE");
    let cfg = DavConfig::new()
        .filesystem(Box::new(davfs::DfsFs::new(client, whole_tree_deletes)))
        .principal(user);
    // A panic inside dav-server (a malformed header it does not expect) fails this request
    // with a 500, never the connection's task silently or the gateway.
    use futures::FutureExt;
    let unavailable = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handled = davfs::UNAVAILABLE.scope(
        unavailable.clone(),
        std::panic::AssertUnwindSafe(state.dav.handle_with(cfg, req)).catch_unwind(),
    );
    match handled.await {
        Ok(resp)
            if resp.status() == StatusCode::INTERNAL_SERVER_ERROR
                && unavailable.load(Ordering::Relaxed) =>
        {
            plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "the dfs cluster did not answer in time; try again\n",
            )
        }
        Ok(resp) => resp.map(|b| b.boxed_unsync()),
        Err(_) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the WebDAV handler failed on this request\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_with_dot_segments_long_names_or_encoded_slashes_are_refused() {
        for ok in ["/", "/a/b.txt", "/docs/", "/a%20b/c", "/caf%C3%A9"] {
            assert_eq!(bad_path(ok), None, "{ok}");
        }
        for bad in [
            "/docs/../etc",
            "/docs/%2e%2e/etc",
            "/%2E%2E%2f",
            "/a/./b",
            "/a%2fb",
            "/a%00b",
        ] {
            assert!(bad_path(bad).is_some(), "{bad}");
        }
        assert!(bad_path(&format!("/{}", "n".repeat(256))).is_some());
        assert!(bad_path(&format!("/{}", "n".repeat(255))).is_none());
        assert!(bad_path(&"/abcdefgh".repeat(600)).is_some());
    }

    #[test]
    fn if_headers_must_close_what_they_open() {
        assert!(if_header_well_formed(b"(<urn:uuid:1> [\"abc\"])"));
        assert!(if_header_well_formed(b"(Not <DAV:no-lock>)"));
        assert!(if_header_well_formed(b"([\"a]b\"])"));
        assert!(!if_header_well_formed(b"(<urn:uuid:1> [\"abc"));
        assert!(!if_header_well_formed(b"(<urn:uuid:1"));
        assert!(!if_header_well_formed(b"([\"]"));
    }

    #[test]
    fn basic_credentials_parse_or_are_none() {
        let h = |s: &str| http::HeaderValue::from_str(s).unwrap();
        // base64("alice:k/ey:x")
        let c = auth::parse_basic(Some(&h("Basic YWxpY2U6ay9leTp4"))).unwrap();
        assert_eq!((c.user.as_str(), c.key.as_str()), ("alice", "k/ey:x"));
        assert!(auth::parse_basic(Some(&h("basic YWxpY2U6ay9leTp4"))).is_some());
        assert!(auth::parse_basic(None).is_none());
        assert!(auth::parse_basic(Some(&h("Bearer abc"))).is_none());
        assert!(auth::parse_basic(Some(&h("Basic !!!"))).is_none());
        // base64("alice:") and base64(":key")
        assert!(auth::parse_basic(Some(&h("Basic YWxpY2U6"))).is_none());
        assert!(auth::parse_basic(Some(&h("Basic OmtleQ=="))).is_none());
    }

    #[test]
    fn client_errors_map_to_webdav_statuses() {
        use dav_server::fs::FsError;
        use dfs_client::Error;
        let m = |e: Error| davfs::fs_error(&e);
        assert_eq!(m(Error::NotFound("x".into())), FsError::NotFound);
        assert_eq!(m(Error::Permission("x".into())), FsError::NotFound);
        assert_eq!(m(Error::Exists("x".into())), FsError::Exists);
        assert_eq!(m(Error::NoSpace("x".into())), FsError::InsufficientStorage);
        assert_eq!(m(Error::InvalidName("bad".into())), FsError::Forbidden);
        assert_eq!(
            m(Error::InvalidName("a name is longer than 255 bytes".into())),
            FsError::PathTooLong
        );
        assert_eq!(m(Error::Unavailable("x".into())), FsError::GeneralFailure);
    }
}
