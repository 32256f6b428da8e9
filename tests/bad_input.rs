//! Bad input gets a clear answer and loses nothing: malformed `Cache-Control` / `Expires` /
//! `Age` / `Vary`, non-UTF-8 header values, absurd lifetimes, a 64 KiB URI, a `Vary` naming
//! 1,000 headers, and a body whose `Content-Length` lies. Each answer is the origin's own bytes,
//! and the second request shows whether it was stored.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_swr::{CacheInfo, CacheStatus, SwrBody, SwrLayer};

type Error = std::io::Error;
type Origin = BoxCloneService<Request<Full<Bytes>>, Response<Full<Bytes>>, Error>;

/// An origin answering with `headers` and the body `call <n>` (or `body` when given).
fn origin(
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Option<Bytes>,
) -> (Origin, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let headers = Arc::new(headers);
    let service = service_fn(move |_request: Request<Full<Bytes>>| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let headers = Arc::clone(&headers);
        let body = body
            .clone()
            .unwrap_or_else(|| Bytes::from(format!("call {n}")));
        async move {
            let mut response = Response::new(Full::new(body));
            for (name, value) in headers.iter() {
                response.headers_mut().append(name.clone(), value.clone());
            }
            Ok::<_, Error>(response)
        }
    });
    (BoxCloneService::new(service), calls)
}

fn value(bytes: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(bytes).expect("a valid header value")
}

fn get(target: &str) -> Request<Full<Bytes>> {
    Request::get(target)
        .body(Full::default())
        .expect("a valid request")
}

struct Answer {
    status: StatusCode,
    info: CacheInfo,
    headers: http::HeaderMap,
    body: Bytes,
}

async fn send<S>(service: &S, request: Request<Full<Bytes>>) -> Answer
where
    S: Service<Request<Full<Bytes>>, Response = Response<SwrBody<Full<Bytes>>>> + Clone,
    S::Error: std::fmt::Debug,
{
    let response = service
        .clone()
        .oneshot(request)
        .await
        .expect("the origin never fails here");
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status,
        info: *parts
            .extensions
            .get::<CacheInfo>()
            .expect("every answer has a CacheInfo"),
        headers: parts.headers,
        body: body.collect().await.expect("in memory").to_bytes(),
    }
}

/// Sends two requests for `/x`, `after` apart, through `layer` over an origin answering with
/// `headers`; returns whether the second was answered from the cache. Both answers must be the
/// origin's own bodies.
async fn stored_and_reused(
    layer: SwrLayer,
    headers: Vec<(HeaderName, HeaderValue)>,
    after: Duration,
) -> bool {
    let (origin, calls) = origin(headers, None);
    let service = layer.layer(origin);
    let first = send(&service, get("/x")).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body, "call 1");
    tokio::time::advance(after).await;
    let second = send(&service, get("/x")).await;
    assert_eq!(second.status, StatusCode::OK);
    let reused = calls.load(Ordering::SeqCst) == 1;
    assert_eq!(second.body, if reused { "call 1" } else { "call 2" });
    assert_eq!(
        reused,
        matches!(second.info.status, CacheStatus::Fresh | CacheStatus::Stale),
        "{:?}",
        second.info.status
    );
    reused
}

fn cc(line: &[u8]) -> Vec<(HeaderName, HeaderValue)> {
    vec![(header::CACHE_CONTROL, value(line))]
}

const TEN_SECONDS: Duration = Duration::from_secs(10);

// ---- malformed Cache-Control ----

#[tokio::test(start_paused = true)]
async fn malformed_cache_control_directives_are_ignored_or_make_the_response_stale() {
    // (line, reused 10 s later by the strict shared-cache preset)
    let cases: [(&[u8], bool); 16] = [
        // A lifetime without a valid number is "invalid freshness": stale (§4.2.1).
        (b"max-age", false),
        (b"max-age=", false),
        (b"max-age=-60", false),
        (b"max-age=6O", false),
        (b"max-age=1e3", false),
        // Nameless, empty and unknown members are ignored; the valid directive stands.
        (b"=60, max-age=30", true),
        (b",,, max-age=30,,,", true),
        (b"max-age=30, foo=\"bar, no-store\"", true),
        (b"max-age=30, ;;;, \"quoted\"", true),
        (b"MaX-AgE=30", true),
        // First occurrence wins (or stale; this cache takes the first).
        (b"max-age=30, max-age=0", true),
        (b"max-age=0, max-age=30", false),
        // An unterminated quoted string swallows the rest of the line, nothing more.
        (b"max-age=30, foo=\"unterminated, no-store", true),
        // `no-store` with an argument is still no-store: the safe reading.
        (b"no-store=\"x\", max-age=30", false),
        (b"max-age=30, private", false),
        (b"", false),
    ];
    for (line, reused) in cases {
        let got = stored_and_reused(SwrLayer::shared_cache(), cc(line), TEN_SECONDS).await;
        assert_eq!(
            got,
            reused,
            "Cache-Control: {}",
            String::from_utf8_lossy(line)
        );
    }
}

#[tokio::test(start_paused = true)]
async fn non_utf8_cache_control_is_read_as_far_as_it_is_readable() {
    // The bytes outside ASCII can only be noise; the directive before them still counts, and
    // a number spoiled by them is invalid (stale).
    assert!(
        stored_and_reused(
            SwrLayer::shared_cache(),
            cc(b"max-age=30, \xff\xfe"),
            TEN_SECONDS
        )
        .await
    );
    assert!(!stored_and_reused(SwrLayer::shared_cache(), cc(b"max-age=30\xff"), TEN_SECONDS).await);
    // A mangled `no-store` may or may not be read as one: only the answer is checked.
    stored_and_reused(
        SwrLayer::shared_cache(),
        cc(b"\xffno-store, max-age=30"),
        TEN_SECONDS,
    )
    .await;
}

// ---- malformed Expires and Age ----

#[tokio::test(start_paused = true)]
async fn malformed_expires_means_already_expired() {
    for expires in [
        &b"0"[..],
        b"-1",
        b"yesterday",
        b"Thu, 01 Jan 1970 00:00:00 GMT",
        b"Mon, 32 Foo 2024 99:99:99 GMT",
        b"\xff\xfe",
    ] {
        let headers = vec![(header::EXPIRES, value(expires))];
        let reused = stored_and_reused(SwrLayer::shared_cache(), headers, TEN_SECONDS).await;
        assert!(!reused, "Expires: {}", String::from_utf8_lossy(expires));
    }
    // Two Expires lines disagree: stale (§4.2.1).
    let far = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3600));
    let headers = vec![
        (header::EXPIRES, value(far.as_bytes())),
        (header::EXPIRES, value(b"0")),
    ];
    assert!(!stored_and_reused(SwrLayer::shared_cache(), headers, TEN_SECONDS).await);
    // max-age wins over a malformed Expires.
    let headers = vec![
        (header::CACHE_CONTROL, value(b"max-age=30")),
        (header::EXPIRES, value(b"garbage")),
    ];
    assert!(stored_and_reused(SwrLayer::shared_cache(), headers, TEN_SECONDS).await);
}

#[tokio::test(start_paused = true)]
async fn malformed_age_makes_the_response_stale() {
    for age in [&b"-5"[..], b"1.5", b"abc", b"", b" 10", b"10 ", b"\xff"] {
        let headers = vec![
            (header::CACHE_CONTROL, value(b"max-age=60")),
            (header::AGE, value(age)),
        ];
        for layer in [SwrLayer::shared_cache(), SwrLayer::new()] {
            let reused = stored_and_reused(layer, headers.clone(), TEN_SECONDS).await;
            assert!(!reused, "Age: {:?}", String::from_utf8_lossy(age));
        }
    }
    // A list is read by its first member; a valid Age counts toward the lifetime.
    let headers = vec![
        (header::CACHE_CONTROL, value(b"max-age=60")),
        (header::AGE, value(b"0,7200")),
    ];
    assert!(stored_and_reused(SwrLayer::shared_cache(), headers, TEN_SECONDS).await);
    let headers = vec![
        (header::CACHE_CONTROL, value(b"max-age=60")),
        (header::AGE, value(b"55")),
    ];
    assert!(!stored_and_reused(SwrLayer::shared_cache(), headers, TEN_SECONDS).await);
}

// ---- absurd lifetimes ----

#[tokio::test(start_paused = true)]
async fn absurd_lifetimes_do_not_overflow() {
    let huge = b"99999999999999999999999999999999999999";
    let lines: [Vec<u8>; 5] = [
        [&b"max-age="[..], huge].concat(),
        [&b"s-maxage="[..], huge].concat(),
        b"max-age=18446744073709551616".to_vec(),
        [
            &b"max-age=60, stale-while-revalidate="[..],
            huge,
            b", stale-if-error=",
            huge,
        ]
        .concat(),
        b"max-age=4294967296".to_vec(),
    ];
    for line in lines {
        // Years later it is still answered (fresh or stale), without panicking.
        let years = Duration::from_secs(3 * 365 * 24 * 3600);
        assert!(
            stored_and_reused(SwrLayer::new(), cc(&line), years).await,
            "Cache-Control: {}",
            String::from_utf8_lossy(&line)
        );
    }
    // A huge Age makes any lifetime over.
    let headers = vec![
        (header::CACHE_CONTROL, value(b"max-age=60")),
        (header::AGE, value(huge)),
    ];
    assert!(!stored_and_reused(SwrLayer::shared_cache(), headers, TEN_SECONDS).await);
    // An Expires at the end of time.
    let headers = vec![(header::EXPIRES, value(b"Fri, 31 Dec 9999 23:59:59 GMT"))];
    assert!(
        stored_and_reused(
            SwrLayer::shared_cache(),
            headers,
            Duration::from_secs(365 * 24 * 3600)
        )
        .await
    );
}

// ---- Vary ----

#[tokio::test(start_paused = true)]
async fn malformed_vary_is_never_reused_and_an_empty_one_is_no_vary() {
    for (vary, reused) in [
        (&b"*"[..], false),
        (b"accept, *", false),
        (b"not a header name", false),
        (b"x-a, (bad)", false),
        (b"\xff\xfe", false),
        (b",, ,", true),
        (b"", true),
    ] {
        let headers = vec![
            (header::CACHE_CONTROL, value(b"max-age=60")),
            (header::VARY, value(vary)),
        ];
        let got = stored_and_reused(SwrLayer::shared_cache(), headers, TEN_SECONDS).await;
        assert_eq!(got, reused, "Vary: {}", String::from_utf8_lossy(vary));
    }
}

#[tokio::test(start_paused = true)]
async fn vary_naming_a_thousand_headers_is_answered_and_not_stored() {
    let names: Vec<String> = (0..1000).map(|i| format!("x-h{i}")).collect();
    let headers = vec![
        (header::CACHE_CONTROL, value(b"max-age=60")),
        (header::VARY, value(names.join(", ").as_bytes())),
    ];
    let (origin, calls) = origin(headers, None);
    let layer = SwrLayer::new();
    let service = layer.layer(origin);
    let mut request = get("/v");
    for name in names.iter().take(500) {
        request.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes()).expect("a name"),
            HeaderValue::from_static("v"),
        );
    }
    let first = send(&service, request).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body, "call 1");
    assert!(!first.info.stored);
    let second = send(&service, get("/v")).await;
    assert_eq!(second.body, "call 2");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(layer.stats().entries, 0);
    // A Vary of 1,000 lines of one name each: the same.
    let lines: Vec<(HeaderName, HeaderValue)> = names
        .iter()
        .map(|n| (header::VARY, value(n.as_bytes())))
        .chain([(header::CACHE_CONTROL, value(b"max-age=60"))])
        .collect();
    assert!(!stored_and_reused(SwrLayer::new(), lines, TEN_SECONDS).await);
}

#[tokio::test(start_paused = true)]
async fn non_utf8_request_header_values_key_their_own_variant() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let origin = service_fn(move |request: Request<Full<Bytes>>| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let mut body = request
            .headers()
            .get("x-lang")
            .map_or(b"-".to_vec(), |v| v.as_bytes().to_vec());
        body.extend_from_slice(format!("|{n}").as_bytes());
        async move {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=60"),
            );
            response
                .headers_mut()
                .insert(header::VARY, HeaderValue::from_static("x-lang"));
            Ok::<_, Error>(response)
        }
    });
    let service = SwrLayer::new().layer(origin);
    let with = |bytes: &[u8]| {
        let mut request = get("/lang");
        request.headers_mut().insert("x-lang", value(bytes));
        request
    };
    let first = send(&service, with(b"caf\xe9")).await;
    assert_eq!(first.body, &b"caf\xe9|1"[..]);
    let again = send(&service, with(b"caf\xe9")).await;
    assert_eq!(again.body, &b"caf\xe9|1"[..]);
    assert_eq!(again.info.status, CacheStatus::Fresh);
    let other = send(&service, with(b"caf\xc3\xa9")).await;
    assert_eq!(
        other.body,
        &b"caf\xc3\xa9|2"[..],
        "another byte string, another variant"
    );
    let host = {
        let mut request = get("/lang");
        request
            .headers_mut()
            .insert(header::HOST, value(b"h\xf6st"));
        request
    };
    let answer = send(&service, host).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, &b"-|3"[..]);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

// ---- a 64 KiB URI ----

#[tokio::test(start_paused = true)]
async fn a_uri_of_64_kib_is_cached_like_any_other() {
    // `http::Uri` holds at most 65,534 bytes: the longest URI a tower service can be given.
    let long = format!(
        "/{}?q={}",
        "a".repeat(32 * 1024),
        "b".repeat(65_534 - 32 * 1024 - 4)
    );
    assert_eq!(long.len(), 65_534);
    let (origin, calls) = origin(cc(b"max-age=60"), None);
    let layer = SwrLayer::new();
    let service = layer.layer(origin);
    assert_eq!(send(&service, get(&long)).await.body, "call 1");
    let again = send(&service, get(&long)).await;
    assert_eq!(again.body, "call 1");
    assert_eq!(again.info.status, CacheStatus::Fresh);
    // One byte less in the query is another key.
    assert_eq!(
        send(&service, get(&long[..long.len() - 1])).await.body,
        "call 2"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let stats = layer.stats();
    assert!(stats.bytes <= stats.capacity_bytes);
    // 64 KiB and more cannot even be built as a request: nothing reaches the layer.
    let too_long = format!("/{}", "a".repeat(64 * 1024));
    assert!(Request::get(too_long.as_str()).body(()).is_err());
}

// ---- a lying Content-Length ----

#[tokio::test(start_paused = true)]
async fn a_lying_content_length_is_corrected_in_what_is_served() {
    let body = Bytes::from_static(b"0123456789");
    for declared in [&b"100"[..], b"5", b"0"] {
        let headers = vec![
            (header::CACHE_CONTROL, value(b"max-age=60")),
            (header::CONTENT_LENGTH, value(declared)),
        ];
        let (origin, calls) = origin(headers, Some(body.clone()));
        let service = SwrLayer::new().layer(origin);
        for round in 0..2 {
            let answer = send(&service, get("/cl")).await;
            assert_eq!(
                answer.body, body,
                "Content-Length {declared:?}, round {round}"
            );
            assert_eq!(
                answer.headers.get(header::CONTENT_LENGTH),
                Some(&HeaderValue::from(10)),
                "Content-Length {:?}, round {round}",
                String::from_utf8_lossy(declared)
            );
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}

/// A `Content-Length` that is not a number is stored and served as it came, next to a body of
/// another length: a client that trusts it loses bytes or hangs. Found by the fuzzer
/// (`fuzz/regressions/content-length-empty-served-from-cache`, `…-garbage-…`: `""` and
/// `"max=a"`).
#[tokio::test(start_paused = true)]
async fn an_unparseable_content_length_is_not_served_from_the_cache() {
    let body = Bytes::from_static(b"0123456789");
    for declared in [&b""[..], b"max=a", b"abc", b"-1", b"1e1"] {
        let headers = vec![
            (header::CACHE_CONTROL, value(b"max-age=60")),
            (header::CONTENT_LENGTH, value(declared)),
        ];
        let (origin, _calls) = origin(headers, Some(body.clone()));
        let service = SwrLayer::new().layer(origin);
        send(&service, get("/cl")).await;
        let hit = send(&service, get("/cl")).await;
        assert_eq!(hit.body, body);
        let served: Vec<_> = hit.headers.get_all(header::CONTENT_LENGTH).iter().collect();
        assert!(
            served.is_empty() || served == [HeaderValue::from(10)],
            "Content-Length {:?} served as {served:?} with a 10-byte body",
            String::from_utf8_lossy(declared)
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_content_length_over_the_limit_streams_the_real_body_and_is_not_stored() {
    let body = Bytes::from_static(b"small body");
    let headers = vec![
        (header::CACHE_CONTROL, value(b"max-age=60")),
        (header::CONTENT_LENGTH, value(b"999999999")),
    ];
    let (origin, calls) = origin(headers, Some(body.clone()));
    let service = SwrLayer::new().max_body_bytes(1024).layer(origin);
    let first = send(&service, get("/big")).await;
    assert_eq!(first.body, body, "the body is passed on whole");
    assert!(!first.info.stored);
    send(&service, get("/big")).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
