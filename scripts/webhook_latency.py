#!/usr/bin/env python3
"""Webhook latency on the local stack: from a change to its event's arrival at the merchant.

Needs the stack up (make up) and target/lambda/merchant/bootstrap (make build). Steps:
  1. a fresh merchant (target/lambda/merchant/bootstrap, as `make merchant` runs it), so the demo
     merchant's endpoint is left alone; one registered device per worker (challenge, v2 proof);
  2. a receiver on 127.0.0.1 (answers 200 at once, checks every Twochan-Signature), set as the
     merchant's endpoint;
  3. per sample: a payment (with its beacon proof), then its cancel. The change time is when the
     cancel's 200 arrives; the arrival is when the receiver first gets `payment.canceled` for that
     payment (events deduplicated by id). Each worker waits for its event before its next sample;
  4. N = 1 (one worker, --sequential samples), then N = --workers concurrent workers, --rounds each;
  5. the endpoint deleted and the devices deregistered.
The cancel request's own latency is the baseline measured in the same run. Prints the figures to
stderr and one JSON line to stdout (read by scripts/bench.py).

Usage: scripts/webhook_latency.py [--sequential 40] [--workers 32] [--rounds 3]"""

import argparse
import hashlib
import hmac
import http.server
import json
import os
import statistics
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stack import beacon_proof, call, device_key, new_merchant, registration_proof_v2, stack_env  # noqa: E402

WAIT_S = 30.0  # per sample; the contract says 5 s on the local stack


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Receiver(http.server.ThreadingHTTPServer):
    """The merchant's endpoint: every POST is timed on arrival, its signature checked, and answered
    200 (400 if the signature does not hold, so that it would be tried again)."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Hook)
        self.url = f"http://127.0.0.1:{self.server_port}/x"
        self.secret = b""
        self.cond = threading.Condition()
        self.first = {}  # payment id -> monotonic time of the first payment.canceled
        self.event_ids = {}  # event id -> tries received
        self.posts = self.bad_signatures = self.other = 0
        threading.Thread(target=self.serve_forever, daemon=True).start()


class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        now = time.monotonic()
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        hook = self.server
        parts = dict(p.split("=", 1) for p in (self.headers.get("Twochan-Signature") or "").split(",") if "=" in p)
        t = parts.get("t", "")
        good = (t.isdigit() and abs(time.time() - int(t)) <= 300 and hmac.compare_digest(
            hmac.new(hook.secret, t.encode() + b"." + raw, hashlib.sha256).hexdigest(), parts.get("v1", "")))
        self.send_response(200 if good else 400)
        self.send_header("Content-Length", "0")
        self.end_headers()
        try:
            event = json.loads(raw)
            event_id, kind, pid = event["id"], event["type"], event["data"]["payment"]["payment_id"]
        except (ValueError, KeyError, TypeError):
            event_id = kind = pid = None
        with hook.cond:
            hook.posts += 1
            if not good:
                hook.bad_signatures += 1
                return
            hook.event_ids[event_id] = hook.event_ids.get(event_id, 0) + 1
            if kind == "payment.canceled":
                if pid not in hook.first:
                    hook.first[pid] = now
                    hook.cond.notify_all()
            else:
                hook.other += 1

    def log_message(self, *args):
        pass


def quantile(xs, q):
    """Linear interpolation between the closest ranks (numpy's default)."""
    xs = sorted(xs)
    if len(xs) == 1:
        return xs[0]
    pos = q * (len(xs) - 1)
    lo = int(pos)
    return xs[lo] + (xs[min(lo + 1, len(xs) - 1)] - xs[lo]) * (pos - lo)


def summary(ms):
    if not ms:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    return {"p50_ms": round(statistics.median(ms), 1), "p99_ms": round(quantile(ms, 0.99), 1),
            "max_ms": round(max(ms), 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequential", type=int, default=40, help="samples at N = 1")
    ap.add_argument("--workers", type=int, default=32, help="concurrent workers of the second phase")
    ap.add_argument("--rounds", type=int, default=3, help="samples per worker in the second phase")
    args = ap.parse_args()

    env = stack_env()
    api, master = env["API_URL"], env["ISSUER_MASTER_KEY"]
    run_id = uuid.uuid4().hex[:10]
    merchant = f"whlat-{run_id}"
    mkey = new_merchant(env, merchant)
    hook = Receiver()
    status, body = call(api, "PUT", "/v1/webhook-endpoint", {"url": hook.url}, mkey)
    if status != 200:
        sys.exit(f"PUT /v1/webhook-endpoint: {status} {body}")
    hook.secret = body["secret"].encode()
    log(f"merchant {merchant}, endpoint {hook.url}")

    devices = []  # (code, key, token)

    def register(i):
        code, terminal = f"whlat-{run_id}-d{i}", f"whlat-{run_id}-t{i}"
        status, ch = call(api, "POST", "/v1/devices/challenges", {"unique_code": code})
        if status != 201:
            raise RuntimeError(f"challenge: {status} {ch}")
        key = device_key(master, code)
        status, reg = call(api, "POST", "/v1/devices", {
            "unique_code": code, "terminal_id": terminal, "challenge": ch["challenge"],
            "registration_proof": registration_proof_v2(key, code, terminal, ch["challenge"])})
        if status != 201:
            raise RuntimeError(f"registration: {status} {reg}")
        return code, key, reg["terminal_token"]

    errors = []
    try:
        with ThreadPoolExecutor(8) as pool:
            devices = list(pool.map(register, range(max(1, args.workers))))

        def sample(device, phase):
            """One payment and its cancel; (payment id, change time, cancel latency ms) or None."""
            code, key, _ = device
            status, p = call(api, "POST", "/v1/payments", {
                "unique_code": code, "beacon_proof": beacon_proof(key, code), "amount": 100,
                "currency": "EUR", "pos_id": "whlat"}, mkey, {"Idempotency-Key": uuid.uuid4().hex})
            if status != 201:
                errors.append(f"{phase} create: {status} {p}")
                return None
            pid = p["payment_id"]
            t0 = time.monotonic()
            status, c = call(api, "POST", f"/v1/payments/{pid}/cancel", None, mkey)
            t1 = time.monotonic()
            if status != 200:
                errors.append(f"{phase} cancel: {status} {c}")
                return None
            with hook.cond:
                hook.cond.wait_for(lambda: pid in hook.first, timeout=WAIT_S)
            return pid, t1, (t1 - t0) * 1000

        def phase(name, workers, per_worker):
            started = time.monotonic()

            def worker(i):
                return [sample(devices[i], name) for _ in range(per_worker)]

            with ThreadPoolExecutor(workers) as pool:
                done = [s for batch in pool.map(worker, range(workers)) for s in batch if s]
            wall = time.monotonic() - started
            with hook.cond:
                got = {pid: (hook.first[pid] - t1) * 1000 for pid, t1, _ in done if pid in hook.first}
            lat = list(got.values())
            r = {"n": workers, "samples": workers * per_worker, "canceled": len(done), "arrived": len(got),
                 "latency": summary(lat), "cancel_latency": summary([c for _, _, c in done]),
                 "before_cancel_answer": sum(1 for x in lat if x < 0),
                 "over_5s": sum(1 for x in lat if x > 5000), "seconds": round(wall, 1)}
            log(f"N = {workers}: {r['arrived']}/{r['samples']} events arrived; change → arrival p50 "
                f"{r['latency']['p50_ms']} ms, p99 {r['latency']['p99_ms']} ms, max {r['latency']['max_ms']} ms; "
                f"cancel request p50 {r['cancel_latency']['p50_ms']} ms, p99 {r['cancel_latency']['p99_ms']} ms; "
                f"{r['over_5s']} over 5 s; {wall:.1f} s")
            return r

        results = [phase("N=1", 1, args.sequential), phase(f"N={args.workers}", args.workers, args.rounds)]
    finally:
        status, _ = call(api, "DELETE", "/v1/webhook-endpoint", bearer=mkey)
        if status != 204:
            log(f"DELETE /v1/webhook-endpoint: {status}")
        for code, _, token in devices:
            call(api, "DELETE", f"/v1/devices/{code}", bearer=token)

    with hook.cond:
        retries = sum(n - 1 for n in hook.event_ids.values())
        out = {"merchant_id": merchant, "phases": results, "posts": hook.posts, "events": len(hook.event_ids),
               "retried_tries": retries, "other_events": hook.other, "bad_signatures": hook.bad_signatures,
               "all_signatures_verified": hook.bad_signatures == 0 and hook.posts > 0, "errors": errors[:5],
               "error_count": len(errors)}
    log(f"{hook.posts} POSTs, {len(hook.event_ids)} distinct events, {retries} repeated tries, "
        f"signatures {'all verified' if out['all_signatures_verified'] else f'{hook.bad_signatures} bad'}; "
        f"{len(errors)} request errors")
    for e in errors[:5]:
        log("  " + e)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
