//! A function frames its answers wrongly: the client gets an honest answer, and the next call
//! through the same replica, on the same connections, still gets its own.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

/// One worker, so one upstream pool: a connection a broken answer left behind is the one the
/// next call takes. One replica, so every call reaches the same function process.
fn gateway() -> Defrost {
    echo_gateway_with(
        "workers = 1\nmax_workers = 1\nupstream_timeout = \"5s\"",
        "min_replicas = 1\nmax_replicas = 1",
    )
}

fn echo_gateway_with(gateway: &str, function: &str) -> Defrost {
    Defrost::start(&format!(
        "[gateway]\n{gateway}\n{}",
        echo_function("echo", "", function)
    ))
}

/// A keep-alive client that reads each response by its own framing, as a browser would.
struct Client {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

struct Answer {
    status: u16,
    /// Lower-cased names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Client {
    fn new(gw: &Defrost) -> Client {
        let stream = TcpStream::connect(gw.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Client {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
        }
    }

    fn call(&mut self, method: &str, path: &str) -> Answer {
        self.call_with(method, path, "")
    }

    /// `headers`: more header lines, each ending in CRLF.
    fn call_with(&mut self, method: &str, path: &str, headers: &str) -> Answer {
        let request = format!("{method} {path} HTTP/1.1\r\nHost: gw\r\n{headers}\r\n");
        self.writer.write_all(request.as_bytes()).unwrap();
        let status_line = self.line();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let line = self.line();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap();
            headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
        }
        let mut answer = Answer {
            status,
            headers,
            body: Vec::new(),
        };
        if method == "HEAD" || matches!(status, 204 | 304) {
            return answer;
        }
        if answer.header("transfer-encoding").is_some() {
            answer.body = self.chunked();
        } else {
            let length = answer.header("content-length").unwrap().parse().unwrap();
            answer.body = vec![0; length];
            self.reader.read_exact(&mut answer.body).unwrap();
        }
        answer
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        line.trim_end_matches(['\r', '\n']).to_owned()
    }

    fn chunked(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let size = usize::from_str_radix(self.line().split(';').next().unwrap(), 16).unwrap();
            if size == 0 {
                assert_eq!(self.line(), "", "no trailers expected");
                return body;
            }
            let start = body.len();
            body.resize(start + size, 0);
            self.reader.read_exact(&mut body[start..]).unwrap();
            assert_eq!(self.line(), "");
        }
    }

    /// Nothing more has come on the connection than the responses read.
    fn nothing_pending(&mut self) -> bool {
        self.writer
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let pending =
            self.reader.buffer().is_empty() && self.reader.get_ref().peek(&mut [0u8; 1]).is_err();
        self.writer
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        pending
    }
}

/// A normal call right after a broken one, on the same client connection, is answered as
/// itself.
fn next_call_is_intact(client: &mut Client, round: usize) {
    let path = format!("/function/echo/after/{round}");
    let answer = client.call("GET", &path);
    assert_eq!(answer.status, 200, "round {round}: {}", answer.text());
    let echo: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(echo["path"], format!("/after/{round}"));
}

#[test]
fn a_response_with_two_framings_is_refused_and_its_connection_dropped() {
    let gw = gateway();
    let mut client = Client::new(&gw);
    for round in 0..3 {
        let answer = client.call("GET", "/function/echo/framing/both");
        assert_eq!(answer.status, 502, "{}", answer.text());
        assert!(
            answer
                .text()
                .contains("both Content-Length and Transfer-Encoding"),
            "{}",
            answer.text()
        );
        next_call_is_intact(&mut client, round);
    }
    assert!(client.nothing_pending());
}

#[test]
fn too_many_response_headers_are_an_honest_502() {
    let gw = gateway();
    let mut client = Client::new(&gw);
    let many = client.call("GET", "/function/echo/framing/headers/100");
    assert_eq!(many.status, 200, "{}", many.text());
    assert_eq!(many.header("x-many-99"), Some("99"));
    assert_eq!(many.text(), "ok");
    for round in 0..2 {
        let answer = client.call("GET", "/function/echo/framing/headers/200");
        assert_eq!(answer.status, 502, "{}", answer.text());
        assert!(
            answer.text().contains("more than 128 headers"),
            "{}",
            answer.text()
        );
        next_call_is_intact(&mut client, round);
    }
}

#[test]
fn a_head_answered_with_a_body_does_not_poison_the_next_call() {
    let gw = gateway();
    let mut client = Client::new(&gw);
    for round in 0..3 {
        let head = client.call("HEAD", "/function/echo/framing/head-body");
        assert_eq!(head.status, 200);
        assert_eq!(head.header("content-length"), Some("5"));
        next_call_is_intact(&mut client, round);
    }
    assert!(client.nothing_pending());
}

#[test]
fn a_304_that_declares_a_body_reaches_the_client_without_one() {
    let gw = gateway();
    let mut client = Client::new(&gw);
    for round in 0..3 {
        // A browser revalidating what it has cached.
        let answer = client.call_with(
            "GET",
            "/function/echo/framing/304",
            "If-None-Match: \"v1\"\r\n",
        );
        assert_eq!(answer.status, 304);
        assert_eq!(answer.header("etag"), Some("\"v1\""));
        assert_eq!(
            answer.header("transfer-encoding"),
            None,
            "a 304 has no body"
        );
        assert!(
            answer.header("content-length").is_none_or(|l| l == "0"),
            "{:?}",
            answer.headers
        );
        next_call_is_intact(&mut client, round);
    }
    assert!(client.nothing_pending());
}

/// A POST, PUT or PATCH without a body goes to the function as one, with `Content-Length: 0`,
/// never as an empty chunked body: a function that does not decode chunked bodies (Python's
/// http.server does not) would take the final chunk for its next request, and the call that
/// follows on that connection could read the error it answers to it.
#[test]
fn a_bodyless_post_reaches_the_function_without_a_chunked_body() {
    let gw = gateway();
    for method in ["POST", "PUT", "PATCH"] {
        let request =
            format!("{method} /function/echo/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let answer = raw(gw.addr, request.as_bytes(), Duration::from_secs(30));
        assert!(answer.starts_with("HTTP/1.1 200"), "{method}: {answer}");
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        let seen: serde_json::Value = serde_json::from_str(body).expect("the echo's JSON");
        let headers = &seen["headers"];
        assert!(
            headers.get("transfer-encoding").is_none(),
            "{method}: {headers}"
        );
        assert_eq!(headers["content-length"], "0", "{method}: {headers}");
        assert_eq!(seen["body_bytes"], 0, "{method}: {seen}");
    }
}
