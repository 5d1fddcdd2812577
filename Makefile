# Developer entry points. Without DATABASE_URL, `run` and `migrate` use a private cluster in
# .data/pg and `test` uses a throwaway one (see scripts/pg.sh); with it, they use that database.

# Each recipe is one bash script, so a failing line stops it and a trap covers the whole recipe.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.ONESHELL:

CARGO ?= cargo
BIN := $(or $(CARGO_TARGET_DIR),target)/release/messaging
PG_DIR := .data/pg
# Extra arguments for the test runner, e.g. `make test ARGS=accounts`.
ARGS ?=

# Shell snippet shared by run and migrate: keep DATABASE_URL, or start the local cluster.
USE_LOCAL_DB = if [ -z "$${DATABASE_URL:-}" ]; then DATABASE_URL=$$(scripts/pg.sh start $(PG_DIR)); fi; export DATABASE_URL

.PHONY: build run migrate test test-api soak fmt clippy clean

# Build the release binary.
build:
	$(CARGO) build --release

# Migrate and serve, with a local database and a generated .data/secret_key unless the environment sets them.
run: build
	$(USE_LOCAL_DB)
	if [ -z "$${SECRET_KEY:-}" ]; then
	  if [ ! -s .data/secret_key ]; then
	    mkdir -p .data
	    (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > .data/secret_key.tmp)
	    mv .data/secret_key.tmp .data/secret_key
	  fi
	  SECRET_KEY=$$(cat .data/secret_key)
	fi
	export SECRET_KEY
	$(BIN) migrate up
	exec $(BIN) serve

# Apply pending migrations to DATABASE_URL, or to the local database.
migrate: build
	$(USE_LOCAL_DB)
	$(BIN) migrate up

# Check formatting and lints, then run all tests against DATABASE_URL or a throwaway cluster.
test:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	if [ -z "$${DATABASE_URL:-}" ]; then
	  # One cluster for the whole run: nextest starts a process per test.
	  pg_tmp=$$(mktemp -d)
	  trap 'scripts/pg.sh stop "$$pg_tmp" || true; rm -rf "$$pg_tmp"' EXIT
	  trap 'exit 130' INT
	  trap 'exit 143' TERM HUP
	  DATABASE_URL=$$(PG_FAST=1 scripts/pg.sh start "$$pg_tmp")
	  export DATABASE_URL
	fi
	if $(CARGO) nextest --version >/dev/null 2>&1; then
	  $(CARGO) nextest run $(ARGS)
	else
	  echo "cargo-nextest not found: falling back to cargo test" >&2
	  $(CARGO) test $(ARGS)
	fi

# Check the running release server against docs/openapi.json with schemathesis, every operation
# (scripts/test-api.sh says how; it installs schemathesis into .data/venv-api and starts its own
# throwaway cluster). API_EXAMPLES bounds the cases per operation, API_SEED replays a run.
test-api: build
	scripts/test-api.sh

# The slow tests `make test` skips or runs only in small, behind SOAK=1: a database frozen for
# 20 seconds (each starts its own cluster), 10,100 idle HTTP connections against the compiled
# server (tests/it/hostile.rs), and sends through database faults and hostile clients
# (tests/it/soak.rs, which prints its figures), a few minutes in all.
soak:
	# 10,100 client sockets in the test process; the server gets its own limit from prlimit.
	if [ "$$(ulimit -n)" != unlimited ] && [ "$$(ulimit -n)" -lt 16384 ]; then ulimit -n 16384; fi
	SOAK=1 $(MAKE) test ARGS='--no-capture soak'

# Measure the performance issue's scenarios P1..P10, each against its baseline in interleaved rounds, print one
# table and rewrite BENCHMARKS.md (benches/perf/main.rs says how). `make bench BENCH=P1,P3` runs some of them and
# leaves BENCHMARKS.md alone; BENCH_SECS (4) is one measurement's length, BENCH_ROUNDS (3) the number of rounds,
# BENCH_WORKERS the servers' WORKERS (default: theirs). It installs wrk if missing (scripts/bench-tools.sh) and
# starts its own durable cluster in a temporary directory that the trap always stops.
.PHONY: bench
bench: build
	scripts/bench-tools.sh
	pg_tmp=$$(mktemp -d)
	trap 'scripts/pg.sh stop "$$pg_tmp" || true; rm -rf "$$pg_tmp"' EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM HUP
	BENCH_PG_DIR=$$pg_tmp $(CARGO) bench --bench perf

# Fuzz each target for FUZZ_SECS seconds, one after another, with cargo-fuzz (installed if missing)
# on the nightly toolchain: http, route, json and ws (README.md, "Fuzzing"). Each starts from its corpus
# in fuzz/corpus (kept between runs, not committed), fuzz/seeds and fuzz/regressions; a crash, timeout
# or out-of-memory input stops `make fuzz` and is written to fuzz/artifacts/<target>/.
FUZZ_SECS ?= 300
FUZZ_TARGETS ?= http route json ws
.PHONY: fuzz
fuzz:
	if ! $(CARGO) fuzz --version >/dev/null 2>&1; then $(CARGO) install --locked cargo-fuzz; fi
	cd fuzz
	for target in $(FUZZ_TARGETS); do
	  mkdir -p corpus/$$target artifacts/$$target regressions/$$target
	  # The http target's server threads outlive every input, so LeakSanitizer's check at exit sees
	  # their allocations as leaks: it is off there.
	  leaks=$$([ "$$target" = http ] && echo 0 || echo 1)
	  $(CARGO) +nightly fuzz run $$target corpus/$$target seeds/$$target regressions/$$target -- \
	    -max_total_time=$(FUZZ_SECS) -timeout=10 -detect_leaks=$$leaks -artifact_prefix=artifacts/$$target/ \
	    -print_final_stats=1
	done

# The web client in headless Chromium: two users, live delivery, unread badge, reply, reaction, search,
# reload, and a reconnect that catches up; screenshots into .data/e2e/shots/ (SHOTS=docs/img refreshes
# the README's). scripts/test-e2e.sh installs chromium and playwright-core if missing, and starts its
# own throwaway PostgreSQL.
.PHONY: test-e2e
test-e2e:
	scripts/test-e2e.sh

# Format the code in place.
fmt:
	$(CARGO) fmt

# Lint everything, warnings included.
clippy:
	$(CARGO) clippy --all-targets -- -D warnings

# Remove build output and stop the local cluster (its data in .data stays).
clean:
	$(CARGO) clean
	scripts/pg.sh stop $(PG_DIR)
