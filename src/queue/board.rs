//! Which queued call runs next: one lane per function, in order, at most the function's
//! `async_concurrency` at once, functions taken in turn; and the queue's bounds.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::time::Instant;

use super::store::Id;
use super::{Bounds, Full, QueueRow};

/// A call waiting in its lane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: Id,
    pub attempts: u32,
    pub bytes: u64,
    /// Not before this instant (a retry's back-off).
    pub not_before: Option<Instant>,
}

/// A call taken to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub lane: String,
    pub entry: Entry,
}

#[derive(Default)]
struct Lane {
    waiting: VecDeque<Entry>,
    /// Accepted calls not yet durable: counted against the bounds already.
    reserved: usize,
    running: usize,
    concurrency: usize,
    retried: u64,
    failed: u64,
    completed: u64,
    callback_failures: u64,
}

impl Lane {
    fn held(&self) -> usize {
        self.waiting.len() + self.reserved + self.running
    }
}

/// Every lane, and the totals the bounds apply to.
pub struct Board {
    lanes: BTreeMap<String, Lane>,
    /// The lane after which the next search starts, so that functions take turns.
    cursor: String,
    /// Calls held (waiting, being stored, running), and their bytes.
    held: usize,
    bytes: u64,
    bounds: Bounds,
}

impl Board {
    pub fn new(bounds: Bounds) -> Board {
        Board {
            lanes: BTreeMap::new(),
            cursor: String::new(),
            held: 0,
            bytes: 0,
            bounds,
        }
    }

    fn lane(&mut self, key: &str, concurrency: usize) -> &mut Lane {
        let lane = self.lanes.entry(key.to_owned()).or_default();
        lane.concurrency = concurrency.max(1);
        lane
    }

    /// Counts a call about to be stored against the bounds, or says which bound it would break.
    pub fn reserve(&mut self, key: &str, concurrency: usize, bytes: u64) -> Result<(), Full> {
        let b = self.bounds;
        let lane_held = self.lanes.get(key).map_or(0, Lane::held);
        if self.held >= b.max_queued {
            return Err(Full::Total(b.max_queued));
        }
        if lane_held >= b.max_queued_per_function {
            return Err(Full::Function(b.max_queued_per_function));
        }
        if self.bytes.saturating_add(bytes) > b.max_queued_bytes {
            return Err(Full::Bytes(b.max_queued_bytes));
        }
        self.lane(key, concurrency).reserved += 1;
        self.held += 1;
        self.bytes += bytes;
        Ok(())
    }

    /// A reserved call is stored (`Some`) or failed to be (`None`).
    pub fn settle(&mut self, key: &str, bytes: u64, stored: Option<Id>) {
        let Some(lane) = self.lanes.get_mut(key) else {
            return;
        };
        lane.reserved = lane.reserved.saturating_sub(1);
        match stored {
            Some(id) => lane.waiting.push_back(Entry {
                id,
                attempts: 0,
                bytes,
                not_before: None,
            }),
            None => {
                self.held = self.held.saturating_sub(1);
                self.bytes = self.bytes.saturating_sub(bytes);
            }
        }
    }

    /// A call found in the store at start.
    pub fn restore(&mut self, key: &str, concurrency: usize, entry: Entry) {
        self.held += 1;
        self.bytes += entry.bytes;
        self.lane(key, concurrency).waiting.push_back(entry);
    }

    /// The next call due, functions in turn, each lane in order and within its concurrency.
    pub fn take(&mut self, now: Instant) -> Option<Job> {
        let after = (Bound::Excluded(self.cursor.clone()), Bound::Unbounded);
        let key = self
            .lanes
            .range::<String, _>(after)
            .chain(self.lanes.range::<String, _>(..=self.cursor.clone()))
            .find(|(_, lane)| lane.running < lane.concurrency && due(lane, now).is_some())
            .map(|(key, _)| key.clone())?;
        let lane = self.lanes.get_mut(&key)?;
        let at = due(lane, now)?;
        let entry = lane.waiting.remove(at)?;
        lane.running += 1;
        self.cursor.clone_from(&key);
        Some(Job { lane: key, entry })
    }

    /// When the earliest call held back by a back-off becomes due, if any is.
    pub fn next_due(&self) -> Option<Instant> {
        self.lanes
            .values()
            .filter(|lane| lane.running < lane.concurrency)
            .filter_map(|lane| lane.waiting.iter().filter_map(|e| e.not_before).min())
            .min()
    }

    /// A taken call will be tried again at `not_before`, in its place in the lane.
    pub fn retry(&mut self, job: Job) {
        let Some(lane) = self.lanes.get_mut(&job.lane) else {
            return;
        };
        lane.running = lane.running.saturating_sub(1);
        lane.retried += 1;
        let at = lane.waiting.partition_point(|e| e.id < job.entry.id);
        lane.waiting.insert(at, job.entry);
    }

    /// A taken call is over: done, failed for good, or left in the store for the next start.
    pub fn finish(&mut self, job: &Job, failed: bool) {
        if let Some(lane) = self.lanes.get_mut(&job.lane) {
            lane.running = lane.running.saturating_sub(1);
            if failed {
                lane.failed += 1;
            } else {
                lane.completed += 1;
            }
        }
        self.held = self.held.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(job.entry.bytes);
    }

    pub fn callback_failed(&mut self, lane: &str) {
        if let Some(lane) = self.lanes.get_mut(lane) {
            lane.callback_failures += 1;
        }
    }

    /// Calls running now.
    pub fn running(&self) -> usize {
        self.lanes.values().map(|l| l.running).sum()
    }

    pub fn rows(&self) -> Vec<QueueRow> {
        self.lanes
            .iter()
            .map(|(key, lane)| QueueRow {
                function: key.clone(),
                queued: (lane.waiting.len() + lane.reserved) as u64,
                running: lane.running as u64,
                retried: lane.retried,
                failed: lane.failed,
                completed: lane.completed,
                callback_failures: lane.callback_failures,
            })
            .collect()
    }
}

/// The first call of the lane that is due now.
fn due(lane: &Lane, now: Instant) -> Option<usize> {
    lane.waiting
        .iter()
        .position(|e| e.not_before.is_none_or(|t| t <= now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn bounds() -> Bounds {
        Bounds {
            max_queued: 5,
            max_queued_per_function: 3,
            max_queued_bytes: 1000,
        }
    }

    fn queue(board: &mut Board, key: &str, concurrency: usize, bytes: u64, id: Id) {
        board.reserve(key, concurrency, bytes).unwrap();
        board.settle(key, bytes, Some(id));
    }

    #[test]
    fn lanes_run_in_order_within_their_concurrency_and_take_turns() {
        let mut board = Board::new(bounds());
        let now = Instant::now();
        queue(&mut board, "a", 1, 1, 1);
        queue(&mut board, "a", 1, 1, 2);
        queue(&mut board, "b", 2, 1, 3);
        queue(&mut board, "b", 2, 1, 4);
        let order: Vec<Id> = std::iter::from_fn(|| board.take(now).map(|j| j.entry.id)).collect();
        assert_eq!(order, vec![1, 3, 4], "a runs one at a time, b two");
        assert_eq!(board.running(), 3);
    }

    #[test]
    fn a_retry_waits_its_back_off_in_its_place() {
        let mut board = Board::new(bounds());
        let now = Instant::now();
        queue(&mut board, "a", 1, 1, 1);
        queue(&mut board, "a", 1, 1, 2);
        let mut job = board.take(now).unwrap();
        job.entry.not_before = Some(now + Duration::from_secs(5));
        board.retry(job);
        assert_eq!(
            board.take(now).map(|j| j.entry.id),
            Some(2),
            "later calls go ahead"
        );
        assert_eq!(board.take(now), None);
        assert_eq!(board.next_due(), None, "the lane is busy");
        let later = now + Duration::from_secs(6);
        let second = Job {
            lane: "a".into(),
            entry: Entry {
                id: 2,
                attempts: 0,
                bytes: 1,
                not_before: None,
            },
        };
        board.finish(&second, false);
        assert_eq!(board.next_due(), Some(now + Duration::from_secs(5)));
        assert_eq!(board.take(later).map(|j| j.entry.id), Some(1));
        assert_eq!(board.rows()[0].retried, 1);
    }

    #[test]
    fn bounds_apply_per_function_in_total_and_in_bytes() {
        let mut board = Board::new(bounds());
        for id in 0..3 {
            queue(&mut board, "a", 1, 1, id);
        }
        assert_eq!(board.reserve("a", 1, 1), Err(Full::Function(3)));
        queue(&mut board, "b", 1, 1, 10);
        queue(&mut board, "b", 1, 1, 11);
        assert_eq!(board.reserve("c", 1, 1), Err(Full::Total(5)));
        let mut board = Board::new(bounds());
        assert_eq!(board.reserve("a", 1, 1001), Err(Full::Bytes(1000)));
        board.reserve("a", 1, 600).unwrap();
        board.settle("a", 600, None);
        board.reserve("a", 1, 600).unwrap();
    }
}
