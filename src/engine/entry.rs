//! One stored value and the deadlines that decide how it may be used.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::clock::Stamp;

/// How long a loaded value may be used, as the loader (or an HTTP response) says.
///
/// ```text
/// stored ── fresh for `ttl` ── stale, served while ONE refresh runs, for `stale_while_revalidate`
///        ── then a miss; still served if the loader fails, up to `ttl + stale_if_error`
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Freshness {
    /// How long the value is fresh: served without calling the loader.
    pub ttl: Duration,
    /// How long after `ttl` the value is served at once while one background refresh runs.
    pub stale_while_revalidate: Duration,
    /// How long after `ttl` the value may stand in for a failing loader.
    pub stale_if_error: Duration,
}

impl Freshness {
    /// Fresh for `ttl`, with no stale windows.
    #[must_use]
    pub const fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
        }
    }

    /// Sets the stale-while-revalidate window.
    #[must_use]
    pub const fn with_stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale_while_revalidate = window;
        self
    }

    /// Sets the stale-if-error window.
    #[must_use]
    pub const fn with_stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = window;
        self
    }
}

/// What a loader returns: the value and how long it may be used.
#[derive(Debug, Clone)]
pub struct Loaded<V> {
    /// The value to cache.
    pub value: V,
    /// Its freshness, counted from when it was produced.
    pub freshness: Freshness,
    /// How old the value already is when stored (an HTTP response's `Age`); zero for new values.
    pub initial_age: Duration,
    /// How long after its fresh lifetime the value is kept although no window allows serving
    /// it, so it can be revalidated (an HTTP response with validators); zero by default.
    pub retain_for: Duration,
    /// How long producing the value took; drives the optional early refresh (XFetch).
    pub load_time: Duration,
}

impl<V> Loaded<V> {
    /// A brand-new value with the given freshness.
    pub fn new(value: V, freshness: Freshness) -> Self {
        Self {
            value,
            freshness,
            initial_age: Duration::ZERO,
            retain_for: Duration::ZERO,
            load_time: Duration::ZERO,
        }
    }

    /// Marks the value as already `age` old (freshness is counted from its birth).
    #[must_use]
    pub fn with_initial_age(mut self, age: Duration) -> Self {
        self.initial_age = age;
        self
    }

    /// Records how long producing the value took (for the optional early refresh). Without
    /// it, `get_or_load` records the time the loader's future took.
    #[must_use]
    pub fn with_load_time(mut self, duration: Duration) -> Self {
        self.load_time = duration;
        self
    }

    /// Keeps the value for `duration` after its fresh lifetime even where no window allows
    /// serving it (e.g. to revalidate it rather than load it again).
    #[must_use]
    pub fn with_retention(mut self, duration: Duration) -> Self {
        self.retain_for = duration;
        self
    }
}

/// An entry's times on the wall clock, as they cross the storage seam: a monotonic instant
/// means nothing to another process (a shared tier) or after a restart, a wall-clock time does.
///
/// Deadlines are absolute; [`SwrCache`](super::SwrCache) keeps its own monotonic copy of
/// them for the hot path and converts at the seam.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lifetime {
    /// When the value was stored.
    pub stored_at: SystemTime,
    /// How old the value already was when stored (an HTTP response's `Age`).
    pub initial_age: Duration,
    /// Fresh before this.
    pub fresh_until: SystemTime,
    /// Served stale while one refresh runs before this.
    pub stale_until: SystemTime,
    /// May stand in for a failing loader before this.
    pub error_until: SystemTime,
    /// Kept (for revalidation) before this, though no window allows serving it.
    pub retain_until: SystemTime,
    /// How long producing the value took.
    pub load_time: Duration,
}

impl Lifetime {
    /// The last time at which the value is of any use.
    pub fn last_deadline(&self) -> SystemTime {
        self.stale_until
            .max(self.error_until)
            .max(self.retain_until)
    }
}

/// Converts between the monotonic [`Stamp`] scale and the wall clock, from one reading of each.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WallClock {
    stamp: Stamp,
    wall: SystemTime,
}

impl WallClock {
    pub(crate) fn now() -> Self {
        Self {
            stamp: Stamp::now(),
            wall: SystemTime::now(),
        }
    }

    pub(crate) fn wall(&self, at: Stamp) -> SystemTime {
        if at >= self.stamp {
            self.wall
                .checked_add(at.since(self.stamp))
                .unwrap_or(self.wall + FOREVER)
        } else {
            self.wall
                .checked_sub(self.stamp.since(at))
                .unwrap_or(SystemTime::UNIX_EPOCH)
        }
    }

    pub(crate) fn stamp(&self, at: SystemTime) -> Stamp {
        match at.duration_since(self.wall) {
            Ok(ahead) => self.stamp.after(ahead.min(FOREVER)),
            Err(behind) => self.stamp.before(behind.duration()),
        }
    }
}

/// Where an entry stands at a given instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Serve it; call nothing.
    Fresh,
    /// Serve it and refresh it in the background.
    Stale,
    /// A miss, but it may still stand in for a failing origin.
    Expired,
    /// Past every deadline: useless.
    Dead,
}

/// A stored value with its deadlines, computed once at store time.
#[derive(Debug)]
pub(crate) struct Entry<V> {
    value: V,
    stored_at: Stamp,
    /// How old the value already was when stored, in nanoseconds (8 bytes, not a
    /// `Duration`'s 16; saturating at 584 years).
    initial_age: u64,
    fresh_until: Stamp,
    stale_until: Stamp,
    error_until: Stamp,
    retain_until: Stamp,
    /// How long producing the value took, in nanoseconds.
    load_time: u64,
    pub(crate) weight: u64,
    /// Set while a background refresh of this entry runs, so a stale hit can tell without
    /// taking the in-flight set's lock.
    pub(crate) refreshing: AtomicBool,
}

/// Far enough to mean "never", near enough to convert back to an `Instant`.
pub(crate) const FOREVER: Duration = Duration::from_secs(60 * 60 * 24 * 365 * 30);

/// A configured duration as the engine keeps it: at most [`FOREVER`], so `now + setting`
/// (and twice it) never overflows an `Instant`.
pub(crate) fn setting(duration: Duration) -> Duration {
    duration.min(FOREVER)
}

/// A duration as whole nanoseconds, saturating (an entry keeps its durations in 8 bytes).
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

fn deadline(from: Stamp, after: Duration) -> Stamp {
    from.after(after.min(FOREVER))
}

impl<V> Entry<V> {
    /// Whether a background refresh of this entry runs.
    pub(crate) fn is_refreshing(&self) -> bool {
        self.refreshing.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn new(loaded: Loaded<V>, stored_at: Stamp, weight: u64) -> Self {
        let Loaded {
            value,
            freshness,
            initial_age,
            retain_for,
            load_time,
        } = loaded;
        // Windows count from the end of the fresh lifetime, which an old value (initial age past
        // its ttl) reached before it was stored: the excess comes off every window.
        let fresh_until = deadline(stored_at, freshness.ttl.saturating_sub(initial_age));
        let excess = initial_age.saturating_sub(freshness.ttl);
        let window = |length: Duration| deadline(fresh_until, length.saturating_sub(excess));
        Self {
            value,
            stored_at,
            initial_age: nanos(initial_age),
            fresh_until,
            stale_until: window(freshness.stale_while_revalidate),
            error_until: window(freshness.stale_if_error),
            retain_until: window(retain_for),
            load_time: nanos(load_time),
            weight,
            refreshing: AtomicBool::new(false),
        }
    }

    /// A copy of this entry whose fresh lifetime is over (a soft purge); its stale windows are
    /// kept, counted from now, but never past where they ended (a soft purge does not extend
    /// a stale entry's life, nor bring back one past every window).
    pub(crate) fn expired_copy(&self, now: Stamp) -> Self
    where
        V: Clone,
    {
        let swr = self.stale_until.since(self.fresh_until);
        let sie = self.error_until.since(self.fresh_until);
        let retain = self.retain_until.since(self.fresh_until);
        Self {
            value: self.value.clone(),
            stored_at: self.stored_at,
            initial_age: self.initial_age,
            fresh_until: now.min(self.fresh_until),
            stale_until: deadline(now, swr).min(self.stale_until),
            error_until: deadline(now, sie).min(self.error_until),
            retain_until: deadline(now, retain).min(self.retain_until),
            load_time: self.load_time,
            weight: self.weight,
            refreshing: AtomicBool::new(false),
        }
    }

    /// The cached value.
    pub(crate) fn value(&self) -> &V {
        &self.value
    }

    /// When the value was stored.
    pub(crate) fn stored_at(&self) -> Instant {
        self.stored_at.instant()
    }

    pub(crate) fn age_at(&self, now: Stamp) -> Duration {
        Duration::from_nanos(
            self.initial_age
                .saturating_add(now.nanos_since(self.stored_at)),
        )
    }

    /// How long producing the value took, as its loader reported.
    pub(crate) fn load_time(&self) -> Duration {
        Duration::from_nanos(self.load_time)
    }

    pub(crate) fn ttl_secs_at(&self, now: Stamp) -> i64 {
        now.secs_until(self.fresh_until)
    }

    pub(crate) fn usable_on_error_at(&self, now: Stamp) -> bool {
        now < self.error_until || now < self.stale_until
    }

    /// Whether it has a stale-while-revalidate window at all.
    pub(crate) fn has_stale_window(&self) -> bool {
        self.stale_until > self.fresh_until
    }

    pub(crate) fn fresh_until_stamp(&self) -> Stamp {
        self.fresh_until
    }

    /// Its times on the wall clock (see [`Lifetime`]).
    pub(crate) fn lifetime(&self, clock: &WallClock) -> Lifetime {
        Lifetime {
            stored_at: clock.wall(self.stored_at),
            initial_age: Duration::from_nanos(self.initial_age),
            fresh_until: clock.wall(self.fresh_until),
            stale_until: clock.wall(self.stale_until),
            error_until: clock.wall(self.error_until),
            retain_until: clock.wall(self.retain_until),
            load_time: Duration::from_nanos(self.load_time),
        }
    }

    /// An entry rebuilt from its value and wall-clock times (e.g. read from a shared tier).
    pub(crate) fn from_lifetime(
        value: V,
        lifetime: &Lifetime,
        clock: &WallClock,
        weight: u64,
    ) -> Self {
        Self {
            value,
            stored_at: clock.stamp(lifetime.stored_at),
            initial_age: nanos(lifetime.initial_age),
            fresh_until: clock.stamp(lifetime.fresh_until),
            stale_until: clock.stamp(lifetime.stale_until),
            error_until: clock.stamp(lifetime.error_until),
            retain_until: clock.stamp(lifetime.retain_until),
            load_time: nanos(lifetime.load_time),
            weight,
            refreshing: AtomicBool::new(false),
        }
    }

    /// The last instant at which the entry is of any use.
    pub(crate) fn last_deadline(&self) -> Stamp {
        self.stale_until
            .max(self.error_until)
            .max(self.retain_until)
    }

    pub(crate) fn phase(&self, now: Stamp) -> Phase {
        if now < self.fresh_until {
            Phase::Fresh
        } else if now < self.stale_until {
            Phase::Stale
        } else if now < self.last_deadline() {
            Phase::Expired
        } else {
            Phase::Dead
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_entry_crosses_the_wall_clock_seam_and_comes_back_with_its_deadlines() {
        let freshness = Freshness::new(Duration::from_secs(10))
            .with_stale_while_revalidate(Duration::from_secs(20))
            .with_stale_if_error(Duration::from_secs(300));
        let loaded = Loaded::new("v", freshness).with_initial_age(Duration::from_secs(3));
        let entry = Entry::new(loaded, Stamp::now(), 1);
        let clock = WallClock::now();
        let lifetime = entry.lifetime(&clock);
        assert_eq!(
            lifetime.fresh_until.duration_since(lifetime.stored_at).ok(),
            Some(Duration::from_secs(7))
        );
        assert_eq!(lifetime.last_deadline(), lifetime.error_until);

        tokio::time::advance(Duration::from_secs(8)).await;
        // Another process reading it later: its own clock pair, the same wall-clock deadlines.
        let later = WallClock {
            stamp: Stamp::now(),
            wall: clock.wall + Duration::from_secs(8),
        };
        let back = Entry::from_lifetime("v", &lifetime, &later, 1);
        assert_eq!(back.phase(Stamp::now()), Phase::Stale);
        assert_eq!(back.age_at(Stamp::now()), Duration::from_secs(11));
        assert_eq!(back.lifetime(&later), lifetime);
    }
}
