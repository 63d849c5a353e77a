//! The Prometheus text format (version 0.0.4) of an [`Overview`] and the provider counters.
//!
//! Metrics the OpenFaaS gateway has keep its names and labels, so that existing dashboards
//! work unchanged; the rest are prefixed `defrost_`. `function_name` is `name.namespace`.

use std::fmt::Write;

use super::overview::Overview;
use super::{Operation, ProviderCalls};
use crate::histogram::{Histogram, Reading};
use crate::queue::{QueueRow, QueueStats};
use crate::table::FunctionRecord;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub fn render(overview: &Overview, calls: &ProviderCalls) -> String {
    let mut out = Text(String::with_capacity(4096));
    invocations(&mut out, overview);
    retries(&mut out, overview);
    replicas(&mut out, overview);
    failing(&mut out, overview);
    load(&mut out, overview);
    cold_starts(&mut out, overview);
    provider_calls(&mut out, calls);
    coalescing(&mut out, overview);
    if let Some(queue) = &overview.queue {
        async_queue(&mut out, queue);
    }
    out.0
}

/// A per-function series of the async queue: name, type, help, value.
type QueueSeries = (
    &'static str,
    &'static str,
    &'static str,
    fn(&QueueRow) -> u64,
);

/// The async queue, per function, and the store's size.
fn async_queue(out: &mut Text, queue: &QueueStats) {
    let rows = &queue.functions;
    let series: [QueueSeries; 6] = [
        (
            "defrost_async_queued",
            "gauge",
            "Asynchronous calls accepted and waiting to run.",
            |r| r.queued,
        ),
        (
            "defrost_async_running",
            "gauge",
            "Asynchronous calls running now.",
            |r| r.running,
        ),
        (
            "defrost_async_retried_total",
            "counter",
            "Attempts of asynchronous calls answered 429, 502, 503 or 504 and tried again later.",
            |r| r.retried,
        ),
        (
            "defrost_async_failed_total",
            "counter",
            "Asynchronous calls whose final answer was an error (4xx, 5xx).",
            |r| r.failed,
        ),
        (
            "defrost_async_completed_total",
            "counter",
            "Asynchronous calls run to a successful answer.",
            |r| r.completed,
        ),
        (
            "defrost_async_callback_failures_total",
            "counter",
            "Callbacks not delivered after every attempt.",
            |r| r.callback_failures,
        ),
    ];
    for (name, kind, help, value) in series {
        per_function(
            out,
            (name, kind),
            help,
            rows.iter().map(|r| (r.function.as_str(), value(r))),
        );
    }
    out.head(
        "defrost_async_store_bytes",
        "gauge",
        "Size of the asynchronous queue's store on disk.",
    );
    out.sample("defrost_async_store_bytes", &[], queue.disk_bytes);
    if let Some(messages) = queue.stream_messages {
        out.head(
            "defrost_async_stream_messages",
            "gauge",
            "Calls in the JetStream stream, from every gateway, as last asked.",
        );
        out.sample("defrost_async_stream_messages", &[], messages);
    }
}

/// Appends the upgraded connections open now (WebSocket and others) to a scrape.
pub fn upgraded_connections(scrape: &mut String, open: usize) {
    let mut out = Text(std::mem::take(scrape));
    let name = "gateway_upgraded_connections";
    out.head(
        name,
        "gauge",
        "Upgraded connections (WebSocket and others) being relayed.",
    );
    out.sample(name, &[], open as u64);
    *scrape = out.0;
}

const ANSWERED: &str = "Calls to a function that were answered, by status code.";
const ANSWER_TIME: &str = "Time taken to answer a call, by status code.";

fn invocations(out: &mut Text, overview: &Overview) {
    per_function(
        out,
        ("gateway_function_invocation_started", "counter"),
        "Calls to a function that were started.",
        counted(overview).map(|(name, r)| (name, r.counters().started())),
    );
    let total = "gateway_function_invocation_total";
    out.head(total, "counter", ANSWERED);
    for (labels, h) in per_code(overview) {
        out.sample(total, &labels.pairs(), h.count());
    }
    let seconds = "gateway_functions_seconds";
    out.head(seconds, "histogram", ANSWER_TIME);
    for (labels, h) in per_code(overview) {
        out.histogram(seconds, &labels.pairs(), &h.read());
    }
}

fn retries(out: &mut Text, overview: &Overview) {
    let name = "defrost_upstream_retries_total";
    out.head(
        name,
        "counter",
        "Calls sent to a replica again, by reason (stale_connection: a pooled connection the \
         replica had closed before answering).",
    );
    for (function, r) in counted(overview) {
        let labels = [("function_name", function), ("reason", "stale_connection")];
        out.sample(name, &labels, r.counters().stale_retries());
    }
}

fn replicas(out: &mut Text, overview: &Overview) {
    let listed = || {
        overview
            .functions
            .iter()
            .filter_map(|r| Some((r.function.key(), r.desired?, r.ready?)))
    };
    let desired = "Replicas the provider has been asked to run.";
    per_function(
        out,
        ("gateway_service_count", "gauge"),
        desired,
        listed().map(|(name, d, _)| (name, d)),
    );
    per_function(
        out,
        ("defrost_function_replicas_desired", "gauge"),
        desired,
        listed().map(|(name, d, _)| (name, d)),
    );
    per_function(
        out,
        ("defrost_function_replicas_ready", "gauge"),
        "Replicas ready to take calls.",
        listed().map(|(name, _, r)| (name, r)),
    );
    let parked = || {
        overview
            .functions
            .iter()
            .filter(|r| r.desired.is_some())
            .map(|r| (r.function.key(), r.parked))
    };
    per_function(
        out,
        ("defrost_function_replicas_parked", "gauge"),
        "Replicas frozen while the function is idle; the next call thaws them.",
        parked().map(|(name, p)| (name, p.replicas)),
    );
    per_function(
        out,
        ("defrost_function_parked_memory_bytes", "gauge"),
        "Resident memory kept by the function's parked replicas.",
        parked().map(|(name, p)| (name, p.memory_bytes)),
    );
}

/// The crash-loop state: a function whose replicas keep failing shows how many failed in a
/// row and how long its next start is held back (both zero once a replica has run a while).
fn failing(out: &mut Text, overview: &Overview) {
    let failing = || {
        overview
            .functions
            .iter()
            .filter(|r| r.desired.is_some())
            .map(|r| (r.function.key(), r.failing.as_ref()))
    };
    per_function(
        out,
        ("defrost_function_failures_in_a_row", "gauge"),
        "Replicas that failed one after another (exited unexpectedly or never got ready).",
        failing().map(|(name, f)| (name, f.map_or(0, |f| u64::from(f.in_a_row)))),
    );
    out.head(
        "defrost_function_restart_held_seconds",
        "gauge",
        "How long the next start of a failing function is held back (crash-loop back-off).",
    );
    for (name, f) in failing() {
        let held = f.map_or(0.0, |f| f.next_start_in.as_secs_f64());
        out.sample_f64(
            "defrost_function_restart_held_seconds",
            &[("function_name", name)],
            held,
        );
    }
}

fn load(out: &mut Text, overview: &Overview) {
    per_function(
        out,
        ("defrost_function_in_flight", "gauge"),
        "Calls to a function being answered now.",
        counted(overview).map(|(name, r)| (name, r.in_flight() as u64)),
    );
    per_function(
        out,
        ("defrost_function_waiting", "gauge"),
        "Calls waiting for a ready replica of a function, or for a free slot on one, now.",
        overview
            .functions
            .iter()
            .map(|r| (r.function.key(), r.waiting() as u64)),
    );
    per_function(
        out,
        ("defrost_function_queued_for_slot", "gauge"),
        "Calls waiting for a free slot on a ready replica of a function now (max_concurrency).",
        overview
            .functions
            .iter()
            .map(|r| (r.function.key(), r.queued_for_slot() as u64)),
    );
    out.head(
        "defrost_waiting_requests",
        "gauge",
        "Calls waiting for a ready replica or a free slot now, across all functions.",
    );
    out.sample(
        "defrost_waiting_requests",
        &[],
        overview.waiting_total as u64,
    );
}

fn cold_starts(out: &mut Text, overview: &Overview) {
    out.head(
        "defrost_cold_start_seconds",
        "histogram",
        "Time from the first scale call to a ready replica, for a function at zero.",
    );
    for (name, r) in counted(overview) {
        let labels = [("function_name", name)];
        out.histogram(
            "defrost_cold_start_seconds",
            &labels,
            &r.counters().cold_starts().read(),
        );
    }
}

/// The labels of a series by function and status code.
struct CodeLabels<'a> {
    function: &'a str,
    code: String,
}

impl CodeLabels<'_> {
    fn pairs(&self) -> [(&str, &str); 2] {
        [
            ("function_name", self.function),
            ("code", self.code.as_str()),
        ]
    }
}

/// The durations of every status code every function answered, with their labels.
fn per_code(overview: &Overview) -> impl Iterator<Item = (CodeLabels<'_>, &Histogram)> {
    counted(overview).flat_map(|(function, r)| {
        r.counters().by_code().map(move |(code, h)| {
            let code = code.to_string();
            (CodeLabels { function, code }, h)
        })
    })
}

/// A metric with one series per function.
fn per_function<'a>(
    out: &mut Text,
    (metric, kind): (&str, &str),
    help: &str,
    values: impl Iterator<Item = (&'a str, u64)>,
) {
    out.head(metric, kind, help);
    for (function, value) in values {
        out.sample(metric, &[("function_name", function)], value);
    }
}

fn provider_calls(out: &mut Text, calls: &ProviderCalls) {
    out.head(
        "defrost_provider_calls_total",
        "counter",
        "Calls to the provider, by operation and outcome (not-found is an answer, not an error).",
    );
    for op in Operation::ALL {
        let (ok, failed) = calls.counts(op);
        for (outcome, n) in [("ok", ok), ("error", failed)] {
            let labels = [("operation", op.name()), ("outcome", outcome)];
            out.sample("defrost_provider_calls_total", &labels, n);
        }
    }
    out.head(
        "defrost_provider_call_seconds",
        "histogram",
        "Time taken by calls to the provider.",
    );
    for op in Operation::ALL {
        let labels = [("operation", op.name())];
        out.histogram(
            "defrost_provider_call_seconds",
            &labels,
            &calls.latency(op).read(),
        );
    }
}

fn coalescing(out: &mut Text, overview: &Overview) {
    let calls = [
        ("status", overview.status_calls),
        ("scale", overview.scale_calls),
    ];
    out.head(
        "defrost_singleflight_calls_total",
        "counter",
        "Status queries and scale calls made to the provider through the single-flight.",
    );
    for (call, (made, _)) in calls {
        out.sample("defrost_singleflight_calls_total", &[("call", call)], made);
    }
    out.head(
        "defrost_singleflight_coalesced_total",
        "counter",
        "Callers that shared another caller's status query or scale call instead of making one.",
    );
    for (call, (_, shared)) in calls {
        out.sample(
            "defrost_singleflight_coalesced_total",
            &[("call", call)],
            shared,
        );
    }
}

/// Functions with counters, with their `function_name` label.
fn counted(overview: &Overview) -> impl Iterator<Item = (&str, &FunctionRecord)> {
    overview
        .functions
        .iter()
        .filter_map(|r| Some((r.function.key(), r.record.as_deref()?)))
}

struct Text(String);

impl Text {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.series(name, labels, None);
        let _ = writeln!(self.0, " {value}");
    }

    fn sample_f64(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.series(name, labels, None);
        let _ = writeln!(self.0, " {value}");
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], reading: &Reading) {
        let bucket = format!("{name}_bucket");
        for &(bound, count) in &reading.buckets {
            let le = if bound.is_infinite() {
                "+Inf".to_owned()
            } else {
                bound.to_string()
            };
            self.series(&bucket, labels, Some(&le));
            let _ = writeln!(self.0, " {count}");
        }
        self.series(&format!("{name}_sum"), labels, None);
        let _ = writeln!(self.0, " {}", reading.sum_seconds);
        self.sample(&format!("{name}_count"), labels, reading.count);
    }

    fn series(&mut self, name: &str, labels: &[(&str, &str)], le: Option<&str>) {
        self.0.push_str(name);
        let all = labels.iter().copied().chain(le.map(|le| ("le", le)));
        for (i, (key, value)) in all.enumerate() {
            self.0.push(if i == 0 { '{' } else { ',' });
            let _ = write!(self.0, "{key}=\"{}\"", escape(value));
        }
        if !labels.is_empty() || le.is_some() {
            self.0.push('}');
        }
    }
}

/// Label values escape backslash, quote and newline, as the format requires.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_and_histograms_are_well_formed() {
        let mut out = Text(String::new());
        out.sample("x_total", &[("a", "q\"\\\n")], 3);
        out.sample("y", &[], 1);
        let h = Histogram::new(&[0.5]);
        h.record(std::time::Duration::from_millis(100));
        h.record(std::time::Duration::from_secs(2));
        out.histogram("z_seconds", &[("f", "g")], &h.read());
        assert_eq!(
            out.0,
            "x_total{a=\"q\\\"\\\\\\n\"} 3\ny 1\n\
             z_seconds_bucket{f=\"g\",le=\"0.5\"} 1\n\
             z_seconds_bucket{f=\"g\",le=\"+Inf\"} 2\n\
             z_seconds_sum{f=\"g\"} 2.1\n\
             z_seconds_count{f=\"g\"} 2\n"
        );
    }
}
