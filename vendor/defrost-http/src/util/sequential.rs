use std::collections::BTreeSet;
use std::io::Result as IoResult;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};

use super::conn::lock;

/// Hands out writers to a shared stream that write in the order they were handed out:
/// a writer blocks until every previous one has been dropped (responses to pipelined
/// requests are sent in request order).
pub struct SequentialWriterBuilder<W>
where
    W: Write + Send,
{
    writer: Arc<Mutex<W>>,
    turns: Arc<Turns>,
    next_ticket: u64,
}

struct Turns {
    state: Mutex<TurnState>,
    changed: Condvar,
}

struct TurnState {
    /// Ticket of the writer allowed to write.
    serving: u64,
    /// Writers dropped before their turn came.
    gone_early: BTreeSet<u64>,
    /// Writers blocked in `wait_turn`: with none, a finished turn wakes nobody (no syscall).
    waiting: usize,
}

pub struct SequentialWriter<W>
where
    W: Write + Send,
{
    ticket: u64,
    my_turn: bool,
    turns: Arc<Turns>,
    writer: Arc<Mutex<W>>,
}

impl<W: Write + Send> SequentialWriterBuilder<W> {
    pub fn new(writer: W) -> SequentialWriterBuilder<W> {
        SequentialWriterBuilder {
            writer: Arc::new(Mutex::new(writer)),
            turns: Arc::new(Turns {
                state: Mutex::new(TurnState {
                    serving: 0,
                    waiting: 0,
                    gone_early: BTreeSet::new(),
                }),
                changed: Condvar::new(),
            }),
            next_ticket: 0,
        }
    }

    /// The writer coming after all those handed out so far.
    pub fn next_writer(&mut self) -> SequentialWriter<W> {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        SequentialWriter {
            ticket,
            my_turn: false,
            turns: self.turns.clone(),
            writer: self.writer.clone(),
        }
    }
}

impl<W: Write + Send> SequentialWriter<W> {
    /// Blocks until all the previous writers have been dropped.
    pub fn wait_turn(&mut self) {
        if self.my_turn {
            return;
        }
        let mut state = lock(&self.turns.state);
        while state.serving != self.ticket {
            state.waiting += 1;
            state = self
                .turns
                .changed
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
            state.waiting -= 1;
        }
        self.my_turn = true;
    }
}

impl<W: Write + Send> Write for SequentialWriter<W> {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        self.wait_turn();
        lock(&self.writer).write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> IoResult<()> {
        self.wait_turn();
        lock(&self.writer).write_all(buf)
    }

    fn flush(&mut self) -> IoResult<()> {
        self.wait_turn();
        lock(&self.writer).flush()
    }
}

impl<W> Drop for SequentialWriter<W>
where
    W: Write + Send,
{
    fn drop(&mut self) {
        let mut state = lock(&self.turns.state);
        if state.serving == self.ticket {
            state.serving += 1;
            loop {
                let next = state.serving;
                if !state.gone_early.remove(&next) {
                    break;
                }
                state.serving += 1;
            }
            if state.waiting > 0 {
                self.turns.changed.notify_all();
            }
        } else {
            // dropped before its turn: the writers after it still wait for the ones before
            state.gone_early.insert(self.ticket);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SequentialWriterBuilder;
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use std::thread;
    use std::time::Duration;

    #[derive(Clone)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writes_in_order_even_if_a_middle_writer_is_dropped_early() {
        let out = Shared(Arc::new(Mutex::new(Vec::new())));
        let mut builder = SequentialWriterBuilder::new(out.clone());
        let mut a = builder.next_writer();
        let b = builder.next_writer();
        let mut c = builder.next_writer();
        drop(b);
        let t = thread::spawn(move || {
            c.write_all(b"c").unwrap();
        });
        thread::sleep(Duration::from_millis(50));
        a.write_all(b"a").unwrap();
        drop(a);
        t.join().unwrap();
        assert_eq!(&*out.0.lock().unwrap(), b"ac");
    }
}
