//! Test support shared by the integration tests: counting origins, requests, response readers,
//! a gate to hold an origin call open, and a body that streams in chunks (and may fail).

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use axum::body::Body as AxumBody;
use axum::{routing, Router};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{timeout, Instant};
use tower::{service_fn, Service, ServiceExt};
use tower_swr::{CacheInfo, CacheStatus, Stats, SwrBody, CACHE_STATUS};

#[cfg(feature = "redis")]
pub mod redis_server;

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

/// What the origin helpers return: a cloneable service of test requests that answers
/// `Response<B>` (by default a [`Reply`]) or a [`BoxError`].
pub trait OriginService<B = Full<Bytes>>:
    Service<Request<ReqBody>, Response = Response<B>, Error = BoxError, Future: Send + 'static>
    + Clone
    + Send
    + 'static
{
}

impl<B, S> OriginService<B> for S where
    S: Service<Request<ReqBody>, Response = Response<B>, Error = BoxError, Future: Send + 'static>
        + Clone
        + Send
        + 'static
{
}

/// An origin built with `tower::service_fn`: `handler` gets the call's number (from 1) and the
/// request. The returned [`Calls`] counts calls as they are made, before the handler's future
/// runs.
pub fn origin<B, F, Fut>(handler: F) -> (impl OriginService<B>, Calls)
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

/// A response body fed through a channel: each item is a chunk (or the body's error) when the
/// test sends it, and the body ends when the sender is dropped. Its length is unknown.
#[derive(Debug)]
pub struct FedBody(pub tokio::sync::mpsc::Receiver<Result<Bytes, BoxError>>);

impl Body for FedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|item| item.map(|chunk| chunk.map(Frame::data)))
    }
}

/// A 200 with `Cache-Control: cache_control` whose body is what `rx` is fed.
pub fn reply_stream(
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, BoxError>>,
    cache_control: &str,
) -> Response<FedBody> {
    with_header(
        Response::new(FedBody(rx)),
        header::CACHE_CONTROL,
        cache_control,
    )
}

/// The feeds of a [`fed_origin`]'s bodies, by call number (from 1).
#[derive(Clone, Debug, Default)]
pub struct Feeds(Arc<Mutex<BTreeMap<usize, Feed>>>);

/// What feeds one [`FedBody`].
pub type Feed = tokio::sync::mpsc::Sender<Result<Bytes, BoxError>>;

impl Feeds {
    fn sender(&self, call: usize) -> Feed {
        (self.0.lock().unwrap().get(&call).cloned())
            .unwrap_or_else(|| panic!("no body is being fed for call {call}"))
    }

    /// The origin's body of call `call` sends `chunk` (and the test goes on once it is taken
    /// into the channel, not once it is read).
    pub async fn send(&self, call: usize, chunk: impl Into<Bytes>) {
        let _ = self.sender(call).send(Ok(chunk.into())).await;
    }

    /// The origin's body of call `call` fails with `message`.
    pub async fn fail(&self, call: usize, message: &'static str) {
        let _ = self.sender(call).send(Err(message.into())).await;
        self.end(call);
    }

    /// The origin's body of call `call` ends.
    pub fn end(&self, call: usize) {
        self.0.lock().unwrap().remove(&call);
    }

    /// Whether call `call`'s body is still being read (its receiver lives).
    pub fn is_read(&self, call: usize) -> bool {
        (self.0.lock().unwrap().get(&call)).is_some_and(|tx| !tx.is_closed())
    }

    /// Room left in call `call`'s channel (of 4): what the reader has not yet taken.
    pub fn room(&self, call: usize) -> usize {
        self.sender(call).capacity()
    }
}

/// An origin answering `Cache-Control: cache_control` (its head once `gate` opens, if given)
/// with a body the test feeds through [`Feeds`], chunk by chunk.
pub fn fed_origin(
    cache_control: &'static str,
    gate: Option<Gate>,
) -> (impl OriginService<FedBody>, Calls, Feeds) {
    let feeds = Feeds::default();
    let (service, calls) = origin({
        let feeds = feeds.clone();
        move |n, _| {
            let (feeds, gate) = (feeds.clone(), gate.clone());
            async move {
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                feeds.0.lock().unwrap().insert(n, tx);
                if let Some(gate) = gate {
                    gate.wait().await;
                }
                Ok(reply_stream(rx, cache_control))
            }
        }
    });
    (service, calls, feeds)
}

/// `len` bytes of a pattern that does not repeat on chunk boundaries, so a lost, repeated or
/// reordered chunk changes the bytes.
pub fn patterned_bytes(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// Fresh for 10 s, then served stale for 60 s while one refresh runs.
pub const SWR_10_60: &str = "max-age=10, stale-while-revalidate=60";

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub fn axum_get(uri: &str) -> Request<AxumBody> {
    Request::builder()
        .uri(uri)
        .body(AxumBody::empty())
        .expect("valid request")
}

pub const ETAG: &str = "\"v1\"";

/// Serves `app` on `127.0.0.1:0`; the server task ends with the test's runtime.
pub async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

pub const SECOND: Duration = Duration::from_secs(1);

pub type Reply = Response<Full<Bytes>>;

/// A response with `status`, `body` and the given headers (appended, so names may repeat).
pub fn respond(status: u16, body: impl Into<Bytes>, headers: &[(&str, &str)]) -> Reply {
    let mut response = reply_status(StatusCode::from_u16(status).expect("status"), body);
    for (name, value) in headers {
        response.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    response
}

/// A `GET` with the given headers (appended, so names may repeat).
pub fn get_headers(uri: &str, headers: &[(&str, &str)]) -> Request<ReqBody> {
    let mut request = get(uri);
    for (name, value) in headers {
        request.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    request
}

/// Every request the origin received: method, target and headers.
#[derive(Clone, Debug, Default)]
pub struct Seen(pub Arc<Mutex<Vec<(Method, String, HeaderMap)>>>);

impl Seen {
    pub fn record(&self, request: &Request<ReqBody>) {
        self.0.lock().unwrap().push((
            request.method().clone(),
            request.uri().to_string(),
            request.headers().clone(),
        ));
    }

    /// The headers of the `n`-th origin request (from 1).
    pub fn headers(&self, n: usize) -> HeaderMap {
        self.0.lock().unwrap()[n - 1].2.clone()
    }

    pub fn last_headers(&self) -> HeaderMap {
        self.0.lock().unwrap().last().expect("a request").2.clone()
    }
}

pub fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|v| v.to_str().expect("ascii").to_owned())
}

/// All `Cache-Status` lines of a response, in order.
pub fn cache_status_lines<B>(response: &Response<B>) -> Vec<String> {
    response
        .headers()
        .get_all(&CACHE_STATUS)
        .iter()
        .map(|v| v.to_str().expect("ascii").to_owned())
        .collect()
}

/// The `ttl` parameter of our `Cache-Status` member.
pub fn ttl_param<B>(response: &Response<B>) -> i64 {
    let status = cache_status(response);
    status
        .split("; ")
        .find_map(|p| p.strip_prefix("ttl="))
        .unwrap_or_else(|| panic!("no ttl in {status}"))
        .parse()
        .expect("integer ttl")
}

pub fn http_date(at: SystemTime) -> String {
    httpdate::fmt_http_date(at)
}

/// An origin whose call `n` answers `v{n}` with `cache_control`; every call after the first
/// waits for `gate` (a refresh held open).
pub fn gated_after_first(gate: &Gate, cache_control: &'static str) -> (impl OriginService, Calls) {
    let gate = gate.clone();
    origin(move |n, _| {
        let gate = gate.clone();
        async move {
            if n > 1 {
                gate.wait().await;
            }
            Ok(reply_cc(format!("v{n}"), cache_control))
        }
    })
}

/// An origin answering `cache_control` on its first call and 503 afterwards.
pub fn then_503(cache_control: &'static str) -> (impl OriginService, Calls) {
    origin(move |n, _| async move {
        Ok(if n == 1 {
            respond(
                200,
                "v1",
                &[("cache-control", cache_control), ("etag", "\"e\"")],
            )
        } else {
            respond(503, "down", &[])
        })
    })
}

pub async fn status_of<S>(service: &S, request: Request<ReqBody>) -> Result<CacheStatus, BoxError>
where
    S: Service<Request<ReqBody>, Response = Response<tower_swr::SwrBody<Full<Bytes>>>> + Clone,
    S::Error: Into<BoxError>,
{
    let response = service.clone().oneshot(request).await.map_err(Into::into)?;
    let status = info(&response).status;
    body(response).await?;
    Ok(status)
}

/// How the test origin behaves.
#[derive(Clone, Debug, Default)]
pub struct Mode(pub Arc<AtomicUsize>);

pub const OK: usize = 0;

pub const UNAVAILABLE: usize = 1;

pub const ERROR: usize = 2;

pub const HANG: usize = 3;

impl Mode {
    pub fn set(&self, mode: usize) {
        self.0.store(mode, Ordering::SeqCst);
    }
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Body `v{n}` (with `cache_control` if any) while OK; else 503 / error / hang / panic.
pub fn moody(cache_control: Option<&'static str>, mode: Mode) -> (impl OriginService, Calls) {
    origin(move |n, _request: Request<ReqBody>| {
        let mode = mode.clone();
        async move {
            match mode.get() {
                OK => Ok(match cache_control {
                    Some(cc) => reply_cc(format!("v{n}"), cc),
                    None => reply(format!("v{n}")),
                }),
                UNAVAILABLE => Ok(reply_status(StatusCode::SERVICE_UNAVAILABLE, "down")),
                ERROR => Err::<Reply, BoxError>("origin error".into()),
                HANG => {
                    std::future::pending::<()>().await;
                    unreachable!()
                }
                _ => panic!("origin panicked (on purpose)"),
            }
        }
    })
}

pub async fn fetch_text<S>(service: &S, request: Request<ReqBody>) -> Result<String, BoxError>
where
    S: Service<Request<ReqBody>, Response = Response<SwrBody<Full<Bytes>>>, Error = BoxError>
        + Clone,
{
    let response = service.clone().oneshot(request).await?;
    Ok(String::from_utf8(body(response).await?.to_vec())?)
}

/// A request with the given headers (appended).
pub fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<ReqBody> {
    let mut request = request(Method::from_bytes(method.as_bytes()).unwrap(), uri);
    for (name, value) in headers {
        request.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    request
}

/// A `GET` with one raw (possibly non-UTF-8) header value.
pub fn get_raw(uri: &str, name: &'static str, value: &[u8]) -> Request<ReqBody> {
    let mut request = get(uri);
    request.headers_mut().append(
        HeaderName::from_static(name),
        HeaderValue::from_bytes(value).expect("a valid header value"),
    );
    request
}

/// An HTTP date `ago` seconds before now, on a whole second (HTTP dates have no fractions), so
/// the apparent age it gives is `ago` to `ago + 1` seconds.
pub fn date_ago(ago: u64) -> (SystemTime, String) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let at = UNIX_EPOCH + Duration::from_secs(now - ago);
    (at, httpdate::fmt_http_date(at))
}

/// How a scripted body ends after its chunks.
#[derive(Clone, Copy, Debug)]
pub enum End {
    Finish,
    Hang,
    Panic,
}

/// A body that yields its chunks (a `Pending` before each) and then ends as `end` says.
#[derive(Debug)]
pub struct ScriptBody {
    pub chunks: VecDeque<Bytes>,
    pub end: End,
    pub ready: bool,
}

impl ScriptBody {
    pub fn new(chunks: &[&'static str], end: End) -> Self {
        Self {
            chunks: chunks
                .iter()
                .map(|c| Bytes::from_static(c.as_bytes()))
                .collect(),
            end,
            ready: false,
        }
    }
}

impl Body for ScriptBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if !this.ready {
            this.ready = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.ready = false;
        if let Some(chunk) = this.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match this.end {
            End::Finish => Poll::Ready(None),
            End::Hang => Poll::Pending,
            End::Panic => panic!("the origin's body panicked (on purpose)"),
        }
    }
}

/// An origin whose `n`-th call answers `cache_control` with a body ending as `end(n)` says.
pub fn scripted(
    cache_control: &'static str,
    end: fn(usize) -> End,
) -> (impl OriginService<ScriptBody>, Calls) {
    origin(move |n, _| async move {
        let mut response = Response::new(ScriptBody::new(
            &["call ", ["1", "2", "3", "4", "5"][(n - 1).min(4)]],
            end(n),
        ));
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(cache_control),
        );
        Ok(response)
    })
}

pub const DAY: u64 = 24 * 3600;

pub type Answer = Response<SwrBody<Full<Bytes>>>;

/// A switch the tests flip to change how an origin behaves.
#[derive(Clone, Debug, Default)]
pub struct Switch(pub Arc<AtomicBool>);

impl Switch {
    pub fn set(&self, on: bool) {
        self.0.store(on, Ordering::SeqCst);
    }

    pub fn on(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

pub fn unavailable() -> Reply {
    reply_status(StatusCode::SERVICE_UNAVAILABLE, "down")
}

/// Answers `cache_control` with body `v{n}` while `down` is off, 503 while it is on.
pub fn switchable(cache_control: &'static str, down: Switch) -> (impl OriginService, Calls) {
    origin(move |n, _| {
        let down = down.clone();
        async move {
            Ok(if down.on() {
                unavailable()
            } else {
                reply_cc(format!("v{n}"), cache_control)
            })
        }
    })
}

pub async fn call<S>(
    service: &S,
    request: Request<ReqBody>,
) -> Result<(CacheStatus, Bytes), BoxError>
where
    S: Service<Request<ReqBody>, Response = Answer, Error = BoxError> + Clone,
{
    let response = service.clone().oneshot(request).await?;
    let status = info(&response).status;
    Ok((status, body(response).await?))
}

/// One captured `tracing` event.
#[derive(Clone, Debug)]
pub struct Captured {
    pub level: tracing::Level,
    pub message: String,
    pub fields: BTreeMap<String, String>,
}

/// The events of one test.
///
/// Scoped subscribers (`tracing::subscriber::set_default`) race with callsite registration in
/// other test threads (a callsite first hit where no subscriber is interested may cache
/// "never"), so one global subscriber takes every event and hands it to the collector of the
/// thread it was emitted on. Each `#[tokio::test]` runs on its own current-thread runtime, so
/// its spawned refreshes emit on its thread.
#[derive(Clone, Default)]
pub struct Events(pub Arc<Mutex<Vec<Captured>>>);

thread_local! {
    static COLLECTOR: std::cell::RefCell<Option<Events>> = const { std::cell::RefCell::new(None) };
}

/// Stops collecting on this thread when dropped.
pub struct Collecting;

impl Drop for Collecting {
    fn drop(&mut self) {
        COLLECTOR.with(|c| c.borrow_mut().take());
    }
}

impl Events {
    /// Collects the events emitted on the current thread (the test's runtime) from now on.
    pub fn install(&self) -> Collecting {
        use tracing_subscriber::layer::SubscriberExt;
        static GLOBAL: std::sync::Once = std::sync::Once::new();
        GLOBAL.call_once(|| {
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Route))
                .expect("no other global subscriber in this test binary");
        });
        tracing::callsite::rebuild_interest_cache();
        COLLECTOR.with(|c| *c.borrow_mut() = Some(self.clone()));
        Collecting
    }

    pub fn matching(&self, level: tracing::Level, message: &str) -> Vec<Captured> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.level == level && e.message.contains(message))
            .cloned()
            .collect()
    }

    /// Every event as a log line: `LEVEL message field=value ...`.
    pub fn text(&self) -> String {
        let mut text = String::new();
        for event in self.0.lock().unwrap().iter() {
            text.push_str(&format!("{} {}", event.level, event.message));
            for (name, value) in &event.fields {
                text.push_str(&format!(" {name}={value}"));
            }
            text.push('\n');
        }
        text
    }

    pub fn at(&self, level: tracing::Level) -> Vec<Captured> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.level == level)
            .cloned()
            .collect()
    }
}

pub struct Fields<'a>(pub &'a mut BTreeMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

/// The global subscriber's layer: routes each event to its thread's collector, if any.
pub struct Route;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Route {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let Some(events) = COLLECTOR.with(|c| c.borrow().clone()) else {
            return;
        };
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        let message = fields.remove("message").unwrap_or_default();
        events.0.lock().unwrap().push(Captured {
            level: *event.metadata().level(),
            message,
            fields,
        });
    }
}

/// How long a read on a real socket may take before the test fails.
pub const WIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// A request with `headers` and an empty body.
pub fn app_req(method: Method, uri: &str, headers: &[(&str, &str)]) -> Request<AxumBody> {
    let mut builder = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(AxumBody::empty()).expect("valid request")
}

pub fn app_get(uri: &str) -> Request<AxumBody> {
    app_req(Method::GET, uri, &[])
}

/// One request through `app`.
pub async fn app_send(app: &Router, request: Request<AxumBody>) -> Response<AxumBody> {
    match app.clone().oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// The whole body as app_text.
pub async fn app_text(response: Response<AxumBody>) -> String {
    let bytes = body(response).await.expect("a body without errors");
    String::from_utf8(bytes.to_vec()).expect("a UTF-8 body")
}

/// Every `Cache-Status` member, joined (empty when there is none).
pub fn statuses<B>(response: &Response<B>) -> String {
    response
        .headers()
        .get_all(&CACHE_STATUS)
        .iter()
        .map(|v| v.to_str().unwrap_or("<non-ascii>").to_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn header_of<B>(response: &Response<B>, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().expect("ascii header").to_owned())
}

pub fn cache_info<B>(response: &Response<B>) -> Option<CacheInfo> {
    response.extensions().get::<CacheInfo>().copied()
}

/// A response with `status`, `headers` and `body`.
pub fn app_respond(
    status: StatusCode,
    headers: &[(&str, &str)],
    body: impl Into<AxumBody>,
) -> Response<AxumBody> {
    let mut builder = Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(body.into()).expect("valid response")
}

/// `len` bytes that differ from their neighbours, so a wrong slice shows.
pub fn patterned_vec(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

/// A response as read off the wire.
#[derive(Debug)]
pub struct Wire {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Wire {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn cache_status(&self) -> String {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("cache-status"))
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Sends `raw` (which should say `Connection: close`) on a new connection and reads the answer
/// to the end of the stream. `Err` when the connection closes without a whole response, which
/// is what a panic in the server's connection task looks like.
pub async fn exchange(addr: SocketAddr, raw: &str, head: bool) -> Result<Wire, String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    stream
        .write_all(raw.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    match timeout(WIRE_TIMEOUT, stream.read_to_end(&mut bytes)).await {
        Err(_) => return Err(format!("no end of response in {WIRE_TIMEOUT:?}")),
        // A reset after some bytes: parse what came.
        Ok(Err(e)) if bytes.is_empty() => return Err(format!("connection failed: {e}")),
        Ok(_) => {}
    }
    parse_wire(&bytes, head)
}

pub fn parse_wire(bytes: &[u8], head: bool) -> Result<Wire, String> {
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            format!(
                "connection closed without a whole response (a panic?): {:?}",
                String::from_utf8_lossy(bytes)
            )
        })?;
    let head_text = String::from_utf8_lossy(&bytes[..split]).into_owned();
    let mut lines = head_text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let rest = &bytes[split + 4..];
    let mut wire = Wire {
        status,
        headers,
        body: Vec::new(),
    };
    if head || status == 304 || status == 204 || (100..200).contains(&status) {
        return Ok(wire);
    }
    if wire
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
    {
        wire.body = dechunk(rest)?;
    } else if let Some(len) = wire.header("content-length") {
        let len: usize = len.parse().map_err(|_| format!("Content-Length {len:?}"))?;
        if rest.len() < len {
            return Err(format!("body cut at {} of {len} bytes", rest.len()));
        }
        wire.body = rest[..len].to_vec();
    } else {
        wire.body = rest.to_vec();
    }
    Ok(wire)
}

pub fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunked body cut in a size line")?;
        let size_text = String::from_utf8_lossy(&rest[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("chunk size {size_text:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if rest.len() < size + 2 {
            return Err("chunked body cut in a chunk".into());
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// A plain `GET` of `target` with `extra` header lines, closing the connection after it.
pub fn raw_get(target: &str, host: &str, extra: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")
}

pub async fn body_text(response: Answer) -> Result<String, BoxError> {
    Ok(String::from_utf8(body(response).await?.to_vec())?)
}

/// An axum handler that "scrapes" for 5 s (seed: 3–8 seconds) and answers `{name} v{n}`.
pub fn scraper(
    name: &'static str,
    calls: &Calls,
) -> routing::MethodRouter<(), std::convert::Infallible> {
    let calls = calls.clone();
    routing::get(move || {
        let n = calls.record();
        async move {
            tokio::time::sleep(secs(5)).await;
            format!("{name} v{n}")
        }
    })
}

#[derive(Debug)]
pub struct DbDown;

impl std::fmt::Display for DbDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("database unavailable")
    }
}

impl std::error::Error for DbDown {}

/// Sends `request` and returns the response with how long (on the paused clock) it took.
pub async fn timed<S>(service: S, request: Request<ReqBody>) -> Result<(Answer, Duration), BoxError>
where
    S: Service<Request<ReqBody>, Response = Answer, Error = BoxError>,
{
    let started = Instant::now();
    let response = service.oneshot(request).await?;
    Ok((response, started.elapsed()))
}

/// Every request lands in exactly one of these.
pub fn requests(stats: &Stats) -> u64 {
    stats.fresh_hits
        + stats.stale_hits
        + stats.misses
        + stats.collapsed
        + stats.bypasses
        + stats.stale_if_error
}

/// The origin [`fixed_origin`] builds.
pub type FixedOrigin =
    tower::util::BoxCloneService<Request<ReqBody>, Response<Full<Bytes>>, std::io::Error>;

/// An origin answering every request with `status`, `headers` and the body `call <n>` (or
/// `body` when given); counts its calls.
pub fn fixed_origin(
    headers: Vec<(HeaderName, HeaderValue)>,
    status: StatusCode,
    body: Option<Bytes>,
) -> (FixedOrigin, Calls) {
    let calls = Calls::default();
    let counter = calls.clone();
    let headers = Arc::new(headers);
    let service = service_fn(move |_request: Request<ReqBody>| {
        let n = counter.record();
        let headers = Arc::clone(&headers);
        let body = body
            .clone()
            .unwrap_or_else(|| Bytes::from(format!("call {n}")));
        async move {
            let mut response = Response::new(Full::new(body));
            *response.status_mut() = status;
            for (name, value) in headers.iter() {
                response.headers_mut().append(name.clone(), value.clone());
            }
            Ok::<_, std::io::Error>(response)
        }
    });
    (tower::util::BoxCloneService::new(service), calls)
}

/// An answer read whole: status, `CacheInfo`, headers and body.
pub struct Whole {
    pub status: StatusCode,
    pub info: CacheInfo,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Whole {
    /// Status, `CacheInfo` and body.
    pub fn parts(self) -> (StatusCode, CacheInfo, Bytes) {
        (self.status, self.info, self.body)
    }
}

/// Sends `request` through `service` (which must not fail) and reads the answer whole. Every
/// answer carries a `Cache-Status` and a `CacheInfo`.
pub async fn send_whole<S>(service: &S, request: Request<ReqBody>) -> Whole
where
    S: Service<Request<ReqBody>, Response = Response<tower_swr::SwrBody<Full<Bytes>>>> + Clone,
    S::Error: std::fmt::Debug,
{
    let response = tower::ServiceExt::oneshot(service.clone(), request)
        .await
        .expect("the origin never fails here");
    assert!(response.headers().contains_key(&CACHE_STATUS));
    let (parts, body) = response.into_parts();
    Whole {
        status: parts.status,
        info: *parts
            .extensions
            .get::<CacheInfo>()
            .expect("every answer has a CacheInfo"),
        headers: parts.headers,
        body: body.collect().await.expect("in memory").to_bytes(),
    }
}

/// A generous limit for waiting on real time (real sockets, multi-threaded runtimes): tests poll
/// for the condition they need and call [`Deadline::tick`] between tries instead of sleeping a
/// fixed time before asserting.
pub struct Deadline {
    until: std::time::Instant,
    what: String,
}

impl Deadline {
    /// `what` names the condition awaited; it is the panic message when the deadline passes.
    pub fn after(limit: Duration, what: impl Into<String>) -> Self {
        Self {
            until: std::time::Instant::now() + limit,
            what: what.into(),
        }
    }

    /// Waits 20 ms of real time before the next try; panics once the deadline has passed.
    pub async fn tick(&self) {
        assert!(
            std::time::Instant::now() < self.until,
            "timed out waiting for {}",
            self.what
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A shared tier in one process (a stand-in for Redis) for the engine's `SharedTier` seam:
/// `delay` makes every call take that long (a network), `hang` makes a `get` never answer,
/// `gets` counts lookups, a `claim_gate` holds the next lock request until notified (the
/// tier has no lock: every claim is then answered `Open`).
#[derive(Default)]
pub struct MapTier<V> {
    pub map: Mutex<std::collections::HashMap<String, (V, tower_swr::engine::Lifetime)>>,
    pub delay: Duration,
    pub hang: AtomicBool,
    pub gets: AtomicUsize,
    pub claim_gate: Mutex<Option<Arc<tokio::sync::Notify>>>,
}

impl<V: Clone + Send + Sync + 'static> tower_swr::engine::SharedTier<String, V> for MapTier<V> {
    fn get<'a>(
        &'a self,
        key: &'a String,
    ) -> tower_swr::engine::TierFuture<'a, Option<(V, tower_swr::engine::Lifetime)>> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            if self.hang.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            self.map.lock().unwrap().get(key).cloned()
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a String,
        value: &'a V,
        lifetime: &'a tower_swr::engine::Lifetime,
    ) -> tower_swr::engine::TierFuture<'a, ()> {
        Box::pin(async move {
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            let entry = (value.clone(), *lifetime);
            self.map.lock().unwrap().insert(key.clone(), entry);
        })
    }

    fn remove<'a>(&'a self, key: &'a String) -> tower_swr::engine::TierFuture<'a, ()> {
        Box::pin(async move {
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            self.map.lock().unwrap().remove(key);
        })
    }

    fn claim<'a>(
        &'a self,
        _key: &'a String,
    ) -> tower_swr::engine::TierFuture<'a, tower_swr::engine::Claim> {
        let gate = self.claim_gate.lock().unwrap().take();
        Box::pin(async move {
            if let Some(gate) = gate {
                gate.notified().await;
            }
            tower_swr::engine::Claim::Open
        })
    }
}

/// Waits (real time, polling every 10 ms) until `condition` holds, up to 10 s: for what real
/// sockets and servers do (the Redis tier's tests).
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// An origin answering `v<call number>` after `delay` (real or paused time), with
/// `cache_control`.
pub fn slow_origin(
    delay: std::time::Duration,
    cache_control: &'static str,
) -> (impl OriginService, Calls) {
    origin(move |n, _request| async move {
        tokio::time::sleep(delay).await;
        Ok(reply_cc(format!("v{n}"), cache_control))
    })
}
