"""A collector whose broker session is taken over raises an alert about it; a broker restart does not.

The demo broker (scripts/demo-broker.sh: loopback, generated passwords, client ids bound to accounts)
with ``sys_interval 1`` (the broker publishes its uptime every second instead of every ten, so the
test need not wait). ``weightwarden-collector run`` connects with the collector's account and its
default, random, client id. Host gpu-a's account trying the collector's client id changes nothing;
someone with the collector's own password takes its session: the collector says so (log line and a
``collector_session_taken_over`` alert). A broker restart is a reconnect, not a takeover.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tests.helpers.broker import MOSQUITTO, free_port
from tests.helpers.netns import wait_for
from weightwarden.collector.ingest.session import client_id
from weightwarden.collector.store.database import Store

REPO = Path(__file__).resolve().parents[2]
KIND = "collector_session_taken_over"


def alerts(db: str) -> list[dict[str, Any]]:
    out = subprocess.run([sys.executable, "-m", "weightwarden.collector", "alerts", "list", "--json", "--db", db],
                         capture_output=True, text=True, cwd=str(REPO), timeout=60)
    assert out.returncode == 0, out.stderr
    return [a for a in json.loads(out.stdout) if a["kind"] == KIND]


class Broker:
    def __init__(self, conf: Path, port: int) -> None:
        self.conf, self.port = conf, port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.conf.with_suffix(".log").open("ab") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=log)

        def up() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                return False
        assert wait_for(up, 10), self.conf.with_suffix(".log").read_text()[-2000:]
        self.started = time.monotonic()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


def connect(port: int, client_id: str, username: str, password: str) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
    c.username_pw_set(username, password)
    c.connect("127.0.0.1", port, clean_start=True)
    c.loop_start()
    return c


def test_default_client_id_is_random_and_kept(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/c.db")
    first = client_id(store, "gpu-collector")
    assert re.fullmatch(r"weightwarden-collector-gpu-collector-[0-9a-f]{16}", first), first
    assert client_id(store, "gpu-collector") == first  # the same session after a restart
    assert client_id(Store(f"sqlite:///{tmp_path}/d.db"), "gpu-collector") != first  # not derivable


def test_a_taken_session_is_an_alert_and_a_restart_is_not(tmp_path: Path) -> None:
    port = free_port()
    subprocess.run([str(REPO / "scripts" / "demo-broker.sh"), str(tmp_path), str(port), "gpu-a"], check=True)
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(conf.read_text() + "sys_interval 1\n")
    broker = Broker(conf, port)
    broker.start()
    password = (tmp_path / "broker" / "collector.pw").read_text()
    agent_password = (tmp_path / "broker" / "agent.pw").read_text()
    db = f"sqlite:///{tmp_path}/c.db"
    log = tmp_path / "collector.log"
    url = f"mqtt://weightwarden-collector@127.0.0.1:{port}?password_file={tmp_path}/broker/collector.pw"
    with Path(log).open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "weightwarden.collector", "run", "--broker", url, "--db", db],
                                cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=err)
    clients: list[mqtt.Client] = []
    try:
        assert wait_for(lambda: "collector_subscribed" in log.read_text(), 20), log.read_text()[-2000:]
        # The broker binds the client id to the account: the collector is "weightwarden-collector" there.
        assert wait_for(lambda: "as weightwarden-collector " in conf.with_suffix(".log").read_text()
                        or "weightwarden-collector" in conf.with_suffix(".log").read_text(), 5)
        # Let the broker be up long enough that a restart cannot hide in its uptime's granularity.
        time.sleep(max(0.0, 6 - (time.monotonic() - broker.started)))

        # Host gpu-a's own credentials with the collector's client id: the broker makes it "gpu-a".
        clients.append(connect(port, "weightwarden-collector", "gpu-a", agent_password))
        time.sleep(3)
        assert alerts(db) == [] and "collector_disconnected" not in log.read_text()

        # The collector's own password (stolen): its session is taken; the collector says so.
        thief = connect(port, "anything", "weightwarden-collector", password)
        clients.append(thief)
        time.sleep(1)
        thief.loop_stop()  # the thief goes quiet; the collector takes its session back
        thief.disconnect()
        assert wait_for(lambda: bool(alerts(db)), 20, 0.5), log.read_text()[-3000:]
        [alert] = alerts(db)
        assert alert["severity"] == "high" and alert["host"] == f"collector@{socket.gethostname()}"
        assert "took its session over" in alert["explanation"] and "kept running" in alert["explanation"]
        assert "collector_session_taken_over" in log.read_text()
        count = alert["count"]

        # A restart of the broker is a reconnect, not a takeover.
        subscribed = log.read_text().count("collector_subscribed")
        broker.stop()
        time.sleep(0.5)
        broker.start()
        assert wait_for(lambda: log.read_text().count("collector_subscribed") > subscribed, 30), log.read_text()[-2000:]
        time.sleep(3)
        assert [a["count"] for a in alerts(db)] == [count], log.read_text()[-3000:]
    finally:
        for c in clients:
            c.loop_stop()
        proc.terminate()
        proc.wait(timeout=20)
        broker.stop()
