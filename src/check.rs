//! `defrost check`: validate a config file as the gateway would, and show what it amounts to.
//!
//! The file goes through the very code that starts a gateway (nothing is started), so a file
//! that passes the check is one the gateway accepts. The effective settings are printed as TOML
//! with every default filled in: the answer to "what will this actually do?", and a file that
//! can be used as is.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{
    ConfigError, Dur, GatewaySection, Loaded, ProviderKind, QueueSection, SetupError,
};
use crate::provider::process::{ProcessFunction, Readiness};
use crate::setup;

/// The effective configuration of `path` as TOML, or why the gateway would refuse it (naming
/// the file, and the line and key where they are known).
pub fn check(path: &Path) -> Result<String, SetupError> {
    let loaded = Loaded::read(path)?;
    let (settings, backend) = setup::from_file(&loaded)?;
    backend.provider().shutdown();
    // Built here as the gateway builds them when it starts, so that a bad pattern is refused.
    crate::triggers::Triggers::build(&settings.triggers)?;
    let functions = match kind(&loaded) {
        ProviderKind::Process => loaded.process_functions()?,
        ProviderKind::Openfaas | ProviderKind::Kubernetes => Vec::new(),
    };
    let queue = settings.queue.as_ref().map(|q| EffectiveQueue {
        path: q.path.clone(),
        section: &loaded.config.queue,
    });
    let effective = Effective {
        gateway: &loaded.config.gateway,
        queue,
        provider: effective_provider(&loaded),
        functions: functions.iter().map(EffectiveFunction::from).collect(),
    };
    toml::to_string(&effective).map_err(|e| {
        SetupError::Config(ConfigError {
            file: path.to_owned(),
            line: None,
            key: None,
            message: format!("cannot show the settings: {e}"),
        })
    })
}

fn kind(loaded: &Loaded) -> ProviderKind {
    loaded
        .config
        .provider
        .as_ref()
        .map_or(ProviderKind::Process, |p| p.kind)
}

#[derive(Serialize)]
struct Effective<'a> {
    gateway: &'a GatewaySection,
    #[serde(skip_serializing_if = "Option::is_none")]
    queue: Option<EffectiveQueue<'a>>,
    provider: EffectiveProvider,
    #[serde(rename = "function", skip_serializing_if = "Vec::is_empty")]
    functions: Vec<EffectiveFunction>,
}

/// `[queue]` with the store's path resolved.
#[derive(Serialize)]
struct EffectiveQueue<'a> {
    path: PathBuf,
    #[serde(flatten)]
    section: &'a QueueSection,
}

#[derive(Serialize)]
struct EffectiveProvider {
    kind: ProviderKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credentials: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<Dur>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kubeconfig: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    namespaces: Vec<String>,
}

fn effective_provider(loaded: &Loaded) -> EffectiveProvider {
    match &loaded.config.provider {
        Some(p) if p.kind == ProviderKind::Openfaas => EffectiveProvider {
            kind: p.kind,
            url: p.url.as_ref().map(|u| u.get_ref().clone()),
            credentials: p.credentials.as_ref().map(|c| loaded.base_dir().join(c)),
            timeout: Some(p.timeout),
            ..EffectiveProvider::process()
        },
        Some(p) if p.kind == ProviderKind::Kubernetes => EffectiveProvider {
            kind: p.kind,
            timeout: Some(p.timeout),
            kubeconfig: p.kubeconfig.as_ref().map(|k| loaded.base_dir().join(k)),
            context: p.context.clone(),
            namespaces: p.namespaces.clone(),
            ..EffectiveProvider::process()
        },
        _ => EffectiveProvider::process(),
    }
}

impl EffectiveProvider {
    fn process() -> EffectiveProvider {
        EffectiveProvider {
            kind: ProviderKind::Process,
            url: None,
            credentials: None,
            timeout: None,
            kubeconfig: None,
            context: None,
            namespaces: Vec::new(),
        }
    }
}

#[derive(Serialize)]
struct EffectiveFunction {
    name: String,
    namespace: String,
    command: Vec<String>,
    workdir: PathBuf,
    /// Absent: ready when its port accepts a connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    readiness_path: Option<String>,
    min_replicas: u64,
    max_replicas: u64,
    startup_timeout: Dur,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
}

impl From<&ProcessFunction> for EffectiveFunction {
    fn from(f: &ProcessFunction) -> EffectiveFunction {
        EffectiveFunction {
            name: f.function.name().to_owned(),
            namespace: f.function.namespace().to_owned(),
            command: f.command.clone(),
            workdir: f.workdir.clone(),
            readiness_path: match &f.readiness {
                Readiness::Tcp => None,
                Readiness::Http { path } => Some(path.clone()),
            },
            min_replicas: f.min_replicas,
            max_replicas: f.max_replicas,
            startup_timeout: Dur(f.startup_timeout),
            env: f.env.clone(),
            labels: f.labels.clone(),
        }
    }
}
