//! A server that stops accepting refuses new connections and keeps serving open ones.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use tiny_http::{Response, Server};

fn ask(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let mut byte = [0u8];
    while !answer.ends_with(b"\r\n\r\nok") {
        stream.read_exact(&mut byte).unwrap();
        answer.push(byte[0]);
    }
    String::from_utf8(answer).unwrap()
}

#[test]
fn open_connections_are_served_after_the_listener_closes() {
    let server = std::sync::Arc::new(Server::http("127.0.0.1:0").unwrap());
    let addr = server.server_addr().to_ip().unwrap();
    let serving = server.clone();
    thread::spawn(move || {
        for request in serving.incoming_requests() {
            let _ = request.respond(Response::from_string("ok"));
        }
    });
    let mut open = TcpStream::connect(addr).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(ask(&mut open).starts_with("HTTP/1.1 200"));

    server.stop_accepting();
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).is_ok() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert!(TcpStream::connect(addr).is_err(), "still accepting");
    assert!(
        ask(&mut open).starts_with("HTTP/1.1 200"),
        "the open connection is still served"
    );
}
