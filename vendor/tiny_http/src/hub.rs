//! Where a connection is served from between its requests.
//!
//! A connection that waits for its next request is parked in the idle set (Linux); when it
//! becomes readable it is queued, and the thread that takes it in `Server::recv` reads the
//! request head itself if it has fully arrived. Anything that may block (a head still
//! arriving, a body lent to a request, an ending that lingers) goes to a connection thread
//! from the task pool, which hands the connection back to the idle set once it waits idle
//! again. Where there is no idle set, connection threads serve connections throughout, as
//! tiny_http always did.

use std::sync::Arc;
use std::thread;

use crate::client::{ClientConnection, Quick};
#[cfg(target_os = "linux")]
use crate::util::idle::Idle;
use crate::util::{MessagesQueue, TaskPool};
use crate::{Limits, Message, Request};

pub(crate) struct Hub {
    pub(crate) messages: Arc<MessagesQueue<Message>>,
    tasks: TaskPool,
    #[cfg(target_os = "linux")]
    idle: Option<Idle>,
}

impl Hub {
    /// Creates the hub and starts the thread that watches idle connections.
    pub(crate) fn start(messages: Arc<MessagesQueue<Message>>, limits: &Limits) -> Arc<Hub> {
        let hub = Arc::new(Hub {
            messages,
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
                .spawn(move || watcher.watch_idle());
            if let Err(e) = spawned {
                log::error!("Could not start the idle connection thread: {}", e);
            }
        }
        hub
    }

    #[cfg(target_os = "linux")]
    fn watch_idle(&self) {
        if let Some(idle) = &self.idle {
            idle.run(|ready| {
                self.messages
                    .push_all(ready.into_iter().map(Message::Ready))
            });
        }
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
        let messages = &self.messages;
        loop {
            if !client.serve_until_idle(|rq| messages.push(rq.into())) {
                return;
            }
            client = match self.park(client) {
                Ok(()) => return,
                // cannot be parked: wait for the next request on this thread
                Err(mut client) => match client.next() {
                    Some(rq) => {
                        messages.push(rq.into());
                        client
                    }
                    None => return,
                },
            };
        }
    }
}
