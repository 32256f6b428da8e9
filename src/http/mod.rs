//! The tower adapter: [`SwrLayer`], [`SwrService`] and what they put on responses.

mod body;
mod conditional;
mod future;
mod handle;
mod key;
mod layer;
mod policy;
mod service;
mod status;

pub use self::body::SwrBody;
pub use self::future::ResponseFuture;
pub use self::handle::SwrHandle;
pub use self::key::CacheKey;
pub use self::layer::SwrLayer;
pub use self::service::SwrService;
pub use self::status::{CacheInfo, CacheStatus, CACHE_STATUS, X_CACHE, X_CACHE_KEY};
