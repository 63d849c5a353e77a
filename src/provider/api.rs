//! Serving the faas-provider HTTP API from any [`Provider`](super::Provider).
