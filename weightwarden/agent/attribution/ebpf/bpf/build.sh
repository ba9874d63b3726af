#!/usr/bin/env bash
# Build the eBPF attribution programs (CO-RE) and their loader, once, for every kernel: the kernel's
# types come from a generic header committed here (vmlinux_<arch>.h), and libbpf relocates them to the
# running kernel's BTF at load time, so neither this machine's kernel nor its headers matter.
# Output: weightwarden/agent/attribution/ebpf/bpf/build/weightwarden-bpf (the skeleton embeds the object;
# build/weightwarden.bpf.o is kept for tests/kernels/). Rebuilds only when a source or an option changes.
# Needs clang, bpftool, libbpf-dev and a C compiler (scripts/bootstrap.sh installs them).
# The build itself is both sensors' build_sensor (weightwarden/agent/ebpf/bpf/build-sensor.sh).
#
# Options (environment):
#   WW_VMLINUX_H=host   take the kernel's types from this machine's /sys/kernel/btf/vmlinux instead
#                       (the only way on an architecture with no committed header, chosen there by itself)
#   WW_STATIC=1         link the loader statically (libbpf.a, libelf.a, libz.a from the -dev packages):
#                       one binary that runs on any x86-64 Linux, whatever its libbpf
set -euo pipefail
cd "$(dirname "$0")"
. ../../../ebpf/bpf/build-sensor.sh
build_sensor weightwarden weightwarden-bpf . ww.h
