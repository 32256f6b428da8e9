//! `Vary`: variants stored side by side, normalised header values, `Vary: *`, the most recent
//! matching variant, and the bound on variants per key.

mod common;

use common::*;
use http::{header, HeaderName, Request};
use tokio::time::advance;
use tower::{Layer, ServiceExt};
use tower_swr::{CacheStatus, SwrLayer};

/// Answers in the request's `Accept-Language`, varying on it.
fn by_language() -> (impl OriginService, Calls) {
    origin(|n, request: Request<ReqBody>| async move {
        let language = request
            .headers()
            .get(header::ACCEPT_LANGUAGE)
            .map_or("none", |v| v.to_str().unwrap())
            .to_owned();
        Ok(with_header(
            reply_cc(format!("{language} v{n}"), "max-age=60"),
            header::VARY,
            "Accept-Language",
        ))
    })
}

#[tokio::test(start_paused = true)]
async fn vary_keeps_a_variant_from_other_header_values() -> TestResult {
    let (origin, calls) = by_language();
    let service = SwrLayer::new().layer(origin);
    let en = || get_with("/v", header::ACCEPT_LANGUAGE, "en");
    let fr = || get_with("/v", header::ACCEPT_LANGUAGE, "fr");

    assert_eq!(body(service.clone().oneshot(en()).await?).await?, "en v1");
    let hit = service.clone().oneshot(en()).await?;
    assert_eq!(info(&hit).status, CacheStatus::Fresh);
    assert_eq!(body(hit).await?, "en v1");

    let french = service.clone().oneshot(fr()).await?;
    assert_eq!(calls.get(), 2, "the en variant must not answer fr");
    assert_eq!(cache_status(&french), "tower-swr; fwd=vary-miss; stored");
    assert_eq!(body(french).await?, "fr v2");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_purged_varying_resource_is_a_plain_miss_again() -> TestResult {
    let (origin, calls) = by_language();
    let layer = SwrLayer::new();
    let handle = layer.handle();
    let service = layer.layer(origin);
    let en = || get_with("/v", header::ACCEPT_LANGUAGE, "en");
    body(service.clone().oneshot(en()).await?).await?;
    assert_eq!(handle.purge("/v"), 1);
    let again = service.clone().oneshot(en()).await?;
    assert_eq!(calls.get(), 2);
    assert_eq!(cache_status(&again), "tower-swr; fwd=uri-miss; stored");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn vary_variants_are_stored_side_by_side() -> TestResult {
    let (origin, calls) = by_language();
    let service = SwrLayer::new().layer(origin);
    let en = || get_with("/v", header::ACCEPT_LANGUAGE, "en");
    let fr = || get_with("/v", header::ACCEPT_LANGUAGE, "fr");

    body(service.clone().oneshot(en()).await?).await?;
    body(service.clone().oneshot(fr()).await?).await?;
    assert_eq!(calls.get(), 2);
    let en_again = service.clone().oneshot(en()).await?;
    let fr_again = service.clone().oneshot(fr()).await?;
    assert_eq!(body(en_again).await?, "en v1");
    assert_eq!(body(fr_again).await?, "fr v2");
    assert_eq!(calls.get(), 2, "both variants should be held");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn vary_star_is_never_reused() -> TestResult {
    let (origin, calls) = origin(|n, _| async move {
        Ok(with_header(
            reply_cc(format!("v{n}"), "max-age=60"),
            header::VARY,
            "*",
        ))
    });
    let service = SwrLayer::new().layer(origin);
    for n in 1..=3 {
        let response = service.clone().oneshot(get("/star")).await?;
        assert_eq!(cache_status(&response), "tower-swr; fwd=uri-miss");
        assert_eq!(body(response).await?, format!("v{n}"));
    }
    assert_eq!(calls.get(), 3);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn vary_normalises_list_values_and_tells_absent_from_present() -> TestResult {
    let (o, calls) = origin(|n, request: Request<ReqBody>| async move {
        let language = request
            .headers()
            .get_all(header::ACCEPT_LANGUAGE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect::<Vec<_>>()
            .join("|");
        Ok(respond(
            200,
            format!("[{language}] v{n}"),
            &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
        ))
    });
    let service = SwrLayer::shared_cache().layer(o);
    let first = service
        .clone()
        .oneshot(get_headers("/v", &[("accept-language", "en, fr")]))
        .await?;
    assert_eq!(body(first).await?, "[en, fr] v1");

    for same in [
        &[("accept-language", "en,fr")][..],
        &[("accept-language", "en ,  fr")][..],
        &[("accept-language", "en"), ("accept-language", "fr")][..],
    ] {
        let hit = service.clone().oneshot(get_headers("/v", same)).await?;
        assert_eq!(info(&hit).status, CacheStatus::Fresh, "{same:?}");
        assert_eq!(body(hit).await?, "[en, fr] v1");
    }
    assert_eq!(calls.get(), 1);

    // No Accept-Language at all is another variant.
    let absent = service.clone().oneshot(get("/v")).await?;
    assert_eq!(calls.get(), 2);
    assert_eq!(cache_status(&absent), "tower-swr; fwd=vary-miss; stored");
    assert_eq!(body(absent).await?, "[] v2");
    let absent_again = service.clone().oneshot(get("/v")).await?;
    assert_eq!(body(absent_again).await?, "[] v2");
    // Members are compared in order.
    let other = service
        .clone()
        .oneshot(get_headers("/v", &[("accept-language", "fr, en")]))
        .await?;
    assert_eq!(calls.get(), 3, "order matters: fr, en is another variant");
    assert_eq!(body(other).await?, "[fr, en] v3");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn vary_header_missing_on_one_side_is_a_mismatch() -> TestResult {
    let (o, calls) = origin(|n, _| async move {
        Ok(respond(
            200,
            format!("v{n}"),
            &[("cache-control", "max-age=60"), ("vary", "X-Flavour")],
        ))
    });
    let service = SwrLayer::shared_cache().layer(o);
    let vanilla = || get_headers("/v", &[("x-flavour", "vanilla")]);
    body(service.clone().oneshot(vanilla()).await?).await?;
    let without = service.clone().oneshot(get("/v")).await?;
    assert_eq!(calls.get(), 2, "stored with the header, asked without it");
    assert_eq!(body(without).await?, "v2");

    // Stored without it (v2 now), asked with an empty value: still another variant.
    let empty = service
        .clone()
        .oneshot(get_headers("/v", &[("x-flavour", "")]))
        .await?;
    assert_eq!(calls.get(), 3, "present (even empty) differs from absent");
    assert_eq!(body(empty).await?, "v3");

    for (request, expected) in [(vanilla(), "v1"), (get("/v"), "v2")] {
        let hit = service.clone().oneshot(request).await?;
        assert_eq!(info(&hit).status, CacheStatus::Fresh);
        assert_eq!(body(hit).await?, expected);
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn vary_star_is_never_reused_by_the_shared_preset() -> TestResult {
    let (o, calls) = origin(|_, request: Request<ReqBody>| async move {
        let vary = if request.uri().path() == "/star" {
            "*"
        } else {
            "Accept, *"
        };
        Ok(respond(
            200,
            "x",
            &[("cache-control", "public, max-age=60"), ("vary", vary)],
        ))
    });
    let service = SwrLayer::shared_cache().layer(o);
    for path in ["/star", "/star", "/list", "/list"] {
        let response = service.clone().oneshot(get(path)).await?;
        assert!(!info(&response).stored, "{path}");
    }
    assert_eq!(calls.get(), 4);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn most_recent_of_several_matching_variants_is_served() -> TestResult {
    // The resource first varies on Accept-Language, then on Accept-Encoding. Afterwards a
    // request matches both stored responses; the more recent one answers.
    let (o, calls) = origin(|n, _| async move {
        let vary = if n == 1 {
            "Accept-Language"
        } else {
            "Accept-Encoding"
        };
        Ok(respond(
            200,
            format!("v{n}"),
            &[("cache-control", "max-age=600"), ("vary", vary)],
        ))
    });
    let service = SwrLayer::shared_cache().layer(o);
    let en_gzip = || {
        get_headers(
            "/r",
            &[("accept-language", "en"), ("accept-encoding", "gzip")],
        )
    };
    let fr_gzip = get_headers(
        "/r",
        &[("accept-language", "fr"), ("accept-encoding", "gzip")],
    );
    assert_eq!(body(service.clone().oneshot(en_gzip()).await?).await?, "v1");
    advance(secs(1)).await;
    assert_eq!(body(service.clone().oneshot(fr_gzip).await?).await?, "v2");
    assert_eq!(calls.get(), 2);

    let newest = service.clone().oneshot(en_gzip()).await?;
    assert_eq!(calls.get(), 2);
    assert_eq!(
        info(&newest).status,
        CacheStatus::Fresh,
        "{}",
        cache_status(&newest)
    );
    assert_eq!(body(newest).await?, "v2");
    Ok(())
}

/// DESIGN.md: "The number of variants per key is bounded."
#[tokio::test(start_paused = true)]
async fn variants_per_key_are_bounded() -> TestResult {
    let (o, calls) = origin(|_, _request: Request<ReqBody>| async {
        Ok::<_, BoxError>(with_header(
            reply_cc("x", "max-age=600"),
            header::VARY,
            "x-variant",
        ))
    });
    let layer = SwrLayer::new();
    let service = layer.layer(o);
    let name = HeaderName::from_static("x-variant");
    for i in 0..200 {
        let response = service
            .clone()
            .oneshot(get_with("/v", name.clone(), &i.to_string()))
            .await?;
        body(response).await?;
    }
    assert_eq!(calls.get(), 200);
    let entries = layer.stats().entries;
    assert!(entries <= 64, "{entries} variants kept for one key");
    // The newest variant is still served from the cache.
    let again = service.clone().oneshot(get_with("/v", name, "199")).await?;
    assert_eq!(info(&again).status, CacheStatus::Fresh);
    Ok(())
}

/// Issue 13: the `Vary` index is part of what the budget holds. With its variants purged and
/// the record that names them kept, the bytes held are the record's.
#[tokio::test(start_paused = true)]
async fn the_vary_index_is_counted_in_the_bytes_held() -> TestResult {
    let (origin, calls) = by_language();
    let layer = SwrLayer::new();
    let handle = layer.handle();
    let service = layer.layer(origin);
    let en = || get_with("/v", header::ACCEPT_LANGUAGE, "en");
    let fr = || get_with("/v", header::ACCEPT_LANGUAGE, "fr");
    body(service.clone().oneshot(en()).await?).await?;
    body(service.clone().oneshot(fr()).await?).await?;
    let both = layer.stats();
    assert_eq!(both.entries, 2);

    assert_eq!(handle.purge_if(|key| key.is_variant()), 2);
    let index_only = handle.stats();
    assert_eq!(index_only.entries, 0);
    assert!(
        index_only.bytes > 0 && index_only.bytes < both.bytes,
        "the index record for /v holds bytes: {index_only:?}"
    );
    // It is the index: the next request knows /v varies.
    let again = service.clone().oneshot(en()).await?;
    assert_eq!(cache_status(&again), "tower-swr; fwd=vary-miss; stored");
    assert_eq!(calls.get(), 3);

    // Purging the resource frees everything held for it.
    handle.purge("/v");
    assert_eq!(layer.stats().bytes, 0);
    Ok(())
}

/// Issue 13: many distinct varying resources, with long targets, in a small budget: the bytes
/// held (responses and index together) never pass `capacity_bytes`, and the index keeps to
/// its share of it.
#[tokio::test(start_paused = true)]
async fn many_varying_resources_stay_within_the_byte_budget() -> TestResult {
    const CAPACITY: u64 = 64 << 10;
    let (origin, _) = by_language();
    let layer = SwrLayer::new().capacity_bytes(CAPACITY);
    let handle = layer.handle();
    let service = layer.layer(origin);
    let padding = "p".repeat(600);
    let target = |i: usize| format!("/r{i}/{padding}");
    for i in 0..400 {
        let response = service
            .clone()
            .oneshot(get_with(&target(i), header::ACCEPT_LANGUAGE, "en"))
            .await?;
        assert!(info(&response).stored, "resource {i}");
        body(response).await?;
        let stats = layer.stats();
        assert!(
            stats.bytes <= CAPACITY && stats.capacity_bytes <= CAPACITY,
            "resource {i}: {stats:?}"
        );
    }
    // The newest resource is still answered from the cache, through its index record.
    let newest = service
        .clone()
        .oneshot(get_with(&target(399), header::ACCEPT_LANGUAGE, "en"))
        .await?;
    assert_eq!(
        info(&newest).status,
        CacheStatus::Fresh,
        "{}",
        cache_status(&newest)
    );

    // Every response held is found through an index record that was kept: a record evicted
    // from the index takes its variants from the store with it.
    let held = std::cell::RefCell::new((Vec::new(), Vec::new()));
    handle.purge_if(|key| {
        let mut held = held.borrow_mut();
        let (variants, records) = &mut *held;
        if key.is_variant() {
            variants.push(key.target().to_owned());
        } else {
            records.push(key.target().to_owned());
        }
        false
    });
    let (variants, records) = held.into_inner();
    assert!(
        !variants.is_empty() && records.len() < 400,
        "the index is bounded"
    );
    for target in &variants {
        assert!(records.contains(target), "{target} is held but not indexed");
    }

    // With the responses gone, what remains is the index, within its share of the budget.
    handle.purge_if(|key| key.is_variant());
    let index = layer.stats();
    assert_eq!(index.entries, 0);
    assert!(
        index.bytes > 0 && index.bytes <= CAPACITY / 16,
        "index bytes: {index:?}"
    );
    Ok(())
}
