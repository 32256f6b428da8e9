//! Failures are shared: one failing origin call (or loader call) answers every request that
//! waited for it, and for a moment (`remember_failures`) every later request of the key.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::{header, HeaderName, StatusCode};
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_swr::engine::{Freshness, Loaded, Status, SwrCache};
use tower_swr::{CacheStatus, SwrLayer};

#[tokio::test(start_paused = true)]
async fn thirty_cold_requests_to_a_failing_origin_make_one_call_and_all_get_its_503() -> TestResult
{
    let (origin, calls) = origin(|_, _| async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(with_header(
            reply_status(StatusCode::SERVICE_UNAVAILABLE, "down for maintenance"),
            HeaderName::from_static("retry-after"),
            "120",
        ))
    });
    let service = SwrLayer::new().layer(origin);
    let started = Instant::now();
    let requests: Vec<_> = (0..30)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move { service.oneshot(get("http://example.com/partner")).await })
        })
        .collect();
    let mut collapsed = 0;
    for handle in requests {
        let response = handle.await??;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            header_value(&response, "retry-after").as_deref(),
            Some("120")
        );
        if info(&response).status == CacheStatus::Collapsed {
            collapsed += 1;
            assert!(
                cache_status(&response).contains("collapsed"),
                "{}",
                cache_status(&response)
            );
        }
        assert_eq!(body(response).await?, "down for maintenance");
    }
    assert_eq!(calls.get(), 1, "one origin call for thirty requests");
    assert_eq!(collapsed, 29);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_failure_is_remembered_for_a_moment_then_the_origin_is_asked_again() -> TestResult {
    let (origin, calls) = origin(|n, _| async move {
        Ok(if n == 1 {
            reply_status(StatusCode::BAD_GATEWAY, "partner down")
        } else {
            reply("back")
        })
    });
    let layer = SwrLayer::new().remember_failures(Duration::from_secs(2));
    let service = layer.layer(origin);
    let first = service.clone().oneshot(get("http://example.com/p")).await?;
    assert_eq!(first.status(), StatusCode::BAD_GATEWAY);

    tokio::time::advance(Duration::from_millis(1500)).await;
    let remembered = service.clone().oneshot(get("http://example.com/p")).await?;
    assert_eq!(remembered.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(info(&remembered).status, CacheStatus::FailureHit);
    assert_eq!(cache_status(&remembered), "tower-swr; hit; detail=failure");
    assert_eq!(body(remembered).await?, "partner down");
    assert_eq!(calls.get(), 1);
    assert_eq!(layer.stats().failure_hits, 1);

    // Another key is not affected.
    let other = service.clone().oneshot(get("http://example.com/q")).await?;
    assert_eq!(other.status(), StatusCode::OK);

    tokio::time::advance(Duration::from_millis(600)).await;
    let again = service.clone().oneshot(get("http://example.com/p")).await?;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(body(again).await?, "back");
    assert_eq!(calls.get(), 3);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn zero_turns_the_failure_memory_off_but_waiters_still_share() -> TestResult {
    let gate = Gate::new();
    let opened = gate.clone();
    let (origin, calls) = origin(move |_, _| {
        let gate = opened.clone();
        async move {
            gate.wait().await;
            Ok(reply_status(StatusCode::SERVICE_UNAVAILABLE, "no"))
        }
    });
    let service = SwrLayer::new()
        .remember_failures(Duration::ZERO)
        .layer(origin);
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move { service.oneshot(get("http://example.com/z")).await })
        })
        .collect();
    settle().await;
    gate.open();
    for waiter in waiters {
        assert_eq!(waiter.await??.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(calls.get(), 1);
    let next = service.oneshot(get("http://example.com/z")).await?;
    assert_eq!(next.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        calls.get(),
        2,
        "nothing remembered: the origin is asked again"
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_stale_if_error_entry_wins_over_a_remembered_failure() -> TestResult {
    let (origin, calls) = origin(|n, _| async move {
        Ok(if n == 1 {
            reply_cc("good", "max-age=1, stale-if-error=600")
        } else {
            reply_status(StatusCode::SERVICE_UNAVAILABLE, "down")
        })
    });
    let layer = SwrLayer::shared_cache().remember_failures(Duration::from_secs(1));
    let service = layer.clone().layer(origin);
    service.clone().oneshot(get("http://example.com/s")).await?;
    tokio::time::advance(Duration::from_secs(5)).await;
    let stale = service.clone().oneshot(get("http://example.com/s")).await?;
    assert_eq!(info(&stale).status, CacheStatus::StaleIfError);
    assert_eq!(body(stale).await?, "good");
    let again = service.clone().oneshot(get("http://example.com/s")).await?;
    assert_eq!(info(&again).status, CacheStatus::StaleIfError);
    assert_eq!(body(again).await?, "good");
    assert_eq!(calls.get(), 2);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn waiters_of_an_inner_service_error_get_a_502_marked_origin_error() -> TestResult {
    let (origin, calls) = origin(|_, _| async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Err::<http::Response<http_body_util::Full<bytes::Bytes>>, _>("connection refused".into())
    });
    let service = SwrLayer::new().layer(origin);
    let handles: Vec<_> = (0..5)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move { service.oneshot(get("http://example.com/e")).await })
        })
        .collect();
    let mut errors = 0;
    let mut gateways = 0;
    for handle in handles {
        match handle.await? {
            Err(error) => {
                assert_eq!(error.to_string(), "connection refused");
                errors += 1;
            }
            Ok(response) => {
                assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
                assert!(cache_status(&response).ends_with("detail=origin-error"));
                gateways += 1;
            }
        }
    }
    assert_eq!((errors, gateways, calls.get()), (1, 4, 1));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_failure_is_not_shared_with_or_from_requests_with_credentials() -> TestResult {
    let (origin, calls) = origin(|_, request: http::Request<_>| async move {
        let who = request
            .headers()
            .get(header::AUTHORIZATION)
            .map_or("anonymous".to_owned(), |v| v.to_str().unwrap().to_owned());
        Ok(reply_status(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("sorry {who}"),
        ))
    });
    let service = SwrLayer::new().layer(origin);
    let private = service
        .clone()
        .oneshot(get_with(
            "http://example.com/c",
            header::AUTHORIZATION,
            "alice",
        ))
        .await?;
    assert_eq!(body(private).await?, "sorry alice");
    let anonymous = service.clone().oneshot(get("http://example.com/c")).await?;
    assert_eq!(body(anonymous).await?, "sorry anonymous");
    let bob = service
        .clone()
        .oneshot(get_with(
            "http://example.com/c",
            header::AUTHORIZATION,
            "bob",
        ))
        .await?;
    assert_eq!(body(bob).await?, "sorry bob");
    assert_eq!(calls.get(), 3);
    Ok(())
}

/// A 408 or 429 is about the client that sent the request (its timeout, its rate limit): the
/// requests that waited for it ask the origin themselves, and none is remembered.
#[tokio::test(start_paused = true)]
async fn a_408_or_429_is_never_shared_with_other_clients() -> TestResult {
    for status in [StatusCode::REQUEST_TIMEOUT, StatusCode::TOO_MANY_REQUESTS] {
        let (origin, calls) = origin(move |_, request| async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(if request.headers().contains_key("x-greedy") {
                reply_status(status, "slow down")
            } else {
                reply_cc("page", "max-age=60")
            })
        });
        let service = SwrLayer::new().layer(origin);
        let greedy = tokio::spawn(service.clone().oneshot(get_with(
            "http://example.com/home",
            HeaderName::from_static("x-greedy"),
            "1",
        )));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let waiter = service
            .clone()
            .oneshot(get("http://example.com/home"))
            .await?;
        assert_eq!(greedy.await??.status(), status);
        assert_eq!(
            waiter.status(),
            StatusCode::OK,
            "{status}: the waiter's own answer"
        );
        assert_eq!(&body(waiter).await?[..], b"page");
        assert_eq!(calls.get(), 2, "{status}");
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_private_or_no_store_failure_is_not_shared() -> TestResult {
    for (cache_control, remembered) in [("private", false), ("no-store", false), ("", true)] {
        let (origin, calls) = origin(move |_, _| async move {
            let mut response = reply_status(StatusCode::SERVICE_UNAVAILABLE, "x");
            if !cache_control.is_empty() {
                response = with_header(response, header::CACHE_CONTROL, cache_control);
            }
            Ok(response)
        });
        let service = SwrLayer::new().layer(origin);
        service.clone().oneshot(get("http://example.com/n")).await?;
        let second = service.oneshot(get("http://example.com/n")).await?;
        assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
        let expected_calls = if remembered { 1 } else { 2 };
        assert_eq!(
            calls.get(),
            expected_calls,
            "Cache-Control: {cache_control}"
        );
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn engine_waiters_share_one_failing_load_and_the_error_is_remembered() {
    let cache: SwrCache<String, u64> = SwrCache::builder().build();
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let load = |calls: Arc<std::sync::atomic::AtomicUsize>| {
        move || async move {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(1)).await;
            Err::<Loaded<u64>, _>("db down".to_string())
        }
    };
    let started = Instant::now();
    let handles: Vec<_> = (0..30)
        .map(|_| {
            let cache = cache.clone();
            let load = load(Arc::clone(&calls));
            tokio::spawn(async move { cache.get_or_load("config".to_owned(), load).await })
        })
        .collect();
    let mut errors = Vec::new();
    for handle in handles {
        errors.push(handle.await.unwrap().unwrap_err());
    }
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Every caller ends with the one load (1 s), well inside the lock timeout (5 s).
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    assert!(errors.iter().all(|e| **e == "db down"));
    // Every caller holds the same error, not a copy.
    assert!(errors.iter().all(|e| Arc::ptr_eq(e, &errors[0])));
    assert_eq!(cache.stats().collapsed, 29);

    let remembered = cache
        .get_or_load("config".to_owned(), load(Arc::clone(&calls)))
        .await
        .unwrap_err();
    assert!(Arc::ptr_eq(&remembered, &errors[0]));
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(cache.stats().failure_hits, 1);

    tokio::time::advance(Duration::from_millis(1100)).await;
    let fresh = Freshness::new(Duration::from_secs(60));
    let ok = cache
        .get_or_load("config".to_owned(), move || async move {
            Ok::<_, String>(Loaded::new(7, fresh))
        })
        .await
        .unwrap();
    assert_eq!((ok.status, ok.value), (Status::Miss, 7));
}

#[tokio::test(start_paused = true)]
async fn engine_stale_if_error_value_wins_over_a_remembered_failure() {
    let cache: SwrCache<&'static str, u64> = SwrCache::builder().build();
    let freshness =
        Freshness::new(Duration::from_secs(1)).with_stale_if_error(Duration::from_secs(60));
    cache.insert("rate", 1, freshness);
    tokio::time::advance(Duration::from_secs(2)).await;
    let failing = || async { Err::<Loaded<u64>, _>("down") };
    let first = cache.get_or_load("rate", failing).await.unwrap();
    assert_eq!((first.status, first.value), (Status::StaleIfError, 1));
    let second = cache.get_or_load("rate", failing).await.unwrap();
    assert_eq!((second.status, second.value), (Status::StaleIfError, 1));
}

#[tokio::test(start_paused = true)]
async fn the_shared_cache_preset_remembers_no_failure_for_later_requests() -> TestResult {
    let (origin, calls) =
        origin(|_, _| async { Ok(reply_status(StatusCode::SERVICE_UNAVAILABLE, "down")) });
    let service = SwrLayer::shared_cache().layer(origin);
    for expected in [1, 2] {
        let response = service.clone().oneshot(get("http://example.com/f")).await?;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(info(&response).status, CacheStatus::Miss);
        assert_eq!(calls.get(), expected);
    }
    Ok(())
}
