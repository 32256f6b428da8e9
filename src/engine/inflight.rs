//! Who is talking to the origin for a key right now.
//!
//! Two sets, because two kinds of work happen (PEERS: "two dedup paths"):
//! - [`Refreshes`]: background refreshes of stale entries. Nobody waits on them; a claim only
//!   stops a second refresh from starting. A failed refresh pushes the next attempt out
//!   (backoff), so a failing origin is not hit by every stale request.
//! - [`Flights`]: foreground loads on a miss. The first caller leads; the others wait for its
//!   result. A leader that is dropped (its client went away, or it panicked) wakes its waiters,
//!   who then compete again: a dropped leader never wedges a key.
//!
//! Both release their claim in `Drop`, so every way a task can end releases it.

use std::collections::HashMap as StdHashMap;

/// The in-flight maps hash keys with quick_cache's fast hasher, not SipHash: a stale hit
/// whose refresh runs hashes the key once under the lock, and SipHash over host + target was
/// most of that hit's extra cost (callgrind).
type HashMap<K, V> = StdHashMap<K, V, quick_cache::DefaultHashBuilder>;
use std::any::Any;
use std::hash::Hash;
use std::time::Duration;

use super::entry::Entry;
// std's and tokio's, or the model checker's under `--cfg shuttle` (see `sync`); `tokio` there
// mirrors the paths named in full below (`tokio::time::timeout_at`).
use super::sync::{tokio, watch, Arc, Instant, Mutex, MutexGuard};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave the maps inconsistent (each critical
    // section is a single insert/remove), so poisoning is ignored.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How long to wait before refreshing a key again after `failures` consecutive failures.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub(crate) base: Duration,
    pub(crate) max: Duration,
}

impl Backoff {
    /// Exponential, capped, with "equal jitter" (between half and all of the step), so keys
    /// that failed together do not retry together.
    pub(crate) fn delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(20);
        let step = self.base.saturating_mul(1u32 << exp).min(self.max);
        step / 2 + step.mul_f64(fastrand::f64() / 2.0)
    }
}

/// Above this many keys with refresh state, stale backoff records are pruned.
const MAX_BACKOFF_KEYS: usize = 65_536;

/// Pauses every refresh after `threshold` consecutive failures (across keys) for `cooldown`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Breaker {
    pub(crate) threshold: u32,
    pub(crate) cooldown: Duration,
}

#[derive(Debug, Default)]
struct RefreshState {
    running: bool,
    failures: u32,
    retry_at: Option<Instant>,
    /// The running refresh's claim: a fence gives the key out again, and the fenced refresh's
    /// guard, holding an older claim, then leaves the key's state alone.
    claim: u64,
}

#[derive(Debug)]
struct RefreshBook<K> {
    keys: HashMap<K, RefreshState>,
    /// The last claim handed out.
    claims: u64,
    consecutive_failures: u32,
    paused_until: Option<Instant>,
    closed: bool,
}

/// The shared in-flight set of background refreshes, with per-key backoff and a circuit
/// breaker across keys.
#[derive(Debug)]
pub(crate) struct Refreshes<K> {
    /// The cache's name, for the circuit breaker's log event.
    name: std::sync::Arc<str>,
    book: Mutex<RefreshBook<K>>,
    backoff: Backoff,
    breaker: Option<Breaker>,
}

impl<K: Hash + Eq + Clone> Refreshes<K> {
    pub(crate) fn new(backoff: Backoff, breaker: Option<Breaker>, name: &str) -> Self {
        Self {
            name: name.into(),
            book: Mutex::new(RefreshBook {
                keys: HashMap::default(),
                claims: 0,
                consecutive_failures: 0,
                paused_until: None,
                closed: false,
            }),
            backoff,
            breaker,
        }
    }

    /// Claims the refresh of `key`, unless one is running, the key is backing off, the breaker
    /// is open, or refreshes are shut down; on refusal, tells whether a refresh of the key is
    /// running (one lock for a stale hit, not two).
    pub(crate) fn claim(self: &Arc<Self>, key: &K, now: Instant) -> Result<RefreshGuard<K>, bool> {
        let mut book = lock(&self.book);
        let running = book.keys.get(key).is_some_and(|s| s.running);
        if book.closed || book.paused_until.is_some_and(|until| now < until) {
            return Err(running);
        }
        book.claims = book.claims.wrapping_add(1);
        let claim = book.claims;
        match book.keys.get_mut(key) {
            Some(state) => {
                if state.running || state.retry_at.is_some_and(|at| now < at) {
                    return Err(state.running);
                }
                state.running = true;
                state.claim = claim;
            }
            None => {
                book.keys.insert(
                    key.clone(),
                    RefreshState {
                        running: true,
                        claim,
                        ..RefreshState::default()
                    },
                );
            }
        }
        Ok(RefreshGuard {
            refreshes: Arc::clone(self),
            key: Some(key.clone()),
            claim,
        })
    }

    /// Gives the refreshes of keys matching `fenced` out again: an invalidation fenced them
    /// (they store nothing), so the next stale hit starts one that may (a soft purge asks for
    /// exactly that). The fenced ones run on; their end no longer touches the key.
    pub(crate) fn fence_where(&self, fenced: impl Fn(&K) -> bool) {
        let mut book = lock(&self.book);
        book.keys.retain(|key, state| {
            if state.running && fenced(key) {
                state.running = false;
                // Nothing left to remember of a key without failures.
                return state.failures > 0;
            }
            true
        });
    }

    /// Fences the refresh of one key (see [`fence_where`](Self::fence_where)).
    pub(crate) fn fence<Q>(&self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut book = lock(&self.book);
        if let Some(state) = book.keys.get_mut(key) {
            state.running = false;
            if state.failures == 0 {
                book.keys.remove(key);
            }
        }
    }

    /// Whether [`claim`](Self::claim) would grant the refresh of `key` now.
    pub(crate) fn may_start(&self, key: &K, now: Instant) -> bool {
        let book = lock(&self.book);
        !book.closed
            && book.paused_until.is_none_or(|until| now >= until)
            && book
                .keys
                .get(key)
                .is_none_or(|state| !state.running && state.retry_at.is_none_or(|at| now >= at))
    }

    pub(crate) fn is_running<Q>(&self, key: &Q) -> bool
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        lock(&self.book).keys.get(key).is_some_and(|s| s.running)
    }

    /// Forgets a key's failures (its origin just answered well on another path).
    pub(crate) fn reset(&self, key: &K) {
        let mut book = lock(&self.book);
        if book.keys.get(key).is_some_and(|s| !s.running) {
            book.keys.remove(key);
        }
    }

    /// Number of keys with a refresh running.
    pub(crate) fn running(&self) -> usize {
        lock(&self.book).keys.values().filter(|s| s.running).count()
    }

    /// Whether the circuit breaker is pausing refreshes at `now`.
    pub(crate) fn paused(&self, now: Instant) -> bool {
        lock(&self.book)
            .paused_until
            .is_some_and(|until| now < until)
    }

    /// Stops new refreshes from starting (graceful shutdown).
    pub(crate) fn close(&self) {
        lock(&self.book).closed = true;
    }

    fn release(&self, key: &K, claim: u64, failed: bool) {
        let mut book = lock(&self.book);
        if book
            .keys
            .get(key)
            .is_none_or(|s| !s.running || s.claim != claim)
        {
            // Fenced (the key was given out again, or has since ended): its verdict is moot.
            return;
        }
        if !failed {
            book.keys.remove(key);
            book.consecutive_failures = 0;
            return;
        }
        let now = Instant::now();
        if book.keys.len() > MAX_BACKOFF_KEYS {
            // Keys that failed long ago and were never asked for again: forget them.
            book.keys
                .retain(|_, s| s.running || s.retry_at.is_some_and(|at| at > now));
        }
        if let Some(state) = book.keys.get_mut(key) {
            state.running = false;
            state.failures = state.failures.saturating_add(1);
            state.retry_at = Some(now + self.backoff.delay(state.failures));
        }
        book.consecutive_failures = book.consecutive_failures.saturating_add(1);
        if let Some(breaker) = self.breaker {
            if breaker.threshold > 0 && book.consecutive_failures >= breaker.threshold {
                book.consecutive_failures = 0;
                book.paused_until = Some(now + breaker.cooldown);
                tracing::warn!(
                    cache = %self.name,
                    failures = breaker.threshold,
                    cooldown = ?breaker.cooldown,
                    "refreshes keep failing: pausing all background refreshes (circuit open)"
                );
            }
        }
    }
}

/// The claim on one background refresh; dropping it releases the key.
#[derive(Debug)]
pub(crate) struct RefreshGuard<K: Hash + Eq + Clone> {
    refreshes: Arc<Refreshes<K>>,
    key: Option<K>,
    claim: u64,
}

impl<K: Hash + Eq + Clone> RefreshGuard<K> {
    /// Releases the key without a verdict (the refresh did not run: a load was under way).
    pub(crate) fn cancel(mut self) {
        if let Some(key) = self.key.take() {
            let mut book = lock(&self.refreshes.book);
            let claim = self.claim;
            if let Some(state) = (book.keys.get_mut(&key)).filter(|s| s.running && s.claim == claim)
            {
                state.running = false;
                if state.failures == 0 {
                    book.keys.remove(&key);
                }
            }
        }
    }

    /// Releases the key, recording whether the refresh failed (which starts a backoff).
    pub(crate) fn finish(mut self, failed: bool) {
        if let Some(key) = self.key.take() {
            self.refreshes.release(&key, self.claim, failed);
        }
    }
}

impl<K: Hash + Eq + Clone> Drop for RefreshGuard<K> {
    fn drop(&mut self) {
        // Reached without `finish` only when the task died (panic, runtime shutdown): a failure.
        if let Some(key) = self.key.take() {
            self.refreshes.release(&key, self.claim, true);
        }
    }
}

/// A load's failure as its waiters get it: the adapter's own type behind `Any` (the engine's
/// `Arc<E>`, the HTTP layer's origin answer), so that one failure answers every caller.
pub(crate) type Failure = Arc<dyn Any + Send + Sync>;

/// A load's answer while it is still being produced (the HTTP layer's streaming fill), which
/// its waiters may take before the load lands (see [`Publisher`]).
pub(crate) type Partial = Arc<dyn Any + Send + Sync>;

/// How a foreground load ended, as its waiters see it.
#[derive(Debug)]
pub(crate) enum Landing<V> {
    /// Still running.
    Pending,
    /// Still running, with an answer waiters may take as it is produced (they may also wait
    /// for the landing that follows).
    Streaming(Partial),
    /// Loaded: waiters answer from this entry (stored, unless an invalidation fenced the load
    /// or the value was too heavy to keep).
    Stored(Arc<Entry<V>>),
    /// Loaded, but nothing was stored: each waiter loads itself.
    NotStored,
    /// The load failed. Waiters serve stale-if-error if they can, else take `failure` if there
    /// is one (else they compete again); `remember` keeps it as the key's answer for the
    /// flights' failure memory.
    Failed {
        failure: Option<Failure>,
        remember: bool,
    },
}

impl<V> Landing<V> {
    /// A failure nobody else can be answered with.
    pub(crate) const FAILED: Self = Self::Failed {
        failure: None,
        remember: false,
    };
}

/// Most keys whose last failure is remembered; past this, failures go unremembered.
const MAX_REMEMBERED_FAILURES: usize = 1024;

/// The shared set of foreground loads (request coalescing), with the failures of recent ones.
///
/// One flight per key, with one channel its waiters listen on. A load slower than the lock
/// timeout does not set every waiter loose on the origin: once the flight's youngest attempt
/// is older than the lock timeout, ONE waiter may start another attempt ([`Flights::rejoin`]),
/// and every waiter (that one included) takes whichever attempt lands first. So a slow origin
/// sees at most one more call per lock timeout per key, and nobody waits longer than the
/// fastest attempt (Varnish's waiting list waits for the one fetch; this bounds a hung one).
///
/// A failed load answers its waiters with its failure, and for `remember_failures` after it
/// every new caller too ([`Join::Failed`]), so a failing origin gets one call per key, not one
/// per caller.
///
/// Invalidations fence loads: [`Flights::fence`] takes a key's flight out of the set, so a later
/// caller starts a new one, and a fenced load may no longer store
/// ([`FlightLeader::store_if_current`]).
#[derive(Debug)]
pub(crate) struct Flights<K, V> {
    book: Mutex<FlightBook<K, V>>,
    remember_failures: Duration,
}

#[derive(Debug)]
struct FlightBook<K, V> {
    flights: HashMap<K, Flight<V>>,
    failures: HashMap<K, Remembered>,
    /// When the remembered failures are next swept of expired ones (one sweep per
    /// `remember_failures`, at the end of a load): a burst of failures for distinct keys is
    /// not kept past the next load after it expired.
    sweep_at: Option<Instant>,
    /// Bumped by every fence: a load outside any flight stores only if it has not moved.
    epoch: u64,
}

#[derive(Debug)]
struct Remembered {
    failure: Failure,
    until: Instant,
}

#[derive(Debug)]
struct Flight<V> {
    tx: watch::Sender<Landing<V>>,
    /// Attempts under way.
    running: usize,
    /// When the youngest attempt started.
    youngest: Instant,
    /// A background refresh's flight (not a foreground load).
    background: bool,
}

/// The outcome of joining a flight.
pub(crate) enum Join<K: Hash + Eq + Clone, V> {
    /// The caller loads; waiters hear from its guard.
    Leader(FlightLeader<K, V>),
    /// Someone else loads; wait on this.
    Waiter(Waiting<V>),
    /// The flight's attempts are older than the lock timeout: the caller makes one more, and
    /// should still take an earlier attempt's answer if it lands first.
    Backup(FlightLeader<K, V>, Waiting<V>),
    /// A load of the key failed a moment ago: this is its failure, the answer for now.
    Failed(Failure),
}

/// A waiter's view of a flight.
#[derive(Debug)]
pub(crate) struct Waiting<V> {
    rx: watch::Receiver<Landing<V>>,
    /// When the caller may start another attempt of its own (see [`Flights::rejoin`]).
    another_attempt_at: Instant,
}

/// What a waiter learned.
#[derive(Debug)]
pub(crate) enum Waited<V> {
    Stored(Arc<Entry<V>>),
    NotStored,
    Failed(Option<Failure>),
    /// The load is still running and offers its answer as it is produced.
    Streaming(Partial),
    /// The leader went away without an answer: compete again.
    Abandoned,
    /// The lock timeout passed: [`Flights::rejoin`] says whether to start another attempt.
    TimedOut,
}

impl<K: Hash + Eq + Clone, V> Flights<K, V> {
    pub(crate) fn new(remember_failures: Duration) -> Self {
        Self {
            book: Mutex::new(FlightBook {
                flights: HashMap::default(),
                failures: HashMap::default(),
                sweep_at: None,
                epoch: 0,
            }),
            remember_failures,
        }
    }

    /// Leads the key's flight, or waits on the one under way.
    pub(crate) fn join(self: &Arc<Self>, key: &K, lock_timeout: Duration) -> Join<K, V> {
        self.enter(key, lock_timeout, false)
    }

    /// After a wait timed out: leads a new attempt if the flight's youngest attempt is older
    /// than the lock timeout (or the flight has ended), else waits on.
    pub(crate) fn rejoin(self: &Arc<Self>, key: &K, lock_timeout: Duration) -> Join<K, V> {
        self.enter(key, lock_timeout, true)
    }

    fn enter(self: &Arc<Self>, key: &K, lock_timeout: Duration, backup: bool) -> Join<K, V> {
        let now = Instant::now();
        let mut book = lock(&self.book);
        if let Some(flight) = book.flights.get_mut(key) {
            let due = flight.youngest + lock_timeout;
            if backup && now >= due {
                flight.running += 1;
                flight.youngest = now;
                let waiting = Waiting {
                    rx: flight.tx.subscribe(),
                    another_attempt_at: now + lock_timeout,
                };
                return Join::Backup(self.leader(key, flight.tx.clone()), waiting);
            }
            return Join::Waiter(Waiting {
                rx: flight.tx.subscribe(),
                // A new waiter is patient for a lock timeout of its own; one that timed out
                // waits until the youngest attempt is that old.
                another_attempt_at: if backup { due } else { now + lock_timeout },
            });
        }
        if let Some(remembered) = book.failures.get(key) {
            if now < remembered.until {
                return Join::Failed(Arc::clone(&remembered.failure));
            }
            book.failures.remove(key);
        }
        let (tx, _) = watch::channel(Landing::Pending);
        book.flights.insert(
            key.clone(),
            Flight {
                tx: tx.clone(),
                running: 1,
                youngest: now,
                background: false,
            },
        );
        drop(book);
        Join::Leader(self.leader(key, tx))
    }

    fn leader(self: &Arc<Self>, key: &K, tx: watch::Sender<Landing<V>>) -> FlightLeader<K, V> {
        FlightLeader {
            flights: Arc::clone(self),
            key: Some(key.clone()),
            tx,
        }
    }

    /// Number of loads under way.
    #[cfg_attr(not(shuttle), allow(dead_code))]
    pub(crate) fn len(&self) -> usize {
        lock(&self.book).flights.len()
    }

    /// Number of foreground loads under way (not background refreshes).
    pub(crate) fn foreground_len(&self) -> usize {
        (lock(&self.book).flights.values())
            .filter(|flight| !flight.background)
            .count()
    }

    /// The fence a load outside any flight stores under ([`Flights::store_if_unfenced`]).
    pub(crate) fn epoch(&self) -> u64 {
        lock(&self.book).epoch
    }

    /// Runs `store` (under the book's lock) unless a fence went up since `epoch`.
    pub(crate) fn store_if_unfenced<R>(&self, epoch: u64, store: impl FnOnce() -> R) -> Option<R> {
        let book = lock(&self.book);
        (book.epoch == epoch).then(store)
    }

    /// Fences every load of a key matching `fenced`: their flights leave the set (a later
    /// caller starts its own) and can no longer store; their failures are forgotten.
    ///
    /// Call it before removing what is stored: a load that stored first is then removed with
    /// the rest, and one that comes later finds its flight gone.
    pub(crate) fn fence_where(&self, fenced: impl Fn(&K) -> bool) {
        let mut book = lock(&self.book);
        book.epoch = book.epoch.wrapping_add(1);
        book.flights.retain(|key, _| !fenced(key));
        book.failures.retain(|key, _| !fenced(key));
    }

    /// Fences the loads of one key (see [`fence_where`](Self::fence_where)).
    pub(crate) fn fence<Q>(&self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut book = lock(&self.book);
        book.epoch = book.epoch.wrapping_add(1);
        book.flights.remove(key);
        book.failures.remove(key);
    }

    /// One attempt ended (`landing` is `None` when its leader went away without an answer).
    fn end_attempt(&self, key: &K, tx: &watch::Sender<Landing<V>>, landing: Option<Landing<V>>) {
        let mut book = lock(&self.book);
        let mut ended = false;
        let mut landing = landing;
        if !book.failures.is_empty() {
            let now = Instant::now();
            if book.sweep_at.is_none_or(|at| now >= at) {
                book.failures.retain(|_, r| now < r.until);
                book.sweep_at = Some(now + self.remember_failures);
            }
        }
        // Only our own flight: a later flight of the key has a channel of its own, and a
        // fenced one is gone.
        if let Some(flight) = book.flights.get_mut(key).filter(|f| f.tx.same_channel(tx)) {
            flight.running -= 1;
            if flight.running > 0 && matches!(landing, Some(Landing::Failed { .. })) {
                // Another attempt still runs and may yet store: its waiters wait for it (the
                // failed attempt's own caller has its failure), and the failure is not kept.
                landing = Some(Landing::Pending);
            }
            // A stored answer ends the flight (later requests find the entry); so does the end
            // of its last attempt.
            if flight.running == 0 || matches!(landing, Some(Landing::Stored(_))) {
                book.flights.remove(key);
                ended = true;
            }
            match &landing {
                // (Hashing the key for an empty map costs a miss ~200 instructions.)
                Some(Landing::Stored(_)) if !book.failures.is_empty() => {
                    book.failures.remove(key);
                }
                Some(Landing::Failed {
                    failure: Some(failure),
                    remember: true,
                }) if !self.remember_failures.is_zero() => {
                    let now = Instant::now();
                    if book.failures.len() >= MAX_REMEMBERED_FAILURES {
                        book.failures.retain(|_, r| now < r.until);
                    }
                    if book.failures.len() < MAX_REMEMBERED_FAILURES {
                        let until = now + self.remember_failures;
                        let failure = Arc::clone(failure);
                        book.failures
                            .insert(key.clone(), Remembered { failure, until });
                    }
                }
                _ => {}
            }
        }
        drop(book);
        if let Some(landing) = landing.filter(|l| !matches!(l, Landing::Pending)) {
            // A flight out of the book gets no new waiters (they subscribe under its lock):
            // with none left, the landing has no reader.
            if !ended || tx.receiver_count() > 0 {
                tx.send_replace(landing);
            }
        }
        // Without a landing: once every sender is gone (the map's and the attempts'), the
        // channel closes and the waiters see `Abandoned`.
    }
}

/// Waits for the flight's next landing, or until another attempt may start (`TimedOut`).
/// `take_streaming`: a load under way that streams its answer is a landing too.
pub(crate) async fn wait<V>(waiting: Waiting<V>, take_streaming: bool) -> Waited<V> {
    let Waiting {
        mut rx,
        another_attempt_at,
    } = waiting;
    if take_streaming {
        // Joined while the load streams: what it has produced so far is there already.
        if let Landing::Streaming(partial) = &*rx.borrow_and_update() {
            return Waited::Streaming(Arc::clone(partial));
        }
    }
    loop {
        return match tokio::time::timeout_at(another_attempt_at, rx.changed()).await {
            Err(_) => Waited::TimedOut,
            Ok(Err(_)) => Waited::Abandoned,
            Ok(Ok(())) => match &*rx.borrow_and_update() {
                Landing::Stored(entry) => Waited::Stored(Arc::clone(entry)),
                Landing::NotStored => Waited::NotStored,
                Landing::Failed { failure, .. } => Waited::Failed(failure.clone()),
                Landing::Streaming(partial) if take_streaming => {
                    Waited::Streaming(Arc::clone(partial))
                }
                Landing::Streaming(_) => continue,
                Landing::Pending => Waited::Abandoned,
            },
        };
    }
}

/// Resolves with the entry an earlier attempt of the flight stores; never, if none does.
pub(crate) async fn stored_by_another<V>(waiting: Waiting<V>) -> Arc<Entry<V>> {
    let mut rx = waiting.rx;
    loop {
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
        if let Landing::Stored(entry) = &*rx.borrow_and_update() {
            return Arc::clone(entry);
        }
    }
}

/// The leader's claim on a foreground load; dropping it without landing wakes the waiters.
pub(crate) struct FlightLeader<K: Hash + Eq + Clone, V> {
    flights: Arc<Flights<K, V>>,
    key: Option<K>,
    tx: watch::Sender<Landing<V>>,
}

impl<K: Hash + Eq + Clone, V> FlightLeader<K, V> {
    /// Marks this flight as a background refresh's (see [`Flights::len`]).
    pub(crate) fn in_background(&self) {
        let Some(key) = &self.key else { return };
        let mut book = lock(&self.flights.book);
        if let Some(flight) = book
            .flights
            .get_mut(key)
            .filter(|f| f.tx.same_channel(&self.tx))
        {
            flight.background = true;
        }
    }

    /// A handle the load may use to offer its waiters its answer while producing it.
    pub(crate) fn publisher(&self) -> Option<Publisher<K, V>> {
        Some(Publisher {
            flights: Arc::clone(&self.flights),
            key: self.key.clone()?,
            tx: self.tx.clone(),
        })
    }

    pub(crate) fn land(mut self, landing: Landing<V>) {
        if let Some(key) = self.key.take() {
            self.flights.end_attempt(&key, &self.tx, Some(landing));
        }
    }

    /// Runs `store` (under the flights' lock) if this load's flight has not been fenced by an
    /// invalidation since it began.
    pub(crate) fn store_if_current<R>(&self, store: impl FnOnce() -> R) -> Option<R> {
        let key = self.key.as_ref()?;
        let book = lock(&self.flights.book);
        let current = book
            .flights
            .get(key)
            .is_some_and(|flight| flight.tx.same_channel(&self.tx));
        current.then(store)
    }
}

impl<K: Hash + Eq + Clone, V> Drop for FlightLeader<K, V> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.flights.end_attempt(&key, &self.tx, None);
        }
    }
}

/// A leading load's way to hand its waiters its answer before it lands (a streaming fill).
pub(crate) struct Publisher<K, V> {
    flights: Arc<Flights<K, V>>,
    key: K,
    tx: watch::Sender<Landing<V>>,
}

impl<K: Hash + Eq + Clone, V> Publisher<K, V> {
    /// Offers `partial` to the flight's waiters, present and to come.
    pub(crate) fn publish(&self, partial: Partial) {
        self.tx.send_replace(Landing::Streaming(partial));
    }

    /// The load will store nothing after all (its value grew too large): the flight leaves the
    /// set, so later callers load on their own, and its waiters are told so now rather than
    /// when the load ends.
    pub(crate) fn withdraw(&self) {
        let mut book = lock(&self.flights.book);
        if (book.flights.get(&self.key)).is_some_and(|f| f.tx.same_channel(&self.tx)) {
            book.flights.remove(&self.key);
        }
        drop(book);
        self.tx.send_replace(Landing::NotStored);
    }
}

impl<K, V> std::fmt::Debug for Publisher<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone, V> std::fmt::Debug for FlightLeader<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlightLeader").finish_non_exhaustive()
    }
}

#[cfg(all(test, shuttle))]
mod model;

#[cfg(all(test, not(shuttle)))]
mod tests {
    use super::*;

    fn refreshes() -> Arc<Refreshes<&'static str>> {
        let backoff = Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
        };
        Arc::new(Refreshes::new(backoff, None, "test"))
    }

    #[test]
    fn a_fenced_refresh_gives_its_key_out_again_and_its_end_touches_nothing() {
        let refreshes = refreshes();
        let now = Instant::now();
        let fenced = refreshes.claim(&"a", now).expect("the first claim");
        assert_eq!(
            refreshes.claim(&"a", now).err(),
            Some(true),
            "one at a time"
        );
        refreshes.fence(&"a");
        let next = refreshes
            .claim(&"a", now)
            .expect("given out again after a fence");
        // The fenced refresh failing neither backs the key off nor releases the new claim.
        fenced.finish(true);
        assert!(refreshes.is_running(&"a"));
        assert_eq!(refreshes.claim(&"a", now).err(), Some(true));
        next.finish(false);
        assert_eq!(refreshes.running(), 0);
        assert!(
            refreshes.may_start(&"a", now),
            "no backoff from the fenced failure"
        );
        assert!(lock(&refreshes.book).keys.is_empty(), "nothing left behind");
    }

    #[test]
    fn fencing_many_keys_keeps_only_their_failures() {
        let refreshes = refreshes();
        let now = Instant::now();
        refreshes.claim(&"failing", now).unwrap().finish(true);
        // Past its backoff (at most a minute).
        let now = now + Duration::from_secs(120);
        let _a = refreshes.claim(&"failing", now).unwrap();
        let _b = refreshes.claim(&"b", now).unwrap();
        refreshes.fence_where(|_| true);
        assert_eq!(refreshes.running(), 0);
        let book = lock(&refreshes.book);
        assert_eq!(
            book.keys.len(),
            1,
            "only the key with a failure to back off from"
        );
        assert_eq!(book.keys.get("failing").map(|s| s.failures), Some(1));
    }
}
