//! The hit path of tower-swr, the floor and the peer caching layers **as axum calls a layer**
//! (issue 17, item 1): `svc.clone().oneshot(request)` per request, a request built afresh each
//! time, in three request shapes, directly and through a real `axum::Router`.
//!
//! - Shapes: `path` = `GET /item?id=42`, no `Host`; `host` = the same with `Host: bench.local`
//!   and `Accept: */*` (HTTP/1 style); `absolute` = `GET http://bench.local/item?id=42` as
//!   HTTP/2, no `Host` (how hyper hands HTTP/2 requests over).
//! - Origin: 1 KiB (one shared `Bytes`) with `Content-Type`, `ETag`, `Last-Modified` and
//!   `Cache-Control: max-age=3600`, counting its calls; the body is collected.
//! - Router: `Router::new().route("/item", get(handler)).layer(L).with_state(())` (the
//!   finalisation `axum::serve` does), called as `router.clone().oneshot(request)`; axum clones
//!   the route service per request and boxes the bodies. Peers whose error is not `Infallible`
//!   get the cheapest adapter axum accepts (`map_result` to a 500 response, no boxing).
//! - Every variant is built anew per shape with its own origin, warmed with one request, and
//!   checked: a second request must not reach the origin (else the variant is reported as
//!   NOT CACHED for that shape and not timed), and the origin's counter must not move during
//!   the timed runs.
//!
//! `PEERS_COUNT=oneshot-<variant>/<shape>:<n>` runs one variant n times and exits (instruction
//! counts under callgrind, `benches/peers/callgrind.sh`).

use std::convert::Infallible;
use std::fmt::Debug;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body as AxumBody;
use axum::response::IntoResponse;
use bytes::{Buf, Bytes};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hitbox_http::extractors::{path::PathExtractor, query::QueryExtractor};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tokio::runtime::Runtime;
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};

const PATH: &str = "/item?id=42";
const ABSOLUTE: &str = "http://bench.local/item?id=42";
const HOST: &str = "bench.local";
const KIB: usize = 1024;

/// (name in ids and `PEERS_COUNT`, what).
const SHAPES: [(&str, &str); 3] = [
    ("path", "GET /item?id=42, no Host"),
    ("host", "GET /item?id=42, Host + Accept (HTTP/1)"),
    (
        "absolute",
        "GET http://bench.local/item?id=42 as HTTP/2, no Host",
    ),
];

/// A new request of `shape`; the URI parsed from its static text each time.
fn shaped_request(shape: &str) -> Request<AxumBody> {
    let mut request = Request::new(AxumBody::empty());
    match shape {
        "path" => *request.uri_mut() = Uri::from_static(PATH),
        "host" => {
            *request.uri_mut() = Uri::from_static(PATH);
            let headers = request.headers_mut();
            headers.insert(header::HOST, HeaderValue::from_static(HOST));
            headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        }
        "absolute" => {
            *request.uri_mut() = Uri::from_static(ABSOLUTE);
            *request.version_mut() = Version::HTTP_2;
        }
        other => panic!("unknown request shape {other}"),
    }
    request
}

fn origin_headers() -> HeaderMap {
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

fn body() -> Bytes {
    static BODY: OnceLock<Bytes> = OnceLock::new();
    BODY.get_or_init(|| Bytes::from(vec![b'x'; KIB])).clone()
}

/// The origin's call counter (one per variant and shape; leaked, so the origin copies a
/// reference instead of cloning an `Arc` per call).
#[derive(Clone, Copy)]
struct Calls(&'static AtomicUsize);

impl Default for Calls {
    fn default() -> Self {
        Self(Box::leak(Box::new(AtomicUsize::new(0))))
    }
}

impl Calls {
    fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// The tower origin (any request body type), counting its calls.
fn origin<ReqB>(
    calls: &Calls,
) -> impl Service<
    Request<ReqB>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
       + Send
       + Sync
       + 'static {
    let calls = calls.0;
    // Counted when the future runs: axum-response-cache calls its inner service on every
    // request and drops the future on a hit.
    service_fn(move |_req: Request<ReqB>| async move {
        calls.fetch_add(1, Ordering::Relaxed);
        let mut response = Response::new(Full::new(body()));
        *response.headers_mut() = origin_headers();
        Ok::<_, Infallible>(response)
    })
}

/// A Router with the origin as the handler of `/item` and `layer` over its routes, finalised.
fn router<L>(calls: &Calls, layer: Option<L>) -> axum::Router
where
    L: Layer<axum::routing::Route> + Clone + Send + Sync + 'static,
    L::Service: Service<Request<AxumBody>> + Clone + Send + Sync + 'static,
    <L::Service as Service<Request<AxumBody>>>::Response: IntoResponse + 'static,
    <L::Service as Service<Request<AxumBody>>>::Error: Into<Infallible> + 'static,
    <L::Service as Service<Request<AxumBody>>>::Future: Send + 'static,
{
    let calls = calls.0;
    let handler = move || async move {
        calls.fetch_add(1, Ordering::Relaxed);
        let mut response = axum::response::Response::new(AxumBody::from(body()));
        *response.headers_mut() = origin_headers();
        response
    };
    let app = axum::Router::new().route("/item", axum::routing::get(handler));
    match layer {
        Some(layer) => app.layer(layer).with_state(()),
        None => app.with_state(()),
    }
}

/// A peer whose error is a `BoxError`, made acceptable to `Router::layer`: an error becomes a
/// 500 response. No boxing: the peers' futures are boxed (`Unpin`) already.
#[derive(Clone)]
struct Infallibly<S>(S);

impl<S, R> Service<R> for Infallibly<S>
where
    S: Service<R, Error = BoxError>,
    S::Response: IntoResponse,
    S::Future: Unpin,
{
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = InfallibleFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Both peers are always ready; an error here would surface from `call`.
        self.0.poll_ready(cx).map(|_| Ok(()))
    }

    fn call(&mut self, request: R) -> Self::Future {
        InfallibleFuture(self.0.call(request))
    }
}

struct InfallibleFuture<F>(F);

impl<F, T> std::future::Future for InfallibleFuture<F>
where
    F: std::future::Future<Output = Result<T, BoxError>> + Unpin,
    T: IntoResponse,
{
    type Output = Result<axum::response::Response, Infallible>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|result| {
            Ok(match result {
                Ok(response) => response.into_response(),
                Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            })
        })
    }
}

#[derive(Clone)]
struct InfallibleLayer<L>(L);

impl<S, L: Layer<S>> Layer<S> for InfallibleLayer<L> {
    type Service = Infallibly<L::Service>;

    fn layer(&self, inner: S) -> Self::Service {
        Infallibly(self.0.layer(inner))
    }
}

/// An axum response with its body collected into a `Sync` body (for tower-http-cache).
async fn sync_body(
    response: axum::response::Response,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = response.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Ok(Response::from_parts(parts, Full::new(bytes)))
}

// ---- the floor: as in benches/swr.rs `hit_oneshot` ----

struct Stored {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
    stored_at: Instant,
}

type FloorEntries = std::collections::HashMap<String, Arc<Stored>>;

/// An `Age` value without allocating: static strings for the first hour.
fn age_value(secs: u64) -> HeaderValue {
    static TABLE: OnceLock<Vec<HeaderValue>> = OnceLock::new();
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

fn floor_entries() -> Arc<FloorEntries> {
    let mut headers = origin_headers();
    headers.insert(header::AGE, age_value(0));
    headers.insert(
        tower_swr::CACHE_STATUS.clone(),
        HeaderValue::from_static("floor; hit"),
    );
    let stored = Arc::new(Stored {
        status: StatusCode::OK,
        version: Version::HTTP_11,
        headers,
        body: body(),
        stored_at: Instant::now(),
    });
    Arc::new([(PATH.to_owned(), stored)].into_iter().collect())
}

/// A minimal cache layer: a `HashMap` keyed by path + query (borrowed `&str`), the stored map
/// already holding `Age` and `Cache-Status` (`Age` replaced in place with a static value),
/// holding its inner service and cloned with it per request.
#[derive(Clone)]
struct Floor<S> {
    entries: Arc<FloorEntries>,
    #[allow(dead_code)] // held and cloned as a miss would need it; every request here hits
    inner: S,
}

impl<S, B> Service<Request<B>> for Floor<S> {
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
        // `get_mut`, not `insert`: a clone of this 6-header map is at its load limit.
        if let Some(age) = response.headers_mut().get_mut(header::AGE) {
            *age = age_value(stored.stored_at.elapsed().as_secs());
        }
        std::future::ready(Ok(response))
    }
}

#[derive(Clone)]
struct FloorLayer(Arc<FloorEntries>);

impl<S> Layer<S> for FloorLayer {
    type Service = Floor<S>;

    fn layer(&self, inner: S) -> Floor<S> {
        Floor {
            entries: self.0.clone(),
            inner,
        }
    }
}

// ---- the peers' layers (a fresh cache each time) ----

/// axum-response-cache 0.5: cached's `TtlCache` behind a mutex, key = method + URI.
macro_rules! arc_layer {
    () => {
        axum_response_cache::CacheLayer::with_lifespan(Duration::from_secs(3600))
    };
}

/// tower-http-cache 0.6: in-memory (moka) backend, key = path + query.
macro_rules! thc_layer {
    () => {
        tower_http_cache::prelude::CacheLayer::builder(
            tower_http_cache::prelude::InMemoryBackend::new(10_000),
        )
        .ttl(Duration::from_secs(3600))
        .build()
    };
}

/// hitbox-tower 0.2: moka backend with bincode values (its fastest format), key = method +
/// path + query `id`.
macro_rules! hitbox_layer {
    () => {{
        let backend = hitbox_moka::MokaBackend::builder()
            .max_entries(10_000)
            .value_format(hitbox_backend::format::BincodeFormat)
            .build();
        let config = hitbox::Config::builder()
            .request_predicate(hitbox_http::predicates::NeutralRequestPredicate::new())
            .response_predicate(hitbox_http::predicates::NeutralResponsePredicate::new())
            .extractor(
                hitbox_http::extractors::Method::new()
                    .path("/item")
                    .query("id".to_string()),
            )
            .policy(
                hitbox::policy::PolicyConfig::builder()
                    .ttl(Duration::from_secs(3600))
                    .build(),
            )
            .build();
        hitbox_tower::Cache::builder()
            .backend(backend)
            .config(config)
            .build()
    }};
}

/// http-cache-tower-server 0.2: moka manager, key = method + URI (`QueryKeyer`).
macro_rules! hcts_layer {
    () => {
        http_cache_tower_server::ServerCacheLayer::with_keyer(
            http_cache::MokaManager::default(),
            http_cache_tower_server::QueryKeyer,
        )
    };
}

// ---- measuring ----

/// `service.clone().oneshot(request)` and the body collected: what axum does per request.
async fn oneshot_collect<S, B>(
    service: &S,
    request: Request<AxumBody>,
) -> (StatusCode, HeaderMap, Bytes)
where
    S: Service<Request<AxumBody>, Response = Response<B>> + Clone,
    S::Error: Debug,
    B: Body,
    B::Data: Buf,
    B::Error: Debug,
{
    let response = service.clone().oneshot(request).await.expect("response");
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

type Routine<'a> = Box<dyn FnMut(u64) -> Duration + 'a>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Floor,
    Swr,
    SwrLean,
    Bare,
    Peer,
}

struct Variant<'a> {
    /// In criterion ids and `PEERS_COUNT` (`router-` prefixed through the Router).
    slug: String,
    kind: Kind,
    router: bool,
    calls: Calls,
    /// The origin's count after warm-up and the check request.
    warm_calls: usize,
    /// `None` when it did not answer the second request from its cache (not timed).
    routine: Option<Routine<'a>>,
}

/// Warms `service` with one request of `shape`, checks that a second one is answered from its
/// cache (the origin's counter does not move; for the bare service it must), and wraps the
/// timed routine.
fn variant<'a, S, B>(
    rt: &'a Runtime,
    shape: &'static str,
    slug: &str,
    kind: Kind,
    router: bool,
    calls: Calls,
    service: S,
) -> Variant<'a>
where
    S: Service<Request<AxumBody>, Response = Response<B>> + Clone + 'a,
    S::Error: Debug,
    B: Body,
    B::Data: Buf,
    B::Error: Debug,
{
    let slug = if router {
        format!("router-{slug}")
    } else {
        slug.to_owned()
    };
    let (cached, (status, headers, bytes)) = rt.block_on(async {
        oneshot_collect(&service, shaped_request(shape)).await;
        // Some peers store from a spawned task.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let before = calls.get();
        let answer = oneshot_collect(&service, shaped_request(shape)).await;
        (calls.get() == before, answer)
    });
    assert_eq!(
        (status, bytes.len()),
        (StatusCode::OK, KIB),
        "{slug}/{shape}"
    );
    assert_eq!(
        headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes()),
        Some(&b"application/json"[..]),
        "{slug}/{shape}"
    );
    if quick_mode() {
        println!("{slug}/{shape} second answer's headers: {headers:?}");
    }
    if kind == Kind::Bare {
        assert!(!cached, "{slug}/{shape}: the bare service has no cache");
    } else if kind != Kind::Peer {
        assert!(cached, "{slug}/{shape}: answered from its cache");
    }
    let warm_calls = calls.get();
    let routine: Routine<'a> = Box::new(move |n| {
        time_async(rt, n, async || {
            oneshot_collect(&service, shaped_request(shape)).await
        })
    });
    Variant {
        slug,
        kind,
        router,
        calls,
        warm_calls,
        routine: (cached || kind == Kind::Bare).then_some(routine),
    }
}

/// The variants, in the order they are printed: (slug, kind, label).
const VARIANTS: [(&str, Kind, &str); 8] = [
    ("floor", Kind::Floor, "floor (HashMap + Age + Cache-Status)"),
    ("tower-swr", Kind::Swr, "tower-swr"),
    (
        "tower-swr-no-info",
        Kind::SwrLean,
        "tower-swr, no CacheInfo",
    ),
    ("bare", Kind::Bare, "bare origin (no cache)"),
    ("axum-response-cache", Kind::Peer, "axum-response-cache"),
    ("tower-http-cache", Kind::Peer, "tower-http-cache"),
    ("hitbox-tower", Kind::Peer, "hitbox-tower (bincode)"),
    (
        "http-cache-tower-server",
        Kind::Peer,
        "http-cache-tower-server",
    ),
];

fn label(slug: &str) -> String {
    let (router, bare) = match slug.strip_prefix("router-") {
        Some(rest) => (true, rest),
        None => (false, slug),
    };
    let what = VARIANTS
        .iter()
        .find(|(s, _, _)| *s == bare)
        .map_or(bare, |(_, _, l)| *l);
    if router {
        format!("Router + {what}")
    } else {
        what.to_owned()
    }
}

/// Every variant for `shape`, directly and through the Router (or only `only`).
fn build<'a>(rt: &'a Runtime, shape: &'static str, only: Option<&str>) -> Vec<Variant<'a>> {
    let mut out = Vec::new();
    macro_rules! add {
        ($slug:expr, $kind:expr, $router:expr, |$c:ident| $service:expr) => {{
            let full = if $router {
                format!("router-{}", $slug)
            } else {
                $slug.to_owned()
            };
            if only.is_none_or(|o| o == full) {
                let calls = Calls::default();
                let service = {
                    let $c = &calls;
                    $service
                };
                out.push(variant(rt, shape, $slug, $kind, $router, calls, service));
            }
        }};
    }
    use Kind::*;
    // directly
    add!("floor", Floor, false, |c| FloorLayer(floor_entries())
        .layer(origin::<AxumBody>(c)));
    add!("tower-swr", Swr, false, |c| tower_swr::SwrLayer::new()
        .layer(origin::<AxumBody>(c)));
    add!("tower-swr-no-info", SwrLean, false, |c| {
        tower_swr::SwrLayer::new()
            .cache_info_extension(false)
            .layer(origin::<AxumBody>(c))
    });
    add!("bare", Bare, false, |c| origin::<AxumBody>(c));
    add!("axum-response-cache", Peer, false, |c| arc_layer!().layer(
        origin::<AxumBody>(c).map_response(|r: Response<Full<Bytes>>| r.map(AxumBody::new))
    ));
    add!("tower-http-cache", Peer, false, |c| thc_layer!()
        .layer(origin::<AxumBody>(c)));
    add!("hitbox-tower", Peer, false, |c| hitbox_layer!()
        .layer(origin(c)));
    add!("http-cache-tower-server", Peer, false, |c| hcts_layer!()
        .layer(origin::<AxumBody>(c)));
    // through the Router
    add!("floor", Floor, true, |c| router(
        c,
        Some(FloorLayer(floor_entries()))
    ));
    add!("tower-swr", Swr, true, |c| router(
        c,
        Some(tower_swr::SwrLayer::new())
    ));
    add!("tower-swr-no-info", SwrLean, true, |c| router(
        c,
        Some(tower_swr::SwrLayer::new().cache_info_extension(false))
    ));
    add!(
        "bare",
        Bare,
        true,
        |c| router::<tower::layer::util::Identity>(c, None)
    );
    add!("axum-response-cache", Peer, true, |c| router(
        c,
        Some(arc_layer!())
    ));
    // tower-http-cache needs a `Sync` response body from its inner service and axum's `Body`
    // is not: the route's answer is collected into `Full` first (on misses only, so not on
    // the timed hits).
    add!("tower-http-cache", Peer, true, |c| router(
        c,
        Some(
            tower::ServiceBuilder::new()
                .layer(InfallibleLayer(thc_layer!()))
                .layer(tower::util::AndThenLayer::new(sync_body))
        )
    ));
    add!("hitbox-tower", Peer, true, |c| router(
        c,
        Some(hitbox_layer!())
    ));
    add!("http-cache-tower-server", Peer, true, |c| router(
        c,
        Some(InfallibleLayer(hcts_layer!()))
    ));
    out
}

fn quick_mode() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

/// `PEERS_COUNT=oneshot-<variant>/<shape>:<n>`.
fn count_request() -> Option<(String, String, u64)> {
    let spec = std::env::var("PEERS_COUNT").ok()?;
    let (what, n) = spec.split_once(':').expect("PEERS_COUNT=<variant>:<n>");
    let (variant, shape) = what
        .strip_prefix("oneshot-")
        .and_then(|v| v.split_once('/'))
        .expect("PEERS_COUNT=oneshot-<variant>/<shape>:<n> for the oneshot bench");
    Some((variant.to_owned(), shape.to_owned(), n.parse().expect("n")))
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// The variants in turns (round robin), then per variant the median and IQR per request, and
/// per ratio the median and IQR of the per-round ratios.
fn side_by_side(title: &str, variants: &mut [Variant<'_>]) {
    let rounds: usize = std::env::var("ONESHOT_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(31);
    const ROUND_TIME: Duration = Duration::from_millis(40);
    let timed: Vec<usize> = (0..variants.len())
        .filter(|&i| variants[i].routine.is_some())
        .collect();
    let batches: Vec<u64> = timed
        .iter()
        .map(|&i| {
            let routine = variants[i].routine.as_mut().expect("timed");
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
    // samples[variant index][round], ns per request
    let mut samples = vec![Vec::with_capacity(rounds); variants.len()];
    for _ in 0..rounds {
        for (k, &i) in timed.iter().enumerate() {
            let routine = variants[i].routine.as_mut().expect("timed");
            let took = routine(batches[k]);
            samples[i].push(took.as_secs_f64() * 1e9 / batches[k] as f64);
        }
    }
    let find = |router: bool, kind: Kind| {
        variants
            .iter()
            .position(|v| v.router == router && v.kind == kind)
    };
    let median = |i: usize| {
        let mut s = samples[i].clone();
        s.sort_by(f64::total_cmp);
        s
    };
    println!(
        "
== side by side: {title} ({rounds} interleaved rounds of ~40 ms, ns per request)"
    );
    for (i, v) in variants.iter().enumerate() {
        let name = label(&v.slug);
        if v.routine.is_none() {
            println!(
                "   {name:<44} NOT CACHED in this shape: the second request reached the origin (not timed)"
            );
            continue;
        }
        let s = median(i);
        let base = find(v.router, Kind::Floor).map(|f| quantile(&median(f), 0.5));
        let swr = find(v.router, Kind::Swr).map(|f| quantile(&median(f), 0.5));
        let m = quantile(&s, 0.5);
        println!(
            "   {name:<44} {m:>9.1} (IQR {:>8.1}..{:<8.1})  x floor {:>6.2}  x tower-swr {:>6.2}",
            quantile(&s, 0.25),
            quantile(&s, 0.75),
            base.map_or(f64::NAN, |b| m / b),
            swr.map_or(f64::NAN, |b| m / b),
        );
    }
    // Ratios per round: median (IQR).
    let ratio = |a: usize, b: usize| {
        let mut r: Vec<f64> = samples[a]
            .iter()
            .zip(&samples[b])
            .map(|(x, y)| x / y)
            .collect();
        r.sort_by(f64::total_cmp);
        (
            quantile(&r, 0.5),
            quantile(&r, 0.25),
            quantile(&r, 0.75),
            a,
            b,
        )
    };
    for router in [false, true] {
        let place = if router { "Router" } else { "direct" };
        let (Some(floor), Some(swr), Some(lean)) = (
            find(router, Kind::Floor),
            find(router, Kind::Swr),
            find(router, Kind::SwrLean),
        ) else {
            continue;
        };
        let fastest = (0..variants.len())
            .filter(|&i| {
                variants[i].router == router
                    && variants[i].kind == Kind::Peer
                    && variants[i].routine.is_some()
            })
            .min_by(|&a, &b| quantile(&median(a), 0.5).total_cmp(&quantile(&median(b), 0.5)));
        let (r, lo, hi, _, _) = ratio(swr, floor);
        println!("   {place}: tower-swr / floor = {r:.2} (IQR {lo:.2}..{hi:.2}) (target <= 1.5)");
        let (r, lo, hi, _, _) = ratio(lean, floor);
        println!("   {place}: tower-swr, no CacheInfo / floor = {r:.2} (IQR {lo:.2}..{hi:.2})");
        match fastest {
            Some(p) => {
                let (r, lo, hi, _, _) = ratio(p, swr);
                println!(
                    "   {place}: fastest cached peer ({}) / tower-swr = {r:.2} (IQR {lo:.2}..{hi:.2}) (target >= 1.4)",
                    label(&variants[p].slug)
                );
                let (r, lo, hi, _, _) = ratio(p, lean);
                println!(
                    "   {place}: fastest cached peer / tower-swr, no CacheInfo = {r:.2} (IQR {lo:.2}..{hi:.2})"
                );
            }
            None => println!("   {place}: no peer cached this shape"),
        }
    }
}

fn bench_oneshot(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let count = count_request();
    for (shape, about) in SHAPES {
        if let Some((variant, wanted, n)) = &count {
            if wanted != shape {
                continue;
            }
            let mut built = build(&rt, shape, Some(variant));
            let v = built
                .first_mut()
                .unwrap_or_else(|| panic!("unknown variant {variant}"));
            let routine = v
                .routine
                .as_mut()
                .unwrap_or_else(|| panic!("{variant}/{shape}: not cached, nothing to count"));
            routine(*n);
            if v.kind != Kind::Bare {
                assert_eq!(v.calls.get(), v.warm_calls, "{variant}/{shape}: all hits");
            }
            std::process::exit(0);
        }
        let mut variants = build(&rt, shape, None);
        for v in &variants {
            if v.routine.is_none() {
                println!(
                    "{}/{shape}: NOT CACHED (the second request reached the origin)",
                    v.slug
                );
            }
        }
        let mut group = c.benchmark_group(format!("oneshot/{shape}"));
        group.throughput(Throughput::Elements(1));
        group.warm_up_time(Duration::from_millis(500));
        group.measurement_time(Duration::from_millis(1500));
        for v in variants.iter_mut() {
            if let Some(routine) = v.routine.as_mut() {
                group.bench_function(&v.slug, |b| b.iter_custom(&mut *routine));
            }
        }
        group.finish();
        if !quick_mode() {
            side_by_side(
                &format!("svc.clone().oneshot(request), {about}"),
                &mut variants,
            );
        }
        for v in &variants {
            if v.routine.is_some() && v.kind != Kind::Bare {
                assert_eq!(
                    v.calls.get(),
                    v.warm_calls,
                    "{}/{shape}: every timed request was a hit",
                    v.slug
                );
            }
        }
    }
    if count.is_some() {
        eprintln!("PEERS_COUNT: no such shape");
        std::process::exit(2);
    }
}

fn config() -> Criterion {
    Criterion::default().sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_oneshot
}
criterion_main!(benches);
