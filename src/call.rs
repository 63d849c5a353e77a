//! One function call, from routing to the last byte of its answer.
//!
//! A [`Call`] owns everything the call holds: the function's record (found once, with one
//! lookup), its place among the function's requests in flight, and, once forwarded, its place
//! among the replica's. It is finished once, with the status the client got; dropped without
//! being finished (a panic, a path that forgot) it still gives back everything it held, so no
//! count outlives its request. The in-flight count is the one span every reader shares: the
//! autoscaler, scale to zero, `/metrics` and the status page all see the same number.

use std::sync::Arc;
use std::time::Instant;

use crate::function::FunctionRef;
use crate::table::slots::Claim;
use crate::table::{FunctionRecord, FunctionTable};

/// A function call being answered (see the module docs).
pub struct Call {
    record: Arc<FunctionRecord>,
    started: Instant,
    /// The replica's in-flight count (and slot, if the function has a limit), while the
    /// replica is answering.
    replica: Option<Claim>,
}

impl Call {
    /// Counts a call to `function` in flight, first waiting out a scale to zero in progress.
    pub fn begin(table: &FunctionTable, function: &FunctionRef) -> Call {
        let record = table.record(function);
        record.activity.begin();
        record.counters().count_start();
        Call {
            record,
            started: Instant::now(),
            replica: None,
        }
    }

    /// The function called.
    pub fn function(&self) -> &FunctionRef {
        self.record.function()
    }

    pub(crate) fn record(&self) -> &FunctionRecord {
        &self.record
    }

    /// Keeps the replica counted busy until the call ends, so that it is not stopped
    /// mid-answer.
    pub(crate) fn hold_replica(&mut self, replica: Claim) {
        self.replica = Some(replica);
    }

    /// Records the status the client got and how long the call took, to its last byte.
    pub fn finish(self, code: u16) {
        self.record.counters().record(code, self.started.elapsed());
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.replica = None;
        self.record.activity.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f() -> FunctionRef {
        FunctionRef::new("echo", "default").unwrap()
    }

    #[test]
    fn a_call_is_in_flight_until_it_ends_however_it_ends() {
        let table = FunctionTable::new();
        let first = Call::begin(&table, &f());
        let second = Call::begin(&table, &f());
        let record = table.get(&f()).unwrap();
        assert_eq!(record.in_flight(), 2);
        first.finish(200);
        drop(second);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _call = Call::begin(&table, &f());
            panic!("a handler bug");
        }));
        assert!(panicked.is_err());
        assert_eq!(record.in_flight(), 0, "a count outlived its call");
        assert_eq!(
            (record.counters().started(), record.counters().invocations()),
            (3, 1)
        );
    }
}
