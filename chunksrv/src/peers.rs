//! peers: how this chunk server reaches and recognises other cluster nodes.
//!
//! With TLS (`--tls-cert/--tls-key/--tls-ca`) every outgoing connection shows this server's
//! certificate and checks the other side's (a metasrv certificate for the metadata group, a
//! chunk-server one for replication targets), and callers are recognised by the certificate
//! they showed. Only an `--insecure` server sends and checks the cluster-secret proof.
//!
//! What must stay true: with TLS on, nothing is believed from a header about who a peer is.
use dfs_common::pki::{Identity, Role};
use dfs_common::tls::Tls;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, OnceLock};
use tonic::transport::{Channel, Endpoint};

static TLS: OnceLock<Option<Arc<Tls>>> = OnceLock::new();

/// Set once at startup (`None`: `--insecure`).
pub fn set_tls(tls: Option<Arc<Tls>>) {
    let _ = TLS.set(tls);
}

pub fn tls() -> Option<&'static Arc<Tls>> {
    TLS.get().and_then(Option::as_ref)
}

/// Identities the metadata group shut out (sent with every heartbeat reply).
static REVOKED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

pub fn set_revoked(revoked: Vec<String>) {
    *REVOKED.lock().unwrap_or_else(|p| p.into_inner()) = revoked.into_iter().collect();
}

fn is_revoked(who: &Identity) -> bool {
    REVOKED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&who.to_string())
}

/// A lazy channel on `endpoint` to a server of `role`.
pub fn channel(endpoint: Endpoint, role: Role) -> Channel {
    dfs_common::tls::channel(endpoint, tls(), role)
}

/// Whether the caller of `req` may act as `role`: by its certificate with TLS, by the
/// cluster-secret proof (`proof_ok`) without. The error says what was missing.
pub fn check_caller<T>(
    req: &tonic::Request<T>,
    role: Role,
    proof_ok: impl FnOnce(&str) -> bool,
) -> Result<Option<Identity>, tonic::Status> {
    if tls().is_some() {
        let peer = dfs_common::tls::peer_identity(req);
        return match peer {
            Some(p) if is_revoked(&p) => Err(tonic::Status::permission_denied(format!(
                "{p} is shut out of this cluster (removed from the group, or its certificate revoked)"
            ))),
            Some(p) if p.role == role => Ok(Some(p)),
            Some(p) => Err(tonic::Status::permission_denied(format!(
                "this call is for {} nodes; the caller's certificate is for {p}",
                role.as_str()
            ))),
            None => Err(tonic::Status::permission_denied(format!(
                "this call is for {} nodes: the caller showed no certificate from the cluster CA",
                role.as_str()
            ))),
        };
    }
    let proof = req
        .metadata()
        .get(dfs_common::headers::NODE_AUTH)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if proof_ok(proof) {
        Ok(None)
    } else {
        Err(tonic::Status::permission_denied(
            "this call is for cluster nodes: missing or wrong cluster-secret proof",
        ))
    }
}
