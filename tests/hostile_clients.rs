//! Clients that misbehave, on purpose or not, against the real binary: the gateway answers
//! them honestly, stays bounded, and keeps serving everyone else.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_huge_declared_body_gets_413_and_the_gateway_stays_up() {
    let gw = echo_gateway("");
    let answer = raw(
        gw.addr,
        b"POST /function/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 200000000000\r\n\r\nabc",
        Duration::from_secs(5),
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("larger than the limit"), "{answer}");
    assert_eq!(get(&gw.url("/healthz")).status, 200, "the gateway died");
    assert_eq!(get(&gw.url("/function/echo")).status, 200);
}

#[test]
fn oversized_heads_and_urls_are_refused() {
    let gw = echo_gateway("max_header_bytes = 4096\nmax_url_bytes = 1024");
    let big_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(8000)
    );
    let answer = raw(gw.addr, big_header.as_bytes(), Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    let long_url = format!(
        "GET /function/echo/{} HTTP/1.1\r\nHost: t\r\n\r\n",
        "a".repeat(2000)
    );
    let answer = raw(gw.addr, long_url.as_bytes(), Duration::from_secs(5));
    assert!(answer.starts_with("HTTP/1.1 414"), "{answer}");
    assert_eq!(get(&gw.url("/healthz")).status, 200);
}

#[test]
fn a_slowloris_client_is_cut_off() {
    let gw = echo_gateway("header_timeout = \"1s\"");
    let mut stream = TcpStream::connect(gw.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    for byte in b"GET /healthz HTTP/1.1\r\nHost: slow\r\n".iter() {
        if stream.write_all(&[*byte]).is_err() {
            break;
        }
        thread::sleep(Duration::from_millis(200));
        if started.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    assert_eq!(get(&gw.url("/healthz")).status, 200);
}

#[test]
fn a_flood_of_idle_connections_is_bounded() {
    let gw = echo_gateway("max_connections = 50");
    let pid = gw.child.id();
    let before = threads_of(pid);
    let mut idle: Vec<TcpStream> = (0..50)
        .map(|_| TcpStream::connect(gw.addr).unwrap())
        .collect();
    thread::sleep(Duration::from_millis(300));
    // Beyond the bound: answered at once, not queued.
    let mut refused = 0;
    for _ in 0..150 {
        let mut extra = TcpStream::connect(gw.addr).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut answer = String::new();
        let _ = extra.read_to_string(&mut answer);
        if answer.starts_with("HTTP/1.1 503") {
            refused += 1;
        }
    }
    let during = threads_of(pid);
    assert_eq!(refused, 150);
    assert!(
        during <= before + 50 + 5,
        "threads grew from {before} to {during}"
    );
    idle.clear();
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(&gw.url("/healthz")).status != 200 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(&gw.url("/healthz")).status, 200);
}

#[test]
fn running_out_of_file_descriptors_does_not_stop_the_gateway() {
    let dir = TempDir::new("fd");
    let config = dir.path().join("defrost.toml");
    std::fs::write(&config, "").unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!(
        "ulimit -n 48 && exec {} --config {} --listen 127.0.0.1:0",
        env!("CARGO_BIN_EXE_defrost"),
        config.display()
    ));
    let gw = Defrost::spawn(cmd, &[], dir);
    // More connections than descriptors: accept fails with EMFILE for some of them.
    let held: Vec<TcpStream> = (0..80)
        .filter_map(|_| TcpStream::connect(gw.addr).ok())
        .collect();
    thread::sleep(Duration::from_millis(500));
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut status = 0;
    while Instant::now() < deadline {
        if let Ok(response) = agent().get(&gw.url("/healthz")).call() {
            status = response.status().as_u16();
            if status == 200 {
                break;
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        gw.log_count_settled("Error accepting new client", 1) > 0,
        "no accept error was provoked"
    );
    assert_eq!(status, 200, "gateway stopped serving: {}", gw.log_text());
}

#[test]
fn large_known_length_responses_keep_their_length() {
    let gw = echo_gateway("");
    let answer = raw(
        gw.addr,
        b"GET /function/echo/bytes/1048576 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        Duration::from_secs(20),
    );
    let head = answer
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-length: 1048576"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
}

#[test]
fn a_crowd_waiting_for_a_cold_function_is_bounded_and_told_when_to_retry() {
    let gw = Defrost::start(&format!(
        "[gateway]\nmax_waiters_per_function = 4\nmax_waiters = 100\nready_timeout = \"60s\"\n{}",
        echo_function("slow", "READY_DELAY_MS = \"3000\"", "")
    ));
    let url = gw.url("/function/slow");
    let crowd: Vec<_> = (0..12)
        .map(|_| {
            let url = url.clone();
            thread::spawn(move || {
                let reply = get(&url);
                (reply.status, reply.header("Retry-After").map(str::to_owned))
            })
        })
        .collect();
    let replies: Vec<_> = crowd.into_iter().map(|h| h.join().unwrap()).collect();
    let shed: Vec<_> = replies.iter().filter(|(s, _)| *s == 503).collect();
    let served = replies.iter().filter(|(s, _)| *s == 200).count();
    assert!(!shed.is_empty(), "nobody was turned away: {replies:?}");
    assert!(served >= 1, "nobody was served: {replies:?}");
    assert_eq!(shed.len() + served, replies.len(), "{replies:?}");
    assert!(shed.iter().all(|(_, retry)| retry.is_some()), "{replies:?}");
    assert!(gw.log_count_settled("already waiting", 1) > 0);
}

#[test]
fn a_body_that_never_finishes_is_cut_off() {
    let gw = echo_gateway("read_timeout = \"1s\"");
    // A small body that stalls and a large one cut while streaming upstream: both are the
    // client's silence, 408.
    for (declared, sent, status) in [(100, 3, "408"), (10_000_000, 200_000, "408")] {
        let mut stream = TcpStream::connect(gw.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let head = format!(
            "POST /function/echo HTTP/1.1\r\nHost: t\r\nContent-Length: {declared}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&vec![b'b'; sent]).unwrap();
        let mut answer = String::new();
        let closed = stream.read_to_string(&mut answer).is_ok();
        assert!(closed, "the connection was held open: {answer}");
        assert_eq!(answer.get(9..12), Some(status), "{answer}");
    }
    assert_eq!(get(&gw.url("/function/echo")).status, 200);
}

/// Sends `parts`, closes the sending side, and reads whatever answer comes.
fn send_and_stop(gw: &Defrost, parts: &[&[u8]]) -> String {
    let mut stream = TcpStream::connect(gw.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    for part in parts {
        stream.write_all(part).unwrap();
    }
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

/// The gateway uses (almost) no CPU for a second: nothing is left spinning.
fn assert_idle(pid: u32) {
    let before = cpu_ticks(pid);
    thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(pid) - before;
    assert!(used < 50, "the gateway used {used} ticks of CPU while idle");
}

#[test]
fn an_upgrade_request_with_a_truncated_body_is_refused_and_never_run() {
    let mut gw = recording_gateway("read_timeout = \"5s\"");
    assert_eq!(get(&gw.url("/function/echo/warm")).status, 200);
    let pid = gw.child.id();

    // Declares 100 bytes, sends 10, then stops sending for good.
    let answer = send_and_stop(
        &gw,
        &[
            b"POST /function/echo/x HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\n\
              Upgrade: foo\r\nContent-Length: 100\r\n\r\n0123456789",
        ],
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    // Nothing left running for it: the gateway is idle, not spinning on a dead socket.
    assert_idle(pid);

    assert_eq!(get(&gw.url("/function/echo/after")).status, 200);
    assert_eq!(received(&gw), ["/warm", "/after"], "the truncated call ran");
    let asked = Instant::now();
    assert!(gw.terminate().is_some(), "SIGTERM did not stop the gateway");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
}

#[test]
fn an_upgrade_request_whose_streamed_body_is_cut_short_gets_400_and_nothing_spins() {
    let gw = echo_gateway("read_timeout = \"5s\"");
    assert_eq!(get(&gw.url("/function/echo/warm")).status, 200);
    let pid = gw.child.id();
    // Too large to be read before the call starts: streamed to the function, then cut.
    let head = b"POST /function/echo/x HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\n\
                 Upgrade: foo\r\nContent-Length: 100000\r\n\r\n";
    let answer = send_and_stop(&gw, &[head, &[b'b'; 5000]]);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    assert_idle(pid);
    assert_eq!(get(&gw.url("/function/echo/after")).status, 200);
}

#[test]
fn a_chunked_upgrade_request_body_reaches_the_function_decoded() {
    let gw = echo_gateway("");
    let answer = raw(
        gw.addr,
        b"POST /function/echo/x HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\
          Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        Duration::from_secs(10),
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    let head = answer.split("\r\n\r\n").next().unwrap_or("");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    let echoed: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(echoed["body_bytes"], 11, "{echoed}");
    assert_eq!(
        echoed["body_sha256"], "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9",
        "not the decoded \"hello world\": {echoed}"
    );
}

#[test]
fn a_bodyless_upgrade_request_is_answered_and_its_connection_closed() {
    let gw = echo_gateway("");
    let answer = raw(
        gw.addr,
        b"GET /function/echo/ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        Duration::from_secs(10),
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
}

/// The path the echo function says it was called with.
fn echoed_path(response: &RawResponse) -> String {
    let echoed: serde_json::Value = serde_json::from_slice(&response.body)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&response.body)));
    echoed["path"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn pipelined_requests_are_run_one_after_another_and_answered_in_order() {
    let gw = recording_gateway("");
    assert_eq!(get(&gw.url("/function/echo/warm")).status, 200);
    let mut conn = RawConn::open(gw.addr, Duration::from_secs(20));
    conn.send(
        b"GET /function/echo/sleep/1 HTTP/1.1\r\nHost: t\r\n\r\n\
          POST /function/echo/quick-post HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello\
          GET /function/echo/quick-get HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .unwrap();
    // Well within the slow call: the quick ones must not have been started beside it.
    thread::sleep(Duration::from_millis(600));
    let early = received(&gw);
    assert!(
        !early.iter().any(|p| p.starts_with("/quick")),
        "started while the first was running: {early:?}"
    );
    let order: Vec<String> = (0..3)
        .map(|_| echoed_path(&conn.response().unwrap()))
        .collect();
    assert_eq!(order, ["/sleep/1", "/quick-post", "/quick-get"]);
    assert_eq!(
        received(&gw),
        ["/warm", "/sleep/1", "/quick-post", "/quick-get"]
    );
}

#[test]
fn one_pipelining_connection_has_one_call_in_flight_at_a_time() {
    const CALLS: usize = 50;
    let gw = Defrost::start(&echo_function(
        "echo",
        "CONCURRENCY_FILE = \"$DIR/most\"",
        "",
    ));
    assert_eq!(get(&gw.url("/function/echo/warm")).status, 200);
    let mut conn = RawConn::open(gw.addr, Duration::from_secs(30));
    let mut pipeline = Vec::new();
    for i in 0..CALLS {
        pipeline.extend_from_slice(
            format!("GET /function/echo/sleep/0.02/{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
        );
    }
    conn.send(&pipeline).unwrap();
    let paths: Vec<String> = (0..CALLS)
        .map(|_| echoed_path(&conn.response().unwrap()))
        .collect();
    let expected: Vec<String> = (0..CALLS).map(|i| format!("/sleep/0.02/{i}")).collect();
    assert_eq!(paths, expected, "answered out of order");
    let most = std::fs::read_to_string(gw.dir.path().join("most")).unwrap_or_default();
    assert_eq!(
        most.trim(),
        "1",
        "calls in progress at once at the function"
    );
}

/// Opens a keep-alive connection and makes one call on it, leaving it idle.
fn idle_after_one_call(gw: &Defrost, path: &str) -> RawConn {
    let mut conn = RawConn::open(gw.addr, Duration::from_secs(20));
    conn.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .unwrap();
    let answer = conn.response().unwrap();
    assert_eq!(
        answer.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&answer.body)
    );
    conn
}

/// True if the server closed the connection; waits a moment at most.
fn was_closed(conn: &mut RawConn) -> bool {
    conn.reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    conn.closed_by_server()
}

#[test]
fn idle_keep_alive_connections_make_room_for_new_clients() {
    const LIMIT: usize = 32;
    let gw = echo_gateway(&format!("max_connections = {LIMIT}"));
    let warm = raw(
        gw.addr,
        b"GET /function/echo/warm HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        Duration::from_secs(20),
    );
    assert!(warm.starts_with("HTTP/1.1 200"), "{warm}");
    thread::sleep(Duration::from_millis(300));
    let mut idle: Vec<RawConn> = (0..LIMIT)
        .map(|_| idle_after_one_call(&gw, "/function/echo/idle"))
        .collect();

    // Every slot is held by an idle client: new clients are served all the same.
    let newcomers: Vec<RawConn> = (0..10)
        .map(|_| idle_after_one_call(&gw, "/function/echo/new"))
        .collect();

    idle.retain_mut(|conn| !was_closed(conn));
    assert_eq!(
        idle.len(),
        LIMIT - 10,
        "idle connections closed to make room"
    );
    for conn in &mut idle {
        conn.reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        conn.send(b"GET /function/echo/again HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        assert_eq!(
            conn.response().unwrap().status,
            200,
            "a kept connection broke"
        );
    }
    drop(newcomers);
}

#[test]
fn a_connection_with_a_call_in_progress_is_never_reclaimed() {
    let gw = echo_gateway("max_connections = 4");
    assert_eq!(get(&gw.url("/function/echo/warm")).status, 200);
    thread::sleep(Duration::from_millis(300));
    // The oldest connection, but busy: its call takes a while.
    let mut busy = RawConn::open(gw.addr, Duration::from_secs(20));
    busy.send(b"GET /function/echo/sleep/2 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    thread::sleep(Duration::from_millis(300));
    let mut held: Vec<RawConn> = (0..3)
        .map(|_| idle_after_one_call(&gw, "/function/echo/idle"))
        .collect();
    // More newcomers than idle connections: the idle ones, then the newcomers themselves once
    // idle, make room; the busy one never does.
    for _ in 0..5 {
        held.push(idle_after_one_call(&gw, "/function/echo/new"));
    }
    let answer = busy.response().expect("the busy connection was closed");
    assert_eq!(answer.status, 200);
}

/// A gateway serving the echo function with this `header_timeout`, once warm and settled,
/// with the number of threads it runs then.
fn settled_gateway(header_timeout: &str) -> (Defrost, usize) {
    let gw = echo_gateway(&format!("header_timeout = \"{header_timeout}\""));
    assert_eq!(get(&gw.url("/function/echo/warm")).status, 200);
    thread::sleep(Duration::from_millis(300));
    let idle = threads_of(gw.child.id());
    (gw, idle)
}

/// Opens `count` connections that each send the start of a request head to the echo function
/// (`/function/echo/slow/N`, a header left open) and no more.
fn open_slow_heads(gw: &Defrost, count: usize) -> Vec<RawConn> {
    (0..count)
        .map(|i| {
            let mut conn = RawConn::open(gw.addr, Duration::from_secs(20));
            conn.send(
                format!("GET /function/echo/slow/{i} HTTP/1.1\r\nHost: t\r\nX-Trickle: ")
                    .as_bytes(),
            )
            .unwrap();
            conn
        })
        .collect()
}

/// Sends one more byte of its head on each slow connection, `rounds` times, `pause` apart,
/// calling `meanwhile` each round; returns the most threads the gateway ran in between. A send
/// that fails (the gateway answered and closed) is left to the caller to notice.
fn trickle(
    gw: &Defrost,
    slow: &mut [RawConn],
    rounds: usize,
    pause: Duration,
    mut meanwhile: impl FnMut(),
) -> usize {
    let mut most = 0;
    for _ in 0..rounds {
        for conn in slow.iter_mut() {
            let _ = conn.send(b"a");
        }
        meanwhile();
        most = most.max(threads_of(gw.child.id()));
        thread::sleep(pause);
    }
    most
}

#[test]
fn heads_trickling_in_hold_no_threads_and_are_answered_whole() {
    const SLOW: usize = 300;
    let (gw, idle) = settled_gateway("60s");
    let mut slow = open_slow_heads(&gw, SLOW);
    // A byte now and then on each, while another client is served.
    let most = trickle(&gw, &mut slow, 5, Duration::from_millis(100), || {
        assert_eq!(get(&gw.url("/function/echo/meanwhile")).status, 200);
    });
    assert!(
        most <= idle + 16,
        "{SLOW} slow heads took the gateway from {idle} to {most} threads"
    );

    // Every head completes, and each call gets what its client sent.
    for (i, conn) in slow.iter_mut().enumerate() {
        conn.send(b"z\r\n\r\n").unwrap();
        let answer = conn.response().unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(echoed_path(&answer), format!("/slow/{i}"));
        let echoed: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(echoed["headers"]["x-trickle"], "aaaaaz");
    }
}

#[test]
fn heads_trickling_past_the_header_timeout_get_408_without_threads() {
    const SLOW: usize = 100;
    let (gw, idle) = settled_gateway("1s");
    let mut slow = open_slow_heads(&gw, SLOW);
    // Bytes keep coming, but the heads never end: about 1.6 s of it.
    let most = trickle(&gw, &mut slow, 8, Duration::from_millis(200), || ());
    for conn in &mut slow {
        let answer = conn.response().unwrap();
        assert_eq!(answer.status, 408);
        assert!(answer.closes());
        assert!(conn.closed_by_server(), "still open after the 408");
    }
    assert!(
        most <= idle + 16,
        "{SLOW} late heads took the gateway from {idle} to {most} threads"
    );
    assert_eq!(get(&gw.url("/function/echo/after")).status, 200);
}
