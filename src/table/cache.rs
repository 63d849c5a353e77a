//! One function's replica status, with an expiry.
//!
//! A fresh status with ready replicas lets a request go straight to a replica without asking
//! the provider; anything else (stale, not ready, never asked) leads to a query. The lock is a
//! `parking_lot::Mutex` held for a clone of an `Arc`: it is per function, so requests for
//! different functions never meet on it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::provider::FunctionStatus;

/// The last status the provider gave for one function, and when.
#[derive(Default)]
pub(crate) struct CachedStatus {
    entry: Mutex<Option<(Arc<FunctionStatus>, Instant)>>,
}

impl CachedStatus {
    /// The status, when younger than `expiry` and ready: the hot path's one question.
    pub(crate) fn fresh_ready(&self, expiry: Duration) -> Option<Arc<FunctionStatus>> {
        let entry = self.entry.lock();
        let (status, refreshed) = entry.as_ref()?;
        (refreshed.elapsed() < expiry && status.is_ready()).then(|| Arc::clone(status))
    }

    /// Whether a status younger than `expiry` is kept, ready or not: the function exists.
    pub(crate) fn known_within(&self, expiry: Duration) -> bool {
        let entry = self.entry.lock();
        entry.as_ref().is_some_and(|(_, at)| at.elapsed() < expiry)
    }

    pub(crate) fn set(&self, status: Arc<FunctionStatus>) {
        *self.entry.lock() = Some((status, Instant::now()));
    }

    /// Forgets the status: the next request asks the provider.
    pub(crate) fn clear(&self) {
        *self.entry.lock() = None;
    }

    #[cfg(test)]
    pub(crate) fn is_set(&self) -> bool {
        self.entry.lock().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::Endpoint;
    use std::thread::sleep;

    fn ready() -> Arc<FunctionStatus> {
        Arc::new(FunctionStatus {
            replicas: 1,
            available_replicas: 1,
            endpoints: vec![Arc::new(Endpoint::new("http://127.0.0.1:1"))],
            ..Default::default()
        })
    }

    #[test]
    fn fresh_statuses_answer_then_expire() {
        let expiry = Duration::from_millis(100);
        let cache = CachedStatus::default();
        assert!(cache.fresh_ready(expiry).is_none());
        cache.set(ready());
        assert!(cache.fresh_ready(expiry).is_some());
        sleep(Duration::from_millis(150));
        assert!(
            cache.fresh_ready(expiry).is_none(),
            "stale status taken as truth"
        );
    }

    #[test]
    fn not_ready_statuses_never_short_cut() {
        let cache = CachedStatus::default();
        cache.set(Arc::new(FunctionStatus::default()));
        assert!(cache.fresh_ready(Duration::from_secs(60)).is_none());
    }

    #[test]
    fn a_cleared_status_is_asked_for_again() {
        let cache = CachedStatus::default();
        cache.set(ready());
        cache.clear();
        assert!(cache.fresh_ready(Duration::from_secs(60)).is_none());
        assert!(!cache.is_set());
    }
}
