//! Per-function activity: requests in flight and the time of the last one.
//!
//! Scale to zero and capacity autoscaling decide on these, and every request updates them, so
//! they are atomics in one struct per function. The map that finds a function's struct is only
//! written the first time a function is seen; after that a request takes its read lock, which
//! never waits for another reader.
//!
//! The struct is also the gate that makes scale to zero race-free. A request counts itself in
//! flight, then looks at `zeroing`; a scale-down sets `zeroing`, then looks at the count. Both
//! sides use sequentially consistent operations, so at least one of them sees the other: either
//! the scale-down backs off, or the request waits for it to finish and then finds the function
//! at zero, which starts a new replica like any cold start.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};

use crate::function::FunctionRef;

/// Longest single sleep of a request held back by a scale-down; the wake-up normally comes
/// sooner, this only bounds the cost of a missed one.
const GATE_POLL: Duration = Duration::from_millis(20);

/// Activity of every function that has had a request.
pub struct Activity {
    functions: RwLock<HashMap<String, Arc<FunctionActivity>>>,
    /// Reference point for the millisecond timestamps kept in atomics.
    epoch: Instant,
    /// Where requests held back by a scale-down sleep; rare, so one for all functions.
    gate: Mutex<()>,
    opened: Condvar,
}

/// One function's counters.
pub struct FunctionActivity {
    pub function: FunctionRef,
    in_flight: AtomicUsize,
    /// Milliseconds after the epoch at which the last request ended (or the entry was made).
    last_active_ms: AtomicU64,
    zeroing: AtomicBool,
}

impl FunctionActivity {
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
}

/// A request counted in flight until dropped.
pub struct Busy {
    activity: Arc<FunctionActivity>,
    epoch: Instant,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.activity
            .last_active_ms
            .store(millis_since(self.epoch), Ordering::SeqCst);
        self.activity.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            functions: RwLock::new(HashMap::new()),
            epoch: Instant::now(),
            gate: Mutex::new(()),
            opened: Condvar::new(),
        }
    }

    /// Counts a request for `function` in flight, first waiting out a scale to zero in progress.
    pub fn begin(&self, function: &FunctionRef) -> Busy {
        let activity = self.of(function);
        loop {
            activity.in_flight.fetch_add(1, Ordering::SeqCst);
            if !activity.zeroing.load(Ordering::SeqCst) {
                // No timestamp here: a function is never idle while counted in flight, and the
                // end of the request stamps it.
                return Busy {
                    activity,
                    epoch: self.epoch,
                };
            }
            activity.in_flight.fetch_sub(1, Ordering::SeqCst);
            let mut gate = self.gate.lock();
            if activity.zeroing.load(Ordering::SeqCst) {
                self.opened.wait_for(&mut gate, GATE_POLL);
            }
        }
    }

    /// Every function seen so far.
    pub fn all(&self) -> Vec<Arc<FunctionActivity>> {
        self.functions.read().values().cloned().collect()
    }

    /// How long the function has had no request in flight; `None` while it has one.
    pub fn idle_for(&self, activity: &FunctionActivity) -> Option<Duration> {
        if activity.in_flight() > 0 {
            return None;
        }
        let last = activity.last_active_ms.load(Ordering::SeqCst);
        Some(Duration::from_millis(
            millis_since(self.epoch).saturating_sub(last),
        ))
    }

    /// Runs `stop` with new requests for the function held back, provided it has been idle for
    /// at least `idle` once they are; returns whether `stop` ran.
    pub fn while_idle(
        &self,
        activity: &FunctionActivity,
        idle: Duration,
        stop: impl FnOnce(),
    ) -> bool {
        activity.zeroing.store(true, Ordering::SeqCst);
        let ran = self.idle_for(activity).is_some_and(|d| d >= idle);
        if ran {
            stop();
        }
        let _gate = self.gate.lock();
        activity.zeroing.store(false, Ordering::SeqCst);
        self.opened.notify_all();
        ran
    }

    /// Drops an idle function's entry, so that requests for names the provider does not know
    /// cannot grow the map without bound. A request that comes later starts a new entry.
    pub fn forget(&self, function: &FunctionRef) {
        let mut functions = self.functions.write();
        if functions
            .get(function.key())
            .is_some_and(|a| a.in_flight() == 0)
        {
            functions.remove(function.key());
        }
    }

    fn of(&self, function: &FunctionRef) -> Arc<FunctionActivity> {
        if let Some(a) = self.functions.read().get(function.key()) {
            return Arc::clone(a);
        }
        let mut functions = self.functions.write();
        let entry = functions
            .entry(function.key().to_owned())
            .or_insert_with(|| {
                Arc::new(FunctionActivity {
                    function: function.clone(),
                    in_flight: AtomicUsize::new(0),
                    last_active_ms: AtomicU64::new(millis_since(self.epoch)),
                    zeroing: AtomicBool::new(false),
                })
            });
        Arc::clone(entry)
    }
}

fn millis_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    fn f() -> FunctionRef {
        FunctionRef::new("f", "default").unwrap()
    }

    #[test]
    fn in_flight_requests_are_never_idle() {
        let activity = Activity::new();
        let busy = activity.begin(&f());
        let a = activity.all().pop().unwrap();
        assert_eq!(a.in_flight(), 1);
        assert_eq!(activity.idle_for(&a), None);
        assert!(!activity.while_idle(&a, Duration::ZERO, || panic!("stopped while busy")));
        drop(busy);
        assert!(activity.idle_for(&a).is_some());
        assert!(activity.while_idle(&a, Duration::ZERO, || {}));
    }

    #[test]
    fn only_idle_functions_are_forgotten() {
        let activity = Activity::new();
        let busy = activity.begin(&f());
        activity.forget(&f());
        assert_eq!(activity.all().len(), 1);
        drop(busy);
        activity.forget(&f());
        assert!(activity.all().is_empty());
    }

    #[test]
    fn a_request_arriving_during_a_stop_waits_for_it() {
        let activity = Arc::new(Activity::new());
        drop(activity.begin(&f()));
        let a = activity.all().pop().unwrap();
        let stopped = Arc::new(AtomicBool::new(false));
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let stopper = {
            let (activity, a, stopped) = (activity.clone(), a.clone(), stopped.clone());
            thread::spawn(move || {
                activity.while_idle(&a, Duration::ZERO, || {
                    entered_tx.send(()).unwrap();
                    release_rx.recv_timeout(Duration::from_secs(10)).unwrap();
                    stopped.store(true, Ordering::SeqCst);
                })
            })
        };
        entered_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let request = {
            let (activity, stopped) = (activity.clone(), stopped.clone());
            thread::spawn(move || {
                let _busy = activity.begin(&f());
                stopped.load(Ordering::SeqCst)
            })
        };
        release_tx.send(()).unwrap();
        assert!(stopper.join().unwrap());
        assert!(
            request.join().unwrap(),
            "the request went ahead before the stop ended"
        );
    }
}
