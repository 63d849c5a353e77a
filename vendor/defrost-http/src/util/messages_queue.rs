use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::conn::lock;

enum Control<T> {
    Elem(T),
    Unblock,
}

/// What [`MessagesQueue::try_take`] found.
pub enum Popped<T> {
    Elem(T),
    Unblock,
    Empty,
}

pub struct MessagesQueue<T>
where
    T: Send,
{
    state: Mutex<State<T>>,
    condvar: Condvar,
}

struct State<T> {
    queue: VecDeque<Control<T>>,
    /// Threads waiting in `pop_timeout`.
    waiting: usize,
    /// Wake-ups sent and not yet taken by a waiting thread.
    notified: usize,
}

impl<T> State<T> {
    /// True (and counted) if a waiting thread should be woken for one more element: a wake-up
    /// is a syscall, so none is sent when every waiter has one coming already.
    fn take_wakeup(&mut self) -> bool {
        if self.waiting > self.notified {
            self.notified += 1;
            true
        } else {
            false
        }
    }

    fn woken(&mut self) {
        self.notified = self.notified.saturating_sub(1);
    }
}

impl<T> MessagesQueue<T>
where
    T: Send,
{
    pub fn with_capacity(capacity: usize) -> Arc<MessagesQueue<T>> {
        Arc::new(MessagesQueue {
            state: Mutex::new(State {
                queue: VecDeque::with_capacity(capacity),
                waiting: 0,
                notified: 0,
            }),
            condvar: Condvar::new(),
        })
    }

    /// Pushes an element to the queue.
    ///
    /// The waiter is woken after the lock is released, so that it does not wake only to
    /// block at once on the lock the pusher still holds.
    pub fn push(&self, value: T) {
        let wake = {
            let mut state = lock(&self.state);
            state.queue.push_back(Control::Elem(value));
            state.take_wakeup()
        };
        if wake {
            self.condvar.notify_one();
        }
    }

    /// Elements waiting to be popped (wake-ups from `unblock` included).
    pub fn len(&self) -> usize {
        lock(&self.state).queue.len()
    }

    /// Unblock one thread stuck in pop loop.
    pub fn unblock(&self) {
        let mut state = lock(&self.state);
        state.queue.push_back(Control::Unblock);
        state.take_wakeup();
        self.condvar.notify_one();
    }

    /// Pops an element without blocking, telling an `unblock()` apart from an empty queue.
    pub fn try_take(&self) -> Popped<T> {
        match lock(&self.state).queue.pop_front() {
            Some(Control::Elem(value)) => Popped::Elem(value),
            Some(Control::Unblock) => Popped::Unblock,
            None => Popped::Empty,
        }
    }

    /// Tries to pop an element without blocking
    /// more than the specified timeout duration
    /// or unblock() was issued
    pub fn pop_timeout(&self, timeout: Duration) -> Option<T> {
        let mut state = lock(&self.state);
        let deadline = Instant::now().checked_add(timeout);
        loop {
            match state.queue.pop_front() {
                Some(Control::Elem(value)) => return Some(value),
                Some(Control::Unblock) => return None,
                None => (),
            }
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => timeout,
            };
            if left < Duration::from_millis(1) {
                return None;
            }
            state.waiting += 1;
            let (next, _) = self
                .condvar
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner());
            state = next;
            state.waiting -= 1;
            state.woken();
        }
    }
}
