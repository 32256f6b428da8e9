//! `SwrLayer` in an axum `Router` and in `ServiceBuilder` stacks with other tower layers.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::Path;
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use axum::routing;
use axum::Router;
use common::*;
use tokio::time::advance;
use tower::timeout::error::Elapsed;
use tower::{Layer, ServiceBuilder, ServiceExt};
use tower_swr::{CacheStatus, SwrBody, SwrLayer};

/// Fresh for 10 s, then served stale for 60 s while one refresh runs.
const SWR_10_60: &str = "max-age=10, stale-while-revalidate=60";

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn axum_get(uri: &str) -> Request<Body> {
    Request::builder()
        .uri(uri)
        .body(Body::empty())
        .expect("valid request")
}

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
