#!/usr/bin/env bash
# make demo: runs one two-channel payment with the simulators against the running stack.
set -euo pipefail
source "$(dirname "$0")/common.sh"
tool demo
