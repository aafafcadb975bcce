//! `conflict-proxy --listen 127.0.0.1:4570 --upstream http://127.0.0.1:4566 --hold-ms 10`
//!
//! The local stack's conflict-faithful DynamoDB proxy (`twochan_tools::conflict_proxy`): every
//! AWS request is forwarded unchanged to the emulator; DynamoDB writes that meet an item of a
//! transaction in flight are refused as DynamoDB refuses them. Counters on
//! `GET /_conflicts/stats`, and printed (one JSON line) when stopped with SIGINT or SIGTERM.

use std::{net::SocketAddr, time::Duration};

use twochan_tools::conflict_proxy::{self, Config, DEFAULT_HOLD};

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("conflict-proxy: {msg}");
    eprintln!(
        "usage: conflict-proxy [--listen 127.0.0.1:4570] [--upstream http://127.0.0.1:4566] [--hold-ms 10]"
    );
    std::process::exit(2)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut listen: SocketAddr = ([127, 0, 0, 1], 4570).into();
    let mut upstream = "http://127.0.0.1:4566".to_owned();
    let mut hold = DEFAULT_HOLD;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| fail(format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--listen" => listen = value().parse().unwrap_or_else(|e| fail(e)),
            "--upstream" => upstream = value(),
            "--hold-ms" => {
                hold = Duration::from_millis(value().parse().unwrap_or_else(|e| fail(e)))
            }
            "-h" | "--help" => fail("help"),
            other => fail(format!("unknown argument {other}")),
        }
    }
    let proxy = conflict_proxy::start(
        listen,
        Config {
            upstream: upstream.clone(),
            hold,
        },
    )
    .await
    .unwrap_or_else(|e| fail(format!("cannot listen on {listen}: {e}")));
    eprintln!(
        "conflict-proxy: {} -> {upstream}, transactions held {} ms; stats on {}{}",
        proxy.url,
        hold.as_millis(),
        proxy.url,
        conflict_proxy::STATS_PATH
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .unwrap_or_else(|e| fail(e));
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    println!(
        "{}",
        serde_json::to_string(&proxy.stats.snapshot()).unwrap_or_default()
    );
}
