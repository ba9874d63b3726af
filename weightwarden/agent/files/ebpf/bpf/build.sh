#!/usr/bin/env bash
# Build the file-read programs (CO-RE) and their loader, once, for every kernel, as the attribution
# sensor's build.sh does: the kernel's types come from the generic header committed beside that sensor
# (attribution/ebpf/bpf/vmlinux_<arch>.h), and libbpf relocates them to the running kernel's BTF at load
# time. Output: weightwarden/agent/files/ebpf/bpf/build/weightwarden-files-bpf (the skeleton embeds the
# object). Rebuilds only when a source or an option changes. Built into the wheel by setup.py
# (pyproject [tool.weightwarden.native]) and in place by scripts/bootstrap.sh.
# Needs clang, bpftool, libbpf-dev and a C compiler (scripts/bootstrap.sh installs them).
#
# Options (environment), the attribution sensor's:
#   WW_VMLINUX_H=host   take the kernel's types from this machine's /sys/kernel/btf/vmlinux instead
#                       (the only way on an architecture with no committed header, chosen there by itself)
#   WW_STATIC=1         link the loader statically (libbpf.a, libelf.a, libz.a from the -dev packages)
set -euo pipefail
cd "$(dirname "$0")"
out=build
bin=$out/weightwarden-files-bpf
case "$(uname -m)" in
  x86_64) arch=x86 ;; aarch64) arch=arm64 ;; ppc64le) arch=powerpc ;; s390x) arch=s390 ;; riscv64) arch=riscv ;;
  *) arch="$(uname -m)" ;;
esac
types="${WW_VMLINUX_H:-generic}"
case "$types" in
  generic)
    if [ -e "../../../attribution/ebpf/bpf/vmlinux_$arch.h" ]; then
      header="../../../attribution/ebpf/bpf/vmlinux_$arch.h"
    else
      echo "build.sh: no generic vmlinux_$arch.h for this architecture: using this kernel's BTF" >&2
      types=host
    fi ;;
  host) ;;
  *) echo "build.sh: WW_VMLINUX_H must be 'generic' or 'host', not '$types'" >&2; exit 2 ;;
esac
static="${WW_STATIC:-0}"
case "$static" in 0|1) ;; *) echo "build.sh: WW_STATIC must be 0 or 1, not '$static'" >&2; exit 2 ;; esac
config="types=$types static=$static"

fresh=1
[ -x "$bin" ] && [ "$(cat "$out/.config" 2>/dev/null)" = "$config" ] || fresh=0
for src in files.bpf.c loader.c wf.h build.sh ${header:+"$header"}; do
  [ "$fresh" = 1 ] && [ "$bin" -nt "$src" ] || fresh=0
done
[ "$fresh" = 1 ] && exit 0

mkdir -p "$out"
if [ "$types" = host ]; then
  [ -r /sys/kernel/btf/vmlinux ] || { echo "build.sh: no /sys/kernel/btf/vmlinux (kernel without BTF)" >&2; exit 1; }
  bpftool btf dump file /sys/kernel/btf/vmlinux format c > "$out/vmlinux.h.tmp"
else
  cp "$header" "$out/vmlinux.h.tmp"
fi
mv "$out/vmlinux.h.tmp" "$out/vmlinux.h"
clang -g -O2 -Wall -target bpf -D__TARGET_ARCH_"$arch" -I"$out" -I. -c files.bpf.c -o "$out/files.bpf.o"
bpftool gen skeleton "$out/files.bpf.o" name files_bpf > "$out/files.skel.h"
if [ "$static" = 1 ]; then
  cc -O2 -Wall -Wextra -I"$out" -I. loader.c -o "$bin.tmp" -static -lbpf -lelf -lz
else
  cc -O2 -Wall -Wextra -I"$out" -I. loader.c -o "$bin.tmp" -lbpf
fi
mv "$bin.tmp" "$bin"
echo "$config" > "$out/.config"
