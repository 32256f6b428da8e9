//! Calls to the origin: the background refresh of a stale entry and the coalesced miss.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::request::Parts;
use http::{Extensions, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use tokio::time::Instant;
use tower::util::ServiceExt;
use tower_service::Service;

use super::admission::{Admission, Fence};
use super::body::SwrBody;
use super::conditional::{self, CLIENT_CONDITIONALS};
use super::config::{Shared, PASS_FOR};
use super::failure::OriginFailure;
use super::key::{align_host, host_correction, request_variant, CacheKey};
use super::policy::RequestFacts;
use super::render::{without_body_if, Ask};
use super::status::{CacheStatus, Member};
use super::stored::{has_credentials, remove_present, CachedResponse, Credentials, Refusal};
use crate::engine::{
    stored_by_another, wait, CatchUnwind, Entry, Failure, Join, Landing, Stamp, Waited,
};

/// The parts of a request an origin call is made from: the miss's own request, or for a
/// background refresh the request that found the entry stale (as nginx's background update
/// does) with the storing request's credentials (see [`Credentials`]). Not kept with the
/// entry: a refresh copies the request that triggers it.
#[derive(Debug)]
pub(crate) struct RequestTemplate {
    pub(crate) uri: Uri,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) extensions: Extensions,
}

impl RequestTemplate {
    pub(crate) fn capture<B>(request: &Request<B>) -> Self {
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

    pub(crate) fn rebuild<B: Default>(&self) -> Request<B> {
        let mut request = Request::new(B::default());
        *request.method_mut() = Method::GET;
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        *request.extensions_mut() = self.extensions.clone();
        request
    }

    pub(crate) fn parts(&self) -> Parts {
        self.rebuild::<()>().into_parts().0
    }
}

/// Request headers a refresh never copies from the request that triggers it.
pub(crate) const CONNECTION_HEADERS: [HeaderName; 6] = [
    header::CONNECTION,
    header::UPGRADE,
    header::TE,
    header::TRANSFER_ENCODING,
    header::CONTENT_LENGTH,
    header::EXPECT,
];

/// Clears an entry's "refreshing" mark however its refresh task ends (success, error,
/// timeout, panic).
pub(crate) struct RefreshingFlag(pub(crate) Arc<Entry<CachedResponse>>);

impl Drop for RefreshingFlag {
    fn drop(&mut self) {
        self.0.refreshing.store(false, Ordering::Release);
    }
}

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
pub(crate) async fn miss<S, ReqB, ResB>(
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
    // Another call's failure as this request's answer: the stale entry if it may stand in,
    // else the failure itself if it may be shared; `None`: ask the origin.
    let answer_failure = |failure: Option<Failure>, remembered: bool, key: &CacheKey| {
        let failure = failure.and_then(|failure| failure.downcast::<OriginFailure>().ok());
        if let Some(entry) = usable_on_error(&expired) {
            let fwd_status = failure.as_ref().and_then(|f| f.fwd_status());
            return Some(shared.respond_stale_if_error(&entry, fwd_status, ask));
        }
        failure
            .filter(|_| !credentialed)
            .and_then(|f| shared.respond_failure(&f, remembered, key, head))
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
                Join::Failed(failure) => match answer_failure(Some(failure), true, &key) {
                    Some(response) => return Ok(response),
                    None => break,
                },
                Join::Waiter(waiting) => match wait(waiting).await {
                    Waited::Stored(entry) if entry.value().serves(request.headers(), facts) => {
                        shared.engine.counters().collapsed.inc();
                        tracing::debug!(key = %key, status = "collapsed", "answered by another request's origin call");
                        return Ok(shared.respond_collapsed(&entry, ask));
                    }
                    Waited::Failed(failure) => {
                        // One origin call failed for every request that waited for it.
                        if let Some(response) = answer_failure(failure, false, &key) {
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
    // With a stale entry to fall back on, the origin gets `origin_timeout`; without one, its
    // own answer is awaited (there is nothing else to give, and no error to invent).
    let limit = usable_on_error(&expired).and(shared.config.origin_timeout);
    let deadline = limit.map(|limit| Instant::now() + limit);
    // `None`: the call was cut at the deadline.
    let mut first = None;
    if let (Some(earlier), Some(template)) = (earlier_attempts, &template) {
        // A backup attempt still takes an earlier attempt's answer when that comes first.
        let own = async {
            match deadline {
                Some(at) => tokio::time::timeout_at(at, call.as_mut()).await.ok(),
                None => Some(call.as_mut().await),
            }
        };
        tokio::select! {
            biased;
            outcome = own => first = Some(outcome),
            entry = stored_by_another(earlier) => {
                if entry.value().serves(&template.headers, facts) {
                    tracing::debug!(key = %key, status = "collapsed", "answered by an earlier attempt");
                    return Ok(shared.respond_collapsed(&entry, ask));
                }
            }
        }
    }
    let first = match first {
        Some(first) => first,
        None => match deadline {
            Some(at) => tokio::time::timeout_at(at, call.as_mut()).await.ok(),
            None => Some(call.as_mut().await),
        },
    };
    let outcome = match first {
        Some(outcome) => outcome,
        // Only while the entry may still stand in: once its window has closed, the origin's
        // own answer is awaited after all.
        None => match usable_on_error(&expired) {
            Some(fallback) => {
                if let Some(leader) = leader {
                    leader.land(Landing::FAILED);
                }
                let timeout_ms = limit.map_or(0, |limit| limit.as_millis() as u64);
                tracing::warn!(key = %key, timeout_ms, "the origin did not answer in time");
                return Ok(shared.respond_stale_if_error(&fallback, None, ask));
            }
            None => call.await,
        },
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
