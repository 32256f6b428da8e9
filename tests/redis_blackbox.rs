//! Black-box tests of the Redis tier (feature `redis`, issue 14 "Scale out on Redis"), written
//! from the requirements and the public API only. Each test starts its own `redis-server` on a
//! free loopback port (and skips, saying why, where it is not installed); several layers in one
//! process on one Redis stand for several instances.
#![cfg(feature = "redis")]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::redis_server::{RedisCluster, RedisServer};
use common::*;
use http::{Method, StatusCode};
use tower::{Layer, ServiceExt};
use tower_swr::redis::{BreakerState, RedisConfig};
use tower_swr::{CacheStatus, SwrHandle, SwrLayer, SwrService};

type Instance<S> = (SwrService<S>, SwrHandle);

/// One instance: `layer` on the Redis of `config`, around `origin`.
fn instance<S: OriginService>(config: RedisConfig, origin: S, layer: SwrLayer) -> Instance<S> {
    let layer = layer.redis(config);
    let handle = layer.handle();
    (layer.layer(origin), handle)
}

fn instances<S: OriginService>(redis: &RedisServer, origin: &S, n: usize) -> Vec<Instance<S>> {
    (0..n)
        .map(|_| instance(redis.config(), origin.clone(), SwrLayer::new()))
        .collect()
}

/// An answer read whole: `CacheStatus`, the `Cache-Status` line, `Age`, body.
struct Got {
    status: CacheStatus,
    line: String,
    age: Option<u64>,
    http: StatusCode,
    body: String,
}

async fn fetch<S: OriginService>(service: &SwrService<S>, request: http::Request<ReqBody>) -> Got {
    let response = service
        .clone()
        .oneshot(request)
        .await
        .expect("the layer never fails a request here");
    let status = info(&response).status;
    let line = cache_status(&response);
    let age = age(&response);
    let http = response.status();
    let bytes = body(response).await.expect("a body");
    Got {
        status,
        line,
        age,
        http,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// Polls `service` with `make()` until `done` holds (10 s of real time at most); returns the
/// answer that satisfied it.
async fn until<S: OriginService>(
    what: &str,
    service: &SwrService<S>,
    make: impl Fn() -> http::Request<ReqBody>,
    done: impl Fn(&Got) -> bool,
) -> Got {
    let deadline = Deadline::after(Duration::from_secs(10), what);
    loop {
        let got = fetch(service, make()).await;
        if done(&got) {
            return got;
        }
        deadline.tick().await;
    }
}

/// Waits until `service` no longer answers `path` with its fresh `v1` after a soft
/// invalidation elsewhere, and checks that it answers it stale (or already refreshed, `v2`).
async fn serves_soft_purged<S: OriginService>(service: &SwrService<S>, path: &str, what: &str) {
    let got = until(
        what,
        service,
        || get(path),
        |g| g.status != CacheStatus::Fresh || g.body != "v1",
    )
    .await;
    assert!(
        (got.status == CacheStatus::Stale && got.body == "v1") || got.body == "v2",
        "a soft-purged entry is served stale (or already refreshed): {:?} {} {}",
        got.status,
        got.body,
        got.line
    );
}

/// Waits until `handle`'s instance has written `n` values to Redis in all (the write-back is
/// detached). Polls the counter, so nothing else touches Redis meanwhile.
async fn until_written(handle: &SwrHandle, n: u64) {
    let deadline = Deadline::after(Duration::from_secs(10), format!("{n} writes to Redis"));
    while handle.redis_stats().expect("a tier").writes < n {
        deadline.tick().await;
    }
}

/// Every value Redis holds (strings, hash fields and values, list/set/zset members), with its
/// key, read by type (not `DUMP`, which may compress).
fn all_values(client: &redis::Client) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut connection = client.get_connection().expect("connect");
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg("*")
        .query(&mut connection)
        .expect("KEYS");
    let mut out = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query(&mut connection)
            .expect("TYPE");
        let values: Vec<Vec<u8>> = match kind.as_str() {
            "string" => {
                let v: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(&key)
                    .query(&mut connection)
                    .unwrap_or(None);
                v.into_iter().collect()
            }
            "hash" => redis::cmd("HGETALL")
                .arg(&key)
                .query(&mut connection)
                .unwrap_or_default(),
            "list" => redis::cmd("LRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query(&mut connection)
                .unwrap_or_default(),
            "set" => redis::cmd("SMEMBERS")
                .arg(&key)
                .query(&mut connection)
                .unwrap_or_default(),
            "zset" => redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query(&mut connection)
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        out.push((key.clone(), key.clone()));
        for value in values {
            out.push((key.clone(), value));
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// The keys (and values) of `client`'s Redis whose bytes contain `needle`.
fn holding(client: &redis::Client, needle: &str) -> Vec<String> {
    all_values(client)
        .into_iter()
        .filter(|(_, value)| contains(value, needle))
        .map(|(key, _)| String::from_utf8_lossy(&key).into_owned())
        .collect()
}

fn redis_cmd(redis: &RedisServer, args: &[&str]) -> redis::RedisResult<redis::Value> {
    let mut connection = redis.client().get_connection()?;
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query(&mut connection)
}

/// An origin answering `v<n>` with `cache_control`, to any method.
fn counting(cache_control: &'static str) -> (impl OriginService, Calls) {
    slow_origin(Duration::ZERO, cache_control)
}

// ---------------------------------------------------------------------------------------------
// 1. Two tiers
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_memory_hit_makes_no_redis_call() {
    let Some(redis) = RedisServer::start("fresh hit no redis") else {
        return;
    };
    let (origin, calls) = counting("max-age=60");
    let (a, handle) = instance(redis.config(), origin, SwrLayer::new());
    assert_eq!(fetch(&a, get("/item")).await.status, CacheStatus::Miss);
    // Let the detached write-back finish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = handle.redis_stats().expect("a tier");
    for _ in 0..20 {
        assert_eq!(fetch(&a, get("/item")).await.status, CacheStatus::Fresh);
    }
    let after = handle.redis_stats().expect("a tier");
    assert_eq!(
        (
            after.hits,
            after.misses,
            after.errors,
            after.timeouts,
            after.writes
        ),
        (
            before.hits,
            before.misses,
            before.errors,
            before.timeouts,
            before.writes
        ),
        "fresh memory hits called Redis"
    );
    // And with Redis frozen, a fresh hit is still instant (it does not wait on any Redis call).
    redis.signal("-STOP");
    let started = std::time::Instant::now();
    assert_eq!(fetch(&a, get("/item")).await.status, CacheStatus::Fresh);
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "a fresh hit waited {:?} with Redis stopped",
        started.elapsed()
    );
    redis.signal("-CONT");
    assert_eq!(calls.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_filled_by_one_instance_is_served_by_another_marked_shared() {
    let Some(redis) = RedisServer::start("shared fill") else {
        return;
    };
    let (origin, calls) = counting("max-age=60");
    let (a, a_handle) = instance(redis.config(), origin.clone(), SwrLayer::new());
    assert_eq!(fetch(&a, get("/item")).await.body, "v1");
    until_written(&a_handle, 1).await;
    let calls_before = calls.get();
    // A new instance, started after the fill, answers from Redis at once.
    let (b, b_handle) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let got = fetch(&b, get("/item")).await;
    assert_eq!(got.status, CacheStatus::SharedTier, "{}", got.line);
    assert_eq!(got.body, "v1");
    assert!(
        got.line.contains("hit") && got.line.contains("detail=shared"),
        "Cache-Status must say it came from the shared tier: {}",
        got.line
    );
    assert_eq!(
        calls.get(),
        calls_before,
        "the new instance called the origin"
    );
    assert!(b_handle.redis_stats().expect("a tier").hits >= 1);
    // Then it is in B's memory: a fresh hit.
    assert_eq!(fetch(&b, get("/item")).await.status, CacheStatus::Fresh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn age_read_from_redis_counts_the_time_since_the_origin_answered() {
    let Some(redis) = RedisServer::start("age across instances") else {
        return;
    };
    // The origin's response is already 20 s old.
    let (origin, _) = origin(|n, _request| async move {
        Ok(respond(
            200,
            format!("v{n}"),
            &[("cache-control", "max-age=600"), ("age", "20")],
        ))
    });
    let (a, a_handle) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let first = fetch(&a, get("/aged")).await;
    assert!(first.age.unwrap_or(0) >= 20, "A's Age: {:?}", first.age);
    until_written(&a_handle, 1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (b, _) = instance(redis.config(), origin, SwrLayer::new());
    let got = fetch(&b, get("/aged")).await;
    assert_eq!(got.status, CacheStatus::SharedTier, "{}", got.line);
    let age = got.age.expect("an Age on an answer from Redis");
    assert!(
        (22..=40).contains(&age),
        "an entry 20 s old at the origin and stored 3+ s ago must answer Age 23ish, got {age}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_memory_entry_is_replaced_by_a_fresher_one_from_redis() {
    let Some(redis) = RedisServer::start("fresher L2 replaces L1") else {
        return;
    };
    let (origin, calls) = counting("max-age=1, stale-while-revalidate=60");
    let (a, a_handle) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let (b, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    assert_eq!(fetch(&a, get("/r")).await.body, "v1");
    until_written(&a_handle, 1).await;
    let got = fetch(&b, get("/r")).await;
    assert_eq!(
        (got.status, got.body.as_str()),
        (CacheStatus::SharedTier, "v1")
    );
    // Both memories hold v1; let it go stale, then A refreshes it (v2 reaches Redis).
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let _ = fetch(&a, get("/r")).await;
    until("A's refresh to v2", &a, || get("/r"), |g| g.body == "v2").await;
    let calls_after_refresh = calls.get();
    assert_eq!(calls_after_refresh, 2);
    until_written(&a_handle, 2).await;
    // B's own copy is stale: it must ask Redis before anything else and find v2.
    let first = fetch(&b, get("/r")).await;
    let next = until("B takes v2", &b, || get("/r"), |g| g.body == "v2").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        calls.get(),
        2,
        "B refreshed from the origin although Redis had a fresh value"
    );
    assert_ne!(next.status, CacheStatus::Miss);
    assert_eq!(
        first.body, "v2",
        "B served its stale v1 although Redis had a fresher v2 ({})",
        first.line
    );
}

// ---------------------------------------------------------------------------------------------
// 2./3. One refresh, one miss fill in the fleet
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_key_is_refreshed_by_one_instance_while_all_serve_stale_at_once() {
    let Some(redis) = RedisServer::start("one refresh in the fleet") else {
        return;
    };
    // The refresh is slow (800 ms): every instance sees the key stale while it runs.
    let (origin, calls) = origin(|n, _request| async move {
        if n > 1 {
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
        Ok(reply_cc(
            format!("v{n}"),
            "max-age=1, stale-while-revalidate=60",
        ))
    });
    let fleet = instances(&redis, &origin, 3);
    assert_eq!(fetch(&fleet[0].0, get("/s")).await.body, "v1");
    until_written(&fleet[0].1, 1).await;
    for (service, _) in &fleet[1..] {
        assert_eq!(fetch(service, get("/s")).await.body, "v1");
    }
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let mut tasks = Vec::new();
    for (service, _) in &fleet {
        for _ in 0..3 {
            let service = service.clone();
            tasks.push(tokio::spawn(async move {
                let started = std::time::Instant::now();
                let got = fetch(&service, get("/s")).await;
                (got.status, got.body, started.elapsed())
            }));
        }
    }
    for task in tasks {
        let (status, body, took) = task.await.unwrap();
        assert_eq!(
            body, "v1",
            "every instance serves stale while the refresh runs"
        );
        assert_eq!(status, CacheStatus::Stale);
        assert!(
            took < Duration::from_millis(500),
            "a stale answer took {took:?}"
        );
    }
    until("the refresh", &fleet[0].0, || get("/s"), |g| g.body == "v2").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(calls.get(), 2, "one fill and ONE refresh for the fleet");
    let won: u64 = fleet
        .iter()
        .map(|(_, h)| h.redis_stats().unwrap().locks_won)
        .sum();
    assert!(
        won >= 2,
        "the fill's lock and the refresh's lock were won: {won}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_misses_on_three_instances_make_one_origin_call() {
    let Some(redis) = RedisServer::start("one miss fill") else {
        return;
    };
    let (origin, calls) = slow_origin(Duration::from_millis(400), "max-age=60");
    let fleet = instances(&redis, &origin, 3);
    let mut tasks = Vec::new();
    for (service, _) in &fleet {
        for _ in 0..2 {
            let service = service.clone();
            tasks.push(tokio::spawn(async move {
                fetch(&service, get("/cold")).await.body
            }));
        }
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), "v1");
    }
    assert_eq!(calls.get(), 1, "one origin call for the fleet");
    let stats: Vec<_> = fleet
        .iter()
        .map(|(_, h)| h.redis_stats().unwrap())
        .collect();
    let won: u64 = stats.iter().map(|s| s.locks_won).sum();
    let lost: u64 = stats.iter().map(|s| s.locks_lost).sum();
    assert_eq!(won, 1, "one lock won: {stats:?}");
    assert!(lost >= 1, "the others lost it: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_waiting_for_a_hung_winner_goes_to_the_origin_after_its_lock_timeout() {
    let Some(redis) = RedisServer::start("bounded wait") else {
        return;
    };
    // The first origin call hangs for 20 s; the others answer at once.
    let (origin, calls) = origin(|n, _request| async move {
        if n == 1 {
            tokio::time::sleep(Duration::from_secs(20)).await;
        }
        Ok(reply_cc(format!("v{n}"), "max-age=60"))
    });
    let layer = || SwrLayer::new().lock_timeout(Duration::from_millis(500));
    let (a, _) = instance(redis.config(), origin.clone(), layer());
    let (b, _) = instance(redis.config(), origin.clone(), layer());
    let a_task = tokio::spawn({
        let a = a.clone();
        async move { fetch(&a, get("/hung")).await }
    });
    eventually("A's origin call", || calls.get() == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(8), fetch(&b, get("/hung")))
        .await
        .expect("B must not wait for A's hung call beyond a bounded time");
    assert_eq!(got.body, "v2");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "B waited {:?} (lock_timeout 500 ms)",
        started.elapsed()
    );
    a_task.abort();
}

// ---------------------------------------------------------------------------------------------
// 4. No lost or resurrected data
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_whose_lock_expired_does_not_overwrite_the_newer_value() {
    let Some(redis) = RedisServer::start("lease fencing") else {
        return;
    };
    // Call 1 (A) takes 2 s, well past the 200 ms lease; call 2 (B) is quick.
    let (origin, calls) = origin(|n, _request| async move {
        if n == 1 {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        Ok(reply_cc(format!("v{n}"), "max-age=600"))
    });
    let config = || redis.config().lock_lease(Duration::from_millis(200));
    let layer = || SwrLayer::new().lock_timeout(Duration::from_millis(300));
    let (a, a_handle) = instance(config(), origin.clone(), layer());
    let (b, b_handle) = instance(config(), origin.clone(), layer());
    let a_task = tokio::spawn({
        let a = a.clone();
        async move { fetch(&a, get("/lease")).await.body }
    });
    eventually("A's origin call", || calls.get() == 1).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(fetch(&b, get("/lease")).await.body, "v2");
    // A's late v1 arrives.
    assert_eq!(a_task.await.unwrap(), "v1");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (c, _) = instance(config(), origin.clone(), layer());
    let got = fetch(&c, get("/lease")).await;
    assert_eq!(
        (got.status, got.body.as_str()),
        (CacheStatus::SharedTier, "v2"),
        "the load whose lease expired overwrote the newer value in Redis ({})",
        got.line
    );
    let fenced: u64 = [&a_handle, &b_handle]
        .iter()
        .map(|h| h.redis_stats().unwrap().fenced_writes)
        .sum();
    assert!(fenced >= 1, "A's refused write is counted as fenced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_call_under_way_during_a_purge_on_another_instance_does_not_bring_content_back() {
    let Some(redis) = RedisServer::start("purge races slow origin") else {
        return;
    };
    let got = race_load_against(
        &redis,
        Invalidation::Handle(Box::new(|b| {
            b.purge("/raced");
        })),
    )
    .await;
    // What the call that began before the purge loaded must not be served from Redis.
    assert_ne!(
        got.status,
        CacheStatus::SharedTier,
        "content loaded before the purge came back from Redis: {} {}",
        got.body,
        got.line
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purged_content_is_not_read_from_redis_by_a_new_instance() {
    let Some(redis) = RedisServer::start("purge then new instance") else {
        return;
    };
    let (origin, calls) = counting("max-age=600");
    let (a, a_handle) = instance(redis.config(), origin.clone(), SwrLayer::new());
    for target in ["/one", "/api/two", "/api/three", "/other"] {
        let _ = fetch(&a, get(target)).await;
    }
    until_written(&a_handle, 4).await;
    a_handle.purge("/one");
    a_handle.purge_prefix("/api/");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = calls.get();
    let (c, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    for target in ["/one", "/api/two", "/api/three"] {
        let got = fetch(&c, get(target)).await;
        assert_eq!(
            got.status,
            CacheStatus::Miss,
            "{target} purged on A was served from Redis to a new instance: {} {}",
            got.body,
            got.line
        );
    }
    let got = fetch(&c, get("/other")).await;
    assert_eq!(
        got.status,
        CacheStatus::SharedTier,
        "unpurged /other: {}",
        got.line
    );
    assert_eq!(calls.get(), before + 3);
    // After clear, nothing is read from Redis.
    a_handle.clear();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (d, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let got = fetch(&d, get("/other")).await;
    assert_eq!(
        got.status,
        CacheStatus::Miss,
        "after clear: {} {}",
        got.body,
        got.line
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Invalidation reaches every instance
// ---------------------------------------------------------------------------------------------

/// A and B both hold `target` in memory (v1), read from Redis by B.
async fn both_hold<S: OriginService>(
    redis: &RedisServer,
    origin: &S,
    target: &str,
) -> (Instance<S>, Instance<S>) {
    let a = instance(redis.config(), origin.clone(), SwrLayer::new());
    let b = instance(redis.config(), origin.clone(), SwrLayer::new());
    let got = fetch(&a.0, get(target)).await;
    assert_eq!(got.status, CacheStatus::Miss);
    until_written(&a.1, 1).await;
    let got = fetch(&b.0, get(target)).await;
    assert_eq!(got.status, CacheStatus::SharedTier);
    assert_eq!(fetch(&b.0, get(target)).await.status, CacheStatus::Fresh);
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_on_one_instance_stops_the_other_serving_its_memory_copy() {
    let Some(redis) = RedisServer::start("purge bus") else {
        return;
    };
    let (origin, _) = counting("max-age=600");
    let ((_, a_handle), (b, b_handle)) = both_hold(&redis, &origin, "/p").await;
    a_handle.purge("/p");
    let got = until("B stops serving v1", &b, || get("/p"), |g| g.body != "v1").await;
    assert_eq!(got.status, CacheStatus::Miss, "{}", got.line);
    assert!(a_handle.redis_stats().unwrap().bus_sent >= 1);
    assert!(b_handle.redis_stats().unwrap().bus_received >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_purge_and_a_clear_reach_the_other_instance() {
    let Some(redis) = RedisServer::start("prefix purge bus") else {
        return;
    };
    let (origin, _) = counting("max-age=600");
    let ((a, a_handle), (b, _)) = both_hold(&redis, &origin, "/api/x").await;
    let _ = fetch(&a, get("/keep")).await;
    until_written(&a_handle, 2).await;
    let keep = fetch(&b, get("/keep")).await;
    a_handle.purge_prefix("/api/");
    until("B drops /api/x", &b, || get("/api/x"), |g| g.body != "v1").await;
    let got = fetch(&b, get("/keep")).await;
    assert_eq!(got.body, keep.body, "a prefix purge of /api/ removed /keep");
    assert_eq!(got.status, CacheStatus::Fresh);
    a_handle.clear();
    until(
        "B drops /keep after clear",
        &b,
        || get("/keep"),
        |g| g.body != keep.body,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_purge_on_one_instance_makes_the_other_serve_stale_and_refresh() {
    let Some(redis) = RedisServer::start("soft purge bus") else {
        return;
    };
    let (origin, calls) = counting("max-age=600, stale-while-revalidate=600");
    let ((_, a_handle), (b, _)) = both_hold(&redis, &origin, "/soft").await;
    a_handle.soft_purge("/soft");
    serves_soft_purged(&b, "/soft", "B sees the soft purge").await;
    until("the refresh", &b, || get("/soft"), |g| g.body == "v2").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(calls.get(), 2, "one refresh for the soft purge");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_purges_reach_the_other_instance_and_redis() {
    let Some(redis) = RedisServer::start("tag purge bus") else {
        return;
    };
    let (origin, _) = origin(|n, request: http::Request<ReqBody>| async move {
        let tag = if request.uri().path().starts_with("/tagged") {
            "product-42"
        } else {
            "other"
        };
        Ok(respond(
            200,
            format!("v{n}"),
            &[
                ("cache-control", "max-age=600, stale-while-revalidate=600"),
                ("surrogate-key", tag),
            ],
        ))
    });
    let ((a, a_handle), (b, _)) = both_hold(&redis, &origin, "/tagged/1").await;
    let _ = fetch(&a, get("/untagged")).await;
    until_written(&a_handle, 2).await;
    let untagged = fetch(&b, get("/untagged")).await.body;
    assert_eq!(a_handle.purge_tag(["product-42"]), 1);
    let got = until(
        "B drops the tagged entry",
        &b,
        || get("/tagged/1"),
        |g| g.body != "v1",
    )
    .await;
    assert_eq!(got.status, CacheStatus::Miss, "{}", got.line);
    assert_eq!(fetch(&b, get("/untagged")).await.body, untagged);
    // Redis' copy is not served to a new instance either.
    let (c, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    // (/tagged/1 was refilled by B after the purge: that value may be served.)
    let got = fetch(&c, get("/tagged/1")).await;
    assert_ne!(got.body, "v1", "purged-by-tag v1 came back from Redis");
    // Soft tag purge: B serves stale.
    assert_eq!(a_handle.soft_purge_tag(["other"]), 1);
    let got = until(
        "B sees the soft tag purge",
        &b,
        || get("/untagged"),
        |g| g.status != CacheStatus::Fresh,
    )
    .await;
    assert!(
        matches!(
            got.status,
            CacheStatus::Stale | CacheStatus::Miss | CacheStatus::SharedTier
        ),
        "{:?} {}",
        got.status,
        got.line
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_post_on_one_instance_invalidates_the_url_on_the_other() {
    let Some(redis) = RedisServer::start("unsafe invalidation bus") else {
        return;
    };
    let (origin, _) = counting("max-age=600");
    let ((a, _), (b, _)) = both_hold(&redis, &origin, "/doc").await;
    let posted = fetch(&a, request(Method::POST, "/doc")).await;
    assert_eq!(posted.http, StatusCode::OK);
    let got = until(
        "B drops /doc after A's POST",
        &b,
        || get("/doc"),
        |g| g.body != "v1",
    )
    .await;
    assert_ne!(got.status, CacheStatus::Fresh);
    // And Redis' copy is not given to a new instance.
    let (c, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    assert_ne!(fetch(&c, get("/doc")).await.body, "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_post_does_not_invalidate_other_instances() {
    let Some(redis) = RedisServer::start("failed unsafe request") else {
        return;
    };
    let (origin, _) = origin(|n, request: http::Request<ReqBody>| async move {
        if request.method() == Method::POST {
            return Ok(respond(500, "no", &[]));
        }
        Ok(reply_cc(format!("v{n}"), "max-age=600"))
    });
    let ((a, _), (b, _)) = both_hold(&redis, &origin, "/doc").await;
    let posted = fetch(&a, request(Method::POST, "/doc")).await;
    assert_eq!(posted.http, StatusCode::INTERNAL_SERVER_ERROR);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = fetch(&b, get("/doc")).await;
    assert_eq!((got.status, got.body.as_str()), (CacheStatus::Fresh, "v1"));
}

// ---------------------------------------------------------------------------------------------
// 6. Redis failing never fails a request
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_whose_redis_is_not_listening_answers_at_once_from_the_origin() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (origin, calls) = counting("max-age=60");
    let config = RedisConfig::new(&format!("redis://127.0.0.1:{port}/")).unwrap();
    let (a, _) = instance(config, origin, SwrLayer::new());
    let started = std::time::Instant::now();
    let got = fetch(&a, get("/x")).await;
    assert_eq!((got.http, got.body.as_str()), (StatusCode::OK, "v1"));
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "took {:?}",
        started.elapsed()
    );
    let got = fetch(&a, get("/x")).await;
    assert_eq!(got.status, CacheStatus::Fresh);
    assert_eq!(calls.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_costs_a_request_at_most_a_bounded_delay_with_the_default_timeout() {
    let Some(redis) = RedisServer::start("SIGSTOP default timeout") else {
        return;
    };
    let (origin, calls) = counting("max-age=1, stale-while-revalidate=60");
    // Default timeout (tens of ms), not the helper's 100 ms.
    let config = || RedisConfig::new(&redis.url()).unwrap();
    let (a, a_handle) = instance(config(), origin.clone(), SwrLayer::new());
    assert_eq!(fetch(&a, get("/f")).await.body, "v1");
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.signal("-STOP");
    let (b, _) = instance(config(), origin.clone(), SwrLayer::new());
    for target in ["/f", "/g", "/h"] {
        let started = std::time::Instant::now();
        let got = tokio::time::timeout(Duration::from_secs(5), fetch(&b, get(target)))
            .await
            .expect("a request must not hang on a stopped Redis");
        assert_eq!(got.http, StatusCode::OK);
        assert!(
            started.elapsed() < Duration::from_millis(600),
            "{target} took {:?} with Redis stopped",
            started.elapsed()
        );
    }
    // A stale entry on A: served at once, refreshed (lock fails open).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let started = std::time::Instant::now();
    let got = fetch(&a, get("/f")).await;
    assert_eq!(got.body, "v1");
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "stale took {:?}",
        started.elapsed()
    );
    let refreshed = until(
        "A refreshes with Redis stopped (the lock fails open)",
        &a,
        || get("/f"),
        |g| g.body != "v1",
    )
    .await;
    assert_eq!(refreshed.http, StatusCode::OK);
    let _ = a_handle;
    redis.signal("-CONT");
    assert!(calls.get() >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_on_a_frozen_redis_and_closes_when_it_returns() {
    let Some(redis) = RedisServer::start("breaker") else {
        return;
    };
    let (origin, _) = counting("max-age=60");
    let config = redis
        .config()
        .circuit_breaker(3, Duration::from_millis(500));
    let (a, a_handle) = instance(config, origin.clone(), SwrLayer::new());
    let _ = fetch(&a, get("/warm")).await;
    redis.signal("-STOP");
    for n in 0..10 {
        let got = fetch(&a, get(&format!("/k{n}"))).await;
        assert_eq!(got.http, StatusCode::OK);
    }
    let stats = a_handle.redis_stats().unwrap();
    assert_ne!(stats.breaker, BreakerState::Closed, "{stats:?}");
    assert!(stats.skipped >= 1, "{stats:?}");
    redis.signal("-CONT");
    let deadline = Deadline::after(Duration::from_secs(10), "breaker closes");
    let mut n = 100;
    loop {
        n += 1;
        let _ = fetch(&a, get(&format!("/k{n}"))).await;
        if a_handle.redis_stats().unwrap().breaker == BreakerState::Closed {
            break;
        }
        deadline.tick().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_a_frozen_redis_are_counted_as_timeouts() {
    let Some(redis) = RedisServer::start("timeouts counted") else {
        return;
    };
    let (origin, _) = counting("max-age=60");
    let config = redis
        .config()
        .circuit_breaker(1000, Duration::from_millis(500));
    let (a, a_handle) = instance(config, origin.clone(), SwrLayer::new());
    let _ = fetch(&a, get("/warm")).await;
    until_written(&a_handle, 1).await;
    redis.signal("-STOP");
    for n in 0..3 {
        assert_eq!(fetch(&a, get(&format!("/t{n}"))).await.http, StatusCode::OK);
    }
    let stats = a_handle.redis_stats().unwrap();
    redis.signal("-CONT");
    // A stopped server never answers: every call is cut at the tier's timeout (100 ms here).
    assert!(
        stats.timeouts >= 3,
        "calls cut at the tier's timeout must count as timeouts, not errors: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharing_resumes_by_itself_after_redis_restarts() {
    let Some(mut redis) = RedisServer::start("restart") else {
        return;
    };
    let (origin, _) = counting("max-age=600");
    let (a, a_handle) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let (b, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let _ = fetch(&a, get("/before")).await;
    until_written(&a_handle, 1).await;
    assert_eq!(
        fetch(&b, get("/before")).await.status,
        CacheStatus::SharedTier
    );
    redis.stop();
    for target in ["/down1", "/down2", "/before"] {
        let got = tokio::time::timeout(Duration::from_secs(5), fetch(&a, get(target)))
            .await
            .expect("no hang while Redis is down");
        assert_eq!(got.http, StatusCode::OK);
        let got = fetch(&b, get(target)).await;
        assert_eq!(got.http, StatusCode::OK);
    }
    redis.launch();
    // A fills new keys until B gets one from Redis.
    let deadline = Deadline::after(Duration::from_secs(15), "sharing resumes");
    let mut n = 0;
    loop {
        n += 1;
        let target = format!("/after{n}");
        let _ = fetch(&a, get(&target)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if fetch(&b, get(&target)).await.status == CacheStatus::SharedTier {
            break;
        }
        deadline.tick().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_resumes_after_a_redis_restart_and_purges_reach_the_other_instance() {
    let Some(mut redis) = RedisServer::start("bus after restart") else {
        return;
    };
    let (origin, _) = counting("max-age=600");
    let ((a, a_handle), (b, _)) = both_hold(&redis, &origin, "/busy").await;
    redis.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.launch();
    // Wait until A talks to Redis again (a fill reaches Redis).
    let deadline = Deadline::after(Duration::from_secs(15), "A writes again");
    let mut n = 0;
    loop {
        n += 1;
        let target = format!("/w{n}");
        let _ = fetch(&a, get(&target)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (probe, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
        if fetch(&probe, get(&target)).await.status == CacheStatus::SharedTier {
            break;
        }
        deadline.tick().await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // B (whose memory still holds /busy v1, or re-checked it) must stop serving it after A's purge.
    a_handle.purge("/busy");
    until(
        "B drops /busy after the restart",
        &b,
        || get("/busy"),
        |g| g.body != "v1",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_with_noeviction_fails_no_request() {
    let Some(redis) = RedisServer::start("maxmemory noeviction") else {
        return;
    };
    redis_cmd(&redis, &["CONFIG", "SET", "maxmemory-policy", "noeviction"]).unwrap();
    redis_cmd(&redis, &["CONFIG", "SET", "maxmemory", "1"]).unwrap();
    let (origin, calls) = counting("max-age=600");
    let (a, a_handle) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let (b, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    for n in 0..5 {
        let target = format!("/full{n}");
        let got = fetch(&a, get(&target)).await;
        assert_eq!(
            (got.http, got.body.as_str()),
            (StatusCode::OK, format!("v{}", calls.get()).as_str())
        );
        assert_eq!(fetch(&a, get(&target)).await.status, CacheStatus::Fresh);
        let got = fetch(&b, get(&target)).await;
        assert_eq!(got.http, StatusCode::OK);
    }
    let stats = a_handle.redis_stats().unwrap();
    assert_eq!(
        stats.writes, 0,
        "nothing can be written to a full Redis: {stats:?}"
    );
    assert!(stats.errors >= 1, "the OOM errors are counted: {stats:?}");
}

/// Replaces every Redis string value that contains `marker` with `bytes`.
fn overwrite_values(redis: &RedisServer, marker: &str, bytes: &[u8]) -> usize {
    let mut connection = redis.client().get_connection().unwrap();
    let mut n = 0;
    for (key, value) in all_values(&redis.client()) {
        if key != value && contains(&value, marker) {
            let kind: String = redis::cmd("TYPE").arg(&key).query(&mut connection).unwrap();
            if kind == "string" {
                let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut connection).unwrap();
                let mut set = redis::cmd("SET");
                set.arg(&key).arg(bytes);
                if ttl > 0 {
                    set.arg("PX").arg(ttl);
                }
                let _: () = set.query(&mut connection).unwrap();
                n += 1;
            } else if kind == "hash" {
                let fields: Vec<Vec<u8>> = redis::cmd("HKEYS")
                    .arg(&key)
                    .query(&mut connection)
                    .unwrap();
                for field in fields {
                    let value: Vec<u8> = redis::cmd("HGET")
                        .arg(&key)
                        .arg(&field)
                        .query(&mut connection)
                        .unwrap();
                    if contains(&value, marker) {
                        let _: () = redis::cmd("HSET")
                            .arg(&key)
                            .arg(&field)
                            .arg(bytes)
                            .query(&mut connection)
                            .unwrap();
                    }
                }
                n += 1;
            }
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_value_in_redis_is_a_miss() {
    let Some(redis) = RedisServer::start("corrupt value") else {
        return;
    };
    let (origin, calls) =
        origin(
            |n, _request| async move { Ok(reply_cc(format!("body-marker-{n}"), "max-age=600")) },
        );
    let (a, a_handle) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let _ = fetch(&a, get("/c")).await;
    until_written(&a_handle, 1).await;
    let replaced = overwrite_values(&redis, "body-marker-1", b"\x00\xffgarbage, not a value\x01");
    assert!(replaced >= 1, "found the stored value in Redis");
    eprintln!(
        "keys: {:?}",
        redis
            .keys()
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect::<Vec<_>>()
    );
    let before = calls.get();
    let (b, b_handle) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let got = fetch(&b, get("/c")).await;
    assert_eq!(got.http, StatusCode::OK);
    assert_eq!(got.status, CacheStatus::Miss, "{}", got.line);
    assert!(
        got.body.starts_with("body-marker-"),
        "served {:?}",
        got.body
    );
    assert_eq!(calls.get(), before + 1);
    let stats = b_handle.redis_stats().unwrap();
    assert!(
        stats.corrupt >= 1,
        "an undecodable value is counted as corrupt: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_value_of_another_type_under_the_key_is_a_miss() {
    let Some(redis) = RedisServer::start("foreign value") else {
        return;
    };
    let (origin, calls) =
        origin(
            |n, _request| async move { Ok(reply_cc(format!("body-marker-{n}"), "max-age=600")) },
        );
    let (a, a_handle) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let _ = fetch(&a, get("/f")).await;
    until_written(&a_handle, 1).await;
    // Every key is replaced by a list (WRONGTYPE for whatever the tier does with it).
    let mut connection = redis.client().get_connection().unwrap();
    for key in redis.keys() {
        let _: () = redis::cmd("DEL").arg(&key).query(&mut connection).unwrap();
        let _: () = redis::cmd("RPUSH")
            .arg(&key)
            .arg("foreign")
            .query(&mut connection)
            .unwrap();
    }
    let before = calls.get();
    let (b, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let got = tokio::time::timeout(Duration::from_secs(5), fetch(&b, get("/f")))
        .await
        .expect("answered");
    assert_eq!(got.http, StatusCode::OK);
    assert!(got.body.starts_with("body-marker-"));
    assert_eq!(calls.get(), before + 1);
    // A second cold key on the same instance is answered too.
    let got = fetch(&b, get("/f2")).await;
    assert_eq!(got.http, StatusCode::OK);
}

// ---------------------------------------------------------------------------------------------
// 7. Cluster
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_values_are_shared_and_prefix_purges_and_clear_reach_every_node() {
    let Some(cluster) = RedisCluster::start("cluster purges") else {
        return;
    };
    let (origin, _) = counting("max-age=600");
    let (a, a_handle) = instance(cluster.config(), origin.clone(), SwrLayer::new());
    let targets: Vec<String> = (0..24).map(|n| format!("/api/item{n}")).collect();
    for target in &targets {
        let _ = fetch(&a, get(target)).await;
    }
    let _ = fetch(&a, get("/keep")).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // The values spread over the nodes.
    let used: usize = (0..3).filter(|n| cluster.dbsize(*n) > 0).count();
    assert!(used >= 2, "25 keys on one node only?");
    let (b, _) = instance(cluster.config(), origin.clone(), SwrLayer::new());
    for target in &targets {
        let got = fetch(&b, get(target)).await;
        assert_eq!(
            got.status,
            CacheStatus::SharedTier,
            "{target}: {}",
            got.line
        );
    }
    a_handle.purge_prefix("/api/");
    // B's memory copies go (bus), and a new instance reads none of them from any node.
    for target in &targets {
        until(
            "B drops the prefix",
            &b,
            || get(target),
            |g| g.status != CacheStatus::Fresh,
        )
        .await;
    }
    let (c, _) = instance(cluster.config(), origin.clone(), SwrLayer::new());
    // (B refilled them after the purge; those fresh values may be served. What was there
    // before the purge had bodies v1..v25.)
    for target in &targets {
        let got = fetch(&c, get(target)).await;
        let n: usize = got.body[1..].parse().unwrap();
        assert!(
            n > 25,
            "{target}: pre-purge {} served after the prefix purge",
            got.body
        );
    }
    let got = fetch(&c, get("/keep")).await;
    assert_eq!(got.status, CacheStatus::SharedTier);
    a_handle.clear();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (d, _) = instance(cluster.config(), origin.clone(), SwrLayer::new());
    for target in targets.iter().chain([&"/keep".to_string()]) {
        let got = fetch(&d, get(target)).await;
        assert_eq!(
            got.status,
            CacheStatus::Miss,
            "{target} after clear: {}",
            got.line
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_every_redis_key_carries_a_hash_tag() {
    let Some(cluster) = RedisCluster::start("cluster hash tags") else {
        return;
    };
    let (origin, _) = origin(|n, _request| async move {
        Ok(respond(
            200,
            format!("v{n}"),
            &[
                ("cache-control", "max-age=600"),
                ("vary", "accept-language"),
            ],
        ))
    });
    let (a, a_handle) = instance(cluster.config(), origin.clone(), SwrLayer::new());
    for lang in ["en", "fr", "de"] {
        let _ = fetch(&a, get_headers("/v", &[("accept-language", lang)])).await;
    }
    until_written(&a_handle, 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let keys: Vec<String> = (0..3)
        .flat_map(|n| cluster.keys(n))
        .map(|k| String::from_utf8_lossy(&k).into_owned())
        .collect();
    assert!(!keys.is_empty());
    // The keys of the one cache key /v (its variants, locks, fences) live on one node: every
    // key with a hash tag names the same tag.
    let tags: std::collections::BTreeSet<String> = keys
        .iter()
        .filter_map(|k| {
            let open = k.find('{')?;
            let close = k[open + 1..].find('}')?;
            Some(k[open + 1..open + 1 + close].to_owned())
        })
        .collect();
    let nodes_with_keys = (0..3).filter(|n| cluster.dbsize(*n) > 0).count();
    assert!(
        tags.len() <= 2,
        "the keys of one cache key carry one hash tag (plus at most a layer-wide one): {keys:?}"
    );
    let _ = nodes_with_keys;
    let (b, _) = instance(cluster.config(), origin.clone(), SwrLayer::new());
    // (A new instance's first request for a `Vary` URL is a miss: see
    // every_vary_variant_filled_by_one_instance_is_served_by_another. Warm B's index with it.)
    let _ = fetch(&b, get_headers("/v", &[("accept-language", "en")])).await;
    let got = fetch(&b, get_headers("/v", &[("accept-language", "fr")])).await;
    assert_eq!(
        (got.status, got.body.as_str()),
        (CacheStatus::SharedTier, "v2")
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Secrets and never-shared responses
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_and_cookie_secrets_never_reach_redis_in_clear() {
    let Some(redis) = RedisServer::start("secrets") else {
        return;
    };
    let (origin, calls) = counting("public, max-age=1, stale-while-revalidate=600");
    let (a, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let got = fetch(
        &a,
        get_headers("/auth", &[("authorization", "Bearer SECRET-TOKEN-4711")]),
    )
    .await;
    assert_eq!(got.http, StatusCode::OK);
    let got = fetch(
        &a,
        get_headers("/cookie", &[("cookie", "session=COOKIE-SECRET-0815")]),
    )
    .await;
    assert_eq!(got.http, StatusCode::OK);
    // Let them be written, go stale and refresh (with the stored credentials).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = fetch(
        &a,
        get_headers("/auth", &[("authorization", "Bearer SECRET-TOKEN-4711")]),
    )
    .await;
    let _ = fetch(
        &a,
        get_headers("/cookie", &[("cookie", "session=COOKIE-SECRET-0815")]),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(calls.get() >= 2);
    for secret in ["SECRET-TOKEN-4711", "COOKIE-SECRET-0815"] {
        let found = holding(&redis.client(), secret);
        assert!(
            found.is_empty(),
            "{secret} is in Redis in clear under {found:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_to_an_authorized_request_is_not_served_from_redis_to_an_anonymous_one() {
    let Some(redis) = RedisServer::start("authorization not shared") else {
        return;
    };
    let (origin, calls) =
        origin(|n, _request| async move { Ok(reply_cc(format!("personal-{n}"), "max-age=600")) });
    let (a, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let got = fetch(&a, get_headers("/me", &[("authorization", "Bearer alice")])).await;
    assert_eq!(got.body, "personal-1");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (b, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let got = fetch(&b, get("/me")).await;
    assert_eq!(
        got.body, "personal-2",
        "B served alice's answer to an anonymous request ({})",
        got.line
    );
    assert_eq!(calls.get(), 2);
    assert!(
        holding(&redis.client(), "personal-1").is_empty(),
        "alice's answer is in Redis"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_answer_to_an_authorized_request_may_be_shared() {
    let Some(redis) = RedisServer::start("authorization public shared") else {
        return;
    };
    let (origin, calls) = counting("public, max-age=600");
    let (a, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let _ = fetch(
        &a,
        get_headers("/pub", &[("authorization", "Bearer alice")]),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (b, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let got = fetch(&b, get("/pub")).await;
    // RFC 9111 §3.5 allows it; whether the tier shares it or refetches, the answer must be sane.
    assert_eq!(got.http, StatusCode::OK);
    assert!(calls.get() <= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_store_private_and_set_cookie_responses_never_land_in_redis() {
    let Some(redis) = RedisServer::start("never stored") else {
        return;
    };
    let (origin, calls) = origin(|n, request: http::Request<ReqBody>| async move {
        let path = request.uri().path().to_owned();
        let body = format!("MARK{path}-{n}");
        Ok(match path.as_str() {
            "/nostore" => respond(200, body, &[("cache-control", "no-store, max-age=600")]),
            "/private" => respond(200, body, &[("cache-control", "private, max-age=600")]),
            "/cookie" => respond(
                200,
                body,
                &[("cache-control", "max-age=600"), ("set-cookie", "id=1")],
            ),
            _ => respond(200, body, &[("cache-control", "max-age=600")]),
        })
    });
    let (a, a_handle) = instance(redis.config(), origin.clone(), SwrLayer::new());
    for target in ["/nostore", "/private", "/cookie", "/plain"] {
        let _ = fetch(&a, get(target)).await;
    }
    until_written(&a_handle, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for target in ["/nostore", "/private", "/cookie"] {
        let found = holding(&redis.client(), &format!("MARK{target}"));
        assert!(found.is_empty(), "{target} is in Redis under {found:?}");
    }
    let before = calls.get();
    let (b, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    for target in ["/nostore", "/private", "/cookie"] {
        assert_ne!(fetch(&b, get(target)).await.status, CacheStatus::SharedTier);
    }
    assert_eq!(calls.get(), before + 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_not_written_to_redis() {
    let Some(redis) = RedisServer::start("huge body") else {
        return;
    };
    let (origin, calls) = origin(|n, _request| async move {
        let mut body = format!("HUGE-{n}-").into_bytes();
        body.resize(64 * 1024, b'x');
        Ok(reply_cc(Bytes::from(body), "max-age=600"))
    });
    let layer = || SwrLayer::new().max_body_bytes(4096);
    let (a, _) = instance(redis.config(), origin.clone(), layer());
    let got = fetch(&a, get("/huge")).await;
    assert_eq!(got.body.len(), 64 * 1024);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        holding(&redis.client(), "HUGE-1-").is_empty(),
        "the huge body is in Redis"
    );
    let (b, _) = instance(redis.config(), origin.clone(), layer());
    let got = fetch(&b, get("/huge")).await;
    assert_eq!(got.body.len(), 64 * 1024);
    assert_ne!(got.status, CacheStatus::SharedTier);
    assert_eq!(calls.get(), 2);
}

// ---------------------------------------------------------------------------------------------
// General rules across instances: Vary, HEAD, namespaces
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_holds_across_instances() {
    let Some(redis) = RedisServer::start("vary across instances") else {
        return;
    };
    let (origin, calls) = origin(|n, request: http::Request<ReqBody>| async move {
        let lang = request
            .headers()
            .get("accept-language")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_else(|| "none".into());
        Ok(respond(
            200,
            format!("{lang}-{n}"),
            &[
                ("cache-control", "max-age=600"),
                ("vary", "accept-language"),
            ],
        ))
    });
    let (a, a_handle) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let fr = || get_headers("/page", &[("accept-language", "fr")]);
    let en = || get_headers("/page", &[("accept-language", "en")]);
    assert_eq!(fetch(&a, fr()).await.body, "fr-1");
    until_written(&a_handle, 1).await;
    let (b, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let got = fetch(&b, en()).await;
    assert!(
        got.body.starts_with("en-"),
        "B served {:?} to an en request ({})",
        got.body,
        got.line
    );
    let got = fetch(&b, fr()).await;
    assert_eq!(
        (got.status, got.body.as_str()),
        (CacheStatus::SharedTier, "fr-1")
    );
    let got = fetch(&b, get("/page")).await;
    assert!(
        got.body.starts_with("none-"),
        "no Accept-Language got {:?}",
        got.body
    );
    let _ = calls;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_vary_variant_filled_by_one_instance_is_served_by_another() {
    let Some(redis) = RedisServer::start("several variants") else {
        return;
    };
    let (origin, calls) = origin(|n, request: http::Request<ReqBody>| async move {
        let lang = request
            .headers()
            .get("accept-language")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_else(|| "none".into());
        Ok(respond(
            200,
            format!("{lang}-{n}"),
            &[
                ("cache-control", "max-age=600"),
                ("vary", "accept-language"),
            ],
        ))
    });
    let (a, a_handle) = instance(redis.config(), origin.clone(), SwrLayer::new());
    for lang in ["en", "fr", "de"] {
        let _ = fetch(&a, get_headers("/multi", &[("accept-language", lang)])).await;
    }
    until_written(&a_handle, 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (b, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let mut seen = Vec::new();
    for (lang, n) in [("en", 1), ("fr", 2), ("de", 3)] {
        let got = fetch(&b, get_headers("/multi", &[("accept-language", lang)])).await;
        seen.push((lang, got.status, got.body.clone(), format!("{lang}-{n}")));
    }
    assert!(
        seen.iter()
            .all(|(_, status, body, want)| *status == CacheStatus::SharedTier && body == want),
        "each variant A stored must come from Redis on B: {seen:?}"
    );
    assert_eq!(calls.get(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_is_answered_from_redis_and_a_head_miss_never_stores_an_empty_get_body() {
    let Some(redis) = RedisServer::start("head across instances") else {
        return;
    };
    let (origin, calls) = origin(|n, request: http::Request<ReqBody>| async move {
        let body = if request.method() == Method::HEAD {
            String::new()
        } else {
            format!("full-body-{n}")
        };
        Ok(respond(
            200,
            body,
            &[
                ("cache-control", "max-age=600"),
                ("content-type", "text/plain"),
            ],
        ))
    });
    // HEAD on a cold key on A, then GET on B: B must get a full body.
    let (a, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let got = fetch(&a, request(Method::HEAD, "/h")).await;
    assert_eq!((got.http, got.body.as_str()), (StatusCode::OK, ""));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (b, b_handle) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let got = fetch(&b, get("/h")).await;
    assert!(
        got.body.starts_with("full-body-"),
        "GET on B got {:?} ({})",
        got.body,
        got.line
    );
    // GET filled (by B): HEAD on a new instance is answered from Redis, bodiless.
    until_written(&b_handle, 1).await;
    let before = calls.get();
    let (c, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let got = fetch(&c, request(Method::HEAD, "/h")).await;
    assert_eq!(got.http, StatusCode::OK);
    assert_eq!(got.body, "", "a HEAD answer has no body");
    assert_eq!(got.status, CacheStatus::SharedTier, "{}", got.line);
    assert_eq!(calls.get(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_with_different_redis_prefixes_do_not_see_each_other() {
    let Some(redis) = RedisServer::start("prefixes") else {
        return;
    };
    let (origin_one, _) =
        origin(|n, _r| async move { Ok(reply_cc(format!("one-{n}"), "max-age=600")) });
    let (origin_two, _) =
        origin(|n, _r| async move { Ok(reply_cc(format!("two-{n}"), "max-age=600")) });
    let one = || redis.config().prefix("svc-one");
    let two = || redis.config().prefix("svc-two");
    let (a1, a1_handle) = instance(one(), origin_one.clone(), SwrLayer::new());
    let (a2, _) = instance(two(), origin_two.clone(), SwrLayer::new());
    assert_eq!(fetch(&a1, get("/same")).await.body, "one-1");
    assert_eq!(fetch(&a2, get("/same")).await.body, "two-1");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (b1, _) = instance(one(), origin_one.clone(), SwrLayer::new());
    let (b2, _) = instance(two(), origin_two.clone(), SwrLayer::new());
    assert_eq!(fetch(&b1, get("/same")).await.body, "one-1");
    assert_eq!(fetch(&b2, get("/same")).await.body, "two-1");
    // A purge in service one does not touch service two.
    a1_handle.purge("/same");
    until(
        "b1 drops /same",
        &b1,
        || get("/same"),
        |g| g.body != "one-1",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = fetch(&b2, get("/same")).await;
    assert_eq!(
        (got.status, got.body.as_str()),
        (CacheStatus::Fresh, "two-1"),
        "service one's purge reached service two"
    );
    // Service one's clear does not clear service two's Redis values.
    a1_handle.clear();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (c2, _) = instance(two(), origin_two.clone(), SwrLayer::new());
    let got = fetch(&c2, get("/same")).await;
    assert_eq!(
        (got.status, got.body.as_str()),
        (CacheStatus::SharedTier, "two-1"),
        "service one's clear reached service two's Redis values"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_on_one_redis_with_different_cache_settings_do_not_mix_key_functions() {
    let Some(redis) = RedisServer::start("key_fn isolation") else {
        return;
    };
    // Per-user caching: the user in the key, private allowed.
    let (origin, _) = origin(|n, request: http::Request<ReqBody>| async move {
        let user = request
            .headers()
            .get("x-user")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Ok(reply_cc(format!("{user}-{n}"), "private, max-age=600"))
    });
    let layer = || {
        SwrLayer::new().allow_private(true).key_fn(|request| {
            request
                .headers
                .get("x-user")
                .map(|v| v.to_str().unwrap_or("").to_owned())
        })
    };
    let (a, _) = instance(redis.config(), origin.clone(), layer());
    assert_eq!(
        fetch(&a, get_headers("/inbox", &[("x-user", "alice")]))
            .await
            .body,
        "alice-1"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (b, _) = instance(redis.config(), origin.clone(), layer());
    let got = fetch(&b, get_headers("/inbox", &[("x-user", "bob")])).await;
    assert!(
        got.body.starts_with("bob-"),
        "bob got {:?} ({})",
        got.body,
        got.line
    );
}

// ---------------------------------------------------------------------------------------------
// More races: invalidations against loads under way on another instance
// ---------------------------------------------------------------------------------------------

/// An origin whose first call for `gated_path` waits for the returned gate; answers `v<n>` with
/// `cache_control` and `Surrogate-Key: t1`. Returns the origin, all calls, and the gated path's calls.
fn gated_origin(
    gated_path: &'static str,
    cache_control: &'static str,
    first: usize,
) -> (impl OriginService, Calls, Calls, Gate) {
    let gate = Gate::new();
    let path_calls = Calls::default();
    let (service, calls) = origin({
        let gate = gate.clone();
        let path_calls = path_calls.clone();
        move |n, request: http::Request<ReqBody>| {
            let gate = gate.clone();
            let gated = request.uri().path() == gated_path
                && request.method() == Method::GET
                && path_calls.record() == first;
            async move {
                if gated {
                    gate.wait().await;
                }
                Ok(respond(
                    200,
                    format!("v{n}"),
                    &[("cache-control", cache_control), ("surrogate-key", "t1")],
                ))
            }
        }
    });
    (service, calls, path_calls, gate)
}

/// Brings both instances' bus subscriptions up (a request each, then a moment).
async fn connect_both<S: OriginService>(a: &SwrService<S>, b: &SwrService<S>) {
    let _ = fetch(a, get("/warm")).await;
    let _ = fetch(b, get("/warm")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_under_way_during_a_purge_on_another_instance_does_not_reach_redis() {
    let Some(redis) = RedisServer::start("purge races refresh") else {
        return;
    };
    // /rr: the first fill is quick, the refresh (second call) waits for the gate.
    let (origin, _, path_calls, gate) =
        gated_origin("/rr", "max-age=1, stale-while-revalidate=600", 2);
    let (a, a_handle) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let (b, b_handle) = instance(redis.config(), origin.clone(), SwrLayer::new());
    connect_both(&a, &b).await;
    let _ = fetch(&a, get("/rr")).await;
    until_written(&a_handle, 2).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Stale: A serves it and starts the (held) refresh.
    let got = fetch(&a, get("/rr")).await;
    assert_eq!(got.status, CacheStatus::Stale);
    eventually("A's refresh call", || path_calls.get() == 2).await;
    b_handle.purge("/rr");
    tokio::time::sleep(Duration::from_millis(500)).await;
    gate.open();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (c, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let got = fetch(&c, get("/rr")).await;
    assert_ne!(
        got.status,
        CacheStatus::SharedTier,
        "a refresh that began before the purge wrote its value to Redis: {} {}",
        got.body,
        got.line
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_on_one_instance_during_a_load_on_another_keeps_the_load_out_of_redis() {
    let Some(redis) = RedisServer::start("post races load") else {
        return;
    };
    let got = race_load_against(&redis, Invalidation::Post).await;
    assert_ne!(
        got.status,
        CacheStatus::SharedTier,
        "a load that began before the POST's invalidation was served from Redis: {} {}",
        got.body,
        got.line
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_purge_during_a_load_on_another_instance_keeps_the_load_out_of_redis() {
    let Some(redis) = RedisServer::start("tag purge races load") else {
        return;
    };
    let (origin, _, path_calls, gate) = gated_origin("/tagged", "max-age=600", 1);
    let (a, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let (b, b_handle) = instance(redis.config(), origin.clone(), SwrLayer::new());
    connect_both(&a, &b).await;
    let a_task = tokio::spawn({
        let a = a.clone();
        async move { fetch(&a, get("/tagged")).await }
    });
    eventually("A's load", || path_calls.get() == 1).await;
    assert_eq!(b_handle.purge_tag(["t1"]), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    gate.open();
    let before_purge = a_task.await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    // A itself does not serve it as fresh (the in-process rule)...
    let got = fetch(&a, get("/tagged")).await;
    assert_ne!(
        got.status,
        CacheStatus::Fresh,
        "A kept the pre-purge load: {}",
        got.line
    );
    // ...and a new instance does not get it from Redis (A's own reload after the purge,
    // just above, may be there: it is newer content).
    let (c, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let got = fetch(&c, get("/tagged")).await;
    assert!(
        !(got.status == CacheStatus::SharedTier && got.body == before_purge.body),
        "a load that began before the tag purge was served from Redis: {} {}",
        got.body,
        got.line
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_purge_also_holds_for_an_instance_reading_redis_later() {
    let Some(redis) = RedisServer::start("soft purge in redis") else {
        return;
    };
    let (origin, _) = counting("max-age=600, stale-while-revalidate=600");
    let (a, a_handle) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let _ = fetch(&a, get("/sp")).await;
    until_written(&a_handle, 1).await;
    a_handle.soft_purge("/sp");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (c, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let got = fetch(&c, get("/sp")).await;
    assert!(
        !(got.status == CacheStatus::SharedTier && got.body == "v1"),
        "the soft-purged v1 was served from Redis as fresh to a new instance: {}",
        got.line
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_everywhere_finds_an_entry_only_another_instance_stored() {
    let Some(redis) = RedisServer::start("purge everywhere") else {
        return;
    };
    let (origin, _) = counting("max-age=600");
    let (a, a_handle) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let (b, b_handle) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let host = || get_headers("/pe", &[("host", "example.com")]);
    let _ = fetch(&b, get("/warm")).await;
    let stored = fetch(&a, host()).await.body;
    until_written(&a_handle, 1).await;
    assert!(
        b_handle.purge_everywhere("example.com", "/pe", false).await,
        "B's purge_everywhere must find the value A stored in Redis"
    );
    assert!(
        !b_handle
            .purge_everywhere("example.com", "/never", false)
            .await,
        "nothing was stored for /never"
    );
    let got = until("A drops /pe", &a, host, |g| g.body != stored).await;
    assert_eq!(got.status, CacheStatus::Miss);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_request_answer_without_public_is_not_shared_with_another_instance() {
    let Some(redis) = RedisServer::start("cookie not shared") else {
        return;
    };
    let (origin, calls) = origin(|n, _request| async move {
        Ok(reply_cc(format!("cookie-personal-{n}"), "max-age=600"))
    });
    let (a, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let _ = fetch(&a, get_headers("/c", &[("cookie", "session=alice")])).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        holding(&redis.client(), "cookie-personal-1").is_empty(),
        "alice's answer is in Redis"
    );
    let (b, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let got = fetch(&b, get("/c")).await;
    assert_eq!(got.body, "cookie-personal-2", "{}", got.line);
    assert_eq!(calls.get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_credential_header_never_reaches_redis_in_clear() {
    let Some(redis) = RedisServer::start("x-api-key secret") else {
        return;
    };
    let (origin, _) = counting("public, max-age=1, stale-while-revalidate=600");
    let layer = || SwrLayer::new().credential_headers(["x-api-key"]);
    let (a, _) = instance(redis.config(), origin.clone(), layer());
    let key = || get_headers("/k", &[("x-api-key", "APIKEY-SECRET-9999")]);
    assert_eq!(fetch(&a, key()).await.http, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = fetch(&a, key()).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let found = holding(&redis.client(), "APIKEY-SECRET-9999");
    assert!(
        found.is_empty(),
        "the x-api-key value is in Redis in clear under {found:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_made_while_redis_is_frozen_still_takes_effect_once_it_returns() {
    let Some(redis) = RedisServer::start("purge during outage") else {
        return;
    };
    let (origin, _) = counting("max-age=600");
    let ((_, a_handle), (b, _)) = both_hold(&redis, &origin, "/out").await;
    redis.signal("-STOP");
    a_handle.purge("/out");
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.signal("-CONT");
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Within a bounded time, neither Redis nor B's memory serves the purged v1.
    let (c, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let from_redis = fetch(&c, get("/out")).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(7);
    let mut from_b = fetch(&b, get("/out")).await;
    while from_b.body == "v1" && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        from_b = fetch(&b, get("/out")).await;
    }
    assert!(
        from_redis.body != "v1" && from_b.body != "v1",
        "a purge made while Redis was frozen was lost: new instance got {} ({}), B got {} ({}) 10 s later",
        from_redis.body,
        from_redis.line,
        from_b.body,
        from_b.line
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_purge_keeps_redis_copies_from_a_new_instance() {
    let Some(redis) = RedisServer::start("tag purge and redis") else {
        return;
    };
    let (origin, _) = origin(|n, request: http::Request<ReqBody>| async move {
        let tag = request.uri().path().trim_start_matches('/').to_owned();
        Ok(respond(
            200,
            format!("v{n}"),
            &[
                ("cache-control", "max-age=600, stale-while-revalidate=600"),
                ("cache-tag", &tag),
            ],
        ))
    });
    let (a, a_handle) = instance(redis.config(), origin.clone(), SwrLayer::new());
    for target in ["/hard", "/soft", "/untouched"] {
        let _ = fetch(&a, get(target)).await;
    }
    until_written(&a_handle, 3).await;
    assert_eq!(a_handle.purge_tag(["hard"]), 1);
    assert_eq!(a_handle.soft_purge_tag(["soft"]), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (c, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let hard = fetch(&c, get("/hard")).await;
    let soft = fetch(&c, get("/soft")).await;
    let untouched = fetch(&c, get("/untouched")).await;
    assert_eq!(
        untouched.status,
        CacheStatus::SharedTier,
        "{}",
        untouched.line
    );
    assert_eq!(
        hard.status,
        CacheStatus::Miss,
        "purged by tag, served from Redis: {} {}",
        hard.body,
        hard.line
    );
    assert!(
        !(soft.status == CacheStatus::SharedTier && soft.body == "v2"),
        "soft-purged by tag, served from Redis as fresh: {}",
        soft.line
    );
}

// ---------------------------------------------------------------------------------------------
// HTTP rules that must hold for answers read from Redis too
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_cache_entry_read_from_redis_is_revalidated_with_the_origin() {
    let Some(redis) = RedisServer::start("no-cache from redis") else {
        return;
    };
    let seen = Seen::default();
    let (origin, calls) = origin({
        let seen = seen.clone();
        move |n, request: http::Request<ReqBody>| {
            seen.record(&request);
            async move {
                Ok(respond(
                    200,
                    format!("v{n}"),
                    &[
                        ("cache-control", "no-cache, max-age=600"),
                        ("etag", "\"e1\""),
                    ],
                ))
            }
        }
    });
    let (a, a_handle) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let _ = fetch(&a, get("/nc")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = a_handle;
    let before = calls.get();
    let (b, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let got = fetch(&b, get("/nc")).await;
    assert_eq!(got.http, StatusCode::OK);
    assert_eq!(
        calls.get(),
        before + 1,
        "a no-cache entry must be revalidated before reuse, also when it comes from Redis ({})",
        got.line
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_must_revalidate_entry_in_redis_is_not_served_stale() {
    let Some(redis) = RedisServer::start("must-revalidate from redis") else {
        return;
    };
    let (origin, calls) = counting("max-age=1, must-revalidate");
    let (a, a_handle) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let _ = fetch(&a, get("/mr")).await;
    until_written(&a_handle, 1).await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (b, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let got = fetch(&b, get("/mr")).await;
    assert_eq!(
        got.body, "v2",
        "a stale must-revalidate entry was served: {}",
        got.line
    );
    assert!(!matches!(
        got.status,
        CacheStatus::Stale | CacheStatus::SharedTier
    ));
    assert_eq!(calls.get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_in_redis_past_its_stale_window_is_not_served() {
    let Some(redis) = RedisServer::start("past window from redis") else {
        return;
    };
    let (origin, calls) = counting("max-age=1, stale-while-revalidate=1");
    let (a, a_handle) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let _ = fetch(&a, get("/pw")).await;
    until_written(&a_handle, 1).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (b, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let got = fetch(&b, get("/pw")).await;
    assert_eq!(
        (got.status, got.body.as_str()),
        (CacheStatus::Miss, "v2"),
        "{}",
        got.line
    );
    assert_eq!(calls.get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_star_and_server_errors_never_land_in_redis() {
    let Some(redis) = RedisServer::start("vary star 5xx") else {
        return;
    };
    let (origin, _) = origin(|n, request: http::Request<ReqBody>| async move {
        let path = request.uri().path().to_owned();
        let body = format!("MARK{path}-{n}");
        Ok(match path.as_str() {
            "/star" => respond(
                200,
                body,
                &[("cache-control", "max-age=600"), ("vary", "*")],
            ),
            _ => respond(503, body, &[]),
        })
    });
    let (a, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let _ = fetch(&a, get("/star")).await;
    let _ = fetch(&a, get("/err")).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    for marker in ["MARK/star", "MARK/err"] {
        let found = holding(&redis.client(), marker);
        assert!(found.is_empty(), "{marker} is in Redis under {found:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_answered_with_set_cookie_is_not_written_to_redis() {
    let Some(redis) = RedisServer::start("refresh with set-cookie") else {
        return;
    };
    let (origin, calls) = origin(|n, _request| async move {
        let cc = "max-age=1, stale-while-revalidate=600";
        Ok(if n == 1 {
            respond(200, format!("plain-{n}"), &[("cache-control", cc)])
        } else {
            respond(
                200,
                format!("SETCOOKIE-{n}"),
                &[("cache-control", cc), ("set-cookie", "session=zzz")],
            )
        })
    });
    let (a, a_handle) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let _ = fetch(&a, get("/sc")).await;
    until_written(&a_handle, 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(fetch(&a, get("/sc")).await.status, CacheStatus::Stale);
    eventually("the refresh", || calls.get() >= 2).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let found = holding(&redis.client(), "SETCOOKIE-");
    assert!(
        found.is_empty(),
        "a Set-Cookie response reached Redis under {found:?}"
    );
    let found = holding(&redis.client(), "session=zzz");
    assert!(
        found.is_empty(),
        "the Set-Cookie value reached Redis under {found:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_headers_and_a_large_binary_body_survive_the_trip_through_redis() {
    let Some(redis) = RedisServer::start("round trip") else {
        return;
    };
    let payload = patterned_bytes(1024 * 1024 + 7);
    let (origin, _) = origin({
        let payload = payload.clone();
        move |_n, request: http::Request<ReqBody>| {
            let payload = payload.clone();
            async move {
                Ok(match request.uri().path() {
                    "/big" => {
                        let mut r = respond(
                            200,
                            payload,
                            &[
                                ("cache-control", "max-age=600"),
                                ("content-type", "application/octet-stream"),
                                ("link", "</a.css>; rel=preload"),
                                ("link", "</b.js>; rel=preload"),
                                ("x-custom", "kept"),
                            ],
                        );
                        r.headers_mut()
                            .insert("x-bin", http::HeaderValue::from_bytes(b"caf\xe9").unwrap());
                        r
                    }
                    "/gone" => respond(404, "not here", &[("cache-control", "max-age=600")]),
                    _ => respond(
                        301,
                        "",
                        &[("cache-control", "max-age=600"), ("location", "/new-place")],
                    ),
                })
            }
        }
    });
    let (a, a_handle) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let from_a = send_whole(&a, get("/big")).await;
    let _ = send_whole(&a, get("/gone")).await;
    let _ = send_whole(&a, get("/moved")).await;
    until_written(&a_handle, 3).await;
    let (b, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let from_b = send_whole(&b, get("/big")).await;
    assert_eq!(from_b.info.status, CacheStatus::SharedTier);
    assert!(
        from_b.body == payload,
        "the body changed on its way through Redis"
    );
    for name in ["content-type", "link", "x-custom", "x-bin"] {
        let a_values: Vec<_> = from_a.headers.get_all(name).iter().cloned().collect();
        let b_values: Vec<_> = from_b.headers.get_all(name).iter().cloned().collect();
        assert_eq!(a_values, b_values, "header {name}");
    }
    let gone = send_whole(&b, get("/gone")).await;
    assert_eq!(
        (gone.status, gone.info.status),
        (StatusCode::NOT_FOUND, CacheStatus::SharedTier)
    );
    assert_eq!(&gone.body[..], b"not here");
    let moved = send_whole(&b, get("/moved")).await;
    assert_eq!(
        (moved.status, moved.info.status),
        (StatusCode::MOVED_PERMANENTLY, CacheStatus::SharedTier)
    );
    assert_eq!(moved.headers.get("location").unwrap(), "/new-place");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_with_different_cache_names_on_one_redis_prefix_do_not_share_entries_or_purges() {
    let Some(redis) = RedisServer::start("cache names") else {
        return;
    };
    let (origin, _) = counting("max-age=600");
    let (alpha, alpha_handle) = instance(
        redis.config(),
        origin.clone(),
        SwrLayer::new().cache_name("alpha"),
    );
    let (beta, _) = instance(
        redis.config(),
        origin.clone(),
        SwrLayer::new().cache_name("beta"),
    );
    let from_alpha = fetch(&alpha, get("/n")).await.body;
    until_written(&alpha_handle, 1).await;
    let got = fetch(&beta, get("/n")).await;
    assert_eq!(
        got.status,
        CacheStatus::Miss,
        "beta read alpha's entry: {}",
        got.line
    );
    assert_ne!(got.body, from_alpha);
    let from_beta = got.body;
    tokio::time::sleep(Duration::from_millis(300)).await;
    alpha_handle.purge("/n");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = fetch(&beta, get("/n")).await;
    assert_eq!(
        (got.status, got.body),
        (CacheStatus::Fresh, from_beta),
        "alpha's purge reached beta"
    );
}

// ---------------------------------------------------------------------------------------------
// Observability, a failed winner, and a Redis that refuses us
// ---------------------------------------------------------------------------------------------

#[cfg(feature = "metrics")]
/// The process's metrics recorder (installed once, globally: the tier may register its counters
/// lazily on a runtime thread).
fn snapshotter() -> &'static metrics_util::debugging::Snapshotter {
    static SNAPSHOTTER: std::sync::OnceLock<metrics_util::debugging::Snapshotter> =
        std::sync::OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("the only recorder of this binary");
        snapshotter
    })
}

#[cfg(feature = "metrics")]
/// Counter values by `name{label=value,...}` (sorted labels), for keys whose labels contain `cache=<cache>`
/// or that have no `cache` label.
fn counters(cache: &str) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for (key, _, _, value) in snapshotter().snapshot().into_vec() {
        let key = key.key();
        let labels: Vec<(String, String)> = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        if labels.iter().any(|(k, v)| k == "cache" && v != cache) {
            continue;
        }
        if let metrics_util::debugging::DebugValue::Counter(n) = value {
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            *out.entry(format!("{}{{{}}}", key.name(), labels.join(",")))
                .or_default() += n;
        }
    }
    out
}

#[cfg(feature = "metrics")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_shared_tier_answers_and_redis_hits_and_misses() {
    let Some(redis) = RedisServer::start("metrics") else {
        return;
    };
    let _ = snapshotter();
    let (origin, _) = counting("max-age=600");
    let layer = || SwrLayer::new().cache_name("metered-redis");
    let (a, a_handle) = instance(redis.config(), origin.clone(), layer());
    let _ = fetch(&a, get("/m")).await;
    until_written(&a_handle, 1).await;
    let (b, _) = instance(redis.config(), origin.clone(), layer());
    assert_eq!(fetch(&b, get("/m")).await.status, CacheStatus::SharedTier);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let found = counters("metered-redis");
    let total = |prefix: &str| -> u64 {
        found
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| *v)
            .sum()
    };
    assert!(
        found
            .iter()
            .any(|(k, v)| k.starts_with("swr_requests_total")
                && k.contains("status=shared_tier")
                && *v >= 1),
        "swr_requests_total{{status=shared_tier}} counted: {found:?}"
    );
    assert!(
        total("swr_redis_hits_total") >= 1,
        "L2 hits on the metrics facade: {found:?}"
    );
    assert!(
        total("swr_redis_misses_total") >= 1,
        "L2 misses on the metrics facade: {found:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_winner_fails_a_waiting_instance_loads_at_once_not_after_the_lock_timeout() {
    let Some(redis) = RedisServer::start("winner fails") else {
        return;
    };
    // Call 1 (A, the winner) fails after 500 ms with a 503 (not stored); the others answer.
    let (origin, calls) = origin(|n, _request| async move {
        if n == 1 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            return Ok(respond(503, "down", &[]));
        }
        Ok(reply_cc(format!("v{n}"), "max-age=600"))
    });
    let layer = || SwrLayer::new().lock_timeout(Duration::from_secs(8));
    let (a, _) = instance(redis.config(), origin.clone(), layer());
    let (b, _) = instance(redis.config(), origin.clone(), layer());
    let a_task = tokio::spawn({
        let a = a.clone();
        async move { fetch(&a, get("/w")).await }
    });
    eventually("A's origin call", || calls.get() == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let got = fetch(&b, get("/w")).await;
    let took = started.elapsed();
    assert_eq!(a_task.await.unwrap().http, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!((got.http, got.body.as_str()), (StatusCode::OK, "v2"));
    assert!(
        took < Duration::from_secs(3),
        "B waited {took:?} for a winner that failed after 0.5 s (lock_timeout 8 s)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_losing_instance_answer_from_the_winners_value_says_shared_in_cache_status() {
    let Some(redis) = RedisServer::start("waiter cache-status") else {
        return;
    };
    let (origin, calls) = slow_origin(Duration::from_millis(600), "max-age=600");
    let (a, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let (b, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let a_task = tokio::spawn({
        let a = a.clone();
        async move { fetch(&a, get("/wait")).await }
    });
    eventually("A's origin call", || calls.get() == 1).await;
    let got = fetch(&b, get("/wait")).await;
    let from_a = a_task.await.unwrap();
    assert_eq!(calls.get(), 1);
    assert_eq!(from_a.status, CacheStatus::Miss);
    assert_eq!(got.body, "v1");
    assert!(
        got.line.contains("detail=shared"),
        "B's answer came from the shared tier; Cache-Status must say so: {} ({:?})",
        got.line,
        got.status
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_refuses_us_with_noauth_fails_no_request() {
    let Some(redis) = RedisServer::start("requirepass") else {
        return;
    };
    redis_cmd(&redis, &["CONFIG", "SET", "requirepass", "s3cret"]).unwrap();
    let (origin, calls) = counting("max-age=600");
    let (a, a_handle) = instance(redis.config(), origin.clone(), SwrLayer::new());
    for n in 0..4 {
        let started = std::time::Instant::now();
        let got = tokio::time::timeout(Duration::from_secs(5), fetch(&a, get(&format!("/na{n}"))))
            .await
            .expect("answered");
        assert_eq!(got.http, StatusCode::OK);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(
            fetch(&a, get(&format!("/na{n}"))).await.status,
            CacheStatus::Fresh
        );
    }
    assert_eq!(calls.get(), 4);
    assert_eq!(a_handle.redis_stats().unwrap().writes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_prefix_purge_reaches_the_other_instance() {
    let Some(redis) = RedisServer::start("soft prefix purge bus") else {
        return;
    };
    let (origin, _) = counting("max-age=600, stale-while-revalidate=600");
    let ((_, a_handle), (b, _)) = both_hold(&redis, &origin, "/cat/1").await;
    a_handle.soft_purge_prefix("/cat/");
    serves_soft_purged(&b, "/cat/1", "B sees the soft prefix purge").await;
}

/// How instance B invalidates `/raced` while A's load of it is held.
enum Invalidation {
    /// Through B's handle (a purge of some kind).
    Handle(Box<dyn FnOnce(&SwrHandle)>),
    /// A successful `POST /raced` through B (RFC 9111 §4.4).
    Post,
}

/// A load of `/raced` begins on A (held), B invalidates it, the load ends; then a new instance
/// asks for `/raced`. Returns its answer.
async fn race_load_against(redis: &RedisServer, invalidation: Invalidation) -> Got {
    let (origin, _, path_calls, gate) = gated_origin("/raced", "max-age=600", 1);
    let (a, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let (b, b_handle) = instance(redis.config(), origin.clone(), SwrLayer::new());
    connect_both(&a, &b).await;
    let a_task = tokio::spawn({
        let a = a.clone();
        async move { fetch(&a, get("/raced")).await }
    });
    eventually("A's load", || path_calls.get() == 1).await;
    match invalidation {
        Invalidation::Handle(invalidate) => invalidate(&b_handle),
        Invalidation::Post => {
            let posted = fetch(&b, request(Method::POST, "/raced")).await;
            assert_eq!(posted.http, StatusCode::OK);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    gate.open();
    let _ = a_task.await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (c, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    fetch(&c, get("/raced")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_purge_during_a_load_on_another_instance_keeps_the_load_out_of_redis() {
    let Some(redis) = RedisServer::start("prefix purge races load") else {
        return;
    };
    let got = race_load_against(
        &redis,
        Invalidation::Handle(Box::new(|b| {
            b.purge_prefix("/rac");
        })),
    )
    .await;
    assert_ne!(
        got.status,
        CacheStatus::SharedTier,
        "pre-purge load served from Redis: {} {}",
        got.body,
        got.line
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clear_during_a_load_on_another_instance_keeps_the_load_out_of_redis() {
    let Some(redis) = RedisServer::start("clear races load") else {
        return;
    };
    let got = race_load_against(&redis, Invalidation::Handle(Box::new(|b| b.clear()))).await;
    assert_ne!(
        got.status,
        CacheStatus::SharedTier,
        "pre-clear load served from Redis: {} {}",
        got.body,
        got.line
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_tag_purge_during_a_load_on_another_instance_leaves_the_load_stale_in_redis() {
    let Some(redis) = RedisServer::start("soft tag purge races load") else {
        return;
    };
    let got = race_load_against(
        &redis,
        Invalidation::Handle(Box::new(|b| {
            b.soft_purge_tag(["t1"]);
        })),
    )
    .await;
    assert_ne!(
        got.status,
        CacheStatus::SharedTier,
        "a load that began before the soft tag purge was served from Redis as fresh: {} {}",
        got.body,
        got.line
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_copied_from_redis_keeps_the_original_age_and_expiry() {
    let Some(redis) = RedisServer::start("expiry across instances") else {
        return;
    };
    let (origin, calls) = counting("max-age=4, stale-while-revalidate=600");
    let (a, a_handle) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let stored_at = std::time::Instant::now();
    let _ = fetch(&a, get("/exp")).await;
    until_written(&a_handle, 1).await;
    tokio::time::sleep(Duration::from_millis(2000).saturating_sub(stored_at.elapsed())).await;
    let (b, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let got = fetch(&b, get("/exp")).await;
    assert_eq!(got.status, CacheStatus::SharedTier);
    let age = got.age.expect("Age");
    assert!((1..=3).contains(&age), "2 s after the fill, Age {age}");
    let ttl = ttl_of(&got.line);
    assert!(
        (1..=2).contains(&ttl),
        "2 s into a 4 s lifetime, ttl {ttl}: {}",
        got.line
    );
    // B's memory copy keeps aging from the origin's time...
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let got = fetch(&b, get("/exp")).await;
    assert_eq!(got.status, CacheStatus::Fresh);
    assert!(
        got.age.unwrap() >= 2,
        "B's memory copy restarted its Age: {:?}",
        got.age
    );
    // ...and goes stale when A's does (4 s after the fill), not 4 s after B copied it.
    tokio::time::sleep(Duration::from_millis(5000).saturating_sub(stored_at.elapsed())).await;
    let got = fetch(&b, get("/exp")).await;
    assert_ne!(
        got.status,
        CacheStatus::Fresh,
        "B's copy outlived the entry's lifetime: {}",
        got.line
    );
    let _ = calls;
}

fn ttl_of(line: &str) -> i64 {
    line.split("; ")
        .find_map(|p| p.strip_prefix("ttl="))
        .unwrap_or_else(|| panic!("no ttl in {line}"))
        .parse()
        .expect("integer ttl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_tag_purges_and_key_purges_reach_redis_copies_on_every_node() {
    let Some(cluster) = RedisCluster::start("cluster tag purge") else {
        return;
    };
    let (origin, _) = origin(|n, request: http::Request<ReqBody>| async move {
        let tag = if request.uri().path().starts_with("/t/") {
            "group"
        } else {
            "solo"
        };
        Ok(respond(
            200,
            format!("v{n}"),
            &[("cache-control", "max-age=600"), ("xkey", tag)],
        ))
    });
    let (a, a_handle) = instance(cluster.config(), origin.clone(), SwrLayer::new());
    let targets: Vec<String> = (0..12).map(|n| format!("/t/{n}")).collect();
    for target in &targets {
        let _ = fetch(&a, get(target)).await;
    }
    let _ = fetch(&a, get("/single")).await;
    until_written(&a_handle, 13).await;
    a_handle.purge_tag(["group"]);
    a_handle.purge("/single");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (c, _) = instance(cluster.config(), origin.clone(), SwrLayer::new());
    for target in targets.iter().chain([&"/single".to_string()]) {
        let got = fetch(&c, get(target)).await;
        assert_eq!(
            got.status,
            CacheStatus::Miss,
            "{target}: purged, served from Redis: {}",
            got.line
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_removes_every_vary_variant_from_redis_and_the_other_instance() {
    let Some(redis) = RedisServer::start("purge variants") else {
        return;
    };
    let (origin, _) = origin(|n, request: http::Request<ReqBody>| async move {
        let lang = request
            .headers()
            .get("accept-language")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_else(|| "none".into());
        Ok(respond(
            200,
            format!("{lang}-{n}"),
            &[
                ("cache-control", "max-age=600"),
                ("vary", "accept-language"),
            ],
        ))
    });
    let lang = |l: &str| get_headers("/pv", &[("accept-language", l)]);
    let (a, a_handle) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let _ = fetch(&a, lang("en")).await;
    let _ = fetch(&a, lang("fr")).await;
    until_written(&a_handle, 2).await;
    let (b, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    // (B's first request for a Vary URL misses, see every_vary_variant_...: use a third variant.)
    let _ = fetch(&b, lang("de")).await;
    let fr_on_b = fetch(&b, lang("fr")).await;
    assert_eq!(
        (fr_on_b.status, fr_on_b.body.as_str()),
        (CacheStatus::SharedTier, "fr-2")
    );
    a_handle.purge("/pv");
    until("B drops fr", &b, || lang("fr"), |g| g.body != "fr-2").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (c, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    let _ = fetch(&c, lang("xx")).await;
    for (l, old) in [("en", "en-1"), ("fr", "fr-2")] {
        let got = fetch(&c, lang(l)).await;
        assert_ne!(
            got.body, old,
            "variant {l} survived the purge in Redis: {}",
            got.line
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_with_location_invalidates_that_url_on_the_other_instance() {
    let Some(redis) = RedisServer::start("post location") else {
        return;
    };
    let (origin, _) = origin(|n, request: http::Request<ReqBody>| async move {
        if request.method() == Method::POST {
            return Ok(respond(201, "created", &[("location", "/items/7")]));
        }
        Ok(reply_cc(format!("v{n}"), "max-age=600"))
    });
    let ((a, _), (b, _)) = both_hold(&redis, &origin, "/items/7").await;
    let posted = fetch(&a, request(Method::POST, "/items")).await;
    assert_eq!(posted.http, StatusCode::CREATED);
    let got = until(
        "B drops /items/7",
        &b,
        || get("/items/7"),
        |g| g.body != "v1",
    )
    .await;
    assert_ne!(got.status, CacheStatus::Fresh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_user_entry_is_never_served_by_an_instance_configured_without_the_key_function() {
    let Some(redis) = RedisServer::start("mixed configurations") else {
        return;
    };
    let (origin, _) = origin(|n, request: http::Request<ReqBody>| async move {
        let user = request
            .headers()
            .get("x-user")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_else(|| "anonymous".into());
        Ok(reply_cc(
            format!("inbox-of-{user}-{n}"),
            "private, max-age=600",
        ))
    });
    let per_user = SwrLayer::new().allow_private(true).key_fn(|request| {
        request
            .headers
            .get("x-user")
            .map(|v| v.to_str().unwrap_or("").to_owned())
    });
    let (a, a_handle) = instance(redis.config(), origin.clone(), per_user);
    assert_eq!(
        fetch(&a, get_headers("/inbox", &[("x-user", "alice")]))
            .await
            .body,
        "inbox-of-alice-1"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = a_handle;
    // Another deployment (no key function, defaults) on the same Redis.
    let (b, _) = instance(redis.config(), origin.clone(), SwrLayer::new());
    for request in [get("/inbox"), get_headers("/inbox", &[("x-user", "bob")])] {
        let got = fetch(&b, request).await;
        assert!(
            !got.body.contains("alice"),
            "alice's private inbox reached another configuration: {} ({})",
            got.body,
            got.line
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_converted_head_miss_stores_the_full_get_response_for_other_instances() {
    let Some(redis) = RedisServer::start("convert_head across instances") else {
        return;
    };
    let (origin, calls) = origin(|n, request: http::Request<ReqBody>| async move {
        let body = if request.method() == Method::HEAD {
            String::new()
        } else {
            format!("full-{n}")
        };
        Ok(reply_cc(body, "max-age=600"))
    });
    let layer = || SwrLayer::new().convert_head(true);
    let (a, a_handle) = instance(redis.config(), origin.clone(), layer());
    let got = fetch(&a, request(Method::HEAD, "/ch")).await;
    assert_eq!((got.http, got.body.as_str()), (StatusCode::OK, ""));
    until_written(&a_handle, 1).await;
    let (b, _) = instance(redis.config(), origin.clone(), layer());
    let got = fetch(&b, get("/ch")).await;
    assert_eq!(
        (got.status, got.body.as_str()),
        (CacheStatus::SharedTier, "full-1"),
        "{}",
        got.line
    );
    assert_eq!(calls.get(), 1);
}
