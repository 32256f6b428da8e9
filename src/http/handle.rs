//! [`SwrHandle`]: counters, purge and graceful shutdown of a layer's cache.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::config::Shared;
use super::invalidation::Scope;
use super::key::{namespace_name, CacheKey, KeyRef};
use crate::engine::Stats;

/// A cloneable handle on a [`SwrLayer`](crate::SwrLayer)'s cache, from
/// [`SwrLayer::handle`](crate::SwrLayer::handle).
///
/// Purges match the request target (path and query) exactly as received, whatever the host,
/// the key function's addition or the variant; prefixes match the start of the target.
///
/// ```
/// use std::time::Duration;
/// use tower_swr::SwrLayer;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = SwrLayer::new();
/// let cache = layer.handle();
/// cache.purge("/prices");            // gone: the next request asks the origin
/// cache.soft_purge("/catalog");      // stale: served once more while it refreshes
/// cache.purge_prefix("/api/v1/");
/// assert_eq!(cache.stats().entries, 0);
/// assert!(cache.shutdown(Duration::from_secs(5)).await);
/// # }
/// ```
#[derive(Clone)]
pub struct SwrHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for SwrHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwrHandle")
            .field("cache", &self.shared.engine)
            .finish()
    }
}

impl SwrHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The cache's counters and sizes (`bytes`: the stored responses and the `Vary` index and
    /// pass memory beside them).
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Removes every entry stored for `target` (path and query). Returns how many.
    pub fn purge(&self, target: &str) -> usize {
        self.invalidate(Scope::Target(target), false, |key| key.target() == target)
    }

    /// Purges `target` as [`purge`](Self::purge) (or, `soft`, [`soft_purge`](Self::soft_purge))
    /// does, and says whether anything was purged anywhere: an entry in this instance's memory,
    /// or, with a shared tier, the tier's response to `GET` `target` on `host` (which another
    /// instance may have stored). For answering a `PURGE` with 200 or 404 for a whole fleet.
    /// Without a shared tier it is `purge(target) > 0`; when the tier does not answer in time,
    /// only this instance's memory counts. Keys with a [key function](crate::SwrLayer::key_fn)'s
    /// addition are purged but not looked for in the tier.
    pub async fn purge_everywhere(&self, host: &str, target: &str, soft: bool) -> bool {
        // Asked before the purge, which would hide the tier's copy.
        let shared = if self.shared.engine.has_shared_tier() {
            let request = http::Request::get(target).body(()).ok();
            let key = request.as_ref().map(|request| {
                let host = super::key::normal_host(host, None);
                KeyRef::with_host(request, &host, None, self.shared.namespace).to_owned()
            });
            match key {
                Some(key) => self.shared.engine.in_shared_tier(&key).await,
                None => false,
            }
        } else {
            false
        };
        let here = if soft {
            self.soft_purge(target)
        } else {
            self.purge(target)
        };
        here > 0 || shared
    }

    /// Removes every entry whose target starts with `prefix`. Returns how many.
    pub fn purge_prefix(&self, prefix: &str) -> usize {
        self.invalidate(Scope::Prefix(prefix), false, |key| {
            key.target().starts_with(prefix)
        })
    }

    /// Removes every entry for which `matches` is true. Returns how many. In this instance
    /// only: with a shared tier, other instances cannot run the closure (use the purges by
    /// target or prefix for them).
    pub fn purge_if(&self, matches: impl Fn(&CacheKey) -> bool) -> usize {
        self.remove_where(matches)
    }

    /// Removes every entry.
    pub fn clear(&self) {
        // Only this layer's entries: other layers may share the store (`share_memory_with`).
        self.invalidate(Scope::All, false, |_| true);
    }

    /// Marks every entry for `target` stale (a soft purge): the next request is answered from it
    /// at once and refreshes it in the background. Returns how many.
    pub fn soft_purge(&self, target: &str) -> usize {
        self.invalidate(Scope::Target(target), true, |key| key.target() == target)
    }

    /// Soft-purges every entry whose target starts with `prefix`. Returns how many.
    pub fn soft_purge_prefix(&self, prefix: &str) -> usize {
        self.invalidate(Scope::Prefix(prefix), true, |key| {
            key.target().starts_with(prefix)
        })
    }

    /// The Redis tier's counters, when the layer has one ([`SwrLayer::redis`](crate::SwrLayer::redis)).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis_stats(&self) -> Option<crate::redis::RedisStats> {
        self.shared.redis.as_ref().map(|tier| tier.stats())
    }

    /// Purges every entry tagged with one of `tags` (`Surrogate-Key`, `Cache-Tag`, `xkey`; see
    /// [`SwrLayer::forward_cache_tags`](crate::SwrLayer::forward_cache_tags)): the next request
    /// for one is a miss, and no such entry is served again, stale-if-error or disconnected
    /// either. An origin call under way when this runs may still answer the requests waiting
    /// for it, but what it stores counts as purged too. Returns how many distinct tags were
    /// purged (tags that are not 1 to 256 visible ASCII characters are skipped).
    ///
    /// It scans nothing: each tag's purge time is recorded and compared when a tagged entry is
    /// used. At most 16,384 tags are recorded per store; past that, the records fold into one
    /// purge of every tagged entry of the layer (a warning says so), so a purge never does less
    /// than asked.
    ///
    /// ```
    /// use tower_swr::SwrLayer;
    ///
    /// let cache = SwrLayer::new().handle();
    /// assert_eq!(cache.purge_tag(["product-42", "category-7"]), 2);
    /// assert_eq!(cache.soft_purge_tag(["homepage"]), 1);
    /// ```
    pub fn purge_tag<I>(&self, tags: I) -> usize
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        self.purge_tags(tags, false)
    }

    /// Soft-purges every entry tagged with one of `tags`: each is stale from now, answered at
    /// once while one background refresh replaces it (where it has a stale-while-revalidate
    /// window; otherwise the next request revalidates it, and stale-if-error still applies).
    /// Returns how many distinct tags were purged (see [`purge_tag`](Self::purge_tag)).
    pub fn soft_purge_tag<I>(&self, tags: I) -> usize
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        self.purge_tags(tags, true)
    }

    fn purge_tags<I>(&self, tags: I, soft: bool) -> usize
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let tags: Vec<I::Item> = tags.into_iter().collect();
        let purge =
            (self.shared.tags).purge(self.shared.namespace, tags.iter().map(AsRef::as_ref), soft);
        // Every instance on a shared tier records the purge too, and its copies in the tier
        // are judged by the purge's time there.
        let namespace = namespace_name(self.shared.namespace);
        let mut shared = std::collections::HashSet::new();
        for tag in tags.iter().map(AsRef::as_ref) {
            if super::tags::is_tag(tag) && shared.insert(tag) {
                let scope = Scope::Tag(tag).to_bytes(&namespace);
                self.shared.engine.share_invalidation(scope, soft);
            }
        }
        tracing::debug!(
            tags = purge.tags,
            soft,
            folded = purge.folded,
            "purged by tag"
        );
        purge.tags
    }

    /// Graceful shutdown: stop starting background refreshes and wait up to `deadline` for the
    /// running ones. Returns whether they all finished in time. Requests are still answered
    /// (stale entries without refreshing).
    pub async fn shutdown(&self, deadline: Duration) -> bool {
        self.shared.engine.shutdown(deadline).await
    }

    /// Whether `key` is this layer's, in a store that layers may share.
    fn owns(&self, key: &CacheKey) -> bool {
        key.namespace() == self.shared.namespace
    }

    /// Invalidates the layer's entries in `scope` (`matches` is the same set, as a closure),
    /// here and, through a shared tier, on every instance.
    fn invalidate(
        &self,
        scope: Scope<'_>,
        soft: bool,
        matches: impl Fn(&CacheKey) -> bool,
    ) -> usize {
        let scope = scope.to_bytes(&namespace_name(self.shared.namespace));
        if soft {
            let engine = &self.shared.engine;
            return engine.invalidate_scope(&scope, true, |key| self.owns(key) && matches(key));
        }
        let count = (self.shared.engine)
            .invalidate_scope(&scope, false, |key| self.owns(key) && matches(key));
        self.forget_indexes(&matches);
        count
    }

    fn remove_where(&self, matches: impl Fn(&CacheKey) -> bool) -> usize {
        let count = (self.shared.engine).remove_if(|key| self.owns(key) && matches(key));
        self.forget_indexes(&matches);
        count
    }

    fn forget_indexes(&self, matches: &impl Fn(&CacheKey) -> bool) {
        // The purged keys' `Vary` indexes go too: the next request is a plain miss again. So
        // does the memory that they passed: what the budget holds for them is freed.
        self.shared
            .vary_index
            .retain(|key, _| !(self.owns(key) && matches(key)));
        self.shared
            .passes
            .retain(|key, _| !(self.owns(key) && matches(key)));
    }
}
