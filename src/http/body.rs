//! The response body: cached bytes, the inner body, a buffered prefix plus the rest, or a
//! streaming fill.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;

use super::fill::{BoxError, FillReader};

pin_project! {
    /// Response body of [`SwrService`](crate::SwrService).
    ///
    /// Either the stored bytes, the inner service's body untouched, a miss's body read as the
    /// origin sends it (a streaming fill, which the other requests of the key may share), or —
    /// when a body was too long to store, or failed while it was being buffered — the buffered
    /// prefix followed by the rest of the inner body (or its error), byte for byte.
    ///
    /// Its error is boxed: the inner body's own error, or, for a streaming fill, one that every
    /// client reading the fill gets (the origin's body failed, or this client read too slowly
    /// to follow a fill too large to store).
    pub struct SwrBody<B>
    where
        B: Body,
    {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B>
    where
        B: Body,
    {
        Cached { data: Option<Bytes> },
        // No data, and no length stated: the answer to a HEAD whose GET body has an unknown
        // length (a stated 0 would tell the client the GET body is empty).
        Unsized,
        Inner { #[pin] body: B },
        Fill { reader: FillReader },
        Prefix {
            chunks: VecDeque<Bytes>,
            error: Option<B::Error>,
            rest: Option<Pin<Box<B>>>,
        },
    }
}

impl<B: Body> SwrBody<B> {
    pub(crate) fn cached(data: Bytes) -> Self {
        Self {
            kind: Kind::Cached {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    pub(crate) fn empty() -> Self {
        Self {
            kind: Kind::Cached { data: None },
        }
    }

    /// No data, with no length stated (see `Kind::Unsized`).
    pub(crate) fn unsized_empty() -> Self {
        Self {
            kind: Kind::Unsized,
        }
    }

    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    pub(crate) fn fill(reader: FillReader) -> Self {
        Self {
            kind: Kind::Fill { reader },
        }
    }

    fn prefix(chunks: VecDeque<Bytes>, error: Option<B::Error>, rest: Option<Pin<Box<B>>>) -> Self {
        Self {
            kind: Kind::Prefix {
                chunks,
                error,
                rest,
            },
        }
    }
}

impl<B> Body for SwrBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Cached { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Unsized => Poll::Ready(None),
            KindProj::Inner { body } => body.poll_frame(cx).map_err(Into::into),
            KindProj::Fill { reader } => reader.poll_frame(cx),
            KindProj::Prefix {
                chunks,
                error,
                rest,
            } => {
                if let Some(chunk) = chunks.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                if let Some(error) = error.take() {
                    *rest = None;
                    return Poll::Ready(Some(Err(error.into())));
                }
                match rest {
                    Some(body) => body.as_mut().poll_frame(cx).map_err(Into::into),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Cached { data } => data.is_none(),
            // Not "ended": a server would then state a length of 0.
            Kind::Unsized => false,
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Fill { reader } => reader.is_end_stream(),
            Kind::Prefix {
                chunks,
                error,
                rest,
            } => {
                chunks.is_empty()
                    && error.is_none()
                    && rest.as_ref().is_none_or(|b| b.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Cached { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Unsized => SizeHint::new(),
            Kind::Inner { body } => body.size_hint(),
            Kind::Fill { reader } => reader.size_hint(),
            Kind::Prefix {
                chunks,
                rest,
                error,
            } => {
                let buffered: u64 = chunks.iter().map(|c| c.len() as u64).sum();
                if error.is_some() {
                    // The body will fail: no upper bound, so no Content-Length is derived from
                    // the prefix and the client sees the failure, not a short complete body.
                    let mut hint = SizeHint::new();
                    hint.set_lower(buffered);
                    return hint;
                }
                let rest = rest
                    .as_ref()
                    .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint());
                let mut hint = SizeHint::new();
                hint.set_lower(buffered.saturating_add(rest.lower()));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(buffered.saturating_add(upper));
                }
                hint
            }
        }
    }
}

impl<B: Body> std::fmt::Debug for SwrBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Cached { .. } => "Cached",
            Kind::Unsized => "Unsized",
            Kind::Inner { .. } => "Inner",
            Kind::Fill { .. } => "Fill",
            Kind::Prefix { .. } => "Prefix",
        };
        f.debug_struct("SwrBody").field("kind", &kind).finish()
    }
}

/// A body read up to a limit.
pub(crate) enum Buffered<B: Body> {
    /// The whole body, within the limit.
    Complete(Bytes),
    /// Over the limit: what was read and what is left, for the client only.
    Partial(SwrBody<B>),
    /// The body failed: what was read, then the error, for the client only.
    Failed(SwrBody<B>),
}

/// Reads `body` whole if it is at most `limit` bytes.
pub(crate) async fn buffer<B>(body: B, limit: usize) -> Buffered<B>
where
    B: Body<Data = Bytes>,
{
    let mut body = Box::pin(body);
    let mut chunks = VecDeque::new();
    let mut total = 0usize;
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                // Trailers are not stored; a body with them is still stored without them.
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if data.is_empty() {
                    continue;
                }
                total = total.saturating_add(data.len());
                chunks.push_back(data);
                if total > limit {
                    return Buffered::Partial(SwrBody::prefix(chunks, None, Some(body)));
                }
            }
            Some(Err(error)) => {
                return Buffered::Failed(SwrBody::prefix(chunks, Some(error), None));
            }
        }
    }
    Buffered::Complete(match chunks.len() {
        0 => Bytes::new(),
        // Copied: a chunk may be a slice of a far larger buffer (hyper's read buffer) that
        // the stored body would keep alive, outside the budget, which counts the slice.
        1 => Bytes::copy_from_slice(&chunks.pop_front().expect("one chunk")),
        _ => {
            let mut whole = BytesMut::with_capacity(total);
            for chunk in chunks {
                whole.extend_from_slice(&chunk);
            }
            whole.freeze()
        }
    })
}
