//! What can go wrong talking to a NATS server, said in terms of what was being done.

use std::fmt;
use std::io;
use std::time::Duration;

/// One error for everything at the NATS boundary.
#[derive(Debug)]
pub enum Error {
    /// The server URL cannot be used.
    Url(String),
    /// A subject the server would refuse (empty, spaces, control characters).
    BadSubject(String),
    /// No TCP connection to the server.
    Connect {
        /// The address as given.
        address: String,
        /// Why.
        source: io::Error,
    },
    /// Reading or writing the connection failed.
    Io(io::Error),
    /// The connection is gone (closed by either side, or the server stopped answering).
    Closed(String),
    /// The server sent something that is not the protocol.
    Protocol(String),
    /// The server announced (or we were about to send) more than the limit.
    TooLarge {
        /// What was too large.
        what: String,
        /// The limit, in bytes.
        limit: usize,
    },
    /// The server refused something with `-ERR` (authorization, permissions, parsing).
    Server(String),
    /// No answer in time.
    Timeout {
        /// What was waited for.
        what: String,
        /// How long.
        after: Duration,
    },
    /// Nobody listens on the subject (for JetStream: no stream captures it).
    NoResponders(String),
    /// A JetStream API call answered with an error document.
    Api {
        /// The API subject called.
        call: String,
        /// Its HTTP-like code (400, 404, 503...).
        code: u16,
        /// JetStream's own error number (10059: stream not found...).
        err_code: u32,
        /// The server's words.
        description: String,
    },
    /// A JetStream call answered with a status message instead of data (a pull's `409`).
    Status {
        /// The subject called.
        call: String,
        /// The `NATS/1.0` status code.
        code: u16,
        /// Its description.
        description: String,
    },
    /// A JetStream answer was not the JSON expected.
    Json {
        /// The subject called.
        call: String,
        /// The parse error.
        source: serde_json::Error,
    },
}

impl Error {
    pub(crate) fn closed(why: impl Into<String>) -> Error {
        Error::Closed(why.into())
    }

    /// Whether the connection is gone: the caller needs a new [`super::Connection`].
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, Error::Closed(_) | Error::Io(_) | Error::Protocol(_))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Url(why) => write!(f, "NATS server URL: {why}"),
            Error::BadSubject(subject) => write!(
                f,
                "{subject:?} is not a NATS subject (printable ASCII without spaces)"
            ),
            Error::Connect { address, source } => {
                write!(
                    f,
                    "cannot connect to the NATS server at {address}: {source}"
                )
            }
            Error::Io(e) => write!(f, "NATS connection: {e}"),
            Error::Closed(why) => write!(f, "NATS connection lost: {why}"),
            Error::Protocol(why) => write!(f, "NATS protocol error: {why}"),
            Error::TooLarge { what, limit } => {
                write!(f, "NATS {what} exceeds the limit of {limit} bytes")
            }
            Error::Server(text) => write!(f, "the NATS server refused: {text}"),
            Error::Timeout { what, after } => {
                write!(
                    f,
                    "no answer from the NATS server to {what} within {after:?}"
                )
            }
            Error::NoResponders(subject) => {
                write!(
                    f,
                    "nothing listens on NATS subject {subject:?} (no stream captures it?)"
                )
            }
            Error::Api {
                call,
                code,
                err_code,
                description,
            } => write!(
                f,
                "JetStream {call} answered {code} (error {err_code}): {description}"
            ),
            Error::Status {
                call,
                code,
                description,
            } => write!(f, "JetStream {call} answered status {code} {description}"),
            Error::Json { call, source } => {
                write!(f, "JetStream {call} answered unexpected JSON: {source}")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Connect { source, .. } | Error::Io(source) => Some(source),
            Error::Json { source, .. } => Some(source),
            _ => None,
        }
    }
}
