//! Which loopback ports have a listener, asked of the kernel without connecting.
//!
//! Starting replicas are looked at often (see `watch`), for as long as they take to start.
//! Connecting to find out costs a socket, a handshake or a reset, and, once the replica
//! listens, a connection it must accept and drop. Linux answers the question itself: a
//! `sock_diag` netlink dump lists the listening TCP sockets (the kernel walks its listening
//! table only, however many connections are open), in microseconds and without touching any
//! replica. Where netlink is not to be had (another OS, a sandbox that refuses it, a kernel
//! without `inet_diag`), [`Query::open`] says so and the caller connects instead.

use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `NLMSG_ERROR` (linux/netlink.h).
const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE` (linux/netlink.h): the end of a dump.
const NLMSG_DONE: u16 = 3;
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

    /// Adds to `ports` every port on which a TCP socket listens that a connection to
    /// 127.0.0.1 would reach: bound to 127.0.0.1 or 0.0.0.0, or a dual-stack `::`. One dump
    /// per address family, however many ports the caller is waiting for: the kernel walks its
    /// listening sockets only, not the established ones.
    pub(super) fn listening_ports(&self, ports: &mut HashSet<u16>) -> io::Result<()> {
        for family in [libc::AF_INET, libc::AF_INET6] {
            self.send(&dump_request(family))?;
            self.read_dump(ports)?;
        }
        Ok(())
    }

    fn send(&self, request: &[u8]) -> io::Result<()> {
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
        Ok(())
    }

    /// Reads a dump's datagrams up to `NLMSG_DONE`, each holding one message per socket.
    fn read_dump(&self, ports: &mut HashSet<u16>) -> io::Result<()> {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            let n = self.receive(&mut buffer)?;
            let mut rest = &buffer[..n];
            while let Some((kind, message, after)) = next_message(rest)? {
                match kind {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => return Err(error_of(message)),
                    SOCK_DIAG_BY_FAMILY => {
                        if let Some(port) = reachable_listener(message) {
                            ports.insert(port);
                        }
                    }
                    _ => {}
                }
                rest = after;
            }
        }
    }

    fn receive(&self, buffer: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: the buffer is valid and writable for its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    0,
                )
            };
            if n >= 0 {
                return Ok(n.unsigned_abs());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// A dump of one family's listening TCP sockets.
fn dump_request(family: libc::c_int) -> [u8; REQUEST_LEN] {
    let mut m = [0u8; REQUEST_LEN];
    m[0..4].copy_from_slice(&(REQUEST_LEN as u32).to_ne_bytes());
    m[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    m[6..8].copy_from_slice(&flags.to_ne_bytes());
    m[16] = family as u8;
    m[17] = libc::IPPROTO_TCP as u8;
    m[20..24].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    m
}

/// A netlink message's type, its payload and what follows it in the datagram.
type Message<'a> = (u16, &'a [u8], &'a [u8]);

/// The first netlink message of `datagram`.
fn next_message(datagram: &[u8]) -> io::Result<Option<Message<'_>>> {
    if datagram.is_empty() {
        return Ok(None);
    }
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "truncated netlink message");
    let header = datagram.get(..16).ok_or_else(bad)?;
    let len = u32::from_ne_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let kind = u16::from_ne_bytes([header[4], header[5]]);
    let message = datagram.get(16..len).ok_or_else(bad)?;
    // Messages are aligned to four bytes; the last one may end the datagram unpadded.
    let next = len.next_multiple_of(4).min(datagram.len());
    Ok(Some((kind, message, &datagram[next..])))
}

fn error_of(message: &[u8]) -> io::Error {
    match message.get(..4) {
        Some(code) => {
            io::Error::from_raw_os_error(-i32::from_ne_bytes([code[0], code[1], code[2], code[3]]))
        }
        None => io::Error::new(io::ErrorKind::InvalidData, "short netlink error"),
    }
}

/// The port of a listener in an `inet_diag_msg` if a connection to 127.0.0.1 reaches it.
fn reachable_listener(message: &[u8]) -> Option<u16> {
    // family, state, timer, retrans, then the sockid: source port (network order), destination
    // port, source address (16 bytes, IPv4 in the first four).
    let head = message.get(..24 + 16)?;
    if head[1] != TCP_LISTEN {
        return None;
    }
    let port = u16::from_be_bytes([head[4], head[5]]);
    let address = &head[8..24];
    let reachable = match i32::from(head[0]) {
        libc::AF_INET => address[..4] == [127, 0, 0, 1] || address[..4] == [0; 4],
        libc::AF_INET6 => {
            let ip = Ipv6Addr::from(<[u8; 16]>::try_from(address).ok()?);
            ip.is_unspecified() || ip.to_ipv4_mapped() == Some(Ipv4Addr::LOCALHOST)
        }
        _ => false,
    };
    reachable.then_some(port)
}

/// True when the kernel finds a listener of ours and, once it is closed, finds nothing.
fn self_check() -> bool {
    let checked = (|| -> io::Result<bool> {
        let query = Query::open_unchecked()?;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        let mut before = HashSet::new();
        query.listening_ports(&mut before)?;
        drop(listener);
        let mut after = HashSet::new();
        query.listening_ports(&mut after)?;
        Ok(before.contains(&port) && !after.contains(&port))
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
    fn a_closed_listener_is_no_longer_listed() {
        let query = Query::open().expect("sock_diag works on the Linux this runs on");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut ports = HashSet::new();
        query.listening_ports(&mut ports).unwrap();
        assert!(ports.contains(&port));
        drop(listener);
        ports.clear();
        query.listening_ports(&mut ports).unwrap();
        assert!(!ports.contains(&port));
    }

    #[test]
    fn a_dump_finds_loopback_wildcard_and_dual_stack_listeners_but_not_others() {
        let query = Query::open().expect("sock_diag works on the Linux this runs on");
        let loopback = TcpListener::bind("127.0.0.1:0").unwrap();
        let wildcard = TcpListener::bind("0.0.0.0:0").unwrap();
        let dual = TcpListener::bind("[::]:0").unwrap();
        let unreachable = TcpListener::bind("127.0.0.2:0").unwrap();
        let client = TcpStream::connect(loopback.local_addr().unwrap()).unwrap();
        let mut ports = HashSet::new();
        query.listening_ports(&mut ports).unwrap();
        for listener in [&loopback, &wildcard, &dual] {
            assert!(ports.contains(&listener.local_addr().unwrap().port()));
        }
        assert!(!ports.contains(&unreachable.local_addr().unwrap().port()));
        assert!(!ports.contains(&client.local_addr().unwrap().port()));
    }

    #[test]
    fn a_dump_of_many_listeners_spans_datagrams() {
        let query = Query::open().expect("sock_diag works on the Linux this runs on");
        let listeners: Vec<_> = (0..400)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let mut ports = HashSet::new();
        query.listening_ports(&mut ports).unwrap();
        for listener in &listeners {
            assert!(ports.contains(&listener.local_addr().unwrap().port()));
        }
    }

    #[test]
    fn garbled_answers_are_errors_not_answers() {
        assert!(next_message(&[0; 3]).is_err());
        let mut long = [0u8; 16];
        long[0..4].copy_from_slice(&64u32.to_ne_bytes());
        assert!(next_message(&long).is_err(), "a length past the datagram");
        assert!(next_message(&[]).unwrap().is_none());
        let code = (-libc::EACCES).to_ne_bytes();
        assert_eq!(error_of(&code).raw_os_error(), Some(libc::EACCES));
        assert!(reachable_listener(&[0; 10]).is_none());
    }
}
