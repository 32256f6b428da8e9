//! Methods: only GET (and HEAD) are cached; HEAD answered from the GET entry, HEAD misses with
//! and without `convert_head`; upgrades, CONNECT and unsafe methods bypass the cache.

mod common;

use axum::body::Body;
use axum::routing::MethodFilter;
use axum::{routing, Router};
use common::*;
use common::{body, settle, Calls, Gate};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use std::sync::{Arc, Mutex};
use tokio::time::{advance, timeout};
use tower::{Layer, ServiceExt};
use tower_swr::{CacheStatus, SwrLayer};

const PAGE: &str = "<html><body>the whole page, with every byte of it</body></html>";

fn page_and_meta_app(page_calls: &Calls, meta_calls: &Calls) -> Router {
    let page = {
        let calls = page_calls.clone();
        move || {
            calls.record();
            async move { app_respond(StatusCode::OK, &[("content-type", "text/html")], PAGE) }
        }
    };
    let meta = {
        let calls = meta_calls.clone();
        move || {
            calls.record();
            async move { app_respond(StatusCode::OK, &[("x-meta", "1")], Body::empty()) }
        }
    };
    Router::new()
        .route("/p", routing::get(page).head(meta))
        .layer(SwrLayer::new())
}

async fn assert_full_page(app: &Router, when: &str) {
    let response = app_send(app, app_get("/p")).await;
    assert_eq!(response.status(), StatusCode::OK, "{when}");
    let length = header_of(&response, "content-length");
    let status = statuses(&response);
    let page = app_text(response).await;
    assert_eq!(page, PAGE, "{when}: GET got another body ({status})");
    if let Some(length) = length {
        assert_eq!(length, PAGE.len().to_string(), "{when}: Content-Length");
    }
}

/// `/chat`: the page to plain `GET`s (after `gate` opens, if given), `101 Switching Protocols`
/// to requests asking for an upgrade, like a hand-written WebSocket route. `/chat` also takes
/// `CONNECT` (extended CONNECT, RFC 8441).
fn chat_app(page_calls: &Calls, upgrade_calls: &Calls, gate: Option<Gate>) -> (Router, SwrLayer) {
    let page_calls = page_calls.clone();
    let upgrade_calls = upgrade_calls.clone();
    let connect_calls = upgrade_calls.clone();
    let layer = SwrLayer::new();
    let handler = move |headers: HeaderMap| {
        let page_calls = page_calls.clone();
        let upgrade_calls = upgrade_calls.clone();
        let gate = gate.clone();
        async move {
            if let Some(protocol) = headers.get(header::UPGRADE) {
                upgrade_calls.record();
                let protocol = protocol.to_str().unwrap_or("websocket").to_owned();
                return app_respond(
                    StatusCode::SWITCHING_PROTOCOLS,
                    &[
                        ("upgrade", protocol.as_str()),
                        ("connection", "upgrade"),
                        ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
                    ],
                    Body::empty(),
                );
            }
            let n = page_calls.record();
            if let Some(gate) = gate {
                gate.wait().await;
            }
            app_respond(
                StatusCode::OK,
                &[("content-type", "text/html")],
                format!("chat page v{n}"),
            )
        }
    };
    let connect = move || {
        let n = connect_calls.record();
        // A 2xx to CONNECT has no body (axum drops it): the call's number is in a header.
        async move {
            app_respond(
                StatusCode::OK,
                &[("x-tunnel", &n.to_string())],
                Body::empty(),
            )
        }
    };
    let app = Router::new()
        .route(
            "/chat",
            routing::get(handler).on(MethodFilter::CONNECT, connect),
        )
        .layer(layer.clone());
    (app, layer)
}

fn websocket_handshake() -> Request<Body> {
    app_req(
        Method::GET,
        "/chat",
        &[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
    )
}

fn assert_not_from_cache<B>(response: &Response<B>, what: &str) {
    let status = statuses(response);
    assert!(
        !status.contains("hit") && !status.contains("fwd=stale") && !status.contains("collapsed"),
        "{what}: answered from the cache ({status})"
    );
    if let Some(info) = cache_info(response) {
        assert!(
            !matches!(
                info.status,
                CacheStatus::Fresh
                    | CacheStatus::Stale
                    | CacheStatus::StaleIfError
                    | CacheStatus::Collapsed
            ),
            "{what}: answered from the cache ({info:?})"
        );
    }
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
    for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
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
    assert_eq!(layer.stats().bypasses, 8);
    // None of their answers was stored (and the first POST invalidated the GET entry).
    assert_eq!(layer.stats().entries, 0);
    Ok(())
}

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

#[tokio::test(start_paused = true)]
async fn only_get_and_head_are_cached() -> TestResult {
    let (o, calls) = origin(|n, request: Request<ReqBody>| async move {
        Ok(reply_cc(
            format!("{} {n}", request.method()),
            "public, max-age=60",
        ))
    });
    let service = SwrLayer::new().convert_head(true).layer(o);
    let mut expected = 0;
    for method in ["OPTIONS", "PROPFIND", "POST"] {
        let method = Method::from_bytes(method.as_bytes())?;
        for _ in 0..2 {
            let response = service
                .clone()
                .oneshot(request(method.clone(), "/m"))
                .await?;
            expected += 1;
            assert_eq!(calls.get(), expected, "{method} reaches the origin");
            assert_eq!(cache_status(&response), "tower-swr; fwd=method");
        }
    }
    // Nothing those methods got was stored for GET.
    let response = service.clone().oneshot(get("/m")).await?;
    assert_eq!(calls.get(), expected + 1);
    assert_eq!(body(response).await?, format!("GET {}", expected + 1));

    // A HEAD miss asks the origin with GET and stores the answer (nginx's
    // proxy_cache_convert_head): the HEAD gets the headers only, later HEADs and GETs hit.
    let head = service.clone().oneshot(request(Method::HEAD, "/h")).await?;
    assert_eq!(calls.get(), expected + 2);
    assert_eq!(cache_status(&head), "tower-swr; fwd=uri-miss; stored");
    assert!(body(head).await?.is_empty());
    let head_again = service.clone().oneshot(request(Method::HEAD, "/h")).await?;
    assert_eq!(info(&head_again).status, CacheStatus::Fresh);
    assert!(body(head_again).await?.is_empty());
    let get_after_head = service.clone().oneshot(get("/h")).await?;
    assert_eq!(info(&get_after_head).status, CacheStatus::Fresh);
    assert_eq!(body(get_after_head).await?, format!("GET {}", expected + 2));
    assert_eq!(calls.get(), expected + 2);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn head_misses_pass_through_unstored_when_not_converted() -> TestResult {
    let (o, calls) = origin(|n, request: Request<ReqBody>| async move {
        Ok(reply_cc(
            format!("{} {n}", request.method()),
            "public, max-age=60",
        ))
    });
    let service = SwrLayer::new().convert_head(false).layer(o);
    for n in 1..=2 {
        let head = service.clone().oneshot(request(Method::HEAD, "/h")).await?;
        assert_eq!(calls.get(), n, "every HEAD miss reaches the origin");
        assert_eq!(cache_status(&head), "tower-swr; fwd=uri-miss");
        assert_eq!(body(head).await?, format!("HEAD {n}"));
    }
    let get_after_head = service.clone().oneshot(get("/h")).await?;
    assert_eq!(info(&get_after_head).status, CacheStatus::Miss);
    assert_eq!(body(get_after_head).await?, "GET 3");
    // A HEAD is still answered from the stored GET.
    let head = service.clone().oneshot(request(Method::HEAD, "/h")).await?;
    assert_eq!(info(&head).status, CacheStatus::Fresh);
    assert_eq!(calls.get(), 3);
    Ok(())
}

/// Two HEAD requests alone make one origin call once HEAD misses are converted to GET.
#[tokio::test(start_paused = true)]
async fn head_alone_is_cached_when_converted() -> TestResult {
    let (o, calls) = moody(None, Mode::default());
    let service = SwrLayer::new().convert_head(true).layer(o);
    service.clone().oneshot(request(Method::HEAD, "/h")).await?;
    let second = service.clone().oneshot(request(Method::HEAD, "/h")).await?;
    assert_eq!(calls.get(), 1, "{}", cache_status(&second));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn head_handler_answer_is_never_stored_as_the_get_entry() {
    let (page_calls, meta_calls) = (Calls::default(), Calls::default());
    let app = page_and_meta_app(&page_calls, &meta_calls);
    let head = app_send(&app, app_req(Method::HEAD, "/p", &[])).await;
    assert_eq!(head.status(), StatusCode::OK);
    assert!(app_text(head).await.is_empty(), "a HEAD answer has no body");
    settle().await;
    assert_full_page(&app, "GET after a HEAD").await;
    advance(secs(5)).await;
    assert_full_page(&app, "second GET after a HEAD").await;
    assert!(page_calls.get() >= 1, "the GET handler rendered the page");
}

#[tokio::test]
async fn head_first_then_get_on_the_wire_carries_the_pages_length() {
    let app = page_and_meta_app(&Calls::default(), &Calls::default());
    let addr = serve(app).await;
    let head = exchange(
        addr,
        "HEAD /p HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
        true,
    )
    .await
    .expect("HEAD answers");
    assert_eq!(head.status, 200);
    for round in 0..2 {
        let page = exchange(addr, &raw_get("/p", "app.test", ""), false)
            .await
            .expect("GET answers");
        assert_eq!(page.status, 200);
        assert_eq!(
            String::from_utf8_lossy(&page.body),
            PAGE,
            "GET {round} after a HEAD: {page:?}"
        );
        if let Some(length) = page.header("content-length") {
            assert_eq!(length, PAGE.len().to_string(), "{page:?}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn get_then_head_then_get_still_serves_the_full_page() {
    let (page_calls, meta_calls) = (Calls::default(), Calls::default());
    let app = page_and_meta_app(&page_calls, &meta_calls);
    assert_full_page(&app, "first GET").await;
    let head = app_send(&app, app_req(Method::HEAD, "/p", &[])).await;
    assert_eq!(head.status(), StatusCode::OK);
    assert!(app_text(head).await.is_empty(), "a HEAD answer has no body");
    advance(secs(1)).await;
    assert_full_page(&app, "GET after GET and HEAD").await;
}

#[tokio::test(start_paused = true)]
async fn websocket_handshake_after_the_page_is_cached_reaches_the_handler_and_gets_101() {
    let (page_calls, upgrade_calls) = (Calls::default(), Calls::default());
    let (app, _) = chat_app(&page_calls, &upgrade_calls, None);
    assert_eq!(
        app_text(app_send(&app, app_get("/chat")).await).await,
        "chat page v1"
    );
    advance(secs(1)).await;
    assert_eq!(
        app_text(app_send(&app, app_get("/chat")).await).await,
        "chat page v1"
    );
    for round in 1..=2 {
        let handshake = app_send(&app, websocket_handshake()).await;
        assert_eq!(
            handshake.status(),
            StatusCode::SWITCHING_PROTOCOLS,
            "handshake {round} after the page was cached ({})",
            statuses(&handshake)
        );
        assert_eq!(
            upgrade_calls.get(),
            round,
            "the handshake reached the handler"
        );
        assert_not_from_cache(&handshake, "the handshake");
    }
    // The page is still cached for plain GETs.
    assert_eq!(
        app_text(app_send(&app, app_get("/chat")).await).await,
        "chat page v1"
    );
    assert_eq!(page_calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn websocket_handshake_while_a_get_miss_is_in_flight_does_not_join_it() {
    let (page_calls, upgrade_calls) = (Calls::default(), Calls::default());
    let gate = Gate::new();
    let (app, _) = chat_app(&page_calls, &upgrade_calls, Some(gate.clone()));
    let pending_get = tokio::spawn({
        let app = app.clone();
        async move { app_text(app_send(&app, app_get("/chat")).await).await }
    });
    settle().await;
    assert_eq!(page_calls.get(), 1, "the GET miss is at the origin");

    let handshake = timeout(secs(1), app_send(&app, websocket_handshake()))
        .await
        .expect("the handshake is answered without waiting for the GET's origin call");
    assert_eq!(handshake.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(upgrade_calls.get(), 1);
    assert_not_from_cache(&handshake, "the handshake");

    gate.open();
    assert_eq!(pending_get.await.expect("the GET ends"), "chat page v1");
}

#[tokio::test(start_paused = true)]
async fn websocket_handshake_on_a_cold_path_is_not_stored_and_every_handshake_upgrades() {
    let (page_calls, upgrade_calls) = (Calls::default(), Calls::default());
    let (app, _) = chat_app(&page_calls, &upgrade_calls, None);
    let handshake = app_send(&app, websocket_handshake()).await;
    assert_eq!(handshake.status(), StatusCode::SWITCHING_PROTOCOLS);
    settle().await;
    let page = app_send(&app, app_get("/chat")).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(app_text(page).await, "chat page v1");
    let again = app_send(&app, websocket_handshake()).await;
    assert_eq!(again.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(upgrade_calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn any_upgrade_request_bypasses_a_cached_page() {
    let (page_calls, upgrade_calls) = (Calls::default(), Calls::default());
    let (app, _) = chat_app(&page_calls, &upgrade_calls, None);
    assert_eq!(
        app_text(app_send(&app, app_get("/chat")).await).await,
        "chat page v1"
    );
    for (n, protocol) in ["h2c", "IRC/6.9", "websocket"].into_iter().enumerate() {
        let upgrade = app_send(
            &app,
            app_req(
                Method::GET,
                "/chat",
                &[("connection", "keep-alive, Upgrade"), ("upgrade", protocol)],
            ),
        )
        .await;
        assert_eq!(
            upgrade.status(),
            StatusCode::SWITCHING_PROTOCOLS,
            "Upgrade: {protocol} ({})",
            statuses(&upgrade)
        );
        assert_eq!(upgrade_calls.get(), n + 1, "Upgrade: {protocol}");
        assert_not_from_cache(&upgrade, protocol);
    }
}

#[tokio::test(start_paused = true)]
async fn connect_and_extended_connect_bypass_the_cache() {
    let (page_calls, upgrade_calls) = (Calls::default(), Calls::default());
    let (app, _) = chat_app(&page_calls, &upgrade_calls, None);
    assert_eq!(
        app_text(app_send(&app, app_get("/chat")).await).await,
        "chat page v1"
    );
    for n in 1..=2 {
        let response = app_send(&app, app_req(Method::CONNECT, "/chat", &[])).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_not_from_cache(&response, "CONNECT");
        assert_eq!(
            header_of(&response, "x-tunnel"),
            Some(n.to_string()),
            "CONNECT {n}"
        );
    }
    for n in 3..=4 {
        let mut request = app_req(Method::CONNECT, "/chat", &[("sec-websocket-version", "13")]);
        request
            .extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        let response = app_send(&app, request).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_not_from_cache(&response, "extended CONNECT");
        assert_eq!(
            header_of(&response, "x-tunnel"),
            Some(n.to_string()),
            "extended CONNECT {n}"
        );
    }
}

/// A HEAD miss leads the flight with a GET: a GET arriving meanwhile is collapsed onto it and
/// gets the body; the HEAD gets the GET's headers (with its length) and no body.
#[tokio::test(start_paused = true)]
async fn a_head_miss_and_a_get_share_one_get_to_the_origin() -> TestResult {
    let gate = Gate::new();
    let g = gate.clone();
    let methods = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&methods);
    let (o, calls) = origin(move |_, request: Request<ReqBody>| {
        let gate = g.clone();
        seen.lock().expect("methods").push(request.method().clone());
        async move {
            gate.wait().await;
            let response = reply_cc("body", "max-age=60");
            Ok::<_, BoxError>(with_header(response, header::CONTENT_LENGTH, "4"))
        }
    });
    let service = SwrLayer::new().convert_head(true).layer(o);
    let head = tokio::spawn(service.clone().oneshot(request(Method::HEAD, "/r")));
    settle().await;
    let get = tokio::spawn(service.clone().oneshot(get("/r")));
    settle().await;
    gate.open();
    let head = head.await??;
    let get = get.await??;
    assert_eq!(calls.get(), 1);
    assert_eq!(*methods.lock().expect("methods"), [Method::GET]);
    assert_eq!(cache_status(&head), "tower-swr; fwd=uri-miss; stored");
    assert_eq!(
        header_value(&head, header::CONTENT_LENGTH).as_deref(),
        Some("4")
    );
    assert!(body(head).await?.is_empty());
    assert_eq!(cache_status(&get), "tower-swr; fwd=uri-miss; collapsed");
    assert_eq!(body(get).await?, "body");
    Ok(())
}

/// A HEAD miss whose GET answer may not be stored still gets no body; a conditional HEAD miss
/// is answered 304 from the stored GET (the origin saw no conditional).
#[tokio::test(start_paused = true)]
async fn head_misses_get_no_body_on_every_path() -> TestResult {
    let conditionals = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&conditionals);
    let (o, _calls) = origin(move |_, request: Request<ReqBody>| {
        seen.lock()
            .expect("seen")
            .push(request.headers().contains_key(header::IF_NONE_MATCH));
        let path = request.uri().path().to_owned();
        async move {
            let response = if path == "/nostore" {
                reply_cc("secret", "no-store")
            } else {
                with_header(reply_cc("body", "max-age=60"), header::ETAG, "\"e1\"")
            };
            Ok::<_, BoxError>(with_header(response, header::CONTENT_LENGTH, "4"))
        }
    });
    let service = SwrLayer::new().convert_head(true).layer(o);

    let head = service
        .clone()
        .oneshot(request(Method::HEAD, "/nostore"))
        .await?;
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(cache_status(&head), "tower-swr; fwd=uri-miss");
    assert_eq!(
        header_value(&head, header::CONTENT_LENGTH).as_deref(),
        Some("4")
    );
    assert!(body(head).await?.is_empty());

    let mut conditional = request(Method::HEAD, "/etag");
    conditional
        .headers_mut()
        .insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"e1\""));
    let head = service.clone().oneshot(conditional).await?;
    assert_eq!(head.status(), StatusCode::NOT_MODIFIED);
    assert!(body(head).await?.is_empty());
    assert_eq!(*conditionals.lock().expect("seen"), [false, false]);
    Ok(())
}
