//! Invalidation after a successful unsafe request (RFC 9111 §4.4).

use http::header::{self, HeaderMap};
use http::uri::Scheme;
use http::{Method, Uri};

use super::config::Shared;
use super::key::{without_default_port, CacheKey, KeyRef};
use super::stored::CachedResponse;

/// Where an unsafe request was sent, to invalidate it once it succeeds.
#[derive(Debug)]
pub(crate) struct Invalidation {
    pub(crate) host: Box<str>,
    pub(crate) target: Box<str>,
}

/// The path and query of `location` if it names the same origin as `host`: a fragment is
/// dropped, a relative reference resolved against `base` and its dot segments removed (RFC
/// 3986 §5.2), a scheme's default port taken as no port (RFC 9110 §4.2.3).
pub(crate) fn same_origin_target(location: &str, host: &str, base: &str) -> Option<String> {
    let location = location.trim();
    let location = location.split('#').next().unwrap_or_default();
    let target = if location.starts_with('/') && !location.starts_with("//") {
        location.to_owned()
    } else if let Some(rest) = location.strip_prefix("//") {
        // A network-path reference: `//host/path`.
        let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        if !same_authority(authority, None, host) {
            return None;
        }
        rooted(path)
    } else if (location.find(':'))
        // Only a reference with a scheme is absolute: `sibling` or `a.html` parse as a URI
        // authority too, but are relative paths (RFC 3986 §4.2).
        .is_some_and(|end| !location[..end].contains(['/', '?', '#']))
    {
        let uri = location.parse::<Uri>().ok()?;
        let authority = uri.authority()?;
        if !same_authority(authority.as_str(), uri.scheme_str(), host) {
            return None;
        }
        rooted(uri.path_and_query().map_or("", |pq| pq.as_str()))
    } else if location.is_empty() {
        return None;
    } else {
        // A relative reference, resolved against the request's target (RFC 3986 §5.2.2).
        let (path, _) = base.split_once('?').unwrap_or((base, ""));
        if location.starts_with('?') {
            format!("{path}{location}")
        } else {
            let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
            format!("{dir}{location}")
        }
    };
    Some(without_dot_segments(&target))
}

/// `path` (with its query, if any) as a target: an empty path is `/`.
fn rooted(path: &str) -> String {
    match path {
        "" => "/".to_owned(),
        // `http://host?q` has an empty path: the target is `/?q`.
        query if query.starts_with('?') => format!("/{query}"),
        target => target.to_owned(),
    }
}

/// Whether `authority` (of a reference with `scheme`, if it has one) is `host`, their case and
/// the scheme's default port aside (`example.com:80` is `example.com` for `http`).
fn same_authority(authority: &str, scheme: Option<&str>, host: &str) -> bool {
    let default_port = match scheme {
        Some(scheme) if scheme.eq_ignore_ascii_case("https") => ":443",
        _ => ":80",
    };
    fn bare<'a>(text: &'a str, port: &str) -> &'a str {
        text.strip_suffix(port).unwrap_or(text)
    }
    bare(authority, default_port).eq_ignore_ascii_case(bare(host, default_port))
}

/// `host` without a port of 80 or 443, the default ports of the schemes a key leaves out.
fn without_either_default_port(host: &str) -> &str {
    let http = without_default_port(host, &Scheme::HTTP);
    if http.len() < host.len() {
        http
    } else {
        without_default_port(host, &Scheme::HTTPS)
    }
}

/// RFC 3986 §5.2.4 on the path of `target` (its query kept as it is).
fn without_dot_segments(target: &str) -> String {
    let (path, query) = match target.find('?') {
        Some(at) => target.split_at(at),
        None => (target, ""),
    };
    if !path
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return target.to_owned();
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if i == last {
                    out.push("");
                }
            }
            other => out.push(other),
        }
    }
    format!("/{}{query}", out.join("/"))
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
        // Keys hold a host in lowercase, and a `Host` header's port as sent (see `key_host`):
        // `example.com`, `example.com:80` and `example.com:443` may each be the origin this
        // request changed. All three go (invalidating more than needed is safe).
        let bare = without_either_default_port(&target.host);
        let hosts = [bare.to_owned(), format!("{bare}:80"), format!("{bare}:443")];
        if self.config.key_fn.is_none() {
            // Every key of a URI is its plain key plus indexed variants: remove exactly those.
            for host in &hosts {
                for t in &targets {
                    let key = KeyRef::from_parts(&Method::GET, host, t, None)
                        .in_namespace(self.namespace);
                    if self.remove_all_variants(key) {
                        tracing::debug!(target = %t, "invalidated by an unsafe request");
                    }
                }
            }
            return;
        }
        // A key function splits a URI into keys we cannot list (one per user, device, ...):
        // RFC 9111 §4.4 invalidates the URI, so every one of them goes.
        let matches = |key: &CacheKey| {
            key.namespace() == self.namespace
                && without_either_default_port(key.host()) == bare
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
