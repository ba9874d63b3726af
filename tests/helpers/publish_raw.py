"""Publish one retained message as given (crafted, tampered, or foreign), as an attacker on the broker could.

Usage: python -m tests.helpers.publish_raw HOST PORT TOPIC FILE
"""

from __future__ import annotations

import sys
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion


def main() -> None:
    host, port, topic, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-raw-publisher", protocol=MQTTProtocolVersion.MQTTv5)
    client.connect(host, port, keepalive=10)
    client.loop_start()
    info = client.publish(topic, Path(path).read_bytes(), qos=1, retain=True)
    info.wait_for_publish(timeout=10)
    assert info.is_published(), "the broker did not acknowledge"
    client.loop_stop()
    client.disconnect()


if __name__ == "__main__":
    main()
