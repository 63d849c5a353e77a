//! A user sends requests of every shape; each reaches the function intact or gets an honest
//! error.

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use common::*;

fn gateway() -> Defrost {
    Defrost::start(&format!(
        "[[function]]\nname = \"echo\"\ncommand = [\"python3\", \"{}\"]\nreadiness_path = \"/healthz\"\n",
        echo_script()
    ))
}

#[test]
fn health_unknown_routes_and_bad_names() {
    let gw = gateway();
    assert_eq!(get(&gw.url("/healthz")).status, 200);
    let none = get(&gw.url("/nothing/here"));
    assert_eq!(none.status, 404);
    assert!(none.body.contains("no route"), "{}", none.body);
    let unknown = get(&gw.url("/function/ghost"));
    assert_eq!(unknown.status, 404);
    assert!(unknown.body.contains("ghost.default"), "{}", unknown.body);
    for bad in [
        "/function/Echo",
        "/function/e_cho",
        "/function/%2e%2e",
        "/function/a.b.c",
    ] {
        let reply = get(&gw.url(bad));
        assert_eq!(reply.status, 400, "{bad}: {}", reply.body);
        assert!(reply.body.contains("invalid"), "{}", reply.body);
    }
}

#[test]
fn method_path_query_and_headers_reach_the_function() {
    let gw = gateway();
    let response = agent()
        .put(&gw.url("/function/echo/a/b%2Fc?x=1&y=%20z"))
        .header("X-Custom", "kept")
        .header("X-Call-Id", "call-123")
        .header("Connection", "keep-alive, X-Hop")
        .header("X-Hop", "dropped")
        .send("payload")
        .unwrap();
    let reply = read_reply(response);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let echo = reply.json();
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["path"], "/a/b%2Fc?x=1&y=%20z");
    assert_eq!(echo["body_bytes"], 7);
    let headers = &echo["headers"];
    assert_eq!(headers["x-custom"], "kept");
    assert_eq!(headers["x-call-id"], "call-123");
    assert!(
        headers.get("x-hop").is_none(),
        "hop-by-hop header forwarded"
    );
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-host"], gw.addr.to_string());
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert!(headers["forwarded"]
        .as_str()
        .unwrap()
        .starts_with("for=127.0.0.1;host="));
    assert!(headers["x-start-time"]
        .as_str()
        .unwrap()
        .parse::<u128>()
        .is_ok());
    assert_eq!(reply.header("x-call-id"), Some("call-123"));
    assert!(reply.header("x-start-time").is_some());
    assert_eq!(
        reply.header("x-echo"),
        Some("yes"),
        "function headers pass through"
    );
}

#[test]
fn fifty_megabytes_stream_both_ways_intact() {
    let gw = gateway();
    let size: usize = 50 << 20;
    let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let file = gw.dir.path().join("body");
    std::fs::write(&file, &body).unwrap();
    let expected = sha256sum(&file);

    let sized = read_reply(
        agent()
            .post(&gw.url("/function/echo/upload"))
            .send(&body[..])
            .unwrap(),
    );
    assert_eq!(sized.status, 200);
    assert_eq!(sized.json()["body_bytes"], size);
    assert_eq!(sized.json()["body_sha256"], expected);

    // Unknown length: the client streams it chunked.
    let reader = std::io::Cursor::new(body.clone());
    let chunked = read_reply(
        agent()
            .post(&gw.url("/function/echo/upload"))
            .send(ureq::SendBody::from_owned_reader(reader))
            .unwrap(),
    );
    assert_eq!(chunked.status, 200);
    assert_eq!(chunked.json()["body_bytes"], size);
    assert_eq!(chunked.json()["body_sha256"], expected);

    let response = agent()
        .get(&gw.url(&format!("/function/echo/bytes/{size}")))
        .call()
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut got = Vec::with_capacity(size);
    response
        .into_body()
        .into_reader()
        .read_to_end(&mut got)
        .unwrap();
    assert_eq!(got.len(), size);
    assert!(
        got.iter().enumerate().all(|(i, b)| *b == (i % 256) as u8),
        "download corrupted"
    );
}

#[test]
fn conflicting_framing_is_refused() {
    let gw = gateway();
    let answer = raw(
        gw.addr,
        b"POST /function/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\nConnection: close\r\n\r\nabcd",
        Duration::from_secs(5),
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

#[test]
fn keep_alive_connection_serves_many_calls() {
    let gw = gateway();
    let mut stream = std::net::TcpStream::connect(gw.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    for i in 0..20 {
        write!(stream, "GET /function/echo/{i} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .expect("content-length");
        let mut body = vec![0; length];
        stream.read_exact(&mut body).unwrap();
    }
}

fn sha256sum(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}
