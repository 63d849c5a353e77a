//! From what the operator wrote (a config file, or the OpenFaaS gateway's environment
//! variables) to settings and a provider ready to run.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::auth::Credentials;
use crate::config::{
    ConfigError, GatewaySection, Loaded, ProviderKind, ProviderSection, SetupError,
};
use crate::duration::parse_duration;
use crate::provider::openfaas::{OpenFaasOptions, OpenFaasProvider};
use crate::provider::process::{ProcessOptions, ProcessProvider};
use crate::queue::jetstream::NatsQueue;
use crate::queue::QueueConfig;
use crate::{Backend, Settings};

/// Reads `config` when given; otherwise the OpenFaaS environment variables.
pub fn from_sources(config: Option<&Path>) -> Result<(Settings, Backend), SetupError> {
    match config {
        Some(path) => from_file(&Loaded::read(path)?),
        None => from_env(&|name| std::env::var(name).ok()),
    }
}

/// Settings and provider described by a loaded config file.
pub fn from_file(loaded: &Loaded) -> Result<(Settings, Backend), SetupError> {
    let gateway = &loaded.config.gateway;
    let mut settings = Settings::from(gateway);
    settings.auth = gateway_credentials(gateway)?;
    settings.triggers = loaded.trigger_specs()?;
    let config_path = std::path::absolute(&loaded.path).unwrap_or_else(|_| loaded.path.clone());
    settings.state_file = Some(crate::deployments::state_file_for(&config_path));
    settings.queue = Some(loaded.queue_config()?);
    let backend = match &loaded.config.provider {
        None => process_provider(loaded)?,
        Some(section) if section.kind == ProviderKind::Process => process_provider(loaded)?,
        Some(section) => {
            if !loaded.config.functions.is_empty() {
                return Err(file_error(
                    loaded,
                    "function",
                    "[[function]] entries are for the process provider; with another kind the provider owns the functions",
                ));
            }
            if section.kind == ProviderKind::Kubernetes {
                Backend::Provider(kubernetes_provider(loaded, section)?)
            } else {
                Backend::OpenFaas(Arc::new(openfaas_provider(loaded, section, gateway)?))
            }
        }
    };
    Ok((settings, backend))
}

fn file_error(loaded: &Loaded, key: &str, message: &str) -> SetupError {
    SetupError::Config(ConfigError {
        file: loaded.path.clone(),
        line: None,
        key: Some(key.into()),
        message: message.into(),
    })
}

fn process_provider(loaded: &Loaded) -> Result<Backend, SetupError> {
    let functions = loaded.process_functions()?;
    let options = ProcessOptions {
        stop_grace: loaded.config.gateway.stop_grace.0,
    };
    let provider = ProcessProvider::new(functions, options)?;
    Ok(Backend::Process(Arc::new(provider)))
}

fn openfaas_provider(
    loaded: &Loaded,
    section: &ProviderSection,
    gateway: &GatewaySection,
) -> Result<OpenFaasProvider, SetupError> {
    let url = section
        .url
        .as_ref()
        .ok_or_else(|| file_error(loaded, "url", "[provider] kind = \"openfaas\" needs `url`"))?;
    let credentials = match &section.credentials {
        Some(dir) => Some(
            Credentials::from_dir(&loaded.base_dir().join(dir)).map_err(SetupError::Credentials)?,
        ),
        None => None,
    };
    Ok(OpenFaasProvider::new(OpenFaasOptions {
        base_url: url.get_ref().clone(),
        credentials,
        timeout: section.timeout.0,
        max_idle_per_host: gateway.max_idle_per_host,
    })?)
}

#[cfg(feature = "kubernetes")]
fn kubernetes_provider(
    loaded: &Loaded,
    section: &ProviderSection,
) -> Result<Arc<dyn crate::provider::Provider>, SetupError> {
    use crate::provider::kubernetes::{KubernetesOptions, KubernetesProvider};
    Ok(Arc::new(KubernetesProvider::new(KubernetesOptions {
        kubeconfig: section
            .kubeconfig
            .as_ref()
            .map(|k| loaded.base_dir().join(k)),
        context: section.context.clone(),
        namespaces: section.namespaces.clone(),
        timeout: section.timeout.0,
    })?))
}

#[cfg(not(feature = "kubernetes"))]
fn kubernetes_provider(
    loaded: &Loaded,
    _: &ProviderSection,
) -> Result<Arc<dyn crate::provider::Provider>, SetupError> {
    Err(file_error(
        loaded,
        "kind",
        "this defrost was built without the `kubernetes` feature",
    ))
}

fn gateway_credentials(gateway: &GatewaySection) -> Result<Option<Credentials>, SetupError> {
    if !gateway.basic_auth {
        return Ok(None);
    }
    Credentials::from_dir(&gateway.secret_mount_path)
        .map(Some)
        .map_err(|e| {
            SetupError::Credentials(std::io::Error::new(
                e.kind(),
                format!("basic_auth is on but {e}"),
            ))
        })
}

/// The OpenFaaS gateway's configuration, read from its environment variables with their
/// meaning and defaults (8s timeouts, scale from zero only when `scale_from_zero=true`,
/// secrets in `/run/secrets/`), listening on port 8080.
pub fn from_env(var: &dyn Fn(&str) -> Option<String>) -> Result<(Settings, Backend), SetupError> {
    let refused = |variable: &str, message: String| SetupError::Environment {
        variable: variable.into(),
        message,
    };
    let duration = |name: &str, default: Duration| match var(name).filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(v) => parse_duration(&v).map_err(|e| refused(name, e)),
    };
    let number = |name: &str, default: usize| match var(name).filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| refused(name, format!("{v:?} is not a whole number"))),
    };
    let gateway = GatewaySection {
        listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
        upstream_timeout: crate::config::Dur(duration("upstream_timeout", Duration::from_secs(8))?),
        scale_from_zero: var("scale_from_zero").as_deref() == Some("true"),
        default_namespace: var("function_namespace")
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| "openfaas-fn".into()),
        basic_auth: var("basic_auth").as_deref() == Some("true"),
        secret_mount_path: PathBuf::from(
            var("secret_mount_path").unwrap_or_else(|| "/run/secrets/".into()),
        ),
        max_idle_per_host: number("max_idle_conns_per_host", 1024)?,
        ..GatewaySection::default()
    };
    // Read for their meaning in the OpenFaaS gateway: client read/write timeouts.
    let read_timeout = duration("read_timeout", Duration::from_secs(8))?;
    let write_timeout = duration("write_timeout", Duration::from_secs(8))?;
    let _max_idle_total = number("max_idle_conns", 1024)?;
    let mut settings = Settings::from(&gateway);
    settings.client_read_timeout = read_timeout;
    settings.client_write_timeout = write_timeout;
    settings.auth = gateway_credentials(&gateway)?;
    settings.queue = queue_from_env(var, &duration, &number)?;
    let backend = match var("functions_provider_url").filter(|u| !u.is_empty()) {
        Some(url) => Backend::OpenFaas(Arc::new(OpenFaasProvider::new(OpenFaasOptions {
            base_url: url,
            credentials: settings.auth.clone(),
            timeout: settings.proxy.upstream_timeout,
            max_idle_per_host: gateway.max_idle_per_host,
        })?)),
        None => {
            log::warn!("no config file and no functions_provider_url: serving no functions");
            let options = ProcessOptions {
                stop_grace: gateway.stop_grace.0,
            };
            let provider = ProcessProvider::new(Vec::new(), options)?;
            Backend::Process(Arc::new(provider))
        }
    };
    Ok((settings, backend))
}

/// The async queue from the environment: on the NATS server the OpenFaaS gateway uses
/// (`faas_nats_address`, `faas_nats_port`; OpenFaaS's stream and consumer names, and its
/// queue-worker's `ack_wait`), else the store in `queue_path`; and the OpenFaaS
/// queue-worker's own variables for what they mean there: `max_inflight` (calls of one
/// function at once), `max_retry_attempts`, `initial_retry_wait`. Without `queue_path` there is
/// no queue: a durable store needs a place the operator chose (a volume), and one kept in
/// memory would lose accepted calls.
fn queue_from_env(
    var: &dyn Fn(&str) -> Option<String>,
    duration: &dyn Fn(&str, Duration) -> Result<Duration, SetupError>,
    number: &dyn Fn(&str, usize) -> Result<usize, SetupError>,
) -> Result<Option<QueueConfig>, SetupError> {
    let defaults = QueueConfig::default();
    let at_least_one = |name: &str, default: usize| match number(name, default)? {
        0 => Err(SetupError::Environment {
            variable: name.into(),
            message: "must be at least 1".into(),
        }),
        n => Ok(n),
    };
    let nats = match var("faas_nats_address").filter(|a| !a.is_empty()) {
        Some(address) => {
            let port = number("faas_nats_port", 4222)?;
            let mut nats = NatsQueue::openfaas(format!("nats://{address}:{port}"));
            nats.ack_wait = duration("ack_wait", nats.ack_wait)?;
            Some(nats)
        }
        None => None,
    };
    let path = match var("queue_path").filter(|p| !p.is_empty()) {
        Some(path) => PathBuf::from(path),
        None if nats.is_some() => defaults.path.clone(),
        None => {
            log::info!("no queue_path and no faas_nats_address: asynchronous calls are off");
            return Ok(None);
        }
    };
    Ok(Some(QueueConfig {
        nats,
        path: std::path::absolute(&path).unwrap_or(path),
        concurrency: at_least_one("max_inflight", defaults.concurrency)?,
        max_attempts: u32::try_from(at_least_one(
            "max_retry_attempts",
            defaults.max_attempts as usize,
        )?)
        .unwrap_or(u32::MAX),
        retry_backoff: duration("initial_retry_wait", defaults.retry_backoff)?,
        ..defaults
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn openfaas_environment_defaults() {
        let (settings, backend) = from_env(&env(&[(
            "functions_provider_url",
            "http://127.0.0.1:8081/",
        )]))
        .unwrap();
        assert_eq!(settings.listen.port(), 8080);
        assert_eq!(settings.proxy.upstream_timeout, Duration::from_secs(8));
        assert!(!settings.scaling.scale_from_zero);
        assert_eq!(settings.default_namespace, "openfaas-fn");
        let Backend::OpenFaas(provider) = backend else {
            panic!("not the OpenFaaS provider");
        };
        assert_eq!(provider.remote_api().base_url, "http://127.0.0.1:8081");
        assert!(settings.queue.is_none(), "no queue without queue_path");
    }

    #[test]
    fn the_queue_from_the_environment_takes_the_queue_workers_variables() {
        let (settings, _) = from_env(&env(&[
            ("queue_path", "/var/lib/defrost/queue.redb"),
            ("max_inflight", "4"),
            ("max_retry_attempts", "7"),
            ("initial_retry_wait", "2s"),
        ]))
        .unwrap();
        let queue = settings.queue.unwrap();
        assert_eq!(queue.path, PathBuf::from("/var/lib/defrost/queue.redb"));
        assert_eq!(
            (queue.concurrency, queue.max_attempts, queue.retry_backoff),
            (4, 7, Duration::from_secs(2))
        );
        let refused = from_env(&env(&[("queue_path", "q.redb"), ("max_inflight", "0")]));
        assert!(
            matches!(refused, Err(SetupError::Environment { ref variable, .. }) if variable == "max_inflight")
        );
    }

    #[test]
    fn the_openfaas_gateways_nats_variables_put_the_queue_on_jetstream() {
        let (settings, _) = from_env(&env(&[
            ("faas_nats_address", "nats.openfaas"),
            ("faas_nats_port", "4223"),
            ("ack_wait", "5m5s"),
        ]))
        .unwrap();
        let nats = settings.queue.unwrap().nats.unwrap();
        assert_eq!(nats.url, "nats://nats.openfaas:4223");
        assert_eq!(
            (nats.stream.as_str(), nats.consumer.as_str()),
            ("faas-request", "faas-request-workers")
        );
        assert_eq!(nats.ack_wait, Duration::from_secs(305));
        let (settings, _) = from_env(&env(&[("faas_nats_address", "nats")])).unwrap();
        assert_eq!(
            settings.queue.unwrap().nats.unwrap().url,
            "nats://nats:4222"
        );
    }

    #[test]
    fn openfaas_environment_values() {
        let (settings, _) = from_env(&env(&[
            ("upstream_timeout", "1m30s"),
            ("read_timeout", "15"),
            ("scale_from_zero", "true"),
            ("function_namespace", "fns"),
        ]))
        .unwrap();
        assert_eq!(settings.proxy.upstream_timeout, Duration::from_secs(90));
        assert_eq!(settings.client_read_timeout, Duration::from_secs(15));
        assert!(settings.scaling.scale_from_zero);
        assert_eq!(settings.default_namespace, "fns");
        assert!(from_env(&env(&[("upstream_timeout", "soon")]))
            .err()
            .unwrap()
            .to_string()
            .contains("upstream_timeout"));
        assert!(from_env(&env(&[
            ("basic_auth", "true"),
            ("secret_mount_path", "/nonexistent")
        ]))
        .err()
        .unwrap()
        .to_string()
        .contains("basic-auth-user"));
    }

    #[cfg(feature = "kubernetes")]
    #[test]
    fn a_kubernetes_provider_without_usable_credentials_is_refused_at_start() {
        let path = Path::new("/etc/defrost/defrost.toml");
        let text = "[provider]\nkind = \"kubernetes\"\nkubeconfig = \"missing.kubeconfig\"\n";
        let loaded = Loaded::parse(path, text.into()).unwrap();
        let e = from_file(&loaded).err().expect("refused").to_string();
        assert!(e.contains("/etc/defrost/missing.kubeconfig"), "{e}");
        let text =
            "[provider]\nkind = \"kubernetes\"\n[[function]]\nname = \"f\"\ncommand = [\"x\"]\n";
        let loaded = Loaded::parse(path, text.into()).unwrap();
        let e = from_file(&loaded).err().expect("refused").to_string();
        assert!(
            e.contains("[[function]] entries are for the process provider"),
            "{e}"
        );
    }
}
