"""Two collectors sharing a database (a shared subscription): a host's weight read reaches one, its upload
the other. The one holding the upload judges it with the read the other stored, in the same batch, not
at the next sweep."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.collector.scenarios import MB, T0, Stream
from tests.collector.test_detections import Clock
from weightwarden.collector.detect.common import Tuning
from weightwarden.collector.ingest.pipeline import Pipeline
from weightwarden.collector.store.database import Store


@pytest.mark.parametrize("shared", [True, False])
def test_an_upload_is_linked_to_a_read_another_collector_stored_since(tmp_path: Path, shared: bool) -> None:
    url = f"sqlite:///{tmp_path}/c.db"
    a, b = (Pipeline(Store(url), Tuning(), clock=Clock(T0 + 10)) for _ in range(2))
    b.shared = shared
    s = Stream()
    s.send(T0, pid=77, nbytes=4096)  # an ordinary sample: b learns that the host has read no weights
    b.ingest(s.messages())
    s.events.clear()
    s.read(T0 + 1, pid=400, nbytes=256 * MB, start=T0 - 10)
    a.ingest(s.messages())  # the read, stored by the other collector
    s.events.clear()
    s.send(T0 + 5, pid=400, nbytes=200 * MB, start=T0 - 10)
    b.ingest(s.messages())  # the upload; no sweep
    kinds = {x["kind"] for x in b.store.alerts()}
    if shared:
        assert "exfiltration" in kinds, kinds
    else:
        assert "exfiltration" not in kinds, "without the flag, the cached answer hides the read (the sweep's job)"
