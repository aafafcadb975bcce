#!/usr/bin/env python3
"""Least-privilege check of infra/template.yaml: every Lambda function has a role of its own, no
role statement grants a wildcard action or a wildcard resource, and only the functions given the
issuer key's parameter may read it (see key_findings). Exits non-zero on any finding."""

import os
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


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "infra", "template.yaml")
    with open(path) as f:
        template = yaml.load(f, Loader=Loader)
    problems = list(findings(template))
    for p in problems:
        print(f"least privilege: {p}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"least privilege: {path}: every function has its own role, no wildcard action or resource, "
          "only the issuer key's readers may read it")


if __name__ == "__main__":
    main()
