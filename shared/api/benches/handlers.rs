//! CPU of the HTTP functions' hot paths with the in-memory `World` (no I/O): request parsing,
//! `routes::handle` for create, confirm and GET, response building, and a whole invocation from
//! the API Gateway event to its response JSON. The paths are in `paths/mod.rs`, shared with the
//! callgrind driver `examples/hot_paths.rs`; `scripts/bench_cpu.sh` runs both.
//!
//! `cargo bench -p twochan-api --bench handlers -- --warm-up-time 1 --measurement-time 3`

#[path = "../tests/support/mod.rs"]
mod support;

mod paths;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};

fn hot_paths(c: &mut Criterion) {
    let fx = paths::Fixture::new();
    for (name, op) in paths::PATHS {
        let (group, function) = name.split_once('/').expect("group/function");
        c.benchmark_group(group)
            .bench_function(function, |b| b.iter(|| op(black_box(&fx))));
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = hot_paths
}
criterion_main!(benches);
