//! Cache keys: query strings, hosts and authorities, `key_fn`, and nested routers keyed on the
//! path the client sees.

mod common;

use axum::{routing, Router};
use bytes::Bytes;
use common::*;
use common::{body, Calls};
use http::{header, HeaderMap, HeaderName, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use tokio::net::TcpStream;
use tokio::time::{advance, timeout};
use tower::{Layer, ServiceExt};
use tower_swr::{CacheStatus, SwrLayer};

fn x_user() -> HeaderName {
    HeaderName::from_static("x-user")
}

/// Greets the `x-user` of the request.
fn per_user() -> (impl OriginService, Calls) {
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

/// A page naming the host the handler sees (`Host`, as axum-extra's `Host` extractor reads it,
/// else the URI's authority), behind the layer or not.
fn host_echo_app(calls: &Calls, cached: bool) -> Router {
    let calls = calls.clone();
    let router = Router::new().route(
        "/",
        routing::get(move |headers: HeaderMap, uri: Uri| {
            calls.record();
            async move {
                let host = headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
                    .or_else(|| uri.authority().map(|a| a.to_string()))
                    .unwrap_or_else(|| "nobody".into());
                format!("welcome to {host}")
            }
        }),
    );
    if cached {
        router.layer(SwrLayer::new())
    } else {
        router
    }
}

const ATTACK_H1: &str =
    "GET http://victim.test/ HTTP/1.1\r\nHost: attacker.test\r\nConnection: close\r\n\r\n";

/// One HTTP/2 (prior knowledge) request per connection, with an optional explicit `host`.
async fn h2_get(addr: SocketAddr, uri: &str, host: Option<&str>) -> (StatusCode, String) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let mut builder = Request::builder().uri(uri);
    if let Some(host) = host {
        builder = builder.header(header::HOST, host);
    }
    let request = builder.body(Empty::<Bytes>::new()).expect("request");
    let response = timeout(WIRE_TIMEOUT, sender.send_request(request))
        .await
        .expect("an answer in time")
        .expect("an answer");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

fn nested_app(a_calls: &Calls, b_calls: &Calls) -> (Router, SwrLayer) {
    let layer = SwrLayer::new();
    let a = {
        let calls = a_calls.clone();
        move || {
            let n = calls.record();
            async move { format!("a's x v{n}") }
        }
    };
    let b = {
        let calls = b_calls.clone();
        move || {
            let n = calls.record();
            async move { format!("b's x v{n}") }
        }
    };
    let app = Router::new()
        .nest(
            "/a",
            Router::new()
                .route("/x", routing::get(a))
                .layer(layer.clone()),
        )
        .nest(
            "/b",
            Router::new()
                .route("/x", routing::get(b))
                .layer(layer.clone()),
        );
    (app, layer)
}

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

#[tokio::test(start_paused = true)]
async fn non_utf8_hosts_never_share_entries() -> TestResult {
    let (o, calls) = origin(|_, request: Request<ReqBody>| async move {
        let host = request
            .headers()
            .get(header::HOST)
            .map_or(b"-".to_vec(), |h| h.as_bytes().to_vec());
        Ok(reply_cc(Bytes::from(host), "max-age=60"))
    });
    let service = SwrLayer::new().layer(o);
    let a = service
        .clone()
        .oneshot(get_raw("/page", "host", b"a\xff.example"))
        .await?;
    assert_eq!(body(a).await?, &b"a\xff.example"[..]);
    let b = service
        .clone()
        .oneshot(get_raw("/page", "host", b"b\xff.example"))
        .await?;
    assert_eq!(
        body(b).await?,
        &b"b\xff.example"[..],
        "host b got host a's page"
    );
    let none = service.clone().oneshot(get("/page")).await?;
    assert_eq!(
        body(none).await?,
        "-",
        "a Host-less request got another host's page"
    );
    assert_eq!(calls.get(), 3);
    Ok(())
}

#[tokio::test]
async fn absolute_form_request_with_another_host_does_not_poison_the_authoritys_entry() {
    // Without the layer the handler does render attacker.test for this request.
    let control = serve(host_echo_app(&Calls::default(), false)).await;
    let bare = exchange(control, ATTACK_H1, false).await.expect("answer");
    assert!(
        String::from_utf8_lossy(&bare.body).contains("attacker.test"),
        "the setup: the handler reads Host: {bare:?}"
    );

    let calls = Calls::default();
    let addr = serve(host_echo_app(&calls, true)).await;
    let attack = exchange(addr, ATTACK_H1, false).await.expect("answer");
    assert_eq!(attack.status, 200, "{attack:?}");
    for round in 0..3 {
        let victim = exchange(addr, &raw_get("/", "victim.test", ""), false)
            .await
            .expect("answer");
        let page = String::from_utf8_lossy(&victim.body).into_owned();
        assert_eq!(victim.status, 200);
        assert!(
            !page.contains("attacker.test"),
            "victim.test's user (round {round}) was served attacker.test's page: {page:?} \
             ({})",
            victim.cache_status()
        );
        assert_eq!(page, "welcome to victim.test");
    }
}

#[tokio::test]
async fn http2_authority_with_another_host_header_does_not_poison_the_authoritys_entry() {
    let control = serve(host_echo_app(&Calls::default(), false)).await;
    let (_, bare) = h2_get(control, "http://victim.test/", Some("attacker.test")).await;
    assert!(
        bare.contains("attacker.test"),
        "the setup: the host header reaches the handler over HTTP/2: {bare:?}"
    );

    let calls = Calls::default();
    let addr = serve(host_echo_app(&calls, true)).await;
    let (status, _) = h2_get(addr, "http://victim.test/", Some("attacker.test")).await;
    assert_eq!(status, StatusCode::OK);
    for round in 0..3 {
        let (status, page) = h2_get(addr, "http://victim.test/", None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            !page.contains("attacker.test"),
            "victim.test's user (round {round}) was served attacker.test's page: {page:?}"
        );
        assert_eq!(page, "welcome to victim.test");
    }
}

#[tokio::test(start_paused = true)]
async fn clones_of_one_layer_in_two_nests_keep_each_prefixs_own_entries() {
    let (a_calls, b_calls) = (Calls::default(), Calls::default());
    let (app, _) = nested_app(&a_calls, &b_calls);
    assert_eq!(
        app_text(app_send(&app, app_get("/a/x")).await).await,
        "a's x v1"
    );
    assert_eq!(
        app_text(app_send(&app, app_get("/b/x")).await).await,
        "b's x v1"
    );
    advance(secs(1)).await;
    assert_eq!(
        app_text(app_send(&app, app_get("/a/x")).await).await,
        "a's x v1"
    );
    assert_eq!(
        app_text(app_send(&app, app_get("/b/x")).await).await,
        "b's x v1"
    );
    assert_eq!((a_calls.get(), b_calls.get()), (1, 1), "one call per route");
}

#[tokio::test(start_paused = true)]
async fn purge_takes_the_path_the_client_sees_inside_a_nest() {
    let (a_calls, b_calls) = (Calls::default(), Calls::default());
    let (app, layer) = nested_app(&a_calls, &b_calls);
    assert_eq!(
        app_text(app_send(&app, app_get("/a/x")).await).await,
        "a's x v1"
    );
    assert_eq!(
        app_text(app_send(&app, app_get("/b/x")).await).await,
        "b's x v1"
    );
    let purged = layer.handle().purge("/a/x");
    assert!(purged >= 1, "purge(\"/a/x\") found nothing");
    let after = app_send(&app, app_get("/a/x")).await;
    assert_eq!(
        app_text(after).await,
        "a's x v2",
        "the purged /a/x is a miss"
    );
    assert_eq!(
        app_text(app_send(&app, app_get("/b/x")).await).await,
        "b's x v1"
    );
    assert_eq!(b_calls.get(), 1, "/b/x stays stored");
}

#[tokio::test(start_paused = true)]
async fn purge_prefix_takes_the_nest_prefix() {
    let (a_calls, b_calls) = (Calls::default(), Calls::default());
    let (app, layer) = nested_app(&a_calls, &b_calls);
    assert_eq!(
        app_text(app_send(&app, app_get("/a/x")).await).await,
        "a's x v1"
    );
    assert_eq!(
        app_text(app_send(&app, app_get("/b/x")).await).await,
        "b's x v1"
    );
    assert!(layer.handle().purge_prefix("/b/") >= 1, "nothing under /b/");
    assert_eq!(
        app_text(app_send(&app, app_get("/b/x")).await).await,
        "b's x v2"
    );
    assert_eq!(
        app_text(app_send(&app, app_get("/a/x")).await).await,
        "a's x v1"
    );
}

/// A page naming the `Host` it was rendered for (or the URI's authority), fresh for 10 min.
fn host_page() -> (impl OriginService, Calls) {
    origin(|_, request: Request<ReqBody>| async move {
        let host = (request.headers().get(header::HOST))
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| request.uri().authority().map(|a| a.to_string()))
            .unwrap_or_default();
        Ok(reply_cc(format!("for {host}"), "max-age=600"))
    })
}

/// RFC 9110 §4.2.3: hosts compare case-insensitively, so `Host: EXAMPLE.com` and
/// `Host: example.com` name one resource and share one entry, whichever comes first.
#[tokio::test(start_paused = true)]
async fn a_host_in_capitals_shares_the_entry_of_the_lowercase_host() {
    for (first, second) in [
        ("EXAMPLE.com", "example.com"),
        ("example.com", "Example.COM"),
    ] {
        let (o, calls) = host_page();
        let service = SwrLayer::new().layer(o);
        let stored = service
            .clone()
            .oneshot(get_with("/p", header::HOST, first))
            .await
            .unwrap();
        assert_eq!(info(&stored).status, CacheStatus::Miss);
        let again = service
            .clone()
            .oneshot(get_with("/p", header::HOST, second))
            .await
            .unwrap();
        assert_eq!(
            info(&again).status,
            CacheStatus::Fresh,
            "{first} then {second}"
        );
        assert_eq!(calls.get(), 1);
    }
}

/// RFC 9110 §4.2.3: `https://example.com:443` is the origin `https://example.com`. With the
/// scheme in the target (HTTP/2, absolute form) the default port names no other entry, and
/// the HTTP/1 request with `Host: example.com` shares it too.
#[tokio::test(start_paused = true)]
async fn an_authority_with_its_schemes_default_port_shares_the_entry_without_it() {
    let (o, calls) = host_page();
    let service = SwrLayer::new().layer(o);
    let first = service
        .clone()
        .oneshot(get("https://example.com:443/p"))
        .await
        .unwrap();
    assert_eq!(info(&first).status, CacheStatus::Miss);
    for again in [
        get("https://example.com/p"),
        get("http://EXAMPLE.com:80/p"),
        get_with("/p", header::HOST, "example.com"),
    ] {
        let uri = again.uri().clone();
        let answer = service.clone().oneshot(again).await.unwrap();
        assert_eq!(info(&answer).status, CacheStatus::Fresh, "{uri}");
    }
    assert_eq!(calls.get(), 1);
    // Another port is another origin.
    let other = service
        .clone()
        .oneshot(get("https://example.com:8443/p"))
        .await
        .unwrap();
    assert_eq!(info(&other).status, CacheStatus::Miss);
}

/// Without the scheme, a `Host` header's port is keyed as sent: `example.com:443` over plain
/// HTTP is another origin, and an application echoing the port into its page must not have
/// that page served to `example.com`'s users (the "unkeyed port" of web cache poisoning).
#[tokio::test(start_paused = true)]
async fn a_host_headers_port_is_keyed_as_sent() {
    let (o, calls) = host_page();
    let service = SwrLayer::new().layer(o);
    for host in ["example.com:443", "example.com:80", "example.com"] {
        let answer = service
            .clone()
            .oneshot(get_with("/p", header::HOST, host))
            .await
            .unwrap();
        assert_eq!(info(&answer).status, CacheStatus::Miss, "{host}");
        assert_eq!(body(answer).await.unwrap(), format!("for {host}"));
    }
    assert_eq!(calls.get(), 3);
}
