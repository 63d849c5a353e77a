//! What counting costs a request.
//!
//!     cargo bench --bench metrics
//!
//! 1. Recording one call (the function's record looked up, in flight, code, duration
//!    histogram) on its own, from one
//!    thread and from two threads at once on the same function, next to the single global lock
//!    a naive design would take per request.
//! 2. A warm call through a whole gateway (client, tiny_http, worker, proxy, upstream on
//!    loopback), for scale: the recording cost as a share of it.

use std::hint::black_box;
use std::io::Read;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use defrost::internals::{Call, FunctionTable};
use defrost::{
    Endpoint, FunctionRef, FunctionStatus, FunctionSummary, Gateway, Provider, ProviderError,
    Settings,
};

const RECORDS: u64 = 2_000_000;
const CALLS: u64 = 5_000;

fn main() {
    let names: Vec<FunctionRef> = ["echo", "hello"]
        .iter()
        .map(|n| FunctionRef::new(n, "default").expect("valid name"))
        .collect();
    let table = FunctionTable::new();
    let record = |f: &FunctionRef| Call::begin(&table, black_box(f)).finish(200);
    let one = per_op(RECORDS, || record(&names[0]));
    let apart = on_two_threads(|t| record(&names[t]));
    let global = Mutex::new(());
    let locked = on_two_threads(|t| {
        let _one_at_a_time = global.lock();
        record(&names[t]);
    });
    let same = on_two_threads(|_| record(&names[0]));
    println!("record one call, 1 thread:                        {one:>9.1} ns");
    println!("record, 2 threads, 2 functions:                   {apart:>9.1} ns");
    println!("same, behind one global lock (the design avoided): {locked:>9.1} ns");
    println!("record, 2 threads, 1 function:                    {same:>9.1} ns");

    let call = warm_call();
    println!("warm call through the gateway:                    {call:>9.1} ns");
    let worst = one.max(apart).max(same);
    println!(
        "recording is at most {:.3}% of a warm call",
        100.0 * worst / call
    );
}

/// Mean nanoseconds per call of `op`, run `n` times.
fn per_op(n: u64, op: impl Fn()) -> f64 {
    for _ in 0..n / 10 {
        op();
    }
    let started = Instant::now();
    for _ in 0..n {
        op();
    }
    started.elapsed().as_nanos() as f64 / n as f64
}

/// Mean nanoseconds per call of `op` while two threads (0 and 1) run it at once.
fn on_two_threads(op: impl Fn(usize) + Sync) -> f64 {
    let barrier = Barrier::new(2);
    let (op, barrier) = (&op, &barrier);
    thread::scope(|s| {
        let runs: Vec<_> = (0..2)
            .map(|t| {
                s.spawn(move || {
                    barrier.wait();
                    per_op(RECORDS, || op(t))
                })
            })
            .collect();
        let times: Vec<f64> = runs
            .into_iter()
            .map(|r| r.join().unwrap_or(f64::NAN))
            .collect();
        times.iter().sum::<f64>() / times.len() as f64
    })
}

/// Mean nanoseconds of a warm call, client to upstream and back, over keep-alive.
fn warm_call() -> f64 {
    let upstream = defrost_http::Server::http("127.0.0.1:0").expect("upstream listens");
    let upstream_addr = upstream.server_addr().to_ip().expect("an IP address");
    thread::spawn(move || {
        for request in upstream.incoming_requests() {
            let _ = request.respond(defrost_http::Response::from_string("ok"));
        }
    });
    let provider = Arc::new(Ready(Arc::new(Endpoint::new(format!(
        "http://{upstream_addr}"
    )))));
    let settings = Settings {
        listen: ([127, 0, 0, 1], 0).into(),
        ..Settings::default()
    };
    let gateway = Gateway::start(settings, provider).expect("gateway starts");
    let url = format!("http://{}/function/echo", gateway.local_addr());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let call = || {
        let mut body = String::new();
        let response = agent.get(&url).call().expect("warm call");
        let _ = response.into_body().into_reader().read_to_string(&mut body);
    };
    let mean = per_op(CALLS, call);
    gateway.shutdown();
    mean
}

/// A provider whose one function is always ready at one endpoint.
struct Ready(Arc<Endpoint>);

impl Provider for Ready {
    fn status(&self, _: &FunctionRef) -> Result<FunctionStatus, ProviderError> {
        Ok(FunctionStatus {
            replicas: 1,
            available_replicas: 1,
            endpoints: vec![Arc::clone(&self.0)],
            ..Default::default()
        })
    }

    fn set_replicas(&self, _: &FunctionRef, _: u64) -> Result<(), ProviderError> {
        Ok(())
    }

    fn list(&self, _: &str) -> Result<Vec<FunctionSummary>, ProviderError> {
        Ok(Vec::new())
    }

    fn namespaces(&self) -> Result<Vec<String>, ProviderError> {
        Ok(vec!["default".into()])
    }
}
