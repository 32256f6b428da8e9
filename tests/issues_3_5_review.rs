//! Review of issues 3 (HTTP caching semantics) and 5 (reliability): black-box checks of what
//! the issue texts name, aimed at what the other test files leave out (apparent and corrected
//! age, 304s without `Date`, `Authorization` rules beyond `public`, the shared preset's
//! operator windows, redirect and `Vary` invalidation, `Cache-Status` ordering on every kind of
//! answer, coalesced revalidation, non-UTF-8 hosts and validators, cancellation and panics
//! while a body is read, the byte budget).

mod common;

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::*;
use http::header::{self, HeaderMap, HeaderName};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::Full;
use tokio::time::{advance, timeout, Instant};
use tower::{Layer, Service, ServiceExt};
use tower_swr::{CacheStatus, SwrLayer, CACHE_STATUS};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

type Reply = Response<Full<Bytes>>;

/// A response with `status`, `body` and the given headers (appended, so names may repeat).
fn respond(status: u16, body: impl Into<Bytes>, headers: &[(&str, &str)]) -> Reply {
    let mut response = reply_status(StatusCode::from_u16(status).expect("status"), body);
    for (name, value) in headers {
        response.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    response
}

/// A request with the given headers (appended).
fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<ReqBody> {
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
fn get_raw(uri: &str, name: &'static str, value: &[u8]) -> Request<ReqBody> {
    let mut request = get(uri);
    request.headers_mut().append(
        HeaderName::from_static(name),
        HeaderValue::from_bytes(value).expect("a valid header value"),
    );
    request
}

/// Every request the origin received: headers.
#[derive(Clone, Debug, Default)]
struct Seen(Arc<Mutex<Vec<HeaderMap>>>);

impl Seen {
    fn record(&self, request: &Request<ReqBody>) {
        self.0.lock().unwrap().push(request.headers().clone());
    }
    fn headers(&self, n: usize) -> HeaderMap {
        self.0.lock().unwrap()[n - 1].clone()
    }
}

fn cache_status_lines<B>(response: &Response<B>) -> Vec<String> {
    response
        .headers()
        .get_all(&CACHE_STATUS)
        .iter()
        .map(|v| v.to_str().expect("ascii").to_owned())
        .collect()
}

/// The `ttl` parameter of our `Cache-Status` member.
fn ttl_param<B>(response: &Response<B>) -> i64 {
    let status = cache_status(response);
    status
        .split("; ")
        .find_map(|p| p.strip_prefix("ttl="))
        .unwrap_or_else(|| panic!("no ttl in {status}"))
        .parse()
        .expect("integer ttl")
}

/// An HTTP date `ago` seconds before now, on a whole second (HTTP dates have no fractions), so
/// the apparent age it gives is `ago` to `ago + 1` seconds.
fn date_ago(ago: u64) -> (SystemTime, String) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let at = UNIX_EPOCH + Duration::from_secs(now - ago);
    (at, httpdate::fmt_http_date(at))
}

// =====================================================================================
// Issue 3 §3: freshness and age
// =====================================================================================

/// "`Age` computed with the corrected initial age (origin `Age` and `Date` included)": a
/// `Date` 30 s in the past is 30 s of apparent age, on the first answer and every reuse, and
/// it comes off `max-age` and `Expires − Date` alike.
#[tokio::test(start_paused = true)]
async fn issue3_date_in_the_past_counts_as_apparent_age() -> TestResult {
    let (date, date_text) = date_ago(30);
    let expires = httpdate::fmt_http_date(date + secs(100));
    let (o, calls) = origin(move |_, request: Request<ReqBody>| {
        let date_text = date_text.clone();
        let expires = expires.clone();
        async move {
            Ok(if request.uri().path() == "/max-age" {
                respond(
                    200,
                    "m",
                    &[("cache-control", "max-age=60"), ("date", &date_text)],
                )
            } else {
                respond(200, "e", &[("expires", &expires), ("date", &date_text)])
            })
        }
    });
    let service = SwrLayer::shared_cache().layer(o);

    let miss = service.clone().oneshot(get("/max-age")).await?;
    assert_eq!(age(&miss), Some(30), "apparent age from Date");
    let hit = service.clone().oneshot(get("/max-age")).await?;
    assert_eq!(info(&hit).status, CacheStatus::Fresh);
    assert!(
        (29..=30).contains(&ttl_param(&hit)),
        "60 s of max-age minus 30 s of apparent age: {}",
        cache_status(&hit)
    );
    advance(secs(10)).await;
    let hit = service.clone().oneshot(get("/max-age")).await?;
    assert_eq!(age(&hit), Some(40));

    let miss = service.clone().oneshot(get("/expires")).await?;
    assert_eq!(age(&miss), Some(30));
    let hit = service.clone().oneshot(get("/expires")).await?;
    assert!(
        (69..=70).contains(&ttl_param(&hit)),
        "Expires − Date = 100 s, minus 30 s of apparent age: {}",
        cache_status(&hit)
    );
    assert_eq!(calls.get(), 2);
    Ok(())
}

/// RFC 9111 §4.2.3: `corrected_age_value = age_value + response_delay`. An origin that takes
/// 5 s to answer with `Age: 10` gives a response 15 s old when it arrives.
#[tokio::test(start_paused = true)]
async fn issue3_response_delay_is_added_to_the_origin_age() -> TestResult {
    let (o, _) = origin(|_, _| async move {
        tokio::time::sleep(secs(5)).await;
        Ok(respond(
            200,
            "slow",
            &[("cache-control", "max-age=60"), ("age", "10")],
        ))
    });
    let service = SwrLayer::shared_cache().layer(o);
    let miss = service.clone().oneshot(get("/slow")).await?;
    assert_eq!(
        age(&miss),
        Some(15),
        "corrected age = Age 10 + 5 s response delay"
    );
    let hit = service.clone().oneshot(get("/slow")).await?;
    assert_eq!(cache_status(&hit), "tower-swr; hit; ttl=45");
    Ok(())
}

/// §3.2/§4.3.4 with RFC 9110 §6.6.1: a 304 without `Date` freshens the entry as of when it was
/// received; the stored response's old `Date` must not make the freshened entry old again.
#[tokio::test(start_paused = true)]
async fn issue3_304_without_date_freshens_from_when_it_arrives() -> TestResult {
    let (_, date_text) = date_ago(100);
    let (o, calls) = origin(move |n, _| {
        let date_text = date_text.clone();
        async move {
            Ok(if n == 1 {
                respond(
                    200,
                    "body",
                    &[
                        ("cache-control", "max-age=200"),
                        ("etag", "\"e\""),
                        ("date", &date_text),
                    ],
                )
            } else {
                respond(
                    304,
                    "",
                    &[("cache-control", "max-age=200"), ("etag", "\"e\"")],
                )
            })
        }
    });
    let service = SwrLayer::shared_cache().layer(o);
    let miss = service.clone().oneshot(get("/d")).await?;
    assert_eq!(age(&miss), Some(100));
    body(miss).await?;
    advance(secs(101)).await;
    let revalidated = service.clone().oneshot(get("/d")).await?;
    assert_eq!(calls.get(), 2);
    assert_eq!(body(revalidated).await?, "body");
    let hit = service.clone().oneshot(get("/d")).await?;
    assert_eq!(info(&hit).status, CacheStatus::Fresh);
    assert!(
        ttl_param(&hit) >= 199,
        "freshened for max-age=200 from the 304's arrival: {}",
        cache_status(&hit)
    );
    assert!(age(&hit).unwrap() <= 1, "Age {:?}", age(&hit));
    Ok(())
}

/// "`Age` ... sent on every reused response": also on the answer built from a 304.
#[tokio::test(start_paused = true)]
async fn issue3_revalidated_answer_carries_age_and_updated_headers() -> TestResult {
    let seen = Seen::default();
    let (o, _) = origin({
        let seen = seen.clone();
        move |n, request: Request<ReqBody>| {
            seen.record(&request);
            async move {
                Ok(if n == 1 {
                    respond(
                        200,
                        "payload",
                        &[("cache-control", "max-age=10"), ("etag", "\"p\"")],
                    )
                } else {
                    respond(
                        304,
                        "",
                        &[
                            ("cache-control", "max-age=30"),
                            ("etag", "\"p\""),
                            ("age", "3"),
                            ("x-new", "yes"),
                        ],
                    )
                })
            }
        }
    });
    let service = SwrLayer::new().layer(o);
    body(service.clone().oneshot(get("/r")).await?).await?;
    // Past the default 120 s of stale-while-revalidate: a foreground revalidation.
    advance(secs(200)).await;
    let revalidated = service.clone().oneshot(get("/r")).await?;
    assert_eq!(
        sent(&seen.headers(2), "if-none-match").as_deref(),
        Some("\"p\"")
    );
    assert_eq!(revalidated.status(), StatusCode::OK);
    assert_eq!(age(&revalidated), Some(3), "the 304's own Age");
    assert_eq!(header_value(&revalidated, "x-new").as_deref(), Some("yes"));
    assert_eq!(body(revalidated).await?, "payload");
    let hit = service.clone().oneshot(get("/r")).await?;
    assert_eq!(cache_status(&hit), "tower-swr; hit; ttl=27");
    Ok(())
}

fn sent(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(|v| v.to_str().unwrap().to_owned())
}

// =====================================================================================
// Issue 3 §4: what may be stored and reused — Authorization (RFC 9111 §3.5)
// =====================================================================================

#[tokio::test(start_paused = true)]
async fn issue3_authorization_answers_shared_with_s_maxage_or_must_revalidate_only() -> TestResult {
    let (o, calls) = origin(|n, request: Request<ReqBody>| async move {
        let cc = match request.uri().path() {
            "/s-maxage" => "s-maxage=60",
            "/must-revalidate" => "max-age=60, must-revalidate",
            "/public" => "public, max-age=60",
            _ => "max-age=60",
        };
        Ok(reply_cc(format!("v{n}"), cc))
    });
    let service = SwrLayer::shared_cache().layer(o);
    let auth = |path: &str| req("GET", path, &[("authorization", "Bearer alice")]);
    for path in ["/s-maxage", "/must-revalidate", "/public"] {
        let before = calls.get();
        let first = service.clone().oneshot(auth(path)).await?;
        assert!(info(&first).stored, "{path}: stored");
        let again = service
            .clone()
            .oneshot(req("GET", path, &[("authorization", "Bearer bob")]))
            .await?;
        assert_eq!(info(&again).status, CacheStatus::Fresh, "{path}");
        assert_eq!(calls.get(), before + 1, "{path}");
    }
    let before = calls.get();
    let first = service.clone().oneshot(auth("/plain")).await?;
    assert!(!info(&first).stored, "max-age alone is not shareable");
    body(service.clone().oneshot(auth("/plain")).await?).await?;
    assert_eq!(calls.get(), before + 2);
    Ok(())
}

// =====================================================================================
// Issue 3 §2: stale only as the response or the operator allows, never when forbidden
// =====================================================================================

/// An origin answering `cache_control` (with an ETag) on its first call, 503 afterwards.
fn first_then_503(
    cache_control: &'static str,
) -> (
    impl Service<Request<ReqBody>, Response = Reply, Error = BoxError, Future: Send + 'static>
        + Clone
        + Send
        + 'static,
    Calls,
) {
    origin(move |n, _| async move {
        Ok(if n == 1 {
            respond(
                200,
                "old",
                &[("cache-control", cache_control), ("etag", "\"o\"")],
            )
        } else {
            respond(503, "down", &[])
        })
    })
}

#[tokio::test(start_paused = true)]
async fn issue3_shared_preset_operator_stale_if_error_and_forbidding_directives() -> TestResult {
    // The operator's explicit stale-if-error window applies to a response that names none.
    let (o, _) = first_then_503("max-age=10");
    let service = SwrLayer::shared_cache().stale_if_error(secs(60)).layer(o);
    body(service.clone().oneshot(get("/a")).await?).await?;
    advance(secs(11)).await;
    let rescued = service.clone().oneshot(get("/a")).await?;
    assert_eq!(rescued.status(), StatusCode::OK);
    assert_eq!(
        cache_status(&rescued),
        "tower-swr; fwd=stale; fwd-status=503"
    );
    assert_eq!(body(rescued).await?, "old");

    // The response's own windows never beat must-revalidate, proxy-revalidate, s-maxage or
    // no-cache (RFC 9111 §4.2.4), nor do the operator's.
    for cc in [
        "max-age=10, must-revalidate, stale-if-error=60, stale-while-revalidate=60",
        "max-age=10, proxy-revalidate, stale-if-error=60, stale-while-revalidate=60",
        "s-maxage=10, stale-if-error=60, stale-while-revalidate=60",
        "no-cache, stale-if-error=60, stale-while-revalidate=60",
    ] {
        for layer in [
            SwrLayer::shared_cache(),
            SwrLayer::shared_cache()
                .stale_if_error(secs(60))
                .stale_while_revalidate(secs(60)),
        ] {
            let (o, calls) = first_then_503(cc);
            let service = layer.layer(o);
            body(service.clone().oneshot(get("/f")).await?).await?;
            advance(secs(11)).await;
            let next = service.clone().oneshot(get("/f")).await?;
            assert_eq!(calls.get(), 2, "{cc}: the origin is asked");
            assert_eq!(next.status(), StatusCode::SERVICE_UNAVAILABLE, "{cc}");
            assert_eq!(cache_status(&next), "tower-swr; fwd=uri-miss", "{cc}");
        }
    }
    Ok(())
}

// =====================================================================================
// Issue 3 §6: invalidation
// =====================================================================================

#[tokio::test(start_paused = true)]
async fn issue3_redirecting_unsafe_request_invalidates_every_variant_and_locations() -> TestResult {
    let (o, calls) = origin(|n, request: Request<ReqBody>| async move {
        if request.method() == Method::GET {
            return Ok(respond(
                200,
                format!("v{n}"),
                &[
                    ("cache-control", "max-age=600"),
                    ("vary", "accept-language"),
                ],
            ));
        }
        // A 303 See Other (non-error) with a same-origin Location and Content-Location.
        Ok(respond(
            303,
            "",
            &[("location", "/done"), ("content-location", "/docs/sibling")],
        ))
    });
    let service = SwrLayer::new().layer(o);
    let lang = |path: &str, l: &str| req("GET", path, &[("accept-language", l)]);
    for path in ["/docs/page", "/docs/sibling", "/done"] {
        for l in ["en", "fr"] {
            body(service.clone().oneshot(lang(path, l)).await?).await?;
            let hit = service.clone().oneshot(lang(path, l)).await?;
            assert_eq!(info(&hit).status, CacheStatus::Fresh, "{path} {l}");
        }
    }
    let stored_calls = calls.get();
    assert_eq!(stored_calls, 6);
    let post = service
        .clone()
        .oneshot(req("POST", "/docs/page", &[]))
        .await?;
    assert_eq!(post.status(), StatusCode::SEE_OTHER);
    for path in ["/docs/page", "/docs/sibling", "/done"] {
        for l in ["en", "fr"] {
            let after = service.clone().oneshot(lang(path, l)).await?;
            assert_eq!(
                info(&after).status,
                CacheStatus::Miss,
                "{path} {l} must be invalidated by a 303 to an unsafe request"
            );
        }
    }
    Ok(())
}

/// RFC 9111 §4.4 invalidates the URI *references* in `Location` / `Content-Location`; a
/// relative-path reference (`sibling`, resolved against `/docs/page`) is same-origin.
#[tokio::test(start_paused = true)]
async fn issue3_relative_path_content_location_is_invalidated() -> TestResult {
    let (o, _) = origin(|n, request: Request<ReqBody>| async move {
        if request.method() == Method::GET {
            return Ok(reply_cc(format!("v{n}"), "max-age=600"));
        }
        Ok(respond(200, "", &[("content-location", "sibling")]))
    });
    let service = SwrLayer::new().layer(o);
    let on_host = |path: &str| req("GET", path, &[("host", "example.com")]);
    body(service.clone().oneshot(on_host("/docs/sibling")).await?).await?;
    let hit = service.clone().oneshot(on_host("/docs/sibling")).await?;
    assert_eq!(info(&hit).status, CacheStatus::Fresh);
    let put = req("PUT", "/docs/page", &[("host", "example.com")]);
    body(service.clone().oneshot(put).await?).await?;
    let after = service.clone().oneshot(on_host("/docs/sibling")).await?;
    assert_eq!(
        info(&after).status,
        CacheStatus::Miss,
        "Content-Location: sibling names /docs/sibling"
    );
    Ok(())
}

// =====================================================================================
// Issue 3 §8: Cache-Status appended after upstream members, on every kind of answer
// =====================================================================================

#[tokio::test(start_paused = true)]
async fn issue3_cache_status_follows_upstream_on_stale_rescued_and_collapsed_answers() -> TestResult
{
    let gate = Gate::new();
    let (o, _) = origin({
        let gate = gate.clone();
        move |n, request: Request<ReqBody>| {
            let gate = gate.clone();
            async move {
                let upstream = ("cache-status", "upstream; hit");
                Ok(match request.uri().path() {
                    "/collapse" => {
                        gate.wait().await;
                        respond(200, "c", &[("cache-control", "max-age=60"), upstream])
                    }
                    "/sie" if n > 1 => respond(503, "down", &[upstream]),
                    "/sie" => respond(
                        200,
                        "s",
                        &[
                            (
                                "cache-control",
                                "max-age=10, stale-while-revalidate=0, stale-if-error=600",
                            ),
                            upstream,
                        ],
                    ),
                    _ => respond(
                        200,
                        "x",
                        &[
                            ("cache-control", "max-age=10, stale-while-revalidate=60"),
                            upstream,
                        ],
                    ),
                })
            }
        }
    });
    let service = SwrLayer::new().layer(o);
    body(service.clone().oneshot(get("/sie")).await?).await?;
    body(service.clone().oneshot(get("/x")).await?).await?;

    let leader = tokio::spawn(service.clone().oneshot(get("/collapse")));
    settle().await;
    let waiter = tokio::spawn(service.clone().oneshot(get("/collapse")));
    settle().await;
    gate.open();
    let (leader, waiter) = (leader.await??, waiter.await??);
    assert_eq!(
        cache_status_lines(&leader),
        ["upstream; hit", "tower-swr; fwd=uri-miss; stored"]
    );
    assert_eq!(
        cache_status_lines(&waiter),
        ["upstream; hit", "tower-swr; fwd=uri-miss; collapsed"]
    );

    advance(secs(15) - Duration::from_millis(2)).await;
    let stale = service.clone().oneshot(get("/x")).await?;
    assert_eq!(
        cache_status_lines(&stale),
        ["upstream; hit", "tower-swr; hit; ttl=-5"]
    );
    let rescued = service.clone().oneshot(get("/sie")).await?;
    assert_eq!(
        cache_status_lines(&rescued),
        ["upstream; hit", "tower-swr; fwd=stale; fwd-status=503"],
        "the stored response's upstream member, then ours"
    );
    Ok(())
}

// =====================================================================================
// Issue 3 §5 + issue 5: one origin call per key under concurrency, also when validating
// =====================================================================================

#[tokio::test(start_paused = true)]
async fn issue3_concurrent_requests_on_an_expired_entry_revalidate_once() -> TestResult {
    let gate = Gate::new();
    let seen = Seen::default();
    let (o, calls) = origin({
        let gate = gate.clone();
        let seen = seen.clone();
        move |n, request: Request<ReqBody>| {
            seen.record(&request);
            let gate = gate.clone();
            async move {
                Ok(if n == 1 {
                    respond(
                        200,
                        "content",
                        &[("cache-control", "max-age=10"), ("etag", "\"c\"")],
                    )
                } else {
                    gate.wait().await;
                    respond(
                        304,
                        "",
                        &[("cache-control", "max-age=10"), ("etag", "\"c\"")],
                    )
                })
            }
        }
    });
    let service = SwrLayer::shared_cache().layer(o);
    body(service.clone().oneshot(get("/e")).await?).await?;
    advance(secs(11)).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        tasks.push(tokio::spawn(service.clone().oneshot(get("/e"))));
    }
    settle().await;
    gate.open();
    for task in tasks {
        let response = task.await??;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(body(response).await?, "content");
    }
    assert_eq!(calls.get(), 2, "one conditional request for 20 clients");
    assert_eq!(
        sent(&seen.headers(2), "if-none-match").as_deref(),
        Some("\"c\"")
    );
    Ok(())
}

/// Concurrent requests on an expired entry with stale-if-error, the origin answering 503: one
/// origin call, every client gets the stale response.
#[tokio::test(start_paused = true)]
async fn issue3_concurrent_requests_rescued_by_stale_if_error_make_one_call() -> TestResult {
    let gate = Gate::new();
    let (o, calls) = origin({
        let gate = gate.clone();
        move |n, _| {
            let gate = gate.clone();
            async move {
                Ok(if n == 1 {
                    reply_cc("good", "max-age=10, stale-if-error=600")
                } else {
                    gate.wait().await;
                    respond(503, "down", &[])
                })
            }
        }
    });
    let service = SwrLayer::shared_cache().layer(o);
    body(service.clone().oneshot(get("/s")).await?).await?;
    advance(secs(11)).await;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        tasks.push(tokio::spawn(service.clone().oneshot(get("/s"))));
    }
    settle().await;
    gate.open();
    for task in tasks {
        let response = task.await??;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(info(&response).status, CacheStatus::StaleIfError);
        assert!(
            cache_status(&response).starts_with("tower-swr; fwd=stale"),
            "{}",
            cache_status(&response)
        );
        assert_eq!(body(response).await?, "good");
    }
    assert_eq!(calls.get(), 2);
    Ok(())
}

/// Issue 3 §8 quotes `tower-swr; fwd=stale; fwd-status=503` for "stale after an origin error".
/// Requests that waited on the failing origin call get the member without `fwd-status`.
#[tokio::test(start_paused = true)]
async fn issue3_waiters_rescued_after_a_503_report_its_fwd_status() -> TestResult {
    let gate = Gate::new();
    let (o, _) = origin({
        let gate = gate.clone();
        move |n, _| {
            let gate = gate.clone();
            async move {
                Ok(if n == 1 {
                    reply_cc("good", "max-age=10, stale-if-error=600")
                } else {
                    gate.wait().await;
                    respond(503, "down", &[])
                })
            }
        }
    });
    let service = SwrLayer::shared_cache().layer(o);
    body(service.clone().oneshot(get("/s")).await?).await?;
    advance(secs(11)).await;
    let tasks: Vec<_> = (0..3)
        .map(|_| tokio::spawn(service.clone().oneshot(get("/s"))))
        .collect();
    settle().await;
    gate.open();
    for task in tasks {
        let response = task.await??;
        assert_eq!(
            cache_status(&response),
            "tower-swr; fwd=stale; fwd-status=503"
        );
    }
    Ok(())
}

// =====================================================================================
// Issue 5: never mix up keys — non-UTF-8 hosts
// =====================================================================================

#[tokio::test(start_paused = true)]
async fn issue5_non_utf8_hosts_never_share_entries() -> TestResult {
    let (o, calls) = origin(|_, request: Request<ReqBody>| async move {
        let host = request
            .headers()
            .get(header::HOST)
            .map_or(b"-".to_vec(), |h| h.as_bytes().to_vec());
        Ok(reply_cc(Bytes::from(host), "max-age=60"))
    });
    let service = SwrLayer::new().layer(o);
    let a = service
        .clone()
        .oneshot(get_raw("/page", "host", b"a\xff.example"))
        .await?;
    assert_eq!(body(a).await?, &b"a\xff.example"[..]);
    let b = service
        .clone()
        .oneshot(get_raw("/page", "host", b"b\xff.example"))
        .await?;
    assert_eq!(
        body(b).await?,
        &b"b\xff.example"[..],
        "host b got host a's page"
    );
    let none = service.clone().oneshot(get("/page")).await?;
    assert_eq!(
        body(none).await?,
        "-",
        "a Host-less request got another host's page"
    );
    assert_eq!(calls.get(), 3);
    Ok(())
}

// =====================================================================================
// Issue 5: bad input — non-UTF-8 validators, conditionals, ranges, locations
// =====================================================================================

#[tokio::test(start_paused = true)]
async fn issue5_non_utf8_validators_conditionals_and_locations_get_clear_answers() -> TestResult {
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

/// RFC 9110 §13.1.5: a `Range` with an `If-Range` that does not match the stored validator is
/// answered with the whole representation. An unreadable (non-UTF-8) `If-Range` matches
/// nothing, so it must mean 200, not 206.
#[tokio::test(start_paused = true)]
async fn issue5_unreadable_if_range_means_the_whole_body() -> TestResult {
    let (o, _) = origin(|_, _| async move {
        Ok(respond(
            200,
            "0123456789",
            &[("cache-control", "max-age=60"), ("etag", "\"v\"")],
        ))
    });
    let service = SwrLayer::new().layer(o);
    body(service.clone().oneshot(get("/ir")).await?).await?;
    let mut request = get_raw("/ir", "if-range", b"\"v\xff\"");
    request
        .headers_mut()
        .insert(header::RANGE, HeaderValue::from_static("bytes=0-1"));
    let response = service.clone().oneshot(request).await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body(response).await?, "0123456789");
    Ok(())
}

// =====================================================================================
// Issue 5: cancellation and panics while a body is read; nothing left in flight
// =====================================================================================

/// How a scripted body ends after its chunks.
#[derive(Clone, Copy, Debug)]
enum End {
    Finish,
    Hang,
    Panic,
}

/// A body that yields its chunks (a `Pending` before each) and then ends as `end` says.
#[derive(Debug)]
struct ScriptBody {
    chunks: VecDeque<Bytes>,
    end: End,
    ready: bool,
}

impl ScriptBody {
    fn new(chunks: &[&'static str], end: End) -> Self {
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
fn scripted(
    cache_control: &'static str,
    end: fn(usize) -> End,
) -> (
    impl Service<
            Request<ReqBody>,
            Response = Response<ScriptBody>,
            Error = BoxError,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static,
    Calls,
) {
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

#[tokio::test(start_paused = true)]
async fn issue5_leader_dropped_while_its_body_is_read_hands_over_at_once() -> TestResult {
    let (o, calls) = scripted(
        "max-age=60",
        |n| if n == 1 { End::Hang } else { End::Finish },
    );
    let layer = SwrLayer::new().lock_timeout(secs(3600));
    let service = layer.layer(o);
    let leader = tokio::spawn(service.clone().oneshot(get("/k")));
    settle().await;
    assert_eq!(calls.get(), 1);
    let waiter = tokio::spawn(service.clone().oneshot(get("/k")));
    settle().await;
    assert_eq!(calls.get(), 1, "the second request waits for the leader");
    leader.abort();
    let started = Instant::now();
    let response = timeout(secs(1), waiter)
        .await
        .expect("the waiter hung after its leader was dropped mid-body")??;
    assert!(started.elapsed() < secs(1));
    assert_eq!(body(response).await?, "call 2");
    settle().await;
    let stats = layer.stats();
    assert_eq!(stats.loads_running, 0, "nothing left in flight");
    assert_eq!(stats.refreshes_running, 0);
    let hit = service.clone().oneshot(get("/k")).await?;
    assert_eq!(info(&hit).status, CacheStatus::Fresh);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn issue5_leader_whose_body_panics_does_not_strand_its_waiter() -> TestResult {
    let (o, calls) = scripted(
        "max-age=60",
        |n| if n == 1 { End::Panic } else { End::Finish },
    );
    let layer = SwrLayer::new().lock_timeout(secs(3600));
    let service = layer.layer(o);
    let leader = tokio::spawn(service.clone().oneshot(get("/p")));
    // Let the leader reach its body (before the panic) with the waiter queued behind it.
    tokio::task::yield_now().await;
    let waiter = tokio::spawn(service.clone().oneshot(get("/p")));
    let leader = leader.await;
    assert!(
        leader.as_ref().err().is_some_and(|e| e.is_panic()) || leader.is_ok(),
        "the leader ends: {leader:?}"
    );
    let response = timeout(secs(1), waiter)
        .await
        .expect("the waiter hung after its leader panicked mid-body")??;
    let text = body(response).await?;
    assert!(text == "call 2" || text == "call 1", "{text:?}");
    assert!(calls.get() <= 2);
    settle().await;
    assert_eq!(layer.stats().loads_running, 0, "nothing left in flight");
    let again = service.clone().oneshot(get("/p")).await?;
    assert!(matches!(
        info(&again).status,
        CacheStatus::Fresh | CacheStatus::Miss
    ));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn issue5_refresh_whose_body_panics_keeps_the_stale_entry_and_retries_later() -> TestResult {
    let (o, calls) = scripted("max-age=10, stale-while-revalidate=600", |n| {
        if n == 2 {
            End::Panic
        } else {
            End::Finish
        }
    });
    let layer = SwrLayer::new().refresh_backoff(secs(1), secs(1));
    let service = layer.layer(o);
    assert_eq!(
        body(service.clone().oneshot(get("/r")).await?).await?,
        "call 1"
    );
    advance(secs(11)).await;
    let stale = service.clone().oneshot(get("/r")).await?;
    assert_eq!(info(&stale).status, CacheStatus::Stale);
    assert_eq!(body(stale).await?, "call 1");
    settle().await;
    assert_eq!(calls.get(), 2);
    let stats = layer.stats();
    assert_eq!(stats.refreshes_panicked, 1);
    assert_eq!(stats.refreshes_running, 0);
    assert_eq!(stats.loads_running, 0);

    let still = service.clone().oneshot(get("/r")).await?;
    assert_eq!(info(&still).status, CacheStatus::Stale);
    assert_eq!(body(still).await?, "call 1", "the stale copy survives");
    advance(secs(3)).await;
    body(service.clone().oneshot(get("/r")).await?).await?;
    settle().await;
    assert_eq!(calls.get(), 3, "the key refreshes again after the backoff");
    let fresh = service.clone().oneshot(get("/r")).await?;
    assert_eq!(info(&fresh).status, CacheStatus::Fresh);
    assert_eq!(body(fresh).await?, "call 3");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn issue5_cancelled_clients_leave_nothing_in_flight() -> TestResult {
    let gate = Gate::new();
    let (o, calls) = origin({
        let gate = gate.clone();
        move |n, request: Request<ReqBody>| {
            let gate = gate.clone();
            async move {
                gate.wait().await;
                Ok(reply_cc(
                    format!("{} #{n}", request.uri().path()),
                    "max-age=60",
                ))
            }
        }
    });
    let layer = SwrLayer::new().lock_timeout(secs(3600));
    let service = layer.layer(o);
    let mut tasks = Vec::new();
    for i in 0..40 {
        tasks.push(tokio::spawn(
            service.clone().oneshot(get(&format!("/k{}", i % 5))),
        ));
    }
    settle().await;
    assert_eq!(calls.get(), 5, "one origin call per key");
    // Every leader (the first five) and every other waiter goes away.
    for (i, task) in tasks.iter().enumerate() {
        if i < 5 || i % 2 == 0 {
            task.abort();
        }
    }
    settle().await;
    gate.open();
    for (i, task) in tasks.into_iter().enumerate() {
        match timeout(secs(5), task).await.expect("a request hung") {
            Ok(response) => {
                let response = response?;
                let bytes = body(response).await?;
                assert!(
                    bytes.starts_with(format!("/k{}", i % 5).as_bytes()),
                    "request {i} got {bytes:?}"
                );
            }
            Err(e) => assert!(e.is_cancelled(), "{e}"),
        }
    }
    settle().await;
    let stats = layer.stats();
    assert_eq!(stats.loads_running, 0, "nothing left in flight");
    assert_eq!(stats.refreshes_running, 0);
    for k in 0..5 {
        let response = timeout(secs(5), service.clone().oneshot(get(&format!("/k{k}"))))
            .await
            .expect("the key is wedged")?;
        assert!(body(response)
            .await?
            .starts_with(format!("/k{k}").as_bytes()));
    }
    Ok(())
}

// =====================================================================================
// Issue 5: bytes held ≤ the configured capacity
// =====================================================================================

#[tokio::test(start_paused = true)]
async fn issue5_bytes_held_stay_within_the_configured_capacity() -> TestResult {
    const CAPACITY: u64 = 64 * 1024;
    let (o, _) = origin(|_, request: Request<ReqBody>| async move {
        let size = if request.uri().path() == "/huge" {
            200 * 1024
        } else {
            4 * 1024
        };
        let mut text = request.uri().path().as_bytes().to_vec();
        text.resize(size, b'.');
        Ok(reply_cc(Bytes::from(text), "max-age=600"))
    });
    let layer = SwrLayer::new().capacity_bytes(CAPACITY);
    let service = layer.layer(o);
    for i in 0..200 {
        let path = format!("/k{i}");
        let response = service.clone().oneshot(get(&path)).await?;
        let bytes = body(response).await?;
        assert!(bytes.starts_with(path.as_bytes()));
        let stats = layer.stats();
        assert!(
            stats.bytes <= CAPACITY,
            "{} bytes held over a {CAPACITY}-byte budget",
            stats.bytes
        );
    }
    let stats = layer.stats();
    assert!(stats.entries > 0 && stats.evictions > 0, "{stats:?}");
    // A body larger than the whole budget reaches its client whole and is not held.
    let huge = service.clone().oneshot(get("/huge")).await?;
    assert!(!info(&huge).stored);
    let bytes = body(huge).await?;
    assert_eq!(bytes.len(), 200 * 1024);
    assert!(bytes.starts_with(b"/huge"));
    assert!(layer.stats().bytes <= CAPACITY);
    Ok(())
}
