//! Issue 11, read literally: `SwrLayer::new()` on whole axum applications the way users add it,
//! and what real apps put behind it (nested routers, HEAD handlers, WebSocket routes, event
//! streams, range-serving file handlers, rate limiters, slow origins, API keys).
//!
//! Black-box: only the public API. A paused tokio clock and `oneshot` on the `Router` where no
//! socket is needed; real servers (`axum::serve` on 127.0.0.1:0, real time) where the wire
//! matters (a panic that drops the connection, `Host` against the authority, event streams).
//!
//! Item 11 (custom credential headers) needs an API that does not exist yet: its tests are in
//! `tests/real_apps_credentials.rs`.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use axum::routing::{self, MethodFilter};
use axum::Router;
use bytes::Bytes;
use common::{body, settle, Calls, Gate};
use http_body::Frame;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{advance, timeout, Instant};
use tower::ServiceExt;
use tower_swr::{CacheInfo, CacheStatus, SwrLayer, CACHE_STATUS};

/// How long a read on a real socket may take before the test fails.
const WIRE_TIMEOUT: Duration = Duration::from_secs(10);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

// ---- requests and answers through `oneshot` ----

/// A request with `headers` and an empty body.
fn req(method: Method, uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::empty()).expect("valid request")
}

fn get(uri: &str) -> Request<Body> {
    req(Method::GET, uri, &[])
}

/// One request through `app`.
async fn send(app: &Router, request: Request<Body>) -> Response<Body> {
    match app.clone().oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// The whole body as text.
async fn text(response: Response<Body>) -> String {
    let bytes = body(response).await.expect("a body without errors");
    String::from_utf8(bytes.to_vec()).expect("a UTF-8 body")
}

/// Every `Cache-Status` member, joined (empty when there is none).
fn statuses<B>(response: &Response<B>) -> String {
    response
        .headers()
        .get_all(&CACHE_STATUS)
        .iter()
        .map(|v| v.to_str().unwrap_or("<non-ascii>").to_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

fn header_of<B>(response: &Response<B>, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().expect("ascii header").to_owned())
}

fn cache_info<B>(response: &Response<B>) -> Option<CacheInfo> {
    response.extensions().get::<CacheInfo>().copied()
}

/// A response with `status`, `headers` and `body`.
fn respond(status: StatusCode, headers: &[(&str, &str)], body: impl Into<Body>) -> Response<Body> {
    let mut builder = Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(body.into()).expect("valid response")
}

/// `len` bytes that differ from their neighbours, so a wrong slice shows.
fn patterned(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

/// The one `bytes=first-last` range of a request, clamped to `len` (enough for origins that
/// honour `Range` themselves in these tests).
fn requested_range(headers: &HeaderMap, len: usize) -> Option<(usize, usize)> {
    let spec = headers.get(header::RANGE)?.to_str().ok()?;
    let (first, last) = spec.strip_prefix("bytes=")?.split_once('-')?;
    let first: usize = first.trim().parse().ok()?;
    let last: usize = last.trim().parse().ok()?;
    (first <= last && first < len).then(|| (first, last.min(len - 1)))
}

// ---- real servers and a raw HTTP/1.1 client ----

/// Serves `app` on `127.0.0.1:0`; the server task ends with the test's runtime.
async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A response as read off the wire.
#[derive(Debug)]
struct Wire {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Wire {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn cache_status(&self) -> String {
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
async fn exchange(addr: SocketAddr, raw: &str, head: bool) -> Result<Wire, String> {
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

fn parse_wire(bytes: &[u8], head: bool) -> Result<Wire, String> {
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

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
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
fn raw_get(target: &str, host: &str, extra: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")
}

// =============================================================================================
// 1. A crash from one header: Range (and every other number) never reaches unchecked arithmetic
// =============================================================================================

/// `/file`: 100 bytes, fresh for 60 s, with an `ETag`.
fn file_app(calls: &Calls) -> Router {
    let calls = calls.clone();
    Router::new()
        .route(
            "/file",
            routing::get(move || {
                calls.record();
                async move {
                    respond(
                        StatusCode::OK,
                        &[
                            ("cache-control", "max-age=60"),
                            ("etag", "\"f1\""),
                            ("content-type", "application/octet-stream"),
                        ],
                        patterned(100),
                    )
                }
            }),
        )
        .layer(SwrLayer::new())
}

/// Serves [`file_app`], stores `/file` with a plain `GET`, then sends `range`.
async fn range_of_stored_file(range: &str) -> (Result<Wire, String>, SocketAddr, Calls) {
    let calls = Calls::default();
    let addr = serve(file_app(&calls)).await;
    let warm = exchange(addr, &raw_get("/file", "app.test", ""), false)
        .await
        .expect("the plain GET answers");
    assert_eq!(warm.status, 200);
    assert_eq!(warm.body, patterned(100));
    let ranged = exchange(
        addr,
        &raw_get("/file", "app.test", &format!("Range: {range}\r\n")),
        false,
    )
    .await;
    (ranged, addr, calls)
}

/// The server still answers plain requests (a panic took down only one connection, or none).
async fn assert_server_still_answers(addr: SocketAddr) {
    let after = exchange(addr, &raw_get("/file", "app.test", ""), false)
        .await
        .expect("the server answers after the range request");
    assert_eq!(after.status, 200);
    assert_eq!(after.body, patterned(100));
}

/// A 206 of the whole 100 bytes, or a 200 of them: both are right for a range covering all.
fn assert_whole_file(answer: &Wire, range: &str) {
    assert_eq!(
        answer.body,
        patterned(100),
        "{range}: the whole file, got {answer:?}"
    );
    match answer.status {
        200 => {}
        206 => assert_eq!(
            answer.header("content-range"),
            Some("bytes 0-99/100"),
            "{range}: {answer:?}"
        ),
        other => panic!("{range}: 200 or 206 of the whole file, got {other}: {answer:?}"),
    }
}

#[tokio::test]
async fn range_with_last_byte_u64_max_answers_the_tail_not_a_panic() {
    let range = "bytes=1-18446744073709551615";
    let (answer, addr, _) = range_of_stored_file(range).await;
    let answer = answer.unwrap_or_else(|e| panic!("{range}: {e}"));
    assert_eq!(answer.status, 206, "{answer:?}");
    assert_eq!(answer.header("content-range"), Some("bytes 1-99/100"));
    assert_eq!(answer.body, patterned(100)[1..].to_vec());
    assert_server_still_answers(addr).await;
}

#[tokio::test]
async fn range_from_zero_to_u64_max_answers_the_whole_body_with_a_true_content_range() {
    let range = "bytes=0-18446744073709551615";
    let (answer, addr, _) = range_of_stored_file(range).await;
    let answer = answer.unwrap_or_else(|e| panic!("{range}: {e}"));
    assert_whole_file(&answer, range);
    assert_server_still_answers(addr).await;
}

#[tokio::test]
async fn suffix_range_of_u64_max_answers_the_whole_body() {
    // RFC 9110 §14.1.2: a suffix longer than the representation selects all of it.
    let range = "bytes=-18446744073709551615";
    let (answer, addr, _) = range_of_stored_file(range).await;
    let answer = answer.unwrap_or_else(|e| panic!("{range}: {e}"));
    assert_whole_file(&answer, range);
    assert_server_still_answers(addr).await;
}

#[tokio::test]
async fn range_numbers_past_u64_are_ignored_or_refused_never_a_panic() {
    let calls = Calls::default();
    let addr = serve(file_app(&calls)).await;
    exchange(addr, &raw_get("/file", "app.test", ""), false)
        .await
        .expect("the plain GET answers");
    let mut wrong = Vec::new();
    for range in [
        "bytes=0-99999999999999999999999",
        "bytes=99999999999999999999999-",
        "bytes=-99999999999999999999999",
        "bytes=99999999999999999999999-99999999999999999999999",
        "bytes=18446744073709551615-18446744073709551615",
        "bytes=18446744073709551615-",
        "bytes=18446744073709551614-18446744073709551615",
        "bytes=0-0,18446744073709551615-",
    ] {
        let answer = exchange(
            addr,
            &raw_get("/file", "app.test", &format!("Range: {range}\r\n")),
            false,
        )
        .await;
        let ok = match &answer {
            Err(_) => false,
            Ok(a) if a.status == 200 => a.body == patterned(100),
            Ok(a) if a.status == 416 => true,
            // A range that covers the file, clamped, is right too; an empty or bogus slice not.
            Ok(a) if a.status == 206 => {
                a.body == patterned(100) && a.header("content-range") == Some("bytes 0-99/100")
                    || a.body == b"a".to_vec() && a.header("content-range") == Some("bytes 0-0/100")
                    || a.header("content-type")
                        .is_some_and(|t| t.contains("multipart"))
            }
            Ok(_) => false,
        };
        if !ok {
            wrong.push(format!("{range}: {answer:?}"));
        }
    }
    assert!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));
    assert_server_still_answers(addr).await;
}

/// Absurd numbers and dates in every field the layer parses, on both sides; each case on its
/// own layer and task, so a panic names its case.
#[tokio::test(start_paused = true)]
async fn absurd_numbers_and_dates_in_request_and_response_fields_never_panic() {
    const BIG: &str = "18446744073709551616";
    const HUGE: &str = "99999999999999999999999999999999999999";
    let far_future = "Fri, 31 Dec 9999 23:59:59 GMT";
    let epoch = "Thu, 01 Jan 1970 00:00:00 GMT";
    let max_cc = format!(
        "max-age={HUGE}, stale-while-revalidate={HUGE}, stale-if-error={HUGE}, s-maxage={BIG}"
    );
    let u64_cc = "max-age=18446744073709551615, stale-while-revalidate=18446744073709551615, \
                  stale-if-error=18446744073709551615";
    let response_cases: Vec<(&str, Vec<(String, String)>)> = vec![
        (
            "huge lifetimes",
            vec![("cache-control".into(), max_cc.clone())],
        ),
        (
            "u64::MAX lifetimes",
            vec![("cache-control".into(), u64_cc.into())],
        ),
        (
            "u64::MAX Age with u64::MAX lifetimes",
            vec![
                ("cache-control".into(), u64_cc.into()),
                ("age".into(), "18446744073709551615".into()),
            ],
        ),
        (
            "huge Age",
            vec![
                ("cache-control".into(), "max-age=60".into()),
                ("age".into(), HUGE.into()),
            ],
        ),
        (
            "Date in 9999, Expires at the epoch",
            vec![
                ("date".into(), far_future.into()),
                ("expires".into(), epoch.into()),
            ],
        ),
        (
            "Date at the epoch, Expires in 9999",
            vec![
                ("date".into(), epoch.into()),
                ("expires".into(), far_future.into()),
            ],
        ),
        (
            "Last-Modified at the epoch, Date in 9999 (heuristics)",
            vec![
                ("date".into(), far_future.into()),
                ("last-modified".into(), epoch.into()),
            ],
        ),
        (
            "Last-Modified in 9999",
            vec![("last-modified".into(), far_future.into())],
        ),
        (
            "Content-Length 2^64",
            vec![("content-length".into(), BIG.into())],
        ),
        (
            "Content-Length u64::MAX",
            vec![("content-length".into(), "18446744073709551615".into())],
        ),
    ];
    let request_cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("plain", vec![]),
        (
            "request Cache-Control",
            vec![(
                "cache-control",
                format!("max-age={HUGE}, max-stale={HUGE}, min-fresh={HUGE}"),
            )],
        ),
        (
            "request min-fresh u64::MAX",
            vec![("cache-control", "min-fresh=18446744073709551615".into())],
        ),
        (
            "If-Modified-Since 9999",
            vec![("if-modified-since", far_future.into())],
        ),
        (
            "If-Modified-Since epoch",
            vec![("if-modified-since", epoch.into())],
        ),
        (
            "If-Range date 9999 with a huge range",
            vec![
                ("if-range", far_future.into()),
                ("range", "bytes=1-18446744073709551615".into()),
            ],
        ),
        (
            "If-Range epoch with a suffix",
            vec![
                ("if-range", epoch.into()),
                ("range", "bytes=-18446744073709551615".into()),
            ],
        ),
        (
            "If-Range ETag with a past-u64 range",
            vec![
                ("if-range", "\"e\"".into()),
                ("range", format!("bytes={HUGE}-")),
            ],
        ),
        (
            "If-Unmodified-Since 9999",
            vec![("if-unmodified-since", far_future.into())],
        ),
    ];
    let mut panics = Vec::new();
    for preset in ["new", "shared_cache"] {
        for (response_case, response_headers) in &response_cases {
            for (request_case, request_headers) in &request_cases {
                let response_headers = response_headers.clone();
                let request_headers = request_headers.clone();
                let run = tokio::spawn(async move {
                    let layer = if preset == "new" {
                        SwrLayer::new()
                    } else {
                        SwrLayer::shared_cache()
                    };
                    let app = Router::new()
                        .route(
                            "/n",
                            routing::get(move || {
                                let response_headers = response_headers.clone();
                                async move {
                                    let mut response = Response::new(Body::from("0123456789"));
                                    for (n, v) in &response_headers {
                                        response.headers_mut().insert(
                                            header::HeaderName::from_bytes(n.as_bytes())
                                                .expect("name"),
                                            HeaderValue::from_str(v).expect("value"),
                                        );
                                    }
                                    response
                                        .headers_mut()
                                        .insert(header::ETAG, HeaderValue::from_static("\"e\""));
                                    response
                                }
                            }),
                        )
                        .layer(layer);
                    let headers: Vec<(&str, &str)> = request_headers
                        .iter()
                        .map(|(n, v)| (*n, v.as_str()))
                        .collect();
                    for step in 0..3 {
                        let response = send(&app, req(Method::GET, "/n", &headers)).await;
                        let status = response.status();
                        let _ = response.into_body().collect().await;
                        assert!(
                            [200, 206, 304, 412, 416].contains(&status.as_u16()),
                            "step {step}: status {status}"
                        );
                        advance(secs(120)).await;
                    }
                    let response = send(&app, get("/n")).await;
                    let _ = response.into_body().collect().await;
                });
                if let Err(e) = run.await {
                    panics.push(format!("{preset} / {response_case} / {request_case}: {e}"));
                }
            }
        }
    }
    assert!(
        panics.is_empty(),
        "{} cases panicked:\n{}",
        panics.len(),
        panics.join("\n")
    );
}

// =============================================================================================
// 2. Cross-host poisoning: key and origin agree on the host
// =============================================================================================

/// A page naming the host the handler sees (`Host`, as axum-extra's `Host` extractor reads it,
/// else the URI's authority), behind the layer or not.
fn host_echo_app(calls: &Calls, cached: bool) -> Router {
    let calls = calls.clone();
    let router = Router::new().route(
        "/",
        routing::get(move |headers: HeaderMap, uri: Uri| {
            calls.record();
            async move {
                let host = headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
                    .or_else(|| uri.authority().map(|a| a.to_string()))
                    .unwrap_or_else(|| "nobody".into());
                format!("welcome to {host}")
            }
        }),
    );
    if cached {
        router.layer(SwrLayer::new())
    } else {
        router
    }
}

const ATTACK_H1: &str =
    "GET http://victim.test/ HTTP/1.1\r\nHost: attacker.test\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn absolute_form_request_with_another_host_does_not_poison_the_authoritys_entry() {
    // Without the layer the handler does render attacker.test for this request.
    let control = serve(host_echo_app(&Calls::default(), false)).await;
    let bare = exchange(control, ATTACK_H1, false).await.expect("answer");
    assert!(
        String::from_utf8_lossy(&bare.body).contains("attacker.test"),
        "the setup: the handler reads Host: {bare:?}"
    );

    let calls = Calls::default();
    let addr = serve(host_echo_app(&calls, true)).await;
    let attack = exchange(addr, ATTACK_H1, false).await.expect("answer");
    assert_eq!(attack.status, 200, "{attack:?}");
    for round in 0..3 {
        let victim = exchange(addr, &raw_get("/", "victim.test", ""), false)
            .await
            .expect("answer");
        let page = String::from_utf8_lossy(&victim.body).into_owned();
        assert_eq!(victim.status, 200);
        assert!(
            !page.contains("attacker.test"),
            "victim.test's user (round {round}) was served attacker.test's page: {page:?} \
             ({})",
            victim.cache_status()
        );
        assert_eq!(page, "welcome to victim.test");
    }
}

/// One HTTP/2 (prior knowledge) request per connection, with an optional explicit `host`.
async fn h2_get(addr: SocketAddr, uri: &str, host: Option<&str>) -> (StatusCode, String) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let mut builder = Request::builder().uri(uri);
    if let Some(host) = host {
        builder = builder.header(header::HOST, host);
    }
    let request = builder.body(Empty::<Bytes>::new()).expect("request");
    let response = timeout(WIRE_TIMEOUT, sender.send_request(request))
        .await
        .expect("an answer in time")
        .expect("an answer");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn http2_authority_with_another_host_header_does_not_poison_the_authoritys_entry() {
    let control = serve(host_echo_app(&Calls::default(), false)).await;
    let (_, bare) = h2_get(control, "http://victim.test/", Some("attacker.test")).await;
    assert!(
        bare.contains("attacker.test"),
        "the setup: the host header reaches the handler over HTTP/2: {bare:?}"
    );

    let calls = Calls::default();
    let addr = serve(host_echo_app(&calls, true)).await;
    let (status, _) = h2_get(addr, "http://victim.test/", Some("attacker.test")).await;
    assert_eq!(status, StatusCode::OK);
    for round in 0..3 {
        let (status, page) = h2_get(addr, "http://victim.test/", None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            !page.contains("attacker.test"),
            "victim.test's user (round {round}) was served attacker.test's page: {page:?}"
        );
        assert_eq!(page, "welcome to victim.test");
    }
}

// =============================================================================================
// 3. A HEAD handler's answer never becomes the GET entry
// =============================================================================================

const PAGE: &str = "<html><body>the whole page, with every byte of it</body></html>";

fn page_and_meta_app(page_calls: &Calls, meta_calls: &Calls) -> Router {
    let page = {
        let calls = page_calls.clone();
        move || {
            calls.record();
            async move { respond(StatusCode::OK, &[("content-type", "text/html")], PAGE) }
        }
    };
    let meta = {
        let calls = meta_calls.clone();
        move || {
            calls.record();
            async move { respond(StatusCode::OK, &[("x-meta", "1")], Body::empty()) }
        }
    };
    Router::new()
        .route("/p", routing::get(page).head(meta))
        .layer(SwrLayer::new())
}

async fn assert_full_page(app: &Router, when: &str) {
    let response = send(app, get("/p")).await;
    assert_eq!(response.status(), StatusCode::OK, "{when}");
    let length = header_of(&response, "content-length");
    let status = statuses(&response);
    let page = text(response).await;
    assert_eq!(page, PAGE, "{when}: GET got another body ({status})");
    if let Some(length) = length {
        assert_eq!(length, PAGE.len().to_string(), "{when}: Content-Length");
    }
}

#[tokio::test(start_paused = true)]
async fn head_handler_answer_is_never_stored_as_the_get_entry() {
    let (page_calls, meta_calls) = (Calls::default(), Calls::default());
    let app = page_and_meta_app(&page_calls, &meta_calls);
    let head = send(&app, req(Method::HEAD, "/p", &[])).await;
    assert_eq!(head.status(), StatusCode::OK);
    assert!(text(head).await.is_empty(), "a HEAD answer has no body");
    settle().await;
    assert_full_page(&app, "GET after a HEAD").await;
    advance(secs(5)).await;
    assert_full_page(&app, "second GET after a HEAD").await;
    assert!(page_calls.get() >= 1, "the GET handler rendered the page");
}

#[tokio::test]
async fn head_first_then_get_on_the_wire_carries_the_pages_length() {
    let app = page_and_meta_app(&Calls::default(), &Calls::default());
    let addr = serve(app).await;
    let head = exchange(
        addr,
        "HEAD /p HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
        true,
    )
    .await
    .expect("HEAD answers");
    assert_eq!(head.status, 200);
    for round in 0..2 {
        let page = exchange(addr, &raw_get("/p", "app.test", ""), false)
            .await
            .expect("GET answers");
        assert_eq!(page.status, 200);
        assert_eq!(
            String::from_utf8_lossy(&page.body),
            PAGE,
            "GET {round} after a HEAD: {page:?}"
        );
        if let Some(length) = page.header("content-length") {
            assert_eq!(length, PAGE.len().to_string(), "{page:?}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn get_then_head_then_get_still_serves_the_full_page() {
    let (page_calls, meta_calls) = (Calls::default(), Calls::default());
    let app = page_and_meta_app(&page_calls, &meta_calls);
    assert_full_page(&app, "first GET").await;
    let head = send(&app, req(Method::HEAD, "/p", &[])).await;
    assert_eq!(head.status(), StatusCode::OK);
    assert!(text(head).await.is_empty(), "a HEAD answer has no body");
    advance(secs(1)).await;
    assert_full_page(&app, "GET after GET and HEAD").await;
}

// =============================================================================================
// 4. Upgrades (WebSocket and others) and CONNECT bypass the cache and never join a flight
// =============================================================================================

/// `/chat`: the page to plain `GET`s (after `gate` opens, if given), `101 Switching Protocols`
/// to requests asking for an upgrade, like a hand-written WebSocket route. `/chat` also takes
/// `CONNECT` (extended CONNECT, RFC 8441).
fn chat_app(page_calls: &Calls, upgrade_calls: &Calls, gate: Option<Gate>) -> (Router, SwrLayer) {
    let page_calls = page_calls.clone();
    let upgrade_calls = upgrade_calls.clone();
    let connect_calls = upgrade_calls.clone();
    let layer = SwrLayer::new();
    let handler = move |headers: HeaderMap| {
        let page_calls = page_calls.clone();
        let upgrade_calls = upgrade_calls.clone();
        let gate = gate.clone();
        async move {
            if let Some(protocol) = headers.get(header::UPGRADE) {
                upgrade_calls.record();
                let protocol = protocol.to_str().unwrap_or("websocket").to_owned();
                return respond(
                    StatusCode::SWITCHING_PROTOCOLS,
                    &[
                        ("upgrade", protocol.as_str()),
                        ("connection", "upgrade"),
                        ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
                    ],
                    Body::empty(),
                );
            }
            let n = page_calls.record();
            if let Some(gate) = gate {
                gate.wait().await;
            }
            respond(
                StatusCode::OK,
                &[("content-type", "text/html")],
                format!("chat page v{n}"),
            )
        }
    };
    let connect = move || {
        let n = connect_calls.record();
        // A 2xx to CONNECT has no body (axum drops it): the call's number is in a header.
        async move {
            respond(
                StatusCode::OK,
                &[("x-tunnel", &n.to_string())],
                Body::empty(),
            )
        }
    };
    let app = Router::new()
        .route(
            "/chat",
            routing::get(handler).on(MethodFilter::CONNECT, connect),
        )
        .layer(layer.clone());
    (app, layer)
}

fn websocket_handshake() -> Request<Body> {
    req(
        Method::GET,
        "/chat",
        &[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
    )
}

fn assert_not_from_cache<B>(response: &Response<B>, what: &str) {
    let status = statuses(response);
    assert!(
        !status.contains("hit") && !status.contains("fwd=stale") && !status.contains("collapsed"),
        "{what}: answered from the cache ({status})"
    );
    if let Some(info) = cache_info(response) {
        assert!(
            !matches!(
                info.status,
                CacheStatus::Fresh
                    | CacheStatus::Stale
                    | CacheStatus::StaleIfError
                    | CacheStatus::Collapsed
            ),
            "{what}: answered from the cache ({info:?})"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn websocket_handshake_after_the_page_is_cached_reaches_the_handler_and_gets_101() {
    let (page_calls, upgrade_calls) = (Calls::default(), Calls::default());
    let (app, _) = chat_app(&page_calls, &upgrade_calls, None);
    assert_eq!(text(send(&app, get("/chat")).await).await, "chat page v1");
    advance(secs(1)).await;
    assert_eq!(text(send(&app, get("/chat")).await).await, "chat page v1");
    for round in 1..=2 {
        let handshake = send(&app, websocket_handshake()).await;
        assert_eq!(
            handshake.status(),
            StatusCode::SWITCHING_PROTOCOLS,
            "handshake {round} after the page was cached ({})",
            statuses(&handshake)
        );
        assert_eq!(
            upgrade_calls.get(),
            round,
            "the handshake reached the handler"
        );
        assert_not_from_cache(&handshake, "the handshake");
    }
    // The page is still cached for plain GETs.
    assert_eq!(text(send(&app, get("/chat")).await).await, "chat page v1");
    assert_eq!(page_calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn websocket_handshake_while_a_get_miss_is_in_flight_does_not_join_it() {
    let (page_calls, upgrade_calls) = (Calls::default(), Calls::default());
    let gate = Gate::new();
    let (app, _) = chat_app(&page_calls, &upgrade_calls, Some(gate.clone()));
    let pending_get = tokio::spawn({
        let app = app.clone();
        async move { text(send(&app, get("/chat")).await).await }
    });
    settle().await;
    assert_eq!(page_calls.get(), 1, "the GET miss is at the origin");

    let handshake = timeout(secs(1), send(&app, websocket_handshake()))
        .await
        .expect("the handshake is answered without waiting for the GET's origin call");
    assert_eq!(handshake.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(upgrade_calls.get(), 1);
    assert_not_from_cache(&handshake, "the handshake");

    gate.open();
    assert_eq!(pending_get.await.expect("the GET ends"), "chat page v1");
}

#[tokio::test(start_paused = true)]
async fn websocket_handshake_on_a_cold_path_is_not_stored_and_every_handshake_upgrades() {
    let (page_calls, upgrade_calls) = (Calls::default(), Calls::default());
    let (app, _) = chat_app(&page_calls, &upgrade_calls, None);
    let handshake = send(&app, websocket_handshake()).await;
    assert_eq!(handshake.status(), StatusCode::SWITCHING_PROTOCOLS);
    settle().await;
    let page = send(&app, get("/chat")).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(text(page).await, "chat page v1");
    let again = send(&app, websocket_handshake()).await;
    assert_eq!(again.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(upgrade_calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn any_upgrade_request_bypasses_a_cached_page() {
    let (page_calls, upgrade_calls) = (Calls::default(), Calls::default());
    let (app, _) = chat_app(&page_calls, &upgrade_calls, None);
    assert_eq!(text(send(&app, get("/chat")).await).await, "chat page v1");
    for (n, protocol) in ["h2c", "IRC/6.9", "websocket"].into_iter().enumerate() {
        let upgrade = send(
            &app,
            req(
                Method::GET,
                "/chat",
                &[("connection", "keep-alive, Upgrade"), ("upgrade", protocol)],
            ),
        )
        .await;
        assert_eq!(
            upgrade.status(),
            StatusCode::SWITCHING_PROTOCOLS,
            "Upgrade: {protocol} ({})",
            statuses(&upgrade)
        );
        assert_eq!(upgrade_calls.get(), n + 1, "Upgrade: {protocol}");
        assert_not_from_cache(&upgrade, protocol);
    }
}

#[tokio::test(start_paused = true)]
async fn connect_and_extended_connect_bypass_the_cache() {
    let (page_calls, upgrade_calls) = (Calls::default(), Calls::default());
    let (app, _) = chat_app(&page_calls, &upgrade_calls, None);
    assert_eq!(text(send(&app, get("/chat")).await).await, "chat page v1");
    for n in 1..=2 {
        let response = send(&app, req(Method::CONNECT, "/chat", &[])).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_not_from_cache(&response, "CONNECT");
        assert_eq!(
            header_of(&response, "x-tunnel"),
            Some(n.to_string()),
            "CONNECT {n}"
        );
    }
    for n in 3..=4 {
        let mut request = req(Method::CONNECT, "/chat", &[("sec-websocket-version", "13")]);
        request
            .extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        let response = send(&app, request).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_not_from_cache(&response, "extended CONNECT");
        assert_eq!(
            header_of(&response, "x-tunnel"),
            Some(n.to_string()),
            "extended CONNECT {n}"
        );
    }
}

// =============================================================================================
// 5. Nested routers: clones of one layer inside two `nest` prefixes keep their own entries
// =============================================================================================

fn nested_app(a_calls: &Calls, b_calls: &Calls) -> (Router, SwrLayer) {
    let layer = SwrLayer::new();
    let a = {
        let calls = a_calls.clone();
        move || {
            let n = calls.record();
            async move { format!("a's x v{n}") }
        }
    };
    let b = {
        let calls = b_calls.clone();
        move || {
            let n = calls.record();
            async move { format!("b's x v{n}") }
        }
    };
    let app = Router::new()
        .nest(
            "/a",
            Router::new()
                .route("/x", routing::get(a))
                .layer(layer.clone()),
        )
        .nest(
            "/b",
            Router::new()
                .route("/x", routing::get(b))
                .layer(layer.clone()),
        );
    (app, layer)
}

#[tokio::test(start_paused = true)]
async fn clones_of_one_layer_in_two_nests_keep_each_prefixs_own_entries() {
    let (a_calls, b_calls) = (Calls::default(), Calls::default());
    let (app, _) = nested_app(&a_calls, &b_calls);
    assert_eq!(text(send(&app, get("/a/x")).await).await, "a's x v1");
    assert_eq!(text(send(&app, get("/b/x")).await).await, "b's x v1");
    advance(secs(1)).await;
    assert_eq!(text(send(&app, get("/a/x")).await).await, "a's x v1");
    assert_eq!(text(send(&app, get("/b/x")).await).await, "b's x v1");
    assert_eq!((a_calls.get(), b_calls.get()), (1, 1), "one call per route");
}

#[tokio::test(start_paused = true)]
async fn purge_takes_the_path_the_client_sees_inside_a_nest() {
    let (a_calls, b_calls) = (Calls::default(), Calls::default());
    let (app, layer) = nested_app(&a_calls, &b_calls);
    assert_eq!(text(send(&app, get("/a/x")).await).await, "a's x v1");
    assert_eq!(text(send(&app, get("/b/x")).await).await, "b's x v1");
    let purged = layer.handle().purge("/a/x");
    assert!(purged >= 1, "purge(\"/a/x\") found nothing");
    let after = send(&app, get("/a/x")).await;
    assert_eq!(text(after).await, "a's x v2", "the purged /a/x is a miss");
    assert_eq!(text(send(&app, get("/b/x")).await).await, "b's x v1");
    assert_eq!(b_calls.get(), 1, "/b/x stays stored");
}

#[tokio::test(start_paused = true)]
async fn purge_prefix_takes_the_nest_prefix() {
    let (a_calls, b_calls) = (Calls::default(), Calls::default());
    let (app, layer) = nested_app(&a_calls, &b_calls);
    assert_eq!(text(send(&app, get("/a/x")).await).await, "a's x v1");
    assert_eq!(text(send(&app, get("/b/x")).await).await, "b's x v1");
    assert!(layer.handle().purge_prefix("/b/") >= 1, "nothing under /b/");
    assert_eq!(text(send(&app, get("/b/x")).await).await, "b's x v2");
    assert_eq!(text(send(&app, get("/a/x")).await).await, "a's x v1");
}

// =============================================================================================
// 6. Event streams are never stored and stream straight through
// =============================================================================================

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

// =============================================================================================
// 7. Transient 4xx (408, 429) are treated like 5xx for refreshes and stale-if-error
// =============================================================================================

/// `/r`: a good 200 (`cache_control`) on the first call, then `status` on every later call.
fn flaky_app(calls: &Calls, cache_control: &'static str, status: StatusCode) -> Router {
    let calls = calls.clone();
    Router::new()
        .route(
            "/r",
            routing::get(move || {
                let n = calls.record();
                async move {
                    if n == 1 {
                        respond(
                            StatusCode::OK,
                            &[("cache-control", cache_control)],
                            "the good page",
                        )
                    } else {
                        respond(
                            status,
                            &[("retry-after", "1")],
                            format!("{status} from the origin"),
                        )
                    }
                }
            }),
        )
        .layer(SwrLayer::new())
}

async fn refresh_answered_keeps_the_stale_entry(status: StatusCode) {
    let calls = Calls::default();
    let app = flaky_app(
        &calls,
        "max-age=1, stale-while-revalidate=60, stale-if-error=300",
        status,
    );
    assert_eq!(text(send(&app, get("/r")).await).await, "the good page");
    advance(secs(2)).await;
    let stale = send(&app, get("/r")).await;
    assert_eq!(stale.status(), StatusCode::OK);
    assert_eq!(text(stale).await, "the good page");
    settle().await;
    assert_eq!(calls.get(), 2, "the stale answer started one refresh");
    // The refresh was answered `status`; the next users still get the good page.
    for step in 0..3 {
        advance(secs(1)).await;
        let next = send(&app, get("/r")).await;
        let cache_status = statuses(&next);
        assert_eq!(
            next.status(),
            StatusCode::OK,
            "step {step}: a refresh answered {status} replaced the good entry ({cache_status})"
        );
        assert_eq!(text(next).await, "the good page", "step {step}");
        settle().await;
    }
}

#[tokio::test(start_paused = true)]
async fn refresh_answered_408_keeps_the_stale_entry() {
    refresh_answered_keeps_the_stale_entry(StatusCode::REQUEST_TIMEOUT).await;
}

#[tokio::test(start_paused = true)]
async fn refresh_answered_429_keeps_the_stale_entry() {
    refresh_answered_keeps_the_stale_entry(StatusCode::TOO_MANY_REQUESTS).await;
}

/// The control: what the layer already does for a 503.
#[tokio::test(start_paused = true)]
async fn refresh_answered_503_keeps_the_stale_entry() {
    refresh_answered_keeps_the_stale_entry(StatusCode::SERVICE_UNAVAILABLE).await;
}

async fn miss_answered_inside_stale_if_error_serves_the_stale_copy(status: StatusCode) {
    let calls = Calls::default();
    let app = flaky_app(
        &calls,
        "max-age=1, stale-while-revalidate=1, stale-if-error=300",
        status,
    );
    assert_eq!(text(send(&app, get("/r")).await).await, "the good page");
    // Past the stale-while-revalidate window, inside stale-if-error: a miss.
    advance(secs(10)).await;
    let answer = send(&app, get("/r")).await;
    assert_eq!(calls.get(), 2, "the miss asked the origin");
    let cache_status = statuses(&answer);
    assert_eq!(
        answer.status(),
        StatusCode::OK,
        "the origin's {status} went to the client instead of the stale copy ({cache_status})"
    );
    assert!(
        cache_status.contains("fwd=stale")
            || cache_info(&answer).is_some_and(|i| i.status == CacheStatus::StaleIfError),
        "the answer says it is stale: {cache_status}"
    );
    assert_eq!(text(answer).await, "the good page");
}

#[tokio::test(start_paused = true)]
async fn miss_answered_408_inside_stale_if_error_serves_the_stale_copy() {
    miss_answered_inside_stale_if_error_serves_the_stale_copy(StatusCode::REQUEST_TIMEOUT).await;
}

#[tokio::test(start_paused = true)]
async fn miss_answered_429_inside_stale_if_error_serves_the_stale_copy() {
    miss_answered_inside_stale_if_error_serves_the_stale_copy(StatusCode::TOO_MANY_REQUESTS).await;
}

/// The control: what the layer already does for a 504.
#[tokio::test(start_paused = true)]
async fn miss_answered_504_inside_stale_if_error_serves_the_stale_copy() {
    miss_answered_inside_stale_if_error_serves_the_stale_copy(StatusCode::GATEWAY_TIMEOUT).await;
}

// =============================================================================================
// 8. Ranges and conditionals reach the origin when the answer will not be stored
// =============================================================================================

const ETAG: &str = "\"v1\"";

/// `/f`: `len` bytes with `cache_control` (if any) and an `ETag`; honours a single `Range`
/// (206) and a matching `If-None-Match` (304), like a file server.
fn file_server_app(calls: &Calls, len: usize, cache_control: Option<&'static str>) -> Router {
    let calls = calls.clone();
    Router::new().route(
        "/f",
        routing::get(move |headers: HeaderMap| {
            calls.record();
            async move {
                let mut common = vec![("etag", ETAG), ("accept-ranges", "bytes")];
                if let Some(cc) = cache_control {
                    common.push(("cache-control", cc));
                }
                if headers
                    .get(header::IF_NONE_MATCH)
                    .is_some_and(|v| v.as_bytes() == ETAG.as_bytes())
                {
                    return respond(StatusCode::NOT_MODIFIED, &common, Body::empty());
                }
                let bytes = patterned(len);
                if let Some((first, last)) = requested_range(&headers, len) {
                    let content_range = format!("bytes {first}-{last}/{len}");
                    let mut with_range = common.clone();
                    with_range.push(("content-range", content_range.as_str()));
                    return respond(
                        StatusCode::PARTIAL_CONTENT,
                        &with_range,
                        bytes[first..=last].to_vec(),
                    );
                }
                respond(StatusCode::OK, &common, bytes)
            }
        }),
    )
}

async fn assert_gets_the_range(app: &Router, headers: &[(&str, &str)], len: usize, what: &str) {
    for round in 0..2 {
        let mut all = vec![("range", "bytes=0-99")];
        all.extend_from_slice(headers);
        let response = send(app, req(Method::GET, "/f", &all)).await;
        let cache_status = statuses(&response);
        assert_eq!(
            response.status(),
            StatusCode::PARTIAL_CONTENT,
            "{what}, request {round}: the client asked for 100 bytes ({cache_status})"
        );
        assert_eq!(
            header_of(&response, "content-range").as_deref(),
            Some(format!("bytes 0-99/{len}").as_str()),
            "{what}"
        );
        let bytes = body(response).await.expect("body");
        assert_eq!(bytes.len(), 100, "{what}: 100 bytes");
        assert_eq!(bytes.to_vec(), patterned(100), "{what}");
    }
}

#[tokio::test(start_paused = true)]
async fn range_of_a_body_over_max_body_bytes_reaches_the_client_as_206() {
    let calls = Calls::default();
    let len = 100_000;
    let app = file_server_app(&calls, len, None).layer(SwrLayer::new().max_body_bytes(4096));
    assert_gets_the_range(&app, &[], len, "a body over max_body_bytes").await;
}

#[tokio::test(start_paused = true)]
async fn range_of_a_no_store_answer_reaches_the_client_as_206() {
    let calls = Calls::default();
    let len = 1_000;
    let app = file_server_app(&calls, len, Some("no-store")).layer(SwrLayer::new());
    assert_gets_the_range(&app, &[], len, "a no-store answer").await;
}

#[tokio::test(start_paused = true)]
async fn range_with_authorization_reaches_the_client_as_206() {
    let calls = Calls::default();
    let len = 1_000;
    let app = file_server_app(&calls, len, None).layer(SwrLayer::new());
    assert_gets_the_range(
        &app,
        &[("authorization", "Bearer alice")],
        len,
        "a credentialed request",
    )
    .await;
}

async fn assert_gets_304(app: &Router, headers: &[(&str, &str)], what: &str) {
    for round in 0..2 {
        let mut all = vec![("if-none-match", ETAG)];
        all.extend_from_slice(headers);
        let response = send(app, req(Method::GET, "/f", &all)).await;
        let cache_status = statuses(&response);
        assert_eq!(
            response.status(),
            StatusCode::NOT_MODIFIED,
            "{what}, request {round}: the client's If-None-Match matches ({cache_status})"
        );
        assert!(text(response).await.is_empty(), "{what}: a 304 has no body");
    }
}

#[tokio::test(start_paused = true)]
async fn if_none_match_on_a_no_store_answer_gets_304() {
    let calls = Calls::default();
    let app = file_server_app(&calls, 1_000, Some("no-store")).layer(SwrLayer::new());
    assert_gets_304(&app, &[], "a no-store answer").await;
}

#[tokio::test(start_paused = true)]
async fn if_none_match_on_a_private_answer_gets_304() {
    let calls = Calls::default();
    let app = file_server_app(&calls, 1_000, Some("private, max-age=60")).layer(SwrLayer::new());
    assert_gets_304(&app, &[], "a private answer").await;
}

#[tokio::test(start_paused = true)]
async fn if_none_match_on_a_credentialed_request_gets_304() {
    let calls = Calls::default();
    let app = file_server_app(&calls, 1_000, None).layer(SwrLayer::new());
    assert_gets_304(
        &app,
        &[("authorization", "Bearer alice")],
        "a credentialed request",
    )
    .await;
}

// =============================================================================================
// 9. An origin slower than the lock timeout: waiters take the leader's answer
// =============================================================================================

/// 50 concurrent cold requests to a 6 s origin (the lock timeout is 5 s): (origin calls, the
/// slowest answer's time, the bodies).
async fn fifty_cold_requests_to_a_six_second_origin() -> (usize, Duration, Vec<String>) {
    let calls = Calls::default();
    let app = {
        let calls = calls.clone();
        Router::new()
            .route(
                "/slow",
                routing::get(move || {
                    let n = calls.record();
                    async move {
                        tokio::time::sleep(secs(6)).await;
                        format!("slow v{n}")
                    }
                }),
            )
            .layer(SwrLayer::new())
    };
    let start = Instant::now();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move {
                let response = send(&app, get("/slow")).await;
                let status = response.status();
                let page = text(response).await;
                (start.elapsed(), format!("{status} {page}"))
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    let mut pages = Vec::new();
    for task in tasks {
        let (took, page) = task.await.expect("the request ends");
        slowest = slowest.max(took);
        pages.push(page);
    }
    (calls.get(), slowest, pages)
}

#[tokio::test(start_paused = true)]
async fn cold_requests_past_the_lock_timeout_make_a_bounded_number_of_origin_calls() {
    let (calls, _, pages) = fifty_cold_requests_to_a_six_second_origin().await;
    assert!(
        pages.iter().all(|p| p.starts_with("200 OK slow v")),
        "{pages:?}"
    );
    assert!(
        calls <= 2,
        "50 cold requests made {calls} origin calls (bounded: at most 2)"
    );
}

#[tokio::test(start_paused = true)]
async fn cold_requests_past_the_lock_timeout_take_the_leaders_answer_when_it_comes() {
    let (_, slowest, pages) = fifty_cold_requests_to_a_six_second_origin().await;
    assert!(
        pages.iter().all(|p| p.starts_with("200 OK slow v")),
        "{pages:?}"
    );
    assert!(
        slowest <= secs(7),
        "the slowest answer took {slowest:?}; the leader's answer was there at 6 s"
    );
}

// =============================================================================================
// 10. Lifetimes that can never be used are not stored as usable, nor given default windows
// =============================================================================================

/// `/l`: `headers` on every answer; the body names the call.
fn lifetime_app(calls: &Calls, headers: Vec<(&'static str, String)>) -> Router {
    let calls = calls.clone();
    Router::new()
        .route(
            "/l",
            routing::get(move || {
                let n = calls.record();
                let headers = headers.clone();
                async move {
                    let pairs: Vec<(&str, &str)> =
                        headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
                    respond(StatusCode::OK, &pairs, format!("v{n}"))
                }
            }),
        )
        .layer(SwrLayer::new())
}

#[tokio::test(start_paused = true)]
async fn age_past_u64_with_max_age_is_not_reported_stored_and_asks_the_origin_again() {
    let calls = Calls::default();
    let app = lifetime_app(
        &calls,
        vec![
            ("cache-control", "max-age=60".into()),
            ("age", "99999999999999999999".into()),
        ],
    );
    let first = send(&app, get("/l")).await;
    let first_status = statuses(&first);
    assert_eq!(text(first).await, "v1");
    advance(secs(1)).await;
    let second = send(&app, get("/l")).await;
    let second_status = statuses(&second);
    let second_info = cache_info(&second);
    assert_eq!(text(second).await, "v2", "the entry is never usable");
    assert_eq!(calls.get(), 2);
    assert!(
        !first_status.contains("stored") && !second_status.contains("stored"),
        "an entry that can never be served is reported stored: {first_status:?}, \
         {second_status:?}"
    );
    if let Some(info) = second_info {
        assert!(!info.stored, "CacheInfo says stored: {info:?}");
    }
}

async fn stale_now_is_not_served_stale(headers: Vec<(&'static str, String)>, what: &str) {
    let calls = Calls::default();
    let app = lifetime_app(&calls, headers);
    assert_eq!(text(send(&app, get("/l")).await).await, "v1");
    advance(secs(1)).await;
    let second = send(&app, get("/l")).await;
    let cache_status = statuses(&second);
    let info = cache_info(&second);
    assert_eq!(
        text(second).await,
        "v2",
        "{what}: served from the cache without asking the origin ({cache_status})"
    );
    if let Some(info) = info {
        assert!(
            !matches!(info.status, CacheStatus::Stale | CacheStatus::Fresh),
            "{what}: {info:?}"
        );
    }
    settle().await;
    assert_eq!(calls.get(), 2, "{what}: one more origin call");
}

fn http_date_now() -> String {
    httpdate::fmt_http_date(std::time::SystemTime::now())
}

#[tokio::test(start_paused = true)]
async fn expires_zero_is_not_served_stale_by_the_application_preset() {
    stale_now_is_not_served_stale(
        vec![("expires", "0".into()), ("date", http_date_now())],
        "Expires: 0",
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn max_age_zero_is_not_served_stale_by_the_application_preset() {
    stale_now_is_not_served_stale(vec![("cache-control", "max-age=0".into())], "max-age=0").await;
}

#[tokio::test(start_paused = true)]
async fn negative_max_age_is_not_served_stale_by_the_application_preset() {
    stale_now_is_not_served_stale(vec![("cache-control", "max-age=-1".into())], "max-age=-1").await;
}

#[tokio::test(start_paused = true)]
async fn non_numeric_max_age_is_not_served_stale_by_the_application_preset() {
    stale_now_is_not_served_stale(vec![("cache-control", "max-age=abc".into())], "max-age=abc")
        .await;
}
