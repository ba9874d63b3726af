"""Closing a threaded paho-mqtt client for good, which paho itself only does when the client is deleted."""

from __future__ import annotations

import paho.mqtt.client as mqtt


def release(client: mqtt.Client) -> None:
    """Close what paho keeps open after ``loop_stop()`` and ``disconnect()``; call it after both.

    ``loop_start()`` makes a loopback TCP socket pair to wake its thread, and paho closes that pair (and a
    connection still open) only in ``Client.__del__`` (eclipse-paho/paho.mqtt.python#627). A client in a
    reference cycle (its callbacks are methods of the object holding it) reaches ``__del__`` only through
    the garbage collector, which may finalize the two sockets first: a ResourceWarning for each, an
    unraisable exception that fails the pytest run, whichever test happens to be running (or at its end).
    """
    client._reset_sockets()
