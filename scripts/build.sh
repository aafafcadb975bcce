#!/usr/bin/env bash
# Builds the Lambda bootstraps (target/lambda/<fn>/bootstrap) and the tools, release profile.
set -euo pipefail
source "$(dirname "$0")/common.sh"
"$ROOT/scripts/setup.sh"
cd "$ROOT"
log "cargo lambda build --release"
# --compiler cargo: a native build, about twice as fast as the zig cross-linker; the host's
# glibc is old enough for provided.al2023.
cargo lambda build --release --compiler cargo --target "$TARGET_TRIPLE" \
  -p registration -p payment-request -p confirmation -p settlement
cargo build --release --target "$TARGET_TRIPLE" -p twochan-tools --bins
