//! A caching reverse proxy: every request goes to the upstream through `SwrLayer` in its strict
//! shared-cache preset. A real use on its own (a cache in front of a slow partner API) and the
//! harness for the HTTP cache conformance suite (`tests/conformance/run.sh`).
//!
//! Interim responses are not forwarded: hyper-util's client reads an upstream's `103 Early
//! Hints` and returns only the final response, and hyper 1.x's server cannot send a 1xx from a
//! service (hyperium/hyper#3815, #4114 are open); it sends `100 Continue` itself when the body
//! of an `Expect: 100-continue` request is first read, here by the upstream client.
//!
//! ```sh
//! cargo run --release --example reverse_proxy -- \
//!     --listen 127.0.0.1:8102 --upstream http://127.0.0.1:8100
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{header, HeaderName, Request, Response, StatusCode, Uri};
use axum::Router;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceBuilder};
use tower_swr::SwrLayer;

/// Forwards requests to one upstream; an unreachable upstream is a 502.
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
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
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
            match client.request(Request::from_parts(parts, body)).await {
                Ok(response) => Ok(response.map(Body::new)),
                Err(error) => {
                    tracing::warn!(%error, "upstream request failed");
                    let mut response = Response::new(Body::from("upstream unavailable\n"));
                    *response.status_mut() = StatusCode::BAD_GATEWAY;
                    Ok(response)
                }
            }
        })
    }
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
        .expect("--listen takes ADDR:PORT");
    let base: Uri = arg("--upstream")
        .unwrap_or_else(|| "http://127.0.0.1:8100".into())
        .parse()
        .expect("--upstream takes a URL such as http://127.0.0.1:8100");

    let client = Client::builder(TokioExecutor::new()).build_http();
    let proxy = ServiceBuilder::new()
        .layer(
            // The upstream chooses by method itself: a HEAD miss may be asked as a GET and
            // stored, as nginx and Varnish do.
            SwrLayer::shared_cache().convert_head(true),
        )
        .service(Upstream { client, base });
    let app = Router::new().fallback_service(proxy);

    let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
    println!("caching proxy on http://{listen}");
    axum::serve(listener, app).await.expect("server");
}
