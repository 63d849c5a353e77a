//! The idle set: keep-alive connections waiting for their next request sit in one epoll set
//! instead of each holding a thread blocked in `read`.
//!
//! When one becomes readable it is queued for `Server::recv`, whose caller reads the request
//! head itself when it has fully arrived. A request on a kept-alive connection then costs the
//! server one thread wake-up instead of two (the connection thread's, then the worker's), and
//! a thousand idle connections cost no threads at all. Connections that send slowly, lend
//! their reading side to a request body or are ending are served by a connection thread as
//! before, and come back here once they wait idle again.

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

/// Events taken per `epoll_wait`.
const BATCH: usize = 64;

pub(crate) struct Idle {
    epoll: OwnedFd,
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
        Ok(Idle {
            epoll,
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
        // in the set before it is armed, so that an event always finds it
        lock(&self.parked).insert(token, client);
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

    /// Hands the connections that became readable to `ready`, a batch per wake-up, and closes
    /// the ones idle for too long, until `close` is called.
    pub(crate) fn run(&self, mut ready: impl FnMut(Vec<Box<ClientConnection>>)) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; BATCH];
        let wait_ms = i32::try_from(self.sweep_every.as_millis()).unwrap_or(i32::MAX);
        let mut swept = Instant::now();
        while !self.closed.load(Ordering::Acquire) {
            // SAFETY: `events` has room for BATCH entries, and the epoll descriptor is open.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    BATCH as i32,
                    wait_ms,
                )
            };
            if n < 0 {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    log::error!("Waiting on idle connections failed: {}", error);
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            let woken: Vec<Box<ClientConnection>> = {
                let mut parked = lock(&self.parked);
                let tokens = events.iter().take(n as usize).map(|e| e.u64);
                tokens.filter_map(|t| parked.remove(&t)).collect()
            };
            if !woken.is_empty() {
                ready(woken);
            }
            if swept.elapsed() >= self.sweep_every {
                self.sweep();
                swept = Instant::now();
            }
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
        for client in expired {
            // SAFETY: the socket is still open (owned by `client`); removing it from the set
            // is harmless even if it was not in it.
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
