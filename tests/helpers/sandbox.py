"""Run a command sandboxed as a systemd unit file says, on a machine whose PID 1 is not systemd.

What is applied, read from the unit itself:
- SystemCallFilter: systemd's own expansion of the groups (``systemd-analyze syscall-filter``), allow
  lists minus ``~`` deny lists, loaded with libseccomp; any other syscall kills the process with SIGSYS,
  as systemd does;
- RestrictAddressFamilies: socket() of any other family fails with EAFNOSUPPORT;
- CapabilityBoundingSet and NoNewPrivileges;
- a private mount namespace with ProtectSystem=strict (every mount read-only but /proc, /sys, /dev and
  the writable paths given, standing in for StateDirectory), PrivateTmp (fresh /tmp and /var/tmp) and
  PrivateDevices' private /dev/shm.
Not emulated: MemoryDenyWriteExecute, ProtectKernel*, ProtectClock, RestrictNamespaces, DynamicUser.

    python -m tests.helpers.sandbox --unit weightwarden/systemd/weightwarden-agent.service --rw STATE -- CMD ARGS...
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

STAGE = "WW_SANDBOX_STAGE"
PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24
SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4
CAP_LAST = 40
AF_MAX = 46
FAMILIES = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16, "AF_PACKET": 17}
CAPS = {"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3, "CAP_FSETID": 4,
        "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8, "CAP_LINUX_IMMUTABLE": 9,
        "CAP_NET_BIND_SERVICE": 10, "CAP_NET_BROADCAST": 11, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13,
        "CAP_IPC_LOCK": 14, "CAP_IPC_OWNER": 15, "CAP_SYS_MODULE": 16, "CAP_SYS_RAWIO": 17, "CAP_SYS_CHROOT": 18,
        "CAP_SYS_PTRACE": 19, "CAP_SYS_PACCT": 20, "CAP_SYS_ADMIN": 21, "CAP_SYS_BOOT": 22, "CAP_SYS_NICE": 23,
        "CAP_SYS_RESOURCE": 24, "CAP_SYS_TIME": 25, "CAP_SYS_TTY_CONFIG": 26, "CAP_MKNOD": 27, "CAP_LEASE": 28,
        "CAP_AUDIT_WRITE": 29, "CAP_AUDIT_CONTROL": 30, "CAP_SETFCAP": 31, "CAP_MAC_OVERRIDE": 32,
        "CAP_MAC_ADMIN": 33, "CAP_SYSLOG": 34, "CAP_WAKE_ALARM": 35, "CAP_BLOCK_SUSPEND": 36,
        "CAP_AUDIT_READ": 37, "CAP_PERFMON": 38, "CAP_BPF": 39, "CAP_CHECKPOINT_RESTORE": 40}


@dataclass
class UnitSandbox:
    allow: list[str] = field(default_factory=list)  # SystemCallFilter allow entries (groups or names)
    deny: list[str] = field(default_factory=list)  # SystemCallFilter=~ entries
    families: list[str] = field(default_factory=list)
    caps: list[str] | None = None  # None: no bounding set given
    no_new_privs: bool = False
    protect_system: str = ""
    private_tmp: bool = False
    private_devices: bool = False


def parse_unit(text: str) -> UnitSandbox:
    sb = UnitSandbox()
    for raw in text.splitlines():
        line = raw.strip()
        if "=" not in line or line.startswith(("#", ";")):
            continue
        key, value = (p.strip() for p in line.split("=", 1))
        if key == "SystemCallFilter":
            if value.startswith("~"):
                sb.deny += value[1:].split()
            else:
                sb.allow += value.split()
        elif key == "RestrictAddressFamilies":
            sb.families += value.split()
        elif key == "CapabilityBoundingSet":
            sb.caps = value.split()
        elif key == "NoNewPrivileges":
            sb.no_new_privs = value == "yes"
        elif key == "ProtectSystem":
            sb.protect_system = value
        elif key == "PrivateTmp":
            sb.private_tmp = value == "yes"
        elif key == "PrivateDevices":
            sb.private_devices = value == "yes"
    return sb


def _groups() -> dict[str, list[str]]:
    """systemd's syscall groups, each with its names and nested @groups, as systemd-analyze lists them."""
    out = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True, check=True,
                         env={**os.environ, "LANG": "C"}).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        word = line.strip()
        if not word or word.startswith("#"):
            continue
        if not line.startswith((" ", "\t")) and word.startswith("@"):
            current = groups.setdefault(word, [])
        elif current is not None and re.fullmatch(r"@?[a-z0-9_-]+", word):
            current.append(word)
    return groups


def expand(entries: list[str], groups: dict[str, list[str]] | None = None) -> set[str]:
    """Syscall names of filter entries, nested groups expanded, with systemd's own definitions."""
    groups = _groups() if groups is None else groups
    names: set[str] = set()
    todo, seen = list(entries), set()
    while todo:
        entry = todo.pop()
        if entry in seen:
            continue
        seen.add(entry)
        if entry.startswith("@"):
            if entry not in groups:
                raise ValueError(f"unknown syscall group {entry}")
            todo.extend(groups[entry])
        else:
            names.add(entry)
    return names


def allowed_syscalls(sb: UnitSandbox) -> set[str]:
    groups = _groups()
    return expand(sb.allow, groups) - expand(sb.deny, groups)


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def _load_seccomp(allowed: set[str], families: list[str]) -> None:
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(SCMP_ACT_KILL_PROCESS)
    if not ctx:
        raise OSError("seccomp_init failed")
    allowed_af = {FAMILIES[f] for f in families if f in FAMILIES}
    for name in sorted(allowed):
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:
            continue  # not a syscall of this architecture
        if name == "socket" and families:
            for af in range(AF_MAX):
                cmp = (_ArgCmp * 1)(_ArgCmp(0, SCMP_CMP_EQ, af, 0))
                action = SCMP_ACT_ALLOW if af in allowed_af else 0x00050000 | errno.EAFNOSUPPORT
                if lib.seccomp_rule_add_array(ctx, action, nr, 1, cmp) != 0:
                    raise OSError(f"seccomp rule for socket({af}) failed")
            continue
        if lib.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr, 0, None) != 0:
            raise OSError(f"seccomp rule for {name} failed")
    if lib.seccomp_load(ctx) != 0:
        raise OSError("seccomp_load failed")


def _mounts() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        points.append(point)
    return points


def _run(*argv: str) -> None:
    subprocess.run(list(argv), check=True, capture_output=True, env={**os.environ, "LANG": "C"})


def _protect(sb: UnitSandbox, writable: list[str]) -> None:
    # Writable paths under /tmp would vanish under PrivateTmp: hold them open, bind them back after.
    held = {path: os.open(path, os.O_PATH) for path in writable}
    for path in writable:
        _run("mount", "--bind", path, path)
    if sb.protect_system == "strict":
        api = ("/proc", "/sys", "/dev")
        for point in _mounts():
            if point in writable or any(point == a or point.startswith(a + "/") for a in api):
                continue
            subprocess.run(["mount", "-o", "remount,bind,ro", point], capture_output=True)
    if sb.private_tmp:
        for d in ("/tmp", "/var/tmp"):
            _run("mount", "-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs", d)
            for path, fd in held.items():
                if path.startswith(d + "/"):
                    os.makedirs(path, exist_ok=True)
                    subprocess.run(["mount", "--bind", f"/proc/self/fd/{fd}", path], check=True,
                                   capture_output=True, pass_fds=(fd,))
    for fd in held.values():
        os.close(fd)
    if sb.private_devices and os.path.isdir("/dev/shm"):
        _run("mount", "-t", "tmpfs", "-o", "mode=1777,nosuid,nodev,noexec", "tmpfs", "/dev/shm")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--unit", required=True, type=Path)
    parser.add_argument("--rw", action="append", default=[], help="a writable path (StateDirectory)")
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    here = str(os.stat("/proc/self/ns/mnt").st_ino)
    if os.environ.get(STAGE) in (None, "", here):
        # Stage 1: a private mount namespace, then this module again inside it. Stage 2 checks
        # that it really is in another mount namespace than stage 1 before it remounts anything.
        env = {**os.environ, STAGE: here}
        os.execvpe("unshare", ["unshare", "-m", "--propagation", "private", sys.executable, "-m",
                               "tests.helpers.sandbox", "--unit", str(args.unit),
                               *[f"--rw={p}" for p in args.rw], "--", *cmd], env)
    os.environ.pop(STAGE, None)
    try:
        host_ns = str(os.stat("/proc/1/ns/mnt").st_ino)
    except OSError:
        host_ns = ""  # not ours to see (under strace, say): the stage check above already held
    if here == host_ns:
        raise SystemExit("sandbox: refusing to remount anything in the host's mount namespace")
    sb = parse_unit(args.unit.read_text())
    _protect(sb, [str(Path(p).resolve()) for p in args.rw])
    libc = ctypes.CDLL(None, use_errno=True)
    if sb.caps is not None:
        keep = {CAPS[c] for c in sb.caps if c in CAPS}
        for cap in range(CAP_LAST + 1):
            if cap not in keep:
                libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    if sb.no_new_privs:
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    if sb.allow:
        # execve itself must pass the filter: it is in @system-service, as in systemd's units.
        _load_seccomp(allowed_syscalls(sb), sb.families)
    os.execvp(cmd[0], cmd)
    return 127


if __name__ == "__main__":
    raise SystemExit(main())
