//! Requests crafted to abuse a gateway, against the real binary: it must not become an open
//! proxy, a path must not reach another function, ambiguous framing must not be smuggled on,
//! a streamed body must not exceed the limit, and secrets must not end up in the log.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

/// `echo` and `other`, each counting its process starts in a file of its own.
fn two_functions(gateway_settings: &str, env: &[(&str, &str)]) -> Defrost {
    let config = format!(
        "[gateway]\n{gateway_settings}\n{}{}",
        echo_function("echo", "STARTS_FILE = \"$DIR/echo-starts\"", ""),
        echo_function("other", "STARTS_FILE = \"$DIR/other-starts\"", "")
    );
    Defrost::start_with(&config, &[], env)
}

fn starts(gw: &Defrost, function: &str) -> usize {
    lines_in(&gw.dir.path().join(format!("{function}-starts")))
}

fn status_of(answer: &str) -> &str {
    answer.get(9..12).unwrap_or(answer)
}

fn head_request(method: &str, target: &str) -> String {
    format!("{method} {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
}

#[test]
fn the_gateway_is_not_an_open_proxy() {
    let gw = two_functions("", &[]);
    let absolute = format!("http://{}/function/echo", gw.addr);
    for (method, target) in [
        ("CONNECT", "example.com:443"),
        ("CONNECT", gw.addr.to_string().as_str()),
        ("GET", absolute.as_str()),
        ("GET", "http://example.com/"),
    ] {
        let answer = raw(
            gw.addr,
            head_request(method, target).as_bytes(),
            Duration::from_secs(10),
        );
        assert_eq!(status_of(&answer), "400", "{method} {target}: {answer}");
        assert!(answer.contains("not a forward proxy"), "{answer}");
    }
    assert_eq!(
        starts(&gw, "echo"),
        0,
        "a proxy request reached the function"
    );
    assert_eq!(get(&gw.url("/function/echo")).status, 200);
}

#[test]
fn path_traversal_never_reaches_another_function() {
    let gw = two_functions("", &[]);
    for target in [
        "/function/echo/../other",
        "/function/echo/%2e%2e/other",
        "/function/echo/%2E%2e%2Fother",
        "/function/echo/..%2fother",
        "/function/echo/a/%2e%2e%2f%2e%2e%2fother",
        "/function/%2e%2e/other",
        "/function/echo%2f..%2fother",
        "/function/..%2fother",
        "/system/../function/other",
    ] {
        let answer = raw(
            gw.addr,
            head_request("GET", target).as_bytes(),
            Duration::from_secs(30),
        );
        assert_eq!(status_of(&answer), "400", "{target}: {answer}");
    }
    assert_eq!(
        starts(&gw, "other"),
        0,
        "a traversal started another function"
    );
    // An encoded slash inside a segment is data for the function, passed on untouched.
    let echoed = get(&gw.url("/function/echo/a%2Fb?x=..")).json();
    assert_eq!(echoed["path"], "/a%2Fb?x=..");
    assert_eq!(starts(&gw, "other"), 0);
}

#[test]
fn ambiguous_body_framing_is_refused_before_the_function() {
    let gw = two_functions("", &[]);
    for request in [
        "POST /function/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        "POST /function/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST /function/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        "POST /function/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4, 5\r\n\r\nabcd",
        "POST /function/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
    ] {
        let answer = raw(gw.addr, request.as_bytes(), Duration::from_secs(10));
        assert!(
            answer.starts_with("HTTP/1.1 400") || answer.starts_with("HTTP/1.1 501"),
            "{request:?}: {answer}"
        );
    }
    assert_eq!(
        starts(&gw, "echo"),
        0,
        "an ambiguous request reached the function"
    );
}

#[test]
fn a_chunked_body_over_the_limit_is_refused_while_streaming() {
    let gw = two_functions("max_body_bytes = 262144", &[]);
    let mut stream = TcpStream::connect(gw.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
        .write_all(b"POST /function/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let chunk = vec![b'x'; 16 * 1024];
    // 1 MiB in 16 KiB chunks; the gateway may stop reading (and answer) before the end.
    for _ in 0..64 {
        let mut piece = format!("{:x}\r\n", chunk.len()).into_bytes();
        piece.extend_from_slice(&chunk);
        piece.extend_from_slice(b"\r\n");
        if stream.write_all(&piece).is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("262144"), "{answer}");
    // Within the limit, the same chunked upload goes through whole.
    let small = agent()
        .post(&gw.url("/function/echo"))
        .send(ureq::SendBody::from_reader(&mut &vec![b'y'; 100_000][..]))
        .map(read_reply)
        .unwrap();
    assert_eq!(small.status, 200);
    assert_eq!(small.json()["body_bytes"], 100_000);
}

#[test]
fn credentials_and_query_secrets_never_reach_the_log() {
    let gw = two_functions("upstream_timeout = \"2s\"", &[("RUST_LOG", "debug")]);
    let secret_header = "Bearer SECRET-TOKEN-1";
    for path in [
        "/function/echo?token=SECRET-QUERY-2",
        "/function/echo/garbage?token=SECRET-QUERY-3",
        "/function/missing?token=SECRET-QUERY-4",
        "/function/echo/../x?token=SECRET-QUERY-5",
    ] {
        let _ = agent()
            .get(&gw.url(path))
            .header("Authorization", secret_header)
            .header("Cookie", "session=SECRET-COOKIE-6")
            .call();
    }
    // The failing call is logged, so the log is really being looked at.
    assert!(
        gw.log_count_settled("/function/echo/garbage", 1) > 0,
        "{}",
        gw.log_text()
    );
    assert_eq!(gw.log_count("SECRET"), 0, "{}", gw.log_text());

    let remote = Defrost::start_with(
        "[provider]\nkind = \"openfaas\"\nurl = \"http://admin:SECRET-PASSWORD-7@127.0.0.1:9\"\ntimeout = \"2s\"\n",
        &[],
        &[("RUST_LOG", "debug")],
    );
    let reply = get(&remote.url("/function/echo"));
    assert_eq!(reply.status, 502, "{}", reply.body);
    assert!(remote.log_count_settled("/function/echo", 1) > 0);
    assert!(!reply.body.contains("SECRET"), "{}", reply.body);
    assert_eq!(remote.log_count("SECRET"), 0, "{}", remote.log_text());
}
