//! Targeted cache control (RFC 9213), `Age` parsing and keeping (RFC 9111 §5.1) and interim
//! (1xx) responses, black-box as a CDN or a client would see them. Written from the issue text
//! by a reviewer who had not read the code; four of them found bugs (fixed): a `private` or
//! `no-store` in the targeted field let a failure be shared and remembered, `private=x-user`
//! as a token was dropped, and the layer's default lifetimes reset an upstream `Age` to 0.

mod common;

use common::*;
use common::{body, settle, Gate};
use http::{header, Request, StatusCode};
use tokio::time::advance;
use tower::{Layer, ServiceExt};
use tower_swr::{CacheStatus, SwrLayer};

/// An origin answering `v{n}` with the same `lines` every call.
fn fixed(lines: Vec<(&'static str, &'static str)>) -> (impl OriginService, Calls) {
    origin(move |n, _| {
        let lines = lines.clone();
        async move { Ok(respond(200, format!("v{n}"), &lines)) }
    })
}

/// Status of a second request `after` the first (whose body is read).
async fn second_status<S>(
    service: &S,
    path: &str,
    after: std::time::Duration,
) -> Result<CacheStatus, BoxError>
where
    S: tower::Service<
            Request<ReqBody>,
            Response = http::Response<tower_swr::SwrBody<http_body_util::Full<bytes::Bytes>>>,
            Error = BoxError,
        > + Clone,
{
    body(service.clone().oneshot(get(path)).await?).await?;
    advance(after).await;
    status_of(service, get(path)).await
}

// ---------------------------------------------------------------------------------------------
// Item 1: Age (RFC 9111 §5.1, §4.2.3)
// ---------------------------------------------------------------------------------------------

/// §5.1 "a cache encountering a message with a list-based Age field value SHOULD use the first
/// member of the field value, discarding subsequent ones": `10, 20`, two lines `10` / `20` and
/// `, 10` (an empty list element is not a member) all give 10 s, so `max-age=15` leaves 5 s.
#[tokio::test(start_paused = true)]
async fn list_based_age_uses_its_first_member() -> TestResult {
    for lines in [
        vec![("age", "10, 20")],
        vec![("age", "10"), ("age", "20")],
        vec![("age", ", 10")],
        vec![("age", " 10 ")],
    ] {
        let mut all = vec![("cache-control", "max-age=15")];
        all.extend(lines.iter().cloned());
        let (o, calls) = fixed(all);
        let service = SwrLayer::shared_cache().layer(o);
        let miss = service.clone().oneshot(get("/a")).await?;
        assert_eq!(age(&miss), Some(10), "{lines:?}");
        body(miss).await?;
        advance(secs(4)).await;
        let hit = service.clone().oneshot(get("/a")).await?;
        assert_eq!(info(&hit).status, CacheStatus::Fresh, "{lines:?}");
        assert_eq!(age(&hit), Some(14), "{lines:?}");
        body(hit).await?;
        advance(secs(2)).await;
        assert_ne!(status_of(&service, get("/a")).await?, CacheStatus::Fresh);
        assert_eq!(calls.get(), 2, "{lines:?}");
    }
    Ok(())
}

/// §4.2: fresh while `freshness_lifetime > current_age`. `Age: 59` with `max-age=60`: fresh for
/// exactly one more second; `Age: 60`: stale on arrival (and, without validators or stale
/// windows in the shared preset, not stored at all).
#[tokio::test(start_paused = true)]
async fn age_makes_a_response_stale_exactly_at_its_lifetime() -> TestResult {
    let (o, calls) = fixed(vec![("cache-control", "max-age=60"), ("age", "59")]);
    let service = SwrLayer::shared_cache().layer(o);
    body(service.clone().oneshot(get("/b")).await?).await?;
    let hit = service.clone().oneshot(get("/b")).await?;
    assert_eq!(info(&hit).status, CacheStatus::Fresh);
    assert_eq!(ttl_param(&hit), 1);
    body(hit).await?;
    advance(std::time::Duration::from_millis(999)).await;
    assert_eq!(status_of(&service, get("/b")).await?, CacheStatus::Fresh);
    advance(std::time::Duration::from_millis(1)).await;
    assert_eq!(status_of(&service, get("/b")).await?, CacheStatus::Miss);
    assert_eq!(calls.get(), 2);

    let (o, calls) = fixed(vec![("cache-control", "max-age=60"), ("age", "60")]);
    let service = SwrLayer::shared_cache().layer(o);
    let first = service.clone().oneshot(get("/c")).await?;
    assert!(!info(&first).stored, "{}", cache_status(&first));
    body(first).await?;
    assert_eq!(status_of(&service, get("/c")).await?, CacheStatus::Miss);
    assert_eq!(calls.get(), 2);
    Ok(())
}

/// An `Age` past `u64` (and past 2^31) does not panic: it is 2^31 s (§1.2.2), so the response
/// is stale on arrival and past any use even with validators: not reported stored, and the next
/// request asks the origin again.
#[tokio::test(start_paused = true)]
async fn age_past_u64_with_validators_does_not_panic() -> TestResult {
    let (o, calls) = origin(|n, _| async move {
        Ok(respond(
            200,
            format!("v{n}"),
            &[
                ("cache-control", "max-age=60"),
                ("etag", ETAG),
                ("age", "99999999999999999999999999"),
            ],
        ))
    });
    let service = SwrLayer::shared_cache().layer(o);
    let first = service.clone().oneshot(get("/huge")).await?;
    assert_eq!(first.status(), StatusCode::OK);
    assert!(!info(&first).stored);
    body(first).await?;
    let again = service.clone().oneshot(get("/huge")).await?;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(body(again).await?, "v2");
    assert_eq!(calls.get(), 2);
    Ok(())
}

/// §5.1: "The Age header field conveys the sender's estimate of the time since the response
/// was generated or successfully validated at the origin server"; §4.2.3: current_age =
/// corrected_initial_age + resident_time. The application preset may count its default
/// lifetime from receipt, but the `Age` it sends on must not make an upstream-aged response
/// look younger than the upstream said (`Age: 50` upstream, `Age: 0` / `5` downstream).
#[tokio::test(start_paused = true)]
async fn upstream_age_is_not_lost_under_the_default_lifetime() -> TestResult {
    let mut wrong = Vec::new();
    let route =
        || SwrLayer::new().policy_fn(|_, _| Some(tower_swr::engine::Freshness::new(secs(60))));
    for (what, layer) in [
        ("SwrLayer::new(), no Cache-Control", SwrLayer::new()),
        (
            "SwrLayer::new().ignore_origin_freshness(true)",
            SwrLayer::new().ignore_origin_freshness(true),
        ),
        ("SwrLayer::new().policy_fn(60 s)", route()),
    ] {
        let (o, _) = fixed(vec![("age", "50")]);
        let service = layer.layer(o);
        let miss = service.clone().oneshot(get("/d")).await?;
        let miss_age = age(&miss);
        body(miss).await?;
        advance(secs(5)).await;
        let hit = service.clone().oneshot(get("/d")).await?;
        assert_eq!(info(&hit).status, CacheStatus::Fresh, "{what}");
        let hit_age = age(&hit);
        if !(miss_age >= Some(50) && hit_age >= Some(55)) {
            wrong.push(format!(
                "{what}: upstream Age: 50; downstream Age on the miss {miss_age:?}, on a hit 5 s \
                 later {hit_age:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Item 2: targeted cache control (RFC 9213, RFC 8941 dictionaries)
// ---------------------------------------------------------------------------------------------

/// RFC 9213 §2.2: the targeted field's `max-age=0` wins over `Cache-Control: max-age=60`
/// (stale at once: no reuse in the shared preset; none with targeting on in the app preset).
#[tokio::test(start_paused = true)]
async fn cdn_max_age_zero_beats_cache_control_max_age() -> TestResult {
    let lines = vec![
        ("cache-control", "max-age=60"),
        ("cdn-cache-control", "max-age=0"),
    ];
    let (o, calls) = fixed(lines.clone());
    let shared = SwrLayer::shared_cache().layer(o);
    assert_eq!(
        second_status(&shared, "/z", secs(1)).await?,
        CacheStatus::Miss
    );
    assert_eq!(calls.get(), 2);
    let (o, calls) = fixed(lines);
    let app = SwrLayer::new().targeted_cache_control(true).layer(o);
    let second = second_status(&app, "/z", secs(1)).await?;
    assert!(
        !matches!(second, CacheStatus::Fresh | CacheStatus::Stale),
        "{second:?}"
    );
    settle().await;
    assert_eq!(calls.get(), 2);
    Ok(())
}

/// RFC 9213 §2.1 "when it is a token, it will map to a Token": `private=x-user` is the token
/// form of `private="x-user"` (RFC 9111 §5.2: "recipients ought to accept both forms"), and
/// this cache honours it in `Cache-Control` (the field is stripped from what is shared). In
/// `CDN-Cache-Control` the same directive is silently dropped, so the user's `X-User` is stored
/// and served to everyone. RFC 9213 §2.2: caches that use a targeted field "MUST implement the
/// semantics of ... private" and "the semantics ... of cache directives in a targeted field are
/// the same as those in Cache-Control".
#[tokio::test(start_paused = true)]
async fn cdn_private_with_a_token_field_name_is_not_dropped() -> TestResult {
    let mut wrong = Vec::new();
    for (field, directive) in [
        ("cache-control", "max-age=60, private=x-user"),
        ("cdn-cache-control", "max-age=60, private=\"x-user\""),
        ("cdn-cache-control", "max-age=60, private=x-user"),
        ("cdn-cache-control", "max-age=60, no-cache=x-user"),
    ] {
        let (o, _) = fixed(vec![(field, directive), ("x-user", "alice")]);
        let service = SwrLayer::shared_cache().layer(o);
        body(service.clone().oneshot(get("/me")).await?).await?;
        let other = service.clone().oneshot(get("/me")).await?;
        let reused = info(&other).status == CacheStatus::Fresh;
        if reused && header_value(&other, "x-user").is_some() {
            wrong.push(format!(
                "{field}: {directive}: alice's X-User served from the cache to another request \
                 ({})",
                cache_status(&other)
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    Ok(())
}

/// RFC 9213 §2.2: under a valid targeted field, that field is this cache's `Cache-Control`
/// ("MUST implement the semantics of ... no-store ... private"). A 503 marked `private` (or
/// `no-store`) there must not be handed to the other requests that waited for the same origin
/// call, exactly as when `Cache-Control` says `private` (each asks the origin itself).
#[tokio::test(start_paused = true)]
async fn a_failure_private_in_the_targeted_field_is_not_shared_with_waiters() -> TestResult {
    let mut wrong = Vec::new();
    for (field, value) in [
        ("cache-control", "private"),
        ("cdn-cache-control", "private"),
        ("cdn-cache-control", "no-store"),
    ] {
        let gate = Gate::new();
        let g = gate.clone();
        let (o, calls) = origin(move |n, _| {
            let g = g.clone();
            async move {
                if n == 1 {
                    g.wait().await;
                    return Ok(respond(503, "alice's error page", &[(field, value)]));
                }
                Ok(reply_cc(format!("v{n}"), "max-age=60"))
            }
        });
        let service = SwrLayer::shared_cache().layer(o);
        let leader = tokio::spawn(service.clone().oneshot(get("/f")));
        settle().await;
        let waiter = tokio::spawn(service.clone().oneshot(get("/f")));
        settle().await;
        gate.open();
        let leader = leader.await??;
        assert_eq!(leader.status(), StatusCode::SERVICE_UNAVAILABLE);
        body(leader).await?;
        let waiter = waiter.await??;
        let status = waiter.status();
        let text = body(waiter).await?;
        if status != StatusCode::OK || text != "v2" || calls.get() != 2 {
            wrong.push(format!(
                "{field}: {value}: the waiter got {status} {text:?} ({} origin calls)",
                calls.get()
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    Ok(())
}

/// The same in the application preset with targeting on and `remember_failures`: a 503 that
/// `CDN-Cache-Control` marks `private` is remembered and answered to the next request (a
/// `FailureHit`), where `Cache-Control: private` is not.
#[tokio::test(start_paused = true)]
async fn a_failure_private_in_the_targeted_field_is_not_remembered() -> TestResult {
    let mut wrong = Vec::new();
    for (field, value) in [
        ("cache-control", "private"),
        ("cdn-cache-control", "private"),
    ] {
        let (o, calls) = origin(move |n, _| async move {
            Ok(if n == 1 {
                respond(503, "alice's error page", &[(field, value)])
            } else {
                reply_cc(format!("v{n}"), "max-age=60")
            })
        });
        let service = SwrLayer::new()
            .targeted_cache_control(true)
            .remember_failures(secs(10))
            .layer(o);
        body(service.clone().oneshot(get("/g")).await?).await?;
        advance(secs(1)).await;
        let next = service.clone().oneshot(get("/g")).await?;
        let (status, cache) = (info(&next).status, cache_status(&next));
        let text = body(next).await?;
        if text != "v2" || calls.get() != 2 {
            wrong.push(format!(
                "{field}: {value}: the next request got {status:?} {text:?} ({cache})"
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    Ok(())
}

/// A 1xx answering a `HEAD` is not stored either: the `GET` after it asks the origin.
#[tokio::test(start_paused = true)]
async fn a_1xx_answering_a_head_is_not_stored() -> TestResult {
    let (o, calls) = origin(|n, _| async move {
        Ok(if n == 1 {
            respond(103, "", &[("cache-control", "public, max-age=60")])
        } else {
            reply_cc(format!("v{n}"), "max-age=60")
        })
    });
    let service = SwrLayer::shared_cache().layer(o);
    let head = service
        .clone()
        .oneshot(request(http::Method::HEAD, "/hd"))
        .await?;
    assert_eq!(head.status().as_u16(), 103);
    body(head).await?;
    let get_after = service.clone().oneshot(get("/hd")).await?;
    assert_eq!(get_after.status(), StatusCode::OK);
    assert_eq!(body(get_after).await?, "v2");
    assert_eq!(calls.get(), 2);
    Ok(())
}

/// `s-maxage` in the targeted field wins over its `max-age` (RFC 9111 §5.2.2.10 semantics).
#[tokio::test(start_paused = true)]
async fn cdn_s_maxage_wins_over_its_max_age() -> TestResult {
    let lines = vec![
        ("cache-control", "max-age=600"),
        ("cdn-cache-control", "max-age=600, s-maxage=5"),
    ];
    let (o, _) = fixed(lines.clone());
    let service = SwrLayer::shared_cache().layer(o);
    assert_eq!(
        second_status(&service, "/s", secs(4)).await?,
        CacheStatus::Fresh
    );
    let (o, _) = fixed(lines);
    let service = SwrLayer::shared_cache().layer(o);
    assert_eq!(
        second_status(&service, "/s", secs(6)).await?,
        CacheStatus::Miss
    );
    Ok(())
}

/// `stale-if-error` in the targeted field is honoured though `Cache-Control` says
/// `must-revalidate` (which this cache then ignores, RFC 9213 §2.2).
#[tokio::test(start_paused = true)]
async fn cdn_stale_if_error_is_honoured() -> TestResult {
    let (o, _) = origin(|n, _| async move {
        Ok(if n == 1 {
            respond(
                200,
                "v1",
                &[
                    ("cache-control", "max-age=1, must-revalidate"),
                    ("cdn-cache-control", "max-age=1, stale-if-error=60"),
                ],
            )
        } else {
            respond(503, "down", &[])
        })
    });
    let service = SwrLayer::shared_cache().layer(o);
    body(service.clone().oneshot(get("/e")).await?).await?;
    advance(secs(5)).await;
    let answer = service.clone().oneshot(get("/e")).await?;
    assert_eq!(info(&answer).status, CacheStatus::StaleIfError);
    assert_eq!(body(answer).await?, "v1");
    Ok(())
}

/// RFC 9213 §2.1 / RFC 8941: a field that is not a valid dictionary (trailing or doubled comma,
/// an uppercase key, a dangling parameter, an integer of 16 digits, a space before `=`) "SHOULD
/// be ignored by the cache", as is an empty one: `Cache-Control: max-age=600` then applies.
#[tokio::test(start_paused = true)]
async fn invalid_or_empty_targeted_fields_fall_back_to_cache_control() -> TestResult {
    for bad in [
        "max-age=60,,",
        "max-age=60,",
        "Max-Age=5",
        "max-age=5;",
        "max-age=1234567890123456",
        "max-age =5",
        "max-age=5 no-store",
        "",
        "   ",
    ] {
        let (o, calls) = fixed(vec![
            ("cache-control", "max-age=600"),
            ("cdn-cache-control", bad),
        ]);
        let service = SwrLayer::shared_cache().layer(o);
        assert_eq!(
            second_status(&service, "/i", secs(30)).await?,
            CacheStatus::Fresh,
            "CDN-Cache-Control: {bad:?}"
        );
        assert_eq!(calls.get(), 1, "CDN-Cache-Control: {bad:?}");
    }
    Ok(())
}

/// Valid dictionaries: parameters ignored, unknown keys ignored, a repeated key keeps its last
/// value (RFC 8941 §4.2.2), several lines are one field.
#[tokio::test(start_paused = true)]
async fn valid_dictionary_forms_are_read_as_structured_fields() -> TestResult {
    for (lines, fresh_at_4, fresh_at_6) in [
        (
            vec![("cdn-cache-control", "max-age=5;foo=bar, x-ext=(a b)")],
            true,
            false,
        ),
        (
            vec![("cdn-cache-control", "max-age=600, max-age=5")],
            true,
            false,
        ),
        (
            vec![
                ("cdn-cache-control", "max-age=5"),
                ("cdn-cache-control", "no-store"),
            ],
            false,
            false,
        ),
        (
            vec![("cdn-cache-control", "no-store;x, max-age=600")],
            false,
            false,
        ),
    ] {
        for (after, want) in [(secs(4), fresh_at_4), (secs(6), fresh_at_6)] {
            let mut all = vec![("cache-control", "max-age=600")];
            all.extend(lines.iter().cloned());
            let (o, _) = fixed(all);
            let service = SwrLayer::shared_cache().layer(o);
            let fresh = second_status(&service, "/v", after).await? == CacheStatus::Fresh;
            assert_eq!(fresh, want, "{lines:?} after {after:?}");
        }
    }
    Ok(())
}

/// RFC 9213 §2.2 precedence is the configured list's order; a field not on the list "MUST NOT
/// change that cache's behavior and MUST be passed through"; list fields reach the client.
#[tokio::test(start_paused = true)]
async fn target_list_order_and_fields_not_on_the_list() -> TestResult {
    let lines = vec![
        ("cache-control", "max-age=600"),
        ("a-cache-control", "max-age=5"),
        ("b-cache-control", "max-age=20"),
        ("cdn-cache-control", "no-store"),
    ];
    let (o, _) = fixed(lines.clone());
    let b_first = SwrLayer::new()
        .targeted_cache_control_fields(["B-Cache-Control", "a-cache-control"])
        .layer(o);
    body(b_first.clone().oneshot(get("/o")).await?).await?;
    advance(secs(10)).await;
    let hit = b_first.clone().oneshot(get("/o")).await?;
    assert_eq!(
        info(&hit).status,
        CacheStatus::Fresh,
        "b-cache-control: 20 s"
    );
    for (name, value) in &lines {
        assert_eq!(header_value(&hit, *name).as_deref(), Some(*value), "{name}");
    }
    // Not on the list (targeting off): CDN-Cache-Control: no-store changes nothing.
    let (o, _) = fixed(lines.clone());
    let off = SwrLayer::new().layer(o);
    assert_eq!(
        second_status(&off, "/o", secs(100)).await?,
        CacheStatus::Fresh
    );
    // An uppercase cache name still names its own field (field names are case-insensitive).
    let (o, _) = fixed(vec![
        ("cache-control", "no-store"),
        ("edge-cache-control", "max-age=60"),
    ]);
    let edge = SwrLayer::shared_cache().cache_name("Edge").layer(o);
    assert_eq!(
        second_status(&edge, "/o", secs(30)).await?,
        CacheStatus::Fresh
    );
    Ok(())
}

/// A 304 that carries a new targeted field updates the stored one (RFC 9111 §3.2), and the
/// new lifetime applies.
#[tokio::test(start_paused = true)]
async fn a_304_updates_the_targeted_lifetime() -> TestResult {
    let (o, calls) = origin(|n, request: Request<ReqBody>| async move {
        Ok(if request.headers().contains_key(header::IF_NONE_MATCH) {
            respond(
                304,
                "",
                &[("etag", ETAG), ("cdn-cache-control", "max-age=100")],
            )
        } else {
            respond(
                200,
                format!("v{n}"),
                &[
                    ("cache-control", "no-store"),
                    ("cdn-cache-control", "max-age=2"),
                    ("etag", ETAG),
                ],
            )
        })
    });
    let service = SwrLayer::shared_cache().layer(o);
    body(service.clone().oneshot(get("/r")).await?).await?;
    advance(secs(3)).await;
    let revalidated = service.clone().oneshot(get("/r")).await?;
    assert_eq!(body(revalidated).await?, "v1");
    assert_eq!(calls.get(), 2);
    advance(secs(50)).await;
    let hit = service.clone().oneshot(get("/r")).await?;
    assert_eq!(info(&hit).status, CacheStatus::Fresh);
    assert_eq!(
        header_value(&hit, "cdn-cache-control").as_deref(),
        Some("max-age=100")
    );
    assert_eq!(calls.get(), 2);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Item 4: interim responses (RFC 9110 §15.2)
// ---------------------------------------------------------------------------------------------

/// A 101 to a request that asked for no upgrade is an interim answer like 100/103: not stored
/// (even with `public, max-age=60`), not given to the request that waited for that call.
#[tokio::test(start_paused = true)]
async fn a_101_outside_an_upgrade_is_neither_stored_nor_shared() -> TestResult {
    for layer in [SwrLayer::new(), SwrLayer::shared_cache()] {
        let gate = Gate::new();
        let g = gate.clone();
        let (o, calls) = origin(move |n, _| {
            let g = g.clone();
            async move {
                if n == 1 {
                    g.wait().await;
                    return Ok(respond(101, "", &[("cache-control", "public, max-age=60")]));
                }
                Ok(reply_cc(format!("v{n}"), "max-age=60"))
            }
        });
        let service = layer.layer(o);
        let leader = tokio::spawn(service.clone().oneshot(get("/u")));
        settle().await;
        let waiter = tokio::spawn(service.clone().oneshot(get("/u")));
        settle().await;
        gate.open();
        let leader = leader.await??;
        assert_eq!(leader.status().as_u16(), 101);
        let waiter = waiter.await??;
        assert_eq!(waiter.status(), StatusCode::OK);
        assert_eq!(body(waiter).await?, "v2");
        let hit = service.clone().oneshot(get("/u")).await?;
        assert_eq!(body(hit).await?, "v2");
        assert_eq!(calls.get(), 2);
    }
    Ok(())
}

/// A foreground revalidation answered with a 103 (shared preset, no stale window): the stored
/// response is not dropped nor replaced; the next revalidation's 304 still serves it.
#[tokio::test(start_paused = true)]
async fn a_103_to_a_revalidation_keeps_the_entry() -> TestResult {
    let (o, calls) = origin(|n, request: Request<ReqBody>| async move {
        let conditional = request.headers().contains_key(header::IF_NONE_MATCH);
        Ok(match (n, conditional) {
            (1, _) => respond(200, "v1", &[("cache-control", "max-age=1"), ("etag", ETAG)]),
            (2, _) => respond(103, "", &[("link", "</a.css>; rel=preload")]),
            (_, true) => respond(304, "", &[("etag", ETAG), ("cache-control", "max-age=1")]),
            (_, false) => respond(200, format!("v{n}"), &[("cache-control", "max-age=1")]),
        })
    });
    let service = SwrLayer::shared_cache().layer(o);
    body(service.clone().oneshot(get("/h")).await?).await?;
    advance(secs(2)).await;
    let interim = service.clone().oneshot(get("/h")).await?;
    assert!(
        !cache_status(&interim).contains("stored"),
        "{}",
        cache_status(&interim)
    );
    body(interim).await?;
    let third = service.clone().oneshot(get("/h")).await?;
    assert_eq!(third.status(), StatusCode::OK);
    assert_eq!(
        body(third).await?,
        "v1",
        "revalidated by a 304, the entry kept"
    );
    assert_eq!(calls.get(), 3);
    Ok(())
}

/// A remembered failure (`remember_failures`) is never a 1xx: a later request asks the origin.
#[tokio::test(start_paused = true)]
async fn a_1xx_is_not_remembered_as_a_failure() -> TestResult {
    for status in [100, 103] {
        let (o, calls) = origin(move |n, _| async move {
            Ok(if n == 1 {
                respond(status, "", &[])
            } else {
                reply_cc(format!("v{n}"), "max-age=60")
            })
        });
        let service = SwrLayer::new().remember_failures(secs(10)).layer(o);
        let first = service.clone().oneshot(get("/m")).await?;
        assert_eq!(first.status().as_u16(), status);
        body(first).await?;
        advance(secs(1)).await;
        let second = service.clone().oneshot(get("/m")).await?;
        assert_eq!(second.status(), StatusCode::OK, "{status}");
        assert_ne!(info(&second).status, CacheStatus::FailureHit);
        assert_eq!(body(second).await?, "v2");
        assert_eq!(calls.get(), 2);
    }
    Ok(())
}
