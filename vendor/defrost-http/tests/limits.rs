//! Tests of the limits and robustness fixes of this patched copy (see PATCHES.md).
//! Real sockets on 127.0.0.1 only; every test is bounded in time.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use defrost_http::{Limits, Request, Response, Server};

/// Upper bound on any single client-side wait.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

fn start(limits: Limits, handler: fn(Request)) -> (Arc<Server>, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Arc::new(Server::from_listener_with_limits(listener, limits).unwrap());
    let s = server.clone();
    thread::spawn(move || {
        for rq in s.incoming_requests() {
            handler(rq);
        }
    });
    (server, addr)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    stream
}

fn hello(rq: Request) {
    let _ = rq.respond(Response::from_string("hello"));
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response (Content-Length, chunked or close-delimited body).
fn read_response<R: BufRead>(r: &mut R) -> io::Result<Resp> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    if line.is_empty() {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "no response"));
    }
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, line.clone()))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':').unwrap();
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    let mut resp = Resp {
        status,
        headers,
        body: Vec::new(),
    };
    if let Some(len) = resp.header("Content-Length") {
        let mut body = vec![0; len.parse().unwrap()];
        r.read_exact(&mut body)?;
        resp.body = body;
    } else if resp.header("Transfer-Encoding") == Some("chunked") {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim(), 16).unwrap();
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            resp.body.extend_from_slice(&chunk[..size]);
        }
    } else if status >= 200 && status != 204 && status != 304 {
        r.read_to_end(&mut resp.body)?;
    }
    Ok(resp)
}

/// Reads until the server closes the connection (EOF or reset); returns what was read.
fn read_until_closed<R: Read>(r: &mut R) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                return (out, false)
            }
            Err(_) => return (out, true),
        }
    }
}

fn get(addr: SocketAddr, path: &str) -> Resp {
    let mut s = connect(addr);
    write!(
        s,
        "GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        path
    )
    .unwrap();
    read_response(&mut BufReader::new(s)).unwrap()
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < CLIENT_TIMEOUT,
            "timed out waiting for {}",
            what
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Rejects large bodies without reading them.
fn reject_large(rq: Request) {
    if rq.body_length().is_some_and(|l| l > 1024 * 1024) {
        let _ = rq.respond(Response::from_string("too large").with_status_code(413));
    } else {
        let text = format!("ok {}", rq.url());
        let _ = rq.respond(Response::from_string(text));
    }
}

#[test]
fn huge_content_length_left_unread_closes_instead_of_draining() {
    let (server, addr) = start(Limits::default(), reject_large);
    for _ in 0..3 {
        let mut s = connect(addr);
        write!(
            s,
            "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 200000000000\r\n\r\n"
        )
        .unwrap();
        s.write_all(&[b'x'; 16 * 1024]).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let resp = read_response(&mut r).unwrap();
        assert_eq!(resp.status, 413);
        assert_eq!(resp.header("Connection"), Some("close"));
        let started = Instant::now();
        let (rest, closed) = read_until_closed(&mut r);
        assert!(
            closed && rest.is_empty(),
            "connection not closed: {:?}",
            rest
        );
        assert!(started.elapsed() < Duration::from_secs(3));
    }
    // the process is alive and the server still serves
    assert_eq!(get(addr, "/after").status, 200);
    wait_for("connections to close", || server.num_connections() == 0);
}

#[test]
fn small_unread_body_is_drained_and_connection_reused() {
    let (_server, addr) = start(Limits::default(), reject_large);
    let mut s = connect(addr);
    let body = vec![b'y'; 20 * 1024];
    write!(
        s,
        "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(&body).unwrap();
    write!(s, "GET /b HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    let first = read_response(&mut r).unwrap();
    assert_eq!((first.status, first.header("Connection")), (200, None));
    let second = read_response(&mut r).unwrap();
    assert_eq!(second.body, b"ok /b");
}

#[test]
fn unread_chunked_body_beyond_drain_limit_closes() {
    fn ignore_body(rq: Request) {
        let _ = rq.respond(Response::from_string("ignored"));
    }
    let limits = Limits {
        max_drain_bytes: 16 * 1024,
        ..Limits::default()
    };
    let (_server, addr) = start(limits, ignore_body);
    let s = connect(addr);
    let mut w = s.try_clone().unwrap();
    // keeps sending 1 KiB chunks for a while
    let writer = thread::spawn(move || {
        let _ = write!(
            w,
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        for _ in 0..200 {
            if write!(w, "400\r\n{}\r\n", "z".repeat(1024)).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(2));
        }
    });
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r).unwrap();
    assert_eq!(resp.status, 200);
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut r);
    assert!(closed, "connection should be closed, not drained forever");
    assert!(started.elapsed() < Duration::from_secs(3));
    let _ = writer.join();
}

#[test]
fn header_bigger_than_limit_gets_431() {
    let (_server, addr) = start(Limits::default(), hello);
    let mut s = connect(addr);
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r).unwrap();
    assert_eq!(resp.status, 431);
    assert_eq!(resp.header("Connection"), Some("close"));
    assert!(read_until_closed(&mut r).1);

    // many headers adding up beyond the limit
    let mut s = connect(addr);
    let mut head = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..400 {
        head.push_str(&format!("X-H{}: {}\r\n", i, "b".repeat(40)));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    assert_eq!(read_response(&mut BufReader::new(s)).unwrap().status, 431);

    // just under the limit is fine
    let mut s = connect(addr);
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(15 * 1024)
    )
    .unwrap();
    assert_eq!(read_response(&mut BufReader::new(s)).unwrap().status, 200);
}

#[test]
fn url_longer_than_limit_gets_414() {
    let (_server, addr) = start(Limits::default(), hello);
    let mut s = connect(addr);
    write!(
        s,
        "GET /{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "u".repeat(9 * 1024)
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r).unwrap();
    assert_eq!(resp.status, 414);
    assert!(read_until_closed(&mut r).1);

    let ok = get(addr, &format!("/{}", "u".repeat(7 * 1024)));
    assert_eq!(ok.status, 200);
}

#[test]
fn connections_beyond_limit_get_quick_503() {
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let (server, addr) = start(limits, hello);
    let idle1 = connect(addr);
    let idle2 = connect(addr);
    wait_for("two connections", || server.num_connections() == 2);

    for _ in 0..3 {
        let started = Instant::now();
        let mut s = connect(addr);
        let _ = write!(s, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let (data, closed) = read_until_closed(&mut s);
        assert!(closed);
        assert!(started.elapsed() < Duration::from_secs(1), "503 was slow");
        let text = String::from_utf8_lossy(&data);
        assert!(text.starts_with("HTTP/1.1 503"), "{}", text);
        assert!(text.contains("Retry-After: 1\r\n"), "{}", text);
        assert!(text.contains("Connection: close\r\n"), "{}", text);
    }
    assert_eq!(server.num_connections(), 2);

    drop(idle1);
    drop(idle2);
    wait_for("connections to close", || server.num_connections() == 0);
    assert_eq!(get(addr, "/").status, 200);
}

#[test]
fn slowloris_header_gets_408_and_close() {
    let limits = Limits {
        header_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let (_server, addr) = start(limits, hello);
    let s = connect(addr);
    let mut w = s.try_clone().unwrap();
    let started = Instant::now();
    let writer = thread::spawn(move || {
        let _ = w.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ");
        for _ in 0..25 {
            thread::sleep(Duration::from_millis(200));
            if w.write_all(b"a").is_err() {
                return;
            }
        }
    });
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r).unwrap();
    let answered = started.elapsed();
    assert_eq!(resp.status, 408);
    assert!(
        answered >= Duration::from_millis(900) && answered < Duration::from_millis(2500),
        "{:?}",
        answered
    );
    assert!(read_until_closed(&mut r).1);
    assert!(started.elapsed() < Duration::from_secs(4));
    let _ = writer.join();
}

#[test]
fn silent_new_connection_closed_after_header_timeout() {
    let limits = Limits {
        header_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let (_server, addr) = start(limits, hello);
    let mut s = connect(addr);
    let started = Instant::now();
    let (data, closed) = read_until_closed(&mut s);
    assert!(closed && data.is_empty());
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn idle_keep_alive_connection_closed_after_timeout() {
    let limits = Limits {
        keep_alive_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let (server, addr) = start(limits, hello);
    let mut s = connect(addr);
    write!(s, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    assert_eq!(read_response(&mut r).unwrap().body, b"hello");

    // still usable within the timeout
    thread::sleep(Duration::from_millis(200));
    write!(s, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut r).unwrap().body, b"hello");

    let idle_from = Instant::now();
    let (data, closed) = read_until_closed(&mut r);
    let idle = idle_from.elapsed();
    assert!(closed && data.is_empty());
    assert!(
        idle >= Duration::from_millis(400) && idle < Duration::from_secs(2),
        "{:?}",
        idle
    );
    wait_for("connections to close", || server.num_connections() == 0);
}

#[test]
fn keep_alive_timeout_counts_from_end_of_slow_response() {
    fn slow(rq: Request) {
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(800));
            let _ = rq.respond(Response::from_string("slow"));
        });
    }
    let limits = Limits {
        keep_alive_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let (_server, addr) = start(limits, slow);
    let mut s = connect(addr);
    write!(s, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    assert_eq!(read_response(&mut r).unwrap().body, b"slow");
    // the connection was not closed while the handler was busy, and is still usable
    write!(s, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut r).unwrap().body, b"slow");
}

#[test]
fn known_length_response_is_not_chunked() {
    fn big(rq: Request) {
        let data = vec![b'k'; 1024 * 1024];
        let len = data.len();
        let resp = if rq.url() == "/threshold" {
            Response::new(200.into(), vec![], &data[..], Some(len), None)
                .with_chunked_threshold(1024)
        } else {
            Response::new(200.into(), vec![], &data[..], Some(len), None)
        };
        let _ = rq.respond(resp);
    }
    let (_server, addr) = start(Limits::default(), big);
    let resp = get(addr, "/");
    assert_eq!(resp.header("Content-Length"), Some("1048576"));
    assert_eq!(resp.header("Transfer-Encoding"), None);
    assert_eq!(resp.body.len(), 1024 * 1024);
    assert!(resp.body.iter().all(|&b| b == b'k'));

    // an explicit threshold still works
    let resp = get(addr, "/threshold");
    assert_eq!(resp.header("Transfer-Encoding"), Some("chunked"));
    assert_eq!(resp.body.len(), 1024 * 1024);

    // and so does a server-wide one
    let limits = Limits {
        chunked_threshold: Some(4096),
        ..Limits::default()
    };
    let (_server, addr) = start(limits, big);
    let resp = get(addr, "/");
    assert_eq!(resp.header("Transfer-Encoding"), Some("chunked"));
    assert_eq!(resp.body.len(), 1024 * 1024);
}

#[test]
fn a_304_of_unknown_length_announces_no_body() {
    fn not_modified(rq: Request) {
        let _ = if rq.url() == "/304" {
            rq.respond(Response::new(304.into(), vec![], io::empty(), None, None))
        } else {
            rq.respond(Response::from_string("hello"))
        };
    }
    let (_server, addr) = start(Limits::default(), not_modified);
    let mut stream = connect(addr);
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    stream
        .write_all(b"GET /304 HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let first = read_response(&mut reader).unwrap();
    assert_eq!(first.status, 304);
    assert_eq!(first.header("Transfer-Encoding"), None, "{first:?}");
    assert_eq!(first.header("Content-Length"), None, "{first:?}");
    let second = read_response(&mut reader).unwrap();
    assert_eq!((second.status, second.body), (200, b"hello".to_vec()));
}

#[test]
fn body_read_times_out() {
    fn read_body(mut rq: Request) {
        let started = Instant::now();
        let mut body = Vec::new();
        let res = rq.as_reader().read_to_end(&mut body);
        let text = format!(
            "{:?} {} {}",
            res.map_err(|e| e.kind()),
            body.len(),
            started.elapsed().as_millis()
        );
        let _ = rq.respond(Response::from_string(text));
    }
    let limits = Limits {
        read_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let (_server, addr) = start(limits, read_body);
    let mut s = connect(addr);
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
    )
    .unwrap();
    s.write_all(&[b'p'; 3000]).unwrap();
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r).unwrap();
    let text = String::from_utf8(resp.body.clone()).unwrap();
    let parts: Vec<&str> = text.split(' ').collect();
    assert_eq!(parts[0], "Err(TimedOut)", "{}", text);
    assert_eq!(parts[1], "3000");
    let ms: u64 = parts[2].parse().unwrap();
    assert!((400..2000).contains(&ms), "{}", text);
    // the rest of the body is too large to drain: the connection is closed
    assert_eq!(resp.header("Connection"), Some("close"));
    assert!(read_until_closed(&mut r).1);
}

#[test]
fn write_to_stalled_client_times_out() {
    use std::sync::mpsc;
    use std::sync::Mutex;
    type Outcome = (io::Result<()>, Duration);
    static RESULT: Mutex<Option<mpsc::Sender<Outcome>>> = Mutex::new(None);
    fn huge(rq: Request) {
        let started = Instant::now();
        // far more than loopback's socket buffers hold, small enough to fill at once on a
        // loaded machine
        let data = vec![b'w'; 64 * 1024 * 1024];
        let res = rq.respond(Response::from_data(data));
        if let Some(tx) = RESULT.lock().unwrap().as_ref() {
            let _ = tx.send((res, started.elapsed()));
        }
    }
    let (tx, rx) = mpsc::channel();
    *RESULT.lock().unwrap() = Some(tx);
    let limits = Limits {
        write_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let (server, addr) = start(limits, huge);
    let mut s = connect(addr);
    write!(s, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    // never read: the server's writes stall once the socket buffers are full
    // a stalled write must end with TimedOut rather than hang; how soon is the write timeout's
    // business, bounded here only loosely so that a loaded machine does not fail the test
    let (res, took) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("respond() did not return");
    let err = res.expect_err("writing 64 MiB to a client that does not read");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{:?}", err);
    assert!(took < Duration::from_secs(30), "{:?}", took);
    drop(s);
    wait_for("connections to close", || server.num_connections() == 0);
}

/// Yields "a", then blocks 500 ms, then yields "b".
struct SlowStream {
    step: u8,
}

impl Read for SlowStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.step += 1;
        match self.step {
            1 => {
                buf[0] = b'a';
                Ok(1)
            }
            2 => {
                thread::sleep(Duration::from_millis(500));
                buf[0] = b'b';
                Ok(1)
            }
            _ => Ok(0),
        }
    }
}

#[test]
fn streaming_body_chunks_are_sent_as_they_come() {
    fn stream(rq: Request) {
        let _ = rq.respond(Response::new(
            200.into(),
            vec![],
            SlowStream { step: 0 },
            None,
            None,
        ));
    }
    let (_server, addr) = start(Limits::default(), stream);
    let mut s = connect(addr);
    let started = Instant::now();
    write!(s, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();

    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    let mut saw_a = None;
    let mut saw_b = None;
    while saw_b.is_none() {
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "connection closed early: {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen);
        if saw_a.is_none() && text.contains("\r\n\r\n1\r\na\r\n") {
            saw_a = Some(started.elapsed());
        }
        if text.contains("1\r\nb\r\n") {
            saw_b = Some(started.elapsed());
        }
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("Transfer-Encoding: chunked"), "{}", text);
    let (a, b) = (saw_a.expect("a before b"), saw_b.unwrap());
    assert!(
        a < Duration::from_millis(300),
        "first chunk held back: {:?}",
        a
    );
    assert!(
        b >= a + Duration::from_millis(400),
        "a at {:?}, b at {:?}",
        a,
        b
    );
}

#[test]
fn http10_unknown_length_is_streamed_and_closed() {
    fn stream(rq: Request) {
        let _ = rq.respond(Response::new(
            200.into(),
            vec![],
            SlowStream { step: 0 },
            None,
            None,
        ));
    }
    let (_server, addr) = start(Limits::default(), stream);
    let mut s = connect(addr);
    write!(s, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
    let resp = read_response(&mut BufReader::new(s)).unwrap();
    assert_eq!(resp.header("Connection"), Some("close"));
    assert_eq!(resp.body, b"ab");
}

#[test]
fn pipelined_requests_answered_in_order() {
    fn echo(mut rq: Request) {
        let mut body = String::new();
        rq.as_reader().read_to_string(&mut body).unwrap();
        let text = format!("{}:{}", rq.url(), body);
        // the first response is the slowest
        let delay = if rq.url() == "/1" { 300 } else { 0 };
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(delay));
            let _ = rq.respond(Response::from_string(text));
        });
    }
    let (_server, addr) = start(Limits::default(), echo);
    let mut s = connect(addr);
    let big = "x".repeat(5000);
    let pipelined = format!(
        "GET /1 HTTP/1.1\r\nHost: x\r\n\r\n\
         POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
         POST /3 HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{}\
         POST /4 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
         GET /5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        big.len(),
        big
    );
    s.write_all(pipelined.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let expected = [
        "/1:".to_string(),
        "/2:hello".to_string(),
        format!("/3:{}", big),
        "/4:abc".to_string(),
        "/5:".to_string(),
    ];
    for want in expected.iter() {
        let resp = read_response(&mut r).unwrap();
        assert_eq!(String::from_utf8_lossy(&resp.body), *want);
    }
    assert!(read_until_closed(&mut r).1);
}

#[test]
fn malformed_requests_get_400_and_server_survives() {
    let (_server, addr) = start(Limits::default(), hello);
    let cases: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding:\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 12abc\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n",
        b"GET /\xff\xfe HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-\xff: 1\r\n\r\n",
        b"\x00\x01\x02 garbage\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\nX-A: 1\r2\r\n\r\n",
        b"GET / HTTP/1.1\r\n: empty name\r\n\r\n",
        b"GET /\x01 HTTP/1.1\r\n\r\n",
    ];
    for case in cases {
        let mut s = connect(addr);
        s.write_all(case).unwrap();
        let resp = read_response(&mut BufReader::new(s)).unwrap();
        assert_eq!(resp.status, 400, "{:?}", String::from_utf8_lossy(case));
    }
    let mut s = connect(addr);
    s.write_all(b"GET / HTTP/2.0\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut BufReader::new(s)).unwrap().status, 505);
    let mut s = connect(addr);
    s.write_all(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut BufReader::new(s)).unwrap().status, 501);

    // a truncated chunked body is an error for the handler, not a short body
    fn read_body(mut rq: Request) {
        let mut body = Vec::new();
        let res = rq.as_reader().read_to_end(&mut body);
        let _ = rq.respond(Response::from_string(format!("{}", res.is_ok())));
    }
    let (_server, addr) = start(Limits::default(), read_body);
    let mut s = connect(addr);
    s.write_all(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
        .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let resp = read_response(&mut BufReader::new(s)).unwrap();
    assert_eq!(resp.body, b"false");

    assert_eq!(get(addr, "/").status, 200);
}

#[test]
fn expect_continue_unanswered_closes_connection() {
    let (_server, addr) = start(Limits::default(), reject_large);
    let mut s = connect(addr);
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 100\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("Connection"), Some("close"));
    assert!(read_until_closed(&mut r).1);
}

/// Environment variable telling the test binary it runs as a child of another test.
const CHILD: &str = "TINY_HTTP_TEST_CHILD";

/// Runs the ignored test `name` alone in a child process (with a file descriptor limit if
/// given) and returns its output; fails if the child fails.
fn run_child(name: &str, fd_limit: Option<u32>) -> String {
    let exe = std::env::current_exe().unwrap();
    let ulimit = fd_limit.map_or(String::new(), |n| format!("ulimit -n {} && ", n));
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{}exec \"$0\" {} --exact --ignored --nocapture --test-threads=1",
            ulimit, name
        ))
        .arg(exe)
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child failed:\n{}\n{}",
        stdout,
        stderr
    );
    stdout
}

#[test]
fn accept_errors_do_not_stop_the_server() {
    if cfg!(target_os = "linux") {
        let out = run_child("emfile_child", Some(64));
        assert!(out.contains("accept errors: "), "{}", out);
    }
}

#[test]
fn threads_are_bounded_by_max_connections() {
    if cfg!(target_os = "linux") {
        let out = run_child("thread_bound_child", None);
        assert!(out.contains("extra threads: "), "{}", out);
        println!(
            "{}",
            out.lines()
                .find(|l| l.contains("extra threads"))
                .unwrap_or("")
        );
    }
}

fn threads_now() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

#[test]
#[ignore = "run by threads_are_bounded_by_max_connections in a child process"]
fn thread_bound_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let limits = Limits {
        max_connections: 32,
        header_timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    let (server, addr) = start(limits, hello);
    assert_eq!(get(addr, "/").status, 200);
    wait_for("warm-up connection to close", || {
        server.num_connections() == 0
    });
    let before = threads_now();

    // 200 idle connections: 32 are kept, the others get a 503 at once
    let kept: Vec<TcpStream> = (0..32).map(|_| connect(addr)).collect();
    wait_for("32 connections", || server.num_connections() == 32);
    let mut rejected = 0;
    for _ in 0..168 {
        let mut s = connect(addr);
        let (data, closed) = read_until_closed(&mut s);
        assert!(closed && data.starts_with(b"HTTP/1.1 503"));
        rejected += 1;
    }
    assert_eq!(kept.len(), 32);
    assert_eq!(server.num_connections(), 32);
    let extra = threads_now() - before;
    println!("extra threads: {} ({} rejected)", extra, rejected);
    assert!(extra <= 32, "{} threads for 32 connections", extra);

    // the idle connections are closed by the header timeout, then the server serves again
    wait_for("idle connections to time out", || {
        server.num_connections() == 0
    });
    assert_eq!(get(addr, "/").status, 200);
}

#[test]
fn idle_keep_alive_connections_hold_no_threads() {
    if cfg!(target_os = "linux") {
        let out = run_child("idle_threads_child", None);
        assert!(out.contains("extra threads: "), "{}", out);
    }
}

#[test]
#[ignore = "run by idle_keep_alive_connections_hold_no_threads in a child process"]
fn idle_threads_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    const CONNECTIONS: usize = 200;
    let (_server, addr) = start(Limits::default(), hello);
    assert_eq!(get(addr, "/").status, 200);
    let before = threads_now();

    // each connection gets an answer, then waits, kept alive, for its next request
    let mut clients: Vec<(TcpStream, BufReader<TcpStream>)> = (0..CONNECTIONS)
        .map(|_| {
            let mut s = connect(addr);
            write!(s, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            assert_eq!(read_response(&mut r).unwrap().body, b"hello");
            (s, r)
        })
        .collect();
    let extra = threads_now().saturating_sub(before);
    println!(
        "extra threads: {} for {} idle connections",
        extra, CONNECTIONS
    );
    assert!(
        extra <= 8,
        "{} threads for {} idle connections",
        extra,
        CONNECTIONS
    );

    // and every one of them is still served, by the thread that takes requests
    for (s, r) in clients.iter_mut() {
        write!(s, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(read_response(r).unwrap().body, b"hello");
    }
}

/// Counts the log records about accept errors.
struct AcceptErrorCounter;

static ACCEPT_ERRORS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl log::Log for AcceptErrorCounter {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        if format!("{}", record.args()).contains("Error accepting new client") {
            ACCEPT_ERRORS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    fn flush(&self) {}
}

static LOGGER: AcceptErrorCounter = AcceptErrorCounter;

#[test]
#[ignore = "run by accept_errors_do_not_stop_the_server in a child process"]
fn emfile_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    log::set_logger(&LOGGER).unwrap();
    log::set_max_level(log::LevelFilter::Error);
    use std::sync::atomic::Ordering::SeqCst;

    let (_server, addr) = start(Limits::default(), hello);
    // Use up the descriptors with files, then give one back for a client socket: the server
    // has none left to accept the connection with. (Racing the server for the last ones with
    // connections, as this test once did, could leave the server the winner, and a client
    // that could not connect to provoke anything.) The server opens descriptors only by
    // accepting, so nothing takes the one given back before the client does.
    let mut files = Vec::new();
    let exhausted = loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => files.push(f),
            Err(e) => break e,
        }
    };
    assert_eq!(
        exhausted.raw_os_error(),
        Some(libc::EMFILE),
        "{}",
        exhausted
    );
    files.pop();
    let waiting = TcpStream::connect(addr).unwrap();
    let started = Instant::now();
    while ACCEPT_ERRORS.load(SeqCst) == 0 && started.elapsed() < CLIENT_TIMEOUT {
        thread::sleep(Duration::from_millis(10));
    }
    let errors = ACCEPT_ERRORS.load(SeqCst);
    println!("accept errors: {}", errors);
    assert!(errors > 0, "could not provoke an accept error");
    // keep the server starved a little longer, then give the descriptors back
    thread::sleep(Duration::from_millis(300));
    drop(files);
    drop(waiting);

    // the accept loop survived and serves again
    let resp = (0..50)
        .find_map(|_| {
            let mut s = TcpStream::connect(addr).ok()?;
            s.set_read_timeout(Some(CLIENT_TIMEOUT)).ok()?;
            write!(s, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
            let r = read_response(&mut BufReader::new(s)).ok();
            if r.is_none() {
                thread::sleep(Duration::from_millis(50));
            }
            r
        })
        .expect("server no longer serves after accept errors");
    assert_eq!(resp.body, b"hello");
}

/// Upgrades a bodyless upgrade request and echoes the stream; answers any other request with
/// the body it read.
fn upgrade_or_echo(mut rq: Request) {
    let has = |name: &'static str| rq.headers().iter().any(|h| h.field.equiv(name));
    if has("Upgrade") && !has("Content-Length") && !has("Transfer-Encoding") {
        thread::spawn(move || {
            let mut stream = rq.upgrade("echo", Response::empty(101));
            let mut buf = [0u8; 64];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 || stream.write_all(&buf[..n]).is_err() || stream.flush().is_err() {
                    break;
                }
            }
        });
        return;
    }
    let mut body = Vec::new();
    match rq.as_reader().read_to_end(&mut body) {
        Ok(_) => {
            let _ = rq.respond(Response::from_data(body));
        }
        Err(_) => {
            let _ = rq.respond(Response::empty(400));
        }
    }
}

#[test]
fn an_upgrade_request_with_a_body_is_an_ordinary_request() {
    let (_server, addr) = start(Limits::default(), upgrade_or_echo);
    let mut s = connect(addr);
    s.write_all(
        b"POST /u HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\
          Content-Length: 5\r\n\r\nhelloAND-MORE-THAT-IS-NOT-THE-BODY",
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.body, b"hello",
        "the body is exactly the declared length"
    );
    assert_eq!(resp.header("Connection"), Some("close"));
    assert!(read_until_closed(&mut r).1);

    // chunked: decoded, not the raw framing
    let mut s = connect(addr);
    s.write_all(
        b"POST /u HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\
          Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    )
    .unwrap();
    let resp = read_response(&mut BufReader::new(s)).unwrap();
    assert_eq!(resp.body, b"abcde");
}

#[test]
fn a_truncated_body_is_answered_400_even_on_an_upgrade_request() {
    let (_server, addr) = start(Limits::default(), upgrade_or_echo);
    for upgrade in ["", "Connection: upgrade\r\nUpgrade: echo\r\n"] {
        let mut s = connect(addr);
        write!(
            s,
            "POST /t HTTP/1.1\r\nHost: x\r\n{upgrade}Content-Length: 100\r\n\r\n0123456789"
        )
        .unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let resp = read_response(&mut BufReader::new(s)).unwrap();
        assert_eq!(resp.status, 400, "{upgrade:?}");
    }
}

#[test]
fn a_bodyless_upgrade_request_hands_over_the_stream() {
    let (_server, addr) = start(Limits::default(), upgrade_or_echo);
    let mut s = connect(addr);
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let resp = read_response(&mut r).unwrap();
    assert_eq!(resp.status, 101);
    assert_eq!(resp.header("Upgrade"), Some("echo"));
    s.write_all(b"ping").unwrap();
    let mut echoed = [0u8; 4];
    r.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"ping");
}

#[test]
fn pipelined_requests_are_handed_out_one_at_a_time() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NOW: AtomicUsize = AtomicUsize::new(0);
    static MOST: AtomicUsize = AtomicUsize::new(0);
    fn slow(rq: Request) {
        let now = NOW.fetch_add(1, Ordering::SeqCst) + 1;
        MOST.fetch_max(now, Ordering::SeqCst);
        // answered on another thread, as a server with a pool of workers would
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            NOW.fetch_sub(1, Ordering::SeqCst);
            let url = rq.url().to_owned();
            let _ = rq.respond(Response::from_string(url));
        });
    }
    let (_server, addr) = start(Limits::default(), slow);
    let mut s = connect(addr);
    let mut pipeline = String::new();
    for i in 0..5 {
        pipeline.push_str(&format!(
            "POST /{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab"
        ));
    }
    s.write_all(pipeline.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    for i in 0..5 {
        let resp = read_response(&mut r).unwrap();
        assert_eq!(resp.body, format!("/{i}").as_bytes());
    }
    assert_eq!(
        MOST.load(Ordering::SeqCst),
        1,
        "requests handed out at once"
    );
}

#[test]
fn the_longest_idle_connection_gives_way_at_the_limit() {
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let (_server, addr) = start(limits, hello);
    let ask = |r: &mut BufReader<TcpStream>| {
        r.get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        read_response(r).unwrap()
    };
    let mut oldest = BufReader::new(connect(addr));
    assert_eq!(ask(&mut oldest).status, 200);
    thread::sleep(Duration::from_millis(20));
    let mut younger = BufReader::new(connect(addr));
    assert_eq!(ask(&mut younger).status, 200);

    let mut newcomer = BufReader::new(connect(addr));
    assert_eq!(ask(&mut newcomer).status, 200);
    let (rest, closed) = read_until_closed(&mut oldest);
    assert!(
        closed && rest.is_empty(),
        "the oldest idle connection was not closed quietly"
    );
    assert_eq!(
        ask(&mut younger).status,
        200,
        "the younger one was closed too"
    );
}

#[test]
fn header_bytes_beyond_ascii_are_sent_exactly_and_in_order() {
    fn answer(rq: Request) {
        let mut response = Response::from_string("ok");
        response.add_header_bytes(b"X-A", b"1").unwrap();
        response
            .add_header_bytes(b"Content-Disposition", "filename=\"na\u{ef}ve\"".as_bytes())
            .unwrap();
        response.add_header_bytes(b"X-B", b"caf\xe9").unwrap();
        // what would split the head is refused
        assert!(response
            .add_header_bytes(b"X-Bad", b"a\r\nX-Injected: 1")
            .is_err());
        assert!(response.add_header_bytes(b"X-Bad", b"a\0b").is_err());
        assert!(response.add_header_bytes(b"Bad Name", b"x").is_err());
        // headers that cannot be changed stay so, ASCII or not
        response.add_header_bytes(b"Connection", b"\xff").unwrap();
        let _ = rq.respond(response);
    }
    let (_server, addr) = start(Limits::default(), answer);
    let mut s = connect(addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (raw, _) = read_until_closed(&mut s);
    let wanted: &[u8] =
        b"X-A: 1\r\nContent-Disposition: filename=\"na\xc3\xafve\"\r\nX-B: caf\xe9\r\n";
    assert!(
        raw.windows(wanted.len()).any(|w| w == wanted),
        "{:?}",
        String::from_utf8_lossy(&raw)
    );
    assert!(!raw.windows(11).any(|w| w == b"X-Injected:"));
    assert!(!raw.windows(6).any(|w| w == b"\xff\r\n"));
}

// Request heads arriving in pieces wait in the idle set with what came of them, not on a
// thread.

/// Answers with the request's target, its number of headers and its `X-Slow` header.
fn describe_head(rq: Request) {
    let slow = rq
        .headers()
        .iter()
        .find(|h| h.field.equiv("X-Slow"))
        .map_or(String::new(), |h| h.value.to_string());
    let body = format!("{} {} {}", rq.url(), rq.headers().len(), slow);
    let _ = rq.respond(Response::from_string(body));
}

/// Writes `data` in pieces of `piece` bytes, pausing between them.
fn trickle(s: &mut TcpStream, data: &[u8], piece: usize) {
    for part in data.chunks(piece) {
        s.write_all(part).unwrap();
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn slow_heads_hold_no_threads() {
    if cfg!(target_os = "linux") {
        let out = run_child("slow_heads_child", None);
        assert!(out.contains("extra threads: "), "{}", out);
    }
}

#[test]
#[ignore = "run by slow_heads_hold_no_threads in a child process"]
fn slow_heads_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    const CONNECTIONS: usize = 200;
    let (server, addr) = start(Limits::default(), describe_head);
    assert_eq!(get(addr, "/").status, 200);
    wait_for("the warm-up connection to close", || {
        server.num_connections() == 0
    });
    let before = threads_now();

    // A third of the connections are answered once first, so that their second head is the
    // slow one; another third send a body read on a connection thread, with the start of
    // their next head right behind it, so that the thread finds that head unfinished.
    let mut clients: Vec<BufReader<TcpStream>> = (0..CONNECTIONS)
        .map(|i| {
            let mut r = BufReader::new(connect(addr));
            let slow = format!("GET /{} HTTP/1.1\r\nHost: x\r\nX-Slow: ", i);
            match i % 3 {
                1 => {
                    r.get_mut()
                        .write_all(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
                        .unwrap();
                    assert_eq!(read_response(&mut r).unwrap().body, b"/first 1 ");
                    r.get_mut().write_all(slow.as_bytes()).unwrap();
                }
                2 => {
                    let body = "b".repeat(4096);
                    write!(
                        r.get_mut(),
                        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{}{}",
                        body.len(),
                        body,
                        slow
                    )
                    .unwrap();
                    assert_eq!(read_response(&mut r).unwrap().body, b"/upload 2 ");
                }
                _ => r.get_mut().write_all(slow.as_bytes()).unwrap(),
            }
            r
        })
        .collect();
    // a byte now and then on each
    for _ in 0..3 {
        for r in clients.iter_mut() {
            r.get_mut().write_all(b"a").unwrap();
        }
        thread::sleep(Duration::from_millis(50));
    }
    wait_for("every partial head to be read", || {
        server.connections_in_use() == CONNECTIONS
    });
    // meanwhile other clients are answered
    assert_eq!(get(addr, "/plain").body, b"/plain 2 ");
    let extra = threads_now().saturating_sub(before);
    println!("extra threads: {} for {} slow heads", extra, CONNECTIONS);
    assert!(
        extra <= 8,
        "{} threads for {} slow heads",
        extra,
        CONNECTIONS
    );

    // each head completes, and is read whole
    for (i, r) in clients.iter_mut().enumerate() {
        r.get_mut().write_all(b"b\r\nX-Last: 1\r\n\r\n").unwrap();
        let resp = read_response(r).unwrap();
        assert_eq!(resp.body, format!("/{} 3 aaab", i).as_bytes());
    }
}

#[test]
fn a_head_in_pieces_is_read_whole_beyond_the_read_buffer() {
    let (_server, addr) = start(Limits::default(), describe_head);
    let mut s = connect(addr);
    let mut head = b"GET /pieces HTTP/1.1\r\nHost: x\r\n".to_vec();
    // 12 KiB of headers: more than the 8 KiB read buffer, well within max_header_bytes
    for i in 0..120 {
        head.extend_from_slice(format!("X-Filler-{:03}: {}\r\n", i, "f".repeat(80)).as_bytes());
    }
    head.extend_from_slice(b"X-Slow: yes\r\n\r\n");
    trickle(&mut s, &head, 700);
    let resp = read_response(&mut BufReader::new(s)).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"/pieces 122 yes");
}

#[test]
fn limits_apply_to_heads_in_pieces() {
    let limits = Limits {
        max_header_bytes: 4096,
        max_url_bytes: 1024,
        ..Limits::default()
    };
    let (_server, addr) = start(limits, describe_head);

    let mut s = connect(addr);
    let mut head = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    head.extend_from_slice(format!("X-Big: {}\r\n\r\n", "b".repeat(5000)).as_bytes());
    // the server stops reading once the limit is passed: later pieces may find it closed
    for part in head.chunks(500) {
        if s.write_all(part).is_err() {
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(read_response(&mut BufReader::new(s)).unwrap().status, 431);

    let mut s = connect(addr);
    let target = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "u".repeat(2000));
    for part in target.as_bytes().chunks(300) {
        if s.write_all(part).is_err() {
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(read_response(&mut BufReader::new(s)).unwrap().status, 414);
}

#[test]
fn a_slow_head_after_a_pipelined_request_waits_for_its_rest() {
    let limits = Limits {
        header_timeout: Duration::from_millis(800),
        ..Limits::default()
    };
    let (_server, addr) = start(limits, describe_head);
    let mut r = BufReader::new(connect(addr));
    r.get_mut()
        .write_all(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nX-Sl")
        .unwrap();
    assert_eq!(read_response(&mut r).unwrap().body, b"/one 1 ");
    thread::sleep(Duration::from_millis(100));
    r.get_mut().write_all(b"ow: 2\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut r).unwrap().body, b"/two 1 2");

    // a third head that never ends is answered 408 at the header timeout, then closed
    r.get_mut()
        .write_all(b"GET /three HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    assert_eq!(read_response(&mut r).unwrap().status, 408);
    assert!(read_until_closed(&mut r).1);
}

#[test]
fn a_connection_sending_its_head_does_not_give_way_at_the_limit() {
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let (server, addr) = start(limits, describe_head);
    let ask = |r: &mut BufReader<TcpStream>| {
        r.get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        read_response(r).unwrap()
    };
    // the oldest idle connection starts its next request, which arrives in pieces
    let mut sending = BufReader::new(connect(addr));
    assert_eq!(ask(&mut sending).status, 200);
    thread::sleep(Duration::from_millis(20));
    let mut idle = BufReader::new(connect(addr));
    assert_eq!(ask(&mut idle).status, 200);
    sending
        .get_mut()
        .write_all(b"GET /sent HTTP/1.1\r\nX-Slow: ")
        .unwrap();
    wait_for("the partial head to be read", || {
        server.connections_in_use() == 1
    });

    // a newcomer takes the place of the idle one, not of the one sending its head
    let mut newcomer = BufReader::new(connect(addr));
    assert_eq!(ask(&mut newcomer).status, 200);
    let (rest, closed) = read_until_closed(&mut idle);
    assert!(closed && rest.is_empty(), "the idle connection was kept");
    sending.get_mut().write_all(b"z\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut sending).unwrap().body, b"/sent 1 z");
}
