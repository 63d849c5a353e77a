use std::io::Error as IoError;
use std::io::{self, BufReader, ErrorKind, Read, Write};

use std::fmt;
use std::net::{Shutdown, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use crate::response::ConnectionHint;
use crate::util::body::{BodyDecoder, BodyReader, ChunkState};
use crate::util::conn::ConnShared;
use crate::{HTTPVersion, Header, Method, Response, StatusCode};

/// Represents an HTTP request made by a client.
///
/// A `Request` object is what is produced by the server, and is your what
/// your code must analyse and answer.
///
/// This object implements the `Send` trait, therefore you can dispatch your requests to
/// worker threads.
///
/// # Pipelining
///
/// If a client sends multiple requests in a row (without waiting for the response), they are
/// handed out one at a time: the next request of a connection is only read once the response
/// to the previous one has been written (its writer dropped). A connection therefore never
/// has more than one request in progress, and its responses go out in order. (tiny_http 0.12
/// handed pipelined requests out together, to be handled in parallel.)
///
/// The connection is closed after a request that sends `Connection: close`, or
/// `Connection: upgrade` (used for websockets).
///
/// # Automatic cleanup
///
/// If a `Request` object is destroyed without `into_writer` or `respond` being called,
/// an empty response with a 500 status code (internal server error) will automatically be
/// sent back to the client.
/// This means that if your code fails during the handling of a request, this "internal server
/// error" response will automatically be sent during the stack unwinding.
///
/// # Testing
///
/// If you want to build fake requests to test your server, use [`TestRequest`](crate::test::TestRequest).
pub struct Request {
    // where to read the body from
    data_reader: Option<Body>,

    // the whole stream from the client, for `upgrade`: only for an upgrade request without
    // a body (`as_reader` never gives more than the body)
    upgrade_stream: Option<Box<dyn Read + Send + 'static>>,

    // if this writer is empty, then the request has been answered
    response_writer: Option<Box<dyn Write + Send + 'static>>,

    remote_addr: Option<SocketAddr>,

    // true if HTTPS, false if HTTP
    secure: bool,

    method: Method,

    path: String,

    http_version: HTTPVersion,

    headers: Vec<Header>,

    body_length: Option<usize>,

    // true if a `100 Continue` response must be sent when `as_reader()` is called
    must_send_continue: bool,

    // the connection this request came from (`None` for test requests)
    conn: Option<Arc<ConnShared>>,

    // true if the connection is closed after this request's response (the client asked
    // for it, or HTTP/1.0 without keep-alive)
    close_after: bool,
}

/// Body of a request.
pub(crate) enum Body {
    Reader(Box<dyn Read + Send + 'static>),
    Conn(BodyReader),
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Body::Reader(r) => r.read(buf),
            Body::Conn(r) => r.read(buf),
        }
    }
}

/// Decodes a chunked body from any reader (test requests).
struct ChunkedReader<R: Read> {
    src: BufReader<R>,
    decoder: BodyDecoder,
}

impl<R: Read> Read for ChunkedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.decoder.read(&mut self.src, buf)
    }
}

/// Error that can happen when building a `Request` object.
#[derive(Debug)]
pub enum RequestCreationError {
    /// The client sent an `Expect` header that was not recognized by tiny-http.
    ExpectationFailed,
}

/// Builds a new request.
///
/// After the request line and headers have been read from the socket, a new `Request` object
/// is built.
///
/// You must pass a `Read` that will allow the `Request` object to read from the incoming data.
/// It is the responsibility of the `Request` to read only the data of the request and not further.
///
/// The `Write` object will be used by the `Request` to write the response.
#[allow(clippy::too_many_arguments)]
pub fn new_request<R, W>(
    secure: bool,
    method: Method,
    path: String,
    version: HTTPVersion,
    headers: Vec<Header>,
    remote_addr: Option<SocketAddr>,
    source_data: R,
    writer: W,
) -> Result<Request, RequestCreationError>
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    // finding the transfer-encoding header
    let transfer_encoding = headers
        .iter()
        .find(|h: &&Header| h.field.equiv("Transfer-Encoding"))
        .map(|h| h.value.clone());

    // finding the content-length header
    let content_length = if transfer_encoding.is_some() {
        // if transfer-encoding is specified, the Content-Length
        // header must be ignored (RFC2616 #4.4)
        None
    } else {
        headers
            .iter()
            .find(|h: &&Header| h.field.equiv("Content-Length"))
            .and_then(|h| FromStr::from_str(h.value.as_str()).ok())
    };

    // true if the client sent a `Expect: 100-continue` header
    let expects_continue = {
        match headers
            .iter()
            .find(|h: &&Header| h.field.equiv("Expect"))
            .map(|h| h.value.as_str())
        {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("100-continue") => true,
            _ => return Err(RequestCreationError::ExpectationFailed),
        }
    };

    // true if the client sent a `Connection: upgrade` header
    let connection_upgrade = {
        match headers
            .iter()
            .find(|h: &&Header| h.field.equiv("Connection"))
            .map(|h| h.value.as_str())
        {
            Some(v) if v.to_ascii_lowercase().contains("upgrade") => true,
            _ => false,
        }
    };

    // we wrap `source_data` around a reading whose nature depends on the transfer-encoding and
    // content-length headers; an upgrade request without a body keeps the whole reader for
    // `upgrade`
    let mut upgrade_stream = None;
    let reader = if connection_upgrade && content_length.is_none() && transfer_encoding.is_none() {
        upgrade_stream = Some(Box::new(source_data) as Box<dyn Read + Send + 'static>);
        Box::new(io::empty()) as Box<dyn Read + Send + 'static>
    } else if let Some(content_length) = content_length {
        Box::new(source_data.take(content_length as u64)) as Box<dyn Read + Send + 'static>
    } else if transfer_encoding.is_some() {
        Box::new(ChunkedReader {
            src: BufReader::new(source_data),
            decoder: BodyDecoder::Chunked(ChunkState::Size),
        }) as Box<dyn Read + Send + 'static>
    } else {
        // if we have neither a Content-Length nor a Transfer-Encoding,
        // assuming that we have no data
        Box::new(io::empty()) as Box<dyn Read + Send + 'static>
    };

    Ok(Request {
        data_reader: Some(Body::Reader(reader)),
        upgrade_stream,
        response_writer: Some(Box::new(writer) as Box<dyn Write + Send + 'static>),
        remote_addr,
        secure,
        method,
        path,
        http_version: version,
        headers,
        body_length: content_length,
        must_send_continue: expects_continue,
        conn: None,
        close_after: false,
    })
}

/// Parts of a request read from a connection (see `client.rs`).
pub(crate) struct ConnRequest {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) version: HTTPVersion,
    pub(crate) headers: Vec<Header>,
    pub(crate) remote_addr: Option<SocketAddr>,
    pub(crate) body: Body,
    /// The whole stream, for an upgrade request without a body.
    pub(crate) raw: Option<Box<dyn Read + Send + 'static>>,
    pub(crate) body_length: Option<usize>,
    pub(crate) expects_continue: bool,
    pub(crate) writer: Box<dyn Write + Send + 'static>,
    pub(crate) conn: Arc<ConnShared>,
    pub(crate) close_after: bool,
}

impl From<ConnRequest> for Request {
    fn from(parts: ConnRequest) -> Request {
        Request {
            data_reader: Some(parts.body),
            upgrade_stream: parts.raw,
            response_writer: Some(parts.writer),
            remote_addr: parts.remote_addr,
            secure: false,
            method: parts.method,
            path: parts.path,
            http_version: parts.version,
            headers: parts.headers,
            body_length: parts.body_length,
            must_send_continue: parts.expects_continue,
            conn: Some(parts.conn),
            close_after: parts.close_after,
        }
    }
}

impl Request {
    /// Returns true if the request was made through HTTPS.
    #[inline]
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Returns the method requested by the client (eg. `GET`, `POST`, etc.).
    #[inline]
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// Returns the resource requested by the client.
    #[inline]
    pub fn url(&self) -> &str {
        &self.path
    }

    /// Returns a list of all headers sent by the client.
    #[inline]
    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    /// Returns the HTTP version of the request.
    #[inline]
    pub fn http_version(&self) -> &HTTPVersion {
        &self.http_version
    }

    /// Returns the length of the body in bytes.
    ///
    /// Returns `None` if the length is unknown.
    #[inline]
    pub fn body_length(&self) -> Option<usize> {
        self.body_length
    }

    /// Returns the address of the client that sent this request.
    ///
    /// The address is always `Some` for TCP listeners, but always `None` for UNIX listeners
    /// (as the remote address of a UNIX client is almost always unnamed).
    ///
    /// Note that this is gathered from the socket. If you receive the request from a proxy,
    /// this function will return the address of the proxy and not the address of the actual
    /// user.
    #[inline]
    pub fn remote_addr(&self) -> Option<&SocketAddr> {
        self.remote_addr.as_ref()
    }

    /// True when [`upgrade`](Request::upgrade) would hand over the client's whole stream: a
    /// request with `Connection: upgrade` and no body.
    #[inline]
    pub fn can_upgrade(&self) -> bool {
        self.upgrade_stream.is_some()
    }

    /// The client socket's descriptor (`None` for a test request). It stays open as long as the
    /// request, or the stream [`upgrade`](Request::upgrade) returns, is alive: a caller relaying
    /// an upgraded stream can wait on it with `poll(2)` instead of holding a thread in a read.
    #[cfg(unix)]
    #[inline]
    pub fn raw_fd(&self) -> Option<std::os::unix::io::RawFd> {
        use std::os::unix::io::AsRawFd;
        self.conn.as_ref().map(|conn| conn.sock.as_raw_fd())
    }

    /// Sends a response with a `Connection: upgrade` header, then turns the `Request` into a `Stream`.
    ///
    /// The main purpose of this function is to support websockets.
    /// If you detect that the request wants to use some kind of protocol upgrade, you can
    ///  call this function to obtain full control of the socket stream.
    ///
    /// If you call this on a non-websocket request, tiny-http will wait until this `Stream` object
    ///  is destroyed before continuing to read or write on the socket. Therefore you should always
    ///  destroy it as soon as possible.
    ///
    /// Only a request with `Connection: upgrade` and no body hands over the stream: one that
    /// came with a body is an ordinary request (its body read like any other, its connection
    /// closed after the response), and the stream returned then reads only what is left of
    /// that body.
    pub fn upgrade<R: Read>(
        mut self,
        protocol: &str,
        response: Response<R>,
    ) -> Box<dyn ReadWrite + Send> {
        use crate::util::CustomStream;

        let mut writer = self.extract_writer_impl();
        response
            .print(
                writer.by_ref(),
                &self.http_version,
                false,
                Some(protocol),
                ConnectionHint::Unspecified,
            )
            .ok(); // TODO: unused result

        writer.flush().ok(); // TODO: unused result

        let reader = match self.upgrade_stream.take() {
            Some(stream) => stream,
            None => self.extract_reader_impl(),
        };
        let stream = CustomStream::new(reader, writer);
        Box::new(stream) as Box<dyn ReadWrite + Send>
    }

    /// Allows to read the body of the request.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # use std::io::Read;
    /// # fn get_content_type(_: &defrost_http::Request) -> &'static str { "" }
    /// # fn main() {
    /// # let server = defrost_http::Server::http("0.0.0.0:0").unwrap();
    /// let mut request = server.recv().unwrap();
    ///
    /// if get_content_type(&request) == "application/json" {
    ///     let mut content = String::new();
    ///     request.as_reader().read_to_string(&mut content).unwrap();
    /// }
    /// # }
    /// ```
    ///
    /// If the client sent a `Expect: 100-continue` header with the request, calling this
    ///  function will send back a `100 Continue` response.
    ///
    /// A body that ends before its declared `Content-Length` (or a malformed chunked body)
    /// is reported as an error instead of a short read. Body reads time out after the
    /// server's [`Limits::read_timeout`](crate::Limits::read_timeout).
    #[inline]
    pub fn as_reader(&mut self) -> &mut dyn Read {
        if self.must_send_continue {
            if let Some(writer) = self.response_writer.as_mut() {
                let msg = Response::new_empty(StatusCode(100));
                msg.print(
                    writer.by_ref(),
                    &self.http_version,
                    true,
                    None,
                    ConnectionHint::Unspecified,
                )
                .ok();
                writer.flush().ok();
            }
            self.must_send_continue = false;
        }

        self.data_reader
            .get_or_insert_with(|| Body::Reader(Box::new(io::empty())))
    }

    /// Turns the `Request` into a writer.
    ///
    /// The writer has a raw access to the stream to the user.
    /// This function is useful for things like CGI.
    ///
    /// Note that the destruction of the `Writer` object may trigger
    /// some events. For exemple if a client has sent multiple requests and the requests
    /// have been processed in parallel, the destruction of a writer will trigger
    /// the writing of the next response.
    /// Therefore you should always destroy the `Writer` as soon as possible.
    #[inline]
    pub fn into_writer(mut self) -> Box<dyn Write + Send + 'static> {
        self.extract_writer_impl()
    }

    /// Extract the response `Writer` object from the Request, dropping this `Writer` has the same side effects
    /// as the object returned by `into_writer` above.
    ///
    /// Returns a sink if it was already extracted.
    fn extract_writer_impl(&mut self) -> Box<dyn Write + Send + 'static> {
        self.response_writer
            .take()
            .unwrap_or_else(|| Box::new(io::sink()))
    }

    /// Extract the body `Reader` object from the Request.
    ///
    /// Returns an empty reader if it was already extracted.
    fn extract_reader_impl(&mut self) -> Box<dyn Read + Send + 'static> {
        match self.data_reader.take() {
            Some(Body::Reader(r)) => r,
            Some(body) => Box::new(body),
            None => Box::new(io::empty()),
        }
    }

    /// Sends a response to this request.
    ///
    /// The response goes through the connection's limits: a known length is sent with
    /// `Content-Length` (see [`Limits::chunked_threshold`](crate::Limits::chunked_threshold)),
    /// and the connection is closed after the response (`Connection: close`) when the
    /// unread rest of the request body is too large to be drained.
    #[inline]
    pub fn respond<R>(mut self, response: Response<R>) -> Result<(), IoError>
    where
        R: Read,
    {
        self.respond_impl(response)
    }

    /// True if what is left unread of the body means the connection cannot be reused.
    fn unread_body_forces_close(&self, max_drain: usize) -> bool {
        if self.must_send_continue && self.body_length != Some(0) {
            // the client waits for `100 Continue` before sending the body, or sends it
            // anyway: either way the next request's start is unknown
            return true;
        }
        match &self.data_reader {
            Some(Body::Conn(body)) => {
                body.is_broken()
                    || body
                        .unread_length()
                        .is_some_and(|left| left > max_drain as u64)
            }
            _ => false,
        }
    }

    fn respond_impl<R>(&mut self, mut response: Response<R>) -> Result<(), IoError>
    where
        R: Read,
    {
        let mut writer = self.extract_writer_impl();

        let do_not_send_body = self.method == Method::Head;

        let hint = match &self.conn {
            None => ConnectionHint::Unspecified,
            Some(conn) => {
                // wait until the responses to earlier pipelined requests are written: one
                // of them may decide to close the connection
                let _ = writer.flush();
                response.default_chunked_threshold(conn.limits.chunked_threshold);
                if self.close_after
                    || conn.must_close()
                    || conn.draining()
                    || self.unread_body_forces_close(conn.limits.max_drain_bytes)
                {
                    conn.mark_close();
                    ConnectionHint::Close
                } else {
                    ConnectionHint::KeepAlive
                }
            }
        };

        let result = response
            .print(
                writer.by_ref(),
                &self.http_version,
                do_not_send_body,
                None,
                hint,
            )
            .and_then(|close| writer.flush().map(|_| close));

        if let Some(conn) = &self.conn {
            match result {
                Ok(false) => (),
                // the response is complete: FIN now, so that the client sees the end
                Ok(true) => {
                    conn.mark_close();
                    conn.shutdown(Shutdown::Write);
                }
                // the response may be partly written: the connection is unusable
                Err(_) => {
                    conn.mark_close();
                    conn.shutdown(Shutdown::Both);
                }
            }
        }
        drop(writer);

        Self::ignore_client_closing_errors(result.map(|_| ()))
    }

    fn ignore_client_closing_errors(result: io::Result<()>) -> io::Result<()> {
        result.or_else(|err| match err.kind() {
            ErrorKind::BrokenPipe => Ok(()),
            ErrorKind::ConnectionAborted => Ok(()),
            ErrorKind::ConnectionRefused => Ok(()),
            ErrorKind::ConnectionReset => Ok(()),
            _ => Err(err),
        })
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> Result<(), fmt::Error> {
        write!(
            formatter,
            "Request({} {} from {:?})",
            self.method, self.path, self.remote_addr
        )
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        if self.response_writer.is_some() {
            let response = Response::empty(500);
            let _ = self.respond_impl(response); // ignoring any potential error
        }
    }
}

/// Dummy trait that regroups the `Read` and `Write` traits.
///
/// Automatically implemented on all types that implement both `Read` and `Write`.
pub trait ReadWrite: Read + Write {}
impl<T> ReadWrite for T where T: Read + Write {}

#[cfg(test)]
mod tests {
    use super::Request;

    #[test]
    fn must_be_send() {
        #![allow(dead_code)]
        fn f<T: Send>(_: &T) {}
        fn bar(rq: &Request) {
            f(rq);
        }
    }
}
