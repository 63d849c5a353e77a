//! An operator opens the status page in a browser and sees the function they just called.
//!
//! Rendered by headless Chromium, as a browser would. Without a Chromium binary the test is
//! skipped with a message, unless `CI` is set: CI installs Chromium, so there it must run.

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const BROWSERS: &[&str] = &["chromium", "chromium-browser", "google-chrome"];

fn find_browser() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| BROWSERS.iter().map(move |b| dir.join(b)))
        .find(|candidate| candidate.is_file())
}

/// The DOM of `url` after the page has rendered, as Chromium saw it.
fn rendered_dom(browser: &PathBuf, url: &str) -> String {
    let profile = TempDir::new("chromium");
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=2000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut dom = String::new();
        let _ = stdout.read_to_string(&mut dom);
        dom
    });
    if wait_exit(&mut child, Duration::from_secs(90)).is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("chromium did not finish rendering {url} within 90 s");
    }
    reader.join().expect("reader thread")
}

#[test]
fn the_status_page_shows_a_function_just_called_with_its_count() {
    let Some(browser) = find_browser() else {
        if std::env::var_os("CI").is_some() {
            panic!("CI is set but no Chromium binary ({BROWSERS:?}) is on PATH");
        }
        eprintln!("SKIPPED the_status_page_shows_a_function_just_called_with_its_count: no Chromium binary ({BROWSERS:?}) on PATH; install Debian's `chromium` package to run it");
        return;
    };
    let echo = echo_function("echo", "", "");
    let idle = echo_function("idle", "", "");
    let gw = Defrost::start(&format!("[gateway]\nready_timeout = \"20s\"\n{echo}{idle}"));
    for _ in 0..3 {
        assert_eq!(get(&gw.url("/function/echo")).status, 200);
    }
    gw.scrape_when(|s| {
        s.value("defrost_function_in_flight{function_name=\"echo.default\"}") == Some(0.0)
    });

    let dom = rendered_dom(&browser, &gw.url("/ui/"));
    let row_start = dom
        .find("data-function=\"echo.default\"")
        .unwrap_or_else(|| panic!("no row for echo.default in:\n{dom}"));
    let row = &dom[row_start
        ..dom[row_start..]
            .find("</tr>")
            .map_or(dom.len(), |e| row_start + e)];
    assert!(
        row.contains("<td>echo</td><td>default</td><td>1 / 1</td>"),
        "{row}"
    );
    assert!(row.contains("<td class=\"invocations\">3</td>"), "{row}");
    assert!(!row.contains("never"), "the cold start is missing: {row}");
    assert!(dom.contains("data-function=\"idle.default\""), "{dom}");
}

#[test]
fn with_basic_auth_on_the_status_page_asks_for_credentials() {
    let secrets = TempDir::new("secrets");
    std::fs::write(secrets.path().join("basic-auth-user"), "admin\n").unwrap();
    std::fs::write(secrets.path().join("basic-auth-password"), "s3cret\n").unwrap();
    let config = format!(
        "[gateway]\nbasic_auth = true\nsecret_mount_path = \"{}\"\n",
        secrets.path().display()
    );
    let gw = Defrost::start(&config);
    let denied = get(&gw.url("/ui/"));
    assert_eq!(denied.status, 401, "{}", denied.body);
    // admin:s3cret
    let page = get_authorized(&gw.url("/ui/"), "Basic YWRtaW46czNjcmV0");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("no functions"), "{}", page.body);
}
