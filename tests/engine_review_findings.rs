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
#[ignore = "FINDING: mark_stale on an already-stale entry extends its stale-while-revalidate window"]
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
#[ignore = "FINDING: mark_stale on an expired entry extends its stale-if-error window"]
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
