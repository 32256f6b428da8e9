//! The seam for a second, shared tier under the in-memory store (Redis, for a fleet of
//! instances): what the engine asks of it, and when.
//!
//! The in-memory store stays the first tier: a fresh hit is answered from it synchronously and
//! never reaches this seam. The shared tier is consulted where the engine would otherwise
//! call the loader (a miss, led by one caller per key in this process; a background refresh of
//! a stale entry), and written after every value a load stores, so another instance (or this
//! one after a restart) finds it there instead of loading again. Values cross the seam with
//! their wall-clock [`Lifetime`]: monotonic instants mean nothing to another process.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::entry::Lifetime;

/// What a [`SharedTier`] call returns: a boxed future, so the trait stays object-safe.
pub type TierFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A second tier shared by several caches: consulted where the engine would otherwise load (a
/// miss, led by one caller per key in this process; a background refresh), written after every
/// value a load stores. A fresh hit never reaches it. Values cross with their wall-clock
/// [`Lifetime`].
///
/// A shared tier never fails a lookup: an implementation whose backend is down, slow or
/// returns something it cannot decode answers `None` (and logs it), and the engine then loads
/// as it would without a tier. The engine also bounds every call by
/// [`SwrCacheBuilder::shared_tier_timeout`](super::SwrCacheBuilder::shared_tier_timeout).
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::{Arc, Mutex};
/// use std::time::Duration;
/// use tower_swr::engine::{Freshness, Lifetime, Loaded, SharedTier, Status, SwrCache, TierFuture};
///
/// /// Two caches in one process sharing a map: a stand-in for Redis.
/// #[derive(Default)]
/// struct MapTier(Mutex<HashMap<String, (u64, Lifetime)>>);
///
/// impl SharedTier<String, u64> for MapTier {
///     fn get<'a>(&'a self, key: &'a String) -> TierFuture<'a, Option<(u64, Lifetime)>> {
///         let found = self.0.lock().unwrap().get(key).cloned();
///         Box::pin(async move { found })
///     }
///     fn put<'a>(&'a self, key: &'a String, value: &'a u64, lifetime: &'a Lifetime) -> TierFuture<'a, ()> {
///         self.0.lock().unwrap().insert(key.clone(), (*value, *lifetime));
///         Box::pin(async {})
///     }
///     fn remove<'a>(&'a self, key: &'a String) -> TierFuture<'a, ()> {
///         self.0.lock().unwrap().remove(key);
///         Box::pin(async {})
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let tier = Arc::new(MapTier::default());
/// let one: SwrCache<String, u64> = SwrCache::builder().shared_tier(tier.clone()).build();
/// let two: SwrCache<String, u64> = SwrCache::builder().shared_tier(tier).build();
///
/// let load = || async { Ok::<_, String>(Loaded::new(7, Freshness::new(Duration::from_secs(60)))) };
/// assert_eq!(one.get_or_load("rate".into(), load).await.unwrap().status, Status::Miss);
/// # tokio::task::yield_now().await; // the write to the tier is detached
/// // The other cache finds it in the shared tier: its loader is not called.
/// let never = || async { Err::<Loaded<u64>, _>("not called".to_string()) };
/// let got = two.get_or_load("rate".into(), never).await.unwrap();
/// assert_eq!((got.status, got.value), (Status::SharedTier, 7));
/// # }
/// ```
pub trait SharedTier<K, V>: Send + Sync + 'static {
    /// The tier's copy of `key` with its lifetime, if it has one.
    fn get<'a>(&'a self, key: &'a K) -> TierFuture<'a, Option<(V, Lifetime)>>;

    /// Keeps `value` for the others, until `lifetime.last_deadline()` at the latest.
    fn put<'a>(&'a self, key: &'a K, value: &'a V, lifetime: &'a Lifetime) -> TierFuture<'a, ()>;

    /// Forgets `key` (an invalidation of it in this cache).
    fn remove<'a>(&'a self, key: &'a K) -> TierFuture<'a, ()>;

    /// Whether the tier holds a value for `key` (or, in a tier with key families, for one of
    /// `key`'s family), stale or not, that no invalidation has reached. For reporting (e.g. a
    /// `PURGE` answering 200 or 404 for the whole fleet). The default asks [`get`](Self::get).
    fn contains<'a>(&'a self, key: &'a K) -> TierFuture<'a, bool>
    where
        V: 'a,
    {
        let get = self.get(key);
        Box::pin(async move { get.await.is_some() })
    }

    /// Asks for the tier's lock on loading `key` before the engine loads it (a miss it leads in
    /// this process, or a background refresh), so that one cache in the fleet loads it while
    /// the others wait for its value. The default has no lock: [`Claim::Open`].
    fn claim<'a>(&'a self, key: &'a K) -> TierFuture<'a, Claim> {
        let _ = key;
        Box::pin(std::future::ready(Claim::Open))
    }

    /// Asks for the lock again while waiting for the value of the cache that holds it (each
    /// time the waiter polls), so that a lock given back or expired without a value is taken
    /// over at once. The default asks [`claim`](Self::claim); a tier may count it apart.
    fn claim_again<'a>(&'a self, key: &'a K) -> TierFuture<'a, Claim> {
        self.claim(key)
    }

    /// [`claim`](Self::claim) for a miss whose read of `key`, sent `read_age` ago, found
    /// nothing it could use. Another cache may have loaded the key, written it and let go of the
    /// lock since: a tier that can tell answers [`Claim::Written`] then, and the miss reads
    /// that value instead of loading it a second time. The default asks
    /// [`claim`](Self::claim).
    fn claim_after_read<'a>(&'a self, key: &'a K, read_age: Duration) -> TierFuture<'a, Claim> {
        let _ = read_age;
        self.claim(key)
    }

    /// Writes a value loaded under `claim`: a tier with fencing refuses it when the claim is no
    /// longer current (the lock expired and another cache took it, or `key` was invalidated
    /// since), so a slow load never overwrites a newer value nor brings purged content back.
    /// The default ignores the claim and calls [`put`](Self::put).
    fn put_claimed<'a>(
        &'a self,
        key: &'a K,
        value: &'a V,
        lifetime: &'a Lifetime,
        claim: &'a Claim,
    ) -> TierFuture<'a, ()> {
        let _ = claim;
        self.put(key, value, lifetime)
    }

    /// Gives back a lock that [`claim`](Self::claim) won (after the write, or when the load
    /// stored nothing). The default does nothing.
    fn release<'a>(&'a self, key: &'a K, claim: &'a Claim) -> TierFuture<'a, ()> {
        let _ = (key, claim);
        Box::pin(std::future::ready(()))
    }

    /// Marks the tier's copy of `key` stale (a soft purge in this cache). The default removes it.
    fn mark_stale<'a>(&'a self, key: &'a K) -> TierFuture<'a, ()> {
        self.remove(key)
    }

    /// Forgets every value of this cache (a [`clear`](super::SwrCache::clear)). The default does
    /// nothing: a tier without it keeps its copies until they expire.
    fn clear(&self) -> TierFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }

    /// Invalidates, in the tier and in every other cache attached to it, each value whose key
    /// `scope` matches, in the tier's own encoding of scopes (e.g. an HTTP path prefix);
    /// `soft`: mark stale rather than remove. See [`SwrCache::invalidate_scope`](super::SwrCache::invalidate_scope).
    /// The default does nothing.
    fn invalidate_scope<'a>(&'a self, scope: &'a [u8], soft: bool) -> TierFuture<'a, ()> {
        let _ = (scope, soft);
        Box::pin(std::future::ready(()))
    }

    /// Called once when a cache is built on this tier, with the way to apply other caches'
    /// invalidations to it (a tier with a message bus keeps it). The default drops it.
    fn attach(&self, remote: Remote<K>) {
        let _ = remote;
    }

    /// Whether the tier itself keeps invalidated values from coming back (fenced writes, purge
    /// markers). Without that the engine refuses every tier copy stored before this cache's
    /// last invalidation; with it, only for a moment after each one (while the tier's own
    /// removal is under way). Default `false`.
    fn fences_invalidations(&self) -> bool {
        false
    }

    /// Whether [`get`](Self::get) always ends by itself about the engine's
    /// [tier timeout](super::SwrCacheBuilder::shared_tier_timeout) (the tier bounds its own
    /// I/O), so the engine arms no timer of its own around it: a timer per read costs ~1,000
    /// instructions. The other calls stay bounded by the engine. Default `false`.
    fn bounds_reads(&self) -> bool {
        false
    }
}

/// What [`SharedTier::claim`] answered.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Claim {
    /// This cache holds the tier's lock on the key until it releases it or `token`'s lease
    /// ends; `fence` is the key's write fence as the lock set it.
    Won {
        /// Identifies this holder (compare-and-delete on release).
        token: u64,
        /// The fence a write under this claim must still find.
        fence: u64,
    },
    /// Another cache holds the lock: wait for its value; a write after loading anyway must
    /// still find `fence`.
    Held {
        /// The fence the tier had when asked.
        fence: u64,
    },
    /// Another cache loaded the key under the lock and its value is written (since the asker
    /// last read the key, for [`SharedTier::claim_after_read`]): read it rather than load it
    /// once more; a write after loading anyway must still find `fence`.
    Written {
        /// The fence the tier had when asked.
        fence: u64,
    },
    /// No lock (the tier has none, or could not be asked): load here, as without a tier.
    Open,
}

/// How a shared tier applies other caches' invalidations to the cache it is attached to (see
/// [`SharedTier::attach`]). Applied here only: they are not sent back to the tier. Holds the
/// cache weakly: once the cache is dropped every call does nothing.
pub struct Remote<K> {
    pub(crate) cache: Arc<dyn ApplyRemote<K>>,
}

impl<K> Clone for Remote<K> {
    fn clone(&self) -> Self {
        Self {
            cache: Arc::clone(&self.cache),
        }
    }
}

impl<K> std::fmt::Debug for Remote<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").finish_non_exhaustive()
    }
}

impl<K> Remote<K> {
    /// Removes `key` here (fencing its loads under way). Returns whether it was held.
    pub fn remove(&self, key: &K) -> bool {
        self.cache.apply(Applied::Remove(key))
    }

    /// Marks `key` stale here. Returns whether it was held.
    pub fn mark_stale(&self, key: &K) -> bool {
        self.cache.apply(Applied::MarkStale(key))
    }

    /// Removes (or, `soft`, marks stale) every entry here whose key `matches`.
    pub fn invalidate_where(&self, soft: bool, matches: &dyn Fn(&K) -> bool) -> usize {
        self.cache.apply_where(soft, matches)
    }

    /// Removes every entry here.
    pub fn clear(&self) {
        self.cache.apply_where(false, &|_| true);
    }

    /// Whether the cache is still alive.
    pub fn is_attached(&self) -> bool {
        self.cache.alive()
    }
}

/// One invalidation from elsewhere.
pub(crate) enum Applied<'a, K> {
    Remove(&'a K),
    MarkStale(&'a K),
}

/// The cache side of [`Remote`].
pub(crate) trait ApplyRemote<K>: Send + Sync {
    fn apply(&self, what: Applied<'_, K>) -> bool;
    fn apply_where(&self, soft: bool, matches: &dyn Fn(&K) -> bool) -> usize;
    fn alive(&self) -> bool;
}

/// The least time, after an invalidation, during which a fencing tier's copies from before it
/// are refused (see [`Tier::honours_fence`]).
const FENCE_GRACE: Duration = Duration::from_millis(500);

/// The engine's handle on its shared tier.
pub(crate) struct Tier<K, V> {
    pub(crate) tier: Arc<dyn SharedTier<K, V>>,
    pub(crate) timeout: Duration,
}

impl<K, V> Clone for Tier<K, V> {
    fn clone(&self) -> Self {
        Self {
            tier: Arc::clone(&self.tier),
            timeout: self.timeout,
        }
    }
}

impl<K: 'static, V: 'static> Tier<K, V> {
    /// Whether a tier copy stored before `fence` (this cache's last invalidation, nanoseconds
    /// since the epoch) must be refused at `now`: always for a tier that does not fence
    /// invalidations itself; for one that does, only while its own removal may be under way.
    pub(crate) fn honours_fence(&self, fence: SystemTime, now: SystemTime) -> bool {
        !self.tier.fences_invalidations()
            || now.duration_since(fence).unwrap_or_default() < self.timeout.max(FENCE_GRACE) * 2
    }

    /// `call`, cut at the tier timeout (`None`); zero turns the timeout off.
    pub(crate) async fn bounded<T>(&self, call: impl Future<Output = T>) -> Option<T> {
        if self.timeout.is_zero() {
            return Some(call.await);
        }
        tokio::time::timeout(self.timeout, call).await.ok()
    }

    /// The tier's copy of `key` if it was stored after `than` (if given) and is of some use
    /// still (fresh, stale inside a window, or kept for revalidation).
    pub(crate) async fn usable(&self, key: &K, than: Option<SystemTime>) -> Option<(V, Lifetime)> {
        let read = if self.tier.bounds_reads() {
            Some(self.tier.get(key).await)
        } else {
            self.bounded(self.tier.get(key)).await
        };
        let (value, lifetime) = match read {
            Some(found) => found?,
            None => {
                tracing::debug!(timeout = ?self.timeout, "the shared tier did not answer in time");
                return None;
            }
        };
        let newer = than.is_none_or(|than| lifetime.stored_at > than);
        (newer && SystemTime::now() < lifetime.last_deadline()).then_some((value, lifetime))
    }
}

/// A [`Claim`] this cache holds on a key, given back when dropped (after the write it guards,
/// or when the load ends without one: a failure, a caller that went away).
pub(crate) struct TierClaim<K: Clone + Send + Sync + 'static, V: 'static> {
    tier: Tier<K, V>,
    key: K,
    pub(crate) claim: Claim,
}

impl<K: Clone + Send + Sync + 'static, V: 'static> TierClaim<K, V> {
    /// Asks the tier for its lock on `key` (bounded by the tier timeout: no answer is
    /// [`Claim::Open`], the lock fails open).
    pub(crate) async fn ask(tier: &Tier<K, V>, key: &K) -> Self {
        Self::asked(tier, key, tier.tier.claim(key), true).await
    }

    /// [`ask`](Self::ask) for a miss whose read was sent at `read_at` (see
    /// [`SharedTier::claim_after_read`]).
    pub(crate) async fn ask_after_read(
        tier: &Tier<K, V>,
        key: &K,
        read_at: tokio::time::Instant,
    ) -> Self {
        let ask = tier.tier.claim_after_read(key, read_at.elapsed());
        Self::asked(tier, key, ask, true).await
    }

    /// [`ask`](Self::ask) again, while waiting for the holder's value.
    pub(crate) async fn ask_again(tier: &Tier<K, V>, key: &K) -> Self {
        Self::asked(tier, key, tier.tier.claim_again(key), false).await
    }

    /// The claim `ask` answers in time, else [`Claim::Open`] (`log`: say so).
    async fn asked(tier: &Tier<K, V>, key: &K, ask: TierFuture<'_, Claim>, log: bool) -> Self {
        let claim = tier.bounded(ask).await.unwrap_or_else(|| {
            if log {
                tracing::debug!(timeout = ?tier.timeout, "the shared tier did not grant a lock in time");
            }
            Claim::Open
        });
        Self {
            tier: tier.clone(),
            key: key.clone(),
            claim,
        }
    }

    /// Whether another cache holds the lock.
    pub(crate) fn is_held_elsewhere(&self) -> bool {
        matches!(self.claim, Claim::Held { .. })
    }

    /// Whether another cache's value, loaded under the lock, is written (see [`Claim::Written`]).
    pub(crate) fn is_written(&self) -> bool {
        matches!(self.claim, Claim::Written { .. })
    }

    /// The claim to write `key` under: this one for its own key, none for another (a `Vary`
    /// variant the load was stored under).
    pub(crate) fn for_key<'a>(&'a self, key: &K) -> &'a Claim
    where
        K: PartialEq,
    {
        const OPEN: &Claim = &Claim::Open;
        if *key == self.key {
            &self.claim
        } else {
            OPEN
        }
    }
}

impl<K: Clone + Send + Sync + 'static, V: 'static> Drop for TierClaim<K, V> {
    fn drop(&mut self) {
        if !matches!(self.claim, Claim::Won { .. }) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (tier, key) = (self.tier.clone(), self.key.clone());
        let claim = std::mem::replace(&mut self.claim, Claim::Open);
        runtime.spawn(async move {
            tier.bounded(tier.tier.release(&key, &claim)).await;
        });
    }
}
