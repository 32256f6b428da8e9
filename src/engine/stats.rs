//! What the cache has done, as counters.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// One counter, mirrored to the `metrics` facade when that feature is on (the handle is
/// registered once, so counting costs no lookup).
#[derive(Debug)]
pub(crate) struct Counter {
    /// One cell, or (for counters every hit writes) one per stripe, each on its own cache line,
    /// so that cores hitting the same key do not fight over one line.
    cells: Box<[Padded]>,
    #[cfg(feature = "metrics")]
    mirror: Option<metrics::Counter>,
}

impl Default for Counter {
    fn default() -> Self {
        Self {
            cells: Box::new([Padded::default()]),
            #[cfg(feature = "metrics")]
            mirror: None,
        }
    }
}

/// A cell alone on its cache line (128 bytes: adjacent-line prefetch pairs 64-byte lines).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

/// A small number per thread, so that threads spread over a striped counter's cells.
fn thread_slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    SLOT.with(|slot| *slot)
}

impl Counter {
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    fn new(cache: &str, name: &'static str, label: (&'static str, &'static str)) -> Self {
        Self::with_cells(1, cache, name, label)
    }

    /// A counter written on every hit: one cell per stripe.
    fn striped(cache: &str, name: &'static str, label: (&'static str, &'static str)) -> Self {
        let parallelism = std::thread::available_parallelism().map_or(4, |n| n.get());
        let stripes = (parallelism * 2).next_power_of_two().min(64);
        Self::with_cells(stripes, cache, name, label)
    }

    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    fn with_cells(
        cells: usize,
        cache: &str,
        name: &'static str,
        label: (&'static str, &'static str),
    ) -> Self {
        Self {
            cells: (0..cells).map(|_| Padded::default()).collect(),
            #[cfg(feature = "metrics")]
            mirror: Some(metrics::counter!(name, "cache" => cache.to_owned(), label.0 => label.1)),
        }
    }

    #[inline]
    pub(crate) fn inc(&self) {
        let cell = match self.cells.len() {
            1 => &self.cells[0],
            // A power of two, so the mask picks a cell.
            stripes => &self.cells[thread_slot() & (stripes - 1)],
        };
        cell.0.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(mirror) = &self.mirror {
            mirror.increment(1);
        }
    }

    pub(crate) fn get(&self) -> u64 {
        self.cells
            .iter()
            .map(|cell| cell.0.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

/// Gauges of the `metrics` facade: entries, bytes, refreshes running.
#[derive(Debug, Default)]
pub(crate) struct Gauges {
    #[cfg(feature = "metrics")]
    mirror: Option<[metrics::Gauge; 3]>,
}

impl Gauges {
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    fn new(cache: &str) -> Self {
        Self {
            #[cfg(feature = "metrics")]
            mirror: Some([
                metrics::gauge!("swr_entries", "cache" => cache.to_owned()),
                metrics::gauge!("swr_bytes", "cache" => cache.to_owned()),
                metrics::gauge!("swr_refreshes_running", "cache" => cache.to_owned()),
            ]),
        }
    }

    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn set(&self, entries: u64, bytes: u64, refreshes_running: u64) {
        #[cfg(feature = "metrics")]
        if let Some([e, b, r]) = &self.mirror {
            e.set(entries as f64);
            b.set(bytes as f64);
            r.set(refreshes_running as f64);
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) fresh_hits: Counter,
    pub(crate) stale_hits: Counter,
    pub(crate) misses: Counter,
    pub(crate) collapsed: Counter,
    pub(crate) bypasses: Counter,
    pub(crate) stores: Counter,
    pub(crate) store_rejections: Counter,
    pub(crate) refreshes_started: Counter,
    pub(crate) refreshes_succeeded: Counter,
    pub(crate) refreshes_failed: Counter,
    pub(crate) refreshes_timed_out: Counter,
    pub(crate) refreshes_panicked: Counter,
    pub(crate) stale_if_error: Counter,
    pub(crate) loads_failed: Counter,
    pub(crate) failure_hits: Counter,
    pub(crate) shared_tier_hits: Counter,
    pub(crate) gauges: Gauges,
}

/// A snapshot of a cache's counters and size.
///
/// Counters only grow; take two snapshots and subtract for rates.
///
/// ```
/// use std::time::Duration;
/// use tower_swr::engine::{Freshness, Loaded, SwrCache};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let cache: SwrCache<String, u64> = SwrCache::builder().build();
/// let fresh = Freshness::new(Duration::from_secs(60));
/// let load = move || async move { Ok::<_, String>(Loaded::new(42, fresh)) };
/// for _ in 0..3 {
///     cache.get_or_load("rate".to_string(), load).await.unwrap();
/// }
/// let stats = cache.stats(); // SwrLayer::stats and SwrHandle::stats give the same for HTTP
/// assert_eq!((stats.misses, stats.fresh_hits, stats.entries), (1, 2, 1));
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct Stats {
    /// Answers from a fresh entry.
    pub fresh_hits: u64,
    /// Answers from a stale entry inside its stale-while-revalidate window.
    pub stale_hits: u64,
    /// Requests that found nothing usable and went to the origin as a flight's leader (or
    /// alone), and were answered by it: one whose origin failed and that was answered from a
    /// stale entry counts in `stale_if_error` instead, so every request counts once.
    pub misses: u64,
    /// Requests that waited for another request's origin call instead of making their own.
    pub collapsed: u64,
    /// Requests that were not eligible for caching, answered without storing anything (HTTP
    /// layer: passed to the origin for a method other than `GET`/`HEAD`, an `Upgrade`, a
    /// `key_fn` that answered `None`, a host that cannot be keyed, a request's `no-store` that
    /// nothing stored answers; `504` for an `only-if-cached` that nothing stored answers). A
    /// `GET` with `Authorization` or `Cookie` is eligible (a `public` answer to it may be
    /// stored, RFC 9111 §3.5): it counts as a miss, or as a hit once such an answer is stored.
    pub bypasses: u64,
    /// Values stored.
    pub stores: u64,
    /// Values not stored because they were heavier than the largest storable entry, or (HTTP
    /// layer) their body was longer than `max_body_bytes`.
    pub store_rejections: u64,
    /// Background refreshes started.
    pub refreshes_started: u64,
    /// Background refreshes that stored (or confirmed) a new value. One whose value an
    /// invalidation since it began kept out counts here and in `refreshes_failed` neither.
    pub refreshes_succeeded: u64,
    /// Background refreshes that failed for any reason (error, 5xx, timeout, panic).
    pub refreshes_failed: u64,
    /// Background refreshes cut off by the refresh timeout (also counted in `refreshes_failed`).
    pub refreshes_timed_out: u64,
    /// Background refreshes that panicked (also counted in `refreshes_failed`).
    pub refreshes_panicked: u64,
    /// Answers from a stale entry because the origin failed (stale-if-error).
    pub stale_if_error: u64,
    /// Foreground loads (a miss's loader or origin call, one per flight) that failed: an
    /// error, a failure status, a panic, or cut at the fallback timeout; whether a stale entry
    /// then stood in (also counted in `stale_if_error`) or the failure was the answer. Failed
    /// background refreshes count in `refreshes_failed`.
    pub loads_failed: u64,
    /// Requests answered with the failure of a load of their key that ended a moment ago
    /// (see `remember_failures`), without calling the loader or origin.
    pub failure_hits: u64,
    /// Requests that found nothing usable here and were answered from the shared tier (a
    /// value another cache loaded), without calling the loader or origin.
    pub shared_tier_hits: u64,
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
    /// Whether the circuit breaker is pausing background refreshes now.
    pub refreshes_paused: bool,
}

/// Metric names and labels, mirrored when the `metrics` feature is on.
pub(crate) const REQUESTS: &str = "swr_requests_total";
pub(crate) const REFRESHES: &str = "swr_refreshes_total";
pub(crate) const STORES: &str = "swr_stores_total";
pub(crate) const LOADS: &str = "swr_loads_total";

impl Counters {
    pub(crate) fn new(cache: &str) -> Self {
        let request = |status| Counter::new(cache, REQUESTS, ("status", status));
        let refresh = |outcome| Counter::new(cache, REFRESHES, ("outcome", outcome));
        Self {
            fresh_hits: Counter::striped(cache, REQUESTS, ("status", "hit")),
            stale_hits: Counter::striped(cache, REQUESTS, ("status", "stale")),
            misses: request("miss"),
            collapsed: request("collapsed"),
            bypasses: request("bypass"),
            stale_if_error: request("stale_if_error"),
            failure_hits: request("failure_hit"),
            shared_tier_hits: request("shared_tier"),
            stores: Counter::new(cache, STORES, ("result", "stored")),
            store_rejections: Counter::new(cache, STORES, ("result", "too_large")),
            refreshes_started: refresh("started"),
            refreshes_succeeded: refresh("succeeded"),
            refreshes_failed: refresh("failed"),
            refreshes_timed_out: refresh("timed_out"),
            refreshes_panicked: refresh("panicked"),
            loads_failed: Counter::new(cache, LOADS, ("outcome", "failed")),
            gauges: Gauges::new(cache),
        }
    }

    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            fresh_hits: self.fresh_hits.get(),
            stale_hits: self.stale_hits.get(),
            misses: self.misses.get(),
            collapsed: self.collapsed.get(),
            bypasses: self.bypasses.get(),
            stores: self.stores.get(),
            store_rejections: self.store_rejections.get(),
            refreshes_started: self.refreshes_started.get(),
            refreshes_succeeded: self.refreshes_succeeded.get(),
            refreshes_failed: self.refreshes_failed.get(),
            refreshes_timed_out: self.refreshes_timed_out.get(),
            refreshes_panicked: self.refreshes_panicked.get(),
            stale_if_error: self.stale_if_error.get(),
            loads_failed: self.loads_failed.get(),
            failure_hits: self.failure_hits.get(),
            shared_tier_hits: self.shared_tier_hits.get(),
            ..Stats::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_striped_counter_sums_what_every_thread_counted() {
        let counter = Counter::striped("test", REQUESTS, ("status", "hit"));
        assert!(counter.cells.len().is_power_of_two());
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| (0..1000).for_each(|_| counter.inc()));
            }
        });
        assert_eq!(counter.get(), 8000);
        assert_eq!(Counter::default().get(), 0);
    }
}
