#!/usr/bin/env bash
# OCI images of the agent and the collector, built without pulling from any registry:
#   a Debian 12 root filesystem from Debian's own packages (mmdebstrap, minbase, docs/man/locales left
#   out), with the weightwarden .deb (packaging/deb/build-deb.sh) installed by apt, so the image holds
#   exactly the package a host would: the venv in /opt/weightwarden, the eBPF loader, nft, tc, iptables;
#   then one layer, its config and manifest written by packaging/image/oci.py into an oci-archive.
#   packaging/image/build-images.sh [OUTDIR] [--verify]
# OUTDIR (default dist/): weightwarden-agent-VERSION.oci.tar, weightwarden-collector-VERSION.oci.tar.
# Load with `podman load -i FILE`, `ctr -n k8s.io images import FILE`, or push with
# `skopeo copy oci-archive:FILE docker://REGISTRY/weightwarden-agent:VERSION`.
# --verify: load both into a throwaway podman store and run them (--help; the agent's
# `top --json --count 1` on the eBPF path, with the host's PID namespace and cgroups, as the DaemonSet).
# As root (mmdebstrap's root mode). Slow (minutes): not part of the test suite; prints sizes and times.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
OUT=$(realpath -m "${1:-dist}")
VERIFY=""
for a in "$@"; do [ "$a" = --verify ] && VERIFY=1; done
[ "${1:-}" = --verify ] && OUT=$(realpath -m dist)
[ "$(id -u)" = 0 ] || { echo "build-images: run as root" >&2; exit 1; }
command -v mmdebstrap > /dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends mmdebstrap
mkdir -p "$OUT"
work=$(mktemp -d /tmp/ww-images.XXXXXX)
had_containers_dir=$([ -e /var/lib/containers ] && echo 1 || true)
cleanup() {
  if [ -d "$work/podman" ]; then
    P0=(podman --root "$work/podman/root" --runroot "$work/podman/run" --tmpdir "$work/podman/tmp")
    "${P0[@]}" rm -f -a -t 0 > /dev/null 2>&1 || true
    "${P0[@]}" rmi -f -a > /dev/null 2>&1 || true
    # podman load keeps a blob-info cache in /var/lib/containers whatever --root says: ours goes too.
    [ -n "$had_containers_dir" ] || rm -rf /var/lib/containers
    grep -o " $work/podman[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    # runc's cgroups for the verification containers (cgroupfs driver's default parent), once empty.
    for d in /sys/fs/cgroup/*/libpod_parent; do [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null; done || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

t=$(now)
packaging/deb/build-deb.sh "$work/debs" > /dev/null
deb=$(ls "$work"/debs/weightwarden_*.deb)
version=$(basename "$deb" | cut -d_ -f2)
echo "build-images: $(basename "$deb") in $(took "$t") s" >&2

# The same Debian sources as this machine's apt (a site's mirror applies to the images too).
sources=/etc/apt/sources.list.d/debian.sources
[ -f "$sources" ] || sources=/etc/apt/sources.list
epoch=$(git log -1 --format=%ct 2>/dev/null || date +%s)
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)

rootfs() {  # NAME EXTRA-PACKAGES
  local name=$1 extra=$2 t
  t=$(now)
  SOURCE_DATE_EPOCH=$epoch mmdebstrap --quiet --mode=root --variant=minbase --format=tar \
    --include="ca-certificates${extra:+,$extra}" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook="copy-in $deb /tmp" \
    --customize-hook='chroot "$1" sh -c "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends /tmp/weightwarden_*.deb && rm -f /tmp/*.deb && apt-get clean"' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*' \
    bookworm "$work/$name.rootfs.tar" "$sources" > "$work/$name.mmdebstrap.log" 2>&1 ||
    { tail -30 "$work/$name.mmdebstrap.log" >&2; exit 1; }
  echo "build-images: $name rootfs $(du -m "$work/$name.rootfs.tar" | cut -f1) MiB in $(took "$t") s" >&2
}

image() {  # NAME ROOTFS ENTRYPOINT USER
  local name=$1 fs=$2 entry=$3 user=$4 t
  t=$(now)
  "$REPO/.venv/bin/python" packaging/image/oci.py "$work/$fs.rootfs.tar" "$OUT/$name-$version.oci.tar" \
    --name "$name" --tag "$version" --entrypoint "$entry" --user "$user" --created "$created" \
    --env LANG=C.UTF-8 --env PYTHONDONTWRITEBYTECODE=1 \
    --label org.opencontainers.image.title="$name" --label org.opencontainers.image.version="$version" \
    --label org.opencontainers.image.licenses=Apache-2.0 > "$work/$name.json"
  echo "build-images: $name-$version.oci.tar $(du -m "$OUT/$name-$version.oci.tar" | cut -f1) MiB" \
       "(layer $(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["layer_bytes"] / 2**20))' \
       "$work/$name.json") MiB compressed) in $(took "$t") s" >&2
}

t0=$(now)
# The agent needs its kernel tools (nft, tc from the .deb's Depends; iptables for the fallback backend).
rootfs agent iptables
image weightwarden-agent agent /usr/bin/weightwarden-agent 0:0
# The collector runs unprivileged (the manifests' user); the same package, another entry point.
rootfs collector ""
image weightwarden-collector collector /usr/bin/weightwarden-collector 65532:65532
echo "build-images: both images in $(took "$t0") s (after the .deb)" >&2

if [ -n "$VERIFY" ]; then
  P=(podman --root "$work/podman/root" --runroot "$work/podman/run" --tmpdir "$work/podman/tmp" --cgroup-manager cgroupfs
     --events-backend none --runtime "$(command -v runc || echo /usr/sbin/runc)")
  lim=(--ulimit nofile=8192:8192 --ulimit nproc=8192:8192)   # see tests/helpers/containers.py
  for name in weightwarden-agent weightwarden-collector; do
    "${P[@]}" load -q -i "$OUT/$name-$version.oci.tar" > /dev/null
    "${P[@]}" run --rm "${lim[@]}" --network none "localhost/$name:$version" --help > "$work/help" ||
      { echo "build-images: $name --help failed in the image" >&2; exit 1; }
    grep -q "usage: weightwarden-" "$work/help"
  done
  [ "$("${P[@]}" run --rm "${lim[@]}" --network none --entrypoint id "localhost/weightwarden-collector:$version" -u)" = 65532 ]
  # The agent as the DaemonSet runs it: host PID namespace, the node's cgroups, its capabilities only.
  "${P[@]}" run --rm "${lim[@]}" --network none --pid host --cap-drop all \
    --cap-add NET_ADMIN,NET_RAW,SYS_PTRACE,DAC_READ_SEARCH,SYS_ADMIN \
    -v /sys/fs/cgroup:/sys/fs/cgroup:ro -v /sys/fs/bpf:/sys/fs/bpf "localhost/weightwarden-agent:$version" \
    top --json --count 1 --interval 1 > "$work/top.json" 2> "$work/top.err" ||
    { tail -5 "$work/top.err" >&2; echo "build-images: the agent's top failed in its image" >&2; exit 1; }
  attribution=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])["attribution"])' "$work/top.json")
  echo "build-images: verified: both --help; collector runs as 65532; agent top in its image: $attribution path" >&2
  [ "$attribution" = ebpf ] || { tail -5 "$work/top.err" >&2; exit 1; }
fi
