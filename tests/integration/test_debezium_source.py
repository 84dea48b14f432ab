"""Debezium change topics on the real test broker end exactly as the database's rows.

Recorded PostgreSQL (schema-wrapped) and MySQL (schemaless) records, in the shapes
Debezium documents (:mod:`tests.debezium_payloads`), are produced to a real Kafka topic
and indexed through the embedded pipeline (embedded Qdrant engine, tiny real model); the
index is compared with ground truth including vectors. Besides the happy path: an UPDATE
that leaves a TOASTed column out (the unavailable-value placeholder), a delete of which a
compacted topic keeps only the tombstone, and log positions that restart lower.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from connectors.debezium import DebeziumSource, DebeziumTopics
from connectors.kit.rejects import LocalRejects
from connectors.kit.rows import RowFormat
from pipeline.bus import Outgoing, TopicSpec
from pipeline.bus.dead_letters import LocalDeadLetters
from pipeline.config.settings import Settings
from pipeline.runtime.adapters import make_chunker
from pipeline.runtime.embedded import EmbeddedPipeline
from pipeline.runtime.local import IndexSummary, index_source
from pipeline.versions.spec import live_version
from tests.debezium_payloads import Record, compacted, mysql, postgres, toasted, tombstone
from tests.groundtruth import assert_index_equals, expected_chunks

pytestmark = pytest.mark.kafka

ROWS = RowFormat("{title}\n\n{body}", ("author",))
NAME = "articles"


def row(id_: int, topic: str, author: str = "ann") -> dict[str, Any]:
    text = " ".join(f"Sentence {i} about {topic}, with enough words for a chunk." for i in range(12))
    return {"id": id_, "title": f"Article {id_}", "body": text, "author": author}


class Crash(BaseException):
    """Stands for a kill -9 between publishing and committing: nothing handles it."""


class Cdc:
    """One Debezium topic, its consumer group and an embedded index fed from it."""

    def __init__(self, bus: Any, prefix: str, settings: Settings) -> None:
        self.bus = bus
        self.topic = f"{prefix}.dbserver1.public.articles"
        self.group = f"{prefix}.debezium"
        self.settings = settings
        bus.ensure_topics([TopicSpec(self.topic, 3, compacted=False)])
        self.pipe = EmbeddedPipeline(settings)

    def produce(self, records: Sequence[Record]) -> None:
        self.bus.producer().send([Outgoing(self.topic, key.decode(), value) for key, value in records])

    def source(self, rows: RowFormat = ROWS) -> DebeziumSource:
        config = DebeziumTopics((self.topic,), self.group, rows, key="id")
        rejects = LocalRejects(LocalDeadLetters(self.settings.state_dir / "dlq.jsonl"))
        checkpoint = self.settings.state_dir / "debezium.sqlite"
        return DebeziumSource(self.bus, config, checkpoint=checkpoint, name=NAME, rejects=rejects)

    def run(self, source: DebeziumSource | None = None) -> IndexSummary:
        owned = source is None
        source = source or self.source()
        try:
            return index_source(self.pipe, source, allow_mass_delete=True, reconcile=False)
        finally:
            if owned:
                source.close()

    def assert_rows(self, rows: Sequence[dict[str, Any]]) -> None:
        """The index holds exactly these rows as documents, vectors included."""
        version = live_version(self.pipe.store, "docs")
        assert version is not None
        chunker = make_chunker(self.pipe.encoder, self.settings)
        expected = expected_chunks({str(r["id"]): ROWS.text(r) for r in rows}, chunker, NAME)
        assert_index_equals(self.pipe.store, version, expected, self.pipe.encoder)


@pytest.fixture
def cdc(kafka_bus, kafka_settings, tmp_path: Path, tiny_model: Path) -> Iterator[Cdc]:
    settings = Settings.load(
        state_dir=tmp_path / "state",
        model={"name": str(tiny_model)},
        chunking={"max_tokens": 64, "overlap_tokens": 8},
    )
    handle = Cdc(kafka_bus, kafka_settings.topic_prefix, settings)
    yield handle
    handle.pipe.close()


def test_postgres_changes_end_exact(cdc):
    """Snapshot reads, create, update, metadata-only update, delete + tombstone, and a create:
    the deleted row is gone, the tombstone after its delete deletes nothing more."""
    cdc.produce([postgres("r", row(1, "pairing"), 24_023_128, snapshot="true"),
                 postgres("r", row(2, "batteries"), 24_023_128, snapshot="last"),
                 postgres("c", row(3, "firmware"), 24_023_500)])  # fmt: skip
    assert cdc.run().added == 3
    cdc.assert_rows([row(1, "pairing"), row(2, "batteries"), row(3, "firmware")])
    deleted = postgres("d", {"id": 3}, 24_023_800)
    cdc.produce([postgres("u", row(1, "pairing over Thread"), 24_023_600),
                 postgres("u", row(2, "batteries", author="bob"), 24_023_700),
                 deleted, tombstone(deleted),
                 postgres("c", row(4, "alarms"), 24_023_900)])  # fmt: skip
    summary = cdc.run()
    assert (summary.deleted, summary.stale) == (1, 0)
    cdc.assert_rows([row(1, "pairing over Thread"), row(2, "batteries", author="bob"), row(4, "alarms")])


def test_a_tombstone_alone_deletes_the_row(cdc):
    """A consumer lagging behind log compaction finds only the tombstone of a delete: the row
    is deleted (numbered above its indexed version from the per-key checkpoint)."""
    cdc.produce([postgres("c", row(1, "pairing"), 100), postgres("c", row(2, "sirens"), 200)])
    cdc.run()
    deleted = postgres("d", {"id": 1}, 300)
    left = compacted([deleted, tombstone(deleted)])
    assert left == [tombstone(deleted)]
    cdc.produce(left)
    assert cdc.run().deleted == 1
    cdc.assert_rows([row(2, "sirens")])


def test_binlog_positions_that_restart_lower_still_apply(cdc, caplog):
    """RESET MASTER on MySQL: the binlog starts again at mysql-bin.000001. The update, the delete
    (with its tombstone) and the create after it are applied, in topic order, not stale."""
    cdc.produce([mysql("c", row(10, "locks"), "mysql-bin.000003", 154),
                 mysql("c", row(11, "cameras"), "mysql-bin.000003", 484)])  # fmt: skip
    cdc.run()
    deleted = mysql("d", {"id": 11}, "mysql-bin.000001", 300)
    cdc.produce([mysql("u", row(10, "smart locks"), "mysql-bin.000001", 154),
                 deleted, tombstone(deleted),
                 mysql("c", row(12, "sirens"), "mysql-bin.000001", 400)])  # fmt: skip
    with caplog.at_level("WARNING", logger="connectors.debezium"):
        summary = cdc.run()
    assert (summary.changed, summary.deleted, summary.added, summary.stale) == (1, 1, 1, 0)
    cdc.assert_rows([row(10, "smart locks"), row(12, "sirens")])
    assert any("went backwards" in r.getMessage() for r in caplog.records)


def test_a_toasted_column_left_out_never_becomes_text(cdc):
    """Default replica identity: an UPDATE that did not touch the long body carries the
    placeholder. The indexed row keeps its text; a row whose text is not known here is
    dead-lettered with the fix (REPLICA IDENTITY FULL); no text holds the placeholder."""
    cdc.produce([postgres("c", row(1, "pairing"), 100)])
    cdc.run()
    cdc.produce([postgres("u", toasted(row(1, "pairing"), "body"), 200),
                 postgres("u", toasted(row(2, "sirens"), "body"), 300)])  # fmt: skip
    summary = cdc.run()
    assert summary.skipped == {"unavailable_value_kept": 1, "unavailable_value": 1}
    cdc.assert_rows([row(1, "pairing")])
    (letter,) = LocalDeadLetters(cdc.settings.state_dir / "dlq.jsonl").read()
    assert letter.reason == "unavailable_value"
    assert "ALTER TABLE public.articles REPLICA IDENTITY FULL" in letter.message
    cdc.produce([postgres("u", row(2, "sirens"), 400)])  # after REPLICA IDENTITY FULL: every column
    cdc.run()
    cdc.assert_rows([row(1, "pairing"), row(2, "sirens")])


def test_a_metadata_only_change_writes_no_vectors(cdc):
    """An update that changes only a metadata column: 0 chunks encoded, 0 points written."""
    cdc.produce([postgres("c", row(1, "pairing"), 100)])
    cdc.run()
    stats = cdc.pipe.stats
    encoded, upserted = stats.encoded, stats.points_upserted
    cdc.produce([postgres("u", row(1, "pairing", author="bob"), 200)])
    assert cdc.run().changed == 1
    assert (stats.encoded - encoded, stats.points_upserted - upserted) == (0, 0)
    cdc.assert_rows([row(1, "pairing", author="bob")])


def test_mysql_changes_without_schema_end_exact(cdc):
    """Schemaless MySQL records ordered by binlog file and position, across a binlog rotation."""
    deleted = mysql("d", {"id": 11}, "mysql-bin.000003", 1120)
    cdc.produce([mysql("r", row(10, "locks"), "mysql-bin.000003", 154, snapshot=True),
                 mysql("c", row(11, "cameras"), "mysql-bin.000003", 484),
                 mysql("u", row(10, "smart locks"), "mysql-bin.000003", 805),
                 deleted, tombstone(deleted),
                 mysql("c", row(12, "sirens"), "mysql-bin.000004", 4),
                 mysql("u", row(12, "loud sirens"), "mysql-bin.000004", 4, row_in_event=1)])  # fmt: skip
    cdc.run()
    cdc.assert_rows([row(10, "smart locks"), row(12, "loud sirens")])


def test_a_document_edited_a_b_a_ends_at_a(cdc):
    """Text A, then B, then A again, each indexed: the index holds A."""
    for lsn, topic in ((100, "pairing"), (200, "something else"), (300, "pairing")):
        cdc.produce([postgres("u", row(1, topic), lsn)])
        cdc.run()
    cdc.assert_rows([row(1, "pairing")])


def test_offsets_move_only_after_delivery(cdc):
    """A crash after the records were read but before they were indexed loses nothing: the
    next member of the group reads them again (offsets are committed only after delivery)."""
    cdc.produce([postgres("c", row(i, f"topic {i}"), 100 + i) for i in range(1, 5)])
    source = cdc.source()
    process = cdc.pipe.process

    def crash_before_indexing(events: Any) -> set[str]:
        raise Crash

    cdc.pipe.process = crash_before_indexing  # type: ignore[method-assign]
    with pytest.raises(Crash):
        cdc.run(source)
    source.close()  # the process died: its member leaves without committing
    cdc.pipe.process = process  # type: ignore[method-assign]
    cdc.produce([postgres("u", row(2, "an edit after the crash"), 200)])
    cdc.run()
    edited = row(2, "an edit after the crash")
    cdc.assert_rows([row(1, "topic 1"), edited, row(3, "topic 3"), row(4, "topic 4")])
    assert cdc.run().changed_anything is False  # and now everything is committed


def test_an_undecodable_record_is_dead_lettered_and_the_rest_indexed(cdc):
    """A record that is not JSON goes to the dead-letter log; the records around it are indexed."""
    cdc.produce([postgres("c", row(1, "pairing"), 100), (b'{"id": 2}', b"{not json"),
                 postgres("c", row(3, "sirens"), 300)])  # fmt: skip
    summary = cdc.run()
    assert summary.skipped == {"invalid_record": 1}
    cdc.assert_rows([row(1, "pairing"), row(3, "sirens")])
    (letter,) = LocalDeadLetters(cdc.settings.state_dir / "dlq.jsonl").read()
    assert (letter.reason, letter.original_topic, letter.value) == ("invalid_event", cdc.topic, b"{not json")


def test_a_row_without_the_soft_delete_column_is_reported_and_the_rest_indexed(cdc):
    """Rows captured before the soft-delete column existed lack it: such a row is skipped as
    missing_column (not indexed), and the pass goes on with the rows after it."""
    soft = RowFormat("{title}\n\n{body}", ("author",), deleted_column="deleted")
    cdc.produce([postgres("c", row(1, "pairing"), 100),
                 postgres("c", {**row(2, "sirens"), "deleted": False}, 200)])  # fmt: skip
    source = cdc.source(soft)
    try:
        summary = cdc.run(source)
    finally:
        source.close()
    assert summary.skipped == {"missing_column": 1}
    cdc.assert_rows([row(2, "sirens")])


def test_the_daemon_publishes_change_events_once(cdc, kafka_settings, kafka_bus, poll_until, tmp_path):
    """`source debezium` as a daemon (run_source over Kafka): records become change events on
    <prefix>.changes with the LSN as version; a restarted daemon does not publish them again
    (its group committed them)."""
    from pipeline.core.events import ChangeEvent
    from pipeline.core.names import Topics
    from pipeline.runtime.daemons import run_source

    settings = Settings.load(state_dir=tmp_path / "daemon").model_copy(update={"kafka": kafka_settings})
    topics = Topics(kafka_settings.topic_prefix)
    reader = kafka_bus.consumer(f"{topics.prefix}.reader", [topics.changes])

    def published_while_running(count: int) -> list[ChangeEvent]:
        stop = threading.Event()
        source = cdc.source()
        daemon = threading.Thread(target=run_source, args=(settings, source, stop, 0.0), daemon=True)
        daemon.start()
        try:
            received = poll_until(reader, lambda got: len(got) >= count)
            return sorted((ChangeEvent.from_bytes(r.value) for r in received), key=lambda e: e.doc_id)
        finally:
            stop.set()
            daemon.join(timeout=60)
            source.close()

    try:
        cdc.produce([postgres("c", row(1, "pairing"), 100), postgres("c", row(2, "sirens"), 200)])
        assert [(e.doc_id, e.version) for e in published_while_running(2)] == [("1", 100), ("2", 200)]
        cdc.produce([postgres("d", {"id": 1}, 300)])
        (deletion,) = published_while_running(1)
        assert (deletion.op, deletion.version) == ("delete", 300)
    finally:
        reader.close()
