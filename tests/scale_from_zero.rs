//! A user calls functions that are not running; defrost starts them and answers.

mod common;

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

fn echo_config(extra: &str) -> String {
    let function = echo_function("echo", r#"STARTS_FILE = "$DIR/starts""#, extra);
    format!("[gateway]\nready_timeout = \"20s\"\n{function}")
}

#[test]
fn first_call_to_a_cold_function_starts_exactly_one_replica() {
    let gw = Defrost::start(&echo_config(""));
    let starts = gw.dir.path().join("starts");
    assert_eq!(lines_in(&starts), 0, "nothing runs before the first call");

    let reply = get(&gw.url("/function/echo/hello"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["path"], "/hello");
    assert_eq!(lines_in(&starts), 1);
    assert_eq!(
        gw.log_count_settled("cold start echo.default", 1),
        1,
        "{}",
        gw.log_text()
    );

    let again = get(&gw.url("/function/echo.default/hello"));
    assert_eq!(again.status, 200);
    assert_eq!(
        again.json()["pid"],
        reply.json()["pid"],
        "warm call reuses the replica"
    );
    assert_eq!(lines_in(&starts), 1);
}

#[test]
fn two_hundred_concurrent_cold_calls_share_one_scale_call() {
    let gw = Arc::new(Defrost::start(&echo_config("")));
    let handles: Vec<_> = (0..200)
        .map(|i| {
            let url = gw.url(&format!("/function/echo/call/{i}"));
            thread::spawn(move || get(&url))
        })
        .collect();
    let replies: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = replies.iter().filter(|r| r.status == 200).count();
    assert_eq!(
        ok,
        200,
        "statuses: {:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(
        lines_in(&gw.dir.path().join("starts")),
        1,
        "replicas started"
    );
    assert_eq!(
        gw.log_count_settled("scale echo.default: 0 -> 1", 1),
        1,
        "{}",
        gw.log_text()
    );
}

#[test]
fn min_replicas_are_started_on_a_cold_call() {
    let gw = Defrost::start(&echo_config("min_replicas = 2\nmax_replicas = 4"));
    assert_eq!(get(&gw.url("/function/echo")).status, 200);
    let starts = gw.dir.path().join("starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while lines_in(&starts) < 2 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(lines_in(&starts), 2);
    assert_eq!(
        gw.log_count_settled("scale echo.default: 0 -> 2", 1),
        1,
        "{}",
        gw.log_text()
    );
}

#[test]
fn a_function_that_never_becomes_ready_gets_a_504_within_the_bound() {
    let sloth = echo_function("sloth", r#"READY_DELAY_MS = "600000""#, "");
    let config = format!("[gateway]\nready_timeout = \"1s\"\n{sloth}");
    let gw = Defrost::start(&config);
    let started = Instant::now();
    let reply = get(&gw.url("/function/sloth"));
    let took = started.elapsed();
    assert_eq!(reply.status, 504, "{}", reply.body);
    assert!(reply.body.contains("sloth.default"), "{}", reply.body);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[test]
fn a_crashed_function_is_restarted_by_the_next_request() {
    let gw = Defrost::start(&echo_config(""));
    let first = get(&gw.url("/function/echo"));
    assert_eq!(first.status, 200);
    // A POST, never sent twice: a GET that finds its kept-alive connection closed unanswered
    // is sent once more, and would crash the replacement too.
    let crash = post_empty(&gw.url("/function/echo/crash"));
    assert_eq!(crash.status, 502, "{}", crash.body);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut next = get(&gw.url("/function/echo"));
    while next.status != 200 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        next = get(&gw.url("/function/echo"));
    }
    assert_eq!(next.status, 200, "{}", next.body);
    assert_ne!(
        next.json()["pid"],
        first.json()["pid"],
        "a new replica answered"
    );
    assert_eq!(lines_in(&gw.dir.path().join("starts")), 2);
}

#[test]
fn sigterm_leaves_no_child_process_behind() {
    let mut gw = Defrost::start(&echo_config("min_replicas = 2\nmax_replicas = 2"));
    assert_eq!(get(&gw.url("/function/echo")).status, 200);
    let starts = gw.dir.path().join("starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while lines_in(&starts) < 2 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let pid = gw.child.id();
    let pids: Vec<u32> = std::fs::read_to_string(gw.dir.path().join("starts"))
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|p| alive(*p)));
    let status = gw.terminate().expect("defrost exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    for p in pids {
        assert!(!alive(p), "replica {p} outlived defrost");
    }
    assert!(children_of(pid).is_empty());
}

#[test]
fn a_function_that_dies_on_start_gets_a_502_not_a_long_wait() {
    let config = r#"
[gateway]
ready_timeout = "30s"

[[function]]
name = "doomed"
command = ["python3", "-c", "import sys; print('bad config'); sys.exit(1)"]

[[function]]
name = "missing"
command = ["/nonexistent/program"]
"#;
    let gw = Defrost::start(config);
    // The 502 tells what happened to the last start.
    let why = [
        ("doomed", "exited before it was ready (exit status: 1)"),
        ("missing", "cannot start `/nonexistent/program`"),
    ];
    for (name, what) in why {
        let started = Instant::now();
        let reply = get(&gw.url(&format!("/function/{name}")));
        assert_eq!(reply.status, 502, "{name}: {}", reply.body);
        assert!(
            reply.body.contains("no replica became ready") && reply.body.contains(what),
            "{}",
            reply.body
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{name}: {:?}",
            started.elapsed()
        );
    }
    assert!(
        gw.log_count_settled("bad config", 1) >= 1,
        "the replica's output is logged"
    );
}
