"""The console for tests: users and tokens made with the real CLI, ``serve`` as a real process, plain HTTP."""

from __future__ import annotations

import http.cookiejar
import json
import os
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.helpers.broker import free_port
from tests.helpers.netns import wait_for

REPO = Path(__file__).resolve().parents[2]
PASSWORDS = {"viewer": "viewer-pass-1", "analyst": "analyst-pass-1", "admin": "admin-pass-1"}


def cli(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, "-m", "weightwarden.collector", *args], input=stdin, capture_output=True,
                         text=True, cwd=str(REPO), env={**os.environ, "LANG": "C"}, timeout=60)
    if check:
        assert out.returncode == 0, f"{args}: {out.returncode} {out.stderr}"
    return out


def add_users(db: str) -> dict[str, str]:
    """One user per role (named after it), and an API token for each; returns role -> token."""
    tokens = {}
    for role, password in PASSWORDS.items():
        cli("users", "add", role, "--role", role, "--db", db, stdin=password + "\n")
        tokens[role] = cli("tokens", "create", role, "--db", db).stdout.split()[-1]
    return tokens


def make_cert(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, env={**os.environ, "LANG": "C"})
    return cert, key


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kw: Any) -> None:
        return None


class Client:
    """urllib with a cookie jar and no redirects followed: status, headers and body as they came."""

    def __init__(self, base: str, cafile: Path | None = None) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        handlers: list[Any] = [urllib.request.HTTPCookieProcessor(self.jar), NoRedirect()]
        if cafile is not None:
            handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=str(cafile))))
        self.opener = urllib.request.build_opener(*handlers)

    def request(self, method: str, path: str, token: str | None = None, body: Any = None, form: dict[str, str] | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        data = None
        hdrs = dict(headers or {})
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        if body is not None:
            data, hdrs["Content-Type"] = json.dumps(body).encode(), "application/json"
        if form is not None:
            from urllib.parse import urlencode

            data, hdrs["Content-Type"] = urlencode(form).encode(), "application/x-www-form-urlencoded"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=hdrs)
        try:
            with self.opener.open(req, timeout=30) as resp:
                return resp.status, dict(resp.headers.items()), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers.items()), exc.read()

    def json(self, method: str, path: str, token: str | None = None, body: Any = None) -> tuple[int, Any]:
        status, _h, raw = self.request(method, path, token=token, body=body)
        return status, json.loads(raw) if raw else None

    def cookie(self, name: str) -> http.cookiejar.Cookie | None:
        return next((c for c in self.jar if c.name == name), None)


class ConsoleServer:
    """``weightwarden-collector serve`` on a free loopback port."""

    def __init__(self, db: str, log: Path, tls: tuple[Path, Path] | None = None, *extra: str) -> None:
        self.port = free_port()
        scheme = "https" if tls else "http"
        self.base = f"{scheme}://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "weightwarden.collector", "serve", "--db", db, "--listen", f"127.0.0.1:{self.port}",
                *extra]
        if tls:
            argv += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
        self.log = log
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(argv, cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=err)
        client = Client(self.base, tls[0] if tls else None)
        ok = wait_for(lambda: self.proc.poll() is not None or _up(client), 20, 0.1)
        assert ok and self.proc.poll() is None, f"serve did not start: {log.read_text()[-2000:]}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _up(client: Client) -> bool:
    try:
        return client.request("GET", "/healthz")[0] == 200
    except OSError:
        return False


def login(client: Client, name: str, password: str) -> int:
    """Log in through the form as a browser would (the login form's CSRF cookie included); the status."""
    return login_response(client, name, password)[0]


def login_response(client: Client, name: str, password: str) -> tuple[int, dict[str, str], bytes]:
    """:func:`login`, with the response's headers (lower-case names) and body."""
    status, _h, body = client.request("GET", "/login")
    assert status == 200
    marker = b'name="login_csrf" value="'
    token = body.split(marker, 1)[1].split(b'"', 1)[0].decode()
    status, headers, body = client.request("POST", "/login", form={"login_csrf": token, "name": name,
                                                                   "password": password, "next": "/"})
    return status, {k.lower(): v for k, v in headers.items()}, body


def page_csrf(client: Client, path: str) -> str:
    _s, _h, body = client.request("GET", path)
    return body.split(b'name="csrf" value="', 1)[1].split(b'"', 1)[0].decode()
