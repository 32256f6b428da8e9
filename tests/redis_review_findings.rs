//! White-box review of the Redis tier (feature `redis`): each test demonstrates a suspected bug
//! through the public API only, against a `redis-server` of its own on a free loopback port
//! (where `redis-server` is not installed, each test prints why and passes without running).
//!
//! Every one of the seven findings failed before its fix and runs as an ordinary test now.
//! Conditions are polled with a deadline; sleeps only order events.
#![cfg(feature = "redis")]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::redis_server::{flushall, loaded_now, Codec, RedisServer, Tier};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tower::Layer;
use tower_swr::engine::{SharedTier, SwrCache};
use tower_swr::redis::{BreakerState, RedisConfig, RedisTier};
use tower_swr::{CacheStatus, SwrLayer};

/// Polls `condition` every 10 ms until it holds (true) or `within` passes (false).
async fn eventually<F, Fut>(within: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Loopback proxies that misbehave in ways `delaying_proxy` does not
// ---------------------------------------------------------------------------------------------

/// A loopback TCP proxy to `port`. Every connection open when [`Proxy::cut`] is called goes
/// silent both ways from then on (its bytes are read and dropped, the sockets stay open: a
/// half-dead connection, as after a NAT or load-balancer timeout or a failover behind a
/// virtual IP); connections made after it are forwarded normally. A connection whose client
/// sent `HGETALL` has the next answer it gets held back for `slow_reply`.
struct Proxy {
    port: u16,
    epoch: Arc<AtomicU64>,
}

impl Proxy {
    async fn start(upstream: u16, slow_reply: Duration) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let epoch = Arc::new(AtomicU64::new(0));
        let current = Arc::clone(&epoch);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    continue;
                };
                let born = current.load(Ordering::SeqCst);
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let hold_next = Arc::new(AtomicBool::new(false));
                let (up_epoch, up_hold) = (Arc::clone(&current), Arc::clone(&hold_next));
                tokio::spawn(async move {
                    let mut buffer = vec![0; 64 * 1024];
                    while let Ok(n @ 1..) = client_read.read(&mut buffer).await {
                        if up_epoch.load(Ordering::SeqCst) != born {
                            continue;
                        }
                        let chunk = &buffer[..n];
                        if chunk.windows(7).any(|w| w.eq_ignore_ascii_case(b"HGETALL")) {
                            up_hold.store(true, Ordering::SeqCst);
                        }
                        if server_write.write_all(chunk).await.is_err() {
                            break;
                        }
                    }
                });
                let down_epoch = Arc::clone(&current);
                tokio::spawn(async move {
                    let mut buffer = vec![0; 64 * 1024];
                    while let Ok(n @ 1..) = server_read.read(&mut buffer).await {
                        if down_epoch.load(Ordering::SeqCst) != born {
                            continue;
                        }
                        if hold_next.swap(false, Ordering::SeqCst) {
                            tokio::time::sleep(slow_reply).await;
                        }
                        if client_write.write_all(&buffer[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Self { port, epoch }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Every connection open now goes silent for good.
    fn cut(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------------
// Findings
// ---------------------------------------------------------------------------------------------

/// The generation of key names lives in one Redis key that nothing keeps: after a clear
/// (generation 1) and a `FLUSHALL`, an instance that knew generation 1 keeps using it while
/// one that starts (or reloads) reads none, generation 0. The fleet splits in two: a purge on
/// the first never reaches the copy the second wrote, which the second (and every new
/// instance) keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_clear_and_a_flushall_a_purge_on_one_instance_holds_for_another() -> TestResult {
    let Some(redis) = RedisServer::start("generation after FLUSHALL") else {
        return Ok(());
    };
    let old: Tier = RedisTier::new(redis.config(), Codec);
    let key = "report".to_owned();
    // A running instance: it has read the generation; then a clear of the whole tier.
    assert!(old.get(&key).await.is_none());
    SharedTier::clear(&old).await;
    flushall(&redis);
    // An instance started after the FLUSHALL stores the key.
    let new: Tier = RedisTier::new(redis.config(), Codec);
    new.put(&key, &1, &loaded_now()).await;
    assert_eq!(new.get(&key).await.map(|(v, _)| v), Some(1), "written");
    // Within a second or two both check the generation with Redis again (the running
    // instance writes back the one Redis lost) and agree on it.
    let agreed = eventually(Duration::from_secs(5), || async {
        old.remove(&key).await;
        new.get(&key).await.is_none()
    })
    .await;
    assert!(
        agreed,
        "a purge on one instance holds for every instance reading Redis"
    );
    let later: Tier = RedisTier::new(redis.config(), Codec);
    assert!(
        later.get(&key).await.is_none(),
        "and for an instance started after it"
    );
    Ok(())
}

/// `reload` replaces the scope markers this instance knows with what its read of the scopes
/// hash returned: a scope purge that another instance made after that read reached Redis, and
/// whose bus message this instance applied before the read's answer came back, is dropped
/// from memory. This instance then takes from Redis values written before that purge. The
/// read's answer is held back 600 ms by a proxy (a slow link to Redis, at a bus reconnect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_purge_heard_during_a_reload_is_not_forgotten() -> TestResult {
    let Some(redis) = RedisServer::start("scope purge during a reload") else {
        return Ok(());
    };
    let proxy = Proxy::start(redis.port, Duration::from_millis(600)).await;
    let far_config = RedisConfig::new(&proxy.url())?.timeout(Duration::from_secs(3));
    let far: Tier = RedisTier::new(far_config, Codec);
    // A cache attaches the tier: its bus subscribes (through the proxy).
    let _far_cache: SwrCache<String, u64> = SwrCache::builder()
        .shared_tier(Arc::new(far.clone()))
        .build();
    let near: Tier = RedisTier::new(redis.config(), Codec);
    // Until the far bus hears the near instance.
    let heard = eventually(Duration::from_secs(10), || async {
        near.invalidate_scope(b"warm/", false).await;
        far.stats().bus_received > 0
    })
    .await;
    assert!(heard, "the far instance's bus is up");
    let received = far.stats().bus_received;
    let key = "p/x".to_owned();
    near.put(&key, &1, &loaded_now()).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    // The far instance's first call reads the markers: its answer is 600 ms on the way.
    let reading = tokio::spawn({
        let far = far.clone();
        async move { far.get(&"other".to_owned()).await.is_some() }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Meanwhile the near instance purges the scope `p/`; the far one hears it on the bus.
    near.invalidate_scope(b"p/", false).await;
    let applied = eventually(Duration::from_secs(2), || async {
        far.stats().bus_received > received
    })
    .await;
    assert!(applied, "the far instance heard the purge");
    reading.await?;
    assert!(
        far.get(&key).await.is_none(),
        "a value written before a scope purge this instance heard of is not taken from Redis"
    );
    Ok(())
}

/// A connection to Redis that goes silent (no reset: a NAT or load-balancer timeout, a
/// failover behind a virtual IP) is never given up: calls time out, the breaker opens, and
/// each probe after the cooldown goes down the same dead connection (redis-rs reconnects on
/// I/O errors only, and the tier sets no response timeout). Redis answers new connections
/// all along, yet sharing never resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharing_resumes_after_the_connection_to_redis_goes_silent() -> TestResult {
    let Some(redis) = RedisServer::start("a silent connection") else {
        return Ok(());
    };
    let proxy = Proxy::start(redis.port, Duration::ZERO).await;
    let config = RedisConfig::new(&proxy.url())?
        .timeout(Duration::from_millis(100))
        .circuit_breaker(2, Duration::from_millis(200));
    let tier: Tier = RedisTier::new(config, Codec);
    let key = "report".to_owned();
    tier.put(&key, &1, &loaded_now()).await;
    assert_eq!(tier.get(&key).await.map(|(v, _)| v), Some(1), "shared");
    proxy.cut();
    assert!(tier.get(&key).await.is_none(), "the old connection is dead");
    // Redis itself answers, on any new connection.
    let mut direct = redis.client().get_connection()?;
    let () = redis::cmd("PING").query(&mut direct)?;
    let resumed = eventually(Duration::from_secs(10), || async {
        tier.get(&key).await.is_some()
    })
    .await;
    assert!(
        resumed,
        "sharing resumes by itself (breaker {:?}, {} timeouts)",
        tier.stats().breaker,
        tier.stats().timeouts
    );
    Ok(())
}

/// The bus subscriber waits for messages with no liveness check: a subscription whose
/// connection goes silent is never noticed, never re-made, and the instance keeps serving its
/// memory copies after purges on other instances (until their own freshness ends, five
/// minutes here), though Redis answers new connections all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_reach_an_instance_whose_bus_connection_went_silent() -> TestResult {
    let Some(redis) = RedisServer::start("a silent bus") else {
        return Ok(());
    };
    let proxy = Proxy::start(redis.port, Duration::ZERO).await;
    let (origin, _calls) = slow_origin(Duration::ZERO, "max-age=300");
    let far_layer = SwrLayer::new().redis(RedisConfig::new(&proxy.url())?);
    let far_handle = far_layer.handle();
    let far = far_layer.layer(origin.clone());
    let near_layer = SwrLayer::new().redis(redis.config());
    let near_handle = near_layer.handle();
    let near = near_layer.layer(origin);
    // Both hold /item (the far one from the near one's value), and the far bus is up.
    let (_, first) = call(&near, get("/item")).await?;
    let shared = eventually(Duration::from_secs(5), || async {
        matches!(
            call(&far, get("/item")).await,
            Ok((CacheStatus::SharedTier, _))
        )
    })
    .await;
    assert!(shared, "the far instance took the near one's value");
    let bus_up = eventually(Duration::from_secs(5), || async {
        near_handle.purge("/warm");
        tokio::time::sleep(Duration::from_millis(20)).await;
        far_handle
            .redis_stats()
            .is_some_and(|stats| stats.bus_received > 0)
    })
    .await;
    assert!(bus_up, "the far instance's bus is up");
    proxy.cut();
    near_handle.purge("/item");
    let dropped = eventually(Duration::from_secs(10), || async {
        call(&far, get("/item"))
            .await
            .is_ok_and(|(_, body)| body != first)
    })
    .await;
    assert!(
        dropped,
        "the purge on the near instance reaches the far one once its bus is re-made"
    );
    Ok(())
}

/// The breaker's half-open probe is the first call after the cooldown; `call` tells the
/// breaker how it went only when it ends. A probe whose caller stops waiting (a client that
/// goes away, a timeout around the request, the engine's own bound on claims, writes and
/// purges) leaves the breaker probing for good: every later call is skipped, and sharing never
/// resumes though Redis answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_closes_again_after_a_probe_whose_caller_stopped_waiting() -> TestResult {
    let Some(redis) = RedisServer::start("a cancelled probe") else {
        return Ok(());
    };
    let config = redis
        .config()
        .timeout(Duration::from_millis(300))
        .circuit_breaker(1, Duration::from_millis(100));
    let tier: Tier = RedisTier::new(config, Codec);
    let key = "report".to_owned();
    tier.put(&key, &1, &loaded_now()).await;
    assert_eq!(tier.get(&key).await.map(|(v, _)| v), Some(1), "shared");
    // Redis freezes: one call times out and the breaker opens.
    redis.signal("-STOP");
    assert!(tier.get(&key).await.is_none());
    assert_eq!(tier.stats().breaker, BreakerState::Open);
    tokio::time::sleep(Duration::from_millis(150)).await;
    // The probe's caller gives up before the tier's timeout.
    let gave_up = tokio::time::timeout(Duration::from_millis(20), tier.get(&key)).await;
    assert!(gave_up.is_err(), "the probe was still waiting for Redis");
    redis.signal("-CONT");
    let resumed = eventually(Duration::from_secs(5), || async {
        tier.get(&key).await.is_some()
    })
    .await;
    assert!(
        resumed,
        "sharing resumes once Redis answers (breaker {:?}, {} calls skipped)",
        tier.stats().breaker,
        tier.stats().skipped
    );
    Ok(())
}

/// Scope markers are remembered for `max_lifetime`, and past [`MAX_SCOPES`] of them the tier
/// is cleared. In memory they are pruned only by a reload (a bus reconnect): in an instance
/// that runs on, every scope it ever purged counts, and its 1,025th distinct purge clears
/// the whole tier (every key of the fleet is a miss again), though all but one of them
/// expired long ago. Here `max_lifetime` is 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_purges_that_expired_do_not_count_towards_the_clear() -> TestResult {
    let Some(redis) = RedisServer::start("expired scope markers") else {
        return Ok(());
    };
    let config = redis
        .config()
        .timeout(Duration::from_secs(2))
        .max_lifetime(Duration::from_secs(1));
    let tier: Tier = RedisTier::new(config, Codec);
    let key = "report".to_owned();
    // A running instance: it has read the generation and the markers.
    assert!(tier.get(&key).await.is_none());
    for n in 0..tower_swr::redis::MAX_SCOPES {
        tier.invalidate_scope(format!("old/{n}/").as_bytes(), false)
            .await;
    }
    // Every one of those is past `max_lifetime`.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tier.put(&key, &1, &loaded_now()).await;
    assert_eq!(tier.get(&key).await.map(|(v, _)| v), Some(1), "written");
    // One more purge, of another scope: one live marker.
    tier.invalidate_scope(b"new/", false).await;
    assert_eq!(
        tier.get(&key).await.map(|(v, _)| v),
        Some(1),
        "a value no live purge covers stays shared (no clear of the tier)"
    );
    Ok(())
}

/// A write is refused when the value in Redis carries a later wall-clock `stored_at` (`w`),
/// even when the write holds the key's current lock grant. With an instance whose clock runs
/// ahead (30 s here), a soft purge followed by the fleet's refresh under the lock leaves the
/// soft-purged copy in Redis: the refresh is counted as fenced and every instance keeps
/// reading the stale copy (and refreshing it) until real time passes the fast clock's stamp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_under_the_lock_replaces_a_value_stamped_by_a_clock_that_runs_ahead() -> TestResult
{
    let Some(redis) = RedisServer::start("clock skew and w") else {
        return Ok(());
    };
    let fast: Tier = RedisTier::new(redis.config(), Codec);
    let slow: Tier = RedisTier::new(redis.config(), Codec);
    let key = "report".to_owned();
    // The instance whose clock is 30 s ahead writes the value.
    let mut ahead = loaded_now();
    for at in [
        &mut ahead.stored_at,
        &mut ahead.fresh_until,
        &mut ahead.stale_until,
        &mut ahead.error_until,
        &mut ahead.retain_until,
    ] {
        *at += Duration::from_secs(30);
    }
    fast.put(&key, &1, &ahead).await;
    // The other soft-purges it, wins the lock to refresh, and writes the new value under it.
    slow.mark_stale(&key).await;
    let claim = slow.claim(&key).await;
    assert!(
        matches!(claim, tower_swr::engine::Claim::Won { .. }),
        "{claim:?}"
    );
    slow.put_claimed(&key, &2, &loaded_now(), &claim).await;
    slow.release(&key, &claim).await;
    assert_eq!(
        slow.get(&key).await.map(|(v, _)| v),
        Some(2),
        "the refresh made under the lock after the soft purge is the value (fenced writes: {})",
        slow.stats().fenced_writes
    );
    Ok(())
}
