"""``weightwarden-collector``: the command line (run, serve, alerts, hosts, users, outputs, policy...)."""

from weightwarden.collector.cli.main import main

__all__ = ["main"]
