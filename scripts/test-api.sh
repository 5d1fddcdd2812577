#!/usr/bin/env bash
# Runs schemathesis against the release server, for every operation of docs/openapi.json as the
# server itself serves it at /openapi.json: responses must match the document (schemas, statuses,
# content types, headers), no request may get a 500, inputs the document forbids must be refused,
# and authenticated routes must refuse a request without a token.
#
# Usage: scripts/test-api.sh [st run options] (make test-api builds the binary first). It installs schemathesis,
# pinned, into a virtual environment in .data/venv-api, starts a throwaway PostgreSQL cluster and
# the server on free ports (RATE_LIMITS=off, cheap password hashing), and stops both on exit.
# API_EXAMPLES (default 30) bounds the generated cases per operation and phase; API_SEED fixes
# the random seed to replay a run. Reports go to .data/api-report/.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly SCHEMATHESIS_VERSION=4.32.5
# Prometheus's own Python client, whose parser reads /metrics after the run (below).
readonly PROMETHEUS_CLIENT_VERSION=0.26.0
readonly VENV=.data/venv-api
readonly REPORT_DIR=.data/api-report
BIN=${CARGO_TARGET_DIR:-target}/release/messaging

log() {
    echo "test-api: $*" >&2
}

[[ -x $BIN ]] || {
    log "no $BIN: run make test-api, or cargo build --release"
    exit 1
}

if [[ $("$VENV/bin/st" --version 2>/dev/null || true) != *"$SCHEMATHESIS_VERSION"* ]]; then
    log "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
    rm -rf "$VENV"
    # The first Python that can make a virtual environment: PATH's, else Debian's (python3-venv).
    python=""
    for candidate in python3 /usr/bin/python3; do
        if "$candidate" -c 'import ensurepip, venv' 2>/dev/null; then
            python=$candidate
            break
        fi
    done
    [[ -n $python ]] || {
        log "no python3 with venv and ensurepip: apt-get install python3 python3-venv"
        exit 1
    }
    "$python" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('prometheus-client') != '$PROMETHEUS_CLIENT_VERSION')" 2>/dev/null; then
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "prometheus-client==$PROMETHEUS_CLIENT_VERSION"
fi

work=$(mktemp -d)
server_pid=""
cleanup() {
    if [[ -n $server_pid ]]; then
        kill "$server_pid" 2>/dev/null || true
        # A shutdown that sticks must not hold CI: 10 s, then SIGKILL.
        for _ in $(seq 100); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    scripts/pg.sh stop "$work/pg" || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

DATABASE_URL=$(PG_FAST=1 scripts/pg.sh start "$work/pg")
export DATABASE_URL
"$BIN" migrate up >"$work/migrate.log" 2>&1 || {
    cat "$work/migrate.log" >&2
    exit 1
}

# Port 0: the server says where it listens on its "serving" log line.
HTTP_ADDR=127.0.0.1:0 WS_ADDR=127.0.0.1:0 RATE_LIMITS=off PASSWORD_ITERATIONS=1000 \
    SECRET_KEY=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n') \
    "$BIN" serve >"$work/server.log" 2>&1 &
server_pid=$!
api=""
for _ in $(seq 300); do
    api=$(grep -o 'http=http://[0-9.:]*' "$work/server.log" | head -n 1 | cut -d= -f2 || true)
    [[ -n $api ]] && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
done
[[ -n $api ]] || {
    log "the server did not start:"
    cat "$work/server.log" >&2
    exit 1
}
log "server at $api"

# positive_data_acceptance is left out: the document cannot say which ids exist, so a request it
# allows may rightly be 404 (an unknown chat) or 400 (an unknown user in member_ids).
# One worker: a case that ends every session of the tester (DELETE /api/sessions) would otherwise
# end the sessions of cases running beside it, and their answers would be 401s.
# st runs in .data/, where it keeps its caches (.schemathesis/, .hypothesis/) and its reports.
# Without an include filter, st leaves out the operation that serves the schema (GET /openapi.json);
# `--include-path-regex .` names every operation, that one included.
status=0
rm -rf "$REPORT_DIR"
(cd .data && API_URL=$api SCHEMATHESIS_HOOKS=../scripts/test-api-hooks.py "../$VENV/bin/st" run "$api/openapi.json" \
    --include-path-regex . --checks all --exclude-checks positive_data_acceptance \
    --max-examples "${API_EXAMPLES:-30}" ${API_SEED:+--seed "$API_SEED"} \
    --workers 1 --request-timeout 30 --suppress-health-check too_slow,filter_too_much \
    --report junit,har --report-junit-path api-report/junit.xml --report-har-path api-report/requests.har \
    "$@") || status=$?
# One plain closing line, operations counted from the JUnit report (the stateful phase is one more).
"$VENV/bin/python" - "$REPORT_DIR/junit.xml" <<'PY' || true
import sys
import xml.etree.ElementTree as tree

suites = tree.parse(sys.argv[1]).getroot()
failed = int(suites.get("failures", 0)) + int(suites.get("errors", 0))
print(f"api: {int(suites.get('tests', 0)) - failed} passed, {failed} failed")
PY
# After thousands of requests, /metrics must parse with Prometheus's own parser, and its counters
# must have moved: requests on every route the run called, and their latencies.
"$VENV/bin/python" - "$api/metrics" <<'PY' || status=1
import sys
import urllib.request
from prometheus_client.parser import text_string_to_metric_families

text = urllib.request.urlopen(sys.argv[1], timeout=10).read().decode()
families = {family.name: family for family in text_string_to_metric_families(text)}
requests = [s for s in families["messaging_http_requests"].samples if s.name.endswith("_total")]
routes = {s.labels["route"] for s in requests if s.value > 0}
latencies = [s for s in families["messaging_http_request_duration_seconds"].samples if s.name.endswith("_count")]
problems = []
if len(routes) < 30:
    problems.append(f"requests counted on {len(routes)} routes, fewer than the run called")
if sum(s.value for s in latencies) < sum(s.value for s in requests):
    problems.append("fewer latencies than requests")
for name in ("messaging_ws_open_connections", "messaging_events_published", "messaging_db_errors"):
    if name not in families:
        problems.append(f"{name} missing")
print(f"metrics: {len(families)} families parsed by prometheus_client, requests on {len(routes)} routes, "
      f"{int(sum(s.value for s in requests))} requests" + "".join(f"; PROBLEM: {p}" for p in problems))
sys.exit(1 if problems else 0)
PY
if ((status != 0)); then
    log "failed; the server's log is below, and the requests are in $REPORT_DIR/requests.har"
    tail -n 50 "$work/server.log" >&2
fi
exit "$status"
