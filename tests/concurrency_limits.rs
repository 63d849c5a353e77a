//! An operator runs a function that can only answer one request at a time, and tells defrost
//! so with `max_concurrency`: calls beyond it wait their turn in the gateway, in order, and a
//! backlog scales the function up. Behind a remote provider, which balances its replicas
//! itself, the limit holds for the function as a whole.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::Duration;

use common::*;

const SINGLE: &str = "function_name=\"single.default\"";

/// The single-threaded test function as `single`, with `extra` keys on its entry.
fn single_function(extra: &str) -> String {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/functions/single.py")
        .display()
        .to_string();
    format!(
        "\n[[function]]\nname = \"single\"\ncommand = [\"python3\", \"{script}\"]\n\
         env = {{ REQUESTS_FILE = \"$DIR/requests\", OVERLAP_FILE = \"$DIR/overlaps\", \
         RELEASE_FILE = \"$DIR/release\" }}\nreadiness_path = \"/healthz\"\n{extra}\n"
    )
}

/// A gateway with `[gateway]` settings `gateway` serving `single` limited to one call at once.
fn limited(gateway: &str, extra: &str) -> Defrost {
    let entry = single_function(&format!("max_concurrency = 1\n{extra}"));
    Defrost::start(&format!("[gateway]\n{gateway}\n{entry}"))
}

fn file(gw: &Defrost, name: &str) -> PathBuf {
    gw.dir.path().join(name)
}

/// The call ids the function received, in the order it received them.
fn received(gw: &Defrost) -> Vec<String> {
    std::fs::read_to_string(file(gw, "requests"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn overlaps(gw: &Defrost) -> String {
    std::fs::read_to_string(file(gw, "overlaps")).unwrap_or_default()
}

/// Lets every held call answer.
fn release(gw: &Defrost) {
    std::fs::write(file(gw, "release"), b"").unwrap();
}

/// Calls `path` on another thread; the reply comes back through the handle.
fn call_in_background(gw: &Defrost, path: &str) -> thread::JoinHandle<Reply> {
    let url = gw.url(path);
    thread::spawn(move || get(&url))
}

/// Waits for the gateway to report `n` calls to `single` queued for a slot.
fn wait_queued(gw: &Defrost, n: f64) {
    let series = format!("defrost_function_queued_for_slot{{{SINGLE}}}");
    let scrape = gw.scrape_when(|s| s.value(&series) == Some(n));
    assert_eq!(scrape.value(&series), Some(n), "{}", scrape.0);
}

/// Starts a call that keeps the replica busy, then `n` calls, each once the one before it is in
/// line, so that their order is known.
fn hold_and_queue(
    gw: &Defrost,
    n: u32,
) -> (thread::JoinHandle<Reply>, Vec<thread::JoinHandle<Reply>>) {
    let held = call_in_background(gw, "/function/single/hold/first");
    wait_received(gw, "first");
    let waiting = (0..n)
        .map(|i| {
            let call = call_in_background(gw, &format!("/function/single/call/{i}"));
            wait_queued(gw, f64::from(i + 1));
            call
        })
        .collect();
    (held, waiting)
}

/// Waits for the function to have received the call `id`.
fn wait_received(gw: &Defrost, id: &str) {
    assert!(
        eventually(Duration::from_secs(20), || received(gw)
            .iter()
            .any(|r| r == id)),
        "call {id} never arrived; got {:?}\n{}",
        received(gw),
        gw.log_text()
    );
}

#[test]
fn a_hundred_concurrent_calls_to_a_single_threaded_function_are_all_answered_one_at_a_time() {
    let gw = limited("ready_timeout = \"60s\"", "max_replicas = 1");
    let calls: Vec<_> = (0..100)
        .map(|i| call_in_background(&gw, &format!("/function/single/call/{i}")))
        .collect();
    let replies: Vec<Reply> = calls.into_iter().map(|c| c.join().unwrap()).collect();
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(reply.status, 200, "call {i}: {}", reply.body);
        assert_eq!(reply.body, i.to_string());
        assert_eq!(reply.header("X-Overlap"), Some("no"), "call {i} overlapped");
    }
    assert_eq!(overlaps(&gw), "", "calls overlapped on the replica");
    let mut got = received(&gw);
    got.sort_by_key(|id| id.parse::<u32>().unwrap());
    assert_eq!(got, (0..100).map(|i| i.to_string()).collect::<Vec<_>>());
    // None is left counted anywhere once all are answered.
    let series = format!("defrost_function_queued_for_slot{{{SINGLE}}}");
    let settled = gw
        .scrape_when(|s| s.value(&format!("defrost_function_in_flight{{{SINGLE}}}")) == Some(0.0));
    settled.assert_values(&[
        (&series, 0.0),
        (&format!("defrost_function_waiting{{{SINGLE}}}"), 0.0),
    ]);
}

#[test]
fn calls_waiting_for_the_busy_replica_are_answered_in_the_order_they_came() {
    let gw = limited("ready_timeout = \"60s\"", "max_replicas = 1");
    let (held, waiting) = hold_and_queue(&gw, 8);
    assert_eq!(
        received(&gw),
        ["first"],
        "a call went past the busy replica"
    );
    release(&gw);
    assert_eq!(held.join().unwrap().status, 200);
    for call in waiting {
        assert_eq!(call.join().unwrap().status, 200);
    }
    let order: Vec<String> = ["first".to_owned()]
        .into_iter()
        .chain((0..8).map(|i| i.to_string()))
        .collect();
    assert_eq!(received(&gw), order, "not first come, first served");
    assert_eq!(overlaps(&gw), "");
}

#[test]
fn past_the_waiter_limit_a_call_is_turned_away_with_retry_after_and_the_rest_served() {
    let gw = limited(
        "ready_timeout = \"60s\"\nmax_waiters_per_function = 2",
        "max_replicas = 1",
    );
    let (held, waiting) = hold_and_queue(&gw, 2);
    let refused = get(&gw.url("/function/single/call/refused"));
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.header("Retry-After"), Some("1"));
    assert!(refused.body.contains("single.default"), "{}", refused.body);
    release(&gw);
    assert_eq!(held.join().unwrap().status, 200);
    for call in waiting {
        assert_eq!(call.join().unwrap().status, 200);
    }
    assert!(!received(&gw).contains(&"refused".to_owned()));
}

#[test]
fn a_call_that_gets_no_slot_within_the_ready_timeout_is_a_504_saying_why() {
    let gw = limited("ready_timeout = \"1s\"", "max_replicas = 1");
    // The replica goes on starting after a cold call's 504: on a loaded machine a start can
    // take longer than this short timeout.
    let warm = || get(&gw.url("/function/single/call/warm")).status == 200;
    assert!(
        eventually(Duration::from_secs(20), warm),
        "{}",
        gw.log_text()
    );
    let held = call_in_background(&gw, "/function/single/hold/first");
    wait_received(&gw, "first");
    let late = get(&gw.url("/function/single/call/late"));
    assert_eq!(late.status, 504, "{}", late.body);
    assert!(late.body.contains("max_concurrency"), "{}", late.body);
    release(&gw);
    assert_eq!(held.join().unwrap().status, 200);
    assert!(
        !received(&gw).contains(&"late".to_owned()),
        "the timed-out call was still sent"
    );
    // The line is empty again: the next call goes straight through.
    assert_eq!(get(&gw.url("/function/single/call/next")).status, 200);
}

#[test]
fn a_backlog_scales_a_capacity_function_up_and_the_new_replica_takes_its_share() {
    let gw = limited(
        "ready_timeout = \"60s\"\nautoscale_interval = \"50ms\"",
        "max_replicas = 2\nlabels = { \"com.openfaas.scale.type\" = \"capacity\" }",
    );
    let held = call_in_background(&gw, "/function/single/hold/first");
    wait_received(&gw, "first");
    // The first replica stays busy until released: the second call can only be answered by
    // the replica its wait brings.
    let second = get(&gw.url("/function/single/call/second"));
    assert_eq!(second.status, 200, "{}", second.body);
    assert_eq!(second.header("X-Overlap"), Some("no"));
    assert!(
        gw.log_count_settled("capacity scaling 1 -> 2", 1) >= 1,
        "{}",
        gw.log_text()
    );
    release(&gw);
    assert_eq!(held.join().unwrap().status, 200);
    assert_eq!(overlaps(&gw), "");
}

#[test]
fn the_label_limits_a_function_as_the_config_key_does() {
    let entry =
        single_function("max_replicas = 1\nlabels = { \"com.defrost.max-concurrency\" = \"1\" }");
    let gw = Defrost::start(&format!("[gateway]\nready_timeout = \"60s\"\n{entry}"));
    let (held, waiting) = hold_and_queue(&gw, 1);
    let page = get(&gw.url("/"));
    assert!(
        page.body.contains("<td class=\"queued\">1</td>"),
        "the status page does not show the call in line:\n{}",
        page.body
    );
    release(&gw);
    assert_eq!(held.join().unwrap().status, 200);
    for call in waiting {
        assert_eq!(call.join().unwrap().status, 200);
    }
    assert_eq!(overlaps(&gw), "");
}

#[test]
fn behind_a_remote_provider_the_function_takes_the_limit_times_its_available_replicas() {
    let dir = TempDir::new("held");
    let (most, released) = (dir.path().join("most"), dir.path().join("release"));
    let provider = FakeProvider::start(&[
        ("REPLICAS", "2"),
        ("LABELS", r#"{"com.defrost.max-concurrency": "1"}"#),
        ("HELD_MOST", most.to_str().unwrap()),
        ("RELEASE_FILE", released.to_str().unwrap()),
    ]);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_defrost"));
    cmd.arg("--listen").arg("127.0.0.1:0");
    let url = provider.url();
    let gw = Defrost::spawn(
        cmd,
        &[("functions_provider_url", url.as_str())],
        TempDir::new("remote-gw"),
    );
    let calls: Vec<_> = (0..6)
        .map(|_| call_in_background(&gw, "/function/echo/hold"))
        .collect();
    let queued = "defrost_function_queued_for_slot{function_name=\"echo.openfaas-fn\"}";
    let scrape = gw.scrape_when(|s| s.value(queued) == Some(4.0));
    assert_eq!(scrape.value(queued), Some(4.0), "{}", scrape.0);
    std::fs::write(&released, b"").unwrap();
    for call in calls {
        assert_eq!(call.join().unwrap().status, 200);
    }
    let held_at_once = std::fs::read_to_string(&most).unwrap();
    assert_eq!(held_at_once.trim(), "2", "one call per available replica");
}

#[test]
fn calls_waiting_for_a_slot_never_starve_another_function() {
    let entry = single_function("max_concurrency = 1\nmax_replicas = 1");
    let echo = echo_function("echo", "", "");
    let gw = Defrost::start(&format!(
        "[gateway]\nready_timeout = \"60s\"\nworkers = 2\n{entry}{echo}"
    ));
    let (held, waiting) = hold_and_queue(&gw, 3);
    let more: Vec<_> = (0..20)
        .map(|i| call_in_background(&gw, &format!("/function/single/call/more-{i}")))
        .collect();
    wait_queued(&gw, 23.0);
    let other = get(&gw.url("/function/echo/while-they-wait"));
    assert_eq!(other.status, 200, "{}", other.body);
    assert_eq!(received(&gw), ["first"]);
    release(&gw);
    for call in std::iter::once(held).chain(waiting).chain(more) {
        assert_eq!(call.join().unwrap().status, 200);
    }
    assert_eq!(overlaps(&gw), "");
}
