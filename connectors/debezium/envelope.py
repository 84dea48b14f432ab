"""Debezium's records unwrapped: the change envelope, its log position as a version, the
record key as a document id, and the unavailable-value placeholder."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.core.errors import InvalidEvent

#: Debezium's default ``unavailable.value.placeholder``.
UNAVAILABLE_VALUE = "__debezium_unavailable_value"
_OPS = {"c": "upsert", "u": "upsert", "r": "upsert", "d": "delete"}
_BINLOG_NUMBER = re.compile(r"\.(\d+)$")
_MAX_VERSION = 2**63


class UnavailableValue(InvalidEvent, reason="unavailable_value"):
    """An update without the value of a column the document is made of (a TOASTed column
    and the default replica identity), for a document whose text is not known here."""


@dataclass(frozen=True)
class RowChange:
    """One Debezium change event, unwrapped."""

    op: str  # upsert | delete
    row: Mapping[str, Any]  # ``after`` for an upsert, ``before`` (maybe only the key) for a delete
    version: int  # the log position (see :func:`change_version`)
    table: str = ""  # schema.table (PostgreSQL) or db.table (MySQL), for messages
    connector: str = ""


def parse_change(value: bytes) -> RowChange | None:
    """The change a Debezium record value holds; None for records that are not row changes
    (heartbeats, transaction markers, truncates); :class:`InvalidEvent` for anything malformed."""
    try:
        envelope = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidEvent(f"not a JSON Debezium record: {exc}") from None
    if isinstance(envelope, dict) and "schema" in envelope and "payload" in envelope:
        envelope = envelope["payload"]  # the JSON converter with schemas.enable=true
    if not isinstance(envelope, dict) or "op" not in envelope:
        return None
    op = _OPS.get(str(envelope["op"]))
    if op is None:
        return None
    row = envelope.get("after" if op == "upsert" else "before")
    if op == "upsert" and not isinstance(row, dict):
        raise InvalidEvent(f"op {envelope['op']!r} without an 'after' row")
    source = envelope.get("source")
    if not isinstance(source, dict):
        raise InvalidEvent("no 'source' block: the change cannot be ordered")
    table = ".".join(str(p) for p in (source.get("schema") or source.get("db"), source.get("table")) if p)
    return RowChange(
        op,
        row if isinstance(row, dict) else {},
        change_version(source),
        table,
        str(source.get("connector") or ""),
    )


def change_version(source: Mapping[str, Any]) -> int:
    """The change's place in the database's log, as an integer that orders one row's changes.

    * PostgreSQL: ``lsn``.
    * MySQL: ``file`` (binlog number) << 40 | ``pos`` << 8 | ``row`` (the row within a
      multi-row binlog event); snapshot reads carry the position the snapshot started at.
    * anything else: ``ts_ms``.

    A restored database, ``RESET MASTER`` or a failover starts lower again: the source numbers
    each key's versions above its last one (:class:`DebeziumSource`).
    """
    try:
        if source.get("connector") == "postgresql" and source.get("lsn") is not None:
            version = int(source["lsn"])
        elif source.get("connector") == "mysql" and source.get("file"):
            version = _binlog_version(str(source["file"]), int(source["pos"]), int(source.get("row") or 0))
        else:
            version = int(source["ts_ms"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidEvent(f"source block has no usable position ({exc!r}): {dict(source)}") from None
    if not 0 <= version < _MAX_VERSION:
        raise InvalidEvent(f"source position {version} is out of range")
    return version


def _binlog_version(file: str, pos: int, row: int) -> int:
    match = _BINLOG_NUMBER.search(file)
    if match is None or not 0 <= pos < 2**32:
        raise ValueError(f"binlog position {file}:{pos}")
    return (int(match.group(1)) << 40) | (pos << 8) | min(max(row, 0), 255)


def record_key_fields(key: str | None) -> dict[str, Any] | None:
    """The record key's fields (the primary key's columns), with or without the schema
    wrapper; None for a key that is not a JSON object (a plain string key)."""
    if key is None:
        return None
    try:
        parsed = json.loads(key)
    except json.JSONDecodeError:
        return None
    if isinstance(parsed, dict) and "schema" in parsed and "payload" in parsed:
        parsed = parsed["payload"]
    return parsed if isinstance(parsed, dict) and parsed else None


def record_doc_id(key: str | None) -> str:
    """A document id from a Debezium record key: the primary key's value (several
    columns joined by ``|``), with or without the schema wrapper."""
    if key is None:
        raise InvalidEvent("a Debezium record without a key: set --key to the id column")
    fields = record_key_fields(key)
    if fields is not None:
        return "|".join(str(v) for v in fields.values())
    try:
        parsed = json.loads(key)
    except json.JSONDecodeError:
        return key  # a plain string key
    return str(parsed)
