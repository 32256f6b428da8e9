//! Stale-while-revalidate: stale answers at once with one background refresh, what the refresh
//! sends, directives that forbid stale serving, and early (XFetch) refreshes of fresh entries.

mod common;

use bytes::Bytes;
use common::*;
use http::{header, HeaderName, Method, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::time::advance;
use tower::{Layer, ServiceExt};
use tower_swr::{CacheStatus, SwrLayer};
use tower_test::mock;

/// A header line of a request, or `None`.
fn line(request: &Request<ReqBody>, name: &str) -> Option<String> {
    request
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

/// A request extension, as a router or an auth layer would add.
#[derive(Clone, Debug, PartialEq)]
struct Tenant(&'static str);

#[tokio::test(start_paused = true)]
async fn stale_requests_are_answered_at_once_while_one_refresh_runs() -> TestResult {
    let gate = Gate::new();
    let (origin, calls) = gated_after_first(&gate, SWR_10_60);
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
async fn app_preset_default_stale_windows_yield_to_directives_that_forbid_stale() -> TestResult {
    // Control: without such a directive the default windows serve stale.
    let (o, _) = then_503("max-age=10");
    let service = SwrLayer::new().layer(o);
    body(service.clone().oneshot(get("/c")).await?).await?;
    advance(secs(11)).await;
    let stale = service.clone().oneshot(get("/c")).await?;
    assert_eq!(info(&stale).status, CacheStatus::Stale);

    for cache_control in [
        "max-age=10, must-revalidate",
        "max-age=10, proxy-revalidate",
        "s-maxage=10",
        "no-cache",
    ] {
        let (o, calls) = then_503(cache_control);
        let service = SwrLayer::new().layer(o);
        let first = service.clone().oneshot(get("/c")).await?;
        assert!(info(&first).stored, "{cache_control}: stored");
        advance(secs(11)).await;
        let next = service.clone().oneshot(get("/c")).await?;
        assert_eq!(calls.get(), 2, "{cache_control}: must go to the origin");
        assert_eq!(
            next.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{cache_control}: no default stale-if-error either"
        );
        assert_eq!(info(&next).status, CacheStatus::Miss, "{cache_control}");
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn early_refresh_refreshes_a_fresh_entry_before_expiry() -> TestResult {
    // The origin takes 1 s: XFetch weighs the refresh by how slow the origin is.
    let slow = || {
        origin(|n, _| async move {
            tokio::time::sleep(secs(1)).await;
            Ok(reply_cc(format!("v{n}"), "max-age=100"))
        })
    };

    // beta = 1, 99 s from expiry: practically never.
    let (o, calls) = slow();
    let service = SwrLayer::new().early_refresh(1.0).layer(o);
    for i in 0..10 {
        call(&service, get(&format!("/x/{i}"))).await?;
        let (status, _) = call(&service, get(&format!("/x/{i}"))).await?;
        assert_eq!(status, CacheStatus::Fresh);
    }
    settle().await;
    assert_eq!(calls.get(), 10);

    // A huge beta: the first hit after storing already refreshes.
    let (o, calls) = slow();
    let layer = SwrLayer::new().early_refresh(1e9);
    let service = layer.layer(o);
    let mut first = Vec::new();
    for i in 0..10 {
        let (_, stored) = call(&service, get(&format!("/x/{i}"))).await?;
        let hit = service.clone().oneshot(get(&format!("/x/{i}"))).await?;
        assert_eq!(info(&hit).status, CacheStatus::Fresh);
        assert!(info(&hit).refreshing, "key {i}");
        assert_eq!(
            body(hit).await?,
            stored,
            "the hit itself is the stored answer"
        );
        first.push(stored);
    }
    tokio::time::sleep(secs(2)).await;
    assert_eq!(calls.get(), 20);
    assert_eq!(layer.stats().refreshes_succeeded, 10);
    for (i, stored) in first.iter().enumerate() {
        let (status, refreshed) = call(&service, get(&format!("/x/{i}"))).await?;
        assert_eq!(status, CacheStatus::Fresh);
        assert_ne!(&refreshed, stored, "key {i} was refreshed before expiry");
    }
    Ok(())
}
