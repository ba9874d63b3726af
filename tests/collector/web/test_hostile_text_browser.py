"""A process name with U+202E and ANSI escapes renders inert in a real headless chromium.

The alert comes through the real pipeline (a canary_read whose process name a thief chose);
``serve`` renders it; chromium shows the queue and the alert page. The page's text holds no
right-to-left override and no control character: they are shown as escapes (``\\u202e``,
``\\x1b``), so "pid 6230" reads "pid 6230" (not "0326"), and the name sits in its own isolated run
(``<bdi>``). A screenshot of each page is kept under the test's tmp dir.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.collector.scenarios import Stream
from tests.helpers import browser as chromium
from tests.helpers.console import PASSWORDS, ConsoleServer, add_users
from weightwarden.collector.ingest.pipeline import Pipeline
from weightwarden.collector.store.database import Store

RLO = "\u202e"
NAME = f"\x1b[31mevil{RLO}gpj.exe"
CONTROLS = [chr(c) for c in (*range(0x00, 0x09), *range(0x0b, 0x20), 0x7f)] + [chr(c) for c in range(0x202a, 0x202f)]


def test_rlo_and_ansi_render_inert(tmp_path: Path) -> None:
    reason = chromium.missing()
    if reason:
        pytest.fail(reason)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    db = f"sqlite:///{tmp_path}/c.db"
    s = Stream(host="gpu-bidi")
    s.add("canary_read", time.time(), pid=6230, path="/srv/models/.canary", severity="critical", name=NAME,
          exe=f"/tmp/{NAME}", uid=0, cmdline=[NAME, "--steal"])
    Pipeline(Store(db)).ingest(s.messages())
    add_users(db)
    server = ConsoleServer(db, tmp_path / "serve.log")
    browser = None
    try:
        browser = chromium.Browser()
        d = browser.driver

        def wait(by: str, value: str) -> Any:
            return WebDriverWait(d, 15).until(ec.presence_of_element_located((by, value)))

        d.get(server.base + "/login")
        d.find_element(By.ID, "name").send_keys("viewer")
        d.find_element(By.ID, "password").send_keys(PASSWORDS["viewer"])
        d.find_element(By.ID, "login").click()
        wait(By.ID, "queue")
        d.save_screenshot(str(tmp_path / "queue.png"))
        link = d.find_element(By.CSS_SELECTOR, "a.alert-link")
        title = link.text
        assert "(pid 6230)" in title and "\\x1b[31mevil\\u202egpj.exe" in title, title
        assert link.find_elements(By.CSS_SELECTOR, "bdi.untrusted")  # the name's direction is isolated
        page = d.execute_script("return document.body.innerText")
        assert not [c for c in CONTROLS if c in page], repr(page)

        link.click()
        who = wait(By.ID, "who")
        d.save_screenshot(str(tmp_path / "alert.png"))
        print(f"\nscreenshots: {tmp_path}")
        heading = d.find_element(By.ID, "alert-title").text
        assert "(pid 6230)" in heading and "\\u202e" in heading, heading
        assert "\\x1b[31mevil\\u202egpj.exe" in who.text and "6230" in who.text, who.text
        page = d.execute_script("return document.body.innerText")
        assert not [c for c in CONTROLS if c in page], repr(page)
        # The evidence as recorded keeps the exact name (JSON-escaped in the page).
        evidence = d.execute_script("return document.querySelector('details pre').textContent")
        assert "\\u001b[31mevil\\u202egpj.exe" in evidence, evidence[:500]
    finally:
        if browser is not None:
            browser.close()
        server.stop()
