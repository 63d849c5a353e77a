//! A replica's life, seen from the threads that run it: spawn, probe, watch, reap, stop.

use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::logbook::Ring;
use super::port::PortLease;
use super::readiness::{self, Outcome};
use super::slot::{signal_group, Slot};
use super::ProcessFunction;
use crate::deadline::after as deadline_after;
use crate::provider::{Endpoint, ProviderError};

/// The threads here block, probe or copy lines; none needs the default 2 MiB.
const STACK_SIZE: usize = 256 * 1024;
/// Longer output lines are logged in pieces rather than buffered without bound.
const MAX_LINE: u64 = 16 * 1024;
/// How often a drain checks the in-flight count (it has no way to be told).
const DRAIN_POLL: Duration = Duration::from_millis(2);

/// Sets the function's desired replicas: the slot decides which replicas to start and which to
/// stop, and each gets a thread of its own here.
pub(super) fn scale(slot: &Arc<Slot>, replicas: u64) -> Result<(), ProviderError> {
    let (starts, stops) = slot.plan_scale(replicas)?;
    for id in starts {
        launch(slot, id);
    }
    for id in stops {
        stop_later(slot, id);
    }
    Ok(())
}

/// Starts the replica's owning thread. If even that fails, the replica is gone at once.
pub(super) fn launch(slot: &Arc<Slot>, id: u64) {
    let owner = Arc::clone(slot);
    let spawned = thread::Builder::new()
        .name(format!("replica-{id}"))
        .stack_size(STACK_SIZE)
        .spawn(move || run(&owner, id));
    if let Err(e) = spawned {
        slot.fail_before_spawn(id, &format!("cannot start a thread for it: {e}"));
    }
}

/// The owning thread. It must live exactly as long as the child: `PR_SET_PDEATHSIG` fires
/// when the thread that forked the child ends, not the process.
fn run(slot: &Arc<Slot>, id: u64) {
    slot.wait_turn_to_start(id);
    // Held until the child is reaped, so no other replica is told this port meanwhile.
    let lease = match PortLease::take() {
        Ok(lease) => lease,
        Err(e) => return slot.fail_before_spawn(id, &format!("no free port on 127.0.0.1: {e}")),
    };
    let port = lease.port();
    let endpoint = Arc::new(Endpoint::new(format!("http://127.0.0.1:{port}")));
    if slot.assign_endpoint(id, &endpoint).is_none() {
        return;
    }
    let mut child = match spawn(&slot.spec, port) {
        Ok(child) => child,
        Err(e) => return slot.fail_before_spawn(id, &spawn_error(&slot.spec, &e)),
    };
    let name = slot.replica_name(id);
    forward_output(&mut child, &name, &slot.output);
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        let _ = child.kill();
        let status = child.wait();
        return replace(slot, slot.reaped(id, status));
    };
    if let Some(halt) = slot.record_pid(id, pid) {
        start_probe(slot, id, port, halt);
    }
    wait_for_exit(pid);
    // Helpers the replica forked would be orphans now; its zombie still holds the group id.
    signal_group(pid, libc::SIGKILL);
    slot.forget_pid(id);
    let status = child.wait();
    replace(slot, slot.reaped(id, status));
}

/// Launches the replacement for a replica that exited, if its slot wants one.
fn replace(slot: &Arc<Slot>, replacement: Option<u64>) {
    if let Some(id) = replacement {
        launch(slot, id);
    }
}

fn spawn(spec: &ProcessFunction, port: u16) -> io::Result<Child> {
    let Some((program, args)) = spec.command.split_first() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty command"));
    };
    let mut command = Command::new(program);
    command
        .args(args)
        .envs(&spec.env)
        .env("PORT", port.to_string())
        .current_dir(&spec.workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec; it only makes async-signal-safe system
    // calls and builds errors from raw codes, which does not allocate.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // defrost died before the line above took effect: the signal will never come.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    command.spawn()
}

fn spawn_error(spec: &ProcessFunction, e: &io::Error) -> String {
    let program = spec.command.first().map_or("", String::as_str);
    let why = match e.kind() {
        io::ErrorKind::NotFound => format!("not found ({e})"),
        io::ErrorKind::PermissionDenied => format!("not executable ({e})"),
        _ => e.to_string(),
    };
    format!(
        "cannot start `{program}` in {}: {why}",
        spec.workdir.display()
    )
}

/// Copies the child's stdout (info) and stderr (warn) to the log, a line at a time, and keeps
/// each line in the function's ring for `/system/logs`.
fn forward_output(child: &mut Child, name: &str, ring: &Arc<Ring>) {
    if let Some(out) = child.stdout.take() {
        copy_lines(out, name, log::Level::Info, ring);
    }
    if let Some(err) = child.stderr.take() {
        copy_lines(err, name, log::Level::Warn, ring);
    }
}

fn copy_lines(stream: impl Read + Send + 'static, name: &str, level: log::Level, ring: &Arc<Ring>) {
    let instance = name.to_owned();
    let ring = Arc::clone(ring);
    let spawned = thread::Builder::new()
        .name("replica-output".into())
        .stack_size(STACK_SIZE)
        .spawn(move || log_lines(stream, &instance, level, &ring));
    if let Err(e) = spawned {
        // The pipe is closed with the closure; the child sees EPIPE when it writes there.
        log::warn!("{name}: output not logged, cannot start a thread: {e}");
    }
}

fn log_lines(stream: impl Read, instance: &str, level: log::Level, ring: &Ring) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader).take(MAX_LINE).read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                log::log!(level, "[{instance}] {text}");
                ring.push(instance, text.to_owned());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn start_probe(slot: &Arc<Slot>, id: u64, port: u16, halt: Arc<AtomicBool>) {
    let prober = Arc::clone(slot);
    let spawned = thread::Builder::new()
        .name(format!("probe-{id}"))
        .stack_size(STACK_SIZE)
        .spawn(move || probe(&prober, id, port, &halt));
    if let Err(e) = spawned {
        slot.give_up(id, &format!("cannot start a thread to probe it: {e}"));
    }
}

fn probe(slot: &Slot, id: u64, port: u16, halt: &AtomicBool) {
    let spec = &slot.spec;
    match readiness::await_ready(&spec.readiness, port, spec.startup_timeout, halt) {
        Outcome::Ready(after) => slot.mark_ready(id, after, port),
        Outcome::TimedOut => {
            slot.give_up(id, &format!("not ready within {:?}", spec.startup_timeout))
        }
        Outcome::Halted => {}
    }
}

/// Blocks until the child has exited, without reaping it: until it is reaped its pid, which is
/// also its process group id, cannot be reused, so signals sent meanwhile are safe.
fn wait_for_exit(pid: libc::pid_t) {
    loop {
        // SAFETY: siginfo_t is plain data; waitid only writes into it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// Stops a replica taken out of service, from a thread of its own so the scale call returns at
/// once: drain, SIGTERM, SIGKILL after the grace period.
pub(super) fn stop_later(slot: &Arc<Slot>, id: u64) {
    let stopper = Arc::clone(slot);
    let spawned = thread::Builder::new()
        .name(format!("stop-{id}"))
        .stack_size(STACK_SIZE)
        .spawn(move || stop(&stopper, id));
    if let Err(e) = spawned {
        log::warn!(
            "{}: cannot start a thread to stop it gracefully ({e}); sending SIGTERM now",
            slot.replica_name(id)
        );
        slot.signal(id, libc::SIGTERM);
    }
}

fn stop(slot: &Slot, id: u64) {
    let grace = slot.stop_grace;
    if let Some(endpoint) = slot.endpoint_of(id) {
        drain(&endpoint, deadline_after(grace));
    }
    slot.signal(id, libc::SIGTERM);
    if !slot.wait_gone(id, deadline_after(grace)) {
        log::warn!(
            "{} did not stop within {grace:?} of SIGTERM; killing it",
            slot.replica_name(id)
        );
        slot.signal(id, libc::SIGKILL);
    }
}

/// Requests already sent to a replica leaving service are let finish, up to the deadline.
fn drain(endpoint: &Endpoint, deadline: Instant) {
    while endpoint.in_flight() > 0 && Instant::now() < deadline {
        thread::sleep(DRAIN_POLL);
    }
}
