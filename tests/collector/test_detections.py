"""Every detection rule, driven from event streams through the real pipeline and a real SQLite store.

The corpus (tests/corpus) shows each theft route and each kind of normal work; these tests pin
the mechanics: what links a sender to a read and what does not, exact timing, identities,
serving, relays, and verdicts that follow the facts.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.collector.scenarios import MB, T0, WEIGHTS, Stream, started_at
from weightwarden.collector.detect.common import Tuning
from weightwarden.collector.ingest.pipeline import Pipeline
from weightwarden.collector.store.database import Store
from weightwarden.collector.store.retention import purge


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def pipe(tmp_path: Path) -> Pipeline:
    return Pipeline(Store(f"sqlite:///{tmp_path}/c.db"), Tuning(), clock=Clock(T0 + 10))


def run(pipe: Pipeline, stream: Stream) -> list[dict[str, Any]]:
    counts = pipe.ingest(stream.messages())
    assert counts["rejected"] == 0 and not pipe.errors, pipe.errors
    return pipe.store.alerts()


def kinds(alerts: list[dict[str, Any]]) -> dict[str, str]:
    return {a["kind"]: a["severity"] for a in alerts}


def loud(alerts: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(a["kind"], a["severity"]) for a in alerts if a["severity"] in ("high", "critical")]


def test_direct_exfiltration(pipe: Pipeline) -> None:
    s = Stream()
    s.started(T0)
    s.read(T0 + 1, pid=100, nbytes=256 * MB)
    s.send(T0 + 5, pid=100, nbytes=100 * MB)
    s.send(T0 + 6, pid=100, nbytes=100 * MB)
    [alert] = run(pipe, s)
    assert alert["kind"] == "exfiltration" and alert["severity"] == "critical"
    ev = alert["evidence"]
    assert ev["process"]["pid"] == 100 and ev["process"]["name"] == "python3.11"
    assert ev["process"]["start_time"] == pytest.approx(started_at(100))
    assert ev["files"] == [WEIGHTS] and ev["destinations"][0]["address"] == "203.0.113.9"
    assert ev["bytes_sent"] == 200 * MB and ev["bytes_read"] == 256 * MB
    assert ev["links"] == [{"kind": "self", "reader": {"name": "python3.11", "pid": 100, "exe": "/usr/bin/python3.11"},
                            "via": None, "since": T0 + 1, "relays": []}]
    assert ev["projected_seconds_for_rest"] == pytest.approx(56 * MB * 8 / (200 * MB * 8 / 2), rel=0.01)
    assert "never contacted by this program before" in alert["explanation"]
    assert "203.0.113.9:443" in alert["explanation"] and WEIGHTS in alert["explanation"]


def test_upload_reported_before_the_read_still_correlates(pipe: Pipeline) -> None:
    s = Stream()
    s.send(T0 + 5, pid=100, nbytes=200 * MB)  # the sample arrives first...
    s.read(T0 + 1, pid=100, nbytes=256 * MB, report_at=T0 + 8)  # ...the read's final record after it
    assert kinds(run(pipe, s)) == {"exfiltration": "critical"}


def test_no_alert_without_the_read_without_the_upload_or_to_allowlisted_places(pipe: Pipeline) -> None:
    upload_only = Stream("gpu-2")
    upload_only.send(T0 + 5, pid=100, nbytes=200 * MB)
    read_only = Stream("gpu-3")
    read_only.read(T0 + 1, pid=100, nbytes=256 * MB)
    allowlisted = Stream("gpu-4")
    allowlisted.read(T0 + 1, pid=100, nbytes=256 * MB)
    allowlisted.send(T0 + 5, pid=100, nbytes=200 * MB, allowed=True)
    for s in (upload_only, read_only, allowlisted):
        assert run(pipe, s) == [], s.host


def test_unlinked_volume_soon_after_a_read_is_the_host_level_rule(pipe: Pipeline) -> None:
    s = Stream()
    s.read(T0 + 1, pid=100, nbytes=256 * MB)
    s.send(T0 + 5, pid=999, nbytes=200 * MB, exe="/usr/bin/rclone")  # no pipe, socket, copy or fork to the reader
    [alert] = run(pipe, s)
    assert (alert["kind"], alert["severity"]) == ("host_exfiltration", "high")  # honest: never critical unlinked
    assert alert["evidence"]["process"]["pid"] == 999 and alert["evidence"]["files"] == [WEIGHTS]
    assert alert["evidence"]["readers"] == [100] and alert["evidence"]["rule"] == "host-level"
    assert "host-level rule" in alert["explanation"]
    later = Stream("gpu-2")
    later.read(T0 + 1, pid=100, nbytes=256 * MB)
    later.send(T0 + 2 + 3600 + 60, pid=999, nbytes=200 * MB)  # not "soon after": an hour later
    assert run(pipe, later) == [a for a in pipe.store.alerts() if a["host"] == "gpu-1"]


def test_an_upload_that_ended_before_the_read_never_counts(pipe: Pipeline) -> None:
    s = Stream()
    # One sample [T0, T0+1]; its bytes to this destination left within [T0, T0+0.6].
    s.send(T0 + 1, pid=999, nbytes=200 * MB, exe="/usr/bin/restic", span=(T0, T0 + 0.6))
    s.read(T0 + 0.8, pid=100, nbytes=256 * MB)  # another process read the weights 0.2 s later
    assert run(pipe, s) == []
    s2 = Stream("gpu-2")  # the same, but the send went on 0.2 s past the read: a fifth of it counts
    s2.send(T0 + 1, pid=999, nbytes=500 * MB, exe="/usr/bin/restic", span=(T0, T0 + 1.0))
    s2.read(T0 + 0.8, pid=100, nbytes=256 * MB)
    [alert] = run(pipe, s2)[:1]
    assert alert["kind"] == "host_exfiltration"
    assert alert["evidence"]["bytes_sent"] == pytest.approx(100 * MB, rel=1e-6)


def test_a_pipe_links_its_writer_to_its_reader_and_nothing_else(pipe: Pipeline) -> None:
    s = Stream()
    # sh -c 'tar c w | curl -T - ...': tar writes pipe 9001, curl reads it; both (and a sibling) write log pipe 7.
    s.read(T0 + 1, pid=200, nbytes=256 * MB, exe="/usr/bin/tar", ppid=50, ends={9001: "w", 7: "w"})
    s.send(T0 + 5, pid=201, nbytes=200 * MB, exe="/usr/bin/curl", ppid=50, ends={9001: "r", 7: "w"})
    s.send(T0 + 5, pid=202, nbytes=5 * MB, exe="/usr/bin/python3", ppid=50, ends={7: "w", 8: "rw"})
    [alert] = run(pipe, s)
    assert alert["kind"] == "exfiltration" and alert["severity"] == "critical"
    assert alert["evidence"]["readers"] == [200] and alert["evidence"]["process"]["name"] == "curl"
    assert alert["evidence"]["links"][0]["kind"] == "pipe" and alert["evidence"]["links"][0]["via"] == "pipe 9001"
    assert "which tar (pid 200) writes" in alert["explanation"]


def test_pipes_without_ends_link_nothing(pipe: Pipeline) -> None:
    s = Stream()  # an older agent: the same pipeline, but only "they share pipe 9001"
    s.read(T0 + 1, pid=200, nbytes=256 * MB, exe="/usr/bin/tar", pipes=[9001])
    s.send(T0 + 5, pid=201, nbytes=200 * MB, exe="/usr/bin/curl", pipes=[9001])
    assert kinds(run(pipe, s)) == {"host_exfiltration": "high"}  # the volume is still seen


def test_a_fork_has_its_parents_memory_an_exec_does_not(pipe: Pipeline) -> None:
    s = Stream()
    s.read(T0 + 1, pid=300, nbytes=256 * MB, cmdline=["python3", "serve.py"])
    s.send(T0 + 5, pid=301, nbytes=200 * MB, ppid=300, cmdline=["python3", "serve.py"], start=T0 + 3)
    [alert] = run(pipe, s)
    assert (alert["kind"], alert["severity"], alert["evidence"]["readers"]) == ("exfiltration", "critical", [300])
    assert alert["evidence"]["links"][0]["kind"] == "fork"
    s2 = Stream("gpu-2")  # started before the read, or another program: not a copy of the reader's memory
    s2.read(T0 + 1, pid=300, nbytes=256 * MB, cmdline=["python3", "serve.py"])
    s2.send(T0 + 5, pid=301, nbytes=200 * MB, ppid=300, cmdline=["python3", "serve.py"], start=T0 - 3)
    s2.send(T0 + 5, pid=302, nbytes=200 * MB, ppid=300, exe="/usr/bin/curl", start=T0 + 3)
    assert {a["kind"] for a in run(pipe, s2) if a["host"] == "gpu-2"} == {"host_exfiltration"}


def test_a_reused_pid_is_another_process(pipe: Pipeline) -> None:
    s = Stream()
    s.read(T0 + 1, pid=400, nbytes=256 * MB, start=T0 - 10)
    s.send(T0 + 2 * 3600, pid=400, nbytes=200 * MB, start=T0 + 2 * 3600 - 5)
    assert run(pipe, s) == []
    s2 = Stream("gpu-2")  # the same process, a day and a half later: still linked
    s2.read(T0 + 1, pid=400, nbytes=256 * MB, start=T0 - 10)
    s2.send(T0 + 36 * 3600, pid=400, nbytes=200 * MB, start=T0 - 10)
    pipe.clock.now = T0 + 36 * 3600 + 5  # type: ignore[attr-defined]  # the collector lives in the same day
    [alert] = run(pipe, s2)
    assert (alert["kind"], alert["severity"], alert["key"]) == ("exfiltration", "critical",
                                                                f"exfiltration:gpu-2:400:{T0 - 10:.2f}")


def test_serving_clients_is_not_theft_but_a_weights_sized_reply_is(pipe: Pipeline) -> None:
    s = Stream()
    s.holder(T0, pid=500, nbytes=256 * MB, start=T0 - 60)
    for i in range(300):  # 5 minutes of answers to many clients, on connections they opened
        s.send(T0 + i + 1, 500, 0, start=T0 - 60, dests=[
            {"address": f"198.18.9.{(i * 5 + c) % 250 + 1}", "port": 40000 + c, "tx_bytes": 20_000, "accepted": True}
            for c in range(5)])
    assert run(pipe, s) == []
    for i in range(4):  # then one client pulls 200 MB in four seconds
        s.send(T0 + 400 + i, 500, 50 * MB, address="198.51.100.77", port=51234, accepted=True, start=T0 - 60)
    [alert] = run(pipe, s)
    assert (alert["kind"], alert["severity"]) == ("exfiltration", "critical")
    assert alert["evidence"]["destinations"] == [{"address": "198.51.100.77", "port": 51234, "bytes": 200 * MB,
                                                  "accepted": True}]
    assert alert["evidence"]["links"][0]["kind"] == "self" and "holds them mapped" in alert["explanation"]


def test_a_relay_is_blamed_for_no_more_than_it_was_handed(pipe: Pipeline) -> None:
    s = Stream()
    s.read(T0 + 1, pid=600, nbytes=256 * MB)
    for i in range(4):  # the reader hands 200 MB to a local proxy, which uploads them
        s.hand(T0 + 3 + i, 600, 610, 50 * MB, to_exe="/usr/sbin/tinyproxy", via="tcp")
        s.send(T0 + 3 + i, 610, 50 * MB, exe="/usr/sbin/tinyproxy")
    [alert] = run(pipe, s)
    assert (alert["kind"], alert["severity"], alert["evidence"]["readers"]) == ("exfiltration", "critical", [600])
    assert alert["evidence"]["process"]["name"] == "tinyproxy" and alert["evidence"]["links"][0]["kind"] == "relay"
    s2 = Stream("gpu-2")  # a busy proxy: the reader handed it 3 MB (metrics), others 500 MB
    s2.read(T0 + 1, pid=600, nbytes=256 * MB)
    s2.hand(T0 + 3, 600, 610, 3 * MB, to_exe="/usr/sbin/tinyproxy", via="tcp")
    s2.upload(T0 + 3, 610, 500 * MB, 5, exe="/usr/sbin/tinyproxy")
    busy = [a for a in run(pipe, s2) if a["host"] == "gpu-2"]
    # Linked, the proxy answers for 3 MB (1% of the weights: nothing); the volume is left to the
    # host-level rule, which says it cannot tie it to the read.
    assert [(a["kind"], a["severity"]) for a in busy] == [("host_exfiltration", "high")]


def test_the_verdict_follows_the_facts_down_as_well_as_up(pipe: Pipeline) -> None:
    s = Stream()
    s.read(T0 + 1, pid=700, nbytes=100 * MB, path="/srv/models/a.safetensors")
    s.send(T0 + 5, pid=700, nbytes=60 * MB)
    assert kinds(run(pipe, s)) == {"exfiltration": "critical"}  # 60% of what it was known to have
    more = Stream()
    more.factory.seq.last = s.factory.seq.last
    for i in range(3):  # later reports: it had read three more shards before the upload
        more.read(T0 + 1, pid=700, nbytes=300 * MB, path=f"/srv/models/{'bcd'[i]}.safetensors", report_at=T0 + 9)
    assert kinds(run(pipe, more)) == {"exfiltration": "medium"}  # 60 of 1000 MB
    last = Stream()
    last.factory.seq.last = more.factory.seq.last
    last.read(T0 + 1, pid=700, nbytes=3000 * MB, path="/srv/models/e.safetensors", report_at=T0 + 12)
    assert run(pipe, last) == []  # 60 of 4000 MB, under every threshold: the alert is withdrawn


def test_protocols_and_padding_count_like_any_bytes(pipe: Pipeline) -> None:
    for host, kw in (("icmp", {"protocol": "icmp", "port": 0}), ("raw", {"protocol": "raw", "port": 0}),
                     ("dns", {"protocol": "udp", "port": 53, "allowed": True})):
        s = Stream(host)
        s.read(T0 + 1, pid=800, nbytes=256 * MB)
        s.send(T0 + 5, pid=800, nbytes=200 * MB, **kw)  # type: ignore[arg-type]
        assert kinds([a for a in run(pipe, s) if a["host"] == host]) == {"exfiltration": "critical"}, host
    pad = Stream("pad")
    pad.read(T0 + 1, pid=800, nbytes=256 * MB)
    pad.send(T0 + 5, 800, 0, dests=[{"address": "203.0.113.9", "port": 1000 + i, "tx_bytes": 1} for i in range(32)],
             other={"count": 14968, "tx_bytes": 200 * MB})
    assert kinds([a for a in run(pipe, pad) if a["host"] == "pad"]) == {"exfiltration": "critical"}


def test_copies_onto_network_storage(pipe: Pipeline, tmp_path: Path) -> None:
    s = Stream()
    s.read(T0 + 1, pid=900, nbytes=256 * MB, exe="/usr/bin/cp")
    s.copy(T0 + 3, 900, 256 * MB, "/mnt/share/llama.safetensors", remote="nfs4")
    s.copy(T0 + 4, 900, 256 * MB, "/mnt/sshfs/llama.safetensors", remote="fuse.sshfs")
    alerts = {a["evidence"]["destinations"][0]["address"]: a for a in run(pipe, s)}
    assert alerts["nfs4:/mnt/share/llama.safetensors"]["severity"] == "high"
    assert alerts["fuse.sshfs:/mnt/sshfs/llama.safetensors"]["severity"] == "critical"
    assert all(a["kind"] == "remote_copy" and a["evidence"]["files"] == [WEIGHTS] for a in alerts.values())
    tuned = Pipeline(Store(f"sqlite:///{tmp_path}/t.db"), Tuning(allowed_remote_prefixes=("/mnt/share/",)))
    assert {a["evidence"]["destinations"][0]["address"] for a in run(tuned, s)} == {
        "fuse.sshfs:/mnt/sshfs/llama.safetensors"}


def test_staged_copy_then_upload(pipe: Pipeline) -> None:
    s = Stream()
    s.read(T0 + 1, pid=300, nbytes=256 * MB, exe="/usr/bin/cp")
    s.copy(T0 + 4, 300, 256 * MB, "/tmp/.c/blob")
    s.read(T0 + 600, pid=301, nbytes=256 * MB, path="/tmp/.c/blob", exe="/usr/bin/curl", staged=[WEIGHTS])
    s.send(T0 + 605, pid=301, nbytes=256 * MB, exe="/usr/bin/curl")
    [staged] = run(pipe, s)
    assert (staged["kind"], staged["severity"]) == ("staged_exfiltration", "critical")
    assert staged["evidence"]["staged_from"] == [WEIGHTS] and staged["evidence"]["files"] == [WEIGHTS]
    assert "staged copy" in staged["explanation"]


def test_many_short_uploads_that_add_up(pipe: Pipeline) -> None:
    s = Stream()
    s.read(T0 + 1, pid=400, nbytes=100 * MB, exe="/usr/bin/tar")
    for i in range(20):  # 20 curl processes, 5 MB each, none related to the reader
        s.send(T0 + 10 + i * 30, pid=500 + i, nbytes=5 * MB, exe="/usr/bin/curl")
    [chunk] = run(pipe, s)
    assert (chunk["kind"], chunk["severity"]) == ("chunked_exfiltration", "critical")
    assert chunk["evidence"]["processes"] == 20 and chunk["evidence"]["process"]["name"] == "curl"


def test_slow_exfiltration_under_the_cap_for_hours(pipe: Pipeline) -> None:
    s = Stream()
    s.started(T0, weights=1000 * MB)
    for minute in range(6 * 60):  # 2 MB a minute for six hours: 0.27 Mbit/s, under any cap
        s.send(T0 + 60 * minute, pid=600, nbytes=2 * MB, address="198.51.100.7", exe="/usr/bin/rsync")
    for hour in range(6):  # as a collector sees it: an hour at a time
        pipe.clock.now = T0 + 3600 * (hour + 1)  # type: ignore[attr-defined]
        pipe.ingest(Stream.messages(Stream(s.host, s.events[hour * 60:hour * 60 + 61])))
    [slow] = pipe.store.alerts()
    assert slow["kind"] == "slow_exfiltration" and slow["severity"] == "high"
    assert slow["evidence"]["bytes_sent"] == 720 * MB - 2 * MB or slow["evidence"]["bytes_sent"] >= 256 * MB
    assert slow["evidence"]["destinations"][0]["address"] == "198.51.100.7"
    assert slow["count"] > 1, "one incident, updated as it grows, not one alert per sample"


@pytest.mark.parametrize(("type_", "data", "kind", "severity"), [
    ("canary_read", {"pid": 7, "path": "/srv/models/.canary", "severity": "critical", "name": "cat",
                     "exe": "/usr/bin/cat", "uid": 0}, "canary_read", "critical"),
    ("weights_relinked", {"pid": 8, "name": "ln", "exe": "/usr/bin/ln", "uid": 1000, "how": "hardlink",
                          "from_path": WEIGHTS, "to_path": "/tmp/x/notes.bin", "outside_tree": True,
                          "inode": 1311770, "dev": 2049, "names": [WEIGHTS, "/tmp/x/notes.bin"], "size": 256 * MB},
     "weights_relinked", "medium"),
    ("cap_hit", {"cap": "host-default", "action": "shape", "rate_bps": 20_000_000, "observed_bps": 19_900_000,
                 "bytes": 2_500_000}, "cap_hit", "low"),
    ("budget_exhausted", {"budget": "daily", "limit_bytes": 50 * 10**9, "window_s": 86400, "action": "block",
                          "used_bytes": 50 * 10**9 + 1}, "budget_exhausted", "high"),
    ("enforcement_drift", {"drift": ["nftables rules missing"], "restored": True}, "enforcement_drift", "high"),
    ("threshold_crossed", {"threshold": "big", "severity": "high", "bytes_in_window": 3 * 10**9, "window_s": 600,
                           "limit_bytes": 2 * 10**9, "process": {"pid": 9, "name": "scp", "exe": "/usr/bin/scp",
                                                                 "uid": 1000, "tx_bytes": 3 * 10**9,
                                                                 "destinations": []}},
     "threshold_crossed", "high"),
])
def test_single_event_detections(pipe: Pipeline, type_: str, data: dict[str, Any], kind: str, severity: str) -> None:
    s = Stream()
    s.add(type_, T0, **data)
    s.add(type_, T0 + 60, **data)  # the same incident again: grouped, not duplicated
    [alert] = run(pipe, s)
    assert (alert["kind"], alert["severity"], alert["count"]) == (kind, severity, 2)
    assert alert["explanation"] and alert["evidence"]["events"]


def test_a_relinked_weight_read_and_sent_is_high(pipe: Pipeline) -> None:
    """A hard link made elsewhere is medium by itself; read through it (the agent reports the read under the
    weights path, with the new name among ``names``) and uploaded, it is an exfiltration."""
    link = "/tmp/x/notes.bin"
    s = Stream()
    s.started(T0)
    s.add("weights_relinked", T0 + 0.5, pid=99, name="ln", exe="/usr/bin/ln", uid=1000, how="hardlink",
          from_path=WEIGHTS, to_path=link, outside_tree=True, names=[WEIGHTS, link], size=256 * MB)
    s.read(T0 + 1, pid=100, nbytes=256 * MB)
    s.send(T0 + 5, pid=100, nbytes=200 * MB)
    alerts = {a["kind"]: a for a in run(pipe, s)}
    assert alerts["weights_relinked"]["severity"] == "medium"
    assert alerts["weights_relinked"]["evidence"]["files"] == [WEIGHTS, link]
    assert alerts["exfiltration"]["severity"] in ("high", "critical")
    assert alerts["exfiltration"]["evidence"]["files"] == [WEIGHTS]


def test_redelivered_events_are_stored_once(pipe: Pipeline) -> None:
    s = Stream()
    s.read(T0 + 1, pid=100, nbytes=256 * MB)
    s.send(T0 + 5, pid=100, nbytes=200 * MB)
    first = pipe.ingest(s.messages())
    again = pipe.ingest(s.messages())
    assert first["stored"] == 2 and again == {"stored": 0, "duplicates": 2, "rejected": 0}
    [alert] = pipe.store.alerts()
    assert alert["evidence"]["bytes_sent"] == 200 * MB


def test_ack_and_resolve_record_who_and_when(pipe: Pipeline) -> None:
    s = Stream()
    s.add("enforcement_drift", T0, drift=["tc qdisc missing on eth0"], restored=True)
    [alert] = run(pipe, s)
    with pipe.store.tx() as conn:
        assert pipe.store.set_state(conn, alert["id"], "acknowledged", "alice", T0 + 5) == 1
    got = pipe.store.alert(alert["id"])
    assert got is not None and (got["state"], got["acked_by"], got["acked_at"]) == ("acknowledged", "alice", T0 + 5)
    with pipe.store.tx() as conn:
        pipe.store.set_state(conn, alert["key"], "resolved", "bob", T0 + 9)
    got = pipe.store.alert(alert["id"])
    assert got is not None and (got["state"], got["resolved_by"]) == ("resolved", "bob")


def test_retention_purges_events_stored_longer_than_the_horizon(pipe: Pipeline) -> None:
    """By when each was stored: an event its agent dated 40 days back, stored today, is kept."""
    s = Stream()
    s.add("heartbeat", T0 - 40 * 86400)
    s.add("heartbeat", T0)
    run(pipe, s)
    stored = time.time()
    assert purge(pipe.store, 30 * 86400, now=stored + 86400)["events"] == 0
    assert pipe.store.count("events") == 2
    assert purge(pipe.store, 30 * 86400, now=stored + 31 * 86400)["events"] == 2
    assert pipe.store.count("events") == 0


def test_tuning_file_is_checked(tmp_path: Path) -> None:
    from weightwarden.collector.detect.common import load_tuning

    good = tmp_path / "t.yaml"
    good.write_text("high_ratio: 0.2\nburst_s: 1800\nallowed_remote_prefixes: [/mnt/share/]\n")
    tune = load_tuning(str(good))
    assert (tune.high_ratio, tune.burst_s, tune.allowed_remote_prefixes) == (0.2, 1800.0, ("/mnt/share/",))
    for text_, problem in (("hgh_ratio: 0.2\n", "unknown setting 'hgh_ratio'"), ("high_ratio: lots\n", "high_ratio"),
                           ("min_sent_bytes: -1\n", "min_sent_bytes"), ("- a\n", "mapping")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text_)
        with pytest.raises(ValueError, match=problem):
            load_tuning(str(bad))


def stage(pid: int, exe: str, ends: dict[int, str], ppid: int = 1) -> dict[str, Any]:
    """A pipeline stage as the agent names it in a sample: a process that sends nothing itself."""
    from tests.collector.scenarios import proc_fields

    return proc_fields(pid, exe, ppid, ends=ends)


def test_a_pipeline_of_stages_links_the_last_to_the_reader(pipe: Pipeline) -> None:
    s = Stream()
    # python c.py | base64 | curl -T -: python writes 501, base64 reads it and writes 502, curl reads 502.
    s.read(T0 + 1, pid=200, nbytes=256 * MB, exe="/usr/bin/python3.11", ppid=50, ends={501: "w", 7: "w"})
    for i in range(4):
        s.send(T0 + 5 + i, pid=202, nbytes=60 * MB, exe="/usr/bin/curl", ppid=50, ends={502: "r", 7: "w"},
               stages=[stage(201, "/usr/bin/base64", {501: "r", 502: "w", 7: "w"}, ppid=50)])
    [alert] = run(pipe, s)
    assert (alert["kind"], alert["severity"]) == ("exfiltration", "critical")
    ev = alert["evidence"]
    assert ev["process"]["name"] == "curl" and ev["readers"] == [200]
    assert ev["links"][0]["kind"] == "pipe" and ev["links"][0]["via"] == "pipe 502"
    assert ev["links"][0]["relays"] == [{"name": "base64", "pid": 201}]
    assert "base64 (pid 201)" in alert["explanation"] and "python3.11 (pid 200)" in alert["explanation"]


def test_a_stage_named_after_the_upload_still_links_it(pipe: Pipeline) -> None:
    s = Stream()
    s.read(T0 + 1, pid=200, nbytes=256 * MB, ends={501: "w"})
    s.upload(T0 + 4, 202, 200 * MB, 4, exe="/usr/bin/curl", ends={502: "r"})
    late = Stream(seq_start=100)  # the sample that names the stage arrives last
    late.send(T0 + 3, pid=203, nbytes=0, exe="/usr/bin/true", stages=[stage(201, "/usr/bin/gzip", {501: "r", 502: "w"})])
    run(pipe, s)
    assert kinds(pipe.store.alerts()) == {"host_exfiltration": "high"}
    [alert] = run(pipe, late)
    assert alert["kind"] == "exfiltration" and alert["evidence"]["readers"] == [200]


def test_a_hub_reading_many_pipes_links_nothing(pipe: Pipeline) -> None:
    s = Stream()
    # A container shim reads its containers' stdout pipes (one of them a weights reader's) and writes
    # another container's stdin: what one child wrote is not what the other reads.
    s.read(T0 + 1, pid=200, nbytes=256 * MB, ends={601: "w"})
    shim = stage(100, "/usr/bin/containerd-shim-runc-v2", {601: "r", 602: "r", 603: "w"})
    s.upload(T0 + 4, 300, 200 * MB, 4, exe="/usr/bin/aws", ends={603: "r", 602: "w"}, stages=[shim])
    assert "exfiltration" not in kinds(run(pipe, s))


def test_a_named_pipe_links_like_a_pipe(pipe: Pipeline) -> None:
    s = Stream()
    fifo = 1311999  # the FIFO's inode: cat > /tmp/f writes it, curl -T /tmp/f reads it
    s.read(T0 + 1, pid=200, nbytes=256 * MB, exe="/usr/bin/cat", ends={fifo: "w"})
    s.upload(T0 + 2, 201, 256 * MB, 4, exe="/usr/bin/curl", ends={fifo: "r"})
    [alert] = run(pipe, s)
    assert alert["kind"] == "exfiltration" and alert["evidence"]["links"][0]["via"] == f"pipe {fifo}"
