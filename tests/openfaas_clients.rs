//! A user points faas-cli, or the OpenFaaS certifier, at a defrost that runs its functions
//! itself, from a config file that never mentions namespaces.

mod common;

use common::*;

fn gateway() -> Defrost {
    echo_gateway("")
}

#[test]
fn system_info_reads_as_a_gateway_with_its_provider() {
    let gw = gateway();
    let info = get(&gw.url("/system/info"));
    assert_eq!(info.status, 200, "{}", info.body);
    assert_eq!(info.header("content-type"), Some("application/json"));
    let info = info.json();
    assert_eq!(info["provider"]["provider"], "defrost", "{info}");
    assert_eq!(info["provider"]["orchestration"], "process", "{info}");
    assert_eq!(
        info["provider"]["version"]["release"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(info["version"]["release"], env!("CARGO_PKG_VERSION"));
    let sha = info["version"]["sha"].as_str().unwrap_or("");
    assert!(!sha.is_empty(), "{info}");
    assert_eq!(info["provider"]["version"]["sha"], sha);
    assert_eq!(info["arch"], std::env::consts::ARCH);
}

#[test]
fn openfaas_fn_names_the_default_namespace() {
    let gw = gateway();
    let called = get(&gw.url("/function/echo.openfaas-fn/x"));
    assert_eq!(called.status, 200, "{}", called.body);
    assert_eq!(called.json()["path"], "/x");
    let status = get(&gw.url("/system/function/echo?namespace=openfaas-fn"));
    assert_eq!(status.status, 200, "{}", status.body);
    assert_eq!(status.json()["name"], "echo");
    let listed = get(&gw.url("/system/functions?namespace=openfaas-fn")).json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    let scaled = post_json(
        &gw.url("/system/scale-function/echo"),
        r#"{"serviceName":"echo","namespace":"openfaas-fn","replicas":2}"#,
    );
    assert_eq!(scaled.status, 202, "{}", scaled.body);
    // One function, one record: the call and the scale went to `echo.default`.
    assert_eq!(
        gw.log_count_settled("scale echo.default: 1 -> 2", 1),
        1,
        "{}",
        gw.log_text()
    );
    assert_eq!(gw.log_count("openfaas-fn"), 0, "{}", gw.log_text());
}

#[test]
fn listings_count_invocations_and_say_when_functions_were_created() {
    let gw = gateway();
    let listed = listing_after_calls(&gw, "echo", 3);
    let created = listed[0]["createdAt"].as_str().unwrap_or("");
    assert!(
        created.len() == 24 && created.starts_with("20") && created.ends_with('Z'),
        "{listed}"
    );
    let one = get(&gw.url("/system/function/echo")).json();
    assert_eq!(one["invocationCount"], 3.0, "{one}");
    assert_eq!(one["createdAt"], created, "{one}");
}

#[test]
fn a_call_naming_no_function_is_a_404_and_secrets_are_a_501() {
    let gw = gateway();
    for path in [
        "/function/.default",
        "/function/",
        "/function/.openfaas-fn/x",
    ] {
        let reply = get(&gw.url(path));
        assert_eq!(reply.status, 404, "{path}: {}", reply.body);
    }
    let secrets = get(&gw.url("/system/secrets"));
    assert_eq!(secrets.status, 501, "{}", secrets.body);
    assert!(secrets.body.contains("not supported"), "{}", secrets.body);
    let create = post_json(&gw.url("/system/secrets"), r#"{"name":"s","value":"v"}"#);
    assert_eq!(create.status, 501, "{}", create.body);
}
