"""What an iperf3 upload put on the wire, as iperf3 itself can say it.

`sum_sent` is what the client wrote, not what left: on TEST_END the server closes its data socket,
and a close with unread data resets the connection, so under load the client's last few MB (its send
buffer, the receiver's unread queue) are thrown away (measured here: 96.7 MB read of 105 MB written).
What left lies between what the receiver read and what the sender wrote plus its retransmissions."""

from __future__ import annotations

from typing import Any

MSS = 1500  # a segment retransmitted on these veths carries at most one MTU


def left_the_host(report: dict[str, Any]) -> tuple[int, int]:
    """(fewest, most) payload bytes this upload can have put on the wire."""
    end = report["end"]
    sent = end["sum_sent"]
    low = int(end["sum_received"]["bytes"])
    high = int(sent["bytes"]) + int(sent.get("retransmits", 0)) * MSS
    return low, high


def credited_as_sent(credited: int, report: dict[str, Any], slack: float = 0.01) -> bool:
    low, high = left_the_host(report)
    return (1 - slack) * low <= credited <= (1 + slack) * high
