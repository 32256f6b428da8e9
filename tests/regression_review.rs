//! Review of the day's fixes (fd1accf..HEAD): what they broke or left. Public API only.

mod common;

use common::*;
use http::{header, HeaderValue, Method, StatusCode};
use std::time::Duration;
use tower::{Layer, ServiceExt};
use tower_swr::{CacheStatus, SwrLayer};

/// A streaming fill whose leading client asked for a range (it waits for the whole body, so
/// it reads no fill) and whose origin pauses longer than the lock timeout between two chunks
/// is given up by the stalled-fill timer: the origin is asked a second time and nothing is
/// stored, although a client was waiting for that very body.
#[tokio::test(start_paused = true)]
#[ignore = "FINDING: a range/conditional leader does not count as a reader, so a slow origin's fill is abandoned and re-asked"]
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
    assert_eq!(calls.get(), 1, "the origin was asked again for the same body");
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(bytes, "head");
    assert_eq!(layer.stats().stores, 1);
}

/// RFC 9111 §4.4 / RFC 9110 §4.2.3: the fix lowercases an unsafe request's host, but a page
/// stored under a host sent in capitals (`Host: EXAMPLE.COM`) is not invalidated by a `POST`
/// with `Host: example.com` (the common case): it is served fresh after the change.
#[tokio::test(start_paused = true)]
#[ignore = "FINDING: a POST in lowercase misses entries keyed under a host sent in another case"]
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

#[allow(dead_code)]
fn _unused(_: Duration) {}
