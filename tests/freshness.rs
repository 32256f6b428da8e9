//! Freshness and lifetimes: the presets' defaults, `max-age` / `s-maxage` / `Expires` /
//! heuristics, the origin's `Age` and `Date`, invalid and absurd lifetimes, `Surrogate-Control`,
//! `must-understand`, `policy_fn` per route and TTL jitter.

mod common;

use axum::{routing, Router};
use bytes::Bytes;
use common::*;
use common::{body, settle, Calls};
use http::{header, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime};
use tokio::time::{advance, Instant};
use tower::{Layer, ServiceExt};
use tower_swr::engine::Freshness;
use tower_swr::{CacheInfo, CacheStatus, SwrLayer};
use tower_test::mock;

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

/// The `ttl` of `Cache-Status` on a fresh hit of each of `keys` stored at the same instant.
async fn fresh_lifetimes(layer: SwrLayer, keys: usize) -> Result<Vec<i64>, BoxError> {
    let (o, _) = origin(|_, _| async move { Ok(reply_cc("x", "max-age=100")) });
    let service = layer.layer(o);
    for i in 0..keys {
        call(&service, get(&format!("/j/{i}"))).await?;
    }
    let mut ttls = Vec::new();
    for i in 0..keys {
        let hit = service.clone().oneshot(get(&format!("/j/{i}"))).await?;
        assert_eq!(info(&hit).status, CacheStatus::Fresh);
        let status = cache_status(&hit);
        ttls.push(
            status
                .rsplit("ttl=")
                .next()
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| panic!("ttl in {status}")),
        );
    }
    Ok(ttls)
}

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
                    app_respond(StatusCode::OK, &pairs, format!("v{n}"))
                }
            }),
        )
        .layer(SwrLayer::new())
}

async fn stale_now_is_not_served_stale(headers: Vec<(&'static str, String)>, what: &str) {
    let calls = Calls::default();
    let app = lifetime_app(&calls, headers);
    assert_eq!(app_text(app_send(&app, app_get("/l")).await).await, "v1");
    advance(secs(1)).await;
    let second = app_send(&app, app_get("/l")).await;
    let cache_status = statuses(&second);
    let info = cache_info(&second);
    assert_eq!(
        app_text(second).await,
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
async fn fresh_hit_is_answered_without_calling_the_origin() -> TestResult {
    let (mut service, mut handle) =
        mock::spawn_layer::<Request<ReqBody>, Response<Full<Bytes>>, _>(SwrLayer::new());

    assert!(service.poll_ready().is_ready());
    let first = tokio::spawn(service.call(get("/a")));
    let (request, send) = handle
        .next_request()
        .await
        .expect("the miss reaches the inner service");
    assert_eq!(request.uri(), "/a");
    send.send_response(reply_cc("one", "max-age=60"));
    let first = first.await??;
    assert_eq!(cache_status(&first), "tower-swr; fwd=uri-miss; stored");
    assert_eq!(age(&first), Some(0));
    assert_eq!(body(first).await?, "one");

    advance(secs(10)).await;
    for _ in 0..3 {
        assert!(service.poll_ready().is_ready());
        let hit = service.call(get("/a")).await?;
        assert!(
            handle.poll_request().is_pending(),
            "a fresh hit must not reach the inner service"
        );
        assert_eq!(cache_status(&hit), "tower-swr; hit; ttl=50");
        assert_eq!(age(&hit), Some(10));
        assert_eq!(hit.status(), StatusCode::OK);
        assert_eq!(body(hit).await?, "one");
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn without_cache_control_fresh_for_60s_then_stale_until_180s() -> TestResult {
    // Later calls fail, so the refreshes keep the first entry and its deadlines.
    let (origin, calls) = origin(|n, _| async move {
        Ok(if n == 1 {
            reply("default")
        } else {
            reply_status(StatusCode::SERVICE_UNAVAILABLE, "down")
        })
    });
    let service = SwrLayer::new().layer(origin);
    body(service.clone().oneshot(get("/d")).await?).await?;

    advance(secs(59)).await;
    let fresh = service.clone().oneshot(get("/d")).await?;
    assert_eq!(cache_status(&fresh), "tower-swr; hit; ttl=1");
    assert_eq!(calls.get(), 1);

    advance(secs(2)).await;
    let stale = service.clone().oneshot(get("/d")).await?;
    assert_eq!(cache_status(&stale), "tower-swr; hit; ttl=-1");
    assert_eq!(body(stale).await?, "default");
    settle().await;
    assert_eq!(calls.get(), 2, "the stale hit started a refresh");

    advance(secs(117)).await;
    let still_stale = service.clone().oneshot(get("/d")).await?;
    assert_eq!(info(&still_stale).status, CacheStatus::Stale);
    assert_eq!(body(still_stale).await?, "default");
    settle().await;

    advance(secs(2)).await;
    let before = calls.get();
    let past = service.clone().oneshot(get("/d")).await?;
    assert_eq!(
        calls.get(),
        before + 1,
        "past 180 s the origin is called first"
    );
    assert_eq!(info(&past).status, CacheStatus::StaleIfError);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn origin_max_age_and_stale_while_revalidate_are_respected() -> TestResult {
    // The refresh hangs, so the entry keeps its first deadlines.
    let (origin, calls) = origin(|n, _| async move {
        if n == 2 {
            tokio::time::sleep(secs(3600)).await;
        }
        Ok(reply_cc(
            format!("v{n}"),
            "max-age=10, stale-while-revalidate=5",
        ))
    });
    let service = SwrLayer::new().layer(origin);
    body(service.clone().oneshot(get("/o")).await?).await?;

    advance(secs(9)).await;
    let fresh = service.clone().oneshot(get("/o")).await?;
    assert_eq!(info(&fresh).status, CacheStatus::Fresh);

    advance(secs(2)).await;
    let stale = service.clone().oneshot(get("/o")).await?;
    assert_eq!(info(&stale).status, CacheStatus::Stale);
    assert_eq!(body(stale).await?, "v1");
    settle().await;
    assert_eq!(calls.get(), 2);

    advance(secs(5)).await;
    let miss = service.clone().oneshot(get("/o")).await?;
    assert_eq!(
        calls.get(),
        3,
        "past max-age + swr the request goes to the origin"
    );
    assert_eq!(info(&miss).status, CacheStatus::Miss);
    assert_eq!(body(miss).await?, "v3");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn origin_age_counts_toward_freshness() -> TestResult {
    let (origin, calls) = origin(|_, _| async move {
        Ok(with_header(
            reply_cc("aged", "max-age=60"),
            header::AGE,
            "50",
        ))
    });
    let service = SwrLayer::new().layer(origin);

    let miss = service.clone().oneshot(get("/aged")).await?;
    assert_eq!(age(&miss), Some(50));
    let hit = service.clone().oneshot(get("/aged")).await?;
    assert_eq!(cache_status(&hit), "tower-swr; hit; ttl=10");
    assert_eq!(age(&hit), Some(50));
    advance(secs(5)).await;
    let hit = service.clone().oneshot(get("/aged")).await?;
    assert_eq!(age(&hit), Some(55));
    assert_eq!(cache_status(&hit), "tower-swr; hit; ttl=5");
    advance(secs(6)).await;
    let stale = service.clone().oneshot(get("/aged")).await?;
    assert_eq!(info(&stale).status, CacheStatus::Stale);
    settle().await;
    assert_eq!(
        calls.get(),
        2,
        "60 s of freshness minus 50 s of age is over"
    );
    Ok(())
}

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
        header_text(&seen.last_headers(), "if-modified-since"),
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

/// RFC 9111 §5.1: an invalid `Age` is ignored, so the response is fresh for its whole
/// `max-age`, with or without validators, and its own `Age` downstream is the layer's.
#[tokio::test(start_paused = true)]
async fn invalid_age_is_ignored() -> TestResult {
    for (bad_age, etag) in [
        ("abc", None),
        ("-5", None),
        ("1.5", Some("\"t\"")),
        ("1a", None),
    ] {
        let (o, calls) = origin(move |n, _| async move {
            let mut lines = vec![("cache-control", "max-age=600"), ("age", bad_age)];
            lines.extend(etag.map(|etag| ("etag", etag)));
            Ok(respond(200, format!("v{n}"), &lines))
        });
        let service = SwrLayer::shared_cache().layer(o);
        let first = service.clone().oneshot(get("/bad-age")).await?;
        assert_eq!(header_text(first.headers(), "age").as_deref(), Some("0"));
        body(first).await?;
        advance(secs(599)).await;
        let hit = service.clone().oneshot(get("/bad-age")).await?;
        assert_eq!(info(&hit).status, CacheStatus::Fresh, "Age: {bad_age:?}");
        assert_eq!(header_text(hit.headers(), "age").as_deref(), Some("599"));
        assert_eq!(body(hit).await?, "v1");
        assert_eq!(calls.get(), 1, "Age: {bad_age:?} is ignored");
        advance(secs(2)).await;
        body(service.clone().oneshot(get("/bad-age")).await?).await?;
        assert_eq!(calls.get(), 2, "Age: {bad_age:?}: past max-age it is stale");
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
        header_text(&seen.headers(1), "surrogate-capability").as_deref(),
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
        header_text(&seen.headers(1), "surrogate-capability").as_deref(),
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

/// Issue 2 §9 + §12: defaults 60 s fresh + 120 s SWR + 300 s SIE, and the four quoted
/// `Cache-Status` values, `Age`, and the `CacheInfo` extension.
#[tokio::test(start_paused = true)]
async fn app_preset_defaults_fresh_60s_stale_120s_stale_if_error_300s() -> TestResult {
    let mode = Mode::default();
    let (o, calls) = moody(None, mode.clone());
    let service = SwrLayer::new().layer(o);

    let miss = service.clone().oneshot(get("/prices")).await?;
    assert_eq!(cache_status(&miss), "tower-swr; fwd=uri-miss; stored");
    assert_eq!(info(&miss).status, CacheStatus::Miss);
    assert_eq!(body(miss).await?, "v1");

    advance(secs(18)).await;
    let hit = service.clone().oneshot(get("/prices")).await?;
    assert_eq!(cache_status(&hit), "tower-swr; hit; ttl=42");
    assert_eq!(age(&hit), Some(18));
    let i: CacheInfo = info(&hit);
    assert_eq!(i.status, CacheStatus::Fresh);
    assert_eq!(i.age, Some(secs(18)));
    assert!(i.stored_at.is_some());
    assert!(!i.refreshing);
    assert_eq!(body(hit).await?, "v1");
    assert_eq!(calls.get(), 1);

    // Stale inside the SWR window; the refresh fails with a 503 and the old entry stays.
    mode.set(UNAVAILABLE);
    advance(secs(47)).await; // age 65
    let stale = service.clone().oneshot(get("/prices")).await?;
    assert_eq!(cache_status(&stale), "tower-swr; hit; ttl=-5");
    assert_eq!(age(&stale), Some(65));
    assert_eq!(info(&stale).status, CacheStatus::Stale);
    assert!(info(&stale).refreshing, "a refresh runs");
    assert_eq!(body(stale).await?, "v1");
    settle().await;
    assert_eq!(calls.get(), 2, "one refresh");

    // Past 60 + 120 s, inside 60 + 300 s: stale-if-error.
    advance(secs(120)).await; // age ~185
    let sie = service.clone().oneshot(get("/prices")).await?;
    assert_eq!(cache_status(&sie), "tower-swr; fwd=stale; fwd-status=503");
    assert_eq!(sie.status(), StatusCode::OK);
    assert_eq!(info(&sie).status, CacheStatus::StaleIfError);
    assert!(age(&sie).is_some(), "a cached answer carries Age");
    assert_eq!(body(sie).await?, "v1");

    // Past 60 + 300 s: the origin's 503 goes through unchanged.
    advance(secs(200)).await; // age ~385
    let down = service.clone().oneshot(get("/prices")).await?;
    assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body(down).await?, "down");
    Ok(())
}

/// `max-age=1, stale-if-error=60` and no `stale-while-revalidate=`: the application preset fills
/// in its default 120 s stale-while-revalidate window, so at t=5 the entry is answered stale at
/// once (not `fwd=stale` from stale-if-error) while one refresh asks the failing origin.
#[tokio::test(start_paused = true)]
async fn max_age_without_stale_while_revalidate_gets_the_default_window() -> TestResult {
    let mode = Mode::default();
    let (o, calls) = moody(Some("max-age=1, stale-if-error=60"), mode.clone());
    let service = SwrLayer::new().layer(o);
    assert_eq!(fetch_text(&service, get("/m")).await?, "v1");
    mode.set(UNAVAILABLE);
    advance(secs(5)).await;
    let r = service.clone().oneshot(get("/m")).await?;
    assert_eq!(cache_status(&r), "tower-swr; hit; ttl=-4");
    assert_eq!(info(&r).status, CacheStatus::Stale);
    assert_eq!(body(r).await?, "v1");
    settle().await;
    assert_eq!(calls.get(), 2, "one background refresh, answered 503");
    Ok(())
}

/// "`Age` computed with the corrected initial age (origin `Age` and `Date` included)": a
/// `Date` 30 s in the past is 30 s of apparent age, on the first answer and every reuse, and
/// it comes off `max-age` and `Expires − Date` alike.
#[tokio::test(start_paused = true)]
async fn date_in_the_past_counts_as_apparent_age() -> TestResult {
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
async fn response_delay_is_added_to_the_origin_age() -> TestResult {
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

#[tokio::test(start_paused = true)]
async fn ttl_jitter_spreads_fresh_lifetimes() -> TestResult {
    let plain = fresh_lifetimes(SwrLayer::new(), 50).await?;
    assert!(plain.iter().all(|ttl| *ttl == 100), "{plain:?}");

    let jittered = fresh_lifetimes(SwrLayer::new().ttl_jitter(0.5), 50).await?;
    assert!(
        jittered.iter().all(|ttl| (50..=150).contains(ttl)),
        "within ±50 %: {jittered:?}"
    );
    let distinct: HashSet<_> = jittered.iter().collect();
    assert!(distinct.len() >= 10, "spread out: {jittered:?}");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn policy_fn_gives_each_route_its_lifetimes() -> TestResult {
    let days = |d: u64| secs(d * DAY);
    let (o, calls) = origin(|n, request: Request<ReqBody>| async move {
        let response = reply_cc(format!("v{n}"), "max-age=5");
        Ok(if request.uri().path() == "/api/private" {
            with_header(response, header::CACHE_CONTROL, "private")
        } else {
            response
        })
    });
    let layer = SwrLayer::new().policy_fn(move |request, _response| match request.uri.path() {
        "/api/cinema" | "/api/private" => {
            Some(Freshness::new(days(6)).with_stale_while_revalidate(days(1)))
        }
        "/api/events" => Some(Freshness::new(days(5)).with_stale_while_revalidate(days(1))),
        "/api/google_trend" => Some(Freshness::new(days(1))),
        _ => None,
    });
    let service = layer.layer(o);
    let mut expected_ttl = BTreeMap::new();
    expected_ttl.insert("/api/cinema", 6 * DAY as i64);
    expected_ttl.insert("/api/events", 5 * DAY as i64);
    expected_ttl.insert("/api/google_trend", DAY as i64);
    expected_ttl.insert("/other", 5); // the layer's usual rules: the origin's max-age
    for (path, ttl) in &expected_ttl {
        call(&service, get(path)).await?;
        let hit = service.clone().oneshot(get(path)).await?;
        assert_eq!(cache_status(&hit), format!("tower-swr; hit; ttl={ttl}"));
    }
    assert_eq!(calls.get(), 4);

    // The never-shared rules still stand.
    call(&service, get("/api/private")).await?;
    assert_eq!(
        call(&service, get("/api/private")).await?.0,
        CacheStatus::Miss
    );

    advance(secs(DAY + 1)).await;
    assert_eq!(
        call(&service, get("/api/cinema")).await?.0,
        CacheStatus::Fresh
    );
    assert_eq!(
        call(&service, get("/api/events")).await?.0,
        CacheStatus::Fresh
    );
    assert_eq!(
        call(&service, get("/api/google_trend")).await?.0,
        CacheStatus::Miss,
        "24 h and no stale window"
    );
    advance(secs(4 * DAY)).await;
    assert_eq!(
        call(&service, get("/api/cinema")).await?.0,
        CacheStatus::Fresh
    );
    assert_eq!(
        call(&service, get("/api/events")).await?.0,
        CacheStatus::Stale
    );
    advance(secs(DAY)).await;
    assert_eq!(
        call(&service, get("/api/cinema")).await?.0,
        CacheStatus::Stale
    );
    Ok(())
}

/// Per-route lifetimes: by a policy function in one layer, and by per-route layers sharing one
/// budget.
#[tokio::test(start_paused = true)]
async fn per_route_lifetimes_by_a_policy_fn_or_by_layers_sharing_a_budget() -> TestResult {
    const DAY: u64 = 24 * 3600;
    let (o, _) = moody(None, Mode::default());
    let service = SwrLayer::new()
        .policy_fn(|request, _response| match request.uri.path() {
            "/api/cinema" => Some(Freshness::new(secs(6 * DAY))),
            "/api/google_trend" => Some(Freshness::new(secs(DAY))),
            _ => None,
        })
        .layer(o);
    for (path, ttl) in [
        ("/api/cinema", 6 * DAY),
        ("/api/google_trend", DAY),
        ("/other", 60),
    ] {
        fetch_text(&service, get(path)).await?;
        let hit = service.clone().oneshot(get(path)).await?;
        assert_eq!(cache_status(&hit), format!("tower-swr; hit; ttl={ttl}"));
    }

    let budget = SwrLayer::new().capacity_bytes(1 << 20);
    let app = axum::Router::new()
        .route(
            "/cinema",
            axum::routing::get(|| async { "films" }).layer(
                SwrLayer::new()
                    .ttl(secs(6 * DAY))
                    .share_memory_with(&budget),
            ),
        )
        .route(
            "/trends",
            axum::routing::get(|| async { "trends" })
                .layer(SwrLayer::new().ttl(secs(DAY)).share_memory_with(&budget)),
        );
    for (path, ttl) in [("/cinema", 6 * DAY), ("/trends", DAY)] {
        for expected in [CacheStatus::Miss, CacheStatus::Fresh] {
            let r = app
                .clone()
                .oneshot(Request::get(path).body(axum::body::Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(info(&r).status, expected, "{path}");
            if expected == CacheStatus::Fresh {
                assert_eq!(cache_status(&r), format!("tower-swr; hit; ttl={ttl}"));
            }
        }
    }
    assert_eq!(budget.stats().entries, 2, "one budget holds both routes");
    Ok(())
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
    let first = app_send(&app, app_get("/l")).await;
    let first_status = statuses(&first);
    assert_eq!(app_text(first).await, "v1");
    advance(secs(1)).await;
    let second = app_send(&app, app_get("/l")).await;
    let second_status = statuses(&second);
    let second_info = cache_info(&second);
    assert_eq!(app_text(second).await, "v2", "the entry is never usable");
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

/// Same seed, wired as README's `policy_fn` alternative: `/api/google_trend` is
/// `Freshness::new(days(1))`. The seed's table says "Auto-Refresh Trigger: After 24 hours":
/// the stale entry is served at once while the refresh runs.
#[tokio::test(start_paused = true)]
async fn policy_fn_of_a_day_answers_from_cache_after_24_hours() -> TestResult {
    let calls = Calls::default();
    let layer = SwrLayer::new().policy_fn(|request, _response| {
        let days = |d| secs(d * DAY);
        match request.uri.path() {
            "/api/cinema" => Some(Freshness::new(days(6)).with_stale_while_revalidate(days(1))),
            "/api/events" => Some(Freshness::new(days(5)).with_stale_while_revalidate(days(1))),
            "/api/google_trend" => {
                Some(Freshness::new(days(1)).with_stale_while_revalidate(days(1)))
            }
            _ => None,
        }
    });
    let app = Router::new()
        .route("/api/google_trend", scraper("trends", &calls))
        .layer(layer);

    let first = app.clone().oneshot(axum_get("/api/google_trend")).await?;
    assert_eq!(body(first).await?, "trends v1");
    advance(secs(DAY + 60)).await;
    let started = Instant::now();
    let stale = app.clone().oneshot(axum_get("/api/google_trend")).await?;
    let took = started.elapsed();
    let status = cache_status(&stale);
    assert_eq!(took, Duration::ZERO, "answered after the scrape ({status})");
    assert_eq!(body(stale).await?, "trends v1");
    Ok(())
}

/// A lifetime beyond `FOREVER` (30 years) is capped, and its deadlines still convert.
#[tokio::test(start_paused = true)]
async fn a_huge_max_age_is_capped_at_thirty_years() -> TestResult {
    let (o, calls) = origin(|_, _request: Request<ReqBody>| async {
        Ok::<_, BoxError>(reply_cc("v", "max-age=99999999999"))
    });
    let layer = SwrLayer::new();
    let service = layer.layer(o);
    service.clone().oneshot(get("/f")).await?;
    advance(secs(10)).await;
    let hit = service.clone().oneshot(get("/f")).await?;
    assert_eq!(cache_status(&hit), "tower-swr; hit; ttl=946079990");
    assert_eq!(age(&hit), Some(10));
    let stored_at = info(&hit).stored_at.expect("stored_at");
    assert_eq!(Instant::now() - stored_at, secs(10));
    assert_eq!(calls.get(), 1);
    Ok(())
}

/// An origin answering every path with the header lines `lines_for(path)` and body `v{n}`.
fn by_path(
    lines_for: fn(&str) -> Vec<(&'static str, &'static str)>,
) -> (impl OriginService, Calls) {
    origin(move |n, request: Request<ReqBody>| async move {
        let lines = lines_for(request.uri().path());
        Ok(respond(200, format!("v{n}"), &lines))
    })
}

/// Whether the second request for `path`, `after` the first, is a fresh hit.
async fn reused<S>(service: &S, path: &str, after: Duration) -> Result<bool, BoxError>
where
    S: tower::Service<Request<ReqBody>, Response = Answer, Error = BoxError> + Clone,
{
    let first = service.clone().oneshot(get(path)).await?;
    let first_body = body(first).await?;
    advance(after).await;
    let second = service.clone().oneshot(get(path)).await?;
    let fresh = info(&second).status == CacheStatus::Fresh;
    if fresh {
        assert_eq!(body(second).await?, first_body, "{path}");
    }
    Ok(fresh)
}

/// RFC 9213: in the shared-cache preset `CDN-Cache-Control` (and `Tower-Swr-Cache-Control`, of
/// the cache's name, ahead of it) is this cache's `Cache-Control`: the response's
/// `Cache-Control` and `Expires` are then ignored here, and every field reaches the client.
#[tokio::test(start_paused = true)]
async fn targeted_cache_control_overrides_cache_control_in_the_shared_preset() -> TestResult {
    let (o, _) = by_path(|path| match path {
        "/cdn" => vec![
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=60"),
        ],
        "/cdn-no-store" => vec![
            ("cache-control", "public, max-age=600"),
            ("expires", "Fri, 31 Dec 9999 23:59:59 GMT"),
            ("cdn-cache-control", "no-store"),
        ],
        "/own" => vec![
            ("cache-control", "max-age=600"),
            ("cdn-cache-control", "max-age=600"),
            ("tower-swr-cache-control", "max-age=5"),
        ],
        "/invalid" => vec![
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=60,"),
        ],
        "/invalid-own" => vec![
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=60"),
            ("tower-swr-cache-control", "max-age=5;"),
        ],
        "/wrong-type" => vec![
            ("cache-control", "max-age=600"),
            ("cdn-cache-control", "max-age=\"60\""),
        ],
        "/swr" => vec![
            ("cache-control", "max-age=0, must-revalidate"),
            ("cdn-cache-control", "max-age=10, stale-while-revalidate=60"),
        ],
        "/expires-ignored" => vec![
            ("expires", "Fri, 31 Dec 9999 23:59:59 GMT"),
            ("cdn-cache-control", "must-revalidate"),
        ],
        _ => vec![("cache-control", "no-store")],
    });
    let service = SwrLayer::shared_cache().layer(o);

    let miss = service.clone().oneshot(get("/cdn")).await?;
    assert!(info(&miss).stored);
    body(miss).await?;
    advance(secs(59)).await;
    let hit = service.clone().oneshot(get("/cdn")).await?;
    assert_eq!(info(&hit).status, CacheStatus::Fresh);
    // Both fields go on downstream unchanged (RFC 9213 §3: for the CDN caches after this one).
    assert_eq!(
        header_value(&hit, "cdn-cache-control").as_deref(),
        Some("max-age=60")
    );
    assert_eq!(
        header_value(&hit, header::CACHE_CONTROL).as_deref(),
        Some("no-store")
    );
    assert_eq!(body(hit).await?, "v1");

    assert!(!reused(&service, "/cdn-no-store", secs(1)).await?);
    // Our own field first: 5 s, not 600.
    assert!(reused(&service, "/own", secs(4)).await?);
    assert!(!reused(&service, "/own", secs(6)).await?);
    // A field that is not a valid dictionary is ignored: the next on the list, or
    // Cache-Control.
    assert!(!reused(&service, "/invalid", secs(1)).await?);
    assert!(reused(&service, "/invalid-own", secs(30)).await?);
    // A valid field whose max-age is a string, not an integer: the field is this cache's
    // Cache-Control, without a lifetime (the directive is not consumed).
    assert!(!reused(&service, "/wrong-type", secs(1)).await?);
    // stale-while-revalidate from the targeted field, not Cache-Control's must-revalidate.
    let (o, calls) = by_path(|_| {
        vec![
            ("cache-control", "max-age=0, must-revalidate"),
            ("cdn-cache-control", "max-age=10, stale-while-revalidate=60"),
        ]
    });
    let swr = SwrLayer::shared_cache().layer(o);
    body(swr.clone().oneshot(get("/swr")).await?).await?;
    advance(secs(30)).await;
    let stale = swr.clone().oneshot(get("/swr")).await?;
    assert_eq!(info(&stale).status, CacheStatus::Stale);
    assert_eq!(body(stale).await?, "v1");
    settle().await;
    assert_eq!(calls.get(), 2, "one background refresh");
    // Expires is ignored under a targeted field that gives no lifetime.
    assert!(!reused(&service, "/expires-ignored", secs(1)).await?);
    Ok(())
}

/// The application preset reads targeted fields only when asked; the list and the own field's
/// name are configurable, and an empty list turns it off again.
#[tokio::test(start_paused = true)]
async fn targeted_cache_control_is_an_option_in_the_application_preset() -> TestResult {
    let lines = |_: &str| {
        vec![
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=60"),
            ("edge-cache-control", "max-age=5"),
            ("tower-swr-cache-control", "max-age=1"),
        ]
    };
    let (o, _) = by_path(lines);
    assert!(!reused(&SwrLayer::new().layer(o), "/a", secs(1)).await?);
    let (o, _) = by_path(lines);
    let on = SwrLayer::new().targeted_cache_control(true).layer(o);
    assert!(
        reused(&on, "/a", secs(0)).await?,
        "tower-swr-cache-control: 1 s"
    );
    assert!(!reused(&on, "/b", secs(2)).await?);
    // The own field follows the cache's name.
    let (o, _) = by_path(lines);
    let edge = SwrLayer::new()
        .cache_name("edge")
        .targeted_cache_control(true)
        .layer(o);
    assert!(reused(&edge, "/a", secs(4)).await?);
    assert!(!reused(&edge, "/b", secs(6)).await?);
    let (o, _) = by_path(lines);
    let renamed = SwrLayer::shared_cache().cache_name("edge").layer(o);
    assert!(reused(&renamed, "/a", secs(4)).await?);
    assert!(!reused(&renamed, "/b", secs(6)).await?);
    // An explicit list, in its order.
    let (o, _) = by_path(lines);
    let listed = SwrLayer::new()
        .targeted_cache_control_fields(["cdn-cache-control", "edge-cache-control"])
        .layer(o);
    assert!(reused(&listed, "/a", secs(30)).await?);
    assert!(!reused(&listed, "/b", secs(61)).await?);
    // Off: Cache-Control: no-store rules.
    for layer in [
        SwrLayer::shared_cache().targeted_cache_control(false),
        SwrLayer::shared_cache().targeted_cache_control_fields(Vec::<&str>::new()),
    ] {
        let (o, calls) = by_path(lines);
        assert!(!reused(&layer.layer(o), "/a", secs(0)).await?);
        assert_eq!(calls.get(), 2);
    }
    Ok(())
}

/// `Surrogate-Control` aimed at this cache still applies with targeted fields read.
#[tokio::test(start_paused = true)]
async fn surrogate_control_still_applies_with_targeted_fields() -> TestResult {
    let (o, _) = by_path(|path| match path {
        "/sc-store" => vec![
            ("cache-control", "no-store"),
            ("surrogate-control", "max-age=60"),
        ],
        _ => vec![
            ("cdn-cache-control", "max-age=60"),
            ("surrogate-control", "no-store"),
        ],
    });
    let service = SwrLayer::shared_cache().layer(o);
    assert!(reused(&service, "/sc-store", secs(30)).await?);
    assert!(!reused(&service, "/sc-no-store", secs(1)).await?);
    Ok(())
}

/// `Cache-Control: only-if-cached` (RFC 9111 §5.2.1.7): a stored response that may be used
/// answers; with none, a 504 and no origin call.
#[tokio::test(start_paused = true)]
async fn only_if_cached_is_answered_from_the_store_or_with_a_504_and_no_origin_call() -> TestResult
{
    let (o, calls) = origin(|n, _| async move {
        Ok(reply_cc(
            format!("v{n}"),
            "max-age=10, stale-while-revalidate=10",
        ))
    });
    let service = SwrLayer::new().layer(o);
    let only = |uri: &str| get_with(uri, header::CACHE_CONTROL, "only-if-cached");

    // Nothing stored: 504, the origin not asked.
    let response = service.clone().oneshot(only("/a")).await?;
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(cache_status(&response), "tower-swr; detail=only-if-cached");
    assert_eq!(body(response).await?, "");
    assert_eq!(calls.get(), 0);

    // Stored and fresh: answered from the store.
    service.clone().oneshot(get("/a")).await?;
    let response = service.clone().oneshot(only("/a")).await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body(response).await?, "v1");
    assert_eq!(calls.get(), 1);

    // Stale inside stale-while-revalidate: answered stale (and refreshed, as for any request).
    advance(Duration::from_secs(12)).await;
    let response = service.clone().oneshot(only("/a")).await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body(response).await?, "v1");

    // Past every window: nothing usable is stored, so a 504 again, the origin not asked.
    settle().await;
    let before = calls.get();
    advance(Duration::from_secs(60)).await;
    let response = service.clone().oneshot(only("/a")).await?;
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(calls.get(), before);
    Ok(())
}
