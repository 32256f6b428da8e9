//! The HTTP layer's encoding for the Redis tier: keys as [`CacheKey::to_bytes`], responses in
//! the stored format (`docs/stored-format.md`), and purge scopes (a path, a path prefix, all of
//! a layer's entries) that every instance can match against its keys, and tag purges that
//! each instance records in its own tag book.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock, Weak};

use http::HeaderName;

use super::codec;
use super::invalidation::Scope;
use super::key::{known_namespace, CacheKey};
use super::stored::CachedResponse;
use super::tags::{self, TagPurges};
use super::vary_index::{VaryIndex, VaryIndexes};
use crate::engine::Lifetime;
use crate::redis::TierCodec;

/// The [`TierCodec`] of the HTTP layer.
#[derive(Debug, Clone)]
pub(crate) struct HttpTierCodec {
    /// The tag purges of the store the tier serves: other instances' tag purges land here.
    pub(crate) tags: Arc<TagPurges>,
    /// The store's `Vary` index (set once the store is built): a URL's `Vary` names read from
    /// the tier land here, so a request finds the variants another instance stored.
    pub(crate) vary_index: Arc<OnceLock<Weak<VaryIndexes>>>,
}

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

    fn is_own_fence_key(&self, key: &CacheKey) -> bool {
        !key.is_variant()
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
    /// A variant's `Vary` field names, comma-separated.
    fn family_hint(&self, key: &CacheKey, value: &CachedResponse) -> Option<Vec<u8>> {
        let vary = value.vary.as_ref().filter(|_| key.is_variant())?;
        let names: Vec<&str> = vary.names().map(HeaderName::as_str).collect();
        Some(names.join(",").into_bytes())
    }

    /// A URL whose variants another instance stored: its `Vary` names go into this store's
    /// index (when it has none for the URL), so the request that read it, and the next ones,
    /// look for their variant.
    fn learn_family(&self, key: &CacheKey, hint: &[u8]) {
        let Some(index) = self.vary_index.get().and_then(Weak::upgrade) else {
            return;
        };
        let base = key.base();
        if key.is_variant() || index.get(&base).is_some() {
            return;
        }
        let names: Option<Box<[HeaderName]>> = (hint.split(|byte| *byte == b','))
            .map(|name| HeaderName::from_bytes(name).ok())
            .collect();
        match names {
            Some(names) if !names.is_empty() && names.len() <= 64 => {
                index.insert(
                    base.to_owned(),
                    Arc::new(VaryIndex {
                        names,
                        variants: VecDeque::new(),
                    }),
                );
            }
            _ => tracing::debug!("redis tier: a Vary hint that is not field names; ignored"),
        }
    }

    fn encode(
        &self,
        _key: &CacheKey,
        value: &CachedResponse,
        lifetime: &Lifetime,
    ) -> Option<Vec<u8>> {
        if value.credentials.is_some() {
            return None;
        }
        // A load that began before a purge of one of its tags (this instance's, or another's
        // through the bus) stays out: written after the purge's marker, the tier would take it
        // for newer content.
        if let Some(tags) = &value.tags {
            if self.tags.verdict(value.key.namespace(), tags) != tags::Verdict::Keep {
                return None;
            }
        }
        Some(codec::encode(value, lifetime))
    }

    fn decode(&self, key: &CacheKey, bytes: &[u8]) -> Option<(CachedResponse, Lifetime)> {
        // A value under another key's name is foreign (a collision, a bug, tampering).
        let (mut cached, lifetime) = codec::decode_as(bytes, Some(key)).ok()?;
        // Tag purges before now are checked against the value's write time by the tier's
        // scope markers; this instance's tag book judges only the purges after this read.
        if let Some(tags) = cached.tags.as_mut() {
            tags.since = tags::generation();
        }
        Some((cached, lifetime))
    }

    fn scope_matches(&self, scope: &[u8], key: &CacheKey) -> bool {
        Scope::matches(scope, key)
    }

    fn scope_matches_value(&self, scope: &[u8], key: &CacheKey, value: &CachedResponse) -> bool {
        Scope::matches_value(scope, key, value)
    }

    /// A tag purge from another instance goes into this instance's tag book, which every
    /// answer consults; other scopes are matched against keys by the tier.
    fn apply_scope(&self, scope: &[u8], soft: bool) -> bool {
        let Some((b'G', namespace, tag)) = Scope::parse(scope) else {
            return false;
        };
        // A layer this process never built has nothing in memory to purge.
        let known = std::str::from_utf8(namespace)
            .ok()
            .and_then(known_namespace);
        if let (Some(id), Ok(tag)) = (known, std::str::from_utf8(tag)) {
            self.tags.purge(id, [tag], soft);
        }
        true
    }
}
