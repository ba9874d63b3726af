"""The wheel's native parts, built at packaging time (pyproject.toml holds everything else).

Each entry of ``[tool.weightwarden.native] builds`` in pyproject.toml names a build script (the
eBPF sensors' ``build.sh``: clang, bpftool, libbpf) and the files it leaves in its own folder; the
script runs once per wheel build and those files land in the wheel at the same place in the package,
where the agent looks for them at run time (``loader.py``'s ``BUILT``). A script that fails fails
the wheel: a wheel without its sensor would fall back to NFQUEUE on every host it is installed on.

The loader is a program for this platform, not a Python extension, so the wheel is tagged
``py3-none-<platform>`` (any Python 3, this OS and architecture). Editable installs
(``pip install -e``, scripts/bootstrap.sh) build nothing here: bootstrap runs the scripts in place.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def native_builds() -> list[dict[str, object]]:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        builds = tomllib.load(fh)["tool"]["weightwarden"]["native"]["builds"]
    assert isinstance(builds, list)
    return builds


class BuildNative(build_py):
    """build_py, then every native build script; their outputs are copied into build_lib."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for build in native_builds():
            script = ROOT / str(build["script"])
            outputs = [str(o) for o in build["outputs"]]  # type: ignore[attr-defined]
            print(f"weightwarden: building {script.relative_to(ROOT)}", file=sys.stderr)
            res = subprocess.run([str(script)], env={**os.environ, "LANG": "C"}, check=False)
            if res.returncode != 0:
                raise SystemExit(f"weightwarden: {script.relative_to(ROOT)} failed (exit {res.returncode}); "
                                 "it needs clang, bpftool, libbpf-dev and a C compiler (scripts/bootstrap.sh)")
            for name in outputs:
                src = script.parent / name
                if not src.is_file():
                    raise SystemExit(f"weightwarden: {script.relative_to(ROOT)} did not make {name}")
                dest = Path(self.build_lib) / src.relative_to(ROOT)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest)  # keeps the loader's executable bit, which the wheel records


class NativeDistribution(Distribution):
    def has_ext_modules(self) -> bool:
        return True  # a platform wheel, installed into platlib


class PlatformWheel(bdist_wheel):
    def get_tag(self) -> tuple[str, str, str]:
        _python, _abi, plat = super().get_tag()
        return "py3", "none", plat  # no extension module: any Python 3 on this platform


setup(distclass=NativeDistribution, cmdclass={"build_py": BuildNative, "bdist_wheel": PlatformWheel})
