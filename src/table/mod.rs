//! One record per function: everything the gateway keeps about a function, found with one
//! lookup.
//!
//! A request looks its function up once, when its [`Call`](crate::call::Call) begins, and from
//! then on everything it touches (activity, cached status, waiters, cold-start clock, counters,
//! the line of calls waiting for a free slot) is a field of the record it holds. The map is
//! split into shards, each behind a read-mostly lock, so a request takes one uncontended read
//! lock and never a lock shared by every request; the write lock is only taken when a function
//! is first seen or forgotten.

pub(crate) mod activity;
pub(crate) mod cache;
pub mod counters;
pub(crate) mod slots;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};

use crate::function::FunctionRef;
use activity::Activity;
use cache::CachedStatus;
use counters::Counters;
use slots::Slots;

const SHARDS: usize = 16;

/// Every function the gateway has seen a request for.
pub struct FunctionTable {
    shards: [RwLock<HashMap<String, Arc<FunctionRecord>>>; SHARDS],
}

/// What the gateway keeps about one function.
pub struct FunctionRecord {
    function: FunctionRef,
    pub(crate) activity: Activity,
    pub(crate) status: CachedStatus,
    /// Requests waiting for a ready replica, or for a free slot on one, now.
    pub(crate) waiting: AtomicUsize,
    /// When the cold start in progress began, so that exactly one line reports its duration.
    pub(crate) cold_start: Mutex<Option<Instant>>,
    /// The per-replica concurrency limit and the line of calls waiting for a slot.
    pub(crate) slots: Arc<Slots>,
    counters: Counters,
}

impl FunctionRecord {
    fn new(function: FunctionRef) -> FunctionRecord {
        FunctionRecord {
            function,
            activity: Activity::new(),
            status: CachedStatus::default(),
            waiting: AtomicUsize::new(0),
            cold_start: Mutex::new(None),
            slots: Arc::default(),
            counters: Counters::new(),
        }
    }

    pub fn function(&self) -> &FunctionRef {
        &self.function
    }

    /// Requests for the function being answered now, from routing to the last byte sent.
    pub fn in_flight(&self) -> usize {
        self.activity.in_flight()
    }

    /// Requests waiting for a ready replica, or for a free slot on one, now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Calls waiting for a free slot on a replica now (among [`FunctionRecord::waiting`]).
    pub fn queued_for_slot(&self) -> usize {
        self.slots.queued()
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }
}

impl Default for FunctionTable {
    fn default() -> Self {
        FunctionTable::new()
    }
}

impl FunctionTable {
    /// An empty table.
    pub fn new() -> FunctionTable {
        FunctionTable {
            shards: std::array::from_fn(|_| RwLock::new(HashMap::new())),
        }
    }

    /// The function's record, made on first use.
    pub(crate) fn record(&self, function: &FunctionRef) -> Arc<FunctionRecord> {
        let shard = self.shard(function.key());
        if let Some(found) = shard.read().get(function.key()) {
            return Arc::clone(found);
        }
        let mut records = shard.write();
        let record = records
            .entry(function.key().to_owned())
            .or_insert_with(|| Arc::new(FunctionRecord::new(function.clone())));
        Arc::clone(record)
    }

    /// The function's record, if it has one.
    pub fn get(&self, function: &FunctionRef) -> Option<Arc<FunctionRecord>> {
        self.shard(function.key())
            .read()
            .get(function.key())
            .cloned()
    }

    /// Every record, sorted by `name.namespace`.
    pub fn all(&self) -> Vec<Arc<FunctionRecord>> {
        let mut all: Vec<_> = self
            .shards
            .iter()
            .flat_map(|s| s.read().values().cloned().collect::<Vec<_>>())
            .collect();
        all.sort_by(|a, b| a.function.key().cmp(b.function.key()));
        all
    }

    /// Drops the record of a name the provider does not know, unless it was ever served or is
    /// in use: clients choose the names they call, and must not be able to grow the table
    /// without bound by calling made-up ones. A request that comes later makes a new record.
    pub fn forget_unknown(&self, function: &FunctionRef) {
        self.forget_if(function, |r| r.counters.never_served());
    }

    /// Drops the record of a function the provider no longer runs (removed by a reload, deleted
    /// through the API), counters and all, once nothing uses it.
    pub(crate) fn forget_gone(&self, function: &FunctionRef) {
        self.forget_if(function, |_| true);
    }

    fn forget_if(&self, function: &FunctionRef, unused: impl Fn(&FunctionRecord) -> bool) {
        let mut records = self.shard(function.key()).write();
        let idle = records
            .get(function.key())
            .is_some_and(|r| r.in_flight() == 0 && r.waiting() == 0 && unused(r));
        if idle {
            records.remove(function.key());
        }
    }

    /// FNV-1a picks the shard: keys are short, and it needs no randomness since the map
    /// inside the shard hashes them again with a keyed hash.
    fn shard(&self, key: &str) -> &RwLock<HashMap<String, Arc<FunctionRecord>>> {
        let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        &self.shards[(hash % SHARDS as u64) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn f(name: &str) -> FunctionRef {
        FunctionRef::new(name, "default").unwrap()
    }

    fn keys(table: &FunctionTable) -> Vec<String> {
        table
            .all()
            .iter()
            .map(|r| r.function.key().to_owned())
            .collect()
    }

    #[test]
    fn one_record_per_function() {
        let table = FunctionTable::new();
        let a = table.record(&f("a"));
        assert!(Arc::ptr_eq(&a, &table.record(&f("a"))));
        table.record(&f("b"));
        assert_eq!(keys(&table), ["a.default", "b.default"]);
    }

    #[test]
    fn unknown_names_are_forgotten_known_and_busy_ones_kept() {
        let table = FunctionTable::new();
        table
            .record(&f("made-up"))
            .counters
            .record(404, Duration::ZERO);
        table.forget_unknown(&f("made-up"));
        table
            .record(&f("echo"))
            .counters
            .record(200, Duration::ZERO);
        table.forget_unknown(&f("echo"));
        let busy = table.record(&f("busy"));
        busy.activity.begin();
        table.forget_unknown(&f("busy"));
        assert_eq!(keys(&table), ["busy.default", "echo.default"]);
        busy.activity.end();
    }
}
