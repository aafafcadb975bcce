//! CPU of the domain's hot paths: auth-code and registration-proof verification, bearer hashing
//! and the newtype parsers. The paths themselves are in `paths/mod.rs`, shared with the callgrind
//! driver (`shared/api/examples/hot_paths.rs`); `scripts/bench_cpu.sh` runs both.
//!
//! `cargo bench -p twochan-domain --bench crypto -- --warm-up-time 1 --measurement-time 3`

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
