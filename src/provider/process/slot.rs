//! One function's replicas and the lock that guards them.
//!
//! Invariant, true whenever the lock is released: `desired` equals the number of replicas that
//! are starting or ready. Every path that takes a replica out of that set without being asked to
//! (spawn failure, startup timeout, exit) lowers `desired` in the same locked section, so the
//! gateway's next status sees the truth and a new scale call starts exactly what is missing.

use std::collections::BTreeMap;
use std::io;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::logbook::Ring;
use super::ProcessFunction;
use crate::deadline::after as deadline_after;
use crate::provider::{Endpoint, FunctionStatus, ProviderError, StartFailure};

/// A replica that has run this long before it ends was not crash-looping: its failure starts
/// a new count.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Longest hold on the next start of a crash-looping function.
const MAX_CRASH_BACKOFF: Duration = Duration::from_secs(30);

pub(super) struct Slot {
    pub(super) spec: ProcessFunction,
    labels: BTreeMap<String, String>,
    pub(super) stop_grace: Duration,
    state: Mutex<State>,
    changed: Condvar,
    pub(super) counters: Counters,
    /// Where its replicas' output is kept for `/system/logs`.
    pub(super) output: Arc<Ring>,
    /// When this entry was taken on: at start, or by the reload that added or changed it.
    pub(super) created_at: std::time::SystemTime,
}

/// Relaxed atomics: statistics for tests and metrics, never used to decide. Each is updated
/// before the change it counts is announced, so a woken waiter sees it.
#[derive(Default)]
pub(super) struct Counters {
    started: AtomicU64,
    scale_calls: AtomicU64,
    failed: AtomicU64,
}

impl Counters {
    pub(super) fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }
    pub(super) fn scale_calls(&self) -> u64 {
        self.scale_calls.load(Ordering::Relaxed)
    }
    pub(super) fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
    fn count_failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Default)]
pub(super) struct State {
    desired: u64,
    pub(super) replicas: Vec<Replica>,
    /// Ready replicas' endpoints, rebuilt on every change so `status` only clones it.
    endpoints: Vec<Arc<Endpoint>>,
    /// Bumped on every change; `wait_for_change` wakes when it moves.
    generation: u64,
    next_id: u64,
    shut_down: bool,
    failures: Failures,
}

/// Replicas that failed one after another (spawn failures, startup timeouts, exits soon after
/// starting). After the second in a row, starts are held back, 1 s, 2 s, 4 s... up to
/// [`MAX_CRASH_BACKOFF`], whoever asks for them: a function that dies at once is not
/// respawned for every request that arrives.
#[derive(Default)]
struct Failures {
    in_a_row: u32,
    /// No replica spawns before this.
    not_before: Option<Instant>,
    /// What happened to the last one.
    last: String,
}

impl Failures {
    fn record(&mut self, lived: Duration, why: String) {
        self.in_a_row = if lived >= STABLE_AFTER {
            1
        } else {
            self.in_a_row.saturating_add(1)
        };
        self.not_before = Some(deadline_after(crash_backoff(self.in_a_row)));
        self.last = why;
    }

    fn report(&self) -> Option<StartFailure> {
        let not_before = self.not_before?;
        Some(StartFailure {
            reason: self.last.clone(),
            in_a_row: self.in_a_row,
            next_start_in: not_before.saturating_duration_since(Instant::now()),
        })
    }
}

/// No hold after a single failure (a function that crashed once is restarted at once), then
/// doubling from 1 s.
fn crash_backoff(in_a_row: u32) -> Duration {
    match in_a_row {
        0 | 1 => Duration::ZERO,
        n => Duration::from_secs(1)
            .saturating_mul(2u32.saturating_pow(n - 2))
            .min(MAX_CRASH_BACKOFF),
    }
}

pub(super) struct Replica {
    pub(super) id: u64,
    /// Set by the replica's thread once it has a port.
    endpoint: Option<Arc<Endpoint>>,
    /// The child's pid, which is also its process group. Only set while the child is unreaped,
    /// so a signal sent under the lock can never reach a recycled pid.
    pub(super) pid: Option<libc::pid_t>,
    pub(super) phase: Phase,
    /// Tells the probe thread to give up; read without the lock.
    halt: Arc<AtomicBool>,
    /// When the replica was asked for: how long it lived tells a crash loop from a crash.
    started: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Starting,
    Ready,
    /// Frozen (its process group stopped) while its function is idle, out of rotation; thawed
    /// by the next request. It keeps its memory, its port and its pooled connections.
    Parked,
    Stopping(StopReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StopReason {
    ScaleDown,
    Shutdown,
    /// Not ready in time, or could not be probed.
    Failed,
}

impl State {
    fn find_mut(&mut self, id: u64) -> Option<&mut Replica> {
        self.replicas.iter_mut().find(|r| r.id == id)
    }

    fn active(&self) -> u64 {
        self.replicas.iter().filter(|r| r.is_active()).count() as u64
    }

    fn add_replica(&mut self) -> u64 {
        self.next_id += 1;
        self.replicas.push(Replica {
            id: self.next_id,
            endpoint: None,
            pid: None,
            phase: Phase::Starting,
            halt: Arc::new(AtomicBool::new(false)),
            started: Instant::now(),
        });
        self.next_id
    }

    /// A replica that ended without being asked to counts towards the crash-loop back-off.
    fn record_failure(&mut self, id: u64, why: String) {
        let lived = self
            .replicas
            .iter()
            .find(|r| r.id == id)
            .map_or(Duration::ZERO, |r| r.started.elapsed());
        self.failures.record(lived, why);
    }

    /// A replica that has served for a while ends the crash loop.
    fn forget_stale_failures(&mut self) {
        let stable = self.replicas.iter().any(|r| {
            matches!(r.phase, Phase::Ready | Phase::Parked) && r.started.elapsed() >= STABLE_AFTER
        });
        if stable {
            self.failures = Failures::default();
        }
    }

    fn refresh_endpoints(&mut self) {
        self.endpoints = self
            .replicas
            .iter()
            .filter(|r| r.phase == Phase::Ready)
            .filter_map(|r| r.endpoint.clone())
            .collect();
    }

    /// Not-ready replicas first, newest first: they serve nothing and cost the least to lose.
    /// Then parked ones, then the ready one with the fewest requests in flight, newest on a tie.
    pub(super) fn pick_victim(&self) -> Option<u64> {
        let starting = self.replicas.iter().filter(|r| r.phase == Phase::Starting);
        if let Some(r) = starting.max_by_key(|r| r.id) {
            return Some(r.id);
        }
        let parked = self.replicas.iter().filter(|r| r.phase == Phase::Parked);
        if let Some(r) = parked.max_by_key(|r| r.id) {
            return Some(r.id);
        }
        self.replicas
            .iter()
            .filter(|r| r.phase == Phase::Ready)
            .min_by_key(|r| (r.in_flight(), std::cmp::Reverse(r.id)))
            .map(|r| r.id)
    }

    /// Takes the replica out of service: no new requests (not even from a gateway's cached
    /// status), no readiness.
    fn begin_stop(&mut self, id: u64, reason: StopReason) {
        if let Some(r) = self.find_mut(id) {
            // A stopped process would keep SIGTERM pending until continued.
            if r.phase == Phase::Parked {
                if let Some(pid) = r.pid {
                    signal_group(pid, libc::SIGCONT);
                }
            }
            r.phase = Phase::Stopping(reason);
            r.halt.store(true, Ordering::Relaxed);
            if let Some(endpoint) = &r.endpoint {
                endpoint.retire();
            }
        }
        self.refresh_endpoints();
    }

    /// Signals the replica's process group, if it has a live child.
    fn signal(&self, id: u64, signal: libc::c_int) {
        if let Some(pid) = self
            .replicas
            .iter()
            .find(|r| r.id == id)
            .and_then(|r| r.pid)
        {
            signal_group(pid, signal);
        }
    }
}

impl Replica {
    fn is_active(&self) -> bool {
        matches!(self.phase, Phase::Starting | Phase::Ready | Phase::Parked)
    }

    pub(super) fn in_flight(&self) -> usize {
        self.endpoint.as_ref().map_or(0, |e| e.in_flight())
    }
}

impl Slot {
    pub(super) fn new(spec: ProcessFunction, stop_grace: Duration, output: Arc<Ring>) -> Slot {
        Slot {
            output,
            labels: spec.reported_labels(),
            spec,
            stop_grace,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            counters: Counters::default(),
            created_at: std::time::SystemTime::now(),
        }
    }

    pub(super) fn replica_name(&self, id: u64) -> String {
        format!("{}#{id}", self.spec.function)
    }

    /// Wakes every waiter; the caller holds the lock and has just changed the state.
    fn touch(&self, state: &mut State) {
        state.generation = state.generation.wrapping_add(1);
        self.changed.notify_all();
    }

    pub(super) fn status(&self) -> FunctionStatus {
        let (replicas, endpoints, generation, start_failure) = {
            let mut state = self.state.lock();
            state.forget_stale_failures();
            let start_failure = state.failures.report();
            (
                state.desired,
                state.endpoints.clone(),
                state.generation,
                start_failure,
            )
        };
        FunctionStatus {
            replicas,
            available_replicas: endpoints.len() as u64,
            min_replicas: self.spec.min_replicas,
            max_replicas: self.spec.max_replicas,
            labels: self.labels.clone(),
            endpoints,
            generation,
            start_failure,
        }
    }

    /// Sets the desired replicas; returns the replicas to start and those to stop, which the
    /// caller gives threads of their own (see `replica::scale`).
    pub(super) fn plan_scale(&self, replicas: u64) -> Result<(Vec<u64>, Vec<u64>), ProviderError> {
        self.counters.scale_calls.fetch_add(1, Ordering::Relaxed);
        let to = replicas.min(self.spec.max_replicas);
        let (from, starts, stops) = {
            let mut state = self.state.lock();
            if state.shut_down && to > 0 {
                return Err(ProviderError::Failed(
                    "the provider is shutting down".into(),
                ));
            }
            let from = state.desired;
            state.desired = to;
            let mut starts = Vec::new();
            while state.active() < to {
                starts.push(state.add_replica());
            }
            let mut stops = Vec::new();
            while state.active() > to {
                let Some(id) = state.pick_victim() else { break };
                state.begin_stop(id, StopReason::ScaleDown);
                stops.push(id);
            }
            self.touch(&mut state);
            (from, starts, stops)
        };
        log::info!("scale {}: {from} -> {to} replicas", self.spec.function);
        self.counters
            .started
            .fetch_add(starts.len() as u64, Ordering::Relaxed);
        Ok((starts, stops))
    }

    pub(super) fn wait_for_change(&self, seen: u64, timeout: Duration) {
        let deadline = deadline_after(timeout);
        let mut state = self.state.lock();
        while state.generation == seen {
            if self.changed.wait_until(&mut state, deadline).timed_out() {
                return;
            }
        }
    }

    /// Holds a replica back while the function is crash-looping, until its turn comes or it
    /// is no longer wanted (then the caller finds it stopped and lets it go).
    pub(super) fn wait_turn_to_start(&self, id: u64) {
        let mut state = self.state.lock();
        while let Some(not_before) = state.failures.not_before {
            let wanted = state.replicas.iter().any(|r| r.id == id && r.is_active());
            if !wanted || Instant::now() >= not_before {
                return;
            }
            log::debug!(
                "{}: held back until the crash-loop back-off ends",
                self.replica_name(id)
            );
            self.changed.wait_until(&mut state, not_before);
        }
    }

    /// Gives the replica its endpoint; `None` if it was stopped before it could spawn, in which
    /// case it is gone.
    pub(super) fn assign_endpoint(&self, id: u64, endpoint: &Arc<Endpoint>) -> Option<()> {
        let mut state = self.state.lock();
        let replica = state.find_mut(id)?;
        if !replica.is_active() {
            state.replicas.retain(|r| r.id != id);
            self.touch(&mut state);
            return None;
        }
        replica.endpoint = Some(Arc::clone(endpoint));
        Some(())
    }

    /// Records the child; returns the flag its probe should watch, or `None` if the replica
    /// was stopped while spawning (then the child is killed at once: it never served anything).
    pub(super) fn record_pid(&self, id: u64, pid: libc::pid_t) -> Option<Arc<AtomicBool>> {
        let mut state = self.state.lock();
        let Some(replica) = state.find_mut(id) else {
            signal_group(pid, libc::SIGKILL);
            return None;
        };
        replica.pid = Some(pid);
        if replica.is_active() {
            return Some(Arc::clone(&replica.halt));
        }
        signal_group(pid, libc::SIGKILL);
        None
    }

    /// The child has exited but is not reaped yet: stop signalling it before its pid is freed.
    pub(super) fn forget_pid(&self, id: u64) {
        let mut state = self.state.lock();
        if let Some(r) = state.find_mut(id) {
            r.pid = None;
            r.halt.store(true, Ordering::Relaxed);
            // Whatever a cached status says, the replica will never answer again.
            if let Some(endpoint) = &r.endpoint {
                endpoint.retire();
            }
        }
    }

    /// A replica that never got a child (no port, no thread, spawn failed) leaves.
    pub(super) fn fail_before_spawn(&self, id: u64, why: &str) {
        let desired = {
            let mut state = self.state.lock();
            let was_active = state.replicas.iter().any(|r| r.id == id && r.is_active());
            state.record_failure(id, format!("{}: {why}", self.replica_name(id)));
            state.replicas.retain(|r| r.id != id);
            if was_active {
                state.desired = state.desired.saturating_sub(1);
            }
            self.counters.count_failed();
            self.touch(&mut state);
            state.desired
        };
        log::error!(
            "{}: {why}; {} now wants {desired} replicas",
            self.replica_name(id),
            self.spec.function
        );
    }

    pub(super) fn mark_ready(&self, id: u64, after: Duration, port: u16) {
        {
            let mut state = self.state.lock();
            match state.find_mut(id) {
                Some(r) if r.phase == Phase::Starting => r.phase = Phase::Ready,
                _ => return,
            }
            state.refresh_endpoints();
            self.touch(&mut state);
        }
        log::info!(
            "{} ready on port {port} after {} ms",
            self.replica_name(id),
            after.as_millis()
        );
    }

    /// A replica that cannot become ready is killed outright: it has served nothing.
    pub(super) fn give_up(&self, id: u64, why: &str) {
        let desired = {
            let mut state = self.state.lock();
            if !state
                .find_mut(id)
                .is_some_and(|r| r.phase == Phase::Starting)
            {
                return;
            }
            state.record_failure(id, format!("{}: {why}", self.replica_name(id)));
            state.begin_stop(id, StopReason::Failed);
            state.signal(id, libc::SIGKILL);
            state.desired = state.desired.saturating_sub(1);
            self.counters.count_failed();
            self.touch(&mut state);
            state.desired
        };
        log::error!(
            "{}: {why}; killed it, {} now wants {desired} replicas",
            self.replica_name(id),
            self.spec.function
        );
    }

    /// The child is reaped: the replica leaves, and if nobody asked it to, `desired` drops.
    /// Forgets the reaped replica. A ready one that exited on its own while its function stood
    /// at or under `min_replicas` is replaced without waiting for a request: the id of the
    /// replacement is returned for the caller to launch, and it starts when the crash-loop
    /// back-off lets it.
    pub(super) fn reaped(&self, id: u64, status: io::Result<ExitStatus>) -> Option<u64> {
        let status = match status {
            Ok(s) => s.to_string(),
            Err(e) => format!("status unknown: {e}"),
        };
        let name = self.replica_name(id);
        let (phase, desired, replacement) = {
            let mut state = self.state.lock();
            let phase = state
                .replicas
                .iter()
                .find(|r| r.id == id)
                .map(|r| r.phase)?;
            let mut replacement = None;
            let unexpected = matches!(phase, Phase::Starting | Phase::Ready | Phase::Parked);
            if unexpected {
                let when = if phase == Phase::Starting {
                    "before it was ready"
                } else {
                    "unexpectedly"
                };
                state.record_failure(id, format!("{name} exited {when} ({status})"));
                self.counters.count_failed();
                // Only a replica that served is replaced: one that never got ready is left to
                // the waiting requests, which give up after a few such starts.
                if matches!(phase, Phase::Ready | Phase::Parked)
                    && state.desired <= self.spec.min_replicas
                    && !state.shut_down
                {
                    replacement = Some(state.add_replica());
                    self.counters.started.fetch_add(1, Ordering::Relaxed);
                } else {
                    state.desired = state.desired.saturating_sub(1);
                }
            }
            state.replicas.retain(|r| r.id != id);
            state.refresh_endpoints();
            self.touch(&mut state);
            (phase, state.desired, replacement)
        };
        match phase {
            Phase::Starting | Phase::Ready | Phase::Parked if replacement.is_some() => {
                log::warn!(
                    "{name} exited unexpectedly ({status}); replacing it to keep {} at {desired} \
                     replicas (min_replicas)",
                    self.spec.function
                );
            }
            Phase::Starting | Phase::Ready | Phase::Parked => {
                log::warn!(
                    "{name} exited unexpectedly ({status}); {} now wants {desired} replicas",
                    self.spec.function
                );
            }
            Phase::Stopping(_) => log::info!("{name} stopped ({status})"),
        }
        replacement
    }

    /// Freezes every ready replica with no request in flight: its endpoint is retired first,
    /// so no request can reach it frozen (one that slipped in keeps it ready), then its
    /// process group gets SIGSTOP. Returns how many were parked.
    pub(super) fn park(&self) -> u64 {
        let mut state = self.state.lock();
        let mut parked = 0;
        for r in state
            .replicas
            .iter_mut()
            .filter(|r| r.phase == Phase::Ready)
        {
            let (Some(endpoint), Some(pid)) = (r.endpoint.clone(), r.pid) else {
                continue;
            };
            endpoint.retire();
            if endpoint.in_flight() > 0 {
                r.endpoint = Some(Arc::new(Endpoint::new(endpoint.base_url())));
                continue;
            }
            signal_group(pid, libc::SIGSTOP);
            r.phase = Phase::Parked;
            parked += 1;
        }
        if parked > 0 {
            state.refresh_endpoints();
            self.touch(&mut state);
            log::info!("{}: parked {parked} idle replicas", self.spec.function);
        }
        parked
    }

    /// Continues every parked replica and puts it back in rotation under a fresh endpoint (the
    /// retired one stays retired). One whose group cannot be signalled has died: it is left to
    /// its reaper, which replaces it. Returns how many were thawed.
    pub(super) fn thaw(&self) -> u64 {
        let mut state = self.state.lock();
        let mut thawed = 0;
        for r in state
            .replicas
            .iter_mut()
            .filter(|r| r.phase == Phase::Parked)
        {
            let (Some(endpoint), Some(pid)) = (r.endpoint.clone(), r.pid) else {
                continue;
            };
            // A replica killed while frozen is a zombie until its reaper gets to it, and a
            // zombie's group still takes signals: ask the process itself how it is.
            if !signal_group(pid, libc::SIGCONT) || !runs(pid) {
                continue;
            }
            r.endpoint = Some(Arc::new(Endpoint::new(endpoint.base_url())));
            r.phase = Phase::Ready;
            thawed += 1;
        }
        if thawed > 0 {
            state.refresh_endpoints();
            self.touch(&mut state);
        }
        thawed
    }

    /// Parked replicas and the memory they hold (resident set of each one's main process).
    pub(super) fn parked(&self) -> (u64, u64) {
        let pids: Vec<libc::pid_t> = {
            let state = self.state.lock();
            state
                .replicas
                .iter()
                .filter(|r| r.phase == Phase::Parked)
                .filter_map(|r| r.pid)
                .collect()
        };
        let bytes = pids.iter().map(|&pid| resident_bytes(pid)).sum();
        (pids.len() as u64, bytes)
    }

    pub(super) fn endpoint_of(&self, id: u64) -> Option<Arc<Endpoint>> {
        let state = self.state.lock();
        state.replicas.iter().find(|r| r.id == id)?.endpoint.clone()
    }

    pub(super) fn signal(&self, id: u64, signal: libc::c_int) {
        self.state.lock().signal(id, signal);
    }

    /// True once the replica is reaped; false if `deadline` came first.
    pub(super) fn wait_gone(&self, id: u64, deadline: Instant) -> bool {
        let mut state = self.state.lock();
        while state.replicas.iter().any(|r| r.id == id) {
            if self.changed.wait_until(&mut state, deadline).timed_out() {
                return !state.replicas.iter().any(|r| r.id == id);
            }
        }
        true
    }

    /// True once every replica is reaped; false if `deadline` came first.
    pub(super) fn wait_empty(&self, deadline: Instant) -> bool {
        let mut state = self.state.lock();
        while !state.replicas.is_empty() {
            if self.changed.wait_until(&mut state, deadline).timed_out() {
                return state.replicas.is_empty();
            }
        }
        true
    }

    /// Refuses new replicas and sends SIGTERM to every one; replicas still spawning are killed
    /// by their own thread when it sees they are stopping.
    pub(super) fn stop_all(&self) {
        let mut state = self.state.lock();
        state.shut_down = true;
        state.desired = 0;
        let ids: Vec<u64> = state.replicas.iter().map(|r| r.id).collect();
        for id in ids {
            state.begin_stop(id, StopReason::Shutdown);
            state.signal(id, libc::SIGTERM);
        }
        self.touch(&mut state);
    }

    pub(super) fn kill_all(&self) {
        let state = self.state.lock();
        for r in &state.replicas {
            if let Some(pid) = r.pid {
                log::warn!(
                    "{} did not stop in time; killing it",
                    self.replica_name(r.id)
                );
                signal_group(pid, libc::SIGKILL);
            }
        }
    }

    #[cfg(test)]
    pub(super) fn pids(&self) -> Vec<libc::pid_t> {
        self.state
            .lock()
            .replicas
            .iter()
            .filter_map(|r| r.pid)
            .collect()
    }

    #[cfg(test)]
    pub(super) fn replica_count(&self) -> usize {
        self.state.lock().replicas.len()
    }
}

/// Whether the process is alive rather than a zombie, as /proc says; where there is no /proc
/// to ask, it is taken to be.
fn runs(pid: libc::pid_t) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return !std::path::Path::new("/proc/self/stat").exists();
    };
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().next());
    !matches!(state, Some("Z" | "X" | "x"))
}

/// `VmRSS` of a process, 0 when it cannot be read.
fn resident_bytes(pid: libc::pid_t) -> u64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib.saturating_mul(1024))
}

/// Signals the whole process group led by `pid`. Callers guarantee `pid` is not yet reaped.
/// False when the group is gone.
pub(super) fn signal_group(pid: libc::pid_t, signal: libc::c_int) -> bool {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(-pid, signal) == 0 }
}

#[cfg(test)]
pub(super) fn test_state(phases: &[(Phase, usize)]) -> State {
    let mut state = State::default();
    for (phase, in_flight) in phases {
        let id = state.add_replica();
        let endpoint = Arc::new(Endpoint::new(format!("http://127.0.0.1:{id}")));
        for _ in 0..*in_flight {
            std::mem::forget(endpoint.begin());
        }
        if let Some(r) = state.find_mut(id) {
            r.phase = *phase;
            r.endpoint = Some(endpoint);
        }
    }
    state
}

#[cfg(test)]
mod crash_loop_tests {
    use super::*;

    #[test]
    fn the_back_off_starts_at_the_second_failure_in_a_row_and_is_capped() {
        let secs = Duration::from_secs;
        let holds: Vec<Duration> = (0..8).map(crash_backoff).collect();
        assert_eq!(
            holds,
            [0, 0, 1, 2, 4, 8, 16, 30].map(secs).to_vec(),
            "holds by failures in a row"
        );
        assert_eq!(crash_backoff(u32::MAX), MAX_CRASH_BACKOFF);
    }

    #[test]
    fn a_failure_after_a_long_life_starts_a_new_count() {
        let mut failures = Failures::default();
        for _ in 0..4 {
            failures.record(Duration::from_millis(10), "died".into());
        }
        assert_eq!(failures.in_a_row, 4);
        let report = failures.report().expect("a crash loop is reported");
        assert!(report.next_start_in > Duration::from_secs(3));
        failures.record(STABLE_AFTER, "died after a long life".into());
        assert_eq!(failures.in_a_row, 1);
        let report = failures.report().expect("the failure is still reported");
        assert_eq!(report.next_start_in, Duration::ZERO);
        assert_eq!(report.reason, "died after a long life");
    }
}
