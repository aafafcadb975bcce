#!/usr/bin/env bash
# Installs the local toolchain (MiniStack, cargo-lambda, boto3) into .local/venv, once.
set -euo pipefail
source "$(dirname "$0")/common.sh"
stamp="$VENV/.requirements.sha256"
want="$(sha256sum "$ROOT/scripts/requirements.txt" | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
log "installing MiniStack, cargo-lambda and boto3 into .local/venv"
mkdir -p "$LOCAL"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$ROOT/scripts/requirements.txt"
echo "$want" > "$stamp"
