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
//! The engine underneath is usable without HTTP: see [`engine`].

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

pub mod engine;
mod http;

pub use crate::http::{
    CacheInfo, CacheKey, CacheStatus, ResponseFuture, SwrBody, SwrHandle, SwrLayer, SwrService,
    CACHE_STATUS, X_CACHE, X_CACHE_KEY,
};
