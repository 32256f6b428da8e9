//! A layer is a value of settings; its cache an instance: a handle taken before a setter
//! still sees the cache the layer serves from.

mod common;

use std::time::Duration;

use common::*;
use tower::{Layer, ServiceExt};
use tower_swr::{CacheStatus, SwrLayer};

#[tokio::test(start_paused = true)]
async fn a_handle_taken_before_a_setter_sees_the_cache_the_layer_serves_from() -> TestResult {
    let (origin, calls) = origin(|n, _| async move { Ok(reply(format!("v{n}"))) });
    let layer = SwrLayer::new();
    let handle = layer.handle();
    let layer = layer.ttl(Duration::from_secs(5)).x_cache_header(true);
    let service = layer.layer(origin);

    let first = service.clone().oneshot(get("http://example.com/a")).await?;
    assert_eq!(body(first).await?, "v1");
    assert_eq!(
        handle.stats().entries,
        1,
        "the handle sees what the layer stored"
    );
    assert_eq!(handle.purge("/a"), 1);
    let again = service.clone().oneshot(get("http://example.com/a")).await?;
    assert_eq!(info(&again).status, CacheStatus::Miss);
    assert_eq!(calls.get(), 2);
    // The setter after the handle still applies: 5 s fresh, not the default 60 s.
    tokio::time::advance(Duration::from_secs(6)).await;
    let stale = service.oneshot(get("http://example.com/a")).await?;
    assert_eq!(info(&stale).status, CacheStatus::Stale);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn routes_configured_from_one_base_before_use_get_caches_of_their_own() -> TestResult {
    let base = SwrLayer::new();
    let short = base.clone().ttl(Duration::from_secs(1));
    let long = base.clone().ttl(Duration::from_secs(100));
    let (origin_a, _) = origin(|_, _| async { Ok(reply("a")) });
    let (origin_b, _) = origin(|_, _| async { Ok(reply("b")) });
    let a = short.layer(origin_a);
    let b = long.layer(origin_b);
    a.oneshot(get("http://example.com/x")).await?;
    b.oneshot(get("http://example.com/x")).await?;
    assert_eq!(short.stats().entries, 1);
    assert_eq!(long.stats().entries, 1);
    assert_eq!(short.handle().purge("/x"), 1);
    assert_eq!(
        long.stats().entries,
        1,
        "purging one route's cache leaves the other's"
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_store_setting_after_first_use_keeps_the_serving_cache_and_handles() -> TestResult {
    let (origin, calls) = origin(|_, _| async { Ok(reply("x")) });
    let layer = SwrLayer::new();
    let old = layer.handle();
    let service = layer.clone().layer(origin.clone());
    service.clone().oneshot(get("http://example.com/s")).await?;
    assert_eq!(old.stats().entries, 1);
    // Too late to shape the store: not applied, and nothing detaches.
    let resized = layer
        .capacity_bytes(1 << 20)
        .remember_failures(Duration::ZERO);
    assert_eq!(resized.stats().entries, 1, "the layer keeps its cache");
    assert_ne!(resized.stats().capacity_bytes, 1 << 20);
    let again = resized
        .layer(origin)
        .oneshot(get("http://example.com/s"))
        .await?;
    assert_eq!(info(&again).status, CacheStatus::Fresh);
    assert_eq!(calls.get(), 1);
    assert_eq!(
        old.purge("/s"),
        1,
        "the old handle purges what the layer serves"
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_zero_turns_a_feature_off_origin_timeout_included() -> TestResult {
    for (timeout, expected) in [(Duration::ZERO, "v2"), (Duration::from_secs(1), "v1")] {
        let (origin, _) = origin(|n, _| async move {
            if n > 1 {
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            Ok(reply_cc(format!("v{n}"), "max-age=1, stale-if-error=600"))
        });
        let service = SwrLayer::new()
            .origin_timeout(timeout)
            .stale_alert_age(Duration::ZERO)
            .layer(origin);
        service.clone().oneshot(get("http://example.com/t")).await?;
        tokio::time::advance(Duration::from_secs(200)).await;
        let answer = service.oneshot(get("http://example.com/t")).await?;
        assert_eq!(body(answer).await?, expected, "origin_timeout({timeout:?})");
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn ignore_origin_freshness_true_uses_the_layer_ttl_and_false_gives_the_origin_back_its_say(
) -> TestResult {
    let (origin, _) = origin(|_, _| async { Ok(reply_cc("v", "max-age=1000")) });
    let ignoring = SwrLayer::new()
        .ttl(secs(5))
        .ignore_origin_freshness(true)
        .layer(origin.clone());
    let respecting = SwrLayer::new()
        .ttl(secs(5))
        .ignore_origin_freshness(true)
        .ignore_origin_freshness(false)
        .layer(origin);
    ignoring
        .clone()
        .oneshot(get("http://example.com/a"))
        .await?;
    respecting
        .clone()
        .oneshot(get("http://example.com/a"))
        .await?;
    tokio::time::advance(secs(6)).await;
    let ignored = ignoring.oneshot(get("http://example.com/a")).await?;
    assert_eq!(
        info(&ignored).status,
        CacheStatus::Stale,
        "the layer's 5 s, not the origin's max-age=1000"
    );
    let respected = respecting.oneshot(get("http://example.com/a")).await?;
    assert_eq!(info(&respected).status, CacheStatus::Fresh);
    Ok(())
}
