//! A synchronous NATS and JetStream client: the subset of the protocol a durable work queue
//! needs, over a std `TcpStream` with one reader thread, and no async runtime.
//!
//! Why it is written here: the Rust NATS clients are `async-nats`, which needs tokio (defrost
//! runs no async runtime), and the synchronous `nats` crate, deprecated by its authors in
//! favour of `async-nats` and receiving no fixes beyond critical security ones. The part of
//! the protocol used (INFO/CONNECT, PING/PONG, PUB/HPUB, SUB/UNSUB, MSG/HMSG, and JetStream's
//! JSON API on `$JS.API.>` subjects) is small, text-based and stable.
//!
//! - [`proto`]: frames, parsed within bounds.
//! - [`Connection`]: one connection, request/reply over a per-connection inbox, dead-server
//!   detection.
//! - [`JetStream`]: streams, durable pull consumers, publish with ack, fetch, ack/nak/term.
//! - [`openfaas`]: the message the OpenFaaS gateway queues and its queue-worker consumes.
//!
//! Not supported: TLS, NKEY/JWT credentials, clusters (one server URL), reconnection (a
//! connection that dies fails every later call; its owner connects again).

mod connection;
mod error;
mod jetstream;
pub mod openfaas;
pub mod proto;
mod url;

pub use connection::{Connection, Options, ServerInfo, Subscription};
pub use error::Error;
pub use jetstream::{
    Ack, ConsumerConfig, ConsumerInfo, Discard, JetStream, JsMessage, PubAck, Retention, Storage,
    StreamConfig, StreamInfo, StreamState,
};
pub use proto::{Headers, Message};
