//! One function's activity: requests in flight and the time the last one ended.
//!
//! Scale to zero and capacity autoscaling decide on these, `/metrics` shows them, and every
//! request updates them, so they are atomics.
//!
//! They are also the gate that makes scale to zero race-free. A request counts itself in
//! flight, then looks at `zeroing`; a scale-down sets `zeroing`, then looks at the count. Both
//! sides use sequentially consistent operations, so at least one of them sees the other: either
//! the scale-down backs off, or the request waits for it to finish and then finds the function
//! at zero, which starts a new replica like any cold start.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// Longest single sleep of a request held back by a scale-down; the wake-up normally comes
/// sooner, this only bounds the cost of a missed one.
const GATE_POLL: Duration = Duration::from_millis(20);

pub(crate) struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds after `epoch` at which the last request ended (or the record was made).
    last_active_ms: AtomicU64,
    epoch: Instant,
    zeroing: AtomicBool,
    /// Where requests held back by a scale-down sleep.
    gate: Mutex<()>,
    opened: Condvar,
}

impl Activity {
    pub(crate) fn new() -> Activity {
        Activity {
            in_flight: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            zeroing: AtomicBool::new(false),
            gate: Mutex::new(()),
            opened: Condvar::new(),
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Counts a request in flight, first waiting out a scale to zero in progress. No timestamp
    /// here: a function is never idle while counted in flight, and [`Activity::end`] stamps it.
    pub(crate) fn begin(&self) {
        loop {
            self.in_flight.fetch_add(1, Ordering::SeqCst);
            if !self.zeroing.load(Ordering::SeqCst) {
                return;
            }
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            let mut gate = self.gate.lock();
            if self.zeroing.load(Ordering::SeqCst) {
                self.opened.wait_for(&mut gate, GATE_POLL);
            }
        }
    }

    /// Ends a request counted by [`Activity::begin`].
    pub(crate) fn end(&self) {
        self.last_active_ms
            .store(self.millis_now(), Ordering::SeqCst);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    /// Restarts the idle clock without a request: a scale above zero, from the API or a cold
    /// start, says the function is wanted now. An OpenFaaS gateway in front scales a function
    /// up and then polls for it before it forwards the request; judged by the last request
    /// alone, the function would be stopped again before that request arrives.
    pub(crate) fn touch(&self) {
        self.last_active_ms
            .store(self.millis_now(), Ordering::SeqCst);
    }

    /// How long the function has had no request in flight; `None` while it has one.
    pub(crate) fn idle_for(&self) -> Option<Duration> {
        if self.in_flight() > 0 {
            return None;
        }
        let last = self.last_active_ms.load(Ordering::SeqCst);
        Some(Duration::from_millis(
            self.millis_now().saturating_sub(last),
        ))
    }

    /// Runs `stop` with new requests held back, provided the function has been idle for at
    /// least `idle` once they are; returns whether `stop` ran.
    pub(crate) fn while_idle(&self, idle: Duration, stop: impl FnOnce()) -> bool {
        self.zeroing.store(true, Ordering::SeqCst);
        let ran = self.idle_for().is_some_and(|d| d >= idle);
        if ran {
            stop();
        }
        let _gate = self.gate.lock();
        self.zeroing.store(false, Ordering::SeqCst);
        self.opened.notify_all();
        ran
    }

    fn millis_now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;

    #[test]
    fn in_flight_requests_are_never_idle() {
        let activity = Activity::new();
        activity.begin();
        assert_eq!(activity.in_flight(), 1);
        assert_eq!(activity.idle_for(), None);
        assert!(!activity.while_idle(Duration::ZERO, || panic!("stopped while busy")));
        activity.end();
        assert!(activity.idle_for().is_some());
        assert!(activity.while_idle(Duration::ZERO, || {}));
    }

    #[test]
    fn a_touch_restarts_the_idle_clock() {
        let activity = Activity::new();
        let idle = Duration::from_millis(300);
        thread::sleep(idle);
        assert!(activity.idle_for().is_some_and(|d| d >= idle));
        activity.touch();
        assert!(!activity.while_idle(idle, || panic!("stopped right after a scale-up")));
    }

    #[test]
    fn a_request_arriving_during_a_stop_waits_for_it() {
        let activity = Arc::new(Activity::new());
        let stopped = Arc::new(AtomicBool::new(false));
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let stopper = {
            let (activity, stopped) = (activity.clone(), stopped.clone());
            thread::spawn(move || {
                activity.while_idle(Duration::ZERO, || {
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
                activity.begin();
                let after = stopped.load(Ordering::SeqCst);
                activity.end();
                after
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
