//! Stale-while-revalidate caching for any tower service and axum router.
//!
//! ```
//! use axum::{routing::get, Router};
//! use tower_swr::SwrLayer;
//!
//! async fn prices() -> &'static str {
//!     // a slow partner API, a database, a scraper...
//!     "42"
//! }
//!
//! let app: Router = Router::new()
//!     .route("/prices", get(prices))
//!     .layer(SwrLayer::new());
//! # let _ = app;
//! ```
//!
//! - **Fresh** entries are answered from memory; the inner service is not called.
//! - **Stale** entries inside their stale-while-revalidate window are answered at once, and ONE
//!   detached refresh per key runs on a clone of the inner service.
//! - **Misses** (nothing usable) for one key are coalesced into one origin call.
//! - **Origin failures** (errors, 5xx) are answered from the last good entry while it is inside
//!   its stale-if-error window, with a warning logged; with nothing usable, the origin's own
//!   response or error goes through unchanged.
//! - Lifetimes come from the response's `Cache-Control` (`s-maxage`, `max-age`,
//!   `stale-while-revalidate=`, `stale-if-error=`, `Expires`) or the layer's defaults.
//! - Every response carries an RFC 9211 `Cache-Status`, cached answers an `Age`, and a
//!   [`CacheInfo`] extension; [`SwrLayer::stats`] gives the counters.
//!
//! # Presets
//!
//! - [`SwrLayer::new`] — for an application's own handlers: responses that say nothing about
//!   freshness are cached with the defaults (60 s fresh, 120 s stale-while-revalidate, 300 s
//!   stale-if-error).
//! - [`SwrLayer::shared_cache`] — for a caching proxy in front of origins you do not control:
//!   strict RFC 9111 (only explicit or heuristic freshness; stale only as the response allows).
//!   `examples/reverse_proxy.rs` passes 150 of the 165 required tests of the public
//!   `http-cache-tests` 0.4.5 conformance suite; 9 of the others expect a malformed `Age` to
//!   make a response stale, where RFC 9111 §5.1 says to ignore it, as this crate does.
//!
//! Both validate expired entries with the origin (`If-None-Match`/`If-Modified-Since`, 304s
//! update the stored headers), answer clients' conditional and range requests from stored
//! responses, invalidate on successful unsafe requests, keep one entry per `Vary` variant, and
//! never store or share `no-store`, `private` or `Set-Cookie` responses, nor answers to
//! requests with `Authorization` (unless `public`, `s-maxage`, `must-revalidate`) or `Cookie`
//! (unless `public`, `s-maxage`).
//!
//! # Operations
//!
//! [`SwrLayer::handle`] gives a cloneable [`SwrHandle`]: counters ([`engine::Stats`]), purge,
//! prefix purge, soft purge (mark stale) and graceful shutdown of background refreshes.
//! Refreshes time out (30 s), back off per key (jittered, 1 s doubling to 60 s) and pause
//! together behind a circuit breaker after repeated failures. TTL jitter and XFetch early
//! refresh keep popular keys from expiring together.
//!
//! With the `serde` feature (default), [`Stats`] is `Serialize` and `Deserialize`.
//!
//! With the `metrics` feature (default), the counters are mirrored to the `metrics` facade
//! (install the recorder before building the layer):
//!
//! | name | type | labels |
//! |---|---|---|
//! | `swr_requests_total` | counter | `cache`, `status` = `hit`, `stale`, `miss`, `collapsed`, `bypass`, `stale_if_error`, `failure_hit`, `shared_tier` |
//! | `swr_refreshes_total` | counter | `cache`, `outcome` = `started`, `succeeded`, `failed`, `timed_out`, `panicked` |
//! | `swr_stores_total` | counter | `cache`, `result` = `stored`, `too_large` |
//! | `swr_loads_total` | counter | `cache`, `outcome` = `failed` (a miss's load failed, timed out or panicked) |
//! | `swr_entries`, `swr_bytes`, `swr_refreshes_running` | gauge | `cache` |
//!
//! # Without HTTP
//!
//! The engine underneath is usable on its own, e.g. for configuration loaded from a database:
//! see [`engine`].
//!
//! # How it is built
//!
//! One engine decides; the HTTP layer is a client of it. [`engine::SwrCache`] alone decides
//! fresh, stale or miss, runs the one background refresh per key, coalesces misses, falls back
//! on stale values, shares failures and counts, for its own `get_or_load` and for the HTTP
//! layer alike; the layer only says how to ask the inner service, what an answer means
//! (storable? a failure? how long?) and how to render what the engine decided. Under the
//! in-memory store, [`engine::SharedTier`] is the seam for a tier shared between processes
//! (values cross it with a wall-clock [`engine::Lifetime`]; keys have stable bytes,
//! [`CacheKey::to_bytes`]). The repository's `docs/architecture.md` maps every file.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

pub mod engine;
mod http;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;

pub use crate::engine::Stats;

#[doc(hidden)]
pub use crate::http::{fuzz_codec, fuzz_codec_seeds};

pub use crate::http::{
    CacheInfo, CacheKey, CacheStatus, ResponseFuture, SwrBody, SwrHandle, SwrLayer, SwrService,
    CACHE_STATUS, X_CACHE, X_CACHE_KEY,
};
