//! An operator writes absurdly long durations (meaning "never time out"): the gateway takes
//! them as "as long as it can", and never panics doing the arithmetic.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// `i64::MAX` seconds: the largest a TOML integer holds.
const HUGE: &str = "9223372036854775807";

/// Every `[gateway]` duration key, at `HUGE`.
const GATEWAY_DURATIONS: &[&str] = &[
    "ready_timeout",
    "upstream_timeout",
    "connect_timeout",
    "cache_expiry",
    "poll_interval",
    "scale_retry_interval",
    "retry_backoff",
    "autoscale_interval",
    "scale_down_window",
    "shutdown_grace",
    "stop_grace",
    "startup_timeout",
    "header_timeout",
    "keep_alive_timeout",
    "read_timeout",
    "write_timeout",
    "analytics_interval",
];

fn no_panic(gw: &Defrost) {
    let log = gw.log_text();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_cold_call_with_a_huge_ready_timeout_waits_without_panicking() {
    let never = echo_function(
        "never",
        "READY_DELAY_MS = \"1000000000\"",
        &format!("startup_timeout = {HUGE}"),
    );
    let config = format!(
        "[gateway]\nready_timeout = {HUGE}\nshutdown_grace = \"2s\"\n{}{never}",
        echo_function("echo", "", "min_replicas = 1")
    );
    let mut gw = Defrost::start(&config);
    let cold_url = gw.url("/function/never");
    let cold = std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        agent.get(&cold_url).call().map(|r| r.status().as_u16())
    });
    // The cold call is waiting (or has broken off, before the fix).
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!cold.is_finished(), "the cold call ended early");
    no_panic(&gw);
    assert_eq!(get(&gw.url("/healthz")).status, 200);
    let warm = get(&gw.url("/function/echo"));
    assert_eq!(warm.status, 200, "{}", warm.body);

    let asked = Instant::now();
    let exit = gw.terminate().expect("exits after SIGTERM");
    assert!(exit.success(), "{exit:?}: {}", gw.log_text());
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "took {:?} to stop",
        asked.elapsed()
    );
    // The waiting call was told, not left hanging.
    let cold = cold.join().unwrap();
    assert_eq!(cold.ok(), Some(503), "{}", gw.log_text());
    no_panic(&gw);
}

#[test]
fn every_duration_at_its_largest_still_serves() {
    let gateway: String = GATEWAY_DURATIONS
        .iter()
        .map(|key| format!("{key} = {HUGE}\n"))
        .collect();
    let echo = echo_function(
        "echo",
        "",
        &format!("min_replicas = 1\nstartup_timeout = {HUGE}\nscale_to_zero = true\nzero_duration = {HUGE}"),
    );
    let mut gw = Defrost::start(&format!("[gateway]\n{gateway}{echo}"));
    for _ in 0..3 {
        let reply = get(&gw.url("/function/echo/warm"));
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.json()["path"], "/warm");
    }
    // A keep-alive connection, idle for a moment, is still served.
    let agent = agent();
    for _ in 0..2 {
        let reply = read_reply(agent.get(&gw.url("/function/echo/again")).call().unwrap());
        assert_eq!(reply.status, 200, "{}", reply.body);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(get(&gw.url("/healthz")).status, 200);
    drop(agent);
    let exit = gw.terminate().expect("exits after SIGTERM");
    assert!(exit.success(), "{exit:?}: {}", gw.log_text());
    no_panic(&gw);
}
