#!/usr/bin/env bash
# The README's test command: install what is missing, then run the whole suite.
# Extra arguments go to pytest (e.g. ./scripts/test.sh -k collector).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
