"""The source daemon over a real broker: a transient failure of its source is retried."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from pipeline.config.settings import KafkaSettings, Settings
from pipeline.core.errors import RetryableError
from pipeline.core.events import ChangeEvent
from pipeline.runtime.daemons import run_source
from pipeline.sources import Change, PassReport

pytestmark = pytest.mark.kafka


class FlakySource:
    """Fails its first pass the way a database that is restarting does, then yields one event."""

    name = "flaky"
    identity = "test:flaky"

    def __init__(self) -> None:
        self.passes = 0
        self.committed: list[Change] = []

    def changes(self, report: PassReport) -> Iterator[Change]:
        self.passes += 1
        if self.passes == 1:
            raise RetryableError("the database is restarting")
        if not self.committed:
            event = ChangeEvent(source="flaky", doc_id="a", op="upsert", text="Back again.", version=1)
            yield Change(event, "a", None)

    def reserve(self, changes: Sequence[Change]) -> None:
        pass

    def commit(self, changes: Sequence[Change]) -> None:
        self.committed.extend(changes)

    def orphans(self, indexed: Mapping[str, int]) -> list[Change]:
        return []

    def estimate(self) -> int | None:
        return None


def test_a_source_pass_that_fails_transiently_is_retried_not_fatal(
    tmp_path: Path, kafka_settings: KafkaSettings
):
    """The daemon stays up through a retryable source error and publishes on the next try."""
    settings = Settings.load(state_dir=tmp_path / "state", kafka=kafka_settings.model_dump())
    source, stop, failures = FlakySource(), threading.Event(), []

    def daemon() -> None:
        try:
            run_source(settings, source, stop, interval_s=0.2)
        except BaseException as exc:  # what would end the process
            failures.append(exc)

    thread = threading.Thread(target=daemon)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not source.committed and not failures:
            assert time.monotonic() < deadline, "the retried pass never published"
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(60)
    assert failures == []
    assert source.passes >= 2
    assert [c.doc_id for c in source.committed] == ["a"]
