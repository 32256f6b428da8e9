//! A shared cache tier in Redis (feature `redis`): several instances of a service behave as one
//! cache.
//!
//! [`RedisTier`] is a [`SharedTier`] of the engine: the in-memory store stays the first tier
//! (a fresh hit never touches Redis and costs what it costs without it); a miss or a stale entry
//! consults Redis before the origin, under a Redis lock so that one instance in the fleet loads
//! a key while the others wait for its value, and every value loaded is written back. A copy
//! found in Redis past its freshness serves as a memory copy would: stale inside its
//! stale-while-revalidate window (answered at once, refreshed once in the background), and past
//! it revalidated and standing in for a failing origin (stale-if-error). The HTTP
//! layer takes it in one call, [`SwrLayer::redis`](crate::SwrLayer::redis); the engine through
//! [`SwrCacheBuilder::shared_tier`](crate::engine::SwrCacheBuilder::shared_tier) with a
//! [`TierCodec`] for its types.
//!
//! What it guarantees, and how:
//! - **One load per key per expiry for the fleet**: the instance that leads a miss or a
//!   refresh in its process asks for the key's lock (`SET NX PX` with a random token, released
//!   by compare-and-delete); the others wait for the winner's value (polling Redis, up to the
//!   engine's lock timeout), then load themselves. A waiter takes that value in whichever
//!   phase it is (a `max-age=0` response with a stale window is stale on arrival), and a miss
//!   whose read came before another instance's whole load (and whose lock request after it)
//!   is told the value is written and reads it. The lock is an efficiency lock: losing it
//!   means duplicated work, never corruption.
//! - **No lost or resurrected data**: every lock grant and every purge bumps the key's fence;
//!   a write carries the fence its load began under, and the write script refuses it when the
//!   fence moved (a lease that expired and passed on, a purge). Purges also stamp the key with
//!   Redis' own clock, so a `Vary` variant written before it is never read again.
//! - **Invalidation reaches every instance**: purges, soft purges and scope invalidations (an
//!   HTTP path, a prefix) are published on a pub/sub channel; each instance applies them to its
//!   memory within the delivery time (milliseconds). A scope's purge time is also kept in Redis
//!   (a hash of at most [`MAX_SCOPES`] scopes, each kept for the longest lifetime a value may
//!   have in Redis), so a value written before it is never taken from Redis, by any instance,
//!   even one that started after the purge. After the bus reconnects (or connects late: its
//!   first try failed), every in-memory entry re-checks Redis once (it is marked stale).
//! - **Redis failing never fails a request**: every call is bounded by the tier's timeout
//!   (50 ms by default); nothing connects until the first call (startup never waits); a circuit
//!   breaker stops calling a failing Redis and probes it again after a cooldown; a lock that
//!   cannot be asked for fails open (the instance loads); a value that cannot be decoded is a
//!   miss with one `warn!`. Logged once per change of state.
//! - **Cluster**: every Redis key of one cache key shares a hash tag, so every script touches
//!   one slot; a clear bumps a generation that is part of every key name (old keys expire by
//!   their TTL), so it reaches every node without a scan. The bus subscribes on one listed
//!   node (a classic `PUBLISH` reaches every node), the next listed one after a failure.
//!
//! Redis' TTL on a value is its physical lifetime: its last deadline (stale and error windows
//! included) plus a second, capped at [`RedisConfig::max_lifetime`]. The deadlines inside the
//! value are the logical lifetime: Redis never serves a value past them.
//!
//! Needs Redis 7.0 or later (`PEXPIRETIME`).

mod breaker;
mod bus;
mod codec;
mod scripts;
mod stats;

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster_async::ClusterConnection;
use ::redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};

pub use self::breaker::BreakerState;
pub use self::codec::TierCodec;
pub use self::stats::RedisStats;

use self::breaker::{Breaker, Pass};
use self::bus::Message;
use self::stats::Counters;
use crate::engine::{Claim, Lifetime, Remote, SharedTier, TierFuture};

/// Most scope invalidations (HTTP path or prefix purges) remembered at once; one more clears
/// the tier instead (a safe fallback: it invalidates more, never less).
pub const MAX_SCOPES: usize = 1024;

/// Where the Redis tier connects and how it behaves. Cheap to clone.
#[derive(Clone)]
pub struct RedisConfig {
    target: Target,
    prefix: String,
    timeout: Duration,
    lock_lease: Duration,
    max_lifetime: Duration,
    breaker_threshold: u32,
    breaker_cooldown: Duration,
}

#[derive(Clone)]
enum Target {
    Single(::redis::Client),
    Cluster(Vec<String>),
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let target = match &self.target {
            Target::Single(client) => format!("{:?}", client.get_connection_info().addr()),
            Target::Cluster(urls) => format!("cluster of {} nodes", urls.len()),
        };
        f.debug_struct("RedisConfig")
            .field("target", &target)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("lock_lease", &self.lock_lease)
            .field("max_lifetime", &self.max_lifetime)
            .finish_non_exhaustive()
    }
}

/// A Redis address that could not be read.
#[derive(Debug)]
pub struct RedisConfigError(RedisError);

impl std::fmt::Display for RedisConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid Redis address: {}", self.0)
    }
}

impl std::error::Error for RedisConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl RedisConfig {
    /// One Redis server (`redis://host:port/db`, `rediss://` with TLS where redis-rs is built
    /// with it, `redis+unix:///path`). Nothing connects until the first call.
    pub fn new(url: &str) -> Result<Self, RedisConfigError> {
        let client = ::redis::Client::open(url).map_err(RedisConfigError)?;
        Ok(Self::with_target(Target::Single(client)))
    }

    /// A Redis Cluster, from the addresses of some of its nodes.
    pub fn cluster<I, S>(urls: I) -> Result<Self, RedisConfigError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let urls: Vec<String> = urls.into_iter().map(|u| u.as_ref().to_owned()).collect();
        for url in &urls {
            ::redis::Client::open(url.as_str()).map_err(RedisConfigError)?;
        }
        if urls.is_empty() {
            return Err(RedisConfigError(RedisError::from((
                ::redis::ErrorKind::InvalidClientConfig,
                "a cluster needs at least one node address",
            ))));
        }
        Ok(Self::with_target(Target::Cluster(urls)))
    }

    fn with_target(target: Target) -> Self {
        Self {
            target,
            prefix: "swr".to_owned(),
            timeout: Duration::from_millis(50),
            lock_lease: Duration::from_secs(10),
            max_lifetime: Duration::from_secs(24 * 3600),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(1),
        }
    }

    /// The first part of every Redis key and of the bus channel (default `swr`): services that
    /// share one Redis but not their caches use different prefixes.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long one Redis call may take before the request goes on without it (default 50 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = crate::engine::setting(timeout).max(Duration::from_millis(1));
        self
    }

    /// How long a lock on a key lasts if its holder never gives it back (default 10 s): after
    /// it, another instance takes the load over.
    pub fn lock_lease(mut self, lease: Duration) -> Self {
        self.lock_lease = crate::engine::setting(lease).max(Duration::from_millis(1));
        self
    }

    /// The longest a value stays in Redis whatever its deadlines (default 24 h); scope
    /// invalidations are remembered as long.
    pub fn max_lifetime(mut self, lifetime: Duration) -> Self {
        self.max_lifetime = crate::engine::setting(lifetime).max(Duration::from_secs(1));
        self
    }

    /// After `threshold` consecutive failures, Redis is not called for `cooldown`, then one
    /// probe decides (default 5 failures, 1 s).
    pub fn circuit_breaker(mut self, threshold: u32, cooldown: Duration) -> Self {
        self.breaker_threshold = threshold;
        self.breaker_cooldown = crate::engine::setting(cooldown);
        self
    }

    /// The per-call timeout.
    pub fn call_timeout(&self) -> Duration {
        self.timeout
    }

    /// How long a fence outlives its last use: longer than any load under a lock.
    fn fence_lifetime(&self) -> Duration {
        (self.lock_lease * 6).max(Duration::from_secs(60))
    }
}

/// A connection: one server (reconnecting by itself) or a cluster.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(cmd, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// A scope invalidation remembered: values written (Redis time) at or before `at` that it
/// covers are not taken from Redis (`soft`: taken, but stale).
#[derive(Debug, Clone)]
struct Marker {
    scope: Vec<u8>,
    at: u64,
    soft: bool,
}

/// A field of the scopes hash: the scope, then its kind and purge time (`h1700000000000`).
type ScopeField = (Vec<u8>, Vec<u8>);

/// The generation and the scope markers, as this instance knows them.
#[derive(Debug, Default)]
struct Known {
    generation: u64,
    markers: Vec<Marker>,
}

/// A shared tier in Redis for an engine cache of `K → V`, encoded by `C`. Cheap to clone;
/// clones share the connection. See the [module docs](self).
pub struct RedisTier<K, V, C> {
    inner: Arc<Inner<K, V, C>>,
}

impl<K, V, C> Clone for RedisTier<K, V, C> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K, V, C> std::fmt::Debug for RedisTier<K, V, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTier")
            .field("config", &self.inner.config)
            .field("instance", &self.inner.instance)
            .finish_non_exhaustive()
    }
}

struct Inner<K, V, C> {
    config: RedisConfig,
    codec: C,
    /// The connection calls share, made on first use and again after the breaker opens (a
    /// connection gone silent, with no reset, would otherwise be probed forever).
    connection: std::sync::Mutex<Option<Connection>>,
    /// One connection attempt at a time.
    connecting: tokio::sync::Mutex<()>,
    /// When the generation was last checked with Redis, in ms since `started`.
    synced_at: AtomicU64,
    started: std::time::Instant,
    breaker: Breaker,
    counters: Counters,
    /// Tells this instance's bus messages from the others'.
    instance: u64,
    known: RwLock<Known>,
    /// Whether `known` has been read from Redis since the last (re)connection of the bus.
    loaded: AtomicBool,
    remote: OnceLock<Remote<K>>,
    bus_started: AtomicBool,
    bus_up: AtomicBool,
    /// Invalidations that did not reach Redis (down, frozen, the breaker open), sent again by
    /// a retry task until they do (see [`Inner::retry_later`]).
    pending: Mutex<Vec<Pending>>,
    /// Whether that retry task runs.
    retrying: AtomicBool,
    _values: PhantomData<fn() -> V>,
}

/// Starts the retry task of pending invalidations when dropped (see [`Inner::retry_later`]).
struct RetryWhenDone<'a, K, V, C>(&'a Arc<Inner<K, V, C>>)
where
    K: Send + Sync + 'static,
    V: Send + Sync + 'static,
    C: TierCodec<K, V>;

impl<K, V, C> Drop for RetryWhenDone<'_, K, V, C>
where
    K: Send + Sync + 'static,
    V: Send + Sync + 'static,
    C: TierCodec<K, V>,
{
    fn drop(&mut self) {
        self.0.retry_later();
    }
}

/// An invalidation to send again.
#[derive(Clone, PartialEq, Eq)]
enum Pending {
    /// A purge (soft or not) of the key with these bytes.
    Key { key: Vec<u8>, soft: bool },
    /// A scope invalidation.
    Scope { scope: Vec<u8>, soft: bool },
    /// A clear.
    Clear,
}

/// Most invalidations kept for a retry; past that they fold into one clear (purging more,
/// never less).
const MAX_PENDING: usize = 1024;

impl<K, V, C> RedisTier<K, V, C>
where
    K: Send + Sync + 'static,
    V: Send + Sync + 'static,
    C: TierCodec<K, V>,
{
    /// A tier on `config`, with `codec` for keys and values. Connects on first use.
    pub fn new(config: RedisConfig, codec: C) -> Self {
        Self {
            inner: Arc::new(Inner {
                breaker: Breaker::new(config.breaker_threshold, config.breaker_cooldown),
                config,
                codec,
                connection: std::sync::Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
                synced_at: AtomicU64::new(0),
                started: std::time::Instant::now(),
                counters: Counters::default(),
                instance: fastrand::u64(..),
                known: RwLock::new(Known::default()),
                loaded: AtomicBool::new(false),
                remote: OnceLock::new(),
                bus_started: AtomicBool::new(false),
                bus_up: AtomicBool::new(false),
                pending: Mutex::new(Vec::new()),
                retrying: AtomicBool::new(false),
                _values: PhantomData,
            }),
        }
    }

    /// The tier's counters.
    pub fn stats(&self) -> RedisStats {
        self.inner.counters.snapshot(
            self.inner.breaker.state(),
            self.inner.bus_up.load(Ordering::Acquire),
        )
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}

/// FNV-1a, 64 bits: stable across builds and platforms (the hash tag of a key's Redis names).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The Redis names of one cache key, each built when asked for (a read needs one of three).
/// Added to an unfenced write's load age: a purge this long before its load began counts as
/// during it (covers the write's way to Redis; refusing too much only shares less).
const UNFENCED_WRITE_MARGIN: Duration = Duration::from_millis(100);

struct Names {
    /// `{prefix}:1:{generation}:{{hash}}`, shared by every name of the key.
    head: Vec<u8>,
    key: Vec<u8>,
    /// The fence key's bytes, when the key is not its own fence key.
    fence: Option<Vec<u8>>,
}

impl Names {
    fn name(&self, kind: u8, bytes: &[u8]) -> Vec<u8> {
        let mut name = Vec::with_capacity(self.head.len() + 1 + bytes.len());
        name.extend_from_slice(&self.head);
        name.push(kind);
        name.extend_from_slice(bytes);
        name
    }

    fn fence(&self) -> &[u8] {
        self.fence.as_deref().unwrap_or(&self.key)
    }

    /// Where the value is.
    fn value(&self) -> Vec<u8> {
        self.name(b'd', &self.key)
    }

    /// Where the family's base (write times, purge stamps) is.
    fn base(&self) -> Vec<u8> {
        self.name(b'd', self.fence())
    }

    fn lock(&self) -> Vec<u8> {
        self.name(b'l', self.fence())
    }

    /// Whether the value is its own base (no `Vary` family).
    fn is_own_base(&self) -> bool {
        self.fence.as_ref().is_none_or(|fence| *fence == self.key)
    }
}

/// `n` as 16 lowercase hex digits, without `fmt`.
fn push_hex16(out: &mut Vec<u8>, n: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.extend(
        (0..16)
            .rev()
            .map(|nibble| DIGITS[((n >> (nibble * 4)) & 0xf) as usize]),
    );
}

impl<K, V, C> Inner<K, V, C>
where
    K: Send + Sync + 'static,
    V: Send + Sync + 'static,
    C: TierCodec<K, V>,
{
    fn meta_name(&self, what: &str) -> String {
        format!("{}:1:{{meta}}:{what}", self.config.prefix)
    }

    fn channel(&self) -> String {
        format!("{}:1:bus", self.config.prefix)
    }

    fn names(&self, key: &K, generation: u64) -> Names {
        let key_bytes = self.codec.key_bytes(key);
        // Encoded once when the key is its own fence key (the common case: no `Vary`).
        let fence = (!self.codec.is_own_fence_key(key)).then(|| self.codec.fence_key_bytes(key));
        // `{prefix}:1:{generation}:{{hash}}`: the hash tag puts every name of the key in one slot.
        let prefix = self.config.prefix.as_bytes();
        let mut head = Vec::with_capacity(prefix.len() + 44);
        head.extend_from_slice(prefix);
        head.extend_from_slice(b":1:");
        crate::http::push_decimal(&mut head, generation);
        head.extend_from_slice(b":{");
        push_hex16(&mut head, fnv1a(fence.as_deref().unwrap_or(&key_bytes)));
        head.push(b'}');
        Names {
            head,
            key: key_bytes,
            fence,
        }
    }

    async fn connect(&self) -> RedisResult<Connection> {
        let timeout = self.config.timeout;
        match &self.config.target {
            Target::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    // `call` cuts every call at the timeout: a second timer per call (redis-rs
                    // arms one for its response timeout) would only cost time.
                    .set_response_timeout(None)
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                let manager = client.get_connection_manager_with_config(config).await?;
                Ok(Connection::Single(manager))
            }
            Target::Cluster(urls) => {
                let client = ::redis::cluster::ClusterClientBuilder::new(urls.clone())
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .build()?;
                Ok(Connection::Cluster(client.get_async_connection().await?))
            }
        }
    }

    fn current_connection(&self) -> std::sync::MutexGuard<'_, Option<Connection>> {
        self.connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The shared connection, made if there is none.
    async fn connection(&self) -> RedisResult<Connection> {
        if let Some(connection) = self.current_connection().clone() {
            return Ok(connection);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(connection) = self.current_connection().clone() {
            return Ok(connection);
        }
        let connection = self.connect().await?;
        *self.current_connection() = Some(connection.clone());
        Ok(connection)
    }

    /// A failure that opened the breaker (or failed its probe): the next call, the probe,
    /// connects afresh. Calls under way keep their clone of the old connection.
    fn failed(&self, pass: Pass, why: &dyn std::fmt::Display) {
        if self.breaker.failed(pass, why) {
            self.current_connection().take();
        }
    }

    /// Runs one Redis call through the breaker, bounded by the timeout. `None`: no answer
    /// (skipped, failed, timed out; counted and, on a change of state, logged).
    async fn call<T, F, Fut>(&self, call: F) -> Option<T>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let Some(pass) = self.breaker.pass() else {
            self.counters.skipped.inc("swr_redis_skipped_total");
            return None;
        };
        let attempt = async {
            let connection = self.connection().await?;
            call(connection).await
        };
        // A probe whose caller stops waiting must not leave the breaker probing for good.
        let mut probe = ProbeGuard((pass == Pass::Probe).then_some(&self.breaker));
        let outcome = tokio::time::timeout(self.config.timeout, attempt).await;
        probe.0 = None;
        match outcome {
            Ok(Ok(value)) => {
                self.breaker.succeeded(pass);
                Some(value)
            }
            Ok(Err(error)) if error.is_timeout() => {
                // A timeout of redis-rs's own (connecting): counted as the tier's timeouts.
                self.counters.timeouts.inc("swr_redis_timeouts_total");
                self.failed(pass, &error);
                None
            }
            Ok(Err(error)) => {
                self.counters.errors.inc("swr_redis_errors_total");
                // An error Redis answered (out of memory, a script error) is not an outage.
                let transport = error.is_io_error()
                    || error.is_connection_dropped()
                    || error.is_connection_refusal()
                    || error.is_timeout();
                if transport {
                    self.failed(pass, &error);
                } else {
                    self.breaker.succeeded(pass);
                    tracing::debug!(%error, "redis tier: Redis refused a call");
                }
                None
            }
            Err(_) => {
                self.counters.timeouts.inc("swr_redis_timeouts_total");
                self.failed(pass, &"no answer within the timeout");
                None
            }
        }
    }

    /// The generation and markers, read from Redis first if not known since the bus last
    /// (re)connected.
    async fn generation(&self) -> Option<u64> {
        if !self.loaded.load(Ordering::Acquire) {
            self.reload().await?;
        } else if self.sync_due() {
            self.sync_generation().await;
        }
        Some(self.read_known().generation)
    }

    /// Whether this caller is the one to check the generation with Redis again: once a second
    /// (instances that saw a `FLUSHALL` at different times agree again within it).
    fn sync_due(&self) -> bool {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.synced_at.load(Ordering::Relaxed);
        now.saturating_sub(last) >= 1000
            && (self.synced_at)
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    fn read_known(&self) -> std::sync::RwLockReadGuard<'_, Known> {
        self.known
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_known(&self) -> std::sync::RwLockWriteGuard<'_, Known> {
        self.known
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reads the generation and the scope markers from Redis, dropping markers older than any
    /// value can be.
    async fn reload(&self) -> Option<()> {
        let (stored, markers) = self
            .call(|mut connection| {
                let (generation, scopes) = (self.meta_name("gen"), self.meta_name("scopes"));
                async move {
                    let mut pipe = ::redis::pipe();
                    pipe.get(&generation).hgetall(&scopes);
                    let (generation, scopes): (Option<u64>, Vec<ScopeField>) =
                        pipe.query_async(&mut connection).await?;
                    Ok((generation.unwrap_or(0), scopes))
                }
            })
            .await?;
        // Redis lost the generation this instance knows (a `FLUSHALL`): written back (one
        // more round trip, only then).
        let generation = if stored < self.read_known().generation {
            self.sync_generation().await?
        } else {
            stored
        };
        let oldest = self.oldest_marker();
        let mut expired = Vec::new();
        let mut kept = Vec::new();
        for (scope, stamp) in markers {
            let parsed = stamp.split_first().and_then(|(kind, at)| {
                let at: u64 = std::str::from_utf8(at).ok()?.parse().ok()?;
                Some((*kind == b's', at))
            });
            match parsed {
                Some((soft, at)) if at >= oldest => kept.push(Marker { scope, at, soft }),
                _ => expired.push(scope),
            }
        }
        let unseen: Vec<(Vec<u8>, bool)> = {
            let mut known = self.write_known();
            if known.generation != generation {
                // A clear heard since the read would have raised it: markers of another
                // generation are not this one's.
                if known.generation > generation {
                    return Some(());
                }
                known.generation = generation;
                known.markers.clear();
            }
            let unseen = (kept.iter())
                .filter(|marker| {
                    !(known.markers.iter()).any(|m| m.scope == marker.scope && m.at >= marker.at)
                })
                .map(|marker| (marker.scope.clone(), marker.soft))
                .collect();
            // Merged, not replaced: a purge heard on the bus while the read was on its way is
            // newer than what it returned.
            for marker in kept {
                match known.markers.iter_mut().find(|m| m.scope == marker.scope) {
                    Some(existing) if existing.at >= marker.at => {}
                    Some(existing) => *existing = marker,
                    None => known.markers.push(marker),
                }
            }
            known.markers.retain(|m| m.at >= oldest);
            unseen
        };
        // Invalidations this instance did not hear of on the bus (it was away, or new): those
        // the codec applies itself (tag purges) are applied now; the others are checked on
        // every read, and memory copies re-check Redis after a bus gap.
        for (scope, soft) in unseen {
            self.codec.apply_scope(&scope, soft);
        }
        self.loaded.store(true, Ordering::Release);
        if !expired.is_empty() {
            let scopes = self.meta_name("scopes");
            self.call(|mut connection| async move {
                ::redis::cmd("HDEL")
                    .arg(&scopes)
                    .arg(expired)
                    .query_async::<()>(&mut connection)
                    .await
            })
            .await;
        }
        Some(())
    }

    /// Sends `message` on the bus; whether Redis took it.
    fn publish(&self, message: Message) -> impl Future<Output = bool> + '_ {
        let payload = message.encode(self.instance);
        let channel = self.channel();
        async move {
            let sent = self
                .call(|mut connection| async move {
                    ::redis::cmd("PUBLISH")
                        .arg(channel)
                        .arg(payload)
                        .query_async::<i64>(&mut connection)
                        .await
                })
                .await;
            if sent.is_some() {
                self.counters.bus_sent.inc("swr_redis_bus_sent_total");
            }
            sent.is_some()
        }
    }

    /// Keeps `invalidation` for the retry task until [`sent`](Self::sent) says it reached
    /// Redis and the bus: kept before the first call, so a caller that stops waiting (the
    /// engine's timeout) leaves it to the retry task.
    fn keep_pending(&self, invalidation: Pending) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.contains(&invalidation) {
            return;
        }
        if pending.len() >= MAX_PENDING {
            tracing::warn!(
                max = MAX_PENDING,
                "redis tier: too many invalidations waiting for Redis; a clear is sent instead"
            );
            pending.clear();
            pending.push(Pending::Clear);
            return;
        }
        pending.push(invalidation);
    }

    /// `invalidation` reached Redis and the bus.
    fn sent(&self, invalidation: &Pending) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.retain(|kept| kept != invalidation);
    }

    /// Sends `invalidation` again (kept again when it fails).
    async fn replay(&self, invalidation: Pending) {
        match invalidation {
            Pending::Key { key, soft } => match self.codec.decode_key(&key) {
                Some(key) => self.purge(&key, soft).await,
                None => tracing::debug!("redis tier: a pending purge's key no longer decodes"),
            },
            Pending::Scope { scope, soft } => self.invalidate_scope(&scope, soft).await,
            Pending::Clear => self.clear().await,
        }
    }
}

impl<K, V, C> Inner<K, V, C>
where
    K: Send + Sync + 'static,
    V: Send + Sync + 'static,
    C: TierCodec<K, V>,
{
    /// Starts the retry task if invalidations are pending and none runs: it sends them again,
    /// pausing 100 ms and doubling up to 5 s between rounds, until none is left (or the tier is
    /// dropped). Other instances' memory copies stop being served once Redis takes them.
    fn retry_later(self: &Arc<Self>) {
        let has_pending =
            || !(self.pending.lock().unwrap_or_else(PoisonError::into_inner)).is_empty();
        if !has_pending() || self.retrying.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.retrying.store(false, Ordering::Release);
            return;
        };
        let tier = Arc::downgrade(self);
        tracing::warn!("redis tier: an invalidation did not reach Redis; retrying until it does");
        runtime.spawn(async move {
            let mut pause = Duration::from_millis(100);
            loop {
                tokio::time::sleep(pause).await;
                let Some(tier) = tier.upgrade() else {
                    return;
                };
                let round = std::mem::take(
                    &mut *tier.pending.lock().unwrap_or_else(PoisonError::into_inner),
                );
                for invalidation in round {
                    tier.replay(invalidation).await;
                }
                let left = tier
                    .pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .len();
                if left == 0 {
                    tracing::info!("redis tier: the pending invalidations reached Redis");
                    tier.retrying.store(false, Ordering::Release);
                    // One kept since is sent by a task of its own.
                    tier.retry_later();
                    return;
                }
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        });
    }

    async fn get(&self, key: &K) -> Option<(V, Lifetime)> {
        let generation = self.generation().await?;
        let names = self.names(key, generation);
        type Read = (
            Option<Vec<u8>>,
            Option<u64>,
            Option<u64>,
            Option<u64>,
            Option<Vec<u8>>,
        );
        let read: Read = self
            .call(|mut connection| async move {
                let value = names.value();
                if names.is_own_base() {
                    // A key that is its own base: one plain command, cheaper than a script.
                    // Sized for its arguments: no regrowth while they are written.
                    let mut read = ::redis::Cmd::with_capacity(7, value.len() + 11);
                    read.arg("HMGET").arg(value).arg(&["v", "s", "p", "q", "y"]);
                    read.query_async(&mut connection).await
                } else {
                    scripts::READ
                        .key(value)
                        .key(names.base())
                        .invoke_async(&mut connection)
                        .await
                }
            })
            .await?;
        let (Some(bytes), Some(written)) = (read.0, read.1) else {
            if let Some(hint) = read.4 {
                // No value of its own, but a family: what finds its members.
                self.codec.learn_family(key, &hint);
            }
            self.counters.misses.inc("swr_redis_misses_total");
            return None;
        };
        if read.2.is_some_and(|purged| written <= purged) {
            self.counters.misses.inc("swr_redis_misses_total");
            return None;
        }
        let Some((value, mut lifetime)) = self.codec.decode(key, &bytes) else {
            self.counters.corrupt.inc("swr_redis_corrupt_total");
            self.counters.misses.inc("swr_redis_misses_total");
            tracing::warn!(
                bytes = bytes.len(),
                "redis tier: a value in Redis could not be decoded; taken as a miss"
            );
            return None;
        };
        let mut stale = read.3.is_some_and(|soft| written <= soft);
        for marker in &self.read_known().markers {
            if written <= marker.at && self.codec.scope_matches_value(&marker.scope, key, &value) {
                if !marker.soft {
                    self.counters.misses.inc("swr_redis_misses_total");
                    return None;
                }
                stale = true;
            }
        }
        if stale {
            lifetime.fresh_until = lifetime.fresh_until.min(lifetime.stored_at);
        }
        self.counters.hits.inc("swr_redis_hits_total");
        Some((value, lifetime))
    }

    /// Whether Redis holds a value of `key`'s family written after every purge that reaches
    /// it (by key or by scope).
    async fn contains(&self, key: &K) -> bool {
        let Some(generation) = self.generation().await else {
            return false;
        };
        let base = self.names(key, generation).base();
        // Whether the base holds a value, when it was written, a variant's last write, the purge.
        type Held = (bool, Option<u64>, Option<u64>, Option<u64>);
        let read: Option<Held> = self
            .call(|mut connection| async move {
                scripts::CONTAINS
                    .key(base)
                    .invoke_async(&mut connection)
                    .await
            })
            .await;
        let Some((has_value, written, variant_written, purged)) = read else {
            return false;
        };
        let written = written.filter(|_| has_value).max(variant_written);
        let Some(written) = written.filter(|at| purged.is_none_or(|p| *at > p)) else {
            return false;
        };
        let known = self.read_known();
        !(known.markers.iter()).any(|marker| {
            !marker.soft && written <= marker.at && self.codec.scope_matches(&marker.scope, key)
        })
    }

    /// `again`: a waiter polling while another instance holds the lock (not counted as lost).
    /// `read_age`: for a miss, how long ago it sent its read of the key (see
    /// [`SharedTier::claim_after_read`]).
    async fn claim(&self, key: &K, again: bool, read_age: Option<Duration>) -> Claim {
        let asked = std::time::Instant::now();
        let Some(generation) = self.generation().await else {
            return Claim::Open;
        };
        // The read was sent longer ago by what the generation took (a check with Redis once
        // a second): counted, or a write between the read and this claim could be missed.
        let read_age = read_age.map(|age| age + asked.elapsed());
        let names = self.names(key, generation);
        let token = fastrand::u64(1..);
        let lease = millis(self.config.lock_lease);
        let fence_lifetime = millis(self.config.fence_lifetime());
        let start = fastrand::u64(..1 << 40);
        let answer: Option<(u8, u64)> = self
            .call(|mut connection| async move {
                scripts::CLAIM
                    .key(names.base())
                    .key(names.lock())
                    .arg(token)
                    .arg(lease)
                    .arg(fence_lifetime)
                    .arg(start)
                    .arg(if again { "1" } else { "0" })
                    .arg(read_age.map_or(String::new(), |age| millis(age).to_string()))
                    .invoke_async(&mut connection)
                    .await
            })
            .await;
        match answer {
            Some((1, fence)) => {
                self.counters.locks_won.inc("swr_redis_locks_won_total");
                Claim::Won { token, fence }
            }
            Some((2, fence)) => Claim::Written { fence },
            Some((_, fence)) => {
                if !again {
                    self.counters.locks_lost.inc("swr_redis_locks_lost_total");
                }
                Claim::Held { fence }
            }
            None => Claim::Open,
        }
    }

    async fn put(&self, key: &K, value: &V, lifetime: &Lifetime, claim: &Claim) {
        let Some(bytes) = self.codec.encode(key, value, lifetime) else {
            self.counters.unshared.inc("swr_redis_unshared_total");
            return;
        };
        let now = SystemTime::now();
        let last = lifetime.last_deadline() + Duration::from_secs(1);
        let expire_at = unix_ms(last.min(now + self.config.max_lifetime));
        if expire_at <= unix_ms(now) {
            return;
        }
        let Some(generation) = self.generation().await else {
            return;
        };
        let names = self.names(key, generation);
        let fence = match claim {
            Claim::Won { fence, .. } | Claim::Held { fence } | Claim::Written { fence } => {
                fence.to_string()
            }
            _ => String::new(),
        };
        // Without a fence (the lock could not be asked in time), a purge of the key since the
        // load began still wins: Redis compares its own purge time with the load's age.
        let load_age = fence.is_empty().then(|| {
            let since_stored = now.duration_since(lifetime.stored_at).unwrap_or_default();
            let age = since_stored + lifetime.load_time + UNFENCED_WRITE_MARGIN;
            u64::try_from(age.as_millis())
                .unwrap_or(u64::MAX)
                .to_string()
        });
        let stored_at = unix_ms(lifetime.stored_at);
        let hint = (!names.is_own_base())
            .then(|| self.codec.family_hint(key, value))
            .flatten()
            .unwrap_or_default();
        let written: Option<u8> = self
            .call(|mut connection| async move {
                scripts::PUT
                    .key(names.value())
                    .key(names.base())
                    .arg(bytes)
                    .arg(fence)
                    .arg(stored_at)
                    .arg(expire_at)
                    .arg(hint)
                    .arg(load_age.unwrap_or_default())
                    .invoke_async(&mut connection)
                    .await
            })
            .await;
        match written {
            Some(1) => self.counters.writes.inc("swr_redis_writes_total"),
            Some(_) => {
                self.counters
                    .fenced_writes
                    .inc("swr_redis_fenced_writes_total");
                tracing::debug!(
                    "redis tier: a write was fenced off (a newer claim, a purge or a newer value)"
                );
            }
            None => {}
        }
    }

    async fn release(&self, key: &K, claim: &Claim) {
        let Claim::Won { token, .. } = claim else {
            return;
        };
        let Some(generation) = self.generation().await else {
            return;
        };
        let lock = self.names(key, generation).lock();
        let token = *token;
        self.call(|mut connection| async move {
            scripts::RELEASE
                .key(lock)
                .arg(token)
                .invoke_async::<i64>(&mut connection)
                .await
        })
        .await;
    }

    async fn purge(&self, key: &K, soft: bool) {
        let bytes = self.codec.key_bytes(key);
        let kept = Pending::Key {
            key: bytes.clone(),
            soft,
        };
        self.keep_pending(kept.clone());
        let mut stamped = false;
        if let Some(generation) = self.generation().await {
            let names = self.names(key, generation);
            let fence_lifetime = millis(self.config.fence_lifetime());
            stamped = self
                .call(|mut connection| async move {
                    scripts::PURGE
                        .key(names.base())
                        .key(names.lock())
                        .arg(if soft { "q" } else { "p" })
                        .arg(fence_lifetime)
                        .invoke_async::<i64>(&mut connection)
                        .await
                })
                .await
                .is_some();
        }
        let message = if soft {
            Message::MarkStale(bytes)
        } else {
            Message::Remove(bytes)
        };
        if self.publish(message).await && stamped {
            self.sent(&kept);
        }
    }

    async fn clear(&self) {
        self.keep_pending(Pending::Clear);
        let (generation, scopes) = (self.meta_name("gen"), self.meta_name("scopes"));
        let known = self.read_known().generation;
        let next: Option<u64> = self
            .call(|mut connection| async move {
                scripts::CLEAR
                    .key(generation)
                    .key(scopes)
                    .arg(known)
                    .invoke_async(&mut connection)
                    .await
            })
            .await;
        let sent = match next {
            Some(next) => {
                self.adopt_generation(next);
                self.publish(Message::Clear { generation: next }).await
            }
            None => false,
        };
        if sent {
            self.sent(&Pending::Clear);
        }
    }

    /// The generation as Redis holds it, written back first where Redis holds less than this
    /// instance knows (see [`scripts::GENERATION`]); a higher one is adopted. Run at every
    /// reload and every second by the bus, so instances that saw a `FLUSHALL` at different
    /// times agree again.
    async fn sync_generation(&self) -> Option<u64> {
        let known = self.read_known().generation;
        let generation: u64 = self
            .call(|mut connection| {
                let name = self.meta_name("gen");
                async move {
                    scripts::GENERATION
                        .key(name)
                        .arg(known)
                        .invoke_async(&mut connection)
                        .await
                }
            })
            .await?;
        if generation > known {
            self.adopt_generation(generation);
            // The new generation's scope markers are read at the next use.
            self.loaded.store(false, Ordering::Release);
        }
        Some(generation)
    }

    fn adopt_generation(&self, generation: u64) {
        let mut known = self.write_known();
        if generation > known.generation {
            known.generation = generation;
            known.markers.clear();
        }
    }

    /// The oldest a scope marker may be and still matter (no value is older), in Unix ms.
    fn oldest_marker(&self) -> u64 {
        unix_ms(SystemTime::now()).saturating_sub(millis(self.config.max_lifetime))
    }

    async fn invalidate_scope(&self, scope: &[u8], soft: bool) {
        // Only markers that still matter count towards the bound.
        let oldest = self.oldest_marker();
        self.write_known().markers.retain(|m| m.at >= oldest);
        if self.read_known().markers.len() >= MAX_SCOPES {
            tracing::warn!(
                max = MAX_SCOPES,
                "redis tier: too many scope invalidations remembered; clearing the tier instead"
            );
            self.clear().await;
            return;
        }
        let kept = Pending::Scope {
            scope: scope.to_vec(),
            soft,
        };
        self.keep_pending(kept.clone());
        let scopes = self.meta_name("scopes");
        let owned = scope.to_vec();
        let at: Option<u64> = self
            .call(|mut connection| async move {
                scripts::MARK_SCOPE
                    .key(scopes)
                    .arg(owned)
                    .arg(if soft { "s" } else { "h" })
                    .invoke_async(&mut connection)
                    .await
            })
            .await;
        let Some(at) = at else {
            return;
        };
        self.remember(Marker {
            scope: scope.to_vec(),
            at,
            soft,
        });
        let sent = self
            .publish(Message::Scope {
                soft,
                at,
                scope: scope.to_vec(),
            })
            .await;
        if sent {
            self.sent(&kept);
        }
    }

    fn remember(&self, marker: Marker) {
        let oldest = self.oldest_marker();
        let mut known = self.write_known();
        known.markers.retain(|m| m.at >= oldest);
        match known.markers.iter_mut().find(|m| m.scope == marker.scope) {
            Some(existing) if existing.at <= marker.at => *existing = marker,
            Some(_) => {}
            None => known.markers.push(marker),
        }
    }

    /// Applies a message from the bus (from another instance) to this instance's memory.
    fn apply(&self, payload: &[u8]) {
        let Some((sender, message)) = Message::decode(payload) else {
            tracing::debug!("redis tier: a bus message of another format; ignored");
            return;
        };
        if sender == self.instance {
            return;
        }
        let Some(remote) = self.remote.get() else {
            return;
        };
        self.counters
            .bus_received
            .inc("swr_redis_bus_received_total");
        match message {
            Message::Remove(bytes) => {
                if let Some(key) = self.codec.decode_key(&bytes) {
                    remote.remove(&key);
                    if self.codec.has_families() {
                        remote.invalidate_where(false, &|k| self.codec.same_family(&key, k));
                    }
                }
            }
            Message::MarkStale(bytes) => {
                if let Some(key) = self.codec.decode_key(&bytes) {
                    remote.mark_stale(&key);
                }
            }
            Message::Scope { soft, at, scope } => {
                // Remembered first: a read that misses the codec's own record sees the marker.
                self.remember(Marker {
                    scope: scope.clone(),
                    at,
                    soft,
                });
                if !self.codec.apply_scope(&scope, soft) {
                    remote.invalidate_where(soft, &|key| self.codec.scope_matches(&scope, key));
                }
            }
            Message::Clear { generation } => {
                self.adopt_generation(generation);
                remote.clear();
            }
        }
    }
}

/// Ends a half-open probe whose call was dropped before it reported (see [`Breaker::abandon`]).
struct ProbeGuard<'a>(Option<&'a Breaker>);

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if let Some(breaker) = self.0 {
            breaker.abandon();
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// How long the bus's connection and its liveness pings may take. Generous: each gap costs
/// every entry in memory a re-check and every load under way its store, so a loaded machine's
/// slow answer must not count as a lost bus.
const BUS_TIMEOUT: Duration = Duration::from_secs(3);

/// The bus subscriber of one tier: (re)subscribes, applies messages, and after a gap has
/// every in-memory entry re-check Redis. Ends when the tier or its cache is dropped.
async fn run_bus<K, V, C>(tier: Weak<Inner<K, V, C>>)
where
    K: Send + Sync + 'static,
    V: Send + Sync + 'static,
    C: TierCodec<K, V>,
{
    let mut pause = Duration::from_millis(100);
    let mut connected_before = false;
    // Whether the bus was down (a connection failed or was lost) while this tier served:
    // what was published meanwhile is lost, the first connection's included.
    let mut missed = false;
    // Which of a cluster's listed nodes the bus tries: the next one after each failure, so a
    // node that is down (or gone for good) never keeps the bus down.
    let mut node = 0usize;
    loop {
        let Some(inner) = tier.upgrade() else {
            return;
        };
        if !inner.remote.get().is_some_and(Remote::is_attached) {
            return;
        }
        let client = match &inner.config.target {
            Target::Single(client) => Ok(client.clone()),
            // A classic PUBLISH reaches every node of a cluster: one node's channel will do.
            Target::Cluster(urls) => ::redis::Client::open(urls[node % urls.len()].as_str()),
        };
        let channel = inner.channel();
        let connect = async {
            let mut pubsub = client?.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, RedisError>(pubsub)
        };
        let pubsub = tokio::time::timeout(BUS_TIMEOUT, connect).await;
        let Ok(Ok(pubsub)) = pubsub else {
            node = node.wrapping_add(1);
            missed = true;
            if inner.bus_up.swap(false, Ordering::AcqRel) {
                tracing::warn!("redis tier: the invalidation bus is down; reconnecting");
            }
            drop(inner);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
            continue;
        };
        pause = Duration::from_millis(100);
        // Whatever was published while away is lost: read the markers again, and have every
        // entry in memory re-check Redis once (after a first connection that failed too: the
        // tier may have served values meanwhile).
        inner.loaded.store(false, Ordering::Release);
        if missed {
            if let Some(remote) = inner.remote.get() {
                remote.invalidate_where(true, &|_| true);
            }
            if connected_before {
                tracing::info!("redis tier: the invalidation bus is back");
            } else {
                tracing::info!("redis tier: the invalidation bus is up");
            }
        }
        connected_before = true;
        inner.bus_up.store(true, Ordering::Release);
        drop(inner);
        let (mut sink, mut messages) = pubsub.split();
        loop {
            let next = std::future::poll_fn(|cx| poll_next(&mut messages, cx));
            let message = tokio::select! {
                message = next => message,
                () = tokio::time::sleep(Duration::from_secs(1)) => {
                    let alive = tier.upgrade().is_some_and(|inner| {
                        inner.remote.get().is_some_and(Remote::is_attached)
                    });
                    if !alive {
                        return;
                    }
                    // A quiet second: the subscription is asked whether it still stands (a
                    // connection gone silent, with no reset, would never end the stream).
                    let ping = tokio::time::timeout(BUS_TIMEOUT, sink.ping::<::redis::Value>());
                    if matches!(ping.await, Ok(Ok(_))) {
                        continue;
                    }
                    None
                }
            };
            let Some(message) = message else {
                node = node.wrapping_add(1);
                missed = true;
                break;
            };
            let Some(inner) = tier.upgrade() else {
                return;
            };
            inner.apply(message.get_payload_bytes());
        }
        if let Some(inner) = tier.upgrade() {
            if inner.bus_up.swap(false, Ordering::AcqRel) {
                tracing::warn!("redis tier: lost the invalidation bus; reconnecting");
            }
        }
    }
}

fn poll_next<S: futures_core::Stream + Unpin>(
    stream: &mut S,
    cx: &mut Context<'_>,
) -> Poll<Option<S::Item>> {
    Pin::new(stream).poll_next(cx)
}

impl<K, V, C> SharedTier<K, V> for RedisTier<K, V, C>
where
    K: Send + Sync + 'static,
    V: Send + Sync + 'static,
    C: TierCodec<K, V>,
{
    fn get<'a>(&'a self, key: &'a K) -> TierFuture<'a, Option<(V, Lifetime)>> {
        self.start_bus();
        Box::pin(self.inner.get(key))
    }

    fn put<'a>(&'a self, key: &'a K, value: &'a V, lifetime: &'a Lifetime) -> TierFuture<'a, ()> {
        Box::pin(self.inner.put(key, value, lifetime, &Claim::Open))
    }

    fn remove<'a>(&'a self, key: &'a K) -> TierFuture<'a, ()> {
        Box::pin(async move {
            // Whether it ends or its caller stops waiting, what did not reach Redis is retried.
            let _retry = RetryWhenDone(&self.inner);
            self.inner.purge(key, false).await;
        })
    }

    fn contains<'a>(&'a self, key: &'a K) -> TierFuture<'a, bool>
    where
        V: 'a,
    {
        Box::pin(self.inner.contains(key))
    }

    fn claim<'a>(&'a self, key: &'a K) -> TierFuture<'a, Claim> {
        Box::pin(self.inner.claim(key, false, None))
    }

    fn claim_again<'a>(&'a self, key: &'a K) -> TierFuture<'a, Claim> {
        Box::pin(self.inner.claim(key, true, None))
    }

    fn claim_after_read<'a>(&'a self, key: &'a K, read_age: Duration) -> TierFuture<'a, Claim> {
        Box::pin(self.inner.claim(key, false, Some(read_age)))
    }

    fn put_claimed<'a>(
        &'a self,
        key: &'a K,
        value: &'a V,
        lifetime: &'a Lifetime,
        claim: &'a Claim,
    ) -> TierFuture<'a, ()> {
        Box::pin(self.inner.put(key, value, lifetime, claim))
    }

    fn release<'a>(&'a self, key: &'a K, claim: &'a Claim) -> TierFuture<'a, ()> {
        Box::pin(self.inner.release(key, claim))
    }

    fn mark_stale<'a>(&'a self, key: &'a K) -> TierFuture<'a, ()> {
        Box::pin(async move {
            // Whether it ends or its caller stops waiting, what did not reach Redis is retried.
            let _retry = RetryWhenDone(&self.inner);
            self.inner.purge(key, true).await;
        })
    }

    fn clear(&self) -> TierFuture<'_, ()> {
        Box::pin(async move {
            // Whether it ends or its caller stops waiting, what did not reach Redis is retried.
            let _retry = RetryWhenDone(&self.inner);
            self.inner.clear().await;
        })
    }

    fn invalidate_scope<'a>(&'a self, scope: &'a [u8], soft: bool) -> TierFuture<'a, ()> {
        Box::pin(async move {
            // Whether it ends or its caller stops waiting, what did not reach Redis is retried.
            let _retry = RetryWhenDone(&self.inner);
            self.inner.invalidate_scope(scope, soft).await;
        })
    }

    fn attach(&self, remote: Remote<K>) {
        if self.inner.remote.set(remote).is_err() {
            tracing::warn!(
                "redis tier: attached to a second cache; its invalidations go to the first only"
            );
            return;
        }
        self.start_bus();
    }

    fn fences_invalidations(&self) -> bool {
        true
    }

    /// Every Redis call is cut at [`RedisConfig::timeout`] (a first read may make two: the
    /// generation and the value).
    fn bounds_reads(&self) -> bool {
        true
    }
}

impl<K, V, C> RedisTier<K, V, C>
where
    K: Send + Sync + 'static,
    V: Send + Sync + 'static,
    C: TierCodec<K, V>,
{
    /// Starts the bus subscriber once, on the current runtime (none yet: on first use).
    fn start_bus(&self) {
        if self.inner.bus_started.load(Ordering::Acquire) || self.inner.remote.get().is_none() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.inner.bus_started.swap(true, Ordering::AcqRel) {
            return;
        }
        runtime.spawn(run_bus(Arc::downgrade(&self.inner)));
    }
}
