//! Bodies and the memory budget: `max_body_bytes`, streamed, large and failing bodies, the
//! byte capacity, evictions, and layers sharing one budget.

mod common;

use bytes::Bytes;
use common::*;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use tower::{Layer, ServiceExt};
use tower_swr::SwrLayer;

#[tokio::test(start_paused = true)]
async fn large_streamed_body_reaches_the_client_intact_and_is_not_stored() -> TestResult {
    let data = patterned_bytes(20 << 20);
    let (origin, calls) = origin({
        let data = data.clone();
        move |_, _| {
            let data = data.clone();
            async move {
                Ok(with_header(
                    Response::new(ChunkedBody::new(data, 64 << 10)),
                    header::CACHE_CONTROL,
                    "max-age=60",
                ))
            }
        }
    });
    let layer = SwrLayer::new();
    let service = layer.layer(origin);

    for n in 1..=2 {
        let response = service.clone().oneshot(get("/big")).await?;
        assert_eq!(
            calls.get(),
            n,
            "a body over the limit is never answered from cache"
        );
        assert_eq!(cache_status(&response), "tower-swr; fwd=uri-miss");
        let received = body(response).await?;
        assert_eq!(received.len(), data.len());
        assert!(received == data, "the 20 MiB body was altered");
    }
    assert_eq!(layer.stats().stores, 0);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn body_over_max_body_bytes_is_passed_intact_and_not_stored() -> TestResult {
    let data = patterned_bytes(2 << 10);
    let (origin, calls) = origin({
        let data = data.clone();
        move |n, _| {
            let data = data.clone();
            async move {
                let response = with_header(
                    Response::new(ChunkedBody::new(data, 512)),
                    header::CACHE_CONTROL,
                    "max-age=60",
                );
                // Once without Content-Length (found while buffering), once with it (known early).
                Ok(if n % 2 == 0 {
                    with_header(response, header::CONTENT_LENGTH, "2048")
                } else {
                    response
                })
            }
        }
    });
    let layer = SwrLayer::new().max_body_bytes(1024);
    let service = layer.layer(origin);

    for n in 1..=4 {
        let response = service.clone().oneshot(get("/two-k")).await?;
        assert_eq!(calls.get(), n);
        assert!(body(response).await? == data, "the 2 KiB body was altered");
    }
    assert_eq!(layer.stats().stores, 0);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn body_failing_mid_stream_reaches_the_client_as_an_error_and_is_not_stored() -> TestResult {
    let (origin, calls) = origin(|_, _| async move {
        let body = ChunkedBody::new(patterned_bytes(3000), 1000).failing_with("reset by peer");
        Ok(with_header(
            Response::new(body),
            header::CACHE_CONTROL,
            "max-age=60",
        ))
    });
    let layer = SwrLayer::new();
    let service = layer.layer(origin);

    for n in 1..=2 {
        let response = service.clone().oneshot(get("/broken")).await?;
        assert_eq!(calls.get(), n, "a failed body is never stored");
        assert_eq!(response.status(), StatusCode::OK);
        let error = body(response)
            .await
            .expect_err("the client must see the body error");
        assert_eq!(error.to_string(), "reset by peer");
    }
    assert_eq!(layer.stats().stores, 0);
    Ok(())
}

/// Issue 2 §8: default `max_body_bytes` is 8 MiB; a body of exactly 8 MiB is stored, one byte
/// more streams intact and is not stored.
#[tokio::test(start_paused = true)]
async fn max_body_bytes_defaults_to_8_mib() -> TestResult {
    for (len, stored) in [(8 << 20, true), ((8 << 20) + 1, false)] {
        let data = patterned_bytes(len);
        let (o, calls) = origin({
            let data = data.clone();
            move |_, _| {
                let data = data.clone();
                async move { Ok(Response::new(ChunkedBody::new(data, 64 << 10))) }
            }
        });
        let service = SwrLayer::new().layer(o);
        for _ in 0..2 {
            let r = service.clone().oneshot(get("/big")).await?;
            assert!(body(r).await? == data, "len {len}: body not intact");
        }
        assert_eq!(calls.get(), if stored { 1 } else { 2 }, "len {len}");
    }
    Ok(())
}

/// Issue 2 §8: "the largest storable body must really be storable", also with a raised limit
/// (20 MiB) and with a small budget.
#[tokio::test(start_paused = true)]
async fn the_largest_storable_body_is_stored() -> TestResult {
    for (max_body, capacity) in [(20usize << 20, None), (16 << 10, Some(64u64 << 10))] {
        let data = patterned_bytes(max_body);
        let (o, calls) = origin({
            let data = data.clone();
            move |_, _| {
                let data = data.clone();
                async move { Ok(Response::new(Full::new(data))) }
            }
        });
        let mut layer = SwrLayer::new().max_body_bytes(max_body);
        if let Some(c) = capacity {
            layer = layer.capacity_bytes(c);
        }
        let service = layer.layer(o);
        for _ in 0..2 {
            let r = service.clone().oneshot(get("/big")).await?;
            assert!(body(r).await? == data, "body of {max_body} not intact");
        }
        assert_eq!(
            calls.get(),
            1,
            "body of {max_body} with capacity {capacity:?}"
        );
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn bytes_held_stay_within_the_configured_capacity() -> TestResult {
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

#[tokio::test(start_paused = true)]
async fn layers_on_different_routes_share_one_memory_budget() -> TestResult {
    use axum::body::Body;
    use axum::routing;
    use axum::Router;

    let calls = Calls::default();
    let handler = |name: &'static str| {
        let calls = calls.clone();
        move || {
            calls.record();
            async move { name }
        }
    };
    let budget = SwrLayer::new().capacity_bytes(1 << 20);
    let cinema = SwrLayer::new()
        .ttl(secs(6 * DAY))
        .share_memory_with(&budget);
    let trends = SwrLayer::new().ttl(secs(DAY)).share_memory_with(&budget);
    let app = Router::new()
        .route(
            "/cinema",
            routing::get(handler("films")).layer(cinema.clone()),
        )
        .route(
            "/trends",
            routing::get(handler("trends")).layer(trends.clone()),
        );
    let axum_get = |uri: &str| Request::builder().uri(uri).body(Body::empty()).unwrap();

    for (uri, ttl) in [("/cinema", 6 * DAY), ("/trends", DAY)] {
        let miss = app.clone().oneshot(axum_get(uri)).await?;
        assert_eq!(cache_status(&miss), "tower-swr; fwd=uri-miss; stored");
        let hit = app.clone().oneshot(axum_get(uri)).await?;
        assert_eq!(cache_status(&hit), format!("tower-swr; hit; ttl={ttl}"));
    }
    assert_eq!(calls.get(), 2);
    for layer in [&budget, &cinema, &trends] {
        let stats = layer.stats();
        assert_eq!(stats.entries, 2, "one store for both routes");
        assert_eq!(stats.capacity_bytes, budget.stats().capacity_bytes);
        assert_eq!(stats.fresh_hits, 2);
    }
    Ok(())
}

/// Issue 13: the memory of keys whose answers could not be stored is part of the bytes held,
/// and purging a key frees it.
#[tokio::test(start_paused = true)]
async fn remembered_passes_count_against_the_budget() -> TestResult {
    let (o, calls) = origin(|_, _| async { Ok(reply_cc("secret", "no-store")) });
    let layer = SwrLayer::new();
    let handle = layer.handle();
    let service = layer.layer(o);
    let response = service.clone().oneshot(get("/private")).await?;
    assert!(!info(&response).stored);
    body(response).await?;
    assert_eq!(calls.get(), 1);
    let stats = layer.stats();
    assert_eq!(stats.entries, 0);
    assert!(stats.bytes > 0, "the pass for /private is held: {stats:?}");
    assert!(stats.bytes <= stats.capacity_bytes);

    handle.purge("/private");
    assert_eq!(layer.stats().bytes, 0);
    Ok(())
}
