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
use super::{scale_bounds, Endpoint, FunctionStatus, FunctionSummary, Provider, ProviderError};
use crate::auth::Credentials;
use crate::client::{self, Timeouts};
use crate::function::FunctionRef;

/// Largest answer read from a provider: status lists of thousands of functions fit easily.
const MAX_ANSWER: u64 = 8 << 20;

/// Where the provider is and how to talk to it.
#[derive(Debug, Clone)]
pub struct OpenFaasOptions {
    pub base_url: String,
    pub credentials: Option<Credentials>,
    pub timeout: Duration,
    pub max_idle_per_host: usize,
}

pub struct OpenFaasProvider {
    base: String,
    authorization: Option<String>,
    agent: ureq::Agent,
    /// One endpoint per function for the provider's lifetime, so in-flight counts add up.
    endpoints: Mutex<HashMap<String, Arc<Endpoint>>>,
}

impl OpenFaasProvider {
    pub fn new(options: OpenFaasOptions) -> Result<OpenFaasProvider, String> {
        let base = options.base_url.trim().trim_end_matches('/').to_owned();
        let host = base
            .strip_prefix("http://")
            .ok_or_else(|| format!("provider URL {base:?} must start with http://"))?;
        if host.is_empty() || host.starts_with('/') {
            return Err(format!("provider URL {base:?} has no host"));
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
                Arc::new(Endpoint::new(format!(
                    "{}/function/{}",
                    self.base,
                    function.key()
                )))
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
                ProviderError::Unavailable(format!("{url}: reading the answer failed: {e}"))
            })?;
        if answer.len() as u64 > MAX_ANSWER {
            return Err(ProviderError::Unavailable(format!(
                "{url}: answer larger than {MAX_ANSWER} bytes"
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
    ProviderError::Unavailable(format!("{url}: {e}"))
}

fn refused(what: &str, status: u16, body: &[u8]) -> ProviderError {
    let snippet: String = String::from_utf8_lossy(body).chars().take(200).collect();
    ProviderError::Failed(format!("{what} answered {status}: {}", snippet.trim()))
}

impl Provider for OpenFaasProvider {
    fn status(&self, function: &FunctionRef) -> Result<FunctionStatus, ProviderError> {
        let path = format!(
            "/system/function/{}?namespace={}",
            function.name(),
            function.namespace()
        );
        let wire: wire::FunctionStatus = self.get_json(&path)?;
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
            s => Err(refused(&path, s, &answer)),
        }
    }

    fn list(&self, namespace: &str) -> Result<Vec<FunctionSummary>, ProviderError> {
        let path = format!("/system/functions?namespace={namespace}");
        let list: Vec<wire::FunctionStatus> = self.get_json(&path)?;
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
                })
            })
            .collect())
    }

    fn namespaces(&self) -> Result<Vec<String>, ProviderError> {
        self.get_json("/system/namespaces")
    }

    fn remote_api(&self) -> Option<RemoteApi<'_>> {
        Some(RemoteApi {
            base_url: &self.base,
            authorization: self.authorization(),
        })
    }
}

/// A provider API reachable over HTTP, to which the gateway forwards `/system/*` calls.
pub struct RemoteApi<'a> {
    pub base_url: &'a str,
    pub authorization: Option<&'a str>,
}
