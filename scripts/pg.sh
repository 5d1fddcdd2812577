#!/usr/bin/env bash
# A private PostgreSQL cluster in a directory, reachable only via a unix socket in that directory.
# `make run` keeps one in .data/pg and `make test` starts a throwaway one, so neither needs a system
# service, a TCP port or a password.
# PostgreSQL refuses to run as root, so as root the server commands run as the `postgres` user.
#
# Usage: scripts/pg.sh start|stop|url DIR
#   start  initdb DIR/data if needed, start the server, create database `messaging`, print the URL.
#   stop   fast shutdown; nothing to do if it is not running.
#   url    print the DATABASE_URL only.
# Only the URL goes to stdout; diagnostics go to stderr.
# PG_FAST=1 is for throwaway test clusters: fsync=off, and room for the many connections that
# parallel test processes open (each test starts its own server with several workers).
set -euo pipefail

readonly PORT=5432
readonly DATABASE=messaging

die() {
    echo "pg.sh: $*" >&2
    exit 1
}

usage() {
    echo "usage: scripts/pg.sh start|stop|url DIR" >&2
    exit 2
}

# Sets BINDIR to the directory holding initdb: PATH first, then Debian's versioned directories.
find_bindir() {
    local initdb
    # /usr/local/bin/initdb may be a symlink; its real directory also holds pg_isready and psql.
    if initdb=$(command -v initdb); then
        BINDIR=$(dirname "$(realpath "$initdb")")
        return
    fi
    initdb=$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -z $initdb ]]; then
        echo "PostgreSQL server binaries not found: install them with apt-get install postgresql" >&2
        exit 1
    fi
    BINDIR=$(dirname "$initdb")
}

# Client tools come from the server's directory when it has them, to avoid Debian's pg_wrapper.
client() {
    local tool=$1
    shift
    if [[ -x $BINDIR/$tool ]]; then
        "$BINDIR/$tool" "$@"
    else
        "$tool" "$@"
    fi
}

# Runs a server-side command as the cluster's owner: `postgres` when we are root, else ourselves.
# setpriv execs in place (unlike runuser), and `cd /` avoids warnings when our cwd is private to root.
as_owner() {
    if ((EUID == 0)); then
        (cd / && setpriv --reuid=postgres --regid=postgres --init-groups -- "$@")
    else
        "$@"
    fi
}

url() {
    echo "postgresql://postgres@localhost/$DATABASE?host=$DIR"
}

# The server's own conninfo for our psql calls; PG* variables in the environment cannot redirect it.
conninfo() {
    echo "host=$DIR port=$PORT user=postgres dbname=$1"
}

is_running() {
    [[ -f $DATA/PG_VERSION ]] && as_owner "$BINDIR/pg_ctl" status -D "$DATA" >/dev/null 2>&1
}

# As root, the postgres user must be able to reach DIR: grant search (not read) on each ancestor
# that it cannot search, walking down from / because a test below a closed directory always fails.
make_reachable() {
    local path="" part
    local -a parts
    chown -R postgres:postgres "$DIR"
    IFS=/ read -ra parts <<<"${DIR#/}"
    for part in "${parts[@]:0:${#parts[@]}-1}"; do
        path+=/$part
        if ! setpriv --reuid=postgres --regid=postgres --init-groups -- test -x "$path"; then
            echo "pg.sh: chmod o+x $path so that the postgres user can reach $DIR" >&2
            chmod o+x "$path"
        fi
    done
}

wait_ready() {
    local deadline=$((SECONDS + 30))
    until client pg_isready -q -d "$(conninfo postgres)"; do
        if ((SECONDS >= deadline)); then
            tail -n 20 "$DIR/postgres.log" >&2 || true
            die "server in $DIR did not accept connections within 30 s (log: $DIR/postgres.log)"
        fi
        sleep 0.1
    done
}

ensure_database() {
    local exists
    exists=$(client psql -X -q -v ON_ERROR_STOP=1 -d "$(conninfo postgres)" -tA \
        -c "select 1 from pg_database where datname = '$DATABASE'")
    if [[ -z $exists ]]; then
        client psql -X -q -v ON_ERROR_STOP=1 -d "$(conninfo postgres)" \
            -c "create database $DATABASE" >&2
    fi
}

start() {
    mkdir -p "$DIR"
    if ((EUID == 0)); then
        make_reachable
    fi
    if ! is_running; then
        if [[ ! -f $DATA/PG_VERSION ]]; then
            echo "pg.sh: creating a cluster in $DATA" >&2
            # UTF8 whatever the caller's locale; an empty environment would give SQL_ASCII.
            as_owner "$BINDIR/initdb" --no-sync -U postgres --auth=trust \
                --encoding=UTF8 --locale=C.UTF-8 -D "$DATA" >/dev/null
        fi
        local options="-c listen_addresses='' -k '$DIR' -p $PORT"
        if [[ ${PG_FAST:-} == 1 ]]; then
            options+=" -c fsync=off -c max_connections=500"
        fi
        # setsid keeps the server out of the terminal's process group: Ctrl-C on `make run` stops
        # the app, not the cluster that a later `make run` reuses.
        if ! as_owner setsid -w "$BINDIR/pg_ctl" start -w -t 30 -D "$DATA" \
            -l "$DIR/postgres.log" -o "$options" >/dev/null; then
            tail -n 20 "$DIR/postgres.log" >&2 || true
            die "could not start the server in $DIR (log: $DIR/postgres.log)"
        fi
    fi
    wait_ready
    ensure_database
    url
}

stop() {
    if is_running; then
        as_owner "$BINDIR/pg_ctl" stop -D "$DATA" -m fast -w -t 60 >/dev/null
    fi
}

(($# == 2)) || usage
COMMAND=$1
DIR=$(realpath -m -- "$2")
DATA=$DIR/data

# DIR becomes part of a URL query and a libpq host list, and -k is parsed by a shell.
[[ $DIR =~ ^[A-Za-z0-9._/~@-]+$ ]] ||
    die "DIR must contain only letters, digits and . _ / ~ @ - (got $DIR)"
SOCKET=$DIR/.s.PGSQL.$PORT
((${#SOCKET} <= 107)) || die "DIR is too long: the socket path $SOCKET exceeds 107 bytes"

case $COMMAND in
start)
    find_bindir
    start
    ;;
stop)
    if [[ -f $DATA/PG_VERSION ]]; then
        find_bindir
        stop
    fi
    ;;
url) url ;;
*) usage ;;
esac
