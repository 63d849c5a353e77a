//! Forwarding a request to a ready replica and relaying its answer, streaming both bodies.
//!
//! The transport retries only what is safe to retry, in the manner of the Fission router's
//! retrying round-tripper: a connection that cannot be established means the cached address is
//! stale, so the cache entry is expired, the scaler asked again (which may start a replica), and
//! the call retried with exponential back-off.
//!
//! A pooled connection the replica closed or reset before any byte of its answer arrived (it
//! closed the connection while idle, or died) is not a failure of the call: the request is sent
//! once more, on a new connection and after the first back-off, when sending it twice cannot do
//! harm (see [`may_resend`]). Otherwise, once any byte of the request may have reached a replica,
//! whatever happens is relayed as is: a body is never sent twice.

pub mod headers;
pub mod trust;
pub mod upgrade;

use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use defrost_http::{Header, Request, Response, ResponseBox, StatusCode};
use ureq::http;
use ureq::{Agent, AsSendBody, SendBody};

use crate::call::Call;
use crate::client::{is_connect_error, is_stale_connection, on_fresh_connection, ShardedAgent};
use crate::error::Error;
use crate::function::FunctionRef;
use crate::redact;
use crate::router::upstream_url;
use crate::scaler::Scaler;
use crate::table::slots::Claim;
use headers::{Forwarding, Outgoing, Unsendable, X_CALL_ID, X_START_TIME};
use trust::IpRange;

/// How the proxy treats upstream calls.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Attempts after the first when a replica refuses the connection.
    pub connect_retries: u32,
    /// First back-off; doubled on each retry, up to 10 s.
    pub retry_backoff: Duration,
    /// Longest wait for a replica's response head, and between reads of its body.
    pub upstream_timeout: Duration,
    /// Largest request body accepted, declared or streamed.
    pub max_body_bytes: u64,
    /// Peers whose `X-Forwarded-Proto` and `X-Forwarded-Host` are believed.
    pub trusted_proxies: Vec<IpRange>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            connect_retries: 5,
            retry_backoff: Duration::from_millis(10),
            upstream_timeout: Duration::from_secs(60),
            max_body_bytes: 8 << 30,
            trusted_proxies: Vec::new(),
        }
    }
}

pub struct Proxy {
    agents: ShardedAgent,
    scaler: Arc<Scaler>,
    config: ProxyConfig,
    /// For the connections upgrade requests open themselves (see `upgrade`).
    connect_timeout: Duration,
}

/// A request received earlier and kept whole, to be sent now.
pub struct Stored<'a> {
    pub method: &'a str,
    /// The client's headers as received.
    pub headers: &'a [(&'a str, &'a str)],
    /// Who sent it, for the forwarding headers.
    pub client: Option<SocketAddr>,
    pub body: &'a [u8],
}

/// Where a function call goes, once routing is done.
pub struct Target<'a> {
    pub function: &'a FunctionRef,
    pub rest: &'a str,
    pub query: Option<&'a str>,
    /// Path parameters of the trigger that matched, sent as `X-Defrost-Param-{name}`.
    pub params: &'a [(&'a str, String)],
    /// Whether the caller named the namespace (`/function/echo.team`), so that a provider's
    /// function route is called the way the client called the gateway.
    pub namespace_named: bool,
}

impl Proxy {
    pub fn new(agents: ShardedAgent, scaler: Arc<Scaler>, config: ProxyConfig) -> Proxy {
        Proxy {
            agents,
            scaler,
            config,
            connect_timeout: Duration::from_secs(2),
        }
    }

    /// The connect timeout of the connections upgrade requests open themselves.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Proxy {
        self.connect_timeout = timeout;
        self
    }

    /// Sends the request to a ready replica of the function and returns the response to relay;
    /// the replica stays counted busy in `call` until the call ends.
    pub fn forward(
        &self,
        request: &mut Request,
        target: &Target<'_>,
        call: &mut Call,
    ) -> Result<ResponseBox, Error> {
        let declared = self.declared_body(request)?;
        let outgoing = self.function_head(request, target)?;
        let body = ClientBody::new(request.as_reader(), self.config.max_body_bytes);
        self.deliver(outgoing, declared, body, target, call)
    }

    /// The largest request body forwarded.
    pub fn max_body_bytes(&self) -> u64 {
        self.config.max_body_bytes
    }

    /// Sends a request received earlier and kept whole (a queued asynchronous call) as
    /// [`Proxy::forward`] sends a live one.
    pub fn forward_stored(
        &self,
        stored: &Stored<'_>,
        target: &Target<'_>,
        call: &mut Call,
    ) -> Result<ResponseBox, Error> {
        let framing = |(name, _): &(&str, &str)| {
            name.eq_ignore_ascii_case("content-length")
                || name.eq_ignore_ascii_case("transfer-encoding")
        };
        let received = stored.headers.iter().copied().filter(|h| !framing(h));
        let host = received
            .clone()
            .find(|(name, _)| name.eq_ignore_ascii_case("host"))
            .map(|(_, value)| value);
        let mut outgoing = OutgoingHead::from_parts(
            stored.method,
            received,
            stored.client,
            host,
            &self.config.trusted_proxies,
        )?;
        with_function_headers(&mut outgoing, target)?;
        let declared = match stored.body.len() as u64 {
            0 => Body::None,
            n => Body::Length(n),
        };
        let mut reader = stored.body;
        let body = ClientBody::new(&mut reader, u64::MAX);
        self.deliver(outgoing, declared, body, target, call)
    }

    /// Sends the request to a ready replica, retrying what is safe to retry.
    fn deliver(
        &self,
        outgoing: OutgoingHead,
        declared: Body,
        mut body: ClientBody<'_>,
        target: &Target<'_>,
        call: &mut Call,
    ) -> Result<ResponseBox, Error> {
        let function = target.function;
        let mut attempt = 0;
        // Once a pooled connection turned out stale, the others may be too: from then on each
        // attempt opens a new connection, and none is sent again for being stale.
        let mut fresh = false;
        loop {
            let in_flight = self.replica(call, &mut attempt)?;
            let endpoint = in_flight.endpoint();
            let url = upstream_url(
                endpoint.url_for(target.namespace_named),
                target.rest,
                target.query,
            );
            let sent = self.send(&url, &outgoing, declared, &mut body, fresh);
            match sent.and_then(refuse_misframed) {
                Ok(response) => {
                    call.hold_replica(in_flight);
                    return Ok(relay(response, &outgoing));
                }
                Err(e)
                    if is_connect_error(&e)
                        && !body.touched()
                        && attempt < self.config.connect_retries =>
                {
                    log::debug!("{function}: {} refused ({e}); retrying", redact::url(&url));
                    self.scaler.invalidate(call.record());
                    std::thread::sleep(backoff(self.config.retry_backoff, attempt));
                    attempt += 1;
                }
                Err(e)
                    if !fresh
                        && is_stale_connection(&e)
                        && may_resend(&outgoing.method, declared, body.touched()) =>
                {
                    log::debug!("{function}: {} ({e}); sending again", redact::url(&url));
                    call.record().counters().count_stale_retry();
                    fresh = true;
                    // A replica being killed can still accept a connection for a moment after
                    // its open ones closed: sent at once, the request could reach the dying
                    // process again, on a new connection. After the first back-off its port
                    // refuses instead, and the refusal is handled as any other (the address
                    // forgotten, the provider asked again).
                    std::thread::sleep(backoff(self.config.retry_backoff, 0));
                }
                Err(e) => return Err(self.failure(call, &url, e, &body, attempt + 1)),
            }
        }
    }

    /// The request head for a function: the client's, rewritten, with the function's name and
    /// the trigger's path parameters.
    fn function_head(&self, request: &Request, target: &Target<'_>) -> Result<OutgoingHead, Error> {
        let mut outgoing = OutgoingHead::from_request(request, &self.config.trusted_proxies)?;
        with_function_headers(&mut outgoing, target)?;
        Ok(outgoing)
    }

    /// A ready replica of the call's function, counted busy; waits for a cold start.
    fn replica(&self, call: &Call, attempt: &mut u32) -> Result<Claim, Error> {
        loop {
            // A replica taken out of service since the status was cached is refused here; so is
            // a status without endpoints from a provider breaking its promise. Either way the
            // provider is asked again, a bounded number of times, rather than sent a request.
            if let Some(in_flight) = self.scaler.claim(call.record())? {
                return Ok(in_flight);
            }
            self.scaler.invalidate(call.record());
            if *attempt >= self.config.connect_retries {
                return Err(Error::Upstream {
                    function: call.function().clone(),
                    detail: "the provider reported ready replicas but none in service".into(),
                });
            }
            *attempt += 1;
        }
    }

    /// Sends the request as is to `url`, a provider's API, presenting the provider's own
    /// credentials instead of the client's.
    pub fn pass_through(
        &self,
        request: &mut Request,
        url: &str,
        authorization: Option<&str>,
    ) -> Result<ResponseBox, Error> {
        let declared = self.declared_body(request)?;
        let mut outgoing = OutgoingHead::from_request(request, &self.config.trusted_proxies)?;
        outgoing.head.headers.remove(http::header::AUTHORIZATION);
        if let Some(auth) = authorization {
            outgoing.set("Authorization", auth)?;
        }
        let mut body = ClientBody::new(request.as_reader(), self.config.max_body_bytes);
        match self
            .send(url, &outgoing, declared, &mut body, false)
            .and_then(refuse_misframed)
        {
            Ok(response) => Ok(relay(response, &outgoing)),
            Err(_) if body.too_large() => Err(Error::BodyTooLarge {
                limit: self.config.max_body_bytes,
            }),
            Err(e) => Err(Error::ProviderApi(format!("{}: {e}", redact::url(url)))),
        }
    }

    /// The client's body framing, refused when it is ambiguous or declares too much.
    fn declared_body(&self, request: &Request) -> Result<Body, Error> {
        match declared_body(request)? {
            Body::Length(n) if n > self.config.max_body_bytes => Err(Error::BodyTooLarge {
                limit: self.config.max_body_bytes,
            }),
            declared => Ok(declared),
        }
    }

    fn send(
        &self,
        url: &str,
        head: &OutgoingHead,
        body: Body,
        reader: &mut ClientBody<'_>,
        fresh: bool,
    ) -> Result<http::Response<ureq::Body>, ureq::Error> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| ureq::Error::Http(e.into()))?;
        let mut headers = head.head.headers.clone();
        match body {
            Body::Length(n) => {
                headers.insert(http::header::CONTENT_LENGTH, n.into());
            }
            Body::Chunked => {
                let chunked = http::HeaderValue::from_static("chunked");
                headers.insert(http::header::TRANSFER_ENCODING, chunked);
            }
            Body::None => (),
        }
        if answer_may_be_bodiless(&head.method, &headers) {
            let close = http::HeaderValue::from_static("close");
            headers.insert(http::header::CONNECTION, close);
        }
        let agent = self.agents.get();
        match body {
            // ureq sends a POST, PUT or PATCH given no body as chunked with no chunk: a function
            // that does not decode chunked bodies (Python's http.server) would read the final
            // chunk as its next request. An empty body of known size goes as Content-Length: 0.
            Body::None if expects_body(&head.method) => {
                let empty: &[u8] = &[];
                agent.run(connection(agent, head.request(uri, headers, empty), fresh))
            }
            Body::None => agent.run(connection(agent, head.request(uri, headers, ()), fresh)),
            _ => {
                let request = head.request(uri, headers, SendBody::from_reader(reader));
                agent.run(connection(agent, request, fresh))
            }
        }
    }

    fn failure(
        &self,
        call: &Call,
        url: &str,
        e: ureq::Error,
        body: &ClientBody<'_>,
        attempts: u32,
    ) -> Error {
        if body.too_large() {
            return Error::BodyTooLarge {
                limit: self.config.max_body_bytes,
            };
        }
        if let Some(kind) = body.failed() {
            return Error::from_body_read(io::Error::new(kind, e.to_string()));
        }
        let url = redact::url(url);
        let function = call.function();
        match e {
            e if is_connect_error(&e) => {
                self.scaler.invalidate(call.record());
                Error::Upstream {
                    function: function.clone(),
                    detail: format!(
                        "cannot connect to {url} after {attempts} attempt{}: {e}",
                        if attempts == 1 { "" } else { "s" }
                    ),
                }
            }
            ureq::Error::Timeout(_) => Error::UpstreamTimeout {
                function: function.clone(),
                after: self.config.upstream_timeout,
            },
            e if is_too_many_headers(&e) => Error::Upstream {
                function: function.clone(),
                detail: format!(
                    "{url} answered with more than {MAX_RESPONSE_HEADERS} headers, more than \
                     the gateway relays"
                ),
            },
            ureq::Error::Other(e) if e.is::<Misframed>() => Error::Upstream {
                function: function.clone(),
                detail: format!("{url} answered {e}"),
            },
            e => Error::Upstream {
                function: function.clone(),
                detail: format!("call to {url} failed: {e}"),
            },
        }
    }
}

/// The headers that tell a function which function it is and what a trigger's pattern took.
fn with_function_headers(outgoing: &mut OutgoingHead, target: &Target<'_>) -> Result<(), Error> {
    let function = target.function;
    outgoing.set("X-Defrost-Function-Name", function.name())?;
    outgoing.set("X-Defrost-Function-Namespace", function.namespace())?;
    for (name, value) in target.params {
        outgoing.set(&format!("X-Defrost-Param-{name}"), value)?;
    }
    Ok(())
}

/// `request` as it goes out: on a new connection when `fresh`, else on a pooled one if any.
fn connection<S: AsSendBody>(
    agent: &Agent,
    request: http::Request<S>,
    fresh: bool,
) -> http::Request<S> {
    if fresh {
        on_fresh_connection(agent, request)
    } else {
        request
    }
}

/// The methods ureq gives a body of its own when it is given none.
fn expects_body(method: &http::Method) -> bool {
    matches!(
        *method,
        http::Method::POST | http::Method::PUT | http::Method::PATCH
    )
}

/// Whether a request may be sent again after a stale pooled connection failed it (nothing of
/// the answer arrived). A bodyless GET, HEAD or OPTIONS may: it is idempotent, so a replica
/// that did receive it before closing has done nothing a second one would not. Any request
/// with a body may, as long as no byte of the body was read from the client: the replica got
/// at most the head of a request it could not act on, and the body is still there to send.
/// Nothing else is: a POST without a body, or a body already begun, may have been acted on.
fn may_resend(method: &http::Method, body: Body, body_touched: bool) -> bool {
    match body {
        Body::None => matches!(
            *method,
            http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
        ),
        Body::Length(_) | Body::Chunked => !body_touched,
    }
}

/// The most headers the upstream client reads in a response head (ureq's fixed limit).
const MAX_RESPONSE_HEADERS: usize = 128;

/// Whether ureq gave up on a response head for having more than [`MAX_RESPONSE_HEADERS`].
/// ureq does not export its protocol error type, so the variant is recognised by name.
fn is_too_many_headers(e: &ureq::Error) -> bool {
    matches!(e, ureq::Error::Protocol(p) if format!("{p:?}") == "HttpParseTooManyHeaders")
}

/// A response the function framed two ways at once.
#[derive(Debug)]
struct Misframed;

impl std::fmt::Display for Misframed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("with both Content-Length and Transfer-Encoding")
    }
}

impl std::error::Error for Misframed {}

/// Refuses a response with both `Content-Length` and `Transfer-Encoding`. RFC 9112 §6.3 lets
/// `Transfer-Encoding` win, but two parties reading one message two ways is how responses are
/// split, and the request side refuses the same ambiguity; so this is a 502, not a guess.
/// Its body is dropped unread, and ureq does not pool a connection whose body was not read to
/// the end: whatever the function meant to follow it cannot reach the next call.
fn refuse_misframed(
    response: http::Response<ureq::Body>,
) -> Result<http::Response<ureq::Body>, ureq::Error> {
    let headers = response.headers();
    if headers.contains_key(http::header::CONTENT_LENGTH)
        && headers.contains_key(http::header::TRANSFER_ENCODING)
    {
        return Err(ureq::Error::Other(Box::new(Misframed)));
    }
    Ok(response)
}

/// Whether the answer may be one that has no body by definition (any answer to a HEAD, a 304
/// to a conditional GET) while its head declares one. ureq returns the connection of such an
/// answer to its pool at once; if the function sends a body anyway, a moment later, those bytes
/// would be read as the head of the next call's answer. Such calls ask the function to close
/// the connection instead: a new connection for each of them is the price.
fn answer_may_be_bodiless(method: &http::Method, headers: &http::HeaderMap) -> bool {
    *method == http::Method::HEAD
        || headers.contains_key(http::header::IF_NONE_MATCH)
        || headers.contains_key(http::header::IF_MODIFIED_SINCE)
}

/// Longest pause between two connection attempts, whatever the configured back-off.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// `base × 2^attempt`, capped: a large configured base or retry count must not overflow into
/// a panic or an endless sleep.
fn backoff(base: Duration, attempt: u32) -> Duration {
    base.saturating_mul(2u32.saturating_pow(attempt))
        .min(MAX_BACKOFF)
}

/// How the client's request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    None,
    Length(u64),
    Chunked,
}

/// Reads the framing from the client's headers. Conflicting framing is refused rather than
/// guessed at: two parties reading one message two ways is how requests are smuggled.
fn declared_body(request: &Request) -> Result<Body, Error> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for h in request.headers() {
        if h.field.equiv("Content-Length") {
            let n = h.value.as_str().trim().parse::<u64>().map_err(|_| {
                Error::BadRequest(format!(
                    "Content-Length {:?} is not a number",
                    h.value.as_str()
                ))
            })?;
            if length.is_some_and(|m| m != n) {
                return Err(Error::BadRequest(
                    "conflicting Content-Length headers".into(),
                ));
            }
            length = Some(n);
        } else if h.field.equiv("Transfer-Encoding") {
            chunked = true;
        }
    }
    match (length, chunked) {
        (Some(_), true) => Err(Error::BadRequest(
            "both Content-Length and Transfer-Encoding are set".into(),
        )),
        (_, true) => Ok(Body::Chunked),
        (Some(0) | None, false) => Ok(Body::None),
        (Some(n), false) => Ok(Body::Length(n)),
    }
}

/// The request head as it goes to the function.
struct OutgoingHead {
    method: http::Method,
    head: Outgoing,
}

impl OutgoingHead {
    fn from_request(request: &Request, trusted: &[IpRange]) -> Result<OutgoingHead, Error> {
        let received = request
            .headers()
            .iter()
            .map(|h| (h.field.as_str().as_str(), h.value.as_str()));
        OutgoingHead::from_parts(
            request.method().as_str(),
            received,
            request.remote_addr().copied(),
            headers::request_header(request, "Host"),
            trusted,
        )
    }

    fn from_parts<'h>(
        method: &str,
        received: impl Iterator<Item = (&'h str, &'h str)> + Clone,
        client: Option<SocketAddr>,
        host: Option<&str>,
        trusted: &[IpRange],
    ) -> Result<OutgoingHead, Error> {
        let method = http::Method::from_bytes(method.as_bytes())
            .map_err(|_| Error::BadRequest(format!("method {method} is not valid")))?;
        let fwd = Forwarding {
            client,
            host,
            proto: "http",
            trusted: trust::is_trusted(trusted, client.map(|a| a.ip())),
        };
        let head = headers::outgoing(received, &fwd).map_err(unsendable)?;
        Ok(OutgoingHead { method, head })
    }

    fn request<B>(&self, uri: http::Uri, headers: http::HeaderMap, body: B) -> http::Request<B> {
        let mut request = http::Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        request
    }

    /// Sets a header the gateway adds itself.
    fn set(&mut self, name: &str, value: &str) -> Result<(), Error> {
        let (name, value) = headers::parse(name, value).map_err(unsendable)?;
        self.head.headers.insert(name, value);
        Ok(())
    }
}

fn unsendable(Unsendable(name): Unsendable) -> Error {
    Error::BadRequest(format!("header {name:?} is not valid HTTP"))
}

/// Turns the function's response into the client's.
fn relay(response: http::Response<ureq::Body>, head: &OutgoingHead) -> ResponseBox {
    let (parts, body) = response.into_parts();
    let connection = parts
        .headers
        .get("connection")
        .and_then(|v| v.to_str().ok());
    let length = parts
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    let mut reader = Relayed {
        body: body.into_reader(),
        remaining: length,
    };
    if length == Some(0) {
        reader.see_end();
    }
    let mut response = Response::new(
        StatusCode(parts.status.as_u16()),
        Vec::new(),
        Box::new(reader) as Box<dyn Read + Send>,
        length,
        None,
    );
    let relayed = parts
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_bytes()));
    add_relayed_headers(&mut response, relayed, connection, head);
    response
}

/// Adds the function's response headers, hop-by-hop ones dropped, and the gateway's own.
fn add_relayed_headers<'h>(
    response: &mut ResponseBox,
    relayed: impl Iterator<Item = (&'h str, &'h [u8])>,
    connection: Option<&str>,
    head: &'h OutgoingHead,
) {
    let relayed = relayed.filter(|(name, _)| {
        !headers::is_hop_by_hop(name, connection)
            && !name.eq_ignore_ascii_case(X_CALL_ID)
            && !name.eq_ignore_ascii_case(X_START_TIME)
    });
    let ours = [
        (X_CALL_ID, head.head.call_id.as_bytes()),
        (X_START_TIME, head.head.start_time.as_bytes()),
    ];
    for (name, value) in relayed.chain(ours) {
        // Values are bytes as the function sent them (UTF-8 in a file name is common): passed
        // on exactly. The upstream client has already refused CR, LF and NUL in them. An
        // ASCII value (nearly all of them) takes the server's own header type, which costs
        // less per header than the checks of the general path.
        let added = match Header::from_bytes(name.as_bytes(), value) {
            Ok(header) => {
                response.add_header(header);
                Ok(())
            }
            Err(()) => response.add_header_bytes(name.as_bytes(), value),
        };
        if added.is_err() {
            log::debug!("dropped response header {name}: not valid in a response");
        }
    }
}

/// The function's response body, on its way to the client.
///
/// The server stops reading a body of known length after its last byte, but the upstream
/// connection only goes back to the pool once the reader has reported the end: without the
/// extra read below, every call would open a new connection to the replica.
struct Relayed<R> {
    body: R,
    /// Bytes of a `Content-Length` body still to come.
    remaining: Option<usize>,
}

impl<R: Read> Relayed<R> {
    /// Lets the upstream client notice the end of the body. It knows the length too, so this
    /// read answers at once, with no I/O; a failure here is the connection's, not the body's.
    fn see_end(&mut self) {
        let _ = self.body.read(&mut [0u8; 1]);
    }
}

impl<R: Read> Read for Relayed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.body.read(buf)?;
        if let Some(remaining) = &mut self.remaining {
            *remaining = remaining.saturating_sub(n);
            if *remaining == 0 && n > 0 {
                self.see_end();
            }
        }
        Ok(n)
    }
}

/// The client's body on its way upstream: counts what has been read (to enforce the limit while
/// streaming) and remembers whether anything was read at all (then a retry is unsafe).
struct ClientBody<'a> {
    inner: &'a mut dyn Read,
    read: u64,
    limit: u64,
    touched: bool,
    too_large: bool,
    /// Why reading the client's body failed, if it did.
    failed: Option<io::ErrorKind>,
}

impl<'a> ClientBody<'a> {
    fn new(inner: &'a mut dyn Read, limit: u64) -> Self {
        ClientBody {
            inner,
            read: 0,
            limit,
            touched: false,
            too_large: false,
            failed: None,
        }
    }

    fn touched(&self) -> bool {
        self.touched
    }

    fn too_large(&self) -> bool {
        self.too_large
    }

    fn failed(&self) -> Option<io::ErrorKind> {
        self.failed
    }
}

impl Read for ClientBody<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.touched = true;
        let n = self
            .inner
            .read(buf)
            .inspect_err(|e| self.failed = Some(e.kind()))?;
        self.read += n as u64;
        if self.read > self.limit {
            self.too_large = true;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request body over the limit",
            ));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let ms = Duration::from_millis;
        assert_eq!(backoff(ms(10), 0), ms(10));
        assert_eq!(backoff(ms(10), 3), ms(80));
        assert_eq!(backoff(Duration::from_secs(3600), 40), MAX_BACKOFF);
        assert_eq!(backoff(Duration::MAX, u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn only_requests_that_cannot_have_been_acted_on_twice_are_resent() {
        use http::Method;
        let post = Method::POST;
        for safe in [Method::GET, Method::HEAD, Method::OPTIONS] {
            assert!(may_resend(&safe, Body::None, false), "{safe}");
        }
        for unsafe_ in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            assert!(
                !may_resend(&unsafe_, Body::None, false),
                "{unsafe_} without a body"
            );
        }
        assert!(
            may_resend(&post, Body::Length(5), false),
            "body not read yet"
        );
        assert!(may_resend(&post, Body::Chunked, false), "body not read yet");
        assert!(!may_resend(&post, Body::Length(5), true), "body begun");
        assert!(!may_resend(&post, Body::Chunked, true), "body begun");
        assert!(
            !may_resend(&Method::GET, Body::Length(5), true),
            "a GET with a body begun"
        );
    }

    use crate::client::{agent, Timeouts};
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A keep-alive upstream on 127.0.0.1 that counts the connections it accepts.
    fn counting_upstream() -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut writer = stream.try_clone().unwrap();
                    let mut reader = BufReader::new(stream);
                    let mut line = String::new();
                    while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                        if line == "\r\n" {
                            let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
                            if writer.write_all(answer).is_err() {
                                return;
                            }
                        }
                        line.clear();
                    }
                });
            }
        });
        (url, accepted)
    }

    #[test]
    fn relayed_bodies_of_known_length_give_the_connection_back() {
        let (url, accepted) = counting_upstream();
        let second = Duration::from_secs(5);
        let agent = agent(
            Timeouts {
                connect: second,
                response: second,
                send: second,
            },
            4,
        );
        let head = OutgoingHead {
            method: http::Method::GET,
            head: Outgoing {
                headers: http::HeaderMap::new(),
                call_id: http::HeaderValue::from_static("id"),
                start_time: http::HeaderValue::from_static("0"),
            },
        };
        for _ in 0..3 {
            let response = agent.get(&url).call().unwrap();
            let relayed = relay(response, &head);
            let length = relayed.data_length().unwrap() as u64;
            // As the server sends it: exactly the declared length, no read past it.
            let mut body = String::new();
            relayed
                .into_reader()
                .take(length)
                .read_to_string(&mut body)
                .unwrap();
            assert_eq!(body, "hello");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "a connection per call");
    }
}
