#!/usr/bin/env python3
"""Init, first request and memory of each release bootstrap, under a Lambda Runtime API on loopback.

For each function, RUNS times: start the bootstrap as Lambda would (its environment, the runtime
API address), time from exec to its first `GET /runtime/invocation/next` (init), then hand it one
real event (first request) and WARM more (warm requests), timing each from the event's delivery
to the posted response; finally read its peak RSS (VmHWM). The events do real work against the
local stack (DynamoDB, SQS, SSM on the emulator): a re-registration, a balance, a pending list,
a duplicate settlement delivery.

Prints one JSON object per function (medians over RUNS); `scripts/bench.sh` tabulates them."""

import http.server
import json
import os
import queue
import secrets
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stack import ROOT, auth_code, call, device_key, registration_proof, stack_env, wait_for  # noqa: E402

RUNS = int(os.environ.get("BENCH_INIT_RUNS", "20"))
WARM = int(os.environ.get("BENCH_WARM_REQUESTS", "50"))


class Runtime(http.server.ThreadingHTTPServer):
    """The part of the Lambda Runtime API a bootstrap uses, with timestamps."""

    daemon_threads = True

    def handle_error(self, request, client_address):
        # The bootstrap is killed mid-request at the end of a run; that is expected.
        pass

    def __init__(self):
        super().__init__(("127.0.0.1", 0), RuntimeHandler)
        self.events = queue.Queue()
        self.first_next = None
        self.delivered = {}
        self.answered = {}
        self.errors = []
        self.done = threading.Condition()


class RuntimeHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        rt = self.server
        if not self.path.endswith("/runtime/invocation/next"):
            return self.reply(404, b"{}")
        if rt.first_next is None:
            rt.first_next = time.perf_counter()
        request_id, event = rt.events.get()
        body = json.dumps(event).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Lambda-Runtime-Aws-Request-Id", request_id)
        self.send_header("Lambda-Runtime-Deadline-Ms", str(int(time.time() * 1000) + 30000))
        self.send_header("Lambda-Runtime-Invoked-Function-Arn", "arn:aws:lambda:us-east-1:000000000000:function:bench")
        self.end_headers()
        rt.delivered[request_id] = time.perf_counter()
        self.wfile.write(body)

    def do_POST(self):
        rt = self.server
        length = int(self.headers.get("Content-Length") or 0)
        payload = self.rfile.read(length)
        parts = self.path.split("/")
        with rt.done:
            if self.path.endswith("/response"):
                rt.answered[parts[-2]] = (time.perf_counter(), payload)
            else:
                rt.errors.append((self.path, payload[:300]))
                if "/invocation/" in self.path:
                    rt.answered[parts[-2]] = (time.perf_counter(), payload)
            rt.done.notify_all()
        self.reply(202, b"{}")

    def reply(self, status, body):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def apigw(method, path, bearer=None, body=None):
    headers = {"content-type": "application/json"}
    if bearer:
        headers["authorization"] = "Bearer " + bearer
    return {
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "", "headers": headers,
        "requestContext": {"accountId": "000000000000", "apiId": "bench", "domainName": "bench.local",
                           "domainPrefix": "bench", "requestId": "bench", "routeKey": "$default",
                           "stage": "$default", "time": "27/Nov/2026:00:00:00 +0000", "timeEpoch": 0,
                           "http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                                    "sourceIp": "127.0.0.1", "userAgent": "bench"}},
        "body": json.dumps(body) if body is not None else None, "isBase64Encoded": False,
    }


def setup(env):
    """Two devices (one re-registered by the registration bench, one that paid and settled)."""
    api, master, merchant_key = env["API_URL"], env["ISSUER_MASTER_KEY"], env["MERCHANT_API_KEY"]
    run = secrets.token_hex(5)
    devices = {}
    for role in ("reg", "pay"):
        code, terminal = f"bench-{role}-{run}", f"bench-phone-{role}-{run}"
        key = device_key(master, code)
        body = {"unique_code": code, "terminal_id": terminal, "registration_proof": registration_proof(key, code, terminal)}
        status, out = call(api, "POST", "/v1/devices", body)
        assert status == 201, (status, out)
        devices[role] = (code, terminal, key, out["terminal_token"], body)
    code, _, key, token, _ = devices["pay"]
    status, payment = call(api, "POST", "/v1/payments", {"unique_code": code, "amount": 100, "currency": "EUR", "pos_id": "bench"},
                           bearer=merchant_key, headers={"Idempotency-Key": "bench-" + run})
    assert status == 201, (status, payment)
    status, out = call(api, "POST", f"/v1/payments/{payment['payment_id']}/confirm",
                       {"auth_code": auth_code(key, payment, 1), "counter": "1"}, bearer=token)
    assert status == 200, (status, out)
    settled = wait_for(lambda: call(api, "GET", f"/v1/payments/{payment['payment_id']}", bearer=merchant_key)[1]["status"] == "settled")
    assert settled, "the bench payment did not settle"
    message = {k: payment[k] for k in ("payment_id", "merchant_id", "unique_code", "amount", "currency")}
    message["sent_at_ms"] = int(time.time() * 1000)
    return {
        "registration": apigw("POST", "/v1/devices", body=devices["reg"][4]),
        "payment-request": apigw("GET", "/v1/balance", bearer=merchant_key),
        "confirmation": apigw("GET", "/v1/pending-payments", bearer=token),
        "settlement": {"Records": [{"messageId": "bench", "receiptHandle": "bench", "body": json.dumps(message),
                                    "attributes": {}, "messageAttributes": {}, "eventSource": "aws:sqs"}]},
    }


def one_run(name, event, env):
    rt = Runtime()
    threading.Thread(target=rt.serve_forever, daemon=True).start()
    fenv = {
        "PATH": "/usr/bin:/bin", "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{rt.server_address[1]}",
        "AWS_LAMBDA_FUNCTION_NAME": f"bench-{name}", "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128", "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/bench-{name}",
        "AWS_LAMBDA_LOG_STREAM_NAME": "bench", "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_ENDPOINT_URL": env["AWS_ENDPOINT_URL"],
        "TABLE_NAME": env["TABLE_NAME"], "SETTLEMENT_QUEUE_URL": env["SETTLEMENT_QUEUE_URL"],
        "ISSUER_MASTER_KEY_PARAMETER": "/twochan/issuer-master-key", "PENDING_TTL_SECONDS": "120",
        "RUST_LOG": "info",
    }
    fenv.update({k: v for k, v in os.environ.items() if k.startswith("AWS_LC_")})
    bootstrap = os.path.join(ROOT, "target", "lambda", name, "bootstrap")
    latencies = []
    for i in range(WARM + 1):
        rt.events.put((f"req-{i}", event))
    started = time.perf_counter()
    proc = subprocess.Popen([bootstrap], env=fenv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for i in range(WARM + 1):
            rid = f"req-{i}"
            with rt.done:
                if not rt.done.wait_for(lambda: rid in rt.answered, timeout=30):
                    raise RuntimeError(f"{name}: no answer to {rid}; errors: {rt.errors}")
            latencies.append(rt.answered[rid][0] - rt.delivered[rid])
        with open(f"/proc/{proc.pid}/status") as f:
            rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        answer = rt.answered["req-0"][1]
    finally:
        proc.kill()
        proc.wait()
        rt.shutdown()
        rt.server_close()
    if rt.errors:
        raise RuntimeError(f"{name}: the function reported errors: {rt.errors[:2]}")
    return {"init_ms": (rt.first_next - started) * 1000, "first_ms": latencies[0] * 1000,
            "warm_ms": statistics.median(latencies[1:]) * 1000, "rss_mb": rss_kb / 1024, "answer": answer[:120].decode()}


def main():
    env = stack_env()
    env.setdefault("SETTLEMENT_QUEUE_URL", "")
    events = setup(env)
    for name, event in events.items():
        runs = [one_run(name, event, env) for _ in range(RUNS)]
        med = lambda k: statistics.median(r[k] for r in runs)  # noqa: E731
        size = os.path.getsize(os.path.join(ROOT, "target", "lambda", name, "bootstrap"))
        print(json.dumps({"function": name, "runs": RUNS, "warm_requests": WARM, "init_ms": round(med("init_ms"), 2),
                          "init_p90_ms": round(sorted(r["init_ms"] for r in runs)[int(RUNS * 0.9) - 1], 2),
                          "first_ms": round(med("first_ms"), 2), "warm_ms": round(med("warm_ms"), 2),
                          "first_over_warm": round(med("first_ms") / med("warm_ms"), 2),
                          "peak_rss_mb": round(max(r["rss_mb"] for r in runs), 1), "size_mb": round(size / 1e6, 2),
                          "sample_answer": runs[0]["answer"]}), flush=True)


if __name__ == "__main__":
    main()
