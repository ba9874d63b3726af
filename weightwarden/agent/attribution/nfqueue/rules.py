"""The iptables rules that send each new outbound flow's first packet to our queue.

Built as data (argv lists) so ``--dry-run`` can print them and tests can check
them without root. nft's own ``queue`` expression is not always built into
the kernel, while the xt NFQUEUE target through iptables-nft is, hence iptables.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from weightwarden.agent.enforce.kernel import KernelError, run

CHAIN = "WEIGHTWARDEN-RESOLVE"
DNS_CHAIN = "WEIGHTWARDEN-DNS"
TABLE = "mangle"


@dataclass(frozen=True)
class RulePlan:
    install: list[list[str]]
    remove: list[list[str]]


def plan(queue_num: int, tools: tuple[str, ...] = ("iptables", "ip6tables"), dns_group: int | None = None) -> RulePlan:
    """``dns_group``: the NFLOG group that gets a copy of each DNS answer (default: queue_num + 1).
    Copies, never held: a flood of answers cannot delay traffic or the owner lookups."""
    group = queue_num + 1 if dns_group is None else dns_group
    install: list[list[str]] = []
    remove: list[list[str]] = []
    for tool in tools:
        base = [tool, "-w", "-t", TABLE]
        remove += [base + ["-D", "OUTPUT", "-j", CHAIN], base + ["-F", CHAIN], base + ["-X", CHAIN],
                   base + ["-D", "INPUT", "-j", DNS_CHAIN], base + ["-F", DNS_CHAIN], base + ["-X", DNS_CHAIN]]
        install.append(base + ["-N", CHAIN])
        # DNS answers coming in, so destinations can be reported by the name that was looked up.
        install.append(base + ["-N", DNS_CHAIN])
        # At most 1,000 copies a second, limited in the kernel: a flood costs names, not the agent's CPU.
        install.append(base + ["-A", DNS_CHAIN, "-p", "udp", "--sport", "53", "-m", "limit", "--limit", "1000/second",
                               "--limit-burst", "200", "-j", "NFLOG", "--nflog-group", str(group), "--nflog-size",
                               "1024"])
        install.append(base + ["-A", "INPUT", "-j", DNS_CHAIN])
        for proto in ("tcp", "udp"):
            install.append(
                base
                + ["-A", CHAIN, "!", "-o", "lo", "-p", proto, "-m", "conntrack", "--ctstate", "NEW"]
                + ["-j", "NFQUEUE", "--queue-num", str(queue_num), "--queue-bypass"]
            )
        # Appended last: an ACCEPT verdict from the queue ends this hook's chain,
        # so rules placed after ours in mangle OUTPUT would be skipped.
        install.append(base + ["-A", "OUTPUT", "-j", CHAIN])
    return RulePlan(install, remove)


def available_tools() -> tuple[str, ...]:
    return tuple(t for t in ("iptables", "ip6tables") if shutil.which(t))


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """The enforcer's runner (bounded wait, C locale); a missing or wedged tool is a failed command here."""
    try:
        return run(argv, check=False)
    except KernelError as e:
        return subprocess.CompletedProcess(argv, 127, "", str(e))


def saved(tool: str) -> str:
    """``iptables-save -t mangle`` (or ip6tables'), '' if it cannot be read."""
    res = _run([f"{tool}-save", "-t", TABLE])
    return res.stdout if res.returncode == 0 else ""


def apply(rule_plan: RulePlan) -> list[str]:
    """Remove stale rules, then install; returns error lines (empty on success)."""
    remove(rule_plan)
    errors = []
    for argv in rule_plan.install:
        res = _run(argv)
        if res.returncode != 0:
            errors.append(f"{' '.join(argv)}: {res.stderr.strip()}")
    return errors


def remove(rule_plan: RulePlan) -> None:
    for argv in rule_plan.remove:
        # Repeat the jump removal: a crashed run may have left several.
        while argv[4] == "-D" and _run(argv).returncode == 0:
            pass
        if argv[4] != "-D":
            _run(argv)
    for tool in sorted({argv[0] for argv in rule_plan.remove}):
        drop_table_if_empty(tool)


def missing(rule_plan: RulePlan, read: Callable[[str], str] | None = None) -> list[str]:
    """Which of the plan's chains lack their rules in the kernel now (each tool's table read back with
    ``read``, default ``iptables-save``): the jump from OUTPUT or INPUT, or the chain's own rules. [] when
    all are there, or nothing can be read."""
    out = []
    for tool in sorted({argv[0] for argv in rule_plan.install}):
        text = (read or saved)(tool)
        if not text:
            continue
        lines = text.splitlines()
        for hook, chain in (("OUTPUT", CHAIN), ("INPUT", DNS_CHAIN)):
            jump = f"-A {hook} -j {chain}" in lines
            own = any(line.startswith(f"-A {chain} ") for line in lines)
            if not (jump and own):
                out.append(f"{tool} {hook} -> {chain}")
    return out


BUILTIN_CHAINS = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}


def table_is_empty(saved: str) -> bool:
    """Whether ``iptables-save -t mangle`` output shows a table with nothing in it: no rules,
    no chains of anyone's, every policy ACCEPT."""
    for line in saved.splitlines():
        if line.startswith("-A"):
            return False
        if line.startswith(":"):
            chain, policy = line[1:].split()[:2]
            if chain not in BUILTIN_CHAINS or policy != "ACCEPT":
                return False
    return True


def drop_table_if_empty(tool: str) -> None:
    """iptables-nft creates the mangle table on first use and never removes it, so an agent
    that stopped would leave an empty table behind. Only an empty one goes: nothing anyone
    else put there is touched, and iptables-nft recreates it whenever it is next used."""
    if not shutil.which("nft") or "nf_tables" not in _run([tool, "-V"]).stdout:
        return  # iptables-legacy: its built-in tables are not ours to remove
    saved = _run([f"{tool}-save", "-t", TABLE])
    if saved.returncode == 0 and saved.stdout.strip() and table_is_empty(saved.stdout):
        _run(["nft", "delete", "table", "ip" if tool == "iptables" else "ip6", TABLE])
