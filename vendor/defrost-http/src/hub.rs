//! Where a connection is served from between its requests.
//!
//! A connection that waits for its next request is parked in the idle set (Linux), where the
//! threads calling `Server::recv` wait too; the one woken for it reads what has arrived of the
//! request head itself, and the request if the head is whole. A head that has only partly
//! arrived stays with the connection, which goes back to the idle set to wait for the rest, so
//! a slow client holds no thread. Anything else that may block (a body lent to a request, a
//! small body still arriving, a response to wait for, an ending that lingers) goes to a
//! connection thread from the task pool, which hands the connection back to the idle set once
//! it waits again. Where there is no idle set, connection threads serve connections
//! throughout, as tiny_http always did.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::client::{ClientConnection, Quick};
#[cfg(target_os = "linux")]
use crate::util::idle::{Idle, Polled};
use crate::util::{MessagesQueue, TaskPool};
use crate::{Limits, Message, Request};

/// What a wait in [`Hub::poll`] gave.
// Moved once, straight to the caller; boxing the request would cost an allocation each.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Waited {
    Request(Request),
    /// Woken, but with no request (yet): look at the queue, wait again.
    Nothing,
    TimedOut,
}

pub(crate) struct Hub {
    pub(crate) messages: Arc<MessagesQueue<Message>>,
    /// Set once the server stops accepting; shared with every connection, whose responses
    /// then close it.
    pub(crate) draining: Arc<AtomicBool>,
    /// Threads waiting in the idle set right now, to be woken when work is queued.
    pollers: AtomicUsize,
    tasks: TaskPool,
    #[cfg(target_os = "linux")]
    idle: Option<Idle>,
}

impl Hub {
    /// Creates the hub and starts the thread that closes idle connections past their timeouts.
    pub(crate) fn start(limits: &Limits) -> Arc<Hub> {
        let hub = Arc::new(Hub {
            messages: MessagesQueue::with_capacity(8),
            draining: Arc::new(AtomicBool::new(false)),
            pollers: AtomicUsize::new(0),
            tasks: TaskPool::new(),
            #[cfg(target_os = "linux")]
            idle: Idle::new(limits)
                .map_err(|e| log::warn!("No idle set ({}); one thread per connection", e))
                .ok(),
        });
        #[cfg(not(target_os = "linux"))]
        let _ = limits;
        #[cfg(target_os = "linux")]
        if hub.idle.is_some() {
            let watcher = Arc::clone(&hub);
            let spawned = thread::Builder::new()
                .name("tiny-http-idle".into())
                .stack_size(64 * 1024)
                .spawn(move || watcher.watch_idle());
            if let Err(e) = spawned {
                log::error!("Could not start the idle connection thread: {}", e);
            }
        }
        hub
    }

    /// The idle timeouts: the only work that needs a thread of its own.
    #[cfg(target_os = "linux")]
    fn watch_idle(&self) {
        if let Some(idle) = &self.idle {
            idle.run_sweeps();
        }
    }

    /// Queues a message for the `recv` callers, waking one that waits in the idle set.
    pub(crate) fn push(&self, message: Message) {
        self.messages.push(message);
        self.nudge();
    }

    /// Wakes one `recv` caller that waits in the idle set, to look at the queue.
    pub(crate) fn nudge(&self) {
        #[cfg(target_os = "linux")]
        if let Some(idle) = &self.idle {
            if self.pollers.load(Ordering::SeqCst) > 0 {
                idle.wake();
            }
        }
    }

    /// Waits up to `timeout` on the calling thread for a readable idle connection (whose next
    /// request it then reads) or for queued work. `None` where there is no idle set: the
    /// caller waits on the queue instead.
    pub(crate) fn poll(self: &Arc<Self>, timeout: Duration) -> Option<Waited> {
        #[cfg(target_os = "linux")]
        if let Some(idle) = &self.idle {
            self.pollers.fetch_add(1, Ordering::SeqCst);
            // queued before we counted ourselves: the pusher may not have woken anyone
            let polled = if self.messages.len() > 0 {
                Polled::Woken
            } else {
                idle.wait_one(timeout)
            };
            self.pollers.fetch_sub(1, Ordering::SeqCst);
            return Some(match polled {
                Polled::Ready(client) => match self.resume(client) {
                    Some(rq) => Waited::Request(rq),
                    None => Waited::Nothing,
                },
                Polled::Woken => Waited::Nothing,
                Polled::TimedOut => Waited::TimedOut,
            });
        }
        let _ = (timeout, &self.pollers);
        None
    }

    /// Closes the connection idle the longest between two requests, to make room for a new
    /// one; false if there is none (or no idle set).
    pub(crate) fn reclaim_idle(&self) -> bool {
        #[cfg(target_os = "linux")]
        if let Some(idle) = &self.idle {
            return idle.reclaim_oldest();
        }
        false
    }

    /// From now on every response closes its connection; the idle connections with nothing
    /// going on are closed at once.
    pub(crate) fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        #[cfg(target_os = "linux")]
        if let Some(idle) = &self.idle {
            idle.drain();
        }
    }

    /// Connections waiting in the idle set (none where there is no idle set).
    pub(crate) fn parked(&self) -> usize {
        #[cfg(target_os = "linux")]
        if let Some(idle) = &self.idle {
            return idle.parked();
        }
        0
    }

    /// Closes the idle connections and stops watching them.
    pub(crate) fn close(&self) {
        #[cfg(target_os = "linux")]
        if let Some(idle) = &self.idle {
            idle.close();
        }
    }

    /// Serves a connection from its next request on: a new one, or one whose last request
    /// was just taken.
    pub(crate) fn serve(self: &Arc<Self>, mut client: Box<ClientConnection>) {
        if client.waits_idle(false) {
            self.park_or_drive(client);
        } else if client.finished() {
            drop(client);
        } else {
            self.drive(client);
        }
    }

    /// On the thread of a `recv` caller: the next request of a connection that became
    /// readable, if its head has fully arrived; otherwise the connection goes where it can
    /// wait without holding this thread.
    pub(crate) fn resume(self: &Arc<Self>, mut client: Box<ClientConnection>) -> Option<Request> {
        match client.quick() {
            Quick::Request(rq) => {
                self.serve(client);
                Some(rq)
            }
            Quick::Park => {
                self.park_or_drive(client);
                None
            }
            Quick::Slow => {
                self.drive(client);
                None
            }
            Quick::Closed => None,
        }
    }

    fn park(&self, client: Box<ClientConnection>) -> Result<(), Box<ClientConnection>> {
        #[cfg(target_os = "linux")]
        if let Some(idle) = &self.idle {
            return idle.park(client);
        }
        Err(client)
    }

    fn park_or_drive(self: &Arc<Self>, client: Box<ClientConnection>) {
        if let Err(client) = self.park(client) {
            self.drive(client);
        }
    }

    /// Serves `client` on a connection thread until it waits idle.
    fn drive(self: &Arc<Self>, client: Box<ClientConnection>) {
        let hub = Arc::clone(self);
        let spawned = self
            .tasks
            .spawn(Box::new(move || hub.run_connection(client)));
        if let Err(e) = spawned {
            // the connection is dropped (closed) with the task
            log::error!("Could not start a thread for a connection: {}", e);
        }
    }

    fn run_connection(&self, mut client: Box<ClientConnection>) {
        // with an idle set, a head that arrives in pieces waits there, not on this thread
        #[cfg(target_os = "linux")]
        let park = self.idle.is_some();
        #[cfg(not(target_os = "linux"))]
        let park = false;
        loop {
            if !client.serve_until_idle(park, |rq| self.push(rq.into())) {
                return;
            }
            client = match self.park(client) {
                Ok(()) => return,
                // cannot be parked: wait for the next request on this thread
                Err(mut client) => match client.next() {
                    Some(rq) => {
                        self.push(rq.into());
                        client
                    }
                    None => return,
                },
            };
        }
    }
}
