#!/usr/bin/env bash
# Build the file-read programs (CO-RE) and their loader, once, for every kernel, with the attribution
# sensor's build (build_sensor, weightwarden/agent/ebpf/bpf/build-sensor.sh): the kernel's types come
# from the generic header committed beside that sensor (attribution/ebpf/bpf/vmlinux_<arch>.h), and
# libbpf relocates them to the running kernel's BTF at load time. Output:
# weightwarden/agent/files/ebpf/bpf/build/weightwarden-files-bpf (the skeleton embeds the object).
# Rebuilds only when a source or an option changes. Built into the wheel by setup.py
# (pyproject [tool.weightwarden.native]) and in place by scripts/bootstrap.sh.
# Needs clang, bpftool, libbpf-dev and a C compiler (scripts/bootstrap.sh installs them).
#
# Options (environment), the attribution sensor's:
#   WW_VMLINUX_H=host   take the kernel's types from this machine's /sys/kernel/btf/vmlinux instead
#                       (the only way on an architecture with no committed header, chosen there by itself)
#   WW_STATIC=1         link the loader statically (libbpf.a, libelf.a, libz.a from the -dev packages)
set -euo pipefail
cd "$(dirname "$0")"
. ../../../ebpf/bpf/build-sensor.sh
build_sensor files weightwarden-files-bpf ../../../attribution/ebpf/bpf wf.h
