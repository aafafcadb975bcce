# Shared settings of the local-stack scripts. Sourced, not run.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCAL="$ROOT/.local"
VENV="$LOCAL/venv"
PORT="${MINISTACK_PORT:-4566}"
ENDPOINT="http://127.0.0.1:$PORT"
STACK_NAME="${STACK_NAME:-twochan}"
# The conflict-faithful DynamoDB proxy (tools/src/conflict_proxy/) between the functions (and
# the tests) and MiniStack: CONFLICTS=off deploys without it. CONFLICT_HOLD_MS: how long a
# transaction holds its items before it is forwarded (DynamoDB takes 10-30 ms, MiniStack ~1 ms).
PROXY_PORT="${PROXY_PORT:-$((PORT + 4))}"
PROXY_ENDPOINT="http://127.0.0.1:$PROXY_PORT"
CONFLICTS="${CONFLICTS:-on}"
CONFLICT_HOLD_MS="${CONFLICT_HOLD_MS:-10}"
CODE_BUCKET="${CODE_BUCKET:-twochan-code}"
# Development only: anyone who reads this file knows it. Real deployments pass their own key.
DEV_ISSUER_MASTER_KEY="6465762d6f6e6c792d6b65792d646f2d6e6f742d7573652d696e2d70726f6421"
TARGET_TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
# cargo lambda leaves every binary it builds, the tools included, at target/lambda/<name>/bootstrap.
tool() { local name="$1"; shift; "$ROOT/target/lambda/$name/bootstrap" "$@"; }

# The emulator accepts any credentials; these keep the SDKs from looking for real ones.
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
export AWS_REGION="${AWS_REGION:-us-east-1}"
export AWS_DEFAULT_REGION="$AWS_REGION"
export AWS_ENDPOINT_URL="$ENDPOINT"
export PATH="$VENV/bin:$PATH"

# Each step says when it started (seconds since its script began): where the time goes.
log() { printf '\033[1m==> [%4ss] %s\033[0m\n' "$SECONDS" "$*" >&2; }
