//! The tower adapter: [`SwrLayer`], [`SwrService`] and what they put on responses.

mod admission;
mod body;
mod codec;
mod conditional;
mod config;
mod failure;
mod fill;
mod future;
mod handle;
mod invalidation;
mod key;
mod layer;
mod origin;
mod policy;
mod render;
mod service;
mod status;
mod stored;
mod tags;
mod template;
#[cfg(feature = "redis")]
mod tier;
mod vary_index;

pub use self::body::SwrBody;
#[doc(hidden)]
pub use self::codec::{fuzz_codec, fuzz_codec_seeds};
pub use self::future::ResponseFuture;
pub use self::handle::SwrHandle;
pub use self::key::CacheKey;
pub use self::layer::SwrLayer;
pub use self::service::SwrService;
#[cfg(feature = "redis")]
pub(crate) use self::status::push_decimal;
pub use self::status::{CacheInfo, CacheStatus, CACHE_STATUS, X_CACHE, X_CACHE_KEY};
