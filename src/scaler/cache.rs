//! Replica status per function, with an expiry.
//!
//! A fresh entry with ready replicas lets a request go straight to a replica without asking the
//! provider. An expired entry is kept: it is a hint (what the function looked like last time,
//! which replicas it had) but never the truth, so an expired entry always leads to a query.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::provider::FunctionStatus;

/// What the cache knows of a function.
pub struct Lookup {
    pub status: Arc<FunctionStatus>,
    /// Younger than the expiry.
    pub fresh: bool,
}

pub struct StatusCache {
    entries: Mutex<HashMap<String, Entry>>,
    expiry: Duration,
}

struct Entry {
    status: Arc<FunctionStatus>,
    refreshed: Instant,
}

impl StatusCache {
    pub fn new(expiry: Duration) -> StatusCache {
        StatusCache {
            entries: Mutex::new(HashMap::new()),
            expiry,
        }
    }

    pub fn get(&self, key: &str) -> Option<Lookup> {
        let entries = self.entries.lock();
        let entry = entries.get(key)?;
        Some(Lookup {
            status: Arc::clone(&entry.status),
            fresh: entry.refreshed.elapsed() < self.expiry,
        })
    }

    /// The fresh status, only when it has a ready replica: the hot path's one question.
    pub fn fresh_ready(&self, key: &str) -> Option<Arc<FunctionStatus>> {
        self.get(key)
            .filter(|l| l.fresh && l.status.is_ready())
            .map(|l| l.status)
    }

    pub fn set(&self, key: &str, status: Arc<FunctionStatus>) {
        let entry = Entry {
            status,
            refreshed: Instant::now(),
        };
        let mut entries = self.entries.lock();
        match entries.get_mut(key) {
            Some(existing) => *existing = entry,
            None => {
                entries.insert(key.to_owned(), entry);
            }
        }
    }

    /// Makes the entry stale, keeping it as a hint: the next request asks the provider.
    pub fn expire(&self, key: &str) {
        if let Some(entry) = self.entries.lock().get_mut(key) {
            entry.refreshed = Instant::now()
                .checked_sub(self.expiry)
                .unwrap_or(entry.refreshed);
        }
    }

    /// Drops the entry altogether (the function is gone).
    pub fn remove(&self, key: &str) {
        self.entries.lock().remove(key);
    }

    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
    fn fresh_entries_answer_then_expire_into_hints() {
        let cache = StatusCache::new(Duration::from_millis(100));
        assert!(cache.get("f.default").is_none());
        cache.set("f.default", ready());
        assert!(cache.fresh_ready("f.default").is_some());
        sleep(Duration::from_millis(150));
        assert!(
            cache.fresh_ready("f.default").is_none(),
            "expired entry taken as truth"
        );
        let hint = cache
            .get("f.default")
            .expect("expired entry kept as a hint");
        assert!(!hint.fresh && hint.status.is_ready());
    }

    #[test]
    fn not_ready_entries_never_short_cut() {
        let cache = StatusCache::new(Duration::from_secs(60));
        cache.set("f.default", Arc::new(FunctionStatus::default()));
        assert!(cache.fresh_ready("f.default").is_none());
    }

    #[test]
    fn expire_keeps_hint_remove_forgets() {
        let cache = StatusCache::new(Duration::from_secs(60));
        cache.set("f.default", ready());
        cache.expire("f.default");
        assert!(cache.fresh_ready("f.default").is_none());
        assert!(cache.get("f.default").is_some());
        cache.remove("f.default");
        assert!(cache.is_empty());
    }

    #[test]
    fn keys_are_independent() {
        let cache = StatusCache::new(Duration::from_secs(60));
        cache.set("a.default", ready());
        assert!(cache.fresh_ready("b.default").is_none());
        assert_eq!(cache.len(), 1);
    }
}
