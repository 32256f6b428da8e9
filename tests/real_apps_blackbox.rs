//! Black-box tests of `SwrLayer` deployed the way real applications deploy it: axum routers
//! (router-level and per-route layers, nests, fallbacks, extractors, every common response
//! type, streams and event streams), tower middleware around and inside the layer, real
//! hyper HTTP/1.1 and HTTP/2 servers and clients on 127.0.0.1, slow, failing and panicking
//! handlers, graceful shutdown, and `examples/axum.rs` run as the README runs it.
//!
//! Written from the public API and the docs only (README, CHANGELOG, tests/README, examples,
//! rustdoc). In-process tests run on a paused clock; real-socket tests run on real time,
//! wait for conditions with generous timeouts and assert nothing about speed beyond "did not
//! hang". tower-http is not a dev-dependency: CORS, compression, set-header and auth
//! middleware are written with `axum::middleware::from_fn` / `map_response` as applications
//! without tower-http write them.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use common::{body, cache_status, header_value, info, patterned_bytes, BoxError, FedBody, Gate};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_swr::{CacheStatus, SwrLayer};

/// Longest a real-socket wait may take on a busy 2-core machine before the test calls it a hang.
const HANG: Duration = Duration::from_secs(60);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A counter of handler calls, shareable as axum `State`.
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

fn req(uri: &str) -> Request {
    Request::builder().uri(uri).body(Body::empty()).unwrap()
}

fn req_with(method: Method, uri: &str, headers: &[(&str, &str)]) -> Request {
    let mut builder = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::empty()).unwrap()
}

/// Sends `request` through `app` in process; returns status, headers, body, cache status.
async fn call(app: &Router, request: Request) -> (StatusCode, HeaderMap, Bytes, CacheStatus) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let cache = response
        .extensions()
        .get::<tower_swr::CacheInfo>()
        .map(|info| info.status)
        .expect("every answer through the layer carries CacheInfo");
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, bytes, cache)
}

async fn text(app: &Router, uri: &str) -> String {
    let (_, _, bytes, _) = call(app, req(uri)).await;
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn hv(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|value| value.to_str().unwrap().to_owned())
}

/// Lets detached work (background refreshes) run on the paused clock.
async fn settle() {
    common::settle().await;
    common::settle().await;
}

/// Serves `app` on 127.0.0.1 with graceful shutdown on `stop`; returns the address and the
/// server task.
async fn serve_until(
    app: Router,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.await;
            })
            .await
            .unwrap();
    });
    (addr, task)
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn h1_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn h2_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// One request over a real client: status, headers, body.
async fn fetch(
    client: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, HeaderMap, Bytes), BoxError> {
    let mut builder = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Full::new(Bytes::new()))?;
    let response = timeout(HANG, client.request(request)).await??;
    let (parts, incoming) = response.into_parts();
    let bytes = timeout(HANG, incoming.collect()).await??.to_bytes();
    Ok((parts.status, parts.headers, bytes))
}

/// Writes `raw` to a new connection and reads until the server closes it.
async fn raw_exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    timeout(HANG, stream.read_to_end(&mut out))
        .await
        .expect("the server closed the connection")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Polls `condition` every 20 ms until it holds (or panics after [`HANG`]).
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + HANG;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A body fed chunk by chunk by a spawned task, `pause` apart, as `Body::from_stream`.
fn slow_stream(chunks: Vec<Bytes>, pause: Duration) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        for chunk in chunks {
            tokio::time::sleep(pause).await;
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
    });
    Body::from_stream(Body::new(FedBody(rx)).into_data_stream())
}

// --- Routers: layers, nests, fallbacks, extractors -----------------------------------------

#[tokio::test(start_paused = true)]
async fn router_level_layer_caches_every_route_on_its_own() {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/a",
            get(|State(h): State<Hits>| async move { format!("a{}", h.bump()) }),
        )
        .route(
            "/b",
            get(|State(h): State<Hits>| async move { format!("b{}", h.bump()) }),
        )
        .with_state(hits.clone())
        .layer(SwrLayer::new());
    assert_eq!(text(&app, "/a").await, "a1");
    assert_eq!(text(&app, "/b").await, "b2");
    assert_eq!(text(&app, "/a").await, "a1");
    assert_eq!(text(&app, "/b").await, "b2");
    assert_eq!(hits.get(), 2);
    let (_, headers, _, status) = call(&app, req("/a")).await;
    assert_eq!(status, CacheStatus::Fresh);
    let cs = hv(&headers, "cache-status").unwrap();
    assert!(cs.starts_with("tower-swr; hit; ttl="), "{cs}");
    assert!(headers.contains_key(header::AGE));
}

#[tokio::test(start_paused = true)]
async fn route_layer_caches_only_the_routes_before_it() {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/cached",
            get(|State(h): State<Hits>| async move { format!("c{}", h.bump()) }),
        )
        .route_layer(SwrLayer::new())
        .route(
            "/live",
            get(|State(h): State<Hits>| async move { format!("l{}", h.bump()) }),
        )
        .with_state(hits.clone());
    assert_eq!(text(&app, "/cached").await, "c1");
    assert_eq!(text(&app, "/cached").await, "c1");
    let live = app.clone().oneshot(req("/live")).await.unwrap();
    assert!(live.headers().get("cache-status").is_none());
    assert_eq!(body(live).await.unwrap(), "l2");
    let live = app.clone().oneshot(req("/live")).await.unwrap();
    assert_eq!(body(live).await.unwrap(), "l3");
    // route_layer does not run for unmatched paths: the 404 is axum's own.
    let missing = app.clone().oneshot(req("/nothing")).await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert!(missing.headers().get("cache-status").is_none());
}

#[tokio::test(start_paused = true)]
async fn method_router_layer_caches_get_and_passes_post_through() {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/thing",
            get(|State(h): State<Hits>| async move { format!("get{}", h.bump()) })
                .post(|State(h): State<Hits>| async move { format!("post{}", h.bump()) })
                .layer(SwrLayer::new()),
        )
        .with_state(hits.clone());
    assert_eq!(text(&app, "/thing").await, "get1");
    assert_eq!(text(&app, "/thing").await, "get1");
    let (_, _, bytes, status) = call(&app, req_with(Method::POST, "/thing", &[])).await;
    assert_eq!(bytes, "post2");
    assert_eq!(status, CacheStatus::Bypass);
    // A successful POST invalidates the URI it was sent to.
    assert_eq!(text(&app, "/thing").await, "get3");
}

#[tokio::test(start_paused = true)]
async fn one_layer_in_two_nests_keeps_their_paths_apart() {
    let layer = SwrLayer::new();
    let cache = layer.handle();
    let hits = Hits::default();
    let v1 = Router::new()
        .route(
            "/items",
            get(|State(h): State<Hits>| async move { format!("v1-{}", h.bump()) }),
        )
        .layer(layer.clone());
    let v2 = Router::new()
        .route(
            "/items",
            get(|State(h): State<Hits>| async move { format!("v2-{}", h.bump()) }),
        )
        .layer(layer.clone());
    let app = Router::new()
        .nest("/v1", v1)
        .nest("/v2", v2)
        .with_state(hits.clone());
    assert_eq!(text(&app, "/v1/items").await, "v1-1");
    assert_eq!(text(&app, "/v2/items").await, "v2-2");
    assert_eq!(text(&app, "/v1/items").await, "v1-1");
    assert_eq!(text(&app, "/v2/items").await, "v2-2");
    // Purges name the path users see.
    assert_eq!(cache.purge("/v1/items"), 1);
    assert_eq!(text(&app, "/v1/items").await, "v1-3");
    assert_eq!(text(&app, "/v2/items").await, "v2-2");
}

#[tokio::test(start_paused = true)]
async fn fallback_404s_are_cached_per_path_like_any_404() {
    let hits = Hits::default();
    let app = Router::new()
        .route("/", get(|| async { "home" }))
        .fallback(|State(h): State<Hits>, uri: axum::http::Uri| async move {
            h.bump();
            (StatusCode::NOT_FOUND, format!("no {}", uri.path()))
        })
        .with_state(hits.clone())
        .layer(SwrLayer::new());
    let (status, _, bytes, _) = call(&app, req("/missing")).await;
    assert_eq!(
        (status, bytes),
        (StatusCode::NOT_FOUND, Bytes::from("no /missing"))
    );
    let (status, _, bytes, cache) = call(&app, req("/missing")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(bytes, "no /missing");
    assert_eq!(cache, CacheStatus::Fresh, "404 is heuristically cacheable");
    let (_, _, bytes, _) = call(&app, req("/other")).await;
    assert_eq!(bytes, "no /other");
    assert_eq!(hits.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn path_params_query_and_state_key_every_answer_apart() {
    #[derive(serde::Deserialize)]
    struct Search {
        q: String,
    }
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/items/{id}",
            get(|Path(id): Path<u32>, State(h): State<Hits>| async move {
                h.bump();
                format!("item {id}")
            }),
        )
        .route(
            "/search",
            get(
                |Query(s): Query<Search>, State(h): State<Hits>| async move {
                    h.bump();
                    format!("results for {}", s.q)
                },
            ),
        )
        .with_state(hits.clone())
        .layer(SwrLayer::new());
    for _ in 0..3 {
        assert_eq!(text(&app, "/items/1").await, "item 1");
        assert_eq!(text(&app, "/items/2").await, "item 2");
        assert_eq!(text(&app, "/search?q=rust").await, "results for rust");
        assert_eq!(text(&app, "/search?q=tower").await, "results for tower");
    }
    assert_eq!(hits.get(), 4);
    // A rejected extractor (400) is not a page to keep.
    let (status, _, _, _) = call(&app, req("/items/notanumber")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

// --- Response types --------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn json_html_and_string_keep_their_content_type_on_hits() {
    let app = Router::new()
        .route("/json", get(|| async { Json(serde_json_like()) }))
        .route("/html", get(|| async { Html("<h1>hi</h1>") }))
        .route("/text", get(|| async { String::from("plain") }))
        .layer(SwrLayer::new());
    for (uri, ctype, expected) in [
        ("/json", "application/json", "{\"a\":1}"),
        ("/html", "text/html; charset=utf-8", "<h1>hi</h1>"),
        ("/text", "text/plain; charset=utf-8", "plain"),
    ] {
        let (_, first, first_body, miss) = call(&app, req(uri)).await;
        let (_, again, again_body, hit) = call(&app, req(uri)).await;
        assert_eq!(miss, CacheStatus::Miss, "{uri}");
        assert_eq!(hit, CacheStatus::Fresh, "{uri}");
        assert_eq!(hv(&first, "content-type").as_deref(), Some(ctype), "{uri}");
        assert_eq!(hv(&again, "content-type").as_deref(), Some(ctype), "{uri}");
        assert_eq!(first_body, expected);
        assert_eq!(again_body, expected);
        assert_eq!(
            hv(&again, "content-length").as_deref(),
            Some(expected.len().to_string().as_str())
        );
    }
}

fn serde_json_like() -> std::collections::BTreeMap<&'static str, u32> {
    [("a", 1)].into_iter().collect()
}

#[tokio::test(start_paused = true)]
async fn bare_status_codes_204_kept_500_never() {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/empty",
            get(|State(h): State<Hits>| async move {
                h.bump();
                StatusCode::NO_CONTENT
            }),
        )
        .route(
            "/broken",
            get(|State(h): State<Hits>| async move {
                h.bump();
                StatusCode::INTERNAL_SERVER_ERROR
            }),
        )
        .with_state(hits.clone())
        .layer(SwrLayer::new().remember_failures(Duration::ZERO));
    for _ in 0..3 {
        let (status, _, bytes, _) = call(&app, req("/empty")).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert!(bytes.is_empty());
    }
    assert_eq!(hits.get(), 1);
    for _ in 0..3 {
        let (status, _, _, _) = call(&app, req("/broken")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(
        hits.get(),
        4,
        "a 500 without explicit freshness is never stored"
    );
}

#[tokio::test(start_paused = true)]
async fn status_headers_body_tuple_is_kept_whole() {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/tuple",
            get(|State(h): State<Hits>| async move {
                let n = h.bump();
                (
                    StatusCode::OK,
                    [
                        (header::CACHE_CONTROL, "max-age=30"),
                        (header::HeaderName::from_static("x-version"), "7"),
                    ],
                    format!("call {n}"),
                )
            }),
        )
        .with_state(hits.clone())
        .layer(SwrLayer::new());
    let _ = call(&app, req("/tuple")).await;
    tokio::time::advance(secs(5)).await;
    let (status, headers, bytes, cache) = call(&app, req("/tuple")).await;
    assert_eq!(cache, CacheStatus::Fresh);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bytes, "call 1");
    assert_eq!(hv(&headers, "x-version").as_deref(), Some("7"));
    assert_eq!(hv(&headers, "cache-control").as_deref(), Some("max-age=30"));
    assert_eq!(hv(&headers, "age").as_deref(), Some("5"));
    let cs = hv(&headers, "cache-status").unwrap();
    assert!(cs.contains("ttl=25"), "{cs}");
}

#[tokio::test(start_paused = true)]
async fn permanent_redirects_are_kept_temporary_ones_are_not() {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/old",
            get(|State(h): State<Hits>| async move {
                h.bump();
                Redirect::permanent("/new")
            }),
        )
        .route(
            "/later",
            get(|State(h): State<Hits>| async move {
                h.bump();
                Redirect::temporary("/elsewhere")
            }),
        )
        .with_state(hits.clone())
        .layer(SwrLayer::new());
    for _ in 0..2 {
        let (status, headers, _, _) = call(&app, req("/old")).await;
        assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
        assert_eq!(hv(&headers, "location").as_deref(), Some("/new"));
    }
    assert_eq!(hits.get(), 1, "308 is heuristically cacheable");
    for _ in 0..2 {
        let (status, headers, _, _) = call(&app, req("/later")).await;
        assert_eq!(status, StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(hv(&headers, "location").as_deref(), Some("/elsewhere"));
    }
    assert_eq!(hits.get(), 3, "307 without freshness is not stored");
}

#[tokio::test(start_paused = true)]
async fn streaming_body_from_stream_is_stored_whole() {
    let hits = Hits::default();
    let data = patterned_bytes(40_000);
    let chunks: Vec<Bytes> = (0..10)
        .map(|i| data.slice(i * 4000..(i + 1) * 4000))
        .collect();
    let app = Router::new()
        .route(
            "/stream",
            get(move |State(h): State<Hits>| {
                let chunks = chunks.clone();
                async move {
                    h.bump();
                    slow_stream(chunks, Duration::from_millis(10))
                }
            }),
        )
        .with_state(hits.clone())
        .layer(SwrLayer::new());
    let (_, _, first, miss) = call(&app, req("/stream")).await;
    assert_eq!(miss, CacheStatus::Miss);
    assert_eq!(first, data);
    settle().await;
    let (_, headers, again, hit) = call(&app, req("/stream")).await;
    assert_eq!(hit, CacheStatus::Fresh);
    assert_eq!(again, data);
    assert_eq!(hv(&headers, "content-length").as_deref(), Some("40000"));
    assert_eq!(hits.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn event_stream_streams_through_and_is_never_cached() {
    let hits = Hits::default();
    let feeds: Arc<Mutex<Vec<common::Feed>>> = Arc::default();
    let app = Router::new()
        .route(
            "/events",
            get({
                let feeds = feeds.clone();
                move |State(h): State<Hits>| {
                    let feeds = feeds.clone();
                    async move {
                        h.bump();
                        let (tx, rx) = tokio::sync::mpsc::channel(4);
                        feeds.lock().unwrap().push(tx);
                        (
                            [(header::CONTENT_TYPE, "text/event-stream")],
                            Body::new(FedBody(rx)),
                        )
                    }
                }
            }),
        )
        .with_state(hits.clone())
        .layer(SwrLayer::new());
    let response = app.clone().oneshot(req("/events")).await.unwrap();
    assert!(!info(&response).stored);
    let mut stream = response.into_body();
    let tx = feeds.lock().unwrap()[0].clone();
    tx.send(Ok(Bytes::from("data: one\n\n"))).await.unwrap();
    let frame = timeout(secs(5), stream.frame())
        .await
        .expect("the first event arrives while the stream is open")
        .unwrap()
        .unwrap();
    assert_eq!(frame.into_data().unwrap(), "data: one\n\n");
    tx.send(Ok(Bytes::from("data: two\n\n"))).await.unwrap();
    let frame = timeout(secs(5), stream.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(frame.into_data().unwrap(), "data: two\n\n");
    // A second subscriber gets its own stream from the handler.
    let second = app.clone().oneshot(req("/events")).await.unwrap();
    assert_ne!(info(&second).status, CacheStatus::Fresh);
    assert_eq!(hits.get(), 2);
}

// --- Composition with middleware -------------------------------------------------------------

async fn add_outer_header(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    response
        .headers_mut()
        .insert("x-outer", HeaderValue::from_static("yes"));
    response
}

async fn add_inner_header(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    response
        .headers_mut()
        .insert("x-inner", HeaderValue::from_static("stored"));
    response
}

#[tokio::test(start_paused = true)]
async fn from_fn_headers_inside_are_stored_outside_are_added_to_every_answer() {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/page",
            get(|State(h): State<Hits>| async move { format!("p{}", h.bump()) }),
        )
        .with_state(hits.clone())
        .layer(
            ServiceBuilder::new()
                .layer(middleware::from_fn(add_outer_header))
                .layer(SwrLayer::new())
                .layer(middleware::from_fn(add_inner_header)),
        );
    for expected in [CacheStatus::Miss, CacheStatus::Fresh, CacheStatus::Fresh] {
        let response = app.clone().oneshot(req("/page")).await.unwrap();
        assert_eq!(header_value(&response, "x-outer").as_deref(), Some("yes"));
        assert_eq!(
            header_value(&response, "x-inner").as_deref(),
            Some("stored")
        );
        assert_eq!(info(&response).status, expected);
        assert_eq!(body(response).await.unwrap(), "p1");
    }
    assert_eq!(hits.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn map_response_outside_sets_a_header_on_hits_too() {
    let app = Router::new()
        .route("/x", get(|| async { "x" }))
        .layer(SwrLayer::new())
        .layer(middleware::map_response(
            |mut response: Response| async move {
                response.headers_mut().insert(
                    header::STRICT_TRANSPORT_SECURITY,
                    HeaderValue::from_static("max-age=63072000"),
                );
                response
            },
        ));
    let _ = app.clone().oneshot(req("/x")).await.unwrap();
    let hit = app.clone().oneshot(req("/x")).await.unwrap();
    assert!(cache_status(&hit).contains("hit"));
    assert_eq!(
        header_value(&hit, "strict-transport-security").as_deref(),
        Some("max-age=63072000")
    );
}

async fn require_token(request: Request, next: Next) -> Response {
    match request.headers().get("x-token") {
        Some(token) if token == "secret" => next.run(request).await,
        _ => StatusCode::UNAUTHORIZED.into_response(),
    }
}

#[tokio::test(start_paused = true)]
async fn auth_middleware_outside_the_cache_guards_hits() {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/report",
            get(|State(h): State<Hits>| async move { format!("report {}", h.bump()) }),
        )
        .with_state(hits.clone())
        .layer(SwrLayer::new())
        .layer(middleware::from_fn(require_token));
    let ok = [("x-token", "secret")];
    let (status, _, bytes, _) = call(&app, req_with(Method::GET, "/report", &ok)).await;
    assert_eq!((status, bytes), (StatusCode::OK, Bytes::from("report 1")));
    // Without the token the cached page is not handed out.
    let denied = app.clone().oneshot(req("/report")).await.unwrap();
    assert_eq!(denied.status(), StatusCode::UNAUTHORIZED);
    let (_, _, bytes, cache) = call(&app, req_with(Method::GET, "/report", &ok)).await;
    assert_eq!(
        (bytes, cache),
        (Bytes::from("report 1"), CacheStatus::Fresh)
    );
    assert_eq!(hits.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn per_user_answers_behind_authorization_never_cross_users() {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/me",
            get(|State(h): State<Hits>, headers: HeaderMap| async move {
                h.bump();
                let user = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("anonymous")
                    .to_owned();
                format!("hello {user}")
            }),
        )
        .with_state(hits.clone())
        .layer(SwrLayer::new());
    for _ in 0..2 {
        for user in ["Bearer alice", "Bearer bob"] {
            let (_, _, bytes, _) = call(
                &app,
                req_with(Method::GET, "/me", &[("authorization", user)]),
            )
            .await;
            assert_eq!(bytes, format!("hello {user}"));
        }
    }
    let (_, _, bytes, _) = call(&app, req("/me")).await;
    assert_eq!(bytes, "hello anonymous");
    let (_, _, bytes, _) = call(&app, req("/me")).await;
    assert_eq!(bytes, "hello anonymous");
    assert_eq!(hits.get(), 5, "4 authorized answers, 1 anonymous stored");
}

/// A stand-in for a compression middleware inside the cache: "encodes" the body according to
/// `Accept-Encoding` and says `Vary: accept-encoding`, as tower-http's CompressionLayer does.
async fn fake_compression(request: Request, next: Next) -> Response {
    let gzip = request
        .headers()
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    let response = next.run(request).await;
    let (mut parts, inner) = response.into_parts();
    let bytes = inner.collect().await.unwrap().to_bytes();
    parts
        .headers
        .insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    parts.headers.remove(header::CONTENT_LENGTH);
    if gzip {
        parts
            .headers
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let mut encoded = b"GZ:".to_vec();
        encoded.extend_from_slice(&bytes);
        Response::from_parts(parts, Body::from(encoded))
    } else {
        Response::from_parts(parts, Body::from(bytes))
    }
}

#[tokio::test(start_paused = true)]
async fn compression_inside_the_cache_keeps_encodings_apart() {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/asset",
            get(|State(h): State<Hits>| async move {
                h.bump();
                "body"
            }),
        )
        .with_state(hits.clone())
        .layer(
            ServiceBuilder::new()
                .layer(SwrLayer::new())
                .layer(middleware::from_fn(fake_compression)),
        );
    for _ in 0..3 {
        for (accept, expected, encoding) in [
            ("gzip, deflate, br", "GZ:body", Some("gzip")),
            ("identity", "body", None),
            ("gzip", "GZ:body", Some("gzip")),
        ] {
            let (_, headers, bytes, _) = call(
                &app,
                req_with(Method::GET, "/asset", &[("accept-encoding", accept)]),
            )
            .await;
            assert_eq!(bytes, expected, "{accept}");
            assert_eq!(hv(&headers, "content-encoding").as_deref(), encoding);
        }
        let (_, headers, bytes, _) = call(&app, req("/asset")).await;
        assert_eq!(bytes, "body");
        assert!(headers.get(header::CONTENT_ENCODING).is_none());
    }
    // One origin call per distinct Accept-Encoding value (the key is the raw header value).
    assert_eq!(hits.get(), 4);
}

#[tokio::test(start_paused = true)]
async fn cors_preflight_passes_through_and_leaves_the_entry() {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/api",
            get(|State(h): State<Hits>| async move { format!("api {}", h.bump()) }).options(
                || async {
                    (
                        StatusCode::NO_CONTENT,
                        [
                            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
                            (header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST"),
                        ],
                    )
                },
            ),
        )
        .with_state(hits.clone())
        .layer(SwrLayer::new());
    assert_eq!(text(&app, "/api").await, "api 1");
    for _ in 0..2 {
        let preflight = req_with(
            Method::OPTIONS,
            "/api",
            &[
                ("origin", "https://example.com"),
                ("access-control-request-method", "GET"),
            ],
        );
        let (status, headers, _, cache) = call(&app, preflight).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_eq!(cache, CacheStatus::Bypass);
        assert_eq!(
            hv(&headers, "access-control-allow-origin").as_deref(),
            Some("*")
        );
        assert!(hv(&headers, "cache-status").unwrap().contains("fwd=method"));
    }
    let (_, _, bytes, cache) = call(&app, req("/api")).await;
    assert_eq!((bytes, cache), (Bytes::from("api 1"), CacheStatus::Fresh));
}

#[tokio::test(start_paused = true)]
async fn a_saturated_concurrency_limit_inside_does_not_delay_hits() {
    let gate = Gate::new();
    let app = Router::new()
        .route(
            "/items/{id}",
            get({
                let gate = gate.clone();
                move |Path(id): Path<u32>| {
                    let gate = gate.clone();
                    async move {
                        if id == 2 {
                            gate.wait().await;
                        }
                        format!("item {id}")
                    }
                }
            }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(SwrLayer::new())
                .layer(tower::limit::ConcurrencyLimitLayer::new(1)),
        );
    assert_eq!(text(&app, "/items/1").await, "item 1");
    // Item 2's miss holds the only permit.
    let slow = tokio::spawn({
        let app = app.clone();
        async move { text(&app, "/items/2").await }
    });
    settle().await;
    let (_, _, bytes, cache) = timeout(secs(5), call(&app, req("/items/1")))
        .await
        .expect("a hit does not wait for the origin's readiness");
    assert_eq!((bytes, cache), (Bytes::from("item 1"), CacheStatus::Fresh));
    gate.open();
    assert_eq!(slow.await.unwrap(), "item 2");
}

async fn timeout_to_504(error: BoxError) -> (StatusCode, String) {
    (StatusCode::GATEWAY_TIMEOUT, format!("timed out: {error}"))
}

#[tokio::test(start_paused = true)]
async fn timeout_inside_the_cache_with_handle_error_outside_serves_stale_in_an_outage() {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/quote",
            get(|State(h): State<Hits>| async move {
                let n = h.bump();
                if n > 1 {
                    tokio::time::sleep(secs(3600)).await;
                }
                (
                    [(header::CACHE_CONTROL, "max-age=10, stale-if-error=600")],
                    format!("quote {n}"),
                )
            }),
        )
        .with_state(hits.clone())
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(timeout_to_504))
                .layer(SwrLayer::new())
                .layer(tower::timeout::TimeoutLayer::new(secs(2))),
        );
    assert_eq!(text(&app, "/quote").await, "quote 1");
    // Past max-age and the default 120 s stale-while-revalidate window, inside stale-if-error.
    tokio::time::advance(secs(200)).await;
    let (status, headers, bytes, cache) = call(&app, req("/quote")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bytes, "quote 1");
    assert_eq!(cache, CacheStatus::StaleIfError);
    assert!(hv(&headers, "cache-status").unwrap().contains("fwd=stale"));
    // A cold key with the origin hanging gets HandleErrorLayer's 504, not a hang.
    let cold = app.clone().oneshot(req("/quote?cold")).await.unwrap();
    assert_eq!(cold.status(), StatusCode::GATEWAY_TIMEOUT);
}

#[tokio::test(start_paused = true)]
async fn buffer_outside_and_inside_the_layer_serve_and_refresh() {
    let hits = Hits::default();
    let router = Router::new()
        .route(
            "/b",
            get(|State(h): State<Hits>| async move {
                let n = h.bump();
                (
                    [(
                        header::CACHE_CONTROL,
                        "max-age=10, stale-while-revalidate=60",
                    )],
                    format!("b{n}"),
                )
            }),
        )
        .with_state(hits.clone());
    // Buffer inside: the detached refresh runs on a clone of the Buffer.
    let inside = ServiceBuilder::new()
        .layer(SwrLayer::new())
        .buffer(8)
        .service(router.clone());
    // Buffer outside, in front of the whole stack.
    let outside = ServiceBuilder::new()
        .buffer(8)
        .layer(SwrLayer::new())
        .service(router);
    async fn get_text<S>(service: &S, uri: &str) -> String
    where
        S: Service<Request, Error = BoxError> + Clone,
        S::Response: IntoResponse,
    {
        let response = service.clone().oneshot(req(uri)).await.unwrap();
        let bytes = response
            .into_response()
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }
    assert_eq!(get_text(&inside, "/b").await, "b1");
    assert_eq!(get_text(&outside, "/b").await, "b2");
    assert_eq!(get_text(&inside, "/b").await, "b1");
    assert_eq!(get_text(&outside, "/b").await, "b2");
    tokio::time::advance(secs(15)).await;
    assert_eq!(get_text(&inside, "/b").await, "b1", "stale at once");
    settle().await;
    assert_eq!(
        get_text(&inside, "/b").await,
        "b3",
        "refreshed through Buffer"
    );
    assert_eq!(get_text(&outside, "/b").await, "b2");
    settle().await;
    assert_eq!(get_text(&outside, "/b").await, "b4");
    assert_eq!(hits.get(), 4);
}

// --- Outages: slow, failing and panicking handlers --------------------------------------------

#[derive(Clone, Default)]
struct Outage {
    calls: Hits,
    mode: Arc<AtomicUsize>, // 0 ok, 1 503, 2 500, 3 panic
}

async fn flaky(State(o): State<Outage>) -> Response {
    let n = o.calls.bump();
    match o.mode.load(Ordering::SeqCst) {
        0 => (
            [(
                header::CACHE_CONTROL,
                "max-age=10, stale-while-revalidate=20",
            )],
            format!("good {n}"),
        )
            .into_response(),
        1 => (StatusCode::SERVICE_UNAVAILABLE, "down").into_response(),
        2 => (StatusCode::INTERNAL_SERVER_ERROR, "oops").into_response(),
        _ => panic!("handler panicked (call {n})"),
    }
}

fn flaky_app(outage: &Outage) -> Router {
    Router::new()
        .route("/flaky", get(flaky))
        .with_state(outage.clone())
        .layer(SwrLayer::new())
}

#[tokio::test(start_paused = true)]
async fn an_outage_of_503s_keeps_serving_the_stale_page_marked_so() {
    let outage = Outage::default();
    let app = flaky_app(&outage);
    assert_eq!(text(&app, "/flaky").await, "good 1");
    outage.mode.store(1, Ordering::SeqCst);
    // Inside stale-while-revalidate: stale at once; the refresh fails and keeps the entry.
    tokio::time::advance(secs(15)).await;
    let (_, _, bytes, cache) = call(&app, req("/flaky")).await;
    assert_eq!((bytes, cache), (Bytes::from("good 1"), CacheStatus::Stale));
    settle().await;
    // Past the stale-while-revalidate window (10 + 20 s), inside the default 300 s stale-if-error.
    tokio::time::advance(secs(30)).await;
    for _ in 0..5 {
        let (status, headers, bytes, _) = call(&app, req("/flaky")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(bytes, "good 1");
        let cs = hv(&headers, "cache-status").unwrap();
        assert!(
            cs.contains("fwd=stale") && cs.contains("fwd-status=503"),
            "{cs}"
        );
        tokio::time::advance(secs(5)).await;
    }
    // The origin recovers: the next call stores the new page.
    outage.mode.store(0, Ordering::SeqCst);
    tokio::time::advance(secs(65)).await;
    let mut seen = String::new();
    for _ in 0..3 {
        seen = text(&app, "/flaky").await;
        settle().await;
    }
    assert!(seen.starts_with("good ") && seen != "good 1", "{seen}");
}

#[tokio::test(start_paused = true)]
async fn a_refresh_that_panics_keeps_the_entry_and_the_service_up() {
    let outage = Outage::default();
    let layer = SwrLayer::new();
    let cache = layer.handle();
    let app = Router::new()
        .route("/flaky", get(flaky))
        .with_state(outage.clone())
        .layer(layer);
    assert_eq!(text(&app, "/flaky").await, "good 1");
    outage.mode.store(3, Ordering::SeqCst);
    tokio::time::advance(secs(15)).await;
    assert_eq!(text(&app, "/flaky").await, "good 1");
    settle().await;
    let stats = cache.stats();
    assert_eq!(stats.refreshes_panicked, 1, "{stats:?}");
    // Still answered, stale, while the backoff runs.
    assert_eq!(text(&app, "/flaky").await, "good 1");
    outage.mode.store(0, Ordering::SeqCst);
    tokio::time::advance(secs(3)).await;
    let _ = text(&app, "/flaky").await;
    settle().await;
    let now = text(&app, "/flaky").await;
    assert!(now.starts_with("good ") && now != "good 1", "{now}");
}

#[tokio::test(start_paused = true)]
async fn a_foreground_panic_is_stood_in_for_by_the_stale_entry() {
    let outage = Outage::default();
    let app = flaky_app(&outage);
    assert_eq!(text(&app, "/flaky").await, "good 1");
    outage.mode.store(3, Ordering::SeqCst);
    // Past stale-while-revalidate, inside stale-if-error: the request itself asks the origin.
    tokio::time::advance(secs(60)).await;
    let answer = tokio::spawn({
        let app = app.clone();
        async move { call(&app, req("/flaky")).await }
    })
    .await;
    let (status, _, bytes, cache) = answer.expect("the request was answered, not a panic");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bytes, "good 1");
    assert_eq!(cache, CacheStatus::StaleIfError);
}

#[tokio::test(start_paused = true)]
async fn a_cold_500_passes_unchanged_and_is_remembered_briefly() {
    let outage = Outage::default();
    outage.mode.store(2, Ordering::SeqCst);
    let app = flaky_app(&outage);
    let (status, _, bytes, _) = call(&app, req("/flaky")).await;
    assert_eq!(
        (status, bytes),
        (StatusCode::INTERNAL_SERVER_ERROR, Bytes::from("oops"))
    );
    let (status, headers, _, cache) = call(&app, req("/flaky")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(cache, CacheStatus::FailureHit);
    assert!(hv(&headers, "cache-status")
        .unwrap()
        .contains("detail=failure"));
    assert_eq!(outage.calls.get(), 1);
    tokio::time::advance(secs(2)).await;
    outage.mode.store(0, Ordering::SeqCst);
    assert_eq!(text(&app, "/flaky").await, "good 2");
}

// --- Graceful shutdown -------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn handle_shutdown_waits_for_a_running_refresh_then_serves_stale_without_refreshing() {
    let gate = Gate::new();
    let hits = Hits::default();
    let layer = SwrLayer::new();
    let cache = layer.handle();
    let app = Router::new()
        .route(
            "/r",
            get({
                let gate = gate.clone();
                move |State(h): State<Hits>| {
                    let gate = gate.clone();
                    async move {
                        let n = h.bump();
                        if n == 2 {
                            gate.wait().await;
                        }
                        (
                            [(
                                header::CACHE_CONTROL,
                                "max-age=10, stale-while-revalidate=600",
                            )],
                            format!("r{n}"),
                        )
                    }
                }
            }),
        )
        .with_state(hits.clone())
        .layer(layer);
    assert_eq!(text(&app, "/r").await, "r1");
    tokio::time::advance(secs(20)).await;
    assert_eq!(text(&app, "/r").await, "r1");
    settle().await;
    assert_eq!(cache.stats().refreshes_running, 1);
    assert!(
        !cache.shutdown(secs(1)).await,
        "the gated refresh is still running"
    );
    gate.open();
    assert!(cache.shutdown(secs(10)).await);
    assert_eq!(text(&app, "/r").await, "r2");
    // A cold key is still served after the cache's shutdown.
    assert_eq!(text(&app, "/r?cold").await, "r3");
    tokio::time::advance(secs(20)).await;
    // After shutdown: still answered (stale), no new refresh.
    assert_eq!(text(&app, "/r").await, "r2");
    settle().await;
    assert_eq!(hits.get(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_graceful_shutdown_then_cache_shutdown() {
    let hits = Hits::default();
    let layer = SwrLayer::new();
    let cache = layer.handle();
    let app = Router::new()
        .route(
            "/s",
            get(|State(h): State<Hits>| async move {
                let n = h.bump();
                tokio::time::sleep(Duration::from_millis(300)).await;
                format!("s{n}")
            }),
        )
        .with_state(hits.clone())
        .layer(layer);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let (addr, server) = serve_until(app, stop_rx).await;
    let client = h1_client();
    let url = format!("http://{addr}/s");
    let (_, _, first) = fetch(&client, Method::GET, &url, &[]).await.unwrap();
    assert_eq!(first, "s1");
    // A request in flight when shutdown starts still completes.
    let in_flight = tokio::spawn({
        let client = client.clone();
        let url = format!("http://{addr}/s?other");
        async move { fetch(&client, Method::GET, &url, &[]).await }
    });
    wait_until("the second request reached the handler", || hits.get() == 2).await;
    stop_tx.send(()).unwrap();
    let (status, _, bytes) = in_flight.await.unwrap().unwrap();
    assert_eq!((status, bytes), (StatusCode::OK, Bytes::from("s2")));
    drop(client);
    timeout(HANG, server)
        .await
        .expect("the server stopped")
        .unwrap();
    assert!(timeout(HANG, cache.shutdown(secs(10))).await.unwrap());
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
}

// --- A real hyper HTTP/1.1 server ---------------------------------------------------------------

fn counted_app(hits: &Hits, delay: Duration) -> Router {
    Router::new()
        .route(
            "/page",
            get(move |State(h): State<Hits>| async move {
                let n = h.bump();
                tokio::time::sleep(delay).await;
                format!("page {n}")
            }),
        )
        .with_state(hits.clone())
        .layer(SwrLayer::new())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_and_pipelined_requests_on_one_connection() {
    let hits = Hits::default();
    let addr = common::serve(counted_app(&hits, Duration::ZERO)).await;
    let pipelined = "GET /page HTTP/1.1\r\nHost: localhost\r\n\r\n\
                     GET /page HTTP/1.1\r\nHost: localhost\r\n\r\n\
                     GET /page?x=1 HTTP/1.1\r\nHost: localhost\r\n\r\n\
                     GET /page HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let out = raw_exchange(addr, pipelined.as_bytes()).await;
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 4, "{out}");
    assert_eq!(out.matches("page 1").count(), 3, "{out}");
    assert_eq!(out.matches("page 2").count(), 1, "{out}");
    let hit_lines = out
        .lines()
        .filter(|l| {
            l.to_ascii_lowercase()
                .starts_with("cache-status: tower-swr; hit")
        })
        .count();
    assert_eq!(hit_lines, 2, "{out}");
    assert_eq!(hits.get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_and_http10_clients_get_whole_answers() {
    let hits = Hits::default();
    let data = patterned_bytes(3000);
    let chunks: Vec<Bytes> = (0..3)
        .map(|i| data.slice(i * 1000..(i + 1) * 1000))
        .collect();
    let app = Router::new()
        .route(
            "/stream",
            get(move |State(h): State<Hits>| {
                let chunks = chunks.clone();
                async move {
                    h.bump();
                    slow_stream(chunks, Duration::from_millis(20))
                }
            }),
        )
        .with_state(hits.clone())
        .layer(SwrLayer::new());
    let addr = common::serve(app).await;
    for raw in [
        "GET /stream HTTP/1.0\r\nHost: a\r\n\r\n",
        "GET /stream HTTP/1.0\r\nHost: a\r\n\r\n",
        "GET /stream HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    ] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(raw.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        timeout(HANG, stream.read_to_end(&mut out))
            .await
            .expect("closed after the answer")
            .unwrap();
        let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&out[..split]).to_ascii_lowercase();
        assert!(
            head.starts_with("http/1.") && head.contains(" 200 "),
            "{head}"
        );
        let payload = &out[split..];
        if head.contains("transfer-encoding: chunked") {
            assert!(
                !raw.contains("HTTP/1.0"),
                "no chunked framing to an HTTP/1.0 client"
            );
            assert!(payload.len() > data.len());
        } else {
            assert_eq!(payload, &data[..], "{head}");
        }
    }
    assert_eq!(hits.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_over_the_wire_from_the_get_entry_and_a_head_miss_is_not_stored() {
    let hits = Hits::default();
    let app = counted_app(&hits, Duration::ZERO);
    let addr = common::serve(app).await;
    let client = h1_client();
    // A HEAD miss goes to the handler as HEAD and stores nothing.
    let (status, headers, bytes) =
        fetch(&client, Method::HEAD, &format!("http://{addr}/page"), &[])
            .await
            .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(bytes.is_empty());
    assert!(!hv(&headers, "cache-status").unwrap().contains("stored"));
    let url = format!("http://{addr}/page");
    let (_, _, get_body) = fetch(&client, Method::GET, &url, &[]).await.unwrap();
    assert_eq!(get_body, "page 2");
    let (status, headers, bytes) = fetch(&client, Method::HEAD, &url, &[]).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(bytes.is_empty());
    assert!(hv(&headers, "cache-status").unwrap().contains("hit"));
    assert_eq!(hv(&headers, "content-length").as_deref(), Some("6"));
    assert_eq!(hits.get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_response_stops_nothing_for_the_others() {
    let hits = Hits::default();
    let data = patterned_bytes(20 * 1024);
    let chunks: Vec<Bytes> = (0..20)
        .map(|i| data.slice(i * 1024..(i + 1) * 1024))
        .collect();
    let app = Router::new()
        .route(
            "/big",
            get(move |State(h): State<Hits>| {
                let chunks = chunks.clone();
                async move {
                    h.bump();
                    slow_stream(chunks, Duration::from_millis(50))
                }
            }),
        )
        .with_state(hits.clone())
        .layer(SwrLayer::new());
    let addr = common::serve(app).await;
    // Client A reads the head and some body, then hangs up.
    let mut a = TcpStream::connect(addr).await.unwrap();
    // The same Host as the hyper client sends: the key has the host in it.
    a.write_all(format!("GET /big HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 512];
    let n = timeout(HANG, a.read(&mut buf)).await.unwrap().unwrap();
    assert!(n > 0);
    // Client B joins the same fill, then A leaves.
    let client = h1_client();
    let b = tokio::spawn({
        let client = client.clone();
        let url = format!("http://{addr}/big");
        async move { fetch(&client, Method::GET, &url, &[]).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(a);
    let (status, _, b_body) = b.await.unwrap().unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(b_body, data, "B got the whole body");
    // The fill was stored whole: C is a hit.
    let url = format!("http://{addr}/big");
    let mut c = None;
    for _ in 0..100 {
        let (_, headers, bytes) = fetch(&client, Method::GET, &url, &[]).await.unwrap();
        assert_eq!(bytes, data);
        if hv(&headers, "cache-status").unwrap().contains("hit") {
            c = Some(bytes);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        c.is_some(),
        "a later client is answered from the stored fill"
    );
    assert_eq!(hits.get(), 1, "one origin call for A, B and C");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_on_one_cold_key_make_one_origin_call() {
    let hits = Hits::default();
    let addr = common::serve(counted_app(&hits, Duration::from_millis(1500))).await;
    let client = h1_client();
    let url = format!("http://{addr}/page");
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            fetch(&client, Method::GET, &url, &[]).await
        }));
    }
    for task in tasks {
        let (status, _, bytes) = task.await.unwrap().unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(bytes, "page 1");
    }
    assert_eq!(hits.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_on_an_expired_entry_get_it_stale_and_one_refresh_runs() {
    let hits = Hits::default();
    let gate = Gate::new();
    let app = Router::new()
        .route(
            "/hot",
            get({
                let gate = gate.clone();
                move |State(h): State<Hits>| {
                    let gate = gate.clone();
                    async move {
                        let n = h.bump();
                        if n > 1 {
                            gate.wait().await;
                        }
                        (
                            [(
                                header::CACHE_CONTROL,
                                "max-age=1, stale-while-revalidate=600",
                            )],
                            format!("hot {n}"),
                        )
                    }
                }
            }),
        )
        .with_state(hits.clone())
        .layer(SwrLayer::new());
    let addr = common::serve(app).await;
    let client = h1_client();
    let url = format!("http://{addr}/hot");
    let (_, _, first) = fetch(&client, Method::GET, &url, &[]).await.unwrap();
    assert_eq!(first, "hot 1");
    tokio::time::sleep(Duration::from_millis(2500)).await; // past max-age=1
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            fetch(&client, Method::GET, &url, &[]).await
        }));
    }
    for task in tasks {
        let (status, headers, bytes) = task.await.unwrap().unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            bytes, "hot 1",
            "answered stale at once while the refresh waits"
        );
        assert!(hv(&headers, "cache-status").unwrap().contains("ttl=-"));
    }
    assert_eq!(hits.get(), 2, "one refresh for 200 stale answers");
    gate.open();
    let mut latest = Bytes::new();
    for _ in 0..200 {
        latest = fetch(&client, Method::GET, &url, &[]).await.unwrap().2;
        if latest == "hot 2" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(latest, "hot 2");
    assert_eq!(hits.get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_with_absolute_uris_shares_entries_with_http1() {
    let hits = Hits::default();
    let addr = common::serve(counted_app(&hits, Duration::ZERO)).await;
    let h2 = h2_client();
    let url = format!("http://{addr}/page");
    let (status, _, bytes) = fetch(&h2, Method::GET, &url, &[]).await.unwrap();
    assert_eq!((status, bytes), (StatusCode::OK, Bytes::from("page 1")));
    let (_, headers, bytes) = fetch(&h2, Method::GET, &url, &[]).await.unwrap();
    assert_eq!(bytes, "page 1");
    assert!(hv(&headers, "cache-status").unwrap().contains("hit"));
    // HTTP/1.1 with the same Host is the same key.
    let h1 = h1_client();
    let (_, headers, bytes) = fetch(&h1, Method::GET, &url, &[]).await.unwrap();
    assert_eq!(bytes, "page 1");
    assert!(hv(&headers, "cache-status").unwrap().contains("hit"));
    // Many streams on one HTTP/2 connection at once.
    let mut tasks = Vec::new();
    for i in 0..50 {
        let (h2, url) = (h2.clone(), format!("http://{addr}/page?i={}", i % 5));
        tasks.push(tokio::spawn(async move {
            fetch(&h2, Method::GET, &url, &[]).await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().0, StatusCode::OK);
    }
    assert_eq!(hits.get(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_over_the_wire_leaves_the_server_serving() {
    let calls = Hits::default();
    let app = Router::new()
        .route(
            "/boom",
            get(|State(h): State<Hits>| async move {
                let n = h.bump();
                tokio::time::sleep(Duration::from_millis(300)).await;
                if n == 1 {
                    panic!("first call panics");
                }
                format!("fine {n}")
            }),
        )
        .route("/ok", get(|| async { "ok" }))
        .with_state(calls.clone())
        .layer(SwrLayer::new());
    let addr = common::serve(app).await;
    let client = h1_client();
    let url = format!("http://{addr}/boom");
    let first = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move { fetch(&client, Method::GET, &url, &[]).await }
    });
    wait_until("the first call started", || calls.get() == 1).await;
    // CHANGELOG (engine as the one path): the requests that waited for a panicking origin
    // call get the layer's 502 (`detail=origin-error`) from that one call.
    let (status, headers, _) = fetch(&client, Method::GET, &url, &[]).await.unwrap();
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let cs = hv(&headers, "cache-status").unwrap();
    assert!(cs.contains("detail=origin-error"), "{cs}");
    assert_eq!(calls.get(), 1);
    // The leader's own client gets an error or an answer, never a hang.
    let _ = timeout(HANG, first)
        .await
        .expect("the first client is not left hanging");
    // Once the failure is no longer remembered (1 s), the origin is asked again.
    let mut answer = Bytes::new();
    for _ in 0..200 {
        let (status, _, bytes) = fetch(&client, Method::GET, &url, &[]).await.unwrap();
        if status == StatusCode::OK {
            answer = bytes;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answer, "fine 2");
    let (_, _, bytes) = fetch(&client, Method::GET, &format!("http://{addr}/ok"), &[])
        .await
        .unwrap();
    assert_eq!(bytes, "ok");
}

// --- examples/axum.rs as the README runs it --------------------------------------------------

/// The example's binary next to this test's (`cargo build --example axum` puts it in
/// `target/debug/examples/`); `None` when it is not built.
fn example_binary() -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let debug = exe.parent()?.parent()?;
    let path = debug.join("examples").join("axum");
    path.exists().then_some(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_axum_shows_what_the_readme_says() {
    let Some(binary) = example_binary() else {
        eprintln!("skipped: build it first with `cargo build --example axum`");
        return;
    };
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut child = tokio::process::Command::new(binary)
        .arg("--listen")
        .arg(addr.to_string())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut stdout = child.stdout.take().unwrap();
    let reader = tokio::spawn({
        let lines = lines.clone();
        async move {
            let mut all = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                all.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&all).into_owned();
                *lines.lock().unwrap() = text.lines().map(str::to_owned).collect();
            }
        }
    });
    wait_until("the example listens", || {
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with("listening on http://"))
    })
    .await;
    let client = h1_client();
    let base = format!("http://{addr}");
    let (status, headers, first) = fetch(&client, Method::GET, &format!("{base}/prices"), &[])
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        hv(&headers, "cache-status").as_deref(),
        Some("tower-swr; fwd=uri-miss; stored")
    );
    assert_eq!(hv(&headers, "x-cache").as_deref(), Some("MISS"));
    let (_, headers, again) = fetch(&client, Method::GET, &format!("{base}/prices"), &[])
        .await
        .unwrap();
    assert_eq!(again, first);
    let cs = hv(&headers, "cache-status").unwrap();
    assert!(cs.starts_with("tower-swr; hit; ttl="), "{cs}");
    assert_eq!(hv(&headers, "x-cache").as_deref(), Some("HIT"));
    assert!(headers.contains_key(header::AGE));
    // /items/{id}: the defaults apply.
    let (_, _, item) = fetch(&client, Method::GET, &format!("{base}/items/7"), &[])
        .await
        .unwrap();
    assert_eq!(item, "item 7\n");
    // /stats as JSON.
    let (status, _, stats) = fetch(&client, Method::GET, &format!("{base}/stats"), &[])
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let stats = String::from_utf8(stats.to_vec()).unwrap();
    assert!(stats.contains("\"fresh_hits\":1"), "{stats}");
    assert!(stats.contains("\"misses\":2"), "{stats}");
    // /metrics in Prometheus text.
    let (_, _, metrics) = fetch(&client, Method::GET, &format!("{base}/metrics"), &[])
        .await
        .unwrap();
    let metrics = String::from_utf8(metrics.to_vec()).unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("swr_requests_total") && l.contains("status=\"hit\"")),
        "{metrics}"
    );
    // The admin purge route: the next request is a miss again.
    let (status, _, purged) = fetch(
        &client,
        Method::POST,
        &format!("{base}/admin/purge?path=/prices"),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(purged, "purged 1 entries for /prices\n");
    let (_, headers, after) = fetch(&client, Method::GET, &format!("{base}/prices"), &[])
        .await
        .unwrap();
    assert_ne!(after, first, "a new origin call after the purge");
    assert!(hv(&headers, "cache-status")
        .unwrap()
        .contains("fwd=uri-miss"));
    // Soft purge: answered at once from the stale entry while it refreshes.
    let (_, _, soft) = fetch(
        &client,
        Method::POST,
        &format!("{base}/admin/purge?path=/prices&soft=1"),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(soft, "purged 1 entries for /prices\n");
    let (_, headers, stale) = fetch(&client, Method::GET, &format!("{base}/prices"), &[])
        .await
        .unwrap();
    assert_eq!(stale, after);
    assert_eq!(hv(&headers, "x-cache").as_deref(), Some("STALE"));
    drop(client);
    // Ctrl-C: graceful shutdown, then the cache's.
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let exit = timeout(HANG, child.wait())
        .await
        .expect("the example exits on Ctrl-C")
        .unwrap();
    let _ = timeout(HANG, reader).await;
    assert!(exit.success(), "{exit:?}");
    let out = lines.lock().unwrap().join("\n");
    assert!(
        out.contains("shut down; background refreshes finished: true"),
        "{out}"
    );
}

// --- More deployment shapes ------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn compression_outside_the_cache_encodes_every_answer_from_one_entry() {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/asset",
            get(|State(h): State<Hits>| async move {
                h.bump();
                "body"
            }),
        )
        .with_state(hits.clone())
        .layer(
            ServiceBuilder::new()
                .layer(middleware::from_fn(fake_compression))
                .layer(SwrLayer::new()),
        );
    for _ in 0..3 {
        for (accept, expected) in [
            ("gzip", "GZ:body"),
            ("identity", "body"),
            ("br, gzip", "GZ:body"),
        ] {
            let response = app
                .clone()
                .oneshot(req_with(
                    Method::GET,
                    "/asset",
                    &[("accept-encoding", accept)],
                ))
                .await
                .unwrap();
            assert_eq!(body(response).await.unwrap(), expected, "{accept}");
        }
    }
    assert_eq!(
        hits.get(),
        1,
        "the cache inside stores the one identity body"
    );
}

#[tokio::test(start_paused = true)]
async fn post_redirect_get_and_delete_invalidate_what_they_touch() {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/items",
            get(|State(h): State<Hits>| async move { format!("list {}", h.bump()) }).post(
                |State(h): State<Hits>| async move {
                    h.bump();
                    Redirect::to("/items/5")
                },
            ),
        )
        .route(
            "/items/{id}",
            get(|Path(id): Path<u32>, State(h): State<Hits>| async move {
                format!("item {id} v{}", h.bump())
            })
            .delete(|State(h): State<Hits>| async move {
                h.bump();
                StatusCode::NO_CONTENT
            }),
        )
        .with_state(hits.clone())
        .layer(SwrLayer::new());
    assert_eq!(text(&app, "/items").await, "list 1");
    assert_eq!(text(&app, "/items/5").await, "item 5 v2");
    assert_eq!(text(&app, "/items/6").await, "item 6 v3");
    assert_eq!(text(&app, "/items").await, "list 1");
    // POST /items answers 303 See Other, Location: /items/5.
    let (status, _, _, _) = call(&app, req_with(Method::POST, "/items", &[])).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(text(&app, "/items").await, "list 5");
    assert_eq!(text(&app, "/items/5").await, "item 5 v6");
    assert_eq!(text(&app, "/items/6").await, "item 6 v3", "untouched");
    let (status, _, _, _) = call(&app, req_with(Method::DELETE, "/items/6", &[])).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(text(&app, "/items/6").await, "item 6 v8");
}

#[tokio::test(start_paused = true)]
async fn browser_reloads_do_not_reach_the_origin() {
    let hits = Hits::default();
    let app = counted_app(&hits, Duration::ZERO);
    assert_eq!(text(&app, "/page").await, "page 1");
    for directive in ["no-cache", "max-age=0", "no-cache, max-age=0"] {
        let (_, _, bytes, cache) = call(
            &app,
            req_with(
                Method::GET,
                "/page",
                &[("cache-control", directive), ("pragma", "no-cache")],
            ),
        )
        .await;
        assert_eq!((bytes, cache), (Bytes::from("page 1"), CacheStatus::Fresh));
    }
    assert_eq!(hits.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn upgrade_requests_reach_the_handler_every_time() {
    let hits = Hits::default();
    let app = counted_app(&hits, Duration::ZERO);
    for n in 1..=2 {
        let (_, _, bytes, cache) = call(
            &app,
            req_with(
                Method::GET,
                "/page",
                &[("connection", "upgrade"), ("upgrade", "websocket")],
            ),
        )
        .await;
        assert_eq!(bytes, format!("page {n}"));
        assert_eq!(cache, CacheStatus::Bypass);
    }
    // The upgrade attempts stored nothing: a plain GET is a miss.
    let (_, _, _, cache) = call(&app, req("/page")).await;
    assert_eq!(cache, CacheStatus::Miss);
}

#[tokio::test(start_paused = true)]
async fn a_thousand_concurrent_requests_past_the_stale_window_make_one_origin_call() {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/k",
            get(|State(h): State<Hits>| async move {
                let n = h.bump();
                tokio::time::sleep(secs(1)).await;
                (
                    [(
                        header::CACHE_CONTROL,
                        "max-age=10, stale-while-revalidate=10",
                    )],
                    format!("k{n}"),
                )
            }),
        )
        .with_state(hits.clone())
        .layer(SwrLayer::new());
    let burst = |app: Router| async move {
        let tasks: Vec<_> = (0..1000)
            .map(|_| {
                let app = app.clone();
                tokio::spawn(async move { text(&app, "/k").await })
            })
            .collect();
        let mut bodies = Vec::new();
        for task in tasks {
            bodies.push(task.await.unwrap());
        }
        bodies
    };
    let cold = burst(app.clone()).await;
    assert!(cold.iter().all(|b| b == "k1"));
    assert_eq!(hits.get(), 1, "cold");
    tokio::time::advance(secs(60)).await; // past 10 + 10 s: nothing usable
    let expired = burst(app.clone()).await;
    assert!(
        expired.iter().all(|b| b == "k2"),
        "all wait for the one call"
    );
    assert_eq!(hits.get(), 2, "past the window");
}

#[tokio::test(start_paused = true)]
async fn an_outer_timeout_shorter_than_the_handler_still_lets_waiters_through() {
    // A client-facing timeout in front of the cache (the common `TimeoutLayer` placement) cuts
    // the leader before the origin's head; the docs say such a leader hands over to waiters.
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/slow",
            get(|State(h): State<Hits>| async move {
                let n = h.bump();
                tokio::time::sleep(secs(3)).await;
                format!("slow {n}")
            }),
        )
        .with_state(hits.clone())
        .layer(SwrLayer::new());
    let guarded = ServiceBuilder::new()
        .layer(tower::timeout::TimeoutLayer::new(secs(1)))
        .service(app.clone());
    let impatient = tokio::spawn({
        let guarded = guarded.clone();
        async move { guarded.oneshot(req("/slow")).await.map(|_| ()) }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A patient client (no outer timeout) waits for that call.
    let patient = tokio::spawn({
        let app = app.clone();
        async move { text(&app, "/slow").await }
    });
    let cut = impatient.await.unwrap();
    assert!(
        cut.is_err(),
        "the outer timeout answers the impatient client"
    );
    let answer = timeout(secs(30), patient)
        .await
        .expect("the waiter of a cut leader is answered")
        .unwrap();
    // The cut leader's call was dropped before its head: the waiter asked again (documented:
    // a leader dropped before the origin's head hands over to its waiters).
    assert_eq!(answer, "slow 2");
    assert_eq!(hits.get(), 2);
    let (_, _, bytes, cache) = call(&app, req("/slow")).await;
    assert_eq!(cache, CacheStatus::Fresh);
    assert_eq!(bytes, answer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_max_body_bytes_reaches_clients_whole_and_is_not_stored() {
    let hits = Hits::default();
    let data = patterned_bytes(200 * 1024);
    let chunks: Vec<Bytes> = (0..50)
        .map(|i| data.slice(i * 4096..(i + 1) * 4096))
        .collect();
    let app = Router::new()
        .route(
            "/huge",
            get(move |State(h): State<Hits>| {
                let chunks = chunks.clone();
                async move {
                    h.bump();
                    slow_stream(chunks, Duration::from_millis(1))
                }
            }),
        )
        .with_state(hits.clone())
        .layer(SwrLayer::new().max_body_bytes(64 * 1024));
    let addr = common::serve(app).await;
    let client = h1_client();
    let url = format!("http://{addr}/huge");
    for n in 1..=2 {
        let (status, _, bytes) = fetch(&client, Method::GET, &url, &[]).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(bytes.len(), data.len());
        assert_eq!(bytes, data);
        assert_eq!(hits.get(), n);
    }
}

/// A body that sends `good` and then fails, as `Body::from_stream`.
fn failing_stream(good: Bytes) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        let _ = tx.send(Ok(good)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let _ = tx.send(Err("upstream reset".into())).await;
    });
    Body::from_stream(Body::new(FedBody(rx)).into_data_stream())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_failing_mid_stream_is_an_error_for_the_client_and_not_stored() {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/cut",
            get(|State(h): State<Hits>| async move {
                h.bump();
                failing_stream(Bytes::from_static(b"half of it"))
            }),
        )
        .with_state(hits.clone())
        .layer(SwrLayer::new());
    let addr = common::serve(app).await;
    let client = h1_client();
    let url = format!("http://{addr}/cut");
    for n in 1..=2 {
        let outcome = fetch(&client, Method::GET, &url, &[]).await;
        assert!(
            outcome.is_err(),
            "a cut body is not a clean 200: {outcome:?}"
        );
        assert_eq!(hits.get(), n, "nothing stored");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_a_big_hit_halfway_leaves_the_entry_intact() {
    let hits = Hits::default();
    let data = patterned_bytes(4 << 20);
    let app = Router::new()
        .route(
            "/blob",
            get({
                let data = data.clone();
                move |State(h): State<Hits>| {
                    let data = data.clone();
                    async move {
                        h.bump();
                        data
                    }
                }
            }),
        )
        .with_state(hits.clone())
        .layer(SwrLayer::new());
    let addr = common::serve(app).await;
    let client = h1_client();
    let url = format!("http://{addr}/blob");
    assert_eq!(
        fetch(&client, Method::GET, &url, &[]).await.unwrap().2,
        data
    );
    for _ in 0..3 {
        let mut quitter = TcpStream::connect(addr).await.unwrap();
        quitter
            .write_all(format!("GET /blob HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let n = timeout(HANG, quitter.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        drop(quitter);
    }
    let (_, headers, bytes) = fetch(&client, Method::GET, &url, &[]).await.unwrap();
    assert_eq!(bytes, data);
    assert!(hv(&headers, "cache-status").unwrap().contains("hit"));
    assert_eq!(hits.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_with_another_host_is_keyed_and_rendered_by_the_authority() {
    let app = Router::new()
        .route(
            "/whoami",
            get(|headers: HeaderMap| async move {
                format!("host={}", hv(&headers, "host").unwrap_or_default())
            }),
        )
        .layer(SwrLayer::new());
    let addr = common::serve(app).await;
    let out = raw_exchange(
        addr,
        b"GET http://shop.example/whoami HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.contains("host=shop.example"), "{out}");
    // A plain request for the authority's host is answered from that entry.
    let out = raw_exchange(
        addr,
        b"GET /whoami HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.contains("host=shop.example"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("cache-status: tower-swr; hit"),
        "{out}"
    );
    // The other host has its own entry.
    let out = raw_exchange(
        addr,
        b"GET /whoami HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.contains("host=evil.example"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_info_make_service_serves_through_the_layer() {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/ip",
            get(
                |State(h): State<Hits>,
                 axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>| async move {
                    h.bump();
                    format!("{}", peer.ip())
                },
            ),
        )
        .with_state(hits.clone())
        .layer(SwrLayer::new());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    let client = h1_client();
    let url = format!("http://{addr}/ip");
    for _ in 0..3 {
        let (status, _, bytes) = fetch(&client, Method::GET, &url, &[]).await.unwrap();
        assert_eq!((status, bytes), (StatusCode::OK, Bytes::from("127.0.0.1")));
    }
    assert_eq!(hits.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_slow_miss_then_hit_answer_in_order() {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "slow"
            }),
        )
        .route(
            "/fast",
            get(|State(h): State<Hits>| async move { format!("fast {}", h.bump()) }),
        )
        .with_state(hits.clone())
        .layer(SwrLayer::new());
    let addr = common::serve(app).await;
    let _ = raw_exchange(
        addr,
        b"GET /fast HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    let out = raw_exchange(
        addr,
        b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\nGET /fast HTTP/1.1\r\nHost: h\r\n\r\nHEAD /fast HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    let slow = out.find("\r\n\r\nslow").expect("slow answered");
    let fast = out.find("fast 1").expect("fast answered");
    assert!(slow < fast, "answers in request order: {out}");
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 3, "{out}");
    assert_eq!(out.matches("fast 1").count(), 1, "HEAD has no body: {out}");
    assert_eq!(hits.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_extension_layer_outside_reaches_background_refreshes() {
    let hits = Hits::default();
    let layer = SwrLayer::new();
    let cache = layer.handle();
    let app = Router::new()
        .route(
            "/cfg",
            get(
                |State(h): State<Hits>, axum::Extension(cfg): axum::Extension<Arc<String>>| async move {
                    let n = h.bump();
                    (
                        [(header::CACHE_CONTROL, "max-age=10, stale-while-revalidate=60")],
                        format!("{cfg} {n}"),
                    )
                },
            ),
        )
        .with_state(hits.clone())
        .layer(layer)
        .layer(axum::Extension(Arc::new(String::from("cfg"))));
    assert_eq!(text(&app, "/cfg").await, "cfg 1");
    tokio::time::advance(secs(15)).await;
    assert_eq!(text(&app, "/cfg").await, "cfg 1");
    settle().await;
    let stats = cache.stats();
    assert_eq!(
        (stats.refreshes_succeeded, stats.refreshes_failed),
        (1, 0),
        "the refresh request still carries the Extension: {stats:?}"
    );
    assert_eq!(text(&app, "/cfg").await, "cfg 2");
}

/// Reads from `stream` until `needle` has arrived (or panics after [`HANG`]).
async fn read_until(stream: &mut TcpStream, seen: &mut Vec<u8>, needle: &[u8]) {
    let found = timeout(HANG, async {
        let mut buf = [0u8; 4096];
        while !seen.windows(needle.len()).any(|w| w == needle) {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before {:?}", String::from_utf8_lossy(needle));
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "{:?} did not arrive; got {:?}",
        String::from_utf8_lossy(needle),
        String::from_utf8_lossy(seen)
    );
}

/// A route whose body sends `first`, waits for `gate`, then sends `rest`.
fn gated_stream_app(hits: &Hits, gate: &Gate, content_type: &'static str) -> Router {
    let gate = gate.clone();
    Router::new()
        .route(
            "/live",
            get(move |State(h): State<Hits>| {
                let gate = gate.clone();
                async move {
                    h.bump();
                    let (tx, rx) = tokio::sync::mpsc::channel(4);
                    tokio::spawn(async move {
                        let _ = tx.send(Ok(Bytes::from_static(b"data: first\n\n"))).await;
                        gate.wait().await;
                        let _ = tx.send(Ok(Bytes::from_static(b"data: rest\n\n"))).await;
                    });
                    (
                        [(header::CONTENT_TYPE, content_type)],
                        Body::from_stream(Body::new(FedBody(rx)).into_data_stream()),
                    )
                }
            }),
        )
        .with_state(hits.clone())
        .layer(SwrLayer::new())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misses_stream_over_the_wire_to_the_leader_and_a_joiner() {
    let (hits, gate) = (Hits::default(), Gate::new());
    let addr = common::serve(gated_stream_app(&hits, &gate, "text/plain")).await;
    let request = format!("GET /live HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let mut leader = TcpStream::connect(addr).await.unwrap();
    leader.write_all(request.as_bytes()).await.unwrap();
    let mut leader_seen = Vec::new();
    read_until(&mut leader, &mut leader_seen, b"data: first").await;
    let mut joiner = TcpStream::connect(addr).await.unwrap();
    joiner.write_all(request.as_bytes()).await.unwrap();
    let mut joiner_seen = Vec::new();
    read_until(&mut joiner, &mut joiner_seen, b"data: first").await;
    gate.open();
    read_until(&mut leader, &mut leader_seen, b"data: rest").await;
    read_until(&mut joiner, &mut joiner_seen, b"data: rest").await;
    assert_eq!(hits.get(), 1, "the joiner read the leader's fill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_stream_over_the_wire_and_every_subscriber_gets_its_own() {
    let (hits, gate) = (Hits::default(), Gate::new());
    let addr = common::serve(gated_stream_app(&hits, &gate, "text/event-stream")).await;
    let request = format!("GET /live HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let mut subscribers = Vec::new();
    for n in 1..=3 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut seen = Vec::new();
        read_until(&mut stream, &mut seen, b"data: first").await;
        let head = String::from_utf8_lossy(&seen).to_ascii_lowercase();
        assert!(head.contains("content-type: text/event-stream"), "{head}");
        assert!(!head.contains("; hit"), "{head}");
        assert_eq!(hits.get(), n, "each subscriber has its own stream");
        subscribers.push((stream, seen));
    }
    gate.open();
    for (stream, seen) in &mut subscribers {
        read_until(stream, seen, b"data: rest").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_a_streaming_miss_finish_for_its_client() {
    let (hits, gate) = (Hits::default(), Gate::new());
    let layer_app = gated_stream_app(&hits, &gate, "text/plain");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let (addr, server) = serve_until(layer_app, stop_rx).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(
            format!("GET /live HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    read_until(&mut client, &mut seen, b"data: first").await;
    stop_tx.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !server.is_finished(),
        "the server waits for the open response"
    );
    gate.open();
    read_until(&mut client, &mut seen, b"data: rest").await;
    let mut rest = Vec::new();
    timeout(HANG, client.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    timeout(HANG, server)
        .await
        .expect("the server stopped")
        .unwrap();
}

/// A handler doing its own conditional GET and ranges, as `ServeFile`-like handlers do.
async fn self_conditional(State(h): State<Hits>, headers: HeaderMap) -> Response {
    h.bump();
    let full = "0123456789abcdef";
    let etag = "\"v1\"";
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v == etag)
    {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    if let Some(range) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        if let Some(spec) = range.strip_prefix("bytes=") {
            if let Some((a, b)) = spec.split_once('-') {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    return (
                        StatusCode::PARTIAL_CONTENT,
                        [
                            (header::ETAG, etag.to_owned()),
                            (
                                header::CONTENT_RANGE,
                                format!("bytes {a}-{b}/{}", full.len()),
                            ),
                        ],
                        full[a..=b].to_owned(),
                    )
                        .into_response();
                }
            }
        }
    }
    ([(header::ETAG, etag)], full).into_response()
}

#[tokio::test(start_paused = true)]
async fn a_cold_conditional_request_does_not_leave_an_empty_page_for_others() {
    let hits = Hits::default();
    let app = Router::new()
        .route("/doc", get(self_conditional))
        .with_state(hits.clone())
        .layer(SwrLayer::new());
    let (status, _, _, _) = call(
        &app,
        req_with(Method::GET, "/doc", &[("if-none-match", "\"v1\"")]),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    let (status, _, bytes, _) = call(&app, req("/doc")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bytes, "0123456789abcdef");
    let (status, _, bytes, _) = call(&app, req("/doc")).await;
    assert_eq!(
        (status, bytes),
        (StatusCode::OK, Bytes::from("0123456789abcdef"))
    );
}

#[tokio::test(start_paused = true)]
async fn a_cold_range_request_does_not_leave_a_partial_page_for_others() {
    let hits = Hits::default();
    let app = Router::new()
        .route("/doc", get(self_conditional))
        .with_state(hits.clone())
        .layer(SwrLayer::new());
    let (status, headers, bytes, _) = call(
        &app,
        req_with(Method::GET, "/doc", &[("range", "bytes=0-3")]),
    )
    .await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(bytes, "0123");
    assert_eq!(
        hv(&headers, "content-range").as_deref(),
        Some("bytes 0-3/16")
    );
    for _ in 0..2 {
        let (status, headers, bytes, _) = call(&app, req("/doc")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(bytes, "0123456789abcdef");
        assert!(headers.get(header::CONTENT_RANGE).is_none());
    }
    // And a range from the stored full response is cut right.
    let (status, _, bytes, _) = call(
        &app,
        req_with(Method::GET, "/doc", &[("range", "bytes=4-7")]),
    )
    .await;
    assert_eq!(
        (status, bytes),
        (StatusCode::PARTIAL_CONTENT, Bytes::from("4567"))
    );
}

#[tokio::test(start_paused = true)]
async fn encoded_slashes_and_case_keep_paths_apart() {
    let app = Router::new()
        .route(
            "/files/{name}",
            get(|Path(name): Path<String>| async move { format!("file {name}") }),
        )
        .route("/files/a/b", get(|| async { "nested a/b" }))
        .route("/Page", get(|| async { "upper" }))
        .route("/page", get(|| async { "lower" }))
        .layer(SwrLayer::new());
    for _ in 0..2 {
        assert_eq!(text(&app, "/files/a%2Fb").await, "file a/b");
        assert_eq!(text(&app, "/files/a/b").await, "nested a/b");
        assert_eq!(text(&app, "/Page").await, "upper");
        assert_eq!(text(&app, "/page").await, "lower");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_http2_streams_on_one_cold_key_make_one_origin_call() {
    let hits = Hits::default();
    let addr = common::serve(counted_app(&hits, Duration::from_millis(1000))).await;
    let h2 = h2_client();
    let url = format!("http://{addr}/page");
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (h2, url) = (h2.clone(), url.clone());
            tokio::spawn(async move { fetch(&h2, Method::GET, &url, &[]).await })
        })
        .collect();
    for task in tasks {
        let (status, _, bytes) = task.await.unwrap().unwrap();
        assert_eq!((status, bytes), (StatusCode::OK, Bytes::from("page 1")));
    }
    assert_eq!(hits.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_client_hanging_up_before_the_head_leaves_its_waiters_answered() {
    let hits = Hits::default();
    let addr = common::serve(counted_app(&hits, Duration::from_millis(1500))).await;
    let mut leader = TcpStream::connect(addr).await.unwrap();
    leader
        .write_all(format!("GET /page HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    wait_until("the leader's call started", || hits.get() == 1).await;
    let client = h1_client();
    let url = format!("http://{addr}/page");
    let waiters: Vec<_> = (0..20)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { fetch(&client, Method::GET, &url, &[]).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(leader);
    let mut bodies = std::collections::BTreeSet::new();
    for waiter in waiters {
        let (status, _, bytes) = waiter.await.unwrap().unwrap();
        assert_eq!(status, StatusCode::OK);
        bodies.insert(bytes);
    }
    assert!(
        hits.get() <= 2,
        "handed over to one waiter, not to each: {}",
        hits.get()
    );
    assert_eq!(bodies.len(), 1, "{bodies:?}");
}

#[tokio::test(start_paused = true)]
async fn a_hanging_database_past_the_swr_window_is_answered_stale_after_origin_timeout() {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/dash",
            get(|State(h): State<Hits>| async move {
                let n = h.bump();
                if n > 1 {
                    std::future::pending::<()>().await;
                }
                (
                    [(
                        header::CACHE_CONTROL,
                        "max-age=10, stale-while-revalidate=10",
                    )],
                    "dashboard",
                )
            }),
        )
        .with_state(hits.clone())
        .layer(SwrLayer::new());
    assert_eq!(text(&app, "/dash").await, "dashboard");
    tokio::time::advance(secs(60)).await; // past 10 + 10 s, inside the default 300 s stale-if-error
    let started = tokio::time::Instant::now();
    let (status, headers, bytes, cache) = timeout(secs(120), call(&app, req("/dash")))
        .await
        .expect("a stale entry answers once origin_timeout (30 s) runs out");
    assert_eq!((status, bytes), (StatusCode::OK, Bytes::from("dashboard")));
    assert_eq!(cache, CacheStatus::StaleIfError);
    assert!(hv(&headers, "cache-status").unwrap().contains("fwd=stale"));
    assert!(started.elapsed() >= secs(30) && started.elapsed() < secs(31));
}

#[tokio::test(start_paused = true)]
async fn convert_head_on_a_whole_router_stores_the_get() {
    let hits = Hits::default();
    let router = Router::new()
        .route(
            "/p",
            get(|State(h): State<Hits>| async move { format!("p{}", h.bump()) }),
        )
        .with_state(hits.clone());
    let service = ServiceBuilder::new()
        .layer(SwrLayer::new().convert_head(true))
        .service(router);
    let head = service
        .clone()
        .oneshot(req_with(Method::HEAD, "/p", &[]))
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert!(body(head).await.unwrap().is_empty());
    let get = service.clone().oneshot(req("/p")).await.unwrap();
    assert_eq!(info(&get).status, CacheStatus::Fresh);
    assert_eq!(body(get).await.unwrap(), "p1");
    assert_eq!(hits.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_route_layer_under_a_router_layer_each_add_their_member() {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/d",
            get(|State(h): State<Hits>| async move { format!("d{}", h.bump()) })
                .layer(SwrLayer::new()),
        )
        .with_state(hits.clone())
        .layer(SwrLayer::new());
    let _ = call(&app, req("/d")).await;
    tokio::time::advance(secs(3)).await;
    let (_, headers, bytes, cache) = call(&app, req("/d")).await;
    assert_eq!((bytes, cache), (Bytes::from("d1"), CacheStatus::Fresh));
    let lines: Vec<_> = headers
        .get_all("cache-status")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[1].starts_with("tower-swr; hit; ttl="),
        "outer member last: {lines:?}"
    );
    assert_eq!(hv(&headers, "age").as_deref(), Some("3"));
    assert_eq!(hits.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn background_refreshes_of_encoding_variants_keep_their_encoding() {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/asset",
            get(|State(h): State<Hits>| async move {
                let n = h.bump();
                (
                    [(
                        header::CACHE_CONTROL,
                        "max-age=10, stale-while-revalidate=60",
                    )],
                    format!("v{n}"),
                )
            }),
        )
        .with_state(hits.clone())
        .layer(
            ServiceBuilder::new()
                .layer(SwrLayer::new())
                .layer(middleware::from_fn(fake_compression)),
        );
    let gz = || req_with(Method::GET, "/asset", &[("accept-encoding", "gzip")]);
    let plain = || req_with(Method::GET, "/asset", &[("accept-encoding", "identity")]);
    assert_eq!(call(&app, gz()).await.2, "GZ:v1");
    assert_eq!(call(&app, plain()).await.2, "v2");
    tokio::time::advance(secs(15)).await;
    // Each variant answered stale, each refreshed with its own request headers.
    let (_, _, bytes, cache) = call(&app, gz()).await;
    assert_eq!((bytes, cache), (Bytes::from("GZ:v1"), CacheStatus::Stale));
    settle().await;
    let (_, _, bytes, cache) = call(&app, plain()).await;
    assert_eq!((bytes, cache), (Bytes::from("v2"), CacheStatus::Stale));
    settle().await;
    for _ in 0..2 {
        let (_, headers, bytes, _) = call(&app, gz()).await;
        assert_eq!(bytes, "GZ:v3");
        assert_eq!(hv(&headers, "content-encoding").as_deref(), Some("gzip"));
        let (_, headers, bytes, _) = call(&app, plain()).await;
        assert_eq!(bytes, "v4");
        assert!(headers.get(header::CONTENT_ENCODING).is_none());
    }
    assert_eq!(hits.get(), 4);
}

#[tokio::test(start_paused = true)]
async fn an_origin_slower_than_the_lock_timeout_gets_few_extra_calls() {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/scrape",
            get(|State(h): State<Hits>| async move {
                let n = h.bump();
                tokio::time::sleep(secs(12)).await;
                format!("scrape {n}")
            }),
        )
        .with_state(hits.clone())
        .layer(SwrLayer::new());
    let tasks: Vec<_> = (0..300)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { text(&app, "/scrape").await })
        })
        .collect();
    for task in tasks {
        assert!(task.await.unwrap().starts_with("scrape "));
    }
    // Documented: at most one extra call per lock timeout (5 s) per key.
    assert!(
        hits.get() <= 3,
        "{} origin calls for 300 requests",
        hits.get()
    );
}

#[tokio::test(start_paused = true)]
async fn a_soft_purge_during_an_outage_keeps_the_page_up() {
    let outage = Outage::default();
    let layer = SwrLayer::new();
    let cache = layer.handle();
    let app = Router::new()
        .route("/flaky", get(flaky))
        .with_state(outage.clone())
        .layer(layer);
    assert_eq!(text(&app, "/flaky").await, "good 1");
    outage.mode.store(1, Ordering::SeqCst);
    assert_eq!(cache.soft_purge("/flaky"), 1);
    for _ in 0..6 {
        let (status, _, bytes, cache_status) = call(&app, req("/flaky")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(bytes, "good 1");
        assert!(
            matches!(cache_status, CacheStatus::Stale | CacheStatus::StaleIfError),
            "{cache_status:?}"
        );
        settle().await;
        tokio::time::advance(secs(10)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn only_if_cached_answers_from_the_cache_or_504_without_the_origin() {
    let hits = Hits::default();
    let app = counted_app(&hits, Duration::ZERO);
    let oic = || req_with(Method::GET, "/page", &[("cache-control", "only-if-cached")]);
    let (status, headers, _, _) = call(&app, oic()).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(hv(&headers, "cache-status")
        .unwrap()
        .contains("detail=only-if-cached"));
    assert_eq!(hits.get(), 0);
    assert_eq!(text(&app, "/page").await, "page 1");
    let (status, _, bytes, _) = call(&app, oic()).await;
    assert_eq!((status, bytes), (StatusCode::OK, Bytes::from("page 1")));
    assert_eq!(hits.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn shared_cache_preset_in_front_of_a_router_keeps_only_what_handlers_allow() {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/silent",
            get(|State(h): State<Hits>| async move { format!("s{}", h.bump()) }),
        )
        .route(
            "/explicit",
            get(|State(h): State<Hits>| async move {
                (
                    [(header::CACHE_CONTROL, "max-age=60")],
                    format!("e{}", h.bump()),
                )
            }),
        )
        .with_state(hits.clone())
        .layer(SwrLayer::shared_cache());
    assert_eq!(text(&app, "/silent").await, "s1");
    assert_eq!(
        text(&app, "/silent").await,
        "s2",
        "no freshness, no Last-Modified"
    );
    assert_eq!(text(&app, "/explicit").await, "e3");
    assert_eq!(text(&app, "/explicit").await, "e3");
}

async fn user_from_token(mut request: Request, next: Next) -> Response {
    let user = match request
        .headers()
        .get("x-token")
        .and_then(|v| v.to_str().ok())
    {
        Some("t-alice") => "alice",
        Some("t-bob") => "bob",
        _ => return StatusCode::UNAUTHORIZED.into_response(),
    };
    request
        .headers_mut()
        .insert("x-user-id", HeaderValue::from_static(user));
    next.run(request).await
}

#[tokio::test(start_paused = true)]
async fn per_user_caching_with_key_fn_behind_an_auth_middleware() {
    let hits = Hits::default();
    let layer = SwrLayer::new()
        .key_fn(|parts| {
            let user = parts.headers.get("x-user-id")?.to_str().ok()?;
            Some(user.to_owned())
        })
        .allow_private(true);
    let app = Router::new()
        .route(
            "/inbox",
            get(|State(h): State<Hits>, headers: HeaderMap| async move {
                h.bump();
                (
                    [(header::CACHE_CONTROL, "private, max-age=60")],
                    format!("inbox of {}", hv(&headers, "x-user-id").unwrap()),
                )
            }),
        )
        .with_state(hits.clone())
        .layer(layer)
        .layer(middleware::from_fn(user_from_token));
    for _ in 0..3 {
        for (token, user) in [("t-alice", "alice"), ("t-bob", "bob")] {
            let (_, headers, bytes, _) =
                call(&app, req_with(Method::GET, "/inbox", &[("x-token", token)])).await;
            assert_eq!(bytes, format!("inbox of {user}"));
            assert_eq!(
                hv(&headers, "cache-control").as_deref(),
                Some("private, max-age=60")
            );
        }
    }
    assert_eq!(hits.get(), 2, "one entry per user");
}

#[tokio::test(start_paused = true)]
async fn logged_in_users_never_get_the_anonymous_page() {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/home",
            get(|State(h): State<Hits>, headers: HeaderMap| async move {
                h.bump();
                let who = if let Some(auth) = hv(&headers, "authorization") {
                    format!("hello {auth}")
                } else if let Some(cookie) = hv(&headers, "cookie") {
                    format!("hello {cookie}")
                } else {
                    "please log in".to_owned()
                };
                who
            }),
        )
        .with_state(hits.clone())
        .layer(SwrLayer::new());
    assert_eq!(text(&app, "/home").await, "please log in");
    assert_eq!(text(&app, "/home").await, "please log in");
    assert_eq!(hits.get(), 1);
    let (_, _, bytes, _) = call(
        &app,
        req_with(Method::GET, "/home", &[("authorization", "Bearer bob")]),
    )
    .await;
    assert_eq!(bytes, "hello Bearer bob");
    let (_, _, bytes, _) = call(
        &app,
        req_with(Method::GET, "/home", &[("cookie", "session=carol")]),
    )
    .await;
    assert_eq!(bytes, "hello session=carol");
    assert_eq!(text(&app, "/home").await, "please log in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_revalidation_and_ranges_over_keep_alive_are_framed_right() {
    let hits = Hits::default();
    let app = Router::new()
        .route("/doc", get(self_conditional))
        .with_state(hits.clone())
        .layer(SwrLayer::new());
    let addr = common::serve(app).await;
    let warm = raw_exchange(
        addr,
        b"GET /doc HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(warm.ends_with("0123456789abcdef"), "{warm}");
    let out = raw_exchange(
        addr,
        b"GET /doc HTTP/1.1\r\nHost: h\r\nIf-None-Match: \"v1\"\r\n\r\n\
          GET /doc HTTP/1.1\r\nHost: h\r\nRange: bytes=10-15\r\n\r\n\
          GET /doc HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    let not_modified = out.find("HTTP/1.1 304").expect(&out);
    let partial = out.find("HTTP/1.1 206").expect(&out);
    let whole = out.find("HTTP/1.1 200").expect(&out);
    assert!(not_modified < partial && partial < whole, "{out}");
    assert!(out[partial..whole].ends_with("abcdef"), "{out}");
    assert!(out[partial..whole]
        .to_ascii_lowercase()
        .contains("content-range: bytes 10-15/16"));
    assert!(out.ends_with("0123456789abcdef"), "{out}");
    assert_eq!(hits.get(), 1, "all three from the one entry");
}

#[tokio::test(start_paused = true)]
async fn a_rejected_post_invalidates_nothing() {
    let hits = Hits::default();
    let app = counted_app(&hits, Duration::ZERO);
    assert_eq!(text(&app, "/page").await, "page 1");
    let (status, _, _, _) = call(&app, req_with(Method::POST, "/page", &[])).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (_, _, bytes, cache) = call(&app, req("/page")).await;
    assert_eq!((bytes, cache), (Bytes::from("page 1"), CacheStatus::Fresh));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_head_and_http10_stale_answers() {
    let hits = Hits::default();
    let app = Router::new()
        .route(
            "/n",
            get(|State(h): State<Hits>| async move {
                let n = h.bump();
                (
                    [(
                        header::CACHE_CONTROL,
                        "max-age=1, stale-while-revalidate=600",
                    )],
                    format!("n{n}"),
                )
            }),
        )
        .with_state(hits.clone())
        .layer(SwrLayer::new());
    let addr = common::serve(app).await;
    let h2 = h2_client();
    let url = format!("http://{addr}/n");
    assert_eq!(fetch(&h2, Method::GET, &url, &[]).await.unwrap().2, "n1");
    let (status, headers, bytes) = fetch(&h2, Method::HEAD, &url, &[]).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(bytes.is_empty());
    assert_eq!(hv(&headers, "content-length").as_deref(), Some("2"));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let raw = format!("GET /n HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let out = raw_exchange(addr, raw.as_bytes()).await;
    assert!(out.ends_with("n1"), "stale to an HTTP/1.0 client: {out}");
    assert!(out.to_ascii_lowercase().contains("ttl=-"), "{out}");
    let mut latest = Bytes::new();
    for _ in 0..200 {
        latest = fetch(&h2, Method::GET, &url, &[]).await.unwrap().2;
        if latest == "n2" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(latest, "n2", "refreshed once");
    assert_eq!(hits.get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_and_range_requests_during_a_streaming_fill() {
    let (hits, gate) = (Hits::default(), Gate::new());
    let addr = common::serve(gated_stream_app(&hits, &gate, "text/plain")).await;
    let mut leader = TcpStream::connect(addr).await.unwrap();
    leader
        .write_all(
            format!("GET /live HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    read_until(&mut leader, &mut seen, b"data: first").await;
    // A HEAD is answered at once from the fill's head.
    let mut head = TcpStream::connect(addr).await.unwrap();
    head.write_all(format!("HEAD /live HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head_seen = Vec::new();
    read_until(&mut head, &mut head_seen, b"\r\n\r\n").await;
    assert!(String::from_utf8_lossy(&head_seen).starts_with("HTTP/1.1 200"));
    // Under `Router::layer` (default `convert_head(false)`) a HEAD miss goes to the handler on
    // its own, fill or not (the README's "a HEAD is answered at once" during a fill is the
    // `convert_head(true)` behaviour); nothing of it is stored.
    assert_eq!(hits.get(), 2);
    assert!(!String::from_utf8_lossy(&head_seen).contains("stored"));
    // A range request waits for the stored body, then is cut from it.
    let client = h1_client();
    let ranged = tokio::spawn({
        let (client, url) = (client.clone(), format!("http://{addr}/live"));
        async move { fetch(&client, Method::GET, &url, &[("range", "bytes=6-10")]).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!ranged.is_finished(), "the range waits for the whole body");
    gate.open();
    let (status, headers, bytes) = ranged.await.unwrap().unwrap();
    assert!(hv(&headers, "cache-status").unwrap().contains("collapsed"));
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(bytes, "first");
    assert_eq!(
        hv(&headers, "content-range").as_deref(),
        Some("bytes 6-10/25")
    );
    read_until(&mut leader, &mut seen, b"data: rest").await;
    assert_eq!(hits.get(), 2, "the range request read the GET's fill");
}
