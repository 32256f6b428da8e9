//! Scenarios as a new user tries them, end to end through the public API: shared failures,
//! invalidations racing loads, configuration as a value, the shared tier, panicking origins
//! and loaders. Written black-box from the issue texts by a reviewer who had not read the
//! code; five of them found bugs (fixed): the tier undoing an invalidation, a panicking
//! engine loader retried by every waiter, the shared-cache preset's "no failure memory" lost
//! when sharing memory, `refresh_timeout(ZERO)` failing every refresh, and a handle left on a
//! cache that no longer served after a store setter.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{header, HeaderName, Method, Response, StatusCode};
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_swr::engine::{Freshness, Loaded, Status, SwrCache};
use tower_swr::{CacheStatus, SwrLayer};

const MS: fn(u64) -> Duration = Duration::from_millis;

// ---------------------------------------------------------------------------------------------
// Shared failures
// ---------------------------------------------------------------------------------------------

/// Thirty cold requests, then thirty more while the failure is remembered, then thirty more
/// after the memory lapsed: one origin call per batch, every answer the origin's 503.
#[tokio::test(start_paused = true)]
async fn three_batches_of_thirty_make_one_origin_call_each_at_most() -> TestResult {
    let (origin, calls) = origin(|_, _| async {
        tokio::time::sleep(SECOND).await;
        Ok(respond(503, "down", &[("retry-after", "7")]))
    });
    let layer = SwrLayer::new();
    let service = layer.layer(origin);
    let batch = |service: tower_swr::SwrService<_>| async move {
        let started = Instant::now();
        let handles: Vec<_> = (0..30)
            .map(|_| {
                let s = service.clone();
                tokio::spawn(async move { s.oneshot(get("http://example.com/b")).await })
            })
            .collect();
        let mut statuses = Vec::new();
        for h in handles {
            let r = h.await.unwrap().unwrap();
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(header_value(&r, "retry-after").as_deref(), Some("7"));
            statuses.push(info(&r).status);
            assert_eq!(body(r).await.unwrap(), "down");
        }
        (statuses, started.elapsed())
    };
    let (first, took) = batch(service.clone()).await;
    assert_eq!(calls.get(), 1);
    assert!(took < MS(1500), "{took:?}");
    assert_eq!(first.iter().filter(|s| **s == CacheStatus::Miss).count(), 1);

    tokio::time::advance(MS(300)).await;
    let (second, took) = batch(service.clone()).await;
    assert_eq!(calls.get(), 1, "remembered: no origin call");
    assert!(took < MS(100), "{took:?}");
    assert!(
        second.iter().all(|s| *s == CacheStatus::FailureHit),
        "{second:?}"
    );

    tokio::time::advance(MS(1500)).await;
    let (_, took) = batch(service.clone()).await;
    assert_eq!(
        calls.get(),
        2,
        "after the memory: one call for thirty again"
    );
    assert!(took < MS(1500), "{took:?}");
    Ok(())
}

/// A remembered failure is an answer from a load that began before an invalidation: after a
/// purge / clear / successful POST, the next GET must ask the origin.
#[tokio::test(start_paused = true)]
async fn an_invalidation_forgets_a_remembered_failure() -> TestResult {
    for how in ["purge", "clear", "purge_prefix", "post"] {
        let (origin, calls) = origin(|n, request: http::Request<ReqBody>| async move {
            Ok(if request.method() == Method::POST {
                respond(204, "", &[])
            } else if n == 1 {
                respond(503, "down", &[])
            } else {
                reply_cc("back", "max-age=60")
            })
        });
        let layer = SwrLayer::new().remember_failures(secs(30));
        let handle = layer.handle();
        let service = layer.layer(origin);
        let first = service.clone().oneshot(get("http://example.com/p")).await?;
        assert_eq!(first.status(), StatusCode::SERVICE_UNAVAILABLE);
        let remembered = service.clone().oneshot(get("http://example.com/p")).await?;
        assert_eq!(info(&remembered).status, CacheStatus::FailureHit, "{how}");
        match how {
            "purge" => {
                handle.purge("/p");
            }
            "clear" => handle.clear(),
            "purge_prefix" => {
                handle.purge_prefix("/");
            }
            _ => {
                let post = service
                    .clone()
                    .oneshot(request(Method::POST, "http://example.com/p"))
                    .await?;
                assert_eq!(post.status(), StatusCode::NO_CONTENT);
            }
        }
        let before = calls.get();
        let after = service.clone().oneshot(get("http://example.com/p")).await?;
        assert_eq!(
            (after.status(), info(&after).status),
            (StatusCode::OK, CacheStatus::Miss),
            "{how}: a GET after the invalidation is answered by the failure remembered before it"
        );
        assert_eq!(calls.get(), before + 1, "{how}");
    }
    Ok(())
}

/// Engine: `remove` / `clear` forget a remembered loader failure too.
#[tokio::test(start_paused = true)]
async fn engine_remove_forgets_a_remembered_failure() {
    for how in ["remove", "clear", "remove_if", "insert"] {
        let cache: SwrCache<String, u64> = SwrCache::builder().remember_failures(secs(30)).build();
        let err = cache
            .get_or_load("k".into(), || async { Err::<Loaded<u64>, _>("down") })
            .await
            .unwrap_err();
        assert_eq!(*err, "down");
        match how {
            "remove" => {
                cache.remove("k");
            }
            "clear" => cache.clear(),
            "remove_if" => {
                cache.remove_if(|_| true);
            }
            _ => {
                cache.insert("k".into(), 5, Freshness::new(secs(60)));
            }
        }
        let fresh = Freshness::new(secs(60));
        let got = cache
            .get_or_load("k".into(), move || async move {
                Ok::<_, &str>(Loaded::new(9, fresh))
            })
            .await;
        let expected = if how == "insert" { 5 } else { 9 };
        assert_eq!(
            got.map(|l| l.value).map_err(|e| *e),
            Ok(expected),
            "{how}: the remembered failure outlived the invalidation"
        );
    }
}

/// A stale entry inside its stale-while-revalidate window (no stale-if-error) whose refresh
/// fails keeps being served stale; it is not replaced by the remembered failure, and the
/// refresh backs off.
#[tokio::test(start_paused = true)]
async fn a_failed_refresh_keeps_the_stale_entry_and_backs_off() -> TestResult {
    let (origin, calls) = origin(|n, _| async move {
        Ok(if n == 1 {
            reply_cc("v1", "max-age=1, stale-while-revalidate=600")
        } else {
            respond(503, "down", &[])
        })
    });
    let service = SwrLayer::new()
        .stale_if_error(Duration::ZERO)
        .refresh_backoff(secs(10), secs(60))
        .layer(origin);
    service.clone().oneshot(get("http://example.com/s")).await?;
    tokio::time::advance(secs(2)).await;
    let (status, bytes) = call(&service, get("http://example.com/s")).await?;
    assert_eq!((status, &bytes[..]), (CacheStatus::Stale, &b"v1"[..]));
    settle().await;
    assert_eq!(calls.get(), 2, "the refresh ran");
    for _ in 0..5 {
        let response = service.clone().oneshot(get("http://example.com/s")).await?;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(info(&response).status, CacheStatus::Stale);
        assert_eq!(body(response).await?, "v1");
        settle().await;
    }
    assert_eq!(calls.get(), 2, "backing off: no refresh within 10 s");
    tokio::time::advance(secs(11)).await;
    let (status, _) = call(&service, get("http://example.com/s")).await?;
    assert_eq!(status, CacheStatus::Stale);
    settle().await;
    assert_eq!(calls.get(), 3, "after the backoff, one more refresh");
    Ok(())
}

/// A transport error (inner service `Err`) is shared with the waiters and then remembered.
#[tokio::test(start_paused = true)]
async fn a_transport_error_is_shared_then_remembered() -> TestResult {
    let (origin, calls) = origin(|_, _| async {
        tokio::time::sleep(SECOND).await;
        Err::<Reply, BoxError>("connection refused".into())
    });
    let service = SwrLayer::new().layer(origin);
    let handles: Vec<_> = (0..10)
        .map(|_| {
            let s = service.clone();
            tokio::spawn(async move { s.oneshot(get("http://example.com/t")).await })
        })
        .collect();
    let mut errs = 0;
    for h in handles {
        match h.await? {
            Ok(r) => {
                assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
                assert!(
                    cache_status(&r).contains("origin-error"),
                    "{}",
                    cache_status(&r)
                );
            }
            Err(_) => errs += 1,
        }
    }
    assert!(errs <= 1, "{errs} waiters got an Err");
    assert_eq!(calls.get(), 1);
    let again = service.clone().oneshot(get("http://example.com/t")).await;
    match again {
        Ok(r) => {
            assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
            assert_eq!(info(&r).status, CacheStatus::FailureHit);
        }
        Err(e) => panic!("remembered transport error came back as Err: {e}"),
    }
    assert_eq!(calls.get(), 1);
    Ok(())
}

/// A stale-if-error entry wins over a transport error, for every concurrent waiter.
#[tokio::test(start_paused = true)]
async fn concurrent_waiters_get_stale_if_error_on_a_transport_error() -> TestResult {
    let (origin, calls) = origin(|n, _| async move {
        if n == 1 {
            return Ok(reply_cc("good", "max-age=1, stale-if-error=600"));
        }
        tokio::time::sleep(SECOND).await;
        Err::<Reply, BoxError>("connection refused".into())
    });
    let service = SwrLayer::new().layer(origin);
    service.clone().oneshot(get("http://example.com/e")).await?;
    // Past the layer's default 120 s stale-while-revalidate window, inside stale-if-error.
    tokio::time::advance(secs(200)).await;
    let handles: Vec<_> = (0..10)
        .map(|_| {
            let s = service.clone();
            tokio::spawn(async move { s.oneshot(get("http://example.com/e")).await })
        })
        .collect();
    for h in handles {
        let r = h.await??;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(info(&r).status, CacheStatus::StaleIfError);
        assert_eq!(body(r).await?, "good");
    }
    assert_eq!(calls.get(), 2);
    // And again while the failure is remembered.
    let (status, bytes) = call(&service, get("http://example.com/e")).await?;
    assert_eq!(
        (status, &bytes[..]),
        (CacheStatus::StaleIfError, &b"good"[..])
    );
    Ok(())
}

/// A failure with a body over the 64 KiB a shared failure keeps: every waiter still gets the
/// whole body, and nobody waits for the lock timeout.
#[tokio::test(start_paused = true)]
async fn a_large_failure_body_reaches_every_waiter_whole_and_soon() -> TestResult {
    let big = patterned_bytes(200 << 10);
    let served = big.clone();
    let (origin, calls) = origin(move |_, _| {
        let served = served.clone();
        async move {
            tokio::time::sleep(SECOND).await;
            let mut r = Response::new(ChunkedBody::new(served, 16 << 10));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            Ok(r)
        }
    });
    let service = SwrLayer::new().layer(origin);
    let started = Instant::now();
    let handles: Vec<_> = (0..5)
        .map(|_| {
            let s = service.clone();
            tokio::spawn(async move {
                let r = s.oneshot(get("http://example.com/big")).await.unwrap();
                (r.status(), body(r).await.unwrap())
            })
        })
        .collect();
    for h in handles {
        let (status, bytes) = h.await?;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(bytes.len(), big.len());
        assert_eq!(bytes, big);
    }
    assert!(
        started.elapsed() < secs(3),
        "waiters took {:?} ({} calls)",
        started.elapsed(),
        calls.get()
    );
    Ok(())
}

/// A HEAD during a remembered failure carries no body: by default it goes to the origin as a
/// HEAD; with `convert_head(true)` it is answered from the remembered failure.
#[tokio::test(start_paused = true)]
async fn a_head_during_a_remembered_failure_has_no_body() -> TestResult {
    for convert in [false, true] {
        // The origin itself answers a HEAD without a body.
        let (origin, calls) = origin(|_, request: http::Request<ReqBody>| async move {
            let body = if request.method() == Method::HEAD {
                ""
            } else {
                "down"
            };
            Ok(respond(503, body, &[]))
        });
        let service = SwrLayer::new().convert_head(convert).layer(origin);
        service.clone().oneshot(get("http://example.com/h")).await?;
        let head = service
            .clone()
            .oneshot(request(Method::HEAD, "http://example.com/h"))
            .await?;
        assert_eq!(head.status(), StatusCode::SERVICE_UNAVAILABLE);
        let status = info(&head).status;
        if convert {
            assert_eq!((status, calls.get()), (CacheStatus::FailureHit, 1));
        }
        assert_eq!(body(head).await?, "", "convert_head({convert}): {status:?}");
    }
    Ok(())
}

/// The `shared_cache()` preset promises no failure remembered for later requests; sharing
/// the memory of a `new()` layer must not silently bring the failure memory back.
#[tokio::test(start_paused = true)]
async fn shared_cache_preset_sharing_memory_still_remembers_no_failure() -> TestResult {
    let events = Events::default();
    let _collecting = events.install();
    let budget = SwrLayer::new();
    let (origin, calls) = origin(|_, _| async { Ok(respond(503, "down", &[])) });
    let service = SwrLayer::shared_cache()
        .share_memory_with(&budget)
        .layer(origin);
    assert!(
        events.at(tracing::Level::WARN).is_empty(),
        "(a warning would at least say so)"
    );
    for expected in [1, 2] {
        let response = service.clone().oneshot(get("http://example.com/f")).await?;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            info(&response).status,
            CacheStatus::Miss,
            "shared_cache() sharing a new() layer's store answers a remembered failure"
        );
        assert_eq!(calls.get(), expected);
    }
    Ok(())
}

/// `share_memory_with` then `remember_failures(ZERO)` on the sharing layer: either it takes
/// effect or the user is told (a warning); here we check it takes effect, since nothing else
/// in the API reports it.
#[tokio::test(start_paused = true)]
async fn remember_failures_zero_on_a_sharing_layer() -> TestResult {
    let events = Events::default();
    let _collecting = events.install();
    let budget = SwrLayer::new();
    let (origin, calls) = origin(|_, _| async { Ok(respond(503, "down", &[])) });
    let service = SwrLayer::new()
        .share_memory_with(&budget)
        .remember_failures(Duration::ZERO)
        .layer(origin);
    service.clone().oneshot(get("http://example.com/f")).await?;
    let second = service.clone().oneshot(get("http://example.com/f")).await?;
    let warned = !events.at(tracing::Level::WARN).is_empty();
    eprintln!(
        "sharing layer, remember_failures(ZERO): {:?}, warned: {warned}",
        info(&second).status
    );
    assert!(
        info(&second).status == CacheStatus::Miss || warned,
        "remember_failures(ZERO) ignored without a warning"
    );
    let _ = calls;
    Ok(())
}

/// Engine: `remember_failures(ZERO)` remembers nothing, waiters still share one call.
#[tokio::test(start_paused = true)]
async fn engine_zero_remembers_no_failure_but_waiters_share() {
    let cache: SwrCache<String, u64> = SwrCache::builder()
        .remember_failures(Duration::ZERO)
        .build();
    let calls = Arc::new(AtomicUsize::new(0));
    let load = |calls: Arc<AtomicUsize>| {
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(SECOND).await;
            Err::<Loaded<u64>, _>("down".to_string())
        }
    };
    let handles: Vec<_> = (0..10)
        .map(|_| {
            let cache = cache.clone();
            let load = load(Arc::clone(&calls));
            tokio::spawn(async move { cache.get_or_load("k".to_owned(), load).await })
        })
        .collect();
    for h in handles {
        assert_eq!(*h.await.unwrap().unwrap_err(), "down");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let _ = cache
        .get_or_load("k".to_owned(), load(Arc::clone(&calls)))
        .await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// Engine: a loader that panics, with waiters: nobody hangs, and the key loads again later.
#[tokio::test(start_paused = true)]
async fn engine_panicking_loader_hangs_nobody() {
    let cache: SwrCache<String, u64> = SwrCache::builder().build();
    let calls = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..10)
        .map(|_| {
            let cache = cache.clone();
            let calls = Arc::clone(&calls);
            tokio::spawn(async move {
                cache
                    .get_or_load("k".to_owned(), move || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(SECOND).await;
                        if true {
                            panic!("loader panicked (on purpose)");
                        }
                        Ok::<_, String>(Loaded::new(1, Freshness::new(secs(60))))
                    })
                    .await
            })
        })
        .collect();
    let started = Instant::now();
    for h in handles {
        let done = tokio::time::timeout(secs(30), h).await;
        assert!(done.is_ok(), "a waiter of a panicking loader hangs");
    }
    assert!(
        started.elapsed() < secs(3),
        "the waiters of a panicking loader ended after {:?}, with {} loader calls",
        started.elapsed(),
        calls.load(Ordering::SeqCst)
    );
    let fresh = Freshness::new(secs(60));
    tokio::time::advance(secs(2)).await;
    let got = tokio::time::timeout(
        secs(30),
        cache.get_or_load("k".to_owned(), move || async move {
            Ok::<_, String>(Loaded::new(2, fresh))
        }),
    )
    .await
    .expect("no hang after a panic");
    assert_eq!(got.map(|l| l.value).map_err(|e| (*e).clone()), Ok(2));
}

// ---------------------------------------------------------------------------------------------
// Stale-while-revalidate, panics, HEAD, Vary, conditionals, Range
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn one_background_refresh_under_fifty_concurrent_stale_requests() -> TestResult {
    let gate = Gate::new();
    let (origin, calls) = gated_after_first(&gate, SWR_10_60);
    let layer = SwrLayer::new();
    let service = layer.layer(origin);
    service.clone().oneshot(get("http://example.com/x")).await?;
    tokio::time::advance(secs(11)).await;
    let handles: Vec<_> = (0..50)
        .map(|_| {
            let s = service.clone();
            tokio::spawn(async move { call(&s, get("http://example.com/x")).await.unwrap() })
        })
        .collect();
    for h in handles {
        let (status, bytes) = h.await?;
        assert_eq!((status, &bytes[..]), (CacheStatus::Stale, &b"v1"[..]));
    }
    settle().await;
    assert_eq!(calls.get(), 2, "exactly one refresh");
    gate.open();
    settle().await;
    let (status, bytes) = call(&service, get("http://example.com/x")).await?;
    assert_eq!((status, &bytes[..]), (CacheStatus::Fresh, &b"v2"[..]));
    assert_eq!(calls.get(), 2);
    Ok(())
}

/// An origin whose refresh call panics: stale keeps being served, nobody hangs, and a later
/// refresh succeeds.
#[tokio::test(start_paused = true)]
async fn a_panicking_refresh_keeps_stale_and_a_later_refresh_succeeds() -> TestResult {
    let (origin, calls) = origin(|n, _| async move {
        if n == 2 {
            panic!("refresh panicked (on purpose)");
        }
        Ok(reply_cc(
            format!("v{n}"),
            "max-age=1, stale-while-revalidate=600",
        ))
    });
    let service = SwrLayer::new()
        .refresh_backoff(secs(1), secs(1))
        .layer(origin);
    service
        .clone()
        .oneshot(get("http://example.com/pr"))
        .await?;
    tokio::time::advance(secs(2)).await;
    let (status, _) = call(&service, get("http://example.com/pr")).await?;
    assert_eq!(status, CacheStatus::Stale);
    settle().await;
    assert_eq!(calls.get(), 2);
    tokio::time::advance(secs(3)).await;
    let (status, bytes) = call(&service, get("http://example.com/pr")).await?;
    assert_eq!((status, &bytes[..]), (CacheStatus::Stale, &b"v1"[..]));
    settle().await;
    assert_eq!(calls.get(), 3, "a refresh after the panic");
    let (status, bytes) = call(&service, get("http://example.com/pr")).await?;
    assert_eq!((status, &bytes[..]), (CacheStatus::Fresh, &b"v3"[..]));
    Ok(())
}

/// A cold miss whose origin body panics half-way, with waiters: nobody hangs.
#[tokio::test(start_paused = true)]
async fn a_panicking_body_on_a_coalesced_miss_hangs_nobody() -> TestResult {
    let (origin, calls) = origin(|n, _| async move {
        tokio::time::sleep(SECOND).await;
        let mut r = Response::new(ScriptBody::new(
            &["call ", ["1", "2", "3", "4", "5", "6", "7"][(n - 1).min(6)]],
            if n == 1 { End::Panic } else { End::Finish },
        ));
        r.headers_mut()
            .insert(header::CACHE_CONTROL, "max-age=60".parse().unwrap());
        Ok(r)
    });
    let service = SwrLayer::new().layer(origin);
    let handles: Vec<_> = (0..5)
        .map(|_| {
            let s = service.clone();
            tokio::spawn(async move {
                let r = s.oneshot(get("http://example.com/pb")).await?;
                body(r).await
            })
        })
        .collect();
    let started = Instant::now();
    for h in handles {
        let joined = tokio::time::timeout(secs(60), h).await;
        assert!(joined.is_ok(), "a waiter hangs ({} calls)", calls.get());
    }
    assert!(
        started.elapsed() < secs(4),
        "waiters took {:?}",
        started.elapsed()
    );
    Ok(())
}

/// A HEAD miss goes to the origin as HEAD and stores nothing; a GET arriving meanwhile must
/// not get the HEAD's empty body.
#[tokio::test(start_paused = true)]
async fn a_get_does_not_take_a_concurrent_head_misss_empty_answer() -> TestResult {
    let (origin, calls) = origin(|_, request: http::Request<ReqBody>| async move {
        tokio::time::sleep(SECOND).await;
        let body = if request.method() == Method::HEAD {
            ""
        } else {
            "the body"
        };
        Ok(with_header(
            reply_cc(body, "max-age=60"),
            header::CONTENT_LENGTH,
            "8",
        ))
    });
    let service = SwrLayer::new().layer(origin);
    let head = tokio::spawn(
        service
            .clone()
            .oneshot(request(Method::HEAD, "http://example.com/hd")),
    );
    settle().await;
    let get_body = fetch_text(&service, get("http://example.com/hd")).await?;
    assert_eq!(get_body, "the body", "{} calls", calls.get());
    let head = head.await??;
    assert_eq!(head.status(), StatusCode::OK);
    Ok(())
}

/// Concurrent cold requests with different `Accept-Language` for a resource that varies on
/// it: each gets its own language.
#[tokio::test(start_paused = true)]
async fn vary_waiters_get_their_own_variant() -> TestResult {
    let (origin, _calls) = origin(|_, request: http::Request<ReqBody>| async move {
        tokio::time::sleep(SECOND).await;
        let lang = request
            .headers()
            .get("accept-language")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Ok(respond(
            200,
            lang,
            &[("cache-control", "max-age=60"), ("vary", "accept-language")],
        ))
    });
    let service = SwrLayer::new().layer(origin);
    let langs = ["en", "fr", "en", "de", "fr"];
    let handles: Vec<_> = langs
        .iter()
        .map(|lang| {
            let s = service.clone();
            let lang = *lang;
            tokio::spawn(async move {
                fetch_text(
                    &s,
                    get_headers("http://example.com/v", &[("accept-language", lang)]),
                )
                .await
                .unwrap()
            })
        })
        .collect();
    for (h, lang) in handles.into_iter().zip(langs) {
        assert_eq!(h.await?, lang);
    }
    for lang in langs {
        let r = service
            .clone()
            .oneshot(get_headers(
                "http://example.com/v",
                &[("accept-language", lang)],
            ))
            .await?;
        assert_eq!(info(&r).status, CacheStatus::Fresh, "{lang}");
        assert_eq!(body(r).await?, lang);
    }
    Ok(())
}

/// A waiter with a matching `If-None-Match` gets a 304 from the leader's answer; a hit too.
#[tokio::test(start_paused = true)]
async fn conditional_waiter_and_hit_get_304() -> TestResult {
    let (origin, calls) = origin(|_, _| async {
        tokio::time::sleep(SECOND).await;
        Ok(respond(
            200,
            "payload",
            &[("cache-control", "max-age=60"), ("etag", ETAG)],
        ))
    });
    let service = SwrLayer::new().layer(origin);
    let plain = tokio::spawn(service.clone().oneshot(get("http://example.com/c")));
    settle().await;
    let conditional = service
        .clone()
        .oneshot(get_headers(
            "http://example.com/c",
            &[("if-none-match", ETAG)],
        ))
        .await?;
    assert_eq!(conditional.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(header_value(&conditional, "etag").as_deref(), Some(ETAG));
    assert_eq!(body(conditional).await?, "");
    let plain = plain.await??;
    assert_eq!(body(plain).await?, "payload");
    let hit = service
        .clone()
        .oneshot(get_headers(
            "http://example.com/c",
            &[("if-none-match", ETAG)],
        ))
        .await?;
    assert_eq!(hit.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(calls.get(), 1);
    Ok(())
}

/// `Range` on a coalesced miss and on a hit: 206 with the right bytes (or the whole 200).
#[tokio::test(start_paused = true)]
async fn range_on_a_waiter_and_on_a_hit() -> TestResult {
    let (origin, calls) = origin(|_, _| async {
        tokio::time::sleep(SECOND).await;
        Ok(respond(
            200,
            "0123456789",
            &[("cache-control", "max-age=60")],
        ))
    });
    let service = SwrLayer::new().layer(origin);
    let plain = tokio::spawn(service.clone().oneshot(get("http://example.com/rg")));
    settle().await;
    let ranged = service
        .clone()
        .oneshot(get_headers(
            "http://example.com/rg",
            &[("range", "bytes=2-4")],
        ))
        .await?;
    match ranged.status() {
        StatusCode::PARTIAL_CONTENT => {
            assert_eq!(
                header_value(&ranged, "content-range").as_deref(),
                Some("bytes 2-4/10")
            );
            assert_eq!(body(ranged).await?, "234");
        }
        StatusCode::OK => assert_eq!(body(ranged).await?, "0123456789"),
        other => panic!("{other}"),
    }
    assert_eq!(body(plain.await??).await?, "0123456789");
    let hit = service
        .clone()
        .oneshot(get_headers(
            "http://example.com/rg",
            &[("range", "bytes=-3")],
        ))
        .await?;
    assert_eq!(hit.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(body(hit).await?, "789");
    assert_eq!(calls.get(), 1);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Invalidation fences
// ---------------------------------------------------------------------------------------------

/// A soft purge / clear / POST / purge_prefix while a background refresh is in flight: the
/// refresh that began before stores nothing, and no later GET gets its body.
#[tokio::test(start_paused = true)]
async fn invalidations_during_a_background_refresh() -> TestResult {
    for how in ["soft_purge", "clear", "post", "purge_prefix", "purge_if"] {
        let gate = Gate::new();
        let held = gate.clone();
        let (origin, calls) = origin(move |n, request: http::Request<ReqBody>| {
            let gate = held.clone();
            async move {
                if request.method() == Method::POST {
                    return Ok(respond(204, "", &[]));
                }
                if n == 2 {
                    gate.wait().await;
                    return Ok(reply_cc("pre-invalidation", "max-age=60"));
                }
                Ok(reply_cc(
                    format!("v{n}"),
                    "max-age=1, stale-while-revalidate=60",
                ))
            }
        });
        let layer = SwrLayer::new();
        let handle = layer.handle();
        let service = layer.layer(origin);
        service.clone().oneshot(get("http://example.com/r")).await?;
        tokio::time::advance(secs(2)).await;
        let (status, _) = call(&service, get("http://example.com/r")).await?;
        assert_eq!(status, CacheStatus::Stale);
        settle().await;
        assert_eq!(calls.get(), 2, "{how}: the refresh is under way");
        match how {
            "soft_purge" => {
                handle.soft_purge("/r");
            }
            "clear" => handle.clear(),
            "purge_prefix" => {
                handle.purge_prefix("/r");
            }
            "purge_if" => {
                handle.purge_if(|k| k.target() == "/r");
            }
            _ => {
                let post = service
                    .clone()
                    .oneshot(request(Method::POST, "http://example.com/r"))
                    .await?;
                assert_eq!(post.status(), StatusCode::NO_CONTENT);
            }
        }
        gate.open();
        settle().await;
        for _ in 0..3 {
            let (status, bytes) = call(&service, get("http://example.com/r")).await?;
            assert_ne!(
                &bytes[..],
                b"pre-invalidation",
                "{how}: a GET after the invalidation got the old refresh's body ({status:?})"
            );
            settle().await;
        }
    }
    Ok(())
}

/// Purge while a Vary variant's miss is in flight.
#[tokio::test(start_paused = true)]
async fn purge_during_a_vary_variant_miss() -> TestResult {
    let gate = Gate::new();
    let held = gate.clone();
    let (origin, _calls) = origin(move |n, _| {
        let gate = held.clone();
        async move {
            if n == 2 {
                gate.wait().await;
                return Ok(respond(
                    200,
                    "old-fr",
                    &[("cache-control", "max-age=60"), ("vary", "accept-language")],
                ));
            }
            Ok(respond(
                200,
                format!("new{n}"),
                &[("cache-control", "max-age=60"), ("vary", "accept-language")],
            ))
        }
    });
    let layer = SwrLayer::new();
    let handle = layer.handle();
    let service = layer.layer(origin);
    let fr = || get_headers("http://example.com/vv", &[("accept-language", "fr")]);
    let en = get_headers("http://example.com/vv", &[("accept-language", "en")]);
    service.clone().oneshot(en).await?; // learns the Vary
    let before = tokio::spawn(service.clone().oneshot(fr()));
    settle().await;
    handle.purge("/vv");
    let after = fetch_text(&service, fr()).await?;
    assert_ne!(after, "old-fr");
    gate.open();
    let _ = before.await??;
    settle().await;
    let later = fetch_text(&service, fr()).await?;
    assert_ne!(later, "old-fr", "the pre-purge load stored its answer");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Configuration as a value
// ---------------------------------------------------------------------------------------------

/// The issue's example: a handle taken before `ttl(..)` sees the serving cache.
#[tokio::test(start_paused = true)]
async fn a_handle_taken_before_ttl_sees_the_serving_cache() -> TestResult {
    let (origin, _calls) = origin(|n, _| async move { Ok(reply(format!("v{n}"))) });
    let layer = SwrLayer::new();
    let h = layer.handle();
    let layer = layer.ttl(secs(5)).x_cache_header(true);
    let service = layer.layer(origin);
    service.clone().oneshot(get("http://example.com/a")).await?;
    assert_eq!(h.stats().misses, 1);
    assert_eq!(h.purge("/a"), 1);
    let (status, _) = call(&service, get("http://example.com/a")).await?;
    assert_eq!(status, CacheStatus::Miss);
    Ok(())
}

/// The same with a setter that shapes the store: the issue asks that a handle taken before
/// a setter cannot end up attached to a cache that never serves.
#[tokio::test(start_paused = true)]
async fn a_handle_taken_before_a_store_setter_sees_the_serving_cache() -> TestResult {
    let mut detached = Vec::new();
    for how in [
        "remember_failures",
        "capacity_bytes",
        "lock_timeout",
        "cache_name",
    ] {
        let (origin, _calls) = origin(|n, _| async move { Ok(reply(format!("v{n}"))) });
        let layer = SwrLayer::new();
        let h = layer.handle();
        let layer = match how {
            "remember_failures" => layer.remember_failures(Duration::ZERO),
            "capacity_bytes" => layer.capacity_bytes(1 << 20),
            "lock_timeout" => layer.lock_timeout(secs(1)),
            _ => layer.cache_name("edge"),
        };
        let service = layer.layer(origin);
        service.clone().oneshot(get("http://example.com/a")).await?;
        let seen = (h.stats().misses, h.purge("/a"));
        if seen != (1, 1) {
            detached.push(how);
        }
    }
    assert!(
        detached.is_empty(),
        "a handle taken before these setters is attached to a cache that never serves \
         (documented, with a warning): {detached:?}"
    );
    Ok(())
}

/// A handle of a layer that shares another's memory, taken before `ttl(..)`.
#[tokio::test(start_paused = true)]
async fn a_sharing_layers_handle_sees_its_entries_after_a_setter() -> TestResult {
    let budget = SwrLayer::new();
    let (origin, _calls) = origin(|n, _| async move { Ok(reply(format!("v{n}"))) });
    let layer = SwrLayer::new().share_memory_with(&budget);
    let h = layer.handle();
    let layer = layer.ttl(secs(30));
    let service = layer.layer(origin);
    service.clone().oneshot(get("http://example.com/s")).await?;
    assert_eq!(h.purge("/s"), 1);
    // The budget's handle does not purge the sharing layer's entries.
    service.clone().oneshot(get("http://example.com/s")).await?;
    assert_eq!(budget.handle().purge("/s"), 0);
    Ok(())
}

/// `refresh_timeout(ZERO)`: by the crate's convention ("a feature is turned off by its
/// setter's zero") no timeout, not a refresh that always fails.
#[tokio::test(start_paused = true)]
async fn refresh_timeout_zero_does_not_fail_every_refresh() -> TestResult {
    let (origin, calls) = origin(|n, _| async move {
        if n > 1 {
            tokio::time::sleep(MS(100)).await;
        }
        Ok(reply_cc(
            format!("v{n}"),
            "max-age=1, stale-while-revalidate=600",
        ))
    });
    let service = SwrLayer::new()
        .refresh_timeout(Duration::ZERO)
        .layer(origin);
    service.clone().oneshot(get("http://example.com/z")).await?;
    tokio::time::advance(secs(2)).await;
    call(&service, get("http://example.com/z")).await?;
    tokio::time::sleep(MS(200)).await;
    settle().await;
    let (status, bytes) = call(&service, get("http://example.com/z")).await?;
    assert_eq!(
        (status, &bytes[..]),
        (CacheStatus::Fresh, &b"v2"[..]),
        "refresh_timeout(ZERO) makes every refresh fail ({} calls)",
        calls.get()
    );
    Ok(())
}

/// `lock_timeout(ZERO)`: turns waiting off (each request asks itself) or waits; it must not
/// make thirty requests wait serially.
#[tokio::test(start_paused = true)]
async fn lock_timeout_zero_is_consistent() -> TestResult {
    let (origin, calls) = origin(|n, _| async move {
        tokio::time::sleep(SECOND).await;
        Ok(reply_cc(format!("v{n}"), "max-age=60"))
    });
    let service = SwrLayer::new().lock_timeout(Duration::ZERO).layer(origin);
    let started = Instant::now();
    let handles: Vec<_> = (0..10)
        .map(|_| {
            let s = service.clone();
            tokio::spawn(async move { fetch_text(&s, get("http://example.com/l")).await.unwrap() })
        })
        .collect();
    for h in handles {
        h.await?;
    }
    assert!(
        started.elapsed() < secs(3),
        "{:?}, {} calls",
        started.elapsed(),
        calls.get()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The shared tier
// ---------------------------------------------------------------------------------------------

type BoxedLoad =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Loaded<u64>, String>> + Send>>;

fn counting_load(
    calls: &Arc<AtomicUsize>,
    value: u64,
) -> impl FnOnce() -> BoxedLoad + Send + 'static {
    let calls = Arc::clone(calls);
    move || {
        Box::pin(async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(Loaded::new(value, Freshness::new(secs(60))))
        })
    }
}

#[tokio::test(start_paused = true)]
async fn two_caches_sharing_a_tier_load_a_key_once() {
    let tier = Arc::new(MapTier::<u64> {
        delay: MS(5),
        ..MapTier::default()
    });
    let one: SwrCache<String, u64> = SwrCache::builder().shared_tier(tier.clone()).build();
    let two: SwrCache<String, u64> = SwrCache::builder().shared_tier(tier.clone()).build();
    let calls = Arc::new(AtomicUsize::new(0));
    let a = one
        .get_or_load("k".into(), counting_load(&calls, 7))
        .await
        .unwrap();
    assert_eq!((a.status, a.value), (Status::Miss, 7));
    tokio::time::sleep(MS(50)).await; // the detached write lands
    let b = two
        .get_or_load("k".into(), counting_load(&calls, 8))
        .await
        .unwrap();
    assert_eq!((b.status, b.value), (Status::SharedTier, 7));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Ten concurrent callers of a third cache: one tier lookup's worth, no load.
    let three: SwrCache<String, u64> = SwrCache::builder().shared_tier(tier.clone()).build();
    let gets_before = tier.gets.load(Ordering::SeqCst);
    let handles: Vec<_> = (0..10)
        .map(|_| {
            let c = three.clone();
            let l = counting_load(&calls, 9);
            tokio::spawn(async move { c.get_or_load("k".into(), l).await.unwrap().value })
        })
        .collect();
    for h in handles {
        assert_eq!(h.await.unwrap(), 7);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        tier.gets.load(Ordering::SeqCst) - gets_before,
        1,
        "one tier lookup per key"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hanging_tier_costs_at_most_its_timeout() {
    let tier = Arc::new(MapTier::<u64> {
        hang: AtomicBool::new(true),
        ..MapTier::default()
    });
    let cache: SwrCache<String, u64> = SwrCache::builder()
        .shared_tier(tier)
        .shared_tier_timeout(MS(100))
        .build();
    let calls = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..10)
        .map(|_| {
            let c = cache.clone();
            let l = counting_load(&calls, 1);
            tokio::spawn(async move { c.get_or_load("k".into(), l).await.unwrap().value })
        })
        .collect();
    for h in handles {
        assert_eq!(h.await.unwrap(), 1);
    }
    assert!(started.elapsed() <= MS(150), "{:?}", started.elapsed());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // A stale value's refresh with a hanging tier still refreshes; the stale answer is at once.
    cache.insert(
        "s".into(),
        1,
        Freshness::new(secs(1)).with_stale_while_revalidate(secs(60)),
    );
    tokio::time::advance(secs(2)).await;
    let started = Instant::now();
    let stale = cache
        .get_or_load("s".into(), counting_load(&calls, 2))
        .await
        .unwrap();
    assert_eq!(stale.status, Status::Stale);
    assert_eq!(started.elapsed(), Duration::ZERO);
    tokio::time::sleep(MS(200)).await;
    let fresh = cache
        .get_or_load("s".into(), counting_load(&calls, 3))
        .await
        .unwrap();
    assert_eq!((fresh.status, fresh.value), (Status::Fresh, 2));
    // Shutdown is not held up by a hanging tier.
    assert!(cache.shutdown(secs(1)).await);
}

/// An invalidation in one cache wins over the tier's copy: the next load in this cache must
/// not come back with the value from before it (the tier's `remove` takes a moment, like a
/// network call; `clear` cannot enumerate the tier at all).
#[tokio::test(start_paused = true)]
async fn an_invalidation_is_not_undone_by_the_shared_tier() {
    let mut wrong = Vec::new();
    for how in ["remove", "clear", "remove_if", "mark_stale"] {
        let tier = Arc::new(MapTier::<u64> {
            delay: MS(5),
            ..MapTier::default()
        });
        let one: SwrCache<String, u64> = SwrCache::builder().shared_tier(tier.clone()).build();
        let calls = Arc::new(AtomicUsize::new(0));
        one.get_or_load("k".into(), counting_load(&calls, 1))
            .await
            .unwrap();
        tokio::time::sleep(MS(50)).await;
        match how {
            "remove" => {
                one.remove("k");
            }
            "clear" => one.clear(),
            "remove_if" => {
                one.remove_if(|_| true);
            }
            _ => {
                one.mark_stale("k");
            }
        }
        let again = one
            .get_or_load("k".into(), counting_load(&calls, 2))
            .await
            .unwrap();
        tokio::time::sleep(MS(100)).await;
        let later = one
            .get_or_load("k".into(), counting_load(&calls, 3))
            .await
            .unwrap();
        if again.value == 1 && again.status != Status::Stale || later.value == 1 {
            wrong.push(format!(
                "{how}: then {:?} {}, then {:?} {}",
                again.status, again.value, later.status, later.value
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "answered with the pre-invalidation value from the shared tier: {wrong:?}"
    );
}

/// The other half: once the tier's `remove` landed, another cache loads afresh.
#[tokio::test(start_paused = true)]
async fn after_a_remove_another_cache_does_not_get_the_old_value() {
    let tier = Arc::new(MapTier::<u64> {
        delay: MS(5),
        ..MapTier::default()
    });
    let one: SwrCache<String, u64> = SwrCache::builder().shared_tier(tier.clone()).build();
    let two: SwrCache<String, u64> = SwrCache::builder().shared_tier(tier.clone()).build();
    let calls = Arc::new(AtomicUsize::new(0));
    one.get_or_load("k".into(), counting_load(&calls, 1))
        .await
        .unwrap();
    tokio::time::sleep(MS(50)).await;
    assert!(one.remove("k"));
    tokio::time::sleep(MS(50)).await;
    let other = two
        .get_or_load("k".into(), counting_load(&calls, 3))
        .await
        .unwrap();
    assert_eq!((other.status, other.value), (Status::Miss, 3));
}

/// A load's detached tier write that lands after an invalidation must not bring the old value
/// back for another cache.
#[tokio::test(start_paused = true)]
async fn a_late_tier_write_does_not_outlive_a_remove() {
    let tier = Arc::new(MapTier::<u64> {
        delay: MS(20),
        ..MapTier::default()
    });
    let one: SwrCache<String, u64> = SwrCache::builder().shared_tier(tier.clone()).build();
    let two: SwrCache<String, u64> = SwrCache::builder().shared_tier(tier.clone()).build();
    let calls = Arc::new(AtomicUsize::new(0));
    one.get_or_load("k".into(), counting_load(&calls, 1))
        .await
        .unwrap();
    // The put (20 ms) is still under way: invalidate now.
    assert!(one.remove("k"));
    tokio::time::sleep(MS(200)).await;
    let other = two
        .get_or_load("k".into(), counting_load(&calls, 3))
        .await
        .unwrap();
    assert_eq!(
        (other.status, other.value),
        (Status::Miss, 3),
        "the other cache got the value removed before the tier write landed"
    );
}

/// HEAD requests that wait for a GET's failing origin call get its status without a body.
#[tokio::test(start_paused = true)]
async fn a_head_waiting_for_a_failing_get_has_no_body() -> TestResult {
    let (origin, _calls) = origin(|_, request: http::Request<ReqBody>| async move {
        tokio::time::sleep(SECOND).await;
        let body = if request.method() == Method::HEAD {
            ""
        } else {
            "down"
        };
        Ok(respond(503, body, &[]))
    });
    let service = SwrLayer::new().layer(origin);
    let leader = tokio::spawn(service.clone().oneshot(get("http://example.com/hw")));
    settle().await;
    let head = service
        .clone()
        .oneshot(request(Method::HEAD, "http://example.com/hw"))
        .await?;
    assert_eq!(head.status(), StatusCode::SERVICE_UNAVAILABLE);
    let status = info(&head).status;
    assert_eq!(body(head).await?, "", "HEAD waiter ({status:?}) got a body");
    leader.await??;
    Ok(())
}

/// A remembered failure carrying an ETag is not turned into a 304 or a 206.
#[tokio::test(start_paused = true)]
async fn a_remembered_failure_is_not_a_304_nor_a_206() -> TestResult {
    let (origin, calls) = origin(|_, _| async { Ok(respond(503, "down-body", &[("etag", ETAG)])) });
    let service = SwrLayer::new().layer(origin);
    service
        .clone()
        .oneshot(get("http://example.com/ce"))
        .await?;
    let conditional = service
        .clone()
        .oneshot(get_headers(
            "http://example.com/ce",
            &[("if-none-match", ETAG)],
        ))
        .await?;
    assert_eq!(conditional.status(), StatusCode::SERVICE_UNAVAILABLE);
    let ranged = service
        .clone()
        .oneshot(get_headers(
            "http://example.com/ce",
            &[("range", "bytes=0-3")],
        ))
        .await?;
    assert_eq!(ranged.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body(ranged).await?, "down-body");
    assert_eq!(calls.get(), 1);
    Ok(())
}

/// An origin whose call panics, with waiters: nobody waits for the lock timeout.
#[tokio::test(start_paused = true)]
async fn a_panicking_origin_call_with_waiters_hangs_nobody() -> TestResult {
    let (origin, calls) = origin(|n, _| async move {
        tokio::time::sleep(SECOND).await;
        if n == 1 {
            panic!("origin panicked (on purpose)");
        }
        Ok(reply_cc(format!("v{n}"), "max-age=60"))
    });
    let service = SwrLayer::new().layer(origin);
    let started = Instant::now();
    let handles: Vec<_> = (0..10)
        .map(|_| {
            let s = service.clone();
            tokio::spawn(async move {
                let r = s.oneshot(get("http://example.com/pc")).await?;
                let status = r.status();
                body(r).await.map(|_| status)
            })
        })
        .collect();
    for h in handles {
        let joined = tokio::time::timeout(secs(60), h).await;
        assert!(joined.is_ok(), "a waiter hangs");
    }
    assert!(
        started.elapsed() < secs(3),
        "the waiters of a panicking origin call ended after {:?} ({} calls)",
        started.elapsed(),
        calls.get()
    );
    Ok(())
}

/// A revalidating refresh (the origin answers 304) that began before an invalidation must
/// not re-freshen the entry afterwards.
#[tokio::test(start_paused = true)]
async fn a_304_refresh_that_began_before_an_invalidation_stores_nothing() -> TestResult {
    for how in ["purge", "soft_purge", "post"] {
        let gate = Gate::new();
        let held = gate.clone();
        let (origin, calls) = origin(move |n, request: http::Request<ReqBody>| {
            let gate = held.clone();
            async move {
                if request.method() == Method::POST {
                    return Ok(respond(204, "", &[]));
                }
                if n == 2 {
                    gate.wait().await;
                    return Ok(respond(
                        304,
                        "",
                        &[("etag", ETAG), ("cache-control", "max-age=600")],
                    ));
                }
                Ok(respond(
                    200,
                    format!("v{n}"),
                    &[
                        ("etag", ETAG),
                        ("cache-control", "max-age=1, stale-while-revalidate=60"),
                    ],
                ))
            }
        });
        let layer = SwrLayer::new();
        let handle = layer.handle();
        let service = layer.layer(origin);
        service
            .clone()
            .oneshot(get("http://example.com/r304"))
            .await?;
        tokio::time::advance(secs(2)).await;
        let (status, _) = call(&service, get("http://example.com/r304")).await?;
        assert_eq!(status, CacheStatus::Stale);
        settle().await;
        assert_eq!(calls.get(), 2);
        match how {
            "purge" => {
                handle.purge("/r304");
            }
            "soft_purge" => {
                handle.soft_purge("/r304");
            }
            _ => {
                service
                    .clone()
                    .oneshot(request(Method::POST, "http://example.com/r304"))
                    .await?;
            }
        }
        gate.open();
        settle().await;
        let (status, bytes) = call(&service, get("http://example.com/r304")).await?;
        assert!(
            !(status == CacheStatus::Fresh && &bytes[..] == b"v1"),
            "{how}: the 304 of a refresh that began before the invalidation re-freshened v1"
        );
    }
    Ok(())
}

/// Engine: fifty concurrent callers of a stale key: one background load; a failing one keeps
/// the stale value.
#[tokio::test(start_paused = true)]
async fn engine_one_refresh_for_fifty_stale_callers_and_a_failure_keeps_stale() {
    let cache: SwrCache<String, u64> = SwrCache::builder()
        .refresh_backoff(secs(5), secs(5))
        .build();
    cache.insert(
        "k".into(),
        1,
        Freshness::new(secs(1)).with_stale_while_revalidate(secs(600)),
    );
    tokio::time::advance(secs(2)).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..50)
        .map(|_| {
            let c = cache.clone();
            let calls = Arc::clone(&calls);
            tokio::spawn(async move {
                c.get_or_load("k".into(), move || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(MS(100)).await;
                    Err::<Loaded<u64>, _>("down".to_string())
                })
                .await
                .unwrap()
            })
        })
        .collect();
    for h in handles {
        let got = h.await.unwrap();
        assert_eq!((got.status, got.value), (Status::Stale, 1));
    }
    tokio::time::sleep(MS(200)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let calls2 = Arc::clone(&calls);
    let got = cache
        .get_or_load("k".into(), move || async move {
            calls2.fetch_add(1, Ordering::SeqCst);
            Err::<Loaded<u64>, _>("down".to_string())
        })
        .await
        .unwrap();
    assert_eq!((got.status, got.value), (Status::Stale, 1));
    tokio::time::sleep(MS(10)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "backing off");
}

/// A ranged first request whose origin honours `Range` (206): a plain GET waiting for it must
/// not get the part as the whole, and the part must not be stored as the whole.
#[tokio::test(start_paused = true)]
async fn a_plain_get_waiting_for_a_ranged_miss_gets_the_whole_body() -> TestResult {
    let (origin, calls) = origin(|_, request: http::Request<ReqBody>| async move {
        tokio::time::sleep(SECOND).await;
        Ok(if request.headers().contains_key("range") {
            respond(
                206,
                "234",
                &[
                    ("cache-control", "max-age=60"),
                    ("content-range", "bytes 2-4/10"),
                ],
            )
        } else {
            respond(200, "0123456789", &[("cache-control", "max-age=60")])
        })
    });
    let service = SwrLayer::new().layer(origin);
    let ranged = tokio::spawn(service.clone().oneshot(get_headers(
        "http://example.com/rm",
        &[("range", "bytes=2-4")],
    )));
    settle().await;
    let plain = service
        .clone()
        .oneshot(get("http://example.com/rm"))
        .await?;
    assert_eq!(plain.status(), StatusCode::OK);
    assert_eq!(body(plain).await?, "0123456789", "{} calls", calls.get());
    let ranged = ranged.await??;
    let status = ranged.status();
    let got = body(ranged).await?;
    assert!(
        (status == StatusCode::PARTIAL_CONTENT && got == "234")
            || (status == StatusCode::OK && got == "0123456789"),
        "{status} {got:?}"
    );
    let later = service
        .clone()
        .oneshot(get("http://example.com/rm"))
        .await?;
    assert_eq!(body(later).await?, "0123456789");
    Ok(())
}

/// A conditional first request whose origin answers 304: a plain GET waiting for it must get
/// the whole body.
#[tokio::test(start_paused = true)]
async fn a_plain_get_waiting_for_a_conditional_miss_gets_the_whole_body() -> TestResult {
    let (origin, calls) = origin(|_, request: http::Request<ReqBody>| async move {
        tokio::time::sleep(SECOND).await;
        Ok(if request.headers().contains_key("if-none-match") {
            respond(304, "", &[("cache-control", "max-age=60"), ("etag", ETAG)])
        } else {
            respond(
                200,
                "payload",
                &[("cache-control", "max-age=60"), ("etag", ETAG)],
            )
        })
    });
    let service = SwrLayer::new().layer(origin);
    let conditional = tokio::spawn(service.clone().oneshot(get_headers(
        "http://example.com/cm",
        &[("if-none-match", ETAG)],
    )));
    settle().await;
    let plain = service
        .clone()
        .oneshot(get("http://example.com/cm"))
        .await?;
    assert_eq!(plain.status(), StatusCode::OK, "{} calls", calls.get());
    assert_eq!(body(plain).await?, "payload");
    assert_eq!(conditional.await??.status(), StatusCode::NOT_MODIFIED);
    Ok(())
}

/// Engine: thirty concurrent callers of a key whose value is past its fresh lifetime but
/// inside stale-if-error, with a failing loader: one loader call, all get the value.
#[tokio::test(start_paused = true)]
async fn engine_thirty_callers_stale_if_error_one_load() {
    let cache: SwrCache<String, u64> = SwrCache::builder().build();
    cache.insert(
        "k".into(),
        1,
        Freshness::new(secs(1)).with_stale_if_error(secs(600)),
    );
    tokio::time::advance(secs(2)).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..30)
        .map(|_| {
            let c = cache.clone();
            let calls = Arc::clone(&calls);
            tokio::spawn(async move {
                c.get_or_load("k".into(), move || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(SECOND).await;
                    Err::<Loaded<u64>, _>("down".to_string())
                })
                .await
                .unwrap()
            })
        })
        .collect();
    for h in handles {
        let got = h.await.unwrap();
        assert_eq!((got.status, got.value), (Status::StaleIfError, 1));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(started.elapsed() < MS(1500), "{:?}", started.elapsed());
}

#[allow(dead_code)]
fn _unused(_: Bytes, _: HeaderName) {}

/// A failure remembered by one layer is not the answer of another layer sharing its memory.
#[tokio::test(start_paused = true)]
async fn a_remembered_failure_stays_in_its_layers_namespace() -> TestResult {
    let budget = SwrLayer::new();
    let (down, down_calls) = origin(|_, _| async { Ok(respond(503, "down", &[])) });
    let (up, up_calls) = origin(|_, _| async { Ok(reply_cc("up", "max-age=60")) });
    let a = SwrLayer::new().share_memory_with(&budget).layer(down);
    let b = SwrLayer::new().share_memory_with(&budget).layer(up);
    assert_eq!(
        a.clone()
            .oneshot(get("http://example.com/x"))
            .await?
            .status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let (status, bytes) = call(&b, get("http://example.com/x")).await?;
    assert_eq!((status, &bytes[..]), (CacheStatus::Miss, &b"up"[..]));
    assert_eq!((down_calls.get(), up_calls.get()), (1, 1));
    Ok(())
}

/// `circuit_breaker(0, _)` turns the breaker off: every failing refresh is still tried.
#[tokio::test(start_paused = true)]
async fn circuit_breaker_zero_never_pauses_refreshes() -> TestResult {
    let down = Switch::default();
    let (origin, calls) = switchable("max-age=1, stale-while-revalidate=600", down.clone());
    let service = SwrLayer::new().circuit_breaker(0, secs(600)).layer(origin);
    for i in 0..20 {
        service
            .clone()
            .oneshot(get(&format!("http://example.com/k{i}")))
            .await?;
    }
    down.set(true);
    tokio::time::advance(secs(2)).await;
    for i in 0..20 {
        let (status, _) = call(&service, get(&format!("http://example.com/k{i}"))).await?;
        assert_eq!(status, CacheStatus::Stale);
        settle().await;
    }
    assert_eq!(calls.get(), 40, "every stale key got its refresh");
    Ok(())
}
