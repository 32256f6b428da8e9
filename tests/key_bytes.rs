//! The byte encoding of keys (`CacheKey::to_bytes`): the same in every process and whatever
//! the order layers are made in, with each layer's keys in the namespace of its cache name.

mod common;

use common::*;
use http::Request;
use tower::{Layer, ServiceExt};
use tower_swr::{CacheKey, SwrHandle, SwrLayer};

/// The bytes of the keys a handle's layer holds (taken out with `purge_if`).
fn key_bytes(handle: &SwrHandle) -> Vec<Vec<u8>> {
    let keys = std::sync::Mutex::new(Vec::new());
    handle.purge_if(|key: &CacheKey| {
        keys.lock().unwrap().push(key.to_bytes());
        false
    });
    let mut keys = keys.into_inner().unwrap();
    keys.sort();
    keys
}

/// `version 1, bytes namespace` as the encoding starts.
fn prefix(namespace: &str) -> Vec<u8> {
    let mut out = vec![1];
    out.extend_from_slice(&(namespace.len() as u32).to_be_bytes());
    out.extend_from_slice(namespace.as_bytes());
    out
}

async fn store(layer: &SwrLayer, uri: &str) -> TestResult {
    let (service, _) = origin(|n, _request: Request<ReqBody>| async move {
        Ok::<_, BoxError>(reply(format!("v{n}")))
    });
    layer.layer(service).oneshot(get(uri)).await?;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn keys_name_their_layer_and_not_the_order_layers_were_made_in() -> TestResult {
    // Two "processes": one store each, the same layers made in opposite orders.
    let first_budget = SwrLayer::new().cache_name("budget-k");
    let first_api = SwrLayer::new()
        .cache_name("api-k")
        .share_memory_with(&first_budget);
    let first_web = SwrLayer::new()
        .cache_name("web-k")
        .share_memory_with(&first_budget);
    let second_budget = SwrLayer::new().cache_name("budget-k");
    let second_web = SwrLayer::new()
        .cache_name("web-k")
        .share_memory_with(&second_budget);
    let second_api = SwrLayer::new()
        .cache_name("api-k")
        .share_memory_with(&second_budget);
    store(&first_api, "http://example.com/a?x=1").await?;
    store(&first_web, "http://example.com/a?x=1").await?;
    store(&second_web, "http://example.com/a?x=1").await?;
    store(&second_api, "http://example.com/a?x=1").await?;

    let api = key_bytes(&first_api.handle());
    assert_eq!(api.len(), 1);
    assert_eq!(api, key_bytes(&second_api.handle()));
    assert_eq!(
        key_bytes(&first_web.handle()),
        key_bytes(&second_web.handle())
    );
    assert!(api[0].starts_with(&prefix("api-k")), "{:?}", api[0]);
    assert!(key_bytes(&first_web.handle())[0].starts_with(&prefix("web-k")));
    assert_ne!(api, key_bytes(&first_web.handle()));
    let tail: &[u8] = b"\0\0\0\x03GET\0\0\0\x0bexample.com\0\0\0\x06/a?x=1\x00\x00";
    assert!(api[0].ends_with(tail), "{:?}", api[0]);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn layers_of_one_store_with_one_name_are_numbered() -> TestResult {
    let budget = SwrLayer::new();
    let one = SwrLayer::new().share_memory_with(&budget);
    let two = SwrLayer::new().share_memory_with(&budget);
    for layer in [&budget, &one, &two] {
        store(layer, "/x").await?;
    }
    assert!(key_bytes(&budget.handle())[0].starts_with(&prefix("tower-swr")));
    assert!(key_bytes(&one.handle())[0].starts_with(&prefix("tower-swr#2")));
    assert!(key_bytes(&two.handle())[0].starts_with(&prefix("tower-swr#3")));
    Ok(())
}
