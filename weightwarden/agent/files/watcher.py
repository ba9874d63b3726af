"""Who touched the weights: weight files known by inode, reads counted in the kernel, and nothing
on the host ever waiting for the agent.

- Every weight file (and staged copy, canary, weight directory) is known by (device, inode)
  (``inodes.WeightInodes``) from the walk at start, a creation under a watched directory, or an
  open: whatever name reaches it later (a hard link anywhere, a move, a bind mount, an overlay,
  /proc/PID/fd/N, a file handle) it is the same weight, reported by its weights path.
- Reads are counted in the kernel where it can (``ebpf.reads.KernelReads``: page-cache reads per
  process and file, exact bytes for whole files, no event per read, read every second). Where it
  cannot, by the process's rchar: from the open (less what its descriptor had read when we
  looked) to the close, or its taskstats exit record; reads rchar misses are seen as offsets
  (splice) or flagged (io_uring: estimated).
- Opens and closes are fanotify notifications, never permission events: an open of a weight file
  never waits for this process, running, stopped or gone. A thread reads them the moment they
  arrive (``snapshot.Snapshotter``); weight directories carry inode marks, whole-filesystem roots
  filesystem marks, and every known weight file its own inode mark (hard links, moves).
- New names are ``weights_relinked`` (``relinks.Relinks``): from the kernel's link and rename
  programs, or a file-id mark's move, or an open through a name never seen.
- Every filesystem of the host and of every container gets a close-after-write mark: a large
  file written by a process that read weights is a ``weights_copy`` (``copies.CopyTracker``) and
  is watched as weights from then on, across restarts (``staged.StagedCopies``).
- Mappings (``weight_holder``) and command lines are read by worker threads with a bounded wait
  (``offload.Offloader``). Canary files: any open is a ``canary_read`` at once.
Without fanotify (no CAP_SYS_ADMIN) it falls back to inotify, which has no pids.

Output: event payloads on ``self.out``, a queue the daemon drains.
"""

from __future__ import annotations

import os
import queue
import select
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from weightwarden import logs
from weightwarden.agent.files import fanotify as fan
from weightwarden.agent.files import kernel
from weightwarden.agent.files.coalesce import Coalescer, Session
from weightwarden.agent.files.copies import CopyTracker
from weightwarden.agent.files.counting import KernelCounting
from weightwarden.agent.files.ebpf import wire
from weightwarden.agent.files.ebpf.reads import FileBpfError
from weightwarden.agent.files.exits import ExitRecord
from weightwarden.agent.files.holders import HolderScan
from weightwarden.agent.files.inodes import Kind, WeightFile, WeightInodes
from weightwarden.agent.files.inotify import Inotify
from weightwarden.agent.files.marks import NEW_DIR, WeightMarks
from weightwarden.agent.files.mounts import HostPaths, MountTable, dev_of, mount_namespaces, read_mountinfo
from weightwarden.agent.files.offload import Offloader
from weightwarden.agent.files.patterns import WeightPaths
from weightwarden.agent.files.procio import boot_time, io_counters, scan_fds, start_time
from weightwarden.agent.files.relinks import Relinks
from weightwarden.agent.files.snapshot import Snapshot, Snapshotter
from weightwarden.agent.files.staged import StagedCopies, StagedCopy
from weightwarden.agent.files.who import Who
from weightwarden.agent.files.writemarks import WriteMarks
from weightwarden.agent.kernel.procmap import ProcessInfo, ProcessTable
from weightwarden.events import CanaryRead, EventsDropped, FileAccess, Payload

RESCAN_S = 2.0
REFRESH_S = 1.0
PRUNE_S = 60.0
CANARY_REPEAT_S = 10.0
EXIT_WAIT_S = 2.0
UNCLAIMED_S = 5.0  # an exit record waits this long for the open or close it may finish
MAX_UNCLAIMED = 8192
COUNT_SOON_S = 0.2  # after a close, the kernel's counts are read within this, not at the next refresh
COPY_COUNT_S = 0.05  # copies judged together read the kernel's counts once
ENV_SENSOR = "WEIGHTWARDEN_FILE_SENSOR"  # "ebpf" (required), "off" (notifications and /proc only), "auto"


class FileWatcher:
    def __init__(self, weights: WeightPaths, clock: Callable[[], float] = time.time, settle: float = 1.0,
                 state_dir: Path | None = None, proc_root: str = "/proc", sensor: str | None = None) -> None:
        self.weights = weights
        self.clock = clock
        self.proc_root = proc_root
        self.sensor = sensor or os.environ.get(ENV_SENSOR, "auto")
        self.out: queue.Queue[Payload] = queue.Queue(maxsize=100_000)
        self.coalescer = Coalescer(settle=settle, enrich=self._enrich, on_final=lambda sess: self.counting.on_final(sess))
        self.procs = ProcessTable(proc_root)
        self.log = logs.get("agent.files")
        self.mode = "off"
        self.detail = ""
        self.canary_seen: dict[tuple[int, str], float] = {}
        self.dropped = 0
        self.table = MountTable(clock=time.monotonic)
        self.hostpaths = HostPaths(self.table)
        self.staged = StagedCopies(state_dir)
        self.inodes = WeightInodes()
        self.offload = Offloader()
        self.copies = CopyTracker(self.coalescer, self.hostpaths, self.staged, self._fstype, self._is_weight_path,
                                  self._emit, lambda dev, ino: self._weight_inode(dev, ino))
        self._boot = boot_time(proc_root)
        self.who = Who(self.table, self._boot, proc_root)
        self.holders = HolderScan(self.copies, self.offload, self._is_weight_map, self._emit, self.who.proc, proc_root,
                                  self.inodes.get)
        self.copies.on_staged = self._on_staged
        self.relinks = Relinks(self.inodes, lambda: self.weights, self._emit, self.who.anyhow, proc_root)
        self.counting = KernelCounting(self.inodes, self.coalescer, self.copies, self.holders, self.staged, self.who,
                                       self._emit, proc_root, clock)
        self.copies.before_judging = self._count_for_copy
        self._copy_counted = 0.0
        self._describing: set[int] = set()  # asked, not answered (added by the snapshot thread too)
        self.exit_rchar: dict[int, tuple[int, float]] = {}  # pid -> (rchar at exit, when)
        self._pending: dict[int, list[tuple[str, bool, float]]] = {}  # pid -> closes waiting for its exit record
        self._canaries: list[tuple[float, int, WeightFile, dict[str, Any]]] = []  # waiting for the kernel's word
        self._unclaimed: dict[int, tuple[ExitRecord, float]] = {}  # pid -> an exit record nothing wanted yet
        self._mount_ids: tuple[float, set[int]] = (-1e9, set())  # every namespace's mount ids, when read
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._content: fan.Fanotify | None = None
        self._writes: fan.Fanotify | None = None
        self._fid: fan.Fanotify | None = None
        self._snapshot: Snapshotter | None = None
        self._inotify: Inotify | None = None
        self._exits: Any = None
        self.marks: WeightMarks | None = None
        self.write_marks: WriteMarks | None = None
        self._own_pid = os.getpid()

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        self._inotify = Inotify()
        try:
            self._content = fan.Fanotify()
            # Unlimited: a flood of unrelated writes must not push a copy's event out of the queue.
            self._writes = fan.Fanotify(unlimited_queue=True)
            self.mode = "fanotify"
            self.detail = ("fanotify notifications on weight paths and files (every mount namespace; no open ever "
                           "waits for the agent) and close-write marks on every filesystem: pids, bytes, copies")
        except OSError as exc:
            self.mode = "inotify"
            self.detail = (f"fanotify unavailable ({exc.strerror}; needs CAP_SYS_ADMIN): inotify fallback, "
                           "reads are seen without pids or byte counts")
        if self._content is not None:
            try:
                self._fid = fan.Fanotify(report_fid=True)
            except OSError as exc:
                self.detail += f"; no file-id fanotify group ({exc.strerror}): deleted weights are forgotten later"
        self.inodes.on_add.append(self._on_new_inode)
        self.inodes.on_remove.append(self._on_gone_inode)
        self.marks = WeightMarks(self._content, self._inotify, self.table,
                                 NEW_DIR if self._content is not None else Inotify.MASK | NEW_DIR, self._found)
        if self._content is None:
            self.counting.detail = "reads cannot be measured without fanotify"
        else:
            self.detail += "; " + self.counting.start(self.sensor)
            try:
                from weightwarden.agent.files.exits import host_netns_listener

                self._exits = host_netns_listener()
            except Exception as exc:  # noqa: BLE001 - optional: without it, fast exiters are estimated
                self.detail += f"; no taskstats exit records ({exc}): fast exiters are estimated (bytes_estimated)"
            for copy in self.staged.load():
                self._register_staged(copy)
            assert self._writes is not None
            self.write_marks = WriteMarks(self._writes, self.table, self.offload, self.proc_root)
            self.write_marks.scan()
            self._snapshot = Snapshotter(self._content, self._own_pid, self.proc_root, self._describe,
                                         positions=not self.counting.reads)
            self._snapshot.start()
        self.marks.sync(self.weights.roots())
        self._flush_kernel()
        if self._content is not None:
            self.holders.scan_all(self._own_pid)
            self.who.learn_exes()
        for why in self.marks.refused.values():
            self.detail += f"; {why}"
        self._thread = threading.Thread(target=self._run, name="file-watcher", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3)
        if self._snapshot is not None:
            self._snapshot.stop()
        self.counting.close()
        for src in (self._content, self._writes, self._fid, self._inotify, self._exits):
            if src is not None:
                src.close()
        self.who.close()
        self.offload.close()
        self.hostpaths.close()
        self.staged.save()
        for record in self.coalescer.flush():
            self._emit(FileAccess, record)

    def update(self, weights: WeightPaths) -> None:
        """A reloaded policy: new paths are marked on the next rescan; known weights stay known."""
        self.weights = weights

    @property
    def reads(self) -> str:
        """How bytes read are measured: "kernel" (counted by the eBPF sensor) or "proc" (rchar)."""
        return "kernel" if self.counting.reads else "proc"

    @property
    def reads_detail(self) -> str:
        return self.counting.detail

    def health_detail(self) -> str:
        stuck = self.offload.degraded
        return self.detail + (f"; {stuck}" if stuck else "")

    # -- helpers -------------------------------------------------------------

    def _emit(self, model: type[Payload], data: dict[str, Any]) -> None:
        try:
            payload = model.model_validate(data)
        except ValidationError as exc:
            # Our bug, not the host's: logged and counted, and the watcher keeps going.
            self.dropped += 1
            self.log.error("file_event_invalid", type=model.TYPE, error=str(exc)[:2000])
            return
        try:
            self.out.put_nowait(payload)
        except queue.Full:
            self.dropped += 1

    def _fstype(self, dev: tuple[int, int]) -> str | None:
        fstype = self.table.fstype(dev)
        if fstype is None and self.write_marks is not None:
            fstype = self.write_marks.fstypes.get(dev)
        return fstype

    def _is_weight_path(self, path: str) -> bool:
        return self.weights.matches(path)

    def _weight_inode(self, dev: tuple[int, int], ino: int) -> bool:
        wf = self.inodes.get(dev, ino)
        return wf is not None and wf.kind in ("weight", "canary")

    def _is_weight_map(self, path: str, dev: tuple[int, int], ino: int) -> bool:
        return self.inodes.get(dev, ino) is not None or self.weights.matches(path)

    def _describe(self, pid: int) -> None:
        """Command line, pipes and user, by a worker: the command line is the process's memory."""
        if pid in self.who.described or pid in self._describing:
            return
        self._describing.add(pid)
        if not self.offload.submit("describe", pid, lambda: self.procs.describe(pid)):
            self._describing.discard(pid)

    def _described(self, pid: int, info: ProcessInfo | None) -> None:
        if info is None:
            return
        # Pipe ends too: the collector links tar -> curl only through a pipe tar writes and curl reads.
        fields = {"cmdline": list(info.cmdline)[:8], "pipes": list(info.pipes), "pipe_ends": info.pipe_ends_json(),
                  "user": info.user,
                  "start_time": round(info.create_time, 2)}
        if not info.cmdline:
            del fields["cmdline"]  # a zombie's reads empty: what the kernel read of its argv stands
        if len(self.who.described) > 50_000:
            self.who.described.clear()
        self.who.described[pid] = fields
        patch = {k: v for k, v in fields.items() if k != "start_time"}
        for (spid, _p), sess in self.coalescer.sessions.items():
            if spid == pid and sess.proc:
                sess.proc.update(patch)
        self.copies.described(pid, patch)

    # -- weights known by inode ----------------------------------------------

    def _found(self, path: str, st: os.stat_result, what: str) -> None:
        """A walk met an entry of the weights tree: weight files and directories become known; a
        root that is a whole filesystem makes all of its files weights, in the kernel too."""
        if what == "fs":
            self.inodes.add(dev_of(st), st.st_ino, path, "fs")
        elif what == "dir":
            self.inodes.add(dev_of(st), st.st_ino, path, "dir", handle=kernel.path_handle(path))
        elif self.weights.matches(path):
            self.inodes.add(dev_of(st), st.st_ino, path, self._kind(path), st.st_size, handle=kernel.path_handle(path))

    def _kind(self, path: str) -> Kind:
        return "canary" if self.weights.is_canary(path) else "weight"

    def _on_new_inode(self, wf: WeightFile, via: str | None) -> None:
        if self.marks is not None and wf.kind != "fs":  # a filesystem has its filesystem mark
            self.marks.mark_file(via or wf.path, self._fid, is_dir=wf.kind == "dir")
        self.counting.add(wf)

    def _on_gone_inode(self, wf: WeightFile) -> None:
        try:
            self.counting.remove(wf)
        except FileBpfError as exc:
            self._kernel_failed(exc)

    def _register_staged(self, copy: StagedCopy, via: str | None = None) -> None:
        """A staged copy is watched as weights: marked by inode, counted by the kernel."""
        self.inodes.add(copy.dev, copy.ino, copy.path, "staged", copy.size, copy.sources,
                        bytes.fromhex(copy.handle) if copy.handle else None, via)
        self._flush_kernel()

    def _flush_kernel(self) -> None:
        try:
            self.counting.flush()
        except FileBpfError as exc:
            self._kernel_failed(exc)

    def _kernel_failed(self, exc: Exception) -> None:
        """The sensor's loader died or hung: reads are measured from /proc from now on, and said so."""
        said = self.counting.failed(exc)
        if said is not None:
            self.detail += f"; {said}"
            if self._snapshot is not None:
                self._snapshot.positions = True

    # -- event loop --------------------------------------------------------

    def _run(self) -> None:
        next_rescan = next_refresh = next_prune = 0.0
        handlers: dict[int, Callable[[float], None]] = {}
        assert self._inotify is not None
        handlers[self._inotify.fileno()] = self._on_inotify
        handlers[self.offload.fileno()] = self._on_offloaded
        handlers[self.counting.fileno()] = self._on_kernel_events
        if self._snapshot is not None:
            handlers[self._snapshot.fileno()] = self._on_snapshots
        if self._writes is not None:
            handlers[self._writes.fileno()] = self._on_writes
        if self._fid is not None:
            handlers[self._fid.fileno()] = self._on_fid
        if self._exits is not None:
            handlers[self._exits.fileno()] = self._on_exits
        poller = select.poll()
        for fd in handlers:
            poller.register(fd, select.POLLIN)
        while not self._stop.is_set():
            ready = poller.poll(200)
            now = self.clock()
            self.offload.check()
            for fd, _mask in ready:
                try:
                    handlers[fd](now)
                except Exception as exc:  # noqa: BLE001 - one odd event must not stop the watcher
                    self.log.warning("file_event_error", error=repr(exc))
            try:
                if self._canaries:
                    self._emit_canaries(now)
                if now >= next_refresh:
                    next_refresh = now + REFRESH_S
                    self._refresh(now)
                elif self.counting.due(now):
                    try:
                        self.counting.count(now)
                    except FileBpfError as exc:
                        self._kernel_failed(exc)
                # The loader sends a reader's opener record (who it is, its argv) before the counts that follow
                # it, but on the counting queue: taken before a record goes out, never after it.
                self._on_kernel_events(now)
                for record in self.coalescer.due(now, self.counting.counted_at if self.counting.sensor else None):
                    self._finished(record)
                if now >= next_rescan:
                    next_rescan = now + RESCAN_S
                    self.marks.sync(self.weights.roots())  # type: ignore[union-attr]
                    self._flush_kernel()
                    if self.write_marks is not None:
                        self.write_marks.scan()
                if now >= next_prune:
                    next_prune = now + PRUNE_S
                    self._prune()
            except Exception as exc:  # noqa: BLE001 - the loop must survive its own bugs
                self.log.error("file_watch_loop_error", error=repr(exc))

    def _finished(self, record: dict[str, Any]) -> None:
        self.copies.record(record)
        self._emit(FileAccess, record)

    def _enrich(self, sess: Session, record: dict[str, Any]) -> None:
        """Every name the file is known by, as the record leaves."""
        wf = self.inodes.get(*sess.file_key) if sess.file_key is not None else None
        if wf is not None:
            record.update(wf.identity())
        retry = record.pop("_view", None)
        if retry is not None and sess.pid is not None:
            # The opener was gone before we read its namespace: the kernel named it since, and another
            # process of that namespace (a container's init) shows the same mount table.
            seen = self._view(sess.pid, self.who.mnt_ns.get(sess.pid), *retry)
            if seen is not None:
                sess.extra["view_path"] = record["view_path"] = seen
                del sess.extra["_view"]

    def _on_snapshots(self, now: float) -> None:
        assert self._snapshot is not None
        items = self._snapshot.take()
        self._on_offloaded(now)  # descriptions made for these opens
        for item in items:
            try:
                self._on_weight_event(item, now)
            except Exception as exc:  # noqa: BLE001 - one odd event must not stop the watcher
                self.log.warning("file_event_error", error=repr(exc))
            finally:
                if item.event.fd >= 0:
                    os.close(item.event.fd)
        self._claim_exits(now)
        if self._snapshot.overflows or self._snapshot.dropped:
            n = self._snapshot.overflows + self._snapshot.dropped
            self._snapshot.overflows = self._snapshot.dropped = 0
            self.dropped += n
            counted = " (their bytes are still counted in the kernel)" if self.reads == "kernel" else ""
            self._emit(EventsDropped, {"reason": f"fanotify queue overflow or watcher backlog{counted}", "dropped": n,
                                       "source": "file-watcher"})

    def _on_weight_event(self, item: Snapshot, now: float) -> None:
        ev = item.event
        st = kernel.fstat(ev.fd)
        if st is None:
            return
        ours = self.hostpaths.ours(st.mnt_id)
        view = fan.fd_path(ev.fd) or ""
        host = view if ours else self.hostpaths.resolve(ev.fd, st)
        name = host or view
        wf = self.inodes.get(st.dev, st.ino)
        if wf is None:
            if not self.weights.matches(name):
                return  # a README next to the weights, or a file elsewhere on a marked filesystem
            wf = self.inodes.add(st.dev, st.ino, name, self._kind(name), st.size, handle=kernel.file_handle(ev.fd))
            self._flush_kernel()
            if wf is None:
                return
        elif name and name not in wf.names:
            if not self.counting.on("relinks"):
                self.relinks.on_opened_as(wf, name, st.nlink)  # the link itself was not seen
            self.inodes.named(wf, name)
        path = wf.path
        if wf.kind == "canary":
            if ev.mask & fan.FAN_OPEN and now - self.canary_seen.get((ev.pid, path), 0) >= CANARY_REPEAT_S:
                self.canary_seen[(ev.pid, path)] = now
                proc = self.who.proc(ev.pid, item.proc)
                # Gone before we looked: the kernel names it when it read the canary (a moment later).
                wait = 0.5 if not proc.get("exe") and self.reads == "kernel" else 0.0
                self._canaries.append((now + wait, ev.pid, wf, proc))
                self._emit_canaries(now)
            return
        staged = self.staged.get(st.dev, st.ino) if wf.kind == "staged" else None
        rchar = item.rchar
        if ev.mask & fan.FAN_OPEN:
            key = (ev.pid, path)
            opener = self.who.proc(ev.pid, item.proc) if key not in self.coalescer.sessions else None
            self.coalescer.opened(now, ev.pid, path, st.size, rchar, opener, item.position)
            sess = self.coalescer.sessions[key]
            sess.io_uring = sess.io_uring or item.io_uring
            if sess.opens == 1:
                self._session_fields(sess, wf, staged, ours, host, view, ev.pid, item.mnt_ns, st.mnt_id)
                self.copies.opened(ev.pid, opener or sess.proc, path, st.size, staged.sources if staged else [])
                self._describe(ev.pid)
                self._look_at_fds(sess, view)
            self.copies.holders.setdefault(ev.pid, -1)  # scan its mappings from now on
        if ev.mask & (fan.FAN_CLOSE_NOWRITE | fan.FAN_CLOSE_WRITE):
            self._on_close(ev.pid, path, bool(ev.mask & fan.FAN_CLOSE_WRITE), rchar, now)

    def _session_fields(self, sess: Session, wf: WeightFile, staged: StagedCopy | None, ours: bool,
                        host: str | None, view: str, pid: int, mnt_ns: str | None, mnt_id: int | None) -> None:
        sess.file_key = wf.key
        sess.scan_path = view
        if not ours:
            seen = self._view(pid, mnt_ns, mnt_id, view, host or view)
            sess.extra.update({"host_path": wf.path, "view_path": seen})
            if seen is None and view != (host or view) and mnt_id is not None:
                sess.extra["_view"] = (mnt_id, view, host or view)  # asked again as the record leaves
        if staged is not None:
            sess.extra["staged_copy_of"] = staged.sources[:100]

    def _view(self, pid: int, ns: str | None, mnt_id: int | None, view: str, path: str) -> str | None:
        """The path as the process saw it: the printed path, if the mount it came through is in its
        namespace (an overlay's lower-layer file comes through a mount no namespace has). The opener may
        be gone already: then any process of its namespace shows the same mount table."""
        if view == path or mnt_id is None:
            return None
        mounts = read_mountinfo(pid, self.proc_root)
        if not mounts and ns is not None:
            known = self.write_marks.namespaces if self.write_marks is not None else {}
            other = known.get(ns) or mount_namespaces(self.proc_root).get(ns)  # a scan only if it is new
            mounts = read_mountinfo(other, self.proc_root) if other is not None else []
        if not mounts:
            # Its namespace unknown too (gone before the agent read /proc): a mount some namespace on the
            # host has is one a process saw the file through; mount ids are unique on the host.
            return view if self._attached(mnt_id) else None
        return view if any(m.mnt_id == mnt_id for m in mounts) else None

    def _attached(self, mnt_id: int) -> bool:
        """Whether a mount is in some mount namespace: every namespace's table, read at most once a second."""
        stamp, ids = self._mount_ids
        now = time.monotonic()
        if mnt_id in ids and now - stamp < 10.0:
            return True
        if now - stamp < 1.0:
            return False
        ids = {m.mnt_id for pid in mount_namespaces(self.proc_root).values() for m in read_mountinfo(pid, self.proc_root)}
        self._mount_ids = (now, ids)
        return mnt_id in ids

    def _on_close(self, pid: int, path: str, wrote: bool, rchar: int | None, now: float) -> None:
        self.counting.soon = True
        base = self.coalescer.baseline(pid, path)
        if rchar is not None and base is not None and rchar < base:
            rchar = None  # a zombie's /proc/PID/io reads as zeros: use its exit record
        how = "rchar"
        if rchar is None and pid in self.exit_rchar:
            rchar = self.exit_rchar[pid][0]
            how = "taskstats"
        if rchar is None:
            # Gone already: close on its exit record, or on an estimate if none comes.
            self._pending.setdefault(pid, []).append((path, wrote, now))
            return
        self.coalescer.closed(now, pid, path, rchar, wrote=wrote, how=how)
        self.holders.look(pid)  # mapped and closed (a model loader)? known before the record goes out

    def _look_at_fds(self, sess: Session, view: str) -> None:
        """The reader's descriptors on the file: offsets (reads rchar misses) and io_uring instances."""
        if sess.pid is None or not view:
            return
        scan = scan_fds(sess.pid, view, self.proc_root)
        if scan is None:
            return
        sess.io_uring = sess.io_uring or scan.io_uring
        self.copies.saw_files(sess.pid, scan.others)
        if scan.files:
            sess.position = max(sess.position, max(f.position for f in scan.files))

    def _on_writes(self, now: float) -> None:
        assert self._writes is not None
        events = self._writes.read()
        if self._snapshot is not None:
            # Opens first: a writer's open of the weights was read before it could write.
            self._snapshot.settled()
            self._on_snapshots(now)
        for ev in events:
            try:
                if ev.mask & fan.FAN_Q_OVERFLOW:
                    self.dropped += 1
                    self._emit(EventsDropped, {"reason": "fanotify write queue overflow", "source": "file-watcher"})
                elif ev.pid != self._own_pid:
                    writer = ev.pid if self.copies.interesting(ev.pid) else self.copies.writer_of(ev.fd)
                    if writer is None and self.copies.large(ev.fd) and self._read_weights(ev.pid, now):
                        writer = ev.pid
                    if writer is None:
                        continue
                    io = io_counters(writer, self.proc_root)
                    if io is not None:
                        self.coalescer.update_rchar(writer, io.rchar)
                    alive = io is not None or writer in self.exit_rchar
                    self.copies.on_write(ev, writer, now, alive)
            finally:
                if ev.fd >= 0:
                    os.close(ev.fd)

    def _read_weights(self, pid: int, now: float) -> bool:
        """A large file written by a process the watcher does not know as a reader: the kernel may."""
        try:
            return self.counting.read_weights(pid, now)
        except FileBpfError as exc:
            self._kernel_failed(exc)
            return False

    def _count_for_copy(self) -> None:
        """A copy is judged by what its writer read. The kernel has counted every read already, but the
        agent reads those counts once an interval: a `cp` that exits between two would be judged on none."""
        now = self.clock()
        if not self.counting.reads or now - self._copy_counted < COPY_COUNT_S:
            return
        self._copy_counted = now
        try:
            self.counting.count(now)
        except FileBpfError as exc:
            self._kernel_failed(exc)

    def _on_staged(self, fd: int, copy: StagedCopy) -> None:
        self._register_staged(copy, f"/proc/self/fd/{fd}")

    def _on_exits(self, now: float) -> None:
        records = self._exits.read()
        if self._snapshot is not None:
            # Opens first: an exit record of a reader whose open is still in the backlog is wanted.
            self._snapshot.settled()
            self._on_snapshots(now)
        # And the kernel's word on who the exited were (made at their first read, long before they exited,
        # but behind the loader's queue on a busy host): a copy judged at exit names its writer from it.
        self._on_kernel_events(now)
        open_pids = self.coalescer.open_pids() if records else set()  # once a batch: exits come by thousands
        for rec in records:
            wanted = rec.pid in self._pending or rec.pid in self.copies.pending \
                or rec.pid in open_pids or self.copies.interesting(rec.pid)
            if wanted:
                self._exited(rec, now)
            else:
                # Its open or close may still be in fanotify's queue (a reader that exits at once, on a busy
                # host): kept a few seconds for it, then forgotten.
                self._unclaimed[rec.pid] = (rec, now)
                self._prune_unclaimed(now)

    def _claim_exits(self, now: float) -> None:
        """Exit records that came before the opens and closes they finish."""
        if not self._unclaimed:
            return
        self._prune_unclaimed(now)  # a quiet host prunes here, not on the next exit
        if not self._pending and not self.coalescer.sessions:
            return
        for pid in (self._pending.keys() | self.coalescer.open_pids()) & self._unclaimed.keys():
            rec, _seen = self._unclaimed.pop(pid)
            self._exited(rec, now)

    def _prune_unclaimed(self, now: float) -> None:
        """Unclaimed exit records leave oldest first: past UNCLAIMED_S, or beyond MAX_UNCLAIMED."""
        while self._unclaimed and (len(self._unclaimed) > MAX_UNCLAIMED
                                   or now - next(iter(self._unclaimed.values()))[1] > UNCLAIMED_S):
            del self._unclaimed[next(iter(self._unclaimed))]

    def _exited(self, rec: ExitRecord, now: float) -> None:
        """A watched process's exit record: what it read in its life closes its files, and names it."""
        pending = self._pending.pop(rec.pid, [])
        self.exit_rchar[rec.pid] = (rec.read_char, now)
        gone = self.who.from_exit(rec.pid, rec.comm, rec.uid, rec.ppid, rec.exe)
        named = {k: v for k, v in gone.items() if v is not None}
        for (spid, _path), sess in self.coalescer.sessions.items():
            if spid == rec.pid and not sess.proc.get("exe"):
                sess.proc.update({k: v for k, v in named.items() if not sess.proc.get(k)})
        if (reader := self.copies.readers.get(rec.pid)) is not None and not reader.proc.get("exe"):
            reader.proc.update({k: v for k, v in named.items() if not reader.proc.get(k)})
        for path, wrote, _ts in pending:
            self.coalescer.closed(now, rec.pid, path, rec.read_char, wrote=wrote, how="taskstats")
        # Files it never closed (killed mid-read) close with it.
        for (pid, path), sess in list(self.coalescer.sessions.items()):
            if pid == rec.pid:
                while sess.open_now:
                    self.coalescer.closed(now, pid, path, rec.read_char, how="taskstats")
        self.copies.settle(rec.pid)

    def _on_fid(self, now: float) -> None:
        """What happened to a known inode itself: deleted (forgotten: its number may be reused),
        or moved (found again by its handle, where the kernel's programs do not report it)."""
        assert self._fid is not None
        for ev in self._fid.read_fid():
            if ev.mask & fan.FAN_Q_OVERFLOW:
                self.dropped += 1
                continue
            wf = self.inodes.by_handle(ev.handle) if ev.handle else None
            if wf is None:
                continue
            if ev.mask & fan.FAN_DELETE_SELF:
                self.inodes.remove(wf.dev, wf.ino)
            elif ev.mask & fan.FAN_MOVE_SELF and not self.counting.on("relinks"):
                where = self.hostpaths.locate(wf.dev, ev.handle)
                if where is not None:
                    self.relinks.on_moved(wf, where, ev.pid)

    def _on_kernel_events(self, now: float) -> None:
        for ev in self.counting.events():
            if isinstance(ev, wire.Relink):
                self.relinks.on_kernel(ev, self._boot)
        self._emit_canaries(now)

    def _emit_canaries(self, now: float) -> None:
        """Canary opens whose opener was gone before we looked: sent once the kernel has named it,
        or after half a second without it."""
        waiting = []
        for deadline, pid, wf, proc in self._canaries:
            known = self.who.seen.get(pid)
            if known is None and now < deadline:
                waiting.append((deadline, pid, wf, proc))
                continue
            self._emit(CanaryRead, {"pid": pid, "path": wf.path, "severity": "critical", **wf.identity(),
                                    **proc, **(known or {})})
        self._canaries = waiting

    def _on_inotify(self, now: float) -> None:
        assert self._inotify is not None and self.marks is not None
        ino = self._inotify
        for mask, path in ino.read():
            if self.marks.on_new_entry(mask, path):
                self._flush_kernel()
                continue
            if self._content is not None:
                if mask & NEW_DIR and self.weights.matches(path):
                    try:
                        st = os.stat(path, follow_symlinks=False)  # noqa: PTH116 - per inotify event: os is 2x cheaper
                    except OSError:
                        continue
                    self._found(path, st, "file")  # a new weight file: known before anyone opens it
                    self._flush_kernel()
                continue
            if not self.weights.matches(path):
                continue
            if self.weights.is_canary(path):
                if mask & ino.IN_OPEN:
                    self._emit(CanaryRead, {"pid": None, "path": path, "severity": "critical",
                                            "note": "inotify: the reader's pid is unknown"})
                continue
            if mask & ino.IN_OPEN:
                self.coalescer.opened(now, None, path, _size(path), None)
            if mask & ino.IN_ACCESS:
                self.coalescer.accessed(now, None, path)
            if mask & (ino.IN_CLOSE_WRITE | ino.IN_CLOSE_NOWRITE):
                self.coalescer.closed(now, None, path, None)

    def _on_offloaded(self, now: float) -> None:
        for tag, pid, value in self.offload.results():
            if isinstance(value, Exception):
                self._describing.discard(pid)
                continue
            if tag == "describe":
                self._describing.discard(pid)
                self._described(pid, value)
            elif tag in ("holder", "premapped"):
                self.holders.on_result(tag, pid, value, self.coalescer)

    # -- periodic ------------------------------------------------------------

    def _refresh(self, now: float) -> None:
        self.offload.check()
        try:
            self.counting.count(now)
        except FileBpfError as exc:
            self._kernel_failed(exc)
        wait = EXIT_WAIT_S if self._exits is not None else 0.0
        for pid in [p for p, items in self._pending.items() if all(now - ts >= wait for _x, _w, ts in items)]:
            # Closes whose exit record did not come (or cannot): assume the whole file was read.
            for path, wrote, _ts in self._pending.pop(pid):
                self.coalescer.closed(now, pid, path, None, wrote=wrote, estimate_whole_file=True)
        self.copies.settle_older_than(now, wait)
        for (spid, _path), sess in self.coalescer.sessions.items():
            if spid is None or not sess.open_now:
                continue
            io = io_counters(spid, self.proc_root)
            if io is not None:
                sess.rchar_now = io.rchar
            self._look_at_fds(sess, sess.scan_path or sess.extra.get("view_path") or sess.path)
        self.holders.look_all()
        self.staged.save()
        for pid in [p for p, (_r, ts) in self.exit_rchar.items() if now - ts > 30]:
            del self.exit_rchar[pid]

    def _prune(self) -> None:
        self.copies.forget(lambda pid: start_time(pid, self.proc_root))
        live = set(self.copies.readers) | set(self.copies.holders)
        self.offload.forget(lambda pid: start_time(pid, self.proc_root) is not None)
        self.who.forget(live)
        self.staged.prune()
        for wf in self.inodes:
            if wf.kind == "staged" and self.staged.get(wf.dev, wf.ino) is None:
                self.inodes.remove(wf.dev, wf.ino)  # a copy that is gone
        self.canary_seen = {k: ts for k, ts in self.canary_seen.items() if self.clock() - ts < CANARY_REPEAT_S}


def _size(path: str) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0
