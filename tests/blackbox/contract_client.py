#!/usr/bin/env python3
"""A black-box client written from the contract (revision 2) alone: Python standard library, its own
HMACs, nothing of the Rust crates. It first reproduces the contract's test vectors
(contract-v2-vectors.json, a verbatim copy of the contract's vectors.json), then drives the stack
`make up` deployed (coordinates from .local/stack.env, or from the file `--env-file` names, such as
.local/stack-twochan-rest.env of the REST API stack `make test-rest` deploys): registration challenges, a terminal's
ownership, beacon proofs, idempotent replays, refused currencies and text, and a payment through
to settlement and the balance, then refunds and webhooks (a signed-event receiver of its own on
127.0.0.1; `--no-part2` leaves them out). One line per check; the first failing check ends the run, with the answer it
got. `--self-test` checks the vectors only (no stack needed).

Where the contract is silent, the server's choices this client expects: a missing `challenge` is
400; a `beacon_proof` that is not 16 lowercase hex characters is 400; the idempotency fingerprint
of a payment request leaves `beacon_proof` out (a retry with a fresher proof is the same request)
and a replay is answered even once its proof has aged out. Part 2: a refund's checks run 413, 401,
415, 400 (body, then Idempotency-Key), 404 (unknown, another merchant's or malformed payment id),
the key, 409 payment_not_settled, 422 refund_exceeds_payment, and the key keeps 201, 409 and 422
(not 400/401/404/413/415/5xx); a refund without `reason` carries `"reason": null`; an invalid
webhook URL is 400 invalid_request whose message names `url`."""

import argparse
import datetime
import hashlib
import hmac
import http.server
import itertools
import json
import os
import re
import secrets
import sys
import threading
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
# Refunds and webhooks (contract revision 2, part 2): on by default; --no-part2 leaves them out.
PART2 = True


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


def signature(secret, t, body):
    """The Twochan-Signature header of a webhook event: HMAC keyed with the whole secret string's bytes."""
    return f"t={t},v1=" + hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()


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
    """Every vector of the contract: the device's messages and codes, and webhook signatures."""
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
        elif kind == "webhook_signature":
            got = signature(v["secret"], v["t"], v["body"].encode())
            ok = f"{v['t']}.{v['body']}" == v["signed_payload"] and got == v["header"]
        else:
            continue
        if not ok:
            sys.exit(f"black-box client: FAIL {kind} vector: got {got} for {v}")
        seen[kind] = seen.get(kind, 0) + 1
    check("contract vectors: " + ", ".join(f"{n} {k}" for k, n in sorted(seen.items())),
          set(seen) == {"device_key", "registration_proof", "beacon_proof", "auth_code", "webhook_signature"}, f"kinds: {seen}")


# ---------------------------------------------------------------- the API


def load_stack(env_file=None):
    """API_URL, the issuer master key and the merchant key: from .local/stack.env, where the
    environment's variables of those names win, or from `env_file` alone (it names its stack)."""
    env = {}
    with open(env_file or os.path.join(ROOT, ".local", "stack.env")) as f:
        for line in f:
            if "=" in line:
                k, v = line.strip().split("=", 1)
                env[k] = v
    if env_file is None:
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
    return run_id, token_b


# ---------------------------------------------------------------- part 2: refunds and webhooks


class Receiver(http.server.ThreadingHTTPServer):
    """A merchant's webhook receiver on 127.0.0.1: a try whose signature holds under `secret` (its `t`
    within 300 s) is answered 200 and recorded, unless `fail[payment_id]` asks for more 500s first;
    any other try is answered 400 and recorded in `refused`."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Hook)
        self.url = f"http://127.0.0.1:{self.server_port}/hook"
        self.secret, self.fail, self.refused, self.lock = None, {}, [], threading.Lock()
        self.tries = {}  # event id -> [(time, answer, raw body)], in arrival order
        self.events = {}  # event id -> the event, as first received
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def of(self, payment_id):
        with self.lock:
            return [e for e in self.events.values() if e["data"]["payment"]["payment_id"] == payment_id]

    def wait(self, payment_id, done, timeout=20):
        """The deduplicated events of the payment once `done(events)`, or those of the timeout."""
        deadline = time.time() + timeout
        while not done(self.of(payment_id)) and time.time() < deadline:
            time.sleep(0.1)
        return self.of(payment_id)


class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        raw, hook = self.rfile.read(int(self.headers.get("Content-Length") or 0)), self.server
        parts = dict(p.split("=", 1) for p in (self.headers.get("Twochan-Signature") or "").split(",") if "=" in p)
        expected = signature(hook.secret or "", parts.get("t"), raw).split("v1=")[1]
        try:
            event = json.loads(raw)
            payment_id, event_id = event["data"]["payment"]["payment_id"], event["id"]
        except (ValueError, KeyError, TypeError):
            event = None
        problem = ("path " + self.path if self.path != "/hook" else
                   "content-type" if self.headers.get("Content-Type", "").split(";")[0] != "application/json" else
                   "no t" if not parts.get("t", "").isdigit() else
                   "t not within 300 s" if abs(time.time() - int(parts["t"])) > 300 else
                   "signature" if not hmac.compare_digest(expected, parts.get("v1", "")) else
                   "not an event of a payment" if event is None else None)
        with hook.lock:
            if problem is None:
                answer = 500 if hook.fail.get(payment_id, 0) > 0 else 200
                if answer == 500:
                    hook.fail[payment_id] -= 1
                hook.tries.setdefault(event_id, []).append((time.time(), answer, raw))
                if answer == 200:
                    hook.events.setdefault(event_id, event)
            else:
                answer = 400
                hook.refused.append(f"{problem}: {self.headers.get('Twochan-Signature')} {raw[:200]!r}")
        self.send_response(answer)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


EVENT_ID, REFUND_ID = re.compile(r"evt_[0-9A-Z]{26}\Z"), re.compile(r"re_[0-9A-Z]{26}\Z")
REFUND = {"refund_id", "payment_id", "amount", "currency", "reason", "status", "created_at"}
BALANCE = {"currency", "settled_amount", "settled_count", "refunded_amount", "net_amount"}


def event_ok(event, payment_id, kind):
    """An event of `kind` on the payment, shaped as the contract says; a payment event carries the
    payment as of the event, status included."""
    data = event["data"]
    return (set(event) == {"id", "type", "created_at", "data"} and EVENT_ID.match(event["id"])
            and at(event["created_at"]) and event["type"] == kind and data["payment"]["payment_id"] == payment_id
            and set(data) == ({"payment", "refund"} if kind == "refund.succeeded" else {"payment"})
            and data["payment"]["status"] == ("settled" if kind == "refund.succeeded" else kind.split(".")[1]))


def part2(run_id, other_token):
    code, phone = f"bb-d-{run_id}", f"bb-phone4-{run_id}"
    key = device_key(MASTER, code)
    token = expect("register D, for refunds and webhooks", register(code, phone), 201)["terminal_token"]
    keys, counters = (f"bb2-{run_id}-{n}" for n in itertools.count()), itertools.count(1)

    def pay(amount):
        body = {"unique_code": code, "beacon_proof": beacon_proof(key, code), "amount": amount, "currency": "CHF",
                "pos_id": "bb-pos"}
        answer = call("POST", "/v1/payments", body, MERCHANT_KEY, {"Idempotency-Key": next(keys)})
        return expect(f"payment of {amount} CHF", answer, 201, ok=lambda b, h: b["refunded_amount"] == 0, quiet=True)

    def refund(payment_id, amount, key=None, **fields):
        return call("POST", f"/v1/payments/{payment_id}/refunds", {"amount": amount, **fields}, MERCHANT_KEY,
                    {"Idempotency-Key": key or next(keys)})

    def balance():
        _, _, got = call("GET", "/v1/balance", bearer=MERCHANT_KEY)
        check("balances carry refunded_amount and net_amount = settled_amount - refunded_amount",
              all(set(b) == BALANCE and b["net_amount"] == b["settled_amount"] - b["refunded_amount"]
                  for b in got["balances"]), got, quiet=True)
        return next((b for b in got["balances"] if b["currency"] == "CHF"), dict.fromkeys(BALANCE - {"currency"}, 0))

    # The endpoint: one per merchant, a new secret per PUT, never shown again.
    hook = Receiver()
    put = lambda url: call("PUT", "/v1/webhook-endpoint", {"url": url}, MERCHANT_KEY)  # noqa: E731
    whsec = re.compile(r"whsec_[0-9a-f]{64}\Z")
    first = expect("PUT webhook endpoint: 200 {url, secret}", put(hook.url), 200,
                   ok=lambda b, h: set(b) == {"url", "secret"} and b["url"] == hook.url and whsec.match(b["secret"]))
    hook.secret = expect("PUT it again: a new secret", put(hook.url), 200,
                         ok=lambda b, h: whsec.match(b["secret"]) and b["secret"] != first["secret"])["secret"]
    expect("GET webhook endpoint: the url, no secret", call("GET", "/v1/webhook-endpoint", bearer=MERCHANT_KEY), 200,
           ok=lambda b, h: b == {"url": hook.url})

    # A payment to settlement: payment.confirmed and payment.settled, signed.
    before = balance()
    payment = pay(900)
    pid = payment["payment_id"]
    n = next(counters)
    message = pay_message(pid, payment["merchant_id"], 900, "CHF", payment["challenge"], n)
    expect("confirm a payment of 900 CHF", call("POST", f"/v1/payments/{pid}/confirm",
                                                {"auth_code": mac(key, message), "counter": str(n)}, token), 200)
    wanted = ("payment.confirmed", "payment.settled")
    events = hook.wait(pid, lambda evs: set(wanted) <= {e["type"] for e in evs})
    check("signed payment.confirmed and payment.settled within 20 s",
          all(any(event_ok(e, pid, kind) for e in events) for kind in wanted), f"{events} refused {hook.refused[:3]}")

    # Refunds: a third, a third, more than the rest; replays; only settled payments.
    def is_refund(amount, reason):
        return lambda b, h: (set(b) == REFUND and REFUND_ID.match(b["refund_id"]) and b["payment_id"] == pid
                             and (b["amount"], b["currency"], b["reason"], b["status"]) == (amount, "CHF", reason,
                                                                                             "succeeded")
                             and at(b["created_at"]) and "idempotent-replayed" not in h)

    expect("refund with a reason of U+202E: 400", refund(pid, 300, reason="re\u202efund"), 400, "invalid_request")
    key1 = next(keys)
    r1 = expect("refund a third: 201 refund", refund(pid, 300, key1, reason="black box"), 201,
                ok=is_refund(300, "black box"))
    r2 = expect("refund another third, no reason: 201, reason null", refund(pid, 300), 201, ok=is_refund(300, None))
    expect("refund 301, more than the 300 left: 422", refund(pid, 301), 422, "refund_exceeds_payment")
    expect("replay of the first refund: the same 201", refund(pid, 300, key1, reason="black box"), 201,
           ok=lambda b, h: b == r1 and h.get("idempotent-replayed") == "true")
    expect("the first refund's key, another amount: 422", refund(pid, 299, key1, reason="black box"), 422,
           "idempotency_key_reused")
    expect("refund of an unknown payment: 404", refund("pay_" + "0" * 26, 1), 404, "not_found")
    expect("the payment: refunded_amount 600, still settled", call("GET", f"/v1/payments/{pid}", bearer=token), 200,
           ok=lambda b, h: (b["status"], b["refunded_amount"]) == ("settled", 600))
    listed = {"refunds": [r1, r2]}
    expect("GET refunds (merchant): both, oldest first", call("GET", f"/v1/payments/{pid}/refunds",
                                                              bearer=MERCHANT_KEY), 200, ok=lambda b, h: b == listed)
    expect("GET refunds (the phone's token): both, oldest first", call("GET", f"/v1/payments/{pid}/refunds",
                                                                       bearer=token), 200, ok=lambda b, h: b == listed)
    expect("GET refunds (another terminal's token): 404", call("GET", f"/v1/payments/{pid}/refunds",
                                                               bearer=other_token), 404, "not_found")
    after = balance()
    check("the CHF balance: +900 settled, +600 refunded, net = settled - refunded",
          (after["settled_amount"] - before["settled_amount"], after["settled_count"] - before["settled_count"],
           after["refunded_amount"] - before["refunded_amount"]) == (900, 1, 600), f"{before} -> {after}")
    events = hook.wait(pid, lambda evs: sum(e["type"] == "refund.succeeded" for e in evs) >= 2)
    got = sorted(((e["data"]["refund"], e["data"]["payment"]["refunded_amount"]) for e in events
                  if event_ok(e, pid, "refund.succeeded")), key=lambda r: r[1])
    check("two signed refund.succeeded events, each with its refund and the payment as of it",
          got == [(r1, 300), (r2, 600)], f"{events} refused {hook.refused[:3]}")

    pending = pay(500)
    key2 = next(keys)
    expect("refund of a pending payment: 409", refund(pending["payment_id"], 100, key2), 409, "payment_not_settled")
    expect("its key again: the 409, replayed", refund(pending["payment_id"], 100, key2), 409, "payment_not_settled",
           ok=lambda b, h: h.get("idempotent-replayed") == "true")

    # Decline and cancel are announced; a receiver failing twice gets the same event again.
    expect("the phone declines it", call("POST", f"/v1/payments/{pending['payment_id']}/decline", bearer=token), 200,
           ok=lambda b, h: b["status"] == "declined")
    events = hook.wait(pending["payment_id"], lambda evs: evs)
    check("a signed payment.declined",
          [event_ok(e, pending["payment_id"], "payment.declined") for e in events] == [True],
          f"{events} refused {hook.refused[:3]}")
    canceled = pay(400)
    hook.fail[canceled["payment_id"]] = 2
    expect("the POS cancels another (the receiver answers 500 twice)",
           call("POST", f"/v1/payments/{canceled['payment_id']}/cancel", bearer=MERCHANT_KEY), 200)
    events = hook.wait(canceled["payment_id"], lambda evs: evs, timeout=40)
    tries = hook.tries.get(events[0]["id"], []) if events else []
    check(f"payment.canceled tried 3 times, same id and body (at {[round(t[0] - tries[0][0], 1) for t in tries]} s)",
          [event_ok(e, canceled["payment_id"], "payment.canceled") for e in events] == [True]
          and [t[1] for t in tries] == [500, 500, 200] and len({t[2] for t in tries}) == 1,
          f"{events} tries {tries} refused {hook.refused[:3]}")
    check("every try was signed with the endpoint's secret, within 300 s, as application/json", not hook.refused,
          hook.refused[:5])

    # The end of the endpoint, and URLs that are refused.
    expect("DELETE webhook endpoint: 204", call("DELETE", "/v1/webhook-endpoint", bearer=MERCHANT_KEY), 204)
    expect("GET webhook endpoint: 404", call("GET", "/v1/webhook-endpoint", bearer=MERCHANT_KEY), 404, "not_found")
    expect("DELETE it again: 204", call("DELETE", "/v1/webhook-endpoint", bearer=MERCHANT_KEY), 204)
    for url in ("https://127.0.0.1/x", "https://localhost/x", "ftp://example.com", "http://example.com"):
        expect(f"PUT webhook endpoint {url}: 400", put(url), 400, "invalid_request",
               ok=lambda b, h: "url" in b["error"]["message"])
    hook.shutdown()
    print(f"black-box client: refunded {pid} twice, {len(hook.events)} webhook events received")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--self-test", action="store_true", help="the contract's vectors only, no stack")
    ap.add_argument("--env-file", help="the stack's coordinates (API_URL, ISSUER_MASTER_KEY, MERCHANT_API_KEY) from "
                                       "this file only, not .local/stack.env and the environment")
    ap.add_argument("--part2", action=argparse.BooleanOptionalAction, default=PART2,
                    help=f"refunds and webhooks too (default {'on' if PART2 else 'off'})")
    args = ap.parse_args()
    self_test()
    if not args.self_test:
        API, MASTER, MERCHANT_KEY = load_stack(args.env_file)
        print(f"black-box client: against {API}")
        run_id, other_token = run()
        if args.part2:
            part2(run_id, other_token)
