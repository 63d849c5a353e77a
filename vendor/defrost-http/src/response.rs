use crate::common::{HTTPVersion, Header, StatusCode};
use httpdate::HttpDate;
use std::sync::mpsc::Receiver;

use std::io::Result as IoResult;
use std::io::{self, Cursor, Read, Write};

use std::fs::File;

use std::str::FromStr;
use std::time::SystemTime;

/// Object representing an HTTP response whose purpose is to be given to a `Request`.
///
/// Some headers cannot be changed. Trying to define the value
/// of one of these will have no effect:
///
///  - `Connection`
///  - `Trailer`
///  - `Transfer-Encoding`
///  - `Upgrade`
///
/// Some headers have special behaviors:
///
///  - `Content-Encoding`: If you define this header, the library
///    will assume that the data from the `Read` object has the specified encoding
///    and will just pass-through.
///
///  - `Content-Length`: The length of the data should be set manually
///    using the `Reponse` object's API. Attempting to set the value of this
///    header will be equivalent to modifying the size of the data but the header
///    itself may not be present in the final result.
///
///  - `Content-Type`: You may only set this header to one value at a time. If you
///    try to set it more than once, the existing value will be overwritten. This
///    behavior differs from the default for most headers, which is to allow them to
///    be set multiple times in the same response.
///
pub struct Response<R> {
    reader: R,
    status_code: StatusCode,
    headers: Vec<Header>,
    /// Headers whose values are not ASCII (see [`Response::add_header_bytes`]).
    raw_headers: Vec<RawHeader>,
    data_length: Option<usize>,
    chunked_threshold: Option<usize>,
}

/// A header kept as bytes: its value holds obs-text (bytes 0x80-0xFF), which `Header` cannot.
#[derive(Clone, Debug)]
struct RawHeader {
    /// Sent before `headers[before]`, so that the order headers were added in is kept.
    before: usize,
    name: Vec<u8>,
    value: Vec<u8>,
}

/// A header that cannot be sent: its name is not a token, or its value holds CR, LF, NUL or
/// another control character (see [`Response::add_header_bytes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidHeader;

impl std::fmt::Display for InvalidHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not a valid HTTP header (bad name, or control characters in the value)")
    }
}

impl std::error::Error for InvalidHeader {}

/// True for a header name: one or more token characters (RFC 9110).
fn is_token(name: &[u8]) -> bool {
    !name.is_empty()
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// True for a header value that can be sent as is: visible characters, spaces, tabs and
/// obs-text; never CR, LF, NUL or another control character, which would split the head.
fn is_field_value(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// A `Response` without a template parameter.
pub type ResponseBox = Response<Box<dyn Read + Send>>;

/// How the body of a response is delimited on the wire.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Framing {
    /// No body at all (1xx, 204, upgrades).
    NoBody,
    /// `Content-Length`.
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Body delimited by closing the connection (HTTP/1.0 with an unknown length).
    Close,
}

/// What the server intends to do with the connection after a response.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum ConnectionHint {
    /// Nothing known (public `raw_print`): no `Connection` header unless needed.
    Unspecified,
    /// The connection is closed after this response: send `Connection: close`.
    Close,
    /// The connection is kept open (sends `Connection: keep-alive` to HTTP/1.0 clients).
    KeepAlive,
}

/// Size of the reads from a response body reader (and so of the chunks it is sent in).
const COPY_BUF: usize = 32 * 1024;
/// Room in front of chunk data for its size line (16 hex digits and CRLF).
const CHUNK_HEAD: usize = 18;
/// Bodies up to this length are copied through a buffer on the stack (zeroing a larger one
/// for every small answer would cost more than the heap).
const SMALL_COPY: usize = 512;

/// The `Date` value for now, formatted once per second per thread: formatting it for every
/// response cost more than the rest of the response head.
fn with_date<T>(f: impl FnOnce(&[u8]) -> T) -> T {
    use std::cell::RefCell;
    thread_local! {
        static DATE: RefCell<(u64, Vec<u8>)> = const { RefCell::new((u64::MAX, Vec::new())) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != second {
            *cached = (second, HttpDate::from(now).to_string().into_bytes());
        }
        f(&cached.1)
    })
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// What the server adds to a response's own headers.
struct Added<'a> {
    upgrade: Option<&'a str>,
    server: bool,
    date: bool,
    connection: Option<&'static str>,
    framing: Framing,
}

/// Serializes the status line and headers, terminated by the empty line, in one buffer
/// without formatting machinery: the order is `Connection`/`Upgrade` for an upgrade,
/// `Server`, `Date`, the response's headers (those kept as bytes among them, in the order they
/// were added), then `Connection` and the framing header.
fn message_header(
    http_version: &HTTPVersion,
    status_code: &StatusCode,
    headers: &[Header],
    raw_headers: &[RawHeader],
    added: &Added<'_>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/");
    push_decimal(&mut out, u64::from(http_version.0));
    out.push(b'.');
    push_decimal(&mut out, u64::from(http_version.1));
    out.push(b' ');
    push_decimal(&mut out, u64::from(status_code.0));
    out.push(b' ');
    out.extend_from_slice(status_code.default_reason_phrase().as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(upgrade) = added.upgrade {
        push_header(&mut out, b"Connection", b"upgrade");
        push_header(&mut out, b"Upgrade", upgrade.as_bytes());
    }
    if added.server {
        push_header(&mut out, b"Server", b"tiny-http (Rust)");
    }
    if added.date {
        with_date(|date| push_header(&mut out, b"Date", date));
    }
    let mut raw = raw_headers.iter().peekable();
    for (i, header) in headers.iter().enumerate() {
        while let Some(r) = raw.next_if(|r| r.before <= i) {
            push_header(&mut out, &r.name, &r.value);
        }
        push_header(
            &mut out,
            header.field.as_str().as_bytes(),
            header.value.as_str().as_bytes(),
        );
    }
    for r in raw {
        push_header(&mut out, &r.name, &r.value);
    }
    if let Some(connection) = added.connection {
        push_header(&mut out, b"Connection", connection.as_bytes());
    }
    match added.framing {
        Framing::Chunked => push_header(&mut out, b"Transfer-Encoding", b"chunked"),
        Framing::Length(len) => {
            out.extend_from_slice(b"Content-Length: ");
            push_decimal(&mut out, len as u64);
            out.extend_from_slice(b"\r\n");
        }
        Framing::NoBody | Framing::Close => (),
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Reads from `reader`, retrying on `Interrupted`.
fn read_some<R: Read + ?Sized>(reader: &mut R, buf: &mut [u8]) -> IoResult<usize> {
    loop {
        match reader.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Copies exactly `length` bytes, writing and flushing each read as it comes.
/// A reader that ends early is an error (the declared length cannot be honoured).
fn copy_length<R: Read, W: Write>(reader: &mut R, writer: &mut W, length: usize) -> IoResult<()> {
    // small bodies (most function answers) are copied through the stack, not the heap
    let mut small = [0u8; SMALL_COPY];
    let mut large = Vec::new();
    let buf: &mut [u8] = if length <= SMALL_COPY {
        &mut small[..length.max(1)]
    } else {
        large.resize(length.min(COPY_BUF), 0);
        &mut large
    };
    let mut remaining = length;
    while remaining > 0 {
        let max = remaining.min(buf.len());
        let n = read_some(reader, &mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "response body shorter than its declared length",
            ));
        }
        writer.write_all(&buf[..n])?;
        writer.flush()?;
        remaining -= n;
    }
    Ok(())
}

/// Sends the reader's data as chunks: each read becomes one chunk, written and flushed
/// at once, so that a streaming body is not held back.
fn copy_chunked<R: Read, W: Write>(reader: &mut R, writer: &mut W) -> IoResult<()> {
    let mut buf = vec![0u8; CHUNK_HEAD + COPY_BUF + 2];
    loop {
        let n = read_some(reader, &mut buf[CHUNK_HEAD..CHUNK_HEAD + COPY_BUF])?;
        if n == 0 {
            writer.write_all(b"0\r\n\r\n")?;
            return writer.flush();
        }
        let size = format!("{:X}\r\n", n);
        let start = CHUNK_HEAD - size.len();
        buf[start..CHUNK_HEAD].copy_from_slice(size.as_bytes());
        buf[CHUNK_HEAD + n..CHUNK_HEAD + n + 2].copy_from_slice(b"\r\n");
        writer.write_all(&buf[start..CHUNK_HEAD + n + 2])?;
        writer.flush()?;
    }
}

/// Copies everything until the reader ends, flushing each read.
fn copy_all<R: Read, W: Write>(reader: &mut R, writer: &mut W) -> IoResult<()> {
    let mut buf = vec![0u8; COPY_BUF];
    loop {
        let n = read_some(reader, &mut buf)?;
        if n == 0 {
            return writer.flush();
        }
        writer.write_all(&buf[..n])?;
        writer.flush()?;
    }
}

impl<R> Response<R>
where
    R: Read,
{
    /// Creates a new Response object.
    ///
    /// The `additional_headers` argument is a receiver that
    ///  may provide headers even after the response has been sent.
    ///
    /// All the other arguments are straight-forward.
    pub fn new(
        status_code: StatusCode,
        headers: Vec<Header>,
        data: R,
        data_length: Option<usize>,
        additional_headers: Option<Receiver<Header>>,
    ) -> Response<R> {
        let mut response = Response {
            reader: data,
            status_code,
            headers: Vec::with_capacity(16),
            raw_headers: Vec::new(),
            data_length,
            chunked_threshold: None,
        };

        for h in headers {
            response.add_header(h)
        }

        // dummy implementation
        if let Some(additional_headers) = additional_headers {
            for h in additional_headers.iter() {
                response.add_header(h)
            }
        }

        response
    }

    /// Set a threshold for `Content-Length` from which the body is sent with chunked
    /// transfer encoding instead (HTTP/1.1 clients only). Without it, the server's
    /// [`Limits::chunked_threshold`](crate::Limits::chunked_threshold) applies, whose default
    /// is to always send a known length with `Content-Length`.
    /// A response without a known length is always chunked (HTTP/1.1).
    pub fn with_chunked_threshold(mut self, length: usize) -> Response<R> {
        self.chunked_threshold = Some(length);
        self
    }

    /// Convert the response into the underlying `Read` type.
    ///
    /// This is mainly useful for testing as it must consume the `Response`.
    pub fn into_reader(self) -> R {
        self.reader
    }

    /// The `Content-Length` threshold for switching over to chunked transfer set with
    /// [`with_chunked_threshold`](Self::with_chunked_threshold); `usize::MAX` (never) when
    /// none was set (tiny_http 0.12 defaulted to 32768). Notice that chunked transfer is
    /// mutually exclusive with sending a `Content-Length` header as per the HTTP spec.
    pub fn chunked_threshold(&self) -> usize {
        self.chunked_threshold.unwrap_or(usize::MAX)
    }

    /// Adds a header to the list.
    /// Does all the checks.
    pub fn add_header<H>(&mut self, header: H)
    where
        H: Into<Header>,
    {
        let header = header.into();

        // ignoring forbidden headers
        if header.field.equiv("Connection")
            || header.field.equiv("Trailer")
            || header.field.equiv("Transfer-Encoding")
            || header.field.equiv("Upgrade")
        {
            return;
        }

        // if the header is Content-Length, setting the data length
        if header.field.equiv("Content-Length") {
            if let Ok(val) = usize::from_str(header.value.as_str()) {
                self.data_length = Some(val)
            }

            return;
        // if the header is Content-Type and it's already set, overwrite it
        } else if header.field.equiv("Content-Type") {
            if let Some(content_type_header) = self
                .headers
                .iter_mut()
                .find(|h| h.field.equiv("Content-Type"))
            {
                content_type_header.value = header.value;
                return;
            }
        }

        self.headers.push(header);
    }

    /// Adds a header given as bytes, whose value may hold bytes beyond ASCII (obs-text, such
    /// as a UTF-8 file name in `Content-Disposition`): it is sent exactly as given, in the
    /// order headers were added. A value that is ASCII is added as by
    /// [`add_header`](Self::add_header), with the same special cases; a non-ASCII value of a
    /// header that cannot be changed, or of `Content-Length`, is ignored. `Err` if the name is
    /// not a token or the value holds CR, LF, NUL or another control character (other than
    /// tab): nothing is added then. Headers with non-ASCII values are not listed by [`headers`](Self::headers).
    pub fn add_header_bytes(&mut self, name: &[u8], value: &[u8]) -> Result<(), InvalidHeader> {
        if !is_token(name) || !is_field_value(value) {
            return Err(InvalidHeader);
        }
        if let Ok(header) = Header::from_bytes(name, value) {
            self.add_header(header);
            return Ok(());
        }
        let ignored = [
            "Connection",
            "Trailer",
            "Transfer-Encoding",
            "Upgrade",
            "Content-Length",
        ];
        if ignored
            .iter()
            .any(|n| n.as_bytes().eq_ignore_ascii_case(name))
        {
            return Ok(());
        }
        self.raw_headers.push(RawHeader {
            before: self.headers.len(),
            name: name.to_vec(),
            value: value.to_vec(),
        });
        Ok(())
    }

    /// True if a header of that name was added, ASCII or not.
    fn has_header(&self, name: &'static str) -> bool {
        self.headers.iter().any(|h| h.field.equiv(name))
            || self
                .raw_headers
                .iter()
                .any(|r| r.name.eq_ignore_ascii_case(name.as_bytes()))
    }

    /// Returns the same request, but with an additional header.
    ///
    /// Some headers cannot be modified and some other have a
    ///  special behavior. See the documentation above.
    #[inline]
    pub fn with_header<H>(mut self, header: H) -> Response<R>
    where
        H: Into<Header>,
    {
        self.add_header(header.into());
        self
    }

    /// Returns the same request, but with a different status code.
    #[inline]
    pub fn with_status_code<S>(mut self, code: S) -> Response<R>
    where
        S: Into<StatusCode>,
    {
        self.status_code = code.into();
        self
    }

    /// Returns the same request, but with different data.
    pub fn with_data<S>(self, reader: S, data_length: Option<usize>) -> Response<S>
    where
        S: Read,
    {
        Response {
            reader,
            headers: self.headers,
            raw_headers: self.raw_headers,
            status_code: self.status_code,
            data_length,
            chunked_threshold: self.chunked_threshold,
        }
    }
    /// Prints the HTTP response to a writer.
    ///
    /// This function is the one used to send the response to the client's socket.
    /// Therefore you shouldn't expect anything pretty-printed or even readable.
    ///
    /// Framing: a known `data_length` is sent with `Content-Length` (unless a chunked
    /// threshold set with [`with_chunked_threshold`](Self::with_chunked_threshold) is
    /// reached); an unknown length is sent chunked to HTTP/1.1 clients, each read of the body
    /// reader becoming one chunk that is flushed at once; HTTP/1.0 clients get a body
    /// delimited by the end of the connection (with `Connection: close`), and the caller
    /// must then close the connection. `request_headers` is not used any more (the `TE`
    /// request header no longer changes the framing).
    pub fn raw_print<W: Write>(
        self,
        writer: W,
        http_version: HTTPVersion,
        request_headers: &[Header],
        do_not_send_body: bool,
        upgrade: Option<&str>,
    ) -> IoResult<()> {
        let _ = request_headers;
        self.print(
            writer,
            &http_version,
            do_not_send_body,
            upgrade,
            ConnectionHint::Unspecified,
        )
        .map(|_| ())
    }

    /// Sets the chunked threshold if the response does not have its own.
    pub(crate) fn default_chunked_threshold(&mut self, threshold: Option<usize>) {
        if self.chunked_threshold.is_none() {
            self.chunked_threshold = threshold;
        }
    }

    /// Prints the response. Returns whether the connection must be closed after it
    /// (on error it must always be closed: the response may be partly written).
    pub(crate) fn print<W: Write>(
        mut self,
        mut writer: W,
        http_version: &HTTPVersion,
        do_not_send_body: bool,
        upgrade: Option<&str>,
        hint: ConnectionHint,
    ) -> IoResult<bool> {
        let status = self.status_code.0;
        let http11 = *http_version >= (1, 1);
        let no_body_status = matches!(status, 100..=199 | 204 | 304);

        // A 304 may carry the Content-Length a 200 would have had, but no body of unknown
        // length to announce: `Transfer-Encoding: chunked` on it only misleads a client.
        let unknown_304 = status == 304 && self.data_length.is_none();
        let mut framing = if upgrade.is_some() || status < 200 || status == 204 || unknown_304 {
            Framing::NoBody
        } else {
            match self.data_length {
                Some(len) if http11 && self.chunked_threshold.is_some_and(|t| len >= t) => {
                    Framing::Chunked
                }
                Some(len) => Framing::Length(len),
                None if http11 => Framing::Chunked,
                None => Framing::Close,
            }
        };
        let send_body = !do_not_send_body && !no_body_status;
        if !send_body && framing == Framing::Close {
            // no body follows, so there is nothing to delimit
            framing = Framing::NoBody;
        }
        let must_close = hint == ConnectionHint::Close || framing == Framing::Close;

        if let Some(upgrade) = upgrade {
            // the protocol name becomes a header value: it must be a valid one
            if Header::from_bytes(&b"Upgrade"[..], upgrade.as_bytes()).is_err() {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad protocol"));
            }
        }
        let connection = match upgrade {
            Some(_) => None,
            None if status < 200 => None,
            None if must_close => Some("close"),
            None if hint == ConnectionHint::KeepAlive && !http11 => Some("keep-alive"),
            None => None,
        };
        let added = Added {
            upgrade,
            server: !self.has_header("Server"),
            date: !self.has_header("Date"),
            connection,
            framing,
        };
        writer.write_all(&message_header(
            http_version,
            &self.status_code,
            &self.headers,
            &self.raw_headers,
            &added,
        ))?;

        if send_body {
            match framing {
                Framing::Chunked => copy_chunked(&mut self.reader, &mut writer)?,
                Framing::Length(len) if len > 0 => copy_length(&mut self.reader, &mut writer, len)?,
                Framing::Close => copy_all(&mut self.reader, &mut writer)?,
                Framing::Length(_) | Framing::NoBody => (),
            }
        }

        Ok(must_close)
    }

    /// Retrieves the current value of the `Response` status code
    pub fn status_code(&self) -> StatusCode {
        self.status_code
    }

    /// Retrieves the current value of the `Response` data length
    pub fn data_length(&self) -> Option<usize> {
        self.data_length
    }

    /// Retrieves the current list of `Response` headers
    pub fn headers(&self) -> &[Header] {
        &self.headers
    }
}

impl<R> Response<R>
where
    R: Read + Send + 'static,
{
    /// Turns this response into a `Response<Box<Read + Send>>`.
    pub fn boxed(self) -> ResponseBox {
        Response {
            reader: Box::new(self.reader) as Box<dyn Read + Send>,
            status_code: self.status_code,
            headers: self.headers,
            raw_headers: self.raw_headers,
            data_length: self.data_length,
            chunked_threshold: self.chunked_threshold,
        }
    }
}

impl Response<File> {
    /// Builds a new `Response` from a `File`.
    ///
    /// The `Content-Type` will **not** be automatically detected,
    ///  you must set it yourself.
    pub fn from_file(file: File) -> Response<File> {
        let file_size = file.metadata().ok().map(|v| v.len() as usize);

        Response::new(
            StatusCode(200),
            Vec::with_capacity(0),
            file,
            file_size,
            None,
        )
    }
}

impl Response<Cursor<Vec<u8>>> {
    pub fn from_data<D>(data: D) -> Response<Cursor<Vec<u8>>>
    where
        D: Into<Vec<u8>>,
    {
        let data = data.into();
        let data_len = data.len();

        Response::new(
            StatusCode(200),
            Vec::with_capacity(0),
            Cursor::new(data),
            Some(data_len),
            None,
        )
    }

    pub fn from_string<S>(data: S) -> Response<Cursor<Vec<u8>>>
    where
        S: Into<String>,
    {
        let data = data.into();
        let data_len = data.len();

        Response::new(
            StatusCode(200),
            vec![
                Header::from_bytes(&b"Content-Type"[..], &b"text/plain; charset=UTF-8"[..])
                    .unwrap(),
            ],
            Cursor::new(data.into_bytes()),
            Some(data_len),
            None,
        )
    }
}

impl Response<io::Empty> {
    /// Builds an empty `Response` with the given status code.
    pub fn empty<S>(status_code: S) -> Response<io::Empty>
    where
        S: Into<StatusCode>,
    {
        Response::new(
            status_code.into(),
            Vec::with_capacity(0),
            io::empty(),
            Some(0),
            None,
        )
    }

    /// DEPRECATED. Use `empty` instead.
    pub fn new_empty(status_code: StatusCode) -> Response<io::Empty> {
        Response::empty(status_code)
    }
}

impl Clone for Response<io::Empty> {
    fn clone(&self) -> Response<io::Empty> {
        Response {
            reader: io::empty(),
            status_code: self.status_code,
            headers: self.headers.clone(),
            raw_headers: self.raw_headers.clone(),
            data_length: self.data_length,
            chunked_threshold: self.chunked_threshold,
        }
    }
}
