#!/usr/bin/env bash
# make watch: the edit-run loop. `cargo lambda watch` serves the four functions from source (debug
# builds, rebuilt and restarted on every edit) against the DynamoDB table and SQS queue of the stack
# `make up` deployed. Each function is built on its first invocation. In another shell:
#   cargo lambda invoke registration --data-file events/register-device.json
#   curl -i http://localhost:9000/lambda-url/payment-request/v1/balance
# Ctrl-C stops it. Extra arguments go to `cargo lambda watch`; WATCH_PORT (9000) and
# WATCH_ADDRESS (::1, loopback, where `cargo lambda invoke` looks; `::` opens every interface) choose where.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"

stack_env="$LOCAL/stack.env"
if [[ ! -f "$stack_env" ]]; then
  echo "no running stack ($stack_env is missing): run make up first" >&2
  exit 1
fi
value() { sed -n "s/^$1=//p" "$stack_env" | tail -n 1; }

# What the template gives the functions, with the emulator's values, plus the test credentials.
# A file rather than --env-var flags: the master key stays out of `ps`. Rewritten on every start.
watch_env="$LOCAL/watch.env"
(
  umask 077
  {
    for name in TABLE_NAME SETTLEMENT_QUEUE_URL ISSUER_MASTER_KEY PENDING_TTL_SECONDS AWS_ENDPOINT_URL; do
      v="$(value "$name")"
      [[ -n "$v" ]] || { echo "$name is missing from $stack_env: run make up again" >&2; exit 1; }
      echo "$name=$v"
    done
    echo "AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID"
    echo "AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY"
    echo "AWS_REGION=$AWS_REGION"
    echo "AWS_DEFAULT_REGION=$AWS_REGION"
    echo "RUST_LOG=${RUST_LOG:-info}"
    # cargo lambda watch serves each function under /lambda-url/<function>: let the router accept it.
    echo "TWOCHAN_LAMBDA_URL_PREFIX=1"
  } > "$watch_env"
)

address="${WATCH_ADDRESS:-::1}"
port="${WATCH_PORT:-9000}"
log "cargo lambda watch on port $port against $(value AWS_ENDPOINT_URL) (Ctrl-C stops it)"
# exec: this PID is cargo lambda's, and stopping it stops the function processes it started.
exec cargo lambda watch --invoke-address "$address" --invoke-port "$port" --env-file "$watch_env" "$@"
