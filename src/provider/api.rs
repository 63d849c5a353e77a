//! Serving the faas-provider HTTP API from any [`Provider`], so that an OpenFaaS gateway, or
//! another defrost, can use this defrost as its provider.
//!
//! Pure request-to-reply functions: the gateway's server glue reads the request and writes the
//! reply, which keeps this module testable without sockets.

use super::wire;
use super::{FunctionSummary, Provider, ProviderError};
use crate::function::{check_label, FunctionRef};

/// A reply to send as is.
#[derive(Debug)]
pub struct ApiReply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl ApiReply {
    fn text(status: u16, message: impl Into<String>) -> ApiReply {
        let mut body = message.into().into_bytes();
        body.push(b'\n');
        ApiReply {
            status,
            content_type: "text/plain; charset=utf-8",
            body,
        }
    }

    fn json<T: serde::Serialize>(value: &T) -> ApiReply {
        match serde_json::to_vec(value) {
            Ok(body) => ApiReply {
                status: 200,
                content_type: "application/json",
                body,
            },
            Err(e) => ApiReply::text(500, format!("cannot encode the answer: {e}")),
        }
    }

    fn provider_error(what: &str, e: &ProviderError) -> ApiReply {
        let status = match e {
            ProviderError::NotFound => 404,
            ProviderError::Refused(_) => 400,
            ProviderError::Unavailable(_) | ProviderError::Failed(_) => 502,
        };
        ApiReply::text(status, format!("{what}: {e}"))
    }
}

/// The scale operation to use: the gateway passes its coalesced scaler.
pub type ScaleFn<'a> = &'a dyn Fn(&FunctionRef, u64) -> Result<(), ProviderError>;

/// The request, as far as the API needs it.
pub struct ApiRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub body: &'a [u8],
}

/// Answers one `/system/...` request.
pub fn handle(
    provider: &dyn Provider,
    scale: ScaleFn<'_>,
    default_namespace: &str,
    req: &ApiRequest<'_>,
) -> ApiReply {
    let namespace = query_param(req.query, "namespace").filter(|ns| !ns.is_empty());
    let namespace = namespace.as_deref().unwrap_or(default_namespace);
    let segments: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    match (req.method, segments.as_slice()) {
        ("GET", ["system", "functions"]) => list(provider, namespace),
        (_, ["system", "functions"]) => ApiReply::text(
            501,
            "functions of this provider are declared in its config file; deploy, update and delete are not supported",
        ),
        ("GET", ["system", "function", name]) => function_status(provider, name, namespace),
        ("POST", ["system", "scale-function", name]) => scale_function(scale, name, req.query, req.body, default_namespace),
        ("GET", ["system", "namespaces"]) => match provider.namespaces() {
            Ok(namespaces) => ApiReply::json(&namespaces),
            Err(e) => ApiReply::provider_error("namespaces", &e),
        },
        ("GET", ["system", "info"]) => ApiReply::json(&info()),
        (_, ["system", "function", _]) | (_, ["system", "namespaces"]) | (_, ["system", "info"]) => {
            ApiReply::text(405, format!("{} is not allowed on {}; use GET", req.method, req.path))
        }
        (_, ["system", "scale-function", _]) => {
            ApiReply::text(405, format!("{} is not allowed on {}; use POST", req.method, req.path))
        }
        _ => ApiReply::text(404, format!("no route for {}", req.path)),
    }
}

fn list(provider: &dyn Provider, namespace: &str) -> ApiReply {
    if let Err(e) = check_label("namespace", namespace) {
        return ApiReply::text(400, e.to_string());
    }
    match provider.list(namespace) {
        Ok(functions) => ApiReply::json(
            &functions
                .iter()
                .map(wire::FunctionJson::from)
                .collect::<Vec<_>>(),
        ),
        Err(e) => ApiReply::provider_error("functions", &e),
    }
}

fn function_status(provider: &dyn Provider, name: &str, namespace: &str) -> ApiReply {
    let function = match FunctionRef::new(name, namespace) {
        Ok(f) => f,
        Err(e) => return ApiReply::text(400, e.to_string()),
    };
    match provider.status(&function) {
        Ok(status) => {
            let summary = FunctionSummary {
                image: image_of(provider, &function),
                function,
                status,
            };
            ApiReply::json(&wire::FunctionJson::from(&summary))
        }
        Err(e) => ApiReply::provider_error(&format!("function {function}"), &e),
    }
}

/// The image is only known from the listing; a failed listing costs the field, not the answer.
fn image_of(provider: &dyn Provider, function: &FunctionRef) -> String {
    provider
        .list(function.namespace())
        .ok()
        .and_then(|all| all.into_iter().find(|s| &s.function == function))
        .map(|s| s.image)
        .unwrap_or_default()
}

fn scale_function(
    scale: ScaleFn<'_>,
    name: &str,
    query: Option<&str>,
    body: &[u8],
    default_ns: &str,
) -> ApiReply {
    let request: wire::ScaleServiceRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return ApiReply::text(
                400,
                format!("scale request is not a ScaleServiceRequest: {e}"),
            )
        }
    };
    // faas-netes reads the namespace from the query, faasd from the body: accept either.
    let namespace = query_param(query, "namespace")
        .filter(|ns| !ns.is_empty())
        .or_else(|| (!request.namespace.is_empty()).then(|| request.namespace.clone()))
        .unwrap_or_else(|| default_ns.to_owned());
    let function = match FunctionRef::new(name, &namespace) {
        Ok(f) => f,
        Err(e) => return ApiReply::text(400, e.to_string()),
    };
    match scale(&function, request.replicas) {
        Ok(()) => ApiReply::text(
            202,
            format!("scaling {function} to {} replicas", request.replicas),
        ),
        Err(e) => ApiReply::provider_error(&format!("function {function}"), &e),
    }
}

fn info() -> wire::ProviderInfo {
    wire::ProviderInfo {
        provider: "defrost".into(),
        orchestration: "process".into(),
        version: wire::VersionInfo {
            sha: String::new(),
            release: env!("CARGO_PKG_VERSION").into(),
        },
    }
}

/// A query parameter's value, percent-decoded where it is plain ASCII.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| percent_decode(v))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', ..) => {
                out.push(b' ');
                i += 1;
            }
            (b, ..) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::FunctionStatus;
    use parking_lot::Mutex;

    struct One;

    impl Provider for One {
        fn status(&self, f: &FunctionRef) -> Result<FunctionStatus, ProviderError> {
            match f.key() {
                "echo.default" => Ok(FunctionStatus {
                    replicas: 2,
                    available_replicas: 1,
                    ..Default::default()
                }),
                "cold.default" => Ok(FunctionStatus::default()),
                _ => Err(ProviderError::NotFound),
            }
        }
        fn set_replicas(&self, _: &FunctionRef, _: u64) -> Result<(), ProviderError> {
            Ok(())
        }
        fn list(&self, ns: &str) -> Result<Vec<FunctionSummary>, ProviderError> {
            Ok(["echo", "cold"]
                .iter()
                .filter(|_| ns == "default")
                .map(|n| FunctionSummary {
                    function: FunctionRef::new(n, ns).unwrap(),
                    image: format!("python3 {n}.py"),
                    status: self.status(&FunctionRef::new(n, ns).unwrap()).unwrap(),
                })
                .collect())
        }
        fn namespaces(&self) -> Result<Vec<String>, ProviderError> {
            Ok(vec!["default".into()])
        }
    }

    fn call(
        method: &str,
        path: &str,
        query: Option<&str>,
        body: &[u8],
    ) -> (ApiReply, Vec<(String, u64)>) {
        let scaled = Mutex::new(Vec::new());
        let scale = |f: &FunctionRef, n: u64| {
            scaled.lock().push((f.key().to_owned(), n));
            Ok(())
        };
        let reply = handle(
            &One,
            &scale,
            "default",
            &ApiRequest {
                method,
                path,
                query,
                body,
            },
        );
        (reply, scaled.into_inner())
    }

    fn json(reply: &ApiReply) -> serde_json::Value {
        serde_json::from_slice(&reply.body).unwrap()
    }

    #[test]
    fn function_status_follows_faas_provider() {
        let (reply, _) = call("GET", "/system/function/echo", None, b"");
        assert_eq!(reply.status, 200);
        assert_eq!(
            json(&reply),
            serde_json::json!({"name":"echo","image":"python3 echo.py","namespace":"default","labels":{},"replicas":2,"availableReplicas":1})
        );
        let (cold, _) = call(
            "GET",
            "/system/function/cold",
            Some("namespace=default"),
            b"",
        );
        let cold = json(&cold);
        assert!(
            cold.get("replicas").is_none() && cold.get("availableReplicas").is_none(),
            "{cold}"
        );
        assert_eq!(
            call("GET", "/system/function/ghost", None, b"").0.status,
            404
        );
        assert_eq!(call("GET", "/system/function/Bad", None, b"").0.status, 400);
    }

    #[test]
    fn listing_namespaces_and_info() {
        let (reply, _) = call("GET", "/system/functions", None, b"");
        assert_eq!(json(&reply).as_array().map(Vec::len), Some(2));
        assert_eq!(
            json(&call("GET", "/system/namespaces", None, b"").0),
            serde_json::json!(["default"])
        );
        let info = json(&call("GET", "/system/info", None, b"").0);
        assert_eq!(info["provider"], "defrost");
        assert_eq!(call("POST", "/system/functions", None, b"{}").0.status, 501);
        assert_eq!(call("DELETE", "/system/info", None, b"").0.status, 405);
        assert_eq!(call("GET", "/system/nothing", None, b"").0.status, 404);
    }

    #[test]
    fn scale_takes_namespace_from_query_or_body() {
        let body = br#"{"serviceName":"echo","namespace":"team","replicas":3}"#;
        let (reply, scaled) = call("POST", "/system/scale-function/echo", None, body);
        assert_eq!(reply.status, 202);
        assert_eq!(scaled, vec![("echo.team".to_string(), 3)]);
        let (_, scaled) = call(
            "POST",
            "/system/scale-function/echo",
            Some("namespace=other"),
            body,
        );
        assert_eq!(scaled, vec![("echo.other".to_string(), 3)]);
        let (bad, scaled) = call("POST", "/system/scale-function/echo", None, b"{nope");
        assert_eq!((bad.status, scaled.len()), (400, 0));
        assert_eq!(
            call("GET", "/system/scale-function/echo", None, b"")
                .0
                .status,
            405
        );
    }

    #[test]
    fn query_params_are_decoded() {
        assert_eq!(
            query_param(Some("a=1&namespace=team%2Da"), "namespace").as_deref(),
            Some("team-a")
        );
        assert_eq!(
            query_param(Some("namespace"), "namespace").as_deref(),
            Some("")
        );
        assert_eq!(query_param(None, "namespace"), None);
    }
}
