//! The idle set: keep-alive connections waiting for their next request sit in one epoll set
//! instead of each holding a thread blocked in `read`.
//!
//! The threads calling `Server::recv` wait in that set themselves (leader/follower style): the
//! one woken for a readable connection reads the request head on the spot when it has fully
//! arrived. A request on a kept-alive connection then costs the server one thread wake-up,
//! with nothing handed from thread to thread, and a thousand idle connections cost no threads
//! at all. A request head that arrives in pieces waits here too, what came of it kept with the
//! connection, so slow clients cost no threads either. One thread only enforces the timeouts
//! (answering `408` to heads that are late). Connections that lend their reading side to a
//! request body or are ending are served by a connection thread as before, and come back
//! here once they wait again.

use std::collections::HashMap;
use std::convert::TryFrom;
use std::io;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::client::ClientConnection;
use crate::util::conn::{lock, non_zero};
use crate::Limits;

/// The token of the eventfd that wakes a thread waiting in [`Idle::wait_one`] when work is
/// queued for it; connection tokens start at 1.
const WAKE_TOKEN: u64 = 0;

/// What a wait in [`Idle::wait_one`] gave.
pub(crate) enum Polled {
    /// A parked connection became readable; it is the waiter's now.
    Ready(Box<ClientConnection>),
    /// Woken for queued work (or for nothing): look at the queue.
    Woken,
    TimedOut,
}

pub(crate) struct Idle {
    epoll: OwnedFd,
    /// Counts queued work not yet noticed by a waiter (a semaphore: one read, one unit).
    wake: OwnedFd,
    parked: Mutex<HashMap<u64, Box<ClientConnection>>>,
    closed: AtomicBool,
    /// How often idle connections are checked against their timeouts.
    sweep_every: Duration,
}

impl Idle {
    pub(crate) fn new(limits: &Limits) -> io::Result<Idle> {
        // SAFETY: plain syscall; the descriptor returned is owned by the `OwnedFd` below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        let flags = libc::EFD_NONBLOCK | libc::EFD_CLOEXEC | libc::EFD_SEMAPHORE;
        // SAFETY: plain syscall; the descriptor returned is owned by the `OwnedFd` below.
        let fd = unsafe { libc::eventfd(0, flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let wake = unsafe { OwnedFd::from_raw_fd(fd) };
        // one waiter woken per unit of work, not all of them
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLEXCLUSIVE) as u32,
            u64: WAKE_TOKEN,
        };
        // SAFETY: both descriptors are open and owned here; `event` is a valid epoll_event.
        let rc = unsafe {
            libc::epoll_ctl(
                epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                wake.as_raw_fd(),
                &mut event,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Idle {
            epoll,
            wake,
            parked: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            sweep_every: sweep_interval(limits),
        })
    }

    /// Parks `client` until its socket is readable; gives it back if it cannot be watched.
    pub(crate) fn park(
        &self,
        mut client: Box<ClientConnection>,
    ) -> Result<(), Box<ClientConnection>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(client);
        }
        let fd = client.raw_fd();
        let token = client.token();
        let op = if client.watch() {
            libc::EPOLL_CTL_MOD
        } else {
            libc::EPOLL_CTL_ADD
        };
        {
            let mut parked = lock(&self.parked);
            // the server stops accepting: a connection with nothing going on is closed instead
            // (checked under the lock that `drain` takes, so that none slips past both)
            if client.draining() && client.quiet() {
                drop(parked);
                self.forget(client);
                return Ok(());
            }
            // in the set before it is armed, so that an event always finds it
            parked.insert(token, client);
        }
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32,
            u64: token,
        };
        // SAFETY: both descriptors are open (the socket is owned by `client`, now in `parked`),
        // and `event` is a valid epoll_event.
        let rc = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut event) };
        if rc == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        match lock(&self.parked).remove(&token) {
            Some(client) => {
                log::debug!("Cannot watch an idle connection: {}", error);
                Err(client)
            }
            // not armed, so nothing else can have taken it
            None => Ok(()),
        }
    }

    /// Waits on the calling thread, up to `timeout`, for a parked connection to become
    /// readable or for work to be queued (see [`Idle::wake`]). One event per call: the kernel
    /// wakes another waiter for the next one, so ready connections spread over the waiting
    /// threads without being handed from one to another.
    pub(crate) fn wait_one(&self, timeout: Duration) -> Polled {
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        let ms = i32::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
        // SAFETY: `event` has room for the one event asked for; the descriptor is open.
        let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), &mut event, 1, ms) };
        if n < 0 {
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                log::error!("Waiting on idle connections failed: {}", error);
                std::thread::sleep(Duration::from_millis(10));
            }
            return Polled::Woken;
        }
        if n == 0 {
            return Polled::TimedOut;
        }
        let token = event.u64;
        if token == WAKE_TOKEN {
            let mut unit = [0u8; 8];
            // SAFETY: `unit` is 8 writable bytes, as an eventfd read needs; the descriptor is
            // open. Another waiter may have taken the unit first (EAGAIN): nothing to do.
            unsafe { libc::read(self.wake.as_raw_fd(), unit.as_mut_ptr().cast(), unit.len()) };
            return Polled::Woken;
        }
        match lock(&self.parked).remove(&token) {
            Some(client) => Polled::Ready(client),
            None => Polled::Woken,
        }
    }

    /// Wakes one thread waiting in [`Idle::wait_one`] (or the next one to wait).
    pub(crate) fn wake(&self) {
        let unit = 1u64.to_ne_bytes();
        // SAFETY: `unit` is 8 readable bytes, as an eventfd write needs; the descriptor is open.
        unsafe { libc::write(self.wake.as_raw_fd(), unit.as_ptr().cast(), unit.len()) };
    }

    /// Closes the connections idle for too long, every sweep interval, until `close` is
    /// called; then closes the ones still parked.
    pub(crate) fn run_sweeps(&self) {
        while !self.closed.load(Ordering::Acquire) {
            std::thread::sleep(self.sweep_every);
            self.sweep();
        }
        let left: Vec<Box<ClientConnection>> = lock(&self.parked).drain().map(|(_, c)| c).collect();
        drop(left);
    }

    /// Closes the connections whose idle timeout has passed.
    fn sweep(&self) {
        let now = Instant::now();
        let expired: Vec<Box<ClientConnection>> = {
            let mut parked = lock(&self.parked);
            let tokens: Vec<u64> = parked
                .iter()
                .filter(|(_, c)| c.idle_expired(now))
                .map(|(&t, _)| t)
                .collect();
            tokens.iter().filter_map(|t| parked.remove(t)).collect()
        };
        for mut client in expired {
            // a late head is answered 408, and the connection waits here until it can close
            if client.answer_late() {
                if let Err(client) = self.park(client) {
                    self.forget(client);
                }
            } else {
                self.forget(client);
            }
        }
    }

    /// Closes every parked connection with nothing going on (see [`ClientConnection::quiet`]):
    /// the server stops accepting, and their clients should go elsewhere. The others (a
    /// response being written, a request arriving) are closed after their next response.
    pub(crate) fn drain(&self) {
        let quiet: Vec<Box<ClientConnection>> = {
            let mut parked = lock(&self.parked);
            let tokens: Vec<u64> = parked
                .iter_mut()
                .filter_map(|(&t, c)| c.quiet().then_some(t))
                .collect();
            tokens.iter().filter_map(|t| parked.remove(t)).collect()
        };
        for client in quiet {
            self.forget(client);
        }
    }

    /// Connections parked here now that wait for their next request (not those with part of
    /// a request head arrived: see [`ClientConnection::receiving`]).
    pub(crate) fn parked(&self) -> usize {
        lock(&self.parked)
            .values()
            .filter(|c| !c.receiving())
            .count()
    }

    /// Closes the connection that has waited idle the longest between two requests (see
    /// [`ClientConnection::idle_since`]), quietly; false if there is none.
    pub(crate) fn reclaim_oldest(&self) -> bool {
        let oldest = {
            let mut parked = lock(&self.parked);
            let mut candidates: Vec<(Instant, u64)> = parked
                .iter_mut()
                .filter_map(|(&t, c)| c.idle_since().map(|since| (since, t)))
                .collect();
            candidates.sort_unstable();
            // oldest first; one with a request just arrived is left to the thread woken for it
            let token = candidates
                .into_iter()
                .map(|(_, t)| t)
                .find(|t| parked.get(t).is_some_and(|c| c.nothing_arrived()));
            token.and_then(|t| parked.remove(&t))
        };
        match oldest {
            Some(client) => {
                log::debug!("Connection limit reached; closing the connection idle the longest");
                self.forget(client);
                true
            }
            None => false,
        }
    }

    /// Takes a connection out of the set and closes it.
    fn forget(&self, client: Box<ClientConnection>) {
        // SAFETY: the socket is still open (owned by `client`); removing it from the set is
        // harmless even if it was not in it.
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                client.raw_fd(),
                std::ptr::null_mut(),
            );
        }
        drop(client);
    }

    /// Stops `run` (within one sweep interval); the connections still parked are closed.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

/// An eighth of the shortest idle timeout, between 10 ms and 1 s: a connection is closed at
/// most that late.
fn sweep_interval(limits: &Limits) -> Duration {
    let shortest = [limits.header_timeout, limits.keep_alive_timeout]
        .iter()
        .filter_map(|&d| non_zero(d))
        .min()
        .unwrap_or(Duration::from_secs(8));
    (shortest / 8).clamp(Duration::from_millis(10), Duration::from_secs(1))
}
