//! A lock-free histogram with fixed bucket bounds, in the Prometheus sense.
//!
//! Recording is one bucket search over a handful of bounds and two relaxed atomic adds, so it
//! can sit on the request path of every call. Buckets are stored per interval, not cumulative:
//! a record touches one bucket, and the cumulative series is built when the histogram is read.
//! The count is the sum of the buckets, so a scrape can never show `_count` and the `+Inf`
//! bucket disagreeing, however much traffic runs while it reads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds, in seconds, of the OpenFaaS gateway's `gateway_functions_seconds` (the
/// Prometheus client's defaults), so that existing dashboards bucket the same way.
pub const REQUEST_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds, in seconds, for cold starts and provider calls: from a fast local process to
/// a slow image pull.
pub const SLOW_BOUNDS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

pub struct Histogram {
    /// Bucket bounds in nanoseconds, for an integer comparison on the hot path.
    bounds_nanos: Vec<u64>,
    bounds: &'static [f64],
    /// One count per bound, then one for everything above the last bound.
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
}

/// A histogram read at one moment: cumulative bucket counts, the total and the sum.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// `(upper bound in seconds, observations at or below it)`, ending with `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds_nanos: bounds.iter().map(|b| (b * 1e9) as u64).collect(),
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn record(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = self
            .bounds_nanos
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(self.bounds_nanos.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    pub fn read(&self) -> Reading {
        let mut running = 0;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (i, count) in self.counts.iter().enumerate() {
            running += count.load(Ordering::Relaxed);
            let bound = self.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, running));
        }
        Reading {
            buckets,
            count: running,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_end_at_the_count() {
        let h = Histogram::new(REQUEST_BOUNDS);
        for ms in [1, 7, 7, 300, 20_000] {
            h.record(Duration::from_millis(ms));
        }
        let r = h.read();
        assert_eq!(r.count, 5);
        assert_eq!(r.buckets.len(), REQUEST_BOUNDS.len() + 1);
        assert_eq!(r.buckets[0], (0.005, 1));
        assert_eq!(r.buckets[1], (0.01, 3));
        assert_eq!(r.buckets[6], (0.5, 4));
        assert_eq!(r.buckets[10], (10.0, 4));
        assert_eq!(r.buckets[11].1, 5);
        assert!(r.buckets[11].0.is_infinite());
        assert!((r.sum_seconds - 20.315).abs() < 1e-9, "{}", r.sum_seconds);
    }

    #[test]
    fn a_bound_is_inclusive() {
        let h = Histogram::new(REQUEST_BOUNDS);
        h.record(Duration::from_millis(5));
        assert_eq!(h.read().buckets[0].1, 1);
    }
}
