//! Client conditionals (`If-None-Match`, `If-Modified-Since`, `If-Range`) and `Range` requests
//! answered from stored responses, and passed to the origin when the answer cannot be stored.

mod common;

use axum::body::Body;
use axum::{routing, Router};
use common::*;
use common::{body, Calls};
use http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use tower::{Layer, ServiceExt};
use tower_swr::{CacheStatus, SwrLayer};

/// The one `bytes=first-last` range of a request, clamped to `len` (enough for origins that
/// honour `Range` themselves in these tests).
fn requested_range(headers: &HeaderMap, len: usize) -> Option<(usize, usize)> {
    let spec = headers.get(header::RANGE)?.to_str().ok()?;
    let (first, last) = spec.strip_prefix("bytes=")?.split_once('-')?;
    let first: usize = first.trim().parse().ok()?;
    let last: usize = last.trim().parse().ok()?;
    (first <= last && first < len).then(|| (first, last.min(len - 1)))
}

/// `/f`: `len` bytes with `cache_control` (if any) and an `ETag`; honours a single `Range`
/// (206) and a matching `If-None-Match` (304), like a file server.
fn file_server_app(calls: &Calls, len: usize, cache_control: Option<&'static str>) -> Router {
    let calls = calls.clone();
    Router::new().route(
        "/f",
        routing::get(move |headers: HeaderMap| {
            calls.record();
            async move {
                let mut common = vec![("etag", ETAG), ("accept-ranges", "bytes")];
                if let Some(cc) = cache_control {
                    common.push(("cache-control", cc));
                }
                if headers
                    .get(header::IF_NONE_MATCH)
                    .is_some_and(|v| v.as_bytes() == ETAG.as_bytes())
                {
                    return app_respond(StatusCode::NOT_MODIFIED, &common, Body::empty());
                }
                let bytes = patterned_vec(len);
                if let Some((first, last)) = requested_range(&headers, len) {
                    let content_range = format!("bytes {first}-{last}/{len}");
                    let mut with_range = common.clone();
                    with_range.push(("content-range", content_range.as_str()));
                    return app_respond(
                        StatusCode::PARTIAL_CONTENT,
                        &with_range,
                        bytes[first..=last].to_vec(),
                    );
                }
                app_respond(StatusCode::OK, &common, bytes)
            }
        }),
    )
}

async fn assert_gets_the_range(app: &Router, headers: &[(&str, &str)], len: usize, what: &str) {
    for round in 0..2 {
        let mut all = vec![("range", "bytes=0-99")];
        all.extend_from_slice(headers);
        let response = app_send(app, app_req(Method::GET, "/f", &all)).await;
        let cache_status = statuses(&response);
        assert_eq!(
            response.status(),
            StatusCode::PARTIAL_CONTENT,
            "{what}, request {round}: the client asked for 100 bytes ({cache_status})"
        );
        assert_eq!(
            header_of(&response, "content-range").as_deref(),
            Some(format!("bytes 0-99/{len}").as_str()),
            "{what}"
        );
        let bytes = body(response).await.expect("body");
        assert_eq!(bytes.len(), 100, "{what}: 100 bytes");
        assert_eq!(bytes.to_vec(), patterned_vec(100), "{what}");
    }
}

async fn assert_gets_304(app: &Router, headers: &[(&str, &str)], what: &str) {
    for round in 0..2 {
        let mut all = vec![("if-none-match", ETAG)];
        all.extend_from_slice(headers);
        let response = app_send(app, app_req(Method::GET, "/f", &all)).await;
        let cache_status = statuses(&response);
        assert_eq!(
            response.status(),
            StatusCode::NOT_MODIFIED,
            "{what}, request {round}: the client's If-None-Match matches ({cache_status})"
        );
        assert!(
            app_text(response).await.is_empty(),
            "{what}: a 304 has no body"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn partial_and_not_modified_responses_are_not_stored() -> TestResult {
    let (o, calls) = origin(|_, request: Request<ReqBody>| async move {
        Ok(match request.uri().path() {
            "/partial" => respond(
                206,
                "01",
                &[
                    ("cache-control", "max-age=60"),
                    ("content-range", "bytes 0-1/10"),
                ],
            ),
            _ => respond(
                304,
                "",
                &[("cache-control", "max-age=60"), ("etag", "\"n\"")],
            ),
        })
    });
    let service = SwrLayer::new().layer(o);
    for path in ["/partial", "/not-modified"] {
        let before = calls.get();
        let first = service.clone().oneshot(get(path)).await?;
        assert!(!info(&first).stored, "{path}");
        body(service.clone().oneshot(get(path)).await?).await?;
        assert_eq!(calls.get(), before + 2, "{path} must not be reused");
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn client_conditionals_are_answered_from_a_fresh_entry() -> TestResult {
    const LM: &str = "Mon, 01 Jan 2024 00:00:00 GMT";
    const LATER: &str = "Tue, 02 Jan 2024 00:00:00 GMT";
    const EARLIER: &str = "Sun, 31 Dec 2023 00:00:00 GMT";
    let (o, calls) = origin(|_, _| async move {
        Ok(respond(
            200,
            "content",
            &[
                ("cache-control", "max-age=60"),
                ("etag", "\"abc\""),
                ("last-modified", LM),
            ],
        ))
    });
    let service = SwrLayer::new().layer(o);
    body(service.clone().oneshot(get("/cond")).await?).await?;

    let cases: [(&[(&str, &str)], StatusCode); 7] = [
        (&[("if-none-match", "\"abc\"")], StatusCode::NOT_MODIFIED),
        (&[("if-none-match", "W/\"abc\"")], StatusCode::NOT_MODIFIED),
        (
            &[("if-none-match", "\"x\", \"abc\"")],
            StatusCode::NOT_MODIFIED,
        ),
        (&[("if-none-match", "\"xyz\"")], StatusCode::OK),
        (&[("if-modified-since", LATER)], StatusCode::NOT_MODIFIED),
        (&[("if-modified-since", EARLIER)], StatusCode::OK),
        // If-None-Match takes precedence over a matching If-Modified-Since.
        (
            &[("if-none-match", "\"xyz\""), ("if-modified-since", LATER)],
            StatusCode::OK,
        ),
    ];
    for (headers, expected) in cases {
        let response = service
            .clone()
            .oneshot(get_headers("/cond", headers))
            .await?;
        assert_eq!(response.status(), expected, "{headers:?}");
        assert_eq!(info(&response).status, CacheStatus::Fresh);
        if expected == StatusCode::NOT_MODIFIED {
            assert_eq!(
                header_value(&response, header::ETAG).as_deref(),
                Some("\"abc\"")
            );
            assert!(body(response).await?.is_empty());
        } else {
            assert_eq!(body(response).await?, "content");
        }
    }
    assert_eq!(calls.get(), 1);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn ranges_are_served_from_a_stored_response() -> TestResult {
    let seen = Seen::default();
    let (o, calls) = origin({
        let seen = seen.clone();
        move |_, request: Request<ReqBody>| {
            seen.record(&request);
            async move { Ok(reply_cc("0123456789", "max-age=60")) }
        }
    });
    let service = SwrLayer::new().layer(o);

    // Even on a miss: the origin is asked for the whole response, the client gets its range.
    let first = service
        .clone()
        .oneshot(get_with("/r", header::RANGE, "bytes=0-1"))
        .await?;
    assert!(seen.headers(1).get(header::RANGE).is_none());
    assert_eq!(first.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(body(first).await?, "01");

    let partial = service
        .clone()
        .oneshot(get_with("/r", header::RANGE, "bytes=0-1"))
        .await?;
    assert_eq!(partial.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        header_value(&partial, header::CONTENT_RANGE).as_deref(),
        Some("bytes 0-1/10")
    );
    assert_eq!(
        header_value(&partial, header::CONTENT_LENGTH).as_deref(),
        Some("2")
    );
    assert_eq!(body(partial).await?, "01");

    let suffix = service
        .clone()
        .oneshot(get_with("/r", header::RANGE, "bytes=-3"))
        .await?;
    assert_eq!(
        header_value(&suffix, header::CONTENT_RANGE).as_deref(),
        Some("bytes 7-9/10")
    );
    assert_eq!(body(suffix).await?, "789");

    let unsatisfiable = service
        .clone()
        .oneshot(get_with("/r", header::RANGE, "bytes=100-"))
        .await?;
    assert_eq!(unsatisfiable.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        header_value(&unsatisfiable, header::CONTENT_RANGE).as_deref(),
        Some("bytes */10")
    );
    assert!(body(unsatisfiable).await?.is_empty());

    let whole = service.clone().oneshot(get("/r")).await?;
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(body(whole).await?, "0123456789");
    assert_eq!(calls.get(), 1);
    Ok(())
}

/// RFC 9110 §13.1.5: a `Range` with an `If-Range` that does not match the stored validator is
/// answered with the whole representation. An unreadable (non-UTF-8) `If-Range` matches
/// nothing, so it must mean 200, not 206 (a readable matching one, the control, gets the 206).
#[tokio::test(start_paused = true)]
async fn an_unreadable_if_range_gets_the_whole_body() -> TestResult {
    let (o, calls) = origin(|_, _request: Request<ReqBody>| async {
        let response = reply_cc("0123456789", "max-age=60");
        Ok::<_, BoxError>(with_header(response, header::ETAG, "\"e\""))
    });
    let service = SwrLayer::new().layer(o);
    service.clone().oneshot(get("/r")).await?;
    let ranged = |if_range: HeaderValue| {
        let mut request = get_with("/r", header::RANGE, "bytes=0-1");
        request.headers_mut().insert(header::IF_RANGE, if_range);
        request
    };
    let partial = service
        .clone()
        .oneshot(ranged(HeaderValue::from_static("\"e\"")))
        .await?;
    assert_eq!(partial.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(body(partial).await?, "01");
    let whole = service
        .clone()
        .oneshot(ranged(HeaderValue::from_bytes(b"\"e\xff\"")?))
        .await?;
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(body(whole).await?, "0123456789");
    assert_eq!(calls.get(), 1, "both answered from the stored body");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn range_of_a_body_over_max_body_bytes_reaches_the_client_as_206() {
    let calls = Calls::default();
    let len = 100_000;
    let app = file_server_app(&calls, len, None).layer(SwrLayer::new().max_body_bytes(4096));
    assert_gets_the_range(&app, &[], len, "a body over max_body_bytes").await;
}

#[tokio::test(start_paused = true)]
async fn range_of_a_no_store_answer_reaches_the_client_as_206() {
    let calls = Calls::default();
    let len = 1_000;
    let app = file_server_app(&calls, len, Some("no-store")).layer(SwrLayer::new());
    assert_gets_the_range(&app, &[], len, "a no-store answer").await;
}

#[tokio::test(start_paused = true)]
async fn range_with_authorization_reaches_the_client_as_206() {
    let calls = Calls::default();
    let len = 1_000;
    let app = file_server_app(&calls, len, None).layer(SwrLayer::new());
    assert_gets_the_range(
        &app,
        &[("authorization", "Bearer alice")],
        len,
        "a credentialed request",
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn if_none_match_on_a_no_store_answer_gets_304() {
    let calls = Calls::default();
    let app = file_server_app(&calls, 1_000, Some("no-store")).layer(SwrLayer::new());
    assert_gets_304(&app, &[], "a no-store answer").await;
}

#[tokio::test(start_paused = true)]
async fn if_none_match_on_a_private_answer_gets_304() {
    let calls = Calls::default();
    let app = file_server_app(&calls, 1_000, Some("private, max-age=60")).layer(SwrLayer::new());
    assert_gets_304(&app, &[], "a private answer").await;
}

#[tokio::test(start_paused = true)]
async fn if_none_match_on_a_credentialed_request_gets_304() {
    let calls = Calls::default();
    let app = file_server_app(&calls, 1_000, None).layer(SwrLayer::new());
    assert_gets_304(
        &app,
        &[("authorization", "Bearer alice")],
        "a credentialed request",
    )
    .await;
}
