//! Runs one hot path N times, for instruction counts under callgrind and for per-operation
//! latency percentiles (criterion reports means of batches, not single operations).
//!
//! ```text
//! hot_paths list                  # the path names
//! hot_paths <path> <N>            # N operations, nothing printed (run under callgrind)
//! hot_paths <path> <N> --timed    # N operations, each timed: mean, p50, p99, p99.9, max in µs
//! ```
//!
//! Instructions per operation = (Ir(N) − Ir(0)) / N: the N = 0 run pays for start-up, the
//! fixture and the checks of every path, so the difference is the operations alone.
//! `scripts/bench_cpu.sh` does this for every path. The paths are the criterion benches' own
//! (`benches/paths/mod.rs` here, `shared/domain/benches/paths/mod.rs` for the domain's).

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "../benches/paths/mod.rs"]
mod api_paths;

#[path = "../../domain/benches/paths/mod.rs"]
mod domain_paths;

use std::{hint::black_box, process::ExitCode, time::Instant};

enum Path {
    Api(api_paths::Op),
    Domain(domain_paths::Op),
}

fn names() -> impl Iterator<Item = &'static str> {
    let api = api_paths::PATHS.iter().map(|(name, _)| *name);
    api.chain(domain_paths::PATHS.iter().map(|(name, _)| *name))
}

fn find(name: &str) -> Option<Path> {
    let api = api_paths::PATHS.iter().find(|(n, _)| *n == name);
    let domain = domain_paths::PATHS.iter().find(|(n, _)| *n == name);
    api.map(|(_, op)| Path::Api(*op))
        .or_else(|| domain.map(|(_, op)| Path::Domain(*op)))
}

/// Runs `op` `n` times; with `timed`, returns each operation's nanoseconds.
fn run<F: Fn() -> usize>(n: usize, timed: bool, op: F) -> Vec<u64> {
    if !timed {
        for _ in 0..n {
            black_box(op());
        }
        return Vec::new();
    }
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        black_box(op());
        times.push(start.elapsed().as_nanos() as u64);
    }
    times
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("list") {
        names().for_each(|name| println!("{name}"));
        return ExitCode::SUCCESS;
    }
    let (Some(name), Some(Ok(n))) = (args.first(), args.get(1).map(|n| n.parse::<usize>())) else {
        eprintln!("usage: hot_paths list | hot_paths <path> <N> [--timed]");
        return ExitCode::from(2);
    };
    let timed = args.get(2).map(String::as_str) == Some("--timed");
    let times = match find(name) {
        Some(Path::Api(op)) => {
            let fx = api_paths::Fixture::new();
            run(n, timed, || op(black_box(&fx)))
        }
        Some(Path::Domain(op)) => {
            let fx = domain_paths::Fixture::new();
            run(n, timed, || op(black_box(&fx)))
        }
        None => {
            eprintln!("unknown path {name:?}; `hot_paths list` names them");
            return ExitCode::from(2);
        }
    };
    if timed && !times.is_empty() {
        let mut sorted = times.clone();
        sorted.sort_unstable();
        let at =
            |q: f64| sorted[((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1];
        let mean = times.iter().sum::<u64>() as f64 / times.len() as f64;
        let us = |ns: f64| ns / 1000.0;
        println!(
            "{name} n={n} mean_us={:.3} p50_us={:.3} p99_us={:.3} p999_us={:.3} max_us={:.3}",
            us(mean),
            us(at(0.50) as f64),
            us(at(0.99) as f64),
            us(at(0.999) as f64),
            us(*sorted.last().unwrap() as f64),
        );
    }
    ExitCode::SUCCESS
}
