//! Real child processes on loopback; every wait is bounded.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::slot::{test_state, Phase, StopReason};
use super::*;
use crate::client::{agent, Timeouts};
use crate::provider::{LABEL_MAX_REPLICAS, LABEL_MIN_REPLICAS};

/// A function: answers every GET with its port; `/ready` answers 503 for READY_AFTER seconds.
const SERVER: &str = r#"
import os, signal, time, http.server
start = time.monotonic()
delay = float(os.environ.get("READY_AFTER", "0"))
if os.environ.get("IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
port = os.environ["PORT"]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ready = self.path != "/ready" or time.monotonic() - start >= delay
        body = ("hello from " + port).encode()
        self.send_response(200 if ready else 503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
print("listening on", port, flush=True)
http.server.HTTPServer(("127.0.0.1", int(port)), H).serve_forever()
"#;

fn fref(name: &str) -> FunctionRef {
    FunctionRef::new(name, "default").unwrap()
}

fn function(name: &str, command: &[&str]) -> ProcessFunction {
    ProcessFunction {
        function: fref(name),
        command: command.iter().map(|s| s.to_string()).collect(),
        env: BTreeMap::new(),
        workdir: std::env::temp_dir(),
        readiness: Readiness::Tcp,
        min_replicas: 1,
        max_replicas: 3,
        labels: BTreeMap::new(),
        startup_timeout: Duration::from_secs(5),
    }
}

fn server(name: &str) -> ProcessFunction {
    function(name, &["python3", "-c", SERVER])
}

/// Never listens, so never ready.
fn sleeper(name: &str) -> ProcessFunction {
    function(name, &["sleep", "30"])
}

fn provider(functions: Vec<ProcessFunction>, stop_grace: Duration) -> ProcessProvider {
    let _ = env_logger::builder().is_test(true).try_init();
    ProcessProvider::new(functions, ProcessOptions { stop_grace }).unwrap()
}

fn wait_until(
    p: &ProcessProvider,
    f: &FunctionRef,
    within: Duration,
    what: &str,
    done: impl Fn(&FunctionStatus) -> bool,
) -> FunctionStatus {
    let deadline = Instant::now() + within;
    loop {
        let status = p.status(f).unwrap();
        if done(&status) {
            return status;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "{f}: not {what} within {within:?}: {status:?}"
        );
        p.wait_for_change(f, status.generation, left);
    }
}

fn ready(p: &ProcessProvider, f: &FunctionRef, n: u64) -> FunctionStatus {
    wait_until(p, f, Duration::from_secs(20), "ready", |s| {
        s.available_replicas == n
    })
}

/// Reaped replicas leave the state, so an empty state means no child is left.
fn wait_reaped(p: &ProcessProvider, f: &FunctionRef, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let seen = p.status(f).unwrap().generation;
        if p.slot(f).unwrap().replica_count() == 0 {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "{f}: replicas not reaped within {within:?}"
        );
        p.wait_for_change(f, seen, left);
    }
}

/// Pids appear once spawned, which is not a state change anyone waits on; poll.
fn pids(p: &ProcessProvider, f: &FunctionRef, n: usize) -> Vec<libc::pid_t> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = p.slot(f).unwrap().pids();
        if pids.len() == n {
            return pids;
        }
        assert!(
            Instant::now() < deadline,
            "{f}: {} pids, expected {n}",
            pids.len()
        );
        thread::sleep(Duration::from_millis(2));
    }
}

fn exists(pid: libc::pid_t) -> bool {
    unsafe { libc::kill(pid, 0) == 0 }
}

fn get(url: &str) -> (u16, String) {
    let second = Duration::from_secs(1);
    let timeouts = Timeouts {
        connect: second,
        response: second,
        send: second,
    };
    let mut response = agent(timeouts, 1).get(url).call().unwrap();
    let body = response.body_mut().read_to_string().unwrap();
    (response.status().as_u16(), body)
}

#[test]
fn cold_start_serves_http_and_keeps_endpoints() {
    let f = fref("hello");
    let p = provider(vec![server("hello")], Duration::from_millis(500));
    assert_eq!(p.status(&f).unwrap().replicas, 0);
    p.set_replicas(&f, 1).unwrap();
    assert_eq!(p.status(&f).unwrap().replicas, 1, "desired is set at once");
    let status = ready(&p, &f, 1);
    assert!(status.is_ready());
    let first = Arc::clone(&status.endpoints[0]);
    let (code, body) = get(&format!("{}/anything", first.base_url()));
    assert_eq!(code, 200);
    let port = first.base_url().rsplit(':').next().unwrap();
    assert_eq!(body, format!("hello from {port}"));

    p.set_replicas(&f, 2).unwrap();
    let status = ready(&p, &f, 2);
    assert!(
        Arc::ptr_eq(&status.endpoints[0], &first),
        "a replica keeps its endpoint"
    );
    assert_ne!(
        status.endpoints[0].base_url(),
        status.endpoints[1].base_url()
    );
    assert_eq!(
        (
            p.replicas_started(&f),
            p.scale_calls(&f),
            p.replicas_failed(&f)
        ),
        (2, 2, 0)
    );
    p.shutdown();
}

#[test]
fn http_readiness_waits_for_the_path() {
    let f = fref("slow");
    let mut spec = server("slow");
    spec.readiness = Readiness::Http {
        path: "/ready".into(),
    };
    spec.env.insert("READY_AFTER".into(), "0.3".into());
    let p = provider(vec![spec], Duration::from_millis(500));
    let t0 = Instant::now();
    p.set_replicas(&f, 1).unwrap();
    let status = ready(&p, &f, 1);
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "ready before /ready said so"
    );
    let (code, _) = get(&format!("{}/ready", status.endpoints[0].base_url()));
    assert_eq!(code, 200);
    p.shutdown();
}

#[test]
fn scale_is_clamped_to_max_and_spec_bounds_win() {
    let f = fref("bounded");
    let mut spec = sleeper("bounded");
    spec.max_replicas = 2;
    spec.min_replicas = 1;
    spec.labels.insert(LABEL_MIN_REPLICAS.into(), "5".into());
    spec.labels.insert(LABEL_MAX_REPLICAS.into(), "9".into());
    spec.labels.insert("team".into(), "x".into());
    let p = provider(vec![spec], Duration::from_millis(200));
    p.set_replicas(&f, 5).unwrap();
    let status = p.status(&f).unwrap();
    assert_eq!((status.replicas, status.available_replicas), (2, 0));
    assert_eq!((status.min_replicas, status.max_replicas), (1, 2));
    assert_eq!(status.labels[LABEL_MIN_REPLICAS], "1");
    assert_eq!(status.labels[LABEL_MAX_REPLICAS], "2");
    assert_eq!(status.labels["team"], "x");
    assert_eq!(p.replicas_started(&f), 2);
    p.set_replicas(&f, 1).unwrap();
    assert_eq!(p.status(&f).unwrap().replicas, 1);
    p.set_replicas(&f, 0).unwrap();
    assert_eq!(p.status(&f).unwrap().replicas, 0);
    wait_reaped(&p, &f, Duration::from_secs(10));
    assert_eq!((p.replicas_started(&f), p.scale_calls(&f)), (2, 3));
}

#[test]
fn kill_9_is_noticed_at_once_and_wakes_waiters() {
    let f = fref("crashy");
    let mut spec = server("crashy");
    spec.min_replicas = 0; // nothing to keep up: the crash leaves it at zero
    let p = provider(vec![spec], Duration::from_millis(500));
    p.set_replicas(&f, 1).unwrap();
    ready(&p, &f, 1);
    let pid = pids(&p, &f, 1)[0];
    let killer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(100));
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let seen = p.status(&f).unwrap().generation;
    let t0 = Instant::now();
    // Woken by the exit, not by the timeout.
    p.wait_for_change(&f, seen, Duration::from_secs(30));
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "waiter not woken: {:?}",
        t0.elapsed()
    );
    killer.join().unwrap();
    let status = p.status(&f).unwrap();
    assert_eq!((status.replicas, status.available_replicas), (0, 0));
    assert!(status.endpoints.is_empty());
    assert_eq!(p.replicas_failed(&f), 1);

    p.set_replicas(&f, 1).unwrap();
    ready(&p, &f, 1);
    assert_eq!(
        p.replicas_started(&f),
        2,
        "the next cold start starts a new replica"
    );
    p.shutdown();
}

#[test]
fn a_crashed_replica_under_min_replicas_is_replaced_unasked_and_repeated_crashes_back_off() {
    let f = fref("kept");
    let p = provider(vec![server("kept")], Duration::from_millis(500));
    p.set_replicas(&f, 1).unwrap();
    ready(&p, &f, 1);
    let first = pids(&p, &f, 1)[0];
    unsafe { libc::kill(first, libc::SIGKILL) };
    // Nobody asks again: the provider starts the replacement itself.
    wait_until(&p, &f, Duration::from_secs(20), "replaced", |s| {
        s.available_replicas == 1 && p.replicas_started(&f) == 2
    });
    let second = pids(&p, &f, 1)[0];
    assert_ne!(first, second);
    unsafe { libc::kill(second, libc::SIGKILL) };
    // Crashing again soon after: the next start is held back, and the status says so.
    let held = wait_until(&p, &f, Duration::from_secs(20), "held back", |s| {
        s.start_failure.is_some() && p.replicas_failed(&f) == 2
    });
    let failure = held.start_failure.expect("seen above");
    assert!(failure.next_start_in > Duration::ZERO, "{failure:?}");
    assert!(
        failure.reason.contains("exited unexpectedly"),
        "{failure:?}"
    );
    assert_eq!(held.replicas, 1, "still wanted");
    wait_until(
        &p,
        &f,
        Duration::from_secs(20),
        "replaced after the hold",
        |s| s.available_replicas == 1 && p.replicas_started(&f) == 3,
    );
    p.shutdown();
}

#[test]
fn spawn_failure_is_reported_and_desired_returns_to_zero() {
    let f = fref("missing");
    let p = provider(
        vec![function(
            "missing",
            &["/nonexistent/defrost-no-such-command"],
        )],
        Duration::from_millis(200),
    );
    p.set_replicas(&f, 1).unwrap();
    let status = wait_until(&p, &f, Duration::from_secs(10), "back to 0", |s| {
        s.replicas == 0
    });
    assert_eq!(status.available_replicas, 0);
    assert_eq!(p.replicas_failed(&f), 1);
    assert_eq!(p.slot(&f).unwrap().replica_count(), 0);
}

#[test]
fn scale_to_zero_stops_the_children() {
    let f = fref("stoppable");
    let p = provider(vec![server("stoppable")], Duration::from_secs(8));
    p.set_replicas(&f, 2).unwrap();
    ready(&p, &f, 2);
    let pids = pids(&p, &f, 2);
    let t0 = Instant::now();
    p.set_replicas(&f, 0).unwrap();
    let status = p.status(&f).unwrap();
    assert_eq!(
        (status.replicas, status.available_replicas),
        (0, 0),
        "out of service at once"
    );
    wait_reaped(&p, &f, Duration::from_secs(10));
    // Well inside the 8 s grace: SIGTERM did it, no SIGKILL was needed.
    assert!(
        t0.elapsed() < Duration::from_secs(6),
        "SIGTERM should have sufficed"
    );
    for pid in pids {
        assert!(!exists(pid), "pid {pid} still exists");
    }
    assert_eq!(p.replicas_failed(&f), 0);
}

#[test]
fn scale_down_drains_in_flight_requests_first() {
    let f = fref("busy");
    let p = provider(vec![server("busy")], Duration::from_secs(2));
    p.set_replicas(&f, 1).unwrap();
    let status = ready(&p, &f, 1);
    let pid = pids(&p, &f, 1)[0];
    let request = status.endpoints[0].begin().expect("in service");
    p.set_replicas(&f, 0).unwrap();
    assert!(
        p.status(&f).unwrap().endpoints.is_empty(),
        "no new requests for a draining replica"
    );
    thread::sleep(Duration::from_millis(200));
    assert!(exists(pid), "stopped with a request in flight");
    drop(request);
    wait_reaped(&p, &f, Duration::from_secs(10));
    assert!(!exists(pid));
}

#[test]
fn startup_timeout_kills_a_never_ready_replica() {
    let f = fref("mute");
    let mut spec = sleeper("mute");
    spec.startup_timeout = Duration::from_millis(300);
    let p = provider(vec![spec], Duration::from_millis(200));
    let t0 = Instant::now();
    p.set_replicas(&f, 1).unwrap();
    let pid = pids(&p, &f, 1)[0];
    wait_until(&p, &f, Duration::from_secs(10), "given up", |s| {
        s.replicas == 0
    });
    assert!(t0.elapsed() >= Duration::from_millis(300));
    wait_reaped(&p, &f, Duration::from_secs(10));
    assert!(!exists(pid));
    assert_eq!(p.replicas_failed(&f), 1);
}

#[test]
fn shutdown_leaves_no_child() {
    let (web, mute, stubborn) = (fref("web"), fref("mute-two"), fref("stubborn"));
    let mut term_proof = server("stubborn");
    term_proof.env.insert("IGNORE_TERM".into(), "1".into());
    let grace = Duration::from_millis(300);
    let p = provider(vec![server("web"), sleeper("mute-two"), term_proof], grace);
    p.set_replicas(&web, 2).unwrap();
    p.set_replicas(&mute, 1).unwrap();
    p.set_replicas(&stubborn, 1).unwrap();
    ready(&p, &web, 2);
    ready(&p, &stubborn, 1);
    let mut all = pids(&p, &web, 2);
    all.extend(pids(&p, &mute, 1));
    all.extend(pids(&p, &stubborn, 1));
    let t0 = Instant::now();
    p.shutdown();
    assert!(
        t0.elapsed() >= grace,
        "the TERM-proof replica needed SIGKILL"
    );
    assert!(t0.elapsed() < grace + Duration::from_secs(10));
    for pid in all {
        assert!(!exists(pid), "pid {pid} outlived shutdown");
    }
    assert!(
        p.set_replicas(&web, 1).is_err(),
        "no new replicas after shutdown"
    );
    assert!(p.set_replicas(&web, 0).is_ok());
}

#[test]
fn unknown_function_is_not_found() {
    let p = provider(vec![], Duration::from_millis(100));
    let f = fref("ghost");
    assert_eq!(p.status(&f).unwrap_err(), ProviderError::NotFound);
    assert_eq!(p.set_replicas(&f, 1).unwrap_err(), ProviderError::NotFound);
    assert_eq!((p.replicas_started(&f), p.scale_calls(&f)), (0, 0));
}

#[test]
fn new_refuses_bad_config() {
    let grace = ProcessOptions::default();
    let dup = ProcessProvider::new(vec![sleeper("a"), sleeper("a")], grace);
    assert_eq!(dup.err().map(|e| e.field), Some("name"));
    let cases: Vec<(ProcessFunction, &str, &str)> = vec![
        (function("a", &[]), "command", "program"),
        (function("a", &[""]), "command", "program"),
        (
            ProcessFunction {
                workdir: "rel".into(),
                ..sleeper("a")
            },
            "workdir",
            "absolute",
        ),
        (
            ProcessFunction {
                max_replicas: 0,
                min_replicas: 0,
                ..sleeper("a")
            },
            "max_replicas",
            "at least 1",
        ),
        (
            ProcessFunction {
                min_replicas: 4,
                ..sleeper("a")
            },
            "max_replicas",
            "min_replicas (4)",
        ),
        (
            ProcessFunction {
                readiness: Readiness::Http {
                    path: "ready".into(),
                },
                ..sleeper("a")
            },
            "readiness_path",
            "'/'",
        ),
        (
            ProcessFunction {
                readiness: Readiness::Http {
                    path: "/a b".into(),
                },
                ..sleeper("a")
            },
            "readiness_path",
            "whitespace",
        ),
    ];
    for (spec, field, why) in cases {
        let err = ProcessProvider::new(vec![spec], grace).err().unwrap();
        assert_eq!(err.field, field, "{err}");
        assert!(err.message.contains(why), "{err} does not say {why:?}");
    }
}

#[test]
fn list_and_namespaces() {
    let mut other = sleeper("b");
    other.function = FunctionRef::new("b", "staging").unwrap();
    let p = provider(
        vec![sleeper("b"), other, sleeper("a")],
        Duration::from_millis(100),
    );
    assert_eq!(p.namespaces().unwrap(), vec!["default", "staging"]);
    let listed = p.list("default").unwrap();
    let names: Vec<&str> = listed.iter().map(|s| s.function.name()).collect();
    assert_eq!(names, vec!["a", "b"]);
    assert_eq!(listed[0].image, "sleep 30");
    assert!(p.list("nowhere").unwrap().is_empty());
}

#[test]
fn scale_down_prefers_newest_starting_then_least_busy() {
    let starting = Phase::Starting;
    let ready = Phase::Ready;
    let stopping = Phase::Stopping(StopReason::ScaleDown);
    let state = test_state(&[
        (ready, 3),
        (starting, 0),
        (starting, 0),
        (stopping, 0),
        (ready, 1),
    ]);
    assert_eq!(state.pick_victim(), Some(3));
    let state = test_state(&[(ready, 3), (ready, 1), (ready, 1), (stopping, 0)]);
    assert_eq!(
        state.pick_victim(),
        Some(3),
        "fewest in flight, newest on a tie"
    );
    assert_eq!(test_state(&[(stopping, 0)]).pick_victim(), None);
}

#[test]
fn reconfigure_keeps_unchanged_functions_and_drains_removed_ones() {
    let (a, b) = (fref("keep"), fref("drop"));
    let p = provider(
        vec![server("keep"), server("drop")],
        Duration::from_millis(500),
    );
    p.set_replicas(&a, 1).unwrap();
    p.set_replicas(&b, 1).unwrap();
    ready(&p, &a, 1);
    ready(&p, &b, 1);
    let kept = pids(&p, &a, 1)[0];
    let dropped = pids(&p, &b, 1)[0];

    p.reconfigure(vec![server("keep"), server("new")]).unwrap();
    assert_eq!(
        pids(&p, &a, 1)[0],
        kept,
        "an unchanged function keeps its replica"
    );
    assert_eq!(
        p.status(&fref("new")).unwrap().replicas,
        0,
        "an added function starts at zero"
    );
    assert!(matches!(p.status(&b), Err(ProviderError::NotFound)));
    let deadline = Instant::now() + Duration::from_secs(5);
    while unsafe { libc::kill(dropped, 0) } == 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert_ne!(
        unsafe { libc::kill(dropped, 0) },
        0,
        "the removed function's replica still runs"
    );

    let bad = function("keep", &[]);
    assert!(p.reconfigure(vec![bad]).is_err());
    assert_eq!(
        pids(&p, &a, 1)[0],
        kept,
        "a refused reconfiguration changes nothing"
    );
}
