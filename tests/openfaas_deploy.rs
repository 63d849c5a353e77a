//! A user runs `faas-cli deploy`, `faas-cli deploy --update` and `faas-cli remove` against
//! defrost's embedded process provider: a deployment whose `envProcess` is the command line
//! becomes a process function, updated by a rolling replacement, removed by a drain; the
//! deployed set survives a restart and a reload of the config file.

mod common;

use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const CONFIG: &str = "[gateway]\nready_timeout = \"20s\"\nstop_grace = \"5s\"\n";

/// defrost on `dir/defrost.toml`, so that a second one can start on the same files.
fn start_in(dir: &Path, config: &str) -> Defrost {
    let path = dir.join("defrost.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_defrost"));
    cmd.arg("--config")
        .arg(&path)
        .arg("--listen")
        .arg("127.0.0.1:0");
    Defrost::spawn(cmd, &[], TempDir::new("deploy-unused"))
}

fn deployment(service: &str, starts: &Path) -> String {
    serde_json::json!({
        "service": service,
        "image": "ghcr.io/example/hello:0.1",
        "envProcess": format!("python3 {}", echo_script()),
        "envVars": { "STARTS_FILE": starts.display().to_string() },
        "labels": { "team": "blue" },
        "annotations": null,
    })
    .to_string()
}

fn send(gw: &Defrost, method: &str, path: &str, body: &str) -> Reply {
    let request = ureq::http::Request::builder()
        .method(method)
        .uri(gw.url(path))
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .unwrap();
    read_reply(agent().run(request).unwrap())
}

fn listed(gw: &Defrost) -> Vec<String> {
    let reply = get(&gw.url("/system/functions"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let mut names: Vec<String> = reply
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

fn wait_until(what: &str, limit: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_user_deploys_updates_and_removes_a_process_function() {
    let dir = TempDir::new("deploy");
    let gw = start_in(
        dir.path(),
        &format!("{CONFIG}{}", echo_function("fixed", "", "")),
    );
    let (v1, v2) = (dir.path().join("v1-starts"), dir.path().join("v2-starts"));

    let deployed = send(&gw, "POST", "/system/functions", &deployment("hello", &v1));
    assert_eq!(deployed.status, 202, "{}", deployed.body);
    assert_eq!(listed(&gw), ["fixed", "hello"]);
    let hello = get(&gw.url("/system/function/hello"));
    assert_eq!(
        hello.json()["image"],
        "ghcr.io/example/hello:0.1",
        "{}",
        hello.body
    );
    assert_eq!(hello.json()["labels"]["team"], "blue", "{}", hello.body);
    let first = get(&gw.url("/function/hello/greet"));
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(lines_in(&v1), 1, "envVars reach the process");
    let old_pid = first.json()["pid"].as_u64().unwrap() as u32;

    // An update while a request is in flight on the old replica: it still gets its answer.
    let slow_url = gw.url("/function/hello/sleep/1");
    let slow = thread::spawn(move || get(&slow_url));
    thread::sleep(Duration::from_millis(300));
    let updated = send(&gw, "PUT", "/system/functions", &deployment("hello", &v2));
    assert_eq!(updated.status, 202, "{}", updated.body);
    assert_eq!(
        slow.join().unwrap().status,
        200,
        "the in-flight request was lost"
    );
    let after = get(&gw.url("/function/hello/greet"));
    assert_eq!(after.status, 200, "{}", after.body);
    assert_eq!(
        lines_in(&v2),
        1,
        "the update runs a new replica with its new envVars"
    );
    assert_ne!(after.json()["pid"].as_u64().unwrap() as u32, old_pid);
    wait_until("the old replica stops", Duration::from_secs(10), || {
        !alive(old_pid)
    });

    let removed = send(
        &gw,
        "DELETE",
        "/system/functions",
        r#"{"functionName":"hello"}"#,
    );
    assert_eq!(removed.status, 202, "{}", removed.body);
    let new_pid = after.json()["pid"].as_u64().unwrap() as u32;
    wait_until(
        "the removed function's replica stops",
        Duration::from_secs(10),
        || !alive(new_pid),
    );
    assert_eq!(get(&gw.url("/function/hello/greet")).status, 404);
    assert_eq!(listed(&gw), ["fixed"]);
}

#[test]
fn refusals_are_honest() {
    let dir = TempDir::new("deploy-refusals");
    let gw = start_in(
        dir.path(),
        &format!("{CONFIG}{}", echo_function("fixed", "", "")),
    );
    let starts = dir.path().join("starts");
    let conflict = send(
        &gw,
        "POST",
        "/system/functions",
        &deployment("fixed", &starts),
    );
    assert_eq!(conflict.status, 409, "{}", conflict.body);
    assert!(conflict.body.contains("config file"), "{}", conflict.body);
    assert_eq!(
        send(
            &gw,
            "DELETE",
            "/system/functions",
            r#"{"functionName":"fixed"}"#
        )
        .status,
        409
    );
    assert_eq!(
        send(
            &gw,
            "PUT",
            "/system/functions",
            &deployment("ghost", &starts)
        )
        .status,
        404
    );
    assert_eq!(
        send(
            &gw,
            "DELETE",
            "/system/functions",
            r#"{"functionName":"ghost"}"#
        )
        .status,
        404
    );
    let no_command = send(
        &gw,
        "POST",
        "/system/functions",
        r#"{"service":"img","image":"nginx"}"#,
    );
    assert_eq!(no_command.status, 400);
    assert!(
        no_command.body.contains("envProcess"),
        "{}",
        no_command.body
    );
    let garbage = send(&gw, "POST", "/system/functions", "{not json");
    assert_eq!(garbage.status, 400);
    assert!(garbage.body.contains("service"), "{}", garbage.body);
    let twice = deployment("twice", &starts);
    assert_eq!(send(&gw, "POST", "/system/functions", &twice).status, 202);
    assert_eq!(send(&gw, "POST", "/system/functions", &twice).status, 409);
    assert_eq!(listed(&gw), ["fixed", "twice"]);
}

#[test]
fn the_deployed_set_survives_a_reload_and_a_restart() {
    let dir = TempDir::new("deploy-restart");
    let config = format!("{CONFIG}{}", echo_function("fixed", "", ""));
    let mut gw = start_in(dir.path(), &config);
    let starts = dir.path().join("starts");
    assert_eq!(
        send(
            &gw,
            "POST",
            "/system/functions",
            &deployment("hello", &starts)
        )
        .status,
        202
    );
    let state = dir.path().join("defrost.deployed.json");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(saved["functions"][0]["service"], "hello");
    assert_eq!(saved["functions"][0]["image"], "ghcr.io/example/hello:0.1");
    assert!(!dir.path().join("defrost.deployed.json.tmp").exists());

    // A reload that adds a function keeps the deployed one...
    let more = format!("{config}{}", echo_function("second", "", ""));
    std::fs::write(dir.path().join("defrost.toml"), &more).unwrap();
    unsafe_kill(gw.child.id(), "HUP");
    assert_eq!(gw.log_count_settled("reloaded", 1), 1, "{}", gw.log_text());
    assert_eq!(listed(&gw), ["fixed", "hello", "second"]);
    // ...and one that declares the deployed name is refused: the user decides which runs.
    let clash = format!("{more}{}", echo_function("hello", "", ""));
    std::fs::write(dir.path().join("defrost.toml"), &clash).unwrap();
    unsafe_kill(gw.child.id(), "HUP");
    assert_eq!(
        gw.log_count_settled("reload refused", 1),
        1,
        "{}",
        gw.log_text()
    );
    assert!(
        gw.log_text().contains("faas-cli remove"),
        "{}",
        gw.log_text()
    );
    assert_eq!(listed(&gw), ["fixed", "hello", "second"]);
    assert!(gw.terminate().is_some_and(|s| s.success()));

    std::fs::write(dir.path().join("defrost.toml"), &more).unwrap();
    let again = start_in(dir.path(), &more);
    assert_eq!(listed(&again), ["fixed", "hello", "second"]);
    let reply = get(&again.url("/function/hello/after-restart"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["path"], "/after-restart");
}
