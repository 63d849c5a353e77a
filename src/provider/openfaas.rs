//! A remote OpenFaaS provider (faas-netes, faasd, or another defrost) over the faas-provider
//! HTTP API.
//!
//! Every call is bounded by a timeout, so a provider that hangs costs a request a clear 502
//! rather than a thread forever. Function calls are sent to the provider's own
//! `/function/{name}.{namespace}` route: the provider balances across its replicas.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::wire;
use super::{
    scale_bounds, Endpoint, FunctionStatus, FunctionSummary, Provider, ProviderError, ProviderInfo,
};
use crate::auth::Credentials;
use crate::client::{self, Timeouts};
use crate::function::FunctionRef;
use crate::redact;

/// Largest answer read from a provider: status lists of thousands of functions fit easily.
const MAX_ANSWER: u64 = 8 << 20;

/// Where the provider is and how to talk to it.
#[derive(Debug, Clone)]
pub struct OpenFaasOptions {
    /// The provider's base URL, e.g. `http://127.0.0.1:8081`.
    pub base_url: String,
    /// Basic-auth credentials the provider wants, if any.
    pub credentials: Option<Credentials>,
    /// Bound on each call to it.
    pub timeout: Duration,
    /// Idle connections kept to it.
    pub max_idle_per_host: usize,
}

/// A faas-provider (faas-netes, faasd, faas-memory) over its HTTP API.
pub struct OpenFaasProvider {
    base: String,
    authorization: Option<String>,
    agent: ureq::Agent,
    /// One endpoint per function for the provider's lifetime, so in-flight counts add up.
    endpoints: Mutex<HashMap<String, Arc<Endpoint>>>,
}

impl OpenFaasProvider {
    /// A client for the provider at `options.base_url`; refuses a URL it cannot use.
    pub fn new(options: OpenFaasOptions) -> Result<OpenFaasProvider, ProviderError> {
        let base = options.base_url.trim().trim_end_matches('/').to_owned();
        let refused = |why: &str| ProviderError::Failed(format!("provider URL {base:?} {why}"));
        let host = base
            .strip_prefix("http://")
            .ok_or_else(|| refused("must start with http://"))?;
        if host.is_empty() || host.starts_with('/') {
            return Err(refused("has no host"));
        }
        let timeouts = Timeouts {
            connect: options.timeout,
            response: options.timeout,
            send: options.timeout,
        };
        Ok(OpenFaasProvider {
            authorization: options.credentials.as_ref().map(Credentials::header_value),
            agent: client::agent(timeouts, options.max_idle_per_host),
            endpoints: Mutex::new(HashMap::new()),
            base,
        })
    }

    /// The provider's base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The `Authorization` value the provider expects, if any.
    pub fn authorization(&self) -> Option<&str> {
        self.authorization.as_deref()
    }

    fn endpoint(&self, function: &FunctionRef) -> Arc<Endpoint> {
        let mut endpoints = self.endpoints.lock();
        let endpoint = endpoints
            .entry(function.key().to_owned())
            .or_insert_with(|| {
                Arc::new(Endpoint::with_unqualified(
                    format!("{}/function/{}", self.base, function.key()),
                    format!("{}/function/{}", self.base, function.name()),
                ))
            });
        Arc::clone(endpoint)
    }

    /// One provider call: returns the status and the body (bounded), or why it failed.
    fn call(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Vec<u8>), ProviderError> {
        let url = format!("{}{path_and_query}", self.base);
        let mut request = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(auth) = &self.authorization {
            request = request.header("Authorization", auth.as_str());
        }
        let sent = match body {
            Some(body) => request
                .header("Content-Type", "application/json")
                .body(body)
                .map_err(|e| ProviderError::Failed(e.to_string()))
                .and_then(|r| self.agent.run(r).map_err(|e| unavailable(&url, e))),
            None => request
                .body(())
                .map_err(|e| ProviderError::Failed(e.to_string()))
                .and_then(|r| self.agent.run(r).map_err(|e| unavailable(&url, e))),
        }?;
        let status = sent.status().as_u16();
        let mut answer = Vec::new();
        sent.into_body()
            .into_reader()
            .take(MAX_ANSWER + 1)
            .read_to_end(&mut answer)
            .map_err(|e| {
                ProviderError::Unavailable(format!(
                    "{}: reading the answer failed: {e}",
                    redact::url(&url)
                ))
            })?;
        if answer.len() as u64 > MAX_ANSWER {
            return Err(ProviderError::Unavailable(format!(
                "{}: answer larger than {MAX_ANSWER} bytes",
                redact::url(&url)
            )));
        }
        Ok((status, answer))
    }

    fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path_and_query: &str,
    ) -> Result<T, ProviderError> {
        let (status, body) = self.call("GET", path_and_query, None)?;
        match status {
            200 => serde_json::from_slice(&body).map_err(|e| {
                ProviderError::Unavailable(format!("{path_and_query}: unreadable answer: {e}"))
            }),
            404 => Err(ProviderError::NotFound),
            s => Err(refused(path_and_query, s, &body)),
        }
    }
}

fn unavailable(url: &str, e: ureq::Error) -> ProviderError {
    ProviderError::Unavailable(format!("{}: {e}", redact::url(url)))
}

fn refused(what: &str, status: u16, body: &[u8]) -> ProviderError {
    ProviderError::Failed(answered(what, status, body))
}

/// What the provider said, cut to 200 characters.
fn answered(what: &str, status: u16, body: &[u8]) -> String {
    let snippet: String = String::from_utf8_lossy(body).chars().take(200).collect();
    format!("{what} answered {status}: {}", snippet.trim())
}

impl Provider for OpenFaasProvider {
    fn status(&self, function: &FunctionRef) -> Result<FunctionStatus, ProviderError> {
        let path = format!(
            "/system/function/{}?namespace={}",
            function.name(),
            function.namespace()
        );
        let wire: wire::FunctionJson = self.get_json(&path)?;
        let labels = wire.labels.unwrap_or_default();
        let (min_replicas, max_replicas) = scale_bounds(function, &labels);
        let endpoints = if wire.available_replicas > 0 {
            vec![self.endpoint(function)]
        } else {
            Vec::new()
        };
        Ok(FunctionStatus {
            replicas: wire.replicas,
            available_replicas: wire.available_replicas,
            min_replicas,
            max_replicas,
            labels,
            endpoints,
            generation: 0,
            start_failure: None,
        })
    }

    fn set_replicas(&self, function: &FunctionRef, replicas: u64) -> Result<(), ProviderError> {
        let path = format!(
            "/system/scale-function/{}?namespace={}",
            function.name(),
            function.namespace()
        );
        let request = wire::ScaleServiceRequest {
            service_name: function.name().to_owned(),
            namespace: function.namespace().to_owned(),
            replicas,
        };
        let body =
            serde_json::to_vec(&request).map_err(|e| ProviderError::Failed(e.to_string()))?;
        let (status, answer) = self.call("POST", &path, Some(body))?;
        match status {
            200 | 202 => Ok(()),
            404 => Err(ProviderError::NotFound),
            400..=499 => Err(ProviderError::Refused(answered(&path, status, &answer))),
            s => Err(refused(&path, s, &answer)),
        }
    }

    fn list(&self, namespace: &str) -> Result<Vec<FunctionSummary>, ProviderError> {
        let path = format!("/system/functions?namespace={namespace}");
        let list: Vec<wire::FunctionJson> = self.get_json(&path)?;
        Ok(list
            .into_iter()
            .filter_map(|w| {
                let ns = if w.namespace.is_empty() {
                    namespace
                } else {
                    &w.namespace
                };
                let function = FunctionRef::new(&w.name, ns).ok()?;
                let labels = w.labels.unwrap_or_default();
                let (min_replicas, max_replicas) = scale_bounds(&function, &labels);
                let status = FunctionStatus {
                    replicas: w.replicas,
                    available_replicas: w.available_replicas,
                    min_replicas,
                    max_replicas,
                    labels,
                    ..FunctionStatus::default()
                };
                Some(FunctionSummary {
                    function,
                    image: w.image,
                    status,
                    created_at: None,
                })
            })
            .collect())
    }

    fn namespaces(&self) -> Result<Vec<String>, ProviderError> {
        self.get_json("/system/namespaces")
    }

    /// The provider's `/system/info`, whether it answers as a provider or, like another
    /// defrost, as a gateway.
    fn info(&self) -> Result<ProviderInfo, ProviderError> {
        let path = "/system/info";
        let (status, body) = self.call("GET", path, None)?;
        match status {
            200 => wire::read_info(&body)
                .map_err(|e| ProviderError::Unavailable(format!("{path}: unreadable answer: {e}"))),
            s => Err(refused(path, s, &body)),
        }
    }
}

impl OpenFaasProvider {
    /// Where the provider serves the faas-provider HTTP API, and the credentials it wants: a
    /// gateway in front of it forwards `/system/*` calls there.
    pub fn remote_api(&self) -> RemoteApi {
        RemoteApi {
            base_url: self.base.clone(),
            authorization: self.authorization().map(str::to_owned),
        }
    }
}

/// A provider API reachable over HTTP, to which the gateway forwards `/system/*` calls.
#[derive(Debug, Clone)]
pub struct RemoteApi {
    /// Base URL of the API.
    pub base_url: String,
    /// The `Authorization` value the API wants, if any.
    pub authorization: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;
    use std::thread;
    use std::time::Instant;

    /// A one-connection provider on loopback that records the request and answers `reply`
    /// (or never answers when `reply` is `None`).
    fn provider_once(reply: Option<&'static str>) -> (String, mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
            }
            let mut body = vec![0; length];
            let _ = std::io::Read::read_exact(&mut reader, &mut body);
            let _ = tx.send(format!("{head}\r\n{}", String::from_utf8_lossy(&body)));
            match reply {
                Some(reply) => {
                    let _ = (&stream).write_all(reply.as_bytes());
                }
                None => thread::sleep(Duration::from_secs(5)),
            }
        });
        (url, rx)
    }

    fn client(url: &str, credentials: Option<Credentials>) -> OpenFaasProvider {
        OpenFaasProvider::new(OpenFaasOptions {
            base_url: url.to_owned(),
            credentials,
            timeout: Duration::from_millis(500),
            max_idle_per_host: 4,
        })
        .unwrap()
    }

    fn answer(status: &str, body: &str) -> &'static str {
        Box::leak(
            format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_boxed_str(),
        )
    }

    fn echo() -> FunctionRef {
        FunctionRef::new("echo", "team").unwrap()
    }

    #[test]
    fn scale_sends_namespace_in_query_and_body_with_credentials() {
        let (url, seen) = provider_once(Some(answer("202 Accepted", "")));
        let creds = Credentials {
            user: "admin".into(),
            password: "pw".into(),
        };
        let provider = client(&format!("{url}/"), Some(creds));
        provider.set_replicas(&echo(), 3).unwrap();
        let request = seen.recv_timeout(Duration::from_secs(2)).unwrap();
        assert!(
            request.starts_with("POST /system/scale-function/echo?namespace=team HTTP/1.1"),
            "{request}"
        );
        assert!(
            request.contains("authorization: Basic YWRtaW46cHc=")
                || request.contains("Authorization: Basic YWRtaW46cHc="),
            "{request}"
        );
        assert!(
            request.ends_with(r#"{"serviceName":"echo","namespace":"team","replicas":3}"#),
            "{request}"
        );
    }

    #[test]
    fn status_treats_absent_replicas_as_zero_and_reads_labels() {
        let body = r#"{"name":"echo","image":"x","labels":{"com.openfaas.scale.min":"3"}}"#;
        let (url, seen) = provider_once(Some(answer("200 OK", body)));
        let status = client(&url, None).status(&echo()).unwrap();
        assert_eq!(
            (
                status.replicas,
                status.available_replicas,
                status.min_replicas
            ),
            (0, 0, 3)
        );
        assert!(status.endpoints.is_empty());
        let request = seen.recv_timeout(Duration::from_secs(2)).unwrap();
        assert!(
            request.starts_with("GET /system/function/echo?namespace=team HTTP/1.1"),
            "{request}"
        );
    }

    #[test]
    fn ready_status_points_at_the_providers_function_route() {
        let (url, _) = provider_once(Some(answer(
            "200 OK",
            r#"{"name":"echo","replicas":1,"availableReplicas":1}"#,
        )));
        let status = client(&url, None).status(&echo()).unwrap();
        assert_eq!(
            status.endpoints[0].base_url(),
            format!("{url}/function/echo.team")
        );
        assert_eq!(
            status.endpoints[0].url_for(true),
            format!("{url}/function/echo.team")
        );
        assert_eq!(
            status.endpoints[0].url_for(false),
            format!("{url}/function/echo"),
            "a call naming no namespace is forwarded as it was sent"
        );
    }

    #[test]
    fn failures_are_told_apart() {
        let (url, _) = provider_once(Some(answer("404 Not Found", "nope")));
        assert!(matches!(
            client(&url, None).status(&echo()),
            Err(ProviderError::NotFound)
        ));
        let (url, _) = provider_once(Some(answer("500 Internal Server Error", "boom")));
        assert!(
            matches!(client(&url, None).status(&echo()), Err(ProviderError::Failed(m)) if m.contains("500"))
        );
        let (url, _) = provider_once(Some(answer("200 OK", "{not json")));
        assert!(matches!(
            client(&url, None).status(&echo()),
            Err(ProviderError::Unavailable(_))
        ));
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let refused = client(&format!("http://{closed}"), None).status(&echo());
        assert!(
            matches!(refused, Err(ProviderError::Unavailable(_))),
            "{refused:?}"
        );
    }

    #[test]
    fn a_hanging_provider_costs_at_most_the_timeout() {
        let (url, _) = provider_once(None);
        let started = Instant::now();
        let result = client(&url, None).status(&echo());
        assert!(
            matches!(result, Err(ProviderError::Unavailable(_))),
            "{result:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn base_urls_are_checked() {
        assert!(OpenFaasProvider::new(OpenFaasOptions {
            base_url: "ftp://x".into(),
            credentials: None,
            timeout: Duration::from_secs(1),
            max_idle_per_host: 1
        })
        .is_err());
    }
}
