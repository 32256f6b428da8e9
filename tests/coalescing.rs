//! Coalescing: concurrent misses share one origin call (one flight per key), leaders that are
//! dropped, panic or lose their body hand over, the lock timeout (one backup origin call per lock
//! timeout, every waiter takes the first answer stored), and waiters rescued by stale-if-error.

mod common;

use axum::{routing, Router};
use bytes::Bytes;
use common::*;
use common::{body, settle, Calls, Gate};
use http::{header, Request, StatusCode};
use std::time::Duration;
use tokio::time::{advance, timeout, Instant};
use tower::{Layer, ServiceExt};
use tower_swr::{CacheStatus, SwrLayer};

/// First call hangs for an hour (paused clock); later calls answer at once.
fn slow_first_call() -> (impl OriginService, Calls) {
    origin(|n, _| async move {
        if n == 1 {
            tokio::time::sleep(secs(3600)).await;
        }
        Ok(reply_cc(format!("v{n}"), "max-age=60"))
    })
}

/// 50 concurrent cold requests to a 6 s origin (the lock timeout is 5 s): (origin calls, the
/// slowest answer's time, the bodies).
async fn fifty_cold_requests_to_a_six_second_origin() -> (usize, Duration, Vec<String>) {
    let calls = Calls::default();
    let app = {
        let calls = calls.clone();
        Router::new()
            .route(
                "/slow",
                routing::get(move || {
                    let n = calls.record();
                    async move {
                        tokio::time::sleep(secs(6)).await;
                        format!("slow v{n}")
                    }
                }),
            )
            .layer(SwrLayer::new())
    };
    let start = Instant::now();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move {
                let response = app_send(&app, app_get("/slow")).await;
                let status = response.status();
                let page = app_text(response).await;
                (start.elapsed(), format!("{status} {page}"))
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    let mut pages = Vec::new();
    for task in tasks {
        let (took, page) = task.await.expect("the request ends");
        slowest = slowest.max(took);
        pages.push(page);
    }
    (calls.get(), slowest, pages)
}

#[tokio::test(start_paused = true)]
async fn concurrent_cold_misses_make_one_origin_call() -> TestResult {
    let gate = Gate::new();
    let (origin, calls) = origin({
        let gate = gate.clone();
        move |_, _| {
            let gate = gate.clone();
            async move {
                gate.wait().await;
                Ok(reply_cc("shared", "max-age=60"))
            }
        }
    });
    let layer = SwrLayer::new();
    let service = layer.layer(origin);

    let requests: Vec<_> = (0..100)
        .map(|_| tokio::spawn(service.clone().oneshot(get("/cold"))))
        .collect();
    settle().await;
    assert_eq!(calls.get(), 1, "one leader goes to the origin");
    gate.open();

    let (mut stored, mut collapsed) = (0, 0);
    for request in requests {
        let response = request.await??;
        match cache_status(&response).as_str() {
            "tower-swr; fwd=uri-miss; stored" => {
                assert_eq!(info(&response).status, CacheStatus::Miss);
                stored += 1;
            }
            "tower-swr; fwd=uri-miss; collapsed" => {
                assert_eq!(info(&response).status, CacheStatus::Collapsed);
                collapsed += 1;
            }
            other => panic!("unexpected Cache-Status {other}"),
        }
        assert_eq!(body(response).await?, "shared");
    }
    assert_eq!((stored, collapsed), (1, 99));
    assert_eq!(calls.get(), 1);
    let stats = layer.stats();
    assert_eq!(stats.misses, 1);
    assert_eq!(stats.collapsed, 99);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn dropped_miss_leader_does_not_strand_its_waiter() -> TestResult {
    let (origin, calls) = slow_first_call();
    // A lock timeout far away: only the leader's drop can release the waiter in time.
    let service = SwrLayer::new().lock_timeout(secs(3600)).layer(origin);

    let leader = tokio::spawn(service.clone().oneshot(get("/slow")));
    settle().await;
    assert_eq!(calls.get(), 1);
    let waiter = tokio::spawn(service.clone().oneshot(get("/slow")));
    settle().await;
    assert_eq!(calls.get(), 1, "the second request waits for the leader");

    leader.abort();
    let response = timeout(secs(1), waiter)
        .await
        .expect("the waiter hung after its leader was dropped")??;
    assert_eq!(calls.get(), 2);
    assert_eq!(body(response).await?, "v2");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn panicking_miss_leader_does_not_strand_its_waiter() -> TestResult {
    let gate = Gate::new();
    let (origin, calls) = origin({
        let gate = gate.clone();
        move |n, _| {
            let gate = gate.clone();
            async move {
                if n == 1 {
                    gate.wait().await;
                    panic!("origin bug on the miss");
                }
                Ok(reply_cc(format!("v{n}"), "max-age=60"))
            }
        }
    });
    let service = SwrLayer::new().lock_timeout(secs(3600)).layer(origin);

    let leader = tokio::spawn(service.clone().oneshot(get("/boom")));
    settle().await;
    let waiter = tokio::spawn(service.clone().oneshot(get("/boom")));
    settle().await;
    gate.open();
    let leader = leader.await.expect_err("the leader's task panicked");
    assert!(leader.is_panic());

    let response = timeout(secs(1), waiter)
        .await
        .expect("the waiter hung after its leader panicked")??;
    // The one origin call failed for both: the waiter gets the layer's documented 502.
    assert_eq!(response.status(), http::StatusCode::BAD_GATEWAY);
    assert!(cache_status(&response).ends_with("detail=origin-error"));
    assert_eq!(calls.get(), 1);
    // Once the failure is no longer remembered, the origin is asked again.
    tokio::time::advance(secs(2)).await;
    let response = service.oneshot(get("/boom")).await?;
    assert_eq!(calls.get(), 2);
    assert_eq!(body(response).await?, "v2");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn waiter_goes_to_the_origin_after_the_lock_timeout() -> TestResult {
    let (origin, calls) = slow_first_call();
    let service = SwrLayer::new().lock_timeout(secs(2)).layer(origin);

    let _leader = tokio::spawn(service.clone().oneshot(get("/lock")));
    settle().await;
    let waiter = tokio::spawn(service.clone().oneshot(get("/lock")));
    settle().await;

    advance(SECOND).await;
    settle().await;
    assert_eq!(calls.get(), 1, "inside the lock timeout the waiter waits");

    advance(secs(2)).await;
    let response = timeout(SECOND, waiter)
        .await
        .expect("the waiter went to the origin after the lock timeout")??;
    assert_eq!(calls.get(), 2);
    assert_eq!(cache_status(&response), "tower-swr; fwd=uri-miss; stored");
    assert_eq!(body(response).await?, "v2");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn concurrent_requests_on_an_expired_entry_revalidate_once() -> TestResult {
    let gate = Gate::new();
    let seen = Seen::default();
    let (o, calls) = origin({
        let gate = gate.clone();
        let seen = seen.clone();
        move |n, request: Request<ReqBody>| {
            seen.record(&request);
            let gate = gate.clone();
            async move {
                Ok(if n == 1 {
                    respond(
                        200,
                        "content",
                        &[("cache-control", "max-age=10"), ("etag", "\"c\"")],
                    )
                } else {
                    gate.wait().await;
                    respond(
                        304,
                        "",
                        &[("cache-control", "max-age=10"), ("etag", "\"c\"")],
                    )
                })
            }
        }
    });
    let service = SwrLayer::shared_cache().layer(o);
    body(service.clone().oneshot(get("/e")).await?).await?;
    advance(secs(11)).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        tasks.push(tokio::spawn(service.clone().oneshot(get("/e"))));
    }
    settle().await;
    gate.open();
    for task in tasks {
        let response = task.await??;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(body(response).await?, "content");
    }
    assert_eq!(calls.get(), 2, "one conditional request for 20 clients");
    assert_eq!(
        header_text(&seen.headers(2), "if-none-match").as_deref(),
        Some("\"c\"")
    );
    Ok(())
}

/// Concurrent requests on an expired entry with stale-if-error, the origin answering 503: one
/// origin call, every client gets the stale response.
#[tokio::test(start_paused = true)]
async fn concurrent_requests_rescued_by_stale_if_error_make_one_call() -> TestResult {
    let gate = Gate::new();
    let (o, calls) = origin({
        let gate = gate.clone();
        move |n, _| {
            let gate = gate.clone();
            async move {
                Ok(if n == 1 {
                    reply_cc("good", "max-age=10, stale-if-error=600")
                } else {
                    gate.wait().await;
                    respond(503, "down", &[])
                })
            }
        }
    });
    let service = SwrLayer::shared_cache().layer(o);
    body(service.clone().oneshot(get("/s")).await?).await?;
    advance(secs(11)).await;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        tasks.push(tokio::spawn(service.clone().oneshot(get("/s"))));
    }
    settle().await;
    gate.open();
    for task in tasks {
        let response = task.await??;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(info(&response).status, CacheStatus::StaleIfError);
        assert!(
            cache_status(&response).starts_with("tower-swr; fwd=stale"),
            "{}",
            cache_status(&response)
        );
        assert_eq!(body(response).await?, "good");
    }
    assert_eq!(calls.get(), 2);
    Ok(())
}

/// Issue 3 §8 quotes `tower-swr; fwd=stale; fwd-status=503` for "stale after an origin error".
/// Requests that waited on the failing origin call get the member without `fwd-status`.
#[tokio::test(start_paused = true)]
async fn waiters_rescued_after_a_503_report_its_fwd_status() -> TestResult {
    let gate = Gate::new();
    let (o, _) = origin({
        let gate = gate.clone();
        move |n, _| {
            let gate = gate.clone();
            async move {
                Ok(if n == 1 {
                    reply_cc("good", "max-age=10, stale-if-error=600")
                } else {
                    gate.wait().await;
                    respond(503, "down", &[])
                })
            }
        }
    });
    let service = SwrLayer::shared_cache().layer(o);
    body(service.clone().oneshot(get("/s")).await?).await?;
    advance(secs(11)).await;
    let tasks: Vec<_> = (0..3)
        .map(|_| tokio::spawn(service.clone().oneshot(get("/s"))))
        .collect();
    settle().await;
    gate.open();
    for task in tasks {
        let response = task.await??;
        assert_eq!(
            cache_status(&response),
            "tower-swr; fwd=stale; fwd-status=503"
        );
    }
    Ok(())
}

/// A miss streams: once the origin's head is in, the fill runs on its own. A leader dropped
/// while its body is read does not stop it: the waiter reads the same origin call to its end,
/// and it is stored.
#[tokio::test(start_paused = true)]
async fn leader_dropped_while_its_body_is_read_leaves_the_fill_to_its_waiter() -> TestResult {
    let gate = Gate::new();
    let (o, calls) = origin({
        let gate = gate.clone();
        move |n, _| {
            let gate = gate.clone();
            async move {
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                tokio::spawn(async move {
                    let _ = tx.send(Ok(Bytes::from(format!("call {n}, ")))).await;
                    gate.wait().await;
                    let _ = tx.send(Ok(Bytes::from_static(b"the rest"))).await;
                });
                Ok(reply_stream(rx, "max-age=60"))
            }
        }
    });
    let layer = SwrLayer::new().lock_timeout(secs(3600));
    let service = layer.layer(o);
    let leader = tokio::spawn(service.clone().oneshot(get("/k")));
    settle().await;
    assert_eq!(calls.get(), 1);
    let waiter = tokio::spawn(service.clone().oneshot(get("/k")));
    settle().await;
    assert_eq!(calls.get(), 1, "the second request reads the leader's fill");
    leader.abort();
    settle().await;
    gate.open();
    let response = timeout(secs(1), waiter)
        .await
        .expect("the waiter hung after its leader was dropped mid-body")??;
    assert_eq!(body(response).await?, "call 1, the rest");
    settle().await;
    let stats = layer.stats();
    assert_eq!(stats.loads_running, 0, "nothing left in flight");
    assert_eq!(stats.refreshes_running, 0);
    let hit = service.clone().oneshot(get("/k")).await?;
    assert_eq!(info(&hit).status, CacheStatus::Fresh);
    assert_eq!(calls.get(), 1);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn leader_whose_body_panics_does_not_strand_its_waiter() -> TestResult {
    let (o, calls) = scripted(
        "max-age=60",
        |n| if n == 1 { End::Panic } else { End::Finish },
    );
    let layer = SwrLayer::new().lock_timeout(secs(3600));
    let service = layer.layer(o);
    let leader = tokio::spawn(service.clone().oneshot(get("/p")));
    // Let the leader reach its body (before the panic) with the waiter queued behind it.
    tokio::task::yield_now().await;
    let waiter = tokio::spawn(service.clone().oneshot(get("/p")));
    let leader = leader.await;
    assert!(
        leader.as_ref().err().is_some_and(|e| e.is_panic()) || leader.is_ok(),
        "the leader ends: {leader:?}"
    );
    let response = timeout(secs(1), waiter)
        .await
        .expect("the waiter hung after its leader panicked mid-body")??;
    // A panic while the origin's body is read is an origin failure like a panic of the call:
    // the waiter gets the layer's 502, marked, from that one call.
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert!(
        cache_status(&response).contains("detail=origin-error"),
        "{}",
        cache_status(&response)
    );
    assert_eq!(calls.get(), 1);
    settle().await;
    assert_eq!(layer.stats().loads_running, 0, "nothing left in flight");
    // Past the moment the failure is remembered, the key is asked for again.
    tokio::time::advance(secs(2)).await;
    let again = service.clone().oneshot(get("/p")).await?;
    assert!(matches!(
        info(&again).status,
        CacheStatus::Fresh | CacheStatus::Miss
    ));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn cancelled_clients_leave_nothing_in_flight() -> TestResult {
    let gate = Gate::new();
    let (o, calls) = origin({
        let gate = gate.clone();
        move |n, request: Request<ReqBody>| {
            let gate = gate.clone();
            async move {
                gate.wait().await;
                Ok(reply_cc(
                    format!("{} #{n}", request.uri().path()),
                    "max-age=60",
                ))
            }
        }
    });
    let layer = SwrLayer::new().lock_timeout(secs(3600));
    let service = layer.layer(o);
    let mut tasks = Vec::new();
    for i in 0..40 {
        tasks.push(tokio::spawn(
            service.clone().oneshot(get(&format!("/k{}", i % 5))),
        ));
    }
    settle().await;
    assert_eq!(calls.get(), 5, "one origin call per key");
    // Every leader (the first five) and every other waiter goes away.
    for (i, task) in tasks.iter().enumerate() {
        if i < 5 || i % 2 == 0 {
            task.abort();
        }
    }
    settle().await;
    gate.open();
    for (i, task) in tasks.into_iter().enumerate() {
        match timeout(secs(5), task).await.expect("a request hung") {
            Ok(response) => {
                let response = response?;
                let bytes = body(response).await?;
                assert!(
                    bytes.starts_with(format!("/k{}", i % 5).as_bytes()),
                    "request {i} got {bytes:?}"
                );
            }
            Err(e) => assert!(e.is_cancelled(), "{e}"),
        }
    }
    settle().await;
    let stats = layer.stats();
    assert_eq!(stats.loads_running, 0, "nothing left in flight");
    assert_eq!(stats.refreshes_running, 0);
    for k in 0..5 {
        let response = timeout(secs(5), service.clone().oneshot(get(&format!("/k{k}"))))
            .await
            .expect("the key is wedged")?;
        assert!(body(response)
            .await?
            .starts_with(format!("/k{k}").as_bytes()));
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn cold_requests_past_the_lock_timeout_make_a_bounded_number_of_origin_calls() {
    let (calls, _, pages) = fifty_cold_requests_to_a_six_second_origin().await;
    assert!(
        pages.iter().all(|p| p.starts_with("200 OK slow v")),
        "{pages:?}"
    );
    assert!(
        calls <= 2,
        "50 cold requests made {calls} origin calls (bounded: at most 2)"
    );
}

#[tokio::test(start_paused = true)]
async fn cold_requests_past_the_lock_timeout_take_the_leaders_answer_when_it_comes() {
    let (_, slowest, pages) = fifty_cold_requests_to_a_six_second_origin().await;
    assert!(
        pages.iter().all(|p| p.starts_with("200 OK slow v")),
        "{pages:?}"
    );
    assert!(
        slowest <= secs(7),
        "the slowest answer took {slowest:?}; the leader's answer was there at 6 s"
    );
}

/// PEERS.md: "Coalescing keyed without `Vary` serves one user's variant to another"
/// (go-proxy-cache#267). Concurrent cold misses for one URL from two users (`Authorization`,
/// then `Cookie`) whose answers are not shareable must each get their own answer.
#[tokio::test(start_paused = true)]
async fn coalesced_misses_never_hand_one_users_answer_to_another() -> TestResult {
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
        let alice = body_text(alice.await??).await?;
        let bob = body_text(bob.await??).await?;
        assert_eq!(alice, "account of alice", "{credential}");
        assert_eq!(
            bob, "account of bob",
            "{credential}: bob got alice's answer"
        );
        assert_eq!(calls.get(), 2, "{credential}");
    }
    Ok(())
}

/// A miss of an entry past stale-while-revalidate on a hanging origin: the leader is answered
/// stale-if-error when its `origin_timeout` (30 s) fires. A waiter that joined at t=1 starts one
/// backup origin call when its lock timeout (5 s) passes and is answered stale-if-error when
/// that call's own `origin_timeout` fires: later than the leader, one origin call more.
#[tokio::test(start_paused = true)]
async fn waiter_of_a_hanging_miss_past_the_lock_timeout_makes_one_backup_call() -> TestResult {
    let (o, calls) = origin(|n, _request: Request<ReqBody>| async move {
        if n > 1 {
            std::future::pending::<()>().await;
        }
        Ok::<_, BoxError>(reply("v1"))
    });
    let service = SwrLayer::new().layer(o);
    let (first, _) = timed(service.clone(), get("/p")).await?;
    assert_eq!(body_text(first).await?, "v1");

    advance(secs(200)).await; // past 60 s + 120 s of SWR, inside 300 s of stale-if-error
    let leader = tokio::spawn(timed(service.clone(), get("/p")));
    settle().await;
    advance(secs(1)).await;
    let waiter = tokio::spawn(timed(service.clone(), get("/p")));
    let (leader, leader_took) = tokio::time::timeout(secs(600), leader)
        .await
        .map_err(|_| "the leader is not answered within 600 s")???;
    let (waiter, waiter_took) =
        tokio::time::timeout(secs(600), waiter)
            .await
            .map_err(|_| {
                format!(
                    "the waiter is not answered within 600 s ({} origin calls)",
                    calls.get()
                )
            })???;
    assert_eq!(info(&leader).status, CacheStatus::StaleIfError);
    assert_eq!(leader_took, secs(30));
    assert_eq!(info(&waiter).status, CacheStatus::StaleIfError);
    assert_eq!(body_text(waiter).await?, "v1");
    assert_eq!(
        (waiter_took, calls.get()),
        (secs(5 + 30), 3),
        "the waiter's wait and the origin calls (1 + the leader's + one backup)"
    );
    Ok(())
}
