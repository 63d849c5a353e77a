//! One connection to a NATS server: a blocking writer shared by callers, and one reader thread
//! that routes messages to subscriptions, answers the server's pings and pings a silent server
//! until it is declared dead.
//!
//! Each request gets an inbox of its own, a subscription to a fresh `_INBOX.<connection>.<n>`
//! subject: JetStream delivers pulled messages with their original subject, so only the
//! subscription id tells which pull they answer.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, RecvTimeoutError, Sender, TrySendError};
use parking_lot::Mutex;
use serde::Deserialize;

use super::proto::{self, Frame, Headers, Message};
use super::url::{Auth, ServerUrl};
use super::Error;

/// How a connection is made and kept.
#[derive(Debug, Clone)]
pub struct Options {
    /// Longest wait for the TCP connection and the server's first answer.
    pub connect_timeout: Duration,
    /// How long the server may stay silent before it is pinged; a ping unanswered for as long
    /// again closes the connection (a dead server is noticed within twice this).
    pub ping_interval: Duration,
    /// Longest wait for one write to the server.
    pub write_timeout: Duration,
    /// The client name the server shows in its monitoring.
    pub name: String,
    /// The largest message accepted from the server, whatever it announces.
    pub max_payload: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            connect_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            name: "defrost".into(),
            max_payload: 64 * 1024 * 1024,
        }
    }
}

/// What the server says about itself in `INFO`.
#[derive(Debug, Clone, Deserialize)]
pub struct ServerInfo {
    /// Its unique id.
    #[serde(default)]
    pub server_id: String,
    /// Its version.
    #[serde(default)]
    pub version: String,
    /// The largest message it accepts (headers and body).
    #[serde(default = "default_max_payload")]
    pub max_payload: usize,
    /// Whether it supports headers (JetStream needs them).
    #[serde(default)]
    pub headers: bool,
    /// Whether JetStream is enabled.
    #[serde(default)]
    pub jetstream: bool,
    /// Whether it requires TLS (not supported here).
    #[serde(default)]
    pub tls_required: bool,
}

fn default_max_payload() -> usize {
    1024 * 1024
}

/// A live connection. Dropping it closes the socket and stops its reader thread.
///
/// All methods take `&self`: share it between threads with an `Arc`. There is no reconnection:
/// once [`Connection::is_closed`], every call fails with [`Error::Closed`] and the owner
/// connects again.
pub struct Connection {
    shared: Arc<Shared>,
    reader: Option<JoinHandle<()>>,
}

/// Where delivered messages go, and whether the connection still stands.
#[derive(Default)]
struct Routes {
    /// Subscriptions by sid.
    subs: HashMap<u64, Sender<Message>>,
    /// Why the connection closed, once it has.
    closed: Option<String>,
    /// The server's last `-ERR`, told with the reason for closing.
    last_error: Option<String>,
}

struct Shared {
    writer: Mutex<TcpStream>,
    /// A handle to shut the socket down without waiting for a writer.
    socket: TcpStream,
    routes: Mutex<Routes>,
    info: ServerInfo,
    /// `_INBOX.<random>`: this connection's reply subjects are under it.
    inbox_prefix: String,
    next_id: AtomicU64,
    max_payload: usize,
}

/// Read beyond the server's `max_payload`: room for headers a server adds to what it stored.
const READ_HEADROOM: usize = 64 * 1024;

impl Connection {
    /// Connects, logs in with the URL's credentials, and waits for the server to accept.
    pub fn connect(url: &str, options: &Options) -> Result<Connection, Error> {
        let url = ServerUrl::parse(url)?;
        let stream = dial(&url.address, options.connect_timeout)?;
        let (info, stream, leftover) = handshake(stream, &url, options)?;
        stream
            .set_read_timeout(Some(options.ping_interval.max(Duration::from_millis(10))))
            .map_err(Error::Io)?;
        let shared = Arc::new(Shared {
            writer: Mutex::new(stream.try_clone().map_err(Error::Io)?),
            socket: stream.try_clone().map_err(Error::Io)?,
            routes: Mutex::new(Routes::default()),
            inbox_prefix: format!("_INBOX.{:016x}", random()),
            next_id: AtomicU64::new(1),
            max_payload: info.max_payload.min(options.max_payload) + READ_HEADROOM,
            info,
        });
        let reader = {
            let shared = Arc::clone(&shared);
            let watched = Watched {
                leftover,
                stream,
                shared: Arc::clone(&shared),
                pinged: false,
            };
            std::thread::Builder::new()
                .name("nats-reader".into())
                .spawn(move || shared.read_loop(BufReader::new(watched)))
                .map_err(Error::Io)?
        };
        Ok(Connection {
            shared,
            reader: Some(reader),
        })
    }

    /// The server's `INFO`.
    pub fn info(&self) -> &ServerInfo {
        &self.shared.info
    }

    /// Whether the connection is gone, and why.
    pub fn closed_reason(&self) -> Option<String> {
        self.shared.routes.lock().closed.clone()
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.closed_reason().is_some()
    }

    /// Publishes without waiting for anything (core NATS: at most once).
    pub fn publish(&self, subject: &str, headers: &Headers, payload: &[u8]) -> Result<(), Error> {
        self.publish_to(subject, None, headers, payload)
    }

    /// Publishes asking for answers on `reply`.
    pub fn publish_to(
        &self,
        subject: &str,
        reply: Option<&str>,
        headers: &Headers,
        payload: &[u8],
    ) -> Result<(), Error> {
        let frame = proto::publish(
            subject,
            reply,
            headers,
            payload,
            self.shared.info.max_payload,
        )?;
        self.shared.write(&frame)
    }

    /// Publishes and waits for the first answer. A `503` status (nobody listens) is
    /// [`Error::NoResponders`].
    pub fn request(
        &self,
        subject: &str,
        headers: &Headers,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Message, Error> {
        let inbox = self.ask(subject, headers, payload, 1, Some(1))?;
        let answer = inbox
            .recv(crate::deadline::after(timeout))?
            .ok_or_else(|| Error::Timeout {
                what: format!("a request on {subject:?}"),
                after: timeout,
            })?;
        if answer.headers.status == Some(503) {
            return Err(Error::NoResponders(subject.to_string()));
        }
        Ok(answer)
    }

    /// Publishes with a fresh inbox as the reply subject and returns that inbox's
    /// subscription, at most `capacity` answers waiting; with `answers`, the server ends the
    /// subscription after that many. Subscribing and publishing take one write.
    pub fn ask(
        &self,
        subject: &str,
        headers: &Headers,
        payload: &[u8],
        capacity: usize,
        answers: Option<u64>,
    ) -> Result<Subscription, Error> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let mut inbox = self.register(&format!("{}.{id}", self.shared.inbox_prefix), capacity)?;
        let mut frames = inbox.sub_line();
        if let Some(n) = answers {
            frames.extend_from_slice(format!("UNSUB {} {n}\r\n", inbox.sid).as_bytes());
            inbox.answers = answers;
        }
        let reply = Some(inbox.subject.as_str());
        frames.extend(proto::publish(
            subject,
            reply,
            headers,
            payload,
            self.shared.info.max_payload,
        )?);
        self.shared.write(&frames)?;
        Ok(inbox)
    }

    /// Subscribes to `subject` (wildcards allowed), at most `capacity` messages waiting (more
    /// are dropped, and logged). Dropping the subscription unsubscribes.
    pub fn subscribe(&self, subject: &str, capacity: usize) -> Result<Subscription, Error> {
        let subscription = self.register(subject, capacity)?;
        self.shared.write(&subscription.sub_line())?;
        Ok(subscription)
    }

    /// A subscription's route, before the server is told.
    fn register(&self, subject: &str, capacity: usize) -> Result<Subscription, Error> {
        proto::check_subject(subject)?;
        let sid = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = channel::bounded(capacity.max(1));
        {
            let mut routes = self.shared.routes.lock();
            if routes.closed.is_some() {
                drop(routes);
                return Err(self.shared.closed_error());
            }
            routes.subs.insert(sid, tx);
        }
        Ok(Subscription {
            subject: subject.to_string(),
            sid,
            rx,
            shared: Arc::clone(&self.shared),
            answers: None,
            received: AtomicU64::new(0),
        })
    }

    /// Round trip to the server: every message published before has been read by it.
    pub fn flush(&self, timeout: Duration) -> Result<(), Error> {
        // A message to our own inbox comes back only after everything before it.
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let inbox = self.subscribe(&format!("{}.{id}", self.shared.inbox_prefix), 1)?;
        self.publish(inbox.subject(), &Headers::default(), b"")?;
        match inbox.recv(crate::deadline::after(timeout))? {
            Some(_) => Ok(()),
            None => Err(Error::Timeout {
                what: "a flush".into(),
                after: timeout,
            }),
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shared.close("closed by the client".into());
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// Messages on a subscribed subject; dropping it unsubscribes.
pub struct Subscription {
    subject: String,
    sid: u64,
    rx: Receiver<Message>,
    shared: Arc<Shared>,
    /// After how many messages the server ends it by itself.
    answers: Option<u64>,
    received: AtomicU64,
}

impl Subscription {
    /// The subject subscribed to (for an inbox: the one to give as `reply`).
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The next message, or `None` at `deadline`; [`Error::Closed`] when the connection goes.
    pub fn recv(&self, deadline: Instant) -> Result<Option<Message>, Error> {
        match self.rx.recv_deadline(deadline) {
            Ok(message) => {
                self.received.fetch_add(1, Ordering::Relaxed);
                Ok(Some(message))
            }
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(self.shared.closed_error()),
        }
    }
}

impl Subscription {
    fn sub_line(&self) -> Vec<u8> {
        format!("SUB {} {}\r\n", self.subject, self.sid).into_bytes()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.shared.routes.lock().subs.remove(&self.sid);
        if self.answers.is_some_and(|n| *self.received.get_mut() >= n) {
            return;
        }
        let _ = self
            .shared
            .write(format!("UNSUB {}\r\n", self.sid).as_bytes());
    }
}

impl Shared {
    /// Writes one whole frame; a failed write closes the connection.
    fn write(&self, bytes: &[u8]) -> Result<(), Error> {
        if self.routes.lock().closed.is_some() {
            return Err(self.closed_error());
        }
        let written = self.writer.lock().write_all(bytes);
        written.map_err(|e| {
            self.close(format!("writing to the server failed: {e}"));
            self.closed_error()
        })
    }

    fn closed_error(&self) -> Error {
        let routes = self.routes.lock();
        let why = routes.closed.as_deref().unwrap_or("closed");
        Error::closed(match &routes.last_error {
            Some(err) => format!("{why} (the server last said: {err})"),
            None => why.to_string(),
        })
    }

    /// Marks the connection closed (the first reason stays), wakes every waiter, and shuts
    /// the socket so the reader thread ends.
    fn close(&self, why: String) {
        {
            let mut routes = self.routes.lock();
            if routes.closed.is_none() {
                routes.closed = Some(why);
            }
            routes.subs.clear();
        }
        let _ = self.socket.shutdown(Shutdown::Both);
    }

    fn read_loop(&self, mut reader: BufReader<Watched>) {
        let why = loop {
            match proto::read_frame(&mut reader, self.max_payload) {
                Ok(Frame::Msg(message)) => self.deliver(message),
                Ok(Frame::Ping) => {
                    if let Err(e) = self.write(b"PONG\r\n") {
                        break e.to_string();
                    }
                }
                Ok(Frame::Err(text)) => {
                    log::warn!("NATS server error: {text}");
                    self.routes.lock().last_error = Some(text);
                }
                Ok(Frame::Pong | Frame::Ok | Frame::Info(_)) => {}
                Err(e) => break e.to_string(),
            }
        };
        self.close(why);
    }

    /// Hands a message to its subscription without ever blocking the reader.
    fn deliver(&self, message: Message) {
        let routes = self.routes.lock();
        if let Some(tx) = routes.subs.get(&message.sid) {
            if let Err(TrySendError::Full(m)) = tx.try_send(message) {
                log::warn!(
                    "NATS message on {:?} dropped: its reader is behind",
                    m.subject
                );
            }
        }
    }
}

/// The socket as the reader sees it: a read that times out pings the server once; a second
/// timeout with no byte in between means the server is dead.
struct Watched {
    /// What the handshake's reader had buffered beyond its last frame.
    leftover: Vec<u8>,
    stream: TcpStream,
    shared: Arc<Shared>,
    pinged: bool,
}

impl Read for Watched {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.leftover.is_empty() {
            let n = buf.len().min(self.leftover.len());
            buf[..n].copy_from_slice(&self.leftover[..n]);
            self.leftover.drain(..n);
            return Ok(n);
        }
        loop {
            match self.stream.read(buf) {
                Ok(n) => {
                    self.pinged = false;
                    return Ok(n);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if self.pinged {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the server did not answer a PING",
                        ));
                    }
                    self.shared
                        .write(b"PING\r\n")
                        .map_err(|e| io::Error::other(e.to_string()))?;
                    self.pinged = true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

fn dial(address: &str, timeout: Duration) -> Result<TcpStream, Error> {
    let failed = |source| Error::Connect {
        address: address.to_string(),
        source,
    };
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolves to no address");
    for addr in address.to_socket_addrs().map_err(failed)? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(failed(last))
}

/// `INFO`, then `CONNECT` and a `PING` whose `PONG` says the server accepted us (an `-ERR`
/// instead says why not).
fn handshake(
    stream: TcpStream,
    url: &ServerUrl,
    options: &Options,
) -> Result<(ServerInfo, TcpStream, Vec<u8>), Error> {
    let timed_out = |e: Error| match e {
        Error::Io(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Error::Timeout {
                what: format!("connecting to {}", url.address),
                after: options.connect_timeout,
            }
        }
        e => e,
    };
    stream
        .set_read_timeout(Some(options.connect_timeout))
        .map_err(Error::Io)?;
    stream
        .set_write_timeout(Some(options.write_timeout))
        .map_err(Error::Io)?;
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(stream.try_clone().map_err(Error::Io)?);
    let info = match proto::read_frame(&mut reader, 0).map_err(timed_out)? {
        Frame::Info(json) => serde_json::from_str::<ServerInfo>(&json)
            .map_err(|e| Error::Protocol(format!("the server's INFO is not readable: {e}")))?,
        other => {
            return Err(Error::Protocol(format!(
                "the server began with {other:?}, not INFO"
            )))
        }
    };
    if info.tls_required {
        return Err(Error::Url(format!(
            "{} requires TLS, which this client does not speak",
            url.address
        )));
    }
    if !info.headers {
        return Err(Error::Protocol(format!(
            "the server at {} (version {}) does not support headers",
            url.address, info.version
        )));
    }
    let mut connect = serde_json::json!({
        "verbose": false,
        "pedantic": false,
        "lang": "rust",
        "version": env!("CARGO_PKG_VERSION"),
        "protocol": 1,
        "headers": true,
        "no_responders": true,
        "name": options.name,
    });
    match &url.auth {
        Auth::None => {}
        Auth::UserPassword(user, pass) => {
            connect["user"] = user.as_str().into();
            connect["pass"] = pass.as_str().into();
        }
        Auth::Token(token) => connect["auth_token"] = token.as_str().into(),
    }
    let mut writer = &stream;
    writer
        .write_all(format!("CONNECT {connect}\r\nPING\r\n").as_bytes())
        .map_err(Error::Io)?;
    loop {
        match proto::read_frame(&mut reader, 0).map_err(timed_out)? {
            Frame::Pong => break,
            Frame::Err(text) => return Err(Error::Server(text)),
            Frame::Ping => writer.write_all(b"PONG\r\n").map_err(Error::Io)?,
            _ => {}
        }
    }
    let leftover = reader.buffer().to_vec();
    Ok((info, stream, leftover))
}

/// 64 random bits from the standard library's per-process hashing keys and the clock.
fn random() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}
