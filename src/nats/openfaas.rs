//! The message of an OpenFaaS asynchronous invocation, as its gateway publishes it for
//! `/async-function/{name}` and its queue-worker consumes it: faas-provider's Go
//! `types.QueueRequest`, encoded by Go's `encoding/json`.
//!
//! Go's encoding decides three things here: `Body` (a `[]byte`) is standard base64 with
//! padding; `Header` (an `http.Header`) maps each name to a list of values; and `CallbackUrl`
//! (a `*url.URL`, which has no JSON form of its own) is the URL's struct, its fields by name
//! (`{"Scheme":"http","Host":"...","Path":"/cb",...}`), which is what a Go reader needs back.
//! Fields tagged `omitempty` in Go are left out when empty, as Go does.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::url::percent_decode;
use super::Error;

/// The stream, and the subject it captures, that the OpenFaaS gateway publishes to and its
/// JetStream queue-worker reads by default (OpenFaaS's "shared queue").
pub const QUEUE: &str = "faas-request";

/// The durable consumer name OpenFaaS recommends for that stream: the queue name and
/// `-workers`.
pub const CONSUMER: &str = "faas-request-workers";

/// One queued invocation.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct QueueRequest {
    /// The request's headers, each name with its values.
    #[serde(
        rename = "Header",
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub header: BTreeMap<String, Vec<String>>,
    /// The request's `Host`.
    #[serde(rename = "Host", default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    /// The request's body.
    #[serde(
        rename = "Body",
        default,
        with = "base64_bytes",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub body: Vec<u8>,
    /// The request's method.
    #[serde(rename = "Method", default)]
    pub method: String,
    /// The path after the function's name (`/rest` of `/async-function/name/rest`).
    #[serde(rename = "Path", default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// The raw query string, without `?`.
    #[serde(
        rename = "QueryString",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub query_string: String,
    /// The function to call: `name` or `name.namespace`.
    #[serde(rename = "Function", default)]
    pub function: String,
    /// The queue it was published to, when not the default.
    #[serde(
        rename = "QueueName",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub queue_name: String,
    /// Function annotations passed on to the queue-worker.
    #[serde(
        rename = "Annotations",
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
    /// Function labels passed on to the queue-worker.
    #[serde(
        rename = "Labels",
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    /// Environment passed on to the queue-worker.
    #[serde(
        rename = "Environment",
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub environment: BTreeMap<String, String>,
    /// Where the function's answer is posted (`X-Callback-Url`), as URL text. Go cannot
    /// encode a URL's user and password in this field: they are not carried.
    #[serde(
        rename = "CallbackUrl",
        default,
        with = "go_url",
        skip_serializing_if = "Option::is_none"
    )]
    pub callback_url: Option<String>,
}

impl QueueRequest {
    /// The JSON document, as the OpenFaaS gateway writes it.
    pub fn to_json(&self) -> Vec<u8> {
        // Strings, byte lists and string maps always serialize.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a document written by the OpenFaaS gateway (or [`QueueRequest::to_json`]).
    pub fn from_json(document: &[u8]) -> Result<QueueRequest, Error> {
        serde_json::from_slice(document).map_err(|source| Error::Json {
            call: "an OpenFaaS QueueRequest".into(),
            source,
        })
    }
}

/// Go writes a nil map as `null` when it is not `omitempty`; other writers may too.
fn null_as_empty<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `[]byte` in Go's JSON: standard base64 with padding (`null` for nil).
mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = Option::<String>::deserialize(d)?.unwrap_or_default();
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| serde::de::Error::custom(format!("Body is not base64: {e}")))
    }
}

/// Go's `url.URL` as `encoding/json` writes it: its exported fields.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct GoUrl {
    #[serde(rename = "Scheme")]
    scheme: String,
    #[serde(rename = "Opaque")]
    opaque: String,
    /// `*url.Userinfo` has no exported field: Go writes `{}` or `null`.
    #[serde(rename = "User")]
    user: Option<serde_json::Value>,
    #[serde(rename = "Host")]
    host: String,
    #[serde(rename = "Path")]
    path: String,
    #[serde(rename = "RawPath")]
    raw_path: String,
    #[serde(rename = "OmitHost")]
    omit_host: bool,
    #[serde(rename = "ForceQuery")]
    force_query: bool,
    #[serde(rename = "RawQuery")]
    raw_query: String,
    #[serde(rename = "Fragment")]
    fragment: String,
    #[serde(rename = "RawFragment")]
    raw_fragment: String,
}

impl GoUrl {
    /// Splits `scheme://[user@]host/path?query#fragment` the way Go's `url.Parse` fills the
    /// fields (paths and fragments decoded, their raw form kept when it is not the default).
    fn parse(text: &str) -> GoUrl {
        let (rest, fragment) = text.split_once('#').unwrap_or((text, ""));
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        let mut url = GoUrl {
            raw_query: query.unwrap_or_default().to_string(),
            force_query: query == Some(""),
            ..GoUrl::default()
        };
        (url.fragment, url.raw_fragment) = decoded_and_raw(fragment);
        let rest = match rest.split_once(':') {
            Some((scheme, rest))
                if !scheme.is_empty()
                    && scheme
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) =>
            {
                url.scheme = scheme.to_ascii_lowercase();
                rest
            }
            _ => rest,
        };
        let path = match rest.strip_prefix("//") {
            Some(authority_and_path) => {
                let at = authority_and_path
                    .find('/')
                    .unwrap_or(authority_and_path.len());
                let authority = &authority_and_path[..at];
                url.host = authority
                    .rsplit_once('@')
                    .map_or(authority, |(_, h)| h)
                    .to_string();
                &authority_and_path[at..]
            }
            None if !url.scheme.is_empty() && !rest.starts_with('/') => {
                url.opaque = rest.to_string();
                ""
            }
            None => rest,
        };
        (url.path, url.raw_path) = decoded_and_raw(path);
        url
    }

    /// Go's `URL.String()`, without user information.
    fn text(&self) -> String {
        let mut out = String::new();
        if !self.scheme.is_empty() {
            out.push_str(&self.scheme);
            out.push(':');
        }
        if !self.opaque.is_empty() {
            out.push_str(&self.opaque);
        } else {
            if !self.host.is_empty() || (!self.scheme.is_empty() && !self.omit_host) {
                out.push_str("//");
            }
            out.push_str(&self.host);
            let path = match self.raw_path.as_str() {
                "" => escape(&self.path),
                raw => raw.to_string(),
            };
            if !path.is_empty() && !path.starts_with('/') && !self.host.is_empty() {
                out.push('/');
            }
            out.push_str(&path);
        }
        if self.force_query || !self.raw_query.is_empty() {
            out.push('?');
            out.push_str(&self.raw_query);
        }
        if !self.fragment.is_empty() {
            out.push('#');
            out.push_str(
                match self.raw_fragment.as_str() {
                    "" => escape(&self.fragment),
                    raw => raw.to_string(),
                }
                .as_str(),
            );
        }
        out
    }
}

/// A path or fragment decoded, with its raw form when that is not what escaping the decoded
/// form gives back.
fn decoded_and_raw(raw: &str) -> (String, String) {
    let decoded = percent_decode(raw).unwrap_or_else(|| raw.to_string());
    let raw = if escape(&decoded) == raw { "" } else { raw };
    (decoded, raw.to_string())
}

/// Percent-escapes what Go escapes in a path.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~$&+,/:;=@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The callback URL: written as Go's struct; read from the struct or from plain text.
mod go_url {
    use super::*;

    pub fn serialize<S: Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
        match url {
            Some(text) => GoUrl::parse(text).serialize(s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Go(Box<GoUrl>),
            Text(String),
        }
        Ok(match Option::<Either>::deserialize(d)? {
            None => None,
            Some(Either::Text(text)) => Some(text),
            Some(Either::Go(url)) => Some(url.text()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the OpenFaaS gateway publishes for
    /// `curl -d '{"n":1}' -H 'X-Callback-Url: http://receiver:8080/done?id=7' \
    ///   'http://gateway:8080/async-function/resize.openfaas-fn/small?w=640'`.
    const FROM_GO: &str = r#"{"Header":{"Accept":["*/*"],"Content-Length":["7"],"Content-Type":["application/x-www-form-urlencoded"],"User-Agent":["curl/7.88.1"],"X-Call-Id":["0b7c1c5e-1f8e-4c47-9a1e-2f0d9a7a0c11"],"X-Callback-Url":["http://receiver:8080/done?id=7"],"X-Start-Time":["1733500000000000000"]},"Host":"gateway:8080","Body":"eyJuIjoxfQ==","Method":"POST","Path":"/small","QueryString":"w=640","Function":"resize.openfaas-fn","CallbackUrl":{"Scheme":"http","Opaque":"","User":null,"Host":"receiver:8080","Path":"/done","RawPath":"","OmitHost":false,"ForceQuery":false,"RawQuery":"id=7","Fragment":"","RawFragment":""}}"#;

    #[test]
    fn a_gateway_document_is_read_and_written_back_the_same() {
        let request = QueueRequest::from_json(FROM_GO.as_bytes()).unwrap();
        assert_eq!(request.function, "resize.openfaas-fn");
        assert_eq!(request.body, br#"{"n":1}"#);
        assert_eq!(request.method, "POST");
        assert_eq!(
            (request.path.as_str(), request.query_string.as_str()),
            ("/small", "w=640")
        );
        assert_eq!(
            request.header["Content-Type"],
            ["application/x-www-form-urlencoded"]
        );
        assert_eq!(
            request.callback_url.as_deref(),
            Some("http://receiver:8080/done?id=7")
        );
        let written = String::from_utf8(request.to_json()).unwrap();
        assert_eq!(written, FROM_GO);
        assert_eq!(
            QueueRequest::from_json(written.as_bytes()).unwrap(),
            request
        );
    }

    #[test]
    fn empty_fields_are_left_out_as_go_does() {
        let request = QueueRequest {
            method: "GET".into(),
            function: "echo".into(),
            ..QueueRequest::default()
        };
        assert_eq!(
            String::from_utf8(request.to_json()).unwrap(),
            r#"{"Method":"GET","Function":"echo"}"#
        );
        let nulls = r#"{"Header":null,"Body":null,"Method":"GET","Function":"echo","Labels":null,"CallbackUrl":null}"#;
        assert_eq!(QueueRequest::from_json(nulls.as_bytes()).unwrap(), request);
    }

    #[test]
    fn bodies_of_any_bytes_and_callbacks_of_any_shape_round_trip() {
        for callback in [
            "http://receiver:8080/done?id=7",
            "https://hooks.example/a%2Fb/c%20d?x=1&y=%41#frag%21",
            "http://receiver",
            "http://receiver/?",
            "mailto:ops@example.com",
            "/relative/path",
        ] {
            let request = QueueRequest {
                body: (0..=255).collect(),
                method: "PUT".into(),
                function: "f".into(),
                callback_url: Some(callback.into()),
                ..QueueRequest::default()
            };
            let back = QueueRequest::from_json(&request.to_json()).unwrap();
            assert_eq!(back, request, "{callback}");
        }
        let text = r#"{"Method":"GET","Function":"f","CallbackUrl":"http://x/cb"}"#;
        let read = QueueRequest::from_json(text.as_bytes()).unwrap();
        assert_eq!(read.callback_url.as_deref(), Some("http://x/cb"));
    }

    #[test]
    fn a_body_that_is_not_base64_is_an_error() {
        let bad = r#"{"Method":"GET","Function":"f","Body":"not base64!"}"#;
        let err = QueueRequest::from_json(bad.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("Body is not base64"), "{err}");
    }
}
