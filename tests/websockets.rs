//! WebSocket (and other upgraded) connections through the real binary: a function serving
//! WebSockets with the `websockets` library, driven by a client using the same library's
//! client side (`tests/functions/ws.py`, `tests/functions/ws_client.py`).

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// A `[[function]]` entry serving WebSockets as `name`, ready once it accepts connections;
/// each start is a line in `$DIR/starts`.
fn ws_function(name: &str, extra: &str) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/functions/ws.py");
    format!(
        "\n[[function]]\nname = \"{name}\"\ncommand = [\"python3\", \"{}\"]\n\
         env = {{ STARTS_FILE = \"$DIR/starts\" }}\n{extra}\n",
        script.display()
    )
}

fn ws_gateway(gateway_settings: &str, function_extra: &str) -> Defrost {
    Defrost::start(&format!(
        "[gateway]\n{gateway_settings}\n{}",
        ws_function("ws", function_extra)
    ))
}

/// Runs the WebSocket client on `path` with `steps` (see ws_client.py), in the background.
fn spawn_client(gw: &Defrost, path: &str, steps: &[&str]) -> Child {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/functions/ws_client.py");
    Command::new("python3")
        .arg(script)
        .arg(format!("ws://{}{path}", gw.addr))
        .args(steps)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs the WebSocket client")
}

/// What the client printed (and was not read yet), once it has exited (within two minutes); it must exit cleanly.
fn finish(mut client: Child) -> Vec<String> {
    let status = wait_exit(&mut client, Duration::from_secs(120));
    if status.is_none() {
        let _ = client.kill();
        let _ = client.wait();
    }
    let mut out = String::new();
    let mut err = String::new();
    client
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    client
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "client failed ({status:?}): {out}\n{err}"
    );
    out.lines().map(str::to_owned).collect()
}

fn run_client(gw: &Defrost, path: &str, steps: &[&str]) -> Vec<String> {
    finish(spawn_client(gw, path, steps))
}

/// Waits for the client's next line, leaving the rest for [`finish`].
fn next_line(client: &mut Child) -> String {
    let stdout = client.stdout.as_mut().unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    String::from_utf8_lossy(&line).into_owned()
}

fn upgraded_now(gw: &Defrost, expected: f64) -> bool {
    let series = "gateway_upgraded_connections";
    gw.scrape_when(|s| s.value(series) == Some(expected))
        .value(series)
        == Some(expected)
}

/// A WebSocket handshake written by hand, and the answer's head and body.
fn raw_upgrade(gw: &Defrost, path: &str) -> (RawConn, RawResponse) {
    let mut conn = RawConn::open(gw.addr, Duration::from_secs(20));
    conn.send(handshake(path).as_bytes()).unwrap();
    let response = conn.response().unwrap();
    (conn, response)
}

fn handshake(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

fn starts(gw: &Defrost) -> usize {
    lines_in(&gw.dir.path().join("starts"))
}

#[test]
fn messages_pass_both_ways_through_a_cold_start() {
    let gw = ws_gateway("", "");
    assert_eq!(starts(&gw), 0, "the function starts cold");
    let out = run_client(
        &gw,
        "/function/ws/echo",
        &["text:hello", "binary:3", "binary:4194304", "text:bye"],
    );
    assert_eq!(
        out,
        ["text hello", "binary 3 ok", "binary 4194304 ok", "text bye"]
    );
    assert_eq!(starts(&gw), 1);
    assert!(
        upgraded_now(&gw, 0.0),
        "the relay ended with the connection"
    );
    let scrape = gw.scrape_when(|_| true);
    assert_eq!(
        scrape.get("gateway_function_invocation_total{function_name=\"ws.default\",code=\"101\"}"),
        1.0
    );
}

#[test]
fn the_function_sees_who_called_as_with_any_call() {
    let gw = ws_gateway("", "");
    let out = run_client(&gw, "/function/ws/headers?x=1", &["recv"]);
    let json = out[0].strip_prefix("text ").unwrap();
    let headers: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(headers["upgrade"], "websocket");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-defrost-function-name"], "ws");
    assert!(headers["x-call-id"].as_str().is_some_and(|v| !v.is_empty()));
    assert!(headers["sec-websocket-key"].is_string());
}

#[test]
fn close_frames_pass_from_either_side() {
    let gw = ws_gateway("", "");
    let out = run_client(&gw, "/function/ws/close", &["send:x", "wait-close"]);
    assert_eq!(out, ["sent", "closed 4001 bye"]);
    let out = run_client(&gw, "/function/ws/echo", &["text:a", "close"]);
    assert_eq!(out, ["text a", "closed 1000"]);
    assert!(upgraded_now(&gw, 0.0));
}

#[test]
fn bytes_sent_right_behind_the_handshake_are_not_lost() {
    let gw = ws_gateway("", "");
    let mut conn = RawConn::open(gw.addr, Duration::from_secs(20));
    // the handshake and a masked text frame ("hi", mask key 0) in one write
    let mut request = handshake("/function/ws/echo").into_bytes();
    request.extend_from_slice(&[0x81, 0x82, 0, 0, 0, 0, b'h', b'i']);
    conn.send(&request).unwrap();
    let switched = conn.response().unwrap();
    assert_eq!(switched.status, 101);
    assert!(switched.header("Sec-WebSocket-Accept").is_some());
    let mut echoed = [0u8; 4];
    conn.reader.read_exact(&mut echoed).unwrap();
    assert_eq!(echoed, [0x81, 0x02, b'h', b'i']);
}

#[test]
fn a_refused_upgrade_is_relayed_as_an_ordinary_response() {
    let gw = ws_gateway("", "");
    assert_eq!(run_client(&gw, "/function/ws/reject", &[]), ["refused 403"]);
    let (mut conn, response) = raw_upgrade(&gw, "/function/ws/reject");
    assert_eq!(response.status, 403);
    assert_eq!(response.body, b"refused\n");
    assert!(response.header("X-Call-Id").is_some());
    assert!(
        conn.closed_by_server(),
        "an upgrade request's connection closes after"
    );
    assert!(upgraded_now(&gw, 0.0));
}

#[test]
fn an_upgrade_request_with_a_body_is_an_ordinary_call() {
    let gw = Defrost::start(&format!(
        "[gateway]\n{}{}",
        ws_function("ws", ""),
        echo_function("echo", "", "")
    ));
    let mut conn = RawConn::open(gw.addr, Duration::from_secs(20));
    conn.send(
        b"POST /function/echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\
          Upgrade: websocket\r\nContent-Length: 5\r\n\r\nhello",
    )
    .unwrap();
    let response = conn.response().unwrap();
    assert_eq!(response.status, 200);
    let echoed: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(echoed["body_bytes"], 5, "{echoed}");
    assert!(
        echoed["headers"].get("upgrade").is_none(),
        "not passed on: {echoed}"
    );
    assert!(conn.closed_by_server());
}

#[test]
fn a_trigger_routes_upgrades_like_any_call() {
    let gw = Defrost::start(&format!(
        "[gateway]\n{}\n[[trigger]]\npath = \"/chat/{{room}}\"\nfunction = \"ws\"\n",
        ws_function("ws", "")
    ));
    let out = run_client(&gw, "/chat/lobby", &["text:hi"]);
    assert_eq!(out, ["text hi"]);
}

#[test]
fn upgraded_connections_are_bounded() {
    let gw = ws_gateway("max_upgraded = 1", "");
    let mut holder = spawn_client(&gw, "/function/ws/echo", &["text:in", "hold:30"]);
    assert_eq!(next_line(&mut holder), "text in");
    assert_eq!(
        run_client(&gw, "/function/ws/echo", &["text:x"]),
        ["refused 503"]
    );
    let (_conn, refused) = raw_upgrade(&gw, "/function/ws/echo");
    assert_eq!(refused.status, 503);
    assert_eq!(refused.header("Retry-After").as_deref(), Some("1"));
    // plain calls are not upgrades: they are not bounded by it
    assert_ne!(get(&gw.url("/function/ws/echo")).status, 503);
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(upgraded_now(&gw, 0.0), "the slot is given back");
    assert_eq!(
        run_client(&gw, "/function/ws/echo", &["text:x"]),
        ["text x"]
    );
}

#[test]
fn a_quiet_connection_is_closed_after_the_idle_timeout() {
    let gw = ws_gateway("upgrade_idle_timeout = \"1s\"", "");
    // the client's own keep-alive pings come every 20 s: nothing moves before the timeout
    let out = run_client(&gw, "/function/ws/echo", &["text:a", "wait-close"]);
    assert_eq!(
        out,
        ["text a", "closed 1006 "],
        "closed without a close frame"
    );
    assert!(upgraded_now(&gw, 0.0));
}

#[test]
fn a_quiet_relay_burns_no_cpu() {
    let gw = ws_gateway("", "");
    let mut client = spawn_client(&gw, "/function/ws/echo", &["text:a", "hold:5", "text:b"]);
    assert_eq!(next_line(&mut client), "text a");
    assert!(upgraded_now(&gw, 1.0));
    // let the pool settle after the cold start, then look at a second of quiet
    std::thread::sleep(Duration::from_millis(500));
    let pid = gw.child.id();
    let before = (cpu_ticks(pid), wakeups(pid));
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(pid) - before.0;
    let woken = wakeups(pid) - before.1;
    // clock ticks are 10 ms: a thread spinning even a tenth of the time shows here
    assert!(used <= 5, "{used} ticks of CPU in a second of quiet");
    // a thread polling every millisecond would wake a thousand times; the gateway's own
    // timers (idle connections, autoscaling) wake it a few dozen times
    assert!(woken < 200, "{woken} wake-ups in a second of quiet");
    assert_eq!(finish(client), ["held", "text b"]);
}

#[test]
fn an_open_connection_keeps_its_replica_through_idle_scale_down() {
    let gw = Defrost::start(&format!(
        "[gateway]\nautoscale_interval = \"100ms\"\n{}",
        ws_function(
            "ws",
            "scale_to_zero = true\nzero_duration = \"1s\"\npark_after = \"500ms\""
        )
    ));
    let out = run_client(
        &gw,
        "/function/ws/echo",
        &["text:a", "hold:3", "text:b", "binary:1000"],
    );
    assert_eq!(out, ["text a", "held", "text b", "binary 1000 ok"]);
    assert_eq!(
        starts(&gw),
        1,
        "the replica was neither stopped nor replaced"
    );
    assert!(
        eventually(Duration::from_secs(20), || gw.log_count("scaled to zero")
            > 0),
        "once closed, the function idles to zero as usual: {}",
        gw.log_text()
    );
}

#[test]
fn shutdown_lets_an_open_connection_finish_within_the_grace_period() {
    let mut gw = ws_gateway("shutdown_grace = \"20s\"", "");
    let mut client = spawn_client(&gw, "/function/ws/echo", &["text:a", "hold:1", "text:b"]);
    assert_eq!(next_line(&mut client), "text a");
    unsafe_kill(gw.child.id(), "TERM");
    assert_eq!(finish(client), ["held", "text b"]);
    let status = wait_exit(&mut gw.child, Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert_eq!(gw.log_count("still in flight after the grace period"), 0);
}

#[test]
fn shutdown_closes_a_connection_still_open_after_the_grace_period() {
    let mut gw = ws_gateway("shutdown_grace = \"1s\"", "");
    let mut client = spawn_client(&gw, "/function/ws/echo", &["text:a", "wait-close"]);
    assert_eq!(next_line(&mut client), "text a");
    unsafe_kill(gw.child.id(), "TERM");
    let out = finish(client);
    assert_eq!(out, ["closed 1006 "]);
    let status = wait_exit(&mut gw.child, Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

/// Times the process's threads have gone to sleep and been woken, from /proc.
fn wakeups(pid: u32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        for line in status.lines() {
            if let Some(v) = line.strip_prefix("voluntary_ctxt_switches:") {
                total += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
}
