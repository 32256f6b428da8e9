//! Several `examples/reverse_proxy` processes started with one `--redis` behave as one cache:
//! they share stored responses and fills, and a `PURGE` on one reaches all of them.
//!
//! Each test starts its own `redis-server` and runs the example binary that `cargo test`
//! builds beside the tests (with this run's features). Where `redis-server` or the binary is
//! missing, the test prints why and passes without running.
#![cfg(feature = "redis")]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use common::redis_server::RedisServer;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The example binary, built by `cargo test` beside this test's own binary.
fn proxy_binary(test: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?.parent()?; // target/<profile>/deps/.. = target/<profile>
    let binary = dir.join("examples").join("reverse_proxy");
    if binary.exists() {
        Some(binary)
    } else {
        eprintln!(
            "skipping {test}: {} is not built (`cargo test --all-features` builds the examples)",
            binary.display()
        );
        None
    }
}

/// A proxy process; killed when dropped.
struct Proxy {
    child: Child,
    addr: SocketAddr,
}

impl Proxy {
    async fn start(binary: &PathBuf, upstream: SocketAddr, redis: &RedisServer) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let child = Command::new(binary)
            .args(["--listen", &addr.to_string()])
            .args(["--upstream", &format!("http://{upstream}")])
            .args(["--redis", &redis.url()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the proxy starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "the proxy did not listen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self { child, addr }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The upstream: `/slow` answers after 300 ms; every path answers `<path> v<call>` with
/// `max-age=600`, counting its calls.
async fn upstream(calls: Arc<AtomicUsize>) -> SocketAddr {
    let handler = move |uri: http::Uri| {
        let calls = calls.clone();
        async move {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            if uri.path() == "/slow" {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            (
                [("cache-control", "max-age=600")],
                format!("{} v{n}", uri.path()),
            )
                .into_response()
        }
    };
    let app = Router::new().fallback(get(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

/// Status, `Cache-Status` and body.
async fn send(client: &HttpClient, method: &str, url: String) -> (StatusCode, String, String) {
    let request = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(url)
        .body(Full::default())
        .unwrap();
    let response = client.request(request).await.expect("the proxy answers");
    let status = response.status();
    let cache_status = response
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        cache_status,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Sends `GET url` until `done` holds for its answer, up to 5 s.
async fn get_until(
    client: &HttpClient,
    url: &str,
    what: &str,
    done: impl Fn(&(StatusCode, String, String)) -> bool,
) -> (StatusCode, String, String) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = send(client, "GET", url.to_owned()).await;
        if done(&answer) {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_on_one_redis_share_entries_and_purges() {
    let test = "proxies_on_one_redis_share_entries_and_purges";
    let (Some(redis), Some(binary)) = (RedisServer::start(test), proxy_binary(test)) else {
        return;
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let origin = upstream(calls.clone()).await;
    let one = Proxy::start(&binary, origin, &redis).await;
    let two = Proxy::start(&binary, origin, &redis).await;
    let client = client();

    let (status, _, body) = send(&client, "GET", one.url("/a")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "/a v1"));
    // The other proxy answers from Redis (the write is detached: poll for it).
    let (_, cache_status, body) = get_until(&client, &two.url("/a"), "the shared copy", |answer| {
        answer.1.contains("detail=shared")
    })
    .await;
    assert_eq!(body, "/a v1", "{cache_status}");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one origin call for both");

    // A purge on the second proxy: 200, and the first stops serving its memory copy.
    let (status, _, _) = send(&client, "PURGE", two.url("/a")).await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, body) = get_until(
        &client,
        &one.url("/a"),
        "the purge on the other proxy",
        |a| a.2 != "/a v1",
    )
    .await;
    assert_eq!(body, "/a v2");
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // Stored by the first proxy only (the second has no memory copy since its purge): a
    // PURGE on the second still finds it, in Redis.
    tokio::time::sleep(Duration::from_millis(100)).await; // let the detached write land
    let (status, _, _) = send(&client, "PURGE", two.url("/a")).await;
    assert_eq!(status, StatusCode::OK, "the entry was in Redis");
    // The first proxy may still hold its memory copy until the bus delivers that purge (a
    // PURGE answers once this instance has purged and sent the purge to Redis): then
    // its own PURGE finds and purges that copy. After that, nothing is left anywhere.
    let (status, _, _) = send(&client, "PURGE", one.url("/a")).await;
    assert!(
        matches!(status, StatusCode::OK | StatusCode::NOT_FOUND),
        "{status}"
    );
    let (status, _, _) = send(&client, "PURGE", one.url("/a")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing left anywhere");
    let (status, _, _) = send(&client, "PURGE", one.url("/never")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_started_later_answers_from_redis_at_once() {
    let test = "a_proxy_started_later_answers_from_redis_at_once";
    let (Some(redis), Some(binary)) = (RedisServer::start(test), proxy_binary(test)) else {
        return;
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let origin = upstream(calls.clone()).await;
    let client = client();
    {
        let first = Proxy::start(&binary, origin, &redis).await;
        send(&client, "GET", first.url("/b")).await;
        // Written to Redis (detached) before the process goes.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut connection = redis.client().get_connection().expect("connect");
        let has_value = |connection: &mut redis::Connection| {
            redis.keys().into_iter().any(|key| {
                redis::cmd("HEXISTS")
                    .arg(key)
                    .arg("v")
                    .query::<bool>(connection)
                    .unwrap_or(false)
            })
        };
        while !has_value(&mut connection) {
            assert!(Instant::now() < deadline, "nothing was written to Redis");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let restarted = Proxy::start(&binary, origin, &redis).await;
    let (status, cache_status, body) = send(&client, "GET", restarted.url("/b")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "/b v1"));
    assert!(cache_status.contains("detail=shared"), "{cache_status}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_requests_over_two_proxies_make_one_origin_call() {
    let test = "cold_requests_over_two_proxies_make_one_origin_call";
    let (Some(redis), Some(binary)) = (RedisServer::start(test), proxy_binary(test)) else {
        return;
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let origin = upstream(calls.clone()).await;
    let proxies = [
        Proxy::start(&binary, origin, &redis).await,
        Proxy::start(&binary, origin, &redis).await,
    ];
    let client = client();
    // Connections first, so every request below arrives while the one fill runs.
    for proxy in &proxies {
        send(&client, "GET", proxy.url("/warm")).await;
    }
    let before = calls.load(Ordering::SeqCst);
    let requests = (0..40).map(|i| {
        let (client, url) = (client.clone(), proxies[i % 2].url("/slow"));
        tokio::spawn(async move { send(&client, "GET", url).await })
    });
    let answers: Vec<_> = futures_join(requests.collect()).await;
    for (status, _, body) in &answers {
        assert_eq!(status, &StatusCode::OK);
        assert_eq!(body, &format!("/slow v{}", before + 1));
    }
    assert_eq!(calls.load(Ordering::SeqCst), before + 1, "one origin call");
}

async fn futures_join<T: Send + 'static>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await.expect("request task"));
    }
    out
}
