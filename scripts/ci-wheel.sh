#!/usr/bin/env bash
# CI: build the sdist and, from it, the wheel (as a release would), install the wheel into a clean
# venv (dependencies from the package index) and check it works from there: every module imports,
# every command's --help, `agent top --json --count 1` on the eBPF path (the loader from the wheel),
# and collector run + agent run against a real Mosquitto (tests/packaging/smoke.py). As root.
#   scripts/ci-wheel.sh [OUTDIR]    # keeps the sdist and wheel in OUTDIR (default: a temporary folder)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
work=$(mktemp -d /tmp/ww-ci-wheel.XXXXXX)
trap 'rm -rf "$work"' EXIT
out=${1:-$work/dist}
mkdir -p "$out"

# The tree as git knows it (tracked and new, not ignored): no build leftovers, no .venv.
git ls-files -co --exclude-standard -z | while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done \
  | tar --null -T - -cf - | tar -xf - -C "$work" --one-top-level=src
echo "ci-wheel: building the sdist and the wheel" >&2
t0=$(date +%s)
"$REPO/.venv/bin/python" -m build --outdir "$out" "$work/src" > "$work/build.log" 2>&1 || { tail -50 "$work/build.log"; exit 1; }
sdist=$(ls "$out"/weightwarden-*.tar.gz)
wheel=$(ls "$out"/weightwarden-*.whl)
echo "ci-wheel: $(basename "$sdist"), $(basename "$wheel") ($(du -k "$wheel" | cut -f1) KiB) in $(( $(date +%s) - t0 )) s" >&2
# The sdist carries what the wheel's native build needs.
listing=$(tar -tzf "$sdist")
for f in setup.py weightwarden/agent/attribution/ebpf/bpf/build.sh weightwarden/agent/attribution/ebpf/bpf/loader.c \
         weightwarden/agent/attribution/ebpf/bpf/weightwarden.bpf.c weightwarden/agent/files/ebpf/bpf/build.sh \
         weightwarden/agent/files/ebpf/bpf/loader.c weightwarden/agent/files/ebpf/bpf/files.bpf.c \
         weightwarden/agent/ebpf/bpf/build-sensor.sh; do
  grep -q "/$f\$" <<< "$listing" || { echo "ci-wheel: $f is not in the sdist" >&2; exit 1; }
done

python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q "$wheel" > "$work/pip.log" 2>&1 || { tail -30 "$work/pip.log"; exit 1; }
site=$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("platlib"))')
cd "$work"   # nothing from the source tree on the path
"$work/venv/bin/python" -P "$REPO/tests/packaging/smoke.py" --prefix "$site" --bin "$work/venv/bin" --all-helps \
  --ebpf --stack
echo "ci-wheel: passed" >&2
