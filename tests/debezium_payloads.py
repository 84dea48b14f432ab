"""Debezium change records in the shapes Debezium's documentation shows, for the connector's tests.

PostgreSQL records come as the JSON converter writes them with ``schemas.enable=true``
(``{"schema": …, "payload": …}`` for key and value); MySQL records as it writes them with
``schemas.enable=false`` (the bare payload). The table is ``articles (id int primary key,
title text, body text, author text)``; deletes carry only the key in ``before`` (the
default replica identity) and are followed by a tombstone (null value).

What Debezium really writes besides the happy path:

* :func:`toasted`: with PostgreSQL's default ``REPLICA IDENTITY``, an UPDATE that does not
  touch a TOASTed column (a long ``body``) carries Debezium's ``unavailable.value.placeholder``
  (``__debezium_unavailable_value``) in that column of ``after``; ``before`` is null.
* :func:`compacted`: what a consumer that lags behind log compaction finds of a sequence of
  records: the last record of each key; of a delete, only its tombstone.
* log positions that restart lower: a PostgreSQL database restored from a dump into a new
  cluster (a lower ``lsn``), a MySQL ``RESET MASTER`` (binlog ``mysql-bin.000001`` again) or a
  failover to a replica (another ``server_id``, its own binlog files): pass the lower position
  to :func:`postgres` or :func:`mysql`.
"""

from __future__ import annotations

import json
from typing import Any

Row = dict[str, Any]
Record = tuple[bytes, bytes | None]  # (key, value)

#: Debezium's default ``unavailable.value.placeholder``.
UNAVAILABLE = "__debezium_unavailable_value"

_ROW_FIELDS = [
    {"type": "int32", "optional": False, "field": "id"},
    {"type": "string", "optional": True, "field": "title"},
    {"type": "string", "optional": True, "field": "body"},
    {"type": "string", "optional": True, "field": "author"},
]
_PG_SOURCE_FIELDS = [
    {"type": "string", "optional": False, "field": name}
    for name in ("version", "connector", "name", "db", "schema", "table")
] + [
    {"type": "int64", "optional": False, "field": "ts_ms"},
    {"type": "string", "optional": True, "name": "io.debezium.data.Enum", "version": 1, "field": "snapshot"},
    {"type": "string", "optional": True, "field": "sequence"},
    {"type": "int64", "optional": True, "field": "txId"},
    {"type": "int64", "optional": True, "field": "lsn"},
    {"type": "int64", "optional": True, "field": "xmin"},
]
_PG_ROW = "PostgreSQL_server.public.articles.Value"


def _struct(field: str, name: str, fields: list[dict[str, Any]], optional: bool) -> dict[str, Any]:
    return {"type": "struct", "fields": fields, "optional": optional, "name": name, "field": field}


_PG_VALUE_SCHEMA = {
    "type": "struct",
    "fields": [
        _struct("before", _PG_ROW, _ROW_FIELDS, optional=True),
        _struct("after", _PG_ROW, _ROW_FIELDS, optional=True),
        _struct("source", "io.debezium.connector.postgresql.Source", _PG_SOURCE_FIELDS, optional=False),
        {"type": "string", "optional": False, "field": "op"},
        {"type": "int64", "optional": True, "field": "ts_ms"},
    ],
    "optional": False,
    "name": "PostgreSQL_server.public.articles.Envelope",
    "version": 2,
}
_PG_KEY_SCHEMA = {
    "type": "struct",
    "fields": [{"type": "int32", "optional": False, "field": "id"}],
    "optional": False,
    "name": "PostgreSQL_server.public.articles.Key",
}


def _dump(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def postgres(
    op: str, row: Row, lsn: int, *, ts_ms: int = 1_559_033_904_863, snapshot: str = "false"
) -> Record:
    """A PostgreSQL change: ``row`` is ``after`` (c, u, r) or, for d, ``before`` (its key only)."""
    before = {"id": row["id"], "title": None, "body": None, "author": None} if op == "d" else None
    payload = {
        "before": before,
        "after": None if op == "d" else row,
        "source": {
            "version": "2.7.3.Final", "connector": "postgresql", "name": "PostgreSQL_server",
            "ts_ms": ts_ms, "snapshot": snapshot, "db": "postgres",
            "sequence": f'["{lsn - 8}","{lsn}"]',
            "schema": "public", "table": "articles", "txId": 556, "lsn": lsn, "xmin": None,
        },
        "op": op,
        "ts_ms": ts_ms + 400,
    }  # fmt: skip
    key = _dump({"schema": _PG_KEY_SCHEMA, "payload": {"id": row["id"]}})
    return key, _dump({"schema": _PG_VALUE_SCHEMA, "payload": payload})


def mysql(
    op: str, row: Row, file: str, pos: int, *, row_in_event: int = 0, snapshot: bool = False,
    server_id: int = 223344,
) -> Record:  # fmt: skip
    """A MySQL change without the schema wrapper; ``row`` as for :func:`postgres`."""
    payload = {
        "before": {"id": row["id"]} if op == "d" else None,
        "after": None if op == "d" else row,
        "source": {
            "version": "2.7.3.Final", "connector": "mysql", "name": "mysql-server-1",
            "ts_ms": 1_465_581_029_100, "snapshot": str(snapshot).lower(), "db": "inventory",
            "sequence": None, "table": "articles", "server_id": server_id, "gtid": None,
            "file": file, "pos": pos, "row": row_in_event, "thread": 7, "query": None,
        },
        "op": op,
        "ts_ms": 1_465_581_029_523,
    }  # fmt: skip
    return _dump({"id": row["id"]}), _dump(payload)


def tombstone(record: Record) -> Record:
    """The null-valued record Debezium writes after a delete, for log compaction."""
    return record[0], None


def toasted(row: Row, *columns: str, placeholder: str = UNAVAILABLE) -> Row:
    """``row`` as an UPDATE's ``after`` that left these (TOASTed) columns untouched, with the
    default replica identity: Debezium writes its placeholder instead of their values."""
    return {**row, **dict.fromkeys(columns, placeholder)}


def compacted(records: list[Record]) -> list[Record]:
    """What log compaction leaves of ``records`` (one partition, in order): each key's last
    record, where it was; a deleted row leaves only its tombstone."""
    last = {key: i for i, (key, _value) in enumerate(records)}
    return [record for i, record in enumerate(records) if last[record[0]] == i]
