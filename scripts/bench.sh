#!/usr/bin/env bash
# make bench: the performance table (scripts/bench.py) against the stack `make up` deployed.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"
[[ -f "$LOCAL/stack.env" ]] || { echo "no stack: run make up first" >&2; exit 1; }
exec python scripts/bench.py
