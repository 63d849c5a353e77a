//! What keeps accepted calls until they have run: the trait every backend implements, and the
//! call as it is kept.
//!
//! The trait is small on purpose: the queue's order, bounds, retries and concurrency live in
//! [`super::board`], in memory, and a store only has to keep calls durably and say which it
//! holds. The embedded backend ([`super::embedded`]) is one redb file. The queue on NATS
//! JetStream ([`super::jetstream`]) is not a store: calls reach a gateway from a consumer
//! shared with other gateways, not from what it pushed, so it stands beside the board rather
//! than under it, and shares the run, the retry verdict and the callbacks.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A stored call's key: increasing in the order calls were accepted.
pub type Id = u64;

/// Everything about an accepted call but its body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Meta {
    /// The `X-Call-Id` answered with the 202, and sent to the function and the callback.
    pub call_id: String,
    /// The function's name and namespace.
    pub function: String,
    pub namespace: String,
    /// Whether the caller named the namespace (`/async-function/echo.team`).
    pub namespace_named: bool,
    pub method: String,
    /// The path after the function's name, as the client sent it.
    pub rest: String,
    pub query: Option<String>,
    /// The client's headers, body framing left out.
    pub headers: Vec<(String, String)>,
    /// The client's address, for the forwarding headers.
    pub client: Option<String>,
    /// Where the function's answer is posted.
    pub callback: Option<String>,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the call was accepted, in milliseconds since the epoch.
    pub accepted_ms: u64,
}

/// An accepted call, whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub meta: Meta,
    pub body: Vec<u8>,
}

impl Queued {
    /// What the call costs the store, roughly: its body and its head.
    pub fn bytes(&self) -> u64 {
        let head: usize = self
            .meta
            .headers
            .iter()
            .map(|(n, v)| n.len() + v.len() + 8)
            .sum();
        (self.body.len() + head + self.meta.rest.len() + 256) as u64
    }
}

/// A stored call as the queue keeps it in memory, found again at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub id: Id,
    pub function: String,
    pub namespace: String,
    pub attempts: u32,
    pub bytes: u64,
}

/// The store could not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "queue store: {}", self.0)
    }
}

impl std::error::Error for StoreError {}

/// Keeps accepted calls until they are done (see the module docs for a distributed backend).
pub trait Store: Send + Sync {
    /// Keeps `call`; returns only once it survives a crash of the process (and, for the
    /// embedded store, of the machine: the commit is fsynced).
    fn push(&self, call: Queued) -> Result<Id, StoreError>;
    /// Every call kept and not done, oldest first: what was left when the process last stopped.
    fn pending(&self) -> Result<Vec<Pending>, StoreError>;
    /// One kept call, whole; `None` when it is no longer kept.
    fn load(&self, id: Id) -> Result<Option<Queued>, StoreError>;
    /// The call has run (or failed for good): forget it.
    fn done(&self, id: Id);
    /// The call will be tried again: keep its new attempt count.
    fn retry_later(&self, id: Id, meta: &Meta);
    /// Bytes the store takes on disk now.
    fn disk_bytes(&self) -> u64;
    /// Makes everything done so far durable and stops; called once, at shutdown.
    fn close(&self);
}

/// A call to `echo.default` with a body of `body` bytes, for tests.
#[cfg(test)]
pub fn sample(rest: &str, body: usize) -> Queued {
    Queued {
        meta: Meta {
            call_id: format!("call{rest}"),
            function: "echo".into(),
            namespace: "default".into(),
            namespace_named: false,
            method: "POST".into(),
            rest: rest.into(),
            query: Some("a=1".into()),
            headers: vec![("Content-Type".into(), "text/plain".into())],
            client: Some("127.0.0.1:1234".into()),
            callback: None,
            attempts: 0,
            accepted_ms: 1,
        },
        body: vec![b'x'; body],
    }
}
