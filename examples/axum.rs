//! An axum server with a slow handler behind `SwrLayer`.
//!
//! ```sh
//! cargo run --example axum                      # listens on 127.0.0.1:3000
//! cargo run --example axum -- --listen 127.0.0.1:8080
//! curl -i http://127.0.0.1:3000/prices          # ~1 s: a miss, stored
//! curl -i http://127.0.0.1:3000/prices          # instant: Cache-Status: tower-swr; hit; ttl=9
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tower_swr::SwrLayer;

#[derive(Clone, Default)]
struct Origin {
    calls: Arc<AtomicU64>,
}

/// A slow partner API: one second per call.
async fn prices(State(origin): State<Origin>) -> impl IntoResponse {
    let call = origin.calls.fetch_add(1, Ordering::Relaxed) + 1;
    tokio::time::sleep(Duration::from_secs(1)).await;
    (
        [(
            header::CACHE_CONTROL,
            "max-age=10, stale-while-revalidate=60, stale-if-error=600",
        )],
        Json(serde_like_prices(call)),
    )
}

/// A handler that sets no caching headers: the layer's defaults apply (60 s + 120 s SWR).
async fn item(Path(id): Path<u32>, State(origin): State<Origin>) -> String {
    origin.calls.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    format!("item {id}\n")
}

async fn stats(State(layer): State<SwrLayer>) -> String {
    format!("{:#?}\n", layer.stats())
}

fn serde_like_prices(call: u64) -> std::collections::BTreeMap<&'static str, u64> {
    [("origin_call", call), ("price", 4200 + call)]
        .into_iter()
        .collect()
}

fn listen_addr() -> SocketAddr {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--listen" {
            let value = args
                .next()
                .expect("--listen needs an address, e.g. 127.0.0.1:3000");
            return value.parse().expect("--listen takes ADDR:PORT");
        }
        if let Some(value) = arg.strip_prefix("--listen=") {
            return value.parse().expect("--listen takes ADDR:PORT");
        }
    }
    SocketAddr::from(([127, 0, 0, 1], 3000))
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_swr=debug".into()),
        )
        .init();

    let cache = SwrLayer::new().x_cache_header(true);
    let origin = Origin::default();
    let app = Router::new()
        .route("/prices", get(prices))
        .route("/items/{id}", get(item))
        .with_state(origin)
        .layer(cache.clone())
        .merge(Router::new().route("/stats", get(stats)).with_state(cache));

    let addr = listen_addr();
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    println!("listening on http://{addr}");
    println!("try: curl -i http://{addr}/prices   (twice: the second answer is instant)");
    println!("     curl http://{addr}/stats");
    axum::serve(listener, app).await.expect("server");
}
