"""Sample entries stay within what the collector accepts, whatever a process does."""

from __future__ import annotations

import json

from weightwarden.agent.attribution.report import Account, DestStats, PeerStats, bound_processes, process_entry
from weightwarden.events import MAX_DESTINATIONS, MAX_LOCAL_PEERS, EgressSample


def test_fifteen_thousand_one_byte_destinations_make_a_small_sample() -> None:
    acct = Account()
    for port in range(15_000):
        acct.dest("198.18.0.2", 20_000 + port, "udp").add(1)
    acct.dest("198.18.0.9", 443, "tcp").add(5_000_000, 1.0, 2.0)
    entry = process_entry(7, None, acct.dests)
    assert len(entry["destinations"]) == MAX_DESTINATIONS
    assert entry["destinations"][0] == {"address": "198.18.0.9", "port": 443, "tx_bytes": 5_000_000,
                                        "protocol": "tcp", "first_ts": 1.0, "last_ts": 2.0}
    assert entry["other_destinations"] == {"count": 15_000 - (MAX_DESTINATIONS - 1),
                                           "tx_bytes": 15_000 - (MAX_DESTINATIONS - 1)}
    assert entry["tx_bytes"] == 5_015_000, "bytes cut from the list are still counted"
    sample = {"ts": 10.0, "interval_s": 1.0, "processes": [entry], "attributed_tx_bytes": entry["tx_bytes"]}
    EgressSample.model_validate(sample)
    assert len(json.dumps(sample)) < 16_000


def test_icmp_and_raw_to_one_address_stay_apart() -> None:
    acct = Account()
    acct.dest("198.18.0.2", 0, "icmp").add(100)
    acct.dest("198.18.0.2", 0, "raw").add(200)
    entry = process_entry(1, None, acct.dests)
    assert {(d["protocol"], d["tx_bytes"]) for d in entry["destinations"]} == {("icmp", 100), ("raw", 200)}


def test_local_peers_are_bounded_and_local_only_processes_rank_last() -> None:
    peers = [PeerStats("unix", 1000 + i, pid=100 + i) for i in range(40)]
    relay = process_entry(5, None, {}, peers)
    assert relay["tx_bytes"] == 0 and len(relay["local_peers"]) == MAX_LOCAL_PEERS
    assert relay["local_peers"][0]["tx_bytes"] == 1039
    assert relay["other_local_peers"]["count"] == 40 - MAX_LOCAL_PEERS
    sender = process_entry(6, None, {("198.18.0.2", 443): DestStats(tx_bytes=10)})
    ordered, other = bound_processes([relay, sender])
    assert [p["pid"] for p in ordered] == [6, 5] and other is None
    EgressSample.model_validate({"ts": 1.0, "interval_s": 1.0, "processes": ordered})
