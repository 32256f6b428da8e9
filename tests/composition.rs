//! The layer composed with the ecosystem: in axum `Router`s (per route, per router, on a
//! router service), in `ServiceBuilder` stacks with other tower layers (timeouts, concurrency
//! limits, response maps), and the public types fitting tower's bounds.

mod common;

use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::Path;
use axum::{routing, Router};
use bytes::Bytes;
use common::*;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use std::time::Duration;
use tokio::time::{advance, timeout, Instant};
use tower::timeout::error::Elapsed;
use tower::{Layer, ServiceBuilder, ServiceExt};
use tower_swr::{CacheStatus, SwrBody, SwrLayer, SwrService};
use tower_test::mock;

#[tokio::test(start_paused = true)]
async fn router_layer_answers_the_second_call_without_the_handler() -> TestResult {
    let calls = Calls::default();
    let handler = {
        let calls = calls.clone();
        move || {
            let n = calls.record();
            async move { ([(header::CACHE_CONTROL, "max-age=60")], format!("42 v{n}")) }
        }
    };
    let swr = SwrLayer::new();
    let app = Router::new()
        .route("/prices", routing::get(handler))
        .layer(swr.clone());

    let first = app.clone().oneshot(axum_get("/prices")).await?;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(cache_status(&first), "tower-swr; fwd=uri-miss; stored");
    assert_eq!(body(first).await?, "42 v1");

    advance(secs(5)).await;
    let second = app.clone().oneshot(axum_get("/prices")).await?;
    assert_eq!(calls.get(), 1, "the second call must not reach the handler");
    assert_eq!(cache_status(&second), "tower-swr; hit; ttl=55");
    assert_eq!(age(&second), Some(5));
    assert_eq!(body(second).await?, "42 v1");
    assert_eq!(swr.stats().fresh_hits, 1);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn routes_share_one_cache_but_keep_their_own_entries() -> TestResult {
    let calls = Calls::default();
    let route = |name: &'static str| {
        let calls = calls.clone();
        routing::get(move || {
            calls.record();
            async move { ([(header::CACHE_CONTROL, "max-age=60")], name) }
        })
    };
    let swr = SwrLayer::new();
    let app = Router::new()
        .route("/a", route("a"))
        .route("/b", route("b"))
        .layer(swr.clone());

    for _ in 0..2 {
        assert_eq!(body(app.clone().oneshot(axum_get("/a")).await?).await?, "a");
        assert_eq!(body(app.clone().oneshot(axum_get("/b")).await?).await?, "b");
    }
    assert_eq!(calls.get(), 2);
    let stats = swr.stats();
    assert_eq!(stats.misses, 2);
    assert_eq!(stats.fresh_hits, 2);
    assert_eq!(stats.entries, 2);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn path_param_route_still_works_after_a_background_refresh() -> TestResult {
    let calls = Calls::default();
    let handler = {
        let calls = calls.clone();
        move |Path(id): Path<String>| {
            let n = calls.record();
            async move {
                (
                    [(header::CACHE_CONTROL, SWR_10_60)],
                    format!("item {id} v{n}"),
                )
            }
        }
    };
    let swr = SwrLayer::new();
    let app = Router::new()
        .route("/items/{id}", routing::get(handler))
        .layer(swr.clone());

    assert_eq!(
        body(app.clone().oneshot(axum_get("/items/7")).await?).await?,
        "item 7 v1"
    );
    advance(secs(11)).await;

    let stale = app.clone().oneshot(axum_get("/items/7")).await?;
    assert_eq!(info(&stale).status, CacheStatus::Stale);
    assert_eq!(body(stale).await?, "item 7 v1");
    settle().await;
    // The refresh replays the request with its extensions, where axum keeps the path params;
    // without them the handler is never reached (axum answers 500) and the refresh fails.
    assert_eq!(calls.get(), 2, "the refresh reached the handler");
    let stats = swr.stats();
    assert_eq!(stats.refreshes_succeeded, 1);
    assert_eq!(stats.refreshes_failed, 0);

    let fresh = app.clone().oneshot(axum_get("/items/7")).await?;
    assert_eq!(info(&fresh).status, CacheStatus::Fresh);
    assert_eq!(body(fresh).await?, "item 7 v2");

    // Another id is another entry, through the same route.
    assert_eq!(
        body(app.clone().oneshot(axum_get("/items/8")).await?).await?,
        "item 8 v3"
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn service_builder_with_map_response_applies_to_hits() -> TestResult {
    let calls = Calls::default();
    let handler = {
        let calls = calls.clone();
        move || {
            calls.record();
            async move { ([(header::CACHE_CONTROL, "max-age=60")], "mapped") }
        }
    };
    let app = Router::new().route("/m", routing::get(handler)).layer(
        ServiceBuilder::new()
            .map_response(|mut response: Response<SwrBody<Body>>| {
                response
                    .headers_mut()
                    .insert("x-served-by", HeaderValue::from_static("edge-1"));
                response
            })
            .layer(SwrLayer::new()),
    );

    for _ in 0..2 {
        let response = app.clone().oneshot(axum_get("/m")).await?;
        assert_eq!(
            header_value(&response, "x-served-by").as_deref(),
            Some("edge-1")
        );
        assert_eq!(body(response).await?, "mapped");
    }
    assert_eq!(calls.get(), 1);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn service_builder_with_timeout_serves_stale_without_waiting_for_a_slow_handler() -> TestResult
{
    let calls = Calls::default();
    let handler = {
        let calls = calls.clone();
        move || {
            let n = calls.record();
            async move {
                if n > 1 {
                    tokio::time::sleep(secs(3600)).await;
                }
                ([(header::CACHE_CONTROL, SWR_10_60)], format!("v{n}"))
            }
        }
    };
    let app = Router::new()
        .route("/slow", routing::get(handler.clone()))
        .route("/cold", routing::get(handler))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|_: BoxError| async {
                    StatusCode::REQUEST_TIMEOUT
                }))
                .timeout(secs(5))
                .layer(SwrLayer::new()),
        );

    assert_eq!(
        body(app.clone().oneshot(axum_get("/slow")).await?).await?,
        "v1"
    );
    advance(secs(11)).await;

    // The handler now takes an hour; the stale answer does not wait for it.
    let stale = app.clone().oneshot(axum_get("/slow")).await?;
    assert_eq!(stale.status(), StatusCode::OK);
    assert_eq!(info(&stale).status, CacheStatus::Stale);
    assert_eq!(body(stale).await?, "v1");

    // With nothing cached, the timeout above the cache still applies.
    let cold = app.clone().oneshot(axum_get("/cold")).await?;
    assert_eq!(cold.status(), StatusCode::REQUEST_TIMEOUT);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn inner_timeout_error_is_answered_with_stale_if_error() -> TestResult {
    let (origin, calls) = origin(|n, _| async move {
        if n > 1 {
            tokio::time::sleep(secs(3600)).await;
        }
        Ok(reply_cc(
            format!("v{n}"),
            "max-age=10, stale-while-revalidate=5, stale-if-error=100",
        ))
    });
    let service = ServiceBuilder::new()
        .layer(SwrLayer::new())
        .timeout(secs(1))
        .service(origin);

    assert_eq!(body(service.clone().oneshot(get("/t")).await?).await?, "v1");
    advance(secs(20)).await;

    // Past the SWR window: the origin is asked, times out, and the stale entry stands in.
    let response = service.clone().oneshot(get("/t")).await?;
    assert_eq!(calls.get(), 2);
    assert_eq!(cache_status(&response), "tower-swr; fwd=stale");
    assert_eq!(info(&response).status, CacheStatus::StaleIfError);
    assert_eq!(body(response).await?, "v1");

    // With nothing stored, the timeout error goes through unchanged.
    let error = service
        .clone()
        .oneshot(get("/never-stored"))
        .await
        .expect_err("the origin timed out");
    assert!(error.is::<Elapsed>(), "unexpected error: {error}");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn layer_applied_directly_to_a_router_service() -> TestResult {
    let calls = Calls::default();
    let handler = {
        let calls = calls.clone();
        move || {
            calls.record();
            async move { ([(header::CACHE_CONTROL, "max-age=60")], "whole app") }
        }
    };
    // The cache in front of the whole router (e.g. before routing, in `serve`).
    let router = Router::new().route("/", routing::get(handler));
    let service = SwrLayer::new().layer(router);

    for _ in 0..3 {
        let response = service.clone().oneshot(axum_get("/")).await?;
        assert_eq!(body(response).await?, "whole app");
    }
    assert_eq!(calls.get(), 1);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn hit_is_answered_while_the_inner_concurrency_limit_is_saturated() -> TestResult {
    let gate = Gate::new();
    let (origin, calls) = origin({
        let gate = gate.clone();
        move |_, request: Request<ReqBody>| {
            let gate = gate.clone();
            async move {
                if request.uri().path() == "/hang" {
                    gate.wait().await;
                }
                Ok(reply_cc(request.uri().path().to_owned(), "max-age=60"))
            }
        }
    });
    let service = ServiceBuilder::new()
        .layer(SwrLayer::new())
        .concurrency_limit(1)
        .service(origin);
    body(service.clone().oneshot(get("/hit")).await?).await?;

    let hanging = tokio::spawn(service.clone().oneshot(get("/hang")));
    settle().await;
    assert_eq!(calls.get(), 2, "the hanging request holds the only permit");

    let hit = timeout(SECOND, service.clone().oneshot(get("/hit")))
        .await
        .expect("a hit must not wait for the origin's capacity")?;
    assert_eq!(info(&hit).status, CacheStatus::Fresh);
    assert_eq!(body(hit).await?, "/hit");

    // A miss does wait for the permit, and gets it once the hanging call ends.
    let miss = tokio::spawn(service.clone().oneshot(get("/other")));
    settle().await;
    assert_eq!(calls.get(), 2);
    gate.open();
    body(hanging.await??).await?;
    assert_eq!(body(miss.await??).await?, "/other");
    assert_eq!(calls.get(), 3);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn hit_does_not_poll_the_inner_service_readiness() -> TestResult {
    let (mut service, mut handle) =
        mock::spawn_layer::<Request<ReqBody>, Response<Full<Bytes>>, _>(SwrLayer::new());
    let first = tokio::spawn(service.call(get("/r")));
    let (_, send) = handle.next_request().await.expect("the miss");
    send.send_response(reply_cc("ready", "max-age=60"));
    body(first.await??).await?;

    // The inner service is no longer ready; the layer still is, and a hit is answered.
    handle.allow(0);
    assert!(service.poll_ready().is_ready());
    let hit = service.call(get("/r")).await?;
    assert_eq!(body(hit).await?, "ready");
    assert!(handle.poll_request().is_pending());
    Ok(())
}

/// Issue 2 §11: types fit the ecosystem.
#[tokio::test(start_paused = true)]
async fn layer_service_body_and_handle_fit_the_tower_ecosystem() -> TestResult {
    fn clone_send_sync<T: Clone + Send + Sync + 'static>(_: &T) {}
    fn body_of_bytes<B: http_body::Body<Data = Bytes>>() {}
    let o = tower::service_fn(|_: Request<ReqBody>| async { Ok::<_, BoxError>(reply("x")) });
    let layer = SwrLayer::new();
    clone_send_sync(&layer);
    let service: SwrService<_> = layer.layer(o);
    clone_send_sync(&service);
    clone_send_sync(&layer.handle());
    body_of_bytes::<SwrBody<Full<Bytes>>>();

    // axum: Infallible holds, Router::layer compiles and answers.
    let app = axum::Router::new()
        .route("/prices", axum::routing::get(|| async { "42" }))
        .layer(SwrLayer::new());
    for expected in ["tower-swr; fwd=uri-miss; stored", "tower-swr; hit; ttl=60"] {
        let r = app
            .clone()
            .oneshot(
                Request::get("/prices")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(cache_status(&r), expected);
    }
    Ok(())
}

/// Seed `background-refresh-flow.md`: "Cache exists? YES → Load from Cache (~50ms) → STALE →
/// Return Cached Response" and "`from_cache`: Always true (except first time)", with
/// `/api/cinema` valid for 6 days. Wired exactly as README "Different policies per route"
/// (a layer per route, sharing one budget). A visit some time after the validity period must
/// still be answered from the cache at once, with the scrape in the background.
#[tokio::test(start_paused = true)]
async fn readme_route_layers_answer_from_cache_within_their_validity() -> TestResult {
    let calls = Calls::default();
    let budget = SwrLayer::new().capacity_bytes(256 << 20);
    let days = |d: u64| {
        SwrLayer::new()
            .ttl(secs(d * DAY))
            .stale_while_revalidate(secs(DAY))
            .share_memory_with(&budget)
    };
    let app = Router::new()
        .route("/api/cinema", scraper("cinema", &calls).layer(days(6)))
        .route("/api/events", scraper("events", &calls).layer(days(5)));

    let first = app.clone().oneshot(axum_get("/api/cinema")).await?;
    assert_eq!(body(first).await?, "cinema v1");

    advance(secs(6 * DAY + 3600)).await;
    let started = Instant::now();
    let stale = app.clone().oneshot(axum_get("/api/cinema")).await?;
    let took = started.elapsed();
    let status = cache_status(&stale);
    assert_eq!(
        took,
        Duration::ZERO,
        "a stale cinema entry must be answered at once, not after the scrape ({status})"
    );
    assert_eq!(body(stale).await?, "cinema v1");
    settle().await;
    advance(secs(6)).await;
    settle().await; // the refresh's task runs once its timer has fired
    let fresh = app.clone().oneshot(axum_get("/api/cinema")).await?;
    assert_eq!(
        body(fresh).await?,
        "cinema v2",
        "the next request gets NEW data"
    );
    Ok(())
}
