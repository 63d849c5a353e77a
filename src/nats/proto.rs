//! The NATS wire protocol: the frames a client reads and writes, parsed within bounds.
//!
//! Every length the server announces is checked against a limit before anything is allocated,
//! and every line is read through a bounded window: garbage or a huge frame from the server is
//! an [`Error::Protocol`] or [`Error::TooLarge`], never a panic or an unbounded allocation.

use std::io::{BufRead, Read};

use super::Error;

/// The longest control line read (`INFO {...}` of a big cluster, `-ERR '...'`, `MSG ...`).
pub const MAX_CONTROL_LINE: usize = 256 * 1024;

/// A message delivered to a subscription (`MSG`, or `HMSG` with headers).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// The subject it was published to.
    pub subject: String,
    /// The subscription it was delivered to.
    pub sid: u64,
    /// Where an answer goes, when the publisher asked for one.
    pub reply: Option<String>,
    /// Its headers (empty for a plain `MSG`).
    pub headers: Headers,
    /// Its body.
    pub payload: Vec<u8>,
}

/// A header block: the `NATS/1.0` status line and its fields.
///
/// Servers send status-only messages for control: `503` (no responders), `404 No Messages`,
/// `408 Request Timeout`, `409 ...` (pull requests), `100 Idle Heartbeat`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Headers {
    /// The status code of the `NATS/1.0` line, when it has one.
    pub status: Option<u16>,
    /// The words after the status code.
    pub description: String,
    /// The fields, in order, names as sent.
    pub fields: Vec<(String, String)>,
}

impl Headers {
    /// The first value of field `name` (names compare case-insensitively).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Headers carrying only `fields`.
    pub fn with(fields: &[(&str, &str)]) -> Headers {
        Headers {
            fields: fields
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            ..Headers::default()
        }
    }

    fn is_empty(&self) -> bool {
        self.status.is_none() && self.fields.is_empty()
    }

    /// The block as sent on the wire, ending with the empty line.
    fn encode(&self) -> Vec<u8> {
        let mut out = b"NATS/1.0".to_vec();
        if let Some(code) = self.status {
            out.extend_from_slice(format!(" {code}").as_bytes());
            if !self.description.is_empty() {
                out.push(b' ');
                out.extend_from_slice(self.description.as_bytes());
            }
        }
        out.extend_from_slice(b"\r\n");
        for (name, value) in &self.fields {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    /// Parses a block (`NATS/1.0[ code[ description]]` then `Name: value` lines).
    pub fn parse(block: &[u8]) -> Result<Headers, Error> {
        let text = std::str::from_utf8(block)
            .map_err(|_| Error::Protocol("message headers are not UTF-8".into()))?;
        let mut lines = text.split("\r\n");
        let first = lines.next().unwrap_or_default();
        let rest = first.strip_prefix("NATS/1.0").ok_or_else(|| {
            Error::Protocol(format!(
                "message headers start {:?}, not NATS/1.0",
                clip(first)
            ))
        })?;
        let rest = rest.trim();
        let mut headers = Headers::default();
        if !rest.is_empty() {
            let (code, description) = rest.split_once(' ').unwrap_or((rest, ""));
            let code = code.parse::<u16>().map_err(|_| {
                Error::Protocol(format!("message status {:?} is not a number", clip(code)))
            })?;
            headers.status = Some(code);
            headers.description = description.trim().to_string();
        }
        for line in lines.filter(|l| !l.is_empty()) {
            let (name, value) = line.split_once(':').ok_or_else(|| {
                Error::Protocol(format!("message header line {:?} has no colon", clip(line)))
            })?;
            headers
                .fields
                .push((name.trim().to_string(), value.trim().to_string()));
        }
        Ok(headers)
    }
}

/// What the server sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// `INFO {json}`: the server's description of itself.
    Info(String),
    /// `MSG` or `HMSG`.
    Msg(Message),
    /// `PING`: answer with `PONG` or be disconnected.
    Ping,
    /// `PONG`: the answer to our `PING`.
    Pong,
    /// `+OK` (verbose mode only).
    Ok,
    /// `-ERR 'text'`.
    Err(String),
}

/// Reads one frame, allowing bodies of up to `max_payload` bytes.
pub fn read_frame<R: BufRead>(r: &mut R, max_payload: usize) -> Result<Frame, Error> {
    let line = read_line(r)?;
    let (op, args) = match line.split_once([' ', '\t']) {
        Some((op, args)) => (op, args.trim()),
        None => (line.as_str(), ""),
    };
    match op.to_ascii_uppercase().as_str() {
        "MSG" => read_msg(r, args, false, max_payload).map(Frame::Msg),
        "HMSG" => read_msg(r, args, true, max_payload).map(Frame::Msg),
        "PING" => Ok(Frame::Ping),
        "PONG" => Ok(Frame::Pong),
        "+OK" => Ok(Frame::Ok),
        "-ERR" => Ok(Frame::Err(args.trim_matches('\'').to_string())),
        "INFO" => Ok(Frame::Info(args.to_string())),
        _ => Err(Error::Protocol(format!(
            "unknown operation {:?} from the server",
            clip(&line)
        ))),
    }
}

/// One `\r\n`-terminated line, without its terminator, of at most [`MAX_CONTROL_LINE`] bytes.
fn read_line<R: BufRead>(r: &mut R) -> Result<String, Error> {
    let mut line = Vec::new();
    let n = r
        .by_ref()
        .take(MAX_CONTROL_LINE as u64 + 2)
        .read_until(b'\n', &mut line)
        .map_err(Error::Io)?;
    if n == 0 {
        return Err(Error::closed("the server closed the connection"));
    }
    if line.last() != Some(&b'\n') {
        return Err(if n > MAX_CONTROL_LINE {
            Error::TooLarge {
                what: "control line".into(),
                limit: MAX_CONTROL_LINE,
            }
        } else {
            Error::closed("the server closed the connection within a line")
        });
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| Error::Protocol("a control line is not UTF-8".into()))
}

/// `MSG <subject> <sid> [reply] <size>` or `HMSG <subject> <sid> [reply] <hsize> <size>`,
/// then the body and its `\r\n`.
fn read_msg<R: BufRead>(
    r: &mut R,
    args: &str,
    with_headers: bool,
    max_payload: usize,
) -> Result<Message, Error> {
    let words: Vec<&str> = args.split_ascii_whitespace().collect();
    let sizes = if with_headers { 2 } else { 1 };
    let bad = || Error::Protocol(format!("malformed message line {:?}", clip(args)));
    if words.len() != 2 + sizes && words.len() != 3 + sizes {
        return Err(bad());
    }
    let number = |w: &str| w.parse::<u64>().map_err(|_| bad());
    let total = number(words[words.len() - 1])?;
    let header_len = if with_headers {
        number(words[words.len() - 2])?
    } else {
        0
    };
    if header_len > total {
        return Err(bad());
    }
    if total > max_payload as u64 {
        return Err(Error::TooLarge {
            what: format!("message of {total} bytes on {:?}", clip(words[0])),
            limit: max_payload,
        });
    }
    let mut body = vec![0; total as usize];
    r.read_exact(&mut body).map_err(Error::Io)?;
    let mut end = [0; 2];
    r.read_exact(&mut end).map_err(Error::Io)?;
    if &end != b"\r\n" {
        return Err(Error::Protocol(format!(
            "message on {:?} is longer than announced",
            clip(words[0])
        )));
    }
    let payload = body.split_off(header_len as usize);
    let headers = if with_headers {
        Headers::parse(&body)?
    } else {
        Headers::default()
    };
    Ok(Message {
        subject: words[0].to_string(),
        sid: number(words[1])?,
        reply: (words.len() == 3 + sizes).then(|| words[2].to_string()),
        headers,
        payload,
    })
}

/// `PUB`, or `HPUB` when there are headers, as one buffer (written whole, never interleaved);
/// headers and body together may not exceed `max_payload`, the server's limit.
pub fn publish(
    subject: &str,
    reply: Option<&str>,
    headers: &Headers,
    payload: &[u8],
    max_payload: usize,
) -> Result<Vec<u8>, Error> {
    check_subject(subject)?;
    if let Some(reply) = reply {
        check_subject(reply)?;
    }
    let block = if headers.is_empty() {
        Vec::new()
    } else {
        headers.encode()
    };
    let total = block.len() + payload.len();
    if total > max_payload {
        return Err(Error::TooLarge {
            what: format!("message of {total} bytes to {:?}", clip(subject)),
            limit: max_payload,
        });
    }
    let reply = reply.map(|r| format!(" {r}")).unwrap_or_default();
    let mut out = if block.is_empty() {
        format!("PUB {subject}{reply} {total}\r\n").into_bytes()
    } else {
        format!("HPUB {subject}{reply} {} {total}\r\n", block.len()).into_bytes()
    };
    out.extend_from_slice(&block);
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
    Ok(out)
}

/// A subject or reply token a server would accept: printable, no spaces, not empty.
pub fn check_subject(subject: &str) -> Result<(), Error> {
    let ok = !subject.is_empty()
        && subject.len() <= 1024
        && subject.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(Error::BadSubject(clip(subject).to_string()))
    }
}

/// At most 80 characters of `s`, for messages that quote what the server sent.
fn clip(s: &str) -> &str {
    match s.char_indices().nth(80) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(wire: &[u8]) -> Vec<Result<Frame, Error>> {
        let mut r = wire;
        let mut out = Vec::new();
        while !r.is_empty() {
            let frame = read_frame(&mut r, 1024);
            let failed = frame.is_err();
            out.push(frame);
            if failed {
                break;
            }
        }
        out
    }

    fn one(wire: &[u8]) -> Result<Frame, Error> {
        read_frame(&mut &wire[..], 1024)
    }

    #[test]
    fn control_frames_are_read() {
        let got: Vec<Frame> = frames(b"PING\r\npong\r\n+OK\r\n-ERR 'Authorization Violation'\r\nINFO {\"max_payload\":1048576}\r\n")
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            got,
            vec![
                Frame::Ping,
                Frame::Pong,
                Frame::Ok,
                Frame::Err("Authorization Violation".into()),
                Frame::Info("{\"max_payload\":1048576}".into()),
            ]
        );
    }

    #[test]
    fn messages_with_and_without_reply_and_headers() {
        let Frame::Msg(m) = one(b"MSG jobs 7 5\r\nhello\r\n").unwrap() else {
            panic!()
        };
        assert_eq!((m.subject.as_str(), m.sid, m.reply), ("jobs", 7, None));
        assert_eq!(m.payload, b"hello");

        let wire = b"HMSG jobs 9 _INBOX.a.b 30 32\r\nNATS/1.0\r\nNats-Msg-Id: x-1\r\n\r\nhi\r\n";
        let Frame::Msg(m) = one(wire).unwrap() else {
            panic!()
        };
        assert_eq!(m.reply.as_deref(), Some("_INBOX.a.b"));
        assert_eq!(m.headers.get("nats-msg-id"), Some("x-1"));
        assert_eq!(m.headers.status, None);
        assert_eq!(m.payload, b"hi");
    }

    #[test]
    fn status_lines_are_parsed() {
        for (line, code, description) in [
            ("NATS/1.0 404 No Messages", 404, "No Messages"),
            ("NATS/1.0 408 Request Timeout", 408, "Request Timeout"),
            ("NATS/1.0 100 Idle Heartbeat", 100, "Idle Heartbeat"),
            ("NATS/1.0 503", 503, ""),
        ] {
            let block = format!("{line}\r\nNats-Pending-Messages: 3\r\n\r\n");
            let wire = format!("HMSG _INBOX.x 1 {0} {0}\r\n{block}\r\n", block.len());
            let Frame::Msg(m) = one(wire.as_bytes()).unwrap() else {
                panic!()
            };
            assert_eq!(m.headers.status, Some(code), "{line}");
            assert_eq!(m.headers.description, description);
            assert_eq!(m.headers.get("Nats-Pending-Messages"), Some("3"));
            assert!(m.payload.is_empty());
        }
    }

    #[test]
    fn what_is_published_reads_back() {
        let headers = Headers::with(&[("Nats-Msg-Id", "abc")]);
        let mut wire = publish("jobs", Some("_INBOX.r"), &headers, b"body", 1024).unwrap();
        // A PUB looks like a MSG once the server adds the sid.
        let text = String::from_utf8(wire.clone()).unwrap();
        assert!(
            text.starts_with("HPUB jobs _INBOX.r 30 34\r\nNATS/1.0\r\n"),
            "{text}"
        );
        wire.splice(0..4, b"HMSG".iter().copied());
        let at = text.find(" _INBOX").unwrap();
        wire.splice(at..at, b" 1".iter().copied());
        let Frame::Msg(m) = one(&wire).unwrap() else {
            panic!()
        };
        assert_eq!(m.headers, headers);
        assert_eq!(m.payload, b"body");
        let plain = publish("a", None, &Headers::default(), b"x", 1024).unwrap();
        assert_eq!(plain, b"PUB a 1\r\nx\r\n");
        let err = publish("a", None, &headers, &[0; 1000], 1024).unwrap_err();
        assert!(matches!(err, Error::TooLarge { limit: 1024, .. }), "{err}");
        assert!(publish("a b", None, &headers, b"", 1024).is_err());
        assert!(publish("a", Some("r\r\nPUB"), &headers, b"", 1024).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for wire in [
            &b"HELLO\r\n"[..],
            b"MSG\r\n",
            b"MSG a\r\n",
            b"MSG a b 3\r\nabc\r\n",
            b"MSG a 1 -3\r\nabc\r\n",
            b"MSG a 1 2 3 4\r\nabc\r\n",
            b"MSG a 1 3\r\nabcdef\r\n",
            b"HMSG a 1 9 3\r\nabc\r\n",
            b"HMSG a 1 3 3\r\nabc\r\n",
            b"HMSG a 1 12 12\r\nNATS/1.0 x\r\n\r\n",
            b"HMSG a 1 14 14\r\nNATS/1.0\r\nab\r\n\r\n",
            b"MSG a 1 99999999999999999999999\r\n",
            b"\xff\xfe\r\n",
            b"MSG a 1 5\r\nabc",
            b"PIN",
            b"",
        ] {
            assert!(one(wire).is_err(), "{:?}", String::from_utf8_lossy(wire));
        }
    }

    #[test]
    fn huge_frames_are_refused_before_allocating() {
        let err = one(b"MSG a 1 18446744073709551615\r\n").unwrap_err();
        assert!(matches!(err, Error::TooLarge { limit: 1024, .. }), "{err}");
        let err = one(b"HMSG a 1 10 2000\r\n").unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }), "{err}");

        let mut endless = std::io::repeat(b'x').take(10 * MAX_CONTROL_LINE as u64);
        let mut r = std::io::BufReader::new(&mut endless);
        let err = read_frame(&mut r, 1024).unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    }

    #[test]
    fn subjects_are_checked() {
        assert!(check_subject("faas-request").is_ok());
        assert!(check_subject("$JS.API.STREAM.INFO.x").is_ok());
        for bad in ["", "a b", "a\r\nPUB x 1", "é"] {
            assert!(check_subject(bad).is_err(), "{bad:?}");
        }
    }
}
