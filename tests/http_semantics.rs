//! HTTP caching semantics (issue 3): the two presets, freshness and age, what may be stored and
//! reused, validation, clients' conditionals and ranges, invalidation, the Cookie rule,
//! `Cache-Status` and `Surrogate-Control`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::*;
use http::header::{self, HeaderMap, HeaderName};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::time::advance;
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

/// A `GET` with the given headers (appended, so names may repeat).
fn get_headers(uri: &str, headers: &[(&str, &str)]) -> Request<ReqBody> {
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
struct Seen(Arc<Mutex<Vec<(Method, String, HeaderMap)>>>);

impl Seen {
    fn record(&self, request: &Request<ReqBody>) {
        self.0.lock().unwrap().push((
            request.method().clone(),
            request.uri().to_string(),
            request.headers().clone(),
        ));
    }

    /// The headers of the `n`-th origin request (from 1).
    fn headers(&self, n: usize) -> HeaderMap {
        self.0.lock().unwrap()[n - 1].2.clone()
    }

    fn last_headers(&self) -> HeaderMap {
        self.0.lock().unwrap().last().expect("a request").2.clone()
    }
}

fn text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|v| v.to_str().expect("ascii").to_owned())
}

/// All `Cache-Status` lines of a response, in order.
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

fn http_date(at: SystemTime) -> String {
    httpdate::fmt_http_date(at)
}

// ---- the two presets ----

#[tokio::test(start_paused = true)]
async fn presets_differ_on_a_response_without_freshness() -> TestResult {
    // Application preset: 60 s fresh by default, then stale-while-revalidate.
    let (app_origin, app_calls) = origin(|n, _| async move { Ok(reply(format!("v{n}"))) });
    let app = SwrLayer::new().layer(app_origin);
    let miss = app.clone().oneshot(get("/plain")).await?;
    assert_eq!(cache_status(&miss), "tower-swr; fwd=uri-miss; stored");
    advance(secs(30)).await;
    let hit = app.clone().oneshot(get("/plain")).await?;
    assert_eq!(cache_status(&hit), "tower-swr; hit; ttl=30");
    assert_eq!(body(hit).await?, "v1");
    assert_eq!(app_calls.get(), 1);

    // Shared-cache preset: no freshness, no validators, no Last-Modified: never reused.
    let (shared_origin, shared_calls) = origin(|n, _| async move { Ok(reply(format!("v{n}"))) });
    let shared = SwrLayer::shared_cache().layer(shared_origin);
    let miss = shared.clone().oneshot(get("/plain")).await?;
    assert_eq!(cache_status(&miss), "tower-swr; fwd=uri-miss");
    assert!(!info(&miss).stored);
    let again = shared.clone().oneshot(get("/plain")).await?;
    assert_eq!(shared_calls.get(), 2, "the shared preset must not reuse it");
    assert_eq!(body(again).await?, "v2");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn shared_preset_reuses_with_the_last_modified_heuristic() -> TestResult {
    // Modified 1000 s ago: RFC 9111 §4.2.2 heuristic of 10 % = 100 s of freshness.
    let last_modified = http_date(SystemTime::now() - secs(1000));
    let seen = Seen::default();
    let make = |seen: Seen, lm: String| {
        origin(move |n, request: Request<ReqBody>| {
            seen.record(&request);
            let lm = lm.clone();
            async move {
                Ok(with_header(
                    reply(format!("v{n}")),
                    header::LAST_MODIFIED,
                    &lm,
                ))
            }
        })
    };
    let (shared_origin, calls) = make(seen.clone(), last_modified.clone());
    let shared = SwrLayer::shared_cache().layer(shared_origin);
    body(shared.clone().oneshot(get("/lm")).await?).await?;

    advance(secs(90)).await;
    let hit = shared.clone().oneshot(get("/lm")).await?;
    assert_eq!(info(&hit).status, CacheStatus::Fresh);
    assert_eq!(body(hit).await?, "v1");
    assert_eq!(calls.get(), 1);

    advance(secs(11)).await;
    let revalidated = shared.clone().oneshot(get("/lm")).await?;
    assert_eq!(
        calls.get(),
        2,
        "past the heuristic lifetime the origin is asked"
    );
    assert_eq!(
        text(&seen.last_headers(), "if-modified-since"),
        Some(last_modified.clone())
    );
    assert_eq!(body(revalidated).await?, "v2");

    // The application preset uses its own 60 s default instead of the heuristic.
    let (app_origin, _) = make(Seen::default(), last_modified);
    let app = SwrLayer::new().layer(app_origin);
    body(app.clone().oneshot(get("/lm")).await?).await?;
    advance(secs(90)).await;
    let stale = app.clone().oneshot(get("/lm")).await?;
    assert_eq!(info(&stale).status, CacheStatus::Stale);
    Ok(())
}

// ---- stale only when allowed ----

/// An origin answering `cache_control` on its first call and 503 afterwards.
fn then_503(
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
                "v1",
                &[("cache-control", cache_control), ("etag", "\"e\"")],
            )
        } else {
            respond(503, "down", &[])
        })
    })
}

#[tokio::test(start_paused = true)]
async fn shared_preset_serves_stale_only_as_the_response_allows() -> TestResult {
    // No stale-while-revalidate: an expired entry is not served while it refreshes.
    let (o, calls) = origin(|n, _| async move { Ok(reply_cc(format!("v{n}"), "max-age=10")) });
    let service = SwrLayer::shared_cache().layer(o);
    body(service.clone().oneshot(get("/a")).await?).await?;
    advance(secs(11)).await;
    let next = service.clone().oneshot(get("/a")).await?;
    assert_eq!(info(&next).status, CacheStatus::Miss);
    assert_eq!(calls.get(), 2);
    assert_eq!(body(next).await?, "v2");

    // With the response's own stale-while-revalidate=, it is.
    let (o, _) = origin(|n, _| async move {
        Ok(reply_cc(
            format!("v{n}"),
            "max-age=10, stale-while-revalidate=30",
        ))
    });
    let service = SwrLayer::shared_cache().layer(o);
    body(service.clone().oneshot(get("/a")).await?).await?;
    advance(secs(11)).await;
    let stale = service.clone().oneshot(get("/a")).await?;
    assert_eq!(info(&stale).status, CacheStatus::Stale);
    assert_eq!(body(stale).await?, "v1");

    // Or with the operator's explicit window.
    let (o, _) = origin(|n, _| async move { Ok(reply_cc(format!("v{n}"), "max-age=10")) });
    let service = SwrLayer::shared_cache()
        .stale_while_revalidate(secs(30))
        .layer(o);
    body(service.clone().oneshot(get("/a")).await?).await?;
    advance(secs(11)).await;
    let stale = service.clone().oneshot(get("/a")).await?;
    assert_eq!(info(&stale).status, CacheStatus::Stale);

    // No stale-if-error=: a failing origin's 503 goes through.
    let (o, _) = then_503("max-age=10");
    let service = SwrLayer::shared_cache().layer(o);
    body(service.clone().oneshot(get("/a")).await?).await?;
    advance(secs(11)).await;
    let failed = service.clone().oneshot(get("/a")).await?;
    assert_eq!(failed.status(), StatusCode::SERVICE_UNAVAILABLE);

    // With stale-if-error=, the stale entry answers instead.
    let (o, _) = then_503("max-age=10, stale-if-error=60");
    let service = SwrLayer::shared_cache().layer(o);
    body(service.clone().oneshot(get("/a")).await?).await?;
    advance(secs(11)).await;
    let rescued = service.clone().oneshot(get("/a")).await?;
    assert_eq!(rescued.status(), StatusCode::OK);
    assert_eq!(info(&rescued).status, CacheStatus::StaleIfError);
    assert_eq!(body(rescued).await?, "v1");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn app_preset_default_stale_windows_yield_to_directives_that_forbid_stale() -> TestResult {
    // Control: without such a directive the default windows serve stale.
    let (o, _) = then_503("max-age=10");
    let service = SwrLayer::new().layer(o);
    body(service.clone().oneshot(get("/c")).await?).await?;
    advance(secs(11)).await;
    let stale = service.clone().oneshot(get("/c")).await?;
    assert_eq!(info(&stale).status, CacheStatus::Stale);

    for cache_control in [
        "max-age=10, must-revalidate",
        "max-age=10, proxy-revalidate",
        "s-maxage=10",
        "no-cache",
    ] {
        let (o, calls) = then_503(cache_control);
        let service = SwrLayer::new().layer(o);
        let first = service.clone().oneshot(get("/c")).await?;
        assert!(info(&first).stored, "{cache_control}: stored");
        advance(secs(11)).await;
        let next = service.clone().oneshot(get("/c")).await?;
        assert_eq!(calls.get(), 2, "{cache_control}: must go to the origin");
        assert_eq!(
            next.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{cache_control}: no default stale-if-error either"
        );
        assert_eq!(info(&next).status, CacheStatus::Miss, "{cache_control}");
    }
    Ok(())
}

// ---- freshness ----

/// A lifetime check: the response `headers` stored by the shared preset, then a hit at once.
async fn ttl_of(headers: Vec<(&'static str, String)>) -> Result<Option<i64>, BoxError> {
    let (o, calls) = origin(move |_, _| {
        let headers = headers.clone();
        async move {
            let mut response = reply("x");
            for (name, value) in &headers {
                response
                    .headers_mut()
                    .append(*name, HeaderValue::from_str(value).expect("value"));
            }
            Ok(response)
        }
    });
    let service = SwrLayer::shared_cache().layer(o);
    body(service.clone().oneshot(get("/f")).await?).await?;
    let second = service.clone().oneshot(get("/f")).await?;
    Ok(match calls.get() {
        1 => Some(ttl_param(&second)),
        _ => None,
    })
}

#[tokio::test(start_paused = true)]
async fn s_maxage_beats_max_age_beats_expires_minus_date() -> TestResult {
    // The origin's clock is a little ahead, so the response has no apparent age.
    let date = SystemTime::now() + secs(10);
    let dates = || {
        vec![
            ("date", http_date(date)),
            ("expires", http_date(date + secs(100))),
        ]
    };
    let with = |cc: &str| {
        let mut headers = dates();
        headers.push(("cache-control", cc.to_owned()));
        headers
    };
    assert_eq!(ttl_of(with("s-maxage=30, max-age=10")).await?, Some(30));
    assert_eq!(ttl_of(with("max-age=10, s-maxage=30")).await?, Some(30));
    assert_eq!(ttl_of(with("max-age=20")).await?, Some(20));
    assert_eq!(ttl_of(dates()).await?, Some(100));
    // An invalid Expires means already expired.
    assert_eq!(
        ttl_of(vec![
            ("expires", "0".to_owned()),
            ("etag", "\"x\"".to_owned())
        ])
        .await?,
        None
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn duplicate_invalid_and_quoted_directives() -> TestResult {
    let cc = |v: &str| ("cache-control", v.to_owned());
    assert_eq!(
        ttl_of(vec![cc("max-age=20, max-age=100")]).await?,
        Some(20),
        "the first of duplicate directives wins"
    );
    assert_eq!(
        ttl_of(vec![cc("max-age=20"), cc("max-age=100")]).await?,
        Some(20),
        "also across lines"
    );
    assert_eq!(ttl_of(vec![cc("MAX-AGE=25")]).await?, Some(25));
    assert_eq!(ttl_of(vec![cc("max-age=\"30\"")]).await?, Some(30));
    assert_eq!(
        ttl_of(vec![cc("max-age=abc")]).await?,
        None,
        "an invalid max-age makes the response stale"
    );
    assert_eq!(ttl_of(vec![cc("max-age=-1")]).await?, None);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn invalid_max_age_is_stale_in_the_app_preset_too() -> TestResult {
    // RFC 9111 §4.2.1: an invalid lifetime means stale now, so the preset's default stale
    // windows do not apply; without validators nothing could ever be served: not stored.
    let (o, calls) = origin(|n, _| async move { Ok(reply_cc(format!("v{n}"), "max-age=abc")) });
    let service = SwrLayer::new().layer(o);
    let first = service.clone().oneshot(get("/i")).await?;
    assert_eq!(cache_status(&first), "tower-swr; fwd=uri-miss");
    body(first).await?;
    let next = service.clone().oneshot(get("/i")).await?;
    assert_eq!(info(&next).status, CacheStatus::Miss);
    assert_eq!(body(next).await?, "v2");
    assert_eq!(calls.get(), 2);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn origin_age_is_subtracted_from_the_lifetime() -> TestResult {
    let (o, calls) = origin(|_, _| async move {
        Ok(respond(
            200,
            "aged",
            &[("cache-control", "max-age=60"), ("age", "50")],
        ))
    });
    let service = SwrLayer::shared_cache().layer(o);
    let miss = service.clone().oneshot(get("/age")).await?;
    assert_eq!(age(&miss), Some(50));
    let hit = service.clone().oneshot(get("/age")).await?;
    assert_eq!(cache_status(&hit), "tower-swr; hit; ttl=10");
    assert_eq!(age(&hit), Some(50));
    advance(secs(4)).await;
    let hit = service.clone().oneshot(get("/age")).await?;
    assert_eq!(cache_status(&hit), "tower-swr; hit; ttl=6");
    assert_eq!(age(&hit), Some(54));
    advance(secs(7)).await;
    body(service.clone().oneshot(get("/age")).await?).await?;
    assert_eq!(calls.get(), 2, "60 s of max-age minus 50 s of Age is over");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn invalid_age_makes_the_response_stale() -> TestResult {
    for bad_age in ["abc", "-5", "1.5"] {
        // Without validators it is not kept at all.
        let (o, calls) = origin(move |_, _| async move {
            Ok(respond(
                200,
                "x",
                &[("cache-control", "max-age=600"), ("age", bad_age)],
            ))
        });
        let service = SwrLayer::shared_cache().layer(o);
        body(service.clone().oneshot(get("/bad-age")).await?).await?;
        body(service.clone().oneshot(get("/bad-age")).await?).await?;
        assert_eq!(calls.get(), 2, "Age: {bad_age:?} must not be fresh");
    }

    // With a validator it is kept, and revalidated before reuse.
    let seen = Seen::default();
    let (o, calls) = origin({
        let seen = seen.clone();
        move |_, request: Request<ReqBody>| {
            seen.record(&request);
            async move {
                Ok(respond(
                    200,
                    "x",
                    &[
                        ("cache-control", "max-age=600"),
                        ("age", "abc"),
                        ("etag", "\"t\""),
                    ],
                ))
            }
        }
    });
    let service = SwrLayer::shared_cache().layer(o);
    body(service.clone().oneshot(get("/bad-age")).await?).await?;
    body(service.clone().oneshot(get("/bad-age")).await?).await?;
    assert_eq!(calls.get(), 2);
    assert_eq!(
        text(&seen.headers(2), "if-none-match").as_deref(),
        Some("\"t\"")
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn age_is_sent_on_every_reused_response() -> TestResult {
    let (o, _) = origin(|n, _| async move {
        Ok(if n == 1 {
            respond(
                200,
                "0123456789",
                &[
                    (
                        "cache-control",
                        "max-age=10, stale-while-revalidate=10, stale-if-error=100",
                    ),
                    ("etag", "\"e\""),
                ],
            )
        } else {
            respond(503, "down", &[])
        })
    });
    let service = SwrLayer::new().layer(o);
    let miss = service.clone().oneshot(get("/aged")).await?;
    assert_eq!(age(&miss), Some(0));

    advance(secs(5)).await;
    let hit = service.clone().oneshot(get("/aged")).await?;
    assert_eq!(age(&hit), Some(5));
    let not_modified = service
        .clone()
        .oneshot(get_with("/aged", header::IF_NONE_MATCH, "\"e\""))
        .await?;
    assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(age(&not_modified), Some(5));
    let partial = service
        .clone()
        .oneshot(get_with("/aged", header::RANGE, "bytes=0-1"))
        .await?;
    assert_eq!(partial.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(age(&partial), Some(5));
    let head = service
        .clone()
        .oneshot(request(Method::HEAD, "/aged"))
        .await?;
    assert_eq!(age(&head), Some(5));

    advance(secs(7)).await;
    let stale = service.clone().oneshot(get("/aged")).await?;
    assert_eq!(info(&stale).status, CacheStatus::Stale);
    assert_eq!(age(&stale), Some(12));
    settle().await;

    advance(secs(13)).await;
    let rescued = service.clone().oneshot(get("/aged")).await?;
    assert_eq!(info(&rescued).status, CacheStatus::StaleIfError);
    assert_eq!(age(&rescued), Some(25));
    Ok(())
}

// ---- what may be stored ----

#[tokio::test(start_paused = true)]
async fn only_get_and_head_are_cached() -> TestResult {
    let (o, calls) = origin(|n, request: Request<ReqBody>| async move {
        Ok(reply_cc(
            format!("{} {n}", request.method()),
            "public, max-age=60",
        ))
    });
    let service = SwrLayer::new().convert_head(true).layer(o);
    let mut expected = 0;
    for method in ["OPTIONS", "PROPFIND", "POST"] {
        let method = Method::from_bytes(method.as_bytes())?;
        for _ in 0..2 {
            let response = service
                .clone()
                .oneshot(request(method.clone(), "/m"))
                .await?;
            expected += 1;
            assert_eq!(calls.get(), expected, "{method} reaches the origin");
            assert_eq!(cache_status(&response), "tower-swr; fwd=method");
        }
    }
    // Nothing those methods got was stored for GET.
    let response = service.clone().oneshot(get("/m")).await?;
    assert_eq!(calls.get(), expected + 1);
    assert_eq!(body(response).await?, format!("GET {}", expected + 1));

    // A HEAD miss asks the origin with GET and stores the answer (nginx's
    // proxy_cache_convert_head): the HEAD gets the headers only, later HEADs and GETs hit.
    let head = service.clone().oneshot(request(Method::HEAD, "/h")).await?;
    assert_eq!(calls.get(), expected + 2);
    assert_eq!(cache_status(&head), "tower-swr; fwd=uri-miss; stored");
    assert!(body(head).await?.is_empty());
    let head_again = service.clone().oneshot(request(Method::HEAD, "/h")).await?;
    assert_eq!(info(&head_again).status, CacheStatus::Fresh);
    assert!(body(head_again).await?.is_empty());
    let get_after_head = service.clone().oneshot(get("/h")).await?;
    assert_eq!(info(&get_after_head).status, CacheStatus::Fresh);
    assert_eq!(body(get_after_head).await?, format!("GET {}", expected + 2));
    assert_eq!(calls.get(), expected + 2);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn head_misses_pass_through_unstored_when_not_converted() -> TestResult {
    let (o, calls) = origin(|n, request: Request<ReqBody>| async move {
        Ok(reply_cc(
            format!("{} {n}", request.method()),
            "public, max-age=60",
        ))
    });
    let service = SwrLayer::new().convert_head(false).layer(o);
    for n in 1..=2 {
        let head = service.clone().oneshot(request(Method::HEAD, "/h")).await?;
        assert_eq!(calls.get(), n, "every HEAD miss reaches the origin");
        assert_eq!(cache_status(&head), "tower-swr; fwd=uri-miss");
        assert_eq!(body(head).await?, format!("HEAD {n}"));
    }
    let get_after_head = service.clone().oneshot(get("/h")).await?;
    assert_eq!(info(&get_after_head).status, CacheStatus::Miss);
    assert_eq!(body(get_after_head).await?, "GET 3");
    // A HEAD is still answered from the stored GET.
    let head = service.clone().oneshot(request(Method::HEAD, "/h")).await?;
    assert_eq!(info(&head).status, CacheStatus::Fresh);
    assert_eq!(calls.get(), 3);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn partial_and_not_modified_responses_are_not_stored() -> TestResult {
    let (o, calls) = origin(|_, request: Request<ReqBody>| async move {
        Ok(match request.uri().path() {
            "/partial" => respond(
                206,
                "01",
                &[
                    ("cache-control", "max-age=60"),
                    ("content-range", "bytes 0-1/10"),
                ],
            ),
            _ => respond(
                304,
                "",
                &[("cache-control", "max-age=60"), ("etag", "\"n\"")],
            ),
        })
    });
    let service = SwrLayer::new().layer(o);
    for path in ["/partial", "/not-modified"] {
        let before = calls.get();
        let first = service.clone().oneshot(get(path)).await?;
        assert!(!info(&first).stored, "{path}");
        body(service.clone().oneshot(get(path)).await?).await?;
        assert_eq!(calls.get(), before + 2, "{path} must not be reused");
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn only_heuristically_cacheable_statuses_get_default_freshness() -> TestResult {
    let (o, calls) = origin(|_, request: Request<ReqBody>| async move {
        let path = request.uri().path().to_owned();
        let status: u16 = path[1..4].parse().expect("status in the path");
        let explicit = path.ends_with("explicit");
        let mut response = reply_status(StatusCode::from_u16(status)?, "x");
        if explicit {
            response = with_header(response, header::CACHE_CONTROL, "max-age=60");
        }
        Ok(response)
    });
    // Failures are not remembered here: the test is about what is stored.
    let service = SwrLayer::new()
        .remember_failures(std::time::Duration::ZERO)
        .layer(o);
    let mut expected = 0;
    for (path, reused) in [
        ("/201", false),
        ("/403", false),
        ("/502", false),
        ("/200", true),
        ("/204", true),
        ("/404", true),
        ("/410", true),
        ("/201-explicit", true),
        ("/403-explicit", true),
    ] {
        body(service.clone().oneshot(get(path)).await?).await?;
        let second = service.clone().oneshot(get(path)).await?;
        expected += if reused { 1 } else { 2 };
        assert_eq!(calls.get(), expected, "{path}: reused = {reused}");
        if reused {
            assert_eq!(info(&second).status, CacheStatus::Fresh, "{path}");
        }
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn server_error_with_explicit_freshness_is_stored_by_the_shared_preset() -> TestResult {
    let (o, calls) =
        origin(|_, _| async move { Ok(respond(500, "oops", &[("cache-control", "max-age=60")])) });
    let service = SwrLayer::shared_cache().layer(o);
    let first = service.clone().oneshot(get("/500")).await?;
    assert_eq!(first.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(info(&first).stored);
    let hit = service.clone().oneshot(get("/500")).await?;
    assert_eq!(calls.get(), 1);
    assert_eq!(hit.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(info(&hit).status, CacheStatus::Fresh);
    assert_eq!(body(hit).await?, "oops");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_entry_wins_over_a_fresh_server_error() -> TestResult {
    let (o, calls) = origin(|n, _| async move {
        Ok(if n == 1 {
            respond(
                200,
                "good",
                &[("cache-control", "max-age=10, stale-if-error=60")],
            )
        } else {
            respond(500, "oops", &[("cache-control", "max-age=60")])
        })
    });
    let service = SwrLayer::shared_cache().layer(o);
    body(service.clone().oneshot(get("/sie")).await?).await?;
    advance(secs(11)).await;
    for expected_calls in [2, 3] {
        let response = service.clone().oneshot(get("/sie")).await?;
        assert_eq!(calls.get(), expected_calls);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            cache_status(&response),
            "tower-swr; fwd=stale; fwd-status=500"
        );
        assert_eq!(body(response).await?, "good");
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn must_understand_stores_only_understood_statuses() -> TestResult {
    let (o, calls) = origin(|_, request: Request<ReqBody>| async move {
        let status = if request.uri().path() == "/known" {
            200
        } else {
            299
        };
        Ok(respond(
            status,
            "x",
            &[("cache-control", "must-understand, no-store, max-age=60")],
        ))
    });
    let service = SwrLayer::shared_cache().layer(o);
    body(service.clone().oneshot(get("/unknown")).await?).await?;
    body(service.clone().oneshot(get("/unknown")).await?).await?;
    assert_eq!(calls.get(), 2, "an unknown status with must-understand");

    body(service.clone().oneshot(get("/known")).await?).await?;
    let hit = service.clone().oneshot(get("/known")).await?;
    assert_eq!(calls.get(), 3, "must-understand overrides no-store for 200");
    assert_eq!(info(&hit).status, CacheStatus::Fresh);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn qualified_private_and_no_cache_strip_the_named_fields() -> TestResult {
    let (o, calls) = origin(|_, request: Request<ReqBody>| async move {
        let cc = match request.uri().path() {
            "/private" => "max-age=60, private=\"x-user, x-team\"",
            _ => "max-age=60, no-cache=\"x-foo\"",
        };
        Ok(respond(
            200,
            "shared part",
            &[
                ("cache-control", cc),
                ("x-user", "alice"),
                ("x-team", "red"),
                ("x-foo", "bar"),
                ("x-other", "kept"),
            ],
        ))
    });
    let service = SwrLayer::shared_cache().layer(o);
    for (path, stripped) in [
        ("/private", &["x-user", "x-team"][..]),
        ("/no-cache", &["x-foo"][..]),
    ] {
        body(service.clone().oneshot(get(path)).await?).await?;
        let hit = service.clone().oneshot(get(path)).await?;
        assert_eq!(info(&hit).status, CacheStatus::Fresh, "{path} is reused");
        for name in stripped {
            assert!(hit.headers().get(*name).is_none(), "{path}: {name} stored");
        }
        assert_eq!(header_value(&hit, "x-other").as_deref(), Some("kept"));
        assert_eq!(body(hit).await?, "shared part");
    }
    assert_eq!(calls.get(), 2);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn hop_by_hop_and_connection_named_headers_are_not_stored() -> TestResult {
    let (o, _) = origin(|_, _| async move {
        Ok(respond(
            200,
            "x",
            &[
                ("cache-control", "max-age=60"),
                ("connection", "x-hop, x-other-hop"),
                ("x-hop", "1"),
                ("x-other-hop", "1"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("upgrade", "h2c"),
                ("trailer", "x-checksum"),
                ("x-keep", "1"),
            ],
        ))
    });
    let service = SwrLayer::shared_cache().layer(o);
    body(service.clone().oneshot(get("/hop")).await?).await?;
    let hit = service.clone().oneshot(get("/hop")).await?;
    assert_eq!(info(&hit).status, CacheStatus::Fresh);
    for name in [
        "connection",
        "x-hop",
        "x-other-hop",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "trailer",
    ] {
        assert!(hit.headers().get(name).is_none(), "{name} was stored");
    }
    assert_eq!(header_value(&hit, "x-keep").as_deref(), Some("1"));
    Ok(())
}

// ---- Vary ----

#[tokio::test(start_paused = true)]
async fn vary_normalises_list_values_and_tells_absent_from_present() -> TestResult {
    let (o, calls) = origin(|n, request: Request<ReqBody>| async move {
        let language = request
            .headers()
            .get_all(header::ACCEPT_LANGUAGE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect::<Vec<_>>()
            .join("|");
        Ok(respond(
            200,
            format!("[{language}] v{n}"),
            &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
        ))
    });
    let service = SwrLayer::shared_cache().layer(o);
    let first = service
        .clone()
        .oneshot(get_headers("/v", &[("accept-language", "en, fr")]))
        .await?;
    assert_eq!(body(first).await?, "[en, fr] v1");

    for same in [
        &[("accept-language", "en,fr")][..],
        &[("accept-language", "en ,  fr")][..],
        &[("accept-language", "en"), ("accept-language", "fr")][..],
    ] {
        let hit = service.clone().oneshot(get_headers("/v", same)).await?;
        assert_eq!(info(&hit).status, CacheStatus::Fresh, "{same:?}");
        assert_eq!(body(hit).await?, "[en, fr] v1");
    }
    assert_eq!(calls.get(), 1);

    // No Accept-Language at all is another variant.
    let absent = service.clone().oneshot(get("/v")).await?;
    assert_eq!(calls.get(), 2);
    assert_eq!(cache_status(&absent), "tower-swr; fwd=vary-miss; stored");
    assert_eq!(body(absent).await?, "[] v2");
    let absent_again = service.clone().oneshot(get("/v")).await?;
    assert_eq!(body(absent_again).await?, "[] v2");
    // Members are compared in order.
    let other = service
        .clone()
        .oneshot(get_headers("/v", &[("accept-language", "fr, en")]))
        .await?;
    assert_eq!(calls.get(), 3, "order matters: fr, en is another variant");
    assert_eq!(body(other).await?, "[fr, en] v3");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn vary_header_missing_on_one_side_is_a_mismatch() -> TestResult {
    let (o, calls) = origin(|n, _| async move {
        Ok(respond(
            200,
            format!("v{n}"),
            &[("cache-control", "max-age=60"), ("vary", "X-Flavour")],
        ))
    });
    let service = SwrLayer::shared_cache().layer(o);
    let vanilla = || get_headers("/v", &[("x-flavour", "vanilla")]);
    body(service.clone().oneshot(vanilla()).await?).await?;
    let without = service.clone().oneshot(get("/v")).await?;
    assert_eq!(calls.get(), 2, "stored with the header, asked without it");
    assert_eq!(body(without).await?, "v2");

    // Stored without it (v2 now), asked with an empty value: still another variant.
    let empty = service
        .clone()
        .oneshot(get_headers("/v", &[("x-flavour", "")]))
        .await?;
    assert_eq!(calls.get(), 3, "present (even empty) differs from absent");
    assert_eq!(body(empty).await?, "v3");

    for (request, expected) in [(vanilla(), "v1"), (get("/v"), "v2")] {
        let hit = service.clone().oneshot(request).await?;
        assert_eq!(info(&hit).status, CacheStatus::Fresh);
        assert_eq!(body(hit).await?, expected);
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn vary_star_is_never_reused_by_the_shared_preset() -> TestResult {
    let (o, calls) = origin(|_, request: Request<ReqBody>| async move {
        let vary = if request.uri().path() == "/star" {
            "*"
        } else {
            "Accept, *"
        };
        Ok(respond(
            200,
            "x",
            &[("cache-control", "public, max-age=60"), ("vary", vary)],
        ))
    });
    let service = SwrLayer::shared_cache().layer(o);
    for path in ["/star", "/star", "/list", "/list"] {
        let response = service.clone().oneshot(get(path)).await?;
        assert!(!info(&response).stored, "{path}");
    }
    assert_eq!(calls.get(), 4);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn most_recent_of_several_matching_variants_is_served() -> TestResult {
    // The resource first varies on Accept-Language, then on Accept-Encoding. Afterwards a
    // request matches both stored responses; the more recent one answers.
    let (o, calls) = origin(|n, _| async move {
        let vary = if n == 1 {
            "Accept-Language"
        } else {
            "Accept-Encoding"
        };
        Ok(respond(
            200,
            format!("v{n}"),
            &[("cache-control", "max-age=600"), ("vary", vary)],
        ))
    });
    let service = SwrLayer::shared_cache().layer(o);
    let en_gzip = || {
        get_headers(
            "/r",
            &[("accept-language", "en"), ("accept-encoding", "gzip")],
        )
    };
    let fr_gzip = get_headers(
        "/r",
        &[("accept-language", "fr"), ("accept-encoding", "gzip")],
    );
    assert_eq!(body(service.clone().oneshot(en_gzip()).await?).await?, "v1");
    advance(secs(1)).await;
    assert_eq!(body(service.clone().oneshot(fr_gzip).await?).await?, "v2");
    assert_eq!(calls.get(), 2);

    let newest = service.clone().oneshot(en_gzip()).await?;
    assert_eq!(calls.get(), 2);
    assert_eq!(info(&newest).status, CacheStatus::Fresh);
    assert_eq!(body(newest).await?, "v2");
    Ok(())
}

// ---- validation ----

#[tokio::test(start_paused = true)]
async fn expired_entry_is_revalidated_and_a_304_updates_and_freshens_it() -> TestResult {
    const LM: &str = "Mon, 01 Jan 2024 00:00:00 GMT";
    let seen = Seen::default();
    let (o, calls) = origin({
        let seen = seen.clone();
        move |n, request: Request<ReqBody>| {
            seen.record(&request);
            async move {
                Ok(if n == 1 {
                    respond(
                        200,
                        "hello",
                        &[
                            ("cache-control", "max-age=10"),
                            ("etag", "\"v1\""),
                            ("last-modified", LM),
                            ("content-length", "5"),
                            ("x-version", "1"),
                        ],
                    )
                } else {
                    respond(
                        304,
                        "",
                        &[
                            ("cache-control", "max-age=100"),
                            ("etag", "\"v1\""),
                            ("content-length", "0"),
                            ("x-version", "2"),
                        ],
                    )
                })
            }
        }
    });
    let service = SwrLayer::shared_cache().layer(o);
    body(service.clone().oneshot(get("/val")).await?).await?;
    assert!(text(&seen.headers(1), "if-none-match").is_none());

    advance(secs(11)).await;
    let revalidated = service.clone().oneshot(get("/val")).await?;
    assert_eq!(calls.get(), 2);
    let sent = seen.headers(2);
    assert_eq!(text(&sent, "if-none-match").as_deref(), Some("\"v1\""));
    assert_eq!(text(&sent, "if-modified-since").as_deref(), Some(LM));
    assert_eq!(revalidated.status(), StatusCode::OK);
    assert_eq!(
        cache_status(&revalidated),
        "tower-swr; fwd=stale; fwd-status=304; stored"
    );
    assert_eq!(
        header_value(&revalidated, "x-version").as_deref(),
        Some("2")
    );
    assert_eq!(body(revalidated).await?, "hello");

    // Freshened by the 304's max-age=100, with the updated headers.
    advance(secs(50)).await;
    let hit = service.clone().oneshot(get("/val")).await?;
    assert_eq!(calls.get(), 2);
    assert_eq!(cache_status(&hit), "tower-swr; hit; ttl=50");
    assert_eq!(header_value(&hit, "x-version").as_deref(), Some("2"));
    assert_eq!(
        header_value(&hit, header::CONTENT_LENGTH).as_deref(),
        Some("5")
    );
    assert_eq!(body(hit).await?, "hello");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn last_modified_alone_is_revalidated_with_if_modified_since() -> TestResult {
    const LM: &str = "Mon, 01 Jan 2024 00:00:00 GMT";
    let seen = Seen::default();
    let (o, _) = origin({
        let seen = seen.clone();
        move |n, request: Request<ReqBody>| {
            seen.record(&request);
            async move {
                Ok(if n == 1 {
                    respond(
                        200,
                        "body",
                        &[("cache-control", "max-age=10"), ("last-modified", LM)],
                    )
                } else {
                    respond(304, "", &[("cache-control", "max-age=10")])
                })
            }
        }
    });
    let service = SwrLayer::shared_cache().layer(o);
    body(service.clone().oneshot(get("/lm")).await?).await?;
    advance(secs(11)).await;
    let revalidated = service.clone().oneshot(get("/lm")).await?;
    let sent = seen.headers(2);
    assert_eq!(text(&sent, "if-modified-since").as_deref(), Some(LM));
    assert!(text(&sent, "if-none-match").is_none());
    assert_eq!(body(revalidated).await?, "body");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn no_cache_response_is_revalidated_before_every_reuse() -> TestResult {
    let seen = Seen::default();
    let (o, calls) = origin({
        let seen = seen.clone();
        move |n, request: Request<ReqBody>| {
            seen.record(&request);
            async move {
                Ok(if n == 1 {
                    respond(
                        200,
                        "doc",
                        &[("cache-control", "no-cache"), ("etag", "\"d\"")],
                    )
                } else {
                    respond(304, "", &[("cache-control", "no-cache"), ("etag", "\"d\"")])
                })
            }
        }
    });
    let service = SwrLayer::new().layer(o);
    body(service.clone().oneshot(get("/nc")).await?).await?;
    for n in 2..=3 {
        let response = service.clone().oneshot(get("/nc")).await?;
        assert_eq!(calls.get(), n);
        assert_eq!(
            text(&seen.headers(n), "if-none-match").as_deref(),
            Some("\"d\"")
        );
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(body(response).await?, "doc");
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn background_refresh_is_conditional_and_a_304_costs_no_body() -> TestResult {
    let seen = Seen::default();
    let (o, calls) = origin({
        let seen = seen.clone();
        move |n, request: Request<ReqBody>| {
            seen.record(&request);
            async move {
                let cc = ("cache-control", "max-age=10, stale-while-revalidate=60");
                Ok(if n == 1 {
                    respond(200, "the full body", &[cc, ("etag", "\"a\"")])
                } else {
                    respond(304, "", &[cc, ("etag", "\"a\""), ("x-version", "2")])
                })
            }
        }
    });
    let layer = SwrLayer::new();
    let service = layer.layer(o);
    body(service.clone().oneshot(get("/bg")).await?).await?;
    advance(secs(11)).await;

    let stale = service.clone().oneshot(get("/bg")).await?;
    assert_eq!(info(&stale).status, CacheStatus::Stale);
    assert_eq!(body(stale).await?, "the full body");
    settle().await;
    assert_eq!(calls.get(), 2);
    assert_eq!(
        text(&seen.headers(2), "if-none-match").as_deref(),
        Some("\"a\"")
    );
    assert_eq!(layer.stats().refreshes_succeeded, 1);

    let fresh = service.clone().oneshot(get("/bg")).await?;
    assert_eq!(info(&fresh).status, CacheStatus::Fresh);
    assert_eq!(header_value(&fresh, "x-version").as_deref(), Some("2"));
    assert_eq!(body(fresh).await?, "the full body");
    assert_eq!(calls.get(), 2);
    Ok(())
}

// ---- clients' conditionals and ranges ----

#[tokio::test(start_paused = true)]
async fn client_conditionals_are_answered_from_a_fresh_entry() -> TestResult {
    const LM: &str = "Mon, 01 Jan 2024 00:00:00 GMT";
    const LATER: &str = "Tue, 02 Jan 2024 00:00:00 GMT";
    const EARLIER: &str = "Sun, 31 Dec 2023 00:00:00 GMT";
    let (o, calls) = origin(|_, _| async move {
        Ok(respond(
            200,
            "content",
            &[
                ("cache-control", "max-age=60"),
                ("etag", "\"abc\""),
                ("last-modified", LM),
            ],
        ))
    });
    let service = SwrLayer::new().layer(o);
    body(service.clone().oneshot(get("/cond")).await?).await?;

    let cases: [(&[(&str, &str)], StatusCode); 7] = [
        (&[("if-none-match", "\"abc\"")], StatusCode::NOT_MODIFIED),
        (&[("if-none-match", "W/\"abc\"")], StatusCode::NOT_MODIFIED),
        (
            &[("if-none-match", "\"x\", \"abc\"")],
            StatusCode::NOT_MODIFIED,
        ),
        (&[("if-none-match", "\"xyz\"")], StatusCode::OK),
        (&[("if-modified-since", LATER)], StatusCode::NOT_MODIFIED),
        (&[("if-modified-since", EARLIER)], StatusCode::OK),
        // If-None-Match takes precedence over a matching If-Modified-Since.
        (
            &[("if-none-match", "\"xyz\""), ("if-modified-since", LATER)],
            StatusCode::OK,
        ),
    ];
    for (headers, expected) in cases {
        let response = service
            .clone()
            .oneshot(get_headers("/cond", headers))
            .await?;
        assert_eq!(response.status(), expected, "{headers:?}");
        assert_eq!(info(&response).status, CacheStatus::Fresh);
        if expected == StatusCode::NOT_MODIFIED {
            assert_eq!(
                header_value(&response, header::ETAG).as_deref(),
                Some("\"abc\"")
            );
            assert!(body(response).await?.is_empty());
        } else {
            assert_eq!(body(response).await?, "content");
        }
    }
    assert_eq!(calls.get(), 1);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn ranges_are_served_from_a_stored_response() -> TestResult {
    let seen = Seen::default();
    let (o, calls) = origin({
        let seen = seen.clone();
        move |_, request: Request<ReqBody>| {
            seen.record(&request);
            async move { Ok(reply_cc("0123456789", "max-age=60")) }
        }
    });
    let service = SwrLayer::new().layer(o);

    // Even on a miss: the origin is asked for the whole response, the client gets its range.
    let first = service
        .clone()
        .oneshot(get_with("/r", header::RANGE, "bytes=0-1"))
        .await?;
    assert!(seen.headers(1).get(header::RANGE).is_none());
    assert_eq!(first.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(body(first).await?, "01");

    let partial = service
        .clone()
        .oneshot(get_with("/r", header::RANGE, "bytes=0-1"))
        .await?;
    assert_eq!(partial.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        header_value(&partial, header::CONTENT_RANGE).as_deref(),
        Some("bytes 0-1/10")
    );
    assert_eq!(
        header_value(&partial, header::CONTENT_LENGTH).as_deref(),
        Some("2")
    );
    assert_eq!(body(partial).await?, "01");

    let suffix = service
        .clone()
        .oneshot(get_with("/r", header::RANGE, "bytes=-3"))
        .await?;
    assert_eq!(
        header_value(&suffix, header::CONTENT_RANGE).as_deref(),
        Some("bytes 7-9/10")
    );
    assert_eq!(body(suffix).await?, "789");

    let unsatisfiable = service
        .clone()
        .oneshot(get_with("/r", header::RANGE, "bytes=100-"))
        .await?;
    assert_eq!(unsatisfiable.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        header_value(&unsatisfiable, header::CONTENT_RANGE).as_deref(),
        Some("bytes */10")
    );
    assert!(body(unsatisfiable).await?.is_empty());

    let whole = service.clone().oneshot(get("/r")).await?;
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(body(whole).await?, "0123456789");
    assert_eq!(calls.get(), 1);
    Ok(())
}

// ---- invalidation ----

/// GETs answer `max-age=600`; unsafe requests answer per their path and headers.
fn invalidation_origin() -> (
    impl Service<Request<ReqBody>, Response = Reply, Error = BoxError, Future: Send + 'static>
        + Clone
        + Send
        + 'static,
    Calls,
) {
    origin(|n, request: Request<ReqBody>| async move {
        if request.method() == Method::GET {
            return Ok(reply_cc(format!("v{n}"), "max-age=600"));
        }
        let status: u16 = request
            .headers()
            .get("x-status")
            .map_or(Ok(200), |v| v.to_str().unwrap().parse())?;
        let mut response = reply_status(StatusCode::from_u16(status)?, "done");
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            if let Some(value) = request.headers().get(format!("x-{name}")) {
                response.headers_mut().insert(name, value.clone());
            }
        }
        Ok(response)
    })
}

fn unsafe_request(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<ReqBody> {
    let mut request = request(Method::from_bytes(method.as_bytes()).unwrap(), uri);
    for (name, value) in headers {
        request.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    request
}

async fn status_of<S>(service: &S, request: Request<ReqBody>) -> Result<CacheStatus, BoxError>
where
    S: Service<Request<ReqBody>, Response = Response<tower_swr::SwrBody<Full<Bytes>>>> + Clone,
    S::Error: Into<BoxError>,
{
    let response = service.clone().oneshot(request).await.map_err(Into::into)?;
    let status = info(&response).status;
    body(response).await?;
    Ok(status)
}

#[tokio::test(start_paused = true)]
async fn successful_unsafe_requests_invalidate_their_uri() -> TestResult {
    let (o, _) = invalidation_origin();
    let service = SwrLayer::new().layer(o);
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        status_of(&service, get("/doc")).await?;
        assert_eq!(status_of(&service, get("/doc")).await?, CacheStatus::Fresh);
        status_of(&service, get("/other")).await?;
        status_of(&service, unsafe_request(method, "/doc", &[])).await?;
        assert_eq!(
            status_of(&service, get("/doc")).await?,
            CacheStatus::Miss,
            "{method} must invalidate /doc"
        );
        assert_eq!(
            status_of(&service, get("/other")).await?,
            CacheStatus::Fresh,
            "{method} to /doc must leave /other alone"
        );
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn unsafe_requests_invalidate_same_origin_location_and_content_location() -> TestResult {
    let (o, _) = invalidation_origin();
    let service = SwrLayer::new().layer(o);
    let host = ("host", "example.com");
    let on_host = |path: &str| get_headers(path, &[host]);
    for path in ["/items/7", "/items/8", "/items/9", "/items/10"] {
        status_of(&service, on_host(path)).await?;
    }
    status_of(
        &service,
        unsafe_request(
            "POST",
            "/items",
            &[
                host,
                ("x-location", "/items/7"),
                ("x-content-location", "http://example.com/items/8"),
            ],
        ),
    )
    .await?;
    assert_eq!(
        status_of(&service, on_host("/items/7")).await?,
        CacheStatus::Miss
    );
    assert_eq!(
        status_of(&service, on_host("/items/8")).await?,
        CacheStatus::Miss
    );
    assert_eq!(
        status_of(&service, on_host("/items/9")).await?,
        CacheStatus::Fresh
    );

    // Another origin's URI is not touched.
    status_of(
        &service,
        unsafe_request(
            "PUT",
            "/items",
            &[
                host,
                ("x-location", "http://other.example/items/9"),
                ("x-content-location", "https://evil.example/items/10"),
            ],
        ),
    )
    .await?;
    assert_eq!(
        status_of(&service, on_host("/items/9")).await?,
        CacheStatus::Fresh
    );
    assert_eq!(
        status_of(&service, on_host("/items/10")).await?,
        CacheStatus::Fresh
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn failed_unsafe_requests_do_not_invalidate() -> TestResult {
    let (o, calls) = invalidation_origin();
    let service = SwrLayer::new().layer(o);
    status_of(&service, get("/doc")).await?;
    for status in ["400", "403", "404", "500", "503"] {
        status_of(
            &service,
            unsafe_request(
                "POST",
                "/doc",
                &[("x-status", status), ("x-location", "/doc")],
            ),
        )
        .await?;
        assert_eq!(
            status_of(&service, get("/doc")).await?,
            CacheStatus::Fresh,
            "a {status} POST must not invalidate"
        );
    }
    assert_eq!(calls.get(), 6);
    Ok(())
}

// ---- cookies ----

fn by_path_cache_control() -> (
    impl Service<Request<ReqBody>, Response = Reply, Error = BoxError, Future: Send + 'static>
        + Clone
        + Send
        + 'static,
    Calls,
) {
    origin(|n, request: Request<ReqBody>| async move {
        let cc = match request.uri().path() {
            "/public" => "public, max-age=60",
            "/s-maxage" => "s-maxage=60",
            _ => "max-age=60",
        };
        Ok(reply_cc(format!("v{n}"), cc))
    })
}

#[tokio::test(start_paused = true)]
async fn cookie_requests_use_only_explicitly_shareable_responses() -> TestResult {
    let (o, calls) = by_path_cache_control();
    let service = SwrLayer::new().layer(o);
    let with_cookie = |path: &str| get_with(path, header::COOKIE, "session=alice");

    // A stored anonymous response is not handed to a request with Cookie.
    status_of(&service, get("/plain")).await?;
    let cookie = service.clone().oneshot(with_cookie("/plain")).await?;
    assert_eq!(calls.get(), 2);
    assert_eq!(cache_status(&cookie), "tower-swr; fwd=uri-miss");
    // ...nor is the answer to a request with Cookie stored.
    status_of(&service, with_cookie("/fresh")).await?;
    assert_eq!(status_of(&service, get("/fresh")).await?, CacheStatus::Miss);
    assert_eq!(calls.get(), 4);

    // public and s-maxage responses are stored and shared with Cookie requests.
    for path in ["/public", "/s-maxage"] {
        status_of(&service, with_cookie(path)).await?;
        assert_eq!(
            status_of(&service, with_cookie(path)).await?,
            CacheStatus::Fresh,
            "{path}"
        );
        assert_eq!(status_of(&service, get(path)).await?, CacheStatus::Fresh);
    }
    assert_eq!(calls.get(), 6);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn cache_cookie_requests_opts_out_of_the_cookie_rule() -> TestResult {
    let (o, calls) = by_path_cache_control();
    let service = SwrLayer::new().cache_cookie_requests(true).layer(o);
    status_of(&service, get_with("/plain", header::COOKIE, "_ga=1")).await?;
    assert_eq!(
        status_of(&service, get_with("/plain", header::COOKIE, "_ga=2")).await?,
        CacheStatus::Fresh
    );
    assert_eq!(
        status_of(&service, get("/plain")).await?,
        CacheStatus::Fresh
    );
    assert_eq!(calls.get(), 1);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn set_cookie_responses_are_never_stored() -> TestResult {
    let (o, calls) = origin(|_, _| async move {
        Ok(respond(
            200,
            "x",
            &[
                ("cache-control", "public, s-maxage=60, max-age=60"),
                ("set-cookie", "session=abc"),
            ],
        ))
    });
    let service = SwrLayer::new().cache_cookie_requests(true).layer(o);
    for _ in 0..2 {
        let response = service.clone().oneshot(get("/sc")).await?;
        assert!(!info(&response).stored);
        assert_eq!(
            header_value(&response, header::SET_COOKIE).as_deref(),
            Some("session=abc"),
            "the origin's Set-Cookie still reaches its own client"
        );
    }
    assert_eq!(calls.get(), 2);
    Ok(())
}

// ---- Cache-Status ----

#[tokio::test(start_paused = true)]
async fn cache_status_members_have_the_exact_syntax() -> TestResult {
    let gate = Gate::new();
    let (o, _) = origin({
        let gate = gate.clone();
        move |n, request: Request<ReqBody>| {
            let gate = gate.clone();
            async move {
                Ok(match request.uri().path() {
                    "/collapse" => {
                        gate.wait().await;
                        reply_cc("c", "max-age=60")
                    }
                    "/sie" if n > 1 => respond(503, "down", &[]),
                    "/sie" => reply_cc(
                        "s",
                        "max-age=10, stale-while-revalidate=0, stale-if-error=600",
                    ),
                    "/nostore" => reply_cc("n", "no-store"),
                    _ => reply_cc("x", "max-age=120, stale-while-revalidate=60"),
                })
            }
        }
    });
    let layer = SwrLayer::new()
        .key_fn(|parts| (!parts.headers.contains_key("x-skip-cache")).then(String::new));
    let service = layer.layer(o);
    let only_member = |response: &Response<_>| {
        let lines = cache_status_lines(response);
        assert_eq!(lines.len(), 1, "{lines:?}");
        lines[0].clone()
    };

    let sie_miss = service.clone().oneshot(get("/sie")).await?;
    assert_eq!(only_member(&sie_miss), "tower-swr; fwd=uri-miss; stored");
    let miss = service.clone().oneshot(get("/x")).await?;
    assert_eq!(only_member(&miss), "tower-swr; fwd=uri-miss; stored");
    let hit = service.clone().oneshot(get("/x")).await?;
    assert_eq!(only_member(&hit), "tower-swr; hit; ttl=120");
    let not_stored = service.clone().oneshot(get("/nostore")).await?;
    assert_eq!(only_member(&not_stored), "tower-swr; fwd=uri-miss");
    let bypass = service
        .clone()
        .oneshot(get_with("/x", HeaderName::from_static("x-skip-cache"), "1"))
        .await?;
    assert_eq!(only_member(&bypass), "tower-swr; fwd=bypass");
    let method = service.clone().oneshot(request(Method::POST, "/y")).await?;
    assert_eq!(only_member(&method), "tower-swr; fwd=method");

    let leader = tokio::spawn(service.clone().oneshot(get("/collapse")));
    settle().await;
    let waiter = tokio::spawn(service.clone().oneshot(get("/collapse")));
    settle().await;
    gate.open();
    let (leader, waiter) = (leader.await??, waiter.await??);
    assert_eq!(only_member(&leader), "tower-swr; fwd=uri-miss; stored");
    assert_eq!(only_member(&waiter), "tower-swr; fwd=uri-miss; collapsed");
    assert!(age(&waiter).is_some(), "a collapsed answer carries Age");

    // /x was stored at t=0 with max-age=120; the collapse settled 2 ms, so go to t=125 s.
    advance(secs(125) - Duration::from_millis(2)).await;
    let stale = service.clone().oneshot(get("/x")).await?;
    assert_eq!(only_member(&stale), "tower-swr; hit; ttl=-5");

    let rescued = service.clone().oneshot(get("/sie")).await?;
    assert_eq!(
        only_member(&rescued),
        "tower-swr; fwd=stale; fwd-status=503"
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn cache_status_is_appended_after_the_upstream_member() -> TestResult {
    let (o, _) = origin(|_, _| async move {
        Ok(respond(
            200,
            "x",
            &[
                ("cache-control", "max-age=60"),
                ("cache-status", "upstream; hit"),
            ],
        ))
    });
    let service = SwrLayer::new().layer(o);
    let miss = service.clone().oneshot(get("/u")).await?;
    assert_eq!(
        cache_status_lines(&miss),
        ["upstream; hit", "tower-swr; fwd=uri-miss; stored"]
    );
    let hit = service.clone().oneshot(get("/u")).await?;
    assert_eq!(
        cache_status_lines(&hit),
        ["upstream; hit", "tower-swr; hit; ttl=60"],
        "our member is not stored, only appended to each answer"
    );
    let bypass = service.clone().oneshot(request(Method::POST, "/p")).await?;
    assert_eq!(
        cache_status_lines(&bypass),
        ["upstream; hit", "tower-swr; fwd=method"]
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn cache_name_renames_the_member() -> TestResult {
    let (o, _) = origin(|_, _| async move { Ok(reply_cc("x", "max-age=60")) });
    let service = SwrLayer::new().cache_name("edge").layer(o.clone());
    let miss = service.clone().oneshot(get("/n")).await?;
    assert_eq!(cache_status(&miss), "edge; fwd=uri-miss; stored");
    let hit = service.clone().oneshot(get("/n")).await?;
    assert_eq!(cache_status(&hit), "edge; hit; ttl=60");
    let bypass = service.clone().oneshot(request(Method::PUT, "/n")).await?;
    assert_eq!(cache_status(&bypass), "edge; fwd=method");

    // A name that is not a token is written as a quoted string.
    let quoted = SwrLayer::new().cache_name("my cache").layer(o);
    let miss = quoted.clone().oneshot(get("/n")).await?;
    assert_eq!(cache_status(&miss), "\"my cache\"; fwd=uri-miss; stored");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn no_warning_header_is_ever_added() -> TestResult {
    let last_modified = http_date(SystemTime::now() - secs(400 * 24 * 3600));
    let (o, _) = origin(move |n, request: Request<ReqBody>| {
        let last_modified = last_modified.clone();
        async move {
            Ok(match (request.uri().path(), n) {
                ("/heuristic", _) => with_header(reply("h"), header::LAST_MODIFIED, &last_modified),
                (_, 1) => reply_cc("x", "max-age=10, stale-while-revalidate=10"),
                _ => respond(503, "down", &[]),
            })
        }
    });
    let service = SwrLayer::new().layer(o.clone());
    let mut answers = vec![service.clone().oneshot(get("/w")).await?];
    advance(secs(11)).await;
    let stale = service.clone().oneshot(get("/w")).await?;
    assert_eq!(info(&stale).status, CacheStatus::Stale);
    answers.push(stale);
    settle().await;
    advance(secs(20)).await;
    let rescued = service.clone().oneshot(get("/w")).await?;
    assert_eq!(info(&rescued).status, CacheStatus::StaleIfError);
    answers.push(rescued);

    // A hit on heuristic freshness, 20 h old (Last-Modified 400 days ago: the heuristic is
    // capped at 24 h). RFC 7234 had "113 Heuristic expiration" for such answers; not any more.
    let shared = SwrLayer::shared_cache().layer(o);
    body(shared.clone().oneshot(get("/heuristic")).await?).await?;
    advance(secs(20 * 3600)).await;
    let heuristic = shared.clone().oneshot(get("/heuristic")).await?;
    assert_eq!(info(&heuristic).status, CacheStatus::Fresh);
    answers.push(heuristic);

    for answer in &answers {
        assert!(
            answer.headers().get(header::WARNING).is_none(),
            "{:?}",
            answer.headers()
        );
    }
    Ok(())
}

// ---- Surrogate-Control ----

#[tokio::test(start_paused = true)]
async fn surrogate_control_overrides_cache_control_and_is_not_passed_on() -> TestResult {
    let seen = Seen::default();
    let (o, calls) = origin({
        let seen = seen.clone();
        move |_, request: Request<ReqBody>| {
            seen.record(&request);
            async move {
                let (cc, sc) = match request.uri().path() {
                    "/edge" => ("no-store", "max-age=300"),
                    "/targeted" => ("no-store", "max-age=300;tower-swr"),
                    "/elsewhere" => ("no-store", "max-age=300;other-cdn"),
                    _ => ("max-age=60", "no-store"),
                };
                Ok(respond(
                    200,
                    "x",
                    &[("cache-control", cc), ("surrogate-control", sc)],
                ))
            }
        }
    });
    let service = SwrLayer::new().layer(o);

    for path in ["/edge", "/targeted"] {
        let before = calls.get();
        let miss = service.clone().oneshot(get(path)).await?;
        assert!(info(&miss).stored, "{path}");
        assert!(miss.headers().get("surrogate-control").is_none(), "{path}");
        advance(secs(10)).await;
        let hit = service.clone().oneshot(get(path)).await?;
        assert_eq!(cache_status(&hit), "tower-swr; hit; ttl=290", "{path}");
        assert!(hit.headers().get("surrogate-control").is_none(), "{path}");
        assert_eq!(
            header_value(&hit, header::CACHE_CONTROL).as_deref(),
            Some("no-store"),
            "browsers still get the origin's Cache-Control"
        );
        assert_eq!(calls.get(), before + 1);
    }
    assert_eq!(
        text(&seen.headers(1), "surrogate-capability").as_deref(),
        Some("tower-swr=\"Surrogate/1.0\"")
    );

    // Aimed at another surrogate: Cache-Control: no-store rules here.
    // Surrogate-Control: no-store beats Cache-Control: max-age.
    for path in ["/elsewhere", "/surrogate-no-store"] {
        let before = calls.get();
        let first = service.clone().oneshot(get(path)).await?;
        assert!(!info(&first).stored, "{path}");
        body(service.clone().oneshot(get(path)).await?).await?;
        assert_eq!(calls.get(), before + 2, "{path} must not be stored");
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn surrogate_control_can_be_turned_off() -> TestResult {
    let seen = Seen::default();
    let (o, calls) = origin({
        let seen = seen.clone();
        move |_, request: Request<ReqBody>| {
            seen.record(&request);
            async move {
                Ok(respond(
                    200,
                    "x",
                    &[
                        ("cache-control", "no-store"),
                        ("surrogate-control", "max-age=60"),
                    ],
                ))
            }
        }
    });
    let service = SwrLayer::new().surrogate_control(false).layer(o);
    let first = service.clone().oneshot(get("/off")).await?;
    assert_eq!(
        header_value(&first, "surrogate-control").as_deref(),
        Some("max-age=60")
    );
    body(service.clone().oneshot(get("/off")).await?).await?;
    assert_eq!(calls.get(), 2);
    assert!(seen.headers(1).get("surrogate-capability").is_none());

    // And the capability follows the cache's name.
    let seen = Seen::default();
    let (o, _) = origin({
        let seen = seen.clone();
        move |_, request: Request<ReqBody>| {
            seen.record(&request);
            async move { Ok(reply("x")) }
        }
    });
    let service = SwrLayer::new().cache_name("edge").layer(o);
    body(service.clone().oneshot(get("/named")).await?).await?;
    assert_eq!(
        text(&seen.headers(1), "surrogate-capability").as_deref(),
        Some("edge=\"Surrogate/1.0\"")
    );
    Ok(())
}

/// BUG (src/http/future.rs:96-118, the `Bypass` arm; made at src/http/service.rs:835/844):
/// bypassed responses never go through `Config::strip_surrogate_control`, so an origin's
/// `Surrogate-Control` reaches the client although the layer documents that it is "not passed
/// on to clients". Fix: strip it in the `Bypass` arm when `surrogate_token` is set.
#[tokio::test(start_paused = true)]
async fn surrogate_control_is_not_passed_on_by_bypassed_requests() -> TestResult {
    let (o, _) = origin(|_, _| async move {
        Ok(respond(
            200,
            "x",
            &[
                ("cache-control", "no-store"),
                ("surrogate-control", "max-age=60"),
            ],
        ))
    });
    let service = SwrLayer::new()
        .key_fn(|parts| (!parts.headers.contains_key("x-skip-cache")).then(String::new))
        .layer(o);
    let method = service.clone().oneshot(request(Method::POST, "/p")).await?;
    assert_eq!(cache_status(&method), "tower-swr; fwd=method");
    assert!(method.headers().get("surrogate-control").is_none());
    let bypass = service
        .clone()
        .oneshot(get_with("/p", HeaderName::from_static("x-skip-cache"), "1"))
        .await?;
    assert_eq!(cache_status(&bypass), "tower-swr; fwd=bypass");
    assert!(bypass.headers().get("surrogate-control").is_none());
    Ok(())
}

/// BUG (src/http/service.rs:665-684, `Shared::invalidate`): the keys to remove are built with
/// the unsafe request's own `key_fn` addition (`target.extra`), so entries of the same URI
/// stored under other additions keep being served after a successful write. Fix: remove every
/// entry whose host and target match, whatever its addition and variant (as `SwrHandle::purge`
/// does), and drop the matching `vary_index` records.
#[tokio::test(start_paused = true)]
async fn unsafe_request_invalidates_the_uri_for_every_key_fn_addition() -> TestResult {
    let (o, _) = invalidation_origin();
    // The key function splits entries by device class, not by user: one resource, two copies.
    let service = SwrLayer::new()
        .key_fn(|parts| {
            let device = parts.headers.get("x-device")?.to_str().ok()?;
            Some(device.to_owned())
        })
        .layer(o);
    let on = |device: &str| get_headers("/doc", &[("x-device", device)]);
    status_of(&service, on("mobile")).await?;
    status_of(&service, on("desktop")).await?;
    assert_eq!(status_of(&service, on("mobile")).await?, CacheStatus::Fresh);

    status_of(
        &service,
        unsafe_request("PUT", "/doc", &[("x-device", "desktop")]),
    )
    .await?;
    assert_eq!(status_of(&service, on("desktop")).await?, CacheStatus::Miss);
    assert_eq!(
        status_of(&service, on("mobile")).await?,
        CacheStatus::Miss,
        "the PUT changed /doc for every device (RFC 9111 §4.4: invalidate the target URI)"
    );
    Ok(())
}
