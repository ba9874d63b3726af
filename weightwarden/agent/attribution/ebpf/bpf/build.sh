#!/usr/bin/env bash
# Build the eBPF attribution programs and their loader for this machine's kernel (CO-RE:
# vmlinux.h is generated from the kernel's own BTF, so no kernel headers are needed).
# Output: weightwarden/agent/attribution/ebpf/bpf/build/weightwarden-bpf. Rebuilds only when a source is newer.
# Needs clang, bpftool, libbpf-dev and a C compiler (scripts/bootstrap.sh installs them).
set -euo pipefail
cd "$(dirname "$0")"
out=build
bin=$out/weightwarden-bpf
if [ -x "$bin" ] && [ "$bin" -nt weightwarden.bpf.c ] && [ "$bin" -nt loader.c ] && [ "$bin" -nt ww.h ] \
   && [ "$bin" -nt build.sh ]; then
  exit 0
fi
[ -r /sys/kernel/btf/vmlinux ] || { echo "build.sh: no /sys/kernel/btf/vmlinux (kernel without BTF)" >&2; exit 1; }
case "$(uname -m)" in
  x86_64) arch=x86 ;; aarch64) arch=arm64 ;; ppc64le) arch=powerpc ;; s390x) arch=s390 ;; riscv64) arch=riscv ;;
  *) arch="$(uname -m)" ;;
esac
mkdir -p "$out"
bpftool btf dump file /sys/kernel/btf/vmlinux format c > "$out/vmlinux.h"
clang -g -O2 -Wall -target bpf -D__TARGET_ARCH_"$arch" -I"$out" -I. -c weightwarden.bpf.c -o "$out/weightwarden.bpf.o"
bpftool gen skeleton "$out/weightwarden.bpf.o" name weightwarden_bpf > "$out/weightwarden.skel.h"
cc -O2 -Wall -Wextra -I"$out" -I. loader.c -o "$bin.tmp" -lbpf
mv "$bin.tmp" "$bin"
