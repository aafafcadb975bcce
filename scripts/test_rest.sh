#!/usr/bin/env bash
# make test-rest, and a step of make test: the API as a REST API (ApiKind rest, the variant for
# LocalStack's free edition, which has no HTTP APIs) on the local cloud `make up` started: the stack
# twochan-rest deployed beside twochan (scripts/side_stack.sh; coordinates in
# .local/stack-twochan-rest.env), and the black-box contract client against it. The stack stays up,
# as twochan does; a second run updates it. REST_STACK=<name> deploys another.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"
REST_STACK="${REST_STACK:-twochan-rest}"
started=$SECONDS
"$ROOT/scripts/side_stack.sh" "$REST_STACK" rest
deployed=$SECONDS
log "black-box client against $REST_STACK"
python tests/blackbox/contract_client.py --env-file "$LOCAL/stack-$REST_STACK.env"
log "$REST_STACK: deployed in $((deployed - started)) s, black-box client passed in $((SECONDS - deployed)) s"
