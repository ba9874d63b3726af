"""An event dated far in the past is flagged, and its alert sorts by when the collector raised it.

A canary read dated 40 days back (or at 0) arrives after another critical alert: it is listed first
(raised last), it is in "since 24h", it says it is backdated, and ``stats`` counts it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.collector.scenarios import Stream
from weightwarden.collector.ingest.pipeline import Pipeline
from weightwarden.collector.store.database import Store
from weightwarden.collector.web import queries

REPO = Path(__file__).resolve().parents[2]


def canary(host: str, ts: float, pid: int) -> Stream:
    s = Stream(host=host)
    s.add("canary_read", ts, pid=pid, path="/srv/models/.canary", severity="critical", name="cat", exe="/usr/bin/cat",
          uid=0)
    return s


def test_backdated_events_are_flagged_and_their_alerts_not_buried(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/c.db"
    pipe = Pipeline(Store(db))
    now = time.time()
    pipe.ingest(canary("gpu-now", now - 60, 1).messages())
    time.sleep(0.05)
    pipe.ingest(canary("gpu-old", now - 40 * 86400, 2).messages())
    time.sleep(0.05)
    pipe.ingest(canary("gpu-zero", 0.0, 3).messages())
    out = subprocess.run([sys.executable, "-m", "weightwarden.collector", "alerts", "list", "--json", "--db", db],
                         capture_output=True, text=True, cwd=str(REPO), check=True).stdout
    listed = json.loads(out)
    assert [a["host"] for a in listed] == ["gpu-zero", "gpu-old", "gpu-now"], [a["host"] for a in listed]
    flags = {a["host"]: a["backdated"] for a in listed}
    assert flags["gpu-now"] is None and flags["gpu-old"] > 39 * 86400 and flags["gpu-zero"] > 50 * 365 * 86400
    with pipe.store.tx() as conn:
        recent = queries.list_alerts(conn, queries.AlertFilter(since=now - 86400))
    assert {a["host"] for a in recent} == {"gpu-now", "gpu-old", "gpu-zero"}
    stats = json.loads(subprocess.run([sys.executable, "-m", "weightwarden.collector", "stats", "--json", "--db", db],
                                      capture_output=True, text=True, cwd=str(REPO), check=True).stdout)
    assert stats["backdated"] == 2 and stats["stored"] == 3


def test_database_files_are_private(tmp_path: Path) -> None:
    """The database and its -wal and -shm files hold password hashes and sealed secrets: 0600, whatever the umask."""
    import os

    old = os.umask(0o022)
    try:
        db = tmp_path / "new" / "collector.db"
        out = subprocess.run([sys.executable, "-m", "weightwarden.collector", "db", "upgrade", "--db", f"sqlite:///{db}"],
                             capture_output=True, text=True, cwd=str(REPO))
        assert out.returncode == 0, out.stderr
        pipe = Pipeline(Store(f"sqlite:///{db}"))
        pipe.ingest(canary("gpu-perm", time.time(), 1).messages())
        files = [db, db.with_name("collector.db-wal"), db.with_name("collector.db-shm")]
        assert all(f.exists() for f in files), files  # the store is open: SQLite keeps its WAL and index
        for f in files:
            if f.exists():
                assert f.stat().st_mode & 0o777 == 0o600, (f, oct(f.stat().st_mode))
        # A database an older collector left 0644 is narrowed when opened for writing.
        Path(db).chmod(0o644)
        Store(f"sqlite:///{db}")
        assert db.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
