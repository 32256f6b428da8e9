//! [`SwrService`]: the tower adapter over the engine.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response};
use http_body::Body;
use tower::util::{Oneshot, ServiceExt};
use tower_service::Service;

use super::body::SwrBody;
use super::conditional::CLIENT_CONDITIONALS;
use super::config::Shared;
use super::fill::BoxError;
use super::future::ResponseFuture;
use super::invalidation::Invalidation;
use super::key::{align_host, key_host, keyed_host, normal_host, request_variant, KeyRef};
use super::origin::{miss, refresh, stale_answer};
use super::policy::{CacheControl, Policy, RequestFacts};
use super::render::{mark_bypass, Ask};
use super::status::{CacheInfo, CacheStatus, Member};
use super::stored::{CachedResponse, Refusal};
use super::tags::soft_purged_found;
use crate::engine::{Found, Stamp};

impl RequestFacts {
    pub(crate) fn of(headers: &HeaderMap, policy: &Policy) -> Self {
        Self::scan(headers, policy).facts
    }

    /// The facts, whether the request is conditional or partial, and its `Host`, in one pass
    /// over the headers (a hit would otherwise make nine hashed lookups).
    pub(crate) fn scan<'a>(headers: &'a HeaderMap, policy: &Policy) -> Scan<'a> {
        let mut facts = Self::default();
        let mut conditional = false;
        let mut host = None;
        let mut upgrade = false;
        for (name, value) in headers {
            if name == header::HOST {
                host = host.or(Some(value));
            } else if name == header::AUTHORIZATION {
                facts.has_auth = true;
            } else if name == header::COOKIE {
                facts.has_cookie = true;
            } else if name == header::UPGRADE {
                upgrade = true;
            } else if CLIENT_CONDITIONALS.contains(name) {
                conditional = true;
            } else if policy.credential_headers.contains(name) {
                // A custom credential (`X-Api-Key`, ...) is treated like `Authorization`.
                facts.has_auth = true;
            }
        }
        if policy.store_private {
            facts = Self::default();
        }
        facts.has_cookie &= policy.cookies_need_public;
        Scan {
            facts,
            conditional,
            host,
            upgrade,
        }
    }
}

/// What [`RequestFacts::scan`] found.
pub(crate) struct Scan<'a> {
    pub(crate) facts: RequestFacts,
    pub(crate) conditional: bool,
    pub(crate) host: Option<&'a HeaderValue>,
    /// The request asks to switch protocols (a WebSocket handshake, `h2c`): never cached.
    pub(crate) upgrade: bool,
}

/// Middleware that caches responses of the inner service with stale-while-revalidate.
///
/// Made by [`SwrLayer`](crate::SwrLayer); see the [crate docs](crate) for the behaviour.
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use http_body_util::Full;
/// use tower::{service_fn, Layer, ServiceExt};
/// use tower_swr::{CacheInfo, CacheStatus, SwrLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Infallible> {
/// let origin = service_fn(|_: Request<()>| async {
///     Ok::<_, Infallible>(Response::new(Full::new(bytes::Bytes::from("42"))))
/// });
/// let service = SwrLayer::new().layer(origin);
///
/// let first = service.clone().oneshot(Request::new(())).await?;
/// let second = service.oneshot(Request::new(())).await?;
/// let status = |r: &Response<_>| r.extensions().get::<CacheInfo>().map(|i| i.status);
/// assert_eq!(status(&first), Some(CacheStatus::Miss));
/// assert_eq!(status(&second), Some(CacheStatus::Fresh)); // the origin was not called
/// # Ok(())
/// # }
/// ```
pub struct SwrService<S> {
    pub(crate) inner: S,
    pub(crate) shared: Arc<Shared>,
}

impl<S> SwrService<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the middleware, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone> Clone for SwrService<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for SwrService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwrService")
            .field("inner", &self.inner)
            .field("cache", &self.shared.engine)
            .finish()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for SwrService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Default + Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError> + Send + 'static,
{
    type Response = Response<SwrBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<Oneshot<S, Request<ReqB>>, ResB, S::Error>;

    /// Always ready: a hit never waits for the origin's capacity. The origin's readiness is
    /// awaited on a clone, on the paths that call it.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        if self.shared.config.query_time_header {
            let started = tokio::time::Instant::now();
            return ResponseFuture::timed(self.answer(request), started);
        }
        self.answer(request)
    }
}

impl<S> SwrService<S> {
    /// [`call`](Service::call) without `X-Query-Time-ms`.
    #[inline]
    fn answer<ReqB, ResB>(
        &mut self,
        mut request: Request<ReqB>,
    ) -> ResponseFuture<Oneshot<S, Request<ReqB>>, ResB, S::Error>
    where
        S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ReqB: Default + Send + 'static,
        ResB: Body<Data = Bytes> + Send + 'static,
        ResB::Error: Into<BoxError> + Send + 'static,
    {
        let shared = &self.shared;
        let config = &shared.config;
        // `skip`: the key function said "not this request". The request moves (a copy of
        // ~200 bytes, twice) only when there is a key function to show its parts to.
        let (extra, skip) = match &config.key_fn {
            None => (None, false),
            Some(key_fn) => {
                let (mut parts, body) = request.into_parts();
                let nested = super::key::show_client_uri(&mut parts);
                let extra = key_fn(&parts);
                if let Some(uri) = nested {
                    parts.uri = uri;
                }
                let skip = extra.is_none();
                request = Request::from_parts(parts, body);
                (extra, skip)
            }
        };
        let method = request.method();
        if method != Method::GET && method != Method::HEAD {
            shared.engine.count_bypass();
            tracing::debug!(key = %format_args!("{method} {}", logged_target(&request)), status = "bypass", "passed through: not a GET or HEAD");
            // CONNECT (and HTTP/2's extended CONNECT for WebSockets) opens a tunnel; it
            // changes no resource, so it invalidates nothing.
            let safe =
                method == Method::OPTIONS || method == Method::TRACE || method == Method::CONNECT;
            // A `Host` that is not text names no key (such requests bypass the cache).
            let invalidation = key_host(&request, request.headers().get(header::HOST))
                .filter(|_| config.invalidate_on_unsafe && !safe)
                .map(|host| {
                    let host = normal_host(host, request.uri().scheme());
                    let key = KeyRef::with_host(&request, &host, extra.as_deref(), 0);
                    (
                        Arc::clone(shared),
                        Invalidation {
                            host: key.host().into(),
                            target: key.target().into(),
                        },
                    )
                });
            let cache_status = config.headers.value(Member::Method);
            let marks = config.bypass_marks();
            let Some((shared, invalidation)) = invalidation else {
                return ResponseFuture::bypass(
                    self.inner.clone().oneshot(request),
                    cache_status,
                    marks,
                );
            };
            // The handler must act on the host whose entries the request invalidates.
            align_host(&mut request);
            let call = self.inner.clone().oneshot(request);
            return ResponseFuture::origin(Box::pin(async move {
                let response = call.await?.map(SwrBody::inner);
                let status = response.status();
                if status.is_success() || status.is_redirection() {
                    shared.invalidate(&invalidation, response.headers());
                }
                Ok(mark_bypass(response, &cache_status, marks))
            }));
        }
        let Scan {
            facts,
            conditional,
            host,
            upgrade,
        } = RequestFacts::scan(request.headers(), &config.policy);
        // An upgrade request must reach the handler itself (its `101` switches the connection),
        // never a stored page or another request's flight.
        let Some(host) = key_host(&request, host).filter(|_| !skip && !upgrade) else {
            shared.engine.count_bypass();
            tracing::debug!(
                key = %format_args!("{} {}", request.method(), logged_target(&request)),
                status = "bypass",
                why = if skip { "key_fn" } else if upgrade { "upgrade" } else { "host" },
                "passed through"
            );
            return ResponseFuture::bypass(
                self.inner.clone().oneshot(request),
                config.headers.value(Member::Bypass),
                config.bypass_marks(),
            );
        };
        let ask = Ask {
            head: request.method() == Method::HEAD,
            conditionals: conditional.then(|| request.headers()),
        };
        let now = Stamp::now();
        let mut key = KeyRef::with_host(&request, host, extra.as_deref(), shared.namespace);
        // A tagged entry purged by tag is refused (a miss); one soft-purged is taken as stale.
        let soft_purged = std::cell::Cell::new(false);
        let serves = |cached: &CachedResponse| {
            cached.serves(request.headers(), facts)
                && (cached.tags.as_deref()).is_none_or(|tags| shared.tags_allow(tags, &soft_purged))
        };
        let mut found = shared.engine.find(&key, now, serves);
        // Keys hold the host in one spelling (see `key_host`), which clients almost always
        // send: only a miss spells it out and looks again.
        let keyed;
        if let Found::Miss { expired: None } = found {
            if let Some(spelled) = keyed_host(&request, host) {
                keyed = spelled;
                key = KeyRef::with_host(&request, &keyed, extra.as_deref(), shared.namespace);
                found = shared.engine.find(&key, now, serves);
            }
        }
        let variant;
        let mut vary_miss = false;
        if let Found::Miss { expired: None } = found {
            if let Some(index) = shared.vary_index.get(&key) {
                variant = request_variant(&index.names, request.headers());
                key = key.with_variant(&variant);
                found = shared.engine.find(&key, now, serves);
                vary_miss = matches!(found, Found::Miss { expired: None });
            }
        }
        if soft_purged.get() {
            found = soft_purged_found(found);
        }
        let expired = match found {
            Found::Fresh {
                entry,
                refresh_early,
            } => {
                tracing::debug!(key = %key, status = "hit", "answered from cache");
                let refreshing = refresh_early
                    && refresh::<S, ReqB, ResB>(shared, &self.inner, &entry, &request, now);
                let ttl = entry.ttl_secs_at(now);
                return ResponseFuture::ready(shared.respond(
                    &entry,
                    CacheStatus::Fresh,
                    Member::Hit { ttl },
                    ask,
                    refreshing,
                    now,
                ));
            }
            Found::Stale(entry) if shared.engine.has_shared_tier() && !entry.is_refreshing() => {
                // Another instance may have refreshed it: the request that starts the refresh
                // asks the shared tier first (one round trip) and answers a fresher copy from
                // there; the others, while the refresh runs, are answered stale at once.
                let key = key.to_owned();
                let shared = Arc::clone(shared);
                let inner = self.inner.clone();
                return ResponseFuture::origin(Box::pin(async move {
                    let ask = Ask {
                        head: request.method() == Method::HEAD,
                        conditionals: conditional.then(|| request.headers()),
                    };
                    // The copy answers only a request the stored one would (credentials,
                    // `Vary`, tags): another instance stored it for other requests.
                    let fresher =
                        (shared.engine.fresher_in_tier(&key, &entry).await).filter(|fresher| {
                            serves_as_found(&shared, fresher.value(), &request, facts)
                        });
                    if let Some(fresher) = fresher {
                        let now = Stamp::now();
                        tracing::debug!(key = %key, status = "shared", "a fresher copy in the shared tier");
                        let ttl = fresher.ttl_secs_at(now);
                        return Ok(shared.respond(
                            &fresher,
                            CacheStatus::SharedTier,
                            Member::SharedHit { ttl },
                            ask,
                            false,
                            now,
                        ));
                    }
                    let now = Stamp::now();
                    Ok(stale_answer(&shared, &inner, &entry, &request, ask, now))
                }));
            }
            Found::Stale(entry) => {
                return ResponseFuture::ready(stale_answer(
                    shared,
                    &self.inner,
                    &entry,
                    &request,
                    ask,
                    now,
                ));
            }
            Found::Miss { expired } => expired,
            Found::Refused(entry) => {
                vary_miss = entry.value().refusal(request.headers(), facts) == Some(Refusal::Vary);
                None
            }
        };
        // RFC 9111 §5.2.1.7: a client that wants only a stored response gets one (answered
        // above) or a 504, and the origin is not asked.
        let directives = CacheControl::from_headers(request.headers());
        if directives.only_if_cached {
            if !shared.engine.has_shared_tier() {
                return ResponseFuture::ready(only_if_cached_miss(shared, &key));
            }
            // The shared tier is part of the cache: a fresh copy another instance stored
            // answers, without the origin.
            let key = key.to_owned();
            let shared = Arc::clone(shared);
            return ResponseFuture::origin(Box::pin(async move {
                if let Some(copy) = shared.engine.copy_from_tier(&key).await {
                    if serves_as_found(&shared, copy.value(), &request, facts) {
                        shared.engine.count_shared_tier_hit();
                        let ask = Ask {
                            head: request.method() == Method::HEAD,
                            conditionals: conditional.then(|| request.headers()),
                        };
                        let now = Stamp::now();
                        let ttl = copy.ttl_secs_at(now);
                        let hit = Member::SharedHit { ttl };
                        return Ok(shared.respond(
                            &copy,
                            CacheStatus::SharedTier,
                            hit,
                            ask,
                            false,
                            now,
                        ));
                    }
                }
                Ok(only_if_cached_miss(&shared, &key))
            }));
        }
        // RFC 9111 §5.2.1.5: nothing of a request with `no-store`, nor of its response, is
        // stored; it is forwarded on its own (a stored response could still answer it, above).
        if directives.no_store {
            tracing::debug!(key = %key, status = "no-store", "the request forbids storing");
            shared.engine.count_bypass();
            return ResponseFuture::bypass(
                self.inner.clone().oneshot(request),
                config.headers.value(Member::UriMiss { stored: false }),
                config.bypass_marks(),
            );
        }
        let key = key.to_owned();
        let shared = Arc::clone(shared);
        let inner = self.inner.clone();
        ResponseFuture::origin(Box::pin(async move {
            miss(shared, inner, key, request, expired, facts, vary_miss).await
        }))
    }
}

/// RFC 9111 §5.2.1.7: a client that wants only a stored response, and none could answer it,
/// gets a 504; the origin is not asked.
fn only_if_cached_miss<B: Body>(
    shared: &Shared,
    key: &dyn std::fmt::Display,
) -> Response<SwrBody<B>> {
    tracing::debug!(key = %key, status = "only-if-cached", "nothing stored: 504");
    shared.engine.count_bypass();
    let mut response = Response::new(SwrBody::empty());
    *response.status_mut() = http::StatusCode::GATEWAY_TIMEOUT;
    let headers = &shared.config.headers;
    headers.write(
        response.headers_mut(),
        Member::OnlyIfCached,
        CacheStatus::Bypass,
        None,
        None,
    );
    if headers.cache_info {
        (response.extensions_mut()).insert(CacheInfo::uncached(CacheStatus::Bypass));
    }
    response
}

/// Whether `cached`, read from the shared tier rather than found in memory, may answer
/// `request` as a stored response found here would: credentials, `Vary`, and tags (one
/// soft-purged is not a fresh answer).
fn serves_as_found<B>(
    shared: &Shared,
    cached: &CachedResponse,
    request: &Request<B>,
    facts: RequestFacts,
) -> bool {
    let soft_purged = std::cell::Cell::new(false);
    cached.serves(request.headers(), facts)
        && (cached.tags.as_deref()).is_none_or(|tags| shared.tags_allow(tags, &soft_purged))
        && !soft_purged.get()
}

/// A request's target for a log event: the path and query only (the authority is in the key of
/// other events; a URI's userinfo may hold a password).
fn logged_target<B>(request: &Request<B>) -> &str {
    request
        .uri()
        .path_and_query()
        .map_or("/", |target| target.as_str())
}
