//! What each function's replicas printed lately, kept so that `/system/logs` can show it.
//!
//! One ring per function, shared by all its replicas (a reload that replaces the function keeps
//! its ring: the output before and after the change belongs to the same function). A ring
//! holds at most [`MAX_LINES`] lines and [`MAX_BYTES`] bytes of text; the oldest lines go
//! first. Memory is therefore bounded per function, and rings of functions that are no longer
//! configured or deployed are dropped, so the whole book is bounded by the number of functions.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Condvar, Mutex};

use crate::function::FunctionRef;

/// Lines kept per function.
pub const MAX_LINES: usize = 1000;
/// Bytes of text (and instance names) kept per function.
pub const MAX_BYTES: usize = 256 * 1024;

/// One line a replica printed, without its line ending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Position in the function's output since defrost started; never reused.
    pub seq: u64,
    /// The replica that printed it.
    pub instance: String,
    /// When defrost read it.
    pub timestamp: SystemTime,
    /// The text, lossily decoded as UTF-8.
    pub text: String,
}

impl LogLine {
    fn cost(&self) -> usize {
        self.text.len() + self.instance.len()
    }
}

/// What a follower gets when it waits for more output.
#[derive(Debug)]
pub enum Waited {
    /// Lines printed since the position asked for (possibly after a gap, if the ring wrapped).
    Lines(Vec<Arc<LogLine>>),
    /// Nothing new within the timeout.
    Nothing,
    /// The book was closed: the gateway is stopping.
    Closed,
}

/// The recent output of one function.
#[derive(Default)]
pub struct Ring {
    state: Mutex<RingState>,
    grew: Condvar,
}

#[derive(Default)]
struct RingState {
    lines: VecDeque<Arc<LogLine>>,
    bytes: usize,
    next_seq: u64,
    closed: bool,
}

impl Ring {
    /// Appends a line, dropping the oldest ones beyond the bounds, and wakes followers.
    pub fn push(&self, instance: &str, text: String) {
        let mut state = self.state.lock();
        let line = LogLine {
            seq: state.next_seq,
            instance: instance.to_owned(),
            timestamp: SystemTime::now(),
            text,
        };
        state.next_seq += 1;
        state.bytes += line.cost();
        state.lines.push_back(Arc::new(line));
        while state.lines.len() > MAX_LINES || (state.bytes > MAX_BYTES && state.lines.len() > 1) {
            if let Some(old) = state.lines.pop_front() {
                state.bytes -= old.cost();
            }
        }
        drop(state);
        self.grew.notify_all();
    }

    /// Every line kept, oldest first, and the position the next line will have.
    pub fn snapshot(&self) -> (Vec<Arc<LogLine>>, u64) {
        let state = self.state.lock();
        (state.lines.iter().cloned().collect(), state.next_seq)
    }

    /// Lines from position `from` on, waiting up to `timeout` for the first of them.
    pub fn wait_from(&self, from: u64, timeout: Duration) -> Waited {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock();
        loop {
            if state.closed {
                return Waited::Closed;
            }
            if state.next_seq > from {
                let lines = state
                    .lines
                    .iter()
                    .filter(|l| l.seq >= from)
                    .cloned()
                    .collect();
                return Waited::Lines(lines);
            }
            if self.grew.wait_until(&mut state, deadline).timed_out() {
                return Waited::Nothing;
            }
        }
    }

    fn close(&self) {
        self.state.lock().closed = true;
        self.grew.notify_all();
    }

    /// Bytes currently kept (for the bound's tests).
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.state.lock().bytes
    }
}

/// The rings of every function the provider runs.
#[derive(Default)]
pub struct LogBook {
    rings: Mutex<BTreeMap<FunctionRef, Arc<Ring>>>,
}

impl LogBook {
    /// The function's ring, made empty the first time it is asked for.
    pub fn ring(&self, function: &FunctionRef) -> Arc<Ring> {
        Arc::clone(self.rings.lock().entry(function.clone()).or_default())
    }

    /// The function's ring, if it has one.
    pub fn get(&self, function: &FunctionRef) -> Option<Arc<Ring>> {
        self.rings.lock().get(function).cloned()
    }

    /// Drops the rings of functions not kept: a removed function's output goes with it, and
    /// whoever follows it is told it ended.
    pub fn retain(&self, keep: impl Fn(&FunctionRef) -> bool) {
        self.rings.lock().retain(|f, ring| {
            let kept = keep(f);
            if !kept {
                ring.close();
            }
            kept
        });
    }

    /// Ends every follower's wait: the gateway is stopping.
    pub fn close(&self) {
        for ring in self.rings.lock().values() {
            ring.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_lines_go_once_a_bound_is_reached() {
        let ring = Ring::default();
        for i in 0..MAX_LINES + 5 {
            ring.push("r#1", format!("line {i}"));
        }
        let (lines, next) = ring.snapshot();
        assert_eq!(lines.len(), MAX_LINES);
        assert_eq!(lines[0].text, "line 5");
        assert_eq!(next, (MAX_LINES + 5) as u64);

        let ring = Ring::default();
        let big = "x".repeat(MAX_BYTES / 4);
        for _ in 0..10 {
            ring.push("r#1", big.clone());
        }
        assert!(ring.bytes() <= MAX_BYTES, "{} bytes kept", ring.bytes());
        assert_eq!(ring.snapshot().0.len(), 3);
    }

    #[test]
    fn a_follower_is_woken_by_a_line_and_by_closing() {
        let ring = Arc::new(Ring::default());
        ring.push("r#1", "before".into());
        let next = ring.snapshot().1;
        assert!(matches!(
            ring.wait_from(next, Duration::from_millis(10)),
            Waited::Nothing
        ));
        let writer = Arc::clone(&ring);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            writer.push("r#2", "after".into());
        });
        match ring.wait_from(next, Duration::from_secs(10)) {
            Waited::Lines(lines) => {
                assert_eq!(lines.len(), 1);
                assert_eq!(
                    (lines[0].instance.as_str(), lines[0].text.as_str()),
                    ("r#2", "after")
                );
            }
            other => panic!("{other:?}"),
        }
        t.join().unwrap();
        let book = LogBook::default();
        let f = FunctionRef::new("f", "default").unwrap();
        let ring = book.ring(&f);
        book.close();
        assert!(matches!(
            ring.wait_from(0, Duration::from_secs(10)),
            Waited::Closed
        ));
        book.retain(|_| false);
        assert!(book.get(&f).is_none());
    }
}
