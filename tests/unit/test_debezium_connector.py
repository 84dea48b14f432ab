"""Unit tests for reading Debezium records: envelopes, versions from log positions, document ids."""

from __future__ import annotations

import json

import pytest

from connectors.debezium import change_version, parse_change, record_doc_id
from pipeline.core.errors import InvalidEvent
from tests.debezium_payloads import mysql, postgres

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
