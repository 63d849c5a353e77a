//! One thread that looks for the listeners of all starting replicas at once.
//!
//! A starting replica should be seen listening within a fraction of a millisecond of doing so,
//! however long it took to start and however many replicas are starting beside it. Looking for
//! each replica on its own would make the cost grow with their number (a hundred replicas
//! looked at every quarter millisecond is 400,000 lookups a second), or, bounded, make each one
//! be seen later. Instead one thread asks the kernel for every listening port in one dump per
//! tick ([`Query::listening_ports`]) and wakes the replicas whose port has appeared: the cost
//! is that of the dump, whether one replica is starting or a thousand. The thread sleeps while
//! no replica is starting.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::listening::Query;

/// Interval while the replica is young.
pub(super) const YOUNG_INTERVAL: Duration = Duration::from_micros(250);
/// How long the replica counts as young.
pub(super) const YOUNG: Duration = Duration::from_millis(300);
/// Interval for a replica past its youth that does not listen yet.
pub(super) const INTERVAL: Duration = Duration::from_millis(1);
/// Longest a waiter sleeps before looking at its halt flag again: a halted replica's fate is
/// settled elsewhere, so its prober may linger that long, and waking seldom keeps a hundred
/// waiting probers cheap.
const HALT_CHECK: Duration = Duration::from_millis(100);

/// What a replica waiting for its listener learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Seen {
    Listening,
    TimedOut,
    Halted,
}

/// The replicas waiting for their listeners, and the thread looking for them.
pub(super) struct Watch {
    state: Mutex<State>,
    /// The watching thread waits here while nobody is waiting.
    work: Condvar,
    /// Waiters wait here for a tick to find their port.
    found: Condvar,
}

#[derive(Default)]
struct State {
    waiting: Vec<Waiter>,
    next_id: u64,
}

struct Waiter {
    id: u64,
    port: u16,
    since: Instant,
    listening: bool,
}

impl Watch {
    /// The process's watch, its thread started on first use; `None` where the kernel cannot
    /// list listeners (the caller then connects to find out).
    pub(super) fn shared() -> Option<&'static Watch> {
        static WATCH: OnceLock<Option<Arc<Watch>>> = OnceLock::new();
        WATCH.get_or_init(Watch::start).as_deref()
    }

    fn start() -> Option<Arc<Watch>> {
        let query = Query::open()?;
        let watch = Arc::new(Watch {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            found: Condvar::new(),
        });
        let watcher = Arc::clone(&watch);
        let spawned = thread::Builder::new()
            .name("listen-watch".into())
            .stack_size(64 * 1024)
            .spawn(move || watcher.run(&query));
        match spawned {
            Ok(_) => Some(watch),
            Err(e) => {
                log::warn!(
                    "cannot start the listener watch ({e}); readiness is probed by connecting"
                );
                None
            }
        }
    }

    /// Blocks until something listens on `port` (reachable at 127.0.0.1), `deadline` passes or
    /// `halt` is set.
    pub(super) fn until_listening(&self, port: u16, deadline: Instant, halt: &AtomicBool) -> Seen {
        let mut state = self.state.lock();
        let id = state.next_id;
        state.next_id += 1;
        state.waiting.push(Waiter {
            id,
            port,
            since: Instant::now(),
            listening: false,
        });
        self.work.notify_one();
        let seen = loop {
            let listening = state.waiting.iter().any(|w| w.id == id && w.listening);
            if listening {
                break Seen::Listening;
            }
            if halt.load(Ordering::Relaxed) {
                break Seen::Halted;
            }
            let now = Instant::now();
            if now >= deadline {
                break Seen::TimedOut;
            }
            self.found
                .wait_for(&mut state, (deadline - now).min(HALT_CHECK));
        };
        state.waiting.retain(|w| w.id != id);
        seen
    }

    fn run(&self, query: &Query) {
        let mut listening = HashSet::new();
        loop {
            let tick = self.next_tick();
            listening.clear();
            match query.listening_ports(&mut listening) {
                Ok(()) if self.mark(&listening) => {
                    self.found.notify_all();
                }
                Ok(()) => {}
                // A failed dump is retried next tick; the waiters' own deadlines bound them.
                Err(e) => log::debug!("listener dump failed: {e}"),
            }
            thread::sleep(tick);
        }
    }

    /// Waits until somebody is waiting, then says how soon to look again.
    fn next_tick(&self) -> Duration {
        let mut state = self.state.lock();
        while state.waiting.iter().all(|w| w.listening) {
            self.work.wait(&mut state);
        }
        let young = state
            .waiting
            .iter()
            .any(|w| !w.listening && w.since.elapsed() < YOUNG);
        if young {
            YOUNG_INTERVAL
        } else {
            INTERVAL
        }
    }

    /// Marks the waiters whose port listens; true if any was newly marked.
    fn mark(&self, listening: &HashSet<u16>) -> bool {
        let mut state = self.state.lock();
        let mut marked = false;
        for waiter in state.waiting.iter_mut().filter(|w| !w.listening) {
            if listening.contains(&waiter.port) {
                waiter.listening = true;
                marked = true;
            }
        }
        marked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn watch() -> &'static Watch {
        Watch::shared().expect("sock_diag works on the Linux this runs on")
    }

    fn in_ms(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    #[test]
    fn a_port_that_listens_is_seen() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let halt = AtomicBool::new(false);
        assert_eq!(
            watch().until_listening(port, in_ms(5_000), &halt),
            Seen::Listening
        );
    }

    #[test]
    fn a_port_that_starts_listening_later_is_seen_then() {
        let reserved = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = reserved.local_addr().unwrap().port();
        drop(reserved);
        let opener = thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            TcpListener::bind(("127.0.0.1", port))
        });
        let halt = AtomicBool::new(false);
        let seen = watch().until_listening(port, in_ms(5_000), &halt);
        let listener = opener.join().unwrap();
        if listener.is_ok() {
            assert_eq!(seen, Seen::Listening);
        }
    }

    #[test]
    fn many_waiters_are_each_told_about_their_own_port() {
        let listeners: Vec<_> = (0..50)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let waiters: Vec<_> = listeners
            .iter()
            .map(|l| {
                let port = l.local_addr().unwrap().port();
                thread::spawn(move || {
                    watch().until_listening(port, in_ms(5_000), &AtomicBool::new(false))
                })
            })
            .collect();
        for waiter in waiters {
            assert_eq!(waiter.join().unwrap(), Seen::Listening);
        }
    }

    #[test]
    fn nobody_listening_times_out_and_halt_stops_the_wait() {
        let reserved = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = reserved.local_addr().unwrap().port();
        drop(reserved);
        let not_halted = AtomicBool::new(false);
        assert_eq!(
            watch().until_listening(port, in_ms(30), &not_halted),
            Seen::TimedOut
        );
        let halted = AtomicBool::new(true);
        assert_eq!(
            watch().until_listening(port, in_ms(5_000), &halted),
            Seen::Halted
        );
    }
}
