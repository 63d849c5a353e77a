//! # Simple usage
//!
//! ## Creating the server
//!
//! The easiest way to create a server is to call `Server::http()`.
//!
//! The `http()` function returns an `IoResult<Server>` which will return an error
//! in the case where the server creation fails (for example if the listening port is already
//! occupied).
//!
//! ```no_run
//! let server = defrost_http::Server::http("0.0.0.0:0").unwrap();
//! ```
//!
//! A newly-created `Server` will immediately start listening for incoming connections and HTTP
//! requests.
//!
//! ## Receiving requests
//!
//! Calling `server.recv()` will block until the next request is available.
//! This function returns an `IoResult<Request>`, so you need to handle the possible errors.
//!
//! ```no_run
//! # let server = defrost_http::Server::http("0.0.0.0:0").unwrap();
//!
//! loop {
//!     // blocks until the next request is received
//!     let request = match server.recv() {
//!         Ok(rq) => rq,
//!         Err(e) => { println!("error: {}", e); break }
//!     };
//!
//!     // do something with the request
//!     // ...
//! }
//! ```
//!
//! In a real-case scenario, you will probably want to spawn multiple worker tasks and call
//! `server.recv()` on all of them. Like this:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use std::thread;
//! # let server = defrost_http::Server::http("0.0.0.0:0").unwrap();
//! let server = Arc::new(server);
//! let mut guards = Vec::with_capacity(4);
//!
//! for _ in (0 .. 4) {
//!     let server = server.clone();
//!
//!     let guard = thread::spawn(move || {
//!         loop {
//!             let rq = server.recv().unwrap();
//!
//!             // ...
//!         }
//!     });
//!
//!     guards.push(guard);
//! }
//! ```
//!
//! If you don't want to block, you can call `server.try_recv()` instead.
//!
//! ## Handling requests
//!
//! The `Request` object returned by `server.recv()` contains informations about the client's request.
//! The most useful methods are probably `request.method()` and `request.url()` which return
//! the requested method (`GET`, `POST`, etc.) and url.
//!
//! To handle a request, you need to create a `Response` object. See the docs of this object for
//! more infos. Here is an example of creating a `Response` from a file:
//!
//! ```no_run
//! # use std::fs::File;
//! # use std::path::Path;
//! let response = defrost_http::Response::from_file(File::open(&Path::new("image.png")).unwrap());
//! ```
//!
//! All that remains to do is call `request.respond()`:
//!
//! ```no_run
//! # use std::fs::File;
//! # use std::path::Path;
//! # let server = defrost_http::Server::http("0.0.0.0:0").unwrap();
//! # let request = server.recv().unwrap();
//! # let response = defrost_http::Response::from_file(File::open(&Path::new("image.png")).unwrap());
//! let _ = request.respond(response);
//! ```
//!
//! ## Limits
//!
//! This copy of tiny_http (see `PATCHES.md`) enforces per-connection [`Limits`]: a bound on
//! open connections, on request head sizes, and read/write/idle timeouts. Use
//! [`Server::from_listener_with_limits`] to choose them; the other constructors use
//! `Limits::default()`.
// allowed only where the idle set and non-blocking reads call libc
#![deny(unsafe_code)]
#![deny(rust_2018_idioms)]
#![allow(clippy::match_like_matches_macro)]

use std::error::Error;
use std::io::Error as IoError;
use std::io::ErrorKind as IoErrorKind;
use std::io::Result as IoResult;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use client::ClientConnection;
use connection::Connection;
use util::Popped;

pub use common::{HTTPVersion, Header, HeaderField, Method, StatusCode};
pub use connection::{ConfigListenAddr, ListenAddr, Listener};
pub use request::{ReadWrite, Request};
pub use response::{InvalidHeader, Response, ResponseBox};
pub use test::TestRequest;

mod client;
mod common;
mod connection;
mod hub;
mod request;
mod response;
mod test;
mod util;

/// The main class of this library.
///
/// Destroying this object will immediately close the listening socket. Connections
/// already open are served until they close (at the latest after the keep-alive
/// timeout). Requests that have already been returned by the `recv()` function will
/// not close and the responses will be transferred to the client.
pub struct Server {
    // should be false as long as the server exists
    // when set to true, all the subtasks will close within a few hundreds ms
    close: Arc<AtomicBool>,

    // where connections wait between requests, and the queue of requests read by
    // connection threads
    hub: Arc<hub::Hub>,

    // result of TcpListener::local_addr()
    listening_addr: ListenAddr,

    // number of open client connections
    connections: Arc<AtomicUsize>,
}

// Requests are moved through the queue once; boxing them would cost an allocation each.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Message {
    Error(IoError),
    NewRequest(Request),
}

impl From<IoError> for Message {
    fn from(e: IoError) -> Message {
        Message::Error(e)
    }
}

impl From<Request> for Message {
    fn from(rq: Request) -> Message {
        Message::NewRequest(rq)
    }
}

// this is to make sure that Server implements Sync and Send
const _: fn() = || {
    fn must_be_share<T: Sync + Send>() {}
    must_be_share::<Server>();
};

pub struct IncomingRequests<'a> {
    server: &'a Server,
}

/// Represents the parameters required to create a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The addresses to try to listen to.
    pub addr: ConfigListenAddr,

    /// Must be `None`: SSL support is not compiled into this copy of tiny_http.
    pub ssl: Option<SslConfig>,
}

/// Configuration of the server for SSL.
///
/// Kept for API compatibility only: SSL support is not compiled into this copy of
/// tiny_http, and a server given an `SslConfig` fails to start.
#[derive(Debug, Clone)]
pub struct SslConfig {
    /// Contains the public certificate to send to clients.
    pub certificate: Vec<u8>,
    /// Contains the ultra-secret private key used to decode communications.
    pub private_key: Vec<u8>,
}

/// Per-connection limits of a [`Server`].
///
/// A zero `Duration` disables the corresponding timeout, and a zero `max_connections`
/// means no limit.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most client connections open at once (default 1024). At the limit, the connection
    /// that has waited idle the longest between two requests (answered, nothing in progress,
    /// nothing sent since) is closed quietly to make room for the new one. When there is none,
    /// the new connection is answered at once with `503 Service Unavailable`,
    /// `Retry-After: 1` and `Connection: close` from the accepting thread (a single
    /// non-blocking write), then closed, without starting a thread for it.
    pub max_connections: usize,
    /// Most bytes in a request head: request line and headers with their line ends
    /// (default 16 KiB). A larger head is answered with `431 Request Header Fields Too
    /// Large` and the connection is closed.
    pub max_header_bytes: usize,
    /// Longest request target (URL) (default 8 KiB). A longer one is answered with
    /// `414 URI Too Long` and the connection is closed.
    pub max_url_bytes: usize,
    /// Time allowed to receive a complete request head once its first byte has arrived
    /// (default 10 s); on the first request of a connection it is counted from the
    /// connection's acceptance. When it runs out the client gets `408 Request Timeout`
    /// (or nothing, if it sent nothing at all) and the connection is closed.
    pub header_timeout: Duration,
    /// How long a connection may stay idle between requests (default 75 s, a little more
    /// than the 60 s idle timeout common in load balancers so that they close first).
    /// Counted from the end of the last response; the connection is then closed quietly.
    pub keep_alive_timeout: Duration,
    /// Longest wait for data while a request body is read (default 30 s). A read that
    /// times out fails with `ErrorKind::TimedOut`. Not applied to upgraded connections.
    pub read_timeout: Duration,
    /// Longest wait for a write on the socket to make progress (default 30 s). A response
    /// whose write times out fails, and the connection is closed.
    pub write_timeout: Duration,
    /// `Content-Length` from which a response with a known length is sent chunked instead
    /// (HTTP/1.1 clients). `None` (the default): a known length is always sent with
    /// `Content-Length`. A response's own
    /// [`with_chunked_threshold`](Response::with_chunked_threshold) takes precedence.
    pub chunked_threshold: Option<usize>,
    /// Most bytes of a request body left unread by the handler that are read and thrown
    /// away to keep the connection usable (default 64 KiB). If more is left (known from
    /// `Content-Length` when the response is sent, or found while draining a chunked
    /// body), the connection is closed after the response instead, with
    /// `Connection: close` when known in time.
    pub max_drain_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 1024,
            max_header_bytes: 16 * 1024,
            max_url_bytes: 8 * 1024,
            header_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(75),
            read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            chunked_threshold: None,
            max_drain_bytes: 64 * 1024,
        }
    }
}

/// Response sent to connections beyond `Limits::max_connections`.
const BUSY_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
Retry-After: 1\r\n\
Connection: close\r\n\
Content-Length: 0\r\n\r\n";

/// Pause after a failed `accept` (e.g. out of file descriptors), doubled on each
/// consecutive failure up to the maximum.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest single wait of `recv()`, which waits again until a request comes.
const POLL_SLICE: Duration = Duration::from_secs(1);

/// One wait of a `recv` caller.
// Moved once, straight to the caller; boxing the request would cost an allocation each.
#[allow(clippy::large_enum_variant)]
enum Wait {
    Got(IoResult<Request>),
    Unblocked,
    /// Woken without a request: wait again.
    Again,
    TimedOut,
}
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(100);

/// Answers a connection beyond the limit with a 503 without ever blocking: the socket is
/// made non-blocking, the response (which fits in any socket buffer) written once, and
/// the socket closed.
fn reject_busy(conn: Connection) {
    if conn.set_nonblocking(true).is_ok() {
        let _ = (&conn).write(BUSY_RESPONSE);
        // read what the client may already have sent, so that closing does not reset
        // the connection before it reads the response (best effort)
        let mut scratch = [0u8; 4096];
        for _ in 0..16 {
            if !matches!((&conn).read(&mut scratch), Ok(n) if n > 0) {
                break;
            }
        }
        let _ = conn.shutdown(Shutdown::Write);
    }
}

/// Applies the socket options of a new connection.
fn prepare_connection(conn: &Connection, limits: &Limits) -> IoResult<()> {
    conn.set_nodelay()?;
    conn.set_write_timeout(util::conn::non_zero(limits.write_timeout))?;
    Ok(())
}

impl Server {
    /// Shortcut for a simple server on a specific address.
    #[inline]
    pub fn http<A>(addr: A) -> Result<Server, Box<dyn Error + Send + Sync + 'static>>
    where
        A: ToSocketAddrs,
    {
        Server::new(ServerConfig {
            addr: ConfigListenAddr::from_socket_addrs(addr)?,
            ssl: None,
        })
    }

    #[cfg(unix)]
    #[inline]
    /// Shortcut for a UNIX socket server at a specific path
    pub fn http_unix(
        path: &std::path::Path,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        Server::new(ServerConfig {
            addr: ConfigListenAddr::unix_from_path(path),
            ssl: None,
        })
    }

    /// Builds a new server that listens on the specified address, with the default
    /// [`Limits`].
    pub fn new(config: ServerConfig) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        let listener = config.addr.bind()?;
        Self::from_listener(listener, config.ssl)
    }

    /// Builds a new server using the specified TCP listener, with the default [`Limits`].
    ///
    /// This is useful if you've constructed TcpListener using some less usual method
    /// such as from systemd. For other cases, you probably want the `new()` function.
    pub fn from_listener<L: Into<Listener>>(
        listener: L,
        ssl_config: Option<SslConfig>,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        if ssl_config.is_some() {
            return Err("SSL support is not compiled into this copy of tiny_http".into());
        }
        Self::start(listener.into(), Limits::default())
    }

    /// Builds a new server using the specified TCP listener and limits.
    pub fn from_listener_with_limits(
        listener: std::net::TcpListener,
        limits: Limits,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        Self::start(listener.into(), limits)
    }

    fn start(
        listener: Listener,
        limits: Limits,
    ) -> Result<Server, Box<dyn Error + Send + Sync + 'static>> {
        let limits = Arc::new(limits);
        // building the "close" variable
        let close_trigger = Arc::new(AtomicBool::new(false));

        let local_addr = listener.local_addr()?;
        log::debug!("Server listening on {}", local_addr);

        // creating a task where server.accept() is continuously called
        // and ClientConnection objects are handed to the hub
        let connections = Arc::new(AtomicUsize::new(0));

        let hub = hub::Hub::start(&limits);
        let inside_close_trigger = close_trigger.clone();
        let inside_hub = hub.clone();
        let inside_connections = connections.clone();
        let accepting = thread::Builder::new()
            .name("tiny-http-accept".into())
            .spawn(move || {
                accept_loop(
                    listener,
                    limits,
                    inside_close_trigger,
                    inside_hub,
                    inside_connections,
                )
            });
        if let Err(e) = accepting {
            hub.close();
            return Err(e.into());
        }

        // result
        Ok(Server {
            hub,
            close: close_trigger,
            listening_addr: local_addr,
            connections,
        })
    }

    /// Returns an iterator for all the incoming requests.
    ///
    /// The iterator will return `None` if the server socket is shutdown.
    #[inline]
    pub fn incoming_requests(&self) -> IncomingRequests<'_> {
        IncomingRequests { server: self }
    }

    /// Returns the address the server is listening to.
    #[inline]
    pub fn server_addr(&self) -> ListenAddr {
        self.listening_addr.clone()
    }

    /// Returns the number of clients currently connected to the server: connections
    /// accepted and not closed yet (a connection stays counted while a response to one
    /// of its requests is still being written). Connections turned away because of
    /// `Limits::max_connections` are not counted.
    pub fn num_connections(&self) -> usize {
        self.connections.load(Acquire)
    }

    /// Returns the number of requests read and waiting to be taken by `recv()`. A caller
    /// running its own pool of `recv()` threads can tell from it that all of them are busy.
    pub fn pending_requests(&self) -> usize {
        self.hub.messages.len()
    }

    /// Blocks until an HTTP request has been submitted and returns it.
    pub fn recv(&self) -> IoResult<Request> {
        loop {
            match self.wait(POLL_SLICE) {
                Wait::Got(result) => return result,
                Wait::Unblocked => return Err(IoError::other("thread unblocked")),
                Wait::Again | Wait::TimedOut => continue,
            }
        }
    }

    /// Same as `recv()` but doesn't block longer than timeout
    pub fn recv_timeout(&self, timeout: Duration) -> IoResult<Option<Request>> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            let left = deadline.map_or(timeout, |d| d.saturating_duration_since(Instant::now()));
            match self.wait(left) {
                Wait::Got(result) => return result.map(Some),
                Wait::Unblocked => return Ok(None),
                Wait::Again if !left.is_zero() => continue,
                Wait::Again | Wait::TimedOut => return Ok(None),
            }
        }
    }

    /// Same as `recv()` but doesn't block.
    pub fn try_recv(&self) -> IoResult<Option<Request>> {
        loop {
            match self.wait(Duration::ZERO) {
                Wait::Got(result) => return result.map(Some),
                Wait::Again => continue,
                Wait::Unblocked | Wait::TimedOut => return Ok(None),
            }
        }
    }

    /// Waits up to `timeout` for the next request: queued ones first, else in the idle set
    /// (where this thread reads the request of a connection that becomes readable), else,
    /// without an idle set, on the queue.
    fn wait(&self, timeout: Duration) -> Wait {
        match self.hub.messages.try_take() {
            Popped::Elem(message) => return Wait::Got(self.take(message)),
            Popped::Unblock => return Wait::Unblocked,
            Popped::Empty => (),
        }
        match self.hub.poll(timeout) {
            Some(hub::Waited::Request(rq)) => Wait::Got(Ok(rq)),
            Some(hub::Waited::Nothing) => Wait::Again,
            Some(hub::Waited::TimedOut) => Wait::TimedOut,
            None => match self.hub.messages.pop_timeout(timeout) {
                Some(message) => Wait::Got(self.take(message)),
                // timed out or unblocked: the queue does not say which
                None => Wait::TimedOut,
            },
        }
    }

    /// What a message gives `recv()`.
    fn take(&self, message: Message) -> IoResult<Request> {
        match message {
            Message::Error(err) => Err(err),
            Message::NewRequest(rq) => Ok(rq),
        }
    }

    /// Unblock thread stuck in recv() or incoming_requests().
    /// If there are several such threads, only one is unblocked.
    /// This method allows graceful shutdown of server.
    pub fn unblock(&self) {
        self.hub.messages.unblock();
        self.hub.nudge();
    }
}

/// Accepts connections until the server is closed. Accept errors (for example running out
/// of file descriptors) are logged and retried after a short pause; they never end the
/// loop.
fn accept_loop(
    listener: Listener,
    limits: Arc<Limits>,
    close: Arc<AtomicBool>,
    hub: Arc<hub::Hub>,
    connections: Arc<AtomicUsize>,
) {
    let mut backoff = ACCEPT_BACKOFF_MIN;

    log::debug!("Running accept thread");
    while !close.load(Relaxed) {
        let (conn, remote_addr) = match listener.accept() {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF_MIN;
                accepted
            }
            Err(e) => {
                if close.load(Relaxed) {
                    break;
                }
                match e.kind() {
                    // the client went away before we accepted: nothing to wait for
                    IoErrorKind::ConnectionAborted
                    | IoErrorKind::ConnectionReset
                    | IoErrorKind::Interrupted => continue,
                    _ => (),
                }
                log::error!(
                    "Error accepting new client: {} (retrying in {:?})",
                    e,
                    backoff
                );
                thread::sleep(backoff);
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        if close.load(Relaxed) {
            break;
        }

        let full =
            limits.max_connections > 0 && connections.load(Acquire) >= limits.max_connections;
        // at the limit, a client waiting idle between two requests gives way to a new one
        if full && !hub.reclaim_idle() {
            log::warn!(
                "Connection limit ({}) reached; answering 503",
                limits.max_connections
            );
            reject_busy(conn);
            continue;
        }
        if let Err(e) = prepare_connection(&conn, &limits) {
            log::debug!("Dropping new connection: {}", e);
            continue;
        }

        let slot = util::conn::ConnSlot::take(&connections);
        let client = ClientConnection::new(
            conn,
            remote_addr,
            limits.clone(),
            slot,
            hub.draining.clone(),
        );
        hub.serve(Box::new(client));
    }
    log::debug!("Terminating accept thread");
}

impl Iterator for IncomingRequests<'_> {
    type Item = Request;
    fn next(&mut self) -> Option<Request> {
        self.server.recv().ok()
    }
}

impl Server {
    /// Closes the listening socket and drains the open connections, for a graceful shutdown:
    /// new connections are refused from now on; every response (to requests in progress, and
    /// to any still arriving) carries `Connection: close` and its connection is closed after
    /// it; connections waiting idle for their next request, with nothing arrived, are closed
    /// at once. Requests are still received and answered meanwhile.
    pub fn stop_accepting(&self) {
        if self.close.swap(true, Relaxed) {
            return;
        }
        self.hub.drain();
        self.unblock_accept();
    }

    /// Connections open and doing something: reading a request, waiting for a response to be
    /// written, or closing. Not counted: those waiting idle between requests, or for a
    /// response while nothing else comes from them. After `stop_accepting`, a gateway waits
    /// for this to reach zero so that no request being received is cut off.
    pub fn connections_in_use(&self) -> usize {
        self.num_connections().saturating_sub(self.hub.parked())
    }

    /// Connects briefly to ourselves so that the accept thread sees the close flag.
    fn unblock_accept(&self) {
        // Connect briefly to ourselves to unblock the accept thread
        let maybe_stream = match &self.listening_addr {
            ListenAddr::IP(addr) => TcpStream::connect(addr).map(Connection::from),
            #[cfg(unix)]
            ListenAddr::Unix(addr) => {
                // TODO: use connect_addr when its stabilized.
                match addr.as_pathname() {
                    Some(path) => {
                        std::os::unix::net::UnixStream::connect(path).map(Connection::from)
                    }
                    None => Err(IoError::other("unnamed socket")),
                }
            }
        };
        if let Ok(stream) = maybe_stream {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_accepting();
        self.hub.close();

        #[cfg(unix)]
        if let ListenAddr::Unix(addr) = &self.listening_addr {
            if let Some(path) = addr.as_pathname() {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}
