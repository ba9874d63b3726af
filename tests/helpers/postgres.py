"""A throwaway PostgreSQL cluster on a free loopback port (Debian's postgresql package)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.helpers.broker import free_port


def binaries() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


class Postgres:
    def __init__(self) -> None:
        bindir = binaries()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (run scripts/bootstrap.sh)")
        self.bin = bindir
        # Not under pytest's tmp_path: that is root-only, and postgres runs as its own user.
        workdir = Path(tempfile.mkdtemp(prefix="ww-pg-"))
        self.workdir = workdir
        self.dir = workdir / "pgdata"
        self.sock = workdir / "pgsock"
        self.port = free_port()
        for d in (self.dir, self.sock):
            d.mkdir(parents=True)
            shutil.chown(d, "postgres", "postgres")
        os.chmod(workdir, 0o755)
        self._as_pg(f"{self.bin}/initdb", "-D", str(self.dir), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self._as_pg(f"{self.bin}/pg_ctl", "-D", str(self.dir), "-w", "-l", str(self.dir / "log"), "-o",
                    f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        self._as_pg("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-c", "CREATE DATABASE ww")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/ww"

    def _as_pg(self, *argv: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True, capture_output=True, cwd="/")

    def stop(self) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", f"{self.bin}/pg_ctl", "-D", str(self.dir), "-m",
                        "immediate", "stop"], capture_output=True, cwd="/")
        shutil.rmtree(self.workdir, ignore_errors=True)
