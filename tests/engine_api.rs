//! The generic engine, `tower_swr::engine::SwrCache`, without HTTP.

mod common;

use common::*;
use common::{settle, Calls, Gate};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::advance;

use tower_swr::engine::{Freshness, Loaded, Status, SwrCache};

type Cache = SwrCache<String, String>;

type LoadFuture = Pin<Box<dyn Future<Output = Result<Loaded<String>, String>> + Send>>;

const SECOND: Duration = Duration::from_secs(1);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn key(name: &str) -> String {
    name.to_owned()
}

/// Fresh for `ttl` seconds, then stale for `swr`, usable on error up to `ttl + sie`.
fn freshness(ttl: u64, swr: u64, sie: u64) -> Freshness {
    Freshness::new(secs(ttl))
        .with_stale_while_revalidate(secs(swr))
        .with_stale_if_error(secs(sie))
}

/// A loader that counts its call and returns `value`.
fn load_ok(calls: &Calls, value: &str, fresh: Freshness) -> impl FnOnce() -> LoadFuture + Send {
    let calls = calls.clone();
    let value = value.to_owned();
    move || {
        calls.record();
        Box::pin(async move { Ok(Loaded::new(value, fresh)) })
    }
}

/// A loader that counts its call and fails with `message`.
fn load_err(calls: &Calls, message: &str) -> impl FnOnce() -> LoadFuture + Send {
    let calls = calls.clone();
    let message = message.to_owned();
    move || {
        calls.record();
        Box::pin(async move { Err(message) })
    }
}

/// A loader that counts its call and returns `value` once `gate` opens.
fn load_gated(
    calls: &Calls,
    gate: &Gate,
    value: &str,
    fresh: Freshness,
) -> impl FnOnce() -> LoadFuture + Send {
    let calls = calls.clone();
    let gate = gate.clone();
    let value = value.to_owned();
    move || {
        calls.record();
        Box::pin(async move {
            gate.wait().await;
            Ok(Loaded::new(value, fresh))
        })
    }
}

#[tokio::test(start_paused = true)]
async fn fresh_value_is_answered_without_calling_the_loader() -> Result<(), String> {
    let cache = Cache::new(1 << 20);
    let calls = Calls::default();

    let first = cache
        .get_or_load(key("k"), load_ok(&calls, "v1", freshness(60, 0, 0)))
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(first.status, Status::Miss);
    assert_eq!(first.value, "v1");
    assert_eq!(calls.get(), 1);

    advance(secs(30)).await;
    let second = cache
        .get_or_load(key("k"), load_ok(&calls, "v2", freshness(60, 0, 0)))
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(second.status, Status::Fresh);
    assert_eq!(second.value, "v1");
    assert_eq!(second.age, secs(30));
    assert!(!second.refreshing);
    settle().await;
    assert_eq!(calls.get(), 1, "a fresh value must not call the loader");
    assert_eq!(cache.stats().fresh_hits, 1);
    assert_eq!(cache.stats().refreshes_started, 0);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn stale_value_is_answered_at_once_with_exactly_one_background_refresh() {
    let cache = Cache::new(1 << 20);
    assert!(cache.insert(key("k"), "old".into(), freshness(10, 60, 0)));
    advance(secs(11)).await;

    let calls = Calls::default();
    let gate = Gate::new();
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let cache = cache.clone();
            let load = load_gated(&calls, &gate, "new", freshness(10, 60, 0));
            tokio::spawn(async move { cache.get_or_load(key("k"), load).await })
        })
        .collect();
    // The loader is held shut: every caller must be answered from the stale value anyway.
    for caller in callers {
        let lookup = caller.await.expect("caller task").expect("stale answer");
        assert_eq!(lookup.value, "old");
        assert_eq!(lookup.status, Status::Stale);
        assert!(lookup.is_stale());
        assert!(
            lookup.refreshing,
            "the refresh is running while the loader is held"
        );
    }
    settle().await;
    assert_eq!(calls.get(), 1, "50 stale callers must start ONE refresh");
    assert!(cache.is_refreshing("k"));
    let stats = cache.stats();
    assert_eq!(stats.stale_hits, 50);
    assert_eq!(stats.refreshes_started, 1);
    assert_eq!(stats.refreshes_running, 1);

    gate.open();
    settle().await;
    let next = cache.get("k").expect("entry present");
    assert_eq!(next.value, "new");
    assert_eq!(next.status, Status::Fresh);
    assert!(!cache.is_refreshing("k"));
    assert_eq!(cache.stats().refreshes_succeeded, 1);
}

#[tokio::test(start_paused = true)]
async fn past_the_stale_while_revalidate_window_is_a_miss() -> Result<(), String> {
    let cache = Cache::new(1 << 20);
    cache.insert(key("k"), "old".into(), freshness(10, 5, 0));
    advance(secs(16)).await;

    let calls = Calls::default();
    let lookup = cache
        .get_or_load(key("k"), load_ok(&calls, "new", freshness(10, 5, 0)))
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(calls.get(), 1, "the loader runs in the foreground");
    assert_eq!(lookup.status, Status::Miss);
    assert_eq!(lookup.value, "new");
    assert_eq!(cache.stats().stale_hits, 0);
    assert_eq!(cache.stats().refreshes_started, 0);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn cold_start_with_a_failing_loader_returns_its_error() {
    let cache = Cache::new(1 << 20);
    let calls = Calls::default();

    let error = cache
        .get_or_load(key("k"), load_err(&calls, "database down"))
        .await
        .expect_err("nothing to fall back on");
    assert_eq!(*error, "database down");
    assert!(cache.get("k").is_none(), "a failure stores nothing");

    // For a moment (1 s by default) the failure is the key's answer, without a load.
    let error = cache
        .get_or_load(key("k"), load_err(&calls, "not called"))
        .await
        .expect_err("the remembered failure");
    assert_eq!(*error, "database down");
    assert_eq!(calls.get(), 1);
    assert_eq!(cache.stats().failure_hits, 1);

    // Then the next caller loads again.
    advance(Duration::from_millis(1001)).await;
    let error = cache
        .get_or_load(key("k"), load_err(&calls, "still down"))
        .await
        .expect_err("still nothing to fall back on");
    assert_eq!(*error, "still down");
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn failing_loader_inside_stale_if_error_serves_the_stale_value() -> Result<(), String> {
    let cache = Cache::new(1 << 20);
    cache.insert(key("k"), "old".into(), freshness(10, 5, 100));
    // Past the SWR window (15 s), inside stale-if-error (110 s).
    advance(secs(20)).await;

    let calls = Calls::default();
    let lookup = cache
        .get_or_load(key("k"), load_err(&calls, "database down"))
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(calls.get(), 1);
    assert_eq!(lookup.status, Status::StaleIfError);
    assert_eq!(lookup.value, "old");
    assert_eq!(lookup.age, secs(20));
    assert_eq!(cache.stats().stale_if_error, 1);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn failing_loader_past_stale_if_error_returns_the_error() {
    let cache = Cache::new(1 << 20);
    cache.insert(key("k"), "old".into(), freshness(10, 5, 100));
    advance(secs(111)).await;

    let calls = Calls::default();
    let error = cache
        .get_or_load(key("k"), load_err(&calls, "database down"))
        .await
        .expect_err("the stale value is past its stale-if-error window");
    assert_eq!(*error, "database down");
    assert_eq!(calls.get(), 1);
    assert_eq!(cache.stats().stale_if_error, 0);
}

#[tokio::test(start_paused = true)]
async fn concurrent_cold_loads_make_one_loader_call() {
    let cache = Cache::new(1 << 20);
    let calls = Calls::default();
    let callers: Vec<_> = (0..100)
        .map(|_| {
            let cache = cache.clone();
            let calls = calls.clone();
            tokio::spawn(async move {
                cache
                    .get_or_load(key("k"), move || async move {
                        calls.record();
                        tokio::time::sleep(SECOND).await;
                        Ok::<_, String>(Loaded::new("loaded".to_owned(), freshness(60, 0, 0)))
                    })
                    .await
            })
        })
        .collect();

    let mut misses = 0;
    let mut coalesced = 0;
    for caller in callers {
        let lookup = caller.await.expect("caller task").expect("loaded");
        assert_eq!(lookup.value, "loaded");
        match lookup.status {
            Status::Miss => misses += 1,
            Status::Collapsed => coalesced += 1,
            other => panic!("unexpected status {other:?}"),
        }
    }
    assert_eq!(
        calls.get(),
        1,
        "100 concurrent cold callers must share one load"
    );
    assert_eq!((misses, coalesced), (1, 99));
    let stats = cache.stats();
    assert_eq!(stats.misses, 1);
    assert_eq!(stats.collapsed, 99);
    assert_eq!(stats.loads_running, 0);
}

#[tokio::test(start_paused = true)]
async fn stale_entries_are_kept_until_their_last_deadline() {
    let cache = Cache::new(1 << 20);
    cache.insert(key("k"), "v".into(), freshness(10, 10, 30));

    advance(secs(15)).await;
    let stale = cache.get("k").expect("a stale entry is not deleted");
    assert_eq!(stale.status, Status::Stale);
    assert_eq!(stale.value, "v");

    // Past the SWR window (20 s) but inside stale-if-error (40 s): still held.
    advance(secs(10)).await;
    let expired = cache
        .get("k")
        .expect("an expired entry is still held for stale-if-error");
    assert_eq!(expired.status, Status::Expired);
    assert_eq!(expired.value, "v");
    assert_eq!(cache.len(), 1);

    advance(secs(16)).await;
    assert!(cache.get("k").is_none(), "past every deadline it is gone");
}

#[tokio::test(start_paused = true)]
async fn byte_budget_is_respected_while_inserting_many_entries() {
    const CAPACITY: u64 = 64 << 10;
    let cache: SwrCache<String, Vec<u8>> = SwrCache::builder()
        .capacity_bytes(CAPACITY)
        .largest_entry_bytes(4 << 10)
        .weigher(|_, value: &Vec<u8>| value.len() as u64)
        .build();

    for i in 0..1_000 {
        assert!(
            cache.insert(format!("key-{i}"), vec![0; 1024], freshness(60, 0, 0)),
            "a 1 KiB value fits"
        );
        let stats = cache.stats();
        assert!(
            stats.bytes <= CAPACITY,
            "after {i} inserts the store holds {} bytes of {CAPACITY}",
            stats.bytes
        );
    }
    let stats = cache.stats();
    assert!(stats.entries < 1_000, "1000 KiB cannot fit in 64 KiB");
    assert!(stats.entries > 0);
    assert!(stats.evictions > 0);
    assert!(stats.capacity_bytes <= CAPACITY);
}

#[tokio::test(start_paused = true)]
async fn panicking_background_refresh_is_retried_after_the_backoff() -> Result<(), String> {
    let cache: Cache = SwrCache::builder()
        .refresh_backoff(SECOND, secs(60))
        .build();
    cache.insert(key("k"), "old".into(), freshness(10, 600, 0));
    advance(secs(11)).await;

    let lookup = cache
        .get_or_load(key("k"), || async {
            if cache_is_broken() {
                panic!("loader bug");
            }
            Ok::<_, String>(Loaded::new("never".to_owned(), freshness(10, 600, 0)))
        })
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(lookup.status, Status::Stale);
    settle().await;
    let stats = cache.stats();
    assert_eq!(stats.refreshes_panicked, 1);
    assert_eq!(stats.refreshes_failed, 1);
    assert_eq!(
        stats.refreshes_running, 0,
        "a panic releases the refresh claim"
    );
    assert_eq!(cache.get("k").expect("kept").value, "old");

    // Inside the backoff: served stale, no new refresh.
    let calls = Calls::default();
    let lookup = cache
        .get_or_load(key("k"), load_ok(&calls, "new", freshness(10, 600, 0)))
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(lookup.value, "old");
    settle().await;
    assert_eq!(calls.get(), 0, "a failed key backs off");

    // After the backoff the key refreshes again.
    advance(secs(2)).await;
    let lookup = cache
        .get_or_load(key("k"), load_ok(&calls, "new", freshness(10, 600, 0)))
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(lookup.value, "old");
    settle().await;
    assert_eq!(calls.get(), 1);
    let now = cache.get("k").expect("refreshed");
    assert_eq!(now.value, "new");
    assert_eq!(now.status, Status::Fresh);
    assert_eq!(cache.stats().refreshes_panicked, 1);
    Ok(())
}

/// Keeps the compiler from seeing the loader's panic as unconditional.
fn cache_is_broken() -> bool {
    std::hint::black_box(true)
}

#[tokio::test(start_paused = true)]
async fn refresh_timeout_counts_as_a_failure() -> Result<(), String> {
    let cache: Cache = SwrCache::builder()
        .refresh_timeout(secs(5))
        .refresh_backoff(SECOND, secs(60))
        .build();
    cache.insert(key("k"), "old".into(), freshness(10, 600, 0));
    advance(secs(11)).await;

    let lookup = cache
        .get_or_load(key("k"), || async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, String>(Loaded::new("too late".to_owned(), freshness(10, 600, 0)))
        })
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(lookup.status, Status::Stale);
    settle().await;
    assert_eq!(cache.stats().refreshes_running, 1);

    advance(secs(5)).await;
    settle().await;
    let stats = cache.stats();
    assert_eq!(stats.refreshes_timed_out, 1);
    assert_eq!(stats.refreshes_failed, 1);
    assert_eq!(stats.refreshes_succeeded, 0);
    assert_eq!(stats.refreshes_running, 0);
    assert_eq!(cache.get("k").expect("kept").value, "old");

    // Like any failure, it starts a backoff.
    let calls = Calls::default();
    cache
        .get_or_load(key("k"), load_ok(&calls, "new", freshness(10, 600, 0)))
        .await
        .map_err(|e| e.to_string())?;
    settle().await;
    assert_eq!(calls.get(), 0, "a timed-out key backs off");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn failed_background_refresh_keeps_the_old_value() -> Result<(), String> {
    let cache = Cache::new(1 << 20);
    cache.insert(key("k"), "old".into(), freshness(10, 600, 0));
    advance(secs(11)).await;

    let calls = Calls::default();
    let lookup = cache
        .get_or_load(key("k"), load_err(&calls, "database down"))
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(lookup.value, "old");
    settle().await;
    assert_eq!(calls.get(), 1);
    let stats = cache.stats();
    assert_eq!(stats.refreshes_failed, 1);
    assert_eq!(stats.refreshes_panicked, 0);
    let kept = cache.get("k").expect("a failed refresh keeps the entry");
    assert_eq!(kept.value, "old");
    assert_eq!(kept.status, Status::Stale);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn dropped_leader_does_not_strand_its_waiters() {
    let cache: Cache = SwrCache::builder().lock_timeout(secs(3600)).build();
    let calls = Calls::default();
    let gate = Gate::new();

    let leader = tokio::spawn({
        let cache = cache.clone();
        let load = load_gated(&calls, &gate, "from the leader", freshness(60, 0, 0));
        async move { cache.get_or_load(key("k"), load).await }
    });
    settle().await;
    let waiter = tokio::spawn({
        let cache = cache.clone();
        let load = load_ok(&calls, "from the waiter", freshness(60, 0, 0));
        async move { cache.get_or_load(key("k"), load).await }
    });
    settle().await;
    assert_eq!(calls.get(), 1, "the second caller waits for the first");

    leader.abort();
    let lookup = tokio::time::timeout(SECOND, waiter)
        .await
        .expect("the waiter hung after its leader was dropped")
        .expect("waiter task")
        .expect("loaded");
    assert_eq!(lookup.value, "from the waiter");
    assert_eq!(lookup.status, Status::Miss);
    assert_eq!(calls.get(), 2);
    assert_eq!(cache.stats().loads_running, 0);
}

#[tokio::test(start_paused = true)]
async fn waiter_loads_on_its_own_after_the_lock_timeout() {
    let cache: Cache = SwrCache::builder().lock_timeout(secs(2)).build();
    let calls = Calls::default();
    let gate = Gate::new();

    let _leader = tokio::spawn({
        let cache = cache.clone();
        let load = load_gated(&calls, &gate, "from the leader", freshness(60, 0, 0));
        async move { cache.get_or_load(key("k"), load).await }
    });
    settle().await;
    let waiter = tokio::spawn({
        let cache = cache.clone();
        let load = load_ok(&calls, "from the waiter", freshness(60, 0, 0));
        async move { cache.get_or_load(key("k"), load).await }
    });
    advance(SECOND).await;
    settle().await;
    assert_eq!(
        calls.get(),
        1,
        "inside the lock timeout the second caller waits"
    );

    advance(secs(2)).await;
    let lookup = tokio::time::timeout(SECOND, waiter)
        .await
        .expect("the waiter loaded after the lock timeout")
        .expect("waiter task")
        .expect("loaded");
    assert_eq!(calls.get(), 2);
    assert_eq!(lookup.value, "from the waiter");
    assert_eq!(lookup.status, Status::Miss);
}

#[tokio::test(start_paused = true)]
async fn refresh_too_heavy_to_store_counts_as_a_failure() -> Result<(), String> {
    let cache: SwrCache<String, Vec<u8>> = SwrCache::builder()
        .capacity_bytes(64 << 10)
        .largest_entry_bytes(1 << 10)
        .weigher(|_, value: &Vec<u8>| value.len() as u64)
        .refresh_backoff(SECOND, secs(60))
        .build();
    let heavy = usize::try_from(cache.max_entry_bytes()).expect("small") + 1;
    assert!(cache.insert(key("k"), vec![1; 16], freshness(10, 600, 0)));
    advance(secs(11)).await;

    let calls = Calls::default();
    for _ in 0..3 {
        let calls = calls.clone();
        let lookup = cache
            .get_or_load(key("k"), move || async move {
                calls.record();
                Ok::<_, String>(Loaded::new(vec![2; heavy], freshness(10, 600, 0)))
            })
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(lookup.value, vec![1; 16], "the old value is kept");
        settle().await;
    }
    let stats = cache.stats();
    assert_eq!(stats.store_rejections, 1);
    assert_eq!(
        stats.refreshes_failed, 1,
        "nothing was stored: the refresh failed"
    );
    assert_eq!(
        calls.get(),
        1,
        "a failed refresh backs off instead of loading on every lookup"
    );
    Ok(())
}

/// Issue 2 §1: the generic engine: lookups with state, age and refreshing; the loader's own
/// freshness; cold failure returns the error; stale kept past its window until its deadline.
#[tokio::test(start_paused = true)]
async fn engine_is_generic_over_keys_and_values() -> TestResult {
    let cache: SwrCache<String, String> = SwrCache::builder()
        .capacity_bytes(1 << 20)
        .weigher(|k: &String, v: &String| (k.len() + v.len()) as u64)
        .build();
    let loads = Arc::new(AtomicUsize::new(0));
    let fresh = Freshness::new(secs(10))
        .with_stale_while_revalidate(secs(20))
        .with_stale_if_error(secs(100));
    let loader = |fail: bool| {
        let loads = loads.clone();
        move || async move {
            let n = loads.fetch_add(1, Ordering::SeqCst) + 1;
            if fail {
                Err(format!("db down ({n})"))
            } else {
                Ok(Loaded::new(format!("cfg{n}"), fresh))
            }
        }
    };

    // Cold start, failing loader: the error, no invented value.
    let cold = cache.get_or_load("judges".to_string(), loader(true)).await;
    assert_eq!(
        cold.err().as_deref().map(String::as_str),
        Some("db down (1)")
    );
    // Past the moment the failure stays the key's answer.
    advance(secs(2)).await;

    let first = cache
        .get_or_load("judges".to_string(), loader(false))
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!((first.value.as_str(), first.status), ("cfg2", Status::Miss));
    advance(secs(5)).await;
    let hit = cache
        .get_or_load("judges".to_string(), loader(false))
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(hit.status, Status::Fresh);
    assert_eq!(hit.age, secs(5));
    assert!(!hit.is_stale());
    assert_eq!(loads.load(Ordering::SeqCst), 2);

    // Stale: served at once; one refresh runs (it fails and keeps the value).
    advance(secs(10)).await; // age 15
    let stale = cache
        .get_or_load("judges".to_string(), loader(true))
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(stale.status, Status::Stale);
    assert!(stale.is_stale());
    assert!(stale.refreshing);
    assert_eq!(stale.value, "cfg2");
    settle().await;
    assert_eq!(loads.load(Ordering::SeqCst), 3);
    assert_eq!(cache.stats().refreshes_failed, 1);

    // Past the SWR window: still held (not deleted for being stale) and served on error.
    advance(secs(30)).await; // age 45
    let held = cache.get("judges").expect("kept until its last deadline");
    assert_eq!(held.value, "cfg2");
    let sie = cache
        .get_or_load("judges".to_string(), loader(true))
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(sie.status, Status::StaleIfError);
    assert_eq!(sie.value, "cfg2");

    // Past the stale-if-error deadline: the error.
    advance(secs(100)).await;
    assert!(cache
        .get_or_load("judges".to_string(), loader(true))
        .await
        .is_err());
    Ok(())
}

/// `Freshness::new(ttl)` has no stale windows: the entry is dead (removed) once its ttl passes,
/// and a failing loader's error is returned, not the old value. Stale serving needs the windows
/// set explicitly (see `stale_entries_are_kept_until_their_last_deadline`).
#[tokio::test(start_paused = true)]
async fn freshness_new_entries_are_removed_at_their_ttl() -> TestResult {
    let cache: SwrCache<String, String> = SwrCache::new(1 << 20);
    let key = "judges:en".to_owned();
    let loaded = cache
        .get_or_load(key.clone(), || async {
            Ok::<_, DbDown>(Loaded::new("qwen3".to_owned(), Freshness::new(secs(300))))
        })
        .await?;
    assert_eq!(loaded.status, Status::Miss);
    advance(secs(299)).await;
    assert!(cache.get(&key).is_some_and(|e| !e.is_stale()));

    advance(secs(301)).await;
    assert!(cache.get(&key).is_none(), "dead at its ttl");
    let calls = Calls::default();
    let counter = calls.clone();
    let failed = cache
        .get_or_load(key, move || async move {
            counter.record();
            Err::<Loaded<String>, _>(DbDown)
        })
        .await;
    assert!(failed.is_err(), "no stale value to fall back on");
    assert_eq!(calls.get(), 1);
    Ok(())
}

/// The engine's `get_or_load` counts a loader's error as a miss, but a loader's panic nowhere
/// (the HTTP path counts an origin's panic as a miss).
#[tokio::test(start_paused = true)]
async fn the_engine_counts_a_panicking_load() -> TestResult {
    let cache: SwrCache<String, String> = SwrCache::new(1 << 20);
    let loading = cache.clone();
    let boom = true;
    let joined = tokio::spawn(async move {
        loading
            .get_or_load("k".to_owned(), move || async move {
                if boom {
                    panic!("loader panicked (on purpose)");
                }
                Ok::<_, String>(Loaded::new("v".to_owned(), Freshness::new(secs(60))))
            })
            .await
            .map(|lookup| lookup.value)
    })
    .await;
    assert!(joined.is_err());
    let stats = cache.stats();
    assert_eq!(stats.misses + stats.stale_if_error, 1, "{stats:?}");
    Ok(())
}

#[tokio::test]
async fn lifetime_gives_the_wall_clock_deadlines_of_what_is_stored() {
    let cache: SwrCache<&'static str, u32> = SwrCache::builder().build();
    assert!(cache.lifetime("k").is_none());
    let before = std::time::SystemTime::now();
    let freshness = Freshness::new(Duration::from_secs(60))
        .with_stale_while_revalidate(Duration::from_secs(30))
        .with_stale_if_error(Duration::from_secs(600));
    cache.insert("k", 1, freshness);
    let lifetime = cache.lifetime("k").expect("stored");
    let after = std::time::SystemTime::now();
    assert!(lifetime.stored_at >= before - Duration::from_millis(5) && lifetime.stored_at <= after);
    let span = |until: std::time::SystemTime| until.duration_since(lifetime.stored_at).unwrap();
    assert!(
        span(lifetime.fresh_until).abs_diff(Duration::from_secs(60)) < Duration::from_millis(5)
    );
    assert!(
        span(lifetime.stale_until).abs_diff(Duration::from_secs(90)) < Duration::from_millis(5)
    );
    assert!(
        span(lifetime.error_until).abs_diff(Duration::from_secs(660)) < Duration::from_millis(5)
    );
    assert_eq!(lifetime.last_deadline(), lifetime.error_until);
}

#[tokio::test(start_paused = true)]
async fn a_value_inserted_with_another_caches_lifetime_keeps_its_deadlines() {
    let first: SwrCache<&'static str, u32> = SwrCache::builder().build();
    let freshness = Freshness::new(Duration::from_secs(10))
        .with_stale_while_revalidate(Duration::from_secs(20));
    first.insert("k", 7, freshness);
    advance(Duration::from_secs(4)).await;
    let second: SwrCache<&'static str, u32> = SwrCache::builder().build();
    assert!(second.insert_with_lifetime("k", 7, first.lifetime("k").unwrap()));
    let got = second.get("k").unwrap();
    assert_eq!((got.value, got.status), (7, Status::Fresh));
    assert!(got.age >= Duration::from_secs(4), "age kept: {:?}", got.age);
    advance(Duration::from_secs(7)).await;
    assert_eq!(second.get("k").unwrap().status, Status::Stale);
    // Past every deadline: nothing to store.
    let mut dead = first.lifetime("k").unwrap();
    dead.stale_until = dead.stored_at;
    dead.fresh_until = dead.stored_at;
    dead.error_until = dead.stored_at;
    dead.retain_until = dead.stored_at;
    assert!(!second.insert_with_lifetime("d", 1, dead));
}

fn tiered(tier: &Arc<MapTier<u32>>) -> SwrCache<String, u32> {
    SwrCache::builder()
        .shared_tier(Arc::clone(tier) as Arc<dyn tower_swr::engine::SharedTier<String, u32>>)
        .build()
}

type BoxedLoad = Pin<Box<dyn Future<Output = Result<Loaded<u32>, String>> + Send>>;

fn counting_loader(
    calls: &Arc<AtomicUsize>,
    value: u32,
) -> impl FnOnce() -> BoxedLoad + Send + 'static {
    let calls = Arc::clone(calls);
    move || {
        calls.fetch_add(1, Ordering::SeqCst);
        let freshness = Freshness::new(Duration::from_secs(10))
            .with_stale_while_revalidate(Duration::from_secs(60));
        Box::pin(async move { Ok(Loaded::new(value, freshness)) })
    }
}

#[tokio::test(start_paused = true)]
async fn caches_sharing_a_tier_load_a_key_once_between_them() {
    let tier: Arc<MapTier<u32>> = Arc::default();
    let (one, two) = (tiered(&tier), tiered(&tier));
    let calls = Arc::new(AtomicUsize::new(0));
    let first = one
        .get_or_load("k".into(), counting_loader(&calls, 1))
        .await
        .unwrap();
    assert_eq!(first.status, Status::Miss);
    settle().await; // the write to the tier is detached
    let second = two
        .get_or_load("k".into(), counting_loader(&calls, 2))
        .await
        .unwrap();
    assert_eq!((second.status, second.value), (Status::SharedTier, 1));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the second cache did not load"
    );
    assert_eq!(two.stats().shared_tier_hits, 1);
    assert_eq!(two.stats().misses, 0);
    // Now held in the second cache's memory too: a fresh hit that never asks the tier.
    let gets = tier.gets.load(Ordering::SeqCst);
    let third = two
        .get_or_load("k".into(), counting_loader(&calls, 3))
        .await
        .unwrap();
    assert_eq!((third.status, third.value), (Status::Fresh, 1));
    assert_eq!(
        tier.gets.load(Ordering::SeqCst),
        gets,
        "a fresh hit stays in memory"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stale_entry_takes_the_fresher_copy_another_cache_put_in_the_tier() {
    let tier: Arc<MapTier<u32>> = Arc::default();
    let (one, two) = (tiered(&tier), tiered(&tier));
    let calls = Arc::new(AtomicUsize::new(0));
    two.get_or_load("k".into(), counting_loader(&calls, 1))
        .await
        .unwrap();
    advance(Duration::from_secs(11)).await;
    // The first cache loads the key anew (it had nothing) and shares it...
    tier.map.lock().unwrap().clear();
    one.get_or_load("k".into(), counting_loader(&calls, 2))
        .await
        .unwrap();
    settle().await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // ...so the second cache's refresh of its stale copy takes it without loading.
    let stale = two
        .get_or_load("k".into(), counting_loader(&calls, 3))
        .await
        .unwrap();
    assert_eq!((stale.status, stale.value), (Status::Stale, 1));
    settle().await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the refresh took the tier's copy"
    );
    let refreshed = two.get("k").unwrap();
    assert_eq!((refreshed.status, refreshed.value), (Status::Fresh, 2));
}

#[tokio::test(start_paused = true)]
async fn a_refresh_takes_the_copy_another_cache_shared_while_it_asked_for_the_lock() {
    let tier: Arc<MapTier<u32>> = Arc::default();
    let patient = || {
        SwrCache::builder()
            .shared_tier(Arc::clone(&tier) as Arc<dyn tower_swr::engine::SharedTier<String, u32>>)
            .shared_tier_timeout(Duration::from_secs(5))
            .build()
    };
    let (one, two): (SwrCache<String, u32>, SwrCache<String, u32>) = (patient(), patient());
    let calls = Arc::new(AtomicUsize::new(0));
    two.get_or_load("k".into(), counting_loader(&calls, 1))
        .await
        .unwrap();
    settle().await;
    advance(Duration::from_secs(11)).await;
    // (Lifetimes in the tier are on the wall clock, which the paused clock does not move.)
    tier.map.lock().unwrap().clear();
    // The second cache's refresh asks for the lock, and is answered only after...
    let gate = Arc::new(tokio::sync::Notify::new());
    *tier.claim_gate.lock().unwrap() = Some(Arc::clone(&gate));
    let stale = two
        .get_or_load("k".into(), counting_loader(&calls, 3))
        .await
        .unwrap();
    assert_eq!((stale.status, stale.value), (Status::Stale, 1));
    settle().await;
    // ...the first cache, with nothing in memory, has loaded the key and shared it.
    let loaded = one
        .get_or_load("k".into(), counting_loader(&calls, 2))
        .await
        .unwrap();
    assert_eq!((loaded.status, loaded.value), (Status::Miss, 2));
    settle().await;
    gate.notify_one();
    settle().await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the refresh took the copy shared meanwhile"
    );
    let refreshed = two.get("k").unwrap();
    assert_eq!((refreshed.status, refreshed.value), (Status::Fresh, 2));
}

/// A lifetime on the wall clock that ended its freshness `stale_for` ago, with a
/// stale-while-revalidate window of `swr` and a stale-if-error window of `sie` after that.
fn lifetime_stale_for(stale_for: u64, swr: u64, sie: u64) -> tower_swr::engine::Lifetime {
    let now = std::time::SystemTime::now();
    let fresh_until = now - secs(stale_for);
    tower_swr::engine::Lifetime {
        stored_at: fresh_until - secs(10),
        initial_age: Duration::ZERO,
        fresh_until,
        stale_until: fresh_until + secs(swr),
        error_until: fresh_until + secs(sie),
        retain_until: fresh_until,
        load_time: Duration::from_millis(5),
    }
}

fn slow_loader(
    calls: &Arc<AtomicUsize>,
    value: u32,
    takes: Duration,
) -> impl FnOnce() -> BoxedLoad + Send + 'static {
    let calls = Arc::clone(calls);
    move || {
        calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            tokio::time::sleep(takes).await;
            Ok(Loaded::new(value, Freshness::new(Duration::from_secs(10))))
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_stale_copy_in_the_tier_is_answered_at_once_and_refreshed_once() {
    let tier: Arc<MapTier<u32>> = Arc::default();
    let entry = (1, lifetime_stale_for(5, 60, 60));
    tier.map.lock().unwrap().insert("k".into(), entry);
    let cache = tiered(&tier);
    let calls = Arc::new(AtomicUsize::new(0));
    let started = tokio::time::Instant::now();
    let got = cache
        .get_or_load("k".into(), slow_loader(&calls, 2, secs(3)))
        .await
        .unwrap();
    assert_eq!((got.status, got.value), (Status::Stale, 1));
    assert!(got.refreshing, "its refresh runs in the background");
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "not waiting for the loader"
    );
    // Every request meanwhile is answered stale from memory, and the loader runs once.
    for _ in 0..3 {
        let again = cache
            .get_or_load("k".into(), slow_loader(&calls, 3, secs(3)))
            .await
            .unwrap();
        assert_eq!((again.status, again.value), (Status::Stale, 1));
    }
    settle().await; // the refresh task starts its load
    advance(secs(4)).await;
    settle().await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let refreshed = cache.get("k").unwrap();
    assert_eq!((refreshed.status, refreshed.value), (Status::Fresh, 2));
    assert_eq!(cache.stats().stale_hits, 4);
}

#[tokio::test(start_paused = true)]
async fn a_copy_in_the_tier_past_its_window_stands_in_for_a_failing_loader() {
    let tier: Arc<MapTier<u32>> = Arc::default();
    // Stale for 100 s: past its 30 s stale-while-revalidate window, inside stale-if-error.
    let entry = (1, lifetime_stale_for(100, 30, 600));
    tier.map.lock().unwrap().insert("k".into(), entry);
    let cache = tiered(&tier);
    let failing = || async { Err::<Loaded<u32>, _>("database down".to_string()) };
    let got = cache.get_or_load("k".into(), failing).await.unwrap();
    assert_eq!((got.status, got.value), (Status::StaleIfError, 1));
    // Past every window it is of no use: the loader's error.
    let dead: Arc<MapTier<u32>> = Arc::default();
    let entry = (1, lifetime_stale_for(1_000, 30, 600));
    dead.map.lock().unwrap().insert("k".into(), entry);
    let cache = tiered(&dead);
    let failing = || async { Err::<Loaded<u32>, _>("database down".to_string()) };
    let error = cache.get_or_load("k".into(), failing).await.unwrap_err();
    assert_eq!(*error, "database down");
}

#[tokio::test(start_paused = true)]
async fn a_hanging_tier_costs_a_miss_its_timeout_and_nothing_more() {
    let tier: Arc<MapTier<u32>> = Arc::default();
    tier.hang.store(true, Ordering::SeqCst);
    let cache: SwrCache<String, u32> = SwrCache::builder()
        .shared_tier(Arc::clone(&tier) as Arc<dyn tower_swr::engine::SharedTier<String, u32>>)
        .shared_tier_timeout(Duration::from_millis(30))
        .build();
    let calls = Arc::new(AtomicUsize::new(0));
    let started = tokio::time::Instant::now();
    let got = cache
        .get_or_load("k".into(), counting_loader(&calls, 5))
        .await
        .unwrap();
    assert_eq!((got.status, got.value), (Status::Miss, 5));
    assert_eq!(started.elapsed(), Duration::from_millis(30));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn removing_a_key_removes_the_tiers_copy_too() {
    let tier: Arc<MapTier<u32>> = Arc::default();
    let (one, two) = (tiered(&tier), tiered(&tier));
    let calls = Arc::new(AtomicUsize::new(0));
    one.get_or_load("k".into(), counting_loader(&calls, 1))
        .await
        .unwrap();
    settle().await;
    assert!(one.remove("k"));
    settle().await;
    assert!(tier.map.lock().unwrap().is_empty());
    let got = two
        .get_or_load("k".into(), counting_loader(&calls, 2))
        .await
        .unwrap();
    assert_eq!((got.status, got.value), (Status::Miss, 2));
}
