//! What the gateway shows of what it counted: the Prometheus exposition and the overview it
//! shares with the status page, and the provider wrapper that counts provider calls.
//!
//! The per-function counters themselves live in each function's record
//! ([`crate::table`]); gauges other parts of the gateway already hold (waiters, single-flight
//! counts, replica counts) are read from them when metrics are scraped, not copied on every
//! change.

pub mod exposition;
pub mod listener;
pub mod measured;
pub mod overview;

pub use measured::{Measured, Operation, ProviderCalls};
