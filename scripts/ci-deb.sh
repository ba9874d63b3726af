#!/usr/bin/env bash
# CI: build the Debian packages, `dpkg -i` them, check the install, use it (the agent's caps in the
# kernel, the collector's database as its system user), then `dpkg --purge` and check that nothing is
# left: no file, unit link, user, group, nft table or qdisc. As root; dpkg changes this machine's
# filesystem for the length of the run (and purges on any failure). The kernel state lives in a
# network namespace of its own: this machine's firewall and qdiscs are never touched.
#   scripts/ci-deb.sh [DEBDIR]     # test the packages in DEBDIR instead of building them
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
[ "$(id -u)" = 0 ] || { echo "ci-deb: run as root (dpkg -i)" >&2; exit 1; }

if [ "${WW_CI_DEB_IN_NETNS:-}" != 1 ]; then
  # Build (the dependencies come from the package index), then test in a network namespace of its own.
  if [ -n "${1:-}" ]; then exec unshare --net -- env WW_CI_DEB_IN_NETNS=1 "$0" "$(realpath "$1")"; fi
  built=$(mktemp -d /tmp/ww-ci-deb-build.XXXXXX)
  trap 'rm -rf "$built"' EXIT
  echo "ci-deb: building the packages" >&2
  t0=$(date +%s)
  packaging/deb/build-deb.sh "$built" >&2
  echo "ci-deb: built in $(( $(date +%s) - t0 )) s" >&2
  unshare --net -- env WW_CI_DEB_IN_NETNS=1 "$0" "$built"
  exit
fi
ip link set lo up
work=$(mktemp -d /tmp/ww-ci-deb.XXXXXX)
fail() { echo "ci-deb: FAILED $*" >&2; exit 1; }
purge() { dpkg --purge weightwarden-collector weightwarden > "$work/purge.log" 2>&1; }
installed=""
cleanup() {
  [ -n "$installed" ] && { purge || cat "$work/purge.log" >&2; }
  rm -rf "$work"
}
trap cleanup EXIT

debs=$1
agent_deb=$(ls "$debs"/weightwarden_*.deb)
collector_deb=$(ls "$debs"/weightwarden-collector_*.deb)
echo "ci-deb: $(basename "$agent_deb") $(du -h "$agent_deb" | cut -f1), $(basename "$collector_deb")" >&2

# Everything named after us outside the work trees, before and after.
traces() {
  find /etc /opt /usr /lib /var /srv /run -xdev \( -path /var/tmp -o -path /var/cache/apt \) -prune -o \
    \( -iname '*weightwarden*' -o -name '_weightwarden' \) -print 2>/dev/null | sort
  getent passwd _weightwarden || true
  getent group _weightwarden || true
}
traces > "$work/before"
dpkg -s weightwarden > /dev/null 2>&1 && fail "weightwarden is already installed here"

installed=1
dpkg -i "$agent_deb" "$collector_deb" > "$work/install.log" 2>&1 || { cat "$work/install.log"; fail "dpkg -i"; }
echo "ci-deb: installed" >&2

# -- the install ---------------------------------------------------------------------------------
for f in /usr/bin/weightwarden-agent /usr/bin/weightwarden-collector /lib/systemd/system/weightwarden-agent.service \
         /lib/systemd/system/weightwarden-collector.service /etc/weightwarden/policy.yaml; do
  [ -e "$f" ] || fail "$f is missing"
done
[ -d /etc/weightwarden/policy.d ] || fail "/etc/weightwarden/policy.d is missing"
for unit in weightwarden-agent weightwarden-collector; do
  [ -L "/etc/systemd/system/multi-user.target.wants/$unit.service" ] || fail "$unit.service is not enabled"
done
# The units as installed: valid for systemd, and the collector runs as the package's system user.
systemd-analyze verify /lib/systemd/system/weightwarden-agent.service /lib/systemd/system/weightwarden-collector.service \
  > "$work/verify.log" 2>&1 || { cat "$work/verify.log"; fail "systemd-analyze verify"; }
grep -qx 'User=_weightwarden' /lib/systemd/system/weightwarden-collector.service || fail "the collector unit's user"
user=$(getent passwd _weightwarden) || fail "no _weightwarden user"
uid=$(echo "$user" | cut -d: -f3)
[ "$uid" -lt 1000 ] || fail "_weightwarden is not a system user (uid $uid)"
case "$user" in *:/nonexistent:/usr/sbin/nologin) ;; *) fail "_weightwarden: $user";; esac
/usr/bin/weightwarden-agent policy check /etc/weightwarden/policy.yaml > /dev/null || fail "policy check of the shipped policy"
# The installed venv works: imports, --help, the eBPF loader from /opt, collector + agent on a broker.
(cd / && /opt/weightwarden/bin/python -P "$REPO/tests/packaging/smoke.py" --prefix /opt/weightwarden --bin /usr/bin \
  --ebpf --stack) || fail "smoke test of the installed package"
[ -n "$(find /opt/weightwarden -name '*.pyc' -print -quit)" ] || fail "postinst compiled nothing"

# -- use it, leaving what a real host would: caps in the kernel, a database, state ------------------
ip link add wwdeb0 type veth peer name wwdeb1 || fail "a veth for the cap"
ip link set wwdeb0 up
cat > "$work/cap.yaml" <<EOF
apiVersion: weightwarden/v1
kind: EgressPolicy
metadata: {name: ci-deb}
spec:
  interfaces: [wwdeb0]
  caps:
    - {name: all, rate: 100Mbit}
EOF
cp "$work/cap.yaml" /etc/weightwarden/policy.d/50-ci.yaml
# As the unit's daemon would: policy.yaml plus the drop-in, merged.
/usr/bin/weightwarden-agent enforce apply --policy /etc/weightwarden/policy.yaml > /dev/null || fail "enforce apply"
nft list table inet weightwarden > /dev/null 2>&1 || fail "no nft table after enforce apply"
[[ "$(tc qdisc show dev wwdeb0)" == *"htb 7757:"* ]] || fail "no qdisc after enforce apply"
mkdir -p /var/lib/weightwarden-collector   # what StateDirectory= makes
chown _weightwarden:_weightwarden /var/lib/weightwarden-collector
runuser -u _weightwarden -- /usr/bin/weightwarden-collector db upgrade \
  --db sqlite:////var/lib/weightwarden-collector/collector.db > /dev/null || fail "the collector's database as _weightwarden"
echo "ci-deb: used (caps in the kernel, state, a database)" >&2

# -- purge -----------------------------------------------------------------------------------------
purge || { cat "$work/purge.log"; fail "dpkg --purge"; }
installed=""
traces > "$work/after"
diff -u "$work/before" "$work/after" || fail "left behind after purge (above)"
[[ "$(nft list tables 2>&1)" != *weightwarden* ]] || fail "the nft table is still there"
[[ "$(tc qdisc show dev wwdeb0)" != *7757:* ]] || fail "the qdisc is still there"
ip link del wwdeb0
echo "ci-deb: passed (installed, used, purged: nothing left)" >&2
