"""Unit tests for reading Debezium records: envelopes, versions from log positions, document ids;
and for the source's per-key state: the unavailable-value placeholder, tombstones, log
positions that restart lower, a --key that is not the primary key."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from connectors.debezium import (
    DebeziumSource,
    DebeziumTopics,
    Polling,
    change_version,
    parse_change,
    record_doc_id,
)
from connectors.kit.rows import RowFormat
from pipeline.bus import Record
from pipeline.core.errors import ConfigError, InvalidEvent
from pipeline.core.events import ChangeEvent
from pipeline.runtime.passes import run_source_pass
from pipeline.sources import PassReport
from tests.debezium_payloads import UNAVAILABLE, compacted, mysql, postgres, toasted, tombstone

ROW = {"id": 7, "title": "Pairing", "body": "Hold the button.", "author": "ann"}


def test_a_postgres_update_with_schema_is_an_upsert_at_its_lsn():
    """The schema-wrapped PostgreSQL envelope yields the after row and source.lsn as the version."""
    _key, value = postgres("u", ROW, lsn=24023128)
    change = parse_change(value or b"")
    assert change is not None
    assert (change.op, change.row, change.version) == ("upsert", ROW, 24023128)


def test_a_delete_without_schema_keeps_its_before_key():
    """A schemaless MySQL delete is a delete of the before row (its key)."""
    _key, value = mysql("d", {"id": 7}, "mysql-bin.000003", 1120)
    change = parse_change(value or b"")
    assert change is not None
    assert change.op == "delete"
    assert change.row == {"id": 7}


def test_snapshot_reads_and_creates_are_upserts():
    """op r (snapshot read) and op c (create) both carry the after row."""
    for op in ("r", "c"):
        change = parse_change(postgres(op, ROW, lsn=10)[1] or b"")
        assert change is not None
        assert change.op == "upsert"


def test_binlog_positions_order_changes_across_files():
    """MySQL versions follow (binlog file, position, row): a new file outranks a large position."""
    at = [("mysql-bin.000003", 154, 0), ("mysql-bin.000003", 154, 1), ("mysql-bin.000003", 805, 0),
          ("mysql-bin.000004", 4, 0)]  # fmt: skip
    versions = [change_version({"connector": "mysql", "file": f, "pos": p, "row": r}) for f, p, r in at]
    assert versions == sorted(versions)
    assert len(set(versions)) == len(versions)


def test_other_connectors_are_ordered_by_ts_ms():
    """Without an LSN or binlog position, the source's ts_ms is the version."""
    assert change_version({"connector": "sqlserver", "ts_ms": 1_700_000_000_123}) == 1_700_000_000_123


def test_records_that_are_not_row_changes_are_skipped():
    """Truncates, heartbeats and schema-change records are not documents (None, not an error)."""
    assert parse_change(b'{"op": "t", "source": {}}') is None
    assert parse_change(b'{"ts_ms": 1700000000000}') is None
    assert parse_change(b'{"schema": {}, "payload": {"databaseName": "inventory", "ddl": "ALTER"}}') is None


@pytest.mark.parametrize(
    "value",
    [b"\xff\xfe", b"{not json",
     b'{"op": "u", "after": null, "source": {"connector": "postgresql", "lsn": 5}}',
     b'{"op": "c", "after": {"id": 1}}',
     b'{"op": "c", "after": {"id": 1}, "source": {"connector": "mysql"}}',
     b'{"op": "c", "after": {"id": 1}, "source": {"connector": "postgresql", "lsn": -4}}'],
)  # fmt: skip
def test_malformed_records_are_invalid_events(value):
    """Undecodable JSON, an update without after, a missing or unusable position: InvalidEvent."""
    with pytest.raises(InvalidEvent):
        parse_change(value)


def test_document_ids_come_from_the_record_key():
    """With or without the schema wrapper, one key column is its value; several are joined by '|'."""
    assert record_doc_id(postgres("u", ROW, lsn=1)[0].decode()) == "7"
    assert record_doc_id(mysql("u", ROW, "mysql-bin.000001", 4)[0].decode()) == "7"
    assert record_doc_id(json.dumps({"tenant": "acme", "id": 3})) == "acme|3"
    with pytest.raises(InvalidEvent):
        record_doc_id(None)


# --------------------------------------------------------------------------- the source, per key


class FakeBus:
    """One partition of one topic and a group's committed offset: what the source sees of Kafka."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.committed = 0

    def produce(self, records: list[tuple[bytes, bytes | None]]) -> None:
        for key, value in records:
            self.records.append(Record(TOPIC, 0, len(self.records), key.decode(), value))

    def consumer(self, group: str, topics: list[str]) -> FakeConsumer:
        return FakeConsumer(self)


class FakeConsumer:
    def __init__(self, bus: FakeBus) -> None:
        self.bus = bus
        self.position = bus.committed

    def poll(self, max_records: int, timeout_s: float) -> list[Record]:
        batch = self.bus.records[self.position : self.position + max_records]
        self.position += len(batch)
        return batch

    def commit(self, records: list[Record]) -> None:
        self.bus.committed = max(self.bus.committed, *(r.offset + 1 for r in records))

    def lag(self) -> dict[tuple[str, int], int]:
        return {(TOPIC, 0): len(self.bus.records) - self.bus.committed}

    def close(self) -> None:
        pass


class ListRejects:
    def __init__(self) -> None:
        self.letters: list[tuple[Record, str]] = []

    def reject(self, record: Record, error: Exception) -> None:
        self.letters.append((record, str(error)))


class Crash(BaseException):
    """A kill -9 after publishing, before the checkpoint: nothing handles it."""


class Cdc:
    """A Debezium topic, the source's checkpoint file, and a model of the index: per document
    its version and text (None: deleted), an event older than the recorded one is stale."""

    def __init__(self, tmp_path: Path, **topics: Any) -> None:
        self.bus = FakeBus()
        self.checkpoint = tmp_path / "articles.sqlite"
        self.rejects = ListRejects()
        self.topics = topics
        self.index: dict[str, tuple[int, str | None]] = {}
        self.published: list[ChangeEvent] = []
        self.crash_after_publish = False
        self.last_source: DebeziumSource | None = None

    def source(self) -> DebeziumSource:
        config = DebeziumTopics((TOPIC,), "group", ROWS, **self.topics)
        polling = Polling(timeout_s=0.01, join_timeout_s=0.05)
        source = DebeziumSource(
            self.bus,
            config,
            checkpoint=self.checkpoint,
            name="articles",
            rejects=self.rejects,
            polling=polling,
        )
        self.last_source = source
        return source

    def run(self, *, reconcile: bool = False) -> PassReport:
        source = self.source()
        try:
            indexed = (
                (lambda: {d: v for d, (v, text) in self.index.items() if text is not None})
                if reconcile
                else None
            )
            return run_source_pass(source, self.deliver, slice_size=50, indexed=indexed).report
        finally:
            source.close()

    def deliver(self, events: Sequence[ChangeEvent]) -> set[str]:
        for event in events:
            self.published.append(event)
            current = self.index.get(event.doc_id)
            if current is None or event.version >= current[0]:
                self.index[event.doc_id] = (event.version, event.text if event.op == "upsert" else None)
        if self.crash_after_publish:
            raise Crash
        return set()

    def documents(self) -> dict[str, str]:
        return {doc_id: text for doc_id, (_v, text) in self.index.items() if text is not None}


TOPIC = "dbserver1.public.articles"
ROWS = RowFormat("{title}\n\n{body}", ("author",))


def article(id_: int, topic: str, author: str = "ann") -> dict[str, Any]:
    body = " ".join(
        f"Sentence {i} about {topic}, long enough to be TOASTed in a real table." for i in range(40)
    )
    return {"id": id_, "title": f"Article {id_}", "body": body, "author": author}


def text_of(row: dict[str, Any]) -> str:
    return ROWS.text(row)


@pytest.fixture
def cdc(tmp_path: Path) -> Cdc:
    return Cdc(tmp_path)


def test_an_update_that_leaves_a_toasted_column_out_keeps_the_indexed_text(cdc):
    """Default replica identity: an UPDATE of a row whose long body it did not touch carries
    the placeholder in body. The document did not change: nothing is emitted, the indexed
    text stays, and the pass counts it."""
    cdc.bus.produce([postgres("c", article(1, "pairing"), 100)])
    cdc.run()
    cdc.bus.produce([postgres("u", toasted(article(1, "pairing"), "body"), 200)])
    report = cdc.run()
    assert cdc.documents() == {"1": text_of(article(1, "pairing"))}
    assert not any(UNAVAILABLE in (e.text or "") for e in cdc.published)
    assert report.skipped == {"unavailable_value_kept": 1}
    assert cdc.rejects.letters == []


def test_a_placeholder_when_the_text_is_not_known_is_dead_lettered(cdc):
    """The placeholder in a row never indexed here, or beside a column that did change (the
    title, the author): the document's new text is not known. Nothing is emitted, the record
    goes to the dead letters telling the operator to set REPLICA IDENTITY FULL."""
    cdc.bus.produce([postgres("c", article(1, "pairing"), 100)])
    cdc.run()
    retitled = {**toasted(article(1, "pairing"), "body"), "title": "Pairing, revised"}
    reauthored = toasted(article(1, "pairing", author="bob"), "body")
    cdc.bus.produce([postgres("u", toasted(article(2, "sirens"), "body"), 150),
                     postgres("u", retitled, 200), postgres("u", reauthored, 210)])  # fmt: skip
    report = cdc.run()
    assert cdc.documents() == {"1": text_of(article(1, "pairing"))}
    assert [e.doc_id for e in cdc.published] == ["1"]  # only the first create
    assert report.skipped == {"unavailable_value": 3}
    assert len(cdc.rejects.letters) == 3
    for _record, message in cdc.rejects.letters:
        assert "ALTER TABLE public.articles REPLICA IDENTITY FULL" in message
        assert "'body'" in message


def test_the_placeholder_is_configurable(tmp_path):
    """Debezium's unavailable.value.placeholder may be set to another string: that one is the
    placeholder then (and the default string is plain text)."""
    cdc = Cdc(tmp_path, unavailable_value="<toasted>")
    updated = toasted(article(1, "pairing"), "body", placeholder="<toasted>")
    cdc.bus.produce([postgres("c", article(1, "pairing"), 100), postgres("u", updated, 200)])
    report = cdc.run()
    assert cdc.documents() == {"1": text_of(article(1, "pairing"))}
    assert report.skipped == {"unavailable_value_kept": 1}


def test_a_tombstone_alone_deletes_its_document(cdc):
    """A consumer lagging behind log compaction finds only the tombstone of a delete: the
    document is deleted, above every version indexed for it."""
    cdc.bus.produce([postgres("c", article(1, "pairing"), 100), postgres("c", article(2, "sirens"), 110)])
    cdc.run()
    deleted = postgres("d", {"id": 1}, 300)
    cdc.bus.produce(compacted([deleted, tombstone(deleted)]))
    cdc.run()
    assert cdc.documents() == {"2": text_of(article(2, "sirens"))}
    deletion = cdc.published[-1]
    assert (deletion.doc_id, deletion.op) == ("1", "delete")
    assert deletion.version > 100


def test_a_delete_and_its_tombstone_delete_once(cdc):
    """The delete carries the change; the tombstone after it emits nothing more."""
    deleted = postgres("d", {"id": 1}, 300)
    cdc.bus.produce([postgres("c", article(1, "pairing"), 100), deleted, tombstone(deleted)])
    cdc.run()
    assert [(e.op, e.version) for e in cdc.published] == [("upsert", 100), ("delete", 300)]
    assert cdc.documents() == {}


def test_a_tombstone_after_a_crash_deletes_what_was_published(cdc):
    """A create published, then a crash before the checkpoint; compaction leaves only the
    tombstone: the reserved version says the document may be indexed, so it is deleted."""
    created = postgres("c", article(1, "pairing"), 100)
    cdc.bus.produce([created])
    cdc.crash_after_publish = True
    with pytest.raises(Crash):
        cdc.run()
    cdc.crash_after_publish = False
    cdc.bus.records.clear()  # compacted away: the topic keeps only the tombstone
    cdc.bus.committed = 0
    cdc.bus.produce([tombstone(created)])
    cdc.run()
    assert cdc.documents() == {}
    assert cdc.published[-1].op == "delete"
    assert cdc.published[-1].version > 100


def test_a_tombstone_of_a_row_this_source_never_saw_is_deleted_by_reconciliation(cdc):
    """No state for the key (the checkpoint is new): the tombstone cannot be numbered, but the
    index knows the document's version; reconciling numbers the deletion above it."""
    cdc.index["1"] = (24_000_000, "indexed before the checkpoint existed")
    cdc.bus.produce([tombstone(postgres("c", article(1, "pairing"), 100))])
    cdc.run(reconcile=True)
    assert cdc.documents() == {}
    assert cdc.published[-1].version > 24_000_000


def test_a_delete_of_a_row_unknown_to_the_checkpoint_is_still_emitted(cdc):
    """A delete record for a row the checkpoint does not know (indexed before it existed) is
    published at its position: the index may hold the row."""
    cdc.index["1"] = (100, "indexed before the checkpoint existed")
    cdc.bus.produce([postgres("d", {"id": 1}, 300)])
    cdc.run()
    assert cdc.documents() == {}


RESETS = {
    "mysql RESET MASTER": (mysql("c", article(1, "locks"), "mysql-bin.000003", 805),
                           [mysql("u", article(1, "smart locks"), "mysql-bin.000001", 154),
                            mysql("u", article(1, "smarter locks"), "mysql-bin.000001", 484),
                            mysql("c", article(2, "sirens"), "mysql-bin.000001", 805)]),
    "mysql failover": (mysql("c", article(1, "locks"), "mysql-bin.000042", 805),
                       [mysql("u", article(1, "smart locks"), "replica-bin.000002", 154, server_id=2),
                        mysql("u", article(1, "smarter locks"), "replica-bin.000002", 484, server_id=2),
                        mysql("c", article(2, "sirens"), "replica-bin.000002", 805, server_id=2)]),
    "postgres restore": (postgres("c", article(1, "locks"), 24_023_128),
                         [postgres("u", article(1, "smart locks"), 1_000),
                          postgres("u", article(1, "smarter locks"), 2_000),
                          postgres("c", article(2, "sirens"), 3_000)]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(RESETS))
def test_log_positions_that_restart_lower_never_make_changes_stale(cdc, caplog, case):
    """After a restore, RESET MASTER or a failover the log positions restart lower: later
    changes still apply, in topic order, numbered above what the key had; a warning says so."""
    before, after = RESETS[case]
    cdc.bus.produce([before])
    cdc.run()
    cdc.bus.produce(after)
    with caplog.at_level(logging.WARNING, logger="connectors.debezium"):
        cdc.run()
    assert cdc.documents() == {"1": text_of(article(1, "smarter locks")), "2": text_of(article(2, "sirens"))}
    versions = [e.version for e in cdc.published if e.doc_id == "1"]
    assert versions == sorted(set(versions))
    assert any("backwards" in r.getMessage() for r in caplog.records)
    assert cdc.last_source is not None
    assert cdc.last_source.positions_backwards == 1  # one key went backwards, once


def test_a_key_that_is_not_the_primary_key_is_a_config_error(tmp_path):
    """Deletes and tombstones carry only the primary key: a --key naming another column would
    index rows under one id and delete under another. The first record says so."""
    cdc = Cdc(tmp_path, key="title")
    cdc.bus.produce([postgres("c", article(1, "pairing"), 100)])
    with pytest.raises(ConfigError, match=r"--key 'title'.*primary key.*\bid\b"):
        cdc.run()
    assert cdc.published == []


def test_a_key_that_is_the_primary_key_is_accepted(tmp_path):
    """--key id on a table keyed by id: upserts and deletes agree on the document id."""
    cdc = Cdc(tmp_path, key="id")
    deleted = postgres("d", {"id": 1}, 300)
    cdc.bus.produce([postgres("c", article(1, "pairing"), 100), postgres("c", article(2, "sirens"), 200),
                     deleted, tombstone(deleted)])  # fmt: skip
    cdc.run()
    assert cdc.documents() == {"2": text_of(article(2, "sirens"))}
