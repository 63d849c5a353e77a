//! What the gateway counted for one function: calls by status code with their durations, and
//! cold starts. Plain atomics, so that counting costs a request next to nothing; status codes
//! have a slot each, filled once, so recording a call's code and duration is lock-free.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::histogram::{Histogram, REQUEST_BOUNDS, SLOW_BOUNDS};

/// Status codes with a slot: 100 to 599.
const FIRST_CODE: u16 = 100;
const CODES: usize = 500;

pub struct Counters {
    started: AtomicU64,
    /// Duration histogram per status code; the count of each is the invocation count.
    codes: Box<[OnceLock<Histogram>; CODES]>,
    cold_starts: Histogram,
    last_cold_start_unix_ms: AtomicU64,
    last_cold_start_ms: AtomicU64,
    /// Calls sent again on a new connection after a pooled one turned out closed.
    stale_retries: AtomicU64,
}

/// A cold start as the status page shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColdStart {
    pub at_unix_ms: u64,
    pub took_ms: u64,
}

impl Counters {
    pub(crate) fn new() -> Counters {
        Counters {
            started: AtomicU64::new(0),
            codes: Box::new(std::array::from_fn(|_| OnceLock::new())),
            cold_starts: Histogram::new(SLOW_BOUNDS),
            last_cold_start_unix_ms: AtomicU64::new(0),
            last_cold_start_ms: AtomicU64::new(0),
            stale_retries: AtomicU64::new(0),
        }
    }

    /// Calls begun, answered or not.
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// `(status code, duration histogram)` for every code answered so far.
    pub fn by_code(&self) -> impl Iterator<Item = (u16, &Histogram)> {
        self.codes
            .iter()
            .zip(FIRST_CODE..)
            .filter_map(|(slot, code)| slot.get().map(|h| (code, h)))
    }

    /// Calls answered, whatever their status.
    pub fn invocations(&self) -> u64 {
        self.by_code().map(|(_, h)| h.count()).sum()
    }

    pub fn cold_starts(&self) -> &Histogram {
        &self.cold_starts
    }

    pub fn last_cold_start(&self) -> Option<ColdStart> {
        let at = self.last_cold_start_unix_ms.load(Ordering::Relaxed);
        (at > 0).then(|| ColdStart {
            at_unix_ms: at,
            took_ms: self.last_cold_start_ms.load(Ordering::Relaxed),
        })
    }

    /// Calls sent again because a pooled connection to a replica turned out closed.
    pub fn stale_retries(&self) -> u64 {
        self.stale_retries.load(Ordering::Relaxed)
    }

    pub(crate) fn count_stale_retry(&self) {
        self.stale_retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Nothing but 404s: a name only ever called by mistake.
    pub(crate) fn never_served(&self) -> bool {
        self.cold_starts.count() == 0
            && self
                .by_code()
                .all(|(code, h)| code == 404 || h.count() == 0)
    }

    pub(crate) fn count_start(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    /// Codes outside 100..=599 count as 500.
    pub(crate) fn record(&self, code: u16, took: Duration) {
        let slot = code
            .checked_sub(FIRST_CODE)
            .map(usize::from)
            .filter(|&i| i < CODES)
            .unwrap_or(usize::from(500 - FIRST_CODE));
        self.codes[slot]
            .get_or_init(|| Histogram::new(REQUEST_BOUNDS))
            .record(took);
    }

    pub(crate) fn cold_start(&self, took: Duration) {
        self.cold_starts.record(took);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.last_cold_start_unix_ms.store(now, Ordering::Relaxed);
        let took_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        self.last_cold_start_ms.store(took_ms, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_counted_per_code() {
        let counters = Counters::new();
        for code in [200, 502, 200] {
            counters.count_start();
            counters.record(code, Duration::from_millis(1));
        }
        counters.count_start();
        let codes: Vec<_> = counters.by_code().map(|(c, h)| (c, h.count())).collect();
        assert_eq!(codes, vec![(200, 2), (502, 1)]);
        assert_eq!((counters.started(), counters.invocations()), (4, 3));
    }

    #[test]
    fn codes_outside_the_range_count_as_500() {
        let counters = Counters::new();
        counters.record(42, Duration::ZERO);
        let codes: Vec<_> = counters.by_code().map(|(c, _)| c).collect();
        assert_eq!(codes, vec![500]);
    }

    #[test]
    fn cold_starts_remember_the_last() {
        let counters = Counters::new();
        assert!(counters.last_cold_start().is_none());
        counters.cold_start(Duration::from_millis(120));
        assert_eq!(counters.last_cold_start().map(|c| c.took_ms), Some(120));
        assert_eq!(counters.cold_starts().count(), 1);
        assert!(!counters.never_served());
    }

    #[test]
    fn only_404s_mean_never_served() {
        let counters = Counters::new();
        counters.record(404, Duration::ZERO);
        assert!(counters.never_served());
        counters.record(200, Duration::ZERO);
        assert!(!counters.never_served());
    }
}
