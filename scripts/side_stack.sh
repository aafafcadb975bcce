#!/usr/bin/env bash
# scripts/side_stack.sh <stack> [http|rest]: deploys infra/template.yaml as another stack on the
# local cloud `make up` started (same MiniStack, bootstraps, conflict proxy and settings as the
# main stack, so that the two differ in their name, their resources and, with `rest`, their API
# kind), seeds its demo merchant, and writes its coordinates to .local/stack-<stack>.env, in the
# format of .local/stack.env. A second run updates the stack. The side stacks of make test: the
# REST API variant (scripts/test_rest.sh) and the hostile-input sweep's own table (its check is
# that no request changed a table, which only holds on a table nothing else writes to).
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"
side="${1:?usage: scripts/side_stack.sh <stack> [http|rest]}"
kind="${2:-http}"
[[ "$side" != "$STACK_NAME" ]] || { echo "$side is the main stack: choose another name" >&2; exit 1; }
[[ -f "$LOCAL/stack.env" ]] || { echo "$LOCAL/stack.env is missing: run make up first" >&2; exit 1; }
# A value of the main stack's coordinates (make up wrote them).
main() { sed -n "s/^$1=//p" "$LOCAL/stack.env" | tail -n 1; }
functions_endpoint="$(main CONFLICT_PROXY_URL)"
functions_endpoint="${functions_endpoint:-$ENDPOINT}"
out="$LOCAL/stack-$side.env"

log "deploying stack $side (ApiKind $kind; functions' AWS endpoint $functions_endpoint)"
ISSUER_MASTER_KEY="$(main ISSUER_MASTER_KEY)" \
  PENDING_TTL_SECONDS="$(main PENDING_TTL_SECONDS)" \
  SETTLEMENT_VISIBILITY_TIMEOUT="${SETTLEMENT_VISIBILITY_TIMEOUT:-5}" \
  WEBHOOK_RETRY_BASE_SECONDS="$(main WEBHOOK_RETRY_BASE_SECONDS)" \
  WEBHOOK_MAX_RECEIVES="$(main WEBHOOK_MAX_RECEIVES)" \
  python scripts/deploy.py --stack "$side" --bucket "$CODE_BUCKET" --api-kind "$kind" \
    --endpoint-for-functions "$functions_endpoint" --api-url-base "$ENDPOINT" > "$out.deploy"

log "seeding the demo merchant of $side"
TABLE_NAME="$(sed -n 's/^TABLE_NAME=//p' "$out.deploy")" tool merchant demo-merchant > "$out.merchant"
{
  cat "$out.deploy"
  echo "AWS_ENDPOINT_URL=$ENDPOINT"
  echo "CONFLICT_PROXY_URL=$(main CONFLICT_PROXY_URL)"
  cat "$out.merchant"
  echo "ISSUER_MASTER_KEY=$(main ISSUER_MASTER_KEY)"
  echo "PENDING_TTL_SECONDS=$(main PENDING_TTL_SECONDS)"
  echo "WEBHOOK_RETRY_BASE_SECONDS=$(main WEBHOOK_RETRY_BASE_SECONDS)"
  echo "WEBHOOK_MAX_RECEIVES=$(main WEBHOOK_MAX_RECEIVES)"
} > "$out"
chmod 600 "$out"
rm -f "$out.deploy" "$out.merchant"
grep '^API_URL=' "$out"
