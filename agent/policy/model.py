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

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from weightwarden.units import parse_duration, parse_rate, parse_size

NAME = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
IFNAME = re.compile(r"^[A-Za-z0-9_.@:-]{1,15}\*?$")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME = re.compile(rf"^(?=.{{1,253}}$)({_LABEL})(\.{_LABEL})*\.?$")
CGROUP = re.compile(r"^[A-Za-z0-9_.@:/+-]{1,255}$")

Rate = Annotated[int, BeforeValidator(parse_rate)]
Size = Annotated[int, BeforeValidator(parse_size)]
Duration = Annotated[float, BeforeValidator(parse_duration)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _cidr(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise ValueError(f"not an IP network: {value!r} (e.g. 10.0.0.0/8, 2001:db8::/32)") from None


class Destination(Strict):
    """An address range, or a hostname the agent resolves and refreshes."""

    cidr: str | None = None
    host: str | None = None
    ports: list[Annotated[int, Field(ge=1, le=65535)]] = Field(default_factory=list)

    @field_validator("cidr")
    @classmethod
    def _check_cidr(cls, v: str | None) -> str | None:
        return None if v is None else _cidr(v)

    @field_validator("host")
    @classmethod
    def _check_host(cls, v: str | None) -> str | None:
        if v is not None and not HOSTNAME.match(v):
            raise ValueError(f"not a hostname: {v!r}")
        return v

    @model_validator(mode="after")
    def _one_of(self) -> Destination:
        if (self.cidr is None) == (self.host is None):
            raise ValueError("give exactly one of 'cidr' or 'host'")
        return self


class ContainerMatch(Strict):
    """A container, by what its cgroup path shows (see agent/containers.py); every given field must match."""

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

    destinations: list[Destination] = Field(default_factory=list)
    uids: list[Annotated[int, Field(ge=0, le=2**32 - 2)]] = Field(default_factory=list)
    executables: list[str] = Field(default_factory=list)
    cgroups: list[str] = Field(default_factory=list)
    containers: list[ContainerMatch] = Field(default_factory=list)

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
            if not CGROUP.match(path) or ".." in path.split("/"):
                raise ValueError(f"not a cgroup path: {path!r} (e.g. system.slice/trainer.service)")
        return v


class Cap(Strict):
    name: str = Field(pattern=NAME)
    rate: Rate
    burst: Size | None = None
    match: Match = Field(default_factory=Match)
    action: Literal["shape", "block", "alert"] = "shape"


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
    paths: list[str] = Field(default_factory=list)
    canaries: list[str] = Field(default_factory=list)

    @field_validator("paths", "canaries")
    @classmethod
    def _abs(cls, v: list[str]) -> list[str]:
        for path in v:
            if not path.startswith("/") or "\0" in path:
                raise ValueError(f"weight paths must be absolute: {path!r}")
        return v


class Spec(Strict):
    interfaces: list[str] = Field(default_factory=list, description="default: every non-loopback interface")
    allow: list[Destination] = Field(default_factory=list)
    caps: list[Cap] = Field(default_factory=list)
    budgets: list[Budget] = Field(default_factory=list)
    thresholds: list[Threshold] = Field(default_factory=list)
    weights: Weights = Field(default_factory=Weights)
    interval: Duration = Field(default=5.0, description="seconds between reconciliations")

    @field_validator("interfaces")
    @classmethod
    def _ifnames(cls, v: list[str]) -> list[str]:
        for name in v:
            if not IFNAME.match(name):
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
