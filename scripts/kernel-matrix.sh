#!/usr/bin/env bash
# CI stage: the kernel matrix (tests/kernels/run.py). Boots Debian's 6.1 and 6.12 kernels in QEMU, and
# checks this host's kernel, loading the one CO-RE object and running the smoke test on each; exits
# non-zero when a kernel that must load the object does not. ~1-2 minutes here (20 s of VMs, plus the
# first download of two kernel packages, 61 MB, kept in $WW_KERNEL_CACHE or ~/.cache/weightwarden-kernels).
# Installs what it needs (as scripts/bootstrap.sh does); arguments go to run.py (e.g. --json out.json).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
./scripts/bootstrap.sh
missing=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || missing+=(qemu-system-x86)
# the guest's shell and tools: a busybox that needs no libraries
case "$(ldd /bin/busybox 2>&1 || true)" in *"not a dynamic executable"*) ;; *) missing+=(busybox-static) ;; esac
if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "kernel-matrix: missing packages ${missing[*]}; run as root or install them" >&2
    exit 2
  fi
  echo "kernel-matrix: installing ${missing[*]}" >&2
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# The kernel packages are found by name in Debian's lists: fetch them once if apt knows none yet.
apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1 || apt-get update -q
exec .venv/bin/python tests/kernels/run.py "$@"
