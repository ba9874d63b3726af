"""The suite's threaded MQTT clients leave no socket open once closed (tests/helpers/mqtt_client.py).

paho's loop_start() makes a loopback socket pair that it closes only when the client is deleted; the
Subscriber and its client are a reference cycle, so without release() that pair waited for the garbage
collector, whose ResourceWarning failed the run when it finalized a socket before the client.
"""

from __future__ import annotations

import gc
import os

from tests.helpers.broker import Broker
from tests.helpers.subscriber import Subscriber


def _sockets() -> set[str]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            out.add(target)
    return out


def test_a_closed_subscriber_holds_no_socket(broker: Broker) -> None:
    gc.disable()  # what the collector would close later does not count: close() must have closed it
    try:
        before = _sockets()
        sub = Subscriber("127.0.0.1", broker.port, client_id="release-check")
        made = _sockets() - before
        assert len(made) >= 3, made  # the connection and loop_start()'s socket pair
        sub.close()
        assert not made & _sockets(), f"left open by Subscriber.close(): {made & _sockets()}"
        client = sub.client
        assert client.socket() is None and client._sockpairR is None and client._sockpairW is None
    finally:
        gc.enable()
        gc.collect()


def test_release_needs_no_broker_connection() -> None:
    # release() after a client that never connected (loop_start made the pair all the same).
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from tests.helpers.mqtt_client import release

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="never-connected")
    c.loop_start()
    c.loop_stop()
    pair = (c._sockpairR, c._sockpairW)
    assert all(s is not None and s.fileno() != -1 for s in pair)
    release(c)
    assert all(s is None or s.fileno() == -1 for s in pair)
