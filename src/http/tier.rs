//! The HTTP layer's encoding for the Redis tier: keys as [`CacheKey::to_bytes`], responses in
//! the stored format (`docs/stored-format.md`), and purge scopes (a path, a path prefix, all of
//! a layer's entries) that every instance can match against its keys.

use super::codec;
use super::invalidation::Scope;
use super::key::CacheKey;
use super::stored::CachedResponse;
use crate::engine::Lifetime;
use crate::redis::TierCodec;

/// The [`TierCodec`] of the HTTP layer.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct HttpTierCodec;

impl TierCodec<CacheKey, CachedResponse> for HttpTierCodec {
    fn key_bytes(&self, key: &CacheKey) -> Vec<u8> {
        key.to_bytes()
    }

    fn decode_key(&self, bytes: &[u8]) -> Option<CacheKey> {
        codec::decode_key(bytes).ok()
    }

    /// A `Vary` variant falls under its URL's key: one lock, one fence, one purge for all.
    fn fence_key_bytes(&self, key: &CacheKey) -> Vec<u8> {
        if key.is_variant() {
            key.base().to_owned().to_bytes()
        } else {
            key.to_bytes()
        }
    }

    fn has_families(&self) -> bool {
        true
    }

    fn same_family(&self, head: &CacheKey, key: &CacheKey) -> bool {
        head.namespace() == key.namespace()
            && head.method() == key.method()
            && head.host() == key.host()
            && head.target() == key.target()
            && head.extra() == key.extra()
    }

    /// Responses kept with the storing request's credentials (to refresh with them) stay out
    /// of Redis: the secrets would sit there in clear for every instance and anyone with
    /// access to Redis. They are cached in each instance's memory only.
    fn encode(
        &self,
        _key: &CacheKey,
        value: &CachedResponse,
        lifetime: &Lifetime,
    ) -> Option<Vec<u8>> {
        if value.credentials.is_some() {
            return None;
        }
        Some(codec::encode(value, lifetime))
    }

    fn decode(&self, key: &CacheKey, bytes: &[u8]) -> Option<(CachedResponse, Lifetime)> {
        let (cached, lifetime) = codec::decode(bytes).ok()?;
        // A value under another key's name is foreign (a collision, a bug, tampering).
        (cached.key == *key).then_some((cached, lifetime))
    }

    fn scope_matches(&self, scope: &[u8], key: &CacheKey) -> bool {
        Scope::matches(scope, key)
    }
}
