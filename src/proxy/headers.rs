//! Header rewriting between client and function, both ways.
//!
//! Hop-by-hop headers describe one connection and must not cross the gateway; everything else
//! passes through untouched. The forwarding headers tell the function who really called it,
//! appended to what earlier proxies said rather than replacing it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub const X_CALL_ID: &str = "X-Call-Id";
pub const X_START_TIME: &str = "X-Start-Time";

/// Headers that belong to a single connection (RFC 9110 §7.6.1), plus the framing headers the
/// gateway sets itself on each side.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
    "expect",
];

/// Whether `name` must not be copied across, given the `Connection` header's own list.
pub fn is_hop_by_hop(name: &str, connection: Option<&str>) -> bool {
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
        || connection.is_some_and(|list| {
            list.split(',')
                .any(|token| token.trim().eq_ignore_ascii_case(name))
        })
}

/// The value of a request header, first occurrence, matched without regard to case.
pub fn request_header<'r>(request: &'r tiny_http::Request, name: &'static str) -> Option<&'r str> {
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str())
}

/// What the gateway adds to a forwarded request.
pub struct Forwarding<'a> {
    pub client: Option<SocketAddr>,
    pub host: Option<&'a str>,
    pub proto: &'a str,
}

/// Rewrites the forwarding headers in `headers` (name, value pairs as received, hop-by-hop
/// already removed): appends to `X-Forwarded-For` and `Forwarded`, sets `X-Forwarded-Host`
/// and `X-Forwarded-Proto` when absent.
pub fn add_forwarding(headers: &mut Vec<(String, String)>, fwd: &Forwarding<'_>) {
    let client_ip = fwd.client.map(|a| a.ip().to_string());
    if let Some(ip) = &client_ip {
        append(headers, "X-Forwarded-For", ip);
    }
    if let Some(host) = fwd.host {
        set_if_absent(headers, "X-Forwarded-Host", host);
    }
    set_if_absent(headers, "X-Forwarded-Proto", fwd.proto);
    append(headers, "Forwarded", &forwarded_element(fwd));
}

/// One `Forwarded` element (RFC 7239): `for=...;host=...;proto=...`.
fn forwarded_element(fwd: &Forwarding<'_>) -> String {
    let mut parts = Vec::with_capacity(3);
    if let Some(addr) = fwd.client {
        parts.push(match addr {
            SocketAddr::V4(a) => format!("for={}", a.ip()),
            SocketAddr::V6(a) => format!("for=\"[{}]\"", a.ip()),
        });
    }
    if let Some(host) = fwd.host.filter(|h| is_token_safe(h)) {
        parts.push(format!("host={host}"));
    }
    parts.push(format!("proto={}", fwd.proto));
    parts.join(";")
}

/// A host value that can stand unquoted in `Forwarded`.
fn is_token_safe(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b))
}

fn position(headers: &[(String, String)], name: &str) -> Option<usize> {
    headers
        .iter()
        .position(|(n, _)| n.eq_ignore_ascii_case(name))
}

fn append(headers: &mut Vec<(String, String)>, name: &str, value: &str) {
    match position(headers, name) {
        Some(i) => {
            let existing = &mut headers[i].1;
            existing.push_str(", ");
            existing.push_str(value);
        }
        None => headers.push((name.to_owned(), value.to_owned())),
    }
}

fn set_if_absent(headers: &mut Vec<(String, String)>, name: &str, value: &str) {
    if position(headers, name).is_none() {
        headers.push((name.to_owned(), value.to_owned()));
    }
}

/// The request's call id: the client's own when it sent one, else a new one.
pub fn call_id(headers: &[(String, String)]) -> String {
    match position(headers, X_CALL_ID) {
        Some(i) => headers[i].1.clone(),
        None => new_call_id(),
    }
}

/// A 128-bit id, unique within the process and unpredictable across processes, in UUID form.
fn new_call_id() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    thread_local!(static SEED: RandomState = RandomState::new());
    let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let (a, b) = SEED.with(|seed| {
        let mut h = seed.build_hasher();
        h.write_u64(seq);
        let a = h.finish();
        h.write_u64(a);
        (a, h.finish())
    });
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

/// Nanoseconds since the Unix epoch, as OpenFaaS writes `X-Start-Time`.
pub fn start_time() -> String {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn hop_by_hop_includes_connection_tokens() {
        assert!(is_hop_by_hop("Transfer-Encoding", None));
        assert!(is_hop_by_hop("x-secret-hop", Some("close, X-Secret-Hop")));
        assert!(!is_hop_by_hop("X-Custom", Some("keep-alive")));
        assert!(!is_hop_by_hop("Content-Type", None));
    }

    #[test]
    fn forwarding_headers_append_and_set() {
        let mut headers = h(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("Forwarded", "for=10.0.0.1"),
        ]);
        let fwd = Forwarding {
            client: Some("127.0.0.1:5000".parse().unwrap()),
            host: Some("gw.example:8080"),
            proto: "http",
        };
        add_forwarding(&mut headers, &fwd);
        assert_eq!(
            headers,
            h(&[
                ("x-forwarded-for", "10.0.0.1, 127.0.0.1"),
                (
                    "Forwarded",
                    "for=10.0.0.1, for=127.0.0.1;host=gw.example:8080;proto=http"
                ),
                ("X-Forwarded-Host", "gw.example:8080"),
                ("X-Forwarded-Proto", "http"),
            ])
        );
    }

    #[test]
    fn ipv6_clients_are_quoted_in_forwarded() {
        let mut headers = Vec::new();
        let fwd = Forwarding {
            client: Some("[::1]:80".parse().unwrap()),
            host: None,
            proto: "http",
        };
        add_forwarding(&mut headers, &fwd);
        assert!(headers.contains(&("Forwarded".into(), "for=\"[::1]\";proto=http".into())));
    }

    #[test]
    fn call_ids_are_kept_or_made_unique() {
        assert_eq!(call_id(&h(&[("x-call-id", "abc")])), "abc");
        let (a, b) = (call_id(&[]), call_id(&[]));
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
    }
}
