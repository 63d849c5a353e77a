//! defrost: a scale-from-zero function gateway.
//!
//! A request for `/function/{name}[.{namespace}][/rest]` is proxied to a ready replica of that
//! function. When the function has no ready replica, the gateway asks its [`Provider`] to start
//! one, holds the request until a replica is ready, then forwards it. Concurrent requests for
//! the same cold function share one status query and one scale call, and are released together.
//!
//! ```text
//!  client ──▶ defrost-http (limits, timeouts; idle keep-alive connections in one epoll set,
//!             where idle workers wait and read the request of a connection that wakes them;
//!             one request per connection at a time)
//!                 ──▶ worker pool (server: a fixed core, more while workers block)
//!                                                          │
//!                                             gateway::Handler::handle
//!                                                          │
//!                            screen (no forward proxy, no `..`) ─▶ router::route (names checked)
//!      ┌──────────────┬──────────────┬─────────────────────┼──────────────────┬──────────────┐
//!  /healthz      /metrics, /     /system/… (auth)      /function/…      other paths: triggers
//!                                                          │                   (trie, canary split)
//!                            call::Call::begin ◀───────────┴───────────────────────┘
//!                              one lookup in the table::FunctionTable; the call is counted
//!                              in flight in the function's record until its last byte
//!                                                          │
//!                                                  proxy::Proxy::forward
//!                                                          │
//!                      scaler::Scaler::ready ◀── the record's cached status (fresh + ready? done)
//!                          │ miss: single-flight status query ──▶ Provider::status
//!                          │ zero: single-flight scale, retried ──▶ Provider::set_replicas
//!                          │ wait: Provider::wait_for_change, re-query, until ready or 504
//!                          ▼
//!             least-loaded endpoint in service ──ureq──▶ replica
//!             (with max_concurrency: one with a free slot, else a FIFO line for one)
//!                          │   (refused? forget the status, back off, retry)
//!  client ◀── streamed response, hop-by-hop headers dropped, X-Call-Id / X-Start-Time added;
//!             Call::finish records the status and the time
//! ```
//!
//! An upgrade request (WebSocket) takes the same path up to the replica, whose leg
//! `proxy::upgrade` writes by hand on a connection of its own; on a 101 the worker joins the
//! client's connection to it and relays both in `poll(2)` (`tunnel`), the call in flight until
//! either side closes.
//!
//! Beside the request path: one `autoscale` thread reads the records' in-flight counts to scale
//! idle functions to zero and capacity-mode functions up and down; `reload` (SIGHUP, `--watch`)
//! swaps triggers and functions atomically; `analytics` posts call counts in batches;
//! `deployments` adds the functions deployed through `/system/functions` to the config file's
//! (kept in a state file, through reloads); `logs` serves the replicas' output kept per
//! function on `/system/logs`, followed streams bounded in number and time; `queue` answers
//! `/async-function/*` with 202 once the request is committed to its redb file, and runs the
//! calls with workers of its own through `Call::begin` and `Proxy` as above, retrying and
//! calling back.
//!
//! The library is the gateway; the `defrost` binary only reads a config file and runs it.
//! Embedders build a [`Gateway`] from [`Settings`] and any [`Provider`]:
//!
//! ```no_run
//! use std::sync::Arc;
//! # fn provider() -> Arc<dyn defrost::Provider> { unimplemented!() }
//! let settings = defrost::Settings::default();
//! let gateway = defrost::Gateway::start(settings, provider())?;
//! println!("listening on {}", gateway.local_addr());
//! gateway.shutdown();
//! # Ok::<(), std::io::Error>(())
//! ```

#![deny(missing_docs)]

// The request path, in the order a request meets it.
/// The worker pool taking requests from defrost-http.
mod server;

/// Handler::handle: a request's phases.
mod gateway;

/// Shapes refused before routing (forward proxying, `..`).
mod screen;

/// What a request is for.
mod router;

/// URL patterns routed to functions, weighted canaries.
mod triggers;

/// One function call, counted from here to its last byte.
mod call;

/// One record per function.
mod table;

/// Forwarding to a replica, relaying its answer.
mod proxy;

/// `/async-function/*`: calls stored durably, run later by workers, retried, called back.
mod queue;

/// A ready replica, or a cold start, for each call.
mod scaler;

/// Upgraded connections, relayed byte for byte.
mod tunnel;

/// What runs functions: the trait, the process and OpenFaaS providers.
mod provider;

/// The ureq agents for replicas and providers.
mod client;

/// The one error of a request, and its HTTP status.
mod error;

// Beside the request path.
/// Scale to zero, capacity.
mod autoscale;

/// /metrics, the provider call counters.
mod metrics;

/// The page on /.
mod status_page;

/// Call counts posted in batches.
mod analytics;

/// Basic auth on /system/*.
mod auth;

/// /system/logs: the process replicas' output, plain or followed.
mod logs;

// From what the operator wrote to a running gateway.
/// The TOML file.
mod config;

/// The file (or the OpenFaaS environment) to settings and a backend.
mod setup;

/// `defrost check`.
mod check;

/// Functions deployed through the API, kept in a state file.
mod deployments;

/// SIGHUP, --watch, SIGTERM.
mod reload;

// Leaves.
/// A synchronous NATS JetStream client, for the async invocation queue on more than one machine.
mod nats;

mod deadline;
mod duration;
mod function;
mod histogram;
mod redact;
mod rfc3339;

/// Temporary folders for the unit tests.
#[cfg(test)]
mod scratch;

/// What the benchmarks and the property tests drive directly: the parsers, the single-flight
/// group, the function table. Not part of the API; it may change in any release.
#[doc(hidden)]
pub mod internals {
    pub use crate::call::Call;
    pub use crate::config::Loaded;
    /// The NATS JetStream client, driven by `tests/nats_jetstream.rs` against a real server.
    pub mod nats {
        pub use crate::nats::*;
    }
    pub use crate::duration::parse_duration;
    pub use crate::provider::wire::{FunctionJson, ScaleServiceRequest};
    pub use crate::proxy::headers::{outgoing, Forwarding};
    pub use crate::router::{route, Route};
    pub use crate::scaler::singleflight::SingleFlight;
    pub use crate::screen::screen;
    pub use crate::table::FunctionTable;
    pub use crate::triggers::Triggers;
}

pub use auth::Credentials;
pub use autoscale::AutoscaleConfig;
pub use check::check as check_config;
pub use config::{ConfigError, Loaded as ConfigFile, SetupError};
pub use error::Error;
pub use function::{FunctionRef, NameError};
pub use provider::openfaas::{OpenFaasOptions, OpenFaasProvider, RemoteApi};
pub use provider::process::{
    ProcessFunction, ProcessOptions, ProcessProvider, Readiness, SpecError,
};
pub use provider::{
    Endpoint, FunctionStatus, FunctionSummary, InFlight, Parked, Provider, ProviderError,
    ProviderInfo, StartFailure,
};
pub use proxy::trust::IpRange;
pub use proxy::ProxyConfig;
pub use queue::{Bounds as QueueBounds, QueueConfig};
pub use reload::serve_until_stopped;
pub use scaler::ScalingConfig;
pub use server::PoolConfig;
pub use setup::from_sources;
pub use triggers::TriggerSpec;
pub use tunnel::UpgradeConfig;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use autoscale::Autoscaler;
use config::GatewaySection;
use gateway::Handler;
use proxy::Proxy;
use scaler::Scaler;
use server::Pool;

/// Everything that shapes a running gateway, with the documented defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Namespace of a function named without one (`/function/echo`).
    pub default_namespace: String,
    /// How cold functions are scaled and waited for.
    pub scaling: ScalingConfig,
    /// How requests are forwarded to replicas.
    pub proxy: ProxyConfig,
    /// The worker pool that answers requests.
    pub pool: PoolConfig,
    /// Scale to zero and capacity autoscaling.
    pub autoscale: AutoscaleConfig,
    /// Connect timeout towards replicas and providers.
    pub connect_timeout: Duration,
    /// Idle upstream connections kept per replica.
    pub max_idle_per_host: usize,
    /// Longest wait for requests in flight when shutting down.
    pub shutdown_grace: Duration,
    /// Upgraded connections (WebSocket and others): how many, how long idle.
    pub upgrades: UpgradeConfig,
    /// Client connections at once; more are refused quickly.
    pub max_connections: usize,
    /// Longest request head, and longest request target, accepted.
    pub max_header_bytes: usize,
    /// Longest request target accepted (then 414).
    pub max_url_bytes: usize,
    /// Time for a client to send a whole request head.
    pub header_timeout: Duration,
    /// How long an idle keep-alive client connection is kept.
    pub keep_alive_timeout: Duration,
    /// Longest wait for each read from a client (request head and body).
    pub client_read_timeout: Duration,
    /// Longest wait for each write to a client.
    pub client_write_timeout: Duration,
    /// Credentials required on `/system/*` (never on `/function/*`); `None`: open.
    pub auth: Option<auth::Credentials>,
    /// HTTP triggers: URL patterns routed to functions.
    pub triggers: Vec<triggers::TriggerSpec>,
    /// Where `/metrics` is served when not on `listen`.
    pub metrics_listen: Option<SocketAddr>,
    /// Where call counts are posted in batches, and how often.
    pub analytics: Option<(String, Duration)>,
    /// Where functions deployed through the API (`POST /system/functions`) are kept, with the
    /// process provider; `None`: in memory only, lost at exit.
    pub state_file: Option<std::path::PathBuf>,
    /// The async queue (`/async-function/*`); `None`: no queue, that route answers 501.
    pub queue: Option<QueueConfig>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings::from(&GatewaySection::default())
    }
}

impl From<&GatewaySection> for Settings {
    fn from(g: &GatewaySection) -> Settings {
        Settings {
            listen: g.listen,
            default_namespace: g.default_namespace.clone(),
            scaling: g.scaling(),
            proxy: g.proxy(),
            pool: g.pool(),
            autoscale: g.autoscale(),
            connect_timeout: g.connect_timeout.0,
            max_idle_per_host: g.max_idle_per_host,
            shutdown_grace: g.shutdown_grace.0,
            upgrades: g.upgrades(),
            max_header_bytes: g.max_header_bytes,
            max_url_bytes: g.max_url_bytes,
            header_timeout: g.header_timeout.0,
            keep_alive_timeout: g.keep_alive_timeout.0,
            client_read_timeout: g.read_timeout.0,
            client_write_timeout: g.write_timeout.0,
            max_connections: g.max_connections,
            auth: None,
            triggers: Vec::new(),
            metrics_listen: g.metrics_listen,
            analytics: g
                .analytics_url
                .clone()
                .map(|url| (url, g.analytics_interval.0)),
            state_file: None,
            queue: None,
        }
    }
}

impl Settings {
    /// What the HTTP server enforces on clients.
    pub(crate) fn server_limits(&self) -> defrost_http::Limits {
        defrost_http::Limits {
            max_connections: self.max_connections,
            max_header_bytes: self.max_header_bytes,
            max_url_bytes: self.max_url_bytes,
            header_timeout: self.header_timeout,
            keep_alive_timeout: self.keep_alive_timeout,
            read_timeout: self.client_read_timeout,
            write_timeout: self.client_write_timeout,
            ..defrost_http::Limits::default()
        }
    }
}

/// Connects the JetStream queue, or opens the embedded store if a previous run left one.
fn open_queue(config: &QueueConfig, default_namespace: &str) -> io::Result<queue::Queue> {
    if config.nats.is_some() {
        return queue::Queue::nats(config.clone(), default_namespace).map_err(io::Error::other);
    }
    let store = queue::embedded::Lazy::new(&config.path).map_err(io::Error::other)?;
    if store.is_open() {
        log::info!("async queue stored in {}", config.path.display());
    }
    queue::Queue::open(config.clone(), Box::new(store)).map_err(io::Error::other)
}

/// What runs the functions, and what the gateway does with it beyond asking it for replicas.
///
/// The provider trait knows no implementation; what only one of them offers is chosen here,
/// where the gateway is built.
#[non_exhaustive]
pub enum Backend {
    /// Any provider; `/system/*` is answered by the gateway from it.
    Provider(Arc<dyn Provider>),
    /// The embedded process provider; [`Gateway::reload`] swaps its `[[function]]` entries,
    /// `/system/functions` deploys more beside them (kept in [`Settings::state_file`]), and
    /// `/system/logs` serves its replicas' output.
    Process(Arc<ProcessProvider>),
    /// A remote OpenFaaS provider; `/system/*` and `/healthz` are forwarded to its API.
    OpenFaas(Arc<OpenFaasProvider>),
}

impl Backend {
    /// The provider, whichever it is.
    pub fn provider(&self) -> Arc<dyn Provider> {
        match self {
            Backend::Provider(p) => Arc::clone(p),
            Backend::Process(p) => Arc::clone(p) as Arc<dyn Provider>,
            Backend::OpenFaas(p) => Arc::clone(p) as Arc<dyn Provider>,
        }
    }

    fn remote_api(&self) -> Option<RemoteApi> {
        match self {
            Backend::OpenFaas(p) => Some(p.remote_api()),
            _ => None,
        }
    }

    /// The replicas' output, when the provider keeps it.
    fn logs(&self) -> Option<logs::Logs> {
        match self {
            Backend::Process(p) => Some(logs::Logs::new(Arc::clone(p.logs()))),
            _ => None,
        }
    }

    fn reloadable(&self) -> Option<Arc<ProcessProvider>> {
        match self {
            Backend::Process(p) => Some(Arc::clone(p)),
            _ => None,
        }
    }
}

/// A running gateway: listening, with its workers started.
pub struct Gateway {
    handler: Arc<Handler>,
    /// The async queue, whose workers stop with the gateway.
    queue: Option<Arc<queue::Queue>>,
    /// The embedded provider's functions, from the config file and the API; a reload
    /// replaces the config file's.
    functions: Option<Arc<deployments::Deployments>>,
    metrics_listener: Option<metrics::listener::MetricsListener>,
    /// Posts call counts in the background; stops with the gateway.
    analytics: Option<analytics::Analytics>,
    pool: Pool,
    /// `None` once stopped.
    autoscaler: Option<Autoscaler>,
    addr: SocketAddr,
    shutdown_grace: Duration,
}

impl Gateway {
    /// Binds `settings.listen` and starts serving with `provider`.
    pub fn start(settings: Settings, provider: Arc<dyn Provider>) -> io::Result<Gateway> {
        Gateway::start_with(settings, Backend::Provider(provider))
    }

    /// Binds `settings.listen` and starts serving with `backend`.
    pub fn start_with(settings: Settings, backend: Backend) -> io::Result<Gateway> {
        let provider = backend.provider();
        let listener = server::bind(settings.listen)?;
        let addr = listener.local_addr()?;
        let server =
            defrost_http::Server::from_listener_with_limits(listener, settings.server_limits())
                .map_err(io::Error::other)?;
        let table = triggers::Triggers::build(&settings.triggers)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let triggers = Arc::new(triggers::TriggerSet::new(table));
        let table = Arc::new(table::FunctionTable::new());
        let provider_calls = Arc::new(metrics::ProviderCalls::new());
        let provider = Arc::new(metrics::Measured::new(
            provider,
            Arc::clone(&provider_calls),
        ));
        let analytics = match &settings.analytics {
            Some((url, every)) => Some(analytics::Analytics::start(
                url.clone(),
                *every,
                Arc::clone(&table),
            )?),
            None => None,
        };
        let scaler = Arc::new(Scaler::new(
            provider,
            settings.scaling.clone(),
            Arc::clone(&table),
        ));
        let timeouts = client::Timeouts {
            connect: settings.connect_timeout,
            response: settings.proxy.upstream_timeout,
            send: settings.proxy.upstream_timeout,
        };
        let agents =
            client::ShardedAgent::new(timeouts, settings.max_idle_per_host, settings.pool.core);
        let autoscaler = Autoscaler::start(Arc::clone(&scaler), settings.autoscale.clone())?;
        let proxy = Proxy::new(agents, Arc::clone(&scaler), settings.proxy.clone())
            .with_connect_timeout(settings.connect_timeout);
        let tunnels = tunnel::Tunnels::new(settings.upgrades.clone())?;
        let mut handler = Handler::new(
            scaler,
            proxy,
            settings.default_namespace.clone(),
            settings.auth.clone(),
            Arc::clone(&triggers),
            provider_calls,
            tunnels,
        );
        if settings.metrics_listen.is_some() {
            handler = handler.without_metrics_route();
        }
        let deployments = match backend.reloadable() {
            Some(process) => Some(Arc::new(deployments::Deployments::open(
                process,
                settings.state_file.clone(),
                function::Namespaces::new(settings.default_namespace.clone()),
            )?)),
            None => None,
        };
        let queue = match &settings.queue {
            Some(config) => Some(Arc::new(open_queue(config, &settings.default_namespace)?)),
            None => None,
        };
        let handler = handler
            .with_remote_api(backend.remote_api())
            .with_logs(backend.logs())
            .with_deployments(deployments.clone())
            .with_queue(queue.clone());
        let handler = Arc::new(handler);
        if let (Some(queue), Some(config)) = (&queue, &settings.queue) {
            let invoker = Arc::clone(&handler);
            let limit = config.max_response_bytes;
            queue.start(Arc::new(move |call: &queue::store::Queued| {
                invoker.invoke_queued(call, limit)
            }))?;
        }
        let metrics_listener = match settings.metrics_listen {
            Some(addr) => {
                let scrape = Arc::clone(&handler);
                Some(metrics::listener::MetricsListener::start(
                    addr,
                    Arc::new(move |request: &defrost_http::Request| {
                        scrape.metrics_listener_page(request)
                    }),
                )?)
            }
            None => None,
        };
        let worker_handler = Arc::clone(&handler);
        let pool = Pool::start(
            Arc::new(server),
            Arc::new(move |request| worker_handler.handle(request)),
            settings.pool.clone(),
        );
        log::info!("defrost listening on http://{addr}");
        Ok(Gateway {
            handler,
            queue,
            functions: deployments,
            metrics_listener,
            analytics,
            pool,
            autoscaler: Some(autoscaler),
            addr,
            shutdown_grace: settings.shutdown_grace,
        })
    }

    /// Applies a reloaded config file: its triggers and its functions. Everything is checked
    /// before anything changes; a file that does not validate changes nothing. Gateway settings
    /// (listen address, timeouts, limits) take a restart.
    pub fn reload(&self, loaded: &config::Loaded) -> Result<(), SetupError> {
        let specs = loaded.trigger_specs()?;
        let table = triggers::Triggers::build(&specs)?;
        let functions = loaded.process_functions()?;
        let count = (table.len(), functions.len());
        if let Some(deployments) = &self.functions {
            deployments.reload_config(functions)?;
        }
        self.handler.triggers().replace(table);
        log::info!("reloaded {} triggers and {} functions", count.0, count.1);
        Ok(())
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/metrics` is served when it has an address of its own.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().map(|m| m.local_addr())
    }

    /// Sets a function's desired replicas through the same single-flight as cold starts and
    /// `/system/scale-function`, so that the three never race.
    pub fn scale(&self, function: &FunctionRef, replicas: u64) -> Result<(), ProviderError> {
        self.scaler().scale(function, replicas)
    }

    fn scaler(&self) -> &Arc<Scaler> {
        self.handler.scaler()
    }

    /// Stops gracefully: autoscaling stops, the listening socket closes, idle client
    /// connections are closed and every response closes its connection (`Connection: close`),
    /// new requests are refused with 503; requests in flight finish, and requests still being
    /// received are answered (up to the grace period), then the workers stop and the provider
    /// stops every replica it started.
    pub fn shutdown(mut self) {
        self.stop();
    }

    /// Everything `shutdown` promises, once: dropping a gateway that was shut down does nothing
    /// more.
    fn stop(&mut self) {
        let Some(autoscaler) = self.autoscaler.take() else {
            return;
        };
        autoscaler.stop();
        self.pool.stop_accepting();
        self.handler.start_draining();
        if let Some(queue) = &self.queue {
            queue.stop_taking();
        }
        let deadline = deadline::after(self.shutdown_grace);
        let queued_running = || self.queue.as_ref().map_or(0, |q| q.running());
        let busy = || {
            self.handler.in_flight() > 0
                || self.pool.connections_in_use() > 0
                || queued_running() > 0
        };
        while busy() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let left = self.handler.in_flight();
        if left > 0 {
            log::warn!("shutting down with {left} requests still in flight after the grace period");
        }
        let receiving = self.pool.connections_in_use();
        if receiving > 0 {
            log::warn!("shutting down with {receiving} client connections still receiving a request or closing");
        }
        // The workers are joined next: none may still be waiting for a replica, or relaying.
        self.handler.close_tunnels();
        self.handler.scaler().abandon_waits();
        self.pool.stop();
        if let Some(queue) = self.queue.take() {
            queue.close();
        }
        if let Some(listener) = self.metrics_listener.take() {
            listener.stop();
        }
        self.analytics.take();
        self.handler.scaler().provider().shutdown();
        log::info!("defrost stopped");
    }
}

impl Drop for Gateway {
    /// A gateway that goes out of scope shuts down as [`Gateway::shutdown`] does, rather than
    /// leave its threads serving with nobody holding them.
    fn drop(&mut self) {
        self.stop();
    }
}
