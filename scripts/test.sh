#!/usr/bin/env bash
# make test: setup, build, the local stack, lint, unit tests, then every test against the stack.
#
# The steps below run side by side as soon as the steps they name have passed: a first run is
# compilation on both cores until the binaries exist, then mostly waiting on the local cloud, whose
# idle CPU the remaining compilation (tests, clippy) fills. Each step writes .local/test-logs/<step>.log,
# printed here when it ends; the first step that fails stops the others and its log is printed
# last. The table at the end says when each step started and how long it took.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"
if ((BASH_VERSINFO[0] < 5 || (BASH_VERSINFO[0] == 5 && BASH_VERSINFO[1] < 1))); then
  echo "scripts/test.sh needs bash 5.1 or later (wait -n -p), not $BASH_VERSION" >&2
  exit 1
fi
LOGS="$LOCAL/test-logs"
rm -rf "$LOGS"
mkdir -p "$LOGS"

# ---------------------------------------------------------------- the steps

tests_build() {
  "$ROOT/scripts/lint.sh" fmt
  log "cargo test --no-run: the unit and integration test binaries"
  cargo test --workspace --no-run --message-format=json-render-diagnostics > "$LOGS/tests-build.json"
  python3 - "$LOGS/tests-build.json" "$LOGS/integration-binary" "$LOGS/unit-binaries" <<'EOF'
import json, os, sys
messages = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
artifacts = [m for m in messages if m.get("reason") == "compiler-artifact"]
# The binaries' build compiled the AWS SDK with the features the tests need too (twochan-aws's
# Cargo.toml says how): compiling it again here would be a minute of CPU lost.
again = sorted({m["target"]["name"] for m in artifacts if not m["fresh"] and m["target"]["name"].startswith("aws_sdk")})
if again:
    sys.exit(f"the test build compiled the AWS SDK again ({', '.join(again)}): the features of the build and "
             "the test build differ; see shared/aws/Cargo.toml")
tests = [m for m in artifacts if m["profile"]["test"] and m.get("executable")]
[binary] = [m["executable"] for m in tests if m["target"]["name"] == "integration"]
open(sys.argv[2], "w").write(binary + "\n")
# Each one with its package's directory, where `cargo test` runs it.
with open(sys.argv[3], "w") as out:
    for m in tests:
        if m["executable"] != binary:
            out.write(f"{os.path.dirname(m['manifest_path'])}\t{m['executable']}\n")
print(f"{sum(1 for m in artifacts if not m['fresh'])} units compiled, the AWS SDK not again; "
      f"{len(tests) - 1} unit test binaries; integration tests: {binary}")
EOF
}

unit() {
  # The binaries tests-build made, run as `cargo test` runs them: `cargo test --exclude
  # integration-tests` would resolve features without that package and compile much of it again.
  local dir binary failed=() ran=0
  while IFS=$'\t' read -r dir binary <&3; do
    log "unit tests: ${binary#"$ROOT"/} (in ${dir#"$ROOT"/})"
    (cd "$dir" && "$binary" < /dev/null) || failed+=("$binary")
    ran=$((ran + 1))
  done 3< "$LOGS/unit-binaries"
  ((ran > 0)) || { echo "tests-build listed no unit test binary" >&2; return 1; }
  if ((${#failed[@]})); then
    printf 'failed: %s\n' "${failed[@]}" >&2
    return 1
  fi
}

doc_tests() {
  log "doc tests (among them the wiring that must not compile)"
  cargo test --workspace --doc
}

clippy() { "$ROOT/scripts/lint.sh" clippy; }

templates() {
  "$ROOT/scripts/lint.sh" template
  local bad="$LOGS/template-copy.yaml"
  # The template check must be able to fail: a wildcard slipped into a copy of the template is caught.
  sed "s/'sqs:SendMessage'/'sqs:*'/" infra/template.yaml > "$bad"
  if python scripts/check_template.py "$bad" 2>/dev/null; then
    echo "check_template.py missed a wildcard action" >&2
    return 1
  fi
  # Nor a REST API route (ApiKind rest) sent to another function than the HTTP API's.
  sed "/RestBalanceMethod:/,/Uri:/ s/PaymentRequestFunction/ConfirmationFunction/" infra/template.yaml > "$bad"
  if python scripts/check_template.py "$bad" 2>/dev/null; then
    echo "check_template.py missed a REST route to another function" >&2
    return 1
  fi
  # Nor a route the Rust router serves from another function than the template's.
  sed "s/Route::Balance => payment_request::balance/Route::Balance => confirmation::balance/; /^pub async fn confirmation</,/^}/ s/Route::PendingPayments =>/Route::Balance => x, Route::PendingPayments =>/" \
    shared/api/src/router.rs > "$LOGS/router-copy.rs"
  if CHECK_ROUTER="$LOGS/router-copy.rs" python scripts/check_template.py 2>/dev/null; then
    echo "check_template.py missed a route the router serves from another function" >&2
    return 1
  fi
  # The OpenAPI check must be able to fail too: a renamed route, and a route sent to another function.
  local change
  for change in "s|'GET /v1/balance'|'GET /v1/balances'|" \
    "/BalanceRoute:/,/Target:/ s/PaymentRequestIntegration/ConfirmationIntegration/"; do
    sed "$change" infra/template.yaml > "$bad"
    if python scripts/check_openapi.py "$bad" 2>/dev/null; then
      echo "check_openapi.py missed: $change" >&2
      return 1
    fi
  done
  log "deploy.py: knows every template parameter, refuses bootstraps of another architecture"
  python scripts/check_deploy_params.py
  # It must be able to fail: a parameter added to the template but not to deploy.py is caught.
  sed 's/^Parameters:$/Parameters:\n  UnknownToDeploy: {Type: String, Default: x}/' infra/template.yaml > "$bad"
  if python scripts/check_deploy_params.py --template "$bad" 2>/dev/null; then
    echo "check_deploy_params.py missed a template parameter deploy.py does not know" >&2
    return 1
  fi
  log "checkov: security scan of the template (each skip in the template says why)"
  checkov -f infra/template.yaml --framework cloudformation --quiet --compact --skip-download
  # It must be able to fail (a file checkov cannot parse passes silently): the API without its
  # access log is caught. The copy must end in .yaml for checkov to read it as CloudFormation.
  sed '/AccessLogSettings:/,+2d' infra/template.yaml > "$bad"
  if checkov -f "$bad" --framework cloudformation --quiet --compact --skip-download >/dev/null 2>&1; then
    echo "checkov missed an HTTP API stage without access logging" >&2
    return 1
  fi
  # checkov evaluates the conditions with the parameters' defaults: the REST API (ApiKind rest) is
  # scanned in a copy that defaults to it.
  sed '/^  ApiKind:$/,/Default:/ s/Default: http$/Default: rest/' infra/template.yaml > "$bad"
  grep -q 'Default: rest$' "$bad" || { echo "no ApiKind default to change" >&2; return 1; }
  checkov -f "$bad" --framework cloudformation --quiet --compact --skip-download
}

key_change() {
  log "make up applies a changed ISSUER_MASTER_KEY to the running stack"
  SKIP_BUILD=1 python scripts/check_key_change.py
}

integration() {
  log "integration tests against $(grep '^API_URL=' "$LOCAL/stack.env")"
  # Its iam module (tests/tests/iam.rs) writes the AWS actions each function's handlers made; no
  # earlier run's record may stand in for it.
  local observed="${CARGO_TARGET_DIR:-target}/iam-observed.json" bad="$LOGS/template-iam.yaml"
  rm -f "$observed"
  # The binary `cargo test` built, run as cargo runs it (from its package's directory), without
  # cargo: clippy holds the build directory meanwhile. No backtraces: CI shows the tail of the
  # output, where a failed assertion's message must be.
  (cd tests && RUST_BACKTRACE=0 "$(cat "$LOGS/integration-binary")" --test-threads=8)
  log "IAM both ways: each role grants exactly what its function's handlers called in the tests"
  python scripts/check_iam_used.py --observed "$observed"
  # It must be able to fail both ways: a role without an action its code uses (registration's
  # ConditionCheckItem), and a role with one its code never uses (a Scan for settlement).
  local change
  for change in "/^  RegistrationRole:/,/^  RegistrationLogs:/ s/, 'dynamodb:ConditionCheckItem'//" \
    "/^  SettlementRole:/,/^  SettlementLogs:/ s/'dynamodb:GetItem', /'dynamodb:GetItem', 'dynamodb:Scan', /"; do
    sed "$change" infra/template.yaml > "$bad"
    if cmp -s infra/template.yaml "$bad" || python scripts/check_iam_used.py "$bad" --observed "$observed" --quiet 2>/dev/null; then
      echo "check_iam_used.py missed: $change" >&2
      return 1
    fi
  done
}

sweep() {
  # A stack of its own: the sweep checks that no request changed the table, which holds only on a
  # table that nothing else writes to meanwhile.
  "$ROOT/scripts/side_stack.sh" twochan-sweep http
  log "hostile-input sweep: 10000 malformed requests (scripts/sweep.py; docs/RELIABILITY.md)"
  python scripts/sweep.py --count 10000 --env-file "$LOCAL/stack-twochan-sweep.env"
}

blackbox() {
  log "black-box client (Python, contract only)"
  python tests/blackbox/contract_client.py
}

schemathesis() {
  log "schemathesis: the API against docs/openapi.yaml"
  python scripts/schemathesis.py
}

# ---------------------------------------------------------------- the order

# A step off the critical path: it yields the CPU to the build, the stack and the tests on it.
niced() {
  renice -n 10 -p "$BASHPID" > /dev/null
  "$@"
}

declare -A after run state pid_of step_of began took
steps=()
# step <name> "<steps it waits for>" <command>
step() { steps+=("$1"); after[$1]="$2"; run[$1]="$3"; state[$1]=waiting; }

step setup "" "scripts/setup.sh test"
step bins "" "env SETUP=none BUILD_PROFILE=dev scripts/build.sh"
step templates "setup" "niced templates"
step stack "setup bins" "env SKIP_BUILD=1 scripts/up.sh"
step iam-enforced "setup bins" "niced scripts/test_iam_enforced.sh"
step tests-build "bins" tests_build
step unit "tests-build" "niced unit"
# Not niced: niced, it would wait behind the sweep and end last. Beside it, the integration tests
# take as long as without it.
step clippy "tests-build" clippy
# After clippy: one cargo at a time holds the build directory.
step doc-tests "clippy" "niced doc_tests"
# Before everything else on the stack: it redeploys the functions and re-seeds the demo merchant.
step key-change "stack" key_change
step integration "tests-build key-change" integration
step blackbox "key-change" blackbox
step rest "key-change" "scripts/test_rest.sh"
step schemathesis "key-change" schemathesis
# After the integration tests: the sweep keeps both cores busy, and some of those tests wait on
# timers (settlement retries, webhook back-off) that a saturated machine would stretch.
step sweep "integration" sweep

ready() {
  local dep
  for dep in ${after[$1]}; do [[ "${state[$dep]}" == passed ]] || return 1; done
}
# Job control: each step is a process group of its own, stopped whole if another step fails.
set -m
stop_all() {
  local name
  for name in "${steps[@]}"; do
    if [[ "${state[$name]}" == running ]]; then
      kill -TERM -- "-${pid_of[$name]}" 2>/dev/null || true
    fi
  done
  wait 2>/dev/null || true
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap 'stop_all; exit 129' HUP
trap stop_all EXIT

pending=${#steps[@]}
running=0
while ((pending > 0)); do
  for name in "${steps[@]}"; do
    if [[ "${state[$name]}" == waiting ]] && ready "$name"; then
      # shellcheck disable=SC2086 # a step's command is a function or a command line, split on purpose
      ( set +m; ${run[$name]} ) < /dev/null > "$LOGS/$name.log" 2>&1 &
      pid_of[$name]=$!
      step_of[$!]=$name
      state[$name]=running
      began[$name]=$SECONDS
      running=$((running + 1))
      log "start: $name"
    fi
  done
  if ((running == 0)); then
    echo "no step can start: the order above waits on a step that is not there" >&2
    exit 1
  fi
  finished=""
  rc=0
  wait -n -p finished || rc=$?
  name="${step_of[$finished]}"
  took[$name]=$((SECONDS - ${began[$name]}))
  running=$((running - 1))
  pending=$((pending - 1))
  if ((rc != 0)); then
    state[$name]=failed
    stop_all
    for other in "${steps[@]}"; do
      [[ "${state[$other]}" == running ]] && echo "stopped: $other (its log so far: $LOGS/$other.log)" >&2
    done
    log "FAILED: $name (exit $rc) after ${took[$name]} s; its log:"
    cat "$LOGS/$name.log" >&2
    log "FAILED: $name (exit $rc); the whole log is $LOGS/$name.log"
    exit 1
  fi
  state[$name]=passed
  log "passed: $name in ${took[$name]} s; its log:"
  sed 's/^/    /' "$LOGS/$name.log" >&2
done

log "every step passed; when each started and how long it took (s):"
for name in "${steps[@]}"; do
  printf '  %-14s %5s %5s\n' "$name" "${began[$name]}" "${took[$name]}" >&2
done
