//! [`SwrService`]: the tower adapter over the engine.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Extensions, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use tokio::time::Instant;
use tower::util::{Oneshot, ServiceExt};
use tower_service::Service;

use super::body::{buffer, headers_weight, Buffered, SwrBody};
use super::conditional::{self, ByteRange, CLIENT_CONDITIONALS};
use super::future::ResponseFuture;
use super::key::{
    align_host, host_correction, key_host, request_variant, CacheKey, KeyRef, Vary, VaryValues,
};
use super::policy::{
    failure_is_shareable, Decision, Policy, RequestFacts, NEVER_USABLE, SURROGATE_CONTROL,
};
use super::status::{
    reserve_slots, without_slots, CacheInfo, CacheStatus, Member, Slots, StatusHeaders,
};
use crate::engine::{
    stored_by_another, wait, CatchUnwind, Entry, Failure, FlightLeader, Freshness, Join, Landing,
    Loaded, Phase, Stamp, SwrCache, Waited,
};

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
}

impl Config {
    /// Whether an origin status is a failure (5xx or one of `failure_statuses`), not an answer
    /// to store or to drop the stored entry for.
    pub(crate) fn is_failure(&self, status: StatusCode) -> bool {
        status.is_server_error() || self.failure_statuses.contains(&status)
    }

    /// `Surrogate-Capability` for origin requests, when `Surrogate-Control` is read.
    pub(crate) fn render_surrogate_capability(&self) -> Option<http::HeaderValue> {
        let token = self.policy.surrogate_token.as_deref()?;
        http::HeaderValue::try_from(format!("{token}=\"Surrogate/1.0\"")).ok()
    }

    /// Prepares a request for the origin.
    fn prepare_origin_request<B>(&self, request: &mut Request<B>) {
        if let Some(capability) = &self.surrogate_capability {
            request.headers_mut().append(
                HeaderName::from_static("surrogate-capability"),
                capability.clone(),
            );
        }
    }

    /// What a bypassed response gets besides `Cache-Status`.
    fn bypass_marks(&self) -> BypassMarks {
        BypassMarks {
            x_cache: self.headers.x_cache,
            cache_info: self.headers.cache_info,
            strip_surrogate_control: self.policy.surrogate_token.is_some(),
        }
    }

    /// Removes what the origin meant for this cache only.
    fn strip_surrogate_control(&self, headers: &mut HeaderMap) {
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
}

/// What a layer's services share: the engine and the settings.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) engine: SwrCache<CacheKey, CachedResponse>,
    pub(crate) config: Config,
    /// This layer's part of a store shared with other layers (`share_memory_with`): its keys
    /// carry it, so layers that see the same path keep, answer and purge their own entries.
    pub(crate) namespace: u32,
    /// For keys whose responses vary: the header names, and the variants stored (bounded).
    pub(crate) vary_index: VaryIndexes,
    /// Keys whose last origin answer could not be stored, until when (Varnish's hit-for-miss):
    /// a conditional or range request for one goes to the origin as the client sent it.
    pub(crate) passes: quick_cache::sync::Cache<CacheKey, Stamp>,
}

/// Most keys remembered as not storable ([`Shared::passes`]).
pub(crate) const PASS_KEYS: usize = 4096;

/// How long a key is remembered as not storable (Varnish's built-in hit-for-miss lifetime).
const PASS_FOR: Duration = Duration::from_secs(120);

/// Most variants kept per key; storing one more drops the oldest.
pub(crate) const MAX_VARIANTS: usize = 32;

pub(crate) type VaryIndexes = quick_cache::sync::Cache<CacheKey, Arc<VaryIndex>>;

/// Which request headers a key's responses vary on, and which variants are stored.
#[derive(Debug)]
pub(crate) struct VaryIndex {
    names: Box<[HeaderName]>,
    variants: Mutex<VecDeque<Box<[u8]>>>,
}

/// The parts of a request an origin call is made from: the miss's own request, or for a
/// background refresh the request that found the entry stale (as nginx's background update
/// does) with the storing request's credentials (see [`Credentials`]). Not kept with the
/// entry: a refresh copies the request that triggers it.
#[derive(Debug)]
pub(crate) struct RequestTemplate {
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: Extensions,
}

impl RequestTemplate {
    fn capture<B>(request: &Request<B>) -> Self {
        let mut headers = request.headers().clone();
        if let Some(host) = host_correction(request.uri(), &headers) {
            headers.insert(header::HOST, host);
        }
        // Conditionals, ranges and the connection's own headers belong to one client's
        // exchange, not to a refresh (a refresh has no body and its own connection).
        remove_present(&mut headers, &CLIENT_CONDITIONALS);
        remove_present(&mut headers, &CONNECTION_HEADERS);
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

    fn parts(&self) -> Parts {
        self.rebuild::<()>().into_parts().0
    }
}

/// Request headers a refresh never copies from the request that triggers it.
const CONNECTION_HEADERS: [HeaderName; 6] = [
    header::CONNECTION,
    header::UPGRADE,
    header::TE,
    header::TRANSFER_ENCODING,
    header::CONTENT_LENGTH,
    header::EXPECT,
];

/// The `Authorization` and `Cookie` lines of the request a response was stored from.
///
/// A refresh replays these, not the triggering client's: a shared entry is refreshed as the
/// client it was stored for, so another client's credentials (a junk token, a session
/// cookie) can neither evict it (401, `private`, `Set-Cookie`) nor replace it with a
/// personalised page. `None` (the usual case) costs the entry one pointer.
#[derive(Clone, Debug)]
struct Credentials(Box<[(HeaderName, HeaderValue)]>);

impl Credentials {
    fn of(headers: &HeaderMap, custom: &[HeaderName]) -> Option<Box<Self>> {
        let lines: Vec<(HeaderName, HeaderValue)> = headers
            .iter()
            .filter(|(name, _)| is_credential(name, custom))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        (!lines.is_empty()).then(|| Box::new(Self(lines.into_boxed_slice())))
    }

    fn weight(&self) -> usize {
        self.0
            .iter()
            .map(|(_, value)| value.len() + 64)
            .sum::<usize>()
            + 16
    }

    /// Puts the storing request's credentials (or none) in place of the trigger's.
    fn apply(credentials: Option<&Self>, headers: &mut HeaderMap, custom: &[HeaderName]) {
        headers.remove(header::AUTHORIZATION);
        headers.remove(header::COOKIE);
        for name in custom {
            headers.remove(name);
        }
        for (name, value) in credentials.map_or(&[][..], |c| &c.0) {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// `Authorization`, `Cookie`, or a header the layer was told is a credential.
fn is_credential(name: &HeaderName, custom: &[HeaderName]) -> bool {
    name == header::AUTHORIZATION || name == header::COOKIE || custom.contains(name)
}

/// Whether a request carries `Authorization`, `Cookie` or a configured credential header.
fn has_credentials(headers: &HeaderMap, custom: &[HeaderName]) -> bool {
    headers.keys().any(|name| is_credential(name, custom))
}

/// Most bytes of an origin's failure body kept to answer the requests that waited for it.
const FAILURE_BODY_LIMIT: usize = 64 * 1024;

/// An origin failure as the requests that waited for it (and for a moment later ones) get it.
#[derive(Debug)]
pub(crate) enum OriginFailure {
    /// The origin's own failure response, whole.
    Answer {
        status: StatusCode,
        version: Version,
        headers: HeaderMap,
        body: Bytes,
    },
    /// The inner service returned an error. It cannot be cloned, so the others get the
    /// layer's `502 Bad Gateway` (marked `detail=origin-error` in `Cache-Status`).
    Error,
    /// Not for others to see (credentials, `private`, a body over the limit, a refresh):
    /// only tells a stale-if-error answer the origin's status.
    Withheld { status: Option<u16> },
}

impl OriginFailure {
    fn landing<V>(self, remember: bool) -> Landing<V> {
        Landing::Failed {
            failure: Some(Arc::new(self) as Failure),
            remember,
        }
    }

    fn fwd_status(&self) -> Option<u16> {
        match self {
            Self::Answer { status, .. } => Some(status.as_u16()),
            Self::Error => None,
            Self::Withheld { status } => *status,
        }
    }

    /// A copy of the failure for one request (`None`: it must ask the origin itself).
    fn respond<B: Body>(&self, head: bool) -> Option<Response<SwrBody<B>>> {
        let mut response = match self {
            Self::Answer {
                status,
                version,
                headers,
                body,
            } => {
                let mut response = Response::new(SwrBody::cached(body.clone()));
                *response.status_mut() = *status;
                *response.version_mut() = *version;
                *response.headers_mut() = headers.clone();
                response
            }
            Self::Error => {
                let mut response = Response::new(SwrBody::cached(Bytes::new()));
                *response.status_mut() = StatusCode::BAD_GATEWAY;
                response
                    .headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
                response
            }
            Self::Withheld { .. } => return None,
        };
        if head {
            *response.body_mut() = SwrBody::empty();
        }
        Some(response)
    }
}

/// A stored response, ready to be served without decoding anything.
#[derive(Clone, Debug)]
pub(crate) struct CachedResponse {
    key: CacheKey,
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    /// Where `headers` hold `Age` and `Cache-Status` for a hit to fill in.
    slots: Option<Slots>,
    body: Bytes,
    vary: Option<VaryValues>,
    /// May answer requests carrying `Authorization` (RFC 9111 §3.5).
    shared_with_auth: bool,
    /// May answer requests carrying `Cookie`.
    shared_with_cookie: bool,
    /// The storing request's credentials, which a refresh sends again.
    credentials: Option<Box<Credentials>>,
}

impl CachedResponse {
    pub(crate) fn weight(&self) -> u64 {
        (self.body.len()
            + headers_weight(&self.headers)
            + self.vary.as_ref().map_or(0, VaryValues::weight)
            + self.credentials.as_ref().map_or(0, |c| c.weight())
            + self.key.target().len()
            + self.key.host().len()
            + 128) as u64
    }

    /// Whether this entry may answer a request with these headers.
    fn serves(&self, headers: &HeaderMap, facts: RequestFacts) -> bool {
        self.refusal(headers, facts).is_none()
    }

    /// Why this entry may not answer a request with these headers, if it may not.
    fn refusal(&self, headers: &HeaderMap, facts: RequestFacts) -> Option<Refusal> {
        if (facts.has_auth && !self.shared_with_auth)
            || (facts.has_cookie && !self.shared_with_cookie)
        {
            Some(Refusal::Credentials)
        } else if self
            .vary
            .as_ref()
            .is_some_and(|vary| !vary.matches(headers))
        {
            Some(Refusal::Vary)
        } else {
            None
        }
    }
}

/// Why a stored entry does not answer a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The request carries `Authorization`/`Cookie` and the entry is not explicitly shareable.
    Credentials,
    /// Another variant.
    Vary,
}

/// Hop-by-hop fields (RFC 9110 §7.6.1) are never stored, nor is `Age` (we compute our own).
fn storable_headers(mut headers: HeaderMap, strip: &[String]) -> HeaderMap {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .chain(strip.iter().map(String::as_str))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    remove_present(&mut headers, &UNSTORED_HEADERS);
    headers
}

/// Response fields never stored: hop-by-hop (RFC 9110 §7.6.1) and `Age` (we compute our own).
const UNSTORED_HEADERS: [HeaderName; 11] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::AGE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("proxy-authentication-info"),
];

/// Removes `names` from `headers`. Most maps hold none of them: comparing each present name
/// costs a few instructions, where removing an absent one hashes it (~80 per name).
fn remove_present(headers: &mut HeaderMap, names: &[HeaderName]) {
    if headers.keys().any(|present| names.contains(present)) {
        for name in names {
            headers.remove(name);
        }
    }
}

/// What the client asked for beyond the resource: `HEAD`, a conditional, a range.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Ask<'a> {
    head: bool,
    /// The request's headers, when it is conditional or partial.
    conditionals: Option<&'a HeaderMap>,
}

impl RequestFacts {
    fn of(headers: &HeaderMap, policy: &Policy) -> Self {
        Self::scan(headers, policy).facts
    }

    /// The facts, whether the request is conditional or partial, and its `Host`, in one pass
    /// over the headers (a hit would otherwise make nine hashed lookups).
    fn scan<'a>(headers: &'a HeaderMap, policy: &Policy) -> Scan<'a> {
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

/// What [`Shared::judge`] said of a response.
struct Verdict {
    decision: Decision,
    vary: Vary,
    /// The request's credentials, kept with the entry for its refreshes.
    credentials: Option<Box<Credentials>>,
}

/// What [`RequestFacts::scan`] found.
struct Scan<'a> {
    facts: RequestFacts,
    conditional: bool,
    host: Option<&'a HeaderValue>,
    /// The request asks to switch protocols (a WebSocket handshake, `h2c`): never cached.
    upgrade: bool,
}

impl Shared {
    /// The policy's decision, adjusted by the layer's policy function.
    fn decide(
        &self,
        template: &RequestTemplate,
        parts: &http::response::Parts,
        response_delay: Duration,
    ) -> Decision {
        let facts = RequestFacts::of(&template.headers, &self.config.policy);
        let decision = self.config.policy.decide(
            facts,
            parts.status,
            &parts.headers,
            SystemTime::now(),
            response_delay,
        );
        let Some(policy_fn) = &self.config.policy_fn else {
            return decision;
        };
        let Some(freshness) = policy_fn(&template.parts(), parts) else {
            return decision;
        };
        match decision {
            Decision::Store {
                shared_with_auth,
                shared_with_cookie,
                retain,
                strip,
                ..
            } => Decision::Store {
                freshness,
                initial_age: Duration::ZERO,
                shared_with_auth,
                shared_with_cookie,
                retain,
                strip,
            },
            // The route says how long; the never-shared rules still stand.
            Decision::Pass("no freshness" | NEVER_USABLE) => Decision::Store {
                freshness,
                initial_age: Duration::ZERO,
                shared_with_auth: false,
                shared_with_cookie: false,
                retain: Duration::ZERO,
                strip: Vec::new(),
            },
            pass => pass,
        }
    }

    /// Builds the answer from a stored entry, honouring the client's conditionals and range.
    #[inline(always)]
    fn respond<B: Body>(
        &self,
        entry: &Entry<CachedResponse>,
        status: CacheStatus,
        member: Member,
        ask: Ask<'_>,
        refreshing: bool,
        now: Stamp,
    ) -> Response<SwrBody<B>> {
        let cached = entry.value();
        let whole = !ask.head && ask.conditionals.is_none();
        let mut response = Response::new(if whole {
            SwrBody::cached(cached.body.clone())
        } else {
            SwrBody::empty()
        });
        *response.version_mut() = cached.version;
        let shaped = match ask.conditionals {
            Some(request) if cached.status == StatusCode::OK => {
                self.shape(cached, request, ask.head, &mut response)
            }
            _ => false,
        };
        if !shaped {
            *response.status_mut() = cached.status;
            // `Response::new`'s map is empty: it holds no allocation, and forgetting it skips
            // an out-of-line drop on every hit.
            let empty = std::mem::replace(response.headers_mut(), cached.headers.clone());
            debug_assert_eq!(empty.capacity(), 0);
            std::mem::forget(empty);
            if !ask.head && !whole {
                *response.body_mut() = SwrBody::cached(cached.body.clone());
            }
            if ask.head && !response.headers().contains_key(header::CONTENT_LENGTH) {
                // A HEAD gets the length a GET would (RFC 9110 §9.3.2), not that of its own
                // empty body, which a server would otherwise write.
                response
                    .headers_mut()
                    .insert(header::CONTENT_LENGTH, cached.body.len().into());
            }
        }
        let age = entry.age_at(now);
        let headers = response.headers_mut();
        match cached.slots.filter(|_| !shaped) {
            Some(slots) => {
                (self.config.headers).fill(headers, slots, member, status, age, &cached.key);
            }
            None => {
                (self.config.headers).write(headers, member, status, Some(age), Some(&cached.key));
            }
        }
        (self.config.headers).attach(response.extensions_mut(), || CacheInfo {
            status,
            age: Some(age),
            stored_at: Some(entry.stored_at()),
            refreshing,
            stored: true,
        });
        response
    }

    /// Answers a conditional or range request from a stored 200; `false` when it is to be
    /// answered with the whole response.
    fn shape<B: Body>(
        &self,
        cached: &CachedResponse,
        request: &HeaderMap,
        head: bool,
        response: &mut Response<SwrBody<B>>,
    ) -> bool {
        if conditional::not_modified(request, &cached.headers) {
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            *response.headers_mut() = conditional::headers_for_304(&cached.headers);
            return true;
        }
        let len = cached.body.len();
        match conditional::byte_range(request, &cached.headers, len) {
            ByteRange::Whole => false,
            ByteRange::Slice(start, end) => {
                *response.status_mut() = StatusCode::PARTIAL_CONTENT;
                let mut headers = cached.headers.clone();
                headers.insert(header::CONTENT_LENGTH, (end - start).into());
                headers.insert(
                    header::CONTENT_RANGE,
                    http::HeaderValue::try_from(format!("bytes {start}-{}/{len}", end - 1))
                        .expect("digits"),
                );
                *response.headers_mut() = headers;
                if !head {
                    *response.body_mut() = SwrBody::cached(cached.body.slice(start..end));
                }
                true
            }
            ByteRange::Unsatisfiable => {
                *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                let mut headers = HeaderMap::new();
                headers.insert(
                    header::CONTENT_RANGE,
                    http::HeaderValue::try_from(format!("bytes */{len}")).expect("digits"),
                );
                headers.insert(header::CONTENT_LENGTH, 0.into());
                *response.headers_mut() = headers;
                true
            }
        }
    }

    fn respond_stale_if_error<B: Body>(
        &self,
        entry: &Entry<CachedResponse>,
        fwd_status: Option<u16>,
        ask: Ask<'_>,
    ) -> Response<SwrBody<B>> {
        let now = Stamp::now();
        self.engine.counters().stale_if_error.inc();
        tracing::warn!(key = %entry.value().key, age_secs = entry.age_at(now).as_secs(), fwd_status,
            "serving stale response: the origin failed");
        self.respond(
            entry,
            CacheStatus::StaleIfError,
            Member::Stale { fwd_status },
            ask,
            false,
            now,
        )
    }

    /// The origin's own response, marked as a miss that was not stored.
    fn pass<B: Body>(
        &self,
        response: Response<SwrBody<B>>,
        key: &CacheKey,
        vary_miss: bool,
    ) -> Response<SwrBody<B>> {
        let mut response = response;
        self.config.strip_surrogate_control(response.headers_mut());
        let member = if vary_miss {
            Member::VaryMiss { stored: false }
        } else {
            Member::UriMiss { stored: false }
        };
        self.config.headers.write(
            response.headers_mut(),
            member,
            CacheStatus::Miss,
            None,
            Some(key),
        );
        (self.config.headers).attach(response.extensions_mut(), || {
            CacheInfo::uncached(CacheStatus::Miss)
        });
        response
    }

    /// Another request's origin failure (or one remembered a moment), as this request's answer;
    /// `None` when it is not for others to see.
    fn respond_failure<B: Body>(
        &self,
        failure: &OriginFailure,
        remembered: bool,
        key: &CacheKey,
        head: bool,
    ) -> Option<Response<SwrBody<B>>> {
        let mut response = failure.respond(head)?;
        let error = matches!(failure, OriginFailure::Error);
        let (member, status) = if remembered {
            self.engine.counters().failure_hits.inc();
            (Member::FailureHit { error }, CacheStatus::FailureHit)
        } else {
            self.engine.counters().coalesced_waits.inc();
            (Member::FailureCollapsed { error }, CacheStatus::Collapsed)
        };
        tracing::debug!(key = %key, remembered, "answered with another origin call's failure");
        (self.config.headers).write(response.headers_mut(), member, status, None, Some(key));
        (self.config.headers).attach(response.extensions_mut(), || CacheInfo::uncached(status));
        Some(response)
    }

    /// What the policy says of a response to a request: made once per response.
    fn judge(
        &self,
        template: &RequestTemplate,
        parts: &http::response::Parts,
        response_delay: Duration,
    ) -> Verdict {
        Verdict {
            decision: self.decide(template, parts, response_delay),
            vary: Vary::of(&parts.headers, &template.headers),
            credentials: Credentials::of(&template.headers, &self.config.policy.credential_headers),
        }
    }

    /// Stores a response whose body is already in memory, given what [`judge`](Self::judge)
    /// said of it.
    fn admit_buffered(
        &self,
        key: CacheKey,
        Verdict {
            decision,
            vary,
            credentials,
        }: Verdict,
        (parts, body): (http::response::Parts, Bytes),
        declared_len: Option<u64>,
        load_time: Duration,
        fence: Fence<'_>,
    ) -> Result<Arc<Entry<CachedResponse>>, NotStored> {
        let (mut headers, stored) = match (&decision, &vary) {
            (Decision::Store { strip, .. }, Vary::None | Vary::On(_)) => {
                let mut headers = storable_headers(parts.headers, strip);
                self.config.strip_surrogate_control(&mut headers);
                (headers, true)
            }
            _ => (parts.headers, false),
        };
        let length_wrong = headers.contains_key(header::CONTENT_LENGTH)
            && declared_len.is_none_or(|len| len != body.len() as u64);
        if length_wrong {
            // The origin's Content-Length lied or was unreadable; serve what we really hold.
            headers.insert(header::CONTENT_LENGTH, body.len().into());
        }
        let (headers, slots) = if stored {
            let (headers, slots) = reserve_slots(headers);
            (headers, Some(slots))
        } else {
            (headers, None)
        };
        let (shared_with_auth, shared_with_cookie) = match &decision {
            Decision::Store {
                shared_with_auth,
                shared_with_cookie,
                ..
            } => (*shared_with_auth, *shared_with_cookie),
            Decision::Pass(_) => (false, false),
        };
        // A response with `Vary` is stored under its variant's key; one without, under the
        // plain key.
        let key = match &vary {
            Vary::On(values) => key.base().with_variant(&values.variant()).to_owned(),
            Vary::None | Vary::Never => key.base().to_owned(),
        };
        let cached = CachedResponse {
            key: key.clone(),
            status: parts.status,
            version: parts.version,
            headers,
            slots,
            body,
            vary: match vary {
                Vary::On(values) => Some(values),
                Vary::None | Vary::Never => None,
            },
            shared_with_auth,
            shared_with_cookie,
            credentials,
        };
        let Decision::Store {
            freshness,
            initial_age,
            retain,
            ..
        } = decision
        else {
            let Decision::Pass(reason) = decision else {
                unreachable!("matched above")
            };
            return Err(Box::new((cached, reason)));
        };
        if !stored {
            return Err(Box::new((cached, "vary")));
        }
        let loaded = Loaded::new(cached, freshness)
            .with_initial_age(initial_age)
            .with_retention(retain)
            .with_load_time(load_time);
        match (self.engine).store_loaded(key.clone(), loaded.clone(), fence.leader, fence.epoch) {
            Some(entry) => {
                self.index_variant(&key, entry.value().vary.as_ref());
                Ok(entry)
            }
            None => Err(Box::new((
                loaded.value,
                "entry heavier than the store allows",
            ))),
        }
    }

    /// Keeps the variant index in step with what was just stored under `key`.
    fn index_variant(&self, key: &CacheKey, vary: Option<&VaryValues>) {
        let base = key.base();
        let Some(vary) = vary else {
            // The resource no longer varies: its plain entry is found first from now on.
            self.vary_index.remove(&base);
            return;
        };
        // The plain key would shadow the variants: a resource that now varies drops it.
        self.engine.remove_equivalent(&base);
        let names: Box<[HeaderName]> = vary.names().cloned().collect();
        let index = match self.vary_index.get(&base) {
            Some(index) if index.names == names => index,
            _ => {
                let index = Arc::new(VaryIndex {
                    names,
                    variants: Mutex::new(VecDeque::new()),
                });
                self.vary_index.insert(base.to_owned(), Arc::clone(&index));
                index
            }
        };
        let variant = vary.variant();
        let evicted = {
            let mut variants = index.variants.lock().unwrap_or_else(|e| e.into_inner());
            if variants.contains(&variant) {
                None
            } else {
                variants.push_back(variant);
                (variants.len() > MAX_VARIANTS)
                    .then(|| variants.pop_front())
                    .flatten()
            }
        };
        if let Some(oldest) = evicted {
            self.engine.remove_equivalent(&base.with_variant(&oldest));
        }
    }

    /// Removes a key's plain entry and every indexed variant.
    fn remove_all_variants(&self, base: KeyRef<'_>) -> bool {
        let mut removed = self.engine.purge_equivalent(&base);
        if let Some((_, index)) = self.vary_index.remove(&base) {
            let variants = index.variants.lock().unwrap_or_else(|e| e.into_inner());
            for variant in variants.iter() {
                removed |= self.engine.purge_equivalent(&base.with_variant(variant));
            }
        }
        removed
    }

    /// Turns an origin response into an entry, if policy and size allow. Otherwise the response
    /// goes to the client as it is (with a body that is the buffered prefix plus the rest).
    /// A failure that is not stored is kept whole for the requests that waited, if `share`.
    async fn admit<B>(
        &self,
        key: CacheKey,
        template: Arc<RequestTemplate>,
        response: Response<B>,
        load_time: Duration,
        fence: Fence<'_>,
        share: bool,
    ) -> Admission<B>
    where
        B: Body<Data = Bytes>,
    {
        let (parts, body) = response.into_parts();
        // Decide before buffering, so an uncacheable body streams straight through.
        // `load_time` runs until the response's head arrived: the response delay.
        let verdict = self.judge(&template, &parts, load_time);
        let limit = self.config.max_body_bytes;
        let pass = match (&verdict.decision, &verdict.vary) {
            (Decision::Pass(reason), _) => Some(*reason),
            (_, Vary::Never) => Some("vary"),
            _ => None,
        };
        if let Some(reason) = pass {
            let shareable = share
                && self.config.is_failure(parts.status)
                && failure_is_shareable(false, &parts.headers);
            if !shareable {
                return Admission::Uncacheable(
                    Response::from_parts(parts, SwrBody::inner(body)),
                    reason,
                );
            }
            return match buffer(body, FAILURE_BODY_LIMIT.min(limit)).await {
                Buffered::Complete(body) => Admission::Failure {
                    failure: Arc::new(OriginFailure::Answer {
                        status: parts.status,
                        version: parts.version,
                        headers: storable_headers(parts.headers, &[]),
                        body,
                    }),
                    reason,
                },
                Buffered::Partial(body) => {
                    Admission::Uncacheable(Response::from_parts(parts, body), reason)
                }
            };
        }
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
        match self.admit_buffered(key, verdict, (parts, body), declared, load_time, fence) {
            Ok(entry) => Admission::Stored(entry),
            Err(not_stored) => {
                let (cached, reason) = *not_stored;
                Admission::Unstorable(cached.into_response(), reason)
            }
        }
    }

    /// Applies a 304 from the origin to a stored entry (RFC 9111 §3.2, §4.3.4).
    fn freshen(
        &self,
        entry: &Entry<CachedResponse>,
        template: Arc<RequestTemplate>,
        not_modified: http::response::Parts,
        fence: Fence<'_>,
    ) -> Result<Arc<Entry<CachedResponse>>, NotStored> {
        let cached = entry.value();
        let mut parts = not_modified;
        if !parts.headers.contains_key(header::DATE) {
            // RFC 9110 §6.6.1: a response without `Date` is dated when it is received, so the
            // stored `Date` does not age the freshened entry from the original response.
            parts.headers.insert(header::DATE, http_date_now());
        }
        parts.headers =
            conditional::merge_304(&without_slots(cached.headers.clone()), &parts.headers);
        parts.status = cached.status;
        parts.version = cached.version;
        let verdict = self.judge(&template, &parts, Duration::ZERO);
        self.admit_buffered(
            cached.key.clone(),
            verdict,
            (parts, cached.body.clone()),
            None,
            entry.load_time(),
            fence,
        )
    }

    /// After a successful unsafe request: drop what is stored for its URI and for the
    /// same-origin `Location` / `Content-Location` (RFC 9111 §4.4).
    pub(crate) fn invalidate(&self, target: &Invalidation, response: &HeaderMap) {
        let mut targets = vec![target.target.to_string()];
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            for value in response.get_all(name) {
                if let Some(t) = value
                    .to_str()
                    .ok()
                    .and_then(|v| same_origin_target(v, &target.host, &target.target))
                {
                    targets.push(t);
                }
            }
        }
        if self.config.key_fn.is_none() {
            // Every key of a URI is its plain key plus indexed variants: remove exactly those.
            for t in targets {
                let key = KeyRef::from_parts(&Method::GET, &target.host, &t, None)
                    .in_namespace(self.namespace);
                if self.remove_all_variants(key) {
                    tracing::debug!(target = %t, "invalidated by an unsafe request");
                }
            }
            return;
        }
        // A key function splits a URI into keys we cannot list (one per user, device, ...):
        // RFC 9111 §4.4 invalidates the URI, so every one of them goes.
        let matches = |key: &CacheKey| {
            key.namespace() == self.namespace
                && key.host() == &*target.host
                && targets.iter().any(|t| t == key.target())
        };
        self.engine.remove_if(matches);
        self.vary_index.retain(|key, _| !matches(key));
        tracing::debug!(target = %target.target, "invalidated by an unsafe request");
    }
}

/// Where an unsafe request was sent, to invalidate it once it succeeds.
#[derive(Debug)]
pub(crate) struct Invalidation {
    host: Box<str>,
    target: Box<str>,
}

/// The path and query of `location` if it names the same origin as `host`.
fn same_origin_target(location: &str, host: &str, base: &str) -> Option<String> {
    let location = location.trim();
    if location.starts_with('/') && !location.starts_with("//") {
        return Some(location.to_owned());
    }
    if let Some(rest) = location.strip_prefix("//") {
        // A network-path reference: `//host/path`.
        let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        return authority.eq_ignore_ascii_case(host).then(|| match path {
            "" => "/".to_owned(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_owned(),
        });
    }
    // Only a reference with a scheme is absolute: `sibling` or `a.html` parse as a URI
    // authority too, but are relative paths (RFC 3986 §4.2).
    let scheme_end = location.find(':');
    if scheme_end.is_some_and(|end| !location[..end].contains(['/', '?', '#'])) {
        let uri = location.parse::<Uri>().ok()?;
        let authority = uri.authority()?;
        return (authority.as_str().eq_ignore_ascii_case(host)).then(|| {
            match uri.path_and_query().map_or("", |pq| pq.as_str()) {
                "" => "/".to_owned(),
                // `http://host?q` has an empty path: the target is `/?q`.
                query if query.starts_with('?') => format!("/{query}"),
                target => target.to_owned(),
            }
        });
    }
    if location.is_empty() {
        return None;
    }
    // A relative reference: resolve against the request's path (RFC 3986 §5.2, simply).
    let path = base.split('?').next().unwrap_or("/");
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    Some(format!("{dir}{location}"))
}

impl CachedResponse {
    fn into_response<B: Body>(self) -> Response<SwrBody<B>> {
        let mut response = Response::new(SwrBody::cached(self.body));
        *response.status_mut() = self.status;
        *response.version_mut() = self.version;
        *response.headers_mut() = without_slots(self.headers);
        response
    }
}

/// What a store must pass to be kept: the flight it leads, else the fence epoch it began in
/// (see [`SwrCache::store_loaded`]).
#[derive(Clone, Copy)]
pub(crate) struct Fence<'a> {
    leader: Option<&'a FlightLeader<CacheKey, CachedResponse>>,
    epoch: u64,
}

/// A response that was not stored, and why.
type NotStored = Box<(CachedResponse, &'static str)>;

/// What became of an origin response.
enum Admission<B: Body> {
    Stored(Arc<Entry<CachedResponse>>),
    /// A failure the policy forbids storing, kept whole for the requests that waited and
    /// for a moment for later ones.
    Failure {
        failure: Arc<OriginFailure>,
        reason: &'static str,
    },
    /// The policy forbids storing it (reason given).
    Uncacheable(Response<SwrBody<B>>, &'static str),
    /// Cacheable, but too large to hold (reason given).
    Unstorable(Response<SwrBody<B>>, &'static str),
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

    fn call(&mut self, mut request: Request<ReqB>) -> Self::Future {
        let shared = &self.shared;
        let config = &shared.config;
        // `skip`: the key function said "not this request". The request moves (a copy of
        // ~200 bytes, twice) only when there is a key function to show its parts to.
        let (extra, skip) = match &config.key_fn {
            None => (None, false),
            Some(key_fn) => {
                let (parts, body) = request.into_parts();
                let extra = key_fn(&parts);
                let skip = extra.is_none();
                request = Request::from_parts(parts, body);
                (extra, skip)
            }
        };
        let method = request.method();
        if method != Method::GET && method != Method::HEAD {
            shared.engine.counters().bypasses.inc();
            // CONNECT (and HTTP/2's extended CONNECT for WebSockets) opens a tunnel; it
            // changes no resource, so it invalidates nothing.
            let safe =
                method == Method::OPTIONS || method == Method::TRACE || method == Method::CONNECT;
            // A `Host` that is not text names no key (such requests bypass the cache).
            let invalidation = key_host(&request, request.headers().get(header::HOST))
                .filter(|_| config.invalidate_on_unsafe && !safe)
                .map(|host| {
                    let key = KeyRef::with_host(&request, host, extra.as_deref(), 0);
                    (
                        Arc::clone(shared),
                        Invalidation {
                            host: key.host().into(),
                            target: key.target().into(),
                        },
                    )
                });
            if invalidation.is_some() {
                // The handler must act on the host whose entries the request invalidates.
                align_host(&mut request);
            }
            return ResponseFuture::bypass(
                self.inner.clone().oneshot(request),
                config.headers.value(Member::Method),
                config.bypass_marks(),
                invalidation,
            );
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
            shared.engine.counters().bypasses.inc();
            return ResponseFuture::bypass(
                self.inner.clone().oneshot(request),
                config.headers.value(Member::Bypass),
                config.bypass_marks(),
                None,
            );
        };
        let ask = Ask {
            head: request.method() == Method::HEAD,
            conditionals: conditional.then(|| request.headers()),
        };
        let now = Stamp::now();
        let mut key = KeyRef::with_host(&request, host, extra.as_deref(), shared.namespace);
        let mut found = shared.engine.entry(&key, now);
        let variant;
        let mut vary_miss = false;
        if found.is_none() {
            if let Some(index) = shared.vary_index.get(&key) {
                variant = request_variant(&index.names, request.headers());
                key = key.with_variant(&variant);
                found = shared.engine.entry(&key, now);
                vary_miss = found.is_none();
            }
        }
        let expired = match found {
            Some(entry) if entry.value().serves(request.headers(), facts) => {
                match entry.phase(now) {
                    Phase::Fresh => {
                        shared.engine.counters().fresh_hits.inc();
                        tracing::debug!(key = %key, status = "hit", "answered from cache");
                        let refreshing = shared.engine.wants_early_refresh(&entry, now)
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
                    Phase::Stale => {
                        shared.engine.counters().stale_hits.inc();
                        shared.engine.alert_if_old(&key, &entry, now);
                        tracing::debug!(key = %key, status = "stale", "answered from cache, refreshing");
                        let refreshing =
                            refresh::<S, ReqB, ResB>(shared, &self.inner, &entry, &request, now);
                        let ttl = entry.ttl_secs_at(now);
                        return ResponseFuture::ready(shared.respond(
                            &entry,
                            CacheStatus::Stale,
                            Member::Hit { ttl },
                            ask,
                            refreshing,
                            now,
                        ));
                    }
                    Phase::Expired | Phase::Dead => Some(entry),
                }
            }
            Some(entry) => {
                vary_miss = entry.value().refusal(request.headers(), facts) == Some(Refusal::Vary);
                None
            }
            None => None,
        };
        let key = key.to_owned();
        let shared = Arc::clone(shared);
        let inner = self.inner.clone();
        ResponseFuture::origin(Box::pin(async move {
            miss(shared, inner, key, request, expired, facts, vary_miss).await
        }))
    }
}

/// Clears an entry's "refreshing" mark however its refresh task ends (success, error,
/// timeout, panic).
struct RefreshingFlag(Arc<Entry<CachedResponse>>);

impl Drop for RefreshingFlag {
    fn drop(&mut self) {
        self.0.refreshing.store(false, Ordering::Release);
    }
}

/// Starts the one background refresh of a stale entry, unless one runs or the key backs off.
/// Returns whether a refresh of the key is running.
fn refresh<S, ReqB, ResB>(
    shared: &Arc<Shared>,
    inner: &S,
    entry: &Arc<Entry<CachedResponse>>,
    trigger: &Request<ReqB>,
    now: Stamp,
) -> bool
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Default + Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Send + 'static,
{
    if entry.refreshing.load(Ordering::Acquire) {
        // The common stale hit while the refresh runs: no lock, no hashing.
        return true;
    }
    let cached = entry.value();
    let guard = match shared.engine.try_claim_refresh(&cached.key, now) {
        Ok(guard) => guard,
        Err(running) => return running,
    };
    // The refresh leads the key's flight, so a miss arriving meanwhile (the entry went past its
    // window) waits for it instead of making a second origin call.
    let flight = match shared.engine.join(&cached.key) {
        Join::Leader(flight) => flight,
        // A foreground load of the key is under way (it will store the new response), or one
        // failed a moment ago (the origin is not asked again so soon).
        Join::Waiter(_) | Join::Backup(..) | Join::Failed(_) => {
            guard.cancel();
            return false;
        }
    };
    let mut template = RequestTemplate::capture(trigger);
    Credentials::apply(
        cached.credentials.as_deref(),
        &mut template.headers,
        &shared.config.policy.credential_headers,
    );
    let template = Arc::new(template);
    let mut request = template.rebuild::<ReqB>();
    shared.config.prepare_origin_request(&mut request);
    // Ask for a 304 where the origin can give one: a refresh then costs no body.
    conditional::add_validators(request.headers_mut(), &cached.headers);
    let entry = Arc::clone(entry);
    let inner = inner.clone();
    let task_shared = Arc::clone(shared);
    entry.refreshing.store(true, Ordering::Release);
    let flag = RefreshingFlag(Arc::clone(&entry));
    shared.engine.spawn_refresh(&cached.key, guard, async move {
        let _flag = flag;
        let shared = task_shared;
        let key = entry.value().key.clone();
        let mut flight = Some(flight);
        let land = |flight: &mut Option<_>, landing| {
            if let Some(flight) = Option::<crate::engine::FlightLeader<_, _>>::take(flight) {
                flight.land(landing);
            }
        };
        let started = Instant::now();
        let response = match inner.oneshot(request).await {
            Ok(response) => response,
            Err(_) => {
                land(&mut flight, Landing::FAILED);
                return Err("the inner service returned an error".to_string());
            }
        };
        let status = response.status();
        if shared.config.is_failure(status) {
            let failure = OriginFailure::Withheld {
                status: Some(status.as_u16()),
            };
            land(&mut flight, failure.landing(true));
            return Err(format!("the origin answered {status}"));
        }
        let fence = Fence {
            leader: flight.as_ref(),
            epoch: 0,
        };
        if status == StatusCode::NOT_MODIFIED {
            let (parts, _) = response.into_parts();
            return match shared.freshen(&entry, template, parts, fence) {
                Ok(stored) => {
                    land(&mut flight, Landing::Stored(stored));
                    Ok(())
                }
                Err(not_stored) => {
                    land(&mut flight, Landing::NotStored);
                    let (_, reason) = *not_stored;
                    shared.engine.remove(&key);
                    tracing::debug!(%key, reason, "revalidated response is not cacheable; entry removed");
                    Ok(())
                }
            };
        }
        let admission = shared
            .admit(key.clone(), template, response, started.elapsed(), fence, false)
            .await;
        match admission {
            Admission::Stored(stored) => {
                land(&mut flight, Landing::Stored(stored));
                Ok(())
            }
            Admission::Failure { .. } => unreachable!("a refresh shares no failure"),
            // Keep the stale copy rather than lose it to a body we cannot hold.
            Admission::Unstorable(_, reason) => {
                land(&mut flight, Landing::NotStored);
                Err(format!("not stored: {reason}"))
            }
            Admission::Uncacheable(_, reason) => {
                land(&mut flight, Landing::NotStored);
                // The origin no longer lets this be cached: drop the old copy.
                shared.engine.remove(&key);
                tracing::debug!(%key, reason, "refreshed response is not cacheable; entry removed");
                Ok(())
            }
        }
    });
    true
}

/// The origin path: coalesced with other misses of the key, revalidating what is stored,
/// stale-if-error on failure.
async fn miss<S, ReqB, ResB>(
    shared: Arc<Shared>,
    inner: S,
    mut key: CacheKey,
    mut request: Request<ReqB>,
    expired: Option<Arc<Entry<CachedResponse>>>,
    facts: RequestFacts,
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
    align_host(&mut request);
    let head = request.method() == Method::HEAD;
    // A HEAD miss fetches the whole resource (stored like a GET's, answered without the body),
    // unless the layer passes HEAD misses through unstored.
    let pass_head = head && !shared.config.convert_head;
    if head && !pass_head {
        *request.method_mut() = Method::GET;
    }
    // The client's conditionals and range, applied to the stored answer afterwards.
    let client_headers =
        conditional::is_conditional_or_range(request.headers()).then(|| request.headers().clone());
    let ask = Ask {
        head,
        conditionals: client_headers.as_ref(),
    };
    let usable_on_error = |entry: &Option<Arc<Entry<CachedResponse>>>| {
        entry
            .as_ref()
            .filter(|e| e.usable_on_error_at(Stamp::now()))
            .cloned()
    };

    // A conditional or range request for a key whose last answer could not be stored goes to
    // the origin as the client sent it: the origin's 304 or 206 is what the client asked for,
    // and asking without them would fetch a whole body only to drop it.
    let known_pass = client_headers.is_some()
        && shared
            .passes
            .get(&key)
            .is_some_and(|until| Stamp::now() < until);
    let pass_as_sent = pass_head || known_pass;
    // A failure is shared only among requests without credentials.
    let credentialed = has_credentials(request.headers(), &shared.config.policy.credential_headers);
    let failure_of = |failure: Option<Failure>| {
        failure.and_then(|failure| failure.downcast::<OriginFailure>().ok())
    };

    // A HEAD passed through (`convert_head(false)`) has no body to store: it asks the origin
    // alone and stores nothing.
    let mut leader = None;
    // Leading one more attempt after the lock timeout: the flight's earlier attempts.
    let mut earlier_attempts = None;
    if !pass_as_sent {
        let mut rekeyed = false;
        let mut timed_out = false;
        // Origin calls that keep failing hand nothing to their waiters: past this, a waiter
        // told so asks the origin alone rather than queue for the next leader.
        let give_up_at = Instant::now() + shared.engine.lock_timeout();
        loop {
            let join = if timed_out {
                shared.engine.rejoin(&key)
            } else {
                shared.engine.join(&key)
            };
            timed_out = false;
            match join {
                Join::Leader(guard) => {
                    leader = Some(guard);
                    break;
                }
                Join::Backup(guard, earlier) => {
                    leader = Some(guard);
                    earlier_attempts = Some(earlier);
                    break;
                }
                // The key's last origin call failed a moment ago: its failure is the answer,
                // unless a stale entry may stand in.
                Join::Failed(failure) => {
                    let failure = failure_of(Some(failure));
                    if let Some(entry) = usable_on_error(&expired) {
                        let fwd_status = failure.as_ref().and_then(|f| f.fwd_status());
                        return Ok(shared.respond_stale_if_error(&entry, fwd_status, ask));
                    }
                    let remembered = failure
                        .filter(|_| !credentialed)
                        .and_then(|f| shared.respond_failure(&f, true, &key, head));
                    if let Some(response) = remembered {
                        return Ok(response);
                    }
                    break;
                }
                Join::Waiter(waiting) => match wait(waiting).await {
                    Waited::Stored(entry) if entry.value().serves(request.headers(), facts) => {
                        shared.engine.counters().coalesced_waits.inc();
                        tracing::debug!(key = %key, status = "collapsed", "answered by another request's origin call");
                        return Ok(shared.respond(
                            &entry,
                            CacheStatus::Collapsed,
                            Member::Collapsed,
                            ask,
                            false,
                            Stamp::now(),
                        ));
                    }
                    Waited::Failed(failure) => {
                        let failure = failure_of(failure);
                        if let Some(entry) = usable_on_error(&expired) {
                            let fwd_status = failure.as_ref().and_then(|f| f.fwd_status());
                            return Ok(shared.respond_stale_if_error(&entry, fwd_status, ask));
                        }
                        // One origin call failed for every request that waited for it.
                        let shared_failure = failure
                            .filter(|_| !credentialed)
                            .and_then(|f| shared.respond_failure(&f, false, &key, head));
                        if let Some(response) = shared_failure {
                            return Ok(response);
                        }
                        if Instant::now() >= give_up_at {
                            break;
                        }
                    }
                    Waited::Abandoned => {}
                    // Another variant: now that the resource is known to vary, wait on (or
                    // lead) this request's variant instead of asking the origin alone.
                    Waited::Stored(entry)
                        if !rekeyed
                            && entry.value().refusal(request.headers(), facts)
                                == Some(Refusal::Vary) =>
                    {
                        let names: Vec<HeaderName> = entry
                            .value()
                            .vary
                            .as_ref()
                            .map(|vary| vary.names().cloned().collect())
                            .unwrap_or_default();
                        let variant = request_variant(&names, request.headers());
                        key = key.base().with_variant(&variant).to_owned();
                        rekeyed = true;
                    }
                    // The origin is slower than the lock timeout: one waiter asks it again.
                    Waited::TimedOut => timed_out = true,
                    // Not stored: ask the origin alone.
                    Waited::Stored(_) | Waited::NotStored => break,
                },
            }
        }
    }

    // Every request lands in exactly one request counter. Without a stale entry to fall back
    // on, this is a miss whatever happens next (even if the client leaves): counted now. With
    // one, the answer may be stale-if-error instead: counted once the origin has answered.
    let miss_counted = usable_on_error(&expired).is_none();
    if miss_counted {
        shared.engine.counters().misses.inc();
    }
    let count_miss = || {
        if !miss_counted {
            shared.engine.counters().misses.inc();
        }
    };
    tracing::debug!(key = %key, status = "miss", "asking the origin");
    let template = (!pass_head).then(|| Arc::new(RequestTemplate::capture(&request)));
    let mut validating = None;
    if !pass_as_sent {
        remove_present(request.headers_mut(), &CLIENT_CONDITIONALS);
        if let Some(entry) = &expired {
            if conditional::add_validators(request.headers_mut(), &entry.value().headers) {
                validating = Some(Arc::clone(entry));
            }
        }
    }
    if !pass_head {
        shared.config.prepare_origin_request(&mut request);
    }
    // Asked without the client's conditionals or range: if the answer cannot be stored, the
    // client's own request is sent after all, on this clone.
    let ask_again = (client_headers.is_some() && !pass_as_sent).then(|| inner.clone());
    // Loads outside a flight are fenced by any invalidation from now on.
    let epoch = shared.engine.fence_epoch();
    // What the others get if this call fails: the origin's own failure, or the layer's 502.
    let error_landing = || match credentialed {
        false => OriginFailure::Error.landing(true),
        true => Landing::FAILED,
    };
    let started = Instant::now();
    let mut call = std::pin::pin!(CatchUnwind::new(inner.oneshot(request)));
    // A backup attempt still takes an earlier attempt's answer when that comes first.
    let mut early = None;
    if let (Some(earlier), Some(template)) = (earlier_attempts, &template) {
        tokio::select! {
            biased;
            outcome = call.as_mut() => early = Some(outcome),
            entry = stored_by_another(earlier) => {
                if entry.value().serves(&template.headers, facts) {
                    tracing::debug!(key = %key, status = "collapsed", "answered by an earlier attempt");
                    return Ok(shared.respond(
                        &entry,
                        CacheStatus::Collapsed,
                        Member::Collapsed,
                        ask,
                        false,
                        Stamp::now(),
                    ));
                }
            }
        }
    }
    // With a stale entry to fall back on, the origin gets `origin_timeout`; without one, its
    // own answer is awaited (there is nothing else to give, and no error to invent).
    let outcome = match (
        early,
        usable_on_error(&expired),
        shared.config.origin_timeout,
    ) {
        (Some(outcome), ..) => outcome,
        (None, Some(_), Some(limit)) => match tokio::time::timeout(limit, call.as_mut()).await {
            Ok(outcome) => outcome,
            // Only while the entry may still stand in: once its window has closed, the origin's
            // own answer is awaited after all.
            Err(_) => match usable_on_error(&expired) {
                Some(fallback) => {
                    if let Some(leader) = leader {
                        leader.land(Landing::FAILED);
                    }
                    tracing::warn!(key = %key, timeout_ms = limit.as_millis() as u64,
                        "the origin did not answer in time");
                    return Ok(shared.respond_stale_if_error(&fallback, None, ask));
                }
                None => call.await,
            },
        },
        _ => call.await,
    };
    let response = match outcome {
        Ok(Ok(response)) => response,
        Err(panic) => {
            // A panicking origin with a usable stale entry is an origin failure like any other;
            // without one, the panic is the origin's own answer and goes on up.
            if let Some(leader) = leader {
                leader.land(error_landing());
            }
            match usable_on_error(&expired) {
                Some(entry) => return Ok(shared.respond_stale_if_error(&entry, None, ask)),
                None => {
                    count_miss();
                    std::panic::resume_unwind(panic)
                }
            }
        }
        Ok(Err(error)) => {
            if let Some(leader) = leader {
                leader.land(error_landing());
            }
            if let Some(entry) = usable_on_error(&expired) {
                return Ok(shared.respond_stale_if_error(&entry, None, ask));
            }
            count_miss();
            return Err(error);
        }
    };
    let status = response.status();
    if shared.config.is_failure(status) {
        if let Some(entry) = usable_on_error(&expired) {
            if let Some(leader) = leader {
                let status = Some(status.as_u16());
                leader.land(OriginFailure::Withheld { status }.landing(true));
            }
            return Ok(shared.respond_stale_if_error(&entry, Some(status.as_u16()), ask));
        }
        // A 5xx with explicit freshness may still be stored (below); otherwise it passes.
    }
    count_miss();
    if let (StatusCode::NOT_MODIFIED, Some(entry), Some(template)) =
        (status, &validating, &template)
    {
        let (parts, _) = response.into_parts();
        let fence = Fence {
            leader: leader.as_ref(),
            epoch,
        };
        return Ok(
            match shared.freshen(entry, Arc::clone(template), parts, fence) {
                Ok(entry) => {
                    if let Some(leader) = leader {
                        leader.land(Landing::Stored(Arc::clone(&entry)));
                    }
                    shared.respond(
                        &entry,
                        CacheStatus::Miss,
                        Member::Revalidated,
                        ask,
                        false,
                        Stamp::now(),
                    )
                }
                Err(not_stored) => {
                    let (cached, reason) = *not_stored;
                    if let Some(leader) = leader {
                        leader.land(Landing::NotStored);
                    }
                    tracing::debug!(reason, "revalidated response not stored");
                    without_body_if(head, shared.pass(cached.into_response(), &key, vary_miss))
                }
            },
        );
    }
    let Some(template) = template else {
        return Ok(shared.pass(response.map(SwrBody::inner), &key, vary_miss));
    };
    if known_pass && status != StatusCode::OK {
        // The origin answered the client's conditional or range itself (304, 206, 412, 416).
        return Ok(shared.pass(response.map(SwrBody::inner), &key, vary_miss));
    }
    let fence = Fence {
        leader: leader.as_ref(),
        epoch,
    };
    let share = leader.is_some() && !credentialed;
    let admission = shared
        .admit(
            key.clone(),
            Arc::clone(&template),
            response,
            started.elapsed(),
            fence,
            share,
        )
        .await;
    match admission {
        Admission::Stored(entry) => {
            if let Some(leader) = leader {
                leader.land(Landing::Stored(Arc::clone(&entry)));
            }
            if known_pass {
                shared.passes.remove(&key);
            }
            let member = if vary_miss {
                Member::VaryMiss { stored: true }
            } else {
                Member::UriMiss { stored: true }
            };
            Ok(shared.respond(&entry, CacheStatus::Miss, member, ask, false, Stamp::now()))
        }
        Admission::Failure { failure, reason } => {
            if let Some(leader) = leader {
                leader.land(Landing::Failed {
                    failure: Some(Arc::clone(&failure) as Failure),
                    remember: true,
                });
            }
            tracing::debug!(
                reason,
                "failure not stored; shared with the requests that waited"
            );
            let response = failure.respond(head).expect("an origin answer");
            Ok(shared.pass(response, &key, vary_miss))
        }
        Admission::Uncacheable(response, reason) | Admission::Unstorable(response, reason) => {
            if let Some(leader) = leader {
                leader.land(if shared.config.is_failure(status) {
                    let status = Some(status.as_u16());
                    OriginFailure::Withheld { status }.landing(true)
                } else {
                    Landing::NotStored
                });
            }
            tracing::debug!(reason, "response not stored");
            if status.is_success() {
                shared
                    .passes
                    .insert(key.clone(), Stamp::now().after(PASS_FOR));
            }
            if let (Some(inner), Some(client_headers), StatusCode::OK) =
                (ask_again, &client_headers, status)
            {
                // The whole answer cannot be kept, so the client's conditional or range is
                // not ours to apply: the origin answers the request as the client sent it.
                drop(response);
                let mut again = template.rebuild::<ReqB>();
                if head {
                    *again.method_mut() = Method::HEAD;
                }
                *again.headers_mut() = client_headers.clone();
                align_host(&mut again);
                shared.config.prepare_origin_request(&mut again);
                let response = inner.oneshot(again).await?;
                return Ok(shared.pass(response.map(SwrBody::inner), &key, vary_miss));
            }
            Ok(without_body_if(
                head,
                shared.pass(response, &key, vary_miss),
            ))
        }
    }
}

/// The current time as an HTTP date (`Date` for responses that came without one).
fn http_date_now() -> HeaderValue {
    HeaderValue::try_from(httpdate::fmt_http_date(SystemTime::now()))
        .expect("an HTTP date is a valid header value")
}

/// The answer to a `HEAD` that was sent to the origin as a `GET`: the headers (with the length
/// of the body a `GET` gets), no body.
fn without_body_if<B: Body<Data = Bytes>>(
    head: bool,
    response: Response<SwrBody<B>>,
) -> Response<SwrBody<B>> {
    if !head {
        return response;
    }
    let mut response = response;
    if response.headers().contains_key(header::CONTENT_LENGTH) {
        return response.map(|_| SwrBody::empty());
    }
    match response.body().size_hint().exact() {
        Some(len) => {
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, len.into());
            response.map(|_| SwrBody::empty())
        }
        // The GET body's length is unknown: state none (not the 0 of an empty body).
        None => response.map(|_| SwrBody::unsized_empty()),
    }
}

/// Default lifetimes of the application preset (seed `stampede-prevention-strategy.md`).
pub(crate) const DEFAULT_TTL: Duration = Duration::from_secs(60);
pub(crate) const DEFAULT_STALE_WHILE_REVALIDATE: Duration = Duration::from_secs(120);
pub(crate) const DEFAULT_STALE_IF_ERROR: Duration = Duration::from_secs(300);
