//! The queue on a NATS JetStream stream, shared by every gateway connected to it, in the
//! message format of OpenFaaS (its gateway and queue-worker read and write the same stream).
//!
//! ```text
//!  client ──▶ accept: publish QueueRequest, Nats-Msg-Id = call id ──▶ PubAck ──▶ 202
//!                       (not connected, or the stream full: 503 + Retry-After)
//!
//!  stream ◀── one durable pull consumer, shared by every gateway
//!     │
//!     └─▶ fetcher: pulls as many calls as this gateway has idle workers, so a fetched call
//!           runs at once; reconnects with back-off when the connection is lost
//!           (and a keeper: +WPI for calls running past a third of ack_wait)
//!            └─▶ workers: invoke as the embedded queue does, then
//!                 done: +ACK (then the callback) · not now: -NAK with the back-off delay
//!                 (the delivery count is the attempt) · unreadable message: +TERM
//! ```
//!
//! A call runs at least once: a gateway that dies with calls fetched leaves them to be
//! delivered again after `ack_wait`, to whichever gateway pulls next. Calls of one function
//! are not run in order, and `async_concurrency` does not apply: the consumer hands calls to
//! gateways as they ask, and holding a call back to keep an order would hold it unacked.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, Sender};
use parking_lot::{Condvar, Mutex};

use super::callback::Callbacks;
use super::store::{Meta, Queued, StoreError};
use super::{
    run_guarded, verdict, Full, Invoke, QueueConfig, QueueError, QueueRow, QueueStats, Verdict,
};
use crate::function::FunctionRef;
use crate::nats::openfaas::{QueueRequest, CONSUMER, QUEUE};
use crate::nats::{
    Ack, Connection, ConsumerConfig, Error, JetStream, JsMessage, Options, StreamConfig,
};

/// Where the queue is, and how long a fetched call may go unacknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsQueue {
    /// `nats://[user:pass@]host:port`.
    pub url: String,
    /// The stream, created (a work queue on file) if it does not exist.
    pub stream: String,
    /// The subject calls are published to; the stream captures it.
    pub subject: String,
    /// The durable pull consumer every gateway shares.
    pub consumer: String,
    /// A fetched call not acknowledged for this long is delivered again (to any gateway).
    pub ack_wait: Duration,
}

impl NatsQueue {
    /// OpenFaaS's names, on the server at `url`.
    pub fn openfaas(url: String) -> NatsQueue {
        NatsQueue {
            url,
            stream: QUEUE.into(),
            subject: QUEUE.into(),
            consumer: CONSUMER.into(),
            ack_wait: Duration::from_secs(60),
        }
    }
}

/// Longest wait for one JetStream answer (a publish's ack, an ack's confirmation).
const TIMEOUT: Duration = Duration::from_secs(5);
/// How long one pull waits for calls before the fetcher looks around again.
const PULL: Duration = Duration::from_secs(1);
/// Longest pause between two attempts to connect.
const MAX_RECONNECT: Duration = Duration::from_secs(5);
/// How often the stream's depth is asked for.
const DEPTH_EVERY: Duration = Duration::from_secs(2);
/// What a message's JSON and headers may take beyond the body: the body is read up to the
/// server's `max_payload`, less this, in base64.
const HEADROOM: usize = 64 << 10;

/// The JetStream queue (see the module docs).
pub struct Distributed {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

struct Shared {
    config: QueueConfig,
    nats: NatsQueue,
    default_namespace: String,
    /// The live connection, if there is one.
    link: Mutex<Option<Arc<JetStream>>>,
    /// The server's `max_payload`, as of the last connection.
    max_payload: AtomicUsize,
    stopping: AtomicBool,
    /// Calls fetched and not settled, by stream sequence, with when the server last heard of
    /// each; `freed` is told when one is settled.
    running: Mutex<HashMap<u64, Running>>,
    freed: Condvar,
    rows: Mutex<BTreeMap<String, QueueRow>>,
    stream_messages: Mutex<Option<u64>>,
    callbacks: Callbacks,
}

struct Running {
    /// The message without its payload: what acks need.
    message: JsMessage,
    /// `name.namespace`, when the message is a call.
    function: Option<String>,
    touched: Instant,
}

/// A fetched message, read.
struct Fetched {
    /// Without its payload.
    message: JsMessage,
    call: Result<Queued, String>,
}

impl Distributed {
    /// Connects once (a server that is down is tried again by the fetcher); a URL that cannot
    /// be used is an error now.
    pub fn open(config: QueueConfig, default_namespace: &str) -> Result<Distributed, StoreError> {
        let Some(nats) = config.nats.clone() else {
            return Err(StoreError("no NATS server configured".into()));
        };
        let callbacks = Callbacks::new(
            config.callback_attempts,
            config.callback_timeout,
            config.retry_backoff,
        );
        let shared = Arc::new(Shared {
            config,
            nats,
            default_namespace: default_namespace.to_owned(),
            link: Mutex::new(None),
            max_payload: AtomicUsize::new(1 << 20),
            stopping: AtomicBool::new(false),
            running: Mutex::new(HashMap::new()),
            freed: Condvar::new(),
            rows: Mutex::new(BTreeMap::new()),
            stream_messages: Mutex::new(None),
            callbacks,
        });
        match shared.connect() {
            Ok(_) => {}
            Err(e @ Error::Url(_)) => return Err(StoreError(e.to_string())),
            Err(e) => log::warn!("async queue: {e}; trying again in the background"),
        }
        Ok(Distributed {
            shared,
            threads: Mutex::new(Vec::new()),
        })
    }

    /// Starts the fetcher and the workers.
    pub fn start(&self, invoke: Arc<Invoke>) -> std::io::Result<()> {
        let (tx, rx) = channel::unbounded::<Fetched>();
        let mut threads = self.threads.lock();
        for n in 0..self.shared.config.workers.max(1) {
            let shared = Arc::clone(&self.shared);
            let invoke = Arc::clone(&invoke);
            let rx: Receiver<Fetched> = rx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("async-{n}"))
                    .spawn(move || {
                        for fetched in rx {
                            shared.run(fetched, invoke.as_ref());
                        }
                    })?,
            );
        }
        let shared = Arc::clone(&self.shared);
        threads.push(
            std::thread::Builder::new()
                .name("async-keep".into())
                .spawn(move || shared.keep_alive())?,
        );
        let shared = Arc::clone(&self.shared);
        threads.push(
            std::thread::Builder::new()
                .name("async-fetch".into())
                .spawn(move || shared.fetch_loop(&tx))?,
        );
        Ok(())
    }

    /// Publishes `call`; its id once the stream has stored it.
    pub fn accept(&self, function: &FunctionRef, call: Queued) -> Result<String, QueueError> {
        let shared = &self.shared;
        if shared.stopping.load(Ordering::SeqCst) {
            return Err(QueueError::Stopped);
        }
        let Some(js) = shared.link() else {
            return Err(QueueError::Store(StoreError(format!(
                "not connected to the NATS server at {}",
                crate::redact::url(&shared.nats.url)
            ))));
        };
        let call_id = call.meta.call_id.clone();
        let payload = to_request(&call.meta, call.body).to_json();
        let publish = || js.publish(&shared.nats.subject, Some(&call_id), &payload);
        // A publish that timed out may have been stored: the same id again is stored once.
        let acked = match publish() {
            Err(Error::Timeout { .. }) => publish(),
            other => other,
        };
        match acked {
            Ok(_) => Ok(call_id),
            Err(Error::Api { description, .. }) if description.contains("maximum messages") => {
                Err(QueueError::Full {
                    function: function.clone(),
                    bound: Full::Total(shared.config.bounds.max_queued),
                })
            }
            Err(Error::Api { description, .. }) if description.contains("maximum bytes") => {
                Err(QueueError::Full {
                    function: function.clone(),
                    bound: Full::Bytes(shared.config.bounds.max_queued_bytes),
                })
            }
            Err(e) => Err(QueueError::Store(StoreError(e.to_string()))),
        }
    }

    /// The body limit: the queue's byte bound, and what fits in one message in base64.
    pub fn max_body_bytes(&self) -> u64 {
        let payload = self.shared.max_payload.load(Ordering::Relaxed);
        let fits = (payload.saturating_sub(HEADROOM) / 4 * 3) as u64;
        self.shared.config.bounds.max_queued_bytes.min(fits)
    }

    pub fn stop_taking(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.freed.notify_all();
    }

    pub fn running(&self) -> usize {
        self.shared.running.lock().len()
    }

    /// Joins the threads that are done; calls still running are left to their threads, and
    /// unacknowledged, go to another gateway after `ack_wait` if this one exits first.
    pub fn close(&self) {
        self.stop_taking();
        let threads = std::mem::take(&mut *self.threads.lock());
        for thread in threads.into_iter().filter(|t| t.is_finished()) {
            let _ = thread.join();
        }
        self.shared.link.lock().take();
    }

    pub fn stats(&self) -> QueueStats {
        let running = self.shared.running.lock();
        let mut functions: Vec<QueueRow> = self.shared.rows.lock().values().cloned().collect();
        for row in &mut functions {
            row.running = running
                .values()
                .filter(|r| r.function.as_ref() == Some(&row.function))
                .count() as u64;
        }
        QueueStats {
            functions,
            disk_bytes: 0,
            stream_messages: *self.shared.stream_messages.lock(),
        }
    }
}

impl Shared {
    /// The connection, while it stands.
    fn link(&self) -> Option<Arc<JetStream>> {
        let link = self.link.lock();
        link.as_ref()
            .filter(|js| !js.connection().is_closed())
            .cloned()
    }

    /// Connects, makes sure the stream and the consumer exist, and keeps the connection.
    fn connect(&self) -> Result<Arc<JetStream>, Error> {
        let options = Options {
            name: "defrost async queue".into(),
            ..Options::default()
        };
        let connection = Connection::connect(&self.nats.url, &options)?;
        self.max_payload
            .store(connection.info().max_payload, Ordering::Relaxed);
        let js = JetStream::new(connection, TIMEOUT);
        let n = &self.nats;
        let mut stream = StreamConfig::work_queue(&n.stream, &[&n.subject]);
        stream.max_msgs = i64::try_from(self.config.bounds.max_queued).unwrap_or(i64::MAX);
        stream.max_bytes = i64::try_from(self.config.bounds.max_queued_bytes).unwrap_or(i64::MAX);
        if let Err(e) = js.ensure_stream(&stream) {
            // A stream made by someone else (an OpenFaaS install) is used as it is.
            js.stream_info(&n.stream).map_err(|_| e)?;
            log::warn!("async queue: stream {} kept as it is", n.stream);
        }
        let consumer = ConsumerConfig::durable(&n.consumer, n.ack_wait);
        if let Err(e) = js.ensure_consumer(&n.stream, &consumer) {
            js.consumer_info(&n.stream, &n.consumer).map_err(|_| e)?;
            log::warn!("async queue: consumer {} kept as it is", n.consumer);
        }
        let js = Arc::new(js);
        *self.link.lock() = Some(Arc::clone(&js));
        log::info!(
            "async queue on NATS JetStream at {}, stream {}, consumer {}",
            crate::redact::url(&n.url),
            n.stream,
            n.consumer
        );
        Ok(js)
    }

    /// Pulls calls while there are idle workers; reconnects.
    fn fetch_loop(&self, calls: &Sender<Fetched>) {
        let mut pause = Duration::from_millis(100);
        let mut depth_at: Option<Instant> = None;
        while !self.stopping.load(Ordering::SeqCst) {
            // Connected first: accepts need the connection even while every worker is busy.
            let js = match self.link() {
                Some(js) => js,
                None => match self.connect() {
                    Ok(js) => {
                        pause = Duration::from_millis(100);
                        js
                    }
                    Err(e) => {
                        log::warn!(
                            "async queue: {e}; connecting again in {:.1}s",
                            pause.as_secs_f64()
                        );
                        self.sleep(pause);
                        pause = (pause * 2).min(MAX_RECONNECT);
                        continue;
                    }
                },
            };
            if depth_at.is_none_or(|at| at.elapsed() >= DEPTH_EVERY) {
                depth_at = Some(Instant::now());
                *self.stream_messages.lock() = js
                    .stream_info(&self.nats.stream)
                    .ok()
                    .map(|i| i.state.messages);
            }
            let free = self.wait_for_a_free_worker();
            if free == 0 {
                continue;
            }
            match js.fetch(&self.nats.stream, &self.nats.consumer, free, PULL) {
                Ok(messages) => {
                    for message in messages {
                        if self.stopping.load(Ordering::SeqCst) {
                            // Pulled as the gateway stops: for another gateway, at once.
                            self.settle(&message, Ack::Nak(None));
                        } else if self.running.lock().contains_key(&message.stream_seq) {
                            // Delivered again while it still runs here (a +WPI came late).
                            self.settle(&message, Ack::InProgress);
                        } else if calls.send(self.track(message)).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    log::warn!("async queue: {e}");
                    self.sleep(pause);
                    pause = (pause * 2).min(MAX_RECONNECT);
                }
            }
        }
    }

    /// Idle workers, once there is one (or a second has passed).
    fn wait_for_a_free_worker(&self) -> usize {
        let workers = self.config.workers.max(1);
        let mut running = self.running.lock();
        if running.len() >= workers && !self.stopping.load(Ordering::SeqCst) {
            self.freed.wait_for(&mut running, PULL);
        }
        workers.saturating_sub(running.len())
    }

    /// Tells the server, for every call running longer than a third of `ack_wait` since it
    /// last heard of it, that it is in progress (+WPI): on a thread of its own, so a slow
    /// pull or a reconnection does not delay it. Goes on after a stop while calls still run.
    fn keep_alive(&self) {
        let due = self.nats.ack_wait / 3;
        let step = (self.nats.ack_wait / 6).max(Duration::from_millis(100));
        loop {
            std::thread::sleep(step);
            let stale: Vec<JsMessage> = {
                let mut running = self.running.lock();
                if running.is_empty() && self.stopping.load(Ordering::SeqCst) {
                    return;
                }
                running
                    .values_mut()
                    .filter(|r| r.touched.elapsed() >= due)
                    .map(|r| {
                        r.touched = Instant::now();
                        r.message.clone()
                    })
                    .collect()
            };
            for message in stale {
                self.settle(&message, Ack::InProgress);
            }
        }
    }

    /// Reads a fetched message and counts it as running: its worker is taken until it is
    /// settled.
    fn track(&self, mut message: JsMessage) -> Fetched {
        let call = self.decode(&message);
        message.payload = Vec::new();
        self.running.lock().insert(
            message.stream_seq,
            Running {
                message: message.clone(),
                function: call.as_ref().ok().map(|c| key_of(&c.meta)),
                touched: Instant::now(),
            },
        );
        Fetched { message, call }
    }

    fn sleep(&self, pause: Duration) {
        let mut running = self.running.lock();
        if !self.stopping.load(Ordering::SeqCst) {
            self.freed.wait_for(&mut running, pause);
        }
    }

    /// Runs one fetched call and settles it.
    fn run(&self, Fetched { message, call }: Fetched, invoke: &Invoke) {
        let call = match call {
            Ok(call) => call,
            Err(why) => {
                log::warn!(
                    "async queue: message {} on {} is not a call ({why}); dropped",
                    message.stream_seq,
                    message.subject
                );
                self.settle(&message, Ack::Term);
                self.release(&message);
                return;
            }
        };
        let (answer, took) = run_guarded(invoke, &call);
        let meta = &call.meta;
        let stopping = self.stopping.load(Ordering::SeqCst);
        match verdict(&self.config, meta, answer.status, stopping) {
            Verdict::Leave => self.settle(&message, Ack::Nak(None)),
            Verdict::Retry(pause) => {
                self.settle(&message, Ack::Nak(Some(pause)));
                self.row(meta, |r| r.retried += 1);
            }
            Verdict::Done { failed } => {
                self.settle(&message, Ack::Ack);
                self.row(meta, |r| match failed {
                    true => r.failed += 1,
                    false => r.completed += 1,
                });
                if !self.callbacks.answer(meta, &answer, took) {
                    self.row(meta, |r| r.callback_failures += 1);
                }
            }
        }
        self.release(&message);
    }

    fn settle(&self, message: &JsMessage, how: Ack) {
        let settled = match self.link() {
            Some(js) => js.ack(message, how),
            None => Err(Error::Closed("not connected".into())),
        };
        if let Err(e) = settled {
            log::warn!(
                "async queue: {how:?} of message {} not confirmed ({e}); it may run again",
                message.stream_seq
            );
        }
    }

    fn release(&self, message: &JsMessage) {
        self.running.lock().remove(&message.stream_seq);
        self.freed.notify_all();
    }

    fn row(&self, meta: &Meta, count: impl FnOnce(&mut QueueRow)) {
        let key = key_of(meta);
        let mut rows = self.rows.lock();
        let row = rows.entry(key.clone()).or_insert_with(|| QueueRow {
            function: key,
            queued: 0,
            running: 0,
            retried: 0,
            failed: 0,
            completed: 0,
            callback_failures: 0,
        });
        count(row);
    }

    /// The call a message carries, its attempt being the delivery count.
    fn decode(&self, message: &JsMessage) -> Result<Queued, String> {
        let request = QueueRequest::from_json(&message.payload).map_err(|e| e.to_string())?;
        let mut call = from_request(request, &self.default_namespace)?;
        if call.meta.call_id.is_empty() {
            call.meta.call_id = message
                .headers
                .get("Nats-Msg-Id")
                .map_or_else(|| format!("nats-{}", message.stream_seq), str::to_owned);
            call.meta
                .headers
                .push(("X-Call-Id".into(), call.meta.call_id.clone()));
        }
        call.meta.attempts = u32::try_from(message.delivered).unwrap_or(u32::MAX);
        call.meta.accepted_ms = message.timestamp_ns / 1_000_000;
        Ok(call)
    }
}

fn key_of(meta: &Meta) -> String {
    format!("{}.{}", meta.function, meta.namespace)
}

/// The call as the OpenFaaS gateway would have published it.
fn to_request(meta: &Meta, body: Vec<u8>) -> QueueRequest {
    let mut header: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &meta.headers {
        header.entry(name.clone()).or_default().push(value.clone());
    }
    let host = header
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("Host"))
        .and_then(|(_, v)| v.first().cloned())
        .unwrap_or_default();
    QueueRequest {
        header,
        host,
        body,
        method: meta.method.clone(),
        path: meta.rest.clone(),
        query_string: meta.query.clone().unwrap_or_default(),
        function: match meta.namespace_named {
            true => key_of(meta),
            false => meta.function.clone(),
        },
        callback_url: meta.callback.clone(),
        ..QueueRequest::default()
    }
}

/// A published call (by defrost or an OpenFaaS gateway) as the queue runs it.
fn from_request(request: QueueRequest, default_namespace: &str) -> Result<Queued, String> {
    let function =
        FunctionRef::parse(&request.function, default_namespace).map_err(|e| e.to_string())?;
    let headers: Vec<(String, String)> = request
        .header
        .into_iter()
        .flat_map(|(name, values)| values.into_iter().map(move |v| (name.clone(), v)))
        .collect();
    let call_id = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("X-Call-Id"))
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let method = match request.method.as_str() {
        "" => "POST".to_owned(),
        m => m.to_owned(),
    };
    Ok(Queued {
        meta: Meta {
            call_id,
            function: function.name().to_owned(),
            namespace: function.namespace().to_owned(),
            namespace_named: request.function.contains('.'),
            method,
            rest: request.path,
            query: Some(request.query_string).filter(|q| !q.is_empty()),
            headers,
            client: None,
            callback: request.callback_url,
            attempts: 0,
            accepted_ms: 0,
        },
        body: request.body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::store::sample;

    #[test]
    fn a_call_goes_through_the_openfaas_message_and_comes_back_the_same() {
        let mut call = sample("/resize", 5);
        call.meta
            .headers
            .push(("X-Call-Id".into(), "call/resize".into()));
        call.meta.callback = Some("http://127.0.0.1:9/done?x=1".into());
        let request = to_request(&call.meta, call.body.clone());
        assert_eq!(request.function, "echo", "as the caller named it");
        let json = request.to_json();
        let back = from_request(QueueRequest::from_json(&json).unwrap(), "default").unwrap();
        assert_eq!(back.meta.call_id, "call/resize");
        assert_eq!(back.body, call.body);
        let same = |m: &Meta| {
            (
                m.function.clone(),
                m.namespace.clone(),
                m.method.clone(),
                m.rest.clone(),
                m.query.clone(),
                m.callback.clone(),
            )
        };
        assert_eq!(same(&back.meta), same(&call.meta));
        let mut named = call.meta.clone();
        named.namespace = "team".into();
        named.namespace_named = true;
        let request = to_request(&named, Vec::new());
        assert_eq!(request.function, "echo.team");
        let back = from_request(request, "default").unwrap();
        assert_eq!(
            (back.meta.namespace.as_str(), back.meta.namespace_named),
            ("team", true)
        );
    }

    #[test]
    fn a_message_naming_no_valid_function_is_refused() {
        let request = QueueRequest {
            function: "Not A Name".into(),
            ..QueueRequest::default()
        };
        assert!(from_request(request, "default").is_err());
    }
}
