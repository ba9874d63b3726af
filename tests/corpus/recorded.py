"""Recorded scenarios: event streams shaped exactly as the agent's models say, replayed through
the collector. Sizes are realistic (recorded bytes cost nothing): a 2 GB model, uploads at
about 800 Mbit/s, inference replies of kilobytes.

Routes whose agent support other parts are building (relays, io_uring, containers, ICMP,
network storage, derivatives) are here as recorded streams; ``tests/corpus/real.py`` runs the
routes today's agent already reports end to end. The table of which is which is in
``tests/corpus/__init__.py``.
"""

from __future__ import annotations

from tests.collector.scenarios import EBPF, MB, T0, WEIGHTS, Stream, proc_fields, started_at
from tests.corpus.model import Expect, Scenario
from weightwarden.events import MAX_DESTINATIONS

GB = 1000 * MB
SIZE = 2 * GB  # the model on every recorded host
OUT = "203.0.113.9"  # somewhere not allowlisted
T = T0 + 100  # when each story's main act starts
POD = {"cgroup": "/kubepods/burstable/pod1b2c/cri-containerd-4f1e", "runtime": "containerd", "id": "4f1e9a0c77d2",
       "pod_uid": "1b2c", "pod_namespace": "ml", "pod_name": "llama-serve-7d9f"}


def _host(name: str) -> Stream:
    s = Stream(name)
    s.started(T0, weights=SIZE)
    return s


def _steal(s: Stream, pid: int, nbytes: int = SIZE, at: float = T + 10, per_s: int = 100 * MB, **kw: object) -> None:
    s.upload(at, pid, nbytes, max(1, nbytes // per_s), **kw)


def _theft(name: str, route: str, build: object, *must: Expect, stolen_at: float = T + 10) -> Scenario:
    return Scenario(name, "theft", route, build, list(must), stolen_at=stolen_at)  # type: ignore[arg-type]


def _benign(name: str, route: str, build: object, must_not: tuple[str, ...] = ()) -> Scenario:
    return Scenario(name, "benign", route, build, must_not=list(must_not))  # type: ignore[arg-type]


def direct() -> list[Stream]:
    s = _host("t-direct")
    s.read(T, 101, SIZE)
    _steal(s, 101)
    return [s]


def tar_pipe_curl() -> list[Stream]:
    s = _host("t-tar-curl")
    # sh -c 'tar c /srv/models | curl -T - ...': tar writes pipe 9001, curl reads it; both write the log pipe 7.
    s.read(T, 201, SIZE, exe="/usr/bin/tar", ppid=200, ends={9001: "w", 7: "w"}, took=20, report_at=T + 30)
    _steal(s, 202, exe="/usr/bin/curl", ppid=200, ends={9001: "r", 7: "w"})
    return [s]


def staged(derivative: bool, name: str, exe: str, out: str, factor: float = 1.0) -> list[Stream]:
    s = _host(name)
    size = int(SIZE * factor)
    s.read(T, 301, SIZE, exe=exe)
    s.copy(T + 2, 301, size, out, exe=exe, derivative=derivative)
    s.read(T + 600, 302, size, path=out, exe="/usr/bin/curl", staged=[WEIGHTS])
    _steal(s, 302, size, at=T + 600, exe="/usr/bin/curl")
    return [s]


def split_parts() -> list[Stream]:
    s = _host("t-split")
    s.read(T, 311, SIZE, exe="/usr/bin/split")
    for i in range(4):
        part = f"/tmp/.p/part_a{'abcd'[i]}"
        s.copy(T + 2 + i, 311, SIZE // 4, part, exe="/usr/bin/split", derivative=True)
        s.read(T + 60 + 30 * i, 320 + i, SIZE // 4, path=part, exe="/usr/bin/curl", staged=[WEIGHTS])
        _steal(s, 320 + i, SIZE // 4, at=T + 60 + 30 * i, exe="/usr/bin/curl")
    return [s]


def _serve(s: Stream, pid: int, at: float, seconds: int, clients: int = 40, reply: int = 8000) -> None:
    """An inference server answering clients on connections they opened: kilobytes each."""
    for i in range(seconds):
        dests = [{"address": f"198.18.{(i * clients + c) // 250 % 250}.{(i * clients + c) % 250 + 1}",
                  "port": 40000 + c, "tx_bytes": reply, "accepted": True} for c in range(min(clients, 32))]
        s.send(at + i + 1, pid, 0, exe="/usr/bin/python3.11", dests=dests, container=POD)


def holder_burst(outbound: bool) -> list[Stream]:
    s = _host("t-holder-out" if outbound else "t-holder-pull")
    s.holder(T, 401, SIZE, start=T - 3600, container=POD)
    _serve(s, 401, T, 30)
    _steal(s, 401, start=T - 3600, address="198.51.100.77", port=443 if outbound else 51234,
           accepted=None if outbound else True, container=POD, at=T + 40)
    return [s]


def relay(name: str, via: str, relay_exe: str, relay_pid: int, port: int, depth: int = 1,
          relay_start: float | None = None, allowed: bool = False) -> list[Stream]:
    s = _host(name)
    s.read(T, 501, SIZE, exe="/usr/bin/python3.11")
    chain = [(relay_pid + i, "/usr/bin/socat" if i < depth - 1 else relay_exe) for i in range(depth)]
    for i in range(SIZE // (100 * MB)):
        at = T + 10 + i + 1
        s.hand(at, 501, chain[0][0], 100 * MB, to_exe=chain[0][1], via=via,
               to_start=relay_start if depth == 1 else None)
        for (a, exe_a), (b, exe_b) in zip(chain, chain[1:], strict=False):
            s.send(at, a, 0, exe=exe_a, start=relay_start, peers=[{"pid": b, "start_time": started_at(b),
                   "name": exe_b.rsplit("/", 1)[-1], "exe": exe_b, "via": "tcp", "tx_bytes": 100 * MB}])
        last, exe_last = chain[-1]
        s.send(at, last, 100 * MB, address="198.51.100.20", port=port, exe=exe_last,
               start=relay_start if depth == 1 else None, allowed=allowed, protocol="udp" if port == 53 else "tcp")
    return [s]


def protocol(name: str, proto: str) -> list[Stream]:
    s = _host(name)
    s.read(T, 601, SIZE)
    _steal(s, 601, address="198.51.100.30", port=0, protocol=proto)
    return [s]


def io_uring() -> list[Stream]:
    s = _host("t-io-uring")
    s.read(T, 701, 0, size=SIZE, how="io_uring", exe="/opt/x/fastcopy")
    _steal(s, 701, exe="/opt/x/fastcopy")
    return [s]


def mmap_before_agent() -> list[Stream]:
    s = _host("t-mmap-early")
    s.holder(T, 711, SIZE, start=T0 - 86400)  # opened and mapped a day before the agent started
    _steal(s, 711, start=T0 - 86400)
    return [s]


def network_storage(name: str, fs: str) -> list[Stream]:
    s = _host(name)
    s.read(T, 801, SIZE, exe="/usr/bin/cp")
    s.copy(T + 20, 801, SIZE, f"/mnt/{fs}/llama/model.safetensors", remote=fs)
    return [s]


def after_30h() -> list[Stream]:
    s = _host("t-30h")
    s.read(T, 901, SIZE)
    for h in range(1, 31):  # the agent keeps reporting the host; the thief sleeps
        s.add("heartbeat", T + h * 3600)
    _steal(s, 901, at=T + 30 * 3600)
    return [s]


def padding() -> list[Stream]:
    s = _host("t-padding")
    s.read(T, 1001, SIZE)
    for i in range(SIZE // (100 * MB)):
        dests = [{"address": OUT, "port": 10000 + d, "tx_bytes": 100 * MB // 15000, "protocol": "udp"}
                 for d in range(MAX_DESTINATIONS)]
        s.send(T + 11 + i, 1001, 0, dests=dests,
               other={"count": 15000 - MAX_DESTINATIONS, "tx_bytes": 100 * MB * (15000 - MAX_DESTINATIONS) // 15000})
    return [s]


def chunked() -> list[Stream]:
    s = _host("t-chunked")
    s.read(T, 1101, SIZE, exe="/usr/bin/tar")
    for i in range(20):
        s.send(T + 10 + 2 * i + 1, 1120 + i, SIZE // 20, exe="/usr/bin/curl", ppid=1110)
    return [s]


def container_theft() -> list[Stream]:
    s = _host("t-container")
    s.read(T, 1201, SIZE, path="/models/llama/model-00001.safetensors", host_path=WEIGHTS, container=POD)
    _steal(s, 1201, container=POD)
    return [s]


def fork_child() -> list[Stream]:
    s = _host("t-fork")
    cmd = ["python3", "serve.py"]
    s.read(T, 1301, SIZE, cmdline=cmd)
    _steal(s, 1302, ppid=1301, cmdline=cmd, start=T + 5)  # os.fork() after loading: same memory
    return [s]


def exec_child() -> list[Stream]:
    s = _host("t-exec-child")
    s.read(T, 1401, SIZE, cmdline=["python3", "job.py"])
    _steal(s, 1402, ppid=1401, exe="/usr/bin/curl", start=T + 5)  # no pipe, copy or socket seen between them
    return [s]


def slow_trickle() -> list[Stream]:
    s = _host("t-slow")
    for minute in range(5 * 60):  # 2 MB a minute for five hours: 0.27 Mbit/s, under any cap
        s.send(T + 60 * minute, 1501, 2 * MB, address="198.51.100.7", exe="/usr/bin/rsync")
    return [s]


def canary() -> list[Stream]:
    s = _host("t-canary")
    s.add("canary_read", T, pid=1601, path="/srv/models/.canary/consolidated.00.pth", severity="critical",
          name="cat", exe="/usr/bin/cat", uid=0)
    return [s]


def unowned() -> list[Stream]:
    s = _host("t-unowned")
    s.read(T, 1701, SIZE)
    for i in range(20):  # the bytes of flows whose owner could not be named
        s.add("egress_sample", T + 11 + i, ts=T + 11 + i, start_ts=T + 10 + i, interval_s=1.0,
              interfaces=[{"name": "eth0", "tx_bytes": 100 * MB}], processes=[], unowned_flow_tx_bytes=100 * MB)
    return [s]


def _stage(pid: int, exe: str, ends: dict[int, str], ppid: int = 1) -> dict[str, object]:
    """A pipeline stage as the agent names it in a sample: a process feeding a sender's pipe."""
    return proc_fields(pid, exe, ppid, ends=ends)


def pipeline3(name: str = "t-pipeline", reader: bool = True) -> list[Stream]:
    """python c.py | base64 | curl -T -: python writes pipe 1801, base64 reads it and writes 1802, curl
    reads 1802. ``reader``: python read the weights (else it makes unrelated data, and another process
    reads the weights meanwhile)."""
    s = _host(name)
    s.sensor = EBPF
    if reader:
        s.read(T, 1801, SIZE, exe="/usr/bin/python3.11", ppid=1800, ends={1801: "w", 9: "w"}, took=5)
    else:
        s.read(T, 1809, SIZE, exe="/usr/bin/sha256sum", ppid=1, ends={19: "w"}, took=5)  # a check, elsewhere
    base64 = _stage(1802, "/usr/bin/base64", {1801: "r", 1802: "w", 9: "w"}, ppid=1800)
    _steal(s, 1803, SIZE if reader else SIZE // 2, exe="/usr/bin/curl", ppid=1800, ends={1802: "r", 9: "w"},
           stages=[base64])
    return [s]


def fifo(name: str = "t-fifo", reader: bool = True) -> list[Stream]:
    """cat w > /tmp/f & curl -T /tmp/f: both ends reach the FIFO's inode (1900123)."""
    s = _host(name)
    s.sensor = EBPF
    if reader:
        s.read(T, 1901, SIZE, exe="/usr/bin/cat", ends={1900123: "w"}, took=5)
    else:  # cat of a dataset into the FIFO, while a loader reads the weights on its own
        s.read(T, 1909, SIZE, exe="/usr/bin/python3.11", took=5)
    _steal(s, 1902, SIZE if reader else SIZE // 2, exe="/usr/bin/curl", ends={1900123: "r"})
    return [s]


def packet_socket() -> list[Stream]:
    s = _host("t-packet")
    s.read(T, 2001, SIZE, exe="/usr/bin/python3.11")
    s.add("raw_socket", T + 30, **proc_fields(2001, "/usr/bin/python3.11"), family="packet", socket_type="raw",
          protocol=2048, interface="eth0", ifindex=2, bypass=True, tx_bytes=SIZE, tx_packets=SIZE // 1400,
          allowed=False, action="alert", first_ts=T + 10, last_ts=T + 30)
    return [s]


def relinked() -> list[Stream]:
    s = _host("t-relink")
    s.add("weights_relinked", T, pid=2101, name="ln", exe="/usr/bin/ln", uid=1000, how="hardlink",
          from_path=WEIGHTS, to_path="/tmp/x/notes.bin", outside_tree=True, inode=4242, dev=2049,
          names=[WEIGHTS, "/tmp/x/notes.bin"], size=SIZE)
    s.read(T + 5, 2102, SIZE, exe="/usr/bin/curl")
    s.events[-1]["data"].update(inode=4242, dev=2049, names=[WEIGHTS, "/tmp/x/notes.bin"])
    _steal(s, 2102, exe="/usr/bin/curl", at=T + 10)
    return [s]


def unexplained() -> list[Stream]:
    s = _host("t-unexplained")
    s.sensor = EBPF
    s.read(T, 2201, SIZE)
    for i in range(20):  # hand-built frames: no process, no header explains them
        s.add("unexplained_egress", T + 11 + i, interface="eth0", unexplained_tx_bytes=100 * MB,
              tx_bytes=103 * MB, attributed_tx_bytes=0, overhead_tx_bytes=3 * MB, tx_packets=73000,
              first_ts=T + 10 + i, last_ts=T + 11 + i, sensor=EBPF)
    return [s]


def blinded() -> list[Stream]:
    s = _host("t-blinded")
    s.sensor = EBPF
    s.read(T, 2301, SIZE)
    _steal(s, 2302, exe="/usr/bin/rclone")  # unlinked, and the sensor was detached meanwhile
    s.add("sensor_tampered", T + 40, changes=[{"kind": "program_detached", "name": "ww_sock_create"}],
          reattached=True, detected_ts=T + 40, blind_from_ts=T + 5)
    return [s]


def hub() -> list[Stream]:
    s = _host("b-hub")
    s.sensor = EBPF
    # A container shim reads two containers' stdout (one of them a loader's) and writes another's stdin.
    s.read(T, 2401, SIZE, ends={2401: "w"}, container=POD)
    shim = _stage(2400, "/usr/bin/containerd-shim-runc-v2", {2401: "r", 2402: "r", 2403: "w"})
    s.upload(T + 30, 2404, 300 * MB, 6, exe="/usr/bin/aws", ends={2403: "r", 2402: "w"}, stages=[shim],
             container=POD)
    return [s]


def script_unrelated_ebpf() -> list[Stream]:
    s = _host("b-script-ebpf")
    s.sensor = EBPF
    # The false alarm, on a sensor that sees everything: read the weights, then upload an
    # unrelated 800 MB dataset, sharing only stderr with the reader.
    s.read(T, 2501, SIZE, exe="/usr/bin/python3.11", ppid=2500, ends={2: "w"})
    s.upload(T + 30, 2502, 800 * MB, 8, exe="/usr/bin/curl", ppid=2500, ends={2: "w"})
    return [s]


# -- benign ---------------------------------------------------------------------------------------


def inference(accepted: bool | None, many: bool = False) -> list[Stream]:
    s = _host("b-inference" + ("-old-agent" if accepted is None else "") + ("-many" if many else ""))
    s.read(T, 2001, SIZE, container=POD)  # loads the model once
    s.holder(T + 30, 2001, SIZE, container=POD)
    for i in range(120):  # two minutes of answers, a few KB each, to a stream of clients
        dests = [{"address": f"198.18.{(i * 7 + c) // 250 % 250}.{(i * 7 + c) % 250 + 1}", "port": 40000 + c,
                  "tx_bytes": 6000, **({"accepted": accepted} if accepted is not None else {})} for c in range(7)]
        other = {"count": 400, "tx_bytes": 400 * 6000} if many else None
        s.send(T + 60 + i, 2001, 0, dests=dests, container=POD, other=other)
        if i % 15 == 0:  # and pushes its metrics (OpenTelemetry) every 15 s
            s.send(T + 60 + i, 2001, 40_000, address="198.51.100.50", port=4318, container=POD)
    return [s]


def model_loading() -> list[Stream]:
    s = _host("b-loading")
    for i in range(4):
        s.read(T + 20 * i, 2101, SIZE // 4, path=WEIGHTS.replace("00001", f"0000{i + 1}"))
    return [s]


def checkpoint_allowlisted() -> list[Stream]:
    s = _host("b-checkpoint")
    s.read(T, 2201, SIZE)
    _steal(s, 2201, address="10.20.0.5", allowed=True)  # the site's object storage, allowlisted
    return [s]


def dataset_download() -> list[Stream]:
    s = _host("b-dataset")
    s.read(T, 2301, SIZE)
    for i in range(300):  # requests out, data in: a few KB up per second
        s.send(T + 10 + i, 2302, 3000, address="198.51.100.90", exe="/usr/bin/aria2c")
    return [s]


def metrics_push() -> list[Stream]:
    s = _host("b-metrics")
    s.holder(T, 2401, SIZE)
    for i in range(24 * 60):  # a day of pushes: 300 KB a minute from the process holding the model
        s.send(T + 60 * i, 2401, 300_000, address="198.51.100.60", port=9091, interval=60)
    return [s]


def log_shipping() -> list[Stream]:
    s = _host("b-logs")
    s.read(T, 2501, SIZE, ends={77: "w"})  # the server writes its log pipe...
    for i in range(180):  # ...which fluent-bit reads and ships: 1 MB a minute
        s.send(T + 60 * i, 2502, 1 * MB, address="198.51.100.70", port=24224, exe="/usr/bin/fluent-bit",
               ends={77: "r"}, interval=60)
    return [s]


def package_install() -> list[Stream]:
    s = _host("b-pip")
    s.read(T, 2601, SIZE)
    for i in range(60):
        s.send(T + 30 + i, 2602, 20_000, address="151.101.0.223", exe="/usr/bin/pip")
    return [s]


def script_unrelated() -> list[Stream]:
    s = _host("b-script")
    s.read(T, 2701, SIZE, exe="/usr/bin/sha256sum", ppid=2700, ends={5: "w"})  # verify the weights
    s.send(T + 30, 2702, 5 * MB, exe="/usr/bin/curl", ppid=2700, ends={5: "w"})  # upload the report
    return [s]


def cron_backup() -> list[Stream]:
    s = _host("b-cron")
    for h in range(24):  # hourly: a health check reads a weight shard, a backup job ships /etc
        s.read(T + 3600 * h, 2800 + 2 * h, 200 * MB)
        s.upload(T + 3600 * h + 120, 2801 + 2 * h, 3 * MB, 3, exe="/usr/bin/rsync", address="198.51.100.80", port=873)
    return [s]


def warmup_then_dataset() -> list[Stream]:
    s = _host("b-warmup")
    # The false alarm: the entrypoint warms the page cache, then uploads a dataset;
    # both write the container's stdout pipe.
    s.read(T, 2901, SIZE, ends={7: "w"}, ppid=2900, container=POD)
    s.upload(T + 40, 2902, 60 * MB, 6, exe="/usr/bin/aws", ends={7: "w"}, ppid=2900, container=POD)
    return [s]


def before_the_read() -> list[Stream]:
    s = _host("b-before")
    # A backup that finished 0.2 s before another process read the weights never counts.
    for i in range(20):
        s.send(T - 20 + i + 1, 3001, 100 * MB, exe="/usr/bin/restic", span=(T - 20 + i, T - 20 + i + (0.8 if i == 19 else 1)))
    s.read(T, 3002, SIZE)
    return [s]


def pid_reuse() -> list[Stream]:
    s = _host("b-pid-reuse")
    s.read(T, 3101, SIZE, start=T - 5)  # one process read the weights and exited...
    _steal(s, 3101, at=T + 3 * 3600, start=T + 3 * 3600 - 5, exe="/usr/bin/rclone")  # ...another got its pid hours later
    return [s]


def supervisor_siblings() -> list[Stream]:
    s = _host("b-siblings")
    # Under one supervisor, sharing its stdout (w) and an inherited runner pipe (rw): no flow.
    s.read(T, 3201, SIZE, ppid=3200, ends={11: "w", 12: "rw"})
    s.upload(T + 20, 3202, 30 * MB, 3, exe="/usr/bin/python3.11", ppid=3200, ends={11: "w", 12: "rw"})
    return [s]


def peers_allowlisted() -> list[Stream]:
    s = _host("b-p2p")
    s.read(T, 3301, SIZE)
    for peer in range(4):  # hands the model to other GPU nodes on the allowlisted cluster network
        _steal(s, 3301, at=T + 10 + 30 * peer, address=f"10.30.0.{peer + 2}", allowed=True)
    return [s]


SCENARIOS: list[Scenario] = [
    _theft("direct read and upload", "python reads, then uploads", direct,
           Expect(("exfiltration",), "critical", "python3.11", WEIGHTS, OUT)),
    _theft("tar | curl", "pipe: tar writes, curl reads", tar_pipe_curl,
           Expect(("exfiltration",), "critical", "curl", WEIGHTS, OUT)),
    _theft("cp then curl", "staged copy read later by another process",
           lambda: staged(False, "t-cp-curl", "/usr/bin/cp", "/tmp/.c/blob"),
           Expect(("staged_exfiltration",), "critical", "curl", WEIGHTS, OUT), stolen_at=T + 600),
    _theft("gzip then curl", "compressed derivative",
           lambda: staged(True, "t-gzip", "/usr/bin/gzip", "/tmp/w.gz", 0.93),
           Expect(("staged_exfiltration",), "critical", "curl", WEIGHTS, OUT), stolen_at=T + 600),
    _theft("openssl enc then curl", "encrypted derivative",
           lambda: staged(True, "t-openssl", "/usr/bin/openssl", "/tmp/w.enc", 1.0),
           Expect(("staged_exfiltration",), "critical", "curl", WEIGHTS, OUT), stolen_at=T + 600),
    _theft("split then 4 curls", "split derivative, each part uploaded", split_parts,
           Expect(("staged_exfiltration",), "critical", "curl", WEIGHTS, OUT), stolen_at=T + 60),
    _theft("server pulled from", "holder sends a weights-sized reply to one client", lambda: holder_burst(False),
           Expect(("exfiltration",), "critical", "python3.11", WEIGHTS, "198.51.100.77", container=True),
           stolen_at=T + 40),
    _theft("server uploads", "holder uploads to one place", lambda: holder_burst(True),
           Expect(("exfiltration",), "critical", "python3.11", WEIGHTS, "198.51.100.77"), stolen_at=T + 40),
    _theft("unix socket relay", "reader -> socat over a unix socket -> out",
           lambda: relay("t-unix", "unix", "/usr/bin/socat", 510, 443),
           Expect(("exfiltration",), "critical", "socat", WEIGHTS, "198.51.100.20")),
    _theft("loopback proxy", "reader -> local TCP proxy -> out",
           lambda: relay("t-proxy", "tcp", "/usr/sbin/tinyproxy", 520, 3128),
           Expect(("exfiltration",), "critical", "tinyproxy", WEIGHTS, "198.51.100.20")),
    _theft("two relays", "reader -> socat -> haproxy -> out",
           lambda: relay("t-chain", "unix", "/usr/sbin/haproxy", 530, 443, depth=2),
           Expect(("exfiltration",), "critical", "haproxy", WEIGHTS, "198.51.100.20")),
    _theft("ssh ControlMaster", "mux client -> master started hours before -> ssh out",
           lambda: relay("t-ssh", "unix", "/usr/bin/ssh", 540, 22, relay_start=T0 - 7200),
           Expect(("exfiltration",), "critical", "ssh", WEIGHTS, "198.51.100.20")),
    _theft("DNS tunnel", "reader -> local resolver -> DNS out (allowlisted resolver)",
           lambda: relay("t-dns", "udp", "/usr/lib/systemd/systemd-resolved", 550, 53, allowed=True),
           Expect(("exfiltration",), "critical", "systemd-resolved", WEIGHTS, "198.51.100.20")),
    _theft("ICMP tunnel", "unprivileged ping socket", lambda: protocol("t-icmp", "icmp"),
           Expect(("exfiltration",), "critical", "python3.11", WEIGHTS, "198.51.100.30")),
    _theft("raw socket", "raw IP socket", lambda: protocol("t-raw", "raw"),
           Expect(("exfiltration",), "critical", "python3.11", WEIGHTS, "198.51.100.30")),
    _theft("io_uring read", "bytes read not measured (0), opened", io_uring,
           Expect(("exfiltration",), "critical", "fastcopy", WEIGHTS, OUT)),
    _theft("mmap before the agent", "holder found by its mappings", mmap_before_agent,
           Expect(("exfiltration",), "critical", "python3.11", WEIGHTS, OUT)),
    _theft("copy to NFS", "network storage is not this host's disk", lambda: network_storage("t-nfs", "nfs4"),
           Expect(("remote_copy",), "high", "cp", WEIGHTS, "nfs4"), stolen_at=T + 20),
    _theft("copy to sshfs", "FUSE storage", lambda: network_storage("t-sshfs", "fuse.sshfs"),
           Expect(("remote_copy",), "critical", "cp", WEIGHTS, "sshfs"), stolen_at=T + 20),
    _theft("upload 30 h after the read", "same process, a day later", after_30h,
           Expect(("exfiltration",), "critical", "python3.11", WEIGHTS, OUT), stolen_at=T + 30 * 3600),
    _theft("padding over 15,000 ports", "most bytes in the agent's 'other destinations'", padding,
           Expect(("exfiltration",), "critical", "python3.11", WEIGHTS, OUT)),
    _theft("20 short curls", "chunks under per-process limits", chunked,
           Expect(("chunked_exfiltration",), "high", "curl", WEIGHTS, OUT)),
    _theft("in a container", "pod process reads and uploads", container_theft,
           Expect(("exfiltration",), "critical", "python3.11", WEIGHTS, OUT, container=True)),
    _theft("fork after loading", "child has the parent's memory", fork_child,
           Expect(("exfiltration",), "critical", "python3.11", WEIGHTS, OUT)),
    _theft("child curl, link unseen", "host-level rule", exec_child,
           Expect(("host_exfiltration",), "high", "curl", WEIGHTS, OUT)),
    _theft("unowned flows", "host-level rule, no process named", unowned,
           Expect(("host_exfiltration",), "high", None, WEIGHTS, "(unowned)")),
    _theft("slow trickle", "under any cap for hours", slow_trickle,
           Expect(("slow_exfiltration",), "high", "rsync", None, "198.51.100.7"), stolen_at=T - 1),
    _theft("canary opened", "honey file", canary, Expect(("canary_read",), "critical", "cat", ".canary"),
           stolen_at=T),
    _theft("python | base64 | curl", "pipeline: a stage between the reader and the sender", pipeline3,
           Expect(("exfiltration",), "critical", "curl", WEIGHTS, OUT)),
    _theft("FIFO: cat > f, curl -T f", "named pipe: both ends reach its inode", fifo,
           Expect(("exfiltration",), "critical", "curl", WEIGHTS, OUT)),
    _theft("packet socket", "AF_PACKET frames: no transport layer", packet_socket,
           Expect(("raw_socket",), "critical", "python3.11", WEIGHTS, "(packet socket)"), stolen_at=T + 30),
    _theft("hard link, read and sent", "the weights under another name", relinked,
           Expect(("exfiltration",), "critical", "curl", WEIGHTS, OUT),
           Expect(("weights_relinked",), "high", "ln", WEIGHTS, OUT)),
    _theft("unexplained egress after a read", "frames no process sent", unexplained,
           Expect(("host_exfiltration",), "high", None, WEIGHTS, "(unexplained)"),
           Expect(("unexplained_egress",), "high", None, None, "(unexplained)")),
    _theft("upload while the sensor was blinded", "sensor tampered with", blinded,
           Expect(("host_exfiltration",), "high", "rclone", WEIGHTS, OUT),
           Expect(("sensor_tampered",), "high"), stolen_at=T + 40),
    _benign("pipeline of unrelated data", "the pipeline's twin: its source read nothing",
            lambda: pipeline3("b-pipeline", reader=False), ("exfiltration",)),
    _benign("FIFO of unrelated data", "the FIFO's twin: cat of a dataset", lambda: fifo("b-fifo", reader=False),
            ("exfiltration",)),
    _benign("container shim between pods", "a hub reading many pipes is no flow", hub, ("exfiltration",)),
    _benign("script uploads unrelated data, eBPF", "the issue's false alarm with a whole sensor",
            script_unrelated_ebpf, ("exfiltration",)),
    _benign("inference serving", "holder answers clients (accepted)", lambda: inference(True)),
    _benign("inference serving, older agent", "replies not marked accepted", lambda: inference(None)),
    _benign("inference serving, 400+ clients", "clients beyond the top destinations", lambda: inference(True, True)),
    _benign("model loading", "reads only", model_loading, ("exfiltration", "host_exfiltration")),
    _benign("checkpoint upload", "to allowlisted storage", checkpoint_allowlisted),
    _benign("dataset download", "requests out, data in", dataset_download),
    _benign("metrics push", "a day of pushes from the holder", metrics_push),
    _benign("log shipping", "fluent-bit reads the server's log pipe", log_shipping),
    _benign("package installs", "pip after loading", package_install),
    _benign("script uploads unrelated file", "siblings sharing stderr", script_unrelated, ("exfiltration",)),
    _benign("cron-like backups", "hourly read + hourly rsync of /etc", cron_backup),
    _benign("warm-up then dataset upload", "the issue's false alarm (shared stdout pipe)", warmup_then_dataset,
            ("exfiltration",)),
    _benign("upload finished before the read", "timing exact to under a second", before_the_read),
    _benign("pid reused", "another process, same pid, hours later", pid_reuse, ("exfiltration",)),
    _benign("supervisor siblings", "inherited pipes are not flows", supervisor_siblings, ("exfiltration",)),
    _benign("model distribution to peers", "allowlisted cluster network", peers_allowlisted),
]
