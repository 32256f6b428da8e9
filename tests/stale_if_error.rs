//! Failures: stale-if-error on errors, 5xx, 408/429 and timeouts, inside and past its window;
//! refresh failures keep the old entry; backoff, the circuit breaker and `origin_timeout`.

mod common;

use axum::{routing, Router};
use bytes::Bytes;
use common::*;
use common::{body, settle, Calls};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::advance;
use tower::{Layer, ServiceExt};
use tower_swr::{CacheStatus, SwrLayer};

/// Stored fresh for 10 s, stale-while-revalidate 5 s, stale-if-error 100 s; then the origin
/// answers `failure`.
fn failing_after_first(
    failure: fn() -> Result<Response<Full<Bytes>>, BoxError>,
) -> (impl OriginService, Calls) {
    origin(move |n, _| async move {
        if n == 1 {
            Ok(reply_cc(
                "last good",
                "max-age=10, stale-while-revalidate=5, stale-if-error=100",
            ))
        } else {
            failure()
        }
    })
}

fn unavailable_result() -> Result<Response<Full<Bytes>>, BoxError> {
    Ok(reply_status(StatusCode::SERVICE_UNAVAILABLE, "maintenance"))
}

fn broken_result() -> Result<Response<Full<Bytes>>, BoxError> {
    Err("connection refused".into())
}

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
                        app_respond(
                            StatusCode::OK,
                            &[("cache-control", cache_control)],
                            "the good page",
                        )
                    } else {
                        app_respond(
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
    assert_eq!(
        app_text(app_send(&app, app_get("/r")).await).await,
        "the good page"
    );
    advance(secs(2)).await;
    let stale = app_send(&app, app_get("/r")).await;
    assert_eq!(stale.status(), StatusCode::OK);
    assert_eq!(app_text(stale).await, "the good page");
    settle().await;
    assert_eq!(calls.get(), 2, "the stale answer started one refresh");
    // The refresh was answered `status`; the next users still app_get the good page.
    for step in 0..3 {
        advance(secs(1)).await;
        let next = app_send(&app, app_get("/r")).await;
        let cache_status = statuses(&next);
        assert_eq!(
            next.status(),
            StatusCode::OK,
            "step {step}: a refresh answered {status} replaced the good entry ({cache_status})"
        );
        assert_eq!(app_text(next).await, "the good page", "step {step}");
        settle().await;
    }
}

async fn miss_answered_inside_stale_if_error_serves_the_stale_copy(status: StatusCode) {
    let calls = Calls::default();
    let app = flaky_app(
        &calls,
        "max-age=1, stale-while-revalidate=1, stale-if-error=300",
        status,
    );
    assert_eq!(
        app_text(app_send(&app, app_get("/r")).await).await,
        "the good page"
    );
    // Past the stale-while-revalidate window, inside stale-if-error: a miss.
    advance(secs(10)).await;
    let answer = app_send(&app, app_get("/r")).await;
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
    assert_eq!(app_text(answer).await, "the good page");
}

/// A prices origin: `v{n}` with no caching headers while up; while down, 5 s then a 503.
fn prices_origin(down: Arc<Mutex<bool>>) -> (impl OriginService, Calls) {
    origin(move |n, _request: Request<ReqBody>| {
        let down = *down.lock().expect("lock");
        async move {
            tokio::time::sleep(secs(5)).await;
            Ok::<_, BoxError>(if down {
                reply_status(StatusCode::SERVICE_UNAVAILABLE, "CargoTech down")
            } else {
                reply(format!("v{n}"))
            })
        }
    })
}

#[tokio::test(start_paused = true)]
async fn refresh_that_panics_is_retried_after_the_backoff() -> TestResult {
    let (origin, calls) = origin(|n, _| async move {
        if n == 2 {
            panic!("origin bug during the refresh");
        }
        Ok(reply_cc(format!("v{n}"), SWR_10_60))
    });
    let layer = SwrLayer::new().refresh_backoff(SECOND, secs(60));
    let service = layer.layer(origin);
    body(service.clone().oneshot(get("/p")).await?).await?;
    advance(secs(11)).await;

    let stale = service.clone().oneshot(get("/p")).await?;
    assert_eq!(body(stale).await?, "v1");
    settle().await;
    assert_eq!(calls.get(), 2);
    let stats = layer.stats();
    assert_eq!(stats.refreshes_panicked, 1);
    assert_eq!(stats.refreshes_failed, 1);
    assert_eq!(stats.refreshes_running, 0, "the panic released the key");

    // Still stale and backing off: no new refresh yet.
    let stale = service.clone().oneshot(get("/p")).await?;
    assert_eq!(body(stale).await?, "v1");
    settle().await;
    assert_eq!(calls.get(), 2, "a failed refresh backs off");

    advance(secs(2)).await;
    let stale = service.clone().oneshot(get("/p")).await?;
    assert_eq!(body(stale).await?, "v1");
    settle().await;
    assert_eq!(calls.get(), 3, "after the backoff the key refreshes again");
    let fresh = service.clone().oneshot(get("/p")).await?;
    assert_eq!(info(&fresh).status, CacheStatus::Fresh);
    assert_eq!(body(fresh).await?, "v3");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn refresh_answered_with_a_server_error_keeps_the_old_entry() -> TestResult {
    let (origin, calls) = origin(|n, _| async move {
        if n == 1 {
            Ok(reply_cc("good", SWR_10_60))
        } else {
            Ok(reply_status(StatusCode::SERVICE_UNAVAILABLE, "down"))
        }
    });
    let layer = SwrLayer::new();
    let service = layer.layer(origin);
    body(service.clone().oneshot(get("/e")).await?).await?;
    advance(secs(11)).await;

    let stale = service.clone().oneshot(get("/e")).await?;
    assert_eq!(body(stale).await?, "good");
    settle().await;
    assert_eq!(calls.get(), 2);
    assert_eq!(layer.stats().refreshes_failed, 1);

    let still = service.clone().oneshot(get("/e")).await?;
    assert_eq!(still.status(), StatusCode::OK);
    assert_eq!(info(&still).status, CacheStatus::Stale);
    assert_eq!(body(still).await?, "good");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn refresh_timeout_keeps_the_old_entry() -> TestResult {
    let (origin, calls) = origin(|n, _| async move {
        if n == 2 {
            tokio::time::sleep(secs(3600)).await;
        }
        Ok(reply_cc(format!("v{n}"), SWR_10_60))
    });
    let layer = SwrLayer::new().refresh_timeout(secs(5));
    let service = layer.layer(origin);
    body(service.clone().oneshot(get("/t")).await?).await?;
    advance(secs(11)).await;

    body(service.clone().oneshot(get("/t")).await?).await?;
    settle().await;
    assert_eq!(calls.get(), 2);
    advance(secs(5)).await;
    settle().await;
    let stats = layer.stats();
    assert_eq!(stats.refreshes_timed_out, 1);
    assert_eq!(stats.refreshes_failed, 1);
    assert_eq!(stats.refreshes_running, 0);
    let still = service.clone().oneshot(get("/t")).await?;
    assert_eq!(body(still).await?, "v1");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn origin_503_inside_stale_if_error_serves_the_stale_entry() -> TestResult {
    let (origin, calls) = failing_after_first(unavailable_result);
    let layer = SwrLayer::new();
    let service = layer.layer(origin);
    body(service.clone().oneshot(get("/sie")).await?).await?;
    advance(secs(20)).await;

    let response = service.clone().oneshot(get("/sie")).await?;
    assert_eq!(calls.get(), 2);
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        cache_status(&response),
        "tower-swr; fwd=stale; fwd-status=503"
    );
    assert_eq!(age(&response), Some(20));
    assert_eq!(info(&response).status, CacheStatus::StaleIfError);
    assert_eq!(body(response).await?, "last good");
    assert_eq!(layer.stats().stale_if_error, 1);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn origin_error_inside_stale_if_error_serves_the_stale_entry() -> TestResult {
    let (origin, calls) = failing_after_first(broken_result);
    let service = SwrLayer::new().layer(origin);
    body(service.clone().oneshot(get("/sie")).await?).await?;
    advance(secs(20)).await;

    let response = service.clone().oneshot(get("/sie")).await?;
    assert_eq!(calls.get(), 2);
    assert_eq!(cache_status(&response), "tower-swr; fwd=stale");
    assert_eq!(info(&response).status, CacheStatus::StaleIfError);
    assert_eq!(body(response).await?, "last good");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn origin_503_past_stale_if_error_passes_through() -> TestResult {
    let (origin, calls) = failing_after_first(unavailable_result);
    let service = SwrLayer::new().layer(origin);
    body(service.clone().oneshot(get("/sie")).await?).await?;
    advance(secs(111)).await;

    let response = service.clone().oneshot(get("/sie")).await?;
    assert_eq!(calls.get(), 2);
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(cache_status(&response), "tower-swr; fwd=uri-miss");
    assert_eq!(info(&response).status, CacheStatus::Miss);
    assert_eq!(body(response).await?, "maintenance");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn origin_error_past_stale_if_error_passes_through() -> TestResult {
    let (origin, calls) = failing_after_first(broken_result);
    let service = SwrLayer::new().layer(origin);
    body(service.clone().oneshot(get("/sie")).await?).await?;
    advance(secs(111)).await;

    let error = service
        .clone()
        .oneshot(get("/sie"))
        .await
        .expect_err("nothing usable: the origin's error goes through");
    assert_eq!(calls.get(), 2);
    assert_eq!(error.to_string(), "connection refused");
    Ok(())
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

/// Issue 2 §1/§5: a cold start with a failing origin returns the origin's error / 5xx, and
/// nothing is stored.
#[tokio::test(start_paused = true)]
async fn cold_start_failure_passes_through_and_stores_nothing() -> TestResult {
    let mode = Mode::default();
    let (o, calls) = moody(None, mode.clone());
    let service = SwrLayer::new().layer(o);
    mode.set(ERROR);
    assert!(service.clone().oneshot(get("/c")).await.is_err());
    // Past the moment a failure stays the key's answer (`remember_failures`).
    advance(secs(2)).await;
    mode.set(UNAVAILABLE);
    let r = service.clone().oneshot(get("/c")).await?;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(cache_status(&r).contains("fwd=uri-miss"));
    assert!(!cache_status(&r).contains("stored"));
    assert_eq!(body(r).await?, "down");
    advance(secs(2)).await;
    mode.set(OK);
    let r = service.clone().oneshot(get("/c")).await?;
    assert_eq!(cache_status(&r), "tower-swr; fwd=uri-miss; stored");
    assert_eq!(calls.get(), 3);
    Ok(())
}

/// Issue 4 §6: refresh timeout (default 30 s), backoff after a failure, stale still served.
#[tokio::test(start_paused = true)]
async fn refresh_timeout_defaults_to_30s_then_backs_off() -> TestResult {
    let mode = Mode::default();
    let (o, calls) = moody(None, mode.clone());
    let layer = SwrLayer::new();
    let service = layer.layer(o);
    fetch_text(&service, get("/t")).await?;
    mode.set(HANG);
    advance(secs(61)).await;
    assert_eq!(fetch_text(&service, get("/t")).await?, "v1");
    settle().await;
    assert_eq!(layer.stats().refreshes_running, 1);
    advance(secs(29)).await;
    settle().await;
    assert_eq!(layer.stats().refreshes_timed_out, 0, "not before 30 s");
    advance(secs(1)).await; // just past the 30 s timeout, inside the first backoff
    settle().await;
    let s = layer.stats();
    assert_eq!((s.refreshes_timed_out, s.refreshes_failed), (1, 1), "{s:?}");
    assert_eq!(s.refreshes_running, 0);

    // Right after the failure: backing off, stale still served, no new origin call.
    assert_eq!(fetch_text(&service, get("/t")).await?, "v1");
    settle().await;
    assert_eq!(calls.get(), 2);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn shared_preset_operator_stale_if_error_yields_to_forbidding_directives() -> TestResult {
    // The operator's explicit stale-if-error window applies to a response that names none.
    let (o, _) = then_503("max-age=10");
    let service = SwrLayer::shared_cache().stale_if_error(secs(60)).layer(o);
    body(service.clone().oneshot(get("/a")).await?).await?;
    advance(secs(11)).await;
    let rescued = service.clone().oneshot(get("/a")).await?;
    assert_eq!(rescued.status(), StatusCode::OK);
    assert_eq!(
        cache_status(&rescued),
        "tower-swr; fwd=stale; fwd-status=503"
    );
    assert_eq!(body(rescued).await?, "v1");

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
            let (o, calls) = then_503(cc);
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

#[tokio::test(start_paused = true)]
async fn refresh_whose_body_panics_keeps_the_stale_entry_and_retries_later() -> TestResult {
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
async fn refresh_backoff_is_jittered_and_grows_with_consecutive_failures() -> TestResult {
    let (o, calls) = origin(|n, _| async move {
        Ok(if n == 1 {
            reply_cc("v1", "max-age=1, stale-while-revalidate=3600")
        } else {
            unavailable()
        })
    });
    let layer = SwrLayer::new().refresh_backoff(secs(10), secs(60));
    let service = layer.layer(o);
    call(&service, get("/b")).await?;
    advance(secs(2)).await;

    // Failure 1 at T: the next refresh waits 5..10 s; failure 2: 10..20 s; failure 3: 20..40 s.
    let stale = || async {
        let (status, body) = call(&service, get("/b")).await?;
        assert_eq!((status, body), (CacheStatus::Stale, Bytes::from("v1")));
        settle().await;
        Ok::<_, BoxError>(calls.get())
    };
    assert_eq!(stale().await?, 2, "the first stale answer refreshes");
    for (too_early, in_time, expected) in [(4, 10, 3), (9, 20, 4), (19, 40, 5)] {
        advance(secs(too_early)).await;
        assert_eq!(
            stale().await?,
            expected - 1,
            "no refresh {too_early} s after the failure"
        );
        advance(secs(in_time - too_early)).await;
        assert_eq!(
            stale().await?,
            expected,
            "a refresh {in_time} s after the failure"
        );
    }
    assert_eq!(layer.stats().refreshes_failed, 4);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn refresh_backoff_of_keys_that_failed_together_is_spread_out() -> TestResult {
    let down = Switch::default();
    let (o, _) = switchable("max-age=1, stale-while-revalidate=3600", down.clone());
    let layer = SwrLayer::new()
        .refresh_backoff(secs(10), secs(60))
        .circuit_breaker(0, secs(30)); // off: 20 failures in a row would open it
    let service = layer.layer(o);
    let keys: Vec<String> = (0..20).map(|i| format!("/spread/{i}")).collect();
    let ask_all = || async {
        for key in &keys {
            assert_eq!(call(&service, get(key)).await?.0, CacheStatus::Stale);
        }
        settle().await;
        Ok::<_, BoxError>(layer.stats().refreshes_started)
    };
    for key in &keys {
        call(&service, get(key)).await?;
    }
    down.set(true);
    advance(secs(2)).await;
    assert_eq!(
        ask_all().await?,
        20,
        "all 20 refresh and fail at the same instant T"
    );
    assert_eq!(layer.stats().refreshes_failed, 20);

    advance(Duration::from_millis(4800)).await;
    assert_eq!(
        ask_all().await?,
        20,
        "nobody retries before T + 5 s (half the step)"
    );
    advance(Duration::from_millis(2700)).await;
    let halfway = ask_all().await? - 20;
    assert!(
        (1..20).contains(&halfway),
        "at T + 7.5 s some keys, not all, have retried: {halfway}"
    );
    advance(Duration::from_millis(2600)).await;
    assert_eq!(
        ask_all().await?,
        40,
        "by T + 10 s every key has retried once"
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn circuit_breaker_pauses_all_refreshes_after_consecutive_failures() -> TestResult {
    let events = Events::default();
    let _guard = events.install();
    let down = Switch::default();
    let (o, calls) = switchable("max-age=1, stale-while-revalidate=3600", down.clone());
    let layer = SwrLayer::new()
        .circuit_breaker(3, secs(30))
        .refresh_backoff(Duration::from_millis(10), Duration::from_millis(10));
    let service = layer.layer(o);
    for path in ["/k1", "/k2", "/k3", "/k4"] {
        call(&service, get(path)).await?;
    }
    down.set(true);
    advance(secs(2)).await;
    for path in ["/k1", "/k2"] {
        call(&service, get(path)).await?;
        settle().await;
        assert!(!layer.stats().refreshes_paused);
    }
    call(&service, get("/k3")).await?;
    settle().await;
    assert_eq!(calls.get(), 7);
    assert!(layer.stats().refreshes_paused, "three failures in a row");
    let opened = events.matching(tracing::Level::WARN, "circuit open");
    assert_eq!(opened.len(), 1, "{opened:?}");

    // No refresh on any key while open (T is when it opened), stale still served.
    advance(secs(1)).await;
    for path in ["/k4", "/k1"] {
        let (status, _) = call(&service, get(path)).await?;
        assert_eq!(status, CacheStatus::Stale);
        settle().await;
    }
    advance(secs(27)).await;
    call(&service, get("/k4")).await?;
    settle().await;
    assert_eq!(calls.get(), 7, "still paused at T + 28 s");
    assert!(layer.stats().refreshes_paused);

    advance(secs(2)).await;
    assert!(!layer.stats().refreshes_paused, "closed at T + 30 s");
    down.set(false);
    call(&service, get("/k4")).await?;
    settle().await;
    assert_eq!(calls.get(), 8, "refreshes resume after the cool-down");
    assert_eq!(
        call(&service, get("/k4")).await?,
        (CacheStatus::Fresh, "v8".into())
    );
    Ok(())
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

/// Seed scenario 2 (ru): "при падении CargoTech цены остаются из последнего успешного
/// обновления", "UI не зависит от скорости внешнего API", "ограниченное число реальных
/// запросов к CargoTech (по TTL/lock)". Configured with unbounded stale windows: polls every
/// 15 s through a one-hour outage are all answered at once with the last good prices, the
/// origin is asked far less often than polled (backoff), and the prices update after recovery.
#[tokio::test(start_paused = true)]
async fn outage_with_open_windows_keeps_prices_and_bounds_origin_calls() -> TestResult {
    let down = Arc::new(Mutex::new(false));
    let (o, calls) = prices_origin(Arc::clone(&down));
    let layer = SwrLayer::new()
        .ttl(secs(15))
        .stale_while_revalidate(Duration::MAX)
        .stale_if_error(Duration::MAX);
    let service = layer.layer(o);

    let (first, _) = timed(service.clone(), get("/api/cargos/prices/?limit=10")).await?;
    assert_eq!(body_text(first).await?, "v1");
    *down.lock().expect("lock") = true;

    let polls = 240; // one hour
    for poll in 0..polls {
        advance(secs(15)).await;
        let (answer, took) = timed(service.clone(), get("/api/cargos/prices/?limit=10")).await?;
        assert_eq!(took, Duration::ZERO, "poll {poll} waited for the origin");
        assert_eq!(answer.status(), StatusCode::OK, "poll {poll}");
        assert_eq!(info(&answer).status, CacheStatus::Stale, "poll {poll}");
        assert_eq!(body_text(answer).await?, "v1", "poll {poll}");
    }
    let during = calls.get() - 1;
    assert!(
        during <= 80,
        "{during} origin calls for {polls} polls: refreshes of a failing key must back off"
    );

    *down.lock().expect("lock") = false;
    let mut recovered = false;
    for _ in 0..10 {
        advance(secs(15)).await;
        let (answer, took) = timed(service.clone(), get("/api/cargos/prices/?limit=10")).await?;
        assert_eq!(took, Duration::ZERO);
        if body_text(answer).await? != "v1" {
            recovered = true;
            break;
        }
    }
    assert!(recovered, "prices must update within 150 s of the recovery");
    Ok(())
}

/// The application preset's default windows bound stale serving during an outage: polls every
/// 15 s are answered stale at once until 180 s (60 s fresh + 120 s stale-while-revalidate), then
/// wait for the failing origin (5 s) and get the stale copy by stale-if-error until 360 s
/// (60 s + 300 s), then get the origin's 503. Longer outages need longer windows (see
/// `outage_with_open_windows_keeps_prices_and_bounds_origin_calls`).
#[tokio::test(start_paused = true)]
async fn outage_with_default_windows_keeps_prices_until_360s_then_passes_the_503() -> TestResult {
    let down = Arc::new(Mutex::new(false));
    let (o, calls) = prices_origin(Arc::clone(&down));
    let service = SwrLayer::new().layer(o);

    let (first, _) = timed(service.clone(), get("/api/cargos/prices/")).await?;
    assert_eq!(body_text(first).await?, "v1");
    *down.lock().expect("lock") = true;
    let mut t = 0; // seconds since the first answer was stored
    for _ in 1..=30 {
        advance(secs(15)).await;
        t += 15;
        let (answer, took) = timed(service.clone(), get("/api/cargos/prices/")).await?;
        let status = cache_status(&answer);
        let code = answer.status();
        let what = info(&answer).status;
        let text = body_text(answer).await?;
        t += took.as_secs();
        if t + 5 < 180 {
            assert_eq!(took, Duration::ZERO, "t={t}s: {status}");
            assert!(
                matches!(what, CacheStatus::Fresh | CacheStatus::Stale),
                "t={t}s: {status}"
            );
            assert_eq!(text, "v1");
        } else if t > 185 && t + 5 < 360 {
            assert_eq!(
                (took, what),
                (secs(5), CacheStatus::StaleIfError),
                "t={t}s: {status}"
            );
            assert_eq!((code, text.as_str()), (StatusCode::OK, "v1"));
        } else if t > 365 {
            assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "t={t}s: {status}");
            assert_eq!(text, "CargoTech down");
        }
    }
    assert!(t > 400, "the polls reached past the stale-if-error window");
    assert!(calls.get() > 20, "origin calls: {}", calls.get());
    Ok(())
}

/// DESIGN.md: on a miss, an origin *timeout* serves the stale entry inside stale-if-error.
/// Here the origin hangs; the entry (defaults: 60 s + 120 s SWR + 300 s SIE) is 200 s old.
#[tokio::test(start_paused = true)]
async fn miss_on_a_hanging_origin_is_answered_from_stale_if_error() -> TestResult {
    let (o, _calls) = origin(|n, _request: Request<ReqBody>| async move {
        if n > 1 {
            std::future::pending::<()>().await;
        }
        Ok::<_, BoxError>(reply("v1"))
    });
    let service = SwrLayer::new().layer(o);
    let (first, _) = timed(service.clone(), get("/p")).await?;
    assert_eq!(body_text(first).await?, "v1");

    advance(secs(200)).await;
    let answer = tokio::time::timeout(secs(600), service.clone().oneshot(get("/p")))
        .await
        .map_err(|_| "still waiting for the hanging origin after 10 minutes")??;
    assert_eq!(info(&answer).status, CacheStatus::StaleIfError);
    assert_eq!(body_text(answer).await?, "v1");
    Ok(())
}

/// `origin_timeout` sets how long such a request waits; `None` waits for the origin.
#[tokio::test(start_paused = true)]
async fn origin_timeout_is_configurable_and_can_be_turned_off() -> TestResult {
    for (limit, expect_stale) in [(Some(secs(5)), true), (None, false)] {
        let (o, _calls) = origin(|n, _request: Request<ReqBody>| async move {
            if n > 1 {
                std::future::pending::<()>().await;
            }
            Ok::<_, BoxError>(reply("v1"))
        });
        let service = SwrLayer::new().origin_timeout(limit).layer(o);
        let (first, _) = timed(service.clone(), get("/p")).await?;
        assert_eq!(body_text(first).await?, "v1");
        advance(secs(200)).await;
        let started = tokio::time::Instant::now();
        let answer = tokio::time::timeout(secs(60), service.clone().oneshot(get("/p"))).await;
        match (answer, expect_stale) {
            (Ok(answer), true) => {
                let answer = answer?;
                assert_eq!(
                    started.elapsed(),
                    secs(5),
                    "answered when the timeout passed"
                );
                assert_eq!(info(&answer).status, CacheStatus::StaleIfError);
                assert_eq!(body_text(answer).await?, "v1");
            }
            (Err(_), false) => {} // still waiting for the origin after a minute, as asked
            (answer, _) => panic!("origin_timeout({limit:?}): unexpected {:?}", answer.is_ok()),
        }
    }
    Ok(())
}

/// PEERS.md: "never let a refresh with a bigger body silently drop the stale copy" and "pass
/// oversize responses through untouched". A background refresh whose body is over
/// `max_body_bytes`, or heavier than the whole memory budget, keeps the stale copy.
#[tokio::test(start_paused = true)]
async fn refresh_with_an_oversize_body_keeps_the_stale_copy() -> TestResult {
    for (name, layer, big) in [
        (
            "over max_body_bytes",
            SwrLayer::new().max_body_bytes(1024),
            2048,
        ),
        (
            "over the memory budget",
            SwrLayer::new().capacity_bytes(64 << 10),
            256 << 10,
        ),
    ] {
        let (o, calls) = origin(move |n, _request: Request<ReqBody>| async move {
            let size = if n == 1 { 100 } else { big };
            Ok::<_, BoxError>(reply_cc(
                Bytes::from(vec![b'a' + n as u8; size]),
                "max-age=10, stale-while-revalidate=600",
            ))
        });
        let service = layer.layer(o);
        let small = body(service.clone().oneshot(get("/r")).await?).await?;
        assert_eq!(small.len(), 100, "{name}");

        advance(secs(11)).await;
        let stale = service.clone().oneshot(get("/r")).await?;
        assert_eq!(info(&stale).status, CacheStatus::Stale, "{name}");
        settle().await;
        assert_eq!(calls.get(), 2, "{name}: one refresh ran");

        let after = service.clone().oneshot(get("/r")).await?;
        let status = cache_status(&after);
        assert_eq!(
            info(&after).status,
            CacheStatus::Stale,
            "{name}: the stale copy must survive the oversize refresh ({status})"
        );
        assert_eq!(body(after).await?, small, "{name}");
        assert!(
            layer.stats().bytes <= layer.stats().capacity_bytes,
            "{name}"
        );
    }
    Ok(())
}

/// `stale-if-error=20` allows serving the response for 20 s after it went stale. The fallback
/// is chosen before the origin call and not checked again when `origin_timeout` fires, so a
/// request arriving 5 s before the window closes is answered 25 s after it closed. (Without
/// RFC 9111 §4.2.4's allowance for an unreachable origin, which a timeout is: that one is
/// `tests/disconnected_and_tags.rs`'s.)
#[tokio::test(start_paused = true)]
async fn origin_timeout_does_not_serve_past_the_stale_if_error_window() -> TestResult {
    let (o, _calls) = origin(|n, _request: Request<ReqBody>| async move {
        if n > 1 {
            std::future::pending::<()>().await;
        }
        Ok::<_, BoxError>(reply_cc("v1", "max-age=10, stale-if-error=20"))
    });
    let service = SwrLayer::shared_cache()
        .max_stale_when_disconnected(None)
        .layer(o);
    let (first, _) = timed(service.clone(), get("/p")).await?;
    assert_eq!(body_text(first).await?, "v1");

    advance(secs(25)).await; // expired; usable on error until 30 s
    let answer = tokio::time::timeout(secs(120), service.clone().oneshot(get("/p"))).await;
    if let Ok(answer) = answer {
        let answer = answer?;
        let age = age(&answer).unwrap_or(0);
        assert!(
            info(&answer).status != CacheStatus::StaleIfError || age <= 30,
            "served stale at age {age}, past its stale-if-error window (10 + 20 s): {}",
            cache_status(&answer)
        );
    }
    Ok(())
}
