//! Header rewriting between client and function, both ways.
//!
//! Hop-by-hop headers describe one connection and must not cross the gateway; neither do the
//! headers the gateway speaks for itself (`X-Defrost-*`: a client must not forge a trigger's
//! path parameters). Everything else passes through untouched.
//!
//! The forwarding headers tell the function who really called it. The lists (`X-Forwarded-For`,
//! `Forwarded`) are appended to, whoever the peer is: their last entry is always the gateway's
//! own observation, as with nginx's `$proxy_add_x_forwarded_for`, and earlier entries are only
//! as good as the peer that sent them. The single-valued `X-Forwarded-Proto` and
//! `X-Forwarded-Host` cannot say who wrote them, so they are kept only from a trusted proxy and
//! otherwise replaced by what the gateway saw.
//!
//! The request side is built straight into the `HeaderMap` the upstream client sends, with the
//! gateway's own names as constants and its values formatted by hand: this runs on every call,
//! and the general formatting machinery once cost more than all the rest of it.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use ureq::http::header::{HeaderMap, HeaderName, HeaderValue};

/// Names as the gateway writes them in its responses.
pub const X_CALL_ID: &str = "X-Call-Id";
pub const X_START_TIME: &str = "X-Start-Time";

const CALL_ID: HeaderName = HeaderName::from_static("x-call-id");
const START_TIME: HeaderName = HeaderName::from_static("x-start-time");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
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
pub fn request_header<'r>(
    request: &'r defrost_http::Request,
    name: &'static str,
) -> Option<&'r str> {
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str())
}

/// Who called, as the forwarding headers tell it.
pub struct Forwarding<'a> {
    /// The client's address, for `X-Forwarded-For` and `Forwarded`.
    pub client: Option<SocketAddr>,
    /// The `Host` the client asked for.
    pub host: Option<&'a str>,
    /// The scheme the client used.
    pub proto: &'a str,
    /// The peer is a trusted proxy: its `X-Forwarded-Proto` and `X-Forwarded-Host` stand.
    pub trusted: bool,
}

/// Prefix of the headers the gateway sets for the function (`X-Defrost-Function-Name`,
/// `X-Defrost-Param-{name}`, ...); the client's are never passed on.
const GATEWAY_PREFIX: &str = "x-defrost-";

/// Whether a client header claims something only the gateway (or a trusted proxy, for the
/// forwarding headers) may say.
fn is_claim(name: &str, trusted: bool) -> bool {
    let own = name
        .get(..GATEWAY_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(GATEWAY_PREFIX));
    own || (!trusted
        && (name.eq_ignore_ascii_case(FORWARDED_HOST.as_str())
            || name.eq_ignore_ascii_case(FORWARDED_PROTO.as_str())))
}

/// A client header that cannot be sent on: its name or value is not valid HTTP.
#[derive(Debug, PartialEq, Eq)]
pub struct Unsendable(pub String);

/// The request head as it goes to the function.
pub struct Outgoing {
    pub headers: HeaderMap,
    /// The caller's `X-Call-Id`, or a new one; also returned to the caller.
    pub call_id: HeaderValue,
    /// When the gateway took the call, in nanoseconds since the epoch; also returned.
    pub start_time: HeaderValue,
}

/// A header as the upstream client takes it, or the name of one that is not valid HTTP.
pub fn parse(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), Unsendable> {
    HeaderName::from_bytes(name.as_bytes())
        .ok()
        .zip(HeaderValue::from_str(value).ok())
        .ok_or_else(|| Unsendable(name.to_owned()))
}

/// Builds the function's request head from the client's headers: hop-by-hop ones and forged
/// claims dropped, forwarding headers added, call id kept or made, start time stamped.
pub fn outgoing<'h>(
    received: impl Iterator<Item = (&'h str, &'h str)> + Clone,
    fwd: &Forwarding<'_>,
) -> Result<Outgoing, Unsendable> {
    let connection = received
        .clone()
        .find(|(n, _)| n.eq_ignore_ascii_case("connection"))
        .map(|(_, v)| v);
    let mut headers = HeaderMap::with_capacity(16);
    let passed =
        received.filter(|(n, _)| !is_hop_by_hop(n, connection) && !is_claim(n, fwd.trusted));
    for (name, value) in passed {
        let (name, value) = parse(name, value)?;
        headers.append(name, value);
    }
    add_forwarding(&mut headers, fwd);
    // `insert` replaces whatever the client sent under these names
    let call_id = headers.get(CALL_ID).cloned().unwrap_or_else(new_call_id);
    let start_time = start_time();
    headers.insert(CALL_ID, call_id.clone());
    headers.insert(START_TIME, start_time.clone());
    Ok(Outgoing {
        headers,
        call_id,
        start_time,
    })
}

/// Adds the forwarding headers: `X-Forwarded-For` and `Forwarded` extend what earlier proxies
/// said, `X-Forwarded-Host` and `X-Forwarded-Proto` are only set when none came (from an
/// untrusted peer, none ever comes: [`is_claim`] dropped them).
fn add_forwarding(headers: &mut HeaderMap, fwd: &Forwarding<'_>) {
    let mut ip = String::new();
    if let Some(addr) = fwd.client {
        push_ip(&mut ip, addr.ip());
        append(headers, FORWARDED_FOR, &ip);
    }
    if let Some(host) = fwd.host {
        set_if_absent(headers, FORWARDED_HOST, host);
    }
    set_if_absent(headers, FORWARDED_PROTO, fwd.proto);
    append(headers, FORWARDED, &forwarded_element(fwd, &ip));
}

/// One `Forwarded` element (RFC 7239) for this hop.
fn forwarded_element(fwd: &Forwarding<'_>, ip: &str) -> String {
    let mut element = String::with_capacity(64);
    match fwd.client {
        Some(SocketAddr::V4(_)) => {
            element.push_str("for=");
            element.push_str(ip);
            element.push(';');
        }
        Some(SocketAddr::V6(_)) => {
            element.push_str("for=\"[");
            element.push_str(ip);
            element.push_str("]\";");
        }
        None => (),
    }
    if let Some(host) = fwd.host.filter(|h| is_token_safe(h)) {
        element.push_str("host=");
        element.push_str(host);
        element.push(';');
    }
    element.push_str("proto=");
    element.push_str(fwd.proto);
    element
}

/// Writes an address the way `Display` does, IPv4 without the formatting machinery.
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_decimal(out, u64::from(octet));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

fn push_decimal(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(digits[i..].iter().map(|&d| char::from(d)));
}

fn is_token_safe(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b))
}

/// Adds `value` to the list in `name`, all earlier lines joined into one, earliest first.
fn append(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    let mut joined = String::new();
    for earlier in headers.get_all(&name) {
        if let Ok(earlier) = earlier.to_str() {
            joined.push_str(earlier);
            joined.push_str(", ");
        }
    }
    joined.push_str(value);
    if let Ok(joined) = HeaderValue::try_from(joined) {
        headers.insert(name, joined);
    }
}

fn set_if_absent(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if headers.contains_key(&name) {
        return;
    }
    let value = match value {
        "http" => Ok(HeaderValue::from_static("http")),
        "https" => Ok(HeaderValue::from_static("https")),
        other => HeaderValue::from_str(other),
    };
    if let Ok(value) = value {
        headers.insert(name, value);
    }
}

/// A fresh call id, as text.
pub fn new_call_id_string() -> String {
    String::from_utf8_lossy(new_call_id().as_bytes()).into_owned()
}

/// A fresh call id, formatted like a UUID: unique per process run and hard to guess.
fn new_call_id() -> HeaderValue {
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
    // 8-4-4-4-12 hex digits: 32 bits, 16, 16, 16, 48
    let digits = [
        (a >> 32, 8),
        ((a >> 16) & 0xffff, 4),
        (a & 0xffff, 4),
        (b >> 48, 4),
    ];
    let mut id = Vec::with_capacity(36);
    for (value, width) in digits {
        push_hex(&mut id, value, width);
        id.push(b'-');
    }
    push_hex(&mut id, b & 0xffff_ffff_ffff, 12);
    HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("0"))
}

fn push_hex(out: &mut Vec<u8>, value: u64, width: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..width).rev() {
        out.push(HEX[((value >> (shift * 4)) & 0xf) as usize]);
    }
}

/// Nanoseconds since the epoch, as the OpenFaaS watchdog stamps `X-Start-Time`.
pub fn start_time() -> HeaderValue {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    HeaderValue::from(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(headers: &HeaderMap) -> Vec<(String, String)> {
        headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect()
    }

    fn fwd(client: &str) -> Forwarding<'static> {
        Forwarding {
            client: Some(client.parse().unwrap()),
            host: Some("gw.example:8080"),
            proto: "http",
            trusted: false,
        }
    }

    const CLAIMS: [(&str, &str); 4] = [
        ("X-Forwarded-Proto", "https"),
        ("x-forwarded-host", "forged.example"),
        ("X-Defrost-Param-id", "forged"),
        ("x-defrost-function-name", "forged"),
    ];

    #[test]
    fn an_untrusted_peer_cannot_claim_scheme_host_or_gateway_headers() {
        let out = outgoing(CLAIMS.into_iter(), &fwd("127.0.0.1:1")).unwrap();
        assert_eq!(out.headers["x-forwarded-proto"], "http");
        assert_eq!(out.headers["x-forwarded-host"], "gw.example:8080");
        assert!(!out
            .headers
            .keys()
            .any(|n| n.as_str().starts_with("x-defrost-")));
    }

    #[test]
    fn a_trusted_proxy_keeps_scheme_and_host_but_not_gateway_headers() {
        let trusted = Forwarding {
            trusted: true,
            ..fwd("127.0.0.1:1")
        };
        let out = outgoing(CLAIMS.into_iter(), &trusted).unwrap();
        assert_eq!(out.headers["x-forwarded-proto"], "https");
        assert_eq!(out.headers["x-forwarded-host"], "forged.example");
        assert!(!out
            .headers
            .keys()
            .any(|n| n.as_str().starts_with("x-defrost-")));
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
        let received = [
            ("x-forwarded-for", "10.0.0.1"),
            ("X-Forwarded-For", "10.0.0.2"),
            ("Forwarded", "for=10.0.0.1"),
            ("Connection", "keep-alive, X-Hop"),
            ("X-Hop", "dropped"),
            ("Accept", "*/*"),
        ];
        let out = outgoing(received.into_iter(), &fwd("127.0.0.1:5000")).unwrap();
        let mut got = pairs(&out.headers);
        got.retain(|(n, _)| n != "x-call-id" && n != "x-start-time");
        got.sort();
        assert_eq!(
            got,
            [
                ("accept", "*/*"),
                (
                    "forwarded",
                    "for=10.0.0.1, for=127.0.0.1;host=gw.example:8080;proto=http"
                ),
                ("x-forwarded-for", "10.0.0.1, 10.0.0.2, 127.0.0.1"),
                ("x-forwarded-host", "gw.example:8080"),
                ("x-forwarded-proto", "http"),
            ]
            .map(|(n, v)| (n.to_string(), v.to_string()))
        );
    }

    #[test]
    fn ipv6_clients_are_quoted_in_forwarded() {
        let out = outgoing(std::iter::empty(), &fwd("[::1]:80")).unwrap();
        assert_eq!(
            out.headers["forwarded"],
            "for=\"[::1]\";host=gw.example:8080;proto=http"
        );
        assert_eq!(out.headers["x-forwarded-for"], "::1");
    }

    #[test]
    fn call_ids_are_kept_or_made_unique() {
        let kept = outgoing([("X-Call-Id", "abc")].into_iter(), &fwd("127.0.0.1:1")).unwrap();
        assert_eq!(kept.call_id, "abc");
        assert_eq!(kept.headers.get_all("x-call-id").iter().count(), 1);
        let (a, b) = (new_call_id(), new_call_id());
        assert_ne!(a, b);
        let a = a.to_str().unwrap();
        assert_eq!(a.len(), 36);
        let groups: Vec<usize> = a.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
        assert!(a.bytes().all(|c| c == b'-' || c.is_ascii_hexdigit()));
    }

    #[test]
    fn a_start_time_sent_by_the_client_is_replaced() {
        let out = outgoing([("X-Start-Time", "1")].into_iter(), &fwd("127.0.0.1:1")).unwrap();
        let stamped: u64 = out.start_time.to_str().unwrap().parse().unwrap();
        assert!(stamped > 1_600_000_000_000_000_000);
        assert_eq!(out.headers.get_all("x-start-time").iter().count(), 1);
    }

    #[test]
    fn a_header_that_is_not_valid_http_is_refused_by_name() {
        let bad = outgoing([("Bad Name", "x")].into_iter(), &fwd("127.0.0.1:1"));
        assert_eq!(bad.err(), Some(Unsendable("Bad Name".into())));
    }
}
