"""Small asyncio helpers shared by the agent and the collector."""

from __future__ import annotations

import asyncio


async def wait_for_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``, waking early when ``stop`` is set; True if it was."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))
    except TimeoutError:
        return False
    return True
