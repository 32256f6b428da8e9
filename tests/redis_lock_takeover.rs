//! The fleet lock of the Redis tier (feature `redis`) when its holder goes away mid-load: an
//! instance whose origin call hangs, or whose request is dropped, holds up the others for a
//! bounded time only. Against a real `redis-server` that each test starts on a free loopback
//! port; where it is not installed, each test prints why and passes without running.
//!
//! Several layers in one process on one Redis stand for several instances, each around an
//! origin of its own, so the tests can tell which instance called the origin.
#![cfg(feature = "redis")]

mod common;

use std::time::Duration;

use common::redis_server::RedisServer;
use common::*;
use tokio::time::Instant;
use tower::Layer;
use tower_swr::{CacheStatus, SwrHandle, SwrLayer, SwrService};

/// An origin answering `<name> v<call number>` at once, with `cache_control`.
fn named_origin(name: &'static str, cache_control: &'static str) -> (impl OriginService, Calls) {
    origin(move |n, _request| async move { Ok(reply_cc(format!("{name} v{n}"), cache_control)) })
}

/// An origin that never answers.
fn hung_origin() -> (impl OriginService, Calls) {
    origin(|_, _request| async move {
        std::future::pending::<()>().await;
        Ok(reply("never"))
    })
}

/// One instance on `redis`: `layer` with the Redis tier, around `origin`.
fn instance<S: OriginService>(
    redis: &RedisServer,
    layer: SwrLayer,
    lease: Duration,
    origin: S,
) -> (SwrService<S>, SwrHandle) {
    let layer = layer.redis(redis.config().lock_lease(lease));
    let handle = layer.handle();
    (layer.layer(origin), handle)
}

fn locks_won(handle: &SwrHandle) -> u64 {
    handle.redis_stats().expect("a Redis tier").locks_won
}

/// Whether Redis holds a lock key (`…}l…`: the kind after the hash tag).
fn lock_held(redis: &RedisServer) -> bool {
    redis.keys().iter().any(|name| {
        name.iter()
            .position(|b| *b == b'}')
            .is_some_and(|close| name.get(close + 1) == Some(&b'l'))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_waits_the_lock_timeout_for_a_hung_holder_then_loads_itself() -> TestResult {
    let Some(redis) = RedisServer::start("lock holder hangs on a miss") else {
        return Ok(());
    };
    // A 30 s lease: the waiter gives up at its own lock timeout, long before the lease ends.
    let lease = Duration::from_secs(30);
    let lock_timeout = Duration::from_secs(1);
    let (hung, hung_calls) = hung_origin();
    let a = instance(&redis, SwrLayer::new(), lease, hung);
    let (origin_b, calls_b) = named_origin("B", "max-age=600");
    let b = instance(
        &redis,
        SwrLayer::new().lock_timeout(lock_timeout),
        lease,
        origin_b,
    );
    let (origin_c, calls_c) = named_origin("C", "max-age=600");
    let c = instance(&redis, SwrLayer::new(), lease, origin_c);

    // A takes the fleet lock for the cold key and hangs at its origin.
    let holder = tokio::spawn({
        let service = a.0.clone();
        async move { call(&service, get("/cold")).await }
    });
    let handle = a.1.clone();
    eventually("A holds the lock", move || locks_won(&handle) == 1).await;
    assert_eq!(hung_calls.get(), 1);
    assert!(lock_held(&redis));

    let begun = Instant::now();
    let (status, body) = call(&b.0, get("/cold")).await?;
    let took = begun.elapsed();
    assert_eq!((status, &body[..]), (CacheStatus::Miss, &b"B v1"[..]));
    assert_eq!(calls_b.get(), 1, "B called its origin itself");
    assert_eq!(
        b.1.redis_stats().unwrap().locks_lost,
        1,
        "after finding A's lock"
    );
    assert!(
        took >= lock_timeout - Duration::from_millis(50),
        "B waited for A's value first ({took:?})"
    );
    assert!(
        took < lock_timeout + Duration::from_secs(3),
        "B gave up on A at its lock timeout ({took:?})"
    );
    // B's value (written under A's fence, which nothing has moved) is the fleet's now.
    let handle = b.1.clone();
    eventually("B's write", move || {
        handle.redis_stats().unwrap().writes == 1
    })
    .await;
    let (status, body) = call(&c.0, get("/cold")).await?;
    assert_eq!((status, &body[..]), (CacheStatus::SharedTier, &b"B v1"[..]));
    assert_eq!(calls_c.get(), 0);
    assert!(!holder.is_finished(), "A still hangs");
    holder.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_whose_holder_went_away_is_loaded_by_the_next_instance_at_once() -> TestResult {
    let Some(redis) = RedisServer::start("lock holder dropped on a miss") else {
        return Ok(());
    };
    let lease = Duration::from_secs(30);
    let lock_timeout = Duration::from_secs(5);
    let (hung, hung_calls) = hung_origin();
    let a = instance(&redis, SwrLayer::new(), lease, hung);
    let (origin_b, calls_b) = named_origin("B", "max-age=600");
    let b = instance(
        &redis,
        SwrLayer::new().lock_timeout(lock_timeout),
        lease,
        origin_b,
    );

    let holder = tokio::spawn({
        let service = a.0.clone();
        async move { call(&service, get("/gone")).await }
    });
    let handle = a.1.clone();
    eventually("A holds the lock", move || locks_won(&handle) == 1).await;
    assert_eq!(hung_calls.get(), 1);
    // The client goes away: A's load ends with it and gives the lock back.
    holder.abort();
    let deadline = Deadline::after(Duration::from_secs(10), "A's lock given back");
    while lock_held(&redis) {
        deadline.tick().await;
    }

    let begun = Instant::now();
    let (status, body) = call(&b.0, get("/gone")).await?;
    let took = begun.elapsed();
    assert_eq!((status, &body[..]), (CacheStatus::Miss, &b"B v1"[..]));
    assert_eq!(calls_b.get(), 1);
    assert_eq!(locks_won(&b.1), 1, "B took the free lock");
    assert!(
        took < Duration::from_secs(2),
        "no wait for a lock nobody holds ({took:?})"
    );
    Ok(())
}

/// A waiter polls Redis for the holder's value and for the lock: when the holder goes away
/// without a value (its lock given back), the waiter takes the lock and loads, long before its
/// lock timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_already_waiting_when_the_holder_goes_away_takes_the_lock_and_loads() -> TestResult {
    let Some(redis) = RedisServer::start("lock holder dropped while another waits") else {
        return Ok(());
    };
    let lease = Duration::from_secs(30);
    let lock_timeout = Duration::from_secs(20);
    let (hung, _hung_calls) = hung_origin();
    let a = instance(&redis, SwrLayer::new(), lease, hung);
    let (origin_b, calls_b) = named_origin("B", "max-age=600");
    let b = instance(
        &redis,
        SwrLayer::new().lock_timeout(lock_timeout),
        lease,
        origin_b,
    );

    let holder = tokio::spawn({
        let service = a.0.clone();
        async move { call(&service, get("/left")).await }
    });
    let handle = a.1.clone();
    eventually("A holds the lock", move || locks_won(&handle) == 1).await;
    let waiter = tokio::spawn({
        let service = b.0.clone();
        async move { call(&service, get("/left")).await }
    });
    let handle = b.1.clone();
    eventually("B waits on A's lock", move || {
        handle.redis_stats().unwrap().locks_lost == 1
    })
    .await;
    let gone = Instant::now();
    holder.abort();
    let (status, body) = waiter.await??;
    let took = gone.elapsed();
    assert_eq!((status, &body[..]), (CacheStatus::Miss, &b"B v1"[..]));
    assert_eq!(calls_b.get(), 1);
    assert_eq!(locks_won(&b.1), 1, "B took the lock A gave back");
    assert!(
        took < Duration::from_secs(5),
        "B noticed the free lock, not its {lock_timeout:?} timeout ({took:?})"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_key_whose_refresh_holder_hangs_is_refreshed_by_another_instance_after_the_lease(
) -> TestResult {
    let Some(redis) = RedisServer::start("refresh holder hangs") else {
        return Ok(());
    };
    const CC: &str = "max-age=1, stale-while-revalidate=60";
    let lease = Duration::from_millis(1500);
    // Shorter than the lease, so a refresh that found the lock held gives up (and a later
    // stale hit asks again) well before the lease ends.
    let lock_timeout = Duration::from_millis(300);
    let layer = || SwrLayer::new().lock_timeout(lock_timeout);
    let gate = Gate::default();
    let (origin_a, calls_a) = gated_after_first(&gate, CC);
    let a = instance(&redis, layer(), lease, origin_a);
    // B's refresh answers for 10 minutes, so it is still fresh in Redis when D looks.
    let (origin_b, calls_b) = named_origin("B", "max-age=600");
    let b = instance(&redis, layer(), lease, origin_b);
    let (origin_c, calls_c) = named_origin("C", CC);
    let c = instance(&redis, layer(), lease, origin_c);

    // A loads v1; B and C take it from Redis.
    assert_eq!(
        call(&a.0, get("/s")).await?,
        (CacheStatus::Miss, "v1".into())
    );
    let handle = a.1.clone();
    eventually("A's write", move || {
        handle.redis_stats().unwrap().writes == 1
    })
    .await;
    for (service, _) in [&b, &c] {
        assert_eq!(call(service, get("/s")).await?.0, CacheStatus::SharedTier);
    }
    // Once stale, A's stale hit starts the refresh: A takes the lock and hangs at its origin.
    let won_before = locks_won(&a.1);
    let deadline = Deadline::after(Duration::from_secs(10), "/s stale on A");
    while call(&a.0, get("/s")).await?.0 != CacheStatus::Stale {
        deadline.tick().await;
    }
    let handle = a.1.clone();
    eventually("A holds the refresh lock", move || {
        locks_won(&handle) == won_before + 1
    })
    .await;
    let locked = Instant::now();
    let calls = calls_a.clone();
    eventually("A's refresh at its origin", move || calls.get() == 2).await;

    // B keeps being asked: stale at once while A holds the lock, then (the lease over) B's
    // own refresh takes the lock and B's value is answered.
    let deadline = Deadline::after(Duration::from_secs(15), "B's refresh");
    let took_over = loop {
        let begun = Instant::now();
        let (status, body) = call(&b.0, get("/s")).await?;
        assert!(
            begun.elapsed() < Duration::from_millis(500),
            "a stale hit never waits ({:?})",
            begun.elapsed()
        );
        if body == "B v1" {
            break locked.elapsed();
        }
        assert_eq!((status, &body[..]), (CacheStatus::Stale, &b"v1"[..]));
        deadline.tick().await;
    };
    assert_eq!(calls_b.get(), 1, "one refresh, by B");
    assert!(
        took_over >= lease - Duration::from_millis(200),
        "not before A's lease ended ({took_over:?})"
    );
    assert!(
        took_over < lease + lock_timeout + Duration::from_secs(3),
        "soon after it ended ({took_over:?})"
    );
    // C refreshes from Redis with B's value, without its origin.
    let deadline = Deadline::after(Duration::from_secs(10), "C taking B's value");
    while call(&c.0, get("/s")).await?.1 != "B v1" {
        deadline.tick().await;
    }
    assert_eq!(calls_c.get(), 0);
    // A's origin answers at last: its write, under the lock it lost, is refused.
    gate.open();
    let handle = a.1.clone();
    eventually("A's late write fenced off", move || {
        handle.redis_stats().unwrap().fenced_writes == 1
    })
    .await;
    let (origin_d, calls_d) = named_origin("D", CC);
    let d = instance(&redis, layer(), lease, origin_d);
    let (status, body) = call(&d.0, get("/s")).await?;
    assert_eq!((status, &body[..]), (CacheStatus::SharedTier, &b"B v1"[..]));
    assert_eq!(calls_d.get(), 0);
    Ok(())
}
