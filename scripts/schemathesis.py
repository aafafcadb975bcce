#!/usr/bin/env python3
"""make schemathesis: property-based tests of the deployed API against docs/openapi.yaml.

Sets up what generated requests need to reach more than 404 (a device registered to a fresh
terminal, whose token authenticates the phone operations; a second device of the same terminal,
registered with that token, to be deregistered; a payment confirmed on the first device), then runs
schemathesis with the checks below; scripts/schemathesis_hooks.py gives some generated requests
what only a device has (a beacon proof of the moment, a proof over a fresh challenge). Coordinates
come from .local/stack.env, like the black-box client's."""

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stack import LOCAL, ROOT, auth_code, beacon_proof, device_key, registration_proof_v2, stack_env  # noqa: E402

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
terminal = "st-phone-" + run
device, spare = "st-dev-" + run, "st-spare-" + run
key, token = register(device, terminal)
# The terminal holds a device now: one more needs its token.
register(spare, terminal, token)
# A confirmed payment, so that reads of a confirmed (then settled) payment are checked as well.
request = {"unique_code": device, "beacon_proof": beacon_proof(key, device), "amount": 100, "currency": "USD",
           "pos_id": "st-pos"}
payment = expect(201, call("POST", "/v1/payments", request, env["MERCHANT_API_KEY"], {"Idempotency-Key": "st-" + run}),
                 "payment request")
confirm = {"auth_code": auth_code(key, payment, 1), "counter": "1"}
expect(200, call("POST", f"/v1/payments/{payment['payment_id']}/confirm", confirm, token), "confirm")

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
    "MERCHANT_API_KEY": env["MERCHANT_API_KEY"],
    "TERMINAL_TOKEN": token,
    "SCHEMATHESIS_TERMINAL": terminal,
    "SCHEMATHESIS_DEVICE": device,
    "SCHEMATHESIS_SPARE_DEVICE": spare,
    "SCHEMATHESIS_PAYMENT": payment["payment_id"],
    "SCHEMATHESIS_RUN": run + ":",
})
print(f"schemathesis: exit {result.returncode} after {time.monotonic() - started:.0f} s", flush=True)
sys.exit(result.returncode)
