//! The cluster secret and what it signs: chunk tokens (operation, chunk id, expiry) that a
//! chunk server checks without asking the leader, and the proof a node shows to its peers.
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::Path;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token is for another operation or chunk")]
    WrongScope,
    #[error("token has expired")]
    Expired,
    #[error("token signature is invalid")]
    BadSignature,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read cluster secret file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cluster secret in {path} is shorter than 16 bytes")]
    TooShort { path: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Read => "r",
            Op::Write => "w",
        }
    }
}

/// Holds the cluster secret; signs and checks everything derived from it.
#[derive(Clone)]
pub struct ClusterSecret {
    secret: Vec<u8>,
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

impl ClusterSecret {
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Self {
            secret: secret.into(),
        }
    }

    /// Read a secret file (surrounding whitespace ignored).
    pub fn load(path: &Path) -> Result<Self, SecretError> {
        let p = path.display().to_string();
        let raw = std::fs::read(path).map_err(|source| SecretError::Read {
            path: p.clone(),
            source,
        })?;
        let text = String::from_utf8_lossy(&raw);
        let trimmed = text.trim();
        if trimmed.len() < 16 {
            return Err(SecretError::TooShort { path: p });
        }
        Ok(Self::new(trimmed.as_bytes().to_vec()))
    }

    fn mac(&self, parts: &[&[u8]]) -> String {
        let mut m = HmacSha256::new_from_slice(&self.secret).expect("hmac takes any key length");
        for p in parts {
            m.update(p);
            m.update(b"|");
        }
        hex::encode(m.finalize().into_bytes())
    }

    /// Token `op.chunk.expiry_ms.mac` allowing `op` on `chunk_id` until `expires_ms` (unix ms).
    pub fn sign_chunk(&self, op: Op, chunk_id: &str, expires_ms: u64) -> String {
        let exp = expires_ms.to_string();
        let mac = self.mac(&[
            b"chunk",
            op.as_str().as_bytes(),
            chunk_id.as_bytes(),
            exp.as_bytes(),
        ]);
        format!("{}.{}.{}.{}", op.as_str(), chunk_id, exp, mac)
    }

    pub fn verify_chunk(
        &self,
        token: &str,
        op: Op,
        chunk_id: &str,
        now_ms: u64,
    ) -> Result<(), TokenError> {
        let mut it = token.rsplitn(3, '.');
        let mac = it.next().ok_or(TokenError::Malformed)?;
        let exp = it.next().ok_or(TokenError::Malformed)?;
        let head = it.next().ok_or(TokenError::Malformed)?;
        let (tok_op, tok_chunk) = head.split_once('.').ok_or(TokenError::Malformed)?;
        let exp_ms: u64 = exp.parse().map_err(|_| TokenError::Malformed)?;
        let expect = self.mac(&[
            b"chunk",
            tok_op.as_bytes(),
            tok_chunk.as_bytes(),
            exp.as_bytes(),
        ]);
        if !crate::keys::constant_time_eq(expect.as_bytes(), mac.as_bytes()) {
            return Err(TokenError::BadSignature);
        }
        if tok_op != op.as_str() || tok_chunk != chunk_id {
            return Err(TokenError::WrongScope);
        }
        if now_ms > exp_ms {
            return Err(TokenError::Expired);
        }
        Ok(())
    }

    /// The access key issued to user `name` by the call with `request_id`: the same for every
    /// retry of that call, unguessable without the secret (64 hex digits, like a random key).
    pub fn user_key(&self, name: &str, request_id: &str) -> String {
        self.mac(&[b"user-key", name.as_bytes(), request_id.as_bytes()])
    }

    /// Proof that a process holds the cluster secret (sent by nodes in `x-dfs-node-auth`).
    pub fn node_proof(&self) -> String {
        self.mac(&[b"dfs-node"])
    }

    pub fn check_node_proof(&self, proof: &str) -> bool {
        crate::keys::constant_time_eq(self.node_proof().as_bytes(), proof.as_bytes())
    }

    /// A stable fingerprint of the secret, safe to store (to detect a changed secret).
    pub fn fingerprint(&self) -> String {
        self.mac(&[b"fingerprint"])[..16].to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_keys_repeat_per_request_and_differ_otherwise() {
        let s = ClusterSecret::new(b"0123456789abcdef0123".to_vec());
        let k = s.user_key("bob", "r1");
        assert_eq!(k.len(), 64);
        assert!(k.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(k, s.user_key("bob", "r1"));
        assert_ne!(k, s.user_key("bob", "r2"));
        assert_ne!(k, s.user_key("alice", "r1"));
        assert_ne!(
            k,
            ClusterSecret::new(b"another-secret-0123".to_vec()).user_key("bob", "r1")
        );
    }

    #[test]
    fn tokens_check_scope_expiry_and_signature() {
        let s = ClusterSecret::new(b"0123456789abcdef".to_vec());
        let other = ClusterSecret::new(b"fedcba9876543210".to_vec());
        let t = s.sign_chunk(Op::Read, "c1", 1000);
        assert!(s.verify_chunk(&t, Op::Read, "c1", 999).is_ok());
        assert!(matches!(
            s.verify_chunk(&t, Op::Read, "c1", 1001),
            Err(TokenError::Expired)
        ));
        assert!(matches!(
            s.verify_chunk(&t, Op::Write, "c1", 1),
            Err(TokenError::WrongScope)
        ));
        assert!(matches!(
            s.verify_chunk(&t, Op::Read, "c2", 1),
            Err(TokenError::WrongScope)
        ));
        assert!(matches!(
            other.verify_chunk(&t, Op::Read, "c1", 1),
            Err(TokenError::BadSignature)
        ));
        assert!(matches!(
            s.verify_chunk("junk", Op::Read, "c1", 1),
            Err(TokenError::Malformed)
        ));
        let forged = t.replace(".1000.", ".9999.");
        assert!(matches!(
            s.verify_chunk(&forged, Op::Read, "c1", 1),
            Err(TokenError::BadSignature)
        ));
        assert!(s.check_node_proof(&s.node_proof()));
        assert!(!s.check_node_proof(&other.node_proof()));
    }
}
