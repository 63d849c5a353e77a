//! Parking: a function idle for `park_after` has its replicas frozen (no CPU, warm state kept,
//! out of rotation); the next call thaws them and is answered by the same process. A parked
//! replica that died is replaced, and a gateway shutting down stops parked replicas too.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::*;

const PARKED: &str = "defrost_function_replicas_parked{function_name=\"warm.default\"}";
const PARKED_BYTES: &str = "defrost_function_parked_memory_bytes{function_name=\"warm.default\"}";

fn parking_gateway() -> Defrost {
    Defrost::start(&echo_function(
        "warm",
        r#"STARTS_FILE = "$DIR/starts""#,
        "park_after = \"300ms\"",
    ))
}

/// The process state letter from /proc (`T` when stopped).
fn state_of(pid: u32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    after.split_whitespace().next().unwrap_or("").to_owned()
}

fn pid_answering(gw: &Defrost) -> u32 {
    let reply = get(&gw.url("/function/warm/hello"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    u32::try_from(reply.json()["pid"].as_u64().expect("a pid")).unwrap()
}

fn wait_parked(gw: &Defrost, pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while state_of(pid) != "T" {
        assert!(Instant::now() < deadline, "never parked: {}", gw.log_text());
        thread::sleep(Duration::from_millis(20));
    }
    let scrape = gw.scrape_when(|s| s.value(PARKED) == Some(1.0));
    assert_eq!(scrape.value(PARKED), Some(1.0), "{}", scrape.0);
    assert!(scrape.get(PARKED_BYTES) > 0.0, "{}", scrape.0);
}

#[test]
fn an_idle_function_is_parked_and_the_next_call_thaws_the_same_process() {
    let mut gw = parking_gateway();
    let pid = pid_answering(&gw);
    wait_parked(&gw, pid);
    let page = get(&gw.url("/")).body;
    assert!(page.contains("<td class=\"parked\">1 ("), "{page}");

    assert_eq!(
        pid_answering(&gw),
        pid,
        "answered by the process that was parked"
    );
    assert_ne!(state_of(pid), "T");
    assert_eq!(
        gw.scrape_when(|s| s.value(PARKED) == Some(0.0))
            .value(PARKED),
        Some(0.0)
    );
    assert_eq!(lines_in(&gw.dir.path().join("starts")), 1, "no new start");

    // Parked again, then the gateway stops: the frozen replica is stopped with it.
    wait_parked(&gw, pid);
    assert!(gw.terminate().is_some_and(|s| s.success()));
    assert!(!alive(pid), "a parked replica outlived the gateway");
}

#[test]
fn a_parked_replica_that_died_is_replaced_by_the_next_call() {
    let gw = parking_gateway();
    let pid = pid_answering(&gw);
    wait_parked(&gw, pid);
    unsafe_kill(pid, "KILL");
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(Instant::now() < deadline, "SIGKILL did not end {pid}");
        thread::sleep(Duration::from_millis(5));
    }
    let next = pid_answering(&gw);
    assert_ne!(next, pid);
    assert_eq!(lines_in(&gw.dir.path().join("starts")), 2);
}

#[test]
fn calls_arriving_together_on_a_parked_function_are_all_answered() {
    let gw = parking_gateway();
    let pid = pid_answering(&gw);
    wait_parked(&gw, pid);
    let url = gw.url("/function/warm/together");
    let callers: Vec<_> = (0..16)
        .map(|_| {
            let url = url.clone();
            thread::spawn(move || get(&url))
        })
        .collect();
    for caller in callers {
        let reply = caller.join().unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.json()["pid"].as_u64(), Some(u64::from(pid)));
    }
}
