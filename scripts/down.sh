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
  # TERM to MiniStack alone first: it saves its state on a graceful shutdown.
  kill -TERM "$pid"
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
fi
# Then the rest of its process group: function processes are not stopped by MiniStack itself.
kill -KILL -- "-$pid" 2>/dev/null || true
rm -f "$pidfile" "$LOCAL/stack.env"
echo "stopped MiniStack (pid $pid) and its function processes"
