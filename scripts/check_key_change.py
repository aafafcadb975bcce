#!/usr/bin/env python3
"""`make up` applies a changed ISSUER_MASTER_KEY to a stack that is already running (contract,
"Local stack"): every request after `make up` returns uses the key it was given.

On the running stack of .local/stack.env (make up first): warms every function that verifies
device codes with the stack's key K0 (registration, payment request with a beacon proof,
confirmation with an auth code, a few at once so that there are several warm instances), runs
`scripts/up.sh` with a fresh random key K1, and checks at once that all three functions accept K1
and refuse K0. Then it runs `scripts/up.sh` with K0 again, which leaves the stack as it was (also
when a check failed), and checks the same the other way round. The merchant is re-seeded by each
`make up`: its key is re-read from .local/stack.env, which is rewritten with it.

Usage: .local/venv/bin/python scripts/check_key_change.py [--parallel N]
Takes two `make up` runs (their builds are no-ops when the binaries are current; make test runs
them with SKIP_BUILD=1, as it has just built them)."""

import argparse
import concurrent.futures
import hashlib
import hmac
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STACK_ENV = os.path.join(ROOT, ".local", "stack.env")


def stack_env():
    env = {}
    with open(STACK_ENV) as f:
        for line in f:
            if "=" in line:
                k, v = line.strip().split("=", 1)
                env[k] = v
    return env


def call(api, method, path, body=None, bearer=None, headers=None):
    req = urllib.request.Request(api + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None)
    req.add_header("Content-Type", "application/json")
    if bearer:
        req.add_header("Authorization", "Bearer " + bearer)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw) if raw else None
        except ValueError:
            return e.code, raw.decode(errors="replace")


def mac(key, message):
    return hmac.new(key, message.encode(), hashlib.sha256)


def device_key(master_hex, code):
    """K_dev = HMAC(master, "2ch/device-key/v1|" + code): the newest key of the list."""
    return mac(bytes.fromhex(master_hex.split(",")[0]), "2ch/device-key/v1|" + code).digest()


def registration_proof(master, code, terminal, challenge):
    return mac(device_key(master, code), f"2ch/register/v2|{code}|{terminal}|{challenge}").hexdigest()


def beacon_proof(master, code):
    return mac(device_key(master, code), f"2ch/beacon/v1|{code}|{int(time.time()) // 30}").hexdigest()[:16]


def auth_code(master, p, counter):
    fields = [p["payment_id"], p["merchant_id"], str(p["amount"]), p["currency"], p["challenge"], str(counter)]
    return mac(device_key(master, p["unique_code"]), "2ch/pay/v1|" + "|".join(fields)).hexdigest()


class Failed(Exception):
    pass


def expect(what, got, status, code=None):
    st, body = got
    ok = st == status and (code is None or (isinstance(body, dict) and body.get("error", {}).get("code") == code))
    if not ok:
        raise Failed(f"{what}: expected {status}{' ' + code if code else ''}, got {st} {body}")
    return body


def flow(env, right, wrong):
    """One device through the three functions: each refuses a code made with `wrong`, then accepts
    the one made with `right`. Returns nothing; raises Failed with what went wrong."""
    api, merchant_key = env["API_URL"], env["MERCHANT_API_KEY"]
    code, terminal = "kc-" + secrets.token_hex(8), "kt-" + secrets.token_hex(8)

    def challenge():
        return expect("POST /v1/devices/challenges", call(api, "POST", "/v1/devices/challenges",
                                                          {"unique_code": code}), 201)["challenge"]

    def register(master):
        ch = challenge()
        return call(api, "POST", "/v1/devices", {"unique_code": code, "terminal_id": terminal, "challenge": ch,
                                                 "registration_proof": registration_proof(master, code, terminal, ch)})

    expect("registration (registration function), proof of the other key", register(wrong), 422, "invalid_registration_proof")
    token = expect("registration (registration function), proof of the stack's key", register(right), 201)["terminal_token"]

    def pay(master):
        body = {"unique_code": code, "beacon_proof": beacon_proof(master, code), "amount": 1234,
                "currency": "EUR", "pos_id": "pos-keycheck"}
        return call(api, "POST", "/v1/payments", body, bearer=merchant_key,
                    headers={"Idempotency-Key": "kc-" + secrets.token_hex(12)})

    expect("payment request (payment-request function), beacon proof of the other key", pay(wrong), 422, "invalid_beacon_proof")
    payment = expect("payment request (payment-request function), beacon proof of the stack's key", pay(right), 201)

    def confirm(master):
        path = f"/v1/payments/{payment['payment_id']}/confirm"
        return call(api, "POST", path, {"auth_code": auth_code(master, payment, 1), "counter": "1"}, bearer=token)

    expect("confirmation (confirmation function), auth code of the other key", confirm(wrong), 422, "invalid_auth_code")
    expect("confirmation (confirmation function), auth code of the stack's key", confirm(right), 200)


def flows(env, right, wrong, parallel, label):
    """`parallel` flows at once; True when all passed."""
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        results = list(pool.map(lambda _: _try(flow, env, right, wrong), range(parallel)))
    failures = [r for r in results if r]
    for f in failures:
        print(f"  FAIL {label}: {f}", file=sys.stderr)
    print(f"{label}: {parallel - len(failures)}/{parallel} devices registered, paid and confirmed "
          f"with the stack's key, each code of the other key refused")
    return not failures


def _try(fn, *args):
    try:
        fn(*args)
        return None
    except (Failed, OSError) as e:
        return str(e)


def make_up(key, pending_ttl):
    """scripts/up.sh (what `make up` runs) with ISSUER_MASTER_KEY=key; its output goes to stderr."""
    env = dict(os.environ, ISSUER_MASTER_KEY=key)
    if pending_ttl:
        env["PENDING_TTL_SECONDS"] = pending_ttl
    started = time.time()
    r = subprocess.run([os.path.join(ROOT, "scripts", "up.sh")], env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stdout)
        raise Failed(f"scripts/up.sh exited {r.returncode}")
    print(f"make up with key {key[:8]}...: done in {time.time() - started:.0f} s")
    env = stack_env()
    if env.get("ISSUER_MASTER_KEY") != key:
        raise Failed("make up did not write the key it was given to .local/stack.env")
    return env


def function_key_versions(env):
    """Diagnostics: ISSUER_MASTER_KEY_VERSION of each function beside the SSM parameter's version."""
    try:
        import boto3
    except ImportError:
        return "boto3 not available"
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    s = boto3.session.Session(region_name=os.environ.get("AWS_REGION", "us-east-1"))
    endpoint = env.get("AWS_ENDPOINT_URL")
    lam, ssm = s.client("lambda", endpoint_url=endpoint), s.client("ssm", endpoint_url=endpoint)
    out = []
    for f in ("registration", "payment-request", "confirmation"):
        name = f"{os.environ.get('STACK_NAME', 'twochan')}-{f}"
        variables = lam.get_function_configuration(FunctionName=name).get("Environment", {}).get("Variables", {})
        out.append(f"{f}={variables.get('ISSUER_MASTER_KEY_VERSION', '-')}")
        parameter = variables.get("ISSUER_MASTER_KEY_PARAMETER")
    if parameter:
        out.append(f"ssm {parameter} version {ssm.get_parameter(Name=parameter)['Parameter']['Version']}")
    return ", ".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parallel", type=int, default=4, help="devices at once per phase (default 4)")
    args = ap.parse_args()
    if not os.path.isfile(STACK_ENV):
        sys.exit(f"{STACK_ENV} is missing: run make up first")
    env = stack_env()
    k0, pending_ttl = env["ISSUER_MASTER_KEY"], env.get("PENDING_TTL_SECONDS", "")
    k1 = secrets.token_hex(32)
    ok = flows(env, k0, k1, args.parallel, "before: the stack's key (warms the functions)")
    if not ok:
        sys.exit("key change: the stack does not work with its own key; nothing changed")
    try:
        env = make_up(k1, pending_ttl)
        print(f"  function key versions: {function_key_versions(env)}")
        ok = flows(env, k1, k0, args.parallel, "after make up with a new key") and ok
    except Failed as e:
        print(f"  FAIL {e}", file=sys.stderr)
        ok = False
    finally:
        # Always back to the key the stack had, as `make up` without ISSUER_MASTER_KEY leaves it
        # (or as the caller's own ISSUER_MASTER_KEY did).
        try:
            env = make_up(k0, pending_ttl)
            print(f"  function key versions: {function_key_versions(env)}")
        except Failed as e:
            sys.exit(f"key change: restoring the stack's key failed: {e}; run make up")
    ok = flows(env, k0, k1, args.parallel, "after make up with the key restored") and ok
    if not ok:
        sys.exit("key change: FAILED (a function kept serving with a key make up had replaced)")
    print("key change: every function used the key of the latest make up at once, both ways")


if __name__ == "__main__":
    main()
