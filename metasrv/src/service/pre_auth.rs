//! pre_auth: a caller that has not shown who it is may send only small requests. gRPC decodes
//! a whole message before a handler can check the caller's key, so without this anyone who
//! reaches the port could make a node buffer 64 MiB (the Raft message limit) per request.
//!
//! Wraps the `Meta` and `RaftTransport` services: a request whose caller shows a metasrv or
//! chunk-server certificate, a known user name with its key, or (on an `--insecure` cluster)
//! the cluster-secret proof is passed on as is; any other request body is cut off after
//! `PRE_AUTH_LIMIT` bytes and refused while being decoded.
//!
//! What must stay true: this only ever limits; whether a caller may do what it asks is still
//! decided by the handlers (this check is repeated there, with the failed-login limiter).
use super::MetaNode;
use dfs_common::pki::Identity;
use dfs_common::tls::PeerIdentity;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::server::NamedService;

/// Largest request body from a caller not (yet) known.
pub const PRE_AUTH_LIMIT: usize = 1024 * 1024;

#[derive(Clone)]
pub struct PreAuthCap<S> {
    inner: S,
    node: Arc<MetaNode>,
}

impl<S> PreAuthCap<S> {
    pub fn new(inner: S, node: Arc<MetaNode>) -> Self {
        PreAuthCap { inner, node }
    }
}

impl<S: NamedService> NamedService for PreAuthCap<S> {
    const NAME: &'static str = S::NAME;
}

impl MetaNode {
    /// Whether the caller of `req` (whose certificate names `peer`) is a cluster node or a
    /// user with the right key.
    fn caller_is_known(&self, req: &http::Request<Body>, peer: Option<&Identity>) -> bool {
        use dfs_common::pki::Role;
        if peer.is_some_and(|p| matches!(p.role, Role::Meta | Role::Chunk)) {
            return true;
        }
        let header = |k: &str| req.headers().get(k).and_then(|v| v.to_str().ok());
        if let (Some(user), Some(key)) = (
            header(dfs_common::headers::USER),
            header(dfs_common::headers::KEY),
        ) {
            let st = self.read_state();
            if st
                .users
                .get(user)
                .is_some_and(|u| dfs_common::keys::key_matches(key, &u.key_hash))
            {
                return true;
            }
        }
        crate::network::tls().is_none()
            && header(dfs_common::headers::NODE_AUTH)
                .is_some_and(|p| self.secret.check_node_proof(p))
    }
}

impl<S> tower_service::Service<http::Request<Body>> for PreAuthCap<S>
where
    S: tower_service::Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        // The certificate is parsed here once; the handlers read the result (`peer_identity`).
        let peer = dfs_common::tls::http_peer_identity(&req);
        let known = self.node.caller_is_known(&req, peer.as_ref());
        req.extensions_mut().insert(PeerIdentity(peer));
        let req = if known {
            req
        } else {
            req.map(|b| Body::new(http_body_util::Limited::new(b, PRE_AUTH_LIMIT)))
        };
        self.inner.call(req)
    }
}
