"""packaging/image/oci.py writes an OCI image archive a runtime can load: checked against the image
spec's rules (digests and sizes of every blob, the config's diff_id is the uncompressed layer, the
index names the image), reproducible (the same rootfs gives the same manifest digest), and refusing
what is not a rootfs tar."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import json
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import pytest

OCI = Path(__file__).resolve().parents[2] / "packaging" / "image" / "oci.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ww_oci", OCI)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["ww_oci"] = module
    spec.loader.exec_module(module)
    return module


def rootfs(path: Path) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in (("etc/os-release", b"ID=test\n"), ("usr/bin/hello", b"#!/bin/sh\necho hello\n")):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o755, 0
            tar.addfile(info, io.BytesIO(data))
    return path


def blobs(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def test_the_archive_follows_the_image_spec(tmp_path: Path) -> None:
    oci = load()
    fs = rootfs(tmp_path / "rootfs.tar")
    out = tmp_path / "img.oci.tar"
    assert oci.main([str(fs), str(out), "--name", "weightwarden-agent", "--tag", "0.2.0", "--entrypoint",
                     "/usr/bin/weightwarden-agent", "--user", "65532:65532", "--label", "a=b"]) == 0
    files = blobs(out)
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1], f"{name}: content is not its digest"
    index = json.loads(files["index.json"])
    [entry] = index["manifests"]
    assert entry["annotations"] == {"org.opencontainers.image.ref.name": "0.2.0",
                                    "io.containerd.image.name": "weightwarden-agent:0.2.0"}

    def blob(desc: dict[str, object]) -> bytes:
        data = files["blobs/sha256/" + str(desc["digest"]).removeprefix("sha256:")]
        assert len(data) == desc["size"]
        return data

    manifest = json.loads(blob(entry))
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json" and manifest["schemaVersion"] == 2
    config = json.loads(blob(manifest["config"]))
    [layer] = manifest["layers"]
    unpacked = gzip.decompress(blob(layer))
    assert unpacked == fs.read_bytes(), "the layer is the rootfs"
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(unpacked).hexdigest()]
    assert config["config"]["Entrypoint"] == ["/usr/bin/weightwarden-agent"]
    assert config["config"]["User"] == "65532:65532" and config["config"]["Labels"] == {"a": "b"}
    assert config["os"] == "linux"


def test_the_same_rootfs_gives_the_same_image(tmp_path: Path) -> None:
    oci = load()
    fs = rootfs(tmp_path / "rootfs.tar")
    digests = []
    for n in (1, 2):
        out = tmp_path / f"img{n}.oci.tar"
        oci.main([str(fs), str(out), "--name", "x", "--tag", "1", "--entrypoint", "/usr/bin/hello"])
        digests.append(json.loads(blobs(out)["index.json"])["manifests"][0]["digest"])
    assert digests[0] == digests[1]


def test_a_file_that_is_not_a_tar_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "rootfs.tar"
    bad.write_bytes(b"not a tar")
    assert load().main([str(bad), str(tmp_path / "o.tar"), "--name", "x", "--tag", "1", "--entrypoint", "/x"]) == 2
    assert "not a tar archive" in capsys.readouterr().err
