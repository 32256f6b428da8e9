//! A versioned byte encoding of a stored response and its lifetime, for a cache tier shared
//! between processes (see `docs/stored-format.md`).
//!
//! Format version 1, all integers big-endian, `bytes` = a `u32` length then that many bytes,
//! `opt` = `0`, or `1` then `bytes`, `time` = `u64` seconds and `u32` nanoseconds (since the
//! Unix epoch for an instant):
//!
//! ```text
//! u8     format version (1)
//! bytes  the key (CacheKey::to_bytes, with its own version byte)
//! time   stored at, fresh until, stale until, error until, retain until
//! time   initial age, load time (durations)
//! u16    status
//! u8     HTTP version: 0 = 0.9, 1 = 1.0, 2 = 1.1, 3 = 2, 4 = 3
//! u8     flags: 1 = Age/Cache-Status slots reserved, 2 = shared with Authorization,
//!        4 = shared with Cookie, 8 = may stand in for an unreachable origin, 16 = tagged
//!        (other bits 0)
//! u32    header lines, then each: bytes name (lowercase), bytes value; in order, duplicates
//!        kept, without the slots (a decoded entry reserves them again)
//! u8     0, or 1 and the Vary values: u32 count, then each: bytes name, opt value
//! u8     0, or 1 and the credentials: u32 count, then each: bytes name, bytes value
//! (if tagged) u32 count (1 to 64), then each: bytes tag (cache tags; a decoded entry counts
//!        as loaded before every tag purge this process made)
//! u64    body length, then the body
//! ```
//!
//! Nothing may follow the body. Decoding checks every length against what is left of the input
//! (so a hostile length allocates nothing), every name and value, and the caps below.

use std::fmt;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use quick_cache::Equivalent;

use super::key::{
    known_namespace, put_bytes, put_optional, CacheKey, KeyRef, VaryValues, KEY_FORMAT,
};
use super::status::{is_slot, reserve_slots, reserve_slots_in};
use super::stored::{CachedResponse, Credentials};
use super::tags::{is_tag, Tags, MAX_TAGS};
use crate::engine::Lifetime;

/// The version byte that starts an encoded response.
pub(crate) const FORMAT: u8 = 1;

/// Most header lines (and credential lines) a decoded response may have: far above what an
/// HTTP server sends, far below what makes `HeaderMap` panic (2^15).
pub(crate) const MAX_HEADER_LINES: usize = 4096;

const FLAG_SLOTS: u8 = 1;
const FLAG_SHARED_WITH_AUTH: u8 = 2;
const FLAG_SHARED_WITH_COOKIE: u8 = 4;
const FLAG_STALE_WHEN_UNREACHABLE: u8 = 8;
const FLAG_TAGGED: u8 = 16;

/// Why bytes are not an encoded response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// The format version byte (or the key's) is not one this build reads.
    UnknownVersion(u8),
    /// The input ends before the response does.
    Truncated,
    /// Bytes follow the body.
    TrailingBytes,
    /// The key's namespace is no layer's in this process.
    UnknownNamespace,
    /// A field that is not what its place allows (named).
    Invalid(&'static str),
    /// A response stored under another key than the one asked for.
    OtherKey,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownVersion(v) => write!(f, "unknown stored-response format version {v}"),
            Self::Truncated => f.write_str("stored response truncated"),
            Self::TrailingBytes => f.write_str("bytes after the stored response's body"),
            Self::UnknownNamespace => f.write_str("stored response of a layer this process lacks"),
            Self::Invalid(what) => write!(f, "invalid {what} in stored response"),
            Self::OtherKey => f.write_str("stored response of another key"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// The bytes of a stored response and its lifetime (format above).
///
/// # Panics
///
/// If a header line or key part is 4 GiB or longer.
pub(crate) fn encode(cached: &CachedResponse, lifetime: &Lifetime) -> Vec<u8> {
    let mut out = Vec::with_capacity(cached.body.len() + cached.headers.len() * 32 + 256);
    out.push(FORMAT);
    put_bytes(&mut out, &cached.key.to_bytes());
    for at in [
        lifetime.stored_at,
        lifetime.fresh_until,
        lifetime.stale_until,
        lifetime.error_until,
        lifetime.retain_until,
    ] {
        // The engine's wall clock never goes before the epoch; clamp if it did.
        put_duration(
            &mut out,
            at.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        );
    }
    put_duration(&mut out, lifetime.initial_age);
    put_duration(&mut out, lifetime.load_time);
    out.extend_from_slice(&cached.status.as_u16().to_be_bytes());
    out.push(version_code(cached.version));
    let mut flags = 0;
    if cached.slots.is_some() {
        flags |= FLAG_SLOTS;
    }
    if cached.shared_with_auth {
        flags |= FLAG_SHARED_WITH_AUTH;
    }
    if cached.shared_with_cookie {
        flags |= FLAG_SHARED_WITH_COOKIE;
    }
    if cached.stale_when_unreachable {
        flags |= FLAG_STALE_WHEN_UNREACHABLE;
    }
    if cached.tags.is_some() {
        flags |= FLAG_TAGGED;
    }
    out.push(flags);
    // Without the slots (a decoded entry reserves them again), in order: `without_slots`
    // would reorder the lines.
    let slotted = cached.slots.is_some();
    let lines = || {
        cached
            .headers
            .iter()
            .filter(move |(name, value)| !(slotted && is_slot(name, value)))
    };
    put_count(&mut out, lines().count());
    for (name, value) in lines() {
        put_bytes(&mut out, name.as_str().as_bytes());
        put_bytes(&mut out, value.as_bytes());
    }
    match &cached.vary {
        None => out.push(0),
        Some(vary) => {
            out.push(1);
            put_count(&mut out, vary.fields().len());
            for (name, value) in vary.fields() {
                put_bytes(&mut out, name.as_str().as_bytes());
                put_optional(&mut out, value.as_deref());
            }
        }
    }
    match &cached.credentials {
        None => out.push(0),
        Some(credentials) => {
            out.push(1);
            put_count(&mut out, credentials.0.len());
            for (name, value) in credentials.0.iter() {
                put_bytes(&mut out, name.as_str().as_bytes());
                put_bytes(&mut out, value.as_bytes());
            }
        }
    }
    if let Some(tags) = &cached.tags {
        put_count(&mut out, tags.names.len());
        for tag in tags.names.iter() {
            put_bytes(&mut out, tag.as_bytes());
        }
    }
    out.extend_from_slice(&(cached.body.len() as u64).to_be_bytes());
    out.extend_from_slice(&cached.body);
    out
}

/// The response and lifetime [`encode`] wrote, or why `input` is not one.
pub(crate) fn decode(input: &[u8]) -> Result<(CachedResponse, Lifetime), DecodeError> {
    decode_as(input, None)
}

/// [`decode`], refusing a response stored under any key but `expected` when given
/// ([`DecodeError::OtherKey`]; then the key is compared in place, not built).
pub(crate) fn decode_as(
    input: &[u8],
    expected: Option<&CacheKey>,
) -> Result<(CachedResponse, Lifetime), DecodeError> {
    let mut r = Reader(input);
    let version = r.u8()?;
    if version != FORMAT {
        return Err(DecodeError::UnknownVersion(version));
    }
    let key = r.bytes()?;
    let key = match expected {
        Some(expected) if key_is(key, expected)? => expected.clone(),
        Some(_) => return Err(DecodeError::OtherKey),
        None => decode_key(key)?,
    };
    let mut times = [SystemTime::UNIX_EPOCH; 5];
    for time in &mut times {
        *time = SystemTime::UNIX_EPOCH
            .checked_add(r.duration()?)
            .ok_or(DecodeError::Invalid("time"))?;
    }
    let [stored_at, fresh_until, stale_until, error_until, retain_until] = times;
    let lifetime = Lifetime {
        stored_at,
        initial_age: r.duration()?,
        fresh_until,
        stale_until,
        error_until,
        retain_until,
        load_time: r.duration()?,
    };
    let status = StatusCode::from_u16(r.u16()?).map_err(|_| DecodeError::Invalid("status"))?;
    let version = version_of(r.u8()?)?;
    let flags = r.u8()?;
    let known = FLAG_SLOTS
        | FLAG_SHARED_WITH_AUTH
        | FLAG_SHARED_WITH_COOKIE
        | FLAG_STALE_WHEN_UNREACHABLE
        | FLAG_TAGGED;
    if flags & !known != 0 {
        return Err(DecodeError::Invalid("flags"));
    }
    let lines = r.count(8)?;
    let fields = header_fields(&mut r, lines)?;
    let (headers, slots) = if flags & FLAG_SLOTS != 0 {
        // The slots are reserved again; headers that look like them would be taken for them.
        if fields.iter().any(|(name, value)| is_slot(name, value)) {
            return Err(DecodeError::Invalid("header (a slot)"));
        }
        // Built once, in the slotted order.
        let (headers, slots) = reserve_slots_in(fields);
        (headers, Some(slots))
    } else {
        let mut headers = HeaderMap::with_capacity(fields.len());
        for (name, value) in fields {
            headers.append(name, value);
        }
        (headers, None)
    };
    let vary = match r.u8()? {
        0 => None,
        1 => {
            let count = r.count(5)?;
            let mut fields = Vec::new();
            for _ in 0..count {
                let name = header_name(r.bytes()?)?;
                let value = r.optional()?.map(<[u8]>::to_vec);
                fields.push((name, value));
            }
            Some(VaryValues::from_fields(fields).ok_or(DecodeError::Invalid("vary"))?)
        }
        _ => return Err(DecodeError::Invalid("vary flag")),
    };
    let credentials = match r.u8()? {
        0 => None,
        1 => {
            let count = r.count(8)?;
            if count == 0 {
                return Err(DecodeError::Invalid("credentials"));
            }
            let mut lines = Vec::new();
            for _ in 0..count {
                lines.push(r.header_line()?);
            }
            Some(Box::new(Credentials(lines.into_boxed_slice())))
        }
        _ => return Err(DecodeError::Invalid("credentials flag")),
    };
    let tags = if flags & FLAG_TAGGED != 0 {
        let count = r.count(5)?;
        if count == 0 || count > MAX_TAGS {
            return Err(DecodeError::Invalid("tag count"));
        }
        let mut names = Vec::with_capacity(count);
        for _ in 0..count {
            let tag = std::str::from_utf8(r.bytes()?).map_err(|_| DecodeError::Invalid("tag"))?;
            if !is_tag(tag) {
                return Err(DecodeError::Invalid("tag"));
            }
            names.push(Box::from(tag));
        }
        // Its load's place among this process's tag purges is unknown: before all of them.
        Some(Box::new(Tags {
            names: names.into_boxed_slice(),
            since: 0,
        }))
    } else {
        None
    };
    let body_len = r.u64()?;
    let body_len = usize::try_from(body_len).map_err(|_| DecodeError::Truncated)?;
    let body = Bytes::copy_from_slice(r.take(body_len)?);
    if !r.0.is_empty() {
        return Err(DecodeError::TrailingBytes);
    }
    let cached = CachedResponse {
        key,
        status,
        version,
        headers,
        slots,
        body,
        vary,
        shared_with_auth: flags & FLAG_SHARED_WITH_AUTH != 0,
        shared_with_cookie: flags & FLAG_SHARED_WITH_COOKIE != 0,
        credentials,
        stale_when_unreachable: flags & FLAG_STALE_WHEN_UNREACHABLE != 0,
        tags,
    };
    Ok((cached, lifetime))
}

/// A key as [`CacheKey::to_bytes`](super::key::CacheKey::to_bytes) wrote it, in this
/// process's id of its namespace.
/// `lines` (at most [`MAX_HEADER_LINES`]) header lines from `r`. Their values share one copy of the section they are in: one
/// allocation for all instead of one a value (and one more a value when a hit first clones it).
fn header_fields(
    r: &mut Reader<'_>,
    lines: usize,
) -> Result<Vec<(HeaderName, HeaderValue)>, DecodeError> {
    let section = r.0;
    for _ in 0..lines {
        r.bytes()?;
        r.bytes()?;
    }
    let shared = Bytes::copy_from_slice(&section[..section.len() - r.0.len()]);
    let mut fields = Reader(&shared);
    let mut out = Vec::with_capacity(lines);
    for _ in 0..lines {
        let name = header_name(fields.bytes()?)?;
        let value = HeaderValue::from_maybe_shared(shared.slice_ref(fields.bytes()?))
            .map_err(|_| DecodeError::Invalid("value"))?;
        out.push((name, value));
    }
    Ok(out)
}

/// What a key's encoding holds, borrowed from it.
struct KeyParts<'a> {
    method: Method,
    host: &'a str,
    target: &'a str,
    extra: Option<&'a str>,
    variant: Option<&'a [u8]>,
    namespace: u32,
}

impl<'a> KeyParts<'a> {
    fn read(input: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader(input);
        let version = r.u8()?;
        if version != KEY_FORMAT {
            return Err(DecodeError::UnknownVersion(version));
        }
        let namespace = text(r.bytes()?, "namespace")?;
        let method = Method::from_bytes(r.bytes()?).map_err(|_| DecodeError::Invalid("method"))?;
        let host = text(r.bytes()?, "host")?;
        let target = text(r.bytes()?, "target")?;
        let extra = r.optional()?.map(|e| text(e, "key extra")).transpose()?;
        let variant = r.optional()?;
        if !r.0.is_empty() {
            return Err(DecodeError::TrailingBytes);
        }
        let namespace = known_namespace(namespace).ok_or(DecodeError::UnknownNamespace)?;
        Ok(Self {
            method,
            host,
            target,
            extra,
            variant,
            namespace,
        })
    }

    fn key(&self) -> KeyRef<'_> {
        let key = KeyRef::from_parts(&self.method, self.host, self.target, self.extra)
            .in_namespace(self.namespace);
        match self.variant {
            Some(variant) => key.with_variant(variant),
            None => key,
        }
    }
}

/// Whether `input` (a key's encoding) is `expected`'s, compared without building the key.
fn key_is(input: &[u8], expected: &CacheKey) -> Result<bool, DecodeError> {
    Ok(KeyParts::read(input)?.key().equivalent(expected))
}

pub(crate) fn decode_key(input: &[u8]) -> Result<CacheKey, DecodeError> {
    Ok(KeyParts::read(input)?.key().to_owned())
}

fn put_duration(out: &mut Vec<u8>, duration: Duration) {
    out.extend_from_slice(&duration.as_secs().to_be_bytes());
    out.extend_from_slice(&duration.subsec_nanos().to_be_bytes());
}

/// # Panics
///
/// If `count` is 2^32 or more.
fn put_count(out: &mut Vec<u8>, count: usize) {
    let count = u32::try_from(count).expect("fewer than 2^32 lines");
    out.extend_from_slice(&count.to_be_bytes());
}

fn version_code(version: Version) -> u8 {
    match version {
        Version::HTTP_09 => 0,
        Version::HTTP_10 => 1,
        Version::HTTP_2 => 3,
        Version::HTTP_3 => 4,
        // HTTP/1.1, and whatever a later `http` adds: served as HTTP/1.1 is.
        _ => 2,
    }
}

fn version_of(code: u8) -> Result<Version, DecodeError> {
    Ok(match code {
        0 => Version::HTTP_09,
        1 => Version::HTTP_10,
        2 => Version::HTTP_11,
        3 => Version::HTTP_2,
        4 => Version::HTTP_3,
        _ => return Err(DecodeError::Invalid("HTTP version")),
    })
}

fn text<'a>(bytes: &'a [u8], what: &'static str) -> Result<&'a str, DecodeError> {
    std::str::from_utf8(bytes).map_err(|_| DecodeError::Invalid(what))
}

fn header_name(bytes: &[u8]) -> Result<HeaderName, DecodeError> {
    HeaderName::from_bytes(bytes).map_err(|_| DecodeError::Invalid("header name"))
}

/// What is left of the input.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.0.len() {
            return Err(DecodeError::Truncated);
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn duration(&mut self) -> Result<Duration, DecodeError> {
        let secs = self.u64()?;
        let nanos = self.u32()?;
        if nanos >= 1_000_000_000 {
            return Err(DecodeError::Invalid("nanoseconds"));
        }
        Ok(Duration::new(secs, nanos))
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()?;
        self.take(usize::try_from(len).map_err(|_| DecodeError::Truncated)?)
    }

    fn optional(&mut self) -> Result<Option<&'a [u8]>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.bytes().map(Some),
            _ => Err(DecodeError::Invalid("option flag")),
        }
    }

    /// A count of items of at least `min_size` bytes each: at most [`MAX_HEADER_LINES`], and
    /// no more than what is left could hold.
    fn count(&mut self, min_size: usize) -> Result<usize, DecodeError> {
        let count = usize::try_from(self.u32()?).map_err(|_| DecodeError::Truncated)?;
        if count > MAX_HEADER_LINES {
            return Err(DecodeError::Invalid("line count"));
        }
        if count.saturating_mul(min_size) > self.0.len() {
            return Err(DecodeError::Truncated);
        }
        Ok(count)
    }

    fn header_line(&mut self) -> Result<(HeaderName, HeaderValue), DecodeError> {
        let name = header_name(self.bytes()?)?;
        let value =
            HeaderValue::from_bytes(self.bytes()?).map_err(|_| DecodeError::Invalid("value"))?;
        Ok((name, value))
    }
}

/// For the fuzz target (`fuzz/src/bin/codec.rs`): decodes `input`; when it decodes,
/// re-encodes it, decodes that again and panics unless the two decoded responses are the same
/// field by field and the second encoding is a fixed point. Returns whether `input` decoded.
#[doc(hidden)]
pub fn fuzz_codec(input: &[u8]) -> bool {
    let Ok((first, lifetime)) = decode(input) else {
        return false;
    };
    let bytes = encode(&first, &lifetime);
    let (second, second_lifetime) = decode(&bytes).expect("an encoded response decodes");
    assert_same(&first, &second);
    assert_eq!(lifetime, second_lifetime);
    assert_eq!(
        encode(&second, &second_lifetime),
        bytes,
        "encoding is a fixed point"
    );
    true
}

/// Starting inputs for the fuzz target: encodings of a few stored responses (of the default
/// cache name's namespace, which every process knows).
#[doc(hidden)]
pub fn fuzz_codec_seeds() -> Vec<Vec<u8>> {
    use http::header;
    let at = |secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    let lifetime = Lifetime {
        stored_at: at(1_764_633_600),
        initial_age: Duration::from_secs(3),
        fresh_until: at(1_764_633_660),
        stale_until: at(1_764_633_780),
        error_until: at(1_764_633_900),
        retain_until: at(1_764_634_200),
        load_time: Duration::from_millis(12),
    };
    let key = |target: &str| {
        KeyRef::from_parts(&Method::GET, "example.com", target, None)
            .in_namespace(0)
            .to_owned()
    };
    let mut origin = HeaderMap::new();
    origin.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    origin.insert(header::ETAG, HeaderValue::from_static("\"v1\""));
    origin.append(header::LINK, HeaderValue::from_static("</a>"));
    origin.append(header::LINK, HeaderValue::from_static("</b>"));
    origin.insert(header::VARY, HeaderValue::from_static("accept-language"));
    let (headers, slots) = reserve_slots(origin.clone());
    let mut request = HeaderMap::new();
    request.insert(header::ACCEPT_LANGUAGE, HeaderValue::from_static("en"));
    request.insert(header::COOKIE, HeaderValue::from_static("s=1"));
    let vary = match super::key::Vary::of(&origin, &request) {
        super::key::Vary::On(vary) => Some(vary),
        _ => None,
    };
    let full = CachedResponse {
        key: key("/page?q=1"),
        status: StatusCode::OK,
        version: Version::HTTP_11,
        headers,
        slots: Some(slots),
        body: Bytes::from_static(b"<p>hello</p>"),
        vary,
        shared_with_auth: false,
        shared_with_cookie: true,
        credentials: Credentials::of(&request, &[]),
        stale_when_unreachable: true,
        tags: Some(Box::new(Tags {
            names: vec![Box::from("product-1"), Box::from("page")].into_boxed_slice(),
            since: 0,
        })),
    };
    let bare = CachedResponse {
        key: key("/"),
        status: StatusCode::NOT_FOUND,
        version: Version::HTTP_2,
        headers: HeaderMap::new(),
        slots: None,
        body: Bytes::new(),
        vary: None,
        shared_with_auth: false,
        shared_with_cookie: false,
        credentials: None,
        stale_when_unreachable: false,
        tags: None,
    };
    vec![encode(&full, &lifetime), encode(&bare, &lifetime)]
}

/// Panics unless `a` and `b` are the same response, field by field (headers in order).
pub(crate) fn assert_same(a: &CachedResponse, b: &CachedResponse) {
    fn lines(headers: &HeaderMap) -> Vec<(&HeaderName, &HeaderValue)> {
        headers.iter().collect()
    }
    assert_eq!(a.key, b.key, "key");
    assert_eq!(a.key.namespace(), b.key.namespace(), "namespace");
    assert_eq!(a.status, b.status, "status");
    assert_eq!(a.version, b.version, "version");
    assert_eq!(lines(&a.headers), lines(&b.headers), "headers");
    assert_eq!(format!("{:?}", a.slots), format!("{:?}", b.slots), "slots");
    assert_eq!(a.body, b.body, "body");
    assert_eq!(a.vary, b.vary, "vary");
    assert_eq!(a.shared_with_auth, b.shared_with_auth, "shared_with_auth");
    assert_eq!(
        a.shared_with_cookie, b.shared_with_cookie,
        "shared_with_cookie"
    );
    assert_eq!(
        a.credentials.as_ref().map(|c| &c.0),
        b.credentials.as_ref().map(|c| &c.0),
        "credentials"
    );
    assert_eq!(
        a.stale_when_unreachable, b.stale_when_unreachable,
        "stale_when_unreachable"
    );
    assert_eq!(
        a.tags.as_ref().map(|t| &t.names),
        b.tags.as_ref().map(|t| &t.names),
        "tags"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::key::namespace_id;
    use crate::http::status::{without_slots, CacheStatus, Member, StatusHeaders};
    use http::header::{self, CONTENT_TYPE, ETAG, LAST_MODIFIED};
    use http_body_util::Full;
    use proptest::prelude::*;

    fn lines(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
        headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    fn lifetime() -> Lifetime {
        let at = |secs, nanos| SystemTime::UNIX_EPOCH + Duration::new(secs, nanos);
        Lifetime {
            stored_at: at(1_764_633_600, 123_456_789),
            initial_age: Duration::from_secs(7),
            fresh_until: at(1_764_633_660, 123_456_789),
            stale_until: at(1_764_633_780, 5),
            error_until: at(1_764_634_000, 0),
            retain_until: at(1_764_634_200, 999_999_999),
            load_time: Duration::from_micros(1_500),
        }
    }

    /// An entry as admission stores one: validators, duplicate lines, a non-UTF-8 value, an
    /// upstream `Cache-Status`, `Vary` and credentials.
    fn sample() -> CachedResponse {
        let mut origin = HeaderMap::new();
        origin.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        origin.insert(ETAG, HeaderValue::from_static("\"v1\""));
        origin.insert(
            LAST_MODIFIED,
            HeaderValue::from_static("Wed, 01 Jan 2025 00:00:00 GMT"),
        );
        origin.append(header::LINK, HeaderValue::from_static("</a>; rel=preload"));
        origin.append(header::LINK, HeaderValue::from_static("</b>; rel=preload"));
        origin.append(
            HeaderName::from_static("x-latin1"),
            HeaderValue::from_bytes(b"caf\xe9").unwrap(),
        );
        origin.append(
            crate::CACHE_STATUS.clone(),
            HeaderValue::from_static("edge; hit"),
        );
        origin.insert(header::VARY, HeaderValue::from_static("accept-language"));
        let (headers, slots) = reserve_slots(origin);
        let mut request = HeaderMap::new();
        request.insert(header::ACCEPT_LANGUAGE, HeaderValue::from_static("en, fr"));
        let super::super::key::Vary::On(vary) = super::super::key::Vary::of(&headers, &request)
        else {
            panic!("varies");
        };
        let variant = vary.variant();
        let key = KeyRef::from_parts(&Method::GET, "example.com", "/a?b=1", Some("u1"))
            .in_namespace(namespace_id("codec-test"))
            .with_variant(&variant)
            .to_owned();
        let mut credentials = HeaderMap::new();
        credentials.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        CachedResponse {
            key,
            status: StatusCode::OK,
            version: Version::HTTP_2,
            headers,
            slots: Some(slots),
            body: Bytes::from_static(b"hello\x00world"),
            vary: Some(vary),
            shared_with_auth: true,
            shared_with_cookie: false,
            credentials: Credentials::of(&credentials, &[]),
            stale_when_unreachable: false,
            tags: None,
        }
    }

    /// The headers a hit on `cached` sends.
    fn hit_headers(cached: &CachedResponse) -> Vec<(String, Vec<u8>)> {
        let status = StatusHeaders::new("tower-swr", true, false, true);
        let mut headers = cached.headers.clone();
        let member = Member::Hit { ttl: 3 };
        let age = Duration::from_secs(42);
        match cached.slots {
            Some(slots) => status.fill(
                &mut headers,
                slots,
                member,
                CacheStatus::Fresh,
                age,
                &cached.key,
            ),
            None => status.write(&mut headers, member, CacheStatus::Fresh, Some(age), None),
        }
        lines(&headers)
    }

    /// Decoded is the same as `original` field by field, and serves the same.
    fn assert_round_trip(original: &CachedResponse, lifetime: &Lifetime) {
        let bytes = encode(original, lifetime);
        let (decoded, decoded_lifetime) = decode(&bytes).expect("decodes");
        assert_same(original, &decoded);
        assert_eq!(*lifetime, decoded_lifetime);
        assert_eq!(hit_headers(original), hit_headers(&decoded));
        let (a, b) = (
            original.clone().into_response::<Full<Bytes>>(),
            decoded.clone().into_response::<Full<Bytes>>(),
        );
        assert_eq!(a.status(), b.status());
        assert_eq!(a.version(), b.version());
        assert_eq!(lines(a.headers()), lines(b.headers()));
        assert_eq!(encode(&decoded, &decoded_lifetime), bytes, "a fixed point");
    }

    #[test]
    fn the_fuzz_seeds_decode() {
        for seed in fuzz_codec_seeds() {
            assert!(fuzz_codec(&seed));
        }
    }

    #[test]
    fn a_stored_response_survives_the_round_trip() {
        let original = sample();
        assert_round_trip(&original, &lifetime());
        let (decoded, _) = decode(&encode(&original, &lifetime())).unwrap();
        assert_eq!(decoded.headers.get(ETAG).unwrap(), "\"v1\"");
        assert_eq!(
            decoded.headers.get(LAST_MODIFIED).unwrap(),
            "Wed, 01 Jan 2025 00:00:00 GMT"
        );
        let links: Vec<_> = decoded.headers.get_all(header::LINK).iter().collect();
        assert_eq!(links, ["</a>; rel=preload", "</b>; rel=preload"]);
        assert_eq!(
            decoded.headers.get("x-latin1").unwrap().as_bytes(),
            b"caf\xe9"
        );
        assert_eq!(decoded.key.namespace_name().as_ref(), "codec-test");
        let mut request = HeaderMap::new();
        request.insert(header::ACCEPT_LANGUAGE, HeaderValue::from_static("en,fr"));
        assert!(decoded.vary.as_ref().unwrap().matches(&request));
        request.insert(header::ACCEPT_LANGUAGE, HeaderValue::from_static("de"));
        assert!(!decoded.vary.as_ref().unwrap().matches(&request));
    }

    #[test]
    fn an_unslotted_response_without_vary_or_credentials_survives_too() {
        let mut original = sample();
        original.headers = without_slots(original.headers);
        original.slots = None;
        original.vary = None;
        original.credentials = None;
        original.shared_with_auth = false;
        original.shared_with_cookie = true;
        original.version = Version::HTTP_11;
        original.status = StatusCode::from_u16(599).unwrap();
        original.body = Bytes::new();
        assert_round_trip(&original, &lifetime());
    }

    #[test]
    fn the_first_byte_is_the_version_and_an_unknown_one_is_refused() {
        let mut bytes = encode(&sample(), &lifetime());
        assert_eq!(bytes[0], 1);
        bytes[0] = 2;
        assert_eq!(decode(&bytes).unwrap_err(), DecodeError::UnknownVersion(2));
        assert_eq!(
            DecodeError::UnknownVersion(2).to_string(),
            "unknown stored-response format version 2"
        );
        assert_eq!(decode(&[]).unwrap_err(), DecodeError::Truncated);
    }

    #[test]
    fn every_prefix_and_any_extra_byte_is_refused() {
        let bytes = encode(&sample(), &lifetime());
        for end in 0..bytes.len() {
            assert!(decode(&bytes[..end]).is_err(), "prefix of {end} bytes");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(&longer).unwrap_err(), DecodeError::TrailingBytes);
    }

    #[test]
    fn corrupt_bytes_never_panic() {
        let bytes = encode(&sample(), &lifetime());
        for at in 0..bytes.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut corrupt = bytes.clone();
                corrupt[at] ^= flip;
                // Either refused or a response that round-trips itself.
                fuzz_codec(&corrupt);
            }
        }
    }

    #[test]
    fn a_hostile_length_is_refused_without_allocating_it() {
        let bytes = encode(&sample(), &lifetime());
        // The key's length, then the header count, then the body length, each set huge.
        let mut key = bytes.clone();
        key[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(&key).unwrap_err(), DecodeError::Truncated);
        let key_len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        let count_at = 1 + 4 + key_len + 7 * 12 + 2 + 1 + 1;
        let mut count = bytes.clone();
        count[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            decode(&count).unwrap_err(),
            DecodeError::Invalid("line count")
        );
        count[count_at..count_at + 4].copy_from_slice(&4000u32.to_be_bytes());
        assert_eq!(decode(&count).unwrap_err(), DecodeError::Truncated);
        let body_at = bytes.len() - sample().body.len() - 8;
        let mut body = bytes.clone();
        body[body_at..body_at + 8].copy_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(decode(&body).unwrap_err(), DecodeError::Truncated);
    }

    #[test]
    fn a_key_of_a_layer_this_process_lacks_is_refused() {
        let mut cached = sample();
        cached.key = KeyRef::from_parts(&Method::GET, "h", "/", None)
            .in_namespace(namespace_id("codec-test"))
            .to_owned();
        let bytes = encode(&cached, &lifetime());
        let at = bytes.windows(10).position(|w| w == b"codec-test").unwrap();
        let mut other = bytes.clone();
        other[at..at + 10].copy_from_slice(b"codec-tesT");
        assert_eq!(decode(&other).unwrap_err(), DecodeError::UnknownNamespace);
    }

    #[test]
    fn headers_that_would_pass_for_slots_are_refused() {
        let mut cached = sample();
        cached.slots = None;
        cached.headers = HeaderMap::new();
        cached
            .headers
            .insert(header::AGE, HeaderValue::from_static("5"));
        let mut bytes = encode(&cached, &lifetime());
        let flags_at = 1 + 4 + cached.key.to_bytes().len() + 7 * 12 + 2 + 1;
        assert_eq!(bytes[flags_at], FLAG_SHARED_WITH_AUTH);
        bytes[flags_at] |= FLAG_SLOTS;
        assert_eq!(
            decode(&bytes).unwrap_err(),
            DecodeError::Invalid("header (a slot)")
        );
        bytes[flags_at] |= 0x40;
        assert_eq!(decode(&bytes).unwrap_err(), DecodeError::Invalid("flags"));
    }

    fn header_name_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("etag".to_owned()),
            Just("last-modified".to_owned()),
            Just("set-cookie".to_owned()),
            Just("cache-status".to_owned()),
            Just("age".to_owned()),
            "[a-z][a-z0-9-]{0,10}",
        ]
    }

    /// Header value bytes: visible ASCII, space, tab and obs-text (not UTF-8 on its own).
    fn value_strategy() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop_oneof![0x20u8..=0x7e, Just(b'\t'), 0x80u8..=0xff],
            0..24,
        )
    }

    fn time_strategy() -> impl Strategy<Value = Duration> {
        (0u64..=1 << 40, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n))
    }

    prop_compose! {
        fn response_strategy()(
            status in 100u16..=999,
            version in 0u8..5,
            lines in prop::collection::vec((header_name_strategy(), value_strategy()), 0..12),
            slotted in any::<bool>(),
            body in prop::collection::vec(any::<u8>(), 0..4096),
            vary in prop::option::of(prop::collection::btree_map(
                "[a-z][a-z-]{0,8}", prop::option::of(value_strategy()), 1..4)),
            credentials in prop::collection::vec(
                (prop_oneof![Just("authorization"), Just("cookie"), Just("x-api-key")],
                 value_strategy()), 0..3),
            flags in (any::<bool>(), any::<bool>(), any::<bool>()),
            tags in prop::collection::btree_set("[!-+--~]{1,12}", 0..5),
            method in prop_oneof![Just("GET"), Just("POST"), Just("FOO")],
            host in "[a-z.:0-9]{0,16}",
            target in "/[ -~]{0,24}",
            extra in prop::option::of("\\PC{0,8}"),
            namespace in prop_oneof![Just("tower-swr"), Just("api"), Just("api#2")],
        ) -> CachedResponse {
            let mut headers = HeaderMap::new();
            for (name, value) in lines {
                headers.append(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_bytes(&value).unwrap(),
                );
            }
            let (headers, slots) = if slotted {
                let (headers, slots) = reserve_slots(headers);
                (headers, Some(slots))
            } else {
                (headers, None)
            };
            let vary = vary.map(|fields| {
                VaryValues::from_fields(
                    fields
                        .into_iter()
                        .map(|(n, v)| (HeaderName::from_bytes(n.as_bytes()).unwrap(), v))
                        .collect(),
                )
                .unwrap()
            });
            let variant = vary.as_ref().map(VaryValues::variant);
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let key = KeyRef::from_parts(&method, &host, &target, extra.as_deref())
                .in_namespace(namespace_id(namespace));
            let key = match &variant {
                Some(variant) => key.with_variant(variant).to_owned(),
                None => key.to_owned(),
            };
            let mut request = HeaderMap::new();
            for (name, value) in credentials {
                request.append(name, HeaderValue::from_bytes(&value).unwrap());
            }
            CachedResponse {
                key,
                status: StatusCode::from_u16(status).unwrap(),
                version: version_of(version).unwrap(),
                headers,
                slots,
                body: Bytes::from(body),
                vary,
                shared_with_auth: flags.0,
                shared_with_cookie: flags.1,
                credentials: Credentials::of(&request, &[HeaderName::from_static("x-api-key")]),
                stale_when_unreachable: flags.2,
                tags: (!tags.is_empty()).then(|| Box::new(Tags {
                    names: tags.into_iter().map(String::into_boxed_str).collect(),
                    since: 0,
                })),
            }
        }
    }

    prop_compose! {
        fn lifetime_strategy()(
            times in prop::array::uniform5(time_strategy()),
            initial_age in time_strategy(),
            load_time in time_strategy(),
        ) -> Lifetime {
            let at = |d| SystemTime::UNIX_EPOCH + d;
            Lifetime {
                stored_at: at(times[0]),
                initial_age,
                fresh_until: at(times[1]),
                stale_until: at(times[2]),
                error_until: at(times[3]),
                retain_until: at(times[4]),
                load_time,
            }
        }
    }

    proptest! {
        #[test]
        fn any_stored_response_round_trips(
            cached in response_strategy(),
            lifetime in lifetime_strategy(),
            cut in any::<prop::sample::Index>(),
            flip in (any::<prop::sample::Index>(), 1u8..=255),
        ) {
            assert_round_trip(&cached, &lifetime);
            let bytes = encode(&cached, &lifetime);
            let end = cut.index(bytes.len());
            prop_assert!(decode(&bytes[..end]).is_err(), "a prefix of {} bytes decoded", end);
            let mut corrupt = bytes.clone();
            corrupt[flip.0.index(bytes.len())] ^= flip.1;
            fuzz_codec(&corrupt);
        }
    }
}
