//! What is never shared: `no-store`, `private` (also qualified), `Set-Cookie`, requests with
//! `Authorization`, `Cookie` or user-named credential headers unless the response allows it.

mod common;

use axum::body::Body;
use axum::{routing, Router};
use common::*;
use common::{body, settle, Calls, Gate};
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use std::time::Duration;
use tokio::time::advance;
use tower::{Layer, ServiceExt};
use tower_swr::{CacheStatus, SwrLayer};

fn by_path_cache_control() -> (impl OriginService, Calls) {
    origin(|n, request: Request<ReqBody>| async move {
        let cc = match request.uri().path() {
            "/public" => "public, max-age=60",
            "/s-maxage" => "s-maxage=60",
            _ => "max-age=60",
        };
        Ok(reply_cc(format!("v{n}"), cc))
    })
}

fn me_req(headers: &[(&str, &str)]) -> Request<Body> {
    let mut builder = Request::builder().method(Method::GET).uri("/me");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::empty()).expect("valid request")
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
            // Without Cache-Control the default lifetime would store it, but for the cookie.
            "/cookie-default" => with_header(response, header::SET_COOKIE, "session=abc"),
            _ => unreachable!(),
        })
    });
    let layer = SwrLayer::new();
    let service = layer.layer(origin);

    let mut expected = 0;
    for path in ["/no-store", "/private", "/cookie", "/cookie-default"] {
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
async fn qualified_private_and_no_cache_strip_the_named_fields() -> TestResult {
    let (o, calls) = origin(|_, request: Request<ReqBody>| async move {
        let cc = match request.uri().path() {
            "/private" => "max-age=60, private=\"x-user, x-team\"",
            _ => "max-age=60, no-cache=\"x-foo\"",
        };
        Ok(respond(
            200,
            "shared part",
            &[
                ("cache-control", cc),
                ("x-user", "alice"),
                ("x-team", "red"),
                ("x-foo", "bar"),
                ("x-other", "kept"),
            ],
        ))
    });
    let service = SwrLayer::shared_cache().layer(o);
    for (path, stripped) in [
        ("/private", &["x-user", "x-team"][..]),
        ("/no-cache", &["x-foo"][..]),
    ] {
        body(service.clone().oneshot(get(path)).await?).await?;
        let hit = service.clone().oneshot(get(path)).await?;
        assert_eq!(info(&hit).status, CacheStatus::Fresh, "{path} is reused");
        for name in stripped {
            assert!(hit.headers().get(*name).is_none(), "{path}: {name} stored");
        }
        assert_eq!(header_value(&hit, "x-other").as_deref(), Some("kept"));
        assert_eq!(body(hit).await?, "shared part");
    }
    assert_eq!(calls.get(), 2);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn cookie_requests_use_only_explicitly_shareable_responses() -> TestResult {
    let (o, calls) = by_path_cache_control();
    let service = SwrLayer::new().layer(o);
    let with_cookie = |path: &str| get_with(path, header::COOKIE, "session=alice");

    // A stored anonymous response is not handed to a request with Cookie.
    status_of(&service, get("/plain")).await?;
    let cookie = service.clone().oneshot(with_cookie("/plain")).await?;
    assert_eq!(calls.get(), 2);
    assert_eq!(cache_status(&cookie), "tower-swr; fwd=uri-miss");
    // ...nor is the answer to a request with Cookie stored.
    status_of(&service, with_cookie("/fresh")).await?;
    assert_eq!(status_of(&service, get("/fresh")).await?, CacheStatus::Miss);
    assert_eq!(calls.get(), 4);

    // public and s-maxage responses are stored and shared with Cookie requests.
    for path in ["/public", "/s-maxage"] {
        status_of(&service, with_cookie(path)).await?;
        assert_eq!(
            status_of(&service, with_cookie(path)).await?,
            CacheStatus::Fresh,
            "{path}"
        );
        assert_eq!(status_of(&service, get(path)).await?, CacheStatus::Fresh);
    }
    assert_eq!(calls.get(), 6);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn cache_cookie_requests_opts_out_of_the_cookie_rule() -> TestResult {
    let (o, calls) = by_path_cache_control();
    let service = SwrLayer::new().cache_cookie_requests(true).layer(o);
    status_of(&service, get_with("/plain", header::COOKIE, "_ga=1")).await?;
    assert_eq!(
        status_of(&service, get_with("/plain", header::COOKIE, "_ga=2")).await?,
        CacheStatus::Fresh
    );
    assert_eq!(
        status_of(&service, get("/plain")).await?,
        CacheStatus::Fresh
    );
    assert_eq!(calls.get(), 1);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn set_cookie_responses_are_never_stored() -> TestResult {
    let (o, calls) = origin(|_, _| async move {
        Ok(respond(
            200,
            "x",
            &[
                ("cache-control", "public, s-maxage=60, max-age=60"),
                ("set-cookie", "session=abc"),
            ],
        ))
    });
    let service = SwrLayer::new().cache_cookie_requests(true).layer(o);
    for _ in 0..2 {
        let response = service.clone().oneshot(get("/sc")).await?;
        assert!(!info(&response).stored);
        assert_eq!(
            header_value(&response, header::SET_COOKIE).as_deref(),
            Some("session=abc"),
            "the origin's Set-Cookie still reaches its own client"
        );
    }
    assert_eq!(calls.get(), 2);
    Ok(())
}

/// Under either preset, an answer to a request with `Authorization` is stored only when the
/// response says it may be shared (`public`, `s-maxage`, `must-revalidate`; under `new()` also
/// `must-revalidate` without a max-age of its own); `max-age` alone is not enough.
#[tokio::test(start_paused = true)]
async fn authorization_answers_shared_with_s_maxage_or_must_revalidate_only() -> TestResult {
    for preset in ["new", "shared_cache"] {
        let (o, calls) = origin(|n, request: Request<ReqBody>| async move {
            let cc = match request.uri().path() {
                "/s-maxage" => "s-maxage=60",
                "/must-revalidate" => "max-age=60, must-revalidate",
                "/must-revalidate-alone" => "must-revalidate",
                "/public" => "public, max-age=60",
                _ => "max-age=60",
            };
            Ok(reply_cc(format!("v{n}"), cc))
        });
        let layer = if preset == "new" {
            SwrLayer::new()
        } else {
            SwrLayer::shared_cache()
        };
        let service = layer.layer(o);
        let auth = |path: &str| req("GET", path, &[("authorization", "Bearer alice")]);
        let mut shared = vec!["/s-maxage", "/must-revalidate", "/public"];
        if preset == "new" {
            // Only `new()` gives a response without a lifetime its default one.
            shared.push("/must-revalidate-alone");
        }
        for path in shared {
            let before = calls.get();
            let first = service.clone().oneshot(auth(path)).await?;
            assert!(info(&first).stored, "{preset} {path}: stored");
            let again = service
                .clone()
                .oneshot(req("GET", path, &[("authorization", "Bearer bob")]))
                .await?;
            assert_eq!(info(&again).status, CacheStatus::Fresh, "{preset} {path}");
            assert_eq!(calls.get(), before + 1, "{preset} {path}");
        }
        let before = calls.get();
        let first = service.clone().oneshot(auth("/plain")).await?;
        assert!(
            !info(&first).stored,
            "{preset}: max-age alone is not shareable"
        );
        body(service.clone().oneshot(auth("/plain")).await?).await?;
        assert_eq!(calls.get(), before + 2, "{preset}");
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn answers_to_a_named_credential_header_are_not_shared_between_keys() {
    let calls = Calls::default();
    let app = per_key_app(&calls, SwrLayer::new().credential_headers(["x-api-key"]));
    let a = app_text(app_send(&app, me_req(&[("x-api-key", "a")])).await).await;
    assert!(a.starts_with("account of a "), "{a}");
    advance(Duration::from_secs(1)).await;
    let b = app_text(app_send(&app, me_req(&[("x-api-key", "b")])).await).await;
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
    let a = app_text(app_send(&app, me_req(&[("x-api-key", "a")])).await).await;
    assert!(a.starts_with("account of a "), "{a}");
    advance(Duration::from_secs(1)).await;
    let anonymous = app_text(app_send(&app, me_req(&[])).await).await;
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
            let answer = app_text(app_send(&app, me_req(&[(name, value)])).await).await;
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
    let first = app_text(app_send(&app, me_req(&[("x-session-token", "s1")])).await).await;
    advance(Duration::from_secs(1)).await;
    let second = app_text(app_send(&app, me_req(&[("x-session-token", "s2")])).await).await;
    assert_ne!(first, second, "x-session-token answers were shared");
    let a = app_text(app_send(&app, me_req(&[("x-api-key", "a")])).await).await;
    let b = app_text(app_send(&app, me_req(&[("x-api-key", "b")])).await).await;
    assert!(
        b.starts_with("account of b "),
        "X-Api-Key answers were shared: {a} / {b}"
    );
}

/// An interim answer of the inner service for call 1 (`status`, with caching headers that
/// would otherwise store it for a minute), held until `gate` opens; a 200 `v{n}` otherwise.
fn interim_first(status: u16, gate: &Gate) -> (impl OriginService, Calls) {
    let gate = gate.clone();
    origin(move |n, _| {
        let gate = gate.clone();
        async move {
            if n == 1 {
                gate.wait().await;
                return Ok(respond(
                    status,
                    "",
                    &[
                        ("cache-control", "public, max-age=60, must-understand"),
                        ("link", "</style.css>; rel=preload; as=style"),
                    ],
                ));
            }
            Ok(reply_cc(
                format!("v{n}"),
                "max-age=10, stale-while-revalidate=60",
            ))
        }
    })
}

/// RFC 9110 §15.2: a 1xx (100 Continue, 103 Early Hints) is interim, never the final response.
/// One reaching the layer from the inner service (which answers once) means the origin gave no
/// final response: it is passed to its own request only when nothing stale may stand in, is not
/// stored (not even under a route lifetime), not given to the requests that waited for that
/// origin call (they ask the origin themselves), and never replaces or drops a stored response.
#[tokio::test(start_paused = true)]
async fn interim_responses_are_never_stored_or_shared() -> TestResult {
    let route_lifetime =
        || SwrLayer::new().policy_fn(|_, _| Some(tower_swr::engine::Freshness::new(secs(60))));
    for status in [100, 103] {
        for layer in [SwrLayer::new(), SwrLayer::shared_cache(), route_lifetime()] {
            let gate = Gate::new();
            let (origin, calls) = interim_first(status, &gate);
            let service = layer.layer(origin);
            let leader = tokio::spawn(service.clone().oneshot(get("/early")));
            settle().await;
            let waiter = tokio::spawn(service.clone().oneshot(get("/early")));
            settle().await;
            assert_eq!(
                calls.get(),
                1,
                "the second request waits for the first's call"
            );
            gate.open();

            let leader = leader.await??;
            assert_eq!(leader.status().as_u16(), status);
            assert!(!cache_status(&leader).contains("stored"), "{status}");
            let waiter = waiter.await??;
            assert_eq!(waiter.status(), StatusCode::OK, "{status}: not shared");
            assert_eq!(body(waiter).await?, "v2");
            assert_eq!(calls.get(), 2);
            let hit = service.clone().oneshot(get("/early")).await?;
            assert_eq!(info(&hit).status, CacheStatus::Fresh);
            assert_eq!(body(hit).await?, "v2");
        }

        let (origin, calls) = origin(move |n, _| async move {
            Ok(match n {
                1 => reply_cc(
                    "v1",
                    "max-age=10, stale-while-revalidate=60, stale-if-error=600",
                ),
                _ => respond(status, "", &[("cache-control", "max-age=60")]),
            })
        });
        let service = SwrLayer::shared_cache().layer(origin);
        body(service.clone().oneshot(get("/refresh")).await?).await?;
        // A background refresh answered with a 1xx: the stale entry stays, served again.
        advance(secs(11)).await;
        let stale = service.clone().oneshot(get("/refresh")).await?;
        assert_eq!(info(&stale).status, CacheStatus::Stale);
        assert_eq!(body(stale).await?, "v1");
        settle().await;
        assert_eq!(calls.get(), 2, "the refresh ran");
        let again = service.clone().oneshot(get("/refresh")).await?;
        assert_eq!(
            again.status(),
            StatusCode::OK,
            "{status} did not replace it"
        );
        assert_eq!(info(&again).status, CacheStatus::Stale);
        assert_eq!(body(again).await?, "v1");
        // Past the stale-while-revalidate window, the origin's 1xx is no answer: the entry
        // stands in, as for a 5xx.
        advance(secs(120)).await;
        let fallback = service.clone().oneshot(get("/refresh")).await?;
        assert_eq!(fallback.status(), StatusCode::OK);
        assert_eq!(
            cache_status(&fallback),
            format!("tower-swr; fwd=stale; fwd-status={status}")
        );
        assert_eq!(body(fallback).await?, "v1");
        assert!(calls.get() >= 3, "the origin was asked");
    }
    Ok(())
}

/// Under a targeted field (RFC 9213) the never-shared rules read its directives: its `private`
/// or `no-store` keeps a response out even when `Cache-Control` says `public`, a request with
/// `Authorization` is answered from the cache only by the targeted field's `public`, and
/// `Set-Cookie` is never stored whatever the field says.
#[tokio::test(start_paused = true)]
async fn targeted_fields_cannot_share_what_must_not_be() -> TestResult {
    let (origin, calls) = origin(|n, request: Request<ReqBody>| async move {
        let lines: &[(&str, &str)] = match request.uri().path() {
            "/private" => &[
                ("cache-control", "public, max-age=60"),
                ("cdn-cache-control", "private, max-age=60"),
            ],
            "/cookie" => &[
                ("cdn-cache-control", "public, max-age=60"),
                ("set-cookie", "session=abc"),
            ],
            "/auth-cc-public" => &[
                ("cache-control", "public, max-age=60"),
                ("cdn-cache-control", "max-age=60"),
            ],
            _ => &[
                ("cache-control", "private"),
                ("cdn-cache-control", "public, max-age=60"),
            ],
        };
        Ok(respond(200, format!("v{n}"), lines))
    });
    let service = SwrLayer::shared_cache().layer(origin);
    for path in ["/private", "/cookie"] {
        let before = calls.get();
        body(service.clone().oneshot(get(path)).await?).await?;
        let again = service.clone().oneshot(get(path)).await?;
        assert_eq!(info(&again).status, CacheStatus::Miss, "{path}");
        body(again).await?;
        assert_eq!(calls.get(), before + 2, "{path} is never stored");
    }
    let with_auth = |path: &str| get_headers(path, &[("authorization", "Bearer a")]);
    for (path, shared) in [("/auth-cc-public", false), ("/auth-cdn-public", true)] {
        let before = calls.get();
        body(service.clone().oneshot(with_auth(path)).await?).await?;
        let again = service.clone().oneshot(with_auth(path)).await?;
        assert_eq!(info(&again).status == CacheStatus::Fresh, shared, "{path}");
        body(again).await?;
        assert_eq!(calls.get(), before + if shared { 1 } else { 2 }, "{path}");
    }
    Ok(())
}
