//! Which peers may speak for the client: the `[gateway] trusted_proxies` list.
//!
//! A client can write any `X-Forwarded-Proto` or `X-Forwarded-Host` it likes; a function that
//! builds redirects or checks the scheme from them would believe it. Only a proxy in front of
//! the gateway, named here by address or range, is taken at its word.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

/// One address (`10.1.2.3`, `::1`) or CIDR range (`10.0.0.0/8`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Whether `ip` is in the range. An IPv4 peer seen on an IPv6 socket (`::ffff:a.b.c.d`)
    /// is the IPv4 peer it stands for.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                same_prefix(u32::from(net).into(), u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                same_prefix(u128::from(net), u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

/// Whether the first `prefix` of `bits` bits of `a` and `b` agree.
fn same_prefix(a: u128, b: u128, prefix: u8, bits: u8) -> bool {
    let ignored = u32::from(bits - prefix);
    a.checked_shr(ignored).unwrap_or(0) == b.checked_shr(ignored).unwrap_or(0)
}

/// Whether `peer` is one of `trusted`.
pub fn is_trusted(trusted: &[IpRange], peer: Option<IpAddr>) -> bool {
    peer.is_some_and(|ip| trusted.iter().any(|range| range.contains(ip)))
}

impl FromStr for IpRange {
    type Err = String;

    fn from_str(text: &str) -> Result<IpRange, String> {
        let bad = |why: &str| {
            format!("{text:?} is not an IP address or CIDR range ({why}; write e.g. \"127.0.0.1\", \"10.0.0.0/8\" or \"::1\")")
        };
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| bad("bad address"))?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| bad(&format!("the prefix length must be 0 to {bits}")))?,
        };
        Ok(IpRange { network, prefix })
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = if self.network.is_ipv4() { 32 } else { 128 };
        if self.prefix == bits {
            write!(f, "{}", self.network)
        } else {
            write!(f, "{}/{}", self.network, self.prefix)
        }
    }
}

impl<'de> Deserialize<'de> for IpRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<IpRange, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

/// Written back the way it is read.
impl Serialize for IpRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(s: &str) -> IpRange {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_and_ranges_match_what_they_cover() {
        assert!(range("127.0.0.1").contains(ip("127.0.0.1")));
        assert!(!range("127.0.0.1").contains(ip("127.0.0.2")));
        assert!(range("10.0.0.0/8").contains(ip("10.255.1.2")));
        assert!(!range("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(range("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(!range("0.0.0.0/0").contains(ip("::1")));
        assert!(range("::1").contains(ip("::1")));
        assert!(range("fd00::/8").contains(ip("fd12::3")));
        assert!(range("::/0").contains(ip("2001:db8::1")));
        assert!(range("127.0.0.1").contains(ip("::ffff:127.0.0.1")));
    }

    #[test]
    fn bad_entries_are_named_in_the_error() {
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "localhost",
            "",
            "1.2.3.4/",
            "1.2.3.4/x",
        ] {
            let err = bad.parse::<IpRange>().unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn ranges_are_written_back_as_read() {
        for text in ["127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8"] {
            assert_eq!(range(text).to_string(), text);
        }
    }

    #[test]
    fn no_peer_is_never_trusted() {
        assert!(!is_trusted(&[range("0.0.0.0/0")], None));
        assert!(!is_trusted(&[], Some(ip("127.0.0.1"))));
        assert!(is_trusted(
            &[range("::1"), range("127.0.0.1")],
            Some(ip("127.0.0.1"))
        ));
    }
}
