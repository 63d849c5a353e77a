//! Per-connection socket halves and shared state.
//!
//! A connection uses a single socket (no `try_clone`, so no extra file descriptor and no
//! failure path at accept time). The read half, the write half and the shared state all hold
//! an `Arc` to it; the descriptor is closed when the last of them is dropped.

use std::convert::TryFrom;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::connection::Connection;
use crate::Limits;

/// Locks a mutex, ignoring poisoning (the protected data stays consistent in this crate:
/// it is only ever replaced as a whole).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `None` for a zero duration (meaning "disabled"), else the duration.
pub(crate) fn non_zero(d: Duration) -> Option<Duration> {
    if d.is_zero() {
        None
    } else {
        Some(d)
    }
}

/// The instant `d` from now, or `None` when `d` is zero (disabled) or too far away.
pub(crate) fn deadline_after(d: Duration) -> Option<Instant> {
    non_zero(d).and_then(|d| Instant::now().checked_add(d))
}

/// True for the error kinds a socket read timeout produces (`WouldBlock` on Unix,
/// `TimedOut` on Windows and from [`ReadHalf`] itself).
pub(crate) fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Decrements the server's open-connection counter when dropped.
pub(crate) struct ConnSlot(Arc<AtomicUsize>);

impl ConnSlot {
    /// Takes a slot (the caller has checked the limit).
    pub(crate) fn take(counter: &Arc<AtomicUsize>) -> ConnSlot {
        counter.fetch_add(1, Ordering::AcqRel);
        ConnSlot(counter.clone())
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// State shared by the connection thread, the requests and the response writers of one
/// connection.
pub(crate) struct ConnShared {
    pub(crate) sock: Arc<Connection>,
    pub(crate) limits: Arc<Limits>,
    /// Set once the connection must not be reused for another request.
    close: AtomicBool,
    /// Number of requests handed out whose response writer has not been dropped yet.
    outstanding: AtomicUsize,
    /// When the last response writer was dropped (start of the keep-alive idle period).
    last_done: Mutex<Instant>,
    /// Threads waiting in [`ConnShared::wait_responses`]; with none, a finished response
    /// wakes nobody (no syscall).
    waiters: AtomicUsize,
    /// Signalled (under `last_done`) when the last outstanding response is done.
    all_done: Condvar,
    /// The server's: set once it stops accepting (every response then closes its connection).
    draining: Arc<AtomicBool>,
    _slot: ConnSlot,
}

impl ConnShared {
    pub(crate) fn new(
        sock: Arc<Connection>,
        limits: Arc<Limits>,
        slot: ConnSlot,
        draining: Arc<AtomicBool>,
    ) -> ConnShared {
        ConnShared {
            sock,
            limits,
            close: AtomicBool::new(false),
            outstanding: AtomicUsize::new(0),
            last_done: Mutex::new(Instant::now()),
            waiters: AtomicUsize::new(0),
            all_done: Condvar::new(),
            draining,
            _slot: slot,
        }
    }

    pub(crate) fn mark_close(&self) {
        self.close.store(true, Ordering::Release);
    }

    pub(crate) fn must_close(&self) -> bool {
        self.close.load(Ordering::Acquire)
    }

    /// True once the server has stopped accepting: the connection closes after its next
    /// response.
    pub(crate) fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub(crate) fn response_started(&self) {
        self.outstanding.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn response_done(&self) {
        {
            let mut last = lock(&self.last_done);
            *last = Instant::now();
            self.outstanding.fetch_sub(1, Ordering::AcqRel);
        }
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.all_done.notify_all();
        }
    }

    /// Blocks until every response handed out so far has been written (its writer dropped).
    /// The next request of a connection is only read then: a client that pipelines gets its
    /// requests run one after another, in order, never several at once.
    pub(crate) fn wait_responses(&self) {
        if self.outstanding() == 0 {
            return;
        }
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let mut last = lock(&self.last_done);
        while self.outstanding() > 0 {
            last = self.all_done.wait(last).unwrap_or_else(|e| e.into_inner());
        }
        drop(last);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
    }

    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Acquire)
    }

    pub(crate) fn last_done(&self) -> Instant {
        *lock(&self.last_done)
    }

    pub(crate) fn shutdown(&self, how: Shutdown) {
        let _ = self.sock.shutdown(how);
    }
}

/// How reads on a [`ReadHalf`] time out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadMode {
    /// Each read may block at most this long (`None`: forever).
    Timeout(Option<Duration>),
    /// Reads fail with `TimedOut` once this instant has passed (`None`: never).
    Deadline(Option<Instant>),
    /// Reads take what has arrived and fail with `WouldBlock` if nothing has (Unix only;
    /// elsewhere this is `Timeout(None)`).
    NonBlocking,
}

/// Reading side of a connection. Applies the current [`ReadMode`] to every read, setting
/// the socket's receive timeout only when it changes by more than [`TIMEOUT_GRAIN`].
pub(crate) struct ReadHalf {
    sock: Arc<Connection>,
    mode: ReadMode,
    /// Receive timeout currently set on the socket (`None`: unknown).
    applied: Option<Option<Duration>>,
}

impl ReadHalf {
    pub(crate) fn new(sock: Arc<Connection>) -> ReadHalf {
        ReadHalf {
            sock,
            mode: ReadMode::Timeout(None),
            applied: None,
        }
    }

    pub(crate) fn set_mode(&mut self, mode: ReadMode) {
        self.mode = mode;
    }
}

impl Read for ReadHalf {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let timeout = match self.mode {
            #[cfg(unix)]
            ReadMode::NonBlocking => return recv_nonblocking(&self.sock, buf, 0),
            #[cfg(not(unix))]
            ReadMode::NonBlocking => None,
            ReadMode::Timeout(t) => t,
            ReadMode::Deadline(None) => None,
            ReadMode::Deadline(Some(at)) => {
                let now = Instant::now();
                if now >= at {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "read deadline"));
                }
                // never zero: a zero timeout is rejected by the socket API
                Some((at - now).max(Duration::from_millis(1)))
            }
        };
        if let Some(set) = timeout_to_set(self.applied, timeout) {
            self.sock.set_read_timeout(set)?;
            self.applied = Some(set);
        }
        match (&*self.sock).read(buf) {
            Err(e) if is_timeout(&e) => {
                Err(io::Error::new(io::ErrorKind::TimedOut, "read timed out"))
            }
            other => other,
        }
    }
}

/// True when something has arrived on the socket (data, or the client's end of stream) that
/// nobody has read yet; nothing is taken off the socket.
#[cfg(unix)]
pub(crate) fn has_arrived(sock: &Connection) -> bool {
    let mut byte = [0u8; 1];
    !matches!(
        recv_nonblocking(sock, &mut byte, libc::MSG_PEEK),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock
    )
}

/// One `recv` that does not wait, whatever the socket's own blocking mode and timeout, with
/// these `flags` besides.
#[cfg(unix)]
#[allow(unsafe_code)]
fn recv_nonblocking(sock: &Connection, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    use std::os::unix::io::AsRawFd;
    loop {
        // SAFETY: the descriptor stays open while `sock` is borrowed, and `buf` is valid for
        // writes of `buf.len()` bytes.
        let n = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | flags,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// How much longer than asked a receive timeout may be. A deadline leaves a slightly shorter
/// timeout for every read (the keep-alive wait between requests is one), so setting it exactly
/// would cost a syscall per request; within this grain the timeout already set is kept, and a
/// read may wait up to this much past its deadline.
pub(crate) const TIMEOUT_GRAIN: Duration = Duration::from_millis(10);

/// The receive timeout to set for a read that wants `wanted`, or `None` when the one the socket
/// has (`applied`, `None` if unknown) will do: at least `wanted` and at most a grain more.
fn timeout_to_set(
    applied: Option<Option<Duration>>,
    wanted: Option<Duration>,
) -> Option<Option<Duration>> {
    match (applied, wanted) {
        (Some(None), None) => None,
        (Some(Some(have)), Some(w)) if have >= w && have - w <= TIMEOUT_GRAIN => None,
        (_, Some(w)) => Some(Some(round_up(w))),
        (_, None) => Some(None),
    }
}

/// `d` rounded up to a whole number of grains.
fn round_up(d: Duration) -> Duration {
    let grain = TIMEOUT_GRAIN.as_nanos();
    let grains = d.as_nanos().div_ceil(grain);
    u64::try_from(grains * grain).map_or(Duration::MAX, Duration::from_nanos)
}

/// Writing side of a connection. Shuts the socket down for writing (sends FIN) when dropped,
/// which happens once the last response writer of the connection is gone.
pub(crate) struct WriteHalf {
    sock: Arc<Connection>,
}

impl WriteHalf {
    pub(crate) fn new(sock: Arc<Connection>) -> WriteHalf {
        WriteHalf { sock }
    }
}

impl Write for WriteHalf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match (&*self.sock).write(buf) {
            Err(e) if is_timeout(&e) => {
                Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out"))
            }
            other => other,
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        (&*self.sock).flush()
    }
}

impl Drop for WriteHalf {
    fn drop(&mut self) {
        let _ = self.sock.shutdown(Shutdown::Write);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_within_a_grain_above_the_wanted_one_is_kept() {
        let ms = Duration::from_millis;
        let set = Some(Some(ms(75_000)));
        assert_eq!(timeout_to_set(set, Some(ms(74_995))), None);
        assert_eq!(timeout_to_set(set, Some(ms(75_000))), None);
        // too long: the read could overshoot its deadline by more than a grain
        assert_eq!(
            timeout_to_set(set, Some(ms(74_980))),
            Some(Some(ms(74_980)))
        );
        // too short: the read would time out early
        let wanted = ms(75_000) + Duration::from_nanos(1);
        assert_eq!(timeout_to_set(set, Some(wanted)), Some(Some(ms(75_010))));
        assert_eq!(timeout_to_set(set, None), Some(None));
        assert_eq!(timeout_to_set(None, None), Some(None));
        assert_eq!(timeout_to_set(Some(None), None), None);
        assert_eq!(timeout_to_set(None, Some(ms(3))), Some(Some(ms(10))));
    }
}
