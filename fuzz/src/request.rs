//! The request side: a fixed 200 is stored by `SwrLayer::new()` or `SwrLayer::shared_cache()`,
//! then a client request built from the input's bytes is answered from it (or from the origin).
//! Panics (from the layer, or from a broken invariant below) are what AFL reports; the release
//! profile has `overflow-checks = true`, so arithmetic on client input that overflows panics too.
//!
//! Input layout: byte 0 holds flags (bit 0: `shared_cache()`, bit 1: response mode), byte 1 the
//! method (even: `GET`, odd: `HEAD`), byte 2 the stored body's length (mod 65; the body is
//! `abc…`), byte 3 the delay before the fuzzed request; the rest is split on `\n` into fields.
//! A field whose bytes are not a valid header value is left out.
//!
//! - Request mode: the stored 200 has `ETag: "v1"`, `Last-Modified`, `Cache-Control: max-age=60`
//!   and a true `Content-Length`; the fields are the fuzzed request's `Range`, `If-Range`,
//!   `If-None-Match`, `If-Modified-Since`, `If-Match`, `If-Unmodified-Since`, `Cache-Control`
//!   and `Host`.
//! - Response mode: the fields are the stored response's `Age`, `Content-Length`, `Expires`,
//!   `Date` and the digits of its `Cache-Control: max-age=…`, then the fuzzed request's `Range`.
//!
//! The origin honours nothing: it always answers the same 200 (to `HEAD`, range and conditional
//! requests too), so every answer is checked against that one body.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{service_fn, Layer, ServiceExt};
use tower_swr::{CacheInfo, CacheStatus, SwrLayer};

use crate::runtime;

const DELAYS: [u64; 8] = [0, 1, 59, 61, 181, 400, 86_400, 100_000];
const MAX_BODY: usize = 64;
const ETAG: &str = "\"v1\"";
const LAST_MODIFIED: &str = "Wed, 01 Jan 2020 00:00:00 GMT";
const REQUEST_FIELDS: [HeaderName; 8] = [
    header::RANGE,
    header::IF_RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::CACHE_CONTROL,
    header::HOST,
];
/// Response mode: the last one (`max-age` digits) becomes `Cache-Control: max-age=<digits>`.
const RESPONSE_FIELDS: [HeaderName; 5] = [
    header::AGE,
    header::CONTENT_LENGTH,
    header::EXPIRES,
    header::DATE,
    header::CACHE_CONTROL,
];

/// What one input asks for.
struct Case {
    shared: bool,
    /// The stored response's headers come from the input (response mode).
    response_mode: bool,
    head: bool,
    delay: Duration,
    body: Bytes,
    /// The origin's headers besides the fixed validators.
    stored_headers: Vec<(HeaderName, HeaderValue)>,
    /// The fuzzed request's headers.
    request_headers: Vec<(HeaderName, HeaderValue)>,
}

/// Runs one request-target input; panics when an invariant breaks.
pub fn run_request(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let response_mode = data[0] & 2 == 2;
    let len = usize::from(data[2]) % (MAX_BODY + 1);
    let body: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
    let mut case = Case {
        shared: data[0] & 1 == 1,
        response_mode,
        head: data[1] & 1 == 1,
        delay: Duration::from_secs(DELAYS[usize::from(data[3]) % DELAYS.len()]),
        body: Bytes::from(body),
        stored_headers: Vec::new(),
        request_headers: Vec::new(),
    };
    let mut fields = data[4..].split(|b| *b == b'\n');
    if response_mode {
        for name in RESPONSE_FIELDS {
            let Some(bytes) = fields.next() else { break };
            let value = if name == header::CACHE_CONTROL {
                HeaderValue::from_bytes(&[b"max-age=", bytes].concat())
            } else {
                HeaderValue::from_bytes(bytes)
            };
            if let Ok(value) = value {
                case.stored_headers.push((name, value));
            }
        }
        if let Some(value) = fields.next().and_then(|b| HeaderValue::from_bytes(b).ok()) {
            case.request_headers.push((header::RANGE, value));
        }
    } else {
        case.stored_headers.push((
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=60"),
        ));
        case.stored_headers
            .push((header::CONTENT_LENGTH, HeaderValue::from(len)));
        for name in REQUEST_FIELDS {
            let Some(bytes) = fields.next() else { break };
            if let Ok(value) = HeaderValue::from_bytes(bytes) {
                case.request_headers.push((name, value));
            }
        }
    }
    runtime().block_on(check(case));
}

async fn check(case: Case) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let origin_headers = Arc::new(case.stored_headers.clone());
    let origin_body = case.body.clone();
    let origin = service_fn(move |_request: Request<Full<Bytes>>| {
        counter.fetch_add(1, Ordering::SeqCst);
        let mut response = Response::new(Full::new(origin_body.clone()));
        let headers = response.headers_mut();
        headers.insert(header::ETAG, HeaderValue::from_static(ETAG));
        headers.insert(
            header::LAST_MODIFIED,
            HeaderValue::from_static(LAST_MODIFIED),
        );
        for (name, value) in origin_headers.iter() {
            headers.append(name.clone(), value.clone());
        }
        async move { Ok::<_, std::io::Error>(response) }
    });
    let layer = if case.shared {
        SwrLayer::shared_cache()
    } else {
        SwrLayer::new()
    };
    let service = layer.layer(origin);

    // Store the response with a plain GET.
    let store = Request::get("/fuzz")
        .body(Full::default())
        .expect("a request");
    let response = service
        .clone()
        .oneshot(store)
        .await
        .expect("infallible origin");
    assert_eq!(response.status(), StatusCode::OK, "the plain GET");
    let got = response
        .into_body()
        .collect()
        .await
        .expect("in memory")
        .to_bytes();
    assert_eq!(got, case.body, "the plain GET's body");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the plain GET's origin call"
    );
    settle().await;
    tokio::time::advance(case.delay).await;

    // The fuzzed request.
    let mut request = Request::get("/fuzz")
        .body(Full::default())
        .expect("a request");
    if case.head {
        *request.method_mut() = Method::HEAD;
    }
    for (name, value) in &case.request_headers {
        request.headers_mut().append(name.clone(), value.clone());
    }
    let asked_range = request.headers().contains_key(header::RANGE);
    let before = calls.load(Ordering::SeqCst);
    let response = service
        .clone()
        .oneshot(request)
        .await
        .expect("infallible origin");
    let after = calls.load(Ordering::SeqCst);
    let info = response.extensions().get::<CacheInfo>().copied();
    let (parts, body) = response.into_parts();
    let got = body.collect().await.expect("in memory").to_bytes();
    let status = parts.status;
    let hit = info.is_some_and(|info| {
        matches!(
            info.status,
            CacheStatus::Fresh
                | CacheStatus::Stale
                | CacheStatus::StaleIfError
                | CacheStatus::Collapsed
        )
    });
    let bypass = info.is_none_or(|info| info.status == CacheStatus::Bypass);
    match info.map(|info| info.status) {
        Some(CacheStatus::Fresh | CacheStatus::Collapsed) => {
            assert_eq!(before, after, "a fresh hit called the origin");
        }
        Some(CacheStatus::Miss) => assert!(after > before, "a miss made no origin call"),
        _ => {}
    }
    let whole = &case.body[..];
    let len = whole.len();
    let lengths = values(&parts.headers, header::CONTENT_LENGTH);
    match status.as_u16() {
        200 => {
            // The origin itself ignores HEAD: a request passed through gets its body.
            assert!(
                got == whole || (case.head && (got.is_empty() || bypass)),
                "a 200 served {got:?} of {whole:?}"
            );
            // Request mode: the origin's Content-Length is true. Response mode: a hit states
            // the length of what it holds, or none; what the origin said passes through.
            if !case.response_mode {
                assert_eq!(lengths, [len.to_string()], "a 200's Content-Length");
            } else if hit {
                assert!(
                    lengths.is_empty() || lengths == [len.to_string()],
                    "a hit served Content-Length {lengths:?} with a {len}-byte body"
                );
            }
        }
        206 => {
            assert!(asked_range, "a 206 for a request without Range");
            let ranges = values(&parts.headers, header::CONTENT_RANGE);
            let [range] = &ranges[..] else {
                panic!("a 206 with Content-Range {ranges:?}");
            };
            let (first, last) = content_range(range, len)
                .unwrap_or_else(|| panic!("a 206 with Content-Range {range:?} of {len} bytes"));
            let expected: &[u8] = if case.head { b"" } else { &whole[first..=last] };
            assert_eq!(&got[..], expected, "a 206 with Content-Range {range:?}");
            assert_eq!(
                lengths,
                [(last - first + 1).to_string()],
                "a 206 with Content-Range {range:?}"
            );
        }
        304 => assert!(got.is_empty(), "a 304 with a body: {got:?}"),
        412 => {}
        416 => {
            assert!(asked_range, "a 416 for a request without Range");
            let ranges = values(&parts.headers, header::CONTENT_RANGE);
            assert_eq!(ranges, [format!("bytes */{len}")], "a 416's Content-Range");
            assert!(got.is_empty(), "a 416 with a body: {got:?}");
        }
        _ => panic!("status {status} ({info:?})"),
    }
    settle().await;
    let stats = layer.stats();
    assert!(stats.bytes <= stats.capacity_bytes);
    assert_eq!(stats.loads_running, 0, "a load left in flight");
}

/// Lets background refreshes run to their end.
async fn settle() {
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
}

/// A header's values as text (`?` for one that is not).
fn values(headers: &HeaderMap, name: HeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap_or("?").to_owned())
        .collect()
}

/// `bytes a-b/len` with `a <= b < len`, as `(a, b)`.
fn content_range(value: &str, len: usize) -> Option<(usize, usize)> {
    let (span, total) = value.strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let (first, last): (usize, usize) = (first.parse().ok()?, last.parse().ok()?);
    (total.parse::<usize>().ok()? == len && first <= last && last < len).then_some((first, last))
}

/// Some starting inputs for the request target's corpus.
pub fn request_seeds() -> Vec<Vec<u8>> {
    vec![
        request_input(0, 0, 10, 0, &[b"bytes=1-18446744073709551615"]),
        request_input(1, 0, 10, 0, &[b"bytes=0-18446744073709551615"]),
        request_input(0, 1, 10, 0, &[b"bytes=-18446744073709551615"]),
        request_input(0, 0, 10, 2, &[b"bytes=0-99999999999999999999999"]),
        request_input(0, 0, 10, 0, &[b"bytes=5-1"]),
        request_input(1, 0, 10, 0, &[b"bytes=0-0,2-3"]),
        request_input(0, 0, 30, 0, &[b"bytes=2-5", b"\"v1\""]),
        request_input(0, 1, 30, 3, &[b"bytes=-3", LAST_MODIFIED.as_bytes()]),
        request_input(0, 0, 10, 0, &[b"", b"", b"*"]),
        request_input(
            1,
            1,
            64,
            4,
            &[
                b"bytes=60-",
                b"",
                b"W/\"v0\", \"v2\"",
                b"Thu, 01 Jan 2037 00:00:00 GMT",
                b"\"v1\"",
                b"Sun, 06 Nov 1994 08:49:37 GMT",
                b"max-age=0, min-fresh=18446744073709551615",
            ],
        ),
        request_input(0, 0, 0, 0, &[b"bytes=0-0"]),
        request_input(1, 0, 0, 0, &[b"bytes=-5"]),
        request_input(
            0,
            0,
            10,
            0,
            &[
                b"bytes=3-4",
                b"",
                b"",
                b"",
                b"",
                b"",
                b"no-cache",
                b"example.com",
            ],
        ),
        // Response mode: huge and odd numbers in the stored response.
        request_input(
            2,
            0,
            10,
            1,
            &[
                b"18446744073709551615",
                b"99999999999999999999",
                b"Thu, 01 Jan 2037 00:00:00 GMT",
                b"Wed, 01 Jan 2025 00:00:00 GMT",
                b"18446744073709551615",
                b"bytes=0-",
            ],
        ),
        request_input(
            3,
            1,
            20,
            7,
            &[b"4294967296", b"3", b"0", b"", b"99999999999999999999999"],
        ),
    ]
}

/// An input in [`run_request`]'s layout.
fn request_input(flags: u8, method: u8, len: u8, delay: u8, fields: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![flags, method, len, delay];
    out.extend_from_slice(&fields.join(&b"\n"[..]));
    out
}
