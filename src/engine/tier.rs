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
}

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
    /// `call`, cut at the tier timeout (`None`); zero turns the timeout off.
    pub(crate) async fn bounded<T>(&self, call: impl Future<Output = T>) -> Option<T> {
        if self.timeout.is_zero() {
            return Some(call.await);
        }
        tokio::time::timeout(self.timeout, call).await.ok()
    }

    /// The tier's copy of `key` if it is fresh now and was stored after `than` (if given).
    pub(crate) async fn fresh(&self, key: &K, than: Option<SystemTime>) -> Option<(V, Lifetime)> {
        let (value, lifetime) = match self.bounded(self.tier.get(key)).await {
            Some(found) => found?,
            None => {
                tracing::debug!(timeout = ?self.timeout, "the shared tier did not answer in time");
                return None;
            }
        };
        let now = SystemTime::now();
        let newer = than.is_none_or(|than| lifetime.stored_at > than);
        (now < lifetime.fresh_until && newer).then_some((value, lifetime))
    }
}
