//! A remote OpenFaaS provider over the faas-provider HTTP API.
