//! After a function is running: scale to zero when idle, and capacity autoscaling.
//!
//! One background thread checks every function that has had a request, once per interval. The
//! hot path only bumps the atomics of each function's record ([`crate::table`]); everything
//! here reads them.
//! Scale calls go through the scaler's single-flight, like a cold start's, so a decision made
//! here never interleaves with one made by a request; and the provider drains a replica before
//! stopping it, so none is stopped with requests in flight.
//!
//! Capacity mode scales up at once, and down only to the highest replica count recommended over
//! the whole stabilisation window (the Kubernetes HPA rule), so a brief lull does not stop
//! replicas a returning burst will need.

pub mod policy;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::provider::{FunctionStatus, ProviderError};
use crate::scaler::Scaler;
use crate::table::FunctionRecord;
use policy::{Capacity, Policy};

/// How often and how cautiously the autoscaler acts.
#[derive(Debug, Clone)]
pub struct AutoscaleConfig {
    /// Time between checks of every function.
    pub interval: Duration,
    /// How long the recommendation must stay below the running replicas before a scale-down.
    pub scale_down_window: Duration,
}

impl Default for AutoscaleConfig {
    fn default() -> Self {
        AutoscaleConfig {
            interval: Duration::from_secs(1),
            scale_down_window: Duration::from_secs(300),
        }
    }
}

/// The running background thread.
pub struct Autoscaler {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Autoscaler {
    pub fn start(scaler: Arc<Scaler>, config: AutoscaleConfig) -> std::io::Result<Autoscaler> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let signal = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("autoscaler".into())
            .spawn(move || run(&scaler, &config, &signal))?;
        Ok(Autoscaler {
            stop,
            thread: Some(thread),
        })
    }

    /// Ends the thread after its current check; no scale call is made after this returns.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("the autoscaler thread panicked");
            }
        }
    }
}

impl Drop for Autoscaler {
    fn drop(&mut self) {
        self.halt();
    }
}

fn run(scaler: &Scaler, config: &AutoscaleConfig, stop: &(Mutex<bool>, Condvar)) {
    let mut watched: HashMap<String, Watched> = HashMap::new();
    loop {
        {
            let mut stopped = stop.0.lock();
            if !*stopped {
                stop.1.wait_for(&mut stopped, config.interval);
            }
            if *stopped {
                return;
            }
        }
        let functions = scaler.table().all();
        let present: HashSet<&str> = functions.iter().map(|r| r.function().key()).collect();
        watched.retain(|key, _| present.contains(key.as_str()));
        for record in functions {
            let key = record.function().key().to_owned();
            let entry = watched.entry(key).or_insert_with(Watched::new);
            check(scaler, config, &record, entry);
        }
    }
}

/// What the autoscaler remembers of one function between checks.
struct Watched {
    /// The labels the policy was read from; it is read again only when they change.
    labels: Option<BTreeMap<String, String>>,
    policy: Policy,
    /// Capacity recommendations within the stabilisation window, oldest first.
    recommended: VecDeque<(Instant, u64)>,
    /// Since when the recommendations cover the function at its current scale.
    since: Instant,
    /// The provider refused to scale the function to zero (faas-netes CE allows no fewer than
    /// one replica): it is kept at its minimum instead, and not asked again until its labels
    /// change, so that a refusal costs one log line, not one per check.
    zero_refused: bool,
}

impl Watched {
    fn new() -> Watched {
        Watched {
            labels: None,
            policy: Policy {
                zero_after: None,
                park_after: None,
                capacity: None,
            },
            recommended: VecDeque::new(),
            since: Instant::now(),
            zero_refused: false,
        }
    }

    fn policy(&mut self, record: &FunctionRecord, status: &FunctionStatus) -> &Policy {
        if self.labels.as_ref() != Some(&status.labels) {
            self.policy = Policy::from_labels(record.function(), &status.labels);
            self.labels = Some(status.labels.clone());
            self.zero_refused = false;
        }
        &self.policy
    }

    fn forget(&mut self) {
        self.recommended.clear();
        self.since = Instant::now();
    }

    /// Records `desired` and returns the highest recommendation over the window, once the
    /// window has been watched in full.
    fn stable(&mut self, desired: u64, window: Duration) -> Option<u64> {
        let now = Instant::now();
        self.recommended.push_back((now, desired));
        while self
            .recommended
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > window)
        {
            self.recommended.pop_front();
        }
        (now.duration_since(self.since) >= window)
            .then(|| self.recommended.iter().map(|(_, d)| *d).max())
            .flatten()
    }
}

fn check(
    scaler: &Scaler,
    config: &AutoscaleConfig,
    record: &FunctionRecord,
    watched: &mut Watched,
) {
    let function = record.function();
    let status = match scaler.status(record) {
        Ok(status) => status,
        Err(ProviderError::NotFound) => {
            scaler.table().forget_gone(function);
            return;
        }
        Err(e) => {
            log::debug!("autoscaler: {function}: {e}");
            return;
        }
    };
    if status.replicas == 0 {
        watched.forget();
        return;
    }
    let policy = watched.policy(record, &status).clone();
    match policy.zero_after {
        Some(idle) if !watched.zero_refused => match scale_to_zero_if_idle(scaler, record, idle) {
            Zeroing::Stopped => {
                watched.forget();
                return;
            }
            Zeroing::Refused(e) => {
                watched.zero_refused = true;
                settle_at_minimum(scaler, record, &status, &e);
            }
            Zeroing::Kept => {}
        },
        _ => {}
    }
    if let Some(park_after) = policy.park_after {
        if status.available_replicas > 0 {
            park_if_idle(scaler, record, park_after);
        }
    }
    if let Some(capacity) = policy.capacity {
        follow_capacity(scaler, config, record, &status, capacity, watched);
    }
}

/// Parks the function's replicas once it has been idle for `idle`.
fn park_if_idle(scaler: &Scaler, record: &FunctionRecord, idle: Duration) {
    if record.activity.idle_for().is_none_or(|d| d < idle) {
        return;
    }
    if let Err(e) = scaler.park(record, idle) {
        log::warn!("{}: parking failed: {e}", record.function());
    }
}

/// What a look at an idle function came to.
enum Zeroing {
    /// Its replicas were stopped.
    Stopped,
    /// It was not idle long enough, or the scale call failed and may work next time.
    Kept,
    /// The provider does not allow zero replicas for it.
    Refused(ProviderError),
}

fn scale_to_zero_if_idle(scaler: &Scaler, record: &FunctionRecord, idle: Duration) -> Zeroing {
    let function = record.function();
    let idle_enough = |d: Duration| d >= idle;
    if !record.activity.idle_for().is_some_and(idle_enough) {
        return Zeroing::Kept;
    }
    match scaler.scale_to_zero(record, idle) {
        Ok(true) => {
            log::info!(
                "{function}: no request for {:.1}s; scaled to zero",
                idle.as_secs_f64()
            );
            Zeroing::Stopped
        }
        Ok(false) => Zeroing::Kept,
        Err(e @ ProviderError::Refused(_)) => Zeroing::Refused(e),
        Err(e) => {
            log::warn!("{function}: scale to zero failed: {e}");
            Zeroing::Kept
        }
    }
}

/// The provider will not scale the function to zero: it says so once, and the function is
/// brought down to the fewest replicas the provider does allow, its minimum (at least one).
fn settle_at_minimum(
    scaler: &Scaler,
    record: &FunctionRecord,
    status: &FunctionStatus,
    refusal: &ProviderError,
) {
    let function = record.function();
    let floor = status.min_replicas.max(1);
    log::warn!(
        "{function}: the provider does not allow scaling it to zero ({refusal}); \
         it stays at its minimum of {floor} replicas while idle"
    );
    if status.replicas > floor {
        if let Err(e) = scaler.scale(function, floor) {
            log::warn!("{function}: scaling down to its minimum of {floor} failed: {e}");
        }
    }
}

/// Scales up at once to what the requests in flight need; down only to the highest need seen
/// over the stabilisation window.
fn follow_capacity(
    scaler: &Scaler,
    config: &AutoscaleConfig,
    record: &FunctionRecord,
    status: &FunctionStatus,
    capacity: Capacity,
    watched: &mut Watched,
) {
    let function = record.function();
    // Calls waiting for a replica or for a slot are in flight too: they are demand.
    let in_flight = record.in_flight();
    let capacity = capacity.within(record.slots.limit());
    let desired = capacity.desired(in_flight, status.min_replicas, status.max_replicas);
    let stable = watched.stable(desired, config.scale_down_window);
    let target = if desired > status.replicas {
        Some(desired)
    } else {
        stable.filter(|&d| d < status.replicas)
    };
    let Some(to) = target else {
        return;
    };
    log::info!(
        "{function}: {in_flight} requests in flight; capacity scaling {} -> {to}",
        status.replicas
    );
    if let Err(e) = scaler.scale(function, to) {
        log::warn!("{function}: capacity scaling to {to} failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::Call;
    use crate::function::FunctionRef;
    use crate::provider::{FunctionSummary, Provider};
    use crate::scaler::ScalingConfig;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A provider that only records: any provider whose replicas are set by `set_replicas`,
    /// local or remote, looks like this to the autoscaler.
    struct Recorder {
        labels: BTreeMap<String, String>,
        replicas: Mutex<u64>,
        calls: Mutex<Vec<u64>>,
        status_calls: AtomicU64,
        /// Answers a scale to zero as faas-netes CE does.
        refuse_zero: bool,
    }

    impl Provider for Recorder {
        fn status(&self, f: &FunctionRef) -> Result<FunctionStatus, ProviderError> {
            self.status_calls.fetch_add(1, Ordering::SeqCst);
            if f.name() == "ghost" {
                return Err(ProviderError::NotFound);
            }
            let replicas = *self.replicas.lock();
            Ok(FunctionStatus {
                replicas,
                available_replicas: replicas,
                min_replicas: 1,
                max_replicas: 5,
                labels: self.labels.clone(),
                ..Default::default()
            })
        }

        fn set_replicas(&self, _: &FunctionRef, replicas: u64) -> Result<(), ProviderError> {
            self.calls.lock().push(replicas);
            if replicas == 0 && self.refuse_zero {
                return Err(ProviderError::Refused(
                    "replicas cannot be set to 0 in OpenFaaS CE".into(),
                ));
            }
            *self.replicas.lock() = replicas;
            Ok(())
        }

        fn list(&self, _: &str) -> Result<Vec<FunctionSummary>, ProviderError> {
            Ok(Vec::new())
        }

        fn namespaces(&self) -> Result<Vec<String>, ProviderError> {
            Ok(Vec::new())
        }
    }

    fn function() -> FunctionRef {
        FunctionRef::new("auto", "default").unwrap()
    }

    fn running(labels: &[(&str, &str)]) -> (Arc<Recorder>, Arc<Scaler>, Autoscaler) {
        running_on(labels, 1, false)
    }

    fn running_on(
        labels: &[(&str, &str)],
        replicas: u64,
        refuse_zero: bool,
    ) -> (Arc<Recorder>, Arc<Scaler>, Autoscaler) {
        let provider = Arc::new(Recorder {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            replicas: Mutex::new(replicas),
            calls: Mutex::new(Vec::new()),
            status_calls: AtomicU64::new(0),
            refuse_zero,
        });
        let table = Arc::new(crate::table::FunctionTable::new());
        let scaler = Arc::new(Scaler::new(
            provider.clone(),
            ScalingConfig::default(),
            table,
        ));
        let config = AutoscaleConfig {
            interval: Duration::from_millis(5),
            scale_down_window: Duration::from_millis(200),
        };
        let autoscaler = Autoscaler::start(scaler.clone(), config).unwrap();
        (provider, scaler, autoscaler)
    }

    fn eventually(mut condition: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !condition() {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(5));
        }
        true
    }

    #[test]
    fn capacity_scales_up_at_once_and_down_to_min_after_the_window() {
        let (provider, scaler, autoscaler) = running(&[
            (policy::LABEL_SCALE_TYPE, "capacity"),
            (policy::LABEL_TARGET, "2"),
            (policy::LABEL_TARGET_PROPORTION, "1"),
        ]);
        let busy: Vec<_> = (0..7)
            .map(|_| Call::begin(scaler.table(), &function()))
            .collect();
        assert!(eventually(|| *provider.replicas.lock() == 4));
        drop(busy);
        assert!(eventually(|| *provider.replicas.lock() == 1));
        autoscaler.stop();
        let calls = provider.calls.lock().clone();
        let up = calls.iter().position(|&n| n == 4).unwrap();
        assert_eq!(
            &calls[up..],
            &[4, 1],
            "down in one step, no flapping: {calls:?}"
        );
    }

    #[test]
    fn an_idle_function_goes_to_zero_and_a_busy_one_never_does() {
        let (provider, scaler, autoscaler) = running(&[
            (policy::LABEL_SCALE_ZERO, "true"),
            (policy::LABEL_ZERO_DURATION, "30ms"),
        ]);
        let busy = Call::begin(scaler.table(), &function());
        let checked = provider.status_calls.load(Ordering::SeqCst);
        assert!(eventually(
            || provider.status_calls.load(Ordering::SeqCst) > checked + 20
        ));
        assert!(provider.calls.lock().is_empty(), "scaled while busy");
        drop(busy);
        assert!(eventually(|| *provider.replicas.lock() == 0));
        autoscaler.stop();
        assert_eq!(*provider.calls.lock(), vec![0]);
    }

    #[test]
    fn a_provider_refusing_zero_is_asked_once_and_the_function_kept_at_its_minimum() {
        let (provider, scaler, autoscaler) = running_on(
            &[
                (policy::LABEL_SCALE_ZERO, "true"),
                (policy::LABEL_ZERO_DURATION, "20ms"),
            ],
            3,
            true,
        );
        drop(Call::begin(scaler.table(), &function()));
        assert!(eventually(|| *provider.replicas.lock() == 1));
        let checked = provider.status_calls.load(Ordering::SeqCst);
        assert!(eventually(
            || provider.status_calls.load(Ordering::SeqCst) > checked + 20
        ));
        autoscaler.stop();
        assert_eq!(
            *provider.calls.lock(),
            vec![0, 1],
            "one refused scale to zero, then down to the minimum, and nothing more"
        );
    }

    #[test]
    fn names_the_provider_does_not_know_are_not_kept() {
        let (_, scaler, autoscaler) = running(&[]);
        for name in ["ghost", "auto"] {
            drop(Call::begin(
                scaler.table(),
                &FunctionRef::new(name, "default").unwrap(),
            ));
        }
        let known = |scaler: &Scaler| -> Vec<String> {
            let all = scaler.table().all();
            all.iter().map(|r| r.function().name().to_owned()).collect()
        };
        assert!(eventually(|| known(&scaler) == ["auto"]));
        autoscaler.stop();
    }
}
