//! Protocol upgrades (WebSocket and others): the replica's leg of an upgrade request.
//!
//! The upstream client cannot hand over a connection once a replica has switched protocols,
//! so this leg is written by hand on a connection of its own: the request head rewritten as
//! for any call, with `Connection: Upgrade` and the client's `Upgrade` kept, and the answer's
//! head parsed. A `101 Switching Protocols` gives the caller the replica's connection to join
//! to the client's (see `tunnel`); any other answer is relayed as an ordinary response, its
//! body read by its own framing.

use std::io::{self, BufRead, BufReader, Cursor, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use defrost_http::{Request, Response, ResponseBox, StatusCode};
use ureq::http;

use super::{add_relayed_headers, backoff, OutgoingHead, Proxy, Target, MAX_RESPONSE_HEADERS};
use crate::call::Call;
use crate::error::Error;
use crate::function::FunctionRef;
use crate::proxy::headers::request_header;
use crate::redact;
use crate::router::upstream_url;

/// Longest response head read from a replica.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Whether the client asks for another protocol on this connection, in a way the server can
/// hand the connection over for: `Connection: upgrade`, an `Upgrade` header, and no body (an
/// upgrade request with a body is served as an ordinary request and its connection closed).
pub fn wanted(request: &Request) -> bool {
    request.can_upgrade() && request_header(request, "Upgrade").is_some()
}

/// What a replica answered to an upgrade request.
pub enum Answer {
    /// `101`: the client gets the response, then the two connections are joined.
    Switched(Switched),
    /// Anything else, relayed as an ordinary response.
    Declined(ResponseBox),
}

/// A replica that switched protocols.
pub struct Switched {
    /// The `Upgrade` value of the replica's answer (else the client's).
    pub protocol: String,
    /// The `101` for the client, with the replica's headers (`Sec-WebSocket-Accept`, ...).
    pub response: ResponseBox,
    /// The connection to the replica.
    pub upstream: TcpStream,
    /// What the replica sent after its head, already read.
    pub early: Vec<u8>,
}

impl Proxy {
    /// Sends the upgrade request to a ready replica (waiting for a cold start as any call
    /// does) and reads its answer's head; the replica stays counted busy in `call`.
    pub fn upgrade(
        &self,
        request: &Request,
        target: &Target<'_>,
        call: &mut Call,
    ) -> Result<Answer, Error> {
        let mut outgoing = self.function_head(request, target)?;
        let protocol = request_header(request, "Upgrade").unwrap_or_default();
        outgoing.set("Upgrade", protocol)?;
        outgoing.set("Connection", "Upgrade")?;
        let function = target.function;
        let mut attempt = 0;
        loop {
            let in_flight = self.replica(call, &mut attempt)?;
            let url = upstream_url(
                in_flight.endpoint().url_for(target.namespace_named),
                target.rest,
                target.query,
            );
            let upstream = Upstream::parse(&url).map_err(|detail| Error::Upstream {
                function: function.clone(),
                detail,
            })?;
            match upstream.connect(self.connect_timeout) {
                Ok(stream) => {
                    call.hold_replica(in_flight);
                    return self.handshake(stream, &upstream, &outgoing, protocol, function);
                }
                // nothing was sent: trying again is safe
                Err(e) if attempt < self.config.connect_retries => {
                    log::debug!("{function}: {} refused ({e}); retrying", redact::url(&url));
                    self.scaler.invalidate(call.record());
                    std::thread::sleep(backoff(self.config.retry_backoff, attempt));
                    attempt += 1;
                }
                Err(e) => {
                    self.scaler.invalidate(call.record());
                    return Err(Error::Upstream {
                        function: function.clone(),
                        detail: format!("cannot connect to {}: {e}", redact::url(&url)),
                    });
                }
            }
        }
    }

    /// Writes the request head and reads the answer's.
    fn handshake(
        &self,
        mut stream: TcpStream,
        upstream: &Upstream,
        outgoing: &OutgoingHead,
        protocol: &str,
        function: &FunctionRef,
    ) -> Result<Answer, Error> {
        let failed = |e: io::Error| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::UpstreamTimeout {
                function: function.clone(),
                after: self.config.upstream_timeout,
            },
            _ => Error::Upstream {
                function: function.clone(),
                detail: format!("upgrade request to {} failed: {e}", upstream.authority),
            },
        };
        let timeout = Some(self.config.upstream_timeout).filter(|t| !t.is_zero());
        stream.set_nodelay(true).map_err(failed)?;
        stream.set_read_timeout(timeout).map_err(failed)?;
        stream.set_write_timeout(timeout).map_err(failed)?;
        stream
            .write_all(&request_head(outgoing, upstream))
            .map_err(failed)?;
        let (head, early) = read_head(&mut stream).map_err(failed)?;
        let misframed = |detail: String| Error::Upstream {
            function: function.clone(),
            detail: format!("{} answered the upgrade {detail}", upstream.authority),
        };
        let head = head.map_err(misframed)?;
        if head.status == 101 {
            let protocol = head
                .header("Upgrade")
                .and_then(|v| std::str::from_utf8(v).ok())
                // the server writes it as a header of its own, ASCII only
                .filter(|v| v.is_ascii())
                .unwrap_or(protocol)
                .to_owned();
            let mut response = Response::new(
                StatusCode(101),
                Vec::new(),
                Box::new(io::empty()) as Box<dyn Read + Send>,
                Some(0),
                None,
            );
            head.add_headers(&mut response, outgoing);
            return Ok(Answer::Switched(Switched {
                protocol,
                response,
                upstream: stream,
                early,
            }));
        }
        let body = Cursor::new(early).chain(stream);
        let (body, length) = head.body(body).map_err(misframed)?;
        let mut response = Response::new(StatusCode(head.status), Vec::new(), body, length, None);
        head.add_headers(&mut response, outgoing);
        Ok(Answer::Declined(response))
    }
}

/// Where the replica listens, and the request target to ask it for.
struct Upstream {
    authority: String,
    host: String,
    port: u16,
    target: String,
}

impl Upstream {
    fn parse(url: &str) -> Result<Upstream, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("replica address {} is not a URL: {e}", redact::url(url)))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "upgrades are relayed to http:// replicas only, not {}",
                redact::url(url)
            ));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("replica address {} has no host", redact::url(url)))?;
        Ok(Upstream {
            authority: authority.as_str().to_owned(),
            host: authority.host().trim_matches(['[', ']']).to_owned(),
            port: authority.port_u16().unwrap_or(80),
            target: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        })
    }

    /// Connects to the first of the replica's addresses that accepts.
    fn connect(&self, timeout: Duration) -> io::Result<TcpStream> {
        let addrs: Vec<SocketAddr> = (self.host.as_str(), self.port).to_socket_addrs()?.collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(stream) => return Ok(stream),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// The request head as bytes: values are passed on exactly as the client sent them.
fn request_head(outgoing: &OutgoingHead, upstream: &Upstream) -> Vec<u8> {
    let mut head = Vec::with_capacity(1024);
    head.extend_from_slice(outgoing.method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(upstream.target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    head.extend_from_slice(upstream.authority.as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in &outgoing.head.headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// A replica's response head.
struct Head {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    fn add_headers(&self, response: &mut ResponseBox, outgoing: &OutgoingHead) {
        let connection = self
            .header("Connection")
            .and_then(|v| std::str::from_utf8(v).ok());
        let relayed = self
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_slice()));
        add_relayed_headers(response, relayed, connection, outgoing);
    }

    /// The body as its head frames it, and its length when known. Framed two ways at once, it
    /// is refused, as for any call.
    fn body<R: Read + Send + 'static>(
        &self,
        body: R,
    ) -> Result<(Box<dyn Read + Send>, Option<usize>), String> {
        let chunked = self.header("Transfer-Encoding").map(|v| {
            let codings = String::from_utf8_lossy(v);
            let last = codings.rsplit(',').next().unwrap_or("").trim().to_owned();
            last.eq_ignore_ascii_case("chunked")
        });
        let length = self
            .header("Content-Length")
            .map(|v| std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok());
        Ok(match (self.status, chunked, length) {
            (100..=199 | 204 | 304, _, _) => (Box::new(io::empty()), Some(0)),
            (_, Some(_), Some(_)) => {
                return Err("with both Content-Length and Transfer-Encoding".into())
            }
            (_, Some(true), None) => (Box::new(Chunked::new(BufReader::new(body))), None),
            (_, None, Some(Some(n))) => (Box::new(body.take(n as u64)), Some(n)),
            (_, None, Some(None)) => return Err("with a Content-Length that is no number".into()),
            // unknown codings, or no framing: the body ends when the replica closes
            _ => (Box::new(body), None),
        })
    }
}

/// Reads a response head: the head (or why it is not one) and what followed it.
fn read_head(stream: &mut TcpStream) -> io::Result<(Result<Head, String>, Vec<u8>)> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the replica closed the connection before answering",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf) {
            Ok(httparse::Status::Complete(end)) => {
                let head = Head {
                    status: response.code.unwrap_or(0),
                    headers: response
                        .headers
                        .iter()
                        .map(|h| (h.name.to_owned(), h.value.to_vec()))
                        .collect(),
                };
                return Ok((Ok(head), buf.split_off(end)));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => (),
            Ok(httparse::Status::Partial) => {
                return Ok((Err(format!("with a head over {MAX_HEAD_BYTES} bytes")), buf))
            }
            Err(e) => return Ok((Err(format!("with a malformed head: {e}")), buf)),
        }
    }
}

/// A chunked body, decoded (`Transfer-Encoding: chunked`); trailers are read and dropped.
struct Chunked<R> {
    src: R,
    /// Bytes left in the current chunk.
    left: u64,
    done: bool,
}

/// Longest chunk-size or trailer line read.
const MAX_LINE: u64 = 4096;

impl<R: BufRead> Chunked<R> {
    fn new(src: R) -> Chunked<R> {
        Chunked {
            src,
            left: 0,
            done: false,
        }
    }

    fn line(&mut self) -> io::Result<Vec<u8>> {
        let mut line = Vec::new();
        (&mut self.src)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)?;
        if !line.ends_with(b"\n") {
            return Err(invalid("a chunk line that is cut short or too long"));
        }
        Ok(line)
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("chunked body: {what}"))
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let line = self.line()?;
            self.left = match httparse::parse_chunk_size(&line) {
                Ok(httparse::Status::Complete((_, size))) => size,
                _ => return Err(invalid("a malformed chunk size")),
            };
            if self.left == 0 {
                while self.line()? != b"\r\n" {}
                self.done = true;
                return Ok(0);
            }
        }
        let most = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.src.read(&mut buf[..most])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "chunked body: cut short",
            ));
        }
        self.left -= n as u64;
        if self.left == 0 && self.line()? != b"\r\n" {
            return Err(invalid("no line end after a chunk"));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(encoded: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        Chunked::new(encoded).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn chunked_bodies_are_decoded_and_bad_ones_refused() {
        assert_eq!(
            decode(b"5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\nX-Trailer: 1\r\n\r\n").unwrap(),
            b"hello!"
        );
        assert!(decode(b"5\r\nhel").is_err(), "cut short");
        assert!(decode(b"zz\r\nhello\r\n0\r\n\r\n").is_err(), "bad size");
        assert!(decode(b"5\r\nhelloXX0\r\n\r\n").is_err(), "no line end");
    }

    #[test]
    fn replica_addresses_are_split_for_a_hand_written_request() {
        let u = Upstream::parse("http://127.0.0.1:9/ws?a=1").unwrap();
        assert_eq!(
            (
                u.authority.as_str(),
                u.host.as_str(),
                u.port,
                u.target.as_str()
            ),
            ("127.0.0.1:9", "127.0.0.1", 9, "/ws?a=1")
        );
        let u = Upstream::parse("http://[::1]/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 80));
        assert!(Upstream::parse("https://example.test/").is_err());
    }
}
