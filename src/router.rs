//! Which route a request target names.
//!
//! Parsing is done on the raw request target, once, without allocating for the path: the
//! function segment is validated as DNS labels (so a name can never smuggle a `/`, a `..` or an
//! encoded byte into an upstream URL), while the rest of the path and the query string are handed
//! to the function exactly as the client sent them.

use crate::function::{check_label, FunctionRef, NameError};

const FUNCTION_PREFIX: &str = "/function/";
const ASYNC_FUNCTION_PREFIX: &str = "/async-function/";

/// What a request is for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// A call to a function. `rest` is empty or starts with `/`.
    Function {
        /// The function named.
        function: FunctionRef,
        /// The path after the function's name.
        rest: &'a str,
        /// The query string, without `?`.
        query: Option<&'a str>,
        /// Whether the path named the namespace (`echo.team`) or left it to the default.
        namespace_named: bool,
    },
    /// A call to a function to be queued and answered 202 (`/async-function/…`); the fields
    /// are those of [`Route::Function`].
    AsyncFunction {
        /// The function named.
        function: FunctionRef,
        /// The path after the function's name.
        rest: &'a str,
        /// The query string, without `?`.
        query: Option<&'a str>,
        /// Whether the path named the namespace.
        namespace_named: bool,
    },
    /// The gateway's own liveness check.
    Healthz,
    /// Prometheus metrics.
    Metrics,
    /// The status page for operators.
    StatusPage,
    /// The provider API (`/system/...`), answered by the provider.
    System {
        /// The whole path, `/system/...`.
        path: &'a str,
        /// The query string, without `?`.
        query: Option<&'a str>,
    },
    /// Nothing here.
    NotFound,
}

/// Parses a request target in origin form (`/path?query`).
///
/// Other forms (absolute URLs, `*`, authority form) never name a route: defrost is not a
/// forward proxy.
pub fn route<'a>(target: &'a str, default_namespace: &str) -> Result<Route<'a>, NameError> {
    let (path, query) = split_target(target);
    if let Some(after) = path.strip_prefix(FUNCTION_PREFIX) {
        return function_route(after, query, default_namespace, false);
    }
    if let Some(after) = path.strip_prefix(ASYNC_FUNCTION_PREFIX) {
        return function_route(after, query, default_namespace, true);
    }
    Ok(match path {
        "/healthz" => Route::Healthz,
        "/metrics" => Route::Metrics,
        "/" | "/ui" | "/ui/" => Route::StatusPage,
        p if p.starts_with("/system/") => Route::System { path: p, query },
        _ => Route::NotFound,
    })
}

/// The route of `/function/…` or `/async-function/…`, from what follows the prefix.
fn function_route<'a>(
    after: &'a str,
    query: Option<&'a str>,
    default_namespace: &str,
    queued: bool,
) -> Result<Route<'a>, NameError> {
    let (qualified, rest) = match after.find('/') {
        Some(slash) => after.split_at(slash),
        None => (after, ""),
    };
    // No name at all (`/function/`, `/function/.default`) names no function: a 404, as
    // the OpenFaaS gateway answers, not a malformed name.
    let no_name = qualified.is_empty()
        || qualified
            .strip_prefix('.')
            .is_some_and(|ns| check_label("namespace", ns).is_ok());
    if no_name {
        return Ok(Route::NotFound);
    }
    let function = FunctionRef::parse(qualified, default_namespace)?;
    let namespace_named = qualified.contains('.');
    Ok(if queued {
        Route::AsyncFunction {
            function,
            rest,
            query,
            namespace_named,
        }
    } else {
        Route::Function {
            function,
            rest,
            query,
            namespace_named,
        }
    })
}

/// `/path?query` into the path and the query (without its `?`).
pub fn split_target(target: &str) -> (&str, Option<&str>) {
    match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    }
}

/// The URL a function call is sent to: the endpoint's base, the rest of the path, the query.
pub fn upstream_url(base: &str, rest: &str, query: Option<&str>) -> String {
    let mut url =
        String::with_capacity(base.len() + rest.len() + query.map_or(0, |q| q.len() + 1) + 1);
    url.push_str(base);
    if rest.is_empty() && !base_has_path(base) {
        url.push('/');
    } else {
        url.push_str(rest);
    }
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

/// `http://host:port` has no path; `http://host:port/function/x` does.
fn base_has_path(base: &str) -> bool {
    let after_scheme = base.split_once("://").map_or(base, |(_, rest)| rest);
    after_scheme.contains('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn function(target: &str) -> (String, String, Option<String>) {
        match route(target, "default").unwrap() {
            Route::Function {
                function,
                rest,
                query,
                ..
            } => (
                function.key().to_string(),
                rest.to_string(),
                query.map(str::to_string),
            ),
            other => panic!("{target} routed to {other:?}"),
        }
    }

    #[test]
    fn function_routes_keep_rest_and_query() {
        assert_eq!(
            function("/function/echo"),
            ("echo.default".into(), "".into(), None)
        );
        assert_eq!(
            function("/function/echo/"),
            ("echo.default".into(), "/".into(), None)
        );
        assert_eq!(
            function("/function/echo.team-a/a/b%2Fc?x=1&y=%20"),
            (
                "echo.team-a".into(),
                "/a/b%2Fc".into(),
                Some("x=1&y=%20".into())
            )
        );
        assert_eq!(
            function("/function/echo?q"),
            ("echo.default".into(), "".into(), Some("q".into()))
        );
    }

    #[test]
    fn async_function_routes_are_parsed_as_function_routes() {
        let Ok(Route::AsyncFunction {
            function,
            rest,
            query,
            namespace_named,
        }) = route("/async-function/echo.team-a/x?y=1", "default")
        else {
            panic!("not an async function route");
        };
        assert_eq!(
            (function.key(), rest, query, namespace_named),
            ("echo.team-a", "/x", Some("y=1"), true)
        );
        assert_eq!(route("/async-function/", "default"), Ok(Route::NotFound));
        assert!(route("/async-function/Bad_Name", "default").is_err());
    }

    #[test]
    fn whether_the_namespace_was_named_is_kept() {
        let named = |target| match route(target, "default").unwrap() {
            Route::Function {
                namespace_named, ..
            } => namespace_named,
            other => panic!("{target} routed to {other:?}"),
        };
        assert!(!named("/function/echo/a.b"));
        assert!(named("/function/echo.default/a"));
    }

    #[test]
    fn bad_names_are_refused_not_routed() {
        for target in [
            "/function/Echo",
            "/function/..",
            "/function/%2e%2e/x",
            "/function/a.b.c",
            "/function/echo.",
        ] {
            assert!(route(target, "default").is_err(), "{target} accepted");
        }
    }

    #[test]
    fn other_routes() {
        assert_eq!(route("/healthz", "default").unwrap(), Route::Healthz);
        assert_eq!(route("/metrics", "default").unwrap(), Route::Metrics);
        for page in ["/", "/ui", "/ui/?x=1"] {
            assert_eq!(route(page, "default").unwrap(), Route::StatusPage);
        }
        assert_eq!(
            route("/system/functions?namespace=x", "default").unwrap(),
            Route::System {
                path: "/system/functions",
                query: Some("namespace=x")
            }
        );
        for target in [
            "/uix",
            "/function",
            "/functions/x",
            "http://evil/function/x",
            "*",
            "/healthz/x",
            "/function/",
            "/function/.default",
            "/function/.default/x",
        ] {
            assert_eq!(
                route(target, "default").unwrap(),
                Route::NotFound,
                "{target}"
            );
        }
    }

    #[test]
    fn upstream_urls() {
        assert_eq!(
            upstream_url("http://127.0.0.1:9", "", None),
            "http://127.0.0.1:9/"
        );
        assert_eq!(
            upstream_url("http://127.0.0.1:9", "/a", Some("b=1")),
            "http://127.0.0.1:9/a?b=1"
        );
        assert_eq!(
            upstream_url("http://gw:8080/function/f.ns", "", Some("x")),
            "http://gw:8080/function/f.ns?x"
        );
        assert_eq!(
            upstream_url("http://gw:8080/function/f.ns", "/p", None),
            "http://gw:8080/function/f.ns/p"
        );
    }
}
