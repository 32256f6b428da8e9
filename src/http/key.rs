//! Cache keys: method + host + path + query (+ what a key function adds), and the request
//! header values a stored response `Vary`s on.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Method, Request, Uri};
use quick_cache::Equivalent;

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
    host_len: usize,
    /// Which layer stored it, among layers sharing one store (0 for the store's own layer).
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

    /// The host, or `""` when the request named none.
    pub fn host(&self) -> &str {
        &self.host_and_target[..self.host_len]
    }

    /// Path and query, exactly as received.
    pub fn target(&self) -> &str {
        &self.host_and_target[self.host_len..]
    }

    /// Which of the layers sharing one store (`SwrLayer::share_memory_with`) the key is of.
    pub(crate) fn namespace(&self) -> u32 {
        self.namespace
    }

    /// What the layer's key function added, if any.
    pub fn extra(&self) -> Option<&str> {
        self.extra.as_deref()
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
/// `Host` header, else `""`. `None` when that header is not text: such a host cannot be keyed
/// apart from others (or from no `Host`), so its requests bypass the cache.
pub(crate) fn key_host<'a, B>(
    request: &'a Request<B>,
    host_header: Option<&'a HeaderValue>,
) -> Option<&'a str> {
    match (request.uri().authority(), host_header) {
        (Some(authority), _) => Some(authority_host(authority)),
        (None, Some(value)) => value.to_str().ok(),
        (None, None) => Some(""),
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

/// An authority without its userinfo: `host[:port]`, as a `Host` header names it.
fn authority_host(authority: &Authority) -> &str {
    let text = authority.as_str();
    text.rsplit_once('@').map_or(text, |(_, host)| host)
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
            host_len: self.host.len(),
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
        *self.method == key.method
            && key.host_len == self.host.len()
            && key.host_and_target.len() == self.host.len() + self.target.len()
            // As bytes: no char-boundary checks on the hit path.
            && key.host_and_target.as_bytes()[key.host_len..] == *self.target.as_bytes()
            && key.host_and_target.as_bytes()[..key.host_len] == *self.host.as_bytes()
            && self.extra == key.extra.as_deref()
            && self.variant == key.variant.as_deref()
            && self.namespace == key.namespace
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
