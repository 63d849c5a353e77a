//! Where the API server is and who defrost is to it, found as Kubernetes clients find them: a
//! kubeconfig file, or the service account mounted into a pod.
//!
//! Supported: `server`, `certificate-authority(-data)`, `insecure-skip-tls-verify`, and a user's
//! `token`, `tokenFile`, `client-certificate(-data)` and `client-key(-data)`, in the current
//! context or a named one. Exec plugins and auth providers run other programs to get a token;
//! they are refused with a message rather than half supported.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey};
use yaml_rust2::{Yaml, YamlLoader};

/// Where a pod finds its service account.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// A cluster and the credentials to use on it.
#[derive(Clone)]
pub struct Cluster {
    /// `https://host:port`, without a trailing slash.
    pub server: String,
    /// Certificates the server's must chain to; empty: the web's public roots.
    pub ca: Vec<Certificate<'static>>,
    /// Accept any server certificate (`insecure-skip-tls-verify`).
    pub insecure: bool,
    /// A client certificate to present.
    pub client_cert: Option<ClientCert>,
    /// A bearer token, fixed or read from a file.
    pub token: Token,
    /// The namespace the credentials name, for when the config names none.
    pub namespace: Option<String>,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("server", &self.server)
            .field("ca", &self.ca.len())
            .field("insecure", &self.insecure)
            .field("client_cert", &self.client_cert.is_some())
            .field("token", &self.token)
            .field("namespace", &self.namespace)
            .finish()
    }
}

/// A bearer token.
#[derive(Clone, PartialEq, Eq)]
pub enum Token {
    None,
    Fixed(String),
    /// Re-read as it rotates: service account tokens are projected and renewed in place.
    File(PathBuf),
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::None => f.write_str("None"),
            Token::Fixed(_) => f.write_str("Fixed(<redacted>)"),
            Token::File(path) => write!(f, "File({})", path.display()),
        }
    }
}

/// Why no usable credentials were found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialsError(pub String);

impl fmt::Display for CredentialsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn error(message: impl Into<String>) -> CredentialsError {
    CredentialsError(message.into())
}

/// The credentials a client would use: `kubeconfig` when given, else `$KUBECONFIG` (its first
/// file), else the pod's service account when `KUBERNETES_SERVICE_HOST` is set, else
/// `~/.kube/config`.
pub fn discover(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<Cluster, CredentialsError> {
    if let Some(path) = kubeconfig {
        return from_kubeconfig(path, context);
    }
    if let Some(first) = var("KUBECONFIG")
        .as_deref()
        .and_then(|v| v.split(':').find(|p| !p.is_empty()))
    {
        return from_kubeconfig(Path::new(first), context);
    }
    if var("KUBERNETES_SERVICE_HOST").is_some_and(|h| !h.is_empty()) {
        return in_cluster(Path::new(SERVICE_ACCOUNT_DIR), var);
    }
    match var("HOME") {
        Some(home) => from_kubeconfig(&Path::new(&home).join(".kube/config"), context),
        None => Err(error(
            "no kubeconfig given, KUBECONFIG unset, not in a pod (KUBERNETES_SERVICE_HOST unset) and no HOME",
        )),
    }
}

/// The pod's service account: the API server from `KUBERNETES_SERVICE_HOST`/`_PORT`, the token,
/// CA bundle and namespace from `dir`.
pub fn in_cluster(
    dir: &Path,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<Cluster, CredentialsError> {
    let host = var("KUBERNETES_SERVICE_HOST")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| error("KUBERNETES_SERVICE_HOST is not set: not running in a pod"))?;
    let port = var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|| "443".into());
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let token = dir.join("token");
    std::fs::metadata(&token)
        .map_err(|e| error(format!("service account token {}: {e}", token.display())))?;
    let ca = certificates(&read(&dir.join("ca.crt"))?, "ca.crt")?;
    let namespace = std::fs::read_to_string(dir.join("namespace"))
        .ok()
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty());
    Ok(Cluster {
        server: format!("https://{host}:{port}"),
        ca,
        insecure: false,
        client_cert: None,
        token: Token::File(token),
        namespace,
    })
}

/// The cluster and user of `context` (the file's `current-context` when `None`) in the
/// kubeconfig file at `path`; relative file names in it are relative to the file.
pub fn from_kubeconfig(path: &Path, context: Option<&str>) -> Result<Cluster, CredentialsError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| error(format!("kubeconfig {}: {e}", path.display())))?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse_kubeconfig(&text, base, context)
        .map_err(|e| error(format!("kubeconfig {}: {e}", path.display())))
}

fn parse_kubeconfig(
    text: &str,
    base: &Path,
    context: Option<&str>,
) -> Result<Cluster, CredentialsError> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| error(format!("not YAML: {e}")))?;
    let doc = docs.first().ok_or_else(|| error("empty file"))?;
    let context_name = match context {
        Some(name) => name.to_owned(),
        None => doc["current-context"]
            .as_str()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| error("no current-context, and no context named in the config"))?
            .to_owned(),
    };
    let ctx = named(doc, "contexts", "context", &context_name)?;
    let cluster_name = ctx["cluster"]
        .as_str()
        .ok_or_else(|| error(format!("context {context_name:?} names no cluster")))?;
    let cluster = named(doc, "clusters", "cluster", cluster_name)?;
    let user = match ctx["user"].as_str() {
        Some(user) => named(doc, "users", "user", user)?,
        None => &Yaml::BadValue,
    };
    if !user["exec"].is_badvalue() || !user["auth-provider"].is_badvalue() {
        return Err(error(format!(
            "context {context_name:?}: exec plugins and auth providers are not supported; use a token, a token file or a client certificate"
        )));
    }
    let server = cluster["server"]
        .as_str()
        .ok_or_else(|| error(format!("cluster {cluster_name:?} has no server")))?
        .trim_end_matches('/')
        .to_owned();
    if !server.starts_with("https://") && !server.starts_with("http://") {
        return Err(error(format!(
            "cluster {cluster_name:?}: server {server:?} is not an http(s) URL"
        )));
    }
    let ca = match data_or_file(cluster, "certificate-authority", base)? {
        Some(pem) => certificates(&pem, "certificate-authority")?,
        None => Vec::new(),
    };
    let cert = data_or_file(user, "client-certificate", base)?;
    let key = data_or_file(user, "client-key", base)?;
    let client_cert = match (cert, key) {
        (Some(cert), Some(key)) => Some(ClientCert::new_with_certs(
            &certificates(&cert, "client-certificate")?,
            PrivateKey::from_pem(&key)
                .map_err(|e| error(format!("client-key: {e}")))?
                .to_owned(),
        )),
        (None, None) => None,
        _ => {
            return Err(error(
                "a client certificate needs both client-certificate and client-key",
            ))
        }
    };
    let token = match (user["token"].as_str(), user["tokenFile"].as_str()) {
        (Some(token), _) if !token.is_empty() => Token::Fixed(token.to_owned()),
        (_, Some(file)) if !file.is_empty() => Token::File(base.join(file)),
        _ => Token::None,
    };
    Ok(Cluster {
        server,
        ca,
        insecure: cluster["insecure-skip-tls-verify"].as_bool() == Some(true),
        client_cert,
        token,
        namespace: ctx["namespace"]
            .as_str()
            .filter(|n| !n.is_empty())
            .map(str::to_owned),
    })
}

/// The entry called `name` in the list `list`, unwrapped from its `field`.
fn named<'a>(
    doc: &'a Yaml,
    list: &str,
    field: &str,
    name: &str,
) -> Result<&'a Yaml, CredentialsError> {
    doc[list]
        .as_vec()
        .into_iter()
        .flatten()
        .find(|entry| entry["name"].as_str() == Some(name))
        .map(|entry| &entry[field])
        .ok_or_else(|| error(format!("no {field} named {name:?} in {list}")))
}

/// `KEY-data` (base64) or the file `KEY` names.
fn data_or_file(
    section: &Yaml,
    key: &str,
    base: &Path,
) -> Result<Option<Vec<u8>>, CredentialsError> {
    if let Some(data) = section[format!("{key}-data").as_str()].as_str() {
        let compact: String = data.split_whitespace().collect();
        return base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map(Some)
            .map_err(|e| error(format!("{key}-data is not base64: {e}")));
    }
    match section[key].as_str() {
        Some(file) => read(&base.join(file)).map(Some),
        None => Ok(None),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CredentialsError> {
    std::fs::read(path).map_err(|e| error(format!("{}: {e}", path.display())))
}

/// Every certificate in a PEM bundle; a bundle with none is an error.
fn certificates(pem: &[u8], what: &str) -> Result<Vec<Certificate<'static>>, CredentialsError> {
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        match item.map_err(|e| error(format!("{what}: {e}")))? {
            PemItem::Certificate(cert) => certs.push(cert),
            _ => continue,
        }
    }
    if certs.is_empty() {
        return Err(error(format!("{what}: no PEM certificate in it")));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::kubernetes::test_support::{pem, TempDir};

    fn kubeconfig(user: &str) -> String {
        format!(
            "apiVersion: v1
kind: Config
current-context: dev
contexts:
- name: dev
  context: {{cluster: local, user: alice, namespace: team}}
- name: other
  context: {{cluster: local, user: bob}}
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:6443/
    certificate-authority-data: {}
users:
- name: alice
  user:
{user}
- name: bob
  user: {{token: bobs}}
",
            base64::engine::general_purpose::STANDARD.encode(pem("CERTIFICATE", b"ca"))
        )
    }

    #[test]
    fn the_current_context_gives_server_ca_token_and_namespace() {
        let cluster =
            parse_kubeconfig(&kubeconfig("    token: abc"), Path::new("/x"), None).unwrap();
        assert_eq!(cluster.server, "https://127.0.0.1:6443");
        assert_eq!(cluster.ca.len(), 1);
        assert_eq!(cluster.ca[0].der(), b"ca");
        assert_eq!(cluster.token, Token::Fixed("abc".into()));
        assert_eq!(cluster.namespace.as_deref(), Some("team"));
        assert!(cluster.client_cert.is_none());
        let other = parse_kubeconfig(
            &kubeconfig("    token: abc"),
            Path::new("/x"),
            Some("other"),
        )
        .unwrap();
        assert_eq!(other.token, Token::Fixed("bobs".into()));
        assert_eq!(other.namespace, None);
    }

    #[test]
    fn client_certificates_and_token_files_are_read_relative_to_the_file() {
        let dir = TempDir::new("kubeconfig");
        std::fs::write(dir.path().join("me.crt"), pem("CERTIFICATE", b"me")).unwrap();
        std::fs::write(dir.path().join("me.key"), pem("PRIVATE KEY", b"key")).unwrap();
        let user = "    client-certificate: me.crt\n    client-key: me.key\n    tokenFile: tok";
        std::fs::write(dir.path().join("config"), kubeconfig(user)).unwrap();
        let cluster = from_kubeconfig(&dir.path().join("config"), None).unwrap();
        let cert = cluster.client_cert.expect("client certificate");
        assert_eq!(cert.certs()[0].der(), b"me");
        assert_eq!(cert.private_key().der(), b"key");
        assert_eq!(cluster.token, Token::File(dir.path().join("tok")));
    }

    #[test]
    fn what_cannot_be_used_is_refused_with_a_reason() {
        let exec = "    exec: {command: aws}";
        let e = parse_kubeconfig(&kubeconfig(exec), Path::new("/x"), None).unwrap_err();
        assert!(e.0.contains("exec plugins"), "{e}");
        let e = parse_kubeconfig(&kubeconfig("    token: a"), Path::new("/x"), Some("nope"))
            .unwrap_err();
        assert!(e.0.contains("no context named \"nope\""), "{e}");
        let e = parse_kubeconfig(
            &kubeconfig("    client-certificate-data: bm90IGEgY2VydA=="),
            Path::new("/x"),
            None,
        )
        .unwrap_err();
        assert!(e.0.contains("both"), "{e}");
        let e = parse_kubeconfig("a: [", Path::new("/x"), None).unwrap_err();
        assert!(e.0.contains("not YAML"), "{e}");
        let e = from_kubeconfig(Path::new("/nonexistent/kubeconfig"), None).unwrap_err();
        assert!(e.0.contains("/nonexistent/kubeconfig"), "{e}");
    }

    #[test]
    fn in_a_pod_the_service_account_is_used_and_its_token_file_kept() {
        let dir = TempDir::new("serviceaccount");
        std::fs::write(dir.path().join("token"), "t1").unwrap();
        std::fs::write(dir.path().join("ca.crt"), pem("CERTIFICATE", b"ca")).unwrap();
        std::fs::write(dir.path().join("namespace"), "fns\n").unwrap();
        let env = |name: &str| match name {
            "KUBERNETES_SERVICE_HOST" => Some("10.0.0.1".to_owned()),
            "KUBERNETES_SERVICE_PORT" => Some("443".to_owned()),
            _ => None,
        };
        let cluster = in_cluster(dir.path(), &env).unwrap();
        assert_eq!(cluster.server, "https://10.0.0.1:443");
        assert_eq!(cluster.token, Token::File(dir.path().join("token")));
        assert_eq!(cluster.namespace.as_deref(), Some("fns"));
        let v6 = |name: &str| (name == "KUBERNETES_SERVICE_HOST").then(|| "fd00::1".to_owned());
        assert_eq!(
            in_cluster(dir.path(), &v6).unwrap().server,
            "https://[fd00::1]:443"
        );
        assert!(in_cluster(dir.path(), &|_| None).is_err());
    }

    #[test]
    fn discovery_prefers_kubeconfig_variable_over_the_pod() {
        let env = |name: &str| match name {
            "KUBECONFIG" => Some("/nonexistent/a:/b".to_owned()),
            "KUBERNETES_SERVICE_HOST" => Some("10.0.0.1".to_owned()),
            _ => None,
        };
        let e = discover(None, None, &env).unwrap_err();
        assert!(e.0.contains("/nonexistent/a"), "{e}");
    }
}
