#!/usr/bin/env bash
# make test: lint, unit tests, then the integration tests against the stack `make up` deployed.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
log "unit tests"
cargo test --workspace --exclude integration-tests
log "integration tests against $(grep '^API_URL=' "$LOCAL/stack.env")"
cargo test -p integration-tests -- --test-threads=8
