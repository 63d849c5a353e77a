//! A deliberately fast function for load tests: answers every request with a fixed body over
//! keep-alive connections, so that in a benchmark the gateway in front of it, not the function,
//! is what is measured.
//!
//! ```sh
//! cargo run --release --example upstream -- --port 9000
//! ```
//!
//! It listens on `--port`, else on `$PORT` (which defrost's process provider sets). Two knobs
//! make it a test subject for the cold-start and isolation benchmarks:
//! `--ready-after-ms T` sleeps T before listening (a function whose readiness takes a known
//! time), and `--delay-ms D` holds every answer D (a slow function).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

const BODY: &[u8] = b"hello from upstream\n";

struct Options {
    port: u16,
    ready_after: Duration,
    delay: Duration,
}

fn main() -> io::Result<()> {
    let options = parse_options().map_err(io::Error::other)?;
    thread::sleep(options.ready_after);
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, options.port))?;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let delay = options.delay;
        // One thread per connection: the load generators keep a few dozen connections open.
        let _ = thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || serve(stream, delay));
    }
    Ok(())
}

fn parse_options() -> Result<Options, String> {
    let mut port = std::env::var("PORT").ok();
    let mut ready_after = 0;
    let mut delay = 0;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--port" => port = Some(value),
            "--ready-after-ms" => ready_after = number(&flag, &value)?,
            "--delay-ms" => delay = number(&flag, &value)?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    let port = port.ok_or("give --port or set PORT")?;
    Ok(Options {
        port: port.parse().map_err(|_| format!("bad port {port:?}"))?,
        ready_after: Duration::from_millis(ready_after),
        delay: Duration::from_millis(delay),
    })
}

fn number(flag: &str, value: &str) -> Result<u64, String> {
    value
        .parse()
        .map_err(|_| format!("{flag}: {value:?} is not a number"))
}

/// Answers requests on one connection until the peer closes it or sends something unreadable.
fn serve(stream: TcpStream, delay: Duration) {
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut response = Vec::with_capacity(128);
    response.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ");
    response.extend_from_slice(BODY.len().to_string().as_bytes());
    response.extend_from_slice(b"\r\n\r\n");
    response.extend_from_slice(BODY);
    while let Ok(Some(body_length)) = read_head(&mut reader) {
        if io::copy(&mut (&mut reader).take(body_length), &mut io::sink()).is_err() {
            return;
        }
        if !delay.is_zero() {
            thread::sleep(delay);
        }
        if writer.write_all(&response).is_err() {
            return;
        }
    }
}

/// Reads one request head; returns its `Content-Length` (0 when absent), or `None` at the end
/// of the connection.
fn read_head(reader: &mut BufReader<TcpStream>) -> io::Result<Option<u64>> {
    let mut line = String::new();
    let mut length = 0;
    let mut first = true;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        if line == "\r\n" || line == "\n" {
            if first {
                continue;
            }
            return Ok(Some(length));
        }
        first = false;
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
}
