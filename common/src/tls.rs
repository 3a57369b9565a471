//! tls: TLS on every gRPC connection between dfs processes (rustls, no OpenSSL), with the
//! certificate files reloaded on SIGHUP or when they change, so certificates rotate without a
//! restart.
//!
//! - A node (metasrv, chunksrv) loads `--tls-cert`, `--tls-key` and `--tls-ca`: it serves with
//!   its certificate, asks callers for theirs (optional: users authenticate with their keys)
//!   and presents its own when it calls a peer. A peer's identity is read from the certificate
//!   TLS verified (`peer_identity`), never from a header.
//! - A client (dfsctl, the gateway, a mount) needs only the CA, to know it talks to the
//!   cluster: it checks that the server's certificate names the role it called (`meta.dfs`,
//!   `chunk.dfs`).
//!
//! What must stay true:
//! - Only TLS 1.3; only certificates that chain to the configured CA are accepted.
//! - A reload that fails (a half-copied file, a key that does not match) keeps the running
//!   configuration and says why in the log; connections already open keep theirs, new ones
//!   get the new files.
//! - A slow or silent TLS handshake never holds up the accept loop (each runs in its own task,
//!   with a deadline).
use crate::pki::{self, Identity, Role};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};
use tokio::net::{TcpListener, TcpStream};

/// Longest a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the certificate files are checked for changes.
const RELOAD_POLL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no {what} in PEM form")]
    Empty { path: PathBuf, what: &'static str },
    #[error("{path}: {reason}")]
    Bad { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The files a process's TLS comes from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The cluster CA every peer's certificate must chain to.
    pub ca: PathBuf,
    /// This process's own certificate and key (nodes); a pure client has none.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    /// A node's TLS flags: all three files, or none with `--insecure` (then `Ok(None)`, and
    /// SIGHUP is made harmless). `role` names the certificate to issue in the error.
    pub fn from_flags(
        insecure: bool,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        ca: Option<PathBuf>,
        role: Role,
    ) -> Result<Option<TlsFiles>, TlsError> {
        match (insecure, cert, key, ca) {
            (true, None, None, None) => {
                tracing::warn!(
                    "running --insecure: keys, data and node proofs cross the network in clear"
                );
                ignore_hangups();
                Ok(None)
            }
            (true, ..) => Err(TlsError::Config(
                "--insecure and --tls-* together: choose one".into(),
            )),
            (false, Some(cert), Some(key), Some(ca)) => Ok(Some(TlsFiles {
                ca,
                cert: Some(cert),
                key: Some(key),
            })),
            _ => Err(TlsError::Config(format!(
                "TLS needs --tls-cert, --tls-key and --tls-ca (make them with `dfsctl admin ca init` and `dfsctl admin cert issue --role {} --id N`), or --insecure for plain TCP on a trusted host",
                role.as_str()
            ))),
        }
    }

    fn all(&self) -> Vec<&Path> {
        let mut v = vec![self.ca.as_path()];
        v.extend(self.cert.as_deref());
        v.extend(self.key.as_deref());
        v
    }
}

/// What the files gave, built once per (re)load.
struct Loaded {
    server: Option<Arc<ServerConfig>>,
    client: Arc<ClientConfig>,
    identity: Option<Identity>,
}

/// A process's TLS setup; cheap to share (`Arc`).
pub struct Tls {
    files: TlsFiles,
    loaded: RwLock<Arc<Loaded>>,
    /// The files' modification times at the last load.
    stamps: Mutex<Vec<Option<SystemTime>>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

// ring, not aws-lc: no C toolchain or cmake in the build. (0.23.48 deprecates it for lacking
// post-quantum key exchange, which the cluster's threat model does not need yet.)
//
// AES-128-GCM first: on AES-NI machines it is about 40% faster than AES-256-GCM (openssl speed
// here: 4.8 against 3.4 GB/s), and the bulk of a cluster's traffic is chunk data.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![
        TLS13_AES_128_GCM_SHA256,
        TLS13_AES_256_GCM_SHA384,
        TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(p)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Bad {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read(path)?).map_err(|e| TlsError::Bad {
        path: path.to_path_buf(),
        reason: format!("no private key in PEM form: {e}"),
    })
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load(files: &TlsFiles) -> Result<Loaded, TlsError> {
    let bad = |path: &Path, e: &dyn std::fmt::Display| TlsError::Bad {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut roots = RootCertStore::empty();
    for c in certs(&files.ca)? {
        roots.add(c).map_err(|e| bad(&files.ca, &e))?;
    }
    let roots = Arc::new(roots);
    let own =
        match (&files.cert, &files.key) {
            (Some(c), Some(k)) => Some((certs(c)?, key(k)?, c)),
            (None, None) => None,
            _ => return Err(TlsError::Config(
                "a certificate needs its key and a key its certificate (--tls-cert with --tls-key)"
                    .into(),
            )),
        };
    let identity = match &own {
        Some((chain, _, path)) => Some(pki::identity_of(&chain[0]).map_err(|e| bad(path, &e))?),
        None => None,
    };
    let h2 = vec![b"h2".to_vec()];
    let client_builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots.clone());
    let mut client = match &own {
        Some((chain, key, path)) => client_builder
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(|e| bad(path, &e))?,
        None => client_builder.with_no_client_auth(),
    };
    client.alpn_protocols = h2.clone();
    let server = match own {
        Some((chain, key, path)) => {
            // Callers may come without a certificate (users prove themselves with their
            // keys); a certificate they do present must chain to the cluster CA.
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| TlsError::Config(e.to_string()))?;
            let mut s = ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(|e| TlsError::Config(e.to_string()))?
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)
                .map_err(|e| bad(path, &e))?;
            s.alpn_protocols = h2;
            Some(Arc::new(s))
        }
        None => None,
    };
    Ok(Loaded {
        server,
        client: Arc::new(client),
        identity,
    })
}

impl Tls {
    /// Load the files (an error names the file and what is wrong with it).
    pub fn load(files: TlsFiles) -> Result<Arc<Tls>, TlsError> {
        let stamps = files.all().into_iter().map(mtime).collect();
        let loaded = load(&files)?;
        Ok(Arc::new(Tls {
            files,
            loaded: RwLock::new(Arc::new(loaded)),
            stamps: Mutex::new(stamps),
        }))
    }

    /// A client that checks servers against the CA in `ca` and shows no certificate.
    pub fn client_only(ca: &Path) -> Result<Arc<Tls>, TlsError> {
        Self::load(TlsFiles {
            ca: ca.to_path_buf(),
            cert: None,
            key: None,
        })
    }

    fn current(&self) -> Arc<Loaded> {
        self.loaded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// This process's own identity (from its certificate), if it has one.
    pub fn identity(&self) -> Option<Identity> {
        self.current().identity.clone()
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Load the files again if any changed since the last load (or always, with `force`).
    /// Returns whether a new configuration is in use.
    pub fn reload(&self, force: bool) -> Result<bool, TlsError> {
        let now: Vec<Option<SystemTime>> = self.files.all().into_iter().map(mtime).collect();
        {
            let stamps = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
            if !force && *stamps == now {
                return Ok(false);
            }
        }
        let loaded = load(&self.files)?;
        if let (Some(old), Some(new)) = (self.identity(), &loaded.identity) {
            if old != *new {
                return Err(TlsError::Config(format!(
                    "the new certificate is for {new}, this process is {old}: not switching"
                )));
            }
        }
        *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
        *self.stamps.lock().unwrap_or_else(|p| p.into_inner()) = now;
        Ok(true)
    }

    /// Reload on SIGHUP and whenever the files change, for the life of the process.
    pub fn spawn_reloader(self: &Arc<Self>) {
        let tls = Arc::clone(self);
        tokio::spawn(async move {
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                let force = tokio::select! {
                    _ = tokio::time::sleep(RELOAD_POLL) => false,
                    Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => None } } => true,
                };
                match tls.reload(force) {
                    Ok(true) => tracing::info!(files = ?tls.files, "TLS certificates reloaded"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS certificates not reloaded; keeping the current ones")
                    }
                }
            }
        });
    }

    /// The client configuration new outgoing connections use.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.current().client.clone()
    }

    fn server_config(&self) -> Option<Arc<ServerConfig>> {
        self.current().server.clone()
    }
}

/// For a node without TLS: SIGHUP (`systemctl reload`) has nothing to reload, and must not
/// end the process (its default action).
pub fn ignore_hangups() {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: no TLS certificates to reload (--insecure)");
        }
    });
}

/// Accept TCP connections on `listener` and complete TLS handshakes, each in its own task;
/// the stream yields the connections whose handshake succeeded (for tonic's
/// `serve_with_incoming`). A `tls` without a certificate of its own (a client's) serves
/// nothing: every connection is dropped with an error in the log.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<Tls>,
) -> tokio_stream::wrappers::ReceiverStream<
    Result<tokio_rustls::server::TlsStream<TcpStream>, std::io::Error>,
> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let Some(cfg) = tls.server_config() else {
                tracing::error!("TLS server without a certificate: connection dropped");
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => {
                        let _ = tx.send(Ok(s)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The identity in the certificate a caller presented (verified against the cluster CA by
/// the handshake), or `None` for a caller without one or a connection without TLS. Read
/// from `PeerIdentity` when a layer before the service has already parsed it.
pub fn peer_identity<T>(req: &tonic::Request<T>) -> Option<Identity> {
    if let Some(PeerIdentity(known)) = req.extensions().get::<PeerIdentity>() {
        return known.clone();
    }
    identity_in(req.peer_certs()?.first()?)
}

/// A caller's identity, parsed once per request by a layer in front of a service (it then
/// rides in the request's extensions, where `peer_identity` finds it).
#[derive(Debug, Clone)]
pub struct PeerIdentity(pub Option<Identity>);

/// The caller's identity from an HTTP request under tonic's TLS server.
pub fn http_peer_identity<B>(req: &http::Request<B>) -> Option<Identity> {
    let info = req
        .extensions()
        .get::<tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>>(
        )?;
    identity_in(info.peer_certs()?.first()?)
}

fn identity_in(cert: &CertificateDer<'_>) -> Option<Identity> {
    pki::identity_of(cert).ok()
}

/// A failed call's message with the errors beneath it (a TLS failure is named only there).
pub fn error_chain(s: &tonic::Status) -> String {
    let mut out = s.message().to_string();
    let mut cause = std::error::Error::source(s);
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// Whether a failed call failed on certificates (not trusted, wrong role, refused by the peer).
pub fn is_certificate_error(s: &tonic::Status) -> bool {
    let chain = error_chain(s);
    chain.contains("certificate") || chain.contains("CertificateRequired")
}

/// A connector for tonic channels: TCP, then a TLS handshake that checks the server holds a
/// certificate for `role` from the cluster CA.
#[derive(Clone)]
pub struct Connector {
    tls: Arc<Tls>,
    server_name: ServerName<'static>,
    local: Option<std::net::IpAddr>,
}

impl Connector {
    pub fn new(tls: Arc<Tls>, role: Role) -> Connector {
        let server_name =
            ServerName::try_from(role.server_name()).expect("role server names are DNS names");
        Connector {
            tls,
            server_name,
            local: None,
        }
    }

    /// Connect from this local address (`--source-ip`; tests that need a second one).
    pub fn from_local_address(mut self, ip: Option<std::net::IpAddr>) -> Connector {
        self.local = ip;
        self
    }
}

type ConnectFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<
                    hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
                    std::io::Error,
                >,
            > + Send,
    >,
>;

impl tower_service::Service<http::Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = ConnectFuture;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let cfg = self.tls.client_config();
        let name = self.server_name.clone();
        let local = self.local;
        Box::pin(async move {
            let host = uri.host().unwrap_or("127.0.0.1").to_string();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = match local {
                None => TcpStream::connect((host.trim_matches(['[', ']']), port)).await?,
                Some(ip) => {
                    let addr = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
                        .await?
                        .next()
                        .ok_or_else(|| std::io::Error::other(format!("{host} has no address")))?;
                    let socket = if addr.is_ipv4() {
                        tokio::net::TcpSocket::new_v4()?
                    } else {
                        tokio::net::TcpSocket::new_v6()?
                    };
                    socket.bind(std::net::SocketAddr::new(ip, 0))?;
                    socket.connect(addr).await?
                }
            };
            tcp.set_nodelay(true)?;
            let s = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await?;
            Ok(hyper_util::rt::TokioIo::new(s))
        })
    }
}

/// The certificate the server at `addr` (a `role` server) shows in a fresh handshake (to
/// check which certificate a node serves, e.g. after a rotation).
pub async fn server_certificate(
    addr: &str,
    tls: &Arc<Tls>,
    role: Role,
) -> std::io::Result<CertificateDer<'static>> {
    let uri: http::Uri = format!("http://{addr}")
        .parse()
        .map_err(|e| std::io::Error::other(format!("bad address {addr:?}: {e}")))?;
    let mut c = Connector::new(Arc::clone(tls), role);
    let io = tower_service::Service::call(&mut c, uri).await?;
    let (_, session) = io.inner().get_ref();
    session
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned())
        .ok_or_else(|| std::io::Error::other("the server showed no certificate"))
}

/// The address this process's outgoing connections leave from (`--source-ip`), once set.
static SOURCE_IP: std::sync::OnceLock<std::net::IpAddr> = std::sync::OnceLock::new();

/// Make every later `channel` of this process connect from `ip` (a node's `--source-ip`: on a
/// host with several addresses, peers and firewall rules see the node's own). Set once, at
/// start; a second call is refused.
pub fn set_source_ip(ip: std::net::IpAddr) -> Result<(), std::net::IpAddr> {
    SOURCE_IP.set(ip)
}

/// A lazy channel on `endpoint`: through TLS (the server must hold a `role` certificate) when
/// `tls` is given, plain TCP otherwise; from the source address when one is set.
pub fn channel(
    endpoint: tonic::transport::Endpoint,
    tls: Option<&Arc<Tls>>,
    role: Role,
) -> tonic::transport::Channel {
    let source = SOURCE_IP.get().copied();
    match tls {
        Some(t) => endpoint.connect_with_connector_lazy(
            Connector::new(Arc::clone(t), role).from_local_address(source),
        ),
        None => endpoint.local_address(source).connect_lazy(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{init_ca, issue, Identity, Role};

    fn node(dir: &Path, ca: &Path, role: Role, id: &str) -> TlsFiles {
        let out = issue(ca, &Identity::new(role, id).unwrap(), &[], dir, 5).unwrap();
        TlsFiles {
            ca: ca.join(pki::CA_CERT),
            cert: Some(out.cert),
            key: Some(out.key),
        }
    }

    #[test]
    fn loads_and_reloads_only_on_change() {
        let d = tempfile::tempdir().unwrap();
        let ca = d.path().join("ca");
        init_ca(&ca, "t", 5).unwrap();
        let files = node(d.path(), &ca, Role::Meta, "1");
        let tls = Tls::load(files.clone()).unwrap();
        assert_eq!(tls.identity().unwrap().to_string(), "meta 1");
        assert!(!tls.reload(false).unwrap());
        // A broken key keeps the running configuration.
        std::fs::write(files.key.as_ref().unwrap(), b"junk").unwrap();
        assert!(tls.reload(true).is_err());
        assert!(tls.server_config().is_some());
        // A certificate for another identity is not taken either.
        issue(
            &ca,
            &Identity::new(Role::Meta, "2").unwrap(),
            &[],
            d.path(),
            5,
        )
        .unwrap();
        let other = TlsFiles {
            cert: Some(d.path().join("meta-2.pem")),
            key: Some(d.path().join("meta-2.key")),
            ..files.clone()
        };
        assert!(Tls::load(other).is_ok());
        node(d.path(), &ca, Role::Meta, "1");
        assert!(tls.reload(true).unwrap());
    }

    #[tokio::test]
    async fn handshake_checks_role_and_ca() {
        let d = tempfile::tempdir().unwrap();
        let ca = d.path().join("ca");
        init_ca(&ca, "t", 5).unwrap();
        let server = Tls::load(node(d.path(), &ca, Role::Chunk, "3")).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut inc = incoming(listener, server);
        tokio::spawn(async move {
            use tokio_stream::StreamExt;
            while let Some(Ok(s)) = inc.next().await {
                drop(s);
            }
        });
        let uri: http::Uri = format!("http://{addr}").parse().unwrap();
        let client = Tls::client_only(&ca.join(pki::CA_CERT)).unwrap();
        use tower_service::Service;
        // Right CA and role: connects.
        assert!(Connector::new(client.clone(), Role::Chunk)
            .call(uri.clone())
            .await
            .is_ok());
        // Expecting a metadata node, but the server is a chunk server: refused.
        assert!(Connector::new(client, Role::Meta)
            .call(uri.clone())
            .await
            .is_err());
        // A client that trusts another CA: refused.
        let other = d.path().join("other");
        init_ca(&other, "o", 5).unwrap();
        let stranger = Tls::client_only(&other.join(pki::CA_CERT)).unwrap();
        assert!(Connector::new(stranger, Role::Chunk)
            .call(uri)
            .await
            .is_err());
    }
}
