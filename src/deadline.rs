//! Deadlines from configured durations, which may be absurdly long.
//!
//! An operator who means "never time out" writes `ready_timeout = 9223372036854775807`, and
//! `Instant + Duration` panics on overflow: in a worker that panic lost the request. Every
//! deadline the gateway computes from a duration it was given goes through here and
//! saturates at a moment far enough ahead to mean "never" instead.

use std::time::{Duration, Instant};

/// How far ahead a deadline that cannot be represented is put: later than any process lives.
const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `d`, or [`FAR`] if longer: for code that adds durations to instants itself and would
/// panic on a huge one (ureq does, for its timeouts).
pub fn bounded(d: Duration) -> Duration {
    d.min(FAR)
}

/// `now + d`, saturating.
pub fn after(d: Duration) -> Instant {
    from(Instant::now(), d)
}

/// `start + d`, saturating at [`FAR`] after `start` (and at `start` itself on a clock that
/// cannot even represent that, where no deadline could be honoured anyway).
pub fn from(start: Instant, d: Duration) -> Instant {
    start
        .checked_add(d)
        .or_else(|| start.checked_add(FAR.min(d)))
        .unwrap_or(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_durations_are_added_exactly() {
        let start = Instant::now();
        let d = Duration::from_millis(1500);
        assert_eq!(from(start, d), start + d);
        assert_eq!(from(start, Duration::ZERO), start);
        assert_eq!(bounded(d), d);
    }

    #[test]
    fn huge_durations_saturate_far_ahead() {
        let start = Instant::now();
        for huge in [
            Duration::MAX,
            Duration::from_secs(i64::MAX as u64),
            Duration::from_secs(u64::MAX / 2),
        ] {
            let deadline = from(start, huge);
            assert!(deadline >= start + FAR, "{huge:?}");
            assert!(after(huge) > Instant::now() + Duration::from_secs(3600));
            assert_eq!(bounded(huge), FAR);
            assert!(start.checked_add(bounded(huge)).is_some());
        }
    }
}
