"""Alert keys as typed values: which incident an alert is, and what a rule judges again to renew it.

An alert's key is stored and shown as text (``exfiltration:gpu-1:4242:1795000000.00``: the
contract keeps that form), but inside the collector it is a value of the rule that owns it:
an :class:`AlertKey` names its rule, its host and the rule's own parts, and each rule that
re-judges stored verdicts reads its subject from those parts, never from a string split by hand.
A host id cannot contain ':' (events.HOST_ID), so the host always ends where it should; the
last part may (an IPv6 address, a file path), and rules join what they take as one.
"""

from __future__ import annotations

from dataclasses import dataclass

from weightwarden.events import HOST_ID


@dataclass(frozen=True, order=True)
class AlertKey:
    rule: str  # the owning rule's name, the key's first part ("exfiltration", "silent", ...)
    host: str
    parts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.rule or ":" in self.rule:
            raise ValueError(f"a rule name is one word without ':', not {self.rule!r}")
        if not HOST_ID.match(self.host):
            raise ValueError(f"not a host id: {self.host!r}")

    def __str__(self) -> str:
        return ":".join((self.rule, self.host, *self.parts))

    def tail(self, start: int = 0) -> str:
        """The parts from ``start`` on, joined again: a last part that held ':' itself (a path, an address)."""
        return ":".join(self.parts[start:])

    @classmethod
    def parse(cls, text: str, host: str | None = None) -> AlertKey | None:
        """The key ``text`` (as stored); None if it is not RULE:HOST[:PARTS] (or not for ``host``)."""
        rule, sep, rest = text.partition(":")
        if not sep or not rule:
            return None
        found, sep, tail = rest.partition(":")
        if host is not None and found != host:
            return None
        if not HOST_ID.match(found):
            return None
        return cls(rule, found, tuple(tail.split(":")) if sep else ())

    def prefix(self) -> str:
        """The text every key of this rule and host starts with (for a LIKE over stored keys)."""
        return f"{self.rule}:{self.host}:"


__all__ = ["AlertKey"]
