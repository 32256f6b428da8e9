//! An axum server with slow handlers behind `SwrLayer`, Prometheus metrics, an admin purge
//! route and graceful shutdown.
//!
//! ```sh
//! cargo run --example axum                      # listens on 127.0.0.1:3000
//! cargo run --example axum -- --listen 127.0.0.1:8080
//! cargo run --example axum --features redis -- --redis redis://127.0.0.1:6379/  # instances share a cache
//! curl -i http://127.0.0.1:3000/prices          # ~1 s: a miss, stored
//! curl -i http://127.0.0.1:3000/prices          # instant: Cache-Status: tower-swr; hit; ttl=9
//! curl http://127.0.0.1:3000/metrics            # swr_requests_total{status="hit"} ...
//! curl -X POST 'http://127.0.0.1:3000/admin/purge?path=/prices'
//! curl -X POST 'http://127.0.0.1:3000/admin/purge?path=/prices&soft=1'
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tower_swr::{SwrHandle, SwrLayer};

#[derive(Clone, Default)]
struct Origin {
    calls: Arc<AtomicU64>,
}

/// A slow partner API: one second per call.
async fn prices(State(origin): State<Origin>) -> impl IntoResponse {
    let call = origin.calls.fetch_add(1, Ordering::Relaxed) + 1;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let body: std::collections::BTreeMap<&str, u64> =
        [("origin_call", call), ("price", 4200 + call)]
            .into_iter()
            .collect();
    (
        [(
            header::CACHE_CONTROL,
            "max-age=10, stale-while-revalidate=60, stale-if-error=600",
        )],
        Json(body),
    )
}

/// A handler that sets no caching headers: the layer's defaults apply (60 s + 120 s SWR).
async fn item(Path(id): Path<u32>, State(origin): State<Origin>) -> String {
    origin.calls.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    format!("item {id}\n")
}

#[derive(serde::Deserialize)]
struct Purge {
    path: String,
    soft: Option<u8>,
}

/// Purge one path (`soft=1`: mark it stale so it refreshes while still served).
async fn purge(State(admin): State<Admin>, Query(purge): Query<Purge>) -> String {
    let count = if purge.soft == Some(1) {
        admin.cache.soft_purge(&purge.path)
    } else {
        admin.cache.purge(&purge.path)
    };
    format!("purged {count} entries for {}\n", purge.path)
}

async fn metrics(State(admin): State<Admin>) -> String {
    // Gauges (entries, bytes) are brought up to date by reading the stats.
    let _ = admin.cache.stats();
    admin.prometheus.render()
}

/// The counters as JSON (`Stats` is `Serialize` with the default `serde` feature).
#[cfg(feature = "serde")]
async fn stats(State(admin): State<Admin>) -> axum::Json<tower_swr::Stats> {
    axum::Json(admin.cache.stats())
}

#[cfg(not(feature = "serde"))]
async fn stats(State(admin): State<Admin>) -> String {
    format!("{:#?}\n", admin.cache.stats())
}

#[derive(Clone)]
struct Admin {
    cache: SwrHandle,
    prometheus: PrometheusHandle,
}

/// The value of `--name VALUE` or `--name=VALUE` on the command line.
fn arg_value(name: &str) -> Option<String> {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == name {
            return Some(args.next().unwrap_or_default());
        }
        if let Some(value) = arg.strip_prefix(name).and_then(|v| v.strip_prefix('=')) {
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

fn listen_addr() -> SocketAddr {
    match arg_value("--listen") {
        Some(value) => value
            .parse()
            .unwrap_or_else(|_| usage("--listen takes ADDR:PORT, e.g. 127.0.0.1:3000")),
        None => SocketAddr::from(([127, 0, 0, 1], 3000)),
    }
}

/// `--redis URL`: share the cache with every instance on that Redis (feature `redis`).
fn with_redis(layer: SwrLayer) -> SwrLayer {
    let Some(url) = arg_value("--redis") else {
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
        usage("--redis needs the `redis` feature: cargo run --example axum --features redis -- --redis redis://127.0.0.1:6379/")
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_swr=debug".into()),
        )
        .init();
    // Install the recorder before the layer is built: the layer registers its counters once.
    let prometheus = PrometheusBuilder::new()
        .install_recorder()
        .expect("metrics recorder");

    let layer = SwrLayer::new()
        .x_cache_header(true)
        .stale_alert_age(Duration::from_secs(300));
    let layer = with_redis(layer);
    let admin = Admin {
        cache: layer.handle(),
        prometheus,
    };
    let app = Router::new()
        .route("/prices", get(prices))
        .route("/items/{id}", get(item))
        .with_state(Origin::default())
        .layer(layer)
        .merge(
            Router::new()
                .route("/metrics", get(metrics))
                .route("/stats", get(stats))
                .route("/admin/purge", post(purge))
                .with_state(admin.clone()),
        );

    let addr = listen_addr();
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    println!("listening on http://{addr}");
    println!("try: curl -i http://{addr}/prices   (twice: the second answer is instant)");
    println!("     curl http://{addr}/metrics");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .expect("server");
    // Let running background refreshes finish (or give up after 10 s).
    let finished = admin.cache.shutdown(Duration::from_secs(10)).await;
    println!("shut down; background refreshes finished: {finished}");
}

async fn shutdown_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
