//! The one path a value takes into the cache: the foreground load of a miss (coalesced with the
//! other misses of its key, stale-if-error on failure, its failure shared) and the background
//! refresh of a stale entry.
//!
//! The engine decides; a [`Caller`] loads and renders. [`SwrCache::get_or_load`] is one caller
//! (a closure and `Lookup`s), the HTTP adapter another (the inner service and responses), so
//! neither re-implements the flight loop, the counting or the fallbacks.

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::entry::{Entry, Loaded};
use super::inflight::{
    stored_by_another, wait, Failure, FlightLeader, Join, Landing, Partial, Publisher, Waited,
    Waiting,
};
use super::tier::TierClaim;
use super::TierWait;
use super::{CatchUnwind, Share, Stamp, SwrCache, WallClock};

/// The failure a panicking loader of `get_or_load` leaves its waiters: they panic too (as the
/// callers of a shared future do), rather than call the loader again one after another.
pub(crate) struct LoadPanicked(pub(crate) String);

/// How a load ended, as its caller tells the engine.
pub(crate) enum Outcome<K, V, A> {
    /// Store `loaded` under `key` (the flight's key, or a variant of it) and answer from it.
    Store {
        key: K,
        loaded: Loaded<V>,
        /// The stored value was confirmed by its source (an HTTP 304), not produced anew.
        revalidated: bool,
    },
    /// Answer with `answer` and store nothing: the others load on their own. `drop_stored`:
    /// what is stored under the flight's key may no longer be used either.
    Pass { answer: A, drop_stored: bool },
    /// Loaded, but it cannot be kept (too large): like `Pass`, yet a refresh counts it failed
    /// (the stale value stays and the key backs off).
    Unstored { answer: A, reason: String },
    /// The load failed. The callers that waited (and, with `remember`, later ones for a moment)
    /// get `shared`; this caller gets `answer` unless a stale-if-error value stands in.
    Failed {
        answer: A,
        shared: Option<Failure>,
        remember: bool,
        reason: String,
        /// The source could not be reached at all (a transport error): a value past its
        /// stale-if-error window may still stand in, as [`Caller::unreachable_until`] says.
        unreachable: bool,
    },
}

/// Whether a value another caller loaded may answer this one.
pub(crate) enum Accept<K> {
    Yes,
    /// Not this one, but the one under this key may (an HTTP variant): wait on that instead.
    Rekey(K),
    No,
}

/// How an answer from an entry came about.
pub(crate) enum Answered<'a> {
    /// Loaded by this caller; `stored` is false when the value was too large to keep.
    Loaded { stored: bool, revalidated: bool },
    /// Loaded by another caller this one waited for.
    Collapsed,
    /// Loaded by another cache, found in the shared tier.
    SharedTier,
    /// The load failed (`failure`, if it left one) and this stale value stands in.
    StaleIfError { failure: Option<&'a Failure> },
}

/// One caller of a foreground load: how it loads, what it accepts, how it renders.
pub(crate) trait Caller<K, V> {
    /// What the caller is answered with.
    type Answer;
    /// The load, owning what it needs (the caller is still asked questions while it runs).
    type Load: Future<Output = Outcome<K, V, Self::Answer>>;

    /// Whether this caller joins the key's flight (false: it loads alone and stores nothing
    /// others wait for).
    fn coalesces(&self) -> bool {
        true
    }

    /// Whether `value`, which another caller loaded under `key`, may answer this one.
    fn accepts(&self, _key: &K, _value: &V) -> Accept<K> {
        Accept::Yes
    }

    /// The answer from an entry.
    fn answer(&mut self, key: &K, entry: &Arc<Entry<V>>, how: Answered<'_>) -> Self::Answer;

    /// Another caller's failure as this caller's answer (`remembered`: from the failure
    /// memory, not a flight this caller waited for); `None` when it may not be: it loads.
    fn answer_failure(
        &mut self,
        key: &K,
        failure: &Failure,
        remembered: bool,
    ) -> Option<Self::Answer>;

    /// Another caller's load, still producing its answer, as this caller's answer (an HTTP
    /// response streamed as it is fetched); `None` (the default): wait for it to land.
    fn answer_streaming(&mut self, _key: &K, _partial: &Partial) -> Option<Self::Answer> {
        None
    }

    /// The answer from `entry`, another cache's copy found stale (inside its
    /// stale-while-revalidate window) in the shared tier and now stored here, with its one
    /// background refresh started through `cache` (see [`SwrCache::refresh`]). `None` (the
    /// default): this caller loads in the foreground instead.
    fn answer_stale(
        &mut self,
        _cache: &SwrCache<K, V>,
        _key: &K,
        _entry: &Arc<Entry<V>>,
    ) -> Option<Self::Answer> {
        None
    }

    /// The key of this caller's variant of `key`, once the caller knows `key` to vary (e.g.
    /// taught by the shared tier's read of `key`): looked for in the tier too. `None` (the
    /// default): none.
    fn variant_of(&self, _key: &K) -> Option<K> {
        None
    }

    /// Called before [`load`](Self::load) when this caller leads a new flight: the load may
    /// offer its waiters its answer while producing it through `publisher`.
    fn lead(&mut self, _publisher: Publisher<K, V>) {}

    /// How long the load may run while a stale-if-error value could answer instead.
    fn fallback_timeout(&self) -> Option<Duration> {
        None
    }

    /// Until when `entry`, past every window in which it may stand in for a failed load, may
    /// still stand in for a load that could not reach its source at all (a transport error, a
    /// timeout): RFC 9111 §4.2.4's stale response when disconnected. `None` (the default):
    /// never.
    fn unreachable_until(&self, _entry: &Entry<V>) -> Option<Stamp> {
        None
    }

    /// Whether `failure` (another caller's load, or one remembered) says its source could not
    /// be reached.
    fn unreachable(&self, _failure: &Failure) -> bool {
        false
    }

    /// What the waiters get when the load panics with `panic` (`None`: they compete again).
    fn panic_failure(&self, _panic: &(dyn std::any::Any + Send)) -> Option<Failure> {
        None
    }

    /// Starts the load. `existing`: the stored value past its window, to revalidate;
    /// `fallback`: it may stand in if the load fails; `leading`: others wait for this load.
    fn load(
        &mut self,
        key: &K,
        existing: Option<&Arc<Entry<V>>>,
        fallback: bool,
        leading: bool,
    ) -> Self::Load;
}

/// What a synchronous lookup found (see [`SwrCache::find`]).
pub(crate) enum Found<V> {
    /// Fresh: answer from it. `refresh_early`: the early refresh (XFetch) wants to run.
    Fresh {
        entry: Arc<Entry<V>>,
        refresh_early: bool,
    },
    /// Stale inside its window: answer from it and [`refresh`](SwrCache::refresh) it.
    Stale(Arc<Entry<V>>),
    /// Nothing to answer from; `expired` is a value past its window that may still be
    /// revalidated or stand in for a failing load.
    Miss { expired: Option<Arc<Entry<V>>> },
    /// An entry the caller does not accept (another variant, credentials).
    Refused(Arc<Entry<V>>),
}

/// Clears an entry's "refreshing" mark however its refresh task ends.
struct RefreshingMark<V>(Arc<Entry<V>>);

impl<V> Drop for RefreshingMark<V> {
    fn drop(&mut self) {
        self.0.refreshing.store(false, Ordering::Release);
    }
}

fn land<K: Hash + Eq + Clone, V>(leader: &mut Option<FlightLeader<K, V>>, landing: Landing<V>) {
    if let Some(leader) = leader.take() {
        leader.land(landing);
    }
}

/// Whether `entry` may answer for a failed load: inside its stale-if-error (or
/// stale-while-revalidate) window, or, when the source could not be reached, before the
/// caller's [`unreachable_until`](Caller::unreachable_until).
fn may_stand_in<K, V, C: Caller<K, V>>(
    caller: &C,
    entry: &Entry<V>,
    now: Stamp,
    unreachable: bool,
) -> bool {
    entry.usable_on_error_at(now)
        || (unreachable
            && caller
                .unreachable_until(entry)
                .is_some_and(|until| now < until))
}

impl<K, V> SwrCache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + fmt::Debug + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Looks `key` up and decides: fresh, stale or a miss, counting the hits. `accepts` says
    /// whether the stored value may answer this caller at all.
    // Always inlined: it is most of a hit, and the caller's `accepts` closure folds into it.
    #[inline(always)]
    pub(crate) fn find<Q>(&self, key: &Q, now: Stamp, accepts: impl FnOnce(&V) -> bool) -> Found<V>
    where
        Q: Hash + quick_cache::Equivalent<K> + fmt::Debug + ?Sized,
    {
        let Some(entry) = self.entry(key, now) else {
            return Found::Miss { expired: None };
        };
        if !accepts(entry.value()) {
            return Found::Refused(entry);
        }
        match entry.phase(now) {
            super::Phase::Fresh => {
                self.inner.counters.fresh_hits.inc();
                let refresh_early = self.wants_early_refresh(&entry, now);
                Found::Fresh {
                    entry,
                    refresh_early,
                }
            }
            super::Phase::Stale => {
                self.inner.counters.stale_hits.inc();
                self.alert_if_old(key, &entry, now);
                Found::Stale(entry)
            }
            super::Phase::Expired | super::Phase::Dead => Found::Miss {
                expired: Some(entry),
            },
        }
    }

    /// Starts the ONE background refresh of `entry` (stored under `key`) unless one runs, the
    /// key backs off, the breaker is open or a foreground load of the key is under way.
    /// `start` builds the refresh only once it is sure to run. The refresh leads the key's
    /// flight, so a miss arriving meanwhile waits for it instead of loading again. Returns
    /// whether a refresh of the key is running.
    pub(crate) fn refresh<F, Fut, A>(
        &self,
        key: &K,
        entry: &Arc<Entry<V>>,
        now: Stamp,
        start: F,
    ) -> bool
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Outcome<K, V, A>> + Send + 'static,
        A: Send + 'static,
    {
        if entry.refreshing.load(Ordering::Acquire) {
            // The common stale hit while the refresh runs: no lock, no hashing.
            return true;
        }
        let guard = match self.inner.refreshes.claim(key, now.instant()) {
            Ok(guard) => guard,
            Err(running) => return running,
        };
        let flight = match self.join(key) {
            Join::Leader(flight) => {
                flight.in_background();
                flight
            }
            // A foreground load is under way (it will store the new value), or one failed a
            // moment ago (the source is not asked again so soon).
            Join::Waiter(_) | Join::Backup(..) | Join::Failed(_) => {
                guard.cancel();
                return false;
            }
        };
        let refresh = start();
        entry.refreshing.store(true, Ordering::Release);
        let mark = RefreshingMark(Arc::clone(entry));
        let cache = self.clone();
        let flight_key = key.clone();
        // With a shared tier, another cache may have refreshed the key already.
        let stale_since =
            (self.inner.tier.as_ref()).map(|_| entry.lifetime(&WallClock::now()).stored_at);
        self.spawn_refresh(key, guard, async move {
            let _mark = mark;
            let mut claim = None;
            if let (Some(than), Some(tier)) = (stale_since, &cache.inner.tier) {
                // The lock first, then the read: a cache that refreshed the key and let go
                // between a read and a claim would otherwise be refreshed after once more.
                let mut held = TierClaim::ask(tier, &flight_key).await;
                if !held.is_held_elsewhere() {
                    if let Some(fresher) = cache.fresh_in_tier(&flight_key, Some(than)).await {
                        let stored =
                            cache.store_fenced(flight_key, &fresher, Some(&flight), 0, Share::No);
                        flight.land(Landing::Stored(fresher));
                        return Ok(stored);
                    }
                } else {
                    // Another cache refreshes it: take its value rather than ask the source too.
                    match cache.wait_in_tier(&flight_key, Some(than)).await {
                        TierWait::Found(fresher) => {
                            let stored = cache.store_fenced(
                                flight_key,
                                &fresher,
                                Some(&flight),
                                0,
                                Share::No,
                            );
                            flight.land(Landing::Stored(fresher));
                            return Ok(stored);
                        }
                        // Its holder let go without a value: this cache refreshes.
                        TierWait::Claimed(taken) => held = taken,
                        // Its holder went quiet: a later stale hit asks again (its lease ends).
                        TierWait::GaveUp => {
                            flight.land(Landing::NotStored);
                            return Ok(false);
                        }
                    }
                }
                claim = Some(held);
            }
            let outcome = refresh.await;
            cache.land_refresh(flight_key, flight, outcome, claim)
        });
        true
    }

    /// Stores (or not) what a refresh produced and tells the flight; `Err` is a failure,
    /// `Ok(false)` a value an invalidation kept out (neither a success nor a failure).
    fn land_refresh<A>(
        &self,
        flight_key: K,
        flight: FlightLeader<K, V>,
        outcome: Outcome<K, V, A>,
        claim: Option<TierClaim<K, V>>,
    ) -> Result<bool, String> {
        match outcome {
            Outcome::Store { key, loaded, .. } => {
                let (entry, fits) = self.entry_for(&key, loaded);
                if !fits {
                    // The misses waiting for it take it (see `load_leading`).
                    flight.land(Landing::Stored(entry));
                    // Keep the stale value rather than lose it to one we cannot hold.
                    return Err("value heavier than the largest entry".to_owned());
                }
                let stored = self.store_fenced(key, &entry, Some(&flight), 0, Share::Yes(claim));
                flight.land(Landing::Stored(entry));
                Ok(stored)
            }
            Outcome::Pass { drop_stored, .. } => {
                flight.land(Landing::NotStored);
                if drop_stored {
                    // The source no longer lets this be cached: drop the old copy.
                    self.remove_equivalent(&flight_key);
                    tracing::debug!(key = ?flight_key, "refreshed value is not cacheable; entry removed");
                }
                Ok(true)
            }
            Outcome::Unstored { reason, .. } => {
                flight.land(Landing::NotStored);
                Err(format!("not stored: {reason}"))
            }
            Outcome::Failed {
                shared,
                remember,
                reason,
                ..
            } => {
                flight.land(Landing::Failed {
                    failure: shared,
                    remember,
                });
                Err(reason)
            }
        }
    }

    /// The foreground load of a miss: joins the key's flight (or waits on it, or takes a
    /// failure remembered a moment ago), loads when leading, and answers through `caller`.
    ///
    /// Past the lock timeout, one waiter starts another attempt and everyone takes whichever
    /// lands first; loads that keep failing hand nothing to their waiters, so a waiter that has
    /// waited a lock timeout loads on its own.
    pub(crate) async fn load_with<C: Caller<K, V>>(
        &self,
        key: K,
        mut existing: Option<Arc<Entry<V>>>,
        mut caller: C,
    ) -> C::Answer {
        let mut key = key;
        let mut leader = None;
        let mut earlier = None;
        if caller.coalesces() {
            let mut rekeyed = false;
            let mut timed_out = false;
            // Cleared once this caller declined a streaming answer: it waits for the landing.
            let mut take_streaming = true;
            let give_up_at = Instant::now() + self.inner.lock_timeout;
            loop {
                let join = if timed_out {
                    self.rejoin(&key)
                } else {
                    self.join(&key)
                };
                timed_out = false;
                match join {
                    Join::Leader(guard) => {
                        leader = Some(guard);
                        break;
                    }
                    Join::Backup(guard, attempts) => {
                        leader = Some(guard);
                        earlier = Some(attempts);
                        break;
                    }
                    // The key's last load failed a moment ago: its failure is the answer,
                    // unless a stale value may stand in.
                    Join::Failed(failure) => {
                        let reason = "a load failed a moment ago";
                        self.look_again(&key, &mut existing, &caller);
                        let unreachable = caller.unreachable(&failure);
                        if let Some(answer) = self.stale_on_error(
                            &key,
                            existing.as_ref(),
                            (Some(&failure), unreachable),
                            &mut caller,
                            reason,
                        ) {
                            return answer;
                        }
                        match caller.answer_failure(&key, &failure, true) {
                            Some(answer) => {
                                self.inner.counters.failure_hits.inc();
                                return answer;
                            }
                            None => break,
                        }
                    }
                    // A stale copy stored here since this caller looked (another cache's,
                    // from the shared tier) answers it at once, as it answers those who
                    // find it, rather than the refresh it would wait for.
                    Join::Waiter(waiting) => {
                        if let Some(entry) = self.stale_stored(&key, &existing, &caller) {
                            if let Some(answer) = caller.answer_stale(self, &key, &entry) {
                                self.inner.counters.stale_hits.inc();
                                return answer;
                            }
                            break;
                        }
                        match wait(waiting, take_streaming).await {
                            Waited::Streaming(partial) => {
                                match caller.answer_streaming(&key, &partial) {
                                    Some(answer) => {
                                        self.inner.counters.collapsed.inc();
                                        tracing::debug!(key = ?key, status = "collapsed", "answered by another caller's load as it streams");
                                        return answer;
                                    }
                                    None => take_streaming = false,
                                }
                            }
                            Waited::Stored(entry) => match caller.accepts(&key, entry.value()) {
                                Accept::Yes => {
                                    self.inner.counters.collapsed.inc();
                                    tracing::debug!(key = ?key, status = "collapsed", "answered by another caller's load");
                                    return caller.answer(&key, &entry, Answered::Collapsed);
                                }
                                // Another variant: now that the value is known to vary, wait on
                                // (or lead) this caller's variant instead of loading alone.
                                Accept::Rekey(variant) if !rekeyed => {
                                    key = variant;
                                    rekeyed = true;
                                }
                                Accept::Rekey(_) | Accept::No => break,
                            },
                            Waited::Failed(failure) => {
                                // One load failed for every caller that waited for it.
                                let reason = "the load waited for failed";
                                self.look_again(&key, &mut existing, &caller);
                                let unreachable =
                                    failure.as_ref().is_some_and(|f| caller.unreachable(f));
                                if let Some(answer) = self.stale_on_error(
                                    &key,
                                    existing.as_ref(),
                                    (failure.as_ref(), unreachable),
                                    &mut caller,
                                    reason,
                                ) {
                                    return answer;
                                }
                                if let Some(failure) = &failure {
                                    // Counted too when the answer is the leader's panic,
                                    // resumed here.
                                    let counted = CollapsedOnUnwind(&self.inner.counters.collapsed);
                                    let answer = caller.answer_failure(&key, failure, false);
                                    std::mem::forget(counted);
                                    if let Some(answer) = answer {
                                        self.inner.counters.collapsed.inc();
                                        return answer;
                                    }
                                }
                                if Instant::now() >= give_up_at {
                                    break;
                                }
                            }
                            // Compete again: one of the waiters becomes the leader.
                            Waited::Abandoned => {}
                            // The load is slower than the lock timeout: one waiter starts another.
                            Waited::TimedOut => timed_out = true,
                            // Loaded but not stored: load alone, outside the flight.
                            Waited::NotStored => break,
                        }
                    }
                }
            }
        }
        self.load_leading(key, existing, &mut caller, leader, earlier)
            .await
    }

    /// Loads (leading the flight, a backup attempt of it, or alone) and answers.
    async fn load_leading<C: Caller<K, V>>(
        &self,
        key: K,
        mut existing: Option<Arc<Entry<V>>>,
        caller: &mut C,
        mut leader: Option<FlightLeader<K, V>>,
        earlier: Option<Waiting<V>>,
    ) -> C::Answer {
        // `unreachable`: for a load that could not reach its source (a timeout too), which a
        // value past its stale-if-error window may still answer (see `may_stand_in`).
        let usable = |existing: &Option<Arc<Entry<V>>>, caller: &C, unreachable: bool| {
            existing
                .as_ref()
                .filter(|entry| may_stand_in(caller, entry, Stamp::now(), unreachable))
                .cloned()
        };
        // A load outside any flight is fenced by any invalidation from now on.
        let epoch = self.inner.flights.epoch();
        // Before the loader: another cache sharing the tier may have loaded it, or be loading
        // it under the tier's lock (then its value is awaited, up to the lock timeout).
        let mut claim = None;
        if let (Some(tier), None) = (&self.inner.tier, &earlier) {
            let than = (existing.as_ref()).map(|e| e.lifetime(&WallClock::now()).stored_at);
            // The claim below tells the tier how long ago this read was sent: a write since
            // then, by another cache that let go before the claim, is read, not loaded again.
            let read_at = Instant::now();
            let mut found = self.copy_in_tier(&key, than).await;
            // Where a copy found is kept here: the key, or the variant of it that the read
            // has just shown the caller (another cache stored the key's variants).
            let mut found_key = None;
            if found.is_none() {
                if let Some(variant) = caller.variant_of(&key) {
                    found = self.copy_in_tier(&variant, None).await;
                    found_key = Some(variant);
                }
            }
            let found_key = found_key.unwrap_or_else(|| key.clone());
            // Another cache's copy past its freshness is what this cache would have had in
            // memory: stale inside its window, it is answered at once while one refresh runs;
            // past it, it is kept here too (the waiters of this load find it if the load
            // fails) and may be revalidated or stand in for a failing load.
            let stale = found.take_if(|copy| copy.phase(Stamp::now()) != super::Phase::Fresh);
            if let Some(copy) =
                stale.filter(|copy| matches!(caller.accepts(&key, copy.value()), Accept::Yes))
            {
                let stored =
                    self.store_fenced(found_key.clone(), &copy, leader.as_ref(), epoch, Share::No);
                if stored && copy.phase(Stamp::now()) == super::Phase::Stale {
                    // The flight ends without a value: its waiters find the copy stored here.
                    land(&mut leader, Landing::NotStored);
                    if let Some(answer) = caller.answer_stale(self, &key, &copy) {
                        self.inner.counters.stale_hits.inc();
                        return answer;
                    }
                }
                existing = Some(copy);
            }
            if found.is_none() {
                let mut held = TierClaim::ask_after_read(tier, &key, read_at).await;
                // The newest copy known: a stale one just read from the tier is not the value
                // the holder of the lock is loading.
                let than = (existing.as_ref()).map(|e| e.lifetime(&WallClock::now()).stored_at);
                if held.is_written() {
                    // Another cache loaded it and let go between the read and the claim.
                    found = self.copy_in_tier(&key, super::past_known(than)).await;
                    if found.is_none() {
                        // What it wrote is of no use here (another variant of the family,
                        // too heavy): the lock, as any miss asks it.
                        held = TierClaim::ask(tier, &key).await;
                    }
                }
                if held.is_held_elsewhere() {
                    match self.wait_in_tier(&key, than).await {
                        TierWait::Found(entry) => found = Some(entry),
                        TierWait::Claimed(taken) => held = taken,
                        TierWait::GaveUp => {}
                    }
                }
                claim = Some(held);
            }
            if let Some(entry) = found {
                if let Accept::Yes = caller.accepts(&key, entry.value()) {
                    self.inner.counters.shared_tier_hits.inc();
                    self.store_fenced(found_key, &entry, leader.as_ref(), epoch, Share::No);
                    land(&mut leader, Landing::Stored(Arc::clone(&entry)));
                    return caller.answer(&key, &entry, Answered::SharedTier);
                }
            }
        }
        // Every caller lands in exactly one request counter. Without a value to fall back on,
        // this is a miss whatever happens next (even if the caller goes away): counted now.
        // With one, the answer may be stale-if-error instead; a backup attempt may be answered
        // by an earlier one (collapsed): counted with the outcome.
        let miss_counted = usable(&existing, caller, true).is_none() && earlier.is_none();
        if miss_counted {
            self.inner.counters.misses.inc();
        }
        let count_miss = || {
            if !miss_counted {
                self.inner.counters.misses.inc();
            }
        };
        let fallback = usable(&existing, caller, false).is_some();
        if earlier.is_none() {
            // A backup attempt does not stream: an earlier attempt's value may still win.
            if let Some(publisher) = leader.as_ref().and_then(FlightLeader::publisher) {
                caller.lead(publisher);
            }
        }
        let load = caller.load(&key, existing.as_ref(), fallback, leader.is_some());
        let mut load = std::pin::pin!(CatchUnwind::new(load));
        // With a value to fall back on, the load gets the caller's fallback timeout (a load cut
        // at it did not reach its source: a value usable only then counts too); without one, its
        // own answer is awaited (there is nothing else to give).
        let limit = usable(&existing, caller, true).and(caller.fallback_timeout());
        let deadline = limit.map(|limit| Instant::now() + limit);
        // `Some(None)`: the load was cut at the deadline.
        let mut first = None;
        if let Some(earlier) = earlier {
            // A backup attempt still takes an earlier attempt's value when that comes first.
            let own = async {
                match deadline {
                    Some(at) => tokio::time::timeout_at(at, load.as_mut()).await.ok(),
                    None => Some(load.as_mut().await),
                }
            };
            tokio::select! {
                biased;
                outcome = own => first = Some(outcome),
                entry = stored_by_another(earlier) => {
                    if let Accept::Yes = caller.accepts(&key, entry.value()) {
                        self.inner.counters.collapsed.inc();
                        tracing::debug!(key = ?key, status = "collapsed", "answered by an earlier attempt");
                        return caller.answer(&key, &entry, Answered::Collapsed);
                    }
                }
            }
            if first.is_none() {
                count_miss();
            }
        }
        let first = match first {
            Some(first) => first,
            None => match deadline {
                Some(at) => tokio::time::timeout_at(at, load.as_mut()).await.ok(),
                None => Some(load.as_mut().await),
            },
        };
        let outcome = match first {
            Some(outcome) => outcome,
            // Only while the value may still stand in: once its window has closed, the load's
            // own answer is awaited after all.
            None => match usable(&existing, caller, true) {
                Some(fallback) => {
                    land(&mut leader, Landing::FAILED);
                    self.inner.counters.loads_failed.inc();
                    let timeout_ms = limit.map_or(0, |limit| limit.as_millis() as u64);
                    let cache = &self.inner.name;
                    tracing::warn!(%cache, key = ?key, timeout_ms, "the load did not finish in time");
                    self.inner.counters.stale_if_error.inc();
                    self.alert_if_old(&key, &fallback, Stamp::now());
                    return caller.answer(
                        &key,
                        &fallback,
                        Answered::StaleIfError { failure: None },
                    );
                }
                None => load.await,
            },
        };
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(panic) => {
                // A panicking load with a usable stale value is a failure like any other;
                // without one, the panic is the load's own answer and goes on up.
                self.inner.counters.loads_failed.inc();
                let failure = caller.panic_failure(&*panic);
                // A panic is shared with the waiters, never remembered for later callers.
                let remember = !failure.as_ref().is_some_and(|f| f.is::<LoadPanicked>());
                land(&mut leader, Landing::Failed { failure, remember });
                let reason = "the load panicked";
                if let Some(answer) =
                    self.stale_on_error(&key, existing.as_ref(), (None, false), caller, reason)
                {
                    return answer;
                }
                count_miss();
                std::panic::resume_unwind(panic)
            }
        };
        match outcome {
            Outcome::Store {
                key: store_key,
                loaded,
                revalidated,
            } => {
                count_miss();
                let (entry, fits) = self.entry_for(&store_key, loaded);
                if fits {
                    let share = Share::Yes(claim);
                    self.store_fenced(store_key, &entry, leader.as_ref(), epoch, share);
                }
                // Too heavy to keep, the value still answers the callers that waited for it, as
                // a fenced one does: one load per key, not one per waiter.
                land(&mut leader, Landing::Stored(Arc::clone(&entry)));
                let how = Answered::Loaded {
                    stored: fits,
                    revalidated,
                };
                caller.answer(&key, &entry, how)
            }
            Outcome::Pass {
                answer,
                drop_stored,
            } => {
                count_miss();
                land(&mut leader, Landing::NotStored);
                if drop_stored {
                    self.remove_equivalent(&key);
                }
                answer
            }
            Outcome::Unstored { answer, reason } => {
                count_miss();
                land(&mut leader, Landing::NotStored);
                tracing::debug!(key = ?key, %reason, "loaded value not stored");
                answer
            }
            Outcome::Failed {
                answer,
                shared,
                remember,
                reason,
                unreachable,
            } => {
                self.inner.counters.loads_failed.inc();
                let failure = shared.clone();
                land(
                    &mut leader,
                    Landing::Failed {
                        failure: shared,
                        remember,
                    },
                );
                if let Some(answer) = self.stale_on_error(
                    &key,
                    existing.as_ref(),
                    (failure.as_ref(), unreachable),
                    caller,
                    &reason,
                ) {
                    return answer;
                }
                count_miss();
                answer
            }
        }
    }

    /// For a caller of a cache with a shared tier that found nothing stored when it began: the
    /// entry stored for it since, if it is stale inside its window.
    fn stale_stored<C: Caller<K, V>>(
        &self,
        key: &K,
        existing: &Option<Arc<Entry<V>>>,
        caller: &C,
    ) -> Option<Arc<Entry<V>>> {
        let mut stored = None;
        self.look_again(key, &mut stored, caller);
        stored
            .filter(|entry| existing.is_none() && entry.phase(Stamp::now()) == super::Phase::Stale)
    }

    /// For a caller that found nothing stored when it began: what is stored for it now (the
    /// leader it waited for may have kept another cache's copy from the shared tier), so that
    /// it may stand in for the failed load as it does for the leader.
    fn look_again<C: Caller<K, V>>(
        &self,
        key: &K,
        existing: &mut Option<Arc<Entry<V>>>,
        caller: &C,
    ) {
        if existing.is_some() || self.inner.tier.is_none() {
            return;
        }
        let now = Stamp::now();
        let stored = self.entry(key, now).or_else(|| {
            caller
                .variant_of(key)
                .and_then(|variant| self.entry(&variant, now))
        });
        *existing =
            stored.filter(|entry| matches!(caller.accepts(key, entry.value()), Accept::Yes));
    }

    /// The stale value as the answer to a failed load, if it may stand in (stale-if-error, or
    /// past it when `failed.1` says the source could not be reached: see [`may_stand_in`]).
    fn stale_on_error<C: Caller<K, V>>(
        &self,
        key: &K,
        existing: Option<&Arc<Entry<V>>>,
        (failure, unreachable): (Option<&Failure>, bool),
        caller: &mut C,
        reason: &str,
    ) -> Option<C::Answer> {
        let now = Stamp::now();
        let entry = existing.filter(|entry| may_stand_in(caller, entry, now, unreachable))?;
        self.inner.counters.stale_if_error.inc();
        self.alert_if_old(key, entry, now);
        // The caller warns as it renders (it knows what the failure was); this says why.
        tracing::debug!(key = ?key, status = "stale-if-error", reason, "a stale value stands in for a failed load");
        Some(caller.answer(key, entry, Answered::StaleIfError { failure }))
    }
}

/// Counts a waiter as collapsed when it unwinds with the panic of the load it waited for.
struct CollapsedOnUnwind<'a>(&'a super::stats::Counter);

impl Drop for CollapsedOnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.inc();
        }
    }
}
