#!/usr/bin/env bash
# Build the file-read programs and their loader for this machine's kernel (CO-RE: vmlinux.h is
# generated from the kernel's own BTF, so no kernel headers are needed), as the attribution
# sensor's build.sh does. Output: weightwarden/agent/files/ebpf/bpf/build/weightwarden-files-bpf.
# Rebuilds only when a source is newer. Needs clang, bpftool, libbpf-dev and a C compiler.
set -euo pipefail
cd "$(dirname "$0")"
out=build
bin=$out/weightwarden-files-bpf
if [ -x "$bin" ] && [ "$bin" -nt files.bpf.c ] && [ "$bin" -nt loader.c ] && [ "$bin" -nt wf.h ] \
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
clang -g -O2 -Wall -target bpf -D__TARGET_ARCH_"$arch" -I"$out" -I. -c files.bpf.c -o "$out/files.bpf.o"
bpftool gen skeleton "$out/files.bpf.o" name files_bpf > "$out/files.skel.h"
cc -O2 -Wall -Wextra -I"$out" -I. loader.c -o "$bin.tmp" -lbpf
mv "$bin.tmp" "$bin"
