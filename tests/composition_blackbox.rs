//! Black-box tests of `SwrLayer` composed with what real axum apps stack around it: tower-http
//! middlewares on either side of the layer (compression, timeouts, tracing, CORS, response
//! headers, body limits, request ids), tower's `Buffer`, `ConcurrencyLimit`, `LoadShed`,
//! `RateLimit` and `Timeout` (with axum's `HandleErrorLayer`), axum's routing features (`State`,
//! rejecting extractors, `nest`, `fallback`, `middleware::from_fn`, `route_layer`, connect info),
//! and what the layer makes observable (`Age`, `Cache-Status`, `Stats`, `metrics`, `tracing`).
//!
//! Written from README.md, CHANGELOG.md and the public API's documentation only.

mod common;

use axum::body::Body as AxumBody;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{ConnectInfo, Json, Path, Query, State};
use axum::http::{header, HeaderValue, Method, Request, Response, StatusCode};
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{advance, Instant};
use tower::{Layer, ServiceBuilder, ServiceExt};
use tower_swr::{CacheStatus, SwrLayer};

// ---------------------------------------------------------------------------------------------
// Helpers of this file
// ---------------------------------------------------------------------------------------------

/// A counter handlers bump, shared with the test.
#[derive(Clone, Default)]
struct Hits(Arc<AtomicUsize>);

impl Hits {
    fn bump(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// A text long enough for `CompressionLayer`'s default predicate (over 32 bytes).
fn long_text(n: usize) -> String {
    format!("call {n}: ") + &"compressible text, ".repeat(100)
}

/// A handler answering `long_text(call)` with `Cache-Control: max-age=60`.
fn long_handler(
    hits: &Hits,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<AxumBody>> + Send>>
       + Clone
       + Send
       + Sync
       + 'static {
    let hits = hits.clone();
    move || {
        let n = hits.bump();
        Box::pin(
            async move { ([(header::CACHE_CONTROL, "max-age=60")], long_text(n)).into_response() },
        )
    }
}

fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b])
}

fn get_h(uri: &str, headers: &[(&str, &str)]) -> Request<AxumBody> {
    app_req(Method::GET, uri, headers)
}

async fn bytes_of(response: Response<AxumBody>) -> Bytes {
    body(response).await.expect("a body without errors")
}

fn status_is(response: &Response<AxumBody>, status: CacheStatus) -> bool {
    cache_info(response).map(|i| i.status) == Some(status)
}

// ---------------------------------------------------------------------------------------------
// CompressionLayer
// ---------------------------------------------------------------------------------------------

/// Compression in front of the cache: the cache stores the identity body once and every client
/// gets the encoding it accepted, from that one entry.
#[tokio::test(start_paused = true)]
async fn compression_outside_one_entry_serves_each_client_its_encoding() {
    let hits = Hits::default();
    let app = Router::new()
        .route("/page", get(long_handler(&hits)))
        .layer(SwrLayer::new())
        .layer(tower_http::compression::CompressionLayer::new());

    let gz = app_send(&app, get_h("/page", &[("accept-encoding", "gzip")])).await;
    assert_eq!(header_of(&gz, "content-encoding").as_deref(), Some("gzip"));
    assert!(is_gzip(&bytes_of(gz).await));

    let plain = app_send(&app, get_h("/page", &[])).await;
    assert_eq!(header_of(&plain, "content-encoding"), None);
    assert!(statuses(&plain).contains("hit"), "{}", statuses(&plain));
    assert_eq!(bytes_of(plain).await, long_text(1).as_bytes());

    let br = app_send(&app, get_h("/page", &[("accept-encoding", "br")])).await;
    assert_eq!(header_of(&br, "content-encoding"), None);
    assert_eq!(bytes_of(br).await, long_text(1).as_bytes());
    assert_eq!(hits.get(), 1, "one origin call for all encodings");
}

/// Compression behind the cache: the stored response is gzip and says `Vary: accept-encoding`,
/// so a client that did not accept gzip never gets it (a variant of its own), and the gzip
/// variant is served from memory to the next gzip client.
#[tokio::test(start_paused = true)]
async fn compression_inside_gzip_never_reaches_a_client_that_did_not_accept_it() {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/page",
            get(long_handler(&hits)).layer(tower_http::compression::CompressionLayer::new()),
        )
        .layer(SwrLayer::new());

    let gz = app_send(&app, get_h("/page", &[("accept-encoding", "gzip")])).await;
    assert_eq!(header_of(&gz, "content-encoding").as_deref(), Some("gzip"));
    assert!(header_of(&gz, "vary")
        .unwrap_or_default()
        .to_ascii_lowercase()
        .contains("accept-encoding"));
    assert!(is_gzip(&bytes_of(gz).await));

    for accept in [
        None,
        Some("identity"),
        Some("br"),
        Some("gzip;q=0"),
        Some("deflate"),
    ] {
        let headers: Vec<(&str, &str)> =
            accept.map(|a| ("accept-encoding", a)).into_iter().collect();
        let response = app_send(&app, get_h("/page", &headers)).await;
        assert_eq!(
            header_of(&response, "content-encoding"),
            None,
            "Accept-Encoding {accept:?} got an encoded body ({})",
            statuses(&response)
        );
        let bytes = bytes_of(response).await;
        assert!(
            !is_gzip(&bytes),
            "Accept-Encoding {accept:?} got gzip bytes"
        );
        assert!(bytes.starts_with(b"call "), "Accept-Encoding {accept:?}");
    }

    let again = app_send(&app, get_h("/page", &[("accept-encoding", "gzip")])).await;
    assert!(statuses(&again).contains("hit"), "{}", statuses(&again));
    assert_eq!(
        header_of(&again, "content-encoding").as_deref(),
        Some("gzip")
    );
    assert!(
        header_of(&again, "vary").is_some(),
        "the stored Vary reaches clients on hits"
    );
    assert!(is_gzip(&bytes_of(again).await));
}

/// The same variant asked twice with an identical `Accept-Encoding` is one origin call: the
/// `Vary` index works on the value the client sent.
#[tokio::test(start_paused = true)]
async fn compression_inside_same_accept_encoding_is_one_origin_call() {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/page",
            get(long_handler(&hits)).layer(tower_http::compression::CompressionLayer::new()),
        )
        .layer(SwrLayer::new());
    for _ in 0..3 {
        let r = app_send(
            &app,
            get_h("/page", &[("accept-encoding", "gzip, deflate, br")]),
        )
        .await;
        assert_eq!(header_of(&r, "content-encoding").as_deref(), Some("gzip"));
        bytes_of(r).await;
    }
    for _ in 0..2 {
        let r = app_send(&app, get_h("/page", &[])).await;
        assert_eq!(header_of(&r, "content-encoding"), None);
        bytes_of(r).await;
    }
    assert_eq!(hits.get(), 2, "one call per Accept-Encoding variant");
}

/// Over a real socket: compression inside the cache, a gzip client then a plain one; the plain
/// one reads identity bytes off the wire.
#[tokio::test]
async fn compression_inside_over_the_wire_plain_client_reads_identity() {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/page",
            get(long_handler(&hits)).layer(tower_http::compression::CompressionLayer::new()),
        )
        .layer(SwrLayer::new());
    let addr = serve(app).await;
    let host = addr.to_string();
    let gz = exchange(
        addr,
        &raw_get("/page", &host, "Accept-Encoding: gzip\r\n"),
        false,
    )
    .await
    .expect("a response");
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert!(is_gzip(&gz.body));
    let plain = exchange(addr, &raw_get("/page", &host, ""), false)
        .await
        .expect("a response");
    assert_eq!(
        plain.header("content-encoding"),
        None,
        "{:?}",
        plain.headers
    );
    assert!(
        plain.body.starts_with(b"call "),
        "identity body on the wire"
    );
    let gz2 = exchange(
        addr,
        &raw_get("/page", &host, "Accept-Encoding: gzip\r\n"),
        false,
    )
    .await
    .expect("a response");
    assert!(gz2.cache_status().contains("hit"), "{}", gz2.cache_status());
    assert!(is_gzip(&gz2.body));
    assert_eq!(hits.get(), 2);
}

// ---------------------------------------------------------------------------------------------
// tower-http TimeoutLayer
// ---------------------------------------------------------------------------------------------

fn slow_handler(
    hits: &Hits,
    fast_calls: usize,
    cache_control: &'static str,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<AxumBody>> + Send>>
       + Clone
       + Send
       + Sync
       + 'static {
    let hits = hits.clone();
    move || {
        let n = hits.bump();
        Box::pin(async move {
            if n > fast_calls {
                tokio::time::sleep(secs(5)).await;
            }
            ([(header::CACHE_CONTROL, cache_control)], format!("v{n}")).into_response()
        })
    }
}

/// A `TimeoutLayer` inside the cache answers `408`: about one client, never stored nor shared
/// (README: `408`/`429` are never shared), so the next request asks the origin again.
#[tokio::test(start_paused = true)]
async fn timeout_inside_408_is_not_cached_nor_shared() {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/slow",
            get(slow_handler(&hits, 0, "max-age=60")).layer(
                tower_http::timeout::TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    secs(1),
                ),
            ),
        )
        .layer(SwrLayer::new());
    for round in 1..=3 {
        let r = app_send(&app, app_get("/slow")).await;
        assert_eq!(r.status(), StatusCode::REQUEST_TIMEOUT, "round {round}");
        assert!(
            !status_is(&r, CacheStatus::FailureHit),
            "round {round}: {}",
            statuses(&r)
        );
        assert!(
            !statuses(&r).contains("hit"),
            "round {round}: {}",
            statuses(&r)
        );
    }
    assert_eq!(hits.get(), 3, "every request reached the handler");
}

/// A `408` from an inner `TimeoutLayer` is an origin failure (`failure_statuses` default): a
/// stored response inside stale-if-error stands in, `fwd=stale; fwd-status=408`.
#[tokio::test(start_paused = true)]
async fn timeout_inside_408_lets_stale_if_error_stand_in() {
    let hits = Hits::default();
    let layer = SwrLayer::new();
    let app = Router::new()
        .route(
            "/slow",
            get(slow_handler(
                &hits,
                1,
                "max-age=1, stale-while-revalidate=0, stale-if-error=60",
            ))
            .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                secs(1),
            )),
        )
        .layer(layer.clone());
    assert_eq!(app_text(app_send(&app, app_get("/slow")).await).await, "v1");
    advance(secs(3)).await;
    let r = app_send(&app, app_get("/slow")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let cs = statuses(&r);
    assert!(
        cs.contains("fwd=stale") && cs.contains("fwd-status=408"),
        "{cs}"
    );
    assert_eq!(app_text(r).await, "v1");
    assert_eq!(layer.stats().stale_if_error, 1);
}

/// A `408` answering a background refresh keeps the stored entry (CHANGELOG: "a `TimeoutLayer`
/// ... inside the layer keeps the stored entry and backs off").
#[tokio::test(start_paused = true)]
async fn timeout_inside_408_refresh_keeps_the_entry() {
    let hits = Hits::default();
    let layer = SwrLayer::new();
    let app = Router::new()
        .route(
            "/slow",
            get(slow_handler(&hits, 1, SWR_10_60)).layer(
                tower_http::timeout::TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    secs(1),
                ),
            ),
        )
        .layer(layer.clone());
    assert_eq!(app_text(app_send(&app, app_get("/slow")).await).await, "v1");
    advance(secs(12)).await;
    let stale = app_send(&app, app_get("/slow")).await;
    assert!(
        status_is(&stale, CacheStatus::Stale),
        "{}",
        statuses(&stale)
    );
    assert_eq!(app_text(stale).await, "v1");
    for _ in 0..4 {
        settle().await;
        advance(secs(1)).await;
    }
    settle().await;
    let stats = layer.stats();
    assert_eq!(stats.refreshes_started, 1);
    assert_eq!(stats.refreshes_failed, 1, "{stats:?}");
    let after = app_send(&app, app_get("/slow")).await;
    assert_eq!(after.status(), StatusCode::OK);
    assert_eq!(app_text(after).await, "v1", "the entry survived the 408");
}

/// A client-facing timeout in front of the layer shorter than the origin: documented, "cancels
/// the leader's origin call each time: the entry never fills".
#[tokio::test(start_paused = true)]
async fn timeout_outside_shorter_than_origin_never_fills() {
    let hits = Hits::default();
    let layer = SwrLayer::new();
    let app = Router::new()
        .route("/slow", get(slow_handler(&hits, 0, "max-age=60")))
        .layer(layer.clone())
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            secs(1),
        ));
    for _ in 0..3 {
        let r = app_send(&app, app_get("/slow")).await;
        assert_eq!(r.status(), StatusCode::REQUEST_TIMEOUT);
        advance(secs(10)).await;
        settle().await;
    }
    assert_eq!(hits.get(), 3, "the origin is asked each time");
    assert_eq!(layer.stats().entries, 0);
}

/// A client-facing timeout longer than the origin: the miss fills and later answers come from
/// memory at once, with the layer's headers passing through the timeout.
#[tokio::test(start_paused = true)]
async fn timeout_outside_longer_than_origin_caches() {
    let hits = Hits::default();
    let app = Router::new()
        .route("/slow", get(slow_handler(&hits, 0, "max-age=60")))
        .layer(SwrLayer::new())
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            secs(30),
        ));
    let start = Instant::now();
    assert_eq!(app_text(app_send(&app, app_get("/slow")).await).await, "v1");
    assert_eq!(start.elapsed(), secs(5));
    let start = Instant::now();
    let r = app_send(&app, app_get("/slow")).await;
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert!(statuses(&r).contains("hit"));
    assert_eq!(app_text(r).await, "v1");
    assert_eq!(hits.get(), 1);
}

// ---------------------------------------------------------------------------------------------
// TraceLayer
// ---------------------------------------------------------------------------------------------

fn plain_handler(
    hits: &Hits,
    cache_control: &'static str,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<AxumBody>> + Send>>
       + Clone
       + Send
       + Sync
       + 'static {
    let hits = hits.clone();
    move || {
        let n = hits.bump();
        Box::pin(async move {
            ([(header::CACHE_CONTROL, cache_control)], format!("v{n}")).into_response()
        })
    }
}

const FINISHED: &str = "finished processing request";

/// `TraceLayer` inside the cache sees origin calls only: hits make no request span there.
#[tokio::test(start_paused = true)]
async fn trace_inside_sees_only_origin_calls() {
    let events = Events::default();
    let _collecting = events.install();
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/t",
            get(plain_handler(&hits, "max-age=60"))
                .layer(tower_http::trace::TraceLayer::new_for_http()),
        )
        .layer(SwrLayer::new());
    for _ in 0..4 {
        app_text(app_send(&app, app_get("/t")).await).await;
    }
    assert_eq!(hits.get(), 1);
    assert_eq!(events.matching(tracing::Level::DEBUG, FINISHED).len(), 1);
}

/// `TraceLayer` in front of the cache logs every request, hits included, with the status the
/// client got, and the layer's headers reach the client through it.
#[tokio::test(start_paused = true)]
async fn trace_outside_logs_every_request_and_keeps_cache_headers() {
    let events = Events::default();
    let _collecting = events.install();
    let hits = Hits::default();
    let app = Router::new()
        .route("/t", get(plain_handler(&hits, "max-age=60")))
        .layer(SwrLayer::new())
        .layer(tower_http::trace::TraceLayer::new_for_http());
    let first = app_send(&app, app_get("/t")).await;
    assert!(
        statuses(&first).contains("fwd=uri-miss"),
        "{}",
        statuses(&first)
    );
    app_text(first).await;
    advance(secs(3)).await;
    for _ in 0..3 {
        let r = app_send(&app, app_get("/t")).await;
        assert!(statuses(&r).contains("hit"));
        assert_eq!(age(&r), Some(3));
        assert_eq!(app_text(r).await, "v1");
    }
    let finished = events.matching(tracing::Level::DEBUG, FINISHED);
    assert_eq!(finished.len(), 4);
    assert!(finished
        .iter()
        .all(|e| e.fields.get("status").map(String::as_str) == Some("200")));
}

// ---------------------------------------------------------------------------------------------
// CorsLayer
// ---------------------------------------------------------------------------------------------

fn cors() -> tower_http::cors::CorsLayer {
    tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::AllowOrigin::list([
            HeaderValue::from_static("https://a.example"),
            HeaderValue::from_static("https://b.example"),
        ]))
        .allow_methods([Method::GET])
}

/// CORS behind the cache: its `Vary: origin, ...` keeps one variant per `Origin`, so a client
/// of one origin never gets another origin's `Access-Control-Allow-Origin`.
#[tokio::test(start_paused = true)]
async fn cors_inside_answers_vary_by_origin() {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/api",
            get(plain_handler(&hits, "max-age=60")).layer(cors()),
        )
        .layer(SwrLayer::new());
    let acao = |r: &Response<AxumBody>| header_of(r, "access-control-allow-origin");

    let a = app_send(&app, get_h("/api", &[("origin", "https://a.example")])).await;
    assert_eq!(acao(&a).as_deref(), Some("https://a.example"));
    let b = app_send(&app, get_h("/api", &[("origin", "https://b.example")])).await;
    assert_eq!(
        acao(&b).as_deref(),
        Some("https://b.example"),
        "{}",
        statuses(&b)
    );
    let none = app_send(&app, get_h("/api", &[])).await;
    assert_eq!(acao(&none), None, "{}", statuses(&none));
    let evil = app_send(&app, get_h("/api", &[("origin", "https://evil.example")])).await;
    assert_eq!(acao(&evil), None, "{}", statuses(&evil));
    let a2 = app_send(&app, get_h("/api", &[("origin", "https://a.example")])).await;
    assert_eq!(acao(&a2).as_deref(), Some("https://a.example"));
    assert!(statuses(&a2).contains("hit"), "{}", statuses(&a2));
    assert_eq!(hits.get(), 4, "one origin call per Origin variant");
}

/// A preflight `OPTIONS` through the cache is passed through (`fwd=method`) and never stored:
/// two preflights for different origins each get their own answer.
#[tokio::test(start_paused = true)]
async fn cors_inside_preflight_is_never_cached() {
    let hits = Hits::default();
    let layer = SwrLayer::new();
    let app = Router::new()
        .route(
            "/api",
            get(plain_handler(&hits, "max-age=60")).layer(cors()),
        )
        .layer(layer.clone());
    for origin in [
        "https://a.example",
        "https://b.example",
        "https://a.example",
    ] {
        let r = app_send(
            &app,
            app_req(
                Method::OPTIONS,
                "/api",
                &[("origin", origin), ("access-control-request-method", "GET")],
            ),
        )
        .await;
        assert!(r.status().is_success(), "{}", r.status());
        assert_eq!(
            header_of(&r, "access-control-allow-origin").as_deref(),
            Some(origin)
        );
        assert!(statuses(&r).contains("fwd=method"), "{}", statuses(&r));
    }
    assert_eq!(layer.stats().entries, 0);
    assert_eq!(layer.stats().stores, 0);
    assert_eq!(layer.stats().bypasses, 3);
}

/// CORS in front of the cache: one stored entry, CORS headers computed per request on hits.
#[tokio::test(start_paused = true)]
async fn cors_outside_adds_headers_per_request_to_hits() {
    let hits = Hits::default();
    let app = Router::new()
        .route("/api", get(plain_handler(&hits, "max-age=60")))
        .layer(SwrLayer::new())
        .layer(cors());
    let a = app_send(&app, get_h("/api", &[("origin", "https://a.example")])).await;
    assert_eq!(
        header_of(&a, "access-control-allow-origin").as_deref(),
        Some("https://a.example")
    );
    let b = app_send(&app, get_h("/api", &[("origin", "https://b.example")])).await;
    assert!(statuses(&b).contains("hit"));
    assert_eq!(
        header_of(&b, "access-control-allow-origin").as_deref(),
        Some("https://b.example")
    );
    // the preflight never reaches the cache
    let pre = app_send(
        &app,
        app_req(
            Method::OPTIONS,
            "/api",
            &[
                ("origin", "https://b.example"),
                ("access-control-request-method", "GET"),
            ],
        ),
    )
    .await;
    assert!(statuses(&pre).is_empty(), "{}", statuses(&pre));
    assert_eq!(hits.get(), 1);
}

// ---------------------------------------------------------------------------------------------
// SetResponseHeaderLayer, map_response
// ---------------------------------------------------------------------------------------------

/// A `Cache-Control` set by a layer behind the cache is what the cache reads.
#[tokio::test(start_paused = true)]
async fn set_header_inside_sets_the_lifetime() {
    let hits = Hits::default();
    let hits2 = hits.clone();
    let app = Router::new()
        .route(
            "/h",
            get(move || {
                let n = hits2.bump();
                async move { format!("v{n}") }
            })
            .layer(tower_http::set_header::SetResponseHeaderLayer::overriding(
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=5, stale-while-revalidate=30"),
            )),
        )
        .layer(SwrLayer::new());
    app_text(app_send(&app, app_get("/h")).await).await;
    advance(secs(3)).await;
    let r = app_send(&app, app_get("/h")).await;
    assert!(statuses(&r).contains("ttl=2"), "{}", statuses(&r));
    app_text(r).await;
    advance(secs(4)).await;
    let r = app_send(&app, app_get("/h")).await;
    assert!(
        status_is(&r, CacheStatus::Stale),
        "5 s, not the 60 s default: {}",
        statuses(&r)
    );
    assert!(statuses(&r).contains("ttl=-2"), "{}", statuses(&r));
}

/// A layer in front of the cache changes only what clients see: an outer
/// `Cache-Control: no-store` does not stop the cache behind it, and an outer header is added
/// to hits too.
#[tokio::test(start_paused = true)]
async fn set_header_outside_applies_to_hits_and_does_not_steer_the_cache() {
    let hits = Hits::default();
    let app = Router::new()
        .route("/h", get(plain_handler(&hits, "max-age=60")))
        .layer(SwrLayer::new())
        .layer(tower_http::set_header::SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(
            tower_http::set_header::SetResponseHeaderLayer::if_not_present(
                header::HeaderName::from_static("x-served-by"),
                HeaderValue::from_static("edge-1"),
            ),
        );
    for _ in 0..3 {
        let r = app_send(&app, app_get("/h")).await;
        assert_eq!(header_of(&r, "cache-control").as_deref(), Some("no-store"));
        assert_eq!(header_of(&r, "x-served-by").as_deref(), Some("edge-1"));
        app_text(r).await;
    }
    assert_eq!(hits.get(), 1);
}

/// `axum::middleware::map_response` behind the cache marking answers `no-store`: never stored.
#[tokio::test(start_paused = true)]
async fn map_response_inside_no_store_is_never_stored() {
    let hits = Hits::default();
    let layer = SwrLayer::new();
    let app = Router::new()
        .route(
            "/m",
            get(plain_handler(&hits, "max-age=60")).layer(middleware::map_response(
                |mut r: Response<AxumBody>| async move {
                    r.headers_mut()
                        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    r
                },
            )),
        )
        .layer(layer.clone());
    for n in 1..=3 {
        assert_eq!(
            app_text(app_send(&app, app_get("/m")).await).await,
            format!("v{n}")
        );
    }
    assert_eq!(layer.stats().stores, 0);
}

/// `map_response` behind the cache adding a header: stored with the response, replayed on hits;
/// in front: run per request.
#[tokio::test(start_paused = true)]
async fn map_response_inside_is_stored_outside_runs_per_request() {
    let mapped = Hits::default();
    let (inner, outer) = (mapped.clone(), Hits::default());
    let outer2 = outer.clone();
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/m",
            get(plain_handler(&hits, "max-age=60")).layer(middleware::map_response(
                move |mut r: Response<AxumBody>| {
                    let n = inner.bump();
                    async move {
                        r.headers_mut()
                            .insert("x-inner", HeaderValue::from_str(&n.to_string()).unwrap());
                        r
                    }
                },
            )),
        )
        .layer(SwrLayer::new())
        .layer(middleware::map_response(
            move |mut r: Response<AxumBody>| {
                let n = outer2.bump();
                async move {
                    r.headers_mut()
                        .insert("x-outer", HeaderValue::from_str(&n.to_string()).unwrap());
                    r
                }
            },
        ));
    for n in 1..=3 {
        let r = app_send(&app, app_get("/m")).await;
        assert_eq!(header_of(&r, "x-inner").as_deref(), Some("1"));
        assert_eq!(header_of(&r, "x-outer"), Some(n.to_string()));
    }
    assert_eq!((mapped.get(), outer.get(), hits.get()), (1, 3, 1));
}

// ---------------------------------------------------------------------------------------------
// RequestBodyLimitLayer
// ---------------------------------------------------------------------------------------------

fn get_with_body(uri: &str, body: &'static str) -> Request<AxumBody> {
    Request::builder()
        .uri(uri)
        .header(header::CONTENT_LENGTH, body.len())
        .body(AxumBody::from(body))
        .expect("valid request")
}

/// A `413` of a body limit behind the cache is not a cacheable answer: a body-less `GET` of
/// the same URI is answered by the handler. A `GET` is keyed without its body (README), so a
/// later over-limit `GET` is answered from the stored entry.
#[tokio::test(start_paused = true)]
async fn body_limit_inside_413_is_not_stored() {
    let hits = Hits::default();
    let layer = SwrLayer::new();
    let app = Router::new()
        .route(
            "/b",
            get(plain_handler(&hits, "max-age=60"))
                .layer(tower_http::limit::RequestBodyLimitLayer::new(8)),
        )
        .layer(layer.clone());
    let big = "0123456789abcdefghijklmnopqrstuvwxyz";
    let r = app_send(&app, get_with_body("/b", big)).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let r = app_send(&app, get_with_body("/b", big)).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let ok = app_send(&app, app_get("/b")).await;
    assert_eq!(ok.status(), StatusCode::OK, "{}", statuses(&ok));
    assert_eq!(app_text(ok).await, "v1");
    let after = app_send(&app, get_with_body("/b", big)).await;
    assert_eq!(after.status(), StatusCode::OK);
    assert!(statuses(&after).contains("hit"));
    assert_eq!(layer.stats().stores, 1);
}

/// A body limit in front of the cache rejects before the cache is consulted.
#[tokio::test(start_paused = true)]
async fn body_limit_outside_rejects_even_when_cached() {
    let hits = Hits::default();
    let app = Router::new()
        .route("/b", get(plain_handler(&hits, "max-age=60")))
        .layer(SwrLayer::new())
        .layer(tower_http::limit::RequestBodyLimitLayer::new(8));
    assert_eq!(app_text(app_send(&app, app_get("/b")).await).await, "v1");
    let r = app_send(&app, get_with_body("/b", "0123456789abcdef")).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(statuses(&r).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Request ids
// ---------------------------------------------------------------------------------------------

fn x_request_id() -> header::HeaderName {
    header::HeaderName::from_static("x-request-id")
}

/// Request ids set and propagated in front of the cache: every client gets its own id, hits
/// included, and the per-request header is not part of the key (still one origin call).
#[tokio::test(start_paused = true)]
async fn request_id_outside_each_response_has_its_own_id() {
    let hits = Hits::default();
    let app = Router::new()
        .route("/r", get(plain_handler(&hits, "max-age=60")))
        .layer(SwrLayer::new())
        .layer(tower_http::request_id::PropagateRequestIdLayer::new(
            x_request_id(),
        ))
        .layer(tower_http::request_id::SetRequestIdLayer::new(
            x_request_id(),
            tower_http::request_id::MakeRequestUuid,
        ));
    let mut ids = std::collections::BTreeSet::new();
    for _ in 0..3 {
        let r = app_send(&app, app_get("/r")).await;
        ids.insert(header_of(&r, "x-request-id").expect("an id"));
    }
    let mine = app_send(&app, get_h("/r", &[("x-request-id", "client-chosen")])).await;
    assert_eq!(
        header_of(&mine, "x-request-id").as_deref(),
        Some("client-chosen")
    );
    assert!(statuses(&mine).contains("hit"));
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert_eq!(hits.get(), 1);
}

/// Propagation behind the cache: the id is a header of the stored response, so a hit replays
/// the storing request's id, as any HTTP cache replays stored headers (nothing in the docs says
/// the layer strips per-request headers): put `PropagateRequestIdLayer` in front of the cache.
#[tokio::test(start_paused = true)]
async fn request_id_inside_is_stored_with_the_response() {
    let hits = Hits::default();
    let app = Router::new()
        .route("/r", get(plain_handler(&hits, "max-age=60")))
        .layer(tower_http::request_id::PropagateRequestIdLayer::new(
            x_request_id(),
        ))
        .layer(SwrLayer::new());
    let first = app_send(&app, get_h("/r", &[("x-request-id", "one")])).await;
    assert_eq!(header_of(&first, "x-request-id").as_deref(), Some("one"));
    let second = app_send(&app, get_h("/r", &[("x-request-id", "two")])).await;
    assert!(statuses(&second).contains("hit"));
    assert_eq!(header_of(&second, "x-request-id").as_deref(), Some("one"));
    assert_eq!(hits.get(), 1);
}

// ---------------------------------------------------------------------------------------------
// tower's Buffer, ConcurrencyLimit, LoadShed, RateLimit, Timeout (and axum's HandleErrorLayer)
// ---------------------------------------------------------------------------------------------

/// An origin of test requests that waits for `gate` on every call whose path is `/held`.
fn holding_origin(gate: &Gate) -> (impl OriginService, Calls) {
    let gate = gate.clone();
    origin(move |n, request: http::Request<ReqBody>| {
        let gate = gate.clone();
        async move {
            if request.uri().path() == "/held" {
                gate.wait().await;
            }
            Ok(reply_cc(
                format!("v{n} {}", request.uri().path()),
                "max-age=60",
            ))
        }
    })
}

/// `LoadShed` over `ConcurrencyLimit(1)` behind the cache: the shed request gets tower's own
/// `Overloaded` error as the service's error (README: "the origin's own response or error,
/// unchanged"), not a response made up or stored.
#[tokio::test(start_paused = true)]
async fn load_shed_inside_error_is_the_services_own() {
    let gate = Gate::new();
    let (origin, calls) = holding_origin(&gate);
    let service = SwrLayer::new().remember_failures(Duration::ZERO).layer(
        ServiceBuilder::new()
            .load_shed()
            .concurrency_limit(1)
            .service(origin),
    );
    let held = tokio::spawn(service.clone().oneshot(common::get("/held")));
    settle().await;
    assert_eq!(calls.get(), 1);
    let shed = service.clone().oneshot(common::get("/other")).await;
    let error = shed.expect_err("shed while the one slot is held");
    assert!(
        error.is::<tower::load_shed::error::Overloaded>(),
        "the inner service's own error: {error}"
    );
    gate.open();
    let held = held.await.unwrap().unwrap();
    assert_eq!(body_text(held).await.unwrap(), "v1 /held");
    // capacity is back: the shed key is asked again, and answered by the origin
    let after = service
        .clone()
        .oneshot(common::get("/other"))
        .await
        .unwrap();
    assert_eq!(info(&after).status, CacheStatus::Miss);
    assert_eq!(body_text(after).await.unwrap(), "v2 /other");
}

/// With the default `remember_failures` (1 s), a shed request's error is remembered as a `502`
/// marked `detail=origin-error` for that second (documented), then the origin is asked again.
#[tokio::test(start_paused = true)]
async fn load_shed_inside_error_is_remembered_one_second_then_asked_again() {
    let gate = Gate::new();
    let (origin, _calls) = holding_origin(&gate);
    let layer = SwrLayer::new();
    let service = layer.layer(
        ServiceBuilder::new()
            .load_shed()
            .concurrency_limit(1)
            .service(origin),
    );
    let held = tokio::spawn(service.clone().oneshot(common::get("/held")));
    settle().await;
    assert!(service
        .clone()
        .oneshot(common::get("/other"))
        .await
        .is_err());
    gate.open();
    held.await.unwrap().unwrap();
    let remembered = service
        .clone()
        .oneshot(common::get("/other"))
        .await
        .unwrap();
    assert_eq!(remembered.status(), StatusCode::BAD_GATEWAY);
    let cs = cache_status(&remembered);
    assert!(
        cs.contains("detail=failure") || cs.contains("origin-error"),
        "{cs}"
    );
    assert_eq!(info(&remembered).status, CacheStatus::FailureHit);
    advance(Duration::from_millis(1100)).await;
    let fresh = service
        .clone()
        .oneshot(common::get("/other"))
        .await
        .unwrap();
    assert_eq!(fresh.status(), StatusCode::OK, "{}", cache_status(&fresh));
    assert_eq!(layer.stats().failure_hits, 1);
}

/// Readiness: a hit never waits for a saturated origin (README), here a `ConcurrencyLimit(1)`
/// whose one slot is held by another key's miss.
#[tokio::test(start_paused = true)]
async fn concurrency_limit_inside_hits_do_not_wait_for_a_slot() {
    let gate = Gate::new();
    let (origin, calls) = holding_origin(&gate);
    let service = SwrLayer::new().layer(ServiceBuilder::new().concurrency_limit(1).service(origin));
    assert_eq!(
        body_text(
            service
                .clone()
                .oneshot(common::get("/ready"))
                .await
                .unwrap()
        )
        .await
        .unwrap(),
        "v1 /ready"
    );
    let held = tokio::spawn(service.clone().oneshot(common::get("/held")));
    settle().await;
    assert_eq!(calls.get(), 2);
    let waiting = tokio::spawn(service.clone().oneshot(common::get("/queued")));
    settle().await;
    assert_eq!(calls.get(), 2, "the third key waits for the slot");
    for _ in 0..5 {
        let hit = tokio::time::timeout(secs(1), service.clone().oneshot(common::get("/ready")))
            .await
            .expect("a hit answers while the slot is held")
            .unwrap();
        assert_eq!(info(&hit).status, CacheStatus::Fresh);
    }
    gate.open();
    held.await.unwrap().unwrap();
    let queued = waiting.await.unwrap().unwrap();
    assert_eq!(body_text(queued).await.unwrap(), "v3 /queued");
}

/// `Buffer` + `RateLimit` behind the cache (the pair tower users put together, `RateLimit`
/// being not `Clone`): hits answer at once while the origin's rate is spent; a miss waits for
/// the next period, and nothing is an error.
#[tokio::test(start_paused = true)]
async fn buffered_rate_limit_inside_hits_answer_while_the_rate_is_spent() {
    let (origin, calls) = origin(|n, request: http::Request<ReqBody>| async move {
        Ok(reply_cc(
            format!("v{n} {}", request.uri().path()),
            "max-age=600",
        ))
    });
    let limited = ServiceBuilder::new()
        .buffer(8)
        .rate_limit(1, secs(10))
        .service(origin);
    let service = SwrLayer::new().layer(limited);
    let (first, _) = timed(service.clone(), common::get("/a")).await.unwrap();
    assert_eq!(body_text(first).await.unwrap(), "v1 /a");
    let start = Instant::now();
    let pending = tokio::spawn(service.clone().oneshot(common::get("/b")));
    for _ in 0..5 {
        let (hit, took) = timed(service.clone(), common::get("/a")).await.unwrap();
        assert_eq!(took, Duration::ZERO);
        assert_eq!(info(&hit).status, CacheStatus::Fresh);
    }
    settle().await;
    assert_eq!(calls.get(), 1, "/b waits for the rate");
    let b = pending
        .await
        .unwrap()
        .expect("rate limiting is waiting, not an error");
    assert!(start.elapsed() >= secs(9), "{:?}", start.elapsed());
    assert_eq!(body_text(b).await.unwrap(), "v2 /b");
}

/// tower's `Timeout` behind the cache is "the origin cannot be reached" (README): with a
/// stored response inside stale-if-error it stands in, `fwd=stale`, and a `WARN` is logged.
#[tokio::test(start_paused = true)]
async fn tower_timeout_inside_lets_stale_if_error_stand_in() {
    let events = Events::default();
    let _collecting = events.install();
    let (origin, calls) = origin(|n, _| async move {
        if n > 1 {
            tokio::time::sleep(secs(5)).await;
        }
        Ok(reply_cc(
            format!("v{n}"),
            "max-age=1, stale-while-revalidate=0, stale-if-error=60",
        ))
    });
    let layer = SwrLayer::new();
    let service = layer.layer(ServiceBuilder::new().timeout(secs(1)).service(origin));
    assert_eq!(fetch_text(&service, common::get("/t")).await.unwrap(), "v1");
    advance(secs(3)).await;
    let (answer, took) = timed(service.clone(), common::get("/t")).await.unwrap();
    assert_eq!(took, secs(1), "cut by the timeout");
    assert_eq!(info(&answer).status, CacheStatus::StaleIfError);
    assert!(
        cache_status(&answer).contains("fwd=stale"),
        "{}",
        cache_status(&answer)
    );
    assert_eq!(body_text(answer).await.unwrap(), "v1");
    assert_eq!(calls.get(), 2);
    let stats = layer.stats();
    assert_eq!(
        (stats.stale_if_error, stats.loads_failed),
        (1, 1),
        "{stats:?}"
    );
    assert!(
        !events.at(tracing::Level::WARN).is_empty(),
        "a WARN when a stale entry is served because the origin failed"
    );
}

/// tower's `Timeout` behind the cache with nothing stored: the caller gets tower's own
/// `Elapsed` error.
#[tokio::test(start_paused = true)]
async fn tower_timeout_inside_error_reaches_the_caller_unchanged() {
    let (origin, _calls) = origin(|n, _| async move {
        tokio::time::sleep(secs(5)).await;
        Ok(reply(format!("v{n}")))
    });
    let service = SwrLayer::new().layer(ServiceBuilder::new().timeout(secs(1)).service(origin));
    let error = service
        .oneshot(common::get("/t"))
        .await
        .expect_err("timed out");
    assert!(error.is::<tower::timeout::error::Elapsed>(), "{error}");
}

/// The axum way: `HandleErrorLayer` + `LoadShed` + `ConcurrencyLimit` on a route, behind the
/// cache, turning overload into `429 Too Many Requests`: a 429 is "about one client: never
/// shared" (README), so once capacity is back the next request is answered by the handler.
#[tokio::test(start_paused = true)]
async fn handle_error_load_shed_429_is_never_shared() {
    let gate = Gate::new();
    let hits = Hits::default();
    let (g, h) = (gate.clone(), hits.clone());
    let handler = move |Path(id): Path<String>| {
        let (g, n) = (g.clone(), h.bump());
        async move {
            if id == "held" {
                g.wait().await;
            }
            (
                [(header::CACHE_CONTROL, "max-age=60")],
                format!("v{n} {id}"),
            )
        }
    };
    let layer = SwrLayer::new();
    let app = Router::new()
        .route(
            "/items/{id}",
            get(handler).layer(
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
                        (StatusCode::TOO_MANY_REQUESTS, "busy")
                    }))
                    .load_shed()
                    .concurrency_limit(1),
            ),
        )
        .layer(layer.clone())
        // a `Router<()>` called directly builds its handlers' layers per request (one
        // semaphore each) until its state is given: freeze it as `axum::serve` does
        .with_state(());
    let held = tokio::spawn({
        let app = app.clone();
        async move { app_send(&app, app_get("/items/held")).await }
    });
    settle().await;
    let shed = app_send(&app, app_get("/items/x")).await;
    assert_eq!(shed.status(), StatusCode::TOO_MANY_REQUESTS);
    gate.open();
    app_text(held.await.unwrap()).await;
    let after = app_send(&app, app_get("/items/x")).await;
    assert_eq!(after.status(), StatusCode::OK, "{}", statuses(&after));
    assert_eq!(app_text(after).await, "v2 x");
    assert_eq!(layer.stats().failure_hits, 0);
}

/// The same with overload as `503`: a 5xx with nothing usable is the key's answer for
/// `remember_failures` (1 s, documented), then the handler is asked again; it is never stored.
#[tokio::test(start_paused = true)]
async fn handle_error_load_shed_503_is_remembered_briefly_not_stored() {
    let gate = Gate::new();
    let hits = Hits::default();
    let (g, h) = (gate.clone(), hits.clone());
    let handler = move |Path(id): Path<String>| {
        let (g, n) = (g.clone(), h.bump());
        async move {
            if id == "held" {
                g.wait().await;
            }
            (
                [(header::CACHE_CONTROL, "max-age=60")],
                format!("v{n} {id}"),
            )
        }
    };
    let layer = SwrLayer::new();
    let app = Router::new()
        .route(
            "/items/{id}",
            get(handler).layer(
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
                        (StatusCode::SERVICE_UNAVAILABLE, "overloaded")
                    }))
                    .load_shed()
                    .concurrency_limit(1),
            ),
        )
        .layer(layer.clone())
        // a `Router<()>` called directly builds its handlers' layers per request (one
        // semaphore each) until its state is given: freeze it as `axum::serve` does
        .with_state(());
    let held = tokio::spawn({
        let app = app.clone();
        async move { app_send(&app, app_get("/items/held")).await }
    });
    settle().await;
    let shed = app_send(&app, app_get("/items/x")).await;
    assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
    gate.open();
    app_text(held.await.unwrap()).await;
    let remembered = app_send(&app, app_get("/items/x")).await;
    assert_eq!(remembered.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        statuses(&remembered).contains("detail=failure"),
        "{}",
        statuses(&remembered)
    );
    assert_eq!(app_text(remembered).await, "overloaded");
    advance(Duration::from_millis(1100)).await;
    let after = app_send(&app, app_get("/items/x")).await;
    assert_eq!(after.status(), StatusCode::OK, "{}", statuses(&after));
    assert_eq!(app_text(after).await, "v2 x");
    assert_eq!(hits.get(), 2);
}

/// Limiters in front of the cache (with `HandleErrorLayer` as axum needs): a rejected request
/// never reaches the cache, and the cache's entry is intact for the next one.
#[tokio::test(start_paused = true)]
async fn handle_error_load_shed_outside_rejections_never_touch_the_cache() {
    let gate = Gate::new();
    let hits = Hits::default();
    let (g, h) = (gate.clone(), hits.clone());
    let handler = move |Path(id): Path<String>| {
        let (g, n) = (g.clone(), h.bump());
        async move {
            if id == "held" {
                g.wait().await;
            }
            (
                [(header::CACHE_CONTROL, "max-age=60")],
                format!("v{n} {id}"),
            )
        }
    };
    let layer = SwrLayer::new();
    let app = Router::new()
        .route("/items/{id}", get(handler))
        .layer(layer.clone())
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
                    StatusCode::SERVICE_UNAVAILABLE
                }))
                .load_shed()
                .concurrency_limit(1),
        )
        .with_state(());
    assert_eq!(
        app_text(app_send(&app, app_get("/items/x")).await).await,
        "v1 x"
    );
    let held = tokio::spawn({
        let app = app.clone();
        async move { app_send(&app, app_get("/items/held")).await }
    });
    settle().await;
    let shed = app_send(&app, app_get("/items/x")).await;
    assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(statuses(&shed).is_empty());
    gate.open();
    app_text(held.await.unwrap()).await;
    let hit = app_send(&app, app_get("/items/x")).await;
    assert!(statuses(&hit).contains("hit"), "{}", statuses(&hit));
    assert_eq!(app_text(hit).await, "v1 x");
    assert_eq!(layer.stats().failure_hits, 0);
}

// ---------------------------------------------------------------------------------------------
// axum: State, rejecting extractors, nest, fallback, from_fn, route_layer, connect info
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Default)]
struct AppState {
    renders: Hits,
}

/// A handler with `State` behind the cache (`with_state`): hits never run it.
#[tokio::test(start_paused = true)]
async fn state_handler_runs_once_for_many_requests() {
    let state = AppState::default();
    let app = Router::new()
        .route(
            "/s",
            get(|State(state): State<AppState>| async move {
                format!("render {}", state.renders.bump())
            }),
        )
        .layer(SwrLayer::new())
        .with_state(state.clone());
    for _ in 0..5 {
        assert_eq!(
            app_text(app_send(&app, app_get("/s")).await).await,
            "render 1"
        );
    }
    assert_eq!(state.renders.get(), 1);
}

#[derive(serde::Deserialize)]
struct Page {
    n: u32,
}

/// A `Query` rejection (`400`) is not stored: a `400` is not heuristically cacheable, and
/// nothing in the docs says the layer stores client errors; the same bad URL reaches axum
/// again, and the good one is cached.
#[tokio::test(start_paused = true)]
async fn query_rejection_400_is_not_cached() {
    let hits = Hits::default();
    let h = hits.clone();
    let layer = SwrLayer::new();
    let app = Router::new()
        .route(
            "/q",
            get(move |Query(page): Query<Page>| {
                let n = h.bump();
                async move { format!("page {} call {n}", page.n) }
            }),
        )
        .layer(layer.clone());
    for _ in 0..2 {
        let r = app_send(&app, app_get("/q?n=abc")).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(!statuses(&r).contains("hit"), "{}", statuses(&r));
    }
    assert_eq!(layer.stats().stores, 0);
    assert_eq!(
        app_text(app_send(&app, app_get("/q?n=2")).await).await,
        "page 2 call 1"
    );
    assert_eq!(
        app_text(app_send(&app, app_get("/q?n=2")).await).await,
        "page 2 call 1"
    );
    let still_bad = app_send(&app, app_get("/q?n=abc")).await;
    assert_eq!(still_bad.status(), StatusCode::BAD_REQUEST);
    assert_eq!(layer.stats().stores, 1);
}

/// A `Path` rejection (`400`) is not stored, and does not shadow the good route's entries.
#[tokio::test(start_paused = true)]
async fn path_rejection_400_is_not_cached() {
    let layer = SwrLayer::new();
    let app = Router::new()
        .route(
            "/items/{id}",
            get(|Path(id): Path<u32>| async move { format!("item {id}") }),
        )
        .layer(layer.clone());
    for _ in 0..2 {
        let r = app_send(&app, app_get("/items/abc")).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(!statuses(&r).contains("hit"));
    }
    assert_eq!(
        app_text(app_send(&app, app_get("/items/7")).await).await,
        "item 7"
    );
    assert_eq!(layer.stats().stores, 1);
}

fn get_json(uri: &str, json: &'static str) -> Request<AxumBody> {
    Request::builder()
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(AxumBody::from(json))
        .expect("valid request")
}

/// A `Json` rejection on a `GET` (`422`, or `415` without a content type) is not stored, so a
/// later valid `GET` reaches the handler; once that `200` is stored, a `GET` is answered from
/// it whatever its body (README: "never a request's body ... an origin whose answer depends on
/// it must say `no-store`").
#[tokio::test(start_paused = true)]
async fn json_rejection_is_not_cached_and_get_bodies_are_not_keyed() {
    let layer = SwrLayer::new();
    let app = Router::new()
        .route(
            "/search",
            get(|Json(page): Json<Page>| async move { format!("n={}", page.n) }),
        )
        .layer(layer.clone());
    let r = app_send(&app, get_json("/search", r#"{"n":"x"}"#)).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let r = app_send(&app, common::axum_get("/search")).await;
    assert_eq!(
        r.status(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "{}",
        statuses(&r)
    );
    let ok = app_send(&app, get_json("/search", r#"{"n":3}"#)).await;
    assert_eq!(ok.status(), StatusCode::OK, "{}", statuses(&ok));
    assert_eq!(app_text(ok).await, "n=3");
    let other = app_send(&app, get_json("/search", r#"{"n":"x"}"#)).await;
    assert!(statuses(&other).contains("hit"), "{}", statuses(&other));
    assert_eq!(app_text(other).await, "n=3");
}

/// Clones of one layer inside two `Router::nest` prefixes keep apart (keys use the path the
/// client sent, CHANGELOG), and purges take the path users see.
#[tokio::test(start_paused = true)]
async fn nest_prefixes_keep_apart_and_purge_by_the_full_path() {
    let layer = SwrLayer::new();
    let handle = layer.handle();
    let (ha, hb) = (Hits::default(), Hits::default());
    let (a, b) = (ha.clone(), hb.clone());
    let app = Router::new()
        .nest(
            "/a",
            Router::new()
                .route(
                    "/items",
                    get(move || {
                        let n = a.bump();
                        async move { format!("a{n}") }
                    }),
                )
                .layer(layer.clone()),
        )
        .nest(
            "/b",
            Router::new()
                .route(
                    "/items",
                    get(move || {
                        let n = b.bump();
                        async move { format!("b{n}") }
                    }),
                )
                .layer(layer.clone()),
        );
    for _ in 0..2 {
        assert_eq!(
            app_text(app_send(&app, app_get("/a/items")).await).await,
            "a1"
        );
        assert_eq!(
            app_text(app_send(&app, app_get("/b/items")).await).await,
            "b1"
        );
    }
    assert_eq!(
        handle.purge("/items"),
        0,
        "no entry under the stripped path"
    );
    assert_eq!(handle.purge("/a/items"), 1);
    assert_eq!(
        app_text(app_send(&app, app_get("/a/items")).await).await,
        "a2"
    );
    assert_eq!(
        app_text(app_send(&app, app_get("/b/items")).await).await,
        "b1"
    );
}

/// Inside `nest`, the key the layer reports is the full path the client sent.
#[tokio::test(start_paused = true)]
async fn nest_x_cache_key_names_the_full_path() {
    let app = Router::new().nest(
        "/api/v1",
        Router::new()
            .route("/items", get(|| async { "items" }))
            .layer(
                SwrLayer::new()
                    .x_cache_key_header(true)
                    .x_cache_header(true),
            ),
    );
    let r = app_send(&app, app_get("/api/v1/items?page=2")).await;
    let key = header_of(&r, "x-cache-key").expect("X-Cache-Key");
    assert!(key.contains("/api/v1/items"), "{key}");
    assert!(key.contains("page=2"), "{key}");
    assert_eq!(header_of(&r, "x-cache").as_deref(), Some("MISS"));
    let r = app_send(&app, app_get("/api/v1/items?page=2")).await;
    assert_eq!(header_of(&r, "x-cache").as_deref(), Some("HIT"));
}

/// A `fallback` under `Router::layer` is behind the cache too: an SPA fallback answers each
/// path once, and each path keeps its own entry.
#[tokio::test(start_paused = true)]
async fn fallback_answers_are_cached_per_path() {
    let hits = Hits::default();
    let h = hits.clone();
    let app = Router::new()
        .route("/api", get(|| async { "api" }))
        .fallback(move |uri: axum::http::Uri| {
            let n = h.bump();
            async move { format!("spa {} #{n}", uri.path()) }
        })
        .layer(SwrLayer::new());
    for _ in 0..2 {
        assert_eq!(
            app_text(app_send(&app, app_get("/x")).await).await,
            "spa /x #1"
        );
        assert_eq!(
            app_text(app_send(&app, app_get("/y")).await).await,
            "spa /y #2"
        );
    }
    assert_eq!(hits.get(), 2);
}

/// `layer` covers the default fallback's `404` (heuristically cacheable, README: "as a 404"),
/// `route_layer` only matched routes: an unknown path then has no `Cache-Status`.
#[tokio::test(start_paused = true)]
async fn route_layer_covers_routes_only_layer_covers_the_fallback() {
    let layered = Router::new()
        .route("/r", get(|| async { "r" }))
        .layer(SwrLayer::new());
    let first = app_send(&layered, app_get("/nope")).await;
    assert_eq!(first.status(), StatusCode::NOT_FOUND);
    assert!(statuses(&first).contains("stored"), "{}", statuses(&first));
    let second = app_send(&layered, app_get("/nope")).await;
    assert_eq!(second.status(), StatusCode::NOT_FOUND);
    assert!(statuses(&second).contains("hit"), "{}", statuses(&second));

    let route_layered = Router::new()
        .route("/r", get(|| async { "r" }))
        .route_layer(SwrLayer::new());
    let unknown = app_send(&route_layered, app_get("/nope")).await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert!(statuses(&unknown).is_empty(), "{}", statuses(&unknown));
    app_text(app_send(&route_layered, app_get("/r")).await).await;
    let hit = app_send(&route_layered, app_get("/r")).await;
    assert!(statuses(&hit).contains("hit"), "{}", statuses(&hit));
}

async fn require_token(request: axum::extract::Request, next: Next) -> Response<AxumBody> {
    if request.headers().get("x-token").map(|v| v.as_bytes()) == Some(b"ok") {
        next.run(request).await
    } else {
        StatusCode::UNAUTHORIZED.into_response()
    }
}

/// Auth in `from_fn` in front of the cache: a request without the token is rejected even when
/// the page is stored.
#[tokio::test(start_paused = true)]
async fn from_fn_auth_outside_rejects_before_the_cache() {
    let hits = Hits::default();
    let app = Router::new()
        .route("/p", get(plain_handler(&hits, "max-age=60")))
        .layer(SwrLayer::new())
        .layer(middleware::from_fn(require_token));
    let ok = app_send(&app, get_h("/p", &[("x-token", "ok")])).await;
    assert_eq!(app_text(ok).await, "v1");
    let denied = app_send(&app, app_get("/p")).await;
    assert_eq!(denied.status(), StatusCode::UNAUTHORIZED);
    assert!(statuses(&denied).is_empty());
    let hit = app_send(&app, get_h("/p", &[("x-token", "ok")])).await;
    assert!(statuses(&hit).contains("hit"));
}

async fn require_bearer(request: axum::extract::Request, next: Next) -> Response<AxumBody> {
    let authorized = request
        .headers()
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == b"Bearer secret");
    if authorized {
        next.run(request).await
    } else {
        StatusCode::UNAUTHORIZED.into_response()
    }
}

/// Auth in `from_fn` behind the cache, on `Authorization`: the authorized answer is never
/// stored nor served to an anonymous request (README's never-shared rules), and the `401` is
/// not stored either.
#[tokio::test(start_paused = true)]
async fn from_fn_auth_inside_authorized_answer_never_reaches_anonymous() {
    let hits = Hits::default();
    let layer = SwrLayer::new();
    let app = Router::new()
        .route(
            "/me",
            get(plain_handler(&hits, "max-age=60")).layer(middleware::from_fn(require_bearer)),
        )
        .layer(layer.clone());
    for _ in 0..2 {
        let mine = app_send(&app, get_h("/me", &[("authorization", "Bearer secret")])).await;
        assert_eq!(mine.status(), StatusCode::OK);
        app_text(mine).await;
        let anon = app_send(&app, app_get("/me")).await;
        assert_eq!(
            anon.status(),
            StatusCode::UNAUTHORIZED,
            "{}",
            statuses(&anon)
        );
        let wrong = app_send(&app, get_h("/me", &[("authorization", "Bearer guess")])).await;
        assert_eq!(
            wrong.status(),
            StatusCode::UNAUTHORIZED,
            "{}",
            statuses(&wrong)
        );
    }
    assert_eq!(hits.get(), 2, "each authorized request rendered");
    assert_eq!(layer.stats().stores, 0);
}

/// The same with an API key header named in `credential_headers`: treated like
/// `Authorization`.
#[tokio::test(start_paused = true)]
async fn from_fn_auth_inside_credential_header_is_never_shared() {
    let hits = Hits::default();
    let layer = SwrLayer::new().credential_headers(["x-token"]);
    let app = Router::new()
        .route(
            "/me",
            get(plain_handler(&hits, "max-age=60")).layer(middleware::from_fn(require_token)),
        )
        .layer(layer.clone());
    let mine = app_send(&app, get_h("/me", &[("x-token", "ok")])).await;
    assert_eq!(mine.status(), StatusCode::OK);
    let anon = app_send(&app, app_get("/me")).await;
    assert_eq!(
        anon.status(),
        StatusCode::UNAUTHORIZED,
        "{}",
        statuses(&anon)
    );
    let wrong = app_send(&app, get_h("/me", &[("x-token", "nope")])).await;
    assert_eq!(
        wrong.status(),
        StatusCode::UNAUTHORIZED,
        "{}",
        statuses(&wrong)
    );
    assert_eq!(layer.stats().stores, 0);
}

/// README: a handler that trusts `X-Forwarded-Host` lets any client choose the host of a page
/// stored for everyone: "strip that header in front of the layer". A `from_fn` doing so in
/// front keeps a poisoned header out of the stored page.
#[tokio::test(start_paused = true)]
async fn from_fn_outside_stripping_x_forwarded_host_prevents_poisoning() {
    async fn strip(mut request: axum::extract::Request, next: Next) -> Response<AxumBody> {
        request.headers_mut().remove("x-forwarded-host");
        next.run(request).await
    }
    let render = |headers: axum::http::HeaderMap| async move {
        let host = headers
            .get("x-forwarded-host")
            .or_else(|| headers.get(header::HOST))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_owned();
        format!("<a href=\"https://{host}/next\">")
    };
    let app = Router::new()
        .route("/home", get(render))
        .layer(SwrLayer::new())
        .layer(middleware::from_fn(strip));
    let attack = app_send(
        &app,
        get_h(
            "/home",
            &[
                ("host", "shop.example"),
                ("x-forwarded-host", "evil.example"),
            ],
        ),
    )
    .await;
    assert!(!app_text(attack).await.contains("evil"));
    let victim = app_send(&app, get_h("/home", &[("host", "shop.example")])).await;
    assert!(statuses(&victim).contains("hit"));
    assert_eq!(
        app_text(victim).await,
        "<a href=\"https://shop.example/next\">"
    );
}

/// A `from_fn` behind the cache runs only on origin calls; one in front runs on every request.
#[tokio::test(start_paused = true)]
async fn from_fn_inside_runs_on_origin_calls_outside_on_every_request() {
    let (inner, outer) = (Hits::default(), Hits::default());
    let (i, o) = (inner.clone(), outer.clone());
    let hits = Hits::default();
    let app = Router::new()
        .route("/p", get(plain_handler(&hits, SWR_10_60)))
        .layer(middleware::from_fn(
            move |r: axum::extract::Request, next: Next| {
                i.bump();
                async move { next.run(r).await }
            },
        ))
        .layer(SwrLayer::new())
        .layer(middleware::from_fn(
            move |r: axum::extract::Request, next: Next| {
                o.bump();
                async move { next.run(r).await }
            },
        ))
        .with_state(());
    for _ in 0..3 {
        app_text(app_send(&app, app_get("/p")).await).await;
    }
    assert_eq!((inner.get(), outer.get()), (1, 3));
    advance(secs(11)).await;
    app_text(app_send(&app, app_get("/p")).await).await;
    settle().await;
    assert_eq!(
        (inner.get(), outer.get()),
        (2, 4),
        "the refresh ran the inner middleware"
    );
}

/// Over a real socket with `into_make_service_with_connect_info`: `ConnectInfo` is a request
/// extension the key function sees (`key_fn` gets the request's `Parts`), so an answer that
/// depends on the client's address can be keyed by it. Keep-alive reuses the connection (one
/// entry); a new client (another port) gets its own.
#[tokio::test]
async fn connect_info_is_visible_to_key_fn_over_a_real_socket() {
    let layer = SwrLayer::new().key_fn(|parts| {
        let info = parts.extensions.get::<ConnectInfo<SocketAddr>>()?;
        Some(info.0.to_string())
    });
    let app = Router::new()
        .route(
            "/whoami",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        )
        .layer(layer.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    // two requests on one kept-alive connection, then one on another connection
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let first = keep_alive_get(&mut conn, "/whoami", false).await;
    let again = keep_alive_get(&mut conn, "/whoami", true).await;
    assert!(
        first.cache_status().contains("fwd=uri-miss"),
        "{}",
        first.cache_status()
    );
    assert_eq!(again.body, first.body, "same connection, same peer");
    assert!(
        again.cache_status().contains("hit"),
        "{}",
        again.cache_status()
    );
    let other = exchange(addr, &raw_get("/whoami", &addr.to_string(), ""), false)
        .await
        .unwrap();
    assert_ne!(other.body, first.body, "another connection is another peer");
    assert!(
        other.cache_status().contains("fwd=uri-miss"),
        "{}",
        other.cache_status()
    );
    assert_eq!(layer.stats().entries, 2);
}

/// One `GET` on an open connection, read up to the end of its `Content-Length` body (the
/// connection stays open unless `close`).
async fn keep_alive_get(conn: &mut tokio::net::TcpStream, target: &str, close: bool) -> Wire {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connection = if close { "close" } else { "keep-alive" };
    let raw = format!("GET {target} HTTP/1.1\r\nHost: test\r\nConnection: {connection}\r\n\r\n");
    conn.write_all(raw.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Ok(wire) = parse_wire(&bytes, false) {
            if wire.header("content-length").is_some() {
                return wire;
            }
        }
        let n = tokio::time::timeout(WIRE_TIMEOUT, conn.read(&mut chunk))
            .await
            .expect("a response in time")
            .unwrap();
        assert!(
            n > 0,
            "the connection closed early: {:?}",
            String::from_utf8_lossy(&bytes)
        );
        bytes.extend_from_slice(&chunk[..n]);
    }
}

/// A successful `POST` on an axum method router invalidates the `GET` entry of its URI
/// (README: invalidation, RFC 9111 §4.4); a failed one does not.
#[tokio::test(start_paused = true)]
async fn method_router_post_invalidates_the_get_entry() {
    let hits = Hits::default();
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let f = fail.clone();
    let app = Router::new()
        .route(
            "/doc",
            get(plain_handler(&hits, "max-age=600")).post(move || {
                let failing = f.load(Ordering::SeqCst);
                async move {
                    if failing {
                        StatusCode::CONFLICT
                    } else {
                        StatusCode::NO_CONTENT
                    }
                }
            }),
        )
        .layer(SwrLayer::new());
    assert_eq!(app_text(app_send(&app, app_get("/doc")).await).await, "v1");
    let failed = app_send(&app, app_req(Method::POST, "/doc", &[])).await;
    assert_eq!(failed.status(), StatusCode::CONFLICT);
    assert!(
        statuses(&failed).contains("fwd=method"),
        "{}",
        statuses(&failed)
    );
    assert_eq!(app_text(app_send(&app, app_get("/doc")).await).await, "v1");
    fail.store(false, Ordering::SeqCst);
    let done = app_send(&app, app_req(Method::POST, "/doc", &[])).await;
    assert_eq!(done.status(), StatusCode::NO_CONTENT);
    assert_eq!(app_text(app_send(&app, app_get("/doc")).await).await, "v2");
}

/// `HEAD` on an axum route is answered from the stored `GET` entry (README).
#[tokio::test(start_paused = true)]
async fn head_is_answered_from_the_get_entry() {
    let hits = Hits::default();
    let app = Router::new()
        .route("/h", get(plain_handler(&hits, "max-age=60")))
        .layer(SwrLayer::new());
    app_text(app_send(&app, app_get("/h")).await).await;
    let head = app_send(&app, app_req(Method::HEAD, "/h", &[])).await;
    assert!(statuses(&head).contains("hit"), "{}", statuses(&head));
    assert!(app_text(head).await.is_empty());
    assert_eq!(hits.get(), 1);
}

// ---------------------------------------------------------------------------------------------
// Observability: Age, Cache-Status, X-Cache, X-Query-Time-ms, Stats, metrics, tracing
// ---------------------------------------------------------------------------------------------

fn counting_origin(cache_control: &'static str) -> (impl OriginService, Calls) {
    origin(move |n, _| async move { Ok(reply_cc(format!("v{n}"), cache_control)) })
}

/// Miss, hit, stale and refreshed answers each say what they are: `Cache-Status` (RFC 9211),
/// `Age`, `CacheInfo`, and the counters.
#[tokio::test(start_paused = true)]
async fn age_and_cache_status_through_miss_hit_stale_refresh() {
    let (origin, calls) = counting_origin("max-age=60");
    let layer = SwrLayer::new();
    let service = layer.layer(origin);

    let miss = service.clone().oneshot(common::get("/o")).await.unwrap();
    let cs = cache_status(&miss);
    assert!(cs.starts_with("tower-swr;"), "{cs}");
    assert!(cs.contains("fwd=uri-miss") && cs.contains("stored"), "{cs}");
    assert_eq!(info(&miss).status, CacheStatus::Miss);
    assert!(info(&miss).stored);
    body_text(miss).await.unwrap();

    advance(secs(7)).await;
    let hit = service.clone().oneshot(common::get("/o")).await.unwrap();
    assert_eq!(cache_status(&hit), "tower-swr; hit; ttl=53");
    assert_eq!(age(&hit), Some(7));
    assert_eq!(info(&hit).status, CacheStatus::Fresh);
    assert_eq!(info(&hit).age, Some(secs(7)));
    assert!(!info(&hit).refreshing);
    body_text(hit).await.unwrap();

    advance(secs(58)).await; // 65 s: 5 s into the default 120 s stale-while-revalidate window
    let stale = service.clone().oneshot(common::get("/o")).await.unwrap();
    let cs = cache_status(&stale);
    assert!(cs.contains("hit") && cs.contains("ttl=-5"), "{cs}");
    assert_eq!(age(&stale), Some(65));
    assert_eq!(info(&stale).status, CacheStatus::Stale);
    assert!(info(&stale).refreshing);
    assert_eq!(body_text(stale).await.unwrap(), "v1");

    settle().await;
    assert_eq!(calls.get(), 2);
    let refreshed = service.clone().oneshot(common::get("/o")).await.unwrap();
    assert_eq!(info(&refreshed).status, CacheStatus::Fresh);
    assert!(age(&refreshed).unwrap_or(0) <= 1, "{:?}", age(&refreshed));
    assert_eq!(body_text(refreshed).await.unwrap(), "v2");

    let stats = layer.stats();
    assert_eq!(
        (
            stats.misses,
            stats.fresh_hits,
            stats.stale_hits,
            stats.stores
        ),
        (1, 2, 1, 2),
        "{stats:?}"
    );
    assert_eq!((stats.refreshes_started, stats.refreshes_succeeded), (1, 1));
    assert_eq!(requests(&stats), 4);
}

/// Coalesced waits are marked `collapsed` and counted; the leader is the one miss.
#[tokio::test(start_paused = true)]
async fn collapsed_waits_are_marked_and_counted() {
    let gate = Gate::new();
    let g = gate.clone();
    let (origin, calls) = origin(move |n, _| {
        let g = g.clone();
        async move {
            g.wait().await;
            Ok(reply_cc(format!("v{n}"), "max-age=60"))
        }
    });
    let layer = SwrLayer::new();
    let service = layer.layer(origin);
    let mut waiting = Vec::new();
    for _ in 0..4 {
        waiting.push(tokio::spawn(service.clone().oneshot(common::get("/c"))));
        settle().await;
    }
    gate.open();
    let mut collapsed = 0;
    for task in waiting {
        let r = task.await.unwrap().unwrap();
        if info(&r).status == CacheStatus::Collapsed {
            collapsed += 1;
            assert!(
                cache_status(&r).contains("collapsed"),
                "{}",
                cache_status(&r)
            );
        }
        assert_eq!(body_text(r).await.unwrap(), "v1");
    }
    assert_eq!(collapsed, 3);
    assert_eq!(calls.get(), 1);
    let stats = layer.stats();
    assert_eq!((stats.misses, stats.collapsed), (1, 3));
}

/// An origin `503` with a stored response inside stale-if-error: `fwd=stale; fwd-status=503`,
/// counted, and a `WARN` naming the key and the age (README).
#[tokio::test(start_paused = true)]
async fn stale_if_error_is_marked_counted_and_logged() {
    let events = Events::default();
    let _collecting = events.install();
    let (origin, _calls) = then_503("max-age=1, stale-while-revalidate=0, stale-if-error=60");
    let layer = SwrLayer::new();
    let service = layer.layer(origin);
    fetch_text(&service, common::get("/e")).await.unwrap();
    advance(secs(5)).await;
    let r = service.clone().oneshot(common::get("/e")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let cs = cache_status(&r);
    assert!(
        cs.contains("fwd=stale") && cs.contains("fwd-status=503"),
        "{cs}"
    );
    assert_eq!(info(&r).status, CacheStatus::StaleIfError);
    assert_eq!(age(&r), Some(5));
    assert_eq!(body_text(r).await.unwrap(), "v1");
    let stats = layer.stats();
    assert_eq!(
        (stats.stale_if_error, stats.loads_failed),
        (1, 1),
        "{stats:?}"
    );
    let warns = events.at(tracing::Level::WARN);
    assert!(
        warns
            .iter()
            .any(|w| w.fields.keys().any(|k| k.contains("key"))
                && w.fields.keys().any(|k| k.contains("age"))),
        "a WARN with the key and the age: {:?}",
        warns
            .iter()
            .map(|w| (&w.message, &w.fields))
            .collect::<Vec<_>>()
    );
}

/// An origin `503` with nothing usable: the origin's own answer unchanged, then for
/// `remember_failures` (1 s) `hit; detail=failure` without calling the origin.
#[tokio::test(start_paused = true)]
async fn origin_error_with_nothing_usable_then_failure_hit() {
    let (origin, calls) =
        origin(
            |n, _| async move { Ok(respond(503, format!("down {n}"), &[("retry-after", "1")])) },
        );
    let layer = SwrLayer::new();
    let service = layer.layer(origin);
    let first = service.clone().oneshot(common::get("/f")).await.unwrap();
    assert_eq!(first.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header_value(&first, "retry-after").as_deref(), Some("1"));
    assert_eq!(body_text(first).await.unwrap(), "down 1");
    let again = service.clone().oneshot(common::get("/f")).await.unwrap();
    assert_eq!(again.status(), StatusCode::SERVICE_UNAVAILABLE);
    let cs = cache_status(&again);
    assert!(cs.contains("hit") && cs.contains("detail=failure"), "{cs}");
    assert_eq!(body_text(again).await.unwrap(), "down 1");
    assert_eq!(calls.get(), 1);
    advance(Duration::from_millis(1500)).await;
    let later = service.clone().oneshot(common::get("/f")).await.unwrap();
    assert_eq!(body_text(later).await.unwrap(), "down 2");
    let stats = layer.stats();
    assert_eq!(
        (stats.loads_failed, stats.failure_hits, stats.stores),
        (2, 1, 0),
        "{stats:?}"
    );
}

/// `X-Cache` through an axum app: `MISS`, `HIT`, `STALE`, and `BYPASS` for a `POST`.
#[tokio::test(start_paused = true)]
async fn x_cache_header_through_axum() {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/x",
            get(plain_handler(&hits, SWR_10_60)).post(|| async { "posted" }),
        )
        .layer(SwrLayer::new().x_cache_header(true));
    let x = |r: &Response<AxumBody>| header_of(r, "x-cache");
    assert_eq!(
        x(&app_send(&app, app_get("/x")).await).as_deref(),
        Some("MISS")
    );
    assert_eq!(
        x(&app_send(&app, app_get("/x")).await).as_deref(),
        Some("HIT")
    );
    advance(secs(11)).await;
    assert_eq!(
        x(&app_send(&app, app_get("/x")).await).as_deref(),
        Some("STALE")
    );
    let post = app_send(&app, app_req(Method::POST, "/x", &[])).await;
    assert_eq!(x(&post).as_deref(), Some("BYPASS"));
}

/// `X-Query-Time-ms`: `0` from memory, the origin's time for a miss (on the paused clock).
#[tokio::test(start_paused = true)]
async fn query_time_header_zero_for_hits_origin_time_for_misses() {
    let hits = Hits::default();
    let app = Router::new()
        .route("/slow", get(slow_handler(&hits, 0, "max-age=60")))
        .layer(SwrLayer::new().query_time_header(true));
    let miss = app_send(&app, app_get("/slow")).await;
    let ms: u64 = header_of(&miss, "x-query-time-ms")
        .unwrap()
        .parse()
        .unwrap();
    assert!((5000..5100).contains(&ms), "{ms}");
    let hit = app_send(&app, app_get("/slow")).await;
    assert_eq!(header_of(&hit, "x-query-time-ms").as_deref(), Some("0"));
}

/// A `/stats` route next to the cached ones (as `examples/axum.rs` has) answers the counters as
/// JSON (`Stats` is `Serialize`), not itself cached when it is outside the layer.
#[cfg(feature = "serde")]
#[tokio::test(start_paused = true)]
async fn stats_endpoint_beside_the_cached_routes() {
    let layer = SwrLayer::new();
    let handle = layer.handle();
    let hits = Hits::default();
    let app = Router::new()
        .route("/p", get(plain_handler(&hits, "max-age=60")))
        .route_layer(layer)
        .route(
            "/stats",
            get(move || {
                let handle = handle.clone();
                async move { Json(handle.stats()) }
            }),
        );
    for _ in 0..3 {
        app_text(app_send(&app, app_get("/p")).await).await;
    }
    let stats = app_text(app_send(&app, app_get("/stats")).await).await;
    assert!(stats.contains("\"fresh_hits\":2"), "{stats}");
    assert!(stats.contains("\"misses\":1"), "{stats}");
    app_text(app_send(&app, app_get("/p")).await).await;
    let stats = app_text(app_send(&app, app_get("/stats")).await).await;
    assert!(
        stats.contains("\"fresh_hits\":3"),
        "not a cached /stats: {stats}"
    );
}

/// The global `tracing` subscriber sees a `debug` event per request with the key and the
/// status (README), and a `WARN` when a refresh fails.
#[tokio::test(start_paused = true)]
async fn tracing_debug_per_request_and_warn_on_failed_refresh() {
    let events = Events::default();
    let _collecting = events.install();
    let down = Switch::default();
    let (origin, _calls) = switchable(SWR_10_60, down.clone());
    let service = SwrLayer::new().layer(origin);
    for _ in 0..3 {
        fetch_text(&service, common::get("/traced?q=1"))
            .await
            .unwrap();
    }
    let per_request: Vec<_> = events
        .at(tracing::Level::DEBUG)
        .into_iter()
        .filter(|e| {
            e.fields.values().any(|v| v.contains("/traced"))
                && e.fields.keys().any(|k| k.contains("status"))
        })
        .collect();
    assert!(
        per_request.len() >= 3,
        "a debug event per request with key and status: {:?}",
        events
            .at(tracing::Level::DEBUG)
            .iter()
            .map(|e| (&e.message, &e.fields))
            .collect::<Vec<_>>()
    );
    assert!(events.at(tracing::Level::WARN).is_empty());
    down.0.store(true, Ordering::SeqCst);
    advance(secs(11)).await;
    assert_eq!(
        fetch_text(&service, common::get("/traced?q=1"))
            .await
            .unwrap(),
        "v1"
    );
    settle().await;
    let warns = events.at(tracing::Level::WARN);
    assert!(!warns.is_empty(), "a WARN when a refresh fails");
}

/// `stale_alert_age`: a `WARN` when what is served stale is older than the alert age.
#[tokio::test(start_paused = true)]
async fn tracing_warn_on_stale_alert_age() {
    let events = Events::default();
    let _collecting = events.install();
    let gate = Gate::new();
    let (origin, _calls) = gated_after_first(&gate, SWR_10_60);
    let service = SwrLayer::new().stale_alert_age(secs(30)).layer(origin);
    fetch_text(&service, common::get("/old")).await.unwrap();
    advance(secs(20)).await;
    fetch_text(&service, common::get("/old")).await.unwrap();
    assert!(
        events.at(tracing::Level::WARN).is_empty(),
        "20 s old: under the alert age"
    );
    advance(secs(20)).await;
    fetch_text(&service, common::get("/old")).await.unwrap();
    assert!(
        !events.at(tracing::Level::WARN).is_empty(),
        "40 s old: past the alert age"
    );
    gate.open();
}

// --- metrics -----------------------------------------------------------------------------------

static SNAPSHOTTER: std::sync::OnceLock<metrics_util::debugging::Snapshotter> =
    std::sync::OnceLock::new();

fn recorder() -> &'static metrics_util::debugging::Snapshotter {
    SNAPSHOTTER.get_or_init(|| {
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("the only recorder of this binary");
        snapshotter
    })
}

/// Values of this cache's metrics, by name and the other label (`status`, `outcome`, `result`).
fn metric_values(
    cache: &str,
) -> std::collections::BTreeMap<(String, String), metrics_util::debugging::DebugValue> {
    let mut out = std::collections::BTreeMap::new();
    for (key, _, _, value) in recorder().snapshot().into_vec() {
        let key = key.key();
        let labels: Vec<(String, String)> = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        if !labels.iter().any(|(k, v)| k == "cache" && v == cache) {
            continue;
        }
        let other = labels
            .iter()
            .filter(|(k, _)| k != "cache")
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        out.insert((key.name().to_owned(), other), value);
    }
    out
}

/// The `metrics` facade gets the documented names and labels for hits, stale answers,
/// refreshes, misses, coalesced waits, stale-if-error, failure hits and failed loads, under the
/// cache's name. (One test reads the recorder: a snapshot resets its counters.)
#[tokio::test(start_paused = true)]
async fn metrics_names_and_labels_as_documented() {
    use metrics_util::debugging::DebugValue;
    recorder();
    let name = "compose-metrics";
    let layer = SwrLayer::new().cache_name(name).max_body_bytes(1024);
    let down = Switch::default();
    let (origin, _) = switchable(
        "max-age=10, stale-while-revalidate=60, stale-if-error=600",
        down.clone(),
    );
    let service = layer.layer(origin);

    fetch_text(&service, common::get("/m")).await.unwrap(); // miss, stored
    fetch_text(&service, common::get("/m")).await.unwrap(); // hit
    advance(secs(11)).await;
    fetch_text(&service, common::get("/m")).await.unwrap(); // stale + refresh
    settle().await;
    // coalesced: another service of the same layer (one cache), on an origin held open
    let gate = Gate::new();
    let g = gate.clone();
    let (slow, _) = origin_gated(g);
    let slow_service = layer.clone().layer(slow);
    let a = tokio::spawn(slow_service.clone().oneshot(common::get("/held")));
    settle().await;
    let b = tokio::spawn(slow_service.clone().oneshot(common::get("/held")));
    settle().await;
    gate.open();
    body_text(a.await.unwrap().unwrap()).await.unwrap();
    body_text(b.await.unwrap().unwrap()).await.unwrap();
    // stale-if-error and a failed load
    down.0.store(true, Ordering::SeqCst);
    advance(secs(100)).await;
    let sie = service.clone().oneshot(common::get("/m")).await.unwrap();
    assert_eq!(
        info(&sie).status,
        CacheStatus::StaleIfError,
        "{}",
        cache_status(&sie)
    );
    // a failed load with nothing usable, then its failure remembered
    service
        .clone()
        .oneshot(common::get("/nothing"))
        .await
        .unwrap();
    let remembered = service
        .clone()
        .oneshot(common::get("/nothing"))
        .await
        .unwrap();
    assert_eq!(info(&remembered).status, CacheStatus::FailureHit);
    // a bypass
    service
        .clone()
        .oneshot(common::req("POST", "/elsewhere", &[]))
        .await
        .unwrap();
    // a body over max_body_bytes: streamed through, not stored
    let (big, _) = common::origin(|_, _| async { Ok(reply_cc(vec![b'x'; 4096], "max-age=60")) });
    let big_service = layer.clone().layer(big);
    let big_answer = big_service.oneshot(common::get("/big")).await.unwrap();
    assert_eq!(body(big_answer).await.unwrap().len(), 4096);
    settle().await;

    let values = metric_values(name);
    let counter =
        |metric: &str, label: &str| match values.get(&(metric.to_owned(), label.to_owned())) {
            Some(DebugValue::Counter(n)) => *n,
            other => panic!("{metric}{{{label}}}: {other:?}; all: {values:?}"),
        };
    assert_eq!(counter("swr_requests_total", "status=hit"), 1);
    assert_eq!(counter("swr_requests_total", "status=stale"), 1);
    assert_eq!(
        counter("swr_requests_total", "status=miss"),
        4,
        "/m, /held, /nothing, /big"
    );
    assert_eq!(counter("swr_requests_total", "status=collapsed"), 1);
    assert_eq!(counter("swr_requests_total", "status=stale_if_error"), 1);
    assert_eq!(counter("swr_requests_total", "status=failure_hit"), 1);
    assert_eq!(counter("swr_requests_total", "status=bypass"), 1);
    assert_eq!(counter("swr_refreshes_total", "outcome=started"), 1);
    assert_eq!(counter("swr_refreshes_total", "outcome=succeeded"), 1);
    assert_eq!(
        counter("swr_stores_total", "result=stored"),
        3,
        "/m twice, /held"
    );
    assert_eq!(
        counter("swr_loads_total", "outcome=failed"),
        2,
        "/m's and /nothing's"
    );
    for gauge in ["swr_entries", "swr_bytes", "swr_refreshes_running"] {
        assert!(
            matches!(
                values.get(&(gauge.to_owned(), String::new())),
                Some(DebugValue::Gauge(_))
            ),
            "gauge {gauge}: {values:?}"
        );
    }
    let stats = layer.stats();
    assert_eq!(
        (stats.fresh_hits, stats.stale_hits, stats.collapsed),
        (1, 1, 1),
        "{stats:?}"
    );
    let gauge = |metric: &str| match values.get(&(metric.to_owned(), String::new())) {
        Some(DebugValue::Gauge(v)) => v.into_inner(),
        other => panic!("{metric}: {other:?}"),
    };
    assert_eq!(gauge("swr_entries"), stats.entries as f64, "{stats:?}");
    assert_eq!(gauge("swr_refreshes_running"), 0.0);
    assert!(gauge("swr_bytes") > 0.0);
}

fn origin_gated(gate: Gate) -> (impl OriginService, Calls) {
    origin(move |n, _| {
        let gate = gate.clone();
        async move {
            gate.wait().await;
            Ok(reply_cc(format!("held {n}"), "max-age=60"))
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Background refreshes through what the app stacks around the layer
// ---------------------------------------------------------------------------------------------

/// Waits (paused clock) for the background refresh to end.
async fn let_refresh_run() {
    for _ in 0..4 {
        settle().await;
    }
}

/// A refresh of the gzip variant behind `CompressionLayer` asks as the stored variant's
/// request did: afterwards the gzip client still gets gzip, the plain client identity.
#[tokio::test(start_paused = true)]
async fn refresh_behind_compression_keeps_each_variant_its_encoding() {
    let hits = Hits::default();
    let h = hits.clone();
    let layer = SwrLayer::new();
    let app = Router::new()
        .route(
            "/page",
            get(move || {
                let n = h.bump();
                async move { ([(header::CACHE_CONTROL, SWR_10_60)], long_text(n)) }
            })
            .layer(tower_http::compression::CompressionLayer::new()),
        )
        .layer(layer.clone());
    let gz = |app: Router| async move {
        app_send(&app, get_h("/page", &[("accept-encoding", "gzip")])).await
    };
    let plain = |app: Router| async move { app_send(&app, get_h("/page", &[])).await };
    bytes_of(gz(app.clone()).await).await;
    bytes_of(plain(app.clone()).await).await;
    advance(secs(11)).await;
    let stale = gz(app.clone()).await;
    assert!(status_is(&stale, CacheStatus::Stale));
    bytes_of(stale).await;
    let stale_plain = plain(app.clone()).await;
    assert!(status_is(&stale_plain, CacheStatus::Stale));
    bytes_of(stale_plain).await;
    let_refresh_run().await;
    assert_eq!(layer.stats().refreshes_succeeded, 2, "{:?}", layer.stats());
    let after = gz(app.clone()).await;
    assert!(
        status_is(&after, CacheStatus::Fresh),
        "{}",
        statuses(&after)
    );
    assert_eq!(
        header_of(&after, "content-encoding").as_deref(),
        Some("gzip")
    );
    assert!(is_gzip(&bytes_of(after).await));
    let p = plain(app.clone()).await;
    assert_eq!(header_of(&p, "content-encoding"), None, "{}", statuses(&p));
    assert!(status_is(&p, CacheStatus::Fresh), "{}", statuses(&p));
    let p = bytes_of(p).await;
    assert!(p.starts_with(b"call "), "identity after the refresh");
    assert_eq!(hits.get(), 4, "two stores, two refreshes");
}

/// A refresh behind `CorsLayer` keeps each `Origin` variant's `Access-Control-Allow-Origin`.
#[tokio::test(start_paused = true)]
async fn refresh_behind_cors_keeps_each_origin_variant() {
    let hits = Hits::default();
    let layer = SwrLayer::new();
    let app = Router::new()
        .route("/api", get(plain_handler(&hits, SWR_10_60)).layer(cors()))
        .layer(layer.clone());
    let from = |o: &'static str| get_h("/api", &[("origin", o)]);
    app_text(app_send(&app, from("https://a.example")).await).await;
    app_text(app_send(&app, from("https://b.example")).await).await;
    advance(secs(11)).await;
    app_text(app_send(&app, from("https://a.example")).await).await;
    let_refresh_run().await;
    assert_eq!(layer.stats().refreshes_succeeded, 1);
    let a = app_send(&app, from("https://a.example")).await;
    assert!(status_is(&a, CacheStatus::Fresh), "{}", statuses(&a));
    assert_eq!(
        header_of(&a, "access-control-allow-origin").as_deref(),
        Some("https://a.example")
    );
    let b = app_send(&app, from("https://b.example")).await;
    assert_eq!(
        header_of(&b, "access-control-allow-origin").as_deref(),
        Some("https://b.example")
    );
}

/// A refresh of an entry stored inside `Router::nest` reaches the nested route (the inner
/// service sees the stripped path, as the first request's did) and replaces the entry.
#[tokio::test(start_paused = true)]
async fn refresh_inside_nest_reaches_the_nested_route() {
    let hits = Hits::default();
    let layer = SwrLayer::new();
    let app = Router::new().nest(
        "/api",
        Router::new()
            .route("/items", get(plain_handler(&hits, SWR_10_60)))
            .layer(layer.clone()),
    );
    assert_eq!(
        app_text(app_send(&app, app_get("/api/items")).await).await,
        "v1"
    );
    advance(secs(11)).await;
    assert_eq!(
        app_text(app_send(&app, app_get("/api/items")).await).await,
        "v1"
    );
    let_refresh_run().await;
    let stats = layer.stats();
    assert_eq!(
        (stats.refreshes_succeeded, stats.refreshes_failed),
        (1, 0),
        "{stats:?}"
    );
    let r = app_send(&app, app_get("/api/items")).await;
    assert!(status_is(&r, CacheStatus::Fresh), "{}", statuses(&r));
    assert_eq!(app_text(r).await, "v2");
}

/// An `Extension` added in front of the cache (the usual `.layer(Extension(pool))` last) is
/// what handlers extract: a background refresh must reach the handler with it, as the request
/// that stored the entry did. The docs say a refresh runs "on a clone of the inner service"
/// for the key; an axum user expects it to be the stored request again, extensions included.
#[tokio::test(start_paused = true)]
async fn refresh_keeps_request_extensions_added_in_front() {
    #[derive(Clone)]
    struct Db(&'static str);
    let hits = Hits::default();
    let h = hits.clone();
    let layer = SwrLayer::new();
    let app = Router::new()
        .route(
            "/db",
            get(move |axum::Extension(db): axum::Extension<Db>| {
                let n = h.bump();
                async move {
                    (
                        [(header::CACHE_CONTROL, SWR_10_60)],
                        format!("{} v{n}", db.0),
                    )
                }
            }),
        )
        .layer(layer.clone())
        .layer(axum::Extension(Db("pg")));
    assert_eq!(
        app_text(app_send(&app, app_get("/db")).await).await,
        "pg v1"
    );
    advance(secs(11)).await;
    assert_eq!(
        app_text(app_send(&app, app_get("/db")).await).await,
        "pg v1"
    );
    let_refresh_run().await;
    let stats = layer.stats();
    assert_eq!(
        (stats.refreshes_succeeded, stats.refreshes_failed),
        (1, 0),
        "{stats:?}"
    );
    assert_eq!(
        app_text(app_send(&app, app_get("/db")).await).await,
        "pg v2"
    );
}

/// The same for `ConnectInfo` (served with `into_make_service_with_connect_info`): a handler
/// extracting it must not fail when a background refresh calls it.
#[tokio::test]
async fn refresh_keeps_connect_info_over_a_real_socket() {
    let layer = SwrLayer::new();
    let app = Router::new()
        .route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
                (
                    [(
                        header::CACHE_CONTROL,
                        "max-age=1, stale-while-revalidate=60",
                    )],
                    format!("peer {}", peer.ip()),
                )
            }),
        )
        .layer(layer.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    let host = addr.to_string();
    let first = exchange(addr, &raw_get("/peer", &host, ""), false)
        .await
        .unwrap();
    assert_eq!(first.status, 200);
    // real time: wait until the entry is stale, then let one request start the refresh
    let deadline = Deadline::after(secs(10), "the entry to go stale");
    loop {
        let r = exchange(addr, &raw_get("/peer", &host, ""), false)
            .await
            .unwrap();
        if r.cache_status().contains("ttl=-") {
            break;
        }
        deadline.tick().await;
    }
    let deadline = Deadline::after(secs(10), "the refresh to end");
    while layer.stats().refreshes_running > 0 || layer.stats().refreshes_started == 0 {
        deadline.tick().await;
    }
    let stats = layer.stats();
    assert_eq!(
        (stats.refreshes_succeeded, stats.refreshes_failed),
        (1, 0),
        "{stats:?}"
    );
}

/// A refresh through `TraceLayer` behind the cache shows up in its logs (one more
/// "finished processing request"), and through a `ConcurrencyLimit` + `Buffer` it succeeds.
#[tokio::test(start_paused = true)]
async fn refresh_through_trace_and_buffered_concurrency_limit() {
    let events = Events::default();
    let _collecting = events.install();
    let hits = Hits::default();
    let layer = SwrLayer::new();
    let app = Router::new()
        .route(
            "/r",
            get(plain_handler(&hits, SWR_10_60)).layer(
                ServiceBuilder::new()
                    .layer(tower_http::trace::TraceLayer::new_for_http())
                    .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
                        StatusCode::SERVICE_UNAVAILABLE
                    }))
                    .buffer(4)
                    .concurrency_limit(1),
            ),
        )
        .layer(layer.clone())
        .with_state(());
    app_text(app_send(&app, app_get("/r")).await).await;
    advance(secs(11)).await;
    app_text(app_send(&app, app_get("/r")).await).await;
    let_refresh_run().await;
    assert_eq!(layer.stats().refreshes_succeeded, 1, "{:?}", layer.stats());
    assert_eq!(events.matching(tracing::Level::DEBUG, FINISHED).len(), 2);
    assert_eq!(app_text(app_send(&app, app_get("/r")).await).await, "v2");
}

/// Waiters of a leader answered `408` by an inner `TimeoutLayer` do not take its `408`
/// (about one client: never shared): each asks the handler itself.
#[tokio::test(start_paused = true)]
async fn timeout_inside_408_is_not_handed_to_waiters() {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/slow",
            get(slow_handler(&hits, 0, "max-age=60")).layer(
                tower_http::timeout::TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    secs(1),
                ),
            ),
        )
        .layer(SwrLayer::new())
        .with_state(());
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            app_send(&app, app_get("/slow")).await
        }));
    }
    for task in tasks {
        let r = task.await.unwrap();
        assert_eq!(r.status(), StatusCode::REQUEST_TIMEOUT);
        assert!(!status_is(&r, CacheStatus::Collapsed), "{}", statuses(&r));
        assert!(!status_is(&r, CacheStatus::FailureHit), "{}", statuses(&r));
    }
    assert_eq!(hits.get(), 3);
}

/// A `Range` request from a client that did not accept gzip, with only the gzip variant stored
/// behind `CompressionLayer`: never a slice of the gzip bytes.
#[tokio::test(start_paused = true)]
async fn compression_inside_range_for_identity_client_is_not_gzip() {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/page",
            get(long_handler(&hits)).layer(tower_http::compression::CompressionLayer::new()),
        )
        .layer(SwrLayer::new());
    bytes_of(app_send(&app, get_h("/page", &[("accept-encoding", "gzip")])).await).await;
    let r = app_send(&app, get_h("/page", &[("range", "bytes=0-3")])).await;
    assert_eq!(header_of(&r, "content-encoding"), None, "{}", statuses(&r));
    let bytes = bytes_of(r).await;
    assert!(!is_gzip(&bytes), "{bytes:?}");
    assert!(bytes.starts_with(b"call"), "{bytes:?}");
    let gz_range = app_send(
        &app,
        get_h(
            "/page",
            &[("accept-encoding", "gzip"), ("range", "bytes=0-1")],
        ),
    )
    .await;
    assert_eq!(
        gz_range.status(),
        StatusCode::PARTIAL_CONTENT,
        "{}",
        statuses(&gz_range)
    );
    assert_eq!(
        header_of(&gz_range, "content-encoding").as_deref(),
        Some("gzip")
    );
    assert_eq!(&bytes_of(gz_range).await[..], &[0x1f, 0x8b]);
}

// ---------------------------------------------------------------------------------------------
// Coalescing across variants and per-client answers
// ---------------------------------------------------------------------------------------------

/// A handler held open until `gate` opens, answering `long_text(call)` with `SWR_10_60`
/// unless `cache_control` says otherwise.
fn held_long_handler(
    hits: &Hits,
    gate: &Gate,
    cache_control: &'static str,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<AxumBody>> + Send>>
       + Clone
       + Send
       + Sync
       + 'static {
    let (hits, gate) = (hits.clone(), gate.clone());
    move || {
        let (n, gate) = (hits.bump(), gate.clone());
        Box::pin(async move {
            gate.wait().await;
            ([(header::CACHE_CONTROL, cache_control)], long_text(n)).into_response()
        })
    }
}

/// While a gzip client's miss is in flight behind `CompressionLayer`, a client that did not
/// accept gzip arrives for the same URL: the response turns out to `Vary: accept-encoding`,
/// so the waiter must not be handed the leader's gzip body.
#[tokio::test(start_paused = true)]
async fn coalesced_waiter_of_another_accept_encoding_never_gets_gzip() {
    let (hits, gate) = (Hits::default(), Gate::new());
    let app = Router::new()
        .route(
            "/page",
            get(held_long_handler(&hits, &gate, "max-age=60"))
                .layer(tower_http::compression::CompressionLayer::new()),
        )
        .layer(SwrLayer::new())
        .with_state(());
    let send = |headers: &'static [(&'static str, &'static str)]| {
        let app = app.clone();
        tokio::spawn(async move {
            let r = app_send(&app, get_h("/page", headers)).await;
            let enc = header_of(&r, "content-encoding");
            let cs = statuses(&r);
            (enc, bytes_of(r).await, cs)
        })
    };
    let leader = send(&[("accept-encoding", "gzip")]);
    settle().await;
    let plain = send(&[]);
    let br = send(&[("accept-encoding", "br")]);
    settle().await;
    gate.open();
    let (enc, bytes, _) = leader.await.unwrap();
    assert_eq!(enc.as_deref(), Some("gzip"));
    assert!(is_gzip(&bytes));
    for (what, task) in [("no Accept-Encoding", plain), ("br only", br)] {
        let (enc, bytes, cs) = task.await.unwrap();
        assert_eq!(enc, None, "{what}: {cs}");
        assert!(!is_gzip(&bytes), "{what}: gzip bytes ({cs})");
        assert!(bytes.starts_with(b"call "), "{what}");
    }
}

/// The same with `CorsLayer`: a waiter from another `Origin` gets its own
/// `Access-Control-Allow-Origin`, not the leader's.
#[tokio::test(start_paused = true)]
async fn coalesced_waiter_of_another_origin_gets_its_own_cors_answer() {
    let (hits, gate) = (Hits::default(), Gate::new());
    let app = Router::new()
        .route(
            "/api",
            get(held_long_handler(&hits, &gate, "max-age=60")).layer(cors()),
        )
        .layer(SwrLayer::new())
        .with_state(());
    let send = |origin: &'static str| {
        let app = app.clone();
        tokio::spawn(async move {
            let r = app_send(&app, get_h("/api", &[("origin", origin)])).await;
            (header_of(&r, "access-control-allow-origin"), statuses(&r))
        })
    };
    let a = send("https://a.example");
    settle().await;
    let b = send("https://b.example");
    let evil = send("https://evil.example");
    settle().await;
    gate.open();
    assert_eq!(a.await.unwrap().0.as_deref(), Some("https://a.example"));
    let (acao, cs) = b.await.unwrap();
    assert_eq!(acao.as_deref(), Some("https://b.example"), "{cs}");
    let (acao, cs) = evil.await.unwrap();
    assert_eq!(acao, None, "{cs}");
}

/// A session middleware behind the cache that sets a cookie on every answer: never stored
/// (README: `Set-Cookie`), and the requests that waited for one origin call never get the
/// leader's cookie.
#[tokio::test(start_paused = true)]
async fn set_cookie_from_session_middleware_is_never_stored_nor_shared() {
    let (hits, gate) = (Hits::default(), Gate::new());
    let sessions = Hits::default();
    let s = sessions.clone();
    let layer = SwrLayer::new();
    let app = Router::new()
        .route(
            "/home",
            get(held_long_handler(&hits, &gate, "max-age=60")).layer(middleware::from_fn(
                move |request: axum::extract::Request, next: Next| {
                    let id = s.bump();
                    async move {
                        let mut response = next.run(request).await;
                        response.headers_mut().append(
                            header::SET_COOKIE,
                            HeaderValue::from_str(&format!("session={id}")).unwrap(),
                        );
                        response
                    }
                },
            )),
        )
        .layer(layer.clone())
        .with_state(());
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let r = app_send(&app, app_get("/home")).await;
            header_of(&r, "set-cookie")
        }));
        settle().await;
    }
    gate.open();
    let mut cookies = std::collections::BTreeSet::new();
    for task in tasks {
        cookies.insert(task.await.unwrap().expect("a session cookie"));
    }
    assert_eq!(
        cookies.len(),
        3,
        "each request its own session: {cookies:?}"
    );
    assert_eq!(layer.stats().stores, 0);
    let later = app_send(&app, app_get("/home")).await;
    assert!(header_of(&later, "set-cookie").is_some());
    assert!(!cookies.contains(&header_of(&later, "set-cookie").unwrap()));
}

/// CORS and compression both behind the cache: two `Vary` lines (`origin, ...` and
/// `accept-encoding`) are both honoured.
#[tokio::test(start_paused = true)]
async fn two_vary_lines_from_cors_and_compression_are_both_keyed() {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/api",
            get(long_handler(&hits)).layer(
                ServiceBuilder::new()
                    .layer(cors())
                    .layer(tower_http::compression::CompressionLayer::new()),
            ),
        )
        .layer(SwrLayer::new());
    let send = |origin: &'static str, gzip: bool| {
        let app = app.clone();
        async move {
            let mut headers = vec![("origin", origin)];
            if gzip {
                headers.push(("accept-encoding", "gzip"));
            }
            let r = app_send(&app, get_h("/api", &headers)).await;
            let vary = r
                .headers()
                .get_all(header::VARY)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
                .join(", ");
            (
                header_of(&r, "access-control-allow-origin"),
                header_of(&r, "content-encoding"),
                vary,
                statuses(&r),
            )
        }
    };
    let (acao, enc, vary, _) = send("https://a.example", true).await;
    assert_eq!(
        (acao.as_deref(), enc.as_deref()),
        (Some("https://a.example"), Some("gzip"))
    );
    let vary = vary.to_ascii_lowercase();
    assert!(
        vary.contains("origin") && vary.contains("accept-encoding"),
        "{vary}"
    );
    let (acao, enc, _, cs) = send("https://a.example", false).await;
    assert_eq!(
        (acao.as_deref(), enc),
        (Some("https://a.example"), None),
        "{cs}"
    );
    let (acao, enc, _, cs) = send("https://b.example", true).await;
    assert_eq!(
        (acao.as_deref(), enc.as_deref()),
        (Some("https://b.example"), Some("gzip")),
        "{cs}"
    );
    let (_, _, _, cs) = send("https://a.example", true).await;
    assert!(cs.contains("hit"), "{cs}");
    assert_eq!(hits.get(), 3);
}

/// A `HEAD` from a client that did not accept gzip, with only the gzip variant stored behind
/// `CompressionLayer`, does not say `Content-Encoding: gzip`.
#[tokio::test(start_paused = true)]
async fn compression_inside_head_for_identity_client_is_not_gzip() {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/page",
            get(long_handler(&hits)).layer(tower_http::compression::CompressionLayer::new()),
        )
        .layer(SwrLayer::new());
    bytes_of(app_send(&app, get_h("/page", &[("accept-encoding", "gzip")])).await).await;
    let head = app_send(&app, app_req(Method::HEAD, "/page", &[])).await;
    assert_eq!(
        header_of(&head, "content-encoding"),
        None,
        "{}",
        statuses(&head)
    );
    let head_gz = app_send(
        &app,
        app_req(Method::HEAD, "/page", &[("accept-encoding", "gzip")]),
    )
    .await;
    assert!(statuses(&head_gz).contains("hit"), "{}", statuses(&head_gz));
    assert_eq!(
        header_of(&head_gz, "content-encoding").as_deref(),
        Some("gzip")
    );
}

/// A `Vary: *` set by a layer behind the cache: never stored (README).
#[tokio::test(start_paused = true)]
async fn set_header_inside_vary_star_is_never_stored() {
    let hits = Hits::default();
    let layer = SwrLayer::new();
    let app = Router::new()
        .route(
            "/v",
            get(plain_handler(&hits, "max-age=60")).layer(
                tower_http::set_header::SetResponseHeaderLayer::appending(
                    header::VARY,
                    HeaderValue::from_static("*"),
                ),
            ),
        )
        .layer(layer.clone());
    for n in 1..=2 {
        assert_eq!(
            app_text(app_send(&app, app_get("/v")).await).await,
            format!("v{n}")
        );
    }
    assert_eq!(layer.stats().stores, 0);
}

/// A request carrying `Cookie` (a browser with any cookie) is answered from and stored in the
/// cache only with `public` or `s-maxage` answers (README, like Varnish).
#[tokio::test(start_paused = true)]
async fn cookie_requests_through_axum_follow_the_documented_rule() {
    let (private_ish, public) = (Hits::default(), Hits::default());
    let app = Router::new()
        .route("/plain", get(plain_handler(&private_ish, "max-age=60")))
        .route("/public", get(plain_handler(&public, "public, max-age=60")))
        .layer(SwrLayer::new());
    app_text(app_send(&app, app_get("/plain")).await).await;
    let with_cookie = app_send(&app, get_h("/plain", &[("cookie", "theme=dark")])).await;
    assert!(
        !statuses(&with_cookie).contains("hit"),
        "{}",
        statuses(&with_cookie)
    );
    assert_eq!(app_text(with_cookie).await, "v2");
    app_text(app_send(&app, get_h("/public", &[("cookie", "a=1")])).await).await;
    let hit = app_send(&app, get_h("/public", &[("cookie", "a=2")])).await;
    assert!(statuses(&hit).contains("hit"), "{}", statuses(&hit));
    assert_eq!(public.get(), 1);
}

/// A `Cache-Status` from a cache behind this one (an upstream's member) comes first; ours is
/// appended after it (RFC 9211), on misses and hits.
#[tokio::test(start_paused = true)]
async fn cache_status_is_appended_after_an_upstream_member() {
    let app = Router::new()
        .route(
            "/u",
            get(|| async {
                (
                    [
                        (header::CACHE_CONTROL, "max-age=60"),
                        (
                            header::HeaderName::from_static("cache-status"),
                            "origin-cdn; hit",
                        ),
                    ],
                    "u",
                )
            }),
        )
        .layer(SwrLayer::new().cache_name("edge"));
    for expect in ["fwd=uri-miss", "hit"] {
        let r = app_send(&app, app_get("/u")).await;
        let lines = cache_status_lines(&r);
        assert_eq!(
            lines.first().map(String::as_str),
            Some("origin-cdn; hit"),
            "{lines:?}"
        );
        let ours = lines.last().unwrap();
        assert!(
            ours.starts_with("edge;") && ours.contains(expect),
            "{lines:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Refreshes and failures under the app's limits
// ---------------------------------------------------------------------------------------------

/// A client-facing timeout in front of the layer does not cut a background refresh (it is
/// detached, README): stale answers come at once, and the slow refresh still stores.
#[tokio::test(start_paused = true)]
async fn refresh_is_not_cut_by_a_client_facing_timeout() {
    let hits = Hits::default();
    let layer = SwrLayer::new();
    let app = Router::new()
        .route("/slow", get(slow_handler(&hits, 1, SWR_10_60)))
        .layer(layer.clone())
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            secs(1),
        ));
    assert_eq!(app_text(app_send(&app, app_get("/slow")).await).await, "v1");
    advance(secs(11)).await;
    let stale = app_send(&app, app_get("/slow")).await;
    assert_eq!(stale.status(), StatusCode::OK);
    assert_eq!(app_text(stale).await, "v1");
    for _ in 0..6 {
        settle().await;
        advance(secs(1)).await;
    }
    settle().await;
    assert_eq!(layer.stats().refreshes_succeeded, 1, "{:?}", layer.stats());
    assert_eq!(app_text(app_send(&app, app_get("/slow")).await).await, "v2");
}

/// A refresh shed by `LoadShed` (its error) keeps the stored entry and counts as failed.
#[tokio::test(start_paused = true)]
async fn refresh_shed_by_load_shed_keeps_the_entry() {
    let gate = Gate::new();
    let g = gate.clone();
    let (origin, _calls) = origin(move |n, request: http::Request<ReqBody>| {
        let g = g.clone();
        async move {
            if request.uri().path() == "/held" {
                g.wait().await;
            }
            Ok(reply_cc(format!("v{n}"), SWR_10_60))
        }
    });
    let layer = SwrLayer::new();
    let service = layer.layer(
        ServiceBuilder::new()
            .load_shed()
            .concurrency_limit(1)
            .service(origin),
    );
    assert_eq!(
        fetch_text(&service, common::get("/page")).await.unwrap(),
        "v1"
    );
    let held = tokio::spawn(service.clone().oneshot(common::get("/held")));
    settle().await;
    advance(secs(11)).await;
    assert_eq!(
        fetch_text(&service, common::get("/page")).await.unwrap(),
        "v1"
    );
    settle().await;
    let stats = layer.stats();
    assert_eq!(
        (stats.refreshes_started, stats.refreshes_failed),
        (1, 1),
        "{stats:?}"
    );
    let again = service.clone().oneshot(common::get("/page")).await.unwrap();
    assert_eq!(info(&again).status, CacheStatus::Stale, "the entry is kept");
    assert_eq!(body_text(again).await.unwrap(), "v1");
    gate.open();
    held.await.unwrap().unwrap();
}

/// tower-http's `ResponseBodyTimeoutLayer` behind the cache cutting a stalled body: the client
/// gets a body error (README: "an origin body error is a body error for every client of the
/// fill ... and nothing is stored"), and the next request asks the origin again.
#[tokio::test(start_paused = true)]
async fn response_body_timeout_inside_is_a_body_error_and_nothing_is_stored() {
    let (origin, calls, feeds) = fed_origin("max-age=60", None);
    let layer = SwrLayer::new();
    let service = layer.layer(
        ServiceBuilder::new()
            .layer(tower_http::timeout::ResponseBodyTimeoutLayer::new(secs(2)))
            .service(origin),
    );
    let response = service
        .clone()
        .oneshot(common::get("/stall"))
        .await
        .unwrap();
    feeds.send(1, "first chunk ").await;
    let reading = tokio::spawn(body(response));
    settle().await;
    advance(secs(3)).await;
    let result = reading.await.unwrap();
    assert!(
        result.is_err(),
        "a stalled body ends in an error: {result:?}"
    );
    settle().await;
    assert_eq!(layer.stats().entries, 0);
    let next = service
        .clone()
        .oneshot(common::get("/stall"))
        .await
        .unwrap();
    assert_eq!(calls.get(), 2, "{}", cache_status(&next));
    feeds.send(2, "whole").await;
    feeds.end(2);
    assert_eq!(&body(next).await.unwrap()[..], b"whole");
}

/// A handler that panics during a background refresh: an `ERROR` log (README), counted in
/// `refreshes_panicked`, the stored entry kept.
#[tokio::test(start_paused = true)]
async fn refresh_panicking_handler_logs_error_and_keeps_the_entry() {
    let events = Events::default();
    let _collecting = events.install();
    let hits = Hits::default();
    let h = hits.clone();
    let layer = SwrLayer::new();
    let app = Router::new()
        .route(
            "/p",
            get(move || {
                let n = h.bump();
                async move {
                    if n > 1 {
                        panic!("handler bug");
                    }
                    ([(header::CACHE_CONTROL, SWR_10_60)], format!("v{n}"))
                }
            }),
        )
        .layer(layer.clone());
    assert_eq!(app_text(app_send(&app, app_get("/p")).await).await, "v1");
    advance(secs(11)).await;
    assert_eq!(app_text(app_send(&app, app_get("/p")).await).await, "v1");
    let_refresh_run().await;
    let stats = layer.stats();
    assert_eq!(
        (stats.refreshes_panicked, stats.refreshes_failed),
        (1, 1),
        "{stats:?}"
    );
    assert!(
        !events.at(tracing::Level::ERROR).is_empty(),
        "an ERROR when a refresh panics"
    );
    let after = app_send(&app, app_get("/p")).await;
    assert_eq!(after.status(), StatusCode::OK);
    assert_eq!(app_text(after).await, "v1");
}

/// Compression in front of the cache over a real socket: a hit read by a gzip client is a
/// well-framed gzip response (no stale `Content-Length` of the identity body).
#[tokio::test]
async fn compression_outside_over_the_wire_hit_is_well_framed() {
    let hits = Hits::default();
    let app = Router::new()
        .route("/page", get(long_handler(&hits)))
        .layer(SwrLayer::new())
        .layer(tower_http::compression::CompressionLayer::new());
    let addr = serve(app).await;
    let host = addr.to_string();
    for round in 0..2 {
        let gz = exchange(
            addr,
            &raw_get("/page", &host, "Accept-Encoding: gzip\r\n"),
            false,
        )
        .await
        .expect("a whole response");
        assert_eq!(gz.header("content-encoding"), Some("gzip"), "round {round}");
        if let Some(len) = gz.header("content-length") {
            assert_eq!(
                len.parse::<usize>().unwrap(),
                gz.body.len(),
                "round {round}"
            );
        }
        assert!(is_gzip(&gz.body));
        let plain = exchange(addr, &raw_get("/page", &host, ""), false)
            .await
            .expect("a whole response");
        assert_eq!(plain.body, long_text(1).as_bytes(), "round {round}");
    }
    assert_eq!(hits.get(), 1);
}

// ---------------------------------------------------------------------------------------------
// More of what axum handlers and middlewares answer
// ---------------------------------------------------------------------------------------------

/// Redirects from handlers or auth middlewares: `303` (`Redirect::to`) and `307`
/// (`Redirect::temporary`) are not heuristically cacheable, so a login redirect is never
/// stored for everyone; `308` (`Redirect::permanent`) is (README: defaults apply to
/// heuristically cacheable statuses).
#[tokio::test(start_paused = true)]
async fn redirects_follow_heuristic_cacheability() {
    use axum::response::Redirect;
    let layer = SwrLayer::new();
    let app = Router::new()
        .route("/see-other", get(|| async { Redirect::to("/login") }))
        .route(
            "/temporary",
            get(|| async { Redirect::temporary("/login") }),
        )
        .route("/permanent", get(|| async { Redirect::permanent("/new") }))
        .layer(layer.clone());
    for path in ["/see-other", "/temporary", "/see-other", "/temporary"] {
        let r = app_send(&app, app_get(path)).await;
        assert!(r.status().is_redirection());
        assert!(!statuses(&r).contains("hit"), "{path}: {}", statuses(&r));
    }
    assert_eq!(layer.stats().stores, 0);
    app_send(&app, app_get("/permanent")).await;
    let r = app_send(&app, app_get("/permanent")).await;
    assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
    assert!(statuses(&r).contains("hit"), "{}", statuses(&r));
}

/// An auth middleware behind the cache redirecting anonymous users to the login page with a
/// `303`: the redirect never answers a logged-in request, nor is it stored.
#[tokio::test(start_paused = true)]
async fn auth_redirect_inside_is_not_served_to_others() {
    async fn login_or_pass(request: axum::extract::Request, next: Next) -> Response<AxumBody> {
        if request.headers().contains_key("x-token") {
            next.run(request).await
        } else {
            axum::response::Redirect::to("/login").into_response()
        }
    }
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/dash",
            get(plain_handler(&hits, "max-age=60")).layer(middleware::from_fn(login_or_pass)),
        )
        .layer(SwrLayer::new().credential_headers(["x-token"]));
    let anon = app_send(&app, app_get("/dash")).await;
    assert_eq!(anon.status(), StatusCode::SEE_OTHER);
    let member = app_send(&app, get_h("/dash", &[("x-token", "t")])).await;
    assert_eq!(member.status(), StatusCode::OK, "{}", statuses(&member));
    let anon = app_send(&app, app_get("/dash")).await;
    assert_eq!(anon.status(), StatusCode::SEE_OTHER, "{}", statuses(&anon));
}

/// A failed unsafe request (axum's `405` for a method the route lacks) invalidates nothing.
#[tokio::test(start_paused = true)]
async fn method_not_allowed_put_does_not_invalidate() {
    let hits = Hits::default();
    let app = Router::new()
        .route("/doc", get(plain_handler(&hits, "max-age=60")))
        .layer(SwrLayer::new());
    app_text(app_send(&app, app_get("/doc")).await).await;
    let put = app_send(&app, app_req(Method::PUT, "/doc", &[])).await;
    assert_eq!(put.status(), StatusCode::METHOD_NOT_ALLOWED);
    let r = app_send(&app, app_get("/doc")).await;
    assert!(statuses(&r).contains("hit"), "{}", statuses(&r));
    assert_eq!(hits.get(), 1);
}

/// A `text/event-stream` answer (what axum's `Sse` sends) is never stored (README) and streams
/// through: every client gets its own stream.
#[tokio::test(start_paused = true)]
async fn event_stream_answers_are_never_stored() {
    let hits = Hits::default();
    let h = hits.clone();
    let layer = SwrLayer::new();
    let app = Router::new()
        .route(
            "/events",
            get(move || {
                let n = h.bump();
                async move {
                    (
                        [
                            (header::CONTENT_TYPE, "text/event-stream"),
                            (header::CACHE_CONTROL, "max-age=60"),
                        ],
                        format!("data: {n}\n\n"),
                    )
                }
            }),
        )
        .layer(layer.clone());
    for n in 1..=2 {
        let r = app_send(&app, app_get("/events")).await;
        assert_eq!(app_text(r).await, format!("data: {n}\n\n"));
    }
    assert_eq!(layer.stats().stores, 0);
}

/// `HandleErrorLayer` turning tower's `Timeout` into `504` on a route (the axum idiom): a 5xx
/// answer, so a stored response inside stale-if-error stands in (`fwd-status=504`).
#[tokio::test(start_paused = true)]
async fn handle_error_timeout_504_lets_stale_if_error_stand_in() {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/slow",
            get(slow_handler(
                &hits,
                1,
                "max-age=1, stale-while-revalidate=0, stale-if-error=60",
            ))
            .layer(
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
                        StatusCode::GATEWAY_TIMEOUT
                    }))
                    .timeout(secs(1)),
            ),
        )
        .layer(SwrLayer::new())
        .with_state(());
    assert_eq!(app_text(app_send(&app, app_get("/slow")).await).await, "v1");
    advance(secs(3)).await;
    let r = app_send(&app, app_get("/slow")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let cs = statuses(&r);
    assert!(
        cs.contains("fwd=stale") && cs.contains("fwd-status=504"),
        "{cs}"
    );
    assert_eq!(app_text(r).await, "v1");
}

/// A leader whose client gives up (its own `tokio::time::timeout`, or a disconnect) hands over
/// to its waiters: they are answered (README: "another attempt starts").
#[tokio::test(start_paused = true)]
async fn leader_timing_out_hands_over_to_waiters() {
    let gate = Gate::new();
    let g = gate.clone();
    let (origin, calls) = origin(move |n, _| {
        let g = g.clone();
        async move {
            g.wait().await;
            Ok(reply_cc(format!("v{n}"), "max-age=60"))
        }
    });
    let service = SwrLayer::new().layer(origin);
    let leader = tokio::spawn(tokio::time::timeout(
        secs(1),
        service.clone().oneshot(common::get("/k")),
    ));
    settle().await;
    let waiter = tokio::spawn(service.clone().oneshot(common::get("/k")));
    settle().await;
    advance(secs(2)).await;
    assert!(
        leader.await.unwrap().is_err(),
        "the leader's client gave up"
    );
    settle().await;
    gate.open();
    let answer = waiter.await.unwrap().unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let text = body_text(answer).await.unwrap();
    assert!(text.starts_with('v'), "{text}");
    assert!(calls.get() <= 2, "{}", calls.get());
}

/// Misses of one key behind `ConcurrencyLimit(1)` are coalesced: one origin call, one slot.
#[tokio::test(start_paused = true)]
async fn concurrency_limit_inside_coalesced_misses_take_one_slot() {
    let gate = Gate::new();
    let (origin, calls) = holding_origin(&gate);
    let layer = SwrLayer::new();
    let service = layer.layer(ServiceBuilder::new().concurrency_limit(1).service(origin));
    let tasks: Vec<_> = (0..10)
        .map(|_| tokio::spawn(service.clone().oneshot(common::get("/held"))))
        .collect();
    settle().await;
    gate.open();
    for task in tasks {
        assert_eq!(
            body_text(task.await.unwrap().unwrap()).await.unwrap(),
            "v1 /held"
        );
    }
    assert_eq!(calls.get(), 1);
    assert_eq!(layer.stats().collapsed, 9);
}

/// Without the `CacheInfo` extension (`cache_info_extension(false)`), `Cache-Status` and `Age`
/// still say how an axum answer was made.
#[tokio::test(start_paused = true)]
async fn without_cache_info_extension_headers_still_tell() {
    let hits = Hits::default();
    let app = Router::new()
        .route("/p", get(plain_handler(&hits, "max-age=60")))
        .layer(SwrLayer::new().cache_info_extension(false));
    app_text(app_send(&app, app_get("/p")).await).await;
    advance(secs(4)).await;
    let r = app_send(&app, app_get("/p")).await;
    assert!(cache_info(&r).is_none());
    assert_eq!(statuses(&r), "tower-swr; hit; ttl=56");
    assert_eq!(age(&r), Some(4));
}

// ---------------------------------------------------------------------------------------------
// Purges, tags, invalidation and shutdown in an axum app
// ---------------------------------------------------------------------------------------------

/// `purge` removes every variant of a target (README: "every variant of that target"): both
/// encodings stored behind `CompressionLayer`.
#[tokio::test(start_paused = true)]
async fn purge_removes_every_encoding_variant() {
    let hits = Hits::default();
    let layer = SwrLayer::new();
    let handle = layer.handle();
    let app = Router::new()
        .route(
            "/page",
            get(long_handler(&hits)).layer(tower_http::compression::CompressionLayer::new()),
        )
        .layer(layer);
    bytes_of(app_send(&app, get_h("/page", &[("accept-encoding", "gzip")])).await).await;
    bytes_of(app_send(&app, get_h("/page", &[])).await).await;
    assert_eq!(handle.purge("/page"), 2);
    let gz = app_send(&app, get_h("/page", &[("accept-encoding", "gzip")])).await;
    assert!(status_is(&gz, CacheStatus::Miss), "{}", statuses(&gz));
    assert_eq!(header_of(&gz, "content-encoding").as_deref(), Some("gzip"));
    let plain = app_send(&app, get_h("/page", &[])).await;
    assert!(status_is(&plain, CacheStatus::Miss), "{}", statuses(&plain));
    assert_eq!(header_of(&plain, "content-encoding"), None);
    assert_eq!(hits.get(), 4);
}

/// RFC 9211 §2.2: `fwd=uri-miss` is "the cache did not contain any responses that matched the
/// request URI", `vary-miss` that it contained one for the URI but could not select it by the
/// request's headers. Once `purge` has removed every variant of a target, nothing is stored for
/// the URI, so the next miss is a `uri-miss`.
#[tokio::test(start_paused = true)]
async fn purge_of_every_variant_next_miss_is_a_uri_miss() {
    let hits = Hits::default();
    let layer = SwrLayer::new();
    let handle = layer.handle();
    let app = Router::new()
        .route(
            "/page",
            get(long_handler(&hits)).layer(tower_http::compression::CompressionLayer::new()),
        )
        .layer(layer);
    bytes_of(app_send(&app, get_h("/page", &[("accept-encoding", "gzip")])).await).await;
    bytes_of(app_send(&app, get_h("/page", &[])).await).await;
    assert_eq!(handle.purge("/page"), 2);
    assert_eq!(handle.stats().entries, 0);
    let gz = app_send(&app, get_h("/page", &[("accept-encoding", "gzip")])).await;
    assert!(statuses(&gz).contains("fwd=uri-miss"), "{}", statuses(&gz));
    bytes_of(gz).await;
    // the gzip variant is stored again: the plain request's miss is now a vary-miss
    let plain = app_send(&app, get_h("/page", &[])).await;
    assert!(
        statuses(&plain).contains("fwd=vary-miss"),
        "{}",
        statuses(&plain)
    );
}

/// `soft_purge` of a target with `Origin` variants behind `CorsLayer`: each variant is
/// answered stale once, with its own `Access-Control-Allow-Origin`, while it refreshes.
#[tokio::test(start_paused = true)]
async fn soft_purge_keeps_each_cors_variant_its_origin() {
    let hits = Hits::default();
    let layer = SwrLayer::new();
    let handle = layer.handle();
    let app = Router::new()
        .route(
            "/api",
            get(plain_handler(&hits, "max-age=600")).layer(cors()),
        )
        .layer(layer);
    let from = |o: &'static str| get_h("/api", &[("origin", o)]);
    app_text(app_send(&app, from("https://a.example")).await).await;
    app_text(app_send(&app, from("https://b.example")).await).await;
    assert_eq!(handle.soft_purge("/api"), 2);
    for origin in ["https://a.example", "https://b.example"] {
        let r = app_send(&app, from(origin)).await;
        assert!(
            status_is(&r, CacheStatus::Stale),
            "{origin}: {}",
            statuses(&r)
        );
        assert_eq!(
            header_of(&r, "access-control-allow-origin").as_deref(),
            Some(origin)
        );
    }
    let_refresh_run().await;
    assert_eq!(hits.get(), 4, "one refresh per variant");
}

/// Tags set by a layer behind the cache (`Surrogate-Key`): the entry is tagged, the header is
/// removed from what clients get (default `forward_cache_tags(false)`), and `purge_tag`
/// makes the next request a miss.
#[tokio::test(start_paused = true)]
async fn surrogate_key_from_an_inner_layer_tags_and_is_not_forwarded() {
    let hits = Hits::default();
    let layer = SwrLayer::new();
    let handle = layer.handle();
    let app = Router::new()
        .route(
            "/product/{id}",
            get(plain_handler(&hits, "max-age=600")).layer(
                tower_http::set_header::SetResponseHeaderLayer::overriding(
                    header::HeaderName::from_static("surrogate-key"),
                    HeaderValue::from_static("product-42 home"),
                ),
            ),
        )
        .layer(layer);
    let miss = app_send(&app, app_get("/product/42")).await;
    assert_eq!(header_of(&miss, "surrogate-key"), None);
    app_text(miss).await;
    let hit = app_send(&app, app_get("/product/42")).await;
    assert!(statuses(&hit).contains("hit"));
    assert_eq!(header_of(&hit, "surrogate-key"), None);
    assert_eq!(handle.purge_tag(["home"]), 1);
    let after = app_send(&app, app_get("/product/42")).await;
    assert!(
        statuses(&after).contains("fwd=uri-miss"),
        "{}",
        statuses(&after)
    );
    assert_eq!(app_text(after).await, "v2");
}

/// A successful `POST` answering `201` with `Location` invalidates that same-origin target too
/// (README: "its same-origin `Location`/`Content-Location`").
#[tokio::test(start_paused = true)]
async fn post_with_location_invalidates_the_located_entry() {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/items",
            axum::routing::post(|| async {
                (
                    StatusCode::CREATED,
                    [(header::LOCATION, "/items/7")],
                    "created",
                )
            }),
        )
        .route("/items/{id}", get(plain_handler(&hits, "max-age=600")))
        .layer(SwrLayer::new());
    assert_eq!(
        app_text(app_send(&app, app_get("/items/7")).await).await,
        "v1"
    );
    assert_eq!(
        app_text(app_send(&app, app_get("/items/8")).await).await,
        "v2"
    );
    let created = app_send(&app, app_req(Method::POST, "/items", &[])).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(
        app_text(app_send(&app, app_get("/items/7")).await).await,
        "v3"
    );
    assert_eq!(
        app_text(app_send(&app, app_get("/items/8")).await).await,
        "v2"
    );
}

/// Graceful shutdown as `examples/axum.rs` wires it: `shutdown` waits for the running refresh
/// (false when the deadline passes first), and afterwards stale entries are still answered
/// without starting refreshes (docs of `SwrHandle::shutdown`).
#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_refreshes_then_serves_stale_without_refreshing() {
    let gate = Gate::new();
    let g = gate.clone();
    // calls 1 and 2 store /a and /b; later calls (refreshes) wait for the gate
    let (origin, calls) = origin(move |n, _| {
        let g = g.clone();
        async move {
            if n > 2 {
                g.wait().await;
            }
            Ok(reply_cc(format!("v{n}"), SWR_10_60))
        }
    });
    let layer = SwrLayer::new();
    let handle = layer.handle();
    let service = layer.layer(origin);
    fetch_text(&service, common::get("/a")).await.unwrap();
    fetch_text(&service, common::get("/b")).await.unwrap();
    advance(secs(11)).await;
    fetch_text(&service, common::get("/a")).await.unwrap();
    settle().await;
    assert_eq!(handle.stats().refreshes_running, 1);
    assert!(
        !handle.shutdown(secs(1)).await,
        "the held refresh outlives 1 s"
    );
    let b = service.clone().oneshot(common::get("/b")).await.unwrap();
    assert_eq!(info(&b).status, CacheStatus::Stale);
    assert_eq!(body_text(b).await.unwrap(), "v2");
    settle().await;
    assert_eq!(
        handle.stats().refreshes_started,
        1,
        "no refresh after shutdown"
    );
    gate.open();
    assert!(handle.shutdown(secs(5)).await);
    assert_eq!(calls.get(), 3);
}

// ---------------------------------------------------------------------------------------------
// More observability
// ---------------------------------------------------------------------------------------------

/// `CacheInfo` of a just-stored miss carries its age and store time (docs: "for answers from
/// the cache (including a just-stored miss)"); `loads_running` shows the miss in flight.
#[tokio::test(start_paused = true)]
async fn cache_info_of_a_stored_miss_and_loads_running() {
    let gate = Gate::new();
    let (origin, _calls) = holding_origin(&gate);
    let layer = SwrLayer::new();
    let service = layer.layer(origin);
    let task = tokio::spawn(service.clone().oneshot(common::get("/held")));
    settle().await;
    assert_eq!(layer.stats().loads_running, 1);
    gate.open();
    let miss = task.await.unwrap().unwrap();
    let info = info(&miss);
    assert_eq!(info.status, CacheStatus::Miss);
    assert!(info.stored);
    assert_eq!(info.age, Some(Duration::ZERO), "{info:?}");
    assert!(info.stored_at.is_some(), "{info:?}");
    body_text(miss).await.unwrap();
    settle().await;
    assert_eq!(layer.stats().loads_running, 0);
}

/// Refreshes cut by `refresh_timeout` behind an axum route: counted as timed out (and failed),
/// a `WARN` logged, `refreshes_running` back to zero, the entry kept.
#[tokio::test(start_paused = true)]
async fn refresh_timeout_is_counted_logged_and_keeps_the_entry() {
    let events = Events::default();
    let _collecting = events.install();
    let hits = Hits::default();
    let layer = SwrLayer::new().refresh_timeout(secs(2));
    let app = Router::new()
        .route("/slow", get(slow_handler(&hits, 1, SWR_10_60)))
        .layer(layer.clone());
    app_text(app_send(&app, app_get("/slow")).await).await;
    advance(secs(11)).await;
    app_text(app_send(&app, app_get("/slow")).await).await;
    settle().await;
    assert_eq!(layer.stats().refreshes_running, 1);
    for _ in 0..4 {
        advance(secs(1)).await;
        settle().await;
    }
    let stats = layer.stats();
    assert_eq!(
        (
            stats.refreshes_timed_out,
            stats.refreshes_failed,
            stats.refreshes_running
        ),
        (1, 1, 0),
        "{stats:?}"
    );
    assert!(!events.at(tracing::Level::WARN).is_empty());
    assert_eq!(app_text(app_send(&app, app_get("/slow")).await).await, "v1");
}

/// The circuit breaker: after `threshold` failed refreshes in a row, refreshes pause
/// (`refreshes_paused`), a `WARN` says so, and stale keeps being served.
#[tokio::test(start_paused = true)]
async fn circuit_breaker_opens_with_a_warning_and_serves_stale() {
    let events = Events::default();
    let _collecting = events.install();
    let down = Switch::default();
    let (origin, _calls) = switchable(SWR_10_60, down.clone());
    let layer = SwrLayer::new().circuit_breaker(2, secs(30));
    let service = layer.layer(origin);
    for key in ["/1", "/2", "/3"] {
        fetch_text(&service, common::get(key)).await.unwrap();
    }
    down.0.store(true, Ordering::SeqCst);
    advance(secs(11)).await;
    for key in ["/1", "/2"] {
        fetch_text(&service, common::get(key)).await.unwrap();
        settle().await;
    }
    let stats = layer.stats();
    assert_eq!(stats.refreshes_failed, 2, "{stats:?}");
    assert!(stats.refreshes_paused, "{stats:?}");
    let warns = events.at(tracing::Level::WARN);
    assert_eq!(
        warns.len(),
        3,
        "two failed refreshes, then the breaker opening"
    );
    assert!(
        warns
            .iter()
            .all(|w| w.fields.get("cache").map(String::as_str) == Some("tower-swr")),
        "every warning carries the cache's name"
    );
    let third = service.clone().oneshot(common::get("/3")).await.unwrap();
    assert_eq!(info(&third).status, CacheStatus::Stale);
    settle().await;
    assert_eq!(
        layer.stats().refreshes_started,
        2,
        "paused: no third refresh"
    );
}

/// A panicking origin with requests waiting for its call: the waiters get a `502` marked
/// `detail=origin-error` (README), and the key's failure is remembered briefly.
#[tokio::test(start_paused = true)]
async fn panicking_origin_waiters_get_502_origin_error() {
    let gate = Gate::new();
    let g = gate.clone();
    let (origin, _calls) = origin(move |_n, _| {
        let g = g.clone();
        async move {
            g.wait().await;
            if true {
                panic!("origin bug");
            }
            Ok(reply("never"))
        }
    });
    let service = SwrLayer::new().layer(origin);
    let leader = tokio::spawn(service.clone().oneshot(common::get("/p")));
    settle().await;
    let waiters: Vec<_> = (0..2)
        .map(|_| tokio::spawn(service.clone().oneshot(common::get("/p"))))
        .collect();
    settle().await;
    gate.open();
    let _ = leader.await; // the leader's own outcome: its panic or the same 502
    for waiter in waiters {
        let r = waiter.await.expect("a waiter does not panic").unwrap();
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        assert!(
            cache_status(&r).contains("detail=origin-error"),
            "{}",
            cache_status(&r)
        );
    }
}

/// Two layers stacked, an edge cache in front of the app's cache: the edge's member comes
/// after the app cache's (RFC 9211), an edge hit never reaches the inner cache, and the inner
/// cache's `Age` counts towards the edge's age (README: "`Age` and `Date` count towards
/// age").
#[tokio::test(start_paused = true)]
async fn two_stacked_layers_append_members_and_count_age() {
    let (origin, calls) = counting_origin("max-age=60");
    let inner = SwrLayer::new();
    let edge = SwrLayer::new().cache_name("edge");
    let edge_handle = edge.handle();
    let service = edge.layer(inner.layer(origin));
    let miss = service.clone().oneshot(common::get("/s")).await.unwrap();
    let lines = cache_status_lines(&miss);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with("tower-swr;") && lines[1].starts_with("edge;"),
        "{lines:?}"
    );
    body(miss).await.unwrap();
    advance(secs(5)).await;
    let hit = service.clone().oneshot(common::get("/s")).await.unwrap();
    assert!(
        cache_status(&hit).starts_with("edge; hit"),
        "{}",
        cache_status(&hit)
    );
    assert_eq!(age(&hit), Some(5));
    body(hit).await.unwrap();
    assert_eq!(inner.stats().fresh_hits, 0, "the edge answered alone");
    advance(secs(15)).await; // 20 s
    assert_eq!(edge_handle.purge("/s"), 1);
    let refetched = service.clone().oneshot(common::get("/s")).await.unwrap();
    assert_eq!(info(&refetched).status, CacheStatus::Miss, "an edge miss");
    assert_eq!(inner.stats().fresh_hits, 1, "answered by the inner cache");
    assert_eq!(
        age(&refetched),
        Some(20),
        "the inner cache's age carries over"
    );
    body(refetched).await.unwrap();
    advance(secs(10)).await; // 30 s since the origin answered
    let hit = service.clone().oneshot(common::get("/s")).await.unwrap();
    assert_eq!(age(&hit), Some(30));
    assert_eq!(cache_status(&hit), "edge; hit; ttl=30");
    assert_eq!(calls.get(), 1);
}

// ---------------------------------------------------------------------------------------------
// Upgrades, ranges and fills under what clients do
// ---------------------------------------------------------------------------------------------

/// A WebSocket-style handshake through the layer on a real socket: it reaches the handler
/// with hyper's upgrade extension intact (README: "`Upgrade`: WebSocket handshakes reach the
/// handler and get their `101`"), and the upgraded connection carries bytes both ways.
#[tokio::test]
async fn upgrade_handshake_reaches_the_handler_and_upgrades() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let layer = SwrLayer::new();
    let app = Router::new()
        .route(
            "/ws",
            get(|mut request: axum::extract::Request| async move {
                let Some(on_upgrade) = request
                    .extensions_mut()
                    .remove::<hyper::upgrade::OnUpgrade>()
                else {
                    return (StatusCode::IM_A_TEAPOT, "no upgrade extension").into_response();
                };
                tokio::spawn(async move {
                    let upgraded = on_upgrade.await.expect("upgraded");
                    let mut io = hyper_util::rt::TokioIo::new(upgraded);
                    let mut buf = [0u8; 4];
                    io.read_exact(&mut buf).await.unwrap();
                    buf.reverse();
                    io.write_all(&buf).await.unwrap();
                    io.flush().await.unwrap();
                });
                Response::builder()
                    .status(StatusCode::SWITCHING_PROTOCOLS)
                    .header(header::CONNECTION, "upgrade")
                    .header(header::UPGRADE, "echo")
                    .body(AxumBody::empty())
                    .unwrap()
            }),
        )
        .layer(layer.clone());
    let addr = serve(app).await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!(
                "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(WIRE_TIMEOUT, stream.read_exact(&mut byte))
            .await
            .expect("the handshake answer in time")
            .unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream.write_all(b"abcd").await.unwrap();
    let mut echoed = [0u8; 4];
    tokio::time::timeout(WIRE_TIMEOUT, stream.read_exact(&mut echoed))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(&echoed, b"dcba");
    assert_eq!(layer.stats().stores, 0);
}

/// Compression in front of the cache and a `Range` request from a gzip client: the layer's
/// `206` from the stored identity body is not compressed (ranges never are) and is the slice
/// asked for.
#[tokio::test(start_paused = true)]
async fn compression_outside_range_hit_is_the_identity_slice() {
    let hits = Hits::default();
    let app = Router::new()
        .route("/page", get(long_handler(&hits)))
        .layer(SwrLayer::new())
        .layer(tower_http::compression::CompressionLayer::new());
    bytes_of(app_send(&app, get_h("/page", &[])).await).await;
    let r = app_send(
        &app,
        get_h(
            "/page",
            &[("accept-encoding", "gzip"), ("range", "bytes=0-5")],
        ),
    )
    .await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{}", statuses(&r));
    assert_eq!(header_of(&r, "content-encoding"), None);
    assert_eq!(&bytes_of(r).await[..], b"call 1");
    assert_eq!(hits.get(), 1);
}

/// A client that gives up while reading a miss's body (a client-facing body timeout, a closed
/// tab) stops nothing: the fill completes and is stored (README: "a whole fill is stored even
/// when every client left").
#[tokio::test(start_paused = true)]
async fn client_leaving_mid_body_does_not_stop_the_fill() {
    let (origin, calls, feeds) = fed_origin("max-age=60", None);
    let layer = SwrLayer::new();
    let service = layer.layer(origin);
    let response = service.clone().oneshot(common::get("/fill")).await.unwrap();
    feeds.send(1, "part one, ").await;
    let mut body_stream = response.into_body();
    let first = body_stream.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "part one, ");
    drop(body_stream); // the client goes away
    feeds.send(1, "part two").await;
    feeds.end(1);
    settle().await;
    assert_eq!(layer.stats().entries, 1, "{:?}", layer.stats());
    let hit = service.clone().oneshot(common::get("/fill")).await.unwrap();
    assert_eq!(info(&hit).status, CacheStatus::Fresh);
    assert_eq!(&body(hit).await.unwrap()[..], b"part one, part two");
    assert_eq!(calls.get(), 1);
}

/// Over a real socket, a `HEAD` answered from the stored `GET` is framed as the `GET` would
/// be: a `Content-Length`, when sent, is the `GET` body's length, and no body bytes follow.
#[tokio::test]
async fn head_hit_over_the_wire_is_framed_like_the_get() {
    let hits = Hits::default();
    let app = Router::new()
        .route("/h", get(plain_handler(&hits, "max-age=60")))
        .route(
            "/page",
            get(long_handler(&hits)).layer(tower_http::compression::CompressionLayer::new()),
        )
        .layer(SwrLayer::new());
    let addr = serve(app).await;
    let host = addr.to_string();
    for (path, extra) in [("/h", ""), ("/page", "Accept-Encoding: gzip\r\n")] {
        let get = exchange(addr, &raw_get(path, &host, extra), false)
            .await
            .unwrap();
        let raw_head = raw_get(path, &host, extra).replacen("GET", "HEAD", 1);
        let head = exchange(addr, &raw_head, true).await.unwrap();
        assert_eq!(head.status, 200, "{path}");
        assert!(
            head.cache_status().contains("hit"),
            "{path}: {}",
            head.cache_status()
        );
        if let Some(len) = head.header("content-length") {
            assert_eq!(len.parse::<usize>().unwrap(), get.body.len(), "{path}");
        }
        assert_eq!(
            head.header("content-encoding"),
            get.header("content-encoding"),
            "{path}"
        );
    }
}

/// Many concurrent clients on a multi-threaded runtime over real sockets, half accepting gzip,
/// behind `CompressionLayer` inside the cache with a slow handler: every client gets the
/// encoding it accepted, and the handler runs once per variant (or a few times: never once
/// per request).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_mixed_encodings_over_real_sockets_never_cross() {
    let hits = Hits::default();
    let h = hits.clone();
    let app = Router::new()
        .route(
            "/page",
            get(move || {
                let n = h.bump();
                async move {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    ([(header::CACHE_CONTROL, "max-age=60")], long_text(n))
                }
            })
            .layer(tower_http::compression::CompressionLayer::new()),
        )
        .layer(SwrLayer::new());
    let addr = serve(app).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let gzip = i % 2 == 0;
            let mut builder = Request::builder().uri(format!("http://{addr}/page"));
            if gzip {
                builder = builder.header(header::ACCEPT_ENCODING, "gzip");
            }
            let response = client
                .request(builder.body(Full::default()).unwrap())
                .await
                .expect("a response");
            let encoding = header_of(&response, "content-encoding");
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            (gzip, encoding, bytes)
        }));
    }
    for task in tasks {
        let (gzip, encoding, bytes) = task.await.unwrap();
        if gzip {
            assert_eq!(encoding.as_deref(), Some("gzip"));
            assert!(is_gzip(&bytes));
        } else {
            assert_eq!(encoding, None);
            assert!(bytes.starts_with(b"call "), "identity for a plain client");
        }
    }
    assert!(
        hits.get() <= 4,
        "coalesced per variant: {} calls",
        hits.get()
    );
}

/// Every kind of cached answer logs its `debug` event with the key and the status (README: "a
/// `debug` event per request with key and status"): a miss, a hit, a stale answer.
#[tokio::test(start_paused = true)]
async fn tracing_debug_event_for_every_kind_of_answer() {
    let events = Events::default();
    let _collecting = events.install();
    let (origin, _calls) = counting_origin(SWR_10_60);
    let service = SwrLayer::new().layer(origin);
    let per_request = || debug_events_with_key_and_status(&events, "/every");
    let mut seen = per_request();
    for (what, wait) in [("miss", 0), ("hit", 0), ("stale", 11)] {
        advance(secs(wait)).await;
        body(
            service
                .clone()
                .oneshot(common::get("/every"))
                .await
                .unwrap(),
        )
        .await
        .unwrap();
        let now = per_request();
        assert!(now > seen, "a debug event for the {what}");
        seen = now;
    }
}

/// How many `debug` events name `path` in a field and carry a `status` field.
fn debug_events_with_key_and_status(events: &Events, path: &str) -> usize {
    events
        .at(tracing::Level::DEBUG)
        .into_iter()
        .filter(|e| e.fields.values().any(|v| v.contains(path)) && e.fields.contains_key("status"))
        .count()
}

/// The same promise for requests the layer passes through (a `POST`, a `GET` whose `key_fn`
/// says `None`, an `Upgrade` handshake) and for an answer with a remembered failure. README:
/// "a `debug` event per request with key and status".
#[tokio::test(start_paused = true)]
async fn tracing_debug_event_for_bypassed_requests() {
    let events = Events::default();
    let _collecting = events.install();
    let (origin, _calls) = origin(|n, request: http::Request<ReqBody>| async move {
        Ok(if request.uri().path() == "/failing" {
            respond(503, "down", &[])
        } else {
            reply_cc(format!("v{n}"), SWR_10_60)
        })
    });
    let service = SwrLayer::new()
        .key_fn(|p| (p.uri.path() != "/bypass-nokey").then(String::new))
        .layer(origin);
    body(
        service
            .clone()
            .oneshot(common::get("/failing"))
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    let mut missing = Vec::new();
    for (path, request, status) in [
        (
            "/bypass-post",
            common::req("POST", "/bypass-post", &[]),
            CacheStatus::Bypass,
        ),
        (
            "/bypass-nokey",
            common::get("/bypass-nokey"),
            CacheStatus::Bypass,
        ),
        (
            "/bypass-up",
            common::req(
                "GET",
                "/bypass-up",
                &[("upgrade", "websocket"), ("connection", "upgrade")],
            ),
            CacheStatus::Bypass,
        ),
        ("/failing", common::get("/failing"), CacheStatus::FailureHit),
    ] {
        let before = debug_events_with_key_and_status(&events, path);
        let r = service.clone().oneshot(request).await.unwrap();
        assert_eq!(info(&r).status, status, "{path}: {}", cache_status(&r));
        body(r).await.unwrap();
        if debug_events_with_key_and_status(&events, path) == before {
            missing.push(path);
        }
    }
    assert!(
        missing.is_empty(),
        "no debug event with key and status for {missing:?}; events: {:?}",
        events
            .at(tracing::Level::DEBUG)
            .iter()
            .map(|e| (&e.message, &e.fields))
            .collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------------------------
// Request directives and surrogate headers through axum
// ---------------------------------------------------------------------------------------------

/// A `HEAD` miss goes to axum as a `HEAD` (which runs the `GET` handler without sending the
/// body) and is not stored (README, `convert_head(false)` by default): the next `GET` is a miss.
#[tokio::test(start_paused = true)]
async fn head_miss_is_not_stored_under_axum() {
    let hits = Hits::default();
    let layer = SwrLayer::new();
    let app = Router::new()
        .route("/h", get(plain_handler(&hits, "max-age=60")))
        .layer(layer.clone());
    let head = app_send(&app, app_req(Method::HEAD, "/h", &[])).await;
    assert_eq!(head.status(), StatusCode::OK);
    assert!(app_text(head).await.is_empty());
    assert_eq!(layer.stats().stores, 0);
    let get = app_send(&app, app_get("/h")).await;
    assert!(
        statuses(&get).contains("fwd=uri-miss"),
        "{}",
        statuses(&get)
    );
    assert_eq!(app_text(get).await, "v2");
}

/// Request `Cache-Control` through axum: `no-cache` and `max-age=0` are ignored (README, as
/// nginx and Varnish), `only-if-cached` is answered from the cache or `504` without calling
/// the handler, `no-store` is not stored.
#[tokio::test(start_paused = true)]
async fn request_cache_control_through_axum() {
    let hits = Hits::default();
    let layer = SwrLayer::new();
    let app = Router::new()
        .route("/r", get(plain_handler(&hits, "max-age=60")))
        .route("/ns", get(plain_handler(&hits, "max-age=60")))
        .layer(layer.clone());
    let cold = app_send(&app, get_h("/r", &[("cache-control", "only-if-cached")])).await;
    assert_eq!(cold.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(
        statuses(&cold).contains("detail=only-if-cached"),
        "{}",
        statuses(&cold)
    );
    assert_eq!(hits.get(), 0);
    app_text(app_send(&app, app_get("/r")).await).await;
    for cc in ["no-cache", "max-age=0", "only-if-cached"] {
        let r = app_send(&app, get_h("/r", &[("cache-control", cc)])).await;
        assert!(statuses(&r).contains("hit"), "{cc}: {}", statuses(&r));
        assert_eq!(app_text(r).await, "v1");
    }
    app_text(app_send(&app, get_h("/ns", &[("cache-control", "no-store")])).await).await;
    let after = app_send(&app, app_get("/ns")).await;
    assert!(!statuses(&after).contains("hit"), "{}", statuses(&after));
    assert_eq!(hits.get(), 3);
}

/// `Surrogate-Control` set by a layer behind the cache: it overrides `Cache-Control` for this
/// cache, is not passed on to clients, and the handler sees `Surrogate-Capability` (README).
#[tokio::test(start_paused = true)]
async fn surrogate_control_from_an_inner_layer() {
    let capability = Arc::new(std::sync::Mutex::new(None::<String>));
    let c = capability.clone();
    let hits = Hits::default();
    let h = hits.clone();
    let app = Router::new()
        .route(
            "/edge",
            get(move |headers: axum::http::HeaderMap| {
                *c.lock().unwrap() = headers
                    .get("surrogate-capability")
                    .map(|v| v.to_str().unwrap().to_owned());
                let n = h.bump();
                async move { ([(header::CACHE_CONTROL, "no-cache")], format!("v{n}")) }
            })
            .layer(tower_http::set_header::SetResponseHeaderLayer::overriding(
                header::HeaderName::from_static("surrogate-control"),
                HeaderValue::from_static("max-age=600"),
            )),
        )
        .layer(SwrLayer::new());
    let first = app_send(&app, app_get("/edge")).await;
    assert_eq!(header_of(&first, "surrogate-control"), None);
    assert_eq!(
        header_of(&first, "cache-control").as_deref(),
        Some("no-cache")
    );
    app_text(first).await;
    let capability = capability.lock().unwrap().clone().unwrap_or_default();
    assert!(capability.contains("tower-swr"), "{capability:?}");
    advance(secs(120)).await;
    let hit = app_send(&app, app_get("/edge")).await;
    assert!(statuses(&hit).contains("hit"), "{}", statuses(&hit));
    assert_eq!(header_of(&hit, "surrogate-control"), None);
    assert_eq!(app_text(hit).await, "v1");
    assert_eq!(hits.get(), 1);
}

/// README's per-route `policy_fn` example at the top level, as written: the policy applies.
#[tokio::test(start_paused = true)]
async fn policy_fn_at_the_top_level_applies() {
    let app = Router::new()
        .route("/api/cinema", get(counting_text(&Hits::default())))
        .layer(cinema_policy());
    assert_eq!(
        app_text(app_send(&app, app_get("/api/cinema")).await).await,
        "v1"
    );
    advance(secs(3600)).await; // past the 60 s + 120 s defaults, well inside 6 days
    let r = app_send(&app, app_get("/api/cinema")).await;
    assert!(status_is(&r, CacheStatus::Fresh), "{}", statuses(&r));
}

/// A handler answering `v{call}` with no caching headers.
fn counting_text(
    hits: &Hits,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>>
       + Clone
       + Send
       + Sync
       + 'static {
    let hits = hits.clone();
    move || {
        let n = hits.bump();
        Box::pin(async move { format!("v{n}") })
    }
}

/// README's policy: `/api/cinema` is fresh for 6 days.
fn cinema_policy() -> SwrLayer {
    use tower_swr::engine::Freshness;
    SwrLayer::new().policy_fn(|request, _response| match request.uri.path() {
        "/api/cinema" => Some(Freshness::new(Duration::from_secs(6 * 86_400))),
        _ => None,
    })
}

/// The same policy on a layer inside `Router::nest("/api", ..)`. There the layer keys and
/// purges on the path the client sent (axum feature, CHANGELOG: "purges take the path users
/// see"), so a user expects the policy function to see that same path. The docs are silent on
/// which path `policy_fn` (or `key_fn`) gets; this is the experienced-axum-user expectation
/// (one path for keys, purges and policies).
#[tokio::test(start_paused = true)]
async fn policy_fn_inside_nest_sees_the_path_users_see() {
    let layer = cinema_policy();
    let handle = layer.handle();
    let app = Router::new().nest(
        "/api",
        Router::new()
            .route("/cinema", get(counting_text(&Hits::default())))
            .layer(layer),
    );
    assert_eq!(
        app_text(app_send(&app, app_get("/api/cinema")).await).await,
        "v1"
    );
    advance(secs(3600)).await;
    let r = app_send(&app, app_get("/api/cinema")).await;
    assert!(status_is(&r, CacheStatus::Fresh), "{}", statuses(&r));
    assert_eq!(app_text(r).await, "v1");
    assert_eq!(
        handle.purge("/api/cinema"),
        1,
        "purges do use the client's path"
    );
}

/// `credential_headers` and an auth check behind the cache: a `public` answer to a request with
/// the key is stored; its refresh, triggered by another client, sends the storing request's
/// key (docs of `credential_headers`: "a refresh sends the storing request's value, not the
/// triggering client's"), so the auth check passes and the refresh stores.
#[tokio::test(start_paused = true)]
async fn refresh_of_a_public_credentialed_answer_sends_the_storing_key() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::<Option<String>>::new()));
    let s = seen.clone();
    let hits = Hits::default();
    let h = hits.clone();
    let layer = SwrLayer::new().credential_headers(["x-token"]);
    let app = Router::new()
        .route(
            "/catalog",
            get(move |headers: axum::http::HeaderMap| {
                s.lock().unwrap().push(
                    headers
                        .get("x-token")
                        .map(|v| v.to_str().unwrap().to_owned()),
                );
                let n = h.bump();
                async move {
                    (
                        [(
                            header::CACHE_CONTROL,
                            "public, max-age=10, stale-while-revalidate=60",
                        )],
                        format!("v{n}"),
                    )
                }
            })
            .layer(middleware::from_fn(require_token)),
        )
        .layer(layer.clone());
    let first = app_send(&app, get_h("/catalog", &[("x-token", "ok")])).await;
    assert_eq!(app_text(first).await, "v1");
    let hit = app_send(&app, get_h("/catalog", &[("x-token", "ok")])).await;
    assert!(statuses(&hit).contains("hit"), "{}", statuses(&hit));
    advance(secs(11)).await;
    let stale = app_send(&app, get_h("/catalog", &[("x-token", "other")])).await;
    assert!(
        status_is(&stale, CacheStatus::Stale),
        "{}",
        statuses(&stale)
    );
    let_refresh_run().await;
    assert_eq!(layer.stats().refreshes_succeeded, 1, "{:?}", layer.stats());
    assert_eq!(
        seen.lock().unwrap().last().cloned().flatten().as_deref(),
        Some("ok"),
        "the refresh carried the storing request's key"
    );
}

/// An absolute-form target whose authority differs from `Host`: the handler is sent `Host`
/// rewritten to the authority (README, RFC 9112 §3.2.2), so what is rendered is what is keyed.
#[tokio::test(start_paused = true)]
async fn absolute_form_host_is_rewritten_for_the_handler() {
    let app = Router::new()
        .route(
            "/whoami",
            get(|headers: axum::http::HeaderMap| async move {
                headers
                    .get(header::HOST)
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default()
            }),
        )
        .layer(SwrLayer::new());
    let r = app_send(
        &app,
        get_h("http://a.example/whoami", &[("host", "b.example")]),
    )
    .await;
    assert_eq!(app_text(r).await, "a.example");
    let other = app_send(&app, get_h("/whoami", &[("host", "b.example")])).await;
    assert!(
        !statuses(&other).contains("hit"),
        "another host: {}",
        statuses(&other)
    );
    assert_eq!(app_text(other).await, "b.example");
}

/// A body over `max_body_bytes` is "not stored" (docs of `max_body_bytes`): an operator reads
/// `Stats::store_rejections` ("values not stored because they were heavier than the largest
/// storable entry") and its mirror `swr_stores_total{result="too_large"}` to see responses too
/// large to cache, and expects them to count it. The docs do not say whether the limit on
/// bodies is "the largest storable entry"; this is the operator's expectation from the names.
#[tokio::test(start_paused = true)]
async fn body_over_max_body_bytes_counts_as_too_large() {
    let hits = Hits::default();
    let h = hits.clone();
    let layer = SwrLayer::new().max_body_bytes(1024);
    let app = Router::new()
        .route(
            "/big",
            get(move || {
                h.bump();
                async { ([(header::CACHE_CONTROL, "max-age=60")], "x".repeat(4096)) }
            }),
        )
        .layer(layer.clone());
    for _ in 0..2 {
        assert_eq!(
            app_text(app_send(&app, app_get("/big")).await).await.len(),
            4096
        );
    }
    settle().await;
    let stats = layer.stats();
    assert_eq!((stats.stores, hits.get()), (0, 2), "not stored: {stats:?}");
    assert_eq!(stats.store_rejections, 2, "{stats:?}");
}

/// Each encoding variant behind `CompressionLayer` stands in for itself when the handler
/// fails (stale-if-error): the gzip client gets the stored gzip body, the plain client identity.
#[tokio::test(start_paused = true)]
async fn stale_if_error_per_encoding_variant() {
    let hits = Hits::default();
    let h = hits.clone();
    let app = Router::new()
        .route(
            "/page",
            get(move || {
                let n = h.bump();
                async move {
                    if n > 2 {
                        return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
                    }
                    (
                        [(
                            header::CACHE_CONTROL,
                            "max-age=1, stale-while-revalidate=0, stale-if-error=60",
                        )],
                        long_text(n),
                    )
                        .into_response()
                }
            })
            .layer(tower_http::compression::CompressionLayer::new()),
        )
        .layer(SwrLayer::new());
    bytes_of(app_send(&app, get_h("/page", &[("accept-encoding", "gzip")])).await).await;
    bytes_of(app_send(&app, get_h("/page", &[])).await).await;
    advance(secs(3)).await;
    let gz = app_send(&app, get_h("/page", &[("accept-encoding", "gzip")])).await;
    assert!(statuses(&gz).contains("fwd=stale"), "{}", statuses(&gz));
    assert_eq!(header_of(&gz, "content-encoding").as_deref(), Some("gzip"));
    assert!(is_gzip(&bytes_of(gz).await));
    let plain = app_send(&app, get_h("/page", &[])).await;
    assert!(
        statuses(&plain).contains("fwd=stale"),
        "{}",
        statuses(&plain)
    );
    assert_eq!(header_of(&plain, "content-encoding"), None);
    assert_eq!(bytes_of(plain).await, long_text(2).as_bytes());
}

/// `X-Query-Time-ms` of a coalesced request is the time it waited for the leader's call.
#[tokio::test(start_paused = true)]
async fn query_time_of_a_collapsed_request_is_its_wait() {
    let hits = Hits::default();
    let app = Router::new()
        .route("/slow", get(slow_handler(&hits, 0, "max-age=60")))
        .layer(SwrLayer::new().query_time_header(true))
        .with_state(());
    let leader = tokio::spawn({
        let app = app.clone();
        async move { app_send(&app, app_get("/slow")).await }
    });
    settle().await;
    advance(secs(2)).await;
    let waiter = tokio::spawn({
        let app = app.clone();
        async move { app_send(&app, app_get("/slow")).await }
    });
    let leader = leader.await.unwrap();
    let waiter = waiter.await.unwrap();
    assert!(
        status_is(&waiter, CacheStatus::Collapsed),
        "{}",
        statuses(&waiter)
    );
    let ms = |r: &Response<AxumBody>| -> u64 {
        header_of(r, "x-query-time-ms").unwrap().parse().unwrap()
    };
    assert!((5000..5100).contains(&ms(&leader)), "{}", ms(&leader));
    assert!((2900..3100).contains(&ms(&waiter)), "{}", ms(&waiter));
    assert_eq!(hits.get(), 1);
}

/// A client's `If-None-Match` through axum is answered `304` from the fresh entry (README),
/// marked a hit, with the validator.
#[tokio::test(start_paused = true)]
async fn conditional_request_answered_304_from_the_entry() {
    let hits = Hits::default();
    let h = hits.clone();
    let app = Router::new()
        .route(
            "/doc",
            get(move || {
                let n = h.bump();
                async move {
                    (
                        [
                            (header::CACHE_CONTROL, "max-age=60"),
                            (header::ETAG, "\"d1\""),
                        ],
                        format!("v{n}"),
                    )
                }
            }),
        )
        .layer(SwrLayer::new());
    app_text(app_send(&app, app_get("/doc")).await).await;
    let r = app_send(&app, get_h("/doc", &[("if-none-match", "\"d1\"")])).await;
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert!(statuses(&r).contains("hit"), "{}", statuses(&r));
    assert_eq!(header_of(&r, "etag").as_deref(), Some("\"d1\""));
    assert!(app_text(r).await.is_empty());
    let other = app_send(&app, get_h("/doc", &[("if-none-match", "\"zz\"")])).await;
    assert_eq!(other.status(), StatusCode::OK);
    assert_eq!(hits.get(), 1);
}

// ---------------------------------------------------------------------------------------------
// Coalescing and credentials
// ---------------------------------------------------------------------------------------------

/// A handler held open that answers `who: <Authorization or Cookie or anonymous>` with
/// `max-age=60` (neither `public` nor `s-maxage`).
fn held_whoami(
    gate: &Gate,
    hits: &Hits,
) -> impl Fn(
    axum::http::HeaderMap,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<AxumBody>> + Send>>
       + Clone
       + Send
       + Sync
       + 'static {
    let (gate, hits) = (gate.clone(), hits.clone());
    move |headers: axum::http::HeaderMap| {
        let (gate, _n) = (gate.clone(), hits.bump());
        Box::pin(async move {
            gate.wait().await;
            let who = headers
                .get(header::AUTHORIZATION)
                .or_else(|| headers.get(header::COOKIE))
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_else(|| "anonymous".to_owned());
            (
                [(header::CACHE_CONTROL, "max-age=60")],
                format!("who: {who}"),
            )
                .into_response()
        })
    }
}

/// While an authorized request's miss is in flight, anonymous and other users' requests for
/// the same URL arrive: none of them is handed the authorized answer (README: answers to
/// requests with `Authorization` are never shared unless `public`, `s-maxage` or
/// `must-revalidate`).
#[tokio::test(start_paused = true)]
async fn coalescing_never_hands_an_authorized_answer_to_others() {
    let (gate, hits) = (Gate::new(), Hits::default());
    let app = Router::new()
        .route("/me", get(held_whoami(&gate, &hits)))
        .layer(SwrLayer::new())
        .with_state(());
    let send = |headers: &'static [(&'static str, &'static str)]| {
        let app = app.clone();
        tokio::spawn(async move { app_text(app_send(&app, get_h("/me", headers)).await).await })
    };
    let alice = send(&[("authorization", "Bearer alice")]);
    settle().await;
    let anon = send(&[]);
    let bob = send(&[("authorization", "Bearer bob")]);
    settle().await;
    gate.open();
    assert_eq!(alice.await.unwrap(), "who: Bearer alice");
    assert_eq!(anon.await.unwrap(), "who: anonymous");
    assert_eq!(bob.await.unwrap(), "who: Bearer bob");
}

/// An anonymous miss in flight, and requests with `Cookie` arrive: the answer (not `public`)
/// is not theirs (README: a request carrying `Cookie` is answered from the cache only with
/// `public` or `s-maxage` answers), so each is answered by the handler with its cookie.
#[tokio::test(start_paused = true)]
async fn coalescing_never_hands_a_cookieless_answer_to_cookie_requests() {
    let (gate, hits) = (Gate::new(), Hits::default());
    let app = Router::new()
        .route("/page", get(held_whoami(&gate, &hits)))
        .layer(SwrLayer::new())
        .with_state(());
    let send = |headers: &'static [(&'static str, &'static str)]| {
        let app = app.clone();
        tokio::spawn(async move { app_text(app_send(&app, get_h("/page", headers)).await).await })
    };
    let anon = send(&[]);
    settle().await;
    let c1 = send(&[("cookie", "session=1")]);
    let c2 = send(&[("cookie", "session=2")]);
    settle().await;
    gate.open();
    assert_eq!(anon.await.unwrap(), "who: anonymous");
    assert_eq!(c1.await.unwrap(), "who: session=1");
    assert_eq!(c2.await.unwrap(), "who: session=2");
}

/// axum's documented stack for a rate limit (`HandleErrorLayer`, `Buffer`, `RateLimit`) on a
/// route behind the cache: while the rate is spent and another key's miss waits for it, hits
/// answer at once; the waiting miss is answered once the period ends, not failed.
#[tokio::test(start_paused = true)]
async fn handle_error_buffer_rate_limit_inside_hits_never_wait() {
    let hits = Hits::default();
    let h = hits.clone();
    let layer = SwrLayer::new();
    let app = Router::new()
        .route(
            "/items/{id}",
            get(move |Path(id): Path<String>| {
                let n = h.bump();
                async move {
                    (
                        [(header::CACHE_CONTROL, "max-age=600")],
                        format!("v{n} {id}"),
                    )
                }
            })
            .layer(
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
                        StatusCode::SERVICE_UNAVAILABLE
                    }))
                    .buffer(16)
                    .rate_limit(1, secs(10)),
            ),
        )
        .layer(layer.clone())
        .with_state(());
    assert_eq!(
        app_text(app_send(&app, app_get("/items/a")).await).await,
        "v1 a"
    );
    let start = Instant::now();
    let waiting = tokio::spawn({
        let app = app.clone();
        async move { app_send(&app, app_get("/items/b")).await }
    });
    settle().await;
    for _ in 0..3 {
        let before = Instant::now();
        let hit = app_send(&app, app_get("/items/a")).await;
        assert_eq!(before.elapsed(), Duration::ZERO);
        assert!(status_is(&hit, CacheStatus::Fresh), "{}", statuses(&hit));
    }
    let b = waiting.await.unwrap();
    assert_eq!(b.status(), StatusCode::OK);
    assert!(start.elapsed() >= secs(9), "{:?}", start.elapsed());
    assert_eq!(app_text(b).await, "v2 b");
    assert_eq!(layer.stats().failure_hits, 0);
}

/// The same for `key_fn`, whose `None` "skips the cache for the request": a layer told to skip
/// `/api/admin/...`, inside `Router::nest("/api", ..)`, must not store an admin page. At the
/// top level it does not; inside the nest the function sees `/admin/...` (docs silent on which
/// path it gets; the axum user's expectation, as for `policy_fn`).
#[tokio::test(start_paused = true)]
async fn key_fn_inside_nest_sees_the_path_users_see() {
    let skip_admin =
        || SwrLayer::new().key_fn(|p| (!p.uri.path().starts_with("/api/admin/")).then(String::new));
    let top = Router::new()
        .route("/api/admin/users", get(counting_text(&Hits::default())))
        .layer(skip_admin());
    for _ in 0..2 {
        let r = app_send(&top, app_get("/api/admin/users")).await;
        assert!(
            statuses(&r).contains("fwd=bypass"),
            "top level: {}",
            statuses(&r)
        );
    }
    let nested = Router::new().nest(
        "/api",
        Router::new()
            .route("/admin/users", get(counting_text(&Hits::default())))
            .layer(skip_admin()),
    );
    for _ in 0..2 {
        let r = app_send(&nested, app_get("/api/admin/users")).await;
        assert!(
            statuses(&r).contains("fwd=bypass"),
            "nested: {}",
            statuses(&r)
        );
    }
}
