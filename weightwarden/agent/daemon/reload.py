"""Where the agent's next policy comes from: a central offer that passed every check (taken first), or
the policy file and its drop-ins when one of them changes or on SIGHUP. A file that does not load, or
asks for a cap this kernel cannot enforce, is refused and reported (``policy_rejected``); the policy in
force stays. A central policy, once in force, is not replaced by the local file (only the bootstrap)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

from structlog.typing import FilteringBoundLogger

from weightwarden.agent.daemon.config import Origin
from weightwarden.agent.enforce.selectors import detect as detect_support
from weightwarden.agent.policy.lint import unenforceable
from weightwarden.agent.policy.loader import LoadedPolicy, PolicyError, load_policy, stamp
from weightwarden.agent.policy.source import Offer, Refusal
from weightwarden.events import Payload, PolicyRejected


class PolicyReloads:
    def __init__(self, policy_path: Path, origin: Origin, emit: Callable[[Payload], None], log: FilteringBoundLogger) -> None:
        self.policy_path = policy_path
        self.origin = origin
        self.emit = emit
        self.log = log
        self.requested = asyncio.Event()  # SIGHUP: read the file again even if it looks unchanged
        self._offer: Offer | None = None  # set on the event loop by the policy source, taken by the enforce loop
        self._offer_lock = threading.Lock()
        self._mtime = stamp(policy_path)  # the base file and its drop-ins: any of them changing is a reload

    def offer(self, offer: Offer) -> None:
        """A central policy that passed every check (called by the policy source, on the event loop)."""
        with self._offer_lock:
            self._offer = offer

    def refuse(self, refusal: Refusal, kept: LoadedPolicy) -> None:
        self.emit(PolicyRejected(path=refusal.topic, problems=refusal.problems[:500],
                                 kept=kept.policy.metadata.name, kept_digest=kept.digest,
                                 source="mqtt", version=refusal.version))

    def take_offer(self) -> Offer | None:
        """The central policy offered since the last look, if any; it is the origin from now on."""
        with self._offer_lock:
            offer, self._offer = self._offer, None
        if offer is not None:
            env = offer.envelope
            self.origin = Origin("mqtt", env.version, env.key_id, f"mqtt:{offer.topic}")
        return offer

    def file_changed(self) -> bool:
        """Whether the file is to be read again (it changed, or SIGHUP), while a file policy is in force."""
        if self.origin.source != "file":
            return False  # a central policy is in force: the local file was only the bootstrap
        mtime = stamp(self.policy_path)
        if not self.requested.is_set() and mtime == self._mtime:
            return False
        self.requested.clear()
        self._mtime = mtime
        return True

    def load_file(self, kept: LoadedPolicy) -> LoadedPolicy | None:
        """The file's policy, or None after reporting why it is refused (``kept`` stays in force)."""
        path = str(self.policy_path)
        try:
            loaded = load_policy(self.policy_path)
            # A cap this kernel cannot enforce is refused as `policy check` refuses it, never widened.
            refused = unenforceable(loaded, detect_support())
            if refused:
                raise PolicyError(refused)
        except Exception as exc:  # noqa: BLE001 - whatever the file holds, the daemon keeps its policy
            problems = ([p.render(path) for p in exc.problems] if isinstance(exc, PolicyError)
                        else [f"{path}: cannot load policy: {type(exc).__name__}: {exc}"[:2000]])
            self.log.error("policy_rejected", problems=problems, kept=kept.policy.metadata.name)
            self.emit(PolicyRejected(path=path, problems=problems[:500], kept=kept.policy.metadata.name,
                                     kept_digest=kept.digest, source="file"))
            return None
        return loaded
