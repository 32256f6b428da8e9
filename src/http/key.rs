//! Cache keys: method + host + path + query (+ what a key function adds), and the request
//! header values a stored response `Vary`s on.

use std::borrow::Cow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Method, Request, Uri};
use quick_cache::Equivalent;

use super::status::DEFAULT_NAME;

/// The key an HTTP response is stored under.
///
/// `HEAD` requests use the `GET` key, so they are answered from `GET` entries. The host comes
/// from the request URI's authority (HTTP/2, absolute form) or the `Host` header, so virtual
/// hosts never share entries.
#[derive(Clone, PartialEq, Eq)]
pub struct CacheKey {
    method: Method,
    /// Host and target in one allocation, shared by the clones of the key (the store, the
    /// entry and the flight of a miss each hold one).
    host_and_target: Arc<str>,
    /// Where the host ends (a `u32` beside `namespace`: 8 bytes less per copy of the key).
    host_len: u32,
    /// Which layer stored it, among layers sharing one store: the id of its namespace name
    /// (see [`namespace_id`]; 0 is the default cache name's).
    namespace: u32,
    extra: Option<Arc<str>>,
    /// The request header values a `Vary` response is selected by (one entry per variant).
    variant: Option<Arc<[u8]>>,
}

impl CacheKey {
    /// The method the entry answers (`GET` for `HEAD` requests).
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The host, or `""` when the request named none: in lowercase and without the scheme's
    /// default port (`Example.COM:80` is `example.com`), as RFC 9110 §4.2.3 compares origins.
    pub fn host(&self) -> &str {
        &self.host_and_target[..self.host_len as usize]
    }

    /// Path and query, exactly as received.
    pub fn target(&self) -> &str {
        &self.host_and_target[self.host_len as usize..]
    }

    /// Which of the layers sharing one store (`SwrLayer::share_memory_with`) the key is of.
    pub(crate) fn namespace(&self) -> u32 {
        self.namespace
    }

    /// The name of the namespace the key is of: the cache name of the layer that stores it
    /// (see [`StoreNamespaces::claim`]).
    pub(crate) fn namespace_name(&self) -> Arc<str> {
        namespace_name(self.namespace)
    }

    /// The key as bytes that are the same in every process and build that configures its
    /// layer alike: the format version (`1`), then the layer's namespace (its cache name),
    /// the method, host, target (path and query), what a key function added and the variant
    /// values, each length-prefixed. Meant as (the input of a hash for) the key of a cache
    /// tier shared between processes; the format changes only with its version byte.
    ///
    /// ```
    /// # use tower_swr::CacheKey;
    /// fn redis_key(key: &CacheKey) -> Vec<u8> {
    ///     let mut name = b"swr:".to_vec();
    ///     name.extend_from_slice(&key.to_bytes());
    ///     name
    /// }
    /// # let _ = redis_key;
    /// ```
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.host_and_target.len() + 48);
        self.encode_into(&mut out);
        out
    }

    /// Appends [`to_bytes`](Self::to_bytes) to `out`.
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(KEY_FORMAT);
        put_bytes(out, self.namespace_name().as_bytes());
        put_bytes(out, self.method.as_str().as_bytes());
        put_bytes(out, self.host().as_bytes());
        put_bytes(out, self.target().as_bytes());
        put_optional(out, self.extra.as_deref().map(str::as_bytes));
        put_optional(out, self.variant.as_deref());
    }

    /// What the layer's key function added, if any.
    pub fn extra(&self) -> Option<&str> {
        self.extra.as_deref()
    }

    /// The length of the variant's values, for a key of one variant.
    pub(crate) fn variant_len(&self) -> Option<usize> {
        self.variant.as_deref().map(<[u8]>::len)
    }

    /// Whether this key names one variant of a response that has `Vary`.
    pub fn is_variant(&self) -> bool {
        self.variant.is_some()
    }

    pub(crate) fn as_ref(&self) -> KeyRef<'_> {
        KeyRef {
            method: &self.method,
            host: self.host(),
            target: self.target(),
            extra: self.extra.as_deref(),
            variant: self.variant.as_deref(),
            namespace: self.namespace,
        }
    }

    /// The key without its variant.
    pub(crate) fn base(&self) -> KeyRef<'_> {
        KeyRef {
            variant: None,
            ..self.as_ref()
        }
    }
}

impl Hash for CacheKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_ref().hash(state);
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.as_ref(), f)
    }
}

/// The host part of a request's key: the URI's authority (HTTP/2, absolute form), else the
/// `Host` header, else `""`. `None` when that header is not text (such a host cannot be keyed
/// apart from others, or from no `Host`) or the authority carries userinfo: those requests
/// bypass the cache.
///
/// The host is keyed as RFC 9110 §4.2.3 compares origins: case-insensitively (keys hold it in
/// lowercase), and, when the target names its scheme (HTTP/2, absolute form), with the
/// scheme's default port as no port (`https://Example.COM:443` is keyed `example.com`). A
/// `Host` header's port is kept as sent: without the scheme, `:443` may name another origin
/// (`http://example.com:443`), and a cache that drops a port the application echoes into its
/// pages can be poisoned through it (the "unkeyed port" of web cache poisoning).
///
/// This is the host as sent: [`keyed_host`] says how keys spell it when that differs. A hit
/// looks the host as sent up first (clients send it as keys hold it, so a hit pays nothing for
/// the spelling); only a miss asks [`keyed_host`] and looks again.
pub(crate) fn key_host<'a, B>(
    request: &'a Request<B>,
    host_header: Option<&'a HeaderValue>,
) -> Option<&'a str> {
    match (request.uri().authority(), host_header) {
        // Userinfo in a target is an error to be treated as one (RFC 9110 §4.2.4): a page
        // rendered for `user:pw@host` is never keyed as `host`'s.
        (Some(authority), _) => (!authority.as_str().contains('@')).then(|| authority.as_str()),
        (None, Some(value)) => value.to_str().ok(),
        (None, None) => Some(""),
    }
}

/// How keys spell `host` (a request's [`key_host`]), when not as sent.
pub(crate) fn keyed_host<'a, B>(request: &Request<B>, host: &'a str) -> Option<Cow<'a, str>> {
    let keyed = normal_host(host, request.uri().scheme());
    (keyed.len() != host.len() || matches!(keyed, Cow::Owned(_))).then_some(keyed)
}

/// `host` (`name[:port]`) as keys hold it (see [`key_host`]); borrowed unless it has capitals.
pub(crate) fn normal_host<'a>(host: &'a str, scheme: Option<&Scheme>) -> Cow<'a, str> {
    let host = match scheme {
        Some(scheme) => without_default_port(host, scheme),
        None => host,
    };
    if host.bytes().any(|byte| byte.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// `host` without `scheme`'s default port (or an empty one, RFC 3986 §3.2.3), if it names it.
pub(crate) fn without_default_port<'a>(host: &'a str, scheme: &Scheme) -> &'a str {
    let Some(at) = host.bytes().rposition(|byte| byte == b':') else {
        return host;
    };
    // `[::1]:443`: a port follows the bracket of an IPv6 literal, or a name without colons.
    if !host[..at].ends_with(']') && host[..at].contains(':') {
        return host;
    }
    let port = &host[at + 1..];
    let default = match scheme.as_str() {
        "http" => port == "80",
        "https" => port == "443",
        _ => false,
    };
    if default || port.is_empty() {
        &host[..at]
    } else {
        host
    }
}

/// The URI the client sent. Inside axum's `Router::nest` the request's URI has lost the nest's
/// prefix (`/api/x` arrives as `/x`), so layers in two nests would share keys and purges of the
/// path users see would find nothing: axum keeps the original in its `OriginalUri` extension.
#[inline]
fn client_uri<B>(request: &Request<B>) -> &Uri {
    #[cfg(feature = "axum")]
    if let Some(original) = request.extensions().get::<axum::extract::OriginalUri>() {
        return &original.0;
    }
    request.uri()
}

/// Puts the URI the client sent (see [`client_uri`]) into `parts` for a function of the
/// user's (`key_fn`, `policy_fn`), which is written against the paths clients use; returns
/// the URI it replaced, if any.
pub(crate) fn show_client_uri(parts: &mut http::request::Parts) -> Option<Uri> {
    #[cfg(feature = "axum")]
    if let Some(original) = parts.extensions.get::<axum::extract::OriginalUri>() {
        if original.0 != parts.uri {
            let original = original.0.clone();
            return Some(std::mem::replace(&mut parts.uri, original));
        }
    }
    #[cfg(not(feature = "axum"))]
    let _ = parts;
    None
}

/// An authority without its userinfo: `host[:port]`, as a `Host` header names it.
fn authority_host(authority: &Authority) -> &str {
    let text = authority.as_str();
    // A byte scan: `rsplit_once`'s pattern searcher cost ~125 instructions a hit (callgrind),
    // for userinfo that requests almost never carry.
    match text.bytes().rposition(|byte| byte == b'@') {
        Some(at) => &text[at + 1..],
        None => text,
    }
}

/// Makes the `Host` header agree with the request target's authority, which the key is made
/// of: RFC 9112 §3.2.2 (absolute form: the target's authority wins, and a proxy forwards a
/// `Host` made from it) and RFC 9113 §8.3.1 (HTTP/2: `:authority` and `Host` must name the
/// same origin). A handler reading `Host` then renders the page of the host it is stored for.
pub(crate) fn align_host<B>(request: &mut Request<B>) {
    if let Some(host) = host_correction(request.uri(), request.headers()) {
        request.headers_mut().insert(header::HOST, host);
    }
}

/// The `Host` a request's headers must carry to agree with its target, if they do not.
pub(crate) fn host_correction(uri: &Uri, headers: &HeaderMap) -> Option<HeaderValue> {
    let host = authority_host(uri.authority()?);
    let mut lines = headers.get_all(header::HOST).iter();
    let agrees = match (lines.next(), lines.next()) {
        // HTTP/2 without `Host`: handlers read the authority itself.
        (None, _) => true,
        (Some(line), None) => line.as_bytes().eq_ignore_ascii_case(host.as_bytes()),
        (Some(_), Some(_)) => false,
    };
    if agrees {
        return None;
    }
    HeaderValue::from_str(host).ok()
}

/// A borrowed key, so a hit looks up without allocating.
#[derive(Clone, Copy)]
pub(crate) struct KeyRef<'a> {
    method: &'a Method,
    host: &'a str,
    target: &'a str,
    extra: Option<&'a str>,
    variant: Option<&'a [u8]>,
    namespace: u32,
}

impl<'a> KeyRef<'a> {
    /// A request's key, with its host already chosen by [`key_host`].
    pub(crate) fn with_host<B>(
        request: &'a Request<B>,
        host: &'a str,
        extra: Option<&'a str>,
        namespace: u32,
    ) -> Self {
        let method = if request.method() == Method::HEAD {
            &Method::GET
        } else {
            request.method()
        };
        let target = client_uri(request)
            .path_and_query()
            .map_or("/", |pq| pq.as_str());
        Self {
            method,
            host,
            target,
            extra,
            variant: None,
            namespace,
        }
    }

    /// The same key, of the layer with this namespace (see [`CacheKey::namespace`]).
    pub(crate) fn in_namespace(self, namespace: u32) -> Self {
        Self { namespace, ..self }
    }

    /// The same key, for one variant.
    pub(crate) fn with_variant(self, variant: &'a [u8]) -> Self {
        Self {
            variant: Some(variant),
            ..self
        }
    }

    /// A key of namespace 0; [`in_namespace`](Self::in_namespace) gives it a layer's.
    pub(crate) fn from_parts(
        method: &'a Method,
        host: &'a str,
        target: &'a str,
        extra: Option<&'a str>,
    ) -> Self {
        Self {
            method,
            host,
            target,
            extra,
            variant: None,
            namespace: 0,
        }
    }

    pub(crate) fn host(&self) -> &'a str {
        self.host
    }

    pub(crate) fn target(&self) -> &'a str {
        self.target
    }

    pub(crate) fn to_owned(self) -> CacheKey {
        CacheKey {
            method: self.method.clone(),
            host_and_target: [self.host, self.target].concat().into(),
            // A request's host comes from a URI or a header line: far below 4 GiB.
            host_len: u32::try_from(self.host.len()).expect("a host shorter than 4 GiB"),
            namespace: self.namespace,
            extra: self.extra.map(Into::into),
            variant: self.variant.map(Into::into),
        }
    }
}

impl fmt::Debug for KeyRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for KeyRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}{}", self.method, self.host, self.target)?;
        if let Some(extra) = self.extra {
            write!(f, " [{extra}]")?;
        }
        if let Some(variant) = self.variant {
            write!(
                f,
                " vary[{}]",
                String::from_utf8_lossy(variant).replace('\0', "|")
            )?;
        }
        Ok(())
    }
}

impl Hash for KeyRef<'_> {
    // As few hasher calls as tell keys apart (every hit pays for each): equal keys hash alike,
    // and the rare keys that collide are told apart by `Equivalent`.
    fn hash<H: Hasher>(&self, state: &mut H) {
        // The length keeps `/ab` + `c` and `/a` + `bc` apart under any hasher.
        state.write_usize(self.target.len());
        state.write(self.target.as_bytes());
        state.write(self.host.as_bytes());
        if *self.method != Method::GET {
            state.write(self.method.as_str().as_bytes());
        }
        if let Some(extra) = self.extra {
            state.write(extra.as_bytes());
        }
        if let Some(variant) = self.variant {
            state.write(variant);
        }
        if self.namespace != 0 {
            state.write_u32(self.namespace);
        }
    }
}

impl Equivalent<CacheKey> for KeyRef<'_> {
    fn equivalent(&self, key: &CacheKey) -> bool {
        let host_len = key.host_len as usize;
        *self.method == key.method
            && host_len == self.host.len()
            && key.host_and_target.len() == self.host.len() + self.target.len()
            // As bytes: no char-boundary checks on the hit path.
            && key.host_and_target.as_bytes()[host_len..] == *self.target.as_bytes()
            && key.host_and_target.as_bytes()[..host_len] == *self.host.as_bytes()
            && self.extra == key.extra.as_deref()
            && self.variant == key.variant.as_deref()
            && self.namespace == key.namespace
    }
}

/// The version byte that starts [`CacheKey::to_bytes`].
pub(crate) const KEY_FORMAT: u8 = 1;

/// Appends a `u32` big-endian length and the bytes.
///
/// # Panics
///
/// If `bytes` is 4 GiB or longer (no key part or header line is).
pub(crate) fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).expect("a key part or header line under 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Appends `0` for `None`, else `1` and [`put_bytes`].
pub(crate) fn put_optional(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => out.push(0),
        Some(bytes) => {
            out.push(1);
            put_bytes(out, bytes);
        }
    }
}

/// The namespace names in use in this process, by id: interned, so that the in-memory key
/// hashes and compares a `u32` while its byte encoding carries the name. Id 0 is the default
/// cache name, so the keys of a layer with the default name hash no namespace at all (as
/// before namespaces had names). Grows by one name per distinct layer name, never shrinks.
fn namespace_table() -> &'static RwLock<Vec<Arc<str>>> {
    static NAMES: OnceLock<RwLock<Vec<Arc<str>>>> = OnceLock::new();
    NAMES.get_or_init(|| RwLock::new(vec![Arc::from(DEFAULT_NAME)]))
}

/// The id of a namespace name, interning it if it is new.
pub(crate) fn namespace_id(name: &str) -> u32 {
    if let Some(id) = known_namespace(name) {
        return id;
    }
    let mut names = namespace_table()
        .write()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(id) = names.iter().position(|n| **n == *name) {
        return id as u32;
    }
    names.push(Arc::from(name));
    u32::try_from(names.len() - 1).expect("fewer than 2^32 layer names")
}

/// The id of a namespace name already in use in this process, if it is: a decoded entry of
/// a layer this process does not have gets none (and decoding interns nothing).
pub(crate) fn known_namespace(name: &str) -> Option<u32> {
    let names = namespace_table()
        .read()
        .unwrap_or_else(PoisonError::into_inner);
    names.iter().position(|n| **n == *name).map(|id| id as u32)
}

/// The name of a namespace id (`""` for an id never handed out).
pub(crate) fn namespace_name(id: u32) -> Arc<str> {
    let names = namespace_table()
        .read()
        .unwrap_or_else(PoisonError::into_inner);
    names
        .get(id as usize)
        .cloned()
        .unwrap_or_else(|| Arc::from(""))
}

/// The namespaces of the layers sharing one store (`SwrLayer::share_memory_with`), which
/// must never see each other's entries.
#[derive(Debug, Default)]
pub(crate) struct StoreNamespaces {
    claimed: Mutex<Vec<String>>,
}

impl StoreNamespaces {
    /// The namespace of a layer of the store with this cache name: the name itself, or, when
    /// another layer of the store has claimed it, `name#2` (then `#3`, ...). Layers are
    /// numbered in the order their caches are created (first use), so layers with distinct
    /// names have keys stable across processes whatever the order; layers sharing a name
    /// have stable keys only as long as every process creates them in the same order.
    pub(crate) fn claim(&self, name: &str) -> u32 {
        let mut claimed = self.claimed.lock().unwrap_or_else(PoisonError::into_inner);
        let mut candidate = name.to_owned();
        let mut n = 1u32;
        while claimed.contains(&candidate) {
            n += 1;
            candidate = format!("{name}#{n}");
        }
        if n > 1 {
            tracing::debug!(
                "layers sharing a store both named {name:?}: this one's namespace is {candidate:?}; give them distinct `cache_name`s for keys that do not depend on the order the layers are first used in"
            );
        }
        let id = namespace_id(&candidate);
        claimed.push(candidate);
        id
    }
}

/// Most `Vary` names a stored response may list; a response varying on more is not stored.
pub(crate) const MAX_VARY_FIELDS: usize = 32;

/// The request header values a stored response was selected by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct VaryValues {
    fields: Box<[(HeaderName, Option<Vec<u8>>)]>,
}

/// The outcome of reading a response's `Vary`.
pub(crate) enum Vary {
    /// No `Vary`: one entry serves every request.
    None,
    /// Varies on these request headers, with the storing request's values.
    On(VaryValues),
    /// `Vary: *`, or too many / malformed names: never reused.
    Never,
}

impl Vary {
    pub(crate) fn of(response: &HeaderMap, request: &HeaderMap) -> Self {
        let mut fields: Vec<(HeaderName, Option<Vec<u8>>)> = Vec::new();
        for line in response.get_all(header::VARY) {
            let Ok(line) = line.to_str() else {
                return Self::Never;
            };
            for name in line.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if name == "*" {
                    return Self::Never;
                }
                let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
                    return Self::Never;
                };
                if fields.iter().any(|(n, _)| *n == name) {
                    continue;
                }
                if fields.len() == MAX_VARY_FIELDS {
                    return Self::Never;
                }
                let value = normalized(request, &name);
                fields.push((name, value));
            }
        }
        if fields.is_empty() {
            Self::None
        } else {
            Self::On(VaryValues {
                fields: fields.into_boxed_slice(),
            })
        }
    }
}

impl VaryValues {
    /// The varied headers, in `Vary` order, with the storing request's (normalized) values.
    pub(crate) fn fields(&self) -> &[(HeaderName, Option<Vec<u8>>)] {
        &self.fields
    }

    /// Values as [`fields`](Self::fields) gives them (e.g. decoded), if they could have come
    /// from a `Vary`: one to [`MAX_VARY_FIELDS`] distinct names.
    pub(crate) fn from_fields(fields: Vec<(HeaderName, Option<Vec<u8>>)>) -> Option<Self> {
        let distinct = fields
            .iter()
            .enumerate()
            .all(|(i, (name, _))| fields[..i].iter().all(|(n, _)| n != name));
        (!fields.is_empty() && fields.len() <= MAX_VARY_FIELDS && distinct).then(|| Self {
            fields: fields.into_boxed_slice(),
        })
    }

    /// The header names, in `Vary` order.
    pub(crate) fn names(&self) -> impl Iterator<Item = &HeaderName> {
        self.fields.iter().map(|(name, _)| name)
    }

    /// The variant part of the key: the values, each length-prefixed (absent ≠ empty).
    pub(crate) fn variant(&self) -> Box<[u8]> {
        variant_of(self.fields.iter().map(|(_, v)| v.as_deref()))
    }

    /// Whether `request` has the same values for every varied header.
    pub(crate) fn matches(&self, request: &HeaderMap) -> bool {
        self.fields
            .iter()
            .all(|(name, value)| normalized(request, name).as_deref() == value.as_deref())
    }

    pub(crate) fn weight(&self) -> usize {
        self.fields
            .iter()
            .map(|(n, v)| n.as_str().len() + v.as_ref().map_or(0, Vec::len) + 16)
            .sum()
    }
}

/// The variant part of a key for a request, given the names a stored response varies on.
pub(crate) fn request_variant(names: &[HeaderName], request: &HeaderMap) -> Box<[u8]> {
    let values: Vec<Option<Vec<u8>>> = names.iter().map(|n| normalized(request, n)).collect();
    variant_of(values.iter().map(|v| v.as_deref()))
}

fn variant_of<'a>(values: impl Iterator<Item = Option<&'a [u8]>>) -> Box<[u8]> {
    let mut out = Vec::new();
    for value in values {
        match value {
            None => out.push(0),
            Some(value) => {
                out.push(1);
                out.extend_from_slice(&(value.len() as u32).to_be_bytes());
                out.extend_from_slice(value);
            }
        }
    }
    out.into_boxed_slice()
}

/// A header's values as one comparable string: lines joined by `,`, list members trimmed, so
/// `a,b`, `a, b` and two lines `a` / `b` compare equal (RFC 9111 §4.1).
fn normalized(headers: &HeaderMap, name: &HeaderName) -> Option<Vec<u8>> {
    let mut values = headers.get_all(name).iter().peekable();
    values.peek()?;
    let mut out = Vec::new();
    for value in values {
        for member in value.as_bytes().split(|b| *b == b',') {
            let member = member.trim_ascii();
            if !out.is_empty() {
                out.push(b',');
            }
            out.extend_from_slice(member);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact bytes of one key: a change of the format shows here first (and must come
    /// with a new version byte).
    #[test]
    fn the_byte_encoding_of_a_key_is_pinned() {
        let variant = variant_of([Some(&b"en"[..]), None].into_iter());
        let key = KeyRef::from_parts(&Method::GET, "example.com", "/a?b=1", Some("u1"))
            .in_namespace(namespace_id("tower-swr"))
            .with_variant(&variant)
            .to_owned();
        let expected: Vec<u8> = [
            &[1][..],
            b"\0\0\0\x09tower-swr",
            b"\0\0\0\x03GET",
            b"\0\0\0\x0bexample.com",
            b"\0\0\0\x06/a?b=1",
            b"\x01\0\0\0\x02u1",
            b"\x01\0\0\0\x08\x01\0\0\0\x02en\x00",
        ]
        .concat();
        assert_eq!(key.to_bytes(), expected);
        assert_eq!(key.namespace(), 0, "the default name is namespace 0");
        let plain = KeyRef::from_parts(&Method::POST, "", "/", None)
            .in_namespace(namespace_id("api"))
            .to_owned();
        assert_eq!(
            plain.to_bytes(),
            b"\x01\0\0\0\x03api\0\0\0\x04POST\0\0\0\0\0\0\0\x01/\x00\x00"
        );
    }

    #[test]
    fn the_namespace_is_the_name_whatever_the_order() {
        let a = namespace_id("key-test-a");
        let b = namespace_id("key-test-b");
        assert_ne!(a, b);
        assert_eq!(namespace_id("key-test-a"), a, "interned");
        assert_eq!(known_namespace("key-test-b"), Some(b));
        assert_eq!(known_namespace("key-test-never-used"), None);
        // Two stores claiming in opposite orders give each name the same namespace.
        let (one, two) = (StoreNamespaces::default(), StoreNamespaces::default());
        assert_eq!((one.claim("key-test-a"), one.claim("key-test-b")), (a, b));
        assert_eq!((two.claim("key-test-b"), two.claim("key-test-a")), (b, a));
    }

    #[test]
    fn layers_of_one_store_with_one_name_get_distinct_namespaces() {
        let store = StoreNamespaces::default();
        let first = store.claim("key-test-same");
        let second = store.claim("key-test-same");
        let third = store.claim("key-test-same");
        assert_eq!(namespace_name(first).as_ref(), "key-test-same");
        assert_eq!(namespace_name(second).as_ref(), "key-test-same#2");
        assert_eq!(namespace_name(third).as_ref(), "key-test-same#3");
        let key = |namespace| {
            KeyRef::from_parts(&Method::GET, "h", "/", None)
                .in_namespace(namespace)
                .to_owned()
        };
        assert_ne!(key(first), key(second));
        assert_ne!(key(first).to_bytes(), key(second).to_bytes());
        // Another store numbers its own layers from the start.
        assert_eq!(StoreNamespaces::default().claim("key-test-same"), first);
    }

    #[test]
    fn hosts_are_keyed_in_lowercase_without_the_default_port_of_a_named_scheme() {
        let https = Some(&Scheme::HTTPS);
        let http = Some(&Scheme::HTTP);
        let cases = [
            ("Example.COM", None, "example.com"),
            ("example.com", None, "example.com"),
            // Without the scheme a port is kept: it may name another origin.
            ("example.com:80", None, "example.com:80"),
            ("example.com:443", None, "example.com:443"),
            ("EXAMPLE.com:443", https, "example.com"),
            ("example.com:80", http, "example.com"),
            ("example.com:", http, "example.com"),
            ("example.com:443", http, "example.com:443"),
            ("example.com:8080", https, "example.com:8080"),
            ("[::1]:443", https, "[::1]"),
            ("[::1]", https, "[::1]"),
            ("", None, ""),
        ];
        for (host, scheme, keyed) in cases {
            assert_eq!(normal_host(host, scheme), keyed, "{host} ({scheme:?})");
        }
        assert!(matches!(normal_host("example.com", None), Cow::Borrowed(_)));
    }
}
