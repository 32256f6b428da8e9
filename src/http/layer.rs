//! [`SwrLayer`] and its builder.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::request::Parts;
use http::{HeaderName, StatusCode};
use tower_layer::Layer;

use super::config::{
    Config, PolicyFn, Shared, DEFAULT_MAX_STALE_WHEN_DISCONNECTED, DEFAULT_STALE_IF_ERROR,
    DEFAULT_STALE_WHILE_REVALIDATE, DEFAULT_TTL,
};
use super::handle::SwrHandle;
use super::key::{CacheKey, StoreNamespaces};
use super::policy::Policy;
use super::service::SwrService;
use super::status::{is_token, StatusHeaders, DEFAULT_NAME};
use super::stored::CachedResponse;
use super::tags::TagPurges;
use super::vary_index::{self, Budget, Passes, VaryIndexes};
use crate::engine::{Freshness, Stats, SwrCache, DEFAULT_REMEMBER_FAILURES};

/// The HTTP layer's Redis tier.
#[cfg(feature = "redis")]
pub(crate) type RedisTier =
    crate::redis::RedisTier<CacheKey, CachedResponse, super::tier::HttpTierCodec>;

/// Settings that shape the store; changing them means a new store.
#[derive(Debug, Clone)]
struct StoreSettings {
    capacity_bytes: u64,
    lock_timeout: Duration,
    refresh_timeout: Duration,
    backoff: (Duration, Duration),
    breaker: (u32, Duration),
    ttl_jitter: f64,
    early_refresh_beta: Option<f64>,
    stale_alert_age: Option<Duration>,
    remember_failures: Duration,
    /// The shared tier in Redis, if any.
    #[cfg(feature = "redis")]
    redis: Option<crate::redis::RedisConfig>,
    /// Another layer's store and the tables beside it, when this layer shares its memory
    /// budget.
    shared_with: Option<Tables>,
    /// Whether a setting above was set (they are unused while sharing another's store).
    touched: bool,
}

/// One cache: the store and what is kept beside it. Settings that only change how responses
/// are judged or marked keep it; settings that shape it make a new one.
#[derive(Debug)]
struct CacheInstance {
    tables: Tables,
    namespace: u32,
}

/// What one memory budget holds: the store, and the `Vary` index and pass memory beside it
/// (their bytes are part of the budget). Layers sharing a budget share all three; their keys
/// carry their namespace.
#[derive(Debug, Clone)]
struct Tables {
    engine: SwrCache<CacheKey, CachedResponse>,
    #[cfg(feature = "redis")]
    redis: Option<RedisTier>,
    /// The namespaces claimed in `engine` (shared with the layers that share it).
    namespaces: Arc<StoreNamespaces>,
    vary_index: Arc<VaryIndexes>,
    passes: Arc<Passes>,
    tags: Arc<TagPurges>,
}

/// Layer that gives a service stale-while-revalidate caching.
///
/// ```
/// use axum::{routing::get, Router};
/// use tower_swr::SwrLayer;
///
/// async fn prices() -> &'static str { "42" }
///
/// let app: Router = Router::new().route("/prices", get(prices)).layer(SwrLayer::new());
/// ```
///
/// # Defaults (the application preset, [`SwrLayer::new`])
///
/// | setting | default |
/// |---|---|
/// | fresh lifetime without `Cache-Control`/`Expires` | 60 s ([`ttl`](Self::ttl)) |
/// | stale-while-revalidate window, unless the response says | 120 s |
/// | stale-if-error window, unless the response says | 300 s |
/// | largest stored body | 8 MiB ([`max_body_bytes`](Self::max_body_bytes)) |
/// | memory budget | 128 MiB ([`capacity_bytes`](Self::capacity_bytes)) |
/// | waiting for another request's origin call | 5 s ([`lock_timeout`](Self::lock_timeout)) |
/// | background refresh timeout | 30 s |
/// | refresh backoff after a failure | 1 s doubling to 60 s |
/// | `Cache-Status` name | `tower-swr` |
///
/// Never stored: `no-store` and `private` responses, responses with `Set-Cookie` or `Vary: *`,
/// answers to requests with `Authorization` unless the response says `public`, `s-maxage` or
/// `must-revalidate`, answers to requests with `Cookie` unless the response says `public` or
/// `s-maxage` ([`cache_cookie_requests`](Self::cache_cookie_requests)), server errors without
/// explicit freshness (but for `501 Not Implemented`, heuristically cacheable by RFC 9110
/// §15.1), responses to requests with `Cache-Control: no-store`, bodies over the limit.
/// `no-cache` responses (with a validator) are stored only to be
/// revalidated before each reuse. Only `GET` and `HEAD` are cached; other methods pass straight
/// through (and a successful unsafe request invalidates its URI).
///
/// A customised layer:
///
/// ```
/// use std::time::Duration;
/// use tower_swr::SwrLayer;
///
/// let layer = SwrLayer::new()
///     .ttl(Duration::from_secs(6 * 24 * 3600))
///     .stale_while_revalidate(Duration::from_secs(24 * 3600))
///     .stale_if_error(Duration::from_secs(7 * 24 * 3600))
///     .max_body_bytes(1 << 20)
///     .capacity_bytes(32 << 20)
///     // seed scenario 2: one entry per user and filters
///     .key_fn(|parts| {
///         let user = parts.headers.get("x-user-id")?.to_str().ok()?;
///         Some(user.to_owned())
///     })
///     .allow_private(true);
/// ```
///
/// Clones of a layer share one cache; so do all the services one layer makes (axum calls
/// [`Layer::layer`] once per route).
///
/// A feature is turned off by its setter's zero: `remember_failures(Duration::ZERO)`,
/// `origin_timeout(Duration::ZERO)` (or `None`), `circuit_breaker(0, _)`, `early_refresh(0.0)`,
/// `ttl_jitter(0.0)`, `stale_alert_age(Duration::ZERO)`.
///
/// # Settings and the cache
///
/// A layer is a value of settings until its cache is first used: by [`Layer::layer`],
/// [`handle`](Self::handle) or [`stats`](Self::stats). Until then each setter gives a layer
/// of its own. After that, settings that only change how responses are judged or marked
/// (`ttl`, `key_fn`, `x_cache_header`, ...) keep the cache, so a handle taken before them
/// still sees the cache the layer serves from:
///
/// ```
/// use std::time::Duration;
/// use tower_swr::SwrLayer;
///
/// let layer = SwrLayer::new();
/// let handle = layer.handle();
/// let layer = layer.ttl(Duration::from_secs(5)); // same cache: `handle` purges what it stores
/// # let _ = (layer, handle);
/// ```
///
/// Settings that shape the store (`capacity_bytes`, `max_body_bytes`, `lock_timeout`,
/// `refresh_timeout`, `refresh_backoff`, `circuit_breaker`, `ttl_jitter`, `early_refresh`,
/// `stale_alert_age`, `remember_failures`, `cache_name`) cannot change a store that exists:
/// set after first use, they are not applied (a warning says so) and the layer keeps serving
/// from its cache, so a handle taken before never ends up on a cache that does not serve. Set
/// them first; a differently shaped cache is a new layer (`SwrLayer::new()...`). A layer that [`share_memory_with`](Self::share_memory_with)s another uses that
/// layer's store and its store settings; its own are unused, and setting them logs a warning.
#[must_use]
#[derive(Clone)]
pub struct SwrLayer {
    config: Config,
    store: StoreSettings,
    cache_name: String,
    /// The RFC 9213 target list is the default one of the cache's name (and follows it).
    targeted_default: bool,
    x_cache: bool,
    x_cache_key: bool,
    cache_info: bool,
    /// The cache, created on first use and kept by every later value of this layer unless a
    /// setting that shapes the store changes.
    cache: Arc<OnceLock<CacheInstance>>,
    /// The cache with this value's settings, as its services and handles see it.
    shared: Arc<OnceLock<Arc<Shared>>>,
}

impl Default for SwrLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for SwrLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwrLayer")
            .field("config", &self.config)
            .field("store", &self.store)
            .finish()
    }
}

impl SwrLayer {
    /// The application preset: origin `Cache-Control` honoured, and responses that say nothing
    /// about freshness cached for 60 s + 120 s stale-while-revalidate + 300 s stale-if-error.
    pub fn new() -> Self {
        Self::with_policy(Policy {
            default_ttl: Some(DEFAULT_TTL),
            default_stale_while_revalidate: DEFAULT_STALE_WHILE_REVALIDATE,
            default_stale_if_error: DEFAULT_STALE_IF_ERROR,
            respect_origin: true,
            store_private: false,
            cookies_need_public: true,
            revalidation_retention: Duration::from_secs(600),
            surrogate_token: Some(Arc::from(DEFAULT_NAME)),
            targeted: Arc::new([]),
            credential_headers: Arc::new([]),
            stale_if_unreachable: None,
        })
    }

    /// The strict shared-cache preset, for a caching proxy in front of origins you do not
    /// control: only responses with explicit freshness (or RFC 9111 heuristics from
    /// `Last-Modified`) are reused, and stale is served only as the response's own
    /// `stale-while-revalidate=` / `stale-if-error=` allow. Failures are shared only with the
    /// requests that waited for the failing origin call: none is remembered for later
    /// requests (see [`remember_failures`](Self::remember_failures)), as RFC 9111 does not let
    /// a cache reuse a response it did not store.
    pub fn shared_cache() -> Self {
        let mut layer = Self::with_policy(Policy {
            default_ttl: None,
            default_stale_while_revalidate: Duration::ZERO,
            default_stale_if_error: Duration::ZERO,
            respect_origin: true,
            store_private: false,
            cookies_need_public: true,
            revalidation_retention: Duration::from_secs(600),
            surrogate_token: Some(Arc::from(DEFAULT_NAME)),
            targeted: default_targets(DEFAULT_NAME),
            credential_headers: Arc::new([]),
            stale_if_unreachable: Some(DEFAULT_MAX_STALE_WHEN_DISCONNECTED),
        });
        layer.store.remember_failures = Duration::ZERO;
        layer.config.answer_remembered_failures = false;
        layer.targeted_default = true;
        layer
    }

    fn with_policy(policy: Policy) -> Self {
        let cache_name = DEFAULT_NAME.to_owned();
        Self {
            config: Config {
                policy,
                max_body_bytes: 8 << 20,
                headers: StatusHeaders::new(&cache_name, false, false, true),
                key_fn: None,
                policy_fn: None,
                invalidate_on_unsafe: true,
                convert_head: false,
                surrogate_capability: None,
                origin_timeout: Some(Duration::from_secs(30)),
                failure_statuses: Arc::new([
                    StatusCode::REQUEST_TIMEOUT,
                    StatusCode::TOO_MANY_REQUESTS,
                ]),
                answer_remembered_failures: true,
                forward_cache_tags: false,
                query_time_header: false,
            },
            store: StoreSettings {
                capacity_bytes: 128 << 20,
                lock_timeout: Duration::from_secs(5),
                refresh_timeout: Duration::from_secs(30),
                backoff: (Duration::from_secs(1), Duration::from_secs(60)),
                breaker: (10, Duration::from_secs(30)),
                ttl_jitter: 0.0,
                early_refresh_beta: None,
                stale_alert_age: None,
                remember_failures: DEFAULT_REMEMBER_FAILURES,
                #[cfg(feature = "redis")]
                redis: None,
                shared_with: None,
                touched: false,
            },
            cache_name,
            targeted_default: false,
            x_cache: false,
            x_cache_key: false,
            cache_info: true,
            cache: Arc::new(OnceLock::new()),
            shared: Arc::new(OnceLock::new()),
        }
        .changed()
    }

    /// A setting that shapes the store changed: it shapes the cache this layer creates; one
    /// that exists already is kept (handles taken before must keep seeing the serving cache).
    fn store_changed(mut self) -> Self {
        self.store.touched = true;
        if self.cache.get().is_some() {
            tracing::warn!(
                "a setting that shapes the store was changed after the layer's cache was \
                 created (by `layer`, `handle` or `stats`): not applied, the layer keeps its \
                 cache; set store settings before first use"
            );
        }
        self.changed()
    }

    /// A setting changed. Once the cache exists (a handle was taken, a service made), this
    /// value keeps it and sees it with the new settings; before that, the value is a new
    /// layer of its own (so `base.clone().ttl(..)` per route gives each route its own cache).
    fn changed(mut self) -> Self {
        if self.cache.get().is_none() {
            self.cache = Arc::new(OnceLock::new());
        }
        self.config.surrogate_capability = self.config.render_surrogate_capability();
        self.config.headers = StatusHeaders::new(
            &self.cache_name,
            self.x_cache,
            self.x_cache_key,
            self.cache_info,
        );
        self.shared = Arc::new(OnceLock::new());
        self
    }

    /// Fresh lifetime of responses that carry no freshness of their own (default 60 s; with
    /// [`shared_cache`](Self::shared_cache), none unless set here).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.config.policy.default_ttl = Some(ttl);
        self.changed()
    }

    /// Stale-while-revalidate window when the response does not set one (default 120 s).
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.config.policy.default_stale_while_revalidate = window;
        self.changed()
    }

    /// Stale-if-error window when the response does not set one (default 300 s).
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.config.policy.default_stale_if_error = window;
        self.changed()
    }

    /// With `true`, ignore the origin's freshness (`Cache-Control` lifetimes, `Expires`) and
    /// use the layer's [`ttl`](Self::ttl) (60 s if none is set) and windows for every response.
    /// `no-store`, `private`, `Set-Cookie` and `Authorization` rules still apply. Default
    /// `false`: the origin's lifetimes win over the layer's defaults.
    pub fn ignore_origin_freshness(mut self, ignore: bool) -> Self {
        self.config.policy.respect_origin = !ignore;
        self.changed()
    }

    /// Largest body that is buffered and stored (default 8 MiB). A longer body streams to the
    /// client untouched and is not stored.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        if self.cache.get().is_some() {
            // Not applied to a store that exists, as the other store settings (it warns).
            return self.store_changed();
        }
        self.config.max_body_bytes = bytes;
        self.store_changed()
    }

    /// Memory budget of the cache in bytes (default 128 MiB).
    pub fn capacity_bytes(mut self, bytes: u64) -> Self {
        self.store.capacity_bytes = bytes;
        self.store_changed()
    }

    /// How long a request waits for another request's origin call for the same key before ONE
    /// waiting request asks the origin again (default 5 s). Every waiter takes whichever call
    /// stores first, so an origin slower than this gets at most one extra call per lock timeout
    /// per key (Varnish waits for the one fetch; this also bounds a hung one). When calls keep
    /// failing, a request that has waited this long asks the origin itself.
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.store.lock_timeout = timeout;
        self.store_changed()
    }

    /// Shares the cache with every other instance on the same Redis (feature `redis`): a miss
    /// or a stale entry consults Redis before the origin, one instance in the fleet loads a key
    /// while the others wait for its value, purges and invalidations reach every instance. An
    /// in-memory hit never touches Redis. Redis failing never fails a request: see
    /// [`tower_swr::redis`](crate::redis).
    ///
    /// ```no_run
    /// use axum::{routing::get, Router};
    /// use tower_swr::{redis::RedisConfig, SwrLayer};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let redis = RedisConfig::new("redis://127.0.0.1:6379/")?;
    /// let app: Router = Router::new()
    ///     .route("/prices", get(|| async { "42" }))
    ///     .layer(SwrLayer::new().redis(redis));
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis(mut self, config: crate::redis::RedisConfig) -> Self {
        self.store.redis = Some(config);
        self.store_changed()
    }

    /// How long a background refresh may take before it counts as failed (default 30 s).
    pub fn refresh_timeout(mut self, timeout: Duration) -> Self {
        self.store.refresh_timeout = timeout;
        self.store_changed()
    }

    /// Backoff after a failed refresh: `base`, doubling per failure, capped at `max`
    /// (default 1 s to 60 s), each wait jittered (between half of it and all of it). Stale
    /// keeps being served meanwhile.
    pub fn refresh_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.store.backoff = (base, max);
        self.store_changed()
    }

    /// Adds to every request's key what `key_fn` returns (e.g. a user id), or skips the cache
    /// for the request when it returns `None`. Inside axum's `Router::nest` (feature `axum`)
    /// the parts carry the URI the client sent (`/api/admin/x`, not `/admin/x`), as keys do.
    pub fn key_fn(
        mut self,
        key_fn: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.config.key_fn = Some(Arc::new(key_fn));
        self.changed()
    }

    /// Request headers that carry a credential, treated like `Authorization` (default: none
    /// besides `Authorization` and `Cookie`): an answer to a request carrying one is stored
    /// and shared only when the response says `public`, `s-maxage` or `must-revalidate`, is
    /// never served to such a request otherwise, and a refresh sends the storing request's
    /// value, not the triggering client's.
    ///
    /// ```
    /// use tower_swr::SwrLayer;
    ///
    /// let layer = SwrLayer::new().credential_headers(["x-api-key", "x-auth-token"]);
    /// # let _ = layer;
    /// ```
    ///
    /// # Panics
    ///
    /// If a name is not a valid header name.
    pub fn credential_headers<N>(mut self, names: impl IntoIterator<Item = N>) -> Self
    where
        N: TryInto<HeaderName>,
        N::Error: fmt::Debug,
    {
        self.config.policy.credential_headers = names
            .into_iter()
            .map(|name| name.try_into().expect("a valid header name"))
            .collect();
        self.changed()
    }

    /// Origin statuses, besides every 5xx (and every 1xx: an interim answer is no final
    /// response), that mean the origin failed this time rather than answered (default `408 Request Timeout` and `429 Too Many Requests`, as nginx's
    /// `proxy_cache_use_stale timeout http_429`): a background refresh answered so keeps the
    /// stored entry and backs off, and a request that a stale-if-error entry can answer gets
    /// that entry instead. Without a usable entry the client gets the origin's answer.
    pub fn failure_statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.config.failure_statuses = statuses.into_iter().collect();
        self.changed()
    }

    /// Store `private` responses and answers to requests carrying `Authorization` (default
    /// `false`). Only safe when [`key_fn`](Self::key_fn) puts the user in the key. With the
    /// Redis tier, a `private` response to a request without credentials is shared through
    /// Redis like any other (under the same user-bearing key); a response stored with the
    /// request's `Authorization` or `Cookie` never leaves this instance.
    pub fn allow_private(mut self, allow: bool) -> Self {
        self.config.policy.store_private = allow;
        self.changed()
    }

    /// Treat requests carrying `Cookie` like any other (default `false`: like Varnish's built-in
    /// rules, they are answered from and stored in the cache only with responses that say
    /// `public` or `s-maxage`, since cookies often select per-user content). Turn on when your
    /// cookies never change responses (e.g. analytics cookies only).
    pub fn cache_cookie_requests(mut self, enabled: bool) -> Self {
        self.config.policy.cookies_need_public = !enabled;
        self.changed()
    }

    /// How long a request waits for the origin when a stale entry could answer it instead
    /// (inside its stale-if-error window): past this, it gets the stale entry, as if the
    /// origin had failed (default 30 s; zero or `None` waits as long as the origin takes).
    /// Without such an entry the origin's own answer is awaited however long it takes: put
    /// tower's `TimeoutLayer` inside this layer for a hard limit.
    pub fn origin_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.config.origin_timeout = (timeout.into())
            .filter(|timeout| !timeout.is_zero())
            .map(crate::engine::setting);
        self.changed()
    }

    /// RFC 9111 §4.2.4, a stale response when disconnected: when the origin cannot be reached
    /// at all, a stored response may stand in up to `most` stale (how long past its fresh
    /// lifetime), beyond its own `stale-if-error` window, unless `must-revalidate`,
    /// `proxy-revalidate`, `no-cache` or `s-maxage` forbid serving it stale (in the field that
    /// applies to this cache: targeted, `Surrogate-Control` or `Cache-Control`). Default 24 h
    /// in [`shared_cache`](Self::shared_cache), off in [`new`](Self::new) (whose default
    /// stale-if-error window covers failures); `None` or zero turns it off.
    ///
    /// "Cannot be reached" is an error returned by the inner service (a refused or reset
    /// connection, a DNS failure, tower's `Timeout`) or the [`origin_timeout`](Self::origin_timeout)
    /// running out; any response is the origin's answer, a `5xx` too (a `502` that an HTTP
    /// client makes up itself must be an `Err` instead: `examples/reverse_proxy.rs`). Such an
    /// answer is marked `Cache-Status: tower-swr; fwd=stale` (status
    /// [`CacheStatus::StaleIfError`](crate::CacheStatus::StaleIfError)), with a warning in the
    /// log. Responses that may be served so are kept that long past their windows (within
    /// [`capacity_bytes`](Self::capacity_bytes)). The staleness counts from the end of the
    /// fresh lifetime as this cache stored it: for a response that arrived stale (its `Age`
    /// past its lifetime), from when it was stored.
    pub fn max_stale_when_disconnected(mut self, most: impl Into<Option<Duration>>) -> Self {
        self.config.policy.stale_if_unreachable = (most.into())
            .filter(|most| !most.is_zero())
            .map(crate::engine::setting);
        self.changed()
    }

    /// Ask the inner service with `GET` when a `HEAD` misses, store the answer and send the
    /// client its headers only (nginx's `proxy_cache_convert_head`, Varnish). Default `false`:
    /// a `HEAD` miss goes to the inner service as a `HEAD` and nothing is stored; a `HEAD` is
    /// answered from a stored `GET` either way.
    ///
    /// Turn it on only when the inner service chooses what to run by the request's method
    /// itself, e.g. an HTTP client to an upstream (`examples/reverse_proxy.rs`) or a whole
    /// `Router` wrapped as one service. Under axum's `Router::layer` the layer wraps each
    /// method's handler separately: a converted `HEAD` would still run the route's `.head(..)`
    /// handler, and its bodiless answer would be stored as the `GET` entry.
    pub fn convert_head(mut self, enabled: bool) -> Self {
        self.config.convert_head = enabled;
        self.changed()
    }

    /// The cache's name in `Cache-Status` (default `tower-swr`). A name that is not an RFC 8941
    /// token is written as a quoted string.
    pub fn cache_name(mut self, name: &str) -> Self {
        if self.cache.get().is_some() {
            // The name keys the store's entries: not applied to one that exists (it warns).
            return self.store_changed();
        }
        self.cache_name = if is_token(name) {
            name.to_owned()
        } else {
            let escaped: String = name
                .chars()
                .filter(|c| c.is_ascii() && !c.is_ascii_control())
                .flat_map(|c| match c {
                    '"' | '\\' => vec!['\\', c],
                    c => vec![c],
                })
                .collect();
            format!("\"{escaped}\"")
        };
        if self.config.policy.surrogate_token.is_some() {
            self.config.policy.surrogate_token = Some(Arc::from(self.cache_name.as_str()));
        }
        if self.targeted_default {
            self.config.policy.targeted = default_targets(&self.cache_name);
        }
        self.store_changed()
    }

    /// Read targeted cache control (RFC 9213; default on in [`shared_cache`](Self::shared_cache),
    /// off in [`new`](Self::new)): `<cache name>-Cache-Control` (`Tower-Swr-Cache-Control`),
    /// then `CDN-Cache-Control`. The first of them present with a valid value (a Structured
    /// Fields dictionary: `max-age=600, stale-while-revalidate=60`) is this cache's
    /// `Cache-Control`: the response's `Cache-Control` and `Expires` are then ignored by this
    /// cache (they still reach clients). One that does not parse is ignored, as if absent.
    ///
    /// `max-age`, `s-maxage`, `no-store`, `no-cache`, `private`, `public`, `must-revalidate`,
    /// `proxy-revalidate`, `stale-while-revalidate`, `stale-if-error`, `immutable` and
    /// `must-understand` mean what they mean in `Cache-Control`; a value of the wrong type
    /// (`max-age=1.5`, `max-age=-1`, `no-store=?0`) leaves the directive out, and parameters are
    /// ignored. `Surrogate-Control` aimed at this cache still applies on top.
    ///
    /// Targeted fields are passed on downstream unchanged, those on the list too (RFC 9213 §3:
    /// a CDN cache typically forwards `CDN-Cache-Control` for the caches after it); when this
    /// is the last cache that uses them, remove them in front of the layer.
    pub fn targeted_cache_control(mut self, enabled: bool) -> Self {
        self.targeted_default = enabled;
        self.config.policy.targeted = if enabled {
            default_targets(&self.cache_name)
        } else {
            Arc::new([])
        };
        self.changed()
    }

    /// The target list of [`targeted_cache_control`](Self::targeted_cache_control), most
    /// applicable first, in place of the default one (an empty list turns it off):
    ///
    /// ```
    /// use tower_swr::SwrLayer;
    ///
    /// let layer = SwrLayer::new().targeted_cache_control_fields(["edge-cache-control", "cdn-cache-control"]);
    /// # let _ = layer;
    /// ```
    ///
    /// # Panics
    ///
    /// If a name is not a valid header name.
    pub fn targeted_cache_control_fields<N>(mut self, names: impl IntoIterator<Item = N>) -> Self
    where
        N: TryInto<HeaderName>,
        N::Error: fmt::Debug,
    {
        self.targeted_default = false;
        self.config.policy.targeted = names
            .into_iter()
            .map(|name| name.try_into().expect("a valid header name"))
            .collect();
        self.changed()
    }

    /// Read `Surrogate-Control` (default on): directives untargeted or targeted at this cache's
    /// name (`max-age=60;tower-swr`) override `Cache-Control` for this cache, and the header is
    /// not passed on to clients; origin requests carry
    /// `Surrogate-Capability: tower-swr="Surrogate/1.0"`. Lets a handler cache at the edge for
    /// minutes while telling browsers `no-cache`.
    pub fn surrogate_control(mut self, enabled: bool) -> Self {
        self.config.policy.surrogate_token = enabled.then(|| Arc::from(self.cache_name.as_str()));
        self.changed()
    }

    /// Send the cache-tag fields `Surrogate-Key`, `Cache-Tag` and `xkey` downstream (default
    /// `false`: removed from every response, stored or not, as Fastly and Cloudflare remove
    /// them; turn on when a cache after this one purges by tag too).
    ///
    /// A stored response is tagged by them whichever way: `Surrogate-Key` separated by spaces,
    /// `Cache-Tag` by commas, `xkey` by either; a tag is 1 to 256 visible ASCII characters
    /// (no commas), compared exactly, and a response keeps its first 64 distinct tags. An
    /// invalid or longer tag, and those past 64, are ignored (a debug log says so). Purge with
    /// [`SwrHandle::purge_tag`] and [`SwrHandle::soft_purge_tag`].
    pub fn forward_cache_tags(mut self, forward: bool) -> Self {
        self.config.forward_cache_tags = forward;
        self.changed()
    }

    /// Also send `X-Cache: HIT|STALE|MISS|BYPASS` (default off).
    pub fn x_cache_header(mut self, enabled: bool) -> Self {
        self.x_cache = enabled;
        self.changed()
    }

    /// Attach the [`CacheInfo`](crate::CacheInfo) extension to every response (default on).
    ///
    /// Turning it off saves an allocation and a free on every hit (the extension map and its
    /// box: ~12% of a hit's instructions, see `benches/README.md`) for services that never read
    /// it; `Cache-Status`, `Age` and the statistics say the same thing.
    pub fn cache_info_extension(mut self, enabled: bool) -> Self {
        self.cache_info = enabled;
        self.changed()
    }

    /// Also send `X-Cache-Key` with the key a response was looked up under (default off: it
    /// reveals keys, e.g. what a key function adds).
    pub fn x_cache_key_header(mut self, enabled: bool) -> Self {
        self.x_cache_key = enabled;
        self.changed()
    }

    /// Also send `X-Query-Time-ms`: how long this layer took to answer, from the request to
    /// the response's head, in whole milliseconds (default off). `0` for an answer from
    /// memory; for a miss, the origin's (or the request it waited for) time to answer. With
    /// `X-Cache` and `X-Cache-Key`, the observability headers of a hand-rolled cache.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::convert::Infallible;
    /// use http::{Request, Response};
    /// use tower::{service_fn, Layer, ServiceExt};
    /// use tower_swr::SwrLayer;
    ///
    /// let origin = service_fn(|_: Request<String>| async {
    ///     Ok::<_, Infallible>(Response::new(String::from("prices")))
    /// });
    /// let service = SwrLayer::new().query_time_header(true).layer(origin);
    /// let response = service.clone().oneshot(Request::new(String::new())).await.unwrap();
    /// let ms: u64 = response.headers()["x-query-time-ms"].to_str().unwrap().parse().unwrap();
    /// assert!(ms < 60_000);
    /// # }
    /// ```
    pub fn query_time_header(mut self, enabled: bool) -> Self {
        self.config.query_time_header = enabled;
        self.changed()
    }

    /// After `threshold` consecutive failed refreshes (any keys), pause all background refreshes
    /// for `cooldown` while stale keeps being served (default 10 failures, 30 s; 0 disables).
    pub fn circuit_breaker(mut self, threshold: u32, cooldown: Duration) -> Self {
        self.store.breaker = (threshold, cooldown);
        self.store_changed()
    }

    /// Spread fresh lifetimes by ± `fraction` (`0.1` = ±10 %) so entries stored together do not
    /// expire together (default off).
    pub fn ttl_jitter(mut self, fraction: f64) -> Self {
        self.store.ttl_jitter = fraction;
        self.store_changed()
    }

    /// Probabilistic early refresh (XFetch): a fresh hit starts the background refresh early,
    /// more likely as expiry nears and the slower the origin was; `beta` scales it (1.0 is
    /// usual). Default off.
    pub fn early_refresh(mut self, beta: f64) -> Self {
        self.store.early_refresh_beta = (beta > 0.0).then_some(beta);
        self.store_changed()
    }

    /// How long an origin failure stays a key's answer (default 1 s with [`new`](Self::new),
    /// off with [`shared_cache`](Self::shared_cache); zero turns it off).
    ///
    /// Requests that wait for one origin call get its failure too: the origin's own failure
    /// response (status, headers, a body up to 64 KiB), or for an error of the inner service a
    /// `502 Bad Gateway` marked `detail=origin-error`. For `duration` after it, requests of the
    /// key that find nothing usable get that failure without calling the origin, marked
    /// `Cache-Status: tower-swr; hit; detail=failure` (and counted in
    /// [`Stats::failure_hits`]). A stale entry inside its stale-if-error window still wins.
    /// Only requests without credentials share a failure, and only one that is the same for
    /// everyone: no `private`, `no-store`, `Set-Cookie` or `Vary` (each waiter of such a
    /// failure asks the origin itself, as before). Remembered failures are held beside the
    /// budget, not in it: at most 1,024 keys at a time (bodies of at most 64 KiB), swept of
    /// expired ones by the next load that ends after they expire.
    pub fn remember_failures(mut self, duration: Duration) -> Self {
        self.store.remember_failures = duration;
        // Zero holds for this layer even where the store is another's (`share_memory_with`)
        // or already made: it never answers with a remembered failure.
        self.config.answer_remembered_failures = !duration.is_zero();
        self.store_changed()
    }

    /// Log a warning whenever a response older than `age` is served stale (default: never;
    /// zero turns it off): inside its stale-while-revalidate window, or standing in for a
    /// failing origin (stale-if-error, the outage case).
    pub fn stale_alert_age(mut self, age: Duration) -> Self {
        self.store.stale_alert_age = (!age.is_zero()).then_some(age);
        self.store_changed()
    }

    /// Per-route freshness decided by a function of the request and the response. Return
    /// `Some(freshness)` to store the response with it (the never-shared rules — `no-store`,
    /// `private`, `Set-Cookie`, `Authorization` — still apply), or `None` to use the layer's
    /// usual rules. Inside axum's `Router::nest` (feature `axum`) the request carries the URI
    /// the client sent, as keys do.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_swr::{engine::Freshness, SwrLayer};
    ///
    /// const DAY: u64 = 24 * 3600;
    /// let layer = SwrLayer::new().policy_fn(|request, _response| {
    ///     let days = |d| Duration::from_secs(d * DAY);
    ///     match request.uri.path() {
    ///         "/api/cinema" => Some(Freshness::new(days(6)).with_stale_while_revalidate(days(1))),
    ///         "/api/events" => Some(Freshness::new(days(5)).with_stale_while_revalidate(days(1))),
    ///         "/api/google_trend" => Some(Freshness::new(days(1))),
    ///         _ => None,
    ///     }
    /// });
    /// ```
    pub fn policy_fn(
        mut self,
        policy: impl Fn(&Parts, &http::response::Parts) -> Option<Freshness> + Send + Sync + 'static,
    ) -> Self {
        let policy: PolicyFn = Arc::new(policy);
        self.config.policy_fn = Some(policy);
        self.changed()
    }

    /// Store entries in `other`'s cache: one memory budget for several layers (e.g. one layer
    /// per route with its own TTLs). This layer's own capacity and store settings are then
    /// unused.
    ///
    /// ```
    /// use std::time::Duration;
    /// use axum::{routing::get, Router};
    /// use tower_swr::SwrLayer;
    ///
    /// let budget = SwrLayer::new().capacity_bytes(64 << 20);
    /// let app: Router = Router::new()
    ///     .route("/cinema", get(|| async { "films" }).layer(
    ///         SwrLayer::new().ttl(Duration::from_secs(6 * 86400)).share_memory_with(&budget),
    ///     ))
    ///     .route("/trends", get(|| async { "trends" }).layer(
    ///         SwrLayer::new().ttl(Duration::from_secs(86400)).share_memory_with(&budget),
    ///     ));
    /// ```
    ///
    /// The layers' entries stay apart: each layer's keys are in the namespace of its
    /// [`cache_name`](Self::cache_name). When layers sharing a store have the same name, as
    /// above, the second to be first used gets `name#2`, the third `name#3`, and so on (the
    /// namespace is part of [`CacheKey::to_bytes`]).
    pub fn share_memory_with(mut self, other: &SwrLayer) -> Self {
        self.store.shared_with = Some(other.cache().tables.clone());
        self.cache = Arc::new(OnceLock::new());
        self.changed()
    }

    fn cache(&self) -> &CacheInstance {
        self.cache.get_or_init(|| {
            let tables = match &self.store.shared_with {
                Some(tables) => {
                    if self.store.touched {
                        tracing::warn!(
                            "this layer shares another layer's store (`share_memory_with`): \
                             its own store settings are unused; set them on that layer"
                        );
                    }
                    tables.clone()
                }
                None => {
                    let budget = Budget::of(self.store.capacity_bytes);
                    let largest = (self.config.max_body_bytes as u64).saturating_add(64 << 10);
                    let mut builder = SwrCache::builder()
                        .name(self.cache_name.clone())
                        .capacity_bytes(budget.store)
                        .largest_entry_bytes(largest)
                        .weigher(|_, cached: &CachedResponse| cached.weight())
                        .lock_timeout(self.store.lock_timeout)
                        .refresh_timeout(self.store.refresh_timeout)
                        .refresh_backoff(self.store.backoff.0, self.store.backoff.1)
                        .circuit_breaker(self.store.breaker.0, self.store.breaker.1)
                        .ttl_jitter(self.store.ttl_jitter)
                        .remember_failures(self.store.remember_failures);
                    if let Some(beta) = self.store.early_refresh_beta {
                        builder = builder.early_refresh(beta);
                    }
                    if let Some(age) = self.store.stale_alert_age {
                        builder = builder.stale_alert_age(age);
                    }
                    let tags = Arc::new(TagPurges::new());
                    #[cfg(feature = "redis")]
                    let mut redis = None;
                    #[cfg(feature = "redis")]
                    let vary_for_tier = Arc::new(std::sync::OnceLock::new());
                    #[cfg(feature = "redis")]
                    if let Some(config) = self.store.redis.clone() {
                        let codec = super::tier::HttpTierCodec {
                            tags: tags.clone(),
                            vary_index: Arc::clone(&vary_for_tier),
                        };
                        let tier = RedisTier::new(config, codec);
                        builder = builder
                            .shared_tier_timeout(tier.config().call_timeout())
                            .shared_tier(Arc::new(tier.clone()));
                        redis = Some(tier);
                    }
                    let engine = builder.build();
                    let vary_index = Arc::new(vary_index::vary_indexes(budget.vary_index, &engine));
                    // Weak: the index holds the engine, which holds the tier and its codec.
                    #[cfg(feature = "redis")]
                    let _ = vary_for_tier.set(Arc::downgrade(&vary_index));
                    Tables {
                        #[cfg(feature = "redis")]
                        redis,
                        namespaces: Arc::default(),
                        vary_index,
                        passes: Arc::new(vary_index::passes(budget.passes)),
                        tags,
                        engine,
                    }
                }
            };
            // A layer sharing another's store keys its entries apart from the other layers':
            // its namespace is its cache name, or that name with a suffix when taken.
            let namespace = tables.namespaces.claim(&self.cache_name);
            CacheInstance { tables, namespace }
        })
    }

    fn shared(&self) -> &Arc<Shared> {
        self.shared.get_or_init(|| {
            let cache = self.cache();
            Arc::new(Shared {
                engine: cache.tables.engine.clone(),
                #[cfg(feature = "redis")]
                redis: cache.tables.redis.clone(),
                config: self.config.clone(),
                namespace: cache.namespace,
                vary_index: Arc::clone(&cache.tables.vary_index),
                passes: Arc::clone(&cache.tables.passes),
                tags: Arc::clone(&cache.tables.tags),
            })
        })
    }

    /// The counters of this layer's cache. `bytes` and `capacity_bytes` cover everything the
    /// memory budget holds: the stored responses and the `Vary` index and pass memory.
    pub fn stats(&self) -> Stats {
        self.shared().stats()
    }

    /// A cloneable handle on this layer's cache: counters, purge, graceful shutdown.
    pub fn handle(&self) -> SwrHandle {
        SwrHandle::new(Arc::clone(self.shared()))
    }
}

impl<S> Layer<S> for SwrLayer {
    type Service = SwrService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SwrService::new(inner, Arc::clone(self.shared()))
    }
}

/// The default RFC 9213 target list of a cache named `name`: its own field, when the name makes
/// a header name (`tower-swr-cache-control`), then `cdn-cache-control`.
fn default_targets(name: &str) -> Arc<[HeaderName]> {
    let own = HeaderName::try_from(format!("{name}-cache-control")).ok();
    own.into_iter()
        .chain([HeaderName::from_static("cdn-cache-control")])
        .collect()
}
