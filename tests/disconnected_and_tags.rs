//! Issue 16 items 3 and 5: a stale response when the origin cannot be reached (RFC 9111
//! §4.2.4, `max_stale_when_disconnected`), and cache tags (`Surrogate-Key`, `Cache-Tag`,
//! `xkey`; `SwrHandle::purge_tag` / `soft_purge_tag`).

mod common;

use common::*;
use http::{HeaderName, Request, StatusCode};
use tokio::time::advance;
use tower::{Layer, ServiceExt};
use tower_swr::{CacheStatus, SwrLayer};

/// An origin that answers `v{n}` with `headers` while `mode` is OK, and 503 / an error / never
/// otherwise (see [`Mode`]).
fn switchable(
    headers: &'static [(&'static str, &'static str)],
    mode: Mode,
) -> (impl OriginService, Calls) {
    origin(move |n, _request: Request<ReqBody>| {
        let mode = mode.clone();
        async move {
            match mode.get() {
                OK => {
                    let mut response = reply(format!("v{n}"));
                    for (name, value) in headers {
                        response = with_header(response, HeaderName::from_static(name), value);
                    }
                    Ok(response)
                }
                UNAVAILABLE => Ok(reply_status(StatusCode::SERVICE_UNAVAILABLE, "down")),
                ERROR => Err::<Reply, BoxError>("connection refused".into()),
                _ => {
                    std::future::pending::<()>().await;
                    unreachable!()
                }
            }
        }
    })
}

async fn text(response: http::Response<tower_swr::SwrBody<ReqBody>>) -> String {
    String::from_utf8(body(response).await.expect("a body").to_vec()).expect("utf-8")
}

// --- Item 3: a stale response when disconnected -----------------------------------------------

#[tokio::test(start_paused = true)]
async fn shared_cache_serves_stale_past_its_windows_when_the_origin_cannot_be_reached() -> TestResult
{
    let mode = Mode::default();
    let (origin, calls) = switchable(&[("cache-control", "max-age=10")], mode.clone());
    let service = SwrLayer::shared_cache().layer(origin);
    assert_eq!(text(service.clone().oneshot(get("/p")).await?).await, "v1");

    advance(secs(3600)).await; // no stale-if-error window at all, an hour stale
    mode.set(ERROR);
    let answer = service.clone().oneshot(get("/p")).await?;
    assert_eq!(calls.get(), 2, "the origin was tried first");
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(info(&answer).status, CacheStatus::StaleIfError);
    assert_eq!(cache_status(&answer), "tower-swr; fwd=stale");
    assert!(age(&answer).unwrap_or(0) >= 3600);
    assert_eq!(text(answer).await, "v1");

    // Once the origin is back, its answer replaces the stale one.
    mode.set(OK);
    let answer = service.clone().oneshot(get("/p")).await?;
    assert_eq!(text(answer).await, "v3");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn an_origin_timeout_counts_as_disconnected() -> TestResult {
    let mode = Mode::default();
    let (origin, _calls) = switchable(&[("cache-control", "max-age=10")], mode.clone());
    let service = SwrLayer::shared_cache()
        .origin_timeout(secs(5))
        .layer(origin);
    assert_eq!(text(service.clone().oneshot(get("/p")).await?).await, "v1");
    advance(secs(600)).await;
    mode.set(HANG);
    let started = tokio::time::Instant::now();
    let answer = service.clone().oneshot(get("/p")).await?;
    assert_eq!(
        started.elapsed(),
        secs(5),
        "answered when the origin timeout ran out"
    );
    assert_eq!(info(&answer).status, CacheStatus::StaleIfError);
    assert_eq!(text(answer).await, "v1");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn an_origin_5xx_is_an_answer_not_a_disconnection() -> TestResult {
    let mode = Mode::default();
    let (origin, _calls) = switchable(&[("cache-control", "max-age=10")], mode.clone());
    let service = SwrLayer::shared_cache().layer(origin);
    assert_eq!(text(service.clone().oneshot(get("/p")).await?).await, "v1");
    advance(secs(60)).await;
    mode.set(UNAVAILABLE);
    let answer = service.clone().oneshot(get("/p")).await?;
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(text(answer).await, "down");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn must_revalidate_proxy_revalidate_no_cache_and_s_maxage_forbid_stale_when_disconnected(
) -> TestResult {
    let cases: [&'static [(&'static str, &'static str)]; 5] = [
        &[("cache-control", "max-age=10, must-revalidate")],
        &[("cache-control", "max-age=10, proxy-revalidate")],
        &[("cache-control", "no-cache"), ("etag", "\"e\"")],
        &[("cache-control", "s-maxage=10")],
        // The targeted field is this cache's Cache-Control (RFC 9213).
        &[
            ("cache-control", "max-age=10"),
            ("cdn-cache-control", "max-age=10, must-revalidate"),
        ],
    ];
    for headers in cases {
        let mode = Mode::default();
        let (origin, calls) = switchable(headers, mode.clone());
        let service = SwrLayer::shared_cache().layer(origin);
        assert_eq!(text(service.clone().oneshot(get("/p")).await?).await, "v1");
        advance(secs(60)).await;
        mode.set(ERROR);
        let answer = service.clone().oneshot(get("/p")).await;
        assert!(
            answer.is_err(),
            "{headers:?}: served stale though forbidden"
        );
        assert_eq!(calls.get(), 2, "{headers:?}");
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn max_stale_when_disconnected_bounds_the_staleness() -> TestResult {
    let mode = Mode::default();
    let (origin, _calls) = switchable(&[("cache-control", "max-age=10")], mode.clone());
    let service = SwrLayer::shared_cache()
        .max_stale_when_disconnected(secs(60))
        .layer(origin);
    assert_eq!(text(service.clone().oneshot(get("/p")).await?).await, "v1");
    mode.set(ERROR);
    advance(secs(10 + 59)).await; // 59 s stale
    let answer = service.clone().oneshot(get("/p")).await?;
    assert_eq!(info(&answer).status, CacheStatus::StaleIfError);
    advance(secs(2)).await; // 61 s stale
    assert!(service.clone().oneshot(get("/p")).await.is_err());
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn the_default_bound_is_a_day_and_none_turns_it_off() -> TestResult {
    let mode = Mode::default();
    let (origin, _calls) = switchable(&[("cache-control", "max-age=10")], mode.clone());
    let service = SwrLayer::shared_cache().layer(origin);
    assert_eq!(text(service.clone().oneshot(get("/p")).await?).await, "v1");
    mode.set(ERROR);
    advance(secs(23 * 3600)).await;
    let answer = service.clone().oneshot(get("/p")).await?;
    assert_eq!(info(&answer).status, CacheStatus::StaleIfError);
    advance(secs(3600 + 11)).await; // a day and a second stale
    assert!(service.clone().oneshot(get("/p")).await.is_err());

    let mode = Mode::default();
    let (origin, _calls) = switchable(&[("cache-control", "max-age=10")], mode.clone());
    let service = SwrLayer::shared_cache()
        .max_stale_when_disconnected(None)
        .layer(origin);
    assert_eq!(text(service.clone().oneshot(get("/p")).await?).await, "v1");
    mode.set(ERROR);
    advance(secs(60)).await;
    assert!(service.clone().oneshot(get("/p")).await.is_err());
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn the_application_preset_serves_stale_when_disconnected_only_when_asked() -> TestResult {
    for (most, serves) in [(None, false), (Some(secs(3600)), true)] {
        let mode = Mode::default();
        let (origin, _calls) = switchable(&[("cache-control", "max-age=10")], mode.clone());
        let mut layer = SwrLayer::new();
        if let Some(most) = most {
            layer = layer.max_stale_when_disconnected(most);
        }
        let service = layer.layer(origin);
        assert_eq!(text(service.clone().oneshot(get("/p")).await?).await, "v1");
        mode.set(ERROR);
        advance(secs(10 + 300 + 60)).await; // past the default stale-if-error window
        let answer = service.clone().oneshot(get("/p")).await;
        assert_eq!(
            answer.is_ok(),
            serves,
            "max_stale_when_disconnected({most:?})"
        );
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn waiters_of_an_unreachable_origin_get_the_stale_response_too() -> TestResult {
    let mode = Mode::default();
    let gate = Gate::new();
    let (origin, calls) = {
        let (mode, gate) = (mode.clone(), gate.clone());
        origin(move |n, _request: Request<ReqBody>| {
            let (mode, gate) = (mode.clone(), gate.clone());
            async move {
                if mode.get() == ERROR {
                    gate.wait().await;
                    return Err::<Reply, BoxError>("connection reset".into());
                }
                Ok(reply_cc(format!("v{n}"), "max-age=10"))
            }
        })
    };
    let service = SwrLayer::shared_cache().layer(origin);
    assert_eq!(text(service.clone().oneshot(get("/p")).await?).await, "v1");
    advance(secs(120)).await;
    mode.set(ERROR);
    let first = tokio::spawn(service.clone().oneshot(get("/p")));
    settle().await;
    let second = tokio::spawn(service.clone().oneshot(get("/p")));
    settle().await;
    gate.open();
    for answer in [first.await??, second.await??] {
        assert_eq!(info(&answer).status, CacheStatus::StaleIfError);
        assert_eq!(text(answer).await, "v1");
    }
    assert_eq!(calls.get(), 2, "one origin call for both");
    Ok(())
}
