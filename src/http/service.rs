//! [`SwrService`]: the tower adapter over the engine.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::request::Parts;
use http::{Extensions, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use tokio::time::Instant;
use tower::util::{Oneshot, ServiceExt};
use tower_service::Service;

use super::body::{buffer, headers_weight, Buffered, SwrBody};
use super::future::ResponseFuture;
use super::key::{CacheKey, KeyRef, Vary, VaryValues};
use super::policy::{Decision, Policy};
use super::status::{CacheInfo, CacheStatus, Member, StatusHeaders};
use crate::engine::{wait, Entry, Join, Landing, Loaded, Phase, SwrCache, Waited};

/// Adds to a request's key; `None` means "do not cache this request".
pub(crate) type KeyFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// The layer's settings, fixed once the layer is built.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) policy: Policy,
    pub(crate) max_body_bytes: usize,
    pub(crate) headers: StatusHeaders,
    pub(crate) key_fn: Option<KeyFn>,
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

/// What a layer's services share: the engine and the settings.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) engine: SwrCache<CacheKey, CachedResponse>,
    pub(crate) config: Config,
}

/// The request an entry was made from, kept so a background refresh can ask again.
#[derive(Debug)]
pub(crate) struct RequestTemplate {
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: Extensions,
}

/// Request headers that belong to one client's exchange, not to the refresh.
const NOT_REPLAYED: [HeaderName; 6] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
    header::RANGE,
];

impl RequestTemplate {
    fn capture<B>(request: &Request<B>) -> Self {
        let mut headers = request.headers().clone();
        for name in &NOT_REPLAYED {
            headers.remove(name);
        }
        Self {
            uri: request.uri().clone(),
            version: request.version(),
            headers,
            extensions: request.extensions().clone(),
        }
    }

    fn rebuild<B: Default>(&self) -> Request<B> {
        let mut request = Request::new(B::default());
        *request.method_mut() = Method::GET;
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        *request.extensions_mut() = self.extensions.clone();
        request
    }

    fn weight(&self) -> usize {
        self.uri.to_string().len() + headers_weight(&self.headers) + 64
    }
}

/// A stored response, ready to be served without decoding anything.
#[derive(Clone, Debug)]
pub(crate) struct CachedResponse {
    key: CacheKey,
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
    vary: Option<VaryValues>,
    /// May answer requests carrying `Authorization` (RFC 9111 §3.5).
    shared_with_auth: bool,
    request: Arc<RequestTemplate>,
}

impl CachedResponse {
    pub(crate) fn weight(&self) -> u64 {
        (self.body.len()
            + headers_weight(&self.headers)
            + self.vary.as_ref().map_or(0, VaryValues::weight)
            + self.request.weight()
            + self.key.target().len()
            + self.key.host().len()
            + 128) as u64
    }

    /// Whether this entry may answer `request`.
    fn serves(&self, headers: &HeaderMap, has_auth: bool) -> bool {
        (!has_auth || self.shared_with_auth)
            && self.vary.as_ref().is_none_or(|vary| vary.matches(headers))
    }
}

/// Hop-by-hop fields (RFC 9110 §7.6.1) are never stored, nor is `Age` (we compute our own).
fn storable_headers(mut headers: HeaderMap) -> HeaderMap {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::AGE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    headers
}

impl Shared {
    /// Builds the answer from a stored entry.
    fn respond<B: Body>(
        &self,
        entry: &Entry<CachedResponse>,
        status: CacheStatus,
        member: Member,
        head: bool,
        refreshing: bool,
        now: Instant,
    ) -> Response<SwrBody<B>> {
        let cached = entry.value();
        let body = if head {
            SwrBody::empty()
        } else {
            SwrBody::cached(cached.body.clone())
        };
        let mut response = Response::new(body);
        *response.status_mut() = cached.status;
        *response.version_mut() = cached.version;
        *response.headers_mut() = cached.headers.clone();
        let age = entry.age(now);
        self.config
            .headers
            .write(response.headers_mut(), member, status, Some(age));
        response.extensions_mut().insert(CacheInfo {
            status,
            age: Some(age),
            stored_at: Some(entry.stored_at()),
            refreshing,
            stored: true,
        });
        response
    }

    fn respond_stale_if_error<B: Body>(
        &self,
        entry: &Entry<CachedResponse>,
        fwd_status: Option<u16>,
        head: bool,
    ) -> Response<SwrBody<B>> {
        let now = Instant::now();
        self.engine.counters().stale_if_error.inc();
        tracing::warn!(key = %entry.value().key, age_secs = entry.age(now).as_secs(), fwd_status,
            "serving stale response: the origin failed");
        self.respond(
            entry,
            CacheStatus::StaleIfError,
            Member::Stale { fwd_status },
            head,
            false,
            now,
        )
    }

    /// The origin's own response, marked as a miss that was not stored.
    fn pass<B: Body>(
        &self,
        response: Response<SwrBody<B>>,
        vary_miss: bool,
    ) -> Response<SwrBody<B>> {
        let mut response = response;
        let member = if vary_miss {
            Member::VaryMiss { stored: false }
        } else {
            Member::UriMiss { stored: false }
        };
        self.config
            .headers
            .write(response.headers_mut(), member, CacheStatus::Miss, None);
        response
            .extensions_mut()
            .insert(CacheInfo::uncached(CacheStatus::Miss));
        response
    }

    /// Turns an origin response into an entry, if policy and size allow. Otherwise the response
    /// goes to the client as it is (with a body that is the buffered prefix plus the rest).
    async fn admit<B>(
        &self,
        key: CacheKey,
        template: Arc<RequestTemplate>,
        has_auth: bool,
        response: Response<B>,
    ) -> Admission<B>
    where
        B: Body<Data = Bytes>,
    {
        let (parts, body) = response.into_parts();
        let decision =
            self.config
                .policy
                .decide(has_auth, parts.status, &parts.headers, SystemTime::now());
        let reject =
            |parts, body, reason| Admission::Uncacheable(Response::from_parts(parts, body), reason);
        let Decision::Store {
            freshness,
            initial_age,
            shared_with_auth,
        } = decision
        else {
            let Decision::Pass(reason) = decision else {
                unreachable!()
            };
            return reject(parts, SwrBody::inner(body), reason);
        };
        let vary = match Vary::of(&parts.headers, &template.headers) {
            Vary::None => None,
            Vary::On(values) => Some(values),
            Vary::Never => return reject(parts, SwrBody::inner(body), "vary"),
        };
        let limit = self.config.max_body_bytes;
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            return Admission::Unstorable(
                Response::from_parts(parts, SwrBody::inner(body)),
                "body over max_body_bytes",
            );
        }
        let body = match buffer(body, limit).await {
            Buffered::Complete(bytes) => bytes,
            Buffered::Partial(body) => {
                return Admission::Unstorable(
                    Response::from_parts(parts, body),
                    "body over max_body_bytes, or it failed",
                )
            }
        };
        let mut headers = storable_headers(parts.headers);
        if declared.is_some_and(|len| len != body.len() as u64) {
            // The origin's Content-Length lied; serve what we really hold.
            headers.insert(header::CONTENT_LENGTH, body.len().into());
        }
        let cached = CachedResponse {
            key: key.clone(),
            status: parts.status,
            version: parts.version,
            headers,
            body,
            vary,
            shared_with_auth,
            request: template,
        };
        let loaded = Loaded::new(cached, freshness).with_initial_age(initial_age);
        match self.engine.store(key, loaded.clone()) {
            Some(entry) => Admission::Stored(entry),
            None => {
                let cached = loaded.value;
                let mut response = Response::new(SwrBody::cached(cached.body));
                *response.status_mut() = cached.status;
                *response.version_mut() = cached.version;
                *response.headers_mut() = cached.headers;
                Admission::Unstorable(response, "entry heavier than the store allows")
            }
        }
    }
}

/// What became of an origin response.
enum Admission<B: Body> {
    Stored(Arc<Entry<CachedResponse>>),
    /// The policy forbids storing it (reason given).
    Uncacheable(Response<SwrBody<B>>, &'static str),
    /// Cacheable, but too large to hold (reason given).
    Unstorable(Response<SwrBody<B>>, &'static str),
}

/// Middleware that caches responses of the inner service with stale-while-revalidate.
///
/// Made by [`SwrLayer`](crate::SwrLayer); see the [crate docs](crate) for the behaviour.
pub struct SwrService<S> {
    inner: S,
    shared: Arc<Shared>,
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
    ResB::Error: Send + 'static,
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
        let shared = &self.shared;
        let config = &shared.config;
        let method = request.method();
        if method != Method::GET && method != Method::HEAD {
            shared.engine.counters().bypasses.inc();
            return ResponseFuture::bypass(
                self.inner.clone().oneshot(request),
                config.headers.value(Member::Method),
                config.headers.x_cache,
            );
        }
        let (request, extra) = match &config.key_fn {
            None => (request, None),
            Some(key_fn) => {
                let (parts, body) = request.into_parts();
                let extra = key_fn(&parts);
                let request = Request::from_parts(parts, body);
                match extra {
                    Some(extra) => (request, Some(extra)),
                    None => {
                        shared.engine.counters().bypasses.inc();
                        return ResponseFuture::bypass(
                            self.inner.clone().oneshot(request),
                            config.headers.value(Member::Bypass),
                            config.headers.x_cache,
                        );
                    }
                }
            }
        };
        let has_auth =
            !config.policy.store_private && request.headers().contains_key(header::AUTHORIZATION);
        let head = request.method() == Method::HEAD;
        let now = Instant::now();
        let key = KeyRef::new(&request, extra.as_deref());
        let mut vary_miss = false;
        let expired = match shared.engine.entry(&key, now) {
            Some(entry) if entry.value().serves(request.headers(), has_auth) => {
                match entry.phase(now) {
                    Phase::Fresh => {
                        shared.engine.counters().fresh_hits.inc();
                        let ttl = entry.ttl_secs(now);
                        return ResponseFuture::ready(shared.respond(
                            &entry,
                            CacheStatus::Fresh,
                            Member::Hit { ttl },
                            head,
                            false,
                            now,
                        ));
                    }
                    Phase::Stale => {
                        shared.engine.counters().stale_hits.inc();
                        let refreshing = refresh::<S, ReqB, ResB>(shared, &self.inner, &entry, now);
                        let ttl = entry.ttl_secs(now);
                        return ResponseFuture::ready(shared.respond(
                            &entry,
                            CacheStatus::Stale,
                            Member::Hit { ttl },
                            head,
                            refreshing,
                            now,
                        ));
                    }
                    Phase::Expired | Phase::Dead => Some(entry),
                }
            }
            Some(_) => {
                vary_miss = true;
                None
            }
            None => None,
        };
        let key = key.to_owned();
        let shared = Arc::clone(shared);
        let inner = self.inner.clone();
        ResponseFuture::origin(Box::pin(async move {
            miss(shared, inner, key, request, expired, has_auth, vary_miss).await
        }))
    }
}

/// Starts the one background refresh of a stale entry, unless one runs or the key backs off.
/// Returns whether a refresh of the key is running.
fn refresh<S, ReqB, ResB>(
    shared: &Arc<Shared>,
    inner: &S,
    entry: &Arc<Entry<CachedResponse>>,
    now: Instant,
) -> bool
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Default + Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Send + 'static,
{
    let cached = entry.value();
    let Some(guard) = shared.engine.claim_refresh(&cached.key, now) else {
        return shared.engine.is_refreshing(&cached.key);
    };
    let request = cached.request.rebuild::<ReqB>();
    let template = Arc::clone(&cached.request);
    let key = cached.key.clone();
    let has_auth =
        !shared.config.policy.store_private && template.headers.contains_key(header::AUTHORIZATION);
    let inner = inner.clone();
    let task_shared = Arc::clone(shared);
    shared.engine.spawn_refresh(&cached.key, guard, async move {
        let shared = task_shared;
        let response = inner
            .oneshot(request)
            .await
            .map_err(|_| "the inner service returned an error".to_string())?;
        let status = response.status();
        if status.is_server_error() {
            return Err(format!("the origin answered {status}"));
        }
        match shared
            .admit(key.clone(), template, has_auth, response)
            .await
        {
            Admission::Stored(_) => Ok(()),
            // Keep the stale copy rather than lose it to a body we cannot hold.
            Admission::Unstorable(_, reason) => Err(format!("not stored: {reason}")),
            Admission::Uncacheable(_, reason) => {
                // The origin no longer lets this be cached: drop the old copy.
                shared.engine.remove(&key);
                tracing::debug!(%key, reason, "refreshed response is not cacheable; entry removed");
                Ok(())
            }
        }
    });
    true
}

/// The origin path: coalesced with other misses of the key, stale-if-error on failure.
async fn miss<S, ReqB, ResB>(
    shared: Arc<Shared>,
    inner: S,
    key: CacheKey,
    request: Request<ReqB>,
    expired: Option<Arc<Entry<CachedResponse>>>,
    has_auth: bool,
    vary_miss: bool,
) -> Result<Response<SwrBody<ResB>>, S::Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Default + Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Send + 'static,
{
    let head = request.method() == Method::HEAD;
    let usable_on_error = |entry: &Option<Arc<Entry<CachedResponse>>>| {
        entry
            .as_ref()
            .filter(|e| e.usable_on_error(Instant::now()))
            .cloned()
    };

    // A HEAD response has no body to store: ask the origin, store nothing.
    let mut leader = None;
    if !head {
        loop {
            match shared.engine.join(&key) {
                Join::Leader(guard) => {
                    leader = Some(guard);
                    break;
                }
                Join::Waiter(rx) => match wait(rx, shared.engine.lock_timeout()).await {
                    Waited::Stored(entry) if entry.value().serves(request.headers(), has_auth) => {
                        shared.engine.counters().coalesced_waits.inc();
                        return Ok(shared.respond(
                            &entry,
                            CacheStatus::Collapsed,
                            Member::Collapsed,
                            head,
                            false,
                            Instant::now(),
                        ));
                    }
                    Waited::Failed => {
                        if let Some(entry) = usable_on_error(&expired) {
                            return Ok(shared.respond_stale_if_error(&entry, None, head));
                        }
                    }
                    Waited::Abandoned => {}
                    // Another variant, not stored, or waited too long: ask the origin alone.
                    Waited::Stored(_) | Waited::NotStored | Waited::TimedOut => break,
                },
            }
        }
    }

    shared.engine.counters().misses.inc();
    let template = (!head).then(|| Arc::new(RequestTemplate::capture(&request)));
    let response = match inner.oneshot(request).await {
        Ok(response) => response,
        Err(error) => {
            if let Some(leader) = leader {
                leader.land(Landing::Failed);
            }
            if let Some(entry) = usable_on_error(&expired) {
                return Ok(shared.respond_stale_if_error(&entry, None, head));
            }
            return Err(error);
        }
    };
    let status = response.status();
    if status.is_server_error() {
        if let Some(leader) = leader {
            leader.land(Landing::Failed);
        }
        if let Some(entry) = usable_on_error(&expired) {
            return Ok(shared.respond_stale_if_error(&entry, Some(status.as_u16()), head));
        }
        return Ok(shared.pass(response.map(SwrBody::inner), vary_miss));
    }
    let Some(template) = template else {
        return Ok(shared.pass(response.map(SwrBody::inner), vary_miss));
    };
    match shared.admit(key, template, has_auth, response).await {
        Admission::Stored(entry) => {
            if let Some(leader) = leader {
                leader.land(Landing::Stored(Arc::clone(&entry)));
            }
            let member = if vary_miss {
                Member::VaryMiss { stored: true }
            } else {
                Member::UriMiss { stored: true }
            };
            Ok(shared.respond(
                &entry,
                CacheStatus::Miss,
                member,
                head,
                false,
                Instant::now(),
            ))
        }
        Admission::Uncacheable(response, reason) | Admission::Unstorable(response, reason) => {
            if let Some(leader) = leader {
                leader.land(Landing::NotStored);
            }
            tracing::debug!(reason, "response not stored");
            Ok(shared.pass(response, vary_miss))
        }
    }
}

/// Default lifetimes of the application preset (seed `stampede-prevention-strategy.md`).
pub(crate) const DEFAULT_TTL: Duration = Duration::from_secs(60);
pub(crate) const DEFAULT_STALE_WHILE_REVALIDATE: Duration = Duration::from_secs(120);
pub(crate) const DEFAULT_STALE_IF_ERROR: Duration = Duration::from_secs(300);
