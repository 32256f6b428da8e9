//! A caching reverse proxy: every request goes to the upstream through `SwrLayer` in its strict
//! shared-cache preset. A real use on its own (a cache in front of a slow partner API) and the
//! harness for the HTTP cache conformance suite (`tests/conformance/run.sh`).
//!
//! Interim responses are not forwarded: hyper-util's client reads an upstream's `103 Early
//! Hints` and returns only the final response, and hyper 1.x's server cannot send a 1xx from a
//! service (hyperium/hyper#3815, #4114 are open); it sends `100 Continue` itself when the body
//! of an `Expect: 100-continue` request is first read, here by the upstream client.
//!
//! An upstream that cannot be reached (connection refused or reset, DNS, no answer within 30 s)
//! is an `Err` of the upstream service, not a response: the layer then knows the origin gave no
//! answer, and in the shared-cache preset serves a stored stale response if it has one (RFC 9111
//! §4.2.4, `SwrLayer::max_stale_when_disconnected`, `Cache-Status: ...; fwd=stale`). A `502`
//! made up here would look like the origin's own answer and be passed on. The outermost layer
//! turns the errors nothing could stand in for into `502 Bad Gateway` for the client.
//!
//! `PURGE` from a loopback address purges (others get `403`):
//!
//! ```text
//! PURGE /path?query                      the entries of that target
//! PURGE /  with  Surrogate-Key: a b      every entry tagged a or b (Fastly's form)
//! PURGE /  with  xkey-purge: a b         the same (Varnish xkey's form)
//! Fastly-Soft-Purge: 1 / xkey-softpurge  soft: stale, served while it refreshes
//! ```
//!
//! A tag purge says how many tags were purged. Stored responses are
//! tagged by their `Surrogate-Key`, `Cache-Tag` and `xkey` fields, which are not sent on.
//!
//! A target purge answers `200` when an entry was purged and `404` when no instance had one.
//! With `--redis URL` (feature `redis`) every proxy started on that Redis is one cache: they
//! share stored responses and their fills, and a `PURGE` on one reaches all of them. The key
//! names the upstream's host, not the one clients used (nginx's default), so proxies on other
//! addresses in front of one upstream share their entries.
//!
//! ```sh
//! cargo run --release --example reverse_proxy -- \
//!     --listen 127.0.0.1:8102 --upstream http://127.0.0.1:8100
//! curl -X PURGE -H 'Surrogate-Key: product-42' http://127.0.0.1:8102/
//! cargo run --release --example reverse_proxy --features redis -- \
//!     --listen 127.0.0.1:8103 --upstream http://127.0.0.1:8100 --redis redis://127.0.0.1:6379/
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, HeaderName, Request, Response, StatusCode, Uri};
use axum::Router;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_swr::{SwrBody, SwrHandle, SwrLayer};

/// Forwards requests to one upstream; an unreachable upstream is an `Err`.
#[derive(Clone)]
struct Upstream {
    client: Client<HttpConnector, Body>,
    base: Uri,
}

/// Hop-by-hop fields are not forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
];

impl Upstream {
    fn forward_uri(&self, uri: &Uri) -> Uri {
        let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let mut parts = self.base.clone().into_parts();
        parts.path_and_query = Some(path.parse().expect("a valid path and query"));
        Uri::from_parts(parts).expect("upstream URI")
    }
}

impl Service<Request<Body>> for Upstream {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        parts.uri = self.forward_uri(&parts.uri);
        let connection_named: Vec<HeaderName> = parts
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for name in connection_named {
            parts.headers.remove(name);
        }
        for name in HOP_BY_HOP {
            parts.headers.remove(name);
        }
        let client = self.client.clone();
        Box::pin(async move {
            // A transport error is no answer of the origin: the cache may stand in for it.
            let response = client.request(Request::from_parts(parts, body)).await?;
            Ok(response.map(Body::new))
        })
    }
}

/// The client's answer to an error nothing could stand in for.
fn bad_gateway(
    result: Result<Response<SwrBody<Body>>, BoxError>,
) -> Result<Response<Body>, Infallible> {
    Ok(match result {
        Ok(response) => response.map(Body::new),
        Err(error) => {
            tracing::warn!(%error, "upstream unreachable");
            let mut response = Response::new(Body::from("upstream unavailable\n"));
            *response.status_mut() = StatusCode::BAD_GATEWAY;
            response
        }
    })
}

/// The tags a `PURGE` names, and whether it is soft.
fn purge_tags(headers: &HeaderMap) -> (Vec<String>, bool) {
    let mut tags = Vec::new();
    let mut add = |name: &str| {
        for value in headers.get_all(name) {
            let text = value.to_str().unwrap_or_default();
            let split = text.split(|c: char| c == ',' || c.is_ascii_whitespace());
            tags.extend(split.filter(|t| !t.is_empty()).map(str::to_owned));
        }
    };
    add("surrogate-key");
    add("xkey-purge");
    add("xkey-softpurge");
    let soft = headers.contains_key("xkey-softpurge")
        || headers
            .get("fastly-soft-purge")
            .is_some_and(|v| v.as_bytes() == b"1");
    (tags, soft)
}

/// Answers a `PURGE`: by tag when it names tags, else by target (`404` when no instance had
/// it: this one's memory, or the shared tier's copy).
async fn purge(cache: &SwrHandle, request: &axum::http::request::Parts) -> Response<Body> {
    let loopback = (request.extensions.get::<ConnectInfo<SocketAddr>>())
        .is_some_and(|ConnectInfo(peer)| peer.ip().is_loopback());
    let (status, text) = if !loopback {
        (
            StatusCode::FORBIDDEN,
            "PURGE only from loopback\n".to_owned(),
        )
    } else {
        let (tags, soft) = purge_tags(&request.headers);
        if !tags.is_empty() {
            let purged = if soft {
                cache.soft_purge_tag(&tags)
            } else {
                cache.purge_tag(&tags)
            };
            (StatusCode::OK, format!("purged {purged} tags\n"))
        } else {
            let target = request.uri.path_and_query().map_or("/", |pq| pq.as_str());
            let host = (request.headers.get(header::HOST))
                .and_then(|host| host.to_str().ok())
                .unwrap_or_default();
            if cache.purge_everywhere(host, target, soft).await {
                (StatusCode::OK, format!("purged {target}\n"))
            } else {
                (StatusCode::NOT_FOUND, format!("{target} was not cached\n"))
            }
        }
    };
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    response
}

/// The proxy's cache: the strict shared-cache preset. The upstream chooses by method itself:
/// a HEAD miss may be asked as a GET and stored, as nginx and Varnish do.
pub fn cache_layer() -> SwrLayer {
    SwrLayer::shared_cache().convert_head(true)
}

/// The proxy in front of `upstream`, and a handle on its cache. Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()`, which `PURGE` needs.
#[allow(dead_code)] // used by the tests that include this file
pub fn app(upstream: Uri) -> (Router, SwrHandle) {
    app_with(upstream, cache_layer())
}

/// The proxy in front of `upstream`, caching through `layer`.
pub fn app_with(upstream: Uri, layer: SwrLayer) -> (Router, SwrHandle) {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    // Idle connections are dropped after 2 s, before a server closes them (Node's default
    // keep-alive timeout is 5 s, Apache's 5, nginx's 75): a request sent on a connection the
    // server is closing fails ("connection closed before message completed"), and one with a
    // body (a PUT) cannot be sent again, so the client would get a 502.
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(2))
        .pool_timer(TokioTimer::new())
        .build(connector);
    // As nginx's default (`proxy_set_header Host $proxy_host`, a key of `$proxy_host`): the
    // upstream is asked for its own host, and the key names it, so every proxy in front of one
    // upstream (several instances on one Redis) has the same keys whatever name clients used.
    let upstream_host = (upstream.authority())
        .and_then(|authority| header::HeaderValue::from_str(authority.as_str()).ok());
    let cache = layer.handle();
    let proxy = ServiceBuilder::new()
        .layer(layer)
        // An upstream that does not answer in 30 s is unreachable too.
        .timeout(Duration::from_secs(30))
        .service(Upstream {
            client,
            base: upstream,
        });
    let handle = cache.clone();
    let front = tower::service_fn(move |request: Request<Body>| {
        let (proxy, cache) = (proxy.clone(), cache.clone());
        let upstream_host = upstream_host.clone();
        async move {
            let mut request = request;
            if let Some(host) = upstream_host {
                request.headers_mut().insert(header::HOST, host);
                // An absolute-form target's authority would name the key instead.
                if request.uri().authority().is_some() {
                    let path = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
                    if let Ok(path) = path.parse() {
                        *request.uri_mut() = path;
                    }
                }
            }
            if request.method().as_str() == "PURGE" {
                let (parts, _body) = request.into_parts();
                return Ok(purge(&cache, &parts).await);
            }
            // Outermost: what is still an error (no stale response could stand in) is a 502.
            bad_gateway(proxy.oneshot(request).await)
        }
    });
    (Router::new().fallback_service(front), handle)
}

fn arg(name: &str) -> Option<String> {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == name {
            return args.next();
        }
        if let Some(value) = arg.strip_prefix(&format!("{name}=")) {
            return Some(value.to_owned());
        }
    }
    None
}

/// Stops with a clear message (bad command-line input is not a panic).
fn usage(message: &str) -> ! {
    eprintln!("{message}");
    std::process::exit(2)
}

/// `--redis URL`: one cache with every proxy on that Redis (feature `redis`).
fn with_redis(layer: SwrLayer) -> SwrLayer {
    let Some(url) = arg("--redis") else {
        return layer;
    };
    #[cfg(feature = "redis")]
    {
        match tower_swr::redis::RedisConfig::new(&url) {
            Ok(config) => layer.redis(config),
            Err(error) => usage(&format!("--redis {url:?}: {error}")),
        }
    }
    #[cfg(not(feature = "redis"))]
    {
        let _ = (layer, url);
        usage("--redis needs the `redis` feature: cargo run --example reverse_proxy --features redis -- --redis redis://127.0.0.1:6379/ ...")
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let listen: SocketAddr = arg("--listen")
        .unwrap_or_else(|| "127.0.0.1:8102".into())
        .parse()
        .unwrap_or_else(|_| usage("--listen takes ADDR:PORT, e.g. 127.0.0.1:8102"));
    let base: Uri = arg("--upstream")
        .unwrap_or_else(|| "http://127.0.0.1:8100".into())
        .parse()
        .ok()
        .filter(|uri: &Uri| uri.authority().is_some())
        .unwrap_or_else(|| usage("--upstream takes a URL such as http://127.0.0.1:8100"));

    let layer = with_redis(cache_layer());
    let (app, _cache) = app_with(base, layer);
    let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
    println!("caching proxy on http://{listen}");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    .expect("server");
}
