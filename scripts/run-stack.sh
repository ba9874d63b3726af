#!/usr/bin/env bash
# ./scripts/run.sh (make run): the whole stack on this machine, with embedded defaults.
#   - Mosquitto on 127.0.0.1:${WW_MQTT_PORT:-1883} (started here unless one already answers there), with
#     a generated password per account and client ids bound to them (scripts/demo-broker.sh),
#   - the collector on SQLite in .run/collector.db,
#   - the agent with the demo policy: weightwarden/policies/monitor-only.yaml (it measures and reports, it
#     never throttles) watching demo weights it makes in .run/demo-weights
#     (set WW_POLICY=weightwarden/policies/single-gpu-host.yaml to try caps).
# New alerts are printed here as they appear; ./scripts/demo-theft.sh steals the demo weights.
# Ctrl-C stops all three and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN="${WW_RUN_DIR:-$PWD/.run}"
mkdir -p "$RUN"
PORT=${WW_MQTT_PORT:-1883}
DB="sqlite:///$RUN/collector.db"
# The demo's weights (random bytes, made once) and a policy that watches them: monitor-only plus
# spec.weights, so reading and uploading them raises an alert (scripts/demo-theft.sh does both).
WEIGHTS="$RUN/demo-weights"
mkdir -p "$WEIGHTS"
[ -s "$WEIGHTS/model-00001-of-00001.safetensors" ] ||
  head -c 64M /dev/urandom > "$WEIGHTS/model-00001-of-00001.safetensors"
sed -e 's/^  name: monitor-only$/  name: demo-monitor-only/' weightwarden/policies/monitor-only.yaml > "$RUN/demo-policy.yaml"
printf '  weights:\n    paths: ["%s/*.safetensors"]\n' "$WEIGHTS" >> "$RUN/demo-policy.yaml"
POLICY=${WW_POLICY:-$RUN/demo-policy.yaml}
BIN="$PWD/.venv/bin"
pids=()
cleanup() {
  trap - EXIT INT TERM
  [ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  # A demo leaves nothing in the kernel (a deployed agent keeps its rules when it stops).
  "$BIN/weightwarden-agent" enforce clear --state-dir "$RUN/agent" > /dev/null 2>&1 || true
  echo "stopped. Alerts stay in $RUN/collector.db"
}
# Ctrl-C (or a TERM) is how the demo ends: a clean stop, exit 0. A component that dies is exit 1.
trap cleanup EXIT
trap 'cleanup; exit 0' INT TERM

# The broker: loopback only, a generated password per account, client ids bound to the accounts
# (scripts/demo-broker.sh; docs/events.md says why). The agent's account is its host id.
AGENT_ID=$("$BIN/python" -c 'from weightwarden.events import default_host_id; print(default_host_id())')
"$PWD/scripts/demo-broker.sh" "$RUN" "$PORT" "$AGENT_ID"
if ! (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
  "$(command -v mosquitto || echo /usr/sbin/mosquitto)" -c "$RUN/mosquitto.conf" > "$RUN/mosquitto.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
else
  echo "a broker already answers on 127.0.0.1:$PORT: using it as it is (not the demo's own, which binds client ids to generated passwords)" >&2
fi
"$BIN/weightwarden-collector" run --broker "mqtt://weightwarden-collector@127.0.0.1:$PORT?password_file=$RUN/broker/collector.pw" \
  --db "$DB" 2> "$RUN/collector.log" &
pids+=($!)
"$BIN/weightwarden-agent" run --policy "$POLICY" --sink "mqtt://$AGENT_ID@127.0.0.1:$PORT?password_file=$RUN/broker/agent.pw" --state-dir "$RUN/agent" \
  --heartbeat-interval 10 > /dev/null 2> "$RUN/agent.log" &
pids+=($!)

cat <<BANNER
weightwarden is running: Mosquitto on 127.0.0.1:$PORT, collector on $RUN/collector.db, agent with $POLICY.
  alerts:  $BIN/weightwarden-collector alerts list --db $DB   (new ones are printed below)
  hosts:   $BIN/weightwarden-collector hosts --db $DB
  uploads: $BIN/weightwarden-agent top
  logs:    $RUN/{agent,collector,mosquitto}.log
  demo:    ./scripts/demo-theft.sh   (reads and uploads the demo weights in $WEIGHTS: an alert appears below)
BANNER
seen=""
while sleep 2; do
  for p in "${pids[@]}"; do
    kill -0 "$p" 2>/dev/null && continue
    # Ctrl-C reaches every component too: one that stopped cleanly was asked to, and so are we.
    code=0; wait "$p" || code=$?
    [ "$code" = 0 ] && exit 0
    echo "a component stopped (exit $code); see $RUN/*.log" >&2; exit 1
  done
  while IFS=$'\t' read -r id line; do
    case " $seen " in *" $id "*) ;; *) seen="$seen $id"; echo "ALERT $line";; esac
  done < <("$BIN/weightwarden-collector" alerts list --json --db "$DB" 2>/dev/null | "$BIN/python" -c '
import json, sys
from weightwarden.textsafe import visible  # a title names processes: their control characters shown as escapes
for a in json.load(sys.stdin):
    print(a["id"] + "\t" + a["severity"].upper() + "  " + visible(a["host"]) + "  " + visible(a["title"]))' || true)
done
