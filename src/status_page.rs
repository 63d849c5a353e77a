//! The status page: one self-contained HTML document listing every function, for an operator
//! with a browser and no dashboard.
//!
//! It is rendered on the server and refreshes itself with a meta refresh, so it needs no
//! script, no external asset and no second endpoint, and works where scripts are blocked.

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::metrics::overview::{FunctionRow, Overview};
use crate::queue::QueueStats;

pub const CONTENT_TYPE: &str = "text/html; charset=utf-8";

/// Seconds between refreshes.
const REFRESH_SECS: u32 = 5;

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse}th,td{padding:.3em .8em;border-bottom:1px solid #ddd;\
text-align:right}th:first-child,td:first-child,th:nth-child(2),td:nth-child(2)\
{text-align:left}.warn{color:#a40}";

pub fn render(overview: &Overview) -> String {
    let mut html = String::with_capacity(2048);
    let _ = write!(
        html,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <title>defrost</title><style>{STYLE}</style></head><body>\
         <h1>defrost {}</h1>",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(error) = &overview.provider_error {
        let _ = write!(html, "<p class=\"warn\">provider: {}</p>", escape(error));
    }
    let _ = write!(
        html,
        "<p>{} waiting for a replica · status queries {} (shared {}) · scale calls {} \
         (shared {})</p>",
        overview.waiting_total,
        overview.status_calls.0,
        overview.status_calls.1,
        overview.scale_calls.0,
        overview.scale_calls.1
    );
    html.push_str(
        "<table id=\"functions\"><thead><tr><th>function</th><th>namespace</th>\
         <th>ready / desired</th><th>in flight</th><th>waiting</th><th>queued for a slot</th><th>invocations</th>\
         <th>last cold start</th><th>parked</th><th>failing</th></tr></thead><tbody>",
    );
    let now_ms = unix_ms();
    for row in &overview.functions {
        function_row(&mut html, row, now_ms);
    }
    if overview.functions.is_empty() {
        html.push_str("<tr><td colspan=\"10\">no functions</td></tr>");
    }
    html.push_str("</tbody></table>");
    if let Some(queue) = &overview.queue {
        async_queue(&mut html, queue);
    }
    let _ = writeln!(
        html,
        "<p><small>refreshes every {REFRESH_SECS}s · \
         <a href=\"/metrics\">/metrics</a></small></p></body></html>"
    );
    html
}

/// The async queue's depth per function.
fn async_queue(html: &mut String, queue: &QueueStats) {
    let _ = write!(
        html,
        "<h2>async queue</h2><p>{}</p><table id=\"queue\"><thead><tr>\
         <th>function</th><th>queued</th><th>running</th><th>retried</th><th>failed</th>\
         <th>completed</th><th>callback failures</th></tr></thead><tbody>",
        match queue.stream_messages {
            Some(n) => format!("{n} calls in the JetStream stream, from every gateway"),
            None => format!(
                "store {:.1} MiB on disk",
                queue.disk_bytes as f64 / 1048576.0
            ),
        }
    );
    for r in &queue.functions {
        let _ = write!(
            html,
            "<tr data-function=\"{f}\"><td>{f}</td><td class=\"queued\">{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            r.queued,
            r.running,
            r.retried,
            r.failed,
            r.completed,
            r.callback_failures,
            f = escape(&r.function),
        );
    }
    if queue.functions.is_empty() {
        html.push_str("<tr><td colspan=\"7\">nothing queued yet</td></tr>");
    }
    html.push_str("</tbody></table>");
}

fn function_row(html: &mut String, row: &FunctionRow, now_ms: u64) {
    let count = |n: Option<u64>| n.map_or("?".to_owned(), |n| n.to_string());
    let record = row.record.as_deref();
    let cold =
        record
            .and_then(|r| r.counters().last_cold_start())
            .map_or("never".to_owned(), |c| {
                let ago = now_ms.saturating_sub(c.at_unix_ms) / 1000;
                format!("{:.3}s, {ago}s ago", c.took_ms as f64 / 1e3)
            });
    let _ = write!(
        html,
        "<tr data-function=\"{key}\"><td>{name}</td><td>{namespace}</td><td>{ready} / {desired}</td>\
         <td>{in_flight}</td><td>{waiting}</td><td class=\"queued\">{queued}</td><td class=\"invocations\">{invocations}</td>\
         <td>{cold}</td><td class=\"parked\">{parked}</td><td class=\"failing\">{failing}</td></tr>",
        key = escape(row.function.key()),
        name = escape(row.function.name()),
        namespace = escape(row.function.namespace()),
        ready = count(row.ready),
        desired = count(row.desired),
        in_flight = record.map_or(0, |r| r.in_flight()),
        waiting = row.waiting(),
        queued = row.queued_for_slot(),
        invocations = record.map_or(0, |r| r.counters().invocations()),
        parked = match row.parked.replicas {
            0 => String::new(),
            n => format!("{n} ({:.1} MiB)", row.parked.memory_bytes as f64 / 1048576.0),
        },
        failing = row.failing.as_ref().map_or(String::new(), |f| escape(&format!(
            "{} in a row, next start in {:.0}s: {}",
            f.in_a_row,
            f.next_start_in.as_secs_f64().ceil(),
            f.reason
        ))),
    );
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Names are DNS labels, but the provider's error text is not.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::function::FunctionRef;

    #[test]
    fn lists_functions_and_escapes_provider_errors() {
        let overview = Overview {
            functions: vec![FunctionRow {
                function: FunctionRef::new("echo", "team-a").unwrap(),
                desired: Some(2),
                ready: Some(1),
                failing: Some(crate::provider::StartFailure {
                    reason: "echo#3 exited <unexpectedly>".into(),
                    in_a_row: 3,
                    next_start_in: std::time::Duration::from_millis(1500),
                }),
                parked: crate::provider::Parked {
                    replicas: 1,
                    memory_bytes: 3 * 1048576,
                },
                record: None,
            }],
            provider_error: Some("<script>".into()),
            waiting_total: 3,
            status_calls: (1, 0),
            scale_calls: (1, 0),
            queue: Some(QueueStats {
                functions: vec![crate::queue::QueueRow {
                    function: "echo.team-a".into(),
                    queued: 7,
                    running: 1,
                    retried: 0,
                    failed: 0,
                    completed: 2,
                    callback_failures: 0,
                }],
                disk_bytes: 1 << 20,
                stream_messages: None,
            }),
        };
        let html = render(&overview);
        assert!(html.contains("<td class=\"queued\">7</td>"), "{html}");
        assert!(
            html.contains("<td>echo</td><td>team-a</td><td>1 / 2</td>"),
            "{html}"
        );
        assert!(html.contains("&lt;script&gt;") && !html.contains("<script>"));
        assert!(
            html.contains("3 in a row, next start in 2s: echo#3 exited &lt;unexpectedly&gt;"),
            "{html}"
        );
        assert!(
            html.contains("<td class=\"parked\">1 (3.0 MiB)</td>"),
            "{html}"
        );
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "external asset"
        );
    }
}
