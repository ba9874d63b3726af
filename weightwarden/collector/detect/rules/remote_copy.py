"""``remote_copy``: weights (or a compressed, encrypted or split derivative of them) written to network
storage. The bytes leave the host through the kernel's filesystem client, not through a process's
socket, so the copy itself is the upload."""

from __future__ import annotations

from weightwarden.collector.detect.common import Draft
from weightwarden.collector.detect.event_rule import EventRule, who, who_text
from weightwarden.collector.detect.registry import register
from weightwarden.events import Event, WeightsCopy
from weightwarden.units import format_size

# Network filesystems a site shares on purpose; a copy there is high, a copy through FUSE (sshfs,
# rclone, s3fs: the usual tools for carrying files off) or of a packed derivative is critical.
SHARED_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre", "beegfs", "gpfs")


def remote_copy(rule: EventRule, ev: Event) -> Draft | None:
    data = ev.data
    assert isinstance(data, WeightsCopy)
    if not data.remote or any(data.destination.startswith(p) for p in rule.tune.allowed_remote_prefixes):
        return None
    shared = data.remote.lower() in SHARED_FS
    severity = "high" if shared and not data.derivative else "critical"
    what = "a compressed, encrypted or split derivative of model weights" if data.derivative else "a copy of model weights"
    return Draft(
        rule.key(ev.host, data.pid, data.destination), ev.host, "remote_copy", severity,
        f"Weights copied to {data.remote} storage by {data.name or '?'} (pid {data.pid}) on {ev.host}",
        f"{who_text(data)} on {ev.host} wrote {what} ({format_size(data.destination_size)}, from "
        f"{', '.join(data.sources[:3])}) to {data.destination}, which is on a {data.remote} filesystem: network "
        f"storage, not this host's disks, so the bytes have left the host. "
        + ("A shared filesystem may be where your site keeps weights on purpose: list it in the collector's "
           "allowed remote paths if so." if shared else "FUSE filesystems (sshfs, rclone, s3fs) are a common way "
           "to carry files off a host."),
        {"process": who(data), "files": sorted(data.sources), "bytes_sent": data.destination_size,
         "destinations": [{"address": f"{data.remote}:{data.destination}", "port": 0,
                           "bytes": data.destination_size, "filesystem": data.remote}],
         "derivative": data.derivative, "rule": "remote-copy", "events": [ev.id]},
        ev.ts, ev.ts)


RULE = register(EventRule("remote_copy", "remote_copy", WeightsCopy, remote_copy))
