//! Runs the real `defrost` binary against real function processes, on loopback only.
#![allow(dead_code)]

pub mod nats_server;
pub mod queued;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A temporary folder removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "defrost-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The echo test function's path, for `command = ["python3", ECHO]`.
pub fn echo_script() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/functions/echo.py")
        .display()
        .to_string()
}

/// A `[[function]]` entry running the echo test function, ready when `/healthz` answers.
/// `env` is a TOML inline table's contents; `extra` more keys, one per line.
pub fn echo_function(name: &str, env: &str, extra: &str) -> String {
    format!(
        "\n[[function]]\nname = \"{name}\"\ncommand = [\"python3\", \"{}\"]\nenv = {{ {env} }}\nreadiness_path = \"/healthz\"\n{extra}\n",
        echo_script()
    )
}

/// GET with an `Authorization` header.
pub fn get_authorized(url: &str, authorization: &str) -> Reply {
    read_reply(
        agent()
            .get(url)
            .header("Authorization", authorization)
            .call()
            .unwrap(),
    )
}

/// A running `defrost` process with its log captured.
pub struct Defrost {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
    pub dir: TempDir,
}

impl Defrost {
    /// Writes `config` to a temp folder and starts defrost on an ephemeral port.
    pub fn start(config: &str) -> Defrost {
        Defrost::start_with(config, &[], &[])
    }

    pub fn start_with(config: &str, args: &[&str], env: &[(&str, &str)]) -> Defrost {
        let dir = TempDir::new("gw");
        let config_path = dir.path().join("defrost.toml");
        std::fs::write(
            &config_path,
            config.replace("$DIR", &dir.path().display().to_string()),
        )
        .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_defrost"));
        cmd.arg("--config")
            .arg(&config_path)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .args(args);
        Defrost::spawn(cmd, env, dir)
    }

    pub fn spawn(mut cmd: Command, env: &[(&str, &str)], dir: TempDir) -> Defrost {
        cmd.env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("defrost binary runs");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(addr.trim().to_string());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr.parse().unwrap(),
            Err(_) => {
                let _ = child.kill();
                panic!("defrost did not start: {:?}", log.lock().unwrap());
            }
        };
        Defrost {
            child,
            addr,
            log,
            dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Log lines containing `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Log lines containing `needle`, once at least `expected` have arrived (or 5 s passed):
    /// the log is read by another thread, so a line written just before a response may still
    /// be on its way.
    pub fn log_count_settled(&self, needle: &str, expected: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.log_count(needle) < expected && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(50));
        self.log_count(needle)
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        unsafe_kill(self.child.id(), "TERM");
        wait_exit(&mut self.child, Duration::from_secs(20))
    }
}

impl Drop for Defrost {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            unsafe_kill(self.child.id(), "TERM");
            if wait_exit(&mut self.child, Duration::from_secs(10)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// Sends a signal with the `kill` command (no libc in tests).
pub fn unsafe_kill(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

/// Child processes of `pid`, from /proc.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
                continue;
            };
            let after = stat.rsplit(')').next().unwrap_or("");
            let ppid = after
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(pid) {
                out.push(child);
            }
        }
    }
    out
}

/// A client that never treats a status as an error.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// A response read whole.
pub struct Reply {
    pub status: u16,
    pub headers: ureq::http::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub fn get(url: &str) -> Reply {
    let response = agent()
        .get(url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    read_reply(response)
}

pub fn read_reply(response: ureq::http::Response<ureq::Body>) -> Reply {
    let (parts, body) = response.into_parts();
    let mut text = String::new();
    body.into_reader().read_to_string(&mut text).unwrap();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: text,
    }
}

/// Sends raw bytes and returns the raw answer (until close or `limit`).
pub fn raw(addr: SocketAddr, request: &[u8], limit: Duration) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(limit)).unwrap();
    stream.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Lines in a file (0 when it does not exist yet).
pub fn lines_in(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// One Prometheus scrape, by series (`name{labels}` exactly as exposed).
pub struct Scrape(pub String);

impl Scrape {
    /// The value of a series, as a number; `None` when it is absent.
    pub fn value(&self, series: &str) -> Option<f64> {
        self.0.lines().find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
    }

    /// Like [`Scrape::value`], but the series must be there.
    pub fn get(&self, series: &str) -> f64 {
        self.value(series)
            .unwrap_or_else(|| panic!("no series {series} in:\n{}", self.0))
    }

    /// Checks every `(series, value)` at once, reporting all that differ.
    pub fn assert_values(&self, expected: &[(&str, f64)]) {
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(series, value)| self.value(series) != Some(*value))
            .map(|(series, value)| format!("{series}: {:?}, not {value}", self.value(series)))
            .collect();
        assert!(wrong.is_empty(), "{}\nin:\n{}", wrong.join("\n"), self.0);
    }

    /// Every series whose name starts with `prefix`, as `(series, value)`.
    pub fn starting_with(&self, prefix: &str) -> Vec<(String, f64)> {
        self.0
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect()
    }
}

impl Defrost {
    /// Scrapes `/metrics` until `settled` holds (calls are counted just after their answer is
    /// sent, so a scrape right after a reply may be a moment early), or 10 s have passed.
    pub fn scrape_when(&self, settled: impl Fn(&Scrape) -> bool) -> Scrape {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let reply = get(&self.url("/metrics"));
            assert_eq!(reply.status, 200, "{}", reply.body);
            let scrape = Scrape(reply.body);
            if settled(&scrape) || Instant::now() >= deadline {
                return scrape;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A gateway with the given `[gateway]` settings serving the echo function as `echo`.
pub fn echo_gateway(gateway_settings: &str) -> Defrost {
    Defrost::start(&format!(
        "[gateway]\n{gateway_settings}\n{}",
        echo_function("echo", "", "")
    ))
}

/// A gateway with the given `[gateway]` settings whose echo function, `echo`, records every
/// request it receives in `$DIR/requests` (see [`received`]).
pub fn recording_gateway(gateway_settings: &str) -> Defrost {
    Defrost::start(&format!(
        "[gateway]\n{gateway_settings}\n{}",
        echo_function("echo", "REQUESTS_FILE = \"$DIR/requests\"", "")
    ))
}

/// The paths the recording echo function has received, in arrival order.
pub fn received(gw: &Defrost) -> Vec<String> {
    std::fs::read_to_string(gw.dir.path().join("requests"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A numeric field of /proc/PID/status (`Threads:`, `VmRSS:` in KiB), 0 when unreadable.
pub fn proc_status(pid: u32, field: &str) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

pub fn threads_of(pid: u32) -> usize {
    proc_status(pid, "Threads:")
}

/// Descriptors the process has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// CPU time the process has used so far (user + system), in clock ticks, from /proc.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of stat(5), the 12th and 13th after the name
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// One response read off a raw connection, its head kept as the bytes that came.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// `(name, value)` in the order they came, values as raw bytes.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of a header, as text (lossy).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// True if the response says the server closes the connection after it.
    pub fn closes(&self) -> bool {
        self.header("Connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// A client connection speaking raw HTTP/1.1, for keep-alive and pipelining.
pub struct RawConn {
    pub reader: BufReader<TcpStream>,
}

impl RawConn {
    pub fn open(addr: SocketAddr, limit: Duration) -> RawConn {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(limit)).unwrap();
        stream.set_write_timeout(Some(limit)).unwrap();
        RawConn {
            reader: BufReader::new(stream),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.reader.get_mut().write_all(bytes)
    }

    /// Reads one response with a `Content-Length` (or empty) body. `Err` with
    /// `UnexpectedEof` when the connection was closed before a response began.
    pub fn response(&mut self) -> std::io::Result<RawResponse> {
        use std::io::{Error, ErrorKind};
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line)?;
        if line.is_empty() {
            return Err(Error::new(ErrorKind::UnexpectedEof, "closed, no response"));
        }
        let status = String::from_utf8_lossy(&line)
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::new(ErrorKind::InvalidData, "bad status line"))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.reader.read_until(b'\n', &mut line)?;
            let text = line.strip_suffix(b"\r\n").unwrap_or(&line);
            if text.is_empty() {
                break;
            }
            let colon = text
                .iter()
                .position(|&b| b == b':')
                .ok_or_else(|| Error::new(ErrorKind::InvalidData, "bad header line"))?;
            let name = String::from_utf8_lossy(&text[..colon]).into_owned();
            let value = text[colon + 1..].trim_ascii().to_vec();
            headers.push((name, value));
        }
        let mut response = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        let length: usize = response
            .header("Content-Length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        response.body.resize(length, 0);
        self.reader.read_exact(&mut response.body)?;
        Ok(response)
    }

    /// True once the server has closed the connection: a read gives end-of-file (or a reset)
    /// within the connection's read timeout, with nothing else before it.
    pub fn closed_by_server(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match self.reader.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

/// The fake faas-provider (`tests/functions/fake_provider.py`): a real HTTP server on
/// loopback, in a process of its own, without namespaces like faas-memory. Stopped on drop.
pub struct FakeProvider {
    pub child: Child,
    pub port: u16,
    pub dir: TempDir,
}

impl FakeProvider {
    /// Starts it with `env` (see the script for what each variable does).
    pub fn start(env: &[(&str, &str)]) -> FakeProvider {
        let dir = TempDir::new("fake-provider");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/functions/fake_provider.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script)
            .env("SCALE_LOG", dir.path().join("scales"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("python3 runs");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let port = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("fake provider did not start: {line:?}"));
        FakeProvider { child, port, dir }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The replicas of every scale call it has received, in order.
    pub fn scales(&self) -> Vec<u64> {
        std::fs::read_to_string(self.dir.path().join("scales"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Calls `/function/{name}` `calls` times, each answered 200, then waits (up to 5 s) for
/// `/system/functions` to list that many invocations for its first function; that listing.
pub fn listing_after_calls(gw: &Defrost, name: &str, calls: u64) -> serde_json::Value {
    for _ in 0..calls {
        assert_eq!(get(&gw.url(&format!("/function/{name}"))).status, 200);
    }
    let mut listed = serde_json::Value::Null;
    let counted = eventually(Duration::from_secs(5), || {
        listed = get(&gw.url("/system/functions")).json();
        listed[0]["invocationCount"] == calls as f64
    });
    assert!(counted, "{listed}");
    listed
}

/// Polls `condition` every 20 ms for up to `limit`; true once it holds.
pub fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// POSTs nothing and reads the reply.
pub fn post_empty(url: &str) -> Reply {
    read_reply(
        agent()
            .post(url)
            .send_empty()
            .unwrap_or_else(|e| panic!("POST {url}: {e}")),
    )
}

/// POSTs `body` as JSON and reads the reply.
pub fn post_json(url: &str, body: &str) -> Reply {
    read_reply(
        agent()
            .post(url)
            .header("Content-Type", "application/json")
            .send(body)
            .unwrap_or_else(|e| panic!("POST {url}: {e}")),
    )
}
