//! Deciding when a starting replica can take requests.
//!
//! The probe schedule serves the cold-start target: the gateway should add no more than a couple
//! of milliseconds to the function's own start time, so a new replica is probed every quarter
//! of a millisecond at first (on average the probe then notices readiness an eighth of a
//! millisecond late). Loopback probes of a port nobody listens on fail in microseconds, so
//! this is cheap; a replica that takes longer is a slow starter, probed less often.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::Readiness;

/// Probe interval while the replica is young.
const FAST_INTERVAL: Duration = Duration::from_micros(250);
/// How long the replica counts as young.
const FAST_PHASE: Duration = Duration::from_millis(300);
/// Probe interval for slow starters.
const SLOW_INTERVAL: Duration = Duration::from_millis(20);
/// Longest a single probe may take; a listening replica answers in far less.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Ready, this long after probing began.
    Ready(Duration),
    TimedOut,
    /// Someone else settled the replica's fate (it exited or is being stopped).
    Halted,
}

/// Probes until the replica is ready, `timeout` passes, or `halt` is set.
pub(super) fn await_ready(
    readiness: &Readiness,
    port: u16,
    timeout: Duration,
    halt: &AtomicBool,
) -> Outcome {
    let start = Instant::now();
    loop {
        if halt.load(Ordering::Relaxed) {
            return Outcome::Halted;
        }
        let Some(left) = timeout
            .checked_sub(start.elapsed())
            .filter(|d| !d.is_zero())
        else {
            return Outcome::TimedOut;
        };
        if probe(readiness, port, left.min(PROBE_TIMEOUT)) {
            return Outcome::Ready(start.elapsed());
        }
        let elapsed = start.elapsed();
        let Some(left) = timeout.checked_sub(elapsed) else {
            return Outcome::TimedOut;
        };
        thread::sleep(interval(elapsed).min(left));
    }
}

/// Every quarter millisecond while young, then a twentieth of the age, capped.
fn interval(age: Duration) -> Duration {
    if age < FAST_PHASE {
        FAST_INTERVAL
    } else {
        (age / 20).clamp(FAST_INTERVAL, SLOW_INTERVAL)
    }
}

pub(super) fn probe(readiness: &Readiness, port: u16, timeout: Duration) -> bool {
    let timeout = timeout.max(Duration::from_millis(1));
    match readiness {
        Readiness::Tcp => connect(port, timeout).is_ok(),
        Readiness::Http { path } => http_2xx(port, path, timeout).unwrap_or(false),
    }
}

fn connect(port: u16, timeout: Duration) -> io::Result<TcpStream> {
    TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), timeout)
}

/// A raw request: one round trip, no pool to keep a connection to a replica that may die.
fn http_2xx(port: u16, path: &str, timeout: Duration) -> io::Result<bool> {
    let mut stream = connect(port, timeout)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut head = [0u8; 12];
    let mut len = 0;
    while len < head.len() {
        match stream.read(&mut head[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    drain(&mut stream);
    Ok(is_2xx(&head[..len]))
}

/// Reads what is left of the answer before closing: closing with unread data makes the kernel
/// reset the connection, which many servers log as an error on every probe.
fn drain(stream: &mut TcpStream) {
    const MOST: usize = 64 * 1024;
    let mut sink = [0u8; 1024];
    let mut drained = 0;
    while drained < MOST {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => drained += n,
        }
    }
}

/// `HTTP/1.x 2yz`: the status line's first twelve bytes say all a probe needs.
fn is_2xx(head: &[u8]) -> bool {
    head.len() == 12
        && head.starts_with(b"HTTP/1.")
        && head[8] == b' '
        && head[9] == b'2'
        && head[10].is_ascii_digit()
        && head[11].is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn unused_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// Answers each connection with `status`, once per entry.
    fn answer(listener: TcpListener, statuses: Vec<&'static str>) -> thread::JoinHandle<()> {
        thread::spawn(move || {
            for status in statuses {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = write!(s, "HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
            }
        })
    }

    #[test]
    fn status_line_parsing() {
        assert!(is_2xx(b"HTTP/1.1 200"));
        assert!(is_2xx(b"HTTP/1.0 204"));
        assert!(!is_2xx(b"HTTP/1.1 503"));
        assert!(!is_2xx(b"HTTP/1.1 2"));
        assert!(!is_2xx(b"SSH-2.0-Open"));
    }

    #[test]
    fn interval_backs_off() {
        assert_eq!(interval(Duration::ZERO), FAST_INTERVAL);
        assert_eq!(interval(Duration::from_millis(299)), FAST_INTERVAL);
        assert!(interval(Duration::from_millis(300)) > FAST_INTERVAL);
        assert_eq!(interval(Duration::from_secs(10)), SLOW_INTERVAL);
    }

    #[test]
    fn tcp_probe_sees_a_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let halt = AtomicBool::new(false);
        let outcome = await_ready(&Readiness::Tcp, port, Duration::from_secs(1), &halt);
        assert!(matches!(outcome, Outcome::Ready(_)), "{outcome:?}");
    }

    #[test]
    fn nobody_listening_times_out() {
        let halt = AtomicBool::new(false);
        let t0 = Instant::now();
        let outcome = await_ready(
            &Readiness::Tcp,
            unused_port(),
            Duration::from_millis(50),
            &halt,
        );
        assert_eq!(outcome, Outcome::TimedOut);
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn halt_stops_probing() {
        let halt = AtomicBool::new(true);
        let outcome = await_ready(
            &Readiness::Tcp,
            unused_port(),
            Duration::from_secs(5),
            &halt,
        );
        assert_eq!(outcome, Outcome::Halted);
    }

    #[test]
    fn http_probe_waits_for_2xx() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = answer(
            listener,
            vec!["503 Service Unavailable", "404 Not Found", "200 OK"],
        );
        let http = Readiness::Http {
            path: "/ready".into(),
        };
        let halt = AtomicBool::new(false);
        let outcome = await_ready(&http, port, Duration::from_secs(2), &halt);
        assert!(matches!(outcome, Outcome::Ready(_)), "{outcome:?}");
        server.join().unwrap();
    }
}
