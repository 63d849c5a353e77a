//! One thread per namespace and kind keeps the cache current: list, then watch from the list's
//! resource version, resume from the last version seen when the stream ends or breaks, and
//! list again when the server says that version is gone (410). An API server that is down or
//! refuses the credentials is retried with back-off; the cache keeps what it had meanwhile.

use std::io::BufRead;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use super::api::{Api, ApiError, WATCH_SECONDS};
use super::cache::{Cache, Kind, FUNCTION_LABEL};
use super::objects::{Deployment, EndpointSlice, List, Meta, Status, WatchEvent};

/// Longest line of a watch stream (one object) read before the stream is dropped.
const MAX_EVENT: usize = 8 << 20;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Where a kind's objects live in a namespace; `None` while the slice version is unknown.
pub fn collection(api: &Api, kind: Kind, namespace: &str) -> Result<String, ApiError> {
    Ok(match kind {
        Kind::Deployments => format!(
            "/apis/apps/v1/namespaces/{namespace}/deployments?labelSelector={}",
            FUNCTION_LABEL.replace('/', "%2F")
        ),
        Kind::Slices => format!(
            "/apis/{}/namespaces/{namespace}/endpointslices?labelSelector={}",
            api.slice_version()?,
            super::objects::SERVICE_NAME_LABEL.replace('/', "%2F")
        ),
    })
}

/// Starts the watch of `kind` in `namespace`; it runs until `stop` is set.
pub fn spawn(
    api: Arc<Api>,
    cache: Arc<Cache>,
    namespace: String,
    kind: Kind,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    thread::Builder::new()
        .name(format!("kube-watch-{namespace}"))
        .spawn(move || {
            let mut watch = Watch {
                api: &api,
                cache: &cache,
                namespace: &namespace,
                kind,
                stop: &stop,
                backoff: FIRST_BACKOFF,
            };
            watch.run();
        })
        .map(|_| ())
}

struct Watch<'a> {
    api: &'a Api,
    cache: &'a Cache,
    namespace: &'a str,
    kind: Kind,
    stop: &'a AtomicBool,
    backoff: Duration,
}

/// How a watch stream ended.
enum Ended {
    /// Resume from this version.
    Resume(String),
    /// The version is gone, or the stream said something unusable: list again.
    Relist,
}

impl Watch<'_> {
    fn run(&mut self) {
        while !self.stop.load(Ordering::SeqCst) {
            let Some(mut version) = self.list() else {
                self.pause();
                continue;
            };
            loop {
                if self.stop.load(Ordering::SeqCst) {
                    return;
                }
                match self.follow(&version) {
                    Ok(Ended::Resume(at)) => version = at,
                    Ok(Ended::Relist) | Err(ApiError::Gone) => break,
                    Err(e) => {
                        log::debug!(
                            "kubernetes: watch of {:?} in {}: {e:?}",
                            self.kind,
                            self.namespace
                        );
                        self.pause();
                    }
                }
            }
        }
    }

    fn pause(&mut self) {
        thread::sleep(self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// Lists the kind and replaces the cache's view; returns the list's version.
    fn list(&mut self) -> Option<String> {
        let listed =
            collection(self.api, self.kind, self.namespace).and_then(|path| match self.kind {
                Kind::Deployments => self.api.get::<List<Deployment>>(&path).map(|l| {
                    self.cache.replace_deployments(self.namespace, &l.items);
                    l.metadata.resource_version
                }),
                Kind::Slices => self.api.get::<List<EndpointSlice>>(&path).map(|l| {
                    self.cache.replace_slices(self.namespace, &l.items);
                    l.metadata.resource_version
                }),
            });
        match listed {
            Ok(version) => {
                self.backoff = FIRST_BACKOFF;
                Some(version)
            }
            Err(e) => {
                self.cache.unsync(self.namespace, self.kind);
                log::debug!(
                    "kubernetes: listing {:?} in {}: {e:?}",
                    self.kind,
                    self.namespace
                );
                None
            }
        }
    }

    /// Follows one watch call from `version` until the server ends it.
    fn follow(&mut self, version: &str) -> Result<Ended, ApiError> {
        let path = format!(
            "{}&watch=true&allowWatchBookmarks=true&timeoutSeconds={WATCH_SECONDS}&resourceVersion={version}",
            collection(self.api, self.kind, self.namespace)?
        );
        let mut stream = self.api.watch(&path)?;
        self.backoff = FIRST_BACKOFF;
        let mut version = version.to_owned();
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = std::io::Read::take(&mut stream, MAX_EVENT as u64)
                .read_until(b'\n', &mut line)
                .map_err(|e| ApiError::Unreachable(format!("watch stream: {e}")))?;
            if read == 0 {
                return Ok(Ended::Resume(version));
            }
            if line.len() >= MAX_EVENT {
                log::warn!("kubernetes: a watch event over {MAX_EVENT} bytes; listing again");
                return Ok(Ended::Relist);
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match self.apply(&line) {
                Some(at) => version = at,
                None => return Ok(Ended::Relist),
            }
        }
    }

    /// Applies one event; returns the version to resume from, `None` to list again.
    fn apply(&self, line: &[u8]) -> Option<String> {
        let event: WatchEvent = serde_json::from_slice(line)
            .map_err(|e| log::warn!("kubernetes: unreadable watch event: {e}"))
            .ok()?;
        if event.kind == "ERROR" {
            let status: Status = serde_json::from_value(event.object).unwrap_or_default();
            if status.code != 410 {
                log::warn!(
                    "kubernetes: watch of {:?} in {} ended: {} {}",
                    self.kind,
                    self.namespace,
                    status.code,
                    status.message
                );
            }
            return None;
        }
        let meta: Meta = serde_json::from_value(event.object["metadata"].clone()).ok()?;
        let deleted = event.kind == "DELETED";
        if event.kind != "BOOKMARK" {
            match self.kind {
                Kind::Deployments => {
                    let d: Deployment = serde_json::from_value(event.object).ok()?;
                    if deleted {
                        self.cache.remove_deployment(&d);
                    } else {
                        self.cache.put_deployment(&d);
                    }
                }
                Kind::Slices => {
                    let s: EndpointSlice = serde_json::from_value(event.object).ok()?;
                    if deleted {
                        self.cache.remove_slice(&s);
                    } else {
                        self.cache.put_slice(&s);
                    }
                }
            }
        }
        Some(meta.resource_version)
    }
}
