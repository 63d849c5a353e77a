//! What the gateway counts, kept so that counting costs a request next to nothing.
//!
//! Each function has a [`FunctionMetrics`] of plain atomics, shared through an `Arc`. The map
//! from function to its metrics is split into shards, each behind a read-mostly lock, so a
//! request takes one uncontended read lock on its shard and never a lock shared by every
//! request; entries are only written when a function is first seen. Status codes have a slot
//! each, filled once, so recording a call's code and duration is lock-free.
//!
//! Gauges that other parts of the gateway already hold (waiters, single-flight counts, replica
//! counts) are read from them when metrics are scraped, not copied on every change.

pub mod exposition;
pub mod histogram;
pub mod listener;
pub mod measured;
pub mod overview;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;

use crate::function::FunctionRef;
use histogram::{Histogram, REQUEST_BOUNDS, SLOW_BOUNDS};
pub use measured::{Measured, Operation};

const SHARDS: usize = 16;
/// Status codes with a slot: 100 to 599.
const FIRST_CODE: u16 = 100;
const CODES: usize = 500;

/// Every counter the gateway keeps.
pub struct Metrics {
    shards: [RwLock<HashMap<String, Arc<FunctionMetrics>>>; SHARDS],
    provider: measured::ProviderCalls,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            shards: std::array::from_fn(|_| RwLock::new(HashMap::new())),
            provider: measured::ProviderCalls::new(),
        }
    }

    /// The metrics of `function`, created on first use.
    pub fn function(&self, function: &FunctionRef) -> Arc<FunctionMetrics> {
        let shard = self.shard(function.key());
        if let Some(found) = shard.read().get(function.key()) {
            return Arc::clone(found);
        }
        let mut entries = shard.write();
        let entry = entries
            .entry(function.key().to_owned())
            .or_insert_with(|| Arc::new(FunctionMetrics::new(function.clone())));
        Arc::clone(entry)
    }

    /// Starts counting a call to `function`; the returned guard records how it ended.
    pub fn begin(&self, function: &FunctionRef) -> Invocation {
        let metrics = self.function(function);
        metrics.started.fetch_add(1, Ordering::Relaxed);
        metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        Invocation {
            metrics,
            started: Instant::now(),
        }
    }

    /// Drops what was counted for a name the provider does not know, unless it was ever
    /// served: clients choose the names they call, and must not be able to grow the metrics
    /// without bound by calling made-up ones.
    pub fn forget_unknown(&self, function: &FunctionRef) {
        let mut entries = self.shard(function.key()).write();
        let unused = entries
            .get(function.key())
            .is_some_and(|m| m.never_served());
        if unused {
            entries.remove(function.key());
        }
    }

    /// Records a cold start of `function` that took `took`.
    pub fn cold_start(&self, function: &FunctionRef, took: Duration) {
        let metrics = self.function(function);
        metrics.cold_starts.record(took);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        metrics
            .last_cold_start_unix_ms
            .store(now, Ordering::Relaxed);
        let took_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        metrics.last_cold_start_ms.store(took_ms, Ordering::Relaxed);
    }

    /// Every function seen so far, sorted by `name.namespace`.
    pub fn functions(&self) -> Vec<Arc<FunctionMetrics>> {
        let mut all: Vec<_> = self
            .shards
            .iter()
            .flat_map(|s| s.read().values().cloned().collect::<Vec<_>>())
            .collect();
        all.sort_by(|a, b| a.function.key().cmp(b.function.key()));
        all
    }

    pub fn provider_calls(&self) -> &measured::ProviderCalls {
        &self.provider
    }

    /// FNV-1a picks the shard: keys are short, and it needs no randomness since the map
    /// inside the shard hashes them again with a keyed hash.
    fn shard(&self, key: &str) -> &RwLock<HashMap<String, Arc<FunctionMetrics>>> {
        let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        &self.shards[(hash % SHARDS as u64) as usize]
    }
}

/// One function's counters.
pub struct FunctionMetrics {
    pub function: FunctionRef,
    started: AtomicU64,
    in_flight: AtomicI64,
    /// Duration histogram per status code; the count of each is the invocation count.
    codes: Box<[OnceLock<Histogram>; CODES]>,
    cold_starts: Histogram,
    last_cold_start_unix_ms: AtomicU64,
    last_cold_start_ms: AtomicU64,
}

/// A cold start as the status page shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColdStart {
    pub at_unix_ms: u64,
    pub took_ms: u64,
}

impl FunctionMetrics {
    fn new(function: FunctionRef) -> FunctionMetrics {
        FunctionMetrics {
            function,
            started: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            codes: Box::new(std::array::from_fn(|_| OnceLock::new())),
            cold_starts: Histogram::new(SLOW_BOUNDS),
            last_cold_start_unix_ms: AtomicU64::new(0),
            last_cold_start_ms: AtomicU64::new(0),
        }
    }

    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> u64 {
        u64::try_from(self.in_flight.load(Ordering::Relaxed)).unwrap_or(0)
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

    fn never_served(&self) -> bool {
        self.in_flight() == 0
            && self.cold_starts.count() == 0
            && self
                .by_code()
                .all(|(code, h)| code == 404 || h.count() == 0)
    }

    fn record(&self, code: u16, took: Duration) {
        let slot = code
            .checked_sub(FIRST_CODE)
            .map(usize::from)
            .filter(|&i| i < CODES)
            .unwrap_or(usize::from(500 - FIRST_CODE));
        self.codes[slot]
            .get_or_init(|| Histogram::new(REQUEST_BOUNDS))
            .record(took);
    }
}

/// A call being answered: in flight until finished or dropped.
pub struct Invocation {
    metrics: Arc<FunctionMetrics>,
    started: Instant,
}

impl Invocation {
    pub fn function(&self) -> &FunctionRef {
        &self.metrics.function
    }

    /// Records the answer's status and how long the call took, from start to the last byte.
    pub fn finish(self, code: u16) {
        self.metrics.record(code, self.started.elapsed());
    }
}

impl Drop for Invocation {
    fn drop(&mut self) {
        self.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str) -> FunctionRef {
        FunctionRef::new(name, "default").unwrap()
    }

    #[test]
    fn invocations_are_counted_per_code() {
        let metrics = Metrics::new();
        let first = metrics.begin(&f("echo"));
        let second = metrics.begin(&f("echo"));
        assert_eq!(metrics.function(&f("echo")).in_flight(), 2);
        first.finish(200);
        second.finish(502);
        metrics.begin(&f("echo")).finish(200);
        let echo = metrics.function(&f("echo"));
        assert_eq!(echo.started(), 3);
        assert_eq!(echo.in_flight(), 0);
        let codes: Vec<_> = echo.by_code().map(|(c, h)| (c, h.count())).collect();
        assert_eq!(codes, vec![(200, 2), (502, 1)]);
        assert_eq!(echo.invocations(), 3);
    }

    #[test]
    fn a_dropped_invocation_leaves_the_in_flight_count() {
        let metrics = Metrics::new();
        drop(metrics.begin(&f("echo")));
        let echo = metrics.function(&f("echo"));
        assert_eq!(
            (echo.started(), echo.in_flight(), echo.invocations()),
            (1, 0, 0)
        );
    }

    #[test]
    fn unknown_names_are_forgotten_known_ones_kept() {
        let metrics = Metrics::new();
        metrics.begin(&f("made-up")).finish(404);
        metrics.forget_unknown(&f("made-up"));
        metrics.begin(&f("echo")).finish(200);
        metrics.begin(&f("echo")).finish(404);
        metrics.forget_unknown(&f("echo"));
        let names: Vec<_> = metrics
            .functions()
            .iter()
            .map(|m| m.function.key().to_owned())
            .collect();
        assert_eq!(names, vec!["echo.default"]);
    }

    #[test]
    fn codes_outside_the_range_count_as_500() {
        let metrics = Metrics::new();
        metrics.begin(&f("echo")).finish(42);
        let codes: Vec<_> = metrics
            .function(&f("echo"))
            .by_code()
            .map(|(c, _)| c)
            .collect();
        assert_eq!(codes, vec![500]);
    }

    #[test]
    fn cold_starts_remember_the_last() {
        let metrics = Metrics::new();
        assert!(metrics.function(&f("echo")).last_cold_start().is_none());
        metrics.cold_start(&f("echo"), Duration::from_millis(120));
        let last = metrics.function(&f("echo")).last_cold_start().unwrap();
        assert_eq!(last.took_ms, 120);
        assert_eq!(metrics.function(&f("echo")).cold_starts().count(), 1);
    }
}
