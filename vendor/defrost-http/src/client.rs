//! One client connection: reads request heads within limits and produces `Request`s.
//!
//! Whoever reads the connection's next request (a thread woken in the idle set, or a
//! connection thread) owns the buffered reading side of the socket while it reads a request
//! head; what has arrived of a head that is not whole yet stays with the connection
//! (`HeadSoFar`) until the rest comes. A request with a body borrows the reading side (through
//! a `BodyReader`), which gives it back when the body has been read or dropped; an unread rest
//! is drained here, within `Limits::max_drain_bytes`, or the connection is closed instead.

use std::convert::TryFrom;
use std::io::{self, BufRead, BufWriter, Cursor, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::str::FromStr;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{HTTPVersion, Header, Method};
use crate::connection::Connection;
use crate::request::{Body, ConnRequest};
use crate::response::ConnectionHint;
use crate::util::body::{continue_line, drain, BodyDecoder, BodyReader, ChunkState, ConnReader};
use crate::util::body::{LineError, Returned};
use crate::util::conn::{deadline_after, is_timeout, non_zero, ConnShared, ConnSlot};
use crate::util::conn::{ReadHalf, ReadMode, WriteHalf};
use crate::util::{SequentialWriter, SequentialWriterBuilder};
use crate::{Limits, Request, Response, StatusCode};

/// Room allowed on the request line besides the URL (method, spaces, version).
const REQUEST_LINE_OVERHEAD: usize = 64;
/// Empty lines tolerated before a request line (some clients send a CRLF after a body).
const MAX_LEADING_EMPTY_LINES: usize = 4;
/// Bodies up to this size are read by the connection thread before the request is handed
/// out, so that the next pipelined request can be parsed at once.
const PREREAD_BODY_BYTES: u64 = 1024;
/// When closing a connection that the client may still be sending on, how long (and how
/// many bytes) to keep reading and discarding after the last response, so that the close
/// does not turn into a reset that destroys the response before the client reads it.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1024 * 1024;

type Sink = BufWriter<WriteHalf>;

/// A ClientConnection is an object that will store a socket to a client
/// and return Request objects.
pub struct ClientConnection {
    // address of the client
    remote_addr: Option<SocketAddr>,

    // reading side, when not lent to a request body
    reader: Option<ConnReader>,

    // where request bodies give the reading side back
    returned_tx: Sender<Returned>,
    returned_rx: Receiver<Returned>,

    // sequence of Writers to the stream, to avoid writing response #2 before
    //  response #1
    sink: SequentialWriterBuilder<Sink>,

    shared: Arc<ConnShared>,
    limits: Arc<Limits>,
    accepted_at: Instant,

    // number of requests produced so far
    requests: u64,

    // set to true if we know that the previous request is the last one
    no_more_requests: bool,

    // the reading side was handed over for good (protocol upgrade)
    upgraded: bool,

    // the iterator has ended
    done: bool,

    // the request head being read, as far as it has arrived
    head: HeadSoFar,

    // after a late head was answered from the idle set: until when (and how much of) what
    // the client still sends is read and thrown away before closing
    closing: Option<(Instant, usize)>,

    // false while a request head is read on a thread that must not block: a small body is
    // then read ahead only if it has already arrived
    may_block: bool,

    // an ending found on a thread that must not block, for the connection thread to carry out
    pending_end: Option<End>,

    // a request head read on a thread that must not block, whose body is still arriving
    parsed: Option<Head>,

    // identifies the connection while it waits in the idle set, and whether it was ever there
    token: u64,
    watched: bool,
}

/// What a connection can do next without blocking (see [`ClientConnection::quick`]).
// Moved once, straight to the caller; boxing the request would cost an allocation each.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Quick {
    /// A request whose head had fully arrived.
    Request(Request),
    /// Nothing (more) to read yet, a request head possibly begun: wait for the socket to
    /// become readable.
    Park,
    /// Something needs a thread that may block: a small body still arriving, a body lent to
    /// a request, a response to wait for, an ending to carry out.
    Slow,
    /// The client went away; dropping the connection closes it.
    Closed,
}

/// Tokens for the idle set, unique per process.
static NEXT_TOKEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A request head as far as it has been read. It stays with the connection between reads, so
/// that a head arriving in pieces waits for the rest in the idle set instead of on a thread.
#[derive(Default)]
struct HeadSoFar {
    /// The head's first byte has arrived, and `deadline` and `budget` are set.
    started: bool,
    /// When the whole head must have arrived (`None`: no limit).
    deadline: Option<Instant>,
    /// What has arrived of the current line (the buffer is reused from line to line).
    line: Vec<u8>,
    /// Empty lines taken before the request line.
    empty_lines: usize,
    request_line: Option<(Method, String, HTTPVersion)>,
    headers: Vec<Header>,
    /// Head bytes still allowed (`max_header_bytes` less what has been taken).
    budget: usize,
}

impl HeadSoFar {
    fn start(&mut self, deadline: Option<Instant>, budget: usize) {
        self.started = true;
        self.deadline = deadline;
        self.budget = budget;
    }

    /// Forgets the head read (or given up on), keeping the buffers.
    fn reset(&mut self) {
        self.started = false;
        self.line.clear();
        self.empty_lines = 0;
        self.request_line = None;
        self.headers.clear();
    }
}

/// Why reading a request stopped.
enum End {
    /// Close without a response: the client went away or stayed idle.
    Quiet,
    /// Close after the responses already promised, without reading anything else.
    Linger(ConnReader),
    /// Answer with this status code, then close.
    Respond(u16, ConnReader),
    /// Not an ending: a head was read on a thread that must not block and its small body
    /// has not fully arrived; a connection thread carries on from the parsed head.
    Defer,
    /// Not an ending: the head has not fully arrived and nobody waits for it on a thread;
    /// what came of it is kept, and the connection waits in the idle set for the rest.
    Park,
}

/// Failure to read a request head.
enum HeadError {
    Quiet,
    Respond(u16),
    /// Not all here yet, and no read may wait for the rest (see [`End::Park`]).
    Park,
}

/// What a thread that may block got from a connection (see
/// [`ClientConnection::next_on_thread`]).
// Moved once, straight to the caller; boxing the request would cost an allocation each.
#[allow(clippy::large_enum_variant)]
enum Next {
    Request(Request),
    /// The head is still arriving: the connection can wait for it in the idle set.
    Park,
    /// The connection is finished.
    End,
}

/// Writer of one response. Keeps the count of pending responses of the connection.
struct ResponseWriter {
    inner: SequentialWriter<Sink>,
    shared: Arc<ConnShared>,
}

impl ResponseWriter {
    fn new(inner: SequentialWriter<Sink>, shared: Arc<ConnShared>) -> ResponseWriter {
        shared.response_started();
        ResponseWriter { inner, shared }
    }
}

impl Write for ResponseWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Drop for ResponseWriter {
    fn drop(&mut self) {
        self.shared.response_done();
    }
}

fn line_error_to_head(e: LineError) -> HeadError {
    match e {
        // only a read that must not wait says this (a read with a timeout says `TimedOut`)
        LineError::Io(e) if e.kind() == io::ErrorKind::WouldBlock => HeadError::Park,
        LineError::Io(e) if is_timeout(&e) => HeadError::Respond(408),
        LineError::Io(_) | LineError::Eof => HeadError::Quiet,
        LineError::TooLong => HeadError::Respond(431),
    }
}

/// True if the line has control characters other than horizontal tab (a stray CR, NUL...),
/// which have no place in a request line or header and must not be passed on.
fn has_controls(line: &[u8]) -> bool {
    line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
}

fn find_headers<'a>(headers: &'a [Header], name: &'static str) -> impl Iterator<Item = &'a Header> {
    headers.iter().filter(move |h| h.field.equiv(name))
}

/// Parses a `Content-Length` value: digits only (a comma-separated list of equal values is
/// accepted, as RFC 9110 allows).
fn parse_content_length(value: &str) -> Option<u64> {
    let mut result = None;
    for part in value.split(',') {
        let part = part.trim();
        if part.is_empty() || part.len() > 19 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let v: u64 = part.parse().ok()?;
        match result {
            Some(prev) if prev != v => return None,
            _ => result = Some(v),
        }
    }
    result
}

impl ClientConnection {
    /// Creates a new `ClientConnection` that takes ownership of the socket.
    pub(crate) fn new(
        sock: Connection,
        remote_addr: Option<SocketAddr>,
        limits: Arc<Limits>,
        slot: ConnSlot,
        draining: Arc<std::sync::atomic::AtomicBool>,
    ) -> ClientConnection {
        let sock = Arc::new(sock);
        let (returned_tx, returned_rx) = channel();
        let reader = ConnReader::with_capacity(8 * 1024, ReadHalf::new(sock.clone()));
        let sink = SequentialWriterBuilder::new(BufWriter::with_capacity(
            8 * 1024,
            WriteHalf::new(sock.clone()),
        ));
        ClientConnection {
            remote_addr,
            reader: Some(reader),
            returned_tx,
            returned_rx,
            sink,
            shared: Arc::new(ConnShared::new(sock, limits.clone(), slot, draining)),
            limits,
            accepted_at: Instant::now(),
            requests: 0,
            no_more_requests: false,
            upgraded: false,
            done: false,
            head: HeadSoFar::default(),
            closing: None,
            may_block: true,
            pending_end: None,
            parsed: None,
            token: NEXT_TOKEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            watched: false,
        }
    }

    /// The socket's descriptor, to watch it for readability.
    #[cfg(unix)]
    pub(crate) fn raw_fd(&self) -> std::os::unix::io::RawFd {
        use std::os::unix::io::AsRawFd;
        self.shared.sock.as_raw_fd()
    }

    pub(crate) fn token(&self) -> u64 {
        self.token
    }

    /// Marks the connection as registered with the idle set; true if it was already.
    pub(crate) fn watch(&mut self) -> bool {
        std::mem::replace(&mut self.watched, true)
    }

    /// True when nothing more can come from this connection's reading side here (it ended,
    /// or an upgraded request owns the stream).
    pub(crate) fn finished(&self) -> bool {
        self.done || self.upgraded
    }

    /// True when the connection only waits for the next request: its reading side is back,
    /// nothing is buffered and, if `peek`, nothing has arrived on the socket either.
    pub(crate) fn waits_idle(&mut self, peek: bool) -> bool {
        if self.finished()
            || self.receiving()
            || self.no_more_requests
            || self.pending_end.is_some()
            || self.parsed.is_some()
            || self.shared.must_close()
        {
            return false;
        }
        let Some(reader) = self.reader.as_mut() else {
            return false;
        };
        if !reader.buffer().is_empty() {
            return false;
        }
        if !peek {
            return true;
        }
        reader.get_mut().set_mode(ReadMode::NonBlocking);
        matches!(reader.fill_buf(), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// When the connection, parked in the idle set, became idle, if it may be closed to make
    /// room for a new one: it has been answered at least once, has no request in progress
    /// and nothing buffered. A connection that has not sent its first request yet is not
    /// taken: its client may be about to. Whether something has arrived since is for
    /// [`ClientConnection::nothing_arrived`] to tell (a syscall).
    #[cfg(target_os = "linux")]
    pub(crate) fn idle_since(&mut self) -> Option<Instant> {
        if self.requests == 0 || self.shared.outstanding() > 0 || !self.waits_idle(false) {
            return None;
        }
        Some(self.shared.last_done())
    }

    /// True if nothing has arrived on the socket that nobody has read (nothing is taken).
    #[cfg(target_os = "linux")]
    pub(crate) fn nothing_arrived(&self) -> bool {
        !crate::util::conn::has_arrived(&self.shared.sock)
    }

    /// True if closing the connection now loses nothing: no request in progress, nothing
    /// buffered, nothing arrived on the socket.
    #[cfg(target_os = "linux")]
    pub(crate) fn quiet(&mut self) -> bool {
        self.shared.outstanding() == 0 && self.waits_idle(false) && self.nothing_arrived()
    }

    /// True while part of a request head has arrived (the connection is then not idle: it is
    /// neither closed to make room nor counted as waiting), or while the connection closes
    /// after a late head was answered.
    pub(crate) fn receiving(&self) -> bool {
        self.head.started || self.closing.is_some()
    }

    /// True once the server stops accepting (see [`ConnShared::draining`]).
    pub(crate) fn draining(&self) -> bool {
        self.shared.draining()
    }

    /// Reads the next request if its head has fully arrived, without ever blocking; for a
    /// thread that serves many connections. What has arrived of a head that is not whole yet
    /// is taken and kept (`Quick::Park`), so that the socket only becomes readable again when
    /// more comes.
    pub(crate) fn quick(&mut self) -> Quick {
        if self.closing.is_some() {
            return self.discard();
        }
        if self.finished() {
            return Quick::Closed;
        }
        if self.no_more_requests
            || self.shared.must_close()
            || self.pending_end.is_some()
            || self.parsed.is_some()
        {
            return Quick::Slow;
        }
        // a response still being written: the next request waits for it on a thread that
        // may block (see `next_request`)
        let answering = self.shared.outstanding() > 0;
        let Some(reader) = self.reader.as_mut() else {
            return Quick::Slow;
        };
        if reader.buffer().is_empty() {
            reader.get_mut().set_mode(ReadMode::NonBlocking);
            match reader.fill_buf() {
                Ok([]) => return Quick::Closed,
                Ok(_) => (),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Quick::Park,
                Err(_) => return Quick::Closed,
            }
        }
        if answering {
            return Quick::Slow;
        }
        self.may_block = false;
        let next = self.next_request(true);
        self.may_block = true;
        match next {
            Ok(rq) => Quick::Request(rq),
            Err(End::Park) => Quick::Park,
            Err(End::Quiet) => Quick::Closed,
            Err(End::Defer) => Quick::Slow,
            Err(end) => {
                self.pending_end = Some(end);
                Quick::Slow
            }
        }
    }

    /// Serves requests on this thread, blocking as needed, until the connection only waits
    /// for its next request (true: it can be parked) or is finished (false). With `park`
    /// (there is an idle set), a request head is never waited for: one that has only partly
    /// arrived is kept and the connection can be parked (true) to wait for the rest.
    pub(crate) fn serve_until_idle(
        &mut self,
        park: bool,
        mut deliver: impl FnMut(Request),
    ) -> bool {
        loop {
            if self.finished() {
                return false;
            }
            if self.reader.is_none() && self.pending_end.is_none() {
                match self.take_reader() {
                    Ok(reader) => self.reader = Some(reader),
                    Err(end) => {
                        self.finish(end);
                        return false;
                    }
                }
            }
            if self.waits_idle(true) {
                return true;
            }
            match self.next_on_thread(park) {
                Next::Request(rq) => deliver(rq),
                Next::Park => return true,
                Next::End => return false,
            }
        }
    }

    /// Reads and throws away what the client still sends after a late head was answered
    /// (see [`ClientConnection::answer_late`]), without waiting: `Park` until the client
    /// closes, `Closed` once it has (or has sent too much).
    fn discard(&mut self) -> Quick {
        let (Some(reader), Some((_, taken))) = (self.reader.as_mut(), self.closing.as_mut()) else {
            return Quick::Closed;
        };
        reader.get_mut().set_mode(ReadMode::NonBlocking);
        let mut scratch = [0u8; 8 * 1024];
        loop {
            match reader.read(&mut scratch) {
                Ok(0) => return Quick::Closed,
                Ok(n) => {
                    *taken += n;
                    if *taken > LINGER_BYTES {
                        return Quick::Closed;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Quick::Park,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Quick::Closed,
            }
        }
    }

    /// Answers `408` to a request head that has not fully arrived by its deadline, for the
    /// thread that found it so in the idle set, which must not block: the answer is written
    /// without waiting (no response is in progress, so it fits in the socket's buffer) and
    /// the connection shut down for writing. True if it should then wait in the idle set
    /// while what the client still sends is thrown away (see [`LINGER_TIME`]); false if it
    /// is to be closed at once (nothing of a request had arrived: no answer).
    #[cfg(target_os = "linux")]
    pub(crate) fn answer_late(&mut self) -> bool {
        if !self.head.started || self.closing.is_some() {
            return false;
        }
        self.head.reset();
        let mut answer = Vec::with_capacity(160);
        let printed = Response::empty(StatusCode(408)).print(
            &mut answer,
            &HTTPVersion(1, 1),
            false,
            None,
            ConnectionHint::Close,
        );
        if printed.is_err() || self.shared.sock.set_nonblocking(true).is_err() {
            return false;
        }
        let _ = (&*self.shared.sock).write(&answer);
        self.shared.shutdown(Shutdown::Write);
        self.closing = Instant::now().checked_add(LINGER_TIME).map(|t| (t, 0));
        self.closing.is_some()
    }

    /// True once a connection in the idle set has waited too long: for the rest of a head
    /// partly arrived, its header timeout; for a first request, the header timeout counted
    /// from acceptance; else the keep-alive timeout counted from the end of the last response.
    /// After a late head was answered, once its linger time has passed.
    pub(crate) fn idle_expired(&self, now: Instant) -> bool {
        let end = if let Some((until, _)) = self.closing {
            Some(until)
        } else if self.head.started {
            self.head.deadline
        } else if self.requests == 0 {
            self.first_request_deadline()
        } else {
            self.keep_alive_end()
        };
        end.is_some_and(|end| now >= end)
    }

    /// When a fresh connection must have sent its first request: the header timeout (or, if
    /// that is disabled, the keep-alive timeout) counted from its acceptance.
    fn first_request_deadline(&self) -> Option<Instant> {
        non_zero(self.limits.header_timeout)
            .or_else(|| non_zero(self.limits.keep_alive_timeout))
            .and_then(|d| self.accepted_at.checked_add(d))
    }

    /// When the keep-alive period of an idle connection ends: counted from the end of the last
    /// response. `None` while a response is still being written, or when it is disabled.
    fn keep_alive_end(&self) -> Option<Instant> {
        if self.shared.outstanding() > 0 {
            return None;
        }
        non_zero(self.limits.keep_alive_timeout)
            .and_then(|d| self.shared.last_done().checked_add(d))
    }

    /// Gets the reading side back, draining what a previous request left of its body.
    fn take_reader(&mut self) -> Result<ConnReader, End> {
        if let Some(reader) = self.reader.take() {
            return Ok(reader);
        }
        let Returned {
            src: mut reader,
            mut decoder,
        } = self.returned_rx.recv().map_err(|_| End::Quiet)?;
        if !decoder.is_done() {
            if self.shared.must_close() {
                return Err(End::Linger(reader));
            }
            reader
                .get_mut()
                .set_mode(ReadMode::Deadline(deadline_after(self.limits.read_timeout)));
            if !drain(&mut reader, &mut decoder, self.limits.max_drain_bytes) {
                log::debug!("Request body left unread is too large; closing the connection");
                return Err(End::Linger(reader));
            }
        }
        Ok(reader)
    }

    /// Reads a request from the stream.
    /// Blocks until the header has been read.
    fn next_request(&mut self, park: bool) -> Result<Request, End> {
        let mut reader = self.take_reader()?;
        // one request at a time: the previous response is written before the next is read
        self.shared.wait_responses();
        if self.no_more_requests || self.shared.must_close() {
            return Err(End::Linger(reader));
        }

        let head = match self.parsed.take() {
            Some(head) => head,
            None => match self.read_head(&mut reader, park) {
                Ok(head) => head,
                Err(HeadError::Park) => {
                    self.reader = Some(reader);
                    return Err(End::Park);
                }
                Err(HeadError::Quiet) => return Err(End::Quiet),
                Err(HeadError::Respond(status)) => return Err(End::Respond(status, reader)),
            },
        };

        // body reads have their own timeout
        reader
            .get_mut()
            .set_mode(ReadMode::Timeout(non_zero(self.limits.read_timeout)));

        let framing = match Framing::of(&head) {
            Ok(framing) => framing,
            Err(status) => return Err(End::Respond(status, reader)),
        };
        let body_length = match framing.content_length.map(usize::try_from) {
            None => None,
            Some(Ok(n)) => Some(n),
            Some(Err(_)) => return Err(End::Respond(413, reader)),
        };

        let mut raw = None;
        let body = if framing.upgrade && !framing.has_body() {
            // the stream is handed over whole by `Request::upgrade`, with no read timeout;
            // the request itself has no body
            reader.get_mut().set_mode(ReadMode::Timeout(None));
            self.upgraded = true;
            raw = Some(Box::new(reader) as Box<dyn Read + Send>);
            Body::Reader(Box::new(io::empty()))
        } else if framing.chunked {
            Body::Conn(BodyReader::new(
                reader,
                BodyDecoder::Chunked(ChunkState::Size),
                self.returned_tx.clone(),
            ))
        } else {
            match framing.content_length {
                None | Some(0) => {
                    self.reader = Some(reader);
                    Body::Reader(Box::new(io::empty()))
                }
                Some(n) if n <= PREREAD_BODY_BYTES && !framing.expects_continue => {
                    if !self.may_block && (reader.buffer().len() as u64) < n {
                        // not all here yet: a thread that may block reads it
                        self.parsed = Some(head);
                        self.reader = Some(reader);
                        return Err(End::Defer);
                    }
                    // small enough: read it now, so that a truncated body is refused before
                    // anyone acts on the request
                    let mut buffer = vec![0; n as usize];
                    match reader.read_exact(&mut buffer) {
                        Ok(()) => (),
                        Err(e) if is_timeout(&e) => return Err(End::Respond(408, reader)),
                        Err(_) => return Err(End::Respond(400, reader)),
                    }
                    self.reader = Some(reader);
                    Body::Reader(Box::new(Cursor::new(buffer)))
                }
                Some(n) => Body::Conn(BodyReader::new(
                    reader,
                    BodyDecoder::Length(n),
                    self.returned_tx.clone(),
                )),
            }
        };

        self.requests += 1;
        self.no_more_requests = framing.close_after;

        let writer = ResponseWriter::new(self.sink.next_writer(), self.shared.clone());
        let Head {
            method,
            path,
            version,
            headers,
        } = head;
        Ok(Request::from(ConnRequest {
            method,
            path,
            version,
            headers,
            remote_addr: self.remote_addr,
            body,
            raw,
            body_length,
            expects_continue: framing.expects_continue,
            writer: Box::new(writer),
            conn: self.shared.clone(),
            close_after: framing.close_after,
        }))
    }

    /// Waits for the first byte of the next request, applying the header timeout (first
    /// request) or the keep-alive timeout (later ones).
    fn wait_for_request(&mut self, reader: &mut ConnReader) -> Result<(), HeadError> {
        let limits = &self.limits;
        let first = self.requests == 0;
        let mode = if first {
            ReadMode::Deadline(self.first_request_deadline())
        } else {
            ReadMode::Deadline(deadline_after(limits.keep_alive_timeout))
        };
        reader.get_mut().set_mode(mode);

        loop {
            match reader.fill_buf() {
                Ok([]) => return Err(HeadError::Quiet),
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_timeout(&e) && !first => {
                    // idle: the keep-alive period starts when the last response is done
                    let deadline = match self.keep_alive_end() {
                        Some(end) if end > Instant::now() => Some(end),
                        Some(_) => return Err(HeadError::Quiet),
                        // a response is still being written: wait another period
                        None => deadline_after(limits.keep_alive_timeout),
                    };
                    reader.get_mut().set_mode(ReadMode::Deadline(deadline));
                }
                // nothing received at all: close without answering
                Err(_) => return Err(HeadError::Quiet),
            }
        }
    }

    /// Reads and parses a request head within the size limits, within the header timeout
    /// (counted from acceptance for a first request, else from the head's first byte). With
    /// `park`, no read waits: a head that has not fully arrived is kept as far as it came
    /// (`HeadError::Park`) and the next call carries on from there; its deadline is then
    /// enforced by the idle set (see [`ClientConnection::idle_expired`]).
    fn read_head(&mut self, reader: &mut ConnReader, park: bool) -> Result<Head, HeadError> {
        if park {
            reader.get_mut().set_mode(ReadMode::NonBlocking);
        }
        if !self.head.started {
            if park {
                match reader.fill_buf() {
                    Ok([]) => return Err(HeadError::Quiet),
                    Ok(_) => (),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(HeadError::Park),
                    Err(_) => return Err(HeadError::Quiet),
                }
            } else {
                self.wait_for_request(reader)?;
            }
            let deadline = if self.requests == 0 {
                self.first_request_deadline()
            } else {
                deadline_after(self.limits.header_timeout)
            };
            self.head.start(deadline, self.limits.max_header_bytes);
        }
        if !park {
            reader
                .get_mut()
                .set_mode(ReadMode::Deadline(self.head.deadline));
        }
        let read = self.parse_head(reader);
        if !matches!(read, Err(HeadError::Park)) {
            self.head.reset();
        }
        read
    }

    /// Takes the lines of the head in `self.head` from `reader`, carrying on where the last
    /// call stopped.
    fn parse_head(&mut self, reader: &mut ConnReader) -> Result<Head, HeadError> {
        let max_url = self.limits.max_url_bytes;
        let line_cap = max_url.saturating_add(REQUEST_LINE_OVERHEAD);
        let head = &mut self.head;

        while head.request_line.is_none() {
            let consumed = match continue_line(reader, &mut head.line, line_cap) {
                Ok(n) => n,
                Err(LineError::TooLong) => return Err(HeadError::Respond(414)),
                Err(e) => return Err(line_error_to_head(e)),
            };
            if consumed > head.budget {
                return Err(HeadError::Respond(431));
            }
            head.budget -= consumed;
            if head.line.is_empty() {
                head.empty_lines += 1;
                if head.empty_lines > MAX_LEADING_EMPTY_LINES {
                    return Err(HeadError::Respond(400));
                }
                continue;
            }
            let (method, path, version) = {
                let line = match std::str::from_utf8(&head.line) {
                    Ok(l) if l.is_ascii() && !has_controls(&head.line) => l,
                    _ => return Err(HeadError::Respond(400)),
                };
                parse_request_line(line.trim()).ok_or(HeadError::Respond(400))?
            };
            if path.len() > max_url {
                return Err(HeadError::Respond(414));
            }
            if version > (1, 1) {
                return Err(HeadError::Respond(505));
            }
            head.request_line = Some((method, path, version));
            head.line.clear();
        }

        loop {
            let consumed = match continue_line(reader, &mut head.line, head.budget) {
                Ok(n) => n,
                Err(e) => return Err(line_error_to_head(e)),
            };
            head.budget -= consumed;
            if head.line.is_empty() {
                break;
            }
            if head.line[0] == b' ' || head.line[0] == b'\t' {
                // obsolete line folding
                return Err(HeadError::Respond(400));
            }
            let header = std::str::from_utf8(&head.line)
                .ok()
                .filter(|l| l.is_ascii() && !has_controls(l.as_bytes()))
                .and_then(|l| Header::from_str(l.trim()).ok())
                .filter(|h| !h.field.as_str().is_empty())
                .ok_or(HeadError::Respond(400))?;
            head.headers.push(header);
            head.line.clear();
        }

        let (method, path, version) = head.request_line.take().ok_or(HeadError::Respond(400))?;
        Ok(Head {
            method,
            path,
            version,
            headers: std::mem::take(&mut head.headers),
        })
    }

    /// Closes the connection the way `end` says. Responses to requests already handed out
    /// are still written, in order, before the connection is shut down.
    fn finish(&mut self, end: End) {
        self.done = true;
        let reader = match end {
            End::Quiet | End::Defer | End::Park => return,
            End::Linger(reader) => {
                // wait for the responses already promised
                let mut writer = self.sink.next_writer();
                writer.wait_turn();
                let _ = writer.flush();
                reader
            }
            End::Respond(status, reader) => {
                let mut writer = self.sink.next_writer();
                let _ = Response::empty(StatusCode(status))
                    .print(
                        &mut writer,
                        &HTTPVersion(1, 1),
                        false,
                        None,
                        ConnectionHint::Close,
                    )
                    .and_then(|_| writer.flush());
                reader
            }
        };
        self.linger(reader);
    }

    /// Sends FIN, then reads and discards for a short while, until the client closes.
    fn linger(&mut self, mut reader: ConnReader) {
        self.shared.shutdown(Shutdown::Write);
        let deadline = Instant::now().checked_add(LINGER_TIME);
        reader.get_mut().set_mode(ReadMode::Deadline(deadline));
        let mut scratch = [0u8; 8 * 1024];
        let mut total = 0;
        loop {
            match reader.read(&mut scratch) {
                Ok(0) => break,
                Ok(n) => {
                    total += n;
                    if total > LINGER_BYTES {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    }
}

struct Head {
    method: Method,
    path: String,
    version: HTTPVersion,
    headers: Vec<Header>,
}

/// How a request's body is delimited and what its head says about the connection.
struct Framing {
    chunked: bool,
    content_length: Option<u64>,
    expects_continue: bool,
    /// `Connection: upgrade`: the client wants the stream for another protocol.
    upgrade: bool,
    /// The connection ends after this request's response.
    close_after: bool,
}

impl Framing {
    /// Reads the framing from the head; `Err` is the status refusing an ambiguous or
    /// unsupported one.
    fn of(head: &Head) -> Result<Framing, u16> {
        let find = |name: &'static str| find_headers(&head.headers, name);
        let codings: Vec<&str> = find("Transfer-Encoding")
            .flat_map(|h| h.value.as_str().split(','))
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        let chunked = match codings.as_slice() {
            [] if find("Transfer-Encoding").next().is_none() => false,
            [c] if c.eq_ignore_ascii_case("chunked") => {
                if find("Content-Length").next().is_some() {
                    // ambiguous framing (request smuggling)
                    return Err(400);
                }
                true
            }
            // other transfer codings are not supported
            [.., last] if last.eq_ignore_ascii_case("chunked") => return Err(501),
            // the body length cannot be determined
            _ => return Err(400),
        };
        let mut content_length: Option<u64> = None;
        for h in find("Content-Length") {
            match (parse_content_length(h.value.as_str()), content_length) {
                (Some(v), None) => content_length = Some(v),
                (Some(v), Some(prev)) if v == prev => (),
                _ => return Err(400),
            }
        }

        let expects_continue = match find("Expect").next() {
            None => false,
            Some(v) if v.value.as_str().eq_ignore_ascii_case("100-continue") => true,
            Some(_) => return Err(417),
        };

        let mut upgrade = false;
        let mut close = false;
        let mut keep_alive = false;
        for option in find("Connection").flat_map(|h| h.value.as_str().split(',')) {
            let option = option.trim();
            upgrade |= option.eq_ignore_ascii_case("upgrade");
            close |= option.eq_ignore_ascii_case("close");
            keep_alive |= option.eq_ignore_ascii_case("keep-alive");
        }
        let http10 = head.version == HTTPVersion(1, 0);
        Ok(Framing {
            chunked,
            content_length,
            expects_continue,
            upgrade,
            close_after: close || upgrade || (http10 && (!keep_alive || chunked)),
        })
    }

    /// True if a body follows the head. An upgrade request with a body is served as an
    /// ordinary request (its body framed like any other), and its connection closed after.
    fn has_body(&self) -> bool {
        self.chunked || self.content_length.is_some_and(|n| n > 0)
    }
}

impl ClientConnection {
    /// The next request, read on a thread that may block. With `park`, a head that has not
    /// fully arrived is not waited for (`Next::Park`, see [`End::Park`]).
    fn next_on_thread(&mut self, park: bool) -> Next {
        if self.done {
            return Next::End;
        }
        if let Some(end) = self.pending_end.take() {
            self.finish(end);
            return Next::End;
        }
        if self.upgraded {
            // the stream belongs to the upgraded request now
            self.done = true;
            return Next::End;
        }
        if self.closing.take().is_some() {
            // a late head was answered from the idle set, which could not keep the connection
            self.done = true;
            if let Some(reader) = self.reader.take() {
                self.linger(reader);
            }
            return Next::End;
        }
        loop {
            match self.next_request(park) {
                Ok(rq) => return Next::Request(rq),
                // this thread may block: carry on with the body
                Err(End::Defer) => continue,
                Err(End::Park) => return Next::Park,
                Err(end) => {
                    self.finish(end);
                    return Next::End;
                }
            }
        }
    }
}

impl Iterator for ClientConnection {
    type Item = Request;

    /// Blocks until the next Request is available.
    /// Returns None when no new Requests will come from the client.
    fn next(&mut self) -> Option<Request> {
        match self.next_on_thread(false) {
            Next::Request(rq) => Some(rq),
            Next::Park | Next::End => None,
        }
    }
}

/// Parses a "HTTP/1.1" string.
fn parse_http_version(version: &str) -> Option<HTTPVersion> {
    let (major, minor) = match version {
        "HTTP/0.9" => (0, 9),
        "HTTP/1.0" => (1, 0),
        "HTTP/1.1" => (1, 1),
        "HTTP/2.0" => (2, 0),
        "HTTP/3.0" => (3, 0),
        _ => return None,
    };

    Some(HTTPVersion(major, minor))
}

/// Parses the request line of the request.
/// eg. GET / HTTP/1.1
fn parse_request_line(line: &str) -> Option<(Method, String, HTTPVersion)> {
    let mut parts = line.split(' ');

    let method = parts.next().and_then(|w| w.parse().ok())?;
    let path = parts.next().filter(|p| !p.is_empty())?.to_owned();
    let version = parts.next().and_then(parse_http_version)?;
    if parts.next().is_some() {
        return None;
    }

    Some((method, path, version))
}

#[cfg(test)]
mod test {
    #[test]
    fn test_parse_request_line() {
        let (method, path, ver) = super::parse_request_line("GET /hello HTTP/1.1").unwrap();

        assert!(method == crate::Method::Get);
        assert!(path == "/hello");
        assert!(ver == crate::common::HTTPVersion(1, 1));

        assert!(super::parse_request_line("GET /hello").is_none());
        assert!(super::parse_request_line("qsd qsd qsd").is_none());
        assert!(super::parse_request_line("GET  /hello HTTP/1.1").is_none());
        assert!(super::parse_request_line("GET /a b HTTP/1.1").is_none());
    }

    #[test]
    fn test_parse_content_length() {
        use super::parse_content_length as p;
        assert_eq!(p("0"), Some(0));
        assert_eq!(p(" 42 "), Some(42));
        assert_eq!(p("42, 42"), Some(42));
        assert_eq!(p("200000000000"), Some(200_000_000_000));
        assert_eq!(p("42, 43"), None);
        assert_eq!(p("+42"), None);
        assert_eq!(p("-1"), None);
        assert_eq!(p("4 2"), None);
        assert_eq!(p(""), None);
        assert_eq!(p("99999999999999999999999"), None);
    }
}
