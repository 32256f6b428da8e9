//! A generic async stale-while-revalidate cache, with no HTTP in it.
//!
//! [`SwrCache`] keeps values with their own [`Freshness`] and answers lookups in three ways:
//!
//! - **fresh**: the stored value, at once; the loader is not called;
//! - **stale** (inside the stale-while-revalidate window): the stored value, at once, while ONE
//!   background refresh per key runs (a shared in-flight set makes sure of "one"); a failed
//!   refresh keeps the old value and backs off before the next attempt;
//! - **miss** (nothing, or past the window): concurrent callers for one key make ONE loader call
//!   and share its result. If the loader fails and the old value is inside its stale-if-error
//!   window, the old value is served and a warning logged; otherwise the loader's error is
//!   returned as it is: a cold start never invents a value.
//!
//! Stale values are never deleted because they are stale: only once past their last deadline,
//! or when the byte budget needs the room.
//!
//! # Example: configuration from a database
//!
//! ```
//! use std::time::Duration;
//! use tower_swr::engine::{Freshness, Loaded, Status, SwrCache};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), std::sync::Arc<String>> {
//! let cache: SwrCache<String, String> = SwrCache::builder()
//!     .capacity_bytes(1 << 20)
//!     .build();
//!
//! let load = || async {
//!     // e.g. SELECT model FROM judges WHERE language = 'en'
//!     Ok::<_, String>(Loaded::new(
//!         "qwen3".to_string(),
//!         Freshness::new(Duration::from_secs(300)).with_stale_if_error(Duration::from_secs(3600)),
//!     ))
//! };
//! let first = cache.get_or_load("judges:en".to_string(), load).await?;
//! assert_eq!(first.status, Status::Miss);
//!
//! let second = cache.get_or_load("judges:en".to_string(), load).await?;
//! assert_eq!(second.status, Status::Fresh);
//! assert_eq!(second.value, "qwen3");
//! # Ok(())
//! # }
//! ```

mod clock;
mod entry;
mod inflight;
mod load;
mod stats;
mod store;
mod sync;
mod tier;

use std::borrow::Borrow;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use quick_cache::Equivalent;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

pub(crate) use self::clock::Stamp;
pub(crate) use self::entry::{setting, Entry, WallClock};
pub use self::entry::{Freshness, Lifetime, Loaded};
pub use self::stats::Stats;
pub use self::tier::{Claim, Remote, SharedTier, TierFuture};
use self::tier::{Tier, TierClaim};

use self::entry::Phase;
use self::inflight::{Backoff, Breaker, FlightLeader, Flights, Join, RefreshGuard, Refreshes};
pub(crate) use self::inflight::{Failure, Partial, Publisher};
use self::load::LoadPanicked;
pub(crate) use self::load::{Accept, Answered, Caller, Found, Outcome};
use self::stats::Counters;
use self::store::{CountEvictions, Store};

/// How a lookup was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// From a fresh entry.
    Fresh,
    /// From a stale entry inside its stale-while-revalidate window; a refresh runs.
    Stale,
    /// From an entry past its stale-while-revalidate window (only returned by
    /// [`SwrCache::get`], which loads nothing).
    Expired,
    /// From a stale entry because the loader failed (stale-if-error).
    StaleIfError,
    /// Loaded now by this caller.
    Miss,
    /// Loaded now by another caller this one waited for (request coalescing; RFC 9211 calls it "collapsed").
    Collapsed,
    /// From the shared tier: another cache loaded it (see [`SharedTier`]).
    SharedTier,
}

/// A value with what the cache knows about it (seed: `{ data, isStale, age }`).
#[derive(Debug, Clone)]
pub struct Lookup<V> {
    /// The value.
    pub value: V,
    /// How it was answered.
    pub status: Status,
    /// Its age now.
    pub age: Duration,
    /// When it was stored.
    pub stored_at: Instant,
    /// Whether a background refresh of its key is running.
    pub refreshing: bool,
}

impl<V> Lookup<V> {
    /// Whether the value is past its fresh lifetime.
    pub fn is_stale(&self) -> bool {
        matches!(
            self.status,
            Status::Stale | Status::Expired | Status::StaleIfError
        )
    }
}

type Weigher<K, V> = Arc<dyn Fn(&K, &V) -> u64 + Send + Sync>;

/// Builder of a [`SwrCache`]; see [`SwrCache::builder`].
#[must_use]
pub struct SwrCacheBuilder<K, V> {
    name: String,
    capacity_bytes: u64,
    largest_entry_bytes: u64,
    weigher: Option<Weigher<K, V>>,
    lock_timeout: Duration,
    refresh_timeout: Duration,
    backoff: Backoff,
    breaker: Option<Breaker>,
    ttl_jitter: f64,
    early_refresh_beta: Option<f64>,
    stale_alert_age: Option<Duration>,
    remember_failures: Duration,
    shared_tier: Option<Arc<dyn SharedTier<K, V>>>,
    shared_tier_timeout: Duration,
}

impl<K, V> fmt::Debug for SwrCacheBuilder<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwrCacheBuilder")
            .field("name", &self.name)
            .field("capacity_bytes", &self.capacity_bytes)
            .field("largest_entry_bytes", &self.largest_entry_bytes)
            .field(
                "weigher",
                &self.weigher.as_ref().map(|_| "Fn(&K, &V) -> u64"),
            )
            .field("lock_timeout", &self.lock_timeout)
            .field("refresh_timeout", &self.refresh_timeout)
            .field("backoff", &self.backoff)
            .field("breaker", &self.breaker)
            .field("ttl_jitter", &self.ttl_jitter)
            .field("early_refresh_beta", &self.early_refresh_beta)
            .field("stale_alert_age", &self.stale_alert_age)
            .field("remember_failures", &self.remember_failures)
            .field(
                "shared_tier",
                &self.shared_tier.as_ref().map(|_| "dyn SharedTier"),
            )
            .field("shared_tier_timeout", &self.shared_tier_timeout)
            .finish()
    }
}

impl<K, V> Default for SwrCacheBuilder<K, V> {
    fn default() -> Self {
        Self {
            name: "swr".to_owned(),
            capacity_bytes: 64 << 20,
            largest_entry_bytes: 1 << 20,
            weigher: None,
            lock_timeout: Duration::from_secs(5),
            refresh_timeout: Duration::from_secs(30),
            backoff: Backoff {
                base: Duration::from_secs(1),
                max: Duration::from_secs(60),
            },
            breaker: Some(Breaker {
                threshold: 10,
                cooldown: Duration::from_secs(30),
            }),
            ttl_jitter: 0.0,
            early_refresh_beta: None,
            stale_alert_age: None,
            remember_failures: DEFAULT_REMEMBER_FAILURES,
            shared_tier: None,
            shared_tier_timeout: DEFAULT_SHARED_TIER_TIMEOUT,
        }
    }
}

impl<K, V> SwrCacheBuilder<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// The byte budget of the store (default 64 MiB). Entries are evicted when it is full.
    pub fn capacity_bytes(mut self, bytes: u64) -> Self {
        self.capacity_bytes = bytes;
        self
    }

    /// The weight of the heaviest single entry that must stay storable (default 1 MiB).
    /// The store is laid out (in fewer, larger shards) so that such an entry fits, as far as
    /// the budget allows: no entry is heavier than about 95 % of
    /// [`capacity_bytes`](Self::capacity_bytes) less the per-entry overhead.
    /// [`SwrCache::max_entry_bytes`] tells the bound in effect.
    pub fn largest_entry_bytes(mut self, bytes: u64) -> Self {
        self.largest_entry_bytes = bytes;
        self
    }

    /// How many bytes an entry costs (default: `size_of::<V>()`); a fixed per-entry overhead is
    /// added to it.
    pub fn weigher(mut self, weigher: impl Fn(&K, &V) -> u64 + Send + Sync + 'static) -> Self {
        self.weigher = Some(Arc::new(weigher));
        self
    }

    /// How long a caller waits for another caller's load of the same key before ONE of the
    /// waiters starts another load (default 5 s). Every waiter, that one included, takes
    /// whichever load stores first; a load still running after another lock timeout lets one
    /// more start. So a slow loader gets at most one extra call per lock timeout per key.
    /// When loads keep failing, a caller that has waited this long loads on its own.
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = entry::setting(timeout);
        self
    }

    /// How long a background refresh may run before it is abandoned as failed (default 30 s;
    /// zero turns the timeout off).
    pub fn refresh_timeout(mut self, timeout: Duration) -> Self {
        self.refresh_timeout = entry::setting(timeout);
        self
    }

    /// After a failed refresh, the next refresh of that key waits `base`, doubling with each
    /// further failure up to `max` (defaults 1 s and 60 s). Each wait is jittered: a random
    /// time between half of it and all of it, so keys that failed together do not retry
    /// together.
    pub fn refresh_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff = Backoff {
            base: entry::setting(base),
            max: entry::setting(max),
        };
        self
    }

    /// The cache's name, used as the `cache` label of metrics and in logs (default `swr`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// After `threshold` consecutive failed refreshes (any keys), pause all background refreshes
    /// for `cooldown` while stale keeps being served (default 10 failures, 30 s). A threshold of
    /// 0 disables the breaker.
    pub fn circuit_breaker(mut self, threshold: u32, cooldown: Duration) -> Self {
        self.breaker = (threshold > 0).then_some(Breaker {
            threshold,
            cooldown: entry::setting(cooldown),
        });
        self
    }

    /// Spread fresh lifetimes by ± `fraction` (e.g. `0.1` for ±10 %) at store time, so keys
    /// stored together do not expire together (default 0: off).
    pub fn ttl_jitter(mut self, fraction: f64) -> Self {
        self.ttl_jitter = fraction.clamp(0.0, 1.0);
        self
    }

    /// Probabilistic early refresh (XFetch, Vattani et al.): a fresh hit starts the background
    /// refresh early with a probability that rises as expiry nears, scaled by how long the
    /// value took to load and by `beta` (1.0 is the usual choice; larger refreshes earlier).
    /// Default off.
    pub fn early_refresh(mut self, beta: f64) -> Self {
        self.early_refresh_beta = (beta > 0.0).then_some(beta);
        self
    }

    /// Log a warning whenever a value older than `age` is served stale (default: never;
    /// zero turns it off): inside its stale-while-revalidate window, or standing in for a
    /// failed load (stale-if-error, the outage case).
    pub fn stale_alert_age(mut self, age: Duration) -> Self {
        self.stale_alert_age = (!age.is_zero()).then_some(entry::setting(age));
        self
    }

    /// How long a failed load of a key stays that key's answer (default 1 s; zero turns it
    /// off). Meanwhile, callers that find nothing usable get the same error at once, without
    /// calling the loader, so a failing database or partner API sees one call per key per
    /// while, not one per caller. A value inside its stale-if-error window still wins. At
    /// most 1,024 keys' failures are held at a time (outside the byte budget), swept of
    /// expired ones by the next load that ends after they expire.
    pub fn remember_failures(mut self, duration: Duration) -> Self {
        self.remember_failures = entry::setting(duration);
        self
    }

    /// A second tier shared with other caches (other instances of a service; see
    /// [`SharedTier`]): consulted before the loader on a miss and before a background
    /// refresh, written after every value a load stores. A fresh hit never reaches it.
    pub fn shared_tier(mut self, tier: Arc<dyn SharedTier<K, V>>) -> Self {
        self.shared_tier = Some(tier);
        self
    }

    /// How long a call to the shared tier may take before the engine goes on without it
    /// (default 50 ms; zero turns the timeout off).
    pub fn shared_tier_timeout(mut self, timeout: Duration) -> Self {
        self.shared_tier_timeout = entry::setting(timeout);
        self
    }

    /// Builds the cache.
    pub fn build(self) -> SwrCache<K, V> {
        let evictions = CountEvictions::default();
        let store = store::build(
            self.capacity_bytes,
            self.largest_entry_bytes,
            evictions.clone(),
        );
        let weigher = self.weigher.unwrap_or_else(|| {
            Arc::new(|_: &K, _: &V| std::mem::size_of::<V>() as u64) as Weigher<K, V>
        });
        let cache = SwrCache {
            inner: Arc::new(Inner {
                max_entry_weight: store::max_entry_weight(&store),
                store,
                weigher,
                refreshes: Arc::new(Refreshes::new(self.backoff, self.breaker, &self.name)),
                name: self.name.as_str().into(),
                flights: Arc::new(Flights::new(self.remember_failures)),
                lock_timeout: self.lock_timeout,
                refresh_timeout: self.refresh_timeout,
                counters: Counters::new(&self.name),
                evictions,
                tasks: TaskTracker::new(),
                ttl_jitter: self.ttl_jitter,
                early_refresh_beta: self.early_refresh_beta,
                stale_alert_age: self.stale_alert_age,
                tier: self.shared_tier.map(|tier| Tier {
                    tier,
                    timeout: self.shared_tier_timeout,
                }),
                tier_fence: std::sync::atomic::AtomicU64::new(0),
            }),
        };
        if let Some(tier) = &cache.inner.tier {
            tier.tier.attach(Remote {
                cache: Arc::new(AttachedCache(Arc::downgrade(&cache.inner))),
            });
        }
        cache
    }
}

/// The cache a shared tier applies other caches' invalidations to (weakly: the tier must not
/// keep it alive).
struct AttachedCache<K, V>(std::sync::Weak<Inner<K, V>>);

impl<K, V> tier::ApplyRemote<K> for AttachedCache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn apply(&self, what: tier::Applied<'_, K>) -> bool {
        let Some(inner) = self.0.upgrade() else {
            return false;
        };
        let cache = SwrCache { inner };
        match what {
            tier::Applied::Remove(key) => cache.remove_here(key, Heard::Remotely).is_some(),
            tier::Applied::MarkStale(key) => cache.mark_stale_here(key, Heard::Remotely).is_some(),
        }
    }

    fn apply_where(&self, soft: bool, matches: &dyn Fn(&K) -> bool) -> usize {
        let Some(inner) = self.0.upgrade() else {
            return 0;
        };
        let cache = SwrCache { inner };
        if soft {
            cache.mark_stale_matching(matches, Heard::Remotely)
        } else {
            cache.remove_matching(matches, Heard::Remotely)
        }
    }

    fn alive(&self) -> bool {
        self.0.strong_count() > 0
    }
}

/// Where an invalidation comes from, for [`SwrCache::fence_tier`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Heard {
    /// Made on this cache: its removal from the tier may still be under way.
    Here,
    /// Another cache's, applied from the tier: the tier heard it first.
    Remotely,
}

struct Inner<K, V> {
    /// The cache's name: the `cache` label of its metrics and field of its log events.
    name: Arc<str>,
    store: Store<K, V>,
    max_entry_weight: u64,
    weigher: Weigher<K, V>,
    refreshes: Arc<Refreshes<K>>,
    flights: Arc<Flights<K, V>>,
    lock_timeout: Duration,
    refresh_timeout: Duration,
    counters: Counters,
    evictions: CountEvictions,
    /// Background refreshes, for graceful shutdown.
    tasks: TaskTracker,
    ttl_jitter: f64,
    early_refresh_beta: Option<f64>,
    stale_alert_age: Option<Duration>,
    tier: Option<Tier<K, V>>,
    /// With a tier: when this cache last invalidated anything (nanoseconds since the Unix
    /// epoch). A tier copy stored before it is not taken: it would undo the invalidation.
    tier_fence: std::sync::atomic::AtomicU64,
}

impl<K: Hash + Eq + Clone, V> Inner<K, V> {
    /// Brings the `metrics` gauges (`swr_entries`, `swr_bytes`, `swr_refreshes_running`) up to
    /// date: after every change to what they count, so a scrape never reads old figures.
    #[inline]
    fn publish_gauges(&self) {
        #[cfg(feature = "metrics")]
        self.counters.gauges.set(
            self.store.len() as u64,
            self.store.weight(),
            self.refreshes.running() as u64,
        );
    }
}

/// An async stale-while-revalidate cache over `K → V`, bounded in bytes.
///
/// Cloning is cheap and clones share the cache. See the [module docs](self) for the behaviour.
pub struct SwrCache<K, V> {
    inner: Arc<Inner<K, V>>,
}

impl<K, V> Clone for SwrCache<K, V> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K: Hash + Eq, V> fmt::Debug for SwrCache<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwrCache")
            .field("entries", &self.inner.store.len())
            .field("bytes", &self.inner.store.weight())
            .field("capacity_bytes", &self.inner.store.capacity())
            .finish_non_exhaustive()
    }
}

/// Whether (and under which claim) a stored value is written to the shared tier.
pub(crate) enum Share<K: Clone + Send + Sync + 'static, V: 'static> {
    No,
    Yes(Option<TierClaim<K, V>>),
}

/// How long a lookup in the shared tier may take unless configured otherwise.
const DEFAULT_SHARED_TIER_TIMEOUT: Duration = Duration::from_millis(50);

/// How long a failed load stays its key's answer unless configured otherwise.
pub(crate) const DEFAULT_REMEMBER_FAILURES: Duration = Duration::from_secs(1);

/// Why a background refresh failed, for the log.
type RefreshFailure = String;

impl<K, V> SwrCache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// A builder with the defaults: 64 MiB, entries up to 1 MiB, 5 s lock timeout, 30 s refresh
    /// timeout, refresh backoff from 1 s to 60 s.
    pub fn builder() -> SwrCacheBuilder<K, V> {
        SwrCacheBuilder::default()
    }

    /// A cache holding `capacity_bytes`, with the other defaults of [`SwrCache::builder`].
    pub fn new(capacity_bytes: u64) -> Self {
        Self::builder().capacity_bytes(capacity_bytes).build()
    }

    /// The current value of `key` and its state, without loading or refreshing anything.
    ///
    /// Stale and expired values are returned too (see [`Lookup::status`]), as long as any of
    /// their deadlines is ahead.
    pub fn get<Q>(&self, key: &Q) -> Option<Lookup<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let now = Stamp::now();
        let entry = self.inner.store.get(key)?;
        let status = match entry.phase(now) {
            Phase::Fresh => Status::Fresh,
            Phase::Stale => Status::Stale,
            Phase::Expired => Status::Expired,
            Phase::Dead => return None,
        };
        Some(Lookup {
            value: entry.value().clone(),
            status,
            age: entry.age_at(now),
            stored_at: entry.stored_at(),
            refreshing: self.inner.refreshes.is_running(key),
        })
    }

    /// The wall-clock times of `key`'s entry (when it was stored, until when it is fresh,
    /// servable stale, usable on error), as the storage seam carries them; `None` if nothing
    /// usable is stored.
    pub fn lifetime<Q>(&self, key: &Q) -> Option<Lifetime>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let entry = self.inner.store.get(key)?;
        (entry.phase(Stamp::now()) != Phase::Dead).then(|| entry.lifetime(&WallClock::now()))
    }

    /// Stores `value`, fresh for `freshness`, replacing what was there. Returns whether it was
    /// stored (it is not when heavier than the largest storable entry; the old value then stays).
    ///
    /// A load of `key` under way when this is called stores nothing: the inserted value wins.
    pub fn insert(&self, key: K, value: V, freshness: Freshness) -> bool {
        let (entry, fits) = self.entry_for(&key, Loaded::new(value, freshness));
        if !fits {
            return false;
        }
        self.fence_loads(&key);
        self.fence_tier();
        self.insert_entry(key, &entry);
        true
    }

    /// Stores `value` with wall-clock times from elsewhere (another instance, a snapshot, a
    /// shared tier; see [`lifetime`](Self::lifetime)), replacing what was there. Returns whether
    /// it was stored: not when heavier than the largest storable entry, nor when every deadline
    /// has passed. Like [`insert`](Self::insert), it fences the loads of `key` under way.
    pub fn insert_with_lifetime(&self, key: K, value: V, lifetime: Lifetime) -> bool {
        let weight = (self.inner.weigher)(&key, &value).saturating_add(store::ENTRY_OVERHEAD);
        if weight > self.inner.max_entry_weight {
            self.inner.counters.store_rejections.inc();
            return false;
        }
        let entry = Entry::from_lifetime(value, &lifetime, &WallClock::now(), weight);
        if entry.phase(Stamp::now()) == Phase::Dead {
            return false;
        }
        self.fence_loads(&key);
        self.fence_tier();
        self.insert_entry(key, &Arc::new(entry));
        true
    }

    /// Removes `key`. Returns whether something was there.
    ///
    /// Like every invalidation ([`mark_stale`](Self::mark_stale), [`remove_if`](Self::remove_if),
    /// [`clear`](Self::clear)), this fences the loads of the key under way: they store nothing,
    /// and a caller that comes after it starts a load of its own rather than wait for theirs.
    pub fn remove<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let removed = self.remove_here(key, Heard::Here);
        if let Some(key) = &removed {
            self.forget_in_tier(key);
        }
        removed.is_some()
    }

    /// Whether the shared tier holds a value for `key` that no invalidation has reached (see
    /// [`SharedTier::contains`]). `false` without a tier, or when it does not answer within its
    /// timeout.
    pub async fn in_shared_tier(&self, key: &K) -> bool {
        let Some(tier) = &self.inner.tier else {
            return false;
        };
        tier.bounded(tier.tier.contains(key)).await.unwrap_or(false)
    }

    /// Removes `key` from this cache only (fencing its loads), not from the shared tier.
    fn remove_here<Q>(&self, key: &Q, heard: Heard) -> Option<K>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.fence_loads(key);
        self.fence_tier_for(heard);
        let removed = self.inner.store.remove(key).map(|(key, _)| key);
        self.inner.publish_gauges();
        removed
    }

    /// Marks `key` stale (a soft purge): the next lookup is answered from it while it refreshes,
    /// within the entry's stale-while-revalidate window; an entry stored without one (e.g.
    /// [`Freshness::new`]) is expired instead, and the next lookup loads (or, with
    /// stale-if-error, falls back on it if the load fails). Returns whether something was
    /// there.
    pub fn mark_stale<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let marked = self.mark_stale_here(key, Heard::Here);
        if let Some(key) = &marked {
            let key = key.clone();
            self.in_tier(move |tier| async move {
                tier.bounded(tier.tier.mark_stale(&key)).await;
            });
        }
        marked.is_some()
    }

    /// Marks `key` stale in this cache only (see [`mark_stale`](Self::mark_stale)); the key
    /// when it was held.
    fn mark_stale_here<Q>(&self, key: &Q, heard: Heard) -> Option<K>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.fence_loads(key);
        self.fence_tier_for(heard);
        let entry = self.inner.store.peek(key)?;
        let now = Stamp::now();
        let stale = Arc::new(entry.expired_copy(now));
        // `replace` only succeeds if the key is still there, so a concurrent removal wins.
        let (key, _) = self
            .inner
            .store
            .remove_if(key, |current| Arc::ptr_eq(current, &entry))?;
        self.inner.store.insert(key.clone(), stale);
        self.inner.publish_gauges();
        Some(key)
    }

    /// Marks every entry whose key matches `predicate` stale (see [`mark_stale`](Self::mark_stale)).
    /// Returns how many.
    pub fn mark_stale_where(&self, predicate: impl Fn(&K) -> bool) -> usize {
        self.mark_stale_matching(predicate, Heard::Here)
    }

    fn mark_stale_matching(&self, predicate: impl Fn(&K) -> bool, heard: Heard) -> usize {
        self.fence_loads_where(&predicate);
        self.fence_tier_for(heard);
        let keys: Vec<K> = self
            .inner
            .store
            .iter()
            .filter(|(key, _)| predicate(key))
            .map(|(key, _)| key)
            .collect();
        keys.iter()
            .filter(|key| self.mark_stale_here(*key, heard).is_some())
            .count()
    }

    /// Removes every entry whose key matches `predicate`.
    /// Returns how many.
    pub fn remove_if(&self, predicate: impl Fn(&K) -> bool) -> usize {
        self.remove_matching(predicate, Heard::Here)
    }

    fn remove_matching(&self, predicate: impl Fn(&K) -> bool, heard: Heard) -> usize {
        self.fence_loads_where(&predicate);
        self.fence_tier_for(heard);
        let removed = std::sync::atomic::AtomicUsize::new(0);
        self.inner.store.retain(|key, _| {
            let remove = predicate(key);
            removed.fetch_add(usize::from(remove), std::sync::atomic::Ordering::Relaxed);
            !remove
        });
        self.inner.publish_gauges();
        removed.into_inner()
    }

    /// Removes every entry, here and (with a tier that can, see [`SharedTier::clear`]) in the
    /// shared tier.
    pub fn clear(&self) {
        self.fence_loads_where(|_| true);
        self.fence_tier();
        self.inner.store.clear();
        self.inner.publish_gauges();
        self.in_tier(|tier| async move {
            tier.bounded(tier.tier.clear()).await;
        });
    }

    /// Invalidates every entry whose key `matches`, here and, through the shared tier, in every
    /// cache attached to it: `scope` is the same set of keys in the tier's own encoding (its
    /// other caches cannot run this closure), `soft` marks them stale rather than removing them.
    /// Without a tier this is [`remove_if`](Self::remove_if) or
    /// [`mark_stale_where`](Self::mark_stale_where). Returns how many entries were here.
    pub fn invalidate_scope(
        &self,
        scope: &[u8],
        soft: bool,
        matches: impl Fn(&K) -> bool,
    ) -> usize {
        let here = if soft {
            self.mark_stale_where(matches)
        } else {
            self.remove_if(matches)
        };
        let scope = scope.to_vec();
        self.in_tier(move |tier| async move {
            tier.bounded(tier.tier.invalidate_scope(&scope, soft)).await;
        });
        here
    }

    /// Sends an invalidation `scope` to the other caches of the shared tier only: for scopes
    /// whose entries here the caller has already dealt with by other means (the HTTP layer's
    /// tag purges). Nothing happens without a tier.
    pub(crate) fn share_invalidation(&self, scope: Vec<u8>, soft: bool) {
        self.in_tier(move |tier| async move {
            tier.bounded(tier.tier.invalidate_scope(&scope, soft)).await;
        });
    }

    /// Whether a background refresh of `key` is running.
    pub fn is_refreshing<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.refreshes.is_running(key)
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.inner.store.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.inner.store.is_empty()
    }

    /// The heaviest entry (weigher's figure) that can be stored.
    pub fn max_entry_bytes(&self) -> u64 {
        self.inner
            .max_entry_weight
            .saturating_sub(store::ENTRY_OVERHEAD)
    }

    /// A snapshot of the counters and sizes.
    pub fn stats(&self) -> Stats {
        let mut stats = self.inner.counters.snapshot();
        stats.evictions = self
            .inner
            .evictions
            .0
            .load(std::sync::atomic::Ordering::Relaxed);
        stats.entries = self.inner.store.len() as u64;
        stats.bytes = self.inner.store.weight();
        stats.capacity_bytes = self.inner.store.capacity();
        stats.refreshes_running = self.inner.refreshes.running() as u64;
        stats.loads_running = self.inner.flights.foreground_len() as u64;
        stats.refreshes_paused = self.inner.refreshes.paused(Instant::now());
        self.inner
            .counters
            .gauges
            .set(stats.entries, stats.bytes, stats.refreshes_running);
        stats
    }

    /// Graceful shutdown: no new background refresh starts from now on, and this waits up to
    /// `deadline` for the running ones. Returns whether they all finished in time. Lookups keep
    /// working (stale entries are served without refreshing).
    pub async fn shutdown(&self, deadline: Duration) -> bool {
        self.inner.refreshes.close();
        self.inner.tasks.close();
        tokio::time::timeout(deadline, self.inner.tasks.wait())
            .await
            .is_ok()
    }

    /// The value of `key`, loading it with `load` when needed.
    ///
    /// - fresh: returned at once, `load` is dropped uncalled;
    /// - stale inside the stale-while-revalidate window: returned at once, and `load` runs in a
    ///   spawned task unless a refresh of `key` is already running (or backing off after a
    ///   failure); its result replaces the value, its failure keeps it;
    /// - otherwise: one caller per key runs `load`, the others wait for its result (past the
    ///   lock timeout one of them starts a second load, and all take whichever stores first;
    ///   see [`SwrCacheBuilder::lock_timeout`]). If the load fails and the old value is
    ///   inside its stale-if-error window, the old value is returned (and a warning logged);
    ///   otherwise the error is returned, to the caller that loaded and to every caller that
    ///   waited for it: one failing load, one error shared as an `Arc`, as moka's
    ///   `try_get_with` does. For a while after ([`SwrCacheBuilder::remember_failures`], 1 s
    ///   by default) that error is the key's answer without calling `load`.
    ///
    /// A loader that panics is called once all the same: the panic goes on up in the caller
    /// that ran it and in every caller that waited for it (as with a shared future), unless a
    /// stale-if-error value answers them.
    ///
    /// Needs a tokio runtime (for the background refresh).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_swr::engine::{Freshness, Loaded, Status, SwrCache};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cache: SwrCache<String, u64> = SwrCache::builder().build();
    ///
    /// // Nothing stored and the load fails: its error, never an invented value.
    /// let down = cache.get_or_load("rate".into(), || async { Err::<Loaded<u64>, _>("db down") });
    /// assert_eq!(*down.await.unwrap_err(), "db down");
    /// // For a moment, the same error answers without asking the database again.
    /// let again = cache.get_or_load("rate".into(), || async { Err::<Loaded<u64>, _>("not called") });
    /// assert_eq!(*again.await.unwrap_err(), "db down");
    ///
    /// let fresh = Freshness::new(Duration::from_secs(60));
    /// let load = move || async move { Ok::<_, &str>(Loaded::new(42, fresh)) };
    /// let got = cache.get_or_load("ratio".into(), load).await.unwrap();
    /// assert_eq!((got.status, got.value), (Status::Miss, 42));
    /// # }
    /// ```
    // A named `Send` future rather than `async fn`: its `Send` is proven here, once, where the
    // compiler can, rather than at each caller (which fails for borrowed values, rust#110338).
    #[allow(clippy::manual_async_fn)]
    pub fn get_or_load<F, Fut, E>(
        &self,
        key: K,
        load: F,
    ) -> impl Future<Output = Result<Lookup<V>, Arc<E>>> + Send + '_
    where
        K: fmt::Debug,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Loaded<V>, E>> + Send + 'static,
        E: fmt::Display + Send + Sync + 'static,
    {
        async move { self.lookup_or_load(key, load).await }
    }

    async fn lookup_or_load<F, Fut, E>(&self, key: K, load: F) -> Result<Lookup<V>, Arc<E>>
    where
        K: fmt::Debug,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Loaded<V>, E>> + Send + 'static,
        E: fmt::Display + Send + Sync + 'static,
    {
        let now = Stamp::now();
        match self.find(&key, now, |_| true) {
            Found::Fresh {
                entry,
                refresh_early,
            } => {
                // An early refresh (XFetch) started now, or one under way since.
                let refreshing = if refresh_early {
                    self.refresh(&key, &entry, now, || deferred(key.clone(), load))
                } else {
                    entry.is_refreshing()
                };
                Ok(lookup_of(&entry, Status::Fresh, refreshing, now))
            }
            Found::Stale(entry) => {
                let refreshing = self.refresh(&key, &entry, now, || deferred(key.clone(), load));
                Ok(lookup_of(&entry, Status::Stale, refreshing, now))
            }
            Found::Miss { expired } => {
                let caller = LoaderCaller {
                    cache: Arc::clone(&self.inner.name),
                    load: Some(load),
                    error: PhantomData,
                };
                self.load_with(key, expired, caller).await
            }
            Found::Refused(_) => unreachable!("every value is accepted"),
        }
    }

    // ---- building blocks shared with the HTTP adapter ----

    /// The entry of `key` if any of its deadlines is ahead; a dead entry is removed.
    pub(crate) fn entry<Q>(&self, key: &Q, now: Stamp) -> Option<Arc<Entry<V>>>
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        let entry = self.inner.store.get(key)?;
        if now >= entry.last_deadline() {
            self.inner
                .store
                .remove_if(key, |current| Arc::ptr_eq(current, &entry));
            self.inner.publish_gauges();
            return None;
        }
        Some(entry)
    }

    /// Removes the entry of a borrowed key (upkeep, not an invalidation: loads go on).
    pub(crate) fn remove_equivalent<Q>(&self, key: &Q) -> bool
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        let removed = self.inner.store.remove(key).is_some();
        self.inner.publish_gauges();
        removed
    }

    /// Invalidates the entry of a borrowed key, fencing its loads (see [`SwrCache::remove`]).
    pub(crate) fn purge_equivalent<Q>(&self, key: &Q) -> bool
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        self.fence_loads_where(|k| key.equivalent(k));
        self.fence_tier();
        let removed = self.inner.store.remove(key).is_some();
        self.inner.publish_gauges();
        removed
    }

    /// The entry a loaded value becomes, and whether it is light enough to store.
    fn entry_for(&self, key: &K, loaded: Loaded<V>) -> (Arc<Entry<V>>, bool) {
        let weight = (self.inner.weigher)(key, &loaded.value).saturating_add(store::ENTRY_OVERHEAD);
        let fits = weight <= self.inner.max_entry_weight;
        if !fits {
            self.inner.counters.store_rejections.inc();
        }
        let mut loaded = loaded;
        if self.inner.ttl_jitter > 0.0 {
            let spread = (fastrand::f64() * 2.0 - 1.0) * self.inner.ttl_jitter;
            loaded.freshness.ttl = entry::setting(loaded.freshness.ttl).mul_f64(1.0 + spread);
        }
        (Arc::new(Entry::new(loaded, Stamp::now(), weight)), fits)
    }

    fn insert_entry(&self, key: K, entry: &Arc<Entry<V>>) {
        self.inner.refreshes.reset(&key);
        self.inner.store.insert(key, Arc::clone(entry));
        self.inner.counters.stores.inc();
        self.inner.publish_gauges();
    }

    /// Stores a loaded entry unless an invalidation fenced its load since it began: the load's
    /// flight (`leader`) was fenced, or, for a load outside any flight, any fence went up
    /// since `epoch`. Returns whether it was stored; `share`: then write it to the shared tier.
    fn store_fenced(
        &self,
        key: K,
        entry: &Arc<Entry<V>>,
        leader: Option<&FlightLeader<K, V>>,
        epoch: u64,
        share: Share<K, V>,
    ) -> bool {
        let (share, claim) = match share {
            Share::No => (false, None),
            Share::Yes(claim) => (true, claim),
        };
        let tier_key = self
            .inner
            .tier
            .as_ref()
            .filter(|_| share)
            .map(|_| key.clone());
        let stored = match leader {
            Some(leader) => leader.store_if_current(|| self.insert_entry(key, entry)),
            None => (self.inner.flights).store_if_unfenced(epoch, || self.insert_entry(key, entry)),
        };
        if let (Some(key), Some(())) = (tier_key, stored) {
            self.share_in_tier(key, entry, claim);
        }
        if stored.is_none() {
            tracing::debug!("an invalidation came after this load began: not stored");
        }
        stored.is_some()
    }

    /// Writes a value this cache loaded to the shared tier, detached (the answer does not wait).
    fn share_in_tier(&self, key: K, entry: &Arc<Entry<V>>, claim: Option<TierClaim<K, V>>) {
        let Some(tier) = &self.inner.tier else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (tier, entry) = (tier.clone(), Arc::clone(entry));
        let lifetime = entry.lifetime(&WallClock::now());
        self.inner.tasks.spawn_on(
            async move {
                let open = Claim::Open;
                let under = claim.as_ref().map_or(&open, |claim| claim.for_key(&key));
                let put = tier.tier.put_claimed(&key, entry.value(), &lifetime, under);
                if tier.bounded(put).await.is_none() {
                    tracing::debug!("the shared tier did not take a value in time");
                }
                // The lock goes back after the write, so waiters find the value.
                drop(claim);
            },
            &runtime,
        );
    }

    /// Fences the loads of `key` under way, its background refresh too: they store nothing,
    /// and the next caller (or stale hit) starts its own rather than wait for theirs.
    fn fence_loads<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.inner.flights.fence(key);
        self.inner.refreshes.fence(key);
    }

    /// Fences the loads of every key matching `fenced` (see [`fence_loads`](Self::fence_loads)).
    fn fence_loads_where(&self, fenced: impl Fn(&K) -> bool) {
        self.inner.flights.fence_where(&fenced);
        self.inner.refreshes.fence_where(fenced);
    }

    /// [`fence_tier`](Self::fence_tier) for an invalidation made here, or heard from a tier
    /// that does not fence invalidations itself. One a fencing tier heard first needs none:
    /// the tier took its copy out (or fenced it) before telling, so what it holds now is newer,
    /// and a fence at the time of hearing would refuse the value another cache reloaded after
    /// the invalidation (one more origin call per instance that heard late).
    fn fence_tier_for(&self, heard: Heard) {
        let fenced_by_tier = heard == Heard::Remotely
            && self
                .inner
                .tier
                .as_ref()
                .is_some_and(|tier| tier.tier.fences_invalidations());
        if !fenced_by_tier {
            self.fence_tier();
        }
    }

    /// Notes an invalidation: no tier copy stored before now is taken from now on.
    fn fence_tier(&self) {
        if self.inner.tier.is_some() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_nanos() as u64);
            self.inner
                .tier_fence
                .fetch_max(now, std::sync::atomic::Ordering::AcqRel);
        }
    }

    /// Removes a key from the shared tier, detached.
    fn forget_in_tier(&self, key: &K) {
        let key = key.clone();
        self.in_tier(move |tier| async move {
            tier.bounded(tier.tier.remove(&key)).await;
        });
    }

    /// Runs a call to the shared tier detached (nothing waits for it), if there is a tier and a
    /// runtime to run it on.
    fn in_tier<F, Fut>(&self, call: F)
    where
        F: FnOnce(Tier<K, V>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(tier) = &self.inner.tier else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        self.inner.tasks.spawn_on(call(tier.clone()), &runtime);
    }

    /// Waits (up to the lock timeout) for the value another cache is loading under the tier's
    /// lock on `key`: polls the tier, a little less often each time. When the lock is free
    /// again without a value (its holder failed, went away, or its lease ended) this cache
    /// takes it and loads: [`TierWait::Claimed`].
    ///
    /// `than`: when the newest copy this cache knows of was stored. A copy stored after it is
    /// the holder's value, taken in whichever phase it is: a response with `max-age=0` and a
    /// stale window is stale as soon as it is written, and is still the answer to the requests
    /// that waited for its load (as it is for those waiting in the holder's own process).
    async fn wait_in_tier(&self, key: &K, than: Option<std::time::SystemTime>) -> TierWait<K, V> {
        let Some(tier) = &self.inner.tier else {
            return TierWait::GaveUp;
        };
        let newer_than = past_known(than);
        let deadline = Instant::now() + self.inner.lock_timeout;
        let mut pause = Duration::from_millis(5);
        loop {
            let now = Instant::now();
            if now >= deadline {
                return TierWait::GaveUp;
            }
            tokio::time::sleep_until((now + pause).min(deadline)).await;
            if let Some(entry) = self.copy_in_tier(key, newer_than).await {
                return TierWait::Found(entry);
            }
            let mut claim = TierClaim::ask_again(tier, key).await;
            if !claim.is_held_elsewhere() {
                // The holder's value may have landed just before it let go of the lock.
                if let Some(entry) = self.copy_in_tier(key, newer_than).await {
                    return TierWait::Found(entry);
                }
                if claim.is_written() {
                    // Written, but of no use here (another variant of the family, too heavy
                    // for this cache): the lock, as a miss asks it (the others wait on it).
                    claim = TierClaim::ask(tier, key).await;
                    if claim.is_held_elsewhere() {
                        pause = (pause * 2).min(Duration::from_millis(50));
                        continue;
                    }
                }
                return TierWait::Claimed(claim);
            }
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Whether a shared tier is configured.
    pub(crate) fn has_shared_tier(&self) -> bool {
        self.inner.tier.is_some()
    }

    /// The shared tier's fresh copy of `key`, stored here too (a `Vary` variant another cache
    /// stored, found once its URL's `Vary` is known). One tier read; `None` without a tier.
    pub(crate) async fn copy_from_tier(&self, key: &K) -> Option<Arc<Entry<V>>> {
        self.copy_from_tier_since(key, None).await
    }

    /// The tier's fresh copy of `key` stored after `than` (if given), stored here too unless
    /// an invalidation came meanwhile.
    async fn copy_from_tier_since(
        &self,
        key: &K,
        than: Option<std::time::SystemTime>,
    ) -> Option<Arc<Entry<V>>> {
        self.inner.tier.as_ref()?;
        let epoch = self.inner.flights.epoch();
        let found = self.fresh_in_tier(key, than).await?;
        self.store_fenced(key.clone(), &found, None, epoch, Share::No)
            .then_some(found)
    }

    /// For a stale hit that is about to start the refresh: the shared tier's copy of `key` if
    /// another cache stored a fresh one since `stale` was (then it replaces `stale` here), so
    /// the answer is that copy rather than the stale one. One tier read, bounded by the tier
    /// timeout; `None` without a tier, while a refresh already runs or the key backs off, or
    /// when the tier has nothing newer.
    pub(crate) async fn fresher_in_tier(&self, key: &K, stale: &Entry<V>) -> Option<Arc<Entry<V>>> {
        // Only for the request that would start the refresh: while one runs or the key backs
        // off after failures, stale hits are answered at once without asking the tier.
        if self.inner.tier.is_none()
            || stale.is_refreshing()
            || !self.inner.refreshes.may_start(key, Instant::now())
        {
            return None;
        }
        let than = stale.lifetime(&WallClock::now()).stored_at;
        self.copy_from_tier_since(key, Some(than)).await
    }

    /// Removes `key` from the shared tier only (an invalidation whose local part is done).
    pub(crate) fn forget_shared(&self, key: K) {
        self.in_tier(move |tier| async move {
            tier.bounded(tier.tier.remove(&key)).await;
        });
    }

    /// The shared tier's fresh copy of `key`, stored after `than`, as an entry of this cache.
    async fn fresh_in_tier(
        &self,
        key: &K,
        than: Option<std::time::SystemTime>,
    ) -> Option<Arc<Entry<V>>> {
        let copy = self.copy_in_tier(key, than).await?;
        (copy.phase(Stamp::now()) == Phase::Fresh).then_some(copy)
    }

    /// The shared tier's copy of `key`, stored after `than`, as an entry of this cache, in
    /// whichever phase it is (none once it is of no use).
    pub(crate) async fn copy_in_tier(
        &self,
        key: &K,
        than: Option<std::time::SystemTime>,
    ) -> Option<Arc<Entry<V>>> {
        let tier = self.inner.tier.as_ref()?;
        let fence = self
            .inner
            .tier_fence
            .load(std::sync::atomic::Ordering::Acquire);
        let fence = (fence > 0)
            .then(|| std::time::UNIX_EPOCH + Duration::from_nanos(fence))
            .filter(|fence| tier.honours_fence(*fence, std::time::SystemTime::now()));
        let than = than.max(fence);
        let (value, lifetime) = tier.usable(key, than).await?;
        let weight = (self.inner.weigher)(key, &value).saturating_add(store::ENTRY_OVERHEAD);
        (weight <= self.inner.max_entry_weight).then(|| {
            Arc::new(Entry::from_lifetime(
                value,
                &lifetime,
                &WallClock::now(),
                weight,
            ))
        })
    }

    /// XFetch: whether a fresh hit should start the refresh now (`-load_time·β·ln(U) ≥ time
    /// left`).
    fn wants_early_refresh(&self, entry: &Entry<V>, now: Stamp) -> bool {
        let Some(beta) = self.inner.early_refresh_beta else {
            return false;
        };
        let left = entry.fresh_until_stamp().since(now).as_secs_f64();
        let cost = entry.load_time().as_secs_f64().max(0.001);
        let draw = fastrand::f64().max(f64::MIN_POSITIVE);
        -cost * beta * draw.ln() >= left
    }

    /// Warns when a value served stale is older than the configured alert age.
    fn alert_if_old<Q: fmt::Debug + ?Sized>(&self, key: &Q, entry: &Entry<V>, now: Stamp) {
        if let Some(limit) = self.inner.stale_alert_age {
            let age = entry.age_at(now);
            if age > limit {
                tracing::warn!(
                    cache = %self.inner.name,
                    ?key,
                    age_secs = age.as_secs(),
                    alert_secs = limit.as_secs(),
                    "serving a stale value older than the alert age"
                );
            }
        }
    }

    fn join(&self, key: &K) -> Join<K, V> {
        self.inner.flights.join(key, self.inner.lock_timeout)
    }

    /// Joins again after a wait reached the lock timeout (see [`inflight::Flights::rejoin`]).
    fn rejoin(&self, key: &K) -> Join<K, V> {
        self.inner.flights.rejoin(key, self.inner.lock_timeout)
    }

    /// Runs `task` detached from its caller (a load that others read from as it goes), tracked
    /// with the refreshes so a shutdown waits for it; `Err` gives it back without a runtime.
    pub(crate) fn spawn_detached<F>(&self, task: F) -> Result<tokio::task::JoinHandle<F::Output>, F>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => Ok(self.inner.tasks.spawn_on(task, &runtime)),
            Err(_) => Err(task),
        }
    }

    /// How long a caller waits for another caller's load before it loads itself.
    pub(crate) fn lock_timeout(&self) -> Duration {
        self.inner.lock_timeout
    }

    /// Counts a request that was not eligible for caching (an adapter's bypass).
    pub(crate) fn count_bypass(&self) {
        self.inner.counters.bypasses.inc();
    }

    /// Counts a value too large to store that the HTTP layer refused itself (a body over
    /// `max_body_bytes`), as the store counts one heavier than its largest entry.
    pub(crate) fn count_store_rejection(&self) {
        self.inner.counters.store_rejections.inc();
    }

    /// Counts an answer from the shared tier that the HTTP layer gave itself.
    pub(crate) fn count_shared_tier_hit(&self) {
        self.inner.counters.shared_tier_hits.inc();
    }

    /// Runs `refresh` in a detached task with the refresh timeout; the guard is released however
    /// the task ends, and a failure starts the key's backoff.
    fn spawn_refresh<Fut>(&self, key: &K, guard: RefreshGuard<K>, refresh: Fut)
    where
        K: fmt::Debug,
        Fut: Future<Output = Result<bool, RefreshFailure>> + Send + 'static,
    {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(cache = %self.inner.name, key = ?key, "no tokio runtime: stale entry not refreshed");
            guard.finish(true);
            return;
        };
        let inner = Arc::clone(&self.inner);
        let key = key.clone();
        inner.counters.refreshes_started.inc();
        inner.publish_gauges();
        let tasks = inner.tasks.clone();
        tasks.spawn_on(async move {
            let counters = &inner.counters;
            let run = CatchUnwind::new(refresh);
            // Zero turns the timeout off.
            let outcome = match inner.refresh_timeout {
                limit if limit.is_zero() => Ok(run.await),
                limit => tokio::time::timeout(limit, run).await.map_err(|_| ()),
            };
            let failed = match outcome {
                Ok(Ok(Ok(true))) => {
                    counters.refreshes_succeeded.inc();
                    tracing::debug!(key = ?key, "background refresh stored a new value");
                    false
                }
                // An invalidation since it began kept its value out: neither.
                Ok(Ok(Ok(false))) => {
                    tracing::debug!(key = ?key, "background refresh fenced off by an invalidation");
                    false
                }
                Ok(Ok(Err(reason))) => {
                    tracing::warn!(cache = %inner.name, key = ?key, %reason, "background refresh failed; keeping the stale value");
                    true
                }
                Ok(Err(_panic)) => {
                    counters.refreshes_panicked.inc();
                    tracing::error!(cache = %inner.name, key = ?key, "background refresh panicked; keeping the stale value");
                    true
                }
                Err(_) => {
                    counters.refreshes_timed_out.inc();
                    tracing::warn!(cache = %inner.name, key = ?key, timeout = ?inner.refresh_timeout,
                        "background refresh timed out; keeping the stale value");
                    true
                }
            };
            if failed {
                counters.refreshes_failed.inc();
            }
            guard.finish(failed);
            inner.publish_gauges();
        }, &runtime);
    }
}

/// A `Lookup` of an entry.
fn lookup_of<V: Clone>(
    entry: &Entry<V>,
    status: Status,
    refreshing: bool,
    now: Stamp,
) -> Lookup<V> {
    Lookup {
        value: entry.value().clone(),
        status,
        age: entry.age_at(now),
        stored_at: entry.stored_at(),
        refreshing,
    }
}

pin_project! {
    /// Runs a loader of [`SwrCache::get_or_load`] and says how it went: its value to store,
    /// or its error, shared as an `Arc` with whoever waited. (A named future, not an `async`
    /// block: a boxed one would need `V: 'static`, which borrowed values cannot promise.)
    struct OutcomeOf<K, Fut> {
        key: Option<K>,
        started: Instant,
        #[pin]
        load: Fut,
    }
}

/// A refresh's loader, called when the refresh task first runs (after the shared tier had its
/// say), not when the refresh is claimed.
async fn deferred<K, V, E, F, Fut>(key: K, load: F) -> Outcome<K, V, Result<Lookup<V>, Arc<E>>>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Loaded<V>, E>>,
    E: fmt::Display + Send + Sync + 'static,
{
    outcome_of(key, load()).await
}

fn outcome_of<K, Fut>(key: K, load: Fut) -> OutcomeOf<K, Fut> {
    OutcomeOf {
        key: Some(key),
        started: Instant::now(),
        load,
    }
}

impl<K, V, E, Fut> Future for OutcomeOf<K, Fut>
where
    Fut: Future<Output = Result<Loaded<V>, E>>,
    E: fmt::Display + Send + Sync + 'static,
{
    type Output = Outcome<K, V, Result<Lookup<V>, Arc<E>>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.load.poll(cx));
        let key = this.key.take().expect("polled after it finished");
        Poll::Ready(match result {
            Ok(loaded) => Outcome::Store {
                key,
                // The loader's own figure when it gave one (e.g. the query's time, not the
                // wait for a connection); else the time this load took.
                loaded: if loaded.load_time.is_zero() {
                    loaded.with_load_time(this.started.elapsed())
                } else {
                    loaded
                },
                revalidated: false,
            },
            Err(error) => {
                let error = Arc::new(error);
                Outcome::Failed {
                    reason: error.to_string(),
                    shared: Some(Arc::clone(&error) as Failure),
                    remember: true,
                    answer: Err(error),
                    unreachable: false,
                }
            }
        })
    }
}

/// [`SwrCache::get_or_load`]'s side of a foreground load: a closure, answered with `Lookup`s.
struct LoaderCaller<F, E> {
    /// The cache's name, for its log events.
    cache: Arc<str>,
    load: Option<F>,
    error: PhantomData<fn() -> E>,
}

impl<K, V, F, Fut, E> Caller<K, V> for LoaderCaller<F, E>
where
    K: Hash + Eq + Clone + Send + Sync + fmt::Debug + 'static,
    V: Clone + Send + Sync + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<Loaded<V>, E>> + Send + 'static,
    E: fmt::Display + Send + Sync + 'static,
{
    type Answer = Result<Lookup<V>, Arc<E>>;
    type Load = OutcomeOf<K, CalledWhenPolled<F, Fut>>;

    fn answer_stale(
        &mut self,
        cache: &SwrCache<K, V>,
        key: &K,
        entry: &Arc<Entry<V>>,
    ) -> Option<Self::Answer> {
        let load = self.load.take()?;
        let now = Stamp::now();
        let refreshing = cache.refresh(key, entry, now, || deferred(key.clone(), load));
        Some(Ok(lookup_of(entry, Status::Stale, refreshing, now)))
    }

    fn answer(&mut self, key: &K, entry: &Arc<Entry<V>>, how: Answered<'_>) -> Self::Answer {
        let now = Stamp::now();
        let status = match how {
            Answered::Loaded { .. } => Status::Miss,
            Answered::Collapsed => Status::Collapsed,
            Answered::SharedTier => Status::SharedTier,
            Answered::StaleIfError { failure } => {
                let error = failure.and_then(|f| f.downcast_ref::<E>());
                let error = error.map(|e| tracing::field::display(e as &dyn fmt::Display));
                tracing::warn!(cache = %self.cache, key = ?key, age_secs = entry.age_at(now).as_secs(), error,
                    "serving stale value: the loader failed");
                Status::StaleIfError
            }
        };
        Ok(lookup_of(entry, status, false, now))
    }

    fn answer_failure(
        &mut self,
        _key: &K,
        failure: &Failure,
        _remembered: bool,
    ) -> Option<Self::Answer> {
        if let Some(LoadPanicked(message)) = failure.downcast_ref::<LoadPanicked>() {
            // The same panic as the caller that ran the loader.
            std::panic::resume_unwind(Box::new(message.clone()));
        }
        // Another caller's loader may fail with another error type: then this one loads.
        Arc::clone(failure).downcast::<E>().ok().map(Err)
    }

    fn panic_failure(&self, panic: &(dyn std::any::Any + Send)) -> Option<Failure> {
        let message = match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
            (Some(text), _) => (*text).to_owned(),
            (None, Some(text)) => text.clone(),
            (None, None) => "the loader panicked".to_owned(),
        };
        Some(Arc::new(LoadPanicked(message)) as Failure)
    }

    fn load(
        &mut self,
        key: &K,
        _existing: Option<&Arc<Entry<V>>>,
        _fallback: bool,
        _leading: bool,
    ) -> Self::Load {
        let load = self.load.take().expect("a caller loads at most once");
        // Called when first polled, inside the engine's panic catching: a loader that panics
        // when called (not only its future) is one failed load, answered as any other.
        outcome_of(key.clone(), CalledWhenPolled::Call { call: Some(load) })
    }
}

pin_project! {
    /// A loader's future, made by calling the loader when first polled.
    #[project = CalledWhenPolledProj]
    pub(crate) enum CalledWhenPolled<F, Fut> {
        Call { call: Option<F> },
        Run { #[pin] future: Fut },
    }
}

impl<F, Fut> Future for CalledWhenPolled<F, Fut>
where
    F: FnOnce() -> Fut,
    Fut: Future,
{
    type Output = Fut::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                CalledWhenPolledProj::Call { call } => {
                    let call = call.take().expect("called once");
                    self.set(Self::Run { future: call() });
                }
                CalledWhenPolledProj::Run { future } => return future.poll(cx),
            }
        }
    }
}

pin_project! {
    /// Turns a panic while polling into `Err(payload)`, so an outcome is always recorded.
    pub(crate) struct CatchUnwind<F> {
        #[pin]
        future: F,
    }
}

impl<F> CatchUnwind<F> {
    pub(crate) fn new(future: F) -> Self {
        Self { future }
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let future = self.project().future;
        match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

/// How a wait for another cache's load under the shared tier's lock ended.
pub(crate) enum TierWait<K: Clone + Send + Sync + 'static, V: 'static> {
    /// Its value, from the tier.
    Found(Arc<Entry<V>>),
    /// The lock came free without a value: this cache holds it now (or the tier could not be
    /// asked: an open claim), and loads.
    Claimed(TierClaim<K, V>),
    /// The lock timeout passed with the lock still held.
    GaveUp,
}

/// A bound for "stored after the newest copy known" (`than`): that copy read back from the tier
/// is not newer, though its stored-at crossed the monotonic clock and back, which may move it
/// by microseconds.
fn past_known(than: Option<std::time::SystemTime>) -> Option<std::time::SystemTime> {
    than.map(|than| than + Duration::from_millis(1))
}
