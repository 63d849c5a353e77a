//! HTTP triggers: URL patterns (with methods and hosts) mapped to functions, as in Fission's
//! router, and weighted distribution between functions for canaries.
//!
//! Patterns are stored in a trie keyed by path segment, so a lookup costs one step per segment
//! of the request path whatever the number of triggers. At each step a literal segment is
//! preferred to a `{param}`, and a `{param}` to a trailing catch-all: the most specific pattern
//! wins, and two patterns that would match exactly the same requests are refused when the
//! table is built, naming both.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::function::FunctionRef;

/// One trigger as configured.
#[derive(Debug, Clone)]
pub struct TriggerSpec {
    /// `/literal/{param}/...`, optionally ending in `{name...}` (rest of the path).
    pub path: String,
    /// Upper-case method names; empty means any method.
    pub methods: Vec<String>,
    /// Exact `Host` (without port) to match; `None` matches any host.
    pub host: Option<String>,
    /// Functions and their weights (a single function has any positive weight).
    pub targets: Vec<(FunctionRef, u32)>,
    /// Where the trigger was declared, for error messages (e.g. `file.toml:12`).
    pub origin: String,
}

/// Why a set of triggers cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerError(pub String);

impl fmt::Display for TriggerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TriggerError {}

/// A request matched to a trigger.
#[derive(Debug)]
pub struct Matched<'t> {
    pub function: &'t FunctionRef,
    /// `{param}` values in pattern order (the catch-all included, without its leading `/`).
    pub params: Vec<(&'t str, String)>,
}

/// Why no trigger answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Miss {
    /// No pattern matches the path (for this host).
    NoMatch,
    /// Patterns match, but none for this method; the allowed ones are listed.
    Method(String),
}

/// The table in force, swapped atomically on reload: a request takes the `Arc` once and keeps
/// it, so requests in flight finish on the table they started with.
#[derive(Default)]
pub struct TriggerSet {
    current: parking_lot::RwLock<std::sync::Arc<Triggers>>,
}

impl TriggerSet {
    pub fn new(triggers: Triggers) -> TriggerSet {
        TriggerSet {
            current: parking_lot::RwLock::new(std::sync::Arc::new(triggers)),
        }
    }

    pub fn current(&self) -> std::sync::Arc<Triggers> {
        std::sync::Arc::clone(&self.current.read())
    }

    pub fn replace(&self, triggers: Triggers) {
        *self.current.write() = std::sync::Arc::new(triggers);
    }
}

/// The built, immutable table. Rebuilt whole on reload and swapped in.
#[derive(Default)]
pub struct Triggers {
    root: Node,
    len: usize,
}

#[derive(Default)]
struct Node {
    literals: HashMap<String, Node>,
    param: Option<(String, Box<Node>)>,
    /// Routes ending here with a trailing catch-all: (param name, routes).
    rest: Option<(String, Vec<Entry>)>,
    /// Routes ending exactly here.
    routes: Vec<Entry>,
}

struct Entry {
    methods: Vec<String>,
    host: Option<String>,
    split: Split,
    origin: String,
    /// Names of the `{param}` segments on the way here, in order.
    params: Vec<String>,
}

/// Targets with cumulative weights; a shared counter walks through them so that any run of
/// `total` consecutive requests is split exactly by weight.
struct Split {
    targets: Vec<(FunctionRef, u64)>,
    total: u64,
    next: AtomicU64,
}

impl Split {
    fn new(targets: &[(FunctionRef, u32)], origin: &str) -> Result<Split, TriggerError> {
        let mut cumulative = 0u64;
        let mut out = Vec::with_capacity(targets.len());
        for (function, weight) in targets {
            if *weight == 0 {
                continue;
            }
            cumulative += u64::from(*weight);
            out.push((function.clone(), cumulative));
        }
        if out.is_empty() {
            return Err(TriggerError(format!(
                "{origin}: every function has weight 0"
            )));
        }
        Ok(Split {
            targets: out,
            total: cumulative,
            next: AtomicU64::new(0),
        })
    }

    /// Spreads a run of requests by weight: position `n` of each cycle of `total` requests goes
    /// to the target whose cumulative range holds `n * stride mod total`, which interleaves the
    /// targets instead of sending the first 90 requests to one and the next 10 to the other.
    fn pick(&self) -> &FunctionRef {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let slot = spread(n, self.total);
        let index = self.targets.partition_point(|(_, upto)| *upto <= slot);
        &self.targets[index.min(self.targets.len() - 1)].0
    }
}

/// Maps request number `n` to a slot in `0..total`, visiting every slot once per cycle in an
/// order that interleaves neighbouring ranges (a stride coprime with `total`).
fn spread(n: u64, total: u64) -> u64 {
    let mut stride = (total * 5 / 8).max(1) | 1;
    while gcd(stride, total) != 1 {
        stride += 2;
    }
    (n % total) * stride % total
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// A pattern segment.
enum Segment<'p> {
    Literal(&'p str),
    Param(&'p str),
    Rest(&'p str),
}

fn parse_pattern<'p>(path: &'p str, origin: &str) -> Result<Vec<Segment<'p>>, TriggerError> {
    let bad = |why: &str| TriggerError(format!("{origin}: path {path:?} {why}"));
    let Some(body) = path.strip_prefix('/') else {
        return Err(bad("must start with '/'"));
    };
    let mut segments = Vec::new();
    let parts: Vec<&str> = if body.is_empty() {
        Vec::new()
    } else {
        body.split('/').collect()
    };
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let segment = match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            Some(name) if name.ends_with("...") && last => Segment::Rest(&name[..name.len() - 3]),
            Some(name) if name.ends_with("...") => {
                return Err(bad("has a catch-all before its end"))
            }
            Some(name) => Segment::Param(name),
            None if *part == "*" && last => Segment::Rest("rest"),
            None if part.contains(['{', '}', '?', '#']) => {
                return Err(bad("has a malformed segment"))
            }
            None => Segment::Literal(part),
        };
        if let Segment::Param(name) | Segment::Rest(name) = segment {
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid {
                return Err(bad(
                    "has a parameter name that is not letters, digits, '-' or '_'",
                ));
            }
        }
        segments.push(segment);
    }
    Ok(segments)
}

impl Triggers {
    /// Builds the table, refusing bad patterns and conflicting triggers.
    pub fn build(specs: &[TriggerSpec]) -> Result<Triggers, TriggerError> {
        let mut table = Triggers::default();
        for spec in specs {
            table.insert(spec)?;
        }
        Ok(table)
    }

    /// Triggers in the table.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table has no trigger.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn insert(&mut self, spec: &TriggerSpec) -> Result<(), TriggerError> {
        let segments = parse_pattern(&spec.path, &spec.origin)?;
        let mut node = &mut self.root;
        let mut params = Vec::new();
        let mut rest_name = None;
        for segment in segments {
            node = match segment {
                Segment::Literal(lit) => node.literals.entry(lit.to_owned()).or_default(),
                Segment::Param(name) => {
                    params.push(name.to_owned());
                    let (_, child) = node
                        .param
                        .get_or_insert_with(|| (name.to_owned(), Box::default()));
                    child
                }
                Segment::Rest(name) => {
                    rest_name = Some(name.to_owned());
                    break;
                }
            };
        }
        let methods: Vec<String> = spec
            .methods
            .iter()
            .map(|m| m.to_ascii_uppercase())
            .collect();
        let route = Entry {
            methods,
            host: spec.host.as_ref().map(|h| h.to_ascii_lowercase()),
            split: Split::new(&spec.targets, &spec.origin)?,
            origin: spec.origin.clone(),
            params,
        };
        let routes = match rest_name {
            Some(name) => {
                if let Some((_, routes)) = &node.rest {
                    check_conflicts(routes, &route)?;
                }
                let (_, routes) = node.rest.get_or_insert_with(|| (name, Vec::new()));
                routes
            }
            None => {
                check_conflicts(&node.routes, &route)?;
                &mut node.routes
            }
        };
        routes.push(route);
        self.len += 1;
        Ok(())
    }

    /// Finds the trigger for a request. `host` is the `Host` header (a port is ignored).
    pub fn lookup(
        &self,
        method: &str,
        host: Option<&str>,
        path: &str,
    ) -> Result<Matched<'_>, Miss> {
        let host = host.map(|h| strip_port(h).to_ascii_lowercase());
        let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
        let segments: &[&str] = if segments == [""] { &[] } else { &segments };
        let mut values = Vec::new();
        let mut allowed = Vec::new();
        match walk(
            &self.root,
            segments,
            method,
            host.as_deref(),
            &mut values,
            &mut allowed,
        ) {
            Some((route, rest)) => {
                let mut params: Vec<(&str, String)> = route
                    .params
                    .iter()
                    .map(String::as_str)
                    .zip(values)
                    .collect();
                if let Some((name, rest)) = rest {
                    params.push((name, rest));
                }
                Ok(Matched {
                    function: route.split.pick(),
                    params,
                })
            }
            None if allowed.is_empty() => Err(Miss::NoMatch),
            None => {
                allowed.sort();
                allowed.dedup();
                Err(Miss::Method(allowed.join(", ")))
            }
        }
    }
}

type Found<'t> = (&'t Entry, Option<(&'t str, String)>);

/// Depth-first, most specific first: literal, then param, then catch-all.
fn walk<'t>(
    node: &'t Node,
    segments: &[&str],
    method: &str,
    host: Option<&str>,
    values: &mut Vec<String>,
    allowed: &mut Vec<String>,
) -> Option<Found<'t>> {
    let Some((first, rest)) = segments.split_first() else {
        return choose(&node.routes, method, host, allowed).map(|r| (r, None));
    };
    if let Some(child) = node.literals.get(*first) {
        if let Some(found) = walk(child, rest, method, host, values, allowed) {
            return Some(found);
        }
    }
    if let Some((_, child)) = &node.param {
        if !first.is_empty() {
            values.push((*first).to_owned());
            if let Some(found) = walk(child, rest, method, host, values, allowed) {
                return Some(found);
            }
            values.pop();
        }
    }
    let (name, routes) = node.rest.as_ref()?;
    let route = choose(routes, method, host, allowed)?;
    Some((route, Some((name.as_str(), segments.join("/")))))
}

/// Among routes with the same pattern: a host-specific one before a host-less one; the method
/// must be allowed.
fn choose<'t>(
    routes: &'t [Entry],
    method: &str,
    host: Option<&str>,
    allowed: &mut Vec<String>,
) -> Option<&'t Entry> {
    let host_fits = |r: &&Entry| r.host.is_none() || r.host.as_deref() == host;
    let candidates = || routes.iter().filter(host_fits);
    let by_host = candidates()
        .filter(|r| r.host.is_some())
        .chain(candidates().filter(|r| r.host.is_none()));
    let mut found = None;
    for route in by_host {
        if route.methods.is_empty() || route.methods.iter().any(|m| m == method) {
            found = Some(route);
            break;
        }
        allowed.extend(route.methods.iter().cloned());
    }
    found
}

/// Two routes on the same pattern conflict when they share a host (or both have none) and a
/// method (an empty list shares every method).
fn check_conflicts(existing: &[Entry], new: &Entry) -> Result<(), TriggerError> {
    for old in existing {
        let same_host = old.host == new.host;
        let shared_method = old.methods.is_empty()
            || new.methods.is_empty()
            || old.methods.iter().any(|m| new.methods.contains(m));
        if same_host && shared_method {
            return Err(TriggerError(format!(
                "{} conflicts with {}: both match the same requests",
                new.origin, old.origin
            )));
        }
    }
    Ok(())
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| h.trim_start_matches('['));
    }
    host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str) -> FunctionRef {
        FunctionRef::new(name, "default").unwrap()
    }

    fn spec(
        path: &str,
        methods: &[&str],
        host: Option<&str>,
        targets: &[(&str, u32)],
        origin: &str,
    ) -> TriggerSpec {
        TriggerSpec {
            path: path.into(),
            methods: methods.iter().map(|m| m.to_string()).collect(),
            host: host.map(str::to_string),
            targets: targets.iter().map(|(n, w)| (f(n), *w)).collect(),
            origin: origin.into(),
        }
    }

    fn table(specs: &[TriggerSpec]) -> Triggers {
        Triggers::build(specs).unwrap()
    }

    fn hit(
        t: &Triggers,
        method: &str,
        host: Option<&str>,
        path: &str,
    ) -> (String, Vec<(String, String)>) {
        let m = t
            .lookup(method, host, path)
            .unwrap_or_else(|e| panic!("{path}: {e:?}"));
        (
            m.function.name().to_string(),
            m.params
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    }

    #[test]
    fn literals_params_and_catch_all() {
        let t = table(&[
            spec("/users", &[], None, &[("list", 1)], "a"),
            spec("/users/{id}", &[], None, &[("one", 1)], "b"),
            spec("/users/me", &[], None, &[("me", 1)], "c"),
            spec("/files/{path...}", &[], None, &[("files", 1)], "d"),
            spec("/", &[], None, &[("home", 1)], "e"),
        ]);
        assert_eq!(hit(&t, "GET", None, "/users").0, "list");
        assert_eq!(
            hit(&t, "GET", None, "/users/42"),
            ("one".into(), vec![("id".into(), "42".into())])
        );
        assert_eq!(
            hit(&t, "GET", None, "/users/me").0,
            "me",
            "literal beats param"
        );
        assert_eq!(
            hit(&t, "GET", None, "/files/a/b/c.txt"),
            ("files".into(), vec![("path".into(), "a/b/c.txt".into())])
        );
        assert_eq!(hit(&t, "GET", None, "/").0, "home");
        assert_eq!(
            t.lookup("GET", None, "/nothing").unwrap_err(),
            Miss::NoMatch
        );
        assert_eq!(
            t.lookup("GET", None, "/users/42/x").unwrap_err(),
            Miss::NoMatch
        );
    }

    #[test]
    fn methods_and_hosts() {
        let t = table(&[
            spec("/orders", &["GET"], None, &[("read", 1)], "a"),
            spec("/orders", &["POST", "PUT"], None, &[("write", 1)], "b"),
            spec(
                "/orders",
                &["GET"],
                Some("admin.example"),
                &[("admin", 1)],
                "c",
            ),
        ]);
        assert_eq!(hit(&t, "GET", Some("x.example"), "/orders").0, "read");
        assert_eq!(hit(&t, "PUT", None, "/orders").0, "write");
        assert_eq!(
            hit(&t, "GET", Some("Admin.Example:8080"), "/orders").0,
            "admin"
        );
        assert_eq!(
            t.lookup("DELETE", None, "/orders").unwrap_err(),
            Miss::Method("GET, POST, PUT".into())
        );
    }

    #[test]
    fn conflicts_name_both_triggers() {
        let err = Triggers::build(&[
            spec("/a/{x}", &["GET"], None, &[("one", 1)], "defrost.toml:3"),
            spec("/a/{y}", &[], None, &[("two", 1)], "defrost.toml:9"),
        ])
        .err()
        .unwrap();
        assert!(
            err.0.contains("defrost.toml:9") && err.0.contains("defrost.toml:3"),
            "{err}"
        );
        assert!(Triggers::build(&[
            spec("/a", &["GET"], None, &[("one", 1)], "1"),
            spec("/a", &["POST"], None, &[("two", 1)], "2"),
            spec("/a", &["GET"], Some("h"), &[("three", 1)], "3"),
        ])
        .is_ok());
        for bad in ["a", "/a/{}", "/{x...}/b", "/a/{b c}", "/a/x{y}"] {
            assert!(
                Triggers::build(&[spec(bad, &[], None, &[("f", 1)], "o")]).is_err(),
                "{bad}"
            );
        }
        assert!(Triggers::build(&[spec("/z", &[], None, &[("f", 0)], "o")]).is_err());
    }

    #[test]
    fn weights_split_exactly_and_interleave() {
        let t = table(&[spec(
            "/canary",
            &[],
            None,
            &[("stable", 90), ("next", 10), ("off", 0)],
            "a",
        )]);
        let mut counts: HashMap<String, usize> = HashMap::new();
        let mut first = Vec::new();
        for i in 0..10_000 {
            let name = hit(&t, "GET", None, "/canary").0;
            if i < 20 {
                first.push(name.clone());
            }
            *counts.entry(name).or_default() += 1;
        }
        assert_eq!(counts.get("stable"), Some(&9000));
        assert_eq!(counts.get("next"), Some(&1000));
        assert!(!counts.contains_key("off"));
        assert!(
            first.iter().filter(|n| *n == "next").count() >= 1,
            "not interleaved: {first:?}"
        );
    }

    #[test]
    fn thousands_of_triggers_build_and_resolve() {
        let specs: Vec<TriggerSpec> = (0..5000)
            .map(|i| {
                spec(
                    &format!("/svc{i}/items/{{id}}"),
                    &[],
                    None,
                    &[("f", 1)],
                    &i.to_string(),
                )
            })
            .collect();
        let t = table(&specs);
        assert_eq!(t.len(), 5000);
        assert_eq!(
            hit(&t, "GET", None, "/svc4999/items/7").1,
            vec![("id".into(), "7".into())]
        );
    }
}
