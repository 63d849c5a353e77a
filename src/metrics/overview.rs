//! Every function at one moment: what the provider runs, and what the gateway counted.
//!
//! Both the Prometheus exposition and the status page are built from this, so they never
//! disagree. Replica counts come from the provider's list, asked once per scrape (as the
//! OpenFaaS gateway's exporter does), so functions never called still appear.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::function::FunctionRef;
use crate::provider::{Parked, Provider, StartFailure};
use crate::queue::QueueStats;
use crate::table::{FunctionRecord, FunctionTable};

/// One function's line.
pub struct FunctionRow {
    pub function: FunctionRef,
    /// Replicas asked for and replicas ready, as the provider said; `None` when it did not.
    pub desired: Option<u64>,
    pub ready: Option<u64>,
    /// Replicas failing one after another (crashing, or dying before ready), as the provider
    /// said: how many, what happened to the last, how long the next start is held back.
    pub failing: Option<StartFailure>,
    /// Replicas frozen while the function is idle, and the memory they keep.
    pub parked: Parked,
    /// What the gateway keeps about it; `None` for a function never called through it.
    pub record: Option<Arc<FunctionRecord>>,
}

impl FunctionRow {
    /// Requests waiting for a replica, or for a free slot on one, right now.
    pub fn waiting(&self) -> usize {
        self.record.as_ref().map_or(0, |r| r.waiting())
    }

    /// Requests waiting for a free slot on a ready replica right now (among `waiting`).
    pub fn queued_for_slot(&self) -> usize {
        self.record.as_ref().map_or(0, |r| r.queued_for_slot())
    }
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
    /// The async queue, when there is one.
    pub queue: Option<QueueStats>,
}

impl Overview {
    /// `coalescing`: the single-flight counts of status queries and of scale calls.
    pub fn gather(
        table: &FunctionTable,
        provider: &dyn Provider,
        coalescing: ((u64, u64), (u64, u64)),
    ) -> Overview {
        let mut rows: BTreeMap<String, FunctionRow> = BTreeMap::new();
        let provider_error = list_replicas(provider, &mut rows).err();
        for record in table.all() {
            let function = record.function().clone();
            row(&mut rows, &function).record = Some(record);
        }
        let functions: Vec<FunctionRow> = rows.into_values().collect();
        let (status_calls, scale_calls) = coalescing;
        Overview {
            waiting_total: functions.iter().map(FunctionRow::waiting).sum(),
            functions,
            provider_error,
            status_calls,
            scale_calls,
            queue: None,
        }
    }
}

fn row<'a>(rows: &'a mut BTreeMap<String, FunctionRow>, f: &FunctionRef) -> &'a mut FunctionRow {
    rows.entry(f.key().to_owned())
        .or_insert_with(|| FunctionRow {
            function: f.clone(),
            desired: None,
            ready: None,
            failing: None,
            parked: Parked::default(),
            record: None,
        })
}

/// Fills in replica counts from the provider, namespace by namespace; a namespace that fails
/// is reported, the others still shown.
fn list_replicas(
    provider: &dyn Provider,
    rows: &mut BTreeMap<String, FunctionRow>,
) -> Result<(), String> {
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
                    line.failing = summary.status.start_failure;
                    line.parked = provider.parked(&summary.function);
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
