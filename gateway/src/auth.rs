//! auth: HTTP Basic credentials (dfs user name and access key, as in `auth.txt`) checked by
//! metasrv, and the per-address limit on failed attempts.
//!
//! The gateway keeps no user list: a pair is accepted when metasrv answers `WhoAmI` with those
//! credentials. A pair that passed is trusted for `cache_for` (default 5 s) without asking
//! again, so a removed user or key may keep working that long on this gateway; every data call
//! still carries the credentials to metasrv, which checks them itself. Each pair gets its own
//! [`Client`] (metadata connection and chunk channels), kept while it is used.
//!
//! What must stay true: no request reaches the file system without a pair metasrv accepted
//! (within `cache_for`); a key is never logged; an address with too many failures is refused
//! before metasrv is asked (no key guessing at metasrv's expense).
use dfs_client::{Client, Error, MetaConn};
use dfs_common::auth_file::Credentials;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Failures one address may have within `FAIL_WINDOW` before it is refused for the rest of it.
pub const MAX_FAILURES: u32 = 10;
pub const FAIL_WINDOW: Duration = Duration::from_secs(60);
/// Clients unused this long are dropped.
const IDLE: Duration = Duration::from_secs(600);

pub enum Denied {
    /// Wrong or missing credentials: 401.
    Unauthorized,
    /// Too many failures from this address: 429.
    TooMany,
    /// metasrv could not be asked: 503.
    Unavailable(String),
}

struct Known {
    client: Arc<Client>,
    checked: Instant,
    used: Instant,
}

pub struct Auth {
    meta: Vec<String>,
    timeout: Duration,
    cache_for: Duration,
    /// By user and the sha256 of the key (the key itself is not kept as a map key).
    known: Mutex<HashMap<(String, String), Known>>,
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

/// `Authorization: Basic base64(user:key)`.
pub fn parse_basic(header: Option<&http::HeaderValue>) -> Option<Credentials> {
    use base64::Engine;
    let v = header?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (user, key) = s.split_once(':')?;
    if user.is_empty() || key.is_empty() {
        return None;
    }
    Some(Credentials {
        user: user.to_string(),
        key: key.to_string(),
    })
}

impl Auth {
    pub fn new(meta: Vec<String>, timeout: Duration, cache_for: Duration) -> Auth {
        Auth {
            meta,
            timeout,
            cache_for,
            known: Mutex::default(),
            failures: Mutex::default(),
        }
    }

    fn limited(&self, ip: IpAddr) -> bool {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match f.get(&ip) {
            Some((since, _)) if since.elapsed() > FAIL_WINDOW => {
                f.remove(&ip);
                false
            }
            Some((_, n)) => *n >= MAX_FAILURES,
            None => false,
        }
    }

    fn failed(&self, ip: IpAddr) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if f.len() > 100_000 {
            f.retain(|_, (since, _)| since.elapsed() <= FAIL_WINDOW);
        }
        let e = f.entry(ip).or_insert((Instant::now(), 0));
        if e.0.elapsed() > FAIL_WINDOW {
            *e = (Instant::now(), 0);
        }
        e.1 += 1;
    }

    /// The client for these credentials, once metasrv accepted them.
    pub async fn check(
        &self,
        ip: IpAddr,
        creds: Option<Credentials>,
    ) -> Result<Arc<Client>, Denied> {
        if self.limited(ip) {
            return Err(Denied::TooMany);
        }
        let Some(creds) = creds else {
            // No credentials at all is how every client starts (it asks, gets 401, retries
            // with them): not counted as a failure.
            return Err(Denied::Unauthorized);
        };
        let id = (
            creds.user.clone(),
            hex::encode(Sha256::digest(creds.key.as_bytes())),
        );
        let cached = {
            let mut k = self.known.lock().unwrap_or_else(|e| e.into_inner());
            if k.len() > 1000 {
                k.retain(|_, v| v.used.elapsed() < IDLE);
            }
            k.get_mut(&id).map(|v| {
                v.used = Instant::now();
                (v.client.clone(), v.checked.elapsed() < self.cache_for)
            })
        };
        let client = match cached {
            Some((c, true)) => return Ok(c),
            Some((c, false)) => c,
            None => {
                let conn = MetaConn::with_credentials(&self.meta, Some(creds), self.timeout)
                    .map_err(|e| Denied::Unavailable(e.to_string()))?;
                Arc::new(Client::new(conn))
            }
        };
        match dfs_client::rpc!(client.conn, who_am_i, dfs_proto::Empty {}) {
            Ok(u) if u.name == id.0 => {
                let now = Instant::now();
                let mut k = self.known.lock().unwrap_or_else(|e| e.into_inner());
                k.insert(
                    id,
                    Known {
                        client: client.clone(),
                        checked: now,
                        used: now,
                    },
                );
                Ok(client)
            }
            Ok(_) => {
                self.failed(ip);
                Err(Denied::Unauthorized)
            }
            Err(s) => match Error::from(s) {
                Error::Permission(_) => {
                    self.known
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&id);
                    self.failed(ip);
                    Err(Denied::Unauthorized)
                }
                e => Err(Denied::Unavailable(e.to_string())),
            },
        }
    }
}
