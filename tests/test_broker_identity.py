"""The shipped broker configurations bind each client id to its credentials: no takeover of another's session.

Mosquitto is started with the configuration and ACL exactly as docs/events.md prints them (paths and
port swapped for the test's), with client certificates (the production listener) and with passwords;
and with the demo's, as scripts/demo-broker.sh writes it for scripts/run-stack.sh. Host A then
connects with its own credentials and host B's client id, and with the collector's: B and the
collector stay connected, no Last-Will fires for B, and A's forged publish for B goes nowhere. The
same attempt against the documented configuration without its binding line knocks B off: the test
can fail.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tests.helpers.broker import MOSQUITTO, free_port
from tests.helpers.mqtt_client import release
from tests.helpers.netns import wait_for

REPO = Path(__file__).resolve().parents[1]
EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")  # fast to make
BINDING = "use_username_as_clientid true"

pytestmark = pytest.mark.skipif(shutil.which("mosquitto") is None and not os.path.exists(MOSQUITTO),
                                reason="mosquitto is not installed")


def doc_blocks() -> dict[str, str]:
    """The code blocks of the "Broker ACL (Mosquitto)" section, by their first line."""
    text = (REPO / "docs" / "events.md").read_text()
    section = text.split("## Broker ACL (Mosquitto)", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```\n(.*?)```", section, re.S)
    return {b.splitlines()[0]: b for b in blocks}


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, env={**os.environ, "LANG": "C"})


@dataclass
class Pki:
    """A CA, the broker's certificate (127.0.0.1) and client certificates whose CN is the account."""

    root: Path

    def __post_init__(self) -> None:
        self.ca, ca_key = self.root / "ca.pem", self.root / "ca.key"
        openssl("req", "-x509", *EC, "-nodes", "-days", "1", "-subj", "/CN=test-ca",
                "-keyout", str(ca_key), "-out", str(self.ca))
        self.server = self.sign("127.0.0.1", san="IP:127.0.0.1")

    def sign(self, cn: str, san: str | None = None) -> tuple[Path, Path]:
        key, csr, cert = self.root / f"{cn}.key", self.root / f"{cn}.csr", self.root / f"{cn}.pem"
        openssl("req", *EC, "-nodes", "-subj", f"/CN={cn}", "-keyout", str(key), "-out", str(csr))
        ext = self.root / f"{cn}.ext"
        ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
        openssl("x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey", str(self.root / "ca.key"),
                "-CAcreateserial", "-days", "1", "-out", str(cert), "-extfile", str(ext))
        return cert, key


@dataclass
class Mosquitto:
    conf: Path
    port: int
    proc: subprocess.Popen[bytes] = field(init=False)

    def __post_init__(self) -> None:
        with open(self.conf.with_suffix(".log"), "wb") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=log)

        def up() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                return self.proc.poll() is not None
        assert wait_for(up, 10) and self.proc.poll() is None, self.conf.with_suffix(".log").read_text()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def from_docs(tmp: Path, conf_key: str, drop: str | None = None) -> tuple[Path, int]:
    """A documented configuration, runnable here: its port and paths swapped for the test's."""
    blocks = doc_blocks()
    port = free_port()
    conf = blocks[conf_key].replace("listener 8883", f"listener {port} 127.0.0.1")
    if drop is not None:
        assert drop in conf, f"{drop!r} is not in the documented configuration"
        conf = "\n".join(line for line in conf.splitlines() if drop not in line) + "\n"
    conf = conf.replace("/etc/mosquitto/", f"{tmp}/")
    (tmp / "weightwarden.acl").write_text(blocks["# /etc/mosquitto/weightwarden.acl"])
    # As the test helper's broker: stay the user that started it (it reads the test's files).
    path = tmp / "mosquitto.conf"
    path.write_text(f"user {getpass.getuser()}\npersistence false\n{conf}")
    return path, port


@dataclass(frozen=True)
class Creds:
    """How a client proves who it is: a password, or a client certificate; ``ca`` checks the broker (TLS)."""

    username: str | None = None
    password: str | None = None
    ca: Path | None = None
    cert: tuple[Path, Path] | None = None


class Client:
    """A paho client in its own thread: whether it is connected, and what it received."""

    def __init__(self, port: int, client_id: str, creds: Creds, will_topic: str | None = None) -> None:
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
        if creds.username is not None:
            self.c.username_pw_set(creds.username, creds.password)
        if creds.ca is not None:
            ctx = ssl.create_default_context(cafile=str(creds.ca))
            if creds.cert is not None:
                ctx.load_cert_chain(str(creds.cert[0]), str(creds.cert[1]))
            self.c.tls_set_context(ctx)
        if will_topic:
            self.c.will_set(will_topic, b"lost", qos=1)
        self.received: list[str] = []
        self.ok = False
        self.drops = 0  # paho reconnects by itself: count the disconnections instead of looking at the state
        self.c.on_message = lambda _c, _u, m: self.received.append(m.topic)
        self.c.on_disconnect = lambda *_args: setattr(self, "drops", self.drops + 1)
        self.c.on_connect = self._connected
        self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()

    def _connected(self, _c: object, _u: object, _f: object, rc: object, _p: object) -> None:
        self.ok = not getattr(rc, "is_failure", True)

    def wait(self) -> bool:
        return wait_for(lambda: self.ok and self.c.is_connected(), 5, 0.05)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()
        release(self.c)  # the client and this object are a cycle (its callbacks use self)


@dataclass(frozen=True)
class Outcome:
    b_connected: bool  # never knocked off
    collector_connected: bool
    seen: list[str]


def attempt_takeovers(port: int, creds: dict[str, Creds]) -> Outcome:
    """Host A connects with B's client id, then with the collector's; what happened to B and the collector."""
    collector = Client(port, "weightwarden-collector-1", creds["weightwarden-collector-1"])
    assert collector.wait(), "the collector could not connect"
    collector.c.subscribe("weightwarden/v1/#", qos=1)
    b = Client(port, "weightwarden-agent-gpu-b", creds["gpu-b"], will_topic="weightwarden/v1/gpu-b/agent_lost")
    assert b.wait(), "gpu-b could not connect"
    time.sleep(0.3)
    a1 = Client(port, "weightwarden-agent-gpu-b", creds["gpu-a"])
    a2 = Client(port, "weightwarden-collector-1", creds["gpu-a"])
    a1.wait()
    a2.wait()
    a1.c.publish("weightwarden/v1/gpu-b/heartbeat", b"{}", qos=1)  # forged: the ACL must drop it
    a1.c.publish("weightwarden/v1/gpu-a/heartbeat", b"{}", qos=1)  # its own: delivered
    time.sleep(1.5)
    out = Outcome(b.drops == 0, collector.drops == 0, list(collector.received))
    for c in (a1, a2, b, collector):
        c.close()
    return out


def anonymous_refused(port: int, ca: Path | None = None) -> bool:
    anon = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="anon", protocol=MQTTProtocolVersion.MQTTv5)
    if ca is not None:
        anon.tls_set_context(ssl.create_default_context(cafile=str(ca)))
    codes: list[object] = []
    anon.on_connect = lambda _c, _u, _f, rc, _p: codes.append(rc)
    try:
        anon.connect("127.0.0.1", port)
    except (OSError, ssl.SSLError):
        return True  # no client certificate: the TLS handshake itself fails
    anon.loop_start()
    wait_for(lambda: bool(codes) or not anon.is_connected(), 3, 0.05)
    time.sleep(0.2)
    anon.loop_stop()
    return not codes or bool(getattr(codes[0], "is_failure", False))


@pytest.fixture
def pki(tmp_path: Path) -> Iterator[Pki]:
    p = Pki(tmp_path)
    # The documented file names: server.pem/server.key beside ca.pem.
    shutil.copy(p.server[0], tmp_path / "server.pem")
    shutil.copy(p.server[1], tmp_path / "server.key")
    yield p


ACCOUNTS = ("gpu-a", "gpu-b", "weightwarden-collector-1")


def test_production_certificates_refuse_a_takeover(pki: Pki, tmp_path: Path) -> None:
    creds = {cn: Creds(ca=pki.ca, cert=pki.sign(cn)) for cn in ACCOUNTS}
    conf, port = from_docs(tmp_path, "# /etc/mosquitto/conf.d/weightwarden.conf")
    broker = Mosquitto(conf, port)
    try:
        assert anonymous_refused(port, pki.ca)
        got = attempt_takeovers(port, creds)
    finally:
        broker.stop()
    assert got.b_connected and got.collector_connected, got
    assert got.seen == ["weightwarden/v1/gpu-a/heartbeat"], got  # no forged event, no Last-Will for gpu-b

    # The same without the binding: gpu-a's credentials knock gpu-b off and fire its Last-Will.
    conf, port = from_docs(tmp_path, "# /etc/mosquitto/conf.d/weightwarden.conf", drop=BINDING)
    broker = Mosquitto(conf, port)
    try:
        got = attempt_takeovers(port, creds)
    finally:
        broker.stop()
    assert not got.b_connected and "weightwarden/v1/gpu-b/agent_lost" in got.seen, got


def test_production_passwords_refuse_a_takeover(pki: Pki, tmp_path: Path) -> None:
    passwords = {u: f"{u}-password-0123" for u in ACCOUNTS}
    (tmp_path / "passwd").write_text("".join(f"{u}:{p}\n" for u, p in passwords.items()))
    subprocess.run(["mosquitto_passwd", "-U", str(tmp_path / "passwd")], check=True)
    creds = {u: Creds(username=u, password=p, ca=pki.ca) for u, p in passwords.items()}
    conf, port = from_docs(tmp_path, "# /etc/mosquitto/conf.d/weightwarden.conf (passwords)")
    broker = Mosquitto(conf, port)
    try:
        assert anonymous_refused(port, pki.ca)
        got = attempt_takeovers(port, creds)
    finally:
        broker.stop()
    assert got.b_connected and got.collector_connected, got
    assert got.seen == ["weightwarden/v1/gpu-a/heartbeat"], got


def test_demo_broker_is_loopback_with_generated_passwords(tmp_path: Path) -> None:
    """scripts/demo-broker.sh, as scripts/run-stack.sh runs it: loopback only, no anonymous client,
    passwords made here (0600) and client ids bound to the accounts."""
    port = free_port()
    subprocess.run([str(REPO / "scripts" / "demo-broker.sh"), str(tmp_path), str(port), "gpu-a"], check=True,
                   env={**os.environ, "LANG": "C"})
    conf = (tmp_path / "mosquitto.conf").read_text()
    assert f"listener {port} 127.0.0.1\n" in conf and "allow_anonymous false" in conf and BINDING in conf
    for f in ("agent.pw", "collector.pw", "passwd", "acl"):
        assert (tmp_path / "broker" / f).stat().st_mode & 0o077 == 0, f
    agent_pw = (tmp_path / "broker" / "agent.pw").read_text()
    assert len(agent_pw) >= 32 and agent_pw not in (tmp_path / "broker" / "passwd").read_text()  # hashed there
    # A second run keeps the passwords (the demo's sessions survive a restart).
    subprocess.run([str(REPO / "scripts" / "demo-broker.sh"), str(tmp_path), str(port), "gpu-a"], check=True)
    assert (tmp_path / "broker" / "agent.pw").read_text() == agent_pw
    # Two agents for the takeover attempt: gpu-b's account added as run-stack.sh would for its host.
    extra = tmp_path / "gpu-b.passwd"
    extra.write_text("gpu-b:gpu-b-password-0123\n")
    subprocess.run(["mosquitto_passwd", "-U", str(extra)], check=True)  # -U hashes every line: this one only
    with open(tmp_path / "broker" / "passwd", "a") as fh:
        fh.write(extra.read_text())
    broker = Mosquitto(tmp_path / "mosquitto.conf", port)
    try:
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
        assert [line.split()[3] for line in listening.splitlines()] == [f"127.0.0.1:{port}"], listening
        assert anonymous_refused(port)
        creds = {"gpu-a": Creds("gpu-a", agent_pw), "gpu-b": Creds("gpu-b", "gpu-b-password-0123"),
                 "weightwarden-collector-1": Creds("weightwarden-collector",
                                                   (tmp_path / "broker" / "collector.pw").read_text())}
        got = attempt_takeovers(port, creds)
    finally:
        broker.stop()
    assert got.b_connected and got.collector_connected, got
    assert got.seen == ["weightwarden/v1/gpu-a/heartbeat"], got
