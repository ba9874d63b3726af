"""Who a process is, for the file events: from /proc while it runs (files that never touch its
memory, and a worker's description of its command line and pipes), or as the kernel saw it at
its first read of a weight (``ebpf``'s opener record) once it is gone.

Without permission events nothing holds a reader until the agent has looked at it: a `cat`
is gone a millisecond after its open. The kernel's record of it (executable, command line,
uid, parent, cgroup), made in the reader's own context as it read, names it anyway.
"""

from __future__ import annotations

import os
import pwd
from collections import OrderedDict
from typing import Any, cast

from weightwarden.agent.attribution.containers import parse as container_of
from weightwarden.agent.files import kernel
from weightwarden.agent.files.ebpf import wire
from weightwarden.agent.files.mounts import MountTable
from weightwarden.agent.files.procio import ProcFields, identity, start_of_ns, start_time
from weightwarden.events import safe_text

MAX_KNOWN = 20_000


class Who:
    def __init__(self, table: MountTable, boot: float, proc_root: str = "/proc") -> None:
        self.table = table
        self.boot = boot
        self.proc_root = proc_root
        self.described: dict[int, dict[str, Any]] = {}  # pid -> command line, pipes, user (from a worker)
        self.seen: OrderedDict[int, ProcFields] = OrderedDict()  # pid -> as the kernel saw it read
        self.mnt_ns: dict[int, str] = {}  # pid -> its mount namespace as the kernel saw it ("mnt:[N]")
        self._cgroup_root: int | None = None
        self.exes: dict[tuple[int, int], str] = {}  # (st_dev, inode) -> an executable's path, as seen

    def proc(self, pid: int, known: ProcFields | None = None) -> dict[str, Any]:
        """Who a pid is: identity from files that never touch its memory, plus what a worker read;
        as the kernel saw it when it is gone."""
        # A plain dict from here: the watcher and the coalescer patch it as more is learnt.
        found = known if known is not None else identity(pid, self.proc_root)
        proc: dict[str, Any] | None = dict(found) if found is not None else None
        if proc is not None and proc.get("exe") and len(self.exes) < 100_000:
            try:
                st = os.stat(proc["exe"])  # noqa: PTH116 - per opener: hot path: pathlib costs 2-4x os here on 3.11
                self.exes.setdefault((st.st_dev, st.st_ino), proc["exe"])
            except OSError:
                pass
        if proc is None:
            seen = self.seen.get(pid)
            return dict(seen) if seen is not None else {"name": None, "exe": None, "uid": None}
        seen = self.seen.get(pid)
        if seen is not None and seen.get("start_time") == proc["start_time"]:
            # A zombie's executable cannot be read any more: as the kernel saw it while it ran.
            proc.update({k: v for k, v in seen.items() if not proc.get(k)})
        proc["user"] = user(proc["uid"])
        if proc.get("cgroup"):
            container = container_of(proc["cgroup"])
            proc["container"] = container.model_dump() if container else None
        more = self.described.get(pid)
        if more is not None and more.get("start_time") == proc["start_time"]:
            proc.update({k: v for k, v in more.items() if k != "start_time"})
        if not proc.get("cmdline") and seen is not None and seen.get("start_time") == proc["start_time"]:
            # Not described yet, or gone before it was: as it read the weights.
            proc["cmdline"] = seen.get("cmdline", [])
        return proc

    def learn_exes(self, dirs: tuple[str, ...] = ("/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin")) -> None:
        """Executables by inode, so that a process seen only in its exit record is named by its program."""
        for d in dirs:
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            for entry in entries:
                try:
                    st = entry.stat()
                except OSError:
                    continue
                self.exes.setdefault((st.st_dev, st.st_ino), os.path.realpath(entry.path))

    def from_exit(self, pid: int, comm: str, uid: int | None, ppid: int | None,
                  exe: tuple[int, int] | None) -> ProcFields:
        """A process gone before anything else named it, as its taskstats exit record does."""
        fields: ProcFields = {"name": safe_text(comm, 256) or None, "uid": uid, "ppid": ppid,
                                  "exe": self.exes.get(exe) if exe else None}
        if uid is not None:
            fields["user"] = user(uid)
        return fields

    def alive(self, pid: int, start: float | None) -> ProcFields | None:
        """The process's fields if it still runs (and is the one that started at ``start``)."""
        now = start_time(pid, self.proc_root)
        if now is None or (start is not None and abs(now - start) > 0.05):
            return None
        return cast(ProcFields, {"pid": pid, **self.proc(pid)})  # proc() is ProcFields, widened for the watcher

    def anyhow(self, pid: int, start: float | None) -> ProcFields | None:
        """The process's fields from /proc while it runs, else as the kernel saw it (if it did)."""
        found = self.alive(pid, start)
        if found is None and (seen := self.seen.get(pid)) is not None \
                and (start is None or abs(seen["start_time"] - start) <= 0.05):
            found = {"pid": pid, **seen}
        return found

    def start_of(self, start_ns: int) -> float:
        """A start time in boot-time ns as Unix seconds (ProcessFields.start_time)."""
        return start_of_ns(start_ns, self.boot)

    def from_kernel(self, ev: wire.Opener) -> ProcFields:
        """Remember a process as the kernel saw it; its fields."""
        fields: ProcFields = {"name": ev.comm, "exe": ev.exe or None, "uid": ev.uid, "user": user(ev.uid),
                                  "ppid": ev.ppid, "start_time": self.start_of(ev.start_ns)}
        if ev.args:
            fields["cmdline"] = [safe_text(a) for a in ev.args[:8]]
        cgroup = self.cgroup(ev.cgroup_id)
        if cgroup is not None:
            container = container_of(cgroup)
            fields.update({"cgroup": cgroup, "container": container.model_dump() if container else None})
        self.seen[ev.tgid] = fields
        self.seen.move_to_end(ev.tgid)
        self.mnt_ns[ev.tgid] = f"mnt:[{ev.mnt_ns}]"
        while len(self.seen) > MAX_KNOWN:
            self.mnt_ns.pop(self.seen.popitem(last=False)[0], None)
        return fields

    def cgroup(self, cgroup_id: int) -> str | None:
        """A cgroup v2 id as the path /proc/PID/cgroup shows ("/system.slice/x.service")."""
        mount = next((m for m in self.table.mounts if m.fstype == "cgroup2"), None)
        if mount is None:
            return None
        if self._cgroup_root is None:
            try:
                self._cgroup_root = os.open(mount.mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                return None
        path = kernel.cgroup_path(self._cgroup_root, cgroup_id)
        if path is None or not path.startswith(mount.mountpoint):
            return None
        return path[len(mount.mountpoint.rstrip("/")):] or "/"

    def forget(self, live: set[int]) -> None:
        for pid in [p for p in self.described if p not in live]:
            del self.described[pid]

    def close(self) -> None:
        if self._cgroup_root is not None:
            os.close(self._cgroup_root)
            self._cgroup_root = None


_USERS: dict[int, str] = {}


def user(uid: int) -> str:
    if uid not in _USERS:
        try:
            _USERS[uid] = pwd.getpwuid(uid).pw_name
        except KeyError:
            _USERS[uid] = str(uid)
    return _USERS[uid]
