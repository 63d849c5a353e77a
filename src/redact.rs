//! What of a URL may be written to a log or an error body.
//!
//! Query strings carry tokens and signatures, and a provider URL may carry `user:password@`.
//! Logs are read by more people than the credentials are meant for, so every URL defrost
//! reports passes through here first.

/// The URL without its query and without any userinfo in its authority.
pub fn url(url: &str) -> String {
    let url = url.split_once('?').map_or(url, |(before, _)| before);
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    match scheme {
        Some(scheme) => format!("{scheme}://{host}{path}"),
        None => format!("{host}{path}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn queries_and_userinfo_are_dropped() {
        assert_eq!(
            super::url("http://admin:s3cret@gw:8080/system/functions?token=abc"),
            "http://gw:8080/system/functions"
        );
        assert_eq!(
            super::url("http://127.0.0.1:9/a/b"),
            "http://127.0.0.1:9/a/b"
        );
        assert_eq!(super::url("http://127.0.0.1:9"), "http://127.0.0.1:9");
        assert_eq!(super::url("/p?x=1"), "/p");
    }
}
