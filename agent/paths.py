"""Where the agent keeps state: one directory per network namespace."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_ROOT = Path("/var/lib/weightwarden")


def netns_key() -> str:
    """'' in the host's namespace, 'netns-<inode>' inside another one."""
    try:
        mine = os.stat("/proc/self/ns/net").st_ino
        init = os.stat("/proc/1/ns/net").st_ino
    except OSError:
        return ""
    return "" if mine == init else f"netns-{mine}"


def default_state_dir() -> Path:
    env = os.environ.get("WEIGHTWARDEN_STATE_DIR")
    if env:
        return Path(env)
    key = netns_key()
    return DEFAULT_ROOT / key if key else DEFAULT_ROOT
