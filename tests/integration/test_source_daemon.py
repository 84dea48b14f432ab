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


def test_a_source_daemon_reconciles_with_the_index_on_a_server(
    tmp_path: Path, kafka_settings: KafkaSettings, qdrant_server, tiny_model: Path
):
    """A document the index (on a Qdrant server) holds but the folder lost while no daemon
    ran is deleted by the daemon's reconciling pass."""
    from connectors.filesystem import FilesystemSource
    from pipeline.bus.kafka import KafkaBus
    from pipeline.runtime.embedded import EmbeddedPipeline
    from pipeline.runtime.local import index_source
    from tests.groundtruth import paragraphs

    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("a.md", "b.md", "c.md"):
        (docs / name).write_text(paragraphs(name, 2), encoding="utf-8")
    store = {"url": qdrant_server.url, "api_key": qdrant_server.api_key}
    index = {"name": f"reconcile{time.monotonic_ns()}"}
    prefix = f"rc{time.monotonic_ns()}"
    embedded = Settings.load(
        state_dir=tmp_path / "embedded", model={"name": str(tiny_model)}, store=store, index=index
    )
    with EmbeddedPipeline(embedded) as pipeline:
        index_source(pipeline, FilesystemSource(docs, tmp_path / "embedded.json", name="fs"))
    (docs / "c.md").unlink()

    settings = Settings.load(
        state_dir=tmp_path / "daemon", store=store, index=index,
        kafka={**kafka_settings.model_dump(), "topic_prefix": prefix}, sources={"reconcile_every_s": 0},
    )  # fmt: skip
    source = FilesystemSource(docs, tmp_path / "daemon.json", name="fs")
    stop, failures = threading.Event(), []

    def daemon() -> None:
        try:
            run_source(settings, source, stop, interval_s=0.2)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=daemon)
    thread.start()
    bus = KafkaBus(settings.kafka, client_id="test-reconcile")
    try:
        deadline, deletes = time.monotonic() + 60, []
        while not deletes and not failures:
            assert time.monotonic() < deadline, "no reconciling delete was published"
            records = bus.read_all(f"{prefix}.changes")
            deletes = [ChangeEvent.from_bytes(r.value) for r in records if r.value and b'"delete"' in r.value]
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join(60)
        bus.close()
    assert failures == []
    assert [(e.doc_id, e.op) for e in deletes] == [("c.md", "delete")]
