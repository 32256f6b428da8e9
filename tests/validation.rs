//! Revalidation: expired and `no-cache` entries are revalidated with `If-None-Match` /
//! `If-Modified-Since`; a 304 updates and freshens the stored answer.

mod common;

use common::*;
use http::{header, Request, StatusCode};
use tokio::time::advance;
use tower::{Layer, ServiceExt};
use tower_swr::{CacheStatus, SwrLayer};

#[tokio::test(start_paused = true)]
async fn expired_entry_is_revalidated_and_a_304_updates_and_freshens_it() -> TestResult {
    const LM: &str = "Mon, 01 Jan 2024 00:00:00 GMT";
    let seen = Seen::default();
    let (o, calls) = origin({
        let seen = seen.clone();
        move |n, request: Request<ReqBody>| {
            seen.record(&request);
            async move {
                Ok(if n == 1 {
                    respond(
                        200,
                        "hello",
                        &[
                            ("cache-control", "max-age=10"),
                            ("etag", "\"v1\""),
                            ("last-modified", LM),
                            ("content-length", "5"),
                            ("x-version", "1"),
                        ],
                    )
                } else {
                    respond(
                        304,
                        "",
                        &[
                            ("cache-control", "max-age=100"),
                            ("etag", "\"v1\""),
                            ("content-length", "0"),
                            ("x-version", "2"),
                        ],
                    )
                })
            }
        }
    });
    let service = SwrLayer::shared_cache().layer(o);
    body(service.clone().oneshot(get("/val")).await?).await?;
    assert!(header_text(&seen.headers(1), "if-none-match").is_none());

    advance(secs(11)).await;
    let revalidated = service.clone().oneshot(get("/val")).await?;
    assert_eq!(calls.get(), 2);
    let sent = seen.headers(2);
    assert_eq!(
        header_text(&sent, "if-none-match").as_deref(),
        Some("\"v1\"")
    );
    assert_eq!(header_text(&sent, "if-modified-since").as_deref(), Some(LM));
    assert_eq!(revalidated.status(), StatusCode::OK);
    assert_eq!(
        cache_status(&revalidated),
        "tower-swr; fwd=stale; fwd-status=304; stored"
    );
    assert_eq!(
        header_value(&revalidated, "x-version").as_deref(),
        Some("2")
    );
    assert_eq!(body(revalidated).await?, "hello");

    // Freshened by the 304's max-age=100, with the updated headers.
    advance(secs(50)).await;
    let hit = service.clone().oneshot(get("/val")).await?;
    assert_eq!(calls.get(), 2);
    assert_eq!(cache_status(&hit), "tower-swr; hit; ttl=50");
    assert_eq!(header_value(&hit, "x-version").as_deref(), Some("2"));
    assert_eq!(
        header_value(&hit, header::CONTENT_LENGTH).as_deref(),
        Some("5")
    );
    assert_eq!(body(hit).await?, "hello");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn last_modified_alone_is_revalidated_with_if_modified_since() -> TestResult {
    const LM: &str = "Mon, 01 Jan 2024 00:00:00 GMT";
    let seen = Seen::default();
    let (o, _) = origin({
        let seen = seen.clone();
        move |n, request: Request<ReqBody>| {
            seen.record(&request);
            async move {
                Ok(if n == 1 {
                    respond(
                        200,
                        "body",
                        &[("cache-control", "max-age=10"), ("last-modified", LM)],
                    )
                } else {
                    respond(304, "", &[("cache-control", "max-age=10")])
                })
            }
        }
    });
    let service = SwrLayer::shared_cache().layer(o);
    body(service.clone().oneshot(get("/lm")).await?).await?;
    advance(secs(11)).await;
    let revalidated = service.clone().oneshot(get("/lm")).await?;
    let sent = seen.headers(2);
    assert_eq!(header_text(&sent, "if-modified-since").as_deref(), Some(LM));
    assert!(header_text(&sent, "if-none-match").is_none());
    assert_eq!(body(revalidated).await?, "body");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn no_cache_response_is_revalidated_before_every_reuse() -> TestResult {
    let seen = Seen::default();
    let (o, calls) = origin({
        let seen = seen.clone();
        move |n, request: Request<ReqBody>| {
            seen.record(&request);
            async move {
                Ok(if n == 1 {
                    respond(
                        200,
                        "doc",
                        &[("cache-control", "no-cache"), ("etag", "\"d\"")],
                    )
                } else {
                    respond(304, "", &[("cache-control", "no-cache"), ("etag", "\"d\"")])
                })
            }
        }
    });
    let service = SwrLayer::new().layer(o);
    body(service.clone().oneshot(get("/nc")).await?).await?;
    for n in 2..=3 {
        let response = service.clone().oneshot(get("/nc")).await?;
        assert_eq!(calls.get(), n);
        assert_eq!(
            header_text(&seen.headers(n), "if-none-match").as_deref(),
            Some("\"d\"")
        );
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(body(response).await?, "doc");
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn background_refresh_is_conditional_and_a_304_costs_no_body() -> TestResult {
    let seen = Seen::default();
    let (o, calls) = origin({
        let seen = seen.clone();
        move |n, request: Request<ReqBody>| {
            seen.record(&request);
            async move {
                let cc = ("cache-control", "max-age=10, stale-while-revalidate=60");
                Ok(if n == 1 {
                    respond(200, "the full body", &[cc, ("etag", "\"a\"")])
                } else {
                    respond(304, "", &[cc, ("etag", "\"a\""), ("x-version", "2")])
                })
            }
        }
    });
    let layer = SwrLayer::new();
    let service = layer.layer(o);
    body(service.clone().oneshot(get("/bg")).await?).await?;
    advance(secs(11)).await;

    let stale = service.clone().oneshot(get("/bg")).await?;
    assert_eq!(info(&stale).status, CacheStatus::Stale);
    assert_eq!(body(stale).await?, "the full body");
    settle().await;
    assert_eq!(calls.get(), 2);
    assert_eq!(
        header_text(&seen.headers(2), "if-none-match").as_deref(),
        Some("\"a\"")
    );
    assert_eq!(layer.stats().refreshes_succeeded, 1);

    let fresh = service.clone().oneshot(get("/bg")).await?;
    assert_eq!(info(&fresh).status, CacheStatus::Fresh);
    assert_eq!(header_value(&fresh, "x-version").as_deref(), Some("2"));
    assert_eq!(body(fresh).await?, "the full body");
    assert_eq!(calls.get(), 2);
    Ok(())
}

/// §3.2/§4.3.4 with RFC 9110 §6.6.1: a 304 without `Date` freshens the entry as of when it was
/// received; the stored response's old `Date` must not make the freshened entry old again.
#[tokio::test(start_paused = true)]
async fn a_date_less_304_freshens_from_its_arrival() -> TestResult {
    let (_, date_text) = date_ago(100);
    let (o, calls) = origin(move |n, _| {
        let date_text = date_text.clone();
        async move {
            Ok(if n == 1 {
                respond(
                    200,
                    "body",
                    &[
                        ("cache-control", "max-age=200"),
                        ("etag", "\"e\""),
                        ("date", &date_text),
                    ],
                )
            } else {
                respond(
                    304,
                    "",
                    &[("cache-control", "max-age=200"), ("etag", "\"e\"")],
                )
            })
        }
    });
    let service = SwrLayer::shared_cache().layer(o);
    let miss = service.clone().oneshot(get("/d")).await?;
    assert_eq!(age(&miss), Some(100));
    body(miss).await?;
    advance(secs(101)).await;
    let revalidated = service.clone().oneshot(get("/d")).await?;
    assert_eq!(calls.get(), 2);
    assert_eq!(
        cache_status(&revalidated),
        "tower-swr; fwd=stale; fwd-status=304; stored"
    );
    assert_eq!(body(revalidated).await?, "body");
    let hit = service.clone().oneshot(get("/d")).await?;
    assert_eq!(info(&hit).status, CacheStatus::Fresh);
    assert_eq!(
        calls.get(),
        2,
        "the freshened entry answers without the origin"
    );
    assert!(
        ttl_param(&hit) >= 199,
        "freshened for max-age=200 from the 304's arrival: {}",
        cache_status(&hit)
    );
    assert!(age(&hit).unwrap() <= 1, "Age {:?}", age(&hit));
    Ok(())
}

/// "`Age` ... sent on every reused response": also on the answer built from a 304.
#[tokio::test(start_paused = true)]
async fn revalidated_answer_carries_age_and_updated_headers() -> TestResult {
    let seen = Seen::default();
    let (o, _) = origin({
        let seen = seen.clone();
        move |n, request: Request<ReqBody>| {
            seen.record(&request);
            async move {
                Ok(if n == 1 {
                    respond(
                        200,
                        "payload",
                        &[("cache-control", "max-age=10"), ("etag", "\"p\"")],
                    )
                } else {
                    respond(
                        304,
                        "",
                        &[
                            ("cache-control", "max-age=30"),
                            ("etag", "\"p\""),
                            ("age", "3"),
                            ("x-new", "yes"),
                        ],
                    )
                })
            }
        }
    });
    let service = SwrLayer::new().layer(o);
    body(service.clone().oneshot(get("/r")).await?).await?;
    // Past the default 120 s of stale-while-revalidate: a foreground revalidation.
    advance(secs(200)).await;
    let revalidated = service.clone().oneshot(get("/r")).await?;
    assert_eq!(
        header_text(&seen.headers(2), "if-none-match").as_deref(),
        Some("\"p\"")
    );
    assert_eq!(revalidated.status(), StatusCode::OK);
    assert_eq!(age(&revalidated), Some(3), "the 304's own Age");
    assert_eq!(header_value(&revalidated, "x-new").as_deref(), Some("yes"));
    assert_eq!(body(revalidated).await?, "payload");
    let hit = service.clone().oneshot(get("/r")).await?;
    assert_eq!(cache_status(&hit), "tower-swr; hit; ttl=27");
    Ok(())
}
