//! What a function answers in its headers reaches the client as it was sent, byte for byte.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn header_values_beyond_ascii_are_relayed_exactly_and_in_order() {
    let gw = echo_gateway("");
    let mut conn = RawConn::open(gw.addr, Duration::from_secs(20));
    conn.send(b"GET /function/echo/header-utf8 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let answer = conn.response().unwrap();
    assert_eq!(answer.status, 200);
    let sent: [(&str, &[u8]); 4] = [
        ("X-Before", b"1"),
        (
            "Content-Disposition",
            "attachment; filename=\"na\u{ef}ve.txt\"".as_bytes(),
        ),
        ("X-Latin1", b"caf\xe9"),
        ("X-After", b"2"),
    ];
    // names are case-insensitive (and come lower-cased through the gateway); values are not
    let relayed: Vec<(String, &[u8])> = answer
        .headers
        .iter()
        .filter(|(name, _)| sent.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.as_slice()))
        .collect();
    let sent: Vec<(String, &[u8])> = sent
        .iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), *value))
        .collect();
    assert_eq!(relayed, sent, "{:?}", answer.headers);
    // the connection is still in order for the next call
    conn.send(b"GET /function/echo/after HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(conn.response().unwrap().status, 200);
}
