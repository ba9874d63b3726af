"""``weightwarden-agent``: the command line (run, top, status, policy, enforce)."""

from weightwarden.agent.cli.main import main

__all__ = ["main"]
