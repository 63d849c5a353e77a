//! Providers and functions that break, against the real binary: each failure gets a clear
//! status within its timeout, the connection to the client is closed cleanly when an answer
//! cannot be completed, clients that give up release what their call held, and the gateway
//! keeps serving everyone else.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// An OpenFaaS provider on 127.0.0.1 that answers `/system/function/good` and
/// `/function/good` properly, and misbehaves for the functions named after a fault.
fn fake_provider() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || answer_as_provider(stream));
        }
    });
    addr
}

fn answer_as_provider(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut request_line = String::new();
    let _ = reader.read_line(&mut request_line);
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
        line.clear();
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("");
    let reply = |status: &str, body: &[u8]| {
        let mut out = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body);
        out
    };
    let out = if path.starts_with("/system/function/good") {
        reply(
            "200 OK",
            br#"{"name":"good","replicas":1,"availableReplicas":1}"#,
        )
    } else if path == "/function/good" || path.starts_with("/function/good/") {
        // Called the way the client called the gateway: without a namespace.
        reply("200 OK", b"good\n")
    } else if path.starts_with("/system/function/hangs") {
        // Holds the connection until the gateway gives up on it.
        let _ = stream.read_to_end(&mut Vec::new());
        return;
    } else if path.starts_with("/system/function/fails") {
        reply("500 Internal Server Error", b"database is down\n")
    } else if path.starts_with("/system/function/garbage") {
        reply("200 OK", b"{\"name\": \"garbage\", \"replicas\": [oops")
    } else if path.starts_with("/system/function/huge") {
        // The head at once, then 16 MiB of blanks as fast as the gateway reads them.
        let _ = stream.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Length: 104857600\r\nConnection: close\r\n\r\n",
        );
        let blanks = [b' '; 64 * 1024];
        for _ in 0..256 {
            if stream.write_all(&blanks).is_err() {
                break;
            }
        }
        return;
    } else {
        reply("404 Not Found", b"not found\n")
    };
    let _ = stream.write_all(&out);
}

fn gateway_in_front_of(provider_url: &str) -> Defrost {
    Defrost::start(&format!(
        "[gateway]\nready_timeout = \"5s\"\nscale_retries = 2\nscale_retry_interval = \"50ms\"\n\
         [provider]\nkind = \"openfaas\"\nurl = \"{provider_url}\"\ntimeout = \"2s\"\n"
    ))
}

#[test]
fn a_broken_provider_gets_a_clear_status_and_other_functions_keep_working() {
    let provider = fake_provider();
    let gw = gateway_in_front_of(&format!("http://{provider}"));
    let good = {
        let url = gw.url("/function/good");
        thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut calls = 0;
            while Instant::now() < deadline && calls < 200 {
                let reply = get(&url);
                assert_eq!((reply.status, reply.body.as_str()), (200, "good\n"));
                calls += 1;
            }
            calls
        })
    };
    for (function, expected) in [
        ("hangs", "timeout"),
        ("fails", "database is down"),
        ("garbage", "unreadable answer"),
        ("huge", "larger than"),
    ] {
        let started = Instant::now();
        let reply = get(&gw.url(&format!("/function/{function}")));
        assert!(
            reply.status == 502 || reply.status == 504,
            "{function}: {} {}",
            reply.status,
            reply.body
        );
        assert!(reply.body.contains(expected), "{function}: {}", reply.body);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{function} was not bounded"
        );
        assert!(
            gw.log_count_settled(&format!("/function/{function} -> 5"), 1) > 0,
            "{}",
            gw.log_text()
        );
    }
    assert!(good.join().unwrap() > 0);

    let refused = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let gw = gateway_in_front_of(&format!("http://{refused}"));
    let reply = get(&gw.url("/function/good"));
    assert_eq!(reply.status, 502, "{}", reply.body);
    assert!(reply.body.contains("provider") || reply.body.contains("refused"));
    assert_eq!(get(&gw.url("/healthz")).status, 502);
}

/// Waits (bounded) until the log has `count` lines containing `needle`; fails if it never does.
fn wait_for_log(gw: &Defrost, needle: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while gw.log_count(needle) < count {
        assert!(
            Instant::now() < deadline,
            "no {needle:?}: {}",
            gw.log_text()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (bounded) until the gateway holds no more descriptors than `limit`.
fn fds_settle(pid: u32, limit: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    while open_fds(pid) > limit && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    open_fds(pid)
}

#[test]
fn a_broken_function_is_reported_and_the_client_connection_closed_cleanly() {
    let gw = echo_gateway("upstream_timeout = \"2s\"");
    assert_eq!(get(&gw.url("/function/echo")).status, 200);

    let garbage = get(&gw.url("/function/echo/garbage"));
    assert_eq!(garbage.status, 502, "{}", garbage.body);

    let started = Instant::now();
    let silent = get(&gw.url("/function/echo/sleep/600"));
    assert_eq!(silent.status, 504, "{}", silent.body);
    assert!(
        silent.body.contains("no answer within 2.0s"),
        "{}",
        silent.body
    );
    assert!(started.elapsed() < Duration::from_secs(60));

    // Closed mid-response: the head was relayed already, so the client sees the body cut
    // short and the connection closed, never a silently short 200 on a reusable connection.
    let answer = raw(
        gw.addr,
        b"GET /function/echo/truncate/100000 HTTP/1.1\r\nHost: t\r\n\r\n",
        Duration::from_secs(30),
    );
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    assert!(head.contains("Content-Length: 100000"), "{head}");
    assert!(body.len() < 100_000, "the cut was hidden");
    assert!(
        gw.log_count_settled("/function/echo/truncate/100000", 1) > 0,
        "{}",
        gw.log_text()
    );

    let crash = get(&gw.url("/function/echo/crash"));
    assert_eq!(crash.status, 502, "{}", crash.body);
    // A call already on its way to the dead replica may still fail; a new one is started soon.
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&gw.url("/function/echo")).status != 200 {
        assert!(Instant::now() < deadline, "no recovery: {}", gw.log_text());
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn clients_that_give_up_release_what_their_calls_held() {
    let gw = echo_gateway("write_timeout = \"1s\"\nread_timeout = \"1s\"");
    let pid = gw.child.id();
    assert_eq!(get(&gw.url("/function/echo")).status, 200);
    let fds_before = open_fds(pid);
    let threads_before = threads_of(pid);

    for round in 1..=5 {
        // Mid-download: reads a little of a 200 MB answer, then hangs up.
        let mut stream = TcpStream::connect(gw.addr).unwrap();
        stream
            .write_all(b"GET /function/echo/bytes/200000000 HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut some = [0u8; 65536];
        let _ = stream.read(&mut some);
        drop(stream);

        // Mid-upload: declares 100 MB, sends 1 MB, hangs up.
        let mut stream = TcpStream::connect(gw.addr).unwrap();
        stream
            .write_all(
                b"POST /function/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\n\r\n",
            )
            .unwrap();
        let _ = stream.write_all(&vec![b'u'; 1 << 20]);
        drop(stream);

        // A slow reader of a huge answer: never reads, so the gateway's writes time out.
        let mut stream = TcpStream::connect(gw.addr).unwrap();
        stream
            .write_all(b"GET /function/echo/bytes/500000000 HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        wait_for_log(&gw, "response not completed: write timed out", round);
        drop(stream);
    }
    let fds_after = fds_settle(pid, fds_before + 4);
    assert!(
        fds_after <= fds_before + 4,
        "descriptors grew from {fds_before} to {fds_after}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while threads_of(pid) > threads_before + 8 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    assert!(threads_of(pid) <= threads_before + 8);
    assert_eq!(get(&gw.url("/function/echo")).status, 200);
}
