"""``weightwarden-collector policy publish``: one signed, retained policy per host group.

The policy is checked with the agent's own loader before it is signed (a
policy that fails ``policy check`` is never published; the agents check it
again anyway). The message is retained, so an agent that is offline now gets
it when it connects, and it replaces the group's previous one.
"""

from __future__ import annotations

import time
from pathlib import Path

import aiomqtt
import yaml

from weightwarden.mqtt import MqttSettings
from weightwarden.policysign import Envelope, topic


def policy_text(path: str, drop_ins: bool = True) -> tuple[str, str]:
    """(the text to publish, the policy's name); raises the loader's PolicyError.

    One file goes out verbatim (comments and all); a base with drop-ins goes out merged.
    """
    # The policy model lives with the agent, which enforces it; publishing checks with the very same code.
    from weightwarden.agent.policy.loader import load_policy

    loaded = load_policy(path, drop_ins=drop_ins)
    if len(loaded.files) == 1:
        with Path(path).open(encoding="utf-8") as fh:
            return fh.read(), loaded.policy.metadata.name
    header = "# merged from: " + ", ".join(loaded.files) + "\n"
    return header + yaml.safe_dump(loaded.data, sort_keys=False, allow_unicode=True), loaded.policy.metadata.name


def client(settings: MqttSettings, ident: str) -> aiomqtt.Client:
    s = settings
    return aiomqtt.Client(s.host, s.port, username=s.username, password=s.password, identifier=ident,
                          protocol=aiomqtt.ProtocolVersion.V5, keepalive=s.keepalive,
                          tls_context=s.ssl_context() if s.tls else None, timeout=10)


async def publish(settings: MqttSettings, envelope: Envelope) -> str:
    """Publish retained with QoS 1; returns once the broker acknowledged it."""
    where = topic(envelope.hosts)
    async with client(settings, f"weightwarden-publisher-{int(time.time() * 1000)}") as c:
        await c.publish(where, envelope.to_json(), qos=1, retain=True)
    return where


async def unpublish(settings: MqttSettings, hosts: str) -> str:
    """Clear a group's retained policy (agents keep the one in force)."""
    where = topic(hosts)
    async with client(settings, f"weightwarden-publisher-{int(time.time() * 1000)}") as c:
        await c.publish(where, b"", qos=1, retain=True)
    return where


__all__ = ["policy_text", "publish", "unpublish"]
