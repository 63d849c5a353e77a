//! An operator points Prometheus at defrost and reads what happened, call by call.

mod common;

use std::sync::Arc;
use std::thread;

use common::*;

const ECHO: &str = "function_name=\"echo.default\"";

fn config() -> String {
    let echo = echo_function("echo", "", "");
    let idle = echo_function("idle", "", "");
    format!("[gateway]\nready_timeout = \"20s\"\n{echo}{idle}")
}

/// No call to `echo` is still being counted.
fn echo_settled(expected: f64) -> impl Fn(&Scrape) -> bool {
    move |s| {
        s.value(&format!("gateway_function_invocation_started{{{ECHO}}}")) == Some(expected)
            && s.value(&format!("defrost_function_in_flight{{{ECHO}}}")) == Some(0.0)
    }
}

/// Cumulative buckets never fall, and the last (`+Inf`) equals `_count`.
fn assert_buckets_add_up(scrape: &Scrape, histogram: &str, labels: &str) {
    let prefix = format!("{histogram}_bucket{{{labels},le=");
    let buckets = scrape.starting_with(&prefix);
    assert!(buckets.len() > 2, "no buckets for {prefix}:\n{}", scrape.0);
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    let (last, total) = buckets.last().unwrap();
    assert!(last.ends_with("le=\"+Inf\"}"), "{last}");
    assert_eq!(
        *total,
        scrape.get(&format!("{histogram}_count{{{labels}}}"))
    );
}

#[test]
fn a_scrape_after_known_traffic_shows_exact_counts() {
    let gw = Defrost::start(&config());
    for i in 0..5 {
        assert_eq!(get(&gw.url(&format!("/function/echo/{i}"))).status, 200);
    }
    for _ in 0..2 {
        assert_eq!(get(&gw.url("/function/echo/status/418")).status, 418);
    }
    assert_eq!(get(&gw.url("/function/ghost")).status, 404);

    let scrape = gw.scrape_when(echo_settled(7.0));
    scrape.assert_values(&[
        (
            r#"gateway_function_invocation_total{function_name="echo.default",code="200"}"#,
            5.0,
        ),
        (
            r#"gateway_function_invocation_total{function_name="echo.default",code="418"}"#,
            2.0,
        ),
        (
            r#"gateway_function_invocation_started{function_name="echo.default"}"#,
            7.0,
        ),
        (
            r#"gateway_functions_seconds_count{function_name="echo.default",code="200"}"#,
            5.0,
        ),
        (
            r#"gateway_service_count{function_name="echo.default"}"#,
            1.0,
        ),
        (
            r#"defrost_function_replicas_ready{function_name="echo.default"}"#,
            1.0,
        ),
        (
            r#"defrost_cold_start_seconds_count{function_name="echo.default"}"#,
            1.0,
        ),
        (
            r#"defrost_function_waiting{function_name="echo.default"}"#,
            0.0,
        ),
        ("defrost_waiting_requests", 0.0),
        (
            r#"defrost_upstream_retries_total{function_name="echo.default",reason="stale_connection"}"#,
            0.0,
        ),
        (
            r#"gateway_service_count{function_name="idle.default"}"#,
            0.0,
        ),
        (
            r#"defrost_provider_calls_total{operation="set_replicas",outcome="ok"}"#,
            1.0,
        ),
        (r#"defrost_singleflight_calls_total{call="scale"}"#, 1.0),
    ]);
    assert_buckets_add_up(
        &scrape,
        "gateway_functions_seconds",
        &format!("{ECHO},code=\"200\""),
    );
    assert_buckets_add_up(
        &scrape,
        "gateway_functions_seconds",
        &format!("{ECHO},code=\"418\""),
    );
    assert_buckets_add_up(&scrape, "defrost_cold_start_seconds", ECHO);
    assert_buckets_add_up(
        &scrape,
        "defrost_provider_call_seconds",
        "operation=\"status\"",
    );

    let never_called = r#"gateway_function_invocation_started{function_name="idle.default"}"#;
    assert_eq!(scrape.value(never_called), None);
    assert!(
        !scrape.0.contains("ghost"),
        "an unknown name was kept:\n{}",
        scrape.0
    );
}

#[test]
fn concurrent_cold_calls_show_as_one_cold_start_and_coalesced_queries() {
    let gw = Arc::new(Defrost::start(&config()));
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let url = gw.url(&format!("/function/echo/{i}"));
            thread::spawn(move || get(&url).status)
        })
        .collect();
    for call in calls {
        assert_eq!(call.join().unwrap(), 200);
    }
    let scrape = gw.scrape_when(echo_settled(20.0));
    scrape.assert_values(&[
        (
            r#"gateway_function_invocation_total{function_name="echo.default",code="200"}"#,
            20.0,
        ),
        (
            r#"defrost_cold_start_seconds_count{function_name="echo.default"}"#,
            1.0,
        ),
        (r#"defrost_singleflight_calls_total{call="scale"}"#, 1.0),
    ]);
    let queries = scrape.get("defrost_singleflight_calls_total{call=\"status\"}");
    let shared = scrape.get("defrost_singleflight_coalesced_total{call=\"status\"}");
    assert!(queries + shared >= 20.0, "{queries} + {shared}");
    // Each query reached the provider once, and so did the one look the cold start's scale
    // call took first, inside its single-flight.
    let scales = scrape.get("defrost_singleflight_calls_total{call=\"scale\"}");
    assert_eq!(
        scrape.get("defrost_provider_calls_total{operation=\"status\",outcome=\"ok\"}"),
        queries + scales,
        "every status query made reached the provider once"
    );
}

#[test]
fn a_failing_provider_is_counted_and_logged_as_a_warning() {
    let config =
        "[provider]\nkind = \"openfaas\"\nurl = \"http://127.0.0.1:1\"\ntimeout = \"5s\"\n";
    let gw = Defrost::start(config);
    assert_eq!(get(&gw.url("/function/echo")).status, 502);
    let scrape = gw.scrape_when(|s| {
        s.value("defrost_provider_calls_total{operation=\"status\",outcome=\"error\"}") == Some(1.0)
    });
    let failed = "defrost_provider_calls_total{operation=\"status\",outcome=\"error\"}";
    assert_eq!(scrape.get(failed), 1.0);
    let warned = gw.log_count_settled("provider status echo.default failed", 1);
    assert_eq!(warned, 1, "{}", gw.log_text());
}

#[test]
fn metrics_can_be_served_on_a_port_of_their_own() {
    let echo = echo_function("echo", "", "");
    let gw = Defrost::start(&format!(
        "[gateway]\nmetrics_listen = \"127.0.0.1:0\"\n{echo}"
    ));
    let announced = "serving metrics on http://";
    assert_eq!(gw.log_count_settled(announced, 1), 1, "{}", gw.log_text());
    let log = gw.log_text();
    let url = log
        .lines()
        .find_map(|l| l.split(announced).nth(1))
        .map(|rest| format!("http://{}", rest.trim()))
        .expect("metrics address in the log");
    assert_eq!(get(&gw.url("/function/echo")).status, 200);

    assert_eq!(get(&gw.url("/metrics")).status, 404, "not on the main port");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let series = format!("gateway_function_invocation_total{{{ECHO},code=\"200\"}}");
    let mut scrape = Scrape(get(&url).body);
    while scrape.value(&series) != Some(1.0) && std::time::Instant::now() < deadline {
        thread::sleep(std::time::Duration::from_millis(20));
        scrape = Scrape(get(&url).body);
    }
    assert_eq!(scrape.get(&series), 1.0);
    assert_eq!(get(&url.replace("/metrics", "/function/echo")).status, 404);
}

#[test]
fn calls_waiting_for_a_cold_function_are_shown_while_they_wait() {
    let slow = echo_function("slow", r#"READY_DELAY_MS = "3000""#, "");
    let gw = Arc::new(Defrost::start(&format!(
        "[gateway]\nready_timeout = \"30s\"\n{slow}"
    )));
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let url = gw.url("/function/slow");
            thread::spawn(move || get(&url).status)
        })
        .collect();
    let waiting = r#"defrost_function_waiting{function_name="slow.default"}"#;
    let in_flight = r#"defrost_function_in_flight{function_name="slow.default"}"#;
    let scrape = gw.scrape_when(|s| s.value(waiting) == Some(3.0));
    scrape.assert_values(&[
        (waiting, 3.0),
        ("defrost_waiting_requests", 3.0),
        (in_flight, 3.0),
        (
            r#"gateway_function_invocation_started{function_name="slow.default"}"#,
            3.0,
        ),
    ]);
    for call in calls {
        assert_eq!(call.join().unwrap(), 200);
    }
    let done = gw.scrape_when(|s| s.value(in_flight) == Some(0.0));
    done.assert_values(&[
        (waiting, 0.0),
        ("defrost_waiting_requests", 0.0),
        (in_flight, 0.0),
    ]);
}
