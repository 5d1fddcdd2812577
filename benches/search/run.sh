#!/usr/bin/env bash
# Message search's query plans on 1,000,000 messages over 1,000 chats (BENCHMARKS.md, "Search plans"), run by hand:
#   make build && benches/search/run.sh > search-plans.txt
# It starts its own durable PostgreSQL in a temporary directory (scripts/pg.sh without PG_FAST: fsync on, default
# settings), migrates it with the release binary (CARGO_TARGET_DIR is honoured), generates the data (data.sql,
# about two minutes) and prints EXPLAIN (ANALYZE, BUFFERS) of the server's two search statements (plans.sql).
# The trap stops the cluster and removes its directory however the script ends.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
binary=${CARGO_TARGET_DIR:-$repo/target}/release/messaging
if [[ ! -x $binary ]]; then
    echo "run.sh: $binary not found: run make build first" >&2
    exit 1
fi

dir=$(mktemp -d)
trap '"$repo/scripts/pg.sh" stop "$dir" || true; rm -rf "$dir"' EXIT
url=$(env -u PG_FAST "$repo/scripts/pg.sh" start "$dir")
DATABASE_URL=$url "$binary" migrate up >&2
started=$SECONDS
psql -X -q -v ON_ERROR_STOP=1 -d "$url" -f "$repo/benches/search/data.sql" >&2
echo "Data generated in $((SECONDS - started)) s." >&2

echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$repo" rev-parse --short HEAD), $(nproc) CPUs," \
    "PostgreSQL $(psql -X -At -d "$url" -c 'SHOW server_version'), default settings (fsync on)"
psql -X -At -d "$url" -c "SELECT 'messages: ' || count(*) || ', table ' || pg_size_pretty(pg_table_size('messages'))
                                 || ', messages_words_idx ' || pg_size_pretty(pg_relation_size('messages_words_idx'))
                          FROM messages"
psql -X -d "$url" -f "$repo/benches/search/plans.sql"
