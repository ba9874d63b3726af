"""Set-up never touches services it did not start (scripts/bootstrap.sh)."""

from __future__ import annotations

import re
from pathlib import Path

BOOTSTRAP = (Path(__file__).resolve().parents[1] / "scripts" / "bootstrap.sh").read_text()


def test_bootstrap_never_stops_disables_or_restarts_a_service() -> None:
    code = "\n".join(ln for ln in BOOTSTRAP.splitlines() if not ln.lstrip().startswith("#"))
    assert not re.search(r"systemctl\s+(stop|disable|mask|restart|kill)|service\s+\S+\s+stop|invoke-rc\.d", code)


def test_bootstrap_keeps_new_packages_from_starting_services_and_cleans_up() -> None:
    # policy-rc.d (exit 101) stops postinst scripts from starting daemons; it is removed after, and only
    # created when the host had none.
    assert "exit 101" in BOOTSTRAP and '[ ! -e /usr/sbin/policy-rc.d ]' in BOOTSTRAP
    assert BOOTSTRAP.count("rm -f /usr/sbin/policy-rc.d") >= 2, "removed after the install and on any exit"
