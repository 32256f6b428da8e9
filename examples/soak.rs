//! Soak run (not part of CI): an axum server with `SwrLayer` on loopback, under HTTP load from a
//! hyper client in the same process, for a set time. The key space churns and is far bigger than
//! the memory budget; the origin fails 10 % of the time (500s, slow 503s, bodies cut off
//! mid-stream). Every few seconds it prints the process's RSS (from `/proc/self/statm`) next to
//! the cache's own figures, and at the end says whether RSS stayed flat once the budget was full.
//!
//! ```text
//! cargo run --release --example soak -- --secs 600
//! cargo run --release --example soak -- --secs 120 --budget-mib 16 --concurrency 32
//! ```
//!
//! Options: `--secs N` (600), `--budget-mib N` (16), `--keys N` (keys in the live window,
//! 20,000), `--churn N` (keys the window moves per second, 200), `--concurrency N` (32),
//! `--sample-secs N` (5), `--no-cache` (control run: the same server without the layer).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, Response, StatusCode};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_swr::SwrLayer;

#[derive(Debug, Clone)]
struct Options {
    secs: u64,
    budget_mib: u64,
    keys: u64,
    churn: u64,
    concurrency: usize,
    sample_secs: u64,
    /// Control run: the same server without the layer.
    no_cache: bool,
}

impl Options {
    fn parse() -> Self {
        let mut options = Self {
            secs: 600,
            budget_mib: 16,
            keys: 20_000,
            churn: 200,
            concurrency: 32,
            sample_secs: 5,
            no_cache: false,
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut i = 0;
        while i < args.len() {
            let value = || -> u64 {
                args.get(i + 1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{} needs a number", args[i]))
            };
            match args[i].as_str() {
                "--secs" => options.secs = value(),
                "--budget-mib" => options.budget_mib = value(),
                "--keys" => options.keys = value(),
                "--churn" => options.churn = value(),
                "--concurrency" => options.concurrency = value() as usize,
                "--sample-secs" => options.sample_secs = value().max(1),
                "--no-cache" => {
                    options.no_cache = true;
                    i += 1;
                    continue;
                }
                other => panic!("unknown option {other}"),
            }
            i += 2;
        }
        options
    }
}

/// What the origin did.
#[derive(Debug, Default)]
struct OriginCounts {
    calls: AtomicU64,
    internal_errors: AtomicU64,
    slow_unavailable: AtomicU64,
    cut_bodies: AtomicU64,
}

/// What the clients saw.
#[derive(Debug, Default)]
struct ClientCounts {
    requests: AtomicU64,
    ok: AtomicU64,
    by_kind: Mutex<BTreeMap<String, u64>>,
}

impl ClientCounts {
    fn error(&self, kind: impl Into<String>) {
        *self
            .by_kind
            .lock()
            .expect("unpoisoned")
            .entry(kind.into())
            .or_default() += 1;
    }
}

/// A body that sends half of its bytes and then fails, like a backend dying mid-response.
struct CutBody {
    first: Option<Bytes>,
    failed: bool,
}

impl http_body::Body for CutBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        if !self.failed {
            self.failed = true;
            return Poll::Ready(Some(Err(std::io::Error::other("backend died mid-body"))));
        }
        Poll::Ready(None)
    }
}

async fn item(Path(id): Path<u64>, State(origin): State<Arc<OriginCounts>>) -> Response<Body> {
    origin.calls.fetch_add(1, Ordering::Relaxed);
    let draw = fastrand::u32(0..100);
    let size = 2048 + fastrand::usize(0..4096);
    let mut text = format!("item {id} of {size} bytes: ").into_bytes();
    text.resize(size, b'x');
    let body = Bytes::from(text);
    let response = |status: StatusCode, body: Body| {
        let mut response = Response::new(body);
        *response.status_mut() = status;
        response
    };
    match draw {
        // 10 % failures: 5 % 500, 3 % slow 503, 2 % bodies cut off.
        0..=4 => {
            origin.internal_errors.fetch_add(1, Ordering::Relaxed);
            response(StatusCode::INTERNAL_SERVER_ERROR, Body::from("boom"))
        }
        5..=7 => {
            origin.slow_unavailable.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200)).await;
            response(StatusCode::SERVICE_UNAVAILABLE, Body::from("later"))
        }
        8..=9 => {
            origin.cut_bodies.fetch_add(1, Ordering::Relaxed);
            let half = body.slice(..body.len() / 2);
            let mut response = response(
                StatusCode::OK,
                Body::new(CutBody {
                    first: Some(half),
                    failed: false,
                }),
            );
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=30, stale-while-revalidate=30"),
            );
            response
        }
        _ => {
            let mut response = response(StatusCode::OK, Body::from(body));
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static(
                    "max-age=30, stale-while-revalidate=30, stale-if-error=120",
                ),
            );
            response
        }
    }
}

/// Resident set size in bytes, from `/proc/self/statm` (pages of 4 KiB).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: f64,
    rss: u64,
    cache_bytes: u64,
}

/// Least-squares slope of RSS over time, in MiB per minute.
fn slope_mib_per_min(samples: &[Sample]) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mean_t = samples.iter().map(|s| s.at).sum::<f64>() / n;
    let mean_r = samples.iter().map(|s| mib(s.rss)).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for s in samples {
        num += (s.at - mean_t) * (mib(s.rss) - mean_r);
        den += (s.at - mean_t).powi(2);
    }
    if den == 0.0 {
        0.0
    } else {
        num / den * 60.0
    }
}

#[tokio::main]
async fn main() {
    let options = Options::parse();
    let budget = options.budget_mib << 20;
    let layer = SwrLayer::new()
        .capacity_bytes(budget)
        .max_body_bytes(64 << 10)
        .refresh_timeout(Duration::from_secs(2));
    let handle = layer.handle();
    let origin = Arc::new(OriginCounts::default());
    let app = Router::new()
        .route("/item/{id}", get(item))
        .with_state(Arc::clone(&origin));
    let app = if options.no_cache {
        app
    } else {
        app.layer(layer)
    };

    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("an address");
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });

    println!(
        "soak: {} s against http://{addr}, budget {} MiB, live window {} keys moving {}/s, {} \
         clients",
        options.secs, options.budget_mib, options.keys, options.churn, options.concurrency
    );
    let started = Instant::now();
    let deadline = started + Duration::from_secs(options.secs);
    let clients = Arc::new(ClientCounts::default());
    let client: Client<_, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();

    let mut workers = Vec::new();
    for worker in 0..options.concurrency {
        let client = client.clone();
        let clients = Arc::clone(&clients);
        let options = options.clone();
        workers.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(worker as u64);
            while Instant::now() < deadline {
                // A window of live keys sliding forward: old keys go cold, new ones arrive.
                let base = started.elapsed().as_secs() * options.churn;
                // Skewed inside the window: the square of a uniform draw favours low offsets.
                let u = rng.f64();
                let id = base + (u * u * options.keys as f64) as u64;
                let uri = format!("http://{addr}/item/{id}")
                    .parse::<hyper::Uri>()
                    .expect("a uri");
                clients.requests.fetch_add(1, Ordering::Relaxed);
                let request = client.get(uri);
                match tokio::time::timeout(Duration::from_secs(10), async {
                    let response = request.await.map_err(|e| format!("request: {e}"))?;
                    let status = response.status();
                    let body = response
                        .into_body()
                        .collect()
                        .await
                        .map_err(|_| "body cut off".to_owned())?;
                    Ok::<_, String>((status, body.to_bytes()))
                })
                .await
                {
                    Err(_) => clients.error("timeout"),
                    Ok(Err(kind)) => clients.error(if kind.starts_with("request") {
                        "request error".to_owned()
                    } else {
                        kind
                    }),
                    Ok(Ok((status, body))) if status == StatusCode::OK => {
                        // The body names its key and its length: nothing mixed, nothing lost.
                        let expected = format!("item {id} of {} bytes: ", body.len());
                        if body.starts_with(expected.as_bytes()) {
                            clients.ok.fetch_add(1, Ordering::Relaxed);
                        } else if body.starts_with(format!("item {id} of ").as_bytes()) {
                            clients.error("200 WITH A TRUNCATED BODY");
                        } else {
                            clients.error("200 WITH ANOTHER KEY'S BODY");
                        }
                    }
                    Ok(Ok((status, _))) => clients.error(format!("status {}", status.as_u16())),
                }
            }
        }));
    }

    let mut samples = Vec::new();
    let mut budget_full_at: Option<f64> = None;
    println!(
        "{:>6} {:>9} {:>9} {:>9} {:>8} {:>10} {:>8} {:>9}",
        "t (s)", "RSS MiB", "cache MiB", "entries", "req/s", "requests", "errors", "evictions"
    );
    let mut last_requests = 0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(options.sample_secs)).await;
        let at = started.elapsed().as_secs_f64();
        let stats = handle.stats();
        let rss = rss_bytes();
        let requests = clients.requests.load(Ordering::Relaxed);
        let errors: u64 = clients.by_kind.lock().expect("unpoisoned").values().sum();
        if budget_full_at.is_none() && stats.bytes * 10 >= stats.capacity_bytes * 9 {
            budget_full_at = Some(at);
        }
        println!(
            "{:>6.0} {:>9.1} {:>9.1} {:>9} {:>8.0} {:>10} {:>8} {:>9}",
            at,
            mib(rss),
            mib(stats.bytes),
            stats.entries,
            (requests - last_requests) as f64 / options.sample_secs as f64,
            requests,
            errors,
            stats.evictions,
        );
        last_requests = requests;
        samples.push(Sample {
            at,
            rss,
            cache_bytes: stats.bytes,
        });
    }
    for worker in workers {
        let _ = worker.await;
    }
    server.abort();

    let stats = handle.stats();
    println!("\n== totals after {:.0} s", started.elapsed().as_secs_f64());
    println!(
        "requests {}, 200 with the right body {}, errors by kind {:?}",
        clients.requests.load(Ordering::Relaxed),
        clients.ok.load(Ordering::Relaxed),
        clients.by_kind.lock().expect("unpoisoned")
    );
    println!(
        "origin calls {} (500: {}, slow 503: {}, cut bodies: {})",
        origin.calls.load(Ordering::Relaxed),
        origin.internal_errors.load(Ordering::Relaxed),
        origin.slow_unavailable.load(Ordering::Relaxed),
        origin.cut_bodies.load(Ordering::Relaxed),
    );
    println!(
        "cache: fresh {}, stale {}, stale-if-error {}, misses {}, collapsed {}, refreshes {} \
         started / {} failed, stores {}, evictions {}, entries {}, bytes {:.1}/{:.1} MiB, loads \
         running {}, refreshes running {}",
        stats.fresh_hits,
        stats.stale_hits,
        stats.stale_if_error,
        stats.misses,
        stats.collapsed,
        stats.refreshes_started,
        stats.refreshes_failed,
        stats.stores,
        stats.evictions,
        stats.entries,
        mib(stats.bytes),
        mib(stats.capacity_bytes),
        stats.loads_running,
        stats.refreshes_running,
    );

    // Flat: after the budget filled and a minute more, RSS grows by under 10 % (and 8 MiB) to
    // the end, with a slope under 1 MiB/min.
    match budget_full_at {
        None => println!("verdict: the budget never filled; run longer or lower --budget-mib"),
        Some(full) => {
            let settled: Vec<Sample> = samples
                .iter()
                .copied()
                .filter(|s| s.at >= full + 60.0)
                .collect();
            match (settled.first(), settled.last()) {
                (Some(first), Some(last)) if settled.len() >= 3 => {
                    let growth = last.rss as f64 - first.rss as f64;
                    let slope = slope_mib_per_min(&settled);
                    let flat = growth < first.rss as f64 * 0.10
                        && mib(growth.max(0.0) as u64) < 8.0
                        && slope < 1.0;
                    let peak = settled.iter().map(|s| s.rss).max().unwrap_or(0);
                    println!(
                        "verdict: budget full at {full:.0} s; from {:.0} s to {:.0} s RSS went \
                         {:.1} → {:.1} MiB (peak {:.1}, {:+.1} MiB, slope {:+.2} MiB/min; cache \
                         {:.1} MiB): RSS {}",
                        first.at,
                        last.at,
                        mib(first.rss),
                        mib(last.rss),
                        mib(peak),
                        growth / (1024.0 * 1024.0),
                        slope,
                        mib(last.cache_bytes),
                        if flat { "stayed FLAT" } else { "KEPT GROWING" }
                    );
                }
                _ => println!("verdict: budget full at {full:.0} s, too late to judge; run longer"),
            }
        }
    }
}
