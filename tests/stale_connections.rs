//! Replicas close kept-alive connections, or die, between calls: a call that finds its pooled
//! connection closed before any answer is sent again on a new one, when sending it twice can
//! do no harm, and never otherwise.

mod common;

use std::thread;
use std::time::Duration;

use common::*;

/// One worker, so every call goes through the same connection pool: each call finds the
/// connection the call before it left there.
const ONE_POOL: &str = "[gateway]\nready_timeout = \"20s\"\nworkers = 1\n";

fn retries(gw: &Defrost, expected: f64) -> f64 {
    let series =
        r#"defrost_upstream_retries_total{function_name="echo.default",reason="stale_connection"}"#;
    gw.scrape_when(|s| s.value(series) == Some(expected))
        .get(series)
}

/// How many times the function received `path`.
fn arrivals(gw: &Defrost, path: &str) -> usize {
    received(gw).iter().filter(|p| *p == path).count()
}

#[test]
fn a_function_that_drops_kept_alive_connections_costs_gets_nothing_and_posts_a_502() {
    let function = echo_function(
        "echo",
        r#"REQUESTS_FILE = "$DIR/requests", DROP_KEPT_ALIVE = "1""#,
        "",
    );
    let gw = Defrost::start(&format!("{ONE_POOL}{function}"));
    const CALLS: usize = 20;
    for i in 0..CALLS {
        let path = format!("/function/echo/call/{i}");
        let request = if i % 2 == 0 {
            agent().get(&gw.url(&path)).call()
        } else {
            agent().options(&gw.url(&path)).call()
        };
        let reply = read_reply(request.unwrap());
        assert_eq!(reply.status, 200, "call {i}: {}", reply.body);
        assert_eq!(reply.json()["path"], format!("/call/{i}"));
    }
    // The first call opened the connection; each later one found it dropped, was sent again
    // on a new one and answered there.
    let dropped = CALLS as f64 - 1.0;
    assert_eq!(retries(&gw, dropped), dropped);
    assert_eq!(arrivals(&gw, "/call/0"), 1);
    for i in 1..CALLS {
        assert_eq!(arrivals(&gw, &format!("/call/{i}")), 2, "call {i}");
    }

    // A body already on its way is never sent twice: the client gets a 502, the function saw
    // the call once and answered it never.
    let post = post_json(&gw.url("/function/echo/with-body"), "{\"n\": 1}");
    assert_eq!(post.status, 502, "{}", post.body);
    assert_eq!(arrivals(&gw, "/with-body"), 1);

    // Nor is a POST without a body: the function may have acted on it.
    assert_eq!(get(&gw.url("/function/echo/warm")).status, 200);
    let empty = post_empty(&gw.url("/function/echo/without-body"));
    assert_eq!(empty.status, 502, "{}", empty.body);
    assert_eq!(arrivals(&gw, "/without-body"), 1);
    assert_eq!(retries(&gw, dropped), dropped, "neither was sent again");
}

/// The pid of the replica that answered.
fn pid_of(reply: &Reply) -> u32 {
    let pid = reply.json()["pid"].as_u64().expect("a pid");
    u32::try_from(pid).unwrap()
}

#[test]
fn replicas_killed_between_and_during_gets_cost_no_502() {
    let function = echo_function(
        "echo",
        r#"REQUESTS_FILE = "$DIR/requests""#,
        "min_replicas = 1",
    );
    let gw = Defrost::start(&format!("{ONE_POOL}{function}"));
    let call = |path: &str| {
        let reply = get(&gw.url(&format!("/function/echo{path}")));
        assert_eq!(
            reply.status,
            200,
            "{path}: {}\n{}",
            reply.body,
            gw.log_text()
        );
        reply
    };
    // Every kill counts towards the crash-loop back-off, which holds the next start back
    // (1 s, 2 s, 4 s...): a few rounds, many calls in each.
    const ROUNDS: usize = 2;
    for round in 0..ROUNDS {
        // Killed between calls: the next call may find the dead replica's connection in the
        // pool, or its address in the cache.
        let killed = pid_of(&call(&format!("/before-kill/{round}")));
        unsafe_kill(killed, "KILL");
        let mut last = 0;
        for i in 0..5 {
            last = pid_of(&call(&format!("/after-kill/{round}/{i}")));
            assert_ne!(last, killed, "answered by the replacement");
        }

        // Killed while it holds a GET that came on a pooled connection, before answering.
        let slow_path = format!("/sleep/1.{round}");
        let url = gw.url(&format!("/function/echo{slow_path}"));
        let slow = thread::spawn(move || get(&url));
        assert!(
            eventually(Duration::from_secs(10), || arrivals(&gw, &slow_path) == 1),
            "round {round}: the slow call arrived"
        );
        unsafe_kill(last, "KILL");
        let slow = slow.join().unwrap();
        assert_eq!(slow.status, 200, "{}\n{}", slow.body, gw.log_text());
        assert_ne!(pid_of(&slow), last, "answered by the replacement");
        assert_eq!(
            arrivals(&gw, &slow_path),
            2,
            "round {round}: sent once more"
        );
    }
    let series =
        r#"defrost_upstream_retries_total{function_name="echo.default",reason="stale_connection"}"#;
    let scrape = gw.scrape_when(|s| s.value(series).is_some_and(|n| n >= ROUNDS as f64));
    assert!(scrape.get(series) >= ROUNDS as f64, "{}", scrape.0);
}
