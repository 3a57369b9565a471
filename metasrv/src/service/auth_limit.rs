//! Failed logins, rate limited: an address that keeps sending wrong keys for a user name is
//! refused for that name for the rest of the minute (even with a right key: it cannot go on
//! guessing), while the user logs in as usual from elsewhere. Per address *and* name, not per
//! address alone: a WebDAV gateway carries many users from one address, and one of them being
//! guessed at must not lock out the others. Failures per user name are counted too, for the
//! log. Self-registration is limited per address.
//!
//! What must stay true: the check before a key is compared costs one map lookup; the maps
//! hold at most `MAX_TRACKED` entries (an attacker with many addresses cannot grow them
//! without bound: past it the oldest window is dropped whole); nothing here ever refuses a
//! request that carries no address (internal calls).
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed logins one address may make per window before it is refused.
pub const MAX_FAILURES_PER_ADDR: u32 = 20;
/// Self-registrations one address may make per window.
pub const MAX_REGISTRATIONS_PER_ADDR: u32 = 5;
/// How long a window lasts (and so, at most, a refusal).
pub const WINDOW: Duration = Duration::from_secs(60);
/// Most addresses and user names tracked at once.
const MAX_TRACKED: usize = 100_000;

#[derive(Default)]
struct Window {
    started: Option<Instant>,
    by_addr: HashMap<(IpAddr, String), u32>,
    registrations: HashMap<IpAddr, u32>,
    by_user: HashMap<String, u32>,
}

impl Window {
    /// Start a new window when the current one is over (or the maps are full).
    fn roll(&mut self, now: Instant) {
        let full =
            self.by_addr.len() + self.by_user.len() + self.registrations.len() >= MAX_TRACKED;
        if full || self.started.is_none_or(|s| now.duration_since(s) >= WINDOW) {
            *self = Window {
                started: Some(now),
                ..Default::default()
            };
        }
    }

    fn wait(&self, now: Instant) -> u64 {
        self.started.map_or(0, |s| {
            WINDOW.saturating_sub(now.duration_since(s)).as_secs() + 1
        })
    }
}

#[derive(Default)]
pub struct AuthLimiter {
    window: Mutex<Window>,
}

impl AuthLimiter {
    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Before checking a key: `Err(seconds to wait)` when `addr` failed too often for `user`.
    pub fn check(&self, addr: Option<IpAddr>, user: &str) -> Result<(), u64> {
        let Some(addr) = addr else { return Ok(()) };
        let now = Instant::now();
        let mut w = self.lock();
        w.roll(now);
        match w.by_addr.get(&(addr, user.to_string())) {
            Some(n) if *n >= MAX_FAILURES_PER_ADDR => Err(w.wait(now)),
            _ => Ok(()),
        }
    }

    /// A wrong key (or unknown user) from `addr` for `user`; returns the user's failures in
    /// this window.
    pub fn failed(&self, addr: Option<IpAddr>, user: &str) -> u32 {
        let mut w = self.lock();
        w.roll(Instant::now());
        if let Some(a) = addr {
            *w.by_addr.entry((a, user.to_string())).or_default() += 1;
        }
        let n = w.by_user.entry(user.to_string()).or_default();
        *n += 1;
        *n
    }

    /// A self-registration from `addr`: `Err(seconds to wait)` past the limit.
    pub fn register(&self, addr: Option<IpAddr>) -> Result<(), u64> {
        let Some(addr) = addr else { return Ok(()) };
        let now = Instant::now();
        let mut w = self.lock();
        w.roll(now);
        let n = w.registrations.entry(addr).or_default();
        if *n >= MAX_REGISTRATIONS_PER_ADDR {
            return Err(w.wait(now));
        }
        *n += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_that_keeps_failing_is_refused_and_no_other() {
        let l = AuthLimiter::default();
        let (bad, good): (IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for i in 1..=MAX_FAILURES_PER_ADDR {
            assert!(l.check(Some(bad), "alice").is_ok());
            assert_eq!(l.failed(Some(bad), "alice"), i);
        }
        let wait = l.check(Some(bad), "alice").unwrap_err();
        assert!(wait > 0 && wait <= WINDOW.as_secs() + 1);
        assert!(
            l.check(Some(good), "alice").is_ok(),
            "another address is not refused"
        );
        assert!(
            l.check(Some(bad), "bob").is_ok(),
            "nor another user at that address"
        );
        assert!(
            l.check(None, "alice").is_ok(),
            "internal calls are never refused"
        );
        for _ in 0..MAX_REGISTRATIONS_PER_ADDR {
            l.register(Some(good)).unwrap();
        }
        assert!(l.register(Some(good)).is_err());
    }
}
