//! Scale from zero: make sure a function has a ready replica before a request is forwarded.
//!
//! The OpenFaaS gateway's FunctionScaler, with its gaps closed:
//! - a fresh cache entry with ready replicas answers without asking the provider;
//! - otherwise one status query per function is in flight at a time ([`SingleFlight`]), and
//!   one scale call, retried, which asks the status once more before it scales (a waiter's status
//!   may be older than another waiter's scale call), so a burst of cold requests costs the
//!   provider three calls;
//! - waiting requests block their thread in [`Provider::wait_for_change`], which a provider that
//!   knows readiness ends at once, so every waiter is released together;
//! - running out of time is a 504, never a silent forward; waiters are bounded per function
//!   and in total so that a cold function cannot take every thread of the gateway.

pub mod singleflight;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::function::FunctionRef;
use crate::provider::{FunctionStatus, Provider, ProviderError};
use crate::table::slots::{Claim, Claimed, Grant, Ticket};
use crate::table::{FunctionRecord, FunctionTable};
use singleflight::SingleFlight;

/// How the scaler behaves; defaults follow the OpenFaaS gateway where it has one.
#[derive(Debug, Clone)]
pub struct ScalingConfig {
    /// Whether a function at zero replicas is started by a request.
    pub scale_from_zero: bool,
    /// How long a status answer is trusted.
    pub cache_expiry: Duration,
    /// Scale calls attempted before giving up with 502.
    pub scale_retries: u32,
    /// Pause between scale attempts.
    pub scale_retry_interval: Duration,
    /// Longest pause between status polls while waiting (a provider that signals readiness
    /// ends it early).
    pub poll_interval: Duration,
    /// How long a request may wait for a ready replica before a 504.
    pub ready_timeout: Duration,
    /// Requests that may wait on one function at once.
    pub max_waiters_per_function: usize,
    /// Requests that may wait across all functions at once.
    pub max_waiters: usize,
}

impl Default for ScalingConfig {
    fn default() -> Self {
        ScalingConfig {
            scale_from_zero: true,
            cache_expiry: Duration::from_millis(250),
            scale_retries: 20,
            scale_retry_interval: Duration::from_millis(100),
            poll_interval: Duration::from_millis(100),
            ready_timeout: Duration::from_secs(30),
            max_waiters_per_function: 1000,
            max_waiters: 2000,
        }
    }
}

/// Starts one waiting request may trigger before it concludes the function cannot start.
const MAX_STARTS_PER_WAIT: u32 = 3;

/// How often a waiter looks at the status anyway when its provider wakes it on every change:
/// only a safeguard, so it can be rare.
const NOTIFIED_RECHECK: Duration = Duration::from_secs(1);

/// Longest a waiter goes without looking at the status and at whether the gateway is
/// stopping, whatever the poll interval: a wait must end soon after it is abandoned.
const MAX_PAUSE: Duration = Duration::from_secs(2);

type StatusResult = Result<Arc<FunctionStatus>, ProviderError>;

/// Finds or makes a ready replica for each request.
///
/// What it keeps per function (cached status, waiters, the cold-start clock) lives in the
/// function's record in the [`FunctionTable`]; what it keeps itself are the single-flight
/// groups and the bound on waiters across all functions.
pub struct Scaler {
    provider: Arc<dyn Provider>,
    config: ScalingConfig,
    table: Arc<FunctionTable>,
    queries: SingleFlight<String, StatusResult>,
    scales: SingleFlight<String, Result<(), ProviderError>>,
    /// Requests waiting for a replica now, across all functions.
    waiting: AtomicUsize,
    /// Set when the gateway stops: requests still waiting for a replica give up.
    abandoned: AtomicBool,
}

impl Scaler {
    pub fn new(
        provider: Arc<dyn Provider>,
        config: ScalingConfig,
        table: Arc<FunctionTable>,
    ) -> Scaler {
        Scaler {
            provider,
            config,
            table,
            queries: SingleFlight::new(),
            scales: SingleFlight::new(),
            waiting: AtomicUsize::new(0),
            abandoned: AtomicBool::new(false),
        }
    }

    pub fn provider(&self) -> &Arc<dyn Provider> {
        &self.provider
    }

    pub fn table(&self) -> &Arc<FunctionTable> {
        &self.table
    }

    /// A status with at least one ready endpoint, waiting (and scaling from zero) if need be.
    pub fn ready(&self, record: &FunctionRecord) -> Result<Arc<FunctionStatus>, Error> {
        if let Some(status) = record.status.fresh_ready(self.config.cache_expiry) {
            return Ok(status);
        }
        let status = self.query(record)?;
        if status.is_ready() {
            return Ok(status);
        }
        let _slot = WaitSlot::enter(self, record)?;
        crate::server::blocking();
        self.wait_until_ready(record, status)
    }

    /// A replica for one call, held until the returned claim is dropped: ready (waiting, and
    /// scaling from zero, if need be) and, when the function limits its calls per replica, with
    /// a free slot (waiting in line for one if need be). `None`: the status named no replica in
    /// service; the caller forgets it and asks again. Without a limit this costs one atomic
    /// load more than [`Scaler::ready`].
    pub fn claim(&self, record: &FunctionRecord) -> Result<Option<Claim>, Error> {
        let status = self.ready(record)?;
        if record.slots.limit() == 0 {
            return Ok(status
                .least_loaded()
                .and_then(|e| e.begin())
                .map(Claim::unlimited));
        }
        let ticket = match record.slots.claim(&status) {
            Claimed::Now(claim) => return Ok(Some(claim)),
            Claimed::Stale => return Ok(None),
            Claimed::Queued(ticket) => ticket,
        };
        let _counted = WaitSlot::enter(self, record)?;
        crate::server::blocking();
        self.wait_for_slot(record, &ticket)
    }

    /// Waits in line until given a slot, the limit is lifted, or `ready_timeout` runs out (504).
    /// Every pause the status is refreshed if it is stale, so replicas started meanwhile (by
    /// capacity scaling) bring their slots even when nothing else asks about the function.
    fn wait_for_slot(
        &self,
        record: &FunctionRecord,
        ticket: &Ticket,
    ) -> Result<Option<Claim>, Error> {
        let start = Instant::now();
        let deadline = crate::deadline::from(start, self.config.ready_timeout);
        loop {
            let now = Instant::now();
            if now >= deadline {
                let function = record.function();
                log::warn!(
                    "{function}: no free slot after {:.3}s; answering 504",
                    start.elapsed().as_secs_f64()
                );
                return Err(Error::NoFreeSlot {
                    function: function.clone(),
                    limit: record.slots.limit(),
                    waited: start.elapsed(),
                });
            }
            let pause = self.poll_pause().min(deadline - now).min(MAX_PAUSE);
            match ticket.wait(pause) {
                Some(Grant::Slot(claim)) => return Ok(Some(claim)),
                Some(Grant::Unlimited) => {
                    let status = self.ready(record)?;
                    return Ok(status
                        .least_loaded()
                        .and_then(|e| e.begin())
                        .map(Claim::unlimited));
                }
                None => {
                    self.check_abandoned()?;
                    if record
                        .status
                        .fresh_ready(self.config.cache_expiry)
                        .is_none()
                    {
                        // A function removed meanwhile (a reload, a delete) frees no slot; any
                        // other failed query changes nothing here: the next pause tries again.
                        if let Err(ProviderError::NotFound) = self.status(record) {
                            return Err(Error::FunctionNotFound(record.function().clone()));
                        }
                    }
                }
            }
        }
    }

    /// Makes every request waiting for a replica give up with 503 within [`MAX_PAUSE`], and
    /// any that would start waiting from now on: the gateway is stopping, and a wait bounded
    /// only by a long `ready_timeout` must not hold it up.
    pub fn abandon_waits(&self) {
        self.abandoned.store(true, Ordering::SeqCst);
    }

    fn check_abandoned(&self) -> Result<(), Error> {
        if self.abandoned.load(Ordering::SeqCst) {
            return Err(Error::ShuttingDown);
        }
        Ok(())
    }

    /// Forgets that the function was ready: one of its endpoints refused a connection.
    pub fn invalidate(&self, record: &FunctionRecord) {
        record.status.clear();
    }

    /// Sets the desired replicas through the same single-flight as scale from zero, so that a
    /// manual scale and a cold start never race each other.
    pub fn scale(&self, function: &FunctionRef, replicas: u64) -> Result<(), ProviderError> {
        self.scale_with(function, replicas, || {
            self.provider.set_replicas(function, replicas)
        })
    }

    /// Runs `call`, a scale to `replicas`, in the function's scale single-flight. A scale above
    /// zero that succeeded restarts the function's idle clock: whoever asked for replicas wants
    /// them, and scale to zero must not undo it before their first request arrives.
    fn scale_with(
        &self,
        function: &FunctionRef,
        replicas: u64,
        call: impl FnOnce() -> Result<(), ProviderError>,
    ) -> Result<(), ProviderError> {
        let result = self
            .scales
            .run(&function.key().to_owned(), call)
            .unwrap_or_else(|abandoned| Err(ProviderError::Failed(abandoned.to_string())));
        if result.is_ok() && replicas > 0 {
            self.table.record(function).activity.touch();
        }
        if let Some(record) = self.table.get(function) {
            record.status.clear();
        }
        result
    }

    /// A cold start's scale call. The status that sent the caller here may be stale: another
    /// waiter's scale call can have ended between that query and this call, and a second call
    /// would then be made for the same cold start. So the status is asked again inside the
    /// single-flight, as the OpenFaaS scaler does, and the call made only if it is still zero.
    fn start_from_zero(&self, function: &FunctionRef, replicas: u64) -> Result<(), ProviderError> {
        self.scale_with(function, replicas, || {
            if self.provider.status(function)?.replicas > 0 {
                return Ok(());
            }
            self.provider.set_replicas(function, replicas)
        })
    }

    /// Stops every replica of a function idle for at least `idle`, unless a request comes in
    /// first. Requests arriving meanwhile wait, then find it at zero and start it again; the
    /// scale call is the same single-flight as a cold start's. `Ok(false)`: it was not idle.
    pub fn scale_to_zero(
        &self,
        record: &FunctionRecord,
        idle: Duration,
    ) -> Result<bool, ProviderError> {
        let mut result = Ok(());
        let stopped = record.activity.while_idle(idle, || {
            result = self.scale(record.function(), 0);
        });
        result.map(|()| stopped)
    }

    /// Parks the replicas of a function idle for at least `idle`, unless a request comes in
    /// first (it then waits for the parking, finds the replicas parked and thaws them).
    pub fn park(&self, record: &FunctionRecord, idle: Duration) -> Result<u64, ProviderError> {
        let mut result = Ok(0);
        record.activity.while_idle(idle, || {
            result = self.provider.park(record.function());
        });
        if result.as_ref().is_ok_and(|&parked| parked > 0) {
            record.status.clear();
        }
        result
    }

    /// (queries made, queries shared) and (scale calls made, scale calls shared).
    pub fn coalescing(&self) -> ((u64, u64), (u64, u64)) {
        (self.queries.counts(), self.scales.counts())
    }

    /// One status query per function at a time; its answer refreshes the cache.
    fn query(&self, record: &FunctionRecord) -> Result<Arc<FunctionStatus>, Error> {
        let function = record.function();
        self.status(record).map_err(|e| match e {
            ProviderError::NotFound => Error::FunctionNotFound(function.clone()),
            e => Error::Provider(function.clone(), e),
        })
    }

    /// Whether the provider knows the function: from the cache when a fresh status is kept, else
    /// asked through the requests' single-flight.
    pub fn known(&self, record: &FunctionRecord) -> Result<(), ProviderError> {
        if record.status.known_within(self.config.cache_expiry) {
            return Ok(());
        }
        self.status(record).map(|_| ())
    }

    /// The function's status, asked through the same single-flight as requests' (so the
    /// autoscaler's looks share theirs, and count as theirs do), refreshing the cache.
    pub(crate) fn status(
        &self,
        record: &FunctionRecord,
    ) -> Result<Arc<FunctionStatus>, ProviderError> {
        let function = record.function();
        self.queries
            .run(&function.key().to_owned(), || {
                let status = self.provider.status(function).map(Arc::new);
                match &status {
                    Ok(status) => {
                        record.status.set(Arc::clone(status));
                        record.slots.observe(status);
                    }
                    Err(ProviderError::NotFound) => record.status.clear(),
                    Err(_) => {}
                }
                status
            })
            .unwrap_or_else(|abandoned| Err(ProviderError::Failed(abandoned.to_string())))
    }

    /// The holding pattern: scale if nobody has, then poll until ready or out of time.
    fn wait_until_ready(
        &self,
        record: &FunctionRecord,
        mut status: Arc<FunctionStatus>,
    ) -> Result<Arc<FunctionStatus>, Error> {
        let function = record.function();
        let start = Instant::now();
        let deadline = crate::deadline::from(start, self.config.ready_timeout);
        let mut scale_attempts = 0;
        let mut starts = 0;
        loop {
            if status.is_ready() {
                report_cold_start(record, &status);
                return Ok(status);
            }
            self.check_abandoned()?;
            // A provider replacing a crashed replica itself keeps it wanted (not at zero) while
            // it holds the next start back: that hold is weighed all the same.
            if status.replicas == 0 || status.start_failure.is_some() {
                self.check_start_worth_waiting(record, &status, starts, deadline)?;
            }
            if status.replicas == 0 {
                self.scale_from_zero(record, &status, &mut scale_attempts)?;
                starts += 1;
            } else if self.thaw(record) {
                status = self.query(record)?;
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                log::warn!(
                    "{function}: not ready after {:.3}s; answering 504",
                    start.elapsed().as_secs_f64()
                );
                return Err(Error::NotReady {
                    function: function.clone(),
                    waited: start.elapsed(),
                });
            }
            let pause = self.poll_pause().min(deadline - now).min(MAX_PAUSE);
            self.provider
                .wait_for_change(function, status.generation, pause);
            status = self.query(record)?;
        }
    }

    /// Back at zero after we started it, its replicas die before they are ready: say so now
    /// rather than restarting it until the ready timeout. And a provider holding the next start
    /// back past the request's deadline gets the request answered at once, not at the deadline.
    fn check_start_worth_waiting(
        &self,
        record: &FunctionRecord,
        status: &FunctionStatus,
        starts: u32,
        deadline: Instant,
    ) -> Result<(), Error> {
        let function = record.function();
        let failure = status.start_failure.as_ref();
        if starts >= MAX_STARTS_PER_WAIT {
            record.cold_start.lock().take();
            log::warn!("{function}: replicas exited before becoming ready ({starts} starts)");
            return Err(Error::StartFailed {
                function: function.clone(),
                starts,
                last: failure.map(|f| f.reason.clone()),
            });
        }
        match failure {
            // The hold comes from the provider: saturating, so that no value it reports panics.
            Some(f) if crate::deadline::after(f.next_start_in) > deadline => {
                record.cold_start.lock().take();
                Err(Error::CrashLooping {
                    function: function.clone(),
                    last: f.reason.clone(),
                    retry_after: f.next_start_in,
                })
            }
            _ => Ok(()),
        }
    }

    /// Thaws the function's parked replicas, if it has any: true if one was.
    fn thaw(&self, record: &FunctionRecord) -> bool {
        match self.provider.thaw(record.function()) {
            Ok(0) => false,
            Ok(thawed) => {
                log::debug!("{}: thawed {thawed} parked replicas", record.function());
                true
            }
            Err(e) => {
                log::warn!("{}: thawing failed: {e}", record.function());
                false
            }
        }
    }

    /// How long a waiter sleeps between looks at the status: the poll interval, or, when the
    /// provider wakes waiters on every change, long enough that idle waiters cost nothing.
    fn poll_pause(&self) -> Duration {
        if self.provider.notifies_changes() {
            self.config.poll_interval.max(NOTIFIED_RECHECK)
        } else {
            self.config.poll_interval
        }
    }

    /// Asks for `max(1, min)` replicas, once for all waiters, retrying failed calls.
    fn scale_from_zero(
        &self,
        record: &FunctionRecord,
        status: &FunctionStatus,
        attempts: &mut u32,
    ) -> Result<(), Error> {
        let function = record.function();
        if !self.config.scale_from_zero {
            return Err(Error::ScaleFromZeroDisabled(function.clone()));
        }
        let target = status.min_replicas.max(1);
        loop {
            *attempts += 1;
            record.cold_start.lock().get_or_insert_with(Instant::now);
            match self.start_from_zero(function, target) {
                Ok(()) => return Ok(()),
                Err(ProviderError::NotFound) => {
                    return Err(Error::FunctionNotFound(function.clone()))
                }
                Err(last)
                    if *attempts >= self.config.scale_retries.max(1)
                        || matches!(last, ProviderError::Refused(_)) =>
                {
                    record.cold_start.lock().take();
                    log::error!("{function}: scale to {target} failed {attempts} times: {last}");
                    return Err(Error::ScaleFailed {
                        function: function.clone(),
                        attempts: *attempts,
                        last,
                    });
                }
                Err(e) => {
                    log::warn!("{function}: scale to {target} failed (attempt {attempts}): {e}");
                    self.sleep(self.config.scale_retry_interval)?;
                }
            }
        }
    }

    /// Sleeps `d` in slices of at most [`MAX_PAUSE`], ending early when waits are abandoned.
    fn sleep(&self, d: Duration) -> Result<(), Error> {
        let deadline = crate::deadline::after(d);
        loop {
            self.check_abandoned()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            std::thread::sleep(left.min(MAX_PAUSE));
        }
    }
}

/// Exactly one line and one histogram entry per cold start, by whichever waiter sees it end.
fn report_cold_start(record: &FunctionRecord, status: &FunctionStatus) {
    if let Some(began) = record.cold_start.lock().take() {
        let took = began.elapsed();
        record.counters().cold_start(took);
        log::info!(
            "cold start {}: ready in {:.3}s ({} of {} replicas available)",
            record.function(),
            took.as_secs_f64(),
            status.available_replicas,
            status.replicas
        );
    }
}

/// A request's place among the waiters (for a ready replica or for a free slot), bounded per
/// function and in total so that a cold or saturated function cannot take every thread of the
/// gateway.
struct WaitSlot<'a> {
    scaler: &'a Scaler,
    record: &'a FunctionRecord,
}

impl<'a> WaitSlot<'a> {
    fn enter(scaler: &'a Scaler, record: &'a FunctionRecord) -> Result<WaitSlot<'a>, Error> {
        let here = record.waiting.fetch_add(1, Ordering::SeqCst);
        let total = scaler.waiting.fetch_add(1, Ordering::SeqCst);
        // Counted first, so that the slot's drop is the one way out.
        let slot = WaitSlot { scaler, record };
        let config = &scaler.config;
        if here >= config.max_waiters_per_function || total >= config.max_waiters {
            return Err(Error::Overloaded {
                function: record.function().clone(),
                waiting: here.max(total),
                retry_after: Duration::from_secs(1),
            });
        }
        Ok(slot)
    }
}

impl Drop for WaitSlot<'_> {
    fn drop(&mut self) {
        self.record.waiting.fetch_sub(1, Ordering::SeqCst);
        self.scaler.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{Endpoint, FunctionSummary, StartFailure};
    use crate::table::FunctionTable;
    use parking_lot::{Condvar, Mutex};
    use std::sync::atomic::AtomicU64;
    use std::thread;

    /// A provider held in memory whose replicas become ready `delay` after a scale call, and
    /// which signals readiness the way the process provider does.
    struct Memory {
        state: Mutex<State>,
        changed: Condvar,
        delay: Duration,
        status_calls: AtomicU64,
        scale_calls: AtomicU64,
        fail_scales: AtomicU64,
        /// Status queries running now, and the most ever seen at once.
        querying: AtomicU64,
        most_querying: AtomicU64,
    }

    #[derive(Default)]
    struct State {
        desired: u64,
        ready_at: Option<Instant>,
        /// A crash-loop hold to report.
        held_back: Option<Duration>,
    }

    impl Memory {
        fn new(delay: Duration) -> Arc<Memory> {
            Arc::new(Memory {
                state: Mutex::new(State::default()),
                changed: Condvar::new(),
                delay,
                status_calls: AtomicU64::new(0),
                scale_calls: AtomicU64::new(0),
                fail_scales: AtomicU64::new(0),
                querying: AtomicU64::new(0),
                most_querying: AtomicU64::new(0),
            })
        }
    }

    impl Provider for Memory {
        fn status(&self, f: &FunctionRef) -> Result<FunctionStatus, ProviderError> {
            self.status_calls.fetch_add(1, Ordering::SeqCst);
            let now = self.querying.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_querying.fetch_max(now, Ordering::SeqCst);
            thread::sleep(Duration::from_millis(2));
            self.querying.fetch_sub(1, Ordering::SeqCst);
            if f.name() != "known" {
                return Err(ProviderError::NotFound);
            }
            let state = self.state.lock();
            let ready = state.ready_at.is_some_and(|t| Instant::now() >= t);
            let start_failure = state.held_back.map(|next_start_in| StartFailure {
                reason: "it died".into(),
                in_a_row: 2,
                next_start_in,
            });
            Ok(FunctionStatus {
                replicas: state.desired,
                available_replicas: u64::from(ready),
                min_replicas: 2,
                max_replicas: 5,
                endpoints: if ready {
                    vec![Arc::new(Endpoint::new("http://127.0.0.1:9"))]
                } else {
                    vec![]
                },
                start_failure,
                ..Default::default()
            })
        }

        fn set_replicas(&self, _: &FunctionRef, replicas: u64) -> Result<(), ProviderError> {
            self.scale_calls.fetch_add(1, Ordering::SeqCst);
            thread::sleep(Duration::from_millis(20));
            if self.fail_scales.load(Ordering::SeqCst) == u64::MAX {
                return Err(ProviderError::Refused("not allowed".into()));
            }
            if self.fail_scales.load(Ordering::SeqCst) > 0 {
                self.fail_scales.fetch_sub(1, Ordering::SeqCst);
                return Err(ProviderError::Failed("no capacity".into()));
            }
            let mut state = self.state.lock();
            state.desired = replicas;
            if self.delay < Duration::from_secs(3600) {
                state.ready_at = Some(Instant::now() + self.delay);
            }
            Ok(())
        }

        fn wait_for_change(&self, _: &FunctionRef, _: u64, timeout: Duration) {
            let mut state = self.state.lock();
            let until = state
                .ready_at
                .map_or(timeout, |t| t.saturating_duration_since(Instant::now()));
            self.changed.wait_for(&mut state, until.min(timeout));
        }

        fn list(&self, _: &str) -> Result<Vec<FunctionSummary>, ProviderError> {
            Ok(Vec::new())
        }

        fn namespaces(&self) -> Result<Vec<String>, ProviderError> {
            Ok(vec!["default".into()])
        }
    }

    fn scaler_for(provider: Arc<Memory>, config: ScalingConfig) -> Scaler {
        Scaler::new(provider, config, Arc::new(FunctionTable::new()))
    }

    /// As a call asks: through the function's record.
    fn ready(scaler: &Scaler, function: &FunctionRef) -> Result<Arc<FunctionStatus>, Error> {
        scaler.ready(&scaler.table().record(function))
    }

    fn known() -> FunctionRef {
        FunctionRef::new("known", "default").unwrap()
    }

    fn config() -> ScalingConfig {
        ScalingConfig {
            ready_timeout: Duration::from_secs(5),
            scale_retry_interval: Duration::from_millis(10),
            ..ScalingConfig::default()
        }
    }

    #[test]
    fn concurrent_cold_requests_share_one_scale_call() {
        let provider = Memory::new(Duration::from_millis(300));
        let scaler = Arc::new(scaler_for(provider.clone(), config()));
        let handles: Vec<_> = (0..100)
            .map(|_| {
                let scaler = scaler.clone();
                thread::spawn(move || ready(&scaler, &known()).map(|s| s.available_replicas))
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap().unwrap(), 1);
        }
        assert_eq!(provider.scale_calls.load(Ordering::SeqCst), 1);
        assert_eq!(provider.state.lock().desired, 2, "scaled to min replicas");
        // Polls never overlap one another; the one look a cold start's scale call takes first
        // may overlap a poll.
        assert!(
            provider.most_querying.load(Ordering::SeqCst) <= 2,
            "status queries overlapped"
        );
        assert!(
            provider.status_calls.load(Ordering::SeqCst) < 100,
            "status queries not coalesced"
        );
        assert_eq!(scaler.waiting.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_stale_zero_makes_no_second_scale_call() {
        let provider = Memory::new(Duration::from_millis(50));
        let scaler = scaler_for(provider.clone(), config());
        provider.set_replicas(&known(), 2).unwrap();
        let record = scaler.table().record(&known());
        // What a waiter holds whose query ran before another waiter's scale call ended.
        let stale = Arc::new(FunctionStatus::default());
        let ready = scaler.wait_until_ready(&record, stale).unwrap();
        assert_eq!(ready.available_replicas, 1);
        assert_eq!(
            provider.scale_calls.load(Ordering::SeqCst),
            1,
            "a second scale call for one cold start"
        );
    }

    #[test]
    fn a_scale_up_restarts_the_idle_clock_and_a_scale_to_zero_does_not() {
        let provider = Memory::new(Duration::ZERO);
        let scaler = scaler_for(provider, config());
        let idle = Duration::from_millis(300);
        let record = scaler.table().record(&known());
        thread::sleep(idle);
        scaler.scale(&known(), 1).unwrap();
        assert!(
            !scaler.scale_to_zero(&record, idle).unwrap(),
            "scaled to zero right after a scale-up"
        );
        thread::sleep(idle);
        scaler.scale(&known(), 0).unwrap();
        thread::sleep(Duration::from_millis(10));
        assert!(record.activity.idle_for().is_some_and(|d| d >= idle));
    }

    #[test]
    fn warm_function_is_served_from_the_cache() {
        let provider = Memory::new(Duration::ZERO);
        let scaler = scaler_for(provider.clone(), config());
        ready(&scaler, &known()).unwrap();
        let queries = provider.status_calls.load(Ordering::SeqCst);
        for _ in 0..50 {
            ready(&scaler, &known()).unwrap();
        }
        assert_eq!(provider.status_calls.load(Ordering::SeqCst), queries);
    }

    #[test]
    fn never_ready_is_a_504_within_the_bound() {
        let provider = Memory::new(Duration::from_secs(7200));
        let config = ScalingConfig {
            ready_timeout: Duration::from_millis(300),
            ..config()
        };
        let scaler = scaler_for(provider, config);
        let started = Instant::now();
        let err = ready(&scaler, &known()).unwrap_err();
        assert_eq!(err.status(), 504, "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn unknown_function_is_a_404() {
        let scaler = scaler_for(Memory::new(Duration::ZERO), config());
        let err = ready(&scaler, &FunctionRef::new("nope", "default").unwrap()).unwrap_err();
        assert_eq!(err.status(), 404);
    }

    #[test]
    fn scale_calls_are_retried_then_reported() {
        let provider = Memory::new(Duration::ZERO);
        provider.fail_scales.store(2, Ordering::SeqCst);
        let scaler = scaler_for(provider.clone(), config());
        assert!(ready(&scaler, &known()).is_ok());
        assert_eq!(provider.scale_calls.load(Ordering::SeqCst), 3);

        let provider = Memory::new(Duration::ZERO);
        provider.fail_scales.store(100, Ordering::SeqCst);
        let scaler = scaler_for(
            provider.clone(),
            ScalingConfig {
                scale_retries: 4,
                ..config()
            },
        );
        let err = ready(&scaler, &known()).unwrap_err();
        assert_eq!(err.status(), 502, "{err}");
        assert_eq!(provider.scale_calls.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn a_refused_scale_call_is_a_502_at_once_not_retried() {
        let provider = Memory::new(Duration::ZERO);
        provider.fail_scales.store(u64::MAX, Ordering::SeqCst);
        let scaler = scaler_for(provider.clone(), config());
        let err = ready(&scaler, &known()).unwrap_err();
        assert_eq!(err.status(), 502, "{err}");
        assert!(err.to_string().contains("not allowed"), "{err}");
        assert_eq!(provider.scale_calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn waiters_beyond_the_bound_are_turned_away() {
        let provider = Memory::new(Duration::from_millis(500));
        let config = ScalingConfig {
            max_waiters_per_function: 3,
            ..config()
        };
        let scaler = Arc::new(scaler_for(provider, config));
        let handles: Vec<_> = (0..10)
            .map(|_| {
                let scaler = scaler.clone();
                thread::spawn(move || ready(&scaler, &known()).map(|_| ()).map_err(|e| e.status()))
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let served = results.iter().filter(|r| r.is_ok()).count();
        let refused = results.iter().filter(|r| **r == Err(503)).count();
        assert_eq!((served, refused), (3, 7), "{results:?}");
    }

    #[test]
    fn a_crash_loop_hold_past_the_deadline_is_a_503_at_once_however_long() {
        let provider = Memory::new(Duration::ZERO);
        provider.state.lock().held_back = Some(Duration::MAX);
        let scaler = scaler_for(provider.clone(), config());
        let err = ready(&scaler, &known()).unwrap_err();
        assert_eq!(err.status(), 503, "{err}");
        assert_eq!(provider.scale_calls.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn disabled_scale_from_zero_is_a_503() {
        let config = ScalingConfig {
            scale_from_zero: false,
            ..config()
        };
        let scaler = scaler_for(Memory::new(Duration::ZERO), config);
        assert_eq!(ready(&scaler, &known()).unwrap_err().status(), 503);
    }
}
