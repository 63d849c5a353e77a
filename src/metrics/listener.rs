//! `/metrics` on an address of its own, so that it can be reachable by Prometheus and not by
//! function callers (or the other way round).
//!
//! One thread answers it: scrapes are rare and short, and must not compete with function calls
//! for the main pool's workers.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use defrost_http::{Request, ResponseBox};

/// Answers one request to the listener (the scrape, or a 404).
pub type Page = dyn Fn(&Request) -> ResponseBox + Send + Sync;

pub struct MetricsListener {
    server: Arc<defrost_http::Server>,
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsListener {
    pub fn start(addr: SocketAddr, page: Arc<Page>) -> io::Result<MetricsListener> {
        let listener = crate::server::bind(addr)?;
        let addr = listener.local_addr()?;
        let server =
            defrost_http::Server::from_listener(listener, None).map_err(io::Error::other)?;
        let server = Arc::new(server);
        let stopping = Arc::new(AtomicBool::new(false));
        let (serving, stop) = (Arc::clone(&server), Arc::clone(&stopping));
        let thread = std::thread::Builder::new()
            .name("defrost-metrics".into())
            .spawn(move || serve(&serving, page.as_ref(), &stop))?;
        log::info!("serving metrics on http://{addr}/metrics");
        Ok(MetricsListener {
            server,
            addr,
            stopping,
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stop(mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(server: &defrost_http::Server, page: &Page, stopping: &AtomicBool) {
    while !stopping.load(Ordering::SeqCst) {
        let request = match server.recv_timeout(Duration::from_secs(1)) {
            Ok(Some(request)) => request,
            Ok(None) => continue,
            Err(e) => {
                log::debug!("metrics listener: {e}");
                continue;
            }
        };
        let response = page(&request);
        if let Err(e) = request.respond(response) {
            log::debug!("metrics response not delivered: {e}");
        }
    }
}
