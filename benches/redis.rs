//! Benchmarks of the Redis tier (feature `redis`; issue 14, issue 17 item 4), against a
//! `redis-server` of their own on a free loopback port. `benches/README.md` has the figures.
//!
//! - `l2 hit / raw GET`: a request answered from Redis (memory empty for its key: every request
//!   is a key loaded by another instance) through `SwrLayer`, against a raw redis-rs `GET` of
//!   the same stored bytes through the same kind of connection (a `ConnectionManager`);
//! - `l1 hit, tier on / off`: a fresh hit from memory with the tier configured, against the
//!   same layer without it;
//! - origin calls per expiry for three instances on one Redis under 10,000 concurrent requests
//!   spread over them: cold, stale (inside stale-while-revalidate) and expired past it.
//!
//! Every request goes the way axum calls a layer: `service.clone().oneshot(request)` with a
//! request built afresh, `Host` and `Accept` headers, the body collected. Paired rounds: each
//! round runs a batch of each variant in turn and the ratio of the two is taken per round, so
//! load from another process hits both alike; the median ratio and its quartiles are printed.
//!
//! Run: `cargo bench --features redis --bench redis` (skips, saying why, without redis-server).

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use redis::aio::ConnectionManager;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::runtime::Runtime;
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_swr::engine::{Freshness, Lifetime, Loaded, SwrCache};
use tower_swr::redis::{RedisTier, TierCodec};
use tower_swr::SwrLayer;

#[allow(dead_code)] // the tests' helper: the bench uses part of it
#[path = "../tests/common/redis_server.rs"]
mod redis_server;

use redis_server::RedisServer;

/// Paired rounds per comparison: 31, or `SWR_BENCH_ROUNDS` (fewer under a profiler).
fn rounds() -> usize {
    (std::env::var("SWR_BENCH_ROUNDS").ok())
        .and_then(|rounds| rounds.parse().ok())
        .unwrap_or(31)
}
const BATCH: usize = 400;
const BODY: usize = 1024;

fn request(path: &str) -> Request<Empty<Bytes>> {
    Request::builder()
        .uri(path)
        .header(header::HOST, "bench.local")
        .header(header::ACCEPT, "application/json")
        .body(Empty::new())
        .expect("request")
}

/// An origin answering 1 KiB with four headers after `delay`, counting its calls.
fn origin(
    delay: Duration,
    cache_control: &'static str,
    calls: Arc<AtomicUsize>,
) -> impl Service<
    Request<Empty<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    let body = Bytes::from(vec![b'x'; BODY]);
    service_fn(move |_request: Request<Empty<Bytes>>| {
        let (body, calls) = (body.clone(), calls.clone());
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let mut response = Response::new(Full::new(body));
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            headers.insert(header::ETAG, HeaderValue::from_static("\"v1\""));
            headers.insert(
                header::LAST_MODIFIED,
                HeaderValue::from_static("Tue, 01 Dec 2026 00:00:00 GMT"),
            );
            headers.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static(cache_control),
            );
            Ok::<_, Infallible>(response)
        }
    })
}

async fn get<S, B>(service: &S, path: &str) -> usize
where
    S: Service<Request<Empty<Bytes>>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let response = service
        .clone()
        .oneshot(request(path))
        .await
        .expect("answered");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    body.len()
}

/// A raw redis-rs `GET` of the stored bytes' copy number `i` (boxed: a function of its own
/// under a profiler, `raw_get::{closure}`).
fn raw_get(
    connection: &mut ConnectionManager,
    i: usize,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = usize> + '_>> {
    Box::pin(async move {
        let value: Vec<u8> = redis::cmd("GET")
            .arg(format!("raw:{i}"))
            .query_async(connection)
            .await
            .expect("GET");
        value.len()
    })
}

/// Entry `i` through the layer (boxed: `read_through::{closure}` under a profiler).
fn read_through<'a, S, B>(
    service: &'a S,
    i: usize,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = usize> + 'a>>
where
    S: Service<Request<Empty<Bytes>>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body + 'a,
    B::Error: std::fmt::Debug,
    S::Future: 'a,
{
    Box::pin(async move { get(service, &format!("/items/{i}?lang=en")).await })
}

/// Median and quartiles of `samples`.
fn spread(samples: &mut [f64]) -> (f64, f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at = |q: usize| samples[(samples.len() - 1) * q / 4];
    (at(2), at(1), at(3))
}

/// CPU time this thread has run, in ns (`/proc/thread-self/schedstat`; `None` off Linux). The
/// runtime is current-thread, so a batch's CPU in this process is the delta around it; the
/// rest of its wall time is waiting (the round trip, Redis's own work).
fn thread_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

/// Runs `a` and `b` (each timing a batch of `BATCH` and returning ns per call) in turns for
/// [`rounds`] rounds; prints and returns the per-round ratio b / a, and each one's CPU time
/// in this process per call.
fn paired(
    title: &str,
    names: (&str, &str),
    mut a: impl FnMut() -> f64,
    mut b: impl FnMut() -> f64,
) {
    a();
    b();
    let (mut ta, mut tb, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ca, mut cb) = (Vec::new(), Vec::new());
    // One batch and its CPU per call.
    // A batch's CPU share times its wall time per call (batches differ in size).
    let timed = |run: &mut dyn FnMut() -> f64, cpu: &mut Vec<f64>| {
        let (before, started) = (thread_cpu_ns(), Instant::now());
        let wall = run();
        let elapsed = started.elapsed().as_nanos() as f64;
        if let (Some(before), Some(after)) = (before, thread_cpu_ns()) {
            cpu.push(wall * (after - before) as f64 / elapsed.max(1.0));
        }
        wall
    };
    let rounds = rounds();
    for round in 0..rounds {
        // Alternate which goes first, so neither always follows the other.
        let (x, y) = if round % 2 == 0 {
            let x = timed(&mut a, &mut ca);
            (x, timed(&mut b, &mut cb))
        } else {
            let y = timed(&mut b, &mut cb);
            (timed(&mut a, &mut ca), y)
        };
        ta.push(x);
        tb.push(y);
        ratios.push(y / x);
    }
    let (ma, qa1, qa3) = spread(&mut ta);
    let (mb, qb1, qb3) = spread(&mut tb);
    let (r, r1, r3) = spread(&mut ratios);
    println!("\n== {title} ({rounds} paired rounds of {BATCH} requests)");
    println!("   {:<28} {ma:>10.0} ns  (IQR {qa1:.0}..{qa3:.0})", names.0);
    println!("   {:<28} {mb:>10.0} ns  (IQR {qb1:.0}..{qb3:.0})", names.1);
    println!(
        "   ratio {} / {}: median {r:.3} (IQR {r1:.3}..{r3:.3})",
        names.1, names.0
    );
    if !ca.is_empty() && !cb.is_empty() {
        let ((a_cpu, ..), (b_cpu, ..)) = (spread(&mut ca), spread(&mut cb));
        println!(
            "   CPU in this process per request (median): {} {a_cpu:.0} ns, {} {b_cpu:.0} ns",
            names.0, names.1
        );
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn l2_hit_against_raw_get(redis: &RedisServer) {
    let rt = runtime();
    let keys = BATCH * (rounds() + 2);
    let calls = Arc::new(AtomicUsize::new(0));
    let inner = origin(Duration::ZERO, "max-age=3600", calls.clone());
    let loader = SwrLayer::new().redis(redis.config()).layer(inner.clone());
    let reader = SwrLayer::new().redis(redis.config()).layer(inner);
    let client = redis.client();
    let mut raw: ConnectionManager = rt
        .block_on(ConnectionManager::new(client))
        .expect("connection");
    rt.block_on(async {
        for i in 0..keys {
            get(&loader, &format!("/items/{i}?lang=en")).await;
        }
        // Let the detached writes to Redis land.
        tokio::time::sleep(Duration::from_millis(500)).await;
    });
    // The bytes tower-swr stored for one entry, copied under keys of their own.
    let stored: Vec<u8> = rt.block_on(async {
        let names: Vec<Vec<u8>> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut raw)
            .await
            .expect("KEYS");
        let mut best = Vec::new();
        for name in names {
            let value: Option<Vec<u8>> = redis::cmd("HGET")
                .arg(&name)
                .arg("v")
                .query_async(&mut raw)
                .await
                .unwrap_or(None);
            if let Some(value) = value.filter(|v| v.len() > best.len()) {
                best = value;
            }
        }
        let mut pipe = redis::pipe();
        for i in 0..keys {
            pipe.set(format!("raw:{i}"), &best).ignore();
        }
        let () = pipe.query_async(&mut raw).await.expect("SET");
        best
    });
    assert!(
        stored.len() > BODY,
        "found the stored value ({} bytes)",
        stored.len()
    );
    let loaded = calls.load(Ordering::SeqCst);
    let before = command_counts(&rt, &mut raw);
    let (mut next_l2, mut next_raw) = (0usize, 0usize);
    paired(
        &format!(
            "L2 hit (memory empty) vs raw redis-rs GET of the same {} bytes",
            stored.len()
        ),
        ("raw GET", "L2 hit through SwrLayer"),
        || {
            let start = Instant::now();
            rt.block_on(async {
                for _ in 0..BATCH {
                    black_box(raw_get(&mut raw, next_raw % keys).await);
                    next_raw += 1;
                }
            });
            start.elapsed().as_nanos() as f64 / BATCH as f64
        },
        || {
            let start = Instant::now();
            rt.block_on(async {
                for _ in 0..BATCH {
                    black_box(read_through(&reader, next_l2).await);
                    next_l2 += 1;
                }
            });
            start.elapsed().as_nanos() as f64 / BATCH as f64
        },
    );
    assert!(
        next_l2 <= keys,
        "every L2 request was a key memory had not seen"
    );
    let after = command_counts(&rt, &mut raw);
    let mut per_request: Vec<String> = (after.iter())
        .filter(|(name, _)| *name != "cmdstat_get" && *name != "cmdstat_info")
        .filter_map(|(name, count)| {
            let earlier = before
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0, |(_, c)| *c);
            let delta = count - earlier;
            (delta > 0).then(|| format!("{} {:.2}", &name[8..], delta as f64 / next_l2 as f64))
        })
        .collect();
    per_request.sort();
    println!("   Redis commands per L2 hit: {}", per_request.join(", "));
    println!(
        "   Redis's own time per call (INFO commandstats, whole run): {}",
        command_times(&rt, &mut raw, &["cmdstat_get", "cmdstat_hmget"])
    );
    println!(
        "   origin calls while reading: {} (0: every answer came from Redis)",
        calls.load(Ordering::SeqCst) - loaded
    );
}

/// Redis's `usec_per_call` of the `commands` named, e.g. `get 0.61 µs, hmget 1.02 µs`.
fn command_times(rt: &Runtime, connection: &mut ConnectionManager, commands: &[&str]) -> String {
    let info: String = rt
        .block_on(
            redis::cmd("INFO")
                .arg("commandstats")
                .query_async(connection),
        )
        .expect("INFO");
    let times: Vec<String> = (info.lines())
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            commands.contains(&name).then_some(())?;
            let usec = rest
                .split(',')
                .find_map(|f| f.strip_prefix("usec_per_call="))?;
            Some(format!("{} {usec} µs", &name[8..]))
        })
        .collect();
    times.join(", ")
}

/// A minimal [`TierCodec`] for the engine on its own: `String` keys, `Bytes` values, the
/// lifetime as seven big-endian nanosecond counts in front of the value.
struct BytesCodec;

impl TierCodec<String, Bytes> for BytesCodec {
    fn key_bytes(&self, key: &String) -> Vec<u8> {
        key.as_bytes().to_vec()
    }

    fn decode_key(&self, bytes: &[u8]) -> Option<String> {
        String::from_utf8(bytes.to_vec()).ok()
    }

    fn encode(&self, _key: &String, value: &Bytes, lifetime: &Lifetime) -> Option<Vec<u8>> {
        let at = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut out = Vec::with_capacity(56 + value.len());
        for nanos in [
            at(lifetime.stored_at),
            lifetime.initial_age,
            at(lifetime.fresh_until),
            at(lifetime.stale_until),
            at(lifetime.error_until),
            at(lifetime.retain_until),
            lifetime.load_time,
        ] {
            out.extend_from_slice(&(nanos.as_nanos() as u64).to_be_bytes());
        }
        out.extend_from_slice(value);
        Some(out)
    }

    fn decode(&self, _key: &String, bytes: &[u8]) -> Option<(Bytes, Lifetime)> {
        let (head, value) = bytes.split_at_checked(56)?;
        let mut fields = head.chunks_exact(8).map(|field| {
            Duration::from_nanos(u64::from_be_bytes(field.try_into().expect("8 bytes")))
        });
        let mut next = || fields.next().expect("seven fields");
        let (stored_at, initial_age) = (UNIX_EPOCH + next(), next());
        let (fresh_until, stale_until) = (UNIX_EPOCH + next(), UNIX_EPOCH + next());
        let (error_until, retain_until) = (UNIX_EPOCH + next(), UNIX_EPOCH + next());
        let lifetime = Lifetime {
            stored_at,
            initial_age,
            fresh_until,
            stale_until,
            error_until,
            retain_until,
            load_time: next(),
        };
        Some((Bytes::copy_from_slice(value), lifetime))
    }
}

/// Entry `i` through the engine (boxed: `engine_read::{closure}` under a profiler).
fn engine_read<'a, F, Fut>(
    engine: &'a SwrCache<String, Bytes>,
    i: usize,
    load: F,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = usize> + 'a>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Loaded<Bytes>, Infallible>> + Send + 'static,
{
    Box::pin(async move {
        let found = (engine.get_or_load(format!("engine:{i}"), load).await).expect("answered");
        found.value.len()
    })
}

/// An engine (no HTTP) with the Redis tier.
fn engine(redis: &RedisServer) -> SwrCache<String, Bytes> {
    let tier = RedisTier::new(redis.config(), BytesCodec);
    SwrCache::builder()
        .shared_tier_timeout(tier.config().call_timeout())
        .shared_tier(Arc::new(tier))
        .build()
}

/// The engine alone (no HTTP): `get_or_load` of a key another engine loaded, memory empty,
/// against a raw `GET` of the same bytes: what the tier itself costs over Redis.
fn engine_l2_hit_against_raw_get(redis: &RedisServer) {
    let rt = runtime();
    let keys = BATCH * (rounds() + 2);
    let calls = Arc::new(AtomicUsize::new(0));
    let body = Bytes::from(vec![b'x'; BODY]);
    let load = |calls: &Arc<AtomicUsize>, body: &Bytes| {
        let (calls, body) = (calls.clone(), body.clone());
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Infallible>(Loaded::new(body, Freshness::new(Duration::from_secs(3600))))
        }
    };
    let (loader, reader) = (engine(redis), engine(redis));
    let mut raw: ConnectionManager = rt
        .block_on(ConnectionManager::new(redis.client()))
        .expect("connection");
    let stored = rt.block_on(async {
        for i in 0..keys {
            let _ = loader
                .get_or_load(format!("engine:{i}"), load(&calls, &body))
                .await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let value = BytesCodec
            .encode(
                &String::new(),
                &body,
                &loader.lifetime("engine:0").expect("stored"),
            )
            .expect("encoded");
        let mut pipe = redis::pipe();
        for i in 0..keys {
            pipe.set(format!("raw-engine:{i}"), &value).ignore();
        }
        let () = pipe.query_async(&mut raw).await.expect("SET");
        value.len()
    });
    let loaded = calls.load(Ordering::SeqCst);
    let (mut next_l2, mut next_raw) = (0usize, 0usize);
    paired(
        &format!("engine L2 hit (memory empty, no HTTP) vs raw redis-rs GET of {stored} bytes"),
        ("raw GET", "engine L2 hit"),
        || {
            let start = Instant::now();
            rt.block_on(async {
                for _ in 0..BATCH {
                    let value: Vec<u8> = redis::cmd("GET")
                        .arg(format!("raw-engine:{}", next_raw % keys))
                        .query_async(&mut raw)
                        .await
                        .expect("GET");
                    black_box(value.len());
                    next_raw += 1;
                }
            });
            start.elapsed().as_nanos() as f64 / BATCH as f64
        },
        || {
            let start = Instant::now();
            rt.block_on(async {
                for _ in 0..BATCH {
                    black_box(engine_read(&reader, next_l2, load(&calls, &body)).await);
                    next_l2 += 1;
                }
            });
            start.elapsed().as_nanos() as f64 / BATCH as f64
        },
    );
    println!(
        "   loader calls while reading: {} (0: every answer came from Redis)",
        calls.load(Ordering::SeqCst) - loaded
    );
}

/// `(cmdstat_NAME, calls)` of every command Redis has run.
fn command_counts(rt: &Runtime, connection: &mut ConnectionManager) -> Vec<(String, u64)> {
    let info: String = rt
        .block_on(
            redis::cmd("INFO")
                .arg("commandstats")
                .query_async(connection),
        )
        .expect("INFO");
    (info.lines())
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

fn l1_hit_tier_on_against_off(redis: &RedisServer) {
    let rt = runtime();
    let calls = Arc::new(AtomicUsize::new(0));
    let inner = origin(Duration::ZERO, "max-age=3600", calls);
    let on = SwrLayer::new().redis(redis.config()).layer(inner.clone());
    let off = SwrLayer::new().layer(inner);
    let path = "/v1/items/42?lang=en";
    rt.block_on(async {
        get(&on, path).await;
        get(&off, path).await;
    });
    let batch = |service: &_| {
        let start = Instant::now();
        rt.block_on(async {
            for _ in 0..BATCH * 20 {
                black_box(get(service, path).await);
            }
        });
        start.elapsed().as_nanos() as f64 / (BATCH * 20) as f64
    };
    paired(
        "L1 (memory) fresh hit, Redis tier on vs off",
        ("tier off", "tier on"),
        || batch(&off),
        || batch(&on),
    );
}

fn origin_calls_per_expiry(redis: &RedisServer) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("\n== origin calls per expiry: 3 instances on one Redis, 10,000 concurrent requests spread over them (origin 100 ms)");
    for (phase, cache_control, wait) in [
        (
            "stale (inside stale-while-revalidate)",
            "max-age=1, stale-while-revalidate=60",
            1_500,
        ),
        (
            "expired past stale-while-revalidate",
            "max-age=1, stale-while-revalidate=1",
            2_600,
        ),
    ] {
        let calls = Arc::new(AtomicUsize::new(0));
        let inner = origin(Duration::from_millis(100), cache_control, calls.clone());
        let instances: Vec<_> = (0..3)
            .map(|_| {
                SwrLayer::new()
                    .redis(redis.config())
                    .lock_timeout(Duration::from_secs(5))
                    .layer(inner.clone())
            })
            .collect();
        let path = format!("/expiry/{}", phase.len());
        burst(&rt, &instances, &path);
        let cold = calls.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(wait));
        burst(&rt, &instances, &path);
        let after = calls.load(Ordering::SeqCst) - cold;
        println!("   cold: {cold} origin call(s); then {phase}: {after} origin call(s)");
    }
}

/// 10,000 concurrent requests for `path`, spread over `instances`; waits for them all and then
/// a little for the refresh a stale burst started.
fn burst<S>(rt: &Runtime, instances: &[S], path: &str)
where
    S: Service<Request<Empty<Bytes>>, Response = Response<tower_swr::SwrBody<Full<Bytes>>>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Error: std::fmt::Debug,
    S::Future: Send,
{
    rt.block_on(async {
        let tasks: Vec<_> = (0..10_000)
            .map(|i| {
                let service = instances[i % instances.len()].clone();
                let path = path.to_owned();
                tokio::spawn(async move { get(&service, &path).await })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.expect("joined"), BODY);
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    });
}

fn main() {
    // `cargo test --benches` runs benches with `--bench`-less args: keep that quick.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("redis bench: run with `cargo bench --features redis --bench redis`");
        return;
    }
    let Some(redis) = RedisServer::start("the Redis benchmarks") else {
        return;
    };
    // `SWR_BENCH=l2|l2-engine|l1|expiry` runs one part (e.g. under a profiler).
    let only = std::env::var("SWR_BENCH").unwrap_or_default();
    let runs = |part: &str| only.is_empty() || only == part;
    if runs("l2") {
        l2_hit_against_raw_get(&redis);
    }
    if runs("l2-engine") {
        engine_l2_hit_against_raw_get(&redis);
    }
    if runs("l1") {
        l1_hit_tier_on_against_off(&redis);
    }
    if runs("expiry") {
        origin_calls_per_expiry(&redis);
    }
}
