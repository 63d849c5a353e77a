//! One request, start to finish: route it, then proxy it, answer it locally, or refuse it.

use std::io::{Cursor, Read};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use defrost_http::{Header, Request, Response, ResponseBox, StatusCode};

use crate::auth::Credentials;
use crate::call::Call;
use crate::deployments::Deployments;
use crate::error::Error;
use crate::function::{FunctionRef, Namespaces};
use crate::logs::{self, Logs, LogsQuery};
use crate::metrics::{exposition, overview::Overview, ProviderCalls};
use crate::provider::api::{self, ApiRequest};
use crate::provider::openfaas::RemoteApi;
use crate::provider::ProviderError;
use crate::proxy::headers::request_header;
use crate::proxy::upgrade::{self, Answer as UpgradeAnswer};
use crate::proxy::{Proxy, Stored, Target};
use crate::queue::store::{Meta, Queued};
use crate::queue::{self, Answer, Queue};
use crate::router::{self, Route};
use crate::scaler::Scaler;
use crate::status_page;
use crate::triggers::{Miss, TriggerSet};
use crate::tunnel::{Admitted, Tunnels};

/// Everything a worker needs to answer a request.
pub struct Handler {
    scaler: Arc<Scaler>,
    proxy: Proxy,
    namespaces: Namespaces,
    /// Credentials `/system/*` callers must present, when basic auth is on.
    auth: Option<Credentials>,
    /// HTTP triggers, swapped whole on reload.
    triggers: Arc<TriggerSet>,
    in_flight: AtomicUsize,
    draining: AtomicBool,
    /// Whether `/metrics` is answered here (not when it has a listener of its own).
    metrics_route: bool,
    provider_calls: Arc<ProviderCalls>,
    /// Where `/system/*` and `/healthz` are forwarded when the provider is remote; `None`: they
    /// are answered here, from the provider.
    remote_api: Option<RemoteApi>,
    /// `/system/logs`, when the provider keeps its replicas' output.
    logs: Option<Logs>,
    /// Deploy, update and remove on `/system/functions`, with the embedded provider.
    deployments: Option<Arc<Deployments>>,
    /// Set when draining starts: relayed log streams end then.
    streams_closed: Arc<AtomicBool>,
    /// `/async-function/*`, when a queue is configured.
    queue: Option<Arc<Queue>>,
    /// Upgraded connections, relayed by the workers that answered them.
    tunnels: Tunnels,
}

impl Handler {
    pub fn new(
        scaler: Arc<Scaler>,
        proxy: Proxy,
        default_namespace: String,
        auth: Option<Credentials>,
        triggers: Arc<TriggerSet>,
        provider_calls: Arc<ProviderCalls>,
        tunnels: Tunnels,
    ) -> Handler {
        Handler {
            scaler,
            proxy,
            namespaces: Namespaces::new(default_namespace),
            auth,
            triggers,
            in_flight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            metrics_route: true,
            provider_calls,
            remote_api: None,
            logs: None,
            deployments: None,
            streams_closed: Arc::new(AtomicBool::new(false)),
            queue: None,
            tunnels,
        }
    }

    pub fn triggers(&self) -> &TriggerSet {
        &self.triggers
    }

    /// Forwards `/system/*` (except scale calls and `/system/info`) and `/healthz` to a remote
    /// provider's API.
    /// Names are passed to a remote provider as the client wrote them (see [`Namespaces`]).
    pub fn with_remote_api(mut self, api: Option<RemoteApi>) -> Handler {
        if api.is_some() {
            self.namespaces = self.namespaces.clone().without_alias();
        }
        self.remote_api = api;
        self
    }

    /// Serves `/system/logs` from the provider's kept output.
    pub fn with_logs(mut self, logs: Option<Logs>) -> Handler {
        self.logs = logs;
        self
    }

    /// Answers deploy, update and remove with the embedded provider's functions.
    pub fn with_deployments(mut self, deployments: Option<Arc<Deployments>>) -> Handler {
        self.deployments = deployments;
        self
    }

    /// Queues calls to `/async-function/*`.
    pub fn with_queue(mut self, queue: Option<Arc<Queue>>) -> Handler {
        self.queue = queue;
        self
    }

    /// Leaves `/metrics` to a listener of its own.
    pub fn without_metrics_route(mut self) -> Handler {
        self.metrics_route = false;
        self
    }

    pub fn scaler(&self) -> &Arc<Scaler> {
        &self.scaler
    }

    /// Requests being handled right now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// From now on, new requests are refused with 503, so that clients go elsewhere while the
    /// gateway finishes the requests it has. That every response then closes its connection
    /// (`Connection: close`) is the server's doing: see `Pool::stop_accepting`.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        // Followers would otherwise hold shutdown for its whole grace period.
        self.streams_closed.store(true, Ordering::SeqCst);
        if let Some(logs) = &self.logs {
            logs.close();
        }
    }

    /// Closes every upgraded connection still open (shutdown, after the grace period).
    pub fn close_tunnels(&self) {
        self.tunnels.close_all();
    }

    /// Answers one request. Never panics on what the client sent; never leaves it unanswered.
    pub fn handle(&self, mut request: Request) {
        let _counted = Counted::new(&self.in_flight);
        let started = Instant::now();
        let mut outcome = self.answer(&mut request);
        let joined = outcome.joined.take();
        let (response, call) = self.settle(&request, outcome);
        let status = response.status_code().0;
        log_answer(&request, status, started);
        match joined {
            Some(joined) if status == 101 => self.join(request, response, joined),
            _ => respond(request, response, status),
        }
        if let Some(call) = call {
            call.finish(status);
        }
    }

    /// Switches the client's connection over and relays it to the replica's until either
    /// side closes. The call stays in flight meanwhile, so the replica is not stopped under it
    /// and shutdown waits for it.
    fn join(&self, request: Request, response: ResponseBox, joined: Joined) {
        let Some(client_fd) = request.raw_fd() else {
            respond(
                request,
                error_response(&Error::BadRequest("not a connection".into())),
                400,
            );
            return;
        };
        let path = printable_path(request.url());
        // the relay holds this worker for as long as the connection lasts
        crate::server::blocking();
        let mut client = request.upgrade(&joined.protocol, response);
        let ended = self
            .tunnels
            .relay(client_fd, &mut client, &joined.upstream, joined.early);
        drop(joined.admitted);
        log::debug!("upgraded {path} ({}): {ended}", joined.protocol);
    }

    /// Screens and routes the request, then answers it here or calls a function.
    fn answer(&self, request: &mut Request) -> Outcome {
        if self.draining.load(Ordering::SeqCst) {
            return Outcome::local(Err(Error::ShuttingDown));
        }
        let target = request.url().to_owned();
        let routed = crate::screen::screen(request.method().as_str(), &target).and_then(|()| {
            router::route(&target, self.namespaces.default_namespace()).map_err(Error::from)
        });
        let queued = matches!(routed, Ok(Route::AsyncFunction { .. }));
        match routed {
            Err(e) => Outcome::local(Err(e)),
            Ok(
                Route::Function {
                    function,
                    rest,
                    query,
                    namespace_named,
                }
                | Route::AsyncFunction {
                    function,
                    rest,
                    query,
                    namespace_named,
                },
            ) => {
                let function = self.namespaces.resolve_function(function);
                let target = Target {
                    function: &function,
                    rest,
                    query,
                    params: &[],
                    namespace_named,
                };
                if queued {
                    Outcome::local(self.enqueue(request, &target))
                } else {
                    self.call_function(request, &target)
                }
            }
            Ok(Route::NotFound) => self.trigger(request, &target),
            Ok(route) => Outcome::local(self.local(request, route, &target)),
        }
    }

    /// Turns a failure into its response. A call to a name the provider does not know ends
    /// here, and is not kept: clients must not be able to grow the function table by calling
    /// made-up names.
    fn settle(&self, request: &Request, outcome: Outcome) -> (ResponseBox, Option<Call>) {
        let e = match outcome.result {
            Ok(response) => return (response, outcome.call),
            Err(e) => e,
        };
        log_failure(request, &e);
        let call = match outcome.call {
            Some(call) if names_unknown_function(&e) => {
                let function = call.function().clone();
                call.finish(e.status());
                self.scaler.table().forget_unknown(&function);
                None
            }
            call => call,
        };
        (error_response(&e), call)
    }

    /// The routes the gateway answers itself.
    fn local(
        &self,
        request: &mut Request,
        route: Route<'_>,
        target: &str,
    ) -> Result<ResponseBox, Error> {
        match route {
            Route::Healthz => self.healthz(request),
            Route::Metrics if self.metrics_route => Ok(self.metrics_page()),
            Route::StatusPage => {
                self.authorize(request)?;
                let page = status_page::render(&self.overview());
                Ok(bytes(200, status_page::CONTENT_TYPE, page.into_bytes()))
            }
            Route::System { path, query } => self.system(request, path, query),
            Route::Metrics
            | Route::Function { .. }
            | Route::AsyncFunction { .. }
            | Route::NotFound => Err(Error::NoRoute {
                path: printable_path(target),
            }),
        }
    }
}

/// What a request came to: its response (or the failure to answer with), and the function
/// call it made, if it made one.
struct Outcome {
    result: Result<ResponseBox, Error>,
    call: Option<Call>,
    /// The replica's connection, when it switched protocols (the response is its 101).
    joined: Option<Joined>,
}

impl Outcome {
    fn local(result: Result<ResponseBox, Error>) -> Outcome {
        Outcome {
            result,
            call: None,
            joined: None,
        }
    }
}

/// A replica that switched protocols, waiting for the client's connection to be joined to it.
struct Joined {
    protocol: String,
    upstream: std::net::TcpStream,
    early: Vec<u8>,
    /// Counted against `max_upgraded` until the relay ends.
    admitted: Admitted,
}

/// Writes the response; a response that cannot be completed is logged, never retried.
fn respond(request: Request, response: ResponseBox, status: u16) {
    let (method, path) = (request.method().clone(), printable_path(request.url()));
    if let Err(e) = request.respond(response) {
        // The client hung up, stopped reading, or the function broke off mid-answer: the
        // connection is closed, and the operator should be able to tell which call it was.
        log::info!("{method} {path} -> {status}: response not completed: {e}");
    }
}

/// One line per request, at debug level.
fn log_answer(request: &Request, status: u16, started: Instant) {
    if log::log_enabled!(log::Level::Debug) {
        log::debug!(
            "{} {} -> {status} in {:.3}ms",
            request.method(),
            printable_path(request.url()),
            started.elapsed().as_secs_f64() * 1e3
        );
    }
}

impl Handler {
    /// Liveness: the gateway's own, and its remote provider's when there is one.
    fn healthz(&self, request: &mut Request) -> Result<ResponseBox, Error> {
        match &self.remote_api {
            Some(api) => {
                let url = format!("{}/healthz", api.base_url);
                self.proxy
                    .pass_through(request, &url, api.authorization.as_deref())
            }
            None => Ok(text(200, "OK\n")),
        }
    }

    /// The provider API. Scale calls always go through the scaler's single-flight, so a manual
    /// scale and a cold start never race; the rest is forwarded to a remote provider, or
    /// answered from the local one.
    fn system(
        &self,
        request: &mut Request,
        path: &str,
        query: Option<&str>,
    ) -> Result<ResponseBox, Error> {
        self.authorize(request)?;
        if path == "/system/logs" {
            if let Some(logs) = &self.logs {
                return serve_logs(logs, request, query, &self.namespaces);
            }
            if let Some(api) = &self.remote_api {
                // A remote follow holds this worker for as long as the provider streams.
                crate::server::blocking();
                let url = remote_url(api, path, query);
                let response =
                    self.proxy
                        .pass_through(request, &url, api.authorization.as_deref())?;
                return Ok(logs::cut_at_shutdown(response, &self.streams_closed));
            }
        }
        let method = request.method().as_str();
        if let (Some(deployments), "/system/functions", "POST" | "PUT" | "DELETE") =
            (&self.deployments, path, method)
        {
            let method = method.to_owned();
            let body = read_small_body(request)?;
            return Ok(change_functions(deployments, &method, &body));
        }
        let provider = self.scaler.provider();
        let table = self.scaler.table();
        let invocations = |f: &FunctionRef| table.get(f).map_or(0, |r| r.counters().invocations());
        if let (Some(api), false) = (&self.remote_api, answered_here(path)) {
            let url = remote_url(api, path, query);
            let relayed = self
                .proxy
                .pass_through(request, &url, api.authorization.as_deref())?;
            let named = api::query_param(query, "namespace");
            let namespace = self.namespaces.resolve(named.as_deref());
            if is_listing(request.method().as_str(), path) {
                return with_invocations(relayed, namespace, &invocations);
            }
            return Ok(relayed);
        }
        let body = read_small_body(request)?;
        let scale = |f: &FunctionRef, n: u64| self.scaler.scale(f, n);
        let api_request = ApiRequest {
            method: request.method().as_str(),
            path,
            query,
            body: &body,
        };
        let reply = api::handle(
            provider.as_ref(),
            &scale,
            &invocations,
            &self.namespaces,
            &api_request,
        );
        Ok(bytes(reply.status, reply.content_type, reply.body))
    }

    fn authorize(&self, request: &Request) -> Result<(), Error> {
        let Some(expected) = &self.auth else {
            return Ok(());
        };
        let presented = request_header(request, "Authorization");
        if expected.accepts(presented) {
            Ok(())
        } else {
            Err(Error::Unauthorized)
        }
    }
}

impl Handler {
    /// Every way of calling a function ends here, so every call is counted the same way: from
    /// here to the last byte of its answer, by the [`Call`] it returns with.
    fn call_function(&self, request: &mut Request, target: &Target<'_>) -> Outcome {
        let mut call = Call::begin(self.scaler.table(), target.function);
        if upgrade::wanted(request) {
            return self.call_upgrade(request, target, call);
        }
        let result = self.proxy.forward(request, target, &mut call);
        Outcome {
            result,
            call: Some(call),
            joined: None,
        }
    }

    /// An upgrade request: counted against `max_upgraded` before any replica is asked for.
    fn call_upgrade(&self, request: &Request, target: &Target<'_>, mut call: Call) -> Outcome {
        let Some(admitted) = self.tunnels.admit() else {
            return Outcome {
                result: Err(Error::TooManyUpgraded {
                    limit: self.tunnels.limit(),
                }),
                call: Some(call),
                joined: None,
            };
        };
        let (result, joined) = match self.proxy.upgrade(request, target, &mut call) {
            Ok(UpgradeAnswer::Switched(switched)) => (
                Ok(switched.response),
                Some(Joined {
                    protocol: switched.protocol,
                    upstream: switched.upstream,
                    early: switched.early,
                    admitted,
                }),
            ),
            Ok(UpgradeAnswer::Declined(response)) => (Ok(response), None),
            Err(e) => (Err(e), None),
        };
        Outcome {
            result,
            call: Some(call),
            joined,
        }
    }

    /// Requests outside `/function/` and `/system/` may match an HTTP trigger. The table in use
    /// when the request arrived serves it to the end, whatever a reload swaps in meanwhile.
    fn trigger(&self, request: &mut Request, target: &str) -> Outcome {
        let triggers = self.triggers.current();
        let (path, query) = router::split_target(target);
        let host = request_header(request, "Host").map(str::to_owned);
        let method = request.method().as_str().to_owned();
        match triggers.lookup(&method, host.as_deref(), path) {
            Ok(found) => {
                // A trigger names its function in the config file: in the default namespace, it
                // is called by its bare name, as a client naming no namespace would.
                let namespace_named =
                    found.function.namespace() != self.namespaces.default_namespace();
                let target = Target {
                    function: found.function,
                    rest: path,
                    query,
                    params: &found.params,
                    namespace_named,
                };
                self.call_function(request, &target)
            }
            Err(Miss::NoMatch) => Outcome::local(Err(Error::NoRoute {
                path: printable_path(target),
            })),
            Err(Miss::Method(allowed)) => Outcome::local(Err(Error::MethodNotAllowed { allowed })),
        }
    }
}

impl Handler {
    /// `/async-function/…`: the function must exist and the request be whole within the body
    /// limit; 202 with its `X-Call-Id` once it is stored durably.
    fn enqueue(&self, request: &mut Request, target: &Target<'_>) -> Result<ResponseBox, Error> {
        let Some(queue) = &self.queue else {
            return Err(Error::Queue(queue::QueueError::Off));
        };
        let function = target.function;
        let callback = request_header(request, "X-Callback-Url").map(str::to_owned);
        if let Some(url) = &callback {
            queue::callback::check_url(url).map_err(Error::BadRequest)?;
        }
        self.known(function)?;
        let limit = self.proxy.max_body_bytes().min(queue.max_body_bytes());
        let body = read_body(request, limit)?;
        let call_id = request_header(request, "X-Call-Id")
            .filter(|id| !id.is_empty() && id.len() <= 128)
            .map_or_else(crate::proxy::headers::new_call_id_string, str::to_owned);
        let headers = request
            .headers()
            .iter()
            .filter(|h| !h.field.equiv("X-Call-Id"))
            .map(|h| (h.field.as_str().to_string(), h.value.as_str().to_owned()))
            .chain([("X-Call-Id".to_owned(), call_id.clone())])
            .collect();
        let call = Queued {
            meta: Meta {
                call_id,
                function: function.name().to_owned(),
                namespace: function.namespace().to_owned(),
                namespace_named: target.namespace_named,
                method: request.method().as_str().to_owned(),
                rest: target.rest.to_owned(),
                query: target.query.map(str::to_owned),
                headers,
                client: request.remote_addr().map(|a| a.to_string()),
                callback,
                attempts: 0,
                accepted_ms: queue::unix_ms(),
            },
            body,
        };
        let call_id = queue.accept(function, call).map_err(Error::Queue)?;
        let mut response = text(202, "");
        add_header(&mut response, "X-Call-Id", &call_id);
        Ok(response)
    }

    /// Whether the provider knows the function: a queued call to a made-up name is refused
    /// now (404), not found out later.
    fn known(&self, function: &FunctionRef) -> Result<(), Error> {
        let table = self.scaler.table();
        let record = table.record(function);
        match self.scaler.known(&record) {
            Ok(()) => Ok(()),
            Err(ProviderError::NotFound) => {
                drop(record);
                table.forget_unknown(function);
                Err(Error::FunctionNotFound(function.clone()))
            }
            Err(e) => Err(Error::Provider(function.clone(), e)),
        }
    }

    /// Runs a queued call as a synchronous one runs, counted the same way; the answer's body
    /// is kept (up to `limit`) for the callback.
    pub fn invoke_queued(&self, call: &Queued, limit: u64) -> Answer {
        let meta = &call.meta;
        let function = match FunctionRef::new(&meta.function, &meta.namespace) {
            Ok(function) => function,
            Err(e) => return failed_answer(&Error::BadName(e)),
        };
        let headers: Vec<(&str, &str)> = meta
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let stored = Stored {
            method: &meta.method,
            headers: &headers,
            client: meta.client.as_deref().and_then(|a| a.parse().ok()),
            body: &call.body,
        };
        let target = Target {
            function: &function,
            rest: &meta.rest,
            query: meta.query.as_deref(),
            params: &[],
            namespace_named: meta.namespace_named,
        };
        let mut running = Call::begin(self.scaler.table(), &function);
        let answer = match self.proxy.forward_stored(&stored, &target, &mut running) {
            Ok(response) => read_answer(response, limit),
            Err(e) => {
                if names_unknown_function(&e) {
                    self.scaler.table().forget_unknown(&function);
                }
                let path = format!("/async-function/{function}{}", meta.rest);
                log_failure_of(&meta.method, &path, &e);
                failed_answer(&e)
            }
        };
        running.finish(answer.status);
        answer
    }
}

/// A function's response, read whole up to `limit` bytes for the callback.
fn read_answer(response: ResponseBox, limit: u64) -> Answer {
    let status = response.status_code().0;
    let content_type = response
        .headers()
        .iter()
        .find(|h| h.field.equiv("Content-Type"))
        .map(|h| h.value.as_str().to_owned());
    let mut body = Vec::new();
    if let Err(e) = response.into_reader().take(limit).read_to_end(&mut body) {
        log::warn!("reading a queued call's answer failed: {e}");
        return failed_answer(&Error::BadRequest(format!("{e}")));
    }
    Answer {
        status,
        content_type,
        body,
    }
}

fn failed_answer(e: &Error) -> Answer {
    Answer {
        status: e.status(),
        content_type: Some("text/plain; charset=utf-8".into()),
        body: format!("{e}\n").into_bytes(),
    }
}

/// Where a `/system/*` request goes on a remote provider.
fn remote_url(api: &RemoteApi, path: &str, query: Option<&str>) -> String {
    match query {
        Some(q) => format!("{}{path}?{q}", api.base_url),
        None => format!("{}{path}", api.base_url),
    }
}

/// `POST`, `PUT` or `DELETE /system/functions` with the embedded provider: 202 once the
/// change is saved and applied, as faas-netes answers.
fn change_functions(deployments: &Deployments, method: &str, body: &[u8]) -> ResponseBox {
    let (done, verb) = match method {
        "POST" => (deployments.deploy(body), "deployed"),
        "PUT" => (deployments.update(body), "updated"),
        _ => (deployments.remove(body), "removed"),
    };
    match done {
        Ok(function) => text(202, &format!("function {function} {verb}\n")),
        Err(e) => text(e.status(), &format!("{e}\n")),
    }
}

/// `/system/logs` from the embedded provider: refusals get their own status, a follow tells
/// the pool that this worker is taken for long.
fn serve_logs(
    logs: &Logs,
    request: &Request,
    query: Option<&str>,
    namespaces: &Namespaces,
) -> Result<ResponseBox, Error> {
    if request.method().as_str() != "GET" {
        return Err(Error::MethodNotAllowed {
            allowed: "GET".into(),
        });
    }
    let opened = LogsQuery::parse(query, namespaces).and_then(|q| logs.open(q));
    let (body, length) = match opened {
        Ok(body) => body.into_reader(),
        Err(e) => return Ok(text(e.status(), &format!("{e}\n"))),
    };
    if length.is_none() {
        crate::server::blocking();
    }
    let mut response = Response::new(StatusCode(200), Vec::new(), body, length, None);
    add_header(&mut response, "Content-Type", "application/x-ndjson");
    Ok(response)
}

/// One request counted in flight until dropped, so that a handler that panics still lets
/// shutdown know it is gone instead of making it wait the whole grace period.
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(count: &'a AtomicUsize) -> Counted<'a> {
        count.fetch_add(1, Ordering::SeqCst);
        Counted(count)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Handler {
    /// What the metrics listener answers: the scrape on `/metrics`, 404 elsewhere.
    pub fn metrics_listener_page(&self, request: &Request) -> ResponseBox {
        let (path, _) = router::split_target(request.url());
        if path == "/metrics" {
            self.metrics_page()
        } else {
            error_response(&Error::NoRoute {
                path: printable_path(path),
            })
        }
    }

    /// The scrape: the provider is asked for replica counts, the rest is read from counters.
    pub fn metrics_page(&self) -> ResponseBox {
        let mut text = exposition::render(&self.overview(), &self.provider_calls);
        exposition::upgraded_connections(&mut text, self.tunnels.open());
        bytes(200, exposition::CONTENT_TYPE, text.into_bytes())
    }
}

impl Handler {
    /// Every function at this moment, and the async queue, for the scrape and the status page
    /// alike.
    fn overview(&self) -> Overview {
        let scaler = &self.scaler;
        let mut overview = Overview::gather(
            scaler.table(),
            scaler.provider().as_ref(),
            scaler.coalescing(),
        );
        overview.queue = self.queue.as_ref().map(|q| q.stats());
        overview
    }
}

/// The `/system/*` routes answered by the gateway even in front of a remote provider: scale
/// calls, which go through the scaler's single-flight, and `/system/info`, where the gateway
/// wraps the provider's answer in its own.
fn answered_here(path: &str) -> bool {
    path.starts_with("/system/scale-function/") || path == "/system/info"
}

/// A function listing or status, whose `invocationCount` the gateway fills in.
fn is_listing(method: &str, path: &str) -> bool {
    method == "GET"
        && (path == "/system/functions"
            || path
                .strip_prefix("/system/function/")
                .is_some_and(|name| !name.is_empty() && !name.contains('/')))
}

/// A remote provider's listing, answered 200, with the gateway's invocation counts in it; any
/// other answer is relayed as it came.
fn with_invocations(
    relayed: ResponseBox,
    namespace: &str,
    invocations: &dyn Fn(&FunctionRef) -> u64,
) -> Result<ResponseBox, Error> {
    const LIMIT: u64 = 8 << 20;
    if relayed.status_code().0 != 200 {
        return Ok(relayed);
    }
    let mut listing = Vec::new();
    relayed
        .into_reader()
        .take(LIMIT + 1)
        .read_to_end(&mut listing)
        .map_err(|e| Error::ProviderApi(format!("reading the function listing failed: {e}")))?;
    if listing.len() as u64 > LIMIT {
        return Err(Error::ProviderApi(format!(
            "function listing larger than {LIMIT} bytes"
        )));
    }
    let amended = crate::provider::wire::with_invocations(&listing, namespace, invocations)
        .unwrap_or(listing);
    Ok(bytes(200, "application/json", amended))
}

/// The provider does not know the function the client named.
fn names_unknown_function(e: &Error) -> bool {
    matches!(
        e,
        Error::FunctionNotFound(_) | Error::Provider(_, ProviderError::NotFound)
    )
}

/// API requests are small JSON documents; anything bigger is refused, not buffered.
fn read_small_body(request: &mut Request) -> Result<Vec<u8>, Error> {
    read_body(request, 1 << 20)
}

/// The whole body, refused (413) past `limit` bytes.
fn read_body(request: &mut Request, limit: u64) -> Result<Vec<u8>, Error> {
    let mut body = Vec::new();
    request
        .as_reader()
        .take(limit.saturating_add(1))
        .read_to_end(&mut body)
        .map_err(Error::from_body_read)?;
    if body.len() as u64 > limit {
        return Err(Error::BodyTooLarge { limit });
    }
    Ok(body)
}

/// Failures the operator should hear about are logged; a client's own mistakes are not.
fn log_failure(request: &Request, e: &Error) {
    let path = printable_path(request.url());
    log_failure_of(request.method().as_str(), &path, e);
}

/// The line of a failed call, live or queued: `METHOD /path -> STATUS: what happened`.
fn log_failure_of(method: &str, path: &str, e: &Error) {
    let status = e.status();
    if status >= 500 {
        log::warn!("{method} {path} -> {status}: {e}");
    } else {
        log::debug!("{method} {path} -> {status}: {e}");
    }
}

/// The path alone (no query, which may carry secrets), cut to a sane length.
fn printable_path(target: &str) -> String {
    let (path, _) = router::split_target(target);
    path.chars().take(200).collect()
}

pub fn error_response(e: &Error) -> ResponseBox {
    let mut response = text(e.status(), &format!("{e}\n"));
    for (name, value) in e.headers() {
        add_header(&mut response, name, &value);
    }
    response
}

pub fn text(status: u16, body: &str) -> ResponseBox {
    bytes(
        status,
        "text/plain; charset=utf-8",
        body.as_bytes().to_vec(),
    )
}

pub fn bytes(status: u16, content_type: &str, body: Vec<u8>) -> ResponseBox {
    let length = body.len();
    let mut response = Response::new(
        StatusCode(status),
        Vec::new(),
        Box::new(Cursor::new(body)) as Box<dyn Read + Send>,
        Some(length),
        None,
    );
    add_header(&mut response, "Content-Type", content_type);
    response
}

/// Adds a header; a value that is not valid ASCII is dropped (and logged), never a panic.
pub fn add_header(response: &mut ResponseBox, name: &str, value: &str) {
    match Header::from_bytes(name.as_bytes(), value.as_bytes()) {
        Ok(h) => response.add_header(h),
        Err(()) => log::warn!("dropped response header {name}: value is not ASCII"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_uncounted_even_when_its_handler_panics() {
        let count = AtomicUsize::new(0);
        let panicked = std::panic::catch_unwind(|| {
            let _counted = Counted::new(&count);
            assert_eq!(count.load(Ordering::SeqCst), 1);
            panic!("handler bug");
        });
        assert!(panicked.is_err());
        assert_eq!(count.load(Ordering::SeqCst), 0);
    }
}
