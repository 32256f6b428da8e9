//! Review of the day's fixes (fd1accf..HEAD): what they broke or left. Public API only.

mod common;

use common::*;
use http::{header, HeaderValue, Method, StatusCode};
use tower::{Layer, ServiceExt};
use tower_swr::{CacheStatus, SwrLayer};

/// A streaming fill whose leading client asked for a range (it waits for the whole body, so
/// it reads no fill) and whose origin pauses longer than the lock timeout between two chunks
/// is given up by the stalled-fill timer: the origin is asked a second time and nothing is
/// stored, although a client was waiting for that very body.
#[tokio::test(start_paused = true)]
async fn a_slow_fill_led_by_a_range_request_is_not_abandoned() {
    let (origin, calls, feeds) = fed_origin("max-age=60", None);
    let layer = SwrLayer::new().lock_timeout(secs(5));
    let service = layer.layer(origin);
    let leader = tokio::spawn({
        let service = service.clone();
        async move {
            let response = service
                .oneshot(get_with("/report", header::RANGE, "bytes=0-3"))
                .await
                .unwrap();
            (response.status(), body(response).await.unwrap())
        }
    });
    settle().await;
    assert_eq!(calls.get(), 1);
    feeds.send(1, "head").await;
    settle().await;
    // The report takes 6 s to compute its next part.
    tokio::time::advance(secs(6)).await;
    settle().await;
    if feeds.is_read(1) {
        feeds.send(1, " tail").await;
        feeds.end(1);
    } else if calls.get() >= 2 {
        feeds.send(2, "head tail").await;
        feeds.end(2);
    }
    settle().await;
    let (status, bytes) = tokio::time::timeout(secs(30), leader)
        .await
        .expect("the leader hung")
        .unwrap();
    assert_eq!(
        calls.get(),
        1,
        "the origin was asked again for the same body"
    );
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(bytes, "head");
    assert_eq!(layer.stats().stores, 1);
}

/// RFC 9111 §4.4 / RFC 9110 §4.2.3: the fix lowercases an unsafe request's host, but a page
/// stored under a host sent in capitals (`Host: EXAMPLE.COM`) is not invalidated by a `POST`
/// with `Host: example.com` (the common case): it is served fresh after the change.
#[tokio::test(start_paused = true)]
async fn a_lowercase_post_invalidates_a_page_stored_under_a_capitalised_host() {
    let (o, _) = origin(|n, _| async move { Ok(reply_cc(format!("v{n}"), "max-age=600")) });
    let service = SwrLayer::new().layer(o);
    let page = || get_with("/items/5", header::HOST, "EXAMPLE.COM");
    service.clone().oneshot(page()).await.unwrap();
    let stored = service.clone().oneshot(page()).await.unwrap();
    assert_eq!(info(&stored).status, CacheStatus::Fresh);
    let mut post = request(Method::POST, "/items/5");
    post.headers_mut()
        .insert(header::HOST, HeaderValue::from_static("example.com"));
    service.clone().oneshot(post).await.unwrap();
    let again = service.clone().oneshot(page()).await.unwrap();
    assert_eq!(info(&again).status, CacheStatus::Miss);
}

#[cfg(feature = "redis")]
mod redis_findings {
    use super::common::redis_server::{flushall, loaded_now, Codec, RedisServer, Tier};
    use super::common::TestResult;
    use std::time::{Duration, SystemTime};
    use tower_swr::engine::{Claim, Lifetime, SharedTier};
    use tower_swr::redis::RedisTier;

    fn stored_at(at: SystemTime) -> Lifetime {
        Lifetime {
            stored_at: at,
            ..loaded_now()
        }
    }

    /// 0fd4008 lets the first write under a fresh lock replace whatever is there, "that value
    /// is from before the grant". A value written without the lock after the grant (an
    /// instance's plain `put`, stored-at now) is newer than the holder's slow load (stored-at
    /// five seconds ago, when it began), yet the holder's write replaces it: the older value
    /// wins, which the stored-at check refused before.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_load_under_the_lock_does_not_replace_a_newer_value() -> TestResult {
        let Some(redis) = RedisServer::start("first write of a grant") else {
            return Ok(());
        };
        let holder: Tier = RedisTier::new(redis.config(), Codec);
        let other: Tier = RedisTier::new(redis.config(), Codec);
        let key = "price".to_owned();
        assert!(holder.get(&key).await.is_none());
        assert!(other.get(&key).await.is_none());
        let claim = holder.claim(&key).await;
        assert!(matches!(claim, Claim::Won { .. }), "{claim:?}");
        let now = SystemTime::now();
        // The other instance writes the new price now.
        other.put(&key, &2, &stored_at(now)).await;
        assert_eq!(other.get(&key).await.map(|(v, _)| v), Some(2), "written");
        // The holder's load, begun five seconds ago, ends with the old price.
        holder
            .put_claimed(&key, &1, &stored_at(now - Duration::from_secs(5)), &claim)
            .await;
        let fresh: Tier = RedisTier::new(redis.config(), Codec);
        assert_eq!(
            fresh.get(&key).await.map(|(v, _)| v),
            Some(2),
            "the newer value stays"
        );
        Ok(())
    }

    /// e76f097 makes the generation never go down, but `clear` still `INCR`s what Redis holds:
    /// after a `FLUSHALL` (and before the once-a-second sync writes the generation back) an
    /// instance that knew generation 1 gets 1 from its clear, adopts nothing (1 is not above
    /// 1) and goes on reading its own copies: the clear removed nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_clear_soon_after_a_flushall_removes_what_was_written() -> TestResult {
        let Some(redis) = RedisServer::start("clear after FLUSHALL") else {
            return Ok(());
        };
        let tier: Tier = RedisTier::new(redis.config(), Codec);
        let key = "report".to_owned();
        assert!(tier.get(&key).await.is_none());
        // A clear of the whole tier earlier: generation 1.
        SharedTier::clear(&tier).await;
        flushall(&redis);
        tier.put(&key, &1, &loaded_now()).await;
        assert_eq!(tier.get(&key).await.map(|(v, _)| v), Some(1), "written");
        SharedTier::clear(&tier).await;
        assert!(
            tier.get(&key).await.is_none(),
            "a value written before a clear is gone after it"
        );
        Ok(())
    }
}

/// A body that counts how often it is polled.
struct Counted(FedBody, std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl http_body::Body for Counted {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        let this = self.get_mut();
        this.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::pin::Pin::new(&mut this.0).poll_frame(cx)
    }
}

/// `lock_timeout(ZERO)` (waiters never wait: a legitimate setting) makes the stalled-fill
/// timer of 740e43d expire at once, every time: while a client reads a fill whose origin is
/// quiet, the fill's task wakes about once a millisecond and polls the origin's body each
/// time, for as long as the origin is quiet (a busy loop per slow response).
#[tokio::test]
async fn a_quiet_origin_body_is_not_polled_in_a_loop_with_a_zero_lock_timeout() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let polls = Arc::new(AtomicUsize::new(0));
    let feed: Arc<Mutex<Option<Feed>>> = Arc::default();
    let (o, _calls) = origin({
        let (polls, feed) = (Arc::clone(&polls), Arc::clone(&feed));
        move |_, _| {
            let (polls, feed) = (Arc::clone(&polls), Arc::clone(&feed));
            async move {
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                *feed.lock().unwrap() = Some(tx);
                Ok(with_header(
                    http::Response::new(Counted(FedBody(rx), polls)),
                    header::CACHE_CONTROL,
                    "max-age=60",
                ))
            }
        }
    });
    let service = SwrLayer::new()
        .lock_timeout(std::time::Duration::ZERO)
        .layer(o);
    let response = service.oneshot(get("/slow")).await.unwrap();
    let reader = tokio::spawn(body(response));
    let tx = feed.lock().unwrap().clone().unwrap();
    tx.send(Ok("first ".into())).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let before = polls.load(Ordering::SeqCst);
    // The origin is quiet for 300 ms, then ends.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let during = polls.load(Ordering::SeqCst) - before;
    tx.send(Ok("last".into())).await.unwrap();
    drop(tx);
    feed.lock().unwrap().take();
    assert_eq!(reader.await.unwrap().unwrap(), "first last");
    assert!(
        during < 20,
        "the quiet body was polled {during} times in 300 ms"
    );
}

/// 151c91a's per-request debug event for a passed-through request writes the request's URI
/// as it came: an absolute-form target's userinfo (`http://alice:secret@host/...`, a proxy
/// request) reaches the logs, where every other event writes the key, which drops it.
#[tokio::test(start_paused = true)]
async fn the_bypass_debug_event_does_not_log_userinfo() {
    let logs = Events::default();
    let _collecting = logs.install();
    let (o, _) = origin(|n, _| async move { Ok(reply_cc(format!("v{n}"), "max-age=60")) });
    let service = SwrLayer::new().layer(o);
    let get = service
        .clone()
        .oneshot(request(
            Method::GET,
            "http://alice:secret@example.com/items?page=1",
        ))
        .await
        .unwrap();
    assert_eq!(get.status(), StatusCode::OK);
    let post = service
        .clone()
        .oneshot(request(
            Method::POST,
            "http://alice:secret@example.com/items",
        ))
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::OK);
    let text = logs.text();
    assert!(text.contains("passed through"), "{text}");
    assert!(!text.contains("secret"), "{text}");
}

/// bea40ec reads `Surrogate-Control`'s `stale-while-revalidate`, but keeps a `Cache-Control:
/// s-maxage` ban on serving stale: the common CDN pair `Cache-Control: public, s-maxage=60`
/// (for other shared caches) with `Surrogate-Control: max-age=60, stale-while-revalidate=600`
/// (for this one) drops the window this cache was given, and the first request past a minute
/// waits for the origin.
#[tokio::test(start_paused = true)]
async fn surrogate_stale_while_revalidate_holds_beside_a_cache_control_s_maxage() {
    let (o, calls) = origin(|n, _| async move {
        Ok(with_header(
            reply_cc(format!("call {n}"), "public, s-maxage=60"),
            http::HeaderName::from_static("surrogate-control"),
            "max-age=60, stale-while-revalidate=600",
        ))
    });
    let service = SwrLayer::shared_cache().layer(o);
    service.clone().oneshot(get("/page")).await.unwrap();
    tokio::time::advance(secs(61)).await;
    let stale = service.clone().oneshot(get("/page")).await.unwrap();
    let status = info(&stale).status;
    assert_eq!(body(stale).await.unwrap(), "call 1", "{status:?}");
    assert_eq!(status, CacheStatus::Stale);
    settle().await;
    assert_eq!(calls.get(), 2, "one background refresh");
}

/// 96f4583 takes a scheme's default port as no port in a `Location`, and 89add28 the host's
/// case, but the unsafe request's own `Host: example.com:80` (the origin `http://example.com`,
/// RFC 9110 §4.2.3) still misses the page stored under `Host: example.com`.
#[tokio::test(start_paused = true)]
async fn a_post_naming_the_default_port_invalidates_the_page() {
    let (o, _) = origin(|n, _| async move { Ok(reply_cc(format!("v{n}"), "max-age=600")) });
    let service = SwrLayer::new().layer(o);
    let page = || get_with("/items/5", header::HOST, "example.com");
    service.clone().oneshot(page()).await.unwrap();
    let mut post = request(Method::POST, "/items/5");
    post.headers_mut()
        .insert(header::HOST, HeaderValue::from_static("example.com:80"));
    service.clone().oneshot(post).await.unwrap();
    let again = service.clone().oneshot(page()).await.unwrap();
    assert_eq!(info(&again).status, CacheStatus::Miss);
}
