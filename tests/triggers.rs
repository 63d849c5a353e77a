//! A user routes their own URLs to functions with HTTP triggers, splits traffic for a canary,
//! and changes the routes while the gateway serves.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

fn functions() -> String {
    ["stable", "next", "admin"]
        .iter()
        .map(|n| echo_function(n, "", ""))
        .collect()
}

fn config(triggers: &str) -> String {
    format!(
        "[gateway]\nready_timeout = \"20s\"\n{}\n{triggers}",
        functions()
    )
}

const ROUTES: &str = r#"
[[trigger]]
path = "/api/users/{id}/files/{path...}"
methods = ["GET"]
function = "stable"

[[trigger]]
path = "/api/users/{id}"
methods = ["GET", "PUT"]
function = "stable"

[[trigger]]
path = "/api/users/{id}"
methods = ["GET"]
host = "admin.example"
function = "admin"

[[trigger]]
path = "/canary"
functions = { "stable" = 90, "next" = 10 }
"#;

/// Which function answered, from the identity headers the gateway sends it.
fn answered_by(reply: &Reply) -> String {
    reply.json()["headers"]["x-defrost-function-name"]
        .as_str()
        .unwrap_or("?")
        .to_string()
}

#[test]
fn triggers_route_by_path_params_method_and_host() {
    let gw = Defrost::start(&config(ROUTES));
    let reply = get(&gw.url("/api/users/42?full=1"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let echo = reply.json();
    assert_eq!(
        echo["path"], "/api/users/42?full=1",
        "the function sees the original path"
    );
    assert_eq!(echo["headers"]["x-defrost-param-id"], "42");
    assert_eq!(answered_by(&reply), "stable");

    let files = get(&gw.url("/api/users/7/files/a/b.txt")).json();
    assert_eq!(files["headers"]["x-defrost-param-id"], "7");
    assert_eq!(files["headers"]["x-defrost-param-path"], "a/b.txt");

    let admin = read_reply(
        agent()
            .get(&gw.url("/api/users/1"))
            .header("Host", "admin.example")
            .call()
            .unwrap(),
    );
    assert_eq!(answered_by(&admin), "admin");

    let wrong_method = read_reply(agent().delete(&gw.url("/api/users/1")).call().unwrap());
    assert_eq!(wrong_method.status, 405, "{}", wrong_method.body);
    assert_eq!(wrong_method.header("allow"), Some("GET, PUT"));
    assert_eq!(get(&gw.url("/api/nothing")).status, 404);
}

#[test]
fn a_canary_gets_its_share_of_ten_thousand_requests() {
    let gw = Arc::new(Defrost::start(&config(ROUTES)));
    let next = Arc::new(AtomicUsize::new(0));
    let stable = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (gw, next, stable) = (gw.clone(), next.clone(), stable.clone());
            thread::spawn(move || {
                let agent = agent();
                for _ in 0..2500 {
                    let reply = read_reply(agent.get(&gw.url("/canary")).call().unwrap());
                    assert_eq!(reply.status, 200, "{}", reply.body);
                    match answered_by(&reply).as_str() {
                        "next" => next.fetch_add(1, Ordering::Relaxed),
                        "stable" => stable.fetch_add(1, Ordering::Relaxed),
                        other => panic!("answered by {other}"),
                    };
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let (next, stable) = (next.load(Ordering::Relaxed), stable.load(Ordering::Relaxed));
    assert_eq!(next + stable, 10_000);
    let share = next as f64 / 10_000.0;
    assert!(
        (share - 0.10).abs() <= 0.02,
        "next got {:.1}%",
        share * 100.0
    );
}

#[test]
fn reloading_under_load_loses_no_request_and_bad_configs_are_refused() {
    let before = "[[trigger]]\npath = \"/live\"\nfunction = \"stable\"\n";
    let after = "[[trigger]]\npath = \"/live\"\nfunction = \"next\"\n";
    let gw = Arc::new(Defrost::start(&config(before)));
    assert_eq!(answered_by(&get(&gw.url("/live"))), "stable");
    assert_eq!(
        get(&gw.url("/function/next")).status,
        200,
        "warm up the second function"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (gw, stop, ok, failed) = (gw.clone(), stop.clone(), ok.clone(), failed.clone());
            thread::spawn(move || {
                let agent = agent();
                let mut sent = 0;
                while !stop.load(Ordering::Relaxed) && sent < 20_000 {
                    sent += 1;
                    match agent.get(&gw.url("/live")).call() {
                        Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();

    let config_path = gw.dir.path().join("defrost.toml");
    let pid = gw.child.id();
    thread::sleep(Duration::from_millis(300));
    std::fs::write(&config_path, config(after)).unwrap();
    unsafe_kill(pid, "HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while answered_by(&get(&gw.url("/live"))) != "next" && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        answered_by(&get(&gw.url("/live"))),
        "next",
        "{}",
        gw.log_text()
    );

    std::fs::write(
        &config_path,
        config("[[trigger]]\npath = \"live\"\nfunction = \"stable\"\n"),
    )
    .unwrap();
    unsafe_kill(pid, "HUP");
    assert!(
        gw.log_count_settled("reload refused", 1) >= 1,
        "{}",
        gw.log_text()
    );
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.join().unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );
    assert!(ok.load(Ordering::Relaxed) > 0);
    assert_eq!(
        answered_by(&get(&gw.url("/live"))),
        "next",
        "the refused config changed nothing"
    );
}

#[test]
fn conflicting_triggers_are_a_config_error_naming_both() {
    let dir = TempDir::new("conflict");
    let path = dir.path().join("defrost.toml");
    let text = format!(
        "{}\n[[trigger]]\npath = \"/a/{{x}}\"\nfunction = \"stable\"\n\n[[trigger]]\npath = \"/a/{{y}}\"\nfunction = \"next\"\n",
        functions()
    );
    std::fs::write(&path, &text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_defrost"))
        .arg("--config")
        .arg(&path)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = text.lines().position(|l| l.contains("/a/{x}")).unwrap() + 1;
    let second = text.lines().position(|l| l.contains("/a/{y}")).unwrap() + 1;
    assert!(
        stderr.contains(&format!("defrost.toml:{first}"))
            && stderr.contains(&format!("defrost.toml:{second}")),
        "{stderr}"
    );
}

#[test]
fn watch_reloads_when_the_file_changes() {
    let before = "[[trigger]]\npath = \"/w\"\nfunction = \"stable\"\n";
    let gw = Defrost::start_with(&config(before), &["--watch"], &[]);
    assert_eq!(answered_by(&get(&gw.url("/w"))), "stable");
    let after = "[[trigger]]\npath = \"/w\"\nfunction = \"next\"\n\n[[trigger]]\npath = \"/w2\"\nfunction = \"next\"\n";
    std::fs::write(gw.dir.path().join("defrost.toml"), config(after)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while get(&gw.url("/w2")).status != 200 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        answered_by(&get(&gw.url("/w"))),
        "next",
        "{}",
        gw.log_text()
    );
}

#[test]
fn a_reload_adds_and_removes_functions() {
    let old = echo_function("old", r#"STARTS_FILE = "$DIR/old-starts""#, "");
    let stable = echo_function("stable", "", "");
    let gw = Defrost::start(&format!("{stable}{old}"));
    assert_eq!(get(&gw.url("/function/old")).status, 200);
    assert_eq!(get(&gw.url("/function/added")).status, 404);
    let old_pid: u32 = std::fs::read_to_string(gw.dir.path().join("old-starts"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(old_pid));

    let added = echo_function("added", "", "");
    let path = gw.dir.path().join("defrost.toml");
    std::fs::write(&path, format!("{stable}{added}")).unwrap();
    unsafe_kill(gw.child.id(), "HUP");
    assert!(
        gw.log_count_settled("reloaded", 1) >= 1,
        "{}",
        gw.log_text()
    );

    assert_eq!(
        get(&gw.url("/function/added")).status,
        200,
        "an added function starts on demand"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while (alive(old_pid) || get(&gw.url("/function/old")).status != 404)
        && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !alive(old_pid),
        "the removed function's replica was not stopped"
    );
    assert_eq!(get(&gw.url("/function/old")).status, 404);
}
