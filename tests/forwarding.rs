//! A client cannot make a function believe what only the gateway, or a proxy the operator
//! trusts, may tell it: the trigger's path parameters, the scheme and the host it was called on.

mod common;

use common::*;

/// What the echo function received from a call that forges every claim it can.
fn forged_call(gw: &Defrost, path: &str) -> serde_json::Value {
    let reply = read_reply(
        agent()
            .get(&gw.url(path))
            .header("X-Defrost-Param-id", "forged")
            .header("X-Defrost-Param-x", "forged")
            .header("X-Defrost-Function-Name", "forged")
            .header("X-Forwarded-Proto", "https")
            .header("X-Forwarded-Host", "forged.example")
            .header("X-Forwarded-For", "203.0.113.7")
            .call()
            .unwrap(),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()["headers"].clone()
}

fn gateway(settings: &str) -> Defrost {
    echo_gateway(&format!(
        "{settings}\n[[trigger]]\npath = \"/users/{{id}}\"\nfunction = \"echo\"\n"
    ))
}

#[test]
fn forged_gateway_and_forwarding_headers_are_replaced() {
    let gw = gateway("");
    for path in ["/function/echo/", "/users/42"] {
        let headers = forged_call(&gw, path);
        assert!(
            headers.get("x-defrost-param-x").is_none(),
            "{path}: {headers}"
        );
        assert_eq!(headers["x-defrost-function-name"], "echo", "{path}");
        assert_eq!(headers["x-forwarded-proto"], "http", "{path}");
        assert_eq!(headers["x-forwarded-host"], gw.addr.to_string(), "{path}");
        // A list: the client's entry stays, the gateway's own observation comes last.
        assert_eq!(
            headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1",
            "{path}"
        );
    }
    let trigger = forged_call(&gw, "/users/42");
    assert_eq!(trigger["x-defrost-param-id"], "42");
    let direct = forged_call(&gw, "/function/echo/");
    assert!(direct.get("x-defrost-param-id").is_none(), "{direct}");
}

#[test]
fn a_trusted_proxy_keeps_its_forwarding_headers_but_not_the_gateways() {
    let gw = gateway("trusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1\"]");
    let headers = forged_call(&gw, "/users/42");
    assert_eq!(headers["x-forwarded-proto"], "https");
    assert_eq!(headers["x-forwarded-host"], "forged.example");
    assert_eq!(headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(headers["x-defrost-param-id"], "42");
    assert!(headers.get("x-defrost-param-x").is_none(), "{headers}");
    assert_eq!(headers["x-defrost-function-name"], "echo");
}

#[test]
fn a_trusted_range_elsewhere_does_not_trust_this_peer() {
    let gw = gateway("trusted_proxies = [\"10.0.0.0/8\", \"::1\"]");
    let headers = forged_call(&gw, "/function/echo/");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], gw.addr.to_string());
}
