//! An operator checks a config file before deploying it.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

struct Checked {
    success: bool,
    stdout: String,
    stderr: String,
}

fn check(config: &Path) -> Checked {
    let child = Command::new(env!("CARGO_BIN_EXE_defrost"))
        .arg("check")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("defrost runs");
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !waiter.is_finished() {
        if std::time::Instant::now() > deadline {
            unsafe_kill(pid, "KILL");
            panic!("defrost check did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let output = waiter.join().unwrap().unwrap();
    Checked {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn write(dir: &TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_good_config_is_shown_with_every_default_filled_in() {
    let dir = TempDir::new("check");
    let echo = echo_function("echo", "", "min_replicas = 2");
    let config = write(
        &dir,
        "defrost.toml",
        &format!("[gateway]\nready_timeout = \"5s\"\n{echo}"),
    );
    let checked = check(&config);
    assert!(checked.success, "{}", checked.stderr);
    for line in [
        "ready_timeout = \"5s\"",
        "cache_expiry = \"250ms\"",
        "listen = \"127.0.0.1:8080\"",
        "kind = \"process\"",
        "name = \"echo\"",
        "namespace = \"default\"",
        "min_replicas = 2",
        "max_replicas = 20",
        "startup_timeout = \"60s\"",
    ] {
        assert!(
            checked.stdout.lines().any(|l| l == line),
            "{line} missing:\n{}",
            checked.stdout
        );
    }

    let again = write(&dir, "effective.toml", &checked.stdout);
    let rechecked = check(&again);
    assert!(rechecked.success, "{}", rechecked.stderr);
    assert_eq!(
        rechecked.stdout, checked.stdout,
        "the effective settings are a config of their own"
    );
}

#[test]
fn a_misspelt_key_is_refused_with_file_line_and_key() {
    let dir = TempDir::new("check");
    let config = write(
        &dir,
        "defrost.toml",
        "[gateway]\nlisten = \"127.0.0.1:8080\"\nready_timout = \"3s\"\n",
    );
    let checked = check(&config);
    assert!(!checked.success);
    assert!(checked.stdout.is_empty(), "{}", checked.stdout);
    let expected = format!("{}:3: key `ready_timout`", config.display());
    assert!(checked.stderr.contains(&expected), "{}", checked.stderr);
}

#[test]
fn an_impossible_function_is_refused_with_its_line() {
    let dir = TempDir::new("check");
    let echo = echo_function("echo", "", "min_replicas = 3\nmax_replicas = 2");
    let config = write(&dir, "defrost.toml", &echo);
    let checked = check(&config);
    assert!(!checked.success, "{}", checked.stdout);
    let line = echo
        .lines()
        .position(|l| l.starts_with("max_replicas"))
        .unwrap()
        + 1;
    let expected = format!("{}:{line}: key `max_replicas`", config.display());
    assert!(checked.stderr.contains(&expected), "{}", checked.stderr);
}

#[test]
fn a_bad_trusted_proxy_is_refused_by_name() {
    let dir = TempDir::new("check");
    let config = write(
        &dir,
        "defrost.toml",
        "[gateway]\nlisten = \"127.0.0.1:8080\"\ntrusted_proxies = [\"127.0.0.1\", \"10.0.0.0/33\"]\n",
    );
    let checked = check(&config);
    assert!(!checked.success, "{}", checked.stdout);
    let expected = format!("{}:3: key `trusted_proxies`", config.display());
    assert!(checked.stderr.contains(&expected), "{}", checked.stderr);
    assert!(
        checked.stderr.contains("\"10.0.0.0/33\""),
        "{}",
        checked.stderr
    );

    let good = write(
        &dir,
        "good.toml",
        "[gateway]\ntrusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\", \"::1\"]\n",
    );
    let checked = check(&good);
    assert!(checked.success, "{}", checked.stderr);
    let line = "trusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\", \"::1\"]";
    assert!(
        checked.stdout.lines().any(|l| l == line),
        "{line} missing:\n{}",
        checked.stdout
    );
}
