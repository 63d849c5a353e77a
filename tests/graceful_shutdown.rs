//! SIGTERM while clients are connected: every request the gateway received is answered, the
//! answers tell keep-alive clients to go elsewhere (`Connection: close`), and idle
//! connections are closed cleanly instead of being reset when the process exits.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::*;

const SETTINGS: &str = "shutdown_grace = \"20s\"";

/// Waits (bounded) until the echo function has received a request for `path`.
fn wait_received(gw: &Defrost, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !received(gw).iter().any(|p| p == path) {
        assert!(
            Instant::now() < deadline,
            "the function never received {path}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// One call on a new keep-alive connection, left idle afterwards.
fn idle_connection(gw: &Defrost) -> RawConn {
    let mut conn = RawConn::open(gw.addr, Duration::from_secs(20));
    conn.send(b"GET /function/echo/first HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let answer = conn.response().unwrap();
    assert_eq!(answer.status, 200);
    assert!(!answer.closes(), "kept alive before SIGTERM");
    conn
}

#[test]
fn sigterm_answers_the_call_in_flight_with_connection_close_and_closes_idle_connections() {
    let mut gw = recording_gateway(SETTINGS);
    let mut idle = idle_connection(&gw);
    let mut busy = RawConn::open(gw.addr, Duration::from_secs(20));
    busy.send(b"GET /function/echo/sleep/1 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    wait_received(&gw, "/sleep/1");

    unsafe_kill(gw.child.id(), "TERM");

    // The idle connection is closed by the gateway (a clean end of stream, not a reset)
    // before the client sends anything more on it: a request it would send now is never
    // received, and the client knows to open a new connection.
    let mut byte = [0u8; 1];
    let read = std::io::Read::read(&mut idle.reader, &mut byte);
    assert!(
        matches!(read, Ok(0)),
        "idle connection not closed cleanly: {read:?}"
    );

    // The call in flight finishes, and its answer says the connection closes.
    let answer = busy.response().expect("the call in flight was cut off");
    assert_eq!(answer.status, 200);
    assert!(
        answer.closes(),
        "no Connection: close: {:?}",
        answer.headers
    );
    assert!(
        busy.closed_by_server(),
        "the connection stayed open after its answer"
    );

    let status = wait_exit(&mut gw.child, Duration::from_secs(20)).expect("defrost exits");
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_request_still_arriving_at_sigterm_is_answered_with_connection_close() {
    let mut gw = recording_gateway(SETTINGS);
    assert_eq!(get(&gw.url("/function/echo/warm")).status, 200);
    let mut arriving = RawConn::open(gw.addr, Duration::from_secs(20));
    arriving
        .send(b"GET /function/echo/late HTTP/1.1\r\nHost: t\r\n")
        .unwrap();
    thread::sleep(Duration::from_millis(200));

    unsafe_kill(gw.child.id(), "TERM");
    thread::sleep(Duration::from_millis(300));
    // The head is complete only now, well after SIGTERM: it is still received and answered.
    arriving.send(b"\r\n").unwrap();
    let answer = arriving
        .response()
        .expect("the request was dropped at exit");
    assert_eq!(
        answer.status,
        503,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert!(
        answer.closes(),
        "no Connection: close: {:?}",
        answer.headers
    );
    assert!(
        answer.header("Retry-After").is_some(),
        "{:?}",
        answer.headers
    );

    let status = wait_exit(&mut gw.child, Duration::from_secs(20)).expect("defrost exits");
    assert!(status.success(), "{status:?}");
}
