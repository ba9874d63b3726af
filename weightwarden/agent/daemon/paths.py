"""Where the agent keeps state: one directory per network namespace."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_ROOT = Path("/var/lib/weightwarden")


def netns_key() -> str:
    """'' in the host's namespace, 'netns-<inode>' inside another one."""
    try:
        mine = Path("/proc/self/ns/net").stat().st_ino
        init = Path("/proc/1/ns/net").stat().st_ino
    except OSError:
        return ""
    return "" if mine == init else f"netns-{mine}"


def default_state_dir() -> Path:
    env = os.environ.get("WEIGHTWARDEN_STATE_DIR")
    if env:
        return Path(env)
    key = netns_key()
    return DEFAULT_ROOT / key if key else DEFAULT_ROOT


def private_dir(path: Path) -> Path:
    """``path`` as a directory only its owner can enter: the agent's state names processes, command
    lines and policies. Created 0700; an existing one of ours that is more open is tightened."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.stat()
    if st.st_uid == os.geteuid() and st.st_mode & 0o077:
        path.chmod(0o700)
    return path


def private_file(path: Path) -> Path:
    """Create ``path`` empty with mode 0600 if it is not there (O_EXCL: never someone else's file
    we opened by name), or tighten an existing one of ours."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600))
    except FileExistsError:
        st = path.lstat()
        if st.st_uid == os.geteuid() and st.st_mode & 0o077:
            path.chmod(0o600)
    return path
