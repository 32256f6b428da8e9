//! The hit path of tower-swr side by side with peer caching layers, in ONE criterion group.
//!
//! Every variant answers the same request (`GET /v1/items/42?lang=en`, `Host`, `Accept`, an
//! axum `Request<Body>` built anew each time) from its cache with the same stored response
//! (200, `Content-Type`, `Cache-Control: public, max-age=3600`, `Content-Length: 1024`, a 1 KiB
//! body), and the body is collected. The floor is a bare quick_cache `get` of an `Arc` entry plus
//! the same `Response` built from the stored parts and `Bytes`.
//!
//! Peers: axum-response-cache 0.5 (cached's TtlCache behind a mutex), tower-http-cache 0.6
//! (moka), hitbox-tower 0.2 (moka, bincode values), http-cache-tower-server 0.2 (moka).
//! The printed side-by-side run (round robin, median) gives the ratios.

use std::convert::Infallible;
use std::fmt::Debug;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body as AxumBody;
use bytes::{Buf, Bytes};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hitbox_http::extractors::{path::PathExtractor, query::QueryExtractor};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tokio::runtime::Runtime;
use tower::{service_fn, Layer, Service, ServiceExt};

const PATH: &str = "/v1/items/42?lang=en";
const HOST: &str = "bench.local";
const KIB: usize = 1024;
const FRESH: &str = "public, max-age=3600";

/// The same request for every variant.
fn request() -> Request<AxumBody> {
    let mut request = Request::new(AxumBody::empty());
    *request.uri_mut() = Uri::from_static(PATH);
    let headers = request.headers_mut();
    headers.insert(header::HOST, HeaderValue::from_static(HOST));
    headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
    request
}

fn response_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(FRESH));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(KIB));
    headers
}

/// The origin every cache wraps (any request body type): the 1 KiB response, built when the
/// future is polled, counting its calls.
#[derive(Clone)]
struct Origin {
    body: Bytes,
    headers: HeaderMap,
    calls: Arc<AtomicUsize>,
}

impl Origin {
    fn new() -> Self {
        Self {
            body: Bytes::from(vec![b'x'; KIB]),
            headers: response_headers(),
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn service<ReqB>(
        &self,
    ) -> impl Service<
        Request<ReqB>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
           + Send
           + Sync
           + 'static {
        let origin = self.clone();
        service_fn(move |_req: Request<ReqB>| {
            let origin = origin.clone();
            async move {
                origin.calls.fetch_add(1, Ordering::Relaxed);
                let mut response = Response::new(Full::new(origin.body.clone()));
                *response.headers_mut() = origin.headers.clone();
                Ok::<_, Infallible>(response)
            }
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }
}

/// `poll_ready` + `call` + the body collected.
async fn call_collect<S, B>(
    service: &mut S,
    request: Request<AxumBody>,
) -> (StatusCode, HeaderMap, Bytes)
where
    S: Service<Request<AxumBody>, Response = Response<B>>,
    S::Error: Debug,
    B: Body,
    B::Data: Buf,
    B::Error: Debug,
{
    std::future::poll_fn(|cx| service.poll_ready(cx))
        .await
        .expect("ready");
    let response = service.call(request).await.expect("response");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, bytes)
}

fn time_async<T>(rt: &Runtime, n: u64, mut op: impl AsyncFnMut() -> T) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..n {
            black_box(op().await);
        }
        start.elapsed()
    })
}

// ---- the floor ----

struct Stored {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
}

type FloorCache = quick_cache::sync::Cache<String, Arc<Stored>>;

fn floor_respond(cache: &FloorCache, request: &Request<AxumBody>) -> Response<Full<Bytes>> {
    let key = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let stored = cache.get(key).expect("floor entry");
    let mut response = Response::new(Full::new(stored.body.clone()));
    *response.status_mut() = stored.status;
    *response.version_mut() = stored.version;
    *response.headers_mut() = stored.headers.clone();
    response
}

// ---- side by side ----

type Routine<'a> = Box<dyn FnMut(u64) -> Duration + 'a>;

fn side_by_side(title: &str, variants: &mut [(&str, Routine<'_>)]) {
    const ROUNDS: usize = 31;
    const ROUND_TIME: Duration = Duration::from_millis(40);
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
        println!(
            "   {name:<28} {:>10.1} ns  (IQR {:.1}..{:.1})  x floor {:>6.2}  x tower-swr {:>6.2}",
            medians[i],
            samples[i][ROUNDS / 4],
            samples[i][ROUNDS * 3 / 4],
            medians[i] / medians[0],
            medians[i] / medians[1],
        );
    }
    // Order: floor, tower-swr, tower-swr without CacheInfo, bare service, then the peers.
    let peers = &medians[4..];
    if let Some(fastest) = peers.iter().copied().min_by(f64::total_cmp) {
        println!(
            "   fastest peer / tower-swr = {:.2} (target >= 1.4); tower-swr / floor = {:.2} (target <= 1.5)",
            fastest / medians[1],
            medians[1] / medians[0]
        );
        println!(
            "   without CacheInfo: fastest peer / tower-swr = {:.2}; tower-swr / floor = {:.2}",
            fastest / medians[2],
            medians[2] / medians[0]
        );
    }
}

fn quick_mode() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

fn bench_peers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    // tower-swr
    let swr_origin = Origin::new();
    let mut swr = tower_swr::SwrLayer::new().layer(swr_origin.service());
    let lean_origin = Origin::new();
    let mut swr_lean = tower_swr::SwrLayer::new()
        .cache_info_extension(false)
        .layer(lean_origin.service());

    // the floor and the bare inner service
    let floor = FloorCache::new(16);
    floor.insert(
        PATH.to_owned(),
        Arc::new(Stored {
            status: StatusCode::OK,
            version: Version::HTTP_11,
            headers: response_headers(),
            body: Bytes::from(vec![b'x'; KIB]),
        }),
    );
    let bare_origin = Origin::new();
    let mut bare = bare_origin.service();

    // axum-response-cache: needs axum's Request<Body> -> Response<Body>.
    let arc_origin = Origin::new();
    let mut axum_response_cache =
        axum_response_cache::CacheLayer::with_lifespan(Duration::from_secs(3600)).layer(
            arc_origin
                .service::<AxumBody>()
                .map_response(|r: Response<Full<Bytes>>| r.map(AxumBody::new)),
        );

    // tower-http-cache: in-memory (moka) backend, key = path + query.
    let thc_origin = Origin::new();
    let mut tower_http_cache = tower_http_cache::prelude::CacheLayer::builder(
        tower_http_cache::prelude::InMemoryBackend::new(10_000),
    )
    .ttl(Duration::from_secs(3600))
    .build()
    .layer(thc_origin.service());

    // hitbox-tower: moka backend with bincode values (its fastest format), key = method + path +
    // query.
    let hb_origin = Origin::new();
    let hb_backend = hitbox_moka::MokaBackend::builder()
        .max_entries(10_000)
        .value_format(hitbox_backend::format::BincodeFormat)
        .build();
    let hb_config = hitbox::Config::builder()
        .request_predicate(hitbox_http::predicates::NeutralRequestPredicate::new())
        .response_predicate(hitbox_http::predicates::NeutralResponsePredicate::new())
        .extractor(
            hitbox_http::extractors::Method::new()
                .path("/v1/items/{id}")
                .query("lang".to_string()),
        )
        .policy(
            hitbox::policy::PolicyConfig::builder()
                .ttl(Duration::from_secs(3600))
                .build(),
        )
        .build();
    let mut hitbox = hitbox_tower::Cache::builder()
        .backend(hb_backend)
        .config(hb_config)
        .build()
        .layer(hb_origin.service());

    // http-cache-tower-server: moka manager, key = method + path + query.
    let hcts_origin = Origin::new();
    let mut http_cache_tower_server = http_cache_tower_server::ServerCacheLayer::with_keyer(
        http_cache::MokaManager::default(),
        http_cache_tower_server::QueryKeyer,
    )
    .layer(hcts_origin.service());

    // Warm every cache, then check that the next request is a hit with the same answer.
    rt.block_on(async {
        call_collect(&mut swr, request()).await;
        call_collect(&mut swr_lean, request()).await;
        call_collect(&mut axum_response_cache, request()).await;
        call_collect(&mut tower_http_cache, request()).await;
        call_collect(&mut hitbox, request()).await;
        call_collect(&mut http_cache_tower_server, request()).await;
        // Some peers store from a spawned task.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let answers = [
            ("tower-swr", call_collect(&mut swr, request()).await),
            (
                "tower-swr, no CacheInfo",
                call_collect(&mut swr_lean, request()).await,
            ),
            (
                "axum-response-cache",
                call_collect(&mut axum_response_cache, request()).await,
            ),
            (
                "tower-http-cache",
                call_collect(&mut tower_http_cache, request()).await,
            ),
            ("hitbox-tower", call_collect(&mut hitbox, request()).await),
            (
                "http-cache-tower-server",
                call_collect(&mut http_cache_tower_server, request()).await,
            ),
        ];
        for (name, (status, headers, body)) in answers {
            assert_eq!((status, body.len()), (StatusCode::OK, KIB), "{name}");
            assert_eq!(headers[header::CONTENT_TYPE], "application/json", "{name}");
            if quick_mode() {
                println!("{name} hit headers: {headers:?}");
            }
        }
    });
    let origins = [
        ("tower-swr", &swr_origin),
        ("tower-swr, no CacheInfo", &lean_origin),
        ("axum-response-cache", &arc_origin),
        ("tower-http-cache", &thc_origin),
        ("hitbox-tower", &hb_origin),
        ("http-cache-tower-server", &hcts_origin),
    ];
    for (name, origin) in origins {
        assert_eq!(origin.calls(), 1, "{name}: the second request was a hit");
    }

    let mut run_swr = |n| time_async(&rt, n, async || call_collect(&mut swr, request()).await);
    let mut run_swr_lean = |n| {
        time_async(&rt, n, async || {
            call_collect(&mut swr_lean, request()).await
        })
    };
    let mut run_floor = |n| {
        time_async(&rt, n, async || {
            let request = request();
            let response = floor_respond(&floor, &request);
            let (parts, body) = response.into_parts();
            let bytes = body.collect().await.expect("body").to_bytes();
            (parts.status, parts.headers, bytes)
        })
    };
    let mut run_bare = |n| time_async(&rt, n, async || call_collect(&mut bare, request()).await);
    let mut run_arc = |n| {
        time_async(&rt, n, async || {
            call_collect(&mut axum_response_cache, request()).await
        })
    };
    let mut run_thc = |n| {
        time_async(&rt, n, async || {
            call_collect(&mut tower_http_cache, request()).await
        })
    };
    let mut run_hitbox =
        |n| time_async(&rt, n, async || call_collect(&mut hitbox, request()).await);
    let mut run_hcts = |n| {
        time_async(&rt, n, async || {
            call_collect(&mut http_cache_tower_server, request()).await
        })
    };

    // For instruction counts under callgrind: PEERS_COUNT=<variant>:<n> runs n requests and exits.
    if let Some((variant, n)) = std::env::var("PEERS_COUNT")
        .ok()
        .and_then(|v| {
            v.split_once(':')
                .map(|(a, b)| (a.to_owned(), b.parse::<u64>().ok()))
        })
        .and_then(|(a, n)| n.map(|n| (a, n)))
    {
        match variant.as_str() {
            "tower-swr" => run_swr(n),
            "floor" => run_floor(n),
            "axum-response-cache" => run_arc(n),
            _ => return,
        };
        std::process::exit(0);
    }

    let mut group = c.benchmark_group("hit, 1 KiB: tower-swr vs floor vs peers");
    group.throughput(Throughput::Elements(1));
    group.bench_function("floor", |b| b.iter_custom(&mut run_floor));
    group.bench_function("tower-swr", |b| b.iter_custom(&mut run_swr));
    group.bench_function("tower-swr, no CacheInfo", |b| {
        b.iter_custom(&mut run_swr_lean)
    });
    group.bench_function("bare inner service", |b| b.iter_custom(&mut run_bare));
    group.bench_function("axum-response-cache", |b| b.iter_custom(&mut run_arc));
    group.bench_function("tower-http-cache", |b| b.iter_custom(&mut run_thc));
    group.bench_function("hitbox-tower", |b| b.iter_custom(&mut run_hitbox));
    group.bench_function("http-cache-tower-server", |b| b.iter_custom(&mut run_hcts));
    group.finish();

    if !quick_mode() {
        side_by_side(
            "hit path, 1 KiB, tower-swr vs floor vs peers",
            &mut [
                ("floor", Box::new(&mut run_floor)),
                ("tower-swr", Box::new(&mut run_swr)),
                ("tower-swr, no CacheInfo", Box::new(&mut run_swr_lean)),
                ("bare inner service", Box::new(&mut run_bare)),
                ("axum-response-cache", Box::new(&mut run_arc)),
                ("tower-http-cache", Box::new(&mut run_thc)),
                ("hitbox-tower (bincode)", Box::new(&mut run_hitbox)),
                ("http-cache-tower-server", Box::new(&mut run_hcts)),
            ],
        );
    }
    for (name, origin) in origins {
        assert_eq!(origin.calls(), 1, "{name}: every timed request was a hit");
    }
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
    targets = bench_peers
}
criterion_main!(benches);
