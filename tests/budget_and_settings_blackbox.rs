//! Black-box tests of the memory budget (layer and engine), of every builder setting of
//! `SwrLayer`, its presets and `SwrCacheBuilder`, and of the engine used without HTTP as the
//! docs describe it for configuration loaded from a database. Written from README.md, the
//! CHANGELOG, the examples and the public API's documentation only.

mod common;

use bytes::Bytes;
use common::*;
use http::{header, Method, Request, Response, StatusCode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};
use tower_swr::engine::{Freshness, Lifetime, Loaded, SharedTier, Status, SwrCache, TierFuture};
use tower_swr::{CacheInfo, CacheStatus, Stats, SwrLayer};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// An origin answering every call with `len` patterned bytes and `cache_control` (none if
/// empty).
fn sized_origin(len: usize, cache_control: &'static str) -> (impl OriginService, Calls) {
    origin(move |_, _| async move {
        let body = patterned_bytes(len);
        Ok(if cache_control.is_empty() {
            reply(body)
        } else {
            reply_cc(body, cache_control)
        })
    })
}

/// The body length and status of one request.
async fn fetch<S>(service: &S, uri: &str) -> (CacheStatus, Bytes)
where
    S: Service<Request<ReqBody>, Response = Answer, Error = BoxError> + Clone,
{
    let answer = call(service, get(uri)).await.expect("answered");
    settle().await;
    answer
}

// ---------------------------------------------------------------------------------------------
// The layer's memory budget
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn layer_default_budget_is_128_mib_and_default_body_limit_8_mib() {
    let layer = SwrLayer::new();
    assert_eq!(layer.stats().capacity_bytes, 128 << 20);
    let shared = SwrLayer::shared_cache();
    assert_eq!(shared.stats().capacity_bytes, 128 << 20);

    // "the largest storable body really is storable": 8 MiB exactly is stored.
    let (origin, calls) = sized_origin(8 * MIB, "max-age=100");
    let service = SwrLayer::new().layer(origin);
    let (status, body) = fetch(&service, "/big").await;
    assert_eq!((status, body.len()), (CacheStatus::Miss, 8 * MIB));
    let (status, body) = fetch(&service, "/big").await;
    assert_eq!((status, body.len()), (CacheStatus::Fresh, 8 * MIB));
    assert_eq!(body, patterned_bytes(8 * MIB));
    assert_eq!(calls.get(), 1);

    // One byte more is passed through whole and not stored.
    let (origin, calls) = sized_origin(8 * MIB + 1, "max-age=100");
    let service = SwrLayer::new().layer(origin);
    for _ in 0..2 {
        let (status, body) = fetch(&service, "/bigger").await;
        assert_eq!(status, CacheStatus::Miss);
        assert_eq!(body, patterned_bytes(8 * MIB + 1));
    }
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn layer_capacity_bytes_is_reported_and_last_call_wins() {
    let layer = SwrLayer::new().capacity_bytes(1 << 20);
    assert_eq!(layer.stats().capacity_bytes, 1 << 20);
    let twice = SwrLayer::new()
        .capacity_bytes(1 << 20)
        .capacity_bytes(3 << 20);
    assert_eq!(twice.stats().capacity_bytes, 3 << 20);
}

#[tokio::test(start_paused = true)]
async fn layer_capacity_u64_max_is_an_unbounded_budget_not_a_panic() {
    let huge = SwrLayer::new().capacity_bytes(u64::MAX);
    let (origin, calls) = sized_origin(KIB, "max-age=100");
    let service = huge.layer(origin);
    fetch(&service, "/a").await;
    assert_eq!(fetch(&service, "/a").await.0, CacheStatus::Fresh);
    assert_eq!(calls.get(), 1);
    assert!(huge.stats().bytes > 0);
}

#[tokio::test(start_paused = true)]
async fn layer_many_small_entries_stay_within_the_budget_and_evictions_are_counted() {
    let capacity = 64 * KIB as u64;
    let layer = SwrLayer::new().capacity_bytes(capacity);
    let (origin, calls) = sized_origin(KIB, "max-age=1000");
    let service = layer.clone().layer(origin);
    for i in 0..400 {
        let (status, body) = fetch(&service, &format!("/item/{i}")).await;
        assert_eq!(status, CacheStatus::Miss);
        assert_eq!(body.len(), KIB);
        let stats = layer.stats();
        assert!(
            stats.bytes <= stats.capacity_bytes,
            "after {i}: {} > {}",
            stats.bytes,
            stats.capacity_bytes
        );
    }
    assert_eq!(calls.get(), 400);
    let stats = layer.stats();
    assert!(stats.entries > 0, "something is kept: {stats:?}");
    assert!(stats.entries < 400, "not everything fits: {stats:?}");
    assert!(
        stats.entries * KIB as u64 <= capacity,
        "entries' bodies alone exceed the budget: {stats:?}"
    );
    assert!(stats.evictions > 0, "evictions are counted: {stats:?}");
    assert_eq!(stats.stores, 400, "{stats:?}");
    assert_eq!(
        stats.stores - stats.evictions,
        stats.entries,
        "every store is either held or evicted: {stats:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn layer_bytes_count_the_body() {
    let small = SwrLayer::new();
    let (origin, _) = sized_origin(KIB, "max-age=100");
    fetch(&small.clone().layer(origin), "/x").await;
    let big = SwrLayer::new();
    let (origin, _) = sized_origin(101 * KIB, "max-age=100");
    fetch(&big.clone().layer(origin), "/x").await;
    let (s, b) = (small.stats(), big.stats());
    assert_eq!((s.entries, b.entries), (1, 1));
    let diff = b.bytes - s.bytes;
    assert!(
        (100 * KIB as u64..=102 * KIB as u64).contains(&diff),
        "100 KiB more body should weigh ~100 KiB more, got {diff} ({s:?} / {b:?})"
    );
}

#[tokio::test(start_paused = true)]
async fn layer_bytes_count_headers_and_the_key() {
    let plain = SwrLayer::new();
    let (plain_origin, _) = sized_origin(16, "max-age=100");
    fetch(&plain.clone().layer(plain_origin), "/k").await;

    let headers = SwrLayer::new();
    let big_value: &'static str = Box::leak("h".repeat(8 * KIB).into_boxed_str());
    let (hdr_origin, _) = origin(move |_, _| async move {
        Ok(respond(
            200,
            "0123456789abcdef",
            &[("cache-control", "max-age=100"), ("x-big", big_value)],
        ))
    });
    fetch(&headers.clone().layer(hdr_origin), "/k").await;

    let key = SwrLayer::new();
    let (origin, _) = sized_origin(16, "max-age=100");
    let long = format!("/k?q={}", "q".repeat(8 * KIB));
    fetch(&key.clone().layer(origin), &long).await;

    let base = plain.stats().bytes;
    let with_header = headers.stats().bytes;
    let with_key = key.stats().bytes;
    assert!(
        with_header >= base + 8 * KIB as u64,
        "an 8 KiB header counts: {base} vs {with_header}"
    );
    assert!(
        with_key >= base + 8 * KIB as u64,
        "an 8 KiB key counts: {base} vs {with_key}"
    );
}

#[tokio::test(start_paused = true)]
async fn layer_each_vary_variant_counts_and_is_an_entry() {
    let layer = SwrLayer::new();
    let (origin, calls) = origin(|_, request: Request<ReqBody>| async move {
        let lang = header_text(request.headers(), "accept-language").unwrap_or_default();
        Ok(respond(
            200,
            format!("{lang}:{}", "v".repeat(10 * KIB)),
            &[
                ("cache-control", "max-age=100"),
                ("vary", "accept-language"),
            ],
        ))
    });
    let service = layer.clone().layer(origin);
    call(&service, get_headers("/v", &[("accept-language", "en")]))
        .await
        .unwrap();
    settle().await;
    let one = layer.stats();
    for lang in ["fr", "de"] {
        call(&service, get_headers("/v", &[("accept-language", lang)]))
            .await
            .unwrap();
        settle().await;
    }
    let three = layer.stats();
    assert_eq!(calls.get(), 3);
    assert_eq!(three.entries, 3, "{three:?}");
    assert!(
        three.bytes >= one.bytes + 20 * KIB as u64,
        "two more 10 KiB variants: {one:?} -> {three:?}"
    );
    let (status, body) = call(&service, get_headers("/v", &[("accept-language", "fr")]))
        .await
        .unwrap();
    assert_eq!(status, CacheStatus::Fresh);
    assert!(body.starts_with(b"fr:"));
}

#[tokio::test(start_paused = true)]
async fn layer_stale_entries_keep_their_bytes_until_past_their_windows() {
    let layer = SwrLayer::new();
    let gate = Gate::new();
    let (origin, _) = gated_after_first(&gate, "max-age=10, stale-while-revalidate=60");
    let service = layer.clone().layer(origin);
    fetch(&service, "/s").await;
    let fresh = layer.stats();
    tokio::time::advance(secs(30)).await;
    assert_eq!(layer.stats().entries, 1);
    assert_eq!(
        layer.stats().bytes,
        fresh.bytes,
        "a stale entry is still held"
    );
    let (status, _) = fetch(&service, "/s").await;
    assert_eq!(status, CacheStatus::Stale);
    gate.open();
}

#[tokio::test(start_paused = true)]
async fn layer_body_larger_than_the_budget_passes_through_whole_and_uncached() {
    let layer = SwrLayer::new().capacity_bytes(64 * KIB as u64);
    let (origin, calls) = sized_origin(300 * KIB, "max-age=100");
    let service = layer.clone().layer(origin);
    for _ in 0..2 {
        let (status, body) = fetch(&service, "/huge").await;
        assert_eq!(status, CacheStatus::Miss);
        assert_eq!(body, patterned_bytes(300 * KIB), "never truncated");
    }
    assert_eq!(calls.get(), 2, "too large to store: asked again");
    let stats = layer.stats();
    assert!(stats.bytes <= stats.capacity_bytes, "{stats:?}");
    assert_eq!(stats.entries, 0, "{stats:?}");
    assert_eq!(
        stats.store_rejections, 2,
        "each too-heavy answer is counted: {stats:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn layer_body_over_max_body_bytes_with_known_length_passes_through_and_is_not_marked_stored()
{
    let layer = SwrLayer::new().max_body_bytes(4 * KIB);
    let (origin, calls) = sized_origin(4 * KIB + 1, "max-age=100");
    let service = layer.clone().layer(origin);
    for _ in 0..2 {
        let response = service.clone().oneshot(get("/over")).await.unwrap();
        assert!(!info(&response).stored, "not stored");
        assert!(
            !cache_status(&response).contains("stored"),
            "{}",
            cache_status(&response)
        );
        assert_eq!(body(response).await.unwrap(), patterned_bytes(4 * KIB + 1));
        settle().await;
    }
    assert_eq!(calls.get(), 2);
    assert_eq!(layer.stats().entries, 0);

    // Exactly the limit is stored.
    let (origin, calls) = sized_origin(4 * KIB, "max-age=100");
    let service = SwrLayer::new().max_body_bytes(4 * KIB).layer(origin);
    fetch(&service, "/exact").await;
    assert_eq!(fetch(&service, "/exact").await.0, CacheStatus::Fresh);
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn layer_unknown_length_body_exceeding_the_limit_mid_stream_reaches_the_client_whole() {
    let layer = SwrLayer::new().max_body_bytes(4 * KIB);
    let (origin, calls) = origin(|_, _| async {
        Ok(with_header(
            Response::new(ChunkedBody::new(patterned_bytes(20 * KIB), KIB)),
            header::CACHE_CONTROL,
            "max-age=100",
        ))
    });
    let service = layer.clone().layer(origin);
    for _ in 0..2 {
        let response = service.clone().oneshot(get("/stream")).await.unwrap();
        assert_eq!(info(&response).status, CacheStatus::Miss);
        let bytes = body(response)
            .await
            .expect("no body error for the only reader");
        assert_eq!(bytes, patterned_bytes(20 * KIB));
        settle().await;
    }
    assert_eq!(
        calls.get(),
        2,
        "not stored: the next request asks the origin"
    );
    assert_eq!(layer.stats().entries, 0);
}

#[tokio::test(start_paused = true)]
async fn layer_unknown_length_body_over_the_budget_but_under_the_limit_is_not_truncated() {
    let layer = SwrLayer::new().capacity_bytes(16 * KIB as u64);
    let (origin, _) = origin(|_, _| async {
        Ok(with_header(
            Response::new(ChunkedBody::new(patterned_bytes(100 * KIB), 4 * KIB)),
            header::CACHE_CONTROL,
            "max-age=100",
        ))
    });
    let service = layer.clone().layer(origin);
    for _ in 0..2 {
        let response = service.clone().oneshot(get("/s")).await.unwrap();
        assert_eq!(body(response).await.unwrap(), patterned_bytes(100 * KIB));
        settle().await;
    }
    let stats = layer.stats();
    assert!(stats.bytes <= stats.capacity_bytes, "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn layer_max_body_bytes_zero_stores_nothing_with_a_body_but_answers_everything() {
    let layer = SwrLayer::new().max_body_bytes(0);
    let (origin, calls) = sized_origin(10, "max-age=100");
    let service = layer.clone().layer(origin);
    for _ in 0..3 {
        let (status, body) = fetch(&service, "/z").await;
        assert_eq!(status, CacheStatus::Miss);
        assert_eq!(body, patterned_bytes(10));
    }
    assert_eq!(calls.get(), 3);
}

#[tokio::test(start_paused = true)]
async fn layer_capacity_zero_or_tiny_answers_every_request_whole() {
    for capacity in [0u64, 1, 100] {
        let layer = SwrLayer::new().capacity_bytes(capacity);
        let (origin, _) = sized_origin(KIB, "max-age=100");
        let service = layer.clone().layer(origin);
        for i in 0..5 {
            let (_, body) = fetch(&service, &format!("/t{i}")).await;
            assert_eq!(body, patterned_bytes(KIB), "capacity {capacity}");
            let (_, body) = fetch(&service, &format!("/t{i}")).await;
            assert_eq!(body, patterned_bytes(KIB), "capacity {capacity}");
        }
        let stats = layer.stats();
        assert!(stats.bytes <= stats.capacity_bytes, "{stats:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn layer_capacity_zero_or_tiny_answers_everything_and_holds_nothing_beyond_it() {
    for capacity in [0u64, 1, 100] {
        let layer = SwrLayer::new().capacity_bytes(capacity);
        let (origin, _) = sized_origin(KIB, "max-age=100");
        let service = layer.clone().layer(origin);
        for i in 0..5 {
            let (_, body) = fetch(&service, &format!("/t{i}")).await;
            assert_eq!(body, patterned_bytes(KIB), "capacity {capacity}");
        }
        let stats = layer.stats();
        assert!(
            stats.bytes <= stats.capacity_bytes.max(capacity),
            "capacity {capacity}: {stats:?}"
        );
        assert!(
            stats.bytes <= capacity,
            "capacity {capacity}: holds {} bytes",
            stats.bytes
        );
    }
}

#[tokio::test(start_paused = true)]
async fn layer_entry_evicted_while_its_stale_refresh_runs_is_refreshed_cleanly() {
    let layer = SwrLayer::new().capacity_bytes(32 * KIB as u64);
    let gate = Gate::new();
    let (victim_origin, victim_calls) = gated_after_first(&gate, SWR_10_60);
    let victim = layer.clone().layer(victim_origin);
    fetch(&victim, "/victim").await;
    tokio::time::advance(secs(11)).await;
    let (status, body) = fetch(&victim, "/victim").await;
    assert_eq!((status, &body[..]), (CacheStatus::Stale, &b"v1"[..]));
    assert_eq!(layer.stats().refreshes_running, 1);

    // Flood the budget with other keys while the refresh is held open.
    let (flood_origin, _) = sized_origin(2 * KIB, "max-age=1000");
    let flood = SwrLayer::new()
        .share_memory_with(&layer)
        .layer(flood_origin);
    for i in 0..100 {
        fetch(&flood, &format!("/flood/{i}")).await;
    }
    gate.open();
    settle().await;
    let stats = layer.stats();
    assert_eq!(stats.refreshes_running, 0, "{stats:?}");
    assert!(stats.bytes <= stats.capacity_bytes, "{stats:?}");
    assert_eq!(victim_calls.get(), 2);
    // Whatever happened to the entry, the next answer is the refreshed one or a new load,
    // never the old body after a successful refresh.
    let (_, body) = fetch(&victim, "/victim").await;
    assert_ne!(
        &body[..],
        b"v1",
        "the refreshed value (or a new load) is served"
    );
}

#[tokio::test(start_paused = true)]
async fn layer_waiters_of_a_fill_get_the_whole_body_when_the_entry_is_evicted_at_once() {
    let layer = SwrLayer::new().capacity_bytes(32 * KIB as u64);
    let gate = Gate::new();
    let (origin, calls) = origin({
        let gate = gate.clone();
        move |n, _| {
            let gate = gate.clone();
            async move {
                if n == 1 {
                    gate.wait().await;
                }
                Ok(reply_cc(patterned_bytes(8 * KIB), "max-age=1000"))
            }
        }
    });
    let service = layer.clone().layer(origin);
    let mut waiting = Vec::new();
    for _ in 0..5 {
        let service = service.clone();
        waiting.push(tokio::spawn(async move {
            call(&service, get("/hot")).await.unwrap()
        }));
    }
    settle().await;
    let (flood_origin, _) = sized_origin(4 * KIB, "max-age=1000");
    let flood = SwrLayer::new()
        .share_memory_with(&layer)
        .layer(flood_origin);
    gate.open();
    for i in 0..40 {
        fetch(&flood, &format!("/f{i}")).await;
    }
    for task in waiting {
        let (status, bytes) = task.await.unwrap();
        assert!(matches!(status, CacheStatus::Miss | CacheStatus::Collapsed));
        assert_eq!(bytes, patterned_bytes(8 * KIB));
    }
    assert_eq!(calls.get(), 1, "one origin call for the five");
}

#[tokio::test(start_paused = true)]
async fn layers_sharing_memory_share_one_budget_and_keep_their_entries_apart() {
    let budget = SwrLayer::new().capacity_bytes(64 * KIB as u64);
    let a = SwrLayer::new()
        .capacity_bytes(1 << 30)
        .share_memory_with(&budget);
    let b = SwrLayer::new().share_memory_with(&budget);
    let (origin_a, calls_a) = origin(|_, _| async { Ok(reply_cc("from a", "max-age=1000")) });
    let (origin_b, calls_b) = origin(|_, _| async { Ok(reply_cc("from b", "max-age=1000")) });
    let service_a = a.clone().layer(origin_a);
    let service_b = b.clone().layer(origin_b);
    assert_eq!(fetch(&service_a, "/same").await.1, "from a");
    assert_eq!(fetch(&service_b, "/same").await.1, "from b");
    assert_eq!(
        fetch(&service_a, "/same").await,
        (CacheStatus::Fresh, "from a".into())
    );
    assert_eq!(
        fetch(&service_b, "/same").await,
        (CacheStatus::Fresh, "from b".into())
    );
    assert_eq!((calls_a.get(), calls_b.get()), (1, 1));

    assert_eq!(
        a.stats().capacity_bytes,
        64 * KIB as u64,
        "a's own capacity is unused"
    );
    assert_eq!(b.stats().capacity_bytes, 64 * KIB as u64);

    // A purge of a's entry leaves b's.
    assert_eq!(a.handle().purge("/same"), 1);
    assert_eq!(fetch(&service_b, "/same").await.0, CacheStatus::Fresh);
    assert_eq!(fetch(&service_a, "/same").await.0, CacheStatus::Miss);

    // b filling the shared budget evicts a's entry.
    let (flood, _) = sized_origin(4 * KIB, "max-age=1000");
    let flood = SwrLayer::new().share_memory_with(&budget).layer(flood);
    for i in 0..100 {
        fetch(&flood, &format!("/f{i}")).await;
    }
    for layer in [&budget, &a, &b] {
        let stats = layer.stats();
        assert!(stats.bytes <= 64 * KIB as u64, "{stats:?}");
    }
    assert_eq!(
        fetch(&service_a, "/same").await.0,
        CacheStatus::Miss,
        "evicted by another layer's entries"
    );
}

// ---------------------------------------------------------------------------------------------
// The engine's memory budget
// ---------------------------------------------------------------------------------------------

fn fresh(ttl: u64) -> Freshness {
    Freshness::new(secs(ttl))
}

#[tokio::test(start_paused = true)]
async fn engine_defaults_are_64_mib_and_entries_up_to_1_mib() {
    let cache: SwrCache<String, Vec<u8>> = SwrCache::builder()
        .weigher(|_, v: &Vec<u8>| v.len() as u64)
        .build();
    assert_eq!(cache.stats().capacity_bytes, 64 << 20);
    assert!(
        cache.max_entry_bytes() >= 1 << 20,
        "{}",
        cache.max_entry_bytes()
    );
    assert!(cache.insert("mib".into(), vec![0; 1 << 20], fresh(60)));
    assert!(cache.get("mib").is_some());
    let new: SwrCache<String, u8> = SwrCache::new(12_345);
    assert_eq!(new.stats().capacity_bytes, 12_345);
}

#[tokio::test(start_paused = true)]
async fn engine_entry_over_max_entry_bytes_is_rejected_and_the_old_value_stays() {
    let cache: SwrCache<String, Vec<u8>> = SwrCache::builder()
        .capacity_bytes(1 << 20)
        .largest_entry_bytes(10 * KIB as u64)
        .weigher(|_, v: &Vec<u8>| v.len() as u64)
        .build();
    let max = cache.max_entry_bytes();
    assert!(max >= 10 * KIB as u64, "{max}");
    assert!(cache.insert("k".into(), vec![1; 10], fresh(60)));
    assert!(
        !cache.insert("k".into(), vec![2; max as usize + 1], fresh(60)),
        "heavier than the largest storable entry"
    );
    assert_eq!(
        cache.get("k").unwrap().value,
        vec![1; 10],
        "the old value stays"
    );
    let stats = cache.stats();
    assert_eq!(stats.store_rejections, 1, "{stats:?}");

    // Through get_or_load: the value is returned, not stored.
    let got = cache
        .get_or_load("big".into(), move || async move {
            Ok::<_, String>(Loaded::new(vec![3; max as usize + 1], fresh(60)))
        })
        .await
        .unwrap();
    assert_eq!(got.status, Status::Miss);
    assert_eq!(got.value.len(), max as usize + 1);
    assert!(cache.get("big").is_none());
    assert_eq!(cache.stats().store_rejections, 2);
}

#[tokio::test(start_paused = true)]
async fn engine_largest_entry_bigger_than_the_budget_is_bounded_by_the_budget() {
    // `largest_entry_bytes` lays the store out for such an entry "as far as the budget
    // allows": never an entry heavier than the budget itself.
    let cache: SwrCache<String, Vec<u8>> = SwrCache::builder()
        .capacity_bytes(1000)
        .largest_entry_bytes(10_000)
        .weigher(|_, v: &Vec<u8>| v.len() as u64)
        .build();
    let most = cache.max_entry_bytes();
    assert!(most > 0 && most < 1000, "max_entry_bytes {most}");
    assert!(!cache.insert("big".into(), vec![0; 5000], fresh(60)));
    assert!(cache.insert("k".into(), vec![0; most as usize], fresh(60)));
    let stats = cache.stats();
    assert_eq!(stats.capacity_bytes, 1000, "{stats:?}");
    assert!(stats.bytes <= stats.capacity_bytes, "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn engine_weigher_bounds_the_store_and_stats_add_up() {
    let cache: SwrCache<u32, Vec<u8>> = SwrCache::builder()
        .capacity_bytes(100 * KIB as u64)
        .weigher(|_, v: &Vec<u8>| v.len() as u64)
        .build();
    for i in 0..50u32 {
        assert!(cache.insert(i, vec![0; 10 * KIB], fresh(600)));
        let stats = cache.stats();
        assert!(stats.bytes <= stats.capacity_bytes, "{stats:?}");
    }
    let stats = cache.stats();
    assert_eq!(stats.stores, 50);
    assert!(stats.evictions > 0);
    assert!(
        stats.entries * 10 * KIB as u64 <= 100 * KIB as u64,
        "{stats:?}"
    );
    assert_eq!(stats.entries, cache.len() as u64);
    assert_eq!(stats.stores - stats.evictions, stats.entries, "{stats:?}");
    assert!(
        stats.bytes >= stats.entries * 10 * KIB as u64,
        "bytes are the weigher's figure plus overhead: {stats:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn engine_default_weigher_is_size_of_value_not_its_heap() {
    let cache: SwrCache<String, String> = SwrCache::builder().build();
    cache.insert("big".into(), "x".repeat(MIB), fresh(60));
    let stats = cache.stats();
    assert_eq!(stats.entries, 1);
    assert!(
        stats.bytes < 64 * KIB as u64,
        "size_of::<String>() plus overhead, not the heap: {stats:?}"
    );
    assert!(stats.bytes >= std::mem::size_of::<String>() as u64);
}

#[tokio::test(start_paused = true)]
async fn engine_capacity_zero_still_answers_loads_and_reports_consistently() {
    let cache: SwrCache<String, u64> = SwrCache::new(0);
    for i in 0..3 {
        let got = cache
            .get_or_load(format!("k{i}"), || async {
                Ok::<_, String>(Loaded::new(7, fresh(60)))
            })
            .await
            .unwrap();
        assert_eq!(got.value, 7);
    }
    let stats = cache.stats();
    assert!(stats.bytes <= stats.capacity_bytes, "{stats:?}");
    assert_eq!(stats.stores - stats.evictions, stats.entries, "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn engine_capacity_zero_still_answers_loads() {
    let cache: SwrCache<String, u64> = SwrCache::new(0);
    let got = cache
        .get_or_load("k".into(), || async {
            Ok::<_, String>(Loaded::new(7, fresh(60)))
        })
        .await
        .unwrap();
    assert_eq!(got.value, 7);
    let stats = cache.stats();
    assert!(stats.bytes <= stats.capacity_bytes, "{stats:?}");
    assert_eq!(stats.bytes, 0, "a zero budget holds nothing: {stats:?}");
}

#[tokio::test(start_paused = true)]
async fn engine_a_frequently_read_entry_survives_a_scan_of_one_shot_entries() {
    // Docs: "Entries are evicted when it is full" on quick_cache; an experienced user expects
    // a scan-resistant policy (LRU or better) to keep a hot key.
    let cache: SwrCache<u32, Vec<u8>> = SwrCache::builder()
        .capacity_bytes(100 * KIB as u64)
        .weigher(|_, v: &Vec<u8>| v.len() as u64)
        .build();
    cache.insert(0, vec![0; KIB], fresh(600));
    for i in 1..500u32 {
        for _ in 0..3 {
            assert!(cache.get(&0).is_some(), "hot key evicted after {i} inserts");
        }
        cache.insert(i, vec![0; KIB], fresh(600));
    }
    assert!(cache.get(&0).is_some());
}

#[tokio::test(start_paused = true)]
async fn engine_entry_evicted_while_its_refresh_runs_stores_the_refreshed_value() {
    let cache: SwrCache<u32, Vec<u8>> = SwrCache::builder()
        .capacity_bytes(50 * KIB as u64)
        .weigher(|_, v: &Vec<u8>| v.len() as u64)
        .build();
    cache.insert(
        0,
        vec![1; KIB],
        fresh(10).with_stale_while_revalidate(secs(60)),
    );
    tokio::time::advance(secs(11)).await;
    let gate = Gate::new();
    let g = gate.clone();
    let got = cache
        .get_or_load(0, move || async move {
            g.wait().await;
            Ok::<_, String>(Loaded::new(vec![2; KIB], fresh(100)))
        })
        .await
        .unwrap();
    assert_eq!(got.status, Status::Stale);
    assert!(cache.is_refreshing(&0));
    for i in 1..200u32 {
        cache.insert(i, vec![0; KIB], fresh(600));
    }
    gate.open();
    settle().await;
    let stats = cache.stats();
    assert_eq!(stats.refreshes_running, 0);
    assert_eq!(stats.refreshes_succeeded, 1, "{stats:?}");
    assert_eq!(
        cache.get(&0).expect("stored by the refresh").value,
        vec![2; KIB]
    );
}

#[tokio::test(start_paused = true)]
async fn engine_waiters_get_the_value_when_its_entry_is_evicted_at_once() {
    let cache: SwrCache<u32, Vec<u8>> = SwrCache::builder()
        .capacity_bytes(20 * KIB as u64)
        .weigher(|_, v: &Vec<u8>| v.len() as u64)
        .build();
    let gate = Gate::new();
    let loads = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let (cache, gate, loads) = (cache.clone(), gate.clone(), loads.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load(0, move || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    gate.wait().await;
                    Ok::<_, String>(Loaded::new(vec![9; 4 * KIB], fresh(100)))
                })
                .await
        }));
    }
    settle().await;
    gate.open();
    for i in 1..50u32 {
        cache.insert(i, vec![0; 4 * KIB], fresh(600));
    }
    for task in tasks {
        let got = task.await.unwrap().unwrap();
        assert_eq!(got.value, vec![9; 4 * KIB]);
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------------------------
// SwrLayer settings: defaults in effect, each setting's effect, hostile values
// ---------------------------------------------------------------------------------------------

/// An origin answering `v{n}` with no caching headers.
fn plain_origin() -> (impl OriginService, Calls) {
    origin(|n, _| async move { Ok(reply(format!("v{n}"))) })
}

async fn advance_ms(ms: u64) {
    tokio::time::advance(Duration::from_millis(ms)).await;
}

#[tokio::test(start_paused = true)]
async fn default_lifetimes_are_60_s_fresh_120_s_stale_while_revalidate() {
    let (origin, calls) = plain_origin();
    let service = SwrLayer::new().layer(origin);
    for path in ["/a", "/b", "/c"] {
        fetch(&service, path).await;
    }
    advance_ms(59_000).await;
    assert_eq!(fetch(&service, "/a").await.0, CacheStatus::Fresh);
    advance_ms(2_000).await; // 61 s
    assert_eq!(fetch(&service, "/a").await.0, CacheStatus::Stale);
    advance_ms(179_000 - 61_000 - 2).await; // ~179 s: 60 + 119
    assert_eq!(fetch(&service, "/b").await.0, CacheStatus::Stale);
    advance_ms(2_000).await; // ~181 s: past 60 + 120
    let before = calls.get();
    assert_eq!(fetch(&service, "/c").await.0, CacheStatus::Miss);
    assert_eq!(calls.get(), before + 1);
}

#[tokio::test(start_paused = true)]
async fn default_stale_if_error_window_is_300_s() {
    let down = Switch::default();
    let (origin, _) = origin({
        let down = down.clone();
        move |n, _| {
            let down = down.clone();
            async move {
                Ok(if down.on() {
                    unavailable()
                } else {
                    reply(format!("v{n}"))
                })
            }
        }
    });
    let service = SwrLayer::new().layer(origin);
    fetch(&service, "/e").await;
    fetch(&service, "/f").await;
    down.set(true);
    advance_ms(359_000).await; // 60 + 299
    let (status, body) = fetch(&service, "/e").await;
    assert_eq!((status, &body[..]), (CacheStatus::StaleIfError, &b"v1"[..]));
    advance_ms(2_000).await; // 60 + 301
    let response = service.clone().oneshot(get("/f")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(start_paused = true)]
async fn ttl_setting_changes_the_default_fresh_lifetime_and_the_last_call_wins() {
    let (origin, _) = plain_origin();
    let service = SwrLayer::new().ttl(secs(5)).layer(origin);
    fetch(&service, "/t").await;
    advance_ms(4_900).await;
    assert_eq!(fetch(&service, "/t").await.0, CacheStatus::Fresh);
    advance_ms(200).await;
    assert_eq!(fetch(&service, "/t").await.0, CacheStatus::Stale);

    let (origin, _) = plain_origin();
    let twice = SwrLayer::new().ttl(secs(5)).ttl(secs(100)).layer(origin);
    fetch(&twice, "/t").await;
    advance_ms(50_000).await;
    assert_eq!(fetch(&twice, "/t").await.0, CacheStatus::Fresh);
}

#[tokio::test(start_paused = true)]
async fn stale_while_revalidate_setting_changes_the_default_window() {
    let layer = || {
        SwrLayer::new()
            .ttl(secs(10))
            .stale_while_revalidate(secs(5))
    };
    let (origin, _) = plain_origin();
    let service = layer().layer(origin);
    fetch(&service, "/w").await;
    advance_ms(14_000).await; // inside 10 + 5
    assert_eq!(fetch(&service, "/w").await.0, CacheStatus::Stale);

    let (origin, calls) = plain_origin();
    let service = layer().layer(origin);
    fetch(&service, "/w").await;
    advance_ms(16_000).await; // past 10 + 5 (the default would be 10 + 120)
    assert_eq!(fetch(&service, "/w").await.0, CacheStatus::Miss);
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_setting_extends_the_window() {
    let down = Switch::default();
    let (origin, _) = origin({
        let down = down.clone();
        move |n, _| {
            let down = down.clone();
            async move {
                Ok(if down.on() {
                    unavailable()
                } else {
                    reply(format!("v{n}"))
                })
            }
        }
    });
    let service = SwrLayer::new()
        .ttl(secs(10))
        .stale_while_revalidate(Duration::ZERO)
        .stale_if_error(secs(1000))
        .layer(origin);
    fetch(&service, "/x").await;
    down.set(true);
    advance_ms(900_000).await;
    assert_eq!(fetch(&service, "/x").await.0, CacheStatus::StaleIfError);
    advance_ms(200_000).await; // past 10 + 1000
    let response = service.clone().oneshot(get("/x")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(start_paused = true)]
async fn duration_max_lifetimes_do_not_overflow() {
    let (origin, calls) = plain_origin();
    let service = SwrLayer::new()
        .ttl(Duration::MAX)
        .stale_while_revalidate(Duration::MAX)
        .stale_if_error(Duration::MAX)
        .max_stale_when_disconnected(Duration::MAX)
        .layer(origin);
    fetch(&service, "/max").await;
    advance_ms(10_000 * 24 * 3600 * 1000).await;
    let (status, body) = fetch(&service, "/max").await;
    assert_eq!((status, &body[..]), (CacheStatus::Fresh, &b"v1"[..]));
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn ttl_zero_is_answered_and_never_served_fresh() {
    let (origin, _) = plain_origin();
    let service = SwrLayer::new().ttl(Duration::ZERO).layer(origin);
    for _ in 0..3 {
        let (status, body) = fetch(&service, "/zero").await;
        assert_ne!(status, CacheStatus::Fresh);
        assert!(body.starts_with(b"v"));
    }
}

#[tokio::test(start_paused = true)]
async fn shared_cache_preset_does_not_reuse_responses_without_freshness_unless_ttl_is_set() {
    let (origin, calls) = plain_origin();
    let service = SwrLayer::shared_cache().layer(origin);
    fetch(&service, "/p").await;
    fetch(&service, "/p").await;
    assert_eq!(
        calls.get(),
        2,
        "shared_cache: no heuristic freshness without Last-Modified"
    );

    let (origin, calls) = plain_origin();
    let service = SwrLayer::shared_cache().ttl(secs(60)).layer(origin);
    fetch(&service, "/p").await;
    assert_eq!(fetch(&service, "/p").await.0, CacheStatus::Fresh);
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn ignore_origin_freshness_uses_the_layers_ttl() {
    let (origin, _) = sized_origin(4, "max-age=1000");
    let service = SwrLayer::new()
        .ttl(secs(5))
        .ignore_origin_freshness(true)
        .layer(origin);
    fetch(&service, "/i").await;
    advance_ms(6_000).await;
    assert_eq!(fetch(&service, "/i").await.0, CacheStatus::Stale);

    let (origin, _) = sized_origin(4, "max-age=1000");
    let service = SwrLayer::new().ttl(secs(5)).layer(origin);
    fetch(&service, "/i").await;
    advance_ms(6_000).await;
    assert_eq!(
        fetch(&service, "/i").await.0,
        CacheStatus::Fresh,
        "by default the origin's max-age wins"
    );
}

/// An origin whose first call waits for `gate`; later calls answer at once.
fn first_call_held(gate: &Gate) -> (impl OriginService, Calls) {
    let gate = gate.clone();
    origin(move |n, _| {
        let gate = gate.clone();
        async move {
            if n == 1 {
                gate.wait().await;
            }
            Ok(reply_cc(format!("v{n}"), "max-age=100"))
        }
    })
}

async fn lock_timeout_case(layer: SwrLayer, before_ms: u64, after_ms: u64) {
    let gate = Gate::new();
    let (origin, calls) = first_call_held(&gate);
    let service = layer.layer(origin);
    let leader = tokio::spawn({
        let service = service.clone();
        async move { call(&service, get("/l")).await.unwrap() }
    });
    settle().await;
    let waiter = tokio::spawn({
        let service = service.clone();
        async move { call(&service, get("/l")).await.unwrap() }
    });
    settle().await;
    advance_ms(before_ms).await;
    settle().await;
    assert_eq!(calls.get(), 1, "still waiting at {before_ms} ms");
    assert!(!waiter.is_finished());
    advance_ms(after_ms - before_ms).await;
    settle().await;
    assert_eq!(calls.get(), 2, "one more origin call past the lock timeout");
    let (_, body) = waiter.await.unwrap();
    assert_eq!(&body[..], b"v2");
    gate.open();
    leader.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn lock_timeout_default_is_5_s() {
    lock_timeout_case(SwrLayer::new(), 4_800, 5_200).await;
}

#[tokio::test(start_paused = true)]
async fn lock_timeout_setting_changes_it() {
    lock_timeout_case(SwrLayer::new().lock_timeout(secs(1)), 800, 1_200).await;
}

async fn lock_timeout_hostile_case(timeout: Duration) {
    let gate = Gate::new();
    let (origin, _) = first_call_held(&gate);
    let service = SwrLayer::new().lock_timeout(timeout).layer(origin);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let service = service.clone();
        tasks.push(tokio::spawn(async move {
            call(&service, get("/l")).await.unwrap()
        }));
    }
    settle().await;
    advance_ms(3_600_000).await;
    gate.open();
    for task in tasks {
        let (_, body) = task.await.expect("the request task does not panic");
        assert!(body.starts_with(b"v"), "{timeout:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn lock_timeout_zero_still_answers_every_request() {
    lock_timeout_hostile_case(Duration::ZERO).await;
}

#[tokio::test(start_paused = true)]
async fn lock_timeout_max_waits_for_the_one_origin_call() {
    lock_timeout_hostile_case(Duration::MAX).await;
}

/// Stored `v1` (fresh 10 s, stale 60 s), then every call hangs.
fn hangs_after_first() -> (impl OriginService, Calls) {
    origin(|n, _| async move {
        if n > 1 {
            std::future::pending::<()>().await;
        }
        Ok(reply_cc("v1", SWR_10_60))
    })
}

async fn refresh_timeout_case(layer: SwrLayer, before_ms: u64, after_ms: u64) {
    let (origin, _) = hangs_after_first();
    let service = layer.clone().layer(origin);
    fetch(&service, "/r").await;
    advance_ms(11_000).await;
    assert_eq!(fetch(&service, "/r").await.0, CacheStatus::Stale);
    advance_ms(before_ms).await;
    settle().await;
    assert_eq!(layer.stats().refreshes_timed_out, 0);
    assert_eq!(layer.stats().refreshes_running, 1);
    advance_ms(after_ms - before_ms).await;
    settle().await;
    let stats = layer.stats();
    assert_eq!(stats.refreshes_timed_out, 1, "{stats:?}");
    assert_eq!(stats.refreshes_failed, 1, "{stats:?}");
    assert_eq!(stats.refreshes_running, 0, "{stats:?}");
    assert_eq!(fetch(&service, "/r").await.1, "v1", "the old entry is kept");
}

#[tokio::test(start_paused = true)]
async fn refresh_timeout_default_is_30_s() {
    refresh_timeout_case(SwrLayer::new(), 29_000, 31_000).await;
}

#[tokio::test(start_paused = true)]
async fn refresh_timeout_setting_changes_it() {
    refresh_timeout_case(SwrLayer::new().refresh_timeout(secs(2)), 1_800, 2_200).await;
}

#[tokio::test(start_paused = true)]
async fn refresh_timeout_zero_turns_the_timeout_off() {
    let layer = SwrLayer::new().refresh_timeout(Duration::ZERO);
    let (origin, _) = hangs_after_first();
    let service = layer.clone().layer(origin);
    fetch(&service, "/r").await;
    advance_ms(11_000).await;
    assert_eq!(fetch(&service, "/r").await.0, CacheStatus::Stale);
    advance_ms(45_000).await;
    settle().await;
    let stats = layer.stats();
    assert_eq!(stats.refreshes_timed_out, 0, "{stats:?}");
    assert_eq!(stats.refreshes_running, 1, "{stats:?}");
}

/// Stored `v1` (fresh 10 s, stale 60 s), then every call is a 503.
async fn backoff_case(layer: SwrLayer, quiet_ms: u64, retry_ms: u64) {
    let (origin, _) = then_503(SWR_10_60);
    let service = layer.clone().layer(origin);
    fetch(&service, "/b").await;
    advance_ms(11_000).await;
    assert_eq!(fetch(&service, "/b").await.0, CacheStatus::Stale);
    settle().await;
    assert_eq!(layer.stats().refreshes_failed, 1);
    advance_ms(quiet_ms).await;
    fetch(&service, "/b").await;
    assert_eq!(
        layer.stats().refreshes_started,
        1,
        "backing off at {quiet_ms} ms"
    );
    advance_ms(retry_ms - quiet_ms).await;
    let (status, body) = fetch(&service, "/b").await;
    assert_eq!((status, &body[..]), (CacheStatus::Stale, &b"v1"[..]));
    assert_eq!(
        layer.stats().refreshes_started,
        2,
        "retried by {retry_ms} ms"
    );
}

#[tokio::test(start_paused = true)]
async fn refresh_backoff_default_is_about_1_s() {
    // Jittered between half of 1 s and 1 s.
    backoff_case(SwrLayer::new(), 400, 1_100).await;
}

#[tokio::test(start_paused = true)]
async fn refresh_backoff_setting_changes_it() {
    backoff_case(
        SwrLayer::new().refresh_backoff(secs(10), secs(60)),
        4_500,
        10_100,
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn refresh_backoff_base_above_max_is_capped_at_max() {
    // "base, doubling per failure, capped at max".
    backoff_case(
        SwrLayer::new().refresh_backoff(secs(60), secs(1)),
        400,
        1_100,
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn refresh_backoff_hostile_values_do_not_panic() {
    for (base, max) in [
        (Duration::ZERO, Duration::ZERO),
        (Duration::MAX, Duration::MAX),
        (Duration::ZERO, Duration::MAX),
    ] {
        let layer = SwrLayer::new().refresh_backoff(base, max);
        let (origin, _) = then_503(SWR_10_60);
        let service = layer.clone().layer(origin);
        fetch(&service, "/b").await;
        advance_ms(11_000).await;
        for _ in 0..3 {
            let (status, body) = fetch(&service, "/b").await;
            assert_eq!((status, &body[..]), (CacheStatus::Stale, &b"v1"[..]));
            advance_ms(100).await;
        }
        assert!(layer.stats().refreshes_failed >= 1);
    }
}

async fn duration_max_case(layer: SwrLayer) {
    let (origin, _) = then_503(SWR_10_60);
    let service = layer.clone().layer(origin);
    fetch(&service, "/m").await;
    advance_ms(11_000).await;
    for _ in 0..3 {
        let (status, body) = fetch(&service, "/m").await;
        assert_eq!((status, &body[..]), (CacheStatus::Stale, &b"v1"[..]));
        advance_ms(1_000).await;
    }
    let response = service.clone().oneshot(get("/other")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    body(response).await.unwrap();
    let response = service.clone().oneshot(get("/other")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    body(response).await.unwrap();
    settle().await;
}

#[tokio::test(start_paused = true)]
async fn refresh_timeout_duration_max_does_not_panic() {
    duration_max_case(SwrLayer::new().refresh_timeout(Duration::MAX)).await;
}

#[tokio::test(start_paused = true)]
async fn origin_timeout_duration_max_does_not_panic() {
    duration_max_case(SwrLayer::new().origin_timeout(Duration::MAX)).await;
}

#[tokio::test(start_paused = true)]
async fn remember_failures_duration_max_does_not_panic() {
    duration_max_case(SwrLayer::new().remember_failures(Duration::MAX)).await;
}

#[tokio::test(start_paused = true)]
async fn circuit_breaker_cooldown_duration_max_does_not_panic() {
    duration_max_case(SwrLayer::new().circuit_breaker(1, Duration::MAX)).await;
}

#[tokio::test(start_paused = true)]
async fn stale_alert_age_duration_max_does_not_panic() {
    duration_max_case(SwrLayer::new().stale_alert_age(Duration::MAX)).await;
}

#[tokio::test(start_paused = true)]
async fn key_fn_adds_to_the_key_and_none_bypasses() {
    let (origin, calls) = plain_origin();
    let service = SwrLayer::new()
        .key_fn(|parts| {
            let user = parts.headers.get("x-user")?.to_str().ok()?;
            Some(user.to_owned())
        })
        .allow_private(true)
        .layer(origin);
    let (s1, b1) = call(&service, get_headers("/k", &[("x-user", "ann")]))
        .await
        .unwrap();
    let (s2, b2) = call(&service, get_headers("/k", &[("x-user", "bob")]))
        .await
        .unwrap();
    assert_eq!((s1, s2), (CacheStatus::Miss, CacheStatus::Miss));
    assert_ne!(b1, b2);
    let (s3, b3) = call(&service, get_headers("/k", &[("x-user", "ann")]))
        .await
        .unwrap();
    assert_eq!((s3, b3), (CacheStatus::Fresh, b1));
    let (s4, _) = call(&service, get("/k")).await.unwrap();
    assert_eq!(s4, CacheStatus::Bypass, "key_fn None skips the cache");
    assert_eq!(calls.get(), 3);
}

#[tokio::test(start_paused = true)]
async fn credential_headers_setting_keeps_such_answers_unshared() {
    let (origin, calls) = plain_origin();
    let service = SwrLayer::new().layer(origin);
    fetch_text(&service, get_headers("/c", &[("x-api-key", "k1")]))
        .await
        .unwrap();
    settle().await;
    assert_eq!(
        call(&service, get("/c")).await.unwrap().0,
        CacheStatus::Fresh,
        "by default x-api-key is just a header"
    );
    assert_eq!(calls.get(), 1);

    let (origin, calls) = plain_origin();
    let service = SwrLayer::new()
        .credential_headers(["x-api-key"])
        .layer(origin);
    fetch_text(&service, get_headers("/c", &[("x-api-key", "k1")]))
        .await
        .unwrap();
    settle().await;
    let (status, _) = call(&service, get("/c")).await.unwrap();
    assert_ne!(status, CacheStatus::Fresh);
    assert_eq!(calls.get(), 2, "the credentialed answer was not shared");
}

#[test]
#[should_panic]
fn credential_headers_with_an_empty_name_panics_as_documented() {
    let _ = SwrLayer::new().credential_headers([""]);
}

#[test]
#[should_panic]
fn targeted_cache_control_fields_with_an_invalid_name_panics_as_documented() {
    let _ = SwrLayer::new().targeted_cache_control_fields(["bad name"]);
}

async fn failure_status_case(layer: SwrLayer, status: u16) -> CacheStatus {
    let (origin, _) = origin(move |n, _| async move {
        Ok(if n == 1 {
            respond(
                200,
                "v1",
                &[(
                    "cache-control",
                    "max-age=10, stale-while-revalidate=0, stale-if-error=1000",
                )],
            )
        } else {
            respond(status, "nope", &[])
        })
    });
    let service = layer.layer(origin);
    fetch(&service, "/fs").await;
    advance_ms(11_000).await;
    fetch(&service, "/fs").await.0
}

#[tokio::test(start_paused = true)]
async fn failure_statuses_default_408_429_and_setting_adds_others() {
    assert_eq!(
        failure_status_case(SwrLayer::new(), 429).await,
        CacheStatus::StaleIfError
    );
    assert_eq!(
        failure_status_case(SwrLayer::new(), 408).await,
        CacheStatus::StaleIfError
    );
    assert_eq!(
        failure_status_case(SwrLayer::new(), 418).await,
        CacheStatus::Miss,
        "418 is an answer by default"
    );
    assert_eq!(
        failure_status_case(
            SwrLayer::new().failure_statuses([StatusCode::IM_A_TEAPOT]),
            418
        )
        .await,
        CacheStatus::StaleIfError
    );
}

#[tokio::test(start_paused = true)]
async fn allow_private_stores_private_responses() {
    let (origin, calls) = sized_origin(3, "private, max-age=100");
    let service = SwrLayer::new().layer(origin);
    fetch(&service, "/pv").await;
    fetch(&service, "/pv").await;
    assert_eq!(calls.get(), 2, "private is not stored by default");

    let (origin, calls) = sized_origin(3, "private, max-age=100");
    let service = SwrLayer::new()
        .key_fn(|_| Some("one-user".into()))
        .allow_private(true)
        .layer(origin);
    fetch(&service, "/pv").await;
    assert_eq!(fetch(&service, "/pv").await.0, CacheStatus::Fresh);
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn cache_cookie_requests_setting_caches_requests_with_cookies() {
    for (enabled, expected_calls) in [(false, 2), (true, 1)] {
        let (origin, calls) = plain_origin();
        let service = SwrLayer::new().cache_cookie_requests(enabled).layer(origin);
        for _ in 0..2 {
            fetch_text(&service, get_headers("/ck", &[("cookie", "a=1")]))
                .await
                .unwrap();
            settle().await;
        }
        assert_eq!(
            calls.get(),
            expected_calls,
            "cache_cookie_requests({enabled})"
        );
    }
}

async fn origin_timeout_case(layer: SwrLayer, before_ms: u64, after_ms: Option<u64>) {
    let (origin, _) = origin(|n, _| async move {
        if n > 1 {
            std::future::pending::<()>().await;
        }
        Ok(reply_cc(
            "v1",
            "max-age=10, stale-while-revalidate=0, stale-if-error=100000",
        ))
    });
    let service = layer.layer(origin);
    fetch(&service, "/ot").await;
    advance_ms(11_000).await;
    let pending = tokio::spawn({
        let service = service.clone();
        async move { call(&service, get("/ot")).await.unwrap() }
    });
    settle().await;
    advance_ms(before_ms).await;
    settle().await;
    assert!(!pending.is_finished(), "still waiting at {before_ms} ms");
    if let Some(after_ms) = after_ms {
        advance_ms(after_ms - before_ms).await;
        settle().await;
        assert!(pending.is_finished(), "answered by {after_ms} ms");
        let (status, body) = pending.await.unwrap();
        assert_eq!((status, &body[..]), (CacheStatus::StaleIfError, &b"v1"[..]));
    } else {
        pending.abort();
    }
}

#[tokio::test(start_paused = true)]
async fn origin_timeout_default_is_30_s() {
    origin_timeout_case(SwrLayer::new(), 29_000, Some(31_000)).await;
}

#[tokio::test(start_paused = true)]
async fn origin_timeout_setting_changes_it() {
    origin_timeout_case(SwrLayer::new().origin_timeout(secs(2)), 1_800, Some(2_200)).await;
}

#[tokio::test(start_paused = true)]
async fn origin_timeout_none_or_zero_waits_as_long_as_the_origin_takes() {
    origin_timeout_case(SwrLayer::new().origin_timeout(None), 3_600_000, None).await;
    origin_timeout_case(
        SwrLayer::new().origin_timeout(Duration::ZERO),
        3_600_000,
        None,
    )
    .await;
}

/// Stored `v1` with no stale windows of its own, then the inner service errors.
fn errors_after_first() -> (impl OriginService, Calls) {
    origin(|n, _| async move {
        if n > 1 {
            return Err::<Reply, BoxError>("connection refused".into());
        }
        Ok(reply_cc(
            "v1",
            "max-age=10, stale-while-revalidate=0, stale-if-error=0",
        ))
    })
}

#[tokio::test(start_paused = true)]
async fn max_stale_when_disconnected_is_off_in_new_and_24_h_in_shared_cache() {
    let (origin, _) = errors_after_first();
    let service = SwrLayer::new().layer(origin);
    fetch(&service, "/d").await;
    advance_ms(3_600_000).await;
    assert!(
        service.clone().oneshot(get("/d")).await.is_err(),
        "new(): the error"
    );

    let (origin, _) = errors_after_first();
    let service = SwrLayer::new()
        .max_stale_when_disconnected(secs(7200))
        .layer(origin);
    fetch(&service, "/d").await;
    advance_ms(3_600_000).await;
    assert_eq!(fetch(&service, "/d").await.0, CacheStatus::StaleIfError);

    let (origin, _) = errors_after_first();
    let service = SwrLayer::shared_cache().layer(origin);
    fetch(&service, "/d").await;
    advance_ms(23 * 3_600_000).await;
    assert_eq!(fetch(&service, "/d").await.0, CacheStatus::StaleIfError);
    advance_ms(2 * 3_600_000).await;
    assert!(
        service.clone().oneshot(get("/d")).await.is_err(),
        "past 24 h"
    );

    let (origin, _) = errors_after_first();
    let service = SwrLayer::shared_cache()
        .max_stale_when_disconnected(None)
        .layer(origin);
    fetch(&service, "/d").await;
    advance_ms(60_000).await;
    assert!(
        service.clone().oneshot(get("/d")).await.is_err(),
        "None: off"
    );
}

#[tokio::test(start_paused = true)]
async fn convert_head_asks_with_get_and_stores() {
    for enabled in [false, true] {
        let seen = Seen::default();
        let (origin, calls) = origin({
            let seen = seen.clone();
            move |n, request: Request<ReqBody>| {
                seen.record(&request);
                async move { Ok(reply_cc(format!("v{n}"), "max-age=100")) }
            }
        });
        let service = SwrLayer::new().convert_head(enabled).layer(origin);
        let head = service
            .clone()
            .oneshot(request(Method::HEAD, "/h"))
            .await
            .unwrap();
        let head_body = body(head).await.unwrap();
        if enabled {
            assert!(
                head_body.is_empty(),
                "converted: the client gets the headers only"
            );
        }
        settle().await;
        let method = seen.0.lock().unwrap()[0].0.clone();
        let (status, _) = fetch(&service, "/h").await;
        if enabled {
            assert_eq!(method, Method::GET);
            assert_eq!(status, CacheStatus::Fresh);
            assert_eq!(calls.get(), 1);
        } else {
            assert_eq!(method, Method::HEAD);
            assert_eq!(status, CacheStatus::Miss);
            assert_eq!(calls.get(), 2);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn cache_name_default_custom_and_non_token_names() {
    for (name, expected) in [
        (None, "tower-swr"),
        (Some("edge"), "edge"),
        (Some("my cache"), "\"my cache\""),
        (Some(""), "\"\""),
    ] {
        let (origin, _) = plain_origin();
        let layer = match name {
            Some(name) => SwrLayer::new().cache_name(name),
            None => SwrLayer::new(),
        };
        let service = layer.layer(origin);
        let response = service.clone().oneshot(get("/n")).await.unwrap();
        let status = cache_status(&response);
        assert!(
            status.starts_with(&format!("{expected};")),
            "{name:?}: {status}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn cache_name_names_the_targeted_field() {
    let (origin, calls) = origin(|_, _| async {
        Ok(respond(
            200,
            "t",
            &[
                ("cache-control", "no-store"),
                ("edge-cache-control", "max-age=100"),
            ],
        ))
    });
    let service = SwrLayer::new()
        .cache_name("edge")
        .targeted_cache_control(true)
        .layer(origin);
    fetch(&service, "/tc").await;
    assert_eq!(fetch(&service, "/tc").await.0, CacheStatus::Fresh);
    assert_eq!(calls.get(), 1);
}

/// `Cache-Control: no-store` for browsers, `CDN-Cache-Control: max-age=100` for the cache.
fn cdn_origin(field: &'static str) -> (impl OriginService, Calls) {
    origin(move |_, _| async move {
        Ok(respond(
            200,
            "t",
            &[("cache-control", "no-store"), (field, "max-age=100")],
        ))
    })
}

async fn stored_twice<S>(service: &S, calls: &Calls) -> bool
where
    S: Service<Request<ReqBody>, Response = Answer, Error = BoxError> + Clone,
{
    fetch(service, "/tc").await;
    fetch(service, "/tc").await;
    calls.get() == 1
}

#[tokio::test(start_paused = true)]
async fn targeted_cache_control_is_off_in_new_on_in_shared_cache() {
    let (origin, calls) = cdn_origin("cdn-cache-control");
    assert!(!stored_twice(&SwrLayer::new().layer(origin), &calls).await);
    let (origin, calls) = cdn_origin("cdn-cache-control");
    let service = SwrLayer::new().targeted_cache_control(true).layer(origin);
    assert!(stored_twice(&service, &calls).await);
    let (origin, calls) = cdn_origin("cdn-cache-control");
    assert!(stored_twice(&SwrLayer::shared_cache().layer(origin), &calls).await);
    let (origin, calls) = cdn_origin("cdn-cache-control");
    let service = SwrLayer::shared_cache()
        .targeted_cache_control(false)
        .layer(origin);
    assert!(!stored_twice(&service, &calls).await);
}

#[tokio::test(start_paused = true)]
async fn targeted_cache_control_fields_replace_the_list_and_empty_turns_it_off() {
    let (origin, calls) = cdn_origin("my-cache-control");
    let service = SwrLayer::shared_cache()
        .targeted_cache_control_fields(["my-cache-control"])
        .layer(origin);
    assert!(stored_twice(&service, &calls).await);
    let (origin, calls) = cdn_origin("cdn-cache-control");
    let service = SwrLayer::shared_cache()
        .targeted_cache_control_fields(["my-cache-control"])
        .layer(origin);
    assert!(
        !stored_twice(&service, &calls).await,
        "CDN-Cache-Control is off the list"
    );
    let (origin, calls) = cdn_origin("cdn-cache-control");
    let service = SwrLayer::shared_cache()
        .targeted_cache_control_fields(Vec::<&str>::new())
        .layer(origin);
    assert!(!stored_twice(&service, &calls).await, "empty list: off");
}

#[tokio::test(start_paused = true)]
async fn surrogate_control_is_on_by_default_and_can_be_turned_off() {
    for enabled in [None, Some(true), Some(false)] {
        let seen = Seen::default();
        let (origin, _) = origin({
            let seen = seen.clone();
            move |_, request: Request<ReqBody>| {
                seen.record(&request);
                async move {
                    Ok(respond(
                        200,
                        "s",
                        &[
                            ("cache-control", "max-age=1"),
                            ("surrogate-control", "max-age=1000"),
                        ],
                    ))
                }
            }
        });
        let layer = match enabled {
            Some(on) => SwrLayer::new().surrogate_control(on),
            None => SwrLayer::new(),
        };
        let service = layer.layer(origin);
        let first = service.clone().oneshot(get("/sc")).await.unwrap();
        let passed_on = first.headers().contains_key("surrogate-control");
        body(first).await.unwrap();
        settle().await;
        let capability = seen.last_headers().contains_key("surrogate-capability");
        advance_ms(50_000).await;
        let (status, _) = fetch(&service, "/sc").await;
        if enabled == Some(false) {
            assert!(passed_on, "off: passed on");
            assert_ne!(
                status,
                CacheStatus::Fresh,
                "off: Cache-Control max-age=1 rules"
            );
        } else {
            assert!(!passed_on, "on: not passed on");
            assert!(capability, "on: Surrogate-Capability sent");
            assert_eq!(
                status,
                CacheStatus::Fresh,
                "on: Surrogate-Control max-age=1000"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn forward_cache_tags_default_strips_them() {
    for forward in [false, true] {
        let (origin, _) = origin(|_, _| async {
            Ok(respond(
                200,
                "t",
                &[
                    ("cache-control", "max-age=100"),
                    ("surrogate-key", "a b"),
                    ("cache-tag", "c"),
                    ("xkey", "d"),
                ],
            ))
        });
        let service = SwrLayer::new().forward_cache_tags(forward).layer(origin);
        for _ in 0..2 {
            let response = service.clone().oneshot(get("/tag")).await.unwrap();
            for name in ["surrogate-key", "cache-tag", "xkey"] {
                assert_eq!(
                    response.headers().contains_key(name),
                    forward,
                    "{name} with forward_cache_tags({forward})"
                );
            }
            body(response).await.unwrap();
            settle().await;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn observability_headers_and_extension_follow_their_settings() {
    // Defaults: no X-Cache, no X-Cache-Key, no X-Query-Time-ms; a CacheInfo extension.
    let (plain, _) = plain_origin();
    let service = SwrLayer::new().layer(plain);
    let response = service.clone().oneshot(get("/o")).await.unwrap();
    for name in ["x-cache", "x-cache-key", "x-query-time-ms"] {
        assert!(
            !response.headers().contains_key(name),
            "{name} off by default"
        );
    }
    assert!(response.extensions().get::<CacheInfo>().is_some());

    let (origin, _) = origin(|n, _| async move {
        tokio::time::sleep(Duration::from_millis(250)).await;
        Ok(reply(format!("v{n}")))
    });
    let service = SwrLayer::new()
        .x_cache_header(true)
        .x_cache_key_header(true)
        .query_time_header(true)
        .cache_info_extension(false)
        .layer(origin);
    let miss = service.clone().oneshot(get("/o")).await.unwrap();
    assert_eq!(header_value(&miss, "x-cache").as_deref(), Some("MISS"));
    assert!(header_value(&miss, "x-cache-key").is_some_and(|k| k.contains("/o")));
    let ms: u64 = header_value(&miss, "x-query-time-ms")
        .unwrap()
        .parse()
        .unwrap();
    assert!((250..=260).contains(&ms), "{ms}");
    assert!(miss.extensions().get::<CacheInfo>().is_none());
    body(miss).await.unwrap();
    settle().await;
    let hit = service.clone().oneshot(get("/o")).await.unwrap();
    assert_eq!(header_value(&hit, "x-cache").as_deref(), Some("HIT"));
    assert_eq!(header_value(&hit, "x-query-time-ms").as_deref(), Some("0"));
}

/// `count` keys stored fresh for 10 s (stale 60 s), then every origin call is a 503; at 11 s
/// each key is asked once (one failed refresh each). Returns the layer's stats after.
async fn failing_refreshes(layer: SwrLayer, count: usize) -> (Stats, impl Fn() -> Stats) {
    let (origin, _) = origin(|n, request: Request<ReqBody>| async move {
        let _ = n;
        Ok(if request.headers().contains_key("x-first") {
            reply_cc("v1", SWR_10_60)
        } else {
            unavailable()
        })
    });
    let service = layer.clone().layer(origin);
    for i in 0..count + 1 {
        call(
            &service,
            get_headers(&format!("/cb{i}"), &[("x-first", "1")]),
        )
        .await
        .unwrap();
        settle().await;
    }
    advance_ms(11_000).await;
    for i in 0..count {
        let (status, _) = fetch(&service, &format!("/cb{i}")).await;
        assert_eq!(status, CacheStatus::Stale);
    }
    // One more stale key after them: does its refresh start?
    fetch(&service, &format!("/cb{count}")).await;
    let stats = layer.stats();
    (stats, move || layer.stats())
}

#[tokio::test(start_paused = true)]
async fn circuit_breaker_default_opens_after_10_failures() {
    let (stats, _) = failing_refreshes(SwrLayer::new(), 9).await;
    assert_eq!(
        stats.refreshes_started, 10,
        "after 9 failures the 10th key is still refreshed: {stats:?}"
    );
    let (stats, _) = failing_refreshes(SwrLayer::new(), 10).await;
    assert!(stats.refreshes_paused, "10 failures: {stats:?}");
    assert_eq!(
        stats.refreshes_started, 10,
        "the 11th stale key is not refreshed"
    );
}

#[tokio::test(start_paused = true)]
async fn circuit_breaker_setting_changes_threshold_and_cooldown() {
    let (stats, later) = failing_refreshes(SwrLayer::new().circuit_breaker(2, secs(5)), 2).await;
    assert!(stats.refreshes_paused, "{stats:?}");
    assert_eq!(stats.refreshes_started, 2, "{stats:?}");
    advance_ms(6_000).await;
    settle().await;
    assert!(!later().refreshes_paused, "cooldown over: {:?}", later());
}

#[tokio::test(start_paused = true)]
async fn circuit_breaker_zero_threshold_disables_it() {
    let (stats, _) = failing_refreshes(SwrLayer::new().circuit_breaker(0, secs(30)), 15).await;
    assert!(!stats.refreshes_paused, "{stats:?}");
    assert_eq!(stats.refreshes_started, 16, "{stats:?}");
}

async fn fresh_after(layer: SwrLayer, keys: usize, at_ms: &[u64]) -> Vec<usize> {
    let (origin, _) = plain_origin();
    let service = layer.layer(origin);
    for i in 0..keys {
        fetch(&service, &format!("/j{i}")).await;
    }
    // Every key is looked at once per instant; stale ones are refreshed and leave the count.
    let mut counted = vec![true; keys];
    let mut out = Vec::new();
    let mut now = 0;
    for &at in at_ms {
        advance_ms(at - now).await;
        now = at;
        let mut fresh = 0;
        for (i, alive) in counted.iter_mut().enumerate() {
            if !*alive {
                continue;
            }
            let status = call(&service, get(&format!("/j{i}"))).await.unwrap().0;
            if status == CacheStatus::Fresh {
                fresh += 1;
            } else {
                *alive = false;
            }
        }
        settle().await;
        now += 1;
        out.push(fresh);
    }
    out
}

#[tokio::test(start_paused = true)]
async fn ttl_jitter_default_off_every_key_expires_together() {
    let counts = fresh_after(SwrLayer::new().ttl(secs(100)), 20, &[99_000, 101_000]).await;
    assert_eq!(counts, vec![20, 0]);
}

#[tokio::test(start_paused = true)]
async fn ttl_jitter_spreads_fresh_lifetimes_within_the_fraction() {
    let counts = fresh_after(
        SwrLayer::new().ttl(secs(100)).ttl_jitter(0.5),
        40,
        &[49_000, 100_000, 151_000],
    )
    .await;
    assert_eq!(counts[0], 40, "none before 50 s: {counts:?}");
    assert!(
        counts[1] > 0 && counts[1] < 40,
        "spread around 100 s: {counts:?}"
    );
    assert_eq!(counts[2], 0, "none after 150 s: {counts:?}");
}

#[tokio::test(start_paused = true)]
async fn ttl_jitter_and_early_refresh_hostile_values_still_answer() {
    for value in [f64::NAN, -1.0, 10.0, f64::INFINITY, f64::NEG_INFINITY] {
        let (origin, _) = plain_origin();
        let layer = SwrLayer::new().ttl_jitter(value).early_refresh(value);
        let service = layer.clone().layer(origin);
        for _ in 0..3 {
            let (_, body) = fetch(&service, "/h").await;
            assert!(body.starts_with(b"v"), "{value}");
            advance_ms(10_000).await;
        }
    }
}

async fn early_refreshes(layer: SwrLayer) -> Stats {
    let (origin, _) = origin(|n, _| async move {
        tokio::time::sleep(secs(1)).await;
        Ok(reply_cc(format!("v{n}"), "max-age=60"))
    });
    let service = layer.clone().layer(origin);
    fetch(&service, "/x").await;
    for _ in 0..40 {
        advance_ms(1_000).await;
        let (status, _) = fetch(&service, "/x").await;
        assert_eq!(status, CacheStatus::Fresh);
    }
    layer.stats()
}

#[tokio::test(start_paused = true)]
async fn early_refresh_default_off_never_refreshes_a_fresh_entry() {
    let stats = early_refreshes(SwrLayer::new()).await;
    assert_eq!(stats.refreshes_started, 0, "{stats:?}");
    let stats = early_refreshes(SwrLayer::new().early_refresh(0.0)).await;
    assert_eq!(stats.refreshes_started, 0, "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn early_refresh_with_a_large_beta_refreshes_before_expiry() {
    let stats = early_refreshes(SwrLayer::new().early_refresh(1000.0)).await;
    assert!(stats.refreshes_started >= 1, "{stats:?}");
    assert!(stats.refreshes_succeeded >= 1, "{stats:?}");
}

async fn remembered(layer: SwrLayer, second_at_ms: u64) -> (CacheStatus, usize) {
    let (origin, calls) = origin(|_, _| async { Ok(unavailable()) });
    let service = layer.layer(origin);
    let first = service.clone().oneshot(get("/rf")).await.unwrap();
    assert_eq!(first.status(), StatusCode::SERVICE_UNAVAILABLE);
    body(first).await.unwrap();
    settle().await;
    advance_ms(second_at_ms).await;
    let second = service.clone().oneshot(get("/rf")).await.unwrap();
    assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
    let status = info(&second).status;
    body(second).await.unwrap();
    (status, calls.get())
}

#[tokio::test(start_paused = true)]
async fn remember_failures_default_1_s_in_new_off_in_shared_cache() {
    assert_eq!(
        remembered(SwrLayer::new(), 500).await,
        (CacheStatus::FailureHit, 1)
    );
    assert_eq!(remembered(SwrLayer::new(), 1_200).await.1, 2);
    assert_eq!(remembered(SwrLayer::shared_cache(), 100).await.1, 2);
    assert_eq!(
        remembered(SwrLayer::new().remember_failures(Duration::ZERO), 100)
            .await
            .1,
        2
    );
    assert_eq!(
        remembered(SwrLayer::new().remember_failures(secs(10)), 9_000).await,
        (CacheStatus::FailureHit, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn stale_alert_age_warns_only_when_set_and_exceeded() {
    let events = Events::default();
    let _collecting = events.install();
    for (layer, expect_warning) in [
        (SwrLayer::new(), false),
        (SwrLayer::new().stale_alert_age(secs(30)), false),
        (SwrLayer::new().stale_alert_age(secs(5)), true),
    ] {
        events.0.lock().unwrap().clear();
        let gate = Gate::new();
        let (origin, _) = gated_after_first(&gate, SWR_10_60);
        let service = layer.layer(origin);
        fetch(&service, "/alert").await;
        advance_ms(11_000).await;
        assert_eq!(fetch(&service, "/alert").await.0, CacheStatus::Stale);
        let warnings = events.at(tracing::Level::WARN);
        assert_eq!(
            !warnings.is_empty(),
            expect_warning,
            "expect a warning: {expect_warning}; got {warnings:?}"
        );
        gate.open();
        settle().await;
    }
}

#[tokio::test(start_paused = true)]
async fn policy_fn_overrides_the_usual_rules_per_route() {
    let (origin, calls) = sized_origin(3, "max-age=1000");
    let service = SwrLayer::new()
        .policy_fn(|request, _| match request.uri.path() {
            "/short" => Some(Freshness::new(secs(5))),
            _ => None,
        })
        .layer(origin);
    fetch(&service, "/short").await;
    fetch(&service, "/long").await;
    advance_ms(6_000).await;
    assert_ne!(fetch(&service, "/short").await.0, CacheStatus::Fresh);
    assert_eq!(fetch(&service, "/long").await.0, CacheStatus::Fresh);
    assert_eq!(calls.get(), 3);
}

#[tokio::test(start_paused = true)]
async fn judging_settings_after_first_use_keep_the_cache_the_handle_sees() {
    let layer = SwrLayer::new();
    let handle = layer.handle();
    let layer = layer.ttl(secs(5)).x_cache_header(true);
    let (origin, _) = plain_origin();
    let service = layer.clone().layer(origin);
    let response = service.clone().oneshot(get("/late")).await.unwrap();
    assert!(response.headers().contains_key("x-cache"), "applied");
    body(response).await.unwrap();
    settle().await;
    assert_eq!(
        handle.stats().entries,
        1,
        "the handle sees the layer's cache"
    );
    advance_ms(6_000).await;
    assert_eq!(
        fetch(&service, "/late").await.0,
        CacheStatus::Stale,
        "ttl applied"
    );
    assert_eq!(handle.purge("/late"), 1);
    assert_eq!(layer.stats().entries, 0);
}

#[tokio::test(start_paused = true)]
async fn store_settings_after_first_use_are_not_applied_and_the_cache_keeps_serving() {
    let layer = SwrLayer::new().capacity_bytes(1 << 20);
    let (origin, calls) = plain_origin();
    let first = layer.clone().layer(origin.clone());
    fetch(&first, "/keep").await;
    let handle = layer.handle();
    let events = Events::default();
    let _collecting = events.install();
    let late = layer.capacity_bytes(2 << 20).remember_failures(secs(30));
    assert!(
        !events.at(tracing::Level::WARN).is_empty(),
        "a warning says they are not applied"
    );
    assert_eq!(late.stats().capacity_bytes, 1 << 20, "not applied");
    let service = late.layer(origin);
    let response = service.clone().oneshot(get("/keep")).await.unwrap();
    assert_eq!(info(&response).status, CacheStatus::Fresh, "same cache");
    body(response).await.unwrap();
    assert_eq!(calls.get(), 1);
    assert_eq!(handle.stats().entries, 1);
}

#[tokio::test(start_paused = true)]
async fn max_body_bytes_after_first_use_is_not_applied() {
    let layer = SwrLayer::new();
    let (origin, _) = plain_origin();
    fetch(&layer.clone().layer(origin.clone()), "/keep").await;
    let late = layer.max_body_bytes(1);
    let service = late.layer(origin);
    assert_eq!(
        fetch(&service, "/keep").await.0,
        CacheStatus::Fresh,
        "same cache"
    );
    fetch(&service, "/two").await;
    assert_eq!(
        fetch(&service, "/two").await.0,
        CacheStatus::Fresh,
        "the store's 8 MiB limit still applies"
    );
}

#[tokio::test(start_paused = true)]
async fn cache_name_after_first_use_is_not_applied() {
    let layer = SwrLayer::new();
    let (origin, _) = plain_origin();
    fetch(&layer.clone().layer(origin.clone()), "/keep").await;
    let late = layer.cache_name("late");
    let service = late.layer(origin);
    let response = service.clone().oneshot(get("/keep")).await.unwrap();
    assert_eq!(info(&response).status, CacheStatus::Fresh, "same cache");
    assert!(
        cache_status(&response).starts_with("tower-swr;"),
        "name not applied: {}",
        cache_status(&response)
    );
}

#[tokio::test(start_paused = true)]
async fn handle_stats_and_layer_stats_agree_and_count_what_happened() {
    let layer = SwrLayer::new();
    let gate = Gate::new();
    let (origin, _) = gated_after_first(&gate, SWR_10_60);
    let service = layer.clone().layer(origin);
    fetch(&service, "/st").await; // miss + store
    fetch(&service, "/st").await; // fresh
    fetch(&service, "/st").await; // fresh
    advance_ms(11_000).await;
    fetch(&service, "/st").await; // stale, refresh started
    let stats = layer.stats();
    assert_eq!(stats.misses, 1);
    assert_eq!(stats.fresh_hits, 2);
    assert_eq!(stats.stale_hits, 1);
    assert_eq!(stats.stores, 1);
    assert_eq!(stats.refreshes_started, 1);
    assert_eq!(stats.refreshes_running, 1);
    assert_eq!(stats.entries, 1);
    gate.open();
    settle().await;
    let stats = layer.handle().stats();
    assert_eq!(stats.refreshes_succeeded, 1);
    assert_eq!(stats.refreshes_running, 0);
    assert_eq!(stats.stores, 2);
    assert_eq!(stats.entries, 1);
    assert_eq!(stats.evictions, 0, "a re-store is no eviction");
}

#[cfg(feature = "metrics")]
/// One recorded metric: name, labels, value.
type Metric = (
    String,
    Vec<(String, String)>,
    metrics_util::debugging::DebugValue,
);

/// The future a [`Db`] load returns.
type DbFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Loaded<String>, String>> + Send>>;

#[cfg(feature = "metrics")]
/// The metrics a closure's layer records, with a local recorder.
fn with_metrics(test: impl FnOnce() -> Stats) -> (Stats, Vec<Metric>) {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let stats = metrics::with_local_recorder(&recorder, test);
    let values = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key().clone();
            let labels = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            (key.name().to_owned(), labels, value)
        })
        .collect();
    (stats, values)
}

#[cfg(feature = "metrics")]
fn counter(values: &[Metric], name: &str, label: (&str, &str), cache: &str) -> u64 {
    values
        .iter()
        .filter(|(n, labels, _)| {
            n == name
                && labels.contains(&(label.0.to_owned(), label.1.to_owned()))
                && labels.contains(&("cache".to_owned(), cache.to_owned()))
        })
        .map(|(_, _, v)| match v {
            metrics_util::debugging::DebugValue::Counter(c) => *c,
            other => panic!("{name} is not a counter: {other:?}"),
        })
        .sum()
}

#[cfg(feature = "metrics")]
fn gauge(values: &[Metric], name: &str, cache: &str) -> Option<f64> {
    values
        .iter()
        .find(|(n, labels, _)| {
            n == name && labels.contains(&("cache".to_owned(), cache.to_owned()))
        })
        .map(|(_, _, v)| match v {
            metrics_util::debugging::DebugValue::Gauge(g) => g.into_inner(),
            other => panic!("{name} is not a gauge: {other:?}"),
        })
}

#[cfg(feature = "metrics")]
fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

#[cfg(feature = "metrics")]
#[test]
fn metrics_mirror_stores_evictions_entries_and_bytes_truthfully() {
    let (stats, values) = with_metrics(|| {
        paused_runtime().block_on(async {
            let layer = SwrLayer::new()
                .cache_name("budgetm")
                .capacity_bytes(32 * KIB as u64)
                .max_body_bytes(4 * KIB);
            let (origin, _) = origin(|_, request: Request<ReqBody>| async move {
                let len = if request.uri().path() == "/big" {
                    8 * KIB
                } else {
                    KIB
                };
                Ok(reply_cc(patterned_bytes(len), "max-age=100"))
            });
            let service = layer.clone().layer(origin);
            for i in 0..60 {
                fetch(&service, &format!("/m{i}")).await;
            }
            fetch(&service, "/m59").await;
            let (_, body) = fetch(&service, "/big").await;
            assert_eq!(body.len(), 8 * KIB);
            layer.stats()
        })
    });
    let cache = "budgetm";
    assert_eq!(
        counter(&values, "swr_stores_total", ("result", "stored"), cache),
        stats.stores,
        "{stats:?}"
    );
    assert_eq!(
        counter(&values, "swr_requests_total", ("status", "miss"), cache),
        stats.misses
    );
    assert_eq!(
        counter(&values, "swr_requests_total", ("status", "hit"), cache),
        stats.fresh_hits
    );
    assert_eq!(
        gauge(&values, "swr_entries", cache),
        Some(stats.entries as f64)
    );
    let bytes = gauge(&values, "swr_bytes", cache).expect("swr_bytes gauge");
    assert!(
        bytes > 0.0 && bytes <= stats.bytes as f64,
        "{bytes} vs {stats:?}"
    );
    assert!(stats.evictions > 0);
}

#[cfg(feature = "metrics")]
#[test]
fn a_body_over_max_body_bytes_counts_as_too_large() {
    let (stats, values) = with_metrics(|| {
        paused_runtime().block_on(async {
            let layer = SwrLayer::new()
                .cache_name("toolarge")
                .max_body_bytes(4 * KIB);
            let (origin, _) = sized_origin(8 * KIB, "max-age=100");
            let service = layer.clone().layer(origin);
            let (_, body) = fetch(&service, "/big").await;
            assert_eq!(body.len(), 8 * KIB);
            layer.stats()
        })
    });
    let too_large = counter(
        &values,
        "swr_stores_total",
        ("result", "too_large"),
        "toolarge",
    );
    assert_eq!(stats.stores, 0);
    assert_eq!(
        (too_large, stats.store_rejections),
        (1, 1),
        "the 8 KiB body over max_body_bytes counts as too large: {stats:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// SwrCacheBuilder settings
// ---------------------------------------------------------------------------------------------

type Cfg = SwrCache<String, String>;

fn swr(ttl: u64, window: u64) -> Freshness {
    Freshness::new(secs(ttl)).with_stale_while_revalidate(secs(window))
}

/// A loader that counts its calls and answers `v{n}` after `delay`, or fails with "db down"
/// when `fail` says so.
#[derive(Clone, Default)]
struct Db {
    calls: Arc<AtomicUsize>,
    down: Switch,
    hang: Switch,
}

impl Db {
    fn load(&self, freshness: Freshness) -> impl FnOnce() -> DbFuture + Send + 'static {
        let this = self.clone();
        move || {
            Box::pin(async move {
                let n = this.calls.fetch_add(1, Ordering::SeqCst) + 1;
                if this.hang.on() {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                if this.down.on() {
                    return Err("db down".to_owned());
                }
                Ok(Loaded::new(format!("v{n}"), freshness))
            })
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

async fn engine_lock_timeout_case(cache: Cfg, before_ms: u64, after_ms: u64) {
    let db = Db::default();
    db.hang.set(true);
    let leader = tokio::spawn({
        let (cache, load) = (cache.clone(), db.load(fresh(100)));
        async move { cache.get_or_load("k".into(), load).await }
    });
    settle().await;
    db.hang.set(false);
    let waiter = tokio::spawn({
        let (cache, load) = (cache.clone(), db.load(fresh(100)));
        async move { cache.get_or_load("k".into(), load).await }
    });
    settle().await;
    advance_ms(before_ms).await;
    settle().await;
    assert_eq!(db.calls(), 1, "waiting at {before_ms} ms");
    advance_ms(after_ms - before_ms).await;
    settle().await;
    advance_ms(50).await;
    settle().await;
    assert_eq!(db.calls(), 2, "one more load past the lock timeout");
    assert_eq!(waiter.await.unwrap().unwrap().value, "v2");
    leader.abort();
}

#[tokio::test(start_paused = true)]
async fn engine_lock_timeout_default_is_5_s() {
    engine_lock_timeout_case(Cfg::builder().build(), 4_800, 5_200).await;
}

#[tokio::test(start_paused = true)]
async fn engine_lock_timeout_setting_changes_it() {
    engine_lock_timeout_case(Cfg::builder().lock_timeout(secs(1)).build(), 800, 1_200).await;
}

#[tokio::test(start_paused = true)]
async fn engine_lock_timeout_max_waits_for_the_one_load() {
    let cache = Cfg::builder().lock_timeout(Duration::MAX).build();
    let gate = Gate::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let (cache, gate, calls) = (cache.clone(), gate.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load("k".into(), move || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    gate.wait().await;
                    Ok::<_, String>(Loaded::new("v".to_owned(), fresh(60)))
                })
                .await
        }));
    }
    settle().await;
    advance_ms(3_600_000).await;
    gate.open();
    for task in tasks {
        assert_eq!(task.await.expect("no panic").unwrap().value, "v");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

async fn engine_refresh_timeout_case(cache: Cfg, before_ms: u64, after_ms: Option<u64>) {
    let db = Db::default();
    cache.insert("k".into(), "v0".into(), swr(10, 3600));
    advance_ms(11_000).await;
    db.hang.set(true);
    let got = cache
        .get_or_load("k".into(), db.load(fresh(100)))
        .await
        .unwrap();
    assert_eq!((got.status, got.value.as_str()), (Status::Stale, "v0"));
    settle().await; // the refresh task starts
    advance_ms(before_ms).await;
    settle().await;
    assert_eq!(cache.stats().refreshes_timed_out, 0);
    assert!(cache.is_refreshing("k"));
    if let Some(after_ms) = after_ms {
        advance_ms(after_ms - before_ms).await;
        settle().await;
        let stats = cache.stats();
        assert_eq!(stats.refreshes_timed_out, 1, "{stats:?}");
        assert_eq!(stats.refreshes_failed, 1, "{stats:?}");
        assert!(!cache.is_refreshing("k"));
        assert_eq!(cache.get("k").unwrap().value, "v0", "kept");
    }
}

#[tokio::test(start_paused = true)]
async fn engine_refresh_timeout_default_is_30_s() {
    engine_refresh_timeout_case(Cfg::builder().build(), 29_000, Some(31_000)).await;
}

#[tokio::test(start_paused = true)]
async fn engine_refresh_timeout_setting_and_zero_off() {
    engine_refresh_timeout_case(
        Cfg::builder().refresh_timeout(secs(3)).build(),
        2_800,
        Some(3_200),
    )
    .await;
    engine_refresh_timeout_case(
        Cfg::builder().refresh_timeout(Duration::ZERO).build(),
        600_000,
        None,
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn engine_refresh_timeout_max_does_not_panic() {
    engine_refresh_timeout_case(
        Cfg::builder().refresh_timeout(Duration::MAX).build(),
        600_000,
        None,
    )
    .await;
}

async fn engine_backoff_case(cache: Cfg, quiet_ms: u64, retry_ms: u64) {
    let db = Db::default();
    cache.insert("k".into(), "v0".into(), swr(10, 3600));
    advance_ms(11_000).await;
    db.down.set(true);
    cache
        .get_or_load("k".into(), db.load(fresh(100)))
        .await
        .unwrap();
    settle().await;
    advance_ms(50).await;
    settle().await;
    assert_eq!(cache.stats().refreshes_failed, 1);
    advance_ms(quiet_ms).await;
    let got = cache
        .get_or_load("k".into(), db.load(fresh(100)))
        .await
        .unwrap();
    assert_eq!(got.value, "v0");
    assert_eq!(
        cache.stats().refreshes_started,
        1,
        "backing off at {quiet_ms} ms"
    );
    advance_ms(retry_ms - quiet_ms).await;
    cache
        .get_or_load("k".into(), db.load(fresh(100)))
        .await
        .unwrap();
    assert_eq!(
        cache.stats().refreshes_started,
        2,
        "retried by {retry_ms} ms"
    );
}

#[tokio::test(start_paused = true)]
async fn engine_refresh_backoff_default_is_about_1_s() {
    engine_backoff_case(Cfg::builder().build(), 400, 1_100).await;
}

#[tokio::test(start_paused = true)]
async fn engine_refresh_backoff_setting_changes_it() {
    engine_backoff_case(
        Cfg::builder().refresh_backoff(secs(20), secs(60)).build(),
        9_000,
        20_100,
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn engine_circuit_breaker_setting_default_and_zero() {
    for (cache, failures, paused) in [
        (Cfg::builder().circuit_breaker(3, secs(30)).build(), 3, true),
        (
            Cfg::builder().circuit_breaker(3, secs(30)).build(),
            2,
            false,
        ),
        (Cfg::builder().build(), 9, false),
        (Cfg::builder().build(), 10, true),
        (
            Cfg::builder().circuit_breaker(0, secs(30)).build(),
            20,
            false,
        ),
    ] {
        let db = Db::default();
        for i in 0..failures {
            cache.insert(format!("k{i}"), "v0".into(), swr(10, 3600));
        }
        advance_ms(11_000).await;
        db.down.set(true);
        for i in 0..failures {
            let got = cache
                .get_or_load(format!("k{i}"), db.load(fresh(100)))
                .await
                .unwrap();
            assert_eq!(got.status, Status::Stale);
            settle().await;
            advance_ms(50).await;
            settle().await;
        }
        let stats = cache.stats();
        assert_eq!(stats.refreshes_failed, failures as u64, "{stats:?}");
        assert_eq!(
            stats.refreshes_paused, paused,
            "{failures} failures: {stats:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn engine_ttl_jitter_spreads_fresh_lifetimes_within_the_fraction() {
    let plain = Cfg::builder().build();
    let jittered = Cfg::builder().ttl_jitter(0.5).build();
    let mut spread = std::collections::BTreeSet::new();
    for i in 0..40 {
        for cache in [&plain, &jittered] {
            cache.insert(format!("k{i}"), "v".into(), fresh(100));
        }
        let l = plain.lifetime(&format!("k{i}")).unwrap();
        assert_eq!(
            l.fresh_until.duration_since(l.stored_at).unwrap(),
            secs(100)
        );
        let l = jittered.lifetime(&format!("k{i}")).unwrap();
        let ttl = l.fresh_until.duration_since(l.stored_at).unwrap();
        assert!(ttl >= secs(50) && ttl <= secs(150), "{ttl:?}");
        spread.insert(ttl.as_millis());
    }
    assert!(spread.len() > 10, "lifetimes differ: {spread:?}");
}

#[tokio::test(start_paused = true)]
async fn engine_ttl_jitter_hostile_values_store_usable_entries() {
    for value in [f64::NAN, -1.0, 10.0, f64::INFINITY] {
        let cache = Cfg::builder()
            .ttl_jitter(value)
            .early_refresh(value)
            .build();
        assert!(cache.insert("k".into(), "v".into(), fresh(100)), "{value}");
        let got = cache.get("k").expect("stored");
        assert_eq!(got.value, "v");
        let l = cache.lifetime("k").unwrap();
        assert!(l.fresh_until >= l.stored_at, "{value}: {l:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn engine_early_refresh_refreshes_fresh_values_only_when_on() {
    for (cache, expect) in [
        (Cfg::builder().build(), false),
        (Cfg::builder().early_refresh(1000.0).build(), true),
    ] {
        let load = || async {
            Ok::<_, String>(Loaded::new("v".to_owned(), fresh(60)).with_load_time(secs(1)))
        };
        cache.get_or_load("k".into(), load).await.unwrap();
        for _ in 0..40 {
            advance_ms(1_000).await;
            let got = cache.get_or_load("k".into(), load).await.unwrap();
            assert!(matches!(got.status, Status::Fresh), "{:?}", got.status);
            settle().await;
        }
        assert_eq!(
            cache.stats().refreshes_started > 0,
            expect,
            "{:?}",
            cache.stats()
        );
    }
}

#[tokio::test(start_paused = true)]
async fn engine_remember_failures_default_1_s_setting_and_zero() {
    for (cache, at_ms, remembered) in [
        (Cfg::builder().build(), 500, true),
        (Cfg::builder().build(), 1_200, false),
        (
            Cfg::builder().remember_failures(secs(10)).build(),
            9_000,
            true,
        ),
        (
            Cfg::builder().remember_failures(Duration::ZERO).build(),
            10,
            false,
        ),
    ] {
        let db = Db::default();
        db.down.set(true);
        let err = cache.get_or_load("k".into(), db.load(fresh(60))).await;
        assert_eq!(*err.unwrap_err(), "db down");
        advance_ms(at_ms).await;
        let err = cache.get_or_load("k".into(), db.load(fresh(60))).await;
        assert_eq!(*err.unwrap_err(), "db down");
        assert_eq!(db.calls(), if remembered { 1 } else { 2 }, "at {at_ms} ms");
        assert_eq!(cache.stats().failure_hits, u64::from(remembered));
    }
}

#[tokio::test(start_paused = true)]
async fn engine_remember_failures_max_does_not_panic() {
    let cache = Cfg::builder().remember_failures(Duration::MAX).build();
    let db = Db::default();
    db.down.set(true);
    let err = cache.get_or_load("k".into(), db.load(fresh(60))).await;
    assert_eq!(*err.unwrap_err(), "db down");
    let err = cache.get_or_load("k".into(), db.load(fresh(60))).await;
    assert_eq!(*err.unwrap_err(), "db down");
    assert_eq!(db.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn engine_stale_alert_age_warns_only_when_set_and_exceeded() {
    let events = Events::default();
    let _collecting = events.install();
    for (cache, warn) in [
        (Cfg::builder().build(), false),
        (Cfg::builder().stale_alert_age(secs(60)).build(), false),
        (Cfg::builder().stale_alert_age(secs(5)).build(), true),
        (
            Cfg::builder().stale_alert_age(Duration::ZERO).build(),
            false,
        ),
    ] {
        events.0.lock().unwrap().clear();
        let gate = Gate::new();
        cache.insert("k".into(), "v0".into(), swr(10, 3600));
        advance_ms(11_000).await;
        let g = gate.clone();
        let got = cache
            .get_or_load("k".into(), move || async move {
                g.wait().await;
                Ok::<_, String>(Loaded::new("v1".to_owned(), fresh(60)))
            })
            .await
            .unwrap();
        assert_eq!(got.status, Status::Stale);
        let warnings = events.at(tracing::Level::WARN);
        assert_eq!(!warnings.is_empty(), warn, "{warnings:?}");
        gate.open();
        settle().await;
    }
}

#[cfg(feature = "metrics")]
#[test]
fn engine_name_is_the_cache_label_of_metrics_default_swr() {
    for (name, label) in [(None, "swr"), (Some("judges"), "judges"), (Some(""), "")] {
        let (stats, values) = with_metrics(|| {
            paused_runtime().block_on(async {
                let builder = Cfg::builder();
                let cache = match name {
                    Some(name) => builder.name(name),
                    None => builder,
                }
                .build();
                let load = || async { Ok::<_, String>(Loaded::new("v".to_owned(), fresh(60))) };
                cache.get_or_load("k".into(), load).await.unwrap();
                cache.get_or_load("k".into(), load).await.unwrap();
                cache.stats()
            })
        });
        assert_eq!(
            counter(&values, "swr_requests_total", ("status", "miss"), label),
            stats.misses,
            "{name:?}: {values:?}"
        );
        assert_eq!(
            counter(&values, "swr_requests_total", ("status", "hit"), label),
            stats.fresh_hits
        );
        assert_eq!(gauge(&values, "swr_entries", label), Some(1.0));
    }
}

/// A shared tier whose reads never answer.
struct HangingTier;

impl SharedTier<String, String> for HangingTier {
    fn get<'a>(&'a self, _key: &'a String) -> TierFuture<'a, Option<(String, Lifetime)>> {
        Box::pin(std::future::pending())
    }
    fn put<'a>(
        &'a self,
        _key: &'a String,
        _value: &'a String,
        _lifetime: &'a Lifetime,
    ) -> TierFuture<'a, ()> {
        Box::pin(async {})
    }
    fn remove<'a>(&'a self, _key: &'a String) -> TierFuture<'a, ()> {
        Box::pin(async {})
    }
}

async fn tier_case(cache: Cfg, before_ms: u64, after_ms: Option<u64>) {
    let db = Db::default();
    let task = tokio::spawn({
        let (cache, load) = (cache.clone(), db.load(fresh(60)));
        async move { cache.get_or_load("k".into(), load).await }
    });
    settle().await;
    advance_ms(before_ms).await;
    settle().await;
    assert_eq!(
        db.calls(),
        0,
        "still waiting for the tier at {before_ms} ms"
    );
    if let Some(after_ms) = after_ms {
        advance_ms(after_ms - before_ms).await;
        settle().await;
        advance_ms(50).await;
        let got = task.await.unwrap().unwrap();
        assert_eq!((got.status, got.value.as_str()), (Status::Miss, "v1"));
    } else {
        assert!(!task.is_finished());
        task.abort();
    }
}

#[tokio::test(start_paused = true)]
async fn engine_shared_tier_timeout_default_is_50_ms() {
    let cache = Cfg::builder().shared_tier(Arc::new(HangingTier)).build();
    tier_case(cache, 40, Some(60)).await;
}

#[tokio::test(start_paused = true)]
async fn engine_shared_tier_timeout_setting_and_zero_off() {
    let cache = Cfg::builder()
        .shared_tier(Arc::new(HangingTier))
        .shared_tier_timeout(secs(2))
        .build();
    tier_case(cache, 1_900, Some(2_100)).await;
    let cache = Cfg::builder()
        .shared_tier(Arc::new(HangingTier))
        .shared_tier_timeout(Duration::ZERO)
        .build();
    tier_case(cache, 600_000, None).await;
}

// ---------------------------------------------------------------------------------------------
// The engine without HTTP: configuration from a database
// ---------------------------------------------------------------------------------------------

fn judges() -> Freshness {
    // 5 minutes fresh, served stale while one refresh runs for a minute, an hour of fallback.
    Freshness::new(secs(300))
        .with_stale_while_revalidate(secs(60))
        .with_stale_if_error(secs(3600))
}

#[tokio::test(start_paused = true)]
async fn config_cache_cold_start_with_the_database_down_is_an_error_not_a_value() {
    let cache = Cfg::builder().capacity_bytes(1 << 20).build();
    let db = Db::default();
    db.down.set(true);
    let err = cache
        .get_or_load("judges:en".into(), db.load(judges()))
        .await;
    assert_eq!(*err.unwrap_err(), "db down");
    assert!(cache.get("judges:en").is_none());
    let stats = cache.stats();
    assert_eq!((stats.loads_failed, stats.entries, stats.stores), (1, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn config_cache_fresh_then_stale_with_one_background_refresh_for_many_callers() {
    let cache = Cfg::builder().capacity_bytes(1 << 20).build();
    let db = Db::default();
    let first = cache
        .get_or_load("judges:en".into(), db.load(judges()))
        .await
        .unwrap();
    assert_eq!((first.status, first.value.as_str()), (Status::Miss, "v1"));
    advance_ms(299_000).await;
    let fresh_hit = cache
        .get_or_load("judges:en".into(), db.load(judges()))
        .await
        .unwrap();
    assert_eq!(fresh_hit.status, Status::Fresh);
    assert!(!fresh_hit.is_stale());
    assert_eq!(fresh_hit.age, secs(299));
    advance_ms(2_000).await;

    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (cache, load) = (cache.clone(), db.load(judges()));
        tasks.push(tokio::spawn(async move {
            cache.get_or_load("judges:en".into(), load).await.unwrap()
        }));
    }
    for task in tasks {
        let got = task.await.unwrap();
        assert_eq!((got.status, got.value.as_str()), (Status::Stale, "v1"));
        assert!(got.is_stale());
    }
    assert!(cache.is_refreshing("judges:en"));
    settle().await;
    advance_ms(50).await;
    settle().await;
    assert_eq!(
        db.calls(),
        2,
        "ONE background refresh for ten stale callers"
    );
    let now = cache
        .get_or_load("judges:en".into(), db.load(judges()))
        .await
        .unwrap();
    assert_eq!((now.status, now.value.as_str()), (Status::Fresh, "v2"));
    let stats = cache.stats();
    assert_eq!(stats.misses, 1);
    assert_eq!(stats.fresh_hits, 2);
    assert_eq!(stats.stale_hits, 10);
    assert_eq!(stats.refreshes_started, 1);
    assert_eq!(stats.refreshes_succeeded, 1);
    assert_eq!(stats.stores, 2);
    assert_eq!(stats.entries, 1);
}

#[tokio::test(start_paused = true)]
async fn config_cache_database_errors_keep_the_last_good_value() {
    let events = Events::default();
    let _collecting = events.install();
    let cache = Cfg::builder().capacity_bytes(1 << 20).build();
    let db = Db::default();
    cache
        .get_or_load("judges:en".into(), db.load(judges()))
        .await
        .unwrap();
    db.down.set(true);

    // Inside the stale-while-revalidate window: stale at once, the failing refresh keeps v1.
    advance_ms(330_000).await;
    let got = cache
        .get_or_load("judges:en".into(), db.load(judges()))
        .await
        .unwrap();
    assert_eq!((got.status, got.value.as_str()), (Status::Stale, "v1"));
    settle().await;
    advance_ms(50).await;
    settle().await;
    assert_eq!(cache.stats().refreshes_failed, 1);
    assert_eq!(cache.get("judges:en").unwrap().value, "v1");

    // Past it but inside stale-if-error: the caller waits for the load, then gets v1.
    advance_ms(60_000).await;
    let got = cache
        .get_or_load("judges:en".into(), db.load(judges()))
        .await
        .unwrap();
    assert_eq!(
        (got.status, got.value.as_str()),
        (Status::StaleIfError, "v1")
    );
    assert!(
        !events.at(tracing::Level::WARN).is_empty(),
        "a warning is logged when falling back"
    );

    // The database recovers: fresh data again.
    db.down.set(false);
    advance_ms(2_000).await; // past the remembered failure
    let got = cache
        .get_or_load("judges:en".into(), db.load(judges()))
        .await
        .unwrap();
    assert_eq!(got.status, Status::Miss);
    assert_ne!(got.value, "v1");
    let stats = cache.stats();
    assert_eq!(stats.stale_if_error, 1, "{stats:?}");
    assert_eq!(stats.loads_failed, 1, "{stats:?}");

    // Past stale-if-error with the database down: the error.
    db.down.set(true);
    advance_ms(300_000 + 3_600_000 + 1_000).await;
    let err = cache
        .get_or_load("judges:en".into(), db.load(judges()))
        .await;
    assert_eq!(*err.unwrap_err(), "db down");
}

#[tokio::test(start_paused = true)]
async fn config_cache_invalidation_remove_mark_stale_and_clear() {
    let cache = Cfg::builder().capacity_bytes(1 << 20).build();
    let db = Db::default();
    for lang in ["en", "fr", "de"] {
        cache
            .get_or_load(format!("judges:{lang}"), db.load(judges()))
            .await
            .unwrap();
    }
    assert_eq!(cache.len(), 3);

    assert!(cache.remove("judges:en"));
    assert!(!cache.remove("judges:en"));
    let got = cache
        .get_or_load("judges:en".into(), db.load(judges()))
        .await
        .unwrap();
    assert_eq!((got.status, got.value.as_str()), (Status::Miss, "v4"));

    assert!(cache.mark_stale("judges:fr"));
    let got = cache
        .get_or_load("judges:fr".into(), db.load(judges()))
        .await
        .unwrap();
    assert_eq!((got.status, got.value.as_str()), (Status::Stale, "v2"));
    settle().await;
    advance_ms(50).await;
    settle().await;
    assert_eq!(cache.get("judges:fr").unwrap().value, "v5");

    assert_eq!(cache.remove_if(|k| k.ends_with(":de")), 1);
    assert!(cache.get("judges:de").is_none());
    cache.clear();
    assert!(cache.is_empty());
    assert_eq!(cache.stats().entries, 0);
    assert_eq!(cache.stats().bytes, 0);
}

#[tokio::test(start_paused = true)]
async fn config_cache_removal_during_a_load_fences_it() {
    let cache = Cfg::builder().build();
    let gate = Gate::new();
    let g = gate.clone();
    let task = tokio::spawn({
        let cache = cache.clone();
        async move {
            cache
                .get_or_load("k".into(), move || async move {
                    g.wait().await;
                    Ok::<_, String>(Loaded::new("old".to_owned(), fresh(60)))
                })
                .await
        }
    });
    settle().await;
    cache.remove("k");
    gate.open();
    task.await.unwrap().unwrap();
    assert!(
        cache.get("k").is_none(),
        "a load under way during remove stores nothing"
    );
}

// ---------------------------------------------------------------------------------------------
// More on the budget: freeing, replacing, stale entries under pressure, shared settings
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn purges_and_clear_give_the_bytes_back() {
    let layer = SwrLayer::new();
    let (origin, _) = sized_origin(10 * KIB, "max-age=100");
    let service = layer.clone().layer(origin);
    for i in 0..5 {
        fetch(&service, &format!("/p/{i}")).await;
    }
    let full = layer.stats();
    assert_eq!(full.entries, 5);
    assert!(full.bytes >= 50 * KIB as u64, "{full:?}");
    let handle = layer.handle();
    assert_eq!(handle.purge("/p/0"), 1);
    let after_one = layer.stats();
    assert_eq!(after_one.entries, 4);
    assert!(
        full.bytes - after_one.bytes >= 10 * KIB as u64,
        "{full:?} -> {after_one:?}"
    );
    assert_eq!(handle.purge_prefix("/p/"), 4);
    let empty = layer.stats();
    assert_eq!(empty.entries, 0);
    assert!(empty.bytes < 10 * KIB as u64, "{empty:?}");
    for i in 0..5 {
        fetch(&service, &format!("/p/{i}")).await;
    }
    handle.clear();
    let cleared = layer.stats();
    assert_eq!(cleared.entries, 0);
    assert!(cleared.bytes < 10 * KIB as u64, "{cleared:?}");
    assert_eq!(cleared.evictions, 0, "purges are not evictions");
}

#[tokio::test(start_paused = true)]
async fn a_refresh_with_a_bigger_body_is_accounted_at_its_new_size() {
    let layer = SwrLayer::new();
    let (origin, _) = origin(|n, _| async move {
        let len = if n == 1 { KIB } else { 50 * KIB };
        Ok(reply_cc(patterned_bytes(len), SWR_10_60))
    });
    let service = layer.clone().layer(origin);
    fetch(&service, "/grow").await;
    let small = layer.stats().bytes;
    advance_ms(11_000).await;
    assert_eq!(fetch(&service, "/grow").await.0, CacheStatus::Stale);
    settle().await;
    let (status, body) = fetch(&service, "/grow").await;
    assert_eq!((status, body.len()), (CacheStatus::Fresh, 50 * KIB));
    let big = layer.stats();
    assert_eq!(big.entries, 1);
    assert!(big.bytes >= small + 49 * KIB as u64, "{small} -> {big:?}");
    assert_eq!(big.evictions, 0, "{big:?}");
}

#[tokio::test(start_paused = true)]
async fn stale_entries_under_pressure_are_answered_or_reloaded_within_the_budget() {
    let layer = SwrLayer::new().capacity_bytes(32 * KIB as u64);
    let (origin, calls) = sized_origin(2 * KIB, SWR_10_60);
    let service = layer.clone().layer(origin);
    for i in 0..5 {
        fetch(&service, &format!("/old/{i}")).await;
    }
    advance_ms(11_000).await;
    let (flood, _) = sized_origin(2 * KIB, "max-age=1000");
    let flood = SwrLayer::new().share_memory_with(&layer).layer(flood);
    for i in 0..60 {
        fetch(&flood, &format!("/new/{i}")).await;
    }
    let stats = layer.stats();
    assert!(stats.evictions > 0, "{stats:?}");
    assert!(stats.bytes <= stats.capacity_bytes, "{stats:?}");
    let before = calls.get();
    for i in 0..5 {
        let (status, body) = fetch(&service, &format!("/old/{i}")).await;
        assert_eq!(body, patterned_bytes(2 * KIB));
        assert!(
            matches!(status, CacheStatus::Miss | CacheStatus::Stale),
            "{status:?}"
        );
    }
    // Which entries go is quick_cache's choice (not documented); whatever went is reloaded
    // and whatever stayed is answered stale and refreshed: one origin call each.
    assert_eq!(calls.get(), before + 5);
    let stats = layer.stats();
    assert!(stats.bytes <= stats.capacity_bytes, "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn concurrent_readers_of_an_over_limit_unknown_length_fill_all_get_the_whole_body() {
    let layer = SwrLayer::new().max_body_bytes(4 * KIB);
    let (origin, calls, feeds) = fed_origin("max-age=100", None);
    let service = layer.clone().layer(origin);
    let first = service.clone().oneshot(get("/fill")).await.unwrap();
    feeds.send(1, patterned_bytes(KIB)).await;
    let second = service.clone().oneshot(get("/fill")).await.unwrap();
    let readers = [first, second].map(|response| tokio::spawn(body(response)));
    let all = patterned_bytes(12 * KIB);
    for i in 1..12 {
        feeds.send(1, all.slice(i * KIB..(i + 1) * KIB)).await;
        settle().await;
    }
    feeds.end(1);
    let mut expected = Vec::from(&patterned_bytes(KIB)[..]);
    expected.extend_from_slice(&all[KIB..]);
    for reader in readers {
        let got = reader
            .await
            .unwrap()
            .expect("readers keeping pace get no body error");
        assert_eq!(got, expected);
    }
    assert_eq!(
        calls.get(),
        1,
        "the second request read the first one's fill"
    );
    settle().await;
    assert_eq!(layer.stats().entries, 0, "over the limit: not stored");
}

#[tokio::test(start_paused = true)]
async fn max_body_bytes_usize_max_stores_normally() {
    let (origin, calls) = sized_origin(KIB, "max-age=100");
    let service = SwrLayer::new().max_body_bytes(usize::MAX).layer(origin);
    fetch(&service, "/m").await;
    assert_eq!(fetch(&service, "/m").await.0, CacheStatus::Fresh);
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_layer_sharing_memory_uses_the_owners_store_settings() {
    let events = Events::default();
    let _collecting = events.install();
    let budget = SwrLayer::new()
        .capacity_bytes(1 << 20)
        .lock_timeout(secs(1));
    let sharer = SwrLayer::new()
        .share_memory_with(&budget)
        .lock_timeout(secs(30))
        .capacity_bytes(1 << 30);
    assert_eq!(sharer.stats().capacity_bytes, 1 << 20);
    lock_timeout_case(sharer, 800, 1_200).await;
}

#[tokio::test(start_paused = true)]
async fn store_settings_on_a_sharing_layer_log_a_warning_by_first_use() {
    let events = Events::default();
    let _collecting = events.install();
    let budget = SwrLayer::new();
    let sharer = SwrLayer::new()
        .share_memory_with(&budget)
        .lock_timeout(secs(30))
        .capacity_bytes(1 << 30);
    let (origin, _) = plain_origin();
    fetch(&sharer.clone().layer(origin), "/w").await;
    let _ = sharer.stats();
    assert!(
        !events.at(tracing::Level::WARN).is_empty(),
        "setting store settings on a sharing layer logs a warning"
    );
}

#[tokio::test(start_paused = true)]
async fn shared_cache_sharing_new_layers_memory_never_remembers_failures() {
    let owner = SwrLayer::new();
    let (status, calls) = remembered(SwrLayer::shared_cache().share_memory_with(&owner), 100).await;
    assert_ne!(status, CacheStatus::FailureHit);
    assert_eq!(calls, 2);
}

#[tokio::test(start_paused = true)]
async fn boolean_settings_called_twice_take_the_last_value() {
    let (origin, _) = plain_origin();
    let service = SwrLayer::new()
        .x_cache_header(true)
        .x_cache_header(false)
        .cache_info_extension(false)
        .cache_info_extension(true)
        .layer(origin);
    let response = service.clone().oneshot(get("/b")).await.unwrap();
    assert!(!response.headers().contains_key("x-cache"));
    assert!(response.extensions().get::<CacheInfo>().is_some());
}

#[tokio::test(start_paused = true)]
async fn x_cache_says_stale_and_bypass() {
    let gate = Gate::new();
    let (origin, _) = gated_after_first(&gate, SWR_10_60);
    let service = SwrLayer::new().x_cache_header(true).layer(origin);
    fetch(&service, "/x").await;
    advance_ms(11_000).await;
    let stale = service.clone().oneshot(get("/x")).await.unwrap();
    assert_eq!(header_value(&stale, "x-cache").as_deref(), Some("STALE"));
    body(stale).await.unwrap();
    gate.open();
    let post = service
        .clone()
        .oneshot(request(Method::POST, "/y"))
        .await
        .unwrap();
    assert_eq!(header_value(&post, "x-cache").as_deref(), Some("BYPASS"));
}

#[tokio::test(start_paused = true)]
async fn circuit_breaker_default_cooldown_is_30_s() {
    let (stats, later) = failing_refreshes(SwrLayer::new(), 10).await;
    assert!(stats.refreshes_paused);
    advance_ms(28_000).await;
    settle().await;
    assert!(later().refreshes_paused, "still paused at 28 s");
    advance_ms(3_000).await;
    settle().await;
    assert!(!later().refreshes_paused, "over at 31 s");
}

#[tokio::test(start_paused = true)]
async fn engine_replacing_a_key_does_not_grow_its_bytes_nor_count_an_eviction() {
    let cache: SwrCache<String, Vec<u8>> = SwrCache::builder()
        .weigher(|_, v: &Vec<u8>| v.len() as u64)
        .build();
    cache.insert("k".into(), vec![0; 10 * KIB], fresh(60));
    let once = cache.stats();
    for _ in 0..10 {
        cache.insert("k".into(), vec![0; 10 * KIB], fresh(60));
    }
    let stats = cache.stats();
    assert_eq!((stats.entries, stats.bytes), (1, once.bytes));
    assert_eq!(stats.evictions, 0);
    assert_eq!(stats.stores, 11);
    cache.insert("k".into(), vec![0; 20 * KIB], fresh(60));
    assert_eq!(cache.stats().bytes, once.bytes + 10 * KIB as u64);
    cache.remove("k");
    assert_eq!(cache.stats().bytes, 0);
}

#[tokio::test(start_paused = true)]
async fn engine_insert_with_lifetime_rejects_heavy_and_dead_values() {
    let cache: SwrCache<String, Vec<u8>> = SwrCache::builder()
        .largest_entry_bytes(KIB as u64)
        .weigher(|_, v: &Vec<u8>| v.len() as u64)
        .build();
    cache.insert("k".into(), vec![1; 10], fresh(60));
    let lifetime = cache.lifetime("k").unwrap();
    let heavy = vec![0; cache.max_entry_bytes() as usize + 1];
    assert!(!cache.insert_with_lifetime("k".into(), heavy, lifetime));
    assert_eq!(cache.get("k").unwrap().value, vec![1; 10]);
    let mut dead = lifetime;
    let past = std::time::SystemTime::now() - secs(3600);
    dead.stored_at = past;
    dead.fresh_until = past;
    dead.stale_until = past;
    dead.error_until = past;
    dead.retain_until = past;
    assert!(!cache.insert_with_lifetime("d".into(), vec![1], dead));
    assert!(cache.get("d").is_none());
    assert!(cache.insert_with_lifetime("l".into(), vec![2; 10], lifetime));
    assert_eq!(cache.get("l").unwrap().value, vec![2; 10]);
}

#[tokio::test(start_paused = true)]
async fn engine_shutdown_stops_new_refreshes_and_keeps_answering() {
    let cache = Cfg::builder().build();
    let db = Db::default();
    cache.insert("k".into(), "v0".into(), swr(10, 3600));
    assert!(cache.shutdown(secs(1)).await);
    advance_ms(11_000).await;
    let got = cache
        .get_or_load("k".into(), db.load(fresh(60)))
        .await
        .unwrap();
    assert_eq!((got.status, got.value.as_str()), (Status::Stale, "v0"));
    settle().await;
    assert_eq!(db.calls(), 0, "no refresh after shutdown");
    assert_eq!(cache.stats().refreshes_started, 0);
}

#[tokio::test(start_paused = true)]
async fn engine_default_largest_entry_in_a_1_mib_cache_is_nearly_the_whole_budget() {
    // examples/config_cache.rs: a 1 MiB budget with the default largest entry (1 MiB): one
    // shard, an entry up to the budget less a margin and the per-entry overhead.
    let cache: SwrCache<String, Vec<u8>> = SwrCache::builder()
        .capacity_bytes(1 << 20)
        .weigher(|_, v: &Vec<u8>| v.len() as u64)
        .build();
    let most = cache.max_entry_bytes();
    assert!(
        ((1 << 20) * 9 / 10..1 << 20).contains(&most),
        "max_entry_bytes {most}"
    );
    assert!(cache.insert("most".into(), vec![0; most as usize], fresh(60)));
    assert!(!cache.insert("mib".into(), vec![0; 1 << 20], fresh(60)));
    assert!(
        cache.get("most").is_some(),
        "a rejected insert keeps what was there"
    );
}

#[tokio::test(start_paused = true)]
async fn layer_accounting_per_entry_is_the_body_plus_a_plausible_overhead() {
    let layer = SwrLayer::new().capacity_bytes(1 << 20);
    let (origin, _) = sized_origin(KIB, "max-age=100");
    let service = layer.clone().layer(origin);
    for i in 0..100 {
        fetch(&service, &format!("/{i}")).await;
    }
    let stats = layer.stats();
    assert_eq!((stats.entries, stats.evictions), (100, 0));
    let per_entry = stats.bytes / 100;
    // README: ~1,133 B per entry beyond a 1 KiB body, the accounting within 4 % of it.
    assert!(
        (KIB as u64 + 300..=KIB as u64 + 3000).contains(&per_entry),
        "{per_entry} B per 1 KiB entry: {stats:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn lock_and_refresh_timeouts_after_first_use_are_not_applied() {
    let used = SwrLayer::new();
    let _ = used.stats(); // first use
    lock_timeout_case(used.clone().lock_timeout(secs(1)), 4_800, 5_200).await;
    let used = SwrLayer::new();
    let _ = used.handle();
    refresh_timeout_case(used.refresh_timeout(secs(2)), 29_000, 31_000).await;
}

#[tokio::test(start_paused = true)]
async fn an_over_limit_fill_ends_its_flight_so_later_requests_ask_the_origin() {
    let layer = SwrLayer::new().max_body_bytes(4 * KIB);
    let (origin, calls, feeds) = fed_origin("max-age=100", None);
    let service = layer.clone().layer(origin);
    let first = service.clone().oneshot(get("/o")).await.unwrap();
    let reader = tokio::spawn(body(first));
    for _ in 0..6 {
        feeds.send(1, patterned_bytes(KIB)).await;
        settle().await;
    }
    // Past the limit: a new request is not a reader of this fill.
    let second = tokio::spawn({
        let service = service.clone();
        async move { service.oneshot(get("/o")).await.unwrap() }
    });
    settle().await;
    assert_eq!(calls.get(), 2, "later requests go to the origin");
    feeds.end(1);
    let got = reader.await.unwrap().unwrap();
    assert_eq!(got.len(), 6 * KIB, "the first reader gets every byte");
    feeds.send(2, "second").await;
    feeds.end(2);
    let second = second.await.unwrap();
    assert_eq!(&body(second).await.unwrap()[..], b"second");
}

#[tokio::test(start_paused = true)]
async fn a_reader_far_behind_an_over_limit_fill_gets_an_error_not_a_short_body() {
    let layer = SwrLayer::new().max_body_bytes(4 * KIB);
    let (origin, _, feeds) = fed_origin("max-age=100", None);
    let service = layer.clone().layer(origin);
    let fast = service.clone().oneshot(get("/f")).await.unwrap();
    feeds.send(1, patterned_bytes(KIB)).await;
    let slow = service.clone().oneshot(get("/f")).await.unwrap();
    let fast = tokio::spawn(body(fast));
    let all = patterned_bytes(16 * KIB);
    let feeder = tokio::spawn({
        let feeds = feeds.clone();
        async move {
            for i in 1..16 {
                feeds.send(1, all.slice(i * KIB..(i + 1) * KIB)).await;
            }
            feeds.end(1);
        }
    });
    // Let the fast reader run far ahead of the slow one, which reads nothing yet.
    for _ in 0..50 {
        settle().await;
    }
    let slow = body(slow).await;
    let fast = fast.await.unwrap();
    feeder.abort();
    // Documented: more than max_body_bytes behind the fastest reader is a body error; it is
    // never a short body presented as complete.
    if let Ok(bytes) = slow {
        assert_eq!(bytes.len(), 16 * KIB, "a short body as if complete");
    }
    // "one that reads slowly slows no one": the fast reader gets every byte.
    let bytes = fast.expect("the fast reader gets no error");
    let mut expected = Vec::from(&patterned_bytes(KIB)[..]);
    expected.extend_from_slice(&patterned_bytes(16 * KIB)[KIB..]);
    assert_eq!(&bytes[..], &expected[..]);
}

#[tokio::test(start_paused = true)]
async fn engine_name_is_on_every_warning() {
    let events = Events::default();
    let _collecting = events.install();
    let cache = Cfg::builder().name("judges").build();
    let db = Db::default();
    cache.insert(
        "k".into(),
        "v0".into(),
        swr(10, 3600).with_stale_if_error(secs(3600)),
    );
    advance_ms(11_000).await;
    db.down.set(true);
    cache
        .get_or_load("k".into(), db.load(fresh(60)))
        .await
        .unwrap(); // failing refresh
    settle().await;
    advance_ms(50).await;
    settle().await;
    cache.mark_stale("k");
    advance_ms(4_000_000).await;
    let _ = cache.get_or_load("k".into(), db.load(fresh(60))).await; // failing load
    let warnings = events.at(tracing::Level::WARN);
    assert!(!warnings.is_empty(), "a failed refresh is a warning");
    for warning in &warnings {
        assert_eq!(
            warning.fields.get("cache").map(|c| c.trim_matches('"')),
            Some("judges"),
            "{warning:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn engine_get_reports_fresh_stale_expired_without_loading() {
    let cache = Cfg::builder().build();
    cache.insert(
        "k".into(),
        "v".into(),
        swr(10, 10).with_stale_if_error(secs(100)),
    );
    assert_eq!(cache.get("k").unwrap().status, Status::Fresh);
    advance_ms(15_000).await;
    let stale = cache.get("k").unwrap();
    assert_eq!(stale.status, Status::Stale);
    assert!(!stale.refreshing, "get refreshes nothing");
    advance_ms(10_000).await; // 25 s: past the window, inside stale-if-error
    assert_eq!(cache.get("k").unwrap().status, Status::Expired);
    advance_ms(100_000).await; // past every deadline
    assert!(cache.get("k").is_none());
    assert_eq!(cache.stats().refreshes_started, 0);
}

#[tokio::test(start_paused = true)]
async fn shared_cache_serves_stale_only_as_the_response_or_an_explicit_setting_allows() {
    let (origin, calls) = sized_origin(3, "max-age=10");
    let service = SwrLayer::shared_cache().layer(origin);
    fetch(&service, "/s").await;
    advance_ms(11_000).await;
    assert_eq!(fetch(&service, "/s").await.0, CacheStatus::Miss);
    assert_eq!(calls.get(), 2, "no default stale window in shared_cache");

    let (origin, _) = sized_origin(3, "max-age=10");
    let service = SwrLayer::shared_cache()
        .stale_while_revalidate(secs(60))
        .layer(origin);
    fetch(&service, "/s").await;
    advance_ms(11_000).await;
    assert_eq!(fetch(&service, "/s").await.0, CacheStatus::Stale);

    let (origin, _) = sized_origin(3, "max-age=10");
    let service = SwrLayer::new().layer(origin);
    fetch(&service, "/s").await;
    advance_ms(11_000).await;
    assert_eq!(
        fetch(&service, "/s").await.0,
        CacheStatus::Stale,
        "new(): the default 120 s window applies"
    );
}

#[tokio::test(start_paused = true)]
async fn ignore_origin_freshness_still_never_stores_no_store() {
    let (origin, calls) = sized_origin(3, "no-store");
    let service = SwrLayer::new().ignore_origin_freshness(true).layer(origin);
    fetch(&service, "/ns").await;
    fetch(&service, "/ns").await;
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn origin_timeout_does_not_cut_a_miss_without_a_stale_entry() {
    let (origin, _) = origin(|_, _| async {
        tokio::time::sleep(secs(120)).await;
        Ok(reply("slow"))
    });
    let service = SwrLayer::new().origin_timeout(secs(1)).layer(origin);
    let task = tokio::spawn({
        let service = service.clone();
        async move { call(&service, get("/slow")).await.unwrap() }
    });
    settle().await;
    advance_ms(60_000).await;
    settle().await;
    assert!(!task.is_finished(), "the origin's own answer is awaited");
    advance_ms(61_000).await;
    let (status, body) = task.await.unwrap();
    assert_eq!((status, &body[..]), (CacheStatus::Miss, &b"slow"[..]));
}

#[tokio::test(start_paused = true)]
async fn remembered_failures_are_not_shared_when_private() {
    let (origin, calls) =
        origin(|_, _| async { Ok(respond(503, "down", &[("cache-control", "private")])) });
    let service = SwrLayer::new().layer(origin);
    for _ in 0..2 {
        let response = service.clone().oneshot(get("/pf")).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_ne!(info(&response).status, CacheStatus::FailureHit);
        body(response).await.unwrap();
        settle().await;
    }
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn vary_index_and_pass_memory_stay_inside_the_budget() {
    let capacity = 64 * KIB as u64;
    let layer = SwrLayer::new().capacity_bytes(capacity);
    let (origin, _) = origin(|_, request: Request<ReqBody>| async move {
        Ok(if request.uri().path().starts_with("/vary") {
            respond(
                200,
                "v",
                &[
                    ("cache-control", "max-age=1000"),
                    ("vary", "accept-language, x-long-header-name-for-the-index"),
                ],
            )
        } else {
            respond(
                206,
                "p",
                &[
                    ("cache-control", "no-store"),
                    ("content-range", "bytes 0-0/10"),
                ],
            )
        })
    });
    let service = layer.clone().layer(origin);
    let long = "x".repeat(500);
    for i in 0..300 {
        call(
            &service,
            get_headers(&format!("/vary/{i}/{long}"), &[("accept-language", "en")]),
        )
        .await
        .unwrap();
        call(
            &service,
            get_headers(&format!("/pass/{i}/{long}"), &[("range", "bytes=0-0")]),
        )
        .await
        .unwrap();
        if i % 50 == 0 {
            settle().await;
            let stats = layer.stats();
            assert!(stats.bytes <= stats.capacity_bytes, "after {i}: {stats:?}");
        }
    }
    settle().await;
    let stats = layer.stats();
    assert!(stats.bytes <= capacity, "{stats:?}");
    assert_eq!(stats.capacity_bytes, capacity);
}

#[tokio::test(start_paused = true)]
async fn config_cache_mark_stale_without_a_window_expires_and_falls_back_on_error() {
    let cache = Cfg::builder().build();
    let db = Db::default();
    cache.insert(
        "k".into(),
        "v0".into(),
        Freshness::new(secs(300)).with_stale_if_error(secs(3600)),
    );
    assert!(cache.mark_stale("k"));
    db.down.set(true);
    let got = cache
        .get_or_load("k".into(), db.load(fresh(60)))
        .await
        .unwrap();
    assert_eq!(
        (got.status, got.value.as_str()),
        (Status::StaleIfError, "v0")
    );
    assert_eq!(db.calls(), 1, "an expired entry loads in the foreground");
    cache.insert("n".into(), "v0".into(), Freshness::new(secs(300)));
    assert!(cache.mark_stale("n"));
    db.down.set(false);
    let got = cache
        .get_or_load("n".into(), db.load(fresh(60)))
        .await
        .unwrap();
    assert_eq!((got.status, got.value.as_str()), (Status::Miss, "v2"));
}

#[tokio::test(start_paused = true)]
async fn config_cache_predicate_invalidations_count_what_they_touched() {
    let cache = Cfg::builder().build();
    for lang in ["en", "fr", "de", "es"] {
        cache.insert(format!("judges:{lang}"), lang.into(), swr(300, 60));
    }
    cache.insert("other".into(), "x".into(), swr(300, 60));
    assert_eq!(cache.mark_stale_where(|k| k.starts_with("judges:")), 4);
    assert_eq!(cache.get("judges:en").unwrap().status, Status::Stale);
    assert_eq!(cache.get("other").unwrap().status, Status::Fresh);
    assert_eq!(
        cache.invalidate_scope(b"judges:e", false, |k| k.starts_with("judges:e")),
        2
    );
    assert!(cache.get("judges:en").is_none() && cache.get("judges:es").is_none());
    assert_eq!(
        cache.invalidate_scope(b"judges:", true, |k| k.starts_with("judges:")),
        2
    );
    assert_eq!(cache.len(), 3);
    assert_eq!(cache.remove_if(|_| true), 3);
    assert!(cache.is_empty());
}

#[tokio::test(start_paused = true)]
async fn engine_duration_max_settings_and_freshness_do_not_panic() {
    let cache = Cfg::builder()
        .refresh_backoff(Duration::MAX, Duration::MAX)
        .circuit_breaker(1, Duration::MAX)
        .stale_alert_age(Duration::MAX)
        .shared_tier_timeout(Duration::MAX)
        .build();
    let forever = Freshness::new(Duration::MAX)
        .with_stale_while_revalidate(Duration::MAX)
        .with_stale_if_error(Duration::MAX);
    assert!(cache.insert("k".into(), "v".into(), forever));
    advance_ms(10_000 * 24 * 3600 * 1000).await;
    assert_eq!(cache.get("k").unwrap().status, Status::Fresh);
    let db = Db::default();
    cache.insert("s".into(), "v0".into(), swr(10, 3600));
    advance_ms(11_000).await;
    db.down.set(true);
    for _ in 0..3 {
        let got = cache
            .get_or_load("s".into(), db.load(fresh(60)))
            .await
            .unwrap();
        assert_eq!(got.value, "v0");
        settle().await;
        advance_ms(100).await;
    }
    assert_eq!(
        db.calls(),
        1,
        "backing off 'forever' after the first failure"
    );
    let loaded = cache.get_or_load("new".into(), {
        let db = Db::default();
        db.load(forever)
    });
    assert_eq!(loaded.await.unwrap().value, "v1");
}
