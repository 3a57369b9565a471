//! Chunk servers' inventories (every chunk id a server holds) as this node assembles them from
//! heartbeat pages. Soft state: never replicated; every metadata node gets its own pages from
//! every chunk server (heartbeats are not forwarded), so a new leader already has them.
//!
//! What must stay true:
//! - A server's inventory is replaced only by a complete listing: pages 0, 1, ... of one round
//!   received in order, ending with the page marked last. Until then this node believes the
//!   server's previous complete inventory (none at first: the server counts as unreported).
//! - Page 0 starts a round over (whatever was being assembled is dropped). A page that is
//!   neither the next one nor a repeat of the one before (a gap, another round) drops the
//!   round being assembled; later pages of it are ignored and the next round starts over.
//!   A repeat (the server sends a page again when its heartbeat failed) is merged again.
//! - A heartbeat from a chunk server older than paging (`inventory_round` 0) is its whole
//!   inventory in one message: a round of one page.
//! - Memory: per server at most one complete set and one being assembled, each bounded by the
//!   number of chunks the server holds; sets are shared (`Arc`), so readers (the orphan scan)
//!   take them without copying. A listing that gets no page for `STALE_LISTING` (its server
//!   died or restarted mid-round) is dropped, so it is neither held nor counted for long.
use crate::types::NodeId;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A listing under way that has had no page for this long is given up. Chunk servers send a
/// page with every heartbeat (seconds apart), so this is many missed heartbeats.
pub const STALE_LISTING: Duration = Duration::from_secs(60);

/// One heartbeat's piece of an inventory (its ids moved in, not copied).
#[derive(Debug)]
pub struct Page {
    /// The listing's id; 0 from an older server (then the page is the whole inventory).
    pub round: u64,
    pub page: u32,
    pub last: bool,
    pub ids: Vec<String>,
}

/// What a page did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It completed a listing, now the server's inventory.
    Complete,
    /// It was added to the listing being assembled.
    Added,
    /// It did not follow the listing being assembled, which was dropped.
    Dropped,
    /// No listing of its round is being assembled (one was dropped, or this node started in
    /// the middle of it): ignored until the next round.
    Ignored,
}

/// A server's latest complete inventory.
#[derive(Debug, Clone)]
pub struct Report {
    /// When its last page arrived.
    pub at: Instant,
    pub chunks: Arc<HashSet<String>>,
}

#[derive(Debug)]
struct Partial {
    round: u64,
    /// The page expected next.
    next: u32,
    chunks: HashSet<String>,
    /// When its latest page arrived.
    at: Instant,
}

#[derive(Debug, Default)]
struct Node {
    complete: Option<Report>,
    partial: Option<Partial>,
}

/// Every server's inventory on this node.
#[derive(Debug, Default)]
pub struct Inventories {
    nodes: HashMap<NodeId, Node>,
    /// Rounds dropped because a page did not follow.
    pub dropped_total: u64,
}

/// Entries held, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sizes {
    /// Chunk ids in complete inventories (over all servers).
    pub chunks: u64,
    /// Servers with a listing being assembled.
    pub assembling: u64,
    /// Chunk ids in those listings.
    pub assembling_chunks: u64,
}

impl Inventories {
    /// Take one heartbeat's page from `node`, received at `now`.
    pub fn page(&mut self, node: NodeId, p: Page, now: Instant) -> Outcome {
        self.drop_stale(now);
        let n = self.nodes.entry(node).or_default();
        let (round, page, last) = if p.round == 0 {
            (0, 0, true)
        } else {
            (p.round, p.page, p.last)
        };
        if page == 0 {
            n.partial = Some(Partial {
                round,
                next: 0,
                chunks: HashSet::new(),
                at: now,
            });
        }
        let Some(part) = n.partial.as_mut() else {
            return Outcome::Ignored;
        };
        let follows = part.round == round && page == part.next;
        let repeat = part.round == round && page.checked_add(1) == Some(part.next);
        if !follows && !repeat {
            n.partial = None;
            self.dropped_total += 1;
            return Outcome::Dropped;
        }
        part.chunks.extend(p.ids);
        part.at = now;
        if follows {
            part.next = part.next.saturating_add(1);
        }
        if !last {
            return Outcome::Added;
        }
        let done = n.partial.take().map(|p| p.chunks).unwrap_or_default();
        n.complete = Some(Report {
            at: now,
            chunks: Arc::new(done),
        });
        Outcome::Complete
    }

    /// Chunks a server deleted: no longer in what this node believes it holds (nor in the
    /// listing being assembled, whose earlier pages may still name them).
    pub fn forget(&mut self, node: NodeId, chunks: &[String]) {
        let Some(n) = self.nodes.get_mut(&node) else {
            return;
        };
        if let Some(r) = n.complete.as_mut() {
            if chunks.iter().any(|c| r.chunks.contains(c)) {
                let set = Arc::make_mut(&mut r.chunks);
                for c in chunks {
                    set.remove(c);
                }
            }
        }
        if let Some(p) = n.partial.as_mut() {
            for c in chunks {
                p.chunks.remove(c);
            }
        }
    }

    /// The server's latest complete inventory, and when the server last sent a page that
    /// counted (its last complete listing, or a page of the one under way since).
    pub fn report(&self, node: NodeId) -> Option<(Instant, Report)> {
        let n = self.nodes.get(&node)?;
        let r = n.complete.clone()?;
        let heard = n.partial.as_ref().map_or(r.at, |p| p.at.max(r.at));
        Some((heard, r))
    }

    /// Every server's latest complete inventory (see `report`).
    pub fn reports(&self) -> HashMap<NodeId, (Instant, Report)> {
        self.nodes
            .keys()
            .filter_map(|id| Some((*id, self.report(*id)?)))
            .collect()
    }

    /// Give up listings that have had no page for `STALE_LISTING` before `now`.
    pub fn drop_stale(&mut self, now: Instant) {
        for n in self.nodes.values_mut() {
            if n.partial
                .as_ref()
                .is_some_and(|p| now.saturating_duration_since(p.at) >= STALE_LISTING)
            {
                n.partial = None;
                self.dropped_total += 1;
            }
        }
    }

    pub fn sizes(&self) -> Sizes {
        let mut s = Sizes::default();
        for n in self.nodes.values() {
            s.chunks += n.complete.as_ref().map_or(0, |r| r.chunks.len() as u64);
            if let Some(p) = &n.partial {
                s.assembling += 1;
                s.assembling_chunks += p.chunks.len() as u64;
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn page(inv: &mut Inventories, round: u64, page: u32, last: bool, v: &[&str]) -> Outcome {
        page_at(inv, 1, round, page, last, v, Instant::now())
    }

    fn page_at(
        inv: &mut Inventories,
        node: NodeId,
        round: u64,
        page: u32,
        last: bool,
        v: &[&str],
        at: Instant,
    ) -> Outcome {
        inv.page(
            node,
            Page {
                round,
                page,
                last,
                ids: ids(v),
            },
            at,
        )
    }

    fn held(inv: &Inventories) -> Option<Vec<String>> {
        let (_, r) = inv.report(1)?;
        let mut v: Vec<String> = r.chunks.iter().cloned().collect();
        v.sort();
        Some(v)
    }

    #[test]
    fn a_listing_counts_only_when_its_last_page_arrived_in_order() {
        let mut inv = Inventories::default();
        assert_eq!(page(&mut inv, 7, 0, false, &["a", "b"]), Outcome::Added);
        assert_eq!(held(&inv), None, "nothing complete yet: unreported");
        assert_eq!(page(&mut inv, 7, 1, false, &["c"]), Outcome::Added);
        // A repeat of the page before (its heartbeat failed) is merged again.
        assert_eq!(page(&mut inv, 7, 1, false, &["c", "d"]), Outcome::Added);
        assert_eq!(
            inv.sizes(),
            Sizes {
                chunks: 0,
                assembling: 1,
                assembling_chunks: 4
            }
        );
        assert_eq!(page(&mut inv, 7, 2, true, &["e"]), Outcome::Complete);
        assert_eq!(held(&inv), Some(ids(&["a", "b", "c", "d", "e"])));
        assert_eq!(inv.sizes().assembling, 0);

        // While the next listing is under way, the previous one is what the server holds.
        assert_eq!(page(&mut inv, 8, 0, false, &["a"]), Outcome::Added);
        assert_eq!(held(&inv), Some(ids(&["a", "b", "c", "d", "e"])));
        // A gap drops it; its later pages are ignored, and the old inventory stays.
        assert_eq!(page(&mut inv, 8, 2, false, &["x"]), Outcome::Dropped);
        assert_eq!(page(&mut inv, 8, 3, true, &["y"]), Outcome::Ignored);
        assert_eq!(held(&inv), Some(ids(&["a", "b", "c", "d", "e"])));
        assert_eq!(inv.dropped_total, 1);

        // Another round's page in the middle of one drops it too.
        assert_eq!(page(&mut inv, 9, 0, false, &["a"]), Outcome::Added);
        assert_eq!(page(&mut inv, 10, 1, true, &["z"]), Outcome::Dropped);
        assert_eq!(inv.dropped_total, 2);
        // A new round's page 0 starts over (the server restarted mid-listing).
        assert_eq!(page(&mut inv, 11, 0, false, &["q"]), Outcome::Added);
        assert_eq!(page(&mut inv, 12, 0, false, &["r"]), Outcome::Added);
        assert_eq!(page(&mut inv, 12, 1, true, &["s"]), Outcome::Complete);
        assert_eq!(held(&inv), Some(ids(&["r", "s"])));
        // Joining in the middle of a round (this node just started): ignored until page 0.
        let mut fresh = Inventories::default();
        assert_eq!(page(&mut fresh, 5, 3, false, &["a"]), Outcome::Ignored);
        assert_eq!(page(&mut fresh, 5, 4, true, &["b"]), Outcome::Ignored);
        assert_eq!(held(&fresh), None);
        assert_eq!(fresh.dropped_total, 0);
    }

    #[test]
    fn an_older_servers_single_message_is_a_whole_inventory() {
        let mut inv = Inventories::default();
        assert_eq!(page(&mut inv, 12, 0, false, &["a"]), Outcome::Added);
        // Round 0, page 0, not marked last: what an older chunk server sends.
        assert_eq!(page(&mut inv, 0, 0, false, &["b", "c"]), Outcome::Complete);
        assert_eq!(held(&inv), Some(ids(&["b", "c"])));
        assert_eq!(page(&mut inv, 0, 0, false, &[]), Outcome::Complete);
        assert_eq!(held(&inv), Some(vec![]));
    }

    #[test]
    fn deleted_chunks_leave_both_the_inventory_and_the_listing_under_way() {
        let mut inv = Inventories::default();
        page(&mut inv, 1, 0, true, &["a", "b"]);
        let (_, before) = inv.report(1).unwrap();
        page(&mut inv, 2, 0, false, &["a", "b"]);
        inv.forget(1, &ids(&["a"]));
        inv.forget(9, &ids(&["a"]));
        assert_eq!(held(&inv), Some(ids(&["b"])));
        // A reader's copy is its own (copy on write).
        assert_eq!(before.chunks.len(), 2);
        page(&mut inv, 2, 1, true, &[]);
        assert_eq!(held(&inv), Some(ids(&["b"])));
        assert_eq!(inv.sizes().chunks, 1);
    }

    #[test]
    fn a_listing_left_unfinished_is_given_up_after_a_while() {
        let mut inv = Inventories::default();
        let t0 = Instant::now();
        page_at(&mut inv, 1, 3, 0, true, &["a"], t0);
        // Server 1 dies in the middle of its next listing.
        page_at(&mut inv, 1, 4, 0, false, &["a", "b"], t0);
        assert_eq!(inv.sizes().assembling, 1);
        // Another server's pages a little later keep it.
        page_at(&mut inv, 2, 1, 0, false, &["x"], t0 + STALE_LISTING / 2);
        assert_eq!(inv.sizes().assembling, 2);
        // Once server 1 has been silent for the whole time its listing goes; its last
        // complete inventory stays (whether it is still believed is the reader's age check).
        page_at(&mut inv, 2, 1, 1, false, &["y"], t0 + STALE_LISTING);
        assert_eq!(
            inv.sizes(),
            Sizes {
                chunks: 1,
                assembling: 1,
                assembling_chunks: 2
            }
        );
        assert_eq!(held(&inv), Some(ids(&["a"])));
        assert_eq!(inv.dropped_total, 1);
        // Its later pages of that round are ignored; the next round starts over.
        assert_eq!(
            page_at(&mut inv, 1, 4, 1, true, &["c"], t0 + STALE_LISTING),
            Outcome::Ignored
        );
        assert_eq!(held(&inv), Some(ids(&["a"])));
    }
}
