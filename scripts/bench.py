#!/usr/bin/env python3
"""make bench: every performance figure of docs/PERFORMANCE.md in one table, measured now.

Needs the stack up (make up) and the release build (make build). Steps:
  1. init / first request / warm request / peak RSS / size of each bootstrap (bench_init.py);
  2. AWS requests and write units per payment (the `cost` integration test, with its interceptor);
  3. throughput: N = 1, 8, 32 POS+phone pairs driving full payments through the local cloud's HTTP
     API, beside the stack's own ceilings measured in the same run (loadgen noop / putitem);
     then the busy merchant: N = 32 POS of one merchant beside 32 merchants, with the conflict
     proxy's DynamoDB transaction-conflict rule on and off;
  4. handler CPU (criterion, callgrind), if scripts/bench_cpu.sh exists.
BENCH_SECONDS (default 20) is the length of each load phase."""

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stack import ROOT, stack_env  # noqa: E402

SECONDS = os.environ.get("BENCH_SECONDS", "20")
LOADGEN = os.path.join(ROOT, "target", "lambda", "loadgen", "bootstrap")
HTTP_CALLS_PER_PAYMENT = 2  # payment request + confirmation
rows = []


def row(metric, target, measured, command):
    rows.append((metric, target, measured, command))
    print(f"  {metric}: {measured}", file=sys.stderr, flush=True)


def run(cmd, **kw):
    print("==> " + " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, **kw).stdout


def loadgen(phase, n, env=None):
    env = dict(os.environ, **(env or {}))
    return json.loads(run([LOADGEN, phase, str(n), SECONDS], env=env).strip().splitlines()[-1])["result"]


def conflict_layer(proxy, on):
    """Turns the conflict proxy's refusals on or off (it forwards everything either way)."""
    req = urllib.request.Request(f"{proxy}/_conflicts/enforce?on={1 if on else 0}", method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        r.read()


def busy_merchant(n):
    """One merchant against many, with DynamoDB's transaction-conflict rule on and off: the same
    payments load, N POS, 1 merchant or N merchants. Each row states what settled and what did not."""
    proxy = stack_env().get("CONFLICT_PROXY_URL", "")
    out = []
    for on in ((True, False) if proxy else (False,)):
        if proxy:
            conflict_layer(proxy, on)
        for merchants in (1, n):
            r = loadgen("payments", n, {"LOADGEN_MERCHANTS": str(merchants)})
            out.append((on, merchants, r))
    if proxy:
        conflict_layer(proxy, True)
    return out


TICK = os.sysconf("SC_CLK_TCK")


def cpu_by_process():
    """CPU seconds so far of MiniStack and of each of its child processes (the functions)."""
    with open(os.path.join(ROOT, ".local", "ministack.pid")) as f:
        root = int(f.read())
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ppid, cpu = int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK
        if int(pid) == root:
            out["emulator"] = cpu
        elif ppid == root:
            out[pid] = cpu
    return out


def profile(phase, n):
    """The load phase, with the cores each side used: the emulator (one Python process), the
    function processes it runs, the load generator. A process near 1.0 core is saturated."""
    before, self_before, wall = cpu_by_process(), os.times(), time.monotonic()
    result = loadgen(phase, n)
    after, self_after, wall = cpu_by_process(), os.times(), time.monotonic() - wall
    emulator = (after.get("emulator", 0) - before.get("emulator", 0)) / wall
    functions = sum(v - before.get(k, 0) for k, v in after.items() if k != "emulator") / wall
    client = (self_after.children_user + self_after.children_system - self_before.children_user - self_before.children_system) / wall
    result["cores"] = {"emulator": round(emulator, 2), "functions": round(functions, 2), "load_generator": round(client, 2)}
    return result


WATCH_PORT = int(os.environ.get("BENCH_WATCH_PORT", "9321"))


def watch_load(n):
    """The same payments load, sent to the functions `cargo lambda watch` serves (release builds,
    up to n instances each) instead of the emulator's API Gateway + Lambda; DynamoDB, SQS and
    settlement stay on the emulator."""
    env = dict(os.environ, WATCH_PORT=str(WATCH_PORT), WATCH_ADDRESS="127.0.0.1", RUST_LOG="warn")
    watch = subprocess.Popen(["bash", "scripts/watch.sh", "--release", "--concurrency", str(n)], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{WATCH_PORT}"
    try:
        # Each function is built and started on its first request: wait until both answer.
        for fn, path in (("payment-request", "/v1/balance"), ("confirmation", "/v1/pending-payments")):
            deadline = time.monotonic() + 900
            while True:
                try:
                    urllib.request.urlopen(f"{base}/lambda-url/{fn}{path}", timeout=60)
                except urllib.error.HTTPError as e:
                    if e.code == 401:
                        break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    pass
                if time.monotonic() > deadline or watch.poll() is not None:
                    sys.exit(f"cargo lambda watch did not serve {fn}")
                time.sleep(1)
        os.environ["LOADGEN_WATCH_URL"] = base
        try:
            return profile("payments", n)
        finally:
            del os.environ["LOADGEN_WATCH_URL"]
    finally:
        os.killpg(watch.pid, signal.SIGTERM)
        watch.wait(timeout=30)


def main():
    py = sys.executable
    # 1. Init, first request, memory, size.
    inits = [json.loads(line) for line in run([py, "scripts/bench_init.py"]).splitlines() if line.startswith("{")]
    for r in inits:
        f = r["function"]
        row(f"init: {f} (median of {r['runs']}, p90 {r['init_p90_ms']} ms)", "≤ 15 ms", f"{r['init_ms']} ms", "scripts/bench_init.py")
    for r in inits:
        row(f"first / warm request: {r['function']}", "≤ 2×",
            f"{r['first_ms']} / {r['warm_ms']} ms = {r['first_over_warm']}×", "scripts/bench_init.py")
    row("peak RSS, any function (after 1 + 50 requests)", "≤ 30 MB", f"{max(r['peak_rss_mb'] for r in inits)} MB", "scripts/bench_init.py")
    for r in inits:
        row(f"bootstrap size: {r['function']}", "≤ 6 MB", f"{r['size_mb']} MB", "ls -l target/lambda/*/bootstrap")

    # 2. AWS requests and write units per settled payment.
    out = run(["cargo", "test", "-q", "-p", "integration-tests", "--test", "integration", "cost::", "--", "--nocapture"])
    requests = int(re.search(r"AWS requests per payment: (\d+)", out).group(1))
    wcu = int(re.search(r"write units: (\d+)", out).group(1))
    steps = "; ".join(m.group(1).strip() for m in re.finditer(r"^ +(\w+ +\d+ requests)", out, re.M))
    row("AWS requests per settled payment", "≤ 8 (not met since revision 2: +2 event messages)", f"{requests} ({steps})", "cargo test -p integration-tests --test integration cost:: -- --nocapture")
    row("DynamoDB write units per settled payment", "≤ 10", f"{wcu}", "same")

    # 3. Throughput against the stack's ceilings, measured in this run.
    noop = profile("noop", 32)
    put = profile("putitem", 32)
    ceiling = min(put["ops_per_s"] / requests, noop["ops_per_s"] / HTTP_CALLS_PER_PAYMENT)
    row("ceiling: no-op function behind the same API Gateway + Lambda path (32 clients)", "-",
        f"{noop['ops_per_s']} req/s, p50 {noop['latency']['p50_ms']} ms, p99 {noop['latency']['p99_ms']} ms, errors {noop['errors']}; "
        f"cores: emulator {noop['cores']['emulator']}, functions {noop['cores']['functions']}",
        f"target/lambda/loadgen/bootstrap noop 32 {SECONDS}")
    row("ceiling: conditional PutItem on the emulator (32 clients)", "-",
        f"{put['ops_per_s']} ops/s, p50 {put['latency']['p50_ms']} ms, p99 {put['latency']['p99_ms']} ms; "
        f"cores: emulator {put['cores']['emulator']}",
        f"target/lambda/loadgen/bootstrap putitem 32 {SECONDS}")
    row("ceiling for payments: min(PutItem/s ÷ AWS requests, no-op/s ÷ HTTP calls)", "-", f"{ceiling:.1f} payments/s", "")
    # Both ceilings are spent in the same single emulator process, so together they allow less.
    shared = 1 / (requests / put["ops_per_s"] + HTTP_CALLS_PER_PAYMENT / noop["ops_per_s"])
    row("ceiling when both share the one emulator process: 1 ÷ (requests ÷ PutItem/s + 2 ÷ no-op/s)", "-", f"{shared:.1f} payments/s", "")
    for n in (1, 8, 32):
        p = profile("payments", n)
        row(f"throughput, N = {n}", "≥ 0.8 × ceiling at N = 32" if n == 32 else "-",
            f"{p['payments_per_s']} payments/s = {p['payments_per_s'] / ceiling:.2f} × ceiling; "
            f"create p50/p99 {p['create']['p50_ms']}/{p['create']['p99_ms']} ms, confirm p50/p99 "
            f"{p['confirm']['p50_ms']}/{p['confirm']['p99_ms']} ms; errors {p['errors']}; "
            f"settled {p['settled']}/{p['confirmed']} (all {p['all_settled_after_s']} s after the load); "
            f"cores used: emulator {p['cores']['emulator']}, functions {p['cores']['functions']}, "
            f"load generator {p['cores']['load_generator']} (of {os.cpu_count()})",
            f"target/lambda/loadgen/bootstrap payments {n} {SECONDS}")
    for on, merchants, r in busy_merchant(32):
        layer = r.get("conflict_layer") or {}
        row(f"settlement, N = 32, {merchants} merchant{'s' if merchants > 1 else ''}, conflict layer {'on' if on else 'off'}",
            "every confirmed payment settled, 0 in the DLQ, 0 stuck",
            f"{r['payments_per_s']} payments/s; settled {r['settled']}/{r['confirmed']} "
            f"(all {r['all_settled_after_s']} s after the load); stuck confirmed {r['stuck_confirmed']}; "
            f"settlement DLQ {r['settlement_dlq_messages']}; balance = sum of settled: {r['balance_matches']}; "
            f"transactions refused by the layer {layer.get('transactions_refused', '-')}, writes {layer.get('writes_refused', '-')}",
            f"LOADGEN_MERCHANTS={merchants} target/lambda/loadgen/bootstrap payments 32 {SECONDS}")
    # Webhooks: change (a cancel's 200) → its event at a loopback receiver, beside the cancel's own latency.
    wh = json.loads(run([py, "scripts/webhook_latency.py"]).strip().splitlines()[-1])
    for p in wh["phases"]:
        row(f"webhook latency, N = {p['n']}: cancel's 200 → payment.canceled at the receiver", "≤ 5 s (contract, local stack)",
            f"p50 {p['latency']['p50_ms']} ms, p99 {p['latency']['p99_ms']} ms, max {p['latency']['max_ms']} ms; "
            f"{p['arrived']}/{p['samples']} arrived; signatures {'all verified' if wh['all_signatures_verified'] else 'NOT all verified'}; "
            f"baseline: the cancel request itself p50 {p['cancel_latency']['p50_ms']} ms, p99 {p['cancel_latency']['p99_ms']} ms",
            "scripts/webhook_latency.py")
    w = watch_load(32)
    row("throughput, N = 32, through cargo lambda watch (not the emulator's API Gateway + Lambda)", "-",
        f"{w['payments_per_s']} payments/s = {w['payments_per_s'] / ceiling:.2f} × the emulator path's ceiling; "
        f"create p50/p99 {w['create']['p50_ms']}/{w['create']['p99_ms']} ms, confirm p50/p99 "
        f"{w['confirm']['p50_ms']}/{w['confirm']['p99_ms']} ms; errors {w['errors']}; "
        f"settled {w['settled']}/{w['confirmed']}; cores used: emulator {w['cores']['emulator']}, "
        f"load generator {w['cores']['load_generator']}",
        f"make watch + LOADGEN_WATCH_URL=http://127.0.0.1:{WATCH_PORT} target/lambda/loadgen/bootstrap payments 32 {SECONDS}")

    prof = json.loads(run([sys.executable, "scripts/profile_emulator.py", "32"]).strip().splitlines()[-1])
    shares = ", ".join(f"{k} {v:.0%}" for k, v in prof["share"].items())
    row("profile of the emulator process during the N = 32 load (py-spy, non-idle samples by MiniStack module)", "-",
        f"{prof['samples']} samples at {prof['payments_per_s']} payments/s: {shares}", "scripts/profile_emulator.py 32")

    print("| metric | target | measured | command |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    cpu = os.path.join(ROOT, "scripts", "bench_cpu.sh")
    if os.path.exists(cpu):
        print()
        print(run(["bash", cpu]))


if __name__ == "__main__":
    main()
