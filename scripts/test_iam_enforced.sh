#!/usr/bin/env bash
# make test-iam, and a step of make test: the functions with IAM enforced. Starts a second MiniStack
# of its own with AUTH=true on 127.0.0.1:$IAM_PORT (4568; state in .local/iam-enforced/, nothing
# persisted), deploys infra/template.yaml there with the bootstraps `make up` built (the functions
# talk to that MiniStack directly, no conflict proxy), seeds a merchant, and drives through the
# deployed functions over HTTP every AWS operation of every function: the black-box client
# (tests/blackbox/contract_client.py: registration, payments, confirmation, settlement, refunds,
# webhooks delivered to a receiver on 127.0.0.1, a delivery retried), then
# `scripts/iam_enforced.py flow` (what the client does not do: a device registered again, a
# deregistration with a pending payment, a wrong auth code, a device lock given back, the
# sweeper invoked on a payment stuck `confirmed`). Under AUTH=true each function signs with
# credentials of its execution role and MiniStack checks each call against the role's policies.
# `scripts/iam_enforced.py check` then fails on any refused call, any function log line saying
# AccessDenied, and any action a role grants that its function never made (see there what
# MiniStack does not check). Last, it must be able to fail: the stack updated with RegistrationRole
# lacking dynamodb:ConditionCheckItem, the client fails and the check names the refusal.
# The MiniStack is stopped at the end, however the script ends; the main stack is not touched.
# IAM_TEMPLATE=<file> deploys another template (a changed copy: the run should then fail).
set -euo pipefail
main_port="${MINISTACK_PORT:-4566}"
IAM_PORT="${IAM_PORT:-4568}"
export MINISTACK_PORT="$IAM_PORT"
source "$(dirname "$0")/common.sh"
cd "$ROOT"
# MiniStack's root keys (test/test under AUTH=true): any other credentials in the shell would be
# refused there.
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
unset AWS_SESSION_TOKEN AWS_PROFILE
IAM_STACK="${IAM_STACK:-twochan-iam}"
IAM_TEMPLATE="${IAM_TEMPLATE:-$ROOT/infra/template.yaml}"
dir="$LOCAL/iam-enforced"
started=$SECONDS

if [[ "$IAM_PORT" == "$main_port" ]]; then
  echo "IAM_PORT ($IAM_PORT) is the main stack's port: choose another" >&2
  exit 1
fi
healthy() { curl -fsS -o /dev/null "$ENDPOINT/_ministack/health" 2>/dev/null; }
if healthy; then
  echo "something already answers on $ENDPOINT; stop it or set IAM_PORT" >&2
  exit 1
fi
rm -rf "$dir"
mkdir -p "$dir/tmp" "$dir/state"

pid=""
stop() {
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  # The function processes MiniStack started share its process group.
  [[ -n "$pid" ]] && kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$dir/ministack.pid"
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "starting MiniStack with IAM enforced (AUTH=true) on $ENDPOINT"
# A clean environment, as scripts/up.sh starts the main one; iam_enforced.py serve is MiniStack
# recording each decision on a function's call (and authorizing SQS batch calls as AWS does).
env -i PATH="/usr/local/bin:/usr/bin:/bin" HOME="$HOME" LANG=C.UTF-8 AUTH=true \
  GATEWAY_PORT="$PORT" BIND_HOST=127.0.0.1 MINISTACK_HOST=localhost \
  STATE_DIR="$dir/state" S3_DATA_DIR="$dir/state/s3" TMPDIR="$dir/tmp" \
  setsid "$VENV/bin/python" "$ROOT/scripts/iam_enforced.py" serve --decisions "$dir/decisions.jsonl" \
  >"$dir/ministack.log" 2>&1 < /dev/null &
pid=$!
echo "$pid" > "$dir/ministack.pid"
for _ in $(seq 1 100); do
  healthy && break
  kill -0 "$pid" 2>/dev/null || { cat "$dir/ministack.log" >&2; exit 1; }
  sleep 0.2
done
healthy || { echo "MiniStack did not become healthy; see $dir/ministack.log" >&2; exit 1; }
curl -fsS "$ENDPOINT/_ministack/health" | grep -q '"auth": "enabled"' \
  || { echo "MiniStack on $ENDPOINT does not report auth enabled" >&2; exit 1; }

deploy() {
  # The deployer signs with MiniStack's root keys (test/test), which every policy allows. The
  # sweeper's schedule is a day: the flow invokes it itself.
  ISSUER_MASTER_KEY="$DEV_ISSUER_MASTER_KEY" PENDING_TTL_SECONDS=120 SETTLEMENT_VISIBILITY_TIMEOUT=5 \
    WEBHOOK_RETRY_BASE_SECONDS=2 WEBHOOK_MAX_RECEIVES=6 \
    python scripts/deploy.py --stack "$IAM_STACK" --bucket "$CODE_BUCKET" --template "$1" \
      --endpoint-for-functions "$ENDPOINT" --api-url-base "$ENDPOINT" --sweep-schedule 'rate(1 day)'
}
log "deploying stack $IAM_STACK ($(basename "$IAM_TEMPLATE")); the functions' AWS endpoint is $ENDPOINT"
deploy "$IAM_TEMPLATE" > "$dir/deploy.env"
TABLE_NAME="$(sed -n 's/^TABLE_NAME=//p' "$dir/deploy.env")" tool merchant iam-merchant > "$dir/merchant.env"
{
  cat "$dir/deploy.env"
  echo "AWS_ENDPOINT_URL=$ENDPOINT"
  echo "STACK_NAME=$IAM_STACK"
  cat "$dir/merchant.env"
  echo "ISSUER_MASTER_KEY=$DEV_ISSUER_MASTER_KEY"
} > "$dir/stack.env"
chmod 600 "$dir/stack.env"
deployed=$SECONDS

check() {
  python scripts/iam_enforced.py check --env-file "$dir/stack.env" --decisions "$dir/decisions.jsonl" \
    --ministack-log "$dir/ministack.log" "$@"
}
log "black-box client against $IAM_STACK, IAM enforced"
if python tests/blackbox/contract_client.py --env-file "$dir/stack.env" && {
  log "the calls the black-box client does not make, and the sweeper"
  python scripts/iam_enforced.py flow --env-file "$dir/stack.env"
}; then
  log "every call checked against its function's role: none refused, every granted action made"
  check --template "$IAM_TEMPLATE"
else
  log "the flow failed: what MiniStack refused"
  check --template "$IAM_TEMPLATE" --denials-only || true
  exit 1
fi
flowed=$SECONDS

# It must be able to fail: RegistrationRole without dynamodb:ConditionCheckItem (a second device
# added with the terminal's token checks the token in its transaction) is refused, and named.
log "the same with RegistrationRole lacking dynamodb:ConditionCheckItem: must fail"
bad="$dir/template-without-conditioncheck.yaml"
sed "/^  RegistrationRole:/,/^  RegistrationLogs:/ s/, 'dynamodb:ConditionCheckItem'//" "$IAM_TEMPLATE" > "$bad"
cmp -s "$IAM_TEMPLATE" "$bad" && { echo "no dynamodb:ConditionCheckItem in RegistrationRole to remove" >&2; exit 1; }
deploy "$bad" > /dev/null
since_ms=$(( $(date +%s) * 1000 ))
if python tests/blackbox/contract_client.py --env-file "$dir/stack.env" --no-part2 \
    > "$dir/selftest-client.log" 2>&1; then
  echo "the black-box client passed with RegistrationRole lacking dynamodb:ConditionCheckItem" >&2
  exit 1
fi
if check --template "$bad" --since-ms "$since_ms" --denials-only > "$dir/selftest-check.log" 2>&1; then
  echo "the check found nothing refused with RegistrationRole lacking dynamodb:ConditionCheckItem" >&2
  exit 1
fi
refused="$(grep -m1 'RegistrationFunction: dynamodb:ConditionCheckItem' "$dir/selftest-check.log" || true)"
if [[ -z "$refused" ]]; then
  cat "$dir/selftest-check.log" >&2
  echo "the check did not name the refused action" >&2
  exit 1
fi
echo "  client: $(grep -m1 'FAIL' "$dir/selftest-client.log")"
echo "  check:  $refused"
log "IAM enforced: MiniStack up and $IAM_STACK deployed in $((deployed - started)) s, flow and check in" \
  "$((flowed - deployed)) s, the failing variant in $((SECONDS - flowed)) s; $((SECONDS - started)) s in all"
