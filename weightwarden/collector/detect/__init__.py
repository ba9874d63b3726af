"""Detection: from stored facts to alerts.

- ``common``: tuning, the alert draft, how bytes are counted (pure)
- ``facts``: events -> the rows detection stores (pure)
- ``sender``: a process that had the weights sends them (linked: read, pipe, relay, fork, staged copy)
- ``host``: weights read, then a comparable volume left, whoever sent it (host-level, chunked)
- ``slow``: a trickle to one destination that adds up over hours
- ``single``: what one event decides (canary, caps, drift, network-storage copy...) and host health
- ``flow``: the database side: record facts, find what they touch, re-judge it, the sweep
"""
