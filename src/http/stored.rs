//! The stored response, the credentials it was stored for, and which headers are stored.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode, Version};
use http_body::Body;

use super::body::SwrBody;
use super::key::{CacheKey, VaryValues};
use super::policy::RequestFacts;
use super::status::{without_slots, Slots};
use super::tags::Tags;

/// The `Authorization` and `Cookie` lines of the request a response was stored from.
///
/// A refresh replays these, not the triggering client's: a shared entry is refreshed as the
/// client it was stored for, so another client's credentials (a junk token, a session
/// cookie) can neither evict it (401, `private`, `Set-Cookie`) nor replace it with a
/// personalised page. `None` (the usual case) costs the entry one pointer.
#[derive(Clone, Debug)]
pub(crate) struct Credentials(pub(crate) Box<[(HeaderName, HeaderValue)]>);

impl Credentials {
    pub(crate) fn of(headers: &HeaderMap, custom: &[HeaderName]) -> Option<Box<Self>> {
        let lines: Vec<(HeaderName, HeaderValue)> = headers
            .iter()
            .filter(|(name, _)| is_credential(name, custom))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        (!lines.is_empty()).then(|| Box::new(Self(lines.into_boxed_slice())))
    }

    pub(crate) fn weight(&self) -> usize {
        self.0
            .iter()
            .map(|(_, value)| value.len() + 64)
            .sum::<usize>()
            + 16
    }

    /// Puts the storing request's credentials (or none) in place of the trigger's.
    pub(crate) fn apply(
        credentials: Option<&Self>,
        headers: &mut HeaderMap,
        custom: &[HeaderName],
    ) {
        headers.remove(header::AUTHORIZATION);
        headers.remove(header::COOKIE);
        for name in custom {
            headers.remove(name);
        }
        for (name, value) in credentials.map_or(&[][..], |c| &c.0) {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// `Authorization`, `Cookie`, or a header the layer was told is a credential.
pub(crate) fn is_credential(name: &HeaderName, custom: &[HeaderName]) -> bool {
    name == header::AUTHORIZATION || name == header::COOKIE || custom.contains(name)
}

/// Whether a request carries `Authorization`, `Cookie` or a configured credential header.
pub(crate) fn has_credentials(headers: &HeaderMap, custom: &[HeaderName]) -> bool {
    headers.keys().any(|name| is_credential(name, custom))
}

/// A stored response, ready to be served without decoding anything.
#[derive(Clone, Debug)]
pub(crate) struct CachedResponse {
    pub(crate) key: CacheKey,
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    /// Where `headers` hold `Age` and `Cache-Status` for a hit to fill in.
    pub(crate) slots: Option<Slots>,
    pub(crate) body: Bytes,
    pub(crate) vary: Option<VaryValues>,
    /// May answer requests carrying `Authorization` (RFC 9111 §3.5).
    pub(crate) shared_with_auth: bool,
    /// May answer requests carrying `Cookie`.
    pub(crate) shared_with_cookie: bool,
    /// The storing request's credentials, which a refresh sends again.
    pub(crate) credentials: Option<Box<Credentials>>,
    /// No directive forbids serving it stale when the origin cannot be reached (RFC 9111
    /// §4.2.4; the layer's `max_stale_when_disconnected` bounds how stale).
    pub(crate) stale_when_unreachable: bool,
    /// Its cache tags (`Surrogate-Key`, `Cache-Tag`, `xkey`), checked against tag purges when
    /// it is used; `None` (the usual case) costs a hit one comparison.
    pub(crate) tags: Option<Box<Tags>>,
}

impl CachedResponse {
    /// What the entry holds in memory, in bytes, as the store weighs it (the engine adds
    /// `ENTRY_OVERHEAD` for the entry's deadlines, its `Arc` and the store's slot): the
    /// response inline, the store's own copy of the key (inline in its slot), the body and
    /// its shared header, the header map's heap and the key's strings. `benches/swr.rs`
    /// (`memory`) prints it beside the bytes really allocated per entry.
    pub(crate) fn weight(&self) -> u64 {
        (size_of::<Self>()
            + size_of::<CacheKey>()
            + self.body.len()
            + BODY_HEADER
            + headers_heap(&self.headers)
            + key_heap(&self.key)
            + self.vary.as_ref().map_or(0, VaryValues::weight)
            + self.credentials.as_ref().map_or(0, |c| c.weight())
            + self.tags.as_ref().map_or(0, |t| t.weight())) as u64
    }

    /// Whether this entry may answer a request with these headers.
    pub(crate) fn serves(&self, headers: &HeaderMap, facts: RequestFacts) -> bool {
        self.refusal(headers, facts).is_none()
    }

    /// Why this entry may not answer a request with these headers, if it may not.
    pub(crate) fn refusal(&self, headers: &HeaderMap, facts: RequestFacts) -> Option<Refusal> {
        if (facts.has_auth && !self.shared_with_auth)
            || (facts.has_cookie && !self.shared_with_cookie)
        {
            Some(Refusal::Credentials)
        } else if self
            .vary
            .as_ref()
            .is_some_and(|vary| !vary.matches(headers))
        {
            Some(Refusal::Vary)
        } else {
            None
        }
    }
}

impl CachedResponse {
    pub(crate) fn into_response<B: Body>(self) -> Response<SwrBody<B>> {
        let mut response = Response::new(SwrBody::cached(self.body));
        *response.status_mut() = self.status;
        *response.version_mut() = self.version;
        *response.headers_mut() = without_slots(self.headers);
        response
    }
}

/// The shared header a `Bytes` body allocates once it is cloned (`bytes` 1: 24 bytes).
const BODY_HEADER: usize = 24;

/// A `HeaderMap` bucket (one per field name: hash, name, value, links) and an extra value
/// (each further value of a name), as `http` 1 lays them out on 64-bit targets.
const HEADER_BUCKET: usize = 104;
const HEADER_EXTRA_VALUE: usize = 72;

/// The heap a stored `HeaderMap` holds: its index (4 bytes a slot, a power of two above the
/// usable capacity), a bucket per name and an extra-value record per further value (stored
/// maps hold no spare buckets, see `reserve_slots`), and the value bytes (shared with the
/// origin's buffers or owned; static values hold none, so this over-counts those).
fn headers_heap(headers: &HeaderMap) -> usize {
    let index = if headers.capacity() == 0 {
        0
    } else {
        4 * (headers.capacity() * 4 / 3).next_power_of_two()
    };
    let keys = headers.keys_len();
    index
        + HEADER_BUCKET * keys
        + HEADER_EXTRA_VALUE * (headers.len() - keys)
        + headers.values().map(HeaderValue::len).sum::<usize>()
}

/// The heap of a key: its host and target in one `Arc<str>`, and what a key function added
/// and the variant's values, in an `Arc` each.
fn key_heap(key: &CacheKey) -> usize {
    let arc = |len: usize| 16 + len;
    arc(key.host().len() + key.target().len())
        + key.extra().map_or(0, |extra| arc(extra.len()))
        + key.variant_len().map_or(0, arc)
}

/// Why a stored entry does not answer a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The request carries `Authorization`/`Cookie` and the entry is not explicitly shareable.
    Credentials,
    /// Another variant.
    Vary,
}

/// Hop-by-hop fields (RFC 9110 §7.6.1) are never stored, nor is `Age` (we compute our own).
pub(crate) fn storable_headers(mut headers: HeaderMap, strip: &[String]) -> HeaderMap {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .chain(strip.iter().map(String::as_str))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    remove_present(&mut headers, &UNSTORED_HEADERS);
    headers
}

/// Response fields never stored: hop-by-hop (RFC 9110 §7.6.1) and `Age` (we compute our own).
pub(crate) const UNSTORED_HEADERS: [HeaderName; 11] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::AGE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("proxy-authentication-info"),
];

/// Removes `names` from `headers`. Most maps hold none of them: comparing each present name
/// costs a few instructions, where removing an absent one hashes it (~80 per name).
pub(crate) fn remove_present(headers: &mut HeaderMap, names: &[HeaderName]) {
    if headers.keys().any(|present| names.contains(present)) {
        for name in names {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Entry;

    /// The inline sizes behind `weight()` and the breakdown in benches/README.md ("Memory").
    #[test]
    fn an_entry_is_as_small_as_measured() {
        eprintln!(
            "CachedResponse {} B, Entry<CachedResponse> {} B, CacheKey {} B, HeaderMap {} B",
            size_of::<CachedResponse>(),
            size_of::<Entry<CachedResponse>>(),
            size_of::<CacheKey>(),
            size_of::<HeaderMap>()
        );
        assert!(size_of::<CacheKey>() <= 80);
        assert!(size_of::<Entry<CachedResponse>>() <= 328);
    }
}
