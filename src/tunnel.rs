//! Upgraded connections (WebSocket and others): the client's joined to its replica's, relayed
//! byte for byte until either side closes.
//!
//! The worker that answered the upgrade request relays it, waiting in `poll(2)` on both
//! sockets and on the gateway's closing signal: a quiet pair costs no CPU, only the worker's
//! (mostly unused) stack, and the pool starts another worker in its place. Each direction
//! reads only once what it read before has been written, so a side that stops reading slows
//! the other down instead of filling the gateway's memory; an end of stream (FIN) is passed on
//! as one (`shutdown(SHUT_WR)`), so half-closed protocols work. Connections joined at once are
//! bounded, and a pair that sends nothing either way for the idle timeout is closed.

use std::fmt;
use std::io::{self, Read};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bounds on upgraded connections.
#[derive(Debug, Clone)]
pub struct UpgradeConfig {
    /// Upgraded connections at once; more upgrade requests get 503.
    pub max_upgraded: usize,
    /// An upgraded connection with no byte in either direction for this long is closed;
    /// zero: never.
    pub idle_timeout: Duration,
}

impl Default for UpgradeConfig {
    fn default() -> Self {
        UpgradeConfig {
            max_upgraded: 512,
            idle_timeout: Duration::from_secs(600),
        }
    }
}

/// The gateway's upgraded connections: their count, and the signal that closes them all.
pub struct Tunnels {
    config: UpgradeConfig,
    open: Arc<AtomicUsize>,
    /// An eventfd, readable once every relay must end (shutdown after the grace period).
    closing: OwnedFd,
}

/// One upgraded connection counted against the bound until dropped.
pub struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why a relay ended.
#[derive(Debug)]
pub enum Ended {
    /// Both sides closed (or one vanished).
    Closed,
    /// Nothing moved for the idle timeout.
    Idle,
    /// The gateway stopped.
    ShuttingDown,
    /// A socket failed.
    Failed(io::Error),
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ended::Closed => f.write_str("closed"),
            Ended::Idle => f.write_str("closed after the idle timeout"),
            Ended::ShuttingDown => f.write_str("closed at shutdown"),
            Ended::Failed(e) => write!(f, "broken: {e}"),
        }
    }
}

impl Tunnels {
    pub fn new(config: UpgradeConfig) -> io::Result<Tunnels> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor that
        // nothing else owns.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned here alone.
        let closing = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Tunnels {
            config,
            open: Arc::new(AtomicUsize::new(0)),
            closing,
        })
    }

    /// Counts one more upgraded connection, unless `max_upgraded` are open.
    pub fn admit(&self) -> Option<Admitted> {
        let max = self.config.max_upgraded;
        self.open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Admitted(Arc::clone(&self.open)))
    }

    /// Upgraded connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    pub fn limit(&self) -> usize {
        self.config.max_upgraded
    }

    /// Ends every relay, now and from now on.
    pub fn close_all(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: the descriptor is owned by `self`; the buffer is 8 readable bytes, as an
        // eventfd write takes.
        let _ = unsafe { libc::write(self.closing.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    /// Relays between the client's socket (`client_fd`, whose already-received bytes `client`
    /// still holds) and the replica's (`early`: what the replica sent after its 101) until
    /// either side closes, nothing moves for the idle timeout, or the gateway stops. Both
    /// connections are closed at the end.
    pub fn relay(
        &self,
        client_fd: RawFd,
        client: &mut dyn Read,
        upstream: &TcpStream,
        early: Vec<u8>,
    ) -> Ended {
        let upstream_fd = upstream.as_raw_fd();
        let ended = self.pump(client_fd, client, upstream_fd, early);
        shutdown(client_fd, libc::SHUT_RDWR);
        shutdown(upstream_fd, libc::SHUT_RDWR);
        ended
    }

    fn pump(
        &self,
        client_fd: RawFd,
        client: &mut dyn Read,
        upstream_fd: RawFd,
        early: Vec<u8>,
    ) -> Ended {
        if let Err(e) = set_nonblocking(client_fd).and_then(|()| set_nonblocking(upstream_fd)) {
            return Ended::Failed(e);
        }
        let mut up = Direction::new(client_fd, upstream_fd);
        match take_buffered(client, &mut up.pending) {
            Ok(ended) => up.src_done = ended,
            Err(e) => return Ended::Failed(e),
        }
        let mut down = Direction::new(upstream_fd, client_fd);
        down.pending = early;
        let mut last = Instant::now();
        // A socket that hung up while nothing is asked of it would wake every poll at once: it
        // is left out until it is asked something again (what the other side still sends to
        // it, or reading its end), which then tells. A reset ends the relay.
        let mut hung = [false; 2];
        loop {
            for direction in [&mut up, &mut down] {
                match direction.flush() {
                    Ok(true) => last = Instant::now(),
                    Ok(false) => (),
                    Err(e) => return Ended::Failed(e),
                }
            }
            if up.finished() && down.finished() {
                return Ended::Closed;
            }
            let timeout = match self.config.idle_timeout {
                t if t.is_zero() => -1,
                t => match t.checked_sub(last.elapsed()) {
                    Some(left) if !left.is_zero() => poll_ms(left),
                    _ => return Ended::Idle,
                },
            };
            let mut fds = [
                pollfd(client_fd, up.wants_read(), down.wants_write()),
                pollfd(upstream_fd, down.wants_read(), up.wants_write()),
                pollfd(self.closing.as_raw_fd(), true, false),
            ];
            for (fd, hung) in fds.iter_mut().zip(hung) {
                if hung && fd.events == 0 {
                    // poll(2) skips negative descriptors
                    fd.fd = -1;
                }
            }
            // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs for the whole call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Ended::Failed(e);
            }
            if fds[2].revents != 0 {
                return Ended::ShuttingDown;
            }
            for (fd, hung) in fds.iter().zip(&mut hung) {
                if fd.events != 0 {
                    continue;
                }
                if fd.revents & libc::POLLERR != 0 {
                    // a reset: nothing more can go either way on that socket
                    let reset = io::Error::new(io::ErrorKind::ConnectionReset, "a peer reset");
                    return Ended::Failed(reset);
                }
                *hung |= fd.revents & (libc::POLLHUP | libc::POLLNVAL) != 0;
            }
            let mut moved = false;
            for (direction, src) in [(&mut up, &fds[0]), (&mut down, &fds[1])] {
                if src.revents == 0 {
                    continue;
                }
                match direction.read() {
                    Ok(read) => moved |= read,
                    Err(e) => return Ended::Failed(e),
                }
            }
            if moved {
                last = Instant::now();
            }
        }
    }
}

/// Bytes read per `recv`: a relay moving a GiB each way through a Python echo function used
/// about 1.3 s of the gateway's CPU with 64 KiB, 1.5 to 2 s with 16 KiB (more calls).
const CHUNK: usize = 64 * 1024;

/// One direction of a relay: what was read from `src` and not yet written to `dst`.
struct Direction {
    src: RawFd,
    dst: RawFd,
    pending: Vec<u8>,
    /// Of `pending`, written already.
    sent: usize,
    /// `src` has ended its stream.
    src_done: bool,
    /// The end has been passed on to `dst`.
    dst_shut: bool,
    /// The last read filled the buffer: more is likely coming, and the buffer is kept.
    streaming: bool,
}

impl Direction {
    fn new(src: RawFd, dst: RawFd) -> Direction {
        Direction {
            src,
            dst,
            pending: Vec::new(),
            sent: 0,
            src_done: false,
            dst_shut: false,
            streaming: false,
        }
    }

    fn wants_read(&self) -> bool {
        !self.src_done && self.pending.is_empty()
    }

    fn wants_write(&self) -> bool {
        !self.pending.is_empty()
    }

    fn finished(&self) -> bool {
        self.src_done && self.pending.is_empty()
    }

    /// Reads what has arrived, if this direction has room for it; true if anything (an end
    /// of stream included) was read.
    fn read(&mut self) -> io::Result<bool> {
        if !self.wants_read() {
            return Ok(false);
        }
        self.pending.resize(CHUNK, 0);
        // SAFETY: `pending` is valid for writes of `CHUNK` bytes; the descriptor is open for
        // the whole relay.
        let n = unsafe {
            libc::recv(
                self.src,
                self.pending.as_mut_ptr().cast(),
                CHUNK,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            self.pending.clear();
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(false),
                _ => Err(e),
            };
        }
        self.pending.truncate(n as usize);
        self.src_done = n == 0;
        self.streaming = n as usize == CHUNK;
        Ok(true)
    }

    /// Writes what it can of what was read, and passes an end of stream on once all is
    /// written; true if anything was written.
    fn flush(&mut self) -> io::Result<bool> {
        let before = self.sent;
        while self.sent < self.pending.len() {
            let rest = &self.pending[self.sent..];
            // SAFETY: `rest` is valid for reads of `rest.len()` bytes; the descriptor is open
            // for the whole relay.
            let n = unsafe {
                libc::send(
                    self.dst,
                    rest.as_ptr().cast(),
                    rest.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => return Ok(self.sent > before),
                    io::ErrorKind::Interrupted => continue,
                    _ => return Err(e),
                }
            }
            self.sent += n as usize;
        }
        let wrote = self.sent > before;
        if self.streaming {
            self.pending.clear();
        } else {
            // a quiet connection holds no buffer
            self.pending = Vec::new();
        }
        self.sent = 0;
        if self.src_done && !self.dst_shut {
            shutdown(self.dst, libc::SHUT_WR);
            self.dst_shut = true;
        }
        Ok(wrote)
    }
}

/// What the client sent after its upgrade request and the server has read already; true if
/// the client has ended its stream too. The socket must be non-blocking.
fn take_buffered(client: &mut dyn Read, into: &mut Vec<u8>) -> io::Result<bool> {
    let mut chunk = [0u8; 4096];
    loop {
        match client.read(&mut chunk) {
            Ok(0) => return Ok(true),
            Ok(n) => into.extend_from_slice(&chunk[..n]),
            Err(e) => {
                return match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Ok(false),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                }
            }
        }
    }
}

fn pollfd(fd: RawFd, read: bool, write: bool) -> libc::pollfd {
    let mut events = 0;
    if read {
        events |= libc::POLLIN;
    }
    if write {
        events |= libc::POLLOUT;
    }
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Milliseconds for poll(2), rounded up so that a wait never ends before `d`.
fn poll_ms(d: Duration) -> libc::c_int {
    let ms = d.as_nanos().div_ceil(1_000_000);
    libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor open for the whole relay; F_GETFL/F_SETFL take no pointers.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A socket that is gone already answers `ENOTCONN`: nothing to do then.
fn shutdown(fd: RawFd, how: libc::c_int) {
    // SAFETY: shutdown on a descriptor open for the whole relay takes no pointers.
    let _ = unsafe { libc::shutdown(fd, how) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{Shutdown, TcpListener};

    /// A connected pair of loopback sockets.
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (b, _) = listener.accept().unwrap();
        (a, b)
    }

    fn tunnels(max: usize, idle: Duration) -> Arc<Tunnels> {
        Arc::new(
            Tunnels::new(UpgradeConfig {
                max_upgraded: max,
                idle_timeout: idle,
            })
            .unwrap(),
        )
    }

    /// Relays between `client` and `upstream` ends on a thread of its own.
    fn relay_on_thread(
        tunnels: &Arc<Tunnels>,
        buffered: &'static [u8],
        early: &[u8],
    ) -> (TcpStream, TcpStream, std::thread::JoinHandle<Ended>) {
        let (client, client_end) = pair();
        let (upstream_end, upstream) = pair();
        let tunnels = Arc::clone(tunnels);
        let early = early.to_vec();
        let relay = std::thread::spawn(move || {
            let mut held = Held(buffered);
            tunnels.relay(client_end.as_raw_fd(), &mut held, &upstream_end, early)
        });
        for s in [&client, &upstream] {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        }
        (client, upstream, relay)
    }

    /// What the server had read of the client's stream: then nothing more without waiting.
    struct Held(&'static [u8]);

    impl Read for Held {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.0.read(buf)
        }
    }

    fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        s.read_exact(&mut buf).unwrap();
        buf
    }

    #[test]
    fn bytes_pass_both_ways_buffered_ones_first_and_ends_are_passed_on() {
        let t = tunnels(4, Duration::from_secs(30));
        let (mut client, mut upstream, relay) = relay_on_thread(&t, b"early", b"hello");
        assert_eq!(read_n(&mut upstream, 5), b"early");
        assert_eq!(read_n(&mut client, 5), b"hello");
        let big = vec![7u8; 1 << 20];
        let writer = {
            let mut client = client.try_clone().unwrap();
            let big = big.clone();
            std::thread::spawn(move || client.write_all(&big).unwrap())
        };
        assert_eq!(read_n(&mut upstream, big.len()), big);
        writer.join().unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        upstream.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "the client's end reached the replica");
        // half-closed: the other direction still works
        upstream.write_all(b"bye").unwrap();
        assert_eq!(read_n(&mut client, 3), b"bye");
        upstream.shutdown(Shutdown::Write).unwrap();
        assert!(matches!(relay.join().unwrap(), Ended::Closed));
    }

    #[test]
    fn a_side_that_closed_first_still_gets_all_the_other_sends_after() {
        let t = tunnels(4, Duration::from_secs(30));
        let (mut client, mut upstream, relay) = relay_on_thread(&t, b"", b"");
        upstream.shutdown(Shutdown::Write).unwrap();
        assert_eq!(
            client.read(&mut [0; 8]).unwrap(),
            0,
            "the replica's end passed on"
        );
        // more than the sockets buffer while the replica does not read, then the end
        let big = vec![3u8; 8 << 20];
        let writer = {
            let mut client = client.try_clone().unwrap();
            let big = big.clone();
            std::thread::spawn(move || {
                client.write_all(&big).unwrap();
                client.shutdown(Shutdown::Write).unwrap();
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).unwrap();
        assert!(got == big, "{} of {} bytes arrived", got.len(), big.len());
        writer.join().unwrap();
        assert!(matches!(relay.join().unwrap(), Ended::Closed));
    }

    #[test]
    fn quiet_relays_end_after_the_idle_timeout_or_when_closed() {
        let t = tunnels(4, Duration::from_millis(100));
        let (mut client, _upstream, relay) = relay_on_thread(&t, b"", b"");
        assert!(matches!(relay.join().unwrap(), Ended::Idle));
        assert_eq!(
            client.read(&mut [0; 8]).unwrap(),
            0,
            "the client sees the close"
        );
        let t = tunnels(4, Duration::ZERO);
        let (_client, mut upstream, relay) = relay_on_thread(&t, b"", b"");
        t.close_all();
        assert!(matches!(relay.join().unwrap(), Ended::ShuttingDown));
        assert_eq!(
            upstream.read(&mut [0; 8]).unwrap(),
            0,
            "the replica sees the close"
        );
    }

    #[test]
    fn admissions_are_bounded_and_given_back() {
        let t = tunnels(2, Duration::ZERO);
        let a = t.admit().unwrap();
        let _b = t.admit().unwrap();
        assert!(t.admit().is_none());
        drop(a);
        assert_eq!(t.open(), 1);
        assert!(t.admit().is_some());
    }
}
