#!/usr/bin/env python3
"""A black-box client written from the contract (revision 2) alone: Python standard library, its own
HMACs, nothing of the Rust crates. It first reproduces the contract's test vectors
(contract-v2-vectors.json, a verbatim copy of the contract's vectors.json), then drives the stack
`make up` deployed (coordinates from .local/stack.env): registration challenges, a terminal's
ownership, beacon proofs, idempotent replays, refused currencies and text, and a payment through
to settlement and the balance. One line per check; the first failing check ends the run, with the
answer it got. `--self-test` checks the vectors only (no stack needed).

Where the contract is silent, the server's choices this client expects: a missing `challenge` is
400; a `beacon_proof` that is not 16 lowercase hex characters is 400; the idempotency fingerprint
of a payment request leaves `beacon_proof` out (a retry with a fresher proof is the same request)
and a replay is answered even once its proof has aged out."""

import datetime
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


# ---------------------------------------------------------------- the device's side of the contract


def mac(key, message):
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def device_key(master, code):
    return bytes.fromhex(mac(master, "2ch/device-key/v1|" + code))


def registration_message(code, terminal, challenge):
    return f"2ch/register/v2|{code}|{terminal}|{challenge}"


def beacon_message(code, unix_seconds):
    return f"2ch/beacon/v1|{code}|{int(unix_seconds) // 30}"


def pay_message(payment_id, merchant_id, amount, currency, challenge, counter):
    return "|".join(["2ch/pay/v1", payment_id, merchant_id, str(amount), currency, challenge, str(counter)])


def registration_proof(key, code, terminal, challenge):
    return mac(key, registration_message(code, terminal, challenge))


def beacon_proof(key, code, steps_ago=0):
    return mac(key, beacon_message(code, time.time() - 30 * steps_ago))[:16]


def check(what, ok, detail="", quiet=False):
    if not ok:
        sys.exit(f"black-box client: FAIL {what}\n  {detail}")
    if not quiet:
        print(f"black-box client: ok   {what}")


def self_test():
    """Every device-side vector of the contract, message and code (webhook signatures: part 2)."""
    with open(os.path.join(HERE, "contract-v2-vectors.json")) as f:
        vectors = json.load(f)["vectors"]
    seen = {}
    for v in vectors:
        kind = v["kind"]
        if kind == "device_key":
            got = device_key(bytes.fromhex(v["issuer_master_key"]), v["unique_code"]).hex()
            ok = got == v["device_key"]
        elif kind == "registration_proof":
            message = registration_message(v["unique_code"], v["terminal_id"], v["challenge"])
            got = mac(bytes.fromhex(v["device_key"]), message)
            ok = message == v["message"] and got == v["registration_proof"]
        elif kind == "beacon_proof":
            message = beacon_message(v["unique_code"], v["unix_seconds"])
            got = mac(bytes.fromhex(v["device_key"]), message)[:16]
            ok = message == v["message"] and int(v["unix_seconds"]) // 30 == v["step"] and got == v["beacon_proof"]
        elif kind == "auth_code":
            message = pay_message(v["payment_id"], v["merchant_id"], v["amount"], v["currency"], v["challenge"],
                                  v["counter"])
            got = mac(bytes.fromhex(v["device_key"]), message)
            ok = message == v["message"] and got == v["auth_code"]
        else:
            continue
        if not ok:
            sys.exit(f"black-box client: FAIL {kind} vector: got {got} for {v}")
        seen[kind] = seen.get(kind, 0) + 1
    check("contract vectors: " + ", ".join(f"{n} {k}" for k, n in sorted(seen.items())),
          set(seen) == {"device_key", "registration_proof", "beacon_proof", "auth_code"}, f"kinds: {seen}")


# ---------------------------------------------------------------- the API


def load_stack():
    env = {}
    with open(os.path.join(ROOT, ".local", "stack.env")) as f:
        for line in f:
            if "=" in line:
                k, v = line.strip().split("=", 1)
                env[k] = v
    env.update({k: v for k, v in os.environ.items() if k in ("API_URL", "MERCHANT_API_KEY", "ISSUER_MASTER_KEY")})
    return env["API_URL"], bytes.fromhex(env["ISSUER_MASTER_KEY"]), env["MERCHANT_API_KEY"]


API = MASTER = MERCHANT_KEY = None


def call(method, path, body=None, bearer=None, headers=None):
    """(status, lower-cased headers, parsed JSON body)."""
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


def expect(what, answer, status, error=None, ok=None, quiet=False):
    """Checks an answer's status, its error code and `ok(body, headers)`; returns the body."""
    got, headers, body = answer
    code = body.get("error", {}).get("code") if isinstance(body, dict) else None
    try:
        passed = got == status and (error is None or code == error) and (ok is None or bool(ok(body, headers)))
    except (KeyError, TypeError, AttributeError, ValueError):
        passed = False
    replayed = headers.get("idempotent-replayed")
    check(what, passed, f"wanted {status} {error or ''}, got {got} {body}"
                        + (f" (Idempotent-Replayed: {replayed})" if replayed else ""), quiet)
    return body


HEX32 = re.compile(r"[0-9a-f]{32}\Z")


def at(timestamp):
    return datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc).timestamp()


def challenge_for(code):
    answer = call("POST", "/v1/devices/challenges", {"unique_code": code})
    return expect(f"challenge for {code}", answer, 201, quiet=True)["challenge"]


def registration(code, terminal, challenge, proof=None):
    proof = proof or registration_proof(device_key(MASTER, code), code, terminal, challenge)
    return {"unique_code": code, "terminal_id": terminal, "challenge": challenge, "registration_proof": proof}


def register(code, terminal, bearer=None):
    """POST /v1/devices with a fresh challenge and the device's proof over it: the raw answer."""
    return call("POST", "/v1/devices", registration(code, terminal, challenge_for(code)), bearer)


def away_from_a_step_edge(margin=10):
    """A proof of n steps ago is checked as n steps ago only if no step begins before the server looks."""
    left = 30 - time.time() % 30
    if left < margin:
        time.sleep(left + 0.5)


def run():
    run_id = secrets.token_hex(6)
    code_a, code_b, code_c = (f"bb-{who}-{run_id}" for who in "abc")
    phone, other_phone = f"bb-phone-{run_id}", f"bb-phone2-{run_id}"

    # Registration: a challenge per registration, bound to its code, used up by a valid proof.
    before_challenge = time.time()
    answer = call("POST", "/v1/devices/challenges", {"unique_code": code_a})
    issued = expect("challenge: 201 {unique_code, challenge, expires_at}, valid for 120 s", answer, 201,
                    ok=lambda b, h: set(b) == {"unique_code", "challenge", "expires_at"} and b["unique_code"] == code_a
                    and HEX32.match(b["challenge"]) and 110 <= at(b["expires_at"]) - before_challenge <= 130)
    token_a = expect("register A to the phone", call("POST", "/v1/devices", registration(
        code_a, phone, issued["challenge"])), 201, ok=lambda b, h: b["terminal_id"] == phone)["terminal_token"]
    expect("the same challenge a second time: 422", call("POST", "/v1/devices", registration(
        code_a, phone, issued["challenge"])), 422, "invalid_registration_proof")
    expect("a challenge of code A for code B: 422", call("POST", "/v1/devices", registration(
        code_b, other_phone, challenge_for(code_a))), 422, "invalid_registration_proof")
    challenge_b = challenge_for(code_b)
    v1_proof = mac(device_key(MASTER, code_b), f"2ch/register/v1|{code_b}|{other_phone}")
    expect("a revision 1 proof with a fresh challenge: 422", call("POST", "/v1/devices", registration(
        code_b, other_phone, challenge_b, v1_proof)), 422, "invalid_registration_proof")
    token_b = expect("its challenge, not used up by the refused proof, with the v2 proof: 201", call(
        "POST", "/v1/devices", registration(code_b, other_phone, challenge_b)), 201)["terminal_token"]
    missing = registration(code_c, f"bb-phone3-{run_id}", secrets.token_hex(16))
    del missing["challenge"]
    expect("registration without a challenge: 400", call("POST", "/v1/devices", missing), 400, "invalid_request")

    # A terminal with a device belongs to its phone.
    expect("C to the phone's terminal, no bearer: 409", register(code_c, phone), 409, "terminal_id_taken")
    expect("C to the phone's terminal, another terminal's token: 409", register(code_c, phone, token_b), 409,
           "terminal_id_taken")
    expect("C to the phone's terminal, bearer tt_nope: 401", register(code_c, phone, "tt_nope"), 401, "unauthorized")
    expect("C to the phone's terminal, the phone's token: 201", register(code_c, phone, token_a), 201,
           ok=lambda b, h: b["terminal_id"] == phone)

    # Payment requests: a beacon proof of the moment, bound to its code.
    keys = (f"bb-{run_id}-{n}" for n in range(1000))
    key_a = device_key(MASTER, code_a)

    def pay(beacon=None, key=None, **fields):
        body = {"unique_code": code_a, "amount": 1234, "currency": "USD", "pos_id": "bb-pos", "reference": "black box"}
        if beacon is not None:
            body["beacon_proof"] = beacon
        body.update(fields)
        return call("POST", "/v1/payments", body, MERCHANT_KEY, {"Idempotency-Key": key or next(keys)})

    expect("payment without beacon_proof: 400", pay(), 400, "invalid_request")
    expect("payment with an upper-case beacon_proof: 400", pay("A" + beacon_proof(key_a, code_a)[1:].upper()), 400,
           "invalid_request")
    expect("payment with the beacon proof of another code: 422", pay(beacon_proof(device_key(MASTER, code_b), code_b)),
           422, "invalid_beacon_proof")
    away_from_a_step_edge()
    expect("payment with a beacon proof of 3 steps ago: 422", pay(beacon_proof(key_a, code_a, 3)), 422,
           "invalid_beacon_proof")
    early = expect("payment with a beacon proof of 2 steps ago: 201", pay(beacon_proof(key_a, code_a, 2)), 201,
                   ok=lambda b, h: b["status"] == "pending")
    expect("cancel it", call("POST", f"/v1/payments/{early['payment_id']}/cancel", bearer=MERCHANT_KEY), 200,
           ok=lambda b, h: b["status"] == "canceled")
    for currency in ("XAU", "XDR", "HRK"):
        expect(f"currency {currency}: 400", pay(beacon_proof(key_a, code_a), currency=currency), 400, "invalid_request")
    for name, char in (("U+202E", "\u202e"), ("U+200B", "\u200b")):
        expect(f"reference with {name}: 400", pay(beacon_proof(key_a, code_a), reference=f"black{char}box"), 400,
               "invalid_request")

    # The whole way: pay, replays, pending, confirm, settlement, balance.
    _, _, before = call("GET", "/v1/balance", bearer=MERCHANT_KEY)
    key = next(keys)
    payment = expect("payment with the beacon proof of the current step: 201", pay(beacon_proof(key_a, code_a), key),
                     201, ok=lambda b, h: b["status"] == "pending" and "idempotent-replayed" not in h)
    same = lambda b, h: h.get("idempotent-replayed") == "true" and b == payment  # noqa: E731
    expect("replay (same key, same body): the same 201", pay(beacon_proof(key_a, code_a), key), 201, ok=same)
    expect("replay with a proof of 1 step ago: the same 201", pay(beacon_proof(key_a, code_a, 1), key), 201, ok=same)
    expect("replay with an aged-out proof: the same 201", pay(beacon_proof(key_a, code_a, 3), key), 201, ok=same)
    expect("pending payments of the phone", call("GET", "/v1/pending-payments", bearer=token_a), 200,
           ok=lambda b, h: [p["payment_id"] for p in b["payments"]] == [payment["payment_id"]])
    message = pay_message(payment["payment_id"], payment["merchant_id"], payment["amount"], payment["currency"],
                          payment["challenge"], 1)
    expect("confirm", call("POST", f"/v1/payments/{payment['payment_id']}/confirm",
                           {"auth_code": mac(key_a, message), "counter": "1"}, token_a), 200,
           ok=lambda b, h: b["status"] == "confirmed")
    deadline = time.time() + 20
    while True:
        _, _, current = call("GET", f"/v1/payments/{payment['payment_id']}", bearer=MERCHANT_KEY)
        if current.get("status") == "settled" or time.time() > deadline:
            break
        time.sleep(0.1)
    check("settled within 20 s", current.get("status") == "settled" and current["settled_at"], current)

    def usd(balance):
        none = {"settled_amount": 0, "settled_count": 0}
        return next((b for b in balance["balances"] if b["currency"] == "USD"), none)

    _, _, after = call("GET", "/v1/balance", bearer=MERCHANT_KEY)
    check("the balance rose by 1234 USD, one payment",
          (usd(after)["settled_amount"], usd(after)["settled_count"])
          == (usd(before)["settled_amount"] + 1234, usd(before)["settled_count"] + 1), f"{before} -> {after}")
    print(f"black-box client: registered, paid, confirmed and settled {payment['payment_id']}")


if __name__ == "__main__":
    self_test()
    if sys.argv[1:] != ["--self-test"]:
        API, MASTER, MERCHANT_KEY = load_stack()
        run()
