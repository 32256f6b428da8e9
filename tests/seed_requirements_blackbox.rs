//! Black-box tests of the five seed documents in `/work/shared/seeds/`, against the public API
//! and docs only (README, `docs/`, `examples/`, rustdoc). Paused tokio clock throughout.
//!
//! # Requirements extracted from the seeds
//!
//! ## `background-refresh-flow.md` (flow-*)
//! - flow-1: a fresh cache entry is answered from the cache (~50 ms), without scraping.
//! - flow-2: no cache: scrape (origin), save to the cache, return the response; later requests
//!   are served from the cache ("from_cache: always true except first time").
//! - flow-3: a stale entry is returned at once ("no waiting for scraping") and triggers an
//!   automatic background refresh.
//! - flow-4: stale while a refresh is already running: skip (no duplicate refresh), return the
//!   cached response.
//! - flow-5: once the background refresh completes, the next request gets the NEW data, fresh.
//! - flow-6: requests made while the refresh (3-8 s scrape) runs are still fast.
//! - flow-7: validity per endpoint: `/api/cinema` 6 days, `/api/events` 5 days,
//!   `/api/google_trend` 24 hours; auto-refresh after that.
//! - flow-8: response metadata: `from_cache`, `cache_valid`, `cache_date`,
//!   `refreshing_in_background` (here: the `CacheInfo` extension, `Cache-Status`, `Age`).
//! - flow-9: the example timeline: 00:00 fresh; 24:01 stale → cached data + refresh; 24:08
//!   refresh done; 24:09 new data, fresh.
//! - flow-10: thread safety: ongoing refreshes tracked, no duplicate background work, background
//!   work does not block shutdown.
//! - flow-11: comparison table: background refresh answers in "50 ms" where no cache / sync
//!   refresh take 3-8 s.
//!
//! ## `scenario-2-swr-prices-ru.md` (prices-*; translated from Russian)
//! - prices-1: `GET /api/cargos/prices/` reads the cache by key `(user_id + hash(filters) + limit)`.
//! - prices-2: fresh cache → returned at once.
//! - prices-3: stale cache → the stale answer is returned and a background update is triggered,
//!   with a lock so that updates never run in parallel.
//! - prices-4: the next polling cycle (10-15 s) gets the updated prices.
//! - prices-5: when CargoTech (the external API) is down, prices stay those of the last
//!   successful update.
//! - prices-6: the UI does not depend on the speed of the external API (fast answers even while
//!   it degrades).
//! - prices-7: the number of real requests to CargoTech is limited (by TTL/lock) however many
//!   cheap cache reads the pollers make.
//! - prices-8: different TTLs possible, e.g. list vs prices.
//! - prices-9: many simultaneous users are served (scales with clients; an unstable or
//!   rate-limited external API is not multiplied by them).
//!
//! ## `stampede-prevention-strategy.md` (stampede-*)
//! - stampede-1: a mutex per cache key: only one refresh of a key at a time (N concurrent stale
//!   hits → 1 refresh; N concurrent misses → 1 origin call).
//! - stampede-2: the mutex expires after 5 s, so a stuck holder never deadlocks the key.
//! - stampede-3: max-age 60 s fresh, stale-while-revalidate 120 s, 180 s total before
//!   expiration; at 180 s the next request is a MISS.
//! - stampede-4: inside the revalidate window: serve stale immediately, trigger a background
//!   refresh, update the cache without blocking the response.
//! - stampede-5: early refresh: the refresh starts when the content becomes stale (60 s), not
//!   when it expires (180 s), which reduces misses.
//! - stampede-6: jitter (optional): randomised refresh times so keys do not refresh together.
//! - stampede-7: circuit breaker (optional): stop refresh attempts under trouble, serve stale.
//! - stampede-8: observability headers `X-Cache` (HIT/MISS), `X-Cache-Key`, `X-Query-Time-ms`
//!   (response time), `Age`.
//! - stampede-9: production: Redis for the distributed mutex (see the Redis file), health checks
//!   of hit rates and refresh failures, metrics of cache performance and stampede events, load
//!   testing under high concurrency.
//!
//! ## `story-scan-stale-while-revalidate.md` (story-*)
//! - story-1: a symbol/data_type with cached data past its TTL: the stale payload is returned
//!   immediately instead of blocking until a fresh fetch completes.
//! - story-2: serving stale triggers a background refresh; the next request sees fresh data, or
//!   stale again if the refresh has not completed.
//! - story-3: the refresh does not block the request that got stale data.
//! - story-4: thundering herd at expiry: the first request gets stale and triggers ONE
//!   background refresh; the others are served from the cache until it completes.
//! - story-5: the behaviour is documented: when stale is served, when a refresh is triggered,
//!   how TTLs interact.
//! - story-6: entries are per symbol/data_type (separate keys stay independent).
//!
//! ## `task-swr-config-cache.md` (config-*; the engine, without HTTP)
//! - config-1: fresh (age < 5 min TTL) → returned immediately, no database query.
//! - config-2: stale or miss → database query; success → cache updated, fresh data returned.
//! - config-3: database failure with stale data → the stale data, with a WARNING log.
//! - config-4: no stale data and the database fails → an explicit error (no hard-coded or
//!   invented fallback), fast ("fail fast" on a cold start).
//! - config-5: the cache NEVER auto-deletes stale entries (kept as the fallback for an outage).
//! - config-6: `get(key)` returns `{ data, isStale, age }` or nothing.
//! - config-7: `set(key, data)` stores with the current timestamp.
//! - config-8: `has(key)` says whether any data (fresh or stale) is held.
//! - config-9: `clear()` removes all entries.
//! - config-10: separate keys (`judges:{language}`, stages, phases) are independent.
//! - config-11: observability: counters of hits by fresh|stale, of database failures and of
//!   fallback usage.
//! - config-12: alert when the stale cache used in an outage is older than a threshold (1 h).
//! - config-13: always log a WARNING when stale data is used (every time).
//! - config-14 (brief): concurrent callers of a missing key make one database query and share
//!   its value or its error.
//! - config-15: risk "cache memory growth": ~50 entries of ~1 KB stay cached, < 100 KB.
//!
//! Redis-only requirements (prices: "Redis/locmem", lock in the cache; stampede-9: a distributed
//! mutex) are in `tests/seed_requirements_redis_blackbox.rs`.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get as axum_get_route, MethodRouter};
use axum::Router;
use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use tokio::time::{advance, Instant};
use tower::{Layer, Service, ServiceExt};
use tower_swr::engine::{Freshness, Loaded, Status, SwrCache};
use tower_swr::{CacheStatus, SwrLayer, X_CACHE, X_CACHE_KEY};

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

/// Spawns `n` concurrent `GET uri` and collects (status, body) of every answer.
async fn concurrently<S>(service: &S, n: usize, uri: &'static str) -> Vec<(CacheStatus, Bytes)>
where
    S: Service<Request<ReqBody>, Response = Answer, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let service = service.clone();
        set.spawn(async move {
            let response = service.oneshot(get(uri)).await?;
            let status = info(&response).status;
            Ok::<_, BoxError>((status, body(response).await?))
        });
    }
    let mut out = Vec::with_capacity(n);
    while let Some(joined) = set.join_next().await {
        out.push(joined.expect("task").expect("answer"));
    }
    out
}

/// An origin answering `v{n}` (no caching headers) after `delay`.
fn slow(delay: Duration) -> (impl OriginService, Calls) {
    origin(move |n, _| async move {
        tokio::time::sleep(delay).await;
        Ok(reply(format!("v{n}")))
    })
}

/// `v{n}` with no caching headers, at once.
fn plain() -> (impl OriginService, Calls) {
    origin(|n, _| async move { Ok(reply(format!("v{n}"))) })
}

/// Body text.
fn text(bytes: &Bytes) -> &str {
    std::str::from_utf8(bytes).expect("utf-8 body")
}

type LoadFut = Pin<Box<dyn Future<Output = Result<Loaded<String>, String>> + Send>>;

/// A database for the engine tests: counts queries, can be down, can be slow.
#[derive(Clone, Default)]
struct Db {
    calls: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
    delay: Duration,
}

impl Db {
    fn calls(&self) -> usize {
        self.calls.load(SeqCst)
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, SeqCst);
    }

    /// A loader of `key`: `"{key} v{n}"` with `freshness`, or `database unavailable`.
    fn loader(&self, key: &str, freshness: Freshness) -> impl FnOnce() -> LoadFut + Send + 'static {
        let db = self.clone();
        let key = key.to_owned();
        move || {
            Box::pin(async move {
                let n = db.calls.fetch_add(1, SeqCst) + 1;
                if !db.delay.is_zero() {
                    tokio::time::sleep(db.delay).await;
                }
                if db.down.load(SeqCst) {
                    Err("database unavailable".to_owned())
                } else {
                    Ok(Loaded::new(format!("{key} v{n}"), freshness))
                }
            }) as LoadFut
        }
    }
}

/// The seed's config freshness: fresh for 5 minutes, kept as the outage fallback for a year.
fn config_freshness() -> Freshness {
    Freshness::new(secs(300)).with_stale_if_error(secs(365 * DAY))
}

fn config_cache() -> SwrCache<String, String> {
    SwrCache::builder().capacity_bytes(1 << 20).build()
}

// ---------------------------------------------------------------------------------------------
// background-refresh-flow.md
// ---------------------------------------------------------------------------------------------

/// flow-1, flow-2: the first request scrapes and saves; later ones come from the cache.
#[tokio::test(start_paused = true)]
async fn flow_1_2_first_request_scrapes_and_saves_then_cache_answers() -> TestResult {
    let (origin, calls) = plain();
    let service = SwrLayer::new().layer(origin);

    let first = service.clone().oneshot(get("/api/cinema")).await?;
    let info = info(&first);
    assert_eq!(
        info.status,
        CacheStatus::Miss,
        "first time: not from the cache"
    );
    assert!(info.stored, "the scrape is saved to the cache");
    assert!(cache_status(&first).contains("stored"));
    assert_eq!(body(first).await?, "v1");

    for _ in 0..5 {
        advance(secs(5)).await;
        let (status, bytes) = call(&service, get("/api/cinema")).await?;
        assert_eq!(status, CacheStatus::Fresh, "from_cache");
        assert_eq!(bytes, "v1");
    }
    assert_eq!(calls.get(), 1, "no scrape while the cache is fresh");
    Ok(())
}

/// flow-3, flow-6, flow-11: a stale entry is answered without waiting for a 7 s scrape, and the
/// refresh runs in the background.
#[tokio::test(start_paused = true)]
async fn flow_3_6_stale_answer_does_not_wait_for_the_slow_scrape() -> TestResult {
    let (origin, calls) = slow(secs(7));
    let service = SwrLayer::new().layer(origin);
    // First time: the scrape's 3-8 s.
    let started = Instant::now();
    assert_eq!(call(&service, get("/api/events")).await?.1, "v1");
    assert_eq!(started.elapsed(), secs(7));

    advance(secs(61)).await; // stale (60 s default)
    for i in 0..5 {
        let started = Instant::now();
        let response = service.clone().oneshot(get("/api/events")).await?;
        assert!(
            started.elapsed() < Duration::from_millis(10),
            "request {i} waited {:?}",
            started.elapsed()
        );
        let info = info(&response);
        assert_eq!(info.status, CacheStatus::Stale);
        assert!(info.refreshing, "refreshing_in_background");
        assert_eq!(body(response).await?, "v1");
        advance(secs(1)).await;
    }
    assert_eq!(calls.get(), 2, "one background scrape started");
    Ok(())
}

/// flow-4, flow-10: while a refresh runs, stale requests skip starting another.
#[tokio::test(start_paused = true)]
async fn flow_4_already_refreshing_skips_a_duplicate_refresh() -> TestResult {
    let gate = Gate::new();
    let (origin, calls) = gated_after_first(&gate, "max-age=60, stale-while-revalidate=120");
    let layer = SwrLayer::new();
    let service = layer.layer(origin);
    call(&service, get("/api/google_trend")).await?;
    advance(secs(61)).await;
    for _ in 0..20 {
        let (status, bytes) = call(&service, get("/api/google_trend")).await?;
        assert_eq!((status, text(&bytes)), (CacheStatus::Stale, "v1"));
        settle().await;
    }
    assert_eq!(calls.get(), 2, "one refresh, not twenty");
    let stats = layer.stats();
    assert_eq!(stats.refreshes_started, 1);
    assert_eq!(stats.refreshes_running, 1);
    gate.open();
    settle().await;
    assert_eq!(layer.stats().refreshes_running, 0, "marked complete");
    Ok(())
}

/// flow-5, flow-9: the timeline of the seed for `/api/google_trend` (24 hours), with a 7 s scrape.
#[tokio::test(start_paused = true)]
async fn flow_5_9_timeline_request_after_refresh_gets_new_data() -> TestResult {
    let (origin, calls) = slow(secs(7));
    let service = SwrLayer::new()
        .ttl(secs(DAY))
        .stale_while_revalidate(secs(DAY))
        .layer(origin);
    assert_eq!(call(&service, get("/api/google_trend")).await?.1, "v1");
    // 00:00 request 1: fresh.
    let (status, bytes) = call(&service, get("/api/google_trend")).await?;
    assert_eq!((status, text(&bytes)), (CacheStatus::Fresh, "v1"));

    // 24:01 request 2: stale, cached data at once, refresh triggered.
    advance(secs(DAY + 60)).await;
    let started = Instant::now();
    let response = service.clone().oneshot(get("/api/google_trend")).await?;
    assert!(started.elapsed() < Duration::from_millis(10));
    assert_eq!(info(&response).status, CacheStatus::Stale);
    assert_eq!(body(response).await?, "v1");

    // 24:08 refresh completes (7 s scrape).
    settle().await; // the refresh starts its scrape
    advance(secs(7)).await;
    settle().await;
    assert_eq!(calls.get(), 2);

    // 24:09 request 3: the NEW data, fresh.
    advance(secs(60)).await;
    let response = service.clone().oneshot(get("/api/google_trend")).await?;
    let info = info(&response);
    assert_eq!(info.status, CacheStatus::Fresh);
    assert!(!info.refreshing);
    assert_eq!(body(response).await?, "v2");
    assert_eq!(calls.get(), 2);
    Ok(())
}

/// A route handler that counts its calls and answers `{name} v{n}`.
fn counted(name: &'static str, calls: Arc<AtomicUsize>) -> MethodRouter {
    axum_get_route(move || {
        let calls = calls.clone();
        async move {
            let n = calls.fetch_add(1, SeqCst) + 1;
            format!("{name} v{n}")
        }
    })
}

/// The layer's answer to `uri`: (status, body).
async fn route(app: &Router, uri: &str) -> (CacheStatus, String) {
    let response = app_send(app, app_get(uri)).await;
    let status = cache_info(&response).expect("CacheInfo").status;
    (status, app_text(response).await)
}

/// Checks flow-7's thresholds on an app with the three endpoints.
async fn check_validity_thresholds(app: Router, calls: [Arc<AtomicUsize>; 3]) {
    let endpoints = [
        ("/api/cinema", 6 * DAY),
        ("/api/events", 5 * DAY),
        ("/api/google_trend", DAY),
    ];
    for (uri, _) in endpoints {
        assert_eq!(route(&app, uri).await.0, CacheStatus::Miss);
    }
    let mut now = 0;
    // Visit in order of validity: 24 h, 5 days, 6 days; each just before and just after.
    for (i, (uri, validity)) in endpoints.iter().enumerate().rev() {
        advance(secs(validity - 1 - now)).await;
        now = validity - 1;
        let (status, body) = route(&app, uri).await;
        assert_eq!(status, CacheStatus::Fresh, "{uri} 1 s before {validity} s");
        assert!(body.ends_with("v1"));
        assert_eq!(calls[i].load(SeqCst), 1, "{uri} not refreshed while valid");
        advance(secs(2)).await;
        now += 2;
        let (status, body) = route(&app, uri).await;
        assert_eq!(status, CacheStatus::Stale, "{uri} 1 s after {validity} s");
        assert!(body.ends_with("v1"), "cached data while refreshing");
        settle().await;
        assert_eq!(
            calls[i].load(SeqCst),
            2,
            "{uri} auto-refreshed after {validity} s"
        );
        let (status, body) = route(&app, uri).await;
        assert_eq!(status, CacheStatus::Fresh);
        assert!(body.ends_with("v2"), "{uri}: {body}");
    }
}

/// flow-7: per-route validity with one layer per route sharing one memory budget (README).
#[tokio::test(start_paused = true)]
async fn flow_7_validity_periods_per_endpoint_with_route_layers() {
    let budget = SwrLayer::new().capacity_bytes(16 << 20);
    let days = |d: u64| {
        SwrLayer::new()
            .ttl(secs(d * DAY))
            .stale_while_revalidate(secs(DAY))
            .share_memory_with(&budget)
    };
    let calls: [Arc<AtomicUsize>; 3] = Default::default();
    let app = Router::new()
        .route(
            "/api/cinema",
            counted("cinema", calls[0].clone()).layer(days(6)),
        )
        .route(
            "/api/events",
            counted("events", calls[1].clone()).layer(days(5)),
        )
        .route(
            "/api/google_trend",
            counted("trends", calls[2].clone()).layer(days(1)),
        );
    check_validity_thresholds(app, calls).await;
}

/// flow-7: the same thresholds with one layer and a policy function (README).
#[tokio::test(start_paused = true)]
async fn flow_7_validity_periods_per_endpoint_with_policy_fn() {
    let layer = SwrLayer::new().policy_fn(|request, _response| {
        let days = |d| secs(d * DAY);
        match request.uri.path() {
            "/api/cinema" => Some(Freshness::new(days(6)).with_stale_while_revalidate(days(1))),
            "/api/events" => Some(Freshness::new(days(5)).with_stale_while_revalidate(days(1))),
            "/api/google_trend" => {
                Some(Freshness::new(days(1)).with_stale_while_revalidate(days(1)))
            }
            _ => None,
        }
    });
    let calls: [Arc<AtomicUsize>; 3] = Default::default();
    let app = Router::new()
        .route("/api/cinema", counted("cinema", calls[0].clone()))
        .route("/api/events", counted("events", calls[1].clone()))
        .route("/api/google_trend", counted("trends", calls[2].clone()))
        .layer(layer);
    check_validity_thresholds(app, calls).await;
}

/// flow-8: `from_cache`, `cache_valid`, `cache_date`, `refreshing_in_background` are all told:
/// `CacheInfo` (status, stored_at, refreshing, age), `Cache-Status` and `Age`.
#[tokio::test(start_paused = true)]
async fn flow_8_response_metadata_fields() -> TestResult {
    let gate = Gate::new();
    let (origin, _calls) = gated_after_first(&gate, "max-age=60, stale-while-revalidate=120");
    let service = SwrLayer::new().layer(origin);
    let stored_at = Instant::now();

    let miss = service.clone().oneshot(get("/api/cinema")).await?;
    let miss_info = info(&miss);
    assert_eq!(
        miss_info.status,
        CacheStatus::Miss,
        "from_cache: false the first time"
    );
    assert!(!miss_info.refreshing);

    advance(secs(30)).await;
    let fresh = service.clone().oneshot(get("/api/cinema")).await?;
    let fresh_info = info(&fresh);
    assert_eq!(
        fresh_info.status,
        CacheStatus::Fresh,
        "from_cache, cache_valid"
    );
    assert_eq!(fresh_info.stored_at, Some(stored_at), "cache_date");
    assert_eq!(fresh_info.age, Some(secs(30)));
    assert!(!fresh_info.refreshing);
    assert_eq!(age(&fresh), Some(30));
    assert!(
        cache_status(&fresh).contains("hit; ttl=30"),
        "{}",
        cache_status(&fresh)
    );

    advance(secs(40)).await;
    let stale = service.clone().oneshot(get("/api/cinema")).await?;
    let stale_info = info(&stale);
    assert_eq!(stale_info.status, CacheStatus::Stale, "cache_valid: false");
    assert!(stale_info.refreshing, "refreshing_in_background: true");
    assert_eq!(
        stale_info.stored_at,
        Some(stored_at),
        "cache_date of the old data"
    );
    assert_eq!(age(&stale), Some(70));
    assert!(
        cache_status(&stale).contains("ttl=-10"),
        "{}",
        cache_status(&stale)
    );

    gate.open();
    settle().await;
    let renewed = service.clone().oneshot(get("/api/cinema")).await?;
    let renewed_info = info(&renewed);
    assert_eq!(renewed_info.status, CacheStatus::Fresh);
    assert!(!renewed_info.refreshing, "the refresh is marked complete");
    assert!(renewed_info.stored_at > Some(stored_at), "a new cache_date");
    assert_eq!(body(renewed).await?, "v2");
    Ok(())
}

/// flow-10: background refreshes do not block shutdown: `shutdown` gives up after its deadline
/// on a hanging refresh, and lookups keep working (stale, no new refresh).
#[tokio::test(start_paused = true)]
async fn flow_10_hanging_refresh_does_not_block_shutdown() -> TestResult {
    let mode = Mode::default();
    let (origin, calls) = moody(None, mode.clone());
    let layer = SwrLayer::new();
    let handle = layer.handle();
    let service = layer.layer(origin);
    call(&service, get("/api/events")).await?;
    mode.set(HANG);
    advance(secs(61)).await;
    assert_eq!(
        call(&service, get("/api/events")).await?.0,
        CacheStatus::Stale
    );
    settle().await;
    assert_eq!(calls.get(), 2);

    let started = Instant::now();
    let finished = handle.shutdown(secs(2)).await;
    assert!(!finished, "the hanging refresh did not finish");
    assert!(
        started.elapsed() <= secs(3),
        "shutdown waited {:?}",
        started.elapsed()
    );

    mode.set(OK);
    advance(secs(5)).await;
    let (status, bytes) = call(&service, get("/api/events")).await?;
    assert_eq!((status, text(&bytes)), (CacheStatus::Stale, "v1"));
    settle().await;
    assert_eq!(calls.get(), 2, "no new refresh after shutdown");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// scenario-2-swr-prices-ru.md
// ---------------------------------------------------------------------------------------------

/// The prices endpoint keyed per user (`x-user-id`), filters and limit being in the query.
fn prices_layer() -> SwrLayer {
    SwrLayer::new()
        .ttl(secs(15))
        .key_fn(|parts| {
            let user = parts.headers.get("x-user-id")?.to_str().ok()?;
            Some(user.to_owned())
        })
        .allow_private(true)
}

/// An origin echoing the user and query with a call number.
fn cargotech() -> (impl OriginService, Calls) {
    origin(|n, request: Request<ReqBody>| async move {
        let user = request
            .headers()
            .get("x-user-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        let query = request.uri().query().unwrap_or("").to_owned();
        Ok(reply(format!("user={user};{query};call={n}")))
    })
}

fn prices_req(user: &str, filters: &str, limit: u32) -> Request<ReqBody> {
    get_headers(
        &format!("/api/cargos/prices/?filters={filters}&limit={limit}"),
        &[("x-user-id", user)],
    )
}

/// prices-1: the key is user + filters + limit: each combination has its own entry.
#[tokio::test(start_paused = true)]
async fn prices_1_key_is_user_filters_and_limit() -> TestResult {
    let (origin, calls) = cargotech();
    let service = prices_layer().layer(origin);
    let cases = [
        ("u1", "moscow", 10),
        ("u2", "moscow", 10),
        ("u1", "kazan", 10),
        ("u1", "moscow", 20),
    ];
    for (i, (user, filters, limit)) in cases.iter().enumerate() {
        let (status, bytes) = call(&service, prices_req(user, filters, *limit)).await?;
        assert_eq!(status, CacheStatus::Miss, "{user} {filters} {limit}");
        assert_eq!(
            text(&bytes),
            format!("user={user};filters={filters}&limit={limit};call={}", i + 1)
        );
    }
    for (i, (user, filters, limit)) in cases.iter().enumerate() {
        let (status, bytes) = call(&service, prices_req(user, filters, *limit)).await?;
        assert_eq!(status, CacheStatus::Fresh);
        assert!(
            text(&bytes).ends_with(&format!("call={}", i + 1)),
            "own entry"
        );
    }
    assert_eq!(calls.get(), 4);
    Ok(())
}

/// prices-2, prices-3, prices-4: polling every 10 s: fresh from the cache, then stale with ONE
/// background update however many users poll at once, then the next cycle has new prices.
#[tokio::test(start_paused = true)]
async fn prices_2_3_4_polling_fresh_then_stale_with_one_locked_update_then_new_prices() -> TestResult
{
    let gate = Gate::new();
    let held = gate.clone();
    let (origin, calls) = origin(move |n, _| {
        let gate = held.clone();
        async move {
            if n > 1 {
                gate.wait().await;
            }
            Ok(reply(format!("prices v{n}")))
        }
    });
    let layer = SwrLayer::new().ttl(secs(15));
    let service = layer.layer(origin);
    call(&service, get("/api/cargos/prices/")).await?;
    advance(secs(10)).await;
    let (status, _) = call(&service, get("/api/cargos/prices/")).await?;
    assert_eq!(status, CacheStatus::Fresh, "10 s poll: from the cache");
    assert_eq!(calls.get(), 1);

    advance(secs(10)).await; // 20 s: stale
    let answers = concurrently(&service, 50, "/api/cargos/prices/").await;
    assert!(answers
        .iter()
        .all(|(s, b)| *s == CacheStatus::Stale && b == "prices v1"));
    settle().await;
    assert_eq!(calls.get(), 2, "one background update for 50 pollers");
    assert_eq!(layer.stats().refreshes_started, 1);
    gate.open();
    settle().await;
    advance(secs(10)).await; // the next polling cycle
    let (status, bytes) = call(&service, get("/api/cargos/prices/")).await?;
    assert_eq!((status, text(&bytes)), (CacheStatus::Fresh, "prices v2"));
    Ok(())
}

/// prices-4: the polling cycle after the update gets the fresh prices.
#[tokio::test(start_paused = true)]
async fn prices_4_next_poll_gets_updated_prices() -> TestResult {
    let (origin, calls) = plain();
    let service = SwrLayer::new().ttl(secs(15)).layer(origin);
    assert_eq!(call(&service, get("/api/cargos/prices/")).await?.1, "v1");
    advance(secs(20)).await;
    assert_eq!(
        call(&service, get("/api/cargos/prices/")).await?,
        (CacheStatus::Stale, Bytes::from("v1"))
    );
    advance(secs(10)).await; // next polling cycle
    assert_eq!(
        call(&service, get("/api/cargos/prices/")).await?,
        (CacheStatus::Fresh, Bytes::from("v2"))
    );
    assert_eq!(calls.get(), 2);
    Ok(())
}

/// prices-5, prices-7: CargoTech down for 30 minutes while users poll every 10 s: every answer
/// is the last successful prices, and update attempts are far fewer than polls (backoff); once
/// it is back, new prices come within a couple of polling cycles.
#[tokio::test(start_paused = true)]
async fn prices_5_outage_keeps_last_prices_and_limits_external_calls() -> TestResult {
    let down = Switch::default();
    let (origin, calls) = origin({
        let down = down.clone();
        move |n, _| {
            let down = down.clone();
            async move {
                Ok(if down.on() {
                    unavailable()
                } else {
                    reply(format!("prices v{n}"))
                })
            }
        }
    });
    let service = SwrLayer::new()
        .ttl(secs(15))
        .stale_while_revalidate(secs(3600))
        .stale_if_error(secs(3600))
        .layer(origin);
    call(&service, get("/api/cargos/prices/")).await?;
    down.set(true);
    let polls = 180;
    for _ in 0..polls {
        advance(secs(10)).await;
        let (status, bytes) = call(&service, get("/api/cargos/prices/")).await?;
        assert!(
            matches!(
                status,
                CacheStatus::Fresh | CacheStatus::Stale | CacheStatus::StaleIfError
            ),
            "{status:?}"
        );
        assert_eq!(bytes, "prices v1", "the last successful prices");
        settle().await;
    }
    let during = calls.get() - 1;
    assert!(during >= 1, "updates were attempted");
    assert!(
        during * 3 < polls,
        "{during} calls to CargoTech for {polls} polls"
    );

    down.set(false);
    let mut recovered = None;
    for cycle in 1..=10 {
        advance(secs(10)).await;
        let (_, bytes) = call(&service, get("/api/cargos/prices/")).await?;
        settle().await;
        if bytes != "prices v1" {
            recovered = Some(cycle);
            break;
        }
    }
    let cycle = recovered.expect("new prices after CargoTech came back");
    assert!(cycle <= 8, "new prices only after {cycle} cycles");
    Ok(())
}

/// prices-5 (the origin's own windows): past the stale-while-revalidate window, a failing
/// CargoTech is answered with the last good prices, marked and logged.
#[tokio::test(start_paused = true)]
async fn prices_5_failing_refresh_past_the_window_answers_last_prices_with_warning() -> TestResult {
    let events = Events::default();
    let _collecting = events.install();
    let (origin, calls) = then_503("max-age=15, stale-while-revalidate=15, stale-if-error=600");
    let service = SwrLayer::new().layer(origin);
    call(&service, get("/api/cargos/prices/")).await?;
    advance(secs(60)).await; // past 15 + 15
    let response = service.clone().oneshot(get("/api/cargos/prices/")).await?;
    assert_eq!(response.status(), StatusCode::OK, "not CargoTech's 503");
    assert_eq!(info(&response).status, CacheStatus::StaleIfError);
    let status = cache_status(&response);
    assert!(
        status.contains("fwd=stale") && status.contains("fwd-status=503"),
        "{status}"
    );
    assert_eq!(age(&response), Some(60));
    assert_eq!(body(response).await?, "v1");
    assert_eq!(calls.get(), 2);
    let warnings = events.at(tracing::Level::WARN);
    assert!(!warnings.is_empty(), "a WARN says stale was served");
    Ok(())
}

/// prices-6: a hanging CargoTech does not slow answers: stale is answered at once and the hung
/// update is abandoned after the refresh timeout (30 s), counted as failed.
#[tokio::test(start_paused = true)]
async fn prices_6_hanging_partner_api_does_not_slow_answers() -> TestResult {
    let mode = Mode::default();
    let (origin, calls) = moody(None, mode.clone());
    let layer = SwrLayer::new().ttl(secs(15));
    let service = layer.layer(origin);
    call(&service, get("/api/cargos/prices/")).await?;
    mode.set(HANG);
    advance(secs(20)).await;
    for _ in 0..6 {
        let started = Instant::now();
        let (status, bytes) = call(&service, get("/api/cargos/prices/")).await?;
        assert!(started.elapsed() < Duration::from_millis(10));
        assert_eq!((status, text(&bytes)), (CacheStatus::Stale, "v1"));
        advance(secs(10)).await;
        settle().await;
    }
    assert!(calls.get() >= 2);
    let stats = layer.stats();
    assert!(stats.refreshes_timed_out >= 1, "{stats:?}");
    Ok(())
}

/// prices-6: past every window but with a stale-if-error entry, a hanging CargoTech costs a
/// request at most the origin timeout (30 s by default), then the last prices answer.
#[tokio::test(start_paused = true)]
async fn prices_6_hanging_partner_api_past_the_window_answers_stale_after_origin_timeout(
) -> TestResult {
    let mode = Mode::default();
    let (origin, _calls) = moody(
        Some("max-age=15, stale-while-revalidate=5, stale-if-error=3600"),
        mode.clone(),
    );
    let service = SwrLayer::new().layer(origin);
    call(&service, get("/api/cargos/prices/")).await?;
    mode.set(HANG);
    advance(secs(100)).await;
    let started = Instant::now();
    let (status, bytes) = call(&service, get("/api/cargos/prices/")).await?;
    assert_eq!((status, text(&bytes)), (CacheStatus::StaleIfError, "v1"));
    assert_eq!(started.elapsed(), secs(30), "the default origin timeout");
    Ok(())
}

/// prices-7: 100 users polling every 10 s for 10 minutes (6,000 reads) make at most one
/// CargoTech call per TTL (30 s).
#[tokio::test(start_paused = true)]
async fn prices_7_external_calls_bounded_by_ttl_under_many_pollers() -> TestResult {
    let (origin, calls) = plain();
    let service = SwrLayer::new()
        .ttl(secs(30))
        .stale_while_revalidate(secs(120))
        .layer(origin);
    let mut reads = 0;
    for second in 0..600u64 {
        for client in 0..100u64 {
            if client % 10 == second % 10 {
                let (status, bytes) = call(&service, get("/api/cargos/prices/")).await?;
                reads += 1;
                assert!(!bytes.is_empty());
                if reads > 1 {
                    assert!(
                        matches!(status, CacheStatus::Fresh | CacheStatus::Stale),
                        "{status:?} at {second} s"
                    );
                }
            }
        }
        advance(secs(1)).await;
        settle().await;
    }
    assert_eq!(reads, 6000);
    assert!(calls.get() <= 600 / 30 + 1, "{} calls", calls.get());
    assert!(
        calls.get() >= 600 / 150,
        "prices were updated: {}",
        calls.get()
    );
    Ok(())
}

/// prices-8: different TTLs for the list and the prices.
#[tokio::test(start_paused = true)]
async fn prices_8_different_ttl_for_list_and_prices() {
    let list_calls = Arc::new(AtomicUsize::new(0));
    let price_calls = Arc::new(AtomicUsize::new(0));
    let budget = SwrLayer::new();
    let app = Router::new()
        .route(
            "/api/cargos/",
            counted("list", list_calls.clone())
                .layer(SwrLayer::new().ttl(secs(300)).share_memory_with(&budget)),
        )
        .route(
            "/api/cargos/prices/",
            counted("prices", price_calls.clone())
                .layer(SwrLayer::new().ttl(secs(15)).share_memory_with(&budget)),
        );
    route(&app, "/api/cargos/").await;
    route(&app, "/api/cargos/prices/").await;
    advance(secs(20)).await;
    assert_eq!(route(&app, "/api/cargos/").await.0, CacheStatus::Fresh);
    assert_eq!(
        route(&app, "/api/cargos/prices/").await.0,
        CacheStatus::Stale
    );
    settle().await;
    assert_eq!((list_calls.load(SeqCst), price_calls.load(SeqCst)), (1, 2));
}

/// prices-9, stampede-1: many users at once on a cold key: one CargoTech call per key.
#[tokio::test(start_paused = true)]
async fn prices_9_many_users_at_once_make_one_call_per_key() -> TestResult {
    let (origin, calls) = cargotech();
    let service = prices_layer().layer(origin);
    let mut set = tokio::task::JoinSet::new();
    for user in 0..10 {
        for _ in 0..20 {
            let service = service.clone();
            set.spawn(async move {
                let user = format!("u{user}");
                let response = service.oneshot(prices_req(&user, "all", 50)).await?;
                let bytes = body(response).await?;
                Ok::<_, BoxError>((user, bytes))
            });
        }
    }
    let mut bodies = std::collections::BTreeMap::<String, Vec<Bytes>>::new();
    while let Some(joined) = set.join_next().await {
        let (user, bytes) = joined??;
        assert!(
            text(&bytes).starts_with(&format!("user={user};")),
            "own data"
        );
        bodies.entry(user).or_default().push(bytes);
    }
    assert_eq!(calls.get(), 10, "one call per user key, not 200");
    for (user, answers) in bodies {
        assert_eq!(answers.len(), 20);
        assert!(
            answers.windows(2).all(|w| w[0] == w[1]),
            "{user}: one call shared"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// stampede-prevention-strategy.md
// ---------------------------------------------------------------------------------------------

/// stampede-1, stampede-9 (load testing): 10,000 concurrent misses make ONE origin call; the
/// others are counted as collapsed.
#[tokio::test(start_paused = true)]
async fn stampede_1_ten_thousand_concurrent_misses_make_one_origin_call() {
    let (origin, calls) = slow(Duration::from_millis(200));
    let layer = SwrLayer::new();
    let service = layer.layer(origin);
    let answers = concurrently(&service, 10_000, "/hot").await;
    assert_eq!(calls.get(), 1);
    assert!(answers.iter().all(|(_, b)| b == "v1"));
    let misses = answers
        .iter()
        .filter(|(s, _)| *s == CacheStatus::Miss)
        .count();
    let collapsed = answers
        .iter()
        .filter(|(s, _)| *s == CacheStatus::Collapsed)
        .count();
    assert_eq!((misses, collapsed), (1, 9_999));
    let stats = layer.stats();
    assert_eq!((stats.misses, stats.collapsed), (1, 9_999));
}

/// stampede-1, stampede-4: 1,000 concurrent stale hits: all answered stale at once, ONE refresh.
#[tokio::test(start_paused = true)]
async fn stampede_1_concurrent_stale_hits_make_one_refresh() -> TestResult {
    let (origin, calls) = slow(Duration::from_millis(500));
    let layer = SwrLayer::new();
    let service = layer.layer(origin);
    call(&service, get("/hot")).await?;
    advance(secs(61)).await;
    let started = Instant::now();
    let answers = concurrently(&service, 1_000, "/hot").await;
    assert!(
        started.elapsed() < Duration::from_millis(10),
        "not blocked by the refresh"
    );
    assert!(answers
        .iter()
        .all(|(s, b)| *s == CacheStatus::Stale && b == "v1"));
    settle().await;
    advance(secs(1)).await;
    settle().await;
    assert_eq!(calls.get(), 2, "one refresh");
    let stats = layer.stats();
    assert_eq!((stats.refreshes_started, stats.refreshes_succeeded), (1, 1));
    assert_eq!(
        call(&service, get("/hot")).await?,
        (CacheStatus::Fresh, "v2".into())
    );
    Ok(())
}

/// stampede-2: the per-key lock expires after 5 s (default `lock_timeout`): a stuck first call
/// does not hold the waiters; exactly one more origin call is made at 5 s.
#[tokio::test(start_paused = true)]
async fn stampede_2_lock_on_a_miss_expires_after_5_seconds() -> TestResult {
    let (origin, calls) = origin(|n, _| async move {
        if n == 1 {
            std::future::pending::<()>().await;
        }
        Ok(reply(format!("v{n}")))
    });
    let service = SwrLayer::new().layer(origin);
    let leader = {
        let service = service.clone();
        tokio::spawn(async move { service.oneshot(get("/stuck")).await.map(|_| ()) })
    };
    settle().await;
    let mut waiters = tokio::task::JoinSet::new();
    for _ in 0..9 {
        let service = service.clone();
        waiters.spawn(async move {
            let response = service.oneshot(get("/stuck")).await?;
            Ok::<_, BoxError>((info(&response).status, body(response).await?))
        });
    }
    settle().await;
    advance(Duration::from_millis(4_900)).await;
    settle().await;
    assert_eq!(calls.get(), 1, "still locked before 5 s");
    assert_eq!(waiters.len(), 9, "waiting");

    advance(Duration::from_millis(200)).await;
    settle().await;
    let mut answered = 0;
    while let Some(joined) = waiters.join_next().await {
        let (_, bytes) = joined??;
        assert_eq!(bytes, "v2");
        answered += 1;
    }
    assert_eq!(answered, 9);
    assert_eq!(
        calls.get(),
        2,
        "one more call after the lock expired, not nine"
    );
    leader.abort();
    Ok(())
}

/// stampede-2: a refresh stuck for the seed's 5 s (with `refresh_timeout(5 s)`) releases its
/// lock: it counts as timed out and a later stale hit starts a new refresh.
#[tokio::test(start_paused = true)]
async fn stampede_2_stuck_refresh_releases_the_lock_after_its_timeout() -> TestResult {
    let (origin, calls) = origin(|n, _| async move {
        if n == 2 {
            std::future::pending::<()>().await;
        }
        Ok(reply(format!("v{n}")))
    });
    let layer = SwrLayer::new().refresh_timeout(secs(5));
    let service = layer.layer(origin);
    call(&service, get("/k")).await?;
    advance(secs(61)).await;
    assert_eq!(call(&service, get("/k")).await?.0, CacheStatus::Stale);
    settle().await;
    assert_eq!(calls.get(), 2);
    advance(secs(4)).await;
    settle().await;
    assert_eq!(layer.stats().refreshes_timed_out, 0);
    advance(secs(2)).await;
    settle().await;
    let stats = layer.stats();
    assert_eq!(stats.refreshes_timed_out, 1, "{stats:?}");
    assert_eq!(stats.refreshes_running, 0, "lock released");

    advance(secs(10)).await; // past the backoff
    assert_eq!(call(&service, get("/k")).await?.0, CacheStatus::Stale);
    settle().await;
    assert_eq!(
        calls.get(),
        3,
        "a new refresh after the stuck one timed out"
    );
    assert_eq!(
        call(&service, get("/k")).await?,
        (CacheStatus::Fresh, "v3".into())
    );
    Ok(())
}

/// stampede-3: the defaults are the seed's: 60 s fresh, 120 s stale-while-revalidate, 180 s in
/// all; past 180 s the next request is a MISS.
#[tokio::test(start_paused = true)]
async fn stampede_3_default_lifecycle_60_fresh_120_stale_180_miss() -> TestResult {
    let (origin, calls) = plain();
    let service = SwrLayer::new().x_cache_header(true).layer(origin);
    for key in ["/a", "/b", "/c", "/d"] {
        call(&service, get(key)).await?;
    }
    assert_eq!(calls.get(), 4);

    advance(secs(59)).await;
    let a = service.clone().oneshot(get("/a")).await?;
    assert_eq!(info(&a).status, CacheStatus::Fresh);
    assert_eq!(ttl_param(&a), 1);

    advance(secs(2)).await; // 61 s
    let b = service.clone().oneshot(get("/b")).await?;
    assert_eq!(
        info(&b).status,
        CacheStatus::Stale,
        "stale but still served"
    );
    assert_eq!(ttl_param(&b), -1);

    advance(secs(118)).await; // 179 s
    let c = service.clone().oneshot(get("/c")).await?;
    assert_eq!(info(&c).status, CacheStatus::Stale);
    assert_eq!(body(c).await?, "v3");

    advance(secs(2)).await; // 181 s
    let d = service.clone().oneshot(get("/d")).await?;
    assert_eq!(info(&d).status, CacheStatus::Miss, "expired: a MISS");
    assert_eq!(header_value(&d, &X_CACHE).as_deref(), Some("MISS"));
    assert!(text(&body(d).await?).starts_with('v'));
    settle().await;
    assert_eq!(calls.get(), 4 + 3, "refreshes of /b and /c, a miss for /d");
    Ok(())
}

/// stampede-5: early refresh: the refresh runs when the content turns stale (60 s), so at 185 s
/// the content is not a miss.
#[tokio::test(start_paused = true)]
async fn stampede_5_refresh_starts_at_60s_not_at_180s() -> TestResult {
    let (origin, calls) = plain();
    let service = SwrLayer::new().layer(origin);
    call(&service, get("/k")).await?;
    advance(secs(61)).await;
    assert_eq!(call(&service, get("/k")).await?.0, CacheStatus::Stale);
    settle().await;
    assert_eq!(calls.get(), 2, "refreshed at 61 s");
    advance(secs(124)).await; // 185 s
    let (status, bytes) = call(&service, get("/k")).await?;
    assert_ne!(status, CacheStatus::Miss);
    assert_eq!(bytes, "v2");
    Ok(())
}

/// stampede-6: jitter: with `ttl_jitter(0.5)`, 40 keys stored together do not all expire at
/// 60 s; none before 30 s.
#[tokio::test(start_paused = true)]
async fn stampede_6_ttl_jitter_spreads_expiry() -> TestResult {
    let (origin, _calls) = plain();
    let service = SwrLayer::new().ttl_jitter(0.5).layer(origin);
    let keys: Vec<String> = (0..40).map(|i| format!("/k{i}")).collect();
    for key in &keys {
        call(&service, get(key)).await?;
    }
    advance(secs(29)).await;
    for key in &keys {
        assert_eq!(
            call(&service, get(key)).await?.0,
            CacheStatus::Fresh,
            "{key}"
        );
    }
    advance(secs(31)).await; // 60 s
    let mut fresh = 0;
    let mut stale = 0;
    for key in &keys {
        match call(&service, get(key)).await?.0 {
            CacheStatus::Fresh => fresh += 1,
            CacheStatus::Stale => stale += 1,
            other => panic!("{key}: {other:?}"),
        }
    }
    assert!(fresh > 0 && stale > 0, "fresh {fresh}, stale {stale}");
    Ok(())
}

/// stampede-7: circuit breaker: after 3 failed refreshes (`circuit_breaker(3, 30 s)`) refresh
/// attempts stop and stale is served; after the cooldown they resume.
#[tokio::test(start_paused = true)]
async fn stampede_7_circuit_breaker_stops_refreshes_and_serves_stale() -> TestResult {
    let down = Switch::default();
    let (origin, calls) = origin({
        let down = down.clone();
        move |n, _| {
            let down = down.clone();
            async move {
                Ok(if down.on() {
                    unavailable()
                } else {
                    reply(format!("v{n}"))
                })
            }
        }
    });
    let layer = SwrLayer::new().circuit_breaker(3, secs(30));
    let service = layer.layer(origin);
    for key in ["/k1", "/k2", "/k3", "/k4"] {
        call(&service, get(key)).await?;
    }
    down.set(true);
    advance(secs(61)).await;
    for key in ["/k1", "/k2", "/k3"] {
        assert_eq!(call(&service, get(key)).await?.0, CacheStatus::Stale);
        settle().await;
    }
    assert_eq!(calls.get(), 7);
    let stats = layer.stats();
    assert!(stats.refreshes_paused, "{stats:?}");
    assert_eq!(stats.refreshes_failed, 3);

    let (status, bytes) = call(&service, get("/k4")).await?;
    assert_eq!((status, text(&bytes)), (CacheStatus::Stale, "v4"));
    settle().await;
    assert_eq!(
        calls.get(),
        7,
        "no refresh attempt while the breaker is open"
    );

    down.set(false);
    advance(secs(31)).await;
    assert_eq!(call(&service, get("/k4")).await?.0, CacheStatus::Stale);
    settle().await;
    assert_eq!(calls.get(), 8, "refreshes resume after the cooldown");
    assert!(!layer.stats().refreshes_paused);
    Ok(())
}

/// stampede-8: `X-Cache` HIT/MISS (and STALE), `X-Cache-Key`, `Age`.
#[tokio::test(start_paused = true)]
async fn stampede_8_observability_headers_x_cache_key_and_age() -> TestResult {
    let (origin, _calls) = plain();
    let service = SwrLayer::new()
        .x_cache_header(true)
        .x_cache_key_header(true)
        .layer(origin);
    let miss = service.clone().oneshot(get("/prices?page=2")).await?;
    assert_eq!(header_value(&miss, &X_CACHE).as_deref(), Some("MISS"));
    let key = header_value(&miss, &X_CACHE_KEY).expect("X-Cache-Key");
    assert!(key.contains("/prices?page=2"), "{key}");
    advance(secs(42)).await;
    let hit = service.clone().oneshot(get("/prices?page=2")).await?;
    assert_eq!(header_value(&hit, &X_CACHE).as_deref(), Some("HIT"));
    assert_eq!(header_value(&hit, &X_CACHE_KEY), Some(key));
    assert_eq!(age(&hit), Some(42), "how old the cached content is");
    advance(secs(30)).await;
    let stale = service.clone().oneshot(get("/prices?page=2")).await?;
    assert_eq!(header_value(&stale, &X_CACHE).as_deref(), Some("STALE"));
    assert_eq!(age(&stale), Some(72));
    Ok(())
}

/// stampede-8: the seed lists `X-Query-Time-ms` (response time) among the observability
/// headers the implementation includes.
#[tokio::test(start_paused = true)]
async fn stampede_8_x_query_time_ms_header() -> TestResult {
    let (origin, _calls) = slow(Duration::from_millis(120));
    let service = SwrLayer::new()
        .x_cache_header(true)
        .x_cache_key_header(true)
        .query_time_header(true)
        .layer(origin);
    let miss = service.clone().oneshot(get("/prices")).await?;
    let value = header_value(&miss, "x-query-time-ms").expect("X-Query-Time-ms on a miss");
    let ms: u64 = value.parse()?;
    assert!(ms >= 120, "{ms}");
    let hit = service.clone().oneshot(get("/prices")).await?;
    assert!(header_value(&hit, "x-query-time-ms").is_some(), "on a hit");
    Ok(())
}

/// stampede-9 (health checks): hit rates and refresh failures are in `Stats`.
#[tokio::test(start_paused = true)]
async fn stampede_9_stats_show_hit_rates_and_refresh_failures() -> TestResult {
    let (origin, _calls) = then_503("max-age=60, stale-while-revalidate=120");
    let layer = SwrLayer::new();
    let handle = layer.handle();
    let service = layer.layer(origin);
    call(&service, get("/k")).await?; // miss
    for _ in 0..3 {
        call(&service, get("/k")).await?; // fresh
    }
    advance(secs(61)).await;
    call(&service, get("/k")).await?; // stale, refresh fails
    settle().await;
    let stats = handle.stats();
    assert_eq!(
        (stats.misses, stats.fresh_hits, stats.stale_hits),
        (1, 3, 1),
        "{stats:?}"
    );
    assert_eq!(
        (stats.refreshes_started, stats.refreshes_failed),
        (1, 1),
        "{stats:?}"
    );
    assert_eq!(stats.entries, 1);
    Ok(())
}

/// stampede-9 (metrics): the `metrics` facade counts hits, misses, collapsed requests (stampede
/// events) and refreshes, with the names the docs give.
#[cfg(feature = "metrics")]
#[tokio::test(start_paused = true)]
async fn stampede_9_metrics_track_performance_and_stampede_events() -> TestResult {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (origin, _calls) = slow(Duration::from_millis(100));
    let (layer, service) = metrics::with_local_recorder(&recorder, || {
        let layer = SwrLayer::new().cache_name("seed-metrics");
        let service = layer.layer(origin);
        (layer, service)
    });
    concurrently(&service, 50, "/hot").await; // 1 miss + 49 collapsed
    call(&service, get("/hot")).await?; // hit
    advance(secs(61)).await;
    call(&service, get("/hot")).await?; // stale + refresh
    settle().await;
    advance(secs(1)).await;
    settle().await;
    let _ = layer.stats();
    // A snapshot drains the debugging recorder's counters: take one.
    let snapshot = snapshotter.snapshot().into_vec();

    let counter = |name: &str, label: (&str, &str)| -> u64 {
        snapshot
            .iter()
            .filter(|(key, _, _, _)| {
                let key = key.key();
                key.name() == name
                    && key
                        .labels()
                        .any(|l| l.key() == label.0 && l.value() == label.1)
            })
            .map(|(_, _, _, value)| match value {
                DebugValue::Counter(n) => *n,
                other => panic!("{name} is not a counter: {other:?}"),
            })
            .sum()
    };
    assert_eq!(counter("swr_requests_total", ("status", "miss")), 1);
    assert_eq!(counter("swr_requests_total", ("status", "collapsed")), 49);
    assert_eq!(counter("swr_requests_total", ("status", "hit")), 1);
    assert_eq!(counter("swr_requests_total", ("status", "stale")), 1);
    assert_eq!(counter("swr_refreshes_total", ("outcome", "started")), 1);
    assert_eq!(counter("swr_refreshes_total", ("outcome", "succeeded")), 1);
    assert_eq!(counter("swr_requests_total", ("cache", "seed-metrics")), 52);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// story-scan-stale-while-revalidate.md
// ---------------------------------------------------------------------------------------------

/// story-1, story-3: the stale payload comes back, body and all, while the adapter's fetch is
/// still blocked.
#[tokio::test(start_paused = true)]
async fn story_1_3_stale_payload_returned_while_the_fetch_is_blocked() -> TestResult {
    let gate = Gate::new();
    let (origin, calls) = gated_after_first(&gate, "max-age=300, stale-while-revalidate=600");
    let service = SwrLayer::new().layer(origin);
    call(&service, get("/scan?symbol=AAPL&data_type=quote")).await?;
    advance(secs(301)).await;
    let answer = tokio::time::timeout(
        Duration::from_millis(1),
        call(&service, get("/scan?symbol=AAPL&data_type=quote")),
    )
    .await
    .expect("not blocked by the fetch")?;
    assert_eq!(answer, (CacheStatus::Stale, "v1".into()));
    settle().await;
    assert_eq!(calls.get(), 2, "the fetch was fired");
    Ok(())
}

/// story-2: the next request sees stale again while the refresh runs, then the fresh data.
#[tokio::test(start_paused = true)]
async fn story_2_next_request_stale_until_refresh_completes_then_fresh() -> TestResult {
    let gate = Gate::new();
    let (origin, calls) = gated_after_first(&gate, "max-age=300, stale-while-revalidate=600");
    let service = SwrLayer::new().layer(origin);
    let uri = "/scan?symbol=AAPL&data_type=quote";
    call(&service, get(uri)).await?;
    advance(secs(301)).await;
    assert_eq!(
        call(&service, get(uri)).await?,
        (CacheStatus::Stale, "v1".into())
    );
    settle().await;
    advance(secs(1)).await;
    assert_eq!(
        call(&service, get(uri)).await?,
        (CacheStatus::Stale, "v1".into()),
        "again stale: the refresh has not completed"
    );
    gate.open();
    settle().await;
    assert_eq!(
        call(&service, get(uri)).await?,
        (CacheStatus::Fresh, "v2".into())
    );
    assert_eq!(calls.get(), 2);
    Ok(())
}

/// story-2 (resilience): a failing background refresh keeps the valid stale payload.
#[tokio::test(start_paused = true)]
async fn story_2_failed_background_refresh_keeps_the_stale_payload() -> TestResult {
    let (origin, calls) = then_503("max-age=300, stale-while-revalidate=600");
    let layer = SwrLayer::new();
    let service = layer.layer(origin);
    call(&service, get("/scan?symbol=MSFT")).await?;
    advance(secs(301)).await;
    assert_eq!(call(&service, get("/scan?symbol=MSFT")).await?.1, "v1");
    settle().await;
    assert_eq!(calls.get(), 2);
    assert_eq!(layer.stats().refreshes_failed, 1);
    advance(secs(5)).await;
    let response = service.clone().oneshot(get("/scan?symbol=MSFT")).await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body(response).await?, "v1");
    Ok(())
}

/// story-4: at expiry, 300 concurrent requests get the cached payload and ONE refresh runs;
/// after it, all get the new payload.
#[tokio::test(start_paused = true)]
async fn story_4_thundering_herd_at_expiry_one_refresh_others_from_cache() -> TestResult {
    let (origin, calls) = slow(secs(3));
    let service = SwrLayer::new()
        .ttl(secs(300))
        .stale_while_revalidate(secs(600))
        .layer(origin);
    call(&service, get("/scan?symbol=AAPL")).await?;
    advance(secs(300)).await;
    let herd = concurrently(&service, 300, "/scan?symbol=AAPL").await;
    assert!(herd
        .iter()
        .all(|(s, b)| *s == CacheStatus::Stale && b == "v1"));
    advance(secs(1)).await;
    let during = concurrently(&service, 100, "/scan?symbol=AAPL").await;
    assert!(during
        .iter()
        .all(|(s, b)| *s == CacheStatus::Stale && b == "v1"));
    advance(secs(3)).await;
    settle().await;
    let after = concurrently(&service, 100, "/scan?symbol=AAPL").await;
    assert!(after
        .iter()
        .all(|(s, b)| *s == CacheStatus::Fresh && b == "v2"));
    assert_eq!(calls.get(), 2, "one background refresh for 500 requests");
    Ok(())
}

/// story-5: the documentation says when stale is served, when a refresh is triggered and how
/// the TTLs interact.
#[test]
fn story_5_behaviour_is_documented() {
    let readme = include_str!("../README.md");
    for phrase in [
        "stale, inside the stale-while-revalidate window",
        "ONE detached refresh per key",
        "60 s fresh, then 120 s stale while",
        "revalidating",
        "stale-if-error",
    ] {
        assert!(readme.contains(phrase), "README lacks {phrase:?}");
    }
}

/// story-6: entries are per symbol/data_type: one key's staleness and refresh leave another's
/// alone.
#[tokio::test(start_paused = true)]
async fn story_6_symbols_and_data_types_are_separate_entries() -> TestResult {
    let (origin, calls) = origin(|n, request: Request<ReqBody>| async move {
        let query = request.uri().query().unwrap_or("").to_owned();
        Ok(reply(format!("{query}#{n}")))
    });
    let service = SwrLayer::new().ttl(secs(60)).layer(origin);
    let aapl = "/scan?symbol=AAPL&data_type=quote";
    let msft = "/scan?symbol=MSFT&data_type=quote";
    let aapl_news = "/scan?symbol=AAPL&data_type=news";
    call(&service, get(aapl)).await?;
    advance(secs(40)).await;
    call(&service, get(msft)).await?;
    call(&service, get(aapl_news)).await?;
    advance(secs(30)).await; // 70 s: AAPL quote stale, the others fresh
    assert_eq!(call(&service, get(aapl)).await?.0, CacheStatus::Stale);
    let (status, bytes) = call(&service, get(msft)).await?;
    assert_eq!(
        (status, text(&bytes)),
        (CacheStatus::Fresh, "symbol=MSFT&data_type=quote#2")
    );
    let (status, bytes) = call(&service, get(aapl_news)).await?;
    assert_eq!(
        (status, text(&bytes)),
        (CacheStatus::Fresh, "symbol=AAPL&data_type=news#3")
    );
    settle().await;
    assert_eq!(calls.get(), 4);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// task-swr-config-cache.md (the engine, no HTTP)
// ---------------------------------------------------------------------------------------------

/// config-1: fresh within 5 minutes: returned without a database query.
#[tokio::test(start_paused = true)]
async fn config_1_fresh_within_5_minutes_skips_the_database() -> Result<(), Arc<String>> {
    let db = Db::default();
    let cache = config_cache();
    let first = cache
        .get_or_load(
            "judges:en".into(),
            db.loader("judges:en", config_freshness()),
        )
        .await?;
    assert_eq!(first.status, Status::Miss);
    advance(secs(299)).await;
    let again = cache
        .get_or_load(
            "judges:en".into(),
            db.loader("judges:en", config_freshness()),
        )
        .await?;
    assert_eq!(again.status, Status::Fresh);
    assert!(!again.is_stale());
    assert_eq!(again.value, "judges:en v1");
    assert_eq!(again.age, secs(299));
    assert_eq!(db.calls(), 1);
    Ok(())
}

/// config-2: stale (past 5 minutes, no stale-while-revalidate window, as in the seed's flow):
/// the database is queried, the cache updated, and the fresh data returned.
#[tokio::test(start_paused = true)]
async fn config_2_stale_entry_queries_the_database_and_returns_fresh_data(
) -> Result<(), Arc<String>> {
    let db = Db::default();
    let cache = config_cache();
    cache
        .get_or_load(
            "judges:en".into(),
            db.loader("judges:en", config_freshness()),
        )
        .await?;
    advance(secs(301)).await;
    let got = cache
        .get_or_load(
            "judges:en".into(),
            db.loader("judges:en", config_freshness()),
        )
        .await?;
    assert_eq!(got.value, "judges:en v2", "fresh data, not the stale v1");
    assert_eq!(got.status, Status::Miss);
    assert!(!got.is_stale());
    assert_eq!(db.calls(), 2);
    let cached = cache.get("judges:en").expect("cache updated");
    assert_eq!(
        (cached.value.as_str(), cached.status),
        ("judges:en v2", Status::Fresh)
    );
    Ok(())
}

/// config-3, config-13: the database fails with a stale entry: the stale data, with a WARNING.
#[tokio::test(start_paused = true)]
async fn config_3_database_failure_returns_stale_data_with_a_warning() -> Result<(), Arc<String>> {
    let events = Events::default();
    let _collecting = events.install();
    let db = Db::default();
    let cache = config_cache();
    cache
        .get_or_load(
            "judges:en".into(),
            db.loader("judges:en", config_freshness()),
        )
        .await?;
    db.set_down(true);
    advance(secs(20 * 60)).await;
    let got = cache
        .get_or_load(
            "judges:en".into(),
            db.loader("judges:en", config_freshness()),
        )
        .await?;
    assert_eq!(got.value, "judges:en v1", "last known good config");
    assert_eq!(got.status, Status::StaleIfError);
    assert!(got.is_stale());
    assert_eq!(got.age, secs(20 * 60));
    assert_eq!(db.calls(), 2, "the database was tried");
    let warnings = events.at(tracing::Level::WARN);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let warning = &warnings[0];
    assert!(
        warning.fields.values().any(|v| v.contains("judges:en")),
        "{warning:?}"
    );
    assert_eq!(
        warning.fields.get("age_secs").map(String::as_str),
        Some("1200")
    );
    Ok(())
}

/// config-13: every use of stale data logs a WARNING, not only the first.
#[tokio::test(start_paused = true)]
async fn config_13_every_stale_fallback_logs_a_warning() -> Result<(), Arc<String>> {
    let events = Events::default();
    let _collecting = events.install();
    let db = Db::default();
    let cache = config_cache();
    cache
        .get_or_load(
            "phases:planner".into(),
            db.loader("phases:planner", config_freshness()),
        )
        .await?;
    db.set_down(true);
    advance(secs(301)).await;
    for _ in 0..3 {
        let got = cache
            .get_or_load(
                "phases:planner".into(),
                db.loader("phases:planner", config_freshness()),
            )
            .await?;
        assert_eq!(got.status, Status::StaleIfError);
        advance(secs(10)).await;
    }
    let warnings = events.at(tracing::Level::WARN);
    assert!(warnings.len() >= 3, "{warnings:?}");
    Ok(())
}

/// config-4: nothing cached and the database fails: its error, explicitly, at once; nothing
/// invented, nothing stored.
#[tokio::test(start_paused = true)]
async fn config_4_cold_start_with_database_down_is_an_explicit_error() {
    let db = Db::default();
    db.set_down(true);
    let cache = config_cache();
    let started = Instant::now();
    let error = cache
        .get_or_load(
            "judges:ru".into(),
            db.loader("judges:ru", config_freshness()),
        )
        .await
        .expect_err("no invented value");
    assert_eq!(started.elapsed(), Duration::ZERO, "fails fast");
    assert_eq!(error.as_str(), "database unavailable");
    let message =
        format!("Cannot get judge models for language \"ru\": {error} and no cached data");
    assert!(message.contains("database unavailable"));
    assert!(cache.get("judges:ru").is_none());
    assert!(cache.is_empty());
    assert_eq!(db.calls(), 1);
}

/// config-4 (after the failure is no longer remembered, 1 s): the database is asked again and
/// its recovery is used.
#[tokio::test(start_paused = true)]
async fn config_4_cold_failure_does_not_stick_once_the_database_recovers() {
    let db = Db::default();
    db.set_down(true);
    let cache = config_cache();
    assert!(cache
        .get_or_load(
            "judges:ru".into(),
            db.loader("judges:ru", config_freshness())
        )
        .await
        .is_err());
    db.set_down(false);
    advance(secs(2)).await;
    let got = cache
        .get_or_load(
            "judges:ru".into(),
            db.loader("judges:ru", config_freshness()),
        )
        .await
        .expect("the database is back");
    assert_eq!(got.value, "judges:ru v2");
}

/// config-5, config-6: a stale entry is not deleted: 30 days after its 5 minutes it is still
/// there (`get`: data, stale, age) and still the fallback of a failing database.
#[tokio::test(start_paused = true)]
async fn config_5_stale_entries_are_kept_through_a_long_outage() -> Result<(), Arc<String>> {
    let db = Db::default();
    let cache = config_cache();
    cache
        .get_or_load("stages:4".into(), db.loader("stages:4", config_freshness()))
        .await?;
    advance(secs(30 * DAY)).await;
    let held = cache.get("stages:4").expect("not deleted for being stale");
    assert!(held.is_stale());
    assert_eq!(held.value, "stages:4 v1");
    assert_eq!(held.age, secs(30 * DAY));
    assert_eq!(cache.len(), 1);
    db.set_down(true);
    let got = cache
        .get_or_load("stages:4".into(), db.loader("stages:4", config_freshness()))
        .await?;
    assert_eq!(
        (got.value.as_str(), got.status),
        ("stages:4 v1", Status::StaleIfError)
    );
    Ok(())
}

/// config-5: the seed's cache NEVER deletes stale entries; the engine keeps an entry until its
/// last deadline. With `Freshness::new(ttl)` alone (no stale window, as the seed's class takes
/// only `freshTTL`) the entry is gone right after its TTL, which the crate documents
/// (tests/README.md: a pinned limitation). Pinned here as the documented choice.
#[tokio::test(start_paused = true)]
async fn config_5_without_stale_windows_an_entry_ends_at_its_ttl_as_documented() {
    let cache = config_cache();
    assert!(cache.insert("k".into(), "v".into(), Freshness::new(secs(300))));
    advance(secs(299)).await;
    assert!(cache.get("k").is_some());
    advance(secs(2)).await;
    assert!(
        cache.get("k").is_none(),
        "documented: no stale window, removed at its ttl"
    );
}

/// config-6, config-7, config-8: `get` → `{ data, isStale, age }` or none; `insert` stores with
/// the current time; `get(..).is_some()` is `has`.
#[tokio::test(start_paused = true)]
async fn config_6_7_8_get_set_has() {
    let cache = config_cache();
    assert!(cache.get("judges:en").is_none(), "has: false");
    advance(secs(10)).await;
    let now = Instant::now();
    assert!(cache.insert("judges:en".into(), "qwen3".into(), config_freshness()));
    let got = cache.get("judges:en").expect("has: true");
    assert_eq!(got.value, "qwen3");
    assert_eq!(got.stored_at, now, "timestamp = now");
    assert_eq!(got.age, Duration::ZERO);
    assert!(!got.is_stale());
    advance(secs(301)).await;
    let got = cache.get("judges:en").expect("has: true when stale");
    assert!(got.is_stale());
    assert_eq!(got.age, secs(301));
    assert_eq!(got.stored_at, now);
}

/// config-9: `clear` removes every entry; the next lookup asks the database.
#[tokio::test(start_paused = true)]
async fn config_9_clear_removes_all_entries() -> Result<(), Arc<String>> {
    let db = Db::default();
    let cache = config_cache();
    for key in ["judges:en", "judges:ru", "phases:planner"] {
        cache
            .get_or_load(key.into(), db.loader(key, config_freshness()))
            .await?;
    }
    assert_eq!(cache.len(), 3);
    cache.clear();
    assert!(cache.is_empty());
    assert!(cache.get("judges:en").is_none());
    let got = cache
        .get_or_load(
            "judges:en".into(),
            db.loader("judges:en", config_freshness()),
        )
        .await?;
    assert_eq!(got.status, Status::Miss);
    assert_eq!(db.calls(), 4);
    Ok(())
}

/// config-10: keys are independent: a failing language does not touch another's value.
#[tokio::test(start_paused = true)]
async fn config_10_keys_are_independent() -> Result<(), Arc<String>> {
    let db = Db::default();
    let cache = config_cache();
    cache
        .get_or_load(
            "judges:en".into(),
            db.loader("judges:en", config_freshness()),
        )
        .await?;
    db.set_down(true);
    assert!(cache
        .get_or_load(
            "judges:ru".into(),
            db.loader("judges:ru", config_freshness())
        )
        .await
        .is_err());
    let en = cache
        .get_or_load(
            "judges:en".into(),
            db.loader("judges:en", config_freshness()),
        )
        .await?;
    assert_eq!(
        (en.status, en.value.as_str()),
        (Status::Fresh, "judges:en v1")
    );
    Ok(())
}

/// config-11: counters of fresh and stale hits and of fallback usage (`Stats`).
#[tokio::test(start_paused = true)]
async fn config_11_counters_of_fresh_stale_and_fallback() -> Result<(), Arc<String>> {
    let db = Db::default();
    let cache = config_cache();
    let swr = Freshness::new(secs(300))
        .with_stale_while_revalidate(secs(300))
        .with_stale_if_error(secs(DAY));
    cache.get_or_load("a".into(), db.loader("a", swr)).await?;
    cache.get_or_load("a".into(), db.loader("a", swr)).await?;
    cache.get_or_load("a".into(), db.loader("a", swr)).await?;
    advance(secs(301)).await;
    assert_eq!(
        cache
            .get_or_load("a".into(), db.loader("a", swr))
            .await?
            .status,
        Status::Stale
    );
    settle().await;
    db.set_down(true);
    advance(secs(1000)).await; // past the stale-while-revalidate window
    assert_eq!(
        cache
            .get_or_load("a".into(), db.loader("a", swr))
            .await?
            .status,
        Status::StaleIfError
    );
    let stats = cache.stats();
    assert_eq!(stats.fresh_hits, 2, "hits{{status=fresh}}");
    assert_eq!(stats.stale_hits, 1, "hits{{status=stale}}");
    assert_eq!(stats.stale_if_error, 1, "fallback usage");
    Ok(())
}

/// config-11: `model_config_db_failures_total`: failed database queries are counted. A failure
/// with no fallback (cold start) counts in no failure counter.
#[tokio::test(start_paused = true)]
async fn config_11_database_failures_are_counted() {
    let db = Db::default();
    db.set_down(true);
    let cache: SwrCache<String, String> = SwrCache::builder()
        .remember_failures(Duration::ZERO)
        .build();
    for _ in 0..3 {
        assert!(cache
            .get_or_load(
                "judges:en".into(),
                db.loader("judges:en", config_freshness())
            )
            .await
            .is_err());
    }
    assert_eq!(db.calls(), 3);
    let stats = cache.stats();
    assert_eq!(
        stats.loads_failed, 3,
        "three database failures counted: {stats:?}"
    );
}

/// config-12: with `stale_alert_age(1 h)`, a stale config served during a database outage
/// older than 1 h raises an alert (a warning beyond the per-use one); younger, it does not.
#[tokio::test(start_paused = true)]
async fn config_12_alert_when_outage_fallback_is_older_than_an_hour() -> Result<(), Arc<String>> {
    let events = Events::default();
    let _collecting = events.install();
    let db = Db::default();
    let cache: SwrCache<String, String> = SwrCache::builder().stale_alert_age(secs(3600)).build();
    cache
        .get_or_load(
            "judges:en".into(),
            db.loader("judges:en", config_freshness()),
        )
        .await?;
    db.set_down(true);
    advance(secs(30 * 60)).await;
    cache
        .get_or_load(
            "judges:en".into(),
            db.loader("judges:en", config_freshness()),
        )
        .await?;
    let young = events.at(tracing::Level::WARN).len();
    advance(secs(2 * 3600)).await;
    cache
        .get_or_load(
            "judges:en".into(),
            db.loader("judges:en", config_freshness()),
        )
        .await?;
    let old = events.at(tracing::Level::WARN).len() - young;
    assert!(
        old > young,
        "an alert beyond the usual warning: {young} warnings at 30 min, {old} at 2.5 h: {:?}",
        events.at(tracing::Level::WARN)
    );
    Ok(())
}

/// config-12: the alert age works for stale-while-revalidate answers (what the docs promise).
#[tokio::test(start_paused = true)]
async fn config_12_alert_when_stale_value_older_than_an_hour_is_served() -> Result<(), Arc<String>>
{
    let events = Events::default();
    let _collecting = events.install();
    let db = Db::default();
    let cache: SwrCache<String, String> = SwrCache::builder().stale_alert_age(secs(3600)).build();
    let swr = Freshness::new(secs(300)).with_stale_while_revalidate(secs(DAY));
    cache
        .get_or_load("judges:en".into(), db.loader("judges:en", swr))
        .await?;
    db.set_down(true);
    advance(secs(30 * 60)).await;
    cache
        .get_or_load("judges:en".into(), db.loader("judges:en", swr))
        .await?;
    settle().await;
    let alert = |events: &Events| {
        events
            .at(tracing::Level::WARN)
            .into_iter()
            .filter(|e| e.fields.contains_key("alert_secs"))
            .count()
    };
    assert_eq!(alert(&events), 0, "30 min: below the alert age");
    advance(secs(2 * 3600)).await;
    cache
        .get_or_load("judges:en".into(), db.loader("judges:en", swr))
        .await?;
    settle().await;
    assert_eq!(alert(&events), 1, "2.5 h: alert");
    Ok(())
}

/// config-14, stampede-1: 100 concurrent callers of a missing key: one database query, one value
/// for all; and with the database down, one query and the same error for all.
#[tokio::test(start_paused = true)]
async fn config_14_concurrent_callers_share_one_database_query() {
    let db = Db {
        delay: Duration::from_millis(50),
        ..Db::default()
    };
    let cache = config_cache();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let (cache, db) = (cache.clone(), db.clone());
        set.spawn(async move {
            cache
                .get_or_load(
                    "judges:en".into(),
                    db.loader("judges:en", config_freshness()),
                )
                .await
        });
    }
    let mut statuses = Vec::new();
    while let Some(joined) = set.join_next().await {
        let got = joined.expect("task").expect("value");
        assert_eq!(got.value, "judges:en v1");
        statuses.push(got.status);
    }
    assert_eq!(db.calls(), 1);
    assert_eq!(statuses.iter().filter(|s| **s == Status::Miss).count(), 1);
    assert_eq!(
        statuses.iter().filter(|s| **s == Status::Collapsed).count(),
        99
    );

    db.set_down(true);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let (cache, db) = (cache.clone(), db.clone());
        set.spawn(async move {
            cache
                .get_or_load(
                    "judges:de".into(),
                    db.loader("judges:de", config_freshness()),
                )
                .await
        });
    }
    while let Some(joined) = set.join_next().await {
        let error = joined.expect("task").expect_err("no value for anyone");
        assert_eq!(error.as_str(), "database unavailable");
    }
    assert_eq!(db.calls(), 2, "one failing query shared by 100 callers");
}

/// config-2 with a stale-while-revalidate window (the engine's refresh): the stale config is
/// returned at once while one background query replaces it; a failing one keeps it.
#[tokio::test(start_paused = true)]
async fn config_2_background_refresh_replaces_or_keeps_the_value() -> Result<(), Arc<String>> {
    let db = Db {
        delay: secs(2),
        ..Db::default()
    };
    let cache = config_cache();
    let swr = Freshness::new(secs(300))
        .with_stale_while_revalidate(secs(600))
        .with_stale_if_error(secs(DAY));
    cache.get_or_load("k".into(), db.loader("k", swr)).await?;
    advance(secs(301)).await;
    let started = Instant::now();
    let got = cache.get_or_load("k".into(), db.loader("k", swr)).await?;
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!((got.status, got.value.as_str()), (Status::Stale, "k v1"));
    assert!(cache.is_refreshing("k"));
    let again = cache.get_or_load("k".into(), db.loader("k", swr)).await?;
    assert!(again.refreshing);
    settle().await; // the refresh starts its query
    advance(secs(2)).await;
    settle().await;
    assert_eq!(db.calls(), 2, "one refresh");
    let got = cache.get("k").expect("held");
    assert_eq!((got.status, got.value.as_str()), (Status::Fresh, "k v2"));

    db.set_down(true);
    advance(secs(301)).await;
    assert_eq!(
        cache
            .get_or_load("k".into(), db.loader("k", swr))
            .await?
            .value,
        "k v2"
    );
    settle().await;
    advance(secs(3)).await;
    settle().await;
    let kept = cache.get("k").expect("kept after a failed refresh");
    assert_eq!(kept.value, "k v2");
    assert_eq!(cache.stats().refreshes_failed, 1);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// HTTP: nothing cached and the origin failing (config-4, prices-5 over HTTP)
// ---------------------------------------------------------------------------------------------

/// config-4 over HTTP: nothing cached and the origin answers 503: the origin's own 503 at once
/// (no hang, no invented 200), shared by the requests that waited for that call.
#[tokio::test(start_paused = true)]
async fn config_4_http_cold_origin_503_passes_through_fast() -> TestResult {
    let (origin, calls) = origin(|_, _| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(with_header(
            reply_status(StatusCode::SERVICE_UNAVAILABLE, "cargotech down"),
            http::header::RETRY_AFTER,
            "30",
        ))
    });
    let service = SwrLayer::new().layer(origin);
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let service = service.clone();
        set.spawn(async move {
            let response = service.oneshot(get("/api/cargos/prices/")).await?;
            let status = response.status();
            let retry = header_value(&response, http::header::RETRY_AFTER);
            Ok::<_, BoxError>((status, retry, body(response).await?))
        });
    }
    while let Some(joined) = set.join_next().await {
        let (status, retry, bytes) = joined??;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry.as_deref(), Some("30"), "the origin's own response");
        assert_eq!(bytes, "cargotech down");
    }
    assert!(
        started.elapsed() <= Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(calls.get(), 1);
    assert_eq!(
        service
            .clone()
            .oneshot(get("/api/cargos/prices/"))
            .await?
            .status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "nothing stored"
    );
    Ok(())
}

/// config-4 over HTTP: nothing cached and the inner service errors: the caller gets the error
/// itself; waiters of that call get a 502 marked `origin-error` (documented); nothing invented.
#[tokio::test(start_paused = true)]
async fn config_4_http_cold_origin_error_is_returned_not_invented() -> TestResult {
    let (origin, calls) = origin(|_, _| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Err::<Reply, BoxError>("connection refused".into())
    });
    let service = SwrLayer::new().layer(origin);
    let leader = {
        let service = service.clone();
        tokio::spawn(async move { service.oneshot(get("/cfg")).await })
    };
    settle().await;
    let waiter = {
        let service = service.clone();
        tokio::spawn(async move { service.oneshot(get("/cfg")).await })
    };
    let error = leader.await?.expect_err("the origin's error");
    assert_eq!(error.to_string(), "connection refused");
    let waited = waiter.await??;
    assert_eq!(waited.status(), StatusCode::BAD_GATEWAY);
    assert!(
        cache_status(&waited).contains("origin-error"),
        "{}",
        cache_status(&waited)
    );
    assert_eq!(calls.get(), 1);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// more of config-11 / config-12 / config-13, over HTTP and the metrics facade
// ---------------------------------------------------------------------------------------------

/// The counters of one debugging-recorder snapshot matching `name` and `label`.
#[cfg(feature = "metrics")]
fn counter_of(
    snapshot: &[(
        metrics_util::CompositeKey,
        Option<metrics::Unit>,
        Option<metrics::SharedString>,
        metrics_util::debugging::DebugValue,
    )],
    name: &str,
    label: (&str, &str),
) -> u64 {
    snapshot
        .iter()
        .filter(|(key, _, _, _)| {
            let key = key.key();
            key.name() == name
                && key
                    .labels()
                    .any(|l| l.key() == label.0 && l.value() == label.1)
        })
        .map(|(_, _, _, value)| match value {
            metrics_util::debugging::DebugValue::Counter(n) => *n,
            other => panic!("{name} is not a counter: {other:?}"),
        })
        .sum()
}

/// config-11: the engine mirrors the seed's `model_config_cache_hits_total{status=fresh|stale}`
/// and `model_config_fallback_usage_total` to the `metrics` facade, under the cache's name.
#[cfg(feature = "metrics")]
#[tokio::test(start_paused = true)]
async fn config_11_engine_metrics_hits_by_status_and_fallback_usage() -> Result<(), Arc<String>> {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let cache: SwrCache<String, String> = metrics::with_local_recorder(&recorder, || {
        SwrCache::builder().name("model_config").build()
    });
    let db = Db::default();
    let swr = Freshness::new(secs(300))
        .with_stale_while_revalidate(secs(300))
        .with_stale_if_error(secs(DAY));
    for _ in 0..3 {
        cache
            .get_or_load("judges:en".into(), db.loader("judges:en", swr))
            .await?;
    }
    advance(secs(301)).await;
    cache
        .get_or_load("judges:en".into(), db.loader("judges:en", swr))
        .await?; // stale
    settle().await;
    db.set_down(true);
    advance(secs(1000)).await;
    let fallback = cache
        .get_or_load("judges:en".into(), db.loader("judges:en", swr))
        .await?;
    assert_eq!(fallback.status, Status::StaleIfError);
    let snapshot = snapshotter.snapshot().into_vec();
    let of = |status| counter_of(&snapshot, "swr_requests_total", ("status", status));
    assert_eq!(of("hit"), 2, "hits{{status=fresh}}");
    assert_eq!(of("stale"), 1, "hits{{status=stale}}");
    assert_eq!(of("stale_if_error"), 1, "fallback usage");
    assert_eq!(
        counter_of(&snapshot, "swr_requests_total", ("cache", "model_config")),
        1 + 2 + 1 + 1,
        "every lookup counted once under the cache's name: miss, 2 hits, stale, fallback"
    );
    Ok(())
}

/// config-11, stampede-9: the HTTP layer's facade counts refresh failures and fallback usage.
#[cfg(feature = "metrics")]
#[tokio::test(start_paused = true)]
async fn config_11_http_metrics_count_refresh_failures_and_fallbacks() -> TestResult {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (origin, _calls) = then_503("max-age=60, stale-while-revalidate=60, stale-if-error=600");
    let (layer, service) = metrics::with_local_recorder(&recorder, || {
        let layer = SwrLayer::new().cache_name("seed-failures");
        let service = layer.layer(origin);
        (layer, service)
    });
    call(&service, get("/k")).await?;
    advance(secs(61)).await;
    assert_eq!(call(&service, get("/k")).await?.0, CacheStatus::Stale);
    settle().await;
    advance(secs(100)).await; // past the stale-while-revalidate window
    assert_eq!(
        call(&service, get("/k")).await?.0,
        CacheStatus::StaleIfError
    );
    let _ = layer.stats();
    let snapshot = snapshotter.snapshot().into_vec();
    assert_eq!(
        counter_of(&snapshot, "swr_refreshes_total", ("outcome", "failed")),
        1
    );
    assert_eq!(
        counter_of(
            &snapshot,
            "swr_requests_total",
            ("status", "stale_if_error")
        ),
        1
    );
    Ok(())
}

/// config-13 over HTTP: every answer from a stale entry because the origin failed logs a WARN
/// with the key and the age.
#[tokio::test(start_paused = true)]
async fn config_13_http_every_stale_if_error_answer_logs_a_warning() -> TestResult {
    let events = Events::default();
    let _collecting = events.install();
    let (origin, _calls) = then_503("max-age=60, stale-if-error=3600");
    let service = SwrLayer::new().layer(origin);
    call(&service, get("/config")).await?;
    advance(secs(200)).await;
    for _ in 0..3 {
        assert_eq!(
            call(&service, get("/config")).await?,
            (CacheStatus::StaleIfError, "v1".into())
        );
        advance(secs(5)).await;
    }
    let warnings: Vec<_> = events
        .at(tracing::Level::WARN)
        .into_iter()
        .filter(|e| e.fields.get("key").is_some_and(|k| k.contains("/config")))
        .collect();
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(warnings.iter().all(|w| w.fields.contains_key("age_secs")));
    Ok(())
}

/// config-12 over HTTP: `SwrLayer::stale_alert_age(1 h)`: an outage answer (stale-if-error)
/// older than 1 h raises the alert; one of 10 minutes does not.
#[tokio::test(start_paused = true)]
async fn config_12_http_alert_when_outage_answer_is_older_than_an_hour() -> TestResult {
    let events = Events::default();
    let _collecting = events.install();
    let (origin, _calls) = then_503("max-age=60, stale-if-error=86400");
    let service = SwrLayer::new().stale_alert_age(secs(3600)).layer(origin);
    call(&service, get("/config")).await?;
    advance(secs(600)).await;
    assert_eq!(
        call(&service, get("/config")).await?.0,
        CacheStatus::StaleIfError
    );
    let young = events.at(tracing::Level::WARN).len();
    advance(secs(2 * 3600)).await;
    assert_eq!(
        call(&service, get("/config")).await?.0,
        CacheStatus::StaleIfError
    );
    let old = events.at(tracing::Level::WARN).len() - young;
    assert!(
        old > young,
        "{young} warnings at 10 min, {old} at 2 h 10 min: {:?}",
        events.at(tracing::Level::WARN)
    );
    Ok(())
}

/// config-12 over HTTP (what the docs promise): a stale-while-revalidate answer older than the
/// alert age is logged with `alert_secs`.
#[tokio::test(start_paused = true)]
async fn config_12_http_alert_when_stale_answer_is_older_than_an_hour() -> TestResult {
    let events = Events::default();
    let _collecting = events.install();
    let (origin, _calls) = then_503("max-age=60, stale-while-revalidate=86400");
    let service = SwrLayer::new().stale_alert_age(secs(3600)).layer(origin);
    call(&service, get("/config")).await?;
    advance(secs(600)).await;
    assert_eq!(call(&service, get("/config")).await?.0, CacheStatus::Stale);
    settle().await;
    let alerts = |events: &Events| {
        events
            .at(tracing::Level::WARN)
            .into_iter()
            .filter(|e| e.fields.contains_key("alert_secs"))
            .count()
    };
    assert_eq!(alerts(&events), 0);
    advance(secs(2 * 3600)).await;
    assert_eq!(call(&service, get("/config")).await?.0, CacheStatus::Stale);
    settle().await;
    assert_eq!(alerts(&events), 1);
    Ok(())
}

/// config-15, config-5: risk assessment of `task-swr-config-cache.md`: ~50 entries of ~1 KB must all stay
/// (no eviction of the outage fallback) in a small budget.
#[tokio::test(start_paused = true)]
async fn config_15_fifty_config_entries_of_1kb_all_stay_cached() {
    let cache: SwrCache<String, String> = SwrCache::builder()
        .capacity_bytes(1 << 20)
        .weigher(|key: &String, value: &String| (key.len() + value.len()) as u64)
        .build();
    for i in 0..50 {
        assert!(cache.insert(format!("phase:{i}"), "x".repeat(1024), config_freshness()));
    }
    advance(secs(30 * DAY)).await;
    for i in 0..50 {
        let held = cache.get(format!("phase:{i}").as_str()).expect("kept");
        assert!(held.is_stale());
    }
    let stats = cache.stats();
    assert_eq!((stats.entries, stats.evictions), (50, 0));
    assert!(stats.bytes < 100 * 1024, "{} bytes", stats.bytes);
}

/// prices-7 ("easy to control the frequency of external requests through TTL/lock"): after a
/// failed update, `refresh_backoff(30 s, 60 s)` keeps polls from calling CargoTech again for a
/// while; stale prices keep being answered meanwhile.
#[tokio::test(start_paused = true)]
async fn prices_7_refresh_backoff_limits_calls_after_a_failure() -> TestResult {
    let (origin, calls) = then_503("max-age=15, stale-while-revalidate=3600");
    let layer = SwrLayer::new().refresh_backoff(secs(30), secs(60));
    let service = layer.layer(origin);
    call(&service, get("/api/cargos/prices/")).await?;
    advance(secs(20)).await;
    assert_eq!(
        call(&service, get("/api/cargos/prices/")).await?.0,
        CacheStatus::Stale
    );
    settle().await;
    assert_eq!(calls.get(), 2, "the update failed");
    for _ in 0..10 {
        advance(secs(1)).await;
        let (status, bytes) = call(&service, get("/api/cargos/prices/")).await?;
        assert_eq!((status, text(&bytes)), (CacheStatus::Stale, "v1"));
        settle().await;
    }
    assert_eq!(
        calls.get(),
        2,
        "no new call to CargoTech during the backoff"
    );
    advance(secs(120)).await;
    call(&service, get("/api/cargos/prices/")).await?;
    settle().await;
    assert_eq!(calls.get(), 3, "tried again after the backoff");
    assert_eq!(layer.stats().refreshes_failed, 2);
    Ok(())
}
