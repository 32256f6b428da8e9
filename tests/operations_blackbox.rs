//! Black-box tests of the operations promises (issue 4: counters, metrics, tracing, purges,
//! graceful shutdown, refresh backoff, the circuit breaker, jitter, per-route policy, opt-in
//! headers) and of the engine as one path with a storage seam and shared failures (issue 13),
//! written from the issue texts and the public docs only.

mod common;

use bytes::Bytes;
use common::*;
use http::{header, HeaderName, Method, Request, StatusCode};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::time::{advance, Instant};
use tower::{Layer, ServiceExt};
use tower_swr::engine::{Freshness, Lifetime, Loaded, SharedTier, Status, SwrCache, TierFuture};
use tower_swr::{CacheStatus, SwrLayer, X_CACHE, X_CACHE_KEY};

/// Fresh 10 s, then 20 s stale-while-revalidate, 300 s stale-if-error.
const CC: &str = "max-age=10, stale-while-revalidate=20, stale-if-error=300";

/// Lets spawned tasks (background refreshes, waiters) run without moving the clock.
async fn spin() {
    for _ in 0..300 {
        tokio::task::yield_now().await;
    }
}

/// An origin answering `v{n}` with [`CC`] while `mode` is `OK` (paths starting `/slow` take
/// 1 s); 503 / error / hang / panic in the other modes of `common::Mode`.
fn ops_origin(mode: Mode) -> (impl OriginService, Calls) {
    origin(move |n, request: Request<ReqBody>| {
        let mode = mode.clone();
        async move {
            if request.uri().path().starts_with("/slow") {
                tokio::time::sleep(secs(1)).await;
            }
            match mode.get() {
                OK => Ok(reply_cc(format!("v{n}"), CC)),
                UNAVAILABLE => Ok(reply_status(StatusCode::SERVICE_UNAVAILABLE, "down")),
                ERROR => Err::<Reply, BoxError>("origin error".into()),
                HANG => {
                    std::future::pending::<()>().await;
                    unreachable!()
                }
                _ => panic!("origin panicked (on purpose)"),
            }
        }
    })
}

const PANIC: usize = 4;

async fn status_and_body<S>(service: &S, request: Request<ReqBody>) -> (CacheStatus, Bytes)
where
    S: tower::Service<Request<ReqBody>, Response = Answer, Error = BoxError> + Clone,
{
    call(service, request).await.expect("answered")
}

/// Sends `n` concurrent requests for `uri` and returns the answers read whole.
async fn concurrent<S>(service: &S, uri: &str, n: usize) -> Vec<(StatusCode, CacheStatus, Bytes)>
where
    S: tower::Service<Request<ReqBody>, Response = Answer, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let service = service.clone();
        let uri = uri.to_owned();
        set.spawn(async move {
            let response = service.oneshot(get(&uri)).await.expect("answered");
            let status = response.status();
            let cache = info(&response).status;
            (status, cache, body(response).await.expect("body"))
        });
    }
    let mut out = Vec::new();
    while let Some(answer) = set.join_next().await {
        out.push(answer.expect("task"));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// 1. Counters
// ---------------------------------------------------------------------------------------------

// Issue 4 §1: "exposes a `Stats` snapshot: fresh hits, stale hits, misses, bypasses, coalesced
// waits, ... stale-if-error answers"; docs: "every request counts once".
#[tokio::test(start_paused = true)]
async fn every_request_lands_in_exactly_one_request_counter() {
    let mode = Mode::default();
    let (o, calls) = ops_origin(mode.clone());
    let layer = SwrLayer::new();
    let handle = layer.handle();
    let service = layer.layer(o);

    assert_eq!(
        status_and_body(&service, get("/a")).await.0,
        CacheStatus::Miss
    );
    assert_eq!(
        status_and_body(&service, get("/a")).await.0,
        CacheStatus::Fresh
    );
    let post = status_and_body(&service, request(Method::POST, "/p"))
        .await
        .0;
    assert_eq!(post, CacheStatus::Bypass);
    let answers = concurrent(&service, "/slow", 5).await;
    let misses = answers.iter().filter(|a| a.1 == CacheStatus::Miss).count();
    let collapsed = answers
        .iter()
        .filter(|a| a.1 == CacheStatus::Collapsed)
        .count();
    assert_eq!((misses, collapsed), (1, 4), "{answers:?}");
    advance(secs(11)).await;
    assert_eq!(
        status_and_body(&service, get("/a")).await.0,
        CacheStatus::Stale
    );
    spin().await;
    mode.set(UNAVAILABLE);
    advance(secs(35)).await; // /a past its stale-while-revalidate window, inside stale-if-error
    let sie = status_and_body(&service, get("/a")).await.0;
    assert_eq!(sie, CacheStatus::StaleIfError);
    let (cold, _) = status_and_body(&service, get("/cold")).await;
    assert_eq!(cold, CacheStatus::Miss);
    let (remembered, _) = status_and_body(&service, get("/cold")).await;
    assert_eq!(remembered, CacheStatus::FailureHit);

    let stats = handle.stats();
    let every = requests(&stats) + stats.failure_hits + stats.shared_tier_hits;
    assert_eq!(every, 12, "{stats:#?}");
    assert_eq!(stats.fresh_hits, 1);
    assert_eq!(stats.stale_hits, 1);
    assert_eq!(stats.misses, 3);
    assert_eq!(stats.collapsed, 4);
    assert_eq!(stats.bypasses, 1);
    assert_eq!(stats.stale_if_error, 1);
    assert_eq!(stats.failure_hits, 1);
    assert_eq!(
        stats.loads_failed, 2,
        "the stale-if-error miss and the cold 503"
    );
    // /a, /p, /slow, refresh of /a, /a (503), /cold (503)
    assert_eq!(calls.get(), 6);
}

// Issue 4 §1: "refreshes started / succeeded / failed / timed out / panicked".
#[tokio::test(start_paused = true)]
async fn refresh_outcomes_add_up_to_refreshes_started() {
    let mode = Mode::default();
    let (o, _) = ops_origin(mode.clone());
    let layer = SwrLayer::new();
    let handle = layer.handle();
    let service = layer.layer(o);
    for uri in ["/ok", "/503", "/err", "/panic", "/hang"] {
        status_and_body(&service, get(uri)).await;
    }
    advance(secs(11)).await;
    for (uri, m) in [
        ("/ok", OK),
        ("/503", UNAVAILABLE),
        ("/err", ERROR),
        ("/panic", PANIC),
        ("/hang", HANG),
    ] {
        mode.set(m);
        assert_eq!(
            status_and_body(&service, get(uri)).await.0,
            CacheStatus::Stale
        );
        spin().await;
    }
    assert_eq!(handle.stats().refreshes_running, 1, "the hanging one");
    advance(secs(31)).await; // past the default 30 s refresh timeout
    spin().await;
    let stats = handle.stats();
    assert_eq!(stats.refreshes_started, 5, "{stats:#?}");
    assert_eq!(stats.refreshes_succeeded, 1);
    assert_eq!(stats.refreshes_failed, 4);
    assert_eq!(stats.refreshes_timed_out, 1);
    assert_eq!(stats.refreshes_panicked, 1);
    assert_eq!(stats.refreshes_running, 0);
    assert_eq!(
        stats.refreshes_started,
        stats.refreshes_succeeded + stats.refreshes_failed
    );
}

// Issue 4 §1: "... evictions, entries, bytes held".
#[tokio::test(start_paused = true)]
async fn entries_and_bytes_follow_stores_purges_and_evictions() {
    let (o, _) =
        origin(
            |n, _| async move { Ok(reply_cc(vec![b'x'; 4096], &format!("max-age=600, x-n={n}"))) },
        );
    let layer = SwrLayer::new().capacity_bytes(64 * 1024);
    let handle = layer.handle();
    let service = layer.layer(o);
    status_and_body(&service, get("/one")).await;
    let one = handle.stats();
    assert_eq!(one.entries, 1);
    assert!(one.bytes >= 4096, "{one:#?}");
    assert_eq!(one.capacity_bytes, 64 * 1024);
    for i in 0..64 {
        status_and_body(&service, get(&format!("/k{i}"))).await;
    }
    let full = handle.stats();
    assert!(full.evictions > 0, "{full:#?}");
    assert!(full.bytes <= full.capacity_bytes, "{full:#?}");
    assert!(full.entries < 65);
    assert_eq!(full.stores, 65);
    handle.clear();
    let cleared = handle.stats();
    assert_eq!(cleared.entries, 0, "{cleared:#?}");
    assert!(cleared.bytes < one.bytes, "{cleared:#?}");
}

// ---------------------------------------------------------------------------------------------
// 2. Metrics facade
// ---------------------------------------------------------------------------------------------

/// Every metric in one debugging snapshot (which resets the counters), by cache label:
/// `cache` → `name{label=value}` → value.
#[cfg(feature = "metrics")]
fn metric_values(
    snapshotter: &metrics_util::debugging::Snapshotter,
) -> BTreeMap<String, BTreeMap<String, f64>> {
    use metrics_util::debugging::DebugValue;
    let mut found: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let labels: BTreeMap<String, String> = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        let cache = labels.get("cache").cloned().unwrap_or_default();
        let rest: Vec<String> = labels
            .iter()
            .filter(|(k, _)| *k != "cache")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let name = if rest.is_empty() {
            key.name().to_owned()
        } else {
            format!("{}{{{}}}", key.name(), rest.join(","))
        };
        let value = match value {
            DebugValue::Counter(n) => n as f64,
            DebugValue::Gauge(g) => g.0,
            DebugValue::Histogram(_) => continue,
        };
        found.entry(cache).or_default().insert(name, value);
    }
    found
}

/// The value of one series in Prometheus text (`series` as rendered, labels included).
#[cfg(feature = "metrics")]
fn prometheus_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

// Issue 4 §2: "the same numbers as counters/gauges with stable, documented names and labels".
#[cfg(feature = "metrics")]
#[tokio::test(start_paused = true)]
async fn every_documented_series_exists_once_the_layer_is_built() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (o, _) = ops_origin(Mode::default());
    let _service = metrics::with_local_recorder(&recorder, || {
        SwrLayer::new().cache_name("registered").layer(o)
    });
    let found = metric_values(&snapshotter)
        .remove("registered")
        .unwrap_or_default();
    let mut expected: Vec<String> = [
        "hit",
        "stale",
        "miss",
        "collapsed",
        "bypass",
        "stale_if_error",
        "failure_hit",
        "shared_tier",
    ]
    .iter()
    .map(|s| format!("swr_requests_total{{status={s}}}"))
    .collect();
    expected.extend(
        ["started", "succeeded", "failed", "timed_out", "panicked"]
            .iter()
            .map(|o| format!("swr_refreshes_total{{outcome={o}}}")),
    );
    expected.extend(
        ["stored", "too_large"]
            .iter()
            .map(|r| format!("swr_stores_total{{result={r}}}")),
    );
    expected.push("swr_loads_total{outcome=failed}".into());
    for name in &expected {
        assert_eq!(found.get(name), Some(&0.0), "{name} in {found:#?}");
    }
    for gauge in ["swr_entries", "swr_bytes", "swr_refreshes_running"] {
        assert!(found.contains_key(gauge), "{gauge} in {found:#?}");
    }
}

// Issue 4 §2: "the same numbers as counters/gauges": every counter equals its `Stats` field.
#[cfg(feature = "metrics")]
#[tokio::test(start_paused = true)]
async fn metrics_equal_the_stats_snapshot_after_a_mixed_workload() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let mode = Mode::default();
    let (o, _) = ops_origin(mode.clone());
    let (service, handle) = metrics::with_local_recorder(&recorder, || {
        let layer = SwrLayer::new().cache_name("mixed").max_body_bytes(1024);
        let handle = layer.handle();
        (layer.layer(o), handle)
    });
    let (big, _) = origin(|_, _| async { Ok(reply_cc(vec![b'b'; 4096], "max-age=60")) });
    let big_service = metrics::with_local_recorder(&recorder, || {
        SwrLayer::new()
            .cache_name("mixed-big")
            .max_body_bytes(1024)
            .layer(big)
    });
    status_and_body(&big_service, get("/big")).await;

    status_and_body(&service, get("/a")).await;
    status_and_body(&service, get("/a")).await;
    status_and_body(&service, request(Method::DELETE, "/z")).await;
    concurrent(&service, "/slow", 3).await;
    for uri in ["/r1", "/r2", "/r3"] {
        status_and_body(&service, get(uri)).await;
    }
    advance(secs(11)).await;
    for (uri, m) in [("/r1", OK), ("/r2", UNAVAILABLE), ("/r3", PANIC)] {
        mode.set(m);
        status_and_body(&service, get(uri)).await;
        spin().await;
    }
    mode.set(UNAVAILABLE);
    advance(secs(25)).await;
    status_and_body(&service, get("/a")).await; // stale-if-error
    status_and_body(&service, get("/cold")).await; // miss, failed
    status_and_body(&service, get("/cold")).await; // failure hit
    mode.set(OK);
    spin().await;

    let mut all = metric_values(&snapshotter);
    let found = all.remove("mixed").unwrap_or_default();
    let stats = handle.stats();
    let pairs: [(&str, u64); 16] = [
        ("swr_requests_total{status=hit}", stats.fresh_hits),
        ("swr_requests_total{status=stale}", stats.stale_hits),
        ("swr_requests_total{status=miss}", stats.misses),
        ("swr_requests_total{status=collapsed}", stats.collapsed),
        ("swr_requests_total{status=bypass}", stats.bypasses),
        (
            "swr_requests_total{status=stale_if_error}",
            stats.stale_if_error,
        ),
        ("swr_requests_total{status=failure_hit}", stats.failure_hits),
        (
            "swr_refreshes_total{outcome=started}",
            stats.refreshes_started,
        ),
        (
            "swr_refreshes_total{outcome=succeeded}",
            stats.refreshes_succeeded,
        ),
        (
            "swr_refreshes_total{outcome=failed}",
            stats.refreshes_failed,
        ),
        (
            "swr_refreshes_total{outcome=timed_out}",
            stats.refreshes_timed_out,
        ),
        (
            "swr_refreshes_total{outcome=panicked}",
            stats.refreshes_panicked,
        ),
        ("swr_stores_total{result=stored}", stats.stores),
        ("swr_stores_total{result=too_large}", stats.store_rejections),
        ("swr_loads_total{outcome=failed}", stats.loads_failed),
        ("swr_entries", stats.entries),
    ];
    for (name, value) in pairs {
        assert_eq!(
            found.get(name),
            Some(&(value as f64)),
            "{name}: {found:#?} vs {stats:#?}"
        );
    }
    // The workload reached every counter that it should (no vacuous zeros).
    assert!(stats.fresh_hits > 0 && stats.stale_hits > 0 && stats.collapsed > 0);
    assert!(stats.stale_if_error > 0 && stats.failure_hits > 0 && stats.refreshes_panicked > 0);
    let big = all.remove("mixed-big").unwrap_or_default();
    assert_eq!(
        big.get("swr_stores_total{result=too_large}"),
        Some(&1.0),
        "{big:#?}"
    );
}

// Issue 4 §2: "the same numbers as counters/gauges": entries and bytes held after stores,
// read as a Prometheus scrape reads them.
#[cfg(feature = "metrics")]
#[tokio::test(start_paused = true)]
async fn entry_and_byte_gauges_follow_stores() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let prometheus = recorder.handle();
    let (o, _) = ops_origin(Mode::default());
    let (service, handle) = metrics::with_local_recorder(&recorder, || {
        let layer = SwrLayer::new().cache_name("stored");
        let handle = layer.handle();
        (layer.layer(o), handle)
    });
    let gauge =
        |name: &str| prometheus_value(&prometheus.render(), &format!("{name}{{cache=\"stored\"}}"));
    status_and_body(&service, get("/g1")).await;
    let one = gauge("swr_bytes").expect("a bytes gauge");
    status_and_body(&service, get("/g2")).await;
    assert_eq!(gauge("swr_entries"), Some(2.0));
    let two = gauge("swr_bytes").expect("a bytes gauge");
    assert!(two > one, "{one} then {two}");
    assert_eq!(two, handle.stats().bytes as f64);
}

// Issue 4 §2: "the same numbers as counters/gauges": after a purge, `swr_entries` and
// `swr_bytes` fall as `Stats` does, for a scrape that comes while nothing calls `stats()`.
#[cfg(feature = "metrics")]
#[tokio::test(start_paused = true)]
async fn entry_and_byte_gauges_fall_after_a_purge() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let prometheus = recorder.handle();
    let (o, _) = ops_origin(Mode::default());
    let (service, handle) = metrics::with_local_recorder(&recorder, || {
        let layer = SwrLayer::new().cache_name("purged");
        let handle = layer.handle();
        (layer.layer(o), handle)
    });
    let gauge =
        |name: &str| prometheus_value(&prometheus.render(), &format!("{name}{{cache=\"purged\"}}"));
    status_and_body(&service, get("/g1")).await;
    status_and_body(&service, get("/g2")).await;
    assert_eq!(gauge("swr_entries"), Some(2.0));
    assert_eq!(handle.purge("/g2"), 1);
    assert_eq!(gauge("swr_entries"), Some(1.0), "one entry left");
    handle.clear();
    assert_eq!(gauge("swr_entries"), Some(0.0), "cleared");
    assert_eq!(gauge("swr_bytes"), Some(0.0), "cleared");
}

// Issue 4 §2: "the same numbers as counters/gauges": `swr_refreshes_running` is 1 while a
// refresh runs. A scrape that comes while nothing calls `stats()` sees 0.
#[cfg(feature = "metrics")]
#[tokio::test(start_paused = true)]
async fn refreshes_running_gauge_is_one_while_a_refresh_runs() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let prometheus = recorder.handle();
    let mode = Mode::default();
    let (o, _) = ops_origin(mode.clone());
    let service =
        metrics::with_local_recorder(&recorder, || SwrLayer::new().cache_name("running").layer(o));
    let gauge = || {
        prometheus_value(
            &prometheus.render(),
            "swr_refreshes_running{cache=\"running\"}",
        )
    };
    status_and_body(&service, get("/g1")).await;
    advance(secs(11)).await;
    mode.set(HANG);
    status_and_body(&service, get("/g1")).await; // a refresh that hangs (30 s timeout)
    spin().await;
    assert_eq!(gauge(), Some(1.0), "a refresh is running");
    advance(secs(31)).await;
    spin().await;
    assert_eq!(gauge(), Some(0.0), "it timed out");
}

// Issue 4 §2: "the axum example serves them at `/metrics` in Prometheus text via
// `metrics-exporter-prometheus`": the names render as Prometheus series.
#[cfg(feature = "metrics")]
#[tokio::test(start_paused = true)]
async fn prometheus_text_shows_request_counters_by_cache_and_status() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let prometheus = recorder.handle();
    let (o, _) = ops_origin(Mode::default());
    let service =
        metrics::with_local_recorder(&recorder, || SwrLayer::new().cache_name("prom").layer(o));
    status_and_body(&service, get("/p")).await;
    status_and_body(&service, get("/p")).await;
    status_and_body(&service, get("/p")).await;
    let text = prometheus.render();
    let line = |series: &str| {
        text.lines()
            .find(|l| l.starts_with(series))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .to_owned()
    };
    assert!(
        line(r#"swr_requests_total{cache="prom",status="hit"}"#).ends_with(" 2"),
        "{text}"
    );
    assert!(
        line(r#"swr_requests_total{cache="prom",status="miss"}"#).ends_with(" 1"),
        "{text}"
    );
    assert!(
        line(r#"swr_entries{cache="prom"}"#).ends_with(" 1"),
        "{text}"
    );
}

// Issue 4 §2 and the engine docs: "The cache's name, used as the `cache` label of metrics".
#[cfg(feature = "metrics")]
#[tokio::test(start_paused = true)]
async fn engine_metrics_carry_the_builder_name_as_cache_label() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let cache: SwrCache<String, u32> =
        metrics::with_local_recorder(&recorder, || SwrCache::builder().name("settings").build());
    let fresh = Freshness::new(secs(60));
    for _ in 0..3 {
        cache
            .get_or_load("k".into(), move || async move {
                Ok::<_, String>(Loaded::new(1, fresh))
            })
            .await
            .expect("loaded");
    }
    let found = metric_values(&snapshotter)
        .remove("settings")
        .unwrap_or_default();
    assert_eq!(
        found.get("swr_requests_total{status=miss}"),
        Some(&1.0),
        "{found:#?}"
    );
    assert_eq!(
        found.get("swr_requests_total{status=hit}"),
        Some(&2.0),
        "{found:#?}"
    );
    assert_eq!(found.get("swr_entries"), Some(&1.0), "{found:#?}");
}

// ---------------------------------------------------------------------------------------------
// 3. tracing
// ---------------------------------------------------------------------------------------------

// Issue 4 §3: "a debug event per request with key and cache status".
#[tokio::test(start_paused = true)]
async fn a_debug_event_per_request_names_its_key_and_cache_status() {
    let events = Events::default();
    let _collecting = events.install();
    let (o, _) = ops_origin(Mode::default());
    let service = SwrLayer::new().layer(o);
    status_and_body(&service, get("/traced?q=1")).await; // miss
    status_and_body(&service, get("/traced?q=1")).await; // hit
    status_and_body(&service, request(Method::PUT, "/traced?q=1")).await; // bypass
    let debug: Vec<Captured> = events
        .at(tracing::Level::DEBUG)
        .into_iter()
        .filter(|e| e.fields.contains_key("status"))
        .collect();
    assert_eq!(debug.len(), 3, "one per request: {debug:#?}");
    for event in &debug {
        let key = event.fields.get("key").expect("a key field");
        assert!(key.contains("/traced?q=1"), "{event:?}");
    }
    let statuses: Vec<String> = debug
        .iter()
        .map(|e| e.fields["status"].to_lowercase())
        .collect();
    assert!(statuses[0].contains("miss"), "{statuses:?}");
    assert!(
        statuses[1].contains("fresh") || statuses[1].contains("hit"),
        "{statuses:?}"
    );
    assert!(statuses[2].contains("bypass"), "{statuses:?}");
}

// Issue 4 §3: "`warn!` whenever a stale entry is served because the origin failed, with key
// and age".
#[tokio::test(start_paused = true)]
async fn stale_if_error_answers_warn_with_key_and_age() {
    let events = Events::default();
    let _collecting = events.install();
    let mode = Mode::default();
    let (o, _) = ops_origin(mode.clone());
    let service = SwrLayer::new().layer(o);
    status_and_body(&service, get("/warned")).await;
    advance(secs(40)).await; // past the stale-while-revalidate window
    mode.set(ERROR);
    assert_eq!(
        status_and_body(&service, get("/warned")).await.0,
        CacheStatus::StaleIfError
    );
    let warns: Vec<Captured> = events
        .at(tracing::Level::WARN)
        .into_iter()
        .filter(|e| e.fields.values().any(|v| v.contains("/warned")))
        .collect();
    assert!(!warns.is_empty(), "{:#?}", events.0.lock().unwrap());
    let warn = &warns[0];
    assert!(warn.fields.contains_key("key"), "{warn:?}");
    let age = warn
        .fields
        .iter()
        .find(|(name, _)| name.starts_with("age"))
        .map(|(_, value)| value)
        .unwrap_or_else(|| panic!("an age field: {warn:?}"));
    assert_eq!(age, "40", "the entry is 40 s old: {warn:?}");
}

// Issue 4 §3: "`warn!` when an entry served stale is older than a configurable alert age".
#[tokio::test(start_paused = true)]
async fn stale_older_than_the_alert_age_warns_and_younger_does_not() {
    let events = Events::default();
    let _collecting = events.install();
    let (o, _) = ops_origin(Mode::default());
    let service = SwrLayer::new().stale_alert_age(secs(15)).layer(o);
    status_and_body(&service, get("/young")).await;
    status_and_body(&service, get("/old")).await;
    advance(secs(12)).await;
    assert_eq!(
        status_and_body(&service, get("/young")).await.0,
        CacheStatus::Stale
    );
    spin().await;
    let about = |what: &str| {
        events
            .at(tracing::Level::WARN)
            .into_iter()
            .filter(|e| e.fields.values().any(|v| v.contains(what)))
            .count()
    };
    assert_eq!(about("/young"), 0, "12 s old is under the 15 s alert age");
    advance(secs(6)).await;
    assert_eq!(
        status_and_body(&service, get("/old")).await.0,
        CacheStatus::Stale
    );
    assert_eq!(about("/old"), 1, "{:#?}", events.0.lock().unwrap());
}

// Issue 4 §3: "`error!` when a refresh panics".
#[tokio::test(start_paused = true)]
async fn a_panicking_refresh_logs_an_error() {
    let events = Events::default();
    let _collecting = events.install();
    let mode = Mode::default();
    let (o, _) = ops_origin(mode.clone());
    let layer = SwrLayer::new();
    let handle = layer.handle();
    let service = layer.layer(o);
    status_and_body(&service, get("/boom")).await;
    advance(secs(11)).await;
    assert!(events.at(tracing::Level::ERROR).is_empty());
    mode.set(PANIC);
    let (status, body) = status_and_body(&service, get("/boom")).await;
    assert_eq!((status, body), (CacheStatus::Stale, Bytes::from("v1")));
    spin().await;
    assert_eq!(handle.stats().refreshes_panicked, 1);
    assert_eq!(
        events.at(tracing::Level::ERROR).len(),
        1,
        "{:#?}",
        events.0.lock().unwrap()
    );
    // The entry survived the panic.
    assert_eq!(
        status_and_body(&service, get("/boom")).await.1,
        Bytes::from("v1")
    );
}

// README (Operations, Logs): "`warn` ... when the circuit breaker opens".
#[tokio::test(start_paused = true)]
async fn the_circuit_breaker_opening_logs_a_warning() {
    let events = Events::default();
    let _collecting = events.install();
    let mode = Mode::default();
    let (o, _) = ops_origin(mode.clone());
    let layer = SwrLayer::new().circuit_breaker(2, secs(30));
    let handle = layer.handle();
    let service = layer.layer(o);
    for uri in ["/b1", "/b2"] {
        status_and_body(&service, get(uri)).await;
    }
    advance(secs(11)).await;
    mode.set(UNAVAILABLE);
    let before = events.at(tracing::Level::WARN).len();
    status_and_body(&service, get("/b1")).await;
    spin().await;
    assert!(!handle.stats().refreshes_paused);
    status_and_body(&service, get("/b2")).await;
    spin().await;
    assert!(handle.stats().refreshes_paused);
    let warns = events.at(tracing::Level::WARN);
    let breaker = warns[before..]
        .iter()
        .filter(|e| {
            let m = e.message.to_lowercase();
            m.contains("breaker") || m.contains("paus")
        })
        .count();
    assert_eq!(breaker, 1, "{warns:#?}");
}

// ---------------------------------------------------------------------------------------------
// 4. Purge and invalidation through a cloneable handle
// ---------------------------------------------------------------------------------------------

fn vary_origin() -> (impl OriginService, Calls) {
    origin(|n, request: Request<ReqBody>| async move {
        let lang = request
            .headers()
            .get(header::ACCEPT_LANGUAGE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let response = reply_cc(format!("{lang}{n}"), CC);
        Ok(with_header(response, header::VARY, "accept-language"))
    })
}

// Issue 4 §4: "remove one key (all its variants)".
#[tokio::test(start_paused = true)]
async fn purge_removes_every_variant_of_its_target_and_nothing_else() {
    let (o, calls) = vary_origin();
    let layer = SwrLayer::new();
    let handle = layer.handle().clone();
    let service = layer.layer(o);
    for lang in ["en", "fr", "de"] {
        status_and_body(&service, get_with("/v", header::ACCEPT_LANGUAGE, lang)).await;
    }
    status_and_body(&service, get("/other")).await;
    assert_eq!(calls.get(), 4);
    assert_eq!(handle.purge("/v"), 3);
    for lang in ["en", "fr", "de"] {
        let (status, _) =
            status_and_body(&service, get_with("/v", header::ACCEPT_LANGUAGE, lang)).await;
        assert_eq!(status, CacheStatus::Miss, "{lang}");
    }
    assert_eq!(
        status_and_body(&service, get("/other")).await.0,
        CacheStatus::Fresh
    );
    assert_eq!(calls.get(), 7);
    assert_eq!(handle.purge("/nothing-here"), 0);
}

// Issue 4 §4: "remove by path prefix".
#[tokio::test(start_paused = true)]
async fn purge_prefix_removes_only_targets_under_the_prefix() {
    let (o, _) = ops_origin(Mode::default());
    let layer = SwrLayer::new();
    let handle = layer.handle();
    let service = layer.layer(o);
    for uri in ["/api/v1/a", "/api/v1/b?x=1", "/api/v2/a", "/apiv1"] {
        status_and_body(&service, get(uri)).await;
    }
    assert_eq!(handle.purge_prefix("/api/v1/"), 2);
    assert_eq!(
        status_and_body(&service, get("/api/v1/a")).await.0,
        CacheStatus::Miss
    );
    assert_eq!(
        status_and_body(&service, get("/api/v1/b?x=1")).await.0,
        CacheStatus::Miss
    );
    assert_eq!(
        status_and_body(&service, get("/api/v2/a")).await.0,
        CacheStatus::Fresh
    );
    assert_eq!(
        status_and_body(&service, get("/apiv1")).await.0,
        CacheStatus::Fresh
    );
}

// Issue 4 §4: "clear all".
#[tokio::test(start_paused = true)]
async fn clear_through_a_clone_of_the_handle_empties_the_serving_cache() {
    let (o, calls) = ops_origin(Mode::default());
    let layer = SwrLayer::new();
    let handle = layer.handle();
    let service = layer.layer(o);
    for uri in ["/c1", "/c2", "/c3"] {
        status_and_body(&service, get(uri)).await;
    }
    assert_eq!(handle.stats().entries, 3);
    let clone = handle.clone();
    clone.clear();
    assert_eq!(handle.stats().entries, 0);
    for uri in ["/c1", "/c2", "/c3"] {
        assert_eq!(
            status_and_body(&service, get(uri)).await.0,
            CacheStatus::Miss
        );
    }
    assert_eq!(calls.get(), 6);
}

// Issue 4 §4: "soft-purge (mark stale, so the next request is served stale and refreshes)".
#[tokio::test(start_paused = true)]
async fn soft_purge_serves_the_next_request_stale_and_refreshes_once() {
    let (o, calls) = ops_origin(Mode::default());
    let layer = SwrLayer::new();
    let handle = layer.handle();
    let service = layer.layer(o);
    status_and_body(&service, get("/soft")).await;
    assert_eq!(handle.soft_purge("/soft"), 1);
    let (status, body) = status_and_body(&service, get("/soft")).await;
    assert_eq!((status, body), (CacheStatus::Stale, Bytes::from("v1")));
    let (status, _) = status_and_body(&service, get("/soft")).await;
    assert!(
        matches!(status, CacheStatus::Stale | CacheStatus::Fresh),
        "{status:?}"
    );
    spin().await;
    assert_eq!(calls.get(), 2, "one background refresh");
    let (status, body) = status_and_body(&service, get("/soft")).await;
    assert_eq!((status, body), (CacheStatus::Fresh, Bytes::from("v2")));
}

// Issue 4 §4 (soft purge) with the handle's prefix form.
#[tokio::test(start_paused = true)]
async fn soft_purge_prefix_marks_only_targets_under_the_prefix_stale() {
    let (o, _) = ops_origin(Mode::default());
    let layer = SwrLayer::new();
    let handle = layer.handle();
    let service = layer.layer(o);
    for uri in ["/cat/1", "/cat/2", "/dog/1"] {
        status_and_body(&service, get(uri)).await;
    }
    assert_eq!(handle.soft_purge_prefix("/cat/"), 2);
    assert_eq!(
        status_and_body(&service, get("/cat/1")).await.0,
        CacheStatus::Stale
    );
    assert_eq!(
        status_and_body(&service, get("/cat/2")).await.0,
        CacheStatus::Stale
    );
    assert_eq!(
        status_and_body(&service, get("/dog/1")).await.0,
        CacheStatus::Fresh
    );
    spin().await;
    assert_eq!(handle.stats().refreshes_succeeded, 2);
}

// README: `purge_tag` makes tagged entries a miss, `soft_purge_tag` makes them stale.
#[tokio::test(start_paused = true)]
async fn tag_purges_hit_every_entry_with_the_tag_and_only_those() {
    let (o, _) = origin(|n, request: Request<ReqBody>| async move {
        let tag = if request.uri().path().starts_with("/p") {
            "product"
        } else {
            "other"
        };
        let response = reply_cc(format!("v{n}"), CC);
        Ok(with_header(
            response,
            HeaderName::from_static("surrogate-key"),
            &format!("{tag} all"),
        ))
    });
    let layer = SwrLayer::new();
    let handle = layer.handle();
    let service = layer.layer(o);
    for uri in ["/p1", "/p2", "/o1"] {
        status_and_body(&service, get(uri)).await;
    }
    assert_eq!(handle.soft_purge_tag(["product"]), 1);
    assert_eq!(
        status_and_body(&service, get("/p1")).await.0,
        CacheStatus::Stale
    );
    assert_eq!(
        status_and_body(&service, get("/o1")).await.0,
        CacheStatus::Fresh
    );
    spin().await;
    assert_eq!(handle.purge_tag(["all"]), 1);
    for uri in ["/p1", "/p2", "/o1"] {
        assert_eq!(
            status_and_body(&service, get(uri)).await.0,
            CacheStatus::Miss,
            "{uri}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Graceful shutdown
// ---------------------------------------------------------------------------------------------

// Issue 4 §5: "the handle can stop new refreshes and wait, with a deadline, for running ones".
#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_a_running_refresh_to_finish() {
    let (o, calls) = ops_origin(Mode::default());
    let layer = SwrLayer::new();
    let handle = layer.handle();
    let service = layer.layer(o);
    status_and_body(&service, get("/slow/s")).await;
    advance(secs(11)).await;
    assert_eq!(
        status_and_body(&service, get("/slow/s")).await.0,
        CacheStatus::Stale
    );
    spin().await;
    assert_eq!(handle.stats().refreshes_running, 1);
    let started = Instant::now();
    assert!(handle.shutdown(secs(10)).await, "finished in time");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < secs(2),
        "{waited:?}"
    );
    let stats = handle.stats();
    assert_eq!((stats.refreshes_succeeded, stats.refreshes_running), (1, 0));
    assert_eq!(calls.get(), 2);
    assert_eq!(
        status_and_body(&service, get("/slow/s")).await.1,
        Bytes::from("v2")
    );
}

// Issue 4 §5: "... wait, with a deadline, for running ones".
#[tokio::test(start_paused = true)]
async fn shutdown_gives_up_at_its_deadline_on_a_hung_refresh() {
    let mode = Mode::default();
    let (o, _) = ops_origin(mode.clone());
    let layer = SwrLayer::new().refresh_timeout(secs(600));
    let handle = layer.handle();
    let service = layer.layer(o);
    status_and_body(&service, get("/hung")).await;
    advance(secs(11)).await;
    mode.set(HANG);
    status_and_body(&service, get("/hung")).await;
    spin().await;
    let started = Instant::now();
    assert!(!handle.shutdown(secs(5)).await, "the refresh never ends");
    let waited = started.elapsed();
    assert!(waited >= secs(5) && waited < secs(6), "{waited:?}");
}

// Issue 4 §5: "the handle can stop new refreshes"; docs: "Requests are still answered (stale
// entries without refreshing)".
#[tokio::test(start_paused = true)]
async fn after_shutdown_stale_is_served_without_a_refresh_and_misses_still_load() {
    let (o, calls) = ops_origin(Mode::default());
    let layer = SwrLayer::new();
    let handle = layer.handle();
    let service = layer.layer(o);
    status_and_body(&service, get("/after")).await;
    assert!(handle.shutdown(secs(1)).await);
    advance(secs(11)).await;
    for _ in 0..3 {
        let (status, body) = status_and_body(&service, get("/after")).await;
        assert_eq!((status, body), (CacheStatus::Stale, Bytes::from("v1")));
        spin().await;
    }
    advance(secs(5)).await;
    spin().await;
    assert_eq!(calls.get(), 1, "no refresh after shutdown");
    assert_eq!(handle.stats().refreshes_started, 0);
    let (status, body) = status_and_body(&service, get("/new")).await;
    assert_eq!((status, body), (CacheStatus::Miss, Bytes::from("v2")));
}

// Issue 4 §5 for the engine: background refreshes are tracked by the same shutdown.
#[tokio::test(start_paused = true)]
async fn engine_shutdown_stops_new_refreshes() {
    let cache: SwrCache<String, u32> = SwrCache::builder().build();
    let swr = Freshness::new(secs(1)).with_stale_while_revalidate(secs(100));
    cache.insert("k".into(), 1, swr);
    assert!(cache.shutdown(secs(1)).await);
    advance(secs(2)).await;
    let loads = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        let loads = loads.clone();
        let got = cache
            .get_or_load("k".into(), move || async move {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok::<_, String>(Loaded::new(2, swr))
            })
            .await
            .expect("stale");
        assert_eq!((got.status, got.value), (Status::Stale, 1));
        spin().await;
    }
    assert_eq!(loads.load(Ordering::SeqCst), 0);
}

// ---------------------------------------------------------------------------------------------
// 6. Protect a failing origin: refresh timeout, backoff, circuit breaker
// ---------------------------------------------------------------------------------------------

/// A loader that records when it was called and fails (or, `ok`, answers `value`).
fn recording_loader(
    calls: &Arc<Mutex<Vec<Instant>>>,
    ok: Option<u32>,
    freshness: Freshness,
) -> impl FnOnce() -> std::future::Ready<Result<Loaded<u32>, String>> + Send + 'static {
    let calls = calls.clone();
    move || {
        calls.lock().unwrap().push(Instant::now());
        std::future::ready(match ok {
            Some(value) => Ok(Loaded::new(value, freshness)),
            None => Err("database down".to_string()),
        })
    }
}

/// Long stale windows, so every lookup below is a stale hit that may start a refresh.
fn long_stale() -> Freshness {
    Freshness::new(secs(1))
        .with_stale_while_revalidate(secs(100_000))
        .with_stale_if_error(secs(100_000))
}

// Issue 4 §6: "each refresh has a timeout (default 30 s)".
#[tokio::test(start_paused = true)]
async fn a_refresh_is_abandoned_at_the_default_30_s_timeout_and_the_entry_kept() {
    let mode = Mode::default();
    let (o, _) = ops_origin(mode.clone());
    let layer = SwrLayer::new();
    let handle = layer.handle();
    let service = layer.layer(o);
    status_and_body(&service, get("/t")).await;
    advance(secs(11)).await;
    mode.set(HANG);
    status_and_body(&service, get("/t")).await;
    spin().await;
    advance(secs(29)).await;
    spin().await;
    assert_eq!(handle.stats().refreshes_running, 1, "29 s: still running");
    advance(secs(2)).await;
    spin().await;
    let stats = handle.stats();
    assert_eq!(
        (stats.refreshes_running, stats.refreshes_timed_out),
        (0, 1),
        "{stats:#?}"
    );
    // Past its stale-while-revalidate window now: the kept entry stands in for a failure.
    mode.set(UNAVAILABLE);
    let (status, body) = status_and_body(&service, get("/t")).await;
    assert_eq!(
        (status, body),
        (CacheStatus::StaleIfError, Bytes::from("v1"))
    );
}

/// Polls `key` every 100 ms for `for_secs`, with `loader` failing; returns the load times.
async fn poll_failing(cache: &SwrCache<String, u32>, key: &str, for_secs: u64) -> Vec<Instant> {
    let calls = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..for_secs * 10 {
        let got = cache
            .get_or_load(key.to_owned(), recording_loader(&calls, None, long_stale()))
            .await
            .expect("stale keeps being served");
        assert_eq!(got.value, 1);
        assert!(got.is_stale());
        spin().await;
        advance(Duration::from_millis(100)).await;
    }
    let times = calls.lock().unwrap().clone();
    times
}

// Issue 4 §6: "after a failed refresh a key is not refreshed again before a backoff
// (exponential with a cap, jittered), while stale keeps being served"; docs: "a random time
// between half of it and all of it".
#[tokio::test(start_paused = true)]
async fn refresh_backoff_doubles_up_to_its_cap_within_half_and_all_of_each_wait() {
    let cache: SwrCache<String, u32> = SwrCache::builder()
        .refresh_backoff(secs(4), secs(16))
        .circuit_breaker(0, secs(1))
        .build();
    cache.insert("k".into(), 1, long_stale());
    advance(secs(2)).await;
    let times = poll_failing(&cache, "k", 120).await;
    assert!(times.len() >= 6, "{times:?}");
    let waits: Vec<f64> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    let slack = 0.11; // the polling step
    for (i, wait) in waits.iter().enumerate() {
        let full = (4.0 * 2f64.powi(i as i32)).min(16.0);
        assert!(
            *wait >= full / 2.0 - 1e-6 && *wait <= full + slack,
            "wait {i} was {wait} s, expected within [{}, {full}]: {waits:?}",
            full / 2.0
        );
    }
    assert_eq!(cache.stats().refreshes_failed as usize, times.len());
}

// Issue 4 §6: "a key is not refreshed again before a backoff": per key, not for every key.
#[tokio::test(start_paused = true)]
async fn one_keys_backoff_does_not_delay_another_keys_refresh() {
    let cache: SwrCache<String, u32> = SwrCache::builder()
        .refresh_backoff(secs(60), secs(60))
        .circuit_breaker(0, secs(1))
        .build();
    cache.insert("a".into(), 1, long_stale());
    cache.insert("b".into(), 1, long_stale());
    advance(secs(2)).await;
    let calls = Arc::new(Mutex::new(Vec::new()));
    cache
        .get_or_load("a".into(), recording_loader(&calls, None, long_stale()))
        .await
        .expect("stale");
    spin().await;
    assert_eq!(calls.lock().unwrap().len(), 1);
    advance(secs(1)).await;
    cache
        .get_or_load("a".into(), recording_loader(&calls, None, long_stale()))
        .await
        .expect("stale");
    spin().await;
    assert_eq!(calls.lock().unwrap().len(), 1, "a backs off");
    let b_calls = Arc::new(Mutex::new(Vec::new()));
    cache
        .get_or_load(
            "b".into(),
            recording_loader(&b_calls, Some(2), long_stale()),
        )
        .await
        .expect("stale");
    spin().await;
    assert_eq!(b_calls.lock().unwrap().len(), 1, "b refreshes at once");
    assert_eq!(cache.get("b").expect("b").value, 2);
}

// Issue 4 §6: backoff "jittered" so that keys failing together do not retry together.
#[tokio::test(start_paused = true)]
async fn keys_failing_together_retry_at_different_times() {
    let cache: SwrCache<String, u32> = SwrCache::builder()
        .refresh_backoff(secs(10), secs(10))
        .circuit_breaker(0, secs(1))
        .build();
    let keys: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    for key in &keys {
        cache.insert(key.clone(), 1, long_stale());
    }
    advance(secs(2)).await;
    let calls: Vec<Arc<Mutex<Vec<Instant>>>> = keys
        .iter()
        .map(|_| Arc::new(Mutex::new(Vec::new())))
        .collect();
    let start = Instant::now();
    for _ in 0..120 {
        for (key, calls) in keys.iter().zip(&calls) {
            cache
                .get_or_load(key.clone(), recording_loader(calls, None, long_stale()))
                .await
                .expect("stale");
        }
        spin().await;
        advance(Duration::from_millis(100)).await;
    }
    let mut retries = std::collections::BTreeSet::new();
    for calls in &calls {
        let calls = calls.lock().unwrap();
        assert!(calls.len() >= 2, "every key retried within 12 s: {calls:?}");
        let retry = (calls[1] - start).as_millis();
        assert!((4_900..=10_200).contains(&retry), "retry after {retry} ms");
        retries.insert(retry / 100);
    }
    assert!(
        retries.len() >= 5,
        "20 keys retried at only {retries:?} (× 100 ms)"
    );
}

// Issue 4 §6: "after several consecutive failures across keys, a circuit breaker pauses
// refreshes for a cool-down" (stale keeps being served).
#[tokio::test(start_paused = true)]
async fn the_circuit_breaker_pauses_every_refresh_for_its_cooldown() {
    let cache: SwrCache<String, u32> = SwrCache::builder()
        .circuit_breaker(3, secs(30))
        .refresh_backoff(Duration::from_millis(10), Duration::from_millis(10))
        .build();
    for key in ["a", "b", "c", "d"] {
        cache.insert(key.into(), 1, long_stale());
    }
    advance(secs(2)).await;
    let failing = Arc::new(Mutex::new(Vec::new()));
    for key in ["a", "b", "c"] {
        assert!(!cache.stats().refreshes_paused);
        cache
            .get_or_load(key.into(), recording_loader(&failing, None, long_stale()))
            .await
            .expect("stale");
        spin().await;
    }
    assert_eq!(failing.lock().unwrap().len(), 3);
    assert!(cache.stats().refreshes_paused, "three failures in a row");
    let d = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..29 {
        let got = cache
            .get_or_load("d".into(), recording_loader(&d, Some(2), long_stale()))
            .await
            .expect("stale");
        assert_eq!((got.status, got.value), (Status::Stale, 1));
        spin().await;
        advance(secs(1)).await;
    }
    assert!(
        d.lock().unwrap().is_empty(),
        "no refresh during the cool-down"
    );
    advance(secs(2)).await;
    cache
        .get_or_load("d".into(), recording_loader(&d, Some(2), long_stale()))
        .await
        .expect("stale");
    spin().await;
    assert_eq!(d.lock().unwrap().len(), 1, "refreshes resume after 30 s");
    assert!(!cache.stats().refreshes_paused);
    assert_eq!(cache.get("d").expect("d").value, 2);
}

// Issue 4 §6: "after several *consecutive* failures": a success in between resets the count.
#[tokio::test(start_paused = true)]
async fn a_successful_refresh_resets_the_breakers_count_of_consecutive_failures() {
    let cache: SwrCache<String, u32> = SwrCache::builder().circuit_breaker(3, secs(30)).build();
    for key in ["a", "b", "c", "d", "e", "f"] {
        cache.insert(key.into(), 1, long_stale());
    }
    advance(secs(2)).await;
    let calls = Arc::new(Mutex::new(Vec::new()));
    for (key, ok) in [
        ("a", None),
        ("b", None),
        ("c", Some(2)),
        ("d", None),
        ("e", None),
    ] {
        cache
            .get_or_load(key.into(), recording_loader(&calls, ok, long_stale()))
            .await
            .expect("stale");
        spin().await;
    }
    assert!(!cache.stats().refreshes_paused, "{:#?}", cache.stats());
    let f = Arc::new(Mutex::new(Vec::new()));
    cache
        .get_or_load("f".into(), recording_loader(&f, Some(2), long_stale()))
        .await
        .expect("stale");
    spin().await;
    assert_eq!(f.lock().unwrap().len(), 1);
}

// Issue 4 §6 through HTTP: the default breaker (docs: 10 failures, 30 s) pauses the layer's
// refreshes while stale is served.
#[tokio::test(start_paused = true)]
async fn the_layers_default_breaker_opens_after_ten_failed_refreshes() {
    let mode = Mode::default();
    let (o, calls) = ops_origin(mode.clone());
    let layer = SwrLayer::new();
    let handle = layer.handle();
    let service = layer.layer(o);
    for i in 0..11 {
        status_and_body(&service, get(&format!("/k{i}"))).await;
    }
    advance(secs(11)).await;
    mode.set(UNAVAILABLE);
    for i in 0..10 {
        assert!(!handle.stats().refreshes_paused, "after {i} failures");
        status_and_body(&service, get(&format!("/k{i}"))).await;
        spin().await;
    }
    assert!(handle.stats().refreshes_paused);
    let before = calls.get();
    let (status, body) = status_and_body(&service, get("/k10")).await;
    assert_eq!((status, body), (CacheStatus::Stale, Bytes::from("v11")));
    spin().await;
    assert_eq!(calls.get(), before, "no refresh while the breaker is open");
}

// ---------------------------------------------------------------------------------------------
// 7. Desynchronised expiry: TTL jitter and XFetch
// ---------------------------------------------------------------------------------------------

// Issue 4 §7: "optional TTL jitter (± a fraction)".
#[tokio::test(start_paused = true)]
async fn ttl_jitter_spreads_fresh_lifetimes_on_both_sides_within_the_fraction() {
    let cache: SwrCache<String, u32> = SwrCache::builder().ttl_jitter(0.2).build();
    let mut ttls = Vec::new();
    for i in 0..60 {
        let key = format!("k{i}");
        cache
            .get_or_load(key.clone(), || async {
                Ok::<_, String>(Loaded::new(1, Freshness::new(secs(100))))
            })
            .await
            .expect("loaded");
        let lifetime: Lifetime = cache.lifetime(&key).expect("stored");
        let ttl = lifetime
            .fresh_until
            .duration_since(lifetime.stored_at)
            .expect("after")
            .as_secs_f64();
        assert!((80.0 - 1e-3..=120.0 + 1e-3).contains(&ttl), "{ttl}");
        ttls.push(ttl);
    }
    assert!(ttls.iter().any(|t| *t < 99.0), "some shorter: {ttls:?}");
    assert!(ttls.iter().any(|t| *t > 101.0), "some longer: {ttls:?}");
}

// Issue 4 §7: jitter is optional: off by default, every lifetime exact.
#[tokio::test(start_paused = true)]
async fn without_ttl_jitter_keys_stored_together_expire_together() {
    let cache: SwrCache<String, u32> = SwrCache::builder().build();
    for i in 0..20 {
        cache
            .get_or_load(format!("k{i}"), || async {
                Ok::<_, String>(Loaded::new(1, Freshness::new(secs(100))))
            })
            .await
            .expect("loaded");
    }
    for i in 0..20 {
        let lifetime = cache.lifetime(&format!("k{i}")).expect("stored");
        let ttl = lifetime
            .fresh_until
            .duration_since(lifetime.stored_at)
            .expect("after");
        assert_eq!(ttl, secs(100));
    }
}

// Issue 4 §7 through HTTP: "so popular keys stored together do not expire together".
#[tokio::test(start_paused = true)]
async fn layer_ttl_jitter_keeps_every_key_within_the_fraction_of_max_age() {
    let (o, _) = origin(|n, _| async move { Ok(reply_cc(format!("v{n}"), "max-age=100")) });
    let service = SwrLayer::new().ttl_jitter(0.5).layer(o);
    let mut ttls = Vec::new();
    for i in 0..30 {
        status_and_body(&service, get(&format!("/j{i}"))).await;
        let response = service
            .clone()
            .oneshot(get(&format!("/j{i}")))
            .await
            .expect("hit");
        assert_eq!(info(&response).status, CacheStatus::Fresh);
        ttls.push(ttl_param(&response));
    }
    assert!(ttls.iter().all(|t| (49..=150).contains(t)), "{ttls:?}");
    assert!(
        ttls.iter().any(|t| *t < 95) && ttls.iter().any(|t| *t > 105),
        "{ttls:?}"
    );
}

// Issue 4 §7: "probabilistic early refresh (XFetch: refresh a fresh entry early with
// probability rising as expiry nears, β configurable)".
#[tokio::test(start_paused = true)]
async fn early_refresh_refreshes_a_fresh_entry_near_expiry_but_not_far_from_it() {
    let cache: SwrCache<String, u32> = SwrCache::builder().early_refresh(1.0).build();
    let freshness = Freshness::new(secs(100)).with_stale_while_revalidate(secs(100));
    let loaded = Loaded::new(1, freshness).with_load_time(secs(1));
    cache
        .get_or_load("k".into(), move || async move { Ok::<_, String>(loaded) })
        .await
        .expect("loaded");
    let calls = Arc::new(Mutex::new(Vec::new()));
    // 90 s before expiry with a 1 s load: -ln(U) ≥ 90 never happens in practice.
    for _ in 0..50 {
        let got = cache
            .get_or_load("k".into(), recording_loader(&calls, Some(2), freshness))
            .await
            .expect("fresh");
        assert_eq!(got.status, Status::Fresh);
        spin().await;
    }
    assert!(
        calls.lock().unwrap().is_empty(),
        "no early refresh far from expiry"
    );
    advance(Duration::from_millis(99_990)).await; // 10 ms left: -ln(U) ≥ 0.01 is ~99 %
    for _ in 0..20 {
        let got = cache
            .get_or_load("k".into(), recording_loader(&calls, Some(2), freshness))
            .await
            .expect("fresh");
        assert!(matches!(got.status, Status::Fresh), "{:?}", got.status);
        spin().await;
        if !calls.lock().unwrap().is_empty() {
            break;
        }
    }
    assert_eq!(
        calls.lock().unwrap().len(),
        1,
        "one early refresh before expiry"
    );
    assert_eq!(cache.get("k").expect("k").value, 2);
    assert_eq!(cache.stats().refreshes_started, 1);
}

// Issue 4 §7: early refresh is optional: off by default.
#[tokio::test(start_paused = true)]
async fn without_early_refresh_a_fresh_entry_never_refreshes() {
    let cache: SwrCache<String, u32> = SwrCache::builder().build();
    let freshness = Freshness::new(secs(100)).with_stale_while_revalidate(secs(100));
    let loaded = Loaded::new(1, freshness).with_load_time(secs(1000));
    cache
        .get_or_load("k".into(), move || async move { Ok::<_, String>(loaded) })
        .await
        .expect("loaded");
    advance(Duration::from_millis(99_900)).await;
    let calls = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..50 {
        cache
            .get_or_load("k".into(), recording_loader(&calls, Some(2), freshness))
            .await
            .expect("fresh");
        spin().await;
    }
    assert!(calls.lock().unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// 8. The engine without HTTP (issue 13 §1, §3)
// ---------------------------------------------------------------------------------------------

// Issue 13 §1: the engine "coalesces misses".
#[tokio::test(start_paused = true)]
async fn engine_concurrent_misses_make_one_load_and_share_its_value() {
    let cache: SwrCache<String, u32> = SwrCache::builder().build();
    let loads = Arc::new(AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (cache, loads) = (cache.clone(), loads.clone());
        set.spawn(async move {
            cache
                .get_or_load("k".into(), move || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(secs(1)).await;
                    Ok::<_, String>(Loaded::new(7, Freshness::new(secs(60))))
                })
                .await
                .expect("loaded")
        });
    }
    let mut statuses = Vec::new();
    while let Some(got) = set.join_next().await {
        let got = got.expect("task");
        assert_eq!(got.value, 7);
        statuses.push(got.status);
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    assert_eq!(statuses.iter().filter(|s| **s == Status::Miss).count(), 1);
    assert_eq!(
        statuses.iter().filter(|s| **s == Status::Collapsed).count(),
        19
    );
    let stats = cache.stats();
    assert_eq!((stats.misses, stats.collapsed), (1, 19));
}

// Issue 13 §1: the engine alone "runs the ONE background refresh per key".
#[tokio::test(start_paused = true)]
async fn engine_stale_lookups_answer_at_once_with_one_background_refresh() {
    let cache: SwrCache<String, u32> = SwrCache::builder().build();
    let freshness = Freshness::new(secs(10)).with_stale_while_revalidate(secs(20));
    cache.insert("k".into(), 1, freshness);
    advance(secs(11)).await;
    let loads = Arc::new(AtomicUsize::new(0));
    for _ in 0..10 {
        let loads = loads.clone();
        let started = Instant::now();
        let got = cache
            .get_or_load("k".into(), move || async move {
                loads.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(secs(1)).await;
                Ok::<_, String>(Loaded::new(2, freshness))
            })
            .await
            .expect("stale");
        assert_eq!(started.elapsed(), Duration::ZERO, "answered at once");
        assert_eq!((got.status, got.value), (Status::Stale, 1));
        spin().await;
        assert!(cache.is_refreshing("k"));
    }
    advance(secs(1)).await;
    spin().await;
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    let got = cache.get("k").expect("k");
    assert_eq!((got.status, got.value), (Status::Fresh, 2));
    assert_eq!(cache.stats().stale_hits, 10);
}

// Issue 13 §1: the engine "applies stale-if-error".
#[tokio::test(start_paused = true)]
async fn engine_serves_the_old_value_inside_stale_if_error_and_the_error_after_it() {
    let cache: SwrCache<String, u32> = SwrCache::builder()
        .remember_failures(Duration::ZERO)
        .build();
    let freshness = Freshness::new(secs(10)).with_stale_if_error(secs(100));
    cache.insert("k".into(), 1, freshness);
    advance(secs(50)).await;
    let failing = || async { Err::<Loaded<u32>, _>("db down".to_string()) };
    let got = cache
        .get_or_load("k".into(), failing)
        .await
        .expect("stale-if-error");
    assert_eq!((got.status, got.value), (Status::StaleIfError, 1));
    assert!(got.is_stale());
    advance(secs(61)).await; // 121 s: past ttl + stale_if_error
    let error = cache
        .get_or_load("k".into(), failing)
        .await
        .expect_err("nothing usable");
    assert_eq!(*error, "db down");
    let stats = cache.stats();
    assert_eq!(
        (stats.stale_if_error, stats.loads_failed),
        (1, 2),
        "{stats:#?}"
    );
}

// Issue 13 §3: "The engine API gets the same behaviour for loaders": one failing load per
// cold key, its error shared (`Arc<E>`), then remembered "for a short configurable while
// (default about 1 s ...)".
#[tokio::test(start_paused = true)]
async fn engine_cold_failure_is_one_load_shared_by_every_caller_then_remembered_for_1_s() {
    let cache: SwrCache<String, u32> = SwrCache::builder().build();
    let loads = Arc::new(AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    let started = Instant::now();
    for _ in 0..30 {
        let (cache, loads) = (cache.clone(), loads.clone());
        set.spawn(async move {
            let result = cache
                .get_or_load("cold".into(), move || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(secs(1)).await;
                    Err::<Loaded<u32>, _>("db down".to_string())
                })
                .await;
            (result.expect_err("the load's error"), Instant::now())
        });
    }
    let mut errors = Vec::new();
    while let Some(done) = set.join_next().await {
        let (error, at) = done.expect("task");
        assert!(
            at - started <= Duration::from_millis(1100),
            "{:?}",
            at - started
        );
        errors.push(error);
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    assert!(errors
        .iter()
        .all(|e| Arc::ptr_eq(e, &errors[0]) && **e == "db down"));
    // Remembered: answered at once, the loader not called.
    advance(Duration::from_millis(500)).await;
    let again = cache
        .get_or_load("cold".into(), || async {
            Err::<Loaded<u32>, _>("called".to_string())
        })
        .await
        .expect_err("remembered");
    assert_eq!(*again, "db down");
    assert_eq!(cache.stats().failure_hits, 1);
    // Past the while, the loader is asked again.
    advance(Duration::from_millis(600)).await;
    let fresh = Freshness::new(secs(60));
    let got = cache
        .get_or_load("cold".into(), move || async move {
            Ok::<_, String>(Loaded::new(3, fresh))
        })
        .await
        .expect("loaded");
    assert_eq!((got.status, got.value), (Status::Miss, 3));
}

// Issue 13 §3: "zero turns it off".
#[tokio::test(start_paused = true)]
async fn engine_remember_failures_zero_asks_the_loader_every_time() {
    let cache: SwrCache<String, u32> = SwrCache::builder()
        .remember_failures(Duration::ZERO)
        .build();
    let loads = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        let loads = loads.clone();
        let error = cache
            .get_or_load("k".into(), move || async move {
                loads.fetch_add(1, Ordering::SeqCst);
                Err::<Loaded<u32>, _>("down".to_string())
            })
            .await
            .expect_err("fails");
        assert_eq!(*error, "down");
    }
    assert_eq!(loads.load(Ordering::SeqCst), 3);
    assert_eq!(cache.stats().failure_hits, 0);
}

// Issue 13 §3: "stale-if-error entries still win over it".
#[tokio::test(start_paused = true)]
async fn engine_a_stale_if_error_value_wins_over_a_remembered_failure() {
    let cache: SwrCache<String, u32> = SwrCache::builder().build();
    let freshness = Freshness::new(secs(10)).with_stale_if_error(secs(100));
    cache.insert("k".into(), 1, freshness);
    advance(secs(20)).await;
    for _ in 0..3 {
        let got = cache
            .get_or_load("k".into(), || async {
                Err::<Loaded<u32>, _>("down".to_string())
            })
            .await
            .expect("stale-if-error wins");
        assert_eq!((got.status, got.value), (Status::StaleIfError, 1));
    }
    assert_eq!(cache.stats().failure_hits, 0);
}

// Issue 13 §6 for the engine docs: "A load of `key` under way when this is called stores
// nothing: the inserted value wins."
#[tokio::test(start_paused = true)]
async fn engine_insert_wins_over_a_load_under_way() {
    let cache: SwrCache<String, u32> = SwrCache::builder().build();
    let loading = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get_or_load("k".into(), || async {
                    tokio::time::sleep(secs(1)).await;
                    Ok::<_, String>(Loaded::new(1, Freshness::new(secs(60))))
                })
                .await
                .expect("loaded")
        })
    };
    spin().await;
    assert!(cache.insert("k".into(), 2, Freshness::new(secs(60))));
    advance(secs(1)).await;
    loading.await.expect("task");
    assert_eq!(cache.get("k").expect("k").value, 2);
    let got = cache
        .get_or_load("k".into(), || async {
            Err::<Loaded<u32>, _>("no".to_string())
        })
        .await
        .expect("fresh");
    assert_eq!((got.status, got.value), (Status::Fresh, 2));
}

// ---------------------------------------------------------------------------------------------
// 9. The storage seam (issue 13 §2)
// ---------------------------------------------------------------------------------------------

/// A tier of our own: only the three required methods, a map in memory, and a switch that
/// makes reads hang.
#[derive(Default)]
struct Shelf {
    map: Mutex<std::collections::HashMap<String, (u32, Lifetime)>>,
    hang: std::sync::atomic::AtomicBool,
    gets: AtomicUsize,
}

impl SharedTier<String, u32> for Shelf {
    fn get<'a>(&'a self, key: &'a String) -> TierFuture<'a, Option<(u32, Lifetime)>> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        let found = self.map.lock().unwrap().get(key).copied();
        let hang = self.hang.load(Ordering::SeqCst);
        Box::pin(async move {
            if hang {
                std::future::pending::<()>().await;
            }
            found
        })
    }
    fn put<'a>(
        &'a self,
        key: &'a String,
        value: &'a u32,
        lifetime: &'a Lifetime,
    ) -> TierFuture<'a, ()> {
        self.map
            .lock()
            .unwrap()
            .insert(key.clone(), (*value, *lifetime));
        Box::pin(async {})
    }
    fn remove<'a>(&'a self, key: &'a String) -> TierFuture<'a, ()> {
        self.map.lock().unwrap().remove(key);
        Box::pin(async {})
    }
}

// Issue 13 §2: "The seam must admit an asynchronous second tier consulted on an L1 miss";
// "Entries carry wall-clock stored-at and absolute deadlines at the seam".
#[tokio::test(start_paused = true)]
async fn a_custom_tier_shares_one_load_between_two_caches_with_wall_clock_lifetimes() {
    let shelf = Arc::new(Shelf::default());
    let one: SwrCache<String, u32> = SwrCache::builder().shared_tier(shelf.clone()).build();
    let two: SwrCache<String, u32> = SwrCache::builder().shared_tier(shelf.clone()).build();
    let before = SystemTime::now();
    let freshness = Freshness::new(secs(60)).with_stale_while_revalidate(secs(30));
    let got = one
        .get_or_load("rate".into(), move || async move {
            Ok::<_, String>(Loaded::new(7, freshness))
        })
        .await
        .expect("loaded");
    assert_eq!(got.status, Status::Miss);
    spin().await; // the write to the tier is detached
    let (value, lifetime) = *shelf
        .map
        .lock()
        .unwrap()
        .get("rate")
        .expect("written to the tier");
    assert_eq!(value, 7);
    let after = SystemTime::now();
    assert!(lifetime.stored_at >= before - secs(1) && lifetime.stored_at <= after + secs(1));
    assert_eq!(
        lifetime.fresh_until.duration_since(lifetime.stored_at).ok(),
        Some(secs(60))
    );
    assert_eq!(
        lifetime.stale_until.duration_since(lifetime.stored_at).ok(),
        Some(secs(90))
    );
    let got = two
        .get_or_load("rate".into(), || async {
            Err::<Loaded<u32>, _>("not called".to_string())
        })
        .await
        .expect("from the tier");
    assert_eq!((got.status, got.value), (Status::SharedTier, 7));
    assert_eq!(two.stats().shared_tier_hits, 1);
    // Now in two's memory: a fresh hit does not reach the tier.
    let gets = shelf.gets.load(Ordering::SeqCst);
    let got = two
        .get_or_load("rate".into(), || async {
            Err::<Loaded<u32>, _>("not called".to_string())
        })
        .await
        .expect("fresh");
    assert_eq!(got.status, Status::Fresh);
    assert_eq!(
        shelf.gets.load(Ordering::SeqCst),
        gets,
        "a fresh hit never reaches the tier"
    );
}

// Issue 13 §2: the tier is consulted on a "stale entry" too: a stale lookup takes another
// cache's fresher copy instead of loading. (The tier's deadlines are wall-clock times, which a
// paused tokio clock does not move: the stale copy here is one given with past deadlines.)
#[tokio::test(start_paused = true)]
async fn a_stale_entry_takes_a_fresher_tier_copy_instead_of_loading() {
    let shelf = Arc::new(Shelf::default());
    let one: SwrCache<String, u32> = SwrCache::builder().shared_tier(shelf.clone()).build();
    let two: SwrCache<String, u32> = SwrCache::builder().shared_tier(shelf.clone()).build();
    let now = SystemTime::now();
    let stale = Lifetime {
        stored_at: now - secs(20),
        initial_age: Duration::ZERO,
        fresh_until: now - secs(10),
        stale_until: now + secs(100),
        error_until: now + secs(100),
        retain_until: now + secs(100),
        load_time: Duration::ZERO,
    };
    assert!(two.insert_with_lifetime("k".into(), 1, stale));
    assert_eq!(two.get("k").expect("k").status, Status::Stale);
    advance(secs(1)).await;
    let freshness = Freshness::new(secs(60)).with_stale_while_revalidate(secs(100));
    one.get_or_load("k".into(), move || async move {
        Ok::<_, String>(Loaded::new(2, freshness))
    })
    .await
    .expect("loaded");
    spin().await;
    assert!(shelf.map.lock().unwrap().contains_key("k"));
    let loads = Arc::new(AtomicUsize::new(0));
    let counted = {
        let loads = loads.clone();
        move || async move {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(Loaded::new(3, freshness))
        }
    };
    let got = two
        .get_or_load("k".into(), counted)
        .await
        .expect("answered");
    assert!(
        matches!(got.status, Status::Stale | Status::SharedTier),
        "{:?}",
        got.status
    );
    spin().await;
    assert_eq!(
        loads.load(Ordering::SeqCst),
        0,
        "the tier's fresher copy, not a load"
    );
    assert_eq!(two.get("k").expect("k").value, 2);
}

// Issue 13 §2 with the docs: "A shared tier never fails a lookup ... The engine also bounds
// every call by `shared_tier_timeout`" (default 50 ms).
#[tokio::test(start_paused = true)]
async fn a_hanging_tier_costs_its_timeout_and_the_loader_answers() {
    let shelf = Arc::new(Shelf::default());
    shelf.hang.store(true, Ordering::SeqCst);
    let cache: SwrCache<String, u32> = SwrCache::builder().shared_tier(shelf.clone()).build();
    let started = Instant::now();
    let got = cache
        .get_or_load("k".into(), || async {
            Ok::<_, String>(Loaded::new(5, Freshness::new(secs(60))))
        })
        .await
        .expect("loaded without the tier");
    let took = started.elapsed();
    assert_eq!((got.status, got.value), (Status::Miss, 5));
    assert!(
        took >= Duration::from_millis(50) && took < Duration::from_millis(200),
        "{took:?}"
    );
}

// Issue 13 §2: "Entries carry wall-clock stored-at and absolute deadlines at the seam": a
// value from elsewhere with its own lifetime is kept as long as it says, and refused when
// every deadline has passed.
#[tokio::test(start_paused = true)]
async fn insert_with_lifetime_keeps_the_deadlines_given_and_refuses_dead_ones() {
    let cache: SwrCache<String, u32> = SwrCache::builder().build();
    let now = SystemTime::now();
    let alive = Lifetime {
        stored_at: now - secs(5),
        initial_age: Duration::ZERO,
        fresh_until: now + secs(5),
        stale_until: now + secs(20),
        error_until: now + secs(20),
        retain_until: now + secs(20),
        load_time: Duration::ZERO,
    };
    assert!(cache.insert_with_lifetime("alive".into(), 1, alive));
    let got = cache.get("alive").expect("stored");
    assert_eq!(got.status, Status::Fresh);
    assert!(got.age >= secs(5) && got.age < secs(6), "{:?}", got.age);
    advance(secs(6)).await;
    assert_eq!(cache.get("alive").expect("stale").status, Status::Stale);
    let dead = Lifetime {
        stored_at: now - secs(100),
        fresh_until: now - secs(50),
        stale_until: now - secs(40),
        error_until: now - secs(40),
        retain_until: now - secs(40),
        ..alive
    };
    assert!(!cache.insert_with_lifetime("dead".into(), 1, dead));
    assert!(cache.get("dead").is_none());
}

// ---------------------------------------------------------------------------------------------
// 10. Shared failures through HTTP (issue 13 §3)
// ---------------------------------------------------------------------------------------------

// Issue 13 §3: "Wanted: 1 origin call, all 30 answered with the origin's 503 (status, headers,
// body) at about 1 s."
#[tokio::test(start_paused = true)]
async fn thirty_cold_requests_to_a_failing_origin_make_one_call_and_all_get_its_503() {
    let (o, calls) = origin(|_, _| async {
        tokio::time::sleep(secs(1)).await;
        let response = reply_status(StatusCode::SERVICE_UNAVAILABLE, "maintenance");
        Ok(with_header(
            response,
            HeaderName::from_static("x-origin"),
            "db",
        ))
    });
    let service = SwrLayer::new().layer(o);
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..30 {
        let service = service.clone();
        set.spawn(async move {
            let response = service.oneshot(get("/cold")).await.expect("answered");
            let at = Instant::now();
            let status = response.status();
            let origin = header_value(&response, "x-origin");
            (status, origin, body(response).await.expect("body"), at)
        });
    }
    while let Some(done) = set.join_next().await {
        let (status, origin, body, at) = done.expect("task");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(origin.as_deref(), Some("db"));
        assert_eq!(body, Bytes::from("maintenance"));
        assert!(
            at - started <= Duration::from_millis(1100),
            "{:?}",
            at - started
        );
    }
    assert_eq!(calls.get(), 1);
}

// Issue 13 §3: "After such a failure the key answers with the same failure, without calling
// the origin, for a short configurable while (default about 1 s; zero turns it off), marked in
// `Cache-Status`".
#[tokio::test(start_paused = true)]
async fn a_failure_is_remembered_for_about_1_s_and_marked_in_cache_status() {
    let mode = Mode::default();
    mode.set(UNAVAILABLE);
    let (o, calls) = ops_origin(mode.clone());
    let service = SwrLayer::new().layer(o);
    let first = service.clone().oneshot(get("/f")).await.expect("answered");
    assert_eq!(first.status(), StatusCode::SERVICE_UNAVAILABLE);
    advance(Duration::from_millis(500)).await;
    let again = service.clone().oneshot(get("/f")).await.expect("answered");
    assert_eq!(again.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(info(&again).status, CacheStatus::FailureHit);
    assert!(
        cache_status(&again).contains("detail=failure"),
        "{}",
        cache_status(&again)
    );
    assert_eq!(body(again).await.expect("body"), Bytes::from("down"));
    assert_eq!(calls.get(), 1);
    advance(Duration::from_millis(600)).await;
    mode.set(OK);
    let (status, body) = status_and_body(&service, get("/f")).await;
    assert_eq!((status, body), (CacheStatus::Miss, Bytes::from("v2")));
}

// Issue 13 §3: "zero turns it off".
#[tokio::test(start_paused = true)]
async fn remember_failures_zero_sends_every_request_to_the_origin() {
    let mode = Mode::default();
    mode.set(UNAVAILABLE);
    let (o, calls) = ops_origin(mode.clone());
    let service = SwrLayer::new().remember_failures(Duration::ZERO).layer(o);
    for _ in 0..3 {
        let (status, _) = status_and_body(&service, get("/f")).await;
        assert_eq!(status, CacheStatus::Miss);
    }
    assert_eq!(calls.get(), 3);
}

// Issue 13 §3: "stale-if-error entries still win over it".
#[tokio::test(start_paused = true)]
async fn a_stale_if_error_entry_wins_over_a_remembered_failure() {
    let mode = Mode::default();
    let (o, _) = ops_origin(mode.clone());
    let layer = SwrLayer::new();
    let handle = layer.handle();
    let service = layer.layer(o);
    status_and_body(&service, get("/s")).await;
    advance(secs(40)).await;
    mode.set(UNAVAILABLE);
    for _ in 0..3 {
        let (status, body) = status_and_body(&service, get("/s")).await;
        assert_eq!(
            (status, body),
            (CacheStatus::StaleIfError, Bytes::from("v1"))
        );
    }
    assert_eq!(handle.stats().failure_hits, 0);
}

// ---------------------------------------------------------------------------------------------
// 11. Opt-in headers, per-route policy, configuration as a value (issue 4 §8–9, issue 13 §4)
// ---------------------------------------------------------------------------------------------

// Issue 4 §9: "`X-Cache: HIT|STALE|MISS|BYPASS`, and `X-Cache-Key` (off by default: it reveals
// keys)".
#[tokio::test(start_paused = true)]
async fn x_cache_is_opt_in_and_says_hit_stale_miss_or_bypass() {
    let (o, _) = ops_origin(Mode::default());
    let plain = SwrLayer::new().layer(o.clone());
    let response = plain.clone().oneshot(get("/x")).await.expect("answered");
    assert!(response.headers().get(&X_CACHE).is_none());
    assert!(
        response.headers().get(&X_CACHE_KEY).is_none(),
        "off by default"
    );
    let service = SwrLayer::new().x_cache_header(true).layer(o);
    let x = |response: &Answer| header_value(response, &X_CACHE);
    let miss = service.clone().oneshot(get("/x")).await.expect("answered");
    assert_eq!(x(&miss).as_deref(), Some("MISS"));
    assert!(miss.headers().get(&X_CACHE_KEY).is_none());
    let hit = service.clone().oneshot(get("/x")).await.expect("answered");
    assert_eq!(x(&hit).as_deref(), Some("HIT"));
    let bypass = service
        .clone()
        .oneshot(request(Method::POST, "/y"))
        .await
        .expect("answered");
    assert_eq!(x(&bypass).as_deref(), Some("BYPASS"));
    advance(secs(11)).await;
    let stale = service.clone().oneshot(get("/x")).await.expect("answered");
    assert_eq!(x(&stale).as_deref(), Some("STALE"));
}

// Issue 4 §9: `X-Cache-Key` when turned on.
#[tokio::test(start_paused = true)]
async fn x_cache_key_when_enabled_names_the_key() {
    let (o, _) = ops_origin(Mode::default());
    let service = SwrLayer::new().x_cache_key_header(true).layer(o);
    let response = service
        .clone()
        .oneshot(get("/keyed?a=1"))
        .await
        .expect("answered");
    let key = header_value(&response, &X_CACHE_KEY).expect("an X-Cache-Key");
    assert!(key.contains("/keyed?a=1"), "{key}");
    let hit = service
        .clone()
        .oneshot(get("/keyed?a=1"))
        .await
        .expect("answered");
    assert_eq!(header_value(&hit, &X_CACHE_KEY), Some(key));
}

// Issue 4 §8: "both by one layer per route sharing one memory budget".
#[tokio::test(start_paused = true)]
async fn layers_per_route_share_one_budget_and_keep_their_own_ttls_and_purges() {
    let (o, _) = origin(|n, _| async move { Ok(reply(format!("v{n}"))) });
    let budget = SwrLayer::new().capacity_bytes(1 << 20);
    let short_layer = SwrLayer::new().ttl(secs(5)).share_memory_with(&budget);
    let long_layer = SwrLayer::new().ttl(secs(500)).share_memory_with(&budget);
    let (short_handle, long_handle) = (short_layer.handle(), long_layer.handle());
    let short = short_layer.layer(o.clone());
    let long = long_layer.layer(o);
    status_and_body(&short, get("/same")).await;
    status_and_body(&long, get("/same")).await;
    assert_eq!(short_handle.stats().capacity_bytes, 1 << 20);
    assert_eq!(long_handle.stats().capacity_bytes, 1 << 20);
    assert_eq!(budget.stats().entries, 2, "one budget holds both");
    advance(secs(6)).await;
    assert_eq!(
        status_and_body(&short, get("/same")).await.0,
        CacheStatus::Stale
    );
    assert_eq!(
        status_and_body(&long, get("/same")).await.0,
        CacheStatus::Fresh
    );
    spin().await;
    assert_eq!(short_handle.purge("/same"), 1, "its own entry only");
    assert_eq!(
        status_and_body(&long, get("/same")).await.0,
        CacheStatus::Fresh
    );
}

// Issue 4 §8: "and by a policy function of request and response".
#[tokio::test(start_paused = true)]
async fn a_policy_function_gives_each_route_its_lifetimes() {
    let (o, _) = origin(|n, _| async move { Ok(reply_cc(format!("v{n}"), "max-age=1000")) });
    let service = SwrLayer::new()
        .policy_fn(|request, _response| match request.uri.path() {
            "/days" => {
                Some(Freshness::new(secs(6 * 86_400)).with_stale_while_revalidate(secs(86_400)))
            }
            "/hour" => Some(Freshness::new(secs(3600))),
            _ => None,
        })
        .layer(o);
    for uri in ["/days", "/hour", "/other"] {
        status_and_body(&service, get(uri)).await;
    }
    advance(secs(3601)).await;
    assert_eq!(
        status_and_body(&service, get("/days")).await.0,
        CacheStatus::Fresh
    );
    assert_eq!(
        status_and_body(&service, get("/hour")).await.0,
        CacheStatus::Miss
    );
    assert_ne!(
        status_and_body(&service, get("/other")).await.0,
        CacheStatus::Fresh
    );
    advance(secs(6 * 86_400)).await;
    assert_eq!(
        status_and_body(&service, get("/days")).await.0,
        CacheStatus::Stale
    );
}

// Issue 13 §4: "`let h = layer.handle(); let layer = layer.ttl(..)` leaves `h` attached to a
// cache that never serves ... Make that impossible or harmless".
#[tokio::test(start_paused = true)]
async fn a_handle_taken_before_more_settings_still_purges_the_serving_cache() {
    let (o, _) = ops_origin(Mode::default());
    let layer = SwrLayer::new();
    let early = layer.handle();
    let layer = layer
        .ttl(secs(5))
        .x_cache_header(true)
        .capacity_bytes(1 << 20)
        .refresh_timeout(secs(3));
    let service = layer.layer(o);
    status_and_body(&service, get("/early")).await;
    assert_eq!(
        early.stats().entries,
        1,
        "the handle sees the serving cache"
    );
    assert_eq!(early.purge("/early"), 1);
    assert_eq!(
        status_and_body(&service, get("/early")).await.0,
        CacheStatus::Miss
    );
}

// Issue 13 §2: "keys have a stable byte encoding (a layer's namespace by name, not by
// construction order)".
#[tokio::test(start_paused = true)]
async fn key_bytes_depend_on_the_layers_name_not_the_order_layers_were_made() {
    async fn bytes_of(first: &str, second: &str) -> BTreeMap<String, Vec<Vec<u8>>> {
        let (o, _) = ops_origin(Mode::default());
        let budget = SwrLayer::new();
        let mut out = BTreeMap::new();
        for name in [first, second] {
            let layer = SwrLayer::new().cache_name(name).share_memory_with(&budget);
            let service = layer.clone().layer(o.clone());
            status_and_body(&service, get("/k")).await;
            let keys = Mutex::new(Vec::new());
            layer.handle().purge_if(|key| {
                keys.lock().unwrap().push(key.to_bytes());
                false
            });
            out.insert(name.to_owned(), keys.into_inner().unwrap());
        }
        out
    }
    let one = bytes_of("alpha", "beta").await;
    let two = bytes_of("beta", "alpha").await;
    assert_eq!(one["alpha"].len(), 1, "{one:?}");
    assert_eq!(one["beta"].len(), 1, "{one:?}");
    assert_eq!(one, two);
    assert_ne!(one["alpha"], one["beta"]);
}

// ---------------------------------------------------------------------------------------------
// 12. More of what the logs and failures promise
// ---------------------------------------------------------------------------------------------

// README (Operations, Logs): "`warn` ... when a refresh fails or times out".
#[tokio::test(start_paused = true)]
async fn failed_and_timed_out_refreshes_log_warnings_naming_their_key() {
    let events = Events::default();
    let _collecting = events.install();
    let mode = Mode::default();
    let (o, _) = ops_origin(mode.clone());
    let service = SwrLayer::new().refresh_timeout(secs(5)).layer(o);
    status_and_body(&service, get("/fails")).await;
    status_and_body(&service, get("/times-out")).await;
    advance(secs(11)).await;
    let about = |what: &str| {
        events
            .at(tracing::Level::WARN)
            .into_iter()
            .filter(|e| e.fields.values().any(|v| v.contains(what)))
            .count()
    };
    mode.set(UNAVAILABLE);
    status_and_body(&service, get("/fails")).await;
    spin().await;
    assert_eq!(about("/fails"), 1, "{:#?}", events.0.lock().unwrap());
    mode.set(HANG);
    status_and_body(&service, get("/times-out")).await;
    spin().await;
    assert_eq!(about("/times-out"), 0, "still running");
    advance(secs(6)).await;
    spin().await;
    assert_eq!(about("/times-out"), 1, "{:#?}", events.0.lock().unwrap());
}

// Issue 4 §3 with the docs of `stale_alert_age`: the alert also covers "standing in for a
// failing origin (stale-if-error, the outage case)".
#[tokio::test(start_paused = true)]
async fn the_stale_alert_also_fires_for_stale_if_error_answers() {
    let events = Events::default();
    let _collecting = events.install();
    let mode = Mode::default();
    let (o, _) = ops_origin(mode.clone());
    let service = SwrLayer::new().stale_alert_age(secs(60)).layer(o);
    status_and_body(&service, get("/outage")).await;
    advance(secs(100)).await;
    mode.set(ERROR);
    let before = events.at(tracing::Level::WARN).len();
    let (status, _) = status_and_body(&service, get("/outage")).await;
    assert_eq!(status, CacheStatus::StaleIfError);
    let warns = events.at(tracing::Level::WARN);
    // One warning because the origin failed, one because the answer is older than 60 s.
    assert_eq!(warns.len() - before, 2, "{warns:#?}");
}

// CHANGELOG: the engine's "log events ... carry the cache's name ... every warning and error
// now has `cache = <name>`".
#[tokio::test(start_paused = true)]
async fn engine_warnings_carry_the_cache_name() {
    let events = Events::default();
    let _collecting = events.install();
    let cache: SwrCache<String, u32> = SwrCache::builder().name("judges").build();
    let freshness = Freshness::new(secs(10)).with_stale_if_error(secs(100));
    cache.insert("en".into(), 1, freshness);
    advance(secs(20)).await;
    let got = cache
        .get_or_load("en".into(), || async {
            Err::<Loaded<u32>, _>("db down".to_string())
        })
        .await
        .expect("stale-if-error");
    assert_eq!(got.status, Status::StaleIfError);
    let warns = events.at(tracing::Level::WARN);
    assert!(!warns.is_empty());
    for warn in &warns {
        assert_eq!(
            warn.fields.get("cache").map(String::as_str),
            Some("judges"),
            "{warn:?}"
        );
    }
}

// Issue 13 §3: "A transport error that cannot be cloned is shared in the way the engine
// documents"; README: the requests that waited get "a `502`, `detail=origin-error`", from one
// origin call.
#[tokio::test(start_paused = true)]
async fn waiters_of_a_failing_origin_call_share_it_as_a_502() {
    let (o, calls) = origin(|_, _| async {
        tokio::time::sleep(secs(1)).await;
        Err::<Reply, BoxError>("connection refused".into())
    });
    let service = SwrLayer::new().layer(o);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..5 {
        let service = service.clone();
        set.spawn(async move {
            match service.oneshot(get("/down")).await {
                Ok(response) => Ok((response.status(), cache_status(&response))),
                Err(error) => Err(error.to_string()),
            }
        });
    }
    let (mut errors, mut shared) = (0, 0);
    while let Some(done) = set.join_next().await {
        match done.expect("task") {
            Err(error) => {
                assert!(error.contains("connection refused"), "{error}");
                errors += 1;
            }
            Ok((status, cache_status)) => {
                assert_eq!(status, StatusCode::BAD_GATEWAY);
                assert!(
                    cache_status.contains("detail=origin-error"),
                    "{cache_status}"
                );
                shared += 1;
            }
        }
    }
    assert_eq!((errors, shared), (1, 4));
    assert_eq!(calls.get(), 1);
}

// ---------------------------------------------------------------------------------------------
// 13. Allocations on the hit path
// ---------------------------------------------------------------------------------------------

/// Counts the allocations made on the current thread while `COUNTING` is on there.
struct CountingAllocator;

thread_local! {
    static COUNTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static ALLOCATIONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

// SAFETY-free: delegates to the system allocator; the counters are const-initialised
// thread-locals (no allocation of their own).
unsafe impl std::alloc::GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if COUNTING.try_with(|c| c.get()).unwrap_or(false) {
            let _ = ALLOCATIONS.try_with(|a| a.set(a.get() + 1));
        }
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, size: usize) -> *mut u8 {
        if COUNTING.try_with(|c| c.get()).unwrap_or(false) {
            let _ = ALLOCATIONS.try_with(|a| a.set(a.get() + 1));
        }
        unsafe { std::alloc::System.realloc(ptr, layout, size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// How many allocations one fresh hit makes inside the layer's `call` and response future,
/// the request built beforehand: with a subscriber on this thread that takes `info` and above
/// (`debug` disabled), or with none at all.
async fn allocations_of_a_hit(cache_info_extension: bool, info_subscriber: bool) -> usize {
    use tower::Service;
    use tracing_subscriber::layer::SubscriberExt;
    let _subscriber = if info_subscriber {
        tracing::subscriber::set_default(
            tracing_subscriber::registry().with(tracing_subscriber::filter::LevelFilter::INFO),
        )
    } else {
        tracing::subscriber::set_default(tracing::subscriber::NoSubscriber::default())
    };
    tracing::callsite::rebuild_interest_cache();
    let (o, _) = ops_origin(Mode::default());
    let mut service = SwrLayer::new()
        .cache_info_extension(cache_info_extension)
        .layer(o);
    for _ in 0..3 {
        let response = service
            .clone()
            .oneshot(get("/hot"))
            .await
            .expect("answered");
        body(response).await.expect("body");
    }
    let mut counts = Vec::new();
    for _ in 0..5 {
        let request = get("/hot");
        std::future::poll_fn(|cx| service.poll_ready(cx))
            .await
            .expect("ready");
        ALLOCATIONS.with(|a| a.set(0));
        COUNTING.with(|c| c.set(true));
        let response = service.call(request).await;
        COUNTING.with(|c| c.set(false));
        let response = response.expect("answered");
        assert_eq!(info_or_fresh(&response), CacheStatus::Fresh);
        counts.push(ALLOCATIONS.with(|a| a.get()));
    }
    eprintln!("allocations per hit (extension {cache_info_extension}): {counts:?}");
    counts.into_iter().min().unwrap_or(0)
}

/// The answer's status from its extension, or from `Cache-Status` when the extension is off.
fn info_or_fresh(response: &Answer) -> CacheStatus {
    match response.extensions().get::<tower_swr::CacheInfo>() {
        Some(info) => info.status,
        None if cache_status(response).contains("; hit") => CacheStatus::Fresh,
        None => CacheStatus::Miss,
    }
}

// Issue 4 §3: "No per-request allocation when the level is disabled": a hit with `debug`
// disabled allocates exactly what it does with no subscriber at all, and nothing beyond the
// copy of the stored header map every owned response needs (two allocations in `http` 1.x:
// its indices and its entries). Issue 13 §2: "a fresh hit stays synchronous and
// allocation-free as today" (the header copy aside).
#[tokio::test(start_paused = true)]
async fn a_hit_with_debug_disabled_allocates_only_the_copy_of_its_headers() {
    let with_info = allocations_of_a_hit(false, true).await;
    let without = allocations_of_a_hit(false, false).await;
    assert_eq!(with_info, without);
    assert!(with_info <= 2, "{with_info} allocations");
}

// The docs of `cache_info_extension`: turning it off "saves an allocation and a free on every
// hit" — the extension is what a hit allocates beyond its headers.
#[tokio::test(start_paused = true)]
async fn the_cache_info_extension_costs_a_hit_its_allocations() {
    let with = allocations_of_a_hit(true, true).await;
    let without = allocations_of_a_hit(false, true).await;
    assert!(with > without, "{with} vs {without}");
}

// ---------------------------------------------------------------------------------------------
// 14. Through HTTP: backoff and early refresh; invalidations win (issue 13 §6)
// ---------------------------------------------------------------------------------------------

// Issue 4 §6 through the layer: "after a failed refresh a key is not refreshed again before a
// backoff ..., while stale keeps being served".
#[tokio::test(start_paused = true)]
async fn the_layer_backs_off_a_failed_refresh_while_serving_stale() {
    let mode = Mode::default();
    let (o, calls) = ops_origin(mode.clone());
    let service = SwrLayer::new().refresh_backoff(secs(10), secs(10)).layer(o);
    status_and_body(&service, get("/b")).await;
    advance(secs(11)).await;
    mode.set(UNAVAILABLE);
    status_and_body(&service, get("/b")).await;
    spin().await;
    assert_eq!(calls.get(), 2, "the failed refresh");
    for _ in 0..4 {
        advance(secs(1)).await;
        let (status, body) = status_and_body(&service, get("/b")).await;
        assert_eq!((status, body), (CacheStatus::Stale, Bytes::from("v1")));
        spin().await;
    }
    assert_eq!(calls.get(), 2, "no refresh within half the backoff");
    mode.set(OK);
    advance(secs(7)).await; // 11 s after the failure: past the whole backoff
    status_and_body(&service, get("/b")).await;
    spin().await;
    assert_eq!(calls.get(), 3);
    assert_eq!(
        status_and_body(&service, get("/b")).await.1,
        Bytes::from("v3")
    );
}

// Issue 4 §7 through the layer: XFetch refreshes a fresh entry of a slow origin early.
#[tokio::test(start_paused = true)]
async fn the_layer_refreshes_a_slow_origins_entry_early_near_expiry() {
    let (o, calls) = ops_origin(Mode::default());
    let layer = SwrLayer::new().early_refresh(1.0);
    let handle = layer.handle();
    let service = layer.layer(o);
    status_and_body(&service, get("/slow/x")).await; // took 1 s
    advance(Duration::from_millis(9_990)).await; // 10 ms before expiry
    for _ in 0..10 {
        let (status, _) = status_and_body(&service, get("/slow/x")).await;
        assert_eq!(status, CacheStatus::Fresh);
        if handle.stats().refreshes_started > 0 {
            break;
        }
    }
    assert_eq!(handle.stats().refreshes_started, 1);
    spin().await;
    advance(secs(2)).await; // the refresh takes 1 s
    spin().await;
    assert_eq!(calls.get(), 2);
    assert_eq!(handle.stats().refreshes_succeeded, 1);
    let (status, body) = status_and_body(&service, get("/slow/x")).await;
    assert_eq!((status, body), (CacheStatus::Fresh, Bytes::from("v2")));
}

// Engine docs: the refresh timeout's "zero turns the timeout off".
#[tokio::test(start_paused = true)]
async fn engine_refresh_timeout_zero_lets_a_slow_refresh_finish() {
    let cache: SwrCache<String, u32> = SwrCache::builder().refresh_timeout(Duration::ZERO).build();
    cache.insert("k".into(), 1, long_stale());
    advance(secs(2)).await;
    cache
        .get_or_load("k".into(), || async {
            tokio::time::sleep(secs(120)).await;
            Ok::<_, String>(Loaded::new(2, long_stale()))
        })
        .await
        .expect("stale");
    spin().await;
    advance(secs(100)).await;
    spin().await;
    assert_eq!(cache.stats().refreshes_running, 1, "not cut at 30 s");
    advance(secs(21)).await;
    spin().await;
    let stats = cache.stats();
    assert_eq!(
        (stats.refreshes_succeeded, stats.refreshes_timed_out),
        (1, 0)
    );
    assert_eq!(cache.get("k").expect("k").value, 2);
}

// Issue 13 §6: "a purge ... while ... a coalesced miss is in flight; a GET sent after the
// purge joins the old flight and gets the pre-purge body" must not happen: "no request that
// starts later is answered from a load that began before it, and such a load stores nothing".
#[tokio::test(start_paused = true)]
async fn a_get_after_a_purge_does_not_join_the_miss_under_way_and_that_miss_stores_nothing() {
    let (o, calls) = origin(|n, _| async move {
        tokio::time::sleep(secs(1)).await;
        Ok(reply_cc(format!("v{n}"), "max-age=60"))
    });
    let layer = SwrLayer::new();
    let handle = layer.handle();
    let service = layer.layer(o);
    let spawn_get = |service: &_| {
        let service: tower_swr::SwrService<_> = Clone::clone(service);
        tokio::spawn(async move { call(&service, get("/f")).await })
    };
    let early = spawn_get(&service);
    spin().await;
    assert_eq!(calls.get(), 1);
    handle.purge("/f");
    let late = spawn_get(&service);
    spin().await;
    assert_eq!(calls.get(), 2, "the later GET made its own call");
    advance(secs(1)).await;
    let (_, early_body) = early.await.expect("task").expect("answered");
    let (_, late_body) = late.await.expect("task").expect("answered");
    assert_eq!(early_body, Bytes::from("v1"));
    assert_eq!(late_body, Bytes::from("v2"));
    assert_eq!(
        status_and_body(&service, get("/f")).await.1,
        Bytes::from("v2")
    );
}

// Issue 13 §6: "a successful POST to the same URI ... while a background refresh ... is in
// flight": the refresh begun before it stores nothing.
#[tokio::test(start_paused = true)]
async fn an_unsafe_request_during_a_refresh_keeps_that_refresh_from_storing() {
    let (o, calls) = origin(|n, request: Request<ReqBody>| async move {
        if request.method() == Method::GET && n > 1 {
            tokio::time::sleep(secs(1)).await;
        }
        Ok(reply_cc(format!("v{n}"), CC))
    });
    let service = SwrLayer::new().layer(o);
    status_and_body(&service, get("/doc")).await;
    advance(secs(11)).await;
    assert_eq!(
        status_and_body(&service, get("/doc")).await.0,
        CacheStatus::Stale
    );
    spin().await; // the refresh (call 2) is under way
    let post = status_and_body(&service, request(Method::POST, "/doc")).await;
    assert_eq!(post.0, CacheStatus::Bypass);
    advance(secs(1)).await;
    spin().await;
    let (status, body) = status_and_body(&service, get("/doc")).await;
    assert_eq!(
        status,
        CacheStatus::Miss,
        "nothing stored from before the POST"
    );
    assert_ne!(body, Bytes::from("v2"));
    assert!(calls.get() >= 4);
}

// Issue 13 §6: a clear while a refresh is under way: the refresh stores nothing.
#[tokio::test(start_paused = true)]
async fn a_clear_during_a_refresh_keeps_that_refresh_from_storing() {
    let (o, _) = origin(|n, _| async move {
        if n > 1 {
            tokio::time::sleep(secs(1)).await;
        }
        Ok(reply_cc(format!("v{n}"), CC))
    });
    let layer = SwrLayer::new();
    let handle = layer.handle();
    let service = layer.layer(o);
    status_and_body(&service, get("/c")).await;
    advance(secs(11)).await;
    status_and_body(&service, get("/c")).await;
    spin().await;
    handle.clear();
    advance(secs(1)).await;
    spin().await;
    assert_eq!(handle.stats().entries, 0, "{:#?}", handle.stats());
    let (status, body) = status_and_body(&service, get("/c")).await;
    assert_eq!((status, body), (CacheStatus::Miss, Bytes::from("v3")));
}

// `Stats::bypasses` docs (corrected after this test found them saying `Authorization` was a
// bypass): a `GET` with `Authorization` is eligible, since a `public` answer to it may be
// stored (RFC 9111 §3.5), so it counts as a miss; its non-public answer is never stored.
#[tokio::test(start_paused = true)]
async fn requests_with_authorization_count_as_misses_and_their_private_answers_are_not_stored() {
    let (o, calls) = ops_origin(Mode::default());
    let layer = SwrLayer::new();
    let handle = layer.handle();
    let service = layer.layer(o);
    for _ in 0..2 {
        status_and_body(&service, get_with("/me", header::AUTHORIZATION, "Bearer x")).await;
    }
    assert_eq!(calls.get(), 2, "never stored");
    let stats = handle.stats();
    assert_eq!((stats.bypasses, stats.misses), (0, 2), "{stats:#?}");
}

// `Stats::loads_running`: "Foreground origin loads (coalesced misses) running now".
#[tokio::test(start_paused = true)]
async fn loads_running_counts_a_miss_under_way_once() {
    let (o, _) = ops_origin(Mode::default());
    let layer = SwrLayer::new();
    let handle = layer.handle();
    let service = layer.layer(o);
    let waiting = concurrent_in_background(&service, "/slow/l", 3);
    spin().await;
    assert_eq!(handle.stats().loads_running, 1);
    advance(secs(1)).await;
    for task in waiting {
        task.await.expect("task");
    }
    assert_eq!(handle.stats().loads_running, 0);
}

/// Spawns `n` requests for `uri` and returns their tasks.
fn concurrent_in_background<S>(service: &S, uri: &str, n: usize) -> Vec<tokio::task::JoinHandle<()>>
where
    S: tower::Service<Request<ReqBody>, Response = Answer, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    (0..n)
        .map(|_| {
            let (service, uri) = (service.clone(), uri.to_owned());
            tokio::spawn(async move {
                let response = service.oneshot(get(&uri)).await.expect("answered");
                body(response).await.expect("body");
            })
        })
        .collect()
}

/// A loader that counts its call, takes 1 s and panics.
async fn panicking_load(loads: Arc<AtomicUsize>) -> Result<Loaded<u32>, String> {
    loads.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(secs(1)).await;
    panic!("loader panicked (on purpose)")
}

// Engine docs of `get_or_load`: "A loader that panics is called once all the same: the panic
// goes on up in the caller that ran it and in every caller that waited for it".
#[tokio::test(start_paused = true)]
async fn engine_a_panicking_loader_is_called_once_and_every_waiter_panics() {
    let cache: SwrCache<String, u32> = SwrCache::builder().build();
    let loads = Arc::new(AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..5 {
        let (cache, loads) = (cache.clone(), loads.clone());
        set.spawn(async move {
            cache
                .get_or_load("p".into(), move || panicking_load(loads))
                .await
        });
    }
    let mut panics = 0;
    while let Some(done) = set.join_next().await {
        match done {
            Err(error) if error.is_panic() => panics += 1,
            other => panic!("expected a panic, got {other:?}"),
        }
    }
    assert_eq!(panics, 5);
    assert_eq!(loads.load(Ordering::SeqCst), 1);
}

// Issue 4 §4: purges "remove one key": a target is matched exactly, its query included.
#[tokio::test(start_paused = true)]
async fn purge_matches_the_target_with_its_query_exactly() {
    let (o, _) = ops_origin(Mode::default());
    let layer = SwrLayer::new();
    let handle = layer.handle();
    let service = layer.layer(o);
    for uri in ["/q", "/q?page=2"] {
        status_and_body(&service, get(uri)).await;
    }
    assert_eq!(handle.purge("/q"), 1);
    assert_eq!(
        status_and_body(&service, get("/q?page=2")).await.0,
        CacheStatus::Fresh
    );
    assert_eq!(handle.purge("/q?page=2"), 1);
    assert_eq!(
        status_and_body(&service, get("/q?page=2")).await.0,
        CacheStatus::Miss
    );
}

// Issue 4 §2 for the engine with a tier: the `shared_tier` status of `swr_requests_total` is
// `Stats::shared_tier_hits`, and every lookup counts once.
#[cfg(feature = "metrics")]
#[tokio::test(start_paused = true)]
async fn engine_shared_tier_answers_count_once_in_stats_and_metrics() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let shelf = Arc::new(Shelf::default());
    let (one, two) = metrics::with_local_recorder(&recorder, || {
        let one: SwrCache<String, u32> = SwrCache::builder()
            .name("tier-one")
            .shared_tier(shelf.clone())
            .build();
        let two: SwrCache<String, u32> = SwrCache::builder()
            .name("tier-two")
            .shared_tier(shelf.clone())
            .build();
        (one, two)
    });
    let fresh = Freshness::new(secs(60));
    one.get_or_load("k".into(), move || async move {
        Ok::<_, String>(Loaded::new(1, fresh))
    })
    .await
    .expect("loaded");
    spin().await;
    for _ in 0..3 {
        two.get_or_load("k".into(), move || async move {
            Ok::<_, String>(Loaded::new(2, fresh))
        })
        .await
        .expect("answered");
    }
    let stats = two.stats();
    assert_eq!(
        (stats.shared_tier_hits, stats.fresh_hits, stats.misses),
        (1, 2, 0)
    );
    let mut all = metric_values(&snapshotter);
    let two_metrics = all.remove("tier-two").unwrap_or_default();
    assert_eq!(
        two_metrics.get("swr_requests_total{status=shared_tier}"),
        Some(&1.0),
        "{two_metrics:#?}"
    );
    assert_eq!(
        two_metrics.get("swr_requests_total{status=hit}"),
        Some(&2.0)
    );
    assert_eq!(
        two_metrics.get("swr_requests_total{status=miss}"),
        Some(&0.0)
    );
}

// Issue 4 §6: the breaker counts "consecutive failures across keys": refreshes cut off by
// the refresh timeout are failures too.
#[tokio::test(start_paused = true)]
async fn timed_out_refreshes_count_towards_the_circuit_breaker() {
    let cache: SwrCache<String, u32> = SwrCache::builder()
        .circuit_breaker(2, secs(30))
        .refresh_timeout(secs(1))
        .build();
    for key in ["a", "b"] {
        cache.insert(key.into(), 1, long_stale());
    }
    advance(secs(2)).await;
    for key in ["a", "b"] {
        cache
            .get_or_load(key.into(), || {
                std::future::pending::<Result<Loaded<u32>, String>>()
            })
            .await
            .expect("stale");
        spin().await;
        advance(Duration::from_millis(1_100)).await;
        spin().await;
    }
    let stats = cache.stats();
    assert_eq!(stats.refreshes_timed_out, 2, "{stats:#?}");
    assert!(stats.refreshes_paused, "{stats:#?}");
}

// Issue 4 §5 with the docs of `shutdown`: once stopped, another shutdown has nothing to wait
// for and says so at once.
#[tokio::test(start_paused = true)]
async fn a_second_shutdown_returns_true_at_once() {
    let (o, _) = ops_origin(Mode::default());
    let layer = SwrLayer::new();
    let handle = layer.handle();
    let service = layer.layer(o);
    status_and_body(&service, get("/slow/twice")).await;
    advance(secs(11)).await;
    status_and_body(&service, get("/slow/twice")).await;
    spin().await;
    assert!(handle.shutdown(secs(5)).await);
    let started = Instant::now();
    assert!(handle.clone().shutdown(secs(5)).await);
    assert_eq!(started.elapsed(), Duration::ZERO);
}

// Issue 13 §4: "`share_memory_with` must not silently ignore store setters"; docs: "its own
// are unused, and setting them logs a warning".
#[tokio::test(start_paused = true)]
async fn store_setters_on_a_layer_sharing_memory_warn_and_change_nothing() {
    let events = Events::default();
    let _collecting = events.install();
    let budget = SwrLayer::new().capacity_bytes(1 << 20);
    let before = events.at(tracing::Level::WARN).len();
    let sharing = SwrLayer::new()
        .share_memory_with(&budget)
        .capacity_bytes(4 << 20)
        .refresh_timeout(secs(3));
    let (o, _) = ops_origin(Mode::default());
    let service = sharing.clone().layer(o); // first use
    status_and_body(&service, get("/shared")).await;
    assert_eq!(sharing.stats().capacity_bytes, 1 << 20);
    let warns = events.at(tracing::Level::WARN);
    assert!(warns.len() - before >= 1, "no warning: {warns:#?}");
}

// Issue 13 §4 with the layer docs: store settings "set after first use, they are not applied
// (a warning says so) and the layer keeps serving from its cache".
#[tokio::test(start_paused = true)]
async fn a_store_setting_after_first_use_warns_and_keeps_the_cache() {
    let events = Events::default();
    let _collecting = events.install();
    let (o, _) = ops_origin(Mode::default());
    let layer = SwrLayer::new().capacity_bytes(1 << 20);
    let handle = layer.handle();
    let before = events.at(tracing::Level::WARN).len();
    let layer = layer.capacity_bytes(8 << 20);
    assert_eq!(events.at(tracing::Level::WARN).len() - before, 1);
    let service = layer.layer(o);
    status_and_body(&service, get("/kept")).await;
    let stats = handle.stats();
    assert_eq!((stats.capacity_bytes, stats.entries), (1 << 20, 1));
}

// Issue 13 §4: "`share_memory_with` must not silently ignore store setters", whichever comes
// first: a store setting given before `share_memory_with` is unused too and must warn.
#[tokio::test(start_paused = true)]
async fn store_setters_before_share_memory_with_warn_too() {
    let events = Events::default();
    let _collecting = events.install();
    let budget = SwrLayer::new().capacity_bytes(1 << 20);
    let before = events.at(tracing::Level::WARN).len();
    let sharing = SwrLayer::new()
        .capacity_bytes(4 << 20)
        .share_memory_with(&budget);
    let (o, _) = ops_origin(Mode::default());
    let service = sharing.clone().layer(o); // first use
    status_and_body(&service, get("/shared")).await;
    assert_eq!(sharing.stats().capacity_bytes, 1 << 20);
    let warns = events.at(tracing::Level::WARN);
    assert!(warns.len() - before >= 1, "no warning: {warns:#?}");
}

// Issue 4 §7: XFetch "β configurable": a larger β refreshes earlier (docs: "larger refreshes
// earlier"); zero turns it off.
#[tokio::test(start_paused = true)]
async fn a_larger_early_refresh_beta_refreshes_further_from_expiry() {
    async fn refreshed_90_s_before_expiry(beta: f64) -> bool {
        let cache: SwrCache<String, u32> = SwrCache::builder().early_refresh(beta).build();
        let freshness = Freshness::new(secs(100)).with_stale_while_revalidate(secs(100));
        let loaded = Loaded::new(1, freshness).with_load_time(secs(1));
        cache
            .get_or_load("k".into(), move || async move { Ok::<_, String>(loaded) })
            .await
            .expect("loaded");
        advance(secs(10)).await;
        let calls = Arc::new(Mutex::new(Vec::new()));
        for _ in 0..40 {
            let got = cache
                .get_or_load("k".into(), recording_loader(&calls, Some(2), freshness))
                .await
                .expect("fresh");
            assert_eq!(got.status, Status::Fresh);
            spin().await;
        }
        let refreshed = !calls.lock().unwrap().is_empty();
        refreshed
    }
    // β = 1: P(-ln U ≥ 90) per hit is e^-90. β = 1000: P(-1000·ln U ≥ 90) is e^-0.09 ≈ 0.91.
    assert!(!refreshed_90_s_before_expiry(1.0).await);
    assert!(refreshed_90_s_before_expiry(1000.0).await);
    assert!(!refreshed_90_s_before_expiry(0.0).await);
}

// Issue 4 §3: "a debug event per request with key and cache status", for every kind of
// answer: collapsed waiters, stale, stale-if-error and remembered failures too. The
// stale-if-error answer's only debug event ("a stale value stands in for a failed load") has
// `key` and `reason` but no `status`.
#[tokio::test(start_paused = true)]
async fn every_kind_of_answer_gets_exactly_one_debug_event() {
    let events = Events::default();
    let _collecting = events.install();
    let mode = Mode::default();
    let (o, _) = ops_origin(mode.clone());
    let layer = SwrLayer::new();
    let handle = layer.handle();
    let service = layer.layer(o);
    concurrent(&service, "/slow/e", 4).await; // miss + 3 collapsed
    status_and_body(&service, get("/slow/e")).await; // hit
    advance(secs(11)).await;
    status_and_body(&service, get("/slow/e")).await; // stale
    advance(secs(2)).await;
    spin().await;
    mode.set(UNAVAILABLE);
    advance(secs(40)).await;
    status_and_body(&service, get("/slow/e")).await; // stale-if-error
    status_and_body(&service, get("/cold")).await; // miss (503)
    status_and_body(&service, get("/cold")).await; // failure hit
    status_and_body(&service, request(Method::PATCH, "/cold")).await; // bypass
    let stats = handle.stats();
    let requests = requests(&stats) + stats.failure_hits;
    assert_eq!(requests, 10, "{stats:#?}");
    let per_request = events
        .at(tracing::Level::DEBUG)
        .into_iter()
        .filter(|e| e.fields.contains_key("status") && e.fields.contains_key("key"))
        .count();
    assert_eq!(
        per_request as u64,
        requests,
        "{:#?}",
        events.at(tracing::Level::DEBUG)
    );
}
