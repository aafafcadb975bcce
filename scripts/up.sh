#!/usr/bin/env bash
# make up: build, start MiniStack in the background, deploy infra/template.yaml, seed a merchant,
# and print the stack's coordinates.
set -euo pipefail
source "$(dirname "$0")/common.sh"
# SKIP_BUILD=1: deploy the bootstraps already built (make test builds them first, and compiles the
# tests while the stack comes up; a second cargo would only wait for the first one's lock).
if [[ "${SKIP_BUILD:-0}" == 1 ]]; then
  [[ -x "$ROOT/target/lambda/merchant/bootstrap" ]] || { echo "SKIP_BUILD=1: nothing built yet" >&2; exit 1; }
  "$ROOT/scripts/setup.sh"
else
  "$ROOT/scripts/build.sh"
fi

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

# The conflict-faithful DynamoDB proxy (tools/src/conflict_proxy/): MiniStack never refuses a
# write because a transaction is in flight on its item, DynamoDB does. Every SDK call of the
# functions (and of the integration tests, through CONFLICT_PROXY_URL) goes through it; the
# emulator's own API Gateway and event-source polling do not need to. CONFLICTS=off: none.
proxy_pid="$LOCAL/conflict-proxy.pid"
proxy_args="$LOCAL/conflict-proxy.args"
proxy_bin="$ROOT/target/lambda/conflict-proxy/bootstrap"
proxy_healthy() { curl -fsS -o /dev/null "$PROXY_ENDPOINT/_conflicts/stats" 2>/dev/null; }
proxy_running() { [[ -f "$proxy_pid" ]] && kill -0 "$(cat "$proxy_pid")" 2>/dev/null; }
stop_proxy() {
  if proxy_running; then
    kill -TERM "$(cat "$proxy_pid")"
    for _ in $(seq 1 50); do proxy_running || break; sleep 0.1; done
  fi
  rm -f "$proxy_pid" "$proxy_args"
}
if [[ "$CONFLICTS" == "off" ]]; then
  stop_proxy
  functions_endpoint="$ENDPOINT"
  conflict_proxy_url=""
  log "conflict proxy off: the functions talk to MiniStack directly"
else
  want="$PORT $PROXY_PORT $CONFLICT_HOLD_MS $(sha256sum "$proxy_bin" | cut -d' ' -f1)"
  if proxy_running && proxy_healthy && [[ "$(cat "$proxy_args" 2>/dev/null)" == "$want" ]]; then
    log "conflict proxy already running on $PROXY_ENDPOINT (pid $(cat "$proxy_pid"))"
  else
    # Another build, hold or upstream, or a dead one: start afresh.
    stop_proxy
    if proxy_healthy; then
      echo "something else already answers on $PROXY_ENDPOINT; stop it or set PROXY_PORT" >&2
      exit 1
    fi
    log "starting the conflict proxy on $PROXY_ENDPOINT (transactions held $CONFLICT_HOLD_MS ms)"
    setsid "$proxy_bin" --listen "127.0.0.1:$PROXY_PORT" --upstream "$ENDPOINT" \
      --hold-ms "$CONFLICT_HOLD_MS" >>"$LOCAL/conflict-proxy.log" 2>&1 < /dev/null &
    echo $! > "$proxy_pid"
    echo "$want" > "$proxy_args"
    for _ in $(seq 1 50); do
      proxy_healthy && break
      proxy_running || { cat "$LOCAL/conflict-proxy.log" >&2; exit 1; }
      sleep 0.1
    done
    proxy_healthy || { echo "the conflict proxy did not start; see $LOCAL/conflict-proxy.log" >&2; exit 1; }
  fi
  functions_endpoint="$PROXY_ENDPOINT"
  conflict_proxy_url="$PROXY_ENDPOINT"
fi

log "deploying stack $STACK_NAME (functions' AWS endpoint $functions_endpoint)"
"$VENV/bin/python" "$ROOT/scripts/deploy.py" --stack "$STACK_NAME" --bucket "$CODE_BUCKET" \
  --endpoint-for-functions "$functions_endpoint" --api-url-base "$ENDPOINT" > "$LOCAL/deploy.env"
set -a; source "$LOCAL/deploy.env"; set +a

log "seeding the demo merchant"
tool merchant "${MERCHANT_ID:-demo-merchant}" > "$LOCAL/merchant.env"

{
  cat "$LOCAL/deploy.env"
  echo "AWS_ENDPOINT_URL=$ENDPOINT"
  echo "CONFLICT_PROXY_URL=$conflict_proxy_url"
  cat "$LOCAL/merchant.env"
  echo "ISSUER_MASTER_KEY=$ISSUER_MASTER_KEY"
  echo "PENDING_TTL_SECONDS=$PENDING_TTL_SECONDS"
  echo "WEBHOOK_RETRY_BASE_SECONDS=$WEBHOOK_RETRY_BASE_SECONDS"
  echo "WEBHOOK_MAX_RECEIVES=$WEBHOOK_MAX_RECEIVES"
} > "$LOCAL/stack.env"
chmod 600 "$LOCAL/stack.env"
grep -E '^(API_URL|AWS_ENDPOINT_URL|CONFLICT_PROXY_URL|MERCHANT_ID|MERCHANT_API_KEY)=' "$LOCAL/stack.env"
