#![cfg(feature = "redis")]
//! Black-box tests of HTTP caching semantics (RFC 9111, RFC 9211, RFC 5861) as seen across
//! instances that share one Redis, written from the public API and the docs only (README's
//! Redis section, `tower_swr::redis`'s module docs, `docs/`). Several layers in one process on
//! one `redis-server` stand for several instances: each has its own memory and connections and
//! shares only Redis. Where `redis-server` is not installed each test says so and passes.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::redis_server::RedisServer;
use common::*;
use http::{Method, StatusCode};
use tower::Layer;
use tower_swr::{CacheStatus, SwrHandle, SwrLayer, SwrService};

type Instance<S> = (SwrService<S>, SwrHandle);

/// An origin answering `f(call number, request)` at once.
fn answering<F>(f: F) -> (impl OriginService, Calls)
where
    F: Fn(usize, &http::Request<ReqBody>) -> Reply + Clone + Send + Sync + 'static,
{
    slow_answering(Duration::ZERO, f)
}

/// An origin answering `f(call number, request)` after `delay`.
fn slow_answering<F>(delay: Duration, f: F) -> (impl OriginService, Calls)
where
    F: Fn(usize, &http::Request<ReqBody>) -> Reply + Clone + Send + Sync + 'static,
{
    origin(move |n, request| {
        let response = f(n, &request);
        async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok(response)
        }
    })
}

/// One more instance on `redis` around `origin`.
fn instance<S: OriginService>(redis: &RedisServer, origin: &S, layer: SwrLayer) -> Instance<S> {
    let layer = layer.redis(redis.config());
    let handle = layer.handle();
    (layer.layer(origin.clone()), handle)
}

fn instances<S: OriginService>(
    redis: &RedisServer,
    origin: &S,
    n: usize,
    layer: impl Fn() -> SwrLayer,
) -> Vec<Instance<S>> {
    (0..n).map(|_| instance(redis, origin, layer())).collect()
}

/// Waits until every instance's invalidation bus is subscribed: a bus that connects only
/// after a failed first try has each instance re-check what it holds and drop the store of
/// a load under way (it may have missed a purge), which would make "then it is shared" racy.
async fn buses_up<S: OriginService>(fleet: &[Instance<S>]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !fleet
        .iter()
        .all(|(_, handle)| handle.redis_stats().is_some_and(|stats| stats.bus_up))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for the fleet's buses"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `handle`'s instance has written `n` values to Redis (writes are detached).
async fn written(handle: &SwrHandle, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stats = handle.redis_stats().expect("a Redis tier");
        if stats.writes >= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {n} write(s) to Redis: {stats:?} {:?}",
            handle.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn send<S: OriginService>(instance: &Instance<S>, request: http::Request<ReqBody>) -> Whole {
    tokio::time::timeout(Duration::from_secs(10), send_whole(&instance.0, request))
        .await
        .expect("an answer within 10 s")
}

fn text(whole: &Whole) -> &str {
    std::str::from_utf8(&whole.body).expect("UTF-8 body")
}

fn status_line(whole: &Whole) -> String {
    (whole.headers.get_all(&tower_swr::CACHE_STATUS).iter())
        .next_back()
        .map(|v| v.to_str().expect("ascii").to_owned())
        .expect("a Cache-Status")
}

fn age_of(whole: &Whole) -> Option<u64> {
    header_text(&whole.headers, "age").map(|v| v.parse().expect("numeric Age"))
}

/// Call 1 is fresh for 1 s (then 60 s stale-while-revalidate); later calls are fresh for
/// 300 s, so a refreshed value does not go stale again while a test looks at it.
fn first_short(n: usize) -> &'static str {
    if n == 1 {
        "max-age=1, stale-while-revalidate=60"
    } else {
        "max-age=300, stale-while-revalidate=60"
    }
}

/// `v{n}` with `cache_control`.
fn versioned(cache_control: &'static str) -> (impl OriginService, Calls) {
    answering(move |n, _| reply_cc(format!("v{n}"), cache_control))
}

/// Waits until `instance` answers `uri` with something other than `old` and returns it.
async fn until_not<S: OriginService>(instance: &Instance<S>, uri: &str, old: &str) -> Whole {
    let deadline = Deadline::after(
        Duration::from_secs(10),
        format!("{uri} to stop being {old}"),
    );
    loop {
        let whole = send(instance, get(uri)).await;
        if text(&whole) != old {
            return whole;
        }
        deadline.tick().await;
    }
}

macro_rules! redis_or_skip {
    ($why:expr) => {
        match RedisServer::start($why) {
            Some(redis) => redis,
            None => return,
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Age and Cache-Status on answers from Redis
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn age_of_an_answer_from_redis_counts_from_the_origin_answer() {
    let redis = redis_or_skip!("age from redis");
    let (origin, calls) = versioned("max-age=300");
    let a = instance(&redis, &origin, SwrLayer::new());
    let first = send(&a, get("/age")).await;
    assert_eq!(first.info.status, CacheStatus::Miss);
    written(&a.1, 1).await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let b = instance(&redis, &origin, SwrLayer::new());
    let shared = send(&b, get("/age")).await;
    assert_eq!(shared.info.status, CacheStatus::SharedTier);
    assert_eq!(text(&shared), "v1");
    let age = age_of(&shared).expect("an Age on a cached answer");
    assert!(
        (2..=30).contains(&age),
        "B's Age counts from A's origin answer, 2.2 s ago: {age}"
    );
    let ttl = ttl_of(&shared);
    assert!(ttl <= 298 && ttl > 200, "ttl = 300 - age: {ttl}");
    assert_eq!(calls.get(), 1);
}

fn ttl_of(whole: &Whole) -> i64 {
    let line = status_line(whole);
    line.split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("ttl="))
        .unwrap_or_else(|| panic!("no ttl in {line}"))
        .parse()
        .expect("integer ttl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_age_is_carried_through_redis() {
    let redis = redis_or_skip!("upstream age through redis");
    let (origin, _calls) = answering(|n, _| {
        respond(
            200,
            format!("v{n}"),
            &[("cache-control", "max-age=300"), ("age", "100")],
        )
    });
    let a = instance(&redis, &origin, SwrLayer::new());
    send(&a, get("/upstream-age")).await;
    written(&a.1, 1).await;
    let b = instance(&redis, &origin, SwrLayer::new());
    let shared = send(&b, get("/upstream-age")).await;
    assert_eq!(shared.info.status, CacheStatus::SharedTier);
    let age = age_of(&shared).expect("Age");
    assert!(
        (100..=130).contains(&age),
        "the origin's Age 100 counts on B too: {age}"
    );
    let ttl = ttl_of(&shared);
    assert!(
        ttl <= 200 && ttl > 150,
        "freshness left is 300 - 100 - elapsed: {ttl}"
    );
}

/// RFC 9211 §2: `Cache-Status` is an sf-list; each member a token (or string) with
/// parameters `hit` (boolean), `fwd` (token), `fwd-status` (integer), `ttl` (integer),
/// `stored` (boolean), `collapsed` (boolean), `key` (string), `detail` (token or string).
fn assert_rfc9211_member(line: &str) {
    let mut parts = line.split(';').map(str::trim);
    let name = parts.next().expect("a member");
    assert!(
        !name.is_empty()
            && name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '*')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~:/".contains(c)),
        "the cache's name is an sf-token: {line}"
    );
    let mut seen = Vec::new();
    let mut hit = false;
    let mut fwd = false;
    for param in parts {
        let (key, value) = param.split_once('=').unwrap_or((param, "?1"));
        assert!(!seen.contains(&key), "{key} appears twice in {line}");
        seen.push(key);
        match key {
            "hit" | "stored" | "collapsed" => {
                assert_eq!(value, "?1", "{key} is a boolean true (bare): {line}");
                hit |= key == "hit";
            }
            "fwd" => {
                fwd = true;
                assert!(
                    [
                        "bypass",
                        "method",
                        "uri-miss",
                        "vary-miss",
                        "miss",
                        "request",
                        "stale",
                        "partial"
                    ]
                    .contains(&value),
                    "fwd is one of RFC 9211's tokens: {line}"
                );
            }
            "fwd-status" | "ttl" => {
                value
                    .parse::<i64>()
                    .unwrap_or_else(|_| panic!("{key} is an integer: {line}"));
            }
            "detail" | "key" => assert!(!value.is_empty(), "{line}"),
            other => panic!("unknown Cache-Status parameter {other} in {line}"),
        }
    }
    assert!(
        !(hit && fwd),
        "hit and fwd are exclusive (RFC 9211 §2.2): {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_status_of_a_shared_answer_is_valid_rfc_9211() {
    let redis = redis_or_skip!("cache-status shared");
    let (origin, _calls) = versioned("max-age=60");
    let [a, b]: [Instance<_>; 2] = instances(&redis, &origin, 2, SwrLayer::new)
        .try_into()
        .ok()
        .expect("two");
    let miss = send(&a, get("/cs")).await;
    assert_rfc9211_member(&status_line(&miss));
    written(&a.1, 1).await;
    let shared = send(&b, get("/cs")).await;
    let line = status_line(&shared);
    assert_eq!(shared.info.status, CacheStatus::SharedTier, "{line}");
    assert_rfc9211_member(&line);
    assert!(line.starts_with("tower-swr;"), "{line}");
    assert!(line.split(';').any(|p| p.trim() == "hit"), "a hit: {line}");
    assert!(line.contains("detail=shared"), "{line}");
    assert!(ttl_of(&shared) > 0, "fresh: positive ttl: {line}");
    // Then from B's memory: a plain fresh hit.
    let again = send(&b, get("/cs")).await;
    assert_eq!(again.info.status, CacheStatus::Fresh);
    assert_rfc9211_member(&status_line(&again));
    assert!(
        !status_line(&again).contains("detail=shared"),
        "{}",
        status_line(&again)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_shared_answer_has_a_negative_ttl_and_valid_cache_status() {
    let redis = redis_or_skip!("stale from redis cache-status");
    let (origin, calls) = slow_answering(Duration::from_millis(300), |n, _| {
        reply_cc(format!("v{n}"), first_short(n))
    });
    let a = instance(&redis, &origin, SwrLayer::new());
    send(&a, get("/stale-cs")).await;
    written(&a.1, 1).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let b = instance(&redis, &origin, SwrLayer::new());
    let stale = send(&b, get("/stale-cs")).await;
    assert_eq!(
        stale.info.status,
        CacheStatus::Stale,
        "{}",
        status_line(&stale)
    );
    assert_eq!(text(&stale), "v1");
    assert!(ttl_of(&stale) < 0, "{}", status_line(&stale));
    assert_rfc9211_member(&status_line(&stale));
    eventually("one refresh", || calls.get() == 2).await;
}

// ---------------------------------------------------------------------------------------------
// Stale copies in Redis
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_copy_in_redis_is_served_by_new_instances_with_one_refresh_fleet_wide() {
    let redis = redis_or_skip!("stale copy, one refresh");
    let (origin, calls) = slow_answering(Duration::from_millis(500), |n, _| {
        reply_cc(format!("v{n}"), first_short(n))
    });
    let a = instance(&redis, &origin, SwrLayer::new());
    send(&a, get("/swr")).await;
    written(&a.1, 1).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // B and C have nothing in memory; A has it stale.
    let fleet = Arc::new(vec![
        a,
        instance(&redis, &origin, SwrLayer::new()),
        instance(&redis, &origin, SwrLayer::new()),
    ]);
    let mut tasks = Vec::new();
    for i in 0..30 {
        let fleet = Arc::clone(&fleet);
        tasks.push(tokio::spawn(async move {
            send(&fleet[i % 3], get("/swr")).await
        }));
    }
    for task in tasks {
        let whole = task.await.expect("no panic");
        assert_eq!(text(&whole), "v1", "answered stale at once");
        assert_eq!(whole.info.status, CacheStatus::Stale);
    }
    eventually("the refresh", || calls.get() >= 2).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(calls.get(), 2, "one refresh for the whole fleet");
    for instance in fleet.iter() {
        let whole = until_not(instance, "/swr", "v1").await;
        assert_eq!(text(&whole), "v2");
    }
    for (i, instance) in fleet.iter().enumerate() {
        eprintln!(
            "instance {i}: {:?} {:?}",
            instance.1.stats(),
            instance.1.redis_stats()
        );
    }
    assert_eq!(calls.get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_answers_from_a_copy_in_redis_when_the_origin_is_down() {
    let redis = redis_or_skip!("stale-if-error from redis");
    let down = Switch::default();
    let (origin, calls) = switchable("max-age=1, stale-if-error=120", down.clone());
    let a = instance(&redis, &origin, SwrLayer::shared_cache());
    send(&a, get("/sie")).await;
    written(&a.1, 1).await;
    down.set(true);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let b = instance(&redis, &origin, SwrLayer::shared_cache());
    let answer = send(&b, get("/sie")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(text(&answer), "v1");
    assert_eq!(answer.info.status, CacheStatus::StaleIfError);
    let line = status_line(&answer);
    assert!(
        line.contains("fwd=stale") && line.contains("fwd-status=503"),
        "{line}"
    );
    assert_rfc9211_member(&line);
    assert!(calls.get() >= 2, "B asked the origin first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_stale_if_error_a_down_origin_503_reaches_the_client() {
    let redis = redis_or_skip!("no stale-if-error");
    let down = Switch::default();
    let (origin, _calls) = switchable("max-age=1, must-revalidate", down.clone());
    let a = instance(&redis, &origin, SwrLayer::shared_cache());
    send(&a, get("/nosie")).await;
    written(&a.1, 1).await;
    down.set(true);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let b = instance(&redis, &origin, SwrLayer::shared_cache());
    let answer = send(&b, get("/nosie")).await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "must-revalidate: no stale"
    );
}

// ---------------------------------------------------------------------------------------------
// Conditional requests
// ---------------------------------------------------------------------------------------------

fn etagged(cache_control: &'static str) -> (impl OriginService, Calls) {
    answering(move |n, _| {
        respond(
            200,
            format!("v{n}"),
            &[
                ("cache-control", cache_control),
                ("etag", "\"e1\""),
                ("last-modified", "Wed, 01 Jan 2025 00:00:00 GMT"),
            ],
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_none_match_is_answered_304_by_b_from_a_stored_response() {
    let redis = redis_or_skip!("INM 304 on B");
    let (origin, calls) = etagged("max-age=60");
    let a = instance(&redis, &origin, SwrLayer::new());
    send(&a, get("/inm")).await;
    written(&a.1, 1).await;
    let b = instance(&redis, &origin, SwrLayer::new());
    let answer = send(&b, get_headers("/inm", &[("if-none-match", "\"e1\"")])).await;
    assert_eq!(answer.status, StatusCode::NOT_MODIFIED);
    assert!(answer.body.is_empty());
    assert_eq!(
        header_text(&answer.headers, "etag").as_deref(),
        Some("\"e1\"")
    );
    assert_eq!(calls.get(), 1, "no origin call");
    let weak = send(
        &b,
        get_headers("/inm", &[("if-none-match", "W/\"e1\", \"x\"")]),
    )
    .await;
    assert_eq!(
        weak.status,
        StatusCode::NOT_MODIFIED,
        "weak comparison (RFC 9110 §13.1.2)"
    );
    let other = send(&b, get_headers("/inm", &[("if-none-match", "\"other\"")])).await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(text(&other), "v1");
    assert_eq!(calls.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_modified_since_is_answered_304_by_b_from_a_stored_response() {
    let redis = redis_or_skip!("IMS 304 on B");
    let (origin, calls) = etagged("max-age=60");
    let a = instance(&redis, &origin, SwrLayer::new());
    send(&a, get("/ims")).await;
    written(&a.1, 1).await;
    let b = instance(&redis, &origin, SwrLayer::new());
    let answer = send(
        &b,
        get_headers(
            "/ims",
            &[("if-modified-since", "Thu, 02 Jan 2025 00:00:00 GMT")],
        ),
    )
    .await;
    assert_eq!(answer.status, StatusCode::NOT_MODIFIED);
    let older = send(
        &b,
        get_headers(
            "/ims",
            &[("if-modified-since", "Tue, 31 Dec 2024 00:00:00 GMT")],
        ),
    )
    .await;
    assert_eq!(
        older.status,
        StatusCode::OK,
        "modified since then: the full response"
    );
    assert_eq!(text(&older), "v1");
    assert_eq!(calls.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revalidation_304_on_a_freshens_the_copy_b_then_reads() {
    let redis = redis_or_skip!("304 freshens redis copy");
    let seen = Seen::default();
    let (origin, calls) = answering({
        let seen = seen.clone();
        move |n, request| {
            seen.record(request);
            if n > 1 && request.headers().get("if-none-match").is_some() {
                respond(
                    304,
                    "",
                    &[
                        ("cache-control", "max-age=300"),
                        ("etag", "\"e1\""),
                        ("x-rev", "2"),
                    ],
                )
            } else {
                respond(
                    200,
                    format!("v{n}"),
                    &[
                        ("cache-control", "max-age=1"),
                        ("etag", "\"e1\""),
                        ("x-rev", "1"),
                    ],
                )
            }
        }
    });
    let a = instance(&redis, &origin, SwrLayer::shared_cache());
    send(&a, get("/reval")).await;
    written(&a.1, 1).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let revalidated = send(&a, get("/reval")).await;
    assert_eq!(revalidated.status, StatusCode::OK);
    assert_eq!(text(&revalidated), "v1");
    assert_eq!(calls.get(), 2);
    assert_eq!(
        header_text(&seen.headers(2), "if-none-match").as_deref(),
        Some("\"e1\"")
    );
    written(&a.1, 2).await;
    let b = instance(&redis, &origin, SwrLayer::shared_cache());
    let shared = send(&b, get("/reval")).await;
    assert_eq!(
        shared.info.status,
        CacheStatus::SharedTier,
        "{}",
        status_line(&shared)
    );
    assert_eq!(text(&shared), "v1");
    assert_eq!(
        header_text(&shared.headers, "x-rev").as_deref(),
        Some("2"),
        "the 304's headers"
    );
    assert!(
        ttl_of(&shared) > 200,
        "freshened to max-age=300: {}",
        status_line(&shared)
    );
    assert_eq!(calls.get(), 2);
}

// ---------------------------------------------------------------------------------------------
// Vary
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_variants_stored_by_a_are_found_by_b_and_never_crossed() {
    let redis = redis_or_skip!("vary across instances");
    let (origin, calls) = answering(|n, request| {
        let lang = header_text(request.headers(), "accept-language").unwrap_or_default();
        respond(
            200,
            format!("{lang} v{n}"),
            &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
        )
    });
    let a = instance(&redis, &origin, SwrLayer::new());
    send(&a, get_headers("/vary", &[("accept-language", "en")])).await;
    written(&a.1, 1).await;
    send(&a, get_headers("/vary", &[("accept-language", "fr")])).await;
    written(&a.1, 2).await;
    assert_eq!(calls.get(), 2);
    let b = instance(&redis, &origin, SwrLayer::new());
    let fr = send(&b, get_headers("/vary", &[("accept-language", "fr")])).await;
    assert_eq!(text(&fr), "fr v2");
    assert_eq!(fr.info.status, CacheStatus::SharedTier);
    let en = send(&b, get_headers("/vary", &[("accept-language", "en")])).await;
    assert_eq!(text(&en), "en v1");
    assert_eq!(calls.get(), 2);
    let de = send(&b, get_headers("/vary", &[("accept-language", "de")])).await;
    assert_eq!(
        text(&de),
        "de v3",
        "a variant nobody stored goes to the origin"
    );
    let none = send(&b, get("/vary")).await;
    assert_eq!(text(&none), " v4");
    let c = instance(&redis, &origin, SwrLayer::new());
    for _ in 0..3 {
        for (lang, want) in [("en", "en v1"), ("fr", "fr v2")] {
            let whole = send(&c, get_headers("/vary", &[("accept-language", lang)])).await;
            assert_eq!(text(&whole), want);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_on_a_removes_every_vary_variant_on_b() {
    let redis = redis_or_skip!("purge vary variants");
    let (origin, _calls) = answering(|n, request| {
        let lang = header_text(request.headers(), "accept-language").unwrap_or_default();
        respond(
            200,
            format!("{lang} v{n}"),
            &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
        )
    });
    let a = instance(&redis, &origin, SwrLayer::new());
    let b = instance(&redis, &origin, SwrLayer::new());
    for lang in ["en", "fr"] {
        send(&b, get_headers("/pv", &[("accept-language", lang)])).await;
    }
    written(&b.1, 2).await;
    a.1.purge("/pv");
    for (lang, old) in [("en", "en v1"), ("fr", "fr v2")] {
        let deadline = Deadline::after(Duration::from_secs(10), "the purge to reach B");
        loop {
            let whole = send(&b, get_headers("/pv", &[("accept-language", lang)])).await;
            if text(&whole) != old {
                assert!(text(&whole).starts_with(lang));
                break;
            }
            deadline.tick().await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Never shared across the fleet
// ---------------------------------------------------------------------------------------------

/// A answers `request` (origin call 1), then B, a new instance, answers `request` too: it
/// must go to the origin (call 2), and nothing A saw is what B answers.
async fn assert_not_shared<F>(
    why: &str,
    origin_headers: &'static [(&'static str, &'static str)],
    make: F,
) where
    F: Fn() -> http::Request<ReqBody>,
{
    let Some(redis) = RedisServer::start(why) else {
        return;
    };
    let (origin, calls) = answering(move |n, _| respond(200, format!("user{n}"), origin_headers));
    let a = instance(&redis, &origin, SwrLayer::new());
    let first = send(&a, make()).await;
    assert_eq!(text(&first), "user1", "{why}");
    // Give a detached write every chance to land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        a.1.redis_stats().expect("tier").writes,
        0,
        "{why}: nothing written to Redis"
    );
    let b = instance(&redis, &origin, SwrLayer::new());
    let second = send(&b, make()).await;
    assert_ne!(second.info.status, CacheStatus::SharedTier, "{why}");
    assert_eq!(text(&second), "user2", "{why}: B asked the origin");
    assert_eq!(calls.get(), 2, "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_responses_are_not_shared_across_instances() {
    assert_not_shared(
        "private",
        &[("cache-control", "private, max-age=60")],
        || get("/private"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_store_responses_are_not_shared_across_instances() {
    assert_not_shared(
        "no-store",
        &[("cache-control", "no-store, max-age=60")],
        || get("/no-store"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_cookie_responses_are_not_shared_across_instances() {
    assert_not_shared(
        "set-cookie",
        &[
            ("cache-control", "max-age=60"),
            ("set-cookie", "session=secret"),
        ],
        || get("/set-cookie"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_to_authorization_requests_are_not_shared_across_instances() {
    assert_not_shared("authorization", &[("cache-control", "max-age=60")], || {
        get_headers("/auth", &[("authorization", "Bearer alice")])
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_to_cookie_requests_are_not_shared_across_instances() {
    assert_not_shared("cookie", &[("cache-control", "max-age=60")], || {
        get_headers("/cookie", &[("cookie", "session=alice")])
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_no_store_is_not_stored_in_redis() {
    assert_not_shared(
        "request no-store",
        &[("cache-control", "max-age=60")],
        || get_headers("/req-no-store", &[("cache-control", "no-store")]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorization_answer_to_alice_on_a_never_reaches_an_anonymous_request_on_b() {
    let redis = redis_or_skip!("auth then anonymous");
    let (origin, calls) = answering(|n, request| {
        let who = header_text(request.headers(), "authorization").unwrap_or("anonymous".into());
        respond(
            200,
            format!("{who} {n}"),
            &[("cache-control", "max-age=60")],
        )
    });
    let a = instance(&redis, &origin, SwrLayer::new());
    send(&a, get_headers("/me", &[("authorization", "Bearer alice")])).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = instance(&redis, &origin, SwrLayer::new());
    let anon = send(&b, get("/me")).await;
    assert_eq!(text(&anon), "anonymous 2");
    let bob = send(&b, get_headers("/me", &[("authorization", "Bearer bob")])).await;
    assert!(!text(&bob).contains("alice"), "{}", text(&bob));
    assert_eq!(calls.get(), 3);
}

/// README: "Responses kept with a request's `Authorization`/`Cookie` (to refresh with them)
/// never go to Redis", even when `public` lets this instance store and reuse them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_answer_to_an_authorization_request_is_reused_locally_but_not_written_to_redis() {
    let redis = redis_or_skip!("public auth kept local");
    let (origin, calls) = versioned("public, max-age=60");
    let a = instance(&redis, &origin, SwrLayer::new());
    let alice = get_headers("/pub", &[("authorization", "Bearer alice")]);
    assert_eq!(text(&send(&a, alice).await), "v1");
    let reused = send(&a, get_headers("/pub", &[("authorization", "Bearer bob")])).await;
    assert_eq!(
        (text(&reused), reused.info.status),
        ("v1", CacheStatus::Fresh),
        "public lets a shared cache reuse it (RFC 9111 §3.5)"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(a.1.redis_stats().expect("tier").writes, 0);
    let b = instance(&redis, &origin, SwrLayer::new());
    let other = send(&b, get_headers("/pub", &[("authorization", "Bearer bob")])).await;
    assert_ne!(other.info.status, CacheStatus::SharedTier);
    assert_eq!(text(&other), "v2");
    assert_eq!(calls.get(), 2);
}

// ---------------------------------------------------------------------------------------------
// only-if-cached
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_if_cached_on_b_never_asks_the_origin() {
    let redis = redis_or_skip!("only-if-cached on B");
    let (origin, calls) = versioned("max-age=60");
    let a = instance(&redis, &origin, SwrLayer::new());
    send(&a, get("/oic")).await;
    written(&a.1, 1).await;
    let b = instance(&redis, &origin, SwrLayer::new());
    let answer = send(
        &b,
        get_headers("/oic", &[("cache-control", "only-if-cached")]),
    )
    .await;
    // CHANGELOG (Fixed): answered from another instance's copy in Redis ("the shared tier is
    // part of the cache"), `hit; detail=shared`. (README's "Not built yet" still says memory
    // only, a 504 here: stale text.)
    assert_eq!((answer.status, text(&answer)), (StatusCode::OK, "v1"));
    assert_eq!(answer.info.status, CacheStatus::SharedTier);
    assert!(
        status_line(&answer).contains("detail=shared"),
        "{}",
        status_line(&answer)
    );
    assert_eq!(calls.get(), 1, "only-if-cached never reaches the origin");
    let unknown = send(
        &b,
        get_headers("/nobody", &[("cache-control", "only-if-cached")]),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(calls.get(), 1);
    // Once B holds it in memory, only-if-cached is answered from it.
    send(&b, get("/oic")).await;
    let cached = send(
        &b,
        get_headers("/oic", &[("cache-control", "only-if-cached")]),
    )
    .await;
    assert_eq!(cached.status, StatusCode::OK);
    assert_eq!(text(&cached), "v1");
    assert_eq!(calls.get(), 1);
}

// ---------------------------------------------------------------------------------------------
// Purges
// ---------------------------------------------------------------------------------------------

/// Three instances holding `/p` (v1) in memory.
async fn three_holding<S: OriginService>(
    redis: &RedisServer,
    origin: &S,
    uri: &str,
    want: &str,
) -> Vec<Instance<S>> {
    let fleet = instances(redis, origin, 3, SwrLayer::new);
    buses_up(&fleet).await;
    send(&fleet[0], get(uri)).await;
    written(&fleet[0].1, 1).await;
    for instance in &fleet {
        let whole = send(instance, get(uri)).await;
        assert_eq!(text(&whole), want);
    }
    fleet
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_on_a_reaches_b_and_c() {
    let redis = redis_or_skip!("purge reaches fleet");
    let (origin, calls) = versioned("max-age=300");
    let fleet = three_holding(&redis, &origin, "/p", "v1").await;
    assert_eq!(calls.get(), 1);
    fleet[0].1.purge("/p");
    for instance in &fleet[1..] {
        let whole = until_not(instance, "/p", "v1").await;
        // v2, or v3 when the second reload of FINDING one_reload_for_the_fleet_after_a_purge
        // happened.
        assert!(["v2", "v3"].contains(&text(&whole)), "{}", text(&whole));
    }
    let a = send(&fleet[0], get("/p")).await;
    assert_ne!(text(&a), "v1");
    assert!(calls.get() <= 4, "at most one reload per instance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_purge_on_a_makes_b_and_c_serve_stale_once_and_refresh() {
    let redis = redis_or_skip!("soft purge reaches fleet");
    let (origin, calls) = slow_answering(Duration::from_millis(200), |n, _| {
        reply_cc(format!("v{n}"), "max-age=300, stale-while-revalidate=300")
    });
    let fleet = three_holding(&redis, &origin, "/sp", "v1").await;
    fleet[0].1.soft_purge("/sp");
    let deadline = Deadline::after(Duration::from_secs(10), "soft purge on B");
    loop {
        let whole = send(&fleet[1], get("/sp")).await;
        if whole.info.status != CacheStatus::Fresh || text(&whole) != "v1" {
            assert!(
                text(&whole) == "v1" && whole.info.status == CacheStatus::Stale
                    || text(&whole) == "v2",
                "stale v1 at once, or the refreshed v2: {:?} {}",
                whole.info.status,
                text(&whole)
            );
            break;
        }
        deadline.tick().await;
    }
    for instance in &fleet {
        until_not(instance, "/sp", "v1").await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(calls.get(), 2, "one refresh for the fleet");
}

fn tagged(tags: &'static str) -> (impl OriginService, Calls) {
    answering(move |n, _| {
        respond(
            200,
            format!("v{n}"),
            &[
                ("cache-control", "max-age=300, stale-while-revalidate=300"),
                ("surrogate-key", tags),
            ],
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_purge_on_a_reaches_b_and_c() {
    let redis = redis_or_skip!("tag purge reaches fleet");
    let (origin, calls) = tagged("product-42 home");
    let fleet = three_holding(&redis, &origin, "/tag", "v1").await;
    assert_eq!(fleet[0].1.purge_tag(["product-42"]), 1);
    for instance in &fleet[1..] {
        let whole = until_not(instance, "/tag", "v1").await;
        // v2 (or v3: FINDING one_reload_for_the_fleet_after_a_purge).
        assert_ne!(text(&whole), "v1");
        assert!(
            whole.headers.get("surrogate-key").is_none(),
            "tags are not forwarded"
        );
    }
    assert!(calls.get() <= 4, "at most one reload per instance");
    // A fresh instance never reads the purged copy from Redis either.
    let d = instance(&redis, &origin, SwrLayer::new());
    assert_ne!(text(&send(&d, get("/tag")).await), "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_tag_purge_on_a_reaches_b() {
    let redis = redis_or_skip!("soft tag purge reaches fleet");
    let (origin, calls) = tagged("home");
    let fleet = three_holding(&redis, &origin, "/stag", "v1").await;
    assert_eq!(fleet[0].1.soft_purge_tag(["home"]), 1);
    let b = until_not(&fleet[1], "/stag", "v1").await;
    assert_eq!(text(&b), "v2");
    until_not(&fleet[2], "/stag", "v1").await;
    assert_eq!(calls.get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untouched_tag_purge_keeps_other_entries_on_b() {
    let redis = redis_or_skip!("tag purge scope");
    let (origin, calls) = tagged("home");
    let fleet = three_holding(&redis, &origin, "/keep", "v1").await;
    fleet[0].1.purge_tag(["elsewhere"]);
    fleet[0].1.purge("/unrelated");
    tokio::time::sleep(Duration::from_millis(500)).await;
    for instance in &fleet {
        let whole = send(instance, get("/keep")).await;
        assert_eq!(
            (text(&whole), whole.info.status),
            ("v1", CacheStatus::Fresh)
        );
    }
    assert_eq!(calls.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_purge_and_a_clear_on_a_reach_b() {
    let redis = redis_or_skip!("prefix purge and clear");
    let (origin, _calls) =
        answering(|n, request| reply_cc(format!("{} v{n}", request.uri().path()), "max-age=300"));
    let a = instance(&redis, &origin, SwrLayer::new());
    let b = instance(&redis, &origin, SwrLayer::new());
    let in_api = send(&b, get("/api/one")).await;
    let outside = send(&b, get("/other")).await;
    written(&b.1, 2).await;
    a.1.purge_prefix("/api/");
    until_not(&b, "/api/one", text(&in_api)).await;
    assert_eq!(
        text(&send(&b, get("/other")).await),
        text(&outside),
        "outside the prefix"
    );
    a.1.clear();
    until_not(&b, "/other", text(&outside)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_on_b_during_a_load_on_a_is_not_undone() {
    let redis = redis_or_skip!("purge during load");
    let gate = Gate::new();
    let (origin, calls) = origin({
        let gate = gate.clone();
        move |n, _| {
            let gate = gate.clone();
            async move {
                if n == 1 {
                    gate.wait().await;
                }
                Ok(reply_cc(format!("v{n}"), "max-age=300"))
            }
        }
    });
    let a = instance(&redis, &origin, SwrLayer::new());
    let b = instance(&redis, &origin, SwrLayer::new());
    let loading = tokio::spawn({
        let service = a.0.clone();
        async move { send_whole(&service, get("/race")).await }
    });
    eventually("A's load to start", || calls.get() == 1).await;
    b.1.purge("/race");
    tokio::time::sleep(Duration::from_millis(300)).await;
    gate.open();
    let loaded = loading.await.expect("no panic");
    assert_eq!(std::str::from_utf8(&loaded.body).unwrap(), "v1");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = instance(&redis, &origin, SwrLayer::new());
    let after = send(&c, get("/race")).await;
    assert_ne!(
        text(&after),
        "v1",
        "the load that began before the purge is not shared after it"
    );
    let on_b = send(&b, get("/race")).await;
    assert_ne!(text(&on_b), "v1");
}

// ---------------------------------------------------------------------------------------------
// Unsafe methods
// ---------------------------------------------------------------------------------------------

async fn unsafe_method_invalidates(method: Method) {
    let redis = redis_or_skip!("unsafe method invalidates");
    let (origin, calls) = answering(|n, request| {
        if request.method() == Method::GET {
            reply_cc(format!("v{n}"), "max-age=300")
        } else {
            reply("done")
        }
    });
    let fleet = three_holding(&redis, &origin, "/res", "v1").await;
    let done = send(&fleet[0], request(method.clone(), "/res")).await;
    assert_eq!(done.status, StatusCode::OK);
    assert_eq!(calls.get(), 2);
    for instance in &fleet {
        let whole = until_not(instance, "/res", "v1").await;
        // v3 (one reload for the fleet), or a later one: FINDING
        // one_reload_for_the_fleet_after_an_unsafe_method_invalidation (extra reloads).
        let body = text(&whole);
        let n: usize = body
            .strip_prefix('v')
            .and_then(|n| n.parse().ok())
            .expect("v<n>");
        assert!(
            n >= 3,
            "{method}: answered after the write, never the old {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_on_a_invalidates_the_url_for_b_and_c() {
    unsafe_method_invalidates(Method::POST).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_on_a_invalidates_the_url_for_b_and_c() {
    unsafe_method_invalidates(Method::PUT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_on_a_invalidates_the_url_for_b_and_c() {
    unsafe_method_invalidates(Method::DELETE).await;
}

/// README: "N instances make one origin call per key per expiry"; a miss "whose read came
/// before another instance's whole load (and whose lock request after it) is told the value is
/// written and reads it". After A invalidates a URL that B and C hold, B and C each miss it:
/// one of them reloads, and the other takes that reload from Redis. Eight rounds, since the
/// second reload (when it happens) happens in about one round of four.
async fn one_reload_after_invalidation(why: &str, post: bool, delay: Duration) {
    let redis = redis_or_skip!(why);
    let (origin, calls) = slow_answering(delay, |n, request| {
        if request.method() == Method::GET {
            reply_cc(format!("{} v{n}", request.uri().path()), "max-age=300")
        } else {
            reply("done")
        }
    });
    let fleet = instances(&redis, &origin, 3, SwrLayer::new);
    for round in 0..8 {
        let uri = format!("/inv-{round}");
        let before = calls.get();
        send(&fleet[0], get(&uri)).await;
        written(&fleet[0].1, round + 1).await;
        for instance in &fleet[1..] {
            send(instance, get(&uri)).await;
        }
        assert_eq!(calls.get(), before + 1);
        let invalidations = if post {
            send(&fleet[0], request(Method::POST, &uri)).await;
            2
        } else {
            fleet[0].1.purge(&uri);
            1
        };
        let old = format!("{uri} v{}", before + 1);
        let mut answers = Vec::new();
        for instance in &fleet[1..] {
            answers.push(text(&until_not(instance, &uri, &old).await).to_owned());
        }
        assert_eq!(
            calls.get(),
            before + invalidations + 1,
            "round {round}: ONE reload for B and C; they answered {answers:?}; B {:?}; C {:?}",
            fleet[1].1.redis_stats(),
            fleet[2].1.redis_stats()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_reload_for_the_fleet_after_an_unsafe_method_invalidation() {
    one_reload_after_invalidation("one reload after POST", true, Duration::ZERO).await;
}

/// The same with an origin taking 300 ms: the reload ends well past the purge (and past the
/// 100 ms margin CHANGELOG gives purges recorded by Redis's clock), so the margin is not why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_reload_for_the_fleet_after_a_purge_with_a_slower_origin() {
    one_reload_after_invalidation(
        "one reload after purge, slow origin",
        false,
        Duration::from_millis(300),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_reload_for_the_fleet_after_a_purge() {
    one_reload_after_invalidation("one reload after purge", false, Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_answered_with_a_location_invalidates_that_url_for_b() {
    let redis = redis_or_skip!("location invalidation");
    let (origin, _calls) = answering(|n, request| {
        if request.method() == Method::GET {
            reply_cc(format!("v{n}"), "max-age=300")
        } else {
            respond(201, "created", &[("location", "/items/7")])
        }
    });
    let fleet = three_holding(&redis, &origin, "/items/7", "v1").await;
    send(&fleet[0], request(Method::POST, "/items")).await;
    until_not(&fleet[1], "/items/7", "v1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_post_on_a_does_not_invalidate_b() {
    let redis = redis_or_skip!("failed post keeps");
    let (origin, calls) = answering(|n, request| {
        if request.method() == Method::GET {
            reply_cc(format!("v{n}"), "max-age=300")
        } else {
            reply_status(StatusCode::INTERNAL_SERVER_ERROR, "boom")
        }
    });
    let fleet = three_holding(&redis, &origin, "/keep-post", "v1").await;
    let failed = send(&fleet[0], request(Method::POST, "/keep-post")).await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for instance in &fleet {
        let whole = send(instance, get("/keep-post")).await;
        assert_eq!(
            text(&whole),
            "v1",
            "RFC 9111 §4.4: only a non-error status invalidates"
        );
    }
    assert_eq!(calls.get(), 2);
}

// ---------------------------------------------------------------------------------------------
// Coalescing across the fleet
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_0_with_a_stale_window_does_not_make_b_wait_the_lock_timeout() {
    let redis = redis_or_skip!("max-age=0 waiter");
    let (origin, calls) = slow_answering(Duration::from_millis(800), |n, _| {
        reply_cc(format!("v{n}"), "max-age=0, stale-while-revalidate=60")
    });
    let layer = || SwrLayer::new().lock_timeout(Duration::from_secs(8));
    let a = instance(&redis, &origin, layer());
    let b = instance(&redis, &origin, layer());
    let loading = tokio::spawn({
        let service = a.0.clone();
        async move { send_whole(&service, get("/zero")).await }
    });
    eventually("A's load", || calls.get() == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let waited = send(&b, get("/zero")).await;
    let took = started.elapsed();
    assert_eq!(text(&waited), "v1", "B takes A's value");
    assert!(
        took < Duration::from_secs(6),
        "B did not wait out the 8 s lock timeout: {took:?}"
    );
    let loaded = loading.await.expect("no panic");
    assert_eq!(std::str::from_utf8(&loaded.body).unwrap(), "v1");
    assert_eq!(calls.get(), 1, "B made no origin call of its own");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hundred_cold_requests_over_three_instances_make_one_origin_call() {
    let redis = redis_or_skip!("cold stampede");
    let (origin, calls) = slow_answering(Duration::from_millis(400), |n, _| {
        reply_cc(format!("v{n}"), "max-age=60")
    });
    let fleet = Arc::new(instances(&redis, &origin, 3, SwrLayer::new));
    let mut tasks = Vec::new();
    for i in 0..600 {
        let fleet = Arc::clone(&fleet);
        tasks.push(tokio::spawn(async move {
            send(&fleet[i % 3], get("/cold")).await
        }));
    }
    for task in tasks {
        let whole = task.await.expect("no panic");
        assert_eq!(text(&whole), "v1");
    }
    assert_eq!(calls.get(), 1, "one origin call for the fleet");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hundred_requests_on_an_expired_key_over_three_instances_make_one_refresh() {
    let redis = redis_or_skip!("expired stampede");
    let (origin, calls) = slow_answering(Duration::from_millis(400), |n, _| {
        reply_cc(format!("v{n}"), first_short(n))
    });
    let fleet = Arc::new(three_holding(&redis, &origin, "/expired", "v1").await);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut tasks = Vec::new();
    for i in 0..600 {
        let fleet = Arc::clone(&fleet);
        tasks.push(tokio::spawn(async move {
            send(&fleet[i % 3], get("/expired")).await
        }));
    }
    for task in tasks {
        let whole = task.await.expect("no panic");
        assert!(["v1", "v2"].contains(&text(&whole)), "{}", text(&whole));
    }
    eventually("the refresh", || calls.get() >= 2).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(calls.get(), 2, "one refresh for the fleet");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hundred_requests_past_the_stale_window_over_three_instances_make_one_origin_call() {
    let redis = redis_or_skip!("past window stampede");
    let (origin, calls) = slow_answering(Duration::from_millis(400), |n, _| {
        reply_cc(format!("v{n}"), "max-age=1")
    });
    let fleet = Arc::new(
        (0..3)
            .map(|_| instance(&redis, &origin, SwrLayer::shared_cache()))
            .collect::<Vec<_>>(),
    );
    send(&fleet[0], get("/past")).await;
    written(&fleet[0].1, 1).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut tasks = Vec::new();
    for i in 0..600 {
        let fleet = Arc::clone(&fleet);
        tasks.push(tokio::spawn(async move {
            send(&fleet[i % 3], get("/past")).await
        }));
    }
    for task in tasks {
        let whole = task.await.expect("no panic");
        assert_eq!(text(&whole), "v2", "nothing stale past its window");
    }
    assert_eq!(calls.get(), 2, "one reload for the fleet");
}

// ---------------------------------------------------------------------------------------------
// Redis failing
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_never_stops_the_fleet_and_sharing_resumes() {
    let redis = redis_or_skip!("frozen redis");
    let (origin, calls) = versioned("max-age=300");
    let fleet = three_holding(&redis, &origin, "/held", "v1").await;
    redis.signal("-STOP");
    for (i, instance) in fleet.iter().enumerate() {
        let held = send(instance, get("/held")).await;
        assert_eq!(
            (text(&held), held.info.status),
            ("v1", CacheStatus::Fresh),
            "memory hit"
        );
        let uri = format!("/frozen-{i}");
        let started = std::time::Instant::now();
        let miss = send(instance, get(&uri)).await;
        assert_eq!(miss.status, StatusCode::OK);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(calls.get(), 4);
    redis.signal("-CONT");
    // Sharing resumes by itself (the breaker's cooldown is 1 s).
    let deadline = Deadline::after(Duration::from_secs(15), "sharing to resume");
    let mut n = 0;
    loop {
        n += 1;
        let uri = format!("/after-{n}");
        send(&fleet[0], get(&uri)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let other = send(&fleet[1], get(&uri)).await;
        if other.info.status == CacheStatus::SharedTier {
            break;
        }
        deadline.tick().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_redis_never_stops_the_fleet_and_sharing_resumes() {
    let mut redis = redis_or_skip!("stopped redis");
    let (origin, _calls) = versioned("max-age=300");
    let fleet = three_holding(&redis, &origin, "/held", "v1").await;
    redis.stop();
    for round in 0..3 {
        for (i, instance) in fleet.iter().enumerate() {
            let held = send(instance, get("/held")).await;
            assert_eq!(text(&held), "v1");
            let miss = send(instance, get(&format!("/down-{round}-{i}"))).await;
            assert_eq!(miss.status, StatusCode::OK);
            assert!(text(&miss).starts_with('v'));
        }
    }
    redis.launch();
    let deadline = Deadline::after(Duration::from_secs(15), "sharing to resume");
    let mut n = 0;
    loop {
        n += 1;
        let uri = format!("/back-{n}");
        send(&fleet[2], get(&uri)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if send(&fleet[0], get(&uri)).await.info.status == CacheStatus::SharedTier {
            break;
        }
        deadline.tick().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_while_redis_is_frozen_reaches_b_once_redis_is_back() {
    let redis = redis_or_skip!("purge while frozen");
    let (origin, _calls) = versioned("max-age=300");
    let fleet = three_holding(&redis, &origin, "/later", "v1").await;
    redis.signal("-STOP");
    fleet[0].1.purge("/later");
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.signal("-CONT");
    let b = until_not(&fleet[1], "/later", "v1").await;
    assert_ne!(text(&b), "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_mid_run_keeps_every_instance_answering_correctly() {
    let redis = redis_or_skip!("flushall");
    let (origin, calls) =
        answering(|n, request| reply_cc(format!("{} v{n}", request.uri().path()), "max-age=300"));
    let fleet = three_holding(&redis, &origin, "/f", "/f v1").await;
    let mut connection = redis.client().get_connection().expect("connect");
    let _: () = redis::cmd("FLUSHALL")
        .query(&mut connection)
        .expect("FLUSHALL");
    for instance in &fleet {
        assert_eq!(
            text(&send(instance, get("/f")).await),
            "/f v1",
            "memory still answers"
        );
    }
    let c = instance(&redis, &origin, SwrLayer::new());
    let fresh = send(&c, get("/f")).await;
    assert_eq!(text(&fresh), "/f v2", "nothing in Redis: the origin");
    assert_eq!(calls.get(), 2);
    written(&c.1, 1).await;
    let d = instance(&redis, &origin, SwrLayer::new());
    let shared = send(&d, get("/f")).await;
    assert_eq!(
        (text(&shared), shared.info.status),
        ("/f v2", CacheStatus::SharedTier)
    );
    // Purges still reach everyone.
    fleet[0].1.purge("/f");
    for instance in &fleet[1..] {
        until_not(instance, "/f", "/f v1").await;
    }
    until_not(&d, "/f", "/f v2").await;
}

// ---------------------------------------------------------------------------------------------
// HEAD, Range, hosts
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_and_range_on_b_are_answered_from_a_stored_get() {
    let redis = redis_or_skip!("head and range");
    let (origin, calls) = answering(|_, _| reply_cc("0123456789", "max-age=60"));
    let a = instance(&redis, &origin, SwrLayer::new());
    send(&a, get("/bytes")).await;
    written(&a.1, 1).await;
    let b = instance(&redis, &origin, SwrLayer::new());
    let range = send(&b, get_headers("/bytes", &[("range", "bytes=2-4")])).await;
    assert_eq!(range.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&range.body[..], b"234");
    assert_eq!(
        header_text(&range.headers, "content-range").as_deref(),
        Some("bytes 2-4/10")
    );
    let head = send(&b, request(Method::HEAD, "/bytes")).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(calls.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_of_different_hosts_are_never_crossed_across_instances() {
    let redis = redis_or_skip!("hosts");
    let (origin, calls) = answering(|_, request| {
        let host = header_text(request.headers(), "host").unwrap_or_default();
        reply_cc(format!("site {host}"), "max-age=60")
    });
    let a = instance(&redis, &origin, SwrLayer::new());
    send(&a, get_headers("/", &[("host", "a.example")])).await;
    written(&a.1, 1).await;
    let b = instance(&redis, &origin, SwrLayer::new());
    let other = send(&b, get_headers("/", &[("host", "b.example")])).await;
    assert_eq!(text(&other), "site b.example");
    let same = send(&b, get_headers("/", &[("host", "a.example")])).await;
    assert_eq!(
        (text(&same), same.info.status),
        ("site a.example", CacheStatus::SharedTier)
    );
    assert_eq!(calls.get(), 2);
}

// ---------------------------------------------------------------------------------------------
// More freshness rules across instances
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_cache_copy_from_redis_is_revalidated_by_b_before_reuse() {
    let redis = redis_or_skip!("no-cache across instances");
    let seen = Seen::default();
    let (origin, calls) = answering({
        let seen = seen.clone();
        move |n, request| {
            seen.record(request);
            if request.headers().get("if-none-match").is_some() {
                respond(
                    304,
                    "",
                    &[("cache-control", "no-cache"), ("etag", "\"nc\"")],
                )
            } else {
                respond(
                    200,
                    format!("v{n}"),
                    &[("cache-control", "no-cache"), ("etag", "\"nc\"")],
                )
            }
        }
    });
    let a = instance(&redis, &origin, SwrLayer::new());
    assert_eq!(text(&send(&a, get("/nc")).await), "v1");
    written(&a.1, 1).await;
    let b = instance(&redis, &origin, SwrLayer::new());
    let answer = send(&b, get("/nc")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(text(&answer), "v1", "the stored body, revalidated");
    assert_eq!(
        calls.get(),
        2,
        "no-cache: B asked the origin before reusing it"
    );
    assert_eq!(
        header_text(&seen.headers(2), "if-none-match").as_deref(),
        Some("\"nc\""),
        "B revalidated A's copy (RFC 9111 §4.3.1) instead of fetching it whole"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s_maxage_governs_the_shared_copy() {
    let redis = redis_or_skip!("s-maxage");
    let (origin, calls) = versioned("max-age=1, s-maxage=300");
    let a = instance(&redis, &origin, SwrLayer::new());
    send(&a, get("/smax")).await;
    written(&a.1, 1).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let b = instance(&redis, &origin, SwrLayer::new());
    let shared = send(&b, get("/smax")).await;
    assert_eq!(shared.info.status, CacheStatus::SharedTier);
    assert!(ttl_of(&shared) > 250, "{}", status_line(&shared));
    assert_eq!(calls.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expires_minus_date_sets_the_lifetime_b_reads() {
    let redis = redis_or_skip!("expires");
    let (origin, calls) = answering(|n, _| {
        let now = std::time::SystemTime::now();
        respond(
            200,
            format!("v{n}"),
            &[
                ("date", &http_date(now)),
                ("expires", &http_date(now + Duration::from_secs(200))),
            ],
        )
    });
    let a = instance(&redis, &origin, SwrLayer::shared_cache());
    send(&a, get("/expires")).await;
    written(&a.1, 1).await;
    let b = instance(&redis, &origin, SwrLayer::shared_cache());
    let shared = send(&b, get("/expires")).await;
    assert_eq!(shared.info.status, CacheStatus::SharedTier);
    let ttl = ttl_of(&shared);
    assert!((150..=200).contains(&ttl), "{}", status_line(&shared));
    assert_eq!(calls.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_origin_is_answered_from_a_copy_in_redis_in_the_shared_preset() {
    let redis = redis_or_skip!("disconnected from redis copy");
    let (origin, calls) = origin(|n, _| async move {
        if n == 1 {
            Ok(reply_cc("v1", "max-age=1"))
        } else {
            Err::<Reply, BoxError>("connection refused".into())
        }
    });
    let a = instance(&redis, &origin, SwrLayer::shared_cache());
    send(&a, get("/gone")).await;
    written(&a.1, 1).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let b = instance(&redis, &origin, SwrLayer::shared_cache());
    let answer = send(&b, get("/gone")).await;
    assert_eq!((answer.status, text(&answer)), (StatusCode::OK, "v1"));
    assert_eq!(answer.info.status, CacheStatus::StaleIfError);
    assert!(
        status_line(&answer).contains("fwd=stale"),
        "{}",
        status_line(&answer)
    );
    assert!(calls.get() >= 2);
}

// ---------------------------------------------------------------------------------------------
// More purges
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_everywhere_on_b_finds_a_copy_only_a_stored() {
    let redis = redis_or_skip!("purge_everywhere");
    let (origin, _calls) = versioned("max-age=300");
    let a = instance(&redis, &origin, SwrLayer::new());
    let host = [("host", "shop.example")];
    send(&a, get_headers("/pe", &host)).await;
    written(&a.1, 1).await;
    let b = instance(&redis, &origin, SwrLayer::new());
    assert!(
        b.1.purge_everywhere("shop.example", "/pe", false).await,
        "the tier's copy counts as purged"
    );
    assert!(
        !b.1.purge_everywhere("shop.example", "/never", false).await,
        "nothing anywhere"
    );
    let deadline = Deadline::after(Duration::from_secs(10), "A to drop /pe");
    loop {
        if text(&send(&a, get_headers("/pe", &host)).await) != "v1" {
            break;
        }
        deadline.tick().await;
    }
    let c = instance(&redis, &origin, SwrLayer::new());
    assert_ne!(text(&send(&c, get_headers("/pe", &host)).await), "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_purge_holds_for_an_instance_started_after_it() {
    let redis = redis_or_skip!("prefix purge, later instance");
    let (origin, _calls) = versioned("max-age=300");
    let a = instance(&redis, &origin, SwrLayer::new());
    send(&a, get("/docs/a")).await;
    written(&a.1, 1).await;
    a.1.purge_prefix("/docs/");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = instance(&redis, &origin, SwrLayer::new());
    let answer = send(&later, get("/docs/a")).await;
    assert_ne!(
        text(&answer),
        "v1",
        "a copy written before the purge is never read again"
    );
    assert_ne!(answer.info.status, CacheStatus::SharedTier);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_prefix_purge_on_a_reaches_b() {
    let redis = redis_or_skip!("soft prefix purge");
    let (origin, calls) = slow_answering(Duration::from_millis(200), |n, _| {
        reply_cc(format!("v{n}"), "max-age=300, stale-while-revalidate=300")
    });
    let fleet = three_holding(&redis, &origin, "/cat/1", "v1").await;
    fleet[0].1.soft_purge_prefix("/cat/");
    let b = until_not(&fleet[1], "/cat/1", "v1").await;
    assert_eq!(text(&b), "v2");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(calls.get(), 2, "one refresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_purge_holds_for_an_instance_started_after_it() {
    let redis = redis_or_skip!("tag purge, later instance");
    let (origin, _calls) = tagged("late");
    let a = instance(&redis, &origin, SwrLayer::new());
    send(&a, get("/late")).await;
    written(&a.1, 1).await;
    assert_eq!(a.1.purge_tag(["late"]), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = instance(&redis, &origin, SwrLayer::new());
    assert_ne!(text(&send(&later, get("/late")).await), "v1");
}
