#!/usr/bin/env python3
"""deploy.py against infra/template.yaml, without AWS:

1. Every template parameter is known to deploy.py: set from an option or environment variable
   (deploy.PARAMETERS) or computed on every run (deploy.DERIVED), and nothing else is listed there.
   A parameter deploy.py does not know would take its template default on create and could never
   be set by a deploy: this is the check that fails when the template gains one.
2. `deploy.py --help` names every parameter with its option and environment variable, and
   docs/OPERATIONS.md's parameter table has a row for every parameter.
3. deploy.py refuses bootstraps built for another machine than the architecture it deploys
   (`--check-artifacts-only` on fake ELF headers): x86_64 ones as arm64 and the reverse, a file
   that is not ELF, and with --endpoint-for-functions (the local stack) any but this host's.
4. deploy.py stops after a deploy that completed without all the template declares, as
   LocalStack's free edition completes one (a stub CloudFormation client): the HTTP API's
   resources skipped and its outputs `unknown`, a resource failed or unsupported, an output
   missing; and passes a stack that has everything (ApiKind http and rest).

Usage: check_deploy_params.py [--template PATH] [--docs PATH]. Exits non-zero on any finding."""

import argparse
import contextlib
import io
import os
import re
import subprocess
import sys
import tempfile

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import deploy  # noqa: E402

DEPLOY = os.path.join(deploy.ROOT, "scripts", "deploy.py")
MACHINE = {"x86_64": 0x3E, "arm64": 0xB7}


def parameter_findings(template_params, docs_text):
    settable = [p.name for p in deploy.PARAMETERS]
    known = set(settable) | set(deploy.DERIVED)
    for name in template_params:
        if name not in known:
            yield (f"template parameter {name} is unknown to deploy.py: add it to PARAMETERS (with an option and "
                   f"an environment variable) or to DERIVED, and to docs/OPERATIONS.md's parameter table")
    for name in sorted(known - set(template_params)):
        yield f"deploy.py lists {name}, which the template does not have"
    for name in set(settable) & set(deploy.DERIVED):
        yield f"{name} is both settable and derived in deploy.py"
    for what, values in (("parameter", settable), ("option", [p.option for p in deploy.PARAMETERS]),
                         ("environment variable", [p.env for p in deploy.PARAMETERS if p.env])):
        for v in sorted({v for v in values if values.count(v) > 1}):
            yield f"deploy.py lists {what} {v} twice"
    help_text = deploy.parser(template_params).format_help()
    for p in deploy.PARAMETERS:
        for word in (p.name, p.option) + ((p.env,) if p.env else ()):
            if word not in help_text:
                yield f"deploy.py --help does not name {word} ({p.name})"
    for name in deploy.DERIVED:
        if name not in help_text:
            yield f"deploy.py --help does not name {name}"
    # The names in the first cell of the docs' table rows (a row may name several parameters).
    documented = set()
    for line in docs_text.splitlines():
        if line.startswith("| `"):
            documented |= set(re.findall(r"`([A-Za-z0-9]+)`", line.split("|")[1]))
    for name in template_params:
        if name not in documented:
            yield f"docs/OPERATIONS.md's parameter table has no row for `{name}`"


def fake_bootstraps(root, machines):
    """<root>/<function>/bootstrap: a 64-byte ELF header per function (or not ELF at all)."""
    for name, machine in zip(deploy.FUNCTIONS.values(), machines):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        if machine is None:
            header = b"#!/bin/sh\nexit 0\n".ljust(64, b"\0")
        else:
            header = b"\x7fELF\x02\x01\x01" + bytes(9) + (2).to_bytes(2, "little") + machine.to_bytes(2, "little")
            header = header.ljust(64, b"\0")
        with open(os.path.join(root, name, "bootstrap"), "wb") as f:
            f.write(header)


def check_artifacts(root, *options):
    env = {k: v for k, v in os.environ.items() if k != "ARCHITECTURE"}
    return subprocess.run([sys.executable, DEPLOY, "--check-artifacts-only", "--artifacts-dir", root, *options],
                          capture_output=True, text=True, env=env)


def architecture_findings():
    host = deploy.host_architecture()
    other = "arm64" if host == "x86_64" else "x86_64"
    n = len(deploy.FUNCTIONS)
    cases = [
        # (bootstraps' machines, options, accepted?, what)
        ([MACHINE["x86_64"]] * n, ["--architecture", "x86_64"], True, "x86_64 bootstraps as x86_64"),
        ([MACHINE["arm64"]] * n, ["--architecture", "arm64"], True, "arm64 bootstraps as arm64"),
        ([MACHINE["x86_64"]] * n, ["--architecture", "arm64"], False, "x86_64 bootstraps as arm64"),
        ([MACHINE["arm64"]] * n, ["--architecture", "x86_64"], False, "arm64 bootstraps as x86_64"),
        ([MACHINE["x86_64"]] * n, [], False, "x86_64 bootstraps with the template default (arm64)"),
        ([MACHINE["arm64"]] * (n - 1) + [MACHINE["x86_64"]], ["--architecture", "arm64"], False,
         "one x86_64 bootstrap among arm64 ones"),
        ([MACHINE["arm64"]] * (n - 1) + [None], ["--architecture", "arm64"], False, "a bootstrap that is not ELF"),
        ([0x28] * n, ["--architecture", "arm64"], False, "32-bit ARM (e_machine 0x28) bootstraps"),
        ([MACHINE[host]] * n, ["--endpoint-for-functions", "http://127.0.0.1:1"], True,
         f"this host's ({host}) bootstraps on the local stack"),
        ([MACHINE[other]] * n, ["--endpoint-for-functions", "http://127.0.0.1:1"], False,
         f"{other} bootstraps on the local stack of a {host} host"),
    ]
    for machines, options, accepted, what in cases:
        with tempfile.TemporaryDirectory() as root:
            fake_bootstraps(root, machines)
            r = check_artifacts(root, *options)
        if accepted and r.returncode != 0:
            yield f"deploy.py refused {what}: {r.stderr.strip()}"
        elif not accepted and r.returncode == 0:
            yield f"deploy.py accepted {what}"
        elif not accepted and "refusing to deploy" not in r.stderr:
            yield f"deploy.py failed on {what} without saying why: {r.stderr.strip()}"


class StubCloudFormation:
    """The CloudFormation calls deploy.deployed_findings makes, answering for one stack."""

    def __init__(self, params, resources, outputs, events=()):
        self.params, self.resources, self.outputs, self.events = params, resources, outputs, list(events)

    def describe_stacks(self, StackName):
        return {"Stacks": [{"StackName": StackName,
                            "Parameters": [{"ParameterKey": k, "ParameterValue": v} for k, v in self.params.items()],
                            "Outputs": [{"OutputKey": k, "OutputValue": v} for k, v in self.outputs.items()]}]}

    def get_paginator(self, operation):
        pages = {"list_stack_resources": [{"StackResourceSummaries": self.resources}],
                 "describe_stack_events": [{"StackEvents": self.events}]}[operation]
        return type("Paginator", (), {"paginate": lambda _self, **_: iter(pages)})()


def deployed_findings(template_path):
    with open(template_path) as f:
        template = yaml.load(f, Loader=deploy.Loader)
    conditions = template.get("Conditions", {})

    def stack(api_kind, skip=(), outputs=None, status=None, events=()):
        params = {n: str(d.get("Default", "")) for n, d in template["Parameters"].items()}
        params.update(ApiKind=api_kind, IssuerMasterKeyParameter="/stub/issuer-master-key")
        resources = [{"LogicalResourceId": n, "ResourceType": r["Type"], "PhysicalResourceId": f"{n}-stub",
                      "ResourceStatus": (status or {}).get(n, ("CREATE_COMPLETE", ""))[0],
                      "ResourceStatusReason": (status or {}).get(n, ("", ""))[1]}
                     for n, r in template["Resources"].items()
                     if r["Type"] not in skip and (r.get("Condition") is None or deploy.condition_holds(
                         conditions, params, conditions[r["Condition"]]))]
        values = {n: f"stub-{n}" for n in template.get("Outputs", {})}
        values.update(outputs or {})
        values = {k: v for k, v in values.items() if v is not None}
        return StubCloudFormation(params, resources, values, events), values

    start = {"LogicalResourceId": "stub", "ResourceType": "AWS::CloudFormation::Stack",
             "ResourceStatus": "CREATE_IN_PROGRESS", "ResourceStatusReason": "User Initiated"}
    cases = [
        # (what, the stack, what a finding must name; None: no finding)
        ("an HTTP API stack with everything", stack("http"), None),
        ("a REST API stack with everything", stack("rest"), None),
        ("LocalStack's free edition: the HTTP API skipped, its outputs unknown",
         stack("http", skip={"AWS::ApiGatewayV2::Api", "AWS::ApiGatewayV2::Stage", "AWS::ApiGatewayV2::Route",
                             "AWS::ApiGatewayV2::Integration"},
               outputs={"ApiId": "unknown", "ApiEndpoint": "unknown", "ApiUrl": "unknown"}),
         "HttpApi (AWS::ApiGatewayV2::Api) is not in the stack"),
        ("an output missing", stack("rest", outputs={"ApiUrl": None}), "output ApiUrl is missing"),
        ("a resource failed", stack("rest", status={"RestStage": ("CREATE_FAILED", "boom")}), "RestStage"),
        ("a resource deployed as a mock",
         stack("rest", status={"RestApi": ("CREATE_COMPLETE", "Resource type not supported, mocked")}), "RestApi"),
        ("an event of a skipped resource",
         stack("rest", events=[{"LogicalResourceId": "RestStage", "ResourceType": "AWS::ApiGateway::Stage",
                                "ResourceStatus": "CREATE_SKIPPED", "ResourceStatusReason": ""}, start]),
         "CREATE_SKIPPED"),
    ]
    for what, (cfn, outputs), named in cases:
        found = list(deploy.deployed_findings(cfn, "stub", template, outputs))
        if named is None and found:
            yield f"deploy.py finds fault with {what}: {found}"
        elif named is not None and not any(named in f for f in found):
            yield f"deploy.py misses {what} (no finding names {named!r}): {found}"
    # And it stops, saying what to do: the HTTP API needs a licence on LocalStack.
    cfn, outputs = cases[2][1]
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            deploy.check_deployed(cfn, "stub", outputs, "http")
        yield "deploy.py goes on after a stack without its HTTP API"
    except SystemExit as e:
        if "--api-kind rest" not in str(e.code):
            yield f"deploy.py stops without naming --api-kind rest: {e.code}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--template", default=deploy.TEMPLATE)
    ap.add_argument("--docs", default=os.path.join(deploy.ROOT, "docs", "OPERATIONS.md"))
    args = ap.parse_args()
    template_params = deploy.template_parameters(args.template)
    with open(args.docs) as f:
        docs_text = f.read()
    problems = list(parameter_findings(template_params, docs_text)) + list(architecture_findings()) \
        + list(deployed_findings(args.template))
    for p in problems:
        print(f"deploy.py: {p}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"deploy.py: knows all {len(template_params)} template parameters ({len(deploy.PARAMETERS)} settable, "
          f"{len(deploy.DERIVED)} derived), names them in --help and docs/OPERATIONS.md, refuses bootstraps "
          f"of another architecture, and stops after a deploy that skipped a resource or left an output unresolved")


if __name__ == "__main__":
    main()
