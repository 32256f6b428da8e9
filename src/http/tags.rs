//! Cache tags: the `Surrogate-Key`, `Cache-Tag` and `xkey` response fields that tag a stored
//! response, and the purge times per tag that [`SwrHandle::purge_tag`] and
//! [`soft_purge_tag`] leave.
//!
//! There is no index from tags to keys (it would grow with the store) and a purge scans
//! nothing: it records, per tag, the purge generation it ran at. A tagged entry carries the
//! generation at which its load began, and is checked when it is used (a hit, a stale hit, a
//! waiter's answer): one of its tags purged since then means a miss (hard) or stale (soft).
//! The records are bounded ([`MAX_PURGE_RECORDS`]); when they are full, they are folded into
//! one purge time per layer that applies to every tagged entry (purging more, never less).
//!
//! [`SwrHandle::purge_tag`]: crate::SwrHandle::purge_tag
//! [`soft_purge_tag`]: crate::SwrHandle::soft_purge_tag

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use std::cell::Cell;

use http::header::{HeaderMap, HeaderName};

use super::config::Shared;
use crate::engine::Found;

/// Most tags one response keeps; later ones are ignored (with a debug log).
pub(crate) const MAX_TAGS: usize = 64;
/// Longest tag kept, in bytes; a longer one is ignored (with a debug log).
pub(crate) const MAX_TAG_LEN: usize = 256;
/// Most purge records (one per tag purged) kept per store before they fold into one purge
/// time per layer.
pub(crate) const MAX_PURGE_RECORDS: usize = 16_384;

/// Fastly's `Surrogate-Key`: tags separated by spaces.
pub(crate) static SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");
/// Cloudflare's `Cache-Tag`: tags separated by commas.
pub(crate) static CACHE_TAG: HeaderName = HeaderName::from_static("cache-tag");
/// Varnish's `xkey`: tags separated by spaces or commas.
pub(crate) static XKEY: HeaderName = HeaderName::from_static("xkey");

/// The tag fields, as removed from responses sent downstream.
pub(crate) const TAG_FIELDS: [HeaderName; 3] = [
    HeaderName::from_static("surrogate-key"),
    HeaderName::from_static("cache-tag"),
    HeaderName::from_static("xkey"),
];

/// The purge generation: bumped by every tag purge in the process, so comparing an entry's
/// generation with a tag's tells which came first whatever the clock says.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// The purge generation now (read when a load begins).
pub(crate) fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// A stored response's tags and the purge generation at which its load began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tags {
    pub(crate) names: Box<[Box<str>]>,
    /// Purges of these tags at a later generation apply to the entry. An entry read from
    /// elsewhere (the stored-response codec) has 0: every purge of its tags applies.
    pub(crate) since: u64,
}

impl Tags {
    /// The tags of a response's fields, if any (see [`parse`]).
    pub(crate) fn of(headers: &HeaderMap, since: u64) -> Option<Box<Self>> {
        let names = parse(headers);
        (!names.is_empty()).then(|| {
            Box::new(Self {
                names: names.into_iter().map(String::into_boxed_str).collect(),
                since,
            })
        })
    }

    pub(crate) fn weight(&self) -> usize {
        self.names.iter().map(|name| name.len() + 16).sum::<usize>() + 32
    }
}

/// Whether `tag` is one this cache keeps: 1 to [`MAX_TAG_LEN`] visible ASCII characters
/// (no spaces, commas or control characters).
pub(crate) fn is_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= MAX_TAG_LEN
        && tag.bytes().all(|b| b.is_ascii_graphic() && b != b',')
}

/// The separators of a field's tags.
fn separators(name: &HeaderName) -> fn(char) -> bool {
    if name == CACHE_TAG {
        |c| c == ','
    } else if name == XKEY {
        |c| c == ',' || c.is_ascii_whitespace()
    } else {
        |c| c.is_ascii_whitespace()
    }
}

/// The tags of one line of a tag field: `Surrogate-Key` separated by spaces, `Cache-Tag` by
/// commas (each trimmed), `xkey` by either. Tags are compared exactly (case matters).
pub(crate) fn split<'a>(name: &HeaderName, value: &'a [u8]) -> impl Iterator<Item = &'a str> {
    let text = std::str::from_utf8(value).unwrap_or_default();
    if text.is_empty() && !value.is_empty() {
        tracing::debug!("a tag field that is not UTF-8 is ignored");
    }
    text.split(separators(name))
        .map(|tag| tag.trim_matches(|c: char| c.is_ascii_whitespace()))
        .filter(|tag| !tag.is_empty())
}

/// Every tag of a response, in the order of its fields (`Surrogate-Key`, `Cache-Tag`, `xkey`,
/// each line in order), each once, at most [`MAX_TAGS`]; an invalid or too long tag, and the
/// tags past the limit, are ignored with a debug log.
pub(crate) fn parse(headers: &HeaderMap) -> Vec<String> {
    let mut tags: Vec<String> = Vec::new();
    let mut ignored = 0usize;
    for name in [&SURROGATE_KEY, &CACHE_TAG, &XKEY] {
        for value in headers.get_all(name) {
            for tag in split(name, value.as_bytes()) {
                if !is_tag(tag) || tags.len() >= MAX_TAGS {
                    ignored += 1;
                } else if !tags.iter().any(|t| t == tag) {
                    tags.push(tag.to_owned());
                }
            }
        }
    }
    if ignored > 0 {
        tracing::debug!(
            ignored,
            kept = tags.len(),
            "cache tags ignored: over {MAX_TAGS} tags, longer than {MAX_TAG_LEN} bytes or not visible ASCII"
        );
    }
    tags
}

impl Shared {
    /// Whether a tagged entry may answer after the purges of its tags; sets `soft` when it is
    /// soft-purged (stale). Out of line: untagged hits never come here.
    #[cold]
    #[inline(never)]
    pub(crate) fn tags_allow(&self, tags: &Tags, soft: &Cell<bool>) -> bool {
        match self.tags.verdict(self.namespace, tags) {
            Verdict::Keep => true,
            Verdict::Stale => {
                soft.set(true);
                true
            }
            Verdict::Gone => false,
        }
    }
}

/// A lookup's result once its entry turned out soft-purged by tag: stale (answered at once
/// while it refreshes) where it has a stale-while-revalidate window, otherwise a miss that
/// revalidates it (stale-if-error may still stand in).
pub(crate) fn soft_purged_found<V>(found: Found<V>) -> Found<V> {
    match found {
        Found::Fresh { entry, .. } if entry.has_stale_window() => Found::Stale(entry),
        Found::Fresh { entry, .. } => Found::Miss {
            expired: Some(entry),
        },
        other => other,
    }
}

/// How a tagged entry stands after the purges of its tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Keep,
    /// Soft-purged: served stale while it revalidates.
    Stale,
    /// Purged: a miss, never served again.
    Gone,
}

/// The generations at which a tag (or, folded, every tag of a layer) was last purged.
#[derive(Debug, Clone, Copy, Default)]
struct Purged {
    hard: u64,
    soft: u64,
}

impl Purged {
    fn merge(&mut self, other: Self) {
        self.hard = self.hard.max(other.hard);
        self.soft = self.soft.max(other.soft);
    }

    fn verdict(self, since: u64) -> Verdict {
        if self.hard > since {
            Verdict::Gone
        } else if self.soft > since {
            Verdict::Stale
        } else {
            Verdict::Keep
        }
    }
}

#[derive(Debug, Default)]
struct Book {
    /// Per layer (namespace): per tag.
    tags: HashMap<u32, HashMap<Box<str>, Purged>>,
    /// Per layer: records folded when the book was full; applies to every tagged entry.
    folded: HashMap<u32, Purged>,
    records: usize,
}

/// The purge records of one store, for every layer in it.
#[derive(Debug, Default)]
pub(crate) struct TagPurges {
    book: RwLock<Book>,
    /// [`MAX_PURGE_RECORDS`], smaller in tests.
    limit: usize,
}

/// What a tag purge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Purge {
    /// Distinct valid tags purged.
    pub(crate) tags: usize,
    /// The records were full and folded into one purge of every tagged entry of each layer.
    pub(crate) folded: bool,
}

impl TagPurges {
    pub(crate) fn new() -> Self {
        Self::with_limit(MAX_PURGE_RECORDS)
    }

    pub(crate) fn with_limit(limit: usize) -> Self {
        Self {
            book: RwLock::default(),
            limit: limit.max(1),
        }
    }

    /// Records a purge of `tags` in `namespace` (`soft`: stale, else gone).
    pub(crate) fn purge<'a>(
        &self,
        namespace: u32,
        tags: impl IntoIterator<Item = &'a str>,
        soft: bool,
    ) -> Purge {
        let mut book = self.book.write().unwrap_or_else(PoisonError::into_inner);
        // Under the lock, so a reader never sees a generation without its record; loads that
        // began before this read an older one.
        let generation = GENERATION.fetch_add(1, Ordering::AcqRel) + 1;
        let purged = if soft {
            Purged {
                hard: 0,
                soft: generation,
            }
        } else {
            Purged {
                hard: generation,
                soft: 0,
            }
        };
        let mut seen = std::collections::HashSet::new();
        let mut folded = false;
        for tag in tags {
            if !is_tag(tag) {
                tracing::debug!(tag, "not a cache tag: ignored by the purge");
                continue;
            }
            if !seen.insert(tag) {
                continue;
            }
            let known = (book.tags.get(&namespace)).is_some_and(|tags| tags.contains_key(tag));
            if !known && book.records >= self.limit {
                book.fold();
                folded = true;
            }
            let Book {
                tags: all, records, ..
            } = &mut *book;
            let layer = all.entry(namespace).or_default();
            match layer.get_mut(tag) {
                Some(existing) => existing.merge(purged),
                None => {
                    layer.insert(tag.into(), purged);
                    *records += 1;
                }
            }
        }
        let count = seen.len();
        if folded {
            tracing::warn!(
                limit = self.limit,
                "tag purge records full: folded into one purge of every tagged entry"
            );
        }
        Purge {
            tags: count,
            folded,
        }
    }

    /// How an entry of `namespace` with `tags` stands.
    pub(crate) fn verdict(&self, namespace: u32, tags: &Tags) -> Verdict {
        if generation() <= tags.since {
            // No tag purge since its load began: no lock.
            return Verdict::Keep;
        }
        let book = self.book.read().unwrap_or_else(PoisonError::into_inner);
        let mut verdict = (book.folded.get(&namespace).copied())
            .map_or(Verdict::Keep, |folded| folded.verdict(tags.since));
        if verdict == Verdict::Gone {
            return verdict;
        }
        let Some(records) = book.tags.get(&namespace) else {
            return verdict;
        };
        for name in tags.names.iter() {
            match records.get(&**name).map(|p| p.verdict(tags.since)) {
                Some(Verdict::Gone) => return Verdict::Gone,
                Some(Verdict::Stale) => verdict = Verdict::Stale,
                _ => {}
            }
        }
        verdict
    }

    /// How many purge records are kept.
    #[cfg(test)]
    pub(crate) fn records(&self) -> usize {
        self.book
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .records
    }
}

impl Book {
    /// Every record of a layer becomes one purge of all its tagged entries at the latest
    /// generation of each kind: entries are purged at least as much as before.
    fn fold(&mut self) {
        for (namespace, records) in self.tags.drain() {
            let folded = self.folded.entry(namespace).or_default();
            for purged in records.into_values() {
                folded.merge(purged);
            }
        }
        self.records = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(lines: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in lines {
            headers.append(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn each_field_splits_its_own_way() {
        let h = headers(&[
            ("surrogate-key", " a  b,c "),
            ("cache-tag", "d, e f ,g"),
            ("xkey", "h,i j"),
            ("surrogate-key", "a k"),
        ]);
        // `b,c` is one Surrogate-Key token with a comma: not a tag; `e f` neither.
        assert_eq!(parse(&h), ["a", "k", "d", "g", "h", "i", "j"]);
    }

    #[test]
    fn counts_and_lengths_are_bounded() {
        let many: Vec<String> = (0..100).map(|i| format!("t{i}")).collect();
        let h = headers(&[("surrogate-key", &many.join(" "))]);
        let tags = parse(&h);
        assert_eq!(tags.len(), MAX_TAGS);
        assert_eq!(tags[0], "t0");
        let long = "x".repeat(MAX_TAG_LEN + 1);
        let h = headers(&[("cache-tag", &format!("{long},ok"))]);
        assert_eq!(parse(&h), ["ok"]);
    }

    #[test]
    fn purges_apply_to_entries_loaded_before_them() {
        let purges = TagPurges::new();
        let before = Tags {
            names: vec!["a".into(), "b".into()].into(),
            since: generation(),
        };
        assert_eq!(purges.verdict(1, &before), Verdict::Keep);
        purges.purge(1, ["b"], true);
        assert_eq!(purges.verdict(1, &before), Verdict::Stale);
        assert_eq!(purges.verdict(2, &before), Verdict::Keep, "another layer's");
        purges.purge(1, ["a"], false);
        assert_eq!(purges.verdict(1, &before), Verdict::Gone);
        let after = Tags {
            since: generation(),
            ..before
        };
        assert_eq!(purges.verdict(1, &after), Verdict::Keep);
    }

    #[test]
    fn full_records_fold_into_a_purge_of_every_tagged_entry() {
        let purges = TagPurges::with_limit(3);
        let old = Tags {
            names: vec!["untouched".into()].into(),
            since: generation(),
        };
        let report = purges.purge(1, ["a", "b", "c"], true);
        assert_eq!((report.tags, report.folded), (3, false));
        assert_eq!(purges.verdict(1, &old), Verdict::Keep);
        let report = purges.purge(1, ["d"], false);
        assert!(report.folded);
        assert_eq!(purges.records(), 1);
        // The soft purges folded: every older tagged entry of the layer is stale now.
        assert_eq!(purges.verdict(1, &old), Verdict::Stale);
        let d = Tags {
            names: vec!["d".into()].into(),
            since: old.since,
        };
        assert_eq!(purges.verdict(1, &d), Verdict::Gone);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn tag() -> impl Strategy<Value = String> {
            "[!-+--~]{1,20}"
        }

        proptest! {
            /// Any bytes in any tag field: no panic, and only valid, distinct tags, at most 64.
            #[test]
            fn parsing_arbitrary_fields_keeps_only_valid_distinct_tags(
                lines in prop::collection::vec(
                    (0usize..3, prop::collection::vec(prop_oneof![0x20u8..=0x7e, Just(b'\t'), 0x80u8..=0xff], 0..300)),
                    0..6,
                )
            ) {
                let mut headers = HeaderMap::new();
                for (field, value) in lines {
                    headers.append(TAG_FIELDS[field].clone(), HeaderValue::from_bytes(&value).unwrap());
                }
                let tags = parse(&headers);
                prop_assert!(tags.len() <= MAX_TAGS);
                for (i, t) in tags.iter().enumerate() {
                    prop_assert!(is_tag(t), "{t:?}");
                    prop_assert!(!tags[..i].contains(t));
                }
            }

            /// Valid tags written the way each field separates them come back, in order.
            #[test]
            fn tags_written_with_each_fields_separators_come_back(
                tags in prop::collection::vec(tag(), 1..80),
                field in 0usize..3,
                spaces in 1usize..4,
            ) {
                let pad = " ".repeat(spaces);
                let value = match field {
                    0 => tags.join(&pad),
                    1 => tags.join(&format!("{pad},{pad}")),
                    _ => tags.join(if spaces % 2 == 0 { "," } else { &pad }),
                };
                let mut headers = HeaderMap::new();
                headers.append(TAG_FIELDS[field].clone(), HeaderValue::from_str(&value).unwrap());
                let mut expected: Vec<String> = Vec::new();
                for t in tags {
                    if !expected.contains(&t) {
                        expected.push(t);
                    }
                }
                expected.truncate(MAX_TAGS);
                prop_assert_eq!(parse(&headers), expected);
            }

            /// Whatever the purges, an entry is gone exactly when a hard purge of one of its tags
            /// came after its load began, else stale when a soft one did (without folding).
            #[test]
            fn verdicts_follow_the_purges_after_the_load_began(
                before in prop::collection::vec((0usize..4, any::<bool>()), 0..6),
                after in prop::collection::vec((0usize..4, any::<bool>()), 0..6),
            ) {
                let names = ["a", "b", "c", "d"];
                let purges = TagPurges::new();
                for (i, soft) in &before {
                    purges.purge(9, [names[*i]], *soft);
                }
                let entry = Tags { names: vec!["a".into(), "b".into()].into(), since: generation() };
                for (i, soft) in &after {
                    purges.purge(9, [names[*i]], *soft);
                }
                let mine = |entry: &&(usize, bool)| entry.0 < 2;
                let expected = if after.iter().filter(mine).any(|(_, soft)| !soft) {
                    Verdict::Gone
                } else if after.iter().filter(mine).any(|(_, soft)| *soft) {
                    Verdict::Stale
                } else {
                    Verdict::Keep
                };
                prop_assert_eq!(purges.verdict(9, &entry), expected);
            }
        }
    }
}
