#!/usr/bin/env python3
"""Deploys infra/template.yaml with the function bootstraps built by `cargo lambda build`.

The same steps work against AWS, LocalStack and MiniStack: only the endpoint (AWS_ENDPOINT_URL,
read by boto3 itself) and the parameters differ. Prints the stack's coordinates as KEY=value lines.

Every template parameter is set by an option, else by its environment variable, else (with
--endpoint-for-functions, the local stack) by the local stack's value; a parameter given none of
these keeps its previous value when the stack exists (UsePreviousValue) and gets the template's
default when it is created. A redeploy therefore never resets anything it was not told to change.
An option given an empty value ('') sets the parameter to empty: that is how an optional one is
cleared (e.g. --alarm-topic-arn ''); an empty environment variable counts as not set.

Before uploading anything it reads the ELF header of each bootstrap and refuses one built for
another machine than the Architecture being deployed (on the local stack: this host's).
"""

import argparse
import hashlib
import io
import os
import platform
import re
import sys
import time
import zipfile
from dataclasses import dataclass

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_template import Loader, Tagged  # noqa: E402  (the template's !Ref/!Sub tags)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATE = os.path.join(ROOT, "infra", "template.yaml")
FUNCTIONS = {
    "Registration": "registration",
    "PaymentRequest": "payment-request",
    "Confirmation": "confirmation",
    "Settlement": "settlement",
    "Webhooks": "webhooks",
    "Sweeper": "sweeper",
}

# ELF e_machine (bytes 18-19 of the header) of each Lambda architecture.
ELF_MACHINES = {0x3E: "x86_64", 0xB7: "arm64"}


def host_architecture():
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        return "x86_64"
    if machine in ("aarch64", "arm64"):
        return "arm64"
    sys.exit(f"this host's CPU ({machine}) is neither x86_64 nor arm64: pass --architecture")


@dataclass
class Param:
    """A template parameter deploy.py takes from an option or an environment variable."""

    name: str
    option: str
    env: str | None
    help: str
    local: object = None  # its value on the local stack (a string, or a function of nothing)

    @property
    def dest(self):
        return self.option.lstrip("-").replace("-", "_")


# Every template parameter is either here or in DERIVED (scripts/check_deploy_params.py checks
# it, the --help text and docs/OPERATIONS.md's table against the template).
PARAMETERS = [
    Param("CodeBucket", "--bucket", None,
          "S3 bucket for the function zips (created if missing); required when the stack is created"),
    Param("Architecture", "--architecture", "ARCHITECTURE",
          "arm64 or x86_64, as the bootstraps were built; checked against their ELF headers",
          local=host_architecture),
    Param("IssuerMasterKeyParameter", "--key-parameter", "ISSUER_MASTER_KEY_PARAMETER",
          "an existing SSM SecureString holding the issuer master key(s) (AWS). Without it and "
          "with ISSUER_MASTER_KEY set, that key is first stored in /<stack>/issuer-master-key "
          "(emulators); with neither, the stack's parameter is kept"),
    Param("IssuerMasterKeyKmsKeyArn", "--key-kms-arn", "ISSUER_KEY_KMS_ARN",
          "the customer managed KMS key encrypting that SecureString, if not aws/ssm"),
    Param("PendingTtlSeconds", "--pending-ttl-seconds", "PENDING_TTL_SECONDS",
          "lifetime of a pending payment, seconds"),
    Param("EndpointUrl", "--endpoint-for-functions", None,
          "AWS_ENDPOINT_URL given to the functions: an emulator whose functions run on this host "
          "(MiniStack). Also selects the local stack's values of the other parameters"),
    Param("SettlementVisibilityTimeout", "--settlement-visibility-timeout", "SETTLEMENT_VISIBILITY_TIMEOUT",
          "settlement queue visibility timeout, seconds (AWS 60, local stack 5 via scripts/up.sh)"),
    Param("TableName", "--table-name", "EXISTING_TABLE_NAME",
          "an existing table to use instead of the stack's own (a point-in-time restore); '' for the stack's own"),
    Param("SettlementMaxConcurrency", "--settlement-max-concurrency", "SETTLEMENT_MAX_CONCURRENCY",
          "most concurrent settlement batches (the event source's maximum concurrency, 2-1000)"),
    Param("SettlementBacklogAlarmSeconds", "--settlement-backlog-alarm-seconds", "SETTLEMENT_BACKLOG_ALARM_SECONDS",
          "age of the oldest settlement message above which SettlementQueueAgeAlarm fires, seconds"),
    Param("WebhookRetryBaseSeconds", "--webhook-retry-base-seconds", "WEBHOOK_RETRY_BASE_SECONDS",
          "seconds before the second try of a webhook event, doubling after", local="2"),
    Param("WebhookMaxReceives", "--webhook-max-receives", "WEBHOOK_MAX_RECEIVES",
          "tries of a webhook event before its dead-letter queue", local="6"),
    Param("AllowLoopbackWebhooks", "--allow-loopback-webhooks", "ALLOW_LOOPBACK_WEBHOOKS",
          "1 admits http://127.0.0.1 webhook endpoints: emulators only", local="1"),
    Param("StuckAfterSeconds", "--stuck-after-seconds", "STUCK_AFTER_SECONDS",
          "seconds a payment may stay confirmed before the sweeper sends its settlement message again"),
    Param("SweepSchedule", "--sweep-schedule", "SWEEP_SCHEDULE",
          "EventBridge schedule expression of the sweeper (AWS rate(5 minutes))", local="rate(1 minute)"),
    Param("AlarmTopicArn", "--alarm-topic-arn", "ALARM_TOPIC_ARN",
          "SNS topic the alarms notify; '' for none"),
    Param("LogLevel", "--log-level", "LOG_LEVEL", "RUST_LOG filter of the functions"),
    Param("LogRetentionDays", "--log-retention-days", "LOG_RETENTION_DAYS",
          "days the log groups keep their lines (a CloudWatch Logs retention value)"),
    Param("TableDeletionProtection", "--table-deletion-protection", "TABLE_DELETION_PROTECTION",
          "true or false: DynamoDB deletion protection of the table", local="false"),
    Param("ApiKind", "--api-kind", "API_KIND",
          "http (an HTTP API, API Gateway v2) or rest (a REST API, v1, the same routes: for LocalStack's "
          "free edition, which has no HTTP APIs); changing it replaces the API and its URL"),
]

# Parameters deploy.py computes on every run: no option, nothing kept from the last deploy.
DERIVED = {
    **{f"{logical}CodeKey": f"S3 key of the uploaded {name} zip (content-addressed)" for logical, name in FUNCTIONS.items()},
    "IssuerMasterKeyVersion": "the SSM version of IssuerMasterKeyParameter's value, read on every run",
    "IssuerMasterKey": "always empty: deploy.py always passes the key through SSM",
}


def template_parameters(path=TEMPLATE):
    with open(path) as f:
        return yaml.load(f, Loader=Loader).get("Parameters", {})


def parser(template_params=None):
    template_params = template_params if template_params is not None else template_parameters()
    rows = []
    for p in PARAMETERS:
        default = template_params.get(p.name, {}).get("Default")
        default = "(none)" if default is None else str(default) or "''"
        local = p.local if isinstance(p.local, str) else ("this host's" if p.local else "")
        rows.append(f"  {p.name:<28} {p.option + (' / ' + p.env if p.env else ''):<62} "
                    f"default {default:<7}{' local: ' + local if local else ''}".rstrip())
    for name, how in DERIVED.items():
        rows.append(f"  {name:<28} (set by deploy.py: {how})")
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="template parameter, option / environment variable, template default, local stack's value:\n"
               + "\n".join(rows))
    ap.add_argument("--stack", help="the CloudFormation stack to create or update (required unless --check-artifacts-only)")
    ap.add_argument("--template", default=TEMPLATE,
                    help="the CloudFormation template to deploy (default infra/template.yaml; a changed copy "
                         "for a test, such as scripts/test_iam_enforced.sh's role without an action)")
    ap.add_argument("--api-url-base", default="", help="emulators: base of the path-style execute-api URL printed as API_URL")
    ap.add_argument("--artifacts-dir", default=os.path.join(ROOT, "target", "lambda"),
                    help="where <function>/bootstrap are (default target/lambda)")
    ap.add_argument("--check-artifacts-only", action="store_true",
                    help="only check the bootstraps' ELF machine against the architecture (given, else this "
                         "host's with --endpoint-for-functions, else the template default); no AWS call")
    for p in PARAMETERS:
        env = f" [${p.env}]" if p.env else ""
        ap.add_argument(p.option, dest=p.dest, default=None, help=f"{p.name}: {p.help}{env}")
    return ap


def given_values(args, local):
    """{parameter: (value, where it came from)} for those given by an option, an environment
    variable or the local stack's values."""
    given = {}
    for p in PARAMETERS:
        value = getattr(args, p.dest)
        if value is not None:
            given[p.name] = (value, p.option)
        elif p.env and os.environ.get(p.env):
            given[p.name] = (os.environ[p.env], f"${p.env}")
        elif local and p.local is not None:
            given[p.name] = (p.local() if callable(p.local) else p.local, "the local stack's value")
    return given


def check_value(name, value, definition, source):
    """The template's constraints, so that a bad value stops us before anything is uploaded."""
    problem = None
    allowed = definition.get("AllowedValues")
    if allowed is not None and value not in [str(a) for a in allowed]:
        problem = f"must be one of {', '.join(str(a) for a in allowed)}"
    elif definition.get("Type") == "Number":
        try:
            number = float(value)
        except ValueError:
            problem = "must be a number"
        else:
            if "MinValue" in definition and number < float(definition["MinValue"]):
                problem = f"must be at least {definition['MinValue']}"
            elif "MaxValue" in definition and number > float(definition["MaxValue"]):
                problem = f"must be at most {definition['MaxValue']}"
    elif "AllowedPattern" in definition and not re.fullmatch(definition["AllowedPattern"], value):
        problem = f"must match {definition['AllowedPattern']}"
    if problem:
        sys.exit(f"{name} ({source}) is {value!r}: it {problem}")


def elf_architecture(data):
    """The Lambda architecture an ELF executable was built for, or a ValueError saying why none."""
    if data[:4] != b"\x7fELF":
        raise ValueError("is not an ELF executable")
    if len(data) < 20 or data[4] != 2 or data[5] != 1:
        raise ValueError("is not a 64-bit little-endian ELF executable")
    machine = int.from_bytes(data[18:20], "little")
    if machine not in ELF_MACHINES:
        raise ValueError(f"is built for ELF machine {machine:#x}, neither x86_64 (0x3e) nor aarch64 (0xb7)")
    return ELF_MACHINES[machine]


def read_bootstraps(artifacts_dir, architecture):
    """{function: bootstrap bytes}, or exits naming every bootstrap missing or built for another
    machine than `architecture`: Lambda would only fail at the first invocation."""
    found, problems = {}, []
    for name in FUNCTIONS.values():
        path = os.path.join(artifacts_dir, name, "bootstrap")
        if not os.path.isfile(path):
            problems.append(f"{path} is missing: build first (cargo lambda build --release)")
            continue
        with open(path, "rb") as f:
            data = f.read()
        try:
            built_for = elf_architecture(data)
        except ValueError as e:
            problems.append(f"{path} {e}")
            continue
        if built_for != architecture:
            problems.append(f"{path} is built for {built_for} (ELF e_machine "
                            f"{int.from_bytes(data[18:20], 'little'):#x}), not {architecture}")
        found[name] = data
    if problems:
        hint = ("cargo lambda build --release --arm64" if architecture == "arm64"
                else "cargo lambda build --release (x86_64)")
        sys.exit("refusing to deploy: Architecture is " + architecture + ", but\n  " + "\n  ".join(problems)
                 + f"\nrebuild for {architecture} ({hint}) or deploy the architecture they were built for (--architecture)")
    return found


def zip_bootstrap(data):
    """A Lambda zip with the bootstrap at its root, reproducible for equal binaries."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        info = zipfile.ZipInfo("bootstrap", date_time=(1980, 1, 1, 0, 0, 0))
        info.external_attr = 0o755 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        z.writestr(info, data)
    return buf.getvalue()


def upload_code(s3, bucket, bootstraps):
    from botocore.exceptions import ClientError

    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError:
        region = s3.meta.region_name
        if region == "us-east-1":
            s3.create_bucket(Bucket=bucket)
        else:
            s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    keys = {}
    for logical, name in FUNCTIONS.items():
        data = zip_bootstrap(bootstraps[name])
        # Content-addressed keys: a changed binary is a changed parameter, so an update redeploys it.
        key = f"functions/{name}/{hashlib.sha256(data).hexdigest()[:16]}.zip"
        s3.put_object(Bucket=bucket, Key=key, Body=data)
        keys[f"{logical}CodeKey"] = key
    return keys


def parameter_version(ssm, name):
    """The version SSM gave the parameter's current value (it counts every PutParameter). Read
    without decryption: the deployer needs ssm:GetParameter on it, not the key itself."""
    from botocore.exceptions import ClientError

    try:
        return str(ssm.get_parameter(Name=name, WithDecryption=False)["Parameter"]["Version"])
    except ClientError as e:
        sys.exit(f"reading the version of SSM parameter {name}: {e}")


def store_key(ssm, name, value):
    """Emulators: writes the key(s) to the SecureString, only when they differ from what it holds,
    so that its version (see parameter_version) changes exactly when the key does. Returns it."""
    from botocore.exceptions import ClientError

    try:
        current = ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]
        if current["Value"] == value:
            return str(current["Version"])
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") != "ParameterNotFound":
            raise
    return str(ssm.put_parameter(Name=name, Value=value, Type="SecureString", Overwrite=True)["Version"])


def existing_stack(cfn, stack):
    """{parameter: previous value} of the stack, or None when there is no such stack."""
    from botocore.exceptions import ClientError

    try:
        s = cfn.describe_stacks(StackName=stack)["Stacks"][0]
    except ClientError as e:
        if "does not exist" in str(e):
            return None
        raise
    return {p["ParameterKey"]: p.get("ParameterValue", "") for p in s.get("Parameters", [])}


def upload_template(s3, bucket, template):
    """The template as an object of the code bucket (content-addressed), and its URL: a request's
    TemplateBody holds at most 51,200 bytes, a TemplateURL's object 1 MB. Path-style on the S3
    client's own endpoint, which AWS and the emulators both serve."""
    data = template.encode()
    key = f"templates/{hashlib.sha256(data).hexdigest()[:16]}.yaml"
    s3.put_object(Bucket=bucket, Key=key, Body=data)
    return f"{s3.meta.endpoint_url.rstrip('/')}/{bucket}/{key}"


def deploy(cfn, stack, template_url, parameters, exists):
    from botocore.exceptions import ClientError

    caps = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"]
    if exists:
        try:
            cfn.update_stack(StackName=stack, TemplateURL=template_url, Parameters=parameters, Capabilities=caps)
        except ClientError as e:
            if "No updates are to be performed" not in str(e):
                raise
    else:
        cfn.create_stack(StackName=stack, TemplateURL=template_url, Parameters=parameters, Capabilities=caps)
    deadline = time.time() + 600
    while time.time() < deadline:
        s = cfn.describe_stacks(StackName=stack)["Stacks"][0]
        status = s["StackStatus"]
        if status.endswith("_COMPLETE") and "ROLLBACK" not in status:
            return {o["OutputKey"]: o["OutputValue"] for o in s.get("Outputs", [])}
        if status.endswith("FAILED") or "ROLLBACK" in status:
            events = cfn.describe_stack_events(StackName=stack)["StackEvents"][:10]
            for ev in events:
                print(ev.get("LogicalResourceId"), ev.get("ResourceStatus"), ev.get("ResourceStatusReason", ""), file=sys.stderr)
            sys.exit(f"stack {stack} ended in {status}")
        time.sleep(1)
    sys.exit(f"stack {stack} did not finish in 10 minutes")


# An output an emulator could not resolve: LocalStack answers `unknown` for an attribute of a
# resource it skipped (a type its edition lacks) instead of failing the stack.
UNRESOLVED = {"", "unknown", "none", "null", "undefined"}
DONE = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "IMPORT_COMPLETE"}
NOT_DEPLOYED = re.compile(r"not supported|unsupported|not implemented|skipp|mock", re.IGNORECASE)


def condition_holds(conditions, params, expr):
    """A template condition (Fn::Equals, Fn::Not, Fn::And, Fn::Or, Condition, a parameter's Ref)
    evaluated for the stack's parameter values."""
    if isinstance(expr, dict) and len(expr) == 1:
        (key, value), = expr.items()
        expr = Tagged("!" + key.removeprefix("Fn::"), value)
    if not isinstance(expr, Tagged):
        return expr
    tag, value = expr.tag, expr.value
    if tag == "!Ref":
        return params.get(value, "")
    if tag == "!Condition":
        return condition_holds(conditions, params, conditions[value])
    args = [condition_holds(conditions, params, v) for v in value]
    if tag == "!Equals":
        return str(args[0]) == str(args[1])
    if tag == "!Not":
        return not args[0]
    if tag == "!And":
        return all(args)
    if tag == "!Or":
        return any(args)
    raise ValueError(f"condition function {tag} is not understood by deploy.py")


def deployed_findings(cfn, stack, template, outputs):
    """What the template declares but the stack did not get: a resource whose condition holds but
    that is not in the stack, or not in a completed state, or that the engine reports as skipped
    or unsupported (in its status reason or in an event of the last operation), and an output that
    is missing or unresolved. LocalStack's CloudFormation skips the resource types its edition
    lacks (HTTP APIs without a licence) and still completes the stack."""
    s = cfn.describe_stacks(StackName=stack)["Stacks"][0]
    params = {p["ParameterKey"]: p.get("ParameterValue", "") for p in s.get("Parameters", [])}
    conditions = template.get("Conditions", {})

    def holds(name):
        return name is None or bool(condition_holds(conditions, params, conditions[name]))

    declared = {n: r["Type"] for n, r in template["Resources"].items() if holds(r.get("Condition"))}
    got = {}
    for page in cfn.get_paginator("list_stack_resources").paginate(StackName=stack):
        for r in page["StackResourceSummaries"]:
            got[r["LogicalResourceId"]] = r
    for name in sorted(declared.keys() - got.keys()):
        yield f"{name} ({declared[name]}) is not in the stack: skipped"
    for name in sorted(declared.keys() & got.keys()):
        r = got[name]
        status, reason = r.get("ResourceStatus", ""), r.get("ResourceStatusReason") or ""
        if status not in DONE or NOT_DEPLOYED.search(reason) or not r.get("PhysicalResourceId"):
            yield f"{name} ({declared[name]}) is {status}{': ' + reason if reason else ''}" + \
                  ("" if r.get("PhysicalResourceId") else " (no physical id)")
    # The events of the last operation, newest first, down to the stack's own start event.
    for page in cfn.get_paginator("describe_stack_events").paginate(StackName=stack):
        for ev in page["StackEvents"]:
            status, reason = ev.get("ResourceStatus", ""), ev.get("ResourceStatusReason") or ""
            if ev.get("LogicalResourceId") == stack and status.endswith("_IN_PROGRESS") \
                    and ev.get("ResourceType") == "AWS::CloudFormation::Stack" and "CLEANUP" not in status:
                break
            if (status.endswith("_SKIPPED") and status != "DELETE_SKIPPED") or NOT_DEPLOYED.search(reason):
                yield f"event: {ev.get('LogicalResourceId')} ({ev.get('ResourceType')}) {status}: {reason}"
        else:
            continue
        break
    for name, output in template.get("Outputs", {}).items():
        if not holds(output.get("Condition")):
            continue
        if name not in outputs:
            yield f"output {name} is missing"
        elif str(outputs[name]).strip().lower() in UNRESOLVED:
            yield f"output {name} is {outputs[name]!r}: unresolved"


def check_deployed(cfn, stack, outputs, api_kind, template_path=TEMPLATE):
    """Stops (exit 1) naming every finding of deployed_findings."""
    with open(template_path) as f:
        template = yaml.load(f, Loader=Loader)
    problems = list(deployed_findings(cfn, stack, template, outputs))
    if not problems:
        return
    for p in problems:
        print(f"  {p}", file=sys.stderr)
    hint = ""
    if api_kind == "http" and any("ApiGatewayV2" in p or p.startswith("output Api") for p in problems):
        hint = ("\nHTTP APIs (API Gateway v2) need a LocalStack licence: without one, deploy with --api-kind rest "
                "(docs/OPERATIONS.md, LocalStack)")
    sys.exit(f"stack {stack} completed, but without all the template declares ({len(problems)} "
             f"finding{'s' if len(problems) > 1 else ''} above): not deployed{hint}")


def main():
    # The template's parameters make the options' help: --template is read first.
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--template", default=TEMPLATE)
    template_params = template_parameters(early.parse_known_args()[0].template)
    args = parser(template_params).parse_args()
    local = bool(args.endpoint_for_functions)
    given = given_values(args, local)
    for name, (value, source) in given.items():
        check_value(name, value, template_params[name], source)

    if args.check_artifacts_only:
        architecture = given.get("Architecture", (template_params["Architecture"]["Default"],))[0]
        read_bootstraps(args.artifacts_dir, architecture)
        print(f"{args.artifacts_dir}: the {len(FUNCTIONS)} bootstraps are {architecture} ELF executables")
        return
    if not args.stack:
        sys.exit("--stack is required")

    import boto3

    session = boto3.session.Session()
    cfn = session.client("cloudformation")
    previous = existing_stack(cfn, args.stack)

    def effective(name):
        """What the stack will hold: given, else kept from the last deploy, else the default."""
        if name in given:
            return given[name][0]
        if previous is not None and name in previous:
            return previous[name]
        return str(template_params[name].get("Default", ""))

    if effective("AllowLoopbackWebhooks") == "1" and not local:
        sys.exit("AllowLoopbackWebhooks=1 (ALLOW_LOOPBACK_WEBHOOKS) is for emulators only (with --endpoint-for-functions)")
    bucket = effective("CodeBucket")
    if not bucket:
        sys.exit("--bucket is required when the stack is created")

    # Nothing is written anywhere before the bootstraps are known to match the architecture.
    architecture = effective("Architecture")
    bootstraps = read_bootstraps(args.artifacts_dir, architecture)

    # The key lives in SSM Parameter Store as a SecureString and the functions read it at init; it
    # never enters the template or the functions' environment. On an emulator we put it there.
    ssm = session.client("ssm")
    master_key = os.environ.get("ISSUER_MASTER_KEY", "")
    if "IssuerMasterKeyParameter" not in given and master_key:
        if not re.fullmatch(r"[0-9a-fA-F]{64}(,[0-9a-fA-F]{64}){0,3}", master_key):
            sys.exit("ISSUER_MASTER_KEY must be 64 hex characters (up to 4, comma-separated)")
        key_parameter = f"/{args.stack}/issuer-master-key"
        if previous and previous.get("IssuerMasterKeyParameter") not in ("", None, key_parameter):
            sys.exit(f"the stack reads its key from {previous['IssuerMasterKeyParameter']}: pass --key-parameter "
                     f"to keep or change that, or unset ISSUER_MASTER_KEY (it would switch to {key_parameter})")
        given["IssuerMasterKeyParameter"] = (key_parameter, "ISSUER_MASTER_KEY, stored in SSM")
        key_version = store_key(ssm, key_parameter, master_key)
    else:
        key_parameter = effective("IssuerMasterKeyParameter")
        if not key_parameter:
            sys.exit("pass --key-parameter (an SSM SecureString holding the issuer master key), "
                     "or ISSUER_MASTER_KEY on an emulator")
        key_version = parameter_version(ssm, key_parameter)

    values = {name: value for name, (value, _) in given.items()}
    s3 = session.client("s3")
    values.update(upload_code(s3, bucket, bootstraps))
    # The functions read the key's value only at init, and its name never changes: its version
    # is what makes a new value a new configuration, so that it reaches every instance.
    values.update(IssuerMasterKeyVersion=key_version, IssuerMasterKey="")
    parameters = [{"ParameterKey": k, "ParameterValue": str(v)} for k, v in values.items()]
    kept = [n for n in template_params if n not in values and previous is not None and n in previous]
    parameters += [{"ParameterKey": n, "UsePreviousValue": True} for n in kept]
    defaulted = [n for n in template_params if n not in values and n not in kept]
    print(f"deploying {args.stack} ({'update' if previous is not None else 'create'}, Architecture={architecture}); "
          f"kept: {', '.join(kept) or 'none'}; template defaults: {', '.join(defaulted) or 'none'}", file=sys.stderr)

    with open(args.template) as f:
        template_url = upload_template(s3, bucket, f.read())
    outputs = deploy(cfn, args.stack, template_url, parameters, previous is not None)
    check_deployed(cfn, args.stack, outputs, effective("ApiKind"), args.template)

    api_url = outputs["ApiUrl"]
    if args.api_url_base:
        # Emulators serve an API at <endpoint>/_aws/execute-api/<api id>/<stage>, with no DNS
        # needed; an HTTP API's $default stage has no path segment.
        api_url = f"{args.api_url_base.rstrip('/')}/_aws/execute-api/{outputs['ApiId']}"
        if outputs["ApiStage"] != "$default":
            api_url += f"/{outputs['ApiStage']}"
    print(f"API_URL={api_url}")
    print(f"TABLE_NAME={outputs['TableName']}")
    print(f"SETTLEMENT_QUEUE_URL={outputs['SettlementQueueUrl']}")
    print(f"SETTLEMENT_DLQ_URL={outputs['SettlementDeadLetterQueueUrl']}")
    print(f"WEBHOOK_QUEUE_URL={outputs['WebhookQueueUrl']}")
    print(f"WEBHOOK_DEAD_LETTER_QUEUE_URL={outputs['WebhookDeadLetterQueueUrl']}")
    # The same, named like SETTLEMENT_DLQ_URL.
    print(f"WEBHOOK_DLQ_URL={outputs['WebhookDeadLetterQueueUrl']}")


if __name__ == "__main__":
    main()
