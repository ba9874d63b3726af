"""weightwarden: keeps AI model weights from leaving the machines that hold them.

``weightwarden`` holds what the agent and the collector share (the event
models, units, MQTT settings, logging); ``weightwarden.agent`` runs on each
GPU host and ``weightwarden.collector`` is the central service.
"""

__version__ = "0.2.0"
