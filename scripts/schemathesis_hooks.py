"""Schemathesis hooks of `make schemathesis`: point some generated requests at real resources that
scripts/schemathesis.py set up, so that success answers are reached and checked too (random ids
only ever reach 404). Hypothesis picks between the generated and the real value, so the choice is
as reproducible as the rest of the run."""

import os

import schemathesis
from hypothesis import strategies as st

DEVICE = os.environ["SCHEMATHESIS_DEVICE"]  # registered to the run's terminal token
SPARE_DEVICE = os.environ["SCHEMATHESIS_SPARE_DEVICE"]  # same terminal, there to be deregistered
PAYMENT = os.environ["SCHEMATHESIS_PAYMENT"]  # confirmed with counter 1 (then settled) on DEVICE
RUN = os.environ["SCHEMATHESIS_RUN"]  # unique per run


def either(value, field, real):
    if isinstance(value, dict) and field in value:
        return st.sampled_from([value, {**value, field: real}])
    return st.just(value)


@schemathesis.hook("flatmap_body").apply_to(method="POST", path="/v1/payments")
def pay_on_the_registered_device(ctx, body):
    return either(body, "unique_code", DEVICE)


@schemathesis.hook("map_headers").apply_to(method="POST", path="/v1/payments")
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
