//! defrost: a scale-from-zero function gateway.
//!
//! A request for `/function/{name}[.{namespace}][/rest]` is proxied to a ready replica of that
//! function. When the function has no ready replica, the gateway asks its [`Provider`] to start
//! one, holds the request until a replica is ready, then forwards it. Concurrent requests for
//! the same cold function share one status query and one scale call, and are released together.
//!
//! ```text
//!  client ──▶ tiny_http (limits, timeouts; idle keep-alive connections in one epoll set,
//!             where idle workers wait and read the request of a connection that wakes them)
//!                 ──▶ worker pool (server: a fixed core, more while workers block)
//!                                                          │
//!                                             gateway::Handler::handle
//!                                                          │
//!                            screen (no forward proxy, no `..`) ─▶ router::route (names checked)
//!      ┌──────────────┬──────────────┬─────────────────────┼──────────────────┬──────────────┐
//!  /healthz      /metrics, /     /system/… (auth)      /function/…      other paths: triggers
//!                                                          │                   (trie, canary split)
//!                                                  proxy::Proxy::forward ◀─────────────┘
//!                                                          │  metrics: per-function atomics
//!                      scaler::Scaler::ready ◀── cache (fresh + ready? done)
//!                          │ miss: single-flight status query ──▶ Provider::status
//!                          │ zero: single-flight scale, retried ──▶ Provider::set_replicas
//!                          │ wait: Provider::wait_for_change, re-query, until ready or 504
//!                          ▼
//!             least-loaded endpoint ──ureq──▶ replica  (refused? expire cache, back off, retry)
//!                          │
//!  client ◀── streamed response, hop-by-hop headers dropped, X-Call-Id / X-Start-Time added
//! ```
//!
//! Every function request is counted in flight ([`scaler::activity`]) from before the scaler is
//! asked until its response body is relayed; one [`autoscale`] thread reads those counts to
//! scale idle functions to zero and capacity-mode functions up and down.
//!
//! Beside the request path: `reload` (SIGHUP, `--watch`: triggers and functions swapped
//! atomically), `analytics` (call counts posted in batches by one thread).
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

pub mod analytics;
pub mod auth;
pub mod autoscale;
pub mod check;
pub mod client;
pub mod config;
pub mod error;
pub mod function;
pub mod gateway;
pub mod metrics;
pub mod provider;
pub mod proxy;
pub mod redact;
pub mod reload;
pub mod router;
pub mod scaler;
pub mod screen;
pub mod server;
pub mod setup;
pub mod status_page;
pub mod triggers;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use error::Error;
pub use function::FunctionRef;
pub use provider::{Endpoint, FunctionStatus, Provider, ProviderError};

use autoscale::{AutoscaleConfig, Autoscaler};
use config::GatewaySection;
use gateway::Handler;
use proxy::{Proxy, ProxyConfig};
use scaler::{Scaler, ScalingConfig};
use server::{Pool, PoolConfig};

/// Everything that shapes a running gateway, with the documented defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub default_namespace: String,
    pub scaling: ScalingConfig,
    pub proxy: ProxyConfig,
    pub pool: PoolConfig,
    pub autoscale: AutoscaleConfig,
    /// Connect timeout towards replicas and providers.
    pub connect_timeout: Duration,
    /// Idle upstream connections kept per replica.
    pub max_idle_per_host: usize,
    /// Longest wait for requests in flight when shutting down.
    pub shutdown_grace: Duration,
    /// Client connections at once; more are refused quickly.
    pub max_connections: usize,
    /// Longest request head, and longest request target, accepted.
    pub max_header_bytes: usize,
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
        }
    }
}

impl Settings {
    /// What the HTTP server enforces on clients.
    pub fn server_limits(&self) -> tiny_http::Limits {
        tiny_http::Limits {
            max_connections: self.max_connections,
            max_header_bytes: self.max_header_bytes,
            max_url_bytes: self.max_url_bytes,
            header_timeout: self.header_timeout,
            keep_alive_timeout: self.keep_alive_timeout,
            read_timeout: self.client_read_timeout,
            write_timeout: self.client_write_timeout,
            ..tiny_http::Limits::default()
        }
    }
}

/// A running gateway: listening, with its workers started.
pub struct Gateway {
    handler: Arc<Handler>,
    metrics_listener: Option<metrics::listener::MetricsListener>,
    /// Posts call counts in the background; stops with the gateway.
    analytics: Option<analytics::Analytics>,
    pool: Pool,
    autoscaler: Autoscaler,
    addr: SocketAddr,
    shutdown_grace: Duration,
}

impl Gateway {
    /// Binds `settings.listen` and starts serving with `provider`.
    pub fn start(settings: Settings, provider: Arc<dyn Provider>) -> io::Result<Gateway> {
        let listener = server::bind(settings.listen)?;
        let addr = listener.local_addr()?;
        let server =
            tiny_http::Server::from_listener_with_limits(listener, settings.server_limits())
                .map_err(io::Error::other)?;
        let table = triggers::Triggers::build(&settings.triggers)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let triggers = Arc::new(triggers::TriggerSet::new(table));
        let metrics = Arc::new(metrics::Metrics::new());
        let provider = Arc::new(metrics::Measured::new(provider, Arc::clone(&metrics)));
        let analytics = match &settings.analytics {
            Some((url, every)) => Some(analytics::Analytics::start(
                url.clone(),
                *every,
                Arc::clone(&metrics),
            )?),
            None => None,
        };
        let scaler =
            Arc::new(Scaler::new(provider, settings.scaling.clone()).with_metrics(metrics));
        let timeouts = client::Timeouts {
            connect: settings.connect_timeout,
            response: settings.proxy.upstream_timeout,
            send: settings.proxy.upstream_timeout,
        };
        let agents =
            client::ShardedAgent::new(timeouts, settings.max_idle_per_host, settings.pool.core);
        let autoscaler = Autoscaler::start(Arc::clone(&scaler), settings.autoscale.clone())?;
        let proxy = Proxy::new(agents, Arc::clone(&scaler), settings.proxy.clone());
        let metrics_listener = match settings.metrics_listen {
            Some(addr) => Some(metrics::listener::MetricsListener::start(
                addr,
                Arc::clone(&scaler),
            )?),
            None => None,
        };
        let mut handler = Handler::new(
            scaler,
            proxy,
            settings.default_namespace.clone(),
            settings.auth.clone(),
            Arc::clone(&triggers),
        );
        if metrics_listener.is_some() {
            handler = handler.without_metrics_route();
        }
        let handler = Arc::new(handler);
        let worker_handler = Arc::clone(&handler);
        let pool = Pool::start(
            Arc::new(server),
            Arc::new(move |request| worker_handler.handle(request)),
            settings.pool.clone(),
        );
        log::info!("defrost listening on http://{addr}");
        Ok(Gateway {
            handler,
            metrics_listener,
            analytics,
            pool,
            autoscaler,
            addr,
            shutdown_grace: settings.shutdown_grace,
        })
    }

    /// Applies a reloaded config file: its triggers and its functions. Everything is checked
    /// before anything changes; a file that does not validate changes nothing. Gateway settings
    /// (listen address, timeouts, limits) take a restart.
    pub fn reload(&self, loaded: &config::Loaded) -> Result<(), String> {
        let specs = loaded.trigger_specs().map_err(|e| e.to_string())?;
        let table = triggers::Triggers::build(&specs).map_err(|e| e.to_string())?;
        let functions = loaded.process_functions().map_err(|e| e.to_string())?;
        let count = (table.len(), functions.len());
        self.scaler().provider().reload_functions(functions)?;
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

    /// The scaler, for embedders that want to scale or inspect functions directly.
    pub fn scaler(&self) -> &Arc<Scaler> {
        self.handler.scaler()
    }

    /// Stops gracefully: autoscaling stops, the listening socket closes, idle client
    /// connections are closed and every response closes its connection (`Connection: close`),
    /// new requests are refused with 503; requests in flight finish, and requests still being
    /// received are answered (up to the grace period), then the workers stop and the provider
    /// stops every replica it started.
    pub fn shutdown(self) {
        self.autoscaler.stop();
        self.pool.stop_accepting();
        self.handler.start_draining();
        let deadline = Instant::now() + self.shutdown_grace;
        let busy = || self.handler.in_flight() > 0 || self.pool.connections_in_use() > 0;
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
        self.pool.stop();
        if let Some(listener) = self.metrics_listener {
            listener.stop();
        }
        drop(self.analytics);
        self.handler.scaler().provider().shutdown();
        log::info!("defrost stopped");
    }
}
