//! Answers built from stored entries (with the client's conditionals and range), and from
//! origin responses that were not stored.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body::Body;

use super::body::SwrBody;
use super::conditional::{self, ByteRange};
use super::config::{BypassMarks, Shared};
use super::failure::OriginFailure;
use super::key::CacheKey;
use super::policy::SURROGATE_CONTROL;
use super::status::{CacheInfo, CacheStatus, Member, CACHE_STATUS, X_CACHE};
use super::stored::{remove_present, CachedResponse};
use super::tags::TAG_FIELDS;
use crate::engine::{Entry, Stamp, WallClock};

/// What the client asked for beyond the resource: `HEAD`, a conditional, a range.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Ask<'a> {
    pub(crate) head: bool,
    /// The request's headers, when it is conditional or partial.
    pub(crate) conditionals: Option<&'a HeaderMap>,
}

/// Whether a response of `status` may have content, and so a `Content-Length` (RFC 9110 §8.6:
/// none on a 1xx or a 204).
fn has_content(status: http::StatusCode) -> bool {
    !(status.is_informational() || status == http::StatusCode::NO_CONTENT)
}

/// The answer to a `HEAD` that was sent to the origin as a `GET`: the headers (with the length
/// of the body a `GET` gets), no body.
pub(crate) fn without_body_if<B>(head: bool, response: Response<SwrBody<B>>) -> Response<SwrBody<B>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<super::fill::BoxError>,
{
    if !head {
        return response;
    }
    let mut response = response;
    // A 204 (and a 1xx) has no content and no `Content-Length` (RFC 9110 §8.6).
    if response.headers().contains_key(header::CONTENT_LENGTH) || !has_content(response.status()) {
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

/// Marks a response that bypassed the cache: `Cache-Status`, and what the layer's settings add.
pub(crate) fn mark_bypass<B: Body>(
    mut response: Response<SwrBody<B>>,
    cache_status: &HeaderValue,
    marks: BypassMarks,
) -> Response<SwrBody<B>> {
    let headers = response.headers_mut();
    headers.append(CACHE_STATUS.clone(), cache_status.clone());
    if marks.strip_surrogate_control {
        headers.remove(&SURROGATE_CONTROL);
    }
    if marks.strip_cache_tags {
        remove_present(headers, &TAG_FIELDS);
    }
    if marks.x_cache {
        headers.insert(X_CACHE.clone(), HeaderValue::from_static("BYPASS"));
    }
    if marks.cache_info {
        response
            .extensions_mut()
            .insert(CacheInfo::uncached(CacheStatus::Bypass));
    }
    response
}

impl Shared {
    /// Builds the answer from a stored entry, honouring the client's conditionals and range.
    #[inline(always)]
    pub(crate) fn respond<B: Body>(
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
                let received = || entry.lifetime(&WallClock::now()).stored_at;
                self.shape(cached, request, ask.head, received, &mut response)
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
            if ask.head
                && !response.headers().contains_key(header::CONTENT_LENGTH)
                && has_content(cached.status)
            {
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
    pub(crate) fn shape<B: Body>(
        &self,
        cached: &CachedResponse,
        request: &HeaderMap,
        head: bool,
        received: impl FnOnce() -> std::time::SystemTime,
        response: &mut Response<SwrBody<B>>,
    ) -> bool {
        if conditional::not_modified(request, &cached.headers) {
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            *response.headers_mut() = conditional::headers_for_304(&cached.headers);
            return true;
        }
        if head {
            // Range is defined for GET only: any other method's is ignored (RFC 9110 §14.2),
            // so a HEAD gets the headers of the whole response.
            return false;
        }
        let len = cached.body.len();
        match conditional::byte_range(request, &cached.headers, len, received) {
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

    pub(crate) fn respond_stale_if_error<B: Body>(
        &self,
        entry: &Entry<CachedResponse>,
        fwd_status: Option<u16>,
        ask: Ask<'_>,
    ) -> Response<SwrBody<B>> {
        let now = Stamp::now();
        let age_secs = entry.age_at(now).as_secs();
        if entry.usable_on_error_at(now) {
            tracing::warn!(key = %entry.value().key, age_secs, fwd_status,
                "serving stale response: the origin failed");
        } else {
            // Past its stale-if-error window: only RFC 9111 §4.2.4's allowance lets it answer.
            let stale_secs = now.since(entry.fresh_until_stamp()).as_secs();
            tracing::warn!(key = %entry.value().key, age_secs, stale_secs,
                "serving stale response: the origin cannot be reached (disconnected)");
        }
        self.respond(
            entry,
            CacheStatus::StaleIfError,
            Member::Stale { fwd_status },
            ask,
            false,
            now,
        )
    }

    /// Until when `entry` may stand in for an origin that cannot be reached (RFC 9111 §4.2.4):
    /// the end of its fresh lifetime plus the layer's `max_stale_when_disconnected`, unless
    /// its directives forbid serving it stale.
    pub(crate) fn unreachable_until(&self, entry: &Entry<CachedResponse>) -> Option<Stamp> {
        let most = self.config.policy.stale_if_unreachable?;
        (entry.value().stale_when_unreachable).then(|| entry.fresh_until_stamp().after(most))
    }

    /// The answer from an entry another request's origin call just stored.
    pub(crate) fn respond_collapsed<B: Body>(
        &self,
        entry: &Entry<CachedResponse>,
        ask: Ask<'_>,
    ) -> Response<SwrBody<B>> {
        let now = Stamp::now();
        self.respond(
            entry,
            CacheStatus::Collapsed,
            Member::Collapsed,
            ask,
            false,
            now,
        )
    }

    /// The origin's own response, marked as a miss that was not stored.
    pub(crate) fn pass<B: Body>(
        &self,
        response: Response<SwrBody<B>>,
        key: &CacheKey,
        vary_miss: bool,
    ) -> Response<SwrBody<B>> {
        let mut response = response;
        self.config.strip_surrogate_control(response.headers_mut());
        self.config.strip_cache_tags(response.headers_mut());
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
    pub(crate) fn respond_failure<B: Body>(
        &self,
        failure: &OriginFailure,
        remembered: bool,
        key: &CacheKey,
        head: bool,
    ) -> Option<Response<SwrBody<B>>> {
        let mut response = failure.respond(head)?;
        let error = matches!(failure, OriginFailure::Error);
        let (member, status) = if remembered {
            (Member::FailureHit { error }, CacheStatus::FailureHit)
        } else {
            (Member::FailureCollapsed { error }, CacheStatus::Collapsed)
        };
        tracing::debug!(key = %key, status = "failure", remembered, "answered with another origin call's failure");
        (self.config.headers).write(response.headers_mut(), member, status, None, Some(key));
        (self.config.headers).attach(response.extensions_mut(), || CacheInfo::uncached(status));
        Some(response)
    }
}
