"""The collector's CLI against real databases: read commands create and migrate nothing, and a
database that cannot be used is one line on stderr and exit 1, never a traceback or a password."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from weightwarden.collector.cli.main import main
from weightwarden.collector.store.database import Store
from weightwarden.collector.store.schema import DEFAULT_DB, SCHEMA_VERSION, make_engine, migrate

REPO = Path(__file__).resolve().parents[2]
READ_COMMANDS = (["alerts", "list"], ["alerts", "show", "x"], ["hosts"], ["stats"], ["db", "version"])


def one_line_failure(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 1
    out = capsys.readouterr()
    assert out.out == "" and out.err.count("\n") == 1 and out.err.startswith("weightwarden-collector: "), out.err
    return out.err


@pytest.mark.parametrize("command", READ_COMMANDS, ids=" ".join)
def test_read_commands_never_create_a_database(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               command: list[str]) -> None:
    target = tmp_path / "typo" / "x.db"
    err = one_line_failure(capsys, [*command, "--db", f"sqlite:///{target}"])
    assert "no database at" in err and str(target) in err
    assert not target.exists() and not target.parent.exists()


@pytest.mark.parametrize("url", ["collector.db", "/var/lib/x.db", "mysql://u@h/db", "sqlite://relative.db"])
def test_a_url_that_is_not_a_database_is_named(capsys: pytest.CaptureFixture[str], url: str) -> None:
    err = one_line_failure(capsys, ["alerts", "list", "--db", url])
    assert "not a database URL" in err


def test_an_unreachable_database_names_no_password(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.helpers.broker import free_port

    url = f"postgresql://ww:s3cret-pw@127.0.0.1:{free_port()}/ww"
    for argv in (["alerts", "list", "--db", url], ["run", "--broker", "mqtt://127.0.0.1:1", "--db", url],
                 ["db", "upgrade", "--db", url]):
        err = one_line_failure(capsys, argv)
        assert "s3cret-pw" not in err and "cannot use database postgresql://ww:***@127.0.0.1" in err, err


def test_read_commands_do_not_migrate_and_upgrade_does(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "old.db"
    url = f"sqlite:///{db}"
    engine = make_engine(url, read_only=False, create=True)
    with engine.begin() as conn:  # a database as the first release left it
        from sqlalchemy import text

        from weightwarden.collector.store.schema import MIGRATIONS

        conn.execute(text("CREATE TABLE schema_version (version INTEGER NOT NULL)"))
        for stmt in MIGRATIONS[0]:
            conn.execute(text(stmt.format(serial="INTEGER PRIMARY KEY AUTOINCREMENT")))
        conn.execute(text("INSERT INTO schema_version VALUES (1)"))
    engine.dispose()
    before = db.read_bytes()
    err = one_line_failure(capsys, ["alerts", "list", "--db", url])
    assert "db upgrade" in err and db.read_bytes() == before
    assert main(["db", "upgrade", "--db", url]) == 0
    assert f"schema version 1 -> {SCHEMA_VERSION}" in capsys.readouterr().out
    assert main(["alerts", "list", "--db", url]) == 0 and "No alerts." in capsys.readouterr().out


def test_an_older_collector_refuses_a_newer_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "new.db"
    url = f"sqlite:///{db}"
    Store(url).close()
    with sqlite3.connect(db) as raw:
        raw.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION + 1,))
    for argv in (["alerts", "list", "--db", url], ["alerts", "ack", "x", "--db", url],
                 ["run", "--broker", "mqtt://127.0.0.1:1", "--db", url], ["db", "upgrade", "--db", url]):
        err = one_line_failure(capsys, argv)
        assert f"version {SCHEMA_VERSION + 1}, newer than this collector's ({SCHEMA_VERSION})" in err, err


def test_read_commands_open_read_only(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    url = f"sqlite:///{db}"
    Store(url).close()
    store = Store(url, read_only=True, migrate=False)
    with pytest.raises(Exception, match="readonly"), store.tx() as conn:
        store.bump(conn, "x")


def test_default_database_is_the_units(capsys: pytest.CaptureFixture[str]) -> None:
    unit = (REPO / "weightwarden" / "systemd" / "weightwarden-collector.service").read_text()
    [exec_start] = [ln for ln in unit.splitlines() if ln.startswith("ExecStart=")]
    assert re.search(r"--db (\S+)", exec_start).group(1) == DEFAULT_DB  # type: ignore[union-attr]
    with pytest.raises(SystemExit):
        main(["alerts", "list", "--help"])
    assert DEFAULT_DB in capsys.readouterr().out


def test_no_traceback_from_the_real_binary(tmp_path: Path) -> None:
    """What an operator sees: one line and exit 1, from the installed entry point's module."""
    res = subprocess.run([sys.executable, "-m", "weightwarden.collector", "hosts", "--db", "nonsense"],
                         capture_output=True, text=True, cwd=str(REPO), timeout=60)
    assert res.returncode == 1 and res.stdout == "" and "Traceback" not in res.stderr
    assert res.stderr.strip().count("\n") == 0 and "not a database URL" in res.stderr


def test_broker_urls_never_echo_a_password(capsys: pytest.CaptureFixture[str]) -> None:
    from weightwarden.agent.transport import SinkURLError, make_sink
    from weightwarden.mqtt import MqttSettings, MqttURLError

    for url in ("mqtt://agent:hunter2@broker:99999", "mqtt://agent:hunter2@[::1", "mqtt://agent:hunter2@b?bogus=1",
                "mqtts://agent:hunter2@broker?ca=/nonexistent", "mqtt://agent:hun@ter2@broker:x"):
        with pytest.raises(MqttURLError) as exc:
            MqttSettings.from_url(url)
        assert "hunter2" not in str(exc.value) and "ter2" not in str(exc.value), exc.value
    with pytest.raises(SinkURLError) as sink_exc:
        make_sink("amqp://agent:hunter2@broker")
    assert "hunter2" not in str(sink_exc.value) and "agent:***@broker" in str(sink_exc.value)
    assert main(["run", "--broker", "mqtt://c:hunter2@b:99999", "--db", "sqlite:///:memory:"]) == 2
    assert "hunter2" not in capsys.readouterr().err


def test_db_upgrade_creates_and_is_idempotent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path}/sub/c.db"
    assert main(["db", "upgrade", "--db", url, "--json"]) == 0
    assert capsys.readouterr().out.strip() == f'{{"before": 0, "after": {SCHEMA_VERSION}}}'
    assert migrate(make_engine(url, read_only=False, create=False), url) == (SCHEMA_VERSION, SCHEMA_VERSION)
