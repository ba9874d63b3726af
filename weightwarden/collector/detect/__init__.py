"""Detection: from stored facts to alerts.

- ``detector``: the engine: store the facts an event carries, ask the rules what they touch, judge
  each touched subject again from every stored fact, the sweep
- ``rule``, ``registry``, ``keys``: the interface every rule implements, the registry that finds
  them (one module each in ``rules/``), alert keys as typed values
- ``rules/``: the rules (exfiltration, host-level, slow, the agent's one-event alerts, the agent's
  lifecycle and sequence, the sensor's state and tampering, raw sockets, unexplained egress, relinks)
- ``links``: what links a process to the weights (reads, copies, pipes and pipeline stages, relays, forks)
- ``sender``, ``host``, ``slow``: the linked, host-level and slow verdicts, pure
- ``event_rule``: rules one event decides, as data
- ``facts``: events -> the rows detection stores (pure)
- ``common``: tuning, the alert draft, how bytes are counted (pure)
"""
