#![cfg(feature = "redis")]
//! Black-box tests of streaming cache fills with the Redis tier (feature `redis`), written
//! from the README, the rustdoc and the CHANGELOG only: a streamed miss reaches its client as
//! the origin sends it and, once whole, memory and Redis; other instances wait for it instead
//! of calling the origin; failed, mis-sized or oversized fills, purged fills and responses that
//! must not be shared never come back out of Redis; HEAD, Range and `Vary` are answered right.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::redis_server::RedisServer;
use common::*;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::time::{sleep, timeout, Instant};
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt};
use tower_swr::{CacheStatus, SwrBody, SwrHandle, SwrLayer, SwrService};

type Origin = BoxCloneService<Request<ReqBody>, Response<FedBody>, BoxError>;
type Instance = (SwrService<Origin>, SwrHandle);
type Got = Response<SwrBody<FedBody>>;
type Tx = tokio::sync::mpsc::Sender<Result<Bytes, BoxError>>;

/// The body senders of the origin's calls the test feeds by hand, by call number (from 1).
#[derive(Clone, Default)]
struct Senders(Arc<Mutex<BTreeMap<usize, Tx>>>);

impl Senders {
    fn tx(&self, call: usize) -> Tx {
        (self.0.lock().unwrap().get(&call).cloned())
            .unwrap_or_else(|| panic!("no body is fed for call {call}"))
    }

    async fn send(&self, call: usize, chunk: impl Into<Bytes>) {
        let _ = self.tx(call).send(Ok(chunk.into())).await;
    }

    async fn fail(&self, call: usize, message: &'static str) {
        let _ = self.tx(call).send(Err(message.into())).await;
        self.end(call);
    }

    fn end(&self, call: usize) {
        self.0.lock().unwrap().remove(&call);
    }
}

/// An origin answering 200 with `headers`. Calls up to `manual` get a body the test feeds
/// through the returned [`Senders`]; later calls get `later v<n>` in two chunks by themselves.
fn fed(
    headers: &'static [(&'static str, &'static str)],
    manual: usize,
) -> (Origin, Calls, Senders) {
    fed_gated(headers, manual, None)
}

/// [`fed`], with call 1's head held until `gate` opens.
fn fed_gated(
    headers: &'static [(&'static str, &'static str)],
    manual: usize,
    gate: Option<Gate>,
) -> (Origin, Calls, Senders) {
    let senders = Senders::default();
    let (service, calls) = origin({
        let senders = senders.clone();
        move |n, _request| {
            let (senders, gate) = (senders.clone(), gate.clone());
            async move {
                let (tx, rx) = tokio::sync::mpsc::channel(16);
                if n <= manual {
                    senders.0.lock().unwrap().insert(n, tx);
                    if let (1, Some(gate)) = (n, gate) {
                        gate.wait().await;
                    }
                } else {
                    tokio::spawn(async move {
                        let _ = tx.send(Ok(Bytes::from("later "))).await;
                        sleep(Duration::from_millis(5)).await;
                        let _ = tx.send(Ok(Bytes::from(format!("v{n}")))).await;
                    });
                }
                let mut response = Response::new(FedBody(rx));
                for (name, value) in headers {
                    response.headers_mut().append(
                        http::HeaderName::from_static(name),
                        http::HeaderValue::from_static(value),
                    );
                }
                Ok::<_, BoxError>(response)
            }
        }
    });
    (BoxCloneService::new(service), calls, senders)
}

fn instances(
    redis: &RedisServer,
    origin: &Origin,
    n: usize,
    layer: fn() -> SwrLayer,
) -> Vec<Instance> {
    (0..n)
        .map(|_| {
            let layer = layer()
                .lock_timeout(Duration::from_secs(3))
                .redis(redis.config());
            let handle = layer.handle();
            (layer.layer(origin.clone()), handle)
        })
        .collect()
}

fn plain() -> SwrLayer {
    SwrLayer::new()
}

/// The response head (8 s at most).
fn send(
    service: &SwrService<Origin>,
    request: Request<ReqBody>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Got> + Send>> {
    let call: std::pin::Pin<Box<dyn std::future::Future<Output = Result<Got, BoxError>> + Send>> =
        Box::pin(service.clone().oneshot(request));
    Box::pin(async move {
        timeout(Duration::from_secs(8), call)
            .await
            .expect("a response head within 8 s")
            .expect("the origin never fails")
    })
}

/// The next data chunk of `response` (2 s at most); `None` at its end.
async fn next_chunk(response: &mut Got) -> Option<Result<Bytes, BoxError>> {
    loop {
        let frame = timeout(Duration::from_secs(2), response.body_mut().frame())
            .await
            .expect("a frame within 2 s")?;
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    return Some(Ok(data));
                }
            }
            Err(e) => return Some(Err(e)),
        }
    }
}

/// The rest of the body, or the body error.
async fn rest(mut response: Got) -> Result<Bytes, BoxError> {
    let mut all = BytesMut::new();
    while let Some(chunk) = next_chunk(&mut response).await {
        all.extend_from_slice(&chunk?);
    }
    Ok(all.freeze())
}

fn fetch(
    service: &SwrService<Origin>,
    request: Request<ReqBody>,
) -> impl std::future::Future<Output = (CacheStatus, Bytes)> + Send {
    let head = send(service, request);
    async move {
        let response = head.await;
        let status = info(&response).status;
        let body = rest(response).await.expect("a whole body");
        (status, body)
    }
}

/// Polls `path` on `service` until it answers from Redis (5 s at most); every answer must be
/// `expected`.
async fn until_shared(service: &SwrService<Origin>, path: &str, expected: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = fetch(service, get(path)).await;
        assert_eq!(
            &body[..],
            expected,
            "{path} answered {status:?} with other bytes"
        );
        if status == CacheStatus::SharedTier {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never answered from Redis (last {status:?})"
        );
        sleep(Duration::from_millis(20)).await;
    }
}

/// Starts a fill of `path` on `service` and reads its first chunk, which the origin (call
/// `n`) sends while it holds the rest: the miss streams.
async fn start_fill(
    service: &SwrService<Origin>,
    senders: &Senders,
    n: usize,
    path: &str,
    first: &[u8],
) -> Got {
    let request = get(path);
    let pending = tokio::spawn({
        let service = service.clone();
        async move { send(&service, request).await }
    });
    let deadline = Deadline::after(Duration::from_secs(5), "the origin call");
    while !senders.0.lock().unwrap().contains_key(&n) {
        deadline.tick().await;
    }
    senders.send(n, Bytes::copy_from_slice(first)).await;
    let mut response = pending.await.expect("no panic");
    assert_eq!(info(&response).status, CacheStatus::Miss);
    let chunk = next_chunk(&mut response)
        .await
        .expect("a first chunk")
        .expect("data");
    assert_eq!(
        &chunk[..],
        first,
        "the first bytes arrive while the origin holds the rest"
    );
    response
}

const CACHEABLE: &[(&str, &str)] = &[("cache-control", "max-age=60")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_miss_is_stored_whole_in_memory_and_redis_and_shared_byte_identical(
) -> TestResult {
    let Some(redis) = RedisServer::start("streamed miss reaches redis") else {
        return Ok(());
    };
    let (origin, calls, senders) = fed(CACHEABLE, 1);
    let fleet = instances(&redis, &origin, 3, plain);
    let data = patterned_bytes(3000);
    let mut response = start_fill(&fleet[0].0, &senders, 1, "/s", &data[..1000]).await;
    senders.send(1, data.slice(1000..2000)).await;
    let chunk = next_chunk(&mut response)
        .await
        .expect("more")
        .expect("data");
    assert_eq!(&chunk[..], &data[1000..2000]);
    senders.send(1, data.slice(2000..)).await;
    senders.end(1);
    let tail = rest(response).await?;
    assert_eq!(&tail[..], &data[2000..]);
    let handle = fleet[0].1.clone();
    eventually("A stores the fill in memory", move || {
        handle.stats().entries == 1
    })
    .await;
    let (status, body) = fetch(&fleet[0].0, get("/s")).await;
    assert_eq!(status, CacheStatus::Fresh, "A answers from memory");
    assert!(body == data, "A's stored body: {} bytes", body.len());
    until_shared(&fleet[1].0, "/s", &data).await;
    until_shared(&fleet[2].0, "/s", &data).await;
    assert_eq!(calls.get(), 1, "one origin call for three instances");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_on_another_instance_during_a_streamed_fill_waits_for_it_instead_of_the_origin(
) -> TestResult {
    let Some(redis) = RedisServer::start("fleet waits for a streamed fill") else {
        return Ok(());
    };
    let (origin, calls, senders) = fed(CACHEABLE, 2);
    let fleet = instances(&redis, &origin, 2, plain);
    let data = patterned_bytes(2000);
    let response = start_fill(&fleet[0].0, &senders, 1, "/w", &data[..500]).await;
    let waiter = tokio::spawn({
        let service = fleet[1].0.clone();
        async move { fetch(&service, get("/w")).await }
    });
    sleep(Duration::from_millis(500)).await;
    assert_eq!(
        calls.get(),
        1,
        "B makes no origin call of its own while A's fill runs"
    );
    senders.send(1, data.slice(500..)).await;
    senders.end(1);
    assert_eq!(&rest(response).await?[..], &data[500..]);
    let (status, body) = waiter.await?;
    assert_eq!(
        &body[..],
        &data[..],
        "B gets the complete body (answered {status:?})"
    );
    assert_eq!(calls.get(), 1, "the fleet loads the key once");
    Ok(())
}

/// Whether any value in Redis contains `needle`.
fn redis_holds(redis: &RedisServer, needle: &[u8]) -> Result<bool, BoxError> {
    let mut connection = redis.client().get_connection()?;
    for key in redis.keys() {
        let kind: String = redis::cmd("TYPE").arg(&key).query(&mut connection)?;
        let values: Vec<Vec<u8>> = match kind.as_str() {
            "hash" => redis::cmd("HVALS").arg(&key).query(&mut connection)?,
            "string" => vec![redis::cmd("GET").arg(&key).query(&mut connection)?],
            _ => Vec::new(),
        };
        if values
            .iter()
            .any(|value| value.windows(needle.len()).any(|w| w == needle))
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// After a fill that must not be stored, another instance calls the origin (call 2).
async fn not_in_redis(fleet: &[Instance], calls: &Calls, path: &str) {
    sleep(Duration::from_millis(400)).await;
    let (status, body) = fetch(&fleet[1].0, get(path)).await;
    assert_ne!(
        status,
        CacheStatus::SharedTier,
        "answered from Redis: {body:?}"
    );
    assert_eq!(
        &body[..],
        b"later v2",
        "B's answer is its own origin call's"
    );
    assert_eq!(calls.get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_whose_origin_body_fails_midway_is_never_written_to_redis() -> TestResult {
    let Some(redis) = RedisServer::start("failed fill") else {
        return Ok(());
    };
    let (origin, calls, senders) = fed(CACHEABLE, 1);
    let fleet = instances(&redis, &origin, 2, plain);
    let response = start_fill(&fleet[0].0, &senders, 1, "/f", b"half of it").await;
    senders.fail(1, "connection reset").await;
    assert!(
        rest(response).await.is_err(),
        "the client gets a body error"
    );
    not_in_redis(&fleet, &calls, "/f").await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_shorter_than_its_content_length_is_never_written_to_redis() -> TestResult {
    let Some(redis) = RedisServer::start("short fill") else {
        return Ok(());
    };
    const HEADERS: &[(&str, &str)] = &[("cache-control", "max-age=60"), ("content-length", "8")];
    let (origin, calls, senders) = fed(HEADERS, 1);
    let fleet = instances(&redis, &origin, 2, plain);
    let response = start_fill(&fleet[0].0, &senders, 1, "/short", b"01234").await;
    senders.end(1);
    assert!(
        rest(response).await.is_err(),
        "5 of 8 bytes is a body error"
    );
    not_in_redis(&fleet, &calls, "/short").await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_longer_than_its_content_length_is_never_written_to_redis() -> TestResult {
    let Some(redis) = RedisServer::start("long fill") else {
        return Ok(());
    };
    const HEADERS: &[(&str, &str)] = &[("cache-control", "max-age=60"), ("content-length", "8")];
    let (origin, calls, senders) = fed(HEADERS, 1);
    let fleet = instances(&redis, &origin, 2, plain);
    let response = start_fill(&fleet[0].0, &senders, 1, "/long", b"01234").await;
    senders.send(1, "56789abcdef").await;
    senders.end(1);
    assert!(
        rest(response).await.is_err(),
        "16 bytes for 8 is a body error"
    );
    not_in_redis(&fleet, &calls, "/long").await;
    assert!(
        !redis_holds(&redis, b"56789abcdef")?,
        "the overlong body is in Redis"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_growing_past_max_body_bytes_reaches_its_client_and_never_redis() -> TestResult {
    let Some(redis) = RedisServer::start("oversized fill") else {
        return Ok(());
    };
    let (origin, calls, senders) = fed(CACHEABLE, 1);
    let fleet = instances(&redis, &origin, 2, || SwrLayer::new().max_body_bytes(64));
    let data = patterned_bytes(200);
    let response = start_fill(&fleet[0].0, &senders, 1, "/big", &data[..40]).await;
    for part in data[40..].chunks(40) {
        senders.send(1, Bytes::copy_from_slice(part)).await;
    }
    senders.end(1);
    assert_eq!(
        &rest(response).await?[..],
        &data[40..],
        "the client gets every byte"
    );
    not_in_redis(&fleet, &calls, "/big").await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_dropping_the_response_mid_stream_does_not_stop_the_fill_reaching_redis(
) -> TestResult {
    let Some(redis) = RedisServer::start("dropped client") else {
        return Ok(());
    };
    let (origin, calls, senders) = fed(CACHEABLE, 1);
    let fleet = instances(&redis, &origin, 2, plain);
    let data = patterned_bytes(1500);
    let response = start_fill(&fleet[0].0, &senders, 1, "/drop", &data[..500]).await;
    drop(response);
    senders.send(1, data.slice(500..1000)).await;
    sleep(Duration::from_millis(50)).await;
    senders.send(1, data.slice(1000..)).await;
    senders.end(1);
    until_shared(&fleet[1].0, "/drop", &data).await;
    assert_eq!(calls.get(), 1);
    Ok(())
}

/// A purge (by `purge`) on instance B while A's fill runs: afterwards no instance answers the
/// fill's value from Redis.
async fn purge_during_fill(name: &str, purge: fn(&SwrHandle), path: &'static str) -> TestResult {
    let Some(redis) = RedisServer::start(name) else {
        return Ok(());
    };
    const HEADERS: &[(&str, &str)] = &[("cache-control", "max-age=60"), ("surrogate-key", "shelf")];
    let (origin, calls, senders) = fed(HEADERS, 1);
    let fleet = instances(&redis, &origin, 4, plain);
    let response = start_fill(&fleet[0].0, &senders, 1, path, b"old ").await;
    purge(&fleet[1].1);
    // The purge reaches A through the bus in milliseconds; the fill ends after it.
    sleep(Duration::from_millis(300)).await;
    senders.send(1, "value").await;
    senders.end(1);
    let _ = rest(response).await;
    // Checked for a second: a late write must not bring it back either.
    for _ in 0..5 {
        sleep(Duration::from_millis(200)).await;
        for (i, (service, _)) in fleet.iter().enumerate().take(3).skip(1) {
            let (status, body) = fetch(service, get(path)).await;
            assert_ne!(
                &body[..],
                b"old value",
                "instance {i} answered the purged fill ({status:?})"
            );
        }
    }
    // What was loaded after the purge is shared: a fourth instance gets it from Redis.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (status, body) = fetch(&fleet[3].0, get(path)).await;
        assert_ne!(
            &body[..],
            b"old value",
            "instance 3 answered the purged fill"
        );
        if status == CacheStatus::SharedTier {
            assert!(body.starts_with(b"later v"), "{body:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the value loaded after the purge never reached Redis (last {status:?})"
        );
        sleep(Duration::from_millis(20)).await;
    }
    assert!(
        calls.get() >= 2,
        "the value loaded after the purge came from the origin"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_on_another_instance_during_a_fill_wins_over_the_fill() -> TestResult {
    purge_during_fill(
        "purge during fill",
        |h| {
            h.purge("/p/1");
        },
        "/p/1",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_purge_on_another_instance_during_a_fill_wins_over_the_fill() -> TestResult {
    purge_during_fill(
        "prefix purge during fill",
        |h| {
            h.purge_prefix("/p/");
        },
        "/p/2",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_purge_on_another_instance_during_a_fill_wins_over_the_fill() -> TestResult {
    purge_during_fill(
        "tag purge during fill",
        |h| {
            h.purge_tag(["shelf"]);
        },
        "/p/3",
    )
    .await
}

/// A response that must not be shared streams to its client and never reaches Redis.
async fn streamed_never_shared(
    name: &str,
    headers: &'static [(&'static str, &'static str)],
    request_header: Option<(&'static str, &'static str)>,
) -> TestResult {
    streamed_never_shared_by(name, headers, request_header, plain).await
}

async fn streamed_never_shared_by(
    name: &str,
    headers: &'static [(&'static str, &'static str)],
    request_header: Option<(&'static str, &'static str)>,
    layer: fn() -> SwrLayer,
) -> TestResult {
    let Some(redis) = RedisServer::start(name) else {
        return Ok(());
    };
    let (origin, calls, senders) = fed(headers, 1);
    let fleet = instances(&redis, &origin, 2, layer);
    let make = || match request_header {
        Some((n, v)) => get_headers("/u", &[(n, v)]),
        None => get("/u"),
    };
    let pending = tokio::spawn({
        let service = fleet[0].0.clone();
        let request = make();
        async move { send(&service, request).await }
    });
    let deadline = Deadline::after(Duration::from_secs(5), "the origin call");
    while !senders.0.lock().unwrap().contains_key(&1) {
        deadline.tick().await;
    }
    senders.send(1, "secret-first ").await;
    let mut response = pending.await?;
    let first = next_chunk(&mut response).await.expect("a chunk")?;
    assert_eq!(
        &first[..],
        b"secret-first ",
        "streamed while the origin holds the rest"
    );
    senders.send(1, "secret-rest").await;
    senders.end(1);
    assert_eq!(&rest(response).await?[..], b"secret-rest");
    sleep(Duration::from_millis(400)).await;
    let (status, body) = fetch(&fleet[1].0, make()).await;
    assert_ne!(
        status,
        CacheStatus::SharedTier,
        "answered from Redis: {body:?}"
    );
    assert_eq!(&body[..], b"later v2");
    assert_eq!(calls.get(), 2);
    let mut connection = redis.client().get_connection()?;
    for key in redis.keys() {
        let kind: String = redis::cmd("TYPE").arg(&key).query(&mut connection)?;
        let values: Vec<Vec<u8>> = match kind.as_str() {
            "hash" => redis::cmd("HVALS").arg(&key).query(&mut connection)?,
            "string" => vec![redis::cmd("GET").arg(&key).query(&mut connection)?],
            _ => Vec::new(),
        };
        for value in values {
            assert!(
                !value.windows(6).any(|w| w == b"secret"),
                "the body is in Redis under {:?}",
                String::from_utf8_lossy(&key)
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_private_response_never_reaches_redis() -> TestResult {
    streamed_never_shared("private", &[("cache-control", "private, max-age=60")], None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_no_store_response_never_reaches_redis() -> TestResult {
    streamed_never_shared("no-store", &[("cache-control", "no-store")], None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_response_with_set_cookie_never_reaches_redis() -> TestResult {
    const HEADERS: &[(&str, &str)] = &[("cache-control", "max-age=60"), ("set-cookie", "sid=abc")];
    streamed_never_shared("set-cookie", HEADERS, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_answer_to_an_authorized_request_never_reaches_redis() -> TestResult {
    let auth = Some(("authorization", "Bearer token-1"));
    streamed_never_shared("authorization", CACHEABLE, auth).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_and_range_on_another_instance_during_a_fill_are_answered_right() -> TestResult {
    let Some(redis) = RedisServer::start("head and range during fill") else {
        return Ok(());
    };
    let (origin, calls, senders) = fed(CACHEABLE, 1);
    let fleet = instances(&redis, &origin, 3, plain);
    let data = patterned_bytes(1000);
    let response = start_fill(&fleet[0].0, &senders, 1, "/hr", &data[..300]).await;
    let head = tokio::spawn({
        let service = fleet[1].0.clone();
        async move {
            let response = send(&service, request(Method::HEAD, "/hr")).await;
            let cc = header_value(&response, header::CACHE_CONTROL);
            let length = header_value(&response, header::CONTENT_LENGTH);
            (
                response.status(),
                cc,
                length,
                rest(response).await.expect("an empty body"),
            )
        }
    });
    let range = tokio::spawn({
        let service = fleet[2].0.clone();
        async move {
            let response = send(&service, get_headers("/hr", &[("range", "bytes=250-349")])).await;
            let cr = header_value(&response, header::CONTENT_RANGE);
            (response.status(), cr, rest(response).await.expect("a body"))
        }
    });
    sleep(Duration::from_millis(200)).await;
    senders.send(1, data.slice(300..)).await;
    senders.end(1);
    assert_eq!(&rest(response).await?[..], &data[300..]);
    let (status, cc, length, body) = head.await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cc.as_deref(), Some("max-age=60"), "the GET's headers");
    assert!(body.is_empty(), "a HEAD has no body: {} bytes", body.len());
    assert!(
        length.is_none() || length.as_deref() == Some("1000"),
        "a HEAD's Content-Length is the body's: {length:?}"
    );
    let (status, cr, body) = range.await?;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(cr.as_deref(), Some("bytes 250-349/1000"));
    assert_eq!(&body[..], &data[250..350], "the range's bytes");
    assert_eq!(
        calls.get(),
        1,
        "HEAD and Range on other instances made no origin call"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_and_range_on_fresh_instances_for_a_streamed_value_in_redis_are_answered_right(
) -> TestResult {
    let Some(redis) = RedisServer::start("head and range from redis") else {
        return Ok(());
    };
    let (origin, calls, senders) = fed(CACHEABLE, 1);
    let fleet = instances(&redis, &origin, 4, plain);
    let data = patterned_bytes(1000);
    let response = start_fill(&fleet[0].0, &senders, 1, "/hr", &data[..300]).await;
    senders.send(1, data.slice(300..)).await;
    senders.end(1);
    rest(response).await?;
    until_shared(&fleet[1].0, "/hr", &data).await;
    // What a GET's Content-Length on the wire would be: its header, or its exact size.
    let get_answer = send(&fleet[1].0, get("/hr")).await;
    let get_length = header_value(&get_answer, header::CONTENT_LENGTH).or_else(|| {
        http_body::Body::size_hint(get_answer.body())
            .exact()
            .map(|n| n.to_string())
    });
    let head = send(&fleet[2].0, request(Method::HEAD, "/hr")).await;
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        header_value(&head, header::CONTENT_LENGTH),
        get_length,
        "a HEAD's Content-Length is the GET's"
    );
    assert_eq!(
        header_value(&head, header::CACHE_CONTROL).as_deref(),
        Some("max-age=60")
    );
    assert!(rest(head).await?.is_empty(), "a HEAD has no body");
    let range = send(&fleet[3].0, get_headers("/hr", &[("range", "bytes=-10")])).await;
    assert_eq!(range.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        header_value(&range, header::CONTENT_RANGE).as_deref(),
        Some("bytes 990-999/1000")
    );
    assert_eq!(&rest(range).await?[..], &data[990..]);
    assert_eq!(calls.get(), 1);
    Ok(())
}

/// An origin answering `Vary: Accept-Language` with `lang=<value> call=<n>`, streamed in
/// chunks.
fn vary_origin() -> (Origin, Calls) {
    let (service, calls) = origin(|n, request: Request<ReqBody>| async move {
        let lang = header_text(request.headers(), "accept-language").unwrap_or_default();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let text = format!("lang={lang} call={n} {}", "x".repeat(200));
            for part in text.as_bytes().chunks(50) {
                let _ = tx.send(Ok(Bytes::copy_from_slice(part))).await;
                sleep(Duration::from_millis(10)).await;
            }
        });
        let mut response = Response::new(FedBody(rx));
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, "max-age=60".parse()?);
        headers.insert(header::VARY, "Accept-Language".parse()?);
        Ok::<_, BoxError>(response)
    });
    (BoxCloneService::new(service), calls)
}

fn lang_of(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.split(' ').next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_variants_are_shared_per_accept_language_and_never_crossed() -> TestResult {
    let Some(redis) = RedisServer::start("vary") else {
        return Ok(());
    };
    let (origin, calls) = vary_origin();
    let fleet = instances(&redis, &origin, 3, plain);
    let en = || get_headers("/v", &[("accept-language", "en")]);
    let de = || get_headers("/v", &[("accept-language", "de")]);
    let (_, en_body) = fetch(&fleet[0].0, en()).await;
    let (_, de_body) = fetch(&fleet[0].0, de()).await;
    assert_eq!(lang_of(&en_body), "lang=en");
    assert_eq!(lang_of(&de_body), "lang=de");
    assert_eq!(calls.get(), 2);
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut en_shared, mut de_shared) = (false, false);
    while !(en_shared && de_shared) {
        let (status, body) = fetch(&fleet[1].0, en()).await;
        assert_eq!(body, en_body, "instance B's en answer ({status:?})");
        en_shared |= status == CacheStatus::SharedTier;
        let (status, body) = fetch(&fleet[1].0, de()).await;
        assert_eq!(body, de_body, "instance B's de answer ({status:?})");
        de_shared |= status == CacheStatus::SharedTier;
        assert!(
            Instant::now() < deadline,
            "the variants never came from Redis"
        );
        sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(calls.get(), 2, "both variants came from Redis");
    // A third instance, asked first for de, then for a language nobody asked for.
    let (status, body) = fetch(&fleet[2].0, de()).await;
    assert_eq!((status, &body), (CacheStatus::SharedTier, &de_body));
    let (status, body) = fetch(&fleet[2].0, get_headers("/v", &[("accept-language", "fr")])).await;
    assert_eq!(
        lang_of(&body),
        "lang=fr",
        "never another variant ({status:?})"
    );
    let (status, body) = fetch(&fleet[2].0, en()).await;
    assert_eq!(
        body, en_body,
        "the en variant on the third instance ({status:?})"
    );
    assert_eq!(calls.get(), 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_on_the_filling_instance_itself_wins_over_its_fill() -> TestResult {
    let Some(redis) = RedisServer::start("purge on the filling instance") else {
        return Ok(());
    };
    let (origin, calls, senders) = fed(CACHEABLE, 1);
    let fleet = instances(&redis, &origin, 3, plain);
    let response = start_fill(&fleet[0].0, &senders, 1, "/self", b"old ").await;
    fleet[0].1.purge("/self");
    sleep(Duration::from_millis(300)).await;
    senders.send(1, "value").await;
    senders.end(1);
    let _ = rest(response).await;
    sleep(Duration::from_millis(400)).await;
    for (i, (service, _)) in fleet.iter().enumerate() {
        let (status, body) = fetch(service, get("/self")).await;
        assert_ne!(
            &body[..],
            b"old value",
            "instance {i} answered the fill purged during it ({status:?})"
        );
    }
    assert!(calls.get() >= 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filling_instance_does_not_serve_a_fill_purged_elsewhere_during_it() -> TestResult {
    let Some(redis) = RedisServer::start("purge elsewhere, filling instance") else {
        return Ok(());
    };
    let (origin, _calls, senders) = fed(CACHEABLE, 1);
    let fleet = instances(&redis, &origin, 2, plain);
    let response = start_fill(&fleet[0].0, &senders, 1, "/other", b"old ").await;
    fleet[1].1.purge("/other");
    sleep(Duration::from_millis(300)).await;
    senders.send(1, "value").await;
    senders.end(1);
    let _ = rest(response).await;
    sleep(Duration::from_millis(400)).await;
    let (status, body) = fetch(&fleet[0].0, get("/other")).await;
    assert_ne!(
        &body[..],
        b"old value",
        "the filling instance answered its fill purged on another instance ({status:?})"
    );
    Ok(())
}

/// Instance B waits (under the fleet's lock) for A's fill, which then ends in `end`; B must
/// get a whole answer of its own origin call, well before the lock timeout (3 s).
async fn waiter_of_a_failed_fill(
    name: &str,
    layer: fn() -> SwrLayer,
    big: bool,
    fail: bool,
) -> TestResult {
    waiter_of_a_failed_fill_with(name, CACHEABLE, layer, big, fail).await
}

async fn waiter_of_a_failed_fill_with(
    name: &str,
    headers: &'static [(&'static str, &'static str)],
    layer: fn() -> SwrLayer,
    big: bool,
    fail: bool,
) -> TestResult {
    let Some(redis) = RedisServer::start(name) else {
        return Ok(());
    };
    let (origin, calls, senders) = fed(headers, 1);
    let fleet = instances(&redis, &origin, 2, layer);
    let response = start_fill(&fleet[0].0, &senders, 1, "/wf", b"first").await;
    let waiter = tokio::spawn({
        let service = fleet[1].0.clone();
        async move {
            let started = Instant::now();
            let got = fetch(&service, get("/wf")).await;
            (got, started.elapsed())
        }
    });
    sleep(Duration::from_millis(300)).await;
    assert_eq!(calls.get(), 1, "B waits for A's fill");
    let ended = Instant::now();
    if big {
        for _ in 0..4 {
            senders.send(1, Bytes::from(vec![b'z'; 40])).await;
        }
    }
    if fail {
        senders.fail(1, "reset").await;
    } else {
        senders.end(1);
    }
    let _ = rest(response).await;
    let ((status, body), _) = waiter.await?;
    let after_end = ended.elapsed();
    assert_eq!(
        &body[..],
        b"later v2",
        "B's answer ({status:?}) is its own load's"
    );
    assert!(
        after_end < Duration::from_millis(1500),
        "B waited {after_end:?} after A's fill failed (lock timeout 3 s)"
    );
    assert_eq!(calls.get(), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_waiting_for_a_fill_whose_body_fails_loads_at_once() -> TestResult {
    waiter_of_a_failed_fill("waiter of a failed fill", plain, false, true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_waiting_for_a_fill_that_grows_past_max_body_bytes_loads_at_once() -> TestResult
{
    waiter_of_a_failed_fill(
        "waiter of an oversized fill",
        || SwrLayer::new().max_body_bytes(64),
        true,
        false,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_whose_content_length_exceeds_max_body_bytes_never_reaches_redis() -> TestResult {
    let Some(redis) = RedisServer::start("declared oversized fill") else {
        return Ok(());
    };
    const HEADERS: &[(&str, &str)] = &[("cache-control", "max-age=60"), ("content-length", "100")];
    let (origin, calls, senders) = fed(HEADERS, 1);
    let fleet = instances(&redis, &origin, 2, || SwrLayer::new().max_body_bytes(64));
    let data = patterned_bytes(100);
    let response = start_fill(&fleet[0].0, &senders, 1, "/declared", &data[..50]).await;
    senders.send(1, data.slice(50..)).await;
    senders.end(1);
    assert!(
        rest(response).await? == data.slice(50..),
        "the client gets every byte"
    );
    sleep(Duration::from_millis(400)).await;
    let response = send(&fleet[1].0, get("/declared")).await;
    assert_ne!(
        info(&response).status,
        CacheStatus::SharedTier,
        "answered from Redis"
    );
    assert_eq!(calls.get(), 2);
    drop(response);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_variant_asked_on_another_instance_during_a_fill_is_never_the_filling_one(
) -> TestResult {
    let Some(redis) = RedisServer::start("vary during fill") else {
        return Ok(());
    };
    // Call 1 (en) is fed by hand; later calls answer `later v<n>`.
    const HEADERS: &[(&str, &str)] =
        &[("cache-control", "max-age=60"), ("vary", "Accept-Language")];
    let (origin, calls, senders) = fed(HEADERS, 1);
    let fleet = instances(&redis, &origin, 2, plain);
    let request = get_headers("/vf", &[("accept-language", "en")]);
    let pending = tokio::spawn(send(&fleet[0].0, request));
    let deadline = Deadline::after(Duration::from_secs(5), "the origin call");
    while !senders.0.lock().unwrap().contains_key(&1) {
        deadline.tick().await;
    }
    senders.send(1, "english ").await;
    let mut response = pending.await?;
    assert_eq!(
        &next_chunk(&mut response).await.expect("a chunk")?[..],
        b"english "
    );
    let other = tokio::spawn(fetch(
        &fleet[1].0,
        get_headers("/vf", &[("accept-language", "de")]),
    ));
    sleep(Duration::from_millis(300)).await;
    senders.send(1, "text").await;
    senders.end(1);
    assert_eq!(&rest(response).await?[..], b"text");
    let (status, body) = other.await?;
    assert_ne!(
        &body[..],
        b"english text",
        "the de request got the en variant ({status:?})"
    );
    assert_eq!(&body[..], b"later v2");
    assert_eq!(calls.get(), 2, "one origin call per variant");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conditional_request_on_another_instance_during_a_fill_gets_304() -> TestResult {
    let Some(redis) = RedisServer::start("conditional during fill") else {
        return Ok(());
    };
    const HEADERS: &[(&str, &str)] = &[
        ("cache-control", "max-age=60"),
        ("etag", "\"v1\""),
        ("content-type", "text/plain"),
        ("x-origin", "yes"),
    ];
    let (origin, calls, senders) = fed(HEADERS, 1);
    let fleet = instances(&redis, &origin, 3, plain);
    let response = start_fill(&fleet[0].0, &senders, 1, "/c", b"abc").await;
    let conditional = tokio::spawn(send(
        &fleet[1].0,
        get_headers("/c", &[("if-none-match", "\"v1\"")]),
    ));
    sleep(Duration::from_millis(200)).await;
    senders.send(1, "def").await;
    senders.end(1);
    rest(response).await?;
    let answer = conditional.await?;
    assert_eq!(answer.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(
        header_value(&answer, header::ETAG).as_deref(),
        Some("\"v1\"")
    );
    // The stored head reaches Redis with the body: a third instance answers it whole.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = send(&fleet[2].0, get("/c")).await;
        let status = info(&answer).status;
        let headers = answer.headers().clone();
        let body = rest(answer).await?;
        assert_eq!(&body[..], b"abcdef");
        if status == CacheStatus::SharedTier {
            assert_eq!(
                header_text(&headers, "content-type").as_deref(),
                Some("text/plain")
            );
            assert_eq!(header_text(&headers, "x-origin").as_deref(), Some("yes"));
            assert_eq!(header_text(&headers, "etag").as_deref(), Some("\"v1\""));
            if let Some(length) = header_text(&headers, "content-length") {
                assert_eq!(length, "6", "Content-Length of the shared copy");
            }
            break;
        }
        assert!(Instant::now() < deadline, "never shared");
        sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(calls.get(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_of_exactly_max_body_bytes_is_shared() -> TestResult {
    let Some(redis) = RedisServer::start("fill at the limit") else {
        return Ok(());
    };
    let (origin, calls, senders) = fed(CACHEABLE, 1);
    let fleet = instances(&redis, &origin, 2, || SwrLayer::new().max_body_bytes(64));
    let data = patterned_bytes(64);
    let response = start_fill(&fleet[0].0, &senders, 1, "/edge", &data[..32]).await;
    senders.send(1, data.slice(32..)).await;
    senders.end(1);
    assert!(rest(response).await? == data.slice(32..));
    until_shared(&fleet[1].0, "/edge", &data).await;
    assert_eq!(calls.get(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_empty_body_is_shared() -> TestResult {
    let Some(redis) = RedisServer::start("empty fill") else {
        return Ok(());
    };
    let (origin, calls, senders) = fed(CACHEABLE, 1);
    let fleet = instances(&redis, &origin, 2, plain);
    let pending = tokio::spawn(send(&fleet[0].0, get("/empty")));
    let deadline = Deadline::after(Duration::from_secs(5), "the origin call");
    while !senders.0.lock().unwrap().contains_key(&1) {
        deadline.tick().await;
    }
    senders.end(1);
    let response = pending.await?;
    assert!(rest(response).await?.is_empty());
    until_shared(&fleet[1].0, "/empty", b"").await;
    assert_eq!(calls.get(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_variant_asked_on_another_instance_during_a_fill_waits_for_it() -> TestResult {
    let Some(redis) = RedisServer::start("same variant during fill") else {
        return Ok(());
    };
    const HEADERS: &[(&str, &str)] =
        &[("cache-control", "max-age=60"), ("vary", "Accept-Language")];
    let (origin, calls, senders) = fed(HEADERS, 1);
    let fleet = instances(&redis, &origin, 2, plain);
    let en = || get_headers("/vs", &[("accept-language", "en")]);
    let pending = tokio::spawn(send(&fleet[0].0, en()));
    let deadline = Deadline::after(Duration::from_secs(5), "the origin call");
    while !senders.0.lock().unwrap().contains_key(&1) {
        deadline.tick().await;
    }
    senders.send(1, "english ").await;
    let mut response = pending.await?;
    assert_eq!(
        &next_chunk(&mut response).await.expect("a chunk")?[..],
        b"english "
    );
    let same = tokio::spawn(fetch(&fleet[1].0, en()));
    sleep(Duration::from_millis(300)).await;
    assert_eq!(calls.get(), 1, "B waits for A's fill of the same variant");
    senders.send(1, "text").await;
    senders.end(1);
    rest(response).await?;
    let (status, body) = same.await?;
    assert_eq!(&body[..], b"english text", "B's en answer ({status:?})");
    assert_eq!(calls.get(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_on_another_instance_gets_the_whole_body_after_the_filling_client_left(
) -> TestResult {
    let Some(redis) = RedisServer::start("waiter after the client left") else {
        return Ok(());
    };
    let (origin, calls, senders) = fed(CACHEABLE, 1);
    let fleet = instances(&redis, &origin, 2, plain);
    let data = patterned_bytes(4000);
    let response = start_fill(&fleet[0].0, &senders, 1, "/left", &data[..1000]).await;
    let waiter = tokio::spawn(fetch(&fleet[1].0, get("/left")));
    sleep(Duration::from_millis(200)).await;
    drop(response);
    for part in data[1000..].chunks(1000) {
        senders.send(1, Bytes::copy_from_slice(part)).await;
        sleep(Duration::from_millis(20)).await;
    }
    senders.end(1);
    let (status, body) = waiter.await?;
    assert!(
        body == data,
        "B's answer ({status:?}): {} of {} bytes",
        body.len(),
        data.len()
    );
    assert_eq!(calls.get(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_of_another_target_during_a_fill_does_not_keep_the_fill_from_redis() -> TestResult {
    let Some(redis) = RedisServer::start("unrelated purge during fill") else {
        return Ok(());
    };
    let (origin, calls, senders) = fed(CACHEABLE, 1);
    let fleet = instances(&redis, &origin, 2, plain);
    let response = start_fill(&fleet[0].0, &senders, 1, "/kept", b"kept ").await;
    fleet[1].1.purge("/unrelated");
    fleet[1].1.purge_prefix("/elsewhere/");
    sleep(Duration::from_millis(200)).await;
    senders.send(1, "value").await;
    senders.end(1);
    rest(response).await?;
    until_shared(&fleet[1].0, "/kept", b"kept value").await;
    assert_eq!(calls.get(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_fill_with_content_length_is_shared_with_that_length() -> TestResult {
    let Some(redis) = RedisServer::start("fill with a length") else {
        return Ok(());
    };
    const HEADERS: &[(&str, &str)] = &[("cache-control", "max-age=60"), ("content-length", "3000")];
    let (origin, calls, senders) = fed(HEADERS, 1);
    let fleet = instances(&redis, &origin, 2, plain);
    let data = patterned_bytes(3000);
    let response = start_fill(&fleet[0].0, &senders, 1, "/len", &data[..1000]).await;
    assert_eq!(
        header_value(&response, header::CONTENT_LENGTH).as_deref(),
        Some("3000")
    );
    senders.send(1, data.slice(1000..)).await;
    senders.end(1);
    assert!(rest(response).await? == data.slice(1000..));
    until_shared(&fleet[1].0, "/len", &data).await;
    let answer = send(&fleet[1].0, get("/len")).await;
    let length = header_value(&answer, header::CONTENT_LENGTH);
    assert!(
        length.is_none() || length.as_deref() == Some("3000"),
        "{length:?}"
    );
    assert!(rest(answer).await? == data);
    assert_eq!(calls.get(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_past_the_end_on_another_instance_during_a_fill_is_416() -> TestResult {
    let Some(redis) = RedisServer::start("unsatisfiable range during fill") else {
        return Ok(());
    };
    let (origin, calls, senders) = fed(CACHEABLE, 1);
    let fleet = instances(&redis, &origin, 2, plain);
    let data = patterned_bytes(100);
    let response = start_fill(&fleet[0].0, &senders, 1, "/r", &data[..50]).await;
    let range = tokio::spawn(send(
        &fleet[1].0,
        get_headers("/r", &[("range", "bytes=500-")]),
    ));
    sleep(Duration::from_millis(200)).await;
    senders.send(1, data.slice(50..)).await;
    senders.end(1);
    rest(response).await?;
    let answer = range.await?;
    assert_eq!(answer.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        header_value(&answer, header::CONTENT_RANGE).as_deref(),
        Some("bytes */100")
    );
    assert_eq!(calls.get(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_does_not_hold_the_fill_back_from_redis() -> TestResult {
    let Some(redis) = RedisServer::start("slow reader") else {
        return Ok(());
    };
    let (origin, calls, senders) = fed(CACHEABLE, 1);
    let fleet = instances(&redis, &origin, 2, plain);
    let data = patterned_bytes(40_000);
    let response = start_fill(&fleet[0].0, &senders, 1, "/slow", &data[..1000]).await;
    // The client holds the response and reads nothing more; the origin sends 39 more chunks
    // (its channel holds 16), which only a fill reading on its own takes.
    timeout(Duration::from_secs(5), async {
        for part in data[1000..].chunks(1000) {
            senders.send(1, Bytes::copy_from_slice(part)).await;
        }
    })
    .await
    .expect("the fill reads the origin without the client");
    senders.end(1);
    until_shared(&fleet[1].0, "/slow", &data).await;
    assert_eq!(calls.get(), 1);
    assert!(
        rest(response).await? == data.slice(1000..),
        "the slow client still gets the rest"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_waiting_longer_than_its_lock_timeout_for_a_fill_asks_the_origin() -> TestResult
{
    let Some(redis) = RedisServer::start("lock timeout during a fill") else {
        return Ok(());
    };
    let (origin, calls, senders) = fed(CACHEABLE, 1);
    let fleet: Vec<Instance> = (0..2)
        .map(|_| {
            let layer = SwrLayer::new()
                .lock_timeout(Duration::from_millis(500))
                .redis(redis.config());
            let handle = layer.handle();
            (layer.layer(origin.clone()), handle)
        })
        .collect();
    let response = start_fill(&fleet[0].0, &senders, 1, "/lt", b"slow ").await;
    let started = Instant::now();
    let (status, body) = timeout(Duration::from_secs(3), fetch(&fleet[1].0, get("/lt")))
        .await
        .expect("B answers within 3 s while A's fill holds on");
    let waited = started.elapsed();
    assert_eq!(&body[..], b"later v2", "B's own origin call ({status:?})");
    assert!(
        waited >= Duration::from_millis(400),
        "B waited only {waited:?}"
    );
    assert_eq!(calls.get(), 2);
    senders.send(1, "fill").await;
    senders.end(1);
    assert_eq!(&rest(response).await?[..], b"fill");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_answer_kept_with_a_cookie_never_reaches_redis() -> TestResult {
    let layer = || SwrLayer::new().cache_cookie_requests(true);
    let cookie = Some(("cookie", "session=secret-cookie"));
    streamed_never_shared_by("cookie request", CACHEABLE, cookie, layer).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_private_answer_kept_with_authorization_never_reaches_redis() -> TestResult {
    const HEADERS: &[(&str, &str)] = &[("cache-control", "private, max-age=60")];
    let layer = || SwrLayer::new().allow_private(true);
    let auth = Some(("authorization", "Bearer secret-token"));
    streamed_never_shared_by("authorized private", HEADERS, auth, layer).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clear_on_another_instance_during_a_fill_wins_over_the_fill() -> TestResult {
    purge_during_fill("clear during fill", |h| h.clear(), "/p/4").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_post_on_another_instance_during_a_fill_wins_over_the_fill() -> TestResult {
    let Some(redis) = RedisServer::start("post during fill") else {
        return Ok(());
    };
    let (origin, _calls, senders) = fed(CACHEABLE, 1);
    let fleet = instances(&redis, &origin, 3, plain);
    let response = start_fill(&fleet[0].0, &senders, 1, "/cart", b"old ").await;
    let (_, posted) = fetch(&fleet[1].0, request(Method::POST, "/cart")).await;
    assert_eq!(&posted[..], b"later v2", "the POST reached the origin");
    sleep(Duration::from_millis(300)).await;
    senders.send(1, "value").await;
    senders.end(1);
    let _ = rest(response).await;
    for _ in 0..5 {
        sleep(Duration::from_millis(200)).await;
        for (i, (service, _)) in fleet.iter().enumerate().skip(1) {
            let (status, body) = fetch(service, get("/cart")).await;
            assert_ne!(
                &body[..],
                b"old value",
                "instance {i} answered the fill invalidated by a POST ({status:?})"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_request_that_misses_fills_the_whole_body_for_the_fleet() -> TestResult {
    let Some(redis) = RedisServer::start("range miss") else {
        return Ok(());
    };
    let (origin, calls, senders) = fed(CACHEABLE, 1);
    let fleet = instances(&redis, &origin, 2, plain);
    let data = patterned_bytes(1000);
    let pending = tokio::spawn(send(
        &fleet[0].0,
        get_headers("/rm", &[("range", "bytes=10-19")]),
    ));
    let deadline = Deadline::after(Duration::from_secs(5), "the origin call");
    while !senders.0.lock().unwrap().contains_key(&1) {
        deadline.tick().await;
    }
    for part in data.chunks(250) {
        senders.send(1, Bytes::copy_from_slice(part)).await;
    }
    senders.end(1);
    let answer = pending.await?;
    let status = answer.status();
    let body = rest(answer).await?;
    if status == StatusCode::PARTIAL_CONTENT {
        assert!(body == data.slice(10..20), "the range's bytes: {body:?}");
    } else {
        assert_eq!(status, StatusCode::OK);
        assert!(
            body == data,
            "a 200 is the whole body ({} bytes)",
            body.len()
        );
    }
    until_shared(&fleet[1].0, "/rm", &data).await;
    assert_eq!(calls.get(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_on_two_other_instances_during_a_fill_make_no_origin_call() -> TestResult {
    let Some(redis) = RedisServer::start("many waiters") else {
        return Ok(());
    };
    let (origin, calls, senders) = fed(CACHEABLE, 1);
    let fleet = instances(&redis, &origin, 3, plain);
    let data = patterned_bytes(5000);
    let response = start_fill(&fleet[0].0, &senders, 1, "/many", &data[..100]).await;
    let mut waiters = Vec::new();
    for (service, _) in &fleet[1..] {
        for _ in 0..10 {
            waiters.push(tokio::spawn(fetch(service, get("/many"))));
        }
    }
    sleep(Duration::from_millis(300)).await;
    assert_eq!(
        calls.get(),
        1,
        "nobody else calls the origin during the fill"
    );
    for part in data[100..].chunks(700) {
        senders.send(1, Bytes::copy_from_slice(part)).await;
        sleep(Duration::from_millis(5)).await;
    }
    senders.end(1);
    assert!(rest(response).await? == data.slice(100..));
    for waiter in waiters {
        let (status, body) = waiter.await?;
        assert!(
            body == data,
            "a waiter ({status:?}) got {} bytes",
            body.len()
        );
    }
    assert_eq!(calls.get(), 1);
    Ok(())
}

const LENGTH_8: &[(&str, &str)] = &[("cache-control", "max-age=60"), ("content-length", "8")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_waiting_for_a_fill_shorter_than_its_content_length_loads_itself() -> TestResult
{
    waiter_of_a_failed_fill_with("waiter of a short fill", LENGTH_8, plain, false, false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_waiting_for_a_fill_longer_than_its_content_length_loads_itself() -> TestResult
{
    // "first" and 160 more bytes for a Content-Length of 8.
    waiter_of_a_failed_fill_with("waiter of a long fill", LENGTH_8, plain, true, false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_during_a_variant_fill_keeps_that_variant_out_of_redis() -> TestResult {
    let Some(redis) = RedisServer::start("purge during a variant fill") else {
        return Ok(());
    };
    const HEADERS: &[(&str, &str)] =
        &[("cache-control", "max-age=60"), ("vary", "Accept-Language")];
    let (origin, _calls, senders) = fed(HEADERS, 1);
    let fleet = instances(&redis, &origin, 3, plain);
    let en = || get_headers("/pv", &[("accept-language", "en")]);
    let pending = tokio::spawn(send(&fleet[0].0, en()));
    let deadline = Deadline::after(Duration::from_secs(5), "the origin call");
    while !senders.0.lock().unwrap().contains_key(&1) {
        deadline.tick().await;
    }
    senders.send(1, "old ").await;
    let mut response = pending.await?;
    assert_eq!(
        &next_chunk(&mut response).await.expect("a chunk")?[..],
        b"old "
    );
    fleet[1].1.purge("/pv");
    sleep(Duration::from_millis(300)).await;
    senders.send(1, "value").await;
    senders.end(1);
    let _ = rest(response).await;
    for _ in 0..5 {
        sleep(Duration::from_millis(200)).await;
        for (i, (service, _)) in fleet.iter().enumerate().skip(1) {
            let (status, body) = fetch(service, en()).await;
            assert_ne!(
                &body[..],
                b"old value",
                "instance {i} answered the purged variant ({status:?})"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_request_on_the_filling_instance_streams_from_the_fill_with_redis_on() -> TestResult
{
    let Some(redis) = RedisServer::start("joiner on the filling instance") else {
        return Ok(());
    };
    let (origin, calls, senders) = fed(CACHEABLE, 1);
    let fleet = instances(&redis, &origin, 2, plain);
    let response = start_fill(&fleet[0].0, &senders, 1, "/join", b"part one ").await;
    let mut joiner = send(&fleet[0].0, get("/join")).await;
    let first = next_chunk(&mut joiner).await.expect("a chunk")?;
    assert_eq!(
        &first[..],
        b"part one ",
        "the joiner reads the fill from byte 0 at once"
    );
    senders.send(1, "part two").await;
    let second = next_chunk(&mut joiner).await.expect("a chunk")?;
    assert_eq!(&second[..], b"part two", "and the rest as it arrives");
    senders.end(1);
    assert_eq!(&rest(joiner).await?[..], b"");
    assert_eq!(&rest(response).await?[..], b"part two");
    until_shared(&fleet[1].0, "/join", b"part one part two").await;
    assert_eq!(calls.get(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_streamed_fill_reaches_redis_byte_identical() -> TestResult {
    let Some(redis) = RedisServer::start("large fill") else {
        return Ok(());
    };
    let (origin, calls, senders) = fed(CACHEABLE, 1);
    let fleet = instances(&redis, &origin, 2, plain);
    let data = patterned_bytes(2 * 1024 * 1024 + 17);
    let response = start_fill(&fleet[0].0, &senders, 1, "/large", &data[..65536]).await;
    let feeder = tokio::spawn({
        let (senders, data) = (senders.clone(), data.clone());
        async move {
            for part in data[65536..].chunks(65536) {
                senders.send(1, Bytes::copy_from_slice(part)).await;
            }
            senders.end(1);
        }
    });
    assert!(rest(response).await? == data.slice(65536..));
    feeder.await?;
    until_shared(&fleet[1].0, "/large", &data).await;
    assert_eq!(calls.get(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_before_the_fills_head_arrives_wins_over_the_fill() -> TestResult {
    let Some(redis) = RedisServer::start("purge before the head") else {
        return Ok(());
    };
    let gate = Gate::new();
    let (origin, _calls, senders) = fed_gated(CACHEABLE, 1, Some(gate.clone()));
    let fleet = instances(&redis, &origin, 3, plain);
    let pending = tokio::spawn(send(&fleet[0].0, get("/early")));
    let deadline = Deadline::after(Duration::from_secs(5), "the origin call");
    while !senders.0.lock().unwrap().contains_key(&1) {
        deadline.tick().await;
    }
    fleet[1].1.purge("/early");
    sleep(Duration::from_millis(300)).await;
    gate.open();
    senders.send(1, "old ").await;
    senders.send(1, "value").await;
    senders.end(1);
    let _ = rest(pending.await?).await;
    for _ in 0..5 {
        sleep(Duration::from_millis(200)).await;
        for (i, (service, _)) in fleet.iter().enumerate().skip(1) {
            let (status, body) = fetch(service, get("/early")).await;
            assert_ne!(
                &body[..],
                b"old value",
                "instance {i} answered the purged load ({status:?})"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_just_as_a_fill_ends_is_never_undone_by_it() -> TestResult {
    let Some(redis) = RedisServer::start("purge as the fill ends") else {
        return Ok(());
    };
    let (origin, _calls, senders) = fed(CACHEABLE, 5);
    let fleet = instances(&redis, &origin, 2, plain);
    let paths = ["/race/1", "/race/2", "/race/3", "/race/4", "/race/5"];
    for (n, path) in paths.iter().enumerate() {
        let response = start_fill(&fleet[0].0, &senders, n + 1, path, b"old ").await;
        senders.send(n + 1, "value").await;
        // The purge goes out while the fill's end is on its way.
        senders.end(n + 1);
        fleet[1].1.purge(path);
        let _ = rest(response).await;
    }
    sleep(Duration::from_millis(500)).await;
    let mut served = Vec::new();
    for path in paths {
        let (status, body) = fetch(&fleet[1].0, get(path)).await;
        if &body[..] == b"old value" {
            served.push((path, status));
        }
    }
    assert!(
        served.is_empty(),
        "purged fills served by instance B: {served:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_no_cache_response_never_reaches_redis() -> TestResult {
    streamed_never_shared(
        "no-cache",
        &[("cache-control", "no-cache, max-age=60")],
        None,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_event_stream_never_reaches_redis() -> TestResult {
    const HEADERS: &[(&str, &str)] = &[
        ("cache-control", "max-age=60"),
        ("content-type", "text/event-stream"),
    ];
    streamed_never_shared("event-stream", HEADERS, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_response_varying_on_everything_never_reaches_redis() -> TestResult {
    const HEADERS: &[(&str, &str)] = &[("cache-control", "max-age=60"), ("vary", "*")];
    streamed_never_shared("vary star", HEADERS, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_answer_to_a_request_with_a_named_credential_never_reaches_redis() -> TestResult
{
    let layer = || SwrLayer::new().credential_headers(["x-api-key"]);
    let key = Some(("x-api-key", "secret-key"));
    streamed_never_shared_by("named credential", CACHEABLE, key, layer).await
}
