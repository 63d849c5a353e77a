//! Asynchronous calls: `/async-function/{name}` is answered 202 once the request is stored
//! durably, and workers run it later through the same path as a synchronous call.
//!
//! ```text
//!  client ──▶ accept: bounds (503 + Retry-After), store.push (group-committed fsync) ──▶ 202
//!                                                   │
//!  workers ◀── board: lanes per function, in order, async_concurrency each, back-offs
//!     │
//!     └─▶ invoke (Call::begin + Proxy::forward: cold start, waiter limits, as sync calls)
//!           429/502/503/504: retried with exponential back-off up to max_attempts
//!           otherwise (or out of attempts): store.done, then the callback, if one was asked
//! ```
//!
//! A call that got its 202 is in the store until it has run: killed at any moment, the next
//! start finds it and runs it. It runs at least once; twice only when the process died between
//! the function's answer and the commit that records it as done.
//!
//! With `kind = "nats"` the calls are kept in a JetStream stream shared by several gateways
//! instead ([`jetstream`]): no board, no order; the run, the verdict and the callbacks are the
//! same.

mod board;
pub mod callback;
pub mod embedded;
pub mod jetstream;
pub mod store;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};

use crate::function::FunctionRef;
use board::{Board, Entry, Job};
use callback::Callbacks;
use store::{Meta, Queued, Store, StoreError};

/// How the queue is kept, bounded and worked.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// The embedded store's file.
    pub path: PathBuf,
    /// Threads running queued calls, over all functions.
    pub workers: usize,
    /// Calls of one function run at once, unless the function says otherwise.
    pub concurrency: usize,
    /// `async_concurrency` per function (`name.namespace`).
    pub function_concurrency: BTreeMap<String, usize>,
    /// Attempts per call, the first included, while the answer is 429, 502, 503 or 504.
    pub max_attempts: u32,
    /// Pause before the first retry; doubled for each further one, up to five minutes.
    pub retry_backoff: Duration,
    /// What the queue holds at most.
    pub bounds: Bounds,
    /// Attempts to deliver each callback.
    pub callback_attempts: u32,
    /// Bound on each phase of a callback post.
    pub callback_timeout: Duration,
    /// Longest function answer kept for the callback; a longer one is cut there.
    pub max_response_bytes: u64,
    /// Kept in NATS JetStream instead of the embedded store, when set.
    pub nats: Option<jetstream::NatsQueue>,
}

/// What the queue holds at most; beyond, calls are refused with 503 and `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Calls held (waiting or running), over all functions.
    pub max_queued: usize,
    /// Calls held for one function.
    pub max_queued_per_function: usize,
    /// Stored bytes (bodies and heads) of the calls held: the store's disk use follows it.
    pub max_queued_bytes: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            path: PathBuf::from("defrost.queue.redb"),
            workers: 32,
            concurrency: 1,
            function_concurrency: BTreeMap::new(),
            max_attempts: 5,
            retry_backoff: Duration::from_secs(1),
            bounds: Bounds {
                max_queued: 100_000,
                max_queued_per_function: 10_000,
                max_queued_bytes: 1 << 30,
            },
            callback_attempts: 3,
            callback_timeout: Duration::from_secs(10),
            max_response_bytes: 8 << 20,
            nats: None,
        }
    }
}

/// Longest pause before a retry.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Why a call was not accepted.
#[derive(Debug)]
pub enum QueueError {
    /// A bound is reached.
    Full { function: FunctionRef, bound: Full },
    /// The store failed to keep the call.
    Store(StoreError),
    /// The queue stopped taking calls (shutting down).
    Stopped,
    /// The gateway runs without a queue.
    Off,
}

/// Which bound a call would break, with its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    Total(usize),
    Function(usize),
    Bytes(u64),
}

impl std::fmt::Display for QueueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueError::Full { function, bound } => match bound {
                Full::Total(n) => write!(f, "the async queue is full ({n} calls)"),
                Full::Function(n) => write!(f, "{function} has {n} calls queued, its limit"),
                Full::Bytes(n) => write!(f, "the async queue holds {n} bytes, its limit"),
            },
            QueueError::Store(e) => e.fmt(f),
            QueueError::Stopped => write!(f, "the async queue is stopping"),
            QueueError::Off => write!(
                f,
                "asynchronous calls are off: no queue is configured ([queue] in the config file, \
                 or queue_path in the environment)"
            ),
        }
    }
}

/// When a client refused for a full queue should try again.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// A function's answer to a queued call, as the callback gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// Runs one queued call through the gateway's request path.
pub type Invoke = dyn Fn(&Queued) -> Answer + Send + Sync;

/// One function's line on `/metrics` and the status page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRow {
    /// `name.namespace`.
    pub function: String,
    pub queued: u64,
    pub running: u64,
    pub retried: u64,
    pub failed: u64,
    pub completed: u64,
    pub callback_failures: u64,
}

/// The queue as a whole, for `/metrics` and the status page.
#[derive(Debug, Clone, Default)]
pub struct QueueStats {
    pub functions: Vec<QueueRow>,
    pub disk_bytes: u64,
    /// Messages in the JetStream stream, from all gateways (as last asked, every few seconds).
    pub stream_messages: Option<u64>,
}

struct Shared {
    store: Box<dyn Store>,
    board: Mutex<Board>,
    wake: Condvar,
    stopping: AtomicBool,
    config: QueueConfig,
    callbacks: Callbacks,
}

/// The queue: accepting, and (once started) working. Kept in this process's store, where
/// calls run in order per function, or in JetStream, shared by every gateway on the stream.
pub enum Queue {
    Local(Local),
    Nats(jetstream::Distributed),
}

impl Queue {
    /// Opens `store` and restores what it holds; nothing runs until [`Queue::start`].
    pub fn open(config: QueueConfig, store: Box<dyn Store>) -> Result<Queue, StoreError> {
        Local::open(config, store).map(Queue::Local)
    }

    /// The queue on the JetStream stream `config.nats` names (see [`jetstream`]).
    pub fn nats(config: QueueConfig, default_namespace: &str) -> Result<Queue, StoreError> {
        jetstream::Distributed::open(config, default_namespace).map(Queue::Nats)
    }

    /// Starts the workers, which run calls with `invoke`.
    pub fn start(&self, invoke: Arc<Invoke>) -> std::io::Result<()> {
        match self {
            Queue::Local(q) => q.start(invoke),
            Queue::Nats(q) => q.start(invoke),
        }
    }

    /// Keeps `call` durably, within the bounds; its `X-Call-Id` once it is.
    pub fn accept(&self, function: &FunctionRef, call: Queued) -> Result<String, QueueError> {
        match self {
            Queue::Local(q) => q.accept(function, call),
            Queue::Nats(q) => q.accept(function, call),
        }
    }

    /// The largest body a queued call may have.
    pub fn max_body_bytes(&self) -> u64 {
        match self {
            Queue::Local(q) => q.max_body_bytes(),
            Queue::Nats(q) => q.max_body_bytes(),
        }
    }

    /// Stops taking calls: workers finish the one they run, new requests are refused.
    pub fn stop_taking(&self) {
        match self {
            Queue::Local(q) => q.stop_taking(),
            Queue::Nats(q) => q.stop_taking(),
        }
    }

    /// Calls running now.
    pub fn running(&self) -> usize {
        match self {
            Queue::Local(q) => q.running(),
            Queue::Nats(q) => q.running(),
        }
    }

    /// Stops the workers that are done and lets go of the store.
    pub fn close(&self) {
        match self {
            Queue::Local(q) => q.close(),
            Queue::Nats(q) => q.close(),
        }
    }

    pub fn stats(&self) -> QueueStats {
        match self {
            Queue::Local(q) => q.stats(),
            Queue::Nats(q) => q.stats(),
        }
    }
}

/// The queue in this process's store.
pub struct Local {
    shared: Arc<Shared>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// What the workers run calls with, once [`Local::start`] gave it. The workers themselves
    /// are started with the first call to run (one left by the last run, or the first
    /// accepted), so a gateway that queues nothing keeps no threads for it.
    invoke: Mutex<Option<Arc<Invoke>>>,
    /// Set once every worker is running: the accept path's check costs one load.
    started: AtomicBool,
}

impl Local {
    /// Opens the store and restores what it holds; nothing runs until [`Local::start`].
    pub fn open(config: QueueConfig, store: Box<dyn Store>) -> Result<Local, StoreError> {
        let mut board = Board::new(config.bounds);
        let pending = store.pending()?;
        let restored = pending.len();
        for p in pending {
            let Ok(function) = FunctionRef::new(&p.function, &p.namespace) else {
                log::warn!("queued call {} names no valid function; dropped", p.id);
                store.done(p.id);
                continue;
            };
            let entry = Entry {
                id: p.id,
                attempts: p.attempts,
                bytes: p.bytes,
                not_before: None,
            };
            board.restore(function.key(), concurrency(&config, &function), entry);
        }
        if restored > 0 {
            log::info!("async queue: {restored} calls left from the last run");
        }
        let callbacks = Callbacks::new(
            config.callback_attempts,
            config.callback_timeout,
            config.retry_backoff,
        );
        Ok(Local {
            shared: Arc::new(Shared {
                store,
                board: Mutex::new(board),
                wake: Condvar::new(),
                stopping: AtomicBool::new(false),
                config,
                callbacks,
            }),
            workers: Mutex::new(Vec::new()),
            invoke: Mutex::new(None),
            started: AtomicBool::new(false),
        })
    }

    /// Runs calls with `invoke` from now on: at once if there are some (left by the last run,
    /// or accepted before), else from the first one accepted.
    pub fn start(&self, invoke: Arc<Invoke>) -> std::io::Result<()> {
        *self.invoke.lock() = Some(invoke);
        let waiting = self.shared.board.lock().rows().iter().any(|r| r.queued > 0);
        if waiting {
            self.start_workers()?;
        }
        Ok(())
    }

    /// Starts the workers not yet running, once the queue is started.
    fn start_workers(&self) -> std::io::Result<()> {
        let mut workers = self.workers.lock();
        let Some(invoke) = self.invoke.lock().clone() else {
            return Ok(());
        };
        // a spawn that failed before leaves the workers it did start; only the rest start now
        for n in workers.len()..self.shared.config.workers.max(1) {
            let shared = Arc::clone(&self.shared);
            let invoke = Arc::clone(&invoke);
            let worker = std::thread::Builder::new()
                .name(format!("async-{n}"))
                .spawn(move || shared.work(invoke.as_ref()))?;
            workers.push(worker);
        }
        self.started.store(true, Ordering::Release);
        Ok(())
    }

    /// Stores `call` durably, within the bounds; its `X-Call-Id` once it is.
    pub fn accept(&self, function: &FunctionRef, call: Queued) -> Result<String, QueueError> {
        let shared = &self.shared;
        if shared.stopping.load(Ordering::SeqCst) {
            return Err(QueueError::Stopped);
        }
        let bytes = call.bytes();
        let key = function.key();
        shared
            .board
            .lock()
            .reserve(key, concurrency(&shared.config, function), bytes)
            .map_err(|bound| QueueError::Full {
                function: function.clone(),
                bound,
            })?;
        let call_id = call.meta.call_id.clone();
        let stored = shared.store.push(call);
        shared
            .board
            .lock()
            .settle(key, bytes, stored.as_ref().ok().copied());
        let _ = stored.map_err(QueueError::Store)?;
        if !self.started.load(Ordering::Acquire) {
            // the call is stored: it runs once a worker can be started, at the latest at the
            // next start of the gateway
            if let Err(e) = self.start_workers() {
                log::error!("async queue: cannot start its workers: {e}");
            }
        }
        shared.wake.notify_one();
        Ok(call_id)
    }

    /// The largest body a queued call may have.
    pub fn max_body_bytes(&self) -> u64 {
        self.shared.config.bounds.max_queued_bytes
    }

    /// Stops taking calls: workers finish the one they run, new requests are refused.
    pub fn stop_taking(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.wake.notify_all();
    }

    /// Calls running now.
    pub fn running(&self) -> usize {
        self.shared.board.lock().running()
    }

    /// Joins the workers that are done and closes the store; calls still running after the
    /// grace period are left to their threads, and stay stored for the next start.
    pub fn close(&self) {
        self.stop_taking();
        let workers = std::mem::take(&mut *self.workers.lock());
        let left = workers.iter().filter(|w| !w.is_finished()).count();
        if left > 0 {
            log::warn!(
                "async queue: {left} workers still busy (a call, or its callback); calls not \
                 done run again at the next start"
            );
        }
        for worker in workers.into_iter().filter(|w| w.is_finished()) {
            let _ = worker.join();
        }
        self.shared.store.close();
    }

    pub fn stats(&self) -> QueueStats {
        QueueStats {
            functions: self.shared.board.lock().rows(),
            disk_bytes: self.shared.store.disk_bytes(),
            stream_messages: None,
        }
    }
}

/// The function's `async_concurrency`.
fn concurrency(config: &QueueConfig, function: &FunctionRef) -> usize {
    config
        .function_concurrency
        .get(function.key())
        .copied()
        .unwrap_or(config.concurrency)
        .max(1)
}

/// Statuses that say "not now" rather than "no".
fn retryable(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

/// `base × 2^(attempt-1)`, capped.
fn backoff(base: Duration, attempt: u32) -> Duration {
    base.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
        .min(MAX_BACKOFF)
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Shared {
    fn work(&self, invoke: &Invoke) {
        while let Some(job) = self.next_job() {
            self.run(job, invoke);
        }
    }

    /// Waits for a call that is due; `None` once stopping.
    fn next_job(&self) -> Option<Job> {
        let mut board = self.board.lock();
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                return None;
            }
            let now = Instant::now();
            if let Some(job) = board.take(now) {
                return Some(job);
            }
            let until = board.next_due().map_or(now + Duration::from_secs(1), |t| {
                t.min(now + Duration::from_secs(1))
            });
            self.wake.wait_until(&mut board, until);
        }
    }

    fn run(&self, mut job: Job, invoke: &Invoke) {
        let id = job.entry.id;
        let mut call = match self.store.load(id) {
            Ok(Some(call)) => call,
            Ok(None) => {
                self.board.lock().finish(&job, false);
                return;
            }
            Err(e) => {
                log::warn!("async call {id} cannot be loaded: {e}; dropped");
                self.store.done(id);
                self.board.lock().finish(&job, true);
                return;
            }
        };
        call.meta.attempts += 1;
        let (answer, took) = run_guarded(invoke, &call);
        let meta = &call.meta;
        let stopping = self.stopping.load(Ordering::SeqCst);
        let failed = match verdict(&self.config, meta, answer.status, stopping) {
            Verdict::Leave => {
                self.store.retry_later(id, meta);
                self.board.lock().finish(&job, false);
                return;
            }
            Verdict::Retry(pause) => {
                self.store.retry_later(id, meta);
                job.entry.attempts = meta.attempts;
                job.entry.not_before = Some(Instant::now() + pause);
                self.board.lock().retry(job);
                self.wake.notify_all();
                return;
            }
            Verdict::Done { failed } => failed,
        };
        self.store.done(id);
        self.board.lock().finish(&job, failed);
        self.wake.notify_all();
        if !self.callbacks.answer(meta, &answer, took) {
            self.board.lock().callback_failed(&job.lane);
        }
    }
}

/// What becomes of a call after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Cut short by the shutdown, most likely: left for the next start (or another gateway).
    Leave,
    /// Not now: again after the pause.
    Retry(Duration),
    /// Over: answered for good, or out of attempts.
    Done { failed: bool },
}

/// The verdict on attempt `meta.attempts` answered `status`, logged as the queue-worker does.
fn verdict(config: &QueueConfig, meta: &Meta, status: u16, stopping: bool) -> Verdict {
    let attempts = meta.attempts;
    let function = format!("{}.{}", meta.function, meta.namespace);
    if retryable(status) {
        if stopping {
            return Verdict::Leave;
        }
        if attempts < config.max_attempts {
            let pause = backoff(config.retry_backoff, attempts);
            log::info!(
                "async call {} of {function} answered {status} (attempt {attempts}); retrying in {:.1}s",
                meta.call_id,
                pause.as_secs_f64()
            );
            return Verdict::Retry(pause);
        }
    }
    let failed = status >= 400;
    if failed {
        log::warn!(
            "async call {} of {function} failed with {status} after {attempts} attempt{}",
            meta.call_id,
            if attempts == 1 { "" } else { "s" }
        );
    }
    Verdict::Done { failed }
}

/// Runs one attempt; a panic in the request path fails the call alone, not the worker (and,
/// in the embedded queue, the lane's slot) with it.
fn run_guarded(invoke: &Invoke, call: &Queued) -> (Answer, Duration) {
    let started = Instant::now();
    let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| invoke(call)))
        .unwrap_or_else(|_| Answer {
            status: 500,
            content_type: Some("text/plain; charset=utf-8".into()),
            body: b"the gateway failed while running this call\n".to_vec(),
        });
    (answer, started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::TempDir;
    use store::sample;

    #[test]
    fn a_call_that_panics_fails_alone_and_its_lane_goes_on() {
        let scratch = TempDir::new("queue-panic");
        let dir = scratch.path();
        let config = QueueConfig {
            path: dir.join("q.redb"),
            workers: 1,
            ..QueueConfig::default()
        };
        let store = embedded::Embedded::open(&config.path).unwrap();
        let queue = Local::open(config, Box::new(store)).unwrap();
        let echo = FunctionRef::new("echo", "default").unwrap();
        queue.accept(&echo, sample("/panic", 1)).unwrap();
        queue.accept(&echo, sample("/ok", 1)).unwrap();
        queue
            .start(Arc::new(|call: &Queued| {
                assert_ne!(call.meta.rest, "/panic", "a bug in the request path");
                Answer {
                    status: 200,
                    content_type: None,
                    body: Vec::new(),
                }
            }))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let settled = || {
            let row = queue.stats().functions.pop();
            row.is_some_and(|r| (r.completed, r.failed, r.queued) == (1, 1, 0))
        };
        while !settled() {
            assert!(Instant::now() < deadline, "{:?}", queue.stats());
            std::thread::sleep(Duration::from_millis(10));
        }
        queue.close();
    }

    #[test]
    fn only_not_now_statuses_are_retried_with_growing_pauses() {
        assert!([429, 502, 503, 504].into_iter().all(retryable));
        assert!(![200, 202, 400, 404, 500, 501].into_iter().any(retryable));
        let s = Duration::from_secs;
        assert_eq!(backoff(s(1), 1), s(1));
        assert_eq!(backoff(s(1), 3), s(4));
        assert_eq!(backoff(s(1), u32::MAX), MAX_BACKOFF);
    }
}
