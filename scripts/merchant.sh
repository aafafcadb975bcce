#!/usr/bin/env bash
# make merchant ID=...: creates a merchant on the running stack and prints its key once.
set -euo pipefail
source "$(dirname "$0")/common.sh"
if [[ -z "${1:-}" ]]; then
  echo "usage: make merchant ID=<merchant_id>" >&2
  exit 2
fi
if [[ ! -f "$LOCAL/stack.env" ]]; then
  echo "no running stack: run make up first" >&2
  exit 1
fi
set -a; source "$LOCAL/stack.env"; set +a
[[ -x "$ROOT/target/lambda/merchant/bootstrap" ]] || "$ROOT/scripts/build.sh"
tool merchant "$1"
