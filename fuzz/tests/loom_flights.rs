//! Loom model check of the miss-coalescing protocol of `src/engine/inflight.rs` (`Flights`,
//! `FlightLeader`, `wait`), on a faithful copy: loom cannot run tokio's `watch` itself.
//!
//! What is copied line for line: the map under one mutex; `join` subscribing under that lock;
//! `land` removing its entry and sending while holding it; the leader's `Drop` removing the entry
//! under the lock and then dropping the last sender; `watch::Receiver::wait_for` (tokio 1.54:
//! read the value, compare versions, then `changed_impl`: create a `Notified` *before* checking
//! version and closed bit, sleep on it); `send_if_modified` (write the value, bump the version
//! while holding the value lock, then `notify_waiters`); `Sender::drop` (last one sets the
//! closed bit, then `notify_waiters`). What is modelled by its contract only: `Notify` — "the
//! `Notified` future is guaranteed to receive wakeups from `notify_waiters()` as soon as it has
//! been created, even if it has not yet been polled" (tokio docs), as a counter of
//! `notify_waiters` calls sampled when the `Notified` is created.
//!
//! Run: `cd fuzz && cargo test --release --test loom_flights` (LOOM_MAX_PREEMPTIONS=3 default
//! below keeps it to seconds; raise it for a deeper search).
//!
//! Loom reports a lost wake-up as a deadlock (every thread blocked), and the assertions check
//! that each waiter ends with the landing or "abandoned", and that no flight is left in the map.

use std::collections::HashMap;

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::{Arc, Condvar, Mutex, RwLock};
use loom::thread;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Landing {
    Pending,
    Stored(u32),
    NotStored,
    Failed,
}

#[derive(Debug, PartialEq, Eq)]
enum Waited {
    Landed(Landing),
    Abandoned,
}

// ---- tokio::sync::Notify, by its contract ----

struct Notify {
    calls: Mutex<usize>,
    wake: Condvar,
}

impl Notify {
    fn new() -> Self {
        Self {
            calls: Mutex::new(0),
            wake: Condvar::new(),
        }
    }

    /// `notified()`: from now on, any `notify_waiters` wakes it.
    fn notified(&self) -> usize {
        *self.calls.lock().unwrap()
    }

    fn wait(&self, created_at: usize) {
        let mut calls = self.calls.lock().unwrap();
        while *calls == created_at {
            calls = self.wake.wait(calls).unwrap();
        }
    }

    fn notify_waiters(&self) {
        *self.calls.lock().unwrap() += 1;
        self.wake.notify_all();
    }
}

// ---- tokio::sync::watch, as its code does it ----

const CLOSED: usize = 1;
const STEP: usize = 2;

struct Shared {
    value: RwLock<Landing>,
    /// Version in steps of 2, closed in bit 0 (tokio's `AtomicState`).
    state: AtomicUsize,
    senders: AtomicUsize,
    notify_rx: Notify,
}

struct Sender(Arc<Shared>);
struct Receiver {
    shared: Arc<Shared>,
    version: usize,
}

fn channel() -> Sender {
    Sender(Arc::new(Shared {
        value: RwLock::new(Landing::Pending),
        state: AtomicUsize::new(0),
        senders: AtomicUsize::new(1),
        notify_rx: Notify::new(),
    }))
}

impl Sender {
    fn subscribe(&self) -> Receiver {
        let version = self.0.state.load(Ordering::SeqCst) & !CLOSED;
        Receiver {
            shared: Arc::clone(&self.0),
            version,
        }
    }

    fn send_replace(&self, landing: Landing) {
        {
            let mut value = self.0.value.write().unwrap();
            *value = landing;
            // increment_version_while_locked
            self.0.state.fetch_add(STEP, Ordering::Release);
        }
        self.0.notify_rx.notify_waiters();
    }

    fn same_channel(&self, other: &Sender) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Clone for Sender {
    fn clone(&self) -> Self {
        self.0.senders.fetch_add(1, Ordering::Relaxed);
        Sender(Arc::clone(&self.0))
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        if self.0.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.state.fetch_or(CLOSED, Ordering::Release);
            self.0.notify_rx.notify_waiters();
        }
    }
}

impl Receiver {
    /// `maybe_changed`
    fn maybe_changed(&mut self) -> Option<Result<(), ()>> {
        let state = self.shared.state.load(Ordering::Acquire);
        let new_version = state & !CLOSED;
        if self.version != new_version {
            self.version = new_version;
            return Some(Ok(()));
        }
        if state & CLOSED == CLOSED {
            return Some(Err(()));
        }
        None
    }

    /// `changed_impl`: request the notification first, then check.
    fn changed_impl(&mut self) -> Result<(), ()> {
        loop {
            let notified = self.shared.notify_rx.notified();
            if let Some(ret) = self.maybe_changed() {
                return ret;
            }
            self.shared.notify_rx.wait(notified);
        }
    }

    /// `wait_for(|l| l != Pending)`
    fn wait_for_landing(&mut self) -> Result<Landing, ()> {
        let mut closed = false;
        loop {
            {
                let inner = self.shared.value.read().unwrap();
                let new_version = self.shared.state.load(Ordering::SeqCst) & !CLOSED;
                let has_changed = self.version != new_version;
                self.version = new_version;
                if (!closed || has_changed) && *inner != Landing::Pending {
                    return Ok(*inner);
                }
            }
            if closed {
                return Err(());
            }
            closed = self.changed_impl().is_err();
        }
    }
}

// ---- src/engine/inflight.rs: Flights ----

struct Flights {
    map: Mutex<HashMap<u32, Sender>>,
}

enum Join {
    Leader(FlightLeader),
    Waiter(Receiver),
}

struct FlightLeader {
    flights: Arc<Flights>,
    key: Option<u32>,
    tx: Sender,
}

/// `Flights::join` (a free function: loom's `Arc` cannot be a method receiver).
fn join(flights: &Arc<Flights>, key: u32) -> Join {
    let mut map = flights.map.lock().unwrap();
    if let Some(tx) = map.get(&key) {
        return Join::Waiter(tx.subscribe());
    }
    let tx = channel();
    map.insert(key, tx.clone());
    Join::Leader(FlightLeader {
        flights: Arc::clone(flights),
        key: Some(key),
        tx,
    })
}

impl Flights {
    fn land(&self, key: u32, tx: &Sender, landing: Landing) {
        let mut map = self.map.lock().unwrap();
        if map
            .get(&key)
            .is_some_and(|current| current.same_channel(tx))
        {
            map.remove(&key);
        }
        tx.send_replace(landing);
    }
}

impl FlightLeader {
    fn land(mut self, landing: Landing) {
        if let Some(key) = self.key.take() {
            self.flights.land(key, &self.tx, landing);
        }
    }
}

impl Drop for FlightLeader {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let mut map = self.flights.map.lock().unwrap();
            if map
                .get(&key)
                .is_some_and(|current| current.same_channel(&self.tx))
            {
                map.remove(&key);
            }
        }
    }
}

fn wait(mut rx: Receiver) -> Waited {
    match rx.wait_for_landing() {
        Ok(landing) => Waited::Landed(landing),
        Err(()) => Waited::Abandoned,
    }
}

/// What a leader does with its flight.
#[derive(Clone, Copy, Debug)]
enum LeaderEnd {
    Land(Landing),
    /// Its client went away, or the load panicked: dropped without landing.
    Drop,
}

fn finish(leader: FlightLeader, end: LeaderEnd) {
    match end {
        LeaderEnd::Land(landing) => leader.land(landing),
        LeaderEnd::Drop => drop(leader),
    }
}

/// One caller: joins; leads (and ends as told) or waits. A waiter whose leader went away
/// competes again, at most `rounds` times (the engine loops until it leads or hears a
/// landing).
fn caller(flights: &Arc<Flights>, end: LeaderEnd, rounds: usize) -> Option<Waited> {
    for _ in 0..rounds {
        match join(flights, 7) {
            Join::Leader(leader) => {
                finish(leader, end);
                return None;
            }
            Join::Waiter(rx) => match wait(rx) {
                Waited::Abandoned => continue,
                landed => return Some(landed),
            },
        }
    }
    Some(Waited::Abandoned)
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.check(f);
}

fn check_two_callers(first: LeaderEnd, second: LeaderEnd) {
    model(move || {
        let flights = Arc::new(Flights {
            map: Mutex::new(HashMap::new()),
        });
        let other = Arc::clone(&flights);
        let t = thread::spawn(move || caller(&other, second, 2));
        let mine = caller(&flights, first, 2);
        let theirs = t.join().unwrap();
        for (outcome, leader_end) in [(mine, second), (theirs, first)] {
            match (outcome, leader_end) {
                // Led the flight itself.
                (None, _) => {}
                // Heard exactly what the other one landed.
                (Some(Waited::Landed(l)), LeaderEnd::Land(sent)) => assert_eq!(l, sent),
                (Some(Waited::Landed(l)), LeaderEnd::Drop) => panic!("heard {l:?} from a drop"),
                // Its leader went away (twice at most, then it would load alone).
                (Some(Waited::Abandoned), LeaderEnd::Drop) => {}
                (Some(Waited::Abandoned), LeaderEnd::Land(_)) => {
                    panic!("a landed flight was seen as abandoned")
                }
            }
        }
        assert!(
            flights.map.lock().unwrap().is_empty(),
            "a flight was left in the map"
        );
    });
}

#[test]
fn waiter_hears_a_landing_stored() {
    check_two_callers(
        LeaderEnd::Land(Landing::Stored(1)),
        LeaderEnd::Land(Landing::Stored(2)),
    );
}

#[test]
fn waiter_hears_not_stored_and_failed() {
    check_two_callers(
        LeaderEnd::Land(Landing::NotStored),
        LeaderEnd::Land(Landing::Failed),
    );
}

#[test]
fn dropped_leader_wakes_its_waiter() {
    check_two_callers(LeaderEnd::Drop, LeaderEnd::Drop);
}

#[test]
fn dropped_and_landing_leaders_mixed() {
    check_two_callers(LeaderEnd::Drop, LeaderEnd::Land(Landing::Stored(3)));
}

/// Three callers, one of which drops its flight: nobody hangs, the map ends empty.
#[test]
fn three_callers_one_dropping() {
    model(|| {
        let flights = Arc::new(Flights {
            map: Mutex::new(HashMap::new()),
        });
        let a = {
            let flights = Arc::clone(&flights);
            thread::spawn(move || caller(&flights, LeaderEnd::Drop, 1))
        };
        let b = {
            let flights = Arc::clone(&flights);
            thread::spawn(move || caller(&flights, LeaderEnd::Land(Landing::Stored(1)), 1))
        };
        caller(&flights, LeaderEnd::Land(Landing::Stored(1)), 1);
        a.join().unwrap();
        b.join().unwrap();
        assert!(flights.map.lock().unwrap().is_empty());
    });
}
