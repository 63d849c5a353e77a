//! Posting a function's answer to the caller's `X-Callback-Url`, with the headers the OpenFaaS
//! queue-worker sends: `X-Call-Id`, `X-Function-Status`, `X-Duration-Seconds` (and
//! `X-Function-Name`), the function's `Content-Type`, its body.

use std::time::Duration;

use ureq::Agent;

use super::store::Meta;
use super::Answer;
use crate::client::{self, Timeouts};
use crate::redact;

/// Delivers callbacks, a bounded number of attempts each.
pub struct Callbacks {
    agent: Agent,
    attempts: u32,
    backoff: Duration,
}

impl Callbacks {
    pub fn new(attempts: u32, timeout: Duration, backoff: Duration) -> Callbacks {
        let timeouts = Timeouts {
            connect: timeout,
            response: timeout,
            send: timeout,
        };
        Callbacks {
            agent: client::agent(timeouts, 4),
            attempts: attempts.max(1),
            backoff,
        }
    }

    /// Posts `answer` to the call's callback URL, if it has one; false when every attempt
    /// failed.
    pub fn answer(&self, meta: &Meta, answer: &Answer, took: Duration) -> bool {
        meta.callback
            .as_ref()
            .is_none_or(|url| self.deliver(url, meta, answer, took))
    }

    /// Posts `answer` to `url`; false when every attempt failed (each failure is logged).
    pub fn deliver(&self, url: &str, meta: &Meta, answer: &Answer, took: Duration) -> bool {
        let function = format!("{}.{}", meta.function, meta.namespace);
        for attempt in 1..=self.attempts {
            match self.post(url, meta, &function, answer, took) {
                Ok(()) => return true,
                Err(why) => log::warn!(
                    "callback for call {} of {function} to {} failed (attempt {attempt} of {}): {why}",
                    meta.call_id,
                    redact::url(url),
                    self.attempts
                ),
            }
            if attempt < self.attempts {
                std::thread::sleep(self.backoff.saturating_mul(1 << (attempt - 1).min(10)));
            }
        }
        false
    }

    fn post(
        &self,
        url: &str,
        meta: &Meta,
        function: &str,
        answer: &Answer,
        took: Duration,
    ) -> Result<(), String> {
        let mut request = self
            .agent
            .post(url)
            .header("X-Call-Id", &meta.call_id)
            .header("X-Function-Status", answer.status.to_string())
            .header("X-Duration-Seconds", format!("{:.6}", took.as_secs_f64()))
            .header("X-Function-Name", function);
        if let Some(content_type) = &answer.content_type {
            request = request.header("Content-Type", content_type);
        }
        let response = request.send(&answer.body[..]).map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        // The receiver's answer is read to the end (bounded) so the connection can be reused.
        let _ = response
            .into_body()
            .with_config()
            .limit(64 << 10)
            .read_to_vec();
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    }
}

/// A callback URL the queue can post to: absolute `http` or `https`.
pub fn check_url(url: &str) -> Result<(), String> {
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|e| format!("X-Callback-Url {url:?} is not a URL: {e}"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(()),
        _ => Err(format!(
            "X-Callback-Url {url:?} must be an absolute http or https URL"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_absolute_http_urls_are_callbacks() {
        assert!(check_url("http://127.0.0.1:9/done").is_ok());
        assert!(check_url("https://example.test/x?y=1").is_ok());
        for bad in ["/relative", "ftp://host/x", "not a url", ""] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}
