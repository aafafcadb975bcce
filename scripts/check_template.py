#!/usr/bin/env python3
"""Least-privilege check of infra/template.yaml: every Lambda function has a role of its own, and no
role statement grants a wildcard action or a wildcard resource. Exits non-zero on any finding."""

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


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "infra", "template.yaml")
    with open(path) as f:
        template = yaml.load(f, Loader=Loader)
    problems = list(findings(template))
    for p in problems:
        print(f"least privilege: {p}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"least privilege: {path}: every function has its own role, no wildcard action or resource")


if __name__ == "__main__":
    main()
