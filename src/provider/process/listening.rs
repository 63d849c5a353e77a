//! Whether anything listens on a loopback port, asked of the kernel without connecting.
//!
//! A starting replica is probed often (see `readiness`), for as long as it takes to start.
//! Connecting to find out costs a socket, a handshake or a reset, and, once the replica
//! listens, a connection it must accept and drop. Linux answers the question itself: one
//! `sock_diag` netlink request looks the port up the way an incoming packet would be (so a
//! listener on `0.0.0.0` or a dual-stack `::` counts, as it would for a connection) and
//! answers with the socket or `ENOENT`, in a few microseconds and without touching the
//! replica. Where netlink is not to be had (another OS, a sandbox that refuses it, a kernel
//! without `inet_diag`), [`Query::open`] says so and the caller connects instead.

use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `NLMSG_ERROR` (linux/netlink.h).
const NLMSG_ERROR: u16 = 2;
/// `TCP_LISTEN` (include/net/tcp_states.h).
const TCP_LISTEN: u8 = 10;
/// A netlink header (16 bytes) and an `inet_diag_req_v2` (56).
const REQUEST_LEN: usize = 72;

/// An open `NETLINK_SOCK_DIAG` socket, for one prober.
#[derive(Debug)]
pub(super) struct Query {
    fd: OwnedFd,
}

impl Query {
    /// A query socket, or `None` when the kernel cannot answer (then connect instead). The
    /// first call checks once, against a listener of its own, that the answers are right.
    pub(super) fn open() -> Option<Query> {
        static WORKS: OnceLock<bool> = OnceLock::new();
        if !*WORKS.get_or_init(self_check) {
            return None;
        }
        Query::open_unchecked().ok()
    }

    fn open_unchecked() -> io::Result<Query> {
        // SAFETY: plain socket creation; the descriptor is owned at once below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let timeout = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: valid descriptor; the option value is a timeval of the size given. An answer
        // never takes long, but a receive must not hang a prober should it never come.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Query { fd })
    }

    /// Whether a TCP socket listens on 127.0.0.1:`port`.
    pub(super) fn listens(&self, port: u16) -> io::Result<bool> {
        let request = request(port);
        // SAFETY: the buffer is valid for its length; netlink datagrams go to the kernel
        // without an address.
        let sent = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut answer = [0u8; 512];
        loop {
            // SAFETY: the buffer is valid and writable for its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    answer.as_mut_ptr().cast(),
                    answer.len(),
                    0,
                )
            };
            if n >= 0 {
                return parse(&answer[..n.unsigned_abs()]);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// One lookup of the IPv4 TCP socket 127.0.0.1:`port` seen from 0.0.0.0:0, which matches a
/// listener only.
fn request(port: u16) -> [u8; REQUEST_LEN] {
    let mut m = [0u8; REQUEST_LEN];
    m[0..4].copy_from_slice(&(REQUEST_LEN as u32).to_ne_bytes());
    m[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    // inet_diag_req_v2: family, protocol, extensions, pad, states.
    m[16] = libc::AF_INET as u8;
    m[17] = libc::IPPROTO_TCP as u8;
    m[20..24].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    // inet_diag_sockid: source port and address (network order); the rest zero but the
    // cookie, which must say "none" for a lookup by address.
    m[24..26].copy_from_slice(&port.to_be_bytes());
    m[28..32].copy_from_slice(&Ipv4Addr::LOCALHOST.octets());
    m[64..72].copy_from_slice(&[0xff; 8]);
    m
}

/// The answer: a socket found (listening), `ENOENT` (nothing there), or another error.
fn parse(answer: &[u8]) -> io::Result<bool> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "short sock_diag answer");
    let kind = answer.get(4..6).ok_or_else(bad)?;
    match u16::from_ne_bytes([kind[0], kind[1]]) {
        SOCK_DIAG_BY_FAMILY => Ok(*answer.get(17).ok_or_else(bad)? == TCP_LISTEN),
        NLMSG_ERROR => {
            let code = answer.get(16..20).ok_or_else(bad)?;
            match -i32::from_ne_bytes([code[0], code[1], code[2], code[3]]) {
                libc::ENOENT => Ok(false),
                errno => Err(io::Error::from_raw_os_error(errno)),
            }
        }
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected sock_diag answer of type {other}"),
        )),
    }
}

/// True when the kernel finds a listener of ours and, once it is closed, finds nothing.
fn self_check() -> bool {
    let checked = (|| -> io::Result<bool> {
        let query = Query::open_unchecked()?;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        let seen = query.listens(port)?;
        drop(listener);
        Ok(seen && !query.listens(port)?)
    })();
    match checked {
        Ok(true) => true,
        Ok(false) => {
            log::info!("sock_diag answers wrongly here; readiness is probed by connecting");
            false
        }
        Err(e) => {
            log::info!("sock_diag unavailable ({e}); readiness is probed by connecting");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    #[test]
    fn a_listener_is_seen_and_a_closed_one_is_not() {
        let query = Query::open().expect("sock_diag works on the Linux this runs on");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(query.listens(port).unwrap());
        drop(listener);
        assert!(!query.listens(port).unwrap());
    }

    #[test]
    fn a_wildcard_listener_counts_and_a_connected_client_does_not() {
        let query = Query::open().expect("sock_diag works on the Linux this runs on");
        let wildcard = TcpListener::bind("0.0.0.0:0").unwrap();
        assert!(query
            .listens(wildcard.local_addr().unwrap().port())
            .unwrap());
        let client =
            TcpStream::connect(("127.0.0.1", wildcard.local_addr().unwrap().port())).unwrap();
        let client_port = client.local_addr().unwrap().port();
        assert!(
            !query.listens(client_port).unwrap(),
            "a client socket is no listener"
        );
    }

    #[test]
    fn garbled_answers_are_errors_not_answers() {
        assert!(parse(&[0; 3]).is_err());
        let mut error = [0u8; 20];
        error[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        error[16..20].copy_from_slice(&(-libc::EACCES).to_ne_bytes());
        assert!(parse(&error).is_err());
        error[16..20].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());
        assert!(!parse(&error).unwrap());
    }
}
