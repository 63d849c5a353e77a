//! The listening side: a tiny_http server and the worker pool that answers its requests.
//!
//! tiny_http reads requests on its connection threads and queues them; workers take them off
//! the queue and run the whole request, including any wait for a cold function. Waiting blocks
//! the worker, as in the OpenFaaS gateway, so the pool is elastic: it keeps one thread per core
//! warm and grows, up to a bound, whenever every worker is busy. A burst of requests waiting on
//! a cold or slow function therefore holds threads of its own while warm traffic still finds
//! idle workers; the scaler bounds how many may wait, which keeps the pool's bound out of reach.

mod pool;

pub use pool::{Pool, PoolConfig};
