//! `nats://[user:password@|token@]host[:port]`: where the server is and how to log in.

use super::Error;

/// The port NATS servers listen on unless told otherwise.
pub const DEFAULT_PORT: u16 = 4222;

/// A parsed server URL.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// `host:port`, for connecting.
    pub address: String,
    /// The credentials in the URL, if any.
    pub auth: Auth,
}

/// How the client logs in, from the URL's user part.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Auth {
    /// No credentials.
    #[default]
    None,
    /// `user:password@`.
    UserPassword(String, String),
    /// `token@`.
    Token(String),
}

// Credentials stay out of logs and error messages.
impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::None => "no credentials",
            Auth::UserPassword(..) => "user and password",
            Auth::Token(_) => "token",
        })
    }
}

impl std::fmt::Debug for ServerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "nats://{} ({:?})", self.address, self.auth)
    }
}

impl ServerUrl {
    /// Parses `nats://...`, `host:port` or `host`; user, password and token may be
    /// percent-encoded.
    pub fn parse(text: &str) -> Result<ServerUrl, Error> {
        let bad = |why: &str| Error::Url(format!("{why} (write nats://[user:password@]host:port)"));
        let rest = match text.trim().split_once("://") {
            Some(("nats", rest)) => rest,
            Some((scheme, _)) => {
                return Err(bad(&format!(
                    "scheme {scheme:?} is not supported, only nats"
                )))
            }
            None => text.trim(),
        };
        let rest = rest.trim_end_matches('/');
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        if hostport.is_empty() || hostport.contains(['/', '?', '#', ' ']) {
            return Err(bad("no host"));
        }
        let has_port = match hostport.rsplit_once(':') {
            // `[::1]` has colons but no port; `[::1]:4222` and `host:4222` have one.
            Some((host, port))
                if !host.ends_with(':') && (host.starts_with('[') == host.ends_with(']')) =>
            {
                port.parse::<u16>()
                    .map_err(|_| bad("the port is not a number"))?;
                true
            }
            _ => false,
        };
        let address = if has_port {
            hostport.to_string()
        } else {
            format!("{hostport}:{DEFAULT_PORT}")
        };
        let auth = match userinfo {
            None => Auth::None,
            Some(u) => match u.split_once(':') {
                Some((user, password)) => {
                    Auth::UserPassword(credential(user)?, credential(password)?)
                }
                None => Auth::Token(credential(u)?),
            },
        };
        Ok(ServerUrl { address, auth })
    }
}

/// A credential, percent-decoded: it may hold `@`, `:` or `/`.
fn credential(s: &str) -> Result<String, Error> {
    percent_decode(s).ok_or_else(|| Error::Url("a credential has a bad %-escape".into()))
}

/// Percent-decoding; `None` for a bad escape or a result that is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> (String, Auth) {
        let u = ServerUrl::parse(s).unwrap();
        (u.address, u.auth)
    }

    #[test]
    fn addresses_and_credentials() {
        assert_eq!(
            parse("nats://127.0.0.1:4333"),
            ("127.0.0.1:4333".into(), Auth::None)
        );
        assert_eq!(parse("localhost"), ("localhost:4222".into(), Auth::None));
        assert_eq!(parse("nats://[::1]"), ("[::1]:4222".into(), Auth::None));
        assert_eq!(parse("[::1]:5000/"), ("[::1]:5000".into(), Auth::None));
        assert_eq!(
            parse("nats://al%40ice:p%3Ass@nats:4222"),
            (
                "nats:4222".into(),
                Auth::UserPassword("al@ice".into(), "p:ss".into())
            )
        );
        assert_eq!(
            parse("nats://s3cret@nats"),
            ("nats:4222".into(), Auth::Token("s3cret".into()))
        );
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_credentials() {
        for bad in [
            "",
            "tls://nats:4222",
            "nats://",
            "nats://host:port",
            "nats://a:b@",
            "nats://x:1/path",
            "nats://u:%zz@h",
        ] {
            assert!(ServerUrl::parse(bad).is_err(), "{bad:?}");
        }
        let shown = format!("{:?}", ServerUrl::parse("nats://u:hunter2@h").unwrap());
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
