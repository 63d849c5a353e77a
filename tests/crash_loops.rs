//! Functions that keep dying, against the real binary: their restarts back off across
//! requests, a request that cannot be served in time is told so at once and why, and a start
//! that fails for want of resources says what really failed.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// The reply, or `None` if the answer was broken off.
fn whole_reply(url: &str) -> Option<Reply> {
    let (parts, body) = agent().get(url).call().ok()?.into_parts();
    let mut text = String::new();
    body.into_reader().read_to_string(&mut text).ok()?;
    Some(Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: text,
    })
}

#[test]
fn a_function_that_dies_right_after_starting_is_restarted_with_a_back_off_not_per_request() {
    let gw = Defrost::start(&format!(
        "[gateway]\nready_timeout = \"1500ms\"\n{}",
        echo_function(
            "flaky",
            r#"STARTS_FILE = "$DIR/starts", EXIT_AFTER_MS = "300""#,
            ""
        )
    ));
    let began = Instant::now();
    let mut statuses = Vec::new();
    let mut refusals = Vec::new();
    while began.elapsed() < Duration::from_secs(6) && statuses.len() < 200 {
        let asked = Instant::now();
        // A replica that dies between writing its head and its body breaks the answer off;
        // that call is cut short, as the function's own death makes it.
        let Some(reply) = whole_reply(&gw.url("/function/flaky")) else {
            statuses.push(0);
            continue;
        };
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "a call was held {:?}",
            asked.elapsed()
        );
        if reply.status == 503 {
            refusals.push((reply.header("Retry-After").map(str::to_owned), reply.body));
        }
        statuses.push(reply.status);
        thread::sleep(Duration::from_millis(50));
    }
    let starts = lines_in(&gw.dir.path().join("starts"));
    // Without a back-off every request after a death starts a replica: some 15 in 6 s here.
    // With it (at once, then 1 s, 2 s, 4 s) no more than 5 starts fit in.
    assert!(
        starts <= 5,
        "{starts} starts for {} requests: {statuses:?}",
        statuses.len()
    );
    assert!(
        statuses.iter().all(|s| [0, 200, 502, 503, 504].contains(s)),
        "{statuses:?}"
    );
    let (retry_after, body) = refusals
        .first()
        .unwrap_or_else(|| panic!("no request was refused during the back-off: {statuses:?}"));
    let retry_after: u64 = retry_after
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("503 without a Retry-After: {body}"));
    assert!(
        (1..=30).contains(&retry_after),
        "Retry-After: {retry_after}"
    );
    assert!(
        body.contains("keep failing") && body.contains("exited unexpectedly (exit status: 4)"),
        "{body}"
    );
}

#[test]
fn a_crashed_replica_is_replaced_without_a_request_and_the_crash_loop_shows_on_metrics_and_status_page(
) {
    let mut gw = Defrost::start(&echo_function(
        "kept",
        r#"STARTS_FILE = "$DIR/starts""#,
        "min_replicas = 1",
    ));
    assert_eq!(get(&gw.url("/function/kept")).status, 200);
    // From here on nothing calls the function: only the management API and /metrics are asked.
    kill_the_replica(&gw);
    wait_replaced(&gw, 2);
    kill_the_replica(&gw);
    // Two failures soon after starting: a crash loop, the next start held back.
    let in_a_row = "defrost_function_failures_in_a_row{function_name=\"kept.default\"}";
    let held = "defrost_function_restart_held_seconds{function_name=\"kept.default\"}";
    let scrape = gw.scrape_when(|s| s.value(in_a_row) == Some(2.0));
    assert_eq!(scrape.value(in_a_row), Some(2.0), "{}", scrape.0);
    assert!(scrape.get(held) > 0.0, "{}", scrape.0);
    let page = get(&gw.url("/")).body;
    assert!(page.contains("2 in a row, next start in"), "{page}");
    assert!(page.contains("exited unexpectedly"), "{page}");
    wait_replaced(&gw, 3);
    let log = gw.log_text();
    assert_eq!(
        log.matches("replacing it to keep kept.default at 1 replicas")
            .count(),
        2,
        "{log}"
    );
    assert!(gw.terminate().is_some_and(|s| s.success()));
}

fn kill_the_replica(gw: &Defrost) {
    let [pid] = children_of(gw.child.id())[..] else {
        panic!("not one replica: {:?}", children_of(gw.child.id()));
    };
    unsafe_kill(pid, "KILL");
}

/// Waits (bounded) until the function has started `starts` times and has a ready replica.
fn wait_replaced(gw: &Defrost, starts: usize) {
    let file = gw.dir.path().join("starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    while lines_in(&file) < starts || !replica_ready(gw, "kept") {
        assert!(Instant::now() < deadline, "not replaced: {}", gw.log_text());
        thread::sleep(Duration::from_millis(20));
    }
}

fn replica_ready(gw: &Defrost, name: &str) -> bool {
    let reply = get(&gw.url(&format!("/system/function/{name}")));
    reply.status == 200 && reply.json()["availableReplicas"] == 1
}

#[test]
fn a_start_that_fails_for_lack_of_file_descriptors_says_so_in_the_502() {
    // A descriptor limit the idle gateway fits in, with a few to spare.
    let dir = TempDir::new("emfile");
    let config = dir.path().join("defrost.toml");
    std::fs::write(&config, echo_function("echo", "", "")).unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -n 32 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_defrost"))
        .arg("--config")
        .arg(&config)
        .arg("--listen")
        .arg("127.0.0.1:0");
    let gw = Defrost::spawn(cmd, &[], dir);

    // One connection for the request, then more until the gateway has no descriptor left.
    let mut client = TcpStream::connect(gw.addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let fillers: Vec<TcpStream> = (0..40)
        .filter_map(|_| TcpStream::connect(gw.addr).ok())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.log_count("Too many open files") == 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert!(gw.log_count("Too many open files") > 0, "{}", gw.log_text());

    client
        .write_all(b"GET /function/echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = client.read_to_string(&mut answer);
    drop(fillers);
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert!(answer.contains("Too many open files"), "{answer}");
}
