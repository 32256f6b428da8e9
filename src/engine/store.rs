//! The byte-bounded store, on quick_cache.

use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, OptionsBuilder, Weighter};

use super::entry::Entry;

/// Fixed cost charged per entry on top of the weigher's figure: the entry's deadlines, its `Arc`
/// and the store's own slot, so that many tiny values still fill the budget.
pub(crate) const ENTRY_OVERHEAD: u64 = 160;

#[derive(Clone, Copy, Debug)]
pub(crate) struct EntryWeighter;

impl<K, V> Weighter<K, Arc<Entry<V>>> for EntryWeighter {
    fn weight(&self, _key: &K, entry: &Arc<Entry<V>>) -> u64 {
        entry.weight
    }
}

/// Counts evictions made under memory pressure.
///
/// quick_cache also calls `on_evict` for the old value when a key is overwritten, so the count
/// is taken in `before_evict`, which only real evictions (and oversize inserts, which the
/// engine never makes) reach.
#[derive(Clone, Debug, Default)]
pub(crate) struct CountEvictions(pub(crate) Arc<AtomicU64>);

impl<K, V> Lifecycle<K, V> for CountEvictions {
    type RequestState = ();

    fn before_evict(&self, _state: &mut (), _key: &K, _val: &mut V) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

pub(crate) type Store<K, V> =
    Cache<K, Arc<Entry<V>>, EntryWeighter, DefaultHashBuilder, CountEvictions>;

/// Builds a store holding `capacity` bytes in which one entry of `largest_item` bytes fits.
///
/// quick_cache splits the budget into shards and rejects an item heavier than (almost) a
/// shard's share, so the shard count is chosen from the largest item we mean to keep.
pub(crate) fn build<K, V>(
    capacity: u64,
    largest_item: u64,
    evictions: CountEvictions,
) -> Store<K, V>
where
    K: Hash + Eq,
{
    let wanted = largest_item
        .saturating_add(ENTRY_OVERHEAD)
        .saturating_mul(11)
        / 10;
    let parallelism = std::thread::available_parallelism().map_or(4, |n| n.get());
    let max_shards = (parallelism * 4).next_power_of_two() as u64;
    let mut shards = 1u64;
    while shards * 2 <= max_shards && capacity / (shards * 2) >= wanted {
        shards *= 2;
    }
    let options = OptionsBuilder::new()
        .shards(shards as usize)
        .weight_capacity(capacity)
        .estimated_items_capacity((capacity / 4096).clamp(16, 1 << 20) as usize)
        .build()
        .expect("valid quick_cache options");
    Cache::with_options(
        options,
        EntryWeighter,
        DefaultHashBuilder::default(),
        evictions,
    )
}

/// The heaviest entry the store can hold without rejecting it (and dropping what was there).
pub(crate) fn max_entry_weight<K, V>(store: &Store<K, V>) -> u64
where
    K: Hash + Eq,
{
    // quick_cache admits items up to a little under a shard's capacity; keep a margin.
    store.shard_capacity() / 100 * 95
}
