//! Invalidation: unsafe requests invalidate their URI, `Location` and `Content-Location`;
//! `purge`, `purge_prefix`, `soft_purge` and `clear` on the handle; layers sharing a store touch
//! only their own entries.

mod common;

use bytes::Bytes;
use common::*;
use http::{header, HeaderName, HeaderValue, Method, Request, StatusCode};
use tokio::time::advance;
use tower::{Layer, ServiceExt};
use tower_swr::{CacheStatus, SwrLayer};

/// GETs answer `max-age=600`; unsafe requests answer per their path and headers.
fn invalidation_origin() -> (impl OriginService, Calls) {
    origin(|n, request: Request<ReqBody>| async move {
        if request.method() == Method::GET {
            return Ok(reply_cc(format!("v{n}"), "max-age=600"));
        }
        let status: u16 = request
            .headers()
            .get("x-status")
            .map_or(Ok(200), |v| v.to_str().unwrap().parse())?;
        let mut response = reply_status(StatusCode::from_u16(status)?, "done");
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            if let Some(value) = request.headers().get(format!("x-{name}")) {
                response.headers_mut().insert(name, value.clone());
            }
        }
        Ok(response)
    })
}

fn unsafe_request(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<ReqBody> {
    let mut request = request(Method::from_bytes(method.as_bytes()).unwrap(), uri);
    for (name, value) in headers {
        request.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    request
}

/// Answers `max-age=60` with `path v{n}`, varying on `Accept-Language` under `/vary`.
fn catalogue() -> (impl OriginService, Calls) {
    origin(|n, request: Request<ReqBody>| async move {
        let response = reply_cc(format!("{} v{n}", request.uri()), "max-age=60");
        Ok(if request.uri().path().starts_with("/vary") {
            with_header(response, header::VARY, "Accept-Language")
        } else {
            response
        })
    })
}

#[tokio::test(start_paused = true)]
async fn successful_unsafe_requests_invalidate_their_uri() -> TestResult {
    let (o, _) = invalidation_origin();
    let service = SwrLayer::new().layer(o);
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        status_of(&service, get("/doc")).await?;
        assert_eq!(status_of(&service, get("/doc")).await?, CacheStatus::Fresh);
        status_of(&service, get("/other")).await?;
        status_of(&service, unsafe_request(method, "/doc", &[])).await?;
        assert_eq!(
            status_of(&service, get("/doc")).await?,
            CacheStatus::Miss,
            "{method} must invalidate /doc"
        );
        assert_eq!(
            status_of(&service, get("/other")).await?,
            CacheStatus::Fresh,
            "{method} to /doc must leave /other alone"
        );
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn unsafe_requests_invalidate_same_origin_location_and_content_location() -> TestResult {
    let (o, _) = invalidation_origin();
    let service = SwrLayer::new().layer(o);
    let host = ("host", "example.com");
    let on_host = |path: &str| get_headers(path, &[host]);
    for path in ["/items/7", "/items/8", "/items/9", "/items/10"] {
        status_of(&service, on_host(path)).await?;
    }
    status_of(
        &service,
        unsafe_request(
            "POST",
            "/items",
            &[
                host,
                ("x-location", "/items/7"),
                ("x-content-location", "http://example.com/items/8"),
            ],
        ),
    )
    .await?;
    assert_eq!(
        status_of(&service, on_host("/items/7")).await?,
        CacheStatus::Miss
    );
    assert_eq!(
        status_of(&service, on_host("/items/8")).await?,
        CacheStatus::Miss
    );
    assert_eq!(
        status_of(&service, on_host("/items/9")).await?,
        CacheStatus::Fresh
    );

    // Another origin's URI is not touched.
    status_of(
        &service,
        unsafe_request(
            "PUT",
            "/items",
            &[
                host,
                ("x-location", "http://other.example/items/9"),
                ("x-content-location", "https://evil.example/items/10"),
            ],
        ),
    )
    .await?;
    assert_eq!(
        status_of(&service, on_host("/items/9")).await?,
        CacheStatus::Fresh
    );
    assert_eq!(
        status_of(&service, on_host("/items/10")).await?,
        CacheStatus::Fresh
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn failed_unsafe_requests_do_not_invalidate() -> TestResult {
    let (o, calls) = invalidation_origin();
    let service = SwrLayer::new().layer(o);
    status_of(&service, get("/doc")).await?;
    for status in ["400", "403", "404", "500", "503"] {
        status_of(
            &service,
            unsafe_request(
                "POST",
                "/doc",
                &[("x-status", status), ("x-location", "/doc")],
            ),
        )
        .await?;
        assert_eq!(
            status_of(&service, get("/doc")).await?,
            CacheStatus::Fresh,
            "a {status} POST must not invalidate"
        );
    }
    assert_eq!(calls.get(), 6);
    Ok(())
}

/// BUG (src/http/service.rs:665-684, `Shared::invalidate`): the keys to remove are built with
/// the unsafe request's own `key_fn` addition (`target.extra`), so entries of the same URI
/// stored under other additions keep being served after a successful write. Fix: remove every
/// entry whose host and target match, whatever its addition and variant (as `SwrHandle::purge`
/// does), and drop the matching `vary_index` records.
#[tokio::test(start_paused = true)]
async fn unsafe_request_invalidates_the_uri_for_every_key_fn_addition() -> TestResult {
    let (o, _) = invalidation_origin();
    // The key function splits entries by device class, not by user: one resource, two copies.
    let service = SwrLayer::new()
        .key_fn(|parts| {
            let device = parts.headers.get("x-device")?.to_str().ok()?;
            Some(device.to_owned())
        })
        .layer(o);
    let on = |device: &str| get_headers("/doc", &[("x-device", device)]);
    status_of(&service, on("mobile")).await?;
    status_of(&service, on("desktop")).await?;
    assert_eq!(status_of(&service, on("mobile")).await?, CacheStatus::Fresh);

    status_of(
        &service,
        unsafe_request("PUT", "/doc", &[("x-device", "desktop")]),
    )
    .await?;
    assert_eq!(status_of(&service, on("desktop")).await?, CacheStatus::Miss);
    assert_eq!(
        status_of(&service, on("mobile")).await?,
        CacheStatus::Miss,
        "the PUT changed /doc for every device (RFC 9111 §4.4: invalidate the target URI)"
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn redirecting_unsafe_request_invalidates_every_variant_and_locations() -> TestResult {
    let (o, calls) = origin(|n, request: Request<ReqBody>| async move {
        if request.method() == Method::GET {
            return Ok(respond(
                200,
                format!("v{n}"),
                &[
                    ("cache-control", "max-age=600"),
                    ("vary", "accept-language"),
                ],
            ));
        }
        // A 303 See Other (non-error) with a same-origin Location and Content-Location.
        Ok(respond(
            303,
            "",
            &[("location", "/done"), ("content-location", "/docs/sibling")],
        ))
    });
    let service = SwrLayer::new().layer(o);
    let lang = |path: &str, l: &str| req("GET", path, &[("accept-language", l)]);
    for path in ["/docs/page", "/docs/sibling", "/done"] {
        for l in ["en", "fr"] {
            body(service.clone().oneshot(lang(path, l)).await?).await?;
            let hit = service.clone().oneshot(lang(path, l)).await?;
            assert_eq!(info(&hit).status, CacheStatus::Fresh, "{path} {l}");
        }
    }
    let stored_calls = calls.get();
    assert_eq!(stored_calls, 6);
    let post = service
        .clone()
        .oneshot(req("POST", "/docs/page", &[]))
        .await?;
    assert_eq!(post.status(), StatusCode::SEE_OTHER);
    for path in ["/docs/page", "/docs/sibling", "/done"] {
        for l in ["en", "fr"] {
            let after = service.clone().oneshot(lang(path, l)).await?;
            assert_eq!(
                info(&after).status,
                CacheStatus::Miss,
                "{path} {l} must be invalidated by a 303 to an unsafe request"
            );
        }
    }
    Ok(())
}

/// RFC 9111 §4.4 invalidates the URI *references* in `Location` / `Content-Location`; a
/// relative-path reference (`sibling`, resolved against `/docs/page`) is same-origin.
#[tokio::test(start_paused = true)]
async fn relative_path_content_location_is_invalidated() -> TestResult {
    let (o, _) = origin(|n, request: Request<ReqBody>| async move {
        if request.method() == Method::GET {
            return Ok(reply_cc(format!("v{n}"), "max-age=600"));
        }
        Ok(respond(200, "", &[("content-location", "sibling")]))
    });
    let service = SwrLayer::new().layer(o);
    let on_host = |path: &str| req("GET", path, &[("host", "example.com")]);
    body(service.clone().oneshot(on_host("/docs/sibling")).await?).await?;
    let hit = service.clone().oneshot(on_host("/docs/sibling")).await?;
    assert_eq!(info(&hit).status, CacheStatus::Fresh);
    let put = req("PUT", "/docs/page", &[("host", "example.com")]);
    body(service.clone().oneshot(put).await?).await?;
    let after = service.clone().oneshot(on_host("/docs/sibling")).await?;
    assert_eq!(
        info(&after).status,
        CacheStatus::Miss,
        "Content-Location: sibling names /docs/sibling"
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn purge_removes_every_variant_of_a_target() -> TestResult {
    let (o, calls) = catalogue();
    let layer = SwrLayer::new();
    let cache = layer.handle();
    let service = layer.layer(o);
    let language = |l: &str| get_with("/vary", header::ACCEPT_LANGUAGE, l);
    for request in [
        language("en"),
        language("fr"),
        get("/keep"),
        get("/vary?page=2"),
    ] {
        call(&service, request).await?;
    }
    assert_eq!(cache.stats().entries, 4);

    assert_eq!(cache.purge("/vary"), 2);
    assert_eq!(cache.stats().entries, 2);
    assert_eq!(call(&service, language("en")).await?.0, CacheStatus::Miss);
    assert_eq!(call(&service, language("fr")).await?.0, CacheStatus::Miss);
    assert_eq!(call(&service, get("/keep")).await?.0, CacheStatus::Fresh);
    assert_eq!(
        call(&service, get("/vary?page=2")).await?.0,
        CacheStatus::Fresh,
        "purge matches the target exactly, query included"
    );
    assert_eq!(calls.get(), 6);
    assert_eq!(cache.purge("/nothing"), 0);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn purge_prefix_and_clear() -> TestResult {
    let (o, _) = catalogue();
    let layer = SwrLayer::new();
    let cache = layer.handle();
    let service = layer.layer(o);
    for path in ["/api/a", "/api/b?x=1", "/apiary", "/home"] {
        call(&service, get(path)).await?;
    }
    assert_eq!(cache.purge_prefix("/api/"), 2);
    assert_eq!(call(&service, get("/api/a")).await?.0, CacheStatus::Miss);
    assert_eq!(
        call(&service, get("/api/b?x=1")).await?.0,
        CacheStatus::Miss
    );
    assert_eq!(call(&service, get("/apiary")).await?.0, CacheStatus::Fresh);
    assert_eq!(call(&service, get("/home")).await?.0, CacheStatus::Fresh);

    // A clone of the handle acts on the same cache.
    cache.clone().clear();
    assert_eq!(cache.stats().entries, 0);
    for path in ["/api/a", "/apiary", "/home"] {
        assert_eq!(call(&service, get(path)).await?.0, CacheStatus::Miss);
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn soft_purge_serves_stale_once_and_refreshes() -> TestResult {
    let (o, calls) = catalogue();
    let layer = SwrLayer::new();
    let cache = layer.handle();
    let service = layer.layer(o);
    call(&service, get("/s")).await?;
    call(&service, get("/other")).await?;
    advance(secs(5)).await;

    assert_eq!(cache.soft_purge("/s"), 1);
    let stale = service.clone().oneshot(get("/s")).await?;
    assert_eq!(info(&stale).status, CacheStatus::Stale);
    assert!(info(&stale).refreshing);
    let status = cache_status(&stale);
    let ttl: i64 = status
        .rsplit("ttl=")
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("ttl in {status}"));
    assert!(ttl <= 0, "{status}");
    assert_eq!(body(stale).await?, "/s v1");
    settle().await;
    assert_eq!(calls.get(), 3, "the stale answer started a refresh");

    let fresh = call(&service, get("/s")).await?;
    assert_eq!(fresh, (CacheStatus::Fresh, Bytes::from("/s v3")));
    assert_eq!(call(&service, get("/other")).await?.0, CacheStatus::Fresh);
    Ok(())
}

/// Layers sharing a budget (and the budget's own layer) in front of different services that
/// all see the same path (e.g. nested routers, which strip their prefix) keep, invalidate,
/// purge and clear their own entries of that path (axum-response-cache#6).
#[tokio::test(start_paused = true)]
async fn layers_sharing_a_store_invalidate_and_clear_only_their_own() -> TestResult {
    let make = |name: &'static str| {
        origin(move |n, _request: Request<ReqBody>| async move {
            Ok::<_, BoxError>(reply(format!("{name} v{n}")))
        })
    };
    let budget = SwrLayer::new();
    let layer_a = SwrLayer::new().share_memory_with(&budget);
    let layer_b = SwrLayer::new().share_memory_with(&budget);
    let (a, a_calls) = make("a");
    let (b, b_calls) = make("b");
    let (z, z_calls) = make("z");
    let a = layer_a.layer(a);
    let b = layer_b.layer(b);
    let z = budget.layer(z);
    for service in [&a, &b, &z] {
        service.clone().oneshot(get("/x")).await?;
    }
    // A POST through A invalidates A's entry only.
    a.clone().oneshot(request(Method::POST, "/x")).await?;
    assert_eq!(
        body_text(a.clone().oneshot(get("/x")).await?).await?,
        "a v3"
    );
    assert_eq!(
        body_text(b.clone().oneshot(get("/x")).await?).await?,
        "b v1"
    );
    assert_eq!(
        body_text(z.clone().oneshot(get("/x")).await?).await?,
        "z v1"
    );
    // The budget's own handle clears namespace 0 only; A's soft purge marks A's only.
    budget.handle().clear();
    assert_eq!(layer_a.handle().soft_purge("/x"), 1);
    let stale = a.clone().oneshot(get("/x")).await?;
    assert_eq!(info(&stale).status, CacheStatus::Stale);
    assert_eq!(
        info(&b.clone().oneshot(get("/x")).await?).status,
        CacheStatus::Fresh
    );
    assert_eq!(
        info(&z.clone().oneshot(get("/x")).await?).status,
        CacheStatus::Miss
    );
    settle().await;
    assert_eq!((a_calls.get(), b_calls.get(), z_calls.get()), (4, 1, 2));
    // A hard purge through A removes A's entry only.
    assert_eq!(layer_a.handle().purge("/x"), 1);
    assert_eq!(
        body_text(b.clone().oneshot(get("/x")).await?).await?,
        "b v1"
    );
    assert_eq!(b_calls.get(), 1, "purging A's entry removed B's");
    Ok(())
}

/// A `Host` that is not text bypasses the cache for GET; an unsafe request with such a `Host`
/// is keyed to the empty host, so it invalidates what requests without `Host` stored.
#[tokio::test(start_paused = true)]
async fn an_unsafe_request_with_an_unreadable_host_invalidates_nothing() -> TestResult {
    let (o, calls) = origin(|n, _request: Request<ReqBody>| async move {
        Ok::<_, BoxError>(reply_cc(format!("v{n}"), "max-age=60"))
    });
    let service = SwrLayer::new().layer(o);
    service.clone().oneshot(get("/x")).await?; // no Host: stored under ""
    let mut unreadable = get("/x");
    unreadable
        .headers_mut()
        .insert(header::HOST, HeaderValue::from_bytes(b"h\xffst")?);
    let bypass = service.clone().oneshot(unreadable).await?;
    assert_eq!(cache_status(&bypass), "tower-swr; fwd=bypass");
    let mut post = request(Method::POST, "/x");
    post.headers_mut()
        .insert(header::HOST, HeaderValue::from_bytes(b"h\xffst")?);
    service.clone().oneshot(post).await?;
    assert_eq!(calls.get(), 3);
    let again = service.clone().oneshot(get("/x")).await?;
    assert_eq!(
        info(&again).status,
        CacheStatus::Fresh,
        "the Host-less entry was invalidated by a request for another host"
    );
    Ok(())
}

/// `Location: http://host?q` names `/?q` (RFC 3986 §5.2: an empty path with an authority is
/// `/`); the network-path form `//host?q` is handled, the absolute form is not.
#[tokio::test(start_paused = true)]
async fn an_absolute_location_with_an_empty_path_and_a_query_is_invalidated() -> TestResult {
    let (o, calls) = origin(|n, request: Request<ReqBody>| async move {
        Ok::<_, BoxError>(if request.method() == Method::POST {
            with_header(
                reply_status(StatusCode::CREATED, ""),
                header::LOCATION,
                "http://example.com?page=2",
            )
        } else {
            reply_cc(format!("v{n}"), "max-age=60")
        })
    });
    let service = SwrLayer::new().layer(o);
    let page = || get_with("/?page=2", header::HOST, "example.com");
    service.clone().oneshot(page()).await?;
    let mut post = request(Method::POST, "/items");
    post.headers_mut()
        .insert(header::HOST, HeaderValue::from_static("example.com"));
    service.clone().oneshot(post).await?;
    let again = service.clone().oneshot(page()).await?;
    assert_eq!(info(&again).status, CacheStatus::Miss, "not invalidated");
    assert_eq!(calls.get(), 3);
    Ok(())
}

/// The same for the network-path form, which the session handles.
#[tokio::test(start_paused = true)]
async fn a_network_path_location_with_a_query_is_invalidated() -> TestResult {
    let (o, calls) = origin(|n, request: Request<ReqBody>| async move {
        Ok::<_, BoxError>(if request.method() == Method::POST {
            with_header(
                reply_status(StatusCode::CREATED, ""),
                header::LOCATION,
                "//EXAMPLE.com?page=2",
            )
        } else {
            reply_cc(format!("v{n}"), "max-age=60")
        })
    });
    let service = SwrLayer::new().layer(o);
    let page = || get_with("/?page=2", header::HOST, "example.com");
    service.clone().oneshot(page()).await?;
    let mut post = request(Method::POST, "/items");
    post.headers_mut()
        .insert(header::HOST, HeaderValue::from_static("example.com"));
    service.clone().oneshot(post).await?;
    let again = service.clone().oneshot(page()).await?;
    assert_eq!(info(&again).status, CacheStatus::Miss);
    assert_eq!(calls.get(), 3);
    Ok(())
}
