#!/usr/bin/env bash
# make test-e2e: the web client in a real browser (scripts/e2e.mjs says what it checks).
# Installs what it needs when missing: Debian's chromium (apt-get, as root or with sudo) and
# playwright-core from npm into .data/e2e (nothing global; Playwright's own browser download is
# never used). Builds the release binary, starts a throwaway PostgreSQL that the trap always
# stops, and writes the screenshots to .data/e2e/shots/ (`SHOTS=docs/img make test-e2e` refreshes
# the README's).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() {
    echo "test-e2e: $*" >&2
}

as_root() {
    if ((EUID == 0)); then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        log "need root to run: $*"
        return 1
    fi
}

# An emoji font, so the reactions in the screenshots are drawn rather than boxes.
packages=()
[[ -x /usr/bin/chromium ]] || packages+=(chromium)
dpkg -s fonts-noto-color-emoji >/dev/null 2>&1 || packages+=(fonts-noto-color-emoji)
if ((${#packages[@]} > 0)); then
    log "installing ${packages[*]}"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${packages[@]}"
fi
command -v npm >/dev/null || {
    log "installing npm"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends npm
}
modules=.data/e2e
if ! grep -qs '"version": "1.61.1"' "$modules/node_modules/playwright-core/package.json"; then
    log "installing playwright-core into $modules"
    mkdir -p "$modules"
    # Pinned: 1.61 is the newest that runs on Debian 12's Node 18 (later ones need Node 20).
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --prefix "$modules" --no-audit --no-fund --silent playwright-core@1.61.1
fi

cargo build --release
BIN=${CARGO_TARGET_DIR:-target}/release/messaging

pg_tmp=$(mktemp -d)
trap 'scripts/pg.sh stop "$pg_tmp" || true; rm -rf "$pg_tmp"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP
DATABASE_URL=$(PG_FAST=1 scripts/pg.sh start "$pg_tmp")
export DATABASE_URL
"$BIN" migrate up >/dev/null

export SHOTS=${SHOTS:-$modules/shots}
mkdir -p "$SHOTS"
BIN=$BIN NODE_PATH=$PWD/$modules/node_modules node scripts/e2e.mjs
