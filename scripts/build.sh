#!/usr/bin/env bash
# Builds the Lambda bootstraps and the tools into target/lambda/<name>/bootstrap.
#
# BUILD_PROFILE=dev (the default, `make up`, `make demo`, `make test`): a plain `cargo build` of
# the workspace's binaries, sharing its dependency artifacts with `cargo test`, so the AWS SDK is
# compiled once for the local loop. BUILD_PROFILE=release (`make build`, `make bench`, deploys
# to AWS): `cargo lambda build --release` with the fat-LTO profile whose size and init figures
# docs/PERFORMANCE.md reports.
#
# SETUP=test installs the test tools too (scripts/setup.sh); SETUP=none installs nothing (make test
# runs the installer as a step of its own).
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"
profile="${BUILD_PROFILE:-dev}"
setup_set="${SETUP:-stack}"
bins=(registration payment-request confirmation settlement webhooks sweeper demo merchant loadgen conflict-proxy device)
case "$profile" in
  dev)
    # The Python installs wait on the network, the build on the CPU: side by side.
    mkdir -p "$LOCAL"
    setup_pid=""
    if [[ "$setup_set" != none ]]; then
      "$ROOT/scripts/setup.sh" "$setup_set" > "$LOCAL/setup.log" 2>&1 &
      setup_pid=$!
      log "cargo build (dev profile: the local loop), and scripts/setup.sh $setup_set beside it"
    else
      log "cargo build (dev profile: the local loop)"
    fi
    cargo build --workspace --bins
    if [[ -n "$setup_pid" ]]; then
      if ! wait "$setup_pid"; then
        cat "$LOCAL/setup.log" >&2
        echo "scripts/setup.sh $setup_set failed (above)" >&2
        exit 1
      fi
      cat "$LOCAL/setup.log" >&2
    fi
    for bin in "${bins[@]}"; do
      mkdir -p "target/lambda/$bin"
      cp -f "target/debug/$bin" "target/lambda/$bin/bootstrap"
    done
    ;;
  release)
    [[ "$setup_set" == none ]] || "$ROOT/scripts/setup.sh" "$setup_set"
    log "cargo lambda build --release (the deployed profile)"
    # --compiler cargo: a native build, about twice as fast as the zig cross-linker; the host's
    # glibc is old enough for provided.al2023.
    cargo lambda build --release --compiler cargo --target "$TARGET_TRIPLE" \
      -p registration -p payment-request -p confirmation -p settlement -p webhooks -p sweeper -p twochan-tools
    ;;
  *)
    echo "BUILD_PROFILE must be dev or release, not $profile" >&2
    exit 1
    ;;
esac
