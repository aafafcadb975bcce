#!/usr/bin/env python3
"""Each function's role against the AWS calls its code makes, both ways. tests/tests/iam.rs runs
every route and consumer of every function through the real handlers against the emulator, with a
failpoints probe recording the IAM action and resource of every call, and writes them by function
and by the template's names to target/iam-observed.json. This check fails (exit 1, one line per
finding) when

  (a) an observed action is not granted by the function's role on that resource: the call would
      be refused on AWS (the local emulator does not enforce IAM), or
  (b) a granted action was never observed: the role allows more than the code does, unless the
      action is made outside the handlers, on the function's behalf (ALLOWED_UNOBSERVED, each
      with its reason).

The role is read from the template as scripts/check_template.py reads it (`granted`), both
branches of every conditional statement included.

    python scripts/check_iam_used.py [TEMPLATE] [--observed target/iam-observed.json]
"""

import argparse
import fnmatch
import json
import os
import sys

import yaml

from check_template import ROOT, Loader, Tagged, granted, role_of

# Granted actions that no handler makes, and why each is granted all the same. `resource` is a
# template name (fnmatch pattern); CONSUMED stands for a queue the function's SQS event source
# mapping reads.
CONSUMED = "<consumed queue>"
ALLOWED_UNOBSERVED = [
    ("dynamodb:DescribeTable", "Table",
     "the init warm-up in each main (DynamoStore::warm_up), before any handler runs"),
    ("ssm:GetParameter", "IssuerMasterKeyParameter",
     "init: the issuer key read from SSM (twochan_aws::secrets), before any handler runs"),
    ("kms:Decrypt", "IssuerMasterKeyKmsKeyArn",
     "init: SSM decrypts the issuer key's SecureString with it, on the function's behalf"),
    ("logs:*", "*Logs", "the Lambda runtime writes the function's log lines to its log group"),
    ("sqs:ReceiveMessage", CONSUMED, "the event source mapping: the Lambda service polls the queue with the role"),
    ("sqs:DeleteMessage", CONSUMED, "the event source mapping: the Lambda service deletes each handled message"),
    ("sqs:GetQueueAttributes", CONSUMED, "the event source mapping: the Lambda service reads the queue's settings"),
    # Not sqs:ChangeMessageVisibility: the event source mapping does not need it (AWS lists only
    # the three above for the execution role); a function that changes a message's visibility
    # does so in its code, where the tests see it (the webhooks function's retries).
]


def consumed_queues(resources, function):
    """The queues an AWS::Lambda::EventSourceMapping hands to `function`."""
    queues = set()
    for r in resources.values():
        if r["Type"] != "AWS::Lambda::EventSourceMapping":
            continue
        props = r["Properties"]
        target, source = props.get("FunctionName"), props.get("EventSourceArn")
        if isinstance(target, Tagged) and target.value == function and isinstance(source, Tagged):
            v = source.value
            queues.add(v[0] if isinstance(v, list) else v.split(".")[0])
    return queues


def allowance(action, resource, consumed, reasons=ALLOWED_UNOBSERVED):
    """The reason `action` on `resource` may be granted without being observed, or None.
    `reasons` are (action pattern, resource pattern or CONSUMED, why)."""
    for pattern, where, why in reasons:
        hit = resource in consumed if where == CONSUMED else fnmatch.fnmatchcase(resource, where)
        if hit and fnmatch.fnmatchcase(action, pattern):
            return why
    return None


def findings(template, observed):
    resources = template["Resources"]
    functions = sorted(n for n, r in resources.items() if r["Type"] == "AWS::Lambda::Function")
    for name in sorted(observed.keys() - set(functions)):
        yield f"{name} is in the observations but is no function of the template"
    for name in functions:
        if name not in observed:
            yield f"{name}: no observations; tests/tests/iam.rs must run its handlers"
            continue
        role = role_of(resources[name])
        grants = granted(resources.get(role, {"Properties": {}}))
        seen = {resource: set(actions) for resource, actions in observed[name].items()}
        consumed = consumed_queues(resources, name)
        if not any(seen.values()):
            yield f"{name}: no AWS call observed; tests/tests/iam.rs must run its handlers"
        for resource in sorted(seen):
            for action in sorted(seen[resource] - grants.get(resource, set())):
                yield f"{name} calls {action} on {resource}, which {role} does not grant (refused on AWS)"
        for resource in sorted(grants):
            for action in sorted(grants[resource] - seen.get(resource, set())):
                if allowance(action, resource, consumed) is None:
                    yield (f"{role} grants {action} on {resource}, which {name} never used in the tests "
                           f"(remove it, or list why in ALLOWED_UNOBSERVED)")


def table(template, observed):
    """Function, resource, observed actions, and the granted ones allowed unobserved."""
    resources = template["Resources"]
    rows = []
    for name in sorted(observed):
        if name not in resources:
            continue
        grants = granted(resources[role_of(resources[name])])
        consumed = consumed_queues(resources, name)
        for resource in sorted(set(observed[name]) | set(grants)):
            seen = sorted(observed[name].get(resource, []))
            allowed = sorted(a for a in grants.get(resource, set()) - set(seen)
                             if allowance(a, resource, consumed) is not None)
            rows.append((name, resource, seen, allowed))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("template", nargs="?", default=os.path.join(ROOT, "infra", "template.yaml"))
    # As tests/tests/iam.rs writes it: CARGO_TARGET_DIR if set (a relative one from the root).
    target = os.path.join(ROOT, os.environ.get("CARGO_TARGET_DIR") or "target")
    parser.add_argument("--observed", default=os.path.join(target, "iam-observed.json"))
    parser.add_argument("--quiet", action="store_true", help="findings only, no table")
    args = parser.parse_args()
    with open(args.template) as f:
        template = yaml.load(f, Loader=Loader)
    try:
        with open(args.observed) as f:
            observed = json.load(f)
    except FileNotFoundError:
        print(f"iam: {args.observed} is missing: run cargo test -p integration-tests --test integration iam:: first",
              file=sys.stderr)
        sys.exit(1)
    problems = list(findings(template, observed))
    for p in problems:
        print(f"iam: {p}", file=sys.stderr)
    if problems:
        sys.exit(1)
    if not args.quiet:
        for name, resource, seen, allowed in table(template, observed):
            extra = f"   (+ outside the handlers: {', '.join(allowed)})" if allowed else ""
            print(f"  {name:24} {resource:26} {', '.join(seen) or '-'}{extra}")
    print(f"iam: {args.template}: each role grants exactly the actions its function's handlers made in "
          f"tests/tests/iam.rs ({args.observed}), and those made outside them "
          f"({len(ALLOWED_UNOBSERVED)} listed reasons)")


if __name__ == "__main__":
    main()
