//! The worker pool: a fixed core of workers for traffic that keeps moving, and more for
//! requests that block.
//!
//! Why a fixed core and not a worker per request in flight: under load every extra runnable
//! thread costs context switches and cache misses, and most of a fast request's time is spent
//! waiting for the replica's answer, not computing. With `wrk -c64` against a warm function, a
//! pool that grew to one worker per busy request gave about 0.56× nginx's throughput on two
//! cores; eight fixed workers about 0.85×, with a lower p99.
//!
//! Why more than the core: a fixed pool starves as soon as its workers block, and a request
//! blocks its worker for a whole cold start or for the whole answer of a slow function. So a
//! monitor thread ticks while anything is busy, counts a worker that has been on one request
//! for longer than `stall_after` (or that said it is [`blocking`]) as blocked, and starts
//! workers until `core` of them are not blocked, and enough for the requests queued meanwhile.
//! Blocked workers cost memory, not CPU, and the monitor sleeps while only workers that said
//! they block are busy (an upgraded connection may hold one for hours); once they are free
//! again, the surplus above the core leaves.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use defrost_http::{Request, Server};
use parking_lot::{Condvar, Mutex};

/// How often the monitor looks at the workers while any of them is busy.
const TICK: Duration = Duration::from_millis(1);
/// Ticks with nothing to watch (no busy worker but those that said they block, nothing queued,
/// the core complete) before the monitor sleeps until woken.
const QUIET_TICKS: u32 = 200;
/// Ticks a surplus of free workers must last before it is retired.
const SURPLUS_TICKS: u32 = 1000;
/// How long the pool, once its workers have stopped, still answers requests that come in.
const STRAGGLER_WINDOW: Duration = Duration::from_millis(100);
/// A worker's clock while it waits in a way known to be long (see [`blocking`]).
const BLOCKED: u64 = u64::MAX;

thread_local! {
    /// The clock of the pool worker running on this thread, if it is one.
    static CLOCK: std::cell::RefCell<Option<Arc<AtomicU64>>> =
        const { std::cell::RefCell::new(None) };
}

/// Tells the pool that the request on this thread is about to wait for long (for a cold
/// function's replica): the monitor starts a worker in its place at its next tick rather than
/// after `stall_after`. Does nothing on a thread that is not a pool worker.
pub fn blocking() {
    CLOCK.with(|clock| {
        if let Some(clock) = &*clock.borrow() {
            clock.store(BLOCKED, Ordering::Relaxed);
        }
    });
}

/// How many workers, and when there are more.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Workers that are not blocked, kept at all times: four per core by default, since a
    /// warm request spends most of its time waiting for its replica.
    pub core: usize,
    /// Workers at most, however many requests block.
    pub max: usize,
    /// An idle worker beyond `core` exits after this long.
    pub idle_timeout: Duration,
    /// A worker busy with one request for longer than this counts as blocked, and another
    /// worker is started in its place.
    pub stall_after: Duration,
    /// Stack size of each worker: request handling is shallow, and hundreds may be waiting.
    pub stack_size: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        let cores = thread::available_parallelism().map_or(2, |n| n.get());
        PoolConfig {
            core: 4 * cores,
            max: 4096,
            idle_timeout: Duration::from_secs(10),
            stall_after: Duration::from_millis(5),
            stack_size: 256 * 1024,
        }
    }
}

type OnRequest = dyn Fn(Request) + Send + Sync;

/// Workers pulling requests off one tiny_http server.
pub struct Pool {
    shared: Arc<Shared>,
    monitor: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    server: Arc<Server>,
    handler: Arc<OnRequest>,
    config: PoolConfig,
    live: AtomicUsize,
    idle: AtomicUsize,
    stopping: AtomicBool,
    handles: Mutex<Vec<JoinHandle<()>>>,
    /// One clock per live worker: 0 while idle, else 1 + the tick at which it took its request.
    clocks: Mutex<Vec<Arc<AtomicU64>>>,
    /// Advanced by the monitor on each tick.
    tick: AtomicU64,
    /// Free workers that should leave once done with their request.
    retire: AtomicUsize,
    alarm: Alarm,
}

/// Lets a worker wake the monitor when it sleeps, without a lock on the way in the usual case.
#[derive(Default)]
struct Alarm {
    asleep: AtomicBool,
    lock: Mutex<()>,
    bell: Condvar,
}

impl Alarm {
    fn ring(&self) {
        if self.asleep.load(Ordering::SeqCst) {
            let _guard = self.lock.lock();
            self.bell.notify_one();
        }
    }

    /// Sleeps until rung, unless `wanted` already holds once the alarm is set.
    fn sleep_unless(&self, wanted: impl Fn() -> bool) {
        let mut guard = self.lock.lock();
        self.asleep.store(true, Ordering::SeqCst);
        if !wanted() {
            // A bound, in case something is queued without a worker ever taking a request.
            self.bell.wait_for(&mut guard, Duration::from_millis(100));
        }
        self.asleep.store(false, Ordering::SeqCst);
    }
}

impl Pool {
    /// Starts `config.core` workers on `server`, and the monitor that adds more.
    pub fn start(server: Arc<Server>, handler: Arc<OnRequest>, config: PoolConfig) -> Pool {
        let shared = Arc::new(Shared {
            server,
            handler,
            config,
            live: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            handles: Mutex::new(Vec::new()),
            clocks: Mutex::new(Vec::new()),
            tick: AtomicU64::new(0),
            retire: AtomicUsize::new(0),
            alarm: Alarm::default(),
        });
        for _ in 0..shared.core() {
            spawn_worker(&shared);
        }
        let watched = Arc::clone(&shared);
        let monitor = thread::Builder::new()
            .name("defrost-pool".into())
            .stack_size(64 * 1024)
            .spawn(move || monitor(&watched))
            .map_err(|e| log::error!("cannot start the pool monitor; the pool will not grow: {e}"))
            .ok();
        Pool {
            shared,
            monitor: Mutex::new(monitor),
        }
    }

    /// Workers alive now.
    pub fn workers(&self) -> usize {
        self.shared.live.load(Ordering::Relaxed)
    }

    /// Closes the listening socket and drains the connections: requests on connections already
    /// open are still taken, every response carries `Connection: close` and closes its
    /// connection, and connections idle between requests are closed at once.
    pub fn stop_accepting(&self) {
        self.shared.server.stop_accepting();
    }

    /// Client connections receiving a request, or closing (see
    /// `defrost_http::Server::connections_in_use`).
    pub fn connections_in_use(&self) -> usize {
        self.shared.server.connections_in_use()
    }

    /// Stops taking new requests and waits for the workers to finish the ones they hold; then,
    /// for a moment, still answers what comes in meanwhile.
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.alarm.ring();
        if let Some(monitor) = self.monitor.lock().take() {
            let _ = monitor.join();
        }
        for _ in 0..self.workers() {
            self.shared.server.unblock();
        }
        let handles: Vec<_> = std::mem::take(&mut *self.shared.handles.lock());
        for h in handles {
            let _ = h.join();
        }
        self.answer_stragglers();
    }

    /// Answers, on this thread, requests that came in while the workers were stopping: a
    /// request that was received is answered (a draining handler refuses it with a 503), not
    /// dropped with the process.
    fn answer_stragglers(&self) {
        let deadline = Instant::now() + STRAGGLER_WINDOW;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            if let Ok(Some(request)) = self.shared.server.recv_timeout(left) {
                self.shared.handle(request);
            }
        }
    }
}

impl Shared {
    /// Runs the handler; a panic in it is caught, so that the calling thread carries on.
    fn handle(&self, request: Request) {
        let handled = panic::catch_unwind(AssertUnwindSafe(|| (self.handler)(request)));
        if handled.is_err() {
            log::error!("a request handler panicked; the worker carries on");
        }
    }

    fn core(&self) -> usize {
        self.config.core.max(1)
    }

    fn busy(&self) -> usize {
        let live = self.live.load(Ordering::SeqCst);
        live.saturating_sub(self.idle.load(Ordering::SeqCst))
    }

    fn stall_ticks(&self) -> u64 {
        let ticks = self.config.stall_after.as_micros() / TICK.as_micros().max(1);
        u64::try_from(ticks).unwrap_or(u64::MAX).max(1)
    }

    /// Whether the monitor must tick: a worker is busy and may stall, requests wait, or the
    /// core is short. Workers that said they block need no watching: a relay or a follow may
    /// hold one for hours, and the monitor must not tick a thousand times a second meanwhile.
    fn needs_watching(&self) -> bool {
        let said_blocking = self
            .clocks
            .lock()
            .iter()
            .filter(|c| c.load(Ordering::Relaxed) == BLOCKED)
            .count();
        let live = self.live.load(Ordering::SeqCst);
        self.busy() > said_blocking
            || self.server.pending_requests() > 0
            || live.saturating_sub(self.blocked()) < self.core()
    }

    /// Workers on the same request for at least `stall_after`.
    fn blocked(&self) -> usize {
        let now = self.tick.load(Ordering::Relaxed) + 1;
        let stall = self.stall_ticks();
        let clocks = self.clocks.lock();
        clocks
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .filter(|&since| since == BLOCKED || (since != 0 && now.saturating_sub(since) >= stall))
            .count()
    }

    /// Takes one retirement ticket, if the monitor handed any out.
    fn take_retirement(&self) -> bool {
        self.retire
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// Starts a worker if the bound allows; counted live and idle from birth so that concurrent
/// callers see it at once and do not overshoot.
fn spawn_worker(shared: &Arc<Shared>) -> bool {
    let live = shared.live.fetch_add(1, Ordering::SeqCst);
    if live >= shared.config.max {
        shared.live.fetch_sub(1, Ordering::SeqCst);
        return false;
    }
    shared.idle.fetch_add(1, Ordering::SeqCst);
    let clock = Arc::new(AtomicU64::new(0));
    shared.clocks.lock().push(Arc::clone(&clock));
    let worker = Arc::clone(shared);
    let worker_clock = Arc::clone(&clock);
    let spawned = thread::Builder::new()
        .name("defrost-worker".into())
        .stack_size(shared.config.stack_size)
        .spawn(move || work(&worker, &worker_clock));
    match spawned {
        Ok(handle) => {
            let mut handles = shared.handles.lock();
            handles.retain(|h| !h.is_finished());
            handles.push(handle);
            true
        }
        Err(e) => {
            leave(shared, &clock);
            log::error!("cannot start a worker thread: {e}");
            false
        }
    }
}

/// Takes the worker out of the counts and of the monitor's sight.
fn leave(shared: &Shared, clock: &Arc<AtomicU64>) {
    shared.live.fetch_sub(1, Ordering::SeqCst);
    forget(shared, clock);
}

/// Takes the worker out of the idle count and of the monitor's sight; `live` is the caller's.
fn forget(shared: &Shared, clock: &Arc<AtomicU64>) {
    shared.clocks.lock().retain(|c| !Arc::ptr_eq(c, clock));
    shared.idle.fetch_sub(1, Ordering::SeqCst);
}

fn work(shared: &Arc<Shared>, clock: &Arc<AtomicU64>) {
    CLOCK.with(|mine| *mine.borrow_mut() = Some(Arc::clone(clock)));
    while !shared.stopping.load(Ordering::SeqCst) {
        let request = match shared.server.recv_timeout(shared.config.idle_timeout) {
            Ok(Some(request)) => request,
            Ok(None) if retire_if_extra(shared) => return forget(shared, clock),
            Ok(None) => continue,
            Err(e) => {
                log::debug!("worker: {e}");
                continue;
            }
        };
        shared.idle.fetch_sub(1, Ordering::SeqCst);
        clock.store(shared.tick.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        shared.alarm.ring();
        shared.handle(request);
        clock.store(0, Ordering::Relaxed);
        shared.idle.fetch_add(1, Ordering::SeqCst);
        if shared.take_retirement() {
            return leave(shared, clock);
        }
    }
    leave(shared, clock);
}

/// An idle worker beyond the core leaves, taking itself off `live`; decided atomically so that
/// the core is never undercut.
fn retire_if_extra(shared: &Shared) -> bool {
    let core = shared.core();
    shared
        .live
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |live| {
            (live > core).then(|| live - 1)
        })
        .is_ok()
}

/// Keeps `core` workers free of blocked requests, and retires a lasting surplus.
fn monitor(shared: &Arc<Shared>) {
    let mut quiet = 0;
    let mut surplus_for = 0;
    while !shared.stopping.load(Ordering::SeqCst) {
        if quiet >= QUIET_TICKS {
            shared
                .alarm
                .sleep_unless(|| shared.needs_watching() || shared.stopping.load(Ordering::SeqCst));
            // Still quiet unless the tick below sees otherwise: a sleep that ran out with
            // nothing to do goes straight back to sleep rather than ticking a while first.
        }
        thread::sleep(TICK);
        shared.tick.fetch_add(1, Ordering::Relaxed);
        let pending = shared.server.pending_requests();
        let live = shared.live.load(Ordering::SeqCst);
        let free = live.saturating_sub(shared.blocked());
        let core = shared.core();
        if free < core {
            surplus_for = 0;
            // Enough for the core, or for what queued up while it was short, up to a core's
            // worth per tick: requests queued behind a CPU-bound burst need no more threads.
            let wanted = (core - free).max(pending.min(core));
            for _ in 0..wanted {
                if !spawn_worker(shared) {
                    break;
                }
            }
        } else if free > core + core / 2 {
            surplus_for += 1;
            if surplus_for >= SURPLUS_TICKS {
                shared.retire.store(free - core, Ordering::SeqCst);
                surplus_for = 0;
            }
        } else {
            surplus_for = 0;
            shared.retire.store(0, Ordering::SeqCst);
        }
        quiet = if shared.needs_watching() {
            0
        } else {
            quiet + 1
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Instant;

    fn pool_with(config: PoolConfig, handler: Arc<OnRequest>) -> (Pool, std::net::SocketAddr) {
        let server = Server::http("127.0.0.1:0").expect("bind on loopback");
        let addr = server
            .server_addr()
            .to_ip()
            .expect("a TCP server has an IP address");
        (Pool::start(Arc::new(server), handler, config), addr)
    }

    fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("write");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    }

    fn small(core: usize) -> PoolConfig {
        PoolConfig {
            core,
            max: 64,
            idle_timeout: Duration::from_millis(200),
            stall_after: Duration::from_millis(5),
            stack_size: 128 * 1024,
        }
    }

    /// With every core worker blocked, a request for something else is still answered,
    /// by a worker the monitor added.
    #[test]
    fn blocked_workers_do_not_starve_others() {
        let handler: Arc<OnRequest> = Arc::new(|request: Request| {
            if request.url() == "/block" {
                thread::sleep(Duration::from_secs(2));
            }
            let _ = request.respond(defrost_http::Response::from_string("done"));
        });
        let (pool, addr) = pool_with(small(2), handler);
        let blockers: Vec<_> = (0..4)
            .map(|_| thread::spawn(move || get(addr, "/block")))
            .collect();
        thread::sleep(Duration::from_millis(100));
        let started = Instant::now();
        let answer = get(addr, "/fast");
        assert!(answer.ends_with("done"), "{answer}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the fast request waited for the blocked ones: {:?}",
            started.elapsed()
        );
        assert!(pool.workers() >= 5, "workers: {}", pool.workers());
        for b in blockers {
            assert!(b.join().expect("blocker").ends_with("done"));
        }
        pool.stop();
    }

    /// Fast requests do not grow the pool beyond its core, however many arrive together.
    #[test]
    fn fast_requests_keep_the_core() {
        let handler: Arc<OnRequest> = Arc::new(|request: Request| {
            let _ = request.respond(defrost_http::Response::from_string("ok"));
        });
        // A stall this long cannot come from these handlers, even on a loaded machine.
        let config = PoolConfig {
            stall_after: Duration::from_millis(500),
            ..small(2)
        };
        let (pool, addr) = pool_with(config, handler);
        let clients: Vec<_> = (0..32)
            .map(|_| thread::spawn(move || (0..20).all(|_| get(addr, "/").ends_with("ok"))))
            .collect();
        for c in clients {
            assert!(c.join().expect("client"));
        }
        assert_eq!(pool.workers(), 2);
        pool.stop();
    }
}
