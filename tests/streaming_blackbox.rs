//! Black-box tests of streaming cache fills (issue 15), written from the README and the rustdoc:
//! a miss streams to its client, concurrent requests share the one fill from byte 0, an
//! oversized fill still reaches its readers whole, failures are body errors for every reader,
//! and what must not be stored passes straight through.
//!
//! The origin here is a paced body: chunk `i` is produced at `i * gap` on the paused clock, so
//! arrival times show whether a client got a chunk as it was produced.

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use http::{header, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::{sleep, sleep_until, timeout, Instant, Sleep};
use tower::{Layer, ServiceExt};
use tower_swr::{CacheStatus, SwrLayer};

const GAP: Duration = Duration::from_millis(100);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// How the origin's body ends after its chunks.
#[derive(Clone, Copy, Debug, PartialEq)]
enum End {
    Clean,
    Fail,
    Panic,
}

/// What one origin call answers.
#[derive(Clone)]
struct Plan {
    data: Bytes,
    chunk: usize,
    gap: Duration,
    end: End,
    headers: Vec<(&'static str, String)>,
    content_length: bool,
    /// A `Content-Length` other than the body's (then no exact size hint either).
    lie_length: Option<usize>,
}

impl Plan {
    fn new(data: Bytes, chunk: usize) -> Self {
        Self {
            data,
            chunk,
            gap: GAP,
            end: End::Clean,
            headers: vec![("cache-control", "max-age=60".to_owned())],
            content_length: false,
            lie_length: None,
        }
    }

    fn end(mut self, end: End) -> Self {
        self.end = end;
        self
    }

    fn gap(mut self, gap: Duration) -> Self {
        self.gap = gap;
        self
    }

    fn cache_control(mut self, value: &str) -> Self {
        self.headers.retain(|(n, _)| *n != "cache-control");
        self.headers.push(("cache-control", value.to_owned()));
        self
    }

    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }

    fn lying_length(mut self, declared: usize) -> Self {
        self.content_length = true;
        self.lie_length = Some(declared);
        self
    }

    fn with_content_length(mut self) -> Self {
        self.content_length = true;
        self
    }
}

/// A body producing its chunks `gap` apart (the first at once), then its end.
struct Paced {
    chunks: VecDeque<Bytes>,
    gap: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    end: Option<End>,
    produced: Arc<AtomicUsize>,
    exact: bool,
}

impl Body for Paced {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(pause) = this.sleep.as_mut() {
            ready!(pause.as_mut().poll(cx));
            this.sleep = None;
        }
        if let Some(chunk) = this.chunks.pop_front() {
            this.produced.fetch_add(1, Ordering::SeqCst);
            if !this.chunks.is_empty() || matches!(this.end, Some(End::Fail | End::Panic)) {
                this.sleep = Some(Box::pin(sleep(this.gap)));
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match this.end.take() {
            Some(End::Fail) => Poll::Ready(Some(Err("origin body failed mid-stream".into()))),
            Some(End::Panic) => panic!("origin body panicked mid-stream"),
            _ => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && matches!(self.end, None | Some(End::Clean))
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.chunks.iter().map(|c| c.len() as u64).sum())
        } else {
            SizeHint::default()
        }
    }
}

/// Chunks produced so far, over every call.
#[derive(Clone, Default)]
struct Produced(Arc<AtomicUsize>);

impl Produced {
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// An origin answering call `n` (from 1) with `plan(n)`.
fn paced_origin(
    plan: impl Fn(usize) -> Plan + Send + Sync + 'static,
) -> (impl OriginService<Paced>, Calls, Produced) {
    let plan = Arc::new(plan);
    let produced = Produced::default();
    let (service, calls) = origin({
        let produced = produced.clone();
        move |n, request: Request<ReqBody>| {
            let mut plan = plan(n);
            // Like a real server, a HEAD gets the headers and no body.
            let head = request.method() == Method::HEAD;
            let declared = plan.lie_length.unwrap_or(plan.data.len());
            if head {
                plan.data = Bytes::new();
                plan.end = End::Clean;
            }
            let produced = produced.0.clone();
            async move {
                let mut chunks = VecDeque::new();
                let mut offset = 0;
                while offset < plan.data.len() {
                    let end = (offset + plan.chunk).min(plan.data.len());
                    chunks.push_back(plan.data.slice(offset..end));
                    offset = end;
                }
                let mut response = Response::new(Paced {
                    chunks,
                    gap: plan.gap,
                    sleep: None,
                    end: Some(plan.end),
                    produced,
                    exact: plan.content_length && !head && plan.lie_length.is_none(),
                });
                for (name, value) in &plan.headers {
                    response = with_header(response, header::HeaderName::from_static(name), value);
                }
                if plan.content_length {
                    response = with_header(response, header::CONTENT_LENGTH, &declared.to_string());
                }
                Ok(response)
            }
        }
    });
    (service, calls, produced)
}

/// What a client read: each chunk with its arrival time (since `t0`), and the error if any.
#[derive(Debug, Default)]
struct Read {
    chunks: Vec<(Duration, Bytes)>,
    error: Option<String>,
}

impl Read {
    fn bytes(&self) -> Bytes {
        let mut all = BytesMut::new();
        for (_, c) in &self.chunks {
            all.extend_from_slice(c);
        }
        all.freeze()
    }

    fn first_at(&self) -> Duration {
        self.chunks.first().expect("at least one chunk").0
    }

    fn last_at(&self) -> Duration {
        self.chunks.last().expect("at least one chunk").0
    }

    /// Arrival time of the chunk holding byte `offset`.
    fn byte_at(&self, offset: usize) -> Duration {
        let mut seen = 0;
        for (at, c) in &self.chunks {
            seen += c.len();
            if seen > offset {
                return *at;
            }
        }
        panic!("byte {offset} never arrived (only {seen})");
    }
}

async fn read_all<B>(body: B, t0: Instant) -> Read
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let mut body = Box::pin(body);
    let mut read = Read::default();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    if !data.is_empty() {
                        read.chunks.push((t0.elapsed(), data));
                    }
                }
            }
            Err(e) => {
                read.error = Some(e.to_string());
                break;
            }
        }
    }
    read
}

/// What a client got: the `Cache-Status`, the status, the headers and what it read.
type ClientAnswer = (String, StatusCode, http::HeaderMap, Read);

/// A client: sends a GET of `/k` and reads the answer whole; returns the `Cache-Status`, the
/// status and what it read.
fn client<S, B>(
    service: S,
    request: Request<ReqBody>,
    t0: Instant,
) -> tokio::task::JoinHandle<ClientAnswer>
where
    S: tower::Service<Request<ReqBody>, Response = Response<B>> + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    tokio::spawn(async move {
        let response = service.oneshot(request).await.expect("the layer answers");
        let status = cache_status(&response);
        let (parts, body) = response.into_parts();
        let read = read_all(body, t0).await;
        (status, parts.status, parts.headers, read)
    })
}

fn data(len: usize) -> Bytes {
    patterned_bytes(len)
}

#[tokio::test(start_paused = true)]
async fn single_streamed_miss_first_chunk_arrives_before_origin_produces_second() {
    let body = data(50);
    let (origin, calls, produced) = paced_origin({
        let body = body.clone();
        move |_| Plan::new(body.clone(), 10)
    });
    let service = SwrLayer::new().layer(origin);
    let t0 = Instant::now();
    let response = service.oneshot(get("/k")).await.unwrap();
    assert!(t0.elapsed() < GAP, "the head waits for nothing");
    assert!(
        cache_status(&response).contains("fwd=uri-miss"),
        "{}",
        cache_status(&response)
    );
    let mut body_stream = Box::pin(response.into_body());
    let first = body_stream
        .frame()
        .await
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(first, body.slice(0..10));
    assert!(
        t0.elapsed() < GAP,
        "first chunk came at {:?}, after the origin's second",
        t0.elapsed()
    );
    assert_eq!(
        produced.get(),
        1,
        "the client got chunk 1 before chunk 2 was produced"
    );
    let rest = read_all(body_stream, t0).await;
    assert!(rest.error.is_none(), "{:?}", rest.error);
    // Chunk i (from 0) is produced at i * GAP: each arrives before the next is produced.
    for (i, (at, _)) in rest.chunks.iter().enumerate() {
        let produced_at = GAP * (i as u32 + 1);
        assert!(
            *at >= produced_at && *at < produced_at + GAP,
            "chunk {} arrived at {at:?}",
            i + 1
        );
    }
    let mut all = BytesMut::from(&first[..]);
    all.extend_from_slice(&rest.bytes());
    assert_eq!(all.freeze(), body);
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn content_length_kept_for_the_miss_and_for_a_joiner() {
    let body = data(50);
    let (origin, calls, _) = paced_origin({
        let body = body.clone();
        move |_| Plan::new(body.clone(), 10).with_content_length()
    });
    let service = SwrLayer::new().layer(origin);
    let t0 = Instant::now();
    let a = client(service.clone(), get("/k"), t0);
    sleep(ms(150)).await;
    let b = client(service.clone(), get("/k"), t0);
    let (sa, _, ha, ra) = a.await.unwrap();
    let (sb, _, hb, rb) = b.await.unwrap();
    assert_eq!(
        ha.get(header::CONTENT_LENGTH).map(|v| v.as_bytes()),
        Some(&b"50"[..]),
        "miss ({sa}) keeps Content-Length: {ha:?}"
    );
    assert_eq!(
        hb.get(header::CONTENT_LENGTH).map(|v| v.as_bytes()),
        Some(&b"50"[..]),
        "joiner ({sb}) keeps Content-Length: {hb:?}"
    );
    assert!(
        ra.first_at() < GAP,
        "the miss still streams with a Content-Length"
    );
    assert_eq!(ra.bytes(), body);
    assert_eq!(rb.bytes(), body);
    assert_eq!(calls.get(), 1);
    // And the stored entry says it too.
    let hit = service.oneshot(get("/k")).await.unwrap();
    assert_eq!(
        header_value(&hit, header::CONTENT_LENGTH).as_deref(),
        Some("50")
    );
}

#[tokio::test(start_paused = true)]
async fn five_concurrent_requests_share_one_origin_call_and_each_gets_the_whole_body() {
    let body = data(10 * 997);
    let (origin, calls, _) = paced_origin({
        let body = body.clone();
        move |_| Plan::new(body.clone(), 997)
    });
    let service = SwrLayer::new().layer(origin);
    let t0 = Instant::now();
    let mut clients = vec![client(service.clone(), get("/k"), t0)];
    settle().await;
    for _ in 0..4 {
        clients.push(client(service.clone(), get("/k"), t0));
    }
    for (i, c) in clients.into_iter().enumerate() {
        let (status, code, _, read) = c.await.unwrap();
        assert_eq!(code, StatusCode::OK);
        assert!(read.error.is_none(), "client {i}: {:?}", read.error);
        assert_eq!(read.bytes(), body, "client {i} ({status}) got other bytes");
        assert!(
            read.first_at() < GAP * 2,
            "client {i} ({status}) got its first byte only at {:?}: it did not stream",
            read.first_at()
        );
    }
    assert_eq!(calls.get(), 1, "five requests, one origin call");
}

#[tokio::test(start_paused = true)]
async fn late_joiner_after_3_of_10_chunks_gets_the_whole_body_from_byte_0() {
    let body = data(10 * 100);
    let (origin, calls, produced) = paced_origin({
        let body = body.clone();
        move |_| Plan::new(body.clone(), 100)
    });
    let service = SwrLayer::new().layer(origin);
    let t0 = Instant::now();
    let a = client(service.clone(), get("/k"), t0);
    sleep_until(t0 + ms(250)).await;
    assert_eq!(produced.get(), 3, "test setup: 3 chunks produced");
    let b = client(service.clone(), get("/k"), t0);
    let (_, _, _, ra) = a.await.unwrap();
    let (sb, _, _, rb) = b.await.unwrap();
    assert_eq!(ra.bytes(), body);
    assert!(rb.error.is_none(), "{:?}", rb.error);
    assert_eq!(rb.bytes(), body, "late joiner ({sb}) misses bytes");
    // It got the three fetched chunks at once, then the rest as produced.
    assert!(
        rb.byte_at(299) < ms(300),
        "already fetched bytes came at {:?}",
        rb.byte_at(299)
    );
    assert!(rb.last_at() < ms(1000), "the rest as it arrived");
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn after_the_fill_completes_the_next_request_is_a_fresh_hit_with_the_same_bytes() {
    let body = data(500);
    let (origin, calls, _) = paced_origin({
        let body = body.clone();
        move |_| Plan::new(body.clone(), 100).with_content_length()
    });
    let service = SwrLayer::new().layer(origin);
    let t0 = Instant::now();
    let (status, _, _, read) = client(service.clone(), get("/k"), t0).await.unwrap();
    // With a stated length that fits, the streaming miss can say it is stored.
    assert!(status.contains("stored"), "{status}");
    assert_eq!(read.bytes(), body);
    settle().await;
    let hit = service.oneshot(get("/k")).await.unwrap();
    assert!(cache_status(&hit).contains("hit"), "{}", cache_status(&hit));
    assert_eq!(info(&hit).status, CacheStatus::Fresh);
    assert_eq!(body_of(hit).await, body);
    assert_eq!(calls.get(), 1);
}

async fn body_of<B>(response: Response<B>) -> Bytes
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let read = read_all(response.into_body(), Instant::now()).await;
    assert!(read.error.is_none(), "{:?}", read.error);
    read.bytes()
}

#[tokio::test(start_paused = true)]
async fn oversized_fill_reaches_attached_clients_whole_is_not_stored_and_later_joiners_go_to_the_origin(
) {
    // 300 bytes, 30 a chunk, past a limit of 100.
    let body = data(300);
    let (origin, calls, _) = paced_origin({
        let body = body.clone();
        move |_| Plan::new(body.clone(), 30)
    });
    let service = SwrLayer::new().max_body_bytes(100).layer(origin);
    let t0 = Instant::now();
    let a = client(service.clone(), get("/k"), t0);
    sleep_until(t0 + ms(50)).await;
    let b = client(service.clone(), get("/k"), t0);
    sleep_until(t0 + ms(150)).await;
    assert_eq!(
        calls.get(),
        1,
        "B joined the fill while it was within the limit"
    );
    // 5 chunks (150 bytes) fetched: past the limit, the start is no longer held.
    sleep_until(t0 + ms(450)).await;
    let c = client(service.clone(), get("/k"), t0);
    let (sa, _, _, ra) = a.await.unwrap();
    let (sb, _, _, rb) = b.await.unwrap();
    let (sc, _, _, rc) = c.await.unwrap();
    for (name, status, read) in [("A", &sa, &ra), ("B", &sb, &rb), ("C", &sc, &rc)] {
        assert!(read.error.is_none(), "{name} ({status}): {:?}", read.error);
        assert_eq!(read.bytes(), body, "{name} ({status}) got other bytes");
    }
    assert!(ra.first_at() < GAP, "A streamed");
    assert!(
        ra.last_at() < ms(1000),
        "A got the last chunk at {:?}",
        ra.last_at()
    );
    assert_eq!(
        calls.get(),
        2,
        "C, arriving past the limit, asks the origin ({sc})"
    );
    settle().await;
    let (sd, _, _, rd) = client(service.clone(), get("/k"), Instant::now())
        .await
        .unwrap();
    assert_eq!(rd.bytes(), body);
    assert!(!sd.contains("hit"), "not stored: {sd}");
    assert_eq!(calls.get(), 3, "an oversized body is not stored");
}

#[tokio::test(start_paused = true)]
async fn oversized_fill_reader_too_far_behind_gets_a_body_error_and_the_fast_one_is_not_slowed() {
    let body = data(300);
    let (origin, calls, _) = paced_origin({
        let body = body.clone();
        move |_| Plan::new(body.clone(), 30)
    });
    let service = SwrLayer::new().max_body_bytes(100).layer(origin);
    let t0 = Instant::now();
    let fast = client(service.clone(), get("/k"), t0);
    settle().await;
    // The slow client takes its response and does not read it until the fill is over.
    let slow = service.clone().oneshot(get("/k")).await.unwrap();
    let (_, _, _, rf) = fast.await.unwrap();
    assert!(rf.error.is_none(), "{:?}", rf.error);
    assert_eq!(rf.bytes(), body);
    assert!(
        rf.last_at() < ms(1000),
        "the fast reader was held back: last chunk at {:?}",
        rf.last_at()
    );
    sleep(secs(1)).await;
    let rs = read_all(slow.into_body(), t0).await;
    assert!(
        rs.error.is_some(),
        "a reader 300 bytes behind with a 100-byte limit must get a body error, got {} bytes clean",
        rs.bytes().len()
    );
    assert_eq!(
        &body[..rs.bytes().len()],
        &rs.bytes()[..],
        "what it got is a prefix"
    );
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn origin_body_error_mid_stream_is_a_body_error_for_every_attached_client_and_stores_nothing()
{
    let body = data(50);
    let (origin, calls, _) = paced_origin({
        let body = body.clone();
        move |n| Plan::new(body.clone(), 10).end(if n == 1 { End::Fail } else { End::Clean })
    });
    let service = SwrLayer::new().layer(origin);
    let t0 = Instant::now();
    let a = client(service.clone(), get("/k"), t0);
    sleep_until(t0 + ms(150)).await;
    let b = client(service.clone(), get("/k"), t0);
    sleep_until(t0 + ms(350)).await;
    let c = client(service.clone(), get("/k"), t0);
    for (name, handle) in [("A", a), ("B", b), ("C", c)] {
        let (status, _, _, read) = handle.await.unwrap();
        assert!(
            read.error.is_some(),
            "{name} ({status}) got a clean short body of {} bytes",
            read.bytes().len()
        );
        assert_eq!(
            read.bytes(),
            body,
            "{name} got every chunk before the error"
        );
    }
    assert_eq!(calls.get(), 1, "the three shared the one call");
    // Past any remembered failure (1 s), the next request asks the origin again.
    sleep(secs(2)).await;
    let (status, _, _, read) = client(service.clone(), get("/k"), Instant::now())
        .await
        .unwrap();
    assert!(!status.contains("hit"), "nothing was stored: {status}");
    assert!(read.error.is_none(), "{:?}", read.error);
    assert_eq!(read.bytes(), body);
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn client_dropped_mid_fill_does_not_stop_the_others_nor_the_store() {
    let body = data(500);
    let (origin, calls, _) = paced_origin({
        let body = body.clone();
        move |_| Plan::new(body.clone(), 50)
    });
    let service = SwrLayer::new().layer(origin);
    let t0 = Instant::now();
    // A (the miss) reads two chunks and goes away; B and C keep reading.
    let a = tokio::spawn({
        let service = service.clone();
        async move {
            let response = service.oneshot(get("/k")).await.unwrap();
            let mut body = Box::pin(response.into_body());
            let mut got = 0;
            for _ in 0..2 {
                got += body
                    .frame()
                    .await
                    .unwrap()
                    .unwrap()
                    .into_data()
                    .unwrap()
                    .len();
            }
            got
        }
    });
    settle().await;
    let b = client(service.clone(), get("/k"), t0);
    let c_dropper = tokio::spawn({
        let service = service.clone();
        async move {
            // A joiner that goes away too, without reading.
            let response = service.oneshot(get("/k")).await.unwrap();
            drop(response);
        }
    });
    assert_eq!(a.await.unwrap(), 100);
    c_dropper.await.unwrap();
    let (sb, _, _, rb) = b.await.unwrap();
    assert!(rb.error.is_none(), "{sb}: {:?}", rb.error);
    assert_eq!(rb.bytes(), body);
    assert!(
        rb.last_at() < ms(1000),
        "B was held back: {:?}",
        rb.last_at()
    );
    settle().await;
    let hit = service.clone().oneshot(get("/k")).await.unwrap();
    assert!(cache_status(&hit).contains("hit"), "{}", cache_status(&hit));
    assert_eq!(body_of(hit).await, body);
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn sole_client_dropped_mid_fill_leaves_nothing_stuck_in_flight() {
    let body = data(500);
    let (origin, calls, _) = paced_origin({
        let body = body.clone();
        move |_| Plan::new(body.clone(), 50)
    });
    let service = SwrLayer::new().layer(origin);
    {
        let response = service.clone().oneshot(get("/k")).await.unwrap();
        let mut body = Box::pin(response.into_body());
        body.frame().await.unwrap().unwrap();
        body.frame().await.unwrap().unwrap();
    }
    sleep(secs(2)).await;
    let answer = timeout(secs(10), async {
        let response = service.clone().oneshot(get("/k")).await.unwrap();
        let status = cache_status(&response);
        (status, read_all(response.into_body(), Instant::now()).await)
    })
    .await
    .expect("a request after the client went away is answered, not stuck");
    assert!(answer.1.error.is_none(), "{:?}", answer.1.error);
    assert_eq!(answer.1.bytes(), body);
    // The fill runs on its own, so it was stored (the docs: a client going away stops nothing).
    assert!(
        answer.0.contains("hit"),
        "the fill went on to the store: {} (calls {})",
        answer.0,
        calls.get()
    );
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn slow_reader_does_not_delay_the_other_clients_chunks() {
    // 50 chunks of 1000 bytes, 10 ms apart: well within the 8 MiB default.
    let gap = ms(10);
    let body = data(50 * 1000);
    let (origin, calls, _) = paced_origin({
        let body = body.clone();
        move |_| Plan::new(body.clone(), 1000).gap(gap)
    });
    let service = SwrLayer::new().layer(origin);
    let t0 = Instant::now();
    // The miss itself is the slow reader.
    let slow = service.clone().oneshot(get("/k")).await.unwrap();
    let b = client(service.clone(), get("/k"), t0);
    let c = client(service.clone(), get("/k"), t0);
    for (name, handle) in [("B", b), ("C", c)] {
        let (status, _, _, read) = handle.await.unwrap();
        assert!(read.error.is_none(), "{name}: {:?}", read.error);
        assert_eq!(read.bytes(), body, "{name} ({status})");
        for i in 0..50 {
            let at = read.byte_at(i * 1000);
            assert!(
                at < gap * (i as u32) + gap,
                "{name} got chunk {i} at {at:?}, produced at {:?}",
                gap * i as u32
            );
        }
    }
    sleep(secs(5)).await;
    assert_eq!(
        body_of(slow).await,
        body,
        "the slow reader gets it all later"
    );
    let hit = service.clone().oneshot(get("/k")).await.unwrap();
    assert!(cache_status(&hit).contains("hit"), "{}", cache_status(&hit));
    assert_eq!(calls.get(), 1);
}

/// A HEAD arriving during a fill of its key: answered at once, no body, the GET's headers.
/// Returns the HEAD's `Cache-Status` and the origin calls made in all.
async fn head_during_a_fill(convert_head: bool) -> (String, usize) {
    let body = data(50);
    let (origin, calls, _) = paced_origin({
        let body = body.clone();
        move |_| {
            Plan::new(body.clone(), 10)
                .with_content_length()
                .header("etag", ETAG)
                .header("content-type", "application/octet-stream")
        }
    });
    let service = SwrLayer::new().convert_head(convert_head).layer(origin);
    let t0 = Instant::now();
    let a = client(service.clone(), get("/k"), t0);
    sleep_until(t0 + ms(150)).await;
    let head = service
        .clone()
        .oneshot(request(Method::HEAD, "/k"))
        .await
        .unwrap();
    let answered = t0.elapsed();
    assert!(
        answered < ms(400),
        "HEAD waited for the fill: answered at {answered:?}"
    );
    assert_eq!(head.status(), StatusCode::OK);
    let status = cache_status(&head);
    assert_eq!(
        header_value(&head, header::CONTENT_LENGTH).as_deref(),
        Some("50")
    );
    assert_eq!(header_value(&head, header::ETAG).as_deref(), Some(ETAG));
    assert_eq!(
        header_value(&head, header::CACHE_CONTROL).as_deref(),
        Some("max-age=60")
    );
    assert_eq!(
        header_value(&head, header::CONTENT_TYPE).as_deref(),
        Some("application/octet-stream")
    );
    let head_read = read_all(head.into_body(), t0).await;
    assert!(head_read.error.is_none(), "{:?}", head_read.error);
    assert!(
        head_read.bytes().is_empty(),
        "HEAD has no body: {:?}",
        head_read.bytes()
    );
    let (_, _, _, ra) = a.await.unwrap();
    assert_eq!(ra.bytes(), body);
    (status, calls.get())
}

#[tokio::test(start_paused = true)]
async fn head_during_a_fill_is_answered_at_once_without_body_and_with_the_headers() {
    // `convert_head(false)` (the default): a HEAD miss may pass to the origin as a HEAD (the
    // issue: "behave as with a stored entry or pass to the origin"), never a second GET.
    let (status, calls) = head_during_a_fill(false).await;
    assert!(calls <= 2, "{status}: {calls} calls");
}

#[tokio::test(start_paused = true)]
async fn head_during_a_fill_with_convert_head_is_answered_from_the_fill() {
    let (status, calls) = head_during_a_fill(true).await;
    assert_eq!(
        calls, 1,
        "the HEAD read the fill's head, not the origin ({status})"
    );
    assert!(status.contains("collapsed"), "{status}");
}

#[tokio::test(start_paused = true)]
async fn range_during_a_fill_is_a_206_with_the_right_10_bytes() {
    let body = data(50);
    let (origin, calls, _) = paced_origin({
        let body = body.clone();
        move |_| Plan::new(body.clone(), 10).with_content_length()
    });
    let service = SwrLayer::new().layer(origin);
    let t0 = Instant::now();
    let a = client(service.clone(), get("/k"), t0);
    sleep_until(t0 + ms(150)).await;
    let r = client(
        service.clone(),
        get_with("/k", header::RANGE, "bytes=0-9"),
        t0,
    );
    let (sr, code, headers, rr) = r.await.unwrap();
    assert_eq!(code, StatusCode::PARTIAL_CONTENT, "{sr}");
    assert_eq!(
        headers
            .get(header::CONTENT_RANGE)
            .map(|v| v.to_str().unwrap()),
        Some("bytes 0-9/50")
    );
    assert!(rr.error.is_none(), "{:?}", rr.error);
    assert_eq!(rr.bytes(), body.slice(0..10));
    if let Some(len) = headers.get(header::CONTENT_LENGTH) {
        assert_eq!(len, "10", "a 206's Content-Length is the part's");
    }
    let (_, _, _, ra) = a.await.unwrap();
    assert_eq!(ra.bytes(), body);
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn conditional_during_a_fill_is_a_304_from_the_completed_fill() {
    let body = data(50);
    let (origin, calls, _) = paced_origin({
        let body = body.clone();
        move |_| Plan::new(body.clone(), 10).header("etag", ETAG)
    });
    let service = SwrLayer::new().layer(origin);
    let t0 = Instant::now();
    let a = client(service.clone(), get("/k"), t0);
    sleep_until(t0 + ms(150)).await;
    let r = client(
        service.clone(),
        get_with("/k", header::IF_NONE_MATCH, ETAG),
        t0,
    );
    let (sr, code, headers, rr) = r.await.unwrap();
    assert_eq!(code, StatusCode::NOT_MODIFIED, "{sr}");
    assert_eq!(
        headers.get(header::ETAG).map(|v| v.to_str().unwrap()),
        Some(ETAG)
    );
    assert!(rr.bytes().is_empty());
    let (_, _, _, ra) = a.await.unwrap();
    assert_eq!(ra.bytes(), body);
    assert_eq!(calls.get(), 1);
}

/// Two concurrent requests of a response that must not be stored: two origin calls, each
/// client gets its own body, streamed.
async fn passes_through_unshared(plan: impl Fn(Plan) -> Plan + Send + Sync + 'static) {
    let (origin, calls, _) = paced_origin(move |n| {
        plan(Plan::new(
            Bytes::from(format!("body of call {n};").repeat(5)),
            15,
        ))
    });
    let service = SwrLayer::new().layer(origin);
    let t0 = Instant::now();
    let a = client(service.clone(), get("/k"), t0);
    sleep_until(t0 + ms(50)).await;
    let b = client(service.clone(), get("/k"), t0);
    let (sa, _, _, ra) = a.await.unwrap();
    let (sb, _, _, rb) = b.await.unwrap();
    assert!(ra.error.is_none() && rb.error.is_none());
    assert_eq!(calls.get(), 2, "not shared: {sa} / {sb}");
    let mine = |read: &Read| String::from_utf8(read.bytes().to_vec()).unwrap();
    assert_eq!(mine(&ra), "body of call 1;".repeat(5), "{sa}");
    assert_eq!(mine(&rb), "body of call 2;".repeat(5), "{sb}");
    assert!(
        ra.first_at() < GAP,
        "passed straight through (streamed): first chunk at {:?}",
        ra.first_at()
    );
    settle().await;
    let (sc, _, _, _) = client(service.clone(), get("/k"), Instant::now())
        .await
        .unwrap();
    assert!(!sc.contains("hit"), "not stored: {sc}");
    assert_eq!(calls.get(), 3);
}

#[tokio::test(start_paused = true)]
async fn no_store_response_passes_through_and_is_not_shared_between_concurrent_requests() {
    passes_through_unshared(|p| p.cache_control("no-store")).await;
}

#[tokio::test(start_paused = true)]
async fn private_response_passes_through_and_is_not_shared_between_concurrent_requests() {
    passes_through_unshared(|p| p.cache_control("private, max-age=60")).await;
}

#[tokio::test(start_paused = true)]
async fn set_cookie_response_passes_through_and_is_not_shared_between_concurrent_requests() {
    passes_through_unshared(|p| p.header("set-cookie", "session=abc")).await;
}

#[tokio::test(start_paused = true)]
async fn event_stream_response_passes_through_and_is_not_shared_between_concurrent_requests() {
    passes_through_unshared(|p| p.header("content-type", "text/event-stream")).await;
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_entry_answers_when_the_origin_body_fails_mid_stream_on_a_miss() {
    let old = data(40);
    let (origin, calls, _) = paced_origin({
        let old = old.clone();
        move |n| {
            if n == 1 {
                Plan::new(old.clone(), 10).cache_control("max-age=1, stale-if-error=600")
            } else {
                Plan::new(Bytes::from_static(b"NEW NEW NEW NEW NEW NEW"), 5)
                    .cache_control("max-age=1, stale-if-error=600")
                    .end(End::Fail)
            }
        }
    });
    let service = SwrLayer::new()
        .stale_while_revalidate(Duration::ZERO)
        .layer(origin);
    let (_, _, _, first) = client(service.clone(), get("/k"), Instant::now())
        .await
        .unwrap();
    assert_eq!(first.bytes(), old);
    sleep(secs(5)).await;
    let (status, code, _, read) = client(service.clone(), get("/k"), Instant::now())
        .await
        .unwrap();
    assert_eq!(calls.get(), 2, "the stale entry's miss asked the origin");
    assert!(
        read.error.is_none(),
        "stale-if-error should answer, not a body error: {status}: {:?} after {:?}",
        read.error,
        read.bytes()
    );
    assert_eq!(code, StatusCode::OK);
    assert!(status.contains("fwd=stale"), "{status}");
    assert_eq!(read.bytes(), old, "the stale content, whole");
}

#[tokio::test(start_paused = true)]
async fn background_refresh_whose_body_fails_mid_stream_keeps_the_old_entry_whole() {
    let old = data(40);
    let (origin, calls, _) = paced_origin({
        let old = old.clone();
        move |n| {
            let cc = "max-age=1, stale-while-revalidate=600";
            if n == 1 {
                Plan::new(old.clone(), 10).cache_control(cc)
            } else {
                Plan::new(Bytes::from_static(b"NEW NEW NEW NEW NEW NEW"), 5)
                    .cache_control(cc)
                    .end(End::Fail)
            }
        }
    });
    let service = SwrLayer::new().layer(origin);
    let (_, _, _, first) = client(service.clone(), get("/k"), Instant::now())
        .await
        .unwrap();
    assert_eq!(first.bytes(), old);
    sleep(secs(5)).await;
    let (status, _, _, read) = client(service.clone(), get("/k"), Instant::now())
        .await
        .unwrap();
    assert_eq!(info_status(&status), "stale", "{status}");
    assert_eq!(read.bytes(), old);
    // Let the refresh run and fail.
    sleep(secs(2)).await;
    assert!(calls.get() >= 2, "a refresh ran");
    let (status, _, _, read) = client(service.clone(), get("/k"), Instant::now())
        .await
        .unwrap();
    assert!(read.error.is_none(), "{status}: {:?}", read.error);
    assert_eq!(
        read.bytes(),
        old,
        "the failed refresh replaced nothing ({status})"
    );
}

/// "stale" for a stale hit (`hit; ttl=-n`), else the raw value.
fn info_status(status: &str) -> &'static str {
    if status.contains("hit") && status.contains("ttl=-") {
        "stale"
    } else {
        "other"
    }
}

#[tokio::test(start_paused = true)]
async fn panicking_origin_body_is_a_body_error_for_every_client_and_stores_nothing() {
    let body = data(50);
    let (origin, calls, _) = paced_origin({
        let body = body.clone();
        move |n| Plan::new(body.clone(), 10).end(if n == 1 { End::Panic } else { End::Clean })
    });
    let service = SwrLayer::new().layer(origin);
    let t0 = Instant::now();
    let a = client(service.clone(), get("/k"), t0);
    sleep_until(t0 + ms(150)).await;
    let b = client(service.clone(), get("/k"), t0);
    for (name, handle) in [("A", a), ("B", b)] {
        let joined = timeout(secs(30), handle)
            .await
            .unwrap_or_else(|_| panic!("{name} hangs after the origin body panicked"));
        let (status, _, _, read) =
            joined.unwrap_or_else(|e| panic!("{name}'s task panicked with the origin: {e}"));
        assert!(
            read.error.is_some(),
            "{name} ({status}) got a clean short body of {} bytes",
            read.bytes().len()
        );
    }
    assert_eq!(calls.get(), 1);
    sleep(secs(2)).await;
    let (status, _, _, read) = client(service.clone(), get("/k"), Instant::now())
        .await
        .unwrap();
    assert!(read.error.is_none(), "{status}: {:?}", read.error);
    assert_eq!(read.bytes(), body);
    assert_eq!(calls.get(), 2, "nothing was stored ({status})");
}

/// A fill whose first origin answer states `Content-Length: 50` over `body`, read by two
/// clients (the second joining at 150 ms); then, 2 s later, a third request (the origin now
/// states the true length). Returns the two readers' answers, the third's, and the calls.
async fn fill_with_a_lying_length(body: &Bytes) -> (Vec<ClientAnswer>, ClientAnswer, Calls) {
    let (origin, calls, _) = paced_origin({
        let body = body.clone();
        move |n| {
            let plan = Plan::new(body.clone(), 10);
            if n == 1 {
                plan.lying_length(50)
            } else {
                plan.with_content_length()
            }
        }
    });
    let service = SwrLayer::new().layer(origin);
    let t0 = Instant::now();
    let a = client(service.clone(), get("/k"), t0);
    sleep_until(t0 + ms(150)).await;
    let b = client(service.clone(), get("/k"), t0);
    let mut readers = Vec::new();
    for handle in [a, b] {
        readers.push(handle.await.unwrap());
    }
    assert_eq!(calls.get(), 1);
    sleep(secs(2)).await;
    let after = client(service.clone(), get("/k"), Instant::now())
        .await
        .unwrap();
    (readers, after, calls)
}

#[tokio::test(start_paused = true)]
async fn body_shorter_than_its_content_length_is_a_body_error_for_every_client_and_not_stored() {
    let body = data(40);
    let (readers, (status, _, _, read), calls) = fill_with_a_lying_length(&body).await;
    for (name, (status, _, _, read)) in ["A", "B"].into_iter().zip(readers) {
        assert!(
            read.error.is_some(),
            "{name} ({status}): 40 bytes of a stated 50 ended clean"
        );
    }
    assert!(read.error.is_none(), "{status}: {:?}", read.error);
    assert_eq!(read.bytes(), body);
    assert_eq!(calls.get(), 2, "the short body was not stored ({status})");
}

#[tokio::test(start_paused = true)]
async fn body_longer_than_its_content_length_is_a_body_error_for_every_client_and_not_stored() {
    let body = data(60);
    let (readers, (status, _, headers, read), calls) = fill_with_a_lying_length(&body).await;
    for (name, (status, _, headers, read)) in ["A", "B"].into_iter().zip(readers) {
        let stated = headers.get(header::CONTENT_LENGTH).cloned();
        assert!(
            read.error.is_some() || stated.as_ref().is_none_or(|v| v == "60"),
            "{name} ({status}): {} bytes under Content-Length {stated:?}, clean",
            read.bytes().len()
        );
    }
    assert!(read.error.is_none(), "{status}: {:?}", read.error);
    assert_eq!(read.bytes(), body);
    assert_eq!(
        headers
            .get(header::CONTENT_LENGTH)
            .map(|v| v.to_str().unwrap()),
        Some("60")
    );
    assert_eq!(calls.get(), 2, "the long body was not stored ({status})");
}

#[tokio::test(start_paused = true)]
async fn range_during_an_oversized_fill_is_answered_not_stuck() {
    let body = data(300);
    let (origin, calls, _) = paced_origin({
        let body = body.clone();
        move |_| Plan::new(body.clone(), 30)
    });
    let service = SwrLayer::new().max_body_bytes(100).layer(origin);
    let t0 = Instant::now();
    let a = client(service.clone(), get("/k"), t0);
    sleep_until(t0 + ms(150)).await;
    let r = client(
        service.clone(),
        get_with("/k", header::RANGE, "bytes=0-9"),
        t0,
    );
    let (sr, code, headers, rr) = timeout(secs(30), r)
        .await
        .expect("the range request is answered")
        .unwrap();
    assert!(rr.error.is_none(), "{sr}: {:?}", rr.error);
    match code {
        StatusCode::PARTIAL_CONTENT => {
            assert_eq!(rr.bytes(), body.slice(0..10), "{sr}");
            assert_eq!(
                headers
                    .get(header::CONTENT_RANGE)
                    .map(|v| v.to_str().unwrap()),
                Some("bytes 0-9/300")
            );
        }
        StatusCode::OK => assert_eq!(rr.bytes(), body, "{sr}"),
        other => panic!("{other} for a range of an oversized resource ({sr})"),
    }
    let (_, _, _, ra) = a.await.unwrap();
    assert_eq!(ra.bytes(), body);
    // Observed: the range waiter leads a second (whole, also oversized) GET once the first
    // fill withdraws, then asks the origin with its Range (a third call). Wasteful, but the
    // docs allow a range of a filling key to pass to the origin; more would be a loop.
    assert!(
        calls.get() <= 3,
        "{} origin calls; range: {code} {sr} {} bytes at {:?}",
        calls.get(),
        rr.bytes().len(),
        rr.chunks.first().map(|c| c.0)
    );
}
