#!/usr/bin/env bash
# Builds the Lambda bootstraps (target/lambda/<fn>/bootstrap) and the tools, release profile.
set -euo pipefail
source "$(dirname "$0")/common.sh"
"$ROOT/scripts/setup.sh"
cd "$ROOT"
log "cargo lambda build --release"
# --compiler cargo: a native build, about twice as fast as the zig cross-linker; the host's
# glibc is old enough for provided.al2023.
# The tools (demo, merchant) are built in the same invocation so that they share its flags and
# artifacts; cargo lambda also packages them under target/lambda/, which is harmless.
cargo lambda build --release --compiler cargo --target "$TARGET_TRIPLE" \
  -p registration -p payment-request -p confirmation -p settlement -p twochan-tools
