#!/usr/bin/env bash
# The lint checks, for `make lint` and scripts/test.sh: the template (cfn-lint, least privilege),
# docs/openapi.yaml against the template's routes, formatting, and clippy with warnings denied.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"
log "template: cfn-lint and least privilege"
cfn-lint infra/template.yaml
python scripts/check_template.py
log "docs/openapi.yaml against the template's routes"
python scripts/check_openapi.py
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
