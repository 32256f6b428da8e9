//! Invalidation after a successful unsafe request (RFC 9111 §4.4).

use http::header::{self, HeaderMap};
use http::{Method, Uri};

use super::config::Shared;
use super::key::{CacheKey, KeyRef};
use super::stored::CachedResponse;

/// Where an unsafe request was sent, to invalidate it once it succeeds.
#[derive(Debug)]
pub(crate) struct Invalidation {
    pub(crate) host: Box<str>,
    pub(crate) target: Box<str>,
}

/// The path and query of `location` if it names the same origin as `host`.
pub(crate) fn same_origin_target(location: &str, host: &str, base: &str) -> Option<String> {
    let location = location.trim();
    if location.starts_with('/') && !location.starts_with("//") {
        return Some(location.to_owned());
    }
    if let Some(rest) = location.strip_prefix("//") {
        // A network-path reference: `//host/path`.
        let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        return authority.eq_ignore_ascii_case(host).then(|| match path {
            "" => "/".to_owned(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_owned(),
        });
    }
    // Only a reference with a scheme is absolute: `sibling` or `a.html` parse as a URI
    // authority too, but are relative paths (RFC 3986 §4.2).
    let scheme_end = location.find(':');
    if scheme_end.is_some_and(|end| !location[..end].contains(['/', '?', '#'])) {
        let uri = location.parse::<Uri>().ok()?;
        let authority = uri.authority()?;
        return (authority.as_str().eq_ignore_ascii_case(host)).then(|| {
            match uri.path_and_query().map_or("", |pq| pq.as_str()) {
                "" => "/".to_owned(),
                // `http://host?q` has an empty path: the target is `/?q`.
                query if query.starts_with('?') => format!("/{query}"),
                target => target.to_owned(),
            }
        });
    }
    if location.is_empty() {
        return None;
    }
    // A relative reference: resolve against the request's path (RFC 3986 §5.2, simply).
    let path = base.split('?').next().unwrap_or("/");
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    Some(format!("{dir}{location}"))
}

impl Shared {
    /// After a successful unsafe request: drop what is stored for its URI and for the
    /// same-origin `Location` / `Content-Location` (RFC 9111 §4.4).
    pub(crate) fn invalidate(&self, target: &Invalidation, response: &HeaderMap) {
        let mut targets = vec![target.target.to_string()];
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            for value in response.get_all(name) {
                if let Some(t) = value
                    .to_str()
                    .ok()
                    .and_then(|v| same_origin_target(v, &target.host, &target.target))
                {
                    targets.push(t);
                }
            }
        }
        if self.config.key_fn.is_none() {
            // Every key of a URI is its plain key plus indexed variants: remove exactly those.
            for t in targets {
                let key = KeyRef::from_parts(&Method::GET, &target.host, &t, None)
                    .in_namespace(self.namespace);
                if self.remove_all_variants(key) {
                    tracing::debug!(target = %t, "invalidated by an unsafe request");
                }
            }
            return;
        }
        // A key function splits a URI into keys we cannot list (one per user, device, ...):
        // RFC 9111 §4.4 invalidates the URI, so every one of them goes.
        let matches = |key: &CacheKey| {
            key.namespace() == self.namespace
                && key.host() == &*target.host
                && targets.iter().any(|t| t == key.target())
        };
        self.engine.remove_if(matches);
        self.vary_index.retain(|key, _| !matches(key));
        tracing::debug!(target = %target.target, "invalidated by an unsafe request");
    }
}

/// What a purge scope covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope<'a> {
    /// Every entry of the target (path and query), any method, host or variant.
    Target(&'a str),
    /// Every entry whose target starts with this.
    Prefix(&'a str),
    /// Every entry of the layer.
    All,
    /// Every entry tagged with this (`Surrogate-Key`, `Cache-Tag`, `xkey`): matched against
    /// values, not keys.
    Tag(&'a str),
}

impl Scope<'_> {
    /// The scope's bytes, for the entries of the layer whose namespace is `namespace`.
    pub(crate) fn to_bytes(self, namespace: &str) -> Vec<u8> {
        let (kind, text) = match self {
            Scope::Target(target) => (b'T', target),
            Scope::Prefix(prefix) => (b'P', prefix),
            Scope::All => (b'A', ""),
            Scope::Tag(tag) => (b'G', tag),
        };
        let mut out = Vec::with_capacity(5 + namespace.len() + text.len());
        out.push(kind);
        out.extend_from_slice(&(namespace.len() as u32).to_be_bytes());
        out.extend_from_slice(namespace.as_bytes());
        out.extend_from_slice(text.as_bytes());
        out
    }

    /// A scope's kind, namespace name and text (`None`: not a scope of [`to_bytes`](Self::to_bytes)).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn parse(scope: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&kind, rest) = scope.split_first()?;
        let len = <[u8; 4]>::try_from(rest.get(..4)?).ok()?;
        let len = u32::from_be_bytes(len) as usize;
        Some((kind, rest.get(4..4 + len)?, rest.get(4 + len..)?))
    }

    /// Whether `scope` (as [`to_bytes`](Self::to_bytes) wrote it) covers `key` (a tag scope
    /// covers no key: see [`matches_value`](Self::matches_value)).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn matches(scope: &[u8], key: &CacheKey) -> bool {
        let Some((kind, namespace, text)) = Self::parse(scope) else {
            return false;
        };
        if namespace != key.namespace_name().as_bytes() {
            return false;
        }
        let target = key.target().as_bytes();
        match kind {
            b'T' => target == text,
            b'P' => target.starts_with(text),
            b'A' => true,
            _ => false,
        }
    }

    /// Whether `scope` covers `key` with its stored `value` (tag scopes need the value).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn matches_value(scope: &[u8], key: &CacheKey, value: &CachedResponse) -> bool {
        match Self::parse(scope) {
            Some((b'G', namespace, tag)) => {
                namespace == key.namespace_name().as_bytes()
                    && (value.tags.as_deref())
                        .is_some_and(|tags| tags.names.iter().any(|name| name.as_bytes() == tag))
            }
            _ => Self::matches(scope, key),
        }
    }
}
