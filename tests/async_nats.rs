//! Asynchronous calls on NATS JetStream (`[queue] kind = "nats"`), against a real
//! `nats-server`: several gateways share one stream and one consumer, a call accepted by one
//! may run on another, retries go through the server (-NAK with a delay), a message in the
//! OpenFaaS shape runs as one from defrost, a server that is down gets 503 (never a 202 that
//! was not stored), and a gateway killed with calls in hand leaves them to the others.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::thread;
use std::time::Duration;

use common::nats_server::NatsServer;
use common::queued::*;
use common::*;
use defrost::internals::nats::openfaas::{QueueRequest, QUEUE};
use defrost::internals::nats::{Connection, JetStream, Options};

/// A gateway on the server's queue, its config in a folder of its own, running `rec`, which
/// records its calls in `shared/calls` (and waits for `shared/gate` when `gated`).
fn gateway(nats: &NatsServer, shared: &Path, gated: bool, queue: &str) -> (TempDir, Defrost) {
    let dir = TempDir::new("nats-gw");
    let config = format!(
        "[gateway]\nmax_connections = 256\n[queue]\nkind = \"nats\"\nurl = \"{}\"\n\
         retry_backoff = \"50ms\"\n{queue}\n{}",
        nats.url(),
        queued_function("rec", shared, gated, "")
    );
    let gw = start_in(&dir, &config);
    (dir, gw)
}

/// The distinct call ids `rec` has been called with.
fn ids(dir: &Path) -> BTreeSet<String> {
    calls(dir).into_iter().map(|(id, _)| id).collect()
}

#[test]
fn two_gateways_share_one_stream_and_every_accepted_call_reaches_the_function() {
    let store = TempDir::new("nats-store");
    let nats = NatsServer::start(&store);
    let shared = TempDir::new("nats-shared");
    let (_d1, one) = gateway(&nats, shared.path(), false, "");
    let (_d2, two) = gateway(&nats, shared.path(), false, "");
    let accepted: BTreeSet<String> = accept_all(&[&one, &two], 200, 4).into_iter().collect();
    assert_eq!(accepted.len(), 200, "every call has an id of its own");
    wait_for("all 200 calls to run", Duration::from_secs(60), || {
        ids(shared.path()).is_superset(&accepted)
    });

    // A call published as the OpenFaaS gateway publishes it runs as any other.
    let connection = Connection::connect(&nats.url(), &Options::default()).unwrap();
    let js = JetStream::new(connection, Duration::from_secs(10));
    let request = QueueRequest {
        header: [("X-Call-Id".to_owned(), vec!["from-openfaas".to_owned()])].into(),
        method: "POST".into(),
        path: "/from/openfaas".into(),
        query_string: "a=1".into(),
        function: "rec".into(),
        body: b"hello".to_vec(),
        ..QueueRequest::default()
    };
    let ack = js
        .publish(QUEUE, Some("from-openfaas"), &request.to_json())
        .unwrap();
    assert!(!ack.duplicate);
    wait_for(
        "the OpenFaaS message to run",
        Duration::from_secs(30),
        || {
            calls(shared.path())
                .contains(&("from-openfaas".to_owned(), "/from/openfaas?a=1".to_owned()))
        },
    );
    let queued = |gw: &Defrost| {
        gw.scrape_when(|_| true)
            .value("defrost_async_stream_messages")
    };
    wait_for("the stream to drain", Duration::from_secs(10), || {
        queued(&one) == Some(0.0)
    });
}

#[test]
fn retries_go_through_the_server_and_the_callback_carries_the_answer() {
    let store = TempDir::new("nats-store");
    let nats = NatsServer::start(&store);
    let shared = TempDir::new("nats-shared");
    let (_d, gw) = gateway(&nats, shared.path(), false, "max_attempts = 5");
    let (url, rx) = callback_receiver();
    let reply = post_async(&gw, "rec/fail-twice", &[("X-Callback-Url", &url)], "body");
    assert_eq!(reply.status, 202, "{}", reply.body);
    let call_id = reply.header("X-Call-Id").unwrap().to_owned();
    let got = callback(&rx);
    assert_eq!(got.headers["x-call-id"], call_id);
    assert_eq!(got.headers["x-function-status"], "200");
    let seconds: f64 = got.headers["x-duration-seconds"].parse().unwrap();
    assert!(seconds >= 0.0);
    assert_eq!(got.body, "ran /fail-twice\nbody");
    let attempts: Vec<_> = calls(shared.path());
    assert_eq!(attempts.len(), 3, "two 503s, then 200: {attempts:?}");
    assert!(attempts.iter().all(|(id, _)| *id == call_id));
    let series = |name: &str| format!("defrost_async_{name}{{function_name=\"rec.default\"}}");
    gw.scrape_when(|s| s.value(&series("completed_total")) == Some(1.0))
        .assert_values(&[(&series("retried_total"), 2.0)]);

    // Out of attempts: the last answer is final, and called back.
    let reply = post_async(&gw, "rec/status/502", &[("X-Callback-Url", &url)], "");
    let id = reply.header("X-Call-Id").unwrap().to_owned();
    assert_eq!(callback(&rx).headers["x-function-status"], "502");
    let tried = calls(shared.path())
        .iter()
        .filter(|(c, _)| *c == id)
        .count();
    assert_eq!(tried, 5);
}

#[test]
fn a_server_that_is_down_gets_503_and_accepting_resumes_when_it_is_back() {
    let store = TempDir::new("nats-store");
    let mut nats = NatsServer::start(&store);
    let shared = TempDir::new("nats-shared");
    // Its one worker is busy throughout (the function holds the first call): reconnecting
    // must not wait for a free worker.
    let (_d, gw) = gateway(&nats, shared.path(), true, "workers = 1");
    let before = post_async(&gw, "rec/before", &[], "");
    assert_eq!(before.status, 202);
    let before = before.header("X-Call-Id").unwrap().to_owned();
    wait_for("the first call to be held", Duration::from_secs(30), || {
        ids(shared.path()).contains(&before)
    });
    nats.kill();
    // The connection's loss is noticed at once (reset) or within two pings.
    wait_for(
        "a 503 while the server is down",
        Duration::from_secs(20),
        || {
            let reply = post_async(&gw, "rec/down", &[], "");
            assert_ne!(reply.status, 202, "nothing can be stored");
            reply.status == 503 && reply.header("Retry-After").is_some()
        },
    );
    let nats = NatsServer::start_on(&store, nats.port);
    let accepted = std::cell::RefCell::new(None);
    wait_for(
        "a 202 once the server is back",
        Duration::from_secs(30),
        || {
            let reply = post_async(&gw, "rec/after", &[], "");
            *accepted.borrow_mut() = reply.header("X-Call-Id").map(str::to_owned);
            reply.status == 202
        },
    );
    let id = accepted.into_inner().unwrap();
    std::fs::write(shared.path().join("gate"), "open").unwrap();
    wait_for(
        "the call accepted after the outage",
        Duration::from_secs(30),
        || ids(shared.path()).contains(&id),
    );
    drop(nats);
}

#[test]
fn calls_held_by_a_gateway_killed_with_sigkill_are_run_by_another() {
    let store = TempDir::new("nats-store");
    let nats = NatsServer::start(&store);
    let shared = TempDir::new("nats-shared");
    // The first gateway takes four calls and holds them (its function waits for a gate that
    // never opens); a short ack_wait lets the server hand them out again soon after it dies.
    let (_d1, mut one) = gateway(&nats, shared.path(), true, "workers = 4\nack_wait = \"2s\"");
    let accepted: BTreeSet<String> = accept_all(&[&one], 20, 4).into_iter().collect();
    wait_for("four calls to be held", Duration::from_secs(30), || {
        ids(shared.path()).len() == 4
    });
    unsafe_kill(one.child.id(), "KILL");
    let _ = wait_exit(&mut one.child, Duration::from_secs(10));
    let (_d2, _two) = gateway(&nats, shared.path(), false, "");
    wait_for(
        "the other gateway to run every call",
        Duration::from_secs(60),
        || ids(shared.path()).is_superset(&accepted),
    );
}

#[test]
fn a_full_stream_refuses_with_503_and_a_body_too_large_for_a_message_with_413() {
    let store = TempDir::new("nats-store");
    let nats = NatsServer::start(&store);
    let shared = TempDir::new("nats-shared");
    // The function holds every call: nothing leaves the stream.
    let (_d, gw) = gateway(&nats, shared.path(), true, "workers = 1\nmax_queued = 3");
    let statuses: Vec<u16> = (0..4)
        .map(|n| post_async(&gw, &format!("rec/{n}"), &[], "").status)
        .collect();
    assert_eq!(statuses, [202, 202, 202, 503]);
    let refused = post_async(&gw, "rec/more", &[], "");
    assert_eq!(refused.status, 503);
    assert!(refused.header("Retry-After").is_some());
    assert!(refused.body.contains("full"), "{}", refused.body);
    // The server's max_payload (1 MiB) bounds a message; the body in base64 must fit.
    let big = "x".repeat(900 << 10);
    assert_eq!(post_async(&gw, "rec/big", &[], &big).status, 413);
}

#[test]
fn a_call_running_past_ack_wait_is_kept_by_its_gateway_and_runs_once() {
    let store = TempDir::new("nats-store");
    let nats = NatsServer::start(&store);
    let shared = TempDir::new("nats-shared");
    // The first gateway's one worker runs the call, so it pulls no more while it runs.
    let (_d1, one) = gateway(&nats, shared.path(), true, "workers = 1\nack_wait = \"2s\"");
    let reply = post_async(&one, "rec/long", &[], "");
    assert_eq!(reply.status, 202, "{}", reply.body);
    let id = reply.header("X-Call-Id").unwrap().to_owned();
    wait_for("the call to start", Duration::from_secs(30), || {
        ids(shared.path()).contains(&id)
    });
    // A second gateway, whose function answers at once, waits for work: without the first
    // one's in-progress reports, the server would hand it the call after ack_wait.
    let (_d2, _two) = gateway(&nats, shared.path(), false, "ack_wait = \"2s\"");
    thread::sleep(Duration::from_secs(6));
    assert_eq!(calls(shared.path()).len(), 1, "{:?}", calls(shared.path()));
    std::fs::write(shared.path().join("gate"), "open").unwrap();
    let series = "defrost_async_completed_total{function_name=\"rec.default\"}";
    one.scrape_when(|s| s.value(series) == Some(1.0));
}
