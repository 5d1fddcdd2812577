#!/usr/bin/env bash
# The load generators `make bench` drives the server with: wrk (HTTP) and pgbench (PostgreSQL, shipped with
# the server binaries scripts/pg.sh uses). Installs what is missing with apt-get when run as root on Debian or
# Ubuntu; otherwise says what to install. Prints nothing when both are there.
set -euo pipefail

has_pgbench() {
    command -v pgbench >/dev/null 2>&1 || compgen -G '/usr/lib/postgresql/*/bin/pgbench' >/dev/null
}

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
has_pgbench || missing+=(postgresql-contrib)
((${#missing[@]} == 0)) && exit 0

if ((EUID == 0)) && command -v apt-get >/dev/null 2>&1; then
    echo "bench-tools.sh: installing ${missing[*]}" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
else
    echo "bench-tools.sh: make bench needs ${missing[*]}: install them with apt-get install ${missing[*]}" >&2
    exit 1
fi
