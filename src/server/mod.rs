//! The listening side: a tiny_http server and the worker pool that answers its requests.
//!
//! Workers wait in tiny_http's `recv`, where a worker woken for a readable keep-alive
//! connection reads the request head itself; requests read by tiny_http's connection threads
//! (slow heads, pipelining) come through its queue. A worker runs the whole request,
//! including any wait for a cold function. Waiting blocks the worker, as in the OpenFaaS
//! gateway, so the pool keeps a fixed core of workers that are not blocked and grows, up to a
//! bound, as workers block (see `pool`). A burst of requests waiting on a cold or slow function
//! therefore holds threads of its own while warm traffic still finds free workers; the scaler
//! bounds how many may wait, which keeps the pool's bound out of reach.

mod pool;

pub use pool::{blocking, Pool, PoolConfig};

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;

/// Pending connections the kernel may queue before accepting (capped by `net.core.somaxconn`).
const LISTEN_BACKLOG: libc::c_int = 4096;

/// Binds the listening socket with a deep accept queue. The standard library listens with a
/// backlog of 128: a burst of a few hundred connections (a load test, or every waiter of a cold
/// function released at once towards a provider) would overflow it, and the overflow costs
/// the clients seconds of SYN retransmits.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(addr)?;
    // SAFETY: the descriptor is valid and owned by `listener` for the whole call; listen(2) on
    // a listening socket only updates its backlog.
    let rc = unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) };
    if rc != 0 {
        log::warn!(
            "cannot raise the listen backlog: {}",
            io::Error::last_os_error()
        );
    }
    Ok(listener)
}
