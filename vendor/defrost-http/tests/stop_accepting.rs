//! A server that stops accepting refuses new connections, closes the idle ones, and answers
//! the requests still coming on open ones, each with `Connection: close`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use defrost_http::{Response, Server};

/// Reads one `ok` answer; returns its head.
fn answer(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut byte = [0u8];
    while !answer.ends_with(b"\r\n\r\nok") {
        stream.read_exact(&mut byte).unwrap();
        answer.push(byte[0]);
    }
    String::from_utf8(answer).unwrap()
}

fn ask(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    answer(stream)
}

#[test]
fn stopping_closes_idle_connections_and_answers_the_rest_with_connection_close() {
    let server = std::sync::Arc::new(Server::http("127.0.0.1:0").unwrap());
    let addr = server.server_addr().to_ip().unwrap();
    let serving = server.clone();
    thread::spawn(move || {
        for request in serving.incoming_requests() {
            let _ = request.respond(Response::from_string("ok"));
        }
    });
    let connect = || {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream
    };
    let mut idle = connect();
    assert!(ask(&mut idle).starts_with("HTTP/1.1 200"));
    // a request whose head is still arriving when the server stops
    let mut arriving = connect();
    arriving
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n")
        .unwrap();
    thread::sleep(Duration::from_millis(100));

    server.stop_accepting();
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).is_ok() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert!(TcpStream::connect(addr).is_err(), "still accepting");
    // the head still arriving counts as a connection in use, though no thread waits for it
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.connections_in_use() != 1 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(server.connections_in_use(), 1);

    let mut byte = [0u8];
    assert_eq!(
        idle.read(&mut byte).unwrap(),
        0,
        "the idle connection stayed open"
    );

    arriving.write_all(b"\r\n").unwrap();
    let head = answer(&mut arriving).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{}", head);
    assert!(head.contains("connection: close"), "{}", head);
    assert_eq!(
        arriving.read(&mut byte).unwrap(),
        0,
        "not closed after the answer"
    );
}
