#!/usr/bin/env bash
# Install the test dependencies (idempotent, fast when present), then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
exec .venv/bin/pytest -q "$@"
