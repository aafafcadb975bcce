#!/usr/bin/env bash
# make test-rest, and a step of make test: the API as a REST API (ApiKind rest, the variant for
# LocalStack's free edition, which has no HTTP APIs) on the local cloud `make up` started. Deploys
# the stack twochan-rest next to twochan (same MiniStack, bootstraps, conflict proxy and issuer
# key), seeds a merchant, writes the stack's coordinates to .local/stack-rest.env, and runs the
# black-box contract client against it. The stack stays up, as twochan does; a second run updates
# it. REST_STACK=<name> deploys another.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"
REST_STACK="${REST_STACK:-twochan-rest}"
[[ -f "$LOCAL/stack.env" ]] || { echo "$LOCAL/stack.env is missing: run make up first" >&2; exit 1; }
# A value of the main stack's coordinates (make up wrote them).
main() { sed -n "s/^$1=//p" "$LOCAL/stack.env" | tail -n 1; }
functions_endpoint="$(main CONFLICT_PROXY_URL)"
functions_endpoint="${functions_endpoint:-$ENDPOINT}"
started=$SECONDS

log "deploying stack $REST_STACK (ApiKind rest; functions' AWS endpoint $functions_endpoint)"
# The main stack's settings (scripts/up.sh), so that the two differ in the API only.
ISSUER_MASTER_KEY="$(main ISSUER_MASTER_KEY)" \
  PENDING_TTL_SECONDS="$(main PENDING_TTL_SECONDS)" \
  SETTLEMENT_VISIBILITY_TIMEOUT="${SETTLEMENT_VISIBILITY_TIMEOUT:-5}" \
  WEBHOOK_RETRY_BASE_SECONDS="$(main WEBHOOK_RETRY_BASE_SECONDS)" \
  WEBHOOK_MAX_RECEIVES="$(main WEBHOOK_MAX_RECEIVES)" \
  python scripts/deploy.py --stack "$REST_STACK" --bucket "$CODE_BUCKET" --api-kind rest \
    --endpoint-for-functions "$functions_endpoint" --api-url-base "$ENDPOINT" > "$LOCAL/deploy-rest.env"

log "seeding the demo merchant of $REST_STACK"
TABLE_NAME="$(sed -n 's/^TABLE_NAME=//p' "$LOCAL/deploy-rest.env")" \
  tool merchant "${REST_MERCHANT_ID:-demo-merchant}" > "$LOCAL/merchant-rest.env"
{
  cat "$LOCAL/deploy-rest.env"
  echo "AWS_ENDPOINT_URL=$ENDPOINT"
  echo "CONFLICT_PROXY_URL=$(main CONFLICT_PROXY_URL)"
  cat "$LOCAL/merchant-rest.env"
  echo "ISSUER_MASTER_KEY=$(main ISSUER_MASTER_KEY)"
  echo "PENDING_TTL_SECONDS=$(main PENDING_TTL_SECONDS)"
  echo "WEBHOOK_RETRY_BASE_SECONDS=$(main WEBHOOK_RETRY_BASE_SECONDS)"
  echo "WEBHOOK_MAX_RECEIVES=$(main WEBHOOK_MAX_RECEIVES)"
} > "$LOCAL/stack-rest.env"
chmod 600 "$LOCAL/stack-rest.env"
deployed=$SECONDS

log "black-box client against $REST_STACK ($(grep '^API_URL=' "$LOCAL/stack-rest.env"))"
python tests/blackbox/contract_client.py --env-file "$LOCAL/stack-rest.env"
log "$REST_STACK: deployed in $((deployed - started)) s, black-box client passed in $((SECONDS - deployed)) s"
