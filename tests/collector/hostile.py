"""Hostile MQTT messages, one class each, with the counter each must land in.

Every poison input the collector has been stopped by (issue 12), and the general classes:
malformed JSON, wrong types, unknown types, missing and extra fields, forged hosts, bad topics,
oversize payloads, timestamps out of range, NUL bytes and lone surrogates. Built from a valid
event of the same type, so each breaks exactly one thing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.collector.scenarios import Stream
from weightwarden.collector.ingest.validate import MAX_PAYLOAD


@dataclass(frozen=True)
class Hostile:
    name: str
    topic: str
    payload: bytes
    code: str  # the rejection counter it must be counted under


def _topic(ev: dict[str, Any]) -> str:
    return f"weightwarden/v1/{ev['host']}/{ev['type']}"


def _raw(ev: dict[str, Any], old: str, new: str) -> bytes:
    """The event's JSON with one literal piece replaced (for what json.dumps will not write)."""
    text = json.dumps(ev)
    assert old in text, (old, text[:200])
    return text.replace(old, new, 1).encode()


def templates(host: str = "gpu-evil", now: float | None = None) -> dict[str, dict[str, Any]]:
    """A valid event of each shape the hostile classes start from."""
    now = time.time() if now is None else now
    s = Stream(host)
    s.send(now, pid=100, nbytes=4096, address="198.18.9.9")
    s.add("heartbeat", now)
    s.add("events_dropped", now, reason="spool full", dropped=3, seq_ranges=[[1, 3]], first_ts=now - 10)
    sample, heartbeat, dropped = s.events
    return {"sample": sample, "heartbeat": heartbeat, "dropped": dropped}


def _edit(ev: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> bytes:
    copy = json.loads(json.dumps(ev))
    change(copy)
    return json.dumps(copy).encode()


def classes(host: str = "gpu-evil", now: float | None = None) -> list[Hostile]:
    """One message per class; the caller makes ids unique where it matters (see ``variant``)."""
    now = time.time() if now is None else now
    t = templates(host, now)
    sample, hb, dropped = t["sample"], t["heartbeat"], t["dropped"]
    st, ht, dt = _topic(sample), _topic(hb), _topic(dropped)
    iface = '"tx_bytes": 4096, "rx_bytes"'

    def proc(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
        return lambda e: e["data"]["processes"][0].__setitem__(field, value)

    return [
        # -- the poison inputs
        Hostile("deep array", ht, b"[" * 2000, "rejected_json"),
        Hostile("deep object", ht, b'{"a":' * 5000, "rejected_json"),
        Hostile("ts NaN", st, _raw(sample, f'"ts": {sample["ts"]}', '"ts": NaN'), "rejected_schema"),
        Hostile("ts Infinity", st, _raw(sample, f'"ts": {sample["ts"]}', '"ts": Infinity'), "rejected_schema"),
        Hostile("seq 2**63", st, _edit(sample, lambda e: e.__setitem__("seq", 2**63)), "rejected_schema"),
        Hostile("interval 10**400", st, _raw(sample, '"interval_s": 1.0', '"interval_s": 1' + "0" * 400),
                "rejected_schema"),
        Hostile("interfaces 5", st, _edit(sample, lambda e: e["data"].__setitem__("interfaces", 5)),
                "rejected_schema"),
        Hostile("tx_bytes 'x'", st, _raw(sample, iface, '"tx_bytes": "x", "rx_bytes"'), "rejected_schema"),
        Hostile("tx_bytes null", st, _raw(sample, iface, '"tx_bytes": null, "rx_bytes"'), "rejected_schema"),
        Hostile("tx_bytes NaN", st, _raw(sample, iface, '"tx_bytes": NaN, "rx_bytes"'), "rejected_schema"),
        Hostile("tx_bytes inf", st, _raw(sample, iface, '"tx_bytes": 1e999, "rx_bytes"'), "rejected_schema"),
        Hostile("lone surrogate in exe", st, _raw(sample, '"exe": "/usr/bin/python3.11"', '"exe": "\\ud800x"'),
                "rejected_json"),
        Hostile("lone surrogate in address", st, _raw(sample, '"address": "198.18.9.9"', '"address": "\\udfff"'),
                "rejected_json"),
        Hostile("NUL bytes, not JSON", st, b"\x00\x01 not json \x00", "rejected_json"),
        Hostile("NUL in a string", st, _edit(sample, proc("exe", "/bin/a\x00b")), "rejected_schema"),
        Hostile("seq_ranges [[1]]", dt, _edit(dropped, lambda e: e["data"].__setitem__("seq_ranges", [[1]])),
                "rejected_schema"),
        Hostile("first_ts -1e300", dt, _edit(dropped, lambda e: e["data"].__setitem__("first_ts", -1e300)),
                "rejected_schema"),
        # -- malformed JSON
        Hostile("truncated JSON", ht, json.dumps(hb).encode()[:-7], "rejected_json"),
        Hostile("invalid UTF-8", ht, b"\xff\xfe{}", "rejected_json"),
        Hostile("empty payload", ht, b"", "rejected_json"),
        Hostile("JSON list", ht, b"[1, 2, 3]", "rejected_schema"),
        # -- wrong types, unknown types, missing and extra fields
        Hostile("seq as a string", ht, _edit(hb, lambda e: e.__setitem__("seq", "12")), "rejected_schema"),
        Hostile("data as a string", ht, _edit(hb, lambda e: e.__setitem__("data", "'); DELETE FROM alerts; --")),
                "rejected_schema"),
        Hostile("pid as a float", st, _edit(sample, proc("pid", 1.5)), "rejected_schema"),
        Hostile("unknown type", "weightwarden/v1/gpu-evil/rm_rf", _edit(hb, lambda e: e.__setitem__("type", "rm_rf")),
                "rejected_schema"),
        Hostile("missing id", ht, _edit(hb, lambda e: e.pop("id")), "rejected_schema"),
        Hostile("missing data field", ht, _edit(hb, lambda e: e["data"].pop("policy")), "rejected_schema"),
        Hostile("extra envelope field", ht, _edit(hb, lambda e: e.__setitem__("admin", True)), "rejected_schema"),
        Hostile("extra data field", st, _edit(sample, proc("evil", 1)), "rejected_schema"),
        Hostile("schema 2", ht, _edit(hb, lambda e: e.__setitem__("schema", 2)), "rejected_schema"),
        # -- who and where
        Hostile("forged host", ht, _edit(hb, lambda e: e.__setitem__("host", "gpu-victim")), "rejected_host"),
        Hostile("SQL in the host", "weightwarden/v1/x'; DROP TABLE events; --/heartbeat",
                _edit(hb, lambda e: e.__setitem__("host", "x'; DROP TABLE events; --")), "rejected_topic"),
        Hostile("topic type is not the event's", st.replace("egress_sample", "heartbeat"), json.dumps(sample).encode(),
                "rejected_topic"),
        Hostile("topic one level too deep", ht + "/x", json.dumps(hb).encode(), "rejected_topic"),
        # -- time
        Hostile("ts beyond 2**33", ht, _edit(hb, lambda e: e.__setitem__("ts", 2.0**40)), "rejected_schema"),
        Hostile("ts negative", ht, _edit(hb, lambda e: e.__setitem__("ts", -1.0)), "rejected_schema"),
        Hostile("ts ten days ahead", ht, _edit(hb, lambda e: e.__setitem__("ts", now + 10 * 86400)),
                "rejected_clock"),
        # -- size
        Hostile("just over 1 MiB", ht, _edit(hb, lambda e: e["data"].__setitem__("policy", "x" * MAX_PAYLOAD)),
                "rejected_size"),
    ]


def variant(h: Hostile, n: int) -> Hostile:
    """The same class with a fresh event id (so a redelivery filter cannot hide a second copy)."""
    new_id = f"{n:032x}"
    try:
        doc = json.loads(h.payload)
    except (ValueError, RecursionError):
        return h
    if isinstance(doc, dict) and isinstance(doc.get("id"), str):
        return Hostile(h.name, h.topic, h.payload.replace(doc["id"].encode(), new_id.encode(), 1), h.code)
    return h
