//! What a trigger lookup costs as the table grows: `cargo bench --bench triggers`.
//!
//! The table is a trie keyed by path segment, so the time per lookup should stay flat from ten
//! triggers to ten thousand; a linear scan would grow a thousandfold.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

use defrost::internals::Triggers;
use defrost::FunctionRef;
use defrost::TriggerSpec;

fn table(size: usize) -> Triggers {
    let function = FunctionRef::new("f", "default").unwrap_or_else(|e| panic!("{e}"));
    let specs: Vec<TriggerSpec> = (0..size)
        .map(|i| TriggerSpec {
            path: format!("/svc{i}/items/{{id}}/parts/{{rest...}}"),
            methods: vec!["GET".into()],
            host: None,
            targets: vec![(function.clone(), 1)],
            origin: format!("bench:{i}"),
        })
        .collect();
    Triggers::build(&specs).unwrap_or_else(|e| panic!("{e}"))
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("trigger lookup");
    for size in [10, 1_000, 10_000] {
        let triggers = table(size);
        let path = format!("/svc{}/items/42/parts/a/b", size - 1);
        group.bench_with_input(BenchmarkId::from_parameter(size), &path, |b, path| {
            b.iter(|| {
                triggers
                    .lookup(black_box("GET"), None, black_box(path))
                    .is_ok()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
