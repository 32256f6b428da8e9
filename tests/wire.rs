//! The layer behind a real server (axum + hyper on loopback), spoken to with hand-written
//! HTTP/1.1 and HTTP/1.0 over a raw `TcpStream`, so the bytes on the wire are checked exactly:
//! framing (`Content-Length` / chunked), HEAD, 304, 206, `Age`, keep-alive, event streams.
//! Real sockets need real time: waits poll for their condition under a generous deadline.

mod common;

use axum::body::Body;
use axum::routing::get;
use axum::{routing, Router};
use bytes::Bytes;
use common::Calls;
use common::*;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use tower_swr::SwrLayer;

/// How long any single read may take before the test fails (generous: CI machines are slow).
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The body of `/fixed`: 100 bytes, each position distinct enough to check slices.
fn fixed_body() -> String {
    (0..100u8).map(|i| char::from(b'a' + i % 26)).collect()
}

const LAST_MODIFIED: &str = "Mon, 01 Jan 2024 00:00:00 GMT";

/// A body of several frames and no known length (served chunked), like `Body::from_stream`.
struct Chunks(VecDeque<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.pop_front().map(|chunk| Ok(Frame::data(chunk))))
    }
}

/// `parts` as a chunked response with `Cache-Control: cache_control`.
fn chunked_response(parts: &[&str], cache_control: &'static str) -> Response<Body> {
    let chunks = parts
        .iter()
        .map(|p| Bytes::copy_from_slice(p.as_bytes()))
        .collect();
    let mut response = Response::new(Body::new(Chunks(chunks)));
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    response
}

/// `/fixed`: 100 bytes, fresh for 60 s, with validators. `/chunked`: the same bytes in three
/// chunks of unknown length, cacheable. `/nostore-chunked`: chunked, `no-store`.
/// `/short`: fresh for 1 s, then stale for 30 s; the body names the call.
fn e2e_app(calls: &Calls, layer: SwrLayer) -> Router {
    let fixed = {
        let calls = calls.clone();
        move || {
            calls.record();
            async move {
                (
                    [
                        (header::CACHE_CONTROL, "max-age=60"),
                        (header::ETAG, ETAG),
                        (header::LAST_MODIFIED, LAST_MODIFIED),
                        (header::CONTENT_TYPE, "text/plain"),
                    ],
                    fixed_body(),
                )
            }
        }
    };
    let chunked = {
        let calls = calls.clone();
        move || {
            calls.record();
            async move {
                let body = fixed_body();
                chunked_response(&[&body[..10], &body[10..60], &body[60..]], "max-age=60")
            }
        }
    };
    let nostore = {
        let calls = calls.clone();
        move || {
            calls.record();
            async move { chunked_response(&["abc", "defgh"], "no-store") }
        }
    };
    let short = {
        let calls = calls.clone();
        move || {
            let n = calls.record();
            async move {
                (
                    [(
                        header::CACHE_CONTROL,
                        "max-age=1, stale-while-revalidate=30",
                    )],
                    format!("short v{n}"),
                )
            }
        }
    };
    Router::new()
        .route("/fixed", get(fixed))
        .route("/chunked", get(chunked))
        .route("/nostore-chunked", get(nostore))
        .route("/short", get(short))
        .layer(layer)
}

/// A response as read off the wire.
#[derive(Debug)]
struct Raw {
    status_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    chunked: bool,
}

impl Raw {
    fn status(&self) -> u16 {
        self.status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status code")
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The one value of `name`; fails if it is repeated.
    fn one(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(all.len() <= 1, "{name} repeated: {all:?}\n{self:#?}");
        all.first().copied()
    }

    fn content_length(&self) -> Option<usize> {
        self.one("content-length")
            .map(|v| v.trim().parse().expect("a numeric Content-Length"))
    }

    fn age(&self) -> Option<u64> {
        self.one("age")
            .map(|v| v.trim().parse().expect("a numeric Age"))
    }

    fn cache_status(&self) -> String {
        self.all("cache-status").join(", ")
    }

    /// Framing that every response must have: one `Date`, at most one `Content-Length`, and
    /// never both `Content-Length` and `Transfer-Encoding`.
    fn assert_sane(&self) {
        assert_eq!(self.all("date").len(), 1, "one Date: {self:#?}");
        let lengths = self.all("content-length").len();
        assert!(lengths <= 1, "one Content-Length at most: {self:#?}");
        assert!(
            !(lengths == 1 && self.one("transfer-encoding").is_some()),
            "Content-Length and Transfer-Encoding together: {self:#?}"
        );
        assert!(self.all("age").len() <= 1, "one Age at most: {self:#?}");
    }
}

/// One client connection.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, raw: &str) {
        self.stream
            .write_all(raw.as_bytes())
            .await
            .expect("write raw_request");
    }

    /// Reads more bytes into the buffer; 0 at end of stream.
    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 8192];
        let n = timeout(READ_TIMEOUT, self.stream.read(&mut chunk))
            .await
            .expect("the server answered in time")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    async fn take_line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8(self.buf[..i].to_vec()).expect("ASCII line");
                self.buf.drain(..i + 2);
                return line;
            }
            assert!(
                self.fill().await > 0,
                "connection closed mid-line: {:?}",
                self.buf
            );
        }
    }

    async fn take_exact(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(
                self.fill().await > 0,
                "connection closed after {} of {n} body bytes",
                self.buf.len()
            );
        }
        self.buf.drain(..n).collect()
    }

    /// Reads one response. `no_body`: the raw_request was `HEAD` (or the status forbids a body).
    async fn response(&mut self, no_body: bool) -> Raw {
        let status_line = self.take_line().await;
        let mut headers = Vec::new();
        loop {
            let line = self.take_line().await;
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("a header line");
            headers.push((name.to_owned(), value.trim().to_owned()));
        }
        let mut raw = Raw {
            status_line,
            headers,
            body: Vec::new(),
            chunked: false,
        };
        let status = raw.status();
        if no_body || status == 304 || status == 204 || (100..200).contains(&status) {
            return raw;
        }
        if raw
            .one("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
        {
            raw.chunked = true;
            loop {
                let size_line = self.take_line().await;
                let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
                    .expect("a chunk size");
                if size == 0 {
                    // Trailers, then the empty line.
                    while !self.take_line().await.is_empty() {}
                    break;
                }
                let chunk = self.take_exact(size).await;
                raw.body.extend_from_slice(&chunk);
                assert_eq!(self.take_line().await, "", "CRLF after a chunk");
            }
        } else if let Some(len) = raw.content_length() {
            raw.body = self.take_exact(len).await;
        } else {
            // Delimited by the end of the connection.
            while self.fill().await > 0 {}
            raw.body = std::mem::take(&mut self.buf);
        }
        raw
    }

    /// Nothing more arrives within a short while: no stray body bytes after a response.
    async fn assert_quiet(&mut self) {
        assert!(
            self.buf.is_empty(),
            "stray bytes: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        let mut chunk = [0u8; 1024];
        match timeout(Duration::from_millis(300), self.stream.read(&mut chunk)).await {
            Err(_) => {}
            Ok(Ok(0)) => panic!("the server closed a keep-alive connection"),
            Ok(Ok(n)) => panic!(
                "stray bytes after the response: {:?}",
                String::from_utf8_lossy(&chunk[..n])
            ),
            Ok(Err(e)) => panic!("read error: {e}"),
        }
    }

    /// The server closes the connection (after what was already read).
    async fn assert_closed(&mut self) {
        assert!(
            self.buf.is_empty(),
            "stray bytes: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        let mut chunk = [0u8; 1024];
        match timeout(READ_TIMEOUT, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(n)) => panic!(
                "bytes instead of a close: {:?}",
                String::from_utf8_lossy(&chunk[..n])
            ),
            Err(_) => panic!("the server kept the connection open"),
        }
    }

    /// Sends one HTTP/1.1 raw_request and reads its response.
    async fn exchange(&mut self, method: &str, path: &str, extra: &[&str]) -> Raw {
        self.send(&raw_request(method, path, extra)).await;
        let raw = self.response(method == "HEAD").await;
        raw.assert_sane();
        raw
    }
}

/// An HTTP/1.1 raw_request with `Host` and `extra` header lines.
fn raw_request(method: &str, path: &str, extra: &[&str]) -> String {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: test.local\r\n");
    for line in extra {
        text.push_str(line);
        text.push_str("\r\n");
    }
    text.push_str("\r\n");
    text
}

/// One event, then open forever (a subscriber waiting for the next event).
struct OneEventThenOpen {
    sent: bool,
}

impl http_body::Body for OneEventThenOpen {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent {
            Poll::Pending
        } else {
            self.sent = true;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                b"event: tick\ndata: one\n\n",
            )))))
        }
    }
}

fn events_app(calls: &Calls, cached: bool) -> Router {
    let calls = calls.clone();
    let router = Router::new().route(
        "/events",
        routing::get(move || {
            calls.record();
            async move {
                let mut response = Response::new(Body::new(OneEventThenOpen { sent: false }));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/event-stream"),
                );
                response
            }
        }),
    );
    if cached {
        router.layer(SwrLayer::new())
    } else {
        router
    }
}

/// How long an event may take to arrive (0.2 ms without the layer).
const EVENT_DEADLINE: Duration = Duration::from_secs(2);

/// Opens a subscription and returns the connection once `wanted` has arrived, or `Err` with
/// what came within [`EVENT_DEADLINE`].
async fn subscribe(addr: SocketAddr, request: &str, wanted: &[u8]) -> Result<TcpStream, String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut seen = Vec::new();
    let deadline = Instant::now() + EVENT_DEADLINE;
    loop {
        if seen.windows(wanted.len()).any(|w| w == wanted) {
            return Ok(stream);
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => {
                return Err(format!(
                    "not within {EVENT_DEADLINE:?}; got {:?}",
                    String::from_utf8_lossy(&seen)
                ))
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Err(format!(
                    "connection closed; got {:?}",
                    String::from_utf8_lossy(&seen)
                ))
            }
            Ok(Ok(n)) => seen.extend_from_slice(&chunk[..n]),
        }
    }
}

const SUBSCRIBE: &str =
    "GET /events HTTP/1.1\r\nHost: app.test\r\nAccept: text/event-stream\r\n\r\n";

#[tokio::test]
async fn head_miss_and_hit_advertise_the_get_length_without_a_body() {
    let calls = Calls::default();
    let addr = serve(e2e_app(&calls, SwrLayer::new().convert_head(true))).await;
    let mut conn = Conn::open(addr).await;

    let miss = conn.exchange("HEAD", "/fixed", &[]).await;
    assert_eq!(miss.status_line, "HTTP/1.1 200 OK");
    assert_eq!(miss.content_length(), Some(100), "{miss:#?}");
    assert_eq!(miss.one("transfer-encoding"), None);
    assert_eq!(miss.one("etag"), Some(ETAG));
    assert!(
        miss.cache_status().contains("fwd=uri-miss; stored"),
        "{miss:#?}"
    );
    conn.assert_quiet().await;

    let hit = conn.exchange("HEAD", "/fixed", &[]).await;
    assert_eq!(hit.status_line, "HTTP/1.1 200 OK");
    assert_eq!(hit.content_length(), Some(100), "{hit:#?}");
    assert_eq!(hit.one("transfer-encoding"), None);
    assert!(hit.cache_status().contains("hit"), "{hit:#?}");
    assert!(hit.age().is_some());
    conn.assert_quiet().await;

    // The GET on the same connection is in step, and answered from the HEAD's entry.
    let get = conn.exchange("GET", "/fixed", &[]).await;
    assert_eq!(get.status_line, "HTTP/1.1 200 OK");
    assert_eq!(get.content_length(), Some(100));
    assert_eq!(get.body, fixed_body().as_bytes());
    assert!(get.cache_status().contains("hit"), "{get:#?}");
    conn.assert_quiet().await;
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn head_then_get_pipelined_in_one_write_stay_in_step() {
    let calls = Calls::default();
    let addr = serve(e2e_app(&calls, SwrLayer::new().convert_head(true))).await;
    let mut conn = Conn::open(addr).await;
    for round in 0..2 {
        // Round 0: HEAD miss, GET collapsed or hit; round 1: both hits.
        let both = format!(
            "{}{}{}",
            raw_request("HEAD", "/chunked", &[]),
            raw_request("GET", "/chunked", &[]),
            raw_request("HEAD", "/fixed", &[]),
        );
        conn.send(&both).await;
        let head = conn.response(true).await;
        head.assert_sane();
        assert_eq!(head.status(), 200, "round {round}");
        assert_eq!(head.content_length(), Some(100), "round {round}: {head:#?}");
        let get = conn.response(false).await;
        get.assert_sane();
        assert_eq!(get.status(), 200, "round {round}");
        assert_eq!(get.body, fixed_body().as_bytes(), "round {round}");
        let head = conn.response(true).await;
        head.assert_sane();
        assert_eq!(head.content_length(), Some(100), "round {round}: {head:#?}");
        conn.assert_quiet().await;
    }
    assert_eq!(calls.get(), 2, "one origin call per path");
}

#[tokio::test]
async fn head_miss_on_a_chunked_handler_is_stored_and_advertises_its_length() {
    let calls = Calls::default();
    let addr = serve(e2e_app(&calls, SwrLayer::new().convert_head(true))).await;
    let mut conn = Conn::open(addr).await;
    let head = conn.exchange("HEAD", "/chunked", &[]).await;
    assert_eq!(head.status(), 200);
    assert_eq!(head.content_length(), Some(100), "{head:#?}");
    conn.assert_quiet().await;
    let get = conn.exchange("GET", "/chunked", &[]).await;
    assert!(!get.chunked, "replayed from memory with a length: {get:#?}");
    assert_eq!(get.content_length(), Some(100));
    assert_eq!(get.body, fixed_body().as_bytes());
    conn.assert_quiet().await;
    assert_eq!(calls.get(), 1);
}

/// Without the layer, axum answers a `HEAD` to a handler whose body has no known length with
/// no `Content-Length` at all. Through the layer a `HEAD` miss is sent as `GET`; when the
/// response is not stored (`no-store`) `without_body_if` swaps the body for an empty one
/// without a `Content-Length`, and axum then derives `content-length: 0` from the empty body,
/// while a `GET` of the same resource carries 8 bytes.
#[tokio::test]
async fn head_of_an_unstored_chunked_response_does_not_claim_an_empty_body() {
    let calls = Calls::default();
    let addr = serve(e2e_app(&calls, SwrLayer::new())).await;
    let mut conn = Conn::open(addr).await;
    let get = conn.exchange("GET", "/nostore-chunked", &[]).await;
    assert_eq!(get.body, b"abcdefgh");
    let head = conn.exchange("HEAD", "/nostore-chunked", &[]).await;
    assert_eq!(head.status(), 200);
    assert!(
        head.content_length().is_none() || head.content_length() == Some(8),
        "HEAD says Content-Length {:?}, GET sends 8 bytes: {head:#?}",
        head.content_length()
    );
    conn.assert_quiet().await;
}

/// The same with a cacheable chunked body that is over `max_body_bytes`: not stored, streamed
/// to a `GET`, and a `HEAD` gets `content-length: 0`.
#[tokio::test]
async fn head_of_an_oversized_chunked_response_does_not_claim_an_empty_body() {
    let calls = Calls::default();
    let addr = serve(e2e_app(&calls, SwrLayer::new().max_body_bytes(40))).await;
    let mut conn = Conn::open(addr).await;
    let get = conn.exchange("GET", "/chunked", &[]).await;
    assert_eq!(get.body, fixed_body().as_bytes());
    let head = conn.exchange("HEAD", "/chunked", &[]).await;
    assert_eq!(head.status(), 200);
    assert!(
        head.content_length().is_none() || head.content_length() == Some(100),
        "HEAD says Content-Length {:?}, GET sends 100 bytes: {head:#?}",
        head.content_length()
    );
    conn.assert_quiet().await;
}

/// The control for the two tests above: the same routes without the layer answer `HEAD`
/// with no `Content-Length` (axum derives none from a body of unknown length); with
/// `convert_head(false)` the layer passes the `HEAD` through and agrees.
#[tokio::test]
async fn control_head_of_a_chunked_body_has_no_length_without_conversion() {
    let calls = Calls::default();
    let plain = Router::new().route(
        "/nostore-chunked",
        get(|| async { chunked_response(&["abc", "defgh"], "no-store") }),
    );
    for addr in [
        serve(plain).await,
        serve(e2e_app(&calls, SwrLayer::new().convert_head(false))).await,
    ] {
        let mut conn = Conn::open(addr).await;
        let head = conn.exchange("HEAD", "/nostore-chunked", &[]).await;
        assert_eq!(head.status(), 200);
        assert_eq!(head.content_length(), None, "{head:#?}");
        conn.assert_quiet().await;
    }
}

#[tokio::test]
async fn head_through_hyper_client_matches_get() {
    let calls = Calls::default();
    let addr = serve(e2e_app(&calls, SwrLayer::new().convert_head(true))).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    for path in ["/fixed", "/chunked"] {
        for _ in 0..2 {
            let raw_request = axum::http::Request::head(format!("http://{addr}{path}"))
                .body(Empty::new())
                .expect("a raw_request");
            let response = timeout(READ_TIMEOUT, client.request(raw_request))
                .await
                .expect("in time")
                .expect("a response");
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(
                response
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .map(|v| v.as_bytes()),
                Some(&b"100"[..]),
                "{path}"
            );
            let body = response.into_body().collect().await.expect("a body");
            assert!(body.to_bytes().is_empty());
        }
        let response = timeout(
            READ_TIMEOUT,
            client.get(format!("http://{addr}{path}").parse().expect("a uri")),
        )
        .await
        .expect("in time")
        .expect("a response");
        let body = response.into_body().collect().await.expect("a body");
        assert_eq!(body.to_bytes(), fixed_body().as_bytes());
    }
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn conditional_get_answered_304_from_cache_on_the_wire() {
    let calls = Calls::default();
    let addr = serve(e2e_app(&calls, SwrLayer::new())).await;
    let mut conn = Conn::open(addr).await;

    // A conditional miss: stored, then answered 304.
    let miss = conn
        .exchange("GET", "/fixed", &["If-None-Match: \"v1\""])
        .await;
    assert_eq!(miss.status_line, "HTTP/1.1 304 Not Modified", "{miss:#?}");
    conn.assert_quiet().await;

    for extra in [
        "If-None-Match: \"v1\"",
        "If-None-Match: W/\"v1\", \"other\"",
        "If-Modified-Since: Tue, 02 Jan 2024 00:00:00 GMT",
    ] {
        let raw = conn.exchange("GET", "/fixed", &[extra]).await;
        assert_eq!(
            raw.status_line, "HTTP/1.1 304 Not Modified",
            "{extra}: {raw:#?}"
        );
        assert_eq!(raw.one("etag"), Some(ETAG), "{extra}");
        assert_eq!(raw.one("last-modified"), Some(LAST_MODIFIED), "{extra}");
        assert_eq!(raw.one("cache-control"), Some("max-age=60"));
        assert!(raw.age().is_some(), "{extra}: {raw:#?}");
        assert!(raw.cache_status().contains("hit"), "{extra}: {raw:#?}");
        assert!(
            raw.content_length().is_none_or(|len| len == 100),
            "{extra}: {raw:#?}"
        );
        assert_eq!(raw.one("transfer-encoding"), None);
        // No body: the next exchange parses.
        conn.assert_quiet().await;
    }

    // Not matching: the whole body.
    let full = conn
        .exchange("GET", "/fixed", &["If-None-Match: \"v2\""])
        .await;
    assert_eq!(full.status(), 200);
    assert_eq!(full.body, fixed_body().as_bytes());
    let head304 = conn
        .exchange("HEAD", "/fixed", &["If-None-Match: \"v1\""])
        .await;
    assert_eq!(head304.status(), 304);
    conn.assert_quiet().await;
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn range_requests_answered_206_from_cache_on_the_wire() {
    let calls = Calls::default();
    let addr = serve(e2e_app(&calls, SwrLayer::new())).await;
    let mut conn = Conn::open(addr).await;
    let body = fixed_body();

    // A range on a miss is stored whole and answered 206.
    let miss = conn.exchange("GET", "/fixed", &["Range: bytes=2-5"]).await;
    assert_eq!(
        miss.status_line, "HTTP/1.1 206 Partial Content",
        "{miss:#?}"
    );
    assert_eq!(miss.one("content-range"), Some("bytes 2-5/100"));
    assert_eq!(miss.content_length(), Some(4));
    assert_eq!(miss.body, &body.as_bytes()[2..6]);

    for (spec, start, end) in [
        ("bytes=2-5", 2, 6),
        ("bytes=90-", 90, 100),
        ("bytes=-7", 93, 100),
        ("bytes=95-500", 95, 100),
        ("bytes=0-0", 0, 1),
    ] {
        let raw = conn
            .exchange("GET", "/fixed", &[&format!("Range: {spec}")])
            .await;
        assert_eq!(raw.status(), 206, "{spec}: {raw:#?}");
        assert_eq!(
            raw.one("content-range"),
            Some(format!("bytes {start}-{}/100", end - 1).as_str()),
            "{spec}"
        );
        assert_eq!(raw.content_length(), Some(end - start), "{spec}");
        assert_eq!(raw.body, &body.as_bytes()[start..end], "{spec}");
        assert!(raw.cache_status().contains("hit"), "{spec}: {raw:#?}");
        assert!(raw.age().is_some(), "{spec}");
        conn.assert_quiet().await;
    }

    // If-Range with the strong ETag: 206; with another: 200 whole.
    let matching = conn
        .exchange("GET", "/fixed", &["Range: bytes=0-9", "If-Range: \"v1\""])
        .await;
    assert_eq!(matching.status(), 206);
    assert_eq!(matching.body, &body.as_bytes()[..10]);
    let other = conn
        .exchange("GET", "/fixed", &["Range: bytes=0-9", "If-Range: \"v0\""])
        .await;
    assert_eq!(other.status(), 200);
    assert_eq!(other.body, body.as_bytes());

    // HEAD with a range: the range is ignored (RFC 9110 §14.2: range
    // handling is defined for GET only), so a 200 head of the whole body.
    let head = conn
        .exchange("HEAD", "/fixed", &["Range: bytes=10-19"])
        .await;
    assert_eq!(head.status(), 200, "{head:#?}");
    assert_eq!(head.content_length(), Some(100));
    assert_eq!(head.one("content-range"), None);
    conn.assert_quiet().await;

    // Unsatisfiable: 416 with `bytes */100` and no body.
    let unsat = conn.exchange("GET", "/fixed", &["Range: bytes=100-"]).await;
    assert_eq!(unsat.status(), 416, "{unsat:#?}");
    assert_eq!(unsat.one("content-range"), Some("bytes */100"));
    assert_eq!(unsat.content_length(), Some(0));
    assert!(unsat.body.is_empty());
    conn.assert_quiet().await;

    // Still in step: a plain GET.
    let get = conn.exchange("GET", "/fixed", &[]).await;
    assert_eq!(get.body, body.as_bytes());
    conn.assert_quiet().await;
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn range_on_a_chunked_handler_is_served_from_the_stored_body() {
    let calls = Calls::default();
    let addr = serve(e2e_app(&calls, SwrLayer::new())).await;
    let mut conn = Conn::open(addr).await;
    let body = fixed_body();
    for _ in 0..2 {
        let raw = conn
            .exchange("GET", "/chunked", &["Range: bytes=5-64"])
            .await;
        assert_eq!(raw.status(), 206, "{raw:#?}");
        assert!(!raw.chunked);
        assert_eq!(raw.content_length(), Some(60));
        assert_eq!(raw.one("content-range"), Some("bytes 5-64/100"));
        assert_eq!(raw.body, &body.as_bytes()[5..65]);
        conn.assert_quiet().await;
    }
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn age_and_cache_status_on_hits_and_stale_hits() {
    let calls = Calls::default();
    let addr = serve(e2e_app(&calls, SwrLayer::new())).await;
    let mut conn = Conn::open(addr).await;

    let miss = conn.exchange("GET", "/short", &[]).await;
    assert_eq!(miss.body, b"short v1");
    assert_eq!(miss.cache_status(), "tower-swr; fwd=uri-miss; stored");
    assert_eq!(miss.age(), Some(0));

    let hit = conn.exchange("GET", "/short", &[]).await;
    assert_eq!(hit.body, b"short v1");
    assert!(
        hit.cache_status().starts_with("tower-swr; hit; ttl="),
        "{hit:#?}"
    );
    assert!(hit.age().is_some_and(|age| age <= 1), "{hit:#?}");
    assert_eq!(hit.content_length(), Some(8));

    // Poll until the entry has gone stale (max-age=1 on real time); fresh hits call no origin.
    let deadline = Deadline::after(secs(10), "the entry to go stale");
    let stale = loop {
        let raw = conn.exchange("GET", "/short", &[]).await;
        assert_eq!(
            raw.body, b"short v1",
            "stale-while-revalidate answers the old body"
        );
        if raw.cache_status().starts_with("tower-swr; hit; ttl=-") {
            break raw;
        }
        assert!(
            raw.cache_status().starts_with("tower-swr; hit; ttl="),
            "{raw:#?}"
        );
        assert_eq!(calls.get(), 1, "a fresh hit called the origin");
        deadline.tick().await;
    };
    assert!(
        stale.age().is_some_and(|age| (1..=3).contains(&age)),
        "{stale:#?}"
    );
    conn.assert_quiet().await;

    // The background refresh lands; the next answer is the new body, young again.
    let deadline = Deadline::after(secs(10), "the background refresh to land");
    let fresh = loop {
        let raw = conn.exchange("GET", "/short", &[]).await;
        if raw.body == b"short v2" {
            break raw;
        }
        deadline.tick().await;
    };
    assert!(fresh.age().is_some_and(|age| age <= 1), "{fresh:#?}");
    assert_eq!(fresh.content_length(), Some(8));
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn handler_date_and_length_are_not_duplicated_on_hits() {
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let handler = {
        let date = date.clone();
        move || {
            let date = date.clone();
            async move {
                let mut headers = HeaderMap::new();
                headers.insert(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("max-age=60"),
                );
                headers.insert(header::DATE, HeaderValue::try_from(date).expect("a date"));
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
                headers.insert(header::AGE, HeaderValue::from_static("3"));
                (headers, "hello")
            }
        }
    };
    let addr = serve(
        Router::new()
            .route("/dated", get(handler))
            .layer(SwrLayer::new()),
    )
    .await;
    let mut conn = Conn::open(addr).await;
    for _ in 0..3 {
        let raw = conn.exchange("GET", "/dated", &[]).await;
        assert_eq!(raw.body, b"hello");
        assert_eq!(raw.one("date"), Some(date.as_str()));
        assert_eq!(raw.content_length(), Some(5));
        assert!(
            raw.age().is_some_and(|age| (3..=5).contains(&age)),
            "{raw:#?}"
        );
        let head = conn.exchange("HEAD", "/dated", &[]).await;
        assert_eq!(head.content_length(), Some(5));
        conn.assert_quiet().await;
    }
}

#[tokio::test]
async fn a_body_over_max_body_bytes_streams_intact_every_time() {
    let big: String = (0..200_000u32)
        .map(|i| char::from(b'0' + (i % 10) as u8))
        .collect();
    let calls = Calls::default();
    let fixed = {
        let (big, calls) = (big.clone(), calls.clone());
        move || {
            calls.record();
            let big = big.clone();
            async move { ([(header::CACHE_CONTROL, "max-age=60")], big) }
        }
    };
    let chunked = {
        let (big, calls) = (big.clone(), calls.clone());
        move || {
            calls.record();
            let big = big.clone();
            async move {
                let parts: Vec<&str> = (0..big.len())
                    .step_by(7_000)
                    .map(|i| &big[i..(i + 7_000).min(big.len())])
                    .collect();
                chunked_response(&parts, "max-age=60")
            }
        }
    };
    let addr = serve(
        Router::new()
            .route("/big", get(fixed))
            .route("/big-chunked", get(chunked))
            .layer(SwrLayer::new().max_body_bytes(64 * 1024)),
    )
    .await;
    let mut conn = Conn::open(addr).await;
    for _ in 0..2 {
        let raw = conn.exchange("GET", "/big", &[]).await;
        assert_eq!(raw.status(), 200);
        assert_eq!(raw.content_length(), Some(big.len()));
        assert!(raw.body == big.as_bytes(), "the big body arrives intact");
        assert!(raw.cache_status().contains("fwd=uri-miss"), "{raw:#?}");
        let raw = conn.exchange("GET", "/big-chunked", &[]).await;
        assert_eq!(raw.status(), 200);
        assert!(raw.chunked, "unknown length stays chunked: {raw:#?}");
        assert!(
            raw.body == big.as_bytes(),
            "the big chunked body arrives intact"
        );
        conn.assert_quiet().await;
    }
    // HEAD of the fixed-length big body keeps its length.
    let head = conn.exchange("HEAD", "/big", &[]).await;
    assert_eq!(head.content_length(), Some(big.len()), "{head:#?}");
    conn.assert_quiet().await;
    assert_eq!(calls.get(), 5, "nothing over the limit is stored");
}

#[tokio::test]
async fn a_chunked_handler_is_replayed_with_a_length() {
    let calls = Calls::default();
    let addr = serve(e2e_app(&calls, SwrLayer::new())).await;
    let mut conn = Conn::open(addr).await;
    let miss = conn.exchange("GET", "/chunked", &[]).await;
    assert_eq!(miss.body, fixed_body().as_bytes());
    assert!(miss.cache_status().contains("stored"));
    for _ in 0..3 {
        let hit = conn.exchange("GET", "/chunked", &[]).await;
        assert!(!hit.chunked, "{hit:#?}");
        assert_eq!(hit.content_length(), Some(100));
        assert_eq!(hit.body, fixed_body().as_bytes());
        assert!(hit.cache_status().contains("hit"));
        conn.assert_quiet().await;
    }
    // An unstored chunked body passes through chunked, twice.
    for _ in 0..2 {
        let raw = conn.exchange("GET", "/nostore-chunked", &[]).await;
        assert_eq!(raw.body, b"abcdefgh");
        conn.assert_quiet().await;
    }
    assert_eq!(calls.get(), 3);
}

#[tokio::test]
async fn an_empty_cached_body_is_framed_on_get_and_head() {
    let addr = serve(
        Router::new()
            .route(
                "/empty",
                get(|| async { ([(header::CACHE_CONTROL, "max-age=60")], "") }),
            )
            .layer(SwrLayer::new()),
    )
    .await;
    let mut conn = Conn::open(addr).await;
    for _ in 0..2 {
        let get = conn.exchange("GET", "/empty", &[]).await;
        assert_eq!(get.status(), 200);
        assert_eq!(get.content_length(), Some(0), "{get:#?}");
        let head = conn.exchange("HEAD", "/empty", &[]).await;
        assert_eq!(head.content_length(), Some(0), "{head:#?}");
        conn.assert_quiet().await;
    }
}

#[tokio::test]
async fn connection_close_requests_are_answered_and_closed() {
    let calls = Calls::default();
    let addr = serve(e2e_app(&calls, SwrLayer::new())).await;
    for (method, path) in [
        ("GET", "/fixed"),
        ("GET", "/fixed"),
        ("HEAD", "/fixed"),
        ("GET", "/chunked"),
        ("HEAD", "/chunked"),
        ("GET", "/chunked"),
        ("GET", "/nostore-chunked"),
    ] {
        let mut conn = Conn::open(addr).await;
        let raw = conn.exchange(method, path, &["Connection: close"]).await;
        assert_eq!(raw.status(), 200, "{method} {path}");
        assert_eq!(
            raw.one("connection")
                .map(str::to_ascii_lowercase)
                .as_deref(),
            Some("close"),
            "{method} {path}: {raw:#?}"
        );
        if method == "GET" && path != "/nostore-chunked" {
            assert_eq!(raw.body, fixed_body().as_bytes(), "{method} {path}");
        }
        conn.assert_closed().await;
    }
    assert_eq!(calls.get(), 3);
}

#[tokio::test]
async fn http_1_0_requests_get_http_1_0_framing() {
    let calls = Calls::default();
    let addr = serve(e2e_app(&calls, SwrLayer::new())).await;
    let fixed = fixed_body();
    for path in [
        "/fixed",
        "/fixed",
        "/chunked",
        "/chunked",
        "/nostore-chunked",
    ] {
        let mut conn = Conn::open(addr).await;
        conn.send(&format!("GET {path} HTTP/1.0\r\nHost: test.local\r\n\r\n"))
            .await;
        let raw = conn.response(false).await;
        raw.assert_sane();
        assert!(
            raw.status_line.starts_with("HTTP/1.0 200"),
            "{path}: {raw:#?}"
        );
        assert!(!raw.chunked, "no chunked coding to HTTP/1.0: {raw:#?}");
        let expected: &[u8] = if path == "/nostore-chunked" {
            b"abcdefgh"
        } else {
            fixed.as_bytes()
        };
        assert_eq!(raw.body, expected, "{path}");
        conn.assert_closed().await;

        // HEAD over HTTP/1.0.
        let mut conn = Conn::open(addr).await;
        conn.send(&format!("HEAD {path} HTTP/1.0\r\nHost: test.local\r\n\r\n"))
            .await;
        let head = conn.response(true).await;
        head.assert_sane();
        assert!(head.status_line.starts_with("HTTP/1.0 200"), "{head:#?}");
        if path != "/nostore-chunked" {
            assert_eq!(head.content_length(), Some(100), "{path}: {head:#?}");
        }
        conn.assert_closed().await;
    }

    // HTTP/1.0 keep-alive on a hit.
    let mut conn = Conn::open(addr).await;
    for _ in 0..2 {
        conn.send("GET /fixed HTTP/1.0\r\nHost: test.local\r\nConnection: keep-alive\r\n\r\n")
            .await;
        let raw = conn.response(false).await;
        raw.assert_sane();
        assert!(raw.status_line.starts_with("HTTP/1.0 200"), "{raw:#?}");
        assert_eq!(raw.content_length(), Some(100));
        assert_eq!(raw.body, fixed_body().as_bytes());
        conn.assert_quiet().await;
    }
    // Without a Host at all.
    let mut conn = Conn::open(addr).await;
    conn.send("GET /fixed HTTP/1.0\r\n\r\n").await;
    let raw = conn.response(false).await;
    assert!(raw.status_line.starts_with("HTTP/1.0 200"), "{raw:#?}");
    assert_eq!(raw.body, fixed_body().as_bytes());
}

#[tokio::test]
async fn many_mixed_requests_on_one_keep_alive_connection() {
    let calls = Calls::default();
    let addr = serve(e2e_app(&calls, SwrLayer::new().convert_head(true))).await;
    let mut conn = Conn::open(addr).await;
    let body = fixed_body();
    for round in 0..3 {
        for path in ["/fixed", "/chunked"] {
            let head = conn.exchange("HEAD", path, &[]).await;
            assert_eq!(
                head.content_length(),
                Some(100),
                "{round} {path}: {head:#?}"
            );
            let get = conn.exchange("GET", path, &[]).await;
            assert_eq!(get.body, body.as_bytes(), "{round} {path}");
            let ranged = conn.exchange("GET", path, &["Range: bytes=-3"]).await;
            assert_eq!(ranged.body, &body.as_bytes()[97..], "{round} {path}");
            let head_range = conn.exchange("HEAD", path, &["Range: bytes=1-2"]).await;
            assert_eq!(head_range.status(), 200, "HEAD ignores Range");
            assert_eq!(head_range.content_length(), Some(100));
            let not_modified = conn
                .exchange("GET", "/fixed", &["If-None-Match: \"v1\""])
                .await;
            assert_eq!(not_modified.status(), 304);
            let nostore = conn.exchange("GET", "/nostore-chunked", &[]).await;
            assert_eq!(nostore.body, b"abcdefgh");
        }
    }
    conn.assert_quiet().await;
}

/// An entry that expires and is revalidated with a 304 from the handler: `HEAD` and `GET`
/// keep the stored length and body.
#[tokio::test]
async fn revalidated_entry_keeps_its_framing() {
    let calls = Calls::default();
    let handler = {
        let calls = calls.clone();
        move |headers: HeaderMap| {
            calls.record();
            async move {
                let mut response = if headers
                    .get(header::IF_NONE_MATCH)
                    .is_some_and(|v| v.as_bytes() == ETAG.as_bytes())
                {
                    let mut r = Response::new(Body::empty());
                    *r.status_mut() = StatusCode::NOT_MODIFIED;
                    r
                } else {
                    chunked_response(&["revalidated ", "body"], "max-age=1, must-revalidate")
                };
                let h = response.headers_mut();
                h.insert(header::ETAG, HeaderValue::from_static(ETAG));
                h.insert(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("max-age=1, must-revalidate"),
                );
                response
            }
        }
    };
    let addr = serve(
        Router::new()
            .route("/r", get(handler))
            .layer(SwrLayer::new().convert_head(true)),
    )
    .await;
    let mut conn = Conn::open(addr).await;
    let first = conn.exchange("GET", "/r", &[]).await;
    assert_eq!(first.body, b"revalidated body");
    // Poll with HEAD until the entry (max-age=1, real time) is revalidated; every answer on the
    // way, fresh hit or revalidated, keeps the stored length.
    let deadline = Deadline::after(secs(10), "the entry to be revalidated");
    loop {
        let head = conn.exchange("HEAD", "/r", &[]).await;
        assert_eq!(head.status(), 200, "{head:#?}");
        assert_eq!(head.content_length(), Some(16), "{head:#?}");
        if head.cache_status().contains("fwd-status=304") {
            break;
        }
        assert_eq!(calls.get(), 1, "a fresh hit called the origin");
        deadline.tick().await;
    }
    conn.assert_quiet().await;
    let get = conn.exchange("GET", "/r", &[]).await;
    assert_eq!(get.content_length(), Some(16), "{get:#?}");
    assert_eq!(get.body, b"revalidated body");
    conn.assert_quiet().await;
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn event_stream_first_event_reaches_the_client_promptly() {
    let bare = serve(events_app(&Calls::default(), false)).await;
    let control = subscribe(bare, SUBSCRIBE, b"data: one").await;
    assert!(
        control.is_ok(),
        "the setup, without the layer: {}",
        control.unwrap_err()
    );

    let calls = Calls::default();
    let addr = serve(events_app(&calls, true)).await;
    let first = subscribe(addr, SUBSCRIBE, b"data: one").await;
    assert!(first.is_ok(), "first subscriber: {}", first.unwrap_err());
}

#[tokio::test]
async fn second_event_stream_subscriber_gets_its_own_stream_promptly() {
    let calls = Calls::default();
    let addr = serve(events_app(&calls, true)).await;
    let first = subscribe(addr, SUBSCRIBE, b"data: one").await;
    // Whether or not the first one got its event, the second opens while it is still open.
    let second = subscribe(addr, SUBSCRIBE, b"data: one").await;
    assert!(second.is_ok(), "second subscriber: {}", second.unwrap_err());
    assert_eq!(
        calls.get(),
        2,
        "each subscriber has its own stream from the handler"
    );
    drop(first);
}

#[tokio::test]
async fn head_of_an_event_stream_route_answers_promptly() {
    let calls = Calls::default();
    let addr = serve(events_app(&calls, true)).await;
    let head = subscribe(
        addr,
        "HEAD /events HTTP/1.1\r\nHost: app.test\r\n\r\n",
        b"\r\n\r\n",
    )
    .await;
    assert!(head.is_ok(), "HEAD /events: {}", head.unwrap_err());
    let event = subscribe(addr, SUBSCRIBE, b"data: one").await;
    assert!(
        event.is_ok(),
        "a subscriber after the HEAD: {}",
        event.unwrap_err()
    );
}

/// A raw upstream that answers every request (reading its `Content-Length` body) with a
/// `103 Early Hints` carrying `Link`, then a cacheable `200`; counts the requests.
async fn early_hints_upstream() -> (SocketAddr, Calls) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("an address");
    let calls = Calls::default();
    let counter = calls.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut bytes = Vec::new();
                let mut buf = [0u8; 1024];
                let head_end = loop {
                    if let Some(at) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
                        break at + 4;
                    }
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => bytes.extend_from_slice(&buf[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&bytes[..head_end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length:"))
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or(0);
                while bytes.len() < head_end + length {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => bytes.extend_from_slice(&buf[..n]),
                    }
                }
                let n = counter.record();
                let body = format!("final {n}");
                let answer = format!(
                    "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n\
                     HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, calls)
}

/// The reverse proxy example's shape: `SwrLayer::shared_cache()` over hyper-util's client to
/// one upstream.
fn proxy_to(upstream: SocketAddr) -> Router {
    let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
    let forward = tower::service_fn(move |request: http::Request<Body>| {
        let client = client.clone();
        async move {
            let (mut parts, body) = request.into_parts();
            let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
            parts.uri = format!("http://{upstream}{path}").parse().expect("a URI");
            Ok::<_, Infallible>(
                match client.request(http::Request::from_parts(parts, body)).await {
                    Ok(response) => response.map(Body::new),
                    Err(_) => Response::builder()
                        .status(StatusCode::BAD_GATEWAY)
                        .body(Body::empty())
                        .expect("a response"),
                },
            )
        }
    });
    Router::new().fallback_service(
        tower::ServiceBuilder::new()
            .layer(SwrLayer::shared_cache())
            .service(forward),
    )
}

/// 1xx through a caching proxy built on hyper 1.x. Its client reads an upstream's interim
/// responses and hands the layer only the final one, so a `103 Early Hints` is never stored
/// nor taken for the answer (nor are its `Link` fields merged into it). hyper's server has no
/// way for a service to send a 1xx (hyperium/hyper#3815, #4114 are open), so the 103 is not
/// forwarded either: the client's first status line is the final `200`.
#[tokio::test]
async fn early_hints_from_upstream_are_neither_stored_nor_forwarded() {
    let (upstream, calls) = early_hints_upstream().await;
    let addr = serve(proxy_to(upstream)).await;
    let first = exchange(addr, &raw_get("/hints", "proxy.test", ""), false)
        .await
        .expect("an answer");
    assert_eq!(
        first.status, 200,
        "the first status line is the final response"
    );
    assert_eq!(first.body, b"final 1");
    assert!(first.header("link").is_none(), "{:?}", first.headers);
    assert!(
        first.cache_status().ends_with("stored"),
        "{}",
        first.cache_status()
    );
    let second = exchange(addr, &raw_get("/hints", "proxy.test", ""), false)
        .await
        .expect("an answer");
    assert_eq!(
        (second.status, second.body.as_slice()),
        (200, &b"final 1"[..])
    );
    assert!(
        second.cache_status().contains("hit"),
        "{}",
        second.cache_status()
    );
    assert!(second.header("link").is_none());
    assert_eq!(calls.get(), 1);
}

/// The one 1xx a hyper 1.x server does send: `100 Continue`, itself, when the service first
/// reads the body of a request that asked for it (hyperium/hyper#2119). Through the layer (an
/// unsafe method passes straight to the upstream client, which reads the body), it reaches the
/// client before the final response.
#[tokio::test]
async fn expect_100_continue_is_answered_through_the_layer() {
    let (upstream, calls) = early_hints_upstream().await;
    let addr = serve(proxy_to(upstream)).await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            b"POST /form HTTP/1.1\r\nHost: proxy.test\r\nExpect: 100-continue\r\n\
              Content-Length: 4\r\nConnection: close\r\n\r\n",
        )
        .await
        .expect("write the head");
    let mut bytes = Vec::new();
    let mut buf = [0u8; 256];
    while !bytes.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = timeout(READ_TIMEOUT, stream.read(&mut buf))
            .await
            .expect("a 100 Continue before the body is sent")
            .expect("read");
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&bytes));
        bytes.extend_from_slice(&buf[..n]);
    }
    assert!(
        bytes.starts_with(b"HTTP/1.1 100 Continue\r\n"),
        "{:?}",
        String::from_utf8_lossy(&bytes)
    );
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    let mut rest = bytes.split_off(split);
    stream.write_all(b"a=1&").await.expect("write the body");
    timeout(READ_TIMEOUT, stream.read_to_end(&mut rest))
        .await
        .expect("the final response")
        .expect("read");
    let last = parse_wire(&rest, false).expect("a final response");
    assert_eq!(last.status, 200);
    assert_eq!(last.body, b"final 1");
    assert_eq!(calls.get(), 1);
}
