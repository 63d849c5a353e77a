//! The outgoing HTTP client, shared by the proxy and the OpenFaaS provider.
//!
//! One `ureq::Agent` per purpose, configured for a gateway rather than a browser: status codes
//! are data, not errors; redirects are the client's business; no proxy from the environment;
//! no automatic `Accept`/`User-Agent`/`Accept-Encoding` (the client's own headers pass through);
//! and a connection pool large enough for a busy function.
//!
//! The resolver matters for speed: ureq's default resolver, once any timeout is configured,
//! spawns a thread per request to bound the name lookup. Function addresses are nearly always
//! IP literals, so [`LiteralFirstResolver`] parses those directly (no thread, no syscall) and
//! only falls back to the system resolver, synchronously, for real host names. The connector
//! matters too: [`PeekingTcpConnector`] takes four syscalls off each pooled call (see
//! `transport`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use ureq::config::{AutoHeaderValue, Config};
use ureq::http::{Request, Uri};
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;
use ureq::{Agent, AsSendBody};

use crate::deadline;

mod transport;
pub use transport::{quick_ack, PeekingTcpConnector, StaleConnection};

/// How long each phase of an outgoing call may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect. Short: a dead replica should be noticed quickly.
    pub connect: Duration,
    /// Until the response head arrives, and for each read of its body (a streaming response
    /// may take as long as it likes in total, as long as it keeps moving).
    pub response: Duration,
    /// For each write of the request, head and body.
    pub send: Duration,
}

/// Builds an agent with the gateway's policy. Timeouts are bounded first: ureq adds them to
/// instants unchecked, and a configured "never" would panic the calling worker.
pub fn agent(timeouts: Timeouts, max_idle_per_host: usize) -> Agent {
    let Timeouts {
        connect,
        response,
        send,
    } = timeouts;
    let [connect, response, send] = [connect, response, send].map(deadline::bounded);
    let config = Config::builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .no_delay(true)
        .user_agent(AutoHeaderValue::None)
        .accept(AutoHeaderValue::None)
        .accept_encoding(AutoHeaderValue::None)
        .allow_non_standard_methods(true)
        .max_idle_connections(max_idle_per_host.saturating_mul(8).max(64))
        .max_idle_connections_per_host(max_idle_per_host.max(1))
        .max_idle_age(Duration::from_secs(90))
        .timeout_connect(Some(connect))
        .timeout_per_write(Some(send))
        .timeout_recv_response(Some(response))
        .timeout_per_read(Some(response))
        .build();
    Agent::with_parts(config, PeekingTcpConnector, LiteralFirstResolver)
}

/// Agents in shards, each thread keeping to one.
///
/// ureq keeps an agent's idle connections in one list behind one mutex, and every call scans
/// that list twice (to take a connection and to give it back), comparing scheme and authority
/// for each entry. Under `wrk -c64` through the gateway this scan was the largest single cost
/// of a warm call in user space (about a fifth of it), and the mutex was contended. With a
/// shard per worker, a worker mostly finds the very connection it used last, each list stays a
/// few entries long, and workers do not meet on one lock.
pub struct ShardedAgent {
    shards: Box<[Agent]>,
}

impl ShardedAgent {
    /// `shards` agents with the gateway's policy; the per-host idle bound is shared among them.
    pub fn new(timeouts: Timeouts, max_idle_per_host: usize, shards: usize) -> ShardedAgent {
        let shards = shards.max(1);
        let per_shard = max_idle_per_host.div_ceil(shards).max(4);
        ShardedAgent {
            shards: (0..shards).map(|_| agent(timeouts, per_shard)).collect(),
        }
    }

    /// The calling thread's agent.
    pub fn get(&self) -> &Agent {
        &self.shards[thread_slot() % self.shards.len()]
    }
}

/// A number per thread, given out in order of first use.
fn thread_slot() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    SLOT.with(|slot| *slot)
}

/// Resolves IP literals without a lookup; host names through the system resolver, inline.
#[derive(Debug, Default)]
pub struct LiteralFirstResolver;

impl Resolver for LiteralFirstResolver {
    fn resolve(
        &self,
        uri: &Uri,
        _config: &Config,
        _timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let authority = uri
            .authority()
            .ok_or_else(|| ureq::Error::BadUri(format!("{uri} has no host")))?;
        let port = authority.port_u16().unwrap_or(80);
        let host = authority.host();
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        let mut out = self.empty();
        if let Ok(ip) = literal.parse() {
            out.push(SocketAddr::new(ip, port));
            return Ok(out);
        }
        for addr in (host, port).to_socket_addrs()?.take(16) {
            out.push(addr);
        }
        if out.is_empty() {
            return Err(ureq::Error::HostNotFound);
        }
        Ok(out)
    }
}

/// True when the error means no byte of the request reached the peer: the connection was never
/// made. Only these are safe to retry on another replica.
pub fn is_connect_error(err: &ureq::Error) -> bool {
    use std::io::ErrorKind::*;
    match err {
        ureq::Error::Io(e) => matches!(
            e.kind(),
            ConnectionRefused
                | AddrNotAvailable
                | NotConnected
                | HostUnreachable
                | NetworkUnreachable
        ),
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => true,
        ureq::Error::Timeout(t) => matches!(t, ureq::Timeout::Connect | ureq::Timeout::Resolve),
        _ => false,
    }
}

/// True when a pooled connection was closed or reset before any byte of the answer arrived
/// (see `transport`): the request may be sent again on a fresh connection, if it is one that
/// can be sent twice.
pub fn is_stale_connection(err: &ureq::Error) -> bool {
    matches!(err, ureq::Error::Io(e) if e.get_ref().is_some_and(|e| e.is::<StaleConnection>()))
}

/// `request` set to go out on a new connection, whatever the pool holds: the agent's idle
/// connections to its host are all too old for it (and so are closed as the pool passes them),
/// and the new connection joins the pool afterwards as usual.
pub fn on_fresh_connection<S: AsSendBody>(agent: &Agent, request: Request<S>) -> Request<S> {
    agent
        .configure_request(request)
        .max_idle_age(Duration::ZERO)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn resolve(uri: &str) -> Vec<SocketAddr> {
        let uri: Uri = uri.parse().unwrap();
        let config = Config::builder().build();
        let timeout = NextTimeout::default();
        LiteralFirstResolver
            .resolve(&uri, &config, timeout)
            .unwrap()
            .iter()
            .copied()
            .collect()
    }

    #[test]
    fn literals_resolve_without_lookup() {
        assert_eq!(
            resolve("http://127.0.0.1:9/x"),
            vec!["127.0.0.1:9".parse().unwrap()]
        );
        assert_eq!(
            resolve("http://[::1]:9/x"),
            vec!["[::1]:9".parse().unwrap()]
        );
        assert_eq!(resolve("http://127.0.0.1/x")[0].port(), 80);
    }

    fn test_agent() -> Agent {
        let second = Duration::from_secs(5);
        agent(
            Timeouts {
                connect: second,
                response: second,
                send: second,
            },
            4,
        )
    }

    /// A keep-alive upstream that answers the first `answered` requests on each connection and
    /// closes the connection on the next one, having read it, without a word.
    fn closing_upstream(answered: usize) -> String {
        use std::io::{BufRead, BufReader, Write};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut writer = stream.try_clone().unwrap();
                    let mut reader = BufReader::new(stream);
                    let mut line = String::new();
                    let mut heads = 0;
                    while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                        if line == "\r\n" {
                            heads += 1;
                            if heads > answered {
                                return;
                            }
                            let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                            writer.write_all(answer).unwrap();
                        }
                        line.clear();
                    }
                });
            }
        });
        url
    }

    fn read(response: ureq::http::Response<ureq::Body>) -> String {
        response.into_body().read_to_string().unwrap()
    }

    #[test]
    fn a_pooled_connection_closed_before_the_answer_is_stale_and_a_fresh_one_is_not() {
        let agent = test_agent();
        let url = closing_upstream(1);
        assert_eq!(read(agent.get(&url).call().unwrap()), "ok");
        let err = agent.get(&url).call().unwrap_err();
        assert!(is_stale_connection(&err), "pooled: {err:?}");
        assert!(!is_connect_error(&err));

        let never_answers = closing_upstream(0);
        let err = agent.get(&never_answers).call().unwrap_err();
        assert!(!is_stale_connection(&err), "fresh: {err:?}");
    }

    #[test]
    fn a_request_set_on_a_fresh_connection_passes_the_pooled_one_by() {
        let agent = test_agent();
        let url = closing_upstream(1);
        assert_eq!(read(agent.get(&url).call().unwrap()), "ok");
        let request = ureq::http::Request::get(&url).body(()).unwrap();
        let response = agent.run(on_fresh_connection(&agent, request)).unwrap();
        assert_eq!(read(response), "ok", "answered: not the used connection");
    }

    #[test]
    fn refused_connection_is_a_connect_error() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let agent = agent(
            Timeouts {
                connect: Duration::from_secs(1),
                response: Duration::from_secs(1),
                send: Duration::from_secs(1),
            },
            4,
        );
        let err = agent
            .get(&format!("http://127.0.0.1:{port}/"))
            .call()
            .unwrap_err();
        assert!(is_connect_error(&err), "{err:?}");
    }
}
