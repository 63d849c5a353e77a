//! Function identity: the validated `name.namespace` pair every other module keys on.
//!
//! Names arrive from URLs, config files and providers. Validating them once, here, means no
//! other module ever has to ask whether a name is safe to put in a URL, a host name, a log line
//! or a file path: holding a [`FunctionRef`] is the proof.

use std::fmt;

/// The namespace a function lives in when none is named.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Longest DNS label (RFC 1123), which is what Kubernetes and OpenFaaS allow for names.
const MAX_LABEL: usize = 63;

/// A function's name and namespace, both valid DNS labels.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FunctionRef {
    name: String,
    namespace: String,
    /// `name.namespace`, precomputed because it is the cache and single-flight key on every
    /// request.
    key: String,
}

impl FunctionRef {
    /// Checks both labels and builds the reference.
    pub fn new(name: &str, namespace: &str) -> Result<FunctionRef, NameError> {
        check_label("function name", name)?;
        check_label("namespace", namespace)?;
        Ok(FunctionRef {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            key: format!("{name}.{namespace}"),
        })
    }

    /// Parses `name` or `name.namespace`, as found in `/function/{...}` paths.
    pub fn parse(qualified: &str, default_namespace: &str) -> Result<FunctionRef, NameError> {
        match qualified.split_once('.') {
            Some((name, namespace)) => FunctionRef::new(name, namespace),
            None => FunctionRef::new(qualified, default_namespace),
        }
    }

    /// The function's name (a DNS label).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its namespace (a DNS label).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `name.namespace`: the key of caches and in-flight maps, and the form used in messages.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl fmt::Display for FunctionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)
    }
}

impl fmt::Debug for FunctionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FunctionRef({})", self.key)
    }
}

/// Why a name was refused; the message is sent to clients as is, so it says what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameError {
    /// Which part is at fault: `name` or `namespace`.
    pub what: &'static str,
    /// Why it is not a DNS label.
    pub reason: String,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.what, self.reason)
    }
}

impl std::error::Error for NameError {}

/// The namespace OpenFaaS puts functions in when none is named, which its clients name
/// outright: faas-cli 0.18 calls `/function/echo.openfaas-fn`.
pub const OPENFAAS_NAMESPACE: &str = "openfaas-fn";

/// How the namespace a request names (or leaves out) resolves.
///
/// A request without a namespace is for the default one. When the gateway answers for its own
/// functions (the embedded provider) and that default is not `openfaas-fn`, `openfaas-fn` is
/// taken as another name for it, so that OpenFaaS clients work against a config file that never
/// mentions namespaces. In front of a remote provider names pass unchanged: there `openfaas-fn`
/// may be a namespace of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespaces {
    default: String,
    openfaas_alias: bool,
}

impl Namespaces {
    /// `default` for unqualified names, with `openfaas-fn` as its alias.
    pub fn new(default: impl Into<String>) -> Namespaces {
        let default = default.into();
        Namespaces {
            openfaas_alias: default != OPENFAAS_NAMESPACE,
            default,
        }
    }

    /// The same, with every named namespace taken as it is.
    pub fn without_alias(self) -> Namespaces {
        Namespaces {
            openfaas_alias: false,
            ..self
        }
    }

    /// The namespace of functions named without one.
    pub fn default_namespace(&self) -> &str {
        &self.default
    }

    /// The namespace meant by `named`: the default when it is absent or empty, or an alias.
    pub fn resolve<'a>(&'a self, named: Option<&'a str>) -> &'a str {
        match named {
            None | Some("") => &self.default,
            Some(OPENFAAS_NAMESPACE) if self.openfaas_alias => &self.default,
            Some(ns) => ns,
        }
    }

    /// `function` with its namespace resolved.
    pub fn resolve_function(&self, function: FunctionRef) -> FunctionRef {
        let namespace = self.resolve(Some(function.namespace()));
        if namespace == function.namespace() {
            return function;
        }
        FunctionRef::new(function.name(), namespace).unwrap_or(function)
    }
}

/// A DNS label: 1 to 63 of `a-z`, `0-9` and `-`, neither starting nor ending with `-`.
pub fn check_label(what: &'static str, label: &str) -> Result<(), NameError> {
    let refuse = |reason: String| Err(NameError { what, reason });
    if label.is_empty() {
        return refuse("it is empty".into());
    }
    if label.len() > MAX_LABEL {
        return refuse(format!(
            "it is {} characters long; at most {MAX_LABEL} are allowed",
            label.len()
        ));
    }
    if let Some(bad) = label
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return refuse(format!(
            "{:?} contains {:?}; only lowercase letters, digits and '-' are allowed",
            printable(label),
            bad
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return refuse(format!("{label:?} must not start or end with '-'"));
    }
    Ok(())
}

/// Keeps hostile names from flooding a response or a log line.
fn printable(s: &str) -> String {
    const SHOWN: usize = 80;
    let mut out: String = s.chars().take(SHOWN).collect();
    if s.chars().count() > SHOWN {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openfaas_fn_names_the_default_namespace_unless_told_otherwise() {
        let local = Namespaces::new("default");
        assert_eq!(local.resolve(Some("openfaas-fn")), "default");
        assert_eq!(local.resolve(Some("team")), "team");
        assert_eq!(local.resolve(None), "default");
        assert_eq!(local.resolve(Some("")), "default");
        let echo = FunctionRef::parse("echo.openfaas-fn", "default").unwrap();
        assert_eq!(local.resolve_function(echo.clone()).key(), "echo.default");
        let remote = Namespaces::new("default").without_alias();
        assert_eq!(remote.resolve_function(echo).key(), "echo.openfaas-fn");
        let openfaas = Namespaces::new("openfaas-fn");
        assert_eq!(openfaas.resolve(Some("openfaas-fn")), "openfaas-fn");
        assert_eq!(openfaas.resolve(None), "openfaas-fn");
    }

    #[test]
    fn plain_name_takes_default_namespace() {
        let f = FunctionRef::parse("hello", "default").unwrap();
        assert_eq!(
            (f.name(), f.namespace(), f.key()),
            ("hello", "default", "hello.default")
        );
    }

    #[test]
    fn dotted_name_names_its_namespace() {
        let f = FunctionRef::parse("hello.staging", "default").unwrap();
        assert_eq!(f.key(), "hello.staging");
    }

    #[test]
    fn refuses_what_is_not_a_dns_label() {
        for bad in [
            "",
            "Hello",
            "a_b",
            "-a",
            "a-",
            "a.b.c",
            "..",
            "a/b",
            "é",
            &"a".repeat(64),
        ] {
            assert!(
                FunctionRef::parse(bad, "default").is_err(),
                "{bad:?} accepted"
            );
        }
        assert!(FunctionRef::parse(&"a".repeat(63), "default").is_ok());
        assert!(FunctionRef::parse("fn-1.ns-2", "default").is_ok());
    }

    #[test]
    fn error_says_what_and_why() {
        let e = FunctionRef::parse("Hello", "default").unwrap_err();
        assert_eq!(e.what, "function name");
        assert!(e.to_string().contains("lowercase"), "{e}");
    }
}
