//! `GET /system/logs`: the process replicas' recent output in the faas-provider logs format,
//! one JSON message per line (`name`, `namespace`, `instance`, `timestamp`, `text`).
//!
//! A plain request gets what the function's ring holds (after `since`, the last `tail`, of one
//! `instance` if named) and ends. With `follow=true` the response stays open and new lines are
//! sent as they are printed. A follower holds a worker for as long as it follows, so
//! following is bounded three ways: at most [`MAX_FOLLOWERS`] at once (more get 429), each for
//! at most [`FOLLOW_LIMIT`], and every follower ends when the gateway starts shutting down. A
//! follower whose client went away is noticed at the next write: when no line comes for
//! [`HEARTBEAT`], a bare newline is sent, which JSON stream readers skip as whitespace. The
//! worker tells the pool it is blocking, so the pool starts another in its place and followers
//! never starve function calls.

use std::io::{self, Cursor, Read};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use defrost_http::{Response, ResponseBox};

use crate::function::{FunctionRef, Namespaces};
use crate::provider::api::query_param;
use crate::provider::process::{LogBook, LogLine, Ring, Waited};
use crate::rfc3339;

/// Followers at once; each holds a worker thread.
pub const MAX_FOLLOWERS: usize = 32;
/// The longest one follow lasts; a client wanting more asks again with `since`.
pub const FOLLOW_LIMIT: Duration = Duration::from_secs(300);
/// Longest silence on a follow before a newline is sent to see whether the client is there.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// Why a logs request is not answered with logs; each maps to its status here.
#[derive(Debug, PartialEq, Eq)]
pub enum LogsError {
    /// A parameter is missing or malformed.
    BadRequest(String),
    /// The function is not one this provider runs.
    NotFound(FunctionRef),
    /// Too many followers already.
    TooManyFollowers,
    /// The gateway is stopping.
    ShuttingDown,
}

impl LogsError {
    /// The HTTP status of the answer.
    pub fn status(&self) -> u16 {
        match self {
            LogsError::BadRequest(_) => 400,
            LogsError::NotFound(_) => 404,
            LogsError::TooManyFollowers => 429,
            LogsError::ShuttingDown => 503,
        }
    }
}

impl std::fmt::Display for LogsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogsError::BadRequest(why) => write!(f, "bad logs request: {why}"),
            LogsError::NotFound(function) => write!(f, "function {function} not found"),
            LogsError::TooManyFollowers => write!(
                f,
                "{MAX_FOLLOWERS} clients already follow logs; try again later or without follow"
            ),
            LogsError::ShuttingDown => f.write_str("the gateway is shutting down"),
        }
    }
}

/// What a logs request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogsQuery {
    pub function: FunctionRef,
    pub instance: Option<String>,
    pub since: Option<SystemTime>,
    /// The last this many lines of what is kept; `None`: all of them.
    pub tail: Option<usize>,
    pub follow: bool,
}

impl LogsQuery {
    /// Reads the faas-provider parameters; `name` is required.
    pub fn parse(query: Option<&str>, namespaces: &Namespaces) -> Result<LogsQuery, LogsError> {
        let param = |name| query_param(query, name).filter(|v| !v.is_empty());
        let name = param("name")
            .ok_or_else(|| LogsError::BadRequest("the function's `name` is required".into()))?;
        let namespace = namespaces.resolve(param("namespace").as_deref()).to_owned();
        let function = FunctionRef::new(&name, &namespace)
            .map_err(|e| LogsError::BadRequest(e.to_string()))?;
        let since = param("since")
            .map(|s| rfc3339::parse(&s).map_err(|e| LogsError::BadRequest(format!("since: {e}"))))
            .transpose()?;
        // faas-cli sends -1 for "all"; anything at or below zero means all, as in faas-provider.
        let tail = match param("tail") {
            None => None,
            Some(t) => {
                let n: i64 = t.trim().parse().map_err(|_| {
                    LogsError::BadRequest(format!("tail: {t:?} is not a whole number"))
                })?;
                usize::try_from(n).ok().filter(|&n| n > 0)
            }
        };
        let follow = match param("follow").as_deref() {
            None | Some("false" | "0") => false,
            Some("true" | "1") => true,
            Some(other) => {
                return Err(LogsError::BadRequest(format!(
                    "follow: {other:?} is neither true nor false"
                )))
            }
        };
        Ok(LogsQuery {
            function,
            instance: param("instance"),
            since,
            tail,
            follow,
        })
    }

    fn wants(&self, line: &LogLine) -> bool {
        self.instance.as_ref().is_none_or(|i| *i == line.instance)
            && self.since.is_none_or(|since| line.timestamp >= since)
    }
}

/// The logs of the embedded provider's functions, and the followers reading them.
pub struct Logs {
    book: Arc<LogBook>,
    followers: Arc<AtomicUsize>,
    closed: Arc<AtomicBool>,
    follow_limit: Duration,
}

impl Logs {
    pub fn new(book: Arc<LogBook>) -> Logs {
        Logs {
            book,
            followers: Arc::new(AtomicUsize::new(0)),
            closed: Arc::new(AtomicBool::new(false)),
            follow_limit: FOLLOW_LIMIT,
        }
    }

    /// Ends every follow now, and refuses new ones: the gateway is stopping.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.book.close();
    }

    /// The body to send: finished for a plain request, a stream for a follow.
    pub fn open(&self, query: LogsQuery) -> Result<LogsBody, LogsError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(LogsError::ShuttingDown);
        }
        let ring = self
            .book
            .get(&query.function)
            .ok_or_else(|| LogsError::NotFound(query.function.clone()))?;
        let ticket = match query.follow {
            true => Some(Ticket::take(&self.followers)?),
            false => None,
        };
        let (kept, next) = ring.snapshot();
        let wanted: Vec<&Arc<LogLine>> = kept.iter().filter(|l| query.wants(l)).collect();
        let skip = query.tail.map_or(0, |t| wanted.len().saturating_sub(t));
        let mut backlog = Vec::new();
        for line in &wanted[skip..] {
            encode(&query.function, line, &mut backlog);
        }
        let Some(ticket) = ticket else {
            return Ok(LogsBody::Done(backlog));
        };
        // The response head goes out with the first piece of body: without a backlog, a
        // newline sends it now rather than at the first line or heartbeat.
        if backlog.is_empty() {
            backlog.push(b'\n');
        }
        Ok(LogsBody::Follow(Box::new(Follow {
            ring,
            query,
            next,
            buf: backlog,
            pos: 0,
            until: Instant::now() + self.follow_limit,
            closed: Arc::clone(&self.closed),
            _ticket: ticket,
        })))
    }
}

/// A logs answer's body.
pub enum LogsBody {
    /// Everything asked for, known in full.
    Done(Vec<u8>),
    /// A stream that ends when the follow does.
    Follow(Box<dyn Read + Send>),
}

impl LogsBody {
    /// The body as a reader, and its length when known.
    pub fn into_reader(self) -> (Box<dyn Read + Send>, Option<usize>) {
        match self {
            LogsBody::Done(bytes) => {
                let length = bytes.len();
                (Box::new(Cursor::new(bytes)), Some(length))
            }
            LogsBody::Follow(stream) => (stream, None),
        }
    }
}

/// One message, as faas-provider writes it, and its newline.
fn encode(function: &FunctionRef, line: &LogLine, out: &mut Vec<u8>) {
    #[derive(serde::Serialize)]
    struct Message<'a> {
        name: &'a str,
        namespace: &'a str,
        instance: &'a str,
        timestamp: String,
        text: &'a str,
    }
    let message = Message {
        name: function.name(),
        namespace: function.namespace(),
        instance: &line.instance,
        timestamp: rfc3339::format(line.timestamp),
        text: &line.text,
    };
    // Strings and a String only: encoding cannot fail, but a failure would cost the line only.
    if serde_json::to_writer(&mut *out, &message).is_ok() {
        out.push(b'\n');
    }
}

/// A place among the followers, given back when the follow ends.
struct Ticket(Arc<AtomicUsize>);

impl Ticket {
    fn take(count: &Arc<AtomicUsize>) -> Result<Ticket, LogsError> {
        let taken = count.fetch_add(1, Ordering::SeqCst);
        let ticket = Ticket(Arc::clone(count));
        if taken >= MAX_FOLLOWERS {
            return Err(LogsError::TooManyFollowers);
        }
        Ok(ticket)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The body of a follow: the backlog, then each new line as it comes, until the limit, the
/// gateway's shutdown or the function's removal.
struct Follow {
    ring: Arc<Ring>,
    query: LogsQuery,
    next: u64,
    buf: Vec<u8>,
    pos: usize,
    until: Instant,
    closed: Arc<AtomicBool>,
    _ticket: Ticket,
}

impl Read for Follow {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.buf.len() {
                let n = (self.buf.len() - self.pos).min(out.len());
                out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            self.buf.clear();
            self.pos = 0;
            let now = Instant::now();
            if now >= self.until || self.closed.load(Ordering::SeqCst) {
                return Ok(0);
            }
            match self
                .ring
                .wait_from(self.next, HEARTBEAT.min(self.until - now))
            {
                Waited::Lines(lines) => {
                    for line in lines {
                        self.next = line.seq + 1;
                        if self.query.wants(&line) {
                            encode(&self.query.function, &line, &mut self.buf);
                        }
                    }
                }
                Waited::Nothing if Instant::now() < self.until => self.buf.push(b'\n'),
                Waited::Nothing | Waited::Closed => return Ok(0),
            }
        }
    }
}

/// A remote provider's logs answer, made to end when the gateway starts shutting down: a
/// relayed follow would otherwise hold shutdown for its whole grace period. The flag is read
/// between reads, which a follow's heartbeats (or else the upstream read timeout) keep short.
pub fn cut_at_shutdown(response: ResponseBox, closed: &Arc<AtomicBool>) -> ResponseBox {
    if response.data_length().is_some() {
        return response;
    }
    let status = response.status_code();
    let headers = response.headers().to_vec();
    let inner = response.into_reader();
    let reader = UntilClosed {
        inner,
        closed: Arc::clone(closed),
    };
    Response::new(status, headers, Box::new(reader), None, None)
}

struct UntilClosed {
    inner: Box<dyn Read + Send>,
    closed: Arc<AtomicBool>,
}

impl Read for UntilClosed {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.closed.load(Ordering::SeqCst) {
            return Ok(0);
        }
        self.inner.read(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f() -> FunctionRef {
        FunctionRef::new("echo", "default").unwrap()
    }

    fn read_all(body: LogsBody) -> Vec<serde_json::Value> {
        let mut text = String::new();
        body.into_reader().0.read_to_string(&mut text).unwrap();
        text.lines()
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn parameters_follow_faas_provider() {
        let q = LogsQuery::parse(
            Some("name=echo&namespace=team&tail=-1&follow=true&instance=echo.team%231&since=2024-05-01T12:00:00Z"),
            &Namespaces::new("default"),
        )
        .unwrap();
        assert_eq!(q.function.key(), "echo.team");
        assert_eq!((q.tail, q.follow), (None, true));
        assert_eq!(q.instance.as_deref(), Some("echo.team#1"));
        assert!(q.since.is_some());
        let q = LogsQuery::parse(Some("name=echo&tail=3"), &Namespaces::new("default")).unwrap();
        assert_eq!(
            (q.function.key(), q.tail, q.follow),
            ("echo.default", Some(3), false)
        );
        for bad in [
            "",
            "namespace=x",
            "name=Bad!",
            "name=echo&tail=x",
            "name=echo&since=now",
            "name=echo&follow=maybe",
        ] {
            let e = LogsQuery::parse(Some(bad), &Namespaces::new("default")).unwrap_err();
            assert_eq!(e.status(), 400, "{bad}: {e}");
        }
    }

    #[test]
    fn a_plain_request_gets_the_tail_of_one_instance() {
        let book = Arc::new(LogBook::default());
        let ring = book.ring(&f());
        for i in 0..5 {
            ring.push(
                if i % 2 == 0 {
                    "echo.default#1"
                } else {
                    "echo.default#2"
                },
                format!("line {i}"),
            );
        }
        let logs = Logs::new(Arc::clone(&book));
        let query = |q: &str| LogsQuery::parse(Some(q), &Namespaces::new("default")).unwrap();
        let all = read_all(logs.open(query("name=echo")).unwrap());
        assert_eq!(all.len(), 5);
        assert_eq!(all[0]["name"], "echo");
        assert_eq!(all[0]["namespace"], "default");
        assert_eq!(all[0]["text"], "line 0");
        assert!(all[0]["timestamp"].as_str().unwrap().ends_with('Z'));
        let tail = read_all(
            logs.open(query("name=echo&tail=2&instance=echo.default%231"))
                .unwrap(),
        );
        let texts: Vec<_> = tail.iter().map(|m| m["text"].as_str().unwrap()).collect();
        assert_eq!(texts, ["line 2", "line 4"]);
        let future = read_all(
            logs.open(query("name=echo&since=2999-01-01T00:00:00Z"))
                .unwrap(),
        );
        assert!(future.is_empty());
        assert_eq!(
            logs.open(query("name=ghost")).err().map(|e| e.status()),
            Some(404)
        );
    }

    #[test]
    fn a_follow_streams_new_lines_and_ends_at_its_limit_or_on_close() {
        let book = Arc::new(LogBook::default());
        let ring = book.ring(&f());
        ring.push("echo.default#1", "old".into());
        let mut logs = Logs::new(Arc::clone(&book));
        logs.follow_limit = Duration::from_millis(300);
        let query =
            LogsQuery::parse(Some("name=echo&follow=true"), &Namespaces::new("default")).unwrap();
        let started = Instant::now();
        let writer = Arc::clone(&ring);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            writer.push("echo.default#1", "new".into());
        });
        let lines = read_all(logs.open(query.clone()).unwrap());
        t.join().unwrap();
        let texts: Vec<_> = lines.iter().map(|m| m["text"].as_str().unwrap()).collect();
        assert_eq!(texts, ["old", "new"]);
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );

        logs.follow_limit = FOLLOW_LIMIT;
        let body = logs.open(query.clone()).unwrap();
        let reader = std::thread::spawn(move || read_all(body));
        std::thread::sleep(Duration::from_millis(50));
        let closing = Instant::now();
        logs.close();
        assert_eq!(reader.join().unwrap().len(), 2, "the backlog, then the end");
        assert!(closing.elapsed() < Duration::from_secs(1));
        assert_eq!(logs.open(query).err().map(|e| e.status()), Some(503));
    }

    #[test]
    fn followers_are_counted_and_capped() {
        let book = Arc::new(LogBook::default());
        book.ring(&f());
        let logs = Logs::new(book);
        let query =
            LogsQuery::parse(Some("name=echo&follow=true"), &Namespaces::new("default")).unwrap();
        let held: Vec<_> = (0..MAX_FOLLOWERS)
            .map(|_| logs.open(query.clone()).unwrap())
            .collect();
        assert_eq!(
            logs.open(query.clone()).err().map(|e| e.status()),
            Some(429)
        );
        drop(held);
        assert!(logs.open(query).is_ok());
    }
}
