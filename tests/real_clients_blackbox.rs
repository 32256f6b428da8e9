//! Black-box tests of `SwrLayer` reached the way real clients reach it: `axum::serve` on
//! 127.0.0.1:0, clients from hyper 1 (connection-level HTTP/1.1 and HTTP/2, and hyper-util's
//! pooled client, also `http2_only`), and raw `tokio::net::TcpStream` writes for odd and
//! malformed requests.
//!
//! Written from the docs only (README, CHANGELOG, rustdoc of the public items): what a client
//! sees on the wire — framing on keep-alive connections, `Age`, RFC 9211 `Cache-Status` parsed
//! as a structured-field list, keys shared between HTTP/1.1 `Host` and HTTP/2 `:authority`,
//! hop-by-hop fields never replayed from the store, odd request targets and hosts, clients that
//! leave mid-body, conditionals, ranges and `HEAD`, stale-while-revalidate under 50 concurrent
//! clients, never-shared answers and failing origins.
//!
//! Real time throughout (sockets): every wait is for a condition with a generous deadline; no
//! assertion is about speed beyond "did not hang", except where the docs promise an answer
//! without the origin (then the origin is held on a gate, so a wait would hang, not be slow).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri, Version};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::timeout;
use tower::ServiceBuilder;
use tower_swr::SwrLayer;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Longest any single wait may take on a loaded 2-core machine before it counts as a hang.
const HANG: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Servers and origins
// ---------------------------------------------------------------------------------------------

async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// Counts origin calls.
#[derive(Clone, Default)]
struct Calls(Arc<AtomicUsize>);

impl Calls {
    fn bump(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// The host the origin was asked for: the target's authority, else `Host`.
fn host_of(uri: &Uri, headers: &HeaderMap) -> String {
    uri.authority()
        .map(|a| a.to_string())
        .or_else(|| {
            headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "-".to_owned())
}

/// A route that answers `"<body> #<call>"` with the given extra headers, counting calls.
fn counted(
    body: &'static str,
    headers: &'static [(&'static str, &'static str)],
) -> (Router, Calls) {
    let calls = Calls::default();
    let c = calls.clone();
    let handler = move || {
        let c = c.clone();
        async move {
            let n = c.bump();
            let mut response = format!("{body} #{n}").into_response();
            for (name, value) in headers {
                response.headers_mut().append(
                    header::HeaderName::from_static(name),
                    header::HeaderValue::from_static(value),
                );
            }
            response
        }
    };
    (Router::new().route("/{*path}", get(handler)), calls)
}

/// A body fed from a channel: each item a data frame, an `Err` a body error.
struct ChanBody(mpsc::Receiver<Result<Bytes, BoxError>>);

impl http_body::Body for ChanBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        match self.0.poll_recv(cx) {
            Poll::Ready(Some(Ok(bytes))) => Poll::Ready(Some(Ok(http_body::Frame::data(bytes)))),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| b'a' + (i % 26) as u8)
        .collect::<Vec<u8>>()
        .into()
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// One HTTP/1.1 connection (hyper's connection-level client): every request on it reuses it.
async fn h1_conn(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("h1 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// One HTTP/2 prior-knowledge connection (h2c).
async fn h2_conn(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

type Pooled = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn pooled_h1() -> Pooled {
    Client::builder(TokioExecutor::new()).build_http()
}

fn pooled_h2() -> Pooled {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

struct Answer {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn swr(&self) -> Member {
        own_member(&self.headers)
    }
}

async fn collect(response: hyper::Response<hyper::body::Incoming>) -> Answer {
    let (parts, body) = response.into_parts();
    let body = timeout(HANG, body.collect())
        .await
        .expect("body did not hang")
        .expect("body arrived whole")
        .to_bytes();
    Answer {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    }
}

fn h1_request(
    method: Method,
    host: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> hyper::Request<Full<Bytes>> {
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(target)
        .header(header::HOST, host);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(Bytes::new())).expect("request")
}

async fn h1_send(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    request: hyper::Request<Full<Bytes>>,
) -> Answer {
    timeout(HANG, sender.ready())
        .await
        .expect("connection ready in time")
        .expect("connection still open");
    let response = timeout(HANG, sender.send_request(request))
        .await
        .expect("answer did not hang")
        .expect("answer arrived");
    collect(response).await
}

async fn h2_send(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    uri: &str,
) -> Answer {
    let request = hyper::Request::builder()
        .uri(uri)
        .body(Full::new(Bytes::new()))
        .expect("request");
    timeout(HANG, sender.ready())
        .await
        .expect("h2 ready in time")
        .expect("h2 open");
    let response = timeout(HANG, sender.send_request(request))
        .await
        .expect("h2 answer did not hang")
        .expect("h2 answer arrived");
    collect(response).await
}

async fn pooled_get(client: &Pooled, uri: &str, headers: &[(&str, &str)]) -> Answer {
    let mut builder = hyper::Request::builder().uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Full::new(Bytes::new())).expect("request");
    let response = timeout(HANG, client.request(request))
        .await
        .expect("answer did not hang")
        .expect("answer arrived");
    collect(response).await
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 client: exact bytes out, a small strict parser in.
// ---------------------------------------------------------------------------------------------

struct Raw {
    io: BufReader<TcpStream>,
}

#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn has(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn swr(&self) -> Member {
        let mut map = HeaderMap::new();
        for value in self.all("cache-status") {
            map.append(
                header::HeaderName::from_static("cache-status"),
                value.parse().expect("header value"),
            );
        }
        own_member(&map)
    }
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        let stream = timeout(HANG, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        Raw {
            io: BufReader::new(stream),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        timeout(HANG, self.io.get_mut().write_all(bytes))
            .await
            .expect("write in time")
            .expect("write");
    }

    async fn line(&mut self) -> std::io::Result<String> {
        let mut line = Vec::new();
        let n = self.io.read_until(b'\n', &mut line).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(String::from_utf8_lossy(&line)
            .trim_end_matches(['\r', '\n'])
            .to_owned())
    }

    /// Reads one final response (interim 1xx skipped); `head`: the request was a `HEAD`.
    async fn read(&mut self, head: bool) -> std::io::Result<RawResponse> {
        timeout(HANG, self.read_inner(head))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "response hung"))?
    }

    async fn read_inner(&mut self, head: bool) -> std::io::Result<RawResponse> {
        loop {
            let status_line = self.line().await?;
            let mut parts = status_line.splitn(3, ' ');
            let version = parts.next().unwrap_or_default();
            assert!(
                version.starts_with("HTTP/1."),
                "status line {status_line:?}"
            );
            let status: u16 = parts
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("status line {status_line:?}"));
            let mut headers = Vec::new();
            loop {
                let line = self.line().await?;
                if line.is_empty() {
                    break;
                }
                let (name, value) = line.split_once(':').expect("header line with a colon");
                headers.push((name.to_owned(), value.trim().to_owned()));
            }
            if (100..200).contains(&status) {
                continue;
            }
            let mut response = RawResponse {
                status,
                headers,
                body: Vec::new(),
            };
            if head || status == 204 || status == 304 {
                return Ok(response);
            }
            let chunked = response
                .header("transfer-encoding")
                .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
            if chunked {
                loop {
                    let size_line = self.line().await?;
                    let size =
                        usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
                            .expect("chunk size");
                    if size == 0 {
                        // trailers
                        while !self.line().await?.is_empty() {}
                        break;
                    }
                    let mut chunk = vec![0; size];
                    self.io.read_exact(&mut chunk).await?;
                    response.body.extend_from_slice(&chunk);
                    let crlf = self.line().await?;
                    assert!(crlf.is_empty(), "chunk not followed by CRLF");
                }
            } else if let Some(len) = response.header("content-length") {
                let len: usize = len.parse().expect("numeric Content-Length");
                let mut body = vec![0; len];
                self.io.read_exact(&mut body).await?;
                response.body = body;
            } else {
                self.io.read_to_end(&mut response.body).await?;
            }
            return Ok(response);
        }
    }

    async fn get(&mut self, host: &str, target: &str, extra: &str) -> RawResponse {
        let request = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n");
        self.send(request.as_bytes()).await;
        self.read(false).await.expect("a response")
    }
}

/// One request on a fresh raw connection.
async fn raw_once(addr: SocketAddr, request: &[u8], head: bool) -> std::io::Result<RawResponse> {
    let mut raw = Raw::connect(addr).await;
    raw.send(request).await;
    raw.read(head).await
}

// ---------------------------------------------------------------------------------------------
// RFC 9211 Cache-Status as an RFC 8941 structured-field list
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Member {
    name: String,
    params: Vec<(String, Option<String>)>,
}

impl Member {
    fn flag(&self, key: &str) -> bool {
        self.params.iter().any(|(k, v)| k == key && v.is_none())
    }
    fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
    }
    fn ttl(&self) -> Option<i64> {
        self.param("ttl")
            .map(|t| t.parse().expect("ttl is an sf-integer"))
    }
}

fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~:/".contains(c)
}

/// Parses a bare item (token, string, integer or decimal, boolean); returns it and the rest.
fn bare_item(input: &str) -> Result<(String, &str), String> {
    let first = input.chars().next().ok_or("empty item")?;
    if first == '"' {
        let mut out = String::from("\"");
        let mut chars = input[1..].char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    let (_, e) = chars.next().ok_or("dangling escape")?;
                    if e != '"' && e != '\\' {
                        return Err(format!("bad escape in {input:?}"));
                    }
                    out.push(e);
                }
                '"' => {
                    out.push('"');
                    return Ok((out, &input[i + 2..]));
                }
                c if (' '..='~').contains(&c) => out.push(c),
                _ => return Err(format!("bad string char in {input:?}")),
            }
        }
        Err(format!("unterminated string in {input:?}"))
    } else if first == '-' || first.is_ascii_digit() {
        let end = input
            .find(|c: char| !(c.is_ascii_digit() || c == '-' || c == '.'))
            .unwrap_or(input.len());
        let number = &input[..end];
        let digits = number.trim_start_matches('-');
        if digits.is_empty()
            || digits.starts_with('.')
            || digits.ends_with('.')
            || digits.len() > 16
        {
            return Err(format!("bad number {number:?}"));
        }
        Ok((number.to_owned(), &input[end..]))
    } else if first == '?' {
        match &input.get(..2) {
            Some("?0") | Some("?1") => Ok((input[..2].to_owned(), &input[2..])),
            _ => Err(format!("bad boolean in {input:?}")),
        }
    } else if first.is_ascii_alphabetic() || first == '*' {
        let end = input.find(|c: char| !is_tchar(c)).unwrap_or(input.len());
        Ok((input[..end].to_owned(), &input[end..]))
    } else {
        Err(format!("not an sf item: {input:?}"))
    }
}

fn key(input: &str) -> Result<(String, &str), String> {
    let first = input.chars().next().ok_or("empty key")?;
    if !(first.is_ascii_lowercase() || first == '*') {
        return Err(format!("bad key start in {input:?}"));
    }
    let end = input
        .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.*".contains(c)))
        .unwrap_or(input.len());
    Ok((input[..end].to_owned(), &input[end..]))
}

/// Strict RFC 8941 §4.2.1 list parse (items only: Cache-Status has no inner lists).
fn parse_sf_list(input: &str) -> Result<Vec<Member>, String> {
    let mut rest = input.trim_start_matches(' ');
    let mut members = Vec::new();
    while !rest.is_empty() {
        let (name, after) = bare_item(rest)?;
        rest = after;
        let mut params = Vec::new();
        while let Some(after) = rest.strip_prefix(';') {
            rest = after.trim_start_matches(' ');
            let (k, after) = key(rest)?;
            rest = after;
            if let Some(after) = rest.strip_prefix('=') {
                let (v, after) = bare_item(after)?;
                rest = after;
                params.push((k, Some(v)));
            } else {
                params.push((k, None));
            }
        }
        members.push(Member { name, params });
        rest = rest.trim_start_matches([' ', '\t']);
        if rest.is_empty() {
            break;
        }
        rest = rest
            .strip_prefix(',')
            .ok_or_else(|| format!("expected a comma in {input:?} at {rest:?}"))?
            .trim_start_matches([' ', '\t']);
        if rest.is_empty() {
            return Err(format!("trailing comma in {input:?}"));
        }
    }
    Ok(members)
}

/// Every `Cache-Status` line combined (RFC 9110 §5.3), parsed; the last `tower-swr` member.
fn own_member(headers: &HeaderMap) -> Member {
    let lines: Vec<String> = headers
        .get_all("cache-status")
        .iter()
        .map(|v| v.to_str().expect("Cache-Status is ASCII").to_owned())
        .collect();
    assert!(!lines.is_empty(), "no Cache-Status at all");
    let joined = lines.join(", ");
    let members = parse_sf_list(&joined).unwrap_or_else(|e| panic!("Cache-Status {joined:?}: {e}"));
    members
        .into_iter()
        .rev()
        .find(|m| m.name == "tower-swr")
        .unwrap_or_else(|| panic!("no tower-swr member in {joined:?}"))
}

fn age_of(value: Option<&str>) -> u64 {
    value
        .expect("an Age on a cached answer")
        .parse()
        .expect("Age is a non-negative integer (RFC 9111 §5.1)")
}

async fn wait_for(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + HANG;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// =============================================================================================
// HTTP/1.1 keep-alive
// =============================================================================================

#[tokio::test]
async fn keep_alive_connection_serves_a_miss_then_hits_with_exact_framing_age_and_cache_status() {
    let (app, calls) = counted("kept", &[("cache-control", "max-age=100")]);
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut conn = h1_conn(addr).await;

    let first = h1_send(
        &mut conn,
        h1_request(Method::GET, "k.example", "/page", &[]),
    )
    .await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.text(), "kept #1");
    let miss = first.swr();
    assert_eq!(miss.param("fwd"), Some("uri-miss"), "{miss:?}");
    assert!(miss.flag("stored"), "a stored miss says `stored`: {miss:?}");
    assert!(!miss.flag("hit"), "{miss:?}");

    for _ in 0..4 {
        let hit = h1_send(
            &mut conn,
            h1_request(Method::GET, "k.example", "/page", &[]),
        )
        .await;
        assert_eq!(hit.status, StatusCode::OK);
        assert_eq!(hit.text(), "kept #1");
        assert_eq!(
            hit.header("content-length").as_deref(),
            Some("7"),
            "a hit is framed by its real length"
        );
        let age = age_of(hit.header("age").as_deref());
        assert!(age <= 30, "age {age}");
        let member = hit.swr();
        assert!(member.flag("hit"), "{member:?}");
        assert!(
            member.param("fwd").is_none(),
            "a hit was not forwarded: {member:?}"
        );
        let ttl = member.ttl().expect("a hit carries ttl");
        assert!(ttl > 0 && ttl <= 100, "ttl {ttl} of max-age=100");
        assert!(
            ttl + age as i64 <= 101,
            "ttl {ttl} + age {age} past the lifetime"
        );
    }
    assert_eq!(calls.get(), 1, "one origin call for five requests");
}

#[tokio::test]
async fn an_origin_age_and_an_old_date_count_in_the_hits_age_and_ttl() {
    // RFC 9111 §4.2.3: corrected_initial_age = max(apparent_age, corrected_age_value), with
    // apparent_age = response_time - date_value. README: "`Age` and `Date` count towards age".
    let old_date = httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(40));
    let calls = Calls::default();
    let c = calls.clone();
    let app = Router::new()
        .route(
            "/aged",
            get({
                let c = c.clone();
                move || {
                    let c = c.clone();
                    async move {
                        c.bump();
                        (
                            [(header::CACHE_CONTROL, "max-age=100"), (header::AGE, "50")],
                            "aged",
                        )
                    }
                }
            }),
        )
        .route(
            "/dated",
            get(move || {
                let c = c.clone();
                let old_date = old_date.clone();
                async move {
                    c.bump();
                    (
                        [
                            (header::CACHE_CONTROL, "max-age=100".to_owned()),
                            (header::DATE, old_date),
                        ],
                        "dated",
                    )
                }
            }),
        );
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut raw = Raw::connect(addr).await;
    for (path, at_least) in [("/aged", 50), ("/dated", 40)] {
        let _fill = raw.get("a.example", path, "").await;
        let hit = raw.get("a.example", path, "").await;
        assert!(hit.swr().flag("hit"), "{path}");
        let age = age_of(hit.header("age"));
        assert!(age >= at_least, "{path}: Age {age} < {at_least}");
        assert!(age < at_least + 30, "{path}: Age {age}");
        let ttl = hit.swr().ttl().unwrap();
        assert!(
            ttl <= 100 - at_least as i64 + 1,
            "{path}: ttl {ttl} ignores the age"
        );
        assert_eq!(hit.all("date").len(), 1, "{path}: one Date");
    }
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn keep_alive_connection_alternating_keys_never_crosses_bodies() {
    let (app, calls) = counted("alt", &[]);
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut conn = h1_conn(addr).await;
    let mut bodies = std::collections::HashMap::new();
    for round in 0..3 {
        for path in ["/a", "/b", "/c?x=1"] {
            let answer =
                h1_send(&mut conn, h1_request(Method::GET, "alt.example", path, &[])).await;
            assert_eq!(answer.status, StatusCode::OK);
            assert_eq!(
                answer.header("content-length"),
                Some(answer.body.len().to_string())
            );
            let previous = bodies.entry(path).or_insert_with(|| answer.text());
            assert_eq!(*previous, answer.text(), "round {round} path {path}");
        }
    }
    let distinct: std::collections::HashSet<_> = bodies.values().collect();
    assert_eq!(distinct.len(), 3, "each key its own body: {bodies:?}");
    assert_eq!(calls.get(), 3);
}

#[tokio::test]
async fn cache_status_parses_as_a_structured_field_list_behind_an_upstream_member() {
    // RFC 9211 §2: a cache adds its member after those of caches nearer the origin.
    let (app, _calls) = counted("up", &[("cache-status", "upstream-cdn; hit; ttl=20")]);
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut conn = h1_conn(addr).await;
    for _ in 0..2 {
        let answer = h1_send(&mut conn, h1_request(Method::GET, "up.example", "/x", &[])).await;
        let joined: Vec<String> = answer
            .headers
            .get_all("cache-status")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        let members = parse_sf_list(&joined.join(", ")).expect("a valid sf-list");
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["upstream-cdn", "tower-swr"], "{joined:?}");
    }
    // A bypass (unsafe method) is a valid member too.
    let post = h1_send(&mut conn, h1_request(Method::POST, "up.example", "/x", &[])).await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    let member = post.swr();
    assert!(!member.flag("hit"), "{member:?}");
    assert!(member.param("fwd").is_some(), "{member:?}");
}

#[tokio::test]
async fn cache_name_x_cache_and_query_time_settings_show_on_the_wire() {
    let (app, calls) = counted("named", &[]);
    let layer = SwrLayer::new()
        .cache_name("edge-7")
        .x_cache_header(true)
        .query_time_header(true);
    let addr = serve(app.layer(layer)).await;
    let mut conn = h1_conn(addr).await;
    for (i, x_cache) in ["MISS", "HIT", "HIT"].into_iter().enumerate() {
        let answer = h1_send(&mut conn, h1_request(Method::GET, "n.example", "/n", &[])).await;
        let value = answer.header("cache-status").expect("Cache-Status");
        let members = parse_sf_list(&value).expect("valid sf-list");
        assert_eq!(members.last().unwrap().name, "edge-7", "{value}");
        assert_eq!(
            answer.header("x-cache").as_deref(),
            Some(x_cache),
            "answer {i}"
        );
        let ms: u64 = answer
            .header("x-query-time-ms")
            .expect("X-Query-Time-ms")
            .parse()
            .expect("milliseconds");
        if i > 0 {
            assert_eq!(ms, 0, "CHANGELOG: `0` from memory");
        }
    }
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn the_shared_cache_preset_over_the_wire_stores_only_what_the_origin_allows() {
    // README: `shared_cache()` reuses a response without Cache-Control/Expires only with
    // heuristics (Last-Modified), else not at all.
    let (silent, silent_calls) = counted("silent", &[]);
    let (explicit, explicit_calls) = counted("explicit", &[("cache-control", "max-age=100")]);
    let app = Router::new()
        .nest("/silent", silent)
        .nest("/explicit", explicit);
    let addr = serve(app.layer(SwrLayer::shared_cache())).await;
    let mut raw = Raw::connect(addr).await;
    for _ in 0..2 {
        raw.get("sc.example", "/silent/x", "").await;
        raw.get("sc.example", "/explicit/x", "").await;
    }
    assert_eq!(
        silent_calls.get(),
        2,
        "no freshness, no validator: not reused"
    );
    assert_eq!(explicit_calls.get(), 1);
}

#[tokio::test]
async fn allow_private_with_a_user_key_caches_per_user_and_never_across_users() {
    let calls = Calls::default();
    let c = calls.clone();
    let app = Router::new().route(
        "/mine",
        get(move |headers: HeaderMap| {
            let c = c.clone();
            async move {
                let n = c.bump();
                let user = headers
                    .get("x-user")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                (
                    [(header::CACHE_CONTROL, "private, max-age=100")],
                    format!("{user}'s page #{n}"),
                )
            }
        }),
    );
    let layer = SwrLayer::new().allow_private(true).key_fn(|parts| {
        Some(
            parts
                .headers
                .get("x-user")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned(),
        )
    });
    let addr = serve(app.layer(layer)).await;
    let client = pooled_h1();
    let url = format!("http://{addr}/mine");
    let alice = pooled_get(&client, &url, &[("x-user", "alice")]).await;
    let bob = pooled_get(&client, &url, &[("x-user", "bob")]).await;
    assert_eq!(alice.text(), "alice's page #1");
    assert_eq!(bob.text(), "bob's page #2");
    let alice_again = pooled_get(&pooled_h2(), &url, &[("x-user", "alice")]).await;
    assert_eq!(alice_again.text(), "alice's page #1");
    assert!(alice_again.swr().flag("hit"));
    let bob_again = pooled_get(&client, &url, &[("x-user", "bob")]).await;
    assert_eq!(bob_again.text(), "bob's page #2");
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn a_named_credential_header_keeps_the_answer_out_of_the_cache() {
    // README: "answers to requests with `Authorization` (or a header you name with
    // `credential_headers(["x-api-key"])`) unless the response says `public`...".
    let calls = Calls::default();
    let c = calls.clone();
    let app = Router::new().route(
        "/api",
        get(move |headers: HeaderMap| {
            let c = c.clone();
            async move {
                c.bump();
                let key = headers
                    .get("x-api-key")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_else(|| "none".into());
                (
                    [(header::CACHE_CONTROL, "max-age=100")],
                    format!("data for key {key}"),
                )
            }
        }),
    );
    let addr = serve(app.layer(SwrLayer::new().credential_headers(["x-api-key"]))).await;
    let mut raw = Raw::connect(addr).await;
    let keyed = raw
        .get("c.example", "/api", "X-Api-Key: secret-1\r\n")
        .await;
    assert_eq!(keyed.text(), "data for key secret-1");
    let anonymous = raw.get("c.example", "/api", "").await;
    assert_eq!(anonymous.text(), "data for key none");
    let other = raw
        .get("c.example", "/api", "X-Api-Key: secret-2\r\n")
        .await;
    assert_eq!(other.text(), "data for key secret-2");
}

#[tokio::test]
async fn an_origin_connection_close_is_not_replayed_so_hits_keep_the_connection_alive() {
    // RFC 9110 §7.6.1: `Connection` is hop-by-hop; RFC 9111 §3.1: a cache must not replay it.
    // A stored `Connection: close` replayed on every hit would close every keep-alive client.
    let (app, calls) = counted("closer", &[("connection", "close")]);
    let addr = serve(app.layer(SwrLayer::new())).await;
    // Fill on its own connection (the origin's own answer may close it).
    let mut filler = Raw::connect(addr).await;
    let first = filler.get("c.example", "/c", "").await;
    assert_eq!(first.text(), "closer #1");

    let mut raw = Raw::connect(addr).await;
    for i in 0..3 {
        let hit = raw.get("c.example", "/c", "").await;
        assert_eq!(hit.text(), "closer #1", "request {i}");
        assert!(hit.swr().flag("hit"));
        assert!(
            !hit.all("connection")
                .iter()
                .any(|v| v.eq_ignore_ascii_case("close")),
            "hit {i} replays the origin's `Connection: close`: {:?}",
            hit.headers
        );
    }
    assert_eq!(calls.get(), 1);
}

// =============================================================================================
// Hop-by-hop fields
// =============================================================================================

#[tokio::test]
async fn hop_by_hop_fields_of_the_origin_are_not_replayed_on_a_hit() {
    // RFC 9111 §3.1: a cache MUST NOT store/replay the fields listed in `Connection` and the
    // hop-by-hop fields (`Connection`, `Keep-Alive`, `Proxy-Connection`, `TE`, `Upgrade`,
    // `Transfer-Encoding`): RFC 9110 §7.6.1.
    let (app, calls) = counted(
        "hop",
        &[
            ("connection", "x-foo"),
            ("x-foo", "secret-hop"),
            ("keep-alive", "timeout=5, max=100"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "h2c"),
            ("x-kept", "end-to-end"),
        ],
    );
    // Control: without the layer these fields do reach the wire (hyper passes them on), so
    // their absence below is the layer's doing.
    let control = serve(app.clone()).await;
    let plain = Raw::connect(control)
        .await
        .get("hop.example", "/h", "")
        .await;
    assert_eq!(
        plain.header("x-foo"),
        Some("secret-hop"),
        "{:?}",
        plain.headers
    );
    assert!(
        plain.has("keep-alive") && plain.has("upgrade"),
        "{:?}",
        plain.headers
    );
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut raw = Raw::connect(addr).await;
    let _miss = raw.get("hop.example", "/h", "").await;
    let mut raw = Raw::connect(addr).await;
    let hit = raw.get("hop.example", "/h", "").await;
    assert!(hit.swr().flag("hit"), "{:?}", hit.headers);
    assert_eq!(hit.text(), "hop #2", "#1 was the control's");
    assert_eq!(
        hit.header("x-kept"),
        Some("end-to-end"),
        "end-to-end fields are kept"
    );
    let replayed: Vec<&str> = ["x-foo", "keep-alive", "proxy-connection", "upgrade"]
        .into_iter()
        .filter(|name| hit.has(name))
        .collect();
    assert!(
        !hit.all("connection").iter().any(|v| v.contains("x-foo")),
        "the origin's `Connection: x-foo` replayed: {:?}",
        hit.headers
    );
    assert!(
        replayed.is_empty(),
        "hop-by-hop fields replayed on a hit: {replayed:?} in {:?}",
        hit.headers
    );
    assert_eq!(
        calls.get(),
        2,
        "one call for the control, one for the layer"
    );
}

#[tokio::test]
async fn connection_options_in_any_case_spacing_and_line_count_are_all_left_out_of_hits() {
    // RFC 9110 §7.6.1: Connection is a comma-separated list of case-insensitive option names,
    // possibly over several field lines (§5.3); every named field is hop-by-hop.
    let (app, calls) = counted(
        "opts",
        &[
            ("connection", "X-Alpha ,x-beta"),
            ("connection", "  X-GAMMA"),
            ("x-alpha", "1"),
            ("x-beta", "2"),
            ("x-gamma", "3"),
            ("te", "trailers"),
            ("x-delta", "end-to-end"),
        ],
    );
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut raw = Raw::connect(addr).await;
    let _miss = raw.get("o.example", "/opts", "").await;
    let hit = Raw::connect(addr).await.get("o.example", "/opts", "").await;
    assert!(hit.swr().flag("hit"));
    let replayed: Vec<&str> = ["x-alpha", "x-beta", "x-gamma", "te"]
        .into_iter()
        .filter(|name| hit.has(name))
        .collect();
    assert!(
        replayed.is_empty(),
        "replayed on a hit: {replayed:?} in {:?}",
        hit.headers
    );
    assert_eq!(hit.header("x-delta"), Some("end-to-end"));
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn an_origin_transfer_encoding_field_does_not_break_the_framing_of_hits() {
    // RFC 9112 §6.1 / RFC 9110 §7.6.1: Transfer-Encoding is hop-by-hop; a hit is a new message
    // whose framing is the server's. Whatever the hit says, it must parse as one message with
    // exactly the stored body and leave the connection usable.
    let calls = Calls::default();
    let c = calls.clone();
    let app = Router::new().route(
        "/te",
        get(move || {
            let c = c.clone();
            async move {
                let n = c.bump();
                let (tx, rx) = mpsc::channel(4);
                tokio::spawn(async move {
                    let _ = tx.send(Ok(Bytes::from(format!("chunk-one #{n} ")))).await;
                    let _ = tx.send(Ok(Bytes::from_static(b"chunk-two"))).await;
                });
                Response::builder()
                    .header("transfer-encoding", "chunked")
                    .header("cache-control", "max-age=100")
                    .body(Body::new(ChanBody(rx)))
                    .unwrap()
            }
        }),
    );
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut raw = Raw::connect(addr).await;
    for i in 0..3 {
        let answer = raw.get("te.example", "/te", "").await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.text(), "chunk-one #1 chunk-two", "answer {i}");
        let te = answer.header("transfer-encoding").is_some();
        let cl = answer.header("content-length").is_some();
        assert!(
            !(te && cl),
            "both Transfer-Encoding and Content-Length: {:?}",
            answer.headers
        );
    }
    assert_eq!(calls.get(), 1);
}

// =============================================================================================
// HTTP/2 prior knowledge and keys
// =============================================================================================

/// What the origin saw of each call: the protocol version, and whether a `Host` came.
type Seen = Arc<Mutex<Vec<(Version, bool)>>>;

fn echo_host_app(cache_control: &'static str) -> (Router, Calls, Seen) {
    let calls = Calls::default();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let c = calls.clone();
    let s = seen.clone();
    let app = Router::new().route(
        "/{*path}",
        get(move |uri: Uri, version: Version, headers: HeaderMap| {
            let c = c.clone();
            let s = s.clone();
            async move {
                let n = c.bump();
                s.lock()
                    .unwrap()
                    .push((version, headers.contains_key(header::HOST)));
                (
                    [(header::CACHE_CONTROL, cache_control)],
                    format!("host={} path={} #{n}", host_of(&uri, &headers), uri.path()),
                )
            }
        }),
    );
    (app, calls, seen)
}

#[tokio::test]
async fn http2_prior_knowledge_and_http1_with_host_share_one_entry() {
    let (app, calls, seen) = echo_host_app("max-age=100");
    let addr = serve(app.layer(SwrLayer::new())).await;
    let url = format!("http://{addr}/shared?q=1");

    // HTTP/2 first: hyper-util's client sends `:authority` and no `Host`.
    let h2 = pooled_h2();
    let first = pooled_get(&h2, &url, &[]).await;
    assert_eq!(first.version, Version::HTTP_2, "h2c really used");
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(seen.lock().unwrap()[0].0, Version::HTTP_2);

    // The same request over HTTP/1.1 (the client sends `Host: 127.0.0.1:port`).
    let h1 = pooled_h1();
    let second = pooled_get(&h1, &url, &[]).await;
    assert_eq!(second.version, Version::HTTP_11);
    assert_eq!(second.body, first.body, "one entry for both protocols");
    assert!(second.swr().flag("hit"), "{:?}", second.swr());
    assert_eq!(calls.get(), 1);

    // And back over HTTP/2: still the same entry.
    let third = pooled_get(&h2, &url, &[]).await;
    assert_eq!(third.body, first.body);
    assert!(third.swr().flag("hit"));
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn http1_fill_is_a_hit_for_http2_with_the_same_authority() {
    let (app, calls, _seen) = echo_host_app("max-age=100");
    let addr = serve(app.layer(SwrLayer::new())).await;
    // HTTP/1.1 with an explicit `Host` that is not the socket address.
    let mut raw = Raw::connect(addr).await;
    let first = raw.get("site.example:8080", "/doc", "").await;
    assert_eq!(first.text(), "host=site.example:8080 path=/doc #1");
    // HTTP/2, `:authority` site.example:8080, no Host.
    let mut h2 = h2_conn(addr).await;
    let second = h2_send(&mut h2, "http://site.example:8080/doc").await;
    assert_eq!(second.version, Version::HTTP_2);
    assert_eq!(second.text(), "host=site.example:8080 path=/doc #1");
    assert!(second.swr().flag("hit"));
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn http2_requests_for_different_authorities_never_share_an_entry() {
    let (app, calls, _seen) = echo_host_app("max-age=100");
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut h2 = h2_conn(addr).await;
    let a = h2_send(&mut h2, "http://a.example/same").await;
    let b = h2_send(&mut h2, "http://b.example/same").await;
    assert_eq!(a.text(), "host=a.example path=/same #1");
    assert_eq!(b.text(), "host=b.example path=/same #2");
    // Each again, from its own entry.
    let a2 = h2_send(&mut h2, "http://a.example/same").await;
    let b2 = h2_send(&mut h2, "http://b.example/same").await;
    assert_eq!(a2.text(), a.text());
    assert_eq!(b2.text(), b.text());
    assert!(a2.swr().flag("hit") && b2.swr().flag("hit"));
    // The port is part of the authority.
    let c = h2_send(&mut h2, "http://a.example:81/same").await;
    assert_eq!(c.text(), "host=a.example:81 path=/same #3");
    assert_eq!(calls.get(), 3);
}

#[tokio::test]
async fn twenty_concurrent_http2_streams_on_one_connection_make_one_origin_call() {
    let calls = Calls::default();
    let gate = Arc::new(Semaphore::new(0));
    let (c, g) = (calls.clone(), gate.clone());
    let app = Router::new().route(
        "/slow",
        get(move || {
            let (c, g) = (c.clone(), g.clone());
            async move {
                let n = c.bump();
                let _permit = g.acquire().await.expect("gate");
                format!("slow #{n}")
            }
        }),
    );
    let addr = serve(app.layer(SwrLayer::new())).await;
    let h2 = h2_conn(addr).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let mut sender = h2.clone();
        tasks.push(tokio::spawn(async move {
            h2_send(&mut sender, "http://streams.example/slow").await
        }));
    }
    wait_for("the origin call", async || calls.get() >= 1).await;
    // Let every stream reach the layer before the origin answers (they are all on one
    // connection; a few more loop turns cost nothing).
    tokio::time::sleep(Duration::from_millis(300)).await;
    gate.add_permits(100);
    let mut leaders = 0;
    for task in tasks {
        let answer = task.await.expect("task");
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.text(), "slow #1");
        // RFC 9211 §2.2/§2.5: the one forwarded request says `fwd=uri-miss; stored`, the
        // others `collapsed` (or `hit` if one came after the fill was stored).
        let member = answer.swr();
        if member.flag("collapsed") || member.flag("hit") {
            continue;
        }
        assert_eq!(member.param("fwd"), Some("uri-miss"), "{member:?}");
        assert!(member.flag("stored"), "{member:?}");
        leaders += 1;
    }
    assert_eq!(leaders, 1, "one leader");
    assert_eq!(calls.get(), 1, "coalesced into one origin call");
}

// =============================================================================================
// Raw TCP: odd but valid shapes, malformed requests
// =============================================================================================

#[tokio::test]
async fn absolute_form_target_over_http1_shares_the_entry_of_origin_form() {
    let (app, calls, _seen) = echo_host_app("max-age=100");
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut raw = Raw::connect(addr).await;
    raw.send(b"GET http://abs.example/p?x=1 HTTP/1.1\r\nHost: abs.example\r\n\r\n")
        .await;
    let first = raw.read(false).await.expect("answer to absolute form");
    assert_eq!(first.status, 200);
    assert_eq!(first.text(), "host=abs.example path=/p #1");
    let second = raw.get("abs.example", "/p?x=1", "").await;
    assert_eq!(second.text(), first.text());
    assert!(second.swr().flag("hit"));
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn absolute_form_authority_wins_over_a_differing_host_and_the_origin_renders_it() {
    // README: "when both are present and differ, the origin is sent `Host` rewritten to the
    // authority (RFC 9112 §3.2.2), so what is rendered is what is keyed."
    let calls = Calls::default();
    let c = calls.clone();
    let app = Router::new().route(
        "/r",
        get(move |headers: HeaderMap| {
            let c = c.clone();
            async move {
                let n = c.bump();
                let host = headers
                    .get(header::HOST)
                    .map(|h| h.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                format!("rendered for Host {host} #{n}")
            }
        }),
    );
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut raw = Raw::connect(addr).await;
    raw.send(b"GET http://real.example/r HTTP/1.1\r\nHost: evil.example\r\n\r\n")
        .await;
    let first = raw.read(false).await.expect("answer");
    assert_eq!(first.text(), "rendered for Host real.example #1");
    // A client of evil.example must not get it, and one of real.example must.
    let evil = raw.get("evil.example", "/r", "").await;
    assert_eq!(evil.text(), "rendered for Host evil.example #2");
    let real = raw.get("real.example", "/r", "").await;
    assert_eq!(real.text(), "rendered for Host real.example #1");
    assert_eq!(calls.get(), 2);
}

// RFC 9110 §4.2.4: userinfo in an http URI is deprecated; "A recipient SHOULD parse for
// userinfo and treat its presence as an error; it is likely being used to obscure the
// authority for the sake of phishing attacks." README: the host keyed "is the target's
// authority (HTTP/2 `:authority`, absolute form) or else `Host`; ... so what is rendered is
// what is keyed". Here the key drops the userinfo while the origin is handed the target with
// it: an origin rendering from the request's authority (as the README says the layer keys)
// renders `user:pw@ui.example` into the page stored for every client of `ui.example`.
// (The origin of this test renders `uri.authority()`, else `Host`.)
#[tokio::test]
async fn userinfo_in_an_absolute_form_target_does_not_poison_the_hosts_entry() {
    let (app, _calls, _seen) = echo_host_app("max-age=100");
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut raw = Raw::connect(addr).await;
    raw.send(b"GET http://user:pw@ui.example/page HTTP/1.1\r\nHost: ui.example\r\n\r\n")
        .await;
    match raw.read(false).await {
        Ok(answer) => assert!(answer.status >= 200, "{}", answer.status),
        Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::TimedOut, "hung: {e}"),
    }
    let plain = Raw::connect(addr)
        .await
        .get("ui.example", "/page", "")
        .await;
    assert!(
        plain.text().starts_with("host=ui.example path=/page"),
        "the plain client got {}",
        plain.text()
    );
}

#[tokio::test]
async fn an_http2_request_without_authority_is_keyed_by_its_host_field() {
    // README: "The host is the target's authority (HTTP/2 `:authority`, absolute form) or
    // else `Host`".
    let (app, calls, _seen) = echo_host_app("max-age=100");
    let addr = serve(app.layer(SwrLayer::new())).await;
    let filled = Raw::connect(addr).await.get("na.example", "/na", "").await;
    assert_eq!(filled.text(), "host=na.example path=/na #1");
    let mut h2 = h2_conn(addr).await;
    let request = hyper::Request::builder()
        .uri("/na")
        .header(header::HOST, "na.example")
        .body(Full::new(Bytes::new()))
        .unwrap();
    timeout(HANG, h2.ready()).await.unwrap().unwrap();
    match timeout(HANG, h2.send_request(request))
        .await
        .expect("no hang")
    {
        Ok(response) => {
            let answer = collect(response).await;
            assert_eq!(
                answer.text(),
                "host=na.example path=/na #1",
                "{:?}",
                answer.swr()
            );
            assert_eq!(calls.get(), 1);
        }
        // hyper's h2 client may refuse a request without scheme and authority.
        Err(e) => eprintln!("h2 request without :authority not sent: {e}"),
    }
}

#[tokio::test]
async fn uppercase_and_trailing_dot_hosts_are_answered_and_the_connection_stays_usable() {
    let (app, _calls, _seen) = echo_host_app("max-age=100");
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut raw = Raw::connect(addr).await;
    for host in [
        "Odd.EXAMPLE",
        "odd.example.",
        "ODD.example.:80",
        "odd.example",
    ] {
        for _ in 0..2 {
            let answer = raw.get(host, "/h", "").await;
            assert_eq!(answer.status, 200, "host {host}");
            assert_eq!(
                answer.header("content-length"),
                Some(answer.body.len().to_string().as_str()),
                "host {host}"
            );
            // Keys hold the host in lowercase (RFC 9110 §4.2.3: case-insensitive), so a page
            // rendered for the same host in other letters may answer.
            let rendered = answer.text().to_ascii_lowercase();
            assert!(
                rendered.starts_with(&format!("host={} path=/h", host.to_ascii_lowercase())),
                "host {host}: a page rendered for this host, got {}",
                answer.text()
            );
        }
    }
}

// RFC 9110 §4.2.3: "The scheme and host are case-insensitive and normally provided in
// lowercase"; two URIs differing only in host case are equivalent, and the layer documents its
// key as "method + host + path + query". Already recorded as an open FINDING in
// tests/regression_review.rs (keys hold the host as sent); this one shows it from a real
// HTTP/1.1 client against an HTTP/2 one.
#[tokio::test]
async fn host_case_does_not_split_the_entry_between_http1_and_http2() {
    let (app, calls, _seen) = echo_host_app("max-age=100");
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut raw = Raw::connect(addr).await;
    let _ = raw.get("SITE.example", "/case", "").await;
    let mut h2 = h2_conn(addr).await;
    let second = h2_send(&mut h2, "http://site.example/case").await;
    assert!(second.swr().flag("hit"), "{:?}", second.swr());
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn duplicate_query_params_and_percent_encoding_are_keyed_as_sent() {
    let (app, calls, _seen) = echo_host_app("max-age=100");
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut raw = Raw::connect(addr).await;
    let targets = [
        "/q?a=1&a=2",
        "/q?a=2&a=1",
        "/q?a=1&a=1",
        "/caf%C3%A9?x=%20y",
        "/caf%C3%A9?x=+y",
        "/q?a=1&a=2&",
    ];
    let mut firsts = Vec::new();
    for target in targets {
        let answer = raw.get("q.example", target, "").await;
        assert_eq!(answer.status, 200, "{target}");
        firsts.push(answer.text());
    }
    assert_eq!(
        calls.get(),
        targets.len(),
        "each distinct target is its own key"
    );
    for (target, first) in targets.iter().zip(&firsts) {
        let again = raw.get("q.example", target, "").await;
        assert_eq!(&again.text(), first, "{target} answered from its own entry");
        assert!(again.swr().flag("hit"), "{target}");
    }
    assert_eq!(calls.get(), targets.len());
}

#[tokio::test]
async fn a_malformed_header_line_gets_a_4xx_and_the_server_keeps_serving() {
    let (app, calls) = counted("ok", &[]);
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut warm = Raw::connect(addr).await;
    assert_eq!(warm.get("m.example", "/m", "").await.status, 200);
    let mut too_many_fields = b"GET /m HTTP/1.1\r\nHost: m.example\r\n".to_vec();
    for i in 0..500 {
        too_many_fields.extend_from_slice(format!("X-Field-{i}: v\r\n").as_bytes());
    }
    too_many_fields.extend_from_slice(b"\r\n");

    for bad in [
        &b"GET /m HTTP/1.1\r\nHost: m.example\r\nNo Colon Here\r\n\r\n"[..],
        b"GET /m HTTP/1.1\r\nHost: m.example\r\n: empty-name\r\n\r\n",
        b"GET /m HTTP/1.1\r\nHost: m.example\r\nBad\x01Name: v\r\n\r\n",
        b"GET /m HTTP/1.1\r\nHost: m.example\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"GET /m HTTP/9.9\r\nHost: m.example\r\n\r\n",
        b"GET  HTTP/1.1\r\nHost: m.example\r\n\r\n",
        b"GET /m HTTP/1.1\r\nHost: m.example\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /m HTTP/1.1\r\nHost: m.example\r\nTransfer-Encoding: gzip\r\n\r\n",
        &too_many_fields,
    ] {
        match raw_once(addr, bad, false).await {
            // hyper takes CL + TE as chunked (RFC 9112 §6.3 allows it) and answers.
            Ok(answer) => assert!(
                (400..500).contains(&answer.status)
                    || answer.status == 505
                    || (answer.status == 200 && answer.text() == "ok #1"),
                "{:?} -> {}",
                String::from_utf8_lossy(bad),
                answer.status
            ),
            // hyper may close without an answer on some garbage; it must not hang.
            Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::TimedOut, "hung: {e}"),
        }
    }
    let after = Raw::connect(addr).await.get("m.example", "/m", "").await;
    assert_eq!(after.status, 200);
    assert_eq!(after.text(), "ok #1", "the entry survived the garbage");
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn an_oversized_header_line_is_refused_without_hanging_and_the_cache_still_answers() {
    let (app, calls) = counted("big", &[]);
    let addr = serve(app.layer(SwrLayer::new())).await;
    assert_eq!(
        Raw::connect(addr)
            .await
            .get("b.example", "/b", "")
            .await
            .status,
        200
    );
    let huge = "x".repeat(1 << 20);
    let request = format!("GET /b HTTP/1.1\r\nHost: b.example\r\nX-Huge: {huge}\r\n\r\n");
    let mut raw = Raw::connect(addr).await;
    // The server may stop reading (and reset) before the whole header is written.
    let _ = timeout(HANG, raw.io.get_mut().write_all(request.as_bytes())).await;
    match raw.read(false).await {
        Ok(answer) => assert!((400..500).contains(&answer.status), "{}", answer.status),
        Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::TimedOut, "hung: {e}"),
    }
    let after = Raw::connect(addr).await.get("b.example", "/b", "").await;
    assert_eq!(after.text(), "big #1");
    assert!(after.swr().flag("hit"));
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn non_utf8_header_values_and_http10_requests_are_answered() {
    let (app, calls) = counted("bytes", &[]);
    let addr = serve(app.layer(SwrLayer::new())).await;
    let answer = raw_once(
        addr,
        b"GET /u HTTP/1.1\r\nHost: u.example\r\nX-Name: caf\xe9 \xff\r\nAccept-Language: \xfe\r\n\r\n",
        false,
    )
    .await
    .expect("answer");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), "bytes #1");
    // HTTP/1.0 with a Host: the same entry; the server closes after it (no keep-alive asked).
    let old = raw_once(addr, b"GET /u HTTP/1.0\r\nHost: u.example\r\n\r\n", false)
        .await
        .expect("answer to HTTP/1.0");
    assert_eq!(old.status, 200);
    assert_eq!(old.text(), "bytes #1");
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn a_get_with_a_body_on_a_hit_leaves_the_keep_alive_stream_in_frame() {
    // The layer answers a hit without reading the request body (README: a GET is answered as
    // the GET without it). The server must then skip or close; never read "hello" as the
    // start of the next request.
    let (app, calls) = counted("with-body", &[("cache-control", "max-age=100")]);
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut raw = Raw::connect(addr).await;
    assert_eq!(raw.get("g.example", "/g", "").await.text(), "with-body #1");
    for framing in [
        &b"GET /g HTTP/1.1\r\nHost: g.example\r\nContent-Length: 5\r\n\r\nhello"[..],
        b"GET /g HTTP/1.1\r\nHost: g.example\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ] {
        let mut raw = Raw::connect(addr).await;
        raw.send(framing).await;
        raw.send(b"GET /g HTTP/1.1\r\nHost: g.example\r\n\r\n").await;
        let first = raw.read(false).await.expect("answer to the GET with a body");
        assert_eq!(first.status, 200);
        assert_eq!(first.text(), "with-body #1");
        match raw.read(false).await {
            Ok(next) => {
                assert_eq!(next.status, 200, "the body was read as a request: {next:?}");
                assert_eq!(next.text(), "with-body #1");
            }
            // Closing instead of draining is allowed (RFC 9112 §9.3); hanging is not.
            Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::TimedOut, "hung: {e}"),
        }
    }
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn expect_100_continue_on_a_hit_gets_the_final_answer_without_sending_the_body() {
    let (app, calls) = counted("expect", &[("cache-control", "max-age=100")]);
    let addr = serve(app.layer(SwrLayer::new())).await;
    assert_eq!(
        Raw::connect(addr)
            .await
            .get("x.example", "/x", "")
            .await
            .text(),
        "expect #1"
    );
    let mut raw = Raw::connect(addr).await;
    raw.send(
        b"GET /x HTTP/1.1\r\nHost: x.example\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .await;
    // No body sent: a hit must not wait for it.
    let answer = raw
        .read(false)
        .await
        .expect("final answer without the body");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), "expect #1");
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn a_leader_client_leaving_before_the_origin_answers_hands_the_answer_to_its_waiter() {
    // README: "a miss leader whose client goes away hands over to its waiters (another attempt
    // starts)".
    let calls = Calls::default();
    let gate = Arc::new(Semaphore::new(0));
    let (c, g) = (calls.clone(), gate.clone());
    let app = Router::new().route(
        "/held",
        get(move || {
            let (c, g) = (c.clone(), g.clone());
            async move {
                let n = c.bump();
                let _permit = g.acquire().await.expect("gate");
                (
                    [(header::CACHE_CONTROL, "max-age=100")],
                    format!("held #{n}"),
                )
            }
        }),
    );
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut leader = Raw::connect(addr).await;
    leader
        .send(b"GET /held HTTP/1.1\r\nHost: h.example\r\n\r\n")
        .await;
    wait_for("the leader's origin call", async || calls.get() == 1).await;
    let waiter = tokio::spawn(async move {
        let mut conn = h1_conn(addr).await;
        h1_send(
            &mut conn,
            h1_request(Method::GET, "h.example", "/held", &[]),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(leader);
    tokio::time::sleep(Duration::from_millis(300)).await;
    gate.add_permits(100);
    let answer = timeout(HANG, waiter)
        .await
        .expect("waiter answered")
        .expect("task");
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.text().starts_with("held #"), "{}", answer.text());
    let again = Raw::connect(addr).await.get("h.example", "/held", "").await;
    assert_eq!(
        again.text(),
        answer.text(),
        "the waiter's answer was stored"
    );
    assert!(calls.get() <= 2, "calls {}", calls.get());
}

#[tokio::test]
async fn a_stored_204_is_replayed_without_content_length_or_a_body() {
    // RFC 9110 §8.6: "A server MUST NOT send a Content-Length header field in any response
    // with a status code of 1xx (Informational) or 204 (No Content)"; §15.3.5: no content.
    let calls = Calls::default();
    let c = calls.clone();
    let app = Router::new().route(
        "/empty",
        get(move || {
            let c = c.clone();
            async move {
                c.bump();
                (
                    StatusCode::NO_CONTENT,
                    [(header::CACHE_CONTROL, "max-age=100")],
                )
            }
        }),
    );
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut raw = Raw::connect(addr).await;
    for i in 0..3 {
        raw.send(b"GET /empty HTTP/1.1\r\nHost: e.example\r\n\r\n")
            .await;
        let answer = raw.read(false).await.expect("204");
        assert_eq!(answer.status, 204, "answer {i}");
        assert!(
            !answer.has("content-length"),
            "answer {i}: {:?}",
            answer.headers
        );
        assert!(
            !answer.has("transfer-encoding"),
            "answer {i}: {:?}",
            answer.headers
        );
    }
    // Nothing stray after the 204s: the next request parses.
    raw.send(b"HEAD /empty HTTP/1.1\r\nHost: e.example\r\n\r\n")
        .await;
    assert_eq!(raw.read(true).await.expect("HEAD").status, 204);
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn a_request_with_two_host_fields_does_not_poison_either_hosts_entry() {
    // RFC 9112 §3.2: a server MUST answer 400 to a request with more than one Host field
    // line. Whatever the answer, the page stored for the first Host must be that host's page
    // as the origin renders it for a request with only that Host.
    let (app, calls, _seen) = echo_host_app("max-age=100");
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut raw = Raw::connect(addr).await;
    raw.send(b"GET /two HTTP/1.1\r\nHost: victim.example\r\nHost: evil.example\r\n\r\n")
        .await;
    match raw.read(false).await {
        Ok(answer) => assert!(
            answer.status == 400 || answer.status == 200,
            "{}",
            answer.status
        ),
        Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::TimedOut, "hung: {e}"),
    }
    for host in ["victim.example", "evil.example"] {
        let answer = Raw::connect(addr).await.get(host, "/two", "").await;
        assert!(
            answer.text().starts_with(&format!("host={host} path=/two")),
            "{host} got {}",
            answer.text()
        );
    }
    assert!(calls.get() <= 3);
}

// =============================================================================================
// Clients leaving mid-body
// =============================================================================================

/// An origin streaming `chunks` chunks of 1,000 bytes, 40 ms apart; `with_length` sets
/// `Content-Length`. Every call streams the same bytes.
fn slow_stream_app(chunks: usize, with_length: bool) -> (Router, Calls) {
    let calls = Calls::default();
    let c = calls.clone();
    let app = Router::new().route(
        "/stream",
        get(move || {
            let c = c.clone();
            async move {
                c.bump();
                let (tx, rx) = mpsc::channel(1);
                tokio::spawn(async move {
                    let all = pattern(chunks * 1000);
                    for i in 0..chunks {
                        if tx
                            .send(Ok(all.slice(i * 1000..(i + 1) * 1000)))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(40)).await;
                    }
                });
                let mut builder = Response::builder().header("cache-control", "max-age=100");
                if with_length {
                    builder = builder.header("content-length", (chunks * 1000).to_string());
                }
                builder.body(Body::new(ChanBody(rx))).unwrap()
            }
        }),
    );
    (app, calls)
}

async fn leave_after_first_bytes(addr: SocketAddr) {
    let mut leaver = Raw::connect(addr).await;
    leaver
        .send(b"GET /stream HTTP/1.1\r\nHost: s.example\r\n\r\n")
        .await;
    let mut buf = vec![0; 2048];
    let mut got = 0;
    // Head plus some body bytes, then go away.
    while got < 1500 {
        let n = timeout(HANG, leaver.io.read(&mut buf))
            .await
            .expect("first bytes in time")
            .expect("read");
        assert!(n > 0, "closed before any body");
        got += n;
    }
    drop(leaver);
}

async fn assert_later_clients_get_whole_bodies(addr: SocketAddr, chunks: usize, calls: &Calls) {
    let expected = pattern(chunks * 1000);
    for i in 0..3 {
        let answer = Raw::connect(addr)
            .await
            .get("s.example", "/stream", "")
            .await;
        assert_eq!(answer.status, 200, "client {i}");
        assert_eq!(
            answer.body.len(),
            expected.len(),
            "client {i}: truncated body"
        );
        assert_eq!(answer.body, expected.to_vec(), "client {i}: wrong bytes");
        if let Some(len) = answer.header("content-length") {
            assert_eq!(len, expected.len().to_string());
        }
    }
    assert!(calls.get() <= 2, "origin calls {}", calls.get());
}

#[tokio::test]
async fn a_client_leaving_mid_stream_leaves_no_truncated_entry_with_content_length() {
    let (app, calls) = slow_stream_app(12, true);
    let addr = serve(app.layer(SwrLayer::new())).await;
    leave_after_first_bytes(addr).await;
    assert_later_clients_get_whole_bodies(addr, 12, &calls).await;
}

#[tokio::test]
async fn a_client_leaving_mid_stream_leaves_no_truncated_entry_without_content_length() {
    let (app, calls) = slow_stream_app(12, false);
    let addr = serve(app.layer(SwrLayer::new())).await;
    leave_after_first_bytes(addr).await;
    assert_later_clients_get_whole_bodies(addr, 12, &calls).await;
}

#[tokio::test]
async fn a_joiner_reading_while_the_first_client_leaves_gets_the_whole_body() {
    let (app, calls) = slow_stream_app(15, false);
    let addr = serve(app.layer(SwrLayer::new())).await;
    let expected = pattern(15_000);
    let joiner = tokio::spawn(async move {
        let mut conn = h1_conn(addr).await;
        // Starts while the first client is still reading (its origin call is under way).
        h1_send(
            &mut conn,
            h1_request(Method::GET, "s.example", "/stream", &[]),
        )
        .await
    });
    leave_after_first_bytes(addr).await;
    let answer = joiner.await.expect("joiner");
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, expected);
    assert_later_clients_get_whole_bodies(addr, 15, &calls).await;
}

#[tokio::test]
async fn a_range_request_during_a_streaming_fill_gets_exactly_its_bytes() {
    // CHANGELOG: during a fill "a conditional or range request waits for the stored body and
    // is answered from it".
    let (app, calls) = slow_stream_app(12, false);
    let addr = serve(app.layer(SwrLayer::new())).await;
    let expected = pattern(12_000);
    let reader = tokio::spawn(async move {
        Raw::connect(addr)
            .await
            .get("s.example", "/stream", "")
            .await
    });
    wait_for("the fill to start", async || calls.get() == 1).await;
    let part = Raw::connect(addr)
        .await
        .get("s.example", "/stream", "Range: bytes=5000-5099\r\n")
        .await;
    match part.status {
        206 => {
            assert_eq!(part.header("content-range"), Some("bytes 5000-5099/12000"));
            assert_eq!(part.body, expected[5000..5100].to_vec());
        }
        200 => assert_eq!(part.body, expected.to_vec()),
        other => panic!("status {other}"),
    }
    let whole = reader.await.expect("reader");
    assert_eq!(whole.body, expected.to_vec());
    assert_eq!(calls.get(), 1, "the range request joined the fill");
}

#[tokio::test]
async fn a_streamed_body_over_max_body_bytes_reaches_every_reader_whole_and_is_not_stored() {
    // README: "A body longer than `max_body_bytes` reaches the clients already reading it byte
    // for byte and is not stored; later requests go to the origin".
    let (app, calls) = slow_stream_app(10, false);
    let addr = serve(app.layer(SwrLayer::new().max_body_bytes(4_000))).await;
    let expected = pattern(10_000);
    let first = tokio::spawn(async move {
        Raw::connect(addr)
            .await
            .get("s.example", "/stream", "")
            .await
    });
    wait_for("the fill to start", async || calls.get() == 1).await;
    let second = Raw::connect(addr)
        .await
        .get("s.example", "/stream", "")
        .await;
    assert_eq!(second.body.len(), expected.len(), "the joiner's body");
    assert_eq!(second.body, expected.to_vec());
    let first = first.await.expect("first");
    assert_eq!(first.body, expected.to_vec());
    let before = calls.get();
    let third = Raw::connect(addr)
        .await
        .get("s.example", "/stream", "")
        .await;
    assert_eq!(third.body, expected.to_vec());
    assert!(
        !third.swr().flag("hit"),
        "an oversized body was stored: {:?}",
        third.swr()
    );
    assert_eq!(calls.get(), before + 1);
}

#[tokio::test]
async fn an_http2_stream_reset_mid_fill_leaves_the_other_streams_and_the_entry_whole() {
    let (app, calls) = slow_stream_app(12, true);
    let addr = serve(app.layer(SwrLayer::new())).await;
    let expected = pattern(12_000);
    let mut h2 = h2_conn(addr).await;
    // Stream 1: read the head and one frame, then drop the body (RST_STREAM).
    let request = hyper::Request::builder()
        .uri("http://r.example/stream")
        .body(Full::new(Bytes::new()))
        .unwrap();
    timeout(HANG, h2.ready()).await.unwrap().unwrap();
    let response = timeout(HANG, h2.send_request(request))
        .await
        .unwrap()
        .unwrap();
    let mut body = response.into_body();
    let first = timeout(HANG, body.frame())
        .await
        .expect("a first frame")
        .expect("a frame");
    assert!(first.is_ok());
    drop(body);
    // Stream 2 on the same connection, started after the reset.
    let whole = h2_send(&mut h2, "http://r.example/stream").await;
    assert_eq!(whole.body, expected, "the other stream's body is whole");
    let again = h2_send(&mut h2, "http://r.example/stream").await;
    assert_eq!(again.body, expected);
    assert!(calls.get() <= 2, "calls {}", calls.get());
}

#[tokio::test]
async fn an_origin_body_failing_mid_stream_is_an_error_on_the_wire_and_is_not_stored() {
    let calls = Calls::default();
    let c = calls.clone();
    let app = Router::new().route(
        "/cut",
        get(move || {
            let c = c.clone();
            async move {
                let n = c.bump();
                let (tx, rx) = mpsc::channel(4);
                tokio::spawn(async move {
                    let _ = tx.send(Ok(Bytes::from_static(b"first half|"))).await;
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    if n == 1 {
                        let _ = tx.send(Err("origin died".into())).await;
                    } else {
                        let _ = tx.send(Ok(Bytes::from_static(b"second half"))).await;
                    }
                });
                Response::builder()
                    .header("cache-control", "max-age=100")
                    .body(Body::new(ChanBody(rx)))
                    .unwrap()
            }
        }),
    );
    let addr = serve(app.layer(SwrLayer::new())).await;
    let client = pooled_h1();
    let request = hyper::Request::builder()
        .uri(format!("http://{addr}/cut"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = timeout(HANG, client.request(request))
        .await
        .expect("no hang")
        .expect("head");
    let body = timeout(HANG, response.into_body().collect())
        .await
        .expect("no hang");
    assert!(
        body.is_err(),
        "a cut body must reach the client as an error, got {:?}",
        body.map(|b| b.to_bytes())
    );
    let whole = pooled_get(&client, &format!("http://{addr}/cut"), &[]).await;
    assert_eq!(
        whole.text(),
        "first half|second half",
        "the half body was not stored"
    );
    assert_eq!(calls.get(), 2);
}

// =============================================================================================
// Conditionals, ranges, HEAD
// =============================================================================================

fn etag_app() -> (Router, Calls) {
    counted(
        "tagged-body",
        &[
            ("cache-control", "max-age=100"),
            ("etag", "\"v1\""),
            ("vary", "accept-encoding"),
            ("x-end", "kept"),
        ],
    )
}

#[tokio::test]
async fn if_none_match_with_the_stored_etag_gets_a_304_with_no_body_and_the_right_headers() {
    let (app, calls) = etag_app();
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut raw = Raw::connect(addr).await;
    let full = raw.get("e.example", "/e", "").await;
    assert_eq!(full.status, 200);
    let full_len = full.body.len().to_string();

    raw.send(b"GET /e HTTP/1.1\r\nHost: e.example\r\nIf-None-Match: \"v0\", \"v1\"\r\n\r\n")
        .await;
    let not_modified = raw.read(false).await.expect("304");
    assert_eq!(not_modified.status, 304);
    // RFC 9110 §15.4.5: the 304 carries ETag, Cache-Control, Vary as the 200 would.
    assert_eq!(not_modified.header("etag"), Some("\"v1\""));
    assert_eq!(not_modified.header("cache-control"), Some("max-age=100"));
    assert!(not_modified
        .header("vary")
        .is_some_and(|v| v.eq_ignore_ascii_case("accept-encoding")));
    // RFC 9110 §8.6: a Content-Length on a 304 is the length the 200 would have.
    if let Some(len) = not_modified.header("content-length") {
        assert_eq!(
            len, full_len,
            "304 with a Content-Length other than the 200's"
        );
    }
    assert!(not_modified.header("transfer-encoding").is_none());
    // No stray body bytes: the next answer on this connection parses from its status line.
    let next = raw.get("e.example", "/e", "").await;
    assert_eq!(next.status, 200);
    assert_eq!(next.body, full.body);
    // A non-matching tag gets the full answer.
    let other = raw
        .get("e.example", "/e", "If-None-Match: \"v2\"\r\n")
        .await;
    assert_eq!(other.status, 200);
    assert_eq!(other.body, full.body);
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn a_weak_if_none_match_matches_the_strong_stored_etag() {
    // RFC 9110 §13.1.2: If-None-Match uses the weak comparison: W/"v1" matches "v1".
    let (app, calls) = etag_app();
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut raw = Raw::connect(addr).await;
    assert_eq!(raw.get("e.example", "/w", "").await.status, 200);
    let answer = raw
        .get("e.example", "/w", "If-None-Match: W/\"v1\"\r\n")
        .await;
    assert_eq!(answer.status, 304);
    assert!(answer.body.is_empty());
    let member = answer.swr();
    assert!(
        member.flag("hit"),
        "a 304 from the store is a hit: {member:?}"
    );
    let star = raw.get("e.example", "/w", "If-None-Match: *\r\n").await;
    assert_eq!(star.status, 304);
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn if_range_gets_the_range_only_when_its_strong_etag_matches() {
    // RFC 9110 §13.1.5: If-Range with an entity-tag uses the strong comparison; a mismatch (or
    // a weak tag) means the whole representation as 200.
    let (app, calls) = etag_app();
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut raw = Raw::connect(addr).await;
    let full = raw.get("e.example", "/ir", "").await;
    assert_eq!(full.status, 200);
    let matching = raw
        .get(
            "e.example",
            "/ir",
            "Range: bytes=0-5\r\nIf-Range: \"v1\"\r\n",
        )
        .await;
    assert_eq!(matching.status, 206);
    assert_eq!(matching.body, full.body[..6].to_vec());
    let member = matching.swr();
    assert!(member.flag("hit"), "{member:?}");
    // RFC 9110 §15.3.7: a 206 carries the ETag, Cache-Control and Vary a 200 would.
    assert_eq!(matching.header("etag"), Some("\"v1\""));
    assert_eq!(matching.header("cache-control"), Some("max-age=100"));
    assert!(matching.has("vary"), "{:?}", matching.headers);
    assert!(matching.has("date"));
    for stale_validator in ["\"v0\"", "W/\"v1\""] {
        let answer = raw
            .get(
                "e.example",
                "/ir",
                &format!("Range: bytes=0-5\r\nIf-Range: {stale_validator}\r\n"),
            )
            .await;
        assert_eq!(answer.status, 200, "If-Range {stale_validator}");
        assert_eq!(
            answer.body, full.body,
            "If-Range {stale_validator}: the whole body"
        );
        assert!(answer.header("content-range").is_none());
    }
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn a_weak_stored_etag_validates_if_none_match_but_never_if_range() {
    // RFC 9110 §13.1.2: If-None-Match uses the weak comparison; §13.1.5: "A client MUST NOT
    // generate an If-Range header field containing an entity tag that is marked as weak" and
    // the server's If-Range evaluation uses the strong comparison, which a weak tag never
    // passes: the whole body as 200.
    let (app, calls) = counted(
        "weakly tagged body",
        &[("cache-control", "max-age=100"), ("etag", "W/\"w1\"")],
    );
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut raw = Raw::connect(addr).await;
    let full = raw.get("w.example", "/weak", "").await;
    assert_eq!(full.status, 200);
    for inm in ["W/\"w1\"", "\"w1\""] {
        let answer = raw
            .get("w.example", "/weak", &format!("If-None-Match: {inm}\r\n"))
            .await;
        assert_eq!(answer.status, 304, "If-None-Match: {inm}");
    }
    for if_range in ["W/\"w1\"", "\"w1\""] {
        let answer = raw
            .get(
                "w.example",
                "/weak",
                &format!("Range: bytes=0-3\r\nIf-Range: {if_range}\r\n"),
            )
            .await;
        assert_eq!(
            answer.status, 200,
            "If-Range: {if_range} against a weak ETag"
        );
        assert_eq!(answer.body, full.body);
    }
    assert_eq!(calls.get(), 1);
}

// RFC 9110 §13.1.5: to evaluate an If-Range with an HTTP-date, "If the HTTP-date validator
// provided is not a strong validator in the sense defined by Section 8.8.2.2, the condition is
// false"; §8.8.2.2: compared by an intermediate cache, a Last-Modified is strong only if the
// entry's Date is at least 60 seconds after it (by an origin, only if it knows the
// representation did not change twice in that second). A Last-Modified of years ago is
// strong: the range; one of this very second is weak: the whole body as 200.
#[tokio::test]
async fn if_range_with_a_date_needs_a_strong_last_modified() {
    let now = httpdate::fmt_http_date(std::time::SystemTime::now());
    let old = "Sat, 01 Jan 2022 00:00:00 GMT";
    let calls = Calls::default();
    let c = calls.clone();
    let app = Router::new().route(
        "/{which}",
        get(
            move |axum::extract::Path(which): axum::extract::Path<String>| {
                let c = c.clone();
                let lm = if which == "old" {
                    old.to_owned()
                } else {
                    now.clone()
                };
                async move {
                    c.bump();
                    (
                        [
                            (header::CACHE_CONTROL, "max-age=100".to_owned()),
                            (header::LAST_MODIFIED, lm),
                        ],
                        FULL,
                    )
                }
            },
        ),
    );
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut raw = Raw::connect(addr).await;
    let old_full = raw.get("d.example", "/old", "").await;
    let new_full = raw.get("d.example", "/new", "").await;
    let new_lm = new_full
        .header("last-modified")
        .expect("Last-Modified")
        .to_owned();
    assert_eq!(old_full.text(), FULL);

    let strong = raw
        .get(
            "d.example",
            "/old",
            &format!("Range: bytes=0-3\r\nIf-Range: {old}\r\n"),
        )
        .await;
    assert!(
        strong.status == 206 || strong.status == 200,
        "{}",
        strong.status
    );
    if strong.status == 206 {
        assert_eq!(strong.text(), "0123");
    }
    let weak = raw
        .get(
            "d.example",
            "/new",
            &format!("Range: bytes=0-3\r\nIf-Range: {new_lm}\r\n"),
        )
        .await;
    assert_eq!(
        weak.status, 200,
        "a Last-Modified of this second is a weak validator"
    );
    assert_eq!(weak.text(), FULL);
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn if_range_against_a_response_without_that_validator_gets_the_whole_body() {
    // RFC 9110 §13.1.5: an entity-tag If-Range is true only if it strongly matches the
    // representation's ETag, a date only if it exactly matches its Last-Modified; with neither
    // stored the condition is false: 200 with the whole body.
    let (app, calls) = counted("no validators here", &[("cache-control", "max-age=100")]);
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut raw = Raw::connect(addr).await;
    let full = raw.get("n.example", "/nv", "").await;
    for if_range in ["\"anything\"", "Sat, 01 Jan 2022 00:00:00 GMT", "garbage"] {
        let answer = raw
            .get(
                "n.example",
                "/nv",
                &format!("Range: bytes=0-3\r\nIf-Range: {if_range}\r\n"),
            )
            .await;
        assert_eq!(answer.status, 200, "If-Range: {if_range}");
        assert_eq!(answer.body, full.body, "If-Range: {if_range}");
    }
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn a_range_request_gets_a_206_with_content_range_and_exactly_those_bytes() {
    let calls = Calls::default();
    let c = calls.clone();
    let app = Router::new().route(
        "/r",
        get(move || {
            let c = c.clone();
            async move {
                c.bump();
                (
                    [(header::CACHE_CONTROL, "max-age=100")],
                    "0123456789abcdefghij",
                )
            }
        }),
    );
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut raw = Raw::connect(addr).await;
    let full = raw.get("r.example", "/r", "").await;
    assert_eq!(full.text(), "0123456789abcdefghij");

    let part = raw.get("r.example", "/r", "Range: bytes=0-9\r\n").await;
    assert_eq!(part.status, 206);
    assert_eq!(part.header("content-range"), Some("bytes 0-9/20"));
    assert_eq!(part.header("content-length"), Some("10"));
    assert_eq!(part.text(), "0123456789");
    // RFC 9111 §4: a stored response used without validation carries an Age.
    age_of(part.header("age"));
    assert!(part.swr().flag("hit"));
    let tail = raw.get("r.example", "/r", "Range: bytes=-5\r\n").await;
    assert_eq!(tail.status, 206);
    assert_eq!(tail.header("content-range"), Some("bytes 15-19/20"));
    assert_eq!(tail.text(), "fghij");
    // Unsatisfiable: 416 with `Content-Range: bytes */20` (RFC 9110 §15.5.17), framing intact.
    let past = raw.get("r.example", "/r", "Range: bytes=50-60\r\n").await;
    assert!(past.status == 416 || past.status == 200, "{}", past.status);
    if past.status == 416 {
        assert_eq!(past.header("content-range"), Some("bytes */20"));
    }
    let after = raw.get("r.example", "/r", "").await;
    assert_eq!(after.text(), "0123456789abcdefghij");
    assert_eq!(calls.get(), 1);
}

fn last_modified_app(status: StatusCode) -> (Router, Calls) {
    let calls = Calls::default();
    let c = calls.clone();
    let app = Router::new().route(
        "/{*path}",
        get(move || {
            let c = c.clone();
            async move {
                c.bump();
                (
                    status,
                    [
                        (header::CACHE_CONTROL, "max-age=100"),
                        (header::LAST_MODIFIED, "Sat, 01 Jan 2022 00:00:00 GMT"),
                        (header::ETAG, "\"lm1\""),
                    ],
                    "0123456789ABCDEFGHIJ",
                )
            }
        }),
    );
    (app, calls)
}

#[tokio::test]
async fn if_modified_since_is_answered_from_the_store_and_ignored_beside_if_none_match() {
    // RFC 9110 §13.1.3: "A recipient MUST ignore If-Modified-Since if the request contains an
    // If-None-Match header field"; §13.2.2: If-None-Match is evaluated first.
    let (app, calls) = last_modified_app(StatusCode::OK);
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut raw = Raw::connect(addr).await;
    assert_eq!(raw.get("l.example", "/lm", "").await.status, 200);
    let same = raw
        .get(
            "l.example",
            "/lm",
            "If-Modified-Since: Sat, 01 Jan 2022 00:00:00 GMT\r\n",
        )
        .await;
    assert_eq!(same.status, 304);
    let later = raw
        .get(
            "l.example",
            "/lm",
            "If-Modified-Since: Sun, 01 Jan 2023 00:00:00 GMT\r\n",
        )
        .await;
    assert_eq!(later.status, 304);
    let earlier = raw
        .get(
            "l.example",
            "/lm",
            "If-Modified-Since: Fri, 01 Jan 2021 00:00:00 GMT\r\n",
        )
        .await;
    assert_eq!(earlier.status, 200);
    assert_eq!(earlier.text(), FULL);
    let both = raw
        .get(
            "l.example",
            "/lm",
            "If-None-Match: \"other\"\r\nIf-Modified-Since: Sun, 01 Jan 2023 00:00:00 GMT\r\n",
        )
        .await;
    assert_eq!(
        both.status, 200,
        "If-None-Match false: If-Modified-Since must be ignored"
    );
    assert_eq!(both.text(), FULL);
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn a_matching_if_none_match_wins_over_range_and_ranges_obey_rfc_9110_section_14() {
    let (app, calls) = last_modified_app(StatusCode::OK);
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut raw = Raw::connect(addr).await;
    assert_eq!(raw.get("l.example", "/rg", "").await.status, 200);
    // RFC 9110 §13.2.2: If-None-Match (step 3) before Range (step 5).
    let inm = raw
        .get(
            "l.example",
            "/rg",
            "If-None-Match: \"lm1\"\r\nRange: bytes=0-3\r\n",
        )
        .await;
    assert_eq!(inm.status, 304);
    // Open-ended range.
    let open = raw.get("l.example", "/rg", "Range: bytes=15-\r\n").await;
    assert_eq!(open.status, 206);
    assert_eq!(open.header("content-range"), Some("bytes 15-19/20"));
    assert_eq!(open.text(), "FGHIJ");
    // RFC 9110 §14.2: "An origin server MUST ignore a Range header field that contains a
    // range unit it does not understand."
    let unit = raw.get("l.example", "/rg", "Range: items=0-3\r\n").await;
    assert_eq!(unit.status, 200);
    assert_eq!(unit.text(), FULL);
    // Several ranges: the whole body (200) or a valid multipart 206.
    let many = raw
        .get("l.example", "/rg", "Range: bytes=0-1,4-5\r\n")
        .await;
    match many.status {
        200 => assert_eq!(many.text(), FULL),
        206 => {
            let ct = many.header("content-type").unwrap_or_default();
            assert!(
                ct.starts_with("multipart/byteranges") || many.text().len() == 2,
                "{:?}",
                many.headers
            );
        }
        other => panic!("status {other}"),
    }
    assert_eq!(calls.get(), 1);
}

// RFC 9110 §14.2: "A server MUST ignore a Range header field received with a request method
// that is unrecognized or for which range handling is not defined. For this specification,
// GET is the only method for which range handling is defined." (The same HEAD on a cold key
// reaches the handler and gets its 200: the answer also depends on whether the key is stored.)
#[tokio::test]
async fn a_head_with_range_is_answered_as_a_plain_head() {
    let (app, calls) = last_modified_app(StatusCode::OK);
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut raw = Raw::connect(addr).await;
    assert_eq!(raw.get("l.example", "/hr", "").await.status, 200);
    raw.send(b"HEAD /hr HTTP/1.1\r\nHost: l.example\r\nRange: bytes=0-3\r\n\r\n")
        .await;
    let head = raw.read(true).await.expect("HEAD");
    assert_eq!(head.status, 200, "{:?}", head.headers);
    assert_eq!(head.header("content-length"), Some("20"));
    assert!(!head.has("content-range"));
    assert_eq!(raw.get("l.example", "/hr", "").await.text(), FULL);
    assert_eq!(calls.get(), 1);
}

// RFC 9110 §13.2.1: "A server MUST ignore all received preconditions if its response to the
// same request without those conditions ... would have been a status code other than a 2xx
// (Successful) or 412"; §14.2 / §15.3.7: 206 is a partial *successful* answer. A stored 404
// is answered as the 404 whatever the client's Range or If-None-Match.
#[tokio::test]
async fn a_stored_404_ignores_range_and_preconditions() {
    let (app, calls) = last_modified_app(StatusCode::NOT_FOUND);
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut raw = Raw::connect(addr).await;
    let first = raw.get("l.example", "/gone", "").await;
    assert_eq!(first.status, 404);
    let range = raw.get("l.example", "/gone", "Range: bytes=0-3\r\n").await;
    assert_eq!(range.status, 404, "a 206 of a 404: {:?}", range.headers);
    assert_eq!(range.text(), FULL);
    let star = raw.get("l.example", "/gone", "If-None-Match: *\r\n").await;
    assert_eq!(star.status, 404, "a 304 for a 404: {:?}", star.headers);
    let tag = raw
        .get("l.example", "/gone", "If-None-Match: \"lm1\"\r\n")
        .await;
    assert_eq!(tag.status, 404, "a 304 for a 404: {:?}", tag.headers);
    let ims = raw
        .get(
            "l.example",
            "/gone",
            "If-Modified-Since: Sun, 01 Jan 2023 00:00:00 GMT\r\n",
        )
        .await;
    assert_eq!(ims.status, 404, "a 304 for a 404: {:?}", ims.headers);
    assert_eq!(calls.get(), 1);
}

// RFC 9110 §13.1.1: "The If-Match header field can be ignored by caches and intermediaries
// because it is not applicable to a stored response" (RFC 9111 §4.3.2: If-Match and
// If-Unmodified-Since "are not applicable to a cache"; same for §13.1.4). So a cache may
// forward them (the origin's 412) or ignore them (the stored 200): never a 304.
#[tokio::test]
async fn a_false_if_match_or_if_unmodified_since_gets_the_origins_412_or_the_whole_stored_200() {
    let calls = Calls::default();
    let c = calls.clone();
    let app = Router::new().route(
        "/im",
        get(move |headers: HeaderMap| {
            let c = c.clone();
            async move {
                c.bump();
                let im_false = headers
                    .get(header::IF_MATCH)
                    .is_some_and(|v| v.as_bytes() != b"\"v1\"" && v.as_bytes() != b"*");
                let ius_false = headers.contains_key(header::IF_UNMODIFIED_SINCE);
                if im_false || ius_false {
                    return (StatusCode::PRECONDITION_FAILED, "precondition failed")
                        .into_response();
                }
                (
                    [
                        (header::CACHE_CONTROL, "max-age=100"),
                        (header::ETAG, "\"v1\""),
                        (header::LAST_MODIFIED, "Sat, 01 Jan 2022 00:00:00 GMT"),
                    ],
                    "representation v1",
                )
                    .into_response()
            }
        }),
    );
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut raw = Raw::connect(addr).await;
    assert_eq!(
        raw.get("i.example", "/im", "").await.text(),
        "representation v1"
    );
    for condition in [
        "If-Match: \"v0\"\r\n",
        "If-Unmodified-Since: Fri, 01 Jan 2021 00:00:00 GMT\r\n",
    ] {
        let answer = raw.get("i.example", "/im", condition).await;
        match answer.status {
            412 => assert!(
                !answer.swr().flag("hit"),
                "a 412 from the store: {:?}",
                answer.swr()
            ),
            200 => assert_eq!(answer.text(), "representation v1", "{condition:?}"),
            other => panic!("{condition:?} answered {other} ({:?})", answer.swr()),
        }
    }
    // A true If-Match is served (from the store or the origin) with the representation.
    let true_im = raw.get("i.example", "/im", "If-Match: \"v1\"\r\n").await;
    assert_eq!(true_im.status, 200);
    assert_eq!(true_im.text(), "representation v1");
}

#[tokio::test]
async fn range_edge_cases_follow_rfc_9110_section_14_1() {
    // RFC 9110 §14.1.2: a last-pos at or past the length means "the remainder"; §14.1.3: a
    // suffix longer than the representation means all of it; §14.1.1: a set is satisfiable
    // only with a first-pos below the length or a non-zero suffix-length; otherwise 416 with
    // `Content-Range: bytes */len` (§15.5.17), or the whole 200 (a server MAY ignore Range).
    let (app, calls) = last_modified_app(StatusCode::OK);
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut raw = Raw::connect(addr).await;
    assert_eq!(raw.get("l.example", "/edge", "").await.text(), FULL);
    let partial = [
        ("bytes=10-99", "bytes 10-19/20", "ABCDEFGHIJ"),
        ("bytes=-100", "bytes 0-19/20", FULL),
        ("bytes=19-19", "bytes 19-19/20", "J"),
        ("bytes=0-0", "bytes 0-0/20", "0"),
        ("bytes=0-", "bytes 0-19/20", FULL),
    ];
    for (range, content_range, body) in partial {
        let answer = raw
            .get("l.example", "/edge", &format!("Range: {range}\r\n"))
            .await;
        match answer.status {
            206 => {
                assert_eq!(
                    answer.header("content-range"),
                    Some(content_range),
                    "{range}"
                );
                assert_eq!(answer.text(), body, "{range}");
                assert_eq!(
                    answer.header("content-length"),
                    Some(body.len().to_string().as_str())
                );
            }
            200 => assert_eq!(answer.text(), FULL, "{range}"),
            other => panic!("{range}: {other}"),
        }
    }
    for range in ["bytes=20-", "bytes=-0", "bytes=25-30"] {
        let answer = raw
            .get("l.example", "/edge", &format!("Range: {range}\r\n"))
            .await;
        match answer.status {
            416 => assert_eq!(
                answer.header("content-range"),
                Some("bytes */20"),
                "{range}"
            ),
            200 => assert_eq!(answer.text(), FULL, "{range}"),
            other => panic!(
                "{range} is unsatisfiable, answered {other}: {:?}",
                answer.text()
            ),
        }
    }
    for range in [
        "bytes=9-5",
        "bytes=abc",
        "bytes=",
        "bytes=1-2-3",
        "bytes 0-3",
    ] {
        let answer = raw
            .get("l.example", "/edge", &format!("Range: {range}\r\n"))
            .await;
        match answer.status {
            200 => assert_eq!(answer.text(), FULL, "{range}"),
            416 => {}
            other => panic!("{range} is invalid, answered {other}: {:?}", answer.text()),
        }
    }
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn stored_redirects_and_410s_are_answered_as_they_are_whatever_range_or_validators_say() {
    // RFC 9110 §13.2.1: preconditions are ignored when the answer would not be 2xx/412;
    // §15.3.7: a 206 transfers parts of a selected representation, which a 301 or 410 is not.
    for status in [StatusCode::MOVED_PERMANENTLY, StatusCode::GONE] {
        let (app, calls) = last_modified_app(status);
        let addr = serve(app.layer(SwrLayer::new())).await;
        let mut raw = Raw::connect(addr).await;
        assert_eq!(raw.get("l.example", "/s", "").await.status, status.as_u16());
        for extra in [
            "Range: bytes=0-3\r\n",
            "If-None-Match: \"lm1\"\r\n",
            "If-Modified-Since: Sun, 01 Jan 2090 00:00:00 GMT\r\n",
        ] {
            let answer = raw.get("l.example", "/s", extra).await;
            assert_eq!(answer.status, status.as_u16(), "{status} with {extra:?}");
            assert_eq!(answer.text(), FULL, "{status} with {extra:?}");
        }
        assert_eq!(calls.get(), 1, "{status} stored");
    }
}

#[tokio::test]
async fn a_range_request_on_a_cold_key_gets_the_full_body_or_exactly_the_range() {
    let (app, calls) = counted(
        "cold-range-body-0123456789",
        &[("cache-control", "max-age=100")],
    );
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut raw = Raw::connect(addr).await;
    let first = raw.get("cr.example", "/cr", "Range: bytes=0-3\r\n").await;
    let whole = "cold-range-body-0123456789 #1";
    match first.status {
        200 => assert_eq!(first.text(), whole),
        206 => assert_eq!(first.text(), "cold"),
        other => panic!("status {other}"),
    }
    let second = raw.get("cr.example", "/cr", "Range: bytes=0-3\r\n").await;
    assert_eq!(second.status, 206);
    assert_eq!(second.text(), "cold");
    assert_eq!(
        second.header("content-range"),
        Some(format!("bytes 0-3/{}", whole.len()).as_str())
    );
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn head_has_no_body_and_the_content_length_of_the_get_before_and_after_the_fill() {
    let (app, calls) = counted("head-and-get", &[("cache-control", "max-age=100")]);
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut raw = Raw::connect(addr).await;
    // Cold HEAD: answered by the handler as HEAD (not stored).
    raw.send(b"HEAD /h HTTP/1.1\r\nHost: h.example\r\n\r\n")
        .await;
    let cold_head = raw.read(true).await.expect("HEAD answer");
    assert_eq!(cold_head.status, 200);
    let get = raw.get("h.example", "/h", "").await;
    assert_eq!(
        get.status, 200,
        "the connection parsed after a HEAD: no body was sent"
    );
    let len = get.body.len().to_string();
    assert_eq!(get.header("content-length"), Some(len.as_str()));
    if let Some(cold_len) = cold_head.header("content-length") {
        assert_eq!(cold_len, len);
    }
    for _ in 0..2 {
        raw.send(b"HEAD /h HTTP/1.1\r\nHost: h.example\r\n\r\n")
            .await;
        let head = raw.read(true).await.expect("HEAD hit");
        assert_eq!(head.status, 200);
        assert_eq!(
            head.header("content-length"),
            Some(len.as_str()),
            "HEAD hit's length"
        );
        assert!(head.swr().flag("hit"), "HEAD answered from the GET entry");
        assert!(head.has("age"));
    }
    // HEAD with a validator: 304 or 200, and the stream stays in frame.
    raw.send(
        b"HEAD /h HTTP/1.1\r\nHost: h.example\r\nIf-Modified-Since: Sun, 01 Jan 2090 00:00:00 GMT\r\n\r\n",
    )
    .await;
    let conditional_head = raw.read(true).await.expect("conditional HEAD");
    assert!(
        conditional_head.status == 304 || conditional_head.status == 200,
        "{}",
        conditional_head.status
    );
    let again = raw.get("h.example", "/h", "").await;
    assert_eq!(
        again.body, get.body,
        "no HEAD body bytes left in the stream"
    );
    assert!(calls.get() <= 2, "calls {}", calls.get());
}

#[tokio::test]
async fn pipelined_head_and_gets_in_one_write_are_answered_in_order_with_exact_framing() {
    let (app, calls) = counted("piped", &[("cache-control", "max-age=100")]);
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut raw = Raw::connect(addr).await;
    raw.send(
        b"GET /p HTTP/1.1\r\nHost: p.example\r\n\r\n\
          HEAD /p HTTP/1.1\r\nHost: p.example\r\n\r\n\
          GET /p HTTP/1.1\r\nHost: p.example\r\nRange: bytes=0-1\r\n\r\n\
          GET /p HTTP/1.1\r\nHost: p.example\r\n\r\n",
    )
    .await;
    let get = raw.read(false).await.expect("GET");
    assert_eq!(get.text(), "piped #1");
    let head = raw.read(true).await.expect("HEAD");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("8"));
    let range = raw.read(false).await.expect("range");
    assert_eq!(range.status, 206);
    assert_eq!(range.text(), "pi");
    let last = raw.read(false).await.expect("last GET");
    assert_eq!(last.text(), "piped #1");
    assert!(last.swr().flag("hit"));
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn options_asterisk_and_connect_are_answered_without_hanging_or_touching_the_entry() {
    let (app, calls) = counted("star", &[("cache-control", "max-age=100")]);
    let addr = serve(app.layer(SwrLayer::new())).await;
    let warm = Raw::connect(addr).await.get("o.example", "/s", "").await;
    assert_eq!(warm.text(), "star #1");
    for odd in [
        &b"OPTIONS * HTTP/1.1\r\nHost: o.example\r\n\r\n"[..],
        b"CONNECT o.example:443 HTTP/1.1\r\nHost: o.example:443\r\n\r\n",
        b"GET /s HTTP/1.1\r\nHost: o.example\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    ] {
        match raw_once(addr, odd, false).await {
            Ok(answer) => assert!(answer.status >= 200, "{}", answer.status),
            Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::TimedOut, "hung: {e}"),
        }
    }
    let after = Raw::connect(addr).await.get("o.example", "/s", "").await;
    assert_eq!(after.text(), "star #1");
    assert!(after.swr().flag("hit"));
    assert!(calls.get() <= 2, "calls {}", calls.get());
}

/// A connection whose receive buffer is small, so an unread body backs up quickly.
async fn stalled_reader(addr: SocketAddr, request: &[u8]) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut stream = socket.connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut head = [0u8; 64];
    let n = timeout(HANG, stream.read(&mut head))
        .await
        .expect("head in time")
        .expect("read");
    assert!(n > 0);
    stream
}

#[tokio::test]
async fn a_client_that_stops_reading_does_not_stall_another_client_of_the_same_fill() {
    // README: "one that reads slowly slows no one (the fill keeps the body for the store)".
    const LEN: usize = 6 << 20;
    let calls = Calls::default();
    let c = calls.clone();
    let app = Router::new().route(
        "/big",
        get(move || {
            let c = c.clone();
            async move {
                c.bump();
                let (tx, rx) = mpsc::channel(1);
                tokio::spawn(async move {
                    let all = pattern(LEN);
                    for start in (0..LEN).step_by(64 << 10) {
                        let end = (start + (64 << 10)).min(LEN);
                        if tx.send(Ok(all.slice(start..end))).await.is_err() {
                            return;
                        }
                    }
                });
                Response::builder()
                    .header("cache-control", "max-age=100")
                    .body(Body::new(ChanBody(rx)))
                    .unwrap()
            }
        }),
    );
    let addr = serve(app.layer(SwrLayer::new())).await;
    let stalled = stalled_reader(addr, b"GET /big HTTP/1.1\r\nHost: big.example\r\n\r\n").await;
    let reader = Raw::connect(addr)
        .await
        .get("big.example", "/big", "")
        .await;
    assert_eq!(reader.status, 200);
    assert_eq!(
        reader.body.len(),
        LEN,
        "the second client got the whole body"
    );
    assert!(reader.body == pattern(LEN).to_vec());
    drop(stalled);
    wait_for("the entry", async || {
        let again = Raw::connect(addr)
            .await
            .get("big.example", "/big", "")
            .await;
        assert_eq!(again.body.len(), LEN);
        again.swr().flag("hit")
    })
    .await;
    assert!(calls.get() <= 2, "calls {}", calls.get());
}

/// A body of fixed frames (data and trailers).
struct FramesBody(std::collections::VecDeque<http_body::Frame<Bytes>>);

impl http_body::Body for FramesBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
}

#[tokio::test]
async fn a_body_with_trailers_is_stored_and_its_data_served_whole_over_http2() {
    let calls = Calls::default();
    let c = calls.clone();
    let app = Router::new().route(
        "/trailers",
        get(move || {
            let c = c.clone();
            async move {
                let n = c.bump();
                let mut trailers = HeaderMap::new();
                trailers.insert("x-checksum", "abc".parse().unwrap());
                let frames = [
                    http_body::Frame::data(Bytes::from(format!("data one #{n} "))),
                    http_body::Frame::data(Bytes::from_static(b"data two")),
                    http_body::Frame::trailers(trailers),
                ];
                Response::builder()
                    .header("cache-control", "max-age=100")
                    .body(Body::new(FramesBody(frames.into_iter().collect())))
                    .unwrap()
            }
        }),
    );
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut h2 = h2_conn(addr).await;
    let first = h2_send(&mut h2, "http://t.example/trailers").await;
    assert_eq!(first.text(), "data one #1 data two");
    let second = h2_send(&mut h2, "http://t.example/trailers").await;
    assert_eq!(second.text(), "data one #1 data two");
    assert!(second.swr().flag("hit"), "{:?}", second.swr());
    let over_h1 = Raw::connect(addr)
        .await
        .get("t.example", "/trailers", "")
        .await;
    assert_eq!(over_h1.text(), "data one #1 data two");
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn a_no_store_response_passes_its_trailers_straight_through_over_http2() {
    // README: "responses that are not stored (`no-store`, ...) pass straight through".
    let app = Router::new().route(
        "/ns",
        get(|| async {
            let mut trailers = HeaderMap::new();
            trailers.insert("x-checksum", "abc".parse().unwrap());
            let frames = [
                http_body::Frame::data(Bytes::from_static(b"streamed")),
                http_body::Frame::trailers(trailers),
            ];
            Response::builder()
                .header("cache-control", "no-store")
                .body(Body::new(FramesBody(frames.into_iter().collect())))
                .unwrap()
        }),
    );
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut h2 = h2_conn(addr).await;
    for _ in 0..2 {
        let request = hyper::Request::builder()
            .uri("http://ns.example/ns")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = timeout(HANG, h2.send_request(request))
            .await
            .unwrap()
            .unwrap();
        let collected = timeout(HANG, response.into_body().collect())
            .await
            .unwrap()
            .unwrap();
        let trailers = collected.trailers().cloned();
        assert_eq!(collected.to_bytes(), "streamed");
        assert_eq!(
            trailers
                .as_ref()
                .and_then(|t| t.get("x-checksum"))
                .map(|v| v.as_bytes()),
            Some(&b"abc"[..]),
            "trailers passed through"
        );
    }
}

#[tokio::test]
async fn head_304_and_206_over_http2_frame_like_over_http1() {
    let (app, calls) = etag_app();
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut h2 = h2_conn(addr).await;
    let full = h2_send(&mut h2, "http://e2.example/e").await;
    assert_eq!(full.status, StatusCode::OK);
    let send = |method: Method, headers: &[(&str, &str)]| {
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri("http://e2.example/e");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(Full::new(Bytes::new())).unwrap()
    };
    for (method, headers, status, body) in [
        (Method::HEAD, vec![], StatusCode::OK, Bytes::new()),
        (
            Method::GET,
            vec![("if-none-match", "\"v1\"")],
            StatusCode::NOT_MODIFIED,
            Bytes::new(),
        ),
        (
            Method::GET,
            vec![("range", "bytes=0-5")],
            StatusCode::PARTIAL_CONTENT,
            full.body.slice(0..6),
        ),
    ] {
        timeout(HANG, h2.ready()).await.unwrap().unwrap();
        let response = timeout(HANG, h2.send_request(send(method.clone(), &headers)))
            .await
            .unwrap()
            .unwrap();
        let answer = collect(response).await;
        assert_eq!(answer.status, status, "{method} {headers:?}");
        assert_eq!(answer.body, body, "{method} {headers:?}");
        assert!(
            answer.swr().flag("hit"),
            "{method} {headers:?}: {:?}",
            answer.swr()
        );
        if method == Method::HEAD {
            assert_eq!(
                answer.header("content-length"),
                Some(full.body.len().to_string())
            );
        }
    }
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn an_upgrade_request_reaches_the_handler_even_when_the_key_is_stored_and_the_tunnel_works() {
    // README: "Never cached requests: ... requests asking to switch protocols (`Upgrade`:
    // WebSocket handshakes reach the handler and get their `101`)". Over the wire the 101
    // must keep its `Upgrade` / `Connection` (RFC 9110 §7.8) and the connection must switch.
    let calls = Calls::default();
    let c = calls.clone();
    let app = Router::new().route(
        "/ws",
        get(move |mut request: axum::extract::Request| {
            let c = c.clone();
            async move {
                c.bump();
                if !request.headers().contains_key(header::UPGRADE) {
                    return ([(header::CACHE_CONTROL, "max-age=100")], "plain page")
                        .into_response();
                }
                let on_upgrade = hyper::upgrade::on(&mut request);
                tokio::spawn(async move {
                    if let Ok(upgraded) = on_upgrade.await {
                        let mut io = TokioIo::new(upgraded);
                        let mut buf = [0u8; 4];
                        if io.read_exact(&mut buf).await.is_ok() {
                            let _ = io.write_all(&buf).await;
                        }
                    }
                });
                Response::builder()
                    .status(StatusCode::SWITCHING_PROTOCOLS)
                    .header(header::UPGRADE, "echo")
                    .header(header::CONNECTION, "upgrade")
                    .body(Body::empty())
                    .unwrap()
            }
        }),
    );
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut raw = Raw::connect(addr).await;
    assert_eq!(raw.get("u.example", "/ws", "").await.text(), "plain page");
    assert_eq!(raw.get("u.example", "/ws", "").await.text(), "plain page");
    assert_eq!(calls.get(), 1);

    let mut tunnel = Raw::connect(addr).await;
    tunnel
        .send(
            b"GET /ws HTTP/1.1\r\nHost: u.example\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .await;
    let status_line = timeout(HANG, tunnel.line())
        .await
        .expect("101 in time")
        .expect("101");
    assert!(status_line.starts_with("HTTP/1.1 101"), "{status_line}");
    let mut headers = Vec::new();
    loop {
        let line = timeout(HANG, tunnel.line()).await.unwrap().unwrap();
        if line.is_empty() {
            break;
        }
        headers.push(line.to_ascii_lowercase());
    }
    assert!(headers.iter().any(|h| h == "upgrade: echo"), "{headers:?}");
    assert!(
        headers
            .iter()
            .any(|h| h.starts_with("connection:") && h.contains("upgrade")),
        "{headers:?}"
    );
    tunnel.send(b"ping").await;
    let mut echo = [0u8; 4];
    timeout(HANG, tunnel.io.read_exact(&mut echo))
        .await
        .expect("echo in time")
        .expect("the tunnel works");
    assert_eq!(&echo, b"ping");
    assert_eq!(calls.get(), 2, "the upgrade reached the handler");
}

#[tokio::test]
async fn a_response_with_many_and_large_header_fields_is_replayed_whole_or_not_stored() {
    // A stored response is the origin's response: a hit carries every field the miss did
    // (RFC 9111 §3.1: only hop-by-hop fields are left out).
    let calls = Calls::default();
    let c = calls.clone();
    let big_value = "v".repeat(60 << 10);
    let app = Router::new().route(
        "/fields",
        get(move || {
            let c = c.clone();
            let big_value = big_value.clone();
            async move {
                c.bump();
                let mut response =
                    ([(header::CACHE_CONTROL, "max-age=100")], "fields").into_response();
                for i in 0..400 {
                    response.headers_mut().append(
                        header::HeaderName::from_bytes(format!("x-field-{i}").as_bytes()).unwrap(),
                        format!("value-{i}").parse().unwrap(),
                    );
                    response
                        .headers_mut()
                        .append("x-repeated", format!("r{i}").parse().unwrap());
                }
                response
                    .headers_mut()
                    .insert("x-big", big_value.parse().unwrap());
                response
            }
        }),
    );
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut raw = Raw::connect(addr).await;
    let miss = raw.get("f.example", "/fields", "").await;
    let second = raw.get("f.example", "/fields", "").await;
    assert_eq!(second.text(), "fields");
    if second.swr().flag("hit") {
        for i in 0..400 {
            assert_eq!(
                second.header(&format!("x-field-{i}")),
                Some(format!("value-{i}").as_str())
            );
        }
        assert_eq!(
            second.all("x-repeated"),
            miss.all("x-repeated"),
            "repeated lines in order"
        );
        assert_eq!(second.all("x-repeated").len(), 400);
        assert_eq!(second.header("x-big").map(str::len), Some(60 << 10));
        assert_eq!(calls.get(), 1);
    } else {
        assert_eq!(calls.get(), 2, "not stored: asked again");
    }
}

// =============================================================================================
// Stale-while-revalidate over the wire
// =============================================================================================

#[tokio::test]
async fn stale_answers_come_at_once_and_fifty_concurrent_clients_cause_exactly_one_refresh() {
    let calls = Calls::default();
    let gate = Arc::new(Semaphore::new(0));
    let (c, g) = (calls.clone(), gate.clone());
    let app = Router::new().route(
        "/swr",
        get(move || {
            let (c, g) = (c.clone(), g.clone());
            async move {
                let n = c.bump();
                if n > 1 {
                    // Refreshes wait until the test opens the gate: a client waiting on one
                    // would hang, not just be slow.
                    let _permit = g.acquire().await.expect("gate");
                }
                // The refreshed answer lives long, so a slow poll below cannot see it stale.
                let cc = if n == 1 {
                    "max-age=1, stale-while-revalidate=30"
                } else {
                    "max-age=100"
                };
                ([(header::CACHE_CONTROL, cc)], format!("version {n}"))
            }
        }),
    );
    let addr = serve(app.layer(SwrLayer::new())).await;
    let url = format!("http://{addr}/swr");
    let client = pooled_h1();
    assert_eq!(pooled_get(&client, &url, &[]).await.text(), "version 1");
    // Past max-age=1 (Age rounds; 2.5 s is past it whichever way).
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let mut tasks = Vec::new();
    for _ in 0..50 {
        let client = client.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(
            async move { pooled_get(&client, &url, &[]).await },
        ));
    }
    for task in tasks {
        let answer = task.await.expect("client");
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(
            answer.text(),
            "version 1",
            "stale served at once while the refresh waits"
        );
        let member = answer.swr();
        let ttl = member.ttl().expect("ttl");
        assert!(ttl <= 0, "a stale answer has ttl <= 0: {member:?}");
        assert!(
            member.flag("hit"),
            "RFC 9211 §2.1: served from the cache, not forwarded: {member:?}"
        );
        assert!(age_of(answer.header("age").as_deref()) >= 1);
    }
    wait_for("the refresh to start", async || calls.get() >= 2).await;
    assert_eq!(
        calls.get(),
        2,
        "fill + exactly one refresh for 50 stale requests"
    );
    gate.add_permits(1000);
    let client2 = client.clone();
    let url2 = url.clone();
    wait_for("the refreshed entry", async || {
        pooled_get(&client2, &url2, &[]).await.text() == "version 2"
    })
    .await;
    let fresh = pooled_get(&client, &url, &[]).await;
    assert_eq!(fresh.text(), "version 2");
    let member = fresh.swr();
    assert!(member.flag("hit"), "{member:?}");
    assert!(
        member.ttl().unwrap() > 0,
        "the refreshed entry is fresh: {member:?}"
    );
    assert!(age_of(fresh.header("age").as_deref()) < 30);
    assert_eq!(calls.get(), 2, "no further origin call once refreshed");
}

#[tokio::test]
async fn a_stale_answer_over_http2_also_triggers_one_refresh() {
    let calls = Calls::default();
    let c = calls.clone();
    let app = Router::new().route(
        "/swr2",
        get(move || {
            let c = c.clone();
            async move {
                let n = c.bump();
                let cc = if n == 1 {
                    "max-age=1, stale-while-revalidate=30"
                } else {
                    "max-age=100"
                };
                ([(header::CACHE_CONTROL, cc)], format!("v{n}"))
            }
        }),
    );
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut h2 = h2_conn(addr).await;
    assert_eq!(
        h2_send(&mut h2, "http://swr2.example/swr2").await.text(),
        "v1"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let stale = h2_send(&mut h2, "http://swr2.example/swr2").await;
    assert_eq!(stale.text(), "v1");
    assert!(stale.swr().ttl().unwrap() <= 0);
    let mut h2b = h2.clone();
    wait_for("the refresh to land", async || {
        h2_send(&mut h2b, "http://swr2.example/swr2").await.text() == "v2"
    })
    .await;
    assert_eq!(calls.get(), 2);
}

// =============================================================================================
// What the origin is asked, and what its 304s and partial answers may change in the store
// =============================================================================================

/// An origin that honours `Range` (206) and `If-None-Match: "v1"` (304) itself, as many do;
/// `cache_control` for call 1, `later_cc` for the others; `extra_304` fields on the 304 of
/// call 2 only (the first revalidation), so a later answer carrying them got them from the store.
fn validating_origin(
    cache_control: &'static str,
    later_cc: &'static str,
    extra_304: &'static [(&'static str, &'static str)],
) -> (Router, Calls, Arc<Mutex<Vec<HeaderMap>>>) {
    let calls = Calls::default();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (c, s) = (calls.clone(), seen.clone());
    let app = Router::new().route(
        "/{*path}",
        get(move |headers: HeaderMap| {
            let (c, s) = (c.clone(), s.clone());
            async move {
                let n = c.bump();
                s.lock().unwrap().push(headers.clone());
                let cc = if n == 1 { cache_control } else { later_cc };
                let body = "0123456789ABCDEFGHIJ";
                if headers
                    .get(header::IF_NONE_MATCH)
                    .is_some_and(|v| v.as_bytes() == b"\"v1\"")
                {
                    let mut response = Response::builder()
                        .status(StatusCode::NOT_MODIFIED)
                        .header("etag", "\"v1\"")
                        .header("cache-control", cc);
                    if n == 2 {
                        for (name, value) in extra_304 {
                            response = response.header(*name, *value);
                        }
                    }
                    return response.body(Body::empty()).unwrap();
                }
                if let Some(range) = headers.get(header::RANGE) {
                    let spec = range.to_str().unwrap().trim_start_matches("bytes=");
                    let (a, b) = spec.split_once('-').unwrap();
                    let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
                    return Response::builder()
                        .status(StatusCode::PARTIAL_CONTENT)
                        .header("etag", "\"v1\"")
                        .header("cache-control", cc)
                        .header("content-range", format!("bytes {a}-{b}/{}", body.len()))
                        .body(Body::from(&body[a..=b]))
                        .unwrap();
                }
                Response::builder()
                    .header("etag", "\"v1\"")
                    .header("cache-control", cc)
                    .body(Body::from(body))
                    .unwrap()
            }
        }),
    );
    (app, calls, seen)
}

const FULL: &str = "0123456789ABCDEFGHIJ";

#[tokio::test]
async fn a_cold_range_request_to_a_range_honouring_origin_never_stores_the_part_as_the_whole() {
    // RFC 9111 §3.3-3.4: a 206 is at most a partial response to combine, never the full one.
    let (app, _calls, _seen) = validating_origin("max-age=100", "max-age=100", &[]);
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut raw = Raw::connect(addr).await;
    let part = raw.get("v.example", "/cold", "Range: bytes=0-3\r\n").await;
    match part.status {
        206 => assert_eq!(part.text(), "0123"),
        200 => assert_eq!(part.text(), FULL),
        other => panic!("status {other}"),
    }
    for i in 0..2 {
        let whole = raw.get("v.example", "/cold", "").await;
        assert_eq!(whole.status, 200, "request {i}");
        assert_eq!(
            whole.text(),
            FULL,
            "request {i}: the whole body, not the stored part"
        );
        assert_eq!(whole.header("content-length"), Some("20"));
    }
}

#[tokio::test]
async fn a_cold_conditional_request_to_a_validating_origin_never_stores_its_304_as_the_entry() {
    let (app, _calls, _seen) = validating_origin("max-age=100", "max-age=100", &[]);
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut raw = Raw::connect(addr).await;
    let conditional = raw
        .get("v.example", "/inm", "If-None-Match: \"v1\"\r\n")
        .await;
    assert!(
        conditional.status == 304 || conditional.status == 200,
        "{}",
        conditional.status
    );
    if conditional.status == 304 {
        assert!(conditional.body.is_empty());
    }
    for i in 0..2 {
        let plain = raw.get("v.example", "/inm", "").await;
        assert_eq!(
            plain.status, 200,
            "request {i}: a client without a validator gets a 200"
        );
        assert_eq!(plain.text(), FULL, "request {i}");
    }
}

#[tokio::test]
async fn a_stale_range_request_does_not_make_the_refresh_store_a_partial_body() {
    let (app, calls, _seen) =
        validating_origin("max-age=1, stale-while-revalidate=30", "max-age=100", &[]);
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut raw = Raw::connect(addr).await;
    assert_eq!(raw.get("v.example", "/sr", "").await.text(), FULL);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let stale_part = raw.get("v.example", "/sr", "Range: bytes=0-3\r\n").await;
    assert_eq!(stale_part.status, 206);
    assert_eq!(stale_part.text(), "0123");
    wait_for("the refresh", async || calls.get() >= 2).await;
    // Whatever the refresh stored, a plain GET gets the whole body (poll until it is fresh).
    wait_for("a fresh whole answer", async || {
        let whole = raw.get("v.example", "/sr", "").await;
        assert_eq!(whole.status, 200);
        assert_eq!(whole.text(), FULL, "the refresh stored a part as the whole");
        whole.swr().ttl().unwrap() > 0
    })
    .await;
}

#[tokio::test]
async fn a_background_revalidation_answered_304_freshens_the_entry_with_its_body_intact() {
    // README: an expired entry with `ETag` is revalidated "in the foreground and in background
    // refreshes; a `304` updates the stored headers (RFC 9111 §3.2) and freshens the entry
    // without a body transfer".
    let (app, calls, seen) = validating_origin(
        "max-age=1, stale-while-revalidate=30",
        "max-age=100",
        &[("x-revalidated", "yes")],
    );
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut raw = Raw::connect(addr).await;
    assert_eq!(raw.get("v.example", "/bg304", "").await.text(), FULL);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let stale = raw.get("v.example", "/bg304", "").await;
    assert_eq!(stale.text(), FULL);
    assert!(stale.swr().ttl().unwrap() <= 0);
    wait_for("the freshened entry", async || {
        let answer = raw.get("v.example", "/bg304", "").await;
        assert_eq!(answer.text(), FULL);
        assert_eq!(answer.header("content-length"), Some("20"));
        answer.header("x-revalidated") == Some("yes")
    })
    .await;
    let fresh = raw.get("v.example", "/bg304", "").await;
    assert!(
        fresh.swr().ttl().unwrap() > 1,
        "freshened by the 304's max-age: {:?}",
        fresh.swr()
    );
    assert_eq!(fresh.header("cache-control"), Some("max-age=100"));
    assert_eq!(fresh.text(), FULL);
    assert_eq!(calls.get(), 2);
    assert_eq!(
        seen.lock().unwrap()[1]
            .get(header::IF_NONE_MATCH)
            .map(|v| v.as_bytes().to_vec()),
        Some(b"\"v1\"".to_vec()),
        "the refresh was conditional"
    );
}

#[tokio::test]
async fn hop_by_hop_fields_of_a_revalidation_304_do_not_enter_the_stored_headers() {
    // RFC 9111 §3.2: the fields a 304 brings update the stored response "with the following
    // exceptions: Header fields excepted from storage in Section 3.1" (Connection and what it
    // names, Keep-Alive, Proxy-Connection, TE, Transfer-Encoding, Upgrade), "and the
    // Content-Length header field".
    let (app, calls, seen) = validating_origin(
        "max-age=1, must-revalidate",
        "max-age=100",
        &[
            ("connection", "x-bar"),
            ("x-bar", "hop-only"),
            ("keep-alive", "timeout=1"),
            ("upgrade", "h2c"),
            ("content-length", "0"),
            ("x-new", "updated"),
        ],
    );
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut raw = Raw::connect(addr).await;
    assert_eq!(raw.get("v.example", "/rv", "").await.text(), FULL);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let revalidated = raw.get("v.example", "/rv", "").await;
    assert_eq!(revalidated.status, 200);
    assert_eq!(revalidated.text(), FULL);
    assert_eq!(calls.get(), 2);
    assert_eq!(
        seen.lock().unwrap()[1]
            .get(header::IF_NONE_MATCH)
            .map(|v| v.to_str().unwrap().to_owned()),
        Some("\"v1\"".to_owned()),
        "the layer revalidated with the stored ETag"
    );
    let mut other = Raw::connect(addr).await;
    let hit = other.get("v.example", "/rv", "").await;
    assert!(hit.swr().flag("hit"), "{:?}", hit.headers);
    assert_eq!(
        hit.header("x-new"),
        Some("updated"),
        "end-to-end fields of the 304 are taken"
    );
    assert_eq!(hit.text(), FULL);
    assert_eq!(
        hit.header("content-length"),
        Some("20"),
        "Content-Length is not updated from a 304"
    );
    let replayed: Vec<&str> = ["x-bar", "keep-alive", "upgrade"]
        .into_iter()
        .filter(|name| hit.has(name))
        .collect();
    assert!(
        replayed.is_empty(),
        "hop-by-hop fields of the 304 replayed: {replayed:?} in {:?}",
        hit.headers
    );
    // And the connection still frames the next answer.
    assert_eq!(other.get("v.example", "/rv", "").await.text(), FULL);
}

#[tokio::test]
async fn a_set_cookie_on_a_revalidation_304_is_never_replayed_to_other_clients() {
    // README: "Never stored or shared: ... responses with `Set-Cookie`"; RFC 9111 §3.2 would
    // merge a 304's fields into the stored response, so a cookie one client's revalidation
    // brought back must not become everyone's.
    let (app, calls, _seen) = validating_origin(
        "max-age=1, must-revalidate",
        "max-age=100",
        &[("set-cookie", "sid=someone-else; HttpOnly")],
    );
    let addr = serve(app.layer(SwrLayer::new())).await;
    assert_eq!(
        Raw::connect(addr)
            .await
            .get("v.example", "/ck", "")
            .await
            .text(),
        FULL
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let _revalidating = Raw::connect(addr).await.get("v.example", "/ck", "").await;
    assert!(calls.get() >= 2);
    for i in 0..3 {
        let answer = Raw::connect(addr).await.get("v.example", "/ck", "").await;
        assert_eq!(answer.text(), FULL);
        assert!(
            !answer.has("set-cookie"),
            "client {i} got another client's cookie: {:?}",
            answer.headers
        );
    }
}

#[tokio::test]
async fn a_set_cookie_on_a_background_refresh_is_never_replayed_to_other_clients() {
    let (app, calls, _seen) = {
        let calls = Calls::default();
        let c = calls.clone();
        let app = Router::new().route(
            "/bg",
            get(move || {
                let c = c.clone();
                async move {
                    let n = c.bump();
                    if n == 1 {
                        (
                            [(
                                header::CACHE_CONTROL,
                                "max-age=1, stale-while-revalidate=30",
                            )],
                            "shared page".to_owned(),
                        )
                            .into_response()
                    } else {
                        (
                            [
                                (header::CACHE_CONTROL, "max-age=100".to_owned()),
                                (header::SET_COOKIE, format!("sid=refresh-{n}")),
                            ],
                            format!("page with session {n}"),
                        )
                            .into_response()
                    }
                }
            }),
        );
        (app, calls, ())
    };
    let addr = serve(app.layer(SwrLayer::new())).await;
    let client = pooled_h1();
    let url = format!("http://{addr}/bg");
    assert_eq!(pooled_get(&client, &url, &[]).await.text(), "shared page");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(pooled_get(&client, &url, &[]).await.text(), "shared page");
    wait_for("the refresh", async || calls.get() >= 2).await;
    for i in 0..5 {
        let answer = pooled_get(&client, &url, &[]).await;
        // Call 2 was the refresh: its cookie went to no client and must reach none. (Answers
        // of the clients' own origin calls carry their own cookies.)
        let cookie = answer
            .headers
            .get(header::SET_COOKIE)
            .map(|v| v.to_str().unwrap().to_owned());
        assert_ne!(
            cookie.as_deref(),
            Some("sid=refresh-2"),
            "client {i} got the background refresh's cookie"
        );
        if answer.swr().flag("hit") {
            assert!(
                cookie.is_none(),
                "a hit replays a cookie: {:?}",
                answer.headers
            );
        }
    }
}

#[tokio::test]
async fn a_stale_hit_by_a_client_with_credentials_never_stores_that_clients_page_for_others() {
    // RFC 9111 §3.5: a response to a request with Authorization is not stored by a shared
    // cache unless public / s-maxage / must-revalidate. If the stale hit's refresh is sent
    // with alice's Authorization, its answer is alice's page and must not become everyone's.
    let calls = Calls::default();
    let c = calls.clone();
    let app = Router::new().route(
        "/home",
        get(move |headers: HeaderMap| {
            let c = c.clone();
            async move {
                let n = c.bump();
                let who = headers
                    .get(header::AUTHORIZATION)
                    .or_else(|| headers.get(header::COOKIE))
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_else(|| "anonymous".into());
                (
                    [(
                        header::CACHE_CONTROL,
                        "max-age=1, stale-while-revalidate=30",
                    )],
                    format!("home of {who} #{n}"),
                )
            }
        }),
    );
    let addr = serve(app.layer(SwrLayer::new())).await;
    let client = pooled_h1();
    let url = format!("http://{addr}/home");
    assert_eq!(
        pooled_get(&client, &url, &[]).await.text(),
        "home of anonymous #1"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let alice = pooled_get(&client, &url, &[("authorization", "Bearer alice")]).await;
    assert!(alice.text().starts_with("home of "), "{}", alice.text());
    let carol = pooled_get(&client, &url, &[("cookie", "sid=carol")]).await;
    assert!(carol.text().starts_with("home of "), "{}", carol.text());
    // Let whatever refresh those requests started land.
    let before = calls.get();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..5 {
        let anon = pooled_get(&client, &url, &[]).await;
        let text = anon.text();
        assert!(
            !text.contains("alice") && !text.contains("carol"),
            "anonymous client {i} got {text:?} (calls {before} -> {})",
            calls.get()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// =============================================================================================
// Never shared over the wire
// =============================================================================================

#[tokio::test]
async fn a_set_cookie_response_is_never_replayed_to_another_client() {
    let calls = Calls::default();
    let c = calls.clone();
    let app = Router::new().route(
        "/login",
        get(move || {
            let c = c.clone();
            async move {
                let n = c.bump();
                (
                    [
                        (header::SET_COOKIE, format!("sid=secret-{n}; HttpOnly")),
                        (header::CACHE_CONTROL, "max-age=100".to_owned()),
                    ],
                    format!("welcome {n}"),
                )
            }
        }),
    );
    let addr = serve(app.layer(SwrLayer::new())).await;
    let alice = Raw::connect(addr)
        .await
        .get("c.example", "/login", "")
        .await;
    assert_eq!(alice.header("set-cookie"), Some("sid=secret-1; HttpOnly"));
    let bob = Raw::connect(addr)
        .await
        .get("c.example", "/login", "")
        .await;
    assert_eq!(bob.text(), "welcome 2");
    assert_eq!(bob.header("set-cookie"), Some("sid=secret-2; HttpOnly"));
    let mut h2 = h2_conn(addr).await;
    let carol = h2_send(&mut h2, "http://c.example/login").await;
    assert_eq!(carol.text(), "welcome 3");
    assert_eq!(calls.get(), 3);
}

#[tokio::test]
async fn an_answer_to_an_authorization_request_is_never_served_to_another_client() {
    let calls = Calls::default();
    let c = calls.clone();
    let app = Router::new().route(
        "/me",
        get(move |headers: HeaderMap| {
            let c = c.clone();
            async move {
                c.bump();
                let who = headers
                    .get(header::AUTHORIZATION)
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_else(|| "anonymous".into());
                (
                    [(header::CACHE_CONTROL, "max-age=100")],
                    format!("account of {who}"),
                )
            }
        }),
    );
    let addr = serve(app.layer(SwrLayer::new())).await;
    let client = pooled_h1();
    let url = format!("http://{addr}/me");
    let alice = pooled_get(&client, &url, &[("authorization", "Bearer alice")]).await;
    assert_eq!(alice.text(), "account of Bearer alice");
    let anon = pooled_get(&client, &url, &[]).await;
    assert_eq!(anon.text(), "account of anonymous");
    let bob = pooled_get(&client, &url, &[("authorization", "Bearer bob")]).await;
    assert_eq!(
        bob.text(),
        "account of Bearer bob",
        "bob never gets alice's page"
    );
    let bob_again = pooled_get(&pooled_h2(), &url, &[("authorization", "Bearer bob")]).await;
    assert_eq!(bob_again.text(), "account of Bearer bob");
}

#[tokio::test]
async fn private_and_cookie_dependent_answers_are_never_served_to_another_client() {
    let calls = Calls::default();
    let c = calls.clone();
    let app = Router::new()
        .route(
            "/private",
            get({
                let c = c.clone();
                move || {
                    let c = c.clone();
                    async move {
                        let n = c.bump();
                        (
                            [(header::CACHE_CONTROL, "private, max-age=100")],
                            format!("private {n}"),
                        )
                    }
                }
            }),
        )
        .route(
            "/cart",
            get(move |headers: HeaderMap| {
                let c = c.clone();
                async move {
                    c.bump();
                    let cookie = headers
                        .get(header::COOKIE)
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_default();
                    (
                        [(header::CACHE_CONTROL, "max-age=100")],
                        format!("cart for [{cookie}]"),
                    )
                }
            }),
        );
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut a = Raw::connect(addr).await;
    let mut b = Raw::connect(addr).await;
    assert_eq!(a.get("p.example", "/private", "").await.text(), "private 1");
    assert_eq!(b.get("p.example", "/private", "").await.text(), "private 2");
    assert_eq!(
        a.get("p.example", "/cart", "Cookie: user=alice\r\n")
            .await
            .text(),
        "cart for [user=alice]"
    );
    assert_eq!(b.get("p.example", "/cart", "").await.text(), "cart for []");
    assert_eq!(
        b.get("p.example", "/cart", "Cookie: user=bob\r\n")
            .await
            .text(),
        "cart for [user=bob]"
    );
}

#[tokio::test]
async fn a_cookie_request_is_not_answered_from_an_anonymous_non_public_entry() {
    // README: "a request carrying `Cookie` is answered from and stored in the cache only with
    // responses that say `public` or `s-maxage`".
    let calls = Calls::default();
    let c = calls.clone();
    let app = Router::new().route(
        "/{kind}",
        get(
            move |axum::extract::Path(kind): axum::extract::Path<String>, headers: HeaderMap| {
                let c = c.clone();
                async move {
                    c.bump();
                    let cookie = headers
                        .get(header::COOKIE)
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_default();
                    let cc = if kind == "public" {
                        "public, max-age=100"
                    } else {
                        "max-age=100"
                    };
                    (
                        [(header::CACHE_CONTROL, cc)],
                        format!("{kind} for [{cookie}]"),
                    )
                }
            },
        ),
    );
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut raw = Raw::connect(addr).await;
    assert_eq!(
        raw.get("k.example", "/plain", "").await.text(),
        "plain for []"
    );
    assert_eq!(
        raw.get("k.example", "/public", "").await.text(),
        "public for []"
    );
    assert_eq!(calls.get(), 2);
    let with_cookie = raw.get("k.example", "/plain", "Cookie: user=bob\r\n").await;
    assert_eq!(
        with_cookie.text(),
        "plain for [user=bob]",
        "{:?}",
        with_cookie.swr()
    );
    assert_eq!(calls.get(), 3);
    let public = raw
        .get("k.example", "/public", "Cookie: user=bob\r\n")
        .await;
    assert_eq!(
        public.text(),
        "public for []",
        "a public entry answers cookie requests"
    );
    assert!(public.swr().flag("hit"));
    assert_eq!(calls.get(), 3);
}

// =============================================================================================
// Failing origins with nothing cached
// =============================================================================================

#[tokio::test]
async fn an_origin_500_with_nothing_cached_reaches_the_client_and_keeps_the_connection() {
    let calls = Calls::default();
    let c = calls.clone();
    let (ok, _ok_calls) = counted("fine", &[]);
    let app = Router::new()
        .route(
            "/fail",
            get(move || {
                let c = c.clone();
                async move {
                    let n = c.bump();
                    (StatusCode::INTERNAL_SERVER_ERROR, format!("boom {n}"))
                }
            }),
        )
        .merge(ok);
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut conn = h1_conn(addr).await;
    let first = h1_send(
        &mut conn,
        h1_request(Method::GET, "f.example", "/fail", &[]),
    )
    .await;
    assert_eq!(first.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(first.text(), "boom 1");
    let second = h1_send(
        &mut conn,
        h1_request(Method::GET, "f.example", "/fail", &[]),
    )
    .await;
    assert_eq!(second.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        second.text().starts_with("boom "),
        "the origin's body: {}",
        second.text()
    );
    let ok = h1_send(
        &mut conn,
        h1_request(Method::GET, "f.example", "/other", &[]),
    )
    .await;
    assert_eq!(
        ok.status,
        StatusCode::OK,
        "the connection survived two 500s"
    );
    assert_eq!(ok.text(), "fine #1");
    assert!(calls.get() <= 2);
}

#[tokio::test]
async fn an_origin_panic_with_nothing_cached_is_a_502_for_its_waiters_and_the_server_survives() {
    // README: "one whose origin call panics or fails answers its waiters with that failure (a
    // `502` marked `detail=origin-error` for a panic or an error of the inner service),
    // remembered for 1 s". The leader's own client: the panic is the origin's (unchanged, as
    // without the layer), so its connection may die; everyone else must get an answer.
    let calls = Calls::default();
    let gate = Arc::new(Semaphore::new(0));
    let (c, g) = (calls.clone(), gate.clone());
    let (ok, _) = counted("alive", &[]);
    let app = Router::new()
        .route(
            "/panic",
            get(move || {
                let (c, g) = (c.clone(), g.clone());
                async move {
                    c.bump();
                    let _permit = g.acquire().await.expect("gate");
                    if c.get() > 0 {
                        panic!("handler panicked on purpose");
                    }
                    "never"
                }
            }),
        )
        .merge(ok);
    let addr = serve(app.layer(SwrLayer::new())).await;
    let leader = tokio::spawn(async move {
        let mut conn = h1_conn(addr).await;
        conn.ready().await.ok()?;
        let response = conn
            .send_request(h1_request(Method::GET, "x.example", "/panic", &[]))
            .await
            .ok()?;
        Some(collect(response).await.status)
    });
    wait_for("the leader's origin call", async || calls.get() == 1).await;
    let waiter = tokio::spawn(async move {
        let mut conn = h1_conn(addr).await;
        h1_send(
            &mut conn,
            h1_request(Method::GET, "x.example", "/panic", &[]),
        )
        .await
    });
    // Let the waiter join the flight before the origin panics.
    tokio::time::sleep(Duration::from_millis(500)).await;
    gate.add_permits(100);
    let waited = timeout(HANG, waiter)
        .await
        .expect("waiter answered")
        .expect("task");
    assert_eq!(waited.status, StatusCode::BAD_GATEWAY);
    let member = waited.swr();
    assert_eq!(member.param("detail"), Some("origin-error"), "{member:?}");
    assert_eq!(calls.get(), 1, "the waiter did not call the origin again");
    let leader_status = timeout(HANG, leader)
        .await
        .expect("leader ended")
        .expect("task");
    assert!(
        matches!(leader_status, None | Some(StatusCode::BAD_GATEWAY)),
        "{leader_status:?}"
    );
    let mut conn = h1_conn(addr).await;
    let after = h1_send(
        &mut conn,
        h1_request(Method::GET, "x.example", "/other", &[]),
    )
    .await;
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(after.text(), "alive #1");
}

#[tokio::test]
async fn an_origin_timing_out_inside_the_layer_answers_its_504_fast_and_the_connection_survives() {
    let calls = Calls::default();
    let c = calls.clone();
    let slow = get(move || {
        let c = c.clone();
        async move {
            c.bump();
            tokio::time::sleep(Duration::from_secs(600)).await;
            "too late"
        }
    })
    .layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(|_: BoxError| async {
                StatusCode::GATEWAY_TIMEOUT
            }))
            .layer(tower::timeout::TimeoutLayer::new(Duration::from_millis(
                200,
            ))),
    );
    let (ok, _) = counted("still-here", &[]);
    let app = Router::new().route("/slow", slow).merge(ok);
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut conn = h1_conn(addr).await;
    let started = Instant::now();
    let answer = h1_send(
        &mut conn,
        h1_request(Method::GET, "t.example", "/slow", &[]),
    )
    .await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        started.elapsed() < HANG,
        "the timeout's answer, not the origin's 600 s"
    );
    let after = h1_send(
        &mut conn,
        h1_request(Method::GET, "t.example", "/other", &[]),
    )
    .await;
    assert_eq!(after.status, StatusCode::OK);
    // A 504 without freshness is never stored: a later request asks the origin again (after
    // the layer's remember_failures second at most).
    wait_for("the origin to be asked again", async || {
        let again = h1_send(
            &mut conn,
            h1_request(Method::GET, "t.example", "/slow", &[]),
        )
        .await;
        assert_eq!(again.status, StatusCode::GATEWAY_TIMEOUT);
        calls.get() >= 2
    })
    .await;
}

#[tokio::test]
async fn an_origin_503_after_expiry_is_answered_with_the_stale_entry_and_a_parsable_status() {
    // README: "origin error or 5xx, entry inside stale-if-error | the stale response,
    // `fwd=stale; fwd-status=503`".
    let calls = Calls::default();
    let c = calls.clone();
    let app = Router::new().route(
        "/sie",
        get(move || {
            let c = c.clone();
            async move {
                let n = c.bump();
                if n == 1 {
                    (
                        StatusCode::OK,
                        [(header::CACHE_CONTROL, "max-age=1, stale-if-error=60")],
                        "good copy".to_owned(),
                    )
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        [(header::CACHE_CONTROL, "no-store")],
                        format!("down {n}"),
                    )
                }
            }
        }),
    );
    let layer = SwrLayer::new().stale_while_revalidate(Duration::ZERO);
    let addr = serve(app.layer(layer)).await;
    let mut conn = h1_conn(addr).await;
    let fill = h1_send(&mut conn, h1_request(Method::GET, "s.example", "/sie", &[])).await;
    assert_eq!(fill.text(), "good copy");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let answer = h1_send(&mut conn, h1_request(Method::GET, "s.example", "/sie", &[])).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text(), "good copy");
    let member = answer.swr();
    assert_eq!(member.param("fwd"), Some("stale"), "{member:?}");
    assert_eq!(member.param("fwd-status"), Some("503"), "{member:?}");
    assert!(age_of(answer.header("age").as_deref()) >= 1);
    assert!(calls.get() >= 2, "the origin was asked");
    // The connection is fine after it.
    let again = h1_send(&mut conn, h1_request(Method::GET, "s.example", "/sie", &[])).await;
    assert_eq!(again.text(), "good copy");
}

#[tokio::test]
async fn origin_timeout_serves_the_stale_entry_when_the_origin_hangs() {
    // README/rustdoc of `origin_timeout`: "How long a request waits for the origin when a stale
    // entry could answer it instead (inside its stale-if-error window): past this, it gets the
    // stale entry, as if the origin had failed".
    let calls = Calls::default();
    let c = calls.clone();
    let app = Router::new().route(
        "/hang",
        get(move || {
            let c = c.clone();
            async move {
                if c.bump() > 1 {
                    tokio::time::sleep(Duration::from_secs(600)).await;
                }
                (
                    [(header::CACHE_CONTROL, "max-age=1, stale-if-error=60")],
                    "kept copy",
                )
            }
        }),
    );
    let layer = SwrLayer::new()
        .stale_while_revalidate(Duration::ZERO)
        .origin_timeout(Duration::from_millis(300));
    let addr = serve(app.layer(layer)).await;
    let mut conn = h1_conn(addr).await;
    let fill = h1_send(
        &mut conn,
        h1_request(Method::GET, "t.example", "/hang", &[]),
    )
    .await;
    assert_eq!(fill.text(), "kept copy");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // h1_send's own deadline (HANG) is far below the origin's 600 s.
    let answer = h1_send(
        &mut conn,
        h1_request(Method::GET, "t.example", "/hang", &[]),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text(), "kept copy");
    assert_eq!(
        answer.swr().param("fwd"),
        Some("stale"),
        "{:?}",
        answer.swr()
    );
    assert!(calls.get() >= 2);
}

#[tokio::test]
async fn unsafe_requests_invalidate_over_the_wire_only_when_they_succeed() {
    // RFC 9111 §4.4: a cache MUST invalidate the target URI (and same-origin Location /
    // Content-Location) when it receives a non-error status code in response to an unsafe
    // request; an error answer invalidates nothing.
    let calls = Calls::default();
    let c = calls.clone();
    let app = Router::new()
        .route(
            "/item",
            get({
                let c = c.clone();
                move || {
                    let c = c.clone();
                    async move {
                        let n = c.bump();
                        (
                            [(header::CACHE_CONTROL, "max-age=100")],
                            format!("item #{n}"),
                        )
                    }
                }
            })
            .post(|headers: HeaderMap| async move {
                if headers.contains_key("x-fail") {
                    (StatusCode::INTERNAL_SERVER_ERROR, "failed").into_response()
                } else {
                    (
                        StatusCode::CREATED,
                        [(header::LOCATION, "/other")],
                        "created",
                    )
                        .into_response()
                }
            }),
        )
        .route(
            "/other",
            get(move || {
                let c = c.clone();
                async move {
                    let n = c.bump();
                    (
                        [(header::CACHE_CONTROL, "max-age=100")],
                        format!("other #{n}"),
                    )
                }
            }),
        );
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut conn = h1_conn(addr).await;
    let get = |path: &'static str| h1_request(Method::GET, "w.example", path, &[]);
    assert_eq!(h1_send(&mut conn, get("/item")).await.text(), "item #1");
    assert_eq!(h1_send(&mut conn, get("/other")).await.text(), "other #2");
    let failed = h1_send(
        &mut conn,
        h1_request(Method::POST, "w.example", "/item", &[("x-fail", "1")]),
    )
    .await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        h1_send(&mut conn, get("/item")).await.text(),
        "item #1",
        "a 500 invalidates nothing"
    );
    let created = h1_send(
        &mut conn,
        h1_request(Method::POST, "w.example", "/item", &[]),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(h1_send(&mut conn, get("/item")).await.text(), "item #3");
    assert_eq!(
        h1_send(&mut conn, get("/other")).await.text(),
        "other #4",
        "Location invalidated"
    );
    // Over HTTP/2 with the same authority, the refilled entries are the ones served.
    let mut h2 = h2_conn(addr).await;
    assert_eq!(
        h2_send(&mut h2, "http://w.example/item").await.text(),
        "item #3"
    );
}

#[tokio::test]
async fn http2_authority_wins_over_a_differing_host_field_for_key_and_origin() {
    // README: "when both are present and differ, the origin is sent `Host` rewritten to the
    // authority (RFC 9112 §3.2.2), so what is rendered is what is keyed"; RFC 9113 §8.3.1.
    let calls = Calls::default();
    let c = calls.clone();
    let app = Router::new().route(
        "/h2host",
        get(move |headers: HeaderMap| {
            let c = c.clone();
            async move {
                let n = c.bump();
                let host = headers
                    .get(header::HOST)
                    .map(|h| h.to_str().unwrap().to_owned())
                    .unwrap_or_else(|| "none".into());
                (
                    [(header::CACHE_CONTROL, "max-age=100")],
                    format!("Host {host} #{n}"),
                )
            }
        }),
    );
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut h2 = h2_conn(addr).await;
    let request = hyper::Request::builder()
        .uri("http://real.example/h2host")
        .header(header::HOST, "evil.example")
        .body(Full::new(Bytes::new()))
        .unwrap();
    timeout(HANG, h2.ready()).await.unwrap().unwrap();
    let response = timeout(HANG, h2.send_request(request)).await.unwrap();
    match response {
        Ok(response) => {
            let first = collect(response).await;
            assert_eq!(
                first.text(),
                "Host real.example #1",
                "rendered for the authority"
            );
            let mut raw = Raw::connect(addr).await;
            let evil = raw.get("evil.example", "/h2host", "").await;
            assert_eq!(
                evil.text(),
                "Host evil.example #2",
                "evil.example got real.example's entry"
            );
            let real = raw.get("real.example", "/h2host", "").await;
            assert_eq!(real.text(), "Host real.example #1");
        }
        // The h2 server may refuse the stream (a malformed request): also fine.
        Err(e) => assert!(!e.is_timeout(), "{e}"),
    }
}

#[tokio::test]
async fn an_only_if_cached_request_for_a_cold_key_is_a_504_without_an_origin_call() {
    // CHANGELOG: `Cache-Control: only-if-cached` ... else `504 Gateway Timeout` with
    // `Cache-Status: tower-swr; detail=only-if-cached`, and the origin is not asked.
    let (app, calls) = counted("oic", &[]);
    let addr = serve(app.layer(SwrLayer::new())).await;
    let mut raw = Raw::connect(addr).await;
    let cold = raw
        .get("o.example", "/o", "Cache-Control: only-if-cached\r\n")
        .await;
    assert_eq!(cold.status, 504);
    assert_eq!(cold.swr().param("detail"), Some("only-if-cached"));
    assert_eq!(calls.get(), 0);
    let _fill = raw.get("o.example", "/o", "").await;
    let warm = raw
        .get("o.example", "/o", "Cache-Control: only-if-cached\r\n")
        .await;
    assert_eq!(warm.status, 200);
    assert_eq!(warm.text(), "oic #1");
    assert_eq!(calls.get(), 1);
}
