//! Security-minded black-box tests, written from the public API and the docs only (README,
//! docs/, CHANGELOG, rustdoc): cache-key confusion and poisoning, `Vary`, credentials never
//! shared, header injection through what the cache echoes, absurd numbers, hostile bodies,
//! failing / panicking / hanging origins, invalidation scope and memory bounds.
//!
//! The rule under test: nothing one user sees may reach another, and bad input gets the
//! origin's own answer or a documented status, never a panic, a hang or another user's data.
//! Tests marked `#[ignore = "FINDING: ..."]` pin behaviour the docs or RFCs forbid.

mod common;

use bytes::Bytes;
use common::*;
use http::{header, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};
use tower_swr::{CacheStatus, SwrLayer, X_CACHE_KEY};

type Headers = &'static [(&'static str, &'static str)];

/// Header pairs: (what the request carries, what the response carries) and the like.
type Pairs<'a> = &'a [(&'a str, &'a str)];

/// Every line of a request header, joined by `|` (lossy for non-UTF-8 bytes).
fn lines(request: &Request<ReqBody>, name: &str) -> String {
    (request.headers().get_all(name).iter())
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect::<Vec<_>>()
        .join("|")
}

/// The host an origin renders for, as axum's `Host` extractor finds it: the first `Host` line,
/// else the target's authority.
fn rendered_host(request: &Request<ReqBody>) -> String {
    match request.headers().get("host") {
        Some(host) => String::from_utf8_lossy(host.as_bytes()).into_owned(),
        None => request.uri().host().unwrap_or("").to_owned(),
    }
}

/// What the origin saw, as its body: a served body names the request it was rendered for.
/// Fields are separated by `"; "` (no target has a space).
fn describe(n: usize, request: &Request<ReqBody>) -> String {
    format!(
        "n={n}; host={}; hosts={}; uri={}; auth={}; cookie={}; v={}; key={};",
        rendered_host(request),
        lines(request, "host"),
        request.uri(),
        lines(request, "authorization"),
        lines(request, "cookie"),
        lines(request, "x-v"),
        lines(request, "x-api-key"),
    )
}

/// An origin rendering [`describe`] with `headers`; records every request it gets.
fn mirror(headers: Headers) -> (impl OriginService, Calls, Seen) {
    let seen = Seen::default();
    let recorder = seen.clone();
    let (service, calls) = origin(move |n, request: Request<ReqBody>| {
        let seen = recorder.clone();
        async move {
            seen.record(&request);
            Ok(respond(200, describe(n, &request), headers))
        }
    });
    (service, calls, seen)
}

/// One answer, read whole.
struct Got {
    status: StatusCode,
    cache: CacheStatus,
    headers: http::HeaderMap,
    body: String,
}

impl Got {
    fn header(&self, name: &str) -> Option<String> {
        (self.headers.get(name)).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
    fn all(&self, name: &str) -> Vec<String> {
        (self.headers.get_all(name).iter())
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }
}

async fn send<S, B>(service: &S, request: Request<ReqBody>) -> Got
where
    S: Service<Request<ReqBody>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let response = service.clone().oneshot(request).await.expect("an answer");
    let cache = info(&response).status;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("a whole body").to_bytes();
    Got {
        status: parts.status,
        cache,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn get_h(uri: &str, headers: &[(&str, &str)]) -> Request<ReqBody> {
    get_headers(uri, headers)
}

/// The `host=` field of a described body.
fn host_of(body: &str) -> &str {
    body.split("; ")
        .find_map(|f| f.strip_prefix("host="))
        .unwrap_or("")
}

fn uri_of(body: &str) -> &str {
    (body.split("; "))
        .find_map(|f| f.strip_prefix("uri="))
        .unwrap_or("")
}

// --- Cache keys: what is rendered is what is keyed ---------------------------------------------

/// An HTTP/2-style absolute target naming `a.example` with `Host: b.example`: the origin renders
/// for the authority (the docs: `Host` is rewritten to it), and `b.example`'s users never get it.
#[tokio::test(start_paused = true)]
async fn absolute_authority_and_host_disagreeing_cannot_poison_the_host() {
    let (origin, calls, seen) = mirror(&[("cache-control", "max-age=600")]);
    let svc = SwrLayer::new().layer(origin);
    let attack = send(&svc, get_h("https://a.example/x", &[("host", "b.example")])).await;
    assert_eq!(host_of(&attack.body), "a.example", "{}", attack.body);
    assert_eq!(
        header_text(&seen.last_headers(), "host").as_deref(),
        Some("a.example")
    );
    let victim = send(&svc, get_h("/x", &[("host", "b.example")])).await;
    assert_eq!(host_of(&victim.body), "b.example", "{}", victim.body);
    assert_eq!(calls.get(), 2);
    // And the authority's own users share the first answer.
    let same = send(&svc, get_h("/x", &[("host", "a.example")])).await;
    assert_eq!(same.cache, CacheStatus::Fresh);
    assert_eq!(host_of(&same.body), "a.example");
}

/// Hosts that name other origins (another port, another name) never share entries, and each
/// served body was rendered for a host equal (ignoring case) to the request's.
#[tokio::test(start_paused = true)]
async fn distinct_hosts_and_ports_never_share_and_each_gets_its_own_rendering() {
    let (origin, _calls, _seen) = mirror(&[("cache-control", "max-age=600")]);
    let svc = SwrLayer::new().layer(origin);
    let hosts = [
        "a.example",
        "a.example:8080",
        "a.example:443",
        "b.example",
        "A.EXAMPLE",
        "a.example.",
        "xn--a-example",
        "127.0.0.1",
        "127.0.0.1:80",
        "[::1]",
        "[::1]:8080",
    ];
    for round in 0..2 {
        for host in hosts {
            let got = send(&svc, get_h("/page", &[("host", host)])).await;
            assert!(
                host_of(&got.body).eq_ignore_ascii_case(host),
                "round {round}: asked for {host}, got {}",
                got.body
            );
        }
    }
}

/// Two `Host` lines: whichever the origin would read (the first, as `HeaderMap::get` and axum
/// do), the answer stored must not be served to the other host's users.
#[tokio::test(start_paused = true)]
async fn duplicate_host_headers_cannot_poison_either_host() {
    for (first, second) in [
        ("evil.example", "victim.example"),
        ("victim.example", "evil.example"),
    ] {
        let (origin, _calls, _seen) = mirror(&[("cache-control", "max-age=600")]);
        let svc = SwrLayer::new().layer(origin);
        let attack = send(&svc, get_h("/home", &[("host", first), ("host", second)])).await;
        assert!(
            attack.status.is_success() || attack.status.is_client_error(),
            "{:?}",
            attack.status
        );
        for host in ["victim.example", "evil.example"] {
            let got = send(&svc, get_h("/home", &[("host", host)])).await;
            assert_eq!(
                host_of(&got.body),
                host,
                "after Host: {first}, {second}: {host} got {}",
                got.body
            );
        }
    }
}

/// Userinfo in an absolute target (`http://victim.example@evil.example/`): the key's host is
/// the one the origin renders for, and neither host is poisoned.
#[tokio::test(start_paused = true)]
async fn userinfo_in_the_authority_cannot_poison_a_host() {
    let (origin, _calls, seen) = mirror(&[("cache-control", "max-age=600")]);
    let svc = SwrLayer::new().layer(origin);
    let _ = send(&svc, get_h("http://victim.example@evil.example/p", &[])).await;
    let sent = header_text(&seen.last_headers(), "host").unwrap_or_default();
    assert!(
        !sent.contains('@'),
        "RFC 9112 §3.2: Host carries no userinfo; the origin was sent Host: {sent}"
    );
    for host in ["victim.example", "evil.example"] {
        let got = send(&svc, get_h("/p", &[("host", host)])).await;
        assert_eq!(host_of(&got.body), host, "{}", got.body);
    }
}

/// `Host` values with characters no host has: never a panic, and no other host poisoned.
#[tokio::test(start_paused = true)]
async fn hosts_with_odd_characters_cannot_poison_another_host() {
    let (origin, _calls, _seen) = mirror(&[("cache-control", "max-age=600")]);
    let svc = SwrLayer::new().x_cache_key_header(true).layer(origin);
    let odd = [
        "victim.example/../x",
        "victim.example evil.example",
        "victim.example@evil.example",
        "victim.example\tx",
        "victim.example:99999",
        "victim.example:",
        "",
        "victim.example#x",
        "victim.example?x",
        "victim.example, evil.example",
    ];
    for host in odd {
        let got = send(&svc, get_h("/p", &[("host", host)])).await;
        assert!(!got.status.is_server_error(), "{host:?}: {:?}", got.status);
    }
    let raw = get_raw("/p", "host", b"victim.example\xff");
    let _ = send(&svc, raw).await;
    let got = send(&svc, get_h("/p", &[("host", "victim.example")])).await;
    assert_eq!(host_of(&got.body), "victim.example", "{}", got.body);
}

/// Paths that mean different resources to an origin that does not normalise are separate keys:
/// each served body was rendered for the request's own target.
#[tokio::test(start_paused = true)]
async fn path_spellings_each_get_the_answer_rendered_for_them() {
    let (origin, _calls, _seen) = mirror(&[("cache-control", "max-age=600")]);
    let svc = SwrLayer::new().layer(origin);
    let targets = [
        "/b",
        "/a/../b",
        "/a/%2e%2e/b",
        "//b",
        "/b/",
        "/B",
        "/a%2Fb",
        "/a/b",
        "/b;jsessionid=1",
        "/b%00",
        "/b?",
        "/b?x=1",
        "/b?x=1&y=2",
        "/b?y=2&x=1",
        "/b?x=1&x=2",
        "/b?x=2&x=1",
        "/b?x=1&x=1",
        "/b?X=1",
        "/b?x=%31",
    ];
    for round in 0..2 {
        for target in targets {
            let got = send(&svc, get_h(target, &[("host", "h.example")])).await;
            assert_eq!(uri_of(&got.body), target, "round {round}: {}", got.body);
        }
    }
}

/// A fragment never reaches a cache over the wire; if a target carries one, it neither breaks
/// the request nor makes it share another's answer.
#[tokio::test(start_paused = true)]
async fn a_target_with_a_fragment_does_not_get_another_targets_answer() {
    let (origin, _calls, _seen) = mirror(&[("cache-control", "max-age=600")]);
    let svc = SwrLayer::new().layer(origin);
    let Ok(request) = Request::builder()
        .uri("/f?q=1#frag")
        .body(Full::<Bytes>::default())
    else {
        return; // http::Uri refuses it: nothing to confuse
    };
    let with = send(&svc, request).await;
    let plain = send(&svc, get("/f?q=2")).await;
    assert!(uri_of(&plain.body).ends_with("q=2"), "{}", plain.body);
    assert!(uri_of(&with.body).contains("q=1"), "{}", with.body);
}

/// A very long target (64 KiB of query) is answered and keyed by all of it: one byte
/// different at the end is another key.
#[tokio::test(start_paused = true)]
async fn very_long_targets_are_keyed_by_every_byte() {
    let (origin, calls, _seen) = mirror(&[("cache-control", "max-age=600")]);
    let svc = SwrLayer::new().layer(origin);
    let long = format!("/l?{}", "a".repeat(60_000));
    let a = send(&svc, get(&format!("{long}1"))).await;
    let b = send(&svc, get(&format!("{long}2"))).await;
    assert!(uri_of(&a.body).ends_with('1'));
    assert!(uri_of(&b.body).ends_with('2'));
    assert_eq!(calls.get(), 2);
    let again = send(&svc, get(&format!("{long}1"))).await;
    assert_eq!(again.cache, CacheStatus::Fresh);
    assert!(uri_of(&again.body).ends_with('1'));
}

/// `X-Forwarded-Host` is not keyed (documented); a handler that renders it and says
/// `Vary: X-Forwarded-Host` gets one entry per value, so a client cannot choose the host of a
/// page stored for everyone.
#[tokio::test(start_paused = true)]
async fn an_unkeyed_forwarded_host_is_separated_by_vary() {
    let (origin, calls) = origin(|n, request: Request<ReqBody>| async move {
        let xfh = lines(&request, "x-forwarded-host");
        Ok(respond(
            200,
            format!("n={n};links=https://{xfh}/"),
            &[
                ("cache-control", "max-age=600"),
                ("vary", "X-Forwarded-Host"),
            ],
        ))
    });
    let svc = SwrLayer::new().layer(origin);
    let attack = send(&svc, get_h("/", &[("x-forwarded-host", "evil.example")])).await;
    assert!(attack.body.contains("evil.example"));
    let victim = send(&svc, get("/")).await;
    assert!(!victim.body.contains("evil"), "{}", victim.body);
    assert_eq!(calls.get(), 2);
}

// --- Vary -----------------------------------------------------------------------------------

/// RFC 9111 §4.1: a header absent from a request matches only a request where it is absent too;
/// an empty value is not absence.
#[tokio::test(start_paused = true)]
async fn vary_absent_and_empty_are_different_variants() {
    let (origin, calls, _seen) = mirror(&[("cache-control", "max-age=600"), ("vary", "x-v")]);
    let svc = SwrLayer::new().layer(origin);
    let absent = send(&svc, get("/v")).await;
    let empty = send(&svc, get_h("/v", &[("x-v", "")])).await;
    assert_eq!(
        calls.get(),
        2,
        "absent: {} / empty: {}",
        absent.body,
        empty.body
    );
    let absent2 = send(&svc, get("/v")).await;
    assert_eq!(absent2.body, absent.body);
    let empty2 = send(&svc, get_h("/v", &[("x-v", "")])).await;
    assert_eq!(empty2.body, empty.body);
    assert_eq!(calls.get(), 2);
}

/// Values differing in case or order are different variants; lines combined into one list are
/// the same variant (RFC 9111 §4.1).
#[tokio::test(start_paused = true)]
async fn vary_values_differing_in_case_or_order_are_not_shared() {
    let (origin, calls, _seen) = mirror(&[("cache-control", "max-age=600"), ("vary", "X-V")]);
    let svc = SwrLayer::new().layer(origin);
    let first = send(&svc, get_h("/v", &[("x-v", "alice")])).await;
    let upper = send(&svc, get_h("/v", &[("x-v", "ALICE")])).await;
    assert_ne!(first.body, upper.body);
    let two_lines = send(&svc, get_h("/v", &[("x-v", "a"), ("x-v", "b")])).await;
    let reversed = send(&svc, get_h("/v", &[("x-v", "b, a")])).await;
    assert_ne!(two_lines.body, reversed.body, "order of values matters");
    assert_eq!(calls.get(), 4);
    let same = send(&svc, get_h("/v", &[("x-v", "alice")])).await;
    assert_eq!(same.body, first.body);
}

/// `Vary: Cookie` on a `public` response: each cookie its own variant, never another's.
#[tokio::test(start_paused = true)]
async fn vary_cookie_keeps_users_apart() {
    let (origin, calls, _seen) =
        mirror(&[("cache-control", "public, max-age=600"), ("vary", "Cookie")]);
    let svc = SwrLayer::new().layer(origin);
    let alice = send(&svc, get_h("/me", &[("cookie", "session=alice")])).await;
    assert!(alice.body.contains("session=alice"));
    let bob = send(&svc, get_h("/me", &[("cookie", "session=bob")])).await;
    assert!(bob.body.contains("session=bob"), "{}", bob.body);
    let anon = send(&svc, get("/me")).await;
    assert!(!anon.body.contains("session="), "{}", anon.body);
    assert_eq!(calls.get(), 3);
}

/// `Vary: Authorization` with `public`: one user's variant never reaches another user.
#[tokio::test(start_paused = true)]
async fn vary_authorization_keeps_users_apart() {
    let (origin, _calls, _seen) = mirror(&[
        ("cache-control", "public, max-age=600"),
        ("vary", "Authorization"),
    ]);
    let svc = SwrLayer::new().layer(origin);
    for _ in 0..2 {
        for user in ["Bearer alice", "Bearer bob", "Basic Ym9iOnB3"] {
            let got = send(&svc, get_h("/acct", &[("authorization", user)])).await;
            assert!(
                got.body.contains(&format!("auth={user};")),
                "{user}: {}",
                got.body
            );
        }
        let anon = send(&svc, get("/acct")).await;
        assert!(anon.body.contains("auth=;"), "{}", anon.body);
    }
}

/// `Vary: *` is never stored nor shared.
#[tokio::test(start_paused = true)]
async fn vary_star_is_never_shared() {
    let (origin, calls, _seen) = mirror(&[("cache-control", "public, max-age=600"), ("vary", "*")]);
    let svc = SwrLayer::shared_cache().layer(origin);
    let a = send(&svc, get("/star")).await;
    let b = send(&svc, get("/star")).await;
    assert_ne!(a.body, b.body);
    assert_eq!(calls.get(), 2);
}

/// An attacker minting thousands of variants cannot grow the cache past its budget, and the
/// variants still each get their own body.
#[tokio::test(start_paused = true)]
async fn thousands_of_variants_stay_within_the_memory_budget() {
    let (origin, _calls, _seen) = mirror(&[("cache-control", "max-age=600"), ("vary", "x-v")]);
    let layer = SwrLayer::new().capacity_bytes(256 << 10);
    let cache = layer.handle();
    let svc = layer.layer(origin);
    for i in 0..3000 {
        let v = format!("{i:0>200}");
        let got = send(&svc, get_h("/many", &[("x-v", &v)])).await;
        assert!(got.body.contains(&format!("v={v};")));
        assert!(cache.stats().bytes <= 256 << 10, "{:?}", cache.stats());
    }
    let got = send(&svc, get_h("/many", &[("x-v", "last")])).await;
    assert!(got.body.contains("v=last;"));
}

// --- Credentials ----------------------------------------------------------------------------

/// An answer to a request with `Authorization` that does not say `public`/`s-maxage`/
/// `must-revalidate` is neither stored for others nor answered from another's entry.
#[tokio::test(start_paused = true)]
async fn an_authorized_answer_is_never_served_to_another_user() {
    let (origin, calls, _seen) = mirror(&[("cache-control", "max-age=600")]);
    let svc = SwrLayer::new().layer(origin);
    let alice = send(&svc, get_h("/inbox", &[("authorization", "Bearer alice")])).await;
    assert!(alice.body.contains("auth=Bearer alice;"));
    let anon = send(&svc, get("/inbox")).await;
    assert!(!anon.body.contains("alice"), "{}", anon.body);
    let bob = send(&svc, get_h("/inbox", &[("authorization", "Bearer bob")])).await;
    assert!(bob.body.contains("auth=Bearer bob;"), "{}", bob.body);
    assert_eq!(calls.get(), 3);
}

/// The docs: an entry stored for everyone is "never served to such a request otherwise" — a
/// request with `Authorization` asks the origin itself.
#[tokio::test(start_paused = true)]
async fn an_authorized_request_is_not_answered_from_an_anonymous_entry() {
    let (origin, calls, _seen) = mirror(&[("cache-control", "max-age=600")]);
    let svc = SwrLayer::new().layer(origin);
    let _ = send(&svc, get("/inbox")).await;
    let alice = send(&svc, get_h("/inbox", &[("authorization", "Bearer alice")])).await;
    assert!(alice.body.contains("auth=Bearer alice;"), "{}", alice.body);
    assert_eq!(calls.get(), 2);
}

/// A request with `Cookie` and a response that is not `public`/`s-maxage`: not shared.
#[tokio::test(start_paused = true)]
async fn a_cookie_answer_is_never_served_to_another_user() {
    let (origin, calls, _seen) = mirror(&[("cache-control", "max-age=600")]);
    let svc = SwrLayer::new().layer(origin);
    let alice = send(&svc, get_h("/cart", &[("cookie", "sid=alice")])).await;
    assert!(alice.body.contains("sid=alice"));
    let anon = send(&svc, get("/cart")).await;
    assert!(!anon.body.contains("alice"), "{}", anon.body);
    let bob = send(&svc, get_h("/cart", &[("cookie", "sid=bob")])).await;
    assert!(bob.body.contains("sid=bob"), "{}", bob.body);
    assert_eq!(calls.get(), 3);
}

/// A header named with `credential_headers` is a credential like `Authorization`.
#[tokio::test(start_paused = true)]
async fn a_named_credential_header_keeps_answers_private() {
    let (origin, calls, _seen) = mirror(&[("cache-control", "max-age=600")]);
    let svc = SwrLayer::new()
        .credential_headers(["x-api-key"])
        .layer(origin);
    let alice = send(&svc, get_h("/data", &[("x-api-key", "alice-key")])).await;
    assert!(alice.body.contains("key=alice-key"));
    let anon = send(&svc, get("/data")).await;
    assert!(!anon.body.contains("alice"), "{}", anon.body);
    let bob = send(&svc, get_h("/data", &[("x-api-key", "bob-key")])).await;
    assert!(bob.body.contains("key=bob-key"), "{}", bob.body);
    assert_eq!(calls.get(), 3);
}

/// `Set-Cookie` responses are never stored, in either preset.
#[tokio::test(start_paused = true)]
async fn set_cookie_is_never_replayed_to_another_user() {
    for shared in [false, true] {
        let (origin, calls) = origin(|n, _| async move {
            Ok(respond(
                200,
                format!("hello {n}"),
                &[
                    ("cache-control", "public, max-age=600, s-maxage=600"),
                    ("set-cookie", &*format!("sid=user{n}; HttpOnly")),
                ],
            ))
        });
        let layer = if shared {
            SwrLayer::shared_cache()
        } else {
            SwrLayer::new()
        };
        let svc = layer.layer(origin);
        let first = send(&svc, get("/login")).await;
        assert_eq!(first.all("set-cookie"), ["sid=user1; HttpOnly"]);
        let second = send(&svc, get("/login")).await;
        assert!(
            !second.all("set-cookie").iter().any(|c| c.contains("user1")),
            "shared={shared}: {:?}",
            second.all("set-cookie")
        );
        assert_eq!(calls.get(), 2);
    }
}

/// `private` (plain) is never stored.
#[tokio::test(start_paused = true)]
async fn private_responses_are_never_shared() {
    for cc in [
        "private, max-age=600",
        "max-age=600, PRIVATE",
        "private=, max-age=600",
    ] {
        let (origin, calls, _seen) = mirror(leak(cc));
        let svc = SwrLayer::shared_cache().layer(origin);
        let a = send(&svc, get("/p")).await;
        let b = send(&svc, get("/p")).await;
        assert_ne!(a.body, b.body, "{cc}");
        assert_eq!(calls.get(), 2, "{cc}");
    }
}

fn leak(cc: &str) -> Headers {
    let headers: Vec<(&'static str, &'static str)> =
        vec![("cache-control", Box::leak(cc.to_owned().into_boxed_str()))];
    Box::leak(headers.into_boxed_slice())
}

/// RFC 9111 §5.2.2.7: `private="X-User"` lets a shared cache store the response but not the
/// named field. Either way, the next user never gets `X-User: alice` (nor its `Set-Cookie`).
#[tokio::test(start_paused = true)]
async fn qualified_private_field_names_never_reach_another_user() {
    for cc in [
        "max-age=600, private=\"X-User\"",
        "max-age=600, private=\"Set-Cookie, X-User\"",
        "max-age=600, no-cache=\"X-User\"",
        "max-age=600, private=X-User",
    ] {
        let (origin, _calls) = origin(move |n, _| async move {
            Ok(respond(
                200,
                format!("page {n}"),
                &[
                    ("cache-control", cc),
                    ("x-user", if n == 1 { "alice" } else { "other" }),
                ],
            ))
        });
        for layer in [SwrLayer::new(), SwrLayer::shared_cache()] {
            let svc = layer.layer(origin.clone());
            let first = send(&svc, get("/q")).await;
            let second = send(&svc, get("/q")).await;
            if first.header("x-user").as_deref() == Some("alice") {
                assert_ne!(
                    second.header("x-user").as_deref(),
                    Some("alice"),
                    "{cc}: the named field reached the next user ({:?}, body {})",
                    second.cache,
                    second.body
                );
            }
        }
    }
}

/// `private="Set-Cookie"` / `no-cache="Set-Cookie"`: the cookie is never replayed.
#[tokio::test(start_paused = true)]
async fn qualified_set_cookie_forms_never_replay_the_cookie() {
    for cc in [
        "max-age=600, private=\"Set-Cookie\"",
        "max-age=600, no-cache=\"Set-Cookie\"",
        "public, max-age=600, no-cache=\"set-cookie\"",
    ] {
        let (origin, _calls) = origin(move |n, _| async move {
            Ok(respond(
                200,
                format!("page {n}"),
                &[("cache-control", cc), ("set-cookie", &*format!("sid=u{n}"))],
            ))
        });
        let svc = SwrLayer::shared_cache().layer(origin);
        let _ = send(&svc, get("/sc")).await;
        let second = send(&svc, get("/sc")).await;
        assert!(
            !second.all("set-cookie").contains(&"sid=u1".to_owned()),
            "{cc}: {:?}",
            second.all("set-cookie")
        );
    }
}

/// An anonymous entry goes stale; a request with `Authorization` (or `Cookie`) arrives: no
/// refresh may carry that user's credential into the entry everyone else gets.
#[tokio::test(start_paused = true)]
async fn a_credentialed_request_never_refreshes_the_shared_entry_with_its_credential() {
    for (name, value) in [
        ("authorization", "Bearer alice"),
        ("cookie", "sid=alice"),
        ("x-api-key", "alice-key"),
    ] {
        let (origin, calls, _seen) = mirror(&[("cache-control", SWR_10_60)]);
        let svc = SwrLayer::new()
            .credential_headers(["x-api-key"])
            .layer(origin);
        let _ = send(&svc, get("/feed")).await;
        tokio::time::advance(secs(15)).await;
        let alice = send(&svc, get_h("/feed", &[(name, value)])).await;
        // Her own answer may be rendered for her; it must not be the shared entry's refresh.
        assert!(alice.status.is_success(), "{name}");
        settle().await;
        for _ in 0..2 {
            let anon = send(&svc, get("/feed")).await;
            assert!(!anon.body.contains("alice"), "{name}: {}", anon.body);
            settle().await;
        }
        tokio::time::advance(secs(20)).await;
        let anon = send(&svc, get("/feed")).await;
        assert!(!anon.body.contains("alice"), "{name}: {}", anon.body);
        settle().await;
        assert!(
            calls.get() >= 2,
            "{name}: the origin was asked again at some point"
        );
    }
}

/// A `public` entry stored from alice's request is refreshed with alice's credential (the docs:
/// "a refresh sends the storing request's value, not the triggering client's"): bob's
/// credential never reaches the origin through a refresh whose answer everyone gets.
#[tokio::test(start_paused = true)]
async fn a_refresh_sends_the_storing_credential_not_the_triggering_clients() {
    let (origin, _calls, seen) = mirror(&[(
        "cache-control",
        "public, max-age=10, stale-while-revalidate=60",
    )]);
    let svc = SwrLayer::new().layer(origin);
    let _ = send(&svc, get_h("/pub", &[("authorization", "Bearer alice")])).await;
    tokio::time::advance(secs(15)).await;
    let _ = send(&svc, get_h("/pub", &[("authorization", "Bearer bob")])).await;
    settle().await;
    settle().await;
    let all = seen.0.lock().unwrap().clone();
    for (i, (_, _, headers)) in all.iter().enumerate().skip(1) {
        let auth = header_text(headers, "authorization");
        assert_ne!(
            auth.as_deref(),
            Some("Bearer bob"),
            "origin call {} carried the triggering client's credential",
            i + 1
        );
    }
}

/// RFC 9111 §4.3.4: a 304 on revalidation updates the stored headers, but a `Set-Cookie` it
/// carries is for the request that got it, never replayed from the entry.
#[tokio::test(start_paused = true)]
async fn a_304_with_set_cookie_is_not_replayed_from_the_entry() {
    let (origin, calls) = origin(|n, request: Request<ReqBody>| async move {
        Ok(if request.headers().contains_key("if-none-match") {
            respond(
                304,
                "",
                &[
                    ("etag", "\"e1\""),
                    ("cache-control", "max-age=600"),
                    ("set-cookie", &*format!("sid=user{n}")),
                ],
            )
        } else {
            respond(
                200,
                "body",
                &[("etag", "\"e1\""), ("cache-control", "max-age=1")],
            )
        })
    });
    for layer in [SwrLayer::shared_cache(), SwrLayer::new()] {
        let svc = layer.layer(origin.clone());
        let _ = send(&svc, get("/r")).await;
        tokio::time::advance(secs(200)).await;
        let _revalidated = send(&svc, get("/r")).await;
        settle().await;
        settle().await;
        tokio::time::advance(secs(2)).await;
        for _ in 0..2 {
            let before = calls.get();
            let next = send(&svc, get("/r")).await;
            let after = calls.get();
            assert_eq!(next.body, "body");
            // A cookie may come only from an origin call made for this very request.
            let own = if after > before {
                vec![format!("sid=user{after}")]
            } else {
                vec![]
            };
            assert!(
                next.all("set-cookie").iter().all(|c| own.contains(c)),
                "an earlier 304's Set-Cookie was replayed: {:?} ({:?}, calls {before} -> {after})",
                next.all("set-cookie"),
                next.cache
            );
        }
    }
    assert!(calls.get() >= 2);
}

/// `allow_private(true)` with the user in the key: each user gets only their own answer.
#[tokio::test(start_paused = true)]
async fn per_user_keys_keep_private_answers_apart() {
    let (origin, calls, _seen) = mirror(&[("cache-control", "private, max-age=600")]);
    let svc = SwrLayer::new()
        .allow_private(true)
        .key_fn(|parts| {
            Some(
                (parts.headers.get("x-user"))
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("anon")
                    .to_owned(),
            )
        })
        .layer(origin);
    let a = send(&svc, get_h("/me", &[("x-user", "alice"), ("x-v", "alice")])).await;
    let b = send(&svc, get_h("/me", &[("x-user", "bob"), ("x-v", "bob")])).await;
    assert!(a.body.contains("v=alice;"));
    assert!(b.body.contains("v=bob;"), "{}", b.body);
    let a2 = send(&svc, get_h("/me", &[("x-user", "alice")])).await;
    assert_eq!(a2.body, a.body);
    let anon = send(&svc, get("/me")).await;
    assert!(!anon.body.contains("alice") && !anon.body.contains("bob"));
    assert_eq!(calls.get(), 3);
}

// --- Coalescing must not cross users --------------------------------------------------------

/// An origin answering `headers` once `gate` opens, with [`describe`] as its body.
fn gated_mirror(gate: &Gate, headers: Headers) -> (impl OriginService, Calls) {
    let gate = gate.clone();
    origin(move |n, request: Request<ReqBody>| {
        let gate = gate.clone();
        async move {
            let text = describe(n, &request);
            gate.wait().await;
            Ok(respond(200, text, headers))
        }
    })
}

/// Two concurrent requests for one key, the first (the leader) with a credential or a variant
/// the response makes unshareable: the waiter never gets the leader's answer.
async fn waiter_gets_its_own(headers: Headers, leader: (&str, &str), waiter: &[(&str, &str)]) {
    let gate = Gate::new();
    let (origin, _calls) = gated_mirror(&gate, headers);
    let svc = SwrLayer::new()
        .credential_headers(["x-api-key"])
        .layer(origin);
    let first = tokio::spawn({
        let svc = svc.clone();
        let leader = [(leader.0.to_owned(), leader.1.to_owned())];
        async move {
            let h: Vec<(&str, &str)> = leader.iter().map(|(a, b)| (&**a, &**b)).collect();
            send(&svc, get_h("/shared", &h)).await
        }
    });
    settle().await;
    let second = tokio::spawn({
        let svc = svc.clone();
        let waiter: Vec<(String, String)> = (waiter.iter())
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect();
        async move {
            let h: Vec<(&str, &str)> = waiter.iter().map(|(a, b)| (&**a, &**b)).collect();
            send(&svc, get_h("/shared", &h)).await
        }
    });
    settle().await;
    gate.open();
    let first = first.await.unwrap();
    let second = second.await.unwrap();
    assert!(first.body.contains(leader.1), "{}", first.body);
    assert!(
        !second.body.contains(leader.1),
        "{headers:?}: the waiter got the leader's answer: {} ({:?})",
        second.body,
        second.cache
    );
}

#[tokio::test(start_paused = true)]
async fn a_waiter_never_gets_an_authorized_leaders_answer() {
    waiter_gets_its_own(
        &[("cache-control", "max-age=600")],
        ("authorization", "Bearer alice"),
        &[],
    )
    .await;
    waiter_gets_its_own(
        &[("cache-control", "max-age=600")],
        ("authorization", "Bearer alice"),
        &[("authorization", "Bearer bob")],
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_waiter_never_gets_a_cookie_or_api_key_leaders_answer() {
    waiter_gets_its_own(
        &[("cache-control", "max-age=600")],
        ("cookie", "sid=alice"),
        &[],
    )
    .await;
    waiter_gets_its_own(
        &[("cache-control", "max-age=600")],
        ("x-api-key", "alice-key"),
        &[],
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_waiter_never_gets_a_private_or_set_cookie_or_other_variant_answer() {
    waiter_gets_its_own(
        &[("cache-control", "private, max-age=600")],
        ("x-v", "alice"),
        &[],
    )
    .await;
    waiter_gets_its_own(
        &[
            ("cache-control", "max-age=600"),
            ("set-cookie", "sid=leader"),
        ],
        ("x-v", "alice"),
        &[],
    )
    .await;
    waiter_gets_its_own(
        &[("cache-control", "max-age=600"), ("vary", "x-v")],
        ("x-v", "alice"),
        &[("x-v", "bob")],
    )
    .await;
    waiter_gets_its_own(&[("cache-control", "no-store")], ("x-v", "alice"), &[]).await;
}

// --- What the cache echoes: X-Cache-Key, Cache-Status ---------------------------------------

/// A key function returning CR/LF, NUL or non-ASCII text, with `X-Cache-Key` on: no panic, no
/// injected header, and every echoed value is a valid header value.
#[tokio::test(start_paused = true)]
async fn x_cache_key_cannot_be_used_for_header_injection() {
    let (origin, _calls, _seen) = mirror(&[("cache-control", "max-age=600")]);
    let svc = SwrLayer::new()
        .x_cache_key_header(true)
        .key_fn(|parts| {
            (parts.headers.get("x-user"))
                .and_then(|v| v.to_str().ok())
                .map(|user| match user {
                    "crlf" => "u\r\nSet-Cookie: pwned=1\r\n".to_owned(),
                    "nul" => "u\0x".to_owned(),
                    "utf8" => "üser→".to_owned(),
                    other => other.to_owned(),
                })
        })
        .layer(origin);
    for user in ["crlf", "nul", "utf8", "plain"] {
        for _ in 0..2 {
            let got = send(&svc, get_h("/k?a=%0d%0aX-Evil:%201", &[("x-user", user)])).await;
            assert!(got.status.is_success(), "{user}");
            assert!(!got.headers.contains_key("x-evil"));
            assert!(
                !got.all("set-cookie").iter().any(|c| c.contains("pwned")),
                "{user}: injected"
            );
            for value in got.headers.get_all(&X_CACHE_KEY) {
                assert!(
                    !value
                        .as_bytes()
                        .iter()
                        .any(|b| matches!(b, b'\r' | b'\n' | 0)),
                    "{user}: {value:?}"
                );
            }
        }
    }
}

/// `Vary` values (tabs, obs-text, non-UTF-8) echoed in `X-Cache-Key` stay valid header values,
/// and `Cache-Status` stays ASCII.
#[tokio::test(start_paused = true)]
async fn echoed_status_headers_stay_valid_with_hostile_request_bytes() {
    let (origin, _calls, _seen) = mirror(&[("cache-control", "max-age=600"), ("vary", "x-v")]);
    let svc = SwrLayer::new().x_cache_key_header(true).layer(origin);
    for value in [
        &b"a\tb"[..],
        b"\xff\xfe",
        b"\"quoted\";detail=x",
        b"x, y",
        b" spaced ",
    ] {
        for _ in 0..2 {
            let response = (svc.clone().oneshot(get_raw("/e", "x-v", value)).await).unwrap();
            for line in response.headers().get_all(&tower_swr::CACHE_STATUS) {
                let text = line.to_str().expect("Cache-Status is visible ASCII");
                assert!(text.starts_with("tower-swr;"), "{text}");
                assert!(
                    !text.contains("detail=x"),
                    "request bytes reached Cache-Status: {text}"
                );
            }
            body(response).await.unwrap();
        }
    }
    let _ = send(&svc, get_raw("/e", "host", b"h\xff.example")).await;
}

// --- Numbers --------------------------------------------------------------------------------

/// Absurd lifetimes and ages never panic and never make `Age` wrap round to something small.
#[tokio::test(start_paused = true)]
async fn absurd_numbers_in_lifetimes_and_ages_do_not_panic_or_wrap() {
    let cases: &[&[(&str, &str)]] = &[
        &[("cache-control", "max-age=99999999999999999999")],
        &[("cache-control", "s-maxage=18446744073709551616, max-age=1")],
        &[(
            "cache-control",
            "max-age=9223372036854775807, stale-while-revalidate=18446744073709551615, stale-if-error=99999999999999999999999",
        )],
        &[("cache-control", "max-age=60"), ("age", "18446744073709551616")],
        &[("cache-control", "max-age=60"), ("age", "18446744073709551615")],
        &[("cache-control", "max-age=60"), ("age", "4294967296")],
        &[("expires", "Fri, 31 Dec 9999 23:59:59 GMT")],
        &[("date", "Fri, 31 Dec 9999 23:59:59 GMT"), ("cache-control", "max-age=60")],
        &[("date", "Thu, 01 Jan 1970 00:00:00 GMT"), ("cache-control", "max-age=60")],
        &[("last-modified", "Fri, 31 Dec 9999 23:59:59 GMT")],
        &[("last-modified", "Thu, 01 Jan 1970 00:00:00 GMT")],
    ];
    for headers in cases {
        for layer in [SwrLayer::new(), SwrLayer::shared_cache()] {
            let (origin, _calls) = fixed_origin(
                (headers.iter())
                    .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
                    .collect(),
                StatusCode::OK,
                None,
            );
            let svc = layer.layer(origin);
            for step in [0, 1, 3600, 400 * DAY] {
                tokio::time::advance(secs(step)).await;
                let got = send(&svc, get("/n")).await;
                assert_eq!(got.status, StatusCode::OK, "{headers:?}");
                assert!(got.body.starts_with("call "), "{headers:?}");
                if let Some(age) = got.header("age") {
                    let age: u128 = age
                        .parse()
                        .unwrap_or_else(|_| panic!("{headers:?} {:?}: Age {age}", got.cache));
                    if headers.iter().any(|(n, v)| *n == "age" && v.len() > 9) {
                        assert!(age >= 60, "{headers:?}: Age wrapped to {age}");
                    }
                }
            }
        }
    }
}

/// Lifetimes that do not parse (`-1`, `1e3`, `0x10`, `+5`) or an `Age` past the lifetime make
/// the response stale on arrival: the next request asks the origin (no default windows).
#[tokio::test(start_paused = true)]
async fn invalid_or_overflowing_freshness_is_not_reused() {
    let cases: &[&[(&str, &str)]] = &[
        &[("cache-control", "max-age=-1")],
        &[("cache-control", "max-age=1e3")],
        &[("cache-control", "max-age=0x10")],
        &[("cache-control", "max-age=+5")],
        &[
            ("cache-control", "max-age=60"),
            ("age", "18446744073709551616"),
        ],
        &[("expires", "garbage")],
        &[("expires", "0")],
        &[
            ("cache-control", "max-age=60"),
            ("date", "Mon, 01 Jan 1990 00:00:00 GMT"),
        ],
    ];
    for headers in cases {
        let (origin, calls) = fixed_origin(
            (headers.iter())
                .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
                .collect(),
            StatusCode::OK,
            None,
        );
        let svc = SwrLayer::shared_cache().layer(origin);
        let first = send(&svc, get("/s")).await;
        tokio::time::advance(secs(2)).await;
        let second = send(&svc, get("/s")).await;
        assert_eq!(first.body, "call 1");
        assert_eq!(
            second.body, "call 2",
            "{headers:?}: a response stale on arrival was reused ({:?})",
            second.cache
        );
        assert_eq!(calls.get(), 2);
    }
}

/// Conflicting `Content-Length` lines from the origin: a hit's framing matches its body.
#[tokio::test(start_paused = true)]
async fn conflicting_content_lengths_are_not_replayed() {
    for lengths in [
        &["5", "7"][..],
        &["10", "10"],
        &["99999999999999999999"],
        &["-1"],
        &["1, 2"],
    ] {
        let headers: Vec<(HeaderName, HeaderValue)> = std::iter::once((
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=600"),
        ))
        .chain(
            lengths
                .iter()
                .map(|l| (header::CONTENT_LENGTH, HeaderValue::from_static(l))),
        )
        .collect();
        let (origin, _calls) = fixed_origin(
            headers,
            StatusCode::OK,
            Some(Bytes::from_static(b"0123456789")),
        );
        let svc = SwrLayer::new().layer(origin);
        for _ in 0..2 {
            let got = send(&svc, get("/cl")).await;
            assert_eq!(got.body, "0123456789", "{lengths:?}");
            let declared = got.all("content-length");
            if got.cache == CacheStatus::Fresh {
                assert!(
                    declared.iter().all(|d| d == "10"),
                    "{lengths:?}: a hit declares {declared:?} for 10 bytes"
                );
            }
        }
    }
}

/// Hostile `Range` values on a stored 10-byte body: `206` with a range inside the body, `200`
/// with the whole body, or `416` — never a panic nor bytes outside the body.
#[tokio::test(start_paused = true)]
async fn hostile_ranges_are_answered_sanely() {
    let (origin, _calls) = fixed_origin(
        vec![(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=600"),
        )],
        StatusCode::OK,
        Some(Bytes::from_static(b"0123456789")),
    );
    let svc = SwrLayer::new().layer(origin);
    let _ = send(&svc, get("/range")).await;
    for range in [
        "bytes=0-18446744073709551615",
        "bytes=0-18446744073709551616",
        "bytes=18446744073709551615-",
        "bytes=18446744073709551616-",
        "bytes=-18446744073709551615",
        "bytes=-0",
        "bytes=5-2",
        "bytes=10-",
        "bytes=9-9",
        "bytes=-1",
        "bytes=0-0,1-1,2-2,3-3,4-4,5-5,6-6,7-7,8-8,9-9",
        "bytes=0-1, 0-1",
        "bytes=--1",
        "bytes=1--2",
        "items=0-1",
        "bytes= 2 - 3 ",
        "bytes=\t1-2",
    ] {
        let got = send(&svc, get_h("/range", &[("range", range)])).await;
        match got.status.as_u16() {
            200 => assert_eq!(got.body, "0123456789", "{range}"),
            206 => {
                let content_range = got.header("content-range").unwrap_or_default();
                let spec = content_range.strip_prefix("bytes ").expect("bytes unit");
                let (span, total) = spec.split_once('/').unwrap();
                assert_eq!(total, "10", "{range}");
                let (a, b) = span.split_once('-').unwrap();
                let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
                assert!(a <= b && b < 10, "{range}: {content_range}");
                assert_eq!(got.body, &"0123456789"[a..=b], "{range}");
            }
            416 => assert!(!got.body.contains("0123456789"), "{range}"),
            other => panic!("{range}: status {other}"),
        }
    }
}

/// `If-Modified-Since` that is garbage is ignored (RFC 9110 §13.1.3); `If-None-Match` junk
/// never matches the stored `ETag`.
#[tokio::test(start_paused = true)]
async fn garbage_conditionals_never_get_a_304() {
    let (origin, _calls) = fixed_origin(
        vec![
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=600"),
            ),
            (
                header::LAST_MODIFIED,
                HeaderValue::from_static("Mon, 01 Jan 2024 00:00:00 GMT"),
            ),
            (header::ETAG, HeaderValue::from_static("\"v1\"")),
        ],
        StatusCode::OK,
        Some(Bytes::from_static(b"whole")),
    );
    let svc = SwrLayer::new().layer(origin);
    let _ = send(&svc, get("/c")).await;
    for (name, value) in [
        ("if-modified-since", "garbage"),
        (
            "if-modified-since",
            "Mon, 01 Jan 2024 00:00:00 GMT, Tue, 02 Jan 2024 00:00:00 GMT",
        ),
        ("if-modified-since", "99999999999999999999"),
        ("if-none-match", "\"v2\""),
        ("if-none-match", "v1"),
        ("if-none-match", "\"v1"),
        ("if-none-match", "W/\"v2\", \"v3\""),
    ] {
        let got = send(&svc, get_h("/c", &[(name, value)])).await;
        assert_eq!(got.status, StatusCode::OK, "{name}: {value}");
        assert_eq!(got.body, "whole");
    }
}

// --- Bodies ---------------------------------------------------------------------------------

/// Reads a body whole in its own task: `Ok(Ok(bytes))`, `Ok(Err(body error))` or `Err` when
/// reading it panicked.
async fn read_in_task<B>(response: Response<B>) -> Result<Result<Bytes, String>, String>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    tokio::spawn(async move {
        match response.into_body().collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(error) => Err(error.to_string()),
        }
    })
    .await
    .map_err(|join| format!("reading the body panicked: {join}"))
}

/// A body longer than `max_body_bytes` (with `Content-Length`, and streamed without) reaches
/// its client whole and is not stored.
#[tokio::test(start_paused = true)]
async fn bodies_over_the_limit_stream_whole_and_are_not_stored() {
    for streamed in [false, true] {
        let data = patterned_bytes(5000);
        let (origin, calls) = origin(move |_, _| {
            let data = data.clone();
            async move {
                let mut response = if streamed {
                    Response::new(ChunkedBody::new(data, 700))
                } else {
                    let mut r = Response::new(ChunkedBody::new(data, 5000));
                    r.headers_mut()
                        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("5000"));
                    r
                };
                response.headers_mut().insert(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("max-age=600"),
                );
                Ok::<_, BoxError>(response)
            }
        });
        let svc = SwrLayer::new().max_body_bytes(1000).layer(origin);
        for _ in 0..2 {
            let response = svc.clone().oneshot(get("/big")).await.unwrap();
            let got = read_in_task(response).await.unwrap().unwrap();
            assert_eq!(got, patterned_bytes(5000), "streamed={streamed}");
        }
        assert_eq!(
            calls.get(),
            2,
            "streamed={streamed}: an oversized body was stored"
        );
    }
}

/// An origin body failing halfway is a body error for its client (not a clean, truncated
/// 200), nothing is stored, and the next user gets a whole body from a new call.
#[tokio::test(start_paused = true)]
async fn a_body_failing_halfway_is_never_stored_or_served_as_complete() {
    for shared in [false, true] {
        let (origin, calls) = origin(|n, _| async move {
            let body = ChunkedBody::new(patterned_bytes(3000), 500);
            let body = if n == 1 {
                body.failing_with("origin died")
            } else {
                body
            };
            let mut response = Response::new(body);
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=600"),
            );
            Ok::<_, BoxError>(response)
        });
        let layer = if shared {
            SwrLayer::shared_cache()
        } else {
            SwrLayer::new()
        };
        let svc = layer.layer(origin);
        let response = svc.clone().oneshot(get("/half")).await.unwrap();
        let first = read_in_task(response).await.unwrap();
        assert!(
            first.is_err(),
            "shared={shared}: a failed body ended cleanly: {:?}",
            first.map(|b| b.len())
        );
        // Past the failure remembered for a moment (`new()`: 1 s).
        tokio::time::advance(secs(2)).await;
        let response = svc.clone().oneshot(get("/half")).await.unwrap();
        let second = read_in_task(response).await.unwrap().expect("a whole body");
        assert_eq!(second, patterned_bytes(3000));
        assert_eq!(calls.get(), 2);
    }
}

/// Two clients read one streaming fill and the origin's body fails: both get a body error,
/// nothing is stored, and the next request is answered whole by a new call.
#[tokio::test(start_paused = true)]
async fn every_reader_of_a_failing_fill_gets_an_error_and_nothing_is_stored() {
    let (origin, calls, feeds) = fed_origin("max-age=600", None);
    let svc = SwrLayer::new().layer(origin);
    let leader = svc.clone().oneshot(get("/fill")).await.unwrap();
    let leader = tokio::spawn(read_in_task(leader));
    feeds.send(1, "first half;").await;
    settle().await;
    let waiter = tokio::spawn({
        let svc = svc.clone();
        async move {
            let response = svc.oneshot(get("/fill")).await.unwrap();
            read_in_task(response).await
        }
    });
    settle().await;
    feeds.fail(1, "cut").await;
    let leader = leader.await.unwrap().unwrap();
    let waiter = waiter.await.unwrap().unwrap();
    assert!(leader.is_err(), "leader: {leader:?}");
    match &waiter {
        Err(_) => {}
        // A waiter that asked the origin itself must have got a whole body of its own call.
        Ok(bytes) => assert!(!bytes.starts_with(b"first half;") || calls.get() > 1),
    }
    let next = tokio::spawn({
        let svc = svc.clone();
        async move {
            let response = svc.oneshot(get("/fill")).await.unwrap();
            read_in_task(response).await
        }
    });
    settle().await;
    let call = calls.get();
    assert!(call >= 2, "a failed fill was stored");
    feeds.send(call, "whole").await;
    feeds.end(call);
    assert_eq!(next.await.unwrap().unwrap().unwrap(), Bytes::from("whole"));
}

/// The first client of a streaming fill goes away mid-body: a client reading the same fill
/// still gets the whole body, and it is stored whole.
#[tokio::test(start_paused = true)]
async fn a_client_leaving_mid_fill_does_not_truncate_the_others() {
    let (origin, calls, feeds) = fed_origin("max-age=600", None);
    let svc = SwrLayer::new().layer(origin);
    let mut leader = svc.clone().oneshot(get("/fill")).await.unwrap();
    feeds.send(1, "part one;").await;
    let frame = leader.body_mut().frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "part one;");
    let waiter = tokio::spawn({
        let svc = svc.clone();
        async move {
            let response = svc.oneshot(get("/fill")).await.unwrap();
            read_in_task(response).await
        }
    });
    settle().await;
    drop(leader);
    settle().await;
    feeds.send(1, "part two").await;
    feeds.end(1);
    let got = waiter.await.unwrap().unwrap().expect("a whole body");
    assert_eq!(got, Bytes::from("part one;part two"));
    let hit = send(&svc, get("/fill")).await;
    assert_eq!(hit.body, "part one;part two");
    assert_eq!(hit.cache, CacheStatus::Fresh);
    assert_eq!(calls.get(), 1);
}

/// A body that panics while streaming: never a crash of the client's task that a hit
/// could repeat, never stored; the next request gets a whole body.
#[tokio::test(start_paused = true)]
async fn a_body_panicking_midway_is_not_stored() {
    let (origin, calls) = scripted(
        "max-age=600",
        |n| if n == 1 { End::Panic } else { End::Finish },
    );
    let svc = SwrLayer::new().layer(origin);
    let response = svc.clone().oneshot(get("/p")).await.unwrap();
    let first = read_in_task(response).await;
    assert!(
        !matches!(first, Ok(Ok(_))),
        "a panicking body ended cleanly: {first:?}"
    );
    // Within 1 s the failure is remembered (`new()`): a documented `502`, never the truncated body.
    let remembered = send(&svc, get("/p")).await;
    assert!(
        remembered.status == StatusCode::BAD_GATEWAY && remembered.body.is_empty(),
        "{:?} {}",
        remembered.status,
        remembered.body
    );
    tokio::time::advance(secs(2)).await;
    let second = send(&svc, get("/p")).await;
    assert_eq!(
        second.body, "call 2",
        "first: {first:?}; second: {:?} {:?} {:?}",
        second.status, second.cache, second.headers
    );
    assert_eq!(calls.get(), 2);
}

/// A `HEAD` miss is not stored as the `GET` entry (its body is empty).
#[tokio::test(start_paused = true)]
async fn a_head_miss_never_becomes_an_empty_get_entry() {
    let (origin, _calls) = origin(|_, request: Request<ReqBody>| async move {
        let head = request.method() == Method::HEAD;
        Ok(respond(
            200,
            if head { "" } else { "hello" },
            &[("cache-control", "max-age=600"), ("content-length", "5")],
        ))
    });
    for convert in [false, true] {
        let svc = SwrLayer::new().convert_head(convert).layer(origin.clone());
        let head = send(&svc, request(Method::HEAD, "/h")).await;
        assert!(head.body.is_empty());
        let get_ = send(&svc, get("/h")).await;
        assert_eq!(
            get_.body, "hello",
            "convert_head({convert}): {:?}",
            get_.cache
        );
    }
}

// --- Failing, panicking and hanging origins -------------------------------------------------

/// The leader's origin call panics: the request waiting for it is answered (by its own call),
/// never with a panic, and no flight is left behind.
#[tokio::test(start_paused = true)]
async fn a_panicking_leader_hands_over_to_its_waiter() {
    let gate = Gate::new();
    let (origin, calls) = origin({
        let gate = gate.clone();
        move |n, _| {
            let gate = gate.clone();
            async move {
                if n == 1 {
                    gate.wait().await;
                    panic!("origin panicked (on purpose)");
                }
                Ok::<_, BoxError>(reply_cc(format!("ok {n}"), "max-age=600"))
            }
        }
    });
    let layer = SwrLayer::new();
    let cache = layer.handle();
    let svc = layer.layer(origin);
    let leader = tokio::spawn({
        let svc = svc.clone();
        async move { send(&svc, get("/x")).await.body }
    });
    settle().await;
    let waiter = tokio::spawn({
        let svc = svc.clone();
        async move { send(&svc, get("/x")).await }
    });
    settle().await;
    gate.open();
    assert!(
        leader.await.is_err(),
        "the origin's own panic reaches its own caller"
    );
    let waiter = waiter.await.expect("the waiter did not panic");
    assert!(
        waiter.body == "ok 2" || waiter.status == StatusCode::BAD_GATEWAY,
        "{:?} {}",
        waiter.status,
        waiter.body
    );
    // "hands over to its waiters": the waiter asks itself, or gets the documented 502.
    assert!((1..=2).contains(&calls.get()));
    settle().await;
    assert_eq!(cache.stats().loads_running, 0);
}

/// The leader's origin call hangs for ever: a waiter asks again after `lock_timeout` (5 s)
/// and is answered; it does not hang with the leader.
#[tokio::test(start_paused = true)]
async fn a_hanging_leader_holds_its_waiters_no_longer_than_the_lock_timeout() {
    let (origin, _calls) = origin(|n, _| async move {
        if n == 1 {
            std::future::pending::<()>().await;
        }
        Ok::<_, BoxError>(reply_cc(format!("ok {n}"), "max-age=600"))
    });
    let svc = SwrLayer::new().layer(origin);
    let _leader = tokio::spawn({
        let svc = svc.clone();
        async move { send(&svc, get("/hang")).await }
    });
    settle().await;
    let start = tokio::time::Instant::now();
    let waiter = tokio::time::timeout(secs(60), send(&svc, get("/hang")))
        .await
        .expect("the waiter hung with its leader");
    assert_eq!(waiter.body, "ok 2");
    assert!(start.elapsed() <= secs(6), "{:?}", start.elapsed());
}

/// A background refresh that hangs never delays stale answers, and counts as failed after
/// `refresh_timeout`: a later refresh replaces the entry.
#[tokio::test(start_paused = true)]
async fn a_hanging_refresh_never_delays_stale_answers() {
    let (origin, calls) = origin(|n, _| async move {
        if n == 2 {
            std::future::pending::<()>().await;
        }
        Ok::<_, BoxError>(reply_cc(
            format!("v{n}"),
            "max-age=10, stale-while-revalidate=600",
        ))
    });
    let svc = SwrLayer::new()
        .refresh_timeout(secs(5))
        .refresh_backoff(secs(1), secs(1))
        .layer(origin);
    let _ = send(&svc, get("/r")).await;
    tokio::time::advance(secs(11)).await;
    for _ in 0..3 {
        let (answer, took) = timed(svc.clone(), get("/r")).await.unwrap();
        assert_eq!(took, Duration::ZERO);
        assert_eq!(body(answer).await.unwrap(), "v1");
    }
    tokio::time::sleep(secs(8)).await;
    let _ = send(&svc, get("/r")).await;
    tokio::time::sleep(secs(1)).await;
    settle().await;
    assert_eq!(calls.get(), 3);
    let now = send(&svc, get("/r")).await;
    assert_eq!(now.body, "v3");
}

/// An error of the inner service with nothing stored reaches the caller as that error; the
/// failure remembered a moment (`new()`: 1 s) is a `502`, and then the origin is asked again.
#[tokio::test(start_paused = true)]
async fn an_origin_error_is_the_callers_error_and_a_remembered_502_briefly() {
    let (origin, calls) = origin(|n, _| async move {
        if n == 1 {
            Err::<Reply, BoxError>("connection refused".into())
        } else {
            Ok(reply(format!("ok {n}")))
        }
    });
    let svc = SwrLayer::new().layer(origin);
    let error = svc
        .clone()
        .oneshot(get("/e"))
        .await
        .expect_err("the origin's error");
    assert!(error.to_string().contains("connection refused"), "{error}");
    let remembered = send(&svc, get("/e")).await;
    assert_eq!(remembered.status, StatusCode::BAD_GATEWAY);
    assert_eq!(calls.get(), 1);
    tokio::time::advance(secs(2)).await;
    let later = send(&svc, get("/e")).await;
    assert_eq!(later.body, "ok 2");
}

/// A failure answered to a request with a credential, or carrying `Set-Cookie`, `private` or
/// `Vary`, is never remembered for other users.
#[tokio::test(start_paused = true)]
async fn a_users_failure_is_never_remembered_for_another() {
    let cases: &[(Pairs, Pairs)] = &[
        (&[("authorization", "Bearer alice")], &[]),
        (&[("cookie", "sid=alice")], &[]),
        (&[("x-v", "alice")], &[("set-cookie", "sid=alice")]),
        (&[("x-v", "alice")], &[("cache-control", "private")]),
        (&[("x-v", "alice")], &[("vary", "x-v")]),
        (&[("x-v", "alice")], &[("cache-control", "no-store")]),
    ];
    for (request_headers, response_headers) in cases {
        let extra: Vec<(String, String)> = (response_headers.iter())
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect();
        let (origin, calls) = origin(move |n, request: Request<ReqBody>| {
            let extra = extra.clone();
            async move {
                if n == 1 {
                    let mut r = respond(503, format!("error for {}", describe(n, &request)), &[]);
                    for (a, b) in &extra {
                        r.headers_mut().append(
                            HeaderName::from_bytes(a.as_bytes()).unwrap(),
                            HeaderValue::from_str(b).unwrap(),
                        );
                    }
                    Ok::<_, BoxError>(r)
                } else {
                    Ok(reply(describe(n, &request)))
                }
            }
        });
        let svc = SwrLayer::new().layer(origin);
        let alice = send(&svc, get_h("/f", request_headers)).await;
        assert_eq!(alice.status, StatusCode::SERVICE_UNAVAILABLE);
        let bob = send(&svc, get("/f")).await;
        assert!(
            !bob.body.contains("alice") && bob.status == StatusCode::OK,
            "{request_headers:?} {response_headers:?}: {:?} {} ({:?})",
            bob.status,
            bob.body,
            bob.cache
        );
        assert_eq!(calls.get(), 2);
    }
}

/// Cache poisoning by denial (CPDoS): a request whose unkeyed header makes the origin answer
/// a 4xx without explicit freshness (`400`, `413`, `431`) poisons nothing for the next user.
#[tokio::test(start_paused = true)]
async fn an_attackers_client_error_is_not_served_to_the_next_user() {
    for status in [400, 413, 417, 422, 431] {
        for layer in [SwrLayer::new(), SwrLayer::shared_cache()] {
            let (origin, _calls) = origin(move |n, request: Request<ReqBody>| async move {
                Ok::<_, BoxError>(if request.headers().contains_key("x-oversized") {
                    respond(status, "bad request", &[])
                } else {
                    respond(
                        200,
                        format!("page {n}"),
                        &[("cache-control", "max-age=600")],
                    )
                })
            });
            let svc = layer.layer(origin);
            let attack = send(&svc, get_h("/home", &[("x-oversized", "1")])).await;
            assert_eq!(attack.status.as_u16(), status);
            let victim = send(&svc, get("/home")).await;
            assert_eq!(
                victim.status,
                StatusCode::OK,
                "{status}: {:?}",
                victim.cache
            );
        }
    }
}

/// Same with a per-client `429` (a rate limiter) or `500` (a handler choking on the header),
/// in the proxy preset where failures are not remembered: the next user gets their page.
#[tokio::test(start_paused = true)]
async fn an_attackers_server_error_or_429_is_not_served_to_the_next_user_in_shared_cache() {
    for status in [429, 500, 503] {
        let (origin, _calls) = origin(move |n, request: Request<ReqBody>| async move {
            Ok::<_, BoxError>(if request.headers().contains_key("x-attack") {
                respond(status, "go away", &[])
            } else {
                respond(
                    200,
                    format!("page {n}"),
                    &[("cache-control", "max-age=600")],
                )
            })
        });
        let svc = SwrLayer::shared_cache().layer(origin);
        let _ = send(&svc, get_h("/home", &[("x-attack", "1")])).await;
        let victim = send(&svc, get("/home")).await;
        assert_eq!(
            victim.status,
            StatusCode::OK,
            "{status}: {:?}",
            victim.cache
        );
    }
}

/// The application preset remembers an origin failure for 1 s and gives it to every request
/// of the key. A `429` is a failure status by default: one client's rate-limit answer (the
/// limiter is per client; nothing in it says so to a cache) must not reach the others.
#[tokio::test(start_paused = true)]
async fn one_clients_429_is_not_served_to_other_clients() {
    let (origin, _calls) = origin(|n, request: Request<ReqBody>| async move {
        Ok::<_, BoxError>(if request.headers().contains_key("x-attack") {
            respond(429, "slow down, 203.0.113.7", &[("retry-after", "3600")])
        } else {
            respond(200, format!("page {n}"), &[])
        })
    });
    let svc = SwrLayer::new().layer(origin);
    let _ = send(&svc, get_h("/home", &[("x-attack", "1")])).await;
    let victim = send(&svc, get("/home")).await;
    assert_eq!(
        victim.status,
        StatusCode::OK,
        "another client's 429 ({:?}, {:?}, body {:?})",
        victim.cache,
        victim.header("retry-after"),
        victim.body
    );
}

// --- Invalidation ---------------------------------------------------------------------------

/// A stored `/page` on `host`, with [`mirror`]'s body; returns the service.
async fn stored_pages<S>(svc: &S, pages: &[(&str, &str)])
where
    S: Service<Request<ReqBody>, Response = Answer> + Clone,
    S::Error: std::fmt::Debug,
{
    for (host, target) in pages {
        let got = send(svc, get_h(target, &[("host", host)])).await;
        assert!(got.status.is_success());
    }
    for (host, target) in pages {
        let got = send(svc, get_h(target, &[("host", host)])).await;
        assert_eq!(got.cache, CacheStatus::Fresh, "{host}{target}");
    }
}

async fn is_fresh<S>(svc: &S, host: &str, target: &str) -> bool
where
    S: Service<Request<ReqBody>, Response = Answer> + Clone,
    S::Error: std::fmt::Debug,
{
    send(svc, get_h(target, &[("host", host)])).await.cache == CacheStatus::Fresh
}

/// An origin that stores `GET`s and answers unsafe requests with `status` and `headers`.
fn writable(status: u16, headers: Headers) -> impl OriginService {
    origin(move |n, request: Request<ReqBody>| async move {
        Ok::<_, BoxError>(if request.method() == Method::GET {
            respond(
                200,
                describe(n, &request),
                &[("cache-control", "max-age=600")],
            )
        } else {
            respond(status, "done", headers)
        })
    })
    .0
}

/// RFC 9111 §4.4: only a non-error answer to an unsafe request invalidates. A `POST` the origin
/// refuses (403, 404, 405, 500) cannot be used to evict other users' entries.
#[tokio::test(start_paused = true)]
async fn a_refused_unsafe_request_invalidates_nothing() {
    for status in [400, 403, 404, 405, 500, 503] {
        let svc = SwrLayer::new().layer(writable(status, &[]));
        stored_pages(&svc, &[("a.example", "/page")]).await;
        let post = send(&svc, req("POST", "/page", &[("host", "a.example")])).await;
        assert_eq!(post.status.as_u16(), status);
        assert!(
            is_fresh(&svc, "a.example", "/page").await,
            "{status} invalidated"
        );
    }
    let svc = SwrLayer::new().layer(writable(204, &[]));
    stored_pages(&svc, &[("a.example", "/page")]).await;
    let _ = send(&svc, req("DELETE", "/page", &[("host", "a.example")])).await;
    assert!(
        !is_fresh(&svc, "a.example", "/page").await,
        "a 204 DELETE invalidates"
    );
}

/// RFC 9111 §4.4: `Location` / `Content-Location` invalidate only same-origin URIs. A `POST` on
/// one host cannot evict another host's page by pointing at it.
#[tokio::test(start_paused = true)]
async fn location_pointing_at_another_host_invalidates_nothing_there() {
    for name in ["location", "content-location"] {
        for target in [
            "http://victim.example/home",
            "https://victim.example/home",
            "//victim.example/home",
            "http://a.example:8080/home",
        ] {
            let headers = leak2(name, target);
            let svc = SwrLayer::new().layer(writable(201, headers));
            let pages = [
                ("victim.example", "/home"),
                ("a.example:8080", "/home"),
                ("a.example", "/home"),
            ];
            stored_pages(&svc, &pages).await;
            let post = send(&svc, req("POST", "/form", &[("host", "a.example")])).await;
            assert_eq!(post.status, StatusCode::CREATED);
            assert!(
                is_fresh(&svc, "victim.example", "/home").await,
                "{name}: {target} invalidated victim.example"
            );
            assert!(
                is_fresh(&svc, "a.example:8080", "/home").await,
                "{name}: {target} invalidated a.example:8080"
            );
            assert!(
                is_fresh(&svc, "a.example", "/home").await,
                "{name}: {target}"
            );
        }
    }
}

fn leak2(name: &'static str, value: &str) -> Headers {
    let v: &'static str = Box::leak(value.to_owned().into_boxed_str());
    Box::leak(vec![(name, v)].into_boxed_slice())
}

/// A same-origin `Location` is invalidated (documented), relative or absolute.
#[tokio::test(start_paused = true)]
async fn location_on_the_same_host_is_invalidated() {
    for target in ["/home", "http://a.example/home"] {
        let svc = SwrLayer::new().layer(writable(201, leak2("location", target)));
        stored_pages(&svc, &[("a.example", "/home")]).await;
        let _ = send(&svc, req("POST", "/form", &[("host", "a.example")])).await;
        assert!(!is_fresh(&svc, "a.example", "/home").await, "{target}");
    }
}

/// The target URI of an unsafe request includes its host: a `POST /page` on `evil.example`
/// (a host the attacker controls, behind the same cache) does not evict `victim.example/page`.
#[tokio::test(start_paused = true)]
async fn an_unsafe_request_on_one_host_does_not_invalidate_another_hosts_entry() {
    let svc = SwrLayer::new().layer(writable(200, &[]));
    stored_pages(
        &svc,
        &[("victim.example", "/page"), ("evil.example", "/page")],
    )
    .await;
    let _ = send(&svc, req("POST", "/page", &[("host", "evil.example")])).await;
    assert!(!is_fresh(&svc, "evil.example", "/page").await);
    assert!(
        is_fresh(&svc, "victim.example", "/page").await,
        "a POST on evil.example evicted victim.example's entry"
    );
}

/// A `PURGE` (or any unknown method) through the layer itself is only passed to the origin:
/// it purges nothing unless the origin accepts it.
#[tokio::test(start_paused = true)]
async fn an_unknown_method_refused_by_the_origin_purges_nothing() {
    for method in ["PURGE", "BAN", "REFRESH"] {
        let svc = SwrLayer::new().layer(writable(405, &[]));
        stored_pages(&svc, &[("a.example", "/page")]).await;
        let got = send(&svc, req(method, "/page", &[("host", "a.example")])).await;
        assert_eq!(got.status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(is_fresh(&svc, "a.example", "/page").await, "{method}");
    }
}

// --- Memory ---------------------------------------------------------------------------------

/// Thousands of distinct keys (an attacker's cache-busting queries) stay within
/// `capacity_bytes`, and every key still gets its own body.
#[tokio::test(start_paused = true)]
async fn cache_busting_keys_stay_within_the_budget() {
    let (origin, _calls, _seen) = mirror(&[("cache-control", "max-age=600")]);
    let layer = SwrLayer::new().capacity_bytes(128 << 10);
    let cache = layer.handle();
    let svc = layer.layer(origin);
    for i in 0..4000 {
        let target = format!("/bust?r={i}&pad={}", "p".repeat(500));
        let got = send(&svc, get(&target)).await;
        assert_eq!(uri_of(&got.body), target);
        assert!(cache.stats().bytes <= 128 << 10, "{:?}", cache.stats());
    }
}

/// Responses with huge headers are counted in the budget.
#[tokio::test(start_paused = true)]
async fn huge_response_headers_stay_within_the_budget() {
    let big = "h".repeat(16 << 10);
    let (origin, _calls) = origin(move |n, _| {
        let big = big.clone();
        async move {
            let mut response = reply_cc(format!("small {n}"), "max-age=600");
            for i in 0..8 {
                response.headers_mut().append(
                    HeaderName::from_bytes(format!("x-big-{i}").as_bytes()).unwrap(),
                    HeaderValue::from_str(&big).unwrap(),
                );
            }
            Ok::<_, BoxError>(response)
        }
    });
    let layer = SwrLayer::new().capacity_bytes(512 << 10);
    let cache = layer.handle();
    let svc = layer.layer(origin);
    for i in 0..64 {
        let got = send(&svc, get(&format!("/h{i}"))).await;
        assert!(got.body.starts_with("small"));
        assert!(cache.stats().bytes <= 512 << 10, "{:?}", cache.stats());
    }
}

/// Many `Vary` field names with many values in the request: answered, bounded.
#[tokio::test(start_paused = true)]
async fn huge_request_headers_named_by_vary_stay_within_the_budget() {
    let (origin, _calls, _seen) = mirror(&[("cache-control", "max-age=600"), ("vary", "x-v")]);
    let layer = SwrLayer::new().capacity_bytes(256 << 10);
    let cache = layer.handle();
    let svc = layer.layer(origin);
    for i in 0..200 {
        let v = format!("{i}-{}", "v".repeat(8 << 10));
        let got = send(&svc, get_h("/hv", &[("x-v", &v)])).await;
        assert!(got.body.contains(&format!("v={v};")));
        assert!(cache.stats().bytes <= 256 << 10, "{:?}", cache.stats());
    }
}

// --- examples/reverse_proxy.rs: who may purge ----------------------------------------------

#[allow(dead_code)]
#[path = "../examples/reverse_proxy.rs"]
mod reverse_proxy;

mod proxy_purge {
    use super::common::Deadline;
    use super::reverse_proxy;
    use axum::body::Body as AxumBody;
    use axum::extract::ConnectInfo;
    use axum::routing::get;
    use axum::Router;
    use http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;
    use tower::ServiceExt;

    async fn upstream(calls: Arc<AtomicUsize>) -> SocketAddr {
        let app = Router::new().route(
            "/page",
            get(move || {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                async move { ([("cache-control", "max-age=600")], format!("page {n}")) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    async fn send(
        app: &Router,
        method: &str,
        peer: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, String, String) {
        let mut request = Request::builder().method(method).uri("/page");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut request = request.body(AxumBody::empty()).unwrap();
        if let Some(peer) = peer {
            let peer: SocketAddr = peer.parse().unwrap();
            request.extensions_mut().insert(ConnectInfo(peer));
        }
        let response = tokio::time::timeout(Duration::from_secs(10), app.clone().oneshot(request))
            .await
            .expect("the proxy answers")
            .unwrap();
        let status = response.status();
        let cache = (response.headers().get("cache-status"))
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, cache, String::from_utf8_lossy(&body).into_owned())
    }

    /// The example's `PURGE` is for loopback peers only: a remote peer (even one claiming
    /// `X-Forwarded-For: 127.0.0.1`) or a request without a known peer gets `403` and purges
    /// nothing, by target or by tag.
    #[tokio::test]
    async fn only_loopback_peers_may_purge_through_the_example_proxy() {
        let calls = Arc::new(AtomicUsize::new(0));
        let addr = upstream(calls.clone()).await;
        let (app, _cache) = reverse_proxy::app(format!("http://{addr}").parse().unwrap());
        let client = Some("198.51.100.9:5000");
        let deadline = Deadline::after(Duration::from_secs(10), "a stored page");
        loop {
            let _ = send(&app, "GET", client, &[]).await;
            let (_, cache, _) = send(&app, "GET", client, &[]).await;
            if cache.contains("hit") {
                break;
            }
            deadline.tick().await;
        }
        let stored = calls.load(Ordering::SeqCst);
        for (peer, headers) in [
            (Some("203.0.113.7:1234"), &[][..]),
            (
                Some("203.0.113.7:1234"),
                &[("x-forwarded-for", "127.0.0.1")][..],
            ),
            (Some("203.0.113.7:1234"), &[("surrogate-key", "a b")][..]),
            (Some("203.0.113.7:1234"), &[("xkey-softpurge", "a")][..]),
            (Some("[2001:db8::1]:80"), &[][..]),
            (None, &[][..]),
        ] {
            let (status, _, _) = send(&app, "PURGE", peer, headers).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{peer:?} {headers:?}");
            let (_, cache, body) = send(&app, "GET", client, &[]).await;
            assert!(
                cache.contains("hit"),
                "{peer:?} {headers:?} purged: {cache} {body}"
            );
        }
        assert_eq!(calls.load(Ordering::SeqCst), stored);
        let (status, _, _) = send(&app, "PURGE", Some("127.0.0.1:9"), &[]).await;
        assert_eq!(status, StatusCode::OK);
        let (_, cache, _) = send(&app, "GET", client, &[]).await;
        assert!(!cache.contains("; hit"), "{cache}");
    }
}

// --- Conditional and partial requests cannot poison the entry -------------------------------

/// An origin that honours conditionals and ranges itself (as a static file server does).
fn conditional_origin() -> (impl OriginService, Calls) {
    origin(|n, request: Request<ReqBody>| async move {
        let h = request.headers();
        let etag = "\"v1\"";
        let common = [
            ("cache-control", "max-age=600"),
            ("etag", etag),
            ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
        ];
        if h.contains_key("if-none-match") || h.contains_key("if-modified-since") {
            return Ok::<_, BoxError>(respond(304, "", &common));
        }
        if h.get("range").is_some() {
            let mut headers = common.to_vec();
            headers.push(("content-range", "bytes 0-0/10"));
            return Ok(respond(206, "0", &headers));
        }
        Ok(respond(200, format!("012345678{n}"), &common))
    })
}

/// A cold request carrying the attacker's conditional or `Range` gets whatever it gets, but
/// the next user gets the whole `200`, never a stored `304` or `206` as the full response.
#[tokio::test(start_paused = true)]
async fn a_cold_conditional_or_range_request_cannot_poison_the_entry() {
    for (name, value) in [
        ("if-none-match", "*"),
        ("if-none-match", "\"v1\""),
        ("if-modified-since", "Fri, 31 Dec 9999 23:59:59 GMT"),
        ("range", "bytes=0-0"),
    ] {
        for layer in [SwrLayer::new(), SwrLayer::shared_cache()] {
            let (origin, _calls) = conditional_origin();
            let svc = layer.layer(origin);
            let _attack = send(&svc, get_h("/file", &[(name, value)])).await;
            for _ in 0..2 {
                let victim = send(&svc, get("/file")).await;
                assert_eq!(victim.status, StatusCode::OK, "{name}: {value}");
                assert_eq!(victim.body.len(), 10, "{name}: {value}: {:?}", victim.body);
            }
            let head = send(&svc, request(Method::HEAD, "/file")).await;
            assert_eq!(head.status, StatusCode::OK, "{name}: {value}");
        }
    }
}

// --- Stale answers respect variants ---------------------------------------------------------

/// A stale entry of one variant is never another variant's stale-while-revalidate answer, nor
/// its stale-if-error answer when the origin fails.
#[tokio::test(start_paused = true)]
async fn stale_answers_never_cross_variants() {
    let mode = Mode::default();
    let (origin, _calls) = origin({
        let mode = mode.clone();
        move |n, request: Request<ReqBody>| {
            let mode = mode.clone();
            async move {
                if mode.get() == UNAVAILABLE {
                    return Ok::<_, BoxError>(unavailable());
                }
                Ok(respond(
                    200,
                    describe(n, &request),
                    &[
                        (
                            "cache-control",
                            "max-age=10, stale-while-revalidate=60, stale-if-error=600",
                        ),
                        ("vary", "x-v"),
                    ],
                ))
            }
        }
    });
    let svc = SwrLayer::new().layer(origin);
    let alice = send(&svc, get_h("/v", &[("x-v", "alice")])).await;
    assert!(alice.body.contains("v=alice;"));
    tokio::time::advance(secs(15)).await;
    let bob = send(&svc, get_h("/v", &[("x-v", "bob")])).await;
    assert!(
        bob.body.contains("v=bob;"),
        "stale-while-revalidate crossed: {}",
        bob.body
    );
    settle().await;
    tokio::time::advance(secs(120)).await;
    mode.set(UNAVAILABLE);
    let carol = send(&svc, get_h("/v", &[("x-v", "carol")])).await;
    assert!(
        !carol.body.contains("alice") && !carol.body.contains("bob"),
        "stale-if-error crossed: {:?} {}",
        carol.cache,
        carol.body
    );
    assert_eq!(carol.status, StatusCode::SERVICE_UNAVAILABLE);
    let alice = send(&svc, get_h("/v", &[("x-v", "alice")])).await;
    assert!(
        alice.body.contains("v=alice;"),
        "{:?} {}",
        alice.cache,
        alice.body
    );
}

/// With per-user keys (`key_fn` + `allow_private`), one user's stale entry never answers
/// another user when the origin fails.
#[tokio::test(start_paused = true)]
async fn stale_if_error_never_answers_another_users_key() {
    let mode = Mode::default();
    let (origin, _calls) = origin({
        let mode = mode.clone();
        move |n, request: Request<ReqBody>| {
            let mode = mode.clone();
            async move {
                if mode.get() == ERROR {
                    return Err::<Reply, BoxError>("down".into());
                }
                Ok(respond(
                    200,
                    describe(n, &request),
                    &[("cache-control", "private, max-age=10, stale-if-error=600")],
                ))
            }
        }
    });
    let svc = SwrLayer::new()
        .allow_private(true)
        .key_fn(|parts| {
            (parts.headers.get("x-v"))
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .layer(origin);
    let _ = send(&svc, get_h("/acct", &[("x-v", "alice")])).await;
    tokio::time::advance(secs(60)).await;
    mode.set(ERROR);
    let bob = svc.clone().oneshot(get_h("/acct", &[("x-v", "bob")])).await;
    match bob {
        Err(error) => assert!(error.to_string().contains("down")),
        Ok(response) => {
            let text = body(response).await.unwrap();
            assert!(!String::from_utf8_lossy(&text).contains("alice"));
        }
    }
    let alice = send(&svc, get_h("/acct", &[("x-v", "alice")])).await;
    // Her own entry answers her (stale: the default window applies to `max-age` alone).
    assert!(
        matches!(alice.cache, CacheStatus::Stale | CacheStatus::StaleIfError),
        "{:?}",
        alice.cache
    );
    assert!(alice.body.contains("v=alice;"));
}

// --- Targeted fields cannot lift the never-shared rules -------------------------------------

/// `CDN-Cache-Control` / `Surrogate-Control` giving a lifetime never make `Set-Cookie` or a
/// credentialed answer shared (the docs: "the never-shared rules read them").
#[tokio::test(start_paused = true)]
async fn targeted_fields_do_not_lift_the_never_shared_rules() {
    let cases: &[(Pairs, Pairs)] = &[
        (
            &[
                ("cdn-cache-control", "max-age=600"),
                ("set-cookie", "sid=alice"),
            ],
            &[],
        ),
        (
            &[
                ("surrogate-control", "max-age=600"),
                ("set-cookie", "sid=alice"),
            ],
            &[],
        ),
        (
            &[
                ("cdn-cache-control", "max-age=600"),
                ("cache-control", "public, max-age=600"),
            ],
            &[("authorization", "Bearer alice")],
        ),
        (
            &[
                ("cdn-cache-control", "private, max-age=600"),
                ("cache-control", "public, max-age=600"),
            ],
            &[("x-v", "alice")],
        ),
        (
            &[("cdn-cache-control", "max-age=600")],
            &[("cookie", "sid=alice")],
        ),
    ];
    for (response_headers, request_headers) in cases {
        let extra: Vec<(String, String)> = (response_headers.iter())
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect();
        let (origin, calls) = origin(move |n, request: Request<ReqBody>| {
            let extra = extra.clone();
            async move {
                let mut r = respond(200, describe(n, &request), &[]);
                for (a, b) in &extra {
                    r.headers_mut().append(
                        HeaderName::from_bytes(a.as_bytes()).unwrap(),
                        HeaderValue::from_str(b).unwrap(),
                    );
                }
                Ok::<_, BoxError>(r)
            }
        });
        let svc = SwrLayer::shared_cache().layer(origin);
        let _ = send(&svc, get_h("/t", request_headers)).await;
        let bob = send(&svc, get("/t")).await;
        assert!(
            !bob.body.contains("alice"),
            "{response_headers:?} {request_headers:?}: {:?} {}",
            bob.cache,
            bob.body
        );
        assert_eq!(calls.get(), 2);
    }
}

// --- The Redis tier: credentials never leave the instance -----------------------------------

#[cfg(feature = "redis")]
mod redis_tier {
    use super::common::redis_server::RedisServer;
    use super::common::*;
    use super::{describe, send};
    use http::Request;
    use std::time::Duration;
    use tower::Layer;
    use tower_swr::{CacheStatus, SwrLayer};

    /// Every key and value in the Redis server, as lossy text (strings, hashes, lists, sets,
    /// sorted sets).
    async fn everything_in(redis: &RedisServer) -> String {
        let client = redis::Client::open(redis.url()).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<Vec<u8>> = (redis::cmd("KEYS").arg("*").query_async(&mut con).await).unwrap();
        let mut all = String::new();
        for key in keys {
            let kind: String = redis::cmd("TYPE")
                .arg(&key)
                .query_async(&mut con)
                .await
                .unwrap();
            let (command, args): (&str, &[&str]) = match kind.as_str() {
                "string" => ("GET", &[]),
                "hash" => ("HGETALL", &[]),
                "list" => ("LRANGE", &["0", "-1"]),
                "set" => ("SMEMBERS", &[]),
                "zset" => ("ZRANGE", &["0", "-1"]),
                _ => continue,
            };
            let value: redis::Value = (redis::cmd(command).arg(&key).arg(args))
                .query_async(&mut con)
                .await
                .unwrap();
            all.push_str(&String::from_utf8_lossy(&key));
            all.push_str(" => ");
            all.push_str(&format!("{}", String::from_utf8_lossy(&flatten(&value))));
            all.push('\n');
        }
        all
    }

    fn flatten(value: &redis::Value) -> Vec<u8> {
        match value {
            redis::Value::BulkString(bytes) => bytes.clone(),
            redis::Value::Array(items) | redis::Value::Set(items) => items
                .iter()
                .flat_map(|v| flatten(v).into_iter().chain([b' ']))
                .collect(),
            redis::Value::Map(pairs) => (pairs.iter())
                .flat_map(|(k, v)| [flatten(k), flatten(v)].concat().into_iter().chain([b' ']))
                .collect(),
            other => format!("{other:?}").into_bytes(),
        }
    }

    /// The docs: "Responses kept with a request's `Authorization`/`Cookie` (to refresh with
    /// them) never go to Redis." A `public` answer to alice's request is not in Redis (nor her
    /// credential), and a second instance does not answer anonymous users with it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn credentialed_answers_and_credentials_never_reach_redis() {
        let Some(redis) = RedisServer::start("security: credentials never reach redis") else {
            return;
        };
        let mirror = || {
            origin(|n, request: Request<ReqBody>| async move {
                Ok::<_, BoxError>(respond(
                    200,
                    describe(n, &request),
                    &[("cache-control", "public, max-age=600")],
                ))
            })
        };
        let (origin_a, _) = mirror();
        let (origin_b, calls_b) = mirror();
        let named = || {
            SwrLayer::new()
                .credential_headers(["x-api-key"])
                .redis(redis.config())
        };
        let a = named().layer(origin_a);
        let b = named().layer(origin_b);
        // Sharing works: an anonymous page stored by A is answered by B from Redis.
        let _ = send(&a, get("/plain")).await;
        let deadline = Deadline::after(Duration::from_secs(10), "B answers /plain from Redis");
        loop {
            let got = send(&b, get("/plain")).await;
            if got.cache == CacheStatus::SharedTier {
                break;
            }
            deadline.tick().await;
        }
        for (name, value) in [
            ("authorization", "Bearer alice-secret-token"),
            ("cookie", "sid=alice-secret-cookie"),
            ("x-api-key", "alice-secret-key"),
        ] {
            let target = format!("/pub-{name}");
            let alice = send(&a, get_headers(&target, &[(name, value)])).await;
            assert!(alice.body.contains("alice-secret"));
            tokio::time::sleep(Duration::from_millis(300)).await;
            let before = calls_b.get();
            let anon = send(&b, get(&target)).await;
            assert!(
                !anon.body.contains("alice-secret"),
                "{name}: instance B served alice's answer ({:?})",
                anon.cache
            );
            assert_eq!(calls_b.get(), before + 1, "{name}");
        }
        let stored = everything_in(&redis).await;
        assert!(
            stored.contains("uri=/plain"),
            "the anonymous page's body is not readable in Redis: the scan is broken\n{stored}"
        );
        assert!(
            !stored.contains("alice-secret"),
            "a credential or an answer rendered with it is in Redis:\n{stored}"
        );
    }
}

// --- More probes ----------------------------------------------------------------------------

/// RFC 9110 §7.6.1 / RFC 9111 §3.1: the `Connection` field and the fields it names are
/// hop-by-hop, removed before forwarding (a cache may drop them before storage). A hit must
/// not replay the origin connection's `X-Hop` (here a per-connection token) to other users.
#[tokio::test(start_paused = true)]
async fn hop_by_hop_fields_named_by_connection_are_not_replayed_on_hits() {
    let (origin, _calls) = origin(|n, _| async move {
        Ok::<_, BoxError>(respond(
            200,
            format!("page {n}"),
            &[
                ("cache-control", "max-age=600"),
                ("connection", "x-hop, keep-alive"),
                ("x-hop", &*format!("conn-token-{n}")),
                ("keep-alive", "timeout=5"),
            ],
        ))
    });
    let svc = SwrLayer::shared_cache().layer(origin);
    let _ = send(&svc, get("/hop")).await;
    let hit = send(&svc, get("/hop")).await;
    assert_eq!(hit.cache, CacheStatus::Fresh);
    assert_eq!(
        hit.header("x-hop"),
        None,
        "a field named by Connection was replayed from the entry"
    );
}

/// A `GET` with content is keyed without it (RFC 9110 §9.3.1: content in a `GET` has no
/// defined semantics). An origin whose answer depends on it must say so; the layer answers
/// the next request from the entry. Pinned here: what one client's body selects is shared.
#[tokio::test(start_paused = true)]
async fn a_get_with_a_body_is_keyed_without_it() {
    let (origin, calls) = origin(|n, request: Request<ReqBody>| async move {
        let q = request.into_body().collect().await.unwrap().to_bytes();
        Ok::<_, BoxError>(reply_cc(
            format!("n={n} results for {}", String::from_utf8_lossy(&q)),
            "max-age=600",
        ))
    });
    let svc = SwrLayer::new().layer(origin);
    let with_body = |q: &'static str| {
        Request::builder()
            .uri("/search")
            .body(Full::new(Bytes::from_static(q.as_bytes())))
            .unwrap()
    };
    let alice = send(&svc, with_body("alice private query")).await;
    assert!(alice.body.contains("alice"));
    let bob = send(&svc, with_body("bob")).await;
    // Pinned as built: the body is not keyed, so bob gets alice's results (the docs name the
    // key's parts and do not mention request content; see the report).
    assert_eq!(bob.cache, CacheStatus::Fresh);
    assert_eq!(calls.get(), 1);
}

/// Userinfo in an absolute target with a `Host` that disagrees: the `Host` the origin is sent
/// (rewritten to the authority, as documented) carries no userinfo.
#[tokio::test(start_paused = true)]
async fn a_rewritten_host_never_carries_userinfo() {
    let (origin, _calls, seen) = mirror(&[("cache-control", "max-age=600")]);
    let svc = SwrLayer::new().layer(origin);
    let _ = send(
        &svc,
        get_h("http://user:pw@a.example:8080/p", &[("host", "b.example")]),
    )
    .await;
    let sent = header_text(&seen.last_headers(), "host").unwrap_or_default();
    assert!(!sent.contains('@') && !sent.contains("pw"), "Host: {sent}");
    let b = send(&svc, get_h("/p", &[("host", "b.example")])).await;
    assert_eq!(host_of(&b.body), "b.example", "{}", b.body);
}

/// A failure answered to a request carrying a named credential header is not remembered for
/// anonymous users either.
#[tokio::test(start_paused = true)]
async fn a_failure_for_a_named_credential_is_never_remembered_for_others() {
    let (origin, calls) = origin(|n, request: Request<ReqBody>| async move {
        Ok::<_, BoxError>(if n == 1 {
            respond(
                503,
                format!("quota exceeded for {}", lines(&request, "x-api-key")),
                &[],
            )
        } else {
            reply(format!("ok {n}"))
        })
    });
    let svc = SwrLayer::new()
        .credential_headers(["x-api-key"])
        .layer(origin);
    let alice = send(&svc, get_h("/q", &[("x-api-key", "alice-key")])).await;
    assert_eq!(alice.status, StatusCode::SERVICE_UNAVAILABLE);
    let anon = send(&svc, get("/q")).await;
    assert!(
        !anon.body.contains("alice"),
        "{:?} {}",
        anon.cache,
        anon.body
    );
    assert_eq!(calls.get(), 2);
}

/// A waiter of a failing call only shares the failure when it carries no credential: alice's
/// request waiting for an anonymous call that fails with a 503 asks the origin herself or gets
/// that public failure, and bob waiting for alice's failing call never gets alice's failure.
#[tokio::test(start_paused = true)]
async fn a_credentialed_leaders_failure_is_not_given_to_its_waiters() {
    let gate = Gate::new();
    let (origin, _calls) = origin({
        let gate = gate.clone();
        move |n, request: Request<ReqBody>| {
            let gate = gate.clone();
            async move {
                let who = lines(&request, "authorization");
                gate.wait().await;
                Ok::<_, BoxError>(if n == 1 {
                    respond(503, format!("error page for {who}"), &[])
                } else {
                    reply(format!("ok {n} for {who}"))
                })
            }
        }
    });
    let svc = SwrLayer::new().layer(origin);
    let alice = tokio::spawn({
        let svc = svc.clone();
        async move { send(&svc, get_h("/f", &[("authorization", "Bearer alice")])).await }
    });
    settle().await;
    let bob = tokio::spawn({
        let svc = svc.clone();
        async move { send(&svc, get("/f")).await }
    });
    settle().await;
    gate.open();
    let alice = alice.await.unwrap();
    let bob = bob.await.unwrap();
    assert!(alice.body.contains("alice"));
    assert!(!bob.body.contains("alice"), "{:?} {}", bob.cache, bob.body);
}

/// A resource known to vary on `X-V`: one variant's failure (an error page without `Vary`,
/// as a proxy in front of the origin might send) is not remembered for the other variants.
#[tokio::test(start_paused = true)]
async fn one_variants_failure_is_not_remembered_for_another_variant() {
    let mode = Mode::default();
    let (origin, _calls) = origin({
        let mode = mode.clone();
        move |n, request: Request<ReqBody>| {
            let mode = mode.clone();
            async move {
                Ok::<_, BoxError>(if mode.get() == UNAVAILABLE {
                    mode.set(OK);
                    respond(503, format!("error for {}", lines(&request, "x-v")), &[])
                } else {
                    respond(
                        200,
                        describe(n, &request),
                        &[
                            ("cache-control", "max-age=1, must-revalidate"),
                            ("vary", "x-v"),
                        ],
                    )
                })
            }
        }
    });
    let svc = SwrLayer::new().layer(origin);
    let _ = send(&svc, get_h("/v", &[("x-v", "alice")])).await;
    let _ = send(&svc, get_h("/v", &[("x-v", "bob")])).await;
    tokio::time::advance(secs(5)).await;
    mode.set(UNAVAILABLE);
    let alice = send(&svc, get_h("/v", &[("x-v", "alice")])).await;
    assert_eq!(alice.status, StatusCode::SERVICE_UNAVAILABLE);
    let bob = send(&svc, get_h("/v", &[("x-v", "bob")])).await;
    assert!(
        !bob.body.contains("alice"),
        "alice's variant's failure reached bob: {:?} {}",
        bob.cache,
        bob.body
    );
}

/// An origin whose first answer is a shareable `200` with an `ETag`, and whose revalidation
/// `304`s carry `headers` (RFC 9111 §4.3.4: they update the stored response).
fn revalidated_with(headers: Headers) -> (impl OriginService, Calls) {
    origin(move |n, request: Request<ReqBody>| async move {
        Ok::<_, BoxError>(if request.headers().contains_key("if-none-match") {
            let mut all = vec![("etag", "\"e1\"")];
            all.extend_from_slice(headers);
            respond(304, "", &all)
        } else {
            respond(
                200,
                format!("body {n} {}", describe(n, &request)),
                &[
                    ("etag", "\"e1\""),
                    ("cache-control", "public, max-age=1, must-revalidate"),
                ],
            )
        })
    })
}

/// A `304` that now says `private` or `no-store` updates the entry: it is not reused for the
/// next (other) user as a fresh hit.
#[tokio::test(start_paused = true)]
async fn a_304_turning_the_entry_private_or_no_store_stops_sharing_it() {
    for cc in ["private, max-age=600", "no-store", "no-store, max-age=600"] {
        let (origin, calls) = revalidated_with(leak(cc));
        let svc = SwrLayer::shared_cache().layer(origin);
        let _ = send(&svc, get("/r")).await;
        tokio::time::advance(secs(5)).await;
        let revalidated = send(&svc, get("/r")).await;
        assert_eq!(revalidated.status, StatusCode::OK, "{cc}");
        settle().await;
        let before = calls.get();
        let next = send(&svc, get("/r")).await;
        assert!(
            next.cache != CacheStatus::Fresh || calls.get() > before,
            "{cc}: the entry was reused fresh after a 304 said {cc}"
        );
    }
}

/// A `304` adding `Vary: Cookie` makes the entry a variant of the revalidating request: a
/// request with another cookie does not match it.
#[tokio::test(start_paused = true)]
async fn a_304_adding_vary_is_honoured_for_the_next_request() {
    let (origin, _calls) =
        revalidated_with(&[("cache-control", "public, max-age=600"), ("vary", "cookie")]);
    let svc = SwrLayer::shared_cache().layer(origin);
    let first = send(&svc, get_h("/r", &[("cookie", "sid=alice")])).await;
    assert!(first.body.contains("sid=alice"));
    tokio::time::advance(secs(5)).await;
    let revalidated = send(&svc, get_h("/r", &[("cookie", "sid=alice")])).await;
    assert!(
        revalidated.body.contains("sid=alice"),
        "{:?}",
        revalidated.cache
    );
    settle().await;
    let again = send(&svc, get_h("/r", &[("cookie", "sid=alice")])).await;
    assert_eq!(
        again.cache,
        CacheStatus::Fresh,
        "the 304 freshened alice's variant"
    );
    let bob = send(&svc, get_h("/r", &[("cookie", "sid=bob")])).await;
    assert!(
        bob.cache != CacheStatus::Fresh || !bob.body.contains("alice"),
        "bob got alice's variant after a 304 added Vary: Cookie: {}",
        bob.body
    );
}

// --- Over a real socket ---------------------------------------------------------------------

/// Through hyper on loopback (real time): an absolute-form target whose authority disagrees
/// with `Host`, and a request with two `Host` lines, cannot make `b.example`'s users get a page
/// rendered for another host; no request crashes the connection.
#[tokio::test]
async fn over_the_wire_host_confusion_does_not_poison_the_cache() {
    use axum::routing::get as route_get;
    let app = axum::Router::new()
        .route(
            "/x",
            route_get(|headers: http::HeaderMap| async move {
                let host = (headers.get("host"))
                    .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
                    .unwrap_or_default();
                (
                    [("cache-control", "max-age=600")],
                    format!("rendered for {host}"),
                )
            }),
        )
        .layer(SwrLayer::new());
    let addr = serve(app).await;
    let attacks = [
        "GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n"
            .to_owned(),
        "GET /x HTTP/1.1\r\nHost: evil.example\r\nHost: b.example\r\nConnection: close\r\n\r\n"
            .to_owned(),
        "GET /x HTTP/1.1\r\nHost: b.example\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
            .to_owned(),
        raw_get("/x", "b.example@evil.example", ""),
        raw_get("/x", "B.EXAMPLE:80", "X-Forwarded-Host: evil.example\r\n"),
    ];
    for attack in &attacks {
        let answer = exchange(addr, attack, false).await;
        assert!(answer.is_ok(), "{attack:?}: {answer:?}");
    }
    let victim = exchange(addr, &raw_get("/x", "b.example", ""), false)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&victim.body).into_owned();
    assert_eq!(victim.status, 200);
    assert_eq!(
        text,
        "rendered for b.example",
        "b.example got another host's page ({})",
        victim.cache_status()
    );
}

// --- Coalescing with requests that are not plain GETs ---------------------------------------

/// A plain `GET` waiting while another request for the key is at the origin: that request is a
/// `HEAD`, a conditional or a `Range` request. The plain `GET` gets a whole `200` — never an
/// empty body, a `304` or a `206` made for the other request.
#[tokio::test(start_paused = true)]
async fn a_plain_get_never_gets_a_head_conditional_or_range_leaders_answer() {
    let cases: &[(&str, Pairs)] = &[
        ("HEAD", &[]),
        ("GET", &[("if-none-match", "\"v1\"")]),
        ("GET", &[("if-none-match", "*")]),
        (
            "GET",
            &[("if-modified-since", "Mon, 01 Jan 2024 00:00:00 GMT")],
        ),
        ("GET", &[("range", "bytes=0-0")]),
    ];
    for (method, headers) in cases {
        for layer in [SwrLayer::new(), SwrLayer::shared_cache()] {
            let gate = Gate::new();
            let (origin, _calls) = origin({
                let gate = gate.clone();
                move |n, request: Request<ReqBody>| {
                    let gate = gate.clone();
                    async move {
                        gate.wait().await;
                        let h = request.headers();
                        let common = [
                            ("cache-control", "max-age=600"),
                            ("etag", "\"v1\""),
                            ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
                        ];
                        Ok::<_, BoxError>(
                            if h.contains_key("if-none-match")
                                || h.contains_key("if-modified-since")
                            {
                                respond(304, "", &common)
                            } else if h.contains_key("range") {
                                let mut all = common.to_vec();
                                all.push(("content-range", "bytes 0-0/10"));
                                respond(206, "0", &all)
                            } else if request.method() == Method::HEAD {
                                let mut all = common.to_vec();
                                all.push(("content-length", "10"));
                                respond(200, "", &all)
                            } else {
                                respond(200, format!("012345678{n}"), &common)
                            },
                        )
                    }
                }
            });
            let svc = layer.layer(origin);
            let leader = tokio::spawn({
                let svc = svc.clone();
                let request = req(method, "/k", headers);
                async move { send(&svc, request).await }
            });
            settle().await;
            let waiter = tokio::spawn({
                let svc = svc.clone();
                async move { send(&svc, get("/k")).await }
            });
            settle().await;
            gate.open();
            let _ = leader.await.unwrap();
            let waiter = waiter.await.unwrap();
            assert_eq!(waiter.status, StatusCode::OK, "{method} {headers:?}");
            assert_eq!(
                waiter.body.len(),
                10,
                "{method} {headers:?}: {:?}",
                waiter.body
            );
            let after = send(&svc, get("/k")).await;
            assert_eq!(
                after.body.len(),
                10,
                "{method} {headers:?}: stored {:?}",
                after.body
            );
        }
    }
}

/// Pinned as documented (`remember_failures`: 1 s in `new()`, off in `shared_cache()`): a 5xx
/// that one request's unkeyed header provoked, with that header reflected in its body, is the
/// key's answer for every user for 1 s, then the origin is asked again. See the report: this is
/// a cache-poisoned denial of service (and a reflected body) for one second per attack request.
#[tokio::test(start_paused = true)]
async fn a_provoked_5xx_is_everyones_answer_for_one_second_in_new() {
    let (origin, _calls) = origin(|n, request: Request<ReqBody>| async move {
        Ok::<_, BoxError>(match request.headers().get("x-attack") {
            Some(v) => respond(
                500,
                format!("cannot parse {}", String::from_utf8_lossy(v.as_bytes())),
                &[],
            ),
            None => respond(200, format!("page {n}"), &[]),
        })
    });
    let svc = SwrLayer::new().layer(origin);
    let _ = send(
        &svc,
        get_h("/home", &[("x-attack", "<script>x()</script>")]),
    )
    .await;
    let victim = send(&svc, get("/home")).await;
    assert_eq!(victim.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(victim.cache, CacheStatus::FailureHit);
    assert!(victim.body.contains("<script>"), "{}", victim.body);
    tokio::time::advance(Duration::from_millis(1100)).await;
    let later = send(&svc, get("/home")).await;
    assert_eq!(later.status, StatusCode::OK);
    // `remember_failures(Duration::ZERO)` turns it off.
    let (quiet, _calls) = common::origin(|n, request: Request<ReqBody>| async move {
        Ok::<_, BoxError>(if request.headers().contains_key("x-attack") {
            respond(500, "no", &[])
        } else {
            respond(200, format!("page {n}"), &[])
        })
    });
    let svc = SwrLayer::new()
        .remember_failures(Duration::ZERO)
        .layer(quiet);
    let _ = send(&svc, get_h("/home", &[("x-attack", "1")])).await;
    assert_eq!(send(&svc, get("/home")).await.status, StatusCode::OK);
}

/// A background refresh answered with `Set-Cookie`, `private`, `no-store` or `Vary: *` never
/// puts that answer (nor its cookie) into the entry other users get.
#[tokio::test(start_paused = true)]
async fn an_unshareable_refresh_answer_never_replaces_the_shared_entry() {
    for extra in [
        ("set-cookie", "sid=refresh-secret"),
        ("cache-control", "private"),
        ("cache-control", "no-store"),
        ("vary", "*"),
    ] {
        let (origin, calls) = origin(move |n, _| async move {
            Ok::<_, BoxError>(if n == 1 {
                reply_cc("public v1", "max-age=10, stale-while-revalidate=600")
            } else {
                let mut r = respond(200, format!("refresh-secret {n}"), &[extra]);
                if extra.0 != "cache-control" {
                    r.headers_mut().insert(
                        header::CACHE_CONTROL,
                        HeaderValue::from_static("max-age=10, stale-while-revalidate=600"),
                    );
                }
                r
            })
        });
        let svc = SwrLayer::new().layer(origin);
        let _ = send(&svc, get("/r")).await;
        tokio::time::advance(secs(15)).await;
        let stale = send(&svc, get("/r")).await;
        assert_eq!(stale.body, "public v1");
        settle().await;
        settle().await;
        assert!(calls.get() >= 2, "{extra:?}: no refresh");
        for _ in 0..3 {
            let before = calls.get();
            let next = send(&svc, get("/r")).await;
            let own_call = calls.get() > before;
            assert!(
                own_call || !next.body.contains("refresh-secret"),
                "{extra:?}: the refresh's answer became the shared entry ({:?})",
                next.cache
            );
            assert!(
                own_call || next.all("set-cookie").is_empty(),
                "{extra:?}: {:?}",
                next.all("set-cookie")
            );
            settle().await;
        }
    }
}
