#![cfg(feature = "redis")]
//! Black-box tests of an instance with nothing in memory that finds another instance's stale
//! copy in Redis (and of the engine's shared tier doing the same), written from the documented
//! behaviour only: inside the stale-while-revalidate window it is a stale hit at once with one
//! refresh for the fleet; past it, inside stale-if-error, it is revalidated and stands in for a
//! failing origin; past every window it is not used.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::redis_server::RedisServer;
use common::*;
use http::{header, Method, StatusCode};
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_swr::engine::{Freshness, Lifetime, Loaded, Status, SwrCache};
use tower_swr::{CacheStatus, SwrHandle, SwrLayer, SwrService};

/// How long every origin call after the first takes in the tests that need a slow refresh.
const SLOW: Duration = Duration::from_secs(2);

/// An answer "at once": well under [`SLOW`].
const AT_ONCE: Duration = Duration::from_millis(700);

type Instance<S> = (SwrService<S>, SwrHandle);

/// `n` instances: layers of their own (built by `layer`) on one Redis, around one origin.
fn fleet<S: OriginService>(
    redis: &RedisServer,
    origin: &S,
    n: usize,
    layer: impl Fn() -> SwrLayer,
) -> Vec<Instance<S>> {
    (0..n)
        .map(|_| {
            let layer = layer().redis(redis.config());
            let handle = layer.handle();
            (layer.layer(origin.clone()), handle)
        })
        .collect()
}

/// Waits until `handle`'s instance has written `n` values to Redis (the writes are detached).
async fn until_written(handle: &SwrHandle, n: u64) {
    let handle = handle.clone();
    eventually("the value reached Redis", move || {
        handle.redis_stats().expect("a Redis tier").writes >= n
    })
    .await;
}

/// Instance 0 loads `path`, its copy reaches Redis, and then the copy's one second of
/// freshness (`max-age=1`) runs out. The other instances have never seen `path`.
async fn load_then_let_expire<S: OriginService>(
    nodes: &[Instance<S>],
    request: http::Request<ReqBody>,
) -> TestResult {
    let response = nodes[0].0.clone().oneshot(request).await?;
    assert_eq!(response.status(), StatusCode::OK, "the first load succeeds");
    common::body(response).await?;
    until_written(&nodes[0].1, 1).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    Ok(())
}

/// Call 1 answers `v1` at once; every later call answers `v<n>` after [`SLOW`]; all with
/// `headers`.
fn fast_then_slow(headers: &'static [(&'static str, &'static str)]) -> (impl OriginService, Calls) {
    origin(move |n, _request| async move {
        if n > 1 {
            tokio::time::sleep(SLOW).await;
        }
        Ok(respond(200, format!("v{n}"), headers))
    })
}

/// Calls `path` on `service` until its body is `wanted` (10 s at most); every answer on the
/// way must be one of `allowed`. Returns the status of the answer with `wanted`.
async fn until_body<S: OriginService>(
    service: &SwrService<S>,
    path: &str,
    wanted: &str,
    allowed: &[CacheStatus],
) -> Result<CacheStatus, BoxError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = call(service, get(path)).await?;
        if body == wanted.as_bytes() {
            return Ok(status);
        }
        assert!(
            allowed.contains(&status),
            "{path}: answered {status:?} {body:?} while waiting for {wanted}"
        );
        assert!(Instant::now() < deadline, "{path} never answered {wanted}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_instance_answers_a_stale_redis_copy_at_once_as_a_stale_hit_with_its_real_age(
) -> TestResult {
    let Some(redis) = RedisServer::start("stale copy: stale hit at once") else {
        return Ok(());
    };
    // 30 s old when it arrives: fresh for one more second, then 60 s of stale-while-revalidate.
    let (origin, calls) = fast_then_slow(&[
        ("cache-control", "max-age=31, stale-while-revalidate=60"),
        ("age", "30"),
    ]);
    let nodes = fleet(&redis, &origin, 2, SwrLayer::new);
    load_then_let_expire(&nodes, get("/age")).await?;
    let (response, took) = timed(nodes[1].0.clone(), get("/age")).await?;
    assert!(took < AT_ONCE, "answered without the origin ({took:?})");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(info(&response).status, CacheStatus::Stale);
    // As for a stale memory copy (README: a stale-while-revalidate answer says `ttl=-5`).
    let line = cache_status(&response);
    assert!(line.contains("; hit"), "Cache-Status: {line}");
    assert!(ttl_param(&response) < 0, "stale: a negative ttl in {line}");
    let age = age(&response).expect("an Age header");
    assert!(
        (31..40).contains(&age),
        "Age counts the copy's age at the origin and since (31 s or a little more), got {age}"
    );
    assert!(
        info(&response).refreshing,
        "a background refresh of the key runs"
    );
    assert_eq!(&common::body(response).await?[..], b"v1");
    let calls_now = calls.clone();
    eventually("the one refresh starts", move || calls_now.get() == 2).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_its_refresh_runs_the_new_instance_answers_stale_from_memory_then_every_instance_serves_the_new_value(
) -> TestResult {
    let Some(redis) = RedisServer::start("stale copy: memory while refreshing") else {
        return Ok(());
    };
    let (origin, calls) =
        fast_then_slow(&[("cache-control", "max-age=1, stale-while-revalidate=60")]);
    let nodes = fleet(&redis, &origin, 3, SwrLayer::new);
    load_then_let_expire(&nodes, get("/m")).await?;
    let (status, body) = call(&nodes[1].0, get("/m")).await?;
    assert_eq!((status, &body[..]), (CacheStatus::Stale, &b"v1"[..]));
    let tier = nodes[1].1.redis_stats().expect("a Redis tier");
    let lookups_before = tier.hits + tier.misses;
    for _ in 0..20 {
        let (response, took) = timed(nodes[1].0.clone(), get("/m")).await?;
        assert!(took < AT_ONCE, "stale at once ({took:?})");
        let status = info(&response).status;
        assert_eq!(
            (status, &common::body(response).await?[..]),
            (CacheStatus::Stale, &b"v1"[..])
        );
    }
    let tier = nodes[1].1.redis_stats().expect("a Redis tier");
    assert!(
        tier.hits + tier.misses <= lookups_before + 2,
        "the requests during the refresh are answered from memory, not Redis ({} lookups)",
        tier.hits + tier.misses - lookups_before
    );
    assert_eq!(nodes[1].1.stats().entries, 1, "the copy is in its memory");
    // The refresh lands: the new instance serves it fresh, and so does every other instance.
    let status = until_body(&nodes[1].0, "/m", "v2", &[CacheStatus::Stale]).await?;
    assert_eq!(status, CacheStatus::Fresh, "the refreshed value is fresh");
    let stale_or_new = [
        CacheStatus::Stale,
        CacheStatus::Fresh,
        CacheStatus::SharedTier,
    ];
    for node in [0, 2] {
        let status = until_body(&nodes[node].0, "/m", "v2", &stale_or_new).await?;
        assert!(
            matches!(status, CacheStatus::Fresh | CacheStatus::SharedTier),
            "instance {node} serves the new value as fresh ({status:?})"
        );
    }
    assert_eq!(calls.get(), 2, "one refresh for the fleet");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_instances_finding_one_stale_copy_together_make_one_origin_call_for_the_fleet(
) -> TestResult {
    let Some(redis) = RedisServer::start("stale copy: one refresh for the fleet") else {
        return Ok(());
    };
    let (origin, calls) =
        fast_then_slow(&[("cache-control", "max-age=1, stale-while-revalidate=60")]);
    let nodes = Arc::new(fleet(&redis, &origin, 4, SwrLayer::new));
    load_then_let_expire(&nodes, get("/fleet")).await?;
    let mut requests = Vec::new();
    for i in 0..120 {
        let nodes = Arc::clone(&nodes);
        // Instances 1 to 3 have nothing in memory; instance 0 has its own stale copy.
        requests.push(tokio::spawn(async move {
            timed(nodes[i % 4].0.clone(), get("/fleet")).await
        }));
    }
    for request in requests {
        let (response, took) = request.await??;
        let status = info(&response).status;
        assert_eq!(
            (status, &common::body(response).await?[..]),
            (CacheStatus::Stale, &b"v1"[..])
        );
        assert!(took < AT_ONCE, "stale at once ({took:?})");
    }
    let stale_or_new = [
        CacheStatus::Stale,
        CacheStatus::Fresh,
        CacheStatus::SharedTier,
    ];
    for (service, _) in nodes.iter() {
        until_body(service, "/fleet", "v2", &stale_or_new).await?;
    }
    assert_eq!(calls.get(), 2, "one refresh for the whole fleet");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layers_default_stale_window_applies_to_a_redis_copy_without_its_own() -> TestResult {
    let Some(redis) = RedisServer::start("stale copy: the default window") else {
        return Ok(());
    };
    // No stale-while-revalidate from the origin: the layer's default (120 s) applies.
    let (origin, calls) = fast_then_slow(&[("cache-control", "max-age=1")]);
    let nodes = fleet(&redis, &origin, 2, SwrLayer::new);
    load_then_let_expire(&nodes, get("/default")).await?;
    let (response, took) = timed(nodes[1].0.clone(), get("/default")).await?;
    let status = info(&response).status;
    assert_eq!(
        (status, &common::body(response).await?[..]),
        (CacheStatus::Stale, &b"v1"[..])
    );
    assert!(took < AT_ONCE, "answered without the origin ({took:?})");
    assert_eq!(
        until_body(&nodes[1].0, "/default", "v2", &[CacheStatus::Stale]).await?,
        CacheStatus::Fresh
    );
    assert_eq!(calls.get(), 2);
    Ok(())
}

/// Call 1 answers `v1` with `ETag: "e1"` and `cache_control`; later calls answer a 304 with
/// `Cache-Control: max-age=600` when asked `If-None-Match: "e1"`, else `changed`; every request
/// is recorded in the returned [`Seen`].
fn validating_origin(cache_control: &'static str) -> (impl OriginService, Calls, Seen) {
    let seen = Seen::default();
    let (service, calls) = origin({
        let seen = seen.clone();
        move |n, request: http::Request<ReqBody>| {
            seen.record(&request);
            async move {
                if n == 1 {
                    return Ok(respond(
                        200,
                        "v1",
                        &[("cache-control", cache_control), ("etag", "\"e1\"")],
                    ));
                }
                let matches = request
                    .headers()
                    .get(header::IF_NONE_MATCH)
                    .is_some_and(|v| v == "\"e1\"");
                Ok(if matches {
                    respond(
                        304,
                        "",
                        &[("cache-control", "max-age=600"), ("etag", "\"e1\"")],
                    )
                } else {
                    respond(200, "changed", &[("cache-control", "max-age=600")])
                })
            }
        }
    });
    (service, calls, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_refresh_of_a_redis_stale_copy_revalidates_with_its_etag() -> TestResult {
    let Some(redis) = RedisServer::start("stale copy: refresh revalidates") else {
        return Ok(());
    };
    let (origin, calls, seen) = validating_origin("max-age=1, stale-while-revalidate=60");
    let nodes = fleet(&redis, &origin, 2, SwrLayer::new);
    load_then_let_expire(&nodes, get("/etag")).await?;
    let (status, body) = call(&nodes[1].0, get("/etag")).await?;
    assert_eq!((status, &body[..]), (CacheStatus::Stale, &b"v1"[..]));
    let calls_now = calls.clone();
    eventually("the refresh asks the origin", move || calls_now.get() == 2).await;
    assert_eq!(
        header_text(&seen.headers(2), "if-none-match").as_deref(),
        Some("\"e1\""),
        "the refresh revalidates with the copy's ETag"
    );
    // The 304 renews the copy: fresh from now, with its body.
    let status = until_body(&nodes[1].0, "/etag", "v1", &[]).await?;
    assert!(matches!(status, CacheStatus::Stale | CacheStatus::Fresh));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = call(&nodes[1].0, get("/etag")).await?;
        assert_eq!(&body[..], b"v1", "renewed by the 304, not replaced");
        if status == CacheStatus::Fresh {
            break;
        }
        assert!(Instant::now() < deadline, "the 304 never renewed the copy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(calls.get(), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_stale_window_a_new_instance_revalidates_the_copy_and_a_304_renews_it(
) -> TestResult {
    let Some(redis) = RedisServer::start("stale copy: revalidated past the window") else {
        return Ok(());
    };
    let (origin, calls, seen) = validating_origin("max-age=1, stale-if-error=600");
    let layer = || SwrLayer::new().stale_while_revalidate(Duration::ZERO);
    let nodes = fleet(&redis, &origin, 3, layer);
    load_then_let_expire(&nodes, get("/reval")).await?;
    let response = nodes[1].0.clone().oneshot(get("/reval")).await?;
    assert_eq!(response.status(), StatusCode::OK);
    let status = info(&response).status;
    assert_ne!(
        status,
        CacheStatus::Stale,
        "past its window: not a stale hit"
    );
    assert_eq!(
        &common::body(response).await?[..],
        b"v1",
        "the renewed copy"
    );
    assert_eq!(calls.get(), 2, "the request went to the origin");
    assert_eq!(
        header_text(&seen.headers(2), "if-none-match").as_deref(),
        Some("\"e1\""),
        "with the copy's validator"
    );
    let (status, body) = call(&nodes[1].0, get("/reval")).await?;
    assert_eq!((status, &body[..]), (CacheStatus::Fresh, &b"v1"[..]));
    // The renewed copy is what Redis holds now: an instance that never saw the URL takes it.
    until_written(&nodes[1].1, 1).await;
    let (status, body) = call(&nodes[2].0, get("/reval")).await?;
    assert_eq!((status, &body[..]), (CacheStatus::SharedTier, &b"v1"[..]));
    assert_eq!(calls.get(), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_stale_window_a_new_instance_answers_the_copy_when_the_origin_fails_or_errors(
) -> TestResult {
    let Some(redis) = RedisServer::start("stale copy: stale-if-error") else {
        return Ok(());
    };
    let mode = Mode::default();
    let (origin, calls) = origin({
        let mode = mode.clone();
        move |n, _request| {
            let mode = mode.clone();
            async move {
                if n == 1 {
                    return Ok(respond(
                        200,
                        "v1",
                        &[
                            ("cache-control", "max-age=1, stale-if-error=600"),
                            ("etag", "\"e1\""),
                        ],
                    ));
                }
                match mode.get() {
                    UNAVAILABLE => Ok(respond(500, "down", &[])),
                    _ => Err::<Reply, BoxError>("origin error".into()),
                }
            }
        }
    });
    let layer = || SwrLayer::new().stale_while_revalidate(Duration::ZERO);
    let nodes = fleet(&redis, &origin, 3, layer);
    load_then_let_expire(&nodes, get("/sie")).await?;
    mode.set(UNAVAILABLE);
    let response = nodes[1].0.clone().oneshot(get("/sie")).await?;
    assert_eq!(response.status(), StatusCode::OK, "the copy, never the 500");
    assert_eq!(info(&response).status, CacheStatus::StaleIfError);
    assert_eq!(&common::body(response).await?[..], b"v1");
    assert_eq!(calls.get(), 2, "the origin was asked first");
    mode.set(ERROR);
    let response = nodes[2].0.clone().oneshot(get("/sie")).await?;
    assert_eq!(response.status(), StatusCode::OK, "the copy, not the error");
    assert_eq!(info(&response).status, CacheStatus::StaleIfError);
    assert_eq!(&common::body(response).await?[..], b"v1");
    assert_eq!(calls.get(), 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_copy_past_every_window_is_a_normal_miss() -> TestResult {
    let Some(redis) = RedisServer::start("stale copy: past every window") else {
        return Ok(());
    };
    let (origin, calls) = origin(|n, _request| async move {
        Ok(if n == 1 {
            reply_cc(
                "v1",
                "max-age=1, stale-while-revalidate=1, stale-if-error=1",
            )
        } else {
            respond(500, "down", &[])
        })
    });
    let nodes = fleet(&redis, &origin, 2, SwrLayer::new);
    load_then_let_expire(&nodes, get("/old")).await?;
    // Fresh for 1 s, stale (either way) for 1 s more: past both by now.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let response = nodes[1].0.clone().oneshot(get("/old")).await?;
    let status = info(&response).status;
    assert_eq!(
        (response.status(), status),
        (StatusCode::INTERNAL_SERVER_ERROR, CacheStatus::Miss),
        "the origin's answer, as for a miss"
    );
    assert_eq!(&common::body(response).await?[..], b"down");
    assert_eq!(calls.get(), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_redis_copy_of_another_vary_variant_is_never_served() -> TestResult {
    let Some(redis) = RedisServer::start("stale copy: Vary") else {
        return Ok(());
    };
    let (origin, _calls) = origin(|n, request: http::Request<ReqBody>| async move {
        let language = (request.headers().get(header::ACCEPT_LANGUAGE))
            .map(|v| v.to_str().unwrap_or("?").to_owned())
            .unwrap_or_else(|| "none".to_owned());
        Ok(respond(
            200,
            format!("{language} v{n}"),
            &[
                ("cache-control", "max-age=1, stale-while-revalidate=60"),
                ("vary", "accept-language"),
            ],
        ))
    });
    let nodes = fleet(&redis, &origin, 3, SwrLayer::new);
    let en = || get_headers("/page", &[("accept-language", "en")]);
    load_then_let_expire(&nodes, en()).await?;
    let (status, body) = call(&nodes[1].0, get("/page")).await?;
    assert_eq!(
        status,
        CacheStatus::Miss,
        "no variant for a request without the header"
    );
    assert!(body.starts_with(b"none "), "{body:?}");
    let (status, body) = call(
        &nodes[2].0,
        get_headers("/page", &[("accept-language", "fr")]),
    )
    .await?;
    assert_eq!(
        status,
        CacheStatus::Miss,
        "no stale copy of another variant"
    );
    assert!(body.starts_with(b"fr "), "{body:?}");
    // The matching variant is the stale copy.
    let (status, body) = call(&nodes[2].0, en()).await?;
    assert_eq!((status, &body[..]), (CacheStatus::Stale, &b"en v1"[..]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_or_tag_purge_on_any_instance_keeps_a_new_instance_from_serving_the_stale_copy(
) -> TestResult {
    let Some(redis) = RedisServer::start("stale copy: purges") else {
        return Ok(());
    };
    let (origin, calls) = origin(|n, _request| async move {
        Ok(respond(
            200,
            format!("v{n}"),
            &[
                (
                    "cache-control",
                    "max-age=1, stale-while-revalidate=60, stale-if-error=600",
                ),
                ("surrogate-key", "shelf"),
            ],
        ))
    });
    let nodes = fleet(&redis, &origin, 4, SwrLayer::new);
    call(&nodes[0].0, get("/purged")).await?;
    call(&nodes[0].0, get("/tagged")).await?;
    until_written(&nodes[0].1, 2).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // A purge by an instance that never had the URL, and a tag purge by the one that loaded it.
    nodes[1].1.purge("/purged");
    assert_eq!(nodes[0].1.purge_tag(["shelf"]), 1);
    let (one, zero) = (nodes[1].1.clone(), nodes[0].1.clone());
    eventually("the purges were sent", move || {
        one.redis_stats().unwrap().bus_sent >= 1 && zero.redis_stats().unwrap().bus_sent >= 1
    })
    .await;
    for (node, path) in [(2, "/purged"), (3, "/tagged")] {
        let (status, body) = call(&nodes[node].0, get(path)).await?;
        assert_eq!(
            status,
            CacheStatus::Miss,
            "{path}: the purged copy is not served stale"
        );
        assert_ne!(&body[..], b"v1", "{path}");
        assert_ne!(&body[..], b"v2", "{path}");
    }
    assert_eq!(calls.get(), 4);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_answered_from_a_stale_redis_copy_is_as_from_a_stale_memory_copy() -> TestResult {
    let Some(redis) = RedisServer::start("stale copy: HEAD") else {
        return Ok(());
    };
    let (origin, _calls) = fast_then_slow(&[
        ("cache-control", "max-age=1, stale-while-revalidate=60"),
        ("etag", "\"e1\""),
        ("x-origin", "yes"),
    ]);
    let nodes = fleet(&redis, &origin, 2, SwrLayer::new);
    load_then_let_expire(&nodes, get("/head")).await?;
    let (from_redis, took) = timed(nodes[1].0.clone(), request(Method::HEAD, "/head")).await?;
    assert!(took < AT_ONCE, "at once ({took:?})");
    let (from_memory, _) = timed(nodes[0].0.clone(), request(Method::HEAD, "/head")).await?;
    for (what, response) in [("Redis", &from_redis), ("memory", &from_memory)] {
        assert_eq!(response.status(), StatusCode::OK, "{what}");
        assert_eq!(info(response).status, CacheStatus::Stale, "{what}");
        assert_eq!(
            header_of(response, "etag").as_deref(),
            Some("\"e1\""),
            "{what}"
        );
        assert_eq!(
            header_of(response, "x-origin").as_deref(),
            Some("yes"),
            "{what}"
        );
        assert!(age(response).is_some(), "{what}: an Age");
    }
    assert_eq!(
        header_of(&from_redis, "content-length"),
        header_of(&from_memory, "content-length")
    );
    assert!(
        common::body(from_redis).await?.is_empty(),
        "no body for HEAD"
    );
    assert!(common::body(from_memory).await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conditional_request_matching_a_stale_redis_copys_etag_is_answered_304_at_once(
) -> TestResult {
    let Some(redis) = RedisServer::start("stale copy: If-None-Match") else {
        return Ok(());
    };
    let (origin, _calls) = fast_then_slow(&[
        ("cache-control", "max-age=1, stale-while-revalidate=60"),
        ("etag", "\"e1\""),
    ]);
    let nodes = fleet(&redis, &origin, 3, SwrLayer::new);
    load_then_let_expire(&nodes, get("/cond")).await?;
    let matching = || get_headers("/cond", &[("if-none-match", "\"e1\"")]);
    let (from_redis, took) = timed(nodes[1].0.clone(), matching()).await?;
    assert!(took < AT_ONCE, "at once ({took:?})");
    let (from_memory, _) = timed(nodes[0].0.clone(), matching()).await?;
    for (what, response) in [("Redis", &from_redis), ("memory", &from_memory)] {
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED, "{what}");
        assert_eq!(info(response).status, CacheStatus::Stale, "{what}");
        assert_eq!(
            header_of(response, "etag").as_deref(),
            Some("\"e1\""),
            "{what}"
        );
    }
    assert!(common::body(from_redis).await?.is_empty());
    // Another ETag: the whole stale copy.
    let other = get_headers("/cond", &[("if-none-match", "\"other\"")]);
    let response = nodes[2].0.clone().oneshot(other).await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(info(&response).status, CacheStatus::Stale);
    assert_eq!(&common::body(response).await?[..], b"v1");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_kept_with_credentials_never_becomes_a_stale_copy_for_a_new_instance(
) -> TestResult {
    let Some(redis) = RedisServer::start("stale copy: credentials") else {
        return Ok(());
    };
    let (origin, calls) = origin(|n, _request| async move {
        Ok(reply_cc(
            format!("private v{n}"),
            "private, max-age=1, stale-while-revalidate=60",
        ))
    });
    let nodes = fleet(&redis, &origin, 2, || SwrLayer::new().allow_private(true));
    let authorized = || get_with("/me", header::AUTHORIZATION, "Bearer token-42");
    call(&nodes[0].0, authorized()).await?;
    let handle = nodes[0].1.clone();
    eventually("kept out of Redis", move || {
        handle.redis_stats().unwrap().unshared >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, body) = call(&nodes[1].0, authorized()).await?;
    assert_eq!(status, CacheStatus::Miss, "nothing in Redis to serve stale");
    assert_eq!(&body[..], b"private v2");
    assert_eq!(nodes[0].1.redis_stats().unwrap().writes, 0);
    assert_eq!(calls.get(), 2);
    Ok(())
}

// The engine without HTTP, on a shared tier in one process.

type Tier = MapTier<u64>;

/// A wall-clock lifetime, with each deadline given in seconds from now (negative: past).
fn lifetime(stored: i64, fresh: i64, stale: i64, error: i64) -> Lifetime {
    let at = |secs: i64| {
        let now = SystemTime::now();
        if secs >= 0 {
            now + Duration::from_secs(secs as u64)
        } else {
            now - Duration::from_secs(secs.unsigned_abs())
        }
    };
    Lifetime {
        stored_at: at(stored),
        initial_age: Duration::ZERO,
        fresh_until: at(fresh),
        stale_until: at(stale),
        error_until: at(error),
        retain_until: at(stale.max(error)),
        load_time: Duration::ZERO,
    }
}

/// A cache on a tier that holds `1` under `"k"` with `lifetime`.
fn cache_on(lifetime: Lifetime) -> (SwrCache<String, u64>, Arc<Tier>) {
    let tier = Arc::new(Tier {
        map: std::sync::Mutex::new(HashMap::from([("k".to_owned(), (1, lifetime))])),
        ..Tier::default()
    });
    let cache = SwrCache::builder().shared_tier(tier.clone()).build();
    (cache, tier)
}

/// What [`loader`] gives: a boxed load of `2` (or its failure).
type Load =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Loaded<u64>, String>> + Send>>;

/// A loader that counts its calls and, after `delay`, gives `2` for a minute or fails.
fn loader(
    loads: &Arc<AtomicUsize>,
    delay: Duration,
    ok: bool,
) -> impl FnOnce() -> Load + Send + 'static {
    let loads = Arc::clone(loads);
    move || {
        loads.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            if ok {
                Ok(Loaded::new(2, Freshness::new(Duration::from_secs(60))))
            } else {
                Err("loader down".to_owned())
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_a_stale_tier_copy_is_answered_stale_at_once_and_refreshed_once() -> TestResult {
    // Stored 10 s ago, stale for 5 s, inside its window for a minute more.
    let (cache, tier) = cache_on(lifetime(-10, -5, 60, 60));
    let loads = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let got = (cache
        .get_or_load("k".to_owned(), loader(&loads, SLOW, true))
        .await)
        .map_err(|e| e.to_string())?;
    assert!(
        started.elapsed() < AT_ONCE,
        "at once ({:?})",
        started.elapsed()
    );
    assert_eq!((got.status, got.value), (Status::Stale, 1));
    assert!(
        got.age >= Duration::from_secs(10),
        "its real age: {:?}",
        got.age
    );
    for _ in 0..10 {
        let got = (cache
            .get_or_load("k".to_owned(), loader(&loads, SLOW, true))
            .await)
            .map_err(|e| e.to_string())?;
        assert_eq!((got.status, got.value), (Status::Stale, 1));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = (cache
            .get_or_load("k".to_owned(), loader(&loads, SLOW, true))
            .await)
            .map_err(|e| e.to_string())?;
        if got.value == 2 {
            assert_eq!(got.status, Status::Fresh);
            break;
        }
        assert_eq!(got.status, Status::Stale);
        assert!(Instant::now() < deadline, "the refresh never landed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1, "one refresh");
    eventually("the refreshed value reaches the tier", || {
        tier.map
            .lock()
            .unwrap()
            .get("k")
            .is_some_and(|(v, _)| *v == 2)
    })
    .await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_a_tier_copy_past_its_window_stands_in_for_a_failing_loader() -> TestResult {
    // Past its stale-while-revalidate window, inside stale-if-error for a minute.
    let (cache, _tier) = cache_on(lifetime(-20, -10, -5, 60));
    let loads = Arc::new(AtomicUsize::new(0));
    let got = (cache
        .get_or_load("k".to_owned(), loader(&loads, Duration::ZERO, false))
        .await)
        .map_err(|e| e.to_string())?;
    assert_eq!((got.status, got.value), (Status::StaleIfError, 1));
    assert_eq!(
        loads.load(Ordering::SeqCst),
        1,
        "the loader was asked first"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_a_tier_copy_past_every_window_is_a_miss() -> TestResult {
    let (cache, _tier) = cache_on(lifetime(-30, -20, -10, -5));
    let loads = Arc::new(AtomicUsize::new(0));
    let failed = cache
        .get_or_load("k".to_owned(), loader(&loads, Duration::ZERO, false))
        .await;
    assert_eq!(
        failed
            .map(|got| (got.status, got.value))
            .map_err(|e| e.to_string()),
        Err("loader down".to_owned()),
        "the loader's error, not the expired copy"
    );
    let (cache, _tier) = cache_on(lifetime(-30, -20, -10, -5));
    let got = (cache
        .get_or_load("k".to_owned(), loader(&loads, Duration::ZERO, true))
        .await)
        .map_err(|e| e.to_string())?;
    assert_eq!((got.status, got.value), (Status::Miss, 2));
    assert_eq!(loads.load(Ordering::SeqCst), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_on_a_new_instance_refreshes_the_stale_copy_with_a_get() -> TestResult {
    let Some(redis) = RedisServer::start("stale copy: HEAD-started refresh") else {
        return Ok(());
    };
    // A HEAD gets no body from this origin, as from a real one.
    let (origin, calls) = origin(|n, request: http::Request<ReqBody>| async move {
        let body = if request.method() == Method::HEAD {
            String::new()
        } else {
            format!("v{n}")
        };
        Ok(respond(
            200,
            body,
            &[("cache-control", "max-age=1, stale-while-revalidate=60")],
        ))
    });
    let nodes = fleet(&redis, &origin, 2, SwrLayer::new);
    load_then_let_expire(&nodes, get("/h")).await?;
    let response = nodes[1]
        .0
        .clone()
        .oneshot(request(Method::HEAD, "/h"))
        .await?;
    assert_eq!(info(&response).status, CacheStatus::Stale);
    common::body(response).await?;
    let calls_now = calls.clone();
    eventually("the refresh ran", move || calls_now.get() == 2).await;
    let status = until_body(&nodes[1].0, "/h", "v2", &[CacheStatus::Stale]).await?;
    assert_eq!(
        status,
        CacheStatus::Fresh,
        "the refresh stored the GET's body"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_request_is_answered_206_from_a_stale_redis_copy() -> TestResult {
    let Some(redis) = RedisServer::start("stale copy: Range") else {
        return Ok(());
    };
    let (origin, _calls) =
        fast_then_slow(&[("cache-control", "max-age=1, stale-while-revalidate=60")]);
    let nodes = fleet(&redis, &origin, 2, SwrLayer::new);
    load_then_let_expire(&nodes, get("/r")).await?;
    let ranged = get_headers("/r", &[("range", "bytes=1-1")]);
    let (response, took) = timed(nodes[1].0.clone(), ranged).await?;
    assert!(took < AT_ONCE, "at once ({took:?})");
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(info(&response).status, CacheStatus::Stale);
    assert_eq!(&common::body(response).await?[..], b"1");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_if_error_answer_from_a_redis_copy_says_so_and_carries_its_age() -> TestResult {
    let Some(redis) = RedisServer::start("stale copy: stale-if-error headers") else {
        return Ok(());
    };
    let (origin, _calls) = origin(|n, _request| async move {
        Ok(if n == 1 {
            respond(
                200,
                "v1",
                &[
                    ("cache-control", "max-age=21, stale-if-error=600"),
                    ("age", "20"),
                ],
            )
        } else {
            respond(503, "down", &[])
        })
    });
    let layer = || SwrLayer::new().stale_while_revalidate(Duration::ZERO);
    let nodes = fleet(&redis, &origin, 2, layer);
    load_then_let_expire(&nodes, get("/sie-h")).await?;
    let response = nodes[1].0.clone().oneshot(get("/sie-h")).await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(info(&response).status, CacheStatus::StaleIfError);
    let line = cache_status(&response);
    assert!(
        line.contains("fwd=stale") && line.contains("fwd-status=503"),
        "as for a memory copy: {line}"
    );
    let age = age(&response).expect("an Age");
    assert!((21..30).contains(&age), "the copy's real age, got {age}");
    assert_eq!(&common::body(response).await?[..], b"v1");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_origin_past_the_origin_timeout_is_answered_with_the_redis_copy() -> TestResult {
    let Some(redis) = RedisServer::start("stale copy: origin timeout") else {
        return Ok(());
    };
    let (origin, _calls) = origin(|n, _request| async move {
        if n > 1 {
            std::future::pending::<()>().await;
        }
        Ok(reply_cc("v1", "max-age=1, stale-if-error=600"))
    });
    let layer = || {
        SwrLayer::new()
            .stale_while_revalidate(Duration::ZERO)
            .origin_timeout(Some(Duration::from_millis(300)))
    };
    let nodes = fleet(&redis, &origin, 2, layer);
    load_then_let_expire(&nodes, get("/hang")).await?;
    let answer = tokio::time::timeout(
        Duration::from_secs(3),
        nodes[1].0.clone().oneshot(get("/hang")),
    )
    .await
    .map_err(|_| "no answer within 3 s: the copy did not stand in after the origin timeout")??;
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(info(&answer).status, CacheStatus::StaleIfError);
    assert_eq!(&common::body(answer).await?[..], b"v1");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_copy_whose_response_forbids_default_stale_windows_is_not_served_stale(
) -> TestResult {
    let Some(redis) = RedisServer::start("stale copy: must-revalidate") else {
        return Ok(());
    };
    let (origin, calls) = origin(|n, request: http::Request<ReqBody>| async move {
        let cc = if request.uri().path() == "/mr" {
            "max-age=1, must-revalidate"
        } else {
            "s-maxage=1"
        };
        Ok(reply_cc(format!("v{n}"), cc))
    });
    let nodes = fleet(&redis, &origin, 2, SwrLayer::new);
    call(&nodes[0].0, get("/mr")).await?;
    call(&nodes[0].0, get("/sm")).await?;
    until_written(&nodes[0].1, 2).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for path in ["/mr", "/sm"] {
        let (status, body) = call(&nodes[1].0, get(path)).await?;
        assert_eq!(status, CacheStatus::Miss, "{path}: no default stale window");
        assert_ne!(&body[..], b"v1", "{path}");
        assert_ne!(&body[..], b"v2", "{path}");
    }
    assert_eq!(calls.get(), 4);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_concurrent_first_callers_all_get_the_stale_tier_copy_at_once() -> TestResult {
    let (cache, _tier) = cache_on(lifetime(-10, -5, 60, 60));
    let cache = Arc::new(cache);
    let loads = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut callers = Vec::new();
    for _ in 0..20 {
        let (cache, load) = (Arc::clone(&cache), loader(&loads, SLOW, true));
        callers.push(tokio::spawn(async move {
            let got = cache.get_or_load("k".to_owned(), load).await;
            got.map(|got| (got.status, got.value))
                .map_err(|e| e.to_string())
        }));
    }
    for caller in callers {
        assert_eq!(caller.await?, Ok((Status::Stale, 1)));
    }
    assert!(
        started.elapsed() < AT_ONCE,
        "nobody waited for the refresh ({:?})",
        started.elapsed()
    );
    // The refresh is detached (it asks the tier's lock first): it may reach its loader only
    // after every caller was answered.
    let deadline = Instant::now() + Duration::from_secs(10);
    while loads.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no refresh started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(loads.load(Ordering::SeqCst), 1, "one refresh");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_the_age_of_a_tier_copy_counts_its_initial_age() -> TestResult {
    let mut copy = lifetime(-10, -5, 60, 60);
    copy.initial_age = Duration::from_secs(30);
    let (cache, _tier) = cache_on(copy);
    let loads = Arc::new(AtomicUsize::new(0));
    let got = (cache
        .get_or_load("k".to_owned(), loader(&loads, SLOW, true))
        .await)
        .map_err(|e| e.to_string())?;
    assert_eq!(got.status, Status::Stale);
    assert!(
        got.age >= Duration::from_secs(40) && got.age < Duration::from_secs(45),
        "30 s old when stored 10 s ago: {:?}",
        got.age
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_a_failed_refresh_of_a_tier_copy_keeps_serving_it_stale_and_backs_off() -> TestResult
{
    let (cache, _tier) = cache_on(lifetime(-10, -5, 60, 60));
    let loads = Arc::new(AtomicUsize::new(0));
    let got = (cache
        .get_or_load("k".to_owned(), loader(&loads, Duration::ZERO, false))
        .await)
        .map_err(|e| e.to_string())?;
    assert_eq!((got.status, got.value), (Status::Stale, 1));
    let counted = Arc::clone(&loads);
    eventually("the refresh ran", move || {
        counted.load(Ordering::SeqCst) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..10 {
        let got = (cache
            .get_or_load("k".to_owned(), loader(&loads, Duration::ZERO, false))
            .await)
            .map_err(|e| e.to_string())?;
        assert_eq!(
            (got.status, got.value),
            (Status::Stale, 1),
            "kept after the failure"
        );
    }
    assert_eq!(
        loads.load(Ordering::SeqCst),
        1,
        "backing off (1 s) after the failed refresh"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_answer_from_a_redis_copy_is_counted_and_labelled_as_a_stale_hit() -> TestResult {
    let Some(redis) = RedisServer::start("stale copy: counters and labels") else {
        return Ok(());
    };
    let (origin, _calls) = fast_then_slow(&[
        ("cache-control", "max-age=1, stale-while-revalidate=60"),
        ("age", "5"),
    ]);
    let nodes = fleet(&redis, &origin, 2, || SwrLayer::new().x_cache_header(true));
    load_then_let_expire(&nodes, get("/count")).await?;
    let response = nodes[1].0.clone().oneshot(get("/count")).await?;
    let answer = info(&response);
    assert_eq!(answer.status, CacheStatus::Stale);
    assert_eq!(header_of(&response, "x-cache").as_deref(), Some("STALE"));
    let age = answer.age.expect("a cached answer has an age");
    assert!(
        age >= Duration::from_secs(6) && age < Duration::from_secs(10),
        "CacheInfo::age is the copy's real age: {age:?}"
    );
    common::body(response).await?;
    let stats = nodes[1].1.stats();
    assert_eq!(stats.stale_hits, 1, "{stats:?}");
    assert_eq!(requests(&stats), 1, "counted once: {stats:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_while_the_new_instance_refreshes_ends_its_stale_answers() -> TestResult {
    let Some(redis) = RedisServer::start("stale copy: purge during the refresh") else {
        return Ok(());
    };
    let (origin, _calls) =
        fast_then_slow(&[("cache-control", "max-age=1, stale-while-revalidate=60")]);
    let nodes = fleet(&redis, &origin, 2, SwrLayer::new);
    load_then_let_expire(&nodes, get("/during")).await?;
    let (status, body) = call(&nodes[1].0, get("/during")).await?;
    assert_eq!((status, &body[..]), (CacheStatus::Stale, &b"v1"[..]));
    // The refresh (2 s) runs on instance one; instance zero purges the URL.
    nodes[0].1.purge("/during");
    let handle = nodes[1].1.clone();
    eventually("the purge reached instance one", move || {
        handle.stats().entries == 0
    })
    .await;
    let (status, body) = call(&nodes[1].0, get("/during")).await?;
    assert_ne!(
        &body[..],
        b"v1",
        "the purged copy is not served again ({status:?})"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clear_a_prefix_purge_or_a_post_on_another_instance_keeps_the_stale_copy_from_a_new_one(
) -> TestResult {
    let Some(redis) = RedisServer::start("stale copy: clear, prefix, POST") else {
        return Ok(());
    };
    let (origin, calls) = origin(|n, _request| async move {
        Ok(reply_cc(
            format!("v{n}"),
            "max-age=1, stale-while-revalidate=60",
        ))
    });
    let nodes = fleet(&redis, &origin, 4, SwrLayer::new);
    for path in ["/cleared", "/pre/x", "/posted"] {
        call(&nodes[0].0, get(path)).await?;
    }
    until_written(&nodes[0].1, 3).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    nodes[0].1.purge_prefix("/pre/");
    let response = nodes[0]
        .0
        .clone()
        .oneshot(request(Method::POST, "/posted"))
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    let handle = nodes[0].1.clone();
    eventually("the prefix purge and the POST were sent", move || {
        handle.redis_stats().unwrap().bus_sent >= 2
    })
    .await;
    for (node, path) in [(1, "/pre/x"), (2, "/posted")] {
        let (status, body) = call(&nodes[node].0, get(path)).await?;
        assert_eq!(status, CacheStatus::Miss, "{path}: not served stale");
        assert_ne!(&body[..], b"v1", "{path}");
    }
    let before = calls.get();
    nodes[1].1.clear();
    let handle = nodes[1].1.clone();
    eventually("the clear was sent", move || {
        handle.redis_stats().unwrap().bus_sent >= 1
    })
    .await;
    let (status, _) = call(&nodes[3].0, get("/cleared")).await?;
    assert_eq!(
        status,
        CacheStatus::Miss,
        "/cleared: not served stale after a clear"
    );
    assert_eq!(calls.get(), before + 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_stale_window_a_copy_with_only_last_modified_is_revalidated_with_it() -> TestResult
{
    let Some(redis) = RedisServer::start("stale copy: If-Modified-Since") else {
        return Ok(());
    };
    let (_, last_modified) = date_ago(3600);
    let seen = Seen::default();
    let (origin, calls) = origin({
        let (seen, last_modified) = (seen.clone(), last_modified.clone());
        move |n, request: http::Request<ReqBody>| {
            seen.record(&request);
            let last_modified = last_modified.clone();
            async move {
                let headers = [
                    ("cache-control", "max-age=1, stale-if-error=600"),
                    ("last-modified", last_modified.as_str()),
                ];
                Ok(if n == 1 {
                    respond(200, "v1", &headers)
                } else if request.headers().contains_key(header::IF_MODIFIED_SINCE) {
                    respond(304, "", &headers)
                } else {
                    respond(200, "unconditional", &headers)
                })
            }
        }
    });
    let layer = || SwrLayer::new().stale_while_revalidate(Duration::ZERO);
    let nodes = fleet(&redis, &origin, 2, layer);
    load_then_let_expire(&nodes, get("/lm")).await?;
    let (_, body) = call(&nodes[1].0, get("/lm")).await?;
    assert_eq!(&body[..], b"v1", "the copy, renewed by the 304");
    assert_eq!(calls.get(), 2);
    assert_eq!(
        header_text(&seen.headers(2), "if-modified-since"),
        Some(last_modified),
        "revalidated with the copy's Last-Modified"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_past_the_stale_window_gets_the_redis_copys_head_when_the_origin_fails() -> TestResult
{
    let Some(redis) = RedisServer::start("stale copy: HEAD and stale-if-error") else {
        return Ok(());
    };
    let (origin, _calls) = origin(|n, _request| async move {
        Ok(if n == 1 {
            respond(
                200,
                "v1",
                &[
                    ("cache-control", "max-age=1, stale-if-error=600"),
                    ("x-origin", "yes"),
                ],
            )
        } else {
            respond(500, "down", &[])
        })
    });
    let layer = || SwrLayer::new().stale_while_revalidate(Duration::ZERO);
    let nodes = fleet(&redis, &origin, 2, layer);
    load_then_let_expire(&nodes, get("/hsie")).await?;
    let response = nodes[1]
        .0
        .clone()
        .oneshot(request(Method::HEAD, "/hsie"))
        .await?;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the copy's head, never the 500"
    );
    assert_eq!(info(&response).status, CacheStatus::StaleIfError);
    assert_eq!(header_of(&response, "x-origin").as_deref(), Some("yes"));
    assert!(common::body(response).await?.is_empty());
    Ok(())
}

/// Call 1 answers `v1` for a second with `stale-if-error=600`; later calls fail with a 500
/// after 300 ms.
fn then_slow_500() -> (impl OriginService, Calls) {
    origin(|n, _request| async move {
        if n == 1 {
            return Ok(reply_cc("v1", "max-age=1, stale-if-error=600"));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(respond(500, "down", &[]))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_past_the_window_on_new_instances_all_get_the_copy_when_the_origin_fails(
) -> TestResult {
    let Some(redis) = RedisServer::start("stale copy: stale-if-error for waiters") else {
        return Ok(());
    };
    let (origin, _calls) = then_slow_500();
    let layer = || SwrLayer::new().stale_while_revalidate(Duration::ZERO);
    let nodes = Arc::new(fleet(&redis, &origin, 3, layer));
    load_then_let_expire(&nodes, get("/many")).await?;
    let mut requests = Vec::new();
    for i in 0..20 {
        let nodes = Arc::clone(&nodes);
        // Instances 1 and 2 have nothing in memory.
        requests.push(tokio::spawn(async move {
            let response = nodes[1 + i % 2].0.clone().oneshot(get("/many")).await?;
            let (code, status) = (response.status(), info(&response).status);
            Ok::<_, BoxError>((code, status, common::body(response).await?))
        }));
    }
    for request in requests {
        let (code, status, body) = request.await??;
        assert_eq!(
            (code, &body[..]),
            (StatusCode::OK, &b"v1"[..]),
            "every request gets the copy, never the 500 ({status:?})"
        );
        assert_eq!(status, CacheStatus::StaleIfError);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_standing_in_for_a_failed_origin_the_copy_keeps_standing_in_on_the_new_instance(
) -> TestResult {
    let Some(redis) = RedisServer::start("stale copy: stale-if-error again") else {
        return Ok(());
    };
    let (origin, _calls) = then_slow_500();
    let layer = || SwrLayer::new().stale_while_revalidate(Duration::ZERO);
    let nodes = fleet(&redis, &origin, 2, layer);
    load_then_let_expire(&nodes, get("/again")).await?;
    for attempt in 0..3 {
        let response = nodes[1].0.clone().oneshot(get("/again")).await?;
        let (code, status) = (response.status(), info(&response).status);
        let body = common::body(response).await?;
        assert_eq!(
            (code, status, &body[..]),
            (StatusCode::OK, CacheStatus::StaleIfError, &b"v1"[..]),
            "attempt {attempt}: the copy, not the remembered failure"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_a_stale_tier_copy_is_answered_while_the_tier_lock_is_still_being_asked(
) -> TestResult {
    let (cache, tier) = cache_on(lifetime(-10, -5, 60, 60));
    let gate = Arc::new(tokio::sync::Notify::new());
    *tier.claim_gate.lock().unwrap() = Some(Arc::clone(&gate));
    let loads = Arc::new(AtomicUsize::new(0));
    let got = tokio::time::timeout(
        AT_ONCE,
        cache.get_or_load("k".to_owned(), loader(&loads, Duration::ZERO, true)),
    )
    .await
    .map_err(|_| "the stale answer waited for the tier's lock")?
    .map_err(|e| e.to_string())?;
    assert_eq!((got.status, got.value), (Status::Stale, 1));
    gate.notify_one();
    let counted = Arc::clone(&loads);
    eventually("the refresh runs once the lock answers", move || {
        counted.load(Ordering::SeqCst) == 1
    })
    .await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_concurrent_callers_past_the_window_all_get_the_tier_copy_when_the_loader_fails(
) -> TestResult {
    let (cache, _tier) = cache_on(lifetime(-20, -10, -5, 60));
    let cache = Arc::new(cache);
    let loads = Arc::new(AtomicUsize::new(0));
    let mut callers = Vec::new();
    for _ in 0..10 {
        let (cache, load) = (
            Arc::clone(&cache),
            loader(&loads, Duration::from_millis(300), false),
        );
        callers.push(tokio::spawn(async move {
            let got = cache.get_or_load("k".to_owned(), load).await;
            got.map(|got| (got.status, got.value))
                .map_err(|e| e.to_string())
        }));
    }
    for caller in callers {
        let (status, value) = caller.await?.map_err(|e| format!("a caller got {e}"))?;
        assert_eq!(value, 1);
        assert!(
            matches!(status, Status::StaleIfError),
            "the copy stands in ({status:?})"
        );
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1, "one load for the callers");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_a_stale_tier_copy_is_reported_with_its_stored_time_refresh_and_counters(
) -> TestResult {
    let (cache, _tier) = cache_on(lifetime(-10, -5, 60, 60));
    let loads = Arc::new(AtomicUsize::new(0));
    let got = (cache
        .get_or_load("k".to_owned(), loader(&loads, SLOW, true))
        .await)
        .map_err(|e| e.to_string())?;
    assert_eq!(got.status, Status::Stale);
    assert!(
        got.stored_at.elapsed() >= Duration::from_secs(10),
        "stored 10 s ago, by another cache: {:?}",
        got.stored_at.elapsed()
    );
    assert!(got.refreshing, "its refresh runs");
    assert!(cache.is_refreshing("k"));
    let stats = cache.stats();
    assert_eq!(
        (stats.stale_hits, stats.shared_tier_hits, stats.misses),
        (1, 0, 0),
        "a stale hit: {stats:?}"
    );
    Ok(())
}

/// Instance 0 loads `/one` (fresh for a second, `stale-if-error=600`, `ETag: "e1"`); once it
/// is past its freshness, ten concurrent requests reach instance 1, which has nothing in
/// memory. Later origin calls take 300 ms and answer what `later` gives for a request.
/// Returns each answer's status code, cache status and body, and the origin's calls.
async fn ten_at_once_on_a_new_instance(
    test: &str,
    later: fn(&http::Request<ReqBody>) -> Result<Reply, BoxError>,
) -> Result<Option<(Vec<(StatusCode, CacheStatus, bytes::Bytes)>, usize)>, BoxError> {
    let Some(redis) = RedisServer::start(test) else {
        return Ok(None);
    };
    let (origin, calls) = origin(move |n, request: http::Request<ReqBody>| async move {
        if n == 1 {
            return Ok(respond(
                200,
                "v1",
                &[
                    ("cache-control", "max-age=1, stale-if-error=600"),
                    ("etag", "\"e1\""),
                ],
            ));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        later(&request)
    });
    let layer = || SwrLayer::new().stale_while_revalidate(Duration::ZERO);
    let nodes = Arc::new(fleet(&redis, &origin, 2, layer));
    load_then_let_expire(&nodes, get("/one")).await?;
    let mut requests = Vec::new();
    for _ in 0..10 {
        let nodes = Arc::clone(&nodes);
        requests.push(tokio::spawn(async move {
            let response = nodes[1].0.clone().oneshot(get("/one")).await?;
            let (code, status) = (response.status(), info(&response).status);
            Ok::<_, BoxError>((code, status, common::body(response).await?))
        }));
    }
    let mut answers = Vec::new();
    for request in requests {
        answers.push(request.await??);
    }
    Ok(Some((answers, calls.get())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_on_one_new_instance_all_get_the_redis_copy_when_the_origin_errors(
) -> TestResult {
    let Some((answers, _)) =
        ten_at_once_on_a_new_instance("stale copy: waiters, origin error", |_| {
            Err("origin error".into())
        })
        .await?
    else {
        return Ok(());
    };
    for (code, status, body) in answers {
        assert_eq!(
            (code, status, &body[..]),
            (StatusCode::OK, CacheStatus::StaleIfError, &b"v1"[..]),
            "every request, the waiters too, gets the copy (as with a memory copy)"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_on_one_new_instance_make_one_origin_call_when_the_origin_fails(
) -> TestResult {
    let Some((answers, calls)) =
        ten_at_once_on_a_new_instance("stale copy: waiters, origin 500", |_| {
            Ok(respond(500, "down", &[]))
        })
        .await?
    else {
        return Ok(());
    };
    for (code, status, body) in answers {
        assert_eq!(
            (code, status, &body[..]),
            (StatusCode::OK, CacheStatus::StaleIfError, &b"v1"[..])
        );
    }
    assert_eq!(
        calls, 2,
        "the ten requests are coalesced into one origin call (as with a memory copy)"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_on_one_new_instance_share_one_revalidation_of_the_redis_copy(
) -> TestResult {
    let Some((answers, calls)) =
        ten_at_once_on_a_new_instance("stale copy: waiters, 304", |request| {
            assert_eq!(
                header_text(request.headers(), "if-none-match").as_deref(),
                Some("\"e1\"")
            );
            Ok(respond(
                304,
                "",
                &[("cache-control", "max-age=600"), ("etag", "\"e1\"")],
            ))
        })
        .await?
    else {
        return Ok(());
    };
    for (code, _status, body) in answers {
        assert_eq!((code, &body[..]), (StatusCode::OK, &b"v1"[..]));
    }
    assert_eq!(calls, 2, "one revalidation for the ten requests");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_on_one_new_instance_get_the_redis_copy_once_a_hung_origin_times_out(
) -> TestResult {
    let Some(redis) = RedisServer::start("stale copy: waiters, hung origin") else {
        return Ok(());
    };
    let (origin, _calls) = origin(|n, _request| async move {
        if n > 1 {
            std::future::pending::<()>().await;
        }
        Ok(reply_cc("v1", "max-age=1, stale-if-error=600"))
    });
    let layer = || {
        SwrLayer::new()
            .stale_while_revalidate(Duration::ZERO)
            .origin_timeout(Some(Duration::from_millis(300)))
    };
    let nodes = Arc::new(fleet(&redis, &origin, 2, layer));
    load_then_let_expire(&nodes, get("/hung")).await?;
    let mut requests = Vec::new();
    for _ in 0..10 {
        let nodes = Arc::clone(&nodes);
        requests.push(tokio::spawn(async move {
            let response = nodes[1].0.clone().oneshot(get("/hung")).await?;
            let (code, status) = (response.status(), info(&response).status);
            Ok::<_, BoxError>((code, status, common::body(response).await?))
        }));
    }
    for request in requests {
        let answer = tokio::time::timeout(Duration::from_secs(3), request)
            .await
            .map_err(|_| "a request waited more than 3 s (origin timeout 300 ms)")???;
        assert_eq!(
            (answer.0, answer.1, &answer.2[..]),
            (StatusCode::OK, CacheStatus::StaleIfError, &b"v1"[..])
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_window_a_redis_copy_of_a_vary_variant_stands_in_for_a_failing_origin(
) -> TestResult {
    let Some(redis) = RedisServer::start("stale copy: Vary and stale-if-error") else {
        return Ok(());
    };
    let (origin, _calls) = origin(|n, request: http::Request<ReqBody>| async move {
        if n > 1 {
            return Ok(respond(500, "down", &[]));
        }
        let language = (request.headers().get(header::ACCEPT_LANGUAGE))
            .map(|v| v.to_str().unwrap_or("?").to_owned())
            .unwrap_or_default();
        Ok(respond(
            200,
            format!("{language} v1"),
            &[
                ("cache-control", "max-age=1, stale-if-error=600"),
                ("vary", "accept-language"),
            ],
        ))
    });
    let layer = || SwrLayer::new().stale_while_revalidate(Duration::ZERO);
    let nodes = fleet(&redis, &origin, 3, layer);
    let en = || get_headers("/v", &[("accept-language", "en")]);
    load_then_let_expire(&nodes, en()).await?;
    let response = nodes[1].0.clone().oneshot(en()).await?;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the variant's copy, not the 500"
    );
    assert_eq!(info(&response).status, CacheStatus::StaleIfError);
    assert_eq!(&common::body(response).await?[..], b"en v1");
    // Another variant has no copy to stand in: the origin's 500.
    let fr = get_headers("/v", &[("accept-language", "fr")]);
    let response = nodes[2].0.clone().oneshot(fr).await?;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_or_tag_purged_redis_copy_never_stands_in_for_a_failing_origin() -> TestResult {
    let Some(redis) = RedisServer::start("stale copy: purged, stale-if-error") else {
        return Ok(());
    };
    let (origin, _calls) = origin(|n, _request| async move {
        Ok(if n <= 2 {
            respond(
                200,
                format!("v{n}"),
                &[
                    ("cache-control", "max-age=1, stale-if-error=600"),
                    ("surrogate-key", "shelf"),
                ],
            )
        } else {
            respond(500, "down", &[])
        })
    });
    let layer = || SwrLayer::new().stale_while_revalidate(Duration::ZERO);
    let nodes = fleet(&redis, &origin, 4, layer);
    call(&nodes[0].0, get("/purged")).await?;
    call(&nodes[0].0, get("/tagged")).await?;
    until_written(&nodes[0].1, 2).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    nodes[1].1.purge("/purged");
    assert_eq!(nodes[0].1.purge_tag(["shelf"]), 1);
    let (one, zero) = (nodes[1].1.clone(), nodes[0].1.clone());
    eventually("the purges were sent", move || {
        one.redis_stats().unwrap().bus_sent >= 1 && zero.redis_stats().unwrap().bus_sent >= 1
    })
    .await;
    for (node, path) in [(2, "/purged"), (3, "/tagged")] {
        let response = nodes[node].0.clone().oneshot(get(path)).await?;
        let (code, status) = (response.status(), info(&response).status);
        let body = common::body(response).await?;
        assert_eq!(
            (code, &body[..]),
            (StatusCode::INTERNAL_SERVER_ERROR, &b"down"[..]),
            "{path}: the purged copy is not served, not even stale-if-error ({status:?})"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_window_a_redis_copy_of_a_vary_variant_is_revalidated_with_its_etag() -> TestResult
{
    let Some(redis) = RedisServer::start("stale copy: Vary and revalidation") else {
        return Ok(());
    };
    let seen = Seen::default();
    let (origin, calls) = origin({
        let seen = seen.clone();
        move |n, request: http::Request<ReqBody>| {
            seen.record(&request);
            async move {
                let headers = [
                    ("cache-control", "max-age=1, stale-if-error=600"),
                    ("vary", "accept-language"),
                    ("etag", "\"en1\""),
                ];
                let validated =
                    (request.headers().get(header::IF_NONE_MATCH)).is_some_and(|v| v == "\"en1\"");
                Ok(if n == 1 {
                    respond(200, "en v1", &headers)
                } else if validated {
                    respond(304, "", &headers)
                } else {
                    respond(200, format!("unconditional v{n}"), &headers)
                })
            }
        }
    });
    let layer = || SwrLayer::new().stale_while_revalidate(Duration::ZERO);
    let nodes = fleet(&redis, &origin, 2, layer);
    let en = || get_headers("/vr", &[("accept-language", "en")]);
    load_then_let_expire(&nodes, en()).await?;
    let (_, body) = call(&nodes[1].0, en()).await?;
    assert_eq!(calls.get(), 2);
    assert_eq!(
        header_text(&seen.headers(2), "if-none-match").as_deref(),
        Some("\"en1\""),
        "the variant's copy is revalidated with its ETag"
    );
    assert_eq!(&body[..], b"en v1", "and renewed by the 304");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refresh_of_a_redis_stale_copy_keeps_it_served_stale_on_the_new_instance(
) -> TestResult {
    let Some(redis) = RedisServer::start("stale copy: failed refresh") else {
        return Ok(());
    };
    let (origin, calls) = origin(|n, _request| async move {
        Ok(if n == 1 {
            reply_cc("v1", "max-age=1, stale-while-revalidate=60")
        } else {
            respond(500, "down", &[])
        })
    });
    let nodes = fleet(&redis, &origin, 2, SwrLayer::new);
    load_then_let_expire(&nodes, get("/fails")).await?;
    let (status, body) = call(&nodes[1].0, get("/fails")).await?;
    assert_eq!((status, &body[..]), (CacheStatus::Stale, &b"v1"[..]));
    let handle = nodes[1].1.clone();
    eventually("the refresh failed", move || {
        handle.stats().refreshes_failed >= 1
    })
    .await;
    for _ in 0..5 {
        let (status, body) = call(&nodes[1].0, get("/fails")).await?;
        assert_eq!(
            (status, &body[..]),
            (CacheStatus::Stale, &b"v1"[..]),
            "kept and served stale after its refresh failed"
        );
    }
    assert_eq!(calls.get(), 2, "backing off: no second refresh at once");
    Ok(())
}
