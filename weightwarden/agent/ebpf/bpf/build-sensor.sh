# Sourced by each eBPF sensor's build.sh (attribution/ebpf/bpf/, files/ebpf/bpf/): the one build both
# share. `build_sensor PROG BIN VMLINUX_DIR [SOURCE...]`, run in the sensor's bpf/ folder, compiles
# PROG.bpf.c (CO-RE) into build/PROG.bpf.o, its skeleton build/PROG.skel.h (name PROG_bpf), and links
# loader.c into build/BIN. The kernel's types come from the generic header VMLINUX_DIR/vmlinux_<arch>.h,
# and libbpf relocates them to the running kernel's BTF at load time, so neither this machine's kernel
# nor its headers matter. Rebuilds only when an option, PROG.bpf.c, loader.c, a SOURCE (the sensor's
# own headers), its build.sh, this file or the header changes.
# Needs clang, bpftool, libbpf-dev and a C compiler (scripts/bootstrap.sh installs them).
#
# Options (environment):
#   WW_VMLINUX_H=host   take the kernel's types from this machine's /sys/kernel/btf/vmlinux instead
#                       (the only way on an architecture with no committed header, chosen there by itself)
#   WW_STATIC=1         link the loader statically (libbpf.a, libelf.a, libz.a from the -dev packages):
#                       one binary that runs on any x86-64 Linux, whatever its libbpf
ww_build_common="${BASH_SOURCE[0]}"
ww_common_dir="$(cd "$(dirname "$ww_build_common")" && pwd)"  # loader_common.h, included by each loader.c

build_sensor() {
  local prog="$1" bin="build/$2" vmlinux_dir="$3"
  shift 3
  local out=build arch header="" types static config fresh src
  case "$(uname -m)" in
    x86_64) arch=x86 ;; aarch64) arch=arm64 ;; ppc64le) arch=powerpc ;; s390x) arch=s390 ;; riscv64) arch=riscv ;;
    *) arch="$(uname -m)" ;;
  esac
  types="${WW_VMLINUX_H:-generic}"
  case "$types" in
    generic)
      if [ -e "$vmlinux_dir/vmlinux_$arch.h" ]; then
        header="$vmlinux_dir/vmlinux_$arch.h"
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
  for src in "$prog.bpf.c" loader.c "$@" build.sh "$ww_build_common" "$ww_common_dir/loader_common.h" ${header:+"$header"}; do
    [ "$fresh" = 1 ] && [ "$bin" -nt "$src" ] || fresh=0
  done
  [ "$fresh" = 1 ] && return 0

  mkdir -p "$out"
  if [ "$types" = host ]; then
    [ -r /sys/kernel/btf/vmlinux ] || { echo "build.sh: no /sys/kernel/btf/vmlinux (kernel without BTF)" >&2; exit 1; }
    bpftool btf dump file /sys/kernel/btf/vmlinux format c > "$out/vmlinux.h.tmp"
  else
    cp "$header" "$out/vmlinux.h.tmp"
  fi
  mv "$out/vmlinux.h.tmp" "$out/vmlinux.h"
  clang -g -O2 -Wall -target bpf -D__TARGET_ARCH_"$arch" -I"$out" -I. -c "$prog.bpf.c" -o "$out/$prog.bpf.o"
  bpftool gen skeleton "$out/$prog.bpf.o" name "${prog}_bpf" > "$out/$prog.skel.h"
  if [ "$static" = 1 ]; then
    cc -O2 -Wall -Wextra -I"$out" -I. -I"$ww_common_dir" loader.c -o "$bin.tmp" -static -lbpf -lelf -lz
  else
    cc -O2 -Wall -Wextra -I"$out" -I. -I"$ww_common_dir" loader.c -o "$bin.tmp" -lbpf
  fi
  mv "$bin.tmp" "$bin"
  echo "$config" > "$out/.config"
}
