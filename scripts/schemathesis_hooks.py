"""Schemathesis hooks of `make schemathesis`: point some generated requests at real resources that
scripts/schemathesis.py set up, so that success answers are reached and checked too (random ids
only ever reach 404). Hypothesis picks between the generated and the real value, so the choice is
as reproducible as the rest of the run.

What only a device can make (a beacon proof, a registration proof over a fresh challenge) is made
from ISSUER_MASTER_KEY of the stack, as the setup reads it, in `before_call`: right before the
request is sent, so that a beacon proof is of the moment and a challenge is fresh, and without a
request to the API while Hypothesis generates. Generation only leaves a marker where it chose a
real value.

Refunds: some target the settled payment (like every operation on a payment id) with an amount of 1,
so that 201 and its replay are reached until its 100 are used up, then 422 refund_exceeds_payment;
some webhook endpoints are the setup's receiver, so that events keep being delivered somewhere."""

import os
import re
import sys

import schemathesis
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stack import beacon_proof, call, device_key, registration_proof_v2, stack_env  # noqa: E402

ENV = stack_env()
API, MASTER = ENV["API_URL"], ENV["ISSUER_MASTER_KEY"]
TERMINAL = os.environ["SCHEMATHESIS_TERMINAL"]  # the run's terminal; TERMINAL_TOKEN is its token
DEVICE = os.environ["SCHEMATHESIS_DEVICE"]  # registered to the run's terminal token
SPARE_DEVICE = os.environ["SCHEMATHESIS_SPARE_DEVICE"]  # same terminal, there to be deregistered
PAYMENT = os.environ["SCHEMATHESIS_PAYMENT"]  # 100 USD, confirmed with counter 1 and settled, on DEVICE
WEBHOOK_URL = os.environ["SCHEMATHESIS_WEBHOOK_URL"]  # a receiver of the setup on 127.0.0.1, answering 204
RUN = os.environ["SCHEMATHESIS_RUN"]  # unique per run

# Markers of a value made at call time; should one be sent as it is, it is malformed (400).
LIVE_BEACON = "<beacon proof of the moment>"
LIVE_PROOF = "<proof over a fresh challenge>"
ID = re.compile(r"[A-Za-z0-9_-]{8,64}\Z")


def either(value, field, real):
    if isinstance(value, dict) and field in value:
        return st.sampled_from([value, {**value, field: real}])
    return st.just(value)


@schemathesis.hook("flatmap_body").apply_to(method="POST", path="/v1/payments")
def pay_on_the_registered_device(ctx, body):
    # The run's device, and a beacon proof of the moment (of the body's code): without one, every
    # payment request is 422 invalid_beacon_proof, and 201, 404 unknown_device and 409 device_busy
    # are never reached.
    if not (isinstance(body, dict) and "unique_code" in body):
        return st.just(body)
    variants = [body, {**body, "unique_code": DEVICE}]
    if "beacon_proof" in body:
        variants += [{**v, "beacon_proof": LIVE_BEACON} for v in variants]
    return st.sampled_from(variants)


@schemathesis.hook("flatmap_body").apply_to(method="POST", path="/v1/devices")
def register_with_a_fresh_challenge(ctx, body):
    # A random challenge is never one the server issued, so without this every registration is 422.
    # The code (and the terminal) get this run's prefix: a later run must not meet this run's
    # registrations. One more device to the run's terminal is answered 201 with its token (sent by
    # the terminalToken auth), 409 terminal_id_taken without it.
    fields = ("unique_code", "terminal_id", "challenge", "registration_proof")
    if not (isinstance(body, dict) and all(isinstance(body.get(f), str) for f in fields)
            and ID.match(body["unique_code"]) and ID.match(body["terminal_id"])):
        return st.just(body)
    prefix = "st" + RUN.rstrip(":")
    fresh = {**body, "unique_code": (prefix + body["unique_code"])[:64], "registration_proof": LIVE_PROOF}
    return st.sampled_from([body, {**fresh, "terminal_id": (prefix + body["terminal_id"])[:64]},
                            {**fresh, "terminal_id": TERMINAL}])


@schemathesis.hook("before_call")
def what_a_device_makes_now(ctx, case, **kwargs):
    body = case.body
    if not isinstance(body, dict) or not isinstance(body.get("unique_code"), str):
        return
    code = body["unique_code"]
    if body.get("beacon_proof") == LIVE_BEACON:
        body["beacon_proof"] = beacon_proof(device_key(MASTER, code), code)
    if body.get("registration_proof") == LIVE_PROOF and isinstance(body.get("terminal_id"), str):
        status, issued = call(API, "POST", "/v1/devices/challenges", {"unique_code": code})
        if status != 201:
            raise RuntimeError(f"a challenge for {code}: {status} {issued}")
        body["challenge"] = issued["challenge"]
        body["registration_proof"] = registration_proof_v2(device_key(MASTER, code), code, body["terminal_id"],
                                                           issued["challenge"])


@schemathesis.hook("map_headers").apply_to(method="POST", path="/v1/payments").apply_to(
    method="POST", path="/v1/payments/{payment_id}/refunds")
def idempotency_keys_of_this_run(ctx, headers):
    # The server keeps a key's answer for 24 h: a key generated again by a later run must not
    # replay this run's answer. A valid key stays valid, a malformed one stays malformed.
    key = (headers or {}).get("Idempotency-Key")
    if isinstance(key, str) and 1 <= len(key) <= 255 and all(" " <= c <= "~" for c in key):
        headers["Idempotency-Key"] = (RUN + key)[:255]
    return headers


@schemathesis.hook("flatmap_body").apply_to(method="POST", path="/v1/payments/{payment_id}/confirm")
def counter_in_the_window(ctx, body):
    # A random counter is almost never within 1000 of the device's last one (1): without this the
    # auth code is never checked, and 422 invalid_auth_code and 429 are never reached.
    return either(body, "counter", "2")


@schemathesis.hook("flatmap_path_parameters").apply_to(path_regex="payment_id")
def the_confirmed_payment(ctx, path_parameters):
    return either(path_parameters, "payment_id", PAYMENT)


@schemathesis.hook("flatmap_path_parameters").apply_to(method="DELETE", path="/v1/devices/{unique_code}")
def the_spare_device(ctx, path_parameters):
    return either(path_parameters, "unique_code", SPARE_DEVICE)


@schemathesis.hook("flatmap_body").apply_to(method="POST", path="/v1/payments/{payment_id}/refunds")
def refunds_of_one(ctx, body):
    # A random amount is almost always above what is left of the payment: 422 only, without this.
    return either(body, "amount", 1)


@schemathesis.hook("flatmap_body").apply_to(method="PUT", path="/v1/webhook-endpoint")
def the_receiver(ctx, body):
    # The setup's receiver, so that the endpoint is often one that takes the run's events.
    return either(body, "url", WEBHOOK_URL)
