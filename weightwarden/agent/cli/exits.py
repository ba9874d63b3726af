"""The agent's exit codes (documented in ``cli/main.py``), and what every command shares."""

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_DRIFT, EXIT_DEGRADED = 0, 1, 2, 3, 4


def pin_dir(value: str) -> str | None:
    return None if value in ("", "none") else value
