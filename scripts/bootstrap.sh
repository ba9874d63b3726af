#!/usr/bin/env bash
# Make a fresh Debian 12 machine (as root) ready to run and test weightwarden:
# the kernel tools and peers the tests drive for real, then a virtualenv.
# Idempotent: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"

# command:package pairs; the command tells us whether the package is there.
needed=(
  ip:iproute2 tc:iproute2 nft:nftables iptables:iptables conntrack:conntrack
  mosquitto:mosquitto mosquitto_sub:mosquitto-clients iperf3:iperf3 nethogs:nethogs
  curl:curl bindfs:bindfs fio:fio
)
missing=()
for pair in "${needed[@]}"; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair##*:}")
done
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
# PostgreSQL: the collector's scale-out tests start a throwaway cluster.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v runuser >/dev/null 2>&1 || missing+=(util-linux)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-venv)

if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "bootstrap: missing packages ${missing[*]}; run as root or install them" >&2
    exit 1
  fi
  echo "bootstrap: installing ${missing[*]}" >&2
  apt-get update -q
  # iperf3 asks whether to start a daemon; noninteractive answers no.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u)
  # Debian starts the packaged services; the project runs its own, on its own ports.
  for svc in mosquitto postgresql iperf3; do
    command -v systemctl >/dev/null 2>&1 && systemctl disable --now "$svc" >/dev/null 2>&1 || true
  done
fi

if [ ! -x .venv/bin/python ] || [ pyproject.toml -nt .venv/.installed ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  touch .venv/.installed
fi
