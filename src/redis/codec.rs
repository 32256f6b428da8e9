//! How keys and values become bytes in Redis ([`TierCodec`]).

use crate::engine::Lifetime;

/// How a [`RedisTier`](super::RedisTier) turns keys and values into bytes and back. The HTTP
/// layer brings its own; for the engine on its own, implement it for your types (a stable
/// encoding: other instances, other releases read it).
pub trait TierCodec<K, V>: Send + Sync + 'static {
    /// The key's stable bytes (part of the Redis key name).
    fn key_bytes(&self, key: &K) -> Vec<u8>;

    /// The key back from [`key_bytes`](Self::key_bytes) (for invalidations from other
    /// instances); `None` when they are not a key of this codec.
    fn decode_key(&self, bytes: &[u8]) -> Option<K>;

    /// The bytes of the key whose lock and fence `key` falls under: itself unless keys come in
    /// families loaded together (an HTTP response's `Vary` variants fall under their URL's key).
    fn fence_key_bytes(&self, key: &K) -> Vec<u8> {
        self.key_bytes(key)
    }

    /// Whether `key` is its own fence key (then [`fence_key_bytes`](Self::fence_key_bytes)
    /// is not asked: [`key_bytes`](Self::key_bytes) stand for both). Default `false`.
    fn is_own_fence_key(&self, key: &K) -> bool {
        let _ = key;
        false
    }

    /// Whether keys come in families under one fence key (see
    /// [`fence_key_bytes`](Self::fence_key_bytes)): then an invalidation of the family's key
    /// from another instance also invalidates the family here. Default `false`.
    fn has_families(&self) -> bool {
        false
    }

    /// Whether `key` is of the family whose fence key is `head`.
    fn same_family(&self, head: &K, key: &K) -> bool {
        let _ = (head, key);
        false
    }

    /// What an instance that has not met `key`'s family needs to find its members, kept beside
    /// the family's fence key when `key`, a member, is written (the HTTP layer: the `Vary`
    /// field names a URL's variants are chosen by). Default: nothing.
    fn family_hint(&self, key: &K, value: &V) -> Option<Vec<u8>> {
        let _ = (key, value);
        None
    }

    /// A family's [hint](Self::family_hint), read where `key` (its fence key) holds no value
    /// of its own. Default: ignored.
    fn learn_family(&self, key: &K, hint: &[u8]) {
        let _ = (key, hint);
    }

    /// The value and its lifetime as bytes, or `None` to keep it out of Redis (e.g. it holds a
    /// secret).
    fn encode(&self, key: &K, value: &V, lifetime: &Lifetime) -> Option<Vec<u8>>;

    /// The value back; `None` for bytes this codec does not read (corrupt, foreign, or from
    /// another version): a miss, never a panic.
    fn decode(&self, key: &K, bytes: &[u8]) -> Option<(V, Lifetime)>;

    /// Whether an invalidation `scope` (see
    /// [`SwrCache::invalidate_scope`](crate::engine::SwrCache::invalidate_scope)) covers `key`.
    /// The default: no scopes.
    fn scope_matches(&self, scope: &[u8], key: &K) -> bool {
        let _ = (scope, key);
        false
    }

    /// Whether `scope` covers `key` holding `value` (scopes by a property of values, such as
    /// an HTTP response's cache tags). Checked on every value read from Redis. The default asks
    /// [`scope_matches`](Self::scope_matches).
    fn scope_matches_value(&self, scope: &[u8], key: &K, value: &V) -> bool {
        let _ = value;
        self.scope_matches(scope, key)
    }

    /// Applies another instance's invalidation `scope` to this instance's memory by the codec's
    /// own means, when keys cannot tell which entries it covers (e.g. a purge by cache tag
    /// recorded where the HTTP layer checks tags). Returns whether it did; when `false` (the
    /// default) the entries whose keys [`scope_matches`](Self::scope_matches) are invalidated.
    fn apply_scope(&self, scope: &[u8], soft: bool) -> bool {
        let _ = (scope, soft);
        false
    }
}
