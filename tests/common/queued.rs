//! Asynchronous calls: a function that records what it gets, a callback receiver, and the
//! gateway started on a config file of its own.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::Duration;

use super::*;

pub fn queued_script() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/functions/queued.py")
        .display()
        .to_string()
}

/// A `[[function]]` running queued.py as `name`, recording calls in `dir/calls`, waiting for
/// `dir/gate` to exist when `gated`.
pub fn queued_function(name: &str, dir: &Path, gated: bool, extra: &str) -> String {
    let gate = if gated {
        format!(", GATE_FILE = \"{}\"", dir.join("gate").display())
    } else {
        String::new()
    };
    format!(
        "\n[[function]]\nname = \"{name}\"\ncommand = [\"python3\", \"{}\"]\n\
         env = {{ CALLS_FILE = \"{}\"{gate} }}\nreadiness_path = \"/healthz\"\n{extra}\n",
        queued_script(),
        dir.join("calls").display()
    )
}

/// Starts defrost with `config`, written to `dir/defrost.toml` (so a restart finds the same
/// store beside it).
pub fn start_in(dir: &TempDir, config: &str) -> Defrost {
    let config_path = dir.path().join("defrost.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_defrost"));
    cmd.arg("--config")
        .arg(&config_path)
        .arg("--listen")
        .arg("127.0.0.1:0");
    Defrost::spawn(cmd, &[], TempDir::new("async-gw"))
}

/// POST to `/async-function/{path}`, with extra headers.
pub fn post_async(gw: &Defrost, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut request = agent().post(gw.url(&format!("/async-function/{path}")));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    read_reply(request.send(body).unwrap())
}

/// The call ids the function has been called with (one line per attempt).
pub fn calls(dir: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(dir.join("calls"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(id, path)| (id.to_owned(), path.to_owned()))
        .collect()
}

pub fn wait_for(what: &str, limit: Duration, done: impl Fn() -> bool) {
    assert!(eventually(limit, done), "timed out waiting for {what}");
}

/// The function's async counters once its calls have settled: completed, failed, retried,
/// callback failures.
pub fn assert_counts(
    gw: &Defrost,
    function: &str,
    [completed, failed, retried, callbacks]: [f64; 4],
) {
    let series =
        |name: &str| format!("defrost_async_{name}{{function_name=\"{function}.default\"}}");
    let settled = |s: &Scrape| {
        s.value(&series("completed_total")) == Some(completed)
            && s.value(&series("failed_total")) == Some(failed)
    };
    gw.scrape_when(settled).assert_values(&[
        (&series("completed_total"), completed),
        (&series("failed_total"), failed),
        (&series("retried_total"), retried),
        (&series("callback_failures_total"), callbacks),
    ]);
}

/// A request the callback receiver got: its headers (lower-cased names) and body.
pub struct Received {
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// An HTTP server on loopback that answers 200 to each request and passes it on.
pub fn callback_receiver() -> (String, Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/done", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let tx = tx.clone();
            thread::spawn(move || {
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                loop {
                    let mut headers = BTreeMap::new();
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let Some((name, value)) = line.trim_end().split_once(':') else {
                            break;
                        };
                        headers.insert(name.to_ascii_lowercase(), value.trim().to_owned());
                    }
                    let length = headers
                        .get("content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let body = String::from_utf8_lossy(&body).into_owned();
                    let _ = tx.send(Received { headers, body });
                    if writer
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (url, rx)
}

pub fn callback(rx: &Receiver<Received>) -> Received {
    rx.recv_timeout(Duration::from_secs(30))
        .expect("a callback within 30 s")
}

/// Posts `count` calls to `rec/n/{n}` over `gateways` in turn, from `clients` at once; every
/// one must be answered 202. Their call ids.
pub fn accept_all(gateways: &[&Defrost], count: usize, clients: usize) -> Vec<String> {
    thread::scope(|s| {
        let running: Vec<_> = (0..clients)
            .map(|client| {
                s.spawn(move || {
                    (client..count)
                        .step_by(clients)
                        .map(|n| {
                            let gw = gateways[n % gateways.len()];
                            let reply = post_async(gw, &format!("rec/n/{n}"), &[], "payload");
                            assert_eq!(reply.status, 202, "call {n}: {}", reply.body);
                            reply.header("X-Call-Id").expect("X-Call-Id").to_owned()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        running
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect()
    })
}
