#!/usr/bin/env bash
# The demo broker's configuration (scripts/run-stack.sh): Mosquitto on loopback only, no anonymous
# clients, one generated password per account, client ids bound to the accounts, and the ACL of
# docs/events.md (each agent writes only its own subtree; the collector reads).
#   scripts/demo-broker.sh DIR PORT AGENT_ID
# writes DIR/mosquitto.conf, DIR/broker/{passwd,acl} and the passwords DIR/broker/{agent,collector}.pw
# (0600, made once and kept: a restarted demo keeps its sessions). Prints nothing; exit 0.
set -euo pipefail
dir=$1 port=$2 agent=$3
umask 077
mkdir -p "$dir/broker"
for who in agent collector; do
  [ -s "$dir/broker/$who.pw" ] || od -An -N24 -tx1 /dev/urandom | tr -d ' \n' > "$dir/broker/$who.pw"
done
# mosquitto_passwd -U hashes a file of user:password lines in place (no password on a command line).
printf '%s:%s\nweightwarden-collector:%s\n' "$agent" "$(cat "$dir/broker/agent.pw")" \
  "$(cat "$dir/broker/collector.pw")" > "$dir/broker/passwd"
"$(command -v mosquitto_passwd || echo /usr/bin/mosquitto_passwd)" -U "$dir/broker/passwd"
cat > "$dir/broker/acl" <<ACL
pattern write weightwarden/v1/%u/#
pattern read weightwarden/policy/v1/#
user weightwarden-collector
topic read weightwarden/v1/#
topic read \$SYS/broker/uptime
ACL
# 'user': started as root, Mosquitto would switch to the mosquitto user, which may not be able to
# read these files or write in $dir; it would then save no sessions, and a restart would drop events.
cat > "$dir/mosquitto.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous false
password_file $dir/broker/passwd
acl_file $dir/broker/acl
use_username_as_clientid true
user $(id -un)
persistence true
persistence_location $dir/
autosave_interval 10
max_queued_messages 1000000
max_packet_size 1052672
CONF
