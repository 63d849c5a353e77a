//! Request body framing (`Content-Length` and `chunked`), the body reader handed to the
//! user, and bounded line reading shared with the request head parser.

use std::convert::TryFrom;
use std::io::{self, BufRead, BufReader, Read};
use std::sync::mpsc::Sender;

use super::conn::ReadHalf;

/// The buffered reading side of a connection, moved between the connection thread and the
/// body reader of the request currently being read.
pub(crate) type ConnReader = BufReader<ReadHalf>;

/// Longest chunk-size line accepted (chunk extensions included).
const MAX_CHUNK_LINE: usize = 1024;
/// Most trailer bytes accepted after the last chunk.
const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// Why [`read_line`] failed.
#[derive(Debug)]
pub(crate) enum LineError {
    Io(io::Error),
    /// The stream ended before the end of the line.
    Eof,
    /// The line (terminator included) is longer than allowed.
    TooLong,
}

/// Reads one line, terminated by `\n` (an optional `\r` before it is removed), into `out`
/// (cleared first, terminator not included) and returns the number of bytes consumed.
/// Fails with `TooLong` as soon as the line with its terminator would exceed `max` bytes,
/// without reading further. Works on the reader's buffer directly: no per-byte reads.
pub(crate) fn read_line<R: BufRead + ?Sized>(
    src: &mut R,
    out: &mut Vec<u8>,
    max: usize,
) -> Result<usize, LineError> {
    out.clear();
    continue_line(src, out, max)
}

/// [`read_line`] for a line whose beginning is already in `out`: what a read that failed
/// (one that would block, say) had taken is kept there, and this carries on from it. The
/// count returned, and `max`, include that beginning.
pub(crate) fn continue_line<R: BufRead + ?Sized>(
    src: &mut R,
    out: &mut Vec<u8>,
    max: usize,
) -> Result<usize, LineError> {
    loop {
        let available = match src.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(LineError::Io(e)),
        };
        if available.is_empty() {
            return Err(LineError::Eof);
        }
        match available.iter().position(|&b| b == b'\n') {
            Some(i) => {
                if out.len() + i + 1 > max {
                    return Err(LineError::TooLong);
                }
                out.extend_from_slice(&available[..i]);
                src.consume(i + 1);
                let consumed = out.len() + 1;
                if out.last() == Some(&b'\r') {
                    out.pop();
                }
                return Ok(consumed);
            }
            None => {
                let n = available.len();
                if out.len() + n >= max {
                    return Err(LineError::TooLong);
                }
                out.extend_from_slice(available);
                src.consume(n);
            }
        }
    }
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn line_error(e: LineError) -> io::Error {
    match e {
        LineError::Io(e) => e,
        LineError::Eof => io::Error::new(io::ErrorKind::UnexpectedEof, "request body truncated"),
        LineError::TooLong => invalid("chunked body: line too long"),
    }
}

/// Parses a chunk-size line (`1a2b;ext=value`).
fn parse_chunk_size(line: &[u8]) -> io::Result<u64> {
    let end = line.iter().position(|&b| b == b';').unwrap_or(line.len());
    let digits = line[..end].trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return Err(invalid("chunked body: bad chunk size"));
    }
    let mut size = 0u64;
    for &b in digits {
        let v = (b as char)
            .to_digit(16)
            .ok_or_else(|| invalid("chunked body: bad chunk size"))?;
        size = size * 16 + u64::from(v);
    }
    Ok(size)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChunkState {
    /// Expecting a chunk-size line.
    Size,
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// Reading trailer lines; this many trailer bytes read so far.
    Trailers(usize),
    Done,
}

/// Decoding state of a request body. Owns no reader, so that the state can travel back to
/// the connection thread together with the reader when the body is dropped unfinished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyDecoder {
    /// `Content-Length` body: this many bytes left.
    Length(u64),
    Chunked(ChunkState),
    /// The body framing is lost (truncated or malformed): the connection cannot be reused.
    Broken,
}

impl BodyDecoder {
    pub(crate) fn is_done(&self) -> bool {
        matches!(
            self,
            BodyDecoder::Length(0) | BodyDecoder::Chunked(ChunkState::Done)
        )
    }

    /// Reads body bytes from `src` into `buf` (which must not be empty). `Ok(0)` means the
    /// end of the body. A truncated or malformed body is an error and leaves the decoder
    /// `Broken`; a timeout inside chunk data or a `Content-Length` body can be retried.
    pub(crate) fn read<R: BufRead + ?Sized>(
        &mut self,
        src: &mut R,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        match *self {
            BodyDecoder::Broken => Err(invalid("request body framing is broken")),
            BodyDecoder::Length(0) => Ok(0),
            BodyDecoder::Length(remaining) => {
                let max = buf
                    .len()
                    .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                match src.read(&mut buf[..max]) {
                    Ok(0) => {
                        *self = BodyDecoder::Broken;
                        Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed before the end of the request body",
                        ))
                    }
                    Ok(n) => {
                        *self = BodyDecoder::Length(remaining - n as u64);
                        Ok(n)
                    }
                    Err(e) => Err(e),
                }
            }
            BodyDecoder::Chunked(state) => match self.read_chunked(state, src, buf) {
                Ok((n, state)) => {
                    *self = BodyDecoder::Chunked(state);
                    Ok(n)
                }
                Err((e, resumable)) => {
                    if !resumable {
                        *self = BodyDecoder::Broken;
                    }
                    Err(e)
                }
            },
        }
    }

    fn read_chunked<R: BufRead + ?Sized>(
        &self,
        mut state: ChunkState,
        src: &mut R,
        buf: &mut [u8],
    ) -> Result<(usize, ChunkState), (io::Error, bool)> {
        let mut line = Vec::new();
        loop {
            match state {
                ChunkState::Done => return Ok((0, state)),
                ChunkState::Data(remaining) => {
                    let max = buf
                        .len()
                        .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    return match src.read(&mut buf[..max]) {
                        Ok(0) => Err((line_error(LineError::Eof), false)),
                        Ok(n) => {
                            let left = remaining - n as u64;
                            let next = if left == 0 {
                                ChunkState::DataEnd
                            } else {
                                ChunkState::Data(left)
                            };
                            Ok((n, next))
                        }
                        Err(e) => {
                            let resumable = e.kind() != io::ErrorKind::InvalidData;
                            Err((e, resumable))
                        }
                    };
                }
                ChunkState::Size => {
                    read_line(src, &mut line, MAX_CHUNK_LINE)
                        .map_err(|e| (line_error(e), false))?;
                    let size = parse_chunk_size(&line).map_err(|e| (e, false))?;
                    state = if size == 0 {
                        ChunkState::Trailers(0)
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::DataEnd => {
                    read_line(src, &mut line, 2).map_err(|e| (line_error(e), false))?;
                    if !line.is_empty() {
                        return Err((invalid("chunked body: missing CRLF after chunk"), false));
                    }
                    state = ChunkState::Size;
                }
                ChunkState::Trailers(total) => {
                    let max = MAX_TRAILER_BYTES.saturating_sub(total);
                    read_line(src, &mut line, max).map_err(|e| (line_error(e), false))?;
                    state = if line.is_empty() {
                        ChunkState::Done
                    } else {
                        ChunkState::Trailers(total + line.len() + 2)
                    };
                }
            }
        }
    }
}

/// Reads and discards what is left of a body, through a small fixed buffer, at most
/// `budget` body bytes. Returns true if the body was read to its end, so that the next
/// request on the connection can be read; false if the connection must be closed.
pub(crate) fn drain<R: BufRead + ?Sized>(
    src: &mut R,
    decoder: &mut BodyDecoder,
    budget: usize,
) -> bool {
    if let BodyDecoder::Length(remaining) = *decoder {
        if remaining > budget as u64 {
            return false;
        }
    }
    let mut scratch = [0u8; 8 * 1024];
    let mut total = 0usize;
    loop {
        match decoder.read(src, &mut scratch) {
            Ok(0) => return decoder.is_done(),
            Ok(n) => {
                total += n;
                if total > budget {
                    return false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

/// The connection reader and the body state, sent back to the connection thread when a
/// body reader is finished or dropped.
pub(crate) struct Returned {
    pub(crate) src: ConnReader,
    pub(crate) decoder: BodyDecoder,
}

/// Body of a request read from a connection. Gives the connection reader back to the
/// connection thread as soon as the body has been read to its end (so that pipelined
/// requests are parsed promptly), or when dropped. Never reads anything on drop: an unread
/// rest is drained (within limits) by the connection thread.
pub(crate) struct BodyReader {
    src: Option<ConnReader>,
    decoder: BodyDecoder,
    back: Sender<Returned>,
}

impl BodyReader {
    pub(crate) fn new(src: ConnReader, decoder: BodyDecoder, back: Sender<Returned>) -> Self {
        let mut reader = BodyReader {
            src: Some(src),
            decoder,
            back,
        };
        if decoder.is_done() {
            reader.give_back();
        }
        reader
    }

    /// Number of body bytes not read yet, if known (`Content-Length` bodies).
    pub(crate) fn unread_length(&self) -> Option<u64> {
        match (&self.src, self.decoder) {
            (None, _) => Some(0),
            (Some(_), BodyDecoder::Length(n)) => Some(n),
            _ => None,
        }
    }

    /// True once the body framing is known to be lost.
    pub(crate) fn is_broken(&self) -> bool {
        self.decoder == BodyDecoder::Broken
    }

    fn give_back(&mut self) {
        if let Some(src) = self.src.take() {
            let _ = self.back.send(Returned {
                src,
                decoder: self.decoder,
            });
        }
    }
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let src = match self.src.as_mut() {
            Some(src) => src,
            None => return Ok(0),
        };
        let n = self.decoder.read(src, buf)?;
        if self.decoder.is_done() {
            self.give_back();
        }
        Ok(n)
    }
}

impl Drop for BodyReader {
    fn drop(&mut self) {
        self.give_back();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn decode(input: &[u8], mut decoder: BodyDecoder) -> (io::Result<Vec<u8>>, Vec<u8>) {
        let mut src = Cursor::new(input.to_vec());
        let mut out = Vec::new();
        let mut buf = [0u8; 3];
        let res = loop {
            match decoder.read(&mut src, &mut buf) {
                Ok(0) => break Ok(out),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => break Err(e),
            }
        };
        let pos = src.position() as usize;
        (res, input[pos..].to_vec())
    }

    #[test]
    fn length_body_stops_at_length() {
        let (res, rest) = decode(b"hello world", BodyDecoder::Length(5));
        assert_eq!(res.unwrap(), b"hello");
        assert_eq!(rest, b" world");
    }

    #[test]
    fn length_body_truncated_is_error() {
        let mut d = BodyDecoder::Length(50);
        let (res, _) = {
            let mut src = Cursor::new(b"abc".to_vec());
            let mut buf = [0u8; 10];
            assert_eq!(d.read(&mut src, &mut buf).unwrap(), 3);
            (d.read(&mut src, &mut buf), ())
        };
        assert_eq!(res.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(d, BodyDecoder::Broken);
    }

    #[test]
    fn chunked_body() {
        let input = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\nGET /";
        let (res, rest) = decode(input, BodyDecoder::Chunked(ChunkState::Size));
        assert_eq!(res.unwrap(), b"hello world");
        assert_eq!(rest, b"GET /");
    }

    #[test]
    fn chunked_body_malformed() {
        for input in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"ffffffffffffffffff\r\n",
            b"5\r\nhel",
        ] {
            let (res, _) = decode(input, BodyDecoder::Chunked(ChunkState::Size));
            assert!(res.is_err(), "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn line_limits() {
        let mut out = Vec::new();
        let mut src = Cursor::new(b"abcdef\r\nxy\n".to_vec());
        assert!(matches!(
            read_line(&mut src, &mut out, 5),
            Err(LineError::TooLong)
        ));
        let mut src = Cursor::new(b"abcdef\r\nxy\n".to_vec());
        assert_eq!(read_line(&mut src, &mut out, 8).unwrap(), 8);
        assert_eq!(out, b"abcdef");
        assert_eq!(read_line(&mut src, &mut out, 8).unwrap(), 3);
        assert_eq!(out, b"xy");
        assert!(matches!(
            read_line(&mut src, &mut out, 8),
            Err(LineError::Eof)
        ));
    }

    #[test]
    fn a_line_carries_on_from_what_an_earlier_read_took() {
        let mut out = Vec::new();
        // the first piece ends mid-line: its bytes are taken and kept
        let mut src = Cursor::new(b"X-Slow: ab".to_vec());
        assert!(matches!(
            continue_line(&mut src, &mut out, 16),
            Err(LineError::Eof)
        ));
        assert_eq!(out, b"X-Slow: ab");
        // the rest ends it; the count and the limit include the first piece
        let mut src = Cursor::new(b"c\r\n".to_vec());
        assert_eq!(continue_line(&mut src, &mut out, 16).unwrap(), 13);
        assert_eq!(out, b"X-Slow: abc");
        out.truncate(10);
        let mut src = Cursor::new(b"cdefgh\r\n".to_vec());
        assert!(matches!(
            continue_line(&mut src, &mut out, 16),
            Err(LineError::TooLong)
        ));
    }

    #[test]
    fn drain_respects_budget() {
        let body = vec![b'x'; 100];
        let mut src = Cursor::new(body.clone());
        let mut d = BodyDecoder::Length(100);
        assert!(drain(&mut src, &mut d, 100));
        let mut src = Cursor::new(body);
        let mut d = BodyDecoder::Length(100);
        assert!(!drain(&mut src, &mut d, 99));
        assert_eq!(
            src.position(),
            0,
            "a too long Content-Length body is not read at all"
        );

        let mut chunked = Vec::new();
        for _ in 0..10 {
            chunked.extend_from_slice(b"a\r\n0123456789\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let mut d = BodyDecoder::Chunked(ChunkState::Size);
        assert!(drain(&mut Cursor::new(chunked.clone()), &mut d, 100));
        let mut d = BodyDecoder::Chunked(ChunkState::Size);
        assert!(!drain(&mut Cursor::new(chunked), &mut d, 50));
    }
}
