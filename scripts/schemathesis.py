#!/usr/bin/env python3
"""make schemathesis: property-based tests of the deployed API against docs/openapi.yaml.

Sets up what generated requests need to reach more than 404 (a device registered to a fresh
terminal, whose token authenticates the phone operations; a second device of the same terminal,
registered with that token, to be deregistered; a merchant of the run's own; a payment of it confirmed
on the first device and settled, for refunds; the merchant's webhook endpoint set to a receiver of
this script on 127.0.0.1, which answers every event 204), then runs schemathesis with the checks below;
scripts/schemathesis_hooks.py gives some generated requests what only a device has (a beacon proof
of the moment, a proof over a fresh challenge) and points some at the real payment (refunds of 1,
so that 201 is reached many times) and the receiver. The endpoint is deleted after the run (the
receiver goes with this script). Coordinates come from .local/stack.env, like the black-box
client's."""

import collections
import http.server
import json
import os
import secrets
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stack import (LOCAL, ROOT, auth_code, beacon_proof, device_key, new_merchant,  # noqa: E402
                   registration_proof_v2, stack_env, wait_for)

env = stack_env()
API, MASTER = env["API_URL"], env["ISSUER_MASTER_KEY"]

CHECKS = ",".join([
    "not_a_server_error", "status_code_conformance", "content_type_conformance",
    "response_schema_conformance", "response_headers_conformance",
])
# Per operation and phase: about 1000 requests, a little over a minute on the local cloud.
MAX_EXAMPLES = 50


def call(method, path, body=None, bearer=None, headers=None):
    req = urllib.request.Request(API + path, data=json.dumps(body).encode() if body else None, method=method)
    req.add_header("Content-Type", "application/json")
    if bearer:
        req.add_header("Authorization", "Bearer " + bearer)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    for _ in range(12):
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")
        except urllib.error.URLError:
            # The functions may be in the middle of a redeploy: the API comes back within a minute.
            time.sleep(5)
    sys.exit(f"schemathesis setup: {API} unreachable")


def expect(want, got, what):
    status, body = got
    if status != want:
        sys.exit(f"schemathesis setup: {what}: {status} {body}")
    return body


def register(code, terminal, bearer=None):
    """The device's key and the terminal token of its registration (a challenge, the v2 proof over it)."""
    key = device_key(MASTER, code)
    challenge = expect(201, call("POST", "/v1/devices/challenges", {"unique_code": code}), "challenge")["challenge"]
    body = {"unique_code": code, "terminal_id": terminal, "challenge": challenge,
            "registration_proof": registration_proof_v2(key, code, terminal, challenge)}
    return key, expect(201, call("POST", "/v1/devices", body, bearer), "register")["terminal_token"]


run = secrets.token_hex(6)
# A merchant of the run's own: its webhook endpoint and balance are the run's alone, whatever else
# uses the stack at the same time (make test runs the black-box client beside it).
merchant_key = new_merchant(env, "st-merchant-" + run)
terminal = "st-phone-" + run
device, spare = "st-dev-" + run, "st-spare-" + run
key, token = register(device, terminal)
# The terminal holds a device now: one more needs its token.
register(spare, terminal, token)
# A confirmed payment, so that reads of a confirmed (then settled) payment are checked as well.
request = {"unique_code": device, "beacon_proof": beacon_proof(key, device), "amount": 100, "currency": "USD",
           "pos_id": "st-pos"}
payment = expect(201, call("POST", "/v1/payments", request, merchant_key, {"Idempotency-Key": "st-" + run}),
                 "payment request")
confirm = {"auth_code": auth_code(key, payment, 1), "counter": "1"}
expect(200, call("POST", f"/v1/payments/{payment['payment_id']}/confirm", confirm, token), "confirm")
# Settled, so that refunds of it reach 201 (the hooks refund 1 of its 100 at a time) and 422 once it is used up.
if not wait_for(lambda: call("GET", f"/v1/payments/{payment['payment_id']}", bearer=token)[1]["status"] == "settled"):
    sys.exit("schemathesis setup: the payment was not settled within 30 s")


class Receiver(http.server.BaseHTTPRequestHandler):
    """The run merchant's webhook endpoint: every event is answered 204 and counted."""
    events = collections.Counter()

    def do_POST(self):  # noqa: N802
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            Receiver.events[json.loads(raw).get("type")] += 1
        except (ValueError, AttributeError):
            Receiver.events["(not a JSON object)"] += 1
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
threading.Thread(target=receiver.serve_forever, daemon=True).start()
webhook_url = f"http://127.0.0.1:{receiver.server_port}/schemathesis-{run}"
expect(200, call("PUT", "/v1/webhook-endpoint", {"url": webhook_url}, merchant_key), "webhook endpoint")

os.makedirs(os.path.join(LOCAL, "schemathesis"), exist_ok=True)
# Deterministic generation, and one worker: requests on the run's device interact (one pending
# payment per code), so their order is part of what makes a run repeat the previous one.
command = [
    "schemathesis", "--config-file", "scripts/schemathesis.toml", "run", "docs/openapi.yaml", "--url", API,
    "--checks", CHECKS, "--generation-deterministic", "--max-examples", str(MAX_EXAMPLES), "--workers", "1",
    "--report", "har", "--report-har-path", ".local/schemathesis/last-run.har", "--no-color",
]
print("+ " + " ".join(command), flush=True)
started = time.monotonic()
result = subprocess.run(command, cwd=ROOT, env={
    **os.environ,
    "PATH": os.path.join(LOCAL, "venv", "bin") + os.pathsep + os.environ["PATH"],
    "HYPOTHESIS_STORAGE_DIRECTORY": os.path.join(LOCAL, "schemathesis", "hypothesis"),
    "MERCHANT_API_KEY": merchant_key,
    "TERMINAL_TOKEN": token,
    "SCHEMATHESIS_TERMINAL": terminal,
    "SCHEMATHESIS_DEVICE": device,
    "SCHEMATHESIS_SPARE_DEVICE": spare,
    "SCHEMATHESIS_PAYMENT": payment["payment_id"],
    "SCHEMATHESIS_WEBHOOK_URL": webhook_url,
    "SCHEMATHESIS_RUN": run + ":",
})
print(f"schemathesis: exit {result.returncode} after {time.monotonic() - started:.0f} s", flush=True)
# The receiver ends with this script: no endpoint is left pointing at it.
call("DELETE", "/v1/webhook-endpoint", bearer=merchant_key)
print("schemathesis: webhook events received: "
      + (", ".join(f"{n} {kind}" for kind, n in sorted(Receiver.events.items())) or "none"), flush=True)
sys.exit(result.returncode)
