//! Every function at one moment: what the provider runs, and what the gateway counted.
//!
//! Both the Prometheus exposition and the status page are built from this, so they never
//! disagree. Replica counts come from the provider's list, asked once per scrape (as the
//! OpenFaaS gateway's exporter does), so functions never called still appear.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::FunctionMetrics;
use crate::function::FunctionRef;
use crate::scaler::Scaler;

/// One function's line.
pub struct FunctionRow {
    pub function: FunctionRef,
    /// Replicas asked for and replicas ready, as the provider said; `None` when it did not.
    pub desired: Option<u64>,
    pub ready: Option<u64>,
    /// Requests waiting for a replica right now.
    pub waiting: usize,
    /// What was counted; `None` for a function never called through this gateway.
    pub metrics: Option<Arc<FunctionMetrics>>,
}

pub struct Overview {
    /// Sorted by `name.namespace`.
    pub functions: Vec<FunctionRow>,
    /// Why the provider's list is missing or partial.
    pub provider_error: Option<String>,
    pub waiting_total: usize,
    /// Status queries and scale calls: `(made, shared by followers)` each.
    pub status_calls: (u64, u64),
    pub scale_calls: (u64, u64),
}

impl Overview {
    pub fn gather(scaler: &Scaler) -> Overview {
        let mut rows: BTreeMap<String, FunctionRow> = BTreeMap::new();
        let provider_error = list_replicas(scaler, &mut rows).err();
        for metrics in scaler.metrics().functions() {
            row(&mut rows, &metrics.function).metrics = Some(metrics.clone());
        }
        for (function, waiting) in scaler.waiting_by_function() {
            row(&mut rows, &function).waiting = waiting;
        }
        let (status_calls, scale_calls) = scaler.coalescing();
        Overview {
            functions: rows.into_values().collect(),
            provider_error,
            waiting_total: scaler.waiting(),
            status_calls,
            scale_calls,
        }
    }
}

fn row<'a>(rows: &'a mut BTreeMap<String, FunctionRow>, f: &FunctionRef) -> &'a mut FunctionRow {
    rows.entry(f.key().to_owned())
        .or_insert_with(|| FunctionRow {
            function: f.clone(),
            desired: None,
            ready: None,
            waiting: 0,
            metrics: None,
        })
}

/// Fills in replica counts from the provider, namespace by namespace; a namespace that fails
/// is reported, the others still shown.
fn list_replicas(scaler: &Scaler, rows: &mut BTreeMap<String, FunctionRow>) -> Result<(), String> {
    let provider = scaler.provider();
    let namespaces = provider
        .namespaces()
        .map_err(|e| format!("listing namespaces: {e}"))?;
    let mut failures = Vec::new();
    for namespace in namespaces {
        match provider.list(&namespace) {
            Ok(summaries) => {
                for summary in summaries {
                    let line = row(rows, &summary.function);
                    line.desired = Some(summary.status.replicas);
                    line.ready = Some(summary.status.available_replicas);
                }
            }
            Err(e) => failures.push(format!("listing namespace {namespace}: {e}")),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}
