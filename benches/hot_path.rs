//! Micro-benchmarks of what every warm request goes through: `cargo bench --bench hot_path`.

use std::hint::black_box;
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};

use defrost::internals::{outgoing, route, Call, Forwarding, FunctionTable, SingleFlight};
use defrost::FunctionRef;

fn route_parse(c: &mut Criterion) {
    c.bench_function("route parse", |b| {
        b.iter(|| {
            route(
                black_box("/function/hello.fns/api/v1/items?id=42"),
                "default",
            )
        })
    });
}

fn call_bookkeeping(c: &mut Criterion) {
    let table = FunctionTable::new();
    for other in 0..100 {
        let f = FunctionRef::new(&format!("f{other}"), "default").expect("valid name");
        Call::begin(&table, &f).finish(200);
    }
    let hello = FunctionRef::new("hello", "default").expect("valid name");
    c.bench_function("call bookkeeping (lookup among 100, count, finish)", |b| {
        b.iter(|| Call::begin(&table, black_box(&hello)).finish(200))
    });
}

fn single_flight(c: &mut Criterion) {
    let flights: SingleFlight<String, u64> = SingleFlight::new();
    let key = "hello.default".to_owned();
    c.bench_function("single-flight uncontended", |b| {
        b.iter(|| flights.run(black_box(&key), || 42))
    });
    // Four threads calling with one key at once: the time per call, all threads together.
    let flights = Arc::new(flights);
    c.bench_function("single-flight contended, 4 threads", |b| {
        b.iter_custom(|iters| {
            let per_thread = iters.div_ceil(4);
            let started = Instant::now();
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let flights = Arc::clone(&flights);
                    let key = key.clone();
                    thread::spawn(move || {
                        for _ in 0..per_thread {
                            let _ = black_box(flights.run(&key, || 42));
                        }
                    })
                })
                .collect();
            for t in threads {
                let _ = t.join();
            }
            started.elapsed()
        })
    });
}

fn header_rewriting(c: &mut Criterion) {
    let received = [
        ("Host", "gw.example:8080"),
        ("User-Agent", "wrk"),
        ("Accept", "*/*"),
        ("Connection", "keep-alive"),
        ("Content-Type", "application/json"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("Authorization", "Bearer abc"),
    ];
    let fwd = Forwarding {
        client: Some("127.0.0.1:50000".parse().expect("literal address")),
        host: Some("gw.example:8080"),
        proto: "http",
        trusted: false,
    };
    c.bench_function("header rewriting", |b| {
        b.iter(|| outgoing(received.iter().copied(), &fwd).is_ok())
    });
}

criterion_group!(
    benches,
    route_parse,
    call_bookkeeping,
    single_flight,
    header_rewriting
);
criterion_main!(benches);
