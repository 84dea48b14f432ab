"""Debezium connector: a database's change topics on Kafka as change events.

Debezium writes one record per row change: a JSON envelope, with or without the Kafka
Connect ``schema`` wrapper (``value.converter.schemas.enable``), holding ``op`` (``c``
create, ``u`` update, ``r`` snapshot read, ``d`` delete), the row ``before`` and
``after``, and a ``source`` block saying where in the database's log it happened; a
delete is followed by a tombstone (a null value) for log compaction. Rows become
documents with the same text template and metadata columns as the SQL connector
(:mod:`connectors.kit.rows`), so a table gives the same documents either way.

**Versions are the database log's own order**, not this connector's clock: PostgreSQL's
``source.lsn``; MySQL's binlog position (``file`` number, ``pos``, ``row``: see
:func:`change_version`); other connectors ``source.ts_ms`` (milliseconds, so two changes
of one row within a millisecond are ordered by their place in the topic only). A
late snapshot read of a row (``op=r`` with an older LSN) arriving after that row's delete
is therefore older than the delete's tombstone in the index and changes nothing.

**The checkpoint is the consumer group's offsets**, committed only after the changes were
delivered (indexed, or published to ``<prefix>.changes``); a crash before re-reads them.
A pass polls until the topics are drained, then ends. Changes must reach the runner in
topic order: run it with deletions left in place (``allow_mass_delete=True``), since an
offset commit covers every earlier record of its partition.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from connectors.kit.rejects import Rejects
from connectors.kit.rows import RowFormat
from pipeline.bus import Bus, Consumer, Record
from pipeline.core.errors import InvalidEvent
from pipeline.core.events import ChangeEvent
from pipeline.sources import Change, PassReport

__all__ = ["DebeziumSource", "DebeziumTopics", "Polling", "RowChange", "change_version", "parse_change"]

log = logging.getLogger(__name__)

_OPS = {"c": "upsert", "u": "upsert", "r": "upsert", "d": "delete"}
_BINLOG_NUMBER = re.compile(r"\.(\d+)$")
_MAX_VERSION = 2**63
#: End of a pass: committed (after every change before it) means the pass was delivered whole.
_END_OF_PASS = object()


@dataclass(frozen=True)
class DebeziumTopics:
    """What to consume and how rows become documents. ``key``: the column naming a
    document (default: the record key's fields, i.e. the table's primary key)."""

    topics: tuple[str, ...]
    group: str
    rows: RowFormat
    key: str | None = None


@dataclass(frozen=True)
class Polling:
    """How a pass reads: records per poll, how long an empty poll waits (then the pass
    ends), and how long a new group member may take to be assigned its partitions."""

    max_records: int = 500
    timeout_s: float = 1.0
    join_timeout_s: float = 30.0


@dataclass(frozen=True)
class RowChange:
    """One Debezium change event, unwrapped."""

    op: str  # upsert | delete
    row: Mapping[str, Any]  # ``after`` for an upsert, ``before`` (maybe only the key) for a delete
    version: int


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
    return RowChange(op, row if isinstance(row, dict) else {}, change_version(source))


def change_version(source: Mapping[str, Any]) -> int:
    """The change's place in the database's log, as an integer that orders one row's changes.

    * PostgreSQL: ``lsn``.
    * MySQL: ``file`` (binlog number) << 40 | ``pos`` << 8 | ``row`` (the row within a
      multi-row binlog event); snapshot reads carry the position the snapshot started at.
    * anything else: ``ts_ms``.
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


def record_doc_id(key: str | None) -> str:
    """A document id from a Debezium record key: the primary key's value (several
    columns joined by ``|``), with or without the schema wrapper."""
    if key is None:
        raise InvalidEvent("a Debezium record without a key: set --key to the id column")
    try:
        parsed = json.loads(key)
    except json.JSONDecodeError:
        return key  # a plain string key
    if isinstance(parsed, dict) and "schema" in parsed and "payload" in parsed:
        parsed = parsed["payload"]
    if isinstance(parsed, dict) and parsed:
        return "|".join(str(v) for v in parsed.values())
    return str(parsed)


class DebeziumSource:
    """Debezium topics as a :class:`pipeline.sources.Source`; offsets are its checkpoint."""

    def __init__(
        self,
        bus: Bus,
        config: DebeziumTopics,
        *,
        name: str,
        rejects: Rejects | None = None,
        max_bytes: int = 2_000_000,
        polling: Polling = Polling(),  # frozen: one shared default is safe
    ) -> None:
        self.config = config
        self.max_bytes = max_bytes
        self.polling = polling
        self._bus = bus
        self._name = name
        self._rejects = rejects
        self._consumer: Consumer | None = None
        self._undelivered = False  # a pass yielded changes it never saw committed to its end

    @property
    def name(self) -> str:
        return self._name

    @property
    def identity(self) -> str:
        return f"debezium:{','.join(self.config.topics)} group {self.config.group}"

    def changes(self, report: PassReport) -> Iterator[Change]:
        """Everything the topics hold past the committed offsets, in topic order."""
        consumer = self._consumer_for_pass()
        self._undelivered = True
        yielded = False
        deadline = time.monotonic() + self.polling.join_timeout_s
        while True:
            records = consumer.poll(self.polling.max_records, self.polling.timeout_s)
            if not records and (yielded or self._drained(consumer) or time.monotonic() > deadline):
                break
            for record in records:
                yielded = True
                yield self._change(record, report)
        yield Change(None, "", _END_OF_PASS)

    def reserve(self, changes: Sequence[Change]) -> None:
        """Nothing to note: versions are the database's own log positions, the same on
        every re-read, and the broker's committed offsets are the checkpoint."""

    def commit(self, changes: Sequence[Change]) -> None:
        records = [c.state for c in changes if isinstance(c.state, Record)]
        if records and self._consumer is not None:
            self._consumer.commit(records)
        if any(c.state is _END_OF_PASS for c in changes):
            self._undelivered = False

    def orphans(self, indexed: Mapping[str, int]) -> list[Change]:  # noqa: ARG002 -- port signature
        """A change stream is not a listing of the table: it cannot tell what is gone."""
        return []

    def estimate(self) -> int | None:
        return None

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def _consumer_for_pass(self) -> Consumer:
        """The group member, joined afresh when the last pass was not delivered to its end:
        its position is past records never committed, and only a new member re-reads them."""
        if self._consumer is not None and self._undelivered:
            self.close()
        if self._consumer is None:
            self._consumer = self._bus.consumer(self.config.group, list(self.config.topics))
        return self._consumer

    @staticmethod
    def _drained(consumer: Consumer) -> bool:
        """Nothing yielded yet and nothing left to read; an unassigned member is still joining."""
        lag = consumer.lag()
        return bool(lag) and not any(lag.values())

    # -- one record

    def _change(self, record: Record, report: PassReport) -> Change:
        if record.value is None:  # the tombstone after a delete: the delete carried the change
            return Change(None, "", record)
        try:
            change = parse_change(record.value)
            if change is None:
                report.skip("not_a_row_change", f"{record.topic}@{record.offset}")
                return Change(None, "", record)
            doc_id = self._doc_id(change, record)
        except InvalidEvent as exc:
            report.skip("invalid_record", f"{record.topic}[{record.partition}]@{record.offset}", str(exc))
            if self._rejects is not None:
                self._rejects.reject(record, exc)
            return Change(None, "", record)
        return Change(self._event(doc_id, change, report), doc_id, record)

    def _doc_id(self, change: RowChange, record: Record) -> str:
        key = self.config.key
        if key is not None and change.row.get(key) is not None:
            return str(change.row[key])
        return record_doc_id(record.key)

    def _event(self, doc_id: str, change: RowChange, report: PassReport) -> ChangeEvent:
        document = None
        if change.op != "delete":
            document = self.config.rows.document(change.row, self.max_bytes, report, f"row {doc_id}")
        if document is None:  # deleted, or unindexable now: it loses its points
            return ChangeEvent(source=self._name, doc_id=doc_id, op="delete", version=change.version)
        text, metadata = document
        return ChangeEvent(
            source=self._name, doc_id=doc_id, op="upsert", text=text, metadata=metadata,
            version=change.version,
        )  # fmt: skip
