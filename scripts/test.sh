#!/usr/bin/env bash
# The README's test command: install what is missing, lint and type-check, then run the whole suite.
# Extra arguments go to one pytest run (e.g. ./scripts/test.sh -k collector).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
echo "test.sh: ruff" >&2
.venv/bin/ruff check weightwarden tests bench
echo "test.sh: mypy --strict" >&2
.venv/bin/mypy
if (($#)); then
  exec .venv/bin/python -m pytest "$@"
fi
# The whole suite as two runs side by side on this 2-core budget: the privileged tests one after another
# (they share the host's kernel: netfilter, cgroups, the sensors' timing), the rest (the collector's
# databases and brokers, pure logic) beside them. Short base directories: podman refuses a runroot
# longer than 50 characters.
base=$(mktemp -d /tmp/wwt.XXXXXX)
trap 'rm -rf "$base"' EXIT
.venv/bin/python -m pytest -m "not privileged" --basetemp "$base/u" -p no:cacheprovider >"$base/rest.log" 2>&1 &
rest=$!
echo "test.sh: the tests that are not privileged run beside these (their report follows)" >&2
set +e
.venv/bin/python -m pytest -m privileged --basetemp "$base/p"
privileged=$?
wait "$rest"
others=$?
set -e
echo "test.sh: the tests that are not privileged:" >&2
cat "$base/rest.log"
# pytest exits 5 when a selection is empty (e.g. -m deselected everything): not a failure of the other half.
((privileged == 5)) && privileged=0
((others == 5)) && others=0
echo "test.sh: privileged exit $privileged, others exit $others" >&2
exit $((privileged || others))
