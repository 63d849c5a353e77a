//! A provider that speaks to the Kubernetes API itself: functions are Deployments, scaled
//! through their `scale` subresource, called at the ready addresses of their EndpointSlices.
//!
//! Watches keep a cache of both (see [`cache`]), so a status query costs no API call once a
//! namespace is listed, and a request waiting on a cold function wakes on the event that makes
//! its replica ready rather than on a poll. Until a namespace is listed (at start, or while the
//! credentials are refused) status queries go to the API server directly, so their failures
//! reach the caller as they are.

mod api;
mod cache;
mod credentials;
mod objects;
mod watch;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::{FunctionStatus, FunctionSummary, Provider, ProviderError, ProviderInfo};
use crate::function::FunctionRef;
use api::{Api, ApiError};
use cache::{Cache, Kind};
use objects::{Deployment, EndpointSlice, List};

pub use cache::FUNCTION_LABEL;
pub use credentials::{discover, Cluster};

/// How to reach the cluster and what to serve from it.
#[derive(Debug, Clone, Default)]
pub struct KubernetesOptions {
    /// A kubeconfig file; `None`: `$KUBECONFIG`, the pod's service account, `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context; `None`: its `current-context`.
    pub context: Option<String>,
    /// Namespaces whose functions are served; empty: the credentials' namespace, else
    /// `default`.
    pub namespaces: Vec<String>,
    /// Bound on each API call.
    pub timeout: Duration,
}

/// Functions as Deployments of a Kubernetes cluster.
pub struct KubernetesProvider {
    api: Arc<Api>,
    cache: Arc<Cache>,
    namespaces: Vec<String>,
    stop: Arc<AtomicBool>,
}

impl KubernetesProvider {
    /// Finds the credentials and starts the watches; the API server need not be up yet.
    pub fn new(options: KubernetesOptions) -> Result<KubernetesProvider, ProviderError> {
        let var = |name: &str| std::env::var(name).ok();
        let cluster = discover(
            options.kubeconfig.as_deref(),
            options.context.as_deref(),
            &var,
        )
        .map_err(|e| ProviderError::Failed(format!("kubernetes credentials: {e}")))?;
        KubernetesProvider::with_cluster(&cluster, options.namespaces, options.timeout)
    }

    /// A provider for `cluster` serving `namespaces`.
    pub fn with_cluster(
        cluster: &Cluster,
        namespaces: Vec<String>,
        timeout: Duration,
    ) -> Result<KubernetesProvider, ProviderError> {
        let namespaces = if namespaces.is_empty() {
            vec![cluster
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into())]
        } else {
            namespaces
        };
        for namespace in &namespaces {
            FunctionRef::new("x", namespace)
                .map_err(|e| ProviderError::Failed(format!("kubernetes namespace: {e}")))?;
        }
        let provider = KubernetesProvider {
            api: Arc::new(Api::new(cluster, timeout)),
            cache: Arc::new(Cache::new()),
            namespaces,
            stop: Arc::new(AtomicBool::new(false)),
        };
        for namespace in &provider.namespaces {
            for kind in [Kind::Deployments, Kind::Slices] {
                watch::spawn(
                    Arc::clone(&provider.api),
                    Arc::clone(&provider.cache),
                    namespace.clone(),
                    kind,
                    Arc::clone(&provider.stop),
                )
                .map_err(|e| ProviderError::Failed(format!("starting a watch: {e}")))?;
            }
        }
        log::info!(
            "kubernetes: serving Deployments labelled {FUNCTION_LABEL} in {} from {}",
            provider.namespaces.join(", "),
            provider.api.server()
        );
        Ok(provider)
    }

    fn serves(&self, namespace: &str) -> bool {
        self.namespaces.iter().any(|n| n == namespace)
    }

    /// Reads the function's Deployment and slices from the API server into the cache, for a
    /// namespace whose watches have not listed yet.
    fn fetch(&self, function: &FunctionRef) -> Result<(), ProviderError> {
        let ns = function.namespace();
        let selector = |label: &str| format!("{}%3D{}", label.replace('/', "%2F"), function.name());
        let deployments: List<Deployment> = self.api.get(&format!(
            "/apis/apps/v1/namespaces/{ns}/deployments?labelSelector={}",
            selector(FUNCTION_LABEL)
        ))?;
        let slices: List<EndpointSlice> = self.api.get(&format!(
            "/apis/{}/namespaces/{ns}/endpointslices?labelSelector={}",
            self.api.slice_version()?,
            selector(objects::SERVICE_NAME_LABEL)
        ))?;
        deployments
            .items
            .iter()
            .for_each(|d| self.cache.put_deployment(d));
        slices.items.iter().for_each(|s| self.cache.put_slice(s));
        Ok(())
    }
}

impl Provider for KubernetesProvider {
    fn status(&self, function: &FunctionRef) -> Result<FunctionStatus, ProviderError> {
        if !self.serves(function.namespace()) {
            return Err(ProviderError::NotFound);
        }
        if !self.cache.synced(function.namespace()) {
            self.fetch(function)?;
        }
        self.cache.status(function).ok_or(ProviderError::NotFound)
    }

    fn set_replicas(&self, function: &FunctionRef, replicas: u64) -> Result<(), ProviderError> {
        if !self.serves(function.namespace()) {
            return Err(ProviderError::NotFound);
        }
        let deployment = match self.cache.deployment(function) {
            Some(d) => d,
            None => {
                self.fetch(function)?;
                self.cache
                    .deployment(function)
                    .ok_or(ProviderError::NotFound)?
            }
        };
        let path = format!(
            "/apis/apps/v1/namespaces/{}/deployments/{deployment}/scale",
            function.namespace()
        );
        log::info!("kubernetes: scaling {function} (deployment {deployment}) to {replicas}");
        self.api
            .merge_patch(&path, &json!({ "spec": { "replicas": replicas } }))
            .map_err(|e| match e {
                ApiError::Status(status @ 400..=499, why) if status != 409 => {
                    ProviderError::Refused(why)
                }
                e => e.into(),
            })
    }

    fn wait_for_change(&self, _function: &FunctionRef, since: u64, timeout: Duration) {
        self.cache.wait_for_change(since, timeout);
    }

    fn notifies_changes(&self) -> bool {
        true
    }

    fn list(&self, namespace: &str) -> Result<Vec<FunctionSummary>, ProviderError> {
        if !self.serves(namespace) {
            return Ok(Vec::new());
        }
        if !self.cache.synced(namespace) {
            let path = watch::collection(&self.api, Kind::Deployments, namespace)?;
            let list: List<Deployment> = self.api.get(&path)?;
            self.cache.replace_deployments(namespace, &list.items);
            self.cache.unsync(namespace, Kind::Deployments);
        }
        Ok(self.cache.list(namespace))
    }

    fn namespaces(&self) -> Result<Vec<String>, ProviderError> {
        Ok(self.namespaces.clone())
    }

    fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    fn info(&self) -> Result<ProviderInfo, ProviderError> {
        Ok(ProviderInfo::built_in("kubernetes"))
    }
}

impl Drop for KubernetesProvider {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use base64::Engine as _;

    /// A PEM block of `label` around `der` (PEM parsing does not look inside).
    pub fn pem(label: &str, der: &[u8]) -> String {
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n")
    }

    pub use crate::scratch::TempDir;
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::Mutex;
    use std::thread;
    use std::time::Instant;

    use super::credentials::Token;
    use super::*;

    /// A fake API server on loopback: answers each request with `answer(path, nth call of
    /// that path)`, one request per connection; records the paths asked.
    fn fake_api(
        answer: impl Fn(&str, usize) -> String + Send + 'static,
    ) -> (Cluster, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = format!("http://{}", listener.local_addr().unwrap());
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = Arc::clone(&seen);
        thread::spawn(move || {
            for stream in listener.incoming().take(200) {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                let _ = reader.read_line(&mut request_line);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                }
                let path = request_line.split(' ').nth(1).unwrap_or("").to_owned();
                let n = {
                    let mut seen = log.lock().unwrap();
                    seen.push(path.clone());
                    seen.iter().filter(|p| **p == path).count()
                };
                let _ = stream.write_all(answer(&path, n).as_bytes());
            }
        });
        let cluster = Cluster {
            server,
            ca: Vec::new(),
            insecure: false,
            client_cert: None,
            token: Token::Fixed("t".into()),
            namespace: Some("fns".into()),
        };
        (cluster, seen)
    }

    fn reply(status: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    fn echo() -> FunctionRef {
        FunctionRef::new("echo", "fns").unwrap()
    }

    const DEPLOYMENTS: &str = r#"{"metadata":{"resourceVersion":"5"},"items":[{"metadata":{"name":"echo","namespace":"fns","labels":{"defrost.dev/function":"echo"}},"spec":{"replicas":1},"status":{"availableReplicas":1}}]}"#;

    #[test]
    fn refused_credentials_are_a_clear_error() {
        let (cluster, _) = fake_api(|_, _| {
            reply(
                "401 Unauthorized",
                r#"{"kind":"Status","code":401,"message":"Unauthorized"}"#,
            )
        });
        let provider =
            KubernetesProvider::with_cluster(&cluster, vec![], Duration::from_secs(2)).unwrap();
        let e = provider.status(&echo()).unwrap_err();
        assert!(
            matches!(&e, ProviderError::Failed(m) if m.contains("refused defrost's credentials (401)") && m.contains("Unauthorized")),
            "{e:?}"
        );
        assert_eq!(
            provider
                .status(&FunctionRef::new("echo", "other").unwrap())
                .unwrap_err(),
            ProviderError::NotFound,
            "a namespace not served is not asked about"
        );
    }

    #[test]
    fn v1_slices_are_used_where_served_and_the_answer_kept() {
        let (cluster, seen) = fake_api(|path, _| match path {
            "/apis/discovery.k8s.io/v1" => reply("200 OK", r#"{"kind":"APIResourceList"}"#),
            _ => reply("500 Internal Server Error", "{}"),
        });
        let api = Api::new(&cluster, Duration::from_secs(2));
        assert_eq!(api.slice_version(), Ok("discovery.k8s.io/v1"));
        assert_eq!(api.slice_version(), Ok("discovery.k8s.io/v1"));
        let probes = seen.lock().unwrap().len();
        assert_eq!(probes, 1, "asked once");
    }

    #[test]
    fn v1beta1_slices_are_used_where_v1_is_not_served_and_a_gone_watch_lists_again() {
        let (cluster, seen) = fake_api(|path, n| {
            if path == "/apis/discovery.k8s.io/v1" {
                return reply("404 Not Found", "{}");
            }
            let watching = path.contains("watch=true");
            if path.starts_with("/apis/apps/v1/namespaces/fns/deployments") {
                return match (watching, n) {
                    (false, _) => reply("200 OK", DEPLOYMENTS),
                    // The first watch says its version is gone; later ones idle briefly.
                    (true, 1) => reply(
                        "200 OK",
                        "{\"type\":\"ERROR\",\"object\":{\"kind\":\"Status\",\"code\":410}}\n",
                    ),
                    (true, _) => {
                        thread::sleep(Duration::from_millis(200));
                        reply("200 OK", "")
                    }
                };
            }
            if path.starts_with("/apis/discovery.k8s.io/v1beta1/namespaces/fns/endpointslices") {
                if watching {
                    thread::sleep(Duration::from_millis(200));
                    return reply(
                        "200 OK",
                        "{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"echo-1\",\"namespace\":\"fns\",\"resourceVersion\":\"9\",\"labels\":{\"kubernetes.io/service-name\":\"echo\"}},\"addressType\":\"IPv4\",\"endpoints\":[{\"addresses\":[\"127.1.0.1\"],\"conditions\":{\"ready\":true}}],\"ports\":[{\"port\":8080}]}}\n",
                    );
                }
                return reply(
                    "200 OK",
                    r#"{"metadata":{"resourceVersion":"7"},"items":[]}"#,
                );
            }
            reply("500 Internal Server Error", "{}")
        });
        let provider =
            KubernetesProvider::with_cluster(&cluster, vec![], Duration::from_secs(2)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            let status = provider.status(&echo()).unwrap();
            if !status.endpoints.is_empty() || Instant::now() > deadline {
                break status;
            }
            provider.wait_for_change(&echo(), status.generation, Duration::from_millis(500));
        };
        assert_eq!(status.available_replicas, 1);
        assert_eq!(status.endpoints[0].base_url(), "http://127.1.0.1:8080");
        let seen = seen.lock().unwrap().clone();
        let lists = seen
            .iter()
            .filter(|p| p.contains("/deployments?") && !p.contains("watch=true"))
            .count();
        assert!(lists >= 2, "listed again after 410: {seen:?}");
        assert!(
            seen.iter()
                .any(|p| p.contains("endpointslices") && p.contains("resourceVersion=7")),
            "the slice watch resumed from the list's version: {seen:?}"
        );
        provider.shutdown();
    }
}
