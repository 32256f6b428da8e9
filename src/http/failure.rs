//! An origin failure, as the requests that waited for it (and for a moment later ones) get it.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode, Version};
use http_body::Body;

use super::body::SwrBody;
use crate::engine::Failure;

/// Most bytes of an origin's failure body kept to answer the requests that waited for it.
pub(crate) const FAILURE_BODY_LIMIT: usize = 64 * 1024;

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
    /// The failure as the engine shares it with the callers that waited.
    pub(crate) fn shared(self) -> Option<Failure> {
        Some(Arc::new(self) as Failure)
    }

    pub(crate) fn fwd_status(&self) -> Option<u16> {
        match self {
            Self::Answer { status, .. } => Some(status.as_u16()),
            Self::Error => None,
            Self::Withheld { status } => *status,
        }
    }

    /// A copy of the failure for one request (`None`: it must ask the origin itself).
    pub(crate) fn respond<B: Body>(&self, head: bool) -> Option<Response<SwrBody<B>>> {
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
