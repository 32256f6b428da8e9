//! Instants as nanoseconds on one process-wide scale, for the deadlines of entries.
//!
//! A hit compares the time against several deadlines and derives an age and a ttl from it:
//! with [`Stamp`]s that is integer arithmetic after one conversion of `Instant::now()`, where
//! `Instant`s would normalise seconds and nanoseconds on every subtraction. A stamp is also half
//! the size of an `Instant`, and an entry holds six.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// How far before the first reading the scale starts: a paused tokio clock reads the time its
/// runtime was built (or paused) at, which may precede the first reading of the scale.
const HEADROOM: Duration = Duration::from_secs(60 * 60 * 24 * 365);

/// An instant, in nanoseconds since the scale's origin (saturating at both ends: 584 years).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Stamp(u64);

fn origin() -> std::time::Instant {
    static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();
    *ORIGIN.get_or_init(|| {
        let now = std::time::Instant::now();
        // Where an `Instant` cannot go back before boot (not Linux), take what headroom there is.
        let mut headroom = HEADROOM;
        while !headroom.is_zero() {
            if let Some(origin) = now.checked_sub(headroom) {
                return origin;
            }
            headroom /= 2;
        }
        now
    })
}

fn nanos(duration: Duration) -> u64 {
    duration
        .as_secs()
        .saturating_mul(NANOS_PER_SEC)
        .saturating_add(u64::from(duration.subsec_nanos()))
}

impl Stamp {
    /// The current time, from tokio's clock (so paused test clocks apply).
    pub(crate) fn now() -> Self {
        Self::from(Instant::now())
    }

    /// This stamp `after` later, saturating.
    pub(crate) fn after(self, after: Duration) -> Self {
        Self(self.0.saturating_add(nanos(after)))
    }

    /// This stamp `before` earlier, saturating.
    pub(crate) fn before(self, before: Duration) -> Self {
        Self(self.0.saturating_sub(nanos(before)))
    }

    /// The time from `earlier` to this stamp; zero when `earlier` is later.
    pub(crate) fn since(self, earlier: Self) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// The nanoseconds from `earlier` to this stamp; zero when `earlier` is later.
    pub(crate) fn nanos_since(self, earlier: Self) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// The same instant as a tokio `Instant`.
    pub(crate) fn instant(self) -> Instant {
        Instant::from_std(origin() + Duration::from_nanos(self.0))
    }

    /// Whole seconds from this stamp to `deadline`: positive (rounded down) while the deadline
    /// is ahead, negative (rounded up, so a just-passed deadline reads -1, not -0) once passed.
    pub(crate) fn secs_until(self, deadline: Self) -> i64 {
        if self < deadline {
            i64::try_from((deadline.0 - self.0) / NANOS_PER_SEC).unwrap_or(i64::MAX)
        } else {
            let past = self.0 - deadline.0;
            -i64::try_from(past.div_ceil(NANOS_PER_SEC)).unwrap_or(i64::MAX)
        }
    }
}

impl From<Instant> for Stamp {
    fn from(instant: Instant) -> Self {
        Self(nanos(
            instant.into_std().saturating_duration_since(origin()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn stamps_follow_the_paused_clock_and_convert_back() {
        let start = Stamp::now();
        tokio::time::advance(Duration::from_millis(1_500)).await;
        let later = Stamp::now();
        assert_eq!(later.since(start), Duration::from_millis(1_500));
        assert_eq!(start.since(later), Duration::ZERO);
        assert_eq!(start.secs_until(later), 1);
        assert_eq!(later.secs_until(start), -2);
        assert_eq!(later.secs_until(later), 0);
        assert_eq!(start.after(Duration::from_millis(1_500)), later);
        assert_eq!(later.instant(), Instant::now());
        assert_eq!(Stamp::from(later.instant()), later);
    }

    #[test]
    fn a_huge_duration_saturates_instead_of_wrapping() {
        let stamp = Stamp::from(Instant::now());
        assert_eq!(stamp.after(Duration::MAX), Stamp(u64::MAX));
        assert!(stamp.after(Duration::MAX) > stamp);
    }
}
