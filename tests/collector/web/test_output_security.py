"""An admin cannot aim an output at the collector's own secrets or its host (issue 24), and an output's
secrets are shown nowhere once given.

Against a real ``serve`` and the real CLI: outputs that name a file, borrow the collector's broker
password, reach loopback or the metadata service, or pick a client id are refused over the API with the
reason; a webhook's password and token never reappear (API, admin page, audit trail, last_error, log).
The dispatcher, run as ``weightwarden-collector run`` runs it, with the collector's broker password in
$CREDENTIALS_DIRECTORY, connects an MQTT output with no password of its own: the CONNECT it sends
carries no password (a fake broker records it).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.broker import free_port
from tests.helpers.console import Client, ConsoleServer, add_users, cli, login, page_csrf
from weightwarden.collector.outputs import outbox
from weightwarden.collector.outputs.dispatch import Dispatcher
from weightwarden.collector.store.database import Store
from weightwarden.collector.store.notifications import alert_changed

BROKER_PASSWORD = "collectors-own-broker-password"
HOOK_PASSWORD = "hunter2-webhook-password"
HOOK_TOKEN = "tok-in-the-query-4242"


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("outsec")
    db = f"sqlite:///{tmp}/collector.db"
    Store(db)
    tokens = add_users(db)
    server = ConsoleServer(db, tmp / "serve.log")
    try:
        yield {"db": db, "tokens": tokens, "base": server.base, "tmp": tmp, "log": tmp / "serve.log"}
    finally:
        server.stop()


def add(console: dict[str, Any], url: str, **extra: Any) -> tuple[int, Any]:
    return Client(console["base"]).json("POST", "/api/v1/outputs", console["tokens"]["admin"],
                                        {"name": extra.pop("name", "o"), "url": url, **extra})


@pytest.mark.parametrize(("url", "extra", "reason"), [
    ("mqtt://anyone@127.0.0.1:1883", {}, "loopback"),
    ("mqtt://anyone@broker.invalid:1883?password_file=/etc/hostname", {}, "password_file= names a file"),
    ("syslog+tls://siem.invalid:6514", {"options": {"ca": "/etc/shadow"}}, "ca= names a file"),
    ("syslog+tls://siem.invalid:6514?key=/etc/ssl/private/x.key", {}, "key= names a file"),
    ("http://169.254.169.254/latest/meta-data/", {}, "metadata"),
    ("http://[fd00:ec2::254]/latest/", {}, "metadata"),
    ("syslog+udp://0.0.0.0:514", {}, "unspecified"),
    ("https://hooks.invalid/x", {"options": {"allow_local": True}}, "only be set by"),
    ("mqtt://broker.invalid:1883?client_id=weightwarden-agent-gpu-b", {}, "client id is its own"),
    ("https://hooks.invalid/x", {"options": "not an object"}, "options"),
    ("https://hooks.invalid/x", {"options": {"secret_file": "/etc/hostname"}}, "secret_file= names a file"),
])
def test_refused_over_the_api_with_the_reason(console: dict[str, Any], url: str, extra: dict[str, Any],
                                              reason: str) -> None:
    status, body = add(console, url, **extra)
    assert status == 400 and reason in body["error"], (status, body)


def test_a_webhooks_secrets_are_never_shown_again(console: dict[str, Any]) -> None:
    url = f"https://bob:{HOOK_PASSWORD}@hooks.invalid:8443/alerts?token={HOOK_TOKEN}"
    status, body = add(console, url, name="soar", options={"secret": "hmac-key-never-shown"})
    assert status == 201, body
    c = Client(console["base"])
    status, listed = c.json("GET", "/api/v1/outputs", console["tokens"]["admin"])
    [soar] = [o for o in listed["outputs"] if o["name"] == "soar"]
    assert soar["url"] == "https://bob@hooks.invalid:8443/alerts" and soar["secrets"] == ["password", "query", "secret"]
    cli_list = cli("outputs", "list", "--json", "--db", console["db"]).stdout
    assert login(c, "admin", "admin-pass-1") == 303
    _s, _h, page = c.request("GET", "/admin")
    audit = c.json("GET", "/api/v1/audit?action=output_add", console["tokens"]["admin"])[1]
    assert audit and audit[0]["user"] == "admin" and audit[0]["target"] == "soar"
    for text in (str(listed), cli_list, page.decode(), str(audit)):
        for secret in (HOOK_PASSWORD, HOOK_TOKEN, "hmac-key-never-shown"):
            assert secret not in text
    # The database holds them sealed, not in clear.
    raw = (Path(console["db"][len("sqlite:///"):])).read_bytes()
    assert HOOK_PASSWORD.encode() not in raw and b"hmac-key-never-shown" not in raw
    # The admin page's form: an admin adds an output over the console the same way (CSRF and all).
    csrf = page_csrf(c, "/admin")
    status, _h, body = c.request("POST", "/admin/output-add", form={
        "csrf": csrf, "name": "meta", "url": "http://169.254.169.254/", "format": ""})
    assert status == 400 and b"metadata" in body


class FakeBroker:
    """Accepts one MQTT connection and keeps the bytes of its CONNECT (then says yes to it)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.connects: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(5)
            try:
                self.connects.append(conn.recv(65536))
                conn.sendall(b"\x20\x03\x00\x00\x00")  # CONNACK (v5): success, no properties
                time.sleep(1)
            except OSError:
                pass
            finally:
                conn.close()

    def close(self) -> None:
        self.sock.close()


def test_an_mqtt_output_never_sends_the_collectors_broker_password(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text(BROKER_PASSWORD + "\n")
    db = f"sqlite:///{tmp_path}/c.db"
    store = Store(db)
    fake = FakeBroker()
    try:
        # The operator allows loopback on the collector host (the API never can).
        cli("outputs", "add", "bus", f"mqtt://anyone@127.0.0.1:{fake.port}", "--allow-local", "--db", db)
        with store.tx() as conn:
            Store.collector_alert(conn, "k-test", "gpu-x", "canary_read", "critical", "t", "e", {}, time.time())
            alert_changed(conn, "k-test", time.time())
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))  # as under systemd's LoadCredential=mqtt-password

        async def run() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(Dispatcher(store, "test", poll_s=0.05).run(stop))
            deadline = time.monotonic() + 15
            while not fake.connects and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            stop.set()
            await task
        asyncio.run(run())
    finally:
        fake.close()
    assert fake.connects, "the output never connected"
    assert b"anyone" in fake.connects[0] and BROKER_PASSWORD.encode() not in fake.connects[0]


def test_last_error_and_logs_name_no_secret(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite:///{tmp_path}/c.db"
    store = Store(db)
    port = free_port()  # nothing listens: every delivery fails
    cli("outputs", "add", "hook", f"http://bob:{HOOK_PASSWORD}@127.0.0.1:{port}/x?token={HOOK_TOKEN}",
        "--allow-local", "--db", db)
    with store.tx() as conn:
        Store.collector_alert(conn, "k-test", "gpu-x", "canary_read", "critical", "t", "e", {}, time.time())

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(Dispatcher(store, "test", poll_s=0.05).run(stop))
        await asyncio.sleep(2)
        stop.set()
        await task
    asyncio.run(run())
    with store.tx() as conn:
        errors = [r[0] for r in conn.exec_driver_sql("SELECT last_error FROM alert_deliveries")]
        assert [o.spec.url for o in outbox.outputs(conn)] == [f"http://bob@127.0.0.1:{port}/x"]
    assert errors and errors[0] and "webhook 127.0.0.1" in errors[0], errors
    out, err = capfd.readouterr()
    for text in (str(errors), out, err):
        assert HOOK_PASSWORD not in text and HOOK_TOKEN not in text


def test_output_files_and_key_are_private(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/c.db"
    Store(db)
    cli("outputs", "add", "hook", "https://hooks.invalid/x", "--secret-file", "/etc/hostname", "--db", db)
    key = tmp_path / "outputs.key"
    assert key.stat().st_mode & 0o777 == 0o600
    for name in ("c.db", "c.db-wal", "c.db-shm"):
        if (tmp_path / name).exists():
            assert (tmp_path / name).stat().st_mode & 0o077 == 0, name
    Path(key).chmod(0o644)  # a key others can read is refused, not used
    bad = cli("outputs", "add", "hook2", "https://hooks.invalid/x", "--secret-file", "/etc/hostname", "--db", db,
              check=False)
    assert bad.returncode == 2 and "readable by others" in bad.stderr


def test_a_key_that_cannot_be_made_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Where the key's folder cannot be made (a read-only root filesystem, as in the Kubernetes manifests;
    # here a file where the folder should be), `outputs add` says so and what to set; no traceback.
    db = f"sqlite:///{tmp_path}/c.db"
    Store(db)
    (tmp_path / "not-a-dir").write_text("")
    monkeypatch.setenv("WEIGHTWARDEN_OUTPUTS_KEY", str(tmp_path / "not-a-dir" / "keys" / "outputs.key"))
    bad = cli("outputs", "add", "hook", "https://hooks.invalid/x", "--secret-file", "/etc/hostname", "--db", db,
              check=False)
    assert bad.returncode == 2, bad.stderr
    assert "cannot create the outputs key" in bad.stderr and "WEIGHTWARDEN_OUTPUTS_KEY" in bad.stderr
    assert "Traceback" not in bad.stderr
