"""Failed logins, counted in the database: per account and address, per account, per address.

Every attempt first takes its place in the count, atomically, before its
password is checked: the attempt is counted as a failure, and a success gives
it back. So 45 attempts sent at once are judged exactly as 45 sent one after
another: each sees the failures of those before it, and one that arrives while
a key is backing off is refused without its password being checked (no
oracle, and no CPU or memory spent on it).

No lock that anyone can set on anyone: past a number of free failures, a key
backs off (5 s, doubling, up to its cap), and the wait is per key:

- ``pair:NAME|ADDRESS``: 5 free, up to 15 min. Someone guessing from one
  address slows themselves, not the account's owner elsewhere.
- ``user:NAME``: 20 free, up to 60 s. Guessing from many addresses; the owner
  waits at most a minute for it.
- ``addr:ADDRESS``: 50 free, up to 15 min. Spraying many names from one place.

Names that do not exist are counted the same way and answered the same way, so
neither the answer nor its timing says whether an account exists. A key's
count starts again after a quiet period (``quiet_s``) or a success (pair and
user keys). Several ``serve`` processes share the counts: they are rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, text


@dataclass(frozen=True)
class Rule:
    free: int  # failures before backing off
    cap_s: float  # the longest wait
    quiet_s: float  # a key with no failure for this long starts again from zero
    base_s: float = 5.0


RULES = {"pair": Rule(5, 900.0, 3600.0), "user": Rule(20, 60.0, 3600.0), "addr": Rule(50, 900.0, 900.0)}
STALE_S = 86400.0  # rows untouched this long are removed (a spray of random names leaves no trace for ever)


def keys(name: str, address: str) -> dict[str, str]:
    return {"pair": f"pair:{name[:200]}|{address}", "user": f"user:{name[:200]}", "addr": f"addr:{address}"}


def wait_after(rule: Rule, failures: int) -> float:
    """How long a key backs off after its ``failures``-th failure (0: not yet)."""
    if failures < rule.free:
        return 0.0
    return float(min(rule.base_s * 2 ** min(failures - rule.free, 30), rule.cap_s))


@dataclass(frozen=True)
class Reservation:
    """This attempt's place in the counts; ``refused_for`` > 0: it may not be checked for that long."""

    keys: dict[str, str]
    refused_for: float = 0.0
    started_backoff: bool = False  # this attempt made a key back off (audited once, not every refusal)


def reserve(conn: Connection, name: str, address: str, now: float) -> Reservation:
    """Count this attempt as a failure before checking it, or refuse it while a key backs off."""
    return reserve_keys(conn, keys(name, address), now)


def reserve_keys(conn: Connection, ks: dict[str, str], now: float) -> Reservation:
    """:func:`reserve` for any of the scopes (a refused API token counts against its address only)."""
    ordered = sorted(ks.values())  # one order for everyone: two attempts never wait for each other in a cycle
    # A write first: on SQLite it takes the database's write lock, so what is read next is what the
    # previous attempt committed; on PostgreSQL the rows are then locked, FOR UPDATE.
    for key in ordered:
        conn.execute(text("INSERT INTO login_limits(key, failures, blocked_until, updated_at) VALUES (:k, 0, NULL, :t) "
                          "ON CONFLICT (key) DO NOTHING"), {"k": key, "t": now})
    lock = " FOR UPDATE" if conn.dialect.name == "postgresql" else ""
    params = {f"k{i}": k for i, k in enumerate(ordered)}
    rows = {r[0]: (int(r[1]), r[2], float(r[3])) for r in conn.execute(text(
        f"SELECT key, failures, blocked_until, updated_at FROM login_limits WHERE key IN "
        f"({', '.join(':' + k for k in params)}) ORDER BY key{lock}"), params)}
    refused = max((float(b) - now for _f, b, _u in rows.values() if b is not None and float(b) > now), default=0.0)
    if refused > 0:
        return Reservation(ks, refused_for=refused)
    started = False
    for scope, key in ks.items():
        rule = RULES[scope]
        failures, _blocked, updated = rows[key]
        failures = 1 if now - updated > rule.quiet_s else failures + 1
        wait = wait_after(rule, failures)
        started = started or wait > 0
        conn.execute(text("UPDATE login_limits SET failures = :f, blocked_until = :b, updated_at = :t WHERE key = :k"),
                     {"f": failures, "b": now + wait if wait else None, "t": now, "k": key})
    return Reservation(ks, started_backoff=started)


def succeeded(conn: Connection, reservation: Reservation, now: float) -> None:
    """The password was right: the account's counts start again; the address gives back this attempt."""
    for scope in ("pair", "user"):
        if scope not in reservation.keys:
            continue
        conn.execute(text("UPDATE login_limits SET failures = 0, blocked_until = NULL, updated_at = :t WHERE key = :k"),
                     {"t": now, "k": reservation.keys[scope]})
    conn.execute(text("UPDATE login_limits SET failures = CASE WHEN failures > 0 THEN failures - 1 ELSE 0 END "
                      "WHERE key = :k"), {"k": reservation.keys["addr"]})


def clear_user(conn: Connection, name: str) -> int:
    """``users unlock NAME``: the account's waits end (its address keys are other people's business)."""
    pattern = name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return int(conn.execute(text("DELETE FROM login_limits WHERE key = :u OR key LIKE :p ESCAPE '\\'"),
                            {"u": f"user:{name}", "p": f"pair:{pattern}|%"}).rowcount or 0)


def backing_off(conn: Connection, now: float) -> dict[str, float]:
    """Account -> until when it backs off for everyone (the user key), for the admin page and `users list`."""
    rows = conn.execute(text("SELECT key, blocked_until FROM login_limits WHERE key LIKE 'user:%' "
                             "AND blocked_until > :t"), {"t": now})
    return {str(k)[5:]: float(b) for k, b in rows}


def sweep(conn: Connection, now: float) -> int:
    return int(conn.execute(text("DELETE FROM login_limits WHERE updated_at < :c AND "
                                 "(blocked_until IS NULL OR blocked_until < :t)"),
                            {"c": now - STALE_S, "t": now}).rowcount or 0)


__all__ = ["RULES", "Reservation", "Rule", "backing_off", "clear_user", "keys", "reserve", "reserve_keys", "succeeded",
           "sweep", "wait_after"]
