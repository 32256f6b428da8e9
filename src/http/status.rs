//! What a response says about how it was answered: `Age`, RFC 9211 `Cache-Status`, the opt-in
//! `X-Cache`, and the [`CacheInfo`] response extension.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::header::{Entry, HeaderMap, HeaderName, HeaderValue, AGE};
use tokio::time::Instant;

/// The cache name a layer has unless told otherwise.
pub(crate) const DEFAULT_NAME: &str = "tower-swr";

/// The RFC 9211 `Cache-Status` header name.
pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
/// The opt-in `X-Cache` header name.
pub static X_CACHE: HeaderName = HeaderName::from_static("x-cache");
/// The opt-in `X-Cache-Key` header name (it reveals keys: off by default).
pub static X_CACHE_KEY: HeaderName = HeaderName::from_static("x-cache-key");

/// How the layer answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CacheStatus {
    /// From a fresh entry; the origin was not called.
    Fresh,
    /// From a stale entry inside its stale-while-revalidate window; a background refresh runs.
    Stale,
    /// From a stale entry because the origin failed (stale-if-error).
    StaleIfError,
    /// From the origin (stored or not, see [`CacheInfo::stored`]).
    Miss,
    /// From another request's origin call, which this one waited for (request coalescing).
    Collapsed,
    /// Not eligible for caching: passed straight to the origin.
    Bypass,
    /// With the failure of this key's origin call that ended a moment ago (the layer's
    /// `remember_failures`); the origin was not called.
    FailureHit,
    /// From the shared tier (Redis): fresh, loaded by another instance; the origin was not
    /// called. `Cache-Status` says `hit` with `detail=shared`.
    SharedTier,
}

impl CacheStatus {
    /// The `X-Cache` value: `HIT`, `STALE`, `MISS` or `BYPASS`.
    pub fn x_cache(self) -> &'static str {
        match self {
            Self::Fresh | Self::Collapsed | Self::FailureHit | Self::SharedTier => "HIT",
            Self::Stale | Self::StaleIfError => "STALE",
            Self::Miss => "MISS",
            Self::Bypass => "BYPASS",
        }
    }
}

/// Response extension telling how the layer answered (seed `background-refresh-flow.md`:
/// `from_cache`, `cache_valid`, `cache_date`, `refreshing_in_background`).
///
/// ```
/// # use tower_swr::{CacheInfo, CacheStatus};
/// # fn show(response: &http::Response<()>) {
/// if let Some(info) = response.extensions().get::<CacheInfo>() {
///     if info.refreshing {
///         println!("updating… (served {:?}, {:?} old)", info.status, info.age);
///     }
/// }
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheInfo {
    /// How the request was answered.
    pub status: CacheStatus,
    /// The answer's age, for answers from the cache (including a just-stored miss).
    pub age: Option<Duration>,
    /// When the answer was stored, for answers from the cache.
    pub stored_at: Option<Instant>,
    /// Whether a background refresh of this key is running.
    pub refreshing: bool,
    /// Whether the answer is (now) stored.
    pub stored: bool,
}

impl CacheInfo {
    pub(crate) fn uncached(status: CacheStatus) -> Self {
        Self {
            status,
            age: None,
            stored_at: None,
            refreshing: false,
            stored: false,
        }
    }
}

/// The `Cache-Status` member, without the cache's name.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Member {
    Hit {
        ttl: i64,
    },
    /// A hit on a value from the shared tier.
    SharedHit {
        ttl: i64,
    },
    Stale {
        fwd_status: Option<u16>,
    },
    UriMiss {
        stored: bool,
    },
    VaryMiss {
        stored: bool,
    },
    Collapsed,
    /// Another request's origin call failed and this one gets its failure; `error`: the
    /// inner service returned an error, and this is the layer's `502`.
    FailureCollapsed {
        error: bool,
    },
    /// A failure of this key's origin call remembered for a moment.
    FailureHit {
        error: bool,
    },
    /// A stored response revalidated with the origin (304).
    Revalidated,
    /// Nothing stored could answer a request with `only-if-cached`: a 504, not forwarded.
    OnlyIfCached,
    Bypass,
    Method,
}

/// Smallest and largest `ttl` (seconds) and `Age` whose header values are rendered once and
/// reused: formatting them on every hit cost more than the rest of the hit path together
/// (callgrind: ~2,400 of ~8,500 instructions per hit).
const HIT_TTL_MIN: i64 = -256;
const HIT_TTL_MAX: i64 = 4095;
const AGE_MAX: u64 = 4095;

/// `Age` values `0..=AGE_MAX`, rendered on first use and shared by every layer.
fn age_value(secs: u64) -> HeaderValue {
    static AGES: OnceLock<Box<[OnceLock<HeaderValue>]>> = OnceLock::new();
    if secs > AGE_MAX {
        return HeaderValue::from(secs);
    }
    let ages = AGES.get_or_init(|| (0..=AGE_MAX).map(|_| OnceLock::new()).collect());
    ages[secs as usize]
        .get_or_init(|| leaked(secs.to_string()))
        .clone()
}

/// A header value whose clones and drops touch no reference count: hits on every core clone
/// these, and a shared count would be one more cache line they all write. Only for the
/// process-wide tables (at most `AGE_MAX + 1` ages, and the default name's hit values).
fn leaked(text: String) -> HeaderValue {
    HeaderValue::from_static(Box::leak(text.into_boxed_str()))
}

/// The `hit; ttl=N` values of the default cache name, shared by every layer in the process.
fn default_hits() -> Arc<[OnceLock<HeaderValue>]> {
    static HITS: OnceLock<Arc<[OnceLock<HeaderValue>]>> = OnceLock::new();
    Arc::clone(HITS.get_or_init(hit_table))
}

fn hit_table() -> Arc<[OnceLock<HeaderValue>]> {
    (HIT_TTL_MIN..=HIT_TTL_MAX)
        .map(|_| OnceLock::new())
        .collect()
}

#[derive(Debug, Clone)]
pub(crate) struct StatusHeaders {
    name: String,
    bypass: HeaderValue,
    method: HeaderValue,
    collapsed: HeaderValue,
    /// The members of misses, `[uri-miss, uri-miss; stored, vary-miss, vary-miss; stored]`,
    /// rendered once (formatting one costs a miss ~1,000 instructions).
    misses: [HeaderValue; 4],
    revalidated: HeaderValue,
    stale: HeaderValue,
    /// `{name}; hit; ttl=N` for `N` in `HIT_TTL_MIN..=HIT_TTL_MAX`, rendered on first use.
    hits: Arc<[OnceLock<HeaderValue>]>,
    pub(crate) x_cache: bool,
    pub(crate) x_cache_key: bool,
    /// Whether responses carry the [`CacheInfo`] extension.
    pub(crate) cache_info: bool,
}

impl StatusHeaders {
    pub(crate) fn new(name: &str, x_cache: bool, x_cache_key: bool, cache_info: bool) -> Self {
        let value = |rest: &str| {
            HeaderValue::from_str(&format!("{name}; {rest}")).expect("checked cache name")
        };
        Self {
            name: name.to_owned(),
            bypass: value("fwd=bypass"),
            method: value("fwd=method"),
            collapsed: value("fwd=uri-miss; collapsed"),
            misses: [
                value("fwd=uri-miss"),
                value("fwd=uri-miss; stored"),
                value("fwd=vary-miss"),
                value("fwd=vary-miss; stored"),
            ],
            revalidated: value("fwd=stale; fwd-status=304; stored"),
            stale: value("fwd=stale"),
            hits: if name == DEFAULT_NAME {
                default_hits()
            } else {
                hit_table()
            },
            x_cache,
            x_cache_key,
            cache_info,
        }
    }

    pub(crate) fn value(&self, member: Member) -> HeaderValue {
        let name = &self.name;
        let text = match member {
            Member::Bypass => return self.bypass.clone(),
            Member::Method => return self.method.clone(),
            Member::Collapsed => return self.collapsed.clone(),
            Member::Hit { ttl } if (HIT_TTL_MIN..=HIT_TTL_MAX).contains(&ttl) => {
                return self.hits[(ttl - HIT_TTL_MIN) as usize]
                    .get_or_init(|| {
                        let text = format!("{name}; hit; ttl={ttl}");
                        // Only the default name's table is process-wide (and bounded).
                        if *name == DEFAULT_NAME {
                            leaked(text)
                        } else {
                            HeaderValue::from_str(&text).expect("checked cache name")
                        }
                    })
                    .clone();
            }
            Member::Hit { ttl } => format!("{name}; hit; ttl={ttl}"),
            Member::SharedHit { ttl } => {
                // Without `fmt` (~700 instructions of an L2 hit): name, member, ttl, detail,
                // in a buffer of the exact length, which the value then owns without a copy.
                let digits = ttl.unsigned_abs().checked_ilog10().unwrap_or(0) as usize + 1;
                let len = name.len() + 11 + usize::from(ttl < 0) + digits + 15;
                let mut text = Vec::with_capacity(len);
                text.extend_from_slice(name.as_bytes());
                text.extend_from_slice(b"; hit; ttl=");
                if ttl < 0 {
                    text.push(b'-');
                }
                push_decimal(&mut text, ttl.unsigned_abs());
                text.extend_from_slice(b"; detail=shared");
                debug_assert_eq!((text.len(), text.capacity()), (len, len));
                return HeaderValue::try_from(text).expect("checked cache name");
            }
            Member::Stale {
                fwd_status: Some(status),
            } => format!("{name}; fwd=stale; fwd-status={status}"),
            Member::Stale { fwd_status: None } => return self.stale.clone(),
            Member::Revalidated => return self.revalidated.clone(),
            Member::UriMiss { stored } => return self.misses[usize::from(stored)].clone(),
            Member::VaryMiss { stored } => return self.misses[2 + usize::from(stored)].clone(),
            Member::FailureCollapsed { error: false } => format!("{name}; fwd=uri-miss; collapsed"),
            Member::FailureCollapsed { error: true } => {
                format!("{name}; fwd=uri-miss; collapsed; detail=origin-error")
            }
            Member::FailureHit { error: false } => format!("{name}; hit; detail=failure"),
            Member::FailureHit { error: true } => format!("{name}; hit; detail=origin-error"),
            Member::OnlyIfCached => format!("{name}; detail=only-if-cached"),
        };
        HeaderValue::from_str(&text).expect("checked cache name")
    }

    /// Appends our `Cache-Status` member after any upstream one, and `X-Cache` if enabled.
    pub(crate) fn write(
        &self,
        headers: &mut HeaderMap,
        member: Member,
        status: CacheStatus,
        age: Option<Duration>,
        key: Option<&dyn std::fmt::Display>,
    ) {
        if let Some(age) = age {
            headers.insert(AGE, age_value(age.as_secs()));
        }
        append_member(headers, self.value(member));
        self.write_extras(headers, status, key);
    }

    /// [`write`](Self::write) for a copy of headers that hold the slots of [`reserve_slots`]:
    /// the values go in place, found by position, with no hashing and no growth.
    pub(crate) fn fill(
        &self,
        headers: &mut HeaderMap,
        slots: Slots,
        member: Member,
        status: CacheStatus,
        age: Duration,
        key: &dyn std::fmt::Display,
    ) {
        // `Age` is the first value and the slot follows any upstream members: one step each.
        let mut values = headers.values_mut();
        let age_slot = values.nth(usize::from(slots.age));
        let age = age_value(age.as_secs());
        let age = match age_slot {
            Some(slot) => {
                *slot = age;
                None
            }
            None => Some(age),
        };
        let member = self.value(member);
        let member = match values.nth(usize::from(slots.status - slots.age - 1)) {
            Some(slot) => {
                *slot = member;
                None
            }
            None => Some(member),
        };
        // Both are placed unless the headers changed since reserve_slots.
        if let Some(age) = age {
            headers.insert(AGE, age);
        }
        if let Some(member) = member {
            append_member(headers, member);
        }
        if self.x_cache || self.x_cache_key {
            self.write_extras(headers, status, Some(key));
        }
    }

    /// Attaches `info` to a response, unless the layer turned the extension off.
    pub(crate) fn attach(
        &self,
        extensions: &mut http::Extensions,
        info: impl FnOnce() -> CacheInfo,
    ) {
        if self.cache_info {
            extensions.insert(info());
        }
    }

    fn write_extras(
        &self,
        headers: &mut HeaderMap,
        status: CacheStatus,
        key: Option<&dyn std::fmt::Display>,
    ) {
        if self.x_cache {
            headers.insert(X_CACHE.clone(), HeaderValue::from_static(status.x_cache()));
        }
        if self.x_cache_key {
            if let Some(value) = key.and_then(|k| HeaderValue::try_from(k.to_string()).ok()) {
                headers.insert(X_CACHE_KEY.clone(), value);
            }
        }
    }
}

/// Adds our `Cache-Status` member after any upstream one: into the slot reserved at store time
/// if there is one, else appended.
fn append_member(headers: &mut HeaderMap, value: HeaderValue) {
    match headers.entry(&CACHE_STATUS) {
        Entry::Occupied(mut members) => match members.iter_mut().last() {
            Some(last) if *last == SLOT => *last = value,
            _ => members.append(value),
        },
        Entry::Vacant(slot) => {
            slot.insert(value);
        }
    }
}

/// Marks the `Cache-Status` slot reserved in stored headers; always replaced before sending.
const SLOT: HeaderValue = HeaderValue::from_static("tower-swr-slot");

/// Reserves `Age` and `Cache-Status` in headers about to be stored, so that a hit, which clones
/// them, fills the slots in place instead of growing the copy (callgrind: ~870 instructions
/// per hit for the regrowth).
pub(crate) fn reserve_slots(headers: HeaderMap) -> (HeaderMap, Slots) {
    // The slots go first, so that a hit finds them at once when it walks the copy.
    let mut ordered = HeaderMap::with_capacity(headers.len() + 2);
    ordered.insert(AGE, age_value(0));
    let mut upstream = 0u16;
    for member in headers.get_all(&CACHE_STATUS) {
        ordered.append(CACHE_STATUS.clone(), member.clone());
        upstream = upstream.saturating_add(1);
    }
    ordered.append(CACHE_STATUS.clone(), SLOT);
    for (name, value) in &headers {
        if name != AGE && name != CACHE_STATUS {
            ordered.append(name.clone(), value.clone());
        }
    }
    let slots = Slots {
        age: 0,
        status: upstream.saturating_add(1),
    };
    (compact(ordered), slots)
}

/// [`reserve_slots`] for fields not yet in a map (a response decoded from the shared tier, in
/// `HeaderMap` order): the map is built once instead of twice (~2,000 instructions an L2 hit).
pub(crate) fn reserve_slots_in(fields: Vec<(HeaderName, HeaderValue)>) -> (HeaderMap, Slots) {
    let mut ordered = HeaderMap::with_capacity(fields.len() + 2);
    ordered.insert(AGE, age_value(0));
    let mut upstream = 0u16;
    for (_, member) in fields.iter().filter(|(name, _)| *name == CACHE_STATUS) {
        ordered.append(CACHE_STATUS.clone(), member.clone());
        upstream = upstream.saturating_add(1);
    }
    ordered.append(CACHE_STATUS.clone(), SLOT);
    for (name, value) in fields {
        if name != AGE && name != CACHE_STATUS {
            ordered.append(name, value);
        }
    }
    let slots = Slots {
        age: 0,
        status: upstream.saturating_add(1),
    };
    (compact(ordered), slots)
}

/// The same map without the spare buckets `HeaderMap::with_capacity` rounds up to: a clone
/// holds exactly its fields (a bucket is 104 bytes, and 5 fields get room for 6). What a hit
/// clones is the same either way: a clone of a map is always exact.
fn compact(headers: HeaderMap) -> HeaderMap {
    if headers.len() < headers.capacity() {
        headers.clone()
    } else {
        headers
    }
}

/// Where [`reserve_slots`] put `Age` and the `Cache-Status` slot, as positions in
/// `HeaderMap::iter` order (which a clone keeps); `age` comes before `status`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slots {
    age: u16,
    status: u16,
}

/// Removes the slots of [`reserve_slots`]: the stored headers as the origin sent them.
pub(crate) fn without_slots(mut headers: HeaderMap) -> HeaderMap {
    headers.remove(AGE);
    if let Entry::Occupied(members) = headers.entry(&CACHE_STATUS) {
        let kept: Vec<HeaderValue> = members.iter().filter(|v| **v != SLOT).cloned().collect();
        members.remove();
        for value in kept {
            headers.append(CACHE_STATUS.clone(), value);
        }
    }
    headers
}

/// Whether a stored header line is one of the slots of [`reserve_slots`].
pub(crate) fn is_slot(name: &HeaderName, value: &HeaderValue) -> bool {
    name == AGE || (name == CACHE_STATUS && *value == SLOT)
}

/// Whether `name` can be written as a bare RFC 8941 token (what `Cache-Status` needs).
pub(crate) fn is_token(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'*')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b))
}

/// `n` in decimal, without `fmt`.
pub(crate) fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::CONTENT_TYPE;

    fn values<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Vec<&'a str> {
        headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn a_shared_hit_member_reads_as_formatted() {
        let status = StatusHeaders::new("edge-1", false, false, true);
        for ttl in [0, 7, -3, 4096, -257, i64::MAX, i64::MIN] {
            assert_eq!(
                status.value(Member::SharedHit { ttl }).to_str().unwrap(),
                format!("edge-1; hit; ttl={ttl}; detail=shared")
            );
        }
    }

    #[test]
    fn a_hit_fills_the_reserved_slots_after_upstream_members() {
        let mut origin = HeaderMap::new();
        origin.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        origin.append(CACHE_STATUS.clone(), HeaderValue::from_static("edge; hit"));
        origin.insert(AGE, HeaderValue::from_static("7"));
        origin.append(
            CACHE_STATUS.clone(),
            HeaderValue::from_static("shield; fwd=miss"),
        );
        let (stored, slots) = reserve_slots(origin);
        let status = StatusHeaders::new("tower-swr", false, false, true);

        let mut answer = stored.clone();
        let age = Duration::from_secs(12);
        status.fill(
            &mut answer,
            slots,
            Member::Hit { ttl: 3 },
            CacheStatus::Fresh,
            age,
            &"k",
        );

        assert_eq!(values(&answer, &AGE), ["12"]);
        assert_eq!(
            values(&answer, &CACHE_STATUS),
            ["edge; hit", "shield; fwd=miss", "tower-swr; hit; ttl=3"]
        );
        assert_eq!(values(&answer, &CONTENT_TYPE), ["text/plain"]);
        assert_eq!(answer.len(), stored.len(), "filled in place, nothing added");
        assert_eq!(
            values(&without_slots(stored), &CACHE_STATUS),
            ["edge; hit", "shield; fwd=miss"]
        );
    }
}
