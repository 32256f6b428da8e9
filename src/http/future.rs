//! Response future of [`SwrService`](crate::SwrService).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::header::HeaderName;
use http::{HeaderValue, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::body::SwrBody;
use super::config::BypassMarks;
use super::render::mark_bypass;

static QUERY_TIME: HeaderName = HeaderName::from_static("x-query-time-ms");

pub(crate) type BoxResponseFuture<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<SwrBody<B>>, E>> + Send>>;

pin_project! {
    /// Response future of [`SwrService`](crate::SwrService).
    ///
    /// A hit is answered without touching the inner service; a bypass drives the inner
    /// service's own future; a miss runs the (boxed) origin path.
    pub struct ResponseFuture<F, B, E>
    where
        B: Body,
    {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E>
    where
        B: Body,
    {
        Ready { response: Option<Response<SwrBody<B>>> },
        // Boxed, so that a hit's future (moved a few times per request) stays the size of a
        // response whatever the inner service's future weighs; a bypass goes to the origin
        // anyway.
        Bypass { state: Pin<Box<Bypass<F>>> },
        Origin { future: BoxResponseFuture<B, E> },
        // `SwrLayer::query_time_header`: the answer, timed.
        Timed { answer: Pin<Box<ResponseFuture<F, B, E>>>, started: Instant },
    }
}

pin_project! {
    #[project = BypassProj]
    struct Bypass<F> {
        #[pin]
        future: F,
        cache_status: HeaderValue,
        marks: BypassMarks,
    }
}

impl<F, B: Body, E> ResponseFuture<F, B, E> {
    pub(crate) fn ready(response: Response<SwrBody<B>>) -> Self {
        Self {
            kind: Kind::Ready {
                response: Some(response),
            },
        }
    }

    pub(crate) fn bypass(future: F, cache_status: HeaderValue, marks: BypassMarks) -> Self {
        Self {
            kind: Kind::Bypass {
                state: Box::pin(Bypass {
                    future,
                    cache_status,
                    marks,
                }),
            },
        }
    }

    pub(crate) fn origin(future: BoxResponseFuture<B, E>) -> Self {
        Self {
            kind: Kind::Origin { future },
        }
    }

    /// `answer` with `X-Query-Time-ms` counted from `started`.
    pub(crate) fn timed(answer: Self, started: Instant) -> Self {
        Self {
            kind: Kind::Timed {
                answer: Box::pin(answer),
                started,
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<SwrBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Ready { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
            KindProj::Bypass { state } => {
                let BypassProj {
                    future,
                    cache_status,
                    marks,
                } = state.as_mut().project();
                let response = ready!(future.poll(cx))?.map(SwrBody::inner);
                Poll::Ready(Ok(mark_bypass(response, cache_status, *marks)))
            }
            KindProj::Origin { future } => future.as_mut().poll(cx),
            KindProj::Timed { answer, started } => {
                let mut response = ready!(answer.as_mut().poll(cx))?;
                let ms = started.elapsed().as_millis();
                (response.headers_mut()).insert(QUERY_TIME.clone(), HeaderValue::from(ms as u64));
                Poll::Ready(Ok(response))
            }
        }
    }
}

impl<F, B: Body, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Ready { .. } => "Ready",
            Kind::Bypass { .. } => "Bypass",
            Kind::Origin { .. } => "Origin",
            Kind::Timed { .. } => "Timed",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}
