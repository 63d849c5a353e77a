//! A function's replicas come and go (killed, idle, busy, shut down); nothing accepted is lost.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::*;
use defrost::{Endpoint, FunctionRef, FunctionStatus, FunctionSummary, Provider, ProviderError};

/// Desired and available replicas, as the provider reports them.
fn replicas(gw: &Defrost, name: &str) -> (u64, u64) {
    let status = get(&gw.url(&format!("/system/function/{name}"))).json();
    let count = |field: &str| status[field].as_u64().unwrap_or(0);
    (count("replicas"), count("availableReplicas"))
}

/// The status of a GET, or `None` if no answer came (the gateway is gone).
fn status_of(url: &str) -> Option<u16> {
    agent().get(url).call().ok().map(|r| r.status().as_u16())
}

fn pids_started(gw: &Defrost) -> Vec<u32> {
    std::fs::read_to_string(gw.dir.path().join("starts"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// `n` concurrent GETs of `path`; their replies.
fn burst(gw: &Defrost, path: &str, n: usize) -> Vec<Reply> {
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let url = gw.url(path);
            thread::spawn(move || get(&url))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn statuses(replies: &[Reply]) -> Vec<u16> {
    replies.iter().map(|r| r.status).collect()
}

/// A reply's status, the pid of the replica that answered (if one did), and its body.
type Outcome = (u16, Option<u64>, String);

#[test]
fn killing_one_of_two_replicas_under_load_fails_at_most_its_requests_in_flight_and_it_is_replaced()
{
    const CLIENTS: usize = 4;
    let function = echo_function(
        "echo",
        r#"STARTS_FILE = "$DIR/starts""#,
        "min_replicas = 2\nmax_replicas = 2",
    );
    let gw = Arc::new(Defrost::start(&format!(
        "[gateway]\nready_timeout = \"20s\"\n{function}"
    )));
    assert_eq!(get(&gw.url("/function/echo")).status, 200);
    assert!(
        eventually(Duration::from_secs(20), || replicas(&gw, "echo") == (2, 2)),
        "two replicas ready"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (url, stop, seen) = (
                gw.url("/function/echo/sleep/0.02"),
                stop.clone(),
                seen.clone(),
            );
            thread::spawn(move || {
                for _ in 0..1000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let reply = get(&url);
                    let pid = serde_json::from_str::<serde_json::Value>(&reply.body)
                        .ok()
                        .and_then(|v| v["pid"].as_u64());
                    seen.lock().unwrap().push((reply.status, pid, reply.body));
                }
            })
        })
        .collect();
    let served_by = |pid: u32| {
        seen.lock()
            .unwrap()
            .iter()
            .any(|(_, p, _)| *p == Some(u64::from(pid)))
    };
    let pids = pids_started(&gw);
    assert_eq!(pids.len(), 2);
    assert!(
        eventually(Duration::from_secs(20), || pids
            .iter()
            .all(|p| served_by(*p))),
        "both replicas take requests"
    );

    let (victim, survivor) = (pids[0], pids[1]);
    unsafe_kill(victim, "KILL");
    let killed_at = seen.lock().unwrap().len();
    let enough = eventually(Duration::from_secs(30), || {
        seen.lock().unwrap().len() >= killed_at + 200
    });
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    assert!(enough, "load went on after the kill");

    let seen = seen.lock().unwrap();
    let failed: Vec<_> = seen.iter().filter(|(s, _, _)| *s != 200).collect();
    assert!(
        failed.iter().all(|(s, _, _)| *s == 502),
        "failures other than 502: {failed:?}"
    );
    assert!(
        failed.len() <= CLIENTS,
        "{} failed; at most the {CLIENTS} in flight on the killed replica may: {failed:?}",
        failed.len()
    );
    // Under min_replicas, the killed replica is replaced unasked: what comes after the kill is
    // answered by the survivor or by that replacement, never by the dead one.
    let replacements: Vec<u64> = pids_started(&gw)
        .into_iter()
        .filter(|p| !pids.contains(p))
        .map(u64::from)
        .collect();
    assert!(replacements.len() <= 1, "{replacements:?}");
    let after = &seen[killed_at + CLIENTS..];
    assert!(
        after.iter().all(|(s, p, _)| *s == 200
            && (*p == Some(u64::from(survivor)) || p.is_some_and(|p| replacements.contains(&p)))),
        "requests sent after the kill went to the survivor or its replacement"
    );
    assert!(
        eventually(Duration::from_secs(20), || replicas(&gw, "echo") == (2, 2)),
        "the killed replica was replaced: two ready again"
    );
    assert_eq!(pids_started(&gw).len(), 3);
}

#[test]
fn thirty_idle_and_burst_cycles_scale_to_zero_and_back_without_a_failed_request() {
    const CYCLES: usize = 30;
    let zero_after = Duration::from_millis(800);
    let function = echo_function(
        "echo",
        r#"STARTS_FILE = "$DIR/starts""#,
        &format!(
            "scale_to_zero = true\nzero_duration = \"{}ms\"",
            zero_after.as_millis()
        ),
    );
    let gw = Arc::new(Defrost::start(&format!(
        "[gateway]\nready_timeout = \"20s\"\nautoscale_interval = \"20ms\"\n{function}"
    )));
    for cycle in 0..CYCLES {
        let replies = burst(&gw, "/function/echo", 5);
        assert!(
            replies.iter().all(|r| r.status == 200),
            "cycle {cycle}: burst statuses {:?}",
            statuses(&replies)
        );
        let (desired, available) = replicas(&gw, "echo");
        assert_eq!(desired, 1, "cycle {cycle}: one replica while busy");
        assert!(available <= 1, "cycle {cycle}");

        // One more request, timed to land around the moment the idle replica is stopped:
        // a little before it, during it, or just after.
        let offset = Duration::from_millis(10 * (cycle % 8) as u64);
        thread::sleep(zero_after - Duration::from_millis(30) + offset);
        let late = get(&gw.url("/function/echo/late"));
        assert_eq!(late.status, 200, "cycle {cycle}: {}", late.body);

        assert!(
            eventually(Duration::from_secs(20), || replicas(&gw, "echo") == (0, 0)),
            "cycle {cycle}: scaled to zero; provider reports {:?}",
            replicas(&gw, "echo")
        );
        assert!(
            eventually(Duration::from_secs(30), || children_of(gw.child.id())
                .is_empty()),
            "cycle {cycle}: replica processes left: {:?}\n{}",
            children_of(gw.child.id()),
            gw.log_text()
        );
    }
    let starts = pids_started(&gw).len();
    assert!(
        (CYCLES..=2 * CYCLES).contains(&starts),
        "one or two cold starts per cycle, got {starts}"
    );
    assert!(
        gw.log_count_settled("scaled to zero", CYCLES) >= CYCLES,
        "{}",
        gw.log_text()
    );
}

#[test]
fn requests_above_capacity_scale_up_and_after_the_window_back_down_to_min() {
    let function = echo_function(
        "busy",
        "",
        r#"max_replicas = 4
labels = { "com.openfaas.scale.type" = "capacity", "com.openfaas.scale.target" = "2", "com.openfaas.scale.target-proportion" = "1.0" }"#,
    );
    let gw = Arc::new(Defrost::start(&format!(
        "[gateway]\nready_timeout = \"20s\"\nautoscale_interval = \"50ms\"\nscale_down_window = \"2s\"\n{function}"
    )));
    assert_eq!(get(&gw.url("/function/busy")).status, 200);
    assert_eq!(replicas(&gw, "busy"), (1, 1));

    // Eight slow requests at once: four replicas' worth at two each.
    let load = {
        let gw = gw.clone();
        thread::spawn(move || burst(&gw, "/function/busy/sleep/3", 8))
    };
    let mut most = 0;
    let scaled_up = eventually(Duration::from_secs(20), || {
        most = most.max(replicas(&gw, "busy").0);
        most == 4
    });
    let replies = load.join().unwrap();
    assert!(scaled_up, "scaled up to 4; saw at most {most}");
    assert!(
        replies.iter().all(|r| r.status == 200),
        "{:?}",
        statuses(&replies)
    );

    assert!(
        eventually(Duration::from_secs(30), || replicas(&gw, "busy") == (1, 1)),
        "back to min_replicas after the window; provider reports {:?}",
        replicas(&gw, "busy")
    );
    // The eight requests may be seen arriving over more than one check, and on a loaded
    // machine finishing over more than one: up in one or more steps, then down from four to
    // the highest recommendation of the window, in one or more steps, to min.
    assert!(gw.log_count_settled(" -> 4", 1) >= 1, "{}", gw.log_text());
    assert!(
        gw.log_count_settled("capacity scaling 4 -> ", 1) >= 1,
        "{}",
        gw.log_text()
    );
}

#[test]
fn sigterm_during_a_long_request_refuses_new_ones_lets_it_finish_and_stops_every_replica() {
    let function = echo_function(
        "slow",
        r#"STARTS_FILE = "$DIR/starts", REQUESTS_FILE = "$DIR/requests""#,
        "",
    );
    let mut gw = Defrost::start(&format!(
        "[gateway]\nready_timeout = \"20s\"\nshutdown_grace = \"30s\"\n{function}"
    ));
    let request = {
        let url = gw.url("/function/slow/sleep/3");
        thread::spawn(move || get(&url))
    };
    let requests = gw.dir.path().join("requests");
    assert!(
        eventually(Duration::from_secs(20), || lines_in(&requests) == 1),
        "the request reached the replica"
    );
    let pid = gw.child.id();
    let replica_pids = pids_started(&gw);
    unsafe_kill(pid, "TERM");
    let quick = gw.url("/function/slow/after-sigterm");
    // No longer listening: a new connection is refused (a request that raced the close gets
    // a 503 instead).
    assert!(
        eventually(Duration::from_secs(20), || status_of(&quick)
            .is_none_or(|s| s == 503)),
        "new requests are refused while the long one finishes"
    );
    assert!(
        std::net::TcpStream::connect(gw.addr).is_err(),
        "the listening socket is closed"
    );
    let status = wait_exit(&mut gw.child, Duration::from_secs(30)).expect("defrost exits");

    let reply = request.join().unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["path"], "/sleep/3");
    assert!(status.success(), "{status:?}");
    assert!(
        replica_pids.iter().all(|p| !alive(*p)),
        "a replica outlived defrost"
    );
    assert!(children_of(pid).is_empty());
}

/// A provider whose one replica is reported ready but refuses every connection.
struct Unreachable {
    port: u16,
    asked: AtomicU64,
}

impl Provider for Unreachable {
    fn status(&self, _: &FunctionRef) -> Result<FunctionStatus, ProviderError> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        Ok(FunctionStatus {
            replicas: 1,
            available_replicas: 1,
            min_replicas: 1,
            max_replicas: 1,
            endpoints: vec![Arc::new(Endpoint::new(format!(
                "http://127.0.0.1:{}",
                self.port
            )))],
            ..Default::default()
        })
    }

    fn set_replicas(&self, _: &FunctionRef, _: u64) -> Result<(), ProviderError> {
        Ok(())
    }

    fn list(&self, _: &str) -> Result<Vec<FunctionSummary>, ProviderError> {
        Ok(Vec::new())
    }

    fn namespaces(&self) -> Result<Vec<String>, ProviderError> {
        Ok(vec!["default".into()])
    }
}

#[test]
fn a_replica_that_keeps_refusing_is_asked_about_again_each_retry_then_named_in_a_502() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let provider = Arc::new(Unreachable {
        port,
        asked: AtomicU64::new(0),
    });
    let mut settings = defrost::Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    settings.proxy.connect_retries = 3;
    settings.proxy.retry_backoff = Duration::from_millis(1);
    let gateway = defrost::Gateway::start(settings, provider.clone()).unwrap();

    let reply = get(&format!("http://{}/function/dead", gateway.local_addr()));
    assert_eq!(reply.status, 502, "{}", reply.body);
    for needed in [
        "dead.default",
        &format!("127.0.0.1:{port}"),
        "after 4 attempts",
    ] {
        assert!(
            reply.body.contains(needed),
            "{needed:?} missing: {}",
            reply.body
        );
    }
    assert!(
        provider.asked.load(Ordering::SeqCst) >= 4,
        "the provider is asked again before each retry"
    );
    gateway.shutdown();
}

#[test]
fn reloading_a_changed_function_under_keep_alive_load_costs_no_request() {
    let config = |version: usize| echo_function("echo", &format!("VERSION = \"{version}\""), "");
    let gw = Defrost::start(&config(0));
    assert_eq!(get(&gw.url("/function/echo")).status, 200);

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (url, stop) = (gw.url("/function/echo"), Arc::clone(&stop));
            thread::spawn(move || {
                // One keep-alive connection per client, as a load generator holds them.
                let agent = agent();
                let mut failures = Vec::new();
                let mut calls = 0;
                while !stop.load(Ordering::SeqCst) && calls < 20_000 {
                    calls += 1;
                    match agent.get(&url).call() {
                        Ok(r) if r.status() == 200 => {
                            let _ = read_reply(r);
                        }
                        Ok(r) => failures.push(format!("{}: {}", r.status(), read_reply(r).body)),
                        Err(e) => failures.push(e.to_string()),
                    }
                }
                (calls, failures)
            })
        })
        .collect();

    let path = gw.dir.path().join("defrost.toml");
    for version in 1..=4 {
        thread::sleep(Duration::from_millis(700));
        std::fs::write(&path, config(version)).unwrap();
        unsafe_kill(gw.child.id(), "HUP");
        assert!(
            gw.log_count_settled("reloaded", version) >= version,
            "{}",
            gw.log_text()
        );
    }
    thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::SeqCst);
    let results: Vec<(usize, Vec<String>)> =
        clients.into_iter().map(|c| c.join().unwrap()).collect();
    let calls: usize = results.iter().map(|r| r.0).sum();
    let failures: Vec<&String> = results.iter().flat_map(|r| &r.1).collect();
    assert!(calls > 100, "the load did not run: {calls} calls");
    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed across 4 reloads: {failures:?}",
        failures.len()
    );
    // Every reload replaced the replica: the old ones were drained and stopped.
    assert!(gw.log_count_settled("stopped", 4) >= 4, "{}", gw.log_text());
}
