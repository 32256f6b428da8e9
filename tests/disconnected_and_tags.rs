//! Issue 16 items 3 and 5: a stale response when the origin cannot be reached (RFC 9111
//! §4.2.4, `max_stale_when_disconnected`), and cache tags (`Surrogate-Key`, `Cache-Tag`,
//! `xkey`; `SwrHandle::purge_tag` / `soft_purge_tag`).

mod common;

use common::*;
use http::{HeaderName, Request, StatusCode};
use tokio::time::advance;
use tower::{Layer, ServiceExt};
use tower_swr::{CacheStatus, SwrLayer};

/// An origin that answers `v{n}` with `headers` while `mode` is OK, and 503 / an error / never
/// otherwise (see [`Mode`]).
fn switchable(
    headers: &'static [(&'static str, &'static str)],
    mode: Mode,
) -> (impl OriginService, Calls) {
    origin(move |n, _request: Request<ReqBody>| {
        let mode = mode.clone();
        async move {
            match mode.get() {
                OK => {
                    let mut response = reply(format!("v{n}"));
                    for (name, value) in headers {
                        response = with_header(response, HeaderName::from_static(name), value);
                    }
                    Ok(response)
                }
                UNAVAILABLE => Ok(reply_status(StatusCode::SERVICE_UNAVAILABLE, "down")),
                ERROR => Err::<Reply, BoxError>("connection refused".into()),
                _ => {
                    std::future::pending::<()>().await;
                    unreachable!()
                }
            }
        }
    })
}

async fn text(response: http::Response<tower_swr::SwrBody<ReqBody>>) -> String {
    String::from_utf8(body(response).await.expect("a body").to_vec()).expect("utf-8")
}

// --- Item 3: a stale response when disconnected -----------------------------------------------

#[tokio::test(start_paused = true)]
async fn shared_cache_serves_stale_past_its_windows_when_the_origin_cannot_be_reached() -> TestResult
{
    let mode = Mode::default();
    let (origin, calls) = switchable(&[("cache-control", "max-age=10")], mode.clone());
    let service = SwrLayer::shared_cache().layer(origin);
    assert_eq!(text(service.clone().oneshot(get("/p")).await?).await, "v1");

    advance(secs(3600)).await; // no stale-if-error window at all, an hour stale
    mode.set(ERROR);
    let answer = service.clone().oneshot(get("/p")).await?;
    assert_eq!(calls.get(), 2, "the origin was tried first");
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(info(&answer).status, CacheStatus::StaleIfError);
    assert_eq!(cache_status(&answer), "tower-swr; fwd=stale");
    assert!(age(&answer).unwrap_or(0) >= 3600);
    assert_eq!(text(answer).await, "v1");

    // Once the origin is back, its answer replaces the stale one.
    mode.set(OK);
    let answer = service.clone().oneshot(get("/p")).await?;
    assert_eq!(text(answer).await, "v3");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn an_origin_timeout_counts_as_disconnected() -> TestResult {
    let mode = Mode::default();
    let (origin, _calls) = switchable(&[("cache-control", "max-age=10")], mode.clone());
    let service = SwrLayer::shared_cache()
        .origin_timeout(secs(5))
        .layer(origin);
    assert_eq!(text(service.clone().oneshot(get("/p")).await?).await, "v1");
    advance(secs(600)).await;
    mode.set(HANG);
    let started = tokio::time::Instant::now();
    let answer = service.clone().oneshot(get("/p")).await?;
    assert_eq!(
        started.elapsed(),
        secs(5),
        "answered when the origin timeout ran out"
    );
    assert_eq!(info(&answer).status, CacheStatus::StaleIfError);
    assert_eq!(text(answer).await, "v1");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn an_origin_5xx_is_an_answer_not_a_disconnection() -> TestResult {
    let mode = Mode::default();
    let (origin, _calls) = switchable(&[("cache-control", "max-age=10")], mode.clone());
    let service = SwrLayer::shared_cache().layer(origin);
    assert_eq!(text(service.clone().oneshot(get("/p")).await?).await, "v1");
    advance(secs(60)).await;
    mode.set(UNAVAILABLE);
    let answer = service.clone().oneshot(get("/p")).await?;
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(text(answer).await, "down");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn must_revalidate_proxy_revalidate_no_cache_and_s_maxage_forbid_stale_when_disconnected(
) -> TestResult {
    let cases: [&'static [(&'static str, &'static str)]; 5] = [
        &[("cache-control", "max-age=10, must-revalidate")],
        &[("cache-control", "max-age=10, proxy-revalidate")],
        &[("cache-control", "no-cache"), ("etag", "\"e\"")],
        &[("cache-control", "s-maxage=10")],
        // The targeted field is this cache's Cache-Control (RFC 9213).
        &[
            ("cache-control", "max-age=10"),
            ("cdn-cache-control", "max-age=10, must-revalidate"),
        ],
    ];
    for headers in cases {
        let mode = Mode::default();
        let (origin, calls) = switchable(headers, mode.clone());
        let service = SwrLayer::shared_cache().layer(origin);
        assert_eq!(text(service.clone().oneshot(get("/p")).await?).await, "v1");
        advance(secs(60)).await;
        mode.set(ERROR);
        let answer = service.clone().oneshot(get("/p")).await;
        assert!(
            answer.is_err(),
            "{headers:?}: served stale though forbidden"
        );
        assert_eq!(calls.get(), 2, "{headers:?}");
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn max_stale_when_disconnected_bounds_the_staleness() -> TestResult {
    let mode = Mode::default();
    let (origin, _calls) = switchable(&[("cache-control", "max-age=10")], mode.clone());
    let service = SwrLayer::shared_cache()
        .max_stale_when_disconnected(secs(60))
        .layer(origin);
    assert_eq!(text(service.clone().oneshot(get("/p")).await?).await, "v1");
    mode.set(ERROR);
    advance(secs(10 + 59)).await; // 59 s stale
    let answer = service.clone().oneshot(get("/p")).await?;
    assert_eq!(info(&answer).status, CacheStatus::StaleIfError);
    advance(secs(2)).await; // 61 s stale
    assert!(service.clone().oneshot(get("/p")).await.is_err());
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn the_default_bound_is_a_day_and_none_turns_it_off() -> TestResult {
    let mode = Mode::default();
    let (origin, _calls) = switchable(&[("cache-control", "max-age=10")], mode.clone());
    let service = SwrLayer::shared_cache().layer(origin);
    assert_eq!(text(service.clone().oneshot(get("/p")).await?).await, "v1");
    mode.set(ERROR);
    advance(secs(23 * 3600)).await;
    let answer = service.clone().oneshot(get("/p")).await?;
    assert_eq!(info(&answer).status, CacheStatus::StaleIfError);
    advance(secs(3600 + 11)).await; // a day and a second stale
    assert!(service.clone().oneshot(get("/p")).await.is_err());

    let mode = Mode::default();
    let (origin, _calls) = switchable(&[("cache-control", "max-age=10")], mode.clone());
    let service = SwrLayer::shared_cache()
        .max_stale_when_disconnected(None)
        .layer(origin);
    assert_eq!(text(service.clone().oneshot(get("/p")).await?).await, "v1");
    mode.set(ERROR);
    advance(secs(60)).await;
    assert!(service.clone().oneshot(get("/p")).await.is_err());
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn the_application_preset_serves_stale_when_disconnected_only_when_asked() -> TestResult {
    for (most, serves) in [(None, false), (Some(secs(3600)), true)] {
        let mode = Mode::default();
        let (origin, _calls) = switchable(&[("cache-control", "max-age=10")], mode.clone());
        let mut layer = SwrLayer::new();
        if let Some(most) = most {
            layer = layer.max_stale_when_disconnected(most);
        }
        let service = layer.layer(origin);
        assert_eq!(text(service.clone().oneshot(get("/p")).await?).await, "v1");
        mode.set(ERROR);
        advance(secs(10 + 300 + 60)).await; // past the default stale-if-error window
        let answer = service.clone().oneshot(get("/p")).await;
        assert_eq!(
            answer.is_ok(),
            serves,
            "max_stale_when_disconnected({most:?})"
        );
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn waiters_of_an_unreachable_origin_get_the_stale_response_too() -> TestResult {
    let mode = Mode::default();
    let gate = Gate::new();
    let (origin, calls) = {
        let (mode, gate) = (mode.clone(), gate.clone());
        origin(move |n, _request: Request<ReqBody>| {
            let (mode, gate) = (mode.clone(), gate.clone());
            async move {
                if mode.get() == ERROR {
                    gate.wait().await;
                    return Err::<Reply, BoxError>("connection reset".into());
                }
                Ok(reply_cc(format!("v{n}"), "max-age=10"))
            }
        })
    };
    let service = SwrLayer::shared_cache().layer(origin);
    assert_eq!(text(service.clone().oneshot(get("/p")).await?).await, "v1");
    advance(secs(120)).await;
    mode.set(ERROR);
    let first = tokio::spawn(service.clone().oneshot(get("/p")));
    settle().await;
    let second = tokio::spawn(service.clone().oneshot(get("/p")));
    settle().await;
    gate.open();
    for answer in [first.await??, second.await??] {
        assert_eq!(info(&answer).status, CacheStatus::StaleIfError);
        assert_eq!(text(answer).await, "v1");
    }
    assert_eq!(calls.get(), 2, "one origin call for both");
    Ok(())
}

// --- Item 5: cache tags --------------------------------------------------------------------

/// `/a` tagged `product-1 shared` (Surrogate-Key), `/b` tagged `product-2, shared`
/// (Cache-Tag), `/c` tagged `shared` (xkey), `/d` untagged; each answers `{path} v{n}`.
fn tagged_origin(cache_control: &'static str) -> (impl OriginService, Calls) {
    origin(move |n, request: Request<ReqBody>| async move {
        let path = request.uri().path().to_owned();
        let mut response = reply_cc(format!("{path} v{n}"), cache_control);
        let tag = match path.as_str() {
            "/a" => Some(("surrogate-key", "product-1 shared")),
            "/b" => Some(("cache-tag", "product-2, shared")),
            "/c" => Some(("xkey", "shared")),
            _ => None,
        };
        if let Some((name, value)) = tag {
            response = with_header(response, HeaderName::from_static(name), value);
        }
        Ok::<_, BoxError>(response)
    })
}

async fn status_and_text<S>(service: &S, path: &str) -> (CacheStatus, String)
where
    S: tower::Service<
            Request<ReqBody>,
            Response = http::Response<tower_swr::SwrBody<ReqBody>>,
            Error = BoxError,
        > + Clone,
{
    let response = service.clone().oneshot(get(path)).await.expect("an answer");
    (info(&response).status, text(response).await)
}

#[tokio::test(start_paused = true)]
async fn each_tag_field_tags_the_stored_response_and_a_hard_purge_makes_it_a_miss() -> TestResult {
    let (origin, calls) = tagged_origin("max-age=600");
    let layer = SwrLayer::new();
    let cache = layer.handle();
    let service = layer.layer(origin);
    for path in ["/a", "/b", "/c", "/d"] {
        service.clone().oneshot(get(path)).await?;
    }
    assert_eq!(calls.get(), 4);
    assert_eq!(cache.purge_tag(["shared"]), 1);
    for path in ["/a", "/b", "/c"] {
        let (status, body) = status_and_text(&service, path).await;
        assert_eq!(status, CacheStatus::Miss, "{path} was purged by tag");
        assert!(
            body.ends_with('2')
                || body.ends_with('5')
                || body.ends_with('6')
                || body.ends_with('7'),
            "{body}"
        );
    }
    assert_eq!(calls.get(), 7);
    let (status, body) = status_and_text(&service, "/d").await;
    assert_eq!(
        (status, body.as_str()),
        (CacheStatus::Fresh, "/d v4"),
        "untagged: untouched"
    );
    // What was stored after the purge is not purged by it.
    for path in ["/a", "/b", "/c"] {
        assert_eq!(
            status_and_text(&service, path).await.0,
            CacheStatus::Fresh,
            "{path}"
        );
    }
    assert_eq!(calls.get(), 7);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn purge_tag_takes_several_tags_and_purges_only_those() -> TestResult {
    let (origin, calls) = tagged_origin("max-age=600");
    let layer = SwrLayer::shared_cache();
    let cache = layer.handle();
    let service = layer.layer(origin);
    for path in ["/a", "/b", "/c"] {
        service.clone().oneshot(get(path)).await?;
    }
    // Distinct valid tags: `product-1`, `product-2`; `bad tag` and the empty one are skipped.
    assert_eq!(
        cache.purge_tag(["product-1", "product-2", "product-1", "bad tag", ""]),
        2
    );
    assert_eq!(status_and_text(&service, "/a").await.0, CacheStatus::Miss);
    assert_eq!(status_and_text(&service, "/b").await.0, CacheStatus::Miss);
    assert_eq!(status_and_text(&service, "/c").await.0, CacheStatus::Fresh);
    assert_eq!(calls.get(), 5);
    // Tags are compared exactly.
    cache.purge_tag(["SHARED"]);
    assert_eq!(status_and_text(&service, "/c").await.0, CacheStatus::Fresh);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_soft_tag_purge_serves_stale_while_one_refresh_replaces_it() -> TestResult {
    let (origin, calls) = tagged_origin("max-age=600, stale-while-revalidate=60");
    let layer = SwrLayer::shared_cache();
    let cache = layer.handle();
    let service = layer.layer(origin);
    service.clone().oneshot(get("/a")).await?;
    assert_eq!(cache.soft_purge_tag(["product-1"]), 1);
    let stale = service.clone().oneshot(get("/a")).await?;
    assert_eq!(info(&stale).status, CacheStatus::Stale);
    assert!(ttl_param(&stale) <= 0, "{}", cache_status(&stale));
    assert_eq!(text(stale).await, "/a v1");
    settle().await;
    assert_eq!(calls.get(), 2, "one background refresh");
    let (status, body) = status_and_text(&service, "/a").await;
    assert_eq!((status, body.as_str()), (CacheStatus::Fresh, "/a v2"));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_soft_tag_purge_without_a_stale_window_revalidates_on_the_next_request() -> TestResult {
    let (origin, calls) = tagged_origin("max-age=600");
    let layer = SwrLayer::shared_cache();
    let cache = layer.handle();
    let service = layer.layer(origin);
    service.clone().oneshot(get("/a")).await?;
    cache.soft_purge_tag(["shared"]);
    let (status, body) = status_and_text(&service, "/a").await;
    assert_eq!((status, body.as_str()), (CacheStatus::Miss, "/a v2"));
    assert_eq!(calls.get(), 2);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_hard_purged_entry_never_stands_in_for_a_failing_origin() -> TestResult {
    let mode = Mode::default();
    let (origin, _calls) = switchable(
        &[
            ("cache-control", "max-age=10, stale-if-error=600"),
            ("surrogate-key", "k"),
        ],
        mode.clone(),
    );
    let layer = SwrLayer::shared_cache();
    let cache = layer.handle();
    let service = layer.layer(origin);
    service.clone().oneshot(get("/p")).await?;
    advance(secs(20)).await;
    cache.purge_tag(["k"]);
    mode.set(ERROR);
    assert!(service.clone().oneshot(get("/p")).await.is_err());
    mode.set(UNAVAILABLE);
    let answer = service.clone().oneshot(get("/p")).await?;
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_load_under_way_when_its_tag_is_purged_is_not_served_afterwards() -> TestResult {
    let gate = Gate::new();
    let (origin, calls) = {
        let gate = gate.clone();
        origin(move |n, _request: Request<ReqBody>| {
            let gate = gate.clone();
            async move {
                if n == 1 {
                    gate.wait().await;
                }
                let response = reply_cc(format!("v{n}"), "max-age=600");
                Ok::<_, BoxError>(with_header(response, HeaderName::from_static("xkey"), "k"))
            }
        })
    };
    let layer = SwrLayer::shared_cache();
    let cache = layer.handle();
    let service = layer.layer(origin);
    let first = tokio::spawn(service.clone().oneshot(get("/p")));
    settle().await;
    cache.purge_tag(["k"]);
    // A request after the purge does not take the purged load's answer.
    let second = tokio::spawn(service.clone().oneshot(get("/p")));
    settle().await;
    gate.open();
    assert_eq!(text(first.await??).await, "v1", "its own request gets it");
    assert_eq!(text(second.await??).await, "v2");
    let (status, body) = status_and_text(&service, "/p").await;
    assert_eq!((status, body.as_str()), (CacheStatus::Fresh, "v2"));
    assert_eq!(calls.get(), 2);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn tag_fields_are_removed_downstream_unless_forwarded() -> TestResult {
    for forward in [false, true] {
        let (origin, _calls) = tagged_origin("max-age=600");
        let service = SwrLayer::new().forward_cache_tags(forward).layer(origin);
        for path in ["/a", "/b", "/c"] {
            for round in ["miss", "hit"] {
                let response = service.clone().oneshot(get(path)).await?;
                let present = ["surrogate-key", "cache-tag", "xkey"]
                    .iter()
                    .any(|name| response.headers().contains_key(*name));
                assert_eq!(
                    present, forward,
                    "{path} {round}, forward_cache_tags({forward})"
                );
            }
        }
        // Not stored (no-store): removed all the same.
        let (origin, _calls) = tagged_origin("no-store");
        let service = SwrLayer::new().forward_cache_tags(forward).layer(origin);
        let response = service.clone().oneshot(get("/a")).await?;
        assert_eq!(response.headers().contains_key("surrogate-key"), forward);
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_response_keeps_its_first_64_tags_and_ignores_the_rest() -> TestResult {
    let many: String = (0..100).map(|i| format!("t{i} ")).collect();
    let many: &'static str = Box::leak(many.into_boxed_str());
    let long: &'static str = Box::leak("x".repeat(257).into_boxed_str());
    let headers: &'static [(&'static str, &'static str)] = Box::leak(Box::new([
        ("cache-control", "max-age=600"),
        ("surrogate-key", many),
        ("cache-tag", long),
    ]));
    let (origin, calls) = switchable(headers, Mode::default());
    let layer = SwrLayer::new();
    let cache = layer.handle();
    let service = layer.layer(origin);
    service.clone().oneshot(get("/p")).await?;
    cache.purge_tag(["t70", &"x".repeat(257)]);
    assert_eq!(
        status_and_text(&service, "/p").await.0,
        CacheStatus::Fresh,
        "past the limits"
    );
    cache.purge_tag(["t63"]);
    assert_eq!(
        status_and_text(&service, "/p").await.0,
        CacheStatus::Miss,
        "the 64th tag"
    );
    assert_eq!(calls.get(), 2);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_revalidated_entry_keeps_its_tags() -> TestResult {
    let (origin, calls) = origin(|n, request: Request<ReqBody>| async move {
        if n > 1 && request.headers().contains_key("if-none-match") {
            let mut response = reply_status(StatusCode::NOT_MODIFIED, "");
            response = with_header(response, http::header::ETAG, "\"e\"");
            return Ok::<_, BoxError>(with_header(
                response,
                http::header::CACHE_CONTROL,
                "max-age=10",
            ));
        }
        let response = reply_cc(format!("v{n}"), "max-age=10");
        let response = with_header(response, http::header::ETAG, "\"e\"");
        Ok(with_header(
            response,
            HeaderName::from_static("surrogate-key"),
            "k",
        ))
    });
    let layer = SwrLayer::shared_cache();
    let cache = layer.handle();
    let service = layer.layer(origin);
    service.clone().oneshot(get("/p")).await?;
    advance(secs(20)).await;
    let revalidated = service.clone().oneshot(get("/p")).await?;
    assert!(
        cache_status(&revalidated).contains("fwd-status=304"),
        "{}",
        cache_status(&revalidated)
    );
    assert_eq!(status_and_text(&service, "/p").await.0, CacheStatus::Fresh);
    cache.purge_tag(["k"]);
    assert_eq!(status_and_text(&service, "/p").await.0, CacheStatus::Miss);
    assert_eq!(calls.get(), 3);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_tag_purge_stays_in_its_layer() -> TestResult {
    let budget = SwrLayer::new();
    let (one, _) = tagged_origin("max-age=600");
    let (two, _) = tagged_origin("max-age=600");
    let first = SwrLayer::new().cache_name("one").share_memory_with(&budget);
    let second = SwrLayer::new().cache_name("two").share_memory_with(&budget);
    let (first_cache, first_service) = (first.handle(), first.layer(one));
    let second_service = second.layer(two);
    first_service.clone().oneshot(get("/a")).await?;
    second_service.clone().oneshot(get("/a")).await?;
    first_cache.purge_tag(["shared"]);
    assert_eq!(
        status_and_text(&first_service, "/a").await.0,
        CacheStatus::Miss
    );
    assert_eq!(
        status_and_text(&second_service, "/a").await.0,
        CacheStatus::Fresh
    );
    Ok(())
}

// --- Over real HTTP, through examples/reverse_proxy.rs --------------------------------------

#[allow(dead_code)]
#[path = "../examples/reverse_proxy.rs"]
mod reverse_proxy;

mod wire {
    use super::reverse_proxy;
    use axum::response::IntoResponse;
    use axum::routing::get;
    use axum::Router;
    use bytes::Bytes;
    use http::{Method, Request, StatusCode};
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    type Client_ = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

    /// The upstream: `/t1` tagged `k one` (Surrogate-Key), `/t2` tagged `k` (xkey), `/p` with
    /// `max-age=1`; every answer closes its connection. `mode` 1: every answer is a 503.
    async fn upstream(
        calls: Arc<AtomicUsize>,
        mode: Arc<AtomicUsize>,
    ) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let handler = move |tag: Option<(&'static str, &'static str)>, cc: &'static str| {
            let (calls, mode) = (calls.clone(), mode.clone());
            move || async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                if mode.load(Ordering::SeqCst) == 1 {
                    return (
                        StatusCode::SERVICE_UNAVAILABLE,
                        [("connection", "close")],
                        "down".to_owned(),
                    )
                        .into_response();
                }
                let mut response = (
                    [("cache-control", cc), ("connection", "close")],
                    format!("v{n}"),
                )
                    .into_response();
                if let Some((name, value)) = tag {
                    response.headers_mut().insert(name, value.parse().unwrap());
                }
                response
            }
        };
        let app = Router::new()
            .route(
                "/t1",
                get(handler(Some(("surrogate-key", "k one")), "max-age=600")),
            )
            .route("/t2", get(handler(Some(("xkey", "k")), "max-age=600")))
            .route("/p", get(handler(None, "max-age=1")));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        (addr, task)
    }

    async fn proxy(upstream: SocketAddr) -> SocketAddr {
        let (app, _cache) = reverse_proxy::app(format!("http://{upstream}").parse().unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });
        addr
    }

    /// Status, `Cache-Status`, whether a tag field came through, and the body.
    async fn send(
        client: &Client_,
        method: &str,
        url: String,
        headers: &[(&str, &str)],
    ) -> (StatusCode, String, bool, String) {
        let mut request = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = client
            .request(request.body(Full::default()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let cache_status = headers
            .get("cache-status")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let tagged = ["surrogate-key", "cache-tag", "xkey"]
            .iter()
            .any(|n| headers.contains_key(*n));
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            cache_status,
            tagged,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn over_http_an_unreachable_upstream_gets_the_stale_copy_and_a_503_does_not() {
        let (calls, mode) = (Arc::default(), Arc::new(AtomicUsize::new(0)));
        let (up, task) = upstream(Arc::clone(&calls), Arc::clone(&mode)).await;
        let proxy = proxy(up).await;
        let client: Client_ = Client::builder(TokioExecutor::new()).build_http();
        let url = |path: &str| format!("http://{proxy}{path}");
        let (status, _, _, body) = send(&client, "GET", url("/p"), &[]).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "v1"));
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        // The upstream's own 503 is its answer.
        mode.store(1, Ordering::SeqCst);
        let (status, _, _, body) = send(&client, "GET", url("/p"), &[]).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "down")
        );
        // Gone: connections are refused.
        task.abort();
        let _ = task.await;
        let (status, cache_status, _, body) = send(&client, "GET", url("/p"), &[]).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "v1"),
            "{cache_status}"
        );
        assert_eq!(cache_status, "tower-swr; fwd=stale");
        // Nothing stored to stand in: the proxy's own 502.
        let (status, _, _, _) = send(&client, "GET", url("/t1"), &[]).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
    }

    #[tokio::test]
    async fn over_http_purge_by_surrogate_key_xkey_purge_or_target_from_loopback() {
        let calls = Arc::new(AtomicUsize::new(0));
        let (up, _task) = upstream(Arc::clone(&calls), Arc::default()).await;
        let proxy = proxy(up).await;
        let client: Client_ = Client::builder(TokioExecutor::new()).build_http();
        let url = |path: &str| format!("http://{proxy}{path}");
        for path in ["/t1", "/t2", "/t1", "/t2"] {
            let (status, _, tagged, _) = send(&client, "GET", url(path), &[]).await;
            assert_eq!(status, StatusCode::OK);
            assert!(!tagged, "tag fields are not sent downstream");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        let (status, _, _, body) =
            send(&client, "PURGE", url("/"), &[("surrogate-key", "one")]).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "purged 1 tags\n"));
        let (_, cache_status, _, _) = send(&client, "GET", url("/t1"), &[]).await;
        assert!(cache_status.contains("fwd=uri-miss"), "{cache_status}");
        let (_, cache_status, _, _) = send(&client, "GET", url("/t2"), &[]).await;
        assert!(cache_status.contains("hit"), "{cache_status}");
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let (status, _, _, body) = send(&client, "PURGE", url("/"), &[("xkey-purge", "k")]).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "purged 1 tags\n"));
        for path in ["/t1", "/t2"] {
            let (_, cache_status, _, _) = send(&client, "GET", url(path), &[]).await;
            assert!(
                cache_status.contains("fwd=uri-miss"),
                "{path}: {cache_status}"
            );
        }
        assert_eq!(calls.load(Ordering::SeqCst), 5);

        let (status, _, _, body) = send(&client, "PURGE", url("/t1"), &[]).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "purged /t1\n"));
        // Nothing left to purge: 404.
        let (status, _, _, _) = send(&client, "PURGE", url("/t1"), &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _, _, _) = send(&client, "PURGE", url("/never-stored"), &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (_, cache_status, _, _) = send(&client, "GET", url("/t1"), &[]).await;
        assert!(cache_status.contains("fwd=uri-miss"), "{cache_status}");
        assert_eq!(calls.load(Ordering::SeqCst), 6);
    }
}
