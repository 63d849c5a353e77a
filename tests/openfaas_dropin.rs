//! A user puts defrost where the OpenFaaS gateway was: in front of an OpenFaaS provider. Here
//! the provider is another defrost serving the faas-provider API from its process provider.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const USER: &str = "admin";
const PASSWORD: &str = "s3cret";

fn provider() -> Defrost {
    let functions = [
        echo_function("echo", r#"STARTS_FILE = "$DIR/starts""#, ""),
        echo_function(
            "pair",
            r#"STARTS_FILE = "$DIR/pair-starts""#,
            r#"labels = { "com.openfaas.scale.min" = "2" }"#,
        ),
        echo_function("sloth", r#"READY_DELAY_MS = "600000""#, ""),
    ];
    Defrost::start(&format!(
        "[gateway]\nready_timeout = \"20s\"\n{}",
        functions.concat()
    ))
}

/// A gateway configured like the OpenFaaS gateway: environment variables only.
fn env_gateway(provider_url: &str, secrets: Option<&TempDir>) -> Defrost {
    let dir = TempDir::new("env-gw");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_defrost"));
    cmd.arg("--listen").arg("127.0.0.1:0");
    let mut env = vec![
        ("functions_provider_url", provider_url.to_string()),
        ("scale_from_zero", "true".to_string()),
        ("function_namespace", "default".to_string()),
        ("upstream_timeout", "20s".to_string()),
    ];
    if let Some(secrets) = secrets {
        env.push(("basic_auth", "true".into()));
        env.push(("secret_mount_path", secrets.path().display().to_string()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Defrost::spawn(cmd, &env, dir)
}

fn secrets() -> TempDir {
    let dir = TempDir::new("secrets");
    std::fs::write(dir.path().join("basic-auth-user"), format!("{USER}\n")).unwrap();
    std::fs::write(
        dir.path().join("basic-auth-password"),
        format!("{PASSWORD}\n"),
    )
    .unwrap();
    dir
}

#[test]
fn cold_start_through_both_with_one_scale_call_for_two_hundred_requests() {
    let requests = 200;
    let provider = provider();
    let gw = Arc::new(env_gateway(&provider.url("/"), None));
    let handles: Vec<_> = (0..requests)
        .map(|i| {
            let url = gw.url(&format!("/function/echo/n/{i}?q={i}"));
            thread::spawn(move || get(&url))
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let reply = h.join().unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.json()["path"], format!("/n/{i}?q={i}"));
    }
    assert_eq!(
        provider.log_count_settled("scale echo.default: 0 -> 1", 1),
        1,
        "{}",
        provider.log_text()
    );
    assert_eq!(lines_in(&provider.dir.path().join("starts")), 1);
    assert_eq!(
        gw.log_count_settled("cold start echo.default", 1),
        1,
        "{}",
        gw.log_text()
    );
}

#[test]
fn min_label_unknown_functions_and_provider_status() {
    let provider = provider();
    let gw = env_gateway(&provider.url(""), None);
    assert_eq!(get(&gw.url("/function/pair")).status, 200);
    assert_eq!(
        provider.log_count_settled("scale pair.default: 0 -> 2", 1),
        1,
        "{}",
        provider.log_text()
    );
    let unknown = get(&gw.url("/function/ghost"));
    assert_eq!(unknown.status, 404, "{}", unknown.body);

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut status = get(&gw.url("/system/function/pair?namespace=default")).json();
    while status["availableReplicas"] != 2 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        status = get(&gw.url("/system/function/pair?namespace=default")).json();
    }
    assert_eq!(status["name"], "pair");
    assert_eq!(status["replicas"], 2);
    assert_eq!(status["availableReplicas"], 2);
    assert_eq!(status["labels"]["com.openfaas.scale.min"], "2");
    let list = get(&gw.url("/system/functions?namespace=default")).json();
    assert_eq!(list.as_array().map(Vec::len), Some(3), "{list}");
    assert_eq!(
        get(&gw.url("/system/namespaces")).json(),
        serde_json::json!(["default"])
    );
}

#[test]
fn manual_scale_goes_through_the_gateway() {
    let provider = provider();
    let gw = env_gateway(&provider.url(""), None);
    let response = agent()
        .post(&gw.url("/system/scale-function/echo?namespace=default"))
        .send(r#"{"serviceName":"echo","namespace":"default","replicas":2}"#)
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(
        provider.log_count_settled("scale echo.default: 0 -> 2", 1),
        1,
        "{}",
        provider.log_text()
    );
}

#[test]
fn provider_down_is_a_502_not_a_404() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = env_gateway(&format!("http://{closed}"), None);
    let reply = get(&gw.url("/function/echo"));
    assert_eq!(reply.status, 502, "{}", reply.body);
    assert!(reply.body.contains("echo.default"), "{}", reply.body);
    let info = get(&gw.url("/system/info"));
    assert_eq!(info.status, 502, "{}", info.body);
    assert!(info.body.contains("provider info"), "{}", info.body);
}

#[test]
fn provider_that_never_reports_ready_is_a_504() {
    let provider = provider();
    let gw = Defrost::start(&format!(
        "[gateway]\nready_timeout = \"1s\"\n[provider]\nkind = \"openfaas\"\nurl = \"{}\"\n",
        provider.url("/")
    ));
    let started = Instant::now();
    let reply = get(&gw.url("/function/sloth"));
    assert_eq!(reply.status, 504, "{}", reply.body);
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[test]
fn basic_auth_guards_system_routes_but_not_functions() {
    let provider = provider();
    let secrets = secrets();
    let gw = env_gateway(&provider.url(""), Some(&secrets));

    let denied = get(&gw.url("/system/functions"));
    assert_eq!(denied.status, 401);
    assert_eq!(
        denied.header("www-authenticate"),
        Some("Basic realm=\"Restricted\"")
    );
    let wrong = get_authorized(&gw.url("/system/functions"), "Basic YWRtaW46bm9wZQ==");
    assert_eq!(wrong.status, 401);
    let allowed = get_authorized(&gw.url("/system/functions"), "Basic YWRtaW46czNjcmV0");
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    let scale = agent()
        .post(&gw.url("/system/scale-function/echo"))
        .send(r#"{"serviceName":"echo","replicas":1}"#)
        .unwrap();
    assert_eq!(scale.status(), 401);

    assert_eq!(
        get(&gw.url("/function/echo")).status,
        200,
        "functions are never behind auth"
    );
}

/// What the OpenFaaS gateway does with a function at zero when defrost is its provider: scale
/// it up through the API, poll until a replica is available, then forward the call. The
/// scale-up is activity: defrost's idler must not stop the replica meanwhile.
#[test]
fn a_scale_up_through_the_api_is_not_undone_by_scale_to_zero() {
    let gw = Defrost::start(&format!(
        "[gateway]\nautoscale_interval = \"50ms\"\n{}",
        echo_function("echo", "", "scale_to_zero = true\nzero_duration = \"2s\"")
    ));
    assert_eq!(get(&gw.url("/function/echo")).status, 200);
    assert_eq!(
        gw.log_count_settled("scaled to zero", 1),
        1,
        "{}",
        gw.log_text()
    );
    let scaled = post_json(
        &gw.url("/system/scale-function/echo"),
        r#"{"serviceName":"echo","replicas":1}"#,
    );
    assert_eq!(scaled.status, 202, "{}", scaled.body);
    let available = || get(&gw.url("/system/function/echo")).json()["availableReplicas"] == 1;
    assert!(
        eventually(Duration::from_secs(10), available),
        "{}",
        gw.log_text()
    );
    // The gateway's poll interval and its own forwarding: well within the idle time.
    thread::sleep(Duration::from_millis(1000));
    assert!(
        available(),
        "undone before the call came: {}",
        gw.log_text()
    );
    assert_eq!(get(&gw.url("/function/echo")).status, 200);
    assert_eq!(gw.log_count("scaled to zero"), 1, "{}", gw.log_text());
    assert_eq!(
        gw.log_count("scale echo.default: 0 -> 1"),
        2,
        "the call found the replica the API asked for: {}",
        gw.log_text()
    );
    // The idle clock was restarted, not stopped: idle again, it goes to zero again.
    assert_eq!(
        gw.log_count_settled("scaled to zero", 2),
        2,
        "{}",
        gw.log_text()
    );
}
