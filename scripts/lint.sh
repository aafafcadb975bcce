#!/usr/bin/env bash
# The lint checks, for `make lint` (all of them) and scripts/test.sh (which runs them as separate
# steps, beside others): `scripts/lint.sh [template] [fmt] [clippy]`.
#   template  the template (cfn-lint, least privilege) and docs/openapi.yaml against its routes
#   fmt       cargo fmt --check
#   clippy    clippy on every target, warnings denied
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"
(($#)) || set -- template fmt clippy
for check in "$@"; do
  case "$check" in
    template)
      log "template: cfn-lint and least privilege"
      cfn-lint infra/template.yaml
      python scripts/check_template.py
      log "docs/openapi.yaml against the template's routes"
      python scripts/check_openapi.py
      ;;
    fmt)
      log "cargo fmt --check"
      cargo fmt --all -- --check
      ;;
    clippy)
      log "cargo clippy -D warnings"
      cargo clippy --workspace --all-targets -- -D warnings
      ;;
    *)
      echo "usage: scripts/lint.sh [template] [fmt] [clippy]" >&2
      exit 2
      ;;
  esac
done
