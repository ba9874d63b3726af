#!/usr/bin/env bash
# Build the Debian packages (dpkg-deb, no debhelper needed):
#   weightwarden            the software in a venv at /opt/weightwarden (Debian's python3, the wheel and
#                           its dependencies), /usr/bin/weightwarden-{agent,collector}, the agent's unit
#                           (enabled), /etc/weightwarden/policy.yaml (a conffile: monitor-only) and policy.d/
#   weightwarden-collector  the collector's unit (enabled), run as the system user _weightwarden
#   packaging/deb/build-deb.sh [OUTDIR [WHEEL]]     (default: dist/, a wheel built from this tree)
# Needs: the repo's .venv (scripts/bootstrap.sh), /usr/bin/python3 (Debian's), dpkg-deb; the package
# index for the wheel's dependencies.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
OUT=$(realpath -m "${1:-dist}")
WHEEL=${2:-}
VENV=/opt/weightwarden
PY=/usr/bin/python3   # Debian's interpreter: the venv must not point into a developer's own Python
mkdir -p "$OUT"
work=$(mktemp -d /tmp/ww-deb.XXXXXX)
trap 'rm -rf "$work"' EXIT

if [ -z "$WHEEL" ]; then
  "$REPO/.venv/bin/python" -m pip wheel --no-deps -q -w "$work/wheel" "$REPO" > "$work/wheel.log" 2>&1 ||
    { tail -40 "$work/wheel.log"; exit 1; }
  WHEEL=$(ls "$work"/wheel/weightwarden-*.whl)
fi
version=$(basename "$WHEEL" | cut -d- -f2)
arch=$(dpkg --print-architecture)
pyver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
pynext=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1] + 1}")')

# -- weightwarden: the venv, built where it will live, inside the package root --------------------
root="$work/weightwarden"
"$PY" -m venv --without-pip "$root$VENV"
"$REPO/.venv/bin/python" -m pip --python "$root$VENV/bin/python" install -q --no-compile --no-warn-script-location \
  "$WHEEL" > "$work/pip.log" 2>&1 || { tail -40 "$work/pip.log"; exit 1; }
# Paths written at build time name the build folder: scripts' shebangs, activate, pyvenv.cfg.
grep -rlI --null "$root" "$root$VENV" | xargs -0 -r sed -i "s|$root||g"
find "$root$VENV" -name __pycache__ -type d -prune -exec rm -rf {} +   # postinst compiles, prerm removes
rm -f "$root$VENV"/lib/python*/site-packages/weightwarden-*.dist-info/direct_url.json
site=$(ls -d "$root$VENV"/lib/python*/site-packages)

mkdir -p "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/weightwarden/policy.d" \
         "$root/usr/share/doc/weightwarden" "$root/DEBIAN"
for cli in agent collector; do ln -s "$VENV/bin/weightwarden-$cli" "$root/usr/bin/weightwarden-$cli"; done
units="$site/weightwarden/systemd"
sed 's|/usr/local/bin/|/usr/bin/|g' "$units/weightwarden-agent.service" > "$root/lib/systemd/system/weightwarden-agent.service"
cp "$site/weightwarden/policies/monitor-only.yaml" "$root/etc/weightwarden/policy.yaml"
# The schema the policy's first line names, beside it, so editors validate /etc/weightwarden/policy.yaml.
ln -s "${site#"$root"}/weightwarden/policies/policy.schema.json" "$root/etc/weightwarden/policy.schema.json"
cat > "$root/usr/share/doc/weightwarden/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: weightwarden
License: Apache-2.0

Files: *
Copyright: the weightwarden authors
License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 is in /usr/share/common-licenses/Apache-2.0.
 The Python packages in /opt/weightwarden/lib carry their own licences in their .dist-info folders.
EOF
printf 'weightwarden (%s) unstable; urgency=medium\n\n  * Built from the weightwarden repository by packaging/deb/build-deb.sh.\n\n -- weightwarden <weightwarden@localhost>  %s\n' \
  "$version" "$(date -R)" | gzip -9n > "$root/usr/share/doc/weightwarden/changelog.Debian.gz"

# The eBPF loaders' shared libraries, named by the packages that ship them (none if they are static).
loaders="$site/weightwarden/agent/attribution/ebpf/bpf/build/weightwarden-bpf $site/weightwarden/agent/files/ebpf/bpf/build/weightwarden-files-bpf"
libdeps=""
for lib in $(for l in $loaders; do ldd "$l" 2>/dev/null; done | awk '/=> \//{print $3}' | sort -u); do
  pkg=$(dpkg -S "$lib" 2>/dev/null || dpkg -S "$(realpath "$lib")" 2>/dev/null || dpkg -S "${lib#/usr}" 2>/dev/null ||
        dpkg -S "/usr$lib" 2>/dev/null || true)
  pkg=${pkg%%:*}
  [ -z "$pkg" ] || [ "$pkg" = libc6 ] || case ", $libdeps" in *", $pkg"*) ;; *) libdeps="$libdeps, $pkg";; esac
done

size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<EOF
Package: weightwarden
Version: $version
Architecture: $arch
Maintainer: weightwarden <weightwarden@localhost>
Installed-Size: $size
Depends: python3 (>= $pyver), python3 (<< $pynext), libc6, iproute2, nftables | iptables$libdeps
Section: net
Priority: optional
Homepage: https://github.com/weightwarden/weightwarden
Description: keeps AI model weights from leaving the hosts that hold them
 The weightwarden agent measures every upload per process and destination from the
 kernel's own counters (eBPF), caps upload rates in the kernel, watches the weight files and
 reports to a central collector. This package holds both commands in a virtualenv under
 /opt/weightwarden and the agent's systemd unit; weightwarden-collector adds the collector's.
EOF
echo /etc/weightwarden/policy.yaml > "$root/DEBIAN/conffiles"
install -m 755 packaging/deb/weightwarden/{postinst,prerm,postrm} "$root/DEBIAN/"

# -- weightwarden-collector: its unit, as the system user _weightwarden ----------------------------
croot="$work/weightwarden-collector"
mkdir -p "$croot/lib/systemd/system" "$croot/usr/share/doc/weightwarden-collector" "$croot/DEBIAN"
sed -e 's|/usr/local/bin/|/usr/bin/|g' \
    -e 's|^DynamicUser=yes$|User=_weightwarden\nGroup=_weightwarden|' \
    "$units/weightwarden-collector.service" > "$croot/lib/systemd/system/weightwarden-collector.service"
grep -q '^User=_weightwarden$' "$croot/lib/systemd/system/weightwarden-collector.service" ||
  { echo "build-deb: the collector unit has no DynamicUser=yes line to turn into User=" >&2; exit 1; }
cp "$root/usr/share/doc/weightwarden/copyright" "$croot/usr/share/doc/weightwarden-collector/"
cp "$root/usr/share/doc/weightwarden/changelog.Debian.gz" "$croot/usr/share/doc/weightwarden-collector/"
cat > "$croot/DEBIAN/control" <<EOF
Package: weightwarden-collector
Version: $version
Architecture: all
Maintainer: weightwarden <weightwarden@localhost>
Installed-Size: $(du -sk --exclude=DEBIAN "$croot" | cut -f1)
Depends: weightwarden (= $version), adduser
Recommends: mosquitto
Suggests: postgresql
Section: net
Priority: optional
Homepage: https://github.com/weightwarden/weightwarden
Description: weightwarden collector service
 Runs weightwarden-collector (event ingest from the MQTT broker, correlation, alerts) as a
 systemd service under the system user _weightwarden, with SQLite in
 /var/lib/weightwarden-collector unless told otherwise (systemctl edit).
EOF
install -m 755 packaging/deb/weightwarden-collector/{postinst,prerm,postrm} "$croot/DEBIAN/"

for r in "$root" "$croot"; do
  find "$r" -path "$r/DEBIAN" -prune -o -type d -exec chmod 755 {} +
  dpkg-deb --root-owner-group -Zxz --build "$r" "$OUT" > /dev/null
done
ls -1 "$OUT"/weightwarden*_"$version"_*.deb
