//! Admission: what the policy says of an origin response, and storing it (or a 304's update).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::Response;
use http_body::Body;

use super::body::{buffer, Buffered, SwrBody};
use super::conditional;
use super::config::Shared;
use super::failure::{OriginFailure, FAILURE_BODY_LIMIT};
use super::key::{CacheKey, Vary};
use super::policy::{declared_body_refusal, failure_is_shareable, Decision, Reason, RequestFacts};
use super::status::{reserve_slots, without_slots};
use super::stored::{storable_headers, CachedResponse, Credentials};
use super::tags::Tags;
use super::template::RequestTemplate;
use crate::engine::{Entry, Loaded};

/// What [`Shared::judge`] said of a response.
pub(crate) struct Verdict {
    pub(crate) decision: Decision,
    pub(crate) vary: Vary,
    /// The request's credentials, kept with the entry for its refreshes.
    pub(crate) credentials: Option<Box<Credentials>>,
    /// The response's cache tags, dated by when the load began.
    pub(crate) tags: Option<Box<Tags>>,
}

/// A response that was not stored, and why.
pub(crate) type NotStored = Box<(CachedResponse, Reason)>;

/// What became of an origin response.
// Made and taken apart once per origin answer: boxing the large variant would only add an
// allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Admission<B: Body> {
    /// To be stored under `key` (the request's key, or its variant's).
    Store {
        key: CacheKey,
        loaded: Loaded<CachedResponse>,
    },
    /// A failure the policy forbids storing, kept whole for the requests that waited and
    /// for a moment for later ones.
    Failure {
        failure: Arc<OriginFailure>,
        reason: Reason,
    },
    /// The policy forbids storing it (reason given).
    Uncacheable(Response<SwrBody<B>>, Reason),
    /// Cacheable, but too large to hold (reason given).
    Unstorable(Response<SwrBody<B>>, Reason),
}

/// The `Content-Length` a response states, if it is a number.
pub(crate) fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// The current time as an HTTP date (`Date` for responses that came without one).
pub(crate) fn http_date_now() -> HeaderValue {
    HeaderValue::try_from(httpdate::fmt_http_date(SystemTime::now()))
        .expect("an HTTP date is a valid header value")
}

impl Shared {
    /// The policy's decision, adjusted by the layer's policy function (how a route's lifetime
    /// applies is [`Decision::with_route_freshness`]'s to say).
    pub(crate) fn decide(
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
        let mut request = template.parts();
        super::key::show_client_uri(&mut request);
        match policy_fn(&request, parts) {
            Some(freshness) => decision.with_route_freshness(freshness),
            None => decision,
        }
    }

    /// What the policy says of a response to a request: made once per response.
    pub(crate) fn judge(
        &self,
        template: &RequestTemplate,
        parts: &http::response::Parts,
        response_delay: Duration,
    ) -> Verdict {
        let vary = Vary::of(&parts.headers, &template.headers);
        Verdict {
            decision: self
                .decide(template, parts, response_delay)
                .with_vary(&vary),
            vary,
            credentials: Credentials::of(&template.headers, &self.config.policy.credential_headers),
            tags: Tags::of(&parts.headers, template.tag_generation),
        }
    }

    /// The entry-to-be of a response whose body is already in memory, given what
    /// [`judge`](Self::judge) said of it, and the key it is stored under. The engine stores it.
    pub(crate) fn admit_buffered(
        &self,
        key: CacheKey,
        Verdict {
            decision,
            vary,
            credentials,
            tags,
        }: Verdict,
        (parts, body): (http::response::Parts, Bytes),
        declared_len: Option<u64>,
        load_time: Duration,
    ) -> Result<(CacheKey, Loaded<CachedResponse>), NotStored> {
        // `judge` made a `Vary` we cannot key on a pass: a decision to store has a usable one.
        let (mut headers, stored) = match &decision {
            Decision::Store { strip, .. } => {
                let mut headers = storable_headers(parts.headers, strip);
                self.config.strip_surrogate_control(&mut headers);
                // Stored as they go downstream: a hit removes nothing.
                self.config.strip_cache_tags(&mut headers);
                (headers, true)
            }
            Decision::Pass(_) => (parts.headers, false),
        };
        let length_wrong = headers.contains_key(header::CONTENT_LENGTH)
            && declared_len.is_none_or(|len| len != body.len() as u64);
        if length_wrong {
            // The origin's Content-Length lied or was unreadable; serve what we really hold,
            // and keep none of it: it is incomplete or framed wrong (RFC 9111 §3.3).
            headers.insert(header::CONTENT_LENGTH, body.len().into());
        }
        let refused = (stored && length_wrong).then_some(Reason::LengthMismatch);
        let stored = stored && refused.is_none();
        let (headers, slots) = if stored {
            let (headers, slots) = reserve_slots(headers);
            (headers, Some(slots))
        } else {
            (headers, None)
        };
        let (shared_with_auth, shared_with_cookie, stale_when_unreachable) = match &decision {
            Decision::Store {
                shared_with_auth,
                shared_with_cookie,
                stale_when_unreachable,
                ..
            } => (
                *shared_with_auth,
                *shared_with_cookie,
                *stale_when_unreachable,
            ),
            Decision::Pass(_) => (false, false, false),
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
            stale_when_unreachable,
            tags: tags.filter(|_| stored),
        };
        if let Some(reason) = refused {
            return Err(Box::new((cached, reason)));
        }
        let Decision::Store {
            freshness,
            initial_age,
            retain,
            ..
        } = decision
        else {
            let reason = decision.reason().expect("not a decision to store");
            return Err(Box::new((cached, reason)));
        };
        let loaded = Loaded::new(cached, freshness)
            .with_initial_age(initial_age)
            .with_retention(retain)
            .with_load_time(load_time);
        // Indexed before it is stored: that the resource varies is true whether or not this
        // response is kept.
        self.index_variant(&key, loaded.value.vary.as_ref());
        Ok((key, loaded))
    }

    /// Turns an origin response into an entry, if policy and size allow. Otherwise the response
    /// goes to the client as it is (with a body that is the buffered prefix plus the rest).
    /// A failure that is not stored is kept whole for the requests that waited, if `share`.
    pub(crate) async fn admit<B>(
        &self,
        key: CacheKey,
        template: Arc<RequestTemplate>,
        response: Response<B>,
        load_time: Duration,
        share: bool,
    ) -> Admission<B>
    where
        B: Body<Data = Bytes>,
    {
        let (parts, body) = response.into_parts();
        // Decide before buffering, so an uncacheable body streams straight through.
        // `load_time` runs until the response's head arrived: the response delay.
        let verdict = self.judge(&template, &parts, load_time);
        self.admit_judged(key, verdict, (parts, body), load_time, share)
            .await
    }

    /// [`admit`](Self::admit), given what [`judge`](Self::judge) said of the response.
    pub(crate) async fn admit_judged<B>(
        &self,
        key: CacheKey,
        verdict: Verdict,
        (parts, body): (http::response::Parts, B),
        load_time: Duration,
        share: bool,
    ) -> Admission<B>
    where
        B: Body<Data = Bytes>,
    {
        let limit = self.config.max_body_bytes;
        if let Some(reason) = verdict.decision.reason() {
            let shareable = share
                && self.config.is_failure(parts.status)
                && failure_is_shareable(
                    false,
                    parts.status,
                    &parts.headers,
                    &self.config.policy.targeted,
                );
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
                        headers: {
                            let mut headers = storable_headers(parts.headers, &[]);
                            self.config.strip_cache_tags(&mut headers);
                            headers
                        },
                        body,
                    }),
                    reason,
                },
                Buffered::Partial(body) | Buffered::Failed(body) => {
                    Admission::Uncacheable(Response::from_parts(parts, body), reason)
                }
            };
        }
        let declared = declared_length(&parts.headers);
        if let Some(reason) = declared_body_refusal(declared, limit) {
            self.engine.count_store_rejection();
            return Admission::Unstorable(
                Response::from_parts(parts, SwrBody::inner(body)),
                reason,
            );
        }
        let body = match buffer(body, limit).await {
            Buffered::Complete(bytes) => bytes,
            Buffered::Partial(body) => {
                self.engine.count_store_rejection();
                return Admission::Unstorable(
                    Response::from_parts(parts, body),
                    Reason::BodyIncomplete,
                );
            }
            Buffered::Failed(body) => {
                return Admission::Unstorable(Response::from_parts(parts, body), Reason::BodyFailed)
            }
        };
        match self.admit_buffered(key, verdict, (parts, body), declared, load_time) {
            Ok((key, loaded)) => Admission::Store { key, loaded },
            Err(not_stored) => {
                let (cached, reason) = *not_stored;
                Admission::Unstorable(cached.into_response(), reason)
            }
        }
    }

    /// Applies a 304 from the origin to a stored entry (RFC 9111 §3.2, §4.3.4).
    pub(crate) fn freshen(
        &self,
        entry: &Entry<CachedResponse>,
        template: Arc<RequestTemplate>,
        not_modified: http::response::Parts,
    ) -> Result<(CacheKey, Loaded<CachedResponse>), NotStored> {
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
        let mut verdict = self.judge(&template, &parts, Duration::ZERO);
        if verdict.tags.is_none() {
            // The stored tags (removed from the stored headers) unless the 304 names others;
            // dated by this revalidation, which confirms the response anew.
            verdict.tags = cached.tags.as_ref().map(|tags| {
                Box::new(Tags {
                    names: tags.names.clone(),
                    since: template.tag_generation,
                })
            });
        }
        // The stored `Content-Length` (a 304 does not update it) still states the body's.
        let declared = declared_length(&parts.headers);
        self.admit_buffered(
            cached.key.clone(),
            verdict,
            (parts, cached.body.clone()),
            declared,
            entry.load_time(),
        )
    }
}
