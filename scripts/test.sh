#!/usr/bin/env bash
# make test: lint, unit tests, then the integration tests against the stack `make up` deployed.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"
"$ROOT/scripts/setup.sh" test
"$ROOT/scripts/lint.sh"
# The template check must be able to fail: a wildcard slipped into a copy of the template is caught.
bad="$(mktemp)"; trap 'rm -f "$bad"' EXIT
sed "s/'sqs:SendMessage'/'sqs:*'/" infra/template.yaml > "$bad"
if python scripts/check_template.py "$bad" 2>/dev/null; then
  echo "check_template.py missed a wildcard action" >&2
  exit 1
fi
# Nor a REST API route (ApiKind rest) sent to another function than the HTTP API's.
sed "/RestBalanceMethod:/,/Uri:/ s/PaymentRequestFunction/ConfirmationFunction/" infra/template.yaml > "$bad"
if python scripts/check_template.py "$bad" 2>/dev/null; then
  echo "check_template.py missed a REST route to another function" >&2
  exit 1
fi
# Nor a route the Rust router serves from another function than the template's.
sed "s/Route::Balance => payment_request::balance/Route::Balance => confirmation::balance/; /^pub async fn confirmation</,/^}/ s/Route::PendingPayments =>/Route::Balance => x, Route::PendingPayments =>/" \
  shared/api/src/router.rs > "$bad.rs"
if CHECK_ROUTER="$bad.rs" python scripts/check_template.py 2>/dev/null; then
  echo "check_template.py missed a route the router serves from another function" >&2
  exit 1
fi
rm -f "$bad.rs"
# The OpenAPI check must be able to fail too: a renamed route, and a route sent to another function.
for change in "s|'GET /v1/balance'|'GET /v1/balances'|" \
  "/BalanceRoute:/,/Target:/ s/PaymentRequestIntegration/ConfirmationIntegration/"; do
  sed "$change" infra/template.yaml > "$bad"
  if python scripts/check_openapi.py "$bad" 2>/dev/null; then
    echo "check_openapi.py missed: $change" >&2
    exit 1
  fi
done
log "deploy.py: knows every template parameter, refuses bootstraps of another architecture"
python scripts/check_deploy_params.py
# It must be able to fail: a parameter added to the template but not to deploy.py is caught.
sed 's/^Parameters:$/Parameters:\n  UnknownToDeploy: {Type: String, Default: x}/' infra/template.yaml > "$bad"
if python scripts/check_deploy_params.py --template "$bad" 2>/dev/null; then
  echo "check_deploy_params.py missed a template parameter deploy.py does not know" >&2
  exit 1
fi
log "checkov: security scan of the template (each skip in the template says why)"
checkov -f infra/template.yaml --framework cloudformation --quiet --compact --skip-download
# It must be able to fail (a file checkov cannot parse passes silently): the API without its
# access log is caught. The copy must end in .yaml for checkov to read it as CloudFormation.
sed '/AccessLogSettings:/,+2d' infra/template.yaml > "$LOCAL/checkov-selftest.yaml"
if checkov -f "$LOCAL/checkov-selftest.yaml" --framework cloudformation --quiet --compact --skip-download >/dev/null 2>&1; then
  echo "checkov missed an HTTP API stage without access logging" >&2
  exit 1
fi
rm -f "$LOCAL/checkov-selftest.yaml"
# checkov evaluates the conditions with the parameters' defaults: the REST API (ApiKind rest) is
# scanned in a copy that defaults to it.
sed '/^  ApiKind:$/,/Default:/ s/Default: http$/Default: rest/' infra/template.yaml > "$LOCAL/checkov-rest.yaml"
grep -q 'Default: rest$' "$LOCAL/checkov-rest.yaml" || { echo "no ApiKind default to change" >&2; exit 1; }
checkov -f "$LOCAL/checkov-rest.yaml" --framework cloudformation --quiet --compact --skip-download
rm -f "$LOCAL/checkov-rest.yaml"
log "unit tests"
cargo test --workspace --exclude integration-tests
log "make up applies a changed ISSUER_MASTER_KEY to the running stack"
python scripts/check_key_change.py
log "integration tests against $(grep '^API_URL=' "$LOCAL/stack.env")"
# Its iam module (tests/tests/iam.rs) writes the AWS actions each function's handlers made; no
# earlier run's record may stand in for it.
observed="${CARGO_TARGET_DIR:-target}/iam-observed.json"
rm -f "$observed"
# No backtraces: CI shows the tail of the output, where a failed assertion's message must be.
RUST_BACKTRACE=0 cargo test -p integration-tests --test integration -- --test-threads=8
log "IAM both ways: each role grants exactly what its function's handlers called in the tests"
python scripts/check_iam_used.py --observed "$observed"
# It must be able to fail both ways: a role without an action its code uses (registration's
# ConditionCheckItem), and a role with one its code never uses (a Scan for settlement).
for change in "/^  RegistrationRole:/,/^  RegistrationLogs:/ s/, 'dynamodb:ConditionCheckItem'//" \
  "/^  SettlementRole:/,/^  SettlementLogs:/ s/'dynamodb:GetItem', /'dynamodb:GetItem', 'dynamodb:Scan', /"; do
  sed "$change" infra/template.yaml > "$bad"
  if cmp -s infra/template.yaml "$bad" || python scripts/check_iam_used.py "$bad" --observed "$observed" --quiet 2>/dev/null; then
    echo "check_iam_used.py missed: $change" >&2
    exit 1
  fi
done
log "hostile-input sweep: 10000 malformed requests (scripts/sweep.py; docs/RELIABILITY.md)"
python scripts/sweep.py --count 10000
log "black-box client (Python, contract only)"
python tests/blackbox/contract_client.py
log "the REST API variant (ApiKind rest): stack twochan-rest, the black-box client against it"
scripts/test_rest.sh
log "IAM enforced: every function's calls checked against its role on a MiniStack of their own (AUTH=true)"
scripts/test_iam_enforced.sh
log "schemathesis: the API against docs/openapi.yaml"
python scripts/schemathesis.py
