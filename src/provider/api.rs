//! Serving the faas-provider HTTP API from any [`Provider`], so that an OpenFaaS gateway, or
//! another defrost, can use this defrost as its provider.
//!
//! Pure request-to-reply functions: the gateway's server glue reads the request and writes the
//! reply, which keeps this module testable without sockets.

use super::wire;
use super::{FunctionSummary, Provider, ProviderError};
use crate::function::{check_label, FunctionRef, Namespaces};

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

/// Calls the gateway has answered for a function, for `invocationCount`: the gateway counts
/// them, not the provider.
pub type InvocationsFn<'a> = &'a dyn Fn(&FunctionRef) -> u64;

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
    invocations: InvocationsFn<'_>,
    namespaces: &Namespaces,
    req: &ApiRequest<'_>,
) -> ApiReply {
    let named = query_param(req.query, "namespace");
    let namespace = namespaces.resolve(named.as_deref());
    let segments: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    match (req.method, segments.as_slice()) {
        ("GET", ["system", "functions"]) => list(provider, invocations, namespace),
        (_, ["system", "functions"]) => ApiReply::text(
            501,
            "functions of this provider are declared in its config file; deploy, update and delete are not supported",
        ),
        ("GET", ["system", "function", name]) => function_status(provider, invocations, name, namespace),
        (_, ["system", "secrets", ..]) => ApiReply::text(
            501,
            "secrets are not supported by this provider: a function's environment comes from its config entry (`env`)",
        ),
        ("POST", ["system", "scale-function", name]) => scale_function(scale, name, req.query, req.body, namespaces),
        ("GET", ["system", "namespaces"]) => match provider.namespaces() {
            Ok(namespaces) => ApiReply::json(&namespaces),
            Err(e) => ApiReply::provider_error("namespaces", &e),
        },
        ("GET", ["system", "info"]) => match provider.info() {
            Ok(info) => ApiReply::json(&wire::GatewayInfo::wrapping(&info)),
            Err(e) => ApiReply::provider_error("provider info", &e),
        },
        (_, ["system", "function", _]) | (_, ["system", "namespaces"]) | (_, ["system", "info"]) => {
            ApiReply::text(405, format!("{} is not allowed on {}; use GET", req.method, req.path))
        }
        (_, ["system", "scale-function", _]) => {
            ApiReply::text(405, format!("{} is not allowed on {}; use POST", req.method, req.path))
        }
        _ => ApiReply::text(404, format!("no route for {}", req.path)),
    }
}

fn list(provider: &dyn Provider, invocations: InvocationsFn<'_>, namespace: &str) -> ApiReply {
    if let Err(e) = check_label("namespace", namespace) {
        return ApiReply::text(400, e.to_string());
    }
    match provider.list(namespace) {
        Ok(functions) => ApiReply::json(
            &functions
                .iter()
                .map(|s| counted(s, invocations))
                .collect::<Vec<_>>(),
        ),
        Err(e) => ApiReply::provider_error("functions", &e),
    }
}

/// A function's JSON with the calls the gateway answered for it.
fn counted(summary: &FunctionSummary, invocations: InvocationsFn<'_>) -> wire::FunctionJson {
    wire::FunctionJson {
        invocation_count: invocations(&summary.function) as f64,
        ..wire::FunctionJson::from(summary)
    }
}

fn function_status(
    provider: &dyn Provider,
    invocations: InvocationsFn<'_>,
    name: &str,
    namespace: &str,
) -> ApiReply {
    let function = match FunctionRef::new(name, namespace) {
        Ok(f) => f,
        Err(e) => return ApiReply::text(400, e.to_string()),
    };
    match provider.status(&function) {
        Ok(status) => {
            let listed = listed(provider, &function);
            let summary = FunctionSummary {
                image: listed.as_ref().map(|s| s.image.clone()).unwrap_or_default(),
                created_at: listed.and_then(|s| s.created_at),
                function,
                status,
            };
            ApiReply::json(&counted(&summary, invocations))
        }
        Err(e) => ApiReply::provider_error(&format!("function {function}"), &e),
    }
}

/// The image and creation time are only known from the listing; a failed listing costs the
/// fields, not the answer.
fn listed(provider: &dyn Provider, function: &FunctionRef) -> Option<FunctionSummary> {
    provider
        .list(function.namespace())
        .ok()
        .and_then(|all| all.into_iter().find(|s| &s.function == function))
}

fn scale_function(
    scale: ScaleFn<'_>,
    name: &str,
    query: Option<&str>,
    body: &[u8],
    namespaces: &Namespaces,
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
    let named = query_param(query, "namespace")
        .filter(|ns| !ns.is_empty())
        .or_else(|| (!request.namespace.is_empty()).then(|| request.namespace.clone()));
    let namespace = namespaces.resolve(named.as_deref());
    let function = match FunctionRef::new(name, namespace) {
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
                    created_at: Some(std::time::UNIX_EPOCH),
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
        let invocations = |f: &FunctionRef| u64::from(f.name() == "echo") * 7;
        let reply = handle(
            &One,
            &scale,
            &invocations,
            &Namespaces::new("default"),
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
            serde_json::json!({"name":"echo","image":"python3 echo.py","namespace":"default","labels":{},"replicas":2,"availableReplicas":1,"invocationCount":7.0,"createdAt":"1970-01-01T00:00:00.000Z"})
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
        let listed = json(&reply);
        assert_eq!(listed[0]["invocationCount"], 7.0, "{listed}");
        assert!(listed[1].get("invocationCount").is_none(), "{listed}");
        assert_eq!(listed[0]["createdAt"], "1970-01-01T00:00:00.000Z");
        assert_eq!(
            json(&call("GET", "/system/namespaces", None, b"").0),
            serde_json::json!(["default"])
        );
        let info = json(&call("GET", "/system/info", None, b"").0);
        assert_eq!(info["provider"]["provider"], "defrost");
        assert_eq!(info["provider"]["orchestration"], "custom");
        assert!(
            !info["version"]["sha"].as_str().unwrap_or("").is_empty(),
            "{info}"
        );
        assert_eq!(call("POST", "/system/functions", None, b"{}").0.status, 501);
        assert_eq!(call("DELETE", "/system/info", None, b"").0.status, 405);
        let secrets = call("GET", "/system/secrets", None, b"").0;
        assert_eq!(secrets.status, 501);
        assert!(String::from_utf8_lossy(&secrets.body).contains("not supported"));
        assert_eq!(call("POST", "/system/secrets", None, b"{}").0.status, 501);
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
