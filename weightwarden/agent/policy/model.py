"""The egress policy (apiVersion weightwarden/v1, kind EgressPolicy), validated with pydantic.

Every model forbids unknown keys: a typo in a policy is an error, not a
silently ignored line. Names and values that reach the kernel are checked here
against strict patterns, and the kernel state is built as JSON data (never as
command text), so no policy value can inject into a ruleset or a command line.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from weightwarden.agent.files.patterns import base_dir
from weightwarden.units import parse_duration, parse_rate, parse_size

# Every pattern is used with fullmatch (or \Z): "$" would let a trailing newline through.
NAME = r"^[a-z0-9][a-z0-9_.-]{0,62}$"  # pydantic's regex engine: "$" is the end of the text
IFNAME = re.compile(r"[A-Za-z0-9_.@:-]{1,15}\*?")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME = re.compile(rf"(?=.{{1,253}}\Z)({_LABEL})(\.{_LABEL})*\.?")
CGROUP = re.compile(r"[A-Za-z0-9_.@:/+-]{1,255}")
# Directories whose files are not files: watching them is never what was meant.
PSEUDO_FS = ("/proc", "/sys", "/dev")
PSEUDO_FS_EXCEPT = ("/dev/shm",)  # tmpfs: weights are sometimes staged there on purpose

# The JSON Schema side of the unit types: what an editor should accept (strings with a unit, or numbers).
RATE_SCHEMA = {"anyOf": [
    {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*([kKmMgGtT]?bits?(/s|ps)?|[kKmMgGtT]?i?B/s)\s*$"},
    {"type": "integer", "minimum": 1}],
    "description": "bits per second at the link layer: 20Mbit, 1.5Gbit, or bytes with /s: 2.5MB/s (= 20Mbit)",
    "examples": ["20Mbit", "1Gbit", "2.5MB/s"]}
SIZE_SCHEMA = {"anyOf": [
    {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*([kKmMgGtTpP]i?[bB]|[kKmMgGtTpP]i|[bB])?\s*$"},
    {"type": "integer", "minimum": 0}],
    "description": "bytes: 50GB (10^9), 256KiB (2^10), or a number of bytes", "examples": ["50GB", "64KiB"]}
DURATION_SCHEMA = {"anyOf": [
    {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d|w)\s*$"},
    {"type": "number", "exclusiveMinimum": 0}],
    "description": "seconds, or with a unit: 30s, 10m, 24h, 7d", "examples": ["10m", "24h"]}

Rate = Annotated[int, BeforeValidator(parse_rate), WithJsonSchema(RATE_SCHEMA, mode="validation")]
Size = Annotated[int, BeforeValidator(parse_size), WithJsonSchema(SIZE_SCHEMA, mode="validation")]
Duration = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema(DURATION_SCHEMA, mode="validation")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _cidr(value: str) -> str:
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"not an IP network: {value!r} (e.g. 10.0.0.0/8, 2001:db8::/32)") from None
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError:
        # 10.0.0.0/0 is every address, not 10.0.0.0/8: never widen a range silently.
        addr = value.split("/", 1)[0]
        full = 32 if net.version == 4 else 128
        raise ValueError(
            f"{value!r} has host bits set: as written it means {net} ({_span(net)}); write {net} if that is "
            f"what you meant, or {addr}/{full} for the one address") from None
    return str(net)


def _span(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    if net.prefixlen == 0:
        return f"every IPv{net.version} address"
    return f"{net.num_addresses:,} addresses"


class Destination(Strict):
    """An address range, or a hostname the agent resolves and refreshes."""

    cidr: str | None = Field(default=None, description="an address range, e.g. 10.0.0.0/8 (no host bits)",
                             examples=["10.0.0.0/8", "2001:db8::/32"])
    host: str | None = Field(default=None, description="a hostname, resolved at start and every 5 minutes",
                             examples=["objstore.internal"])
    ports: list[Annotated[int, Field(ge=1, le=65535)]] = Field(
        default_factory=list, description="destination ports (TCP or UDP); empty: every port")

    @field_validator("cidr")
    @classmethod
    def _check_cidr(cls, v: str | None) -> str | None:
        return None if v is None else _cidr(v)

    @field_validator("host")
    @classmethod
    def _check_host(cls, v: str | None) -> str | None:
        if v is not None and not HOSTNAME.fullmatch(v):
            raise ValueError(f"not a hostname: {v!r}")
        return v

    @model_validator(mode="after")
    def _one_of(self) -> Destination:
        if (self.cidr is None) == (self.host is None):
            raise ValueError("give exactly one of 'cidr' or 'host'")
        return self


class ContainerMatch(Strict):
    """A container, by what its cgroup path shows (see agent/attribution/containers.py); every given field must match."""

    id: str | None = Field(default=None, pattern=r"^[0-9a-f]{12,64}$", description="container id or its prefix")
    runtime: Literal["docker", "containerd", "cri-o", "podman", "slurm", "lxc"] | None = None
    pod_uid: str | None = Field(default=None, pattern=r"^[0-9a-f-]{36}$")
    pod_namespace: str | None = Field(default=None, pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    pod_name: str | None = Field(default=None, pattern=r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")

    @model_validator(mode="after")
    def _some(self) -> ContainerMatch:
        if not any((self.id, self.runtime, self.pod_uid, self.pod_namespace, self.pod_name)):
            raise ValueError("a container selector needs at least one of id, runtime, pod_uid, pod_namespace, pod_name")
        return self


class Match(Strict):
    """Which traffic a cap applies to; every given field must match (empty = all egress)."""

    destinations: list[Destination] = Field(default_factory=list, description="any of these; empty: any destination")
    uids: list[Annotated[int, Field(ge=0, le=2**32 - 2)]] = Field(
        default_factory=list, description="the sending socket's owner uid, any of these")
    executables: list[str] = Field(default_factory=list, description="absolute paths of programs; the kernel "
                                   "cannot match programs, so policy check refuses a cap that uses this")
    cgroups: list[str] = Field(default_factory=list, description="cgroup v2 paths; a process in any of them or "
                               "below matches (needs cgroup v2 mounted unified)",
                               examples=[["system.slice/trainer.service"]])
    containers: list[ContainerMatch] = Field(
        default_factory=list, description="containers with their own network namespace routed through the host, "
        "any of these: matched by their host-side veth, re-resolved every interval (containers on the host's "
        "network are not capped, and said so); cannot be combined with uids or cgroups")

    @field_validator("executables")
    @classmethod
    def _abs(cls, v: list[str]) -> list[str]:
        for path in v:
            if not path.startswith("/") or "\0" in path or "\n" in path:
                raise ValueError(f"executables must be absolute paths: {path!r}")
        return v

    @field_validator("cgroups")
    @classmethod
    def _cg(cls, v: list[str]) -> list[str]:
        for path in v:
            if not CGROUP.fullmatch(path) or ".." in path.split("/"):
                raise ValueError(f"not a cgroup path: {path!r} (e.g. system.slice/trainer.service)")
        return v


class Cap(Strict):
    """Traffic the match selects leaves at no more than ``rate`` (shape), not at all (block), or raises cap_hit (alert)."""

    name: str = Field(pattern=NAME)
    rate: Rate
    burst: Size | None = Field(default=None, description="default: 5 ms at the rate, at least 32 KiB")
    match: Match = Field(default_factory=Match)
    action: Literal["shape", "block", "alert"] = Field(
        default="shape", description="shape: queue to the rate; block: drop; alert: count and report only")


class Budget(Strict):
    """At most ``bytes`` of non-allowlisted egress per rolling ``window``."""

    name: str = Field(pattern=NAME)
    bytes: Size
    window: Duration = 86400.0
    action: Literal["block", "alert"] = "alert"


class Threshold(Strict):
    """Raise an event when one process sends more than ``bytes`` within ``window``."""

    name: str = Field(pattern=NAME)
    bytes: Size
    window: Duration = 600.0
    severity: Literal["low", "medium", "high", "critical"] = "medium"


class Weights(Strict):
    paths: list[str] = Field(default_factory=list, description="directories or globs (** crosses directories)",
                             examples=[["/srv/models/**/*.safetensors"]])
    canaries: list[str] = Field(default_factory=list, description="honey files: any read is an incident")

    @field_validator("paths", "canaries")
    @classmethod
    def _abs(cls, v: list[str]) -> list[str]:
        for path in v:
            if not path.startswith("/") or "\0" in path:
                raise ValueError(f"weight paths must be absolute: {path!r}")
            _watchable(path)
        return v


def _watchable(path: str) -> None:
    """Refuse roots that would make the watcher walk the whole machine or files that are not files."""
    base = base_dir(path).rstrip("/") or "/"
    if base == "/":
        raise ValueError(f"{path!r} starts at '/': the watcher would mark and rescan the whole filesystem every "
                         "2 s; name the directory that holds the weights, e.g. /srv/models/**/*.safetensors")
    for root in PSEUDO_FS:
        inside = base == root or base.startswith(root + "/")
        if inside and not any(base == e or base.startswith(e + "/") for e in PSEUDO_FS_EXCEPT):
            raise ValueError(f"{path!r} is under {root}, a pseudo-filesystem of the kernel's, not files on disk: "
                             "weights are never there")


class RawSockets(Strict):
    """Packet sockets (AF_PACKET, AF_XDP): frames that skip the transport layer and, with qdisc bypass, every
    cap. Each one in use raises a raw_socket event; senders whose executable is not in ``allow`` are
    alerted on, or killed in the kernel."""

    action: Literal["alert", "kill"] = Field(
        default="alert", description="for packet-socket senders not allowed: alert (a raw_socket event, the default) "
        "or kill (SIGKILL from the kernel's send path; where the bpf LSM is enabled, before anything leaves)")
    allow: list[str] = Field(default_factory=list, description="absolute paths of the programs allowed to send on "
                             "packet sockets: DHCP clients, LLDP daemons, tcpdump run by an admin",
                             examples=[["/usr/sbin/dhclient", "/usr/sbin/lldpd"]])

    @field_validator("allow")
    @classmethod
    def _abs(cls, v: list[str]) -> list[str]:
        for path in v:
            if not path.startswith("/") or "\0" in path or "\n" in path:
                raise ValueError(f"raw_sockets.allow takes absolute paths of executables: {path!r}")
        if len(v) > 1000:
            raise ValueError("at most 1000 allowlisted executables")
        return v


class Spec(Strict):
    interfaces: list[str] = Field(default_factory=list, description="interface names or prefixes with *, e.g. "
                                  "eth*, ens*; default: every non-loopback interface")
    allow: list[Destination] = Field(default_factory=list, description="measured, never capped")
    caps: list[Cap] = Field(default_factory=list, description="in order: the first shape or block cap that "
                            "matches takes the traffic; alert caps count and let it go on")
    budgets: list[Budget] = Field(default_factory=list)
    thresholds: list[Threshold] = Field(default_factory=list)
    weights: Weights = Field(default_factory=Weights)
    interval: Duration = Field(default=5.0, description="seconds between reconciliations (0.5s to 1h)")
    raw_sockets: RawSockets = Field(default_factory=RawSockets, description="packet sockets (AF_PACKET, AF_XDP): "
                                    "who may send on them, and what happens to the others")

    @field_validator("interval")
    @classmethod
    def _interval(cls, v: float) -> float:
        if not 0.5 <= v <= 3600:
            raise ValueError("interval must be between 0.5s and 1h")
        return v

    @field_validator("interfaces")
    @classmethod
    def _ifnames(cls, v: list[str]) -> list[str]:
        for name in v:
            if not IFNAME.fullmatch(name):
                raise ValueError(f"not an interface name: {name!r} (e.g. eth0, ens*)")
            if name == "lo":
                raise ValueError("loopback is never egress: remove 'lo'")
        return v

    @model_validator(mode="after")
    def _unique(self) -> Spec:
        for kind, items in (("caps", self.caps), ("budgets", self.budgets), ("thresholds", self.thresholds)):
            names = [i.name for i in items]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{kind} names must be unique: {', '.join(dupes)}")
        if len(self.caps) > 200:
            raise ValueError("at most 200 caps")
        return self


class Metadata(Strict):
    name: str = Field(pattern=NAME)
    description: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)


class Policy(Strict):
    apiVersion: Literal["weightwarden/v1"]
    kind: Literal["EgressPolicy"]
    metadata: Metadata
    spec: Spec
