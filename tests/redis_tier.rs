//! The Redis tier (feature `redis`) against a real `redis-server` that each test starts on a
//! free loopback port. Where `redis-server` is not installed, each test prints why and passes
//! without running (CI installs it, so there they always run).
//!
//! Several layers in one process on one Redis stand for several instances: each has its own
//! memory, its own connection and bus subscription, and shares only Redis.
#![cfg(feature = "redis")]

mod common;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::redis_server::RedisServer;
use common::*;
use http::{Method, StatusCode};
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_swr::redis::{BreakerState, RedisConfig};
use tower_swr::{CacheStatus, SwrLayer};

/// Three instances: three layers of their own on one Redis, around one origin.
fn three_instances<S: OriginService>(
    redis: &RedisServer,
    origin: S,
    layer: impl Fn() -> SwrLayer,
) -> Vec<(tower_swr::SwrService<S>, tower_swr::SwrHandle)> {
    (0..3)
        .map(|_| {
            let layer = layer().redis(redis.config());
            let handle = layer.handle();
            (layer.layer(origin.clone()), handle)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_loaded_by_one_instance_is_answered_by_the_others_without_the_origin() -> TestResult
{
    let Some(redis) = RedisServer::start("shared fill") else {
        return Ok(());
    };
    let (origin, calls) = slow_origin(Duration::ZERO, "max-age=60");
    let instances = three_instances(&redis, origin, SwrLayer::new);
    let (status, body) = call(&instances[0].0, get("/item")).await?;
    assert_eq!((status, &body[..]), (CacheStatus::Miss, &b"v1"[..]));
    // The write to Redis is detached: the others see it a moment later.
    for (service, _) in &instances[1..] {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let response = service.clone().oneshot(get("/item")).await?;
            let from_tier = info(&response).status == CacheStatus::SharedTier;
            let line = cache_status(&response);
            let text = common::body(response).await?;
            assert_eq!(
                &text[..],
                b"v1",
                "only the first instance's value is ever served"
            );
            if from_tier {
                assert!(
                    line.contains("hit"),
                    "a shared-tier answer is a hit: {line}"
                );
                assert!(
                    line.contains("detail=shared"),
                    "and says where it came from: {line}"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the other instance never found the value"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert_eq!(calls.get(), 1, "one origin call for three instances");
    let stats = instances[1].1.redis_stats().expect("a Redis tier");
    assert!(stats.hits >= 1);
    assert_eq!(stats.breaker, BreakerState::Closed);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_cold_requests_over_three_instances_make_one_origin_call() -> TestResult {
    let Some(redis) = RedisServer::start("fleet-wide miss coalescing") else {
        return Ok(());
    };
    let (origin, calls) = slow_origin(Duration::from_millis(300), "max-age=60");
    let instances = Arc::new(three_instances(&redis, origin, SwrLayer::new));
    let mut requests = Vec::new();
    for i in 0..300 {
        let instances = Arc::clone(&instances);
        requests.push(tokio::spawn(async move {
            let service = &instances[i % 3].0;
            call(service, get("/cold")).await
        }));
    }
    for request in requests {
        let (status, body) = request.await??;
        assert_eq!(
            &body[..],
            b"v1",
            "every request gets the one origin answer ({status:?})"
        );
    }
    assert_eq!(calls.get(), 1, "one origin call for the whole fleet");
    let won: u64 = instances
        .iter()
        .map(|(_, h)| h.redis_stats().unwrap().locks_won)
        .sum();
    let lost: u64 = instances
        .iter()
        .map(|(_, h)| h.redis_stats().unwrap().locks_lost)
        .sum();
    assert_eq!(won, 1, "one instance won the lock");
    assert_eq!(lost, 2, "the two others waited for its value");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_stale_requests_over_three_instances_make_one_refresh() -> TestResult {
    let Some(redis) = RedisServer::start("fleet-wide single refresh") else {
        return Ok(());
    };
    let (origin, calls) = slow_origin(
        Duration::from_millis(200),
        "max-age=1, stale-while-revalidate=60",
    );
    let instances = Arc::new(three_instances(&redis, origin, SwrLayer::new));
    // Every instance holds v1 (one load, shared).
    call(&instances[0].0, get("/stale")).await?;
    for (service, _) in instances.iter() {
        let deadline = Instant::now() + Duration::from_secs(5);
        while call(service, get("/stale")).await?.0 == CacheStatus::Miss {
            assert!(Instant::now() < deadline);
        }
    }
    assert_eq!(calls.get(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let started = Instant::now();
    let mut requests = Vec::new();
    for i in 0..300 {
        let instances = Arc::clone(&instances);
        requests.push(tokio::spawn(async move {
            let begun = Instant::now();
            let answer = call(&instances[i % 3].0, get("/stale")).await;
            (answer, begun.elapsed())
        }));
    }
    for request in requests {
        let (answer, took) = request.await?;
        let (status, body) = answer?;
        assert_eq!(
            &body[..],
            b"v1",
            "stale is served at once while one refresh runs"
        );
        assert_eq!(status, CacheStatus::Stale);
        assert!(
            took < Duration::from_millis(150),
            "a stale answer never waits for the origin ({took:?})"
        );
    }
    // The refresh lands, every instance takes it (from Redis), and the origin saw one refresh.
    for (service, _) in instances.iter() {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (_, body) = call(service, get("/stale")).await?;
            if &body[..] == b"v2" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "an instance never took the refreshed value"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(calls.get(), 2, "one refresh for the whole fleet");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_on_one_instance_holds_on_every_instance_and_in_redis() -> TestResult {
    let Some(redis) = RedisServer::start("purge through the bus") else {
        return Ok(());
    };
    let (origin, calls) = slow_origin(Duration::ZERO, "max-age=600");
    let instances = three_instances(&redis, origin, SwrLayer::new);
    for path in ["/a", "/b/1", "/b/2"] {
        call(&instances[0].0, get(path)).await?;
    }
    // Every instance holds all three in memory.
    for (service, handle) in &instances[1..] {
        for path in ["/a", "/b/1", "/b/2"] {
            let deadline = Instant::now() + Duration::from_secs(5);
            while call(service, get(path)).await?.0 != CacheStatus::SharedTier {
                assert!(Instant::now() < deadline);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        assert_eq!(handle.stats().entries, 3);
    }
    assert_eq!(calls.get(), 3);
    instances[0].1.purge("/a");
    instances[0].1.purge_prefix("/b/");
    // The others drop their copies (the bus delivers within milliseconds).
    for (_, handle) in &instances[1..] {
        let handle = handle.clone();
        eventually("the purge reached the other instance", move || {
            handle.stats().entries == 0
        })
        .await;
    }
    // And nobody finds the purged values in Redis: each path is loaded again, once.
    for path in ["/a", "/b/1", "/b/2"] {
        let (status, _) = call(&instances[2].0, get(path)).await?;
        assert_eq!(status, CacheStatus::Miss, "{path} was purged everywhere");
    }
    assert_eq!(calls.get(), 6);
    Ok(())
}

/// An origin answering `v<call number>` for 10 minutes, tagged `shelf` under `/shelf/`, else
/// `other`.
fn tagged_origin() -> (impl OriginService, Calls) {
    origin(|n, request: http::Request<ReqBody>| async move {
        let tag = if request.uri().path().starts_with("/shelf/") {
            "shelf"
        } else {
            "other"
        };
        let response = reply_cc(format!("v{n}"), "max-age=600, stale-while-revalidate=600");
        Ok(with_header(
            response,
            http::HeaderName::from_static("surrogate-key"),
            tag,
        ))
    })
}

/// Calls `path` on `service` until it answers `wanted` (5 s at most); returns the body.
async fn until_status<S>(service: &S, path: &str, wanted: CacheStatus) -> Result<Bytes, BoxError>
where
    S: tower::Service<http::Request<ReqBody>, Response = Answer, Error = BoxError> + Clone + Send,
    S::Future: Send,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = call(service, get(path)).await?;
        if status == wanted {
            return Ok(body);
        }
        assert!(
            Instant::now() < deadline,
            "{path} never answered {wanted:?} (last {status:?})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_purge_on_one_instance_holds_on_every_instance_and_in_redis() -> TestResult {
    let Some(redis) = RedisServer::start("tag purge through the bus") else {
        return Ok(());
    };
    let (origin, calls) = tagged_origin();
    let instances = three_instances(&redis, origin, SwrLayer::new);
    for path in ["/shelf/1", "/shelf/2", "/desk"] {
        call(&instances[0].0, get(path)).await?;
    }
    // Instance one holds all three in memory; instance two has only Redis's copies.
    for path in ["/shelf/1", "/shelf/2", "/desk"] {
        until_status(&instances[1].0, path, CacheStatus::SharedTier).await?;
    }
    assert_eq!(calls.get(), 3);
    assert_eq!(instances[0].1.purge_tag(["shelf"]), 1);
    // Its memory copy of a tagged entry stops being served on instance one...
    let body = until_status(&instances[1].0, "/shelf/1", CacheStatus::Miss).await?;
    assert_eq!(&body[..], b"v4");
    // ...and nobody takes the copy in Redis written before the purge.
    let body = until_status(&instances[2].0, "/shelf/2", CacheStatus::Miss).await?;
    assert_eq!(&body[..], b"v5");
    // The untagged-by-`shelf` entry is kept everywhere, and what was loaded after is shared.
    assert_eq!(
        call(&instances[1].0, get("/desk")).await?.0,
        CacheStatus::Fresh
    );
    assert_eq!(
        call(&instances[2].0, get("/desk")).await?.0,
        CacheStatus::SharedTier
    );
    let body = until_status(&instances[2].0, "/shelf/1", CacheStatus::SharedTier).await?;
    assert_eq!(
        &body[..],
        b"v4",
        "the value loaded after the purge is shared"
    );
    assert_eq!(calls.get(), 5);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_tag_purge_makes_every_instance_serve_stale_and_refresh_once() -> TestResult {
    let Some(redis) = RedisServer::start("soft tag purge through the bus") else {
        return Ok(());
    };
    let (origin, calls) = tagged_origin();
    let instances = three_instances(&redis, origin, SwrLayer::new);
    call(&instances[0].0, get("/shelf/1")).await?;
    until_status(&instances[1].0, "/shelf/1", CacheStatus::SharedTier).await?;
    assert_eq!(instances[0].1.soft_purge_tag(["shelf"]), 1);
    // Instance one serves its copy stale at once, and the fleet refreshes it.
    let body = until_status(&instances[1].0, "/shelf/1", CacheStatus::Stale).await?;
    assert_eq!(&body[..], b"v1");
    // Instance two, with no memory copy, finds Redis's copy stale too; soon the refreshed one.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = call(&instances[2].0, get("/shelf/1")).await?;
        if &body[..] == b"v2" {
            break;
        }
        assert_eq!((status, &body[..]), (CacheStatus::Stale, &b"v1"[..]));
        assert!(Instant::now() < deadline, "the refreshed value never came");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(calls.get(), 2, "one refresh for the fleet");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_post_invalidates_the_url_on_every_instance() -> TestResult {
    let Some(redis) = RedisServer::start("unsafe-method invalidation") else {
        return Ok(());
    };
    let (origin, calls) =
        origin(|n, _request| async move { Ok(reply_cc(format!("v{n}"), "max-age=600")) });
    let instances = three_instances(&redis, origin, SwrLayer::new);
    call(&instances[0].0, get("/cart")).await?;
    let other = &instances[1];
    let deadline = Instant::now() + Duration::from_secs(5);
    while call(&other.0, get("/cart")).await?.0 != CacheStatus::SharedTier {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let response = instances[2]
        .0
        .clone()
        .oneshot(request(Method::POST, "/cart"))
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    let handle = other.1.clone();
    eventually("the POST reached the other instance", move || {
        handle.stats().entries == 0
    })
    .await;
    let (status, body) = call(&other.0, get("/cart")).await?;
    assert_eq!(status, CacheStatus::Miss, "not answered from Redis either");
    assert_ne!(&body[..], b"v1");
    let _ = calls;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_began_before_a_purge_never_brings_the_value_back() -> TestResult {
    let Some(redis) = RedisServer::start("refresh racing a purge") else {
        return Ok(());
    };
    let gate = Gate::default();
    let (origin, _calls) = gated_after_first(&gate, "max-age=1, stale-while-revalidate=60");
    let instances = three_instances(&redis, origin, SwrLayer::new);
    let (one, two) = (&instances[0], &instances[1]);
    call(&one.0, get("/race")).await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Stale: a refresh starts on instance one and hangs at the origin.
    assert_eq!(call(&one.0, get("/race")).await?.0, CacheStatus::Stale);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The purge, from another instance, comes while it hangs; then the origin answers.
    two.1.purge("/race");
    tokio::time::sleep(Duration::from_millis(100)).await;
    gate.open();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The refreshed value was loaded before the purge: no instance may take it from Redis.
    let (status, _) = call(&instances[2].0, get("/race")).await?;
    assert_eq!(
        status,
        CacheStatus::Miss,
        "the purge wins over the refresh under way"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_under_a_key_is_a_miss_and_counted() -> TestResult {
    let Some(redis) = RedisServer::start("garbage in Redis") else {
        return Ok(());
    };
    let (origin, calls) = slow_origin(Duration::ZERO, "max-age=600");
    let instances = three_instances(&redis, origin, SwrLayer::new);
    call(&instances[0].0, get("/g")).await?;
    // Overwrite every value in Redis with garbage.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut connection = redis.client().get_connection()?;
    let mut spoiled = 0;
    for key in redis.keys() {
        let kind: String = redis::cmd("TYPE").arg(&key).query(&mut connection)?;
        if kind == "hash" {
            let has_value: bool = redis::cmd("HEXISTS")
                .arg(&key)
                .arg("v")
                .query(&mut connection)?;
            if has_value {
                redis::cmd("HSET")
                    .arg(&key)
                    .arg("v")
                    .arg(&b"\x01\xffnot a response"[..])
                    .query::<()>(&mut connection)?;
                spoiled += 1;
            }
        }
    }
    assert_eq!(spoiled, 1);
    let (status, body) = call(&instances[1].0, get("/g")).await?;
    assert_eq!(status, CacheStatus::Miss);
    assert_eq!(
        &body[..],
        b"v2",
        "answered by the origin, not by the garbage"
    );
    assert_eq!(instances[1].1.redis_stats().unwrap().corrupt, 1);
    assert_eq!(calls.get(), 2);
    Ok(())
}

/// A Redis key name and the bytes of the value under it.
type NamedValue = (Vec<u8>, Vec<u8>);

/// The Redis key names holding a value (hashes with a `v` field), with their value's bytes.
fn stored_values(redis: &RedisServer) -> Result<Vec<NamedValue>, BoxError> {
    let mut connection = redis.client().get_connection()?;
    let mut values = Vec::new();
    for key in redis.keys() {
        let kind: String = redis::cmd("TYPE").arg(&key).query(&mut connection)?;
        if kind == "hash" {
            let value: Option<Vec<u8>> = redis::cmd("HGET")
                .arg(&key)
                .arg("v")
                .query(&mut connection)?;
            if let Some(value) = value {
                values.push((key, value));
            }
        }
    }
    Ok(values)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_moved_under_another_keys_name_is_never_served_for_it() -> TestResult {
    let Some(redis) = RedisServer::start("a foreign value in Redis") else {
        return Ok(());
    };
    let (origin, calls) = origin(|n, request: http::Request<ReqBody>| async move {
        let body = format!("{} v{n}", request.uri().path());
        Ok(reply_cc(body, "max-age=600"))
    });
    let instances = three_instances(&redis, origin, SwrLayer::new);
    call(&instances[0].0, get("/alice")).await?;
    call(&instances[0].0, get("/bob")).await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let values = loop {
        let values = stored_values(&redis)?;
        if values.len() == 2 {
            break values;
        }
        assert!(Instant::now() < deadline, "both values reach Redis");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // Alice's response, byte for byte, under Bob's key name (a bug, a collision, tampering).
    let (alice, bob) = if values[0].1.windows(6).any(|w| w == b"/alice") {
        (&values[0], &values[1])
    } else {
        (&values[1], &values[0])
    };
    let mut connection = redis.client().get_connection()?;
    redis::cmd("HSET")
        .arg(&bob.0)
        .arg("v")
        .arg(&alice.1)
        .query::<()>(&mut connection)?;
    let (status, body) = call(&instances[1].0, get("/bob")).await?;
    assert_eq!(status, CacheStatus::Miss, "not taken from Redis");
    assert_eq!(&body[..], b"/bob v3", "Bob never gets Alice's response");
    // Counted; twice when Bob's value was written just before this read (the lock request
    // then reads it once more: see the late-claim tests).
    assert!((1..=2).contains(&instances[1].1.redis_stats().unwrap().corrupt));
    assert_eq!(calls.get(), 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_fails_no_request_and_sharing_resumes_when_it_has_room() -> TestResult {
    let Some(redis) = RedisServer::start("Redis out of memory") else {
        return Ok(());
    };
    let (origin, calls) = slow_origin(Duration::ZERO, "max-age=600");
    let instances = three_instances(&redis, origin, SwrLayer::new);
    // Redis refuses every write: full, and told never to evict.
    let mut connection = redis.client().get_connection()?;
    let used: String = redis::cmd("INFO").arg("memory").query(&mut connection)?;
    let used: u64 = (used.lines())
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("used_memory");
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("noeviction")
        .query::<()>(&mut connection)?;
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(used.saturating_sub(1).max(1))
        .query::<()>(&mut connection)?;
    let refused = redis::cmd("SET")
        .arg("probe")
        .arg("x")
        .query::<()>(&mut connection);
    assert!(refused.is_err(), "Redis is full");
    for i in 0..30 {
        let path = format!("/full/{}", i % 10);
        let started = Instant::now();
        let (status, body) = call(&instances[i % 3].0, get(&path)).await?;
        assert!(
            matches!(
                status,
                CacheStatus::Miss | CacheStatus::Fresh | CacheStatus::SharedTier
            ),
            "{status:?}"
        );
        assert!(body.starts_with(b"v"), "answered by the origin or memory");
        assert!(started.elapsed() < Duration::from_secs(1), "not held up");
    }
    // Every (instance, key) pair came once: with nothing shared, each was its own load.
    assert_eq!(calls.get(), 30);
    let stats = instances[0].1.redis_stats().unwrap();
    assert_eq!(stats.writes, 0, "nothing was written while full");
    assert_eq!(
        stats.breaker,
        BreakerState::Closed,
        "a full Redis is not an outage"
    );
    // Room again: the next value is shared.
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(0)
        .query::<()>(&mut connection)?;
    call(&instances[0].0, get("/after")).await?;
    until_status(&instances[1].0, "/after", CacheStatus::SharedTier).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_kept_with_credentials_never_reach_redis() -> TestResult {
    let Some(redis) = RedisServer::start("credentials stay out of Redis") else {
        return Ok(());
    };
    let (origin, _calls) = origin(|n, _request| async move {
        Ok(reply_cc(format!("private v{n}"), "private, max-age=600"))
    });
    let layer = SwrLayer::new().allow_private(true).redis(redis.config());
    let handle = layer.handle();
    let service = layer.layer(origin);
    let request = get_with(
        "/me",
        http::header::AUTHORIZATION,
        "Bearer secret-token-123",
    );
    let response = service.clone().oneshot(request).await?;
    assert_eq!(common::body(response).await?, Bytes::from("private v1"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut connection = redis.client().get_connection()?;
    for key in redis.keys() {
        assert!(!String::from_utf8_lossy(&key).contains("secret-token"));
        let kind: String = redis::cmd("TYPE").arg(&key).query(&mut connection)?;
        if kind == "hash" {
            let fields: Vec<Vec<u8>> = redis::cmd("HVALS").arg(&key).query(&mut connection)?;
            for field in fields {
                assert!(
                    !String::from_utf8_lossy(&field).contains("secret-token"),
                    "the token is in Redis"
                );
            }
        }
    }
    let stats = handle.redis_stats().unwrap();
    assert_eq!(stats.writes, 0);
    assert_eq!(
        handle.stats().entries,
        1,
        "cached in this instance's memory"
    );
    assert_eq!(stats.unshared, 1, "kept out of Redis on purpose");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_paused_and_restarted_never_fails_or_stalls_a_request() -> TestResult {
    let Some(mut redis) = RedisServer::start("Redis failing") else {
        return Ok(());
    };
    let (origin, _calls) = slow_origin(Duration::ZERO, "max-age=0, stale-while-revalidate=0");
    let layer = SwrLayer::new().redis(redis.config());
    let handle = layer.handle();
    let service = layer.layer(origin);
    let mut worst = Duration::ZERO;
    let run = |phase: &'static str| {
        let service = service.clone();
        async move {
            let mut worst = Duration::ZERO;
            for i in 0..40 {
                let begun = Instant::now();
                let response = service.clone().oneshot(get(&format!("/p/{i}"))).await?;
                assert_eq!(response.status(), StatusCode::OK, "{phase}: answered");
                common::body(response).await?;
                worst = worst.max(begun.elapsed());
            }
            Ok::<_, BoxError>(worst)
        }
    };
    worst = worst.max(run("Redis up").await?);
    redis.signal("-STOP");
    let paused = run("Redis paused (SIGSTOP)").await?;
    redis.signal("-CONT");
    redis.stop();
    let stopped = run("Redis stopped").await?;
    redis.launch();
    // Sharing resumes by itself once Redis is back (after the breaker's cooldown).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        run("Redis restarted").await?;
        if handle.redis_stats().unwrap().breaker == BreakerState::Closed && !redis.keys().is_empty()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sharing never resumed: {:?}",
            handle.redis_stats()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Each request waits for Redis at most a few timeouts (100 ms each here), never longer.
    for (phase, took) in [("paused", paused), ("stopped", stopped), ("up", worst)] {
        assert!(
            took < Duration::from_millis(1500),
            "{phase}: a request took {took:?}"
        );
    }
    let stats = handle.redis_stats().unwrap();
    assert!(
        stats.timeouts + stats.errors + stats.skipped > 0,
        "{stats:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_with_an_unreachable_redis_starts_and_answers_at_once() -> TestResult {
    // No server at all on this port.
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let config = RedisConfig::new(&format!("redis://127.0.0.1:{port}/"))?;
    let (origin, calls) = slow_origin(Duration::ZERO, "max-age=60");
    let layer = SwrLayer::new().redis(config);
    let service = layer.layer(origin);
    let begun = Instant::now();
    for _ in 0..20 {
        let (_, body) = call(&service, get("/x")).await?;
        assert_eq!(&body[..], b"v1");
    }
    assert!(begun.elapsed() < Duration::from_secs(2));
    assert_eq!(calls.get(), 1, "memory still caches");
    Ok(())
}

#[test]
fn an_invalid_redis_address_is_a_clear_error() {
    let error = RedisConfig::new("not a url").expect_err("refused");
    assert!(
        error.to_string().contains("invalid Redis address"),
        "{error}"
    );
    assert!(RedisConfig::cluster(Vec::<String>::new()).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_with_an_empty_memory_answers_redis_stale_copy_at_once_and_the_fleet_refreshes_once(
) -> TestResult {
    let Some(redis) = RedisServer::start("stale copy in Redis, new instance") else {
        return Ok(());
    };
    // The first answer at once; every later one takes 3 s (a slow origin being refreshed).
    let (origin, calls) = origin(|n, _request| async move {
        if n > 1 {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        Ok(reply_cc(
            format!("v{n}"),
            "max-age=1, stale-while-revalidate=60",
        ))
    });
    let instances = three_instances(&redis, origin, SwrLayer::new);
    call(&instances[0].0, get("/slow")).await?;
    until_status(&instances[1].0, "/slow", CacheStatus::SharedTier).await?;
    // Once it is stale, instance one answers it stale and starts the fleet's one refresh...
    let body = until_status(&instances[1].0, "/slow", CacheStatus::Stale).await?;
    assert_eq!(&body[..], b"v1");
    // ...and instance two, which never had it in memory, answers Redis's stale copy at once
    // instead of waiting for the 3 s refresh.
    let started = Instant::now();
    let (status, body) = call(&instances[2].0, get("/slow")).await?;
    assert_eq!((status, &body[..]), (CacheStatus::Stale, &b"v1"[..]));
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "answered without waiting for the origin ({:?})",
        started.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while call(&instances[2].0, get("/slow")).await?.1 != b"v2"[..] {
        assert!(Instant::now() < deadline, "the refreshed value never came");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(calls.get(), 2, "one refresh for the fleet");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_with_an_empty_memory_answers_redis_copy_when_the_origin_fails() -> TestResult {
    let Some(redis) = RedisServer::start("stale-if-error from Redis, new instance") else {
        return Ok(());
    };
    let (origin, _calls) = origin(|n, _request| async move {
        if n == 1 {
            Ok(reply_cc("v1", "max-age=1, stale-if-error=600"))
        } else {
            Ok(reply_status(StatusCode::INTERNAL_SERVER_ERROR, "down"))
        }
    });
    // No stale-while-revalidate window: past its freshness it is only a stand-in.
    let layer = || SwrLayer::new().stale_while_revalidate(Duration::ZERO);
    let instances = three_instances(&redis, origin, layer);
    call(&instances[0].0, get("/flaky")).await?;
    until_status(&instances[1].0, "/flaky", CacheStatus::SharedTier).await?;
    // Past its freshness the origin fails: instance one stands its copy in...
    let body = until_status(&instances[1].0, "/flaky", CacheStatus::StaleIfError).await?;
    assert_eq!(&body[..], b"v1");
    // ...and so does instance two, from Redis, rather than pass on the 500.
    let response = instances[2].0.clone().oneshot(get("/flaky")).await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(info(&response).status, CacheStatus::StaleIfError);
    assert_eq!(&common::body(response).await?[..], b"v1");
    Ok(())
}

/// A codec for the engine alone: `String` keys, `u64` values, the lifetime as Unix nanoseconds
/// and durations (7 × 8 bytes) before the value.
struct NumberCodec;

fn nanos_since_epoch(at: std::time::SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn at_nanos(n: u64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_nanos(n)
}

impl tower_swr::redis::TierCodec<String, u64> for NumberCodec {
    fn key_bytes(&self, key: &String) -> Vec<u8> {
        key.as_bytes().to_vec()
    }

    fn decode_key(&self, bytes: &[u8]) -> Option<String> {
        String::from_utf8(bytes.to_vec()).ok()
    }

    fn encode(
        &self,
        _key: &String,
        value: &u64,
        lifetime: &tower_swr::engine::Lifetime,
    ) -> Option<Vec<u8>> {
        let fields = [
            nanos_since_epoch(lifetime.stored_at),
            lifetime.initial_age.as_nanos() as u64,
            nanos_since_epoch(lifetime.fresh_until),
            nanos_since_epoch(lifetime.stale_until),
            nanos_since_epoch(lifetime.error_until),
            nanos_since_epoch(lifetime.retain_until),
            lifetime.load_time.as_nanos() as u64,
            *value,
        ];
        Some(fields.iter().flat_map(|f| f.to_be_bytes()).collect())
    }

    fn decode(&self, _key: &String, bytes: &[u8]) -> Option<(u64, tower_swr::engine::Lifetime)> {
        let fields: Vec<u64> = bytes
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")))
            .collect();
        let [stored, age, fresh, stale, error, retain, load, value] = fields[..] else {
            return None;
        };
        let lifetime = tower_swr::engine::Lifetime {
            stored_at: at_nanos(stored),
            initial_age: Duration::from_nanos(age),
            fresh_until: at_nanos(fresh),
            stale_until: at_nanos(stale),
            error_until: at_nanos(error),
            retain_until: at_nanos(retain),
            load_time: Duration::from_nanos(load),
        };
        Some((value, lifetime))
    }
}

/// A value stored just now, fresh for a minute, whose load took `load_time`.
fn loaded_now(load_time: Duration) -> tower_swr::engine::Lifetime {
    let now = std::time::SystemTime::now();
    tower_swr::engine::Lifetime {
        stored_at: now,
        initial_age: Duration::ZERO,
        fresh_until: now + Duration::from_secs(60),
        stale_until: now + Duration::from_secs(60),
        error_until: now + Duration::from_secs(60),
        retain_until: now + Duration::from_secs(60),
        load_time,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_without_the_lock_never_brings_back_what_a_purge_during_its_load_removed(
) -> TestResult {
    use tower_swr::engine::SharedTier;
    let Some(redis) = RedisServer::start("unfenced write after a purge") else {
        return Ok(());
    };
    let tier = tower_swr::redis::RedisTier::new(redis.config(), NumberCodec);
    let key = "report".to_string();
    tier.put(&key, &1, &loaded_now(Duration::ZERO)).await;
    assert!(tier.get(&key).await.is_some(), "written");
    // A purge, then the write (without a lock: `put`) of a load that began two seconds ago,
    // before the purge: the purge wins.
    tier.remove(&key).await;
    tier.put(&key, &2, &loaded_now(Duration::from_secs(2)))
        .await;
    assert!(
        tier.get(&key).await.is_none(),
        "the purged content stays out"
    );
    assert_eq!(tier.stats().fenced_writes, 1);
    // A load that began after the purge is written.
    tokio::time::sleep(Duration::from_millis(300)).await;
    tier.put(&key, &3, &loaded_now(Duration::from_millis(10)))
        .await;
    let (value, _) = tier.get(&key).await.expect("written after the purge");
    assert_eq!(value, 3);
    Ok(())
}

/// A response stale as soon as it is stored (`max-age=0` and a stale window) is still the
/// answer to the requests that waited for its load: another instance's request waiting on the
/// fleet lock takes it, as the holder's own waiters do, instead of waiting out the lock
/// timeout and calling the origin once more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_on_another_instance_takes_its_value_even_when_stored_stale() -> TestResult
{
    let Some(redis) = RedisServer::start("waiting for a stale-on-arrival value") else {
        return Ok(());
    };
    for cache_control in [
        "max-age=0, stale-while-revalidate=30",
        "max-age=0, stale-if-error=60",
    ] {
        let (origin, calls) = slow_origin(Duration::from_millis(400), cache_control);
        // The lock timeout is long enough that a request waiting it out shows.
        let layer = || SwrLayer::new().lock_timeout(Duration::from_secs(30));
        let instances = three_instances(&redis, origin, layer);
        let path = if cache_control.contains("revalidate") {
            "/swr"
        } else {
            "/sie"
        };
        let first = tokio::spawn({
            let service = instances[0].0.clone();
            async move { call(&service, get(path)).await.map_err(|e| e.to_string()) }
        });
        // The first instance holds the fleet lock for its 400 ms load.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        let (status, body) = call(&instances[1].0, get(path)).await?;
        let waited = started.elapsed();
        let (first_status, first_body) = first.await??;
        assert_eq!(first_status, CacheStatus::Miss, "{cache_control}");
        assert_eq!(&first_body[..], b"v1", "{cache_control}");
        assert_eq!(
            (status, &body[..]),
            (CacheStatus::SharedTier, &b"v1"[..]),
            "{cache_control}: the waiting instance answers the value it waited for"
        );
        assert_eq!(
            calls.get(),
            1,
            "{cache_control}: one origin call for the fleet"
        );
        assert!(
            waited < Duration::from_secs(10),
            "{cache_control}: waited {waited:?}, not the lock timeout"
        );
    }
    Ok(())
}

/// A miss whose read came before another instance's whole load (read, lock, origin, write,
/// release) and whose claim came after it takes that instance's value: the lock it is then
/// granted would otherwise send the fleet's second origin call for one expiry. The first
/// instance talks to Redis through a proxy that delays its commands by 200 ms, so the other
/// instance's load fits between its read and its claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_whose_claim_comes_after_another_instance_loaded_and_let_go_reads_that_value(
) -> TestResult {
    let Some(redis) = RedisServer::start("a load between a read and a claim") else {
        return Ok(());
    };
    let delay = Duration::from_millis(200);
    let proxy = common::redis_server::delaying_proxy(redis.port, delay).await;
    let slow_link =
        RedisConfig::new(&format!("redis://127.0.0.1:{proxy}/"))?.timeout(Duration::from_secs(3));
    let (origin, calls) = slow_origin(Duration::ZERO, "max-age=60");
    let far = SwrLayer::new().redis(slow_link).layer(origin.clone());
    let near = SwrLayer::new().redis(redis.config()).layer(origin);
    // Connected first (through the proxy, each step 200 ms), on keys of their own.
    call(&far, get("/warm-far")).await?;
    call(&near, get("/warm-near")).await?;
    let before = calls.get();
    let far_request = tokio::spawn({
        let far = far.clone();
        async move { call(&far, get("/item")).await.map_err(|e| e.to_string()) }
    });
    // The far read reaches Redis at ~200 ms (nothing there), its claim at ~400 ms: the near
    // instance loads, writes and lets go at ~300 ms.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = call(&near, get("/item")).await?;
    assert_eq!((status, &body[..]), (CacheStatus::Miss, &b"v3"[..]));
    let (far_status, far_body) = far_request.await??;
    assert_eq!(
        (far_status, &far_body[..]),
        (CacheStatus::SharedTier, &b"v3"[..]),
        "the far instance answers the near one's value"
    );
    assert_eq!(calls.get() - before, 1, "one origin call for the fleet");
    Ok(())
}

/// RFC 9111 §5.2.1.7 with a shared tier: the tier is part of the cache, so a request with
/// `only-if-cached` on an instance that has nothing in memory is answered by the copy another
/// instance stored, and gets the 504 only when the fleet has none; the origin is never asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_if_cached_is_answered_from_the_copy_another_instance_stored() -> TestResult {
    let Some(redis) = RedisServer::start("only-if-cached from the shared tier") else {
        return Ok(());
    };
    let (origin, calls) = slow_origin(Duration::ZERO, "max-age=60");
    let instances = three_instances(&redis, origin, SwrLayer::new);
    let only_if_cached = |path: &str| get_with(path, http::header::CACHE_CONTROL, "only-if-cached");
    let nothing = instances[1]
        .0
        .clone()
        .oneshot(only_if_cached("/oic"))
        .await?;
    assert_eq!(nothing.status(), StatusCode::GATEWAY_TIMEOUT);
    call(&instances[0].0, get("/oic")).await?;
    // The write to Redis is detached: the other instance finds it a moment later.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let response = instances[1]
            .0
            .clone()
            .oneshot(only_if_cached("/oic"))
            .await?;
        if response.status() == StatusCode::OK {
            assert_eq!(info(&response).status, CacheStatus::SharedTier);
            assert_eq!(&common::body(response).await?[..], b"v1");
            break;
        }
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(
            Instant::now() < deadline,
            "the other instance never found the copy"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Now in the second instance's memory too.
    let again = instances[1]
        .0
        .clone()
        .oneshot(only_if_cached("/oic"))
        .await?;
    assert_eq!(info(&again).status, CacheStatus::Fresh);
    assert_eq!(calls.get(), 1, "only-if-cached never asks the origin");
    assert_eq!(instances[1].1.stats().shared_tier_hits, 1);
    Ok(())
}

/// A purge sent while Redis is frozen (the call times out; the command is on its way) is
/// not undone when Redis thaws: the purging instance never takes the purged copy back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_sent_while_redis_is_frozen_is_not_undone_when_it_thaws() -> TestResult {
    let Some(redis) = RedisServer::start("a purge waiting for its retry") else {
        return Ok(());
    };
    let (origin, calls) = slow_origin(Duration::ZERO, "max-age=60");
    let instances = three_instances(&redis, origin, SwrLayer::new);
    let (filler, purger) = (&instances[0], &instances[1]);
    call(&filler.0, get("/p")).await?;
    // The copy is in Redis once the purging instance answers from it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while call(&purger.0, get("/p")).await?.0 != CacheStatus::SharedTier {
        assert!(Instant::now() < deadline, "the copy never reached Redis");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Redis freezes: the purge's call times out (100 ms) and is kept for a retry.
    redis.signal("-STOP");
    purger.1.purge("/p");
    tokio::time::sleep(Duration::from_millis(350)).await;
    redis.signal("-CONT");
    let (status, body) = call(&purger.0, get("/p")).await?;
    assert_ne!(
        (status, &body[..]),
        (CacheStatus::SharedTier, &b"v1"[..]),
        "the purged copy came back from Redis"
    );
    assert_eq!(&body[..], b"v2");
    assert_eq!(calls.get(), 2);
    Ok(())
}

/// An origin answering `{language} v{n}` after `delay`, varying on `Accept-Language`.
fn by_language(delay: Duration) -> (impl OriginService, Calls) {
    origin(move |n, request: http::Request<ReqBody>| async move {
        let language = (request.headers().get("accept-language"))
            .map(|v| v.to_str().unwrap_or_default().to_owned())
            .unwrap_or_default();
        tokio::time::sleep(delay).await;
        let mut response = reply_cc(format!("{language} v{n}"), "max-age=60");
        (response.headers_mut()).insert("vary", http::HeaderValue::from_static("accept-language"));
        Ok(response)
    })
}

/// The same for a `Vary` variant: the lock is the family's, and a miss for a variant whose
/// claim comes after another instance loaded, wrote and let go of that variant reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_variant_miss_whose_claim_comes_after_another_instance_loaded_it_reads_that_value(
) -> TestResult {
    let Some(redis) = RedisServer::start("a variant loaded between a read and a claim") else {
        return Ok(());
    };
    let delay = Duration::from_millis(200);
    let proxy = common::redis_server::delaying_proxy(redis.port, delay).await;
    let slow_link =
        RedisConfig::new(&format!("redis://127.0.0.1:{proxy}/"))?.timeout(Duration::from_secs(3));
    let (origin, calls) = by_language(Duration::ZERO);
    let far = SwrLayer::new().redis(slow_link).layer(origin.clone());
    let near = SwrLayer::new().redis(redis.config()).layer(origin);
    let in_language =
        |language: &'static str| get_with("/v", http::header::ACCEPT_LANGUAGE, language);
    // The family is known to both: the far instance answers `en` from Redis.
    call(&near, in_language("en")).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while call(&far, in_language("en")).await?.0 != CacheStatus::SharedTier {
        assert!(Instant::now() < deadline, "the far instance never found en");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = calls.get();
    let far_request = tokio::spawn({
        let far = far.clone();
        async move {
            call(&far, in_language("de"))
                .await
                .map_err(|e| e.to_string())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = call(&near, in_language("de")).await?;
    assert_eq!(status, CacheStatus::Miss);
    let (far_status, far_body) = far_request.await??;
    assert_eq!(
        (far_status, &far_body),
        (CacheStatus::SharedTier, &body),
        "the far instance answers the near one's de"
    );
    assert_eq!(calls.get() - before, 1, "one origin call for the fleet");
    Ok(())
}

/// Instances waiting on a family's lock for one variant while another instance loads another
/// variant: when that other variant is written, they do not all load theirs at once without
/// the lock; one takes the lock and loads it, the others take its value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_for_one_variant_take_the_lock_in_turn_when_another_variant_is_written(
) -> TestResult {
    let Some(redis) = RedisServer::start("waiting for a variant of a family") else {
        return Ok(());
    };
    let (origin, calls) = by_language(Duration::from_millis(400));
    let instances = three_instances(&redis, origin, SwrLayer::new);
    let in_language =
        |language: &'static str| get_with("/family", http::header::ACCEPT_LANGUAGE, language);
    // Every instance knows the family (its Vary): the others answer `en` from Redis.
    call(&instances[0].0, in_language("en")).await?;
    for (service, _) in &instances[1..] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while call(service, in_language("en")).await?.0 != CacheStatus::SharedTier {
            assert!(Instant::now() < deadline, "an instance never found en");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let before = calls.get();
    // The first instance loads `fr` under the family's lock; the two others ask for `de`.
    let fr = tokio::spawn(instances[0].0.clone().oneshot(in_language("fr")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let de: Vec<_> = instances[1..]
        .iter()
        .map(|(service, _)| tokio::spawn(service.clone().oneshot(in_language("de"))))
        .collect();
    assert_eq!(fr.await??.status(), StatusCode::OK);
    let mut bodies = Vec::new();
    for answer in de {
        bodies.push(common::body(answer.await??).await?);
    }
    assert_eq!(bodies[0], bodies[1], "one de for both instances");
    assert_eq!(calls.get() - before, 2, "fr once and de once for the fleet");
    Ok(())
}

/// An instance that learns a family's `Vary` from Redis on its first request for a variant,
/// while another instance is loading that variant, waits for that variant (not for the
/// family's own value, which it never holds) and answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_new_to_a_family_waits_for_the_variant_another_is_loading() -> TestResult {
    let Some(redis) = RedisServer::start("a new instance waiting for a variant") else {
        return Ok(());
    };
    let (origin, calls) = by_language(Duration::from_millis(400));
    let instances = three_instances(&redis, origin, SwrLayer::new);
    let in_language =
        |language: &'static str| get_with("/new", http::header::ACCEPT_LANGUAGE, language);
    call(&instances[0].0, in_language("en")).await?;
    // Let the first instance's write of en (and of the family's Vary) land.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let leader = tokio::spawn(instances[0].0.clone().oneshot(in_language("de")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, body) = call(&instances[1].0, in_language("de")).await?;
    let led = common::body(leader.await??).await?;
    assert_eq!(
        (status, &body),
        (CacheStatus::SharedTier, &led),
        "the new instance answers the de the other loaded"
    );
    assert_eq!(calls.get(), 2, "en once and de once for the fleet");
    Ok(())
}
