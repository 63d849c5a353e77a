//! HTTP basic authentication for the gateway's `/system/*` routes, as the OpenFaaS gateway does
//! it: credentials read from `basic-auth-user` and `basic-auth-password` in a secrets folder.
//!
//! Comparison is constant-time in the credential bytes so that response timing does not leak
//! how much of a guess was right.

use std::fmt;
use std::io;
use std::path::Path;

/// A user and password pair.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Credentials {{ user: {:?}, password: <hidden> }}",
            self.user
        )
    }
}

impl Credentials {
    /// Reads `basic-auth-user` and `basic-auth-password` from `dir` (trailing newlines are
    /// dropped, as secrets written with `echo` have them).
    pub fn from_dir(dir: &Path) -> io::Result<Credentials> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))
                })
        };
        let credentials = Credentials {
            user: read("basic-auth-user")?,
            password: read("basic-auth-password")?,
        };
        if credentials.user.is_empty() || credentials.password.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "empty basic-auth-user or basic-auth-password in {}",
                    dir.display()
                ),
            ));
        }
        Ok(credentials)
    }

    /// The `Authorization` header value that presents these credentials.
    pub fn header_value(&self) -> String {
        format!(
            "Basic {}",
            encode(format!("{}:{}", self.user, self.password).as_bytes())
        )
    }

    /// Whether an `Authorization` header value presents these credentials.
    pub fn accepts(&self, header: Option<&str>) -> bool {
        let Some(presented) = header.and_then(parse_basic) else {
            return false;
        };
        let (user, password) = presented;
        // Evaluate both comparisons whatever the first says.
        let user_ok = constant_time_eq(user.as_bytes(), self.user.as_bytes());
        let password_ok = constant_time_eq(password.as_bytes(), self.password.as_bytes());
        user_ok & password_ok
    }
}

/// `Basic base64(user:password)` → (user, password).
fn parse_basic(header: &str) -> Option<(String, String)> {
    let (scheme, token) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(decode(token.trim())?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn encode(input: &[u8]) -> String {
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64, padding optional; `None` on anything else.
pub fn decode(input: &str) -> Option<Vec<u8>> {
    let digits = input.trim_end_matches('=');
    if digits.len() % 4 == 1 || input.len() - digits.len() > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in digits.bytes() {
        let v = ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for s in ["", "a", "ab", "abc", "admin:s3cr3t:with:colons", "ünï"] {
            assert_eq!(decode(&encode(s.as_bytes())).unwrap(), s.as_bytes());
        }
        assert_eq!(encode(b"admin:admin"), "YWRtaW46YWRtaW4=");
        assert!(decode("a").is_none() && decode("!!!!").is_none());
    }

    #[test]
    fn accepts_only_the_right_pair() {
        let c = Credentials {
            user: "admin".into(),
            password: "pw".into(),
        };
        assert!(c.accepts(Some(&c.header_value())));
        assert!(c.accepts(Some("basic YWRtaW46cHc=")));
        assert!(!c.accepts(Some("Basic YWRtaW46cHd4")), "wrong password");
        assert!(!c.accepts(Some("Bearer YWRtaW46cHc=")));
        assert!(!c.accepts(Some("Basic ???")));
        assert!(!c.accepts(None));
        assert!(!format!("{c:?}").contains("pw"));
    }

    #[test]
    fn reads_secret_files() {
        let dir = std::env::temp_dir().join(format!("defrost-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("basic-auth-user"), "admin\n").unwrap();
        std::fs::write(dir.join("basic-auth-password"), "pw\n").unwrap();
        let c = Credentials::from_dir(&dir).unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("admin", "pw"));
        std::fs::remove_file(dir.join("basic-auth-password")).unwrap();
        assert!(Credentials::from_dir(&dir)
            .unwrap_err()
            .to_string()
            .contains("basic-auth-password"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
