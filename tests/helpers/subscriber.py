"""A paho-mqtt subscriber with a persistent session, collecting everything under weightwarden/v1/#."""

from __future__ import annotations

import json
import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.helpers.mqtt_client import release


class Subscriber:
    def __init__(self, host: str, port: int, topic: str = "weightwarden/v1/#", client_id: str = "test-sub") -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.topic = topic
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a, **k: self.subscribed.set()
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        self.client.connect(host, port, keepalive=5, clean_start=False, properties=props)
        self.client.loop_start()
        assert self.subscribed.wait(10), "subscriber could not subscribe"

    def _on_connect(self, client: mqtt.Client, _ud: Any, _flags: Any, _rc: Any, _props: Any = None) -> None:
        client.subscribe(self.topic, qos=1)

    def _on_message(self, _client: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            doc = {"raw": msg.payload.decode(errors="replace")}
        with self.lock:
            self.messages.append((msg.topic, doc))

    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [doc for _t, doc in self.messages]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
        release(self.client)  # the client and this object are a cycle (its callbacks are our methods)


def main() -> None:
    """python -m tests.helpers.subscriber HOST PORT: print every message as {"topic", "event"} JSON lines."""
    import sys

    class Printing(Subscriber):
        def _on_message(self, _client: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
            try:
                doc = json.loads(msg.payload)
            except ValueError:
                doc = {"raw": msg.payload.decode(errors="replace")}
            print(json.dumps({"topic": msg.topic, "event": doc}), flush=True)

    Printing(sys.argv[1], int(sys.argv[2]), client_id=sys.argv[3] if len(sys.argv) > 3 else "test-sub")
    print(json.dumps({"ready": True}), flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
