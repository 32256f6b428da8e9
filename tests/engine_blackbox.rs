//! Black-box tests of the generic engine (`tower_swr::engine`), written from its public API and
//! docs only (README "Without HTTP", the rustdoc of `engine`, `examples/config_cache.rs`).
//!
//! Every test runs on tokio's paused clock, which the cache reads; background refreshes are let
//! run with `settle` (a loop of `yield_now`).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::{advance, Instant};
use tower_swr::engine::{
    Claim, Freshness, Lifetime, Loaded, Remote, SharedTier, Status, SwrCache, TierFuture,
};

type Cache = SwrCache<String, u64>;
type LoadFuture = Pin<Box<dyn Future<Output = Result<Loaded<u64>, String>> + Send>>;

fn key(s: &str) -> String {
    s.to_string()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Lets spawned tasks (background refreshes, detached tier writes) run without moving the clock.
async fn settle() {
    for _ in 0..200 {
        tokio::task::yield_now().await;
    }
}

/// Moves the paused clock in small steps, letting tasks run between them.
async fn step(total: Duration) {
    let n = 20u32;
    for _ in 0..n {
        advance(total / n).await;
        settle().await;
    }
}

#[derive(Clone, Default)]
struct Calls(Arc<AtomicUsize>);

impl Calls {
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
    fn bump(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn fresh(ttl: u64) -> Freshness {
    Freshness::new(secs(ttl))
}

fn swr(ttl: u64, window: u64) -> Freshness {
    Freshness::new(secs(ttl)).with_stale_while_revalidate(secs(window))
}

fn sie(ttl: u64, window: u64) -> Freshness {
    Freshness::new(secs(ttl)).with_stale_if_error(secs(window))
}

/// A loader answering `value` after `delay`.
fn slow(
    calls: &Calls,
    value: u64,
    freshness: Freshness,
    delay: Duration,
) -> impl FnOnce() -> LoadFuture + Send + 'static {
    let calls = calls.clone();
    move || {
        calls.bump();
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok(Loaded::new(value, freshness))
        })
    }
}

fn ok(calls: &Calls, value: u64, freshness: Freshness) -> impl FnOnce() -> LoadFuture + Send {
    slow(calls, value, freshness, Duration::ZERO)
}

fn failing(calls: &Calls, message: &str) -> impl FnOnce() -> LoadFuture + Send + 'static {
    let calls = calls.clone();
    let message = message.to_string();
    move || {
        calls.bump();
        Box::pin(async move { Err(message) })
    }
}

fn slow_failing(
    calls: &Calls,
    message: &str,
    delay: Duration,
) -> impl FnOnce() -> LoadFuture + Send + 'static {
    let calls = calls.clone();
    let message = message.to_string();
    move || {
        calls.bump();
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            Err(message)
        })
    }
}

fn panicking(calls: &Calls, delay: Duration) -> impl FnOnce() -> LoadFuture + Send + 'static {
    let calls = calls.clone();
    move || {
        calls.bump();
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            panic!("loader panicked on purpose");
        })
    }
}

fn never_called() -> impl FnOnce() -> LoadFuture + Send + 'static {
    || Box::pin(async { Err("the loader must not be called".to_string()) })
}

// ---------------------------------------------------------------- basics, Status, Lookup

#[tokio::test(start_paused = true)]
async fn miss_then_fresh_calls_the_loader_once() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    let first = cache
        .get_or_load(key("a"), ok(&calls, 1, fresh(60)))
        .await
        .unwrap();
    assert_eq!((first.status, first.value), (Status::Miss, 1));
    assert!(!first.is_stale());
    for _ in 0..5 {
        let hit = cache
            .get_or_load(key("a"), ok(&calls, 2, fresh(60)))
            .await
            .unwrap();
        assert_eq!((hit.status, hit.value), (Status::Fresh, 1));
    }
    assert_eq!(calls.get(), 1);
    let stats = cache.stats();
    assert_eq!(
        (stats.misses, stats.fresh_hits, stats.stores, stats.entries),
        (1, 5, 1, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn lookup_reports_age_stored_at_and_staleness() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    let before = Instant::now();
    cache
        .get_or_load(key("a"), ok(&calls, 1, swr(10, 100)))
        .await
        .unwrap();
    advance(secs(4)).await;
    let got = cache.get("a").unwrap();
    assert_eq!(got.status, Status::Fresh);
    assert_eq!(got.age, secs(4));
    assert!(got.stored_at.into_std() >= before.into_std());
    assert!(!got.is_stale());
    assert!(!got.refreshing);
    advance(secs(10)).await;
    let got = cache.get("a").unwrap();
    assert_eq!(got.status, Status::Stale);
    assert!(got.is_stale());
    assert_eq!(got.age, secs(14));
}

#[tokio::test(start_paused = true)]
async fn get_loads_nothing_and_reports_expired_past_the_window() {
    let cache: Cache = SwrCache::builder().build();
    assert!(cache.get("a").is_none());
    cache.insert(key("a"), 1, swr(10, 10).with_stale_if_error(secs(100)));
    advance(secs(25)).await;
    let got = cache
        .get("a")
        .expect("inside the stale-if-error window: still held");
    assert_eq!(got.status, Status::Expired);
    assert!(got.is_stale());
    assert_eq!(cache.stats().refreshes_started, 0);
    advance(secs(200)).await;
    assert!(cache.get("a").is_none(), "past every deadline");
}

#[tokio::test(start_paused = true)]
async fn clones_share_one_cache() {
    let cache: Cache = SwrCache::new(1 << 20);
    let other = cache.clone();
    cache.insert(key("a"), 9, fresh(60));
    assert_eq!(other.get("a").unwrap().value, 9);
    assert_eq!(other.len(), 1);
    assert_eq!(cache.stats().capacity_bytes, 1 << 20);
}

#[tokio::test(start_paused = true)]
async fn default_builder_matches_documented_capacity() {
    let cache: Cache = SwrCache::builder().build();
    assert_eq!(cache.stats().capacity_bytes, 64 << 20);
    assert!(
        cache.max_entry_bytes() >= 1 << 20,
        "entries up to 1 MiB by default"
    );
    assert!(cache.is_empty());
}

// ---------------------------------------------------------------- stale-while-revalidate

#[tokio::test(start_paused = true)]
async fn stale_is_served_at_once_with_one_background_refresh() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    cache
        .get_or_load(key("a"), ok(&calls, 1, swr(10, 100)))
        .await
        .unwrap();
    advance(secs(11)).await;
    let started = Instant::now();
    let stale = cache
        .get_or_load(key("a"), slow(&calls, 2, swr(10, 100), secs(5)))
        .await
        .unwrap();
    assert_eq!((stale.status, stale.value), (Status::Stale, 1));
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "a stale hit does not wait"
    );
    settle().await;
    assert!(cache.is_refreshing("a"));
    assert!(cache.get("a").unwrap().refreshing);
    // More stale hits while it runs start nothing more.
    for _ in 0..10 {
        let again = cache
            .get_or_load(key("a"), ok(&calls, 3, fresh(10)))
            .await
            .unwrap();
        assert_eq!((again.status, again.value), (Status::Stale, 1));
    }
    step(secs(6)).await;
    assert_eq!(calls.get(), 2);
    assert!(!cache.is_refreshing("a"));
    let now = cache.get("a").unwrap();
    assert_eq!((now.status, now.value), (Status::Fresh, 2));
    let stats = cache.stats();
    assert_eq!((stats.refreshes_started, stats.refreshes_succeeded), (1, 1));
    assert_eq!(stats.stale_hits, 11);
}

#[tokio::test(start_paused = true)]
async fn hundred_tasks_on_a_stale_key_make_one_refresh() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    cache.insert(key("a"), 1, swr(1, 100));
    advance(secs(2)).await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let cache = cache.clone();
        let calls = calls.clone();
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load(key("a"), slow(&calls, 100 + i, swr(60, 100), ms(50)))
                .await
                .unwrap()
        }));
    }
    for task in tasks {
        let got = task.await.unwrap();
        assert_eq!((got.status, got.value), (Status::Stale, 1));
    }
    step(secs(1)).await;
    assert_eq!(calls.get(), 1);
    assert_eq!(cache.get("a").unwrap().status, Status::Fresh);
}

#[tokio::test(start_paused = true)]
async fn past_the_stale_window_the_caller_waits_for_a_load() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    cache.insert(key("a"), 1, swr(10, 10));
    advance(secs(21)).await;
    let got = cache
        .get_or_load(key("a"), ok(&calls, 2, fresh(10)))
        .await
        .unwrap();
    assert_eq!((got.status, got.value), (Status::Miss, 2));
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_keeps_the_old_value() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    cache.insert(key("a"), 1, swr(1, 100));
    advance(secs(2)).await;
    let got = cache
        .get_or_load(key("a"), failing(&calls, "down"))
        .await
        .unwrap();
    assert_eq!(got.value, 1);
    settle().await;
    assert_eq!(calls.get(), 1);
    let kept = cache.get("a").unwrap();
    assert_eq!((kept.status, kept.value), (Status::Stale, 1));
    let stats = cache.stats();
    assert_eq!((stats.refreshes_failed, stats.refreshes_succeeded), (1, 0));
}

/// When each refresh of a key that keeps failing starts: seconds after the previous one.
async fn backoff_waits(cache: &Cache, count: usize) -> Vec<u64> {
    let calls = Calls::default();
    cache.insert(key("a"), 1, swr(1, 100_000));
    advance(secs(2)).await;
    let (mut waits, mut last_call, mut last_at) = (Vec::new(), 0, 0u64);
    for t in 0..1_000u64 {
        cache
            .get_or_load(key("a"), failing(&calls, "down"))
            .await
            .unwrap();
        settle().await;
        if calls.get() != last_call {
            if last_call > 0 {
                waits.push(t - last_at);
            }
            (last_call, last_at) = (calls.get(), t);
            if waits.len() == count {
                break;
            }
        }
        advance(secs(1)).await;
    }
    waits
}

/// What the backoff does: each wait is within [half, all] of base doubling up to max.
#[tokio::test(start_paused = true)]
async fn refresh_backoff_grows_and_is_capped() {
    let cache: Cache = SwrCache::builder()
        .refresh_backoff(secs(10), secs(60))
        .circuit_breaker(0, secs(1))
        .build();
    let waits = backoff_waits(&cache, 6).await;
    assert_eq!(waits.len(), 6, "{waits:?}");
    for (wait, nominal) in waits.iter().zip([10u64, 20, 40, 60, 60, 60]) {
        // +1: the probe moves in whole seconds.
        assert!(
            *wait >= nominal / 2 && *wait <= nominal + 1,
            "{waits:?}: {wait} s for a nominal {nominal} s"
        );
    }
    let stats = cache.stats();
    assert_eq!(stats.refreshes_failed, 7);
    assert_eq!(
        cache.get("a").unwrap().value,
        1,
        "failed refreshes keep the value"
    );
}

#[tokio::test(start_paused = true)]
async fn a_successful_refresh_after_failures_replaces_the_value() {
    let cache: Cache = SwrCache::builder()
        .refresh_backoff(secs(1), secs(1))
        .build();
    let calls = Calls::default();
    cache.insert(key("a"), 1, swr(1, 1000));
    advance(secs(2)).await;
    cache
        .get_or_load(key("a"), failing(&calls, "down"))
        .await
        .unwrap();
    settle().await;
    advance(secs(2)).await;
    cache
        .get_or_load(key("a"), ok(&calls, 2, swr(100, 1000)))
        .await
        .unwrap();
    settle().await;
    assert_eq!(calls.get(), 2);
    let now = cache.get("a").unwrap();
    assert_eq!((now.status, now.value), (Status::Fresh, 2));
}

#[tokio::test(start_paused = true)]
async fn refresh_timeout_abandons_a_hanging_refresh() {
    let cache: Cache = SwrCache::builder().refresh_timeout(secs(1)).build();
    let calls = Calls::default();
    cache.insert(key("a"), 1, swr(1, 1000));
    advance(secs(2)).await;
    cache
        .get_or_load(key("a"), slow(&calls, 2, fresh(10), secs(3600)))
        .await
        .unwrap();
    settle().await;
    assert!(cache.is_refreshing("a"));
    step(secs(2)).await;
    assert!(!cache.is_refreshing("a"));
    let stats = cache.stats();
    assert_eq!((stats.refreshes_timed_out, stats.refreshes_failed), (1, 1));
    assert_eq!(stats.refreshes_running, 0);
    assert_eq!(cache.get("a").unwrap().value, 1);
}

#[tokio::test(start_paused = true)]
async fn refresh_timeout_zero_turns_it_off() {
    let cache: Cache = SwrCache::builder().refresh_timeout(Duration::ZERO).build();
    let calls = Calls::default();
    cache.insert(key("a"), 1, swr(1, 10_000));
    advance(secs(2)).await;
    cache
        .get_or_load(key("a"), slow(&calls, 2, fresh(10_000), secs(100)))
        .await
        .unwrap();
    step(secs(60)).await;
    assert!(
        cache.is_refreshing("a"),
        "no timeout: still running after 60 s"
    );
    assert_eq!(cache.stats().refreshes_timed_out, 0);
    step(secs(50)).await;
    assert_eq!(cache.get("a").unwrap().value, 2);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_refresh_keeps_the_value_and_is_counted() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    cache.insert(key("a"), 1, swr(1, 1000));
    advance(secs(2)).await;
    let got = cache
        .get_or_load(key("a"), panicking(&calls, ms(1)))
        .await
        .unwrap();
    assert_eq!(got.value, 1);
    step(ms(100)).await;
    let stats = cache.stats();
    assert_eq!((stats.refreshes_panicked, stats.refreshes_failed), (1, 1));
    assert!(!cache.is_refreshing("a"));
    assert_eq!(cache.get("a").unwrap().value, 1);
}

// ---------------------------------------------------------------- coalescing

#[tokio::test(start_paused = true)]
async fn hundred_tasks_on_a_cold_key_make_one_load() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let cache = cache.clone();
        let calls = calls.clone();
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load(key("a"), slow(&calls, i, fresh(60), ms(100)))
                .await
                .unwrap()
        }));
    }
    let mut statuses = HashMap::new();
    let mut values = Vec::new();
    for task in tasks {
        let got = task.await.unwrap();
        *statuses.entry(got.status).or_insert(0) += 1;
        values.push(got.value);
    }
    assert_eq!(calls.get(), 1);
    assert!(values.windows(2).all(|w| w[0] == w[1]), "one shared value");
    assert_eq!(statuses.get(&Status::Miss), Some(&1));
    assert_eq!(statuses.get(&Status::Collapsed), Some(&99));
    let stats = cache.stats();
    assert_eq!(
        (stats.misses, stats.collapsed, stats.loads_running),
        (1, 99, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn different_keys_load_independently_and_concurrently() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..10u64 {
        let cache = cache.clone();
        let calls = calls.clone();
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load(format!("k{i}"), slow(&calls, i, fresh(60), secs(1)))
                .await
                .unwrap()
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let got = task.await.unwrap();
        assert_eq!((got.status, got.value), (Status::Miss, i as u64));
    }
    assert_eq!(calls.get(), 10);
    assert!(
        started.elapsed() < secs(2),
        "one key's load does not hold another's"
    );
    assert_eq!(cache.len(), 10);
}

#[tokio::test(start_paused = true)]
async fn lock_timeout_lets_one_waiter_load_once_per_timeout() {
    let cache: Cache = SwrCache::builder().lock_timeout(secs(1)).build();
    let leader_calls = Calls::default();
    let waiter_calls = Calls::default();
    let leader = {
        let cache = cache.clone();
        let calls = leader_calls.clone();
        tokio::spawn(async move {
            cache
                .get_or_load(key("a"), slow(&calls, 1, fresh(60), secs(10)))
                .await
        })
    };
    settle().await;
    let mut waiters = Vec::new();
    for _ in 0..5 {
        let cache = cache.clone();
        let calls = waiter_calls.clone();
        waiters.push(tokio::spawn(async move {
            cache
                .get_or_load(key("a"), slow(&calls, 2, fresh(60), ms(10)))
                .await
                .unwrap()
        }));
    }
    step(ms(1500)).await;
    for waiter in waiters {
        assert!(
            waiter.is_finished(),
            "waiters are answered after the lock timeout"
        );
        assert_eq!(waiter.await.unwrap().value, 2);
    }
    assert_eq!(waiter_calls.get(), 1, "ONE waiter starts another load");
    assert_eq!(leader_calls.get(), 1);
    leader.abort();
}

// ---------------------------------------------------------------- errors

#[tokio::test(start_paused = true)]
async fn cold_error_is_the_loaders_own_and_fast() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    let started = Instant::now();
    let err = cache
        .get_or_load(key("a"), failing(&calls, "db down"))
        .await
        .unwrap_err();
    assert_eq!(*err, "db down");
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert!(
        cache.get("a").is_none(),
        "a cold start never invents a value"
    );
    assert_eq!(cache.stats().loads_failed, 1);
}

#[tokio::test(start_paused = true)]
async fn waiters_share_the_one_failing_load_and_its_error() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let cache = cache.clone();
        let calls = calls.clone();
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load(key("a"), slow_failing(&calls, "boom", ms(100)))
                .await
        }));
    }
    let mut errors = Vec::new();
    for task in tasks {
        errors.push(task.await.unwrap().unwrap_err());
    }
    assert_eq!(calls.get(), 1);
    assert!(errors.iter().all(|e| **e == "boom"));
    assert!(
        errors.windows(2).all(|w| Arc::ptr_eq(&w[0], &w[1])),
        "one error shared as an Arc"
    );
}

#[tokio::test(start_paused = true)]
async fn remember_failures_default_one_second() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    cache
        .get_or_load(key("a"), failing(&calls, "first"))
        .await
        .unwrap_err();
    advance(ms(500)).await;
    let again = cache
        .get_or_load(key("a"), failing(&calls, "second"))
        .await
        .unwrap_err();
    assert_eq!(*again, "first");
    assert_eq!(calls.get(), 1);
    assert_eq!(cache.stats().failure_hits, 1);
    advance(ms(600)).await;
    let later = cache
        .get_or_load(key("a"), ok(&calls, 5, fresh(60)))
        .await
        .unwrap();
    assert_eq!((later.status, later.value), (Status::Miss, 5));
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn remember_failures_configured_and_zero() {
    let long: Cache = SwrCache::builder().remember_failures(secs(30)).build();
    let calls = Calls::default();
    long.get_or_load(key("a"), failing(&calls, "x"))
        .await
        .unwrap_err();
    advance(secs(20)).await;
    long.get_or_load(key("a"), failing(&calls, "y"))
        .await
        .unwrap_err();
    assert_eq!(calls.get(), 1);
    advance(secs(11)).await;
    long.get_or_load(key("a"), failing(&calls, "z"))
        .await
        .unwrap_err();
    assert_eq!(calls.get(), 2);

    let off: Cache = SwrCache::builder()
        .remember_failures(Duration::ZERO)
        .build();
    let calls = Calls::default();
    for _ in 0..3 {
        off.get_or_load(key("a"), failing(&calls, "x"))
            .await
            .unwrap_err();
    }
    assert_eq!(calls.get(), 3);
    assert_eq!(off.stats().failure_hits, 0);
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_serves_the_old_value_then_stops() {
    let cache: Cache = SwrCache::builder()
        .remember_failures(Duration::ZERO)
        .build();
    let calls = Calls::default();
    cache
        .get_or_load(key("a"), ok(&calls, 1, sie(10, 100)))
        .await
        .unwrap();
    advance(secs(20)).await;
    let got = cache
        .get_or_load(key("a"), failing(&calls, "down"))
        .await
        .unwrap();
    assert_eq!((got.status, got.value), (Status::StaleIfError, 1));
    assert!(got.is_stale());
    assert_eq!(got.age, secs(20));
    let stats = cache.stats();
    assert_eq!((stats.stale_if_error, stats.loads_failed), (1, 1));
    advance(secs(100)).await;
    let err = cache
        .get_or_load(key("a"), failing(&calls, "still down"))
        .await
        .unwrap_err();
    assert_eq!(*err, "still down");
}

#[tokio::test(start_paused = true)]
async fn a_stale_if_error_value_wins_over_a_remembered_failure() {
    let cache: Cache = SwrCache::builder().remember_failures(secs(30)).build();
    let calls = Calls::default();
    cache.insert(key("a"), 1, sie(1, 1000));
    advance(secs(5)).await;
    for _ in 0..3 {
        let got = cache
            .get_or_load(key("a"), failing(&calls, "down"))
            .await
            .unwrap();
        assert_eq!((got.status, got.value), (Status::StaleIfError, 1));
    }
    assert!(calls.get() >= 1);
}

#[tokio::test(start_paused = true)]
async fn a_success_after_stale_if_error_replaces_the_value() {
    let cache: Cache = SwrCache::builder()
        .remember_failures(Duration::ZERO)
        .build();
    let calls = Calls::default();
    cache.insert(key("a"), 1, sie(1, 1000));
    advance(secs(5)).await;
    cache
        .get_or_load(key("a"), failing(&calls, "down"))
        .await
        .unwrap();
    let got = cache
        .get_or_load(key("a"), ok(&calls, 2, fresh(60)))
        .await
        .unwrap();
    assert_eq!((got.status, got.value), (Status::Miss, 2));
    assert_eq!(cache.get("a").unwrap().value, 2);
}

// ---------------------------------------------------------------- panics

#[tokio::test(start_paused = true)]
async fn a_panicking_loader_reaches_its_caller_and_does_not_poison() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    let task = {
        let cache = cache.clone();
        let calls = calls.clone();
        tokio::spawn(async move { cache.get_or_load(key("a"), panicking(&calls, ms(1))).await })
    };
    assert!(task.await.unwrap_err().is_panic());
    assert_eq!(calls.get(), 1);
    assert!(cache.get("a").is_none());
    assert_eq!(cache.stats().loads_running, 0);
    advance(secs(2)).await;
    let got = cache
        .get_or_load(key("a"), ok(&calls, 3, fresh(60)))
        .await
        .unwrap();
    assert_eq!((got.status, got.value), (Status::Miss, 3));
    let other = cache
        .get_or_load(key("b"), ok(&calls, 4, fresh(60)))
        .await
        .unwrap();
    assert_eq!(other.value, 4);
}

#[tokio::test(start_paused = true)]
async fn waiters_of_a_panicking_loader_panic_too_and_it_runs_once() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let cache = cache.clone();
        let calls = calls.clone();
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load(key("a"), panicking(&calls, ms(100)))
                .await
        }));
    }
    for task in tasks {
        assert!(task.await.unwrap_err().is_panic());
    }
    assert_eq!(calls.get(), 1, "a loader that panics is called once");
}

#[tokio::test(start_paused = true)]
async fn a_panicking_loader_is_answered_by_a_stale_if_error_value() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    cache.insert(key("a"), 1, sie(1, 1000));
    advance(secs(5)).await;
    let task = {
        let cache = cache.clone();
        let calls = calls.clone();
        tokio::spawn(async move { cache.get_or_load(key("a"), panicking(&calls, ms(1))).await })
    };
    let got = task
        .await
        .expect("stale-if-error answers instead of the panic")
        .unwrap();
    assert_eq!((got.status, got.value), (Status::StaleIfError, 1));
}

// ---------------------------------------------------------------- cancellation

/// docs/concurrency.md C3: a dropped leader ends its flight and its waiters, woken with
/// `Abandoned`, compete again: ONE of them loads, the others take its value. (The dropped
/// caller's load is dropped with it: it is not carried on in the background.)
#[tokio::test(start_paused = true)]
async fn a_dropped_leader_hands_over_to_one_waiter() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    let leader = {
        let cache = cache.clone();
        let calls = calls.clone();
        tokio::spawn(async move {
            cache
                .get_or_load(key("a"), slow(&calls, 1, fresh(60), secs(1)))
                .await
        })
    };
    settle().await;
    let mut waiters = Vec::new();
    for i in 0..10 {
        let cache = cache.clone();
        let calls = calls.clone();
        waiters.push(tokio::spawn(async move {
            cache
                .get_or_load(key("a"), slow(&calls, 10 + i, fresh(60), secs(1)))
                .await
        }));
    }
    step(ms(300)).await;
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    step(secs(2)).await;
    let mut values = Vec::new();
    for waiter in waiters {
        values.push(
            waiter
                .await
                .unwrap()
                .expect("the waiters still get a value")
                .value,
        );
    }
    assert!(
        values.windows(2).all(|w| w[0] == w[1]),
        "one value: {values:?}"
    );
    assert_eq!(calls.get(), 2, "the dropped load and ONE load by a waiter");
    assert_eq!(cache.get("a").unwrap().value, values[0]);
    assert_eq!(cache.stats().loads_running, 0);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiter_does_not_disturb_the_leader() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    let leader = {
        let cache = cache.clone();
        let calls = calls.clone();
        tokio::spawn(async move {
            cache
                .get_or_load(key("a"), slow(&calls, 1, fresh(60), secs(1)))
                .await
        })
    };
    settle().await;
    let waiter = {
        let cache = cache.clone();
        let calls = calls.clone();
        tokio::spawn(async move {
            cache
                .get_or_load(key("a"), slow(&calls, 2, fresh(60), secs(1)))
                .await
        })
    };
    step(ms(300)).await;
    waiter.abort();
    step(secs(2)).await;
    assert_eq!(leader.await.unwrap().unwrap().value, 1);
    assert_eq!(calls.get(), 1);
    let hit = cache.get_or_load(key("a"), never_called()).await.unwrap();
    assert_eq!(hit.status, Status::Fresh);
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_sole_caller_leaves_the_key_usable() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    let cut = tokio::time::timeout(
        ms(100),
        cache.get_or_load(key("a"), slow(&calls, 1, fresh(60), secs(1))),
    )
    .await;
    assert!(cut.is_err());
    step(secs(2)).await;
    // Whether the abandoned load finished in the background or not, the key is not stuck.
    let got = tokio::time::timeout(
        secs(3),
        cache.get_or_load(key("a"), ok(&calls, 2, fresh(60))),
    )
    .await
    .expect("not stuck behind the dropped caller")
    .unwrap();
    assert!(got.value == 1 || got.value == 2);
    assert!(calls.get() <= 2);
    assert_eq!(cache.stats().loads_running, 0);
}

// ---------------------------------------------------------------- invalidation

#[tokio::test(start_paused = true)]
async fn remove_during_a_load_is_not_undone() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    cache.insert(key("a"), 0, swr(1, 1));
    advance(secs(10)).await;
    let loader = {
        let cache = cache.clone();
        let calls = calls.clone();
        tokio::spawn(async move {
            cache
                .get_or_load(key("a"), slow(&calls, 1, fresh(60), secs(1)))
                .await
        })
    };
    step(ms(200)).await;
    cache.remove("a");
    step(secs(2)).await;
    let answered = loader.await.unwrap().unwrap();
    assert_eq!(answered.value, 1, "the caller still gets its value");
    assert!(
        cache.get("a").is_none(),
        "the purge is not undone by the load"
    );
    // A caller after the purge loads on its own.
    let after = cache
        .get_or_load(key("a"), ok(&calls, 2, fresh(60)))
        .await
        .unwrap();
    assert_eq!((after.status, after.value), (Status::Miss, 2));
}

#[tokio::test(start_paused = true)]
async fn a_caller_after_remove_does_not_wait_for_the_fenced_load() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    let first = {
        let cache = cache.clone();
        let calls = calls.clone();
        tokio::spawn(async move {
            cache
                .get_or_load(key("a"), slow(&calls, 1, fresh(60), secs(10)))
                .await
        })
    };
    step(ms(200)).await;
    cache.remove("a");
    let started = Instant::now();
    let second = {
        let cache = cache.clone();
        let calls = calls.clone();
        tokio::spawn(async move {
            cache
                .get_or_load(key("a"), slow(&calls, 2, fresh(60), ms(100)))
                .await
        })
    };
    step(secs(1)).await;
    assert!(second.is_finished());
    let got = second.await.unwrap().unwrap();
    assert_eq!(got.value, 2);
    assert!(started.elapsed() < secs(2));
    assert_eq!(calls.get(), 2);
    first.abort();
}

#[tokio::test(start_paused = true)]
async fn clear_during_a_load_is_not_undone() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    let loader = {
        let cache = cache.clone();
        let calls = calls.clone();
        tokio::spawn(async move {
            cache
                .get_or_load(key("a"), slow(&calls, 1, fresh(60), secs(1)))
                .await
        })
    };
    step(ms(200)).await;
    cache.clear();
    step(secs(2)).await;
    assert_eq!(loader.await.unwrap().unwrap().value, 1);
    assert!(cache.get("a").is_none());
}

#[tokio::test(start_paused = true)]
async fn insert_during_a_load_wins() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    let loader = {
        let cache = cache.clone();
        let calls = calls.clone();
        tokio::spawn(async move {
            cache
                .get_or_load(key("a"), slow(&calls, 1, fresh(60), secs(1)))
                .await
        })
    };
    step(ms(200)).await;
    assert!(cache.insert(key("a"), 42, fresh(60)));
    step(secs(2)).await;
    loader.await.unwrap().unwrap();
    assert_eq!(cache.get("a").unwrap().value, 42, "the inserted value wins");
}

#[tokio::test(start_paused = true)]
async fn insert_replaces_and_serves_fresh_without_loading() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    assert!(cache.insert(key("a"), 1, fresh(60)));
    assert!(cache.insert(key("a"), 2, fresh(60)));
    let got = cache
        .get_or_load(key("a"), ok(&calls, 3, fresh(60)))
        .await
        .unwrap();
    assert_eq!((got.status, got.value), (Status::Fresh, 2));
    assert_eq!(calls.get(), 0);
    assert_eq!(cache.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn remove_reports_whether_something_was_there() {
    let cache: Cache = SwrCache::builder().build();
    assert!(!cache.remove("a"));
    cache.insert(key("a"), 1, fresh(60));
    assert!(cache.remove("a"));
    assert!(!cache.remove("a"));
    assert!(cache.get("a").is_none());
    assert!(cache.is_empty());
}

#[tokio::test(start_paused = true)]
async fn mark_stale_serves_stale_and_refreshes() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    assert!(!cache.mark_stale("a"));
    cache.insert(key("a"), 1, swr(600, 600));
    assert!(cache.mark_stale("a"));
    let got = cache
        .get_or_load(key("a"), ok(&calls, 2, fresh(600)))
        .await
        .unwrap();
    assert_eq!((got.status, got.value), (Status::Stale, 1));
    settle().await;
    assert_eq!(calls.get(), 1);
    assert_eq!(cache.get("a").unwrap().value, 2);
}

#[tokio::test(start_paused = true)]
async fn mark_stale_where_and_remove_if_count_matches() {
    let cache: Cache = SwrCache::builder().build();
    for i in 0..10 {
        cache.insert(format!("user:{i}"), i, swr(600, 600));
        cache.insert(format!("team:{i}"), i, swr(600, 600));
    }
    assert_eq!(cache.mark_stale_where(|k| k.starts_with("user:")), 10);
    assert_eq!(cache.get("user:3").unwrap().status, Status::Stale);
    assert_eq!(cache.get("team:3").unwrap().status, Status::Fresh);
    assert_eq!(cache.remove_if(|k| k.starts_with("team:")), 10);
    assert_eq!(cache.len(), 10);
    assert!(cache.get("team:3").is_none());
    assert_eq!(cache.remove_if(|_| false), 0);
}

#[tokio::test(start_paused = true)]
async fn invalidate_scope_without_a_tier_is_local() {
    let cache: Cache = SwrCache::builder().build();
    for i in 0..4 {
        cache.insert(format!("a/{i}"), i, swr(600, 600));
        cache.insert(format!("b/{i}"), i, swr(600, 600));
    }
    assert_eq!(
        cache.invalidate_scope(b"a/", true, |k| k.starts_with("a/")),
        4
    );
    assert_eq!(cache.get("a/1").unwrap().status, Status::Stale);
    assert_eq!(
        cache.invalidate_scope(b"b/", false, |k| k.starts_with("b/")),
        4
    );
    assert!(cache.get("b/1").is_none());
    assert_eq!(cache.len(), 4);
}

#[tokio::test(start_paused = true)]
async fn clear_empties_the_cache() {
    let cache: Cache = SwrCache::builder().build();
    for i in 0..50 {
        cache.insert(format!("k{i}"), i, fresh(60));
    }
    assert_eq!(cache.len(), 50);
    cache.clear();
    assert!(cache.is_empty());
    assert_eq!(cache.stats().entries, 0);
    assert!(cache.get("k1").is_none());
}

// ---------------------------------------------------------------- capacity

#[tokio::test(start_paused = true)]
async fn the_byte_budget_evicts_and_is_never_exceeded() {
    let budget = 100_000;
    let cache: Cache = SwrCache::builder()
        .capacity_bytes(budget)
        .largest_entry_bytes(2_000)
        .weigher(|_, _| 1_000)
        .build();
    for i in 0..1_000u64 {
        cache.insert(format!("k{i}"), i, fresh(600));
        let stats = cache.stats();
        assert!(
            stats.bytes <= budget,
            "{} bytes over a budget of {budget}",
            stats.bytes
        );
    }
    let stats = cache.stats();
    assert!(stats.evictions > 0);
    assert!(cache.len() < 1_000);
    assert!(
        cache.len() > 10,
        "the budget holds more than a handful: {}",
        cache.len()
    );
    assert_eq!(stats.entries as usize, cache.len());
}

#[tokio::test(start_paused = true)]
async fn an_entry_over_the_max_is_not_stored_but_still_returned() {
    let cache: Cache = SwrCache::builder()
        .capacity_bytes(1 << 20)
        .largest_entry_bytes(1_000)
        .weigher(|_, v| *v)
        .build();
    let calls = Calls::default();
    // `largest_entry_bytes` is a floor ("must stay storable"): the store may allow more.
    let max = cache.max_entry_bytes();
    assert!(max >= 1_000);
    assert!(
        max < 1 << 20,
        "an entry cannot be heavier than the whole budget"
    );
    let big = max + 1;
    let got = cache
        .get_or_load(key("big"), ok(&calls, big, fresh(60)))
        .await
        .unwrap();
    assert_eq!((got.status, got.value), (Status::Miss, big));
    assert!(cache.get("big").is_none());
    assert_eq!(cache.stats().store_rejections, 1);
    // The next caller loads again.
    cache
        .get_or_load(key("big"), ok(&calls, big, fresh(60)))
        .await
        .unwrap();
    assert_eq!(calls.get(), 2);
    // insert: refused, and the old value stays.
    assert!(cache.insert(key("small"), 10, fresh(60)));
    assert!(!cache.insert(key("small"), big, fresh(60)));
    assert_eq!(cache.get("small").unwrap().value, 10);
}

#[tokio::test(start_paused = true)]
async fn stats_bytes_follow_the_weigher() {
    let cache: Cache = SwrCache::builder().weigher(|_, v| *v).build();
    cache.insert(key("a"), 10_000, fresh(60));
    let one = cache.stats().bytes;
    assert!(one >= 10_000);
    cache.insert(key("b"), 20_000, fresh(60));
    let two = cache.stats().bytes;
    assert!(two >= one + 20_000, "{one} then {two}");
    cache.remove("b");
    assert_eq!(cache.stats().bytes, one);
}

// ---------------------------------------------------------------- circuit breaker, jitter, early refresh

#[tokio::test(start_paused = true)]
async fn circuit_breaker_pauses_refreshes_then_resumes() {
    let cache: Cache = SwrCache::builder()
        .circuit_breaker(2, secs(30))
        .refresh_backoff(ms(1), ms(1))
        .build();
    let calls = Calls::default();
    for k in ["a", "b", "c"] {
        cache.insert(key(k), 1, swr(1, 1000));
    }
    advance(secs(2)).await;
    for k in ["a", "b"] {
        cache
            .get_or_load(key(k), failing(&calls, "down"))
            .await
            .unwrap();
        settle().await;
    }
    assert_eq!(calls.get(), 2);
    assert!(cache.stats().refreshes_paused);
    let got = cache
        .get_or_load(key("c"), ok(&calls, 2, fresh(100)))
        .await
        .unwrap();
    assert_eq!(
        (got.status, got.value),
        (Status::Stale, 1),
        "stale keeps being served"
    );
    settle().await;
    assert_eq!(calls.get(), 2, "no refresh while the breaker is open");
    advance(secs(31)).await;
    cache
        .get_or_load(key("c"), ok(&calls, 2, fresh(100)))
        .await
        .unwrap();
    settle().await;
    assert_eq!(calls.get(), 3);
    assert_eq!(cache.get("c").unwrap().value, 2);
    assert!(!cache.stats().refreshes_paused);
}

#[tokio::test(start_paused = true)]
async fn circuit_breaker_threshold_zero_disables_it() {
    let cache: Cache = SwrCache::builder()
        .circuit_breaker(0, secs(30))
        .refresh_backoff(ms(1), ms(1))
        .build();
    let calls = Calls::default();
    for i in 0..20 {
        cache.insert(format!("k{i}"), 1, swr(1, 1000));
    }
    advance(secs(2)).await;
    for i in 0..20 {
        cache
            .get_or_load(format!("k{i}"), failing(&calls, "down"))
            .await
            .unwrap();
        settle().await;
    }
    assert_eq!(calls.get(), 20);
    assert!(!cache.stats().refreshes_paused);
}

#[tokio::test(start_paused = true)]
async fn ttl_jitter_spreads_expiry() {
    let cache: Cache = SwrCache::builder().ttl_jitter(0.5).build();
    let calls = Calls::default();
    for i in 0..200 {
        cache
            .get_or_load(format!("k{i}"), ok(&calls, i, swr(100, 1000)))
            .await
            .unwrap();
    }
    advance(secs(45)).await;
    let fresh_count = |cache: &Cache| {
        (0..200)
            .filter(|i| cache.get(&format!("k{i}")).unwrap().status == Status::Fresh)
            .count()
    };
    assert_eq!(
        fresh_count(&cache),
        200,
        "±50 %: nothing expires before 50 s"
    );
    advance(secs(55)).await;
    let at_100 = fresh_count(&cache);
    assert!(
        at_100 > 10 && at_100 < 190,
        "{at_100} of 200 fresh at 100 s"
    );
    advance(secs(55)).await;
    assert_eq!(fresh_count(&cache), 0, "nothing lives past 150 s");
}

#[tokio::test(start_paused = true)]
async fn without_jitter_keys_expire_together() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    for i in 0..50 {
        cache
            .get_or_load(format!("k{i}"), ok(&calls, i, swr(100, 1000)))
            .await
            .unwrap();
    }
    advance(ms(99_999)).await;
    assert!((0..50).all(|i| cache.get(&format!("k{i}")).unwrap().status == Status::Fresh));
    advance(ms(2)).await;
    assert!((0..50).all(|i| cache.get(&format!("k{i}")).unwrap().status == Status::Stale));
}

#[tokio::test(start_paused = true)]
async fn early_refresh_starts_a_refresh_from_a_fresh_hit() {
    let cache: Cache = SwrCache::builder().early_refresh(100.0).build();
    let calls = Calls::default();
    // A load that takes 10 s (measured by the engine).
    cache
        .get_or_load(key("a"), slow(&calls, 1, swr(20, 100), secs(10)))
        .await
        .unwrap();
    advance(secs(15)).await;
    for _ in 0..20 {
        let got = cache
            .get_or_load(key("a"), ok(&calls, 2, fresh(100)))
            .await
            .unwrap();
        assert_eq!(got.status, Status::Fresh);
        settle().await;
    }
    assert_eq!(calls.get(), 2, "one early refresh");
    assert_eq!(cache.get("a").unwrap().value, 2);
    assert_eq!(cache.stats().refreshes_started, 1);
}

/// `Loaded::with_load_time` "records how long producing the value took (for the optional
/// early refresh)": a loader that reports 10 s but returns at once is refreshed early as one
/// that took 10 s (found by this file: `get_or_load` used to overwrite it).
#[tokio::test(start_paused = true)]
async fn early_refresh_uses_the_load_time_the_loader_reports() {
    let cache: Cache = SwrCache::builder().early_refresh(100.0).build();
    let calls = Calls::default();
    let loaded = Loaded::new(1, swr(20, 100)).with_load_time(secs(10));
    cache
        .get_or_load(key("a"), move || async move { Ok::<_, String>(loaded) })
        .await
        .unwrap();
    assert_eq!(cache.lifetime("a").unwrap().load_time, secs(10));
    advance(secs(15)).await;
    for _ in 0..20 {
        cache
            .get_or_load(key("a"), ok(&calls, 2, fresh(100)))
            .await
            .unwrap();
        settle().await;
    }
    assert_eq!(calls.get(), 1, "one early refresh");
}

#[tokio::test(start_paused = true)]
async fn without_early_refresh_fresh_hits_never_refresh() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    cache
        .get_or_load(key("a"), slow(&calls, 1, swr(20, 100), secs(10)))
        .await
        .unwrap();
    advance(secs(19)).await;
    for _ in 0..50 {
        cache
            .get_or_load(key("a"), ok(&calls, 2, fresh(100)))
            .await
            .unwrap();
        settle().await;
    }
    assert_eq!(calls.get(), 1);
    assert_eq!(cache.stats().refreshes_started, 0);
}

// ---------------------------------------------------------------- shutdown

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_refreshes_and_stops_new_ones() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    cache.insert(key("a"), 1, swr(1, 1000));
    cache.insert(key("b"), 1, swr(1, 1000));
    advance(secs(2)).await;
    cache
        .get_or_load(key("a"), slow(&calls, 2, fresh(100), secs(10)))
        .await
        .unwrap();
    settle().await;
    assert!(
        !cache.shutdown(secs(1)).await,
        "the refresh is still running"
    );
    assert!(cache.shutdown(secs(20)).await);
    assert_eq!(cache.get("a").unwrap().value, 2);
    let got = cache
        .get_or_load(key("b"), ok(&calls, 3, fresh(100)))
        .await
        .unwrap();
    assert_eq!(
        (got.status, got.value),
        (Status::Stale, 1),
        "lookups keep working"
    );
    settle().await;
    assert_eq!(calls.get(), 1, "no new refresh after shutdown");
    assert!(cache.shutdown(Duration::ZERO).await);
}

// ---------------------------------------------------------------- Freshness, Loaded, edges

#[test]
fn freshness_and_loaded_constructors() {
    const F: Freshness = Freshness::new(Duration::from_secs(5))
        .with_stale_while_revalidate(Duration::from_secs(6))
        .with_stale_if_error(Duration::from_secs(7));
    assert_eq!(
        (F.ttl, F.stale_while_revalidate, F.stale_if_error),
        (secs(5), secs(6), secs(7))
    );
    let plain = Freshness::new(secs(1));
    assert_eq!(
        (plain.stale_while_revalidate, plain.stale_if_error),
        (Duration::ZERO, Duration::ZERO)
    );
    let loaded = Loaded::new(3u64, plain);
    assert_eq!(loaded.value, 3);
    assert_eq!(loaded.freshness, plain);
    assert_eq!(
        (loaded.initial_age, loaded.retain_for, loaded.load_time),
        (Duration::ZERO, Duration::ZERO, Duration::ZERO)
    );
    let loaded = loaded
        .with_initial_age(secs(1))
        .with_load_time(secs(2))
        .with_retention(secs(3));
    assert_eq!(
        (loaded.initial_age, loaded.load_time, loaded.retain_for),
        (secs(1), secs(2), secs(3))
    );
}

#[tokio::test(start_paused = true)]
async fn a_zero_ttl_value_is_returned_but_loaded_again() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    let first = cache
        .get_or_load(key("a"), ok(&calls, 1, Freshness::new(Duration::ZERO)))
        .await
        .unwrap();
    assert_eq!(first.value, 1);
    advance(ms(1)).await;
    let second = cache
        .get_or_load(key("a"), ok(&calls, 2, Freshness::new(Duration::ZERO)))
        .await
        .unwrap();
    assert_eq!((second.status, second.value), (Status::Miss, 2));
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn huge_durations_do_not_overflow() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    let forever = Freshness::new(Duration::MAX)
        .with_stale_while_revalidate(Duration::MAX)
        .with_stale_if_error(Duration::MAX);
    let loaded = Loaded::new(1, forever)
        .with_retention(Duration::MAX)
        .with_load_time(Duration::MAX);
    cache
        .get_or_load(key("a"), move || async move { Ok::<_, String>(loaded) })
        .await
        .unwrap();
    advance(secs(10 * 365 * 24 * 3600)).await;
    let got = cache
        .get_or_load(key("a"), ok(&calls, 2, fresh(1)))
        .await
        .unwrap();
    assert_eq!((got.status, got.value), (Status::Fresh, 1));
    assert_eq!(calls.get(), 0);
    assert!(cache.lifetime("a").is_some());
    // Huge windows after a short ttl.
    cache.insert(
        key("b"),
        1,
        Freshness::new(secs(1)).with_stale_while_revalidate(Duration::MAX),
    );
    advance(secs(1_000_000)).await;
    assert_eq!(cache.get("b").unwrap().status, Status::Stale);
}

#[tokio::test(start_paused = true)]
async fn early_refresh_with_a_huge_load_time_does_not_panic() {
    let cache: Cache = SwrCache::builder().early_refresh(f64::MAX).build();
    let calls = Calls::default();
    let loaded = Loaded::new(1, swr(20, 100)).with_load_time(Duration::MAX);
    cache
        .get_or_load(key("a"), move || async move { Ok::<_, String>(loaded) })
        .await
        .unwrap();
    advance(secs(1)).await;
    let got = cache
        .get_or_load(key("a"), ok(&calls, 2, swr(20, 100)))
        .await
        .unwrap();
    assert_eq!(got.value, 1);
    settle().await;
    assert!(calls.get() <= 1);
}

#[tokio::test(start_paused = true)]
async fn initial_age_counts_against_the_ttl() {
    let cache: Cache = SwrCache::builder().build();
    let loaded = Loaded::new(1, swr(10, 100)).with_initial_age(secs(6));
    let got = cache
        .get_or_load(key("a"), move || async move { Ok::<_, String>(loaded) })
        .await
        .unwrap();
    assert!(got.age >= secs(6));
    advance(secs(3)).await;
    assert_eq!(cache.get("a").unwrap().status, Status::Fresh);
    advance(secs(2)).await;
    let stale = cache.get("a").unwrap();
    assert_eq!(stale.status, Status::Stale);
    assert_eq!(stale.age, secs(11));
}

#[tokio::test(start_paused = true)]
async fn retention_keeps_an_unservable_value_visible_to_get() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    let loaded = Loaded::new(1, fresh(1)).with_retention(secs(100));
    cache
        .get_or_load(key("a"), move || async move { Ok::<_, String>(loaded) })
        .await
        .unwrap();
    advance(secs(10)).await;
    let kept = cache.get("a").expect("retained");
    assert_eq!(kept.status, Status::Expired);
    let got = cache
        .get_or_load(key("a"), ok(&calls, 2, fresh(60)))
        .await
        .unwrap();
    assert_eq!((got.status, got.value), (Status::Miss, 2));
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn lifetime_moves_a_value_between_caches() {
    let one: Cache = SwrCache::builder().build();
    let two: Cache = SwrCache::builder().build();
    one.insert(key("a"), 5, swr(60, 60).with_stale_if_error(secs(600)));
    let lifetime = one.lifetime("a").unwrap();
    assert!(lifetime.stored_at <= lifetime.fresh_until);
    assert!(lifetime.fresh_until < lifetime.stale_until);
    assert!(lifetime.stale_until < lifetime.error_until);
    assert_eq!(
        lifetime
            .fresh_until
            .duration_since(lifetime.stored_at)
            .unwrap(),
        secs(60)
    );
    assert!(lifetime.last_deadline() >= lifetime.error_until);
    assert!(two.insert_with_lifetime(key("a"), 5, lifetime));
    let got = two.get("a").unwrap();
    assert_eq!((got.status, got.value), (Status::Fresh, 5));
    assert!(one.lifetime("missing").is_none());
}

#[tokio::test(start_paused = true)]
async fn insert_with_a_dead_lifetime_is_refused() {
    let cache: Cache = SwrCache::builder().build();
    let past = SystemTime::now() - secs(3600);
    let dead = Lifetime {
        stored_at: past,
        initial_age: Duration::ZERO,
        fresh_until: past + secs(1),
        stale_until: past + secs(2),
        error_until: past + secs(3),
        retain_until: past + secs(4),
        load_time: Duration::ZERO,
    };
    assert!(!cache.insert_with_lifetime(key("a"), 1, dead));
    assert!(cache.get("a").is_none());
}

// ---------------------------------------------------------------- logging

/// One test's log lines.
///
/// A scoped subscriber (`set_default`) races with callsite registration on other test threads
/// (a callsite first hit where nobody listens may cache "never" and miss the event), so one
/// global subscriber writes every line to the buffer of the thread it was emitted on. Each
/// `#[tokio::test]` runs on its own current-thread runtime, so its tasks emit on its thread.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

thread_local! {
    static THREAD_LOG: std::cell::RefCell<Option<Log>> = const { std::cell::RefCell::new(None) };
}

/// Writes to the current thread's log, if one is being captured.
struct ThreadLog;

impl io::Write for ThreadLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        THREAD_LOG.with(|log| {
            if let Some(log) = log.borrow().as_ref() {
                log.0.lock().unwrap().extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn warnings(&self) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|line| line.contains("WARN"))
            .count()
    }
}

/// Stops capturing on this thread when dropped.
struct Capturing;

impl Drop for Capturing {
    fn drop(&mut self) {
        THREAD_LOG.with(|log| log.borrow_mut().take());
    }
}

fn capture() -> (Log, Capturing) {
    static GLOBAL: std::sync::Once = std::sync::Once::new();
    GLOBAL.call_once(|| {
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::TRACE)
            .with_writer(|| ThreadLog)
            .init();
    });
    tracing::callsite::rebuild_interest_cache();
    let log = Log::default();
    THREAD_LOG.with(|slot| *slot.borrow_mut() = Some(log.clone()));
    (log, Capturing)
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_logs_a_warning() {
    let (log, _guard) = capture();
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    cache.insert(key("a"), 1, sie(1, 1000));
    advance(secs(5)).await;
    assert_eq!(log.warnings(), 0);
    cache
        .get_or_load(key("a"), failing(&calls, "down"))
        .await
        .unwrap();
    assert!(
        log.warnings() >= 1,
        "a warning when stale stands in for a failed load"
    );
}

#[tokio::test(start_paused = true)]
async fn stale_alert_age_warns_only_past_the_age() {
    let (log, _guard) = capture();
    let cache: Cache = SwrCache::builder().stale_alert_age(secs(30)).build();
    let calls = Calls::default();
    cache.insert(key("a"), 1, swr(1, 1000));
    // No refresh may replace the value: stop them.
    assert!(cache.shutdown(Duration::ZERO).await);
    advance(secs(10)).await;
    let got = cache
        .get_or_load(key("a"), ok(&calls, 2, fresh(10)))
        .await
        .unwrap();
    assert_eq!(got.status, Status::Stale);
    assert_eq!(log.warnings(), 0, "10 s old: under the alert age");
    advance(secs(30)).await;
    let got = cache
        .get_or_load(key("a"), ok(&calls, 2, fresh(10)))
        .await
        .unwrap();
    assert_eq!((got.status, got.value), (Status::Stale, 1));
    assert!(log.warnings() >= 1, "40 s old: over the alert age");
}

#[tokio::test(start_paused = true)]
async fn without_stale_alert_age_stale_hits_do_not_warn() {
    let (log, _guard) = capture();
    let cache: Cache = SwrCache::builder().name("quiet").build();
    let calls = Calls::default();
    cache.insert(key("a"), 1, swr(1, 100_000));
    assert!(cache.shutdown(Duration::ZERO).await);
    advance(secs(10_000)).await;
    cache
        .get_or_load(key("a"), ok(&calls, 2, fresh(10)))
        .await
        .unwrap();
    assert_eq!(log.warnings(), 0);
}

// ---------------------------------------------------------------- shared tier

/// An in-memory shared tier (as in the trait's doc example), with a lock and counters.
#[derive(Default)]
struct MapTier {
    map: Mutex<HashMap<String, (u64, Lifetime)>>,
    gets: AtomicUsize,
    puts: AtomicUsize,
    removes: AtomicUsize,
    claims: AtomicUsize,
    /// Whether `claim` hands out a lock (else the default: no lock).
    locking: bool,
    holder: Mutex<Option<u64>>,
    /// `get` and `put` take this long (a slow or hung backend).
    delay: Option<Duration>,
    /// `get` answers nothing (a backend that is down).
    down: bool,
    mark_stales: AtomicUsize,
    clears: AtomicUsize,
    scopes: Mutex<Vec<(Vec<u8>, bool)>>,
    remote: Mutex<Option<Remote<String>>>,
    /// `get` answers nothing this many times (a value written just after the read).
    miss_reads: AtomicUsize,
    /// `claim_after_read` answers `Written` when the key is held (a tier that can tell).
    tells_written: bool,
    /// The claims writes came with.
    put_claims: Mutex<Vec<Claim>>,
    releases: AtomicUsize,
    /// `bounds_reads` answers this.
    bounded: bool,
}

impl MapTier {
    fn locking() -> Self {
        Self {
            locking: true,
            ..Self::default()
        }
    }
    fn count(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::SeqCst)
    }
}

impl SharedTier<String, u64> for MapTier {
    fn get<'a>(&'a self, key: &'a String) -> TierFuture<'a, Option<(u64, Lifetime)>> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        let hide = self
            .miss_reads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let found = if self.down || hide {
            None
        } else {
            self.map.lock().unwrap().get(key).cloned()
        };
        let delay = self.delay;
        Box::pin(async move {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            found
        })
    }
    fn put<'a>(
        &'a self,
        key: &'a String,
        value: &'a u64,
        lifetime: &'a Lifetime,
    ) -> TierFuture<'a, ()> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        let delay = self.delay;
        Box::pin(async move {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            self.map
                .lock()
                .unwrap()
                .insert(key.clone(), (*value, *lifetime));
        })
    }
    fn remove<'a>(&'a self, key: &'a String) -> TierFuture<'a, ()> {
        self.removes.fetch_add(1, Ordering::SeqCst);
        self.map.lock().unwrap().remove(key);
        Box::pin(async {})
    }
    fn claim<'a>(&'a self, _key: &'a String) -> TierFuture<'a, Claim> {
        let n = self.claims.fetch_add(1, Ordering::SeqCst) as u64;
        let claim = if !self.locking {
            Claim::Open
        } else {
            let mut holder = self.holder.lock().unwrap();
            match *holder {
                None => {
                    *holder = Some(n);
                    Claim::Won { token: n, fence: 0 }
                }
                Some(_) => Claim::Held { fence: 0 },
            }
        };
        Box::pin(std::future::ready(claim))
    }
    fn mark_stale<'a>(&'a self, key: &'a String) -> TierFuture<'a, ()> {
        self.mark_stales.fetch_add(1, Ordering::SeqCst);
        self.map.lock().unwrap().remove(key);
        Box::pin(async {})
    }
    fn clear(&self) -> TierFuture<'_, ()> {
        self.clears.fetch_add(1, Ordering::SeqCst);
        self.map.lock().unwrap().clear();
        Box::pin(async {})
    }
    fn invalidate_scope<'a>(&'a self, scope: &'a [u8], soft: bool) -> TierFuture<'a, ()> {
        self.scopes.lock().unwrap().push((scope.to_vec(), soft));
        Box::pin(async {})
    }
    fn attach(&self, remote: Remote<String>) {
        *self.remote.lock().unwrap() = Some(remote);
    }
    fn claim_after_read<'a>(&'a self, key: &'a String, _age: Duration) -> TierFuture<'a, Claim> {
        if self.tells_written && self.map.lock().unwrap().contains_key(key) {
            return Box::pin(std::future::ready(Claim::Written { fence: 0 }));
        }
        self.claim(key)
    }
    fn put_claimed<'a>(
        &'a self,
        key: &'a String,
        value: &'a u64,
        lifetime: &'a Lifetime,
        claim: &'a Claim,
    ) -> TierFuture<'a, ()> {
        self.put_claims.lock().unwrap().push(claim.clone());
        self.put(key, value, lifetime)
    }
    fn bounds_reads(&self) -> bool {
        self.bounded
    }
    fn release<'a>(&'a self, _key: &'a String, claim: &'a Claim) -> TierFuture<'a, ()> {
        self.releases.fetch_add(1, Ordering::SeqCst);
        if let Claim::Won { token, .. } = claim {
            let mut holder = self.holder.lock().unwrap();
            if *holder == Some(*token) {
                *holder = None;
            }
        }
        Box::pin(std::future::ready(()))
    }
}

fn tiered(tier: &Arc<MapTier>) -> Cache {
    SwrCache::builder().shared_tier(tier.clone()).build()
}

#[tokio::test(start_paused = true)]
async fn two_caches_share_a_value_through_the_tier() {
    let tier = Arc::new(MapTier::default());
    let one = tiered(&tier);
    let two = tiered(&tier);
    let calls = Calls::default();
    let got = one
        .get_or_load(key("a"), ok(&calls, 7, fresh(60)))
        .await
        .unwrap();
    assert_eq!(got.status, Status::Miss);
    settle().await;
    assert_eq!(MapTier::count(&tier.puts), 1);
    let shared = two.get_or_load(key("a"), never_called()).await.unwrap();
    assert_eq!((shared.status, shared.value), (Status::SharedTier, 7));
    assert_eq!(two.stats().shared_tier_hits, 1);
    // Now in two's memory: a fresh hit.
    let hit = two.get_or_load(key("a"), never_called()).await.unwrap();
    assert_eq!(hit.status, Status::Fresh);
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_fresh_hit_never_reaches_the_tier() {
    let tier = Arc::new(MapTier::default());
    let cache = tiered(&tier);
    let calls = Calls::default();
    cache
        .get_or_load(key("a"), ok(&calls, 1, fresh(60)))
        .await
        .unwrap();
    settle().await;
    let gets = MapTier::count(&tier.gets);
    for _ in 0..20 {
        cache.get_or_load(key("a"), never_called()).await.unwrap();
    }
    cache.get("a").unwrap();
    assert_eq!(MapTier::count(&tier.gets), gets);
}

#[tokio::test(start_paused = true)]
async fn three_caches_with_a_locking_tier_make_one_load() {
    let tier = Arc::new(MapTier::locking());
    let caches: Vec<Cache> = (0..3).map(|_| tiered(&tier)).collect();
    let calls = Calls::default();
    let mut tasks = Vec::new();
    for cache in &caches {
        for _ in 0..10 {
            let cache = cache.clone();
            let calls = calls.clone();
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_load(key("a"), slow(&calls, 9, fresh(60), ms(200)))
                    .await
                    .unwrap()
            }));
        }
    }
    let mut statuses = Vec::new();
    for task in tasks {
        let got = task.await.unwrap();
        assert_eq!(got.value, 9);
        statuses.push(got.status);
    }
    assert_eq!(
        calls.get(),
        1,
        "one load per key for the fleet: {statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == Status::Miss).count(), 1);
    assert!(
        tier.holder.lock().unwrap().is_none(),
        "the lock is given back"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lock_holder_that_fails_lets_another_cache_load() {
    let tier = Arc::new(MapTier::locking());
    let one = tiered(&tier);
    let two = tiered(&tier);
    let calls = Calls::default();
    let first = {
        let one = one.clone();
        let calls = calls.clone();
        tokio::spawn(async move {
            one.get_or_load(key("a"), slow_failing(&calls, "down", ms(200)))
                .await
        })
    };
    settle().await;
    let second = {
        let two = two.clone();
        let calls = calls.clone();
        tokio::spawn(async move {
            two.get_or_load(key("a"), slow(&calls, 3, fresh(60), ms(10)))
                .await
        })
    };
    assert_eq!(*first.await.unwrap().unwrap_err(), "down");
    let got = tokio::time::timeout(secs(3), second)
        .await
        .expect("the waiter does not hang on a failed holder")
        .unwrap()
        .unwrap();
    assert_eq!(got.value, 3);
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_slow_tier_does_not_fail_or_hold_a_lookup() {
    let tier = Arc::new(MapTier {
        delay: Some(secs(10)),
        ..MapTier::default()
    });
    let cache: Cache = SwrCache::builder()
        .shared_tier(tier.clone())
        .shared_tier_timeout(ms(50))
        .build();
    let calls = Calls::default();
    let started = Instant::now();
    let got = cache
        .get_or_load(key("a"), ok(&calls, 1, fresh(60)))
        .await
        .unwrap();
    assert_eq!((got.status, got.value), (Status::Miss, 1));
    assert!(started.elapsed() < secs(1), "took {:?}", started.elapsed());
    assert_eq!(calls.get(), 1);
    let hit = cache.get_or_load(key("a"), never_called()).await.unwrap();
    assert_eq!(hit.status, Status::Fresh);
}

#[tokio::test(start_paused = true)]
async fn the_default_tier_timeout_is_short() {
    let tier = Arc::new(MapTier {
        delay: Some(secs(3600)),
        ..MapTier::default()
    });
    let cache = tiered(&tier);
    let calls = Calls::default();
    let started = Instant::now();
    cache
        .get_or_load(key("a"), ok(&calls, 1, fresh(60)))
        .await
        .unwrap();
    assert!(
        started.elapsed() <= ms(500),
        "took {:?} (default 50 ms)",
        started.elapsed()
    );
    assert!(
        !cache.in_shared_tier(&key("a")).await,
        "no answer in time: false"
    );
}

#[tokio::test(start_paused = true)]
async fn tier_timeout_zero_turns_it_off() {
    let tier = Arc::new(MapTier {
        delay: Some(secs(2)),
        ..MapTier::default()
    });
    let cache: Cache = SwrCache::builder()
        .shared_tier(tier.clone())
        .shared_tier_timeout(Duration::ZERO)
        .build();
    let calls = Calls::default();
    let started = Instant::now();
    cache
        .get_or_load(key("a"), ok(&calls, 1, fresh(60)))
        .await
        .unwrap();
    assert!(
        started.elapsed() >= secs(2),
        "the tier's answer was awaited"
    );
}

#[tokio::test(start_paused = true)]
async fn a_tier_that_is_down_means_loading_as_without_one() {
    let tier = Arc::new(MapTier {
        down: true,
        ..MapTier::default()
    });
    let one = tiered(&tier);
    let two = tiered(&tier);
    let calls = Calls::default();
    one.get_or_load(key("a"), ok(&calls, 1, fresh(60)))
        .await
        .unwrap();
    settle().await;
    let got = two
        .get_or_load(key("a"), ok(&calls, 2, fresh(60)))
        .await
        .unwrap();
    assert_eq!((got.status, got.value), (Status::Miss, 2));
    assert_eq!(calls.get(), 2);
    let err = two
        .get_or_load(key("b"), failing(&calls, "db"))
        .await
        .unwrap_err();
    assert_eq!(*err, "db", "a cold failure is still the loader's own");
}

#[tokio::test(start_paused = true)]
async fn remove_reaches_the_tier() {
    let tier = Arc::new(MapTier::default());
    let one = tiered(&tier);
    let two = tiered(&tier);
    let calls = Calls::default();
    one.get_or_load(key("a"), ok(&calls, 1, fresh(60)))
        .await
        .unwrap();
    settle().await;
    assert!(one.in_shared_tier(&key("a")).await);
    assert!(!one.in_shared_tier(&key("zzz")).await);
    assert!(one.remove("a"));
    settle().await;
    assert_eq!(MapTier::count(&tier.removes), 1);
    assert!(!one.in_shared_tier(&key("a")).await);
    let got = two
        .get_or_load(key("a"), ok(&calls, 2, fresh(60)))
        .await
        .unwrap();
    assert_eq!((got.status, got.value), (Status::Miss, 2));
}

#[tokio::test(start_paused = true)]
async fn in_shared_tier_is_false_without_a_tier() {
    let cache: Cache = SwrCache::builder().build();
    cache.insert(key("a"), 1, fresh(60));
    assert!(!cache.in_shared_tier(&key("a")).await);
}

#[tokio::test(start_paused = true)]
async fn a_value_removed_here_is_not_taken_back_from_the_tier() {
    // A tier without fencing: the engine refuses tier copies stored before this cache's last
    // invalidation (SharedTier::fences_invalidations docs).
    let tier = Arc::new(MapTier::default());
    let one = tiered(&tier);
    let calls = Calls::default();
    one.get_or_load(key("a"), ok(&calls, 1, fresh(60)))
        .await
        .unwrap();
    settle().await;
    // Another writer puts the old copy back after the removal reached the tier.
    let copy = tier.map.lock().unwrap().get("a").cloned().unwrap();
    one.remove("a");
    settle().await;
    tier.map.lock().unwrap().insert(key("a"), copy);
    let got = one
        .get_or_load(key("a"), ok(&calls, 2, fresh(60)))
        .await
        .unwrap();
    assert_eq!(
        got.value, 2,
        "a copy stored before the invalidation is not taken"
    );
}

fn fresh_lifetime(ttl: u64) -> Lifetime {
    let now = SystemTime::now();
    Lifetime {
        stored_at: now,
        initial_age: Duration::ZERO,
        fresh_until: now + secs(ttl),
        stale_until: now + secs(ttl),
        error_until: now + secs(ttl),
        retain_until: now + secs(ttl),
        load_time: Duration::ZERO,
    }
}

#[tokio::test(start_paused = true)]
async fn a_background_refresh_takes_a_fresher_tier_copy_instead_of_loading() {
    let tier = Arc::new(MapTier::default());
    let cache = tiered(&tier);
    let calls = Calls::default();
    cache.insert(key("a"), 1, swr(1, 1000));
    advance(secs(2)).await;
    // Another cache stored a fresh value meanwhile.
    tier.map
        .lock()
        .unwrap()
        .insert(key("a"), (2, fresh_lifetime(600)));
    let got = cache
        .get_or_load(key("a"), ok(&calls, 3, fresh(600)))
        .await
        .unwrap();
    assert!(got.value == 1 || got.value == 2, "{got:?}");
    settle().await;
    assert_eq!(
        calls.get(),
        0,
        "the tier is consulted before the refresh loads"
    );
    let now = cache.get("a").unwrap();
    assert_eq!((now.status, now.value), (Status::Fresh, 2));
}

#[tokio::test(start_paused = true)]
async fn a_failed_load_writes_nothing_to_the_tier() {
    let tier = Arc::new(MapTier::default());
    let cache = tiered(&tier);
    let calls = Calls::default();
    cache
        .get_or_load(key("a"), failing(&calls, "down"))
        .await
        .unwrap_err();
    settle().await;
    assert_eq!(MapTier::count(&tier.puts), 0);
    assert!(tier.map.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn mark_stale_clear_and_scopes_reach_the_tier() {
    let tier = Arc::new(MapTier::default());
    let cache = tiered(&tier);
    let calls = Calls::default();
    cache
        .get_or_load(key("a"), ok(&calls, 1, swr(60, 60)))
        .await
        .unwrap();
    settle().await;
    assert!(cache.mark_stale("a"));
    settle().await;
    assert_eq!(MapTier::count(&tier.mark_stales), 1);
    assert_eq!(cache.invalidate_scope(b"a*", true, |k| k == "a"), 1);
    settle().await;
    assert_eq!(*tier.scopes.lock().unwrap(), vec![(b"a*".to_vec(), true)]);
    cache.clear();
    settle().await;
    assert_eq!(MapTier::count(&tier.clears), 1);
    assert!(cache.is_empty());
}

#[tokio::test(start_paused = true)]
async fn remote_applies_other_caches_invalidations_and_holds_the_cache_weakly() {
    let tier = Arc::new(MapTier::default());
    let cache = tiered(&tier);
    cache.insert(key("a"), 1, swr(60, 60));
    cache.insert(key("b"), 1, swr(60, 60));
    cache.insert(key("c"), 1, swr(60, 60));
    cache.insert(key("d"), 1, swr(60, 60));
    let remote = tier
        .remote
        .lock()
        .unwrap()
        .take()
        .expect("attached once at build");
    assert!(remote.is_attached());
    assert!(remote.remove(&key("a")));
    assert!(!remote.remove(&key("a")));
    assert!(cache.get("a").is_none());
    assert!(remote.mark_stale(&key("b")));
    assert_eq!(cache.get("b").unwrap().status, Status::Stale);
    assert_eq!(remote.invalidate_where(false, &|k: &String| k == "c"), 1);
    assert!(cache.get("c").is_none());
    remote.clear();
    assert!(cache.is_empty());
    settle().await;
    assert_eq!(
        MapTier::count(&tier.removes),
        0,
        "not sent back to the tier"
    );
    drop(cache);
    assert!(!remote.is_attached());
    assert!(!remote.remove(&key("d")));
}

#[tokio::test(start_paused = true)]
async fn a_stale_key_whose_refresh_fails_answers_all_callers_with_one_call() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    cache.insert(key("a"), 1, swr(1, 100));
    advance(secs(2)).await;
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let cache = cache.clone();
        let calls = calls.clone();
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load(key("a"), slow_failing(&calls, "down", ms(50)))
                .await
                .unwrap()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().value, 1);
    }
    step(secs(1)).await;
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn concurrent_callers_past_the_window_share_one_failing_load_and_the_stale_value() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    cache.insert(key("a"), 1, sie(1, 1000));
    advance(secs(5)).await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let cache = cache.clone();
        let calls = calls.clone();
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load(key("a"), slow_failing(&calls, "down", ms(100)))
                .await
                .unwrap()
        }));
    }
    for task in tasks {
        let got = task.await.unwrap();
        assert_eq!((got.status, got.value), (Status::StaleIfError, 1));
    }
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_slow_loader_gets_at_most_one_extra_call_per_lock_timeout() {
    let cache: Cache = SwrCache::builder().lock_timeout(secs(1)).build();
    let calls = Calls::default();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let cache = cache.clone();
        let calls = calls.clone();
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load(key("a"), slow(&calls, i, fresh(60), secs(100)))
                .await
        }));
    }
    step(ms(3500)).await;
    let made = calls.get();
    assert!(
        (2..=4).contains(&made),
        "{made} calls in 3.5 lock timeouts of one key (1 + at most 1 per timeout)"
    );
    for task in tasks {
        task.abort();
    }
}

/// `SwrCacheBuilder::name` is "used as the `cache` label of metrics and in logs": the
/// engine's warnings carry it (found by this file: they did not), so two caches' warnings can
/// be told apart.
#[tokio::test(start_paused = true)]
async fn the_name_appears_in_the_engines_warnings() {
    let (log, _guard) = capture();
    let cache: Cache = SwrCache::builder().name("judge-config").build();
    let calls = Calls::default();
    cache.insert(key("a"), 1, sie(1, 1000));
    advance(secs(5)).await;
    cache
        .get_or_load(key("a"), failing(&calls, "down"))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&log.0.lock().unwrap()).to_string();
    assert!(text.contains("judge-config"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn lookups_keep_loading_after_shutdown() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    assert!(cache.shutdown(secs(1)).await);
    let got = cache
        .get_or_load(key("a"), ok(&calls, 1, fresh(60)))
        .await
        .unwrap();
    assert_eq!((got.status, got.value), (Status::Miss, 1));
    let err = cache
        .get_or_load(key("b"), failing(&calls, "x"))
        .await
        .unwrap_err();
    assert_eq!(*err, "x");
}

#[tokio::test(start_paused = true)]
async fn a_value_older_than_all_its_windows_is_returned_but_not_kept() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    let loaded = Loaded::new(1, swr(10, 10)).with_initial_age(secs(100));
    let got = cache
        .get_or_load(key("a"), move || async move { Ok::<_, String>(loaded) })
        .await
        .unwrap();
    assert_eq!(got.value, 1);
    assert!(cache.get("a").is_none(), "dead on arrival");
    cache
        .get_or_load(key("a"), ok(&calls, 2, fresh(10)))
        .await
        .unwrap();
    assert_eq!(calls.get(), 1);
}

#[cfg(feature = "serde")]
#[tokio::test(start_paused = true)]
async fn stats_serialize() {
    fn is_serialize<T: serde::Serialize>(_: &T) {}
    let cache: Cache = SwrCache::builder().build();
    is_serialize(&cache.stats());
}

#[tokio::test(start_paused = true)]
async fn a_load_under_a_won_claim_is_written_with_it_and_released() {
    let tier = Arc::new(MapTier::locking());
    let cache = tiered(&tier);
    let calls = Calls::default();
    cache
        .get_or_load(key("a"), ok(&calls, 1, fresh(60)))
        .await
        .unwrap();
    settle().await;
    let claims = tier.put_claims.lock().unwrap().clone();
    assert_eq!(claims.len(), 1);
    assert!(matches!(claims[0], Claim::Won { .. }), "{claims:?}");
    assert!(MapTier::count(&tier.releases) >= 1);
    assert!(tier.holder.lock().unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_failed_load_gives_the_claim_back() {
    let tier = Arc::new(MapTier::locking());
    let cache = tiered(&tier);
    let calls = Calls::default();
    cache
        .get_or_load(key("a"), failing(&calls, "down"))
        .await
        .unwrap_err();
    settle().await;
    assert!(
        tier.holder.lock().unwrap().is_none(),
        "released when the load stored nothing"
    );
    assert!(tier.put_claims.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn claim_written_after_a_read_is_read_not_loaded() {
    let tier = Arc::new(MapTier {
        tells_written: true,
        miss_reads: AtomicUsize::new(1),
        ..MapTier::locking()
    });
    tier.map
        .lock()
        .unwrap()
        .insert(key("a"), (5, fresh_lifetime(600)));
    let cache = tiered(&tier);
    let calls = Calls::default();
    let got = cache
        .get_or_load(key("a"), ok(&calls, 6, fresh(60)))
        .await
        .unwrap();
    assert_eq!((got.status, got.value), (Status::SharedTier, 5));
    assert_eq!(calls.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_lock_held_elsewhere_forever_costs_at_most_the_lock_timeout() {
    let tier = Arc::new(MapTier::locking());
    *tier.holder.lock().unwrap() = Some(u64::MAX);
    let cache: Cache = SwrCache::builder()
        .shared_tier(tier.clone())
        .lock_timeout(secs(1))
        .build();
    let calls = Calls::default();
    let started = Instant::now();
    let got = cache
        .get_or_load(key("a"), ok(&calls, 1, fresh(60)))
        .await
        .unwrap();
    assert_eq!(got.value, 1);
    assert_eq!(calls.get(), 1);
    assert!(
        started.elapsed() <= ms(1500),
        "waited {:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_tier_bounding_its_own_reads_is_not_cut_by_the_engine() {
    let tier = Arc::new(MapTier {
        delay: Some(secs(2)),
        bounded: true,
        ..MapTier::default()
    });
    let cache: Cache = SwrCache::builder()
        .shared_tier(tier.clone())
        .shared_tier_timeout(ms(50))
        .build();
    let calls = Calls::default();
    let started = Instant::now();
    cache
        .get_or_load(key("a"), ok(&calls, 1, fresh(60)))
        .await
        .unwrap();
    assert!(
        started.elapsed() >= secs(2),
        "the engine armed no timer around get"
    );
}

#[tokio::test(start_paused = true)]
async fn three_caches_refresh_a_stale_key_once() {
    let tier = Arc::new(MapTier::locking());
    let caches: Vec<Cache> = (0..3).map(|_| tiered(&tier)).collect();
    for cache in &caches {
        cache.insert(key("a"), 1, swr(1, 1000));
    }
    advance(secs(2)).await;
    let calls = Calls::default();
    for cache in &caches {
        let got = cache
            .get_or_load(key("a"), slow(&calls, 2, swr(600, 1000), ms(200)))
            .await
            .unwrap();
        assert_eq!((got.status, got.value), (Status::Stale, 1));
    }
    step(secs(2)).await;
    assert_eq!(calls.get(), 1, "one refresh for the fleet");
    for cache in &caches {
        cache
            .get_or_load(key("a"), slow(&calls, 3, swr(600, 1000), ms(200)))
            .await
            .unwrap();
    }
    step(secs(2)).await;
    for cache in &caches {
        assert_eq!(cache.get("a").unwrap().value, 2);
    }
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_zero_budget_stores_nothing_but_still_answers() {
    let cache: Cache = SwrCache::builder().capacity_bytes(0).build();
    let calls = Calls::default();
    for _ in 0..3 {
        let got = cache
            .get_or_load(key("a"), ok(&calls, 1, fresh(60)))
            .await
            .unwrap();
        assert_eq!(got.value, 1);
    }
    let stats = cache.stats();
    // A budget of 0 is raised to a small floor (2,560 B here; not documented), and the largest
    // entry lowered to fit in it: still never over the budget it reports.
    assert!(stats.bytes <= stats.capacity_bytes);
    assert!(cache.max_entry_bytes() <= stats.capacity_bytes);
}

#[tokio::test(start_paused = true)]
async fn full_jitter_keeps_lifetimes_within_bounds() {
    let cache: Cache = SwrCache::builder().ttl_jitter(1.0).build();
    let calls = Calls::default();
    for i in 0..100 {
        cache
            .get_or_load(format!("k{i}"), ok(&calls, i, swr(100, 10_000)))
            .await
            .unwrap();
    }
    for i in 0..100 {
        let lifetime = cache.lifetime(&format!("k{i}")).unwrap();
        let ttl = lifetime
            .fresh_until
            .duration_since(lifetime.stored_at)
            .unwrap();
        assert!(ttl <= secs(200), "k{i}: {ttl:?}");
    }
    advance(secs(201)).await;
    assert!((0..100).all(|i| cache.get(&format!("k{i}")).unwrap().status != Status::Fresh));
}

#[tokio::test(start_paused = true)]
async fn remove_during_a_background_refresh_is_not_undone() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    cache.insert(key("a"), 1, swr(1, 1000));
    advance(secs(2)).await;
    cache
        .get_or_load(key("a"), slow(&calls, 2, fresh(600), secs(1)))
        .await
        .unwrap();
    step(ms(300)).await;
    assert!(cache.is_refreshing("a"));
    assert!(cache.remove("a"));
    step(secs(2)).await;
    assert!(
        cache.get("a").is_none(),
        "the refresh did not bring the purged key back"
    );
    assert!(!cache.is_refreshing("a"));
    let got = cache
        .get_or_load(key("a"), ok(&calls, 3, fresh(600)))
        .await
        .unwrap();
    assert_eq!((got.status, got.value), (Status::Miss, 3));
}

#[tokio::test(start_paused = true)]
async fn clear_during_a_background_refresh_is_not_undone() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    cache.insert(key("a"), 1, swr(1, 1000));
    advance(secs(2)).await;
    cache
        .get_or_load(key("a"), slow(&calls, 2, fresh(600), secs(1)))
        .await
        .unwrap();
    step(ms(300)).await;
    cache.clear();
    step(secs(2)).await;
    assert!(cache.get("a").is_none());
    assert!(cache.is_empty());
}

#[tokio::test(start_paused = true)]
async fn insert_during_a_background_refresh_wins() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    cache.insert(key("a"), 1, swr(1, 1000));
    advance(secs(2)).await;
    cache
        .get_or_load(key("a"), slow(&calls, 2, fresh(600), secs(1)))
        .await
        .unwrap();
    step(ms(300)).await;
    cache.insert(key("a"), 42, fresh(600));
    step(secs(2)).await;
    assert_eq!(cache.get("a").unwrap().value, 42);
}

/// `mark_stale` on an entry stored without a stale-while-revalidate window (`Freshness::new`):
/// as documented, it is expired instead, and the next lookup loads.
#[tokio::test(start_paused = true)]
async fn mark_stale_without_a_stale_window_makes_the_next_lookup_load() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    cache.insert(key("a"), 1, fresh(600));
    assert!(cache.mark_stale("a"));
    let got = cache
        .get_or_load(key("a"), slow(&calls, 2, fresh(600), secs(1)))
        .await
        .unwrap();
    assert_eq!((got.status, got.value), (Status::Miss, 2));
}

#[tokio::test(start_paused = true)]
async fn loads_of_varied_weights_never_exceed_the_budget() {
    let budget = 50_000;
    let cache: Cache = SwrCache::builder()
        .capacity_bytes(budget)
        .largest_entry_bytes(5_000)
        .weigher(|_, v| *v)
        .build();
    let calls = Calls::default();
    for i in 0..500u64 {
        let weight = 100 + (i * 7919) % 4_000;
        let got = cache
            .get_or_load(format!("k{i}"), ok(&calls, weight, fresh(600)))
            .await
            .unwrap();
        assert_eq!(got.value, weight);
        assert!(cache.stats().bytes <= budget);
    }
    assert!(cache.stats().evictions > 0);
}
