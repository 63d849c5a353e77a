//! Calls to the Kubernetes API server: plain requests, and watch streams.
//!
//! Every call carries the credentials as they are now: a token file is read again for each
//! call, so a rotated service account token is used from the moment it is written. A refusal
//! of the credentials (401, 403) is logged once when it starts and once when it ends, and
//! surfaces as a clear provider error (a 502 for the caller) rather than as "not found".

use std::io::{BufRead, BufReader, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use ureq::config::Config;
use ureq::tls::{RootCerts, TlsConfig};

use super::credentials::{Cluster, Token};
use crate::provider::ProviderError;

/// Largest answer read for one call: lists of thousands of objects fit.
const MAX_ANSWER: u64 = 32 << 20;
/// How long a watch stream may stay silent before it is taken as dead. The server ends each
/// watch within `WATCH_SECONDS` and sends bookmarks meanwhile.
const WATCH_SILENCE: Duration = Duration::from_secs(330);
/// The server-side bound on one watch call; the watch is then resumed where it was.
pub const WATCH_SECONDS: u64 = 290;

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// No answer: refused, reset, timed out, or a TLS failure.
    Unreachable(String),
    /// 401 or 403: the credentials are wrong, or lack a permission.
    Credentials(u16, String),
    /// 404.
    NotFound,
    /// 410: a watch's resource version is too old; list again.
    Gone,
    /// Any other status.
    Status(u16, String),
    /// An answer that is not what the API serves.
    Unreadable(String),
}

impl From<ApiError> for ProviderError {
    fn from(e: ApiError) -> ProviderError {
        match e {
            ApiError::NotFound => ProviderError::NotFound,
            ApiError::Unreachable(why) | ApiError::Unreadable(why) => {
                ProviderError::Unavailable(why)
            }
            ApiError::Credentials(status, why) => ProviderError::Failed(format!(
                "the Kubernetes API refused defrost's credentials ({status}): {why}"
            )),
            ApiError::Gone => ProviderError::Failed("resource version gone".into()),
            ApiError::Status(_, why) => ProviderError::Failed(why),
        }
    }
}

/// A client of one API server.
pub struct Api {
    server: String,
    token: Token,
    agent: ureq::Agent,
    watch_agent: ureq::Agent,
    /// The EndpointSlice group version the server serves, found on first use.
    slices: OnceLock<&'static str>,
    /// Whether the last call had its credentials refused (so each change is logged once).
    refused: AtomicBool,
}

impl Api {
    /// A client for `cluster`, each call bounded by `timeout`.
    pub fn new(cluster: &Cluster, timeout: Duration) -> Api {
        let agent = |read: Duration| {
            let mut tls = TlsConfig::builder()
                .client_cert(cluster.client_cert.clone())
                .disable_verification(cluster.insecure);
            if !cluster.ca.is_empty() {
                tls = tls.root_certs(RootCerts::new_with_certs(&cluster.ca));
            }
            let config = Config::builder()
                .http_status_as_error(false)
                .max_redirects(0)
                .proxy(None)
                .no_delay(true)
                .tls_config(tls.build())
                .timeout_connect(Some(timeout))
                .timeout_send_request(Some(timeout))
                .timeout_recv_response(Some(timeout))
                .timeout_per_read(Some(read))
                .build();
            ureq::Agent::new_with_config(config)
        };
        Api {
            server: cluster.server.clone(),
            token: cluster.token.clone(),
            agent: agent(timeout),
            watch_agent: agent(WATCH_SILENCE),
            slices: OnceLock::new(),
            refused: AtomicBool::new(false),
        }
    }

    /// The API server's URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    fn authorization(&self) -> Result<Option<String>, ApiError> {
        match &self.token {
            Token::None => Ok(None),
            Token::Fixed(token) => Ok(Some(format!("Bearer {token}"))),
            Token::File(path) => std::fs::read_to_string(path)
                .map(|t| Some(format!("Bearer {}", t.trim())))
                .map_err(|e| {
                    ApiError::Credentials(0, format!("token file {}: {e}", path.display()))
                }),
        }
    }

    fn send(
        &self,
        agent: &ureq::Agent,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<ureq::http::Response<ureq::Body>, ApiError> {
        let url = format!("{}{path}", self.server);
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("Accept", "application/json");
        if let Some(auth) = self.authorization()? {
            request = request.header("Authorization", auth);
        }
        let unreachable =
            |e: ureq::Error| ApiError::Unreachable(format!("{}{path}: {e}", self.server));
        let built = |e: ureq::http::Error| ApiError::Unreachable(format!("{path}: {e}"));
        let response = match body {
            Some(body) => agent
                .run(
                    request
                        .header("Content-Type", "application/merge-patch+json")
                        .body(body.to_vec())
                        .map_err(built)?,
                )
                .map_err(unreachable)?,
            None => agent
                .run(request.body(()).map_err(built)?)
                .map_err(unreachable)?,
        };
        let status = response.status().as_u16();
        if status < 300 {
            self.credentials_accepted();
            return Ok(response);
        }
        let mut answer = Vec::new();
        let _ = response
            .into_body()
            .into_reader()
            .take(4096)
            .read_to_end(&mut answer);
        let message = serde_json::from_slice::<super::objects::Status>(&answer)
            .map(|s| s.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&answer).chars().take(200).collect());
        let what = format!("{method} {path} answered {status}: {}", message.trim());
        Err(match status {
            401 | 403 => {
                if !self.refused.swap(true, Ordering::SeqCst) {
                    log::error!(
                        "kubernetes: the API server at {} refused defrost's credentials: {what}",
                        self.server
                    );
                }
                ApiError::Credentials(status, what)
            }
            404 => ApiError::NotFound,
            410 => ApiError::Gone,
            _ => ApiError::Status(status, what),
        })
    }

    fn credentials_accepted(&self) {
        if self.refused.swap(false, Ordering::SeqCst) {
            log::info!(
                "kubernetes: the API server at {} accepts defrost's credentials again",
                self.server
            );
        }
    }

    /// GET `path` and parse the JSON answer.
    pub fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        let response = self.send(&self.agent, "GET", path, None)?;
        let mut answer = Vec::new();
        response
            .into_body()
            .into_reader()
            .take(MAX_ANSWER + 1)
            .read_to_end(&mut answer)
            .map_err(|e| ApiError::Unreachable(format!("{path}: reading the answer: {e}")))?;
        if answer.len() as u64 > MAX_ANSWER {
            return Err(ApiError::Unreadable(format!(
                "{path}: answer larger than {MAX_ANSWER} bytes"
            )));
        }
        serde_json::from_slice(&answer)
            .map_err(|e| ApiError::Unreadable(format!("{path}: unreadable answer: {e}")))
    }

    /// A JSON merge patch of the object at `path`.
    pub fn merge_patch(&self, path: &str, patch: &serde_json::Value) -> Result<(), ApiError> {
        let body = patch.to_string();
        let response = self.send(&self.agent, "PATCH", path, Some(body.as_bytes()))?;
        let _ = response
            .into_body()
            .into_reader()
            .take(MAX_ANSWER)
            .read_to_end(&mut Vec::new());
        Ok(())
    }

    /// A watch stream: one JSON event per line, until the server ends it.
    pub fn watch(&self, path: &str) -> Result<Box<dyn BufRead + Send>, ApiError> {
        let response = self.send(&self.watch_agent, "GET", path, None)?;
        Ok(Box::new(BufReader::new(response.into_body().into_reader())))
    }

    /// The EndpointSlice API's group version: `discovery.k8s.io/v1` where served (Kubernetes
    /// 1.21 on), `v1beta1` otherwise (1.17 to 1.20). Asked once, on first success.
    pub fn slice_version(&self) -> Result<&'static str, ApiError> {
        if let Some(version) = self.slices.get() {
            return Ok(version);
        }
        let version = match self.get::<serde_json::Value>("/apis/discovery.k8s.io/v1") {
            Ok(_) => "discovery.k8s.io/v1",
            Err(ApiError::NotFound) => "discovery.k8s.io/v1beta1",
            Err(e) => return Err(e),
        };
        Ok(self.slices.get_or_init(|| version))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::kubernetes::test_support::TempDir;

    fn cluster(token: Token) -> Cluster {
        Cluster {
            server: "http://127.0.0.1:1".into(),
            ca: Vec::new(),
            insecure: false,
            client_cert: None,
            token,
            namespace: None,
        }
    }

    #[test]
    fn a_token_file_is_read_again_for_each_call_so_rotation_is_followed() {
        let dir = TempDir::new("token");
        let file = dir.path().join("token");
        std::fs::write(&file, "first\n").unwrap();
        let api = Api::new(&cluster(Token::File(file.clone())), Duration::from_secs(1));
        assert_eq!(
            api.authorization().unwrap().as_deref(),
            Some("Bearer first")
        );
        std::fs::write(&file, "second").unwrap();
        assert_eq!(
            api.authorization().unwrap().as_deref(),
            Some("Bearer second")
        );
        std::fs::remove_file(&file).unwrap();
        assert!(matches!(
            api.authorization(),
            Err(ApiError::Credentials(_, why)) if why.contains("token file")
        ));
        let fixed = Api::new(&cluster(Token::Fixed("t".into())), Duration::from_secs(1));
        assert_eq!(fixed.authorization().unwrap().as_deref(), Some("Bearer t"));
        let none = Api::new(&cluster(Token::None), Duration::from_secs(1));
        assert_eq!(none.authorization().unwrap(), None);
    }
}
