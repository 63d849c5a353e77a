//! Single-flight: concurrent callers with the same key share one call and its result.
//!
//! A `parking_lot::Mutex` guards a map of calls in flight; each call has a `Condvar` its
//! followers sleep on. The leader runs the work outside the lock, stores the result, removes the
//! key and wakes every follower at once. A leader that panics still publishes (an
//! [`Abandoned`] error) from a drop guard, so no follower is ever left waiting; the panic then
//! continues in the leader's own thread.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

/// The leader of a shared call panicked before producing a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abandoned;

impl fmt::Display for Abandoned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the shared call was abandoned by its leader")
    }
}

impl std::error::Error for Abandoned {}

/// A group of calls deduplicated by key.
pub struct SingleFlight<K, V> {
    calls: Mutex<HashMap<K, Arc<Call<V>>>>,
    led: AtomicU64,
    followed: AtomicU64,
}

struct Call<V> {
    result: Mutex<Option<Result<V, Abandoned>>>,
    done: Condvar,
}

impl<K: Eq + Hash + Clone, V: Clone> SingleFlight<K, V> {
    /// An empty group.
    pub fn new() -> Self {
        SingleFlight {
            calls: Mutex::new(HashMap::new()),
            led: AtomicU64::new(0),
            followed: AtomicU64::new(0),
        }
    }

    /// Runs `work` unless a call with the same key is already running, in which case waits for
    /// that call and returns a clone of its result.
    pub fn run<F: FnOnce() -> V>(&self, key: &K, work: F) -> Result<V, Abandoned> {
        let (call, leader) = self.join(key);
        if !leader {
            self.followed.fetch_add(1, Ordering::Relaxed);
            return wait(&call);
        }
        self.led.fetch_add(1, Ordering::Relaxed);
        let mut publish = Publish {
            group: self,
            key,
            call: &call,
            value: None,
        };
        let value = work();
        publish.value = Some(value.clone());
        drop(publish);
        Ok(value)
    }

    /// Calls that ran their work, and callers that shared another's: the ratio is how much
    /// coalescing saved.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.led.load(Ordering::Relaxed),
            self.followed.load(Ordering::Relaxed),
        )
    }

    /// Keys with a call in flight (for tests and diagnostics).
    pub fn in_flight(&self) -> usize {
        self.calls.lock().len()
    }

    fn join(&self, key: &K) -> (Arc<Call<V>>, bool) {
        let mut calls = self.calls.lock();
        if let Some(call) = calls.get(key) {
            return (Arc::clone(call), false);
        }
        let call = Arc::new(Call {
            result: Mutex::new(None),
            done: Condvar::new(),
        });
        calls.insert(key.clone(), Arc::clone(&call));
        (call, true)
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Default for SingleFlight<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

fn wait<V: Clone>(call: &Call<V>) -> Result<V, Abandoned> {
    let mut result = call.result.lock();
    loop {
        if let Some(result) = result.as_ref() {
            return result.clone();
        }
        call.done.wait(&mut result);
    }
}

/// Publishes the leader's result, or [`Abandoned`] if the leader unwinds, and retires the key.
struct Publish<'a, K: Eq + Hash, V> {
    group: &'a SingleFlight<K, V>,
    key: &'a K,
    call: &'a Call<V>,
    value: Option<V>,
}

impl<K: Eq + Hash, V> Drop for Publish<'_, K, V> {
    fn drop(&mut self) {
        // Retire the key first: a caller arriving from now on starts a fresh call rather than
        // reading a result that is about to be stale.
        self.group.calls.lock().remove(self.key);
        *self.call.result.lock() = Some(self.value.take().ok_or(Abandoned));
        self.call.done.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::atomic::AtomicUsize;
    use std::sync::Barrier;
    use std::thread;
    use std::time::Duration;

    #[test]
    fn uncontended_call_runs_its_work() {
        let group: SingleFlight<String, u32> = SingleFlight::new();
        assert_eq!(group.run(&"k".into(), || 7), Ok(7));
        assert_eq!(group.counts(), (1, 0));
        assert_eq!(group.in_flight(), 0);
    }

    /// Many callers, one execution, everyone gets the leader's value.
    #[test]
    fn concurrent_callers_share_one_call() {
        let group = Arc::new(SingleFlight::<&'static str, Result<u64, String>>::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let start = Arc::new(Barrier::new(32));
        let handles: Vec<_> = (0..32)
            .map(|_| {
                let (group, runs, start) = (group.clone(), runs.clone(), start.clone());
                thread::spawn(move || {
                    start.wait();
                    group.run(&"fn", || {
                        runs.fetch_add(1, Ordering::SeqCst);
                        thread::sleep(Duration::from_millis(200));
                        Ok(42)
                    })
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), Ok(Ok(42)));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(group.counts(), (1, 31));
        assert_eq!(group.in_flight(), 0, "key leaked");
    }

    #[test]
    fn leader_failure_reaches_every_follower() {
        let group = Arc::new(SingleFlight::<u8, Result<(), String>>::new());
        let started = Arc::new(Barrier::new(2));
        let leader = {
            let (group, started) = (group.clone(), started.clone());
            thread::spawn(move || {
                group.run(&1, || {
                    started.wait();
                    thread::sleep(Duration::from_millis(200));
                    Err("provider said no".to_string())
                })
            })
        };
        started.wait();
        let follower = group.run(&1, || Ok(()));
        assert_eq!(follower, Ok(Err("provider said no".to_string())));
        assert_eq!(
            leader.join().unwrap(),
            Ok(Err("provider said no".to_string()))
        );
    }

    #[test]
    fn leader_panic_releases_followers_with_an_error() {
        let group = Arc::new(SingleFlight::<u8, u8>::new());
        let started = Arc::new(Barrier::new(2));
        let leader = {
            let (group, started) = (group.clone(), started.clone());
            thread::spawn(move || {
                catch_unwind(AssertUnwindSafe(|| {
                    group.run(&1, || {
                        started.wait();
                        thread::sleep(Duration::from_millis(200));
                        panic!("leader blew up")
                    })
                }))
            })
        };
        started.wait();
        assert_eq!(group.run(&1, || 9), Err(Abandoned));
        assert!(
            leader.join().unwrap().is_err(),
            "the panic must reach the leader"
        );
        assert_eq!(group.in_flight(), 0);
        assert_eq!(group.run(&1, || 9), Ok(9), "the key is usable again");
    }

    #[test]
    fn different_keys_do_not_wait_for_each_other() {
        let group = Arc::new(SingleFlight::<u8, u8>::new());
        let inside = Arc::new(Barrier::new(2));
        let slow = {
            let (group, inside) = (group.clone(), inside.clone());
            thread::spawn(move || {
                group.run(&1, || {
                    inside.wait();
                    thread::sleep(Duration::from_millis(300));
                    1
                })
            })
        };
        inside.wait();
        assert_eq!(group.run(&2, || 2), Ok(2));
        assert_eq!(group.in_flight(), 1, "only the slow key is in flight");
        assert_eq!(slow.join().unwrap(), Ok(1));
    }
}
