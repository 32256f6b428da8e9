//! Black-box HTTP semantics: RFC 9111 (shared caches), RFC 5861 (stale-while-revalidate,
//! stale-if-error), RFC 9211 (`Cache-Status`), RFC 9110 §13/§14 (conditionals, ranges) and
//! §4.4 invalidation, written from the RFCs and the crate's public docs only, as real clients
//! (browsers, curl, CDNs, axum apps) would exercise them. Each test asserts one behaviour.
//!
//! Where the crate's docs document a choice that differs from an RFC's "SHOULD" or "prefers",
//! the test follows the docs and says so.

mod common;

use common::*;
use http::{Method, Request, StatusCode};
use std::time::{Duration, SystemTime};
use tower::Layer;
use tower_swr::{CacheStatus, SwrLayer, CACHE_STATUS};

/// An origin that answers with `f(call number, request)` and records every request it gets.
fn serve_with<F>(f: F) -> (impl OriginService, Calls, Seen)
where
    F: Fn(usize, &Request<ReqBody>) -> Reply + Clone + Send + Sync + 'static,
{
    let seen = Seen::default();
    let recorder = seen.clone();
    let (service, calls) = origin(move |n, request: Request<ReqBody>| {
        recorder.record(&request);
        let reply = f(n, &request);
        async move { Ok::<_, BoxError>(reply) }
    });
    (service, calls, seen)
}

/// An origin answering every call with `status`, the headers and the body `v{n}`.
fn fixed(status: u16, headers: Vec<(&'static str, String)>) -> (impl OriginService, Calls) {
    let (service, calls, _) = serve_with(move |n, _| {
        let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        respond(status, format!("v{n}"), &pairs)
    });
    (service, calls)
}

/// A 200 `v{n}` origin with one `Cache-Control`.
fn cc(value: &'static str) -> (impl OriginService, Calls) {
    fixed(200, vec![("cache-control", value.to_owned())])
}

fn text(whole: &Whole) -> &str {
    std::str::from_utf8(&whole.body).expect("utf-8 body")
}

fn hdr<'a>(whole: &'a Whole, name: &str) -> Option<&'a str> {
    whole.headers.get(name).map(|v| v.to_str().expect("ascii"))
}

/// Our (last) `Cache-Status` member of an answer read whole.
fn status_member(headers: &http::HeaderMap) -> String {
    headers
        .get_all(&CACHE_STATUS)
        .iter()
        .next_back()
        .expect("a Cache-Status")
        .to_str()
        .expect("ascii")
        .to_owned()
}

fn http_date_in(offset: i64) -> String {
    let now = SystemTime::now();
    let at = if offset >= 0 {
        now + Duration::from_secs(offset as u64)
    } else {
        now - Duration::from_secs((-offset) as u64)
    };
    http_date(at)
}

async fn advance(seconds: u64) {
    tokio::time::advance(secs(seconds)).await;
}

// ---------------------------------------------------------------------------------------------
// A small RFC 8941 List parser, enough to check `Cache-Status` (RFC 9211 §2).
// ---------------------------------------------------------------------------------------------

fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// Parses a bare item (token, string, integer) at the start of `s`; returns the rest.
fn sf_bare_item(s: &str) -> Result<&str, String> {
    let mut chars = s.char_indices();
    match chars.next() {
        Some((_, '"')) => {
            let mut escaped = false;
            for (i, c) in chars {
                if escaped {
                    if c != '"' && c != '\\' {
                        return Err(format!("bad escape in {s}"));
                    }
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    return Ok(&s[i + 1..]);
                } else if !(' '..='~').contains(&c) {
                    return Err(format!("bad string char in {s}"));
                }
            }
            Err(format!("unterminated string in {s}"))
        }
        Some((_, c)) if c.is_ascii_alphabetic() || c == '*' => {
            let end = s
                .char_indices()
                .find(|&(_, c)| !(is_tchar(c) || c == ':' || c == '/'))
                .map_or(s.len(), |(i, _)| i);
            Ok(&s[end..])
        }
        Some((_, c)) if c.is_ascii_digit() || c == '-' => {
            let digits = s[1..]
                .char_indices()
                .find(|&(_, c)| !c.is_ascii_digit())
                .map_or(s.len() - 1, |(i, _)| i);
            let len = digits + 1;
            if s[..len] == *"-" || len > 16 {
                return Err(format!("bad integer in {s}"));
            }
            if s[len..].starts_with('.') {
                return Err(format!(
                    "decimal where an integer or token was expected: {s}"
                ));
            }
            Ok(&s[len..])
        }
        _ => Err(format!("no bare item at {s:?}")),
    }
}

fn sf_key(s: &str) -> Result<(&str, &str), String> {
    let first = s.chars().next().ok_or("empty key")?;
    if !(first.is_ascii_lowercase() || first == '*') {
        return Err(format!("bad key start in {s:?}"));
    }
    let end = s
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.*".contains(c)))
        .map_or(s.len(), |(i, _)| i);
    Ok((&s[..end], &s[end..]))
}

/// Checks `value` is an RFC 8941 List of items (no inner lists) and returns each member's
/// parameter keys.
fn parse_sf_list(value: &str) -> Result<Vec<Vec<String>>, String> {
    let mut rest = value.trim_start_matches(' ');
    let mut members = Vec::new();
    loop {
        rest = sf_bare_item(rest)?;
        let mut keys = Vec::new();
        while let Some(after) = rest.strip_prefix(';') {
            let (key, after) = sf_key(after.trim_start_matches(' '))?;
            keys.push(key.to_owned());
            rest = match after.strip_prefix('=') {
                Some(v) => sf_bare_item(v)?,
                None => after,
            };
        }
        members.push(keys);
        rest = rest.trim_start_matches([' ', '\t']);
        if rest.is_empty() {
            return Ok(members);
        }
        rest = rest
            .strip_prefix(',')
            .ok_or_else(|| format!("junk {rest:?} in {value:?}"))?
            .trim_start_matches([' ', '\t']);
        if rest.is_empty() {
            return Err(format!("trailing comma in {value:?}"));
        }
    }
}

fn assert_valid_cache_status(headers: &http::HeaderMap) -> Vec<Vec<String>> {
    let joined: Vec<&str> = headers
        .get_all(&CACHE_STATUS)
        .iter()
        .map(|v| v.to_str().expect("ascii"))
        .collect();
    assert!(!joined.is_empty(), "no Cache-Status");
    let joined = joined.join(", ");
    parse_sf_list(&joined)
        .unwrap_or_else(|e| panic!("Cache-Status {joined:?} is not an sf-list: {e}"))
}

#[test]
fn the_sf_list_checker_rejects_what_rfc_8941_rejects() {
    assert!(parse_sf_list("tower-swr; hit; ttl=9").is_ok());
    assert!(parse_sf_list("\"my cache\"; fwd=uri-miss; stored").is_ok());
    assert!(parse_sf_list("a; hit, b; fwd=miss").is_ok());
    assert!(parse_sf_list("tower-swr; Hit").is_err());
    assert!(parse_sf_list("tower-swr; ttl=1.5").is_err());
    assert!(parse_sf_list("tower-swr;").is_err());
    assert!(parse_sf_list("tower-swr, ").is_err());
    assert!(parse_sf_list("tower swr").is_err());
}

// ---------------------------------------------------------------------------------------------
// RFC 9111 §4.2: freshness.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn s_maxage_overrides_a_longer_max_age_in_a_shared_cache() {
    let (origin, calls) = cc("max-age=100, s-maxage=10");
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(5).await;
    assert_eq!(
        send_whole(&svc, get("/a")).await.info.status,
        CacheStatus::Fresh
    );
    advance(10).await; // 15 s: past s-maxage, inside max-age
    let late = send_whole(&svc, get("/a")).await;
    assert_eq!(calls.get(), 2, "s-maxage=10 must win over max-age=100");
    assert_eq!(text(&late), "v2");
}

#[tokio::test(start_paused = true)]
async fn s_maxage_overrides_a_shorter_max_age_in_a_shared_cache() {
    let (origin, calls) = cc("max-age=10, s-maxage=100");
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(50).await;
    let hit = send_whole(&svc, get("/a")).await;
    assert_eq!(hit.info.status, CacheStatus::Fresh);
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn max_age_overrides_an_expires_in_the_past() {
    let (origin, calls) = fixed(
        200,
        vec![
            ("cache-control", "max-age=100".into()),
            ("date", http_date_in(0)),
            ("expires", http_date_in(-3600)),
        ],
    );
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(50).await;
    assert_eq!(
        send_whole(&svc, get("/a")).await.info.status,
        CacheStatus::Fresh
    );
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn expires_minus_date_gives_the_freshness_lifetime() {
    let (origin, calls) = fixed(
        200,
        vec![("date", http_date_in(0)), ("expires", http_date_in(30))],
    );
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(20).await;
    assert_eq!(
        send_whole(&svc, get("/a")).await.info.status,
        CacheStatus::Fresh
    );
    advance(20).await; // 40 s
    send_whole(&svc, get("/a")).await;
    assert_eq!(calls.get(), 2, "stale after Expires - Date = 30 s");
}

#[tokio::test(start_paused = true)]
async fn an_invalid_expires_means_already_expired() {
    let (origin, calls) = fixed(
        200,
        vec![("date", http_date_in(0)), ("expires", "0".into())],
    );
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(1).await;
    let second = send_whole(&svc, get("/a")).await;
    assert_eq!(calls.get(), 2, "Expires: 0 is in the past (RFC 9111 §5.3)");
    assert_eq!(text(&second), "v2");
}

#[tokio::test(start_paused = true)]
async fn the_origins_age_reduces_the_remaining_freshness() {
    let (origin, calls) = fixed(
        200,
        vec![
            ("cache-control", "max-age=100".into()),
            ("age", "90".into()),
        ],
    );
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(5).await;
    let hit = send_whole(&svc, get("/a")).await;
    assert_eq!(hit.info.status, CacheStatus::Fresh);
    let age: u64 = hdr(&hit, "age").expect("Age").parse().expect("integer Age");
    assert!(
        (95..=96).contains(&age),
        "Age {age} must include the origin's 90"
    );
    advance(10).await; // age 105 > 100
    send_whole(&svc, get("/a")).await;
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn heuristic_freshness_is_a_tenth_of_the_time_since_last_modified() {
    let (origin, calls) = fixed(
        200,
        vec![
            ("date", http_date_in(0)),
            ("last-modified", http_date_in(-1000)),
        ],
    );
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(50).await;
    assert_eq!(
        send_whole(&svc, get("/a")).await.info.status,
        CacheStatus::Fresh
    );
    advance(100).await; // 150 s > 100 s
    send_whole(&svc, get("/a")).await;
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn heuristic_freshness_is_not_given_to_a_201() {
    let (origin, calls) = fixed(
        201,
        vec![
            ("date", http_date_in(0)),
            ("last-modified", http_date_in(-1000)),
        ],
    );
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(1).await;
    send_whole(&svc, get("/a")).await;
    assert_eq!(
        calls.get(),
        2,
        "201 is not heuristically cacheable (RFC 9110 §15.1)"
    );
}

#[tokio::test(start_paused = true)]
async fn a_response_without_freshness_or_validators_is_not_reused_by_the_shared_preset() {
    let (origin, calls) = fixed(200, vec![]);
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    send_whole(&svc, get("/a")).await;
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_no_cache_response_is_revalidated_before_every_reuse() {
    let (origin, calls, seen) = serve_with(|n, request| {
        let headers = [
            ("cache-control", "no-cache, max-age=3600"),
            ("etag", "\"v1\""),
        ];
        if n > 1 && request.headers().get("if-none-match").is_some() {
            respond(304, "", &headers)
        } else {
            respond(200, format!("v{n}"), &headers)
        }
    });
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    let second = send_whole(&svc, get("/a")).await;
    let third = send_whole(&svc, get("/a")).await;
    assert_eq!(calls.get(), 3, "every reuse goes to the origin first");
    assert_eq!(
        header_text(&seen.headers(2), "if-none-match").as_deref(),
        Some("\"v1\"")
    );
    assert_eq!((second.status, text(&second)), (StatusCode::OK, "v1"));
    assert_eq!(text(&third), "v1", "the 304 let the stored body answer");
}

#[tokio::test(start_paused = true)]
async fn a_no_store_response_is_never_reused() {
    let (origin, calls) = cc("no-store, max-age=3600");
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    let second = send_whole(&svc, get("/a")).await;
    assert_eq!(calls.get(), 2);
    assert_eq!(text(&second), "v2");
}

#[tokio::test(start_paused = true)]
async fn must_revalidate_forbids_the_application_presets_default_stale_window() {
    let (origin, calls) = cc("max-age=10, must-revalidate");
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(15).await;
    let late = send_whole(&svc, get("/a")).await;
    assert_ne!(late.info.status, CacheStatus::Stale);
    assert_eq!((calls.get(), text(&late)), (2, "v2"));
}

#[tokio::test(start_paused = true)]
async fn proxy_revalidate_forbids_the_application_presets_default_stale_window() {
    let (origin, calls) = cc("max-age=10, proxy-revalidate");
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(15).await;
    let late = send_whole(&svc, get("/a")).await;
    assert_ne!(late.info.status, CacheStatus::Stale);
    assert_eq!((calls.get(), text(&late)), (2, "v2"));
}

#[tokio::test(start_paused = true)]
async fn must_revalidate_forbids_stale_if_error_on_a_503() {
    // RFC 9111 §5.2.2.2: a must-revalidate response that cannot be revalidated gets a 504
    // (or the origin's error), never the stale response; RFC 5861 §4 defers to it.
    let (origin, calls) = then_503("max-age=10, stale-if-error=600, must-revalidate");
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(15).await;
    let late = send_whole(&svc, get("/a")).await;
    assert_eq!(calls.get(), 2);
    assert_ne!(
        late.status,
        StatusCode::OK,
        "stale served despite must-revalidate"
    );
}

#[tokio::test(start_paused = true)]
async fn a_private_response_is_not_stored_by_a_shared_cache() {
    let (origin, calls) = cc("private, max-age=3600");
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    let second = send_whole(&svc, get("/a")).await;
    assert_eq!((calls.get(), text(&second)), (2, "v2"));
}

#[tokio::test(start_paused = true)]
async fn cache_control_directive_names_are_case_insensitive() {
    let (origin, calls) = cc("Public, MAX-AGE=30");
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(20).await;
    assert_eq!(
        send_whole(&svc, get("/a")).await.info.status,
        CacheStatus::Fresh
    );

    let (origin, calls2) = cc("NO-STORE, max-age=30");
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    send_whole(&svc, get("/a")).await;
    assert_eq!((calls.get(), calls2.get()), (1, 2), "NO-STORE is no-store");
}

#[tokio::test(start_paused = true)]
async fn cache_control_with_odd_whitespace_and_empty_members_still_gives_max_age() {
    let (origin, calls) = cc(" ,  public ,,\tmax-age=30 ,  ");
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(20).await;
    assert_eq!(
        send_whole(&svc, get("/a")).await.info.status,
        CacheStatus::Fresh
    );
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_quoted_max_age_is_accepted() {
    // RFC 9111 §5.2: recipients ought to accept the quoted-string form.
    let (origin, calls) = cc("max-age=\"30\"");
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(20).await;
    assert_eq!(
        send_whole(&svc, get("/a")).await.info.status,
        CacheStatus::Fresh
    );
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn no_store_inside_a_quoted_extension_value_is_not_a_directive() {
    let (origin, calls) = cc("x-ext=\"a, no-store, private\", max-age=30");
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(10).await;
    assert_eq!(
        send_whole(&svc, get("/a")).await.info.status,
        CacheStatus::Fresh
    );
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn duplicate_conflicting_max_age_uses_the_first_or_treats_the_response_as_stale() {
    // RFC 9111 §4.2.1: the first occurrence, or stale: either way not fresh at 50 s.
    let (origin, calls) = fixed(
        200,
        vec![
            ("cache-control", "max-age=5".into()),
            ("cache-control", "max-age=100".into()),
        ],
    );
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(50).await;
    let late = send_whole(&svc, get("/a")).await;
    assert_ne!(late.info.status, CacheStatus::Fresh);
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn no_store_wins_over_max_age_in_the_same_field() {
    let (origin, calls) = cc("max-age=600, public, no-store");
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    send_whole(&svc, get("/a")).await;
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_hop_by_hop_field_named_in_connection_is_not_stored() {
    let (origin, _calls) = fixed(
        200,
        vec![
            ("cache-control", "max-age=60".into()),
            ("connection", "x-hop".into()),
            ("x-hop", "secret".into()),
            ("x-end", "kept".into()),
        ],
    );
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    let hit = send_whole(&svc, get("/a")).await;
    assert_eq!(hit.info.status, CacheStatus::Fresh);
    assert_eq!(hdr(&hit, "x-end"), Some("kept"));
    assert_eq!(hdr(&hit, "x-hop"), None, "RFC 9111 §3.1: MUST NOT store it");
    assert_eq!(hdr(&hit, "connection"), None);
}

// ---------------------------------------------------------------------------------------------
// RFC 9111 §5.1: Age.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn age_on_a_hit_grows_with_the_clock() {
    let (origin, _calls) = cc("max-age=600");
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(7).await;
    assert_eq!(hdr(&send_whole(&svc, get("/a")).await, "age"), Some("7"));
    advance(30).await;
    assert_eq!(hdr(&send_whole(&svc, get("/a")).await, "age"), Some("37"));
}

#[tokio::test(start_paused = true)]
async fn every_answer_from_the_cache_carries_an_integer_age() {
    let (origin, _calls) = fixed(
        200,
        vec![
            ("cache-control", SWR_10_60.into()),
            ("etag", "\"v1\"".into()),
        ],
    );
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(3).await;
    let fresh = send_whole(&svc, get("/a")).await;
    let not_modified = send_whole(&svc, get_headers("/a", &[("if-none-match", "\"v1\"")])).await;
    let head = send_whole(&svc, request(Method::HEAD, "/a")).await;
    advance(20).await;
    let stale = send_whole(&svc, get("/a")).await;
    assert_eq!(stale.info.status, CacheStatus::Stale);
    for (what, answer) in [
        ("fresh", &fresh),
        ("304", &not_modified),
        ("HEAD", &head),
        ("stale", &stale),
    ] {
        let age = hdr(answer, "age").unwrap_or_else(|| panic!("no Age on the {what} answer"));
        assert!(
            !age.is_empty() && age.bytes().all(|b| b.is_ascii_digit()),
            "{what}: Age {age:?} is not delta-seconds"
        );
    }
    assert_eq!(hdr(&stale, "age"), Some("23"));
}

#[tokio::test(start_paused = true)]
async fn a_bypassed_post_gets_no_age_of_the_cache() {
    let (origin, _calls) = cc("max-age=60");
    let svc = SwrLayer::new().layer(origin);
    let post = send_whole(&svc, request(Method::POST, "/a")).await;
    assert_eq!(hdr(&post, "age"), None);
}

// ---------------------------------------------------------------------------------------------
// RFC 9211: Cache-Status.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn cache_status_of_a_stored_miss_is_fwd_uri_miss_and_stored() {
    let (origin, _calls) = cc("max-age=60");
    let svc = SwrLayer::new().layer(origin);
    let miss = send_whole(&svc, get("/a")).await;
    assert_eq!(
        status_member(&miss.headers),
        "tower-swr; fwd=uri-miss; stored"
    );
    assert_valid_cache_status(&miss.headers);
}

#[tokio::test(start_paused = true)]
async fn cache_status_of_a_fresh_hit_is_hit_with_the_remaining_ttl() {
    let (origin, _calls) = cc("max-age=30");
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(10).await;
    let hit = send_whole(&svc, get("/a")).await;
    assert_eq!(status_member(&hit.headers), "tower-swr; hit; ttl=20");
    assert_valid_cache_status(&hit.headers);
}

#[tokio::test(start_paused = true)]
async fn cache_status_of_a_stale_while_revalidate_answer_is_a_hit_with_a_negative_ttl() {
    let (origin, _calls) = cc(SWR_10_60);
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(15).await;
    let stale = send_whole(&svc, get("/a")).await;
    assert_eq!(stale.info.status, CacheStatus::Stale);
    let member = status_member(&stale.headers);
    assert!(member.contains("; hit"), "{member}");
    assert!(member.contains("ttl=-5"), "{member}");
    assert_valid_cache_status(&stale.headers);
}

#[tokio::test(start_paused = true)]
async fn cache_status_of_a_post_says_fwd_method() {
    let (origin, _calls) = cc("max-age=60");
    let svc = SwrLayer::new().layer(origin);
    let post = send_whole(&svc, request(Method::POST, "/a")).await;
    assert_eq!(post.info.status, CacheStatus::Bypass);
    let member = status_member(&post.headers);
    assert!(member.contains("fwd=method"), "{member}");
    assert!(!member.contains("stored"), "{member}");
    assert_valid_cache_status(&post.headers);
}

#[tokio::test(start_paused = true)]
async fn cache_status_of_a_stale_if_error_answer_says_fwd_stale_and_the_origins_status() {
    let (origin, _calls) = then_503("max-age=10, stale-if-error=600");
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(20).await;
    let stale = send_whole(&svc, get("/a")).await;
    let member = status_member(&stale.headers);
    assert!(member.contains("fwd=stale"), "{member}");
    assert!(member.contains("fwd-status=503"), "{member}");
    assert_valid_cache_status(&stale.headers);
}

#[tokio::test(start_paused = true)]
async fn cache_status_is_appended_after_an_upstream_caches_member() {
    let (origin, _calls) = fixed(
        200,
        vec![
            ("cache-control", "max-age=60".into()),
            ("cache-status", "upstream; fwd=uri-miss; stored".into()),
        ],
    );
    let svc = SwrLayer::new().layer(origin);
    let miss = send_whole(&svc, get("/a")).await;
    let members = assert_valid_cache_status(&miss.headers);
    assert_eq!(members.len(), 2, "upstream's member kept, ours added");
    let lines: Vec<&str> = miss
        .headers
        .get_all(&CACHE_STATUS)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(lines.join(", ").starts_with("upstream"), "{lines:?}");
    assert!(
        status_member(&miss.headers).starts_with("tower-swr"),
        "ours comes last"
    );
}

#[tokio::test(start_paused = true)]
async fn a_cache_name_that_is_not_a_token_is_written_as_an_sf_string() {
    let (origin, _calls) = cc("max-age=60");
    let svc = SwrLayer::new().cache_name("my edge").layer(origin);
    let miss = send_whole(&svc, get("/a")).await;
    assert!(
        status_member(&miss.headers).starts_with("\"my edge\";"),
        "{}",
        status_member(&miss.headers)
    );
    assert_valid_cache_status(&miss.headers);

    let (origin, _calls) = cc("max-age=60");
    let svc = SwrLayer::new().cache_name("edge").layer(origin);
    let miss = send_whole(&svc, get("/a")).await;
    assert!(status_member(&miss.headers).starts_with("edge;"));
}

// ---------------------------------------------------------------------------------------------
// RFC 5861.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn stale_while_revalidate_answers_stale_at_once_and_refreshes_exactly_once() {
    let (origin, calls) = cc(SWR_10_60);
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(15).await;
    for _ in 0..3 {
        let stale = send_whole(&svc, get("/a")).await;
        assert_eq!(
            (stale.info.status, text(&stale)),
            (CacheStatus::Stale, "v1")
        );
    }
    settle().await;
    assert_eq!(
        calls.get(),
        2,
        "one background refresh for three stale answers"
    );
    let after = send_whole(&svc, get("/a")).await;
    assert_eq!(
        (after.info.status, text(&after)),
        (CacheStatus::Fresh, "v2")
    );
}

#[tokio::test(start_paused = true)]
async fn past_the_stale_while_revalidate_window_the_request_waits_for_the_origin() {
    let (origin, calls) = cc(SWR_10_60);
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(80).await; // 10 s fresh + 60 s stale, passed
    let late = send_whole(&svc, get("/a")).await;
    assert_eq!((late.info.status, text(&late)), (CacheStatus::Miss, "v2"));
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_shared_preset_serves_no_stale_without_a_stale_directive() {
    let (origin, calls) = cc("max-age=10");
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(11).await;
    let late = send_whole(&svc, get("/a")).await;
    assert_eq!((late.info.status, text(&late)), (CacheStatus::Miss, "v2"));
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_serves_the_stale_response_on_a_503_inside_its_window() {
    let (origin, calls) = then_503("max-age=10, stale-if-error=60");
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(30).await;
    let answer = send_whole(&svc, get("/a")).await;
    assert_eq!(calls.get(), 2);
    assert_eq!(
        (answer.status, answer.info.status, text(&answer)),
        (StatusCode::OK, CacheStatus::StaleIfError, "v1")
    );
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_passes_the_503_on_after_its_window() {
    let (origin, calls) = then_503("max-age=10, stale-if-error=60");
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(100).await; // 90 s stale > 60 s
    let answer = send_whole(&svc, get("/a")).await;
    assert_eq!(calls.get(), 2);
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_serves_the_stale_response_when_the_origin_errors() {
    let mode = Mode::default();
    let (origin, calls) = moody(Some("max-age=10, stale-if-error=60"), mode.clone());
    // The shared preset: `new()` would answer from its default stale-while-revalidate window.
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    mode.set(ERROR);
    advance(30).await;
    let answer = send_whole(&svc, get("/a")).await;
    assert_eq!(calls.get(), 2);
    assert_eq!(
        (answer.info.status, text(&answer)),
        (CacheStatus::StaleIfError, "v1")
    );
}

// ---------------------------------------------------------------------------------------------
// Request directives of real clients (RFC 9111 §5.2.1).
// ---------------------------------------------------------------------------------------------

/// README "Not built yet": request `no-cache` and `max-age=0` are ignored on purpose (RFC 9111
/// §5.2.1.4 only says the client "prefers" validation), so a browser reload is a hit.
#[tokio::test(start_paused = true)]
async fn a_browser_reload_with_request_no_cache_is_answered_from_a_fresh_entry_as_documented() {
    let (origin, calls) = cc("max-age=60");
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    let reload = send_whole(
        &svc,
        get_headers(
            "/a",
            &[("cache-control", "no-cache"), ("pragma", "no-cache")],
        ),
    )
    .await;
    assert_eq!(reload.info.status, CacheStatus::Fresh);
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn request_max_age_zero_is_answered_from_a_fresh_entry_as_documented() {
    let (origin, calls) = cc("max-age=60");
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(5).await;
    let answer = send_whole(&svc, get_headers("/a", &[("cache-control", "max-age=0")])).await;
    assert_eq!(answer.info.status, CacheStatus::Fresh);
    assert_eq!(calls.get(), 1);
}

/// An answer read whole, with its `CacheInfo` if it has one.
struct Loose {
    status: StatusCode,
    headers: http::HeaderMap,
    info: Option<tower_swr::CacheInfo>,
}

async fn send_loose<S>(svc: &S, request: Request<ReqBody>) -> Loose
where
    S: tower::Service<Request<ReqBody>, Response = Answer, Error = BoxError> + Clone,
{
    use tower::ServiceExt;
    let response = svc.clone().oneshot(request).await.expect("an answer");
    let info = response.extensions().get::<tower_swr::CacheInfo>().copied();
    let (parts, body) = response.into_parts();
    http_body_util::BodyExt::collect(body).await.expect("body");
    Loose {
        status: parts.status,
        headers: parts.headers,
        info,
    }
}

#[tokio::test(start_paused = true)]
async fn only_if_cached_with_nothing_stored_answers_504_without_calling_the_origin() {
    let (origin, calls) = cc("max-age=60");
    let svc = SwrLayer::new().layer(origin);
    let answer = send_loose(
        &svc,
        get_headers("/a", &[("cache-control", "only-if-cached")]),
    )
    .await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(calls.get(), 0);
    assert!(status_member(&answer.headers).contains("detail=only-if-cached"));
    assert_valid_cache_status(&answer.headers);
}

#[tokio::test(start_paused = true)]
async fn the_only_if_cached_504_carries_a_cache_info_extension() {
    let (origin, _calls) = cc("max-age=60");
    let svc = SwrLayer::new().layer(origin);
    let answer = send_loose(
        &svc,
        get_headers("/a", &[("cache-control", "only-if-cached")]),
    )
    .await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(answer.info.is_some(), "no CacheInfo on the 504");
}

#[tokio::test(start_paused = true)]
async fn only_if_cached_with_a_fresh_entry_answers_it() {
    let (origin, calls) = cc("max-age=60");
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    let answer = send_whole(
        &svc,
        get_headers("/a", &[("cache-control", "only-if-cached")]),
    )
    .await;
    assert_eq!((answer.status, text(&answer)), (StatusCode::OK, "v1"));
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn only_if_cached_with_an_expired_entry_answers_504_without_calling_the_origin() {
    let (origin, calls) = cc("max-age=10");
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(20).await;
    let answer = send_loose(
        &svc,
        get_headers("/a", &[("cache-control", "only-if-cached")]),
    )
    .await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn request_max_stale_never_unlocks_a_must_revalidate_response() {
    let (origin, calls) = cc("max-age=10, must-revalidate");
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(20).await;
    let answer = send_whole(
        &svc,
        get_headers("/a", &[("cache-control", "max-stale=3600")]),
    )
    .await;
    assert_eq!((calls.get(), text(&answer)), (2, "v2"));
}

#[tokio::test(start_paused = true)]
async fn a_request_with_no_store_leaves_nothing_stored() {
    // RFC 9111 §5.2.1.5: a cache MUST NOT store any part of this request or its response.
    let (origin, calls) = cc("max-age=60");
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get_headers("/a", &[("cache-control", "no-store")])).await;
    let next = send_whole(&svc, get("/a")).await;
    assert_eq!(calls.get(), 2, "the no-store request's answer was stored");
    assert_eq!(text(&next), "v2");
}

// ---------------------------------------------------------------------------------------------
// RFC 9110 §13: conditional requests from clients, and revalidation with the origin.
// ---------------------------------------------------------------------------------------------

fn etagged(etag: &'static str) -> (impl OriginService, Calls) {
    fixed(
        200,
        vec![
            ("cache-control", "max-age=60".into()),
            ("etag", etag.into()),
            ("last-modified", http_date_in(-1000)),
        ],
    )
}

async fn conditional(etag: &'static str, headers: &[(&str, &str)]) -> (Whole, usize) {
    let (origin, calls) = etagged(etag);
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    let answer = send_whole(&svc, get_headers("/a", headers)).await;
    (answer, calls.get())
}

#[tokio::test(start_paused = true)]
async fn if_none_match_with_the_stored_etag_answers_304_with_the_etag_and_no_body() {
    let (answer, calls) = conditional("\"v1\"", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(answer.status, StatusCode::NOT_MODIFIED);
    assert_eq!(hdr(&answer, "etag"), Some("\"v1\""));
    assert!(answer.body.is_empty());
    assert_eq!(calls, 1);
}

#[tokio::test(start_paused = true)]
async fn if_none_match_compares_weakly() {
    // RFC 9110 §13.1.2: If-None-Match uses the weak comparison.
    let (answer, _) = conditional("W/\"v1\"", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(answer.status, StatusCode::NOT_MODIFIED);
    let (answer, _) = conditional("\"v1\"", &[("if-none-match", "W/\"v1\"")]).await;
    assert_eq!(answer.status, StatusCode::NOT_MODIFIED);
}

#[tokio::test(start_paused = true)]
async fn if_none_match_with_a_list_containing_the_etag_answers_304() {
    let (answer, calls) =
        conditional("\"v1\"", &[("if-none-match", "\"x\", W/\"y\" ,\"v1\"")]).await;
    assert_eq!(answer.status, StatusCode::NOT_MODIFIED);
    assert_eq!(calls, 1);
}

#[tokio::test(start_paused = true)]
async fn an_if_none_match_wildcard_on_a_cached_get_answers_304() {
    let (answer, calls) = conditional("\"v1\"", &[("if-none-match", "*")]).await;
    assert_eq!(answer.status, StatusCode::NOT_MODIFIED);
    assert_eq!(calls, 1);
}

#[tokio::test(start_paused = true)]
async fn an_if_none_match_that_does_not_match_gets_the_whole_200() {
    let (answer, calls) = conditional("\"v1\"", &[("if-none-match", "\"other\"")]).await;
    assert_eq!((answer.status, text(&answer)), (StatusCode::OK, "v1"));
    assert_eq!(calls, 1);
}

#[tokio::test(start_paused = true)]
async fn if_none_match_takes_precedence_over_if_modified_since() {
    let later = http_date_in(0);
    let (answer, _) = conditional(
        "\"v1\"",
        &[
            ("if-none-match", "\"other\""),
            ("if-modified-since", &later),
        ],
    )
    .await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "IMS must be ignored when INM is present"
    );
}

#[tokio::test(start_paused = true)]
async fn if_modified_since_not_before_last_modified_answers_304() {
    let (origin, calls) = fixed(
        200,
        vec![
            ("cache-control", "max-age=60".into()),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT".into()),
        ],
    );
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    let same = send_whole(
        &svc,
        get_headers(
            "/a",
            &[("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")],
        ),
    )
    .await;
    assert_eq!(same.status, StatusCode::NOT_MODIFIED);
    assert!(same.body.is_empty());
    let older = send_whole(
        &svc,
        get_headers(
            "/a",
            &[("if-modified-since", "Sat, 05 Nov 1994 08:49:37 GMT")],
        ),
    )
    .await;
    assert_eq!((older.status, text(&older)), (StatusCode::OK, "v1"));
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_304_from_the_cache_keeps_cache_control_etag_expires_and_vary() {
    let (origin, _calls) = fixed(
        200,
        vec![
            ("cache-control", "max-age=60".into()),
            ("etag", "\"v1\"".into()),
            ("vary", "accept-encoding".into()),
            ("expires", http_date_in(60)),
            ("content-location", "/a.json".into()),
        ],
    );
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    let answer = send_whole(&svc, get_headers("/a", &[("if-none-match", "\"v1\"")])).await;
    assert_eq!(answer.status, StatusCode::NOT_MODIFIED);
    // RFC 9110 §15.4.5: the fields a 200 would carry among these MUST be sent.
    for name in [
        "cache-control",
        "etag",
        "vary",
        "expires",
        "content-location",
    ] {
        assert!(answer.headers.contains_key(name), "304 lacks {name}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_origins_304_on_revalidation_freshens_the_entry_and_updates_its_headers() {
    let (origin, calls, seen) = serve_with(|n, request| {
        if request.headers().get("if-none-match").is_some() {
            respond(
                304,
                "",
                &[
                    ("cache-control", "max-age=10"),
                    ("etag", "\"v1\""),
                    ("x-version", "2"),
                ],
            )
        } else {
            respond(
                200,
                format!("v{n}"),
                &[
                    ("cache-control", "max-age=10"),
                    ("etag", "\"v1\""),
                    ("x-version", "1"),
                ],
            )
        }
    });
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(20).await;
    let revalidated = send_whole(&svc, get("/a")).await;
    assert_eq!(calls.get(), 2);
    assert_eq!(
        header_text(&seen.headers(2), "if-none-match").as_deref(),
        Some("\"v1\"")
    );
    assert_eq!(
        (revalidated.status, text(&revalidated)),
        (StatusCode::OK, "v1")
    );
    assert_eq!(hdr(&revalidated, "x-version"), Some("2"));
    advance(5).await;
    let hit = send_whole(&svc, get("/a")).await;
    assert_eq!(
        hit.info.status,
        CacheStatus::Fresh,
        "the 304 freshened the entry"
    );
    assert_eq!((text(&hit), hdr(&hit, "x-version")), ("v1", Some("2")));
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn revalidation_without_an_etag_sends_if_modified_since_with_last_modified() {
    const LM: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
    let (origin, calls, seen) = serve_with(|n, request| {
        let headers = [("cache-control", "max-age=10"), ("last-modified", LM)];
        if request.headers().get("if-modified-since").is_some() {
            respond(304, "", &headers)
        } else {
            respond(200, format!("v{n}"), &headers)
        }
    });
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(20).await;
    let answer = send_whole(&svc, get("/a")).await;
    assert_eq!(calls.get(), 2);
    assert_eq!(
        header_text(&seen.headers(2), "if-modified-since").as_deref(),
        Some(LM)
    );
    assert_eq!(text(&answer), "v1");
}

// ---------------------------------------------------------------------------------------------
// RFC 9110 §14: ranges from stored responses.
// ---------------------------------------------------------------------------------------------

async fn ranged(headers: &[(&str, &str)]) -> (Whole, usize) {
    let (origin, calls, _) = serve_with(|_, _| {
        respond(
            200,
            "0123456789",
            &[
                ("cache-control", "max-age=60"),
                ("etag", "\"d\""),
                ("accept-ranges", "bytes"),
            ],
        )
    });
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/f")).await;
    let answer = send_whole(&svc, get_headers("/f", headers)).await;
    (answer, calls.get())
}

#[tokio::test(start_paused = true)]
async fn a_single_range_on_a_cached_entry_answers_206_with_content_range() {
    let (answer, calls) = ranged(&[("range", "bytes=2-5")]).await;
    assert_eq!(answer.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(hdr(&answer, "content-range"), Some("bytes 2-5/10"));
    assert_eq!(text(&answer), "2345");
    assert_eq!(calls, 1);
}

#[tokio::test(start_paused = true)]
async fn a_suffix_range_answers_the_last_bytes() {
    let (answer, _) = ranged(&[("range", "bytes=-3")]).await;
    assert_eq!(answer.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(hdr(&answer, "content-range"), Some("bytes 7-9/10"));
    assert_eq!(text(&answer), "789");
}

#[tokio::test(start_paused = true)]
async fn an_open_ended_range_past_the_end_is_clamped_to_the_body() {
    let (answer, _) = ranged(&[("range", "bytes=8-100")]).await;
    assert_eq!(answer.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(hdr(&answer, "content-range"), Some("bytes 8-9/10"));
    assert_eq!(text(&answer), "89");
}

#[tokio::test(start_paused = true)]
async fn an_unsatisfiable_range_answers_416_with_the_complete_length() {
    let (answer, calls) = ranged(&[("range", "bytes=20-30")]).await;
    assert_eq!(answer.status, StatusCode::RANGE_NOT_SATISFIABLE);
    // RFC 9110 §15.5.17: SHOULD send `Content-Range: bytes */<length>`.
    assert_eq!(hdr(&answer, "content-range"), Some("bytes */10"));
    assert_eq!(calls, 1);
}

#[tokio::test(start_paused = true)]
async fn multiple_ranges_get_the_whole_body_as_documented() {
    let (answer, _) = ranged(&[("range", "bytes=0-1, 4-5")]).await;
    assert_eq!(
        (answer.status, text(&answer)),
        (StatusCode::OK, "0123456789")
    );
}

#[tokio::test(start_paused = true)]
async fn if_range_with_the_stored_strong_etag_gets_the_range() {
    let (answer, _) = ranged(&[("range", "bytes=0-1"), ("if-range", "\"d\"")]).await;
    assert_eq!(
        (answer.status, text(&answer)),
        (StatusCode::PARTIAL_CONTENT, "01")
    );
}

#[tokio::test(start_paused = true)]
async fn if_range_with_another_etag_gets_the_whole_200() {
    let (answer, _) = ranged(&[("range", "bytes=0-1"), ("if-range", "\"old\"")]).await;
    assert_eq!(
        (answer.status, text(&answer)),
        (StatusCode::OK, "0123456789")
    );
}

#[tokio::test(start_paused = true)]
async fn if_range_with_a_weak_etag_never_matches() {
    // RFC 9110 §13.1.5: If-Range uses the strong comparison; a weak tag never matches.
    let (origin, _calls, _) = serve_with(|_, _| {
        respond(
            200,
            "0123456789",
            &[("cache-control", "max-age=60"), ("etag", "W/\"d\"")],
        )
    });
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/f")).await;
    let answer = send_whole(
        &svc,
        get_headers("/f", &[("range", "bytes=0-1"), ("if-range", "W/\"d\"")]),
    )
    .await;
    assert_eq!(
        (answer.status, text(&answer)),
        (StatusCode::OK, "0123456789")
    );
}

// ---------------------------------------------------------------------------------------------
// Methods, HEAD, invalidation (RFC 9111 §4.4).
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn head_is_answered_from_a_cached_get_with_its_headers_and_no_body() {
    let (origin, calls) = fixed(
        200,
        vec![
            ("cache-control", "max-age=60".into()),
            ("etag", "\"v1\"".into()),
        ],
    );
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    let head = send_whole(&svc, request(Method::HEAD, "/a")).await;
    assert_eq!(calls.get(), 1);
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(hdr(&head, "etag"), Some("\"v1\""));
    assert_eq!(head.info.status, CacheStatus::Fresh);
}

#[tokio::test(start_paused = true)]
async fn a_head_miss_never_stores_an_empty_body_for_get() {
    let (origin, calls, seen) = serve_with(|n, request| {
        let body = if request.method() == Method::HEAD {
            String::new()
        } else {
            format!("v{n}")
        };
        respond(200, body, &[("cache-control", "max-age=60")])
    });
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, request(Method::HEAD, "/a")).await;
    let get_answer = send_whole(&svc, get("/a")).await;
    assert_eq!(text(&get_answer), "v2");
    assert_eq!(calls.get(), 2);
    assert_eq!(seen.0.lock().unwrap()[1].0, Method::GET);
}

#[tokio::test(start_paused = true)]
async fn post_put_delete_options_are_never_answered_from_the_cache() {
    for method in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
        let (origin, calls) = fixed(200, vec![("cache-control", "public, max-age=600".into())]);
        let svc = SwrLayer::new().layer(origin);
        send_whole(&svc, request(method.clone(), "/a")).await;
        let second = send_whole(&svc, request(method.clone(), "/a")).await;
        assert_eq!(calls.get(), 2, "{method}");
        assert_eq!(second.info.status, CacheStatus::Bypass, "{method}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_successful_post_invalidates_the_stored_get_of_its_uri() {
    let (origin, calls) = cc("max-age=600");
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    send_whole(&svc, request(Method::POST, "/a")).await;
    let after = send_whole(&svc, get("/a")).await;
    assert_eq!(after.info.status, CacheStatus::Miss);
    assert_eq!((calls.get(), text(&after)), (3, "v3"));
}

#[tokio::test(start_paused = true)]
async fn a_post_answered_500_does_not_invalidate() {
    let (origin, calls, _) = serve_with(|n, request| {
        if request.method() == Method::POST {
            respond(500, "oops", &[])
        } else {
            respond(200, format!("v{n}"), &[("cache-control", "max-age=600")])
        }
    });
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    send_whole(&svc, request(Method::POST, "/a")).await;
    let after = send_whole(&svc, get("/a")).await;
    assert_eq!(
        (after.info.status, text(&after)),
        (CacheStatus::Fresh, "v1")
    );
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_post_answered_303_see_other_invalidates_its_uri() {
    // RFC 9111 §4.4: a non-error status (2xx or 3xx) to an unsafe method MUST invalidate.
    let (origin, calls, _) = serve_with(|n, request| {
        if request.method() == Method::POST {
            respond(303, "", &[("location", "/done")])
        } else {
            respond(200, format!("v{n}"), &[("cache-control", "max-age=600")])
        }
    });
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    send_whole(&svc, request(Method::POST, "/a")).await;
    let after = send_whole(&svc, get("/a")).await;
    assert_eq!(calls.get(), 3, "the 303 to the POST left /a stored");
    assert_eq!(text(&after), "v3");
}

fn on_host(method: Method, uri: &str, host: &str, headers: &[(&str, &str)]) -> Request<ReqBody> {
    let mut all = vec![("host", host)];
    all.extend_from_slice(headers);
    req(method.as_str(), uri, &all)
}

#[tokio::test(start_paused = true)]
async fn a_delete_invalidates_its_same_origin_location_and_content_location() {
    let (origin, calls, _) = serve_with(|n, request| {
        if request.method() == Method::DELETE {
            respond(
                200,
                "gone",
                &[
                    ("location", "/b"),
                    ("content-location", "http://example.com/c"),
                ],
            )
        } else {
            respond(200, format!("v{n}"), &[("cache-control", "max-age=600")])
        }
    });
    let svc = SwrLayer::new().layer(origin);
    for path in ["/a", "/b", "/c"] {
        send_whole(&svc, on_host(Method::GET, path, "example.com", &[])).await;
    }
    assert_eq!(calls.get(), 3);
    send_whole(&svc, on_host(Method::DELETE, "/a", "example.com", &[])).await;
    for path in ["/a", "/b", "/c"] {
        let after = send_whole(&svc, on_host(Method::GET, path, "example.com", &[])).await;
        assert_eq!(after.info.status, CacheStatus::Miss, "{path} still stored");
    }
    assert_eq!(calls.get(), 7);
}

#[tokio::test(start_paused = true)]
async fn a_location_on_another_host_is_not_invalidated() {
    let (origin, calls, _) = serve_with(|n, request| {
        if request.method() == Method::POST {
            respond(201, "made", &[("location", "http://other.example/b")])
        } else {
            respond(200, format!("v{n}"), &[("cache-control", "max-age=600")])
        }
    });
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, on_host(Method::GET, "/b", "other.example", &[])).await;
    send_whole(&svc, on_host(Method::POST, "/a", "example.com", &[])).await;
    let after = send_whole(&svc, on_host(Method::GET, "/b", "other.example", &[])).await;
    assert_eq!(
        (after.info.status, text(&after)),
        (CacheStatus::Fresh, "v1")
    );
    assert_eq!(calls.get(), 2);
}

// ---------------------------------------------------------------------------------------------
// Vary (RFC 9111 §4.1).
// ---------------------------------------------------------------------------------------------

fn varying(on: &'static str) -> (impl OriginService, Calls) {
    let (service, calls, _) = serve_with(move |n, request| {
        let value = header_text(request.headers(), on).unwrap_or_default();
        respond(
            200,
            format!("v{n}:{value}"),
            &[("cache-control", "max-age=600"), ("vary", on)],
        )
    });
    (service, calls)
}

#[tokio::test(start_paused = true)]
async fn different_accept_encodings_are_different_entries() {
    let (origin, calls) = varying("accept-encoding");
    let svc = SwrLayer::new().layer(origin);
    let ae = |v: &str| get_headers("/a", &[("accept-encoding", v)]);
    assert_eq!(text(&send_whole(&svc, ae("gzip")).await), "v1:gzip");
    assert_eq!(text(&send_whole(&svc, ae("br")).await), "v2:br");
    assert_eq!(text(&send_whole(&svc, ae("gzip")).await), "v1:gzip");
    assert_eq!(text(&send_whole(&svc, ae("br")).await), "v2:br");
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_request_without_the_varied_header_is_its_own_variant() {
    let (origin, calls) = varying("accept-language");
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get_headers("/a", &[("accept-language", "fr")])).await;
    let bare = send_whole(&svc, get("/a")).await;
    assert_eq!(text(&bare), "v2:");
    let french = send_whole(&svc, get_headers("/a", &[("accept-language", "fr")])).await;
    assert_eq!(text(&french), "v1:fr");
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn varied_values_differing_only_in_list_whitespace_share_an_entry() {
    let (origin, calls) = varying("accept-encoding");
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get_headers("/a", &[("accept-encoding", "gzip,br")])).await;
    let spaced = send_whole(&svc, get_headers("/a", &[("accept-encoding", "gzip, br")])).await;
    assert_eq!(spaced.info.status, CacheStatus::Fresh);
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn vary_star_is_never_answered_from_the_cache() {
    let (origin, calls) = fixed(
        200,
        vec![
            ("cache-control", "max-age=600".into()),
            ("vary", "*".into()),
        ],
    );
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    let second = send_whole(&svc, get("/a")).await;
    assert_eq!((calls.get(), text(&second)), (2, "v2"));
}

// ---------------------------------------------------------------------------------------------
// Status codes (RFC 9110 §15.1 heuristically cacheable).
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn heuristically_cacheable_statuses_are_stored_with_the_application_defaults() {
    for status in [200u16, 203, 204, 300, 301, 308, 404, 405, 410, 414] {
        let (origin, calls) = fixed(status, vec![]);
        let svc = SwrLayer::new().layer(origin);
        send_whole(&svc, get("/a")).await;
        advance(30).await;
        let second = send_whole(&svc, get("/a")).await;
        assert_eq!(second.status.as_u16(), status);
        assert_eq!(
            second.info.status,
            CacheStatus::Fresh,
            "{status} not reused"
        );
        assert_eq!(calls.get(), 1, "{status}");
    }
}

/// README: server errors are never stored without explicit freshness, but for 501, which RFC
/// 9110 §15.1 lists as heuristically cacheable.
#[tokio::test(start_paused = true)]
async fn a_501_without_explicit_freshness_is_stored_heuristically_as_documented() {
    // RFC 9110 §15.1: 501 is heuristically cacheable; the layer's docs name it as the one
    // server error stored without explicit freshness.
    let (origin, calls) = fixed(501, vec![]);
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(2).await;
    let second = send_whole(&svc, get("/a")).await;
    assert_eq!(calls.get(), 1);
    assert_eq!(
        (second.status, text(&second)),
        (StatusCode::NOT_IMPLEMENTED, "v1")
    );
    assert_eq!(second.info.status, CacheStatus::Fresh);
}

#[tokio::test(start_paused = true)]
async fn a_5xx_is_remembered_for_one_second_as_documented_then_asked_again() {
    let (origin, calls) = fixed(500, vec![]);
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    let remembered = send_whole(&svc, get("/a")).await;
    assert_eq!(remembered.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(remembered.info.status, CacheStatus::FailureHit);
    assert!(status_member(&remembered.headers).contains("detail=failure"));
    assert_eq!(calls.get(), 1);
    advance(2).await;
    send_whole(&svc, get("/a")).await;
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_302_without_explicit_freshness_is_not_stored() {
    let (origin, calls) = fixed(302, vec![("location", "/elsewhere".into())]);
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    send_whole(&svc, get("/a")).await;
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_302_with_max_age_is_stored() {
    let (origin, calls) = fixed(
        302,
        vec![
            ("location", "/elsewhere".into()),
            ("cache-control", "max-age=60".into()),
        ],
    );
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    let second = send_whole(&svc, get("/a")).await;
    assert_eq!(
        (second.status, second.info.status),
        (StatusCode::FOUND, CacheStatus::Fresh)
    );
    assert_eq!(hdr(&second, "location"), Some("/elsewhere"));
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_201_and_a_500_without_explicit_freshness_are_not_stored() {
    for status in [201u16, 500] {
        let (origin, calls) = fixed(status, vec![]);
        let svc = SwrLayer::new().layer(origin);
        send_whole(&svc, get("/a")).await;
        advance(2).await; // past the 1 s a failure is remembered
        send_whole(&svc, get("/a")).await;
        assert_eq!(calls.get(), 2, "{status} was stored");
    }
}

// ---------------------------------------------------------------------------------------------
// Never shared (RFC 9111 §3.5, cookies).
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_response_with_set_cookie_is_not_given_to_another_client() {
    let (origin, calls) = fixed(
        200,
        vec![
            ("cache-control", "public, max-age=600".into()),
            ("set-cookie", "session=alice".into()),
        ],
    );
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    let bob = send_whole(&svc, get("/a")).await;
    assert_eq!(calls.get(), 2);
    assert_ne!(bob.info.status, CacheStatus::Fresh);
}

#[tokio::test(start_paused = true)]
async fn an_answer_to_an_authorization_request_is_not_shared_without_an_explicit_directive() {
    let (origin, calls) = cc("max-age=600");
    let svc = SwrLayer::new().layer(origin);
    send_whole(
        &svc,
        get_headers("/a", &[("authorization", "Bearer alice")]),
    )
    .await;
    let anonymous = send_whole(&svc, get("/a")).await;
    let bob = send_whole(&svc, get_headers("/a", &[("authorization", "Bearer bob")])).await;
    assert_eq!(calls.get(), 3);
    assert_eq!((text(&anonymous), text(&bob)), ("v2", "v3"));
}

#[tokio::test(start_paused = true)]
async fn public_s_maxage_or_must_revalidate_let_an_authorization_answer_be_shared() {
    for directive in [
        "public, max-age=600",
        "s-maxage=600",
        "must-revalidate, max-age=600",
    ] {
        let (origin, calls) = fixed(200, vec![("cache-control", directive.into())]);
        let svc = SwrLayer::shared_cache().layer(origin);
        send_whole(
            &svc,
            get_headers("/a", &[("authorization", "Bearer alice")]),
        )
        .await;
        let anonymous = send_whole(&svc, get("/a")).await;
        assert_eq!(anonymous.info.status, CacheStatus::Fresh, "{directive}");
        assert_eq!(calls.get(), 1, "{directive}");
    }
}

/// `credential_headers` docs: an entry that is not explicitly shareable "is never served to
/// such a request" (stricter than RFC 9111 §3.5, which is about storing such answers).
#[tokio::test(start_paused = true)]
async fn a_plain_entry_is_not_served_to_a_request_with_authorization_as_documented() {
    let (origin, calls) = cc("max-age=600");
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    let alice = send_whole(
        &svc,
        get_headers("/a", &[("authorization", "Bearer alice")]),
    )
    .await;
    assert_eq!((calls.get(), text(&alice)), (2, "v2"));
}

#[tokio::test(start_paused = true)]
async fn a_request_with_cookie_is_answered_from_the_cache_only_for_public_responses() {
    let (origin, calls) = cc("max-age=600");
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    send_whole(&svc, get_headers("/a", &[("cookie", "session=alice")])).await;
    assert_eq!(calls.get(), 2, "a Cookie request got a non-public entry");

    let (origin, calls) = cc("public, max-age=600");
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    let with_cookie = send_whole(&svc, get_headers("/a", &[("cookie", "session=alice")])).await;
    assert_eq!(with_cookie.info.status, CacheStatus::Fresh);
    assert_eq!(calls.get(), 1);
}

// ---------------------------------------------------------------------------------------------
// More freshness and stale rules.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn must_revalidate_wins_over_an_explicit_stale_while_revalidate() {
    // RFC 9111 §4.2.4: a cache MUST NOT generate a stale response when must-revalidate
    // prohibits it; RFC 9111 §5.2.2.2: once stale, not reused until validated.
    let (origin, calls) = cc("max-age=10, stale-while-revalidate=60, must-revalidate");
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(15).await;
    let late = send_whole(&svc, get("/a")).await;
    assert_ne!(late.info.status, CacheStatus::Stale);
    assert_eq!((calls.get(), text(&late)), (2, "v2"));
}

#[tokio::test(start_paused = true)]
async fn s_maxage_forbids_the_application_presets_default_stale_window() {
    // README: `s-maxage` forbids the default stale windows (RFC 9111 §5.2.2.10).
    let (origin, calls) = cc("s-maxage=10");
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(15).await;
    let late = send_whole(&svc, get("/a")).await;
    assert_ne!(late.info.status, CacheStatus::Stale);
    assert_eq!((calls.get(), text(&late)), (2, "v2"));
}

/// `Thu, 03 Dec 2026 18:40:00 GMT` as the obsolete RFC 850 and asctime forms.
fn obsolete_forms(imf: &str) -> (String, String) {
    let (day, rest) = imf.split_once(", ").expect("IMF-fixdate");
    let parts: Vec<&str> = rest.split(' ').collect(); // dd Mon yyyy hh:mm:ss GMT
    let long = match day {
        "Mon" => "Monday",
        "Tue" => "Tuesday",
        "Wed" => "Wednesday",
        "Thu" => "Thursday",
        "Fri" => "Friday",
        "Sat" => "Saturday",
        _ => "Sunday",
    };
    let rfc850 = format!(
        "{long}, {}-{}-{} {} GMT",
        parts[0],
        parts[1],
        &parts[2][2..],
        parts[3]
    );
    let dd: u32 = parts[0].parse().unwrap();
    let asctime = format!("{day} {} {dd:>2} {} {}", parts[1], parts[3], parts[2]);
    (rfc850, asctime)
}

#[tokio::test(start_paused = true)]
async fn expires_in_the_obsolete_rfc_850_and_asctime_formats_gives_the_lifetime() {
    // RFC 9110 §5.6.7: recipients MUST accept all three date formats.
    let (rfc850, asctime) = obsolete_forms(&http_date_in(300));
    for expires in [rfc850, asctime] {
        let (origin, calls) = fixed(
            200,
            vec![("date", http_date_in(0)), ("expires", expires.clone())],
        );
        let svc = SwrLayer::shared_cache().layer(origin);
        send_whole(&svc, get("/a")).await;
        advance(100).await;
        let hit = send_whole(&svc, get("/a")).await;
        assert_eq!(hit.info.status, CacheStatus::Fresh, "Expires: {expires}");
        assert_eq!(calls.get(), 1, "Expires: {expires}");
    }
}

#[tokio::test(start_paused = true)]
async fn an_origin_date_in_the_past_counts_as_apparent_age() {
    let (origin, calls) = fixed(
        200,
        vec![
            ("cache-control", "max-age=60".into()),
            ("date", http_date_in(-50)),
        ],
    );
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(20).await; // age ~70 > 60
    send_whole(&svc, get("/a")).await;
    assert_eq!(calls.get(), 2, "now - Date must count towards the age");
}

#[tokio::test(start_paused = true)]
async fn a_no_cache_response_without_validators_is_not_stored_as_documented() {
    let (origin, calls) = cc("no-cache, max-age=600");
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    let second = send_whole(&svc, get("/a")).await;
    assert_eq!((calls.get(), text(&second)), (2, "v2"));
}

#[tokio::test(start_paused = true)]
async fn cache_control_split_over_two_lines_is_one_list() {
    let (origin, calls) = fixed(
        200,
        vec![
            ("cache-control", "max-age=600".into()),
            ("cache-control", "no-store".into()),
        ],
    );
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    send_whole(&svc, get("/a")).await;
    assert_eq!(calls.get(), 2, "the second line's no-store was missed");
}

#[tokio::test(start_paused = true)]
async fn a_field_named_by_private_is_not_stored_by_a_shared_cache() {
    // RFC 9111 §5.2.2.7: a shared cache MUST NOT store the named fields (it may store the rest).
    let (origin, _calls) = fixed(
        200,
        vec![
            ("cache-control", "max-age=600, private=\"x-user\"".into()),
            ("x-user", "alice".into()),
        ],
    );
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    let second = send_whole(&svc, get("/a")).await;
    if second.info.status == CacheStatus::Fresh {
        assert_eq!(
            hdr(&second, "x-user"),
            None,
            "alice's field reached another client"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_field_named_by_no_cache_is_not_reused_without_revalidation() {
    // RFC 9111 §5.2.2.4: the named field MUST NOT be sent without successful revalidation.
    let (origin, _calls) = fixed(
        200,
        vec![
            ("cache-control", "max-age=600, no-cache=\"x-token\"".into()),
            ("x-token", "t1".into()),
        ],
    );
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    let second = send_whole(&svc, get("/a")).await;
    if second.info.status == CacheStatus::Fresh {
        assert_eq!(hdr(&second, "x-token"), None);
    }
}

// ---------------------------------------------------------------------------------------------
// Background refreshes.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_background_refresh_revalidates_with_the_stored_etag() {
    let (origin, calls, seen) = serve_with(|n, request| {
        let headers = [("cache-control", SWR_10_60), ("etag", "\"v1\"")];
        if request.headers().get("if-none-match").is_some() {
            respond(304, "", &headers)
        } else {
            respond(200, format!("v{n}"), &headers)
        }
    });
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(15).await;
    assert_eq!(
        send_whole(&svc, get("/a")).await.info.status,
        CacheStatus::Stale
    );
    settle().await;
    assert_eq!(calls.get(), 2);
    assert_eq!(
        header_text(&seen.headers(2), "if-none-match").as_deref(),
        Some("\"v1\"")
    );
    let after = send_whole(&svc, get("/a")).await;
    assert_eq!(
        (after.info.status, text(&after)),
        (CacheStatus::Fresh, "v1")
    );
    assert!(
        hdr(&after, "age").unwrap().parse::<u64>().unwrap() < 5,
        "the 304 made the entry new"
    );
}

#[tokio::test(start_paused = true)]
async fn a_background_refresh_answered_503_keeps_the_stale_entry() {
    let (origin, calls) = then_503(SWR_10_60);
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(15).await;
    send_whole(&svc, get("/a")).await;
    settle().await;
    assert_eq!(calls.get(), 2);
    let after = send_whole(&svc, get("/a")).await;
    assert_eq!((after.status, text(&after)), (StatusCode::OK, "v1"));
}

// ---------------------------------------------------------------------------------------------
// Clients' conditionals and ranges on a cold key (docs: forwarded without them).
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_conditional_miss_is_forwarded_unconditionally_and_answered_304_from_the_store() {
    let (origin, calls, seen) = serve_with(|n, _| {
        respond(
            200,
            format!("v{n}"),
            &[("cache-control", "max-age=600"), ("etag", "\"v1\"")],
        )
    });
    let svc = SwrLayer::new().layer(origin);
    let answer = send_whole(&svc, get_headers("/a", &[("if-none-match", "\"v1\"")])).await;
    assert_eq!(answer.status, StatusCode::NOT_MODIFIED);
    assert_eq!(header_text(&seen.headers(1), "if-none-match"), None);
    let plain = send_whole(&svc, get("/a")).await;
    assert_eq!(
        (plain.info.status, text(&plain)),
        (CacheStatus::Fresh, "v1")
    );
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_range_miss_fetches_the_whole_body_and_answers_206() {
    let (origin, calls, seen) =
        serve_with(|_, _| respond(200, "0123456789", &[("cache-control", "max-age=600")]));
    let svc = SwrLayer::new().layer(origin);
    let answer = send_whole(&svc, get_headers("/f", &[("range", "bytes=1-2")])).await;
    assert_eq!(
        (answer.status, text(&answer)),
        (StatusCode::PARTIAL_CONTENT, "12")
    );
    assert_eq!(header_text(&seen.headers(1), "range"), None);
    let whole = send_whole(&svc, get("/f")).await;
    assert_eq!(
        (whole.info.status, text(&whole)),
        (CacheStatus::Fresh, "0123456789")
    );
    assert_eq!(calls.get(), 1);
}

// ---------------------------------------------------------------------------------------------
// More Vary, invalidation and status headers.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn vary_on_two_fields_keys_on_both() {
    let (origin, calls, _) = serve_with(|n, _| {
        respond(
            200,
            format!("v{n}"),
            &[
                ("cache-control", "max-age=600"),
                ("vary", "Accept-Encoding, Accept-Language"),
            ],
        )
    });
    let svc = SwrLayer::new().layer(origin);
    let ask =
        |ae: &str, al: &str| get_headers("/a", &[("accept-encoding", ae), ("accept-language", al)]);
    assert_eq!(text(&send_whole(&svc, ask("gzip", "en")).await), "v1");
    assert_eq!(text(&send_whole(&svc, ask("gzip", "fr")).await), "v2");
    assert_eq!(text(&send_whole(&svc, ask("br", "en")).await), "v3");
    assert_eq!(text(&send_whole(&svc, ask("gzip", "en")).await), "v1");
    assert_eq!(calls.get(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_put_invalidates_the_head_answered_from_the_get_entry() {
    let (origin, calls) = cc("max-age=600");
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    assert_eq!(
        send_whole(&svc, request(Method::HEAD, "/a"))
            .await
            .info
            .status,
        CacheStatus::Fresh
    );
    send_whole(&svc, request(Method::PUT, "/a")).await;
    let head = send_whole(&svc, request(Method::HEAD, "/a")).await;
    assert_ne!(head.info.status, CacheStatus::Fresh);
    assert_eq!(calls.get(), 3);
}

#[tokio::test(start_paused = true)]
async fn x_cache_says_miss_then_hit_when_turned_on() {
    let (origin, _calls) = cc(SWR_10_60);
    let svc = SwrLayer::new().x_cache_header(true).layer(origin);
    assert_eq!(
        hdr(&send_whole(&svc, get("/a")).await, "x-cache"),
        Some("MISS")
    );
    assert_eq!(
        hdr(&send_whole(&svc, get("/a")).await, "x-cache"),
        Some("HIT")
    );
    advance(15).await;
    assert_eq!(
        hdr(&send_whole(&svc, get("/a")).await, "x-cache"),
        Some("STALE")
    );
    let post = send_whole(&svc, request(Method::POST, "/a")).await;
    assert_eq!(hdr(&post, "x-cache"), Some("BYPASS"));
}

#[tokio::test(start_paused = true)]
async fn cache_status_is_valid_on_a_head_hit_and_a_304_from_the_cache() {
    let (origin, _calls) = etagged("\"v1\"");
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    let head = send_whole(&svc, request(Method::HEAD, "/a")).await;
    let not_modified = send_whole(&svc, get_headers("/a", &[("if-none-match", "\"v1\"")])).await;
    for answer in [&head, &not_modified] {
        assert_valid_cache_status(&answer.headers);
        assert!(status_member(&answer.headers).starts_with("tower-swr; hit"));
    }
}

#[test]
fn the_obsolete_date_forms_are_those_of_rfc_9110() {
    assert_eq!(
        obsolete_forms("Thu, 03 Dec 2026 18:40:00 GMT"),
        (
            "Thursday, 03-Dec-26 18:40:00 GMT".to_owned(),
            "Thu Dec  3 18:40:00 2026".to_owned()
        )
    );
}

// ---------------------------------------------------------------------------------------------
// Edge cases.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_304_with_another_strong_etag_does_not_freshen_the_stored_response() {
    // RFC 9111 §4.3.4: a 304 whose strong validator matches no stored response MUST NOT be
    // used to update any.
    let (origin, calls, _) = serve_with(|n, request| {
        if request.headers().get("if-none-match").is_some() {
            respond(
                304,
                "",
                &[("cache-control", "max-age=600"), ("etag", "\"v2\"")],
            )
        } else {
            respond(
                200,
                format!("v{n}"),
                &[("cache-control", "max-age=10"), ("etag", "\"v1\"")],
            )
        }
    });
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(20).await;
    let revalidated = send_whole(&svc, get("/a")).await;
    // The 304 updates nothing: the origin is asked for the representation itself.
    assert_eq!(text(&revalidated), "v3");
    assert_eq!(calls.get(), 3);
    let calls_after_revalidation = calls.get();
    advance(5).await;
    let next = send_whole(&svc, get("/a")).await;
    let reused_v1_as_fresh = next.info.status == CacheStatus::Fresh && text(&next) == "v1";
    assert!(
        !reused_v1_as_fresh,
        "the \"v1\" entry was freshened by a 304 for \"v2\" ({calls_after_revalidation} calls)"
    );
}

#[tokio::test(start_paused = true)]
async fn a_max_age_past_2_pow_31_is_a_very_long_lifetime() {
    // RFC 9111 §1.2.2: an overflowing delta-seconds is taken as 2^31, not as invalid.
    let (origin, calls) = cc("max-age=99999999999999999999");
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(10 * 24 * 3600).await;
    let hit = send_whole(&svc, get("/a")).await;
    assert_eq!(hit.info.status, CacheStatus::Fresh);
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn different_hosts_are_different_entries() {
    let (origin, calls) = cc("max-age=600");
    let svc = SwrLayer::new().layer(origin);
    let a = send_whole(&svc, on_host(Method::GET, "/", "a.example", &[])).await;
    let b = send_whole(&svc, on_host(Method::GET, "/", "b.example", &[])).await;
    let a_again = send_whole(&svc, on_host(Method::GET, "/", "a.example", &[])).await;
    assert_eq!((text(&a), text(&b), text(&a_again)), ("v1", "v2", "v1"));
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn cache_status_of_a_miss_that_is_not_stored_does_not_say_stored() {
    let (origin, _calls) = cc("no-store");
    let svc = SwrLayer::new().layer(origin);
    let miss = send_whole(&svc, get("/a")).await;
    let member = status_member(&miss.headers);
    assert!(member.contains("fwd="), "{member}");
    assert!(!member.contains("stored"), "{member}");
    assert!(!miss.info.stored);
    assert_valid_cache_status(&miss.headers);
}

#[tokio::test(start_paused = true)]
async fn only_if_cached_is_answered_by_a_stale_entry_inside_its_window() {
    let (origin, _calls) = cc(SWR_10_60);
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(15).await;
    let answer = send_loose(
        &svc,
        get_headers("/a", &[("cache-control", "only-if-cached")]),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.info.map(|i| i.status), Some(CacheStatus::Stale));
}

#[tokio::test(start_paused = true)]
async fn a_background_refresh_carries_none_of_the_triggering_clients_range_or_conditionals() {
    let (origin, calls, seen) = serve_with(|n, _| {
        respond(
            200,
            format!("v{n}-0123456789"),
            &[("cache-control", SWR_10_60)],
        )
    });
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(15).await;
    let stale = send_whole(
        &svc,
        get_headers(
            "/a",
            &[
                ("range", "bytes=0-1"),
                ("if-none-match", "\"client\""),
                ("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ],
        ),
    )
    .await;
    assert_eq!(stale.status, StatusCode::PARTIAL_CONTENT);
    settle().await;
    assert_eq!(calls.get(), 2);
    let refresh = seen.headers(2);
    for name in ["range", "if-none-match", "if-modified-since", "if-range"] {
        assert_eq!(header_text(&refresh, name), None, "the refresh sent {name}");
    }
    assert_eq!(text(&send_whole(&svc, get("/a")).await), "v2-0123456789");
}

#[tokio::test(start_paused = true)]
async fn an_unsafe_request_invalidates_every_variant_of_its_uri() {
    let (origin, calls) = varying("accept-language");
    let svc = SwrLayer::new().layer(origin);
    let lang = |l: &str| get_headers("/a", &[("accept-language", l)]);
    send_whole(&svc, lang("en")).await;
    send_whole(&svc, lang("fr")).await;
    send_whole(&svc, request(Method::DELETE, "/a")).await;
    assert_eq!(
        send_whole(&svc, lang("en")).await.info.status,
        CacheStatus::Miss
    );
    assert_eq!(
        send_whole(&svc, lang("fr")).await.info.status,
        CacheStatus::Miss
    );
    assert_eq!(calls.get(), 5);
}

#[tokio::test(start_paused = true)]
async fn cache_status_ttl_counts_the_origins_age() {
    let (origin, _calls) = fixed(
        200,
        vec![
            ("cache-control", "max-age=100".into()),
            ("age", "30".into()),
        ],
    );
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    let hit = send_whole(&svc, get("/a")).await;
    assert_eq!(status_member(&hit.headers), "tower-swr; hit; ttl=70");
    assert_eq!(hdr(&hit, "age"), Some("30"));
}

// ---------------------------------------------------------------------------------------------
// Conditionals, ranges and framing: more edges (RFC 9110 §8.6, §13, §14).
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn an_if_modified_since_that_is_not_a_date_is_ignored() {
    // RFC 9110 §13.1.3: a recipient MUST ignore an If-Modified-Since that is not a valid date.
    let (answer, calls) = conditional("\"v1\"", &[("if-modified-since", "yesterday")]).await;
    assert_eq!((answer.status, text(&answer)), (StatusCode::OK, "v1"));
    assert_eq!(calls, 1);
}

#[tokio::test(start_paused = true)]
async fn if_modified_since_on_an_entry_without_last_modified_is_evaluated_against_its_date() {
    // RFC 9111 §4.3.2: without Last-Modified, a cache SHOULD use the stored Date.
    let (origin, calls) = fixed(
        200,
        vec![
            ("cache-control", "max-age=600".into()),
            ("date", http_date_in(-100)),
        ],
    );
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    let now = http_date_in(0);
    let answer = send_whole(&svc, get_headers("/a", &[("if-modified-since", &now)])).await;
    assert_eq!(answer.status, StatusCode::NOT_MODIFIED);
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_zero_length_suffix_range_is_unsatisfiable() {
    // RFC 9110 §14.1.3: `bytes=-0` selects nothing.
    let (answer, _) = ranged(&[("range", "bytes=-0")]).await;
    assert_eq!(answer.status, StatusCode::RANGE_NOT_SATISFIABLE);
}

#[tokio::test(start_paused = true)]
async fn a_range_in_an_unknown_unit_gets_the_whole_200() {
    let (answer, _) = ranged(&[("range", "items=0-1")]).await;
    assert_eq!(
        (answer.status, text(&answer)),
        (StatusCode::OK, "0123456789")
    );
}

#[tokio::test(start_paused = true)]
async fn a_206_carries_the_length_of_its_slice() {
    let (answer, _) = ranged(&[("range", "bytes=2-5")]).await;
    assert_eq!(answer.status, StatusCode::PARTIAL_CONTENT);
    if let Some(length) = hdr(&answer, "content-length") {
        assert_eq!(length, "4");
    }
    assert_eq!(answer.body.len(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_range_on_a_cached_404_gets_the_whole_404() {
    // RFC 9110 §14.2: Range applies to 2xx GET answers only.
    let (origin, calls, _) =
        serve_with(|_, _| respond(404, "not here at all", &[("cache-control", "max-age=600")]));
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/missing")).await;
    let answer = send_whole(&svc, get_headers("/missing", &[("range", "bytes=0-2")])).await;
    assert_eq!(
        (answer.status, text(&answer)),
        (StatusCode::NOT_FOUND, "not here at all")
    );
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn if_none_match_on_a_cached_404_gets_the_404_not_a_304() {
    // RFC 9110 §13.2.1: preconditions are ignored when the answer would not be 2xx.
    let (origin, _calls, _) = serve_with(|_, _| {
        respond(
            404,
            "nope",
            &[("cache-control", "max-age=600"), ("etag", "\"n\"")],
        )
    });
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/missing")).await;
    let answer = send_whole(&svc, get_headers("/missing", &[("if-none-match", "\"n\"")])).await;
    assert_eq!(
        (answer.status, text(&answer)),
        (StatusCode::NOT_FOUND, "nope")
    );
}

#[tokio::test(start_paused = true)]
async fn a_head_from_the_cache_reports_the_gets_length_if_any() {
    let (origin, _calls, _) =
        serve_with(|_, _| respond(200, "twelve bytes", &[("cache-control", "max-age=600")]));
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    let head = send_whole(&svc, request(Method::HEAD, "/a")).await;
    assert!(head.body.is_empty());
    if let Some(length) = hdr(&head, "content-length") {
        assert_eq!(
            length, "12",
            "RFC 9110 §8.6: HEAD's Content-Length is the GET's"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_304_from_the_cache_has_no_body_and_no_wrong_content_length() {
    let (origin, _calls, _) = serve_with(|_, _| {
        respond(
            200,
            "twelve bytes",
            &[("cache-control", "max-age=600"), ("etag", "\"t\"")],
        )
    });
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    let answer = send_whole(&svc, get_headers("/a", &[("if-none-match", "\"t\"")])).await;
    assert_eq!(answer.status, StatusCode::NOT_MODIFIED);
    assert!(answer.body.is_empty());
    if let Some(length) = hdr(&answer, "content-length") {
        assert_eq!(
            length, "12",
            "RFC 9110 §8.6: only the 200's length may be sent"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_head_with_a_matching_if_none_match_gets_304_from_the_cache() {
    let (origin, calls) = etagged("\"v1\"");
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    let mut head = request(Method::HEAD, "/a");
    head.headers_mut()
        .insert("if-none-match", http::HeaderValue::from_static("\"v1\""));
    let answer = send_whole(&svc, head).await;
    assert_eq!(answer.status, StatusCode::NOT_MODIFIED);
    assert_eq!(calls.get(), 1);
}

// ---------------------------------------------------------------------------------------------
// Dates, revalidation details, concurrency of real clients.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn expires_without_date_counts_from_when_the_response_was_received() {
    let (origin, calls) = fixed(200, vec![("expires", http_date_in(30))]);
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(20).await;
    assert_eq!(
        send_whole(&svc, get("/a")).await.info.status,
        CacheStatus::Fresh
    );
    advance(20).await;
    send_whole(&svc, get("/a")).await;
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_date_ahead_of_our_clock_gives_no_negative_age() {
    // RFC 9111 §4.2.3: apparent_age = max(0, response_time - date_value).
    let (origin, calls) = fixed(
        200,
        vec![
            ("cache-control", "max-age=60".into()),
            ("date", http_date_in(1000)),
        ],
    );
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(30).await;
    let hit = send_whole(&svc, get("/a")).await;
    assert_eq!(hit.info.status, CacheStatus::Fresh);
    assert_eq!(hdr(&hit, "age"), Some("30"));
    advance(40).await; // 70 s: a future Date must not lengthen the lifetime either
    send_whole(&svc, get("/a")).await;
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn max_age_makes_an_invalid_expires_irrelevant() {
    // RFC 9111 §5.3: with max-age, Expires is ignored, invalid or not.
    let (origin, calls) = fixed(
        200,
        vec![
            ("cache-control", "max-age=60".into()),
            ("expires", "0".into()),
        ],
    );
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(30).await;
    assert_eq!(
        send_whole(&svc, get("/a")).await.info.status,
        CacheStatus::Fresh
    );
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_bare_304_on_revalidation_freshens_the_entry_with_its_stored_lifetime() {
    let (origin, calls, _) = serve_with(|n, request| {
        if request.headers().get("if-none-match").is_some() {
            respond(304, "", &[("etag", "\"v1\"")])
        } else {
            respond(
                200,
                format!("v{n}"),
                &[
                    ("cache-control", "max-age=10"),
                    ("etag", "\"v1\""),
                    ("content-type", "text/plain"),
                ],
            )
        }
    });
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(20).await;
    send_whole(&svc, get("/a")).await;
    advance(5).await;
    let hit = send_whole(&svc, get("/a")).await;
    assert_eq!(hit.info.status, CacheStatus::Fresh);
    assert_eq!(hdr(&hit, "age"), Some("5"));
    assert_eq!(hdr(&hit, "content-type"), Some("text/plain"));
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_304s_content_length_does_not_replace_the_stored_ones() {
    // RFC 9111 §3.2: Content-Length is never updated from a 304.
    let (origin, _calls, _) = serve_with(|n, request| {
        if request.headers().get("if-none-match").is_some() {
            respond(
                304,
                "",
                &[
                    ("etag", "\"v1\""),
                    ("content-length", "0"),
                    ("cache-control", "max-age=10"),
                ],
            )
        } else {
            respond(
                200,
                format!("body-{n}"),
                &[("cache-control", "max-age=10"), ("etag", "\"v1\"")],
            )
        }
    });
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(20).await;
    send_whole(&svc, get("/a")).await;
    let hit = send_whole(&svc, get("/a")).await;
    assert_eq!(text(&hit), "body-1");
    if let Some(length) = hdr(&hit, "content-length") {
        assert_eq!(length, "6");
    }
}

#[tokio::test(start_paused = true)]
async fn concurrent_stale_requests_start_one_refresh() {
    let (origin, calls) = cc(SWR_10_60);
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(15).await;
    let answers = futures_join_all((0..20).map(|_| {
        let svc = svc.clone();
        async move { send_whole(&svc, get("/a")).await }
    }))
    .await;
    assert!(answers
        .iter()
        .all(|a| a.info.status == CacheStatus::Stale && text(a) == "v1"));
    settle().await;
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn concurrent_misses_for_one_key_make_one_origin_call() {
    let (origin, calls) = origin(|n, _| async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok::<_, BoxError>(reply_cc(format!("v{n}"), "max-age=60"))
    });
    let svc = SwrLayer::new().layer(origin);
    let answers = futures_join_all((0..20).map(|_| {
        let svc = svc.clone();
        async move { send_whole(&svc, get("/a")).await }
    }))
    .await;
    assert!(answers.iter().all(|a| text(a) == "v1"));
    assert_eq!(calls.get(), 1);
}

/// Runs the futures concurrently, each in a task (no `futures` dependency needed).
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let mut set = Vec::new();
    for future in futures {
        set.push(tokio::spawn(future));
    }
    let mut out = Vec::new();
    for handle in set {
        out.push(handle.await.expect("task"));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Methods of unknown safety, safe methods, upgrades, collapsed answers.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_successful_method_of_unknown_safety_invalidates_its_uri() {
    // RFC 9111 §4.4: "unsafe request method (including methods whose safety is unknown)".
    let (origin, calls) = cc("max-age=600");
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    send_whole(&svc, req("FROBNICATE", "/a", &[])).await;
    let after = send_whole(&svc, get("/a")).await;
    assert_eq!(
        after.info.status,
        CacheStatus::Miss,
        "FROBNICATE left /a stored"
    );
    assert_eq!(calls.get(), 3);
}

#[tokio::test(start_paused = true)]
async fn safe_options_and_trace_do_not_invalidate() {
    let (origin, calls) = cc("max-age=600");
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    send_whole(&svc, request(Method::OPTIONS, "/a")).await;
    send_whole(&svc, request(Method::TRACE, "/a")).await;
    let after = send_whole(&svc, get("/a")).await;
    assert_eq!(
        (after.info.status, text(&after)),
        (CacheStatus::Fresh, "v1")
    );
    assert_eq!(calls.get(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_websocket_handshake_bypasses_the_cache() {
    let (origin, calls) = cc("max-age=600");
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/ws")).await;
    let upgrade = send_whole(
        &svc,
        get_headers(
            "/ws",
            &[("connection", "upgrade"), ("upgrade", "websocket")],
        ),
    )
    .await;
    assert_eq!(upgrade.info.status, CacheStatus::Bypass);
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn collapsed_answers_carry_a_valid_cache_status() {
    let (origin, calls) = origin(|n, _| async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok::<_, BoxError>(reply_cc(format!("v{n}"), "max-age=60"))
    });
    let svc = SwrLayer::new().layer(origin);
    let answers = futures_join_all((0..5).map(|_| {
        let svc = svc.clone();
        async move { send_whole(&svc, get("/a")).await }
    }))
    .await;
    assert_eq!(calls.get(), 1);
    let collapsed: Vec<&Whole> = answers
        .iter()
        .filter(|a| a.info.status == CacheStatus::Collapsed)
        .collect();
    assert_eq!(collapsed.len(), 4);
    for answer in &answers {
        assert_valid_cache_status(&answer.headers);
    }
    for answer in collapsed {
        let member = status_member(&answer.headers);
        assert!(member.starts_with("tower-swr; "), "{member}");
        assert!(
            hdr(answer, "age").is_some(),
            "a collapsed answer comes from the cache"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// What a revalidating 304 may bring in.
// ---------------------------------------------------------------------------------------------

/// An origin storing `v1` (`max-age=10`, `ETag: "v1"`) and answering revalidations with a 304
/// carrying `extra`.
fn revalidated_with(extra: &'static [(&'static str, &'static str)]) -> (impl OriginService, Calls) {
    let (service, calls, _) = serve_with(move |n, request| {
        if request.headers().get("if-none-match").is_some() {
            let mut headers = vec![("etag", "\"v1\"")];
            headers.extend_from_slice(extra);
            respond(304, "", &headers)
        } else {
            respond(
                200,
                format!("v{n}"),
                &[("cache-control", "max-age=10"), ("etag", "\"v1\"")],
            )
        }
    });
    (service, calls)
}

#[tokio::test(start_paused = true)]
async fn a_set_cookie_on_a_revalidating_304_is_never_replayed_to_other_clients() {
    // Only alice's revalidation (call 2) gets the cookie; whatever bob gets must not carry it.
    let (origin, _calls, _) = serve_with(|n, request| {
        if request.headers().get("if-none-match").is_some() {
            let mut headers = vec![("etag", "\"v1\""), ("cache-control", "max-age=600")];
            if n == 2 {
                headers.push(("set-cookie", "session=alice"));
            }
            respond(304, "", &headers)
        } else {
            respond(
                200,
                format!("v{n}"),
                &[("cache-control", "max-age=10"), ("etag", "\"v1\"")],
            )
        }
    });
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(20).await;
    let alice = send_whole(&svc, get("/a")).await; // revalidates
    assert_eq!(
        hdr(&alice, "set-cookie"),
        Some("session=alice"),
        "alice's own answer"
    );
    let bob = send_whole(&svc, get("/a")).await;
    assert_eq!(text(&bob), "v1");
    assert_eq!(hdr(&bob, "set-cookie"), None, "alice's cookie reached bob");
}

#[tokio::test(start_paused = true)]
async fn a_revalidating_304_that_says_private_stops_the_shared_reuse() {
    let (origin, calls) = revalidated_with(&[("cache-control", "private, max-age=600")]);
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(20).await;
    send_whole(&svc, get("/a")).await;
    let next = send_whole(&svc, get("/a")).await;
    assert_ne!(
        next.info.status,
        CacheStatus::Fresh,
        "a private response reused by a shared cache"
    );
    assert_eq!(calls.get(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_revalidating_304_that_says_no_store_stops_the_reuse() {
    let (origin, calls) = revalidated_with(&[("cache-control", "no-store")]);
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(20).await;
    send_whole(&svc, get("/a")).await;
    let next = send_whole(&svc, get("/a")).await;
    assert_ne!(next.info.status, CacheStatus::Fresh);
    assert_eq!(calls.get(), 3);
}

// ---------------------------------------------------------------------------------------------
// More request and response directives.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn if_range_with_the_strong_last_modified_date_gets_the_range() {
    // RFC 9110 §13.1.5: a date matches when it equals a strong Last-Modified (here 1000 s
    // before Date).
    let last_modified = http_date_in(-1000);
    let date = http_date_in(0);
    let lm = last_modified.clone();
    let (origin, _calls, _) = serve_with(move |_, _| {
        respond(
            200,
            "0123456789",
            &[
                ("cache-control", "max-age=600"),
                ("last-modified", lm.as_str()),
                ("date", date.as_str()),
            ],
        )
    });
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/f")).await;
    let matching = send_whole(
        &svc,
        get_headers(
            "/f",
            &[("range", "bytes=0-1"), ("if-range", &last_modified)],
        ),
    )
    .await;
    assert_eq!(
        (matching.status, text(&matching)),
        (StatusCode::PARTIAL_CONTENT, "01")
    );
    let other = http_date_in(-5000);
    let stale_validator = send_whole(
        &svc,
        get_headers("/f", &[("range", "bytes=0-1"), ("if-range", &other)]),
    )
    .await;
    assert_eq!(
        (stale_validator.status, text(&stale_validator)),
        (StatusCode::OK, "0123456789")
    );
}

#[tokio::test(start_paused = true)]
async fn only_if_cached_cannot_use_a_no_cache_entry_without_validation() {
    let (origin, calls) = fixed(
        200,
        vec![
            ("cache-control", "no-cache, max-age=600".into()),
            ("etag", "\"v1\"".into()),
        ],
    );
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    let answer = send_loose(
        &svc,
        get_headers("/a", &[("cache-control", "only-if-cached")]),
    )
    .await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn only_if_cached_gets_504_for_a_stale_must_revalidate_entry_in_the_application_preset() {
    let (origin, calls) = cc("max-age=10, must-revalidate");
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(15).await;
    let answer = send_loose(
        &svc,
        get_headers("/a", &[("cache-control", "only-if-cached")]),
    )
    .await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_unsafe_request_invalidates_its_exact_target_with_query_only() {
    let (origin, calls) = cc("max-age=600");
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    send_whole(&svc, get("/a?x=1")).await;
    send_whole(&svc, request(Method::POST, "/a?x=1")).await;
    assert_eq!(
        send_whole(&svc, get("/a")).await.info.status,
        CacheStatus::Fresh
    );
    assert_eq!(
        send_whole(&svc, get("/a?x=1")).await.info.status,
        CacheStatus::Miss
    );
    assert_eq!(calls.get(), 4);
}

#[tokio::test(start_paused = true)]
async fn delta_seconds_with_leading_zeros_are_decimal() {
    let (origin, calls) = cc("max-age=0010");
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(5).await;
    assert_eq!(
        send_whole(&svc, get("/a")).await.info.status,
        CacheStatus::Fresh
    );
    advance(10).await;
    send_whole(&svc, get("/a")).await;
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_origins_206_to_a_plain_get_is_not_stored() {
    let (origin, calls) = fixed(
        206,
        vec![
            ("cache-control", "max-age=600".into()),
            ("content-range", "bytes 0-1/10".into()),
        ],
    );
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    send_whole(&svc, get("/a")).await;
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn must_understand_lets_an_understood_status_be_stored_despite_no_store() {
    // RFC 9111 §5.2.2.3: a cache that understands the status SHOULD ignore no-store.
    let (origin, calls) = cc("must-understand, no-store, max-age=600");
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    assert_eq!(
        send_whole(&svc, get("/a")).await.info.status,
        CacheStatus::Fresh
    );
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn must_understand_on_an_unknown_status_is_not_stored() {
    let (origin, calls) = fixed(
        299,
        vec![(
            "cache-control",
            "must-understand, no-store, max-age=600".into(),
        )],
    );
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    send_whole(&svc, get("/a")).await;
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_background_refresh_answered_304_with_another_strong_etag_does_not_freshen_the_entry() {
    let (origin, calls, _) = serve_with(|n, request| {
        if request.headers().get("if-none-match").is_some() {
            respond(304, "", &[("cache-control", SWR_10_60), ("etag", "\"v2\"")])
        } else {
            respond(
                200,
                format!("v{n}"),
                &[("cache-control", SWR_10_60), ("etag", "\"v1\"")],
            )
        }
    });
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(15).await;
    assert_eq!(
        send_whole(&svc, get("/a")).await.info.status,
        CacheStatus::Stale
    );
    settle().await;
    // The 304 updates nothing: the refresh asks for the representation itself.
    assert_eq!(calls.get(), 3);
    let next = send_whole(&svc, get("/a")).await;
    assert!(
        !(next.info.status == CacheStatus::Fresh && text(&next) == "v1"),
        "the \"v1\" entry was freshened by a 304 for \"v2\""
    );
    assert_eq!((next.info.status, text(&next)), (CacheStatus::Fresh, "v3"));
}

#[tokio::test(start_paused = true)]
async fn a_304_with_another_last_modified_and_no_etag_does_not_freshen_the_entry() {
    // RFC 9111 §4.3.4: the 304's (weak) validator matches no stored response: no update.
    const OLD: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
    const NEW: &str = "Mon, 07 Nov 1994 08:49:37 GMT";
    let (origin, _calls, _) = serve_with(|n, request| {
        if request.headers().get("if-modified-since").is_some() {
            respond(
                304,
                "",
                &[("cache-control", "max-age=600"), ("last-modified", NEW)],
            )
        } else {
            respond(
                200,
                format!("v{n}"),
                &[("cache-control", "max-age=10"), ("last-modified", OLD)],
            )
        }
    });
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(20).await;
    send_whole(&svc, get("/a")).await;
    advance(5).await;
    let next = send_whole(&svc, get("/a")).await;
    assert!(
        !(next.info.status == CacheStatus::Fresh && text(&next) == "v1"),
        "the entry last modified {OLD} was freshened by a 304 for {NEW}"
    );
}

// ---------------------------------------------------------------------------------------------
// Age on forwarded answers, refreshes replaced by cacheable errors.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_stored_miss_keeps_the_origins_age() {
    // The response is 30 s old when it arrives: an answer claiming less would let the next
    // cache downstream keep it too long (RFC 9111 §4.2.3, §5.1).
    let (origin, _calls) = fixed(
        200,
        vec![
            ("cache-control", "max-age=100".into()),
            ("age", "30".into()),
        ],
    );
    let svc = SwrLayer::new().layer(origin);
    let miss = send_whole(&svc, get("/a")).await;
    let age: u64 = hdr(&miss, "age")
        .expect("the origin's Age")
        .parse()
        .unwrap();
    assert!(
        age >= 30,
        "Age {age} on the miss is less than the origin's 30"
    );
}

#[tokio::test(start_paused = true)]
async fn a_bypassed_answer_keeps_the_origins_age() {
    let (origin, _calls) = fixed(200, vec![("age", "30".into())]);
    let svc = SwrLayer::new().layer(origin);
    let post = send_whole(&svc, request(Method::POST, "/a")).await;
    assert_eq!(hdr(&post, "age"), Some("30"));
}

#[tokio::test(start_paused = true)]
async fn a_revalidated_answer_counts_the_age_the_304_brings() {
    let (origin, _calls, _) = serve_with(|n, request| {
        if request.headers().get("if-none-match").is_some() {
            respond(304, "", &[("etag", "\"v1\""), ("age", "5")])
        } else {
            respond(
                200,
                format!("v{n}"),
                &[("cache-control", "max-age=10"), ("etag", "\"v1\"")],
            )
        }
    });
    let svc = SwrLayer::shared_cache().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(20).await;
    send_whole(&svc, get("/a")).await;
    advance(2).await;
    let hit = send_whole(&svc, get("/a")).await;
    let age: u64 = hdr(&hit, "age").unwrap().parse().unwrap();
    assert!(
        (7..=8).contains(&age),
        "Age {age}: the 304 was 5 s old, then 2 s passed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_background_refresh_answered_404_replaces_the_entry() {
    let (origin, calls, _) = serve_with(|n, _| {
        if n == 1 {
            respond(200, "here", &[("cache-control", SWR_10_60)])
        } else {
            respond(404, "gone", &[("cache-control", "max-age=60")])
        }
    });
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get("/a")).await;
    advance(15).await;
    assert_eq!(text(&send_whole(&svc, get("/a")).await), "here");
    settle().await;
    let after = send_whole(&svc, get("/a")).await;
    assert_eq!(
        (after.status, text(&after)),
        (StatusCode::NOT_FOUND, "gone")
    );
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn cache_status_of_a_miss_on_another_variant_says_fwd_vary_miss() {
    // RFC 9211 §2.2: vary-miss, "the cache had a stored response, but Vary did not match".
    let (origin, _calls) = varying("accept-language");
    let svc = SwrLayer::new().layer(origin);
    send_whole(&svc, get_headers("/a", &[("accept-language", "en")])).await;
    let other = send_whole(&svc, get_headers("/a", &[("accept-language", "fr")])).await;
    assert_eq!(
        status_member(&other.headers),
        "tower-swr; fwd=vary-miss; stored"
    );
    assert_valid_cache_status(&other.headers);
}
