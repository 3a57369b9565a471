//! The cluster secret and what it signs: chunk tokens that a chunk server checks without
//! asking the leader, receipts a chunk server signs for what it stored, and the proof a node
//! shows to its peers.
//!
//! Keys: every chunk server has its own key, `HMAC(secret, "chunk-server-key"|node_id)`,
//! handed to it when it registers. It holds no other key, so a stolen chunk-server disk or
//! memory yields only tokens and receipts for that one server. The metadata nodes hold the
//! secret and derive any server's key.
//!
//! A chunk token is `op.chunk_id.max_bytes.expiry_ms.<id>:<mac>,<id>:<mac>,...`: one MAC per
//! chunk server it was issued for, each `HMAC(that server's key, op|chunk|max_bytes|expiry|id)`
//! (128 bits, hex). What must stay true:
//! - a chunk server accepts a token only when its own id is listed and its MAC verifies with
//!   its own key; a write never stores more than `max_bytes` (0 on a read token: not used);
//! - a metadata node accepts a token it issued only when every listed MAC verifies (one
//!   server's key cannot forge a token that a metadata node takes);
//! - a receipt `HMAC(key, "stored"|chunk|size|crc32c|id)` is made only after the chunk is
//!   durable on that server, and a commit names a replica only with its receipt.
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::path::Path;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of a MAC kept in tokens and receipts (128 bits; 32 hex digits).
const MAC_BYTES: usize = 16;
/// Length of a chunk server's key.
pub const CHUNK_SERVER_KEY_LEN: usize = 32;

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
    #[error("token was issued for chunk servers {servers:?}, not this one ({this})")]
    WrongServer { servers: Vec<u64>, this: u64 },
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

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(key).expect("hmac takes any key length");
    for p in parts {
        m.update(p);
        m.update(b"|");
    }
    m.finalize().into_bytes().into()
}

/// A chunk token taken apart (not yet verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkToken<'a> {
    pub op: &'a str,
    pub chunk_id: &'a str,
    pub max_bytes: u64,
    pub expires_ms: u64,
    max_text: &'a str,
    exp_text: &'a str,
    /// (server id, its MAC in hex), in token order.
    macs: Vec<(u64, &'a str)>,
}

impl<'a> ChunkToken<'a> {
    pub fn parse(token: &'a str) -> Result<Self, TokenError> {
        let (op, rest) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let mut it = rest.rsplitn(4, '.');
        let list = it.next().ok_or(TokenError::Malformed)?;
        let exp_text = it.next().ok_or(TokenError::Malformed)?;
        let max_text = it.next().ok_or(TokenError::Malformed)?;
        let chunk_id = it.next().ok_or(TokenError::Malformed)?;
        let expires_ms = exp_text.parse().map_err(|_| TokenError::Malformed)?;
        let max_bytes = max_text.parse().map_err(|_| TokenError::Malformed)?;
        let mut macs = Vec::new();
        for pair in list.split(',') {
            let (id, mac) = pair.split_once(':').ok_or(TokenError::Malformed)?;
            let id: u64 = id.parse().map_err(|_| TokenError::Malformed)?;
            if mac.len() != 2 * MAC_BYTES {
                return Err(TokenError::Malformed);
            }
            macs.push((id, mac));
        }
        if chunk_id.is_empty() || macs.is_empty() {
            return Err(TokenError::Malformed);
        }
        Ok(Self {
            op,
            chunk_id,
            max_bytes,
            expires_ms,
            max_text,
            exp_text,
            macs,
        })
    }

    /// The chunk servers this token was issued for, in token order.
    pub fn servers(&self) -> Vec<u64> {
        self.macs.iter().map(|(id, _)| *id).collect()
    }

    fn check_scope(&self, op: Op, chunk_id: &str, now_ms: u64) -> Result<(), TokenError> {
        if self.op != op.as_str() || self.chunk_id != chunk_id {
            return Err(TokenError::WrongScope);
        }
        if now_ms > self.expires_ms {
            return Err(TokenError::Expired);
        }
        Ok(())
    }
}

fn token_mac(key: &[u8], op: &str, chunk_id: &str, max: &str, exp: &str, id: u64) -> String {
    let id = id.to_string();
    let m = hmac(
        key,
        &[
            b"chunk",
            op.as_bytes(),
            chunk_id.as_bytes(),
            max.as_bytes(),
            exp.as_bytes(),
            id.as_bytes(),
        ],
    );
    hex::encode(&m[..MAC_BYTES])
}

/// One chunk server's own key: verifies the tokens issued for it and signs its receipts.
#[derive(Clone)]
pub struct ChunkServerKey {
    node_id: u64,
    key: [u8; CHUNK_SERVER_KEY_LEN],
}

impl std::fmt::Debug for ChunkServerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChunkServerKey(node {}, ..)", self.node_id)
    }
}

impl ChunkServerKey {
    /// The key as sent in the registration reply; `None` unless exactly 32 bytes.
    pub fn from_bytes(node_id: u64, key: &[u8]) -> Option<Self> {
        Some(Self {
            node_id,
            key: key.try_into().ok()?,
        })
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.key
    }

    /// Check `token` allows `op` on `chunk_id` on this server at `now_ms`; the bytes a write
    /// may store (`max_bytes`).
    pub fn verify_chunk(
        &self,
        token: &str,
        op: Op,
        chunk_id: &str,
        now_ms: u64,
    ) -> Result<u64, TokenError> {
        let t = ChunkToken::parse(token)?;
        let Some((_, mac)) = t.macs.iter().find(|(id, _)| *id == self.node_id) else {
            return Err(TokenError::WrongServer {
                servers: t.servers(),
                this: self.node_id,
            });
        };
        self.check_mac(&t, mac)?;
        t.check_scope(op, chunk_id, now_ms)?;
        Ok(t.max_bytes)
    }

    fn check_mac(&self, t: &ChunkToken<'_>, mac: &str) -> Result<(), TokenError> {
        let expect = token_mac(
            &self.key,
            t.op,
            t.chunk_id,
            t.max_text,
            t.exp_text,
            self.node_id,
        );
        if crate::keys::constant_time_eq(expect.as_bytes(), mac.as_bytes()) {
            Ok(())
        } else {
            Err(TokenError::BadSignature)
        }
    }

    fn mac_for(&self, op: Op, chunk_id: &str, max: &str, exp: &str) -> String {
        token_mac(&self.key, op.as_str(), chunk_id, max, exp, self.node_id)
    }

    /// This server's signed word that it stored `chunk_id` whole (`size` bytes, `crc32c`).
    pub fn receipt(&self, chunk_id: &str, size: u64, crc32c: u32) -> String {
        let (size, crc, id) = (
            size.to_string(),
            crc32c.to_string(),
            self.node_id.to_string(),
        );
        let m = hmac(
            &self.key,
            &[
                b"stored",
                chunk_id.as_bytes(),
                size.as_bytes(),
                crc.as_bytes(),
                id.as_bytes(),
            ],
        );
        hex::encode(&m[..MAC_BYTES])
    }

    pub fn check_receipt(&self, receipt: &str, chunk_id: &str, size: u64, crc32c: u32) -> bool {
        crate::keys::constant_time_eq(
            self.receipt(chunk_id, size, crc32c).as_bytes(),
            receipt.as_bytes(),
        )
    }
}

/// Chunk-server keys derived from the secret once each (a commit checks many chunks on the
/// same few servers).
pub struct KeyRing<'a> {
    secret: &'a ClusterSecret,
    keys: HashMap<u64, ChunkServerKey>,
}

impl KeyRing<'_> {
    pub fn key(&mut self, node_id: u64) -> &ChunkServerKey {
        self.keys
            .entry(node_id)
            .or_insert_with(|| self.secret.chunk_server_key(node_id))
    }

    /// Check a token this cluster issued: every listed server's MAC must verify. Returns the
    /// token's parts (servers, size allowed).
    pub fn verify_chunk<'t>(
        &mut self,
        token: &'t str,
        op: Op,
        chunk_id: &str,
        now_ms: u64,
    ) -> Result<ChunkToken<'t>, TokenError> {
        let t = ChunkToken::parse(token)?;
        for (id, mac) in &t.macs {
            self.key(*id).check_mac(&t, mac)?;
        }
        t.check_scope(op, chunk_id, now_ms)?;
        Ok(t)
    }

    /// Whether `receipt` is chunk server `node_id`'s receipt for this chunk, size and CRC.
    pub fn check_receipt(
        &mut self,
        node_id: u64,
        receipt: &str,
        chunk_id: &str,
        size: u64,
        crc32c: u32,
    ) -> bool {
        self.key(node_id)
            .check_receipt(receipt, chunk_id, size, crc32c)
    }
}

/// Hex digits of a cursor's MAC (128 bits).
const CURSOR_MAC_HEX: usize = 32;

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
        hex::encode(hmac(&self.secret, parts))
    }

    /// Chunk server `node_id`'s own key (given to it when it registers).
    pub fn chunk_server_key(&self, node_id: u64) -> ChunkServerKey {
        let id = node_id.to_string();
        ChunkServerKey {
            node_id,
            key: hmac(&self.secret, &[b"chunk-server-key", id.as_bytes()]),
        }
    }

    /// Keys derived on demand, each once.
    pub fn key_ring(&self) -> KeyRing<'_> {
        KeyRing {
            secret: self,
            keys: HashMap::new(),
        }
    }

    /// Token allowing `op` on `chunk_id` until `expires_ms` (unix ms) on the chunk servers
    /// `servers` only; a write of at most `max_bytes` (0 on reads: not used).
    pub fn sign_chunk(
        &self,
        op: Op,
        chunk_id: &str,
        max_bytes: u64,
        expires_ms: u64,
        servers: &[u64],
    ) -> String {
        let (max, exp) = (max_bytes.to_string(), expires_ms.to_string());
        let mut ring = self.key_ring();
        let mut seen = Vec::with_capacity(servers.len());
        let macs: Vec<String> = servers
            .iter()
            .filter(|id| {
                let new = !seen.contains(*id);
                seen.push(**id);
                new
            })
            .map(|id| format!("{id}:{}", ring.key(*id).mac_for(op, chunk_id, &max, &exp)))
            .collect();
        format!("{}.{chunk_id}.{max}.{exp}.{}", op.as_str(), macs.join(","))
    }

    /// Check a token this cluster issued (every listed server's MAC; see [`KeyRing`]).
    pub fn verify_chunk<'t>(
        &self,
        token: &'t str,
        op: Op,
        chunk_id: &str,
        now_ms: u64,
    ) -> Result<ChunkToken<'t>, TokenError> {
        self.key_ring().verify_chunk(token, op, chunk_id, now_ms)
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

    /// A cursor a client may hand back but not make up (list and export page tokens):
    /// `payload`, then a MAC over it, `purpose` and `bound` (whom and what it was issued for).
    pub fn seal_cursor(&self, purpose: &str, bound: &str, payload: &str) -> String {
        let mac = self.mac(&[purpose.as_bytes(), bound.as_bytes(), payload.as_bytes()]);
        format!("{payload}~{}", &mac[..CURSOR_MAC_HEX])
    }

    /// The payload of a cursor sealed by [`Self::seal_cursor`] with the same purpose and
    /// binding; `None` for anything else (forged, damaged, or issued for another caller).
    pub fn open_cursor<'t>(&self, purpose: &str, bound: &str, token: &'t str) -> Option<&'t str> {
        let (payload, mac) = token.rsplit_once('~')?;
        let want = self.mac(&[purpose.as_bytes(), bound.as_bytes(), payload.as_bytes()]);
        crate::keys::constant_time_eq(&want.as_bytes()[..CURSOR_MAC_HEX], mac.as_bytes())
            .then_some(payload)
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
    fn cursors_open_only_for_their_purpose_and_caller() {
        let s = ClusterSecret::new(b"0123456789abcdef0123".to_vec());
        let t = s.seal_cursor("list", "alice", "7.1.6162");
        assert_eq!(s.open_cursor("list", "alice", &t), Some("7.1.6162"));
        assert_eq!(s.open_cursor("list", "bob", &t), None, "another caller's");
        assert_eq!(
            s.open_cursor("export", "alice", &t),
            None,
            "another purpose"
        );
        let forged = t.replacen("7.", "8.", 1);
        assert_eq!(
            s.open_cursor("list", "alice", &forged),
            None,
            "payload changed"
        );
        assert_eq!(s.open_cursor("list", "alice", "7.1.6162"), None, "no MAC");
        let other = ClusterSecret::new(b"another secret, long enough".to_vec());
        assert_eq!(
            other.open_cursor("list", "alice", &t),
            None,
            "another cluster's"
        );
    }

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

    fn secret() -> ClusterSecret {
        ClusterSecret::new(b"0123456789abcdef".to_vec())
    }

    #[test]
    fn server_keys_are_per_server_and_per_secret() {
        let s = secret();
        let (k1, k2) = (s.chunk_server_key(1), s.chunk_server_key(2));
        assert_eq!(k1.as_bytes().len(), CHUNK_SERVER_KEY_LEN);
        assert_ne!(k1.as_bytes(), k2.as_bytes());
        assert_eq!(k1.as_bytes(), s.chunk_server_key(1).as_bytes());
        let other = ClusterSecret::new(b"fedcba9876543210".to_vec());
        assert_ne!(k1.as_bytes(), other.chunk_server_key(1).as_bytes());
        let back = ChunkServerKey::from_bytes(1, k1.as_bytes()).unwrap();
        assert_eq!(back.as_bytes(), k1.as_bytes());
        assert!(ChunkServerKey::from_bytes(1, &[0u8; 16]).is_none());
        assert!(!format!("{k1:?}").contains(&hex::encode(k1.as_bytes())));
    }

    #[test]
    fn a_server_takes_only_tokens_issued_for_it() {
        let s = secret();
        let t = s.sign_chunk(Op::Write, "c1", 4096, 1000, &[1, 3]);
        assert_eq!(
            s.chunk_server_key(1)
                .verify_chunk(&t, Op::Write, "c1", 999)
                .unwrap(),
            4096
        );
        assert_eq!(
            s.chunk_server_key(3)
                .verify_chunk(&t, Op::Write, "c1", 999)
                .unwrap(),
            4096
        );
        let e = s
            .chunk_server_key(2)
            .verify_chunk(&t, Op::Write, "c1", 999)
            .unwrap_err();
        assert!(
            matches!(e, TokenError::WrongServer { ref servers, this: 2 } if servers == &[1, 3])
        );
        assert_eq!(
            e.to_string(),
            "token was issued for chunk servers [1, 3], not this one (2)"
        );
        // Server 2's key under server 1's id (a thief re-labelling a key) does not verify.
        let stolen = ChunkServerKey::from_bytes(1, s.chunk_server_key(2).as_bytes()).unwrap();
        assert!(matches!(
            stolen.verify_chunk(&t, Op::Write, "c1", 1),
            Err(TokenError::BadSignature)
        ));
        // Another cluster's key for the same id.
        let other = ClusterSecret::new(b"fedcba9876543210".to_vec()).chunk_server_key(1);
        assert!(matches!(
            other.verify_chunk(&t, Op::Write, "c1", 1),
            Err(TokenError::BadSignature)
        ));
        // The metadata side checks every MAC.
        let parts = s.verify_chunk(&t, Op::Write, "c1", 999).unwrap();
        assert_eq!(
            (parts.servers(), parts.max_bytes, parts.expires_ms),
            (vec![1, 3], 4096, 1000)
        );
    }

    #[test]
    fn tokens_check_scope_expiry_and_signature() {
        let s = secret();
        let k = s.chunk_server_key(5);
        let t = s.sign_chunk(Op::Read, "c1", 0, 1000, &[5]);
        assert!(k.verify_chunk(&t, Op::Read, "c1", 999).is_ok());
        assert!(s.verify_chunk(&t, Op::Read, "c1", 1000).is_ok());
        for check in [
            k.verify_chunk(&t, Op::Read, "c1", 1001),
            s.verify_chunk(&t, Op::Read, "c1", 1001).map(|_| 0),
        ] {
            assert!(matches!(check, Err(TokenError::Expired)));
        }
        assert!(matches!(
            k.verify_chunk(&t, Op::Write, "c1", 1),
            Err(TokenError::WrongScope)
        ));
        assert!(matches!(
            k.verify_chunk(&t, Op::Read, "c2", 1),
            Err(TokenError::WrongScope)
        ));
        for junk in [
            "junk",
            "r.c1.0.1000",
            "r.c1.0.1000.",
            "r.c1.x.1000.5:00",
            "r..0.1000.5:00",
        ] {
            assert!(
                matches!(
                    k.verify_chunk(junk, Op::Read, "c1", 1),
                    Err(TokenError::Malformed)
                ),
                "{junk}"
            );
            assert!(
                matches!(
                    s.verify_chunk(junk, Op::Read, "c1", 1),
                    Err(TokenError::Malformed)
                ),
                "{junk}"
            );
        }
        assert!(s.check_node_proof(&s.node_proof()));
        assert!(!s.check_node_proof(&ClusterSecret::new(b"fedcba9876543210".to_vec()).node_proof()));
    }

    #[test]
    fn every_tampered_field_breaks_the_signature() {
        let s = secret();
        let (k1, k2) = (s.chunk_server_key(1), s.chunk_server_key(2));
        let t = s.sign_chunk(Op::Write, "c1", 4096, 1000, &[1, 2]);
        let mac2 = t.rsplit(',').next().unwrap().to_string();
        let tampered = [
            t.replacen("w.", "r.", 1),
            t.replace(".c1.", ".c9."),
            t.replace(".4096.", ".999999."),
            t.replace(".1000.", ".9999."),
            // Server 2's MAC relabelled as server 3's, and a MAC with one digit changed.
            t.replace(&mac2, &mac2.replacen("2:", "3:", 1)),
            {
                let mut b = t.clone().into_bytes();
                let last = b.len() - 1;
                b[last] = if b[last] == b'0' { b'1' } else { b'0' };
                String::from_utf8(b).unwrap()
            },
        ];
        for bad in &tampered {
            let (op, chunk) = (
                if bad.starts_with("r.") {
                    Op::Read
                } else {
                    Op::Write
                },
                ChunkToken::parse(bad).unwrap().chunk_id.to_string(),
            );
            assert!(
                s.verify_chunk(bad, op, &chunk, 1).is_err(),
                "metasrv took {bad}"
            );
            let on2 = k2.verify_chunk(bad, op, &chunk, 1);
            assert!(on2.is_err(), "server 2 took {bad}");
        }
        // A token one server's key can forge (its own MAC only) is refused by the metadata
        // side when it names another server with a made-up MAC.
        let forged = format!(
            "w.c1.4096.99999999.1:{},2:{}",
            k1.mac_for(Op::Write, "c1", "4096", "99999999"),
            "0".repeat(32)
        );
        assert!(k1.verify_chunk(&forged, Op::Write, "c1", 1).is_ok());
        assert!(matches!(
            s.verify_chunk(&forged, Op::Write, "c1", 1),
            Err(TokenError::BadSignature)
        ));
        assert!(matches!(
            k2.verify_chunk(&forged, Op::Write, "c1", 1),
            Err(TokenError::BadSignature)
        ));
    }

    #[test]
    fn receipts_bind_chunk_size_crc_and_server() {
        let s = secret();
        let k = s.chunk_server_key(4);
        let r = k.receipt("c1", 100, 0xabcd);
        assert_eq!(r.len(), 2 * MAC_BYTES);
        let mut ring = s.key_ring();
        assert!(ring.check_receipt(4, &r, "c1", 100, 0xabcd));
        assert!(!ring.check_receipt(5, &r, "c1", 100, 0xabcd));
        assert!(!ring.check_receipt(4, &r, "c2", 100, 0xabcd));
        assert!(!ring.check_receipt(4, &r, "c1", 101, 0xabcd));
        assert!(!ring.check_receipt(4, &r, "c1", 100, 0xabce));
        assert!(!ring.check_receipt(4, "", "c1", 100, 0xabcd));
        assert!(!ring.check_receipt(
            4,
            &s.chunk_server_key(5).receipt("c1", 100, 0xabcd),
            "c1",
            100,
            0xabcd
        ));
    }
}
