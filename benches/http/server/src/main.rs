//! The server `benches/http/run.sh` loads, on loopback:
//!
//! - `GET /static`: answers at once (the ceiling of this server on this machine);
//! - `GET /swr`: a handler that takes 50 ms, behind `SwrLayer` (default settings);
//! - `GET /slow`: the same handler with no cache (nginx's proxy_cache is put in front of it);
//! - `GET /swr-owned`: like `/swr` (its own SwrLayer), but the request's URI and headers are
//!   first copied out of hyper's read buffer (for the memory probe: a stored request template
//!   that shares that buffer keeps it alive);
//! - `GET /stats`: both SwrLayers' counters and sizes, and this process's RSS (not cached).
//!
//! Every route answers the same 1 KiB body with `Cache-Control: public, max-age=1,
//! stale-while-revalidate=60`, so both caches refresh once a second while serving.
//!
//! Usage: `tower-swr-http-bench-server ADDR [WORKER_THREADS]` (default `127.0.0.1:38080`, 1).

use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, Request, Uri};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use tower_swr::SwrLayer;

const CACHE_CONTROL: &str = "public, max-age=1, stale-while-revalidate=60";

fn body() -> Bytes {
    static BODY: [u8; 1024] = [b'x'; 1024];
    Bytes::from_static(&BODY)
}

fn answer() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, CACHE_CONTROL),
        ],
        body(),
    )
}

async fn fast() -> impl IntoResponse {
    answer()
}

async fn slow() -> impl IntoResponse {
    tokio::time::sleep(Duration::from_millis(50)).await;
    answer()
}

/// Copies the URI and header values into fresh allocations, so that nothing taken from the
/// request shares hyper's read buffer.
fn owned<B>(mut request: Request<B>) -> Request<B> {
    let uri = Uri::try_from(request.uri().to_string()).expect("valid uri");
    let headers: HeaderMap = request
        .headers()
        .iter()
        .map(|(name, value)| {
            let value = HeaderValue::from_bytes(value.as_bytes()).expect("valid value");
            (name.clone(), value)
        })
        .collect();
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    request
}

fn stats_text(prefix: &str, layer: &SwrLayer) -> String {
    let stats = layer.stats();
    format!(
        "{prefix}entries {}\n{prefix}bytes {}\n{prefix}fresh_hits {}\n{prefix}stale_hits {}\n{prefix}misses {}\n{prefix}collapsed {}\n{prefix}refreshes_started {}\n",
        stats.entries,
        stats.bytes,
        stats.fresh_hits,
        stats.stale_hits,
        stats.misses,
        stats.collapsed,
        stats.refreshes_started,
    )
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:38080".to_owned());
    let workers: usize = args
        .next()
        .map_or(1, |w| w.parse().expect("worker threads"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let swr = SwrLayer::new();
        let swr_owned = SwrLayer::new();
        let (stats_swr, stats_owned) = (swr.clone(), swr_owned.clone());
        let app = Router::new()
            .route("/static", get(fast))
            .route("/slow", get(slow))
            .merge(Router::new().route("/swr", get(slow)).layer(swr))
            .merge(
                Router::new()
                    .route("/swr-owned", get(slow))
                    .layer(swr_owned)
                    .layer(axum::middleware::map_request(
                        |r: Request<axum::body::Body>| async move { owned(r) },
                    )),
            )
            .route(
                "/stats",
                get(move || {
                    let text = format!(
                        "{}{}rss_kib {}\n",
                        stats_text("", &stats_swr),
                        stats_text("owned_", &stats_owned),
                        rss_kib()
                    );
                    async move { text }
                }),
            );
        let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
        eprintln!("listening on http://{addr} ({workers} worker threads)");
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .expect("serve");
    });
}
