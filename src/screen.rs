//! Requests refused before routing, whatever route they would name.
//!
//! defrost is a reverse proxy in front of functions. Anything only a forward proxy acts on
//! (`CONNECT`, absolute-form and authority-form targets) is refused outright: answering it
//! with "not found" would still invite a scanner to keep trying, and acting on it would make
//! the gateway an open relay.
//!
//! A path with a `..` segment is refused too, also when the dots or the slashes are
//! percent-encoded. The router already keeps the function name a DNS label, but the rest of the
//! path is handed on as sent, and a next hop that resolves dot segments (a remote provider's
//! `/function/{name}` route, or a gateway behind `/system/`) would turn `/function/a/../b`
//! into a call to `b`, under the gateway's own provider credentials.

use crate::error::Error;

/// Refuses what must never be routed; everything else goes on to the router.
pub fn screen(method: &str, target: &str) -> Result<(), Error> {
    if method.eq_ignore_ascii_case("CONNECT") {
        return Err(Error::NotAProxy("CONNECT"));
    }
    if !target.starts_with('/') {
        return Err(Error::NotAProxy(if target.contains("://") {
            "absolute-form request target"
        } else {
            "request target not in origin form"
        }));
    }
    let (path, _) = crate::router::split_target(target);
    if has_dot_dot_segment(path) {
        return Err(Error::BadRequest(
            "invalid path: it has a \"..\" segment (plain or percent-encoded)".into(),
        ));
    }
    Ok(())
}

/// Whether any segment is `..` once percent-decoded, counting `\` and encoded slashes as
/// separators, as the most lenient next hop would.
fn has_dot_dot_segment(path: &str) -> bool {
    // Without a dot or an escape there is nothing to decode: the common case stays cheap.
    if !path.contains(['.', '%']) {
        return false;
    }
    percent_decode(path.as_bytes())
        .split(|b| *b == b'/' || *b == b'\\')
        .any(|segment| segment == b"..")
}

/// One round of percent-decoding; a `%` not followed by two hex digits is kept as it is.
fn percent_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let escaped = (input[i] == b'%')
            .then(|| Some((hex(*input.get(i + 1)?)?, hex(*input.get(i + 2)?)?)))
            .flatten();
        match escaped {
            Some((high, low)) => {
                out.push(high << 4 | low);
                i += 3;
            }
            None => {
                out.push(input[i]);
                i += 1;
            }
        }
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_proxy_requests_are_refused() {
        for (method, target) in [
            ("CONNECT", "example.com:443"),
            ("connect", "/function/echo"),
            ("GET", "http://example.com/function/echo"),
            ("GET", "example.com:80"),
            ("OPTIONS", "*"),
        ] {
            let e = screen(method, target).unwrap_err();
            assert_eq!(e.status(), 400, "{method} {target}");
        }
    }

    #[test]
    fn dot_dot_segments_are_refused_however_encoded() {
        for target in [
            "/function/echo/../other",
            "/function/echo/..",
            "/function/echo/%2e%2e/other",
            "/function/echo/%2E./other",
            "/function/echo/a%2f..%2fother",
            "/function/echo/a%5c..%5cother",
            "/function/echo\\..\\other",
            "/system/../function/other",
        ] {
            assert!(screen("GET", target).is_err(), "{target} accepted");
        }
    }

    #[test]
    fn ordinary_paths_pass() {
        for target in [
            "/function/echo",
            "/function/echo/a/b%2Fc?x=..",
            "/function/echo/file..txt/...",
            "/function/echo/./a",
            "/function/echo/%zz%2",
            "/healthz",
        ] {
            assert!(screen("POST", target).is_ok(), "{target} refused");
        }
    }
}
