//! defrost: a scale-from-zero function gateway.
pub mod client;
pub mod function;
pub mod provider;
