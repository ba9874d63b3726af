"""A process name chosen by a thief cannot steer the analyst's terminal, reorder an alert's title, or
forge a SIEM record; the evidence keeps its exact bytes.

The names come in as an agent would send them (a canary_read event through the real pipeline):
U+202E (RIGHT-TO-LEFT OVERRIDE) in front of the pid, ANSI escapes, a carriage return followed by a
fake CEF record. Shown by ``alerts list``, ``alerts show``, the run command's alert printer
(scripts/run-stack.sh), and sent as CEF over syslog: each shows the characters as escapes (``\\x1b``,
``\\u202e``) and none carries a raw control character or a second record.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import cast

import pytest

from tests.collector.scenarios import Stream
from weightwarden.collector.ingest.pipeline import Pipeline
from weightwarden.collector.outputs.message import Notification, cef, syslog_line
from weightwarden.collector.store.database import Store
from weightwarden.collector.store.notifications import alert_changed

REPO = Path(__file__).resolve().parents[2]
RLO = "\u202e"
ANSI = "\x1b[2J\x1b[31m"
NAME = f"{ANSI}evil{RLO}0326 dip\rCEF:0|weightwarden|collector|1|canary_read|fake|1|msg=all clear"
RAW = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u202a-\u202e\u2066-\u2069]")


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/c.db"
    s = Stream(host="gpu-hostile")
    s.add("canary_read", time.time(), pid=6230, path="/srv/models/.canary", severity="critical", name=NAME,
          exe="/tmp/x", uid=0, cmdline=[NAME, "--quiet"])
    pipe = Pipeline(Store(url))
    pipe.ingest(s.messages())
    return url


def cli(db: str, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "weightwarden.collector", *args, "--db", db], capture_output=True,
                         text=True, cwd=str(REPO), timeout=60, env={**os.environ, "LANG": "C.UTF-8"})
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_cli_shows_escapes_not_control_characters(db: str) -> None:
    listed = cli(db, "alerts", "list")
    alert = json.loads(cli(db, "alerts", "list", "--json"))[0]
    shown = cli(db, "alerts", "show", alert["id"])
    for text in (listed, shown):
        assert not RAW.search(text), repr(text)
        assert "\\x1b[2J\\x1b[31mevil\\u202e0326 dip\\x0dCEF:0" in text, text
    assert "(pid 6230)" in listed
    # --json is JSON: escaped by JSON's rules, and the evidence as it came (raw, for forensics).
    raw = cli(db, "alerts", "show", alert["id"], "--json")
    assert not RAW.search(raw) and json.loads(raw)["evidence"]["process"]["name"] == NAME


def test_the_run_commands_alert_printer_shows_escapes(db: str) -> None:
    """The printer in scripts/run-stack.sh, run on `alerts list --json` as the script runs it."""
    script = (REPO / "scripts" / "run-stack.sh").read_text()
    printer = script.rsplit('"$BIN/python" -c \'', 1)[1].split("' || true)", 1)[0]
    out = subprocess.run([sys.executable, "-c", printer], input=cli(db, "alerts", "list", "--json"), text=True,
                         capture_output=True, check=True, cwd=str(REPO)).stdout
    assert not RAW.search(out.replace("\t", "")), repr(out)
    assert "\\x1b[2J" in out and "\\u202e" in out and "CRITICAL" in out


def test_cef_and_syslog_keep_one_record(db: str) -> None:
    store = Store(db, read_only=False, migrate=False)
    with store.tx() as conn:
        row = conn.exec_driver_sql("SELECT key FROM alerts").scalar()
        alert_changed(conn, str(row), time.time())
        payload = conn.exec_driver_sql("SELECT id, payload FROM alert_notifications ORDER BY seq LIMIT 1").one()
    note = cast(Notification, {"seq": 1, "attempts": 0, "id": payload[0], **json.loads(payload[1])})
    text = cef(note)
    assert "\r" not in text and "\n" not in text and not RAW.search(text), repr(text)
    # One record: the seven header fields are the collector's; the fake record is text inside two fields.
    header = re.split(r"(?<!\\)\|", text, maxsplit=7)
    assert header[:5] == ["CEF:0", "weightwarden", "collector", header[3], "canary_read"] and header[6] == "10", header
    assert header[5].startswith("Canary file opened on gpu-hostile by \\\\x1b[2J") and "(pid 6230)" in header[5]
    assert "\\\\u202e0326 dip\\\\x0dCEF:0\\|weightwarden" in header[5]  # in the header: '|' escaped
    # In the extension, the carriage return is CEF's own escaped line break; '=' escaped.
    assert "sproc=\\\\x1b[2J\\\\x1b[31mevil\\\\u202e0326 dip\\nCEF:0|weightwarden|collector|1|canary_read|fake|1|" \
           "msg\\=all clear" in header[7], header[7]
    for body in ("cef", "json"):
        line = syslog_line(note, "collector-1", body)
        assert b"\r" not in line and b"\n" not in line and b"\x1b" not in line and RLO.encode() not in line
