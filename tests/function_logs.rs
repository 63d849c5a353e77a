//! A user runs `faas-cli logs` against defrost: `/system/logs` shows what the process replicas
//! printed, in the faas-provider format, and `follow` streams new lines without holding up
//! function calls or shutdown. With a remote provider, the request goes to the provider.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

fn gateway() -> Defrost {
    Defrost::start(&format!(
        "[gateway]\nready_timeout = \"20s\"\nshutdown_grace = \"30s\"\n{}",
        echo_function("echo", "", "")
    ))
}

fn messages(body: &str) -> Vec<serde_json::Value> {
    body.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

fn texts(messages: &[serde_json::Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Logs of `name` once they hold `text` (output reaches the ring a moment after the answer).
fn logs_with(gw: &Defrost, query: &str, text: &str) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = get(&gw.url(&format!("/system/logs?{query}")));
        assert_eq!(reply.status, 200, "{}", reply.body);
        let found = messages(&reply.body);
        if texts(&found).iter().any(|t| t == text) || Instant::now() > deadline {
            return found;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Opens a follow and hands each line it receives to the returned channel; the channel
/// closes when the stream ends.
fn follow(gw: &Defrost, query: &str) -> mpsc::Receiver<String> {
    let url = gw.url(&format!("/system/logs?{query}&follow=true"));
    let response = agent().get(&url).call().expect("follow opens");
    assert_eq!(response.status(), 200);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let reader = BufReader::new(response.into_body().into_reader());
        for line in reader.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The next non-blank line of a follow, within `limit`.
fn next_message(rx: &mpsc::Receiver<String>, limit: Duration) -> Option<serde_json::Value> {
    let deadline = Instant::now() + limit;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if line.trim().is_empty() => continue,
            Ok(line) => return Some(serde_json::from_str(&line).unwrap()),
            Err(_) => return None,
        }
    }
    None
}

#[test]
fn a_user_reads_what_the_replicas_printed() {
    let gw = gateway();
    for word in ["first", "second"] {
        assert_eq!(
            get(&gw.url(&format!("/function/echo/say/{word}"))).status,
            200
        );
    }
    let all = logs_with(&gw, "name=echo", "oops second");
    let seen = texts(&all);
    for text in ["first", "oops first", "second", "oops second"] {
        assert!(
            seen.contains(&text.to_string()),
            "{text} missing in {seen:?}"
        );
    }
    let one = &all[0];
    assert_eq!(one["name"], "echo");
    assert_eq!(one["namespace"], "default");
    assert_eq!(one["instance"], "echo.default#1");
    let stamp = one["timestamp"].as_str().unwrap();
    assert!(stamp.len() > 20 && stamp.ends_with('Z'), "{stamp}");

    let tail = messages(&get(&gw.url("/system/logs?name=echo&namespace=default&tail=1")).body);
    assert_eq!(texts(&tail).len(), 1);
    let later = messages(&get(&gw.url("/system/logs?name=echo&since=2999-01-01T00:00:00Z")).body);
    assert!(later.is_empty(), "{later:?}");
    let other = messages(&get(&gw.url("/system/logs?name=echo&instance=echo.default%232")).body);
    assert!(other.is_empty(), "{other:?}");

    assert_eq!(get(&gw.url("/system/logs?name=ghost")).status, 404);
    let missing = get(&gw.url("/system/logs"));
    assert_eq!(missing.status, 400);
    assert!(missing.body.contains("name"), "{}", missing.body);
    assert_eq!(
        get(&gw.url("/system/logs?name=echo&since=yesterday")).status,
        400
    );
}

#[test]
fn followers_get_new_lines_without_starving_calls_and_end_at_shutdown() {
    let mut gw = gateway();
    assert_eq!(get(&gw.url("/function/echo/say/warm")).status, 200);
    logs_with(&gw, "name=echo", "warm");
    logs_with(&gw, "name=echo", "oops warm");
    let followers: Vec<_> = (0..3).map(|_| follow(&gw, "name=echo&tail=1")).collect();
    for rx in &followers {
        let last = next_message(rx, Duration::from_secs(10)).expect("the backlog's last line");
        let text = last["text"].as_str().unwrap_or_default();
        assert!(text.ends_with("warm"), "{last}");
    }
    // Calls keep being answered while every follower holds a worker.
    for i in 0..10 {
        let reply = get(&gw.url(&format!("/function/echo/say/live-{i}")));
        assert_eq!(reply.status, 200);
    }
    for rx in &followers {
        let line = next_message(rx, Duration::from_secs(10)).expect("a new line while following");
        let text = line["text"].as_str().unwrap_or_default();
        assert!(text.ends_with("live-0"), "{line}");
    }
    let stopping = Instant::now();
    let status = gw.terminate().expect("defrost exits while followed");
    assert!(status.success(), "{status:?}");
    assert!(
        stopping.elapsed() < Duration::from_secs(15),
        "followers held shutdown for {:?} (grace is 30 s)",
        stopping.elapsed()
    );
    for rx in followers {
        let deadline = Instant::now() + Duration::from_secs(5);
        while rx.recv_timeout(Duration::from_millis(100)).is_ok() {
            assert!(Instant::now() < deadline, "the follow did not end");
        }
    }
}

#[test]
fn logs_are_asked_of_a_remote_provider() {
    let provider = gateway();
    let dir = TempDir::new("logs-env-gw");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_defrost"));
    cmd.arg("--listen").arg("127.0.0.1:0");
    let mut front = Defrost::spawn(
        cmd,
        &[
            ("functions_provider_url", &provider.url("/")),
            ("scale_from_zero", "true"),
            ("function_namespace", "default"),
        ],
        dir,
    );
    assert_eq!(get(&front.url("/function/echo/say/through")).status, 200);
    let seen = texts(&logs_with(&front, "name=echo&namespace=default", "through"));
    assert!(seen.contains(&"through".to_string()), "{seen:?}");
    assert_eq!(get(&front.url("/system/logs?name=ghost")).status, 404);

    // A follow relayed from the provider ends when the gateway in front stops.
    let relayed = follow(&front, "name=echo&tail=1");
    assert!(next_message(&relayed, Duration::from_secs(10)).is_some());
    let stopping = Instant::now();
    assert!(front.terminate().is_some_and(|s| s.success()));
    assert!(
        stopping.elapsed() < Duration::from_secs(15),
        "a relayed follow held shutdown for {:?} (grace is 30 s)",
        stopping.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while relayed.recv_timeout(Duration::from_millis(100)).is_ok() {
        assert!(Instant::now() < deadline, "the relayed follow did not end");
    }
}

#[test]
fn a_follower_that_goes_away_gives_its_place_back() {
    let gw = gateway();
    let started = Instant::now();
    let open = || {
        let mut conn = RawConn::open(gw.addr, Duration::from_secs(10));
        conn.send(b"GET /system/logs?name=echo&follow=true HTTP/1.1\r\nHost: defrost\r\n\r\n")
            .unwrap();
        let status = conn.response().unwrap().status;
        (conn, status)
    };
    // The README's bound: 32 follows at once.
    let held: Vec<_> = (0..32).map(|_| open()).collect();
    assert!(held.iter().all(|(_, status)| *status == 200));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "follows took {:?} to answer: their heads waited for a first line",
        started.elapsed()
    );
    assert_eq!(open().1, 429, "a 33rd follow was let in");
    // Calls are still answered while 32 workers follow.
    assert_eq!(get(&gw.url("/function/echo/say/busy")).status, 200);
    drop(held);
    // A client gone is noticed at the next heartbeats (every 2 s); its place is then free.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_conn, status) = open();
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "follows of closed connections kept their places"
        );
        thread::sleep(Duration::from_millis(200));
    }
}
