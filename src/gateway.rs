//! One request, start to finish: route it, then proxy it, answer it locally, or refuse it.

use std::io::{Cursor, Read};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tiny_http::{Header, Request, Response, ResponseBox, StatusCode};

use crate::error::Error;
use crate::proxy::{Call, Proxy};
use crate::router::{self, Route};
use crate::scaler::Scaler;

/// Everything a worker needs to answer a request.
pub struct Handler {
    scaler: Arc<Scaler>,
    proxy: Proxy,
    default_namespace: String,
    in_flight: AtomicUsize,
    draining: AtomicBool,
}

impl Handler {
    pub fn new(scaler: Arc<Scaler>, proxy: Proxy, default_namespace: String) -> Handler {
        Handler {
            scaler,
            proxy,
            default_namespace,
            in_flight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
        }
    }

    pub fn scaler(&self) -> &Arc<Scaler> {
        &self.scaler
    }

    /// Requests being handled right now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// From now on, every response asks the client to close its connection, so that keep-alive
    /// clients reconnect elsewhere while the gateway drains.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Answers one request. Never panics on what the client sent; never leaves it unanswered.
    pub fn handle(&self, mut request: Request) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let started = Instant::now();
        let mut response = self.dispatch(&mut request).unwrap_or_else(|e| {
            log_failure(&request, &e);
            error_response(&e)
        });
        if self.draining.load(Ordering::SeqCst) {
            add_header(&mut response, "Connection", "close");
        }
        let status = response.status_code().0;
        if log::log_enabled!(log::Level::Debug) {
            log::debug!(
                "{} {} -> {status} in {:.3}ms",
                request.method(),
                request.url(),
                started.elapsed().as_secs_f64() * 1e3
            );
        }
        if let Err(e) = request.respond(response) {
            log::debug!("response not delivered: {e}");
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    fn dispatch(&self, request: &mut Request) -> Result<ResponseBox, Error> {
        let target = request.url().to_owned();
        match router::route(&target, &self.default_namespace)? {
            Route::Function {
                function,
                rest,
                query,
            } => self.proxy.forward(
                request,
                &Call {
                    function: &function,
                    rest,
                    query,
                },
            ),
            Route::Healthz => Ok(text(200, "OK\n")),
            Route::System { path, .. } => Err(Error::NoRoute {
                path: path.to_owned(),
            }),
            Route::NotFound => Err(Error::NoRoute {
                path: printable_path(&target),
            }),
        }
    }
}

/// Failures the operator should hear about are logged; a client's own mistakes are not.
fn log_failure(request: &Request, e: &Error) {
    let status = e.status();
    if status >= 500 {
        log::warn!(
            "{} {} -> {status}: {e}",
            request.method(),
            printable_path(request.url())
        );
    } else {
        log::debug!(
            "{} {} -> {status}: {e}",
            request.method(),
            printable_path(request.url())
        );
    }
}

/// The path alone (no query, which may carry secrets), cut to a sane length.
fn printable_path(target: &str) -> String {
    let path = target.split('?').next().unwrap_or("");
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
