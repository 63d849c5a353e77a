//! Asynchronous calls (`/async-function/{name}`): answered 202 once stored, never lost, even
//! to SIGKILL; run through the normal call path; retried on 429/502/503/504; answered to a
//! callback URL with the OpenFaaS queue-worker's headers; bounded.

mod common;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::time::Duration;

use common::queued::*;
use common::*;

#[test]
fn a_thousand_accepted_calls_survive_sigkill_and_all_run_after_a_restart() {
    let dir = TempDir::new("async-kill");
    let config = format!(
        "[gateway]\nmax_connections = 256\n[queue]\npath = \"{}\"\n{}",
        dir.path().join("queue.redb").display(),
        queued_function("rec", dir.path(), true, "async_concurrency = 2")
    );
    let mut gw = start_in(&dir, &config);
    // Sixteen clients post a thousand calls; the function holds every call it gets until the
    // gate opens, so at most two can have started when defrost is killed.
    let accepted = accept_all(&[&gw], 1000, 16);
    unsafe_kill(gw.child.id(), "KILL");
    assert!(wait_exit(&mut gw.child, Duration::from_secs(10)).is_some());
    let unique: BTreeSet<&String> = accepted.iter().collect();
    assert_eq!(unique.len(), 1000, "call ids are unique");
    let started_before = calls(dir.path()).len();
    assert!(
        started_before <= 2,
        "{started_before} calls ran past the gate"
    );

    std::fs::write(dir.path().join("gate"), "open").unwrap();
    let gw = start_in(&dir, &config);
    assert_eq!(
        gw.log_count_settled("1000 calls left from the last run", 1),
        1
    );
    wait_for(
        "every accepted call to run",
        Duration::from_secs(120),
        || {
            let ran: BTreeSet<String> = calls(dir.path()).into_iter().map(|(id, _)| id).collect();
            unique.iter().all(|id| ran.contains(*id))
        },
    );
    // Each ran once, but for those killed mid-call, which may run twice.
    let runs = calls(dir.path());
    assert!(runs.len() <= 1000 + started_before, "{} runs", runs.len());
    let paths: BTreeSet<String> = runs.into_iter().map(|(_, path)| path).collect();
    assert_eq!(
        paths.len(),
        1000,
        "every call's own path reached the function"
    );
    let scrape = gw.scrape_when(|s| {
        s.value("defrost_async_completed_total{function_name=\"rec.default\"}")
            >= Some(1000.0 - started_before as f64)
    });
    assert_eq!(
        scrape.get("defrost_async_queued{function_name=\"rec.default\"}"),
        0.0
    );
}

#[test]
fn callbacks_carry_the_answer_with_the_queue_workers_headers() {
    let dir = TempDir::new("async-callback");
    let (url, rx) = callback_receiver();
    let gw = start_in(
        &dir,
        &queued_function("cb", dir.path(), false, "async_concurrency = 1"),
    );
    let reply = post_async(
        &gw,
        "cb/hello?x=1",
        &[("X-Callback-Url", &url), ("Content-Type", "text/plain")],
        "the body",
    );
    assert_eq!(reply.status, 202, "{}", reply.body);
    let call_id = reply.header("X-Call-Id").unwrap().to_owned();
    let got = callback(&rx);
    assert_eq!(got.headers["x-call-id"], call_id);
    assert_eq!(got.headers["x-function-status"], "200");
    assert_eq!(got.headers["x-function-name"], "cb.default");
    assert_eq!(got.headers["content-type"], "text/plain");
    let seconds: f64 = got.headers["x-duration-seconds"].parse().unwrap();
    assert!(seconds >= 0.0);
    assert_eq!(got.body, "ran /hello?x=1\nthe body");
    assert_eq!(calls(dir.path()), vec![(call_id, "/hello?x=1".to_owned())]);

    // A final failure is called back too, after one attempt: 404 is not retried.
    let reply = post_async(&gw, "cb/status/404", &[("X-Callback-Url", &url)], "");
    assert_eq!(reply.status, 202);
    let got = callback(&rx);
    assert_eq!(got.headers["x-function-status"], "404");
    assert_eq!(got.body, "as asked\n");
    let failing = reply.header("X-Call-Id").unwrap();
    assert_eq!(
        calls(dir.path())
            .iter()
            .filter(|(id, _)| id == failing)
            .count(),
        1
    );
    assert_counts(&gw, "cb", [1.0, 1.0, 0.0, 0.0]);
}

#[test]
fn a_function_that_fails_twice_is_retried_until_it_answers() {
    let dir = TempDir::new("async-retry");
    let (url, rx) = callback_receiver();
    let gw = start_in(
        &dir,
        &format!(
            "[queue]\nretry_backoff = \"50ms\"\nmax_attempts = 5\n{}",
            queued_function("flaky", dir.path(), false, "")
        ),
    );
    let reply = post_async(&gw, "flaky/fail-twice", &[("X-Callback-Url", &url)], "");
    assert_eq!(reply.status, 202);
    let call_id = reply.header("X-Call-Id").unwrap().to_owned();
    let got = callback(&rx);
    assert_eq!(got.headers["x-function-status"], "200");
    assert_eq!(got.headers["x-call-id"], call_id);
    let attempts = calls(dir.path());
    assert_eq!(attempts.len(), 3, "{attempts:?}");
    assert!(attempts.iter().all(|(id, _)| *id == call_id));
    assert_counts(&gw, "flaky", [1.0, 0.0, 2.0, 0.0]);

    // Out of attempts: a call failing every time is given up after max_attempts.
    let reply = post_async(&gw, "flaky/status/502", &[("X-Callback-Url", &url)], "");
    let got = callback(&rx);
    assert_eq!(got.headers["x-function-status"], "502");
    let id = reply.header("X-Call-Id").unwrap();
    assert_eq!(calls(dir.path()).iter().filter(|(c, _)| c == id).count(), 5);
}

#[test]
fn a_full_queue_answers_503_with_retry_after_and_bad_calls_are_refused_at_once() {
    let dir = TempDir::new("async-bounds");
    let gw = start_in(
        &dir,
        &format!(
            "[gateway]\nmax_body_bytes = 1024\n[queue]\nmax_queued = 5\nmax_queued_per_function = 3\n{}{}",
            queued_function("a", dir.path(), true, ""),
            queued_function("b", dir.path(), true, "")
        ),
    );
    for _ in 0..3 {
        assert_eq!(post_async(&gw, "a", &[], "x").status, 202);
    }
    let full = post_async(&gw, "a", &[], "x");
    assert_eq!(full.status, 503, "{}", full.body);
    assert_eq!(full.header("Retry-After"), Some("5"));
    assert!(
        full.body.contains("a.default has 3 calls queued"),
        "{}",
        full.body
    );
    for _ in 0..2 {
        assert_eq!(post_async(&gw, "b", &[], "x").status, 202);
    }
    let full = post_async(&gw, "b", &[], "x");
    assert_eq!(full.status, 503, "{}", full.body);
    assert!(
        full.body.contains("queue is full (5 calls)"),
        "{}",
        full.body
    );

    assert_eq!(post_async(&gw, "a", &[], &"x".repeat(2000)).status, 413);
    assert_eq!(post_async(&gw, "nobody", &[], "x").status, 404);
    let bad = post_async(&gw, "a", &[("X-Callback-Url", "ftp://x/y")], "x");
    assert_eq!(bad.status, 400, "{}", bad.body);

    // Each function runs one call (held at the gate) and has the rest queued.
    let scrape = gw.scrape_when(|s| {
        s.value("defrost_async_running{function_name=\"b.default\"}") == Some(1.0)
            && s.value("defrost_async_running{function_name=\"a.default\"}") == Some(1.0)
    });
    scrape.assert_values(&[
        ("defrost_async_queued{function_name=\"a.default\"}", 2.0),
        ("defrost_async_running{function_name=\"a.default\"}", 1.0),
        ("defrost_async_queued{function_name=\"b.default\"}", 1.0),
    ]);
    let page = get(&gw.url("/"));
    assert!(
        page.body.contains(
            "<tr data-function=\"a.default\"><td>a.default</td><td class=\"queued\">2</td>"
        ),
        "{}",
        page.body
    );
    // Opening the gate drains the queue, and there is room again.
    std::fs::write(dir.path().join("gate"), "open").unwrap();
    wait_for("the queue to drain", Duration::from_secs(30), || {
        calls(dir.path()).len() == 5
    });
    gw.scrape_when(|s| {
        s.value("defrost_async_completed_total{function_name=\"a.default\"}") == Some(3.0)
    });
    assert_eq!(post_async(&gw, "a", &[], "x").status, 202);
}

#[test]
fn sigterm_leaves_queued_calls_for_the_next_start() {
    let dir = TempDir::new("async-term");
    let config = format!(
        "[gateway]\nshutdown_grace = \"1s\"\n{}",
        queued_function("later", dir.path(), true, "")
    );
    let mut gw = start_in(&dir, &config);
    let ids: Vec<String> = (0..3)
        .map(|n| {
            let reply = post_async(&gw, &format!("later/{n}"), &[], "");
            assert_eq!(reply.status, 202);
            reply.header("X-Call-Id").unwrap().to_owned()
        })
        .collect();
    // The first call is running (held at the gate) when the gateway is told to stop.
    wait_for("the first call to start", Duration::from_secs(30), || {
        calls(dir.path()).len() == 1
    });
    unsafe_kill(gw.child.id(), "TERM");
    let status = wait_exit(&mut gw.child, Duration::from_secs(20)).expect("defrost stopped");
    assert!(status.success(), "{status:?}: {}", gw.log_text());
    assert_eq!(
        calls(dir.path()).len(),
        1,
        "no call was started while stopping"
    );

    std::fs::write(dir.path().join("gate"), "open").unwrap();
    let gw = start_in(&dir, &config);
    assert_eq!(gw.log_count_settled("3 calls left from the last run", 1), 1);
    wait_for("the three calls to run", Duration::from_secs(30), || {
        let ran: BTreeSet<String> = calls(dir.path()).into_iter().map(|(id, _)| id).collect();
        ids.iter().all(|id| ran.contains(id))
    });
}

#[test]
fn calls_to_one_function_run_in_the_order_they_were_accepted() {
    let dir = TempDir::new("async-order");
    let gw = start_in(&dir, &queued_function("ordered", dir.path(), true, ""));
    for n in 0..8 {
        assert_eq!(
            post_async(&gw, &format!("ordered/{n}"), &[], "").status,
            202
        );
    }
    std::fs::write(dir.path().join("gate"), "open").unwrap();
    wait_for("the eight calls to run", Duration::from_secs(30), || {
        calls(dir.path()).len() == 8
    });
    let order: Vec<String> = calls(dir.path()).into_iter().map(|(_, p)| p).collect();
    let expected: Vec<String> = (0..8).map(|n| format!("/{n}")).collect();
    assert_eq!(order, expected);
}

#[test]
fn a_callback_that_cannot_be_delivered_is_tried_a_bounded_number_of_times_and_logged() {
    let dir = TempDir::new("async-callback-down");
    // A port that was just free: nothing listens there.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/done", closed.local_addr().unwrap());
    drop(closed);
    let gw = start_in(
        &dir,
        &format!(
            "[queue]\ncallback_attempts = 2\nretry_backoff = \"50ms\"\n{}",
            queued_function("lonely", dir.path(), false, "")
        ),
    );
    let reply = post_async(&gw, "lonely", &[("X-Callback-Url", &url)], "");
    assert_eq!(reply.status, 202);
    let failures = "defrost_async_callback_failures_total{function_name=\"lonely.default\"}";
    gw.scrape_when(|s| s.value(failures) == Some(1.0))
        .assert_values(&[
            (failures, 1.0),
            (
                "defrost_async_completed_total{function_name=\"lonely.default\"}",
                1.0,
            ),
        ]);
    assert_eq!(gw.log_count_settled("(attempt 2 of 2)", 1), 1);
    let id = reply.header("X-Call-Id").unwrap();
    for attempt in ["attempt 1 of 2", "attempt 2 of 2"] {
        let line = format!("callback for call {id} of lonely.default");
        assert!(
            gw.log_text()
                .lines()
                .any(|l| l.contains(&line) && l.contains(attempt)),
            "{attempt}: {}",
            gw.log_text()
        );
    }
    assert_eq!(calls(dir.path()).len(), 1, "the call itself ran once");
}

#[test]
fn a_gateway_that_queues_nothing_leaves_no_store_and_a_second_one_can_start() {
    let dir = TempDir::new("async-lazy");
    let store = dir.path().join("defrost.queue.redb");
    let config = queued_function("lazy", dir.path(), false, "");
    let first = start_in(&dir, &config);
    let reply = get(&first.url("/function/lazy/sync"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(!store.exists(), "no async call, no store file");
    assert_eq!(async_workers(&first), 0, "no async call, no worker threads");
    // The second gateway on the same config starts: no file is locked until a call is queued.
    let second = start_in(&dir, &config);
    assert_eq!(get(&second.url("/function/lazy/sync")).status, 200);
    let reply = post_async(&first, "lazy/queued", &[], "");
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert!(store.exists(), "the first queued call makes the store");
    assert!(
        async_workers(&first) > 0,
        "the first queued call starts the workers"
    );
    let id = reply.header("X-Call-Id").unwrap().to_owned();
    wait_for("the queued call", Duration::from_secs(30), || {
        calls(dir.path()).iter().any(|(c, _)| *c == id)
    });
    // The second cannot take the file the first holds: it refuses honestly.
    let refused = post_async(&second, "lazy/queued", &[], "");
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(refused.header("Retry-After").is_some());
}

/// The gateway's threads that run queued calls (named `async-N`).
fn async_workers(gw: &Defrost) -> usize {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", gw.child.id())).unwrap();
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("async-"))
        .count()
}
