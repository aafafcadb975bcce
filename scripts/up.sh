#!/usr/bin/env bash
# make up: build, start MiniStack in the background, deploy infra/template.yaml, seed a merchant,
# and print the stack's coordinates.
set -euo pipefail
source "$(dirname "$0")/common.sh"
"$ROOT/scripts/build.sh"

export ISSUER_MASTER_KEY="${ISSUER_MASTER_KEY:-$DEV_ISSUER_MASTER_KEY}"
export PENDING_TTL_SECONDS="${PENDING_TTL_SECONDS:-120}"
# Locally a failing settlement message is retried every few seconds (AWS: 60 s, the default).
export SETTLEMENT_VISIBILITY_TIMEOUT="${SETTLEMENT_VISIBILITY_TIMEOUT:-5}"
# Webhooks locally: endpoints on 127.0.0.1 allowed, an undelivered event retried after 2, 4, 8,
# 16 s ..., 6 tries in all before the webhook dead-letter queue (AWS: 60 s doubling, 14 tries).
export ALLOW_LOOPBACK_WEBHOOKS="${ALLOW_LOOPBACK_WEBHOOKS:-1}"
export WEBHOOK_RETRY_BASE_SECONDS="${WEBHOOK_RETRY_BASE_SECONDS:-2}"
export WEBHOOK_MAX_RECEIVES="${WEBHOOK_MAX_RECEIVES:-6}"

healthy() { curl -fsS -o /dev/null "$ENDPOINT/_ministack/health" 2>/dev/null; }

if [[ -f "$LOCAL/ministack.pid" ]] && kill -0 "$(cat "$LOCAL/ministack.pid")" 2>/dev/null && healthy; then
  log "MiniStack already running on $ENDPOINT (pid $(cat "$LOCAL/ministack.pid"))"
else
  if healthy; then
    echo "something else already answers on $ENDPOINT; stop it or set MINISTACK_PORT" >&2
    exit 1
  fi
  log "starting MiniStack on $ENDPOINT"
  mkdir -p "$LOCAL/ministack-state" "$LOCAL/tmp"
  # A clean environment: MiniStack hands its own environment to every function process and
  # lets its AWS_ENDPOINT_URL override the template's, so nothing of ours may leak in.
  # setsid: MiniStack and the function processes it spawns form one process group, which
  # `make down` stops by its PID.
  env -i PATH="/usr/local/bin:/usr/bin:/bin" HOME="$HOME" LANG=C.UTF-8 \
    GATEWAY_PORT="$PORT" BIND_HOST=127.0.0.1 MINISTACK_HOST=localhost \
    PERSIST_STATE=1 STATE_DIR="$LOCAL/ministack-state" \
    S3_PERSIST=1 S3_DATA_DIR="$LOCAL/ministack-state/s3" TMPDIR="$LOCAL/tmp" \
    setsid "$VENV/bin/ministack" >"$LOCAL/ministack.log" 2>&1 < /dev/null &
  echo $! > "$LOCAL/ministack.pid"
  for _ in $(seq 1 100); do
    healthy && break
    kill -0 "$(cat "$LOCAL/ministack.pid")" 2>/dev/null || { cat "$LOCAL/ministack.log" >&2; exit 1; }
    sleep 0.2
  done
  healthy || { echo "MiniStack did not become healthy; see $LOCAL/ministack.log" >&2; exit 1; }
fi

log "deploying stack $STACK_NAME"
"$VENV/bin/python" "$ROOT/scripts/deploy.py" --stack "$STACK_NAME" --bucket "$CODE_BUCKET" \
  --endpoint-for-functions "$ENDPOINT" --api-url-base "$ENDPOINT" > "$LOCAL/deploy.env"
set -a; source "$LOCAL/deploy.env"; set +a

log "seeding the demo merchant"
tool merchant "${MERCHANT_ID:-demo-merchant}" > "$LOCAL/merchant.env"

{
  cat "$LOCAL/deploy.env"
  echo "AWS_ENDPOINT_URL=$ENDPOINT"
  cat "$LOCAL/merchant.env"
  echo "ISSUER_MASTER_KEY=$ISSUER_MASTER_KEY"
  echo "PENDING_TTL_SECONDS=$PENDING_TTL_SECONDS"
  echo "WEBHOOK_RETRY_BASE_SECONDS=$WEBHOOK_RETRY_BASE_SECONDS"
  echo "WEBHOOK_MAX_RECEIVES=$WEBHOOK_MAX_RECEIVES"
} > "$LOCAL/stack.env"
chmod 600 "$LOCAL/stack.env"
grep -E '^(API_URL|AWS_ENDPOINT_URL|MERCHANT_ID|MERCHANT_API_KEY)=' "$LOCAL/stack.env"
