"""Write an OCI image archive (oci-archive, the OCI image layout in a tar) from a root filesystem tar:
one layer, its config and manifest, by the OCI image spec, with the standard library only.
No registry and no daemon: `podman load -i`, `skopeo copy oci-archive:FILE docker://REGISTRY/...` and
`ctr images import` take the result.

    python oci.py ROOTFS.tar OUT.oci.tar --name weightwarden-agent --tag 0.2.0
        --entrypoint /usr/bin/weightwarden-agent [--cmd run ...] [--user 65532:65532] [--env K=V ...]
        [--label K=V ...] [--created 2026-01-01T00:00:00Z]

The layer is the rootfs tar gzip-compressed with no timestamp in its header (the same rootfs gives
the same digest); digests are SHA-256 of the blobs, diff_ids of the uncompressed layer.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import platform
import sys
import tarfile
import tempfile
from pathlib import Path

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
ARCH = {"x86_64": "amd64", "aarch64": "arm64", "ppc64le": "ppc64le", "s390x": "s390x"}


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Layout:
    """An OCI image layout being written in a folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))

    def add_bytes(self, data: bytes, media: str) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (self.blobs / digest).write_bytes(data)
        return {"mediaType": media, "digest": f"sha256:{digest}", "size": len(data)}

    def add_layer(self, rootfs: Path) -> tuple[dict[str, object], str]:
        """The rootfs tar as a gzip layer: (its descriptor, the diff_id of the uncompressed tar)."""
        tmp = self.blobs / "layer.tmp"
        diff = hashlib.sha256()
        with open(rootfs, "rb") as src, open(tmp, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    diff.update(chunk)
                    gz.write(chunk)
        digest = _sha256_file(tmp)
        tmp.rename(self.blobs / digest)
        desc = {"mediaType": MEDIA_LAYER, "digest": f"sha256:{digest}", "size": (self.blobs / digest).stat().st_size}
        return desc, f"sha256:{diff.hexdigest()}"


def build(rootfs: Path, out: Path, name: str, tag: str, entrypoint: list[str], cmd: list[str], user: str,
          env: list[str], labels: dict[str, str], created: str) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="oci-", dir=out.parent) as tmp:
        layout = Layout(Path(tmp) / "layout")
        layer, diff_id = layout.add_layer(rootfs)
        config = {
            "created": created,
            "architecture": ARCH.get(platform.machine(), platform.machine()),
            "os": "linux",
            "config": {"Entrypoint": entrypoint, "Cmd": cmd, "User": user, "Env": env, "Labels": labels,
                       "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": created, "created_by": "packaging/image/build-images.sh"}],
        }
        config_desc = layout.add_bytes(json.dumps(config, sort_keys=True).encode(), MEDIA_CONFIG)
        manifest = {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST, "config": config_desc, "layers": [layer],
                    "annotations": {"org.opencontainers.image.created": created}}
        manifest_desc = layout.add_bytes(json.dumps(manifest, sort_keys=True).encode(), MEDIA_MANIFEST)
        # ref.name: the tag (OCI); io.containerd.image.name: the full name `ctr images import` gives it.
        index_entry = {**manifest_desc, "annotations": {"org.opencontainers.image.ref.name": tag,
                                                        "io.containerd.image.name": f"{name}:{tag}"},
                       "platform": {"architecture": config["architecture"], "os": "linux"}}
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                 "manifests": [index_entry]}
        (layout.root / "index.json").write_text(json.dumps(index, sort_keys=True))
        partial = out.with_suffix(".partial")
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(layout.root.rglob("*")):
                info = tar.gettarinfo(str(path), arcname=str(path.relative_to(layout.root)))
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                if path.is_file():
                    with open(path, "rb") as fh:
                        tar.addfile(info, fh)
                else:
                    tar.addfile(info)
        os.replace(partial, out)
    return {"image": f"{name}:{tag}", "archive": str(out), "manifest": manifest_desc["digest"],
            "layer_bytes": layer["size"], "archive_bytes": out.stat().st_size}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("rootfs", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--tag", required=True)
    ap.add_argument("--entrypoint", nargs="+", required=True)
    ap.add_argument("--cmd", nargs="*", default=[])
    ap.add_argument("--user", default="0:0")
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--label", action="append", default=[])
    ap.add_argument("--created", default="1970-01-01T00:00:00Z")
    args = ap.parse_args(argv)
    if not tarfile.is_tarfile(args.rootfs):
        print(f"oci.py: {args.rootfs} is not a tar archive", file=sys.stderr)
        return 2
    labels = dict(label.split("=", 1) for label in args.label)
    env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", *args.env]
    result = build(args.rootfs, args.out, args.name, args.tag, args.entrypoint, args.cmd, args.user, env, labels,
                   args.created)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
