#!/usr/bin/env python3
"""Least-privilege check of infra/template.yaml: every Lambda function has a role of its own, no
role statement grants a wildcard action or a wildcard resource, each role grants exactly the
actions on exactly the resources its function is listed with in EXPECTED (see grant_findings),
every queue a function is given the URL of is one its role may use, and only the functions given
the issuer key's parameter may read it (see key_findings). Also that the template deploys for
real (see deploy_findings): partition-free ARNs, retained data and logs, log retention, deletion
protection and architecture from parameters. And that the REST API (ApiKind rest) routes exactly as
the HTTP API does, each route to the same function (see route_findings). Exits non-zero on any
finding."""

import os
import re
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Tagged:
    """A CloudFormation intrinsic (!Ref, !GetAtt, !Sub, ...), kept as (tag, value)."""

    def __init__(self, tag, value):
        self.tag, self.value = tag, value

    def __repr__(self):
        return f"{self.tag} {self.value!r}"


def construct(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return Tagged("!" + suffix, value)


class Loader(yaml.SafeLoader):
    pass


Loader.add_multi_constructor("!", construct)


def strings(value):
    """Every literal string inside a value, intrinsics included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Tagged):
        yield from strings(value.value)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)


def statements(listed):
    """Policy statements, with both branches of a conditional (`!If [cond, stmt, stmt]`) checked."""
    for st in listed:
        if isinstance(st, Tagged) and st.tag == "!If":
            yield from statements(b for b in st.value[1:] if isinstance(b, dict))
        elif isinstance(st, dict):
            yield st


def role_of(function):
    """The logical name of a function's role: Role: !GetAtt X.Arn or !GetAtt [X, Arn]."""
    role = function["Properties"]["Role"]
    return role.value[0] if isinstance(role.value, list) else role.value.split(".")[0]


def resource_name(value):
    """A statement's resource by the template name it refers to: !GetAtt Table.Arn is `Table`,
    !Sub '${Table.Arn}/index/gsi1' is `Table/index/gsi1`, !Ref P (and a !Sub ending in ${P},
    such as the SSM parameter's ARN) is `P`. Anything else is kept as written."""
    if not isinstance(value, Tagged):
        return value if isinstance(value, str) else repr(value)
    v = value.value
    # The stack's own table, or the one named by TableName (a restored table): both branches must
    # name the same resource of one of the two tables, which is then checked as `Table...`.
    if value.tag == "!If" and isinstance(v, list) and len(v) == 3 and v[0] == "CreateTable":
        own, named = resource_name(v[1]), resource_name(v[2])
        if own.startswith("Table") and named == "TableName" + own[len("Table"):]:
            return own
        return repr(value)
    if value.tag == "!GetAtt":
        return v[0] if isinstance(v, list) else v.split(".")[0]
    if value.tag == "!Ref" and isinstance(v, str):
        return v
    if value.tag == "!Sub" and isinstance(v, str):
        refs = [m for m in re.finditer(r"\$\{([A-Za-z0-9]+)(?:\.[A-Za-z]+)?\}", v)]
        if refs:
            last = refs[-1]
            return last.group(1) + v[last.end():]
    return repr(value)


LOGS = {"logs:CreateLogStream", "logs:PutLogEvents"}
# The issuer key: the SSM parameter, and the customer-managed KMS key that may encrypt it.
KEY = {"IssuerMasterKeyParameter": {"ssm:GetParameter"}, "IssuerMasterKeyKmsKeyArn": {"kms:Decrypt"}}
SEND = {"sqs:SendMessage"}
# What an SQS event source mapping needs of its function's role (the Lambda service polls with it).
CONSUME = {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"}


def dynamodb(*actions):
    return {f"dynamodb:{a}" for a in actions}


# What each function's role grants, exactly: {resource: actions}. A change of the code that needs
# another action is a change here too, reviewed as such. DescribeTable is the init warm-up.
# scripts/check_iam_used.py checks the role against the calls the handlers make in the tests, so
# this list, the template and the code agree: ConditionCheckItem is a transaction's
# ConditionCheck, BatchGetItem and Query are listed on exactly what they read.
EXPECTED = {
    "RegistrationFunction": {
        **KEY,
        "RegistrationLogs": LOGS,
        # BatchGetItem: device and terminal in one read; ConditionCheckItem: the terminal's token
        # checked in the transaction that adds a device with it.
        "Table": dynamodb("GetItem", "BatchGetItem", "UpdateItem", "PutItem", "DeleteItem", "ConditionCheckItem",
                          "DescribeTable"),
        "WebhookQueue": SEND,
    },
    "PaymentRequestFunction": {
        **KEY,
        "PaymentRequestLogs": LOGS,
        # DeleteItem: DELETE /v1/webhook-endpoint. ConditionCheckItem: a device lock given back
        # after a failed payment write, if the payment is not stored after all.
        "Table": dynamodb("GetItem", "BatchGetItem", "PutItem", "UpdateItem", "DeleteItem", "ConditionCheckItem",
                          "Query", "DescribeTable"),
        "WebhookQueue": SEND,
    },
    "ConfirmationFunction": {
        **KEY,
        "ConfirmationLogs": LOGS,
        "Table": dynamodb("GetItem", "BatchGetItem", "UpdateItem", "DescribeTable"),
        # Only queried: a terminal's devices, for its pending payments.
        "Table/index/gsi1": dynamodb("Query"),
        "SettlementQueue": SEND,
        "WebhookQueue": SEND,
    },
    "SettlementFunction": {
        "SettlementLogs": LOGS,
        "Table": dynamodb("GetItem", "UpdateItem", "DescribeTable"),
        "SettlementQueue": CONSUME,
        "WebhookQueue": SEND,
    },
    "WebhooksFunction": {
        # The webhook secrets are sealed under a key derived from the issuer key.
        **KEY,
        "WebhooksLogs": LOGS,
        "Table": dynamodb("GetItem", "BatchGetItem", "DescribeTable"),
        # ChangeMessageVisibility: a failed try is made visible again after a growing delay.
        "WebhookQueue": CONSUME | {"sqs:ChangeMessageVisibility"},
    },
    "SweeperFunction": {
        "SweeperLogs": LOGS,
        # A Scan for payments stuck `confirmed` (no index knows payments by status), and their
        # settlement messages sent again. No warm-up DescribeTable: it runs on a schedule.
        "Table": dynamodb("Scan"),
        "SettlementQueue": SEND,
    },
}


def granted(role):
    """{resource: actions} a role grants, both branches of every conditional statement included."""
    grants = {}
    for policy in role["Properties"].get("Policies", []):
        for st in statements(policy["PolicyDocument"]["Statement"]):
            if st.get("Effect") != "Allow":
                continue
            resources = st.get("Resource", [])
            for resource in resources if isinstance(resources, list) else [resources]:
                grants.setdefault(resource_name(resource), set()).update(strings(st.get("Action", [])))
    return grants


def grant_findings(resources):
    """Each function's role grants what EXPECTED lists for it, no more and no less, and every
    queue whose URL a function is given (`!Ref Queue` in its environment) is one it may use."""
    functions = {n: r for n, r in resources.items() if r["Type"] == "AWS::Lambda::Function"}
    for name in sorted(EXPECTED.keys() - functions.keys()):
        yield f"{name} is listed in EXPECTED but is not in the template"
    for name, function in functions.items():
        if name not in EXPECTED:
            yield f"{name} has no entry in check_template.py's EXPECTED: list what its role may do"
            continue
        role_name = role_of(function)
        grants = granted(resources.get(role_name, {"Properties": {}}))
        expected = EXPECTED[name]
        for resource in sorted(grants.keys() | expected.keys()):
            extra = grants.get(resource, set()) - expected.get(resource, set())
            missing = expected.get(resource, set()) - grants.get(resource, set())
            for action in sorted(extra):
                yield f"{role_name} grants {action} on {resource}, more than {name} is expected to need"
            for action in sorted(missing):
                yield f"{role_name} lacks {action} on {resource}, which {name} is expected to need"
        env = (function["Properties"].get("Environment") or {}).get("Variables", {})
        for var, value in env.items():
            if isinstance(value, Tagged) and value.tag == "!Ref" and \
                    resources.get(value.value, {}).get("Type") == "AWS::SQS::Queue" and \
                    not any(a.startswith("sqs:") for a in grants.get(value.value, set())):
                yield f"{name} is given {var} but {role_name} grants nothing on {value.value}"


def findings(template):
    resources = template["Resources"]
    roles_used = {}
    for name, r in resources.items():
        if r["Type"] == "AWS::Lambda::Function":
            role = r["Properties"]["Role"]
            role_name = role.value[0] if isinstance(role.value, list) else role.value.split(".")[0]
            if role_name in roles_used:
                yield f"{name} shares role {role_name} with {roles_used[role_name]}"
            roles_used[role_name] = name
    for name, r in resources.items():
        if r["Type"] != "AWS::IAM::Role":
            continue
        if r["Properties"].get("ManagedPolicyArns"):
            yield f"{name} uses managed policies; list the actions instead"
        for policy in r["Properties"].get("Policies", []):
            for st in statements(policy["PolicyDocument"]["Statement"]):
                for action in strings(st.get("Action", [])):
                    if "*" in action:
                        yield f"{name}: wildcard action {action}"
                for resource in strings(st.get("Resource", [])):
                    if "*" in resource:
                        yield f"{name}: wildcard resource {resource}"
    if set(roles_used) != {n for n, r in resources.items() if r["Type"] == "AWS::IAM::Role"}:
        yield "a role is not used by exactly one function"
    yield from grant_findings(resources)
    yield from key_findings(resources)


KEY_ACTIONS = {"ssm:GetParameter", "kms:Decrypt"}


def key_findings(resources):
    """The issuer master key: exactly the functions that are given its parameter may read it (the
    SSM read and the KMS decrypt both), and each of them is also given the parameter's version,
    so that a new key value changes their configuration and reaches them on the next deploy."""
    for name, r in resources.items():
        if r["Type"] != "AWS::Lambda::Function":
            continue
        props = r["Properties"]
        env = (props.get("Environment") or {}).get("Variables", {})
        reads_key = "ISSUER_MASTER_KEY_PARAMETER" in env
        role = props["Role"]
        role_name = role.value[0] if isinstance(role.value, list) else role.value.split(".")[0]
        granted = set()
        for policy in resources[role_name]["Properties"].get("Policies", []):
            for st in statements(policy["PolicyDocument"]["Statement"]):
                granted |= set(strings(st.get("Action", []))) & KEY_ACTIONS
        if reads_key:
            for action in sorted(KEY_ACTIONS - granted):
                yield f"{name} is given ISSUER_MASTER_KEY_PARAMETER but {role_name} lacks {action}"
            if "ISSUER_MASTER_KEY_VERSION" not in env:
                yield f"{name} is given ISSUER_MASTER_KEY_PARAMETER without ISSUER_MASTER_KEY_VERSION: a new key would not reach its warm instances"
        else:
            for action in sorted(granted):
                yield f"{role_name} grants {action} but {name} does not read the issuer key"


# What a stack update or delete must keep: the ledger, the messages in flight, the logs.
RETAINED = {"AWS::DynamoDB::Table", "AWS::SQS::Queue", "AWS::Logs::LogGroup"}


def deploy_findings(template):
    """The template deploys for real: no ARN is tied to the `aws` partition, every log group
    keeps its lines LogRetentionDays, the table, queues and log groups survive a stack delete or
    replacement, the table's deletion protection follows TableDeletionProtection, and every
    function runs on the Architecture parameter (which deploy.py checks the bootstraps against)."""
    params = template.get("Parameters", {})
    for name in ("Architecture", "LogRetentionDays", "TableDeletionProtection"):
        if name not in params:
            yield f"the template has no {name} parameter"
    for name, r in template["Resources"].items():
        for value in strings(r):
            if "arn:aws:" in value:
                yield f"{name}: ARN with a fixed partition ({value}): use arn:${{AWS::Partition}}:"
        props = r.get("Properties", {})
        if r["Type"] in RETAINED:
            for policy in ("DeletionPolicy", "UpdateReplacePolicy"):
                if r.get(policy) != "Retain":
                    yield f"{name}: {policy} is {r.get(policy)!r}, not Retain"
        if r["Type"] == "AWS::Logs::LogGroup":
            retention = props.get("RetentionInDays")
            if not (isinstance(retention, Tagged) and retention.tag == "!Ref" and retention.value == "LogRetentionDays"):
                yield f"{name}: RetentionInDays is {retention!r}, not !Ref LogRetentionDays"
        if r["Type"] == "AWS::DynamoDB::Table":
            protection = props.get("DeletionProtectionEnabled")
            if not (isinstance(protection, Tagged) and protection.tag == "!If"
                    and protection.value[1:] == [True, False]
                    and template.get("Conditions", {}).get(protection.value[0]) is not None
                    and "TableDeletionProtection" in repr(template["Conditions"][protection.value[0]])):
                yield f"{name}: DeletionProtectionEnabled does not follow TableDeletionProtection"
        if r["Type"] == "AWS::Lambda::Function":
            archs = props.get("Architectures")
            if not (isinstance(archs, list) and len(archs) == 1 and isinstance(archs[0], Tagged)
                    and archs[0].tag == "!Ref" and archs[0].value == "Architecture"):
                yield f"{name}: Architectures is {archs!r}, not [!Ref Architecture]"


# The API comes in two kinds (the ApiKind parameter): an HTTP API (API Gateway v2) and a REST API
# (v1). Both must send every request to the same function.
FALLBACK = ("$default", "")


def _target(value):
    """The resource a !Ref, !GetAtt X.Y, !GetAtt [X, Y] or a !Sub's first ${X...} names."""
    if not isinstance(value, Tagged):
        return None
    v = value.value
    if value.tag == "!Sub" and isinstance(v, str):
        m = re.search(r"\$\{([A-Za-z0-9]+)", v)
        return m.group(1) if m else None
    if isinstance(v, list):
        return v[0]
    return v.split(".")[0] if isinstance(v, str) else None


def http_routes(resources):
    """{(METHOD, path): function} of the HTTP API's routes, `$default` as FALLBACK; and findings."""
    routes, problems = {}, []
    for name, r in resources.items():
        if r["Type"] != "AWS::ApiGatewayV2::Route":
            continue
        props = r["Properties"]
        integration = resources.get(_target(props.get("Target")) or "", {})
        function = _target(integration.get("Properties", {}).get("IntegrationUri"))
        if integration.get("Type") != "AWS::ApiGatewayV2::Integration" or \
                resources.get(function or "", {}).get("Type") != "AWS::Lambda::Function":
            problems.append(f"route {name} does not target a Lambda integration")
            continue
        key = props["RouteKey"]
        routes[FALLBACK if key == "$default" else tuple(key.split(" ", 1))] = function
    return routes, problems


def rest_path(resources, ref, seen=()):
    """The path of a REST API resource (`/` for the API's RootResourceId), or None."""
    if isinstance(ref, Tagged) and ref.tag == "!GetAtt" and "RootResourceId" in repr(ref.value):
        return "/"
    name = _target(ref)
    r = resources.get(name or "", {})
    if r.get("Type") != "AWS::ApiGateway::Resource" or name in seen:
        return None
    parent = rest_path(resources, r["Properties"].get("ParentId"), seen + (name,))
    return None if parent is None else parent.rstrip("/") + "/" + r["Properties"]["PathPart"]


def rest_routes(resources):
    """{(METHOD, path): function} of the REST API's methods, ANY on `/` and on `/{proxy+}` (the
    HTTP API's `$default`) as FALLBACK; and findings: a method that is no AWS_PROXY to a function,
    ANY or a greedy path anywhere else (either would take requests from another route's function),
    or a fallback the two methods do not agree on."""
    routes, problems, fallback = {}, [], {}
    for name, r in resources.items():
        if r["Type"] != "AWS::ApiGateway::Method":
            continue
        props = r["Properties"]
        integration = props.get("Integration") or {}
        m = re.search(r"\$\{([A-Za-z0-9]+)\.Arn\}/invocations$", str(getattr(integration.get("Uri"), "value", "")))
        function = m.group(1) if m else None
        path = rest_path(resources, props.get("ResourceId"))
        method = props.get("HttpMethod")
        if integration.get("Type") != "AWS_PROXY" or \
                resources.get(function or "", {}).get("Type") != "AWS::Lambda::Function":
            problems.append(f"REST method {name} is not an AWS_PROXY integration of a Lambda function")
        elif path is None:
            problems.append(f"REST method {name} is not on a resource of the API")
        elif method == "ANY" or "+}" in path:
            if (method, path) in (("ANY", "/"), ("ANY", "/{proxy+}")):
                fallback[path] = function
            else:
                problems.append(f"REST method {name} ({method} {path}): ANY and greedy paths only as the fallback "
                                f"(ANY / and ANY /{{proxy+}}), or they answer for another route's function")
        else:
            routes[(method, path)] = function
    if set(fallback) != {"/", "/{proxy+}"} or len(set(fallback.values())) != 1:
        problems.append(f"the REST API's fallback must be ANY / and ANY /{{proxy+}} to one function, not {fallback}")
    elif fallback:
        routes[FALLBACK] = fallback["/"]
    return routes, problems


# CHECK_ROUTER: another copy of the router, to show the check can fail (scripts/test.sh).
ROUTER = os.environ.get("CHECK_ROUTER") or os.path.join(ROOT, "shared", "api", "src", "router.rs")
ENTRY_POINTS = {"registration": "RegistrationFunction", "payment_request": "PaymentRequestFunction",
                "confirmation": "ConfirmationFunction"}


def router_routes(path=ROUTER):
    """{(METHOD, path with {} for each parameter): function} as the Rust router serves them: the
    patterns of `Route::of`, and the function whose entry point (`routes::registration`, ...)
    dispatches each variant."""
    with open(path) as f:
        src = f.read()
    variant_route = {}
    for m in re.finditer(r'\("([A-Z]+)", \[([^\]]*)\]\) => Route::(\w+)', src):
        segs = [x.strip() for x in m.group(2).split(",") if x.strip()]
        path_ = "/v1/" + "/".join(x.strip('"') if x.startswith('"') else "{}" for x in segs)
        variant_route[m.group(3)] = (m.group(1), path_)
    routes = {}
    for m in re.finditer(r"pub async fn (\w+)<.*?\n}\n", src, re.S):
        function = ENTRY_POINTS.get(m.group(1))
        for variant in re.findall(r"Route::(\w+)(?:\(\w+\))? =>", m.group(0)) if function else []:
            if variant in variant_route:
                routes[variant_route[variant]] = function
    return routes


def router_findings(template):
    """The Rust router serves exactly the template's routes, each from the same function."""
    http, _ = http_routes(template["Resources"])
    deployed = {(k[0], re.sub(r"\{[^}]+\}", "{}", k[1])): f for k, f in http.items() if k != FALLBACK}
    served = router_routes()
    for key in sorted(deployed.keys() - served.keys()):
        yield f"{' '.join(key)} is a route of the template that the Rust router does not serve"
    for key in sorted(served.keys() - deployed.keys()):
        yield f"{' '.join(key)} is served by the Rust router but is no route of the template"
    for key in sorted(deployed.keys() & served.keys()):
        if deployed[key] != served[key]:
            yield f"{' '.join(key)}: the template sends it to {deployed[key]}, the router serves it from {served[key]}"


def route_findings(template):
    """The REST API (ApiKind rest) serves exactly the HTTP API's routes, each with the same
    function; every API resource belongs to its kind (Condition IsHttpApi or IsRestApi); the REST
    deployment comes after every method (it snapshots them); and each function a route reaches
    lets API Gateway invoke it, from the API of either kind; every HTTP API route is throttled on
    its own."""
    resources = template["Resources"]
    http, problems = http_routes(resources)
    rest, rest_problems = rest_routes(resources)
    yield from problems + rest_problems
    show = lambda key: "$default" if key == FALLBACK else " ".join(key)  # noqa: E731
    for key in sorted(http.keys() - rest.keys()):
        yield f"{show(key)} is a route of the HTTP API but not of the REST API"
    for key in sorted(rest.keys() - http.keys()):
        yield f"{show(key)} is a route of the REST API but not of the HTTP API"
    for key in sorted(http.keys() & rest.keys()):
        if http[key] != rest[key]:
            yield f"{show(key)}: the HTTP API sends it to {http[key]}, the REST API to {rest[key]}"
    for name, r in resources.items():
        kind = r["Type"].split("::")[1] if r["Type"].startswith("AWS::ApiGateway") else None
        want = {"ApiGatewayV2": "IsHttpApi", "ApiGateway": "IsRestApi"}.get(kind)
        if want and r.get("Condition") != want:
            yield f"{name} ({r['Type']}) lacks Condition: {want}"
    methods = {n for n, r in resources.items() if r["Type"] == "AWS::ApiGateway::Method"}
    for name, r in resources.items():
        if r["Type"] == "AWS::ApiGateway::Deployment":
            depends = r.get("DependsOn", [])
            for m in sorted(methods - set([depends] if isinstance(depends, str) else depends)):
                yield f"{name} does not depend on {m}: the deployment could be taken without it"
    # Every HTTP API route has its own throttling (docs/OPERATIONS.md, "Throttling"), and the
    # stage names no route that does not exist.
    route_keys = {r["Properties"]["RouteKey"] for r in resources.values()
                  if r["Type"] == "AWS::ApiGatewayV2::Route"}
    for name, r in resources.items():
        if r["Type"] == "AWS::ApiGatewayV2::Stage":
            settings = set(r["Properties"].get("RouteSettings", {}))
            for key in sorted(route_keys - settings):
                yield f"{name}: route {key} has no RouteSettings (throttling of its own)"
            for key in sorted(settings - route_keys):
                yield f"{name}: RouteSettings name {key}, which is no route"
    for api, condition in (("HttpApi", "IsHttpApi"), ("RestApi", "IsRestApi")):
        allowed = {r["Properties"]["FunctionName"].value for r in resources.values()
                   if r["Type"] == "AWS::Lambda::Permission" and r.get("Condition") == condition
                   and r["Properties"].get("Principal") == "apigateway.amazonaws.com"
                   and isinstance(r["Properties"].get("FunctionName"), Tagged)
                   and f"${{{api}}}/" in str(getattr(r["Properties"].get("SourceArn"), "value", ""))}
        for function in sorted(set((http if api == "HttpApi" else rest).values()) - allowed):
            yield f"{function} is reached through {api} but no permission ({condition}) lets API Gateway invoke it"


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "infra", "template.yaml")
    with open(path) as f:
        template = yaml.load(f, Loader=Loader)
    problems = list(findings(template))
    for p in problems:
        print(f"least privilege: {p}", file=sys.stderr)
    deploy_problems = list(deploy_findings(template))
    for p in deploy_problems:
        print(f"deploy: {p}", file=sys.stderr)
    route_problems = list(route_findings(template)) + list(router_findings(template))
    for p in route_problems:
        print(f"routes: {p}", file=sys.stderr)
    if problems or deploy_problems or route_problems:
        sys.exit(1)
    readers = sorted(n.removesuffix("Function") for n, e in EXPECTED.items() if KEY.keys() <= e.keys())
    print(f"least privilege: {path}: every function has its own role, no wildcard action or resource, "
          f"each role grants exactly its function's listed actions, only the issuer key's readers "
          f"({', '.join(readers)}) may read it")
    print(f"deploy: {path}: ARNs use ${{AWS::Partition}}; table, queues and log groups are retained; log groups keep "
          f"LogRetentionDays; the table's deletion protection follows TableDeletionProtection; every function runs "
          f"on Architecture")
    routes, _ = http_routes(template["Resources"])
    print(f"routes: {path}: the REST API (ApiKind rest) serves the HTTP API's {len(routes) - 1} routes and its "
          f"$default (as ANY / and ANY /{{proxy+}}), each with the same function; the Rust router "
          f"(shared/api/src/router.rs) serves the same {len(router_routes())} routes from the same functions")


if __name__ == "__main__":
    main()
