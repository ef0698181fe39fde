#!/usr/bin/env bash
# Install the test dependencies (idempotent, fast when present), then run the whole test suite in
# CUSTOMS_TEST_WORKERS (default 2) pytest-xdist workers, each test module on one worker so that its
# shared fixtures start once. Most tests wait on real servers and processes rather than the CPU, so two
# workers halve the run on two cores; CUSTOMS_TEST_WORKERS=0 runs everything in one process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
exec .venv/bin/pytest -q -n "${CUSTOMS_TEST_WORKERS:-2}" --dist loadscope "$@"
