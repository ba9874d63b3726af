"""Outputs an older collector stored (files named, secrets in clear) are not used until the operator migrates them.

``outputs migrate`` shows what each would read; ``--apply NAME`` reads those files now (the operator's
command, on the collector host), seals the secrets and drops what outputs no longer take; a loopback
destination needs ``--allow-local NAME``. docs/outputs.md says the same.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from sqlalchemy import text

from tests.helpers.console import cli, make_cert
from weightwarden.collector.outputs import outbox
from weightwarden.collector.outputs.dispatch import Dispatcher
from weightwarden.collector.store.database import Store


def test_legacy_outputs_wait_for_the_operator(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/c.db"
    store = Store(db)
    ca, _key = make_cert(tmp_path)
    pw = tmp_path / "bus.pw"
    pw.write_text("bus-password\n")
    legacy = [("soar", "https://hooks.invalid/x", {"secret": "legacy-hmac-key"}),
              ("siem", "syslog+tls://siem.invalid:6514?format=cef", {"ca": str(ca)}),
              ("bus", f"mqtt://alerts@bus.invalid:1883?password_file={pw}&client_id=weightwarden-agent-gpu-b", {}),
              ("relay", "syslog+udp://127.0.0.1:514", {})]
    with store.tx() as conn:  # as the first release stored them
        for name, url, options in legacy:
            conn.execute(text("INSERT INTO alert_outputs(name, url, options, enabled, created_at) "
                              "VALUES (:n, :u, :o, 1, 0)"), {"n": name, "u": url, "o": json.dumps(options)})

    listed = json.loads(cli("outputs", "list", "--json", "--db", db).stdout)
    assert all(o["legacy"] for o in listed) and "legacy-hmac-key" not in json.dumps(listed)

    # The dispatcher does not use them (and says so once each).
    async def dispatch() -> Dispatcher:
        d = Dispatcher(store, "t", poll_s=0.05)
        stop = asyncio.Event()
        task = asyncio.create_task(d.run(stop))
        await asyncio.sleep(0.5)
        stop.set()
        await task
        return d
    assert asyncio.run(dispatch()).tasks == {}

    plan = cli("outputs", "migrate", "--db", db).stdout
    assert f"ca_pem from {ca}" in plan and f"password from {pw}" in plan and "client_id= dropped" in plan, plan
    assert all(o["legacy"] for o in json.loads(cli("outputs", "list", "--json", "--db", db).stdout))  # unchanged

    first = cli("outputs", "migrate", "--apply", "soar", "--apply", "siem", "--apply", "bus", "--apply", "relay",
                "--db", db, check=False)
    assert first.returncode == 1 and "relay: " in first.stdout and "loopback" in first.stdout, first.stdout
    cli("outputs", "migrate", "--apply", "relay", "--allow-local", "relay", "--db", db)
    with store.tx() as conn:
        now = {o.name: o for o in outbox.outputs(conn)}
    assert not any(o.legacy for o in now.values())
    assert now["siem"].spec.options["ca_pem"] == ca.read_text() and now["siem"].spec.options["format"] == "cef"
    assert now["bus"].spec.url == "mqtt://alerts@bus.invalid:1883" and list(now["bus"].spec.secrets) == ["password"]
    assert list(now["soar"].spec.secrets) == ["secret"] and now["relay"].spec.allow_local
    trail = cli("outputs", "list", "--json", "--db", db).stdout
    assert "legacy-hmac-key" not in trail and "bus-password" not in trail
    with store.tx() as conn:
        actions = [r[0] for r in conn.exec_driver_sql("SELECT target FROM audit WHERE action = 'output_migrate'")]
    assert sorted(actions) == ["bus", "relay", "siem", "soar"], actions
