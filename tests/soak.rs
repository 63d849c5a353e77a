//! A day's worth of mixed traffic in a minute or two, against the real binary: good calls,
//! malformed requests and failing functions interleaved from several clients. Afterwards the
//! gateway's threads, descriptors and memory are back near where they started, and every good
//! request that was accepted got its own right answer.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const REQUESTS: usize = 100_000;
const CLIENTS: usize = 8;

/// What the gateway process holds, from /proc.
#[derive(Debug, Clone, Copy)]
struct Usage {
    threads: usize,
    fds: usize,
    rss_kib: usize,
}

fn usage(pid: u32) -> Usage {
    Usage {
        threads: threads_of(pid),
        fds: open_fds(pid),
        rss_kib: proc_status(pid, "VmRSS:"),
    }
}

/// Tallies kept by every client.
#[derive(Default)]
struct Tally {
    good_sent: AtomicUsize,
    good_right: AtomicUsize,
    good_shed: AtomicUsize,
    wrong: AtomicUsize,
}

/// What an answer must be: a good call's echo containing this text, or a refusal's status.
enum Expect {
    Echoed(String),
    Status(u16),
}

/// Sends request `i` of the mix, chosen by its number: 12 good calls in 20, the rest
/// malformed, refused or failing.
fn send(agent: &ureq::Agent, addr: SocketAddr, i: usize) -> (Answer, Expect) {
    let url = |path: &str| format!("http://{addr}{path}");
    match i % 20 {
        0..=8 => (
            call(agent.get(&url(&format!("/function/echo/soak/{i}?n={i}")))),
            Expect::Echoed(format!("\"path\": \"/soak/{i}?n={i}\"")),
        ),
        9..=11 => {
            let body = format!("payload {i}");
            (
                call_with_body(agent.post(&url("/function/echo")), &body),
                Expect::Echoed(format!("\"body_bytes\": {}", body.len())),
            )
        }
        12 => (
            call(agent.get(&url("/function/Not_A_Name"))),
            Expect::Status(400),
        ),
        13 => (
            call(agent.get(&url("/function/nosuch"))),
            Expect::Status(404),
        ),
        14 => (
            call(agent.get(&url("/function/echo/%2e%2e/other"))),
            Expect::Status(400),
        ),
        15 => (
            call_with_body(agent.post(&url("/function/echo")), &"x".repeat(5000)),
            Expect::Status(413),
        ),
        16 => (
            call(agent.get(&url("/function/echo/garbage"))),
            Expect::Status(502),
        ),
        17 => (malformed(addr), Expect::Status(400)),
        18 => (call(agent.get(&url("/nothing-here"))), Expect::Status(404)),
        _ => (call(agent.get(&url("/healthz"))), Expect::Status(200)),
    }
}

/// Sends request `i` and tallies whether it got what it must.
fn one(agent: &ureq::Agent, addr: SocketAddr, i: usize, tally: &Tally) {
    let (reply, expect) = send(agent, addr, i);
    let status = reply.as_ref().map(|(status, _)| *status);
    let right = match &expect {
        Expect::Echoed(needle) => {
            status == Some(200)
                && reply
                    .as_ref()
                    .is_some_and(|(_, body)| body.contains(needle))
        }
        Expect::Status(expected) => status == Some(*expected),
    };
    let shed = status == Some(503);
    if let Expect::Echoed(_) = expect {
        tally.good_sent.fetch_add(1, Ordering::Relaxed);
        if right {
            tally.good_right.fetch_add(1, Ordering::Relaxed);
        } else if shed {
            tally.good_shed.fetch_add(1, Ordering::Relaxed);
        }
    }
    if !right && !shed {
        tally.wrong.fetch_add(1, Ordering::Relaxed);
        eprintln!("request {i}: {reply:?}");
    }
}

type Answer = Option<(u16, String)>;

fn call(request: ureq::RequestBuilder<ureq::typestate::WithoutBody>) -> Answer {
    request.call().ok().map(|r| {
        let reply = read_reply(r);
        (reply.status, reply.body)
    })
}

fn call_with_body(request: ureq::RequestBuilder<ureq::typestate::WithBody>, body: &str) -> Answer {
    request.send(body).ok().map(|r| {
        let reply = read_reply(r);
        (reply.status, reply.body)
    })
}

/// Conflicting lengths on a connection of its own (the gateway closes it after the 400).
fn malformed(addr: SocketAddr) -> Answer {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    stream
        .write_all(b"POST /function/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab")
        .ok()?;
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let status = answer.get(9..12)?.parse().ok()?;
    Some((status, answer))
}

/// Runs requests `range` from `CLIENTS` threads, each with its own keep-alive client.
fn traffic(addr: SocketAddr, range: std::ops::Range<usize>, tally: &Arc<Tally>) {
    let next = Arc::new(AtomicUsize::new(range.start));
    let handles: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (next, tally, end) = (next.clone(), tally.clone(), range.end);
            thread::spawn(move || {
                let agent = agent();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= end {
                        break;
                    }
                    one(&agent, addr, i, &tally);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

/// Waits (bounded) until `settled` holds for the gateway's usage, and returns the last reading.
fn settle(pid: u32, settled: impl Fn(Usage) -> bool) -> Usage {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = usage(pid);
        if settled(now) || Instant::now() > deadline {
            return now;
        }
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_hundred_thousand_mixed_requests_leave_the_gateway_as_they_found_it() {
    let gw = Defrost::start(&format!(
        "[gateway]\nmax_body_bytes = 4096\nupstream_timeout = \"10s\"\n{}",
        echo_function("echo", "", "min_replicas = 2")
    ));
    let pid = gw.child.id();
    let warm_up = Arc::new(Tally::default());
    traffic(gw.addr, 0..2_000, &warm_up);
    assert_eq!(warm_up.wrong.load(Ordering::Relaxed), 0);
    // Keep-alive connections of the warm-up clients are closed: count from a quiet gateway.
    thread::sleep(Duration::from_secs(1));
    let start = usage(pid);

    let tally = Arc::new(Tally::default());
    let began = Instant::now();
    traffic(gw.addr, 0..REQUESTS, &tally);
    let took = began.elapsed();

    let end = settle(pid, |u| {
        u.threads <= start.threads + 8 && u.fds <= start.fds + 16
    });
    eprintln!(
        "soak: {REQUESTS} requests in {:.1}s; start {start:?}, end {end:?}",
        took.as_secs_f64()
    );
    let good_sent = tally.good_sent.load(Ordering::Relaxed);
    let good_right = tally.good_right.load(Ordering::Relaxed);
    let good_shed = tally.good_shed.load(Ordering::Relaxed);
    assert_eq!(tally.wrong.load(Ordering::Relaxed), 0, "wrong answers");
    assert_eq!(good_right + good_shed, good_sent);
    assert!(
        good_shed * 100 <= good_sent,
        "{good_shed} of {good_sent} shed"
    );
    assert!(
        end.threads <= start.threads + 8,
        "threads {start:?} -> {end:?}"
    );
    assert!(
        end.fds <= start.fds + 16,
        "descriptors {start:?} -> {end:?}"
    );
    assert!(
        end.rss_kib <= start.rss_kib * 2 + 32 * 1024,
        "memory {start:?} -> {end:?}"
    );
    assert_eq!(get(&gw.url("/function/echo")).status, 200);
}
