//! The layer's settings, fixed once the layer is built, and what its services share.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName};
use http::request::Parts;
use http::{Request, StatusCode};

use super::key::CacheKey;
use super::policy::{Policy, SURROGATE_CONTROL};
use super::status::StatusHeaders;
use super::stored::{remove_present, CachedResponse};
use super::tags::{TagPurges, TAG_FIELDS};
use super::vary_index::{Passes, VaryIndexes};
use crate::engine::{Freshness, Stats, SwrCache};

/// Adds to a request's key; `None` means "do not cache this request".
pub(crate) type KeyFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// Per-route freshness: `Some` overrides the lifetimes of a storable response.
pub(crate) type PolicyFn =
    Arc<dyn Fn(&Parts, &http::response::Parts) -> Option<Freshness> + Send + Sync>;

/// The layer's settings, fixed once the layer is built.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) policy: Policy,
    pub(crate) max_body_bytes: usize,
    pub(crate) headers: StatusHeaders,
    pub(crate) key_fn: Option<KeyFn>,
    pub(crate) policy_fn: Option<PolicyFn>,
    /// Remove stored responses for a URI after a successful unsafe request to it (§4.4).
    pub(crate) invalidate_on_unsafe: bool,
    /// [`render_surrogate_capability`](Self::render_surrogate_capability), rendered once per
    /// change of the settings instead of once per miss.
    pub(crate) surrogate_capability: Option<http::HeaderValue>,
    /// How long a request that a stale entry could answer (stale-if-error) waits for the
    /// origin before it is answered from that entry.
    pub(crate) origin_timeout: Option<Duration>,
    /// Ask the origin with `GET` when a `HEAD` misses, and store the answer (nginx's
    /// `proxy_cache_convert_head`, Varnish's built-in `vcl_backend_fetch`).
    pub(crate) convert_head: bool,
    /// Statuses besides 5xx that mean "the origin failed this time" (408, 429 by default):
    /// a refresh answered so keeps the entry, a miss with a stale-if-error entry gets it.
    pub(crate) failure_statuses: Arc<[StatusCode]>,
    /// Whether a failure remembered a moment (`remember_failures`) answers this layer's
    /// requests: off where this layer's `remember_failures` is zero, whoever made the store.
    pub(crate) answer_remembered_failures: bool,
    /// Send the cache-tag fields (`Surrogate-Key`, `Cache-Tag`, `xkey`) downstream (default:
    /// removed, as Fastly and Cloudflare do).
    pub(crate) forward_cache_tags: bool,
    /// Send `X-Query-Time-ms`: how long the layer took to answer (`SwrLayer::query_time_header`).
    pub(crate) query_time_header: bool,
}

impl Config {
    /// Whether an origin status is a failure (5xx or one of `failure_statuses`), not an answer
    /// to store or to drop the stored entry for.
    pub(crate) fn is_failure(&self, status: StatusCode) -> bool {
        super::policy::is_failure(status, &self.failure_statuses)
    }

    /// `Surrogate-Capability` for origin requests, when `Surrogate-Control` is read.
    pub(crate) fn render_surrogate_capability(&self) -> Option<http::HeaderValue> {
        let token = self.policy.surrogate_token.as_deref()?;
        http::HeaderValue::try_from(format!("{token}=\"Surrogate/1.0\"")).ok()
    }

    /// Prepares a request for the origin.
    pub(crate) fn prepare_origin_request<B>(&self, request: &mut Request<B>) {
        if let Some(capability) = &self.surrogate_capability {
            request.headers_mut().append(
                HeaderName::from_static("surrogate-capability"),
                capability.clone(),
            );
        }
    }

    /// What a bypassed response gets besides `Cache-Status`.
    pub(crate) fn bypass_marks(&self) -> BypassMarks {
        BypassMarks {
            x_cache: self.headers.x_cache,
            cache_info: self.headers.cache_info,
            strip_surrogate_control: self.policy.surrogate_token.is_some(),
            strip_cache_tags: !self.forward_cache_tags,
        }
    }

    /// Removes the cache-tag fields unless the layer forwards them.
    pub(crate) fn strip_cache_tags(&self, headers: &mut HeaderMap) {
        if !self.forward_cache_tags {
            remove_present(headers, &TAG_FIELDS);
        }
    }

    /// Removes what the origin meant for this cache only.
    pub(crate) fn strip_surrogate_control(&self, headers: &mut HeaderMap) {
        if self.policy.surrogate_token.is_some() {
            headers.remove(&SURROGATE_CONTROL);
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("policy", &self.policy)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("headers", &self.headers)
            .field(
                "key_fn",
                &self.key_fn.as_ref().map(|_| "Fn(&Parts) -> Option<String>"),
            )
            .finish()
    }
}

/// Marks put on a bypassed response.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BypassMarks {
    pub(crate) x_cache: bool,
    pub(crate) cache_info: bool,
    pub(crate) strip_surrogate_control: bool,
    pub(crate) strip_cache_tags: bool,
}

/// What a layer's services share: the engine and the settings.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) engine: SwrCache<CacheKey, CachedResponse>,
    /// The shared tier in Redis, if any (for its counters).
    #[cfg(feature = "redis")]
    pub(crate) redis: Option<super::layer::RedisTier>,
    pub(crate) config: Config,
    /// This layer's part of a store shared with other layers (`share_memory_with`): its keys
    /// carry it, so layers that see the same path keep, answer and purge their own entries.
    pub(crate) namespace: u32,
    /// For keys whose responses vary: the header names, and the variants stored (bounded).
    /// Its bytes are part of the budget (see [`vary_index`](super::vary_index)).
    pub(crate) vary_index: Arc<VaryIndexes>,
    /// Keys whose last origin answer could not be stored, until when (Varnish's hit-for-miss):
    /// a conditional or range request for one goes to the origin as the client sent it. Its
    /// bytes are part of the budget too.
    pub(crate) passes: Arc<Passes>,
    /// When each cache tag was last purged (bounded; shared by the layers sharing the store).
    pub(crate) tags: Arc<TagPurges>,
}

impl Shared {
    /// The store's counters, with the bytes and capacity of the tables kept beside it (the
    /// `Vary` index and the pass memory): together, what the layer's budget holds.
    pub(crate) fn stats(&self) -> Stats {
        let mut stats = self.engine.stats();
        stats.bytes = (stats.bytes)
            .saturating_add(self.vary_index.weight())
            .saturating_add(self.passes.weight());
        // Saturating: a budget of `u64::MAX` means "no bound".
        stats.capacity_bytes = (stats.capacity_bytes)
            .saturating_add(self.vary_index.capacity())
            .saturating_add(self.passes.capacity());
        stats
    }
}

/// How long a key is remembered as not storable (Varnish's built-in hit-for-miss lifetime).
pub(crate) const PASS_FOR: Duration = Duration::from_secs(120);

/// Default lifetimes of the application preset (seed `stampede-prevention-strategy.md`).
pub(crate) const DEFAULT_TTL: Duration = Duration::from_secs(60);
pub(crate) const DEFAULT_STALE_WHILE_REVALIDATE: Duration = Duration::from_secs(120);
pub(crate) const DEFAULT_STALE_IF_ERROR: Duration = Duration::from_secs(300);
/// How stale a response may be to stand in for an unreachable origin in the shared-cache
/// preset (RFC 9111 §4.2.4 sets no bound; Squid's `max_stale` is a week, nginx's
/// `proxy_cache_use_stale error timeout` unbounded): a day rides out an outage without
/// serving pages from last week.
pub(crate) const DEFAULT_MAX_STALE_WHEN_DISCONNECTED: Duration = Duration::from_secs(24 * 3600);
