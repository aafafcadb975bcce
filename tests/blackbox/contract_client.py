#!/usr/bin/env python3
"""A black-box client written from the contract alone (Python standard library, its own HMACs,
nothing of the Rust crates): register, pay, replay, confirm, wait for settlement, read the balance.
Run by `make test` against the stack `make up` deployed (coordinates from .local/stack.env)."""

import hashlib
import hmac
import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
env = {}
with open(os.path.join(ROOT, ".local", "stack.env")) as f:
    for line in f:
        if "=" in line:
            k, v = line.strip().split("=", 1)
            env[k] = v
env.update({k: v for k, v in os.environ.items() if k in ("API_URL", "MERCHANT_API_KEY", "ISSUER_MASTER_KEY")})
API, MASTER, MERCHANT_KEY = env["API_URL"], bytes.fromhex(env["ISSUER_MASTER_KEY"]), env["MERCHANT_API_KEY"]


def mac(key, message):
    return hmac.new(key, message.encode(), hashlib.sha256)


def call(method, path, body=None, bearer=None, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(API + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if bearer:
        req.add_header("Authorization", "Bearer " + bearer)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, hdrs, raw = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        status, hdrs, raw = e.code, e.headers, e.read()
    return status, {k.lower(): v for k, v in hdrs.items()}, json.loads(raw or b"null")


def check(cond, what):
    if not cond:
        sys.exit(f"black-box client: {what}")


code = "bb-" + secrets.token_hex(8)
terminal = "term-" + secrets.token_hex(6)
device_key = mac(MASTER, "2ch/device-key/v1|" + code).digest()
proof = mac(device_key, f"2ch/register/v1|{code}|{terminal}").hexdigest()
status, _, reg = call("POST", "/v1/devices", {"unique_code": code, "terminal_id": terminal, "registration_proof": proof})
check(status == 201, f"register: {status} {reg}")
token = reg["terminal_token"]

_, _, before = call("GET", "/v1/balance", bearer=MERCHANT_KEY)
request = {"unique_code": code, "amount": 1234, "currency": "USD", "pos_id": "bb-pos", "reference": "black box"}
idem = {"Idempotency-Key": "bb-" + code}
status, _, payment = call("POST", "/v1/payments", request, MERCHANT_KEY, idem)
check(status == 201 and payment["status"] == "pending", f"payment request: {status} {payment}")
status, hdrs, again = call("POST", "/v1/payments", request, MERCHANT_KEY, idem)
check(status == 201 and hdrs.get("idempotent-replayed") == "true" and again == payment, f"replay: {status} {hdrs}")

status, _, pending = call("GET", "/v1/pending-payments", bearer=token)
check(status == 200 and [p["payment_id"] for p in pending["payments"]] == [payment["payment_id"]], f"pending: {pending}")

message = "|".join(["2ch/pay/v1", payment["payment_id"], payment["merchant_id"], str(payment["amount"]),
                    payment["currency"], payment["challenge"], "1"])
confirm = {"auth_code": mac(device_key, message).hexdigest(), "counter": "1"}
status, _, confirmed = call("POST", f"/v1/payments/{payment['payment_id']}/confirm", confirm, token)
check(status == 200 and confirmed["status"] == "confirmed", f"confirm: {status} {confirmed}")

deadline = time.time() + 20
while True:
    _, _, current = call("GET", f"/v1/payments/{payment['payment_id']}", bearer=MERCHANT_KEY)
    if current["status"] == "settled" or time.time() > deadline:
        break
    time.sleep(0.1)
check(current["status"] == "settled" and current["settled_at"], f"settlement: {current}")


def usd(balance):
    return next((b for b in balance["balances"] if b["currency"] == "USD"), {"settled_amount": 0, "settled_count": 0})


_, _, after = call("GET", "/v1/balance", bearer=MERCHANT_KEY)
check(usd(after)["settled_amount"] == usd(before)["settled_amount"] + 1234, f"balance: {before} -> {after}")
check(usd(after)["settled_count"] == usd(before)["settled_count"] + 1, f"balance count: {before} -> {after}")
print(f"black-box client: registered, paid, confirmed and settled {payment['payment_id']}; balance rose by 1234 USD")
