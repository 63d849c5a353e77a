use std::collections::VecDeque;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use super::conn::lock;

type Task = Box<dyn FnOnce() + Send>;

/// Manages a collection of threads.
///
/// A new thread is created every time all the existing threads are busy.
/// Any idle thread beyond the first few exits after a few seconds.
pub struct TaskPool {
    sharing: Arc<Sharing>,
}

struct Sharing {
    state: Mutex<State>,
    // notified whenever a task is added to `todo` or the pool is closed
    condvar: Condvar,
}

struct State {
    // tasks waiting for an idle worker thread
    todo: VecDeque<Task>,
    // number of worker threads waiting for a task
    idle: usize,
    // number of worker threads alive
    threads: usize,
    closed: bool,
}

/// Minimum number of threads kept alive.
const MIN_THREADS: usize = 4;

/// How long a thread beyond `MIN_THREADS` stays idle before exiting.
const IDLE_EXIT: Duration = Duration::from_secs(5);

impl TaskPool {
    pub fn new() -> TaskPool {
        let pool = TaskPool {
            sharing: Arc::new(Sharing {
                state: Mutex::new(State {
                    todo: VecDeque::new(),
                    idle: 0,
                    threads: 0,
                    closed: false,
                }),
                condvar: Condvar::new(),
            }),
        };

        for _ in 0..MIN_THREADS {
            if let Err(e) = pool.add_thread(None) {
                log::warn!("Could not start a worker thread: {}", e);
            }
        }

        pool
    }

    /// Executes a function in a thread.
    /// If no thread is idle, spawns a new one. If that fails, the task is dropped
    /// and the error returned.
    pub fn spawn(&self, code: Task) -> io::Result<()> {
        {
            let mut state = lock(&self.sharing.state);
            // every queued task needs its own idle thread: an idle count that only goes
            // down once a woken thread runs would otherwise let tasks wait behind busy
            // threads
            if state.idle > state.todo.len() {
                state.todo.push_back(code);
                self.sharing.condvar.notify_one();
                return Ok(());
            }
        }
        self.add_thread(Some(code))
    }

    fn add_thread(&self, initial: Option<Task>) -> io::Result<()> {
        let sharing = self.sharing.clone();
        lock(&sharing.state).threads += 1;

        let spawned = thread::Builder::new()
            .name("tiny-http-worker".into())
            .spawn(move || worker(sharing, initial));
        if let Err(e) = spawned {
            lock(&self.sharing.state).threads -= 1;
            return Err(e);
        }
        Ok(())
    }
}

fn run(task: Task) {
    if catch_unwind(AssertUnwindSafe(task)).is_err() {
        log::error!("A connection task panicked");
    }
}

fn worker(sharing: Arc<Sharing>, initial: Option<Task>) {
    if let Some(task) = initial {
        run(task);
    }

    loop {
        let task = {
            let mut state = lock(&sharing.state);
            loop {
                if let Some(task) = state.todo.pop_front() {
                    break task;
                }
                if state.closed {
                    state.threads -= 1;
                    return;
                }
                state.idle += 1;
                let timed_out = if state.threads <= MIN_THREADS {
                    state = sharing
                        .condvar
                        .wait(state)
                        .unwrap_or_else(|e| e.into_inner());
                    false
                } else {
                    let (new_state, res) = sharing
                        .condvar
                        .wait_timeout(state, IDLE_EXIT)
                        .unwrap_or_else(|e| e.into_inner());
                    state = new_state;
                    res.timed_out()
                };
                state.idle -= 1;
                if timed_out && state.todo.is_empty() {
                    state.threads -= 1;
                    return;
                }
            }
        };

        run(task);
    }
}

impl Drop for TaskPool {
    fn drop(&mut self) {
        lock(&self.sharing.state).closed = true;
        self.sharing.condvar.notify_all();
    }
}
