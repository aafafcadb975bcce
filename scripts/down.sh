#!/usr/bin/env bash
# make down: stops MiniStack and every function process it started (one process group).
set -euo pipefail
source "$(dirname "$0")/common.sh"
pidfile="$LOCAL/ministack.pid"
if [[ ! -f "$pidfile" ]]; then
  echo "nothing to stop (no $pidfile)"
  exit 0
fi
pid="$(cat "$pidfile")"
if kill -0 "$pid" 2>/dev/null; then
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  # Whatever of the group ignored TERM.
  kill -KILL -- "-$pid" 2>/dev/null || true
fi
rm -f "$pidfile" "$LOCAL/stack.env"
echo "stopped MiniStack (pid $pid) and its function processes"
