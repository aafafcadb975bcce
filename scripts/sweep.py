#!/usr/bin/env python3
"""Hostile-input sweep of the HTTP API on the running local stack (`make sweep`).

Sends --count generated malformed requests (default 10 000, seeded, concurrent) across every
endpoint and unknown routes/methods, and checks, against contract revision 2 (refunds and webhook
endpoints included; --no-part2 leaves them out) and docs/CONTRACT_NOTES.md:

- every answer is a 4xx (nothing malformed is accepted, no status >= 500), in the contract's JSON
  error shape `{"error": {"code", "message"}}` with a contract code belonging to its status, and
  where the generator knows what the contract's order of checks gives (ORDER_OF_CHECKS), exactly
  that status;
- no `panicked at` line in the functions' logs (MiniStack writes each function's stdout and
  stderr to CloudWatch Logs, group `/aws/lambda/<stack>-<function>`, read back here with boto3);
- the table (a boto3 scan of TABLE_NAME) is identical before and after.

Before the first table snapshot the sweep makes what it needs with valid requests: two devices (A
and B, registered with challenges and proofs from ISSUER_MASTER_KEY), a pending payment on A (with
A's beacon proof), and a few registration challenges it leaves unused; it then waits until the
settlement queue has no visible or in-flight message and the table stops changing. No request of the
sweep itself can write: each one carries at least one defect that the contract refuses before any
write (the real payment and devices are only ever reached by a caller who does not own them, with a
beacon proof that is not theirs, or behind an earlier defect; a challenge the server issued only
ever comes with a proof that is not the device's, which does not use it up; a challenge request is
always malformed). So with part 2: a refund reaches the real (pending) payment only behind a defect
refused before the payment is looked at (a valid one would be 409 payment_not_settled, kept under
its key), else an unknown or malformed payment id (404, which keeps nothing);
`PUT /v1/webhook-endpoint` always carries a defect (a valid one replaces the merchant's endpoint), and
GET and DELETE of it always a bad bearer or an oversize body (DELETE would remove the endpoint, and
neither is a 4xx otherwise).

Coordinates come from .local/stack.env, or the file --env-file names (API_URL, AWS_ENDPOINT_URL,
MERCHANT_API_KEY, ISSUER_MASTER_KEY, TABLE_NAME, SETTLEMENT_QUEUE_URL). Standard library HTTP, boto3 for the table,
queue and logs. Every proof and the bearer prefixes come from the Rust device simulator
(tools/src/bin/device.rs, built by make up), so the contract's HMACs have one implementation that the
server and its clients share. Exit status 0 when every check holds.
"""

import argparse
import collections
import http.client
import json
import os
import random
import secrets
import subprocess
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import boto3
import botocore.exceptions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_BODY = 8 * 1024
# Refunds and webhook endpoints (contract revision 2, part 2): on by default; --no-part2 leaves them out.
PART2 = True

# Classes of requests the stack answers against the contract, by category: still sent and
# reported, but their answers do not fail the sweep until the bug is fixed. Remove the entry with the
# fix: a known bug that does not reproduce fails the sweep, so that the exemption does not outlive
# it. `--strict` treats them as failures. The categories of the bugs docs/RELIABILITY.md lists
# (findings 1-4) are "proxy-headers", "raw-query", "route-alias" and "path-escape".
KNOWN_BUGS = {}

# The contract's order of checks (docs/CONTRACT_NOTES.md: "Order of checks", and the "Order" of
# registration, payment requests and refunds): the layers a generated request can be defective in,
# in the order the server checks them, each with the status its refusal has. A request is answered
# the status of its first defective layer.
ORDER_OF_CHECKS = [
    ("size", 413),  # the body over 8 KiB, before anything else is looked at
    ("caller", 401),
    ("content-type", 415),
    ("body", 400),  # JSON shape and fields
    ("key", 400),  # the Idempotency-Key header (payment requests, refunds)
    ("beacon", 422),  # a payment request's beacon proof, before its code's registration is read
    ("proof", 422),  # a registration's proof (never the device's over an issued challenge here)
    ("path", 404),  # the path id or its owner (for a refund, before its key's kept answer)
]

CONTRACT_ERRORS = {
    "invalid_request": 400,
    "unauthorized": 401,
    "not_found": 404,
    "unknown_device": 404,
    "device_already_registered": 409,
    "terminal_id_taken": 409,
    "device_busy": 409,
    "idempotency_key_in_use": 409,
    "payment_not_pending": 409,
    "payment_not_settled": 409,
    "payment_expired": 410,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "invalid_registration_proof": 422,
    "invalid_beacon_proof": 422,
    "idempotency_key_reused": 422,
    "invalid_auth_code": 422,
    "stale_counter": 422,
    "refund_exceeds_payment": 422,
    "too_many_attempts": 429,
    "internal": 500,
    "unavailable": 503,
}

ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
ULID_CHARS = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CURRENCIES = ["USD", "EUR", "KRW", "JPY", "GBP", "CHF", "BHD", "CLP", "XOF", "XCD"]


def load_env(path=None):
    env = {}
    with open(path or os.path.join(ROOT, ".local", "stack.env")) as f:
        for line in f:
            if "=" in line:
                k, v = line.strip().split("=", 1)
                env[k] = v
    env.update({k: v for k, v in os.environ.items() if k in env or k.startswith("AWS_")})
    return env


class Devices:
    """The Rust device simulator (tools/src/bin/device.rs) as one long-lived process, asked a line of
    JSON per proof. Devices are made from `master` (ISSUER_MASTER_KEY) unless told another one."""

    def __init__(self, master):
        # Built with the stack's other tools (scripts/build.sh: make up).
        binary = os.path.join(ROOT, "target", "lambda", "device", "bootstrap")
        if not os.access(binary, os.X_OK):
            sys.exit(f"sweep: {binary} is missing: run make up first")
        self.master = master
        self.lock = threading.Lock()
        self.proc = subprocess.Popen([binary], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, encoding="utf-8", bufsize=1)

    def ask(self, op, **fields):
        with self.lock:
            self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        if not line:
            sys.exit(f"sweep: the device simulator exited (status {self.proc.poll()})")
        answer = json.loads(line)
        if "error" in answer:
            raise ValueError(f"device simulator, {op} {fields}: {answer['error']}")
        return answer["ok"]

    def beacon_proof(self, code, at=None, master=None, key_code=None):
        """What the device broadcasts at unix time `at` (default now)."""
        at = time.time() if at is None else at
        return self.ask("beacon_proof", **self._device(code, master, key_code), at=int(at))

    def registration_proof(self, code, terminal, challenge, master=None, key_code=None):
        return self.ask("registration_proof", **self._device(code, master, key_code), terminal=terminal,
                        challenge=challenge)

    def registration_proof_v1(self, code, terminal):
        """Contract revision 1's proof, without a challenge (refused by revision 2)."""
        return self.ask("registration_proof_v1", **self._device(code, None, None), terminal=terminal)

    def bearer_prefixes(self):
        """(merchant key prefix, terminal token prefix)."""
        prefixes = self.ask("bearer_prefixes")
        return prefixes["merchant_key"], prefixes["terminal_token"]

    def _device(self, code, master, key_code):
        device = {"master": master or self.master, "code": code}
        if key_code is not None:
            device["key_code"] = key_code
        return device

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


class Raw:
    """A JSON token written verbatim (numbers JSON allows but Python does not make, or bad JSON)."""

    def __init__(self, text):
        self.text = text


def dump(value, rnd):
    """JSON text of `value` with `Raw` tokens spliced in, random key order and whitespace."""
    raws = {}

    def prep(v):
        if isinstance(v, Raw):
            token = f"@@raw{len(raws)}@@"
            raws[token] = v.text
            return token
        if isinstance(v, dict):
            items = list(v.items())
            rnd.shuffle(items)
            return {k: prep(x) for k, x in items}
        if isinstance(v, list):
            return [prep(x) for x in v]
        return v

    text = json.dumps(
        prep(value),
        ensure_ascii=rnd.random() < 0.5,
        separators=rnd.choice([(",", ":"), (", ", ": "), (" ,\n", " :\t")]),
    )
    for token, raw in raws.items():
        text = text.replace(json.dumps(token), raw)
    # Lone surrogates from `\udcXX` stand for raw (non-UTF-8) bytes.
    return text.encode("utf-8", "surrogateescape")


# ---------------------------------------------------------------- values inside and outside the grammar


def ident(rnd, lo, hi):
    return "".join(rnd.choice(ID_CHARS) for _ in range(rnd.randint(lo, hi)))


def payment_id(rnd):
    return "pay_" + rnd.choice("01234567") + "".join(rnd.choice(ULID_CHARS) for _ in range(25))


def bad_ident(rnd, lo, hi):
    """A value of an id field (lo..hi chars of [A-Za-z0-9_-]) that is outside its grammar."""
    base = ident(rnd, max(lo, 8), min(hi, 20))
    kind = rnd.choice(
        ["missing", "null", "type", "short", "long", "huge", "unicode", "control", "space", "punct", "empty", "utf8"]
    )
    if kind == "missing":
        return kind, None
    if kind == "null":
        return kind, Raw("null")
    if kind == "type":
        return kind, rnd.choice([123, True, False, [], {}, 1.5, ["x" * 10], {"a": "b"}, Raw("-0"), Raw("1e400")])
    if kind == "short":
        return kind, ident(rnd, 0, lo - 1)
    if kind == "long":
        return kind, ident(rnd, hi + 1, hi + 200)
    if kind == "huge":
        return kind, ident(rnd, 2000, 7000)
    if kind == "unicode":
        c = rnd.choice(["é", "한", "🙂", "Ａ", "İ", "\u202e", "\u200b", "ß", "\ufffd", "\u0660"])
        i = rnd.randint(0, len(base))
        return kind, base[:i] + c + base[i:]
    if kind == "control":
        c = rnd.choice(["\u0000", "\n", "\t", "\r", "\u007f", "\u001b", "\u0085"])
        i = rnd.randint(0, len(base))
        return kind, base[:i] + c + base[i:]
    if kind == "space":
        return kind, rnd.choice([" " + base, base + " ", base[:3] + " " + base[3:]])
    if kind == "punct":
        c = rnd.choice(list("/.%'\"<>\\:;,!@#$&*()+=?[]{}|`~^"))
        i = rnd.randint(0, len(base))
        return kind, base[:i] + c + base[i:]
    if kind == "empty":
        return kind, ""
    # Bytes that are not UTF-8 (the emulator hands them on as U+FFFD).
    return kind, Raw('"' + base[:4] + "\udcff\udcfe" + base[4:] + '"')


def valid_reference(rnd):
    alphabet = [chr(c) for c in range(0x20, 0x7F)] + list("éü한글🙂€…—")
    return "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 128)))


def bad_value(rnd, field):
    """(kind, value) outside the grammar of `field`; value None means the field is left out."""
    if field in ("unique_code", "terminal_id"):
        return bad_ident(rnd, 8, 64)
    if field == "pos_id":
        return bad_ident(rnd, 3, 64)
    if field == "amount":
        return "amount", rnd.choice(
            [
                0, -1, -4500, 100_000_000, 2**63, 2**64, 2**64 + 1, 10**30, 1.5, 4500.0, "4500", True, None,
                Raw("null"), [], {}, Raw("1e400"), Raw("-0"), Raw("1e3"), Raw("4500.0"), Raw("-1e-7"),
                Raw("9" * 400), Raw("0.0"),
            ]
        )
    if field == "currency":
        return "currency", rnd.choice(
            ["usd", "US", "USDD", "XXX", "XTS", "ABC", "", " USD", "USD ", "U$D", "ＵＳＤ", "krw", "EURO", 840,
             None, Raw("null"), [], {"code": "USD"}, "U\u0000S", "\u0055\u0053\u0301",
             # Well-formed ISO 4217 codes that are not money in circulation (revision 2).
             "CLF", "BOV", "USN", "XAU", "XAG", "XBA", "XDR", "XSU", "XUA", "HRK", "SLL", "CUC"]
        )
    if field == "url":
        return bad_url(rnd)
    if field in ("reference", "reason"):
        kind = rnd.choice(["long", "control", "format", "type"])
        if kind == "long":
            return kind, valid_reference(rnd) + "x" * rnd.randint(129, 500)
        if kind in ("control", "format"):
            r = valid_reference(rnd)[:100]
            i = rnd.randint(0, len(r))
            c = rnd.choice(
                ["\n", "\u0000", "\t", "\u007f", "\u0085", "\u009f", "\r"] if kind == "control" else
                # Text that can disguise itself (Cf, Zl, Zp, Co): overrides, isolates, zero-width, ...
                ["\u202e", "\u202d", "\u2066", "\u2069", "\u200b", "\u200d", "\u200f", "\ufeff", "\u00ad", "\u061c",
                 "\u2028", "\u2029", "\ue000", "\U000f0000", "\U000e0041", "\U000e0001"]
            )
            return kind, r[:i] + c + r[i:]
        return kind, rnd.choice([123, True, [], {}, ["a"], 1.5])
    if field == "auth_code":
        h = secrets.token_hex(32)
        return "auth_code", rnd.choice(
            [h[:63], h + "0", h[:63] + "g", h[:32] + " " + h[33:], "", h[:62] + "é", "0x" + h[:62], " " + h[1:],
             h[:63] + "\n", 123, None, [], {}, True, h.upper()[:63], Raw("null"), "\u0660" * 64]
        )
    if field == "counter":
        return "counter", rnd.choice(
            ["", "01", "007", "-1", "+1", "1.0", "1e3", "0x10", " 1", "1 ", "18446744073709551616",
             "99999999999999999999999", "\u0661", "½", "1_000", "1,000", "NaN", 1, 8, 1.5, True, None,
             Raw("null"), [], {}, "８", "-0"]
        )
    if field == "registration_proof":
        h = secrets.token_hex(32)
        return "proof", rnd.choice([123, True, None, Raw("null"), [], {}, [h]])
    if field == "challenge":
        h = secrets.token_hex(16)
        return "challenge", rnd.choice(
            [None, Raw("null"), 123, True, [], {}, [h], h[:31], h + "0", "A" + h[1:].upper(), h[:31] + "g", "",
             " " + h[1:], h + "\n", secrets.token_hex(32), "\u0660" * 32]
        )
    if field == "beacon_proof":
        h = secrets.token_hex(8)
        return "beacon_proof", rnd.choice(
            [None, Raw("null"), 123, True, [], {}, [h], h[:15], h + "0", "A" + h[1:].upper(), h[:15] + "g", "",
             " " + h[1:], h + "\n", "0x" + h[:14], secrets.token_hex(32), "\u0660" * 16]
        )
    raise ValueError(field)


def bad_url(rnd):
    """(kind, value) of a webhook URL the contract refuses: not `https://` with a host name that is
    neither an IP address nor `localhost` (nor the local stack's `http://127.0.0.1:<port>/...`), or
    over 2048 characters. Hosts are as the WHATWG URL standard parses them: 2130706433, 127.1 and
    fullwidth `localhost` are 127.0.0.1 and localhost. Nothing a URL parser would repair into an
    acceptable URL (surrounding spaces, tabs and newlines, extra slashes, `https:host`)."""
    kind = rnd.choice(["missing", "type", "empty", "long", "scheme", "relative", "ip", "disguised-ip", "localhost",
                       "local-form", "userinfo", "bad-host"])
    if kind == "missing":
        return kind, rnd.choice([None, Raw("null")])
    if kind == "type":
        return kind, rnd.choice([123, True, [], {}, ["https://example.com/"], {"url": "https://example.com/"}])
    if kind == "empty":
        return kind, ""
    if kind == "long":
        return kind, "https://hooks.example.com/" + "a" * rnd.randint(2023, 7000)
    return kind, rnd.choice({
        "scheme": ["http://example.com/hook", "ftp://example.com", "ws://example.com/", "wss://example.com/hook",
                   "file:///etc/passwd", "javascript:alert(1)", "data:text/plain,x", "gopher://example.com/",
                   "mailto:ops@example.com", "http://hooks.example.com:443/x"],
        "relative": ["example.com/hook", "//example.com/hook", "/hook", "hooks.example.com", "?x", "#x"],
        "ip": ["https://127.0.0.1/x", "https://10.0.0.1/x", "https://192.168.1.1:8443/x", "https://0.0.0.0/",
               "https://169.254.169.254/latest/meta-data/", "https://8.8.8.8/", "https://[::1]/x",
               "https://[::ffff:127.0.0.1]/x", "https://[2001:db8::1]/x", "https://[fe80::1%25eth0]/x"],
        "disguised-ip": ["https://2130706433/", "https://0x7f000001/x", "https://0177.0.0.1/", "https://127.1/",
                         "https://0x7f.0.0.1/", "https://127\u30020\u30020\u30021/x",
                         "https://\uff11\uff12\uff17.0.0.1/"],
        "localhost": ["https://localhost/x", "https://localhost:8443/x", "https://LOCALHOST/x", "https://LocalHost/",
                      "https://localhost./x", "https://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54/x"],
        "local-form": ["http://localhost:8080/x", "http://127.0.0.2:8080/x", "http://[::1]:8080/x",
                       "http://0.0.0.0:8080/x", "http://127.0.0.1.example.com:8080/x",
                       "http://127.0.0.1:8080@example.com/x",
                       "http://10.0.0.1:8080/x", "http://2130706433:8080/x"],
        "userinfo": ["https://example.com@127.0.0.1/x", "https://user:pw@localhost/x",
                     "https://example.com:443@[::1]/"],
        "bad-host": ["https://", "https://exa mple.com/", "https://exa<mple.com/", "https://example.com:99999/",
                     "https://example.com:port/", "https://[::1/x", "https://exa\u0000mple.com/", "https://:443/x",
                     "https://exa%mple.com/"],
    }[kind])


def valid_url(rnd):
    """A URL the contract accepts (on the local stack), never sent without a defect elsewhere."""
    host = "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(rnd.randint(1, 20)))
    path = ident(rnd, 0, 40)
    if rnd.random() < 0.2:
        return f"http://127.0.0.1:{rnd.randint(1024, 65535)}/{path}"
    return rnd.choice([f"https://{host}.example.com/{path}", f"https://hooks.{host}.example/{path}?a=1",
                       f"https://{host}.example.com:8443/{path}"])


BODY_FIELDS = {
    "challenge": ["unique_code"],
    "register": ["unique_code", "terminal_id", "challenge", "registration_proof"],
    "create": ["unique_code", "beacon_proof", "amount", "currency", "pos_id", "reference"],
    "confirm": ["auth_code", "counter"],
    "refund": ["amount", "reason"],
    "webhook-put": ["url"],
}


def valid_body(rnd, endpoint, ctx):
    """A body whose fields are all in the grammar. A registration's proof is always wrong (below);
    a payment request carries its code's beacon proof of the moment (the code is random: no device
    is registered with it)."""
    if endpoint == "challenge":
        return {"unique_code": ident(rnd, 8, 64)}
    if endpoint == "register":
        return registration(rnd, ctx)
    if endpoint == "create":
        code = ident(rnd, 8, 64)
        body = {
            "unique_code": code,
            "beacon_proof": ctx.devices.beacon_proof(code),
            "amount": rnd.randint(1, 99_999_999),
            "currency": rnd.choice(CURRENCIES),
            "pos_id": ident(rnd, 3, 64),
        }
        r = rnd.random()
        if r < 0.4:
            body["reference"] = valid_reference(rnd)
        elif r < 0.5:
            body["reference"] = None
        return body
    if endpoint == "refund":
        # Any amount: the payment it reaches is unknown (404), or it comes behind an earlier defect.
        body = {"amount": rnd.randint(1, 99_999_999)}
        if rnd.random() < 0.4:
            body["reason"] = valid_reference(rnd)
        return body
    if endpoint == "webhook-put":
        return {"url": valid_url(rnd)}
    return {
        "auth_code": rnd.choice([secrets.token_hex(32), secrets.token_hex(32).upper()]),
        "counter": str(rnd.choice([1, 2, 8, 999, 1000, 1001, rnd.randint(1, 2**64 - 1)])),
    }


def registration(rnd, ctx):
    """A well-formed registration that is 422 whatever its code and terminal: its proof is not the
    device's over a challenge issued for its code and unused. A challenge the server issued (the
    setup's) only ever comes with a proof that is not the device's: a valid proof would use it up."""
    code, terminal = ident(rnd, 8, 64), ident(rnd, 8, 64)
    devices = ctx.devices
    if rnd.random() < 0.3:
        code, challenge = rnd.choice(ctx.challenges)
        other_terminal, other_code = ident(rnd, 8, 64), ident(rnd, 8, 64)
        make_proof = rnd.choice([
            lambda: devices.registration_proof_v1(code, terminal),
            lambda: devices.registration_proof(code, other_terminal, challenge),  # another terminal
            lambda: devices.registration_proof(code, terminal, secrets.token_hex(16)),  # another challenge
            lambda: devices.registration_proof(code, terminal, challenge, key_code=other_code),  # another key
            lambda: secrets.token_hex(32),
        ])
    else:
        # A challenge the server never issued, whatever the proof over it (the device's included).
        challenge = secrets.token_hex(16)
        make_proof = rnd.choice([
            lambda: secrets.token_hex(32), lambda: secrets.token_hex(32).upper(), lambda: secrets.token_hex(16),
            lambda: "nope", lambda: "",
            lambda: devices.registration_proof_v1(code, terminal),
            lambda: devices.registration_proof(code, terminal, challenge),
        ])
    proof = make_proof()
    return {"unique_code": code, "terminal_id": terminal, "challenge": challenge, "registration_proof": proof}


def wrong_beacon(rnd, ctx, body):
    """Gives a payment request a beacon proof in the grammar that is not its code's for any step of
    now - 2 ..= now + 1 (also once the sweep has run for minutes), sometimes on a real device (A with
    its pending payment, or B): 422 invalid_beacon_proof, before the code's registration is looked
    at. Returns the kind."""
    code = rnd.choice([body["unique_code"], ctx.code_a, ctx.code_b])
    devices, now = ctx.devices, time.time()
    kind = rnd.choice(["random", "old", "future", "other-code", "other-key", "flipped"])
    if kind == "random":
        proof = secrets.token_hex(8)
    elif kind == "old":
        proof = devices.beacon_proof(code, now - 30 * rnd.choice([3, 4, 10, 2880, 10**6]))
    elif kind == "future":
        proof = devices.beacon_proof(code, now + 30 * rnd.choice([1000, 2880, 10**6]))
    elif kind == "other-code":
        other = ctx.code_b if code == ctx.code_a else ctx.code_a
        proof = devices.beacon_proof(other, now)
    elif kind == "other-key":
        # Another issuer's device with the same code.
        proof = devices.beacon_proof(code, now, master=secrets.token_hex(32))
    else:
        good = devices.beacon_proof(code, now)
        i = rnd.randrange(16)
        proof = good[:i] + "0123456789abcdef"[(int(good[i], 16) + rnd.randint(1, 15)) % 16] + good[i + 1:]
    body["unique_code"], body["beacon_proof"] = code, proof
    return kind + (":device-" + ("a" if code == ctx.code_a else "b") if code in (ctx.code_a, ctx.code_b) else "")


def broken_json(rnd, endpoint, ctx):
    """(kind, bytes): a body that is not a JSON object of the endpoint's fields (always 400)."""
    good = dump(valid_body(rnd, endpoint, ctx), rnd)
    kind = rnd.choice(
        ["truncated", "trailing", "single-quotes", "comment", "bom", "not-object", "deep", "nan", "utf16",
         "unknown-field", "duplicate-bad", "empty-object", "empty", "many-unknown", "binary"]
    )
    if kind == "truncated":
        return kind, good[: rnd.randint(0, len(good) - 1)]
    if kind == "trailing":
        return kind, good + rnd.choice([b" x", b"}", b",", b"{}", b"\x00", b"]"])
    if kind == "single-quotes":
        return kind, good.replace(b'"', b"'")
    if kind == "comment":
        return kind, b"/* c */" + good
    if kind == "bom":
        return kind, b"\xef\xbb\xbf" + good
    if kind == "not-object":
        return kind, rnd.choice([b"[]", b"null", b"1", b'"str"', b"true", b"[" + good + b"]", b"-0", b"1e400"])
    if kind == "deep":
        n = rnd.randint(129, 4000)
        return kind, b"[" * n + b"]" * n
    if kind == "nan":
        return kind, good[:-1] + b', "amount": NaN}'
    if kind == "utf16":
        return kind, good.decode().encode("utf-16")
    if kind == "unknown-field":
        body = valid_body(rnd, endpoint, ctx)
        body[rnd.choice(["extra", "Amount", "unique-code", "__proto__", "", "amount ", "UNIQUE_CODE", "pin", "é",
                         "beaconProof", "Challenge"])] = 1
        return kind, dump(body, rnd)
    if kind == "duplicate-bad":
        # The last of two keys wins; the last one is broken.
        field = rnd.choice(BODY_FIELDS[endpoint])
        _, bad = bad_value(rnd, field)
        while bad is None:
            _, bad = bad_value(rnd, field)
        return kind, good[:-1] + b"," + json.dumps(field).encode() + b":" + dump([bad], rnd)[1:-1] + b"}"
    if kind == "empty-object":
        return kind, b"{}"
    if kind == "empty":
        return kind, b""
    if kind == "many-unknown":
        return kind, dump({f"k{i}": i for i in range(rnd.randint(50, 700))}, rnd)
    return kind, bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 300)))


GOOD_CONTENT_TYPES = [b"application/json", b"application/json; charset=utf-8", b"Application/JSON",
                      b"application/json;charset=UTF-8", b"application/json ; foo=bar"]
BAD_CONTENT_TYPES = [None, b"", b"text/plain", b"application/jsonx", b"application/x-www-form-urlencoded",
                     b"multipart/form-data; boundary=x", b"json", b"application/json-patch+json",
                     b"application/ld+json", b"text/json", b"*/*", b"application/javascript", b"text/html",
                     b"application/xml", b"application/j\xc3\xa9son", b"application/json, text/plain",
                     b"application / json", b"image/png"]


def bad_bearer(rnd, ctx, kind_wanted):
    """(kind, headers) with an Authorization the caller of kind `kind_wanted` cannot pass with."""
    other = ctx.token_a if kind_wanted == "merchant" else ctx.merchant_key
    own = ctx.merchant_key if kind_wanted == "merchant" else ctx.token_a
    prefix = ctx.merchant_prefix if kind_wanted == "merchant" else ctx.terminal_prefix
    choices = [
        ("missing", []),
        ("scheme-only", [b"Bearer"]),
        ("scheme-space", [b"Bearer "]),
        ("basic", [b"Basic dXNlcjpwYXNz"]),
        ("token-scheme", [("Token " + own).encode()]),
        ("no-scheme", [own.encode()]),
        ("unknown", [("Bearer " + prefix + secrets.token_hex(32)).encode()]),
        ("no-prefix", [("Bearer " + secrets.token_hex(32)).encode()]),
        ("other-prefix", [("Bearer sk_" + secrets.token_hex(32)).encode()]),
        ("overlong", [("Bearer " + prefix + "a" * rnd.randint(254, 7000)).encode()]),
        ("wrong-kind", [("Bearer " + other).encode()]),
        ("truncated", [("Bearer " + own[:-1]).encode()]),
        ("extended", [("Bearer " + own + "x").encode()]),
        ("upper-prefix", [("Bearer " + own[:len(prefix)].upper() + own[len(prefix):]).encode()]),
        ("non-ascii", [b"Bearer " + prefix.encode() + b"\xc3\xa9\xff"]),
        ("tab", [("Bearer\t" + own).encode()]),
        ("json", [b'{"token": "' + own.encode() + b'"}']),
        ("second-header-bad", [("Bearer " + own).encode(), b"Bearer nope"]),
        ("comma", [("Bearer " + own + ", Bearer " + own).encode()]),
    ]
    kind, values = rnd.choice(choices)
    return kind, [("Authorization", v) for v in values]


def bad_idempotency_key(rnd):
    return rnd.choice(
        [("missing", None), ("empty", b""), ("long", b"k" * rnd.randint(256, 4000)), ("non-ascii", b"cl\xc3\xa9"),
         ("latin1", b"key\xe9"), ("tab", b"a\tb")]
    )


def malformed_payment_id(rnd):
    u = "".join(rnd.choice(ULID_CHARS) for _ in range(26))
    return rnd.choice(
        ["pay_" + u.lower(), "pay_" + u[:25], "pay_" + u + "0", "PAY_" + u, "pay-" + u, "pay_8" + u[1:],
         "pay_" + u[:10] + "é" + u[11:], "pay_", "", "x", "../balance", "pay_" + u[:10] + "%" + u[11:],
         "pay_" + u[:10] + "\u0000" + u[11:], "pay_" + "Z" * 26, "🙂", "a" * rnd.randint(100, 3000),
         "pay_" + u[:10] + " " + u[11:], "null", "%00", "pay_" + u + "\n"]
    )


def malformed_code(rnd):
    while True:
        _, code = bad_ident(rnd, 8, 64)
        if isinstance(code, str):
            return code


def quote_path(s):
    return urllib.parse.quote(s, safe="") if s else s


# ---------------------------------------------------------------- one request


class Req:
    __slots__ = ("endpoint", "method", "path", "headers", "body", "expect", "categories", "known_bug", "index",
                 "valid_caller")

    def __init__(self, endpoint, method, path):
        self.endpoint = endpoint
        self.method = method
        self.path = path
        self.headers = []
        self.body = b""
        self.expect = None  # a set of statuses, or None for any 4xx
        self.categories = []
        self.known_bug = None
        self.valid_caller = False


ENDPOINTS = {
    # name: (method, path template, caller, has body)
    "challenge": ("POST", "/v1/devices/challenges", None, True),
    "register": ("POST", "/v1/devices", None, True),
    "deregister": ("DELETE", "/v1/devices/{code}", "terminal", False),
    "create": ("POST", "/v1/payments", "merchant", True),
    "get": ("GET", "/v1/payments/{id}", "either", False),
    "cancel": ("POST", "/v1/payments/{id}/cancel", "merchant", False),
    "balance": ("GET", "/v1/balance", "merchant", False),
    "pending": ("GET", "/v1/pending-payments", "terminal", False),
    "confirm": ("POST", "/v1/payments/{id}/confirm", "terminal", True),
    "decline": ("POST", "/v1/payments/{id}/decline", "terminal", False),
}
# Contract revision 2, part 2: sent with --part2 (ENDPOINTS alone keeps the seeds of earlier sweeps).
PART2_ENDPOINTS = {
    "refund": ("POST", "/v1/payments/{id}/refunds", "merchant", True),
    "refunds": ("GET", "/v1/payments/{id}/refunds", "either", False),
    "webhook-put": ("PUT", "/v1/webhook-endpoint", "merchant", True),
    "webhook-get": ("GET", "/v1/webhook-endpoint", "merchant", False),
    "webhook-delete": ("DELETE", "/v1/webhook-endpoint", "merchant", False),
}

LABELS = {
    "challenge": "POST /v1/devices/challenges",
    "register": "POST /v1/devices",
    "deregister": "DELETE /v1/devices/{code}",
    "create": "POST /v1/payments",
    "get": "GET /v1/payments/{id}",
    "cancel": "POST /v1/payments/{id}/cancel",
    "balance": "GET /v1/balance",
    "pending": "GET /v1/pending-payments",
    "confirm": "POST /v1/payments/{id}/confirm",
    "decline": "POST /v1/payments/{id}/decline",
    "refund": "POST /v1/payments/{id}/refunds",
    "refunds": "GET /v1/payments/{id}/refunds",
    "webhook-put": "PUT /v1/webhook-endpoint",
    "webhook-get": "GET /v1/webhook-endpoint",
    "webhook-delete": "DELETE /v1/webhook-endpoint",
    "unknown": "unknown route or method",
    "path-escape": "GET /v1/payments/{id}%3F... (escaped ? or #)",
}


def unknown_route(rnd, ctx):
    # Never the real payment or devices: if the API took one of these for a route after all, a
    # valid caller must not be able to change anything.
    pid, code = payment_id(rnd), ident(rnd, 8, 64)
    method, path = rnd.choice(
        [
            ("GET", "/v1/devices"), ("PUT", "/v1/devices"), ("GET", f"/v1/devices/{code}"),
            ("GET", "/v1/devices/challenges"), ("PUT", "/v1/devices/challenges"), ("POST", "/v1/devices/Challenges"),
            ("POST", "/v1/devices/challenges/"), ("POST", f"/v1/devices/challenges/{code}"),
            ("POST", "/v1/device/challenges"), ("POST", f"/v1/devices/{code}/challenges"),
            ("POST", f"/v1/devices/{code}"), ("PATCH", f"/v1/devices/{code}"), ("GET", "/v1/payments"),
            ("DELETE", "/v1/payments"), ("PUT", f"/v1/payments/{pid}"), ("DELETE", f"/v1/payments/{pid}"),
            ("POST", f"/v1/payments/{pid}"), ("GET", f"/v1/payments/{pid}/cancel"),
            ("GET", f"/v1/payments/{pid}/confirm"), ("POST", f"/v1/payments/{pid}/refund"),
            ("POST", f"/v1/payments/{pid}/confirm/again"), ("POST", "/v1/balance"), ("DELETE", "/v1/balance"),
            ("POST", "/v1/pending-payments"), ("GET", "/v1/pending_payments"), ("GET", "/v1"), ("GET", "/"),
            ("GET", "/v1/"), ("GET", "/v2/balance"), ("GET", "/V1/balance"), ("GET", "/v1/Balance"),
            ("GET", "/v1/unknown"), ("POST", "/v1/payments/confirm"), ("GET", "/v1/payments/"),
            ("FOO", "/v1/balance"), ("TRACE", "/v1/balance"),
("HEAD", "/v1/unknown"), ("PROPFIND", "/v1/devices"),
            ("POST", "/v1/devices/"), ("GET", "/v1/balance/"), ("POST", "/x/v1/devices"), ("POST", "//v1//devices"),
            ("GET", "/x/v1/balance"), ("POST", "/v1/payments/v1/devices"), ("GET", "/v1/balance/v1/balance"),
            ("DELETE", "/v1/devices/"), ("POST", "/v1/payments/" + pid + "/cancel/"),
        ] + ([
            ("PUT", f"/v1/payments/{pid}/refunds"), ("DELETE", f"/v1/payments/{pid}/refunds"),
            ("POST", f"/v1/payments/{pid}/refunds/"), ("GET", f"/v1/payments/{pid}/refunds/re_{pid[4:]}"),
            ("GET", "/v1/refunds"), ("POST", "/v1/refunds"), ("POST", "/v1/webhook-endpoint"),
            ("PATCH", "/v1/webhook-endpoint"), ("PUT", "/v1/webhook-endpoint/"), ("GET", "/v1/webhook-endpoints"),
            ("PUT", "/v1/webhooks"), ("GET", "/v1/Webhook-Endpoint"), ("DELETE", "/v1/webhook-endpoint/x"),
        ] if ctx.part2 else [])
    )
    req = Req("unknown", method, path)
    req.categories.append(f"route:{method} {path.replace(pid, '{id}').replace(code, '{code}')}")
    req.expect = {404}
    if (method, path) in (("POST", "/x/v1/devices"), ("POST", "/v1/devices/"), ("POST", "//v1//devices")):
        # Aliases that must not reach POST /v1/devices (finding 3 of docs/RELIABILITY.md).
        mark(req, "route-alias")
    # Whatever else is in the request (valid caller included): the route decides first.
    if rnd.random() < 0.5:
        req.headers.append(("Authorization", ("Bearer " + rnd.choice([ctx.merchant_key, ctx.token_a])).encode()))
        req.valid_caller = True
    if rnd.random() < 0.5:
        req.headers.append(("Content-Type", rnd.choice(GOOD_CONTENT_TYPES)))
        req.body = rnd.choice([b"{}", b"{", b'{"unique_code":1}', b"x" * rnd.choice([10, MAX_BODY + 1])])
    return req


def path_escape(rnd, ctx):
    # MiniStack (like API Gateway) decodes the path; an escaped '?' or '#' must not cut the id.
    suffix = rnd.choice(["%3F", "%3Fx=1", "%23", "%23frag", "%3F%23"])
    req = Req("path-escape", "GET", f"/v1/payments/{ctx.payment_a}{suffix}")
    # Must not be answered with the payment (finding 4 of docs/RELIABILITY.md).
    mark(req, "path-escape")
    req.headers.append(("Authorization", ("Bearer " + rnd.choice([ctx.merchant_key, ctx.token_a])).encode()))
    req.valid_caller = True
    req.categories.append(f"path-escape:{suffix}")
    req.expect = {404}
    return req


def mark(req, category):
    """Files `req` under `category`; a category of KNOWN_BUGS is exempt from the checks."""
    req.categories.append(category)
    if category in KNOWN_BUGS:
        req.known_bug = category
        req.expect = None


def generate(rnd, ctx, index):
    r = rnd.random()
    if r < 0.08:
        req = unknown_route(rnd, ctx)
    elif r < 0.095:
        req = path_escape(rnd, ctx)
    else:
        req = endpoint_request(rnd, ctx, rnd.choice(ctx.endpoints))
    # Noise that must change nothing: unrelated headers, a query string (ignored by every endpoint).
    if rnd.random() < 0.2:
        req.headers.append((rnd.choice(["X-Junk", "Accept", "User-Agent", "X-Amz-Date", "Cookie"]),
                            rnd.choice([b"1", b"*/*", "é".encode(), b"x" * 2000, b"a=b; c=d"])))
    if rnd.random() < 0.1 and "?" not in req.path:
        req.path += rnd.choice(["?a=1", "?a=1&a=2", "?x=%00", "?%ff", "?debug=true", "?=", "?&&", "?q=a%20b"])
    # Headers and queries lambda_http 1.3.2 panics on (findings 1 and 2 of docs/RELIABILITY.md): the
    # functions drop Host and the query before converting the event, so they must change nothing.
    bug = rnd.random()
    if req.known_bug is None and bug < 0.015:
        mark(req, "proxy-headers")
        name, value = rnd.choice(
            [("Host", b"a b"), ("Host", b"[zz"), ("Host", b"exa mple.com"), ("Host", b":99999"),
             ("X-Forwarded-Proto", b"1"), ("X-Forwarded-Proto", b"ht tp"), ("X-Forwarded-Proto", b""),
             ("X-Forwarded-Proto", b"http:")]
        )
        req.headers.append((name, value))
        req.categories.append(f"proxy-headers:{name}")
    elif req.known_bug is None and bug < 0.03 and "?" not in req.path:
        mark(req, "raw-query")
        req.path += rnd.choice(['?q="x"', "?a<b", "?a>b", '?json={"a":1}'.replace("{", "%7B").replace("}", "%7D")])
    req.index = index
    return req


def endpoint_request(rnd, ctx, endpoint):
    method, template, caller, has_body = {**ENDPOINTS, **PART2_ENDPOINTS}[endpoint]
    req = Req(endpoint, method, template)
    # Each layer: valid, or a defect the contract refuses at that point of its order of checks. A
    # registration's proof is never drawn: it is always defective (below).
    layers = [layer for layer, _ in ORDER_OF_CHECKS if layer != "proof"]
    applicable = {
        "size": True,
        "caller": caller is not None,
        "content-type": has_body,
        "body": has_body,
        "key": endpoint in ("create", "refund"),
        "beacon": endpoint == "create",
        "path": "{" in template,
    }
    odds = {"size": 0.06, "caller": 0.2, "content-type": 0.2, "body": 0.45, "key": 0.25, "beacon": 0.25, "path": 0.35}
    defects = {layer for layer in layers if applicable[layer] and rnd.random() < odds[layer]}
    # Registration has no caller layer, and its well-formed body still fails (wrong proof: 422). A
    # well-formed challenge request would be answered 201 (a write): it always gets a defect here.
    if not defects and endpoint != "register":
        # Mostly a defect behind a valid caller, so that requests get past authentication.
        behind = [layer for layer in layers if applicable[layer] and layer not in ("size", "caller")]
        if not behind or rnd.random() < 0.2:
            behind = [layer for layer in layers if applicable[layer] and layer != "size"]
        defects = {rnd.choice(behind)}
    if "size" in defects and rnd.random() < 0.5:
        # Most oversize requests carry nothing else wrong: 413 must come first anyway.
        defects = {"size"}
    if endpoint == "register":
        defects.add("proof")

    # size (the padding comes last, once the body is made)
    if "size" in defects:
        req.categories.append("size:over")

    # caller
    bearer_owner = None
    bearer_may_401 = False
    if caller is not None:
        if "caller" in defects:
            kind, headers = bad_bearer(rnd, ctx, "terminal" if caller == "terminal" else "merchant")
            if caller == "either" and kind == "wrong-kind":
                kind, headers = "unknown", [("Authorization",
                                             ("Bearer " + ctx.terminal_prefix + secrets.token_hex(32)).encode())]
            req.headers += headers
            req.categories.append(f"caller:{kind}")
        else:
            if caller == "merchant":
                bearer_owner = "merchant"
            elif caller == "terminal":
                bearer_owner = rnd.choice(["A", "B"])
            else:
                bearer_owner = rnd.choice(["merchant", "A", "B"])
            token = {"merchant": ctx.merchant_key, "A": ctx.token_a, "B": ctx.token_b}[bearer_owner]
            scheme = rnd.choice(["Bearer", "bearer", "BEARER"])
            req.headers.append(("Authorization", f"{scheme}{rnd.choice([' ', '  '])}{token}".encode()))
            req.valid_caller = True
    elif endpoint == "register" and rnd.random() < 0.2:
        # The terminal is a random one, free: a current token of any terminal changes nothing. A bearer
        # that is no terminal's current token is 401 where the server looks at it: before the body
        # (with the caller) or with the terminal's registrations (after the proof); else ignored.
        kind, value = rnd.choice([("token-a", "Bearer " + ctx.token_a), ("nope", "Bearer nope"),
                                  ("unknown", "Bearer " + ctx.terminal_prefix + secrets.token_hex(32)),
                                  ("merchant-key", "Bearer " + ctx.merchant_key)])
        req.headers.append(("Authorization", value.encode()))
        req.categories.append(f"register-bearer:{kind}")
        bearer_may_401 = kind != "token-a"

    # content type
    if has_body:
        if "content-type" in defects:
            ct = rnd.choice(BAD_CONTENT_TYPES)
            req.categories.append(f"content-type:{ct.decode(errors='replace') if ct is not None else 'missing'}")
        else:
            ct = rnd.choice(GOOD_CONTENT_TYPES)
        if ct is not None:
            req.headers.append(("Content-Type", ct))
    elif rnd.random() < 0.3:
        # Bodiless endpoints ignore Content-Type.
        req.headers.append(("Content-Type", rnd.choice(BAD_CONTENT_TYPES[1:] + GOOD_CONTENT_TYPES)))

    # body, and the Idempotency-Key header (create, refund)
    if endpoint in ("create", "refund"):
        if "key" in defects:
            kind, value = bad_idempotency_key(rnd)
            req.categories.append(f"idempotency-key:{kind}")
        else:
            value = ("sweep-" + secrets.token_hex(8)).encode()
        if value is not None:
            req.headers.append(("Idempotency-Key", value))
    if has_body:
        if "body" in defects and rnd.random() < 0.4:
            kind, req.body = broken_json(rnd, endpoint, ctx)
            req.categories.append(f"json:{kind}")
        else:
            body = valid_body(rnd, endpoint, ctx)
            if "beacon" in defects:
                req.categories.append("beacon:" + wrong_beacon(rnd, ctx, body))
            if "body" in defects:
                field = rnd.choice(BODY_FIELDS[endpoint])
                kind, value = bad_value(rnd, field)
                if value is None:
                    body.pop(field, None)
                    kind = "missing"
                else:
                    body[field] = value
                req.categories.append(f"field:{field}:{kind}")
            req.body = dump(body, rnd)
    elif rnd.random() < 0.2:
        # Bodiless endpoints ignore a body under the limit.
        req.body = rnd.choice([b"{}", b"garbage", b'{"auth_code": 1}', b"x" * MAX_BODY])
    if "size" in defects:
        size = rnd.choice([MAX_BODY + 1, MAX_BODY + 2, 9000, 16384, 65536, 262144, 1 << 20])
        req.body = (req.body + b" " * size)[: max(size, len(req.body))]
        if len(req.body) <= MAX_BODY:
            req.body += b" " * (MAX_BODY + 1 - len(req.body))
    elif has_body and rnd.random() < 0.03:
        # Exactly at the limit: not too large; whatever else is wrong decides.
        req.body = (req.body + b" " * MAX_BODY)[:MAX_BODY] if len(req.body) <= MAX_BODY else req.body[:MAX_BODY]
        req.categories.append("size:exactly-8KiB")
    expect = next(({status} for layer, status in ORDER_OF_CHECKS if layer in defects), None)
    # The size the function sees decides 413, whatever else is wrong. The emulator hands a body sent
    # as text (JSON, text/*) on as UTF-8 with U+FFFD for bytes that are not, which can grow it.
    ct = next((v for n, v in req.headers if n == "Content-Type"), b"") or b""
    seen = req.body
    if ct.split(b";")[0].strip().lower() in (b"application/json", b"application/xml", b"application/javascript") \
            or ct.strip().lower().startswith(b"text/"):
        seen = req.body.decode("utf-8", "replace").encode()
    if len(seen) > MAX_BODY:
        expect = {413}
    elif bearer_may_401:
        expect = expect | {401}

    # path id / owner
    if "{" in template:
        pid, code = ctx.payment_a, ctx.code_b
        uncertain = False
        if "path" in defects:
            choice = rnd.random()
            if endpoint == "deregister":
                if choice < 0.4:
                    code = malformed_code(rnd)
                    req.categories.append("path:malformed-code")
                    uncertain = True
                elif choice < 0.7:
                    code = ident(rnd, 8, 64)
                    req.categories.append("path:unknown-code")
                else:
                    # The other terminal's code (token A) or A's code (token B): not the caller's.
                    code = ctx.code_b if bearer_owner in ("A", None) else ctx.code_a
                    req.categories.append("path:not-owner")
            elif choice < 0.4:
                pid = malformed_payment_id(rnd)
                req.categories.append("path:malformed-id")
                uncertain = True
            elif choice < 0.7 or bearer_owner in ("merchant", None):
                pid = payment_id(rnd)
                req.categories.append("path:unknown-id")
            else:
                # A's payment, asked for by B's terminal.
                pid = ctx.payment_a
                if bearer_owner != "B":
                    req.headers = [(n, v) for n, v in req.headers if n != "Authorization"]
                    req.headers.append(("Authorization", ("Bearer " + ctx.token_b).encode()))
                req.categories.append("path:not-owner")
        elif endpoint == "deregister":
            # The code the caller owns is only reached behind an earlier defect.
            code = ctx.code_a if bearer_owner in ("A", None) else ctx.code_b
        req.path = template.replace("{id}", quote_path(pid)).replace("{code}", quote_path(code))
        if uncertain and expect != {404} and expect is not None:
            # The emulator decodes the path before routing; a decoded '/', '?', NUL... may change the
            # route, which then answers 404 before the caller is checked.
            expect = expect | {404}
    req.expect = expect
    return req


# ---------------------------------------------------------------- sending


class Client:
    def __init__(self, api_url):
        u = urllib.parse.urlsplit(api_url)
        self.host, self.port, self.base = u.hostname, u.port or 80, u.path.rstrip("/")
        self.local = threading.local()
        self.retries = 0
        self.lock = threading.Lock()

    def _conn(self, fresh=False):
        c = getattr(self.local, "conn", None)
        if c is None or fresh:
            if c is not None:
                c.close()
            c = http.client.HTTPConnection(self.host, self.port, timeout=60)
            self.local.conn = c
        return c

    def send(self, method, path, headers, body):
        """(status, headers, body); retries connection failures (a redeploy in progress)."""
        for attempt in range(60):
            conn = self._conn(fresh=attempt > 0)
            try:
                conn.putrequest(method, self.base + path, skip_host=True, skip_accept_encoding=True)
                if not any(n.lower() == "host" for n, _ in headers):
                    conn.putheader("Host", f"{self.host}:{self.port}")
                for name, value in headers:
                    conn.putheader(name, value)
                if body or method not in ("GET", "HEAD", "DELETE"):
                    conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body or None)
                resp = conn.getresponse()
                data = resp.read()
                if resp.getheader("connection", "").lower() == "close":
                    self._conn(fresh=True)
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
            except (ConnectionError, http.client.HTTPException, TimeoutError, OSError):
                with self.lock:
                    self.retries += 1
                time.sleep(1 if attempt < 10 else 5)
        raise RuntimeError(f"{method} {path}: no answer after 60 attempts")

    def json_call(self, method, path, body=None, bearer=None, extra=()):
        headers = list(extra)
        data = b""
        if body is not None:
            data = json.dumps(body).encode()
            headers.append(("Content-Type", b"application/json"))
        if bearer:
            headers.append(("Authorization", ("Bearer " + bearer).encode()))
        status, _, raw = self.send(method, path, headers, data)
        return status, json.loads(raw or b"null")


# ---------------------------------------------------------------- setup, table, queue, logs


class Ctx:
    pass


def setup(client, env, devices):
    ctx = Ctx()
    ctx.devices = devices
    ctx.merchant_prefix, ctx.terminal_prefix = devices.bearer_prefixes()
    ctx.merchant_key = env["MERCHANT_API_KEY"]
    run = secrets.token_hex(6)

    def challenge(code):
        status, issued = client.json_call("POST", "/v1/devices/challenges", {"unique_code": code})
        if status != 201:
            sys.exit(f"sweep setup: a challenge for {code}: {status} {issued}")
        return issued["challenge"]

    for who in ("a", "b"):
        code, terminal = f"sweep-{who}-{run}", f"sweep-phone-{who}-{run}"
        issued = challenge(code)
        proof = devices.registration_proof(code, terminal, issued)
        status, reg = client.json_call("POST", "/v1/devices", {"unique_code": code, "terminal_id": terminal,
                                                               "challenge": issued, "registration_proof": proof})
        if status != 201:
            sys.exit(f"sweep setup: registering {code}: {status} {reg}")
        setattr(ctx, f"code_{who}", code)
        setattr(ctx, f"token_{who}", reg["terminal_token"])
    # Issued, and left unused: the sweep's registrations carry them with proofs that are not the device's.
    ctx.challenges = [(code, challenge(code)) for code in (f"sweep-c{i}-{run}" for i in range(4))]
    status, payment = client.json_call(
        "POST", "/v1/payments",
        {"unique_code": ctx.code_a, "beacon_proof": devices.beacon_proof(ctx.code_a),
         "amount": 1, "currency": "USD", "pos_id": "sweep-pos", "reference": "sweep"},
        bearer=ctx.merchant_key, extra=[("Idempotency-Key", ("sweep-" + run).encode())],
    )
    if status != 201:
        sys.exit(f"sweep setup: payment request: {status} {payment}")
    ctx.payment_a = payment["payment_id"]
    return ctx


def aws(service, env):
    return boto3.client(
        service,
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=env.get("AWS_REGION", env.get("AWS_DEFAULT_REGION", "us-east-1")),
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID", "test"),
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY", "test"),
    )


def scan(ddb, table):
    items, kwargs = {}, {}
    while True:
        page = ddb.scan(TableName=table, ConsistentRead=True, **kwargs)
        for item in page["Items"]:
            key = (item.get("pk", {}).get("S"), item.get("sk", {}).get("S"))
            items[key] = json.dumps(item, sort_keys=True)
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def queue_depth(sqs, url):
    attrs = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), int(attrs["ApproximateNumberOfMessagesNotVisible"])


def settled_snapshot(ddb, sqs, env, timeout=120):
    """A table snapshot taken once the settlement queue is empty and two scans agree."""
    deadline = time.time() + timeout
    queue = env.get("SETTLEMENT_QUEUE_URL")
    while True:
        busy = queue_depth(sqs, queue) if queue else (0, 0)
        if busy == (0, 0):
            first = scan(ddb, env["TABLE_NAME"])
            time.sleep(1.0)
            if queue_depth(sqs, queue) == (0, 0) if queue else True:
                second = scan(ddb, env["TABLE_NAME"])
                if first == second:
                    return second
        if time.time() > deadline:
            sys.exit(f"sweep: the settlement queue or the table kept changing for {timeout} s (queue {busy})")
        time.sleep(1.0)


def background_settlement(before, after, changed):
    """The changed keys that settlement explains: a payment going `confirmed` -> `settled` (its
    journal legs are on the payment item), and its merchant's balance. No request of the
    sweep can confirm anything, so such changes come from payments confirmed before it started."""
    def status(items, key):
        raw = items.get(key)
        return json.loads(raw).get("status", {}).get("S") if raw else None

    settled = {}
    for key in changed:
        if key[0].startswith("PAYMENT#") and status(before, key) == "confirmed" and status(after, key) == "settled":
            settled[key[0][len("PAYMENT#"):]] = json.loads(after[key]).get("merchant_id", {}).get("S")
    explained = set()
    for key in changed:
        pk, sk = key
        if pk.startswith("PAYMENT#") and pk[len("PAYMENT#"):] in settled:
            explained.add(key)
        elif sk and sk.startswith("BALANCE#") and pk[len("MERCHANT#"):] in settled.values():
            explained.add(key)
    return explained, len(settled)


def patiently(call, **kwargs):
    """MiniStack's log store sometimes fails a read while functions write to it ("dictionary changed
    size during iteration"); such a read is tried again a few seconds later."""
    for attempt in range(6):
        try:
            return call(**kwargs)
        except botocore.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") != "InternalError" or attempt == 5:
                raise
            time.sleep(2)


def log_groups(logs, env):
    stack = env["TABLE_NAME"].split("-Table-")[0]
    groups, kwargs = [], {}
    while True:
        page = patiently(logs.describe_log_groups, logGroupNamePrefix=f"/aws/lambda/{stack}-", **kwargs)
        groups += [g["logGroupName"] for g in page["logGroups"]]
        if not page.get("nextToken"):
            return groups
        kwargs["nextToken"] = page["nextToken"]


def log_lines(logs, group, start_ms, end_ms, pattern):
    kwargs = {}
    while True:
        page = patiently(
            logs.filter_log_events,
            logGroupName=group, startTime=start_ms, endTime=end_ms, filterPattern=pattern, **kwargs
        )
        for e in page["events"]:
            yield e["message"]
        token = page.get("nextToken")
        if not token or not page["events"]:
            return
        kwargs["nextToken"] = token


# ---------------------------------------------------------------- checks


def check(req, status, headers, data):
    """A list of what is wrong with this answer (empty: fine)."""
    problems = []
    if status >= 500:
        problems.append(f"status {status}")
    elif not 400 <= status < 500:
        problems.append(f"status {status}: a malformed request was accepted")
    if req.expect is not None and status not in req.expect:
        problems.append(f"status {status}, contract order of checks says {sorted(req.expect)}")
    if req.method == "HEAD":
        return problems
    try:
        doc = json.loads(data)
        error = doc["error"]
        code, message = error["code"], error["message"]
        shape_ok = (set(doc) == {"error"} and set(error) == {"code", "message"} and isinstance(code, str)
                    and isinstance(message, str) and message)
    except (ValueError, TypeError, KeyError):
        shape_ok, code = False, None
    if not shape_ok:
        problems.append("not the contract's error shape")
    elif CONTRACT_ERRORS.get(code) is None:
        problems.append(f"{code!r} is not a contract error code")
    elif CONTRACT_ERRORS[code] != status:
        problems.append(f"code {code} belongs to {CONTRACT_ERRORS[code]}, answered with {status}")
    if not headers.get("content-type", "").startswith("application/json"):
        problems.append(f"content-type {headers.get('content-type')!r}")
    return problems


SECRETS = {}


def mask(text):
    for secret, name in SECRETS.items():
        text = text.replace(secret, name)
    return text


def describe(req, status, data):
    headers = mask(", ".join(f"{n}: {v[:80]!r}" for n, v in req.headers))
    body = req.body[:160]
    return mask(f"#{req.index} {req.method} {req.path[:200]} [{headers}] body[{len(req.body)}]={body!r} "
                f"-> {status} {data[:300]!r} ({', '.join(req.categories)})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=10_000, help="requests to send (default 10000)")
    ap.add_argument("--seed", type=int, default=None, help="generator seed (default: random, printed)")
    ap.add_argument("--threads", type=int, default=16, help="concurrent connections (default 16)")
    ap.add_argument("--env-file", help="the stack's coordinates (default .local/stack.env; make test sweeps a "
                                       "stack of its own, .local/stack-twochan-sweep.env)")
    ap.add_argument("--strict", action="store_true", help="known bugs (KNOWN_BUGS) fail the sweep too")
    ap.add_argument("--part2", action=argparse.BooleanOptionalAction, default=PART2,
                    help=f"refunds and webhook endpoints too (default {'on' if PART2 else 'off'})")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    began = time.monotonic()
    env = load_env(args.env_file)
    print(f"sweep: seed {seed}, {args.count} requests, {args.threads} threads against {env['API_URL']}")
    print(f"sweep: reproduce with: scripts/sweep.py --seed {seed} --count {args.count}"
          + (" --part2" if args.part2 else " --no-part2") + (f" --env-file {args.env_file}" if args.env_file else ""))

    client = Client(env["API_URL"])
    ddb, sqs, logs = aws("dynamodb", env), aws("sqs", env), aws("logs", env)
    devices = Devices(env["ISSUER_MASTER_KEY"])
    ctx = setup(client, env, devices)
    ctx.part2 = args.part2
    ctx.endpoints = list(ENDPOINTS) + (list(PART2_ENDPOINTS) if args.part2 else [])
    SECRETS.update({ctx.merchant_key: "<merchant key>", ctx.token_a: "<token A>", ctx.token_b: "<token B>",
                    ctx.payment_a: "<payment A>", ctx.code_a: "<code A>", ctx.code_b: "<code B>"})
    before = settled_snapshot(ddb, sqs, env)
    print(f"sweep: setup registered 2 devices, made 1 pending payment and {len(ctx.challenges)} unused "
          f"registration challenges; table has {len(before)} items")

    rnd = random.Random(seed)
    requests = [generate(rnd, ctx, i) for i in range(args.count)]
    devices.close()

    counts = collections.Counter(LABELS[r.endpoint] for r in requests)
    valid_callers = sum(1 for r in requests if r.valid_caller)
    statuses = collections.Counter()
    per_endpoint_status = collections.defaultdict(collections.Counter)
    failures, known = [], collections.Counter()
    lock = threading.Lock()

    def one(req):
        status, headers, data = client.send(req.method, req.path, req.headers, req.body)
        problems = check(req, status, headers, data)
        with lock:
            statuses[status] += 1
            per_endpoint_status[LABELS[req.endpoint]][status] += 1
            if problems and req.known_bug and not args.strict:
                known[req.known_bug] += 1
            elif problems:
                failures.append((req, status, data, problems))

    start_ms = int(time.time() * 1000)
    t0 = time.monotonic()
    prepared = t0 - began
    with ThreadPoolExecutor(args.threads) as pool:
        list(pool.map(one, requests))
    elapsed = time.monotonic() - t0
    time.sleep(2.0)
    end_ms = int(time.time() * 1000) + 5000

    after = settled_snapshot(ddb, sqs, env)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    explained, settled_meanwhile = background_settlement(before, after, changed)
    changed = [k for k in changed if k not in explained]

    groups = log_groups(logs, env)
    panics = collections.Counter()
    invocations = 0
    for group in groups:
        for line in log_lines(logs, group, start_ms - 1000, end_ms, "panicked"):
            if "panicked at" in line:
                where = line.split("panicked at", 1)[1].strip().rstrip(":")
                panics[where] += 1
        invocations += sum(1 for line in log_lines(logs, group, start_ms - 1000, end_ms, "REPORT")
                           if line.startswith("REPORT RequestId"))
    checked = time.monotonic() - t0 - elapsed
    known_panics = sum(n for where, n in panics.items() if "/lambda_http-" in where and "/src/request.rs" in where)
    other_panics = sum(panics.values()) - (0 if args.strict else known_panics)

    # ------------------------------------------------------------ report
    print(f"sweep: {len(requests)} requests in {elapsed:.1f} s ({len(requests) / elapsed:.0f} requests/s), "
          f"{client.retries} connection retries; setup and first snapshot {prepared:.1f} s, second snapshot and "
          f"log checks {checked:.1f} s")
    print("sweep: requests per endpoint (status: count):")
    for label in LABELS.values():
        if counts[label]:
            hist = " ".join(f"{s}:{n}" for s, n in sorted(per_endpoint_status[label].items()))
            print(f"  {label:48} {counts[label]:6}   {hist}")
    print(f"sweep: {valid_callers} requests ({100 * valid_callers / len(requests):.0f}%) carried a valid merchant key or "
          "terminal token (registration needs none)")
    print("sweep: status histogram: " + " ".join(f"{s}:{n}" for s, n in sorted(statuses.items())))
    print(f"sweep: responses >= 500: {sum(n for s, n in statuses.items() if s >= 500)}")
    print(f"sweep: function logs: {len(groups)} log groups, {invocations} invocations logged, "
          f"{sum(panics.values())} 'panicked at' lines")
    for where, n in panics.most_common():
        print(f"  {n:6}  panicked at {where}")
    print(f"sweep: table {env['TABLE_NAME']}: {len(before)} items before, {len(after)} after, {len(changed)} changed"
          + (f" ({len(explained)} more by the settlement of {settled_meanwhile} payments confirmed before the sweep)"
             if explained else ""))

    ok = True
    sent_known = collections.Counter(r.known_bug for r in requests if r.known_bug)
    for bug, why in KNOWN_BUGS.items():
        if args.strict:
            continue
        if known[bug]:
            print(f"sweep: KNOWN BUG {bug}: {known[bug]} of {sent_known[bug]} requests failed ({why})")
        elif sent_known[bug] >= 5:
            print(f"sweep: known bug {bug} did not reproduce in {sent_known[bug]} requests: "
                  f"remove it from KNOWN_BUGS in scripts/sweep.py")
            ok = False
    if invocations < 0.9 * len(requests):
        print(f"sweep: FAIL only {invocations} invocations in the function logs for {len(requests)} requests: "
              "the panic check cannot be trusted")
        ok = False
    if other_panics:
        print(f"sweep: FAIL {other_panics} panics in the function logs")
        ok = False
    if changed:
        ok = False
        print("sweep: FAIL the table changed:")
        for key in changed[:20]:
            print(f"  {key}: {before.get(key, '<absent>')[:300]} -> {after.get(key, '<absent>')[:300]}")
    if failures:
        ok = False
        kinds = collections.Counter(
            (LABELS[req.endpoint], status, tuple(sorted(req.expect)) if req.expect else "4xx")
            for req, status, _, _ in failures
        )
        print(f"sweep: FAIL {len(failures)} answers broke the contract (endpoint, status, expected):")
        for (label, status, expected), n in kinds.most_common(15):
            print(f"  {n:6}  {label}: {status}, expected {expected}")
        for req, status, data, problems in sorted(failures, key=lambda f: f[0].index)[:25]:
            print(f"  {'; '.join(problems)}\n    {describe(req, status, data)}")
    print("sweep: " + ("OK" if ok else "FAILED") + f" (seed {seed})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
