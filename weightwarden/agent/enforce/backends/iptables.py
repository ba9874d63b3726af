"""The iptables backend, for hosts without nft: the same plan through iptables-restore, built here
(pure) beside its applier.

Rules live in our own chain WEIGHTWARDEN-CAPS in the mangle table, jumped to
from POSTROUTING for each policy interface, and are loaded with
``iptables-restore --noflush`` (one transaction per address family).
Shaping uses ``CLASSIFY`` to put packets in the cap's htb class, so the tc
side is shared with the nft backend. Each rule carries a ``ww:NAME`` comment
so its counters can be read back per cap.

A difference from nft: a non-terminating target cannot "return after the
first match", so caps are written in reverse order and the first matching
cap's class wins by being written last. Block caps drop wherever they match.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import asdict, dataclass

from weightwarden.agent.enforce import tc
from weightwarden.agent.enforce.backends.state import Cleared, KernelState
from weightwarden.agent.enforce.kernel import run
from weightwarden.agent.enforce.plan import ALLOWED_COUNTER, BUDGET_COUNTER, EGRESS_COUNTER, Plan
from weightwarden.agent.policy.match import Net

CHAIN = "WEIGHTWARDEN-CAPS"
TOOLS = {4: ("iptables-restore", "iptables-save", "iptables"), 6: ("ip6tables-restore", "ip6tables-save", "ip6tables")}
_COMMENT = re.compile(r'--comment "?ww:([a-z0-9-]+)"?')
_COUNTS = re.compile(r"^\[(\d+):(\d+)\]")


@dataclass(frozen=True)
class Document:
    restore: str  # iptables-restore input for our chain
    jumps: list[list[str]]  # POSTROUTING jump rules, as argv tails


Documents = dict[int, Document]  # per IP version


def available() -> bool:
    return shutil.which("iptables-restore") is not None


def build(plan: Plan) -> Documents:
    """iptables-restore documents per IP version. Pure; the match is the plan's (policy.match)."""
    docs: Documents = {}
    for version in (4, 6):
        rules: list[str] = []

        def add(parts: list[str], tag: str, rules: list[str] = rules) -> None:
            rules.append(" ".join(["-A", CHAIN, *parts, "-m", "comment", "--comment", f"ww:{tag}"]))

        for net in plan.compiled.allow:
            if net.network.version == version:
                for cond in _dest_conds(net):
                    add([*cond, "-j", "RETURN"], ALLOWED_COUNTER)
        add([], EGRESS_COUNTER)
        if plan.blocked_budgets:
            add(["-j", "DROP"], BUDGET_COUNTER)
        for sel, slot in reversed(plan.enforced()):  # refused caps are left out, never widened (selectors.py)
            conds: list[list[str]] = [[]]
            if sel.uids:
                conds = [["-m", "owner", "--uid-owner", str(uid)] for uid in sel.uids]
            if sel.cgroups:
                conds = [c + ["-m", "cgroup", "--path", "/" + path] for c in conds for path in sel.cgroups]
            if sel.iifnames is not None:
                # -i works in our chain (jumped from POSTROUTING): forwarded packets keep their input device.
                conds = [c + ["-i", name] for c in conds for name in sel.iifnames]
            if sel.nets is not None:
                conds = [c + d for c in conds for net in sel.nets if net.network.version == version
                         for d in _dest_conds(net)]
            target = {"shape": ["-j", "CLASSIFY", "--set-class", slot.classid], "block": ["-j", "DROP"],
                      "alert": []}[slot.action]
            for cond in conds:
                add(cond + target, slot.counter)
        restore = "\n".join(["*mangle", f":{CHAIN} - [0:0]", f"-F {CHAIN}", *rules, "COMMIT", ""])
        jumps = [["-A", "POSTROUTING", "-o", iface, "-j", CHAIN] for iface in plan.interfaces]
        docs[version] = Document(restore, jumps)
    return docs


def _dest_conds(net: Net) -> list[list[str]]:
    if not net.ports:
        return [["-d", str(net.network)]]
    return [["-d", str(net.network), "-p", proto, "--dport", str(port)] for port in net.ports for proto in ("tcp", "udp")]


def _delete_jumps(tool: str) -> None:
    save = run([tool + "-save", "-t", "mangle"], check=False).stdout
    for line in save.splitlines():
        if line.startswith("-A POSTROUTING") and line.endswith(f"-j {CHAIN}"):
            run([tool, "-w", "-t", "mangle", "-D", *line.split()[1:]], check=False)


def apply(docs: Documents) -> None:
    for version, doc in docs.items():
        restore, _save, tool = TOOLS[version]
        if shutil.which(restore) is None:
            continue
        run([restore, "--noflush", "-w"], stdin=doc.restore)
        _delete_jumps(tool)
        for jump in doc.jumps:
            run([tool, "-w", "-t", "mangle", *jump])


def read_state() -> dict[str, list[str]] | None:
    """Our chain's rules and jumps per IP version (no counters); None if absent."""
    out: dict[str, list[str]] = {}
    for version, (_restore, save, _tool) in TOOLS.items():
        if shutil.which(save) is None:
            continue
        text = run([save, "-t", "mangle"], check=False).stdout
        out[str(version)] = [ln for ln in text.splitlines() if CHAIN in ln and not ln.startswith(":")]
    return out if any(out.values()) else None


def counters() -> dict[str, dict[str, int]]:
    totals: dict[str, dict[str, int]] = {}
    for _restore, save, _tool in TOOLS.values():
        if shutil.which(save) is None:
            continue
        for line in run([save, "-c", "-t", "mangle"], check=False).stdout.splitlines():
            m, c = _COUNTS.match(line), _COMMENT.search(line)
            if m and c and f"-A {CHAIN}" in line:
                entry = totals.setdefault(c.group(1), {"packets": 0, "bytes": 0})
                entry["packets"] += int(m.group(1))
                entry["bytes"] += int(m.group(2))
    return totals


def clear() -> bool:
    found = False
    for _restore, _save, tool in TOOLS.values():
        if shutil.which(tool) is None:
            continue
        _delete_jumps(tool)
        if run([tool, "-w", "-t", "mangle", "-F", CHAIN], check=False).returncode == 0:
            found = True
            run([tool, "-w", "-t", "mangle", "-X", CHAIN], check=False)
    return found


class IptablesBackend:
    name = "iptables"

    @staticmethod
    def available() -> bool:
        return available()

    def build(self, plan: Plan) -> dict[str, dict[str, object]]:
        return {str(version): asdict(doc) for version, doc in build(plan).items()}

    def apply(self, plan: Plan) -> None:
        tc.apply_plan(plan)  # classes exist before any packet is steered into them
        apply(build(plan))

    def state(self, interfaces: list[str]) -> KernelState:
        return {"backend": self.name, "rules": read_state(), "tc": tc.read_interfaces(interfaces)}

    def counters(self) -> dict[str, dict[str, int]]:
        return counters()

    def clear_rules(self) -> bool:
        """Only the rules (``enforce clear`` removes the shared tc trees once, after every backend's rules)."""
        return clear()

    def clear(self) -> Cleared:
        return {"iptables": clear(), "tc": tc.clear()}
