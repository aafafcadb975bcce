#!/usr/bin/env python3
"""Deploys infra/template.yaml with the function zips built by `cargo lambda build`.

The same steps work against AWS, LocalStack and MiniStack: only the endpoint (AWS_ENDPOINT_URL,
read by boto3 itself) and the parameters differ. Prints the stack's coordinates as KEY=value lines.

With --endpoint-for-functions (an emulator) the webhook settings default to the local stack's:
loopback endpoints allowed, retries after 2 s doubling, 6 tries; otherwise to AWS's (no loopback,
60 s doubling, 14 tries). ALLOW_LOOPBACK_WEBHOOKS, WEBHOOK_RETRY_BASE_SECONDS and
WEBHOOK_MAX_RECEIVES in the environment override them.

Usage: deploy.py --stack NAME --bucket BUCKET [--key-parameter /ssm/name] [--architecture arm64]
                 [--endpoint-for-functions URL] [--api-url-base URL]
"""

import argparse
import hashlib
import io
import json
import os
import re
import sys
import time
import zipfile

import boto3
from botocore.exceptions import ClientError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUNCTIONS = {
    "Registration": "registration",
    "PaymentRequest": "payment-request",
    "Confirmation": "confirmation",
    "Settlement": "settlement",
    "Webhooks": "webhooks",
}


def zip_bootstrap(name):
    """A Lambda zip with the function's bootstrap at its root, reproducible for equal binaries."""
    path = os.path.join(ROOT, "target", "lambda", name, "bootstrap")
    if not os.path.isfile(path):
        sys.exit(f"{path} is missing: run cargo lambda build --release first")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        info = zipfile.ZipInfo("bootstrap", date_time=(1980, 1, 1, 0, 0, 0))
        info.external_attr = 0o755 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        with open(path, "rb") as f:
            z.writestr(info, f.read())
    return buf.getvalue()


def upload_code(s3, bucket):
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
        data = zip_bootstrap(name)
        # Content-addressed keys: a changed binary is a changed parameter, so an update redeploys it.
        key = f"functions/{name}/{hashlib.sha256(data).hexdigest()[:16]}.zip"
        s3.put_object(Bucket=bucket, Key=key, Body=data)
        keys[f"{logical}CodeKey"] = key
    return keys


def parameter_version(ssm, name):
    """The version SSM gave the parameter's current value (it counts every PutParameter). Read
    without decryption: the deployer needs ssm:GetParameter on it, not the key itself."""
    try:
        return str(ssm.get_parameter(Name=name, WithDecryption=False)["Parameter"]["Version"])
    except ClientError as e:
        sys.exit(f"reading the version of SSM parameter {name}: {e}")


def store_key(ssm, name, value):
    """Emulators: writes the key(s) to the SecureString, only when they differ from what it holds,
    so that its version (see parameter_version) changes exactly when the key does. Returns it."""
    try:
        current = ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]
        if current["Value"] == value:
            return str(current["Version"])
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") != "ParameterNotFound":
            raise
    return str(ssm.put_parameter(Name=name, Value=value, Type="SecureString", Overwrite=True)["Version"])


def deploy(cfn, stack, template, params):
    parameters = [{"ParameterKey": k, "ParameterValue": str(v)} for k, v in params.items()]
    try:
        cfn.describe_stacks(StackName=stack)
        exists = True
    except ClientError:
        exists = False
    caps = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"]
    if exists:
        try:
            cfn.update_stack(StackName=stack, TemplateBody=template, Parameters=parameters, Capabilities=caps)
        except ClientError as e:
            if "No updates are to be performed" not in str(e):
                raise
    else:
        cfn.create_stack(StackName=stack, TemplateBody=template, Parameters=parameters, Capabilities=caps)
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stack", required=True)
    ap.add_argument("--bucket", required=True)
    ap.add_argument("--endpoint-for-functions", default="", help="AWS_ENDPOINT_URL given to the functions (emulators)")
    ap.add_argument("--api-url-base", default="", help="emulators: base of the path-style execute-api URL")
    ap.add_argument("--architecture", default="x86_64")
    ap.add_argument(
        "--key-parameter",
        default="",
        help="an existing SSM SecureString holding the issuer master key(s) (AWS); "
        "without it, ISSUER_MASTER_KEY is stored in /<stack>/issuer-master-key first (emulators)",
    )
    args = ap.parse_args()

    session = boto3.session.Session()
    s3 = session.client("s3")
    cfn = session.client("cloudformation")

    # The key lives in SSM Parameter Store as a SecureString and the functions read it at init; it
    # never enters the template or the functions' environment. On an emulator we put it there.
    ssm = session.client("ssm")
    key_parameter = args.key_parameter
    if not key_parameter:
        master_key = os.environ.get("ISSUER_MASTER_KEY", "")
        if not re.fullmatch(r"[0-9a-fA-F]{64}(,[0-9a-fA-F]{64}){0,3}", master_key):
            sys.exit("ISSUER_MASTER_KEY must be 64 hex characters (up to 4, comma-separated), or pass --key-parameter")
        key_parameter = f"/{args.stack}/issuer-master-key"
        key_version = store_key(ssm, key_parameter, master_key)
    else:
        key_version = parameter_version(ssm, key_parameter)

    # Webhooks: the local stack retries fast and may send to 127.0.0.1; AWS keeps the template's
    # defaults (over 24 h of tries, public endpoints only).
    local = bool(args.endpoint_for_functions)
    allow_loopback = os.environ.get("ALLOW_LOOPBACK_WEBHOOKS") or ("1" if local else "0")
    if allow_loopback not in ("0", "1"):
        sys.exit("ALLOW_LOOPBACK_WEBHOOKS must be 0 or 1")
    if allow_loopback == "1" and not local:
        sys.exit("ALLOW_LOOPBACK_WEBHOOKS=1 is for emulators only (with --endpoint-for-functions)")

    params = upload_code(s3, args.bucket)
    params.update(
        CodeBucket=args.bucket,
        Architecture=args.architecture,
        IssuerMasterKeyParameter=key_parameter,
        # The functions read the key's value only at init, and its name never changes: its version
        # is what makes a new value a new configuration, so that it reaches every instance.
        IssuerMasterKeyVersion=key_version,
        PendingTtlSeconds=os.environ.get("PENDING_TTL_SECONDS") or "120",
        EndpointUrl=args.endpoint_for_functions,
        LogLevel=os.environ.get("LOG_LEVEL", "info"),
        SettlementVisibilityTimeout=os.environ.get("SETTLEMENT_VISIBILITY_TIMEOUT") or "60",
        AllowLoopbackWebhooks=allow_loopback,
        WebhookRetryBaseSeconds=os.environ.get("WEBHOOK_RETRY_BASE_SECONDS") or ("2" if local else "60"),
        WebhookMaxReceives=os.environ.get("WEBHOOK_MAX_RECEIVES") or ("6" if local else "14"),
    )
    # Optional parameters: given every time, or an update would put the template's defaults back.
    for env_name, param in [("ALARM_TOPIC_ARN", "AlarmTopicArn"), ("ISSUER_KEY_KMS_ARN", "IssuerMasterKeyKmsKeyArn")]:
        if os.environ.get(env_name):
            params[param] = os.environ[env_name]
    with open(os.path.join(ROOT, "infra", "template.yaml")) as f:
        template = f.read()
    outputs = deploy(cfn, args.stack, template, params)

    api_url = outputs["ApiEndpoint"]
    if args.api_url_base:
        # Emulators serve an HTTP API at <endpoint>/_aws/execute-api/<api id>, with no DNS needed.
        api_url = f"{args.api_url_base.rstrip('/')}/_aws/execute-api/{outputs['ApiId']}"
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
