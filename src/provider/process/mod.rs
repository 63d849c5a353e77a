//! The embedded provider: replicas are local child processes.
//!
//! Each replica is owned by one thread that spawns it and then blocks until it exits. That thread
//! is the child's parent as far as `PR_SET_PDEATHSIG` is concerned, so the child dies with
//! defrost however defrost dies; and blocking on the child means an exit is seen the moment it
//! happens, not at the next poll. A short-lived probe thread decides readiness. Stopping signals
//! the child's process group, so helpers the function forks go with it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use std::time::Duration;

use crate::deadline::after as deadline_after;
use crate::function::FunctionRef;
use crate::provider::{
    FunctionStatus, FunctionSummary, Parked, Provider, ProviderError, ProviderInfo,
};

mod listening;
mod logbook;
mod port;
mod readiness;
mod replica;
mod slot;
#[cfg(test)]
mod tests;
mod watch;

pub use logbook::{LogBook, LogLine, Ring, Waited};
use slot::Slot;

/// How long `shutdown` waits for replicas to be reaped once they have been sent SIGKILL. Only a
/// child stuck in the kernel outlives this.
const REAP_BOUND: Duration = Duration::from_secs(2);

/// How a replica shows it can take requests.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Readiness {
    /// It accepts a TCP connection on its port.
    Tcp,
    /// It answers `GET path` with a 2xx status.
    Http {
        /// The path probed, starting with `/`.
        path: String,
    },
}

/// One function this provider runs, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessFunction {
    /// Name and namespace.
    pub function: FunctionRef,
    /// Program and arguments; the program is looked up in `PATH` when it has no slash.
    pub command: Vec<String>,
    /// Added to defrost's own environment; `PORT` is always set by the provider.
    pub env: BTreeMap<String, String>,
    /// Folder the replicas run in (absolute).
    pub workdir: PathBuf,
    /// How a replica shows it is ready.
    pub readiness: Readiness,
    /// Replicas a cold start scales to.
    pub min_replicas: u64,
    /// Replicas it may have at most.
    pub max_replicas: u64,
    /// Labels reported in its status (scale labels among them).
    pub labels: BTreeMap<String, String>,
    /// A replica not ready within this is killed and counted failed.
    pub startup_timeout: Duration,
}

/// Why a function cannot be run, and which of its settings is at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// The function at fault.
    pub function: FunctionRef,
    /// The setting, as the config file names it (`command`, `max_replicas`, ...).
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.function, self.field, self.message)
    }
}

impl std::error::Error for SpecError {}

impl ProcessFunction {
    /// Refuses what could only fail later, at the first request, far from the config line.
    /// The one check of a function's settings: the config file's loader maps its errors back to
    /// the line of the setting at fault, an embedder gets them from [`ProcessProvider::new`].
    pub fn check(&self) -> Result<(), SpecError> {
        let fail = |field, message: String| {
            Err(SpecError {
                function: self.function.clone(),
                field,
                message,
            })
        };
        if self
            .command
            .first()
            .is_none_or(|program| program.is_empty())
        {
            return fail("command", "must name a program to run".into());
        }
        if !self.workdir.is_absolute() {
            return fail(
                "workdir",
                format!("{} is not absolute", self.workdir.display()),
            );
        }
        if self.max_replicas == 0 || self.min_replicas > self.max_replicas {
            return fail(
                "max_replicas",
                format!(
                    "must be at least 1 and at least min_replicas ({})",
                    self.min_replicas
                ),
            );
        }
        if let Readiness::Http { path } = &self.readiness {
            if let Err(message) = check_probe_path(path) {
                return fail("readiness_path", message);
            }
        }
        if self.env.contains_key("PORT") {
            log::warn!(
                "{}: env sets PORT; it is replaced by the port each replica is given",
                self.function
            );
        }
        Ok(())
    }

    /// The labels reported in status: the configured ones, with the scale bounds this provider
    /// actually enforces, so that a reader of `com.openfaas.scale.*` sees the truth.
    fn reported_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        labels.insert(
            super::LABEL_MIN_REPLICAS.into(),
            self.min_replicas.to_string(),
        );
        labels.insert(
            super::LABEL_MAX_REPLICAS.into(),
            self.max_replicas.to_string(),
        );
        labels
    }
}

/// Every check a set of functions must pass before the provider runs them: each one's own, and
/// no function twice.
pub fn check_functions(functions: &[ProcessFunction]) -> Result<(), SpecError> {
    let mut seen = BTreeSet::new();
    for spec in functions {
        spec.check()?;
        if !seen.insert(spec.function.key()) {
            return Err(SpecError {
                function: spec.function.clone(),
                field: "name",
                message: "is declared twice".into(),
            });
        }
    }
    Ok(())
}

/// The path goes into a raw request line, so it must not be able to end it.
fn check_probe_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("must start with '/'".into());
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{path:?} contains whitespace or control characters"
        ));
    }
    Ok(())
}

/// Settings shared by every function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessOptions {
    /// Between SIGTERM and SIGKILL; also the longest a scale-down waits for in-flight requests.
    pub stop_grace: Duration,
}

impl Default for ProcessOptions {
    fn default() -> Self {
        ProcessOptions {
            stop_grace: Duration::from_secs(10),
        }
    }
}

/// Runs each function's replicas as child processes of defrost.
pub struct ProcessProvider {
    /// Swapped whole by [`ProcessProvider::reconfigure`]; readers clone the slot they need.
    slots: RwLock<BTreeMap<FunctionRef, Arc<Slot>>>,
    /// Slots a reload removed, still draining; `shutdown` must stop them too.
    retired: Mutex<Vec<Arc<Slot>>>,
    stop_grace: Duration,
    /// The replicas' recent output, per function.
    logs: Arc<LogBook>,
    /// Images recorded for functions deployed through the API, listed in place of the
    /// command line; never run.
    images: RwLock<BTreeMap<FunctionRef, String>>,
}

impl ProcessProvider {
    /// A provider for `functions`, checked first (nothing runs until a request comes).
    pub fn new(
        functions: Vec<ProcessFunction>,
        options: ProcessOptions,
    ) -> Result<ProcessProvider, SpecError> {
        let logs = Arc::new(LogBook::default());
        let slots = build_slots(functions, &BTreeMap::new(), options.stop_grace, &logs)?;
        Ok(ProcessProvider {
            slots: RwLock::new(slots),
            retired: Mutex::new(Vec::new()),
            stop_grace: options.stop_grace,
            logs,
            images: RwLock::new(BTreeMap::new()),
        })
    }

    /// Replaces the set of functions. Unchanged functions keep their replicas; added ones start
    /// at zero; removed or changed ones are drained (no new requests, in-flight ones finish up
    /// to the stop grace) and stopped in the background. Nothing changes if any entry is bad.
    pub fn reconfigure(&self, functions: Vec<ProcessFunction>) -> Result<(), SpecError> {
        let mut slots = self.slots.write();
        let next = build_slots(functions, &slots, self.stop_grace, &self.logs)?;
        let gone: Vec<Arc<Slot>> = slots
            .iter()
            .filter(|(f, old)| next.get(*f).is_none_or(|new| !Arc::ptr_eq(old, new)))
            .map(|(_, old)| Arc::clone(old))
            .collect();
        self.logs.retain(|f| next.contains_key(f));
        *slots = next;
        drop(slots);
        for slot in gone {
            log::info!(
                "{}: removed or changed by a reload; draining it",
                slot.spec.function
            );
            if let Err(e) = replica::scale(&slot, 0) {
                log::warn!("{}: cannot drain: {e}", slot.spec.function);
            }
            self.retired.lock().push(slot);
        }
        Ok(())
    }

    /// Replicas the provider has tried to start for `function`, whatever became of them.
    pub fn replicas_started(&self, function: &FunctionRef) -> u64 {
        self.slot(function).map_or(0, |s| s.counters.started())
    }

    /// `set_replicas` calls accepted for `function`.
    pub fn scale_calls(&self, function: &FunctionRef) -> u64 {
        self.slot(function).map_or(0, |s| s.counters.scale_calls())
    }

    /// Replicas of `function` that ended without being asked to: spawn failures, startup
    /// timeouts and exits.
    pub fn replicas_failed(&self, function: &FunctionRef) -> u64 {
        self.slot(function).map_or(0, |s| s.counters.failed())
    }

    /// Records the images of deployed functions, for the listing (`image` in
    /// `/system/functions`); functions without one are listed with their command line.
    pub fn record_images(&self, images: BTreeMap<FunctionRef, String>) {
        *self.images.write() = images;
    }

    /// The functions it runs now, as configured.
    pub fn functions(&self) -> Vec<ProcessFunction> {
        self.slots.read().values().map(|s| s.spec.clone()).collect()
    }

    /// The replicas' recent output, per function, for `/system/logs`.
    pub fn logs(&self) -> &Arc<LogBook> {
        &self.logs
    }

    fn slot(&self, function: &FunctionRef) -> Result<Arc<Slot>, ProviderError> {
        self.slots
            .read()
            .get(function)
            .cloned()
            .ok_or(ProviderError::NotFound)
    }

    /// Every slot that may still have replicas: current and retired.
    fn all_slots(&self) -> Vec<Arc<Slot>> {
        let mut all: Vec<Arc<Slot>> = self.slots.read().values().cloned().collect();
        all.extend(self.retired.lock().iter().cloned());
        all
    }
}

impl Provider for ProcessProvider {
    fn status(&self, function: &FunctionRef) -> Result<FunctionStatus, ProviderError> {
        Ok(self.slot(function)?.status())
    }

    fn set_replicas(&self, function: &FunctionRef, replicas: u64) -> Result<(), ProviderError> {
        replica::scale(&self.slot(function)?, replicas)
    }

    fn wait_for_change(&self, function: &FunctionRef, since: u64, timeout: Duration) {
        match self.slot(function) {
            Ok(slot) => slot.wait_for_change(since, timeout),
            // Nothing will ever change; sleeping keeps a confused caller from spinning.
            Err(_) => std::thread::sleep(timeout),
        }
    }

    fn notifies_changes(&self) -> bool {
        true
    }

    fn list(&self, namespace: &str) -> Result<Vec<FunctionSummary>, ProviderError> {
        let images = self.images.read();
        Ok(self
            .slots
            .read()
            .iter()
            .filter(|(f, _)| f.namespace() == namespace)
            .map(|(f, slot)| FunctionSummary {
                function: f.clone(),
                image: images
                    .get(f)
                    .cloned()
                    .unwrap_or_else(|| slot.spec.command.join(" ")),
                status: slot.status(),
                created_at: Some(slot.created_at),
            })
            .collect())
    }

    fn park(&self, function: &FunctionRef) -> Result<u64, ProviderError> {
        Ok(self.slot(function)?.park())
    }

    fn thaw(&self, function: &FunctionRef) -> Result<u64, ProviderError> {
        Ok(self.slot(function)?.thaw())
    }

    fn parked(&self, function: &FunctionRef) -> Parked {
        self.slot(function).map_or_else(
            |_| Parked::default(),
            |slot| {
                let (replicas, memory_bytes) = slot.parked();
                Parked {
                    replicas,
                    memory_bytes,
                }
            },
        )
    }

    fn namespaces(&self) -> Result<Vec<String>, ProviderError> {
        let slots = self.slots.read();
        let set: BTreeSet<&str> = slots.keys().map(FunctionRef::namespace).collect();
        Ok(set.into_iter().map(str::to_owned).collect())
    }

    fn info(&self) -> Result<ProviderInfo, ProviderError> {
        Ok(ProviderInfo::built_in("process"))
    }

    /// SIGTERM to every replica at once, SIGKILL to those still there after the grace period.
    fn shutdown(&self) {
        self.logs.close();
        let slots = self.all_slots();
        for slot in &slots {
            slot.stop_all();
        }
        let deadline = deadline_after(self.stop_grace);
        let lingering: Vec<&Arc<Slot>> = slots.iter().filter(|s| !s.wait_empty(deadline)).collect();
        for slot in &lingering {
            slot.kill_all();
        }
        let deadline = deadline_after(REAP_BOUND);
        for slot in lingering {
            if !slot.wait_empty(deadline) {
                log::error!(
                    "{}: replicas still not reaped after SIGKILL",
                    slot.spec.function
                );
            }
        }
    }
}

impl Drop for ProcessProvider {
    /// Children outlive a dropped provider otherwise (their owning threads do not end), so a
    /// provider dropped without `shutdown` still cleans up.
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Slots for `functions`, reusing from `current` the slot of every function whose
/// configuration is unchanged (its replicas keep running).
fn build_slots(
    functions: Vec<ProcessFunction>,
    current: &BTreeMap<FunctionRef, Arc<Slot>>,
    stop_grace: Duration,
    logs: &LogBook,
) -> Result<BTreeMap<FunctionRef, Arc<Slot>>, SpecError> {
    check_functions(&functions)?;
    let mut slots = BTreeMap::new();
    for spec in functions {
        let function = spec.function.clone();
        let slot = match current.get(&function) {
            Some(old) if old.spec == spec => Arc::clone(old),
            _ => Arc::new(Slot::new(spec, stop_grace, logs.ring(&function))),
        };
        slots.insert(function, slot);
    }
    Ok(slots)
}
