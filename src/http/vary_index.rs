//! The `Vary` index: which request headers a key's responses vary on, and which variants are
//! stored; and the memory of keys that passed. Both count against the layer's byte budget.
//!
//! # Why a share of the budget, not entries in the store
//!
//! `capacity_bytes` bounds what the layer holds, and these two tables are part of it: they
//! are byte-weighted caches of their own, each given a fixed share carved out of the budget
//! ([`Budget`]), and [`Shared::stats`] reports their bytes (and capacities) with the store's.
//! Keeping them beside the store, rather than as records in it, keeps a hit on a varying key
//! what it was: one lookup in the index (a plain `get`, whatever the weigher) and one in the
//! store, with no freshness, flight or fence machinery for a record that is not a response.
//! A fixed share also means a flood of distinct varying resources evicts index records
//! (oldest first, with the variants they list: [`DropVariants`]), not responses.

use std::collections::VecDeque;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard};

use http::header::HeaderName;
use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, OptionsBuilder, Weighter};

use super::config::Shared;
use super::key::{CacheKey, KeyRef, VaryValues};
use super::stored::CachedResponse;
use crate::engine::{Stamp, SwrCache};

/// Most variants kept per key; storing one more drops the oldest.
pub(crate) const MAX_VARIANTS: usize = 32;

/// How the layer's `capacity_bytes` is divided: the store gets what the two tables beside it
/// do not. The `Vary` index gets 1/16 (8 MiB of the default 128 MiB: some 30 000 records of
/// ~250 bytes, each listing up to [`MAX_VARIANTS`] stored responses), enough for every
/// resource of a store of small responses to vary (`Vary: Accept-Encoding`) while costing a
/// store without `Vary` little; the pass memory gets 1/128 (1 MiB: some 7 000 keys, more
/// than the 4096 it was bounded to by count before).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    pub(crate) store: u64,
    pub(crate) vary_index: u64,
    pub(crate) passes: u64,
}

impl Budget {
    pub(crate) fn of(capacity_bytes: u64) -> Self {
        let vary_index = capacity_bytes / 16;
        let passes = capacity_bytes / 128;
        Self {
            store: capacity_bytes - vary_index - passes,
            vary_index,
            passes,
        }
    }
}

/// What a key costs in a table beside the store: its text plus the key's own fields and the
/// table's slot for it.
fn key_weight(key: &CacheKey) -> u64 {
    (key.host().len() + key.target().len() + key.extra().map_or(0, str::len) + 96) as u64
}

/// Which request headers a key's responses vary on, and which variants are stored.
///
/// Never changed once in the index (it would change its weight): a store replaces it.
#[derive(Debug, Clone)]
pub(crate) struct VaryIndex {
    pub(crate) names: Box<[HeaderName]>,
    pub(crate) variants: VecDeque<Box<[u8]>>,
}

impl VaryIndex {
    fn weight(&self) -> u64 {
        let names: usize = self.names.iter().map(|n| n.as_str().len() + 24).sum();
        let variants: usize = self.variants.iter().map(|v| v.len() + 16).sum();
        (names + variants + 64) as u64
    }
}

/// Weighs an index record: its key, names and variants.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IndexWeighter;

impl Weighter<CacheKey, Arc<VaryIndex>> for IndexWeighter {
    fn weight(&self, key: &CacheKey, index: &Arc<VaryIndex>) -> u64 {
        key_weight(key) + index.weight()
    }
}

/// When an index record is evicted, the variants it lists go from the store too: nothing
/// would find them again before the resource is stored anew, and they would only hold bytes.
#[derive(Clone)]
pub(crate) struct DropVariants(SwrCache<CacheKey, CachedResponse>);

impl fmt::Debug for DropVariants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DropVariants")
    }
}

impl Lifecycle<CacheKey, Arc<VaryIndex>> for DropVariants {
    type RequestState = ();

    // Evictions only (and an insert too heavy to keep), not removals or replacements.
    fn before_evict(&self, _state: &mut (), key: &CacheKey, index: &mut Arc<VaryIndex>) {
        let base = key.base();
        for variant in &index.variants {
            self.0.remove_equivalent(&base.with_variant(variant));
        }
    }
}

/// The index records, by base key (a byte-weighted cache; [`Deref`] to it).
pub(crate) struct VaryIndexes {
    records: Cache<CacheKey, Arc<VaryIndex>, IndexWeighter, DefaultHashBuilder, DropVariants>,
    /// Serialise the updates of a record (by key hash), not its lookups.
    updates: Box<[Mutex<()>]>,
}

impl VaryIndexes {
    fn lock_for(&self, base: &KeyRef<'_>) -> MutexGuard<'_, ()> {
        let mut hasher = std::hash::DefaultHasher::new();
        base.hash(&mut hasher);
        let stripe = &self.updates[hasher.finish() as usize % self.updates.len()];
        stripe.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Deref for VaryIndexes {
    type Target = Cache<CacheKey, Arc<VaryIndex>, IndexWeighter, DefaultHashBuilder, DropVariants>;

    fn deref(&self) -> &Self::Target {
        &self.records
    }
}

impl fmt::Debug for VaryIndexes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaryIndexes")
            .field("records", &self.records.len())
            .field("bytes", &self.records.weight())
            .finish()
    }
}

/// Weighs a remembered pass: its key and its deadline.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PassWeighter;

impl Weighter<CacheKey, Stamp> for PassWeighter {
    fn weight(&self, key: &CacheKey, _until: &Stamp) -> u64 {
        key_weight(key) + 16
    }
}

/// Keys whose last origin answer could not be stored, until when ([`Shared::passes`]).
pub(crate) type Passes = Cache<CacheKey, Stamp, PassWeighter>;

/// Options for a table of `capacity` bytes whose records weigh up to about `largest`: as many
/// shards as the cores use, as long as each still holds such a record.
fn options(capacity: u64, largest: u64) -> quick_cache::Options {
    let parallelism = std::thread::available_parallelism().map_or(4, |n| n.get());
    let max_shards = (parallelism * 4).next_power_of_two() as u64;
    let mut shards = 1u64;
    while shards * 2 <= max_shards && capacity / (shards * 2) >= largest {
        shards *= 2;
    }
    OptionsBuilder::new()
        .shards(shards as usize)
        .weight_capacity(capacity)
        .estimated_items_capacity((capacity / 256).clamp(16, 1 << 16) as usize)
        .build()
        .expect("valid quick_cache options")
}

/// The `Vary` index of a store, holding `capacity` bytes.
pub(crate) fn vary_indexes(
    capacity: u64,
    engine: &SwrCache<CacheKey, CachedResponse>,
) -> VaryIndexes {
    VaryIndexes {
        records: Cache::with_options(
            options(capacity, 16 << 10),
            IndexWeighter,
            DefaultHashBuilder::default(),
            DropVariants(engine.clone()),
        ),
        updates: (0..64).map(|_| Mutex::new(())).collect(),
    }
}

/// The pass memory of a store, holding `capacity` bytes.
pub(crate) fn passes(capacity: u64) -> Passes {
    Cache::with_options(
        options(capacity, 4 << 10),
        PassWeighter,
        DefaultHashBuilder::default(),
        Default::default(),
    )
}

impl Shared {
    /// Keeps the variant index in step with what was just stored under `key`.
    pub(crate) fn index_variant(&self, key: &CacheKey, vary: Option<&VaryValues>) {
        let base = key.base();
        let Some(vary) = vary else {
            // The resource no longer varies: its plain entry is found first from now on, and
            // the variants the record listed go with it (a record made if it varies again
            // would not list them, and an invalidation would miss them).
            let _update = self.vary_index.lock_for(&base);
            if let Some((_, index)) = self.vary_index.remove(&base) {
                for variant in index.variants.iter() {
                    self.engine.remove_equivalent(&base.with_variant(variant));
                }
            }
            return;
        };
        // The plain key would shadow the variants: a resource that now varies drops it.
        self.engine.remove_equivalent(&base);
        let names: Box<[HeaderName]> = vary.names().cloned().collect();
        let variant = vary.variant();
        // Records are replaced whole, never changed in place: quick_cache needs an item's
        // weight to stay what it was when inserted. The stripe lock makes concurrent stores of
        // two variants of one key both count; a plain `insert` makes room before it adds the
        // record, so the newest record is not the one evicted.
        let _update = self.vary_index.lock_for(&base);
        let (index, dropped) = match self.vary_index.get(&base) {
            Some(index) if index.names == names => {
                if index.variants.contains(&variant) {
                    return;
                }
                let mut index = VaryIndex::clone(&index);
                index.variants.push_back(variant);
                let evicted = (index.variants.len() > MAX_VARIANTS)
                    .then(|| index.variants.pop_front())
                    .flatten();
                (index, evicted.into_iter().collect())
            }
            // Other names: the old record's variants are keyed by other headers; none of them
            // is found again, so none is kept.
            // (A variant of the same values is the key just stored: kept.)
            earlier => {
                let dropped = earlier.map_or_else(Vec::new, |index| {
                    (index.variants.iter())
                        .filter(|old| **old != variant)
                        .cloned()
                        .collect()
                });
                let variants = VecDeque::from([variant]);
                (VaryIndex { names, variants }, dropped)
            }
        };
        self.vary_index.insert(base.to_owned(), Arc::new(index));
        for old in &dropped {
            self.engine.remove_equivalent(&base.with_variant(old));
        }
    }

    /// Removes a key's plain entry and every indexed variant.
    pub(crate) fn remove_all_variants(&self, base: KeyRef<'_>) -> bool {
        let mut removed = self.engine.purge_equivalent(&base);
        // The URL's key fences and purges every variant in the shared tier too.
        if self.engine.has_shared_tier() {
            self.engine.forget_shared(base.to_owned());
        }
        if let Some((_, index)) = self.vary_index.remove(&base) {
            for variant in index.variants.iter() {
                removed |= self.engine.purge_equivalent(&base.with_variant(variant));
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_divided_not_added_to() {
        for capacity in [0, 1, 4096, 64 << 10, 128 << 20, u64::MAX] {
            let budget = Budget::of(capacity);
            assert_eq!(
                budget.store as u128 + budget.vary_index as u128 + budget.passes as u128,
                capacity as u128
            );
        }
        let default = Budget::of(128 << 20);
        assert_eq!((default.vary_index, default.passes), (8 << 20, 1 << 20));
    }
}
