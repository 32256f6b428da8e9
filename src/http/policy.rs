//! `Cache-Control` parsing and the store/freshness decision (RFC 9111, RFC 5861).
//!
//! `headers::CacheControl` lacks `stale-while-revalidate` and `stale-if-error`
//! (hyperium/headers#77), so the raw header is parsed here.

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;

use super::key::Vary;
use crate::engine::Freshness;

/// RFC 9111 §1.2.2: a delta-seconds too large to represent is taken as 2^31.
const DELTA_SECONDS_MAX: u64 = 2_147_483_648;

/// A parsed delta-seconds argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seconds {
    Valid(u64),
    /// Present but not a delta-seconds (RFC 9111 §4.2.1: treat the response as stale).
    Invalid,
}

impl Seconds {
    fn parse(value: Option<&str>) -> Self {
        let Some(value) = value else {
            return Self::Invalid;
        };
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Self::Invalid;
        }
        // Only digits: a parse failure is an overflow.
        Self::Valid(
            value
                .parse::<u64>()
                .map_or(DELTA_SECONDS_MAX, |n| n.min(DELTA_SECONDS_MAX)),
        )
    }

    pub(crate) fn duration(self) -> Duration {
        match self {
            Self::Valid(secs) => Duration::from_secs(secs),
            Self::Invalid => Duration::ZERO,
        }
    }
}

/// The directives of a `Cache-Control` field (all its lines), first occurrence winning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CacheControl {
    pub(crate) no_store: bool,
    /// `no-cache` without field names.
    pub(crate) no_cache: bool,
    /// `no-cache="field, ..."`: reuse allowed without those fields.
    pub(crate) no_cache_fields: Vec<String>,
    /// `private` without field names.
    pub(crate) private: bool,
    /// `private="field, ..."`: sharing allowed without those fields.
    pub(crate) private_fields: Vec<String>,
    pub(crate) public: bool,
    pub(crate) must_revalidate: bool,
    pub(crate) proxy_revalidate: bool,
    pub(crate) must_understand: bool,
    pub(crate) immutable: bool,
    pub(crate) max_age: Option<Seconds>,
    pub(crate) s_maxage: Option<Seconds>,
    pub(crate) stale_while_revalidate: Option<Seconds>,
    pub(crate) stale_if_error: Option<Seconds>,
    /// Request only: `only-if-cached`.
    pub(crate) only_if_cached: bool,
    /// Request only: `max-stale[=n]` (`Some(None)`: any staleness).
    pub(crate) max_stale: Option<Option<Seconds>>,
    /// Request only: `min-fresh=n`.
    pub(crate) min_fresh: Option<Seconds>,
}

impl CacheControl {
    /// Parses every `Cache-Control` line of `headers`.
    pub(crate) fn from_headers(headers: &HeaderMap) -> Self {
        let mut cc = Self::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            cc.add_line(value);
        }
        cc
    }

    /// Whether any `Cache-Control` is present at all (cheap check before parsing).
    fn add_line(&mut self, value: &HeaderValue) {
        // Non-UTF-8 bytes can only appear inside a quoted argument; keep what is readable.
        let text = String::from_utf8_lossy(value.as_bytes());
        for (name, argument) in directives(&text) {
            self.add(&name, argument.as_deref());
        }
    }

    fn add(&mut self, name: &str, argument: Option<&str>) {
        fn first(slot: &mut Option<Seconds>, argument: Option<&str>) {
            if slot.is_none() {
                *slot = Some(Seconds::parse(argument));
            }
        }
        fn fields(argument: Option<&str>) -> Vec<String> {
            argument
                .map(|list| {
                    list.split(',')
                        .map(|f| f.trim().to_ascii_lowercase())
                        .filter(|f| !f.is_empty())
                        .collect()
                })
                .unwrap_or_default()
        }
        match name {
            "no-store" => self.no_store = true,
            "no-cache" => match argument {
                Some(_) if !fields(argument).is_empty() => {
                    self.no_cache_fields.extend(fields(argument));
                }
                _ => self.no_cache = true,
            },
            "private" => match argument {
                Some(_) if !fields(argument).is_empty() => {
                    self.private_fields.extend(fields(argument));
                }
                _ => self.private = true,
            },
            "public" => self.public = true,
            "must-revalidate" => self.must_revalidate = true,
            "proxy-revalidate" => self.proxy_revalidate = true,
            "must-understand" => self.must_understand = true,
            "immutable" => self.immutable = true,
            "only-if-cached" => self.only_if_cached = true,
            "max-age" => first(&mut self.max_age, argument),
            "s-maxage" => first(&mut self.s_maxage, argument),
            "stale-while-revalidate" => first(&mut self.stale_while_revalidate, argument),
            "stale-if-error" => first(&mut self.stale_if_error, argument),
            "min-fresh" => first(&mut self.min_fresh, argument),
            "max-stale" if self.max_stale.is_none() => {
                self.max_stale = Some(argument.map(|a| Seconds::parse(Some(a))));
            }
            _ => {}
        }
    }
}

impl CacheControl {
    /// The directives of the first field of `targets` (a target list, most applicable first)
    /// that is present, non-empty and a valid Structured Fields dictionary (RFC 9213 §2.2);
    /// `None` when there is none, and `Cache-Control` applies.
    pub(crate) fn targeted(headers: &HeaderMap, targets: &[http::HeaderName]) -> Option<Self> {
        targets.iter().find_map(|name| {
            let mut lines = headers.get_all(name).iter().peekable();
            lines.peek()?;
            // Several lines are one field, joined with commas (RFC 8941 §4.2).
            let mut value = Vec::new();
            for (i, line) in lines.enumerate() {
                if i > 0 {
                    value.push(b',');
                }
                value.extend_from_slice(line.as_bytes());
            }
            sf_dictionary(&value).map(Self::from_dictionary)
        })
    }

    /// The cache directives of a targeted field (RFC 9213 §2.1): values of the type a directive
    /// takes are consumed, any other value leaves the directive out; parameters are ignored.
    fn from_dictionary(members: Vec<(String, SfItem)>) -> Self {
        let mut cc = Self::default();
        for (key, item) in members {
            let seconds = match item {
                SfItem::Integer(n) if n >= 0 => {
                    Some(Seconds::Valid(n.unsigned_abs().min(DELTA_SECONDS_MAX)))
                }
                _ => None,
            };
            let fields = |list: &str| -> Vec<String> {
                list.split(',')
                    .map(|f| f.trim().to_ascii_lowercase())
                    .filter(|f| !f.is_empty())
                    .collect()
            };
            let set = item == SfItem::Boolean(true);
            match key.as_str() {
                "max-age" => cc.max_age = seconds,
                "s-maxage" => cc.s_maxage = seconds,
                "stale-while-revalidate" => cc.stale_while_revalidate = seconds,
                "stale-if-error" => cc.stale_if_error = seconds,
                "no-store" => cc.no_store = set,
                "must-revalidate" => cc.must_revalidate = set,
                "proxy-revalidate" => cc.proxy_revalidate = set,
                "public" => cc.public = set,
                "immutable" => cc.immutable = set,
                "must-understand" => cc.must_understand = set,
                "no-cache" => match &item {
                    SfItem::String(list) | SfItem::Token(list) if !fields(list).is_empty() => {
                        cc.no_cache_fields = fields(list);
                    }
                    _ => cc.no_cache = set,
                },
                "private" => match &item {
                    SfItem::String(list) | SfItem::Token(list) if !fields(list).is_empty() => {
                        cc.private_fields = fields(list);
                    }
                    _ => cc.private = set,
                },
                _ => {}
            }
        }
        cc
    }
}

/// A Structured Fields bare item (RFC 8941 §3.3), as far as cache directives need to tell them
/// apart: the others are parsed, checked and kept as `Other`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SfItem {
    Integer(i64),
    Boolean(bool),
    String(String),
    /// A token: `private=x-user` names one field as `private="x-user"` does (RFC 9213 §2.1:
    /// a token value maps to a Token; RFC 9111 §5.2: accept both forms).
    Token(String),
    /// A decimal, byte sequence or inner list.
    Other,
}

/// Parses a Structured Fields dictionary (RFC 8941 §4.2.2), members in order with a repeated
/// key keeping its last value; `None` on any parsing error, or when it is empty.
pub(crate) fn sf_dictionary(input: &[u8]) -> Option<Vec<(String, SfItem)>> {
    let mut parser = SfParser { input, at: 0 };
    parser.skip(|b| b == b' ');
    let mut members: Vec<(String, SfItem)> = Vec::new();
    while !parser.done() {
        let key = parser.key()?;
        let item = if parser.eat(b'=') {
            if parser.peek() == Some(b'(') {
                parser.inner_list()?;
                SfItem::Other
            } else {
                let item = parser.bare_item()?;
                parser.parameters()?;
                item
            }
        } else {
            parser.parameters()?;
            SfItem::Boolean(true)
        };
        members.retain(|(k, _)| *k != key);
        members.push((key, item));
        parser.skip(|b| b == b' ' || b == b'\t');
        if parser.done() {
            break;
        }
        if !parser.eat(b',') {
            return None;
        }
        parser.skip(|b| b == b' ' || b == b'\t');
        if parser.done() {
            // A trailing comma.
            return None;
        }
    }
    (!members.is_empty()).then_some(members)
}

struct SfParser<'a> {
    input: &'a [u8],
    at: usize,
}

impl SfParser<'_> {
    fn done(&self) -> bool {
        self.at >= self.input.len()
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let matched = self.peek() == Some(byte);
        self.at += usize::from(matched);
        matched
    }

    fn skip(&mut self, what: impl Fn(u8) -> bool) {
        while self.peek().is_some_and(&what) {
            self.at += 1;
        }
    }

    fn take_while(&mut self, what: impl Fn(u8) -> bool) -> &[u8] {
        let start = self.at;
        self.skip(what);
        &self.input[start..self.at]
    }

    fn key(&mut self) -> Option<String> {
        let first = self.peek()?;
        if !(first.is_ascii_lowercase() || first == b'*') {
            return None;
        }
        let key = self.take_while(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.' | b'*')
        });
        Some(String::from_utf8_lossy(key).into_owned())
    }

    fn parameters(&mut self) -> Option<()> {
        while self.eat(b';') {
            self.skip(|b| b == b' ');
            self.key()?;
            if self.eat(b'=') {
                self.bare_item()?;
            }
        }
        Some(())
    }

    fn inner_list(&mut self) -> Option<()> {
        if !self.eat(b'(') {
            return None;
        }
        loop {
            self.skip(|b| b == b' ');
            if self.eat(b')') {
                return self.parameters();
            }
            self.bare_item()?;
            self.parameters()?;
            if !matches!(self.peek(), Some(b' ' | b')')) {
                return None;
            }
        }
    }

    fn bare_item(&mut self) -> Option<SfItem> {
        match self.peek()? {
            b'-' | b'0'..=b'9' => self.number(),
            b'"' => self.string(),
            b'?' => {
                self.at += 1;
                let value = match self.peek()? {
                    b'0' => false,
                    b'1' => true,
                    _ => return None,
                };
                self.at += 1;
                Some(SfItem::Boolean(value))
            }
            b':' => {
                self.at += 1;
                self.skip(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
                self.eat(b':').then_some(SfItem::Other)
            }
            b if b.is_ascii_alphabetic() || b == b'*' => {
                let start = self.at;
                self.skip(|b| {
                    b.is_ascii_alphanumeric()
                        || matches!(
                            b,
                            b'!' | b'#'
                                | b'$'
                                | b'%'
                                | b'&'
                                | b'\''
                                | b'*'
                                | b'+'
                                | b'-'
                                | b'.'
                                | b'^'
                                | b'_'
                                | b'`'
                                | b'|'
                                | b'~'
                                | b':'
                                | b'/'
                        )
                });
                let token = String::from_utf8_lossy(&self.input[start..self.at]).into_owned();
                Some(SfItem::Token(token))
            }
            _ => None,
        }
    }

    fn number(&mut self) -> Option<SfItem> {
        let negative = self.eat(b'-');
        let integer = self.take_while(|b| b.is_ascii_digit()).to_vec();
        if integer.is_empty() {
            return None;
        }
        if self.eat(b'.') {
            let fraction = self.take_while(|b| b.is_ascii_digit());
            return (integer.len() <= 12 && (1..=3).contains(&fraction.len()))
                .then_some(SfItem::Other);
        }
        if integer.len() > 15 {
            return None;
        }
        // At most 15 digits: it fits.
        let magnitude: i64 = std::str::from_utf8(&integer).ok()?.parse().ok()?;
        Some(SfItem::Integer(if negative {
            -magnitude
        } else {
            magnitude
        }))
    }

    fn string(&mut self) -> Option<SfItem> {
        if !self.eat(b'"') {
            return None;
        }
        let mut out = String::new();
        loop {
            match self.peek()? {
                b'\\' => {
                    self.at += 1;
                    let escaped = self.peek()?;
                    if !matches!(escaped, b'"' | b'\\') {
                        return None;
                    }
                    out.push(char::from(escaped));
                }
                b'"' => {
                    self.at += 1;
                    return Some(SfItem::String(out));
                }
                b @ 0x20..=0x7e => out.push(char::from(b)),
                _ => return None,
            }
            self.at += 1;
        }
    }
}

/// The `Surrogate-Control` directives aimed at this cache (W3C Edge Architecture): those
/// targeted at our token if any, else the untargeted ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SurrogateControl {
    pub(crate) max_age: Option<Seconds>,
    /// Fastly's and Akamai's stale windows, read as `Cache-Control`'s (RFC 5861).
    pub(crate) stale_while_revalidate: Option<Seconds>,
    pub(crate) stale_if_error: Option<Seconds>,
    pub(crate) no_store: bool,
}

impl SurrogateControl {
    pub(crate) fn from_headers(headers: &HeaderMap, token: &str) -> Option<Self> {
        let mut ours = Self::default();
        let mut untargeted = Self::default();
        let (mut any_ours, mut any_untargeted) = (false, false);
        for line in headers.get_all(&SURROGATE_CONTROL) {
            let Ok(line) = line.to_str() else { continue };
            for item in line.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                let (directive, target) = match item.split_once(';') {
                    Some((directive, target)) => (directive, Some(target.trim())),
                    None => (item, None),
                };
                let slot = match target {
                    None => {
                        any_untargeted = true;
                        &mut untargeted
                    }
                    Some(t) if t.eq_ignore_ascii_case(token) => {
                        any_ours = true;
                        &mut ours
                    }
                    Some(_) => continue,
                };
                // Strict: `max-age =1` or `max-age= 1` is not a directive we know.
                let (name, value) = match directive.split_once('=') {
                    Some((name, value)) => (name, Some(value)),
                    None => (directive, None),
                };
                if name.eq_ignore_ascii_case("no-store") && value.is_none() {
                    slot.no_store = true;
                } else {
                    let field = if name.eq_ignore_ascii_case("max-age") {
                        &mut slot.max_age
                    } else if name.eq_ignore_ascii_case("stale-while-revalidate") {
                        &mut slot.stale_while_revalidate
                    } else if name.eq_ignore_ascii_case("stale-if-error") {
                        &mut slot.stale_if_error
                    } else {
                        continue;
                    };
                    if field.is_none() {
                        if let Seconds::Valid(secs) = Seconds::parse(value) {
                            *field = Some(Seconds::Valid(secs));
                        }
                    }
                }
            }
        }
        match (any_ours, any_untargeted) {
            (true, _) => Some(ours),
            (false, true) => Some(untargeted),
            (false, false) => None,
        }
    }
}

/// The `Surrogate-Control` response header (W3C Edge Architecture).
pub(crate) static SURROGATE_CONTROL: http::HeaderName =
    http::HeaderName::from_static("surrogate-control");

/// Splits a `Cache-Control` line into `(lower-case name, unquoted argument)` pairs, honouring
/// quoted strings (commas inside quotes do not split).
pub(crate) fn directives(line: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        // Name.
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == ',' || c == '=' {
                break;
            }
            name.push(c);
            chars.next();
        }
        let name = name.trim().to_ascii_lowercase();
        let mut argument = None;
        if chars.peek() == Some(&'=') {
            chars.next();
            while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
                chars.next();
            }
            let mut value = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(escaped) = chars.next() {
                                value.push(escaped);
                            }
                        }
                        '"' => break,
                        c => value.push(c),
                    }
                }
                // Skip anything up to the next comma.
                while chars.peek().is_some_and(|c| *c != ',') {
                    chars.next();
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
                value = value.trim().to_string();
            }
            argument = Some(value);
        }
        if !name.is_empty() {
            out.push((name, argument));
        }
        match chars.next() {
            Some(',') => continue,
            Some(_) => continue,
            None => break,
        }
    }
    out
}

/// Why a response is not stored.
///
/// Its `Display` text is what logs and refresh errors show; the texts are stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Reason {
    /// 1xx, `206 Partial Content` or `304 Not Modified`: not a whole response to reuse.
    Status,
    /// `text/event-stream`: it never ends, so buffering it would hold every event back.
    EventStream,
    /// `Surrogate-Control: no-store` aimed at this cache.
    SurrogateNoStore,
    /// `must-understand` on a status whose caching rules we do not know (RFC 9111 §5.2.2.3).
    MustUnderstand,
    /// `Cache-Control: no-store`.
    NoStore,
    /// `Cache-Control: private`, in a shared cache.
    Private,
    /// The response sets a cookie.
    SetCookie,
    /// `Vary: *`.
    VaryStar,
    /// A `Vary` we cannot key on: unreadable, a malformed name, or too many names.
    VaryUnusable,
    /// An answer to a request with credentials, not explicitly shareable (RFC 9111 §3.5).
    Authorization,
    /// An answer to a request with `Cookie`, neither `public` nor `s-maxage`.
    Cookie,
    /// `no-cache` without `ETag` or `Last-Modified`: it could never be revalidated.
    NoCacheWithoutValidators,
    /// A 5xx without explicit freshness, where the origin's headers are not read.
    ServerError,
    /// Neither explicit nor heuristic freshness.
    NoFreshness,
    /// Already past every window (and the revalidation retention) when it arrives.
    NeverUsable,
    /// `Content-Length` over `max_body_bytes`.
    BodyTooLarge,
    /// The body grew past `max_body_bytes` while buffered.
    BodyIncomplete,
    /// The body failed while buffered (the origin's connection broke, its body errored).
    BodyFailed,
    /// The body's length is not its `Content-Length` (incomplete or framed wrong, RFC 9111
    /// §3.3).
    LengthMismatch,
}

impl Reason {
    /// The reason's text, as logged.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::EventStream => "event stream",
            Self::SurrogateNoStore => "surrogate-control: no-store",
            Self::MustUnderstand => "must-understand",
            Self::NoStore => "no-store",
            Self::Private => "private",
            Self::SetCookie => "set-cookie",
            Self::VaryStar => "vary: *",
            Self::VaryUnusable => "vary",
            Self::Authorization => "authorization",
            Self::Cookie => "cookie",
            Self::NoCacheWithoutValidators => "no-cache without validators",
            Self::ServerError => "server error",
            Self::NoFreshness => "no freshness",
            Self::NeverUsable => "already past every window",
            Self::BodyTooLarge => "body over max_body_bytes",
            Self::BodyIncomplete => "body over max_body_bytes, or it failed",
            Self::BodyFailed => "the body failed",
            Self::LengthMismatch => "body length differs from content-length",
        }
    }

    /// Whether a route's own lifetime (`SwrLayer::policy_fn`) may still store the response:
    /// it lacked only a lifetime the route supplies, not permission to be stored.
    pub(crate) const fn route_lifetime_overrides(self) -> bool {
        matches!(self, Self::NoFreshness | Self::NeverUsable)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a response is a `text/event-stream` (server-sent events).
fn is_event_stream(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|value| {
        let essence = value
            .as_bytes()
            .split(|b| *b == b';')
            .next()
            .unwrap_or_default();
        essence
            .trim_ascii()
            .eq_ignore_ascii_case(b"text/event-stream")
    })
}

/// Whether an origin's failure answer (one that is not stored) may also answer the requests
/// that waited for its origin call, and for a moment later ones (`remember_failures`).
///
/// Only between requests without credentials, and only a final answer that is the same for
/// everyone: not a 1xx (interim, RFC 9110 §15.2: never anyone's final response), not a 408 or
/// 429 (about the client that sent the request: its timeout, its rate limit, RFC 9110 §15.5.9,
/// RFC 6585 §4), not `private`, not `no-store` (it must not be reused at all), no
/// `Set-Cookie`, no `Vary` (it might not be the waiter's variant).
pub(crate) fn failure_is_shareable(
    request_has_credentials: bool,
    status: StatusCode,
    response: &HeaderMap,
    targets: &[http::HeaderName],
) -> bool {
    if request_has_credentials
        || status.is_informational()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || response.contains_key(header::SET_COOKIE)
        || response.contains_key(header::VARY)
    {
        return false;
    }
    // A targeted field (RFC 9213) speaks for this cache instead of `Cache-Control`.
    let cc = CacheControl::targeted(response, targets)
        .unwrap_or_else(|| CacheControl::from_headers(response));
    !(cc.private || !cc.private_fields.is_empty() || cc.no_store)
}

/// Statuses a cache may store with heuristic freshness (RFC 9110 §15.1).
pub(crate) fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// The freshness rules of a layer (its preset plus the builder's settings).
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    /// Fresh lifetime when the origin gives none (`None`: RFC heuristics only, shared preset).
    pub(crate) default_ttl: Option<Duration>,
    pub(crate) default_stale_while_revalidate: Duration,
    pub(crate) default_stale_if_error: Duration,
    /// Read freshness from the origin's headers (otherwise the defaults always apply).
    pub(crate) respect_origin: bool,
    /// Store `private` responses and answers to `Authorization`/`Cookie` requests (per-user
    /// keys only).
    pub(crate) store_private: bool,
    /// Answer and store requests carrying `Cookie` only with explicitly shareable responses.
    pub(crate) cookies_need_public: bool,
    /// How long an expired response with validators is kept to be revalidated.
    pub(crate) revalidation_retention: Duration,
    /// Our `Surrogate-Control` target token; `None` ignores the header.
    pub(crate) surrogate_token: Option<std::sync::Arc<str>>,
    /// RFC 9213 target list, most applicable first (`CDN-Cache-Control`, a field of the cache's
    /// name): the first valid one present replaces `Cache-Control` and `Expires`. Empty: off.
    pub(crate) targeted: std::sync::Arc<[http::HeaderName]>,
    /// Request headers treated like `Authorization` (`X-Api-Key`, ...): answers to requests
    /// carrying one are stored and shared only when explicitly shareable.
    pub(crate) credential_headers: std::sync::Arc<[http::HeaderName]>,
    /// RFC 9111 §4.2.4: how stale a stored response may be to stand in when the origin cannot
    /// be reached at all, where its directives allow serving stale (`None`: not at all).
    pub(crate) stale_if_unreachable: Option<Duration>,
}

/// What the policy needs to know of the request.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RequestFacts {
    pub(crate) has_auth: bool,
    pub(crate) has_cookie: bool,
}

/// What to do with a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    Store {
        freshness: Freshness,
        /// How old the response already is (RFC 9111 §4.2.3 corrected initial age).
        initial_age: Duration,
        /// May answer later requests that carry `Authorization` (RFC 9111 §3.5).
        shared_with_auth: bool,
        /// May answer later requests that carry `Cookie` (explicitly `public` or `s-maxage`).
        shared_with_cookie: bool,
        /// How long to keep it past its windows, for revalidation.
        retain: Duration,
        /// Fields named by `private=` / `no-cache=`: stored without them.
        strip: Vec<String>,
        /// No `must-revalidate`, `proxy-revalidate`, `no-cache` or `s-maxage` forbids serving
        /// it stale when the origin cannot be reached (RFC 9111 §4.2.4).
        stale_when_unreachable: bool,
    },
    /// Not stored, for this reason.
    Pass(Reason),
}

/// Statuses whose caching rules this cache knows (for `must-understand`, RFC 9111 §5.2.2.3).
fn understood(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 302 | 303 | 307 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

impl Policy {
    /// Decides whether a response to a `GET` may be stored and for how long.
    pub(crate) fn decide(
        &self,
        request: RequestFacts,
        status: StatusCode,
        headers: &HeaderMap,
        now: SystemTime,
        response_delay: Duration,
    ) -> Decision {
        if status.is_informational()
            || status == StatusCode::PARTIAL_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Decision::Pass(Reason::Status);
        }
        if is_event_stream(headers) {
            // Server-sent events never end: buffering them would hold every event back.
            return Decision::Pass(Reason::EventStream);
        }
        // RFC 9213 §2.2: a targeted field on our list, valid and non-empty, is this cache's
        // `Cache-Control`, and `Cache-Control` and `Expires` are ignored.
        let targeted = CacheControl::targeted(headers, &self.targeted);
        let read_expires = targeted.is_none();
        let mut cc = targeted.unwrap_or_else(|| CacheControl::from_headers(headers));
        let surrogate = self
            .surrogate_token
            .as_deref()
            .and_then(|token| SurrogateControl::from_headers(headers, token));
        if let Some(surrogate) = surrogate {
            // Surrogate-Control speaks to this cache and overrides Cache-Control's freshness
            // and storability (RFC 9111 leaves the header to the Edge Architecture note).
            if surrogate.no_store {
                return Decision::Pass(Reason::SurrogateNoStore);
            }
            if let Some(max_age) = surrogate.max_age {
                cc.no_store = false;
                cc.no_cache = false;
                // The lifetime is Surrogate-Control's; who may be answered is still
                // Cache-Control's (an `s-maxage` there keeps its meaning, RFC 9111 §3.5, and
                // its ban on serving stale), never made looser by it.
                cc.max_age = Some(max_age);
                cc.s_maxage = cc.s_maxage.map(|_| max_age);
                cc.must_understand = false;
            }
        }
        if cc.must_understand {
            // §5.2.2.3: store only statuses we understand, and then ignore `no-store`.
            if !understood(status) {
                return Decision::Pass(Reason::MustUnderstand);
            }
        } else if cc.no_store {
            return Decision::Pass(Reason::NoStore);
        }
        if cc.private && !self.store_private {
            return Decision::Pass(Reason::Private);
        }
        if headers.contains_key(header::SET_COOKIE) {
            return Decision::Pass(Reason::SetCookie);
        }
        if headers.get_all(header::VARY).iter().any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|f| f.trim_ascii() == b"*")
        }) {
            return Decision::Pass(Reason::VaryStar);
        }
        let explicitly_shareable = cc.public || cc.s_maxage.is_some() || cc.must_revalidate;
        if !self.store_private {
            if request.has_auth && !explicitly_shareable {
                return Decision::Pass(Reason::Authorization);
            }
            if request.has_cookie
                && self.cookies_need_public
                && !(cc.public || cc.s_maxage.is_some())
            {
                return Decision::Pass(Reason::Cookie);
            }
        }

        let date = headers
            .get(header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok());
        let has_validators =
            headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED);
        let retain = if has_validators {
            self.revalidation_retention
        } else {
            Duration::ZERO
        };
        let mut strip = cc.private_fields.clone();
        if !self.store_private {
            strip.extend(cc.no_cache_fields.iter().cloned());
        } else {
            strip = cc.no_cache_fields.clone();
        }
        // `arrives_stale`: the origin itself says the response is stale now (`max-age=0`, an
        // invalid lifetime, `Expires` not after `Date`, an `Age` past its lifetime). Only the
        // response's own stale directives then apply, never the layer's default windows
        // (RFC 9111 §4.2.1: an invalid lifetime means stale).
        let decision = |ttl: Duration, initial_age: Duration, arrives_stale: bool| {
            let stale_forbidden =
                cc.must_revalidate || cc.proxy_revalidate || cc.s_maxage.is_some() || cc.no_cache;
            // RFC 9111 §4.2.4: must-revalidate, proxy-revalidate, s-maxage and no-cache forbid
            // serving stale, even where the response also names a stale window.
            // A window Surrogate-Control gives this cache is its own instruction: it holds
            // beside a `Cache-Control` ban meant for every shared cache (`s-maxage`, ...).
            let window = |directive: Option<Seconds>, ours: Option<Seconds>, default: Duration| {
                match directive {
                    _ if ours.is_some() && self.respect_origin => {
                        ours.map_or(default, Seconds::duration)
                    }
                    _ if stale_forbidden && self.respect_origin => Duration::ZERO,
                    Some(seconds) if self.respect_origin => seconds.duration(),
                    _ if arrives_stale && self.respect_origin => Duration::ZERO,
                    _ => default,
                }
            };
            let freshness = Freshness::new(ttl)
                .with_stale_while_revalidate(window(
                    cc.stale_while_revalidate,
                    surrogate.and_then(|s| s.stale_while_revalidate),
                    self.default_stale_while_revalidate,
                ))
                .with_stale_if_error(window(
                    cc.stale_if_error,
                    surrogate.and_then(|s| s.stale_if_error),
                    self.default_stale_if_error,
                ));
            // Already past every window (and past the time kept to revalidate it): it could
            // never answer a request, so storing it would only report `stored` falsely.
            let last_use = freshness.ttl.saturating_add(
                (freshness.stale_while_revalidate)
                    .max(freshness.stale_if_error)
                    .max(retain),
            );
            if initial_age >= last_use {
                return Decision::Pass(Reason::NeverUsable);
            }
            // Kept (not served) past its windows for as long as it may stand in for an
            // unreachable origin; that alone is no reason to store a response.
            let stale_when_unreachable = !stale_forbidden || !self.respect_origin;
            let retain = match self.stale_if_unreachable {
                Some(most) if stale_when_unreachable => retain.max(most),
                _ => retain,
            };
            Decision::Store {
                freshness,
                initial_age,
                shared_with_auth: explicitly_shareable || self.store_private,
                shared_with_cookie: cc.public
                    || cc.s_maxage.is_some()
                    || self.store_private
                    || !self.cookies_need_public,
                retain,
                strip: strip.clone(),
                stale_when_unreachable,
            }
        };

        if cc.no_cache {
            // Reusable only after revalidation: stored stale, kept only if it can be validated.
            if !has_validators {
                return Decision::Pass(Reason::NoCacheWithoutValidators);
            }
            return decision(Duration::ZERO, Duration::ZERO, true);
        }
        // An `Age` that is not a delta-seconds is ignored (RFC 9111 §5.1), not a reason to
        // refuse the response or to take it as stale.
        let initial_age = initial_age(headers, date, now, response_delay);
        // The layer's own lifetimes count from when we got the response, but the response
        // keeps its age (the `Age` sent on is never younger than the upstream's).
        let from_receipt =
            |ttl: Duration| decision(ttl.saturating_add(initial_age), initial_age, false);
        if !self.respect_origin {
            let ttl = self.default_ttl.unwrap_or(super::config::DEFAULT_TTL);
            return if status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED {
                Decision::Pass(Reason::ServerError)
            } else {
                from_receipt(ttl)
            };
        }
        if let Some(ttl) = explicit_lifetime(&cc, read_expires.then_some(headers), date, now) {
            return decision(ttl, initial_age, ttl <= initial_age);
        }
        if !heuristically_cacheable(status) {
            return Decision::Pass(Reason::NoFreshness);
        }
        if let Some(default) = self.default_ttl {
            // A default lifetime is counted from when we got the response.
            return from_receipt(default);
        }
        match heuristic_lifetime(headers, date, now) {
            Some(ttl) => decision(ttl, initial_age, false),
            None if has_validators => decision(Duration::ZERO, initial_age, false),
            None => Decision::Pass(Reason::NoFreshness),
        }
    }
}

impl Decision {
    /// The decision once a route's own lifetime (`SwrLayer::policy_fn`) applies: a storable
    /// response takes it (counted from now, the response keeping its age), and so does one that
    /// lacked only a lifetime;
    /// every other reason not to store still stands, and so do the never-shared rules.
    pub(crate) fn with_route_freshness(self, freshness: Freshness) -> Self {
        match self {
            Self::Store {
                shared_with_auth,
                shared_with_cookie,
                retain,
                strip,
                initial_age,
                stale_when_unreachable,
                ..
            } => Self::Store {
                freshness: Freshness {
                    ttl: freshness.ttl.saturating_add(initial_age),
                    ..freshness
                },
                initial_age,
                shared_with_auth,
                shared_with_cookie,
                retain,
                strip,
                stale_when_unreachable,
            },
            // The origin gave no lifetime, nor leave to serve it stale when unreachable.
            Self::Pass(reason) if reason.route_lifetime_overrides() => Self::Store {
                freshness,
                initial_age: Duration::ZERO,
                shared_with_auth: false,
                shared_with_cookie: false,
                retain: Duration::ZERO,
                strip: Vec::new(),
                stale_when_unreachable: false,
            },
            pass @ Self::Pass(_) => pass,
        }
    }

    /// The decision given what the response's `Vary` turned out to be: one we cannot key on
    /// (`Vary: *`, unreadable or too many names) is never stored, whatever else it says.
    pub(crate) fn with_vary(self, vary: &Vary) -> Self {
        match (self, vary) {
            (Self::Store { .. }, Vary::Never) => Self::Pass(Reason::VaryUnusable),
            (decision, _) => decision,
        }
    }

    /// The reason not to store, if the decision is not to.
    pub(crate) fn reason(&self) -> Option<Reason> {
        match self {
            Self::Store { .. } => None,
            Self::Pass(reason) => Some(*reason),
        }
    }
}

/// Why a body of the declared `Content-Length` cannot be stored under `max_body_bytes`, if it
/// cannot (decided before buffering, so such a body streams straight through).
pub(crate) fn declared_body_refusal(
    declared: Option<u64>,
    max_body_bytes: usize,
) -> Option<Reason> {
    declared
        .is_some_and(|len| len > max_body_bytes as u64)
        .then_some(Reason::BodyTooLarge)
}

/// Whether an origin status is a failure (5xx, or one of the layer's `failure_statuses`): not
/// an answer to store or to drop the stored entry for.
///
/// A 1xx is one too: a `Service` answers once, so an interim status (100 Continue, 103 Early
/// Hints) as its answer means the origin gave no final response (RFC 9110 §15.2). It is passed
/// to its own request when nothing stale may stand in, but it never replaces or drops a stored
/// response, and [`failure_is_shareable`] never gives it to another request.
pub(crate) fn is_failure(status: StatusCode, failure_statuses: &[StatusCode]) -> bool {
    status.is_server_error() || status.is_informational() || failure_statuses.contains(&status)
}

/// `s-maxage`, then `max-age`, then `Expires − Date` (RFC 9111 §4.2.1); `Expires` only when
/// `headers` are given (not under a targeted field, RFC 9213 §2.2).
fn explicit_lifetime(
    cc: &CacheControl,
    headers: Option<&HeaderMap>,
    date: Option<SystemTime>,
    now: SystemTime,
) -> Option<Duration> {
    if let Some(s_maxage) = cc.s_maxage {
        return Some(s_maxage.duration());
    }
    if let Some(max_age) = cc.max_age {
        return Some(max_age.duration());
    }
    let mut expires = headers?.get_all(header::EXPIRES).iter();
    let first = expires.next()?;
    if expires.next().is_some() {
        // Conflicting Expires lines: treat as stale (§4.2.1).
        return Some(Duration::ZERO);
    }
    // An invalid date (e.g. "0") means "already expired" (§5.3).
    let Some(expires) = first
        .to_str()
        .ok()
        .and_then(|v| httpdate::parse_http_date(v.trim()).ok())
    else {
        return Some(Duration::ZERO);
    };
    let date = date.unwrap_or(now);
    Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
}

/// RFC 9111 §4.2.2: 10% of the time since `Last-Modified`, for heuristically cacheable statuses.
fn heuristic_lifetime(
    headers: &HeaderMap,
    date: Option<SystemTime>,
    now: SystemTime,
) -> Option<Duration> {
    let last_modified = headers
        .get(header::LAST_MODIFIED)?
        .to_str()
        .ok()
        .and_then(|v| httpdate::parse_http_date(v).ok())?;
    let since = date.unwrap_or(now).duration_since(last_modified).ok()?;
    Some((since / 10).min(Duration::from_secs(24 * 60 * 60)))
}

/// RFC 9111 §5.1: the `Age` of a response, in seconds, or `None` to ignore the field.
///
/// All its lines are one list (RFC 9110 §5.3), read by its first member: the rest is discarded,
/// so `Age: 0, 7200` and the two lines `Age: 0` / `Age: 7200` are both 0. Empty members are
/// skipped (RFC 9110 §5.6.1). A first member that is not a non-negative integer — signs,
/// fractions, parameters, a digit prefix like `1a`, non-ASCII bytes — makes the whole field
/// ignored, as if absent. An integer too large to represent is 2^31 (§1.2.2).
pub(crate) fn age(headers: &HeaderMap) -> Option<u64> {
    let first = headers
        .get_all(header::AGE)
        .iter()
        .flat_map(|line| line.as_bytes().split(|b| *b == b','))
        .map(|member| member.trim_ascii())
        .find(|member| !member.is_empty())?;
    // `Seconds::parse` wants text; a member of anything but digits is invalid either way.
    let text = std::str::from_utf8(first).ok()?;
    match Seconds::parse(Some(text)) {
        Seconds::Valid(secs) => Some(secs),
        Seconds::Invalid => None,
    }
}

/// RFC 9111 §4.2.3 corrected initial age: the larger of the origin's `Age` and `now − Date`.
/// An `Age` that [`age`] ignores counts as absent.
///
/// An `Age` from upstream is corrected by the response delay (the time from sending the request
/// to receiving the response, RFC 9111 §4.2.3): the response aged upstream of us meanwhile.
/// Without an `Age`, the delay is not counted: the origin made the response for this request.
fn initial_age(
    headers: &HeaderMap,
    date: Option<SystemTime>,
    now: SystemTime,
    response_delay: Duration,
) -> Duration {
    let age = age(headers).map_or(Duration::ZERO, |secs| {
        Duration::from_secs(secs).saturating_add(response_delay)
    });
    // `Date` has whole seconds: compare it with the current whole second, so a response dated
    // in the second it arrives has no apparent age (not up to a second of it).
    let now_secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(now, |since| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(since.as_secs())
        });
    let apparent = date
        .and_then(|date| now_secs.duration_since(date).ok())
        .unwrap_or(Duration::ZERO);
    age.max(apparent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(line: &str) -> CacheControl {
        let mut headers = HeaderMap::new();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_str(line).unwrap());
        CacheControl::from_headers(&headers)
    }

    #[test]
    fn parses_stale_directives() {
        let parsed = cc("max-age=60, stale-while-revalidate=120, stale-if-error=300");
        assert_eq!(parsed.max_age, Some(Seconds::Valid(60)));
        assert_eq!(parsed.stale_while_revalidate, Some(Seconds::Valid(120)));
        assert_eq!(parsed.stale_if_error, Some(Seconds::Valid(300)));
    }

    #[test]
    fn first_duplicate_wins_and_case_is_ignored() {
        let parsed = cc("MAX-AGE=5, max-age=100");
        assert_eq!(parsed.max_age, Some(Seconds::Valid(5)));
    }

    #[test]
    fn invalid_and_huge_numbers() {
        assert_eq!(cc("max-age=abc").max_age, Some(Seconds::Invalid));
        assert_eq!(cc("max-age=-1").max_age, Some(Seconds::Invalid));
        assert_eq!(
            cc("max-age=99999999999999999999999").max_age,
            Some(Seconds::Valid(DELTA_SECONDS_MAX))
        );
        assert_eq!(cc("max-age=\"30\"").max_age, Some(Seconds::Valid(30)));
    }

    fn shared_policy() -> Policy {
        Policy {
            default_ttl: None,
            default_stale_while_revalidate: Duration::ZERO,
            default_stale_if_error: Duration::ZERO,
            respect_origin: true,
            store_private: false,
            cookies_need_public: true,
            revalidation_retention: Duration::from_secs(600),
            surrogate_token: Some(std::sync::Arc::from("tower-swr")),
            targeted: std::sync::Arc::new([]),
            credential_headers: std::sync::Arc::new([]),
            stale_if_unreachable: None,
        }
    }

    fn headers(lines: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in lines {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    fn decide(
        policy: &Policy,
        request: RequestFacts,
        status: u16,
        lines: &[(&'static str, &'static str)],
    ) -> Decision {
        policy.decide(
            request,
            StatusCode::from_u16(status).unwrap(),
            &headers(lines),
            SystemTime::now(),
            Duration::ZERO,
        )
    }

    #[test]
    fn every_refusal_has_its_reason() {
        let policy = shared_policy();
        let plain = RequestFacts::default();
        let auth = RequestFacts {
            has_auth: true,
            has_cookie: false,
        };
        let cookie = RequestFacts {
            has_auth: false,
            has_cookie: true,
        };
        type Case = (
            RequestFacts,
            u16,
            &'static [(&'static str, &'static str)],
            Reason,
        );
        let cases: &[Case] = &[
            (
                plain,
                206,
                &[("cache-control", "max-age=60")],
                Reason::Status,
            ),
            (
                plain,
                304,
                &[("cache-control", "max-age=60")],
                Reason::Status,
            ),
            (
                plain,
                200,
                &[("content-type", "text/event-stream; charset=utf-8")],
                Reason::EventStream,
            ),
            (
                plain,
                200,
                &[
                    ("surrogate-control", "no-store"),
                    ("cache-control", "max-age=60"),
                ],
                Reason::SurrogateNoStore,
            ),
            (
                plain,
                299,
                &[("cache-control", "must-understand, no-store, max-age=60")],
                Reason::MustUnderstand,
            ),
            (
                plain,
                200,
                &[("cache-control", "no-store, max-age=60")],
                Reason::NoStore,
            ),
            (
                plain,
                200,
                &[("cache-control", "private, max-age=60")],
                Reason::Private,
            ),
            (
                plain,
                200,
                &[("cache-control", "max-age=60"), ("set-cookie", "a=b")],
                Reason::SetCookie,
            ),
            (
                plain,
                200,
                &[("cache-control", "max-age=60"), ("vary", "accept, *")],
                Reason::VaryStar,
            ),
            (
                auth,
                200,
                &[("cache-control", "max-age=60")],
                Reason::Authorization,
            ),
            (
                cookie,
                200,
                &[("cache-control", "max-age=60")],
                Reason::Cookie,
            ),
            (
                plain,
                200,
                &[("cache-control", "no-cache")],
                Reason::NoCacheWithoutValidators,
            ),
            (plain, 200, &[], Reason::NoFreshness),
            (
                plain,
                500,
                &[("last-modified", "Mon, 01 Jan 2001 00:00:00 GMT")],
                Reason::NoFreshness,
            ),
            (
                plain,
                200,
                &[("cache-control", "max-age=60"), ("age", "120")],
                Reason::NeverUsable,
            ),
        ];
        for (request, status, lines, reason) in cases {
            assert_eq!(
                decide(&policy, *request, *status, lines),
                Decision::Pass(*reason),
                "{status} {lines:?}"
            );
        }
        // The same answers to credentialed requests are stored when explicitly shareable.
        let public = [("cache-control", "public, max-age=60")];
        assert!(decide(&policy, auth, 200, &public).reason().is_none());
        assert!(decide(&policy, cookie, 200, &public).reason().is_none());
        // Not reading the origin's headers, a server error is refused as such.
        let ignoring = Policy {
            respect_origin: false,
            ..shared_policy()
        };
        assert_eq!(
            decide(&ignoring, plain, 503, &[]),
            Decision::Pass(Reason::ServerError)
        );
        assert!(decide(&ignoring, plain, 501, &[]).reason().is_none());
    }

    #[test]
    fn interim_statuses_are_never_stored() {
        let app = Policy {
            default_ttl: Some(Duration::from_secs(60)),
            default_stale_while_revalidate: Duration::from_secs(120),
            ..shared_policy()
        };
        let ignoring = Policy {
            respect_origin: false,
            ..app.clone()
        };
        // Whatever the headers say: explicit freshness, `must-understand`, a targeted lifetime.
        let lines = [
            ("cache-control", "public, max-age=60, must-understand"),
            ("surrogate-control", "max-age=60"),
            ("last-modified", "Mon, 01 Jan 2001 00:00:00 GMT"),
        ];
        for policy in [shared_policy(), app, ignoring] {
            for status in 100..200 {
                let decision = decide(&policy, RequestFacts::default(), status, &lines);
                assert_eq!(decision, Decision::Pass(Reason::Status), "{status}");
                // Nor under a route's own lifetime.
                assert_eq!(
                    decision.with_route_freshness(Freshness::new(Duration::from_secs(60))),
                    Decision::Pass(Reason::Status)
                );
            }
        }
    }

    #[test]
    fn reasons_read_as_before() {
        // Logged and in refresh errors (`not stored: ...`): the texts stay what they were.
        let texts = [
            (Reason::Status, "status"),
            (Reason::EventStream, "event stream"),
            (Reason::SurrogateNoStore, "surrogate-control: no-store"),
            (Reason::MustUnderstand, "must-understand"),
            (Reason::NoStore, "no-store"),
            (Reason::Private, "private"),
            (Reason::SetCookie, "set-cookie"),
            (Reason::VaryStar, "vary: *"),
            (Reason::VaryUnusable, "vary"),
            (Reason::Authorization, "authorization"),
            (Reason::Cookie, "cookie"),
            (
                Reason::NoCacheWithoutValidators,
                "no-cache without validators",
            ),
            (Reason::ServerError, "server error"),
            (Reason::NoFreshness, "no freshness"),
            (Reason::NeverUsable, "already past every window"),
            (Reason::BodyTooLarge, "body over max_body_bytes"),
            (
                Reason::BodyIncomplete,
                "body over max_body_bytes, or it failed",
            ),
            (Reason::BodyFailed, "the body failed"),
            (
                Reason::LengthMismatch,
                "body length differs from content-length",
            ),
        ];
        for (reason, text) in texts {
            assert_eq!(reason.to_string(), text);
            assert_eq!(
                format!("not stored: {reason}"),
                format!("not stored: {text}")
            );
        }
    }

    #[test]
    fn a_route_lifetime_supplies_freshness_not_permission() {
        let route = Freshness::new(Duration::from_secs(30));
        for reason in [Reason::NoFreshness, Reason::NeverUsable] {
            let Decision::Store {
                freshness,
                shared_with_auth,
                shared_with_cookie,
                ..
            } = Decision::Pass(reason).with_route_freshness(route)
            else {
                panic!("{reason}: a route lifetime stores it");
            };
            assert_eq!(freshness, route);
            assert!(!shared_with_auth && !shared_with_cookie);
        }
        for reason in [
            Reason::NoStore,
            Reason::Private,
            Reason::SetCookie,
            Reason::Authorization,
            Reason::NoCacheWithoutValidators,
            Reason::VaryStar,
        ] {
            assert_eq!(
                Decision::Pass(reason).with_route_freshness(route),
                Decision::Pass(reason)
            );
        }
        // A storable response takes the route's lifetime, counted from now.
        let policy = shared_policy();
        let stored = decide(
            &policy,
            RequestFacts::default(),
            200,
            &[("cache-control", "max-age=600"), ("age", "100")],
        )
        .with_route_freshness(route);
        let Decision::Store {
            freshness,
            initial_age,
            ..
        } = stored
        else {
            panic!("stored");
        };
        // Counted from now: fresh for the route's lifetime beyond the age it arrived with.
        assert_eq!(initial_age, Duration::from_secs(100));
        assert_eq!(freshness.ttl, route.ttl + Duration::from_secs(100));
    }

    #[test]
    fn an_unusable_vary_is_never_stored() {
        let policy = shared_policy();
        let request = headers(&[("accept", "text/html")]);
        let response = [("cache-control", "max-age=60"), ("vary", "accept")];
        let storable = decide(&policy, RequestFacts::default(), 200, &response);
        assert!(storable
            .clone()
            .with_vary(&Vary::of(&headers(&response), &request))
            .reason()
            .is_none());
        let malformed = headers(&[("cache-control", "max-age=60"), ("vary", "acc ept")]);
        assert_eq!(
            storable.with_vary(&Vary::of(&malformed, &request)),
            Decision::Pass(Reason::VaryUnusable)
        );
        // An earlier reason is kept.
        assert_eq!(
            Decision::Pass(Reason::NoStore).with_vary(&Vary::Never),
            Decision::Pass(Reason::NoStore)
        );
    }

    #[test]
    fn body_limit_and_failures() {
        assert_eq!(
            declared_body_refusal(Some(11), 10),
            Some(Reason::BodyTooLarge)
        );
        assert_eq!(declared_body_refusal(Some(10), 10), None);
        assert_eq!(declared_body_refusal(None, 10), None);
        let extra = [StatusCode::TOO_MANY_REQUESTS];
        assert!(is_failure(StatusCode::BAD_GATEWAY, &extra));
        assert!(is_failure(StatusCode::TOO_MANY_REQUESTS, &extra));
        assert!(!is_failure(StatusCode::REQUEST_TIMEOUT, &extra));
        assert!(!is_failure(StatusCode::NOT_FOUND, &extra));
        for interim in [StatusCode::CONTINUE, StatusCode::from_u16(103).unwrap()] {
            assert!(is_failure(interim, &[]));
            assert!(!failure_is_shareable(
                false,
                interim,
                &HeaderMap::new(),
                &[]
            ));
        }
        assert!(failure_is_shareable(
            false,
            StatusCode::BAD_GATEWAY,
            &HeaderMap::new(),
            &[]
        ));
    }

    #[test]
    fn age_is_the_first_member_or_ignored() {
        let age_of = |lines: &[&'static str]| {
            let mut headers = HeaderMap::new();
            for line in lines {
                headers.append(header::AGE, HeaderValue::from_static(line));
            }
            age(&headers)
        };
        assert_eq!(age_of(&[]), None);
        assert_eq!(age_of(&["30"]), Some(30));
        assert_eq!(age_of(&[" 30\t"]), Some(30));
        // A list, on one line or several, is read by its first member.
        assert_eq!(age_of(&["0, 7200"]), Some(0));
        assert_eq!(age_of(&["7200,0"]), Some(7200));
        assert_eq!(age_of(&["0", "7200"]), Some(0));
        assert_eq!(age_of(&["7200", "0"]), Some(7200));
        assert_eq!(age_of(&["5, abc"]), Some(5));
        assert_eq!(age_of(&["", ", 9", "1"]), Some(9));
        // Anything but a non-negative integer first: the field is ignored.
        for bad in [
            "abc",
            "-5",
            "+5",
            "1.5",
            "7200.0",
            "1a",
            "7200;foo=1",
            "\"3\"",
            "1 2",
        ] {
            assert_eq!(age_of(&[bad]), None, "Age: {bad}");
        }
        assert_eq!(age_of(&["abc", "5"]), None);
        assert_eq!(
            age_of(&["99999999999999999999999"]),
            Some(DELTA_SECONDS_MAX)
        );
        let mut headers = HeaderMap::new();
        headers.insert(header::AGE, HeaderValue::from_bytes(b"\xff1").unwrap());
        assert_eq!(age(&headers), None);
    }

    #[test]
    fn an_ignored_age_leaves_the_response_fresh() {
        let policy = shared_policy();
        for bad in ["abc", "-3", "1.5", "1a", "7200;foo=bar"] {
            let mut lines = headers(&[("cache-control", "max-age=60")]);
            lines.insert(header::AGE, HeaderValue::from_static(bad));
            let decision = policy.decide(
                RequestFacts::default(),
                StatusCode::OK,
                &lines,
                SystemTime::now(),
                Duration::from_secs(2),
            );
            let Decision::Store {
                freshness,
                initial_age,
                ..
            } = decision
            else {
                panic!("Age: {bad} is ignored, the response stored: {decision:?}");
            };
            // Ignored as if absent: no age, and the response delay is not counted either.
            assert_eq!(initial_age, Duration::ZERO, "Age: {bad}");
            assert_eq!(freshness.ttl, Duration::from_secs(60));
        }
        // A valid first member still counts, with the response delay.
        let decision = policy.decide(
            RequestFacts::default(),
            StatusCode::OK,
            &headers(&[("cache-control", "max-age=60"), ("age", "10, abc")]),
            SystemTime::now(),
            Duration::from_secs(2),
        );
        assert!(
            matches!(decision, Decision::Store { initial_age, .. } if initial_age == Duration::from_secs(12)),
            "{decision:?}"
        );
    }

    #[test]
    fn structured_dictionaries() {
        use SfItem::{Boolean, Integer, Other, String as Str};
        let parsed = |text: &str| sf_dictionary(text.as_bytes());
        let members = |list: &[(&str, SfItem)]| {
            Some(
                list.iter()
                    .map(|(k, v)| ((*k).to_owned(), v.clone()))
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            parsed("max-age=60, no-store,private=\"set-cookie, x\"  "),
            members(&[
                ("max-age", Integer(60)),
                ("no-store", Boolean(true)),
                ("private", Str("set-cookie, x".into())),
            ])
        );
        // Parameters are parsed and dropped; a repeated key keeps its last value, in place of
        // the first.
        assert_eq!(
            parsed("max-age=1;a=b, public;x, max-age=2"),
            members(&[("public", Boolean(true)), ("max-age", Integer(2))])
        );
        assert_eq!(
            parsed("max-age=-5, a=1.5, b=tok/en:1, c=:aGk=:, d=?0, e=(1 \"x\");p"),
            members(&[
                ("max-age", Integer(-5)),
                ("a", Other),
                ("b", SfItem::Token("tok/en:1".into())),
                ("c", Other),
                ("d", Boolean(false)),
                ("e", Other),
            ])
        );
        for bad in [
            "",
            "   ",
            "Max-Age=60",
            "max-age=60,",
            "max-age=60,,public",
            "max-age =60",
            "max-age= 60",
            "max-age=60 public",
            "max-age=\"60",
            "max-age=1234567890123456",
            "max-age=1.2345",
            "max-age=1.",
            "no-store=?2",
            "a=\"\\x\"",
            "1max-age=1",
            "max-age=60;",
            "e=(1,2)",
            "max-age=\u{e9}",
        ] {
            assert_eq!(parsed(bad), None, "{bad:?}");
        }
    }

    fn targeted_policy() -> Policy {
        Policy {
            targeted: std::sync::Arc::new([
                http::HeaderName::from_static("tower-swr-cache-control"),
                http::HeaderName::from_static("cdn-cache-control"),
            ]),
            ..shared_policy()
        }
    }

    fn ttl_of(decision: &Decision) -> Option<u64> {
        match decision {
            Decision::Store { freshness, .. } => Some(freshness.ttl.as_secs()),
            Decision::Pass(_) => None,
        }
    }

    #[test]
    fn a_targeted_field_replaces_cache_control_and_expires() {
        let policy = targeted_policy();
        let plain = RequestFacts::default();
        let at = |lines: &[(&'static str, &'static str)]| decide(&policy, plain, 200, lines);
        // CDN-Cache-Control wins over Cache-Control, either way round.
        let cc = ("cache-control", "no-store");
        assert_eq!(
            ttl_of(&at(&[cc, ("cdn-cache-control", "max-age=600")])),
            Some(600)
        );
        let cc = ("cache-control", "max-age=600");
        assert_eq!(
            at(&[cc, ("cdn-cache-control", "no-store")]),
            Decision::Pass(Reason::NoStore)
        );
        assert_eq!(
            at(&[cc, ("cdn-cache-control", "private")]),
            Decision::Pass(Reason::Private)
        );
        // Our own field wins over CDN-Cache-Control.
        let both = [
            cc,
            ("cdn-cache-control", "max-age=60"),
            ("tower-swr-cache-control", "max-age=5"),
        ];
        assert_eq!(ttl_of(&at(&both)), Some(5));
        // An invalid or empty field is skipped: the next one, else Cache-Control.
        let skipped = [
            cc,
            ("cdn-cache-control", "max-age=60"),
            ("tower-swr-cache-control", "max-age=5,"),
        ];
        assert_eq!(ttl_of(&at(&skipped)), Some(60));
        assert_eq!(ttl_of(&at(&[cc, ("cdn-cache-control", "")])), Some(600));
        assert_eq!(
            ttl_of(&at(&[cc, ("cdn-cache-control", "Max-Age=9")])),
            Some(600)
        );
        // Cache-Control's and Expires' lifetimes are ignored under a valid targeted field.
        let expires = [
            ("expires", "Fri, 31 Dec 9999 23:59:59 GMT"),
            ("cdn-cache-control", "none"),
        ];
        assert_eq!(at(&expires), Decision::Pass(Reason::NoFreshness));
        assert_eq!(
            at(&[cc, ("cdn-cache-control", "none")]),
            Decision::Pass(Reason::NoFreshness)
        );
        // A value of the wrong type is not consumed; parameters are ignored.
        assert_eq!(
            at(&[("cdn-cache-control", "max-age=1.5")]),
            Decision::Pass(Reason::NoFreshness)
        );
        assert_eq!(
            at(&[("cdn-cache-control", "max-age=-1")]),
            Decision::Pass(Reason::NoFreshness)
        );
        assert_eq!(
            ttl_of(&at(&[("cdn-cache-control", "max-age=30;x=1, no-store=?0")])),
            Some(30)
        );
        // s-maxage, stale windows and their prohibition as in Cache-Control.
        let Decision::Store { freshness, .. } = at(&[(
            "cdn-cache-control",
            "max-age=10, stale-while-revalidate=20, stale-if-error=30",
        )]) else {
            panic!("stored");
        };
        assert_eq!(
            (
                freshness.stale_while_revalidate.as_secs(),
                freshness.stale_if_error.as_secs()
            ),
            (20, 30)
        );
        let Decision::Store { freshness, .. } = at(&[(
            "cdn-cache-control",
            "s-maxage=10, max-age=99, stale-while-revalidate=20",
        )]) else {
            panic!("stored");
        };
        assert_eq!(
            (
                freshness.ttl.as_secs(),
                freshness.stale_while_revalidate.as_secs()
            ),
            (10, 0)
        );
        // no-cache: stored to be revalidated, with validators only.
        assert_eq!(
            at(&[cc, ("cdn-cache-control", "no-cache")]),
            Decision::Pass(Reason::NoCacheWithoutValidators)
        );
        // private="field" strips that field.
        let Decision::Store { strip, .. } =
            at(&[("cdn-cache-control", "max-age=5, private=\"x-user\"")])
        else {
            panic!("stored");
        };
        assert_eq!(strip, ["x-user"]);
        // Surrogate-Control aimed at us still applies on top.
        assert_eq!(
            at(&[
                ("cdn-cache-control", "max-age=5"),
                ("surrogate-control", "no-store")
            ]),
            Decision::Pass(Reason::SurrogateNoStore)
        );
        // Off (the list empty), the targeted field changes nothing.
        let off = shared_policy();
        assert_eq!(
            ttl_of(&decide(
                &off,
                plain,
                200,
                &[cc, ("cdn-cache-control", "no-store")]
            )),
            Some(600)
        );
        // Authorization: shareable by the targeted field's `public`, not Cache-Control's.
        let auth = RequestFacts {
            has_auth: true,
            has_cookie: false,
        };
        let public_cc = [
            ("cache-control", "public, max-age=60"),
            ("cdn-cache-control", "max-age=60"),
        ];
        assert_eq!(
            decide(&policy, auth, 200, &public_cc),
            Decision::Pass(Reason::Authorization)
        );
        let public_cdn = [("cdn-cache-control", "public, max-age=60")];
        assert!(decide(&policy, auth, 200, &public_cdn).reason().is_none());
    }

    #[test]
    fn quoted_commas_do_not_split() {
        let parsed = cc("private=\"set-cookie, x-user\", max-age=10");
        assert!(!parsed.private);
        assert_eq!(parsed.private_fields, vec!["set-cookie", "x-user"]);
        assert_eq!(parsed.max_age, Some(Seconds::Valid(10)));
    }
}
