#!/usr/bin/env bash
# Installs the local toolchain into .local/venv, once per change of its pins:
#   scripts/setup.sh        the stack (scripts/requirements.txt): make up, make demo
#   scripts/setup.sh test   the stack and the test tools (scripts/requirements-test.txt): make test
# The installer is uv (pinned below, itself installed by pip into .local/uv): it resolves and
# installs these sets in a third of pip's time and CPU, which a first build shares with rustc.
set -euo pipefail
source "$(dirname "$0")/common.sh"
set_name="${1:-stack}"
case "$set_name" in
  stack | test) ;;
  *) echo "usage: scripts/setup.sh [stack|test]" >&2; exit 2 ;;
esac
UV_VERSION=0.13.9
mkdir -p "$LOCAL"
# One installer at a time: make's prerequisites and a background install may meet here.
exec 9>"$LOCAL/setup.lock"
flock 9

uv="$LOCAL/uv/bin/uv"
if [[ "$("$uv" --version 2>/dev/null) " != "uv $UV_VERSION "* ]]; then
  log "installing uv $UV_VERSION into .local/uv"
  python3 -m venv "$LOCAL/uv"
  "$LOCAL/uv/bin/pip" install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
# Its download cache stays inside the checkout, as everything else of the project does. uv reads
# no pip.conf: a machine that reaches PyPI through a mirror sets UV_INDEX_URL (and PIP_INDEX_URL
# for the one pip install above).
export UV_CACHE_DIR="${UV_CACHE_DIR:-$LOCAL/uv-cache}"

# install <stamp> <requirements file> <venv>: install unless the stamp holds the file's hash.
install() {
  local stamp="$3/.$1.sha256" want
  want="$(sha256sum "$2" | cut -d' ' -f1)"
  [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && return 0
  log "installing $(grep -v '^#' "$2" | cut -d= -f1 | paste -sd' ') into ${3#"$ROOT"/}"
  [[ -x "$3/bin/python" ]] || "$uv" venv --quiet --python "$(command -v python3)" "$3"
  "$uv" pip install --quiet --python "$3/bin/python" -r "$2"
  echo "$want" > "$stamp"
}

install stack "$ROOT/scripts/requirements.txt" "$VENV"
if [[ "$set_name" == test ]]; then
  # checkov pins boto3 1.35 and MiniStack botocore 1.43: they cannot share a venv. checkov gets
  # .local/checkov, and a link to its command in .local/venv/bin (on PATH).
  grep -v '^checkov==' "$ROOT/scripts/requirements-test.txt" > "$LOCAL/requirements-test.venv.txt"
  grep -E '^(#|checkov==)' "$ROOT/scripts/requirements-test.txt" > "$LOCAL/requirements-test.checkov.txt"
  install test "$LOCAL/requirements-test.venv.txt" "$VENV"
  install checkov "$LOCAL/requirements-test.checkov.txt" "$LOCAL/checkov"
  ln -sf "$LOCAL/checkov/bin/checkov" "$VENV/bin/checkov"
fi
