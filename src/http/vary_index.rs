//! The `Vary` index: which request headers a key's responses vary on, and which variants are
//! stored.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use http::header::HeaderName;

use super::config::Shared;
use super::key::{CacheKey, KeyRef, VaryValues};

/// Most variants kept per key; storing one more drops the oldest.
pub(crate) const MAX_VARIANTS: usize = 32;

pub(crate) type VaryIndexes = quick_cache::sync::Cache<CacheKey, Arc<VaryIndex>>;

/// Which request headers a key's responses vary on, and which variants are stored.
#[derive(Debug)]
pub(crate) struct VaryIndex {
    pub(crate) names: Box<[HeaderName]>,
    pub(crate) variants: Mutex<VecDeque<Box<[u8]>>>,
}

impl Shared {
    /// Keeps the variant index in step with what was just stored under `key`.
    pub(crate) fn index_variant(&self, key: &CacheKey, vary: Option<&VaryValues>) {
        let base = key.base();
        let Some(vary) = vary else {
            // The resource no longer varies: its plain entry is found first from now on.
            self.vary_index.remove(&base);
            return;
        };
        // The plain key would shadow the variants: a resource that now varies drops it.
        self.engine.remove_equivalent(&base);
        let names: Box<[HeaderName]> = vary.names().cloned().collect();
        let index = match self.vary_index.get(&base) {
            Some(index) if index.names == names => index,
            _ => {
                let index = Arc::new(VaryIndex {
                    names,
                    variants: Mutex::new(VecDeque::new()),
                });
                self.vary_index.insert(base.to_owned(), Arc::clone(&index));
                index
            }
        };
        let variant = vary.variant();
        let evicted = {
            let mut variants = index.variants.lock().unwrap_or_else(|e| e.into_inner());
            if variants.contains(&variant) {
                None
            } else {
                variants.push_back(variant);
                (variants.len() > MAX_VARIANTS)
                    .then(|| variants.pop_front())
                    .flatten()
            }
        };
        if let Some(oldest) = evicted {
            self.engine.remove_equivalent(&base.with_variant(&oldest));
        }
    }

    /// Removes a key's plain entry and every indexed variant.
    pub(crate) fn remove_all_variants(&self, base: KeyRef<'_>) -> bool {
        let mut removed = self.engine.purge_equivalent(&base);
        if let Some((_, index)) = self.vary_index.remove(&base) {
            let variants = index.variants.lock().unwrap_or_else(|e| e.into_inner());
            for variant in variants.iter() {
                removed |= self.engine.purge_equivalent(&base.with_variant(variant));
            }
        }
        removed
    }
}
