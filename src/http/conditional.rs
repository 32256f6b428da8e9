//! Validators: conditional requests to the origin, 304 merging (RFC 9111 §3.2, §4.3), and
//! clients' own conditional and range requests answered from a stored response.

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Request fields that make a request conditional or partial; they belong to one client's
/// exchange, so a cacheable miss is forwarded without them and they are applied to the stored
/// response afterwards.
pub(crate) const CLIENT_CONDITIONALS: [HeaderName; 6] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
    header::RANGE,
];

/// Whether a request carries any of [`CLIENT_CONDITIONALS`].
pub(crate) fn is_conditional_or_range(headers: &HeaderMap) -> bool {
    // Comparing the names present is cheaper than hashing six that are usually absent.
    headers
        .keys()
        .any(|present| CLIENT_CONDITIONALS.contains(present))
}

/// Adds the stored response's validators to a request bound for the origin.
pub(crate) fn add_validators(request: &mut HeaderMap, stored: &HeaderMap) -> bool {
    let mut added = false;
    if let Some(etag) = stored.get(header::ETAG) {
        request.insert(header::IF_NONE_MATCH, etag.clone());
        added = true;
    }
    if let Some(last_modified) = stored.get(header::LAST_MODIFIED) {
        request.insert(header::IF_MODIFIED_SINCE, last_modified.clone());
        added = true;
    }
    added
}

/// Fields a 304 must not change in the stored response (RFC 9111 §3.2 and the cache-tests
/// suite): they describe the stored content itself.
fn keeps_stored(name: &HeaderName) -> bool {
    name == header::CONTENT_LENGTH
        || name == header::CONTENT_ENCODING
        || name == header::CONTENT_RANGE
        || name == header::ETAG
        || name == header::TRANSFER_ENCODING
        || name.as_str() == "content-md5"
}

/// The stored headers updated with those of a 304 (RFC 9111 §3.2).
pub(crate) fn merge_304(stored: &HeaderMap, not_modified: &HeaderMap) -> HeaderMap {
    let mut merged = stored.clone();
    for name in not_modified.keys() {
        if keeps_stored(name) {
            continue;
        }
        merged.remove(name);
        for value in not_modified.get_all(name) {
            merged.append(name.clone(), value.clone());
        }
    }
    merged
}

/// Whether a 304 answering our revalidation of `stored` may update it (RFC 9111 §4.3.4): its
/// entity tag, if it has one, must match the stored one (strongly, when the 304's is strong);
/// without one, its `Last-Modified`, if it has one, must be the stored one. A 304 with no
/// validator updates the one response stored under the key. A 304 for another
/// representation updates nothing: the stored one is no longer the origin's.
pub(crate) fn selects_for_update(stored: &HeaderMap, not_modified: &HeaderMap) -> bool {
    fn text(headers: &HeaderMap, name: HeaderName) -> Option<&str> {
        (headers.get(name).and_then(|v| v.to_str().ok())).map(str::trim)
    }
    if let Some(etag) = text(not_modified, header::ETAG) {
        return text(stored, header::ETAG).is_some_and(|stored| {
            if etag.starts_with("W/") {
                weak_eq(etag, stored)
            } else {
                // Strong comparison: both strong and the same octets.
                !stored.starts_with("W/") && stored == etag
            }
        });
    }
    match not_modified.get(header::LAST_MODIFIED) {
        None => true,
        Some(modified) => (stored.get(header::LAST_MODIFIED)).is_some_and(|stored| {
            stored == modified
                || http_date(stored).is_some_and(|at| http_date(modified) == Some(at))
        }),
    }
}

fn http_date(value: &HeaderValue) -> Option<SystemTime> {
    httpdate::parse_http_date(value.to_str().ok()?.trim()).ok()
}

/// The members of an entity-tag list, split at the commas between them, not inside a quoted
/// tag (an entity tag may hold a comma, RFC 9110 §8.8.3).
fn entity_tags(list: &str) -> impl Iterator<Item = &str> {
    let mut quoted = false;
    let mut start = 0;
    let mut cuts = Vec::new();
    for (at, byte) in list.bytes().enumerate() {
        match byte {
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                cuts.push((start, at));
                start = at + 1;
            }
            _ => {}
        }
    }
    cuts.push((start, list.len()));
    cuts.into_iter()
        .map(move |(from, to)| list[from..to].trim())
        .filter(|tag| !tag.is_empty())
}

/// Weak comparison of entity tags (RFC 9110 §8.8.3.2).
fn weak_eq(a: &str, b: &str) -> bool {
    a.trim().trim_start_matches("W/") == b.trim().trim_start_matches("W/")
}

/// Whether a client's `If-None-Match` / `If-Modified-Since` lets us answer 304 from a stored
/// response with these headers (RFC 9110 §13.2.2: `If-None-Match` takes precedence).
pub(crate) fn not_modified(request: &HeaderMap, stored: &HeaderMap) -> bool {
    let mut inm = request.get_all(header::IF_NONE_MATCH).iter().peekable();
    if inm.peek().is_some() {
        let etag = stored.get(header::ETAG).and_then(|e| e.to_str().ok());
        // `*` matches any current representation, one without an ETag too (§13.1.2).
        return (inm.filter_map(|v| v.to_str().ok()))
            .flat_map(entity_tags)
            .any(|candidate| {
                candidate == "*" || etag.is_some_and(|etag| weak_eq(candidate, etag))
            });
    }
    // A field with more than one member is invalid and ignored (§13.1.3).
    let mut ims = request.get_all(header::IF_MODIFIED_SINCE).iter();
    let (Some(since), None) = (ims.next().and_then(http_date), ims.next()) else {
        return false;
    };
    let modified = stored
        .get(header::LAST_MODIFIED)
        .or_else(|| stored.get(header::DATE))
        .and_then(http_date);
    modified.is_some_and(|modified| modified <= since)
}

/// Headers of a 304 built from a stored response: everything but the content's own framing.
pub(crate) fn headers_for_304(stored: &HeaderMap) -> HeaderMap {
    let mut headers = stored.clone();
    for name in [
        header::CONTENT_LENGTH,
        header::CONTENT_RANGE,
        header::TRANSFER_ENCODING,
    ] {
        headers.remove(name);
    }
    headers
}

/// A satisfiable single byte range of a body `len` bytes long, as `start..end` (exclusive).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ByteRange {
    /// Serve this slice as 206.
    Slice(usize, usize),
    /// No overlap with the body: 416.
    Unsatisfiable,
    /// Several ranges, a unit we do not serve, or malformed: serve the whole body (allowed).
    Whole,
}

/// Reads a `Range` header against a stored body (RFC 9110 §14.1.2). `If-Range` that does not
/// match the stored validator means the whole body. `received`: when the cache got the stored
/// response, its `Date` if it has none (what makes a `Last-Modified` strong, below).
pub(crate) fn byte_range(
    request: &HeaderMap,
    stored: &HeaderMap,
    len: usize,
    received: impl FnOnce() -> SystemTime,
) -> ByteRange {
    let Some(range) = request.get(header::RANGE).and_then(|r| r.to_str().ok()) else {
        return ByteRange::Whole;
    };
    if let Some(if_range) = request.get(header::IF_RANGE) {
        // A validator we cannot read matches nothing: the whole body (RFC 9110 §13.1.5).
        let Ok(if_range) = if_range.to_str() else {
            return ByteRange::Whole;
        };
        let etag = stored.get(header::ETAG).and_then(|e| e.to_str().ok());
        let strong_match = etag.is_some_and(|e| !e.starts_with("W/") && e == if_range.trim());
        // A date matches only as a strong validator (RFC 9110 §13.1.5): compared by a cache,
        // a `Last-Modified` at least 60 s before the entry's `Date` (§8.8.2.2); one closer may
        // name two versions of one second.
        let date_match = stored.get(header::LAST_MODIFIED).is_some_and(|lm| {
            lm.as_bytes() == if_range.trim().as_bytes()
                && http_date(lm).is_some_and(|modified| {
                    let date = stored.get(header::DATE).and_then(http_date);
                    let date = date.unwrap_or_else(received);
                    date.duration_since(modified)
                        .is_ok_and(|apart| apart >= Duration::from_secs(60))
                })
        });
        if !strong_match && !date_match {
            return ByteRange::Whole;
        }
    }
    let Some(spec) = range.trim().strip_prefix("bytes=") else {
        return ByteRange::Whole;
    };
    if spec.contains(',') {
        return ByteRange::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return ByteRange::Whole;
    };
    let parse = |s: &str| -> Option<Option<u64>> {
        let s = s.trim();
        if s.is_empty() {
            Some(None)
        } else if s.bytes().all(|b| b.is_ascii_digit()) {
            s.parse().ok().map(Some)
        } else {
            None
        }
    };
    let (Some(first), Some(last)) = (parse(first), parse(last)) else {
        return ByteRange::Whole;
    };
    let len = len as u64;
    let (start, end) = match (first, last) {
        (Some(first), last) => {
            if last.is_some_and(|last| last < first) {
                return ByteRange::Whole;
            }
            if first >= len {
                return ByteRange::Unsatisfiable;
            }
            // `last` is client input up to u64::MAX: clamp before adding (RFC 9110 §14.1.2: a
            // last-pos past the end means the end).
            (first, last.map_or(len, |last| last.min(len - 1) + 1))
        }
        (None, Some(suffix)) => {
            if suffix == 0 {
                return ByteRange::Unsatisfiable;
            }
            if len == 0 {
                // The one satisfiable range of an empty body (§14.1.2): answered whole.
                return ByteRange::Whole;
            }
            (len.saturating_sub(suffix), len)
        }
        (None, None) => return ByteRange::Whole,
    };
    ByteRange::Slice(start as usize, end as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn a_304_updates_only_the_representation_its_validators_name() {
        let stored = headers(&[
            ("etag", "\"v1\""),
            ("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT"),
        ]);
        let updates = |pairs| selects_for_update(&stored, &headers(pairs));
        assert!(updates(&[("etag", "\"v1\"")]));
        assert!(
            updates(&[("etag", "W/\"v1\"")]),
            "a weak tag compares weakly"
        );
        assert!(!updates(&[("etag", "\"v2\"")]));
        assert!(!updates(&[("etag", "W/\"v2\"")]));
        assert!(
            updates(&[("cache-control", "max-age=60")]),
            "no validator at all"
        );
        assert!(updates(&[(
            "last-modified",
            "Tue, 01 Dec 2026 10:00:00 GMT"
        )]));
        assert!(!updates(&[(
            "last-modified",
            "Wed, 02 Dec 2026 10:00:00 GMT"
        )]));
        // The tag decides when there is one.
        assert!(updates(&[
            ("etag", "\"v1\""),
            ("last-modified", "Wed, 02 Dec 2026 10:00:00 GMT")
        ]));
        let weak = headers(&[("etag", "W/\"v1\"")]);
        assert!(
            !selects_for_update(&weak, &headers(&[("etag", "\"v1\"")])),
            "strong needs strong"
        );
        assert!(selects_for_update(&weak, &headers(&[("etag", "W/\"v1\"")])));
        let untagged = headers(&[]);
        assert!(!selects_for_update(
            &untagged,
            &headers(&[("etag", "\"v1\"")])
        ));
    }

    #[test]
    fn ranges() {
        let none = HeaderMap::new();
        let r = |spec: &'static str| {
            byte_range(&headers(&[("range", spec)]), &none, 10, SystemTime::now)
        };
        assert_eq!(r("bytes=0-1"), ByteRange::Slice(0, 2));
        assert_eq!(r("bytes=1-"), ByteRange::Slice(1, 10));
        assert_eq!(r("bytes=-1"), ByteRange::Slice(9, 10));
        assert_eq!(r("bytes=5-100"), ByteRange::Slice(5, 10));
        assert_eq!(r("bytes=10-"), ByteRange::Unsatisfiable);
        assert_eq!(r("bytes=0-1,3-4"), ByteRange::Whole);
        assert_eq!(r("items=0-1"), ByteRange::Whole);
    }

    #[test]
    fn a_last_byte_position_past_u64_bounds_is_clamped_or_ignored() {
        let none = HeaderMap::new();
        let r = |spec: &'static str| {
            byte_range(&headers(&[("range", spec)]), &none, 10, SystemTime::now)
        };
        assert_eq!(r("bytes=1-18446744073709551615"), ByteRange::Slice(1, 10));
        assert_eq!(r("bytes=0-18446744073709551615"), ByteRange::Slice(0, 10));
        assert_eq!(r("bytes=9-18446744073709551614"), ByteRange::Slice(9, 10));
        assert_eq!(r("bytes=-18446744073709551615"), ByteRange::Slice(0, 10));
        // Past u64: not a number we can read, so not a range we serve.
        assert_eq!(r("bytes=0-99999999999999999999999"), ByteRange::Whole);
        assert_eq!(r("bytes=99999999999999999999999-"), ByteRange::Whole);
        assert_eq!(r("bytes=18446744073709551615-"), ByteRange::Unsatisfiable);
        let empty = byte_range(
            &headers(&[("range", "bytes=0-18446744073709551615")]),
            &none,
            0,
            SystemTime::now,
        );
        assert_eq!(empty, ByteRange::Unsatisfiable);
    }

    proptest::proptest! {
        /// Any `Range` a client sends yields a slice inside the body, a 416 or the whole body.
        #[test]
        fn any_range_header_yields_a_slice_inside_the_body(
            first in proptest::option::of(proptest::prop_oneof![
                0u64..40, proptest::num::u64::ANY, (u64::MAX - 3)..=u64::MAX]),
            last in proptest::option::of(proptest::prop_oneof![
                0u64..40, proptest::num::u64::ANY, (u64::MAX - 3)..=u64::MAX]),
            len in 0usize..32,
        ) {
            let spec = format!(
                "bytes={}-{}",
                first.map_or(String::new(), |n| n.to_string()),
                last.map_or(String::new(), |n| n.to_string()),
            );
            let mut request = HeaderMap::new();
            request.insert(header::RANGE, HeaderValue::try_from(spec).unwrap());
            if let ByteRange::Slice(start, end) = byte_range(&request, &HeaderMap::new(), len, SystemTime::now) {
                proptest::prop_assert!(start < end && end <= len);
            }
        }
    }

    #[test]
    fn if_none_match_wins_over_if_modified_since() {
        let stored = headers(&[
            ("etag", "\"abc\""),
            ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
        ]);
        let request = headers(&[
            ("if-none-match", "\"xyz\""),
            ("if-modified-since", "Tue, 02 Jan 2024 00:00:00 GMT"),
        ]);
        assert!(!not_modified(&request, &stored));
        let request = headers(&[("if-none-match", "W/\"abc\", \"other\"")]);
        assert!(not_modified(&request, &stored));
        let request = headers(&[("if-modified-since", "Tue, 02 Jan 2024 00:00:00 GMT")]);
        assert!(not_modified(&request, &stored));
    }

    #[test]
    fn merge_keeps_content_fields() {
        let stored = headers(&[("etag", "\"1\""), ("content-length", "3"), ("x-a", "old")]);
        let update = headers(&[("etag", "\"2\""), ("content-length", "0"), ("x-a", "new")]);
        let merged = merge_304(&stored, &update);
        assert_eq!(merged["etag"], "\"1\"");
        assert_eq!(merged["content-length"], "3");
        assert_eq!(merged["x-a"], "new");
    }
}
