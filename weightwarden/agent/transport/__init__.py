"""Where the agent's events go: one interface (:class:`Sink`, in ``sink.py``), a registry by URL
scheme, and the implementations (``stdout.py``; ``mqtt.py`` with its spool, ``spool.py``).

The daemon talks to a sink only through :class:`Sink`: it never probes for optional methods, and a
sink that has nothing to report returns neutral values. A new sink is one module and one line in
``REGISTRY``; ``tests/agent/transport/test_sinks.py`` is the conformance test each passes.
"""

from __future__ import annotations

from collections.abc import Callable

from weightwarden.agent.transport.sink import Sequencer, Sink, SinkStats
from weightwarden.mqtt import MqttSettings, MqttURLError, redact


class SinkURLError(MqttURLError):
    """A --sink that cannot be used (an unknown scheme, or a bad MQTT URL)."""


def _stdout(url: str, spool_max_bytes: int) -> Sink:
    from weightwarden.agent.transport.stdout import StdoutSink

    return StdoutSink()


def _mqtt(url: str, spool_max_bytes: int) -> Sink:
    from weightwarden.agent.transport.mqtt import MqttSink  # lazily: stdout needs no broker library

    return MqttSink(MqttSettings.from_url(url), spool_max_bytes)


# --sink's scheme (the part before "://", or the whole word) -> how to make that sink.
REGISTRY: dict[str, Callable[[str, int], Sink]] = {"stdout": _stdout, "mqtt": _mqtt, "mqtts": _mqtt}


def make_sink(url: str, spool_max_bytes: int = 256 * 2**20) -> Sink:
    scheme = url.split("://", 1)[0] if "://" in url else url
    make = REGISTRY.get(scheme)
    if make is None or (scheme == "stdout" and url != "stdout"):
        raise SinkURLError(f"unknown sink {redact(url)!r}: use 'stdout', mqtt://HOST:PORT or mqtts://HOST:PORT")
    return make(url, spool_max_bytes)


__all__ = ["REGISTRY", "Sequencer", "Sink", "SinkStats", "SinkURLError", "make_sink"]
