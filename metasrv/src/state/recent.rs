//! The remembered request ids (`State::recent_requests`): each applied request's id and reply,
//! so a retried write gets the first answer instead of being applied twice. Bounded in time
//! (`REQUEST_MEMORY_MS`) and in bytes (`REQUEST_MEMORY_BYTES`).
//!
//! What must stay true:
//! - This is replicated state: what is kept depends only on the log (times come inside the
//!   commands, sizes from the entries), so every member keeps the same ids.
//! - Only the map is persisted and serialized; the order by time and the byte count are
//!   derived from it (rebuilt on load and on snapshot install), never stored twice.
//! - Oldest first: an entry goes before any younger one (ties by id), by age or by budget.
//! - An entry's size is computed once, when it is remembered (the index keeps it): its id
//!   twice (map and index), its record as stored (JSON), and `ENTRY_OVERHEAD`; the sum is
//!   `bytes()`. It depends on the JSON form of a reply: a version that changes that form
//!   must not be mixed with an older one in one group (members would prune different ids).
use super::Remembered;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Bytes of bookkeeping counted for each entry besides its id and record (tree nodes,
/// the index's copy of the time).
pub const ENTRY_OVERHEAD: u64 = 64;

/// Request ids with their replies, oldest first when pruned.
#[derive(Debug, Clone, Default)]
pub struct RecentRequests {
    map: BTreeMap<String, Remembered>,
    /// (time, id) of every entry in `map`, with the entry's `cost` (computed once).
    by_time: BTreeMap<(i64, String), u64>,
    /// Sum of `cost` over `map`.
    bytes: u64,
}

/// What one entry counts against the byte budget.
pub fn cost(id: &str, r: &Remembered) -> u64 {
    let record = serde_json::to_vec(r).map_or(0, |v| v.len() as u64);
    2 * id.len() as u64 + record + ENTRY_OVERHEAD
}

impl RecentRequests {
    pub fn get(&self, id: &str) -> Option<&Remembered> {
        self.map.get(id)
    }

    #[cfg(test)]
    pub fn contains_key(&self, id: &str) -> bool {
        self.map.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Estimated bytes held (see `cost`).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.map.keys()
    }

    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Remembered)> {
        self.map.iter()
    }

    pub fn insert(&mut self, id: String, r: Remembered) -> Option<Remembered> {
        let old = self.remove(&id);
        let c = cost(&id, &r);
        self.bytes += c;
        self.by_time.insert((r.at_ms, id.clone()), c);
        self.map.insert(id, r);
        old
    }

    pub fn remove(&mut self, id: &str) -> Option<Remembered> {
        let r = self.map.remove(id)?;
        let c = self.by_time.remove(&(r.at_ms, id.to_string())).unwrap_or(0);
        self.bytes = self.bytes.saturating_sub(c);
        Some(r)
    }

    /// The oldest entry's time and id.
    pub fn oldest(&self) -> Option<(i64, &str)> {
        self.by_time
            .first_key_value()
            .map(|((t, id), _)| (*t, id.as_str()))
    }

    /// Drop the oldest entries while any is older than `before_ms` or, keeping at least one,
    /// while more than `max_bytes` are held. Returns the ids dropped.
    pub fn prune(&mut self, before_ms: i64, max_bytes: u64) -> Vec<String> {
        let mut dropped = Vec::new();
        while let Some((at, id)) = self.oldest() {
            let expired = at < before_ms;
            let over = self.bytes > max_bytes && self.map.len() > 1;
            if !expired && !over {
                break;
            }
            let id = id.to_string();
            self.remove(&id);
            dropped.push(id);
        }
        dropped
    }
}

impl PartialEq for RecentRequests {
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
    }
}

impl Eq for RecentRequests {}

impl FromIterator<(String, Remembered)> for RecentRequests {
    fn from_iter<I: IntoIterator<Item = (String, Remembered)>>(iter: I) -> Self {
        let mut out = RecentRequests::default();
        for (k, v) in iter {
            out.insert(k, v);
        }
        out
    }
}

impl Serialize for RecentRequests {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.map.serialize(s)
    }
}

impl<'de> Deserialize<'de> for RecentRequests {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, Remembered>::deserialize(d)?;
        Ok(map.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::command::Reply;

    fn done(at_ms: i64) -> Remembered {
        Remembered {
            at_ms,
            reply: Reply::Done,
        }
    }

    fn ids(r: &RecentRequests) -> Vec<String> {
        r.keys().cloned().collect()
    }

    #[test]
    fn ties_in_time_go_by_id_whatever_the_order_of_arrival() {
        let entry = cost("b", &done(5));
        let mut one = RecentRequests::default();
        let mut two = RecentRequests::default();
        for id in ["c", "a", "b"] {
            one.insert(id.into(), done(5));
        }
        for id in ["b", "c", "a"] {
            two.insert(id.into(), done(5));
        }
        assert_eq!(one, two);
        assert_eq!(one.oldest(), Some((5, "a")));
        // Room for two: "a" goes, on both.
        assert_eq!(one.prune(0, 2 * entry), vec!["a".to_string()]);
        assert_eq!(two.prune(0, 2 * entry), vec!["a".to_string()]);
        assert_eq!(ids(&one), ids(&two));
        assert_eq!(one.bytes(), 2 * entry);
        // Nothing due: nothing dropped.
        assert!(one.prune(5, 2 * entry).is_empty());
        // Older than the memory, even with room to spare: both go, oldest first.
        assert_eq!(
            one.prune(6, u64::MAX),
            vec!["b".to_string(), "c".to_string()]
        );
        assert_eq!((one.len(), one.bytes(), one.oldest()), (0, 0, None));
    }

    #[test]
    fn a_remembered_id_again_replaces_its_entry_and_its_size() {
        let mut r = RecentRequests::default();
        r.insert("x".into(), done(1));
        r.insert("y".into(), done(2));
        let big = Remembered {
            at_ms: 3,
            reply: Reply::Imported {
                report: vec!["z".repeat(50)],
                count: 1,
            },
        };
        assert_eq!(r.insert("x".into(), big.clone()), Some(done(1)));
        assert_eq!(r.len(), 2);
        assert_eq!(r.bytes(), cost("x", &big) + cost("y", &done(2)));
        // Its time moved too: "y" is the oldest now.
        assert_eq!(r.oldest(), Some((2, "y")));
        assert_eq!(r.remove("x"), Some(big));
        assert_eq!(r.remove("x"), None);
        assert_eq!(r.bytes(), cost("y", &done(2)));
    }
}
