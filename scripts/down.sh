#!/usr/bin/env bash
# make down: stops MiniStack and every function process it started (one process group).
set -euo pipefail
source "$(dirname "$0")/common.sh"
# The conflict proxy first (TERM: it prints its counters to its log as it stops).
proxy_pid="$LOCAL/conflict-proxy.pid"
if [[ -f "$proxy_pid" ]]; then
  ppid="$(cat "$proxy_pid")"
  if kill -0 "$ppid" 2>/dev/null; then
    kill -TERM "$ppid"
    for _ in $(seq 1 50); do kill -0 "$ppid" 2>/dev/null || break; sleep 0.1; done
    echo "stopped the conflict proxy (pid $ppid); its counters are at the end of $LOCAL/conflict-proxy.log"
  fi
  rm -f "$proxy_pid" "$LOCAL/conflict-proxy.args"
fi
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
