//! Test support shared by the integration tests: counting origins, requests, response readers,
//! a gate to hold an origin call open, and a body that streams in chunks (and may fail).

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use tokio::sync::watch;
use tower::{service_fn, Service};
use tower_swr::{CacheInfo, CACHE_STATUS};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestResult = Result<(), BoxError>;

/// The request body every origin in these tests takes.
pub type ReqBody = Full<Bytes>;

/// How many times an origin was called.
#[derive(Clone, Debug, Default)]
pub struct Calls(Arc<AtomicUsize>);

impl Calls {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    /// Records a call and returns its number, counting from 1.
    pub fn record(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
}

/// An origin built with `tower::service_fn`: `handler` gets the call's number (from 1) and the
/// request. The returned [`Calls`] counts calls as they are made, before the handler's future
/// runs.
pub fn origin<B, F, Fut>(
    handler: F,
) -> (
    impl Service<Request<ReqBody>, Response = Response<B>, Error = BoxError, Future: Send + 'static>
        + Clone
        + Send
        + 'static,
    Calls,
)
where
    F: Fn(usize, Request<ReqBody>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Response<B>, BoxError>> + Send + 'static,
{
    let calls = Calls::default();
    let counter = calls.clone();
    let service = service_fn(move |request: Request<ReqBody>| {
        let n = counter.record();
        handler(n, request)
    });
    (service, calls)
}

/// A 200 with `body` and no caching headers.
pub fn reply(body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::new(Full::new(body.into()))
}

/// A 200 with `body` and the given `Cache-Control`.
pub fn reply_cc(body: impl Into<Bytes>, cache_control: &str) -> Response<Full<Bytes>> {
    with_header(reply(body), header::CACHE_CONTROL, cache_control)
}

/// A response with `status` and `body`.
pub fn reply_status(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = reply(body);
    *response.status_mut() = status;
    response
}

/// `response` with one more header.
pub fn with_header<B>(mut response: Response<B>, name: HeaderName, value: &str) -> Response<B> {
    response.headers_mut().append(
        name,
        HeaderValue::from_str(value).expect("valid header value"),
    );
    response
}

/// A request with an empty body.
pub fn request(method: Method, uri: &str) -> Request<ReqBody> {
    Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::default())
        .expect("valid request")
}

/// A `GET` with an empty body.
pub fn get(uri: &str) -> Request<ReqBody> {
    request(Method::GET, uri)
}

/// A `GET` with one header.
pub fn get_with(uri: &str, name: HeaderName, value: &str) -> Request<ReqBody> {
    let mut request = get(uri);
    request.headers_mut().insert(
        name,
        HeaderValue::from_str(value).expect("valid header value"),
    );
    request
}

/// The layer's `Cache-Status` member (the last one: ours comes after any upstream member).
pub fn cache_status<B>(response: &Response<B>) -> String {
    response
        .headers()
        .get_all(&CACHE_STATUS)
        .iter()
        .next_back()
        .map(|v| v.to_str().expect("ascii Cache-Status").to_owned())
        .unwrap_or_else(|| panic!("no Cache-Status on the response: {:?}", response.headers()))
}

/// A header's value as text, if present.
pub fn header_value<B>(response: &Response<B>, name: impl header::AsHeaderName) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().expect("ascii header").to_owned())
}

/// The `Age` header in seconds, if present.
pub fn age<B>(response: &Response<B>) -> Option<u64> {
    header_value(response, header::AGE).map(|v| v.parse().expect("numeric Age"))
}

/// The layer's `CacheInfo` response extension.
pub fn info<B>(response: &Response<B>) -> CacheInfo {
    *response
        .extensions()
        .get::<CacheInfo>()
        .expect("every answer carries a CacheInfo extension")
}

/// The whole body of `response`.
pub async fn body<B>(response: Response<B>) -> Result<Bytes, BoxError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    Ok(response
        .into_body()
        .collect()
        .await
        .map_err(Into::into)?
        .to_bytes())
}

/// Lets spawned work (background refreshes, waiting requests) run until it blocks. On a paused
/// clock the final sleep only ends once every other task is idle; it moves the clock by 1 ms.
pub async fn settle() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// Holds origin calls open until [`Gate::open`].
#[derive(Clone, Debug)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Gate {
    pub fn new() -> Self {
        Self(Arc::new(watch::channel(false).0))
    }

    pub fn open(&self) {
        self.0.send_replace(true);
    }

    pub async fn wait(&self) {
        let mut open = self.0.subscribe();
        open.wait_for(|open| *open)
            .await
            .expect("gate sender lives");
    }
}

/// A response body that arrives in chunks, returning `Pending` between them like a network
/// stream, and optionally fails after the last chunk.
#[derive(Debug)]
pub struct ChunkedBody {
    chunks: VecDeque<Bytes>,
    error: Option<&'static str>,
    ready: bool,
}

impl ChunkedBody {
    /// `data` cut into chunks of `chunk` bytes.
    pub fn new(data: Bytes, chunk: usize) -> Self {
        let mut chunks = VecDeque::new();
        let mut offset = 0;
        while offset < data.len() {
            let end = (offset + chunk).min(data.len());
            chunks.push_back(data.slice(offset..end));
            offset = end;
        }
        Self {
            chunks,
            error: None,
            ready: false,
        }
    }

    /// Fails with `message` once the chunks are sent.
    pub fn failing_with(mut self, message: &'static str) -> Self {
        self.error = Some(message);
        self
    }
}

impl Body for ChunkedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        // Every other poll is `Pending`, so the body is really read as a stream.
        if !this.ready {
            this.ready = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.ready = false;
        if let Some(chunk) = this.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match this.error.take() {
            Some(message) => Poll::Ready(Some(Err(message.into()))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && self.error.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// `len` bytes of a pattern that does not repeat on chunk boundaries, so a lost, repeated or
/// reordered chunk changes the bytes.
pub fn patterned_bytes(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}
