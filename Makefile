# The project's commands. `make demo` and `make test` are the two a newcomer needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

.PHONY: help setup build up down demo test unit integration test-sim bench lint fmt merchant watch clean-state schemathesis fuzz sweep test-rest test-iam

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: ## Install the local toolchain (MiniStack, boto3, cargo-lambda and the test tools) into .local/venv
	@scripts/setup.sh test

build: ## Build the Lambda bootstraps and tools with the deployed (release, fat LTO) profile
	BUILD_PROFILE=release scripts/build.sh

up: ## Build, start the local cloud, deploy, seed a merchant, print API_URL=... lines
	@scripts/up.sh

down: ## Stop the local cloud and every process it started
	@scripts/down.sh

demo: up ## One complete two-channel payment on the local cloud
	@scripts/demo.sh

test: ## Everything (setup, build, make up, lint, unit, integration and the stack's other tests), side by side
	@scripts/test.sh

test-rest: up ## The API as a REST API (ApiKind rest): stack twochan-rest, the black-box client against it
	@scripts/test_rest.sh

test-iam: ## The functions on a MiniStack of their own with IAM enforced (AUTH=true, port IAM_PORT=4568)
	@scripts/build.sh
	@scripts/test_iam_enforced.sh

unit: ## Unit tests only (no stack needed)
	cargo test --workspace --exclude integration-tests

.PHONY: bench-cpu
bench-cpu: ## Handler CPU per request, no I/O: criterion mean and p99, callgrind instructions per op
	@scripts/bench_cpu.sh

integration: ## Integration tests against a running stack (make up first)
	cargo test -p integration-tests --test integration -- --test-threads=8

bench: setup ## The performance table of docs/PERFORMANCE.md, measured now on the deployed (release) build
	@BUILD_PROFILE=release scripts/up.sh
	@scripts/bench.sh

test-sim: up ## Seeded fault simulation of the money path, 1000 seeds (SIM_SEED=n replays one)
	SIM_SEEDS=$${SIM_SEEDS:-1000} cargo test -p integration-tests --test integration sim:: -- --nocapture

schemathesis: setup ## Schemathesis against a running stack: every response checked against docs/openapi.yaml
	.local/venv/bin/python scripts/schemathesis.py

lint: setup ## cfn-lint, least-privilege and OpenAPI-routes checks, cargo fmt --check, clippy -D warnings
	@scripts/lint.sh

fmt: ## Format the code
	cargo fmt --all

merchant: ## Create a merchant on the running stack: make merchant ID=<merchant_id>
	@scripts/merchant.sh "$(ID)"

watch: ## Serve the functions with cargo lambda watch (see README: edit-run loop)
	@scripts/watch.sh

clean-state: down ## Forget the local cloud's persisted state
	rm -rf .local/ministack-state

FUZZ_SECONDS ?= 600
SWEEP_COUNT ?= 10000

fuzz: ## Fuzz request parsing and auth codes, FUZZ_SECONDS each (default 600; nightly + cargo-fuzz)
	@cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
	cd fuzz && for target in request auth_code; do \
	  mkdir -p corpus/$$target && \
	  cargo +nightly fuzz run $$target corpus/$$target seeds/$$target -- \
	    -max_total_time=$(FUZZ_SECONDS) -max_len=16384 -print_final_stats=1 \
	    $$([ -f $$target.dict ] && echo -dict=$$target.dict) || exit 1; \
	done

sweep: ## SWEEP_COUNT (10000) malformed HTTP requests against the running stack; SEED= to replay
	.local/venv/bin/python scripts/sweep.py --count $(SWEEP_COUNT) $(if $(SEED),--seed $(SEED))
