"""Apply, read back and clear the ``inet weightwarden`` table through ``nft -j``."""

from __future__ import annotations

import json
import shutil
from typing import Any

from weightwarden.agent.enforce.kernel import KernelError, run
from weightwarden.agent.enforce.plan import FAMILY, TABLE

VOLATILE = {"handle", "packets", "bytes"}


def available() -> bool:
    if shutil.which("nft") is None:
        return False
    return run(["nft", "list", "tables"], check=False).returncode == 0


def apply(document: dict[str, Any]) -> None:
    """One transaction: the kernel takes the whole table or none of it."""
    run(["nft", "-j", "-f", "-"], stdin=json.dumps(document))


def read_table() -> list[dict[str, Any]] | None:
    """Our table as nft's JSON objects, or None when it does not exist."""
    res = run(["nft", "-j", "list", "table", FAMILY, TABLE], check=False)
    if res.returncode != 0:
        if "No such file" in res.stderr or "does not exist" in res.stderr:
            return None
        raise KernelError(f"nft list table: {res.stderr.strip()}")
    return [o for o in json.loads(res.stdout).get("nftables", []) if "metainfo" not in o]


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def normalize(objects: list[dict[str, Any]] | None) -> list[Any] | None:
    """The table without handles and counter values: equal iff the rules are."""
    return None if objects is None else _strip(objects)


def counters(objects: list[dict[str, Any]] | None) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for obj in objects or []:
        c = obj.get("counter")
        if c is not None:
            out[c["name"]] = {"packets": int(c.get("packets", 0)), "bytes": int(c.get("bytes", 0))}
    return out


def clear() -> bool:
    """Delete our table; True if there was one."""
    if read_table() is None:
        return False
    run(["nft", "delete", "table", FAMILY, TABLE])
    return True


def present() -> bool:
    try:
        return read_table() is not None
    except KernelError:
        return False


__all__ = ["apply", "available", "clear", "counters", "normalize", "present", "read_table"]
