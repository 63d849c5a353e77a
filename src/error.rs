//! Every way a request can fail, and the one place each becomes an HTTP status.
//!
//! Modules return their own errors ([`ProviderError`], [`NameError`], ...); the request path
//! turns them into an [`Error`] naming the function involved, and [`Error::status`] is the only
//! mapping from failure to status code in the crate. Bodies are short plain text that says what
//! happened and to which function, because the person reading them is usually holding `curl`.

use std::fmt;
use std::time::Duration;

use crate::function::{FunctionRef, NameError};
use crate::provider::ProviderError;
use crate::queue::{QueueError, RETRY_AFTER};

/// A request that could not be answered by a function.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The path names no route.
    NoRoute {
        /// The path, cut to a printable length.
        path: String,
    },
    /// The route exists, but not for this method.
    MethodNotAllowed {
        /// The methods that are, for the `Allow` header.
        allowed: String,
    },
    /// The function or namespace name is not a DNS label.
    BadName(NameError),
    /// Something else about the request is malformed.
    BadRequest(String),
    /// The request asks for a forward proxy (`CONNECT`, absolute-form target): defrost is not one.
    NotAProxy(&'static str),
    /// The client stopped sending its body for longer than the read timeout.
    BodyTimeout,
    /// The request body is larger than the configured limit.
    BodyTooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// The provider does not know the function.
    FunctionNotFound(FunctionRef),
    /// The provider could not be asked, or failed, while looking the function up.
    Provider(FunctionRef, ProviderError),
    /// Scaling from zero failed after every retry.
    ScaleFailed {
        /// The function.
        function: FunctionRef,
        /// Scale calls made.
        attempts: u32,
        /// Why the last one failed.
        last: ProviderError,
    },
    /// The function's replicas kept exiting before they became ready.
    StartFailed {
        /// The function.
        function: FunctionRef,
        /// Starts this request asked for.
        starts: u32,
        /// The provider's account of the last failure, when it gives one.
        last: Option<String>,
    },
    /// The function's replicas keep failing and the provider holds the next start back longer
    /// than the request may wait.
    CrashLooping {
        /// The function.
        function: FunctionRef,
        /// What happened to its last replica.
        last: String,
        /// When the provider starts another.
        retry_after: Duration,
    },
    /// The function has no replicas and the gateway may not start one.
    ScaleFromZeroDisabled(FunctionRef),
    /// No replica became ready in time.
    NotReady {
        /// The function.
        function: FunctionRef,
        /// How long the request waited.
        waited: Duration,
    },
    /// Every replica was busy with as many calls as the function takes at once, for as long
    /// as a request may wait.
    NoFreeSlot {
        /// The function.
        function: FunctionRef,
        /// Calls one replica takes at once.
        limit: usize,
        /// How long the request waited in line.
        waited: Duration,
    },
    /// Too many requests are already waiting; try again shortly.
    Overloaded {
        /// The function.
        function: FunctionRef,
        /// Requests waiting already.
        waiting: usize,
        /// When to try again.
        retry_after: Duration,
    },
    /// `max_upgraded` upgraded connections are open already; try again shortly.
    TooManyUpgraded {
        /// The bound.
        limit: usize,
    },
    /// The replica could not be reached or broke off before answering.
    Upstream {
        /// The function.
        function: FunctionRef,
        /// What went wrong, naming the replica's address.
        detail: String,
    },
    /// The replica did not answer within the upstream timeout.
    UpstreamTimeout {
        /// The function.
        function: FunctionRef,
        /// The timeout.
        after: Duration,
    },
    /// The provider's API could not be reached for a pass-through call.
    ProviderApi(String),
    /// The client credentials are missing or wrong.
    Unauthorized,
    /// The gateway is shutting down.
    ShuttingDown,
    /// An asynchronous call was not queued.
    Queue(QueueError),
}

impl Error {
    /// A failure to read the client's request body: a timeout is the client's silence (408),
    /// anything else a malformed body (400).
    pub fn from_body_read(e: std::io::Error) -> Error {
        match e.kind() {
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => Error::BodyTimeout,
            _ => Error::BadRequest(format!("reading the request body failed: {e}")),
        }
    }

    /// The HTTP status for this failure. The only such mapping in defrost.
    pub fn status(&self) -> u16 {
        match self {
            Error::BadName(_) | Error::BadRequest(_) | Error::NotAProxy(_) => 400,
            Error::Unauthorized => 401,
            Error::NoRoute { .. } | Error::FunctionNotFound(_) => 404,
            Error::MethodNotAllowed { .. } => 405,
            Error::BodyTimeout => 408,
            Error::BodyTooLarge { .. } => 413,
            Error::Provider(_, ProviderError::NotFound) => 404,
            Error::Provider(..)
            | Error::ProviderApi(_)
            | Error::ScaleFailed { .. }
            | Error::StartFailed { .. }
            | Error::Upstream { .. } => 502,
            Error::ScaleFromZeroDisabled(_)
            | Error::Overloaded { .. }
            | Error::CrashLooping { .. }
            | Error::TooManyUpgraded { .. }
            | Error::ShuttingDown
            | Error::Queue(QueueError::Full { .. } | QueueError::Store(_) | QueueError::Stopped) => {
                503
            }
            Error::NotReady { .. } | Error::NoFreeSlot { .. } | Error::UpstreamTimeout { .. } => {
                504
            }
            Error::Queue(QueueError::Off) => 501,
        }
    }

    /// Extra headers the status calls for.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            Error::Overloaded { retry_after, .. } | Error::CrashLooping { retry_after, .. } => {
                vec![("Retry-After", whole_seconds(*retry_after).to_string())]
            }
            // `Connection: close` comes from the server, which closes every connection after
            // its response once it stops accepting
            Error::ShuttingDown
            | Error::TooManyUpgraded { .. }
            | Error::Queue(QueueError::Stopped) => {
                vec![("Retry-After", "1".into())]
            }
            Error::Queue(QueueError::Full { .. } | QueueError::Store(_)) => {
                vec![("Retry-After", whole_seconds(RETRY_AFTER).to_string())]
            }
            Error::Unauthorized => vec![("WWW-Authenticate", "Basic realm=\"Restricted\"".into())],
            Error::MethodNotAllowed { allowed } => vec![("Allow", allowed.clone())],
            _ => Vec::new(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoRoute { path } => write!(f, "no route for {path}"),
            Error::MethodNotAllowed { allowed } => write!(f, "method not allowed; use {allowed}"),
            Error::BadName(e) => write!(f, "{e}"),
            Error::BadRequest(why) => write!(f, "bad request: {why}"),
            Error::NotAProxy(what) => write!(f, "refused: {what}; defrost is not a forward proxy"),
            Error::BodyTimeout => write!(f, "the request body stopped arriving; timed out"),
            Error::BodyTooLarge { limit } => {
                write!(f, "request body is larger than the limit of {limit} bytes")
            }
            Error::FunctionNotFound(func) => write!(f, "function {func} not found"),
            Error::Provider(func, e) => write!(f, "function {func}: {e}"),
            Error::ScaleFailed { function, attempts, last } => write!(
                f,
                "function {function}: scaling from zero failed after {attempts} attempts: {last}"
            ),
            Error::StartFailed {
                function,
                starts,
                last: None,
            } => write!(
                f,
                "function {function}: its replicas exited before becoming ready ({starts} starts); see the gateway log for their output"
            ),
            Error::StartFailed {
                function,
                starts,
                last: Some(last),
            } => write!(
                f,
                "function {function}: no replica became ready ({starts} starts); the last: {last}"
            ),
            Error::CrashLooping {
                function,
                last,
                retry_after,
            } => write!(
                f,
                "function {function}: its replicas keep failing, the next start is in {}s; the last: {last}",
                whole_seconds(*retry_after)
            ),
            Error::ScaleFromZeroDisabled(func) => write!(
                f,
                "function {func} has no replicas and scale from zero is disabled"
            ),
            Error::NotReady { function, waited } => write!(
                f,
                "function {function}: no replica became ready within {:.1}s",
                waited.as_secs_f64()
            ),
            Error::NoFreeSlot {
                function,
                limit,
                waited,
            } => write!(
                f,
                "function {function}: every replica was busy with its {limit} call{} at once (max_concurrency) for {:.1}s; no slot came free",
                if *limit == 1 { "" } else { "s" },
                waited.as_secs_f64()
            ),
            Error::Overloaded { function, waiting, .. } => write!(
                f,
                "function {function}: {waiting} requests are already waiting for a replica; retry later"
            ),
            Error::TooManyUpgraded { limit } => write!(
                f,
                "{limit} upgraded connections are open already, the most allowed; retry later"
            ),
            Error::Upstream { function, detail } => write!(f, "function {function}: {detail}"),
            Error::UpstreamTimeout { function, after } => write!(
                f,
                "function {function}: no answer within {:.1}s",
                after.as_secs_f64()
            ),
            Error::ProviderApi(why) => write!(f, "provider unavailable: {why}"),
            Error::Unauthorized => f.write_str("authentication required"),
            Error::ShuttingDown => f.write_str("the gateway is shutting down"),
            Error::Queue(e @ QueueError::Off) => e.fmt(f),
            Error::Queue(e) => write!(f, "{e}; retry later"),
        }
    }
}

impl std::error::Error for Error {}

impl From<NameError> for Error {
    fn from(e: NameError) -> Error {
        Error::BadName(e)
    }
}

/// Retry-After takes whole seconds; a wait shorter than one still asks for one, and a part
/// second is rounded up so that the client does not come back too early.
fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f() -> FunctionRef {
        FunctionRef::new("echo", "default").unwrap()
    }

    #[test]
    fn a_stalled_body_is_a_timeout_and_a_broken_one_bad() {
        use std::io::{Error as IoError, ErrorKind};
        let stalled = Error::from_body_read(IoError::new(ErrorKind::TimedOut, "read timed out"));
        assert_eq!(stalled.status(), 408);
        let broken = Error::from_body_read(IoError::new(ErrorKind::InvalidData, "bad chunk"));
        assert_eq!(broken.status(), 400);
        assert!(broken.to_string().contains("bad chunk"), "{broken}");
    }

    #[test]
    fn statuses_are_honest() {
        let cases: Vec<(Error, u16)> = vec![
            (Error::FunctionNotFound(f()), 404),
            (
                Error::Provider(f(), ProviderError::Unavailable("refused".into())),
                502,
            ),
            (Error::Provider(f(), ProviderError::NotFound), 404),
            (
                Error::NotReady {
                    function: f(),
                    waited: Duration::from_secs(2),
                },
                504,
            ),
            (
                Error::NoFreeSlot {
                    function: f(),
                    limit: 1,
                    waited: Duration::from_secs(30),
                },
                504,
            ),
            (
                Error::ScaleFailed {
                    function: f(),
                    attempts: 20,
                    last: ProviderError::Failed("500".into()),
                },
                502,
            ),
            (
                Error::Overloaded {
                    function: f(),
                    waiting: 9,
                    retry_after: Duration::from_secs(1),
                },
                503,
            ),
        ];
        for (err, status) in cases {
            assert_eq!(err.status(), status, "{err}");
            assert!(
                err.to_string().contains("echo.default") || status == 404,
                "{err}"
            );
        }
    }

    #[test]
    fn overload_says_when_to_retry() {
        let e = Error::Overloaded {
            function: f(),
            waiting: 1,
            retry_after: Duration::from_millis(10),
        };
        assert_eq!(e.headers(), vec![("Retry-After", "1".to_string())]);
    }
}
