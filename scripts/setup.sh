#!/usr/bin/env bash
# Installs the local toolchain (MiniStack, cargo-lambda, boto3, cfn-lint, checkov) into .local/venv,
# once (again whenever scripts/requirements.txt changes).
set -euo pipefail
source "$(dirname "$0")/common.sh"
stamp="$VENV/.requirements.sha256"
want="$(sha256sum "$ROOT/scripts/requirements.txt" | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
log "installing MiniStack, cargo-lambda, boto3, cfn-lint and checkov into .local/venv"
mkdir -p "$LOCAL"
python3 -m venv "$VENV"
# checkov pins boto3 (1.35) and MiniStack pins botocore (1.43): they cannot share a venv. checkov
# gets its own, .local/checkov, and a link to its command in .local/venv/bin (on PATH).
grep -v '^checkov==' "$ROOT/scripts/requirements.txt" > "$LOCAL/requirements.venv.txt"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$LOCAL/requirements.venv.txt"
checkov_pin="$(grep '^checkov==' "$ROOT/scripts/requirements.txt")"
python3 -m venv "$LOCAL/checkov"
"$LOCAL/checkov/bin/pip" install --quiet --disable-pip-version-check "$checkov_pin"
ln -sf "$LOCAL/checkov/bin/checkov" "$VENV/bin/checkov"
rm -f "$LOCAL/requirements.venv.txt"
echo "$want" > "$stamp"
