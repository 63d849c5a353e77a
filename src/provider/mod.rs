//! Providers: what starts, stops and counts a function's replicas.
//!
//! The gateway never runs functions itself; it asks a [`Provider`]. Two ship with defrost:
//! [`process`], which runs replicas as local child processes (the default), and [`openfaas`],
//! which talks to any OpenFaaS provider (faas-netes, faasd, or another defrost) over the
//! faas-provider HTTP API. Embedders can bring their own.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::function::FunctionRef;

pub mod api;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod openfaas;
pub mod process;
pub mod wire;

/// Label that sets the replicas a cold function is scaled to (OpenFaaS' name).
pub const LABEL_MIN_REPLICAS: &str = "com.openfaas.scale.min";
/// Label that caps the replicas of a function (OpenFaaS' name).
pub const LABEL_MAX_REPLICAS: &str = "com.openfaas.scale.max";
/// Replicas a function may have when nothing says otherwise (OpenFaaS' default).
pub const DEFAULT_MAX_REPLICAS: u64 = 20;

/// What a provider knows of one function at one moment.
#[derive(Debug, Clone, Default)]
pub struct FunctionStatus {
    /// Desired replicas: what the provider has been asked to run.
    pub replicas: u64,
    /// Replicas that passed their readiness check and take traffic.
    pub available_replicas: u64,
    /// Replicas a cold start scales to (at least 1 is used).
    pub min_replicas: u64,
    /// Upper bound for any scale call.
    pub max_replicas: u64,
    /// The function's labels (`com.openfaas.scale.*` and the like).
    pub labels: BTreeMap<String, String>,
    /// Where ready replicas take requests. Empty while none is ready.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Bumped by the provider on every change it can signal; passed back to
    /// [`Provider::wait_for_change`] so that a change between the query and the wait is not
    /// missed. Providers that cannot signal leave it at 0.
    pub generation: u64,
    /// Set while the function's replicas keep failing to start or dying soon after: what went
    /// wrong, and how long the provider holds the next start back.
    pub start_failure: Option<StartFailure>,
}

/// A function whose last replicas failed one after another (a crash loop).
///
/// Providers that back off between such starts say so here, so that the gateway can tell a
/// waiting client what really failed, and answer at once rather than hold a request for a
/// start that will come too late for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartFailure {
    /// What happened to the last replica, in the provider's words.
    pub reason: String,
    /// Replicas that failed in a row.
    pub in_a_row: u32,
    /// How long until the provider starts another replica; zero: it would start one now.
    pub next_start_in: Duration,
}

impl FunctionStatus {
    /// A status is only worth forwarding to if someone can answer: a cached status whose
    /// replicas have all been retired since is not.
    pub fn is_ready(&self) -> bool {
        self.available_replicas > 0 && self.endpoints.iter().any(|e| !e.is_retired())
    }

    /// The endpoint with the fewest requests in flight; ties go to the first listed.
    pub fn least_loaded(&self) -> Option<&Arc<Endpoint>> {
        self.endpoints
            .iter()
            .filter(|e| !e.is_retired())
            .min_by_key(|e| e.in_flight())
    }
}

/// One place requests for a function can be sent: a replica, or a provider's own proxy.
///
/// Shared (`Arc`) between the provider that owns the replica and the requests using it, so that
/// both see the same in-flight count: the gateway balances on it, the provider may wait for it to
/// fall to zero before stopping the replica.
///
/// A provider taking a replica out of service [retires](Endpoint::retire) its endpoint first.
/// A gateway may still hold the endpoint in a cached status for a moment; `begin` refuses it
/// from then on, so once the count has fallen to zero no request can reach the replica, and it
/// can be stopped without breaking a request sent on a pooled connection to it.
pub struct Endpoint {
    /// `http://host:port` plus any path prefix; the request path's rest is appended to it.
    base_url: String,
    /// For a provider's function route: the same route naming the function without its
    /// namespace, for calls whose client named none (see [`Endpoint::with_unqualified`]).
    unqualified_url: Option<String>,
    in_flight: AtomicUsize,
    retired: AtomicBool,
}

impl Endpoint {
    /// An endpoint at `base_url`; trailing slashes are dropped.
    pub fn new(base_url: impl Into<String>) -> Endpoint {
        let mut base_url = base_url.into();
        while base_url.ends_with('/') {
            base_url.pop();
        }
        Endpoint {
            base_url,
            unqualified_url: None,
            in_flight: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
        }
    }

    /// A provider's own function route, `base_url` naming the function with its namespace and
    /// `unqualified_url` without. A call whose client named no namespace goes to the second, as
    /// the OpenFaaS gateway forwards the path as it was sent: providers without namespaces
    /// (faas-memory) know functions only by name, and a provider with them resolves a bare
    /// name to its own default namespace.
    pub fn with_unqualified(
        base_url: impl Into<String>,
        unqualified_url: impl Into<String>,
    ) -> Endpoint {
        let mut unqualified = unqualified_url.into();
        while unqualified.ends_with('/') {
            unqualified.pop();
        }
        Endpoint {
            unqualified_url: Some(unqualified),
            ..Endpoint::new(base_url)
        }
    }

    /// `http://host:port` plus any path prefix.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Where a call goes: the unqualified route when the client named no namespace and the
    /// endpoint has one, the base URL otherwise.
    pub fn url_for(&self, namespace_named: bool) -> &str {
        match (&self.unqualified_url, namespace_named) {
            (Some(url), false) => url,
            _ => &self.base_url,
        }
    }

    /// Requests sent to it and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Counts a request as in flight until the returned guard is dropped; `None` once the
    /// endpoint is retired (the caller should ask for a fresh status).
    ///
    /// The count goes up before the flag is read, and `retire` sets the flag before the count
    /// is read (both sequentially consistent): a request and a drain that race always see
    /// each other, so a drain that saw zero has no request slipping in behind it.
    pub fn begin(self: &Arc<Self>) -> Option<InFlight> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(Arc::clone(self));
        (!self.is_retired()).then_some(guard)
    }

    /// Takes the endpoint out of service for good: `begin` refuses it from now on, and requests
    /// already counted finish.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
    }

    /// Whether the endpoint has left service.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Endpoint({}, in flight {})",
            self.base_url,
            self.in_flight()
        )
    }
}

/// A request in flight on an [`Endpoint`]; dropping it ends the count.
pub struct InFlight(Arc<Endpoint>);

impl InFlight {
    /// The endpoint counted.
    pub fn endpoint(&self) -> &Endpoint {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why a provider could not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProviderError {
    /// The provider does not know the function.
    NotFound,
    /// The provider could not be reached, or answered something unusable.
    Unavailable(String),
    /// The provider refused or failed the operation.
    Failed(String),
    /// The provider understood the request and turned it down for good (a 4xx answer other
    /// than 404, such as faas-netes CE refusing zero replicas): asking again will not help.
    Refused(String),
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProviderError::NotFound => f.write_str("function not found"),
            ProviderError::Unavailable(why) => write!(f, "provider unavailable: {why}"),
            ProviderError::Failed(why) => write!(f, "provider error: {why}"),
            ProviderError::Refused(why) => write!(f, "provider refused: {why}"),
        }
    }
}

impl std::error::Error for ProviderError {}

/// One function as listed by a provider (`GET /system/functions`).
#[derive(Debug, Clone)]
pub struct FunctionSummary {
    /// The function.
    pub function: FunctionRef,
    /// What it runs: an image, or a command line.
    pub image: String,
    /// Its replicas.
    pub status: FunctionStatus,
    /// When the provider took the function on, if it says.
    pub created_at: Option<std::time::SystemTime>,
}

/// What a provider says it is, for `/system/info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderInfo {
    /// Its name (`faas-netes`, `faasd`, `defrost`).
    pub name: String,
    /// What runs the functions (`kubernetes`, `containerd`, `process`).
    pub orchestration: String,
    /// Its release.
    pub release: String,
    /// The commit it was built from.
    pub sha: String,
}

impl ProviderInfo {
    /// A provider built into this defrost, orchestrating with `orchestration`.
    pub fn built_in(orchestration: &str) -> ProviderInfo {
        ProviderInfo {
            name: "defrost".into(),
            orchestration: orchestration.into(),
            release: env!("CARGO_PKG_VERSION").into(),
            sha: env!("DEFROST_GIT_SHA").into(),
        }
    }
}

/// The contract between the gateway and whatever runs functions.
///
/// Calls block; the gateway calls them from request threads, coalesced so that at most one
/// status query and one scale call per function are in flight at a time. Implementations must be
/// cheap to call for a function that is already running: `status` is on the path of every
/// request whose cache entry has expired.
pub trait Provider: Send + Sync + 'static {
    /// The function's replica status, with the endpoints of its ready replicas.
    fn status(&self, function: &FunctionRef) -> Result<FunctionStatus, ProviderError>;

    /// Asks for `replicas` desired replicas. Returns once the request is accepted, not when the
    /// replicas are ready.
    fn set_replicas(&self, function: &FunctionRef, replicas: u64) -> Result<(), ProviderError>;

    /// Blocks until the function's status differs from generation `since` (returning at once
    /// if it already does), or `timeout` has passed.
    ///
    /// Waiting requests call this between polls. The default just sleeps, which is all a remote
    /// provider can do; a provider that knows the moment a replica becomes ready wakes every
    /// waiter at once, so a cold start costs its readiness time and nothing more.
    fn wait_for_change(&self, function: &FunctionRef, since: u64, timeout: Duration) {
        let _ = (function, since);
        std::thread::sleep(timeout);
    }

    /// True when [`Provider::wait_for_change`] returns as soon as the status changes. Waiters
    /// then look again only now and then instead of every poll interval: five hundred
    /// requests waiting on a cold function, each polling every 100 ms, cost a tenth of a core.
    fn notifies_changes(&self) -> bool {
        false
    }

    /// Every function the provider knows in `namespace`.
    fn list(&self, namespace: &str) -> Result<Vec<FunctionSummary>, ProviderError>;

    /// Namespaces the provider serves.
    fn namespaces(&self) -> Result<Vec<String>, ProviderError>;

    /// Stops everything the provider started; called once when the gateway shuts down.
    fn shutdown(&self) {}

    /// What the provider is, shown by `/system/info` beside the gateway's own version. The
    /// default names defrost and an orchestration of `custom`: an embedder's provider.
    fn info(&self) -> Result<ProviderInfo, ProviderError> {
        Ok(ProviderInfo::built_in("custom"))
    }

    /// Freezes the function's idle ready replicas without stopping them (they keep their warm
    /// state, use no CPU, and take no requests); returns how many. Called when a function has
    /// been idle for its `park_after`. Providers that cannot freeze park nothing.
    fn park(&self, function: &FunctionRef) -> Result<u64, ProviderError> {
        let _ = function;
        Ok(0)
    }

    /// Puts the function's parked replicas back in rotation; returns how many. Called for a
    /// request that finds no ready replica, before it waits: it must be cheap when nothing is
    /// parked.
    fn thaw(&self, function: &FunctionRef) -> Result<u64, ProviderError> {
        let _ = function;
        Ok(0)
    }

    /// The function's parked replicas, and the memory they hold in bytes.
    fn parked(&self, function: &FunctionRef) -> Parked {
        let _ = function;
        Parked::default()
    }
}

/// Replicas frozen while their function is idle (see [`Provider::park`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Parked {
    /// Replicas frozen now.
    pub replicas: u64,
    /// Resident memory they keep, in bytes.
    pub memory_bytes: u64,
}

/// Reads `com.openfaas.scale.min`/`max`, falling back (with a warning) on values that are not
/// whole numbers, as the OpenFaaS gateway does.
pub fn scale_bounds(function: &FunctionRef, labels: &BTreeMap<String, String>) -> (u64, u64) {
    let read = |label: &str, default: u64| match labels.get(label) {
        None => default,
        Some(v) => v.trim().parse().unwrap_or_else(|_| {
            log::warn!("{function}: label {label}={v:?} is not a whole number; using {default}");
            default
        }),
    };
    let min = read(LABEL_MIN_REPLICAS, 1);
    let max = read(LABEL_MAX_REPLICAS, DEFAULT_MAX_REPLICAS).max(1);
    (min.min(max), max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn scale_bounds_read_labels_and_fall_back_on_garbage() {
        let f = FunctionRef::new("f", "default").unwrap();
        assert_eq!(scale_bounds(&f, &labels(&[])), (1, DEFAULT_MAX_REPLICAS));
        assert_eq!(
            scale_bounds(
                &f,
                &labels(&[(LABEL_MIN_REPLICAS, "3"), (LABEL_MAX_REPLICAS, "5")])
            ),
            (3, 5)
        );
        assert_eq!(
            scale_bounds(
                &f,
                &labels(&[(LABEL_MIN_REPLICAS, "x"), (LABEL_MAX_REPLICAS, "-1")])
            ),
            (1, DEFAULT_MAX_REPLICAS)
        );
        assert_eq!(
            scale_bounds(
                &f,
                &labels(&[(LABEL_MIN_REPLICAS, "9"), (LABEL_MAX_REPLICAS, "2")])
            ),
            (2, 2)
        );
    }

    #[test]
    fn least_loaded_prefers_fewest_in_flight() {
        let a = Arc::new(Endpoint::new("http://127.0.0.1:1/"));
        let b = Arc::new(Endpoint::new("http://127.0.0.1:2"));
        let status = FunctionStatus {
            available_replicas: 2,
            endpoints: vec![a.clone(), b.clone()],
            ..Default::default()
        };
        let _busy = a.begin().expect("in service");
        assert_eq!(
            status.least_loaded().unwrap().base_url(),
            "http://127.0.0.1:2"
        );
        assert_eq!(a.base_url(), "http://127.0.0.1:1");
        drop(_busy);
        assert_eq!(a.in_flight(), 0);
    }

    #[test]
    fn a_retired_endpoint_takes_no_new_request_and_is_never_picked() {
        let a = Arc::new(Endpoint::new("http://127.0.0.1:1"));
        let b = Arc::new(Endpoint::new("http://127.0.0.1:2"));
        let status = FunctionStatus {
            available_replicas: 2,
            endpoints: vec![a.clone(), b.clone()],
            ..Default::default()
        };
        let before = a.begin().expect("in service");
        a.retire();
        assert!(a.begin().is_none(), "a retired endpoint took a request");
        assert_eq!(a.in_flight(), 1, "the refused request left a count behind");
        assert_eq!(status.least_loaded().unwrap().base_url(), b.base_url());
        drop(before);
        assert_eq!(a.in_flight(), 0);
    }
}
