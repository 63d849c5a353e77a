//! An operator collects call counts at an HTTP endpoint; the endpoint's health never touches
//! the requests themselves.

mod common;

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

fn config(analytics_url: &str) -> String {
    format!(
        "[gateway]\nanalytics_url = \"{analytics_url}\"\nanalytics_interval = \"200ms\"\n{}",
        echo_function("echo", "", "")
    )
}

/// A collector on loopback: records every batch it is sent.
fn collector() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let server = defrost_http::Server::http("127.0.0.1:0").unwrap();
    let url = format!("http://{}/analytics", server.server_addr());
    let batches = Arc::new(Mutex::new(Vec::new()));
    let sink = batches.clone();
    thread::spawn(move || {
        for mut request in server.incoming_requests() {
            let mut body = String::new();
            let _ = request.as_reader().read_to_string(&mut body);
            if let Ok(batch) = serde_json::from_str(&body) {
                sink.lock().unwrap().push(batch);
            }
            let _ = request.respond(defrost_http::Response::empty(204));
        }
    });
    (url, batches)
}

fn calls_reported(batches: &Mutex<Vec<serde_json::Value>>, id: &str) -> u64 {
    batches
        .lock()
        .unwrap()
        .iter()
        .flat_map(|b| b.as_array().cloned().unwrap_or_default())
        .filter(|d| d["ID"] == id)
        .map(|d| d["FunctionCallCount"].as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn call_counts_arrive_in_batches() {
    let (url, batches) = collector();
    let gw = Defrost::start(&config(&url));
    for _ in 0..5 {
        assert_eq!(get(&gw.url("/function/echo")).status, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while calls_reported(&batches, "echo.default") < 5 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        calls_reported(&batches, "echo.default"),
        5,
        "each call reported exactly once"
    );
}

#[test]
fn a_dead_or_hanging_endpoint_costs_requests_nothing() {
    // Accepts connections (the kernel does) but never reads or answers.
    let hanging = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/analytics", hanging.local_addr().unwrap());
    let gw = Defrost::start(&config(&url));
    assert_eq!(get(&gw.url("/function/echo")).status, 200);
    for _ in 0..50 {
        assert_eq!(get(&gw.url("/function/echo")).status, 200);
    }
    assert!(
        gw.log_count_settled("analytics:", 1) >= 1,
        "{}",
        gw.log_text()
    );

    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = Defrost::start(&config(&format!("http://{closed}/analytics")));
    for _ in 0..50 {
        assert_eq!(get(&gw.url("/function/echo")).status, 200);
    }
}
