//! A user runs defrost in front of faas-providers that are not faas-netes EE: one without
//! namespaces (faas-memory), one that will not scale to zero (faas-netes CE). The provider
//! here is a real HTTP server in a process of its own (`tests/functions/fake_provider.py`).

mod common;

use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;

/// defrost configured like the OpenFaaS gateway, from environment variables only.
fn env_gateway(provider: &FakeProvider) -> Defrost {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_defrost"));
    cmd.arg("--listen").arg("127.0.0.1:0");
    let url = provider.url();
    Defrost::spawn(
        cmd,
        &[
            ("functions_provider_url", url.as_str()),
            ("scale_from_zero", "true"),
        ],
        TempDir::new("env-gw"),
    )
}

#[test]
fn a_provider_without_namespaces_is_called_with_the_path_the_client_sent() {
    let provider = FakeProvider::start(&[("REPLICAS", "1")]);
    let gw = env_gateway(&provider);
    let reply = get(&gw.url("/function/echo/orders/7?x=1"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["path"], "/function/echo/orders/7?x=1");
    let bare = get(&gw.url("/function/echo"));
    assert_eq!(bare.json()["path"], "/function/echo");
    // Named with its namespace, the call goes on as named: this provider knows no namespaces.
    let qualified = get(&gw.url("/function/echo.openfaas-fn/orders"));
    assert_eq!(qualified.status, 404, "{}", qualified.body);
    assert!(
        qualified.body.contains("/function/echo.openfaas-fn/orders"),
        "{}",
        qualified.body
    );
}

#[test]
fn listings_from_the_provider_carry_the_calls_the_gateway_answered() {
    let provider = FakeProvider::start(&[("REPLICAS", "1")]);
    let gw = env_gateway(&provider);
    let listed = listing_after_calls(&gw, "echo", 3);
    assert_eq!(
        listed[0]["image"], "fake/echo:latest",
        "the rest as the provider said"
    );
    let one = get(&gw.url("/system/function/echo")).json();
    assert_eq!(one["invocationCount"], 3.0, "{one}");
    assert_eq!(get(&gw.url("/system/function/ghost")).status, 404);
}

#[test]
fn a_providers_info_is_shown_inside_the_gateways() {
    let provider = FakeProvider::start(&[]);
    let gw = env_gateway(&provider);
    let info = get(&gw.url("/system/info"));
    assert_eq!(info.status, 200, "{}", info.body);
    let info = info.json();
    assert_eq!(info["provider"]["provider"], "faas-memory", "{info}");
    assert_eq!(info["provider"]["orchestration"], "memory", "{info}");
    assert_eq!(info["provider"]["version"]["sha"], "f00dfeed", "{info}");
    assert_eq!(info["version"]["release"], env!("CARGO_PKG_VERSION"));
    assert!(
        !info["version"]["sha"].as_str().unwrap_or("").is_empty(),
        "{info}"
    );
    assert!(!info["arch"].as_str().unwrap_or("").is_empty(), "{info}");
}

#[test]
fn a_provider_refusing_zero_replicas_keeps_the_function_at_its_minimum_and_says_so_once() {
    let provider = FakeProvider::start(&[
        ("REPLICAS", "3"),
        ("REFUSE_ZERO", "1"),
        (
            "LABELS",
            r#"{"com.openfaas.scale.zero":"true","com.openfaas.scale.zero-duration":"300ms"}"#,
        ),
    ]);
    let gw = Defrost::start(&format!(
        "[gateway]\nautoscale_interval = \"50ms\"\n[provider]\nkind = \"openfaas\"\nurl = \"{}\"\n",
        provider.url()
    ));
    assert_eq!(get(&gw.url("/function/echo")).status, 200);
    assert!(
        eventually(Duration::from_secs(10), || provider.scales() == [0, 1]),
        "{:?}\n{}",
        provider.scales(),
        gw.log_text()
    );
    // Idle for another forty checks or so: no more scale calls, no more log lines.
    thread::sleep(Duration::from_secs(2));
    assert_eq!(provider.scales(), [0, 1], "{}", gw.log_text());
    assert_eq!(
        gw.log_count("does not allow scaling it to zero"),
        1,
        "{}",
        gw.log_text()
    );
    assert!(
        gw.log_count("replicas cannot be set to 0 in OpenFaaS CE") >= 1,
        "the provider's words are in the log: {}",
        gw.log_text()
    );
    assert_eq!(gw.log_count("scale to zero failed"), 0, "{}", gw.log_text());
    let status = get(&gw.url("/system/function/echo")).json();
    assert_eq!(status["replicas"], 1, "{status}");
    assert_eq!(get(&gw.url("/function/echo")).status, 200);
}

#[test]
fn eight_concurrent_cold_calls_make_one_scale_call_round_after_round() {
    let provider = FakeProvider::start(&[]);
    let gw = Arc::new(Defrost::start(&format!(
        "[gateway]\ncache_expiry = \"1ms\"\npoll_interval = \"5ms\"\n[provider]\nkind = \"openfaas\"\nurl = \"{}\"\n",
        provider.url()
    )));
    for round in 0..15 {
        // Back to zero behind the gateway's back, as another gateway's idler would do it.
        let reply = post_json(
            &format!("{}/system/scale-function/echo", provider.url()),
            r#"{"serviceName":"echo","replicas":0}"#,
        );
        assert_eq!(reply.status, 202);
        let before = provider.scales().len();
        let calls: Vec<_> = (0..8)
            .map(|i| {
                let url = gw.url(&format!("/function/echo/{round}/{i}"));
                thread::spawn(move || get(&url).status)
            })
            .collect();
        for call in calls {
            assert_eq!(call.join().unwrap(), 200);
        }
        let made = &provider.scales()[before..];
        assert_eq!(made, [1], "round {round}: scale calls {made:?}");
    }
}
