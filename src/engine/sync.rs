//! What the in-flight module (`super::inflight`) synchronises with, behind one seam, so that
//! its model check runs that module itself rather than a copy of it.
//!
//! Normally these are std's and tokio's own items, re-exported: nothing changes. In the
//! library's own tests under `RUSTFLAGS="--cfg shuttle"` (`src/engine/inflight/model.rs`,
//! `docs/concurrency.md`), the mutex is shuttle's, so the model checker switches tasks at every
//! lock and explores the interleavings of `Flights` and `Refreshes`; and the wait's timer is a
//! model one (below), because shuttle's executor has no tokio timer.
//!
//! The others under shuttle, and why:
//! - `Arc`: shuttle's is std's; `Entry`s and failures travel in it to the rest of the engine.
//! - `watch`: tokio's own channel, which runs as it is under shuttle's executor (its waits are
//!   wakers, and shuttle's wakers wake shuttle's tasks). Shuttle does not see inside it, so
//!   under shuttle it is wrapped (`model_watch`): each call the module makes is a scheduling
//!   point, where shuttle may switch tasks (without that, the steps between a lock's release
//!   and a channel call would run as one).
//! - `Instant`: tokio's, read from the real monotonic clock (there is no runtime to pause it);
//!   the rest of the engine passes these to the module. The model uses only durations of zero
//!   (always past) or an hour (never reached), so every time comparison comes out the same in
//!   every run and shuttle can replay a failing schedule.
//!
//! `inflight.rs` names `tokio::time::timeout_at` by its full path; it imports `tokio` from
//! here, a module that mirrors that path, so its body is the same in both builds.

#[cfg(all(test, shuttle))]
pub(crate) use shuttle::sync::{Mutex, MutexGuard};
pub(crate) use std::sync::Arc;
#[cfg(not(all(test, shuttle)))]
pub(crate) use std::sync::{Mutex, MutexGuard};

#[cfg(not(all(test, shuttle)))]
pub(crate) use ::tokio::sync::watch;
pub(crate) use ::tokio::time::Instant;
#[cfg(all(test, shuttle))]
pub(crate) use model_watch as watch;

/// The tokio paths the in-flight module names in full.
pub(crate) mod tokio {
    /// `tokio::time`, for `timeout_at`.
    pub(crate) mod time {
        #[cfg(not(all(test, shuttle)))]
        pub(crate) use ::tokio::time::timeout_at;

        #[cfg(all(test, shuttle))]
        pub(crate) use super::super::model_time::timeout_at;
    }
}

/// The model's timer: `timeout_at` without a tokio runtime.
///
/// The future is polled first, as tokio's `Timeout` does. While it is pending and the deadline
/// has not passed, the timer never fires (nothing wakes the task but the future itself). Once
/// the deadline has passed, each poll that finds the future pending lets shuttle choose (its
/// seeded, replayable randomness) whether the timer fires now or on a later poll; a poll that
/// does not fire asks to be polled again. So a waiter whose deadline is due may time out
/// anywhere from its first poll on, and always does eventually unless the landing comes first.
#[cfg(all(test, shuttle))]
mod model_time {
    use std::future::Future;
    use std::pin::pin;
    use std::task::Poll;

    use shuttle::rand::Rng;

    use super::Instant;

    /// The deadline passed with the future still pending.
    #[derive(Debug)]
    pub(crate) struct Elapsed;

    pub(crate) async fn timeout_at<F: Future>(
        deadline: Instant,
        future: F,
    ) -> Result<F::Output, Elapsed> {
        let mut future = pin!(future);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(output) = future.as_mut().poll(cx) {
                return Poll::Ready(Ok(output));
            }
            if Instant::now() >= deadline {
                if shuttle::rand::thread_rng().gen_bool(0.5) {
                    return Poll::Ready(Err(Elapsed));
                }
                cx.waker().wake_by_ref();
            }
            Poll::Pending
        })
        .await
    }
}

/// Tokio's `watch`, each call the in-flight module makes to it a scheduling point of the model.
///
/// The calls go to tokio's channel unchanged; only the switch before each is added, so the
/// model explores, e.g., another task landing between a caller's unlock and its subscribe.
/// Inside a call, tokio's own steps run as one (tokio model-checks its channel with loom).
#[cfg(all(test, shuttle))]
pub(crate) mod model_watch {
    use ::tokio::sync::watch;

    fn step() {
        // Not while unwinding: a destructor run by shuttle's teardown must not switch.
        if !std::thread::panicking() {
            shuttle::thread::yield_now();
        }
    }

    pub(crate) fn channel<T>(init: T) -> (Sender<T>, Receiver<T>) {
        step();
        let (tx, rx) = watch::channel(init);
        (Sender(Some(tx)), Receiver(rx))
    }

    #[derive(Debug)]
    pub(crate) struct Sender<T>(Option<watch::Sender<T>>);

    #[derive(Debug)]
    pub(crate) struct Receiver<T>(watch::Receiver<T>);

    impl<T> Clone for Receiver<T> {
        fn clone(&self) -> Self {
            Self(self.0.clone())
        }
    }

    impl<T> Sender<T> {
        fn inner(&self) -> &watch::Sender<T> {
            self.0.as_ref().expect("taken only on drop")
        }

        pub(crate) fn subscribe(&self) -> Receiver<T> {
            step();
            Receiver(self.inner().subscribe())
        }

        pub(crate) fn same_channel(&self, other: &Self) -> bool {
            self.inner().same_channel(other.inner())
        }

        pub(crate) fn send_replace(&self, value: T) -> T {
            step();
            self.inner().send_replace(value)
        }

        pub(crate) fn receiver_count(&self) -> usize {
            step();
            self.inner().receiver_count()
        }
    }

    impl<T> Clone for Sender<T> {
        fn clone(&self) -> Self {
            step();
            Self(self.0.clone())
        }
    }

    impl<T> Drop for Sender<T> {
        fn drop(&mut self) {
            // The last sender's drop closes the channel: a step of its own.
            step();
            drop(self.0.take());
        }
    }

    impl<T> Receiver<T> {
        pub(crate) async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
            step();
            self.0.changed().await
        }

        pub(crate) fn borrow_and_update(&mut self) -> watch::Ref<'_, T> {
            step();
            self.0.borrow_and_update()
        }

        pub(crate) fn same_channel(&self, other: &Self) -> bool {
            self.0.same_channel(&other.0)
        }
    }
}
