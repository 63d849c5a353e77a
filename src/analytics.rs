//! Call analytics sent in batches to an HTTP endpoint, in the manner of the kubefaas router.
//!
//! Requests only bump their function's atomic counters; one background thread reads them every
//! interval and posts what changed. The endpoint is never on a request's path: a slow or dead
//! endpoint delays only this thread. Counts that could not be delivered are carried into the
//! next batch rather than dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use serde::Serialize;

use crate::client::{self, Timeouts};
use crate::table::{counters::Counters, FunctionTable};

/// One function's calls since the last delivered batch.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AnalyticsData {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "FunctionCallCount")]
    pub calls: u64,
    #[serde(rename = "FunctionErrorCount")]
    pub errors: u64,
}

/// Totals already delivered, per function: the baseline the next batch is counted from.
#[derive(Default)]
struct Delivered(HashMap<String, (u64, u64)>);

impl Delivered {
    /// What changed since the last delivered batch.
    fn pending(&self, table: &FunctionTable) -> Vec<AnalyticsData> {
        table
            .all()
            .iter()
            .filter_map(|r| {
                let key = r.function().key();
                let (calls, errors) = totals(r.counters());
                let (sent_calls, sent_errors) = self.0.get(key).copied().unwrap_or((0, 0));
                let data = AnalyticsData {
                    id: key.to_owned(),
                    calls: calls.saturating_sub(sent_calls),
                    errors: errors.saturating_sub(sent_errors),
                };
                (data.calls > 0).then_some(data)
            })
            .collect()
    }

    fn confirm(&mut self, batch: &[AnalyticsData]) {
        for data in batch {
            let entry = self.0.entry(data.id.clone()).or_insert((0, 0));
            entry.0 += data.calls;
            entry.1 += data.errors;
        }
    }
}

/// Calls answered and, of those, answered with a 5xx.
fn totals(f: &Counters) -> (u64, u64) {
    f.by_code().fold((0, 0), |(calls, errors), (code, h)| {
        let n = h.count();
        (calls + n, errors + if code >= 500 { n } else { 0 })
    })
}

/// The sender thread; stops when dropped.
pub struct Analytics {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Analytics {
    pub fn start(
        url: String,
        interval: Duration,
        table: Arc<FunctionTable>,
    ) -> std::io::Result<Analytics> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("defrost-analytics".into())
            .spawn(move || run(&url, interval, &table, &flag))?;
        Ok(Analytics {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Analytics {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

fn run(url: &str, interval: Duration, table: &FunctionTable, stop: &AtomicBool) {
    let timeout = interval
        .min(Duration::from_secs(5))
        .max(Duration::from_millis(100));
    let agent = client::agent(
        Timeouts {
            connect: timeout,
            response: timeout,
            send: timeout,
        },
        1,
    );
    let mut delivered = Delivered::default();
    let mut failing = false;
    while !stop.load(Ordering::Relaxed) {
        thread::park_timeout(interval);
        let batch = delivered.pending(table);
        if batch.is_empty() {
            continue;
        }
        match send(&agent, url, &batch) {
            Ok(()) => {
                delivered.confirm(&batch);
                if std::mem::take(&mut failing) {
                    log::info!("analytics: {url} accepts batches again");
                }
            }
            Err(e) if !failing => {
                failing = true;
                log::warn!("analytics: {url}: {e}; counts are kept for the next batch");
            }
            Err(e) => log::debug!("analytics: {url}: {e}"),
        }
    }
}

fn send(agent: &ureq::Agent, url: &str, batch: &[AnalyticsData]) -> Result<(), String> {
    let body = serde_json::to_vec(batch).map_err(|e| e.to_string())?;
    let response = agent
        .post(url)
        .header("Content-Type", "application/json")
        .send(&body[..])
        .map_err(|e| e.to_string())?;
    match response.status().as_u16() {
        200..=299 => Ok(()),
        code => Err(format!("answered {code}")),
    }
}
