#!/usr/bin/env bash
# The README's run command: install what is missing, then the whole stack on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
exec ./scripts/run-stack.sh
