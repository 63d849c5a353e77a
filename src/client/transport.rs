//! The TCP connector and transport behind the outgoing agent, cheaper per pooled call than
//! ureq's own.
//!
//! ureq probes a pooled connection twice per call (when it is taken from the pool and when it
//! goes back), each time with three syscalls: make the socket non-blocking, try to read a byte,
//! make it blocking again. [`Transport::is_open`] here asks the same question with one
//! `recv(MSG_PEEK | MSG_DONTWAIT)`, which neither changes the socket's mode nor consumes a byte,
//! and only when the connection is taken from the pool: whatever the probe on its way back
//! would have seen (bytes the peer sent unasked, or its close) is still there to be seen then.
//!
//! ureq also sets the receive timeout before every response, because the time left until the
//! response deadline is a little shorter each call. Here a timeout is set rounded up to
//! [`TIMEOUT_GRAIN`] and left alone while the time wanted stays within that grain below it, so
//! a warm connection keeps its timeout from call to call. The price: a read may wait up to one
//! grain past its deadline.
//!
//! A function that writes its response head and body in two writes without `TCP_NODELAY`
//! (Python's `http.server` does) holds the body back under Nagle's algorithm until the head is
//! acknowledged, and Linux delays that ACK on a keep-alive connection by up to 40 ms: every warm
//! call waited that long. So when a response is not complete after its first read, the socket
//! is put in quick-ACK mode before reading on, which sends the pending ACK at once and releases
//! the body. A response that came whole (one write, or a function with `TCP_NODELAY`) costs no
//! extra call; quick-ACK mode does not last, so it is asked for again each time it is needed.
//!
//! ureq does not retry, and does not say whether a call went out on a pooled connection. The
//! transport knows: a connection handed out by the pool has passed the probe in
//! [`Transport::is_open`]. When such a connection is reset, or closed, before the first byte of
//! the answer arrived, the peer most likely closed it while it sat idle (a keep-alive timeout,
//! a replica that died): the error says so as a [`StaleConnection`], for the caller to decide
//! whether the request may be sent again. A fresh connection failing the same way is a real
//! failure and is reported as it is.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Weak};
use std::time::Duration;

use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, LazyBuffers, NextTimeout, ShutdownHandle, Transport,
};
use ureq::{Error, Timeout};

/// How much longer than asked a socket timeout may be, so that it need not be set again on
/// every call.
pub const TIMEOUT_GRAIN: Duration = Duration::from_millis(10);

/// Opens plain TCP connections to the resolved addresses, in order, first success wins.
#[derive(Debug, Default)]
pub struct PeekingTcpConnector;

impl Connector for PeekingTcpConnector {
    type Out = PeekingTcp;

    fn connect(
        &self,
        details: &ConnectionDetails,
        _chained: Option<()>,
    ) -> Result<Option<PeekingTcp>, Error> {
        if details.needs_tls() {
            return Err(Error::BadUri(format!(
                "{}: https is not supported by this build",
                details.uri
            )));
        }
        let stream = connect_any(details)?;
        if details.config.no_delay() {
            stream.set_nodelay(true)?;
        }
        let config = details.config;
        let transport = PeekingTcp {
            stream: Arc::new(stream),
            buffers: LazyBuffers::new(config.input_buffer_size(), config.output_buffer_size()),
            read_timeout: None,
            write_timeout: None,
            used_since_probe: false,
            reads_since_request: 0,
            pooled: false,
            answered: false,
        };
        (details.register_shutdown)(Arc::downgrade(&transport.stream) as Weak<dyn ShutdownHandle>)?;
        Ok(Some(transport))
    }
}

/// Tries each address with the whole connect timeout; reports the last failure.
fn connect_any(details: &ConnectionDetails) -> Result<TcpStream, Error> {
    let timeout = details.timeout.not_zero().map(|t| *t);
    let mut last = None;
    for addr in details.addrs.iter() {
        match connect_one(addr, timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::ConnectionRefused).into()))
}

fn connect_one(addr: &SocketAddr, timeout: Option<Duration>) -> Result<TcpStream, Error> {
    let connected = match timeout {
        Some(t) => TcpStream::connect_timeout(addr, t),
        None => TcpStream::connect(addr),
    };
    connected.map_err(|e| match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Error::Timeout(Timeout::Connect),
        _ => e.into(),
    })
}

/// A TCP connection with ureq's buffers, a one-syscall liveness probe and sticky timeouts.
pub struct PeekingTcp {
    /// Shared (weakly) with the agent, which may shut it down from another thread.
    stream: Arc<TcpStream>,
    buffers: LazyBuffers,
    /// The receive timeout the socket has now, as last set.
    read_timeout: Option<Duration>,
    /// The send timeout the socket has now, as last set.
    write_timeout: Option<Duration>,
    /// Whether the connection carried a call since it was last probed: then the next probe is
    /// the one as it goes back to the pool, which is left to the probe when it is taken out.
    used_since_probe: bool,
    /// Reads since the last request went out, counted up to two: a second read means the
    /// response did not come whole, and quick-ACK mode is asked for before it.
    reads_since_request: u8,
    /// Whether the connection came out of the pool for the call it carries.
    pooled: bool,
    /// Whether any byte of the answer to the call it carries has arrived.
    answered: bool,
}

impl std::fmt::Debug for PeekingTcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeekingTcp")
            .field("peer", &self.stream.peer_addr().ok())
            .finish()
    }
}

/// The timeout this call wants, or the error when none is left.
fn wanted(timeout: NextTimeout) -> Result<Option<Duration>, Error> {
    if timeout.after.is_zero() {
        return Err(Error::Timeout(timeout.reason));
    }
    Ok(timeout.not_zero().map(|t| *t))
}

/// The timeout to give the socket for `wanted`, or `None` when the one it has will do: at
/// least `wanted` and at most one grain more.
fn timeout_to_set(current: Option<Duration>, wanted: Option<Duration>) -> Option<Option<Duration>> {
    match (current, wanted) {
        (None, None) => None,
        (Some(c), Some(w)) if c >= w && c - w <= TIMEOUT_GRAIN => None,
        (_, Some(w)) => Some(Some(round_up(w))),
        (Some(_), None) => Some(None),
    }
}

/// `d` rounded up to a whole number of grains.
fn round_up(d: Duration) -> Duration {
    let grain = TIMEOUT_GRAIN.as_nanos();
    let grains = d.as_nanos().div_ceil(grain);
    u64::try_from(grains * grain).map_or(Duration::MAX, Duration::from_nanos)
}

/// Maps a failed socket call to ureq's error, a timeout to the reason the deadline had.
fn io_error(e: io::Error, reason: Timeout) -> Error {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Error::Timeout(reason),
        _ => e.into(),
    }
}

/// A pooled connection that was reset or closed before any byte of the answer arrived: the
/// request may not have reached the peer at all (see the module docs).
#[derive(Debug)]
pub struct StaleConnection(io::Error);

impl std::fmt::Display for StaleConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pooled connection closed before any answer: {}", self.0)
    }
}

impl std::error::Error for StaleConnection {}

/// Whether an I/O failure is the peer having closed or reset the connection.
fn is_closed(kind: io::ErrorKind) -> bool {
    use io::ErrorKind::*;
    matches!(
        kind,
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
    )
}

/// `e` as a [`StaleConnection`] when the peer closed a connection that may be `stale`;
/// anything else as it is.
fn stale_or(stale: bool, e: io::Error) -> io::Error {
    if stale && is_closed(e.kind()) {
        io::Error::new(e.kind(), StaleConnection(e))
    } else {
        e
    }
}

impl PeekingTcp {
    /// Whether a failure now would be that of a stale connection: it came out of the pool and
    /// nothing of the answer has arrived.
    fn may_be_stale(&self) -> bool {
        self.pooled && !self.answered
    }

    fn set_read_timeout(&mut self, wanted: Option<Duration>) -> io::Result<()> {
        if let Some(new) = timeout_to_set(self.read_timeout, wanted) {
            self.stream.set_read_timeout(new)?;
            self.read_timeout = new;
        }
        Ok(())
    }

    fn set_write_timeout(&mut self, wanted: Option<Duration>) -> io::Result<()> {
        if let Some(new) = timeout_to_set(self.write_timeout, wanted) {
            self.stream.set_write_timeout(new)?;
            self.write_timeout = new;
        }
        Ok(())
    }
}

impl Transport for PeekingTcp {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        self.used_since_probe = true;
        self.reads_since_request = 0;
        let timeout = timeout.for_write();
        self.set_write_timeout(wanted(timeout)?)?;
        let stale = self.may_be_stale();
        let output = &self.buffers.output()[..amount];
        (&*self.stream)
            .write_all(output)
            .map_err(|e| io_error(stale_or(stale, e), timeout.reason))
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        self.used_since_probe = true;
        if self.reads_since_request == 1 {
            quick_ack(&self.stream);
        }
        self.reads_since_request = self.reads_since_request.saturating_add(1).min(2);
        let timeout = timeout.for_read();
        self.set_read_timeout(wanted(timeout)?)?;
        let stale = self.may_be_stale();
        let input = self.buffers.input_append_buf();
        let amount = read_retrying(&self.stream, input)
            .and_then(|n| match n {
                // ureq would call this end "peer disconnected"; said here, it can say stale.
                0 if stale => Err(io::ErrorKind::UnexpectedEof.into()),
                n => Ok(n),
            })
            .map_err(|e| io_error(stale_or(stale, e), timeout.reason))?;
        self.answered |= amount > 0;
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    /// Open when nothing is waiting to be read and the peer has not closed: a byte waiting
    /// means the last response was not read to its end or the peer sent something unasked,
    /// and either way the connection must not carry another call. Asked as the connection goes
    /// back to the pool (right after a call), it says yes without looking: the probe when it is
    /// taken out again looks at the same socket, later.
    fn is_open(&mut self) -> bool {
        if std::mem::take(&mut self.used_since_probe) {
            return true;
        }
        // Taken out of the pool for a new call (ureq probes only on the way in and out).
        self.pooled = true;
        self.answered = false;
        peek_would_block(&self.stream)
    }
}

/// Reads once, retrying a read interrupted by a signal (Linux does not restart socket reads
/// that have a timeout); a retry starts the timeout again, so a signal can stretch it.
fn read_retrying(mut stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match stream.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            result => return result,
        }
    }
}

/// Asks Linux to acknowledge what arrives next at once rather than after the delayed-ACK
/// timer. Failing only costs speed, so a failure is not an error.
pub fn quick_ack(stream: &TcpStream) {
    let on: libc::c_int = 1;
    // SAFETY: the descriptor is open for as long as `stream` is borrowed; the option value is a
    // valid c_int of the size passed.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// One non-blocking peek: true only when it would block (nothing to read, not closed).
fn peek_would_block(stream: &TcpStream) -> bool {
    let mut byte = 0u8;
    // SAFETY: the descriptor is open for as long as `stream` is borrowed, and the buffer is one
    // valid, writable byte.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn a_timeout_within_a_grain_above_the_wanted_one_is_kept() {
        let ms = Duration::from_millis;
        assert_eq!(timeout_to_set(Some(ms(60_000)), Some(ms(59_995))), None);
        assert_eq!(timeout_to_set(Some(ms(60_000)), Some(ms(60_000))), None);
        assert_eq!(
            timeout_to_set(Some(ms(60_000)), Some(ms(59_980))),
            Some(Some(ms(59_980)))
        );
        let wanted = ms(60_000) + Duration::from_nanos(1);
        assert_eq!(
            timeout_to_set(Some(ms(60_000)), Some(wanted)),
            Some(Some(ms(60_010)))
        );
        assert_eq!(timeout_to_set(Some(ms(5)), None), Some(None));
        assert_eq!(timeout_to_set(None, None), None);
        assert_eq!(timeout_to_set(None, Some(ms(3))), Some(Some(ms(10))));
    }

    fn quick_ack_mode(stream: &TcpStream) -> libc::c_int {
        let mut value: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: valid descriptor, and a c_int buffer of the length given.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        value
    }

    #[test]
    fn quick_ack_takes_a_connection_out_of_delayed_ack_mode() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let off: libc::c_int = 0;
        // SAFETY: as in `quick_ack`.
        unsafe {
            libc::setsockopt(
                client.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                (&off as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        assert_eq!(
            quick_ack_mode(&client),
            0,
            "delayed ACKs, as on a busy connection"
        );
        quick_ack(&client);
        assert_eq!(quick_ack_mode(&client), 1);
    }

    #[test]
    fn the_probe_sees_idle_waiting_and_closed_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        assert!(peek_would_block(&client), "idle");
        server.write_all(b"x").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(!peek_would_block(&client), "a byte waiting");
        assert!(!peek_would_block(&client), "peeking does not consume it");
        let mut byte = [0u8];
        (&client).read_exact(&mut byte).unwrap();
        assert!(peek_would_block(&client), "idle again");
        drop(server);
        std::thread::sleep(Duration::from_millis(50));
        assert!(!peek_would_block(&client), "closed by the peer");
    }
}
