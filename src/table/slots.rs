//! A function's per-replica concurrency limit: how many calls one replica takes at once, and
//! the line of calls waiting for a free slot.
//!
//! A function without a limit never takes the lock here: its calls read one atomic and go to
//! the least-loaded replica as before. With a limit, a replica is chosen only while it has a
//! free slot, and the choice and the count happen under the line's lock, so two calls can never
//! both take a replica's last slot. Calls that find every slot busy join a FIFO line, each with
//! a condition variable of its own: a freed slot is handed to the oldest waiter alone (no
//! stampede), already counted on its replica. A replica that becomes ready brings its own
//! slots, and releases that many waiters, not the whole line.
//!
//! The line counts the slots taken per endpoint address itself, rather than trusting the
//! endpoints' in-flight counts: a provider may hand out a new [`Endpoint`] for a replica it
//! already had (one that takes a parked replica back into service does), and a count starting
//! again from zero would let a second call onto a busy replica. A provider with one endpoint
//! per replica (the process provider) gives exact per-replica accounting. A provider that
//! balances behind one endpoint for the whole function (an OpenFaaS provider's function route)
//! gets the limit times its available replicas on that endpoint: it spreads them, defrost
//! cannot.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::provider::{Endpoint, FunctionStatus, InFlight};

/// Calls one replica of the function takes at once; `0` or absent: no limit. Defrost's own
/// label, written by a `[[function]]` entry's `max_concurrency`.
pub const LABEL_MAX_CONCURRENCY: &str = "com.defrost.max-concurrency";

/// The label a `[[function]]` entry's `max_concurrency` stands for.
pub fn concurrency_labels(max_concurrency: Option<u64>) -> Vec<(String, String)> {
    max_concurrency
        .filter(|&n| n > 0)
        .map(|n| (LABEL_MAX_CONCURRENCY.to_owned(), n.to_string()))
        .into_iter()
        .collect()
}

/// The limit the labels set: `Ok(0)` when none, `Err` with the value when it is not a whole
/// number.
pub fn limit_from_labels(labels: &BTreeMap<String, String>) -> Result<usize, String> {
    match labels.get(LABEL_MAX_CONCURRENCY) {
        None => Ok(0),
        Some(v) => v.trim().parse::<usize>().map_err(|_| v.clone()),
    }
}

/// One function's limit and line.
#[derive(Default)]
pub(crate) struct Slots {
    /// Calls one replica takes at once; 0: unlimited. Read by every call, without the lock.
    limit: AtomicUsize,
    /// Calls in the line now (kept beside the line so that metrics take no lock).
    queued: AtomicUsize,
    /// So that a bad label is reported once, not at every status query.
    warned: AtomicBool,
    line: Mutex<Line>,
}

#[derive(Default)]
struct Line {
    /// The function's latest status: the replicas slots are taken on.
    status: Option<Arc<FunctionStatus>>,
    /// Oldest first.
    waiters: VecDeque<Arc<Waiter>>,
    /// Slots taken, by endpoint address; an address with none is not kept.
    taken: HashMap<String, usize>,
}

impl Line {
    /// Takes a slot on the endpoint in service with the fewest taken, among those with one
    /// free; counts the call in flight there too. Each endpoint stands for its share of the
    /// available replicas (one each with the process provider, all of them behind a provider's
    /// function route).
    fn take(&mut self, limit: usize) -> Option<(InFlight, String)> {
        let status = self.status.as_ref()?;
        let live = status.endpoints.iter().filter(|e| !e.is_retired());
        let endpoints = live.clone().count();
        if endpoints == 0 || status.available_replicas == 0 {
            return None;
        }
        let available = usize::try_from(status.available_replicas).unwrap_or(usize::MAX);
        let per_endpoint = limit.saturating_mul(available.div_ceil(endpoints).max(1));
        let taken = |e: &Arc<Endpoint>| self.taken.get(e.base_url()).copied().unwrap_or(0);
        let in_flight = live
            .filter(|e| taken(e) < per_endpoint)
            .min_by_key(|e| taken(e))
            .and_then(|e| e.begin())?;
        let address = in_flight.endpoint().base_url().to_owned();
        *self.taken.entry(address.clone()).or_default() += 1;
        Some((in_flight, address))
    }

    /// Gives back a slot taken on `address`.
    fn give_back(&mut self, address: &str) {
        if let Some(n) = self.taken.get_mut(address) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.taken.remove(address);
            }
        }
    }
}

/// One call in the line, woken alone when it is given a slot.
#[derive(Default)]
struct Waiter {
    grant: Mutex<Option<Grant>>,
    given: Condvar,
}

/// What a waiter is given.
pub(crate) enum Grant {
    /// A slot on a replica, counted already.
    Slot(Claim),
    /// The limit was lifted: the call goes on as any unlimited one.
    Unlimited,
}

/// What a call asking for a slot gets at once.
pub(crate) enum Claimed {
    /// A free slot.
    Now(Claim),
    /// A place in the line.
    Queued(Ticket),
    /// The status names no replica in service: it is stale, ask the provider again.
    Stale,
}

/// A call's hold on one replica: its in-flight count there and, when the function has a
/// limit, the slot, handed to the next waiter when the hold ends.
pub(crate) struct Claim {
    in_flight: InFlight,
    /// Declared after the count, so dropped after it: the slot is handed on once free.
    _slot: Option<Release>,
}

/// Gives a slot back to the line when dropped, and hands it to the oldest waiter.
struct Release {
    slots: Arc<Slots>,
    address: String,
}

impl Drop for Release {
    fn drop(&mut self) {
        let given = {
            let mut line = self.slots.line.lock();
            line.give_back(&self.address);
            self.slots.give_free(&mut line)
        };
        // A slot given to a waiter that has left is handed on once the lock is released.
        drop(given);
    }
}

impl Claim {
    /// A hold on a function without a limit: nothing to give back but the count.
    pub(crate) fn unlimited(in_flight: InFlight) -> Claim {
        Claim {
            in_flight,
            _slot: None,
        }
    }

    /// The replica held.
    pub(crate) fn endpoint(&self) -> &Endpoint {
        self.in_flight.endpoint()
    }
}

/// A call's place in the line; dropped before it was given a slot, it leaves the line (and a
/// slot given meanwhile goes to the next waiter).
pub(crate) struct Ticket {
    waiter: Arc<Waiter>,
    slots: Arc<Slots>,
}

impl Ticket {
    /// Waits up to `timeout` to be given a slot.
    pub(crate) fn wait(&self, timeout: Duration) -> Option<Grant> {
        let mut grant = self.waiter.grant.lock();
        if grant.is_none() {
            self.waiter.given.wait_for(&mut grant, timeout);
        }
        grant.take()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let given = {
            let mut line = self.slots.line.lock();
            if let Some(at) = line
                .waiters
                .iter()
                .position(|w| Arc::ptr_eq(w, &self.waiter))
            {
                line.waiters.remove(at);
                self.slots
                    .queued
                    .store(line.waiters.len(), Ordering::Relaxed);
            }
            let given = self.waiter.grant.lock().take();
            given
        };
        // Dropped with no lock held: a slot's drop hands it on, which takes the line's lock.
        drop(given);
    }
}

impl Slots {
    /// Calls one replica takes at once; 0: unlimited.
    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Calls waiting in the line now.
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Takes in a new status of the function: its limit, and its replicas, whose free slots go
    /// to the line. A function that has no limit and had none costs a label lookup.
    pub(crate) fn observe(self: &Arc<Self>, status: &Arc<FunctionStatus>) {
        let limit = match limit_from_labels(&status.labels) {
            Ok(limit) => limit,
            Err(bad) => {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "label {LABEL_MAX_CONCURRENCY}={bad:?} is not a whole number; \
                         the function's calls are not limited"
                    );
                }
                0
            }
        };
        let was = self.limit.swap(limit, Ordering::SeqCst);
        if limit == 0 && was == 0 {
            return;
        }
        let given = {
            let mut line = self.line.lock();
            line.status = Some(Arc::clone(status));
            self.give_free(&mut line)
        };
        drop(given);
    }

    /// A slot for a call that found `status` ready: at once when one is free and nobody is
    /// waiting, otherwise a place at the back of the line.
    pub(crate) fn claim(self: &Arc<Self>, status: &Arc<FunctionStatus>) -> Claimed {
        let mut line = self.line.lock();
        let status = Arc::clone(line.status.get_or_insert_with(|| Arc::clone(status)));
        let limit = self.limit();
        if limit == 0 {
            // Lifted since the caller looked.
            return match status.least_loaded().and_then(|e| e.begin()) {
                Some(in_flight) => Claimed::Now(Claim::unlimited(in_flight)),
                None => Claimed::Stale,
            };
        }
        if line.waiters.is_empty() {
            if let Some(taken) = line.take(limit) {
                return Claimed::Now(self.hold(taken));
            }
            if !status.is_ready() {
                return Claimed::Stale;
            }
        }
        let waiter = Arc::new(Waiter::default());
        line.waiters.push_back(Arc::clone(&waiter));
        self.queued.store(line.waiters.len(), Ordering::Relaxed);
        Claimed::Queued(Ticket {
            waiter,
            slots: Arc::clone(self),
        })
    }

    fn hold(self: &Arc<Self>, (in_flight, address): (InFlight, String)) -> Claim {
        Claim {
            in_flight,
            _slot: Some(Release {
                slots: Arc::clone(self),
                address,
            }),
        }
    }

    /// Gives every free slot to a waiter, oldest first, while there are both. Returns the slots
    /// given to waiters that have left meanwhile, for the caller to drop once the lock is
    /// released (dropping one takes the lock again).
    fn give_free(self: &Arc<Self>, line: &mut Line) -> Vec<Claim> {
        let mut unwanted = Vec::new();
        let limit = self.limit();
        while !line.waiters.is_empty() {
            let grant = if limit == 0 {
                Grant::Unlimited
            } else {
                let Some(taken) = line.take(limit) else {
                    break;
                };
                Grant::Slot(self.hold(taken))
            };
            let Some(waiter) = line.waiters.pop_front() else {
                break;
            };
            let mut slot = waiter.grant.lock();
            if let Some(Grant::Slot(old)) = slot.replace(grant) {
                unwanted.push(old);
            }
            waiter.given.notify_one();
        }
        self.queued.store(line.waiters.len(), Ordering::Relaxed);
        unwanted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    fn status(limit: usize, replicas: &[&Arc<Endpoint>]) -> Arc<FunctionStatus> {
        Arc::new(FunctionStatus {
            replicas: replicas.len() as u64,
            available_replicas: replicas.len() as u64,
            labels: concurrency_labels(Some(limit as u64)).into_iter().collect(),
            endpoints: replicas.iter().map(|e| Arc::clone(e)).collect(),
            ..Default::default()
        })
    }

    /// A line that has seen `status`.
    fn line_for(status: &Arc<FunctionStatus>) -> Arc<Slots> {
        let slots = Arc::new(Slots::default());
        slots.observe(status);
        slots
    }

    fn endpoint(port: u16) -> Arc<Endpoint> {
        Arc::new(Endpoint::new(format!("http://127.0.0.1:{port}")))
    }

    fn now(claimed: Claimed) -> Claim {
        match claimed {
            Claimed::Now(claim) => claim,
            _ => panic!("no slot at once"),
        }
    }

    fn queued(claimed: Claimed) -> Ticket {
        match claimed {
            Claimed::Queued(ticket) => ticket,
            _ => panic!("not queued"),
        }
    }

    fn slot(ticket: &Ticket) -> Option<Claim> {
        match ticket.wait(Duration::ZERO) {
            Some(Grant::Slot(claim)) => Some(claim),
            Some(Grant::Unlimited) => panic!("lifted"),
            None => None,
        }
    }

    #[test]
    fn no_label_means_no_limit_and_no_lock() {
        let slots = line_for(&Arc::new(FunctionStatus::default()));
        assert_eq!(slots.limit(), 0);
        assert!(slots.line.lock().status.is_none());
        assert_eq!(concurrency_labels(Some(0)), vec![]);
        let labels = [(LABEL_MAX_CONCURRENCY.to_owned(), "x".to_owned())].into();
        assert_eq!(limit_from_labels(&labels), Err("x".to_owned()));
    }

    #[test]
    fn a_replica_takes_its_limit_and_freed_slots_go_oldest_first() {
        let a = endpoint(1);
        let status = status(2, &[&a]);
        let slots = line_for(&status);
        let first = now(slots.claim(&status));
        let _second = now(slots.claim(&status));
        assert_eq!(a.in_flight(), 2);
        let tickets: Vec<_> = (0..3).map(|_| queued(slots.claim(&status))).collect();
        assert_eq!(slots.queued(), 3);
        assert!(slot(&tickets[0]).is_none());
        drop(first);
        let given = slot(&tickets[0]).expect("the oldest waiter gets the freed slot");
        assert!(slot(&tickets[1]).is_none() && slot(&tickets[2]).is_none());
        assert_eq!(a.in_flight(), 2, "the slot was handed on, counted");
        drop(given);
        let _second_given = slot(&tickets[1]).expect("the next waiter");
        assert_eq!(slots.queued(), 1);
    }

    #[test]
    fn a_newcomer_never_jumps_the_line() {
        let a = endpoint(1);
        let status = status(1, &[&a]);
        let slots = line_for(&status);
        let busy = now(slots.claim(&status));
        let waiting = queued(slots.claim(&status));
        // Freed and not yet taken by the waiter: the newcomer still queues behind it.
        drop(busy);
        let _late = queued(slots.claim(&status));
        assert!(slot(&waiting).is_some());
    }

    #[test]
    fn a_new_replica_releases_only_its_share() {
        let a = endpoint(1);
        let one = status(2, &[&a]);
        let slots = line_for(&one);
        let _held: Vec<_> = (0..2).map(|_| now(slots.claim(&one))).collect();
        let tickets: Vec<_> = (0..5).map(|_| queued(slots.claim(&one))).collect();
        let b = endpoint(2);
        slots.observe(&status(2, &[&a, &b]));
        let given: Vec<_> = tickets.iter().map(slot).collect();
        let released = given.iter().filter(|g| g.is_some()).count();
        assert_eq!(released, 2, "the new replica's two slots, no more");
        assert!(given[0].is_some() && given[1].is_some(), "oldest first");
        assert_eq!((a.in_flight(), b.in_flight()), (2, 2));
    }

    #[test]
    fn one_endpoint_for_many_replicas_takes_the_limit_times_the_replicas() {
        let route = endpoint(1);
        let status = Arc::new(FunctionStatus {
            available_replicas: 3,
            ..(*status(2, &[&route])).clone()
        });
        let slots = line_for(&status);
        let held: Vec<_> = (0..6).map(|_| now(slots.claim(&status))).collect();
        let _ticket = queued(slots.claim(&status));
        assert_eq!(route.in_flight(), 6);
        drop(held);
    }

    #[test]
    fn a_waiter_that_leaves_passes_its_slot_on() {
        let a = endpoint(1);
        let status = status(1, &[&a]);
        let slots = line_for(&status);
        let busy = now(slots.claim(&status));
        let leaving = queued(slots.claim(&status));
        let next = queued(slots.claim(&status));
        drop(busy);
        drop(leaving);
        assert!(slot(&next).is_some(), "the slot given to a leaver was lost");
        assert_eq!(slots.queued(), 0);
    }

    #[test]
    fn lifting_the_limit_lets_every_waiter_go() {
        let a = endpoint(1);
        let limited = status(1, &[&a]);
        let slots = line_for(&limited);
        let _busy = now(slots.claim(&limited));
        let tickets: Vec<_> = (0..3).map(|_| queued(slots.claim(&limited))).collect();
        slots.observe(&Arc::new(FunctionStatus {
            labels: BTreeMap::new(),
            ..(*limited).clone()
        }));
        for t in &tickets {
            assert!(matches!(t.wait(Duration::ZERO), Some(Grant::Unlimited)));
        }
    }

    #[test]
    fn a_replica_back_under_a_new_endpoint_keeps_its_calls_counted() {
        let a = endpoint(1);
        let first = status(1, &[&a]);
        let slots = line_for(&first);
        let busy = now(slots.claim(&first));
        // Parked and thawed while the call runs: the same replica, a fresh endpoint.
        a.retire();
        let again = endpoint(1);
        let thawed = status(1, &[&again]);
        slots.observe(&thawed);
        let waiting = queued(slots.claim(&thawed));
        drop(busy);
        let _given = slot(&waiting).expect("the slot freed by the first call");
        assert_eq!(again.in_flight(), 1);
    }

    #[test]
    fn retired_replicas_are_stale_not_waited_for() {
        let a = endpoint(1);
        let status = status(1, &[&a]);
        let slots = line_for(&status);
        a.retire();
        assert!(matches!(slots.claim(&status), Claimed::Stale));
    }

    #[test]
    fn many_threads_never_overlap_on_a_replica_and_all_are_served() {
        let a = endpoint(1);
        let status = status(1, &[&a]);
        let slots = line_for(&status);
        let overlap = Arc::new(AtomicBool::new(false));
        let handles: Vec<_> = (0..32)
            .map(|_| {
                let (slots, status, a, overlap) =
                    (slots.clone(), status.clone(), a.clone(), overlap.clone());
                thread::spawn(move || {
                    let claim = match slots.claim(&status) {
                        Claimed::Now(claim) => claim,
                        Claimed::Queued(ticket) => match ticket.wait(Duration::from_secs(10)) {
                            Some(Grant::Slot(claim)) => claim,
                            Some(Grant::Unlimited) => panic!("lifted"),
                            None => panic!("never given a slot"),
                        },
                        Claimed::Stale => panic!("stale"),
                    };
                    if a.in_flight() != 1 {
                        overlap.store(true, Ordering::SeqCst);
                    }
                    thread::sleep(Duration::from_millis(1));
                    drop(claim);
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert!(!overlap.load(Ordering::SeqCst), "two calls on one replica");
        assert_eq!((a.in_flight(), slots.queued()), (0, 0));
    }
}
