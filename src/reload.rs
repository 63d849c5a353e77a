//! Living with a running gateway: stop on SIGTERM/SIGINT, reload the config file on SIGHUP or,
//! with `--watch`, whenever the file changes.
//!
//! A reload reads and validates the whole file first; a file that does not validate is refused
//! with a logged error and the running configuration stays. What a reload changes is swapped in
//! atomically: requests in flight, and requests waiting for a replica, finish on the table they
//! started with.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, SystemTime};

use crossbeam::channel::{self, Receiver, Sender};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::config::{Loaded, SetupError};
use crate::Gateway;

/// How often `--watch` looks at the file.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

enum Event {
    Stop(i32),
    Reload(&'static str),
}

/// Blocks until SIGTERM or SIGINT, reloading `config` on SIGHUP (and on change, if `watch`).
pub fn serve_until_stopped(
    gateway: &Gateway,
    config: Option<&Path>,
    watch: bool,
) -> Result<(), SetupError> {
    let (tx, rx) = channel::unbounded();
    forward_signals(tx.clone())?;
    if let (true, Some(path)) = (watch, config) {
        watch_file(path.to_owned(), tx);
    }
    wait(gateway, config, &rx);
    Ok(())
}

fn wait(gateway: &Gateway, config: Option<&Path>, events: &Receiver<Event>) {
    while let Ok(event) = events.recv() {
        match (event, config) {
            (Event::Stop(signal), _) => {
                log::info!("signal {signal} received; shutting down");
                return;
            }
            (Event::Reload(why), Some(path)) => reload(gateway, path, why),
            (Event::Reload(why), None) => log::warn!("{why}: no config file to reload"),
        }
    }
}

fn reload(gateway: &Gateway, path: &Path, why: &str) {
    log::info!("{why}: reloading {}", path.display());
    let outcome = Loaded::read(path)
        .map_err(SetupError::from)
        .and_then(|loaded| gateway.reload(&loaded));
    if let Err(e) = outcome {
        log::error!("reload refused, the running configuration stays: {e}");
    }
}

fn forward_signals(tx: Sender<Event>) -> Result<(), SetupError> {
    let system = |what: &str, e: std::io::Error| {
        SetupError::System(std::io::Error::new(e.kind(), format!("{what}: {e}")))
    };
    let mut signals =
        Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(|e| system("cannot watch signals", e))?;
    thread::Builder::new()
        .name("defrost-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let event = if signal == SIGHUP {
                    Event::Reload("SIGHUP")
                } else {
                    Event::Stop(signal)
                };
                if tx.send(event).is_err() {
                    return;
                }
            }
        })
        .map(drop)
        .map_err(|e| system("cannot start the signal thread", e))
}

/// Polls the file's modification time and size: portable, and cheap at this interval.
fn watch_file(path: PathBuf, tx: Sender<Event>) {
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().ok(), m.len()))
    };
    let shown = path.display().to_string();
    let spawned = thread::Builder::new()
        .name("defrost-watch".into())
        .spawn(move || {
            let mut last: Option<(Option<SystemTime>, u64)> = stamp(&path);
            loop {
                thread::sleep(WATCH_INTERVAL);
                let now = stamp(&path);
                if now.is_some() && now != last {
                    last = now;
                    if tx.send(Event::Reload("config file changed")).is_err() {
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot watch {shown}: {e}");
    }
}
