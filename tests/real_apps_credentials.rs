//! Issue 11, item 11: custom credential headers (`X-Api-Key` and the like) named by the user are
//! treated like `Authorization`.
//!
//! WRITTEN AGAINST AN API THAT DOES NOT EXIST YET: `SwrLayer::credential_headers(names)`, the
//! builder method this file assumes the fix adds ("Let users name such headers (treated like
//! `Authorization`)"). Until then this file does not compile, which is why it is apart from
//! `tests/real_apps.rs`. If the fix names the method differently, rename it here.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, Response, StatusCode};
use axum::routing;
use axum::Router;
use common::{body, Calls};
use tokio::time::advance;
use tower::ServiceExt;
use tower_swr::SwrLayer;

fn req(headers: &[(&str, &str)]) -> Request<Body> {
    let mut builder = Request::builder().method(Method::GET).uri("/me");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::empty()).expect("valid request")
}

async fn send(app: &Router, request: Request<Body>) -> Response<Body> {
    match app.clone().oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

async fn text(response: Response<Body>) -> String {
    let bytes = body(response).await.expect("a body");
    String::from_utf8(bytes.to_vec()).expect("UTF-8")
}

/// `/me`: a per-key answer without `Cache-Control`, naming the key (or the bearer) and the call.
fn per_key_app(calls: &Calls, layer: SwrLayer) -> Router {
    let calls = calls.clone();
    Router::new()
        .route(
            "/me",
            routing::get(move |headers: HeaderMap| {
                let n = calls.record();
                async move {
                    let who = headers
                        .get("x-api-key")
                        .or_else(|| headers.get("authorization"))
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("anonymous")
                        .to_owned();
                    Response::builder()
                        .status(StatusCode::OK)
                        .body(Body::from(format!("account of {who} (call {n})")))
                        .expect("response")
                }
            }),
        )
        .layer(layer)
}

#[tokio::test(start_paused = true)]
async fn answers_to_a_named_credential_header_are_not_shared_between_keys() {
    let calls = Calls::default();
    let app = per_key_app(&calls, SwrLayer::new().credential_headers(["x-api-key"]));
    let a = text(send(&app, req(&[("x-api-key", "a")])).await).await;
    assert!(a.starts_with("account of a "), "{a}");
    advance(Duration::from_secs(1)).await;
    let b = text(send(&app, req(&[("x-api-key", "b")])).await).await;
    assert!(
        b.starts_with("account of b "),
        "key b was served key a's answer: {b}"
    );
    assert_eq!(calls.get(), 2, "each key asked the origin");
}

#[tokio::test(start_paused = true)]
async fn answers_to_a_named_credential_header_are_not_served_to_anonymous_requests() {
    let calls = Calls::default();
    let app = per_key_app(&calls, SwrLayer::new().credential_headers(["x-api-key"]));
    let a = text(send(&app, req(&[("x-api-key", "a")])).await).await;
    assert!(a.starts_with("account of a "), "{a}");
    advance(Duration::from_secs(1)).await;
    let anonymous = text(send(&app, req(&[])).await).await;
    assert!(
        anonymous.starts_with("account of anonymous "),
        "an anonymous request was served key a's answer: {anonymous}"
    );
}

/// Like `Authorization`: a credentialed answer is not stored at all, so the same key asks again.
#[tokio::test(start_paused = true)]
async fn a_named_credential_header_is_treated_like_authorization() {
    for (name, value) in [("x-api-key", "a"), ("authorization", "Bearer a")] {
        let calls = Calls::default();
        let app = per_key_app(&calls, SwrLayer::new().credential_headers(["x-api-key"]));
        for round in 1..=2 {
            let answer = text(send(&app, req(&[(name, value)])).await).await;
            assert!(
                answer.ends_with(&format!("(call {round})")),
                "{name}: {answer}"
            );
            advance(Duration::from_secs(1)).await;
        }
        assert_eq!(calls.get(), 2, "{name}: not stored");
    }
}

/// Header names are case-insensitive, and several can be named.
#[tokio::test(start_paused = true)]
async fn several_credential_headers_can_be_named_in_any_case() {
    let calls = Calls::default();
    let app = per_key_app(
        &calls,
        SwrLayer::new().credential_headers(["X-Api-Key", "x-session-token"]),
    );
    let first = text(send(&app, req(&[("x-session-token", "s1")])).await).await;
    advance(Duration::from_secs(1)).await;
    let second = text(send(&app, req(&[("x-session-token", "s2")])).await).await;
    assert_ne!(first, second, "x-session-token answers were shared");
    let a = text(send(&app, req(&[("x-api-key", "a")])).await).await;
    let b = text(send(&app, req(&[("x-api-key", "b")])).await).await;
    assert!(
        b.starts_with("account of b "),
        "X-Api-Key answers were shared: {a} / {b}"
    );
}
