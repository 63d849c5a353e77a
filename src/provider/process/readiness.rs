//! Deciding when a starting replica can take requests.
//!
//! The schedule serves the cold-start target: the gateway should add no more than a couple of
//! milliseconds to the function's own start time, however long that is. So a starting replica
//! is looked at every quarter of a millisecond while young and every millisecond after, until
//! it listens. Looking is one kernel dump of the listening ports shared by all starting replicas
//! ([`watch`](super::watch): the cost does not grow with their number, nothing is sent to a
//! replica), or where the kernel cannot say, a connect per replica; connecting probers are
//! bounded together, the more of them the longer each one's interval, so that all of them
//! together connect no more than [`MOST_LOOKS_PER_SECOND`] times a second.
//!
//! A replica with an HTTP readiness path is asked that path as soon as it listens, then at an
//! interval growing with the time since (a replica that listens early and is ready late is
//! loading something; asking it a thousand times a second would slow that down).

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::watch::{Seen, Watch, INTERVAL, YOUNG, YOUNG_INTERVAL};
use super::Readiness;

/// Longest interval between asks of a listening replica's readiness path.
const SLOWEST_HTTP_INTERVAL: Duration = Duration::from_millis(20);
/// All probers together look about this often at most; each one's interval stretches with
/// their number.
const MOST_LOOKS_PER_SECOND: u32 = 5_000;
/// Longest a single probe may take; a listening replica answers in far less.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Probers connecting to find a listener now, in this process.
static PROBERS: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Ready, this long after probing began.
    Ready(Duration),
    TimedOut,
    /// Someone else settled the replica's fate (it exited or is being stopped).
    Halted,
}

/// Counts a prober in for as long as it lives.
struct Counted;

impl Counted {
    fn new() -> Counted {
        PROBERS.fetch_add(1, Ordering::Relaxed);
        Counted
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        PROBERS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Probes until the replica is ready, `timeout` passes, or `halt` is set.
pub(super) fn await_ready(
    readiness: &Readiness,
    port: u16,
    timeout: Duration,
    halt: &AtomicBool,
) -> Outcome {
    let start = Instant::now();
    let deadline = crate::deadline::from(start, timeout);
    let listening = until_listening(port, deadline, halt);
    let ready = match (listening, readiness) {
        (Seen::Listening, Readiness::Http { path }) => until_http_ready(port, path, deadline, halt),
        (seen, _) => seen,
    };
    match ready {
        Seen::Listening => Outcome::Ready(start.elapsed()),
        Seen::TimedOut => Outcome::TimedOut,
        Seen::Halted => Outcome::Halted,
    }
}

/// Waits for a listener on the port: told by the shared [`Watch`] where the kernel can list
/// listeners, else by connecting at intervals.
fn until_listening(port: u16, deadline: Instant, halt: &AtomicBool) -> Seen {
    if let Some(watch) = Watch::shared() {
        return watch.until_listening(port, deadline, halt);
    }
    let _counted = Counted::new();
    let start = Instant::now();
    keep_looking(
        deadline,
        halt,
        |timeout| connect(port, timeout).is_ok(),
        || look_interval(start.elapsed(), PROBERS.load(Ordering::Relaxed)),
    )
}

/// Asks a listening replica's readiness path until it answers 2xx (then `Seen::Listening`).
fn until_http_ready(port: u16, path: &str, deadline: Instant, halt: &AtomicBool) -> Seen {
    let listening_since = Instant::now();
    keep_looking(
        deadline,
        halt,
        |timeout| http_2xx(port, path, timeout).unwrap_or(false),
        || http_interval(listening_since.elapsed()),
    )
}

/// Calls `look` (given how long it may take) until it says yes, sleeping `wait()` between
/// calls, unless `halt` is set or `deadline` passes first.
fn keep_looking(
    deadline: Instant,
    halt: &AtomicBool,
    mut look: impl FnMut(Duration) -> bool,
    mut wait: impl FnMut() -> Duration,
) -> Seen {
    loop {
        if halt.load(Ordering::Relaxed) {
            return Seen::Halted;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Seen::TimedOut;
        }
        if look(left.min(PROBE_TIMEOUT)) {
            return Seen::Listening;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        thread::sleep(wait().min(left));
    }
}

/// The interval between looks for a replica of this age while `probers` are looking: fast
/// while young, then a millisecond, stretched so that all probers together keep within
/// [`MOST_LOOKS_PER_SECOND`].
fn look_interval(age: Duration, probers: usize) -> Duration {
    let own = if age < YOUNG {
        YOUNG_INTERVAL
    } else {
        INTERVAL
    };
    let shared = Duration::from_secs(1) / MOST_LOOKS_PER_SECOND;
    let probers = u32::try_from(probers).unwrap_or(u32::MAX);
    own.max(shared.saturating_mul(probers))
}

/// Between asks of the readiness path: a millisecond at first, then a twentieth of the time
/// the replica has been listening, capped.
fn http_interval(listening_for: Duration) -> Duration {
    (listening_for / 20).clamp(INTERVAL, SLOWEST_HTTP_INTERVAL)
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
    // A function that writes its head and body apart without TCP_NODELAY (Python's
    // http.server) holds the body until the head is acknowledged, and the probe's ACK would
    // wait for the delayed-ACK timer: up to 40 ms more before the replica counts as ready.
    crate::client::quick_ack(&stream);
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
    fn a_replica_that_does_not_listen_is_looked_at_every_millisecond_however_old() {
        assert_eq!(look_interval(Duration::ZERO, 1), YOUNG_INTERVAL);
        assert_eq!(look_interval(Duration::from_millis(299), 1), YOUNG_INTERVAL);
        assert_eq!(look_interval(Duration::from_millis(300), 1), INTERVAL);
        assert_eq!(look_interval(Duration::from_secs(600), 1), INTERVAL);
    }

    #[test]
    fn many_probers_together_keep_within_the_bound() {
        for probers in [1usize, 10, 100, 1_000, 100_000] {
            let each = look_interval(Duration::ZERO, probers);
            let per_second = probers as f64 / each.as_secs_f64();
            assert!(
                per_second <= f64::from(MOST_LOOKS_PER_SECOND) * 1.001,
                "{probers}: {per_second}"
            );
        }
        assert_eq!(
            look_interval(Duration::ZERO, usize::MAX),
            Duration::from_secs(1) / MOST_LOOKS_PER_SECOND * u32::MAX
        );
    }

    #[test]
    fn a_listening_replica_is_asked_less_often_as_it_stays_unready() {
        assert_eq!(http_interval(Duration::ZERO), INTERVAL);
        assert!(http_interval(Duration::from_millis(100)) > INTERVAL);
        assert_eq!(
            http_interval(Duration::from_secs(60)),
            SLOWEST_HTTP_INTERVAL
        );
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
