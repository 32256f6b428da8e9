//! Model check of this module itself (not a copy): shuttle runs `Flights`, `FlightLeader`,
//! `wait`, `stored_by_another` and `Refreshes` as they are, their mutex shuttle's and each
//! channel call a scheduling point (see `engine::sync`), and explores the interleavings of a
//! few tasks per model. A lost wake-up shows as a deadlock (every task blocked), a wrong answer
//! as a failed assertion; shuttle prints the schedule and seed that reached it.
//!
//! Run (release: a few seconds):
//! `RUSTFLAGS="--cfg shuttle" CARGO_TARGET_DIR=target/shuttle cargo test --release --lib engine::inflight::model`
//! `SHUTTLE_ITERATIONS=N` sets the iterations per scheduler per model (default 5000): each model
//! runs under shuttle's random scheduler and under PCT (depth 3). What is and is not modelled:
//! `docs/concurrency.md`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use shuttle::future::{block_on, spawn, yield_now};
use shuttle::rand::Rng;
use shuttle::sync::atomic::{AtomicBool, AtomicUsize};

use super::super::clock::Stamp;
use super::super::entry::{Entry, Freshness, Loaded};
use super::super::sync::{Arc, Instant, Mutex};
use super::{
    lock, stored_by_another, wait, Backoff, Breaker, Failure, FlightLeader, Flights, Join, Landing,
    Refreshes, Waited,
};

const KEY: u32 = 1;
/// A lock timeout or memory that no run reaches.
const HOUR: Duration = Duration::from_secs(3600);

fn iterations() -> usize {
    std::env::var("SHUTTLE_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5000)
}

/// Runs `model` under the random scheduler and under PCT.
fn check(model: impl Fn() + Send + Sync + 'static) {
    let model = std::sync::Arc::new(model);
    let random = std::sync::Arc::clone(&model);
    shuttle::check_random(move || random(), iterations());
    shuttle::check_pct(move || model(), iterations(), 3);
}

fn entry(value: u32) -> Arc<Entry<u32>> {
    Arc::new(Entry::new(
        Loaded::new(value, Freshness::new(HOUR)),
        Stamp::now(),
        1,
    ))
}

fn failure() -> Failure {
    Arc::new("the origin failed")
}

/// How an attempt ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Stored,
    NotStored,
    Failed,
    Dropped,
}

const ENDS: [End; 4] = [End::Stored, End::NotStored, End::Failed, End::Dropped];

/// What every attempt of one model answers with: one entry, one failure.
#[derive(Clone)]
struct Answers {
    entry: Arc<Entry<u32>>,
    failure: Failure,
    remember: bool,
}

impl Answers {
    fn new(remember: bool) -> Self {
        Self {
            entry: entry(7),
            failure: failure(),
            remember,
        }
    }

    fn end(&self, leader: FlightLeader<u32, u32>, end: End) {
        match end {
            End::Stored => {
                // As the engine does: stores through the flight (unless it is no longer
                // current: another attempt stored, or a fence), then lands the entry.
                let _ = leader.store_if_current(|| ());
                leader.land(Landing::Stored(Arc::clone(&self.entry)));
            }
            End::NotStored => leader.land(Landing::NotStored),
            End::Failed => leader.land(Landing::Failed {
                failure: Some(Arc::clone(&self.failure)),
                remember: self.remember,
            }),
            End::Dropped => drop(leader),
        }
    }

    /// Whether `waited` is what a waiter of an attempt that ended with `end` must hear.
    fn heard(&self, waited: &Waited<u32>, end: End) -> bool {
        match (waited, end) {
            (Waited::Stored(entry), End::Stored) => Arc::ptr_eq(entry, &self.entry),
            (Waited::NotStored, End::NotStored) => true,
            (Waited::Failed(Some(failure)), End::Failed) => Arc::ptr_eq(failure, &self.failure),
            (Waited::Abandoned, End::Dropped) => true,
            _ => false,
        }
    }
}

/// (a) A leader and `waiters` callers joining while it ends with `end`: each caller that waits
/// hears exactly that end (none sleeps through it: shuttle would report the deadlock), one that
/// comes after it leads a new flight (which ends the same way), and no flight is left.
fn waiters_hear_the_landing(end: End, waiters: usize) {
    let flights = Arc::new(Flights::<u32, u32>::new(HOUR));
    let answers = Answers::new(false);
    let Join::Leader(leader) = flights.join(&KEY, HOUR) else {
        panic!("the first caller leads");
    };
    block_on(async move {
        let tasks: Vec<_> = (0..waiters)
            .map(|_| {
                let flights = Arc::clone(&flights);
                let answers = answers.clone();
                spawn(async move {
                    match flights.join(&KEY, HOUR) {
                        Join::Waiter(waiting) => {
                            let waited = wait(waiting, false).await;
                            assert!(answers.heard(&waited, end), "{end:?}: heard {waited:?}");
                        }
                        // The flight had ended: this caller leads the next one.
                        Join::Leader(leader) => answers.end(leader, end),
                        Join::Backup(..) => panic!("no lock timeout passed"),
                        Join::Failed(_) => panic!("no failure is remembered"),
                    }
                })
            })
            .collect();
        let lead = {
            let answers = answers.clone();
            spawn(async move {
                yield_now().await;
                answers.end(leader, end);
            })
        };
        for task in tasks {
            task.await.expect("a caller panicked");
        }
        lead.await.expect("the leader panicked");
        assert_eq!(flights.len(), 0, "a flight was left behind");
    });
}

#[test]
fn model_waiters_hear_every_landing() {
    check(|| {
        let end = ENDS[shuttle::rand::thread_rng().gen_range(0..ENDS.len())];
        waiters_hear_the_landing(end, 3);
    });
}

/// (a') Attempts: with a lock timeout of zero, a waiter's wait may time out at any poll; it
/// rejoins and becomes a second attempt (`Join::Backup`), which races the first. A patient
/// waiter hears one of the two ends; the backup gets the first attempt's entry through
/// `stored_by_another` when the first stores; the flight ends (by a store or its last attempt)
/// and no flight is left.
fn attempts_race(first: End, second: End) {
    let flights = Arc::new(Flights::<u32, u32>::new(HOUR));
    let answers = Answers::new(false);
    let Join::Leader(leader) = flights.join(&KEY, Duration::ZERO) else {
        panic!("the first caller leads");
    };
    let first_flight = leader.tx.subscribe();
    block_on(async move {
        let impatient = {
            let flights = Arc::clone(&flights);
            let answers = answers.clone();
            spawn(async move {
                let mut join = flights.join(&KEY, Duration::ZERO);
                loop {
                    match join {
                        Join::Waiter(waiting) => match wait(waiting, false).await {
                            Waited::TimedOut => join = flights.rejoin(&KEY, Duration::ZERO),
                            waited => {
                                // The first flight's, or the patient caller's if that one
                                // came late and leads.
                                assert!(
                                    answers.heard(&waited, first) || answers.heard(&waited, second),
                                    "{first:?} then {second:?}: heard {waited:?}"
                                );
                                return;
                            }
                        },
                        Join::Backup(backup, waiting) => {
                            if first == End::Stored && waiting.rx.same_channel(&first_flight) {
                                // The first attempt is subscribed to by this one under the
                                // lock, and stores: that reaches the backup.
                                let stored = stored_by_another(waiting).await;
                                assert!(Arc::ptr_eq(&stored, &answers.entry));
                                drop(backup);
                            } else {
                                answers.end(backup, second);
                            }
                            return;
                        }
                        Join::Leader(leader) => return answers.end(leader, second),
                        Join::Failed(_) => panic!("no failure is remembered"),
                    }
                }
            })
        };
        let patient = {
            let flights = Arc::clone(&flights);
            let answers = answers.clone();
            spawn(async move {
                match flights.join(&KEY, HOUR) {
                    Join::Waiter(waiting) => {
                        let waited = wait(waiting, false).await;
                        assert!(
                            answers.heard(&waited, first) || answers.heard(&waited, second),
                            "{first:?} then {second:?}: heard {waited:?}"
                        );
                    }
                    Join::Leader(leader) => answers.end(leader, second),
                    Join::Backup(..) => panic!("a first wait does not back up"),
                    Join::Failed(_) => panic!("no failure is remembered"),
                }
            })
        };
        let lead = {
            let answers = answers.clone();
            spawn(async move {
                yield_now().await;
                answers.end(leader, first);
            })
        };
        impatient.await.expect("the impatient caller panicked");
        patient.await.expect("the patient caller panicked");
        lead.await.expect("the leader panicked");
        assert_eq!(flights.len(), 0, "a flight was left behind");
    });
}

#[test]
fn model_attempts_race_to_land() {
    check(|| {
        let mut rng = shuttle::rand::thread_rng();
        let first = ENDS[rng.gen_range(0..ENDS.len())];
        let second = ENDS[rng.gen_range(0..ENDS.len())];
        attempts_race(first, second);
    });
}

/// (b) An invalidation (fence, then remove what is stored) racing a leader that stores through
/// its flight and a load outside any flight that stores under an epoch: whichever order, nothing
/// stored survives the invalidation, and a caller after the fence never joins the fenced flight:
/// it leads a new one, which stays current though the fenced leader lands later.
fn fence_races_stores(fence_where: bool) {
    let flights = Arc::new(Flights::<u32, u32>::new(HOUR));
    let store: Arc<Mutex<Vec<&'static str>>> = Arc::new(Mutex::new(Vec::new()));
    let answers = Answers::new(false);
    let Join::Leader(leader) = flights.join(&KEY, HOUR) else {
        panic!("the first caller leads");
    };
    // Tells the fenced flight's channel apart (a receiver does not keep it open).
    let fenced = leader.tx.subscribe();
    let epoch = flights.epoch();
    block_on(async move {
        let lead = {
            let store = Arc::clone(&store);
            let answers = answers.clone();
            spawn(async move {
                let stored = leader.store_if_current(|| lock(&store).push("flight"));
                if stored.is_some() {
                    leader.land(Landing::Stored(Arc::clone(&answers.entry)));
                } else {
                    leader.land(Landing::NotStored);
                }
            })
        };
        let outside = {
            let flights = Arc::clone(&flights);
            let store = Arc::clone(&store);
            spawn(async move {
                yield_now().await;
                flights.store_if_unfenced(epoch, || lock(&store).push("outside"));
            })
        };
        let waiter = {
            let flights = Arc::clone(&flights);
            let fenced = fenced.clone();
            spawn(async move {
                if let Join::Waiter(waiting) = flights.join(&KEY, HOUR) {
                    if waiting.rx.same_channel(&fenced) {
                        let waited = wait(waiting, false).await;
                        assert!(
                            matches!(waited, Waited::Stored(_) | Waited::NotStored),
                            "heard {waited:?}"
                        );
                    }
                }
                // Else it joined (or leads) the invalidation's new flight; that one's leader
                // is checked below.
            })
        };
        let invalidation = {
            let flights = Arc::clone(&flights);
            let store = Arc::clone(&store);
            spawn(async move {
                if fence_where {
                    flights.fence_where(|key| *key == KEY);
                } else {
                    flights.fence(&KEY);
                }
                lock(&store).clear();
                match flights.join(&KEY, HOUR) {
                    Join::Leader(next) => {
                        yield_now().await;
                        assert!(
                            next.store_if_current(|| ()).is_some(),
                            "the fenced leader's landing ended the new flight"
                        );
                        next.land(Landing::NotStored);
                    }
                    // A flight the other caller began after the fence, never the fenced one.
                    Join::Waiter(waiting) => assert!(
                        !waiting.rx.same_channel(&fenced),
                        "joined the fenced flight after the fence"
                    ),
                    Join::Backup(..) | Join::Failed(_) => panic!("unexpected join"),
                }
            })
        };
        for task in [lead, outside, waiter, invalidation] {
            task.await.expect("a task panicked");
        }
        assert_eq!(
            *lock(&store),
            Vec::<&str>::new(),
            "a fenced load stored after the invalidation"
        );
        assert_eq!(flights.len(), 0, "a flight was left behind");
    });
}

#[test]
fn model_fence_races_stores() {
    check(|| fence_races_stores(shuttle::rand::thread_rng().gen_bool(0.5)));
}

/// (c) Failure memory: a failed load is remembered, so a caller that joins after it lands gets
/// `Join::Failed` (and one that waited hears the failure); an invalidation racing it clears it:
/// the first failure is never the answer after the fence, whether it landed before the fence
/// (and was forgotten) or after it (on a fenced flight, so not remembered). Loads begun after
/// the fence fail with a failure of their own, which is remembered in turn.
fn failures_are_remembered_until_fenced() {
    let flights = Arc::new(Flights::<u32, u32>::new(HOUR));
    let before = Answers::new(true);
    let after = Answers::new(true);
    let fencing = Arc::new(AtomicBool::new(false));
    let Join::Leader(leader) = flights.join(&KEY, HOUR) else {
        panic!("the first caller leads");
    };
    block_on(async move {
        let lead = {
            let before = before.clone();
            spawn(async move { before.end(leader, End::Failed) })
        };
        let caller = {
            let flights = Arc::clone(&flights);
            let (before, after) = (before.clone(), after.clone());
            let fencing = Arc::clone(&fencing);
            spawn(async move {
                match flights.join(&KEY, HOUR) {
                    Join::Waiter(waiting) => {
                        let waited = wait(waiting, false).await;
                        assert!(
                            before.heard(&waited, End::Failed) || after.heard(&waited, End::Failed),
                            "heard {waited:?}"
                        );
                    }
                    Join::Failed(failure) => assert!(
                        Arc::ptr_eq(&failure, &before.failure)
                            || Arc::ptr_eq(&failure, &after.failure)
                    ),
                    Join::Leader(leader) => {
                        assert!(
                            fencing.load(Ordering::SeqCst),
                            "led although the failure is remembered and nothing fenced it"
                        );
                        after.end(leader, End::Failed);
                    }
                    Join::Backup(..) => panic!("no lock timeout passed"),
                }
            })
        };
        let invalidation = {
            let flights = Arc::clone(&flights);
            let after = after.clone();
            let fencing = Arc::clone(&fencing);
            spawn(async move {
                fencing.store(true, Ordering::SeqCst);
                flights.fence(&KEY);
                match flights.join(&KEY, HOUR) {
                    Join::Leader(leader) => after.end(leader, End::Failed),
                    Join::Waiter(waiting) => {
                        // The other caller's flight, begun after the fence.
                        let waited = wait(waiting, false).await;
                        assert!(after.heard(&waited, End::Failed), "heard {waited:?}");
                    }
                    Join::Failed(failure) => assert!(
                        Arc::ptr_eq(&failure, &after.failure),
                        "a fenced failure was remembered"
                    ),
                    Join::Backup(..) => panic!("no lock timeout passed"),
                }
            })
        };
        for task in [lead, caller, invalidation] {
            task.await.expect("a task panicked");
        }
        // A load begun after the fence failed last, and is remembered; a fence forgets it.
        match flights.join(&KEY, HOUR) {
            Join::Failed(failure) => assert!(Arc::ptr_eq(&failure, &after.failure)),
            _ => panic!("the last failure was not remembered"),
        }
        flights.fence(&KEY);
        assert!(matches!(flights.join(&KEY, HOUR), Join::Leader(_)));
        assert_eq!(flights.len(), 0, "a flight was left behind");
    });
}

#[test]
fn model_failures_are_remembered_until_fenced() {
    check(failures_are_remembered_until_fenced);
}

/// (d) Background refreshes: of callers claiming the same key at once, one holds the claim at a
/// time; once a refresh failed (backoff of at least half an hour, or the breaker), no claim
/// succeeds; every claim is released however it ends (finish, cancel, drop).
fn one_refresh_at_a_time(breaker: bool) {
    let refreshes = Arc::new(Refreshes::<u32>::new(
        Backoff {
            base: HOUR,
            max: HOUR,
        },
        breaker.then_some(Breaker {
            threshold: 1,
            cooldown: HOUR,
        }),
        "model",
    ));
    let holders = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let failed = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
    block_on(async move {
        let tasks: Vec<_> = (0..4u32)
            .map(|task| {
                let refreshes = Arc::clone(&refreshes);
                let holders = Arc::clone(&holders);
                let failed = Arc::clone(&failed);
                spawn(async move {
                    // With the breaker, two keys: a failure of one pauses both.
                    let key = if breaker { task % 2 } else { KEY };
                    let index = key as usize % 2;
                    let after_failure = if breaker {
                        failed.iter().any(|f| f.load(Ordering::SeqCst))
                    } else {
                        failed[index].load(Ordering::SeqCst)
                    };
                    let Ok(claim) = refreshes.claim(&key, Instant::now()) else {
                        return;
                    };
                    assert!(!after_failure, "claimed after a failure");
                    assert_eq!(
                        holders[index].fetch_add(1, Ordering::SeqCst),
                        0,
                        "two claims"
                    );
                    assert!(refreshes.is_running(&key));
                    yield_now().await;
                    holders[index].fetch_sub(1, Ordering::SeqCst);
                    match task {
                        0 => claim.finish(false),
                        1 => {
                            claim.finish(true);
                            failed[index].store(true, Ordering::SeqCst);
                        }
                        2 => {
                            // A refresh task that died: a failure.
                            drop(claim);
                            failed[index].store(true, Ordering::SeqCst);
                        }
                        _ => claim.cancel(),
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("a task panicked");
        }
        assert_eq!(refreshes.running(), 0, "a claim was not released");
    });
}

#[test]
fn model_one_refresh_at_a_time() {
    check(|| one_refresh_at_a_time(shuttle::rand::thread_rng().gen_bool(0.5)));
}
