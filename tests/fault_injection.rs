//! Fault injection through the public HTTP layer, on a paused clock with a seeded RNG.
//!
//! The origin answers, errors, returns 5xx, panics, hangs past the refresh timeout, or sends a
//! body that fails mid-stream, at random; clients cancel at random points. 20,000 requests over
//! 1,000 keys with Zipf popularity while the clock moves keys through fresh, stale and expired.
//! Invariants are checked after every request and at quiescence (see each test).
//!
//! A failure prints its seed; `SWR_FAULT_SEED=<seed> cargo test --test fault_injection` replays
//! it (the workload, the faults and the crate's own jitter draws all come from that seed, and a
//! paused current-thread runtime schedules deterministically). `-- --nocapture` shows the counts.

mod common;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::panic::PanicHookInfo;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use tokio::task::JoinSet;
use tokio::time::{advance, timeout, Instant};
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_swr::{CacheInfo, CacheStatus, SwrHandle, SwrLayer, SwrService};

/// A concrete error type: with `Box<dyn Error + Send + Sync>` rustc cannot prove an async block
/// awaiting the service `Send` (a higher-ranked lifetime limitation), so `tokio::spawn` fails.
type BoxError = std::io::Error;

const KEYS: usize = 1_000;
const REQUESTS: usize = 20_000;
/// Zipf exponent of key popularity.
const ZIPF_S: f64 = 1.0;
/// `Cache-Control` of every cacheable answer: fresh 10 s, stale 20 s more, stale-if-error 60 s.
const TTL: Duration = Duration::from_secs(10);
const CACHE_CONTROL: &str = "max-age=10, stale-while-revalidate=20, stale-if-error=60";
const REFRESH_TIMEOUT: Duration = Duration::from_secs(2);
const LOCK_TIMEOUT: Duration = Duration::from_secs(1);
/// A hanging origin answers this long after it was called: past the refresh timeout.
const HANG: Duration = Duration::from_secs(3);
/// No request may take longer than this (virtual time); a longer one is a hang.
const REQUEST_BOUND: Duration = Duration::from_secs(120);
const VARIANT: &str = "x-variant";

/// `SWR_FAULT_TRACE=<target>` prints every origin call and answer for that target (with the
/// virtual time), to diagnose a replayed failure.
fn traced(target: &str) -> bool {
    static TRACE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    TRACE
        .get_or_init(|| std::env::var("SWR_FAULT_TRACE").ok())
        .as_deref()
        == Some(target)
}

fn clock() -> Duration {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    Instant::now() - *START.get_or_init(Instant::now)
}

fn seed(name: &str) -> u64 {
    let seed = std::env::var("SWR_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("{name}: seed {seed} (replay with SWR_FAULT_SEED={seed})");
    seed
}

// ---- workload ----

/// Key popularity: `P(i) ∝ 1 / (i + 1)^s`.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut total = 0.0;
        let mut cdf: Vec<f64> = (0..n)
            .map(|i| {
                total += 1.0 / ((i + 1) as f64).powf(s);
                total
            })
            .collect();
        for c in &mut cdf {
            *c /= total;
        }
        Self { cdf }
    }

    fn sample(&self, rng: &mut fastrand::Rng) -> usize {
        let u = rng.f64();
        self.cdf.partition_point(|c| *c < u).min(self.cdf.len() - 1)
    }
}

/// Every fifth key answers with `Vary: x-variant`; every thirteenth with `no-store`.
fn varies(key: usize) -> bool {
    key % 5 == 0
}

fn no_store(key: usize) -> bool {
    key % 13 == 0
}

fn target_of(key: usize) -> String {
    // A few keys carry a query: the query is part of the key.
    if key % 7 == 3 {
        format!("/k/{key}?page={}", key % 3)
    } else {
        format!("/k/{key}")
    }
}

fn key_of_target(target: &str) -> usize {
    target
        .trim_start_matches("/k/")
        .split('?')
        .next()
        .and_then(|k| k.parse().ok())
        .expect("a target the workload made")
}

// ---- the faulty origin ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    Error,
    ServerError,
    Panic,
    Hang,
    BodyFailure,
}

const FAULT_KINDS: [Fault; 6] = [
    Fault::None,
    Fault::Error,
    Fault::ServerError,
    Fault::Panic,
    Fault::Hang,
    Fault::BodyFailure,
];

struct OriginBook {
    rng: fastrand::Rng,
    inject: bool,
    /// How long a hanging call takes.
    hang: Duration,
    calls: u64,
    faults: HashMap<&'static str, u64>,
    /// When each (target, variant) was asked for.
    call_times: HashMap<String, Vec<Instant>>,
}

impl OriginBook {
    fn draw(&mut self) -> Fault {
        if !self.inject {
            return Fault::None;
        }
        match self.rng.u32(0..100) {
            0..=69 => Fault::None,
            70..=75 => Fault::Error,
            76..=81 => Fault::ServerError,
            82..=85 => Fault::Panic,
            86..=89 => Fault::Hang,
            _ => Fault::BodyFailure,
        }
    }
}

#[derive(Clone)]
struct Origin(Arc<Mutex<OriginBook>>);

impl Origin {
    fn new(seed: u64, inject: bool) -> Self {
        Self(Arc::new(Mutex::new(OriginBook {
            rng: fastrand::Rng::with_seed(seed ^ 0x0051_6e00_f417),
            inject,
            hang: HANG,
            calls: 0,
            faults: HashMap::new(),
            call_times: HashMap::new(),
        })))
    }

    fn book(&self) -> std::sync::MutexGuard<'_, OriginBook> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_hang(self, hang: Duration) -> Self {
        self.book().hang = hang;
        self
    }

    fn set_inject(&self, inject: bool) {
        self.book().inject = inject;
    }

    fn service(
        &self,
    ) -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<FaultyBody>,
        Error = BoxError,
        Future: Send + 'static,
    > + Clone
           + Send
           + 'static {
        let origin = self.clone();
        service_fn(move |request: Request<Full<Bytes>>| {
            let origin = origin.clone();
            async move { origin.answer(request).await }
        })
    }

    async fn answer(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<FaultyBody>, BoxError> {
        let target = request
            .uri()
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        let key = key_of_target(&target);
        let variant = if varies(key) {
            request.headers().get(VARIANT).map_or("-".to_owned(), |v| {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            })
        } else {
            "*".to_owned()
        };
        let (fault, call, latency, padding, hang) = {
            let mut book = self.book();
            let fault = book.draw();
            book.calls += 1;
            let call = book.calls;
            *book.faults.entry(fault_name(fault)).or_default() += 1;
            book.call_times
                .entry(format!("{target}|{variant}"))
                .or_default()
                .push(Instant::now());
            let latency = Duration::from_millis(book.rng.u64(0..100));
            let padding = book.rng.usize(0..3000);
            (fault, call, latency, padding, book.hang)
        };
        if traced(&target) {
            eprintln!(
                "{:?} origin call {call} for {target} ({fault:?}, {latency:?})",
                clock()
            );
        }
        tokio::time::sleep(latency).await;
        match fault {
            Fault::Error => {
                return Err(std::io::Error::other(format!(
                    "injected error for {target}"
                )))
            }
            Fault::Panic => panic!("injected panic for {target}"),
            Fault::Hang => tokio::time::sleep(hang).await,
            Fault::None | Fault::ServerError | Fault::BodyFailure => {}
        }
        let text = format!("key={target};variant={variant};call={call};");
        let mut body = text.into_bytes();
        body.resize(body.len() + padding, b'.');
        let mut response = Response::new(FaultyBody::new(
            Bytes::from(body),
            fault == Fault::BodyFailure,
        ));
        if fault == Fault::ServerError {
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        let headers = response.headers_mut();
        // A 5xx says nothing about caching, as failing origins usually do.
        if fault != Fault::ServerError {
            let cc = if no_store(key) {
                "no-store"
            } else {
                CACHE_CONTROL
            };
            headers.insert(http::header::CACHE_CONTROL, HeaderValue::from_static(cc));
        }
        if varies(key) {
            headers.insert(http::header::VARY, HeaderValue::from_static(VARIANT));
        }
        Ok(response)
    }
}

fn fault_name(fault: Fault) -> &'static str {
    match fault {
        Fault::None => "none",
        Fault::Error => "error",
        Fault::ServerError => "5xx",
        Fault::Panic => "panic",
        Fault::Hang => "hang",
        Fault::BodyFailure => "body failure",
    }
}

/// A body sent in chunks with a `Pending` between them; when `fail` is set it errors after the
/// first half.
struct FaultyBody {
    chunks: VecDeque<Bytes>,
    fail: bool,
    ready: bool,
}

impl FaultyBody {
    fn new(data: Bytes, fail: bool) -> Self {
        let mut chunks = VecDeque::new();
        let mut offset = 0;
        while offset < data.len() {
            let end = (offset + 512).min(data.len());
            chunks.push_back(data.slice(offset..end));
            offset = end;
        }
        if fail {
            let keep = chunks.len().div_ceil(2);
            chunks.truncate(keep);
        }
        Self {
            chunks,
            fail,
            ready: false,
        }
    }
}

impl Body for FaultyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if !this.ready {
            this.ready = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.ready = false;
        if let Some(chunk) = this.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if std::mem::take(&mut this.fail) {
            return Poll::Ready(Some(Err(std::io::Error::other("injected body failure"))));
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && !self.fail
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

// ---- clients ----

#[derive(Clone, Copy, Debug)]
enum Client {
    /// Waits for the whole answer.
    Patient,
    /// Drops the request after this many `Pending` polls.
    DropAfterPolls(u32),
    /// Gives up after a tiny timeout.
    TinyTimeout(Duration),
    /// Reads the head and the first frame, then drops the body.
    DropBody,
}

impl Client {
    fn draw(rng: &mut fastrand::Rng, cancel: bool) -> Self {
        if !cancel {
            return Self::Patient;
        }
        match rng.u32(0..100) {
            0..=79 => Self::Patient,
            80..=87 => Self::DropAfterPolls(rng.u32(0..6)),
            88..=94 => Self::TinyTimeout(Duration::from_millis(rng.u64(0..40))),
            _ => Self::DropBody,
        }
    }
}

/// Polls a future until it is ready or has returned `Pending` `polls + 1` times; `None` when
/// it was dropped unfinished.
struct PollAtMost<T> {
    future: Pin<Box<dyn Future<Output = T> + Send>>,
    left: u32,
}

impl<T> Future for PollAtMost<T> {
    type Output = Option<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        match self.future.as_mut().poll(cx) {
            Poll::Ready(output) => Poll::Ready(Some(output)),
            Poll::Pending if self.left == 0 => Poll::Ready(None),
            Poll::Pending => {
                self.left -= 1;
                Poll::Pending
            }
        }
    }
}

/// How one request ended (violations are `Err`).
#[derive(Debug)]
enum Outcome {
    Answered(CacheStatus),
    /// The origin's 503 passed through (nothing usable was stored).
    ServerError,
    /// The origin's own error.
    OriginError,
    /// The body failed mid-stream (the origin's own failure, passed through).
    BodyError,
    Cancelled,
}

type OriginService = BoxCloneService<Request<Full<Bytes>>, Response<FaultyBody>, BoxError>;
type Svc = SwrService<OriginService>;

/// One request, checked: the body is the key's (and the variant's), 503s are the origin's,
/// errors are the injected ones, and the byte budget holds once it ends.
async fn one_request(
    service: Svc,
    handle: SwrHandle,
    key: usize,
    variant: Option<&'static str>,
    client: Client,
) -> Result<Outcome, String> {
    let variant: Option<String> = variant.map(str::to_owned);
    let target = target_of(key);
    let mut request = Request::get(target.as_str())
        .body(Full::default())
        .expect("valid request");
    if let Some(v) = &variant {
        request
            .headers_mut()
            .insert(VARIANT, HeaderValue::from_str(v).expect("a valid value"));
    }
    let exchange = async move {
        let response = match service.oneshot(request).await {
            Ok(response) => response,
            Err(error) => return Ok(Err(error)),
        };
        let status = response.status();
        let info = response.extensions().get::<CacheInfo>().copied();
        let body = match client {
            Client::DropBody => {
                let mut body = response.into_body();
                let _ = body.frame().await;
                return Ok(Ok(None));
            }
            _ => response.into_body().collect().await.map(|c| c.to_bytes()),
        };
        Ok::<_, String>(Ok(Some((status, info, body))))
    };
    let bounded = timeout(REQUEST_BOUND, async {
        match client {
            Client::Patient | Client::DropBody => Some(exchange.await),
            Client::DropAfterPolls(polls) => {
                PollAtMost {
                    future: Box::pin(exchange),
                    left: polls,
                }
                .await
            }
            Client::TinyTimeout(after) => timeout(after, exchange).await.ok(),
        }
    })
    .await;
    let Ok(ended) = bounded else {
        return Err(format!(
            "{target} ({client:?}): no answer within {REQUEST_BOUND:?}"
        ));
    };
    let stats = handle.stats();
    if stats.bytes > stats.capacity_bytes {
        return Err(format!(
            "{} bytes held over a capacity of {}",
            stats.bytes, stats.capacity_bytes
        ));
    }
    let Some(exchange) = ended else {
        return Ok(Outcome::Cancelled);
    };
    let (status, info, body) = match exchange? {
        Err(error) => {
            let message = error.to_string();
            return if message.starts_with("injected error for ") {
                if message != format!("injected error for {target}") {
                    return Err(format!("{target}: another key's error: {message}"));
                }
                Ok(Outcome::OriginError)
            } else {
                Err(format!("{target}: unexpected error {message}"))
            };
        }
        Ok(None) => return Ok(Outcome::Cancelled),
        Ok(Some(answer)) => answer,
    };
    let Some(info) = info else {
        return Err(format!("{target}: an answer without CacheInfo"));
    };
    let body = match body {
        Ok(body) => body,
        Err(error) if error.to_string() == "injected body failure" => {
            if info.stored {
                return Err(format!("{target}: a stored answer's body failed"));
            }
            return Ok(Outcome::BodyError);
        }
        Err(error) => return Err(format!("{target}: unexpected body error {error}")),
    };
    // Another request's origin error, shared as the layer's documented 502.
    let shared_failure = matches!(
        info.status,
        CacheStatus::Collapsed | CacheStatus::FailureHit
    );
    if status == StatusCode::BAD_GATEWAY && shared_failure && body.is_empty() && !info.stored {
        return Ok(Outcome::OriginError);
    }
    let text = String::from_utf8_lossy(&body);
    let mut fields = text.split(';');
    let (Some(served_key), Some(served_variant)) = (fields.next(), fields.next()) else {
        return Err(format!("{target}: unreadable body {text:.80}"));
    };
    if served_key != format!("key={target}") {
        return Err(format!(
            "{target} ({:?}) served another key's body: {served_key}",
            info.status
        ));
    }
    let wanted_variant = if varies(key) {
        variant.as_deref().unwrap_or("-")
    } else {
        "*"
    };
    if served_variant != format!("variant={wanted_variant}") {
        return Err(format!(
            "{target} with {VARIANT}: {variant:?} ({:?}) served {served_variant}",
            info.status
        ));
    }
    if traced(&target) {
        eprintln!(
            "{:?} answer for {target}: {status} {:?} age {:?} ({served_key}, {})",
            clock(),
            info.status,
            info.age,
            text.split(';').nth(2).unwrap_or_default()
        );
    }
    // A no-store key's 200s are never reused; its failures (which say nothing of storing) may
    // be shared like any other key's.
    let reused = info.stored || (info.status != CacheStatus::Miss && !shared_failure);
    if no_store(key) && (reused || (status == StatusCode::OK && shared_failure)) {
        return Err(format!(
            "{target} is no-store but was answered {:?}",
            info.status
        ));
    }
    match status {
        StatusCode::OK => Ok(Outcome::Answered(info.status)),
        // The origin's own 503: to this request, or shared by the one call that failed.
        StatusCode::SERVICE_UNAVAILABLE
            if (info.status == CacheStatus::Miss || shared_failure) && !info.stored =>
        {
            Ok(Outcome::ServerError)
        }
        other => Err(format!(
            "{target}: status {other} answered as {:?}",
            info.status
        )),
    }
}

// ---- quiet panics ----

type PanicHook = Box<dyn Fn(&PanicHookInfo<'_>) + Sync + Send + 'static>;

/// Silences the panic messages of injected panics (other panics still print) while alive.
struct QuietInjectedPanics {
    previous: Arc<PanicHook>,
}

impl QuietInjectedPanics {
    fn install() -> Self {
        let previous = Arc::new(std::panic::take_hook());
        let chained = Arc::clone(&previous);
        std::panic::set_hook(Box::new(move |info| {
            if !panic_text(info.payload()).starts_with("injected panic") {
                chained(info);
            }
        }));
        Self { previous }
    }
}

impl Drop for QuietInjectedPanics {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The hook cannot be changed now; ours still forwards every other panic.
            return;
        }
        let previous = Arc::clone(&self.previous);
        let _ours = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| previous(info)));
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

// ---- the run ----

#[derive(Debug, Default)]
struct Tally {
    requests: u64,
    outcomes: HashMap<String, u64>,
    stale_answers: u64,
    origin_panics: u64,
    violations: Vec<String>,
}

impl Tally {
    fn record(
        &mut self,
        ended: Result<Result<Outcome, String>, tokio::task::JoinError>,
        key: usize,
    ) {
        self.requests += 1;
        let name = match ended {
            Ok(Ok(Outcome::Answered(status))) => {
                if matches!(status, CacheStatus::Stale | CacheStatus::StaleIfError) {
                    self.stale_answers += 1;
                }
                format!("answered {status:?}")
            }
            Ok(Ok(other)) => format!("{other:?}"),
            Ok(Err(violation)) => {
                self.violations.push(violation);
                "VIOLATION".to_owned()
            }
            Err(join) if join.is_panic() => {
                let text = panic_text(&*join.into_panic());
                if text == format!("injected panic for {}", target_of(key)) {
                    self.origin_panics += 1;
                    "origin panic (passed through)".to_owned()
                } else {
                    self.violations.push(format!("request panicked: {text}"));
                    "VIOLATION".to_owned()
                }
            }
            Err(join) => {
                self.violations.push(format!("request task failed: {join}"));
                "VIOLATION".to_owned()
            }
        };
        *self.outcomes.entry(name).or_default() += 1;
    }
}

struct Run {
    seed: u64,
    origin: Origin,
    service: Svc,
    handle: SwrHandle,
}

/// Sends `REQUESTS` requests in concurrent batches of 1–32, advancing the clock 0–1.5 s between
/// batches (plus whatever the batch itself took). With `cancel`, clients cancel at random; without
/// it, background refreshes are let land before the clock jumps.
async fn drive(run: &Run, cancel: bool) -> Tally {
    let mut rng = fastrand::Rng::with_seed(run.seed);
    let zipf = Zipf::new(KEYS, ZIPF_S);
    let mut tally = Tally::default();
    let mut sent = 0;
    while sent < REQUESTS {
        let batch = rng.usize(1..=32).min(REQUESTS - sent);
        let mut tasks = JoinSet::new();
        let mut keys = HashMap::new();
        for _ in 0..batch {
            let key = zipf.sample(&mut rng);
            let variant = match rng.u32(0..4) {
                0 => None,
                1 => Some("a"),
                2 => Some("b"),
                _ => Some("c"),
            };
            let client = Client::draw(&mut rng, cancel);
            let id = tasks
                .spawn(one_request(
                    run.service.clone(),
                    run.handle.clone(),
                    key,
                    variant,
                    client,
                ))
                .id();
            keys.insert(id, key);
        }
        while let Some(ended) = tasks.join_next_with_id().await {
            let id = match &ended {
                Ok((id, _)) => *id,
                Err(e) => e.id(),
            };
            tally.record(ended.map(|(_, o)| o), keys[&id]);
        }
        sent += batch;
        if !cancel {
            // Longer than any healthy origin call: the refreshes this batch started land now.
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        advance(Duration::from_millis(rng.u64(0..1500))).await;
    }
    tally
}

/// Lets background refreshes and hanging origin calls finish: past every timeout and hang.
async fn quiesce() {
    for _ in 0..4 {
        tokio::time::sleep(REFRESH_TIMEOUT + HANG).await;
        for _ in 0..64 {
            tokio::task::yield_now().await;
        }
    }
}

fn new_run(seed: u64, inject: bool, capacity: u64) -> Run {
    let origin = Origin::new(seed, inject);
    let layer = SwrLayer::new()
        .capacity_bytes(capacity)
        .max_body_bytes(16 << 10)
        .refresh_timeout(REFRESH_TIMEOUT)
        .lock_timeout(LOCK_TIMEOUT)
        // Refresh again soon after a failure: more refreshes, more chances to break.
        .refresh_backoff(Duration::from_millis(500), Duration::from_secs(4));
    let handle = layer.handle();
    let service = layer.layer(BoxCloneService::new(origin.service()));
    Run {
        seed,
        origin,
        service,
        handle,
    }
}

fn report(name: &str, run: &Run, tally: &Tally) {
    let book = run.origin.book();
    let stats = run.handle.stats();
    let mut outcomes: Vec<_> = tally.outcomes.iter().collect();
    outcomes.sort();
    let mut faults: Vec<_> = FAULT_KINDS
        .iter()
        .map(|f| {
            (
                fault_name(*f),
                book.faults.get(fault_name(*f)).copied().unwrap_or(0),
            )
        })
        .collect();
    faults.sort();
    eprintln!(
        "{name}: seed {seed}\n  requests {requests}, origin calls {calls}, stale answers {stale}, \
         origin panics passed through {panics}\n  faults injected: {faults:?}\n  outcomes: \
         {outcomes:?}\n  cache: fresh {fresh}, stale {stale_hits}, stale-if-error {sie}, misses \
         {misses}, coalesced {coalesced}, refreshes {started} started / {failed} failed ({timed_out} \
         timed out, {panicked} panicked), evictions {evictions}, bytes {bytes}/{capacity}",
        seed = run.seed,
        requests = tally.requests,
        calls = book.calls,
        stale = tally.stale_answers,
        panics = tally.origin_panics,
        fresh = stats.fresh_hits,
        stale_hits = stats.stale_hits,
        sie = stats.stale_if_error,
        misses = stats.misses,
        coalesced = stats.collapsed,
        started = stats.refreshes_started,
        failed = stats.refreshes_failed,
        timed_out = stats.refreshes_timed_out,
        panicked = stats.refreshes_panicked,
        evictions = stats.evictions,
        bytes = stats.bytes,
        capacity = stats.capacity_bytes,
    );
}

fn assert_no_violations(run: &Run, tally: &Tally) {
    assert!(
        tally.violations.is_empty(),
        "seed {}: {} violations, first ones:\n{}",
        run.seed,
        tally.violations.len(),
        tally.violations[..tally.violations.len().min(20)].join("\n")
    );
}

/// Faults and cancellations on: every request ends with its own key's answer (or the origin's
/// own failure), varied answers go only to their variant, the budget holds, and at quiescence
/// no load or refresh is left running and every key answers again.
#[tokio::test(start_paused = true)]
async fn faults_and_cancellations_lose_nothing_and_mix_nothing() {
    let _quiet = QuietInjectedPanics::install();
    let seed = seed("faults_and_cancellations");
    fastrand::seed(seed);
    let run = new_run(seed, true, 512 << 10);
    let mut tally = drive(&run, true).await;

    quiesce().await;
    let stats = run.handle.stats();
    assert_eq!(stats.loads_running, 0, "seed {seed}: loads left in flight");
    assert_eq!(
        stats.refreshes_running, 0,
        "seed {seed}: refreshes left running"
    );
    assert!(stats.bytes <= stats.capacity_bytes, "seed {seed}");

    // No key is wedged: with the origin healthy, every key answers with its own body.
    run.origin.set_inject(false);
    for key in 0..KEYS {
        let ended = tokio::spawn(one_request(
            run.service.clone(),
            run.handle.clone(),
            key,
            Some("a"),
            Client::Patient,
        ))
        .await;
        match ended {
            Ok(Ok(Outcome::Answered(_))) => {}
            other => tally
                .violations
                .push(format!("key {key} after quiescence: {other:?}")),
        }
    }
    quiesce().await;
    let stats = run.handle.stats();
    assert_eq!(stats.loads_running, 0, "seed {seed}");
    assert_eq!(stats.refreshes_running, 0, "seed {seed}");
    report("faults_and_cancellations", &run, &tally);
    assert_no_violations(&run, &tally);
    let book = run.origin.book();
    for kind in FAULT_KINDS {
        assert!(
            book.faults.get(fault_name(kind)).copied().unwrap_or(0) > 0,
            "seed {seed}: no {kind:?} was injected"
        );
    }
    assert!(
        tally.stale_answers > 0,
        "seed {seed}: the clock never made anything stale"
    );
}

/// No faults, no cancellations, room for every key: each (key, variant) is asked for at most
/// once per fresh lifetime — one origin call per key per expiry.
///
/// Two known gaps are kept out and pinned by ignored tests instead: varying resources are warmed
/// first (`cold_misses_of_two_variants_make_one_origin_call_each`), and refreshes land before
/// the clock jumps past their entry's stale window (`miss_while_a_refresh_runs_waits_for_it`).
#[tokio::test(start_paused = true)]
async fn without_faults_one_origin_call_per_key_per_expiry() {
    let seed = seed("without_faults");
    fastrand::seed(seed);
    let run = new_run(seed, false, 64 << 20);
    for key in (0..KEYS).filter(|k| varies(*k) && !no_store(*k)) {
        let warm = one_request(
            run.service.clone(),
            run.handle.clone(),
            key,
            None,
            Client::Patient,
        )
        .await;
        assert!(matches!(warm, Ok(Outcome::Answered(_))), "{warm:?}");
    }
    let tally = drive(&run, false).await;
    quiesce().await;
    report("without_faults", &run, &tally);
    assert_no_violations(&run, &tally);
    let stats = run.handle.stats();
    assert_eq!(stats.loads_running, 0);
    assert_eq!(stats.refreshes_running, 0);
    // Nothing was pushed out for room (`evictions` itself over-counts: see the ignored test
    // `re_storing_a_key_is_not_an_eviction`).
    assert!(
        stats.bytes < stats.capacity_bytes / 2,
        "the budget holds every key"
    );

    let book = run.origin.book();
    let mut duplicates = Vec::new();
    let mut expiries = 0;
    for (key, times) in &book.call_times {
        if no_store(key_of_target(key.split('|').next().unwrap_or_default())) {
            continue;
        }
        expiries += times.len();
        for pair in times.windows(2) {
            if pair[1] - pair[0] < TTL {
                duplicates.push(format!(
                    "{key}: called again {:?} after the previous call",
                    pair[1] - pair[0]
                ));
            }
        }
    }
    eprintln!(
        "without_faults: {expiries} origin calls for cacheable (key, variant)s, {} within one \
         fresh lifetime",
        duplicates.len()
    );
    assert!(
        duplicates.is_empty(),
        "seed {seed}: {} duplicate origin calls, first ones:\n{}",
        duplicates.len(),
        duplicates[..duplicates.len().min(20)].join("\n")
    );
}

/// BUG (src/engine/store.rs, `CountEvictions`): quick_cache 0.7 calls `Lifecycle::on_evict` for
/// the old value when a key is overwritten, so every refresh that re-stores a key counts as an
/// eviction "under memory pressure".
#[tokio::test(start_paused = true)]
async fn re_storing_a_key_is_not_an_eviction() {
    let origin = service_fn(|_request: Request<Full<Bytes>>| async {
        let mut response = Response::new(Full::new(Bytes::from_static(b"body")));
        response.headers_mut().insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=10"),
        );
        Ok::<_, std::io::Error>(response)
    });
    let layer = SwrLayer::new().capacity_bytes(64 << 20);
    let service = layer.layer(origin);
    for _ in 0..3 {
        let response = service
            .clone()
            .oneshot(Request::get("/one").body(Full::default()).expect("request"))
            .await
            .expect("answer");
        response.into_body().collect().await.expect("body");
        tokio::time::advance(Duration::from_secs(11)).await;
        for _ in 0..16 {
            tokio::task::yield_now().await;
        }
    }
    let stats = layer.stats();
    assert!(stats.stores >= 2, "the key was stored again: {stats:?}");
    assert_eq!(stats.entries, 1);
    assert_eq!(
        stats.evictions, 0,
        "one key in 64 MiB was never evicted: {stats:?}"
    );
}

/// Cold misses of a resource that varies: 20 concurrent requests for each of two variants make
/// one origin call per variant.
#[tokio::test(start_paused = true)]
async fn cold_misses_of_two_variants_make_one_origin_call_each() {
    let origin = Origin::new(1, false);
    let layer = SwrLayer::new();
    let service = layer.layer(BoxCloneService::new(origin.service()));
    let handle = layer.handle();
    let mut tasks = JoinSet::new();
    for i in 0..40 {
        let variant = if i % 2 == 0 { "a" } else { "b" };
        tasks.spawn(one_request(
            service.clone(),
            handle.clone(),
            5,
            Some(variant),
            Client::Patient,
        ));
    }
    while let Some(ended) = tasks.join_next().await {
        assert!(matches!(ended, Ok(Ok(Outcome::Answered(_)))), "{ended:?}");
    }
    let book = origin.book();
    let calls: Vec<_> = book
        .call_times
        .iter()
        .map(|(k, times)| (k.clone(), times.len()))
        .collect();
    assert_eq!(book.calls, 2, "one call per variant, got {calls:?}");
}

/// A body that fails mid-stream must reach an HTTP client as a failure, not as a complete but
/// shorter message. The layer's `SwrBody` for a failed buffering (prefix + error) reports an
/// exact `size_hint` of the prefix, so hyper frames it with `Content-Length: <prefix>` and the
/// client gets a clean 200 with half the body. Without the layer, the same origin's failure
/// reaches the client as an error (the soak's `--no-cache` control run shows both).
#[tokio::test]
async fn body_failing_mid_stream_reaches_an_http_client_as_an_error() {
    use axum::routing::get;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let app = axum::Router::new()
        .route(
            "/cut",
            get(|| async {
                let mut response = Response::new(axum::body::Body::new(FaultyBody::new(
                    Bytes::from(vec![b'x'; 4096]),
                    true,
                )));
                response.headers_mut().insert(
                    http::header::CACHE_CONTROL,
                    HeaderValue::from_static("max-age=60"),
                );
                response
            }),
        )
        .layer(SwrLayer::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("an address");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = Client::builder(TokioExecutor::new()).build_http::<http_body_util::Empty<Bytes>>();
    let uri: http::Uri = format!("http://{addr}/cut").parse().expect("a uri");
    let outcome = timeout(Duration::from_secs(10), async {
        let response = client.get(uri).await?;
        let length = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .cloned();
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((length, body.len()))
    })
    .await
    .expect("an answer in time");
    server.abort();
    if let Ok((length, received)) = outcome {
        panic!(
            "the client got a complete-looking response of {received} of 4096 bytes \
             (Content-Length {length:?}) instead of an error"
        );
    }
}

// ---- concurrency stress of the in-flight set (docs/concurrency.md) ----

/// Polls (real time, 10 s at most) until no load and no refresh runs; the stats then.
async fn nothing_in_flight(seed: u64, stats: impl Fn() -> tower_swr::Stats) -> tower_swr::Stats {
    let deadline = common::Deadline::after(
        Duration::from_secs(10),
        format!("seed {seed}: flights and refreshes to end"),
    );
    loop {
        let stats = stats();
        if stats.loads_running == 0 && stats.refreshes_running == 0 {
            return stats;
        }
        deadline.tick().await;
    }
}

/// Many tasks on a multi-threaded runtime join, land, fail, panic and drop flights of a few
/// keys through the engine: every call ends, each value is its key's, and nothing is left in
/// flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stress_engine_flights_on_many_threads() {
    use tower_swr::engine::{Freshness, Loaded, SwrCache};

    let _quiet = QuietInjectedPanics::install();
    let seed = seed("stress_engine_flights");
    let cache: SwrCache<u32, String> = SwrCache::builder()
        .lock_timeout(Duration::from_millis(20))
        .refresh_timeout(Duration::from_millis(20))
        .refresh_backoff(Duration::from_millis(1), Duration::from_millis(4))
        .build();
    let loads = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for task in 0..64u64 {
        let cache = cache.clone();
        let loads = Arc::clone(&loads);
        tasks.spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed ^ task);
            let mut violations = Vec::new();
            for _ in 0..150 {
                let key = rng.u32(0..6);
                let fault = rng.u32(0..100);
                let sleep = Duration::from_micros(rng.u64(0..2_000));
                let ttl = Duration::from_millis(rng.u64(0..5));
                let loads = Arc::clone(&loads);
                let load = move || async move {
                    loads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(sleep).await;
                    match fault {
                        0..=9 => Err(format!("injected error {key}")),
                        10..=12 => panic!("injected panic {key}"),
                        13..=15 => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Ok(Loaded::new(
                                format!("value of {key}"),
                                Freshness::new(ttl)
                                    .with_stale_while_revalidate(ttl)
                                    .with_stale_if_error(ttl),
                            ))
                        }
                        _ => Ok(Loaded::new(
                            format!("value of {key}"),
                            Freshness::new(ttl)
                                .with_stale_while_revalidate(ttl)
                                .with_stale_if_error(ttl),
                        )),
                    }
                };
                // Some callers give up early: their flight is dropped mid-load.
                let give_up = Duration::from_micros(rng.u64(100..3_000));
                let cancel = rng.u32(0..10) == 0;
                let cache = cache.clone();
                let call = tokio::spawn(async move {
                    let call = cache.get_or_load(key, load);
                    if cancel {
                        timeout(give_up, call).await.ok()
                    } else {
                        Some(call.await)
                    }
                });
                match timeout(Duration::from_secs(10), call).await {
                    Err(_) => violations.push(format!("key {key}: no answer in 10 s")),
                    Ok(Ok(Some(Ok(lookup)))) if lookup.value != format!("value of {key}") => {
                        violations.push(format!("key {key} got {}", lookup.value));
                    }
                    Ok(Ok(Some(Err(error)))) if *error != format!("injected error {key}") => {
                        violations.push(format!("key {key} got error {error}"));
                    }
                    Ok(Err(join)) if join.is_panic() => {
                        let text = panic_text(&*join.into_panic());
                        if text != format!("injected panic {key}") {
                            violations.push(format!("key {key} panicked: {text}"));
                        }
                    }
                    Ok(Err(join)) => violations.push(format!("key {key}: {join}")),
                    Ok(Ok(_)) => {}
                }
            }
            violations
        });
    }
    let mut violations = Vec::new();
    while let Some(ended) = tasks.join_next().await {
        violations.extend(ended.expect("a stress task"));
    }
    assert!(violations.is_empty(), "seed {seed}: {violations:?}");
    // Refreshes and abandoned loads settle: poll until nothing is in flight.
    let stats = nothing_in_flight(seed, || cache.stats()).await;
    eprintln!(
        "stress_engine_flights: seed {seed}, {} loads, {stats:?}",
        loads.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// The same through the HTTP layer (its origin path has its own flight handling), on a real
/// multi-threaded runtime with real time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stress_http_flights_on_many_threads() {
    let _quiet = QuietInjectedPanics::install();
    let seed = seed("stress_http_flights");
    let origin = Origin::new(seed, true).with_hang(Duration::from_millis(150));
    let layer = SwrLayer::new()
        .lock_timeout(Duration::from_millis(50))
        .refresh_timeout(Duration::from_millis(50))
        .refresh_backoff(Duration::from_millis(1), Duration::from_millis(4));
    let handle = layer.handle();
    let service = layer.layer(BoxCloneService::new(origin.service()));
    let mut tasks = JoinSet::new();
    for task in 0..32u64 {
        let service = service.clone();
        let handle = handle.clone();
        tasks.spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed ^ task);
            let mut violations = Vec::new();
            let mut panics = 0;
            for _ in 0..40 {
                // Few keys, so that requests meet in flights.
                let key = rng.usize(0..8) * 5;
                let variant = [None, Some("a"), Some("b")][rng.usize(0..3)];
                let client = Client::draw(&mut rng, true);
                // Purges now and then: more misses, more requests meeting in one flight.
                if rng.u32(0..3) == 0 {
                    handle.purge(&target_of(key));
                }
                let ended = tokio::spawn(one_request(
                    service.clone(),
                    handle.clone(),
                    key,
                    variant,
                    client,
                ))
                .await;
                match ended {
                    Ok(Ok(_)) => {}
                    Ok(Err(violation)) => violations.push(violation),
                    Err(join) if join.is_panic() => {
                        let text = panic_text(&*join.into_panic());
                        if text != format!("injected panic for {}", target_of(key)) {
                            violations.push(format!("panicked: {text}"));
                        }
                        panics += 1;
                    }
                    Err(join) => violations.push(join.to_string()),
                }
            }
            (violations, panics)
        });
    }
    let mut violations = Vec::new();
    while let Some(ended) = tasks.join_next().await {
        violations.extend(ended.expect("a stress task").0);
    }
    assert!(violations.is_empty(), "seed {seed}: {violations:?}");
    // Hanging origin calls (150 ms) and refreshes finish: poll until nothing is in flight.
    let stats = nothing_in_flight(seed, || handle.stats()).await;
    eprintln!("stress_http_flights: seed {seed}, {stats:?}");
}

/// A miss that arrives while a background refresh of the same key runs (the entry went past its
/// stale window meanwhile) should wait for that refresh rather than call the origin again.
#[tokio::test(start_paused = true)]
async fn miss_while_a_refresh_runs_waits_for_it() {
    let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = Arc::clone(&calls);
    let origin = service_fn(move |_request: Request<Full<Bytes>>| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        async move {
            if n == 2 {
                // The refresh is slow: it outlives the entry's stale window.
                tokio::time::sleep(Duration::from_secs(8)).await;
            }
            let mut response = Response::new(Full::new(Bytes::from(format!("v{n}"))));
            response.headers_mut().insert(
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=10, stale-while-revalidate=5"),
            );
            Ok::<_, std::io::Error>(response)
        }
    });
    let service = SwrLayer::new().layer(origin);
    let get = || {
        Request::get("/slow")
            .body(Full::default())
            .expect("request")
    };
    let first = service.clone().oneshot(get()).await.expect("answer");
    first.into_body().collect().await.expect("body");
    advance(Duration::from_secs(11)).await;
    // Stale: answered at once, the refresh starts (and takes 8 s).
    let stale = service.clone().oneshot(get()).await.expect("answer");
    assert_eq!(
        stale.extensions().get::<CacheInfo>().map(|i| i.status),
        Some(CacheStatus::Stale)
    );
    // Let the spawned refresh start its (8 s) origin call before the clock moves.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    advance(Duration::from_secs(5)).await;
    // Past the stale window, the refresh still running: this request should wait for it.
    let late = service.clone().oneshot(get()).await.expect("answer");
    let body = late.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "a second origin call while the refresh ran (answered {body:?})"
    );
}
