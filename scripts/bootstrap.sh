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
  curl:curl openssl:openssl
  # The console's browser tests: Debian's chromium and its driver (selenium never downloads one).
  chromium:chromium chromedriver:chromium-driver
  clang:clang bpftool:bpftool cc:gcc
  # The file watcher's tests: a real FUSE filesystem, and io_uring reads.
  bindfs:bindfs fio:fio
  # Real containers in the container tests: podman with runc (crun refuses hybrid cgroup hosts).
  podman:podman runc:runc
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
# The eBPF attribution programs and their loader are built here, against this kernel (CO-RE).
[ -e /usr/include/bpf/libbpf.h ] || missing+=(libbpf-dev)

if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "bootstrap: missing packages ${missing[*]}; run as root or install them" >&2
    exit 1
  fi
  echo "bootstrap: installing ${missing[*]}" >&2
  # The packages we add must not start their services (mosquitto, postgresql, iperf3): the project
  # runs its own, on its own ports. policy-rc.d says so for this install only; services that were
  # on the host before are never stopped, disabled or restarted, and an existing policy-rc.d is kept.
  made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# weightwarden bootstrap: start nothing during this install\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  trap '[ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get update -q
  # iperf3 asks whether to start a daemon; noninteractive answers no.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u)
  [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
  made_policy=""
fi

if [ ! -x .venv/bin/python ] || [ pyproject.toml -nt .venv/.installed ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  touch .venv/.installed
fi

# eBPF attribution: vmlinux.h from the kernel's BTF, the programs, the loader. If this kernel or
# machine cannot build them, the agent still runs, on the NFQUEUE path, and says so at start.
if ! weightwarden/agent/attribution/ebpf/bpf/build.sh; then
  echo "bootstrap: the eBPF loader could not be built; the agent will use NFQUEUE attribution" \
       "(this network namespace only)" >&2
fi
weightwarden/agent/files/ebpf/bpf/build.sh || echo "bootstrap: the file-read sensor could not be built; reads of the weights will be measured from /proc" >&2
