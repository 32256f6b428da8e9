//! Calls to the origin, as the engine's loads: the background refresh of a stale entry and
//! the miss. The engine runs both (one refresh per key, coalescing, stale-if-error, shared
//! failures, counting); this file says how to ask the origin and what its answer means.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower::util::ServiceExt;
use tower_service::Service;

use super::admission::{declared_length, Admission, Verdict};
use super::body::SwrBody;
use super::conditional::{self, CLIENT_CONDITIONALS};
use super::config::{Shared, PASS_FOR};
use super::failure::OriginFailure;
use super::fill::{BoxError, Fill, FillError, FillWriter, Pushed};
use super::key::{align_host, request_variant, CacheKey};
use super::policy::{Decision, Reason, RequestFacts};
use super::render::{without_body_if, Ask};
use super::status::{CacheInfo, CacheStatus, Member};
use super::stored::{
    has_credentials, remove_present, CachedResponse, Credentials, Refusal, UNSTORED_HEADERS,
};
use super::template::RequestTemplate;
use crate::engine::{
    Accept, Answered, Caller, Entry, Failure, Outcome, Partial, Publisher, Stamp, SwrCache,
};

/// A load as the engine runs it: boxed, because it is built before the engine polls it and
/// the caller is asked questions meanwhile.
type Load<A> = Pin<Box<dyn Future<Output = Outcome<CacheKey, CachedResponse, A>> + Send>>;

/// Starts the one background refresh of a stale entry, unless one runs or the key backs off.
/// Returns whether a refresh of the key is running.
pub(crate) fn refresh<S, ReqB, ResB>(
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
    ResB::Error: Into<BoxError> + Send + 'static,
{
    let cached = entry.value();
    shared.engine.refresh(&cached.key, entry, now, || {
        // The request that found the entry stale (as nginx's background update does), with
        // the storing request's credentials.
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
        let (shared, inner, entry) = (Arc::clone(shared), inner.clone(), Arc::clone(entry));
        refreshed(shared, inner, entry, template, request)
    })
}

/// A stale hit's answer: the entry at once, its one background refresh started (unless one
/// runs or the key backs off).
pub(crate) fn stale_answer<S, ReqB, ResB>(
    shared: &Arc<Shared>,
    inner: &S,
    entry: &Arc<Entry<CachedResponse>>,
    request: &Request<ReqB>,
    ask: Ask<'_>,
    now: Stamp,
) -> Response<SwrBody<ResB>>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Default + Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError> + Send + 'static,
{
    let key = &entry.value().key;
    tracing::debug!(key = %key, status = "stale", "answered from cache, refreshing");
    let refreshing = refresh::<S, ReqB, ResB>(shared, inner, entry, request, now);
    // Not positive for an entry soft-purged by tag before its fresh lifetime ended.
    let ttl = entry.ttl_secs_at(now).min(0);
    shared.respond(
        entry,
        CacheStatus::Stale,
        Member::Hit { ttl },
        ask,
        refreshing,
        now,
    )
}

/// What the origin's answer to a refresh means for the stored entry.
async fn refreshed<S, ReqB, ResB>(
    shared: Arc<Shared>,
    inner: S,
    entry: Arc<Entry<CachedResponse>>,
    template: Arc<RequestTemplate>,
    request: Request<ReqB>,
) -> Outcome<CacheKey, CachedResponse, ()>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ReqB: Default,
    ResB: Body<Data = Bytes>,
{
    let started = Instant::now();
    let mut inner = inner;
    let mut response = (&mut inner).oneshot(request).await;
    let mut validated = true;
    if (response.as_ref()).is_ok_and(|response| {
        response.status() == StatusCode::NOT_MODIFIED
            && !conditional::selects_for_update(&entry.value().headers, response.headers())
    }) {
        // RFC 9111 §4.3.4: a 304 for another representation updates nothing; the refresh
        // asks for the representation itself.
        let mut again = template.rebuild::<ReqB>();
        shared.config.prepare_origin_request(&mut again);
        response = inner.oneshot(again).await;
        validated = false;
    }
    let Ok(response) = response else {
        return Outcome::Failed {
            answer: (),
            shared: None,
            remember: false,
            reason: "the inner service returned an error".to_owned(),
            unreachable: true,
        };
    };
    let status = response.status();
    if shared.config.is_failure(status) {
        let status = Some(status.as_u16());
        return Outcome::Failed {
            answer: (),
            shared: OriginFailure::Withheld { status }.shared(),
            remember: true,
            reason: format!("the origin answered {}", response.status()),
            unreachable: false,
        };
    }
    let key = &entry.value().key;
    if status == StatusCode::NOT_MODIFIED && !validated {
        // A 304 to an unconditional request: the stored response is not the origin's.
        tracing::debug!(%key, "the origin answered 304 to an unconditional refresh");
        return Outcome::Pass {
            answer: (),
            drop_stored: true,
        };
    }
    if status == StatusCode::NOT_MODIFIED {
        let (parts, _) = response.into_parts();
        return match shared.freshen(&entry, template, parts) {
            Ok((key, loaded)) => Outcome::Store {
                key,
                loaded,
                revalidated: true,
            },
            Err(not_stored) => {
                let (_, reason) = *not_stored;
                tracing::debug!(%key, reason = %reason, "revalidated response is not cacheable");
                Outcome::Pass {
                    answer: (),
                    drop_stored: true,
                }
            }
        };
    }
    match (shared.admit(key.clone(), template, response, started.elapsed(), false)).await {
        Admission::Store { key, loaded } => Outcome::Store {
            key,
            loaded,
            revalidated: false,
        },
        Admission::Failure { .. } => unreachable!("a refresh shares no failure"),
        // Keep the stale copy rather than lose it to a body we cannot hold.
        Admission::Unstorable(_, reason) => Outcome::Unstored {
            answer: (),
            reason: reason.to_string(),
        },
        // The origin no longer lets this be cached: the old copy goes.
        Admission::Uncacheable(_, reason) => {
            tracing::debug!(%key, reason = %reason, "refreshed response is not cacheable");
            Outcome::Pass {
                answer: (),
                drop_stored: true,
            }
        }
    }
}

/// What a miss ends in.
pub(crate) enum Reply<ReqB, ResB: Body> {
    Response(Response<SwrBody<ResB>>),
    /// The origin's whole answer could not be stored, so the client's conditional or range is
    /// not ours to apply: the origin answers the request as the client sent it.
    AskAgain(Request<ReqB>, CacheKey),
}

/// What an origin answer that is not stored leaves behind: the key remembered as not
/// storable (hit-for-miss), and the client's answer.
struct NotKept {
    shared: Arc<Shared>,
    template: Arc<RequestTemplate>,
    /// The client's conditionals and range, when the origin was asked without them.
    ask_again: Option<HeaderMap>,
    head: bool,
    vary_miss: bool,
}

impl NotKept {
    fn reply<ReqB: Default, ResB>(
        &self,
        key: &CacheKey,
        status: StatusCode,
        response: Response<SwrBody<ResB>>,
    ) -> Reply<ReqB, ResB>
    where
        ResB: Body<Data = Bytes>,
        ResB::Error: Into<BoxError>,
    {
        if status.is_success() {
            let until = Stamp::now().after(PASS_FOR);
            self.shared.passes.insert(key.clone(), until);
        }
        if let (Some(client_headers), StatusCode::OK) = (&self.ask_again, status) {
            drop(response);
            let mut again = self.template.rebuild::<ReqB>();
            if self.head {
                *again.method_mut() = Method::HEAD;
            }
            *again.headers_mut() = client_headers.clone();
            align_host(&mut again);
            self.shared.config.prepare_origin_request(&mut again);
            return Reply::AskAgain(again, key.clone());
        }
        let response = self.shared.pass(response, key, self.vary_miss);
        Reply::Response(without_body_if(self.head, response))
    }
}

/// How a miss's load hands its own client the answer early: a streaming fill started.
pub(crate) enum Early<B: Body> {
    /// The fill's response, its body read as the origin sends it.
    Response(Response<SwrBody<B>>),
    /// The client's answer comes from the stored entry (its conditional or range is applied
    /// to the whole body): it waits for the load, which no longer depends on it.
    Detach,
}

/// What a streaming fill offers the other requests of its key while it runs.
struct Streaming {
    /// The response as it will be stored, without its body: what a fill's answers are
    /// rendered from.
    entry: Arc<Entry<CachedResponse>>,
    fill: Arc<Fill>,
}

impl Shared {
    /// An answer from a fill under way: the stored head, the body read from the first byte
    /// (none for a `HEAD`); `None` once the fill has dropped its start (too large to store).
    fn respond_streaming<B>(
        &self,
        streaming: &Streaming,
        (status, member): (CacheStatus, Member),
        head: bool,
    ) -> Option<Response<SwrBody<B>>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let body = if head {
            None
        } else {
            Some(SwrBody::fill(streaming.fill.reader()?))
        };
        let now = Stamp::now();
        let mut response: Response<SwrBody<B>> =
            self.respond(&streaming.entry, status, member, Ask::default(), false, now);
        if let Some(info) = response.extensions_mut().get_mut::<CacheInfo>() {
            info.stored = streaming.fill.expects_to_store();
        }
        Some(match body {
            Some(body) => response.map(|_| body),
            // The body's length is not known yet unless the origin stated it.
            None if response
                .headers()
                .contains_key(http::header::CONTENT_LENGTH) =>
            {
                response.map(|_| SwrBody::empty())
            }
            None => response.map(|_| SwrBody::unsized_empty()),
        })
    }
}

/// One request's miss, as the engine's [`Caller`].
struct OriginMiss<S, ReqB, ResB: Body> {
    shared: Arc<Shared>,
    inner: S,
    /// Until the load takes it.
    request: Option<Request<ReqB>>,
    /// Made when the load starts (none for a `HEAD` passed through).
    template: Option<Arc<RequestTemplate>>,
    facts: RequestFacts,
    head: bool,
    /// A `HEAD` passed through (`convert_head(false)`): asked alone, nothing stored.
    pass_head: bool,
    /// A conditional or range request for a key whose last answer could not be stored: sent
    /// as the client sent it, alone.
    known_pass: bool,
    client_headers: Option<HeaderMap>,
    /// A failure is shared only among requests without credentials.
    credentialed: bool,
    vary_miss: bool,
    /// Given by the engine when this miss leads its key's flight.
    publisher: Option<Publisher<CacheKey, CachedResponse>>,
    /// Where the load sends this client its answer when it starts a streaming fill.
    early: Option<tokio::sync::oneshot::Sender<Early<ResB>>>,
    /// The fields `private="..."` / `no-cache="..."` kept out of the stored copy, as the
    /// origin sent them to this client's load: its answer still carries them.
    /// Made when the load starts (an answer from the shared tier makes none).
    withheld: Option<Arc<std::sync::OnceLock<HeaderMap>>>,
}

impl<S, ReqB, ResB: Body> OriginMiss<S, ReqB, ResB> {
    fn ask(&self) -> Ask<'_> {
        Ask {
            head: self.head,
            conditionals: self.client_headers.as_ref(),
        }
    }

    fn headers(&self) -> &HeaderMap {
        match (&self.request, &self.template) {
            (Some(request), _) => request.headers(),
            (None, Some(template)) => &template.headers,
            (None, None) => self.client_headers.as_ref().expect("a request's headers"),
        }
    }
}

impl<S, ReqB, ResB> Caller<CacheKey, CachedResponse> for OriginMiss<S, ReqB, ResB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Default + Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError> + Send + 'static,
{
    type Answer = Result<Reply<ReqB, ResB>, S::Error>;
    type Load = Load<Self::Answer>;

    fn coalesces(&self) -> bool {
        !self.pass_head && !self.known_pass
    }

    fn accepts(&self, key: &CacheKey, value: &CachedResponse) -> Accept<CacheKey> {
        if !(value.tags.as_deref())
            .is_none_or(|tags| self.shared.tags_allow(tags, &Cell::new(false)))
        {
            return Accept::No; // purged by tag since its load began
        }
        let headers = self.headers();
        match value.refusal(headers, self.facts) {
            None => Accept::Yes,
            Some(Refusal::Vary) => {
                let names: Vec<HeaderName> = value
                    .vary
                    .as_ref()
                    .map(|vary| vary.names().cloned().collect())
                    .unwrap_or_default();
                let variant = request_variant(&names, headers);
                Accept::Rekey(key.base().with_variant(&variant).to_owned())
            }
            Some(Refusal::Credentials) => Accept::No,
        }
    }

    fn answer(
        &mut self,
        key: &CacheKey,
        entry: &Arc<Entry<CachedResponse>>,
        how: Answered<'_>,
    ) -> Self::Answer {
        let shared = &self.shared;
        let ask = self.ask();
        let response = match how {
            Answered::Collapsed => shared.respond_collapsed(entry, ask),
            // Another instance's response, fresh: a hit.
            Answered::SharedTier => {
                let now = Stamp::now();
                let ttl = entry.ttl_secs_at(now);
                let member = Member::SharedHit { ttl };
                shared.respond(entry, CacheStatus::SharedTier, member, ask, false, now)
            }
            Answered::StaleIfError { failure } => {
                let failure = failure.and_then(|f| f.downcast_ref::<OriginFailure>());
                let fwd_status = failure.and_then(OriginFailure::fwd_status);
                shared.respond_stale_if_error(entry, fwd_status, ask)
            }
            Answered::Loaded {
                stored: true,
                revalidated,
            } => {
                let member = match (revalidated, self.vary_miss) {
                    (true, _) => Member::Revalidated,
                    (false, true) => Member::VaryMiss { stored: true },
                    (false, false) => Member::UriMiss { stored: true },
                };
                if self.known_pass {
                    shared.passes.remove(key);
                }
                let now = Stamp::now();
                let mut response =
                    shared.respond(entry, CacheStatus::Miss, member, ask, false, now);
                if let Some(withheld) = self.withheld.as_ref().and_then(|w| w.get()) {
                    add_withheld(response.headers_mut(), withheld);
                }
                response
            }
            // Heavier than the store allows: the client gets it all the same.
            Answered::Loaded { stored: false, .. } => {
                let cached = entry.value().clone();
                let status = cached.status;
                let not_kept = NotKept {
                    shared: Arc::clone(shared),
                    template: self.template.clone().expect("loaded with a template"),
                    ask_again: self.ask_again(),
                    head: self.head,
                    vary_miss: self.vary_miss,
                };
                let mut response = cached.into_response();
                if let Some(withheld) = self.withheld.as_ref().and_then(|w| w.get()) {
                    add_withheld(response.headers_mut(), withheld);
                }
                return Ok(not_kept.reply(key, status, response));
            }
        };
        Ok(Reply::Response(response))
    }

    fn variant_of(&self, key: &CacheKey) -> Option<CacheKey> {
        let index = (!key.is_variant())
            .then(|| self.shared.vary_index.get(key))
            .flatten()?;
        let variant = request_variant(&index.names, self.headers());
        Some(key.base().with_variant(&variant).to_owned())
    }

    fn answer_stale(
        &mut self,
        _cache: &SwrCache<CacheKey, CachedResponse>,
        _key: &CacheKey,
        entry: &Arc<Entry<CachedResponse>>,
    ) -> Option<Self::Answer> {
        let request = self.request.as_ref()?;
        let response = stale_answer(
            &self.shared,
            &self.inner,
            entry,
            request,
            self.ask(),
            Stamp::now(),
        );
        Some(Ok(Reply::Response(response)))
    }

    fn lead(&mut self, publisher: Publisher<CacheKey, CachedResponse>) {
        self.publisher = Some(publisher);
    }

    fn answer_streaming(&mut self, key: &CacheKey, partial: &Partial) -> Option<Self::Answer> {
        let streaming = partial.downcast_ref::<Streaming>()?;
        // A conditional or range is answered from the whole body, once stored.
        if self.client_headers.is_some() {
            return None;
        }
        if !matches!(self.accepts(key, streaming.entry.value()), Accept::Yes) {
            return None;
        }
        // An origin that stopped sending for the lock timeout gets no new readers: they wait
        // for the fill to land and, past the lock timeout, try the origin themselves.
        if streaming.fill.idle() >= self.shared.engine.lock_timeout() {
            return None;
        }
        let answer = (CacheStatus::Collapsed, Member::Collapsed);
        let response = self
            .shared
            .respond_streaming(streaming, answer, self.head)?;
        Some(Ok(Reply::Response(response)))
    }

    fn answer_failure(
        &mut self,
        key: &CacheKey,
        failure: &Failure,
        remembered: bool,
    ) -> Option<Self::Answer> {
        if self.credentialed || (remembered && !self.shared.config.answer_remembered_failures) {
            return None;
        }
        let failure = failure.downcast_ref::<OriginFailure>()?;
        let response = self
            .shared
            .respond_failure(failure, remembered, key, self.head)?;
        Some(Ok(Reply::Response(response)))
    }

    fn fallback_timeout(&self) -> Option<Duration> {
        self.shared.config.origin_timeout
    }

    fn unreachable_until(&self, entry: &Entry<CachedResponse>) -> Option<Stamp> {
        self.shared.unreachable_until(entry)
    }

    fn unreachable(&self, failure: &Failure) -> bool {
        matches!(failure.downcast_ref(), Some(OriginFailure::Error))
    }

    fn panic_failure(&self, _panic: &(dyn std::any::Any + Send)) -> Option<Failure> {
        (!self.credentialed)
            .then(|| OriginFailure::Error.shared())
            .flatten()
    }

    fn load(
        &mut self,
        key: &CacheKey,
        existing: Option<&Arc<Entry<CachedResponse>>>,
        fallback: bool,
        leading: bool,
    ) -> Self::Load {
        // The URL's `Vary` became known after this miss was keyed (read from the shared tier
        // just now: another instance stored its variants there): this request's variant may
        // be there too, and then it answers without the origin.
        let variant = (self.shared.engine.has_shared_tier())
            .then(|| self.variant_of(key))
            .flatten();
        let from_origin = self.load_from_origin(key, existing, fallback, leading);
        let Some(variant) = variant else {
            return from_origin;
        };
        let shared = Arc::clone(&self.shared);
        let (head, client_headers, facts) = (self.head, self.client_headers.clone(), self.facts);
        let headers = self.headers().clone();
        Box::pin(async move {
            if let Some(entry) = shared.engine.copy_from_tier(&variant).await {
                let cached = entry.value();
                if cached.refusal(&headers, facts).is_none() {
                    shared.index_variant(&variant, cached.vary.as_ref());
                    let now = Stamp::now();
                    let ttl = entry.ttl_secs_at(now);
                    let ask = Ask {
                        head,
                        conditionals: client_headers.as_ref(),
                    };
                    let member = Member::SharedHit { ttl };
                    let response =
                        shared.respond(&entry, CacheStatus::SharedTier, member, ask, false, now);
                    return Outcome::Pass {
                        answer: Ok(Reply::Response(response)),
                        drop_stored: false,
                    };
                }
            }
            from_origin.await
        })
    }
}

impl<S, ReqB, ResB> OriginMiss<S, ReqB, ResB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Default + Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError> + Send + 'static,
{
    /// The load of a miss from the origin.
    fn load_from_origin(
        &mut self,
        key: &CacheKey,
        existing: Option<&Arc<Entry<CachedResponse>>>,
        fallback: bool,
        leading: bool,
    ) -> Load<Result<Reply<ReqB, ResB>, S::Error>> {
        let mut request = self.request.take().expect("a miss loads once");
        tracing::debug!(key = %key, status = "miss", "asking the origin");
        let template = (!self.pass_head).then(|| Arc::new(RequestTemplate::capture(&request)));
        self.template = template.clone();
        let mut validating = None;
        if self.coalesces() {
            remove_present(request.headers_mut(), &CLIENT_CONDITIONALS);
            if let Some(entry) = existing {
                if conditional::add_validators(request.headers_mut(), &entry.value().headers) {
                    validating = Some(Arc::clone(entry));
                }
            }
        }
        if !self.pass_head {
            self.shared.config.prepare_origin_request(&mut request);
        }
        let not_kept = template.clone().map(|template| NotKept {
            shared: Arc::clone(&self.shared),
            template,
            ask_again: self.ask_again(),
            head: self.head,
            vary_miss: self.vary_miss,
        });
        // A fill streams unless a stored entry could stand in should the origin fail: then
        // the body is buffered whole first, as the stale-if-error answer may replace it.
        let now = Stamp::now();
        let could_stand_in = existing.is_some_and(|entry| {
            entry.usable_on_error_at(now)
                || self
                    .unreachable_until(entry)
                    .is_some_and(|until| now < until)
        });
        let stream = match (self.publisher.take(), self.early.take()) {
            // The fill goes on in a task of its own once it starts: that needs a runtime.
            (Some(publisher), Some(early))
                if !fallback
                    && !could_stand_in
                    && tokio::runtime::Handle::try_current().is_ok() =>
            {
                Some(StreamTo {
                    publisher,
                    early,
                    whole: self.client_headers.is_none(),
                })
            }
            _ => None,
        };
        let shared = Arc::clone(&self.shared);
        let inner = self.inner.clone();
        let key = key.clone();
        let (head, vary_miss, known_pass) = (self.head, self.vary_miss, self.known_pass);
        let credentialed = self.credentialed;
        let withheld = Arc::clone(self.withheld.get_or_insert_with(Default::default));
        Box::pin(async move {
            let started = Instant::now();
            let mut inner = inner;
            let mut response = (&mut inner).oneshot(request).await;
            if let (Ok(answer), Some(entry), Some(template)) = (&response, &validating, &template) {
                if answer.status() == StatusCode::NOT_MODIFIED
                    && !conditional::selects_for_update(&entry.value().headers, answer.headers())
                {
                    // RFC 9111 §4.3.4: a 304 for another representation updates nothing; the
                    // origin is asked for the representation itself.
                    let mut again = template.rebuild::<ReqB>();
                    remove_present(again.headers_mut(), &CLIENT_CONDITIONALS);
                    shared.config.prepare_origin_request(&mut again);
                    response = inner.oneshot(again).await;
                    validating = None;
                }
            }
            let response = match response {
                Ok(response) => response,
                Err(error) => {
                    // The others get the layer's 502: the error itself cannot be cloned.
                    let shared = (!credentialed).then(|| OriginFailure::Error.shared());
                    return Outcome::Failed {
                        answer: Err(error),
                        shared: shared.flatten(),
                        remember: true,
                        reason: "the inner service returned an error".to_owned(),
                        // The origin was not reached: RFC 9111 §4.2.4 may let a stale
                        // response stand in (`SwrLayer::max_stale_when_disconnected`).
                        unreachable: true,
                    };
                }
            };
            let status = response.status();
            let pass = |response: Response<ResB>| {
                Ok(Reply::Response(shared.pass(
                    response.map(SwrBody::inner),
                    &key,
                    vary_miss,
                )))
            };
            if shared.config.is_failure(status) && fallback {
                let code = Some(status.as_u16());
                return Outcome::Failed {
                    answer: pass(response),
                    shared: OriginFailure::Withheld { status: code }.shared(),
                    remember: true,
                    reason: format!("the origin answered {status}"),
                    unreachable: false,
                };
            }
            // A 5xx with explicit freshness may still be stored (below); otherwise it passes.
            let (Some(not_kept), Some(template)) = (not_kept, template) else {
                return Outcome::Pass {
                    answer: pass(response),
                    drop_stored: false,
                };
            };
            if let (StatusCode::NOT_MODIFIED, Some(entry)) = (status, &validating) {
                let (parts, _) = response.into_parts();
                return match shared.freshen(entry, template, parts) {
                    Ok((key, loaded)) => Outcome::Store {
                        key,
                        loaded,
                        revalidated: true,
                    },
                    Err(not_stored) => {
                        let (cached, reason) = *not_stored;
                        let response = shared.pass(cached.into_response(), &key, vary_miss);
                        Outcome::Unstored {
                            answer: Ok(Reply::Response(without_body_if(head, response))),
                            reason: format!("revalidated response not stored: {reason}"),
                        }
                    }
                };
            }
            if known_pass && status != StatusCode::OK {
                // The origin answered the client's conditional or range itself (304, 206,
                // 412, 416).
                return Outcome::Pass {
                    answer: pass(response),
                    drop_stored: false,
                };
            }
            let share = leading && !credentialed;
            let load_time = started.elapsed();
            let (parts, body) = response.into_parts();
            let verdict = shared.judge(&template, &parts, load_time);
            if let Some(fields) = withheld_fields(&verdict, &parts.headers) {
                let _ = withheld.set(fields);
            }
            let stream = stream.filter(|_| {
                let declared = declared_length(&parts.headers);
                let stated = parts.headers.contains_key(http::header::CONTENT_LENGTH);
                // A length that is unreadable, or that the body is known to contradict, is
                // corrected before anything is sent: buffered.
                let exact = body.size_hint().exact();
                let contradicted = declared.zip(exact).is_some_and(|(d, e)| d != e);
                verdict.decision.reason().is_none()
                    && (!stated || declared.is_some())
                    && !contradicted
                    && super::policy::declared_body_refusal(declared, shared.config.max_body_bytes)
                        .is_none()
            });
            if let Some(to) = stream {
                let fill = FillFrom {
                    shared: &shared,
                    key: &key,
                    load_time,
                    head,
                    vary_miss,
                    withheld: withheld.get(),
                };
                return fill.run(to, verdict, (parts, body), not_kept).await;
            }
            match shared
                .admit_judged(key.clone(), verdict, (parts, body), load_time, share)
                .await
            {
                Admission::Store { key, loaded } => Outcome::Store {
                    key,
                    loaded,
                    revalidated: false,
                },
                Admission::Failure { failure, reason } => {
                    let response = failure.respond(head).expect("an origin answer");
                    Outcome::Failed {
                        answer: Ok(Reply::Response(shared.pass(response, &key, vary_miss))),
                        shared: Some(failure as Failure),
                        remember: true,
                        reason: format!(
                            "failure not stored ({reason}); shared with the requests that waited"
                        ),
                        unreachable: false,
                    }
                }
                Admission::Uncacheable(response, reason)
                | Admission::Unstorable(response, reason) => {
                    let body_failed = reason == Reason::BodyFailed;
                    let answer = Ok(not_kept.reply(&key, status, response));
                    let reason = format!("response not stored: {reason}");
                    if body_failed {
                        // The origin broke off mid-body: a failure to reach it, which a stored
                        // response may stand in for (stale-if-error, when disconnected).
                        Outcome::Failed {
                            answer,
                            shared: OriginFailure::Error.shared(),
                            remember: true,
                            reason,
                            unreachable: true,
                        }
                    } else if shared.config.is_failure(status) {
                        let code = Some(status.as_u16());
                        Outcome::Failed {
                            answer,
                            shared: OriginFailure::Withheld { status: code }.shared(),
                            remember: true,
                            reason,
                            unreachable: false,
                        }
                    } else {
                        Outcome::Unstored { answer, reason }
                    }
                }
            }
        })
    }
}

impl<S, ReqB, ResB: Body> OriginMiss<S, ReqB, ResB> {
    /// The client's conditionals and range, when the origin is asked without them.
    fn ask_again(&self) -> Option<HeaderMap> {
        (self.client_headers.clone()).filter(|_| !self.pass_head && !self.known_pass)
    }
}

/// The origin path: the engine coalesces it with the other misses of the key, revalidates
/// what is stored and falls back on it (stale-if-error); this request's answer comes back.
pub(crate) async fn miss<S, ReqB, ResB>(
    shared: Arc<Shared>,
    inner: S,
    key: CacheKey,
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
    ResB::Error: Into<BoxError> + Send + 'static,
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
    // A conditional or range request for a key whose last answer could not be stored goes to
    // the origin as the client sent it: the origin's 304 or 206 is what the client asked for,
    // and asking without them would fetch a whole body only to drop it.
    let known_pass = client_headers.is_some()
        && shared
            .passes
            .get(&key)
            .is_some_and(|until| Stamp::now() < until);
    let credentialed = has_credentials(request.headers(), &shared.config.policy.credential_headers);
    let (early_tx, mut early_rx) = tokio::sync::oneshot::channel();
    // In a block of its own: what moves into the boxed load must not also take room in this
    // future's state across its awaits (a moved-from local keeps its storage to the end of its
    // scope), which made it 7.7 KB.
    let mut load = {
        let caller = OriginMiss {
            shared: Arc::clone(&shared),
            inner: inner.clone(),
            request: Some(request),
            template: None,
            facts,
            head,
            pass_head,
            known_pass,
            client_headers,
            credentialed,
            vary_miss,
            publisher: None,
            early: Some(early_tx),
            withheld: None,
        };
        let engine = Arc::clone(&shared);
        let fut = async move { engine.engine.load_with(key, expired, caller).await };
        Box::pin(fut)
    };
    let reply = tokio::select! {
        biased;
        reply = &mut load => reply?,
        // A streaming fill started: the load goes on by itself, so this client going away
        // does not stop it for the others.
        Ok(early) = &mut early_rx => match (early, shared.engine.spawn_detached(load)) {
            (Early::Response(response), _) => return Ok(response),
            (Early::Detach, Ok(task)) => match task.await {
                Ok(reply) => reply?,
                Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
                // The runtime is shutting down.
                Err(_) => std::future::pending().await,
            },
            (Early::Detach, Err(load)) => load.await?,
        },
    };
    match reply {
        Reply::Response(response) => Ok(response),
        Reply::AskAgain(again, key) => {
            let response = inner.oneshot(again).await?;
            Ok(shared.pass(response.map(SwrBody::inner), &key, vary_miss))
        }
    }
}

/// Where a streaming fill's answers go: the leading client, the waiters.
struct StreamTo<B: Body> {
    publisher: Publisher<CacheKey, CachedResponse>,
    early: tokio::sync::oneshot::Sender<Early<B>>,
    /// The leading client asked for the whole body (no conditional, no range).
    whole: bool,
}

/// A storable miss, streamed to its clients while its body is collected for the store.
struct FillFrom<'a> {
    shared: &'a Arc<Shared>,
    key: &'a CacheKey,
    load_time: Duration,
    head: bool,
    vary_miss: bool,
    /// For the leading client's answer (see [`OriginMiss::withheld`]).
    withheld: Option<&'a HeaderMap>,
}

impl FillFrom<'_> {
    /// Reads the origin body into a fill that the leading client and the waiters read from,
    /// and stores it whole if it stays within the limit and does not fail.
    async fn run<ReqB, ResB, E>(
        self,
        to: StreamTo<ResB>,
        verdict: Verdict,
        (parts, body): (http::response::Parts, ResB),
        not_kept: NotKept,
    ) -> Outcome<CacheKey, CachedResponse, Result<Reply<ReqB, ResB>, E>>
    where
        ReqB: Default,
        ResB: Body<Data = Bytes>,
        ResB::Error: Into<BoxError>,
    {
        let Self {
            shared,
            key,
            load_time,
            head,
            vary_miss,
            withheld,
        } = self;
        let status = parts.status;
        let declared = declared_length(&parts.headers);
        let exact = body.size_hint().exact();
        // The head as it will be stored (the origin's `Content-Length` kept: the body it
        // describes is still on its way).
        let empty = (parts, Bytes::new());
        let (store_key, mut loaded) =
            match shared.admit_buffered(key.clone(), verdict, empty, Some(0), load_time) {
                Ok(admitted) => admitted,
                Err(not_stored) => {
                    let (cached, reason) = *not_stored;
                    let response = cached.into_response::<ResB>().map(|_| SwrBody::inner(body));
                    let answer = Ok(not_kept.reply(key, status, response));
                    let reason = format!("response not stored: {reason}");
                    return Outcome::Unstored { answer, reason };
                }
            };
        let entry = Arc::new(Entry::new(loaded.clone(), Stamp::now(), 0));
        let fill = Fill::new(shared.config.max_body_bytes, declared, exact);
        let writer = FillWriter(Arc::clone(&fill));
        let streaming = Arc::new(Streaming { entry, fill });
        let StreamTo {
            publisher,
            early,
            whole,
        } = to;
        // "stored" only where the length is known to fit: an unknown length may not.
        let stored = streaming.fill.expects_to_store();
        let member = if vary_miss {
            Member::VaryMiss { stored }
        } else {
            Member::UriMiss { stored }
        };
        let leader = if whole || status != StatusCode::OK {
            shared
                .respond_streaming(&streaming, (CacheStatus::Miss, member), head)
                .map(|mut response| {
                    if let Some(withheld) = withheld {
                        add_withheld(response.headers_mut(), withheld);
                    }
                    Early::Response(response)
                })
        } else {
            Some(Early::Detach)
        };
        // A client gone already is no reason to stop: the others may read, and it is stored.
        let _ = early.send(leader.unwrap_or(Early::Detach));
        publisher.publish(streaming);
        let mut body = std::pin::pin!(body);
        let mut over = false;
        // An origin body that sends nothing for 30 s (or the lock timeout, if longer) while no
        // client reads the fill is given up: new readers are refused such a fill (see
        // `answer_streaming`), and it would hold its task, body and flight forever. Long
        // enough for a client waiting on the landing (a range, a conditional, a `HEAD`) and a
        // pausing origin; never zero (the timer would spin).
        let stall = shared.engine.lock_timeout().max(STALLED_FILL);
        let mut stalled = std::pin::pin!(tokio::time::sleep(stall));
        loop {
            std::future::poll_fn(|cx| writer.0.poll_room(cx)).await;
            let frame = tokio::select! {
                biased;
                frame = body.frame() => frame,
                () = &mut stalled => {
                    if writer.0.has_readers() {
                        stalled.as_mut().reset(tokio::time::Instant::now() + stall);
                        continue;
                    }
                    writer.0.fail(FillError::Abandoned);
                    publisher.withdraw();
                    return unstored_fill(not_kept, key, status, "the origin's body stalled with no client reading it");
                }
            };
            stalled.as_mut().reset(tokio::time::Instant::now() + stall);
            let data = match frame {
                None => break,
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => data,
                    // Trailers are not stored (nor relayed, as with a stored body).
                    _ => continue,
                },
                Some(Err(error)) => {
                    writer.0.fail(FillError::Origin(Arc::from(error.into())));
                    publisher.withdraw();
                    return unstored_fill(not_kept, key, status, "the origin's body failed");
                }
            };
            let pushed = writer.0.push(data);
            if pushed != Pushed::Storing && !over {
                over = true;
                shared.engine.count_store_rejection();
                // Too large to store: later requests go to the origin themselves.
                publisher.withdraw();
            }
            if pushed == Pushed::Unwanted {
                return unstored_fill(not_kept, key, status, "body over the limit, no reader left");
            }
        }
        match writer.0.finish() {
            // A body of another length than its `Content-Length` is incomplete or framed
            // wrong (RFC 9111 §3.3): its readers got a body error, and it is not stored.
            Some(whole) if declared.is_some_and(|len| len != whole.len() as u64) => unstored_fill(
                not_kept,
                key,
                status,
                "body length differs from Content-Length",
            ),
            Some(whole) => {
                loaded.value.body = whole;
                Outcome::Store {
                    key: store_key,
                    loaded,
                    revalidated: false,
                }
            }
            None => unstored_fill(not_kept, key, status, "body over the limit"),
        }
    }
}

/// The shortest an origin body may send nothing, with no client reading its fill, before the
/// fill is given up.
const STALLED_FILL: Duration = Duration::from_secs(30);

/// A fill that is not stored. Its leading client has its answer already, unless it asked
/// for a conditional or a range: that goes to the origin as the client sent it.
fn unstored_fill<ReqB, ResB, E>(
    not_kept: NotKept,
    key: &CacheKey,
    status: StatusCode,
    reason: &str,
) -> Outcome<CacheKey, CachedResponse, Result<Reply<ReqB, ResB>, E>>
where
    ReqB: Default,
    ResB: Body<Data = Bytes>,
    ResB::Error: Into<BoxError>,
{
    let answer = Ok(not_kept.reply(key, status, Response::new(SwrBody::empty())));
    Outcome::Unstored {
        answer,
        reason: reason.to_owned(),
    }
}

/// The fields a `private="..."` or `no-cache="..."` keeps out of a response's stored copy, as
/// the origin sent them (none that are never stored anyway).
fn withheld_fields(verdict: &Verdict, headers: &HeaderMap) -> Option<HeaderMap> {
    let Decision::Store { strip, .. } = &verdict.decision else {
        return None;
    };
    let mut withheld = HeaderMap::new();
    for name in strip {
        let Ok(name) = HeaderName::from_bytes(name.trim().as_bytes()) else {
            continue;
        };
        if UNSTORED_HEADERS.contains(&name) || withheld.contains_key(&name) {
            continue;
        }
        for value in headers.get_all(&name) {
            withheld.append(name.clone(), value.clone());
        }
    }
    (!withheld.is_empty()).then_some(withheld)
}

/// Gives the client whose request loaded a response the fields withheld from its stored copy.
fn add_withheld(headers: &mut HeaderMap, withheld: &HeaderMap) {
    for (name, value) in withheld {
        headers.append(name, value.clone());
    }
}
