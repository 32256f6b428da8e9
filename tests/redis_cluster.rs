//! The Redis tier (feature `redis`) on a Redis Cluster of three masters that each test starts
//! on free loopback ports (`RedisConfig::cluster`). Where `redis-server` or `redis-cli` is not
//! installed, each test prints why and passes without running.
//!
//! Several layers in one process on one cluster stand for several instances: each has its own
//! memory, its own cluster connection and bus subscription, and shares only the cluster.
#![cfg(feature = "redis")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use common::redis_server::RedisCluster;
use common::*;
use tokio::time::Instant;
use tower::Layer;
use tower_swr::{CacheStatus, SwrLayer};

type Instance<S> = (tower_swr::SwrService<S>, tower_swr::SwrHandle);

/// One instance: a layer of its own on the cluster, around `origin`.
fn instance<S: OriginService>(cluster: &RedisCluster, origin: S) -> Instance<S> {
    let layer = SwrLayer::new().redis(cluster.config());
    let handle = layer.handle();
    (layer.layer(origin), handle)
}

/// Three instances on one cluster, around one origin.
fn three_instances<S: OriginService>(cluster: &RedisCluster, origin: S) -> Vec<Instance<S>> {
    (0..3).map(|_| instance(cluster, origin.clone())).collect()
}

/// Waits until `handle`'s tier has written `count` values (the writes are detached).
async fn written(handle: &tower_swr::SwrHandle, count: u64) {
    let handle = handle.clone();
    eventually(&format!("{count} writes to the cluster"), move || {
        handle.redis_stats().expect("a Redis tier").writes >= count
    })
    .await;
}

/// The hash tag of a Redis key name: what lies between its first `{` and the first `}` after
/// it (what Redis Cluster hashes to pick the slot).
fn hash_tag(name: &[u8]) -> Option<&[u8]> {
    let open = name.iter().position(|b| *b == b'{')?;
    let close = name[open + 1..].iter().position(|b| *b == b'}')?;
    Some(&name[open + 1..open + 1 + close]).filter(|tag| !tag.is_empty())
}

/// Whether `haystack` contains `needle`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every key of every node whose name contains `part`, as (node, name).
fn keys_with(cluster: &RedisCluster, part: &[u8]) -> Vec<(usize, Vec<u8>)> {
    (0..3)
        .flat_map(|node| {
            (cluster.keys(node).into_iter())
                .filter(|name| contains(name, part))
                .map(move |name| (node, name))
        })
        .collect()
}

fn slot(cluster: &RedisCluster, name: &[u8]) -> u16 {
    let mut connection = cluster.client(0).get_connection().expect("connect");
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(name)
        .query(&mut connection)
        .expect("CLUSTER KEYSLOT")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_a_cluster_share_one_fill() -> TestResult {
    let Some(cluster) = RedisCluster::start("shared fill on a cluster") else {
        return Ok(());
    };
    let (origin, calls) = slow_origin(Duration::ZERO, "max-age=60");
    let instances = three_instances(&cluster, origin);
    let (status, body) = call(&instances[0].0, get("/item")).await?;
    assert_eq!((status, &body[..]), (CacheStatus::Miss, &b"v1"[..]));
    written(&instances[0].1, 1).await;
    for (service, handle) in &instances[1..] {
        let response = tower::ServiceExt::oneshot(service.clone(), get("/item")).await?;
        assert_eq!(info(&response).status, CacheStatus::SharedTier);
        let line = cache_status(&response);
        assert!(line.contains("detail=shared"), "{line}");
        assert_eq!(&common::body(response).await?[..], b"v1");
        assert_eq!(handle.redis_stats().unwrap().hits, 1);
    }
    assert_eq!(calls.get(), 1, "one origin call for three instances");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_requests_over_three_instances_on_a_cluster_make_one_origin_call_per_key() -> TestResult
{
    let Some(cluster) = RedisCluster::start("fleet-wide lock on a cluster") else {
        return Ok(());
    };
    let (origin, calls) = slow_origin(Duration::from_millis(300), "max-age=60");
    let instances = Arc::new(three_instances(&cluster, origin));
    let mut requests = Vec::new();
    for i in 0..90 {
        let instances = Arc::clone(&instances);
        requests.push(tokio::spawn(async move {
            // Three keys, so the locks live on (most likely) different nodes.
            let path = format!("/cold/{}", i % 3);
            let answer = call(&instances[(i / 3) % 3].0, get(&path)).await;
            (i % 3, answer)
        }));
    }
    let mut bodies: BTreeMap<usize, BTreeSet<Vec<u8>>> = BTreeMap::new();
    for request in requests {
        let (key, answer) = request.await?;
        bodies.entry(key).or_default().insert(answer?.1.to_vec());
    }
    for (key, seen) in &bodies {
        assert_eq!(seen.len(), 1, "/cold/{key}: one answer for the fleet");
    }
    assert_eq!(
        calls.get(),
        3,
        "one origin call per key for the whole fleet"
    );
    let won: u64 = (instances.iter())
        .map(|(_, h)| h.redis_stats().unwrap().locks_won)
        .sum();
    assert_eq!(won, 3, "one lock won per key");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_paths_spread_their_keys_over_every_node() -> TestResult {
    let Some(cluster) = RedisCluster::start("keys spread over the cluster") else {
        return Ok(());
    };
    let (origin, calls) = slow_origin(Duration::ZERO, "max-age=600");
    let (service, handle) = instance(&cluster, origin);
    for i in 0..60 {
        call(&service, get(&format!("/spread/{i}"))).await?;
    }
    written(&handle, 60).await;
    assert_eq!(calls.get(), 60);
    let per_node: Vec<usize> = (0..3)
        .map(|node| {
            (cluster.keys(node).iter())
                .filter(|name| contains(name, b"/spread/"))
                .count()
        })
        .collect();
    // 60 keys on 3 nodes that each own a third of the slots: every node holds some (the
    // chance that one holds none is (2/3)^60, about 3e-11).
    assert!(
        per_node.iter().all(|&n| n > 0),
        "the keys spread over every node: {per_node:?}"
    );
    let sizes: Vec<usize> = (0..3).map(|node| cluster.dbsize(node)).collect();
    assert!(sizes.iter().filter(|&&n| n > 0).count() > 1, "{sizes:?}");
    // Each path has its own tag: the 60 values are under 60 tags.
    let tags: BTreeSet<Vec<u8>> = keys_with(&cluster, b"/spread/")
        .iter()
        .map(|(_, name)| hash_tag(name).expect("a hash tag").to_vec())
        .collect();
    assert_eq!(tags.len(), 60, "one hash tag per cache key");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_redis_key_of_one_cache_key_shares_a_hash_tag() -> TestResult {
    let Some(cluster) = RedisCluster::start("one hash tag per cache key") else {
        return Ok(());
    };
    let gate = Gate::default();
    let origin_gate = gate.clone();
    let (origin, calls) = origin(move |n, request: http::Request<ReqBody>| {
        let gate = origin_gate.clone();
        async move {
            gate.wait().await;
            let language = header_text(request.headers(), "accept-language").unwrap_or_default();
            let response = respond(
                200,
                format!("{language} v{n}"),
                &[
                    ("cache-control", "max-age=600"),
                    ("vary", "accept-language"),
                ],
            );
            Ok(response)
        }
    });
    let (service, handle) = instance(&cluster, origin);
    // While the first load hangs at the origin, its lock is in Redis.
    let first = tokio::spawn({
        let service = service.clone();
        async move {
            call(
                &service,
                get_headers("/tagged", &[("accept-language", "en")]),
            )
            .await
        }
    });
    let deadline = Deadline::after(Duration::from_secs(10), "the lock of /tagged in Redis");
    let lock = loop {
        let lock = keys_with(&cluster, b"/tagged")
            .into_iter()
            .find(|(_, name)| {
                // After the tag's `}` comes the kind: `l` for the lock, `d` for data.
                let close = name.iter().position(|b| *b == b'}').expect("a tag");
                name[close + 1] == b'l'
            });
        if let Some(lock) = lock {
            break lock;
        }
        deadline.tick().await;
    };
    gate.open();
    assert_eq!(&first.await??.1[..], b"en v1");
    let (status, body) = call(
        &service,
        get_headers("/tagged", &[("accept-language", "fr")]),
    )
    .await?;
    assert_eq!((status, &body[..]), (CacheStatus::Miss, &b"fr v2"[..]));
    assert_eq!(calls.get(), 2);
    written(&handle, 2).await;
    // The base (fence, purge times), one hash per variant, and the lock seen during the load.
    let mut keys = keys_with(&cluster, b"/tagged");
    assert!(
        keys.len() >= 3,
        "the base and two variants: {:?}",
        keys.iter()
            .map(|(_, n)| String::from_utf8_lossy(n).into_owned())
            .collect::<Vec<_>>()
    );
    assert!(keys.iter().any(|(_, name)| contains(name, b"en")));
    assert!(keys.iter().any(|(_, name)| contains(name, b"fr")));
    keys.push(lock);
    let tags: BTreeSet<&[u8]> = keys
        .iter()
        .map(|(_, name)| hash_tag(name).expect("every key has a hash tag"))
        .collect();
    assert_eq!(tags.len(), 1, "one hash tag for every key of /tagged");
    let nodes: BTreeSet<usize> = keys.iter().map(|(node, _)| *node).collect();
    assert_eq!(nodes.len(), 1, "so one node holds them all");
    let slots: BTreeSet<u16> = keys.iter().map(|(_, name)| slot(&cluster, name)).collect();
    assert_eq!(slots.len(), 1, "in one slot");
    // The tier's own keys (generation, scope purges) share a tag of their own.
    handle.purge_prefix("/nothing/");
    let deadline = Deadline::after(Duration::from_secs(10), "the scope purge in Redis");
    let meta = loop {
        let meta = keys_with(&cluster, b"{meta}");
        if !meta.is_empty() {
            break meta;
        }
        deadline.tick().await;
    };
    assert!(meta.iter().all(|(_, name)| hash_tag(name) == Some(b"meta")));
    Ok(())
}

/// Fills `paths` through instance 0 and has instances 1 and 2 take every one from the cluster.
async fn fill_everywhere<S: OriginService>(
    instances: &[Instance<S>],
    paths: &[String],
) -> TestResult {
    let before = instances[0].1.redis_stats().expect("a Redis tier").writes;
    for path in paths {
        assert_eq!(call(&instances[0].0, get(path)).await?.0, CacheStatus::Miss);
    }
    written(&instances[0].1, before + paths.len() as u64).await;
    for (service, handle) in &instances[1..] {
        for path in paths {
            let (status, _) = call(service, get(path)).await?;
            assert_eq!(status, CacheStatus::SharedTier, "{path} from the cluster");
        }
        assert!(handle.stats().entries >= paths.len() as u64);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_by_prefix_reaches_keys_on_every_node() -> TestResult {
    let Some(cluster) = RedisCluster::start("purge by prefix on a cluster") else {
        return Ok(());
    };
    let (origin, calls) = slow_origin(Duration::ZERO, "max-age=600");
    let instances = three_instances(&cluster, origin.clone());
    let purged: Vec<String> = (0..30).map(|i| format!("/p/{i}")).collect();
    let kept: Vec<String> = (0..30).map(|i| format!("/q/{i}")).collect();
    fill_everywhere(&instances, &[purged.clone(), kept.clone()].concat()).await?;
    assert_eq!(calls.get(), 60);
    let holding: BTreeSet<usize> = keys_with(&cluster, b"/p/")
        .iter()
        .map(|(node, _)| *node)
        .collect();
    assert_eq!(holding.len(), 3, "the purged keys are on every node");

    instances[1].1.purge_prefix("/p/");
    for (_, handle) in &instances {
        let handle = handle.clone();
        eventually("every instance dropped the purged entries", move || {
            handle.stats().entries == 30
        })
        .await;
    }
    // An instance started after the purge, with nothing in memory, finds none of the purged
    // values in the cluster, and every kept one.
    let late = instance(&cluster, origin);
    for path in &kept {
        assert_eq!(call(&late.0, get(path)).await?.0, CacheStatus::SharedTier);
    }
    assert_eq!(calls.get(), 60);
    // Every purged path is a miss again, on every instance (each asks for a third of them, so
    // no instance's load answers another's request).
    for (i, path) in purged.iter().enumerate() {
        let (status, body) = call(&instances[i % 3].0, get(path)).await?;
        assert_eq!(status, CacheStatus::Miss, "{path} was purged everywhere");
        assert_ne!(body, format!("v{}", i + 1), "{path}: not the purged value");
    }
    assert_eq!(calls.get(), 90, "one new load per purged path");
    written(&instances[0].1, 70).await;
    for path in &purged[..10] {
        let (status, _) = call(&late.0, get(path)).await?;
        assert_eq!(
            status,
            CacheStatus::SharedTier,
            "{path}: the new value is shared"
        );
    }
    assert_eq!(calls.get(), 90);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clear_reaches_keys_on_every_node() -> TestResult {
    let Some(cluster) = RedisCluster::start("clear on a cluster") else {
        return Ok(());
    };
    let (origin, calls) = slow_origin(Duration::ZERO, "max-age=600");
    let instances = three_instances(&cluster, origin.clone());
    let paths: Vec<String> = (0..30).map(|i| format!("/c/{i}")).collect();
    fill_everywhere(&instances, &paths).await?;
    let holding: BTreeSet<usize> = (keys_with(&cluster, b"/c/").iter())
        .map(|(node, _)| *node)
        .collect();
    assert_eq!(holding.len(), 3, "the keys are on every node");

    instances[2].1.clear();
    for (_, handle) in &instances {
        let handle = handle.clone();
        eventually("every instance is empty", move || {
            handle.stats().entries == 0
        })
        .await;
    }
    let late = instance(&cluster, origin);
    for (i, path) in paths.iter().enumerate() {
        let service = if i % 4 == 3 {
            &late.0
        } else {
            &instances[i % 4].0
        };
        let (status, _) = call(service, get(path)).await?;
        assert_eq!(status, CacheStatus::Miss, "{path} was cleared everywhere");
    }
    assert_eq!(calls.get(), 60, "one new load per path");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_reach_every_instance_when_the_first_listed_node_is_down() -> TestResult {
    let Some(cluster) = RedisCluster::start("the bus with a dead seed node") else {
        return Ok(());
    };
    // The first address of the list has no server (a node taken out of the cluster); the
    // others are the cluster's. The data connection finds the live nodes; so must the bus.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut urls = vec![format!("redis://127.0.0.1:{dead}/")];
    urls.extend(cluster.urls());
    let config = tower_swr::redis::RedisConfig::cluster(&urls)?.timeout(Duration::from_secs(1));
    let (origin, calls) = slow_origin(Duration::ZERO, "max-age=600");
    let instances: Vec<Instance<_>> = (0..2)
        .map(|_| {
            let layer = SwrLayer::new().redis(config.clone());
            let handle = layer.handle();
            (layer.layer(origin.clone()), handle)
        })
        .collect();
    let (one, two) = (&instances[0], &instances[1]);
    // Each instance's first connection tries the dead node first: on a loaded machine the
    // discovery may outlast a call's timeout (that call is answered by the origin). Wait until
    // the second instance reads what the first wrote, on paths of their own.
    let deadline = Deadline::after(Duration::from_secs(20), "both instances on the cluster");
    for attempt in 0.. {
        let path = format!("/warm/{attempt}");
        let before = one.1.redis_stats().unwrap().writes;
        call(&one.0, get(&path)).await?;
        let waited = Instant::now();
        while one.1.redis_stats().unwrap().writes == before
            && waited.elapsed() < Duration::from_secs(2)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let shared = one.1.redis_stats().unwrap().writes > before;
        if shared && call(&two.0, get(&path)).await?.0 == CacheStatus::SharedTier {
            break;
        }
        deadline.tick().await;
    }
    let warm_calls = calls.get();
    fill_everywhere(&instances, &["/x".to_owned()]).await?;
    assert_eq!(
        calls.get(),
        warm_calls + 1,
        "the cluster is used through the live nodes"
    );
    // A purge at once, most likely before the second instance's bus is up (its first try,
    // the dead node, failed): the second instance must not keep the purged value anyway.
    one.1.purge("/x");
    let deadline = Deadline::after(Duration::from_secs(10), "the purged /x gone from two");
    loop {
        // Before the bus is up: a hit; once up, a miss, or (the purge missed, every entry
        // re-checks Redis) one stale answer while the refresh finds nothing there.
        if call(&two.0, get("/x")).await?.1 != format!("v{}", warm_calls + 1) {
            break;
        }
        deadline.tick().await;
    }
    assert_eq!(calls.get(), warm_calls + 2);
    // The bus is up on a live node: a purge reaches the other instance's memory.
    let deadline = Deadline::after(Duration::from_secs(10), "a bus message on two");
    while two.1.redis_stats().unwrap().bus_received == 0 {
        one.1.purge("/probe");
        deadline.tick().await;
    }
    fill_everywhere(&instances, &["/y".to_owned()]).await?;
    let held = two.1.stats().entries;
    one.1.purge("/y");
    let handle = two.1.clone();
    eventually("the purge of /y reached two's memory", move || {
        handle.stats().entries == held - 1
    })
    .await;
    assert_eq!(call(&two.0, get("/y")).await?.0, CacheStatus::Miss);
    Ok(())
}
