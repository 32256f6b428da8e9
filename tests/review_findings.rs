//! White-box review findings (a helper read `src/` for panics, hangs, leaks, crossed answers
//! and wrong accounting): each test drives the public API as an application would. Every
//! finding failed before its fix; all are fixed and run as ordinary tests.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::time::advance;
use tower::{Layer, ServiceExt};
use tower_swr::engine::{Freshness, Loaded, Status, SwrCache};
use tower_swr::{CacheStatus, SwrLayer};

type Cache = SwrCache<String, u64>;

/// Runs `fut` on its own task and says whether it panicked.
async fn panics<F>(fut: F) -> bool
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(fut).await.is_err()
}

// ------------------------------------------------------------------ huge configured durations

#[tokio::test(start_paused = true)]
async fn engine_ttl_jitter_with_a_forever_ttl_does_not_panic() {
    let cache: Cache = SwrCache::builder().ttl_jitter(0.1).build();
    let mut panicked = 0;
    for i in 0..20 {
        let cache = cache.clone();
        panicked += usize::from(
            panics(async move {
                cache
                    .get_or_load(format!("k{i}"), || async {
                        Ok::<_, String>(Loaded::new(7, Freshness::new(Duration::MAX)))
                    })
                    .await
                    .map(|l| l.value)
            })
            .await,
        );
    }
    assert_eq!(panicked, 0, "{panicked} of 20 loads panicked");
}

#[tokio::test(start_paused = true)]
async fn layer_ttl_jitter_with_a_forever_ttl_does_not_panic() {
    let (o, _calls) = origin(|_, _| async { Ok(reply("v")) });
    let service = SwrLayer::new().ttl(Duration::MAX).ttl_jitter(0.2).layer(o);
    let mut panicked = 0;
    for i in 0..20 {
        let service = service.clone();
        panicked += usize::from(
            panics(async move { service.oneshot(get(&format!("/p{i}"))).await.map(|_| ()) }).await,
        );
    }
    assert_eq!(panicked, 0, "{panicked} of 20 requests panicked");
}

#[tokio::test(start_paused = true)]
async fn engine_forever_lock_timeout_coalesces_without_panicking() {
    let cache: Cache = SwrCache::builder().lock_timeout(Duration::MAX).build();
    let calls = Arc::new(AtomicUsize::new(0));
    let load = |calls: Arc<AtomicUsize>| {
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(secs(1)).await;
            Ok::<_, String>(Loaded::new(1, Freshness::new(secs(60))))
        }
    };
    let first = tokio::spawn({
        let (cache, calls) = (cache.clone(), Arc::clone(&calls));
        async move {
            cache
                .get_or_load("k".into(), load(calls))
                .await
                .map(|l| l.value)
        }
    });
    tokio::task::yield_now().await;
    let second = tokio::spawn({
        let (cache, calls) = (cache.clone(), Arc::clone(&calls));
        async move {
            cache
                .get_or_load("k".into(), load(calls))
                .await
                .map(|l| l.value)
        }
    });
    let (first, second) = (first.await, second.await);
    assert!(first.is_ok(), "the leader panicked");
    assert!(second.is_ok(), "the waiter panicked: {second:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn engine_forever_remembered_failure_does_not_panic() {
    let cache: Cache = SwrCache::builder().remember_failures(Duration::MAX).build();
    let failed = panics({
        let cache = cache.clone();
        async move {
            cache
                .get_or_load("k".into(), || async {
                    Err::<Loaded<u64>, _>("down".to_string())
                })
                .await
                .map(|l| l.value)
        }
    })
    .await;
    assert!(!failed, "a failed load panicked");
}

#[tokio::test(start_paused = true)]
async fn engine_forever_breaker_cooldown_does_not_panic() {
    let cache: Cache = SwrCache::builder()
        .circuit_breaker(1, Duration::MAX)
        .build();
    let fresh = Freshness::new(secs(1)).with_stale_while_revalidate(secs(600));
    cache.insert("k".to_string(), 1, fresh);
    advance(secs(2)).await;
    let stale = cache
        .get_or_load("k".into(), || async {
            Err::<Loaded<u64>, _>("down".to_string())
        })
        .await
        .unwrap();
    assert_eq!(stale.status, Status::Stale);
    settle().await;
    assert_eq!(cache.stats().refreshes_failed, 1);
    // The failure opened the breaker (threshold 1, cooldown "forever"): no other key's refresh
    // may start now.
    cache.insert("other".to_string(), 2, fresh);
    advance(secs(2)).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let stale = cache
        .get_or_load("other".into(), move || async move {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(Loaded::new(3, Freshness::new(secs(60))))
        })
        .await
        .unwrap();
    assert_eq!(stale.status, Status::Stale);
    settle().await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "the breaker did not open: its `now + cooldown` panicked inside the refresh task"
    );
}

// ------------------------------------------------------------------ a stalled streaming fill

#[tokio::test(start_paused = true)]
async fn a_stalled_fill_without_readers_is_given_up() -> TestResult {
    use http_body_util::BodyExt;
    let (o, calls, feeds) = fed_origin("max-age=60", None);
    let layer = SwrLayer::new();
    let handle = layer.handle();
    let service = layer.layer(o);

    let mut body = service.clone().oneshot(get("/tail")).await?.into_body();
    feeds.send(1, "first chunk, then the origin hangs").await;
    let frame = tokio::time::timeout(secs(1), body.frame()).await?;
    assert!(frame.is_some(), "the first chunk reached the client");
    // The only client goes away; the origin never sends another byte (nor closes).
    drop(body);
    settle().await;
    // A day later, with refresh_timeout (30 s), lock_timeout (5 s) and every window long past.
    for _ in 0..24 {
        advance(secs(3600)).await;
        settle().await;
    }
    assert_eq!(calls.get(), 1);
    let stats = layer.stats();
    assert!(
        !feeds.is_read(1) && stats.loads_running == 0,
        "after a day the stalled fill is still reading the origin's body (loads_running = {})",
        stats.loads_running
    );
    assert!(
        handle.shutdown(secs(1)).await,
        "shutdown waits on the stalled fill"
    );
    Ok(())
}

// ------------------------------------------------------------------ byte budget vs real memory

/// Counts the bytes allocated and not yet freed by the current thread (the paused-clock tests
/// run on one thread), so a test can see what the cache really keeps alive.
struct Counting;

thread_local! {
    static LIVE: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
}

unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let _ = LIVE.try_with(|live| live.set(live.get() + layout.size() as isize));
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        let _ = LIVE.try_with(|live| live.set(live.get() - layout.size() as isize));
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live_bytes() -> isize {
    LIVE.with(|live| live.get())
}

#[tokio::test(start_paused = true)]
async fn stored_bodies_do_not_pin_more_memory_than_the_budget() -> TestResult {
    const CAPACITY: u64 = 1 << 20;
    // Like a body read by a hyper client: each response's bytes are a slice of the larger
    // buffer the connection read into.
    let (o, _calls) = origin(|_, _| async {
        let read_buffer = bytes::Bytes::from(vec![b'x'; 256 << 10]);
        Ok(reply_cc(read_buffer.slice(..1024), "max-age=600"))
    });
    let layer = SwrLayer::new().capacity_bytes(CAPACITY);
    let service = layer.layer(o);
    // Warm up the runtime and the layer's own tables.
    let _ = body(service.clone().oneshot(get("/warm")).await?).await?;
    let before = live_bytes();
    for i in 0..200 {
        let response = service.clone().oneshot(get(&format!("/item/{i}"))).await?;
        assert_eq!(body(response).await?.len(), 1024);
    }
    let kept = live_bytes() - before;
    let stats = layer.stats();
    assert!(stats.stores >= 200, "{stats:?}");
    assert!(
        kept < 4 * CAPACITY as isize,
        "a cache of {CAPACITY} bytes keeps {kept} bytes alive ({} MiB)",
        kept >> 20
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn an_unlimited_max_body_bytes_does_not_panic() {
    let (o, _calls) = origin(|_, _| async { Ok(reply("v")) });
    let service = SwrLayer::new().max_body_bytes(usize::MAX).layer(o);
    let panicked = panics(async move { service.oneshot(get("/")).await.map(|_| ()) }).await;
    assert!(!panicked, "the first request panicked");
}

#[tokio::test(start_paused = true)]
async fn a_huge_origin_timeout_does_not_panic() -> TestResult {
    let (o, _calls) = origin(|_, _| async { Ok(reply_cc("v", "max-age=1, stale-if-error=600")) });
    let service = SwrLayer::new().origin_timeout(Duration::MAX).layer(o);
    let _ = body(service.clone().oneshot(get("/")).await?).await?;
    // Past the (default) stale-while-revalidate window, inside stale-if-error: a miss that
    // the stored response could answer should the origin fail or be slow.
    advance(secs(200)).await;
    let panicked = panics(async move { service.oneshot(get("/")).await.map(|_| ()) }).await;
    assert!(!panicked, "the miss past the fresh lifetime panicked");
    Ok(())
}

// ------------------------------------------------------------------ Vary variants and invalidation

#[tokio::test(start_paused = true)]
async fn an_unsafe_request_invalidates_variants_stored_before_vary_flapped() -> TestResult {
    use http::{header, Method, StatusCode};
    let (o, calls) = origin(|n, request: http::Request<ReqBody>| async move {
        if request.method() == Method::POST {
            return Ok(reply_status(StatusCode::NO_CONTENT, ""));
        }
        let lang = request
            .headers()
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        let body = format!("{lang} v{n}");
        Ok(match n {
            // One answer (an error page, a deploy in between...) that does not vary.
            2 => reply_cc(
                body,
                "max-age=10, stale-while-revalidate=0, stale-if-error=0",
            ),
            _ => with_header(
                reply_cc(body, "max-age=3600"),
                header::VARY,
                "accept-language",
            ),
        })
    });
    let service = SwrLayer::new().layer(o);
    let lang = |l: &str| get_with("/page", header::ACCEPT_LANGUAGE, l);
    let text = |r| async move {
        body(r)
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };

    assert_eq!(
        text(service.clone().oneshot(lang("en")).await?).await?,
        "en v1"
    );
    // The resource stops varying for one answer, then varies again.
    assert_eq!(
        text(service.clone().oneshot(lang("fr")).await?).await?,
        "fr v2"
    );
    advance(secs(11)).await;
    assert_eq!(
        text(service.clone().oneshot(lang("de")).await?).await?,
        "de v3"
    );
    assert_eq!(calls.get(), 3);

    // A successful POST invalidates every stored response of the URL (RFC 9111 §4.4).
    let post = service
        .clone()
        .oneshot(request(Method::POST, "/page"))
        .await?;
    assert_eq!(post.status(), StatusCode::NO_CONTENT);
    assert_eq!(calls.get(), 4);

    assert_eq!(
        text(service.clone().oneshot(lang("de")).await?).await?,
        "de v5"
    );
    let en = service.clone().oneshot(lang("en")).await?;
    let status = info(&en).status;
    let en = text(en).await?;
    assert_eq!(
        (en.as_str(), calls.get()),
        ("en v6", 6),
        "the English page stored before the POST was served after it ({status:?})"
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn expired_remembered_failures_are_freed_by_the_next_load() -> TestResult {
    use http::StatusCode;
    const CAPACITY: u64 = 1 << 20;
    // An endpoint failing with a 60 KiB error page; a client (or a crawler) asks for many
    // distinct query strings.
    let (o, _calls) = origin(|_, _| async {
        Ok(reply_status(
            StatusCode::INTERNAL_SERVER_ERROR,
            vec![b'e'; 60 << 10],
        ))
    });
    let layer = SwrLayer::new().capacity_bytes(CAPACITY);
    let service = layer.layer(o);
    let _ = body(service.clone().oneshot(get("/warm")).await?).await?;
    advance(secs(10)).await;
    let before = live_bytes();
    for i in 0..1000 {
        let response = service
            .clone()
            .oneshot(get(&format!("/search?q={i}")))
            .await?;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let _ = body(response).await?;
    }
    // Every failure was remembered for 1 s (`remember_failures`): long over. The next load's
    // end sweeps the expired ones.
    advance(secs(60)).await;
    let _ = body(service.clone().oneshot(get("/after")).await?).await?;
    settle().await;
    let kept = live_bytes() - before;
    assert!(
        kept < 4 * CAPACITY as isize,
        "a cache of {CAPACITY} bytes keeps {kept} bytes ({} MiB) of expired failures alive",
        kept >> 20
    );
    Ok(())
}

// ------------------------------------------------------------------ checked and sound

/// Header-driven lifetimes are capped (delta-seconds at 2^31, `Expires` within year 9999), so
/// the jitter's multiplication cannot overflow from what an origin sends: only a configured
/// `Duration::MAX` reaches it (the findings above).
#[tokio::test(start_paused = true)]
async fn huge_origin_lifetimes_with_ttl_jitter_do_not_panic() -> TestResult {
    use http::header;
    let (o, _calls) = origin(|n, _| async move {
        Ok(match n % 3 {
            0 => reply_cc("a", "max-age=99999999999999999999999999, s-maxage=18446744073709551615"),
            1 => with_header(reply("b"), header::EXPIRES, "Fri, 31 Dec 9999 23:59:59 GMT"),
            _ => reply_cc("c", "max-age=18446744073709551615, stale-while-revalidate=18446744073709551615, stale-if-error=18446744073709551615"),
        })
    });
    let service = SwrLayer::new().ttl_jitter(1.0).layer(o);
    for i in 0..30 {
        let service = service.clone();
        let panicked =
            panics(async move { service.oneshot(get(&format!("/{i}"))).await.map(|_| ()) }).await;
        assert!(!panicked, "request {i} panicked");
    }
    let hit = service.clone().oneshot(get("/0")).await?;
    assert_eq!(info(&hit).status, CacheStatus::Fresh);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn layer_forever_lock_timeout_answers_a_miss() {
    let (o, _calls) = origin(|_, _| async { Ok(reply("v")) });
    let service = SwrLayer::new().lock_timeout(Duration::MAX).layer(o);
    let panicked = panics(async move { service.oneshot(get("/")).await.map(|_| ()) }).await;
    assert!(!panicked, "a single miss panicked");
}

// ------------------------------------------------------------------ the leader's own answer

/// RFC 9111 §5.2.2.7 / §5.2.2.4: `private="Set-Cookie"` (or `no-cache="Set-Cookie"`) lets a
/// shared cache store the response without the field; the client the response was made for
/// must still get its own cookie (a login that sets a session cookie on a cacheable page).
#[tokio::test(start_paused = true)]
async fn the_loading_client_keeps_its_own_qualified_private_fields() -> TestResult {
    use http::header;
    for cc in [
        "max-age=600, private=\"Set-Cookie\"",
        "max-age=600, no-cache=\"Set-Cookie\"",
        "max-age=600, private=\"X-User\"",
    ] {
        let (o, _calls) = origin(move |n, _| async move {
            let mut response = reply_cc(format!("page {n}"), cc);
            if cc.contains("Set-Cookie") {
                response = with_header(response, header::SET_COOKIE, &format!("sid=u{n}"));
            }
            Ok(with_header(
                response,
                header::HeaderName::from_static("x-user"),
                &format!("u{n}"),
            ))
        });
        for layer in [SwrLayer::new(), SwrLayer::shared_cache()] {
            let service = layer.layer(o.clone());
            let first = service.clone().oneshot(get("/login")).await?;
            let status = info(&first).status;
            let cookie = header_value(&first, header::SET_COOKIE);
            let user = header_value(&first, "x-user");
            let _ = body(first).await?;
            let named_field = if cc.contains("X-User") {
                user
            } else {
                cookie.clone()
            };
            assert!(
                named_field.is_some(),
                "{cc}: the client whose request loaded the page lost the field ({status:?}; set-cookie {cookie:?})"
            );
            let second = service.clone().oneshot(get("/login")).await?;
            let (cookie, user) = (
                header_value(&second, header::SET_COOKIE),
                header_value(&second, "x-user"),
            );
            assert_ne!(cookie.as_deref(), Some("sid=u1"), "{cc}: cookie replayed");
            assert_ne!(user.as_deref(), Some("u1"), "{cc}: field replayed");
            if !cc.contains("Set-Cookie") {
                assert_eq!(info(&second).status, CacheStatus::Fresh, "{cc}: stored");
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ the Redis tier

#[cfg(feature = "redis")]
mod with_redis {
    use super::*;
    use common::redis_server::RedisServer;
    use tower_swr::SwrHandle;

    async fn writes_reach(handle: &SwrHandle, n: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while handle.redis_stats().expect("a Redis tier").writes < n {
            assert!(std::time::Instant::now() < deadline, "no write to Redis");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The layer's Cookie rule: a stored response answers a request with `Cookie` only if it
    /// was `public` (or `s-maxage`). A stale hit that finds a fresher copy in Redis answers
    /// with that copy without asking whether it may answer this request.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fresher_copy_from_redis_obeys_the_cookie_rule() -> TestResult {
        let Some(redis) = RedisServer::start("fresher copy cookie rule") else {
            return Ok(());
        };
        // v1 is public and short; every later answer is for anonymous users only.
        let (o, calls) = origin(|n, _| async move {
            Ok(match n {
                1 => reply_cc("v1", "public, max-age=1, stale-while-revalidate=60"),
                _ => reply_cc(format!("v{n}"), "max-age=300"),
            })
        });
        let layer_a = SwrLayer::new().redis(redis.config());
        let a = (layer_a.handle(), layer_a.layer(o.clone()));
        let _ = body(a.1.clone().oneshot(get("/page")).await?).await?;
        writes_reach(&a.0, 1).await;
        tokio::time::sleep(Duration::from_millis(1300)).await;

        // Instance B finds v1 stale in Redis, answers it and refreshes it: v2 (not public)
        // reaches Redis.
        let layer_b = SwrLayer::new().redis(redis.config());
        let b = (layer_b.handle(), layer_b.layer(o.clone()));
        let _ = body(b.1.clone().oneshot(get("/page")).await?).await?;
        writes_reach(&b.0, 1).await;
        assert_eq!(calls.get(), 2);

        // On B, a request with a session cookie is not answered from v2 (not public).
        let cookie = || get_with("/page", http::header::COOKIE, "sid=alice");
        let on_b = b.1.clone().oneshot(cookie()).await?;
        let on_b = (info(&on_b).status, body(on_b).await?);
        assert_ne!(on_b.1, "v2", "B: {on_b:?}");

        // On A, the same request hits the stale public v1, finds v2 in Redis and gets it.
        let on_a = a.1.clone().oneshot(cookie()).await?;
        let status = info(&on_a).status;
        let text = body(on_a).await?;
        assert_ne!(
            text, "v2",
            "A answered a Cookie request with the non-public v2 from Redis ({status:?})"
        );
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn every_lifetime_and_window_at_duration_max_serves_without_panicking() {
    let cache: Cache = SwrCache::builder()
        .ttl_jitter(0.5)
        .early_refresh(1.0)
        .stale_alert_age(Duration::MAX)
        .refresh_timeout(Duration::MAX)
        .refresh_backoff(Duration::MAX, Duration::MAX)
        .build();
    let forever = Freshness::new(Duration::MAX)
        .with_stale_while_revalidate(Duration::MAX)
        .with_stale_if_error(Duration::MAX);
    let engine = cache.clone();
    let engine_ok = !panics(async move {
        for round in 0..3 {
            let loaded = engine
                .get_or_load("k".to_string(), move || async move {
                    Ok::<_, String>(
                        Loaded::new(round, forever)
                            .with_initial_age(Duration::MAX)
                            .with_retention(Duration::MAX)
                            .with_load_time(Duration::MAX),
                    )
                })
                .await
                .expect("loaded");
            // Ancient on arrival (`initial_age`): served stale while a refresh runs, or the
            // refreshed value; never a panic.
            assert!(loaded.value <= round);
            advance(Duration::from_secs(86_400 * 365)).await;
        }
    })
    .await;
    assert!(engine_ok, "the engine panicked");

    let (o, calls) = origin(|_, _| async { Ok(reply("v")) });
    let service = SwrLayer::new()
        .ttl(Duration::MAX)
        .stale_while_revalidate(Duration::MAX)
        .stale_if_error(Duration::MAX)
        .max_stale_when_disconnected(Duration::MAX)
        .origin_timeout(Duration::MAX)
        .lock_timeout(Duration::MAX)
        .ttl_jitter(0.5)
        .layer(o);
    let layer_ok = !panics(async move {
        for _ in 0..3 {
            let response = service
                .clone()
                .oneshot(get("/forever"))
                .await
                .expect("answered");
            assert_eq!(body(response).await.expect("body"), "v");
            advance(Duration::from_secs(86_400 * 365)).await;
        }
    })
    .await;
    assert!(layer_ok, "the layer panicked");
    assert_eq!(calls.get(), 1, "one origin call, then hits");
}

#[tokio::test(start_paused = true)]
async fn a_request_waiting_on_the_load_never_gets_the_loading_clients_private_fields() -> TestResult
{
    let x_user = || http::header::HeaderName::from_static("x-user");
    let gate = Gate::new();
    let opened = gate.clone();
    let (o, calls) = origin(move |n, _| {
        let gate = opened.clone();
        async move {
            gate.wait().await;
            let response = reply_cc(format!("page {n}"), "max-age=600, private=\"X-User\"");
            Ok(with_header(response, x_user(), &format!("u{n}")))
        }
    });
    let service = SwrLayer::new().layer(o);
    let leader = tokio::spawn(service.clone().oneshot(get("/login")));
    settle().await;
    let waiter = tokio::spawn(service.clone().oneshot(get("/login")));
    settle().await;
    gate.open();
    let (leader, waiter) = (leader.await??, waiter.await??);
    assert_eq!(calls.get(), 1, "one origin call for both");
    assert_eq!(
        header_value(&leader, x_user()).as_deref(),
        Some("u1"),
        "the loading client keeps its own field"
    );
    assert_eq!(
        header_value(&waiter, x_user()),
        None,
        "the waiter is answered from the stored copy, without it"
    );
    assert_eq!(body(waiter).await?, "page 1");
    Ok(())
}
