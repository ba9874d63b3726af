"""Rules that one event decides: the event's payload becomes one alert, and repeats of the incident
(the same key) update it, with the content of the latest event by the event's own time, whatever
arrived last (``Draft.mode == "event"``).

An :class:`EventRule` is data (Falco keeps rules as data): a name (the key's first part), the kind,
the payload type and a function from the event to its draft. ``detect/rules/agent_events.py`` holds
the table of the agent's one-event alerts; a new one is a row there, or a module of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from sqlalchemy import Connection

from weightwarden.collector.detect.common import Draft, ProcessEvidence, Tuning, proc_text
from weightwarden.collector.detect.rule import Context, Look, Rule
from weightwarden.events import Event, Payload, ProcessFields
from weightwarden.jsontypes import JsonObject

Make = Callable[["EventRule", Event], "Draft | None"]


def stamp(draft: Draft, ev: Event) -> Draft:
    """An event-decided draft: stored by the event's own time, then its id (a tie between two events)."""
    draft.mode = "event"
    draft.order = f"{ev.ts:017.6f}:{ev.id}"
    return draft


def host_evidence(data: Payload, ev: Event) -> JsonObject:
    """Evidence of a host-level alert: the event's own data, and no process, file or destination."""
    return {**data.model_dump(mode="json", exclude_none=True), "process": None, "files": [], "destinations": [],
            "events": [ev.id]}


def who(p: ProcessFields) -> ProcessEvidence:
    return {"name": p.name, "pid": p.pid, "exe": p.exe, "uid": p.uid, "user": p.user,
            "cmdline": list(p.cmdline), "container": p.container.model_dump() if p.container else None}


def who_text(p: ProcessFields) -> str:
    return proc_text(who(p))


class EventRule(Rule[str]):
    """One event, one alert: ``make`` turns the event into its draft (or None: nothing to say)."""

    def __init__(self, name: str, kind: str, payload: type[Payload], make: Make, tune: Tuning | None = None) -> None:
        super().__init__(tune)
        self.name = name
        self.kinds = (kind,)
        self.events = (payload,)
        self.make = make

    def on_event(self, ctx: Context, conn: Connection, ev: Event, now: float) -> Iterable[str | Look]:
        draft = self.make(self, ev)
        if draft is not None:
            if draft.kind not in self.kinds or draft.key.rule != self.name:
                raise ValueError(f"rule {self.name!r} made a {draft.kind!r} alert keyed {draft.key}")
            ctx.put(conn, stamp(draft, ev), now)
        return ()


__all__ = ["EventRule", "host_evidence", "stamp", "who", "who_text"]
