//! Black-box tests of the seed requirements that need a cache shared by several instances
//! (feature `redis`), each on a `redis-server` of its own (skipped, saying why, when
//! `redis-server` is not installed). Real time: Redis is on a real socket.
//!
//! Requirements (ids as in `tests/seed_requirements_blackbox.rs`):
//! - prices-3 (redis): "lock in the cache, so that updates are not started in parallel": the
//!   cache is Redis ("Redis/locmem"), the lock holds across instances: concurrent misses and
//!   concurrent stale hits on two instances make one CargoTech call.
//! - prices-5 (redis): the last successful prices survive an instance restart: a new instance
//!   answers them from Redis while CargoTech is down.
//! - stampede-9 (redis): "Use Redis for distributed mutex": one origin call per key per expiry
//!   for the fleet.
#![cfg(feature = "redis")]

mod common;

use std::time::Duration;

use common::redis_server::RedisServer;
use common::*;
use http::StatusCode;
use tower::{Layer, ServiceExt};
use tower_swr::{CacheStatus, SwrLayer};

/// An origin answering `prices v{n}` with `cache_control` after `delay`, or 503 while `down`.
fn cargotech(
    cache_control: &'static str,
    delay: Duration,
    down: Switch,
) -> (impl OriginService, Calls) {
    origin(move |n, _| {
        let down = down.clone();
        async move {
            tokio::time::sleep(delay).await;
            Ok(if down.on() {
                unavailable()
            } else {
                reply_cc(format!("prices v{n}"), cache_control)
            })
        }
    })
}

/// prices-3, stampede-9: 40 concurrent cold requests spread over two instances sharing Redis
/// make one CargoTech call, and all get its prices.
#[tokio::test]
async fn prices_3_redis_two_instances_concurrent_misses_make_one_call() -> TestResult {
    let Some(redis) = RedisServer::start("prices_3_redis_two_instances_concurrent_misses") else {
        return Ok(());
    };
    let (origin, calls) = cargotech(
        "max-age=60, stale-while-revalidate=60",
        Duration::from_millis(300),
        Switch::default(),
    );
    let a = SwrLayer::new().redis(redis.config()).layer(origin.clone());
    let b = SwrLayer::new().redis(redis.config()).layer(origin);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..40 {
        let service = if i % 2 == 0 { a.clone() } else { b.clone() };
        set.spawn(async move {
            let response = service.oneshot(get("/api/cargos/prices/")).await?;
            body(response).await
        });
    }
    while let Some(joined) = set.join_next().await {
        assert_eq!(joined??, "prices v1");
    }
    assert_eq!(calls.get(), 1, "one call for the fleet");
    Ok(())
}

/// prices-3, stampede-9: once stale, concurrent polls on both instances are answered at once
/// with the old prices and ONE refresh runs for the fleet; then both have the new prices.
#[tokio::test]
async fn prices_3_redis_stale_on_two_instances_makes_one_refresh() -> TestResult {
    let Some(redis) = RedisServer::start("prices_3_redis_stale_on_two_instances") else {
        return Ok(());
    };
    let (origin, calls) = cargotech(
        "max-age=1, stale-while-revalidate=60",
        Duration::from_millis(1_000),
        Switch::default(),
    );
    let a = SwrLayer::new().redis(redis.config()).layer(origin.clone());
    let b = SwrLayer::new().redis(redis.config()).layer(origin);
    assert_eq!(call(&a, get("/api/cargos/prices/")).await?.1, "prices v1");
    let from_b = call(&b, get("/api/cargos/prices/")).await?;
    assert_eq!(
        from_b.1, "prices v1",
        "instance b reads a's prices from Redis"
    );
    assert_eq!(calls.get(), 1);

    tokio::time::sleep(Duration::from_millis(2_200)).await; // stale everywhere
    let mut set = tokio::task::JoinSet::new();
    for i in 0..20 {
        let service = if i % 2 == 0 { a.clone() } else { b.clone() };
        set.spawn(async move {
            let started = std::time::Instant::now();
            let response = service.oneshot(get("/api/cargos/prices/")).await?;
            let status = info(&response).status;
            Ok::<_, BoxError>((status, body(response).await?, started.elapsed()))
        });
    }
    while let Some(joined) = set.join_next().await {
        let (status, bytes, took) = joined??;
        assert_eq!((status, bytes), (CacheStatus::Stale, "prices v1".into()));
        assert!(
            took < Duration::from_millis(700),
            "waited {took:?} for CargoTech"
        );
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(calls.get(), 2, "one refresh for both instances");
    for service in [&a, &b] {
        let (_, bytes) = call(service, get("/api/cargos/prices/")).await?;
        assert_eq!(bytes, "prices v2");
    }
    Ok(())
}

/// prices-5: an instance started while CargoTech is down answers the last successful prices
/// from Redis, not CargoTech's 503.
#[tokio::test]
async fn prices_5_redis_new_instance_answers_last_prices_while_cargotech_is_down() -> TestResult {
    let Some(redis) = RedisServer::start("prices_5_redis_new_instance") else {
        return Ok(());
    };
    let down = Switch::default();
    let (origin, calls) = cargotech(
        "max-age=60, stale-while-revalidate=60, stale-if-error=600",
        Duration::ZERO,
        down.clone(),
    );
    let first = SwrLayer::new().redis(redis.config()).layer(origin.clone());
    assert_eq!(
        call(&first, get("/api/cargos/prices/")).await?.1,
        "prices v1"
    );
    // Give the detached write to Redis a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(first);
    down.set(true);

    let restarted = SwrLayer::new().redis(redis.config()).layer(origin);
    let response = restarted
        .clone()
        .oneshot(get("/api/cargos/prices/"))
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(info(&response).status, CacheStatus::SharedTier);
    assert_eq!(body(response).await?, "prices v1");
    assert_eq!(calls.get(), 1, "CargoTech not asked");
    Ok(())
}
