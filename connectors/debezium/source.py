"""The Debezium topics as a :class:`pipeline.sources.Source`: per-key versions, tombstones,
the placeholder rule and the checkpoints (see the package docstring)."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connectors.debezium.envelope import (
    UNAVAILABLE_VALUE,
    RowChange,
    UnavailableValue,
    parse_change,
    record_doc_id,
    record_key_fields,
)
from connectors.kit.keystates import Checkpointed, Documents, KeyState, KeyStates
from connectors.kit.rejects import Rejects
from connectors.kit.rows import RowFormat, json_value
from pipeline.bus import Bus, Consumer, Record
from pipeline.core.errors import ConfigError, InvalidEvent
from pipeline.sources import Change, PassReport

log = logging.getLogger("connectors.debezium")  # the package's logger, as before the split

#: The checkpoint's per-key entry (a named position): the key's last log position and the
#: digests of the columns its document was made of.
_ROW_ENTRY = "row:"
#: End of a pass: committed (after every change before it) means the pass was delivered whole.
_END_OF_PASS = object()


@dataclass(frozen=True)
class DebeziumTopics:
    """What to consume and how rows become documents. ``key``: the id column, which must be
    the table's primary key (default: the record key's fields, i.e. the primary key).
    ``unavailable_value``: the connector's ``unavailable.value.placeholder``."""

    topics: tuple[str, ...]
    group: str
    rows: RowFormat
    key: str | None = None
    unavailable_value: str = UNAVAILABLE_VALUE

    def __post_init__(self) -> None:
        if not self.unavailable_value:
            raise ConfigError("the unavailable-value placeholder must not be empty")


@dataclass(frozen=True)
class Polling:
    """How a pass reads: records per poll, how long an empty poll waits (then the pass
    ends), and how long a new group member may take to be assigned its partitions."""

    max_records: int = 500
    timeout_s: float = 1.0
    join_timeout_s: float = 30.0


@dataclass(frozen=True)
class _KeyEntry:
    """What the checkpoint keeps per key besides its :class:`KeyState`: the last log
    position, and the digests of the columns the document was last made of."""

    position: int | None
    cells: Mapping[str, str] = field(default_factory=dict)

    def encoded(self) -> str:
        return json.dumps({"position": self.position, "cells": dict(self.cells)}, sort_keys=True)

    @classmethod
    def decoded(cls, text: str | None) -> _KeyEntry | None:
        if text is None:
            return None
        raw = json.loads(text)
        return cls(raw.get("position"), raw.get("cells") or {})


@dataclass(frozen=True)
class _Read:
    """A :class:`Change`'s state here: the record read (its offset moves once delivered)
    and what the key's checkpoint records then."""

    record: Record | None
    checkpoint: Checkpointed | None = None


def _digest(value: object) -> str:
    encoded = json.dumps(json_value(value), sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(encoded).hexdigest()[:24]


class DebeziumSource:
    """Debezium topics as a :class:`pipeline.sources.Source`: the group's offsets and a
    per-key checkpoint (``checkpoint``, a SQLite file) are its checkpoint."""

    #: Its changes are published in the order read (an offset commit covers every earlier
    #: record of its partition), so the runner never holds its deletions back.
    in_order = True

    def __init__(
        self,
        bus: Bus,
        config: DebeziumTopics,
        checkpoint: Path,
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
        self._states = KeyStates(checkpoint)
        self._docs = Documents(name, self._states)
        self._entries: dict[str, _KeyEntry] = {}  # this pass's, not yet committed
        self._unknown_tombstones: set[str] = set()  # keys never seen here, for orphans()
        placeholder = config.unavailable_value
        # bytea columns carry it base64-encoded (binary.handling.mode=bytes), arrays as an element
        self._placeholders = {placeholder, base64.b64encode(placeholder.encode("utf-8")).decode("ascii")}
        #: Changes whose log position was below their key's last one (restore, reset, failover).
        self.positions_backwards = 0
        self._backwards_in_pass = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def identity(self) -> str:
        return f"debezium:{','.join(self.config.topics)} group {self.config.group}"

    def changes(self, report: PassReport) -> Iterator[Change]:
        """Everything the topics hold past the committed offsets, in topic order."""
        consumer = self._consumer_for_pass()
        self._docs.begin_pass()
        self._entries.clear()
        self._unknown_tombstones.clear()
        self._backwards_in_pass = 0
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
        if self._backwards_in_pass > 1:
            log.warning(
                "source %s: the log position of %d rows went backwards in this pass (a restored, "
                "reset or failed-over database); their changes were applied in topic order",
                self._name, self._backwards_in_pass,
            )  # fmt: skip
        yield Change(None, "", _END_OF_PASS)

    def reserve(self, changes: Sequence[Change]) -> None:
        """Note the versions about to be published in the per-key checkpoint, durably: until
        they are committed, each key's next version is numbered above them."""
        self._docs.reserve(changes)

    def commit(self, changes: Sequence[Change]) -> None:
        """The offsets first, then the per-key states: a crash in between re-reads nothing,
        and the reserved versions keep the next ones above what was published."""
        reads = [c for c in changes if isinstance(c.state, _Read)]
        records = [r.state.record for r in reads if isinstance(r.state, _Read) and r.state.record is not None]
        if records and self._consumer is not None:
            self._consumer.commit(records)
        self._docs.commit(
            Change(c.event, c.doc_id, c.state.checkpoint)
            for c in reads
            if isinstance(c.state, _Read) and c.state.checkpoint is not None
        )
        if any(c.state is _END_OF_PASS for c in changes):
            self._undelivered = False

    def orphans(self, indexed: Mapping[str, int]) -> list[Change]:
        """A change stream is not a listing of the table; but a tombstone of a key this
        source never saw (a checkpoint newer than the index) deletes what the index holds,
        numbered above the index's version."""
        gone = sorted(d for d in self._unknown_tombstones if d in indexed)
        self._unknown_tombstones.clear()
        return [self._wrap(self._docs.delete(d, indexed[d] + 1, force=True), None) for d in gone]

    def estimate(self) -> int | None:
        return None

    def close(self) -> None:
        self._close_consumer()
        self._states.close()

    def _close_consumer(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def _consumer_for_pass(self) -> Consumer:
        """The group member, joined afresh when the last pass was not delivered to its end:
        its position is past records never committed, and only a new member re-reads them."""
        if self._consumer is not None and self._undelivered:
            self._close_consumer()
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
        where = f"{record.topic}[{record.partition}]@{record.offset}"
        try:
            if record.value is None:
                return self._tombstone(self._doc_id(None, record), record)
            change = parse_change(record.value)
            if change is None:
                report.skip("not_a_row_change", where)
                return Change(None, "", _Read(record))
            doc_id = self._doc_id(change, record)
        except InvalidEvent as exc:
            report.skip("invalid_record", where, str(exc))
            if self._rejects is not None and record.value is not None:
                self._rejects.reject(record, exc)
            return Change(None, "", _Read(record))
        self._unknown_tombstones.discard(doc_id)
        if change.op == "delete":
            return self._delete(doc_id, change.version, record)
        return self._upsert(doc_id, change, record, report)

    def _doc_id(self, change: RowChange | None, record: Record) -> str:
        """The record key names the row (deletes and tombstones have nothing else); ``--key``
        must be that key, else deletes would miss: a :class:`ConfigError`, not a silent ghost."""
        key, fields = self.config.key, record_key_fields(record.key)
        if key is not None and fields is not None and list(fields) != [key]:
            columns = ", ".join(fields)
            msg = (
                f"--key {key!r} is not the primary key of {self._table(change, record)}: its change "
                f"records are keyed by {columns}, and deletes and tombstones carry only that key, "
                f"so deleted rows would stay indexed. Pass --key {columns} (a single-column primary "
                f"key) or leave --key out: the record key is then the document id"
            )
            raise ConfigError(msg)
        if fields is None and key is not None and change is not None and change.row.get(key) is not None:
            return str(change.row[key])  # a record key that is not an object: the column names the row
        return record_doc_id(record.key)

    @staticmethod
    def _table(change: RowChange | None, record: Record) -> str:
        return change.table if change is not None and change.table else f"topic {record.topic}"

    def _tombstone(self, doc_id: str, record: Record) -> Change:
        """A delete of the key's document (what a compacted topic may keep of a delete), or
        nothing when the delete before it was already emitted."""
        last = self._docs.last(doc_id)
        if last is None and not self._docs.unsettled(doc_id, last):
            # Never seen here: nothing to number it above; reconciliation asks the index.
            self._unknown_tombstones.add(doc_id)
            return Change(None, doc_id, _Read(record))
        return self._wrap(self._docs.delete(doc_id, 0), record)  # numbered above the key's last version

    def _delete(self, doc_id: str, position: int, record: Record) -> Change:
        entry = self._entry(doc_id, position, None)
        # Unknown here is not "not indexed" (a checkpoint newer than the index): delete anyway.
        change = self._docs.delete(doc_id, position, entry, force=self._docs.last(doc_id) is None)
        return self._wrap(change, record)

    def _upsert(self, doc_id: str, change: RowChange, record: Record, report: PassReport) -> Change:
        rows, row = self.config.rows, change.row
        unavailable = [c for c in rows.columns() if c in row and self._is_placeholder(row[c])]
        if unavailable and not self._soft_deleted(row, unavailable):
            return self._unavailable(doc_id, change, record, report, unavailable)
        document = rows.document(row, self.max_bytes, report, f"row {doc_id}")
        if document is None:  # soft-deleted, or unindexable now: it loses its points
            return self._delete(doc_id, change.version, record)
        cells = {c: _digest(row[c]) for c in rows.columns() if c in row}
        text, metadata = document
        entry = self._entry(doc_id, change.version, cells)
        result = self._docs.upsert(doc_id, text, metadata, change.version, entry)
        if result.event is None:
            report.unchanged += 1
        return self._wrap(result, record)

    def _unavailable(
        self, doc_id: str, change: RowChange, record: Record, report: PassReport, columns: list[str]
    ) -> Change:
        """The update did not carry these columns (unchanged TOASTed values). Unchanged
        document: keep what is indexed. Unknown text: dead-letter, saying how to fix it."""
        last, entry = self._docs.last(doc_id), self._entry_of(doc_id)
        named = ", ".join(map(repr, columns))
        if self._unchanged_apart_from(doc_id, change.row, columns, last, entry):
            assert entry is not None
            detail = f"{named} not carried by the update, unchanged"
            report.skip("unavailable_value_kept", f"row {doc_id}", detail)
            kept = Checkpointed(None, self._entry(doc_id, change.version, entry.cells))
            return Change(None, doc_id, _Read(record, kept))
        table = change.table or "<table>"
        fix = (
            f"ALTER TABLE {table} REPLICA IDENTITY FULL"
            if change.connector in ("postgresql", "")
            else "make the database log every column of an updated row"
        )
        message = (
            f"row {doc_id} of {table}: column {named} holds Debezium's unavailable-value placeholder "
            f"({self.config.unavailable_value!r}): the update did not carry its value (a TOASTed column "
            f"and the default replica identity) and the document's new text is not known here. Run "
            f"{fix} so updates carry every column, then re-read the row (an incremental snapshot); "
            f"until then the index keeps its last text"
        )
        report.skip("unavailable_value", f"row {doc_id}", message)
        if self._rejects is not None:
            self._rejects.reject(record, UnavailableValue(message))
        else:
            log.warning("%s", message)
        return Change(None, doc_id, _Read(record))

    def _unchanged_apart_from(
        self,
        doc_id: str,
        row: Mapping[str, Any],
        columns: list[str],
        last: KeyState | None,
        entry: _KeyEntry | None,
    ) -> bool:
        """The document is indexed live, settled, and every column it is made of equals what
        it was last made of, the left-out ``columns`` aside (unchanged by definition)."""
        if last is None or last.deleted or self._docs.unsettled(doc_id, last) or entry is None:
            return False
        return all(
            c in entry.cells and (c in columns or (c in row and entry.cells[c] == _digest(row[c])))
            for c in self.config.rows.columns()
        )

    def _soft_deleted(self, row: Mapping[str, Any], unavailable: list[str]) -> bool:
        """The row is soft-deleted, whatever columns the update left out: no text needed."""
        column = self.config.rows.deleted_column
        return (
            column is not None
            and column in row
            and column not in unavailable
            and self.config.rows.is_deleted(row)
        )

    def _is_placeholder(self, value: object) -> bool:
        if isinstance(value, str):
            return value in self._placeholders
        return isinstance(value, list) and any(isinstance(v, str) and v in self._placeholders for v in value)

    # -- the per-key checkpoint

    def _entry_of(self, doc_id: str) -> _KeyEntry | None:
        entry = self._entries.get(doc_id)
        return entry if entry is not None else _KeyEntry.decoded(self._states.position(_ROW_ENTRY + doc_id))

    def _entry(self, doc_id: str, position: int, cells: Mapping[str, str] | None) -> dict[str, str]:
        """The key's new entry (as a position to record with its change); a position below
        the key's last one is logged and counted, never stale."""
        previous = self._entry_of(doc_id)
        if previous is not None and previous.position is not None and position < previous.position:
            self.positions_backwards += 1
            self._backwards_in_pass += 1
            level = logging.WARNING if self._backwards_in_pass == 1 else logging.DEBUG
            log.log(
                level,
                "source %s: row %s's log position went backwards (%d after %d): a restored, reset "
                "(RESET MASTER) or failed-over database; the change is applied in topic order, "
                "numbered above the row's last version",
                self._name, doc_id, position, previous.position,
            )  # fmt: skip
        kept = cells if cells is not None else (previous.cells if previous is not None else {})
        entry = _KeyEntry(position, kept)
        self._entries[doc_id] = entry
        return {_ROW_ENTRY + doc_id: entry.encoded()}

    @staticmethod
    def _wrap(change: Change, record: Record | None) -> Change:
        assert change.state is None or isinstance(change.state, Checkpointed)
        return Change(change.event, change.doc_id, _Read(record, change.state))
