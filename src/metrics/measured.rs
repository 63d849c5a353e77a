//! A provider wrapped so that every call to it is counted, timed, and its failures logged.
//!
//! Wrapping, rather than counting inside each provider, measures every provider the same way,
//! including the ones embedders bring.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::function::FunctionRef;
use crate::histogram::{Histogram, SLOW_BOUNDS};
use crate::provider::{
    FunctionStatus, FunctionSummary, Parked, Provider, ProviderError, ProviderInfo,
};

/// The provider calls that are measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Status,
    SetReplicas,
    List,
    Namespaces,
}

impl Operation {
    pub const ALL: [Operation; 4] = [
        Operation::Status,
        Operation::SetReplicas,
        Operation::List,
        Operation::Namespaces,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Operation::Status => "status",
            Operation::SetReplicas => "set_replicas",
            Operation::List => "list",
            Operation::Namespaces => "namespaces",
        }
    }
}

/// Per operation: calls that succeeded, failed (not-found counts as an answer, not a failure),
/// and how long they took.
pub struct ProviderCalls {
    ok: [AtomicU64; 4],
    failed: [AtomicU64; 4],
    latency: [Histogram; 4],
}

impl Default for ProviderCalls {
    fn default() -> Self {
        ProviderCalls::new()
    }
}

impl ProviderCalls {
    pub fn new() -> ProviderCalls {
        ProviderCalls {
            ok: std::array::from_fn(|_| AtomicU64::new(0)),
            failed: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: std::array::from_fn(|_| Histogram::new(SLOW_BOUNDS)),
        }
    }

    /// `(succeeded, failed)` calls of `op`.
    pub fn counts(&self, op: Operation) -> (u64, u64) {
        let i = op as usize;
        (
            self.ok[i].load(Ordering::Relaxed),
            self.failed[i].load(Ordering::Relaxed),
        )
    }

    pub fn latency(&self, op: Operation) -> &Histogram {
        &self.latency[op as usize]
    }

    fn record(&self, op: Operation, took: Duration, failed: bool) {
        let i = op as usize;
        let counter = if failed { &self.failed[i] } else { &self.ok[i] };
        counter.fetch_add(1, Ordering::Relaxed);
        self.latency[i].record(took);
    }
}

/// A provider whose calls are counted in [`ProviderCalls`].
pub struct Measured {
    inner: Arc<dyn Provider>,
    calls: Arc<ProviderCalls>,
}

impl Measured {
    pub fn new(inner: Arc<dyn Provider>, calls: Arc<ProviderCalls>) -> Measured {
        Measured { inner, calls }
    }

    fn measure<T>(
        &self,
        op: Operation,
        subject: &dyn std::fmt::Display,
        call: impl FnOnce() -> Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        let started = Instant::now();
        let result = call();
        let took = started.elapsed();
        let failed = matches!(
            &result,
            Err(ProviderError::Unavailable(_)
                | ProviderError::Failed(_)
                | ProviderError::Refused(_))
        );
        self.calls.record(op, took, failed);
        // A refusal is the caller's to report: it decides what it means (a scale to zero the
        // provider does not allow is said once per function, not once per attempt).
        let refused = matches!(&result, Err(ProviderError::Refused(_)));
        if let (true, false, Err(e)) = (failed, refused, &result) {
            let call = format!("{} {subject}", op.name());
            log::warn!(
                "provider {} failed after {:.3}s: {e}",
                call.trim_end(),
                took.as_secs_f64()
            );
        }
        result
    }
}

impl Provider for Measured {
    fn status(&self, function: &FunctionRef) -> Result<FunctionStatus, ProviderError> {
        self.measure(Operation::Status, function, || self.inner.status(function))
    }

    fn set_replicas(&self, function: &FunctionRef, replicas: u64) -> Result<(), ProviderError> {
        self.measure(Operation::SetReplicas, function, || {
            self.inner.set_replicas(function, replicas)
        })
    }

    fn wait_for_change(&self, function: &FunctionRef, since: u64, timeout: Duration) {
        self.inner.wait_for_change(function, since, timeout)
    }

    fn notifies_changes(&self) -> bool {
        self.inner.notifies_changes()
    }

    fn list(&self, namespace: &str) -> Result<Vec<FunctionSummary>, ProviderError> {
        self.measure(Operation::List, &namespace, || self.inner.list(namespace))
    }

    fn namespaces(&self) -> Result<Vec<String>, ProviderError> {
        self.measure(Operation::Namespaces, &"", || self.inner.namespaces())
    }

    fn info(&self) -> Result<ProviderInfo, ProviderError> {
        self.inner.info()
    }

    fn shutdown(&self) {
        self.inner.shutdown()
    }

    fn park(&self, function: &FunctionRef) -> Result<u64, ProviderError> {
        self.inner.park(function)
    }

    fn thaw(&self, function: &FunctionRef) -> Result<u64, ProviderError> {
        self.inner.thaw(function)
    }

    fn parked(&self, function: &FunctionRef) -> Parked {
        self.inner.parked(function)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Flaky;

    impl Provider for Flaky {
        fn status(&self, f: &FunctionRef) -> Result<FunctionStatus, ProviderError> {
            match f.name() {
                "up" => Ok(FunctionStatus::default()),
                "gone" => Err(ProviderError::NotFound),
                _ => Err(ProviderError::Unavailable("refused".into())),
            }
        }
        fn set_replicas(&self, _: &FunctionRef, _: u64) -> Result<(), ProviderError> {
            Ok(())
        }
        fn list(&self, _: &str) -> Result<Vec<FunctionSummary>, ProviderError> {
            Ok(Vec::new())
        }
        fn namespaces(&self) -> Result<Vec<String>, ProviderError> {
            Ok(Vec::new())
        }
    }

    #[test]
    fn calls_are_counted_by_outcome() {
        let calls = Arc::new(ProviderCalls::new());
        let provider = Measured::new(Arc::new(Flaky), Arc::clone(&calls));
        for name in ["up", "up", "gone", "down"] {
            let _ = provider.status(&FunctionRef::new(name, "default").unwrap());
        }
        provider
            .set_replicas(&FunctionRef::new("up", "default").unwrap(), 1)
            .unwrap();
        assert_eq!(calls.counts(Operation::Status), (3, 1));
        assert_eq!(calls.latency(Operation::Status).count(), 4);
        assert_eq!(calls.counts(Operation::SetReplicas), (1, 0));
        assert_eq!(calls.counts(Operation::List), (0, 0));
    }
}
