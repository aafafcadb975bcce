#!/usr/bin/env python3
"""The stack with IAM enforced: the helpers of scripts/test_iam_enforced.sh (make test-iam).

MiniStack started with AUTH=true gives each function temporary credentials of its execution role
and checks every call the function makes with them against the role's policies, as AWS does
(a transaction item by item, ConditionCheck as dynamodb:ConditionCheckItem, a Query on an index
on the index's ARN). Three subcommands:

  serve --decisions FILE
      Runs MiniStack (AUTH=true must be in the environment) in this process, with two changes:
      every decision on a call made with a function's role is appended to FILE (one JSON line:
      time, principal, action, resource, decision), and the SQS batch calls are authorized as AWS
      authorizes them. MiniStack 1.5.33 checks SendMessageBatch, DeleteMessageBatch and
      ChangeMessageVisibilityBatch as actions of their own; AWS has no such IAM actions, the
      single-message action covers its batch (Amazon SQS Developer Guide, "Amazon SQS batch
      actions": "You cannot set permissions explicitly for SendMessageBatch, DeleteMessageBatch,
      or ChangeMessageVisibilityBatch"). Without it the settlement function, which sends its
      events with SendMessageBatch under sqs:SendMessage as on AWS, would be refused.

  flow --env-file FILE
      The calls the black-box client (tests/blackbox/contract_client.py) does not make, over
      HTTP through the deployed functions, plus the sweeper: a device registered again to its
      terminal; a deregistration that cancels its device's pending payment; a wrong auth code; a
      replay that finds its device locked for its key by a request that died (the lock is set
      with the deployer's credentials) and gives the lock back (payment-request's
      ConditionCheckItem); a settled payment set back to `confirmed` long ago (the same way) and
      the sweeper invoked: it sends the settlement message again, the settlement function
      settles it again; then one more settlement message of it (sent the same way): the
      settlement function finds it settled and drops the message.

  check --env-file FILE --decisions FILE [--template T] [--since-ms MS] [--denials-only]
      Fails (exit 1, one line per finding) on any call of a function that MiniStack refused, on
      any line of a function's log group (read through the emulator's CloudWatch Logs API) or of
      MiniStack's log that says AccessDenied or "not authorized", and, unless --denials-only, on
      any action a role grants that its function never made under enforcement, except those
      MiniStack makes on the function's behalf without its role (NOT_CHECKED): the flow must
      cover every AWS operation of every function. Prints, per function, what was allowed.
"""

import argparse
import json
import os
import re
import sys
import threading
import time

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from check_iam_used import CONSUMED, allowance, consumed_queues  # noqa: E402
from check_template import ROOT, Loader, granted, role_of  # noqa: E402

# The batch calls, authorized by AWS as their single-message action.
AWS_BATCH_ACTIONS = {
    "sqs:SendMessageBatch": "sqs:SendMessage",
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
}

# Granted actions that MiniStack performs for a function without checking its role: the check
# cannot see them, so they cannot count against the flow. (action pattern, resource pattern, why)
NOT_CHECKED = [
    ("logs:*", "*Logs", "MiniStack writes a function's log lines to its log group itself"),
    ("sqs:ReceiveMessage", CONSUMED, "MiniStack's event source mapping polls the queue itself, with no role"),
    ("sqs:DeleteMessage", CONSUMED, "MiniStack's event source mapping deletes handled messages itself"),
    ("sqs:GetQueueAttributes", CONSUMED, "MiniStack's event source mapping reads the queue itself"),
    ("kms:Decrypt", "IssuerMasterKeyKmsKeyArn", "no customer managed key locally (the statement is not deployed)"),
]

DENIED_TEXT = re.compile(r"AccessDenied|not authorized", re.IGNORECASE)


# ---------------------------------------------------------------- serve


def serve(decisions_path):
    if os.environ.get("AUTH", "").lower() != "true":
        sys.exit("iam_enforced.py serve: AUTH=true must be set (it is MiniStack's switch for IAM enforcement)")
    from ministack.core import iam_actions, iam_evaluator
    from ministack.services import sts

    extract = iam_actions.extract_iam_action

    def extract_iam_action(*args, **kwargs):
        action = extract(*args, **kwargs)
        return AWS_BATCH_ACTIONS.get(action, action)

    enforce = iam_evaluator.enforce
    out = open(decisions_path, "a", buffering=1)
    lock = threading.Lock()

    def recording_enforce(access_key_id, iam_action, *args, **kwargs):
        result = enforce(access_key_id, iam_action, *args, **kwargs)
        # Temporary credentials: a function's execution role (the deployer signs with the root keys).
        session = sts._sessions.get(access_key_id or "")
        if session:
            resource = kwargs.get("resource_arn", args[2] if len(args) > 2 else "*")
            decision = "Allow" if result is None else (getattr(result, "decision", None) or type(result).__name__)
            line = json.dumps({"t": int(time.time() * 1000), "principal": session.get("Arn", ""),
                               "action": iam_action, "resource": resource, "decision": decision})
            with lock:
                out.write(line + "\n")
        return result

    # MiniStack imports both where it uses them, at each request: replacing the module's names is enough.
    iam_actions.extract_iam_action = extract_iam_action
    iam_evaluator.enforce = recording_enforce
    from ministack.app import main

    sys.argv = ["ministack"]
    main()


# ---------------------------------------------------------------- the stack


def read_env(path):
    env = {}
    with open(path) as f:
        for line in f:
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                env[k] = v
    return env


def stack_name_of(env):
    """The stack of the env file: STACK_NAME, else the start of its table's name (<stack>-Table-...)."""
    return env.get("STACK_NAME") or env["TABLE_NAME"].split("-Table-")[0]


def stack_names(cfn, stack):
    """{physical name: logical id} of the stack's tables, queues, roles and log groups."""
    names = {}
    for page in cfn.get_paginator("list_stack_resources").paginate(StackName=stack):
        for r in page["StackResourceSummaries"]:
            physical = r.get("PhysicalResourceId") or ""
            if r["ResourceType"] == "AWS::SQS::Queue":
                physical = physical.rstrip("/").rsplit("/", 1)[-1]
            names[physical] = r["LogicalResourceId"]
    return names


def logical_resource(arn, names, key_parameter):
    """A resource ARN by the template's names: Table, Table/index/gsi1, WebhookQueue, ..."""
    parts = arn.split(":", 5)
    if len(parts) < 6:
        return arn
    service, rest = parts[2], parts[5]
    if service == "dynamodb" and rest.startswith("table/"):
        table, _, more = rest[len("table/"):].partition("/")
        return names.get(table, table) + (f"/{more}" if more else "")
    if service == "sqs":
        return names.get(rest, rest)
    if service == "ssm" and rest == f"parameter{key_parameter}":
        return "IssuerMasterKeyParameter"
    if service == "logs" and rest.startswith("log-group:"):
        group = rest[len("log-group:"):].split(":")[0]
        return names.get(group, group)
    return arn


# ---------------------------------------------------------------- flow


def flow(env_file):
    sys.path.insert(0, os.path.join(ROOT, "tests", "blackbox"))
    import boto3
    import contract_client as bb

    def verify(what, ok, detail="", quiet=False):
        if not ok:
            sys.exit(f"iam flow: FAIL {what}\n  {detail}")
        if not quiet:
            print(f"iam flow: ok   {what}")

    def expect(what, answer, status, error=None, ok=None):
        got = bb.expect(what, answer, status, error, ok, quiet=True)
        verify(what, True)
        return got

    bb.check = verify  # bb.expect's, too
    bb.API, bb.MASTER, bb.MERCHANT_KEY = bb.load_stack(env_file)
    env = read_env(env_file)
    table, stack = env["TABLE_NAME"], stack_name_of(env)
    ddb, sqs = boto3.client("dynamodb"), boto3.client("sqs")
    run_id = os.urandom(6).hex()
    keys = (f"iam-{run_id}-{n}" for n in range(1000))
    now_ms = lambda: int(time.time() * 1000)  # noqa: E731

    def pay(code, key, amount=700):
        fields = {"unique_code": code, "beacon_proof": bb.beacon_proof(bb.device_key(bb.MASTER, code), code),
                  "amount": amount, "currency": "EUR", "pos_id": "iam-pos"}
        return bb.call("POST", "/v1/payments", fields, bb.MERCHANT_KEY, {"Idempotency-Key": key})

    def payment(pid):
        return bb.call("GET", f"/v1/payments/{pid}", bearer=bb.MERCHANT_KEY)[2]

    # Registration: a device registered again to its terminal (a new token), and a deregistration
    # that cancels the device's pending payment.
    code_e, phone_e = f"iam-e-{run_id}", f"iam-phone-e-{run_id}"
    expect("register E", bb.register(code_e, phone_e), 201)
    token_e = expect("register E again to its terminal: 200, a new token", bb.register(code_e, phone_e), 200,
                     ok=lambda b, h: b["terminal_id"] == phone_e)["terminal_token"]
    pending = expect("a payment on E", pay(code_e, next(keys)), 201)["payment_id"]
    expect("deregister E, which has a pending payment: 204",
           bb.call("DELETE", f"/v1/devices/{code_e}", bearer=token_e), 204)
    got = payment(pending)
    verify("E's payment canceled by the deregistration", got.get("status") == "canceled", got)

    # Confirmation: a wrong auth code.
    code_f, phone_f = f"iam-f-{run_id}", f"iam-phone-f-{run_id}"
    key_f = bb.device_key(bb.MASTER, code_f)
    token_f = expect("register F", bb.register(code_f, phone_f), 201)["terminal_token"]
    first_key = next(keys)
    first = expect("a payment on F", pay(code_f, first_key), 201)["payment_id"]
    expect("a wrong auth code: 422", bb.call("POST", f"/v1/payments/{first}/confirm",
                                             {"auth_code": "ab" * 32, "counter": "1"}, token_f),
           422, "invalid_auth_code")
    expect("cancel it", bb.call("POST", f"/v1/payments/{first}/cancel", bearer=bb.MERCHANT_KEY), 200)

    # A request of the first payment's key that died after locking F (another payment id in the
    # key's slot; the lock set with the deployer's credentials): the replay finds the lock, gives
    # it back on condition that its payment is not stored (payment-request's only
    # ConditionCheckItem), and answers the stored payment.
    device = {"pk": {"S": f"DEVICE#{code_f}"}, "sk": {"S": "DEVICE"}}
    dead = "pay_" + ulid_time(ulid_ms(first) + 1) + first[len("pay_") + 10:]
    ddb.update_item(TableName=table, Key=device,
                    UpdateExpression="SET pending_payment_id = :p, pending_expires_at = :e",
                    ExpressionAttributeValues={":p": {"S": dead}, ":e": {"N": str(now_ms() + 60_000)}})
    expect("a replay that finds F locked for its key by a dead request: the stored 201",
           pay(code_f, first_key), 201,
           ok=lambda b, h: b["payment_id"] == first and h.get("idempotent-replayed") == "true")
    item = ddb.get_item(TableName=table, Key=device, ConsistentRead=True)["Item"]
    verify("the dead request's lock given back", "pending_payment_id" not in item, item)

    # A payment settled, then set back to `confirmed` 10 minutes ago (the deployer's credentials):
    # the sweeper, invoked, sends its settlement message again, and the settlement function
    # settles it again.
    pid = expect("a payment on F", pay(code_f, next(keys), 800), 201)["payment_id"]
    p = payment(pid)
    message = bb.pay_message(pid, p["merchant_id"], 800, "EUR", p["challenge"], 1)
    expect("confirm it", bb.call("POST", f"/v1/payments/{pid}/confirm",
                                 {"auth_code": bb.mac(key_f, message), "counter": "1"}, token_f), 200)
    wait_for(lambda: payment(pid).get("status") == "settled", 20, f"{pid} settled")
    ddb.update_item(TableName=table, Key={"pk": {"S": f"PAYMENT#{pid[len('pay_') + 10:]}"}, "sk": {"S": "PAYMENT"}},
                    UpdateExpression="SET #s = :c, confirmed_at = :at REMOVE settled_at, credit_account, debit_account",
                    ConditionExpression="payment_id = :id AND #s = :settled",
                    ExpressionAttributeNames={"#s": "status"},
                    ExpressionAttributeValues={":c": {"S": "confirmed"}, ":settled": {"S": "settled"},
                                               ":id": {"S": pid}, ":at": {"N": str(now_ms() - 600_000)}})
    answer = boto3.client("lambda").invoke(FunctionName=f"{stack}-sweeper", Payload=b"{}")
    summary = json.loads(answer["Payload"].read() or b"null")
    verify("settled, set back to confirmed, the sweeper invoked: it sent its settlement message again",
          "FunctionError" not in answer and isinstance(summary, dict) and summary.get("reenqueued", 0) >= 1
          and summary.get("failed") == 0, f"{answer.get('FunctionError')} {summary}")
    wait_for(lambda: payment(pid).get("status") == "settled", 20, f"{pid} settled again")
    settled = payment(pid)
    verify("settled again by the settlement function", settled.get("status") == "settled", settled)

    # One more settlement message of it (another send, the deployer's credentials): the payment is
    # settled, so the settlement function's write fails its condition, it reads the payment to
    # learn why (settlement's only GetItem), and drops the message.
    sent = now_ms()
    again = {"payment_id": pid, "merchant_id": p["merchant_id"], "unique_code": code_f, "amount": 800,
             "currency": "EUR", "sent_at_ms": sent}
    sqs.send_message(QueueUrl=env["SETTLEMENT_QUEUE_URL"], MessageBody=json.dumps(again),
                     MessageGroupId=f"{p['merchant_id']}/EUR", MessageDeduplicationId=f"{pid}.{sent}")

    def drained():
        a = sqs.get_queue_attributes(QueueUrl=env["SETTLEMENT_QUEUE_URL"], AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return int(a["ApproximateNumberOfMessages"]) + int(a["ApproximateNumberOfMessagesNotVisible"]) == 0

    time.sleep(0.5)
    wait_for(drained, 20, "the repeated settlement message handled")
    verify("a repeated settlement message of the settled payment dropped, the payment unchanged",
          payment(pid) == settled, payment(pid))


CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def ulid_ms(payment_id):
    """The time part of a payment id's ULID (its first 10 characters), in ms."""
    return sum(CROCKFORD.index(c) << (5 * (9 - i)) for i, c in enumerate(payment_id[len("pay_"):][:10]))


def ulid_time(ms):
    return "".join(CROCKFORD[(ms >> (5 * (9 - i))) & 31] for i in range(10))


def wait_for(done, seconds, what):
    deadline = time.time() + seconds
    while not done():
        if time.time() > deadline:
            sys.exit(f"iam flow: FAIL {what} within {seconds} s")
        time.sleep(0.2)


# ---------------------------------------------------------------- check


def check(env_file, decisions_path, template_path, since_ms, denials_only, ministack_log):
    import boto3

    env = read_env(env_file)
    stack = stack_name_of(env)
    with open(template_path) as f:
        template = yaml.load(f, Loader=Loader)
    resources = template["Resources"]
    session = boto3.session.Session()
    cfn, logs = session.client("cloudformation"), session.client("logs")
    names = stack_names(cfn, stack)
    params = {p["ParameterKey"]: p.get("ParameterValue", "")
              for p in cfn.describe_stacks(StackName=stack)["Stacks"][0].get("Parameters", [])}
    functions = sorted(n for n, r in resources.items() if r["Type"] == "AWS::Lambda::Function")
    function_of_role = {role_of(resources[f]): f for f in functions}
    problems = []

    # What MiniStack decided on the functions' calls.
    allowed, denied, seen = {}, {}, 0
    with open(decisions_path) as f:
        for line in f:
            d = json.loads(line)
            if d["t"] < since_ms:
                continue
            seen += 1
            role = d["principal"].split(":assumed-role/", 1)[-1].split("/")[0]
            function = function_of_role.get(names.get(role, ""), role)
            resource = logical_resource(d["resource"], names, params.get("IssuerMasterKeyParameter", ""))
            into = allowed if d["decision"] == "Allow" else denied
            into.setdefault(function, {}).setdefault(resource, {}).setdefault(d["action"], 0)
            into[function][resource][d["action"]] += 1
    if not seen:
        problems.append(f"no call of a function was checked (is MiniStack enforcing? {decisions_path} is empty)")
    for function in sorted(denied):
        for resource in sorted(denied[function]):
            for action, n in sorted(denied[function][resource].items()):
                problems.append(f"{function}: {action} on {resource} refused {n}x (AccessDenied)")

    # The functions' own log lines, and MiniStack's log (event source mapping and init output).
    for group in sorted(n for n in names if n.startswith(f"/aws/lambda/{stack}-")):
        found = []
        for page in logs.get_paginator("filter_log_events").paginate(logGroupName=group, startTime=since_ms):
            found += [e["message"] for e in page["events"] if DENIED_TEXT.search(e["message"])]
        for message in found[:3]:
            problems.append(f"{group}: {message.strip()[:400]}")
        if len(found) > 3:
            problems.append(f"{group}: {len(found) - 3} more lines saying AccessDenied")
    if ministack_log and os.path.exists(ministack_log):
        with open(ministack_log, errors="replace") as f:
            lines = [line for line in logged_since(f, since_ms) if DENIED_TEXT.search(line)]
        if lines:
            problems.append(f"{ministack_log}: {len(lines)} lines saying AccessDenied, the first: "
                            f"{lines[0].strip()[:400]}")

    # Coverage: every action each role grants was made, under enforcement, by its function.
    if not denials_only:
        for function in functions:
            grants = granted(resources[role_of(resources[function])])
            consumed = consumed_queues(resources, function)
            made = allowed.get(function, {})
            for resource in sorted(grants):
                for action in sorted(grants[resource] - set(made.get(resource, {}))):
                    if allowance(action, resource, consumed, NOT_CHECKED) is None:
                        problems.append(f"{function}: {action} on {resource} is granted but was never made under "
                                        f"enforcement: extend the flow (scripts/iam_enforced.py) to make it")
            for resource in sorted(set(made) - set(grants)):
                problems.append(f"{function}: allowed {sorted(made[resource])} on {resource}, which its role does "
                                f"not name: a grant MiniStack reads more widely than AWS?")

    for function in functions:
        for resource, actions in sorted(allowed.get(function, {}).items()):
            print(f"  {function:24} {resource:26} " + ", ".join(f"{a} x{n}" for a, n in sorted(actions.items())))
    for p in problems:
        print(f"iam enforced: {p}", file=sys.stderr)
    if problems:
        sys.exit(1)
    total = sum(n for r in allowed.values() for a in r.values() for n in a.values())
    print(f"iam enforced: {total} calls of {len(allowed)} functions checked against their roles, all allowed"
          + ("" if denials_only else "; every granted action made (but those MiniStack makes without the role: "
             + "; ".join(f"{a} on {r}" for a, r, _ in NOT_CHECKED) + ")")
          + "; no function log line says AccessDenied")


def logged_since(lines, since_ms):
    """MiniStack's log lines from since_ms on: a line starting `YYYY-mm-dd HH:MM:SS` (its local
    time) dates the lines that follow it without one (a function's output)."""
    at = 0
    for line in lines:
        m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", line)
        if m:
            at = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) * 1000
        if at >= since_ms - 1000:
            yield line


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--decisions", required=True)
    f = sub.add_parser("flow")
    f.add_argument("--env-file", required=True)
    c = sub.add_parser("check")
    c.add_argument("--env-file", required=True)
    c.add_argument("--decisions", required=True)
    c.add_argument("--template", default=os.path.join(ROOT, "infra", "template.yaml"))
    c.add_argument("--since-ms", type=int, default=0, help="only decisions and log lines from then on")
    c.add_argument("--denials-only", action="store_true", help="refusals and log lines only, no coverage")
    c.add_argument("--ministack-log", help="MiniStack's own log, also searched")
    args = ap.parse_args()
    if args.command == "serve":
        serve(args.decisions)
    elif args.command == "flow":
        flow(args.env_file)
    else:
        check(args.env_file, args.decisions, args.template, args.since_ms, args.denials_only, args.ministack_log)


if __name__ == "__main__":
    main()
