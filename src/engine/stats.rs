//! What the cache has done, as counters.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) fresh_hits: Counter,
    pub(crate) stale_hits: Counter,
    pub(crate) misses: Counter,
    pub(crate) coalesced_waits: Counter,
    pub(crate) bypasses: Counter,
    pub(crate) stores: Counter,
    pub(crate) store_rejections: Counter,
    pub(crate) refreshes_started: Counter,
    pub(crate) refreshes_succeeded: Counter,
    pub(crate) refreshes_failed: Counter,
    pub(crate) refreshes_timed_out: Counter,
    pub(crate) refreshes_panicked: Counter,
    pub(crate) stale_if_error: Counter,
}

/// A snapshot of a cache's counters and size.
///
/// Counters only grow; take two snapshots and subtract for rates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Answers from a fresh entry.
    pub fresh_hits: u64,
    /// Answers from a stale entry inside its stale-while-revalidate window.
    pub stale_hits: u64,
    /// Requests that found nothing usable and went to the origin as a flight's leader (or alone).
    pub misses: u64,
    /// Requests that waited for another request's origin call instead of making their own.
    pub coalesced_waits: u64,
    /// Requests that were not eligible for caching (HTTP layer: method, `Authorization`, ...).
    pub bypasses: u64,
    /// Values stored.
    pub stores: u64,
    /// Values not stored because they were heavier than the largest storable entry.
    pub store_rejections: u64,
    /// Background refreshes started.
    pub refreshes_started: u64,
    /// Background refreshes that stored (or confirmed) a new value.
    pub refreshes_succeeded: u64,
    /// Background refreshes that failed for any reason (error, 5xx, timeout, panic).
    pub refreshes_failed: u64,
    /// Background refreshes cut off by the refresh timeout (also counted in `refreshes_failed`).
    pub refreshes_timed_out: u64,
    /// Background refreshes that panicked (also counted in `refreshes_failed`).
    pub refreshes_panicked: u64,
    /// Answers from a stale entry because the origin failed (stale-if-error).
    pub stale_if_error: u64,
    /// Entries evicted under memory pressure.
    pub evictions: u64,
    /// Entries held now.
    pub entries: u64,
    /// Bytes held now (the weigher's figure plus a fixed overhead per entry).
    pub bytes: u64,
    /// Bytes the store may hold.
    pub capacity_bytes: u64,
    /// Background refreshes running now.
    pub refreshes_running: u64,
    /// Foreground origin loads (coalesced misses) running now.
    pub loads_running: u64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            fresh_hits: self.fresh_hits.get(),
            stale_hits: self.stale_hits.get(),
            misses: self.misses.get(),
            coalesced_waits: self.coalesced_waits.get(),
            bypasses: self.bypasses.get(),
            stores: self.stores.get(),
            store_rejections: self.store_rejections.get(),
            refreshes_started: self.refreshes_started.get(),
            refreshes_succeeded: self.refreshes_succeeded.get(),
            refreshes_failed: self.refreshes_failed.get(),
            refreshes_timed_out: self.refreshes_timed_out.get(),
            refreshes_panicked: self.refreshes_panicked.get(),
            stale_if_error: self.stale_if_error.get(),
            ..Stats::default()
        }
    }
}
