//! The tower adapter, `SwrLayer` / `SwrService`, over `service_fn` origins and tower-test mocks.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::header::{self, HeaderName};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::time::{advance, timeout};
use tower::{Layer, ServiceBuilder, ServiceExt};
use tower_swr::{CacheStatus, SwrLayer};
use tower_test::mock;

const SECOND: Duration = Duration::from_secs(1);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Fresh for 10 s, then served stale for 60 s while one refresh runs.
const SWR_10_60: &str = "max-age=10, stale-while-revalidate=60";

// ---- fresh hits ----

#[tokio::test(start_paused = true)]
async fn fresh_hit_does_not_reach_the_inner_service() -> TestResult {
    let (mut service, mut handle) =
        mock::spawn_layer::<Request<ReqBody>, Response<Full<Bytes>>, _>(SwrLayer::new());

    assert!(service.poll_ready().is_ready());
    let first = tokio::spawn(service.call(get("/a")));
    let (request, send) = handle
        .next_request()
        .await
        .expect("the miss reaches the inner service");
    assert_eq!(request.uri(), "/a");
    send.send_response(reply_cc("one", "max-age=60"));
    let first = first.await??;
    assert_eq!(cache_status(&first), "tower-swr; fwd=uri-miss; stored");
    assert_eq!(body(first).await?, "one");

    advance(secs(10)).await;
    assert!(service.poll_ready().is_ready());
    let second = service.call(get("/a")).await?;
    assert!(
        handle.poll_request().is_pending(),
        "a fresh hit must not reach the inner service"
    );
    assert_eq!(cache_status(&second), "tower-swr; hit; ttl=50");
    assert_eq!(age(&second), Some(10));
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(body(second).await?, "one");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn fresh_hit_is_answered_without_calling_the_origin() -> TestResult {
    let (origin, calls) = origin(|n, _| async move { Ok(reply_cc(format!("v{n}"), "max-age=60")) });
    let service = SwrLayer::new().layer(origin);

    let miss = service.clone().oneshot(get("/a")).await?;
    assert_eq!(age(&miss), Some(0));
    assert_eq!(body(miss).await?, "v1");

    advance(secs(42)).await;
    for _ in 0..3 {
        let hit = service.clone().oneshot(get("/a")).await?;
        assert_eq!(cache_status(&hit), "tower-swr; hit; ttl=18");
        assert_eq!(age(&hit), Some(42));
        assert_eq!(body(hit).await?, "v1");
    }
    assert_eq!(calls.get(), 1);
    Ok(())
}

// ---- stale while revalidate ----

#[tokio::test(start_paused = true)]
async fn stale_requests_are_answered_at_once_while_one_refresh_runs() -> TestResult {
    let gate = Gate::new();
    let (origin, calls) = origin({
        let gate = gate.clone();
        move |n, _| {
            let gate = gate.clone();
            async move {
                if n > 1 {
                    gate.wait().await;
                }
                Ok(reply_cc(format!("v{n}"), SWR_10_60))
            }
        }
    });
    let layer = SwrLayer::new();
    let service = layer.layer(origin);
    body(service.clone().oneshot(get("/s")).await?).await?;
    advance(secs(11)).await;

    // The origin now hangs until the gate opens; 50 requests must not wait for it.
    let requests: Vec<_> = (0..50)
        .map(|_| tokio::spawn(service.clone().oneshot(get("/s"))))
        .collect();
    for request in requests {
        let response = request.await??;
        assert_eq!(cache_status(&response), "tower-swr; hit; ttl=-1");
        assert_eq!(age(&response), Some(11));
        assert_eq!(info(&response).status, CacheStatus::Stale);
        assert_eq!(body(response).await?, "v1");
    }
    settle().await;
    assert_eq!(
        calls.get(),
        2,
        "50 stale requests must make ONE refresh call"
    );
    assert_eq!(layer.stats().refreshes_running, 1);

    gate.open();
    settle().await;
    let next = service.clone().oneshot(get("/s")).await?;
    assert_eq!(info(&next).status, CacheStatus::Fresh);
    assert_eq!(body(next).await?, "v2");
    assert_eq!(calls.get(), 2);
    let stats = layer.stats();
    assert_eq!(stats.stale_hits, 50);
    assert_eq!(stats.refreshes_started, 1);
    assert_eq!(stats.refreshes_succeeded, 1);
    Ok(())
}

/// A header line of a request, or `None`.
fn line(request: &Request<ReqBody>, name: &str) -> Option<String> {
    request
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test(start_paused = true)]
async fn refresh_sends_the_storing_requests_credentials_not_the_triggers() -> TestResult {
    let (mock, mut handle) = mock::pair::<Request<ReqBody>, Response<Full<Bytes>>>();
    let service = SwrLayer::new().layer(mock);
    let public = "public, max-age=10, stale-while-revalidate=60";

    // Stored from an anonymous request; found stale by a client with a (junk) token, a
    // session cookie, its own conditionals and connection headers.
    let first = tokio::spawn(service.clone().oneshot(get("/anon")));
    let (_, send) = handle.next_request().await.expect("the miss");
    send.send_response(reply_cc("v1", public));
    body(first.await??).await?;
    advance(secs(11)).await;
    let mut trigger = get("/anon");
    for (name, value) in [
        ("authorization", "Bearer junk"),
        ("cookie", "session=someone"),
        ("range", "bytes=0-0"),
        ("connection", "keep-alive"),
        ("te", "trailers"),
    ] {
        trigger.headers_mut().insert(
            HeaderName::from_static(name),
            http::HeaderValue::from_static(value),
        );
    }
    let stale = service.clone().oneshot(trigger).await?;
    assert_eq!(info(&stale).status, CacheStatus::Stale);
    let (refresh, send) = handle.next_request().await.expect("the refresh");
    for name in ["authorization", "cookie", "range", "connection", "te"] {
        assert_eq!(line(&refresh, name), None, "{name} of the trigger was sent");
    }
    send.send_response(reply_cc("v2", public));
    settle().await;

    // Stored from a request with a token: an anonymous trigger's refresh carries that token.
    let first = tokio::spawn(service.clone().oneshot(get_with(
        "/mine",
        header::AUTHORIZATION,
        "Bearer storer",
    )));
    let (_, send) = handle.next_request().await.expect("the miss");
    send.send_response(reply_cc("mine", public));
    body(first.await??).await?;
    advance(secs(11)).await;
    let stale = service.clone().oneshot(get("/mine")).await?;
    assert_eq!(info(&stale).status, CacheStatus::Stale);
    let (refresh, send) = handle.next_request().await.expect("the refresh");
    assert_eq!(
        line(&refresh, "authorization").as_deref(),
        Some("Bearer storer")
    );
    send.send_response(reply_cc("mine v2", public));
    settle().await;
    let fresh = service.clone().oneshot(get("/mine")).await?;
    assert_eq!(body(fresh).await?, "mine v2");
    Ok(())
}

/// A request extension, as a router or an auth layer would add.
#[derive(Clone, Debug, PartialEq)]
struct Tenant(&'static str);

#[tokio::test(start_paused = true)]
async fn refresh_replays_the_request_that_found_the_entry_stale() -> TestResult {
    let (mock, mut handle) = mock::pair::<Request<ReqBody>, Response<Full<Bytes>>>();
    let service = SwrLayer::new().layer(mock);
    // Like nginx's background update, a refresh asks with the request that found the entry
    // stale (its headers and extensions: axum's path params, a tenant), not a stored copy.
    let tenant_request = |method: Method, trace: &'static str| {
        let mut request = request(method, "/r?page=2");
        request
            .headers_mut()
            .insert("x-tenant", http::HeaderValue::from_static("acme"));
        request
            .headers_mut()
            .insert("x-trace", http::HeaderValue::from_static(trace));
        request.extensions_mut().insert(Tenant("acme"));
        request
    };

    let first = tokio::spawn(
        service
            .clone()
            .oneshot(tenant_request(Method::GET, "first")),
    );
    let (_, send) = handle.next_request().await.expect("the miss");
    send.send_response(reply_cc("v1", SWR_10_60));
    body(first.await??).await?;
    advance(secs(11)).await;

    // A HEAD finds the GET entry stale: answered at once, refreshed with a GET.
    let stale = service
        .clone()
        .oneshot(tenant_request(Method::HEAD, "second"))
        .await?;
    assert_eq!(info(&stale).status, CacheStatus::Stale);
    assert!(body(stale).await?.is_empty());
    let (refresh, send) = handle
        .next_request()
        .await
        .expect("the refresh reaches the inner service");
    assert_eq!(refresh.method(), Method::GET);
    assert_eq!(refresh.uri(), "/r?page=2");
    assert_eq!(
        refresh.headers().get("x-tenant").map(|v| v.as_bytes()),
        Some(&b"acme"[..])
    );
    assert_eq!(
        refresh.headers().get("x-trace").map(|v| v.as_bytes()),
        Some(&b"second"[..])
    );
    assert_eq!(refresh.extensions().get::<Tenant>(), Some(&Tenant("acme")));
    send.send_response(reply_cc("v2", SWR_10_60));
    settle().await;

    let fresh = service
        .clone()
        .oneshot(tenant_request(Method::GET, "third"))
        .await?;
    assert_eq!(info(&fresh).status, CacheStatus::Fresh);
    assert_eq!(body(fresh).await?, "v2");
    assert!(handle.poll_request().is_pending());
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn refresh_that_panics_is_retried_after_the_backoff() -> TestResult {
    let (origin, calls) = origin(|n, _| async move {
        if n == 2 {
            panic!("origin bug during the refresh");
        }
        Ok(reply_cc(format!("v{n}"), SWR_10_60))
    });
    let layer = SwrLayer::new().refresh_backoff(SECOND, secs(60));
    let service = layer.layer(origin);
    body(service.clone().oneshot(get("/p")).await?).await?;
    advance(secs(11)).await;

    let stale = service.clone().oneshot(get("/p")).await?;
    assert_eq!(body(stale).await?, "v1");
    settle().await;
    assert_eq!(calls.get(), 2);
    let stats = layer.stats();
    assert_eq!(stats.refreshes_panicked, 1);
    assert_eq!(stats.refreshes_failed, 1);
    assert_eq!(stats.refreshes_running, 0, "the panic released the key");

    // Still stale and backing off: no new refresh yet.
    let stale = service.clone().oneshot(get("/p")).await?;
    assert_eq!(body(stale).await?, "v1");
    settle().await;
    assert_eq!(calls.get(), 2, "a failed refresh backs off");

    advance(secs(2)).await;
    let stale = service.clone().oneshot(get("/p")).await?;
    assert_eq!(body(stale).await?, "v1");
    settle().await;
    assert_eq!(calls.get(), 3, "after the backoff the key refreshes again");
    let fresh = service.clone().oneshot(get("/p")).await?;
    assert_eq!(info(&fresh).status, CacheStatus::Fresh);
    assert_eq!(body(fresh).await?, "v3");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn refresh_answered_with_a_server_error_keeps_the_old_entry() -> TestResult {
    let (origin, calls) = origin(|n, _| async move {
        if n == 1 {
            Ok(reply_cc("good", SWR_10_60))
        } else {
            Ok(reply_status(StatusCode::SERVICE_UNAVAILABLE, "down"))
        }
    });
    let layer = SwrLayer::new();
    let service = layer.layer(origin);
    body(service.clone().oneshot(get("/e")).await?).await?;
    advance(secs(11)).await;

    let stale = service.clone().oneshot(get("/e")).await?;
    assert_eq!(body(stale).await?, "good");
    settle().await;
    assert_eq!(calls.get(), 2);
    assert_eq!(layer.stats().refreshes_failed, 1);

    let still = service.clone().oneshot(get("/e")).await?;
    assert_eq!(still.status(), StatusCode::OK);
    assert_eq!(info(&still).status, CacheStatus::Stale);
    assert_eq!(body(still).await?, "good");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn refresh_timeout_keeps_the_old_entry() -> TestResult {
    let (origin, calls) = origin(|n, _| async move {
        if n == 2 {
            tokio::time::sleep(secs(3600)).await;
        }
        Ok(reply_cc(format!("v{n}"), SWR_10_60))
    });
    let layer = SwrLayer::new().refresh_timeout(secs(5));
    let service = layer.layer(origin);
    body(service.clone().oneshot(get("/t")).await?).await?;
    advance(secs(11)).await;

    body(service.clone().oneshot(get("/t")).await?).await?;
    settle().await;
    assert_eq!(calls.get(), 2);
    advance(secs(5)).await;
    settle().await;
    let stats = layer.stats();
    assert_eq!(stats.refreshes_timed_out, 1);
    assert_eq!(stats.refreshes_failed, 1);
    assert_eq!(stats.refreshes_running, 0);
    let still = service.clone().oneshot(get("/t")).await?;
    assert_eq!(body(still).await?, "v1");
    Ok(())
}

// ---- miss coalescing ----

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
    assert_eq!(stats.coalesced_waits, 99);
    Ok(())
}

/// First call hangs for an hour (paused clock); later calls answer at once.
fn slow_first_call() -> (
    impl tower::Service<
            Request<ReqBody>,
            Response = Response<Full<Bytes>>,
            Error = BoxError,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static,
    Calls,
) {
    origin(|n, _| async move {
        if n == 1 {
            tokio::time::sleep(secs(3600)).await;
        }
        Ok(reply_cc(format!("v{n}"), "max-age=60"))
    })
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
async fn lock_timeout_bounds_the_whole_wait_when_the_origin_keeps_failing() -> TestResult {
    // Default lock timeout: 5 s. Each origin call takes 1 s and answers 503.
    let (origin, _calls) = origin(|_, _| async move {
        tokio::time::sleep(SECOND).await;
        Ok(reply_status(StatusCode::SERVICE_UNAVAILABLE, "down"))
    });
    let service = SwrLayer::new().layer(origin);
    let requests: Vec<_> = (0..30)
        .map(|_| tokio::spawn(service.clone().oneshot(get("/down"))))
        .collect();

    // Lock timeout + one origin call of its own is the longest any request should wait.
    let all = async {
        for request in requests {
            let response = request.await.expect("request task").expect("a response");
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
    };
    timeout(secs(5) + secs(1) + SECOND, all)
        .await
        .expect("requests waited past the lock timeout");
    Ok(())
}

// ---- stale-if-error ----

/// Stored fresh for 10 s, stale-while-revalidate 5 s, stale-if-error 100 s; then the origin
/// answers `failure`.
fn failing_after_first(
    failure: fn() -> Result<Response<Full<Bytes>>, BoxError>,
) -> (
    impl tower::Service<
            Request<ReqBody>,
            Response = Response<Full<Bytes>>,
            Error = BoxError,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static,
    Calls,
) {
    origin(move |n, _| async move {
        if n == 1 {
            Ok(reply_cc(
                "last good",
                "max-age=10, stale-while-revalidate=5, stale-if-error=100",
            ))
        } else {
            failure()
        }
    })
}

fn unavailable() -> Result<Response<Full<Bytes>>, BoxError> {
    Ok(reply_status(StatusCode::SERVICE_UNAVAILABLE, "maintenance"))
}

fn broken() -> Result<Response<Full<Bytes>>, BoxError> {
    Err("connection refused".into())
}

#[tokio::test(start_paused = true)]
async fn origin_503_inside_stale_if_error_serves_the_stale_entry() -> TestResult {
    let (origin, calls) = failing_after_first(unavailable);
    let layer = SwrLayer::new();
    let service = layer.layer(origin);
    body(service.clone().oneshot(get("/sie")).await?).await?;
    advance(secs(20)).await;

    let response = service.clone().oneshot(get("/sie")).await?;
    assert_eq!(calls.get(), 2);
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        cache_status(&response),
        "tower-swr; fwd=stale; fwd-status=503"
    );
    assert_eq!(age(&response), Some(20));
    assert_eq!(info(&response).status, CacheStatus::StaleIfError);
    assert_eq!(body(response).await?, "last good");
    assert_eq!(layer.stats().stale_if_error, 1);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn origin_error_inside_stale_if_error_serves_the_stale_entry() -> TestResult {
    let (origin, calls) = failing_after_first(broken);
    let service = SwrLayer::new().layer(origin);
    body(service.clone().oneshot(get("/sie")).await?).await?;
    advance(secs(20)).await;

    let response = service.clone().oneshot(get("/sie")).await?;
    assert_eq!(calls.get(), 2);
    assert_eq!(cache_status(&response), "tower-swr; fwd=stale");
    assert_eq!(info(&response).status, CacheStatus::StaleIfError);
    assert_eq!(body(response).await?, "last good");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn origin_503_past_stale_if_error_passes_through() -> TestResult {
    let (origin, calls) = failing_after_first(unavailable);
    let service = SwrLayer::new().layer(origin);
    body(service.clone().oneshot(get("/sie")).await?).await?;
    advance(secs(111)).await;

    let response = service.clone().oneshot(get("/sie")).await?;
    assert_eq!(calls.get(), 2);
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(cache_status(&response), "tower-swr; fwd=uri-miss");
    assert_eq!(info(&response).status, CacheStatus::Miss);
    assert_eq!(body(response).await?, "maintenance");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn origin_error_past_stale_if_error_passes_through() -> TestResult {
    let (origin, calls) = failing_after_first(broken);
    let service = SwrLayer::new().layer(origin);
    body(service.clone().oneshot(get("/sie")).await?).await?;
    advance(secs(111)).await;

    let error = service
        .clone()
        .oneshot(get("/sie"))
        .await
        .expect_err("nothing usable: the origin's error goes through");
    assert_eq!(calls.get(), 2);
    assert_eq!(error.to_string(), "connection refused");
    Ok(())
}

// ---- readiness ----

#[tokio::test(start_paused = true)]
async fn hit_is_answered_while_the_inner_concurrency_limit_is_saturated() -> TestResult {
    let gate = Gate::new();
    let (origin, calls) = origin({
        let gate = gate.clone();
        move |_, request: Request<ReqBody>| {
            let gate = gate.clone();
            async move {
                if request.uri().path() == "/hang" {
                    gate.wait().await;
                }
                Ok(reply_cc(request.uri().path().to_owned(), "max-age=60"))
            }
        }
    });
    let service = ServiceBuilder::new()
        .layer(SwrLayer::new())
        .concurrency_limit(1)
        .service(origin);
    body(service.clone().oneshot(get("/hit")).await?).await?;

    let hanging = tokio::spawn(service.clone().oneshot(get("/hang")));
    settle().await;
    assert_eq!(calls.get(), 2, "the hanging request holds the only permit");

    let hit = timeout(SECOND, service.clone().oneshot(get("/hit")))
        .await
        .expect("a hit must not wait for the origin's capacity")?;
    assert_eq!(info(&hit).status, CacheStatus::Fresh);
    assert_eq!(body(hit).await?, "/hit");

    // A miss does wait for the permit, and gets it once the hanging call ends.
    let miss = tokio::spawn(service.clone().oneshot(get("/other")));
    settle().await;
    assert_eq!(calls.get(), 2);
    gate.open();
    body(hanging.await??).await?;
    assert_eq!(body(miss.await??).await?, "/other");
    assert_eq!(calls.get(), 3);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn hit_does_not_poll_the_inner_service_readiness() -> TestResult {
    let (mut service, mut handle) =
        mock::spawn_layer::<Request<ReqBody>, Response<Full<Bytes>>, _>(SwrLayer::new());
    let first = tokio::spawn(service.call(get("/r")));
    let (_, send) = handle.next_request().await.expect("the miss");
    send.send_response(reply_cc("ready", "max-age=60"));
    body(first.await??).await?;

    // The inner service is no longer ready; the layer still is, and a hit is answered.
    handle.allow(0);
    assert!(service.poll_ready().is_ready());
    let hit = service.call(get("/r")).await?;
    assert_eq!(body(hit).await?, "ready");
    assert!(handle.poll_request().is_pending());
    Ok(())
}

// ---- keys ----

#[tokio::test(start_paused = true)]
async fn different_query_strings_are_different_entries() -> TestResult {
    let (origin, calls) = origin(|_, request: Request<ReqBody>| async move {
        Ok(reply_cc(
            request.uri().query().unwrap_or("").to_owned(),
            "max-age=60",
        ))
    });
    let service = SwrLayer::new().layer(origin);

    assert_eq!(
        body(service.clone().oneshot(get("/q?page=1")).await?).await?,
        "page=1"
    );
    assert_eq!(
        body(service.clone().oneshot(get("/q?page=2")).await?).await?,
        "page=2"
    );
    assert_eq!(calls.get(), 2);
    let again = service.clone().oneshot(get("/q?page=1")).await?;
    assert_eq!(info(&again).status, CacheStatus::Fresh);
    assert_eq!(body(again).await?, "page=1");
    assert_eq!(calls.get(), 2);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn unsafe_methods_are_never_cached() -> TestResult {
    let (origin, calls) = origin(|n, request: Request<ReqBody>| async move {
        Ok(reply_cc(
            format!("{} {n}", request.method()),
            "public, max-age=60",
        ))
    });
    let layer = SwrLayer::new();
    let service = layer.layer(origin);
    body(service.clone().oneshot(get("/m")).await?).await?;

    let mut expected_calls = 1;
    for method in [Method::POST, Method::PUT, Method::DELETE] {
        for _ in 0..2 {
            let response = service
                .clone()
                .oneshot(request(method.clone(), "/m"))
                .await?;
            expected_calls += 1;
            assert_eq!(
                calls.get(),
                expected_calls,
                "{method} must reach the origin"
            );
            assert_eq!(cache_status(&response), "tower-swr; fwd=method");
            assert_eq!(info(&response).status, CacheStatus::Bypass);
            assert_eq!(
                body(response).await?,
                format!("{method} {expected_calls}"),
                "{method} must not be answered from the GET entry"
            );
        }
    }
    assert_eq!(layer.stats().bypasses, 6);
    Ok(())
}

/// Answers in the request's `Accept-Language`, varying on it.
fn by_language() -> (
    impl tower::Service<
            Request<ReqBody>,
            Response = Response<Full<Bytes>>,
            Error = BoxError,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static,
    Calls,
) {
    origin(|n, request: Request<ReqBody>| async move {
        let language = request
            .headers()
            .get(header::ACCEPT_LANGUAGE)
            .map_or("none", |v| v.to_str().unwrap())
            .to_owned();
        Ok(with_header(
            reply_cc(format!("{language} v{n}"), "max-age=60"),
            header::VARY,
            "Accept-Language",
        ))
    })
}

#[tokio::test(start_paused = true)]
async fn vary_keeps_a_variant_from_other_header_values() -> TestResult {
    let (origin, calls) = by_language();
    let service = SwrLayer::new().layer(origin);
    let en = || get_with("/v", header::ACCEPT_LANGUAGE, "en");
    let fr = || get_with("/v", header::ACCEPT_LANGUAGE, "fr");

    assert_eq!(body(service.clone().oneshot(en()).await?).await?, "en v1");
    let hit = service.clone().oneshot(en()).await?;
    assert_eq!(info(&hit).status, CacheStatus::Fresh);
    assert_eq!(body(hit).await?, "en v1");

    let french = service.clone().oneshot(fr()).await?;
    assert_eq!(calls.get(), 2, "the en variant must not answer fr");
    assert_eq!(cache_status(&french), "tower-swr; fwd=vary-miss; stored");
    assert_eq!(body(french).await?, "fr v2");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_purged_varying_resource_is_a_plain_miss_again() -> TestResult {
    let (origin, calls) = by_language();
    let layer = SwrLayer::new();
    let handle = layer.handle();
    let service = layer.layer(origin);
    let en = || get_with("/v", header::ACCEPT_LANGUAGE, "en");
    body(service.clone().oneshot(en()).await?).await?;
    assert_eq!(handle.purge("/v"), 1);
    let again = service.clone().oneshot(en()).await?;
    assert_eq!(calls.get(), 2);
    assert_eq!(cache_status(&again), "tower-swr; fwd=uri-miss; stored");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn vary_variants_are_stored_side_by_side() -> TestResult {
    let (origin, calls) = by_language();
    let service = SwrLayer::new().layer(origin);
    let en = || get_with("/v", header::ACCEPT_LANGUAGE, "en");
    let fr = || get_with("/v", header::ACCEPT_LANGUAGE, "fr");

    body(service.clone().oneshot(en()).await?).await?;
    body(service.clone().oneshot(fr()).await?).await?;
    assert_eq!(calls.get(), 2);
    let en_again = service.clone().oneshot(en()).await?;
    let fr_again = service.clone().oneshot(fr()).await?;
    assert_eq!(body(en_again).await?, "en v1");
    assert_eq!(body(fr_again).await?, "fr v2");
    assert_eq!(calls.get(), 2, "both variants should be held");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn vary_star_is_never_reused() -> TestResult {
    let (origin, calls) = origin(|n, _| async move {
        Ok(with_header(
            reply_cc(format!("v{n}"), "max-age=60"),
            header::VARY,
            "*",
        ))
    });
    let service = SwrLayer::new().layer(origin);
    for n in 1..=3 {
        let response = service.clone().oneshot(get("/star")).await?;
        assert_eq!(cache_status(&response), "tower-swr; fwd=uri-miss");
        assert_eq!(body(response).await?, format!("v{n}"));
    }
    assert_eq!(calls.get(), 3);
    Ok(())
}

fn x_user() -> HeaderName {
    HeaderName::from_static("x-user")
}

/// Greets the `x-user` of the request.
fn per_user() -> (
    impl tower::Service<
            Request<ReqBody>,
            Response = Response<Full<Bytes>>,
            Error = BoxError,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static,
    Calls,
) {
    origin(|_, request: Request<ReqBody>| async move {
        let user = request
            .headers()
            .get("x-user")
            .map_or("nobody", |v| v.to_str().unwrap())
            .to_owned();
        Ok(reply_cc(format!("hello {user}"), "max-age=60"))
    })
}

fn user_key_layer() -> SwrLayer {
    SwrLayer::new().key_fn(|parts| {
        let user = parts.headers.get("x-user")?.to_str().ok()?;
        Some(user.to_owned())
    })
}

#[tokio::test(start_paused = true)]
async fn key_fn_keeps_users_apart() -> TestResult {
    let (origin, calls) = per_user();
    let service = user_key_layer().layer(origin);

    let alice = service
        .clone()
        .oneshot(get_with("/me", x_user(), "alice"))
        .await?;
    assert_eq!(body(alice).await?, "hello alice");
    let bob = service
        .clone()
        .oneshot(get_with("/me", x_user(), "bob"))
        .await?;
    assert_eq!(
        body(bob).await?,
        "hello bob",
        "bob must not get alice's entry"
    );
    assert_eq!(calls.get(), 2);

    let alice = service
        .clone()
        .oneshot(get_with("/me", x_user(), "alice"))
        .await?;
    assert_eq!(info(&alice).status, CacheStatus::Fresh);
    assert_eq!(body(alice).await?, "hello alice");
    let bob = service
        .clone()
        .oneshot(get_with("/me", x_user(), "bob"))
        .await?;
    assert_eq!(info(&bob).status, CacheStatus::Fresh);
    assert_eq!(body(bob).await?, "hello bob");
    assert_eq!(calls.get(), 2);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn key_fn_returning_none_bypasses_the_cache() -> TestResult {
    let (origin, calls) = per_user();
    let layer = user_key_layer();
    let service = layer.layer(origin);

    for n in 1..=3 {
        let response = service.clone().oneshot(get("/me")).await?;
        assert_eq!(calls.get(), n);
        assert_eq!(cache_status(&response), "tower-swr; fwd=bypass");
        assert_eq!(info(&response).status, CacheStatus::Bypass);
        assert_eq!(body(response).await?, "hello nobody");
    }
    let stats = layer.stats();
    assert_eq!(stats.bypasses, 3);
    assert_eq!(stats.stores, 0);
    Ok(())
}

// ---- bodies ----

#[tokio::test(start_paused = true)]
async fn large_streamed_body_reaches_the_client_intact_and_is_not_stored() -> TestResult {
    let data = patterned_bytes(20 << 20);
    let (origin, calls) = origin({
        let data = data.clone();
        move |_, _| {
            let data = data.clone();
            async move {
                Ok(with_header(
                    Response::new(ChunkedBody::new(data, 64 << 10)),
                    header::CACHE_CONTROL,
                    "max-age=60",
                ))
            }
        }
    });
    let layer = SwrLayer::new();
    let service = layer.layer(origin);

    for n in 1..=2 {
        let response = service.clone().oneshot(get("/big")).await?;
        assert_eq!(
            calls.get(),
            n,
            "a body over the limit is never answered from cache"
        );
        assert_eq!(cache_status(&response), "tower-swr; fwd=uri-miss");
        let received = body(response).await?;
        assert_eq!(received.len(), data.len());
        assert!(received == data, "the 20 MiB body was altered");
    }
    assert_eq!(layer.stats().stores, 0);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn body_over_max_body_bytes_is_passed_intact_and_not_stored() -> TestResult {
    let data = patterned_bytes(2 << 10);
    let (origin, calls) = origin({
        let data = data.clone();
        move |n, _| {
            let data = data.clone();
            async move {
                let response = with_header(
                    Response::new(ChunkedBody::new(data, 512)),
                    header::CACHE_CONTROL,
                    "max-age=60",
                );
                // Once without Content-Length (found while buffering), once with it (known early).
                Ok(if n % 2 == 0 {
                    with_header(response, header::CONTENT_LENGTH, "2048")
                } else {
                    response
                })
            }
        }
    });
    let layer = SwrLayer::new().max_body_bytes(1024);
    let service = layer.layer(origin);

    for n in 1..=4 {
        let response = service.clone().oneshot(get("/two-k")).await?;
        assert_eq!(calls.get(), n);
        assert!(body(response).await? == data, "the 2 KiB body was altered");
    }
    assert_eq!(layer.stats().stores, 0);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn body_failing_mid_stream_reaches_the_client_as_an_error_and_is_not_stored() -> TestResult {
    let (origin, calls) = origin(|_, _| async move {
        let body = ChunkedBody::new(patterned_bytes(3000), 1000).failing_with("reset by peer");
        Ok(with_header(
            Response::new(body),
            header::CACHE_CONTROL,
            "max-age=60",
        ))
    });
    let layer = SwrLayer::new();
    let service = layer.layer(origin);

    for n in 1..=2 {
        let response = service.clone().oneshot(get("/broken")).await?;
        assert_eq!(calls.get(), n, "a failed body is never stored");
        assert_eq!(response.status(), StatusCode::OK);
        let error = body(response)
            .await
            .expect_err("the client must see the body error");
        assert_eq!(error.to_string(), "reset by peer");
    }
    assert_eq!(layer.stats().stores, 0);
    Ok(())
}

// ---- defaults and what is never shared ----

#[tokio::test(start_paused = true)]
async fn without_cache_control_fresh_for_60s_then_stale_until_180s() -> TestResult {
    // Later calls fail, so the refreshes keep the first entry and its deadlines.
    let (origin, calls) = origin(|n, _| async move {
        Ok(if n == 1 {
            reply("default")
        } else {
            reply_status(StatusCode::SERVICE_UNAVAILABLE, "down")
        })
    });
    let service = SwrLayer::new().layer(origin);
    body(service.clone().oneshot(get("/d")).await?).await?;

    advance(secs(59)).await;
    let fresh = service.clone().oneshot(get("/d")).await?;
    assert_eq!(cache_status(&fresh), "tower-swr; hit; ttl=1");
    assert_eq!(calls.get(), 1);

    advance(secs(2)).await;
    let stale = service.clone().oneshot(get("/d")).await?;
    assert_eq!(cache_status(&stale), "tower-swr; hit; ttl=-1");
    assert_eq!(body(stale).await?, "default");
    settle().await;
    assert_eq!(calls.get(), 2, "the stale hit started a refresh");

    advance(secs(117)).await;
    let still_stale = service.clone().oneshot(get("/d")).await?;
    assert_eq!(info(&still_stale).status, CacheStatus::Stale);
    assert_eq!(body(still_stale).await?, "default");
    settle().await;

    advance(secs(2)).await;
    let before = calls.get();
    let past = service.clone().oneshot(get("/d")).await?;
    assert_eq!(
        calls.get(),
        before + 1,
        "past 180 s the origin is called first"
    );
    assert_eq!(info(&past).status, CacheStatus::StaleIfError);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn origin_max_age_and_stale_while_revalidate_are_respected() -> TestResult {
    // The refresh hangs, so the entry keeps its first deadlines.
    let (origin, calls) = origin(|n, _| async move {
        if n == 2 {
            tokio::time::sleep(secs(3600)).await;
        }
        Ok(reply_cc(
            format!("v{n}"),
            "max-age=10, stale-while-revalidate=5",
        ))
    });
    let service = SwrLayer::new().layer(origin);
    body(service.clone().oneshot(get("/o")).await?).await?;

    advance(secs(9)).await;
    let fresh = service.clone().oneshot(get("/o")).await?;
    assert_eq!(info(&fresh).status, CacheStatus::Fresh);

    advance(secs(2)).await;
    let stale = service.clone().oneshot(get("/o")).await?;
    assert_eq!(info(&stale).status, CacheStatus::Stale);
    assert_eq!(body(stale).await?, "v1");
    settle().await;
    assert_eq!(calls.get(), 2);

    advance(secs(5)).await;
    let miss = service.clone().oneshot(get("/o")).await?;
    assert_eq!(
        calls.get(),
        3,
        "past max-age + swr the request goes to the origin"
    );
    assert_eq!(info(&miss).status, CacheStatus::Miss);
    assert_eq!(body(miss).await?, "v3");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn no_store_private_and_set_cookie_are_never_stored() -> TestResult {
    let (origin, calls) = origin(|_, request: Request<ReqBody>| async move {
        let response = reply("personal");
        Ok(match request.uri().path() {
            "/no-store" => with_header(response, header::CACHE_CONTROL, "no-store"),
            "/private" => with_header(response, header::CACHE_CONTROL, "private, max-age=60"),
            "/cookie" => with_header(
                with_header(response, header::CACHE_CONTROL, "max-age=60"),
                header::SET_COOKIE,
                "session=abc",
            ),
            _ => unreachable!(),
        })
    });
    let layer = SwrLayer::new();
    let service = layer.layer(origin);

    let mut expected = 0;
    for path in ["/no-store", "/private", "/cookie"] {
        for _ in 0..2 {
            let response = service.clone().oneshot(get(path)).await?;
            expected += 1;
            assert_eq!(
                calls.get(),
                expected,
                "{path} must not be answered from cache"
            );
            assert_eq!(cache_status(&response), "tower-swr; fwd=uri-miss");
            assert!(!info(&response).stored);
        }
    }
    assert_eq!(layer.stats().stores, 0);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn authorized_request_is_not_stored_without_public() -> TestResult {
    let (origin, calls) = origin(|_, _| async move { Ok(reply_cc("secret", "max-age=60")) });
    let service = SwrLayer::new().layer(origin);
    let authorized = || get_with("/acct", header::AUTHORIZATION, "Bearer alice");

    body(service.clone().oneshot(authorized()).await?).await?;
    let again = service.clone().oneshot(authorized()).await?;
    assert_eq!(calls.get(), 2);
    assert!(!info(&again).stored);
    // Nor is it handed to an anonymous request.
    body(service.clone().oneshot(get("/acct")).await?).await?;
    assert_eq!(calls.get(), 3);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn authorized_request_is_stored_when_the_response_is_public() -> TestResult {
    let (origin, calls) =
        origin(|_, _| async move { Ok(reply_cc("catalogue", "public, max-age=60")) });
    let service = SwrLayer::new().layer(origin);
    let authorized = || get_with("/cat", header::AUTHORIZATION, "Bearer alice");

    body(service.clone().oneshot(authorized()).await?).await?;
    let again = service.clone().oneshot(authorized()).await?;
    assert_eq!(calls.get(), 1);
    assert_eq!(info(&again).status, CacheStatus::Fresh);
    assert_eq!(body(again).await?, "catalogue");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn entry_refused_to_an_authorized_request_is_not_a_vary_miss() -> TestResult {
    let (origin, calls) = origin(|_, _| async move { Ok(reply_cc("anonymous", "max-age=60")) });
    let service = SwrLayer::new().layer(origin);
    body(service.clone().oneshot(get("/page")).await?).await?;

    // No Vary anywhere: the stored entry is refused because of Authorization alone.
    let authorized = service
        .clone()
        .oneshot(get_with("/page", header::AUTHORIZATION, "Bearer alice"))
        .await?;
    assert_eq!(calls.get(), 2);
    assert_eq!(cache_status(&authorized), "tower-swr; fwd=uri-miss");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn origin_age_counts_toward_freshness() -> TestResult {
    let (origin, calls) = origin(|_, _| async move {
        Ok(with_header(
            reply_cc("aged", "max-age=60"),
            header::AGE,
            "50",
        ))
    });
    let service = SwrLayer::new().layer(origin);

    let miss = service.clone().oneshot(get("/aged")).await?;
    assert_eq!(age(&miss), Some(50));
    advance(secs(5)).await;
    let hit = service.clone().oneshot(get("/aged")).await?;
    assert_eq!(age(&hit), Some(55));
    assert_eq!(cache_status(&hit), "tower-swr; hit; ttl=5");
    advance(secs(6)).await;
    let stale = service.clone().oneshot(get("/aged")).await?;
    assert_eq!(info(&stale).status, CacheStatus::Stale);
    settle().await;
    assert_eq!(
        calls.get(),
        2,
        "60 s of freshness minus 50 s of age is over"
    );
    Ok(())
}

// ---- HEAD ----

#[tokio::test(start_paused = true)]
async fn head_is_answered_from_the_get_entry_with_an_empty_body() -> TestResult {
    let (origin, calls) = origin(|_, _| async move {
        Ok(with_header(
            reply_cc("hello", "max-age=60"),
            header::CONTENT_LENGTH,
            "5",
        ))
    });
    let service = SwrLayer::new().layer(origin);
    body(service.clone().oneshot(get("/h")).await?).await?;

    let head = service.clone().oneshot(request(Method::HEAD, "/h")).await?;
    assert_eq!(calls.get(), 1);
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(cache_status(&head), "tower-swr; hit; ttl=60");
    assert_eq!(
        header_value(&head, header::CONTENT_LENGTH).as_deref(),
        Some("5")
    );
    assert!(body(head).await?.is_empty());

    // The GET entry still has its body.
    assert_eq!(
        body(service.clone().oneshot(get("/h")).await?).await?,
        "hello"
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn head_gets_the_length_of_the_get_body_when_the_origin_sent_none() -> TestResult {
    // An axum handler's response has no Content-Length (hyper computes it when writing): a
    // HEAD must still be told the GET's length, not that of its own empty body.
    let (origin, calls) = origin(|_, _| async move { Ok(reply_cc("hello", "max-age=60")) });
    let service = SwrLayer::new().convert_head(true).layer(origin);
    let miss = service.clone().oneshot(request(Method::HEAD, "/n")).await?;
    assert_eq!(
        header_value(&miss, header::CONTENT_LENGTH).as_deref(),
        Some("5")
    );
    assert!(body(miss).await?.is_empty());
    let hit = service.clone().oneshot(request(Method::HEAD, "/n")).await?;
    assert_eq!(calls.get(), 1);
    assert_eq!(
        header_value(&hit, header::CONTENT_LENGTH).as_deref(),
        Some("5")
    );
    assert!(body(hit).await?.is_empty());
    // A GET's answer is left to the server to measure.
    let get_hit = service.clone().oneshot(get("/n")).await?;
    assert!(header_value(&get_hit, header::CONTENT_LENGTH).is_none());
    assert_eq!(body(get_hit).await?, "hello");
    Ok(())
}

// ---- CacheInfo and stats ----

#[tokio::test(start_paused = true)]
async fn cache_info_reports_status_age_and_refreshing() -> TestResult {
    let gate = Gate::new();
    let (origin, _calls) = origin({
        let gate = gate.clone();
        move |n, _| {
            let gate = gate.clone();
            async move {
                if n > 1 {
                    gate.wait().await;
                }
                Ok(reply_cc(format!("v{n}"), SWR_10_60))
            }
        }
    });
    let service = SwrLayer::new().layer(origin);

    let miss = service.clone().oneshot(get("/i")).await?;
    let miss_info = info(&miss);
    assert_eq!(miss_info.status, CacheStatus::Miss);
    assert!(miss_info.stored);
    assert!(!miss_info.refreshing);
    assert_eq!(miss_info.age, Some(Duration::ZERO));
    let stored_at = miss_info.stored_at.expect("a stored miss has a stored_at");

    advance(secs(5)).await;
    let fresh = info(&service.clone().oneshot(get("/i")).await?);
    assert_eq!(fresh.status, CacheStatus::Fresh);
    assert_eq!(fresh.age, Some(secs(5)));
    assert_eq!(fresh.stored_at, Some(stored_at));
    assert!(!fresh.refreshing);

    advance(secs(6)).await;
    let stale = info(&service.clone().oneshot(get("/i")).await?);
    assert_eq!(stale.status, CacheStatus::Stale);
    assert!(stale.refreshing, "the stale answer started a refresh");
    settle().await;
    let stale_again = info(&service.clone().oneshot(get("/i")).await?);
    assert_eq!(stale_again.status, CacheStatus::Stale);
    assert!(stale_again.refreshing, "the refresh is still running");

    gate.open();
    settle().await;
    let refreshed = service.clone().oneshot(get("/i")).await?;
    let refreshed_info = info(&refreshed);
    assert_eq!(refreshed_info.status, CacheStatus::Fresh);
    assert!(!refreshed_info.refreshing);
    assert_ne!(refreshed_info.stored_at, Some(stored_at));
    assert_eq!(body(refreshed).await?, "v2");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn cache_info_extension_can_be_turned_off() -> TestResult {
    let (origin, calls) = origin(|n, _| async move { Ok(reply_cc(format!("v{n}"), SWR_10_60)) });
    let service = SwrLayer::new().cache_info_extension(false).layer(origin);

    let miss = service.clone().oneshot(get("/i")).await?;
    advance(secs(2)).await;
    let hit = service.clone().oneshot(get("/i")).await?;
    advance(secs(10)).await;
    let stale = service.clone().oneshot(get("/i")).await?;
    let bypass = service.clone().oneshot(request(Method::POST, "/i")).await?;

    for response in [&miss, &hit, &stale, &bypass] {
        assert!(response
            .extensions()
            .get::<tower_swr::CacheInfo>()
            .is_none());
    }
    // Nothing else changes: the headers still say what happened.
    assert_eq!(cache_status(&miss), "tower-swr; fwd=uri-miss; stored");
    assert_eq!(cache_status(&hit), "tower-swr; hit; ttl=8");
    assert_eq!(age(&hit), Some(2));
    assert_eq!(cache_status(&stale), "tower-swr; hit; ttl=-2");
    assert_eq!(cache_status(&bypass), "tower-swr; fwd=method");
    assert_eq!(body(hit).await?, "v1");
    settle().await;
    assert_eq!(calls.get(), 3, "miss, refresh, POST");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn layer_stats_count_hits_misses_and_coalesced_waits() -> TestResult {
    let gate = Gate::new();
    let (origin, _calls) = origin({
        let gate = gate.clone();
        move |_, request: Request<ReqBody>| {
            let gate = gate.clone();
            async move {
                if request.uri().path() == "/gated" {
                    gate.wait().await;
                }
                Ok(reply_cc("x", SWR_10_60))
            }
        }
    });
    let layer = SwrLayer::new();
    // Two services made by one layer share its cache and counters.
    let service = layer.layer(origin.clone());
    let other = layer.layer(origin);

    body(service.clone().oneshot(get("/a")).await?).await?; // miss
    body(other.clone().oneshot(get("/a")).await?).await?; // fresh
    body(service.clone().oneshot(get("/a")).await?).await?; // fresh
    advance(secs(11)).await;
    body(service.clone().oneshot(get("/a")).await?).await?; // stale

    let gated: Vec<_> = (0..3)
        .map(|_| tokio::spawn(service.clone().oneshot(get("/gated"))))
        .collect();
    settle().await;
    gate.open();
    for request in gated {
        body(request.await??).await?; // 1 miss, 2 coalesced
    }

    let stats = layer.stats();
    assert_eq!(stats.misses, 2);
    assert_eq!(stats.fresh_hits, 2);
    assert_eq!(stats.stale_hits, 1);
    assert_eq!(stats.coalesced_waits, 2);
    assert_eq!(stats.bypasses, 0);
    assert_eq!(stats.entries, 2);
    Ok(())
}
