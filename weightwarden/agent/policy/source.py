"""Policies from the fleet (``run --policy-source mqtt``): signed, newer, valid, or refused.

The collector publishes each host group's policy as a retained message on
``weightwarden/policy/v1/<hosts glob>`` (``weightwarden.policysign``). The
agent subscribes to every group and, for each message whose topic's glob
matches its host id, applies it only if all of these hold, in this order:

1. it is a signed envelope, signed by a key in ``--trust-key`` (by key id);
2. the signed host group is the topic's, and matches this host (a validly
   signed policy copied onto another group's topic is refused);
3. its version is newer than the one in force (no rollback; the version is
   kept in the state directory, so a restart does not reopen the door);
4. the policy passes ``policy check`` (including the cap selectors this
   kernel can enforce).

Anything else is refused with a ``policy_rejected`` event (``source: mqtt``,
with the version and the reason) and the policy in force stays. Messages for
other groups are not for this host and are left alone. Retained messages
arrive again after every reconnect: the policy in force is recognised and
ignored, and a refusal is reported once per agent run, not once per reconnect.
An agent that was offline during a publish gets the retained message when it
comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from weightwarden import logs
from weightwarden.agent.enforce.enforcer import atomic_write, read_json
from weightwarden.agent.enforce.selectors import KernelSupport, detect, refusals
from weightwarden.agent.policy.loader import LoadedPolicy, PolicyError, parse_policy
from weightwarden.asyncutil import wait_for_stop
from weightwarden.mqtt import MqttSettings
from weightwarden.policysign import TOPIC_ROOT, Envelope, EnvelopeError, parse, verify

STATE_FILE = "central-policy.json"


@dataclass(frozen=True)
class Offer:
    """A policy that passed every check: the daemon applies it at its next reconciliation."""

    loaded: LoadedPolicy
    envelope: Envelope
    topic: str


@dataclass(frozen=True)
class Refusal:
    topic: str
    version: int | None
    problems: list[str]


class PolicyGate:
    """The decision, and the version floor kept in ``state_dir``. No network."""

    def __init__(self, host_id: str, trusted: dict[str, Ed25519PublicKey], state_dir: Path,
                 support: KernelSupport | None = None) -> None:
        self.host_id = host_id
        self.support = support or detect()
        self.trusted = trusted
        self.path = state_dir / STATE_FILE
        saved = read_json(self.path) or {}
        version = saved.get("version")
        self.floor: int = version if isinstance(version, int) else 0
        envelope = saved.get("envelope")
        self._saved_payload = envelope if isinstance(envelope, str) else None
        self._saved_topic = str(saved.get("topic") or "")
        self.in_force: bytes | None = None  # the payload of the policy in force, as received
        self._reported: set[bytes] = set()

    def restore(self) -> Offer | Refusal | None:
        """The central policy in force before a restart, checked again (a key may have been removed since)."""
        if self._saved_payload is None:
            return None
        payload = self._saved_payload.encode()
        result = self._check(self._saved_topic, payload, restoring=True)
        if isinstance(result, Offer):
            self.in_force = payload
        return result

    def consider(self, topic: str, payload: bytes) -> Offer | Refusal | None:
        """None: not for this host, empty, the policy in force again, or a refusal already reported."""
        group = topic.rsplit("/", 1)[-1]
        if not payload or not fnmatch.fnmatchcase(self.host_id, group):
            return None
        if payload == self.in_force:
            return None
        result = self._check(topic, payload)
        if isinstance(result, Refusal):
            digest = hashlib.sha256(topic.encode() + b"\0" + payload).digest()
            if digest in self._reported:
                return None
            self._reported.add(digest)
        elif isinstance(result, Offer):
            self.accept(result, payload)
        return result

    def accept(self, offer: Offer, payload: bytes) -> None:
        self.floor = offer.envelope.version
        self.in_force = payload
        atomic_write(self.path, {"version": offer.envelope.version, "topic": offer.topic,
                                 "envelope": payload.decode(), "key_id": offer.envelope.key_id,
                                 "accepted_at": time.time()})

    def _check(self, topic: str, payload: bytes, restoring: bool = False) -> Offer | Refusal:
        group = topic.rsplit("/", 1)[-1]
        try:
            env = parse(payload)
        except EnvelopeError as exc:
            return Refusal(topic, None, [str(exc)])
        try:
            verify(env, self.trusted)
        except EnvelopeError as exc:
            return Refusal(topic, env.version, [str(exc)])
        if env.hosts != group or not fnmatch.fnmatchcase(self.host_id, env.hosts):
            return Refusal(topic, env.version, [
                f"signed for host group {env.hosts!r} but delivered on the topic of {group!r}; {self.host_id} is "
                f"{'not ' if not fnmatch.fnmatchcase(self.host_id, env.hosts) else ''}in {env.hosts!r}: a policy "
                "for another host group"])
        if not restoring and env.version <= self.floor:
            return Refusal(topic, env.version, [f"version {env.version} is not newer than version {self.floor}, "
                                                "the newest applied here (no rollback)"])
        try:
            loaded = parse_policy(env.policy, f"mqtt:{topic}")
        except PolicyError as exc:
            return Refusal(topic, env.version, [p.render(f"mqtt:{topic}") for p in exc.problems][:100])
        refused = refusals(loaded.policy, self.support)  # as policy check: never widened, refused
        if refused:
            return Refusal(topic, env.version, refused[:100])
        return Offer(loaded, env, topic)


class MqttPolicySource:
    """Subscribes to every group's policy topic; reconnects with backoff until ``stop``."""

    def __init__(self, settings: MqttSettings, gate: PolicyGate) -> None:
        self.settings = settings
        self.gate = gate
        self.log = logs.get("agent.policy_source")
        self.connected = False

    def _client(self) -> aiomqtt.Client:
        s = self.settings
        # Its own clean session: the retained messages are the state; nothing queued is needed.
        return aiomqtt.Client(s.host, s.port, username=s.username, password=s.password,
                              identifier=f"weightwarden-agent-{self.gate.host_id}-policy",
                              protocol=aiomqtt.ProtocolVersion.V5, keepalive=s.keepalive,
                              tls_context=s.ssl_context() if s.tls else None, timeout=10)

    async def _session(self, on_offer: Callable[[Offer], None], on_refusal: Callable[[Refusal], None]) -> None:
        async with self._client() as client:
            await client.subscribe(f"{TOPIC_ROOT}/+", qos=1)
            self.connected = True
            self.log.info("policy_source_connected", broker=f"{self.settings.host}:{self.settings.port}")
            async for message in client.messages:
                payload = message.payload
                if isinstance(payload, str):
                    payload = payload.encode()
                if not isinstance(payload, (bytes, bytearray)):
                    continue
                result = self.gate.consider(str(message.topic), bytes(payload))
                if isinstance(result, Offer):
                    self.log.info("policy_offered", topic=result.topic, version=result.envelope.version,
                                  key_id=result.envelope.key_id)
                    on_offer(result)
                elif isinstance(result, Refusal):
                    self.log.warning("policy_refused", topic=result.topic, version=result.version,
                                     problems=result.problems[:5])
                    on_refusal(result)

    async def run(self, stop: asyncio.Event, on_offer: Callable[[Offer], None],
                  on_refusal: Callable[[Refusal], None]) -> None:
        delay = 0.5
        while not stop.is_set():
            session = asyncio.create_task(self._session(on_offer, on_refusal))
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({session, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if stopper in done:
                session.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await session
                return
            stopper.cancel()
            was_connected, self.connected = self.connected, False
            exc = session.exception()
            self.log.warning("policy_source_disconnected", error=str(exc) if exc else "closed")
            if was_connected:
                delay = 0.5
            if await wait_for_stop(stop, delay):
                return
            delay = min(delay * 2, 5.0)
