//! Benchmarks of tower-swr (issue 6). `benches/README.md` says what each group measures, the
//! targets, and how to read the output.
//!
//! - `hit`: one GET answered from cache through `SwrService`, against the floor (a bare
//!   quick_cache `get` of an `Arc` entry + the same `Response` built from stored parts + the body
//!   collected) and against the bare inner service;
//! - `hit_oneshot`: the hit path as axum calls it — the service cloned per request and driven by
//!   `oneshot`, a new request per call in three shapes (origin-form without `Host`, with `Host` +
//!   `Accept`, absolute-form HTTP/2), against a minimal `HashMap` floor, also through a real
//!   `axum::Router`;
//! - `contention`: hits from 1 and 2 threads on 1 key and on 10,000 Zipf-distributed keys;
//! - `stale`: a stale answer while the origin takes 100 ms, against a fresh hit; and (printed)
//!   the number of origin calls when 10,000 concurrent requests hit one key;
//! - `miss`: a miss (coalescing + buffering + insert) against calling the origin directly, for
//!   1 KiB and 1 MiB bodies;
//! - `ttfb`: time to the first byte of a miss (the call until the first data frame) against
//!   calling the origin directly, for 1 KiB and 1 MiB bodies streamed in 16 KiB chunks (a
//!   `Pending` between chunks, as from a socket); and
//!   (printed) the origin, 10 chunks of 1,000 bytes 200 ms apart, on the wall clock;
//! - `memory` (printed): bytes held per entry beyond the body, for 100,000 entries of 1 KiB.
//!
//! Each comparison is also printed as ratios measured side by side: the variants run in turns
//! (round robin, many rounds) and the medians are compared, so noise from the shared machine
//! hits all of them alike.

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::fmt::Debug;
use std::future::Future;
use std::hint::black_box;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use tokio::runtime::Runtime;
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_swr::{CacheInfo, CacheStatus, SwrLayer};

// ---------------------------------------------------------------------------------------------
// A counting allocator, for the memory measurement only. Counting is off (one relaxed load of a
// flag that is never written while timing) except inside `memory()`.

struct CountingAlloc;

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static ALLOCATIONS: AtomicIsize = AtomicIsize::new(0);
/// Live allocations by exact size (the last slot: every size from `SIZES - 1` up, counted in
/// bytes), for the memory group's breakdown.
const SIZES: usize = 4097;
static BY_SIZE: [AtomicIsize; SIZES] = [const { AtomicIsize::new(0) }; SIZES];

fn count_size(size: usize, allocations: isize) {
    if size < SIZES - 1 {
        BY_SIZE[size].fetch_add(allocations, Ordering::Relaxed);
    } else {
        BY_SIZE[SIZES - 1].fetch_add(allocations * size as isize, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded to `System` unchanged; the counters have no effect on it.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let ptr = unsafe { System.alloc(layout) };
        if COUNTING.load(Ordering::Relaxed) && !ptr.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            count_size(layout.size(), 1);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if COUNTING.load(Ordering::Relaxed) && !ptr.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            count_size(layout.size(), 1);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
            ALLOCATIONS.fetch_sub(1, Ordering::Relaxed);
            count_size(layout.size(), -1);
        }
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's pointer, layout and size.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if COUNTING.load(Ordering::Relaxed) && !new.is_null() {
            LIVE_BYTES.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
            count_size(layout.size(), -1);
            count_size(new_size, 1);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

// ---------------------------------------------------------------------------------------------
// The request and response every variant uses.

const PATH: &str = "/v1/items/42?lang=en";
const HOST: &str = "bench.local";
const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

type ReqBody = Empty<Bytes>;

/// The same request for every variant: `GET /v1/items/42?lang=en`, `Host` and `Accept`.
fn request(uri: Uri) -> Request<ReqBody> {
    let mut request = Request::new(Empty::new());
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    headers.insert(header::HOST, HeaderValue::from_static(HOST));
    headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
    request
}

/// The origin's response head: status 200 and three headers.
fn response_headers(cache_control: &'static str, content_length: &HeaderValue) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    headers.insert(header::CONTENT_LENGTH, content_length.clone());
    headers
}

fn response<B>(body: B, cache_control: &'static str, len: &HeaderValue) -> Response<B> {
    let mut response = Response::new(body);
    *response.headers_mut() = response_headers(cache_control, len);
    response
}

const FRESH: &str = "public, max-age=3600";

fn body_of(len: usize) -> Bytes {
    Bytes::from(vec![b'x'; len])
}

/// A clonable origin that answers every request with the same 1 KiB body (shared `Bytes`).
fn origin_1k(
) -> impl Service<Request<ReqBody>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send>
       + Clone
       + Send
       + 'static {
    let body = body_of(KIB);
    let len = HeaderValue::from(KIB);
    service_fn(move |_req: Request<ReqBody>| {
        let response = response(Full::new(body.clone()), FRESH, &len);
        async move { Ok::<_, Infallible>(response) }
    })
}

/// `poll_ready` + `call` + the body collected: what a client of the service does.
async fn call_collect<S, B>(service: &mut S, request: Request<ReqBody>) -> (StatusCode, Bytes)
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
    S::Error: Debug,
    B: Body<Data = Bytes>,
    B::Error: Debug,
{
    std::future::poll_fn(|cx| service.poll_ready(cx))
        .await
        .expect("ready");
    let response = service.call(request).await.expect("response");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    black_box(&parts.headers);
    (parts.status, bytes)
}

/// Like [`call_collect`] but the body is read frame by frame and dropped (what a server writing
/// it out does), so that a chunked body is not copied into one buffer by the client.
async fn call_drain<S, B>(service: &mut S, request: Request<ReqBody>) -> usize
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
    S::Error: Debug,
    B: Body<Data = Bytes>,
    B::Error: Debug,
{
    std::future::poll_fn(|cx| service.poll_ready(cx))
        .await
        .expect("ready");
    let response = service.call(request).await.expect("response");
    let (parts, body) = response.into_parts();
    black_box(&parts.headers);
    let mut body = pin!(body);
    let mut total = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("frame").into_data() {
            total += data.len();
        }
    }
    total
}

fn current_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn multi_thread() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Times `n` sequential runs of `op` inside one `block_on`.
fn time_async<T>(rt: &Runtime, n: u64, mut op: impl AsyncFnMut() -> T) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..n {
            black_box(op().await);
        }
        start.elapsed()
    })
}

// ---------------------------------------------------------------------------------------------
// Side-by-side ratios, printed: round robin over the variants, `ROUNDS` rounds of about
// `ROUND_TIME` each, median time per iteration of each variant.

type Routine<'a> = Box<dyn FnMut(u64) -> Duration + 'a>;

const ROUNDS: usize = 31;
const ROUND_TIME: Duration = Duration::from_millis(40);

fn side_by_side(title: &str, variants: &mut [(&str, Routine<'_>)]) -> Vec<f64> {
    if quick_mode() || profiling() {
        return Vec::new();
    }
    // Calibrate the batch size of each variant to about ROUND_TIME.
    let batches: Vec<u64> = variants
        .iter_mut()
        .map(|(_, routine)| {
            let mut n = 1u64;
            loop {
                let took = routine(n);
                if took >= ROUND_TIME / 4 || n >= 1 << 30 {
                    let per = took.as_secs_f64() / n as f64;
                    break ((ROUND_TIME.as_secs_f64() / per) as u64).max(1);
                }
                n *= 4;
            }
        })
        .collect();
    let mut samples = vec![Vec::with_capacity(ROUNDS); variants.len()];
    for _ in 0..ROUNDS {
        for (i, (_, routine)) in variants.iter_mut().enumerate() {
            let took = routine(batches[i]);
            samples[i].push(took.as_secs_f64() * 1e9 / batches[i] as f64);
        }
    }
    let medians: Vec<f64> = samples
        .iter_mut()
        .map(|s| {
            s.sort_by(f64::total_cmp);
            s[s.len() / 2]
        })
        .collect();
    println!("\n== side by side: {title} ({ROUNDS} interleaved rounds, median per iteration)");
    for (i, (name, _)) in variants.iter().enumerate() {
        let q1 = samples[i][samples[i].len() / 4];
        let q3 = samples[i][samples[i].len() * 3 / 4];
        println!(
            "   {name:<34} {:>10.1} ns  (IQR {:.1}..{:.1})  ratio to {}: {:.2}",
            medians[i],
            q1,
            q3,
            variants[0].0,
            medians[i] / medians[0]
        );
    }
    medians
}

// ---------------------------------------------------------------------------------------------
// (a) The hit path.

/// What the floor stores: the response's parts and body, behind an `Arc`.
struct Stored {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
    stored_at: Instant,
}

type FloorCache = quick_cache::sync::Cache<String, Arc<Stored>>;

fn floor_cache(keys: impl IntoIterator<Item = String>) -> FloorCache {
    floor_cache_with(keys, false)
}

/// With `placeholders`, the stored headers already hold `Age` and `Cache-Status`, so that a hit
/// replaces values in place instead of growing the cloned map.
fn floor_cache_with(keys: impl IntoIterator<Item = String>, placeholders: bool) -> FloorCache {
    let keys: Vec<String> = keys.into_iter().collect();
    let cache = FloorCache::new((keys.len() * 2).max(16));
    let len = HeaderValue::from(KIB);
    let body = body_of(KIB);
    let mut headers = response_headers(FRESH, &len);
    if placeholders {
        headers.insert(header::AGE, age_value(0));
        headers.insert(
            tower_swr::CACHE_STATUS.clone(),
            HeaderValue::from_static("tower-swr; hit"),
        );
    }
    for key in keys {
        cache.insert(
            key,
            Arc::new(Stored {
                status: StatusCode::OK,
                version: Version::HTTP_11,
                headers: headers.clone(),
                body: body.clone(),
                stored_at: Instant::now(),
            }),
        );
    }
    cache
}

/// The floor: look the request's target up in quick_cache (borrowed `&str`, no allocation) and
/// build the same response from the stored parts and `Bytes`.
fn floor_respond(cache: &FloorCache, request: &Request<ReqBody>) -> Response<Full<Bytes>> {
    let key = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let stored = cache.get(key).expect("floor entry");
    let mut response = Response::new(Full::new(stored.body.clone()));
    *response.status_mut() = stored.status;
    *response.version_mut() = stored.version;
    *response.headers_mut() = stored.headers.clone();
    response
}

/// An `Age` value without allocating: static strings for the first hour, formatted after.
fn age_value(secs: u64) -> HeaderValue {
    static TABLE: std::sync::OnceLock<Vec<HeaderValue>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        (0..3600u64)
            .map(|s| HeaderValue::from_static(Box::leak(s.to_string().into_boxed_str())))
            .collect()
    });
    table
        .get(secs as usize)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(secs))
}

/// What a hit must add, done cheaply: the stored map already holds `Age` and `Cache-Status`
/// (see [`floor_cache_with`]); `Age` is replaced in place with a static value.
fn floor_respond_presized(cache: &FloorCache, request: &Request<ReqBody>) -> Response<Full<Bytes>> {
    let key = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let stored = cache.get(key).expect("floor entry");
    let mut response = Response::new(Full::new(stored.body.clone()));
    *response.status_mut() = stored.status;
    *response.version_mut() = stored.version;
    *response.headers_mut() = stored.headers.clone();
    response
        .headers_mut()
        .insert(header::AGE, age_value(stored.stored_at.elapsed().as_secs()));
    response
}

/// Stands in for `CacheInfo` (which only the crate can build): the same size, so the extension
/// costs the same allocations.
#[derive(Clone, Debug)]
#[allow(dead_code)] // read by nobody: only its insertion and drop are measured
struct InfoLike {
    status: u8,
    age: Option<Duration>,
    stored_at: Option<tokio::time::Instant>,
    refreshing: bool,
    stored: bool,
}

/// [`floor_respond_presized`] plus an extension the size of `CacheInfo`: what the core issue
/// requires of every hit, done as cheaply as the floor does the rest.
fn floor_respond_presized_info(
    cache: &FloorCache,
    request: &Request<ReqBody>,
) -> Response<Full<Bytes>> {
    let mut response = floor_respond_presized(cache, request);
    response.extensions_mut().insert(InfoLike {
        status: 0,
        age: Some(Duration::ZERO),
        stored_at: None,
        refreshing: false,
        stored: true,
    });
    response
}

/// The floor plus what a hit must add, done naively: `Age` formatted into a new value and a
/// static `Cache-Status` appended (the cloned map grows).
fn floor_respond_with_status(
    cache: &FloorCache,
    request: &Request<ReqBody>,
) -> Response<Full<Bytes>> {
    let key = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let stored = cache.get(key).expect("floor entry");
    let mut response = Response::new(Full::new(stored.body.clone()));
    *response.status_mut() = stored.status;
    *response.version_mut() = stored.version;
    *response.headers_mut() = stored.headers.clone();
    let headers = response.headers_mut();
    headers.insert(
        header::AGE,
        HeaderValue::from(stored.stored_at.elapsed().as_secs()),
    );
    headers.append(
        tower_swr::CACHE_STATUS.clone(),
        HeaderValue::from_static("tower-swr; hit"),
    );
    response
}

async fn collect(response: Response<Full<Bytes>>) -> (StatusCode, Bytes) {
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    black_box(&parts.headers);
    (parts.status, bytes)
}

fn bench_hit(c: &mut Criterion) {
    if !wanted("hit", &["tower-swr", "tower-swr-no-info", "floor", "bare"]) {
        return;
    }
    let rt = current_thread();
    let uri = Uri::from_static(PATH);

    let layer = SwrLayer::new();
    let mut swr = layer.layer(origin_1k());
    let (status, body) = rt.block_on(call_collect(&mut swr, request(uri.clone())));
    assert_eq!((status, body.len()), (StatusCode::OK, KIB));
    assert_eq!(layer.stats().stores, 1, "the warm-up request was stored");
    // The same, without the `CacheInfo` extension (`cache_info_extension(false)`).
    let lean = SwrLayer::new().cache_info_extension(false);
    let mut swr_lean = lean.layer(origin_1k());
    rt.block_on(call_collect(&mut swr_lean, request(uri.clone())));
    assert_eq!(lean.stats().stores, 1, "the warm-up request was stored");
    let mut bare = origin_1k();
    let floor = floor_cache([PATH.to_owned()]);
    let floor_presized = floor_cache_with([PATH.to_owned()], true);

    // Every variant answers the same request with the same 1 KiB body.
    for response in [
        rt.block_on(async {
            std::future::poll_fn(|cx| swr.poll_ready(cx)).await.unwrap();
            swr.call(request(uri.clone())).await.unwrap().map(|_| ())
        }),
        floor_respond(&floor, &request(uri.clone())).map(|_| ()),
    ] {
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_LENGTH],
            HeaderValue::from(KIB)
        );
    }

    let mut hit_swr = |n| {
        time_async(&rt, n, async || {
            call_collect(&mut swr, request(uri.clone())).await
        })
    };
    let mut hit_swr_lean = |n| {
        time_async(&rt, n, async || {
            call_collect(&mut swr_lean, request(uri.clone())).await
        })
    };
    let mut hit_floor = |n| {
        time_async(&rt, n, async || {
            let request = request(uri.clone());
            collect(floor_respond(&floor, &request)).await
        })
    };
    let mut hit_floor_status = |n| {
        time_async(&rt, n, async || {
            let request = request(uri.clone());
            collect(floor_respond_with_status(&floor, &request)).await
        })
    };
    let mut hit_floor_presized = |n| {
        time_async(&rt, n, async || {
            let request = request(uri.clone());
            collect(floor_respond_presized(&floor_presized, &request)).await
        })
    };
    let mut hit_floor_info = |n| {
        time_async(&rt, n, async || {
            let request = request(uri.clone());
            collect(floor_respond_presized_info(&floor_presized, &request)).await
        })
    };
    let mut hit_bare = |n| {
        time_async(&rt, n, async || {
            call_collect(&mut bare, request(uri.clone())).await
        })
    };

    // For instruction counts under callgrind (see benches/README.md).
    if let Some((variant, n)) = count_request() {
        match variant.as_str() {
            "tower-swr" => hit_swr(n),
            "tower-swr-no-info" => hit_swr_lean(n),
            "floor" => hit_floor(n),
            "floor+status" => hit_floor_status(n),
            "floor+status-presized" => hit_floor_presized(n),
            "floor+status+info" => hit_floor_info(n),
            "bare" => hit_bare(n),
            _ => return,
        };
        std::process::exit(0);
    }

    let mut group = c.benchmark_group("hit");
    group.throughput(Throughput::Elements(1));
    group.bench_function("tower-swr", |b| b.iter_custom(&mut hit_swr));
    group.bench_function("tower-swr, no CacheInfo", |b| {
        b.iter_custom(&mut hit_swr_lean)
    });
    group.bench_function("floor (quick_cache get + build)", |b| {
        b.iter_custom(&mut hit_floor)
    });
    group.bench_function("floor + Age + Cache-Status, appended", |b| {
        b.iter_custom(&mut hit_floor_status)
    });
    group.bench_function("floor + Age + Cache-Status, pre-sized", |b| {
        b.iter_custom(&mut hit_floor_presized)
    });
    group.bench_function(
        "floor + Age + Cache-Status, pre-sized + CacheInfo-sized extension",
        |b| b.iter_custom(&mut hit_floor_info),
    );
    group.bench_function("bare inner service", |b| b.iter_custom(&mut hit_bare));
    group.finish();

    side_by_side(
        "hit path, 1 KiB (target: tower-swr <= 1.5x floor)",
        &mut [
            ("floor", Box::new(&mut hit_floor)),
            ("tower-swr", Box::new(&mut hit_swr)),
            ("tower-swr, no CacheInfo", Box::new(&mut hit_swr_lean)),
            (
                "floor + Age + Cache-Status, appended",
                Box::new(&mut hit_floor_status),
            ),
            (
                "floor + Age + Cache-Status, pre-sized",
                Box::new(&mut hit_floor_presized),
            ),
            (
                "floor + Age + Cache-Status, pre-sized + extension",
                Box::new(&mut hit_floor_info),
            ),
            ("bare inner service", Box::new(&mut hit_bare)),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// (a2) The hit path as axum calls it: the service cloned per request and driven by `oneshot`,
// the request built afresh each time, in the three shapes a server hands over.

/// The request shapes of `hit_oneshot`: (name in benchmark ids and `SWR_BENCH_COUNT`, what).
const SHAPES: [(&str, &str); 3] = [
    ("path", "GET /item?id=42, no Host"),
    ("host", "GET /item?id=42, Host + Accept (HTTP/1 style)"),
    (
        "absolute",
        "GET http://example.com/item?id=42 as HTTP/2, no Host (how hyper hands h2 over)",
    ),
];

/// The variants of `hit_oneshot`: (name in benchmark ids and `SWR_BENCH_COUNT` after
/// `oneshot-`, what).
const ONESHOT_VARIANTS: [(&str, &str); 5] = [
    ("floor", "floor (HashMap + Age + Cache-Status)"),
    ("tower-swr", "tower-swr"),
    ("tower-swr-no-info", "tower-swr, no CacheInfo"),
    ("axum-floor", "axum Router + floor layer"),
    ("axum", "axum Router + tower-swr"),
];

const ONESHOT_PATH: &str = "/item?id=42";
const ONESHOT_ABSOLUTE: &str = "http://example.com/item?id=42";
const ONESHOT_HOST: &str = "example.com";

/// A new request of `shape` (see [`SHAPES`]); the URI is parsed from its static text each time.
fn shaped_request(shape: &str) -> Request<ReqBody> {
    let mut request = Request::new(Empty::new());
    match shape {
        "path" => *request.uri_mut() = Uri::from_static(ONESHOT_PATH),
        "host" => {
            *request.uri_mut() = Uri::from_static(ONESHOT_PATH);
            let headers = request.headers_mut();
            headers.insert(header::HOST, HeaderValue::from_static(ONESHOT_HOST));
            headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        }
        "absolute" => {
            *request.uri_mut() = Uri::from_static(ONESHOT_ABSOLUTE);
            *request.version_mut() = Version::HTTP_2;
        }
        other => panic!("unknown request shape {other}"),
    }
    request
}

/// The origin's four headers in `hit_oneshot`.
fn oneshot_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::ETAG, HeaderValue::from_static("\"item-42-v1\""));
    headers.insert(
        header::LAST_MODIFIED,
        HeaderValue::from_static("Mon, 23 Nov 2026 08:00:00 GMT"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=3600"),
    );
    headers
}

fn oneshot_body() -> Bytes {
    static BODY: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    BODY.get_or_init(|| body_of(KIB)).clone()
}

/// The tower origin of `hit_oneshot`: 1 KiB (one shared `Bytes`) and [`oneshot_headers`].
fn oneshot_origin(
) -> impl Service<Request<ReqBody>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send>
       + Clone
       + Send
       + 'static {
    service_fn(move |_req: Request<ReqBody>| {
        let mut response = Response::new(Full::new(oneshot_body()));
        *response.headers_mut() = oneshot_headers();
        async move { Ok::<_, Infallible>(response) }
    })
}

/// The same origin as an axum handler.
async fn oneshot_handler() -> axum::response::Response {
    let mut response = axum::response::Response::new(axum::body::Body::from(oneshot_body()));
    *response.headers_mut() = oneshot_headers();
    response
}

/// The floor of `hit_oneshot`: a minimal cache answering from a `HashMap` keyed by the
/// request's path and query (borrowed `&str`), with the stored map already holding `Age` and
/// `Cache-Status` so a hit replaces `Age` in place (no growth) with a static value. Like any cache layer it
/// holds its inner service (for misses, which never happen here) and is cloned with it per
/// request: outside axum the inner is the tower origin (a closure, free to clone), inside axum
/// it is axum's boxed route, as for tower-swr.
#[derive(Clone)]
struct OneshotFloor<S> {
    entries: Arc<FloorEntries>,
    #[allow(dead_code)] // held and cloned as a miss would need it; every request here hits
    inner: S,
}

type FloorEntries = std::collections::HashMap<String, Arc<Stored>>;

fn oneshot_floor_entries() -> Arc<FloorEntries> {
    let mut headers = oneshot_headers();
    headers.insert(header::AGE, age_value(0));
    headers.insert(
        tower_swr::CACHE_STATUS.clone(),
        HeaderValue::from_static("floor; hit"),
    );
    let stored = Arc::new(Stored {
        status: StatusCode::OK,
        version: Version::HTTP_11,
        headers,
        body: oneshot_body(),
        stored_at: Instant::now(),
    });
    Arc::new([(ONESHOT_PATH.to_owned(), stored)].into_iter().collect())
}

impl<S, B> Service<Request<B>> for OneshotFloor<S> {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let key = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let stored = self.entries.get(key).expect("floor entry");
        let mut response = Response::new(Full::new(stored.body.clone()));
        *response.status_mut() = stored.status;
        *response.version_mut() = stored.version;
        *response.headers_mut() = stored.headers.clone();
        // Replaced through `get_mut`: `insert` reserves first, and a clone of this 6-header map
        // sits at its load limit, so `insert` would grow it even to replace (+1,000
        // instructions, measured).
        if let Some(age) = response.headers_mut().get_mut(header::AGE) {
            *age = age_value(stored.stored_at.elapsed().as_secs());
        }
        std::future::ready(Ok(response))
    }
}

/// [`OneshotFloor`] as a layer.
#[derive(Clone)]
struct OneshotFloorLayer(Arc<FloorEntries>);

impl<S> Layer<S> for OneshotFloorLayer {
    type Service = OneshotFloor<S>;

    fn layer(&self, inner: S) -> OneshotFloor<S> {
        OneshotFloor {
            entries: self.0.clone(),
            inner,
        }
    }
}

/// `service.clone().oneshot(request)` and the body collected: what axum does per request.
async fn oneshot_collect<S, B>(service: &S, request: Request<ReqBody>) -> (StatusCode, Bytes)
where
    S: Service<Request<ReqBody>, Response = Response<B>> + Clone,
    S::Error: Debug,
    B: Body<Data = Bytes>,
    B::Error: Debug,
{
    let response = service.clone().oneshot(request).await.expect("response");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    black_box(&parts.headers);
    (parts.status, bytes)
}

/// Checks that `service` answers `shape` with 200, the 1 KiB body, the origin's `ETag`, `Age`
/// and a `Cache-Status` hit.
fn check_oneshot_hit<S, B>(rt: &Runtime, label: &str, service: &S, shape: &str)
where
    S: Service<Request<ReqBody>, Response = Response<B>> + Clone,
    S::Error: Debug,
    B: Body<Data = Bytes>,
    B::Error: Debug,
{
    rt.block_on(async {
        let response = service
            .clone()
            .oneshot(shaped_request(shape))
            .await
            .expect("response");
        let headers = response.headers();
        assert_eq!(response.status(), StatusCode::OK, "{label}/{shape}");
        assert_eq!(headers[header::ETAG], "\"item-42-v1\"", "{label}/{shape}");
        assert!(headers.contains_key(header::AGE), "{label}/{shape}: Age");
        let status = headers[&tower_swr::CACHE_STATUS].to_str().expect("ascii");
        assert!(status.contains("hit"), "{label}/{shape}: {status}");
        let body = response.into_body().collect().await.expect("body");
        assert_eq!(body.to_bytes().len(), KIB, "{label}/{shape}");
    });
}

fn bench_hit_oneshot(c: &mut Criterion) {
    let parts: Vec<&str> = ONESHOT_VARIANTS
        .iter()
        .map(|(name, _)| *name)
        .chain(SHAPES.iter().map(|(name, _)| *name))
        .collect();
    if !wanted("hit_oneshot", &parts) {
        return;
    }
    let rt = current_thread();

    let floor_layer = OneshotFloorLayer(oneshot_floor_entries());
    let floor = floor_layer.layer(oneshot_origin());
    let layer = SwrLayer::new();
    let swr = layer.layer(oneshot_origin());
    let lean = SwrLayer::new().cache_info_extension(false);
    let swr_lean = lean.layer(oneshot_origin());
    let axum_layer = SwrLayer::new();
    // `with_state(())` turns the handlers into routes once, as `axum::serve` does (through
    // `into_make_service`); without it a bare `Router` does so on every request, layer
    // included (+2,400 instructions per request, measured).
    let app = axum::Router::new()
        .route("/item", axum::routing::get(oneshot_handler))
        .layer(axum_layer.clone())
        .with_state(());
    let app_floor = axum::Router::new()
        .route("/item", axum::routing::get(oneshot_handler))
        .layer(floor_layer)
        .with_state(());

    // Warm every cache with every shape (a shape may be its own key), then check that each
    // variant answers each shape from cache.
    rt.block_on(async {
        for (shape, _) in SHAPES {
            oneshot_collect(&swr, shaped_request(shape)).await;
            oneshot_collect(&swr_lean, shaped_request(shape)).await;
            oneshot_collect(&app, shaped_request(shape)).await;
        }
    });
    for (shape, _) in SHAPES {
        check_oneshot_hit(&rt, "floor", &floor, shape);
        check_oneshot_hit(&rt, "tower-swr", &swr, shape);
        check_oneshot_hit(&rt, "tower-swr-no-info", &swr_lean, shape);
        check_oneshot_hit(&rt, "axum-floor", &app_floor, shape);
        check_oneshot_hit(&rt, "axum", &app, shape);
    }
    let misses: Vec<u64> = [&layer, &lean, &axum_layer]
        .iter()
        .map(|l| l.stats().misses)
        .collect();

    for (shape, about) in SHAPES {
        let mut hit_floor = |n| {
            time_async(&rt, n, async || {
                oneshot_collect(&floor, shaped_request(shape)).await
            })
        };
        let mut hit_swr = |n| {
            time_async(&rt, n, async || {
                oneshot_collect(&swr, shaped_request(shape)).await
            })
        };
        let mut hit_swr_lean = |n| {
            time_async(&rt, n, async || {
                oneshot_collect(&swr_lean, shaped_request(shape)).await
            })
        };
        let mut hit_axum_floor = |n| {
            time_async(&rt, n, async || {
                oneshot_collect(&app_floor, shaped_request(shape)).await
            })
        };
        let mut hit_axum = |n| {
            time_async(&rt, n, async || {
                oneshot_collect(&app, shaped_request(shape)).await
            })
        };

        // For instruction counts under callgrind: `oneshot-<variant>/<shape>`.
        if let Some((variant, n)) = count_request() {
            let Some((name, wanted_shape)) = variant
                .strip_prefix("oneshot-")
                .and_then(|v| v.split_once('/'))
            else {
                return;
            };
            if wanted_shape != shape {
                continue;
            }
            match name {
                "floor" => hit_floor(n),
                "tower-swr" => hit_swr(n),
                "tower-swr-no-info" => hit_swr_lean(n),
                "axum-floor" => hit_axum_floor(n),
                "axum" => hit_axum(n),
                _ => panic!("unknown hit_oneshot variant {name}"),
            };
            std::process::exit(0);
        }

        let mut group = c.benchmark_group("hit_oneshot");
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("floor/{shape}"), |b| b.iter_custom(&mut hit_floor));
        group.bench_function(format!("tower-swr/{shape}"), |b| {
            b.iter_custom(&mut hit_swr)
        });
        group.bench_function(format!("tower-swr-no-info/{shape}"), |b| {
            b.iter_custom(&mut hit_swr_lean)
        });
        group.bench_function(format!("axum-floor/{shape}"), |b| {
            b.iter_custom(&mut hit_axum_floor)
        });
        group.bench_function(format!("axum/{shape}"), |b| b.iter_custom(&mut hit_axum));
        group.finish();

        // The printed block follows a filter naming a shape (`hit_oneshot/absolute`).
        let shape_selected = filter().is_none_or(|f| {
            f.contains(shape) || !SHAPES.iter().any(|(other, _)| f.contains(other))
        });
        if shape_selected {
            side_by_side(
                &format!("hit path as axum calls it, svc.clone().oneshot(request), {about}"),
                &mut [
                    (ONESHOT_VARIANTS[0].1, Box::new(&mut hit_floor)),
                    (ONESHOT_VARIANTS[1].1, Box::new(&mut hit_swr)),
                    (ONESHOT_VARIANTS[2].1, Box::new(&mut hit_swr_lean)),
                    (ONESHOT_VARIANTS[3].1, Box::new(&mut hit_axum_floor)),
                    (ONESHOT_VARIANTS[4].1, Box::new(&mut hit_axum)),
                ],
            );
        }
    }
    let after: Vec<u64> = [&layer, &lean, &axum_layer]
        .iter()
        .map(|l| l.stats().misses)
        .collect();
    assert_eq!(misses, after, "the timed runs were all hits");
}

// ---------------------------------------------------------------------------------------------
// (b) Contention: hits from several threads, on 1 key and on 10,000 Zipf-distributed keys.

const ZIPF_KEYS: usize = 10_000;
const ZIPF_S: f64 = 1.0;
const SEQUENCE: usize = 1 << 16;

fn key_path(i: usize) -> String {
    format!("/v1/items/{i}?lang=en")
}

/// `SEQUENCE` key indices drawn from a Zipf(`ZIPF_S`) distribution over `keys` keys.
fn zipf_sequence(keys: usize, seed: u64) -> Vec<usize> {
    let weights: Vec<f64> = (1..=keys).map(|k| 1.0 / (k as f64).powf(ZIPF_S)).collect();
    let total: f64 = weights.iter().sum();
    let mut cdf = Vec::with_capacity(keys);
    let mut acc = 0.0;
    for w in weights {
        acc += w / total;
        cdf.push(acc);
    }
    // xorshift64*: deterministic, good enough for picking keys.
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..SEQUENCE)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let r = (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64;
            cdf.partition_point(|&p| p < r).min(keys - 1)
        })
        .collect()
}

/// Polls a future that must be ready at once (a hit), with no runtime.
fn now<F: Future>(future: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut cx) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a hit must be ready at once"),
    }
}

/// One hit through a service, polled without a runtime; the body is collected.
fn hit_now<S, B>(service: &mut S, request: Request<ReqBody>) -> usize
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
    S::Error: Debug,
    B: Body<Data = Bytes>,
    B::Error: Debug,
{
    let (_, bytes) = now(call_collect(service, request));
    bytes.len()
}

/// Runs `op(i)` for `i in 0..iters` on each of `threads` threads at once; returns the wall time
/// from the common start to the last thread's end.
fn run_threads<Op>(threads: usize, iters: u64, make: impl Fn(usize) -> Op) -> Duration
where
    Op: FnMut(u64) + Send,
{
    let barrier = Barrier::new(threads + 1);
    let ops: Vec<Op> = (0..threads).map(&make).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = ops
            .into_iter()
            .map(|mut op| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    for i in 0..iters {
                        op(i);
                    }
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        for handle in handles {
            handle.join().expect("worker");
        }
        start.elapsed()
    })
}

fn bench_contention(c: &mut Criterion) {
    if !wanted(
        "contention",
        &["tower-swr", "floor", "key", "zipf", "threads"],
    ) {
        return;
    }
    let rt = current_thread();
    let layer = SwrLayer::new();
    let swr = layer.layer(origin_1k());
    let uris: Vec<Uri> = (0..ZIPF_KEYS)
        .map(|i| Uri::try_from(key_path(i)).expect("uri"))
        .collect();
    rt.block_on(async {
        for uri in &uris {
            call_collect(&mut swr.clone(), request(uri.clone())).await;
        }
    });
    assert_eq!(layer.stats().entries, ZIPF_KEYS as u64, "all keys stored");
    let floor = floor_cache((0..ZIPF_KEYS).map(key_path));
    let sequences: Vec<Vec<usize>> = (0..2).map(|t| zipf_sequence(ZIPF_KEYS, t + 1)).collect();
    let one_key = vec![42usize; SEQUENCE];
    // Each thread clones its own `Uri`s: shared ones would add a refcount that both threads
    // write, to the floor and to tower-swr alike.
    let thread_uris: Vec<Vec<Uri>> = (0..2)
        .map(|_| {
            (0..ZIPF_KEYS)
                .map(|i| Uri::try_from(key_path(i)).expect("uri"))
                .collect()
        })
        .collect();

    let mut group = c.benchmark_group("contention");
    let workloads: [(&str, [&Vec<usize>; 2]); 2] = [
        ("1 key", [&one_key, &one_key]),
        ("10k keys zipf", [&sequences[0], &sequences[1]]),
    ];
    for (label, per_thread) in workloads {
        for threads in [1usize, 2] {
            // One iteration = one hit on each thread.
            group.throughput(Throughput::Elements(threads as u64));
            let seq = |t: usize| per_thread[t];
            let make_swr = |t: usize| {
                let mut service = swr.clone();
                let seq = seq(t);
                let uris = &thread_uris[t];
                move |i: u64| {
                    let uri = uris[seq[i as usize & (SEQUENCE - 1)]].clone();
                    black_box(hit_now(&mut service, request(uri)));
                }
            };
            let make_floor = |t: usize| {
                let seq = seq(t);
                let (uris, floor) = (&thread_uris[t], &floor);
                move |i: u64| {
                    let uri = uris[seq[i as usize & (SEQUENCE - 1)]].clone();
                    let request = request(uri);
                    black_box(now(collect(floor_respond(floor, &request))));
                }
            };
            group.bench_function(format!("tower-swr/{label}/{threads} threads"), |b| {
                b.iter_custom(|iters| run_threads(threads, iters, make_swr))
            });
            group.bench_function(format!("floor/{label}/{threads} threads"), |b| {
                b.iter_custom(|iters| run_threads(threads, iters, make_floor))
            });
        }
    }
    group.finish();
    assert_eq!(
        layer.stats().misses,
        ZIPF_KEYS as u64,
        "the timed runs were all hits"
    );
}

// ---------------------------------------------------------------------------------------------
// (c) The stale path, and origin calls per expiry.

/// An origin that takes `delay` and counts its calls.
fn slow_origin(
    delay: Duration,
    cache_control: &'static str,
    calls: Arc<AtomicUsize>,
) -> impl Service<Request<ReqBody>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send>
       + Clone
       + Send
       + 'static {
    let body = body_of(KIB);
    let len = HeaderValue::from(KIB);
    service_fn(move |_req: Request<ReqBody>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let response = response(Full::new(body.clone()), cache_control, &len);
        async move {
            tokio::time::sleep(delay).await;
            Ok::<_, Infallible>(response)
        }
    })
}

fn cache_status_of<B>(response: &Response<B>) -> Option<CacheStatus> {
    response
        .extensions()
        .get::<CacheInfo>()
        .map(|info| info.status)
}

fn bench_stale(c: &mut Criterion) {
    if !wanted("stale", &["fresh hit", "stale hit", "origin calls"]) {
        return;
    }
    let rt = multi_thread();
    let uri = Uri::from_static(PATH);
    let origin_delay = Duration::from_millis(100);

    // Always stale (max-age=0) with a long stale-while-revalidate window: every answer is stale
    // and a refresh taking 100 ms is (nearly always) in flight.
    let stale_calls = Arc::new(AtomicUsize::new(0));
    let mut stale = SwrLayer::new().layer(slow_origin(
        origin_delay,
        "max-age=0, stale-while-revalidate=86400",
        stale_calls.clone(),
    ));
    let fresh_calls = Arc::new(AtomicUsize::new(0));
    let mut fresh = SwrLayer::new().layer(slow_origin(origin_delay, FRESH, fresh_calls.clone()));
    rt.block_on(async {
        call_collect(&mut stale, request(uri.clone())).await;
        call_collect(&mut fresh, request(uri.clone())).await;
        let response = stale.call(request(uri.clone())).await.unwrap();
        assert_eq!(cache_status_of(&response), Some(CacheStatus::Stale));
        let response = fresh.call(request(uri.clone())).await.unwrap();
        assert_eq!(cache_status_of(&response), Some(CacheStatus::Fresh));
    });

    let mut hit_stale = |n| {
        time_async(&rt, n, async || {
            call_collect(&mut stale, request(uri.clone())).await
        })
    };
    let mut hit_fresh = |n| {
        time_async(&rt, n, async || {
            call_collect(&mut fresh, request(uri.clone())).await
        })
    };
    if let Some((variant, n)) = count_request() {
        match variant.as_str() {
            "stale" => hit_stale(n),
            "fresh" => hit_fresh(n),
            _ => return,
        };
        std::process::exit(0);
    }

    let mut group = c.benchmark_group("stale");
    group.throughput(Throughput::Elements(1));
    group.bench_function("fresh hit", |b| b.iter_custom(&mut hit_fresh));
    group.bench_function("stale hit, origin 100 ms", |b| {
        b.iter_custom(&mut hit_stale)
    });
    group.finish();
    side_by_side(
        "stale answer while the origin takes 100 ms (target: within 10% of a fresh hit)",
        &mut [
            ("fresh hit", Box::new(&mut hit_fresh)),
            ("stale hit, origin 100 ms", Box::new(&mut hit_stale)),
        ],
    );
    println!(
        "   origin calls during the stale runs: {} (one refresh per 100 ms at most)",
        stale_calls.load(Ordering::SeqCst)
    );

    if wanted("stale", &["origin calls"]) {
        origin_calls_per_expiry(&rt);
    }
}

/// 10,000 concurrent requests on one key that is (a) not cached, (b) stale, (c) expired past
/// its stale-while-revalidate window; the origin takes 100 ms. Prints the origin calls of each.
fn origin_calls_per_expiry(rt: &Runtime) {
    let concurrency = if quick_mode() { 500 } else { 10_000 };
    let delay = Duration::from_millis(100);
    println!(
        "\n== origin calls when {concurrency} concurrent requests hit one key (origin: 100 ms)"
    );
    let scenarios: [(&str, &'static str, SwrLayer, Option<Duration>); 3] = [
        ("cold (nothing cached)", FRESH, SwrLayer::new(), None),
        (
            "stale (inside stale-while-revalidate)",
            "max-age=1, stale-while-revalidate=600",
            SwrLayer::new(),
            Some(Duration::from_millis(1200)),
        ),
        (
            "expired (past stale-while-revalidate)",
            "max-age=1",
            SwrLayer::new().stale_while_revalidate(Duration::ZERO),
            Some(Duration::from_millis(1200)),
        ),
    ];
    let mut all_one = true;
    for (name, cache_control, layer, wait) in scenarios {
        let calls = Arc::new(AtomicUsize::new(0));
        let service = layer.layer(slow_origin(delay, cache_control, calls.clone()));
        let uri = Uri::from_static(PATH);
        let statuses = rt.block_on(async {
            if let Some(wait) = wait {
                call_collect(&mut service.clone(), request(uri.clone())).await;
                tokio::time::sleep(wait).await;
                calls.store(0, Ordering::SeqCst);
            }
            let start = tokio::sync::Barrier::new(concurrency);
            let start = Arc::new(start);
            let tasks: Vec<_> = (0..concurrency)
                .map(|_| {
                    let service = service.clone();
                    let request = request(uri.clone());
                    let start = start.clone();
                    tokio::spawn(async move {
                        start.wait().await;
                        let response = service.oneshot(request).await.expect("response");
                        let status = cache_status_of(&response);
                        let body = response.into_body().collect().await.expect("body");
                        assert_eq!(body.to_bytes().len(), KIB);
                        status
                    })
                })
                .collect();
            let mut statuses = std::collections::BTreeMap::<String, usize>::new();
            for task in tasks {
                let status = task.await.expect("task");
                *statuses.entry(format!("{status:?}")).or_default() += 1;
            }
            // Let a background refresh finish before counting.
            tokio::time::sleep(delay * 3).await;
            statuses
        });
        let calls = calls.load(Ordering::SeqCst);
        all_one &= calls == 1;
        println!(
            "   {name:<40} origin calls: {calls} (target 1)  answers: {statuses:?}  {}",
            if calls == 1 { "OK" } else { "MISSED" }
        );
    }
    println!(
        "   => exactly 1 origin call per key per expiry: {}",
        if all_one { "met" } else { "NOT met" }
    );
}

// ---------------------------------------------------------------------------------------------
// (d) The miss path.

/// A body of one shared `Bytes` delivered in chunks of `chunk` bytes (as a socket would).
struct Chunked {
    rest: Bytes,
    chunk: usize,
}

impl Body for Chunked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.rest.is_empty() {
            return Poll::Ready(None);
        }
        let n = self.chunk.min(self.rest.len());
        let data = self.rest.split_to(n);
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.rest.len() as u64)
    }
}

const CHUNK: usize = 16 * KIB;

fn chunked_origin(
    len: usize,
) -> impl Service<Request<ReqBody>, Response = Response<Chunked>, Error = Infallible, Future: Send>
       + Clone
       + Send
       + 'static {
    let body = body_of(len);
    let content_length = HeaderValue::from(len);
    service_fn(move |_req: Request<ReqBody>| {
        let body = Chunked {
            rest: body.clone(),
            chunk: CHUNK,
        };
        let response = response(body, FRESH, &content_length);
        async move { Ok::<_, Infallible>(response) }
    })
}

fn bench_miss(c: &mut Criterion) {
    if !wanted("miss", &["origin directly", "tower-swr miss", "KiB", "MiB"]) {
        return;
    }
    let rt = current_thread();
    let counter = AtomicU64::new(0);
    let next_uri = || {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        Uri::try_from(format!("/v1/items/42?lang=en&n={n}")).expect("uri")
    };
    let mut group = c.benchmark_group("miss");
    let mut ratios = Vec::new();
    for (len, label) in [(KIB, "1 KiB"), (MIB, "1 MiB")] {
        let layer = SwrLayer::new();
        let mut swr = layer.layer(chunked_origin(len));
        let mut direct = chunked_origin(len);
        let got = rt.block_on(call_drain(&mut swr, request(next_uri())));
        assert_eq!(got, len);
        assert_eq!(layer.stats().stores, 1, "a miss is stored");

        let mut miss_swr = |n| {
            time_async(&rt, n, async || {
                call_drain(&mut swr, request(next_uri())).await
            })
        };
        let mut miss_direct = |n| {
            time_async(&rt, n, async || {
                call_drain(&mut direct, request(next_uri())).await
            })
        };
        if let Some((variant, n)) = count_request() {
            let chosen = match variant.as_str() {
                "miss-1k" if len == KIB => miss_swr(n),
                "direct-1k" if len == KIB => miss_direct(n),
                "miss-1m" if len == MIB => miss_swr(n),
                "direct-1m" if len == MIB => miss_direct(n),
                _ => continue,
            };
            black_box(chosen);
            std::process::exit(0);
        }
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(format!("origin directly/{label}"), |b| {
            b.iter_custom(&mut miss_direct)
        });
        group.bench_function(format!("tower-swr miss/{label}"), |b| {
            b.iter_custom(&mut miss_swr)
        });
        let medians = side_by_side(
            &format!("miss, {label} body in {} KiB chunks", CHUNK / KIB),
            &mut [
                ("origin directly", Box::new(&mut miss_direct)),
                ("tower-swr miss", Box::new(&mut miss_swr)),
            ],
        );
        if let [direct, swr] = medians[..] {
            ratios.push((label, direct, swr));
        }
        let stats = layer.stats();
        assert_eq!(stats.fresh_hits, 0, "every request was a miss");
    }
    group.finish();
    for (label, direct, swr) in ratios {
        println!(
            "   miss overhead, {label}: {:.0} ns per request over the origin ({:.2}x)",
            swr - direct,
            swr / direct
        );
    }
}

// ---------------------------------------------------------------------------------------------
// (d') Time to first byte of a miss (issue 15): the call until the first data frame, the rest of
// the body drained untimed, against the origin called directly.

/// `n` misses on new keys: the summed time from `call` to the first data frame.
fn time_to_first_byte<S, B>(
    rt: &Runtime,
    n: u64,
    service: &mut S,
    uri: &dyn Fn() -> Uri,
) -> Duration
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
    S::Error: Debug,
    B: Body<Data = Bytes>,
    B::Error: Debug,
{
    rt.block_on(async {
        let mut total = Duration::ZERO;
        for _ in 0..n {
            let request = request(uri());
            let start = Instant::now();
            std::future::poll_fn(|cx| service.poll_ready(cx))
                .await
                .expect("ready");
            let response = service.call(request).await.expect("response");
            let mut body = pin!(response.into_body());
            let first = body.frame().await;
            total += start.elapsed();
            black_box(first);
            while let Some(frame) = body.frame().await {
                black_box(frame.expect("frame"));
            }
        }
        total
    })
}

/// A body that arrives like a network stream: the first chunk at once, then one `Pending`
/// (woken at once) before each next one.
struct Streamed {
    rest: Bytes,
    chunk: usize,
    pend: bool,
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.rest.is_empty() {
            return Poll::Ready(None);
        }
        if self.pend {
            self.pend = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.pend = true;
        let n = self.chunk.min(self.rest.len());
        let data = self.rest.split_to(n);
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.rest.len() as u64)
    }
}

fn streamed_origin(
    len: usize,
) -> impl Service<Request<ReqBody>, Response = Response<Streamed>, Error = Infallible, Future: Send>
       + Clone
       + Send
       + 'static {
    let body = body_of(len);
    let content_length = HeaderValue::from(len);
    service_fn(move |_req: Request<ReqBody>| {
        let body = Streamed {
            rest: body.clone(),
            chunk: CHUNK,
            pend: false,
        };
        let response = response(body, FRESH, &content_length);
        async move { Ok::<_, Infallible>(response) }
    })
}

/// The origin: `chunks` chunks of 1,000 bytes, `gap` apart (the first at once).
fn paced_origin(
    chunks: usize,
    gap: Duration,
    cache_control: &'static str,
) -> impl Service<Request<ReqBody>, Response = Response<Paced>, Error = Infallible, Future: Send>
       + Clone
       + Send
       + 'static {
    service_fn(move |_req: Request<ReqBody>| {
        let body = Paced {
            left: chunks,
            gap,
            sleep: None,
        };
        let mut response = Response::new(body);
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(cache_control),
        );
        async move { Ok::<_, Infallible>(response) }
    })
}

struct Paced {
    left: usize,
    gap: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Body for Paced {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        if let Some(sleep) = self.sleep.as_mut() {
            std::task::ready!(sleep.as_mut().poll(cx));
        }
        self.left -= 1;
        self.sleep = Some(Box::pin(tokio::time::sleep(self.gap)));
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; 1000])))))
    }
}

fn bench_ttfb(c: &mut Criterion) {
    if !wanted(
        "ttfb",
        &["origin directly", "tower-swr miss", "KiB", "MiB", "paced"],
    ) {
        return;
    }
    let rt = current_thread();
    let counter = AtomicU64::new(0);
    let next_uri = || {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        Uri::try_from(format!("/v1/items/42?lang=en&n={n}")).expect("uri")
    };
    let mut group = c.benchmark_group("ttfb");
    let mut gaps = Vec::new();
    for (len, label) in [(KIB, "1 KiB"), (MIB, "1 MiB")] {
        let layer = SwrLayer::new();
        let mut swr = layer.layer(streamed_origin(len));
        let mut direct = streamed_origin(len);
        let mut ttfb_swr = |n| time_to_first_byte(&rt, n, &mut swr, &next_uri);
        let mut ttfb_direct = |n| time_to_first_byte(&rt, n, &mut direct, &next_uri);
        group.bench_function(format!("origin directly/{label}"), |b| {
            b.iter_custom(&mut ttfb_direct)
        });
        group.bench_function(format!("tower-swr miss/{label}"), |b| {
            b.iter_custom(&mut ttfb_swr)
        });
        let medians = side_by_side(
            &format!(
                "time to first byte of a miss, {label} body streamed in {} KiB chunks",
                CHUNK / KIB
            ),
            &mut [
                ("origin directly", Box::new(&mut ttfb_direct)),
                ("tower-swr miss", Box::new(&mut ttfb_swr)),
            ],
        );
        if let [direct, swr] = medians[..] {
            gaps.push((label, direct, swr));
        }
        assert!(layer.stats().stores > 0, "the misses were stored");
    }
    group.finish();
    for (label, direct, swr) in gaps {
        println!(
            "   time to first byte, {label}: {:.0} ns over the origin ({direct:.0} ns vs {swr:.0} ns)",
            swr - direct
        );
    }
    if quick_mode() || profiling() {
        return;
    }
    // The case, on the wall clock: 10 chunks of 1,000 bytes, 200 ms apart.
    let gap = Duration::from_millis(200);
    let swr = SwrLayer::new().layer(paced_origin(10, gap, FRESH));
    let direct = paced_origin(10, gap, FRESH);
    for round in 0..3 {
        let (mut s, mut d) = (swr.clone(), direct.clone());
        let via = time_to_first_byte(&rt, 1, &mut s, &next_uri);
        let bare = time_to_first_byte(&rt, 1, &mut d, &next_uri);
        println!(
            "   paced origin (10 x 1,000 B, 200 ms apart), round {round}: first byte after {:.3} ms bare, {:.3} ms through the layer",
            bare.as_secs_f64() * 1e3,
            via.as_secs_f64() * 1e3
        );
    }
    // With a stored entry that may stand in if the origin fails (stale-if-error), the miss
    // buffers the whole body before answering, as before issue 15.
    let mut fallback = SwrLayer::new().layer(paced_origin(
        10,
        gap,
        "max-age=1, stale-while-revalidate=0, stale-if-error=86400",
    ));
    let uri = Uri::from_static("/v1/items/stale-if-error");
    time_to_first_byte(&rt, 1, &mut fallback, &|| uri.clone());
    std::thread::sleep(Duration::from_millis(1100));
    let buffered = time_to_first_byte(&rt, 1, &mut fallback, &|| uri.clone());
    println!(
        "   paced origin, a miss with a stale-if-error entry stored: first byte after {:.3} ms (buffered)",
        buffered.as_secs_f64() * 1e3
    );
}

// ---------------------------------------------------------------------------------------------
// (e) Memory per entry.

fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn memory(c: &mut Criterion) {
    // Nothing to time: this group only prints. Keep criterion's filter semantics.
    let _ = c;
    if !wanted("memory", &["per entry"]) {
        return;
    }
    let entries: usize = if quick_mode() { 2_000 } else { 100_000 };
    let rt = current_thread();
    let paths: Vec<String> = (0..entries).map(key_path).collect();
    println!(
        "\n== memory: {entries} entries of {KIB} B bodies (target: <= 256 B per entry beyond the body)"
    );

    // 1. SwrService over a tower service, requests as in the other groups.
    let stats = count_entries("SwrService, bare requests", entries, true, || {
        let len = HeaderValue::from(KIB);
        // Each response owns its body, as bodies read from a socket do.
        let origin = service_fn(move |_req: Request<ReqBody>| {
            let response = response(Full::new(body_of(KIB)), FRESH, &len);
            async move { Ok::<_, Infallible>(response) }
        });
        // The store's own tables are counted too: the layer is built inside the window.
        let layer = SwrLayer::new().capacity_bytes(512 << 20);
        let mut service = layer.layer(origin);
        rt.block_on(async {
            for path in &paths {
                let uri = Uri::try_from(path.as_str()).expect("uri");
                let (status, body) = call_collect(&mut service, request(uri)).await;
                assert_eq!((status, body.len()), (StatusCode::OK, KIB));
            }
        });
        (layer, service)
    });
    drop(stats);

    // 2. The floor: quick_cache<String, Arc<{status, version, HeaderMap, Bytes}>>, the same
    //    three response headers and a body owned per entry. What any entry built from http's
    //    types costs at least.
    {
        LIVE_BYTES.store(0, Ordering::SeqCst);
        ALLOCATIONS.store(0, Ordering::SeqCst);
        COUNTING.store(true, Ordering::SeqCst);
        let floor = FloorCache::new(entries * 2);
        let len = HeaderValue::from(KIB);
        for path in &paths {
            floor.insert(
                path.clone(),
                Arc::new(Stored {
                    status: StatusCode::OK,
                    version: Version::HTTP_11,
                    headers: response_headers(FRESH, &len),
                    body: body_of(KIB),
                    stored_at: Instant::now(),
                }),
            );
        }
        COUNTING.store(false, Ordering::SeqCst);
        let live = LIVE_BYTES.load(Ordering::SeqCst) as f64 / entries as f64;
        let allocations = ALLOCATIONS.load(Ordering::SeqCst) as f64 / entries as f64;
        assert_eq!(floor.len(), entries, "the floor holds every entry");
        println!("   floor (quick_cache<String, Arc<{{parts, HeaderMap, Bytes}}>>):");
        println!(
            "     allocated and still live (counting alloc): {live:>6.0} B/entry = body + {:>5.0} B  (ratio to body {:.2}; {allocations:.1} live allocations/entry)",
            live - KIB as f64,
            live / KIB as f64
        );
    }

    // 3. The same as 1 through an axum Router (what a server sees: axum's request extensions,
    //    its Body types). RSS is not re-measured after 1: freed memory is reused.
    let stats = count_entries("SwrLayer on an axum Router", entries, false, || {
        async fn handler() -> axum::response::Response {
            let mut response = axum::response::Response::new(axum::body::Body::from(body_of(KIB)));
            *response.headers_mut() = response_headers(FRESH, &HeaderValue::from(KIB));
            response
        }
        let layer = SwrLayer::new().capacity_bytes(512 << 20);
        let mut app = axum::Router::new()
            .route("/v1/items/{id}", axum::routing::get(handler))
            .layer(layer.clone());
        rt.block_on(async {
            for path in &paths {
                let mut request = Request::new(axum::body::Body::empty());
                *request.uri_mut() = Uri::try_from(path.as_str()).expect("uri");
                let headers = request.headers_mut();
                headers.insert(header::HOST, HeaderValue::from_static(HOST));
                headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
                let response = app.call(request).await.expect("infallible");
                assert_eq!(response.status(), StatusCode::OK);
                let body = response.into_body().collect().await.expect("body");
                assert_eq!(body.to_bytes().len(), KIB);
            }
        });
        (layer, app)
    });
    drop(stats);
}

/// Runs `fill` with allocation counting on (and RSS read around it when `rss`), checks that it
/// left `entries` entries in the layer it returns, and prints the bytes per entry.
fn count_entries<T>(
    label: &str,
    entries: usize,
    rss: bool,
    fill: impl FnOnce() -> (SwrLayer, T),
) -> (SwrLayer, T) {
    let rss_before = rss_bytes();
    LIVE_BYTES.store(0, Ordering::SeqCst);
    ALLOCATIONS.store(0, Ordering::SeqCst);
    for slot in &BY_SIZE {
        slot.store(0, Ordering::SeqCst);
    }
    COUNTING.store(true, Ordering::SeqCst);
    let (layer, keep) = fill();
    COUNTING.store(false, Ordering::SeqCst);
    let live = LIVE_BYTES.load(Ordering::SeqCst) as f64;
    let allocations = ALLOCATIONS.load(Ordering::SeqCst) as f64;
    let rss_after = rss_bytes();
    let stats = layer.stats();
    assert_eq!(stats.entries, entries as u64, "every entry is held");
    assert_eq!(stats.evictions, 0, "nothing was evicted");

    let n = entries as f64;
    let body = KIB as f64;
    let accounted = stats.bytes as f64 / n;
    let allocated = live / n;
    println!("   {label}:");
    println!(
        "     cache's own accounting (stats().bytes):    {accounted:>6.0} B/entry = body + {:>5.0} B  (ratio to body {:.2})",
        accounted - body,
        accounted / body
    );
    println!(
        "     allocated and still live (counting alloc): {allocated:>6.0} B/entry = body + {:>5.0} B  (ratio to body {:.2}; {:.1} live allocations/entry)",
        allocated - body,
        allocated / body,
        allocations / n
    );
    if let (true, Some(before), Some(after)) = (rss, rss_before, rss_after) {
        let rss = after.saturating_sub(before) as f64 / n;
        println!(
            "     process RSS growth (/proc/self/statm):     {rss:>6.0} B/entry = body + {:>5.0} B  (ratio to body {:.2})",
            rss - body,
            rss / body
        );
    }
    print_by_size(n);
    (layer, keep)
}

/// The live allocations by size, per entry: every size held by at least one allocation in
/// ten entries, the rest summed (tables that grow with the entry count: quick_cache's slab and
/// hash table, and any side table, are the large sizes).
fn print_by_size(n: f64) {
    let mut rows: Vec<(usize, f64)> = Vec::new();
    let mut rest = 0.0;
    for (size, slot) in BY_SIZE.iter().enumerate().take(SIZES - 1) {
        let live = slot.load(Ordering::SeqCst) as f64;
        if live / n >= 0.1 {
            rows.push((size, live / n));
        } else {
            rest += live * size as f64 / n;
        }
    }
    let large = BY_SIZE[SIZES - 1].load(Ordering::SeqCst) as f64 / n;
    rows.sort_by(|a, b| (b.0 as f64 * b.1).total_cmp(&(a.0 as f64 * a.1)));
    println!("     live allocations by size (per entry):");
    for (size, per_entry) in rows {
        println!(
            "       {size:>5} B x {per_entry:>5.2} = {:>6.1} B",
            size as f64 * per_entry
        );
    }
    println!("       >= {} B (tables)   = {large:>6.1} B", SIZES - 1);
    println!("       other sizes        = {rest:>6.1} B");
}

// ---------------------------------------------------------------------------------------------
// Harness.

/// `cargo bench` passes `--bench`; `cargo test --benches` does not (criterion then runs each
/// benchmark once): the printed one-offs use smaller sizes there.
fn quick_mode() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

/// `SWR_BENCH_COUNT=<variant>:<iterations>`: run one variant that many times and exit, for
/// instruction counts under callgrind (run with 0 and with N, subtract, divide by N). Variants:
/// tower-swr, floor, floor+status, floor+status-presized, bare (group hit); fresh, stale (group
/// stale); miss-1k, direct-1k, miss-1m, direct-1m (group miss); `oneshot-<variant>/<shape>`
/// (group hit_oneshot, run with the filter `hit_oneshot`) with variant floor, tower-swr,
/// tower-swr-no-info, axum-floor or axum and shape path, host or absolute
/// (`benches/callgrind.sh` runs them all).
fn count_request() -> Option<(String, u64)> {
    let spec = std::env::var("SWR_BENCH_COUNT").ok()?;
    let (variant, n) = spec
        .split_once(':')
        .expect("SWR_BENCH_COUNT=<variant>:<iterations>");
    Some((variant.to_owned(), n.parse().expect("iterations")))
}

/// `--profile-time`: criterion runs the routines only; skip the printed extras.
fn profiling() -> bool {
    std::env::args().any(|a| a == "--profile-time")
}

/// Whether criterion's filter (the first free argument, matched as a plain substring here)
/// selects something in `group` (whose benchmarks are named `group/<one of parts>...`). The
/// printed one-offs and each group's setup follow it like the timed benchmarks do.
fn wanted(group: &str, parts: &[&str]) -> bool {
    let Some(arg) = filter() else {
        return true;
    };
    let (head, tail) = arg.split_once('/').unwrap_or((arg.as_str(), ""));
    group.contains(head) && parts.iter().any(|p| p.contains(tail) || tail.contains(p))
        || parts.iter().any(|p| p.contains(arg.as_str()))
}

/// Criterion's filter: the first free argument, if any.
fn filter() -> Option<String> {
    const WITH_VALUE: [&str; 15] = [
        "--save-baseline",
        "--baseline",
        "--baseline-lenient",
        "--load-baseline",
        "--measurement-time",
        "--warm-up-time",
        "--sample-size",
        "--profile-time",
        "--output-format",
        "--color",
        "--plotting-backend",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--nresamples",
    ];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if WITH_VALUE.contains(&arg.as_str()) {
            args.next();
        } else if !arg.starts_with('-') {
            return Some(arg);
        }
    }
    None
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = memory, bench_hit, bench_hit_oneshot, bench_contention, bench_stale, bench_miss,
        bench_ttfb
}
criterion_main!(benches);
