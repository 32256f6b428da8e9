//! Streaming cache fill: a miss reaches its client as the origin sends it, and the requests of
//! the key that arrive meanwhile read the same fill (from the first byte) instead of waiting for
//! the whole body. On the paused clock: "at once" means before the origin sends anything more.

mod common;

use bytes::Bytes;
use common::*;
use http::{header, Method, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::time::timeout;
use tower::{Layer, ServiceExt};
use tower_swr::{CacheStatus, SwrBody, SwrLayer};

/// The next data chunk of a body, which must be there without the origin sending more.
async fn next_chunk<B>(body: &mut B) -> Bytes
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let frame = timeout(secs(1), body.frame())
        .await
        .expect("the chunk the origin sent did not reach the client")
        .expect("the body ended early")
        .expect("the body failed");
    frame.into_data().expect("a data frame")
}

/// A body's outcome once the origin is done: its bytes, or its error's text.
async fn read_rest<B>(body: B) -> Result<Bytes, String>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    match timeout(secs(5), body.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("the body hung".to_owned()),
    }
}

type Streamed = Response<SwrBody<FedBody>>;

#[tokio::test(start_paused = true)]
async fn a_miss_reaches_its_client_chunk_by_chunk_and_is_stored() -> TestResult {
    let (origin, calls, feeds) = fed_origin("max-age=60", None);
    let layer = SwrLayer::new();
    let service = layer.layer(origin);

    let response: Streamed = timeout(secs(1), service.clone().oneshot(get("/s")))
        .await
        .expect("the head of a miss waits for its body")?;
    assert_eq!(info(&response).status, CacheStatus::Miss);
    let mut body = response.into_body();
    feeds.send(1, "first ").await;
    assert_eq!(next_chunk(&mut body).await, "first ");
    feeds.send(1, "second").await;
    assert_eq!(next_chunk(&mut body).await, "second");
    feeds.end(1);
    assert_eq!(read_rest(body).await?, "");

    settle().await;
    let hit = service.clone().oneshot(get("/s")).await?;
    assert_eq!(info(&hit).status, CacheStatus::Fresh);
    assert_eq!(body_of(hit).await?, "first second");
    assert_eq!(calls.get(), 1);
    assert_eq!(layer.stats().stores, 1);
    Ok(())
}

async fn body_of(response: Streamed) -> Result<Bytes, BoxError> {
    body(response).await
}

#[tokio::test(start_paused = true)]
async fn five_concurrent_requests_share_one_fill_from_one_origin_call() -> TestResult {
    let gate = Gate::new();
    let (origin, calls, feeds) = fed_origin("max-age=60", Some(gate.clone()));
    let layer = SwrLayer::new();
    let service = layer.layer(origin);

    let tasks: Vec<_> = (0..5)
        .map(|_| tokio::spawn(service.clone().oneshot(get("/five"))))
        .collect();
    settle().await;
    assert_eq!(calls.get(), 1, "one origin call for the five");
    gate.open();
    let mut bodies = Vec::new();
    let mut statuses = Vec::new();
    for task in tasks {
        let response = timeout(secs(1), task).await.expect("a head waited")??;
        statuses.push(info(&response).status);
        bodies.push(response.into_body());
    }
    statuses.sort_by_key(|s| format!("{s:?}"));
    assert_eq!(
        statuses,
        [
            CacheStatus::Collapsed,
            CacheStatus::Collapsed,
            CacheStatus::Collapsed,
            CacheStatus::Collapsed,
            CacheStatus::Miss
        ]
    );
    for chunk in ["one ", "two ", "three"] {
        feeds.send(1, chunk).await;
        for body in &mut bodies {
            assert_eq!(
                next_chunk(body).await,
                chunk,
                "each client, before the next chunk"
            );
        }
    }
    feeds.end(1);
    for body in bodies {
        assert_eq!(read_rest(body).await?, "");
    }
    settle().await;
    assert_eq!(calls.get(), 1);
    let stats = layer.stats();
    assert_eq!((stats.misses, stats.collapsed, stats.stores), (1, 4, 1));
    assert_eq!(stats.loads_running, 0);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_late_joiner_gets_the_whole_body_from_the_start() -> TestResult {
    let (origin, calls, feeds) = fed_origin("max-age=60", None);
    let service = SwrLayer::new().layer(origin);

    let mut first = service.clone().oneshot(get("/late")).await?.into_body();
    feeds.send(1, "a").await;
    feeds.send(1, "b").await;
    assert_eq!(next_chunk(&mut first).await, "a");
    assert_eq!(next_chunk(&mut first).await, "b");

    let late = timeout(secs(1), service.clone().oneshot(get("/late")))
        .await
        .expect("the late joiner waited for the end of the fill")?;
    assert_eq!(info(&late).status, CacheStatus::Collapsed);
    let mut late = late.into_body();
    assert_eq!(next_chunk(&mut late).await, "a");
    assert_eq!(next_chunk(&mut late).await, "b");
    feeds.send(1, "c").await;
    assert_eq!(next_chunk(&mut late).await, "c");
    assert_eq!(next_chunk(&mut first).await, "c");
    feeds.end(1);
    assert_eq!(read_rest(late).await?, "");
    assert_eq!(read_rest(first).await?, "");
    assert_eq!(calls.get(), 1);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn an_oversized_fill_reaches_every_attached_client_whole_and_is_not_stored() -> TestResult {
    let gate = Gate::new();
    let (origin, calls, feeds) = fed_origin("max-age=60", Some(gate.clone()));
    let layer = SwrLayer::new().max_body_bytes(1000);
    let service = layer.layer(origin);

    let a = tokio::spawn(service.clone().oneshot(get("/big")));
    let b = tokio::spawn(service.clone().oneshot(get("/big")));
    settle().await;
    gate.open();
    let mut a = a.await??.into_body();
    let mut b = b.await??.into_body();
    let data = patterned_bytes(3000);
    for part in 0..3 {
        let chunk = data.slice(part * 1000..(part + 1) * 1000);
        feeds.send(1, chunk.clone()).await;
        assert_eq!(next_chunk(&mut a).await, chunk);
        assert_eq!(next_chunk(&mut b).await, chunk);
        if part == 1 {
            // Past the limit: a newcomer does not join a fill that dropped its start; it asks
            // the origin itself.
            let newcomer = tokio::spawn(service.clone().oneshot(get("/big")));
            settle().await;
            assert_eq!(
                calls.get(),
                2,
                "the newcomer of an oversized fill goes to the origin"
            );
            feeds.send(2, "own call").await;
            feeds.end(2);
            let newcomer = newcomer.await??;
            assert_eq!(body_of(newcomer).await?, "own call");
        }
    }
    feeds.end(1);
    assert_eq!(read_rest(a).await?, "");
    assert_eq!(read_rest(b).await?, "");
    settle().await;
    assert_eq!(
        layer.stats().stores,
        1,
        "only the newcomer's small body is stored"
    );
    assert_eq!(layer.stats().loads_running, 0);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_body_failing_mid_stream_fails_every_attached_client_and_stores_nothing() -> TestResult {
    let gate = Gate::new();
    let (origin, calls, feeds) = fed_origin("max-age=60", Some(gate.clone()));
    let layer = SwrLayer::new();
    let service = layer.layer(origin);

    let a = tokio::spawn(service.clone().oneshot(get("/fail")));
    let b = tokio::spawn(service.clone().oneshot(get("/fail")));
    settle().await;
    gate.open();
    let mut a = a.await??.into_body();
    let mut b = b.await??.into_body();
    feeds.send(1, "partial").await;
    assert_eq!(next_chunk(&mut a).await, "partial");
    assert_eq!(next_chunk(&mut b).await, "partial");
    feeds.fail(1, "connection reset").await;
    assert_eq!(read_rest(a).await, Err("connection reset".to_owned()));
    assert_eq!(read_rest(b).await, Err("connection reset".to_owned()));
    settle().await;
    assert_eq!(layer.stats().stores, 0);
    assert_eq!(layer.stats().loads_running, 0);
    // Nothing was stored: the next request asks the origin again.
    let again = tokio::spawn(service.clone().oneshot(get("/fail")));
    settle().await;
    assert_eq!(calls.get(), 2);
    feeds.end(2);
    assert_eq!(info(&again.await??).status, CacheStatus::Miss);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_client_dropped_mid_fill_stops_nothing_for_the_others() -> TestResult {
    let gate = Gate::new();
    let (origin, calls, feeds) = fed_origin("max-age=60", Some(gate.clone()));
    let layer = SwrLayer::new();
    let service = layer.layer(origin);

    let leader = tokio::spawn(service.clone().oneshot(get("/drop")));
    let waiter = tokio::spawn(service.clone().oneshot(get("/drop")));
    settle().await;
    gate.open();
    let mut leader = leader.await??.into_body();
    let waiter = waiter.await??.into_body();
    feeds.send(1, "one ").await;
    assert_eq!(next_chunk(&mut leader).await, "one ");
    drop(leader);
    settle().await;
    assert!(
        feeds.is_read(1),
        "the fill goes on without the leader's client"
    );
    feeds.send(1, "two").await;
    feeds.end(1);
    assert_eq!(read_rest(waiter).await?, "one two");
    settle().await;
    let stats = layer.stats();
    assert_eq!(stats.loads_running, 0, "nothing left in flight");
    assert_eq!(stats.stores, 1);
    let hit = service.clone().oneshot(get("/drop")).await?;
    assert_eq!(info(&hit).status, CacheStatus::Fresh);
    assert_eq!(calls.get(), 1);

    // Every client gone before the body ends: the fill still completes and is stored.
    let only = service.clone().oneshot(get("/drop-all")).await?;
    drop(only);
    feeds.send(2, "stored anyway").await;
    feeds.end(2);
    settle().await;
    let hit = service.clone().oneshot(get("/drop-all")).await?;
    assert_eq!(info(&hit).status, CacheStatus::Fresh);
    assert_eq!(body_of(hit).await?, "stored anyway");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_slow_reader_does_not_slow_the_others() -> TestResult {
    let gate = Gate::new();
    let (origin, _calls, feeds) = fed_origin("max-age=60", Some(gate.clone()));
    let service = SwrLayer::new().layer(origin);

    let fast = tokio::spawn(service.clone().oneshot(get("/slow")));
    let slow = tokio::spawn(service.clone().oneshot(get("/slow")));
    settle().await;
    gate.open();
    let mut fast = fast.await??.into_body();
    let slow = slow.await??.into_body();
    // The slow client reads nothing while the fast one reads every chunk as it comes.
    let mut whole = Vec::new();
    for i in 0..20 {
        let chunk = Bytes::from(format!("chunk {i}; "));
        whole.extend_from_slice(&chunk);
        feeds.send(1, chunk.clone()).await;
        assert_eq!(next_chunk(&mut fast).await, chunk);
    }
    feeds.end(1);
    assert_eq!(read_rest(fast).await?, "");
    assert_eq!(read_rest(slow).await?, Bytes::from(whole));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn past_the_limit_a_reader_far_behind_fails_and_a_lone_one_paces_the_origin() -> TestResult {
    let gate = Gate::new();
    let (origin, _calls, feeds) = fed_origin("max-age=60", Some(gate.clone()));
    let service = SwrLayer::new().max_body_bytes(100).layer(origin);

    let fast = tokio::spawn(service.clone().oneshot(get("/relay")));
    let slow = tokio::spawn(service.clone().oneshot(get("/relay")));
    settle().await;
    gate.open();
    let mut fast = fast.await??.into_body();
    let slow = slow.await??.into_body();
    for _ in 0..5 {
        let chunk = Bytes::from(vec![b'x'; 50]);
        feeds.send(1, chunk.clone()).await;
        assert_eq!(next_chunk(&mut fast).await, chunk);
    }
    // 250 bytes in, the slow one read none: more than the limit behind the fast one.
    let slow = read_rest(slow).await;
    assert!(
        slow.as_ref().is_err_and(|e| e.contains("too slowly")),
        "{slow:?}"
    );

    // The fast one is now alone: reading nothing, it holds the fill (at the limit) and the
    // origin is not read further.
    for _ in 0..7 {
        feeds.send(1, Bytes::from(vec![b'y'; 50])).await;
    }
    settle().await;
    assert_eq!(
        feeds.room(1),
        0,
        "the origin's body is not read past the limit"
    );
    let mut rest = Vec::new();
    while rest.len() < 350 {
        rest.extend_from_slice(&next_chunk(&mut fast).await);
    }
    assert_eq!(rest, vec![b'y'; 350]);
    feeds.end(1);
    assert_eq!(read_rest(fast).await?, "");
    Ok(())
}

/// With `convert_head(true)` a `HEAD` joins a fill and is answered at once from its head; a
/// range (or a conditional) waits for the whole body and is answered as from a stored entry.
#[tokio::test(start_paused = true)]
async fn head_is_answered_at_once_and_range_from_the_stored_body_during_a_fill() -> TestResult {
    let (origin, calls, feeds) = fed_origin("max-age=60", None);
    let service = SwrLayer::new().convert_head(true).layer(origin);

    let mut first = service.clone().oneshot(get("/hr")).await?.into_body();
    feeds.send(1, "0123").await;
    assert_eq!(next_chunk(&mut first).await, "0123");

    let head = timeout(
        secs(1),
        service.clone().oneshot(request(Method::HEAD, "/hr")),
    )
    .await
    .expect("a HEAD during a fill waits for its end")?;
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(info(&head).status, CacheStatus::Collapsed);
    // The length is not known yet (the origin did not state it): none is stated.
    assert!(head.headers().get(header::CONTENT_LENGTH).is_none());
    assert!(body_of(head).await?.is_empty());

    let range = tokio::spawn(
        service
            .clone()
            .oneshot(get_with("/hr", header::RANGE, "bytes=2-5")),
    );
    settle().await;
    assert!(!range.is_finished(), "a range waits for the whole body");
    feeds.send(1, "4567").await;
    feeds.end(1);
    assert_eq!(read_rest(first).await?, "4567");
    let range = timeout(secs(1), range).await.expect("the range hung")??;
    assert_eq!(range.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        header_value(&range, header::CONTENT_RANGE).as_deref(),
        Some("bytes 2-5/8")
    );
    assert_eq!(body_of(range).await?, "2345");
    assert_eq!(calls.get(), 1);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn content_length_from_the_origin_is_kept_on_a_streamed_miss() -> TestResult {
    let (origin, _calls) = origin(|_, _| async {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let _ = tx.send(Ok(Bytes::from_static(b"hello "))).await;
            tokio::time::sleep(secs(1)).await;
            let _ = tx.send(Ok(Bytes::from_static(b"world"))).await;
        });
        let response = reply_stream(rx, "max-age=60");
        Ok(with_header(response, header::CONTENT_LENGTH, "11"))
    });
    let service = SwrLayer::new().layer(origin);
    let started = tokio::time::Instant::now();
    let miss = service.clone().oneshot(get("/cl")).await?;
    assert_eq!(started.elapsed(), std::time::Duration::ZERO);
    assert_eq!(
        header_value(&miss, header::CONTENT_LENGTH).as_deref(),
        Some("11")
    );
    assert_eq!(cache_status(&miss), "tower-swr; fwd=uri-miss; stored");
    let mut body = miss.into_body();
    assert_eq!(body.size_hint().exact(), Some(11));
    assert_eq!(next_chunk(&mut body).await, "hello ");
    assert_eq!(
        started.elapsed(),
        std::time::Duration::ZERO,
        "the first chunk came at once"
    );
    assert_eq!(read_rest(body).await?, "world");
    assert_eq!(started.elapsed(), secs(1));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_response_that_must_not_be_stored_still_passes_straight_through() -> TestResult {
    for cache_control in ["no-store", "private, max-age=60"] {
        let (origin, calls, feeds) = fed_origin(cache_control, None);
        let service = SwrLayer::new().layer(origin);
        let miss = service.clone().oneshot(get("/pass")).await?;
        assert_eq!(cache_status(&miss), "tower-swr; fwd=uri-miss");
        let mut body = miss.into_body();
        feeds.send(1, "live").await;
        assert_eq!(next_chunk(&mut body).await, "live");
        feeds.end(1);
        let again = tokio::spawn(service.clone().oneshot(get("/pass")));
        settle().await;
        assert_eq!(calls.get(), 2, "{cache_control}: never stored nor shared");
        feeds.end(2);
        again.await??;
    }
    Ok(())
}

/// By default (`convert_head(false)`) a `HEAD` miss passes to the origin alone, fill or not.
#[tokio::test(start_paused = true)]
async fn by_default_a_head_during_a_fill_passes_to_the_origin() -> TestResult {
    let (origin, calls, feeds) = fed_origin("max-age=60", None);
    let service = SwrLayer::new().layer(origin);
    let mut first = service.clone().oneshot(get("/h")).await?.into_body();
    feeds.send(1, "body").await;
    assert_eq!(next_chunk(&mut first).await, "body");
    let head = tokio::spawn(service.clone().oneshot(request(Method::HEAD, "/h")));
    settle().await;
    assert_eq!(calls.get(), 2, "the HEAD went to the origin");
    feeds.end(2);
    let head = head.await??;
    assert_eq!(cache_status(&head), "tower-swr; fwd=uri-miss");
    feeds.end(1);
    assert_eq!(read_rest(first).await?, "");
    Ok(())
}
