"""Wrong passwords sent at once count as the same passwords sent one by one, and hashing stays bounded.

Against real ``serve`` processes: 45 wrong passwords for one account, one after another, then 45 for
another account all at once: both end the same way (5 checked, 40 refused without a check, the right
password refused while it backs off). Then 45 logins at once for 45 names that do not exist (each is
checked: argon2id, 64 MiB a hash): every one is answered, and the serve process's peak resident memory
(VmHWM) stays under 300 MB (it went past 1 GB when every request hashed at once).
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.helpers.console import Client, ConsoleServer, add_users, cli, login
from weightwarden.collector.store.database import Store

ATTEMPTS = 45
RSS_LIMIT = 300 * 2**20


def status_memory(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def audit(base: str, token: str, user: str) -> Counter[str]:
    status, rows = Client(base).json("GET", f"/api/v1/audit?user={user}&limit=1000", token)
    assert status == 200, rows
    return Counter(r["action"] for r in rows)


def test_concurrent_wrong_passwords_count_as_sequential_ones(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/c.db"
    Store(db)
    tokens = add_users(db)
    for name in ("one-by-one", "all-at-once"):
        cli("users", "add", name, "--role", "viewer", "--db", db, stdin="right-password\n")
    server = ConsoleServer(db, tmp_path / "serve.log")
    try:
        sequential = Counter(login(Client(server.base), "one-by-one", "wrong-password") for _ in range(ATTEMPTS))
        after_sequential = login(Client(server.base), "one-by-one", "right-password")
        with ThreadPoolExecutor(ATTEMPTS) as pool:
            concurrent = Counter(pool.map(lambda _i: login(Client(server.base), "all-at-once", "wrong-password"),
                                          range(ATTEMPTS)))
        after_concurrent = login(Client(server.base), "all-at-once", "right-password")
        seq_audit, con_audit = audit(server.base, tokens["admin"], "one-by-one"), \
            audit(server.base, tokens["admin"], "all-at-once")
    finally:
        server.stop()
    print(f"\none by one: {dict(sequential)}; all at once: {dict(concurrent)}")
    assert sequential == concurrent == Counter({401: 5, 429: ATTEMPTS - 5}), (sequential, concurrent)
    assert after_sequential == after_concurrent == 429  # backing off: the right password is not even checked
    assert seq_audit["login_failed"] == con_audit["login_failed"] == 5 and con_audit["login"] == 0


def test_45_logins_at_once_stay_under_300_mb(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/c.db"
    Store(db)
    tokens = add_users(db)
    server = ConsoleServer(db, tmp_path / "serve.log")
    try:
        before = status_memory(server.proc.pid)

        def attempt(i: int) -> int:
            return login(Client(server.base), f"nobody-{i}", "some-wrong-password")
        with ThreadPoolExecutor(ATTEMPTS) as pool:
            answers = Counter(pool.map(attempt, range(ATTEMPTS)))
        after = status_memory(server.proc.pid)
        status, rows = Client(server.base).json("GET", "/api/v1/audit?action=login_failed&limit=1000", tokens["admin"])
    finally:
        server.stop()
    checked = [r for r in rows if r["user"].startswith("nobody-")]
    peak = after["VmHWM"]
    print(f"\nserve RSS before {before['VmRSS'] / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB over {ATTEMPTS} "
          f"logins at once ({dict(answers)})")
    assert answers == Counter({401: ATTEMPTS}), answers  # each was checked (and answered), none refused
    assert status == 200 and len(checked) == ATTEMPTS
    assert peak < RSS_LIMIT, f"peak RSS {peak / 2**20:.0f} MiB"
