//! Bad input gets a clear answer and loses nothing: malformed `Cache-Control` / `Expires` /
//! `Age` / `Vary`, non-UTF-8 header values, absurd lifetimes, a 64 KiB URI, a `Vary` naming
//! 1,000 headers, and a body whose `Content-Length` lies. Each answer is the origin's own bytes,
//! and the second request shows whether it was stored.

mod common;

use axum::body::Body;
use axum::{routing, Router};
use bytes::Bytes;
use common::*;
use common::{body, Calls};
use http::{header, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::advance;
use tower::{service_fn, Layer, ServiceExt};
use tower_swr::{CacheStatus, SwrLayer};

type Error = std::io::Error;

fn value(bytes: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(bytes).expect("a valid header value")
}

/// Sends two requests for `/x`, `after` apart, through `layer` over an origin answering with
/// `headers`; returns whether the second was answered from the cache. Both answers must be the
/// origin's own bodies.
async fn stored_and_reused(
    layer: SwrLayer,
    headers: Vec<(HeaderName, HeaderValue)>,
    after: Duration,
) -> bool {
    let (origin, calls) = fixed_origin(headers, StatusCode::OK, None);
    let service = layer.layer(origin);
    let first = send_whole(&service, get("/x")).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body, "call 1");
    tokio::time::advance(after).await;
    let second = send_whole(&service, get("/x")).await;
    assert_eq!(second.status, StatusCode::OK);
    let reused = calls.get() == 1;
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

/// RFC 9111 §5.1: an `Age` that is not a non-negative integer is ignored as if absent, so the
/// response is stored and reused on its other merits; a list is read by its first member.
#[tokio::test(start_paused = true)]
async fn malformed_age_is_ignored() {
    let with_age = |lines: &[&[u8]]| {
        let mut headers = vec![(header::CACHE_CONTROL, value(b"max-age=60"))];
        headers.extend(lines.iter().map(|line| (header::AGE, value(line))));
        headers
    };
    // Each of these, if read as an age, would be past max-age=60 or unreadable.
    let ignored: [&[&[u8]]; 11] = [
        &[b"-7200"],
        &[b"7200.0"],
        &[b"1.5"],
        &[b"abc"],
        &[b"7200a"],
        &[b"7200;foo=bar"],
        &[b"+7200"],
        &[b"\xff"],
        &[b""],
        &[b"abc, 7200"],
        &[b"abc", b"7200"],
    ];
    for lines in ignored {
        for layer in [SwrLayer::shared_cache(), SwrLayer::new()] {
            let reused = stored_and_reused(layer, with_age(lines), TEN_SECONDS).await;
            assert!(reused, "Age: {:?} is ignored", lossy(lines));
        }
        // Ignored, not taken as 0 past the lifetime: still stale after max-age.
        let reused = stored_and_reused(SwrLayer::shared_cache(), with_age(lines), secs(61)).await;
        assert!(!reused, "Age: {:?}: max-age still ends it", lossy(lines));
    }
    // The first member counts, on one line or several; whitespace around it is not part of it.
    let counted: [(&[&[u8]], bool); 8] = [
        (&[b"0,7200"], true),
        (&[b"0, 7200"], true),
        (&[b"0", b"7200"], true),
        (&[b"7200,0"], false),
        (&[b"7200", b"0"], false),
        (&[b" 55"], false),
        (&[b"55"], false),
        (&[b"45, abc"], true),
    ];
    for (lines, reused) in counted {
        assert_eq!(
            stored_and_reused(SwrLayer::shared_cache(), with_age(lines), TEN_SECONDS).await,
            reused,
            "Age: {:?}",
            lossy(lines)
        );
    }
}

fn lossy(lines: &[&[u8]]) -> Vec<String> {
    lines
        .iter()
        .map(|line| String::from_utf8_lossy(line).into_owned())
        .collect()
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
    let (origin, calls) = fixed_origin(headers, StatusCode::OK, None);
    let layer = SwrLayer::new();
    let service = layer.layer(origin);
    let mut request = get("/v");
    for name in names.iter().take(500) {
        request.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes()).expect("a name"),
            HeaderValue::from_static("v"),
        );
    }
    let first = send_whole(&service, request).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body, "call 1");
    assert!(!first.info.stored);
    let second = send_whole(&service, get("/v")).await;
    assert_eq!(second.body, "call 2");
    assert_eq!(calls.get(), 2);
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
    let calls = Calls::default();
    let counter = calls.clone();
    let origin = service_fn(move |request: Request<Full<Bytes>>| {
        let n = counter.record();
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
    let first = send_whole(&service, with(b"caf\xe9")).await;
    assert_eq!(first.body, &b"caf\xe9|1"[..]);
    let again = send_whole(&service, with(b"caf\xe9")).await;
    assert_eq!(again.body, &b"caf\xe9|1"[..]);
    assert_eq!(again.info.status, CacheStatus::Fresh);
    let other = send_whole(&service, with(b"caf\xc3\xa9")).await;
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
    let answer = send_whole(&service, host).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, &b"-|3"[..]);
    assert_eq!(calls.get(), 3);
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
    let (origin, calls) = fixed_origin(cc(b"max-age=60"), StatusCode::OK, None);
    let layer = SwrLayer::new();
    let service = layer.layer(origin);
    assert_eq!(send_whole(&service, get(&long)).await.body, "call 1");
    let again = send_whole(&service, get(&long)).await;
    assert_eq!(again.body, "call 1");
    assert_eq!(again.info.status, CacheStatus::Fresh);
    // One byte less in the query is another key.
    assert_eq!(
        send_whole(&service, get(&long[..long.len() - 1]))
            .await
            .body,
        "call 2"
    );
    assert_eq!(calls.get(), 2);
    let stats = layer.stats();
    assert!(stats.bytes <= stats.capacity_bytes);
    // 64 KiB and more cannot even be built as a request: nothing reaches the layer.
    let too_long = format!("/{}", "a".repeat(64 * 1024));
    assert!(Request::get(too_long.as_str()).body(()).is_err());
}

// ---- a lying Content-Length ----

/// A body of another length than its `Content-Length` is served with its real length and not
/// stored (incomplete or framed wrong, RFC 9111 §3.3): each request goes to the origin.
#[tokio::test(start_paused = true)]
async fn a_lying_content_length_is_corrected_in_what_is_served_and_not_stored() {
    let body = Bytes::from_static(b"0123456789");
    for declared in [&b"100"[..], b"5", b"0"] {
        let headers = vec![
            (header::CACHE_CONTROL, value(b"max-age=60")),
            (header::CONTENT_LENGTH, value(declared)),
        ];
        let (origin, calls) = fixed_origin(headers, StatusCode::OK, Some(body.clone()));
        let service = SwrLayer::new().layer(origin);
        for round in 0..2 {
            let answer = send_whole(&service, get("/cl")).await;
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
        assert_eq!(calls.get(), 2, "not stored");
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
        let (origin, _calls) = fixed_origin(headers, StatusCode::OK, Some(body.clone()));
        let service = SwrLayer::new().layer(origin);
        send_whole(&service, get("/cl")).await;
        let hit = send_whole(&service, get("/cl")).await;
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
    let (origin, calls) = fixed_origin(headers, StatusCode::OK, Some(body.clone()));
    let service = SwrLayer::new().max_body_bytes(1024).layer(origin);
    let first = send_whole(&service, get("/big")).await;
    assert_eq!(first.body, body, "the body is passed on whole");
    assert!(!first.info.stored);
    send_whole(&service, get("/big")).await;
    assert_eq!(calls.get(), 2);
}
/// `/file`: 100 bytes, fresh for 60 s, with an `ETag`.
fn file_app(calls: &Calls) -> Router {
    let calls = calls.clone();
    Router::new()
        .route(
            "/file",
            routing::get(move || {
                calls.record();
                async move {
                    app_respond(
                        StatusCode::OK,
                        &[
                            ("cache-control", "max-age=60"),
                            ("etag", "\"f1\""),
                            ("content-type", "application/octet-stream"),
                        ],
                        patterned_vec(100),
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
    assert_eq!(warm.body, patterned_vec(100));
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
    assert_eq!(after.body, patterned_vec(100));
}

/// A 206 of the whole 100 bytes, or a 200 of them: both are right for a range covering all.
fn assert_whole_file(answer: &Wire, range: &str) {
    assert_eq!(
        answer.body,
        patterned_vec(100),
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
    assert_eq!(answer.body, patterned_vec(100)[1..].to_vec());
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
            Ok(a) if a.status == 200 => a.body == patterned_vec(100),
            Ok(a) if a.status == 416 => true,
            // A range that covers the file, clamped, is right too; an empty or bogus slice not.
            Ok(a) if a.status == 206 => {
                a.body == patterned_vec(100) && a.header("content-range") == Some("bytes 0-99/100")
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
                        let response = app_send(&app, app_req(Method::GET, "/n", &headers)).await;
                        let status = response.status();
                        response
                            .into_body()
                            .collect()
                            .await
                            .unwrap_or_else(|e| panic!("step {step}: body failed: {e}"));
                        assert!(
                            [200, 206, 304, 412, 416].contains(&status.as_u16()),
                            "step {step}: status {status}"
                        );
                        advance(secs(120)).await;
                    }
                    let response = app_send(&app, app_get("/n")).await;
                    assert_eq!(response.status(), 200, "a plain GET after the odd ones");
                    let body = response.into_body().collect().await.expect("body");
                    assert_eq!(body.to_bytes(), "0123456789");
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

#[tokio::test(start_paused = true)]
async fn non_utf8_validators_conditionals_and_locations_get_clear_answers() -> TestResult {
    let raw = |v: &[u8]| HeaderValue::from_bytes(v).expect("valid header value");
    let (o, calls) = origin(move |n, request: Request<ReqBody>| async move {
        if request.method() != Method::GET {
            let mut response = reply_status(StatusCode::CREATED, "made");
            response.headers_mut().insert(
                header::LOCATION,
                HeaderValue::from_bytes(b"/x\xff").unwrap(),
            );
            response.headers_mut().insert(
                header::CONTENT_LOCATION,
                HeaderValue::from_bytes(b"http://h\xff/x").unwrap(),
            );
            return Ok(response);
        }
        let mut response = if n == 1 {
            reply_cc("0123456789", "max-age=10")
        } else {
            reply_status(StatusCode::NOT_MODIFIED, "")
        };
        let headers = response.headers_mut();
        headers.insert(
            header::ETAG,
            HeaderValue::from_bytes(b"\"\xfe\xff\"").unwrap(),
        );
        headers.insert(
            header::LAST_MODIFIED,
            HeaderValue::from_bytes(b"\xff").unwrap(),
        );
        headers.insert(header::DATE, HeaderValue::from_bytes(b"Mon\xff").unwrap());
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_bytes(b"x-\xff").unwrap(),
        );
        headers.insert(
            HeaderName::from_static("surrogate-control"),
            HeaderValue::from_bytes(b"max-age=\xff").unwrap(),
        );
        if n > 1 {
            headers.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=10"),
            );
        }
        Ok(response)
    });
    let service = SwrLayer::new().layer(o);
    let first = service.clone().oneshot(get("/x")).await?;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(body(first).await?, "0123456789");

    for (name, value) in [
        ("if-none-match", &b"\"\xfe\xff\""[..]),
        ("if-none-match", b"\xff"),
        ("if-modified-since", b"\xff"),
        ("range", b"bytes=\xff-1"),
        ("cookie", b"s=\xff"),
        ("authorization", b"Bearer \xff"),
        ("accept-language", b"\xff"),
    ] {
        let mut request = get("/x");
        request
            .headers_mut()
            .insert(HeaderName::from_static(name), raw(value));
        let response = service.clone().oneshot(request).await?;
        let status = response.status();
        let bytes = body(response).await?;
        assert!(
            matches!(status, StatusCode::OK | StatusCode::NOT_MODIFIED),
            "{name}: {status}"
        );
        if status == StatusCode::OK {
            assert_eq!(bytes, "0123456789", "{name}");
        }
    }

    // Revalidation with the non-UTF-8 validators echoes them; the 304 freshens the entry.
    advance(secs(200)).await;
    let revalidated = service.clone().oneshot(get("/x")).await?;
    assert_eq!(revalidated.status(), StatusCode::OK);
    assert_eq!(body(revalidated).await?, "0123456789");

    // A POST whose Location / Content-Location are not UTF-8 still gets its answer.
    let post = service.clone().oneshot(req("POST", "/x", &[])).await?;
    assert_eq!(post.status(), StatusCode::CREATED);
    assert_eq!(body(post).await?, "made");
    assert!(calls.get() >= 3);
    Ok(())
}
