//! The Redis tier's counters.

use std::sync::atomic::{AtomicU64, Ordering};

use super::breaker::BreakerState;

/// A snapshot of a [`RedisTier`](super::RedisTier)'s counters (also mirrored to the `metrics`
/// facade as `swr_redis_<name>_total`, with the feature `metrics`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStats {
    /// Lookups that found a usable value.
    pub hits: u64,
    /// Lookups that found none (absent, purged, undecodable).
    pub misses: u64,
    /// Calls that failed (an error from Redis or the connection).
    pub errors: u64,
    /// Calls cut at the tier's timeout.
    pub timeouts: u64,
    /// Calls not made because the breaker was open.
    pub skipped: u64,
    /// Values that could not be decoded (each a miss and one `warn!`).
    pub corrupt: u64,
    /// Values written.
    pub writes: u64,
    /// Writes refused by the fence (a stale claim, a purge since the load began) or because a
    /// newer value was there.
    pub fenced_writes: u64,
    /// Values kept out of Redis by the codec (e.g. they hold credentials).
    pub unshared: u64,
    /// Locks this instance won.
    pub locks_won: u64,
    /// Locks another instance held (each load that waited for another's value, once).
    pub locks_lost: u64,
    /// Invalidations sent on the bus.
    pub bus_sent: u64,
    /// Invalidations from other instances applied here.
    pub bus_received: u64,
    /// The breaker, now.
    pub breaker: BreakerState,
    /// Whether the invalidation bus is subscribed now. False until its first connection (made
    /// when the tier is first used on a tokio runtime) and while it reconnects; after each
    /// gap, every entry in memory re-checks Redis once and loads under way are not stored.
    pub bus_up: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hits: Counter,
    pub(crate) misses: Counter,
    pub(crate) errors: Counter,
    pub(crate) timeouts: Counter,
    pub(crate) skipped: Counter,
    pub(crate) corrupt: Counter,
    pub(crate) writes: Counter,
    pub(crate) fenced_writes: Counter,
    pub(crate) unshared: Counter,
    pub(crate) locks_won: Counter,
    pub(crate) locks_lost: Counter,
    pub(crate) bus_sent: Counter,
    pub(crate) bus_received: Counter,
}

#[derive(Debug, Default)]
pub(crate) struct Counter {
    count: AtomicU64,
}

impl Counter {
    pub(crate) fn inc(&self, _name: &'static str) {
        self.count.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!(_name).increment(1);
    }

    fn get(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl Counters {
    pub(crate) fn snapshot(&self, breaker: BreakerState, bus_up: bool) -> RedisStats {
        RedisStats {
            hits: self.hits.get(),
            misses: self.misses.get(),
            errors: self.errors.get(),
            timeouts: self.timeouts.get(),
            skipped: self.skipped.get(),
            corrupt: self.corrupt.get(),
            writes: self.writes.get(),
            fenced_writes: self.fenced_writes.get(),
            unshared: self.unshared.get(),
            locks_won: self.locks_won.get(),
            locks_lost: self.locks_lost.get(),
            bus_sent: self.bus_sent.get(),
            bus_received: self.bus_received.get(),
            breaker,
            bus_up,
        }
    }
}
