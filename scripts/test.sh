#!/usr/bin/env bash
# The README's test command: install what is missing, lint and type-check, then run the whole suite.
# Extra arguments go to pytest (e.g. ./scripts/test.sh -k collector).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
echo "test.sh: ruff" >&2
.venv/bin/ruff check weightwarden tests bench
echo "test.sh: mypy --strict" >&2
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
