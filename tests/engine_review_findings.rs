//! Findings of a white-box review of the generic engine (`tower_swr::engine`), each shown
//! through the public API only. A test that shows a bug still there is `#[ignore]`d with
//! `FINDING: ...` and fails with `--ignored`.
//!
//! Every test runs on tokio's paused clock, which the cache reads.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::advance;
use tower_swr::engine::{Freshness, Loaded, Status, SwrCache};

type Cache = SwrCache<String, u64>;
type LoadFuture = Pin<Box<dyn Future<Output = Result<Loaded<u64>, String>> + Send>>;

fn key(s: &str) -> String {
    s.to_string()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Lets spawned tasks run without moving the clock.
async fn settle() {
    for _ in 0..200 {
        tokio::task::yield_now().await;
    }
}

#[derive(Clone, Default)]
struct Calls(Arc<AtomicUsize>);

impl Calls {
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// A loader that sleeps `delay`, then returns `value` fresh for `freshness`.
fn slow(
    calls: &Calls,
    value: u64,
    freshness: Freshness,
    delay: Duration,
) -> impl FnOnce() -> LoadFuture + Send + 'static {
    let calls = calls.clone();
    move || {
        calls.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            Ok(Loaded::new(value, freshness))
        })
    }
}

/// `mark_stale` on an entry that is already stale restarts its stale-while-revalidate window
/// from now: the value is served stale past the deadline it was stored with, and a soft purge
/// repeated now and then keeps a value alive for ever.
#[tokio::test(start_paused = true)]
async fn mark_stale_does_not_extend_the_stale_window_of_a_stale_entry() {
    let cache: Cache = SwrCache::builder().build();
    // Fresh for 10 s, then servable stale until 20 s; nothing after that.
    let freshness = Freshness::new(secs(10)).with_stale_while_revalidate(secs(10));
    cache.insert(key("a"), 1, freshness);
    advance(secs(15)).await;
    assert_eq!(cache.get("a").unwrap().status, Status::Stale);
    assert!(cache.mark_stale("a"));
    // 21 s after the store: past its stale-while-revalidate window.
    advance(secs(6)).await;
    let got = cache.get("a");
    assert!(
        got.is_none(),
        "served past its stale window (stored with 10 s + 10 s, 21 s ago): {got:?}"
    );
}

/// The same with stale-if-error: a soft purge of a value already past its freshness moves its
/// stale-if-error deadline, so a failing loader is answered with a value older than the window
/// it was stored with.
#[tokio::test(start_paused = true)]
async fn mark_stale_does_not_extend_the_stale_if_error_window() {
    let cache: Cache = SwrCache::builder().build();
    let freshness = Freshness::new(secs(10)).with_stale_if_error(secs(10));
    cache.insert(key("a"), 1, freshness);
    advance(secs(15)).await;
    assert_eq!(cache.get("a").unwrap().status, Status::Expired);
    assert!(cache.mark_stale("a"));
    advance(secs(6)).await;
    let got = cache
        .get_or_load(key("a"), || async {
            Err::<Loaded<u64>, _>("db down".to_string())
        })
        .await;
    assert!(
        got.is_err(),
        "a value 21 s old stood in for a failed load though its stale-if-error window ended at 20 s: {got:?}"
    );
}

/// `Stats::loads_running` is documented as "foreground origin loads (coalesced misses)
/// running now", yet a background refresh leads the key's flight and is counted there too:
/// one refresh shows as one refresh running AND one foreground load running.
#[tokio::test(start_paused = true)]
async fn a_background_refresh_is_not_a_foreground_load() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    let freshness = Freshness::new(secs(1)).with_stale_while_revalidate(secs(100));
    cache.insert(key("a"), 1, freshness);
    advance(secs(2)).await;
    let got = cache
        .get_or_load(key("a"), slow(&calls, 2, freshness, secs(5)))
        .await
        .unwrap();
    assert_eq!(got.status, Status::Stale);
    settle().await;
    let stats = cache.stats();
    assert_eq!(stats.refreshes_running, 1);
    assert_eq!(
        stats.loads_running, 0,
        "no miss is loading: only the background refresh runs"
    );
}

/// A refresh whose result an invalidation fenced (here `insert` while it ran) stores nothing,
/// yet is counted in `refreshes_succeeded` ("background refreshes that stored (or confirmed) a
/// new value"), so `refreshes_succeeded` overstates what refreshes stored.
#[tokio::test(start_paused = true)]
async fn a_fenced_refresh_is_not_counted_as_succeeded() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    let freshness = Freshness::new(secs(1)).with_stale_while_revalidate(secs(100));
    cache.insert(key("a"), 1, freshness);
    advance(secs(2)).await;
    let got = cache
        .get_or_load(key("a"), slow(&calls, 2, freshness, secs(5)))
        .await
        .unwrap();
    assert_eq!(got.status, Status::Stale);
    settle().await;
    // The application writes the new value itself while the refresh runs: it wins.
    assert!(cache.insert(key("a"), 3, Freshness::new(secs(60))));
    advance(secs(6)).await;
    settle().await;
    assert_eq!(calls.get(), 1);
    assert_eq!(cache.get("a").unwrap().value, 3, "the inserted value wins");
    let stats = cache.stats();
    assert_eq!(stats.refreshes_started, 1);
    assert_eq!(
        stats.refreshes_succeeded, 0,
        "the refresh stored nothing (its value was fenced), yet counted as storing one"
    );
}

/// Two callers of a key whose loader panics: the leader counts as a miss, the waiter the
/// panic is passed on to is counted nowhere (not collapsed, not a miss), so the request
/// counters no longer add up to the calls made ("every request counts once").
#[tokio::test(start_paused = true)]
async fn a_waiter_of_a_panicking_load_is_counted_once() {
    let cache: Cache = SwrCache::builder().build();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let cache = cache.clone();
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load(key("a"), || async {
                    tokio::time::sleep(secs(1)).await;
                    if true {
                        panic!("loader bug");
                    }
                    Ok::<_, String>(Loaded::new(1, Freshness::new(secs(60))))
                })
                .await
        }));
    }
    let mut panics = 0;
    for task in tasks {
        panics += usize::from(task.await.is_err());
    }
    assert_eq!(
        panics, 2,
        "the panic goes on up in both callers, as documented"
    );
    let stats = cache.stats();
    assert_eq!(stats.loads_failed, 1, "one loader call");
    assert_eq!(
        stats.fresh_hits
            + stats.stale_hits
            + stats.misses
            + stats.collapsed
            + stats.stale_if_error
            + stats.failure_hits,
        2,
        "two calls, each counted once: {stats:?}"
    );
}

/// `Lookup::refreshing` says "whether a background refresh of its key is running", but a fresh
/// answer always says `false`: with early refresh (XFetch) on, a fresh hit starts a refresh
/// and the next fresh hit, while that refresh runs, still reports none (`get` reports it).
#[tokio::test(start_paused = true)]
async fn a_fresh_answer_reports_the_early_refresh_that_runs() {
    // A huge beta: every fresh hit wants the early refresh (misses with odds of about 1e-7).
    let cache: Cache = SwrCache::builder().early_refresh(1e12).build();
    let calls = Calls::default();
    let freshness = Freshness::new(secs(100)).with_stale_while_revalidate(secs(100));
    cache.insert(key("a"), 1, freshness);
    let first = cache
        .get_or_load(key("a"), slow(&calls, 2, freshness, secs(5)))
        .await
        .unwrap();
    assert_eq!(first.status, Status::Fresh);
    settle().await;
    assert!(cache.is_refreshing("a"), "the early refresh runs");
    assert!(cache.get("a").unwrap().refreshing, "get says so");
    let second = cache
        .get_or_load(key("a"), slow(&calls, 3, freshness, secs(5)))
        .await
        .unwrap();
    assert_eq!(second.status, Status::Fresh);
    assert!(
        second.refreshing,
        "the refresh of this key runs, but the fresh Lookup says it does not"
    );
}

/// The byte budget holds: many entries into a small cache never weigh more than its capacity
/// (a check that passed: kept as a guard).
#[tokio::test(start_paused = true)]
async fn the_byte_budget_bounds_what_is_held() {
    let cache: SwrCache<String, Vec<u8>> = SwrCache::builder()
        .capacity_bytes(64 << 10)
        .largest_entry_bytes(4 << 10)
        .weigher(|_, v: &Vec<u8>| v.len() as u64)
        .build();
    let freshness = Freshness::new(secs(60)).with_stale_if_error(secs(3600));
    for i in 0..2_000u64 {
        let len = (i as usize * 37) % 4_000;
        cache.insert(format!("k{i}"), vec![0; len], freshness);
        let stats = cache.stats();
        assert!(
            stats.bytes <= stats.capacity_bytes,
            "{} bytes held over a budget of {}",
            stats.bytes,
            stats.capacity_bytes
        );
    }
    assert!(cache.stats().evictions > 0);
}

/// Concurrent misses of a key whose value is too heavy to store: the doc promises "one caller
/// per key runs `load`, the others wait for its result", but the leader's flight lands as "not
/// stored" and every waiter then calls the loader itself, one call per caller (the value was
/// in hand to share, as a failure is).
#[tokio::test(start_paused = true)]
async fn concurrent_misses_of_a_too_heavy_value_make_one_load() {
    let cache: SwrCache<String, Vec<u8>> = SwrCache::builder()
        .capacity_bytes(64 << 10)
        .largest_entry_bytes(1 << 10)
        .weigher(|_, v: &Vec<u8>| v.len() as u64)
        .build();
    let heavy = usize::try_from(cache.max_entry_bytes()).unwrap() + 1;
    let calls = Calls::default();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let cache = cache.clone();
        let calls = calls.clone();
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load(key("big"), move || {
                    calls.0.fetch_add(1, Ordering::SeqCst);
                    async move {
                        tokio::time::sleep(secs(1)).await;
                        Ok::<_, String>(Loaded::new(vec![7; heavy], Freshness::new(secs(60))))
                    }
                })
                .await
                .unwrap()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().value.len(), heavy);
    }
    assert_eq!(
        calls.get(),
        1,
        "4 concurrent callers of one key: one loader call expected"
    );
}

/// Worse, `mark_stale` of an entry past every deadline (not yet swept from the store: `get`
/// already answers `None`) brings it back to life, stale for a whole new window.
#[tokio::test(start_paused = true)]
async fn mark_stale_does_not_bring_a_dead_entry_back() {
    let cache: Cache = SwrCache::builder().build();
    let freshness = Freshness::new(secs(10)).with_stale_while_revalidate(secs(10));
    cache.insert(key("a"), 1, freshness);
    advance(secs(25)).await;
    assert!(cache.get("a").is_none(), "past every deadline");
    cache.mark_stale("a");
    let got = cache.get("a");
    assert!(
        got.is_none(),
        "a value dead for 5 s is served again after a soft purge: {got:?}"
    );
}

/// A shared tier that holds nothing and takes 10 ms to say so (a remote store's round trip).
struct SlowEmptyTier;

impl tower_swr::engine::SharedTier<String, u64> for SlowEmptyTier {
    fn get<'a>(
        &'a self,
        _key: &'a String,
    ) -> tower_swr::engine::TierFuture<'a, Option<(u64, tower_swr::engine::Lifetime)>> {
        Box::pin(async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            None
        })
    }

    fn put<'a>(
        &'a self,
        _key: &'a String,
        _value: &'a u64,
        _lifetime: &'a tower_swr::engine::Lifetime,
    ) -> tower_swr::engine::TierFuture<'a, ()> {
        Box::pin(async {})
    }

    fn remove<'a>(&'a self, _key: &'a String) -> tower_swr::engine::TierFuture<'a, ()> {
        Box::pin(async {})
    }
}

/// A loader that panics when called (before it returns its future, e.g. in code that builds
/// the query) is called once per caller, not once: the panic escapes outside the engine's
/// catch, the leader's flight is abandoned rather than failed, and each waiter competes again
/// and calls the loader itself. The docs promise "a loader that panics is called once all the
/// same: the panic goes on up in the caller that ran it and in every caller that waited".
/// (Waiters can join here because the leader first awaits the shared tier's read.)
#[tokio::test(start_paused = true)]
async fn a_loader_panicking_when_called_is_called_once() {
    let cache: Cache = SwrCache::builder()
        .shared_tier(Arc::new(SlowEmptyTier))
        .build();
    let calls = Calls::default();
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let cache = cache.clone();
        let calls = calls.clone();
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load(key("a"), move || -> LoadFuture {
                    calls.0.fetch_add(1, Ordering::SeqCst);
                    panic!("bad query");
                })
                .await
        }));
    }
    let mut panics = 0;
    for task in tasks {
        panics += usize::from(task.await.is_err());
    }
    assert_eq!(panics, 3, "the panic goes on up in every caller");
    assert_eq!(
        calls.get(),
        1,
        "one loader call for three concurrent callers"
    );
    assert_eq!(cache.stats().loads_failed, 1);
}

/// The same loader, one caller, no tier: its panic is not counted in `loads_failed` ("an
/// error, a failure status, a panic"), as a panic inside the loader's future is.
#[tokio::test(start_paused = true)]
async fn a_loader_panicking_when_called_counts_as_a_failed_load() {
    let cache: Cache = SwrCache::builder().build();
    let task = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_load(key("a"), || -> LoadFuture { panic!("bad query") })
                .await
        })
    };
    assert!(task.await.is_err(), "the panic goes on up");
    let stats = cache.stats();
    assert_eq!(stats.misses, 1);
    assert_eq!(stats.loads_failed, 1, "{stats:?}");
}

/// And with a value inside its stale-if-error window, that panic goes up to the caller instead
/// of the stale value answering ("the panic goes on up ... unless a stale-if-error value answers
/// them"), as it does for a panic inside the loader's future.
#[tokio::test(start_paused = true)]
async fn a_loader_panicking_when_called_falls_back_on_stale_if_error() {
    let cache: Cache = SwrCache::builder().build();
    cache.insert(
        key("a"),
        1,
        Freshness::new(secs(10)).with_stale_if_error(secs(3600)),
    );
    advance(secs(20)).await;
    let task = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_load(key("a"), || -> LoadFuture { panic!("bad query") })
                .await
        })
    };
    let got = task.await;
    assert!(
        matches!(&got, Ok(Ok(lookup)) if lookup.status == Status::StaleIfError && lookup.value == 1),
        "the stale-if-error value should answer: {got:?}"
    );
}

/// A soft purge while a refresh runs: the purge fences that refresh (its value, loaded before
/// the purge, is not stored), but the lookups after the purge find its claim still held and
/// start none of their own, reporting `refreshing: true` meanwhile. The refresh the purge asks
/// for only starts at the first stale hit after the fenced one ends: here the value from after
/// the purge is still not there 6 s later, when a refresh started at the purge had stored it.
#[tokio::test(start_paused = true)]
async fn mark_stale_during_a_refresh_refreshes_again() {
    let cache: Cache = SwrCache::builder().build();
    let calls = Calls::default();
    let freshness = Freshness::new(secs(1)).with_stale_while_revalidate(secs(1000));
    cache.insert(key("a"), 1, freshness);
    advance(secs(2)).await;
    // A slow refresh starts (20 s).
    let got = cache
        .get_or_load(key("a"), slow(&calls, 2, freshness, secs(20)))
        .await
        .unwrap();
    assert_eq!(got.status, Status::Stale);
    settle().await;
    advance(secs(1)).await;
    // The source changed: a soft purge, then the next lookup.
    assert!(cache.mark_stale("a"));
    let after = cache
        .get_or_load(key("a"), slow(&calls, 3, freshness, secs(5)))
        .await
        .unwrap();
    assert_eq!((after.status, after.value), (Status::Stale, 1));
    // The refresh's task first runs (and starts its 5 s) before the clock moves.
    settle().await;
    advance(secs(6)).await;
    settle().await;
    let now = cache.get("a").unwrap();
    assert_eq!(
        (now.value, calls.get()),
        (3, 2),
        "no refresh started after the purge (the lookup said refreshing: {})",
        after.refreshing
    );
}

/// Past the lock timeout one waiter starts a backup attempt, and "every waiter, that one
/// included, takes whichever load stores first". When the backup attempt fails fast, its
/// failure is handed to every other waiter at once, though the first attempt is still under way
/// and stores a value 5 s later: they get an error where the docs say they take a value stored.
#[tokio::test(start_paused = true)]
async fn a_failed_backup_attempt_does_not_fail_the_waiters_of_the_first() {
    let cache: Cache = SwrCache::builder().lock_timeout(secs(5)).build();
    let calls = Calls::default();
    let leader = {
        let cache = cache.clone();
        let calls = calls.clone();
        tokio::spawn(async move {
            cache
                .get_or_load(
                    key("a"),
                    slow(&calls, 1, Freshness::new(secs(60)), secs(10)),
                )
                .await
        })
    };
    settle().await;
    let mut waiters = Vec::new();
    for _ in 0..2 {
        let cache = cache.clone();
        let calls = calls.clone();
        waiters.push(tokio::spawn(async move {
            cache
                .get_or_load(key("a"), move || {
                    calls.0.fetch_add(1, Ordering::SeqCst);
                    async { Err::<Loaded<u64>, _>("timeout from a replica".to_string()) }
                })
                .await
        }));
    }
    let mut answers = Vec::new();
    for waiter in waiters {
        answers.push(waiter.await.unwrap().map(|l| l.value));
    }
    assert_eq!(leader.await.unwrap().unwrap().value, 1);
    assert_eq!(calls.get(), 2, "the first attempt and one backup");
    // The backup's own caller may get its error; the other waiter should take the value stored.
    assert!(
        answers.contains(&Ok(1)),
        "every waiter got the backup's failure though the first attempt stored 1: {answers:?}"
    );
}
