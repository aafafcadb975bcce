#!/usr/bin/env python3
"""docs/openapi.yaml against infra/template.yaml: the documented operations are exactly the HTTP
API's routes (`$default`, the 404 fallback, aside), and each operation's `x-lambda-function` is the
function its route's integration invokes. Exits non-zero on any difference.
Usage: check_openapi.py [template] [openapi]"""

import os
import sys

import yaml

from check_template import ROOT, Loader, Tagged

METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def ref_name(value):
    """The resource an intrinsic names: !Ref X, !GetAtt X.Arn, !GetAtt [X, Arn], !Sub '...${X}'."""
    if not isinstance(value, Tagged):
        return None
    v = value.value
    if value.tag == "!Sub" and isinstance(v, str) and "${" in v:
        return v.split("${", 1)[1].split("}", 1)[0].split(".")[0]
    if isinstance(v, list):
        return v[0]
    return v.split(".")[0] if isinstance(v, str) else None


def function_name(resource):
    """`registration` for FunctionName: !Sub '${AWS::StackName}-registration'."""
    name = resource["Properties"]["FunctionName"]
    name = name.value if isinstance(name, Tagged) else name
    return name.replace("${AWS::StackName}-", "")


def routes(template):
    """{(method, path): function} of every route but `$default`, or an error string per bad route."""
    resources = template["Resources"]
    found, problems = {}, []
    for name, r in resources.items():
        if r["Type"] != "AWS::ApiGatewayV2::Route" or r["Properties"]["RouteKey"] == "$default":
            continue
        method, path = r["Properties"]["RouteKey"].split(" ", 1)
        integration = resources.get(ref_name(r["Properties"].get("Target")) or "", {})
        function = resources.get(ref_name(integration.get("Properties", {}).get("IntegrationUri")) or "", {})
        if (integration.get("Type"), function.get("Type")) != ("AWS::ApiGatewayV2::Integration", "AWS::Lambda::Function"):
            problems.append(f"route {name} ({method} {path}) does not target a Lambda integration")
            continue
        found[(method.upper(), path)] = function_name(function)
    return found, problems


def operations(openapi):
    return {
        (method.upper(), path): op.get("x-lambda-function")
        for path, item in openapi["paths"].items()
        for method, op in item.items()
        if method in METHODS
    }


def findings(template, openapi):
    served, problems = routes(template)
    yield from problems
    documented = operations(openapi)
    for key in sorted(documented.keys() - served.keys()):
        yield f"{' '.join(key)} is documented but is not a route of the template"
    for key in sorted(served.keys() - documented.keys()):
        yield f"{' '.join(key)} is a route of the template but is not documented"
    for key in sorted(served.keys() & documented.keys()):
        if served[key] != documented[key]:
            yield f"{' '.join(key)}: the template routes it to {served[key]}, x-lambda-function says {documented[key]}"


def main():
    template_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "infra", "template.yaml")
    openapi_path = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "docs", "openapi.yaml")
    with open(template_path) as f:
        template = yaml.load(f, Loader=Loader)
    with open(openapi_path) as f:
        openapi = yaml.safe_load(f)
    problems = list(findings(template, openapi))
    for p in problems:
        print(f"openapi vs template: {p}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print(f"openapi vs template: {len(operations(openapi))} operations, each a route to its function")


if __name__ == "__main__":
    main()
