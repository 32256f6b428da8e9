//! White-box review of how the HTTP adapter reads and writes HTTP (RFC 9110, 9111, 9211,
//! 9213, 5861). Each test goes through the public API only. Every finding failed before its
//! fix; two are kept as documented choices and pinned as such (the scheme is not in the key,
//! `Surrogate-Control` is not stored); the others pin behaviour found sound.

mod common;

use common::*;
use http::{header, HeaderValue, Method, Request, StatusCode};
use std::time::Duration;
use tower::{Layer, ServiceExt};
use tower_swr::{CacheStatus, SwrLayer};

/// The text of a response's body.
async fn text<B>(response: http::Response<B>) -> String
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    String::from_utf8(body(response).await.expect("a body").to_vec()).expect("utf-8 body")
}

// --- Surrogate-Control ------------------------------------------------------------------------

/// An origin that puts `Surrogate-Control: max-age=600` on every answer (as a Fastly-style edge
/// setup does) and renders the caller's `Authorization` / `Cookie` into the page.
fn surrogate_origin() -> (impl OriginService, Calls) {
    origin(|n, request: Request<ReqBody>| async move {
        let who = request
            .headers()
            .get(header::AUTHORIZATION)
            .or_else(|| request.headers().get(header::COOKIE))
            .map_or("anonymous".to_owned(), |v| v.to_str().unwrap().to_owned());
        Ok::<_, BoxError>(with_header(
            reply(format!("call {n} for {who}")),
            http::HeaderName::from_static("surrogate-control"),
            "max-age=600",
        ))
    })
}

/// RFC 9111 §3.5: a shared cache may reuse the answer to a request with `Authorization` only
/// when the response says `must-revalidate`, `public` or `s-maxage`. `Surrogate-Control:
/// max-age` is none of these, yet the layer maps it onto `s-maxage` and shares the answer.
#[tokio::test(start_paused = true)]
async fn surrogate_control_max_age_does_not_share_an_answer_to_authorization() {
    let (o, calls) = surrogate_origin();
    let service = SwrLayer::shared_cache().layer(o);
    let alice = service
        .clone()
        .oneshot(get_with("/me", header::AUTHORIZATION, "Bearer alice"))
        .await
        .unwrap();
    assert!(text(alice).await.contains("Bearer alice"));
    let bob = service.clone().oneshot(get("/me")).await.unwrap();
    let status = info(&bob).status;
    let page = text(bob).await;
    assert!(
        !page.contains("alice"),
        "an anonymous client got Alice's page ({status:?}): {page}"
    );
    assert_eq!(calls.get(), 2);
}

/// The same for `Cookie` (README: a request carrying `Cookie` is stored only with responses
/// that say `public` or `s-maxage`).
#[tokio::test(start_paused = true)]
async fn surrogate_control_max_age_does_not_share_an_answer_to_cookie() {
    let (o, calls) = surrogate_origin();
    let service = SwrLayer::new().layer(o);
    let alice = service
        .clone()
        .oneshot(get_with("/me", header::COOKIE, "sid=alice"))
        .await
        .unwrap();
    assert!(text(alice).await.contains("sid=alice"));
    let bob = service.clone().oneshot(get("/me")).await.unwrap();
    let page = text(bob).await;
    assert!(!page.contains("alice"), "{page}");
    assert_eq!(calls.get(), 2);
}

// --- Invalidation -----------------------------------------------------------------------------

/// An origin whose `POST` answers `201` with the given `Location`, and whose `GET`s are fresh
/// for a minute.
fn location_origin(location: &'static str) -> (impl OriginService, Calls) {
    origin(move |n, request: Request<ReqBody>| async move {
        Ok::<_, BoxError>(if request.method() == Method::POST {
            with_header(
                reply_status(StatusCode::CREATED, ""),
                header::LOCATION,
                location,
            )
        } else {
            reply_cc(format!("v{n}"), "max-age=60")
        })
    })
}

/// Whether a `POST /items/5/comments` answered with `location` invalidates `page`.
async fn location_invalidates(location: &'static str, page: &'static str) -> bool {
    let (o, _) = location_origin(location);
    let service = SwrLayer::new().layer(o);
    let get_page = || get_with(page, header::HOST, "example.com");
    service.clone().oneshot(get_page()).await.unwrap();
    let cached = service.clone().oneshot(get_page()).await.unwrap();
    assert_eq!(info(&cached).status, CacheStatus::Fresh);
    let mut post = request(Method::POST, "/items/5/comments");
    post.headers_mut()
        .insert(header::HOST, HeaderValue::from_static("example.com"));
    service.clone().oneshot(post).await.unwrap();
    let again = service.clone().oneshot(get_page()).await.unwrap();
    info(&again).status == CacheStatus::Miss
}

/// RFC 9110 §10.2.2: `Location` may carry a fragment; RFC 9111 §4.4 invalidates the target
/// URI it names, which has none (a request target never carries a fragment).
#[tokio::test(start_paused = true)]
async fn a_location_with_a_fragment_invalidates_its_resource() {
    assert!(location_invalidates("/items/5#comment-9", "/items/5").await);
}

/// The absolute form with a fragment works (the `Uri` parser drops it): pins the contrast.
#[tokio::test(start_paused = true)]
async fn an_absolute_location_with_a_fragment_invalidates_its_resource() {
    assert!(location_invalidates("http://example.com/items/5#comment-9", "/items/5").await);
}

/// RFC 3986 §5.2.4: a relative reference is resolved with its dot segments removed: `../x`
/// against `/items/5/comments` is `/items/x`.
#[tokio::test(start_paused = true)]
async fn a_relative_location_with_dot_segments_is_resolved() {
    assert!(location_invalidates("../6", "/items/6").await);
}

/// RFC 3986 §5.2.2: a reference of only a query (`?page=2`) keeps the base's whole path:
/// `/items/5/comments?page=2`, not `/items/5/?page=2`.
#[tokio::test(start_paused = true)]
async fn a_query_only_location_keeps_the_base_path() {
    assert!(location_invalidates("?page=2", "/items/5/comments?page=2").await);
}

// --- Keys -------------------------------------------------------------------------------------

/// RFC 9111 §2: the primary cache key is the method and the target URI, whose scheme is part of
/// it (RFC 9110 §4.3.1: `http` and `https` are different origins). An HTTP/2 request or an
/// absolute-form one carries it. The layer keys method + host + path + query (README: the
/// scheme is not in the key), so a layer that sees both schemes for one host (a forward proxy)
/// adds it with `key_fn`; otherwise a stored http->https `301` would answer the `https` request
/// (a redirect loop).
#[tokio::test(start_paused = true)]
async fn http_and_https_targets_are_different_resources_with_the_scheme_in_key_fn() {
    let (o, calls) = origin(|_, request: Request<ReqBody>| async move {
        Ok::<_, BoxError>(if request.uri().scheme_str() == Some("http") {
            with_header(
                reply_status(StatusCode::MOVED_PERMANENTLY, ""),
                header::LOCATION,
                "https://example.com/login",
            )
        } else {
            reply("the login page")
        })
    });
    let service = SwrLayer::new()
        .key_fn(|parts| Some(parts.uri.scheme_str().unwrap_or_default().to_owned()))
        .layer(o);
    let plain = service
        .clone()
        .oneshot(get("http://example.com/login"))
        .await
        .unwrap();
    assert_eq!(plain.status(), StatusCode::MOVED_PERMANENTLY);
    let secure = service
        .clone()
        .oneshot(get("https://example.com/login"))
        .await
        .unwrap();
    let status = (secure.status(), info(&secure).status);
    assert_eq!(
        status,
        (StatusCode::OK, CacheStatus::Miss),
        "the https request got the stored http redirect"
    );
    assert_eq!(text(secure).await, "the login page");
    assert_eq!(calls.get(), 2);
}

// --- Surrogate-Control across revalidation and stale windows ---------------------------------

/// RFC 9111 §3.2 / §4.3.4: a `304` updates the stored header fields it carries and leaves the
/// others. RFC 9110 §15.4.5 asks a `304` for `Cache-Control`, `ETag`, `Date`, `Expires`, `Vary`
/// and `Content-Location` only, so `Surrogate-Control` is often absent from it. The layer drops
/// `Surrogate-Control` from what it stores, so the freshened entry forgets this cache's lifetime
/// and falls back to `Cache-Control: max-age=0`: every later request is revalidated.
async fn surrogate_lifetime_after_304(surrogate_on_304: bool) -> (CacheStatus, usize) {
    let (o, calls) = origin(move |n, request: Request<ReqBody>| async move {
        let revalidation = request.headers().get(header::IF_NONE_MATCH).is_some();
        let mut response = if revalidation {
            reply_status(StatusCode::NOT_MODIFIED, "")
        } else {
            reply(format!("call {n}"))
        };
        let headers = response.headers_mut();
        headers.insert(header::ETAG, HeaderValue::from_static("\"v1\""));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=0"));
        if !revalidation || surrogate_on_304 {
            headers.insert(
                http::HeaderName::from_static("surrogate-control"),
                HeaderValue::from_static("max-age=60"),
            );
        }
        Ok::<_, BoxError>(response)
    });
    let service = SwrLayer::new().layer(o);
    service.clone().oneshot(get("/page")).await.unwrap();
    let hit = service.clone().oneshot(get("/page")).await.unwrap();
    assert_eq!(
        info(&hit).status,
        CacheStatus::Fresh,
        "Surrogate-Control applies"
    );
    tokio::time::advance(Duration::from_secs(61)).await;
    let revalidated = service.clone().oneshot(get("/page")).await.unwrap();
    assert_eq!(text(revalidated).await, "call 1");
    settle().await;
    assert_eq!(calls.get(), 2, "one revalidation");
    let after = service.clone().oneshot(get("/page")).await.unwrap();
    let status = info(&after).status;
    settle().await;
    (status, calls.get())
}

/// A limitation, pinned (README, `Surrogate-Control`): the header is not stored, so a `304`
/// that does not repeat it leaves the entry with `Cache-Control`'s lifetime (`max-age=0`
/// here): the next request revalidates again.
#[tokio::test(start_paused = true)]
async fn a_304_without_surrogate_control_takes_cache_controls_lifetime() {
    assert_eq!(
        surrogate_lifetime_after_304(false).await,
        (CacheStatus::Miss, 3),
        "Cache-Control's max-age=0 after a 304 without Surrogate-Control"
    );
}

/// The contrast: a `304` that repeats `Surrogate-Control` freshens the entry for its 60 s.
#[tokio::test(start_paused = true)]
async fn a_304_with_surrogate_control_keeps_its_lifetime() {
    assert_eq!(
        surrogate_lifetime_after_304(true).await,
        (CacheStatus::Fresh, 2)
    );
}

/// RFC 5861 §3: `stale-while-revalidate` lets this cache serve stale; only `must-revalidate`,
/// `proxy-revalidate`, `no-cache` or `s-maxage` forbid it (RFC 9111 §4.2.4). `Surrogate-Control:
/// max-age` says none of these (Edge Architecture 1.0), yet, mapped onto `s-maxage`, it takes
/// `proxy-revalidate`'s meaning with it and the response's own stale window is ignored.
#[tokio::test(start_paused = true)]
async fn surrogate_control_max_age_keeps_the_stale_while_revalidate_window() {
    let (o, calls) = origin(|n, _request: Request<ReqBody>| async move {
        Ok::<_, BoxError>(with_header(
            reply_cc(
                format!("call {n}"),
                "max-age=10, stale-while-revalidate=600",
            ),
            http::HeaderName::from_static("surrogate-control"),
            "max-age=60",
        ))
    });
    let service = SwrLayer::new().layer(o);
    service.clone().oneshot(get("/page")).await.unwrap();
    tokio::time::advance(Duration::from_secs(61)).await;
    let stale = service.clone().oneshot(get("/page")).await.unwrap();
    let status = info(&stale).status;
    assert_eq!(text(stale).await, "call 1", "{status:?}");
    assert_eq!(status, CacheStatus::Stale);
    settle().await;
    assert_eq!(calls.get(), 2, "one background refresh");
}

/// Fastly's own example (its `Surrogate-Control` reference): `Cache-Control: max-age=0` with
/// `Surrogate-Control: max-age=86400, stale-while-revalidate=60`. The layer reads only
/// `max-age` and `no-store` from `Surrogate-Control`, so the edge's stale window is dropped
/// and the first request past `max-age` waits for the origin.
#[tokio::test(start_paused = true)]
async fn surrogate_control_stale_while_revalidate_is_read() {
    let (o, calls) = origin(|n, _request: Request<ReqBody>| async move {
        Ok::<_, BoxError>(with_header(
            reply_cc(format!("call {n}"), "max-age=0"),
            http::HeaderName::from_static("surrogate-control"),
            "max-age=60, stale-while-revalidate=600",
        ))
    });
    let service = SwrLayer::shared_cache().layer(o);
    service.clone().oneshot(get("/page")).await.unwrap();
    tokio::time::advance(Duration::from_secs(61)).await;
    let stale = service.clone().oneshot(get("/page")).await.unwrap();
    let status = info(&stale).status;
    assert_eq!(text(stale).await, "call 1", "{status:?}");
    assert_eq!(status, CacheStatus::Stale);
    settle().await;
    assert_eq!(calls.get(), 2, "one background refresh");
}

// --- Ranges and conditionals ------------------------------------------------------------------

/// RFC 9110 §14.1.2: "When a selected representation has zero length, the only satisfiable
/// form of range-spec is a suffix-range with a non-zero suffix-length." `bytes=-5` on an empty
/// stored body is satisfiable, so the answer is not a `416` (the whole, empty, `200` is what
/// a server can send).
#[tokio::test(start_paused = true)]
async fn a_suffix_range_on_an_empty_body_is_not_unsatisfiable() {
    let (o, _) = origin(|_, _request: Request<ReqBody>| async move {
        Ok::<_, BoxError>(reply_cc("", "max-age=60"))
    });
    let service = SwrLayer::new().layer(o);
    service.clone().oneshot(get("/empty")).await.unwrap();
    let ranged = service
        .clone()
        .oneshot(get_with("/empty", header::RANGE, "bytes=-5"))
        .await
        .unwrap();
    assert_eq!(info(&ranged).status, CacheStatus::Fresh);
    assert_ne!(ranged.status(), StatusCode::RANGE_NOT_SATISFIABLE);
}

/// RFC 9110 §8.8.3: `etagc` includes the comma, so `"a,b"` is one entity tag, and an
/// `If-None-Match: "a,b"` names it. The client's list is split on every comma.
#[tokio::test(start_paused = true)]
async fn if_none_match_with_a_comma_inside_the_entity_tag_matches() {
    let (o, _) = origin(|_, _request: Request<ReqBody>| async move {
        Ok::<_, BoxError>(with_header(
            reply_cc("body", "max-age=60"),
            header::ETAG,
            "\"a,b\"",
        ))
    });
    let service = SwrLayer::new().layer(o);
    service.clone().oneshot(get("/tag")).await.unwrap();
    let conditional = service
        .clone()
        .oneshot(get_with("/tag", header::IF_NONE_MATCH, "\"a,b\""))
        .await
        .unwrap();
    assert_eq!(info(&conditional).status, CacheStatus::Fresh);
    assert_eq!(conditional.status(), StatusCode::NOT_MODIFIED);
}

/// RFC 9110 §13.1.2: `If-None-Match: *` is false when the origin has a current representation,
/// which a stored `200` is: a `GET` gets `304` (§13.2.2), whether or not it carries an `ETag`.
#[tokio::test(start_paused = true)]
async fn if_none_match_star_matches_a_stored_response_without_an_etag() {
    let (o, _) = origin(|_, _request: Request<ReqBody>| async move {
        Ok::<_, BoxError>(reply_cc("body", "max-age=60"))
    });
    let service = SwrLayer::new().layer(o);
    service.clone().oneshot(get("/any")).await.unwrap();
    let conditional = service
        .clone()
        .oneshot(get_with("/any", header::IF_NONE_MATCH, "*"))
        .await
        .unwrap();
    assert_eq!(info(&conditional).status, CacheStatus::Fresh);
    assert_eq!(conditional.status(), StatusCode::NOT_MODIFIED);
}

/// The same with an `ETag`: `*` matches (pins the contrast).
#[tokio::test(start_paused = true)]
async fn if_none_match_star_matches_a_stored_response_with_an_etag() {
    let (o, _) = origin(|_, _request: Request<ReqBody>| async move {
        Ok::<_, BoxError>(with_header(
            reply_cc("body", "max-age=60"),
            header::ETAG,
            "\"v\"",
        ))
    });
    let service = SwrLayer::new().layer(o);
    service.clone().oneshot(get("/any")).await.unwrap();
    let conditional = service
        .clone()
        .oneshot(get_with("/any", header::IF_NONE_MATCH, "*"))
        .await
        .unwrap();
    assert_eq!(conditional.status(), StatusCode::NOT_MODIFIED);
}

/// RFC 9110 §13.1.3: "A recipient MUST ignore the If-Modified-Since header field if ... the
/// field value has more than one member": two lines are two members.
#[tokio::test(start_paused = true)]
async fn if_modified_since_with_two_members_is_ignored() {
    let (o, _) = origin(|_, _request: Request<ReqBody>| async move {
        Ok::<_, BoxError>(with_header(
            reply_cc("body", "max-age=60"),
            header::LAST_MODIFIED,
            "Mon, 01 Jan 2024 00:00:00 GMT",
        ))
    });
    let service = SwrLayer::new().layer(o);
    service.clone().oneshot(get("/lm")).await.unwrap();
    let mut conditional = get("/lm");
    for date in [
        "Tue, 02 Jan 2024 00:00:00 GMT",
        "Sun, 31 Dec 2023 00:00:00 GMT",
    ] {
        conditional
            .headers_mut()
            .append(header::IF_MODIFIED_SINCE, HeaderValue::from_static(date));
    }
    let answer = service.clone().oneshot(conditional).await.unwrap();
    assert_eq!(info(&answer).status, CacheStatus::Fresh);
    assert_eq!(answer.status(), StatusCode::OK);
}

/// RFC 9110 §4.2.3 / RFC 3986 §6.2.2.1: the host is case-insensitive, so `Host: EXAMPLE.com`
/// names the resource `Host: example.com` does; RFC 9111 §4.4: a successful `POST` to it
/// invalidates it (before the fix the key held the host as sent, and the `POST` missed).
#[tokio::test(start_paused = true)]
async fn an_unsafe_request_with_the_host_in_another_case_invalidates() {
    let (o, _) = location_origin("/elsewhere");
    let service = SwrLayer::new().layer(o);
    let page = || get_with("/items/5", header::HOST, "example.com");
    service.clone().oneshot(page()).await.unwrap();
    let mut post = request(Method::POST, "/items/5");
    post.headers_mut()
        .insert(header::HOST, HeaderValue::from_static("EXAMPLE.com"));
    service.clone().oneshot(post).await.unwrap();
    let again = service.clone().oneshot(page()).await.unwrap();
    assert_eq!(info(&again).status, CacheStatus::Miss);
}

/// RFC 9110 §4.3.1 / §4.2.3: `http://example.com:80` is the origin `http://example.com`; a
/// `Location` naming it with the default port is same-origin (RFC 9111 §4.4).
#[tokio::test(start_paused = true)]
async fn a_location_with_the_default_port_is_same_origin() {
    assert!(location_invalidates("http://example.com:80/items/5", "/items/5").await);
}

// --- Age ----------------------------------------------------------------------------------------

/// RFC 9111 §5.1 / §4.2.3: a response that arrived with `Age: 100` is at least 100 s old on
/// every answer the cache gives from it, the storing miss included.
#[tokio::test(start_paused = true)]
async fn an_upstream_age_is_carried_by_the_miss_and_the_hits() {
    let (o, _) = origin(|_, _request: Request<ReqBody>| async move {
        Ok::<_, BoxError>(with_header(
            reply_cc("aged", "max-age=600"),
            header::AGE,
            "100",
        ))
    });
    let service = SwrLayer::shared_cache().layer(o);
    let miss = service.clone().oneshot(get("/aged")).await.unwrap();
    assert!(age(&miss).is_some_and(|a| a >= 100), "{:?}", miss.headers());
    tokio::time::advance(Duration::from_secs(10)).await;
    let hit = service.clone().oneshot(get("/aged")).await.unwrap();
    assert_eq!(info(&hit).status, CacheStatus::Fresh);
    assert_eq!(age(&hit), Some(110));
}

// --- HEAD ---------------------------------------------------------------------------------------

/// RFC 9110 §8.6: "A server MUST NOT send a Content-Length header field in any response with
/// a status code of 1xx (Informational) or 204 (No Content)." A `204` is heuristically
/// cacheable (§15.1) and stored; a `HEAD` answered from it is given `Content-Length: 0`.
#[tokio::test(start_paused = true)]
async fn a_head_from_a_stored_204_has_no_content_length() {
    let (o, _) = origin(|_, _request: Request<ReqBody>| async move {
        Ok::<_, BoxError>(reply_status(StatusCode::NO_CONTENT, ""))
    });
    let service = SwrLayer::new().layer(o);
    let stored = service.clone().oneshot(get("/ping")).await.unwrap();
    assert_eq!(stored.status(), StatusCode::NO_CONTENT);
    assert!(info(&stored).stored);
    assert!(stored.headers().get(header::CONTENT_LENGTH).is_none());
    let head = service
        .clone()
        .oneshot(request(Method::HEAD, "/ping"))
        .await
        .unwrap();
    assert_eq!(info(&head).status, CacheStatus::Fresh);
    assert_eq!(head.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        header_value(&head, header::CONTENT_LENGTH),
        None,
        "a 204 states no length"
    );
}

// --- Date ---------------------------------------------------------------------------------------
