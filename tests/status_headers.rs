//! What answers say about the cache: `Age`, `Cache-Status` (syntax, members, `ttl`, upstream
//! members), `X-Cache` / `X-Cache-Key`, the `CacheInfo` extension, headers never stored or added.

mod common;

use common::*;
use http::{header, HeaderName, Method, Request, Response, StatusCode};
use std::time::{Duration, SystemTime};
use tokio::time::advance;
use tower::{Layer, ServiceExt};
use tower_swr::{CacheStatus, SwrLayer, CACHE_STATUS, X_CACHE, X_CACHE_KEY};

#[tokio::test(start_paused = true)]
async fn cache_info_reports_status_age_and_refreshing() -> TestResult {
    let gate = Gate::new();
    let (origin, _calls) = gated_after_first(&gate, SWR_10_60);
    let service = SwrLayer::new().layer(origin);

    let miss = service.clone().oneshot(get("/i")).await?;
    let miss_info = info(&miss);
    assert_eq!(miss_info.status, CacheStatus::Miss);
    assert!(miss_info.stored);
    assert!(!miss_info.refreshing);
    assert_eq!(miss_info.age, Some(Duration::ZERO));
    let stored_at = miss_info.stored_at.expect("a stored miss has a stored_at");

    advance(secs(5)).await;
    let fresh = info(&service.clone().oneshot(get("/i")).await?);
    assert_eq!(fresh.status, CacheStatus::Fresh);
    assert_eq!(fresh.age, Some(secs(5)));
    assert_eq!(fresh.stored_at, Some(stored_at));
    assert!(!fresh.refreshing);

    advance(secs(6)).await;
    let stale = info(&service.clone().oneshot(get("/i")).await?);
    assert_eq!(stale.status, CacheStatus::Stale);
    assert!(stale.refreshing, "the stale answer started a refresh");
    settle().await;
    let stale_again = info(&service.clone().oneshot(get("/i")).await?);
    assert_eq!(stale_again.status, CacheStatus::Stale);
    assert!(stale_again.refreshing, "the refresh is still running");

    gate.open();
    settle().await;
    let refreshed = service.clone().oneshot(get("/i")).await?;
    let refreshed_info = info(&refreshed);
    assert_eq!(refreshed_info.status, CacheStatus::Fresh);
    assert!(!refreshed_info.refreshing);
    assert_ne!(refreshed_info.stored_at, Some(stored_at));
    assert_eq!(body(refreshed).await?, "v2");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn cache_info_extension_can_be_turned_off() -> TestResult {
    let (origin, calls) = origin(|n, _| async move { Ok(reply_cc(format!("v{n}"), SWR_10_60)) });
    let service = SwrLayer::new().cache_info_extension(false).layer(origin);

    let miss = service.clone().oneshot(get("/i")).await?;
    advance(secs(2)).await;
    let hit = service.clone().oneshot(get("/i")).await?;
    advance(secs(10)).await;
    let stale = service.clone().oneshot(get("/i")).await?;
    let bypass = service.clone().oneshot(request(Method::POST, "/i")).await?;

    for response in [&miss, &hit, &stale, &bypass] {
        assert!(response
            .extensions()
            .get::<tower_swr::CacheInfo>()
            .is_none());
    }
    // Nothing else changes: the headers still say what happened.
    assert_eq!(cache_status(&miss), "tower-swr; fwd=uri-miss; stored");
    assert_eq!(cache_status(&hit), "tower-swr; hit; ttl=8");
    assert_eq!(age(&hit), Some(2));
    assert_eq!(cache_status(&stale), "tower-swr; hit; ttl=-2");
    assert_eq!(cache_status(&bypass), "tower-swr; fwd=method");
    assert_eq!(body(hit).await?, "v1");
    settle().await;
    assert_eq!(calls.get(), 3, "miss, refresh, POST");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn age_is_sent_on_every_reused_response() -> TestResult {
    let (o, _) = origin(|n, _| async move {
        Ok(if n == 1 {
            respond(
                200,
                "0123456789",
                &[
                    (
                        "cache-control",
                        "max-age=10, stale-while-revalidate=10, stale-if-error=100",
                    ),
                    ("etag", "\"e\""),
                ],
            )
        } else {
            respond(503, "down", &[])
        })
    });
    let service = SwrLayer::new().layer(o);
    let miss = service.clone().oneshot(get("/aged")).await?;
    assert_eq!(age(&miss), Some(0));

    advance(secs(5)).await;
    let hit = service.clone().oneshot(get("/aged")).await?;
    assert_eq!(age(&hit), Some(5));
    let not_modified = service
        .clone()
        .oneshot(get_with("/aged", header::IF_NONE_MATCH, "\"e\""))
        .await?;
    assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(age(&not_modified), Some(5));
    let partial = service
        .clone()
        .oneshot(get_with("/aged", header::RANGE, "bytes=0-1"))
        .await?;
    assert_eq!(partial.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(age(&partial), Some(5));
    let head = service
        .clone()
        .oneshot(request(Method::HEAD, "/aged"))
        .await?;
    assert_eq!(age(&head), Some(5));

    advance(secs(7)).await;
    let stale = service.clone().oneshot(get("/aged")).await?;
    assert_eq!(info(&stale).status, CacheStatus::Stale);
    assert_eq!(age(&stale), Some(12));
    settle().await;

    advance(secs(13)).await;
    let rescued = service.clone().oneshot(get("/aged")).await?;
    assert_eq!(info(&rescued).status, CacheStatus::StaleIfError);
    assert_eq!(age(&rescued), Some(25));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn hop_by_hop_and_connection_named_headers_are_not_stored() -> TestResult {
    let (o, _) = origin(|_, _| async move {
        Ok(respond(
            200,
            "x",
            &[
                ("cache-control", "max-age=60"),
                ("connection", "x-hop, x-other-hop"),
                ("x-hop", "1"),
                ("x-other-hop", "1"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("upgrade", "h2c"),
                ("trailer", "x-checksum"),
                ("x-keep", "1"),
            ],
        ))
    });
    let service = SwrLayer::shared_cache().layer(o);
    body(service.clone().oneshot(get("/hop")).await?).await?;
    let hit = service.clone().oneshot(get("/hop")).await?;
    assert_eq!(info(&hit).status, CacheStatus::Fresh);
    for name in [
        "connection",
        "x-hop",
        "x-other-hop",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "trailer",
    ] {
        assert!(hit.headers().get(name).is_none(), "{name} was stored");
    }
    assert_eq!(header_value(&hit, "x-keep").as_deref(), Some("1"));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn cache_status_members_have_the_exact_syntax() -> TestResult {
    let gate = Gate::new();
    let (o, _) = origin({
        let gate = gate.clone();
        move |n, request: Request<ReqBody>| {
            let gate = gate.clone();
            async move {
                Ok(match request.uri().path() {
                    "/collapse" => {
                        gate.wait().await;
                        reply_cc("c", "max-age=60")
                    }
                    "/sie" if n > 1 => respond(503, "down", &[]),
                    "/sie" => reply_cc(
                        "s",
                        "max-age=10, stale-while-revalidate=0, stale-if-error=600",
                    ),
                    "/nostore" => reply_cc("n", "no-store"),
                    _ => reply_cc("x", "max-age=120, stale-while-revalidate=60"),
                })
            }
        }
    });
    let layer = SwrLayer::new()
        .key_fn(|parts| (!parts.headers.contains_key("x-skip-cache")).then(String::new));
    let service = layer.layer(o);
    let only_member = |response: &Response<_>| {
        let lines = cache_status_lines(response);
        assert_eq!(lines.len(), 1, "{lines:?}");
        lines[0].clone()
    };

    let sie_miss = service.clone().oneshot(get("/sie")).await?;
    assert_eq!(only_member(&sie_miss), "tower-swr; fwd=uri-miss; stored");
    let miss = service.clone().oneshot(get("/x")).await?;
    assert_eq!(only_member(&miss), "tower-swr; fwd=uri-miss; stored");
    let hit = service.clone().oneshot(get("/x")).await?;
    assert_eq!(only_member(&hit), "tower-swr; hit; ttl=120");
    let not_stored = service.clone().oneshot(get("/nostore")).await?;
    assert_eq!(only_member(&not_stored), "tower-swr; fwd=uri-miss");
    let bypass = service
        .clone()
        .oneshot(get_with("/x", HeaderName::from_static("x-skip-cache"), "1"))
        .await?;
    assert_eq!(only_member(&bypass), "tower-swr; fwd=bypass");
    let method = service.clone().oneshot(request(Method::POST, "/y")).await?;
    assert_eq!(only_member(&method), "tower-swr; fwd=method");

    let leader = tokio::spawn(service.clone().oneshot(get("/collapse")));
    settle().await;
    let waiter = tokio::spawn(service.clone().oneshot(get("/collapse")));
    settle().await;
    gate.open();
    let (leader, waiter) = (leader.await??, waiter.await??);
    assert_eq!(only_member(&leader), "tower-swr; fwd=uri-miss; stored");
    assert_eq!(only_member(&waiter), "tower-swr; fwd=uri-miss; collapsed");
    assert!(age(&waiter).is_some(), "a collapsed answer carries Age");

    // /x was stored at t=0 with max-age=120; the collapse settled 2 ms, so go to t=125 s.
    advance(secs(125) - Duration::from_millis(2)).await;
    let stale = service.clone().oneshot(get("/x")).await?;
    assert_eq!(only_member(&stale), "tower-swr; hit; ttl=-5");

    let rescued = service.clone().oneshot(get("/sie")).await?;
    assert_eq!(
        only_member(&rescued),
        "tower-swr; fwd=stale; fwd-status=503"
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn cache_status_is_appended_after_the_upstream_member() -> TestResult {
    let (o, _) = origin(|_, _| async move {
        Ok(respond(
            200,
            "x",
            &[
                ("cache-control", "max-age=60"),
                ("cache-status", "upstream; hit"),
            ],
        ))
    });
    let service = SwrLayer::new().layer(o);
    let miss = service.clone().oneshot(get("/u")).await?;
    assert_eq!(
        cache_status_lines(&miss),
        ["upstream; hit", "tower-swr; fwd=uri-miss; stored"]
    );
    let hit = service.clone().oneshot(get("/u")).await?;
    assert_eq!(
        cache_status_lines(&hit),
        ["upstream; hit", "tower-swr; hit; ttl=60"],
        "our member is not stored, only appended to each answer"
    );
    let bypass = service.clone().oneshot(request(Method::POST, "/p")).await?;
    assert_eq!(
        cache_status_lines(&bypass),
        ["upstream; hit", "tower-swr; fwd=method"]
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn cache_name_renames_the_member() -> TestResult {
    let (o, _) = origin(|_, _| async move { Ok(reply_cc("x", "max-age=60")) });
    let service = SwrLayer::new().cache_name("edge").layer(o.clone());
    let miss = service.clone().oneshot(get("/n")).await?;
    assert_eq!(cache_status(&miss), "edge; fwd=uri-miss; stored");
    let hit = service.clone().oneshot(get("/n")).await?;
    assert_eq!(cache_status(&hit), "edge; hit; ttl=60");
    let bypass = service.clone().oneshot(request(Method::PUT, "/n")).await?;
    assert_eq!(cache_status(&bypass), "edge; fwd=method");

    // A name that is not a token is written as a quoted string.
    let quoted = SwrLayer::new().cache_name("my cache").layer(o);
    let miss = quoted.clone().oneshot(get("/n")).await?;
    assert_eq!(cache_status(&miss), "\"my cache\"; fwd=uri-miss; stored");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn no_warning_header_is_ever_added() -> TestResult {
    let last_modified = http_date(SystemTime::now() - secs(400 * 24 * 3600));
    let (o, _) = origin(move |n, request: Request<ReqBody>| {
        let last_modified = last_modified.clone();
        async move {
            Ok(match (request.uri().path(), n) {
                ("/heuristic", _) => with_header(reply("h"), header::LAST_MODIFIED, &last_modified),
                (_, 1) => reply_cc("x", "max-age=10, stale-while-revalidate=10"),
                _ => respond(503, "down", &[]),
            })
        }
    });
    let service = SwrLayer::new().layer(o.clone());
    let mut answers = vec![service.clone().oneshot(get("/w")).await?];
    advance(secs(11)).await;
    let stale = service.clone().oneshot(get("/w")).await?;
    assert_eq!(info(&stale).status, CacheStatus::Stale);
    answers.push(stale);
    settle().await;
    advance(secs(20)).await;
    let rescued = service.clone().oneshot(get("/w")).await?;
    assert_eq!(info(&rescued).status, CacheStatus::StaleIfError);
    answers.push(rescued);

    // A hit on heuristic freshness, 20 h old (Last-Modified 400 days ago: the heuristic is
    // capped at 24 h). RFC 7234 had "113 Heuristic expiration" for such answers; not any more.
    let shared = SwrLayer::shared_cache().layer(o);
    body(shared.clone().oneshot(get("/heuristic")).await?).await?;
    advance(secs(20 * 3600)).await;
    let heuristic = shared.clone().oneshot(get("/heuristic")).await?;
    assert_eq!(info(&heuristic).status, CacheStatus::Fresh);
    answers.push(heuristic);

    for answer in &answers {
        assert!(
            answer.headers().get(header::WARNING).is_none(),
            "{:?}",
            answer.headers()
        );
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn cache_status_follows_upstream_on_stale_rescued_and_collapsed_answers() -> TestResult {
    let gate = Gate::new();
    let (o, _) = origin({
        let gate = gate.clone();
        move |n, request: Request<ReqBody>| {
            let gate = gate.clone();
            async move {
                let upstream = ("cache-status", "upstream; hit");
                Ok(match request.uri().path() {
                    "/collapse" => {
                        gate.wait().await;
                        respond(200, "c", &[("cache-control", "max-age=60"), upstream])
                    }
                    "/sie" if n > 1 => respond(503, "down", &[upstream]),
                    "/sie" => respond(
                        200,
                        "s",
                        &[
                            (
                                "cache-control",
                                "max-age=10, stale-while-revalidate=0, stale-if-error=600",
                            ),
                            upstream,
                        ],
                    ),
                    _ => respond(
                        200,
                        "x",
                        &[
                            ("cache-control", "max-age=10, stale-while-revalidate=60"),
                            upstream,
                        ],
                    ),
                })
            }
        }
    });
    let service = SwrLayer::new().layer(o);
    body(service.clone().oneshot(get("/sie")).await?).await?;
    body(service.clone().oneshot(get("/x")).await?).await?;

    let leader = tokio::spawn(service.clone().oneshot(get("/collapse")));
    settle().await;
    let waiter = tokio::spawn(service.clone().oneshot(get("/collapse")));
    settle().await;
    gate.open();
    let (leader, waiter) = (leader.await??, waiter.await??);
    assert_eq!(
        cache_status_lines(&leader),
        ["upstream; hit", "tower-swr; fwd=uri-miss; stored"]
    );
    assert_eq!(
        cache_status_lines(&waiter),
        ["upstream; hit", "tower-swr; fwd=uri-miss; collapsed"]
    );

    advance(secs(15) - Duration::from_millis(2)).await;
    let stale = service.clone().oneshot(get("/x")).await?;
    assert_eq!(
        cache_status_lines(&stale),
        ["upstream; hit", "tower-swr; hit; ttl=-5"]
    );
    let rescued = service.clone().oneshot(get("/sie")).await?;
    assert_eq!(
        cache_status_lines(&rescued),
        ["upstream; hit", "tower-swr; fwd=stale; fwd-status=503"],
        "the stored response's upstream member, then ours"
    );
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn x_cache_header_tells_hit_stale_miss_and_bypass() -> TestResult {
    let down = Switch::default();
    let (o, _) = switchable(
        "max-age=10, stale-while-revalidate=10, stale-if-error=600",
        down.clone(),
    );
    let service = SwrLayer::new()
        .x_cache_header(true)
        .key_fn(|parts| (!parts.headers.contains_key("x-skip")).then(String::new))
        .layer(o.clone());
    let x_cache = |response: &Answer| header_value(response, &X_CACHE);

    let miss = service.clone().oneshot(get("/x")).await?;
    assert_eq!(x_cache(&miss).as_deref(), Some("MISS"));
    let hit = service.clone().oneshot(get("/x")).await?;
    assert_eq!(x_cache(&hit).as_deref(), Some("HIT"));
    let post = service.clone().oneshot(request(Method::POST, "/p")).await?;
    assert_eq!(x_cache(&post).as_deref(), Some("BYPASS"));
    let skipped = service
        .clone()
        .oneshot(get_with("/x", HeaderName::from_static("x-skip"), "1"))
        .await?;
    assert_eq!(x_cache(&skipped).as_deref(), Some("BYPASS"));
    advance(secs(11)).await;
    let stale = service.clone().oneshot(get("/x")).await?;
    assert_eq!(x_cache(&stale).as_deref(), Some("STALE"));
    settle().await;
    down.set(true);
    advance(secs(30)).await;
    let rescued = service.clone().oneshot(get("/x")).await?;
    assert_eq!(info(&rescued).status, CacheStatus::StaleIfError);
    assert_eq!(x_cache(&rescued).as_deref(), Some("STALE"));

    // Off by default.
    let plain = SwrLayer::new().layer(o);
    down.set(false);
    for _ in 0..2 {
        let response = plain.clone().oneshot(get("/y")).await?;
        assert!(response.headers().get(&X_CACHE).is_none());
        assert!(response.headers().get(&X_CACHE_KEY).is_none());
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn x_cache_key_header_reveals_the_key_only_when_enabled() -> TestResult {
    let (o, _) = origin(|_, _| async move { Ok(reply_cc("x", "max-age=60")) });
    let service = SwrLayer::new().x_cache_key_header(true).layer(o.clone());
    let on_host = || get_with("/k?q=1", header::HOST, "example.com");
    let miss = service.clone().oneshot(on_host()).await?;
    assert_eq!(
        header_value(&miss, &X_CACHE_KEY).as_deref(),
        Some("GET example.com/k?q=1")
    );
    let hit = service.clone().oneshot(on_host()).await?;
    assert_eq!(info(&hit).status, CacheStatus::Fresh);
    assert_eq!(
        header_value(&hit, &X_CACHE_KEY).as_deref(),
        Some("GET example.com/k?q=1")
    );
    assert!(hit.headers().get(&X_CACHE).is_none(), "X-Cache is separate");

    let default = SwrLayer::new().layer(o);
    for _ in 0..2 {
        let response = default.clone().oneshot(on_host()).await?;
        assert!(response.headers().get(&X_CACHE_KEY).is_none());
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn x_query_time_ms_tells_how_long_each_answer_took_only_when_enabled() -> TestResult {
    let (o, _) = slow_origin(Duration::from_millis(250), "max-age=60");
    let service = SwrLayer::new().query_time_header(true).layer(o.clone());
    let query_time = |response: &Answer| {
        header_value(response, "x-query-time-ms").map(|ms| ms.parse::<u64>().expect("integer"))
    };
    // Two requests on one cold key: the leader's origin call and the one that waited for it.
    let leader = tokio::spawn(service.clone().oneshot(get("/q")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let waiter = service.clone().oneshot(get("/q")).await?;
    let leader = leader.await??;
    assert_eq!(query_time(&leader), Some(250));
    assert_eq!(info(&waiter).status, CacheStatus::Collapsed);
    assert_eq!(query_time(&waiter), Some(150), "the time it waited");
    let hit = service.clone().oneshot(get("/q")).await?;
    assert_eq!(
        (info(&hit).status, query_time(&hit)),
        (CacheStatus::Fresh, Some(0))
    );
    let post = service.clone().oneshot(request(Method::POST, "/q")).await?;
    assert_eq!(query_time(&post), Some(250), "a bypass is timed too");

    let default = SwrLayer::new().layer(o);
    for _ in 0..2 {
        let response = default.clone().oneshot(get("/q")).await?;
        assert!(response.headers().get("x-query-time-ms").is_none());
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn ttl_rounds_down_while_fresh_and_up_once_stale() -> TestResult {
    let (o, _calls) = origin(|n, _request: Request<ReqBody>| async move {
        Ok::<_, BoxError>(reply(format!("v{n}")))
    });
    let service = SwrLayer::new().layer(o);
    service.clone().oneshot(get("/t")).await?;
    advance(Duration::from_millis(59_500)).await;
    let hit = service.clone().oneshot(get("/t")).await?;
    assert_eq!(cache_status(&hit), "tower-swr; hit; ttl=0");
    assert_eq!(age(&hit), Some(59));
    advance(secs(1)).await;
    let stale = service.clone().oneshot(get("/t")).await?;
    assert_eq!(info(&stale).status, CacheStatus::Stale);
    assert_eq!(cache_status(&stale), "tower-swr; hit; ttl=-1");
    assert_eq!(age(&stale), Some(60));
    Ok(())
}

/// Upstream `Cache-Status` members stay first; ours fills the reserved slot after them.
#[tokio::test(start_paused = true)]
async fn a_hit_fills_its_slots_after_upstream_members() -> TestResult {
    let (o, _calls) = origin(|_, _request: Request<ReqBody>| async {
        let response = with_header(
            reply_cc("v", "max-age=60"),
            CACHE_STATUS.clone(),
            "edge; hit",
        );
        Ok::<_, BoxError>(with_header(
            response,
            CACHE_STATUS.clone(),
            "shield; fwd=uri-miss",
        ))
    });
    let service = SwrLayer::new().x_cache_header(true).layer(o);
    service.clone().oneshot(get("/s")).await?;
    advance(secs(10)).await;
    let hit = service.clone().oneshot(get("/s")).await?;
    assert_eq!(
        cache_status_lines(&hit),
        [
            "edge; hit",
            "shield; fwd=uri-miss",
            "tower-swr; hit; ttl=50"
        ]
    );
    assert_eq!(hit.headers().get_all(header::AGE).iter().count(), 1);
    assert_eq!(age(&hit), Some(10));
    Ok(())
}

/// No `Date` is stored: a hit carries none of its own (hyper dates every response as it goes
/// out, see `wire::handler_date_and_length_are_not_duplicated_on_hits`) and `Age` tells how old
/// it is. Storing a `Date` would cost every hit a header clone.
#[tokio::test(start_paused = true)]
async fn hits_carry_no_stored_date_and_age_tells_their_age() -> TestResult {
    let (o, calls) =
        origin(|_, _request: Request<ReqBody>| async { Ok::<_, BoxError>(reply("items")) });
    let service = SwrLayer::new().layer(o);
    let miss = service.clone().oneshot(get("/api/cinema")).await?;
    body(miss).await?;
    advance(secs(30)).await;
    let hit = service.clone().oneshot(get("/api/cinema")).await?;
    assert_eq!(info(&hit).status, CacheStatus::Fresh);
    assert_eq!(header_value(&hit, header::DATE), None);
    assert_eq!(age(&hit), Some(30));
    assert_eq!(calls.get(), 1);
    Ok(())
}
