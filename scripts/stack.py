"""Shared helpers of the Python scripts that drive the local stack (bench, sweeps): the stack's
coordinates from .local/stack.env, a JSON HTTP call, and the device side of the contract's HMACs
(what a real device computes with its burned-in key)."""

import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCAL = os.path.join(ROOT, ".local")


def stack_env():
    """KEY=value lines of .local/stack.env (written by make up), overridden by the environment."""
    env = {}
    with open(os.path.join(LOCAL, "stack.env")) as f:
        for line in f:
            if "=" in line:
                k, v = line.strip().split("=", 1)
                env[k] = v
    env.update({k: v for k, v in os.environ.items() if k in env})
    return env


def new_merchant(env, merchant_id):
    """MERCHANT_API_KEY of a new merchant, made as `make merchant` makes one (scripts/merchant.sh)."""
    tool = os.path.join(ROOT, "target", "lambda", "merchant", "bootstrap")
    if not os.access(tool, os.X_OK):
        sys.exit(f"{tool} is missing: run make build (or make up) first")
    run_env = dict(os.environ, **env)
    for k, v in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_REGION", "us-east-1")):
        run_env.setdefault(k, v)
    out = subprocess.run([tool, merchant_id], env=run_env, capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if line.startswith("MERCHANT_API_KEY="):
            return line.split("=", 1)[1]
    sys.exit(f"merchant printed no key: {out!r}")


def call(api, method, path, body=None, bearer=None, headers=None, timeout=30):
    """(status, parsed JSON body or None)."""
    req = urllib.request.Request(api + path, data=json.dumps(body).encode() if body is not None else None, method=method)
    req.add_header("Content-Type", "application/json")
    if bearer:
        req.add_header("Authorization", "Bearer " + bearer)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, json.loads(raw) if raw else None


def mac(key, message):
    return hmac.new(key, message.encode(), hashlib.sha256)


def device_key(master_hex, code):
    """K_dev = HMAC(master, "2ch/device-key/v1|" + code), as burned into the device."""
    return mac(bytes.fromhex(master_hex.split(",")[0]), "2ch/device-key/v1|" + code).digest()


def registration_proof(key, code, terminal):
    """Contract revision 1's proof (refused since revision 2; scripts/bench_init.py still sends it)."""
    return mac(key, f"2ch/register/v1|{code}|{terminal}").hexdigest()


def registration_proof_v2(key, code, terminal, challenge):
    """The device's proof over a challenge of POST /v1/devices/challenges (contract revision 2)."""
    return mac(key, f"2ch/register/v2|{code}|{terminal}|{challenge}").hexdigest()


def beacon_proof(key, code, at=None):
    """What the device broadcasts beside its code at unix time `at` (default now): it changes every 30 s."""
    step = int(time.time() if at is None else at) // 30
    return mac(key, f"2ch/beacon/v1|{code}|{step}").hexdigest()[:16]


def auth_code(key, payment, counter):
    p = payment
    return mac(key, "2ch/pay/v1|" + "|".join([p["payment_id"], p["merchant_id"], str(p["amount"]),
                                              p["currency"], p["challenge"], str(counter)])).hexdigest()


def wait_for(check, timeout=30.0, every=0.2):
    """Polls check() until it returns something truthy; returns it (or None after timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every)
    return None
