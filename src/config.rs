//! Configuration: the TOML file, its defaults, and errors that point at the line to fix.
//!
//! Every setting has a default, so an empty file (or none) runs a gateway. Unknown keys are
//! errors rather than silently ignored: a misspelt `ready_timout` should not leave a user
//! wondering why their timeout is not applied.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use toml::Spanned;

use crate::autoscale::policy::{park_labels, zero_labels};
use crate::autoscale::AutoscaleConfig;
use crate::duration::{format_duration, parse_duration};
use crate::function::{FunctionRef, DEFAULT_NAMESPACE};
use crate::provider::process::{
    check_functions, ProcessFunction, ProcessOptions, Readiness, SpecError,
};
use crate::provider::ProviderError;
use crate::proxy::trust::IpRange;
use crate::proxy::ProxyConfig;
use crate::queue::jetstream::NatsQueue;
use crate::queue::{Bounds, QueueConfig};
use crate::scaler::ScalingConfig;
use crate::server::PoolConfig;
use crate::table::slots::concurrency_labels;
use crate::triggers::{TriggerError, TriggerSpec};
use crate::tunnel::UpgradeConfig;

/// A whole config file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub gateway: GatewaySection,
    pub provider: Option<ProviderSection>,
    #[serde(default, rename = "function")]
    pub functions: Vec<FunctionSection>,
    #[serde(default, rename = "trigger")]
    pub triggers: Vec<TriggerSection>,
    #[serde(default)]
    pub queue: QueueSection,
}

/// `[queue]`: where asynchronous calls are kept, and how they are bounded and run.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueSection {
    /// `embedded` (a redb file) or `nats` (a JetStream stream shared with other gateways).
    pub kind: QueueKind,
    /// The NATS server, for `kind = "nats"`; its password is not shown by `defrost check`.
    #[serde(serialize_with = "redacted_url")]
    pub url: String,
    /// The JetStream stream, subject and durable consumer, for `kind = "nats"`.
    pub stream: String,
    pub subject: String,
    pub consumer: String,
    /// How long a fetched call may go unacknowledged before it is delivered again.
    pub ack_wait: Dur,
    /// The store's file; relative to the config file's folder. Default: beside the config
    /// file, `<name>.queue.redb`. Shown resolved by `defrost check`, not as written.
    #[serde(skip_serializing)]
    pub path: Option<PathBuf>,
    pub workers: usize,
    /// `async_concurrency` of functions that do not set their own.
    pub concurrency: usize,
    pub max_attempts: u32,
    pub retry_backoff: Dur,
    pub max_queued: usize,
    pub max_queued_per_function: usize,
    pub max_queued_bytes: u64,
    pub callback_attempts: u32,
    pub callback_timeout: Dur,
    pub max_response_bytes: u64,
}

impl Default for QueueSection {
    fn default() -> Self {
        let q = QueueConfig::default();
        let nats = NatsQueue::openfaas(DEFAULT_NATS_URL.into());
        QueueSection {
            kind: QueueKind::Embedded,
            url: nats.url,
            stream: nats.stream,
            subject: nats.subject,
            consumer: nats.consumer,
            ack_wait: Dur(nats.ack_wait),
            path: None,
            workers: q.workers,
            concurrency: q.concurrency,
            max_attempts: q.max_attempts,
            retry_backoff: Dur(q.retry_backoff),
            max_queued: q.bounds.max_queued,
            max_queued_per_function: q.bounds.max_queued_per_function,
            max_queued_bytes: q.bounds.max_queued_bytes,
            callback_attempts: q.callback_attempts,
            callback_timeout: Dur(q.callback_timeout),
            max_response_bytes: q.max_response_bytes,
        }
    }
}

/// Where the queue keeps calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueKind {
    Embedded,
    Nats,
}

fn redacted_url<S: Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::redact::url(url))
}

/// Where a NATS server listens when nothing says otherwise.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// `[[trigger]]`: a URL pattern routed to one function, or split between several by weight.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerSection {
    pub path: Spanned<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    pub host: Option<String>,
    /// `name` or `name.namespace`.
    pub function: Option<Spanned<String>>,
    /// `{ "name" = weight, ... }`.
    pub functions: Option<Spanned<BTreeMap<String, u32>>>,
}

/// `[gateway]`: how the gateway listens, waits and forwards.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySection {
    pub listen: SocketAddr,
    /// Workers kept free for requests that do not block; 0 means four per core.
    pub workers: usize,
    pub max_workers: usize,
    pub ready_timeout: Dur,
    pub upstream_timeout: Dur,
    pub connect_timeout: Dur,
    pub cache_expiry: Dur,
    pub poll_interval: Dur,
    pub scale_retries: u32,
    pub scale_retry_interval: Dur,
    pub scale_from_zero: bool,
    pub default_namespace: String,
    pub max_waiters_per_function: usize,
    pub max_waiters: usize,
    pub max_body_bytes: u64,
    pub max_connections: usize,
    pub max_idle_per_host: usize,
    pub connect_retries: u32,
    /// First pause before retrying a refused connection; doubled on each retry.
    pub retry_backoff: Dur,
    /// Time between the autoscaler's checks (scale to zero, capacity).
    pub autoscale_interval: Dur,
    /// Capacity mode scales down only after recommending fewer replicas for this long.
    pub scale_down_window: Dur,
    pub shutdown_grace: Dur,
    /// Upgraded connections (WebSocket and others) at once; more get 503.
    pub max_upgraded: usize,
    /// An upgraded connection quiet both ways for this long is closed; 0: never.
    pub upgrade_idle_timeout: Dur,
    pub stop_grace: Dur,
    pub startup_timeout: Dur,
    /// Longest request head (request line and headers) accepted; larger gets 431.
    pub max_header_bytes: usize,
    /// Longest request target accepted; longer gets 414.
    pub max_url_bytes: usize,
    /// Time for a client to send a whole request head (slow clients get 408).
    pub header_timeout: Dur,
    /// How long an idle keep-alive connection is kept open.
    pub keep_alive_timeout: Dur,
    /// Longest wait for each read from a client.
    pub read_timeout: Dur,
    /// Longest wait for each write to a client.
    pub write_timeout: Dur,
    /// Require basic auth on `/system/*`, with credentials from `secret_mount_path`.
    pub basic_auth: bool,
    pub secret_mount_path: PathBuf,
    /// Serve `/metrics` on this address instead of the main one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// Where call counts are posted in batches (`[{"ID", "FunctionCallCount", ...}]`).
    pub analytics_url: Option<String>,
    /// How often a batch is posted.
    pub analytics_interval: Dur,
    /// Proxies in front of the gateway (addresses or CIDR ranges) whose `X-Forwarded-Proto`
    /// and `X-Forwarded-Host` are passed on; anyone else's are replaced.
    pub trusted_proxies: Vec<IpRange>,
}

impl Default for GatewaySection {
    fn default() -> Self {
        let scaling = ScalingConfig::default();
        let proxy = ProxyConfig::default();
        let autoscale = AutoscaleConfig::default();
        GatewaySection {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            workers: 0,
            max_workers: PoolConfig::default().max,
            ready_timeout: Dur(scaling.ready_timeout),
            upstream_timeout: Dur(proxy.upstream_timeout),
            connect_timeout: Dur(Duration::from_secs(2)),
            cache_expiry: Dur(scaling.cache_expiry),
            poll_interval: Dur(scaling.poll_interval),
            scale_retries: scaling.scale_retries,
            scale_retry_interval: Dur(scaling.scale_retry_interval),
            scale_from_zero: scaling.scale_from_zero,
            default_namespace: DEFAULT_NAMESPACE.into(),
            max_waiters_per_function: scaling.max_waiters_per_function,
            max_waiters: scaling.max_waiters,
            max_body_bytes: proxy.max_body_bytes,
            max_connections: 1024,
            max_idle_per_host: 256,
            connect_retries: proxy.connect_retries,
            retry_backoff: Dur(proxy.retry_backoff),
            autoscale_interval: Dur(autoscale.interval),
            scale_down_window: Dur(autoscale.scale_down_window),
            shutdown_grace: Dur(Duration::from_secs(30)),
            max_upgraded: UpgradeConfig::default().max_upgraded,
            upgrade_idle_timeout: Dur(UpgradeConfig::default().idle_timeout),
            stop_grace: Dur(ProcessOptions::default().stop_grace),
            startup_timeout: Dur(Duration::from_secs(60)),
            max_header_bytes: 16 * 1024,
            max_url_bytes: 8 * 1024,
            header_timeout: Dur(Duration::from_secs(10)),
            keep_alive_timeout: Dur(Duration::from_secs(75)),
            read_timeout: Dur(Duration::from_secs(30)),
            write_timeout: Dur(Duration::from_secs(30)),
            basic_auth: false,
            secret_mount_path: PathBuf::from("/run/secrets"),
            metrics_listen: None,
            analytics_url: None,
            analytics_interval: Dur(Duration::from_secs(10)),
            trusted_proxies: proxy.trusted_proxies.clone(),
        }
    }
}

impl GatewaySection {
    pub fn scaling(&self) -> ScalingConfig {
        ScalingConfig {
            scale_from_zero: self.scale_from_zero,
            cache_expiry: self.cache_expiry.0,
            scale_retries: self.scale_retries,
            scale_retry_interval: self.scale_retry_interval.0,
            poll_interval: self.poll_interval.0,
            ready_timeout: self.ready_timeout.0,
            max_waiters_per_function: self.max_waiters_per_function,
            max_waiters: self.max_waiters,
        }
    }

    pub fn proxy(&self) -> ProxyConfig {
        ProxyConfig {
            connect_retries: self.connect_retries,
            retry_backoff: self.retry_backoff.0,
            upstream_timeout: self.upstream_timeout.0,
            max_body_bytes: self.max_body_bytes,
            trusted_proxies: self.trusted_proxies.clone(),
        }
    }

    pub fn autoscale(&self) -> AutoscaleConfig {
        AutoscaleConfig {
            interval: self.autoscale_interval.0,
            scale_down_window: self.scale_down_window.0,
        }
    }

    pub fn upgrades(&self) -> UpgradeConfig {
        UpgradeConfig {
            max_upgraded: self.max_upgraded,
            idle_timeout: self.upgrade_idle_timeout.0,
        }
    }

    pub fn pool(&self) -> PoolConfig {
        let defaults = PoolConfig::default();
        PoolConfig {
            core: if self.workers == 0 {
                defaults.core
            } else {
                self.workers
            },
            max: self.max_workers.max(1),
            ..defaults
        }
    }
}

/// `[provider]`: where functions run.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSection {
    pub kind: ProviderKind,
    /// Base URL of an OpenFaaS provider (`kind = "openfaas"`).
    pub url: Option<Spanned<String>>,
    /// Folder holding `basic-auth-user` and `basic-auth-password` for the provider.
    pub credentials: Option<PathBuf>,
    /// Bound on each provider call.
    #[serde(default = "default_provider_timeout")]
    pub timeout: Dur,
    /// Kubeconfig file (`kind = "kubernetes"`); unset: `$KUBECONFIG`, the pod's service
    /// account, `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (`kind = "kubernetes"`); unset: its current context.
    pub context: Option<String>,
    /// Namespaces served (`kind = "kubernetes"`); empty: the credentials' namespace.
    #[serde(default)]
    pub namespaces: Vec<String>,
}

fn default_provider_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}

#[derive(Debug, Deserialize, Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Functions are local processes declared in `[[function]]`.
    Process,
    /// An OpenFaaS provider over HTTP.
    Openfaas,
    /// Deployments of a Kubernetes cluster, through its API.
    Kubernetes,
}

/// `[[function]]`: one function of the embedded process provider.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSection {
    pub name: Spanned<String>,
    pub namespace: Option<Spanned<String>>,
    pub command: Spanned<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub workdir: Option<PathBuf>,
    pub readiness_path: Option<Spanned<String>>,
    pub min_replicas: Option<Spanned<u64>>,
    pub max_replicas: Option<Spanned<u64>>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub startup_timeout: Option<Dur>,
    /// Stop every replica after `zero_duration` without a request.
    #[serde(default)]
    pub scale_to_zero: bool,
    pub zero_duration: Option<Dur>,
    /// Freeze idle replicas (SIGSTOP) after this long without a request, thaw on the next.
    pub park_after: Option<Dur>,
    /// Queued (asynchronous) calls of this function run at once.
    pub async_concurrency: Option<Spanned<usize>>,
    /// Calls one replica takes at once; more wait in the gateway, in order. 0: no limit.
    pub max_concurrency: Option<u64>,
}

/// A config that could not be used, with where to look.
#[derive(Debug)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// The 1-based line at fault, when known.
    pub line: Option<usize>,
    /// The key at fault, when known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Why a gateway could not be set up, or reloaded, from what the operator wrote: the one error
/// of that boundary, as [`crate::Error`] is the one of a request's.
#[derive(Debug)]
#[non_exhaustive]
pub enum SetupError {
    /// The config file: unreadable, not TOML, or a refused value, with its line.
    Config(ConfigError),
    /// An OpenFaaS environment variable whose value does not parse.
    Environment {
        /// The variable.
        variable: String,
        /// What is wrong with its value.
        message: String,
    },
    /// A function the process provider cannot run (from an embedder's code, not the file).
    Function(SpecError),
    /// A trigger pattern that cannot be routed.
    Trigger(TriggerError),
    /// Basic-auth credentials that cannot be read.
    Credentials(io::Error),
    /// A provider that cannot be used as configured (a URL it cannot reach, say).
    Provider(ProviderError),
    /// Something the process needs from the system (signals, a file to watch).
    System(io::Error),
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetupError::Config(e) => e.fmt(f),
            SetupError::Environment { variable, message } => write!(f, "{variable}: {message}"),
            SetupError::Function(e) => e.fmt(f),
            SetupError::Trigger(e) => e.fmt(f),
            SetupError::Credentials(e) => write!(f, "basic auth: {e}"),
            SetupError::Provider(e) => e.fmt(f),
            SetupError::System(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for SetupError {}

impl From<ConfigError> for SetupError {
    fn from(e: ConfigError) -> SetupError {
        SetupError::Config(e)
    }
}

impl From<SpecError> for SetupError {
    fn from(e: SpecError) -> SetupError {
        SetupError::Function(e)
    }
}

impl From<TriggerError> for SetupError {
    fn from(e: TriggerError) -> SetupError {
        SetupError::Trigger(e)
    }
}

impl From<ProviderError> for SetupError {
    fn from(e: ProviderError) -> SetupError {
        SetupError::Provider(e)
    }
}

/// A loaded file: the parsed config plus what is needed to report errors in it later.
pub struct Loaded {
    /// What the file says.
    pub config: FileConfig,
    /// Where it was read from.
    pub path: PathBuf,
    text: String,
}

impl Loaded {
    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<Loaded, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: None,
            key: None,
            message: format!("cannot read: {e}"),
        })?;
        Loaded::parse(path, text)
    }

    /// Parses `text` as the contents of `path` (which names it in errors).
    pub fn parse(path: &Path, text: String) -> Result<Loaded, ConfigError> {
        match toml::from_str::<FileConfig>(&text) {
            Ok(config) => Ok(Loaded {
                config,
                path: path.to_owned(),
                text,
            }),
            Err(e) => {
                let (line, key) = e.span().map_or((None, None), |span| locate(&text, &span));
                Err(ConfigError {
                    file: path.to_owned(),
                    line,
                    key,
                    message: e.message().to_owned(),
                })
            }
        }
    }

    fn error_at(&self, span: Range<usize>, key: &str, message: String) -> ConfigError {
        let (line, _) = locate(&self.text, &span);
        ConfigError {
            file: self.path.clone(),
            line,
            key: Some(key.into()),
            message,
        }
    }

    /// Checks the `[[trigger]]` entries and turns them into the router's specs.
    pub fn trigger_specs(&self) -> Result<Vec<TriggerSpec>, ConfigError> {
        let default_ns = &self.config.gateway.default_namespace;
        self.config
            .triggers
            .iter()
            .map(|t| self.trigger_spec(t, default_ns))
            .collect()
    }

    fn trigger_spec(
        &self,
        t: &TriggerSection,
        default_ns: &str,
    ) -> Result<TriggerSpec, ConfigError> {
        let (line, _) = locate(&self.text, &t.path.span());
        let origin = format!("{}:{}", self.path.display(), line.unwrap_or(0));
        let weighted: Vec<(String, u32, Range<usize>)> = match (&t.function, &t.functions) {
            (Some(f), None) => vec![(f.get_ref().clone(), 1, f.span())],
            (None, Some(fs)) => fs
                .get_ref()
                .iter()
                .map(|(n, w)| (n.clone(), *w, fs.span()))
                .collect(),
            _ => {
                return Err(self.error_at(
                    t.path.span(),
                    "function",
                    "a trigger names exactly one of `function` or `functions`".into(),
                ))
            }
        };
        let mut targets = Vec::with_capacity(weighted.len());
        for (name, weight, span) in weighted {
            let key = if t.function.is_some() {
                "function"
            } else {
                "functions"
            };
            let function = FunctionRef::parse(&name, default_ns)
                .map_err(|e| self.error_at(span, key, e.to_string()))?;
            targets.push((function, weight));
        }
        Ok(TriggerSpec {
            path: t.path.get_ref().clone(),
            methods: t.methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
            host: t.host.clone(),
            targets,
            origin,
        })
    }

    /// The `[queue]` section, with each function's `async_concurrency`; zero where at least
    /// one is needed is refused.
    pub fn queue_config(&self) -> Result<QueueConfig, ConfigError> {
        let q = &self.config.queue;
        let at_least_one = [
            ("workers", q.workers as u64),
            ("concurrency", q.concurrency as u64),
            ("max_attempts", u64::from(q.max_attempts)),
            ("max_queued", q.max_queued as u64),
            ("max_queued_per_function", q.max_queued_per_function as u64),
            ("max_queued_bytes", q.max_queued_bytes),
            ("callback_attempts", u64::from(q.callback_attempts)),
        ];
        if let Some((key, _)) = at_least_one.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError {
                file: self.path.clone(),
                line: None,
                key: Some(format!("queue.{key}")),
                message: "must be at least 1".into(),
            });
        }
        let mut function_concurrency = BTreeMap::new();
        for spec in &self.config.functions {
            let Some(n) = &spec.async_concurrency else {
                continue;
            };
            if *n.get_ref() == 0 {
                return Err(self.error_at(
                    n.span(),
                    "async_concurrency",
                    "must be at least 1".into(),
                ));
            }
            let function = self.function_ref(spec, &self.config.gateway.default_namespace)?;
            function_concurrency.insert(function.key().to_owned(), *n.get_ref());
        }
        let path = match &q.path {
            Some(path) => self.base_dir().join(path),
            None => {
                let stem = self
                    .path
                    .file_stem()
                    .map_or_else(|| "defrost".into(), |s| s.to_string_lossy().into_owned());
                self.base_dir().join(format!("{stem}.queue.redb"))
            }
        };
        Ok(QueueConfig {
            path,
            workers: q.workers,
            concurrency: q.concurrency,
            function_concurrency,
            max_attempts: q.max_attempts,
            retry_backoff: q.retry_backoff.0,
            bounds: Bounds {
                max_queued: q.max_queued,
                max_queued_per_function: q.max_queued_per_function,
                max_queued_bytes: q.max_queued_bytes,
            },
            callback_attempts: q.callback_attempts,
            callback_timeout: q.callback_timeout.0,
            max_response_bytes: q.max_response_bytes,
            nats: self.nats_queue()?,
        })
    }

    /// The JetStream queue, for `kind = "nats"`.
    fn nats_queue(&self) -> Result<Option<NatsQueue>, ConfigError> {
        let q = &self.config.queue;
        if q.kind != QueueKind::Nats {
            return Ok(None);
        }
        let names = [
            ("url", &q.url),
            ("stream", &q.stream),
            ("subject", &q.subject),
            ("consumer", &q.consumer),
        ];
        if let Some((key, _)) = names.iter().find(|(_, v)| v.trim().is_empty()) {
            return Err(ConfigError {
                file: self.path.clone(),
                line: None,
                key: Some(format!("queue.{key}")),
                message: "must not be empty".into(),
            });
        }
        if q.ack_wait.0 < Duration::from_secs(1) {
            return Err(ConfigError {
                file: self.path.clone(),
                line: None,
                key: Some("queue.ack_wait".into()),
                message: "must be at least 1s".into(),
            });
        }
        Ok(Some(NatsQueue {
            url: q.url.clone(),
            stream: q.stream.clone(),
            subject: q.subject.clone(),
            consumer: q.consumer.clone(),
            ack_wait: q.ack_wait.0,
        }))
    }

    /// The folder relative paths in the file are taken from.
    pub fn base_dir(&self) -> PathBuf {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned())
    }

    /// Turns the `[[function]]` entries into what the process provider runs, checked by the
    /// provider's own rules; an error points at the line of the setting at fault.
    pub fn process_functions(&self) -> Result<Vec<ProcessFunction>, ConfigError> {
        let gateway = &self.config.gateway;
        let mut out = Vec::with_capacity(self.config.functions.len());
        for spec in &self.config.functions {
            let function = self.function_ref(spec, &gateway.default_namespace)?;
            out.push(self.process_function(spec, function));
        }
        check_functions(&out).map_err(|e| self.spec_error(&out, e))?;
        Ok(out)
    }

    /// Where in the file the provider's complaint is: the setting's line in the entry it names
    /// (the later one, for a function declared twice).
    fn spec_error(&self, built: &[ProcessFunction], e: SpecError) -> ConfigError {
        let Some(spec) = built
            .iter()
            .zip(&self.config.functions)
            .rev()
            .find(|(f, _)| f.function == e.function)
            .map(|(_, spec)| spec)
        else {
            return self.error_at(0..0, e.field, e.to_string());
        };
        let span = match e.field {
            "command" => Some(spec.command.span()),
            "readiness_path" => spec.readiness_path.as_ref().map(Spanned::span),
            "max_replicas" => spec.max_replicas.as_ref().map(Spanned::span),
            _ => None,
        }
        .unwrap_or_else(|| spec.name.span());
        self.error_at(
            span,
            e.field,
            format!("function {}: {}", e.function, e.message),
        )
    }

    fn function_ref(
        &self,
        spec: &FunctionSection,
        default_ns: &str,
    ) -> Result<FunctionRef, ConfigError> {
        let namespace = spec.namespace.as_ref();
        let ns = namespace.map_or(default_ns, |n| n.get_ref().as_str());
        FunctionRef::new(spec.name.get_ref(), ns).map_err(|e| {
            let (span, key) = match (e.what, namespace) {
                ("namespace", Some(n)) => (n.span(), "namespace"),
                _ => (spec.name.span(), "name"),
            };
            self.error_at(span, key, e.to_string())
        })
    }

    fn process_function(&self, spec: &FunctionSection, function: FunctionRef) -> ProcessFunction {
        let readiness = match &spec.readiness_path {
            None => Readiness::Tcp,
            Some(p) => Readiness::Http {
                path: p.get_ref().clone(),
            },
        };
        let (label_min, label_max) = crate::provider::scale_bounds(&function, &spec.labels);
        let min = spec
            .min_replicas
            .as_ref()
            .map_or(label_min, |m| *m.get_ref());
        let max = spec
            .max_replicas
            .as_ref()
            .map_or(label_max.max(min), |m| *m.get_ref());
        let workdir = match &spec.workdir {
            Some(dir) if dir.is_absolute() => dir.clone(),
            Some(dir) => self.base_dir().join(dir),
            None => self.base_dir(),
        };
        ProcessFunction {
            function,
            command: spec.command.get_ref().clone(),
            env: spec.env.clone(),
            workdir,
            readiness,
            min_replicas: min,
            max_replicas: max,
            labels: spec
                .labels
                .clone()
                .into_iter()
                .chain(zero_labels(
                    spec.scale_to_zero,
                    spec.zero_duration.map(|d| d.0),
                ))
                .chain(park_labels(spec.park_after.map(|d| d.0)))
                .chain(concurrency_labels(spec.max_concurrency))
                .collect(),
            startup_timeout: spec
                .startup_timeout
                .map_or(self.config.gateway.startup_timeout.0, |d| d.0),
        }
    }
}

/// The 1-based line of `span` in `text`, and the key written at the start of that line.
fn locate(text: &str, span: &Range<usize>) -> (Option<usize>, Option<String>) {
    let start = span.start.min(text.len());
    let line_no = text[..start].bytes().filter(|&b| b == b'\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("");
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_owned())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    (Some(line_no), key)
}

/// A duration written as `250ms`, `30s`, `1m30s`, `2h`, or a plain number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(u64),
            Float(f64),
            Text(String),
        }
        let parsed = match Raw::deserialize(d)? {
            Raw::Seconds(n) => Ok(Duration::from_secs(n)),
            Raw::Float(f) => {
                Duration::try_from_secs_f64(f).map_err(|_| format!("{f} is not a duration"))
            }
            Raw::Text(s) => parse_duration(&s),
        };
        parsed.map(Dur).map_err(de::Error::custom)
    }
}

/// Written back the way it is read, in the largest unit that keeps it exact.
impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Loaded, ConfigError> {
        Loaded::parse(Path::new("/etc/defrost.toml"), text.to_owned())
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let loaded = parse("").unwrap();
        assert_eq!(loaded.config.gateway.listen.port(), 8080);
        assert_eq!(
            loaded.config.gateway.ready_timeout.0,
            Duration::from_secs(30)
        );
        assert!(loaded.process_functions().unwrap().is_empty());
    }

    #[test]
    fn documented_example_parses() {
        let loaded = parse(
            r#"
[gateway]
listen = "127.0.0.1:8080"
ready_timeout = "30s"

[[function]]
name = "hello"
namespace = "default"
command = ["python3", "examples/hello.py"]
env = { GREETING = "hi" }
workdir = "."
readiness_path = "/healthz"
min_replicas = 1
max_replicas = 5
labels = { "com.openfaas.scale.zero" = "true" }
"#,
        )
        .unwrap();
        let functions = loaded.process_functions().unwrap();
        let f = &functions[0];
        assert_eq!(f.function.key(), "hello.default");
        assert_eq!((f.min_replicas, f.max_replicas), (1, 5));
        assert_eq!(f.workdir, Path::new("/etc/."));
        assert!(matches!(&f.readiness, Readiness::Http { path } if path == "/healthz"));
    }

    #[test]
    fn max_concurrency_becomes_its_label_and_zero_means_none() {
        let entry = |n: i64| {
            format!("[[function]]\nname = \"a\"\ncommand = [\"x\"]\nmax_concurrency = {n}\n")
        };
        let functions = parse(&entry(4)).unwrap().process_functions().unwrap();
        let label = crate::table::slots::LABEL_MAX_CONCURRENCY;
        assert_eq!(functions[0].labels[label], "4");
        let functions = parse(&entry(0)).unwrap().process_functions().unwrap();
        assert!(!functions[0].labels.contains_key(label));
        let err = parse(&entry(-1)).err().unwrap();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(4), Some("max_concurrency"))
        );
    }

    #[test]
    fn unknown_keys_name_file_line_and_key() {
        let err = parse("[gateway]\nready_timout = \"3s\"\n").err().unwrap();
        assert_eq!(err.line, Some(2));
        assert_eq!(err.key.as_deref(), Some("ready_timout"));
        let shown = err.to_string();
        assert!(
            shown.starts_with("/etc/defrost.toml:2: key `ready_timout`:"),
            "{shown}"
        );
    }

    #[test]
    fn bad_values_name_their_line() {
        let err = parse("[gateway]\nlisten = \"127.0.0.1:8080\"\npoll_interval = \"soon\"\n")
            .err()
            .unwrap();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(3), Some("poll_interval"))
        );
        assert!(err.message.contains("not a duration"), "{err}");
    }

    #[test]
    fn trusted_proxies_are_read_and_a_bad_one_is_named() {
        let text = "[gateway]\ntrusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\", \"::1\"]\n";
        let proxies = parse(text).unwrap().config.gateway.proxy().trusted_proxies;
        assert_eq!(proxies.len(), 3);
        assert!(proxies[1].contains("10.9.8.7".parse().unwrap()));
        let text = "[gateway]\nlisten = \"127.0.0.1:8080\"\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n";
        let err = parse(text).err().unwrap();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(3), Some("trusted_proxies"))
        );
        assert!(err.message.contains("\"10.0.0.0/33\""), "{err}");
        assert!(parse("").unwrap().config.gateway.trusted_proxies.is_empty());
    }

    #[test]
    fn semantic_errors_name_their_line() {
        let text = "[[function]]\nname = \"ok\"\ncommand = [\"x\"]\n\n[[function]]\nname = \"Bad_Name\"\ncommand = [\"x\"]\n";
        let err = parse(text).unwrap().process_functions().err().unwrap();
        assert_eq!((err.line, err.key.as_deref()), (Some(6), Some("name")));
        let text = "[[function]]\nname = \"a\"\ncommand = []\n";
        let err = parse(text).unwrap().process_functions().err().unwrap();
        assert_eq!((err.line, err.key.as_deref()), (Some(3), Some("command")));
        let text =
            "[[function]]\nname = \"a\"\ncommand = [\"x\"]\nmin_replicas = 3\nmax_replicas = 2\n";
        let err = parse(text).unwrap().process_functions().err().unwrap();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(5), Some("max_replicas"))
        );
        let text = "[[function]]\nname = \"a\"\ncommand = [\"x\"]\n[[function]]\nname = \"a\"\ncommand = [\"y\"]\n";
        let err = parse(text).unwrap().process_functions().err().unwrap();
        assert_eq!(err.line, Some(5));
        assert!(err.message.contains("declared twice"), "{err}");
    }

    #[test]
    fn a_nats_queue_defaults_to_openfaas_names_and_refuses_empty_ones() {
        let loaded =
            parse("[queue]\nkind = \"nats\"\nurl = \"nats://u:secret@127.0.0.1:4222\"\n").unwrap();
        let nats = loaded.queue_config().unwrap().nats.unwrap();
        assert_eq!(nats.url, "nats://u:secret@127.0.0.1:4222");
        assert_eq!(
            (nats.stream.as_str(), nats.subject.as_str()),
            ("faas-request", "faas-request")
        );
        assert_eq!(nats.consumer, "faas-request-workers");
        let shown = toml::to_string(&loaded.config.queue).unwrap();
        assert!(!shown.contains("secret"), "{shown}");
        assert!(parse("[queue]\nurl = \"nats://x:1\"\n")
            .unwrap()
            .queue_config()
            .unwrap()
            .nats
            .is_none());
        let err = parse("[queue]\nkind = \"nats\"\nconsumer = \"\"\n")
            .unwrap()
            .queue_config()
            .err()
            .unwrap();
        assert_eq!(err.key.as_deref(), Some("queue.consumer"));
        assert!(parse("[queue]\nkind = \"kafka\"\n").is_err());
    }

    #[test]
    fn the_queue_lives_beside_the_config_file_with_each_functions_concurrency() {
        let loaded = Loaded::parse(
            Path::new("/etc/defrost/gw.toml"),
            "[queue]\nmax_attempts = 3\n[[function]]\nname = \"a\"\ncommand = [\"x\"]\nasync_concurrency = 4\n".into(),
        )
        .unwrap();
        let queue = loaded.queue_config().unwrap();
        assert_eq!(queue.path, Path::new("/etc/defrost/gw.queue.redb"));
        assert_eq!(queue.max_attempts, 3);
        assert_eq!(queue.function_concurrency.get("a.default"), Some(&4));
        let text = "[[function]]\nname = \"a\"\ncommand = [\"x\"]\nasync_concurrency = 0\n";
        let err = parse(text).unwrap().queue_config().err().unwrap();
        assert_eq!(
            (err.line, err.key.as_deref()),
            (Some(4), Some("async_concurrency"))
        );
        let err = parse("[queue]\nworkers = 0\n")
            .unwrap()
            .queue_config()
            .err()
            .unwrap();
        assert_eq!(err.key.as_deref(), Some("queue.workers"));
    }
}
