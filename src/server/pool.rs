//! The elastic worker pool.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use parking_lot::Mutex;
use tiny_http::{Request, Server};

/// How many workers, and how long an idle extra one lives.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Workers kept alive while idle: one per core by default.
    pub core: usize,
    /// Workers at most, however many requests block.
    pub max: usize,
    /// An idle worker beyond `core` exits after this long.
    pub idle_timeout: Duration,
    /// Stack size of each worker: request handling is shallow, and hundreds may be waiting.
    pub stack_size: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        let cores = thread::available_parallelism().map_or(2, |n| n.get());
        PoolConfig {
            core: cores,
            max: 4096,
            idle_timeout: Duration::from_secs(10),
            stack_size: 256 * 1024,
        }
    }
}

type Handler = dyn Fn(Request) + Send + Sync;

/// Workers pulling requests off one tiny_http server.
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    server: Arc<Server>,
    handler: Arc<Handler>,
    config: PoolConfig,
    live: AtomicUsize,
    idle: AtomicUsize,
    stopping: AtomicBool,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

impl Pool {
    /// Starts `config.core` workers on `server`.
    pub fn start(server: Arc<Server>, handler: Arc<Handler>, config: PoolConfig) -> Pool {
        let shared = Arc::new(Shared {
            server,
            handler,
            config,
            live: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            handles: Mutex::new(Vec::new()),
        });
        for _ in 0..shared.config.core.max(1) {
            spawn_worker(&shared);
        }
        Pool { shared }
    }

    /// Workers alive now.
    pub fn workers(&self) -> usize {
        self.shared.live.load(Ordering::Relaxed)
    }

    /// Workers busy with a request now.
    pub fn busy(&self) -> usize {
        self.workers()
            .saturating_sub(self.shared.idle.load(Ordering::Relaxed))
    }

    /// Closes the listening socket; requests on connections already open are still taken.
    pub fn stop_accepting(&self) {
        self.shared.server.stop_accepting();
    }

    /// Stops taking new requests and waits for the workers to finish the ones they hold.
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        for _ in 0..self.workers() {
            self.shared.server.unblock();
        }
        let handles: Vec<_> = std::mem::take(&mut *self.shared.handles.lock());
        for h in handles {
            let _ = h.join();
        }
    }
}

/// Starts a worker if the bound allows; counted live and idle from birth so that concurrent
/// callers see it at once and do not overshoot.
fn spawn_worker(shared: &Arc<Shared>) {
    let live = shared.live.fetch_add(1, Ordering::SeqCst);
    if live >= shared.config.max {
        shared.live.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    shared.idle.fetch_add(1, Ordering::SeqCst);
    let worker = Arc::clone(shared);
    let spawned = thread::Builder::new()
        .name("defrost-worker".into())
        .stack_size(shared.config.stack_size)
        .spawn(move || work(&worker));
    match spawned {
        Ok(handle) => {
            let mut handles = shared.handles.lock();
            handles.retain(|h| !h.is_finished());
            handles.push(handle);
        }
        Err(e) => {
            shared.live.fetch_sub(1, Ordering::SeqCst);
            shared.idle.fetch_sub(1, Ordering::SeqCst);
            log::error!("cannot start a worker thread: {e}");
        }
    }
}

fn work(shared: &Arc<Shared>) {
    while !shared.stopping.load(Ordering::SeqCst) {
        let request = match shared.server.recv_timeout(shared.config.idle_timeout) {
            Ok(Some(request)) => request,
            Ok(None) if retire_if_extra(shared) => return,
            Ok(None) => continue,
            Err(e) => {
                log::debug!("worker: {e}");
                continue;
            }
        };
        // The last idle worker just got busy: make sure the next request finds someone.
        if shared.idle.fetch_sub(1, Ordering::SeqCst) == 1 {
            spawn_worker(shared);
        }
        let handled = panic::catch_unwind(AssertUnwindSafe(|| (shared.handler)(request)));
        if handled.is_err() {
            log::error!("a request handler panicked; the worker carries on");
        }
        shared.idle.fetch_add(1, Ordering::SeqCst);
    }
    shared.idle.fetch_sub(1, Ordering::SeqCst);
    shared.live.fetch_sub(1, Ordering::SeqCst);
}

/// An idle worker beyond the core leaves; decided atomically so that the core is never undercut.
fn retire_if_extra(shared: &Shared) -> bool {
    let core = shared.config.core.max(1);
    let retired = shared
        .live
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |live| {
            (live > core).then(|| live - 1)
        })
        .is_ok();
    if retired {
        shared.idle.fetch_sub(1, Ordering::SeqCst);
    }
    retired
}
