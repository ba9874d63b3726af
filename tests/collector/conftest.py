"""Fixtures shared by the collector's tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.helpers.postgres import Postgres, binaries


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A throwaway PostgreSQL for a test module (it runs as the postgres user: needs root)."""
    if os.geteuid() != 0 or binaries() is None:
        if os.environ.get("WEIGHTWARDEN_REQUIRE_PRIVILEGED") == "1":
            pytest.fail("PostgreSQL tests need root and PostgreSQL (run scripts/bootstrap.sh)")
        pytest.skip("PostgreSQL tests need root and PostgreSQL")
    pg = Postgres()
    try:
        yield pg.url
    finally:
        pg.stop()
