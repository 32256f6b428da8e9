//! The Redis tier's circuit breaker: after a run of failures (timeouts, refused or broken
//! connections) it stops calling Redis for a cooldown, then lets one probe through
//! (half-open); the probe's success closes it. Logged once per change of state.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Where the breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Redis is called.
    Closed,
    /// Redis is not called until the cooldown ends.
    Open,
    /// One probe is under way; the others do not call Redis.
    HalfOpen,
}

#[derive(Debug)]
struct State {
    failures: u32,
    open_until: Option<Instant>,
    probing: bool,
}

#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

/// Permission to call Redis: tell the breaker how the call went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    Call,
    Probe,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            state: Mutex::new(State {
                failures: 0,
                open_until: None,
                probing: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a call may go to Redis now.
    pub(crate) fn pass(&self) -> Option<Pass> {
        let mut state = self.lock();
        match state.open_until {
            None => Some(Pass::Call),
            Some(until) if Instant::now() < until => None,
            Some(_) if state.probing => None,
            Some(_) => {
                state.probing = true;
                Some(Pass::Probe)
            }
        }
    }

    pub(crate) fn succeeded(&self, pass: Pass) {
        let mut state = self.lock();
        state.failures = 0;
        if pass == Pass::Probe || state.open_until.is_some() {
            if state.open_until.is_some() {
                tracing::info!("redis tier: Redis answers again; sharing resumes (breaker closed)");
            }
            state.open_until = None;
            state.probing = false;
        }
    }

    /// Counts a failure; `true` when it opened the breaker (or failed its probe).
    pub(crate) fn failed(&self, pass: Pass, why: &dyn std::fmt::Display) -> bool {
        let mut state = self.lock();
        state.failures = state.failures.saturating_add(1);
        let reopen = pass == Pass::Probe;
        if reopen || (state.open_until.is_none() && state.failures >= self.threshold) {
            if !reopen {
                tracing::warn!(
                    error = %why,
                    cooldown_ms = self.cooldown.as_millis() as u64,
                    "redis tier: Redis is failing; requests go on without it (breaker open)"
                );
            }
            state.open_until = Some(Instant::now() + self.cooldown);
            state.probing = false;
            return true;
        }
        false
    }

    /// The probe's caller went away before it had an answer: the next call probes instead.
    pub(crate) fn abandon(&self) {
        self.lock().probing = false;
    }

    pub(crate) fn state(&self) -> BreakerState {
        let state = self.lock();
        match state.open_until {
            None => BreakerState::Closed,
            Some(_) if state.probing => BreakerState::HalfOpen,
            Some(until) if Instant::now() >= until => BreakerState::HalfOpen,
            Some(_) => BreakerState::Open,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_the_threshold_then_probes_once_and_closes_on_success() {
        let breaker = Breaker::new(3, Duration::from_secs(1));
        for _ in 0..2 {
            let pass = breaker.pass().unwrap();
            breaker.failed(pass, &"refused");
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
        let pass = breaker.pass().unwrap();
        breaker.failed(pass, &"refused");
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(breaker.pass(), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(breaker.pass(), Some(Pass::Probe));
        assert_eq!(breaker.pass(), None, "one probe at a time");
        breaker.succeeded(Pass::Probe);
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(breaker.pass(), Some(Pass::Call));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_it_for_another_cooldown() {
        let breaker = Breaker::new(1, Duration::from_secs(1));
        let pass = breaker.pass().unwrap();
        breaker.failed(pass, &"timeout");
        tokio::time::advance(Duration::from_secs(1)).await;
        let probe = breaker.pass().unwrap();
        breaker.failed(probe, &"timeout");
        assert_eq!(breaker.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(breaker.pass(), None);
    }
}
