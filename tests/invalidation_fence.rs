//! An invalidation wins over loads that began before it: after a purge, a clear, a soft
//! purge or an unsafe request returns, no request that starts later is answered from a load
//! that began before it, and such a load stores nothing.

mod common;

use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use tower::{Layer, ServiceExt};
use tower_swr::engine::{Freshness, Loaded, Status, SwrCache};
use tower_swr::{CacheStatus, SwrLayer};

/// An origin whose first call is held at the gate and answers `old`; later calls answer `new`.
fn held_then_new(gate: &Gate) -> (impl OriginService, Calls) {
    let gate = gate.clone();
    origin(move |n, request: http::Request<ReqBody>| {
        let gate = gate.clone();
        let unsafe_method = request.method() != Method::GET;
        async move {
            if unsafe_method {
                return Ok(reply_status(StatusCode::NO_CONTENT, ""));
            }
            if n == 1 {
                gate.wait().await;
                return Ok(reply_cc("old", "max-age=60"));
            }
            Ok(reply_cc("new", "max-age=60"))
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_get_after_a_purge_does_not_join_a_miss_that_began_before_it() -> TestResult {
    for how in ["purge", "clear", "purge_prefix", "soft_purge", "post"] {
        let gate = Gate::new();
        let (origin, calls) = held_then_new(&gate);
        let layer = SwrLayer::new();
        let handle = layer.handle();
        let service = layer.layer(origin);
        let before = tokio::spawn(service.clone().oneshot(get("http://example.com/item")));
        settle().await;
        assert_eq!(calls.get(), 1);
        match how {
            "purge" => assert_eq!(handle.purge("/item"), 0),
            "clear" => handle.clear(),
            "purge_prefix" => assert_eq!(handle.purge_prefix("/it"), 0),
            "soft_purge" => assert_eq!(handle.soft_purge("/item"), 0),
            _ => {
                let post = service
                    .clone()
                    .oneshot(request(Method::POST, "http://example.com/item"))
                    .await?;
                assert_eq!(post.status(), StatusCode::NO_CONTENT);
            }
        }
        let after = service
            .clone()
            .oneshot(get("http://example.com/item"))
            .await?;
        assert_eq!(
            body(after).await?,
            "new",
            "{how}: a request after the purge"
        );
        gate.open();
        let before = before.await??;
        assert_eq!(
            body(before).await?,
            "old",
            "{how}: the request that began before"
        );
        let later = service
            .clone()
            .oneshot(get("http://example.com/item"))
            .await?;
        assert_eq!(info(&later).status, CacheStatus::Fresh, "{how}");
        assert_eq!(
            body(later).await?,
            "new",
            "{how}: the old load stored nothing"
        );
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_background_refresh_that_began_before_a_purge_stores_nothing() -> TestResult {
    let gate = Gate::new();
    let held = gate.clone();
    let (origin, calls) = origin(move |n, _| {
        let gate = held.clone();
        async move {
            if n == 2 {
                gate.wait().await;
                return Ok(reply_cc("refreshed before the purge", "max-age=60"));
            }
            Ok(reply_cc(
                format!("v{n}"),
                "max-age=1, stale-while-revalidate=60",
            ))
        }
    });
    let layer = SwrLayer::new();
    let handle = layer.handle();
    let service = layer.layer(origin);
    service.clone().oneshot(get("http://example.com/r")).await?;
    tokio::time::advance(Duration::from_secs(2)).await;
    let stale = service.clone().oneshot(get("http://example.com/r")).await?;
    assert_eq!(info(&stale).status, CacheStatus::Stale);
    settle().await;
    assert_eq!(calls.get(), 2, "the refresh is under way");
    assert_eq!(handle.purge("/r"), 1);
    gate.open();
    settle().await;
    let after = service.clone().oneshot(get("http://example.com/r")).await?;
    assert_eq!(info(&after).status, CacheStatus::Miss);
    assert_eq!(body(after).await?, "v3");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn engine_loads_that_began_before_an_invalidation_store_nothing() {
    for how in ["remove", "clear", "remove_if", "mark_stale", "insert"] {
        let cache: SwrCache<String, &'static str> = SwrCache::builder().build();
        let gate = Gate::new();
        let held = gate.clone();
        let fresh = Freshness::new(Duration::from_secs(60));
        let slow = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get_or_load("k".to_owned(), move || async move {
                        held.wait().await;
                        Ok::<_, String>(Loaded::new("before", fresh))
                    })
                    .await
            })
        };
        settle().await;
        match how {
            "remove" => assert!(!cache.remove("k")),
            "clear" => cache.clear(),
            "remove_if" => assert_eq!(cache.remove_if(|k| k == "k"), 0),
            "mark_stale" => assert!(!cache.mark_stale("k")),
            _ => assert!(cache.insert("k".to_owned(), "inserted", fresh)),
        }
        let expected = if how == "insert" { "inserted" } else { "after" };
        let after = cache
            .get_or_load("k".to_owned(), move || async move {
                Ok::<_, String>(Loaded::new("after", fresh))
            })
            .await
            .unwrap();
        assert_eq!(after.value, expected, "{how}");
        gate.open();
        let before = slow.await.unwrap().unwrap();
        assert_eq!(
            (before.status, before.value),
            (Status::Miss, "before"),
            "{how}"
        );
        assert_eq!(cache.get("k").map(|l| l.value), Some(expected), "{how}");
    }
}
