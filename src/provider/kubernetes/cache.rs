//! What the watches have seen: the functions' Deployments and the ready addresses of their
//! EndpointSlices, with a generation bumped on every change so that waiters wake on readiness.
//!
//! A function is a Deployment labelled `defrost.dev/function=NAME`; its replicas take requests
//! at the ready addresses of the EndpointSlices of the Service called NAME in the same
//! namespace. Endpoints keep their identity while their address stays in a slice, so in-flight
//! counts add up across status queries, and are retired the moment the address leaves.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::{Condvar, Mutex};

use super::objects::{Deployment, EndpointSlice};
use crate::function::FunctionRef;
use crate::provider::{scale_bounds, Endpoint, FunctionStatus, FunctionSummary};

/// The label that makes a Deployment a function, its value the function's name.
pub const FUNCTION_LABEL: &str = "defrost.dev/function";

/// The two kinds of object watched in each namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Deployments,
    Slices,
}

/// A function's Deployment, as last seen.
#[derive(Debug, Clone)]
pub struct Function {
    pub function: FunctionRef,
    /// The Deployment's own name (scale calls go to it).
    pub deployment: String,
    pub desired: u64,
    pub available: u64,
    pub labels: std::collections::BTreeMap<String, String>,
    pub image: String,
    pub created_at: Option<SystemTime>,
}

impl Function {
    /// The function a Deployment stands for; `None` when it lacks the label or its name or
    /// namespace is not a DNS label.
    pub fn from_deployment(d: &Deployment) -> Option<Function> {
        let name = d.metadata.labels.get(FUNCTION_LABEL)?;
        let function = FunctionRef::new(name, &d.metadata.namespace).ok()?;
        Some(Function {
            function,
            deployment: d.metadata.name.clone(),
            desired: d.desired(),
            available: d.status.available_replicas,
            labels: d.function_labels(),
            image: d
                .spec
                .template
                .spec
                .containers
                .first()
                .map(|c| c.image.clone())
                .unwrap_or_default(),
            created_at: d
                .metadata
                .creation_timestamp
                .as_deref()
                .and_then(|t| crate::rfc3339::parse(t).ok()),
        })
    }
}

#[derive(Default)]
struct State {
    generation: u64,
    /// By `name.namespace`.
    functions: HashMap<String, Function>,
    /// By `namespace/slice`: the function key (the slice's Service) and its ready URLs.
    slices: HashMap<String, (String, Vec<String>)>,
    /// By function key: the endpoints now in service.
    endpoints: HashMap<String, Vec<Arc<Endpoint>>>,
    synced: HashSet<(String, Kind)>,
}

/// The shared view, and the condition waiters sleep on.
#[derive(Default)]
pub struct Cache {
    state: Mutex<State>,
    changed: Condvar,
}

impl Cache {
    pub fn new() -> Cache {
        Cache::default()
    }

    /// Whether both watches of `namespace` have listed, so the cache can answer for it.
    pub fn synced(&self, namespace: &str) -> bool {
        let state = self.state.lock();
        [Kind::Deployments, Kind::Slices]
            .iter()
            .all(|kind| state.synced.contains(&(namespace.to_owned(), *kind)))
    }

    /// Forgets that `namespace`'s `kind` was listed (its watch lost track).
    pub fn unsync(&self, namespace: &str, kind: Kind) {
        self.state
            .lock()
            .synced
            .remove(&(namespace.to_owned(), kind));
    }

    /// Replaces everything of `kind` in `namespace` with a fresh list.
    pub fn replace_deployments(&self, namespace: &str, list: &[Deployment]) {
        let mut state = self.state.lock();
        state
            .functions
            .retain(|_, f| f.function.namespace() != namespace);
        for f in list.iter().filter_map(Function::from_deployment) {
            state.functions.insert(f.function.key().to_owned(), f);
        }
        state
            .synced
            .insert((namespace.to_owned(), Kind::Deployments));
        self.bump(&mut state);
    }

    pub fn replace_slices(&self, namespace: &str, list: &[EndpointSlice]) {
        let mut state = self.state.lock();
        let prefix = format!("{namespace}/");
        let mut touched: BTreeSet<String> = BTreeSet::new();
        state.slices.retain(|key, (function, _)| {
            let keep = !key.starts_with(&prefix);
            if !keep {
                touched.insert(function.clone());
            }
            keep
        });
        for slice in list {
            if let Some(function) = insert_slice(&mut state, namespace, slice) {
                touched.insert(function);
            }
        }
        for function in touched {
            refresh_endpoints(&mut state, &function);
        }
        state.synced.insert((namespace.to_owned(), Kind::Slices));
        self.bump(&mut state);
    }

    /// A Deployment added or changed.
    pub fn put_deployment(&self, d: &Deployment) {
        let mut state = self.state.lock();
        // A Deployment whose label changed or went away stops being the function it was.
        state.functions.retain(|_, f| {
            !(f.function.namespace() == d.metadata.namespace && f.deployment == d.metadata.name)
        });
        if let Some(f) = Function::from_deployment(d) {
            state.functions.insert(f.function.key().to_owned(), f);
        }
        self.bump(&mut state);
    }

    pub fn remove_deployment(&self, d: &Deployment) {
        let mut state = self.state.lock();
        state.functions.retain(|_, f| {
            !(f.function.namespace() == d.metadata.namespace && f.deployment == d.metadata.name)
        });
        self.bump(&mut state);
    }

    pub fn put_slice(&self, slice: &EndpointSlice) {
        let mut state = self.state.lock();
        let namespace = slice.metadata.namespace.clone();
        let before = remove_slice(&mut state, &namespace, &slice.metadata.name);
        let after = insert_slice(&mut state, &namespace, slice);
        for function in before.into_iter().chain(after) {
            refresh_endpoints(&mut state, &function);
        }
        self.bump(&mut state);
    }

    pub fn remove_slice(&self, slice: &EndpointSlice) {
        let mut state = self.state.lock();
        if let Some(function) =
            remove_slice(&mut state, &slice.metadata.namespace, &slice.metadata.name)
        {
            refresh_endpoints(&mut state, &function);
        }
        self.bump(&mut state);
    }

    fn bump(&self, state: &mut State) {
        state.generation += 1;
        self.changed.notify_all();
    }

    /// The function's status, or `None` if no Deployment stands for it.
    pub fn status(&self, function: &FunctionRef) -> Option<FunctionStatus> {
        let state = self.state.lock();
        let f = state.functions.get(function.key())?;
        Some(status_of(&state, f))
    }

    /// The deployment behind the function.
    pub fn deployment(&self, function: &FunctionRef) -> Option<String> {
        let state = self.state.lock();
        state
            .functions
            .get(function.key())
            .map(|f| f.deployment.clone())
    }

    /// Every function in `namespace`.
    pub fn list(&self, namespace: &str) -> Vec<FunctionSummary> {
        let state = self.state.lock();
        let mut list: Vec<FunctionSummary> = state
            .functions
            .values()
            .filter(|f| f.function.namespace() == namespace)
            .map(|f| FunctionSummary {
                function: f.function.clone(),
                image: f.image.clone(),
                status: status_of(&state, f),
                created_at: f.created_at,
            })
            .collect();
        list.sort_by(|a, b| a.function.cmp(&b.function));
        list
    }

    /// Blocks until the generation differs from `since`, or `timeout` has passed.
    pub fn wait_for_change(&self, since: u64, timeout: Duration) {
        let deadline = crate::deadline::after(timeout);
        let mut state = self.state.lock();
        while state.generation == since {
            if self.changed.wait_until(&mut state, deadline).timed_out() {
                return;
            }
        }
    }
}

fn status_of(state: &State, f: &Function) -> FunctionStatus {
    let (min_replicas, max_replicas) = scale_bounds(&f.function, &f.labels);
    FunctionStatus {
        replicas: f.desired,
        available_replicas: f.available,
        min_replicas,
        max_replicas,
        labels: f.labels.clone(),
        endpoints: state
            .endpoints
            .get(f.function.key())
            .cloned()
            .unwrap_or_default(),
        generation: state.generation,
        start_failure: None,
    }
}

/// Stores a slice of a Service; returns the function key it counts for.
fn insert_slice(state: &mut State, namespace: &str, slice: &EndpointSlice) -> Option<String> {
    let service = slice.service()?;
    let function = FunctionRef::new(service, namespace).ok()?;
    let key = function.key().to_owned();
    state.slices.insert(
        format!("{namespace}/{}", slice.metadata.name),
        (key.clone(), slice.ready_urls()),
    );
    Some(key)
}

fn remove_slice(state: &mut State, namespace: &str, name: &str) -> Option<String> {
    state
        .slices
        .remove(&format!("{namespace}/{name}"))
        .map(|(function, _)| function)
}

/// Recomputes a function's endpoints from its slices: kept ones keep their identity, new ones
/// join, gone ones are retired.
fn refresh_endpoints(state: &mut State, function: &str) {
    let urls: BTreeSet<String> = state
        .slices
        .values()
        .filter(|(f, _)| f == function)
        .flat_map(|(_, urls)| urls.iter().cloned())
        .collect();
    let old = state.endpoints.remove(function).unwrap_or_default();
    let mut kept: Vec<Arc<Endpoint>> = Vec::with_capacity(urls.len());
    for endpoint in old {
        if urls.contains(endpoint.base_url()) {
            kept.push(endpoint);
        } else {
            endpoint.retire();
        }
    }
    for url in urls {
        if !kept.iter().any(|e| e.base_url() == url.as_str()) {
            kept.push(Arc::new(Endpoint::new(url)));
        }
    }
    if !kept.is_empty() {
        state.endpoints.insert(function.to_owned(), kept);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;
    use std::time::Instant;

    fn deployment(name: &str, label: Option<&str>, desired: u64, available: u64) -> Deployment {
        let labels = label.map_or(String::new(), |l| format!(r#""{FUNCTION_LABEL}":"{l}""#));
        serde_json::from_str(&format!(
            r#"{{"metadata":{{"name":"{name}","namespace":"fns","labels":{{{labels}}},
                 "annotations":{{"com.openfaas.scale.zero":"true","com.openfaas.scale.max":"3"}}}},
                "spec":{{"replicas":{desired}}},"status":{{"availableReplicas":{available}}}}}"#
        ))
        .unwrap()
    }

    fn slice(name: &str, service: &str, ready: &[&str]) -> EndpointSlice {
        let endpoints: Vec<String> = ready
            .iter()
            .map(|a| format!(r#"{{"addresses":["{a}"],"conditions":{{"ready":true}}}}"#))
            .collect();
        serde_json::from_str(&format!(
            r#"{{"metadata":{{"name":"{name}","namespace":"fns",
                 "labels":{{"kubernetes.io/service-name":"{service}"}}}},
                "addressType":"IPv4","endpoints":[{}],"ports":[{{"port":8080}}]}}"#,
            endpoints.join(",")
        ))
        .unwrap()
    }

    fn echo() -> FunctionRef {
        FunctionRef::new("echo", "fns").unwrap()
    }

    #[test]
    fn a_labelled_deployment_is_a_function_with_annotations_for_bounds() {
        let cache = Cache::new();
        cache.replace_deployments(
            "fns",
            &[
                deployment("echo-v2", Some("echo"), 2, 1),
                deployment("db", None, 1, 1),
            ],
        );
        let status = cache.status(&echo()).expect("echo is a function");
        assert_eq!((status.replicas, status.available_replicas), (2, 1));
        assert_eq!((status.min_replicas, status.max_replicas), (1, 3));
        assert_eq!(status.labels["com.openfaas.scale.zero"], "true");
        assert_eq!(cache.deployment(&echo()).as_deref(), Some("echo-v2"));
        assert!(cache
            .status(&FunctionRef::new("db", "fns").unwrap())
            .is_none());
        assert_eq!(cache.list("fns").len(), 1);
        assert!(!cache.synced("fns"), "slices not listed yet");
        cache.replace_slices("fns", &[]);
        assert!(cache.synced("fns"));
        cache.remove_deployment(&deployment("echo-v2", Some("echo"), 0, 0));
        assert!(cache.status(&echo()).is_none());
    }

    #[test]
    fn endpoints_keep_identity_and_leave_retired() {
        let cache = Cache::new();
        cache.put_deployment(&deployment("echo", Some("echo"), 2, 2));
        cache.put_slice(&slice("echo-a", "echo", &["127.1.0.1", "127.1.0.2"]));
        let first = cache.status(&echo()).unwrap().endpoints;
        assert_eq!(first.len(), 2);
        cache.put_slice(&slice("echo-a", "echo", &["127.1.0.2"]));
        let second = cache.status(&echo()).unwrap().endpoints;
        assert_eq!(second.len(), 1);
        assert!(
            Arc::ptr_eq(&second[0], &first[1]),
            "the kept endpoint is the same one"
        );
        assert!(first[0].is_retired(), "the address that left is retired");
        assert!(!first[1].is_retired());
        cache.put_slice(&slice("echo-b", "echo", &["127.1.0.3"]));
        assert_eq!(cache.status(&echo()).unwrap().endpoints.len(), 2);
        cache.remove_slice(&slice("echo-a", "echo", &[]));
        let left = cache.status(&echo()).unwrap().endpoints;
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].base_url(), "http://127.1.0.3:8080");
        assert!(first[1].is_retired());
        cache.replace_slices("fns", &[]);
        assert!(cache.status(&echo()).unwrap().endpoints.is_empty());
        assert!(left[0].is_retired());
    }

    #[test]
    fn a_waiter_wakes_on_the_change_not_the_timeout() {
        let cache = Arc::new(Cache::new());
        cache.put_deployment(&deployment("echo", Some("echo"), 1, 0));
        let since = cache.status(&echo()).unwrap().generation;
        let writer = Arc::clone(&cache);
        let started = Instant::now();
        let t = thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            writer.put_slice(&slice("echo-a", "echo", &["127.1.0.1"]));
        });
        cache.wait_for_change(since, Duration::from_secs(30));
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "woke by timeout"
        );
        t.join().unwrap();
        let now = cache.status(&echo()).unwrap();
        assert_ne!(now.generation, since);
        assert_eq!(now.endpoints.len(), 1);
        // Already changed: returns at once.
        cache.wait_for_change(since, Duration::from_secs(30));
    }
}
