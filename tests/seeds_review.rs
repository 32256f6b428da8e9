//! Review against the seeds (`/work/shared/seeds/`), DESIGN.md and PEERS.md: black-box checks
//! of behaviours those documents ask for that the other test files do not already pin down.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::routing;
use axum::Router;
use bytes::Bytes;
use common::*;
use http::header::{self, HeaderName};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tokio::time::{advance, Instant};
use tower::{Layer, Service, ServiceExt};
use tower_swr::engine::{Freshness, Loaded, Status, SwrCache};
use tower_swr::{CacheStatus, SwrBody, SwrLayer};

const DAY: u64 = 24 * 3600;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

type Reply = Response<Full<Bytes>>;
type Answer = Response<SwrBody<Full<Bytes>>>;

/// Sends `request` and returns the response with how long (on the paused clock) it took.
async fn timed<S>(service: &S, request: Request<ReqBody>) -> Result<(Answer, Duration), BoxError>
where
    S: Service<Request<ReqBody>, Response = Answer, Error = BoxError> + Clone,
{
    let started = Instant::now();
    let response = service.clone().oneshot(request).await?;
    Ok((response, started.elapsed()))
}

async fn text(response: Answer) -> Result<String, BoxError> {
    Ok(String::from_utf8(body(response).await?.to_vec())?)
}

fn axum_get(uri: &str) -> Request<Body> {
    Request::builder()
        .uri(uri)
        .body(Body::empty())
        .expect("valid request")
}

/// An axum handler that "scrapes" for 5 s (seed: 3–8 seconds) and answers `{name} v{n}`.
fn scraper(
    name: &'static str,
    calls: &Calls,
) -> routing::MethodRouter<(), std::convert::Infallible> {
    let calls = calls.clone();
    routing::get(move || {
        let n = calls.record();
        async move {
            tokio::time::sleep(secs(5)).await;
            format!("{name} v{n}")
        }
    })
}

// =====================================================================================
// background-refresh-flow.md
// =====================================================================================

/// Seed `background-refresh-flow.md`: "Cache exists? YES → Load from Cache (~50ms) → STALE →
/// Return Cached Response" and "`from_cache`: Always true (except first time)", with
/// `/api/cinema` valid for 6 days. Wired exactly as README "Different policies per route"
/// (a layer per route, sharing one budget). A visit some time after the validity period must
/// still be answered from the cache at once, with the scrape in the background.
#[tokio::test(start_paused = true)]
async fn seed_bg_flow_readme_route_layers_answer_from_cache_after_the_validity() -> TestResult {
    let calls = Calls::default();
    let budget = SwrLayer::new().capacity_bytes(256 << 20);
    let days = |d: u64| {
        SwrLayer::new()
            .ttl(secs(d * DAY))
            .stale_while_revalidate(secs(DAY))
            .share_memory_with(&budget)
    };
    let app = Router::new()
        .route("/api/cinema", scraper("cinema", &calls).layer(days(6)))
        .route("/api/events", scraper("events", &calls).layer(days(5)));

    let first = app.clone().oneshot(axum_get("/api/cinema")).await?;
    assert_eq!(body(first).await?, "cinema v1");

    advance(secs(6 * DAY + 3600)).await;
    let started = Instant::now();
    let stale = app.clone().oneshot(axum_get("/api/cinema")).await?;
    let took = started.elapsed();
    let status = cache_status(&stale);
    assert_eq!(
        took,
        Duration::ZERO,
        "a stale cinema entry must be answered at once, not after the scrape ({status})"
    );
    assert_eq!(body(stale).await?, "cinema v1");
    settle().await;
    advance(secs(6)).await;
    settle().await; // the refresh's task runs once its timer has fired
    let fresh = app.clone().oneshot(axum_get("/api/cinema")).await?;
    assert_eq!(
        body(fresh).await?,
        "cinema v2",
        "the next request gets NEW data"
    );
    Ok(())
}

/// Same seed, wired as README's `policy_fn` alternative: `/api/google_trend` is
/// `Freshness::new(days(1))`. The seed's table says "Auto-Refresh Trigger: After 24 hours":
/// the stale entry is served at once while the refresh runs.
#[tokio::test(start_paused = true)]
async fn seed_bg_flow_readme_policy_fn_answers_from_cache_after_24_hours() -> TestResult {
    let calls = Calls::default();
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
    let app = Router::new()
        .route("/api/google_trend", scraper("trends", &calls))
        .layer(layer);

    let first = app.clone().oneshot(axum_get("/api/google_trend")).await?;
    assert_eq!(body(first).await?, "trends v1");
    advance(secs(DAY + 60)).await;
    let started = Instant::now();
    let stale = app.clone().oneshot(axum_get("/api/google_trend")).await?;
    let took = started.elapsed();
    let status = cache_status(&stale);
    assert_eq!(took, Duration::ZERO, "answered after the scrape ({status})");
    assert_eq!(body(stale).await?, "trends v1");
    Ok(())
}

// =====================================================================================
// scenario-2-swr-prices-ru.md
// =====================================================================================

/// A prices origin: `v{n}` with no caching headers while up; while down, 5 s then a 503.
fn prices_origin(
    down: Arc<Mutex<bool>>,
) -> (
    impl Service<Request<ReqBody>, Response = Reply, Error = BoxError, Future: Send + 'static>
        + Clone
        + Send
        + 'static,
    Calls,
) {
    origin(move |n, _request: Request<ReqBody>| {
        let down = *down.lock().expect("lock");
        async move {
            tokio::time::sleep(secs(5)).await;
            Ok::<_, BoxError>(if down {
                reply_status(StatusCode::SERVICE_UNAVAILABLE, "CargoTech down")
            } else {
                reply(format!("v{n}"))
            })
        }
    })
}

/// Seed scenario 2 (ru): "при падении CargoTech цены остаются из последнего успешного
/// обновления", "UI не зависит от скорости внешнего API", "ограниченное число реальных
/// запросов к CargoTech (по TTL/lock)". Configured with unbounded stale windows: polls every
/// 15 s through a one-hour outage are all answered at once with the last good prices, the
/// origin is asked far less often than polled (backoff), and the prices update after recovery.
#[tokio::test(start_paused = true)]
async fn seed_ru_outage_with_open_windows_keeps_prices_and_bounds_origin_calls() -> TestResult {
    let down = Arc::new(Mutex::new(false));
    let (o, calls) = prices_origin(Arc::clone(&down));
    let layer = SwrLayer::new()
        .ttl(secs(15))
        .stale_while_revalidate(Duration::MAX)
        .stale_if_error(Duration::MAX);
    let service = layer.layer(o);

    let (first, _) = timed(&service, get("/api/cargos/prices/?limit=10")).await?;
    assert_eq!(text(first).await?, "v1");
    *down.lock().expect("lock") = true;

    let polls = 240; // one hour
    for poll in 0..polls {
        advance(secs(15)).await;
        let (answer, took) = timed(&service, get("/api/cargos/prices/?limit=10")).await?;
        assert_eq!(took, Duration::ZERO, "poll {poll} waited for the origin");
        assert_eq!(answer.status(), StatusCode::OK, "poll {poll}");
        assert_eq!(info(&answer).status, CacheStatus::Stale, "poll {poll}");
        assert_eq!(text(answer).await?, "v1", "poll {poll}");
    }
    let during = calls.get() - 1;
    assert!(
        during <= 80,
        "{during} origin calls for {polls} polls: refreshes of a failing key must back off"
    );

    *down.lock().expect("lock") = false;
    let mut recovered = false;
    for _ in 0..10 {
        advance(secs(15)).await;
        let (answer, took) = timed(&service, get("/api/cargos/prices/?limit=10")).await?;
        assert_eq!(took, Duration::ZERO);
        if text(answer).await? != "v1" {
            recovered = true;
            break;
        }
    }
    assert!(recovered, "prices must update within 150 s of the recovery");
    Ok(())
}

/// The same outage with the layer's defaults (`SwrLayer::new()`, the README's one-liner): the
/// seed asks that prices stay those of the last successful update and that the UI never waits
/// for the external API.
#[tokio::test(start_paused = true)]
#[ignore = "defaults bound stale serving: from 180 s polls wait for the failing origin, from 360 s they get its 503"]
async fn seed_ru_outage_with_defaults_keeps_the_last_prices() -> TestResult {
    let down = Arc::new(Mutex::new(false));
    let (o, _calls) = prices_origin(Arc::clone(&down));
    let service = SwrLayer::new().layer(o);

    let (first, _) = timed(&service, get("/api/cargos/prices/")).await?;
    assert_eq!(text(first).await?, "v1");
    *down.lock().expect("lock") = true;
    for poll in 1..=40 {
        advance(secs(15)).await;
        let (answer, took) = timed(&service, get("/api/cargos/prices/")).await?;
        let status = cache_status(&answer);
        assert_eq!(
            took,
            Duration::ZERO,
            "poll {poll} (t={}s) waited for the failing origin ({status})",
            poll * 15
        );
        assert_eq!(
            answer.status(),
            StatusCode::OK,
            "poll {poll} (t={}s): {status}",
            poll * 15
        );
        assert_eq!(text(answer).await?, "v1");
    }
    Ok(())
}

// =====================================================================================
// DESIGN.md: "Origin error on a miss (error, 5xx, timeout)"
// =====================================================================================

/// DESIGN.md: on a miss, an origin *timeout* serves the stale entry inside stale-if-error.
/// Here the origin hangs; the entry (defaults: 60 s + 120 s SWR + 300 s SIE) is 200 s old.
#[tokio::test(start_paused = true)]
async fn design_miss_on_a_hanging_origin_is_answered_from_stale_if_error() -> TestResult {
    let (o, _calls) = origin(|n, _request: Request<ReqBody>| async move {
        if n > 1 {
            std::future::pending::<()>().await;
        }
        Ok::<_, BoxError>(reply("v1"))
    });
    let service = SwrLayer::new().layer(o);
    let (first, _) = timed(&service, get("/p")).await?;
    assert_eq!(text(first).await?, "v1");

    advance(secs(200)).await;
    let answer = tokio::time::timeout(secs(600), service.clone().oneshot(get("/p")))
        .await
        .map_err(|_| "still waiting for the hanging origin after 10 minutes")??;
    assert_eq!(info(&answer).status, CacheStatus::StaleIfError);
    assert_eq!(text(answer).await?, "v1");
    Ok(())
}

/// `origin_timeout` sets how long such a request waits; `None` waits for the origin.
#[tokio::test(start_paused = true)]
async fn origin_timeout_is_configurable_and_can_be_turned_off() -> TestResult {
    for (limit, expect_stale) in [(Some(secs(5)), true), (None, false)] {
        let (o, _calls) = origin(|n, _request: Request<ReqBody>| async move {
            if n > 1 {
                std::future::pending::<()>().await;
            }
            Ok::<_, BoxError>(reply("v1"))
        });
        let service = SwrLayer::new().origin_timeout(limit).layer(o);
        let (first, _) = timed(&service, get("/p")).await?;
        assert_eq!(text(first).await?, "v1");
        advance(secs(200)).await;
        let started = tokio::time::Instant::now();
        let answer = tokio::time::timeout(secs(60), service.clone().oneshot(get("/p"))).await;
        match (answer, expect_stale) {
            (Ok(answer), true) => {
                let answer = answer?;
                assert_eq!(
                    started.elapsed(),
                    secs(5),
                    "answered when the timeout passed"
                );
                assert_eq!(info(&answer).status, CacheStatus::StaleIfError);
                assert_eq!(text(answer).await?, "v1");
            }
            (Err(_), false) => {} // still waiting for the origin after a minute, as asked
            (answer, _) => panic!("origin_timeout({limit:?}): unexpected {:?}", answer.is_ok()),
        }
    }
    Ok(())
}

// =====================================================================================
// task-swr-config-cache.md (the engine)
// =====================================================================================

#[derive(Debug)]
struct DbDown;

impl std::fmt::Display for DbDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("database unavailable")
    }
}

impl std::error::Error for DbDown {}

/// Seed acceptance criterion 2, "Cache NEVER auto-deletes stale entries", with the seed's one
/// parameter (`freshTTLMs = 5 min`): 10 minutes later, `get` still returns the data with
/// `isStale`, and a failing database gets the stale data instead of an error.
#[tokio::test(start_paused = true)]
#[ignore = "Freshness::new(ttl) has zero stale windows: the entry is dead (removed) at ttl"]
async fn seed_config_stale_entries_are_never_deleted() -> TestResult {
    let cache: SwrCache<String, String> = SwrCache::new(1 << 20);
    let key = "judges:en".to_owned();
    let loaded = cache
        .get_or_load(key.clone(), || async {
            Ok::<_, DbDown>(Loaded::new("qwen3".to_owned(), Freshness::new(secs(300))))
        })
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(loaded.status, Status::Miss);

    advance(secs(600)).await;
    let peeked = cache.get(&key).ok_or("the stale entry was deleted")?;
    assert!(peeked.is_stale());
    assert_eq!(peeked.age, secs(600));
    let fallback = cache
        .get_or_load(key, || async { Err::<Loaded<String>, _>(DbDown) })
        .await
        .map_err(|e| format!("got the error although stale data exists: {e}"))?;
    assert_eq!(fallback.status, Status::StaleIfError);
    assert_eq!(fallback.value, "qwen3");
    Ok(())
}

/// A `MakeWriter` into a shared buffer.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buffer {
    type Writer = Buffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The seed's four steps on the engine, as its flow diagram has them (no background refresh):
/// fresh → at once without the database; stale → database, success returns FRESH data at
/// once; database down → stale data with a WARNING naming the key; no cache and database down
/// → the explicit error.
#[tokio::test(start_paused = true)]
async fn seed_config_four_steps_with_a_warning_on_stale() -> TestResult {
    let logs = Buffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let cache: SwrCache<String, String> = SwrCache::new(1 << 20);
    let calls = Calls::default();
    let db = |up: bool, calls: Calls| {
        move || async move {
            let n = calls.record();
            if up {
                Ok(Loaded::new(
                    format!("model-v{n}"),
                    Freshness::new(secs(300)).with_stale_if_error(Duration::MAX),
                ))
            } else {
                Err(DbDown)
            }
        }
    };
    let key = || "judges:ru".to_owned();

    assert_eq!(
        cache
            .get_or_load(key(), db(true, calls.clone()))
            .await
            .map_err(|e| e.to_string())?
            .value,
        "model-v1"
    );
    let fresh = cache
        .get_or_load(key(), db(true, calls.clone()))
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!((fresh.status, calls.get()), (Status::Fresh, 1));

    advance(secs(301)).await;
    let reloaded = cache
        .get_or_load(key(), db(true, calls.clone()))
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(
        reloaded.value, "model-v2",
        "stale: the database is asked first"
    );
    assert!(!reloaded.is_stale());

    advance(secs(3 * 3600)).await;
    let fallback = cache
        .get_or_load(key(), db(false, calls.clone()))
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(fallback.status, Status::StaleIfError);
    assert_eq!(fallback.value, "model-v2");
    assert!(fallback.is_stale());
    assert!(fallback.age >= secs(3 * 3600));
    let logged = String::from_utf8(logs.0.lock().expect("lock").clone())?;
    assert!(
        logged.contains("WARN") && logged.contains("judges:ru"),
        "a WARNING naming the key: {logged:?}"
    );

    let cold = cache
        .get_or_load("judges:de".to_owned(), db(false, calls.clone()))
        .await;
    assert_eq!(
        cold.map(|l| l.value).map_err(|e| e.to_string()),
        Err("database unavailable".to_owned())
    );
    assert!(
        cache.get("judges:de").is_none(),
        "a cold start invents nothing"
    );
    cache.clear();
    assert!(cache.get("judges:ru").is_none());
    Ok(())
}

// =====================================================================================
// PEERS.md
// =====================================================================================

/// PEERS.md: "Sharing a cache between layers and invalidating entries independently"
/// (axum-response-cache#6). Two layers sharing one memory budget in front of different
/// services that both see `/items` (e.g. nested routers, which strip their prefix) keep their
/// own answers, and purging through one layer's handle leaves the other's entry.
#[tokio::test(start_paused = true)]
async fn peers_layers_sharing_memory_keep_and_purge_their_own_entries() -> TestResult {
    let (a, a_calls) =
        origin(|_, _request: Request<ReqBody>| async { Ok::<_, BoxError>(reply("from A")) });
    let (b, b_calls) =
        origin(|_, _request: Request<ReqBody>| async { Ok::<_, BoxError>(reply("from B")) });
    let budget = SwrLayer::new().capacity_bytes(8 << 20);
    let layer_a = SwrLayer::new().share_memory_with(&budget);
    let layer_b = SwrLayer::new().share_memory_with(&budget);
    let a = layer_a.layer(a);
    let b = layer_b.layer(b);

    assert_eq!(
        text(a.clone().oneshot(get("/items")).await?).await?,
        "from A"
    );
    let answer = b.clone().oneshot(get("/items")).await?;
    let status = cache_status(&answer);
    assert_eq!(
        text(answer).await?,
        "from B",
        "B answered A's entry ({status})"
    );
    assert_eq!((a_calls.get(), b_calls.get()), (1, 1));

    assert_eq!(layer_a.handle().purge("/items"), 1);
    assert_eq!(
        text(b.clone().oneshot(get("/items")).await?).await?,
        "from B"
    );
    assert_eq!(b_calls.get(), 1, "purging A's entry removed B's");
    Ok(())
}

/// PEERS.md: "never let a refresh with a bigger body silently drop the stale copy" and "pass
/// oversize responses through untouched". A background refresh whose body is over
/// `max_body_bytes`, or heavier than the whole memory budget, keeps the stale copy.
#[tokio::test(start_paused = true)]
async fn peers_refresh_with_an_oversize_body_keeps_the_stale_copy() -> TestResult {
    for (name, layer, big) in [
        (
            "over max_body_bytes",
            SwrLayer::new().max_body_bytes(1024),
            2048,
        ),
        (
            "over the memory budget",
            SwrLayer::new().capacity_bytes(64 << 10),
            256 << 10,
        ),
    ] {
        let (o, calls) = origin(move |n, _request: Request<ReqBody>| async move {
            let size = if n == 1 { 100 } else { big };
            Ok::<_, BoxError>(reply_cc(
                Bytes::from(vec![b'a' + n as u8; size]),
                "max-age=10, stale-while-revalidate=600",
            ))
        });
        let service = layer.layer(o);
        let small = body(service.clone().oneshot(get("/r")).await?).await?;
        assert_eq!(small.len(), 100, "{name}");

        advance(secs(11)).await;
        let stale = service.clone().oneshot(get("/r")).await?;
        assert_eq!(info(&stale).status, CacheStatus::Stale, "{name}");
        settle().await;
        assert_eq!(calls.get(), 2, "{name}: one refresh ran");

        let after = service.clone().oneshot(get("/r")).await?;
        let status = cache_status(&after);
        assert_eq!(
            info(&after).status,
            CacheStatus::Stale,
            "{name}: the stale copy must survive the oversize refresh ({status})"
        );
        assert_eq!(body(after).await?, small, "{name}");
        assert!(
            layer.stats().bytes <= layer.stats().capacity_bytes,
            "{name}"
        );
    }
    Ok(())
}

/// DESIGN.md: "The number of variants per key is bounded."
#[tokio::test(start_paused = true)]
async fn design_variants_per_key_are_bounded() -> TestResult {
    let (o, calls) = origin(|_, _request: Request<ReqBody>| async {
        Ok::<_, BoxError>(with_header(
            reply_cc("x", "max-age=600"),
            header::VARY,
            "x-variant",
        ))
    });
    let layer = SwrLayer::new();
    let service = layer.layer(o);
    let name = HeaderName::from_static("x-variant");
    for i in 0..200 {
        let response = service
            .clone()
            .oneshot(get_with("/v", name.clone(), &i.to_string()))
            .await?;
        body(response).await?;
    }
    assert_eq!(calls.get(), 200);
    let entries = layer.stats().entries;
    assert!(entries <= 64, "{entries} variants kept for one key");
    // The newest variant is still served from the cache.
    let again = service.clone().oneshot(get_with("/v", name, "199")).await?;
    assert_eq!(info(&again).status, CacheStatus::Fresh);
    Ok(())
}

/// PEERS.md: "Coalescing keyed without `Vary` serves one user's variant to another"
/// (go-proxy-cache#267). Concurrent cold misses for one URL from two users (`Authorization`,
/// then `Cookie`) whose answers are not shareable must each get their own answer.
#[tokio::test(start_paused = true)]
async fn peers_coalesced_misses_never_hand_one_users_answer_to_another() -> TestResult {
    for credential in [header::AUTHORIZATION, header::COOKIE] {
        let gate = Gate::new();
        let (o, calls) = origin({
            let gate = gate.clone();
            let credential = credential.clone();
            move |_, request: Request<ReqBody>| {
                let gate = gate.clone();
                let user = request
                    .headers()
                    .get(&credential)
                    .map(|v| v.to_str().unwrap_or("?").to_owned())
                    .unwrap_or_default();
                async move {
                    gate.wait().await;
                    Ok::<_, BoxError>(reply(format!("account of {user}")))
                }
            }
        });
        let service = SwrLayer::new().layer(o);
        let alice = tokio::spawn(service.clone().oneshot(get_with(
            "/account",
            credential.clone(),
            "alice",
        )));
        settle().await;
        let bob = tokio::spawn(service.clone().oneshot(get_with(
            "/account",
            credential.clone(),
            "bob",
        )));
        settle().await;
        gate.open();
        let alice = text(alice.await??).await?;
        let bob = text(bob.await??).await?;
        assert_eq!(alice, "account of alice", "{credential}");
        assert_eq!(
            bob, "account of bob",
            "{credential}: bob got alice's answer"
        );
        assert_eq!(calls.get(), 2, "{credential}");
    }
    Ok(())
}

/// RFC 9110 §6.6.1 (a cache MUST add `Date` to a response it stores without one) and seed
/// `background-refresh-flow.md`'s `cache_date` ("When cache was created"): a hit on a response
/// the handler sent without `Date` carries the `Date` of when it was stored, so with `Age` the
/// client can tell when the data was produced.
#[tokio::test(start_paused = true)]
#[ignore = "chosen: no Date is stored (hyper dates responses as they go out, and Age carries the age); a stored Date would cost every hit a refcounted header clone"]
async fn seed_bg_flow_stored_response_carries_its_date() -> TestResult {
    let (o, _calls) =
        origin(|_, _request: Request<ReqBody>| async { Ok::<_, BoxError>(reply("items")) });
    let service = SwrLayer::new().layer(o);
    let miss = service.clone().oneshot(get("/api/cinema")).await?;
    body(miss).await?;
    advance(secs(30)).await;
    let hit = service.clone().oneshot(get("/api/cinema")).await?;
    assert_eq!(info(&hit).status, CacheStatus::Fresh);
    let date = header_value(&hit, header::DATE).ok_or("the hit carries no Date")?;
    httpdate::parse_http_date(&date)?;
    assert_eq!(age(&hit), Some(30));
    Ok(())
}
