"""SQL table connector: a table (or query) as a stream of change events, through SQLAlchemy 2.

A pass has up to five phases, each resumable from the checkpoint (:mod:`connectors.kit.keystates`):

1. **Snapshot**, once: every row in key order, in pages (``WHERE key > :last ORDER BY
   key``); the last key delivered is checkpointed with each slice, so a ``kill -9``
   mid-snapshot resumes where it stopped. Before it starts, the cursor's maximum is
   recorded, so rows changed while the snapshot runs are caught by phase 2.
2. **Incremental**: rows whose cursor (``updated_at`` or a monotonic id) is at least the
   highest delivered cursor minus ``lookback``, so a row committed late with an older
   cursor value (a long transaction) is still seen. Rows read again are deduplicated
   against the checkpoint's content and metadata hashes: only real changes are emitted.
3. **Retry**, every pass: rows published but never recorded (dead-lettered downstream, or
   a crash in between) are read again by key, so they are indexed once the cause is gone.
4. **Key diff**, every ``key_diff_every_s`` (0: every pass, None: never): the table's keys
   against the checkpoint's live documents. Keys gone are hard deletes; keys present but
   not live here (a skipped row, a row too late for the look-back) are read again.
   It also tells :meth:`SqlSource.orphans` what the table holds.
5. **Reconcile**, instead of 3 and 4, on a source's first pass (every ``index`` run, a
   daemon's start), every ``reconcile_every_s`` and whenever the source's *spec* changed
   (``--text``, ``--metadata``, ``--query``, the size limit...: a digest of it is kept in
   the checkpoint): every row is read again in key order and the per-row digests decide
   what changed, so updates the cursor cannot see (a timestamp moved back further than the
   look-back, a table swapped for one with older timestamps) are found. Nothing unchanged
   is re-encoded.

A soft-delete column turns a row into a deletion (``is_deleted = true``, ``deleted_at`` set).
Versions are owned here: the cursor's value (microseconds for timestamps), never at or
below the last version emitted for the row, deletions included.

SQLAlchemy is imported here and nowhere else.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from connectors.kit.cursors import decode_value, encode_value, minus_lookback, natural_version
from connectors.kit.keystates import Checkpointed, Documents, KeyStates
from connectors.kit.rows import RowFormat
from pipeline.core.errors import ConfigError, RetryableError
from pipeline.core.faults import crash_point
from pipeline.sources import Change, PassReport

__all__ = [
    "DatabaseUnavailable",
    "SqlSource",
    "SqlTable",
    "decode_value",
    "encode_value",
    "minus_lookback",
    "natural_version",
]

log = logging.getLogger(__name__)

SNAPSHOT_AFTER = "snapshot.after"
SNAPSHOT_DONE = "snapshot.done"
CURSOR = "cursor"
KEY_DIFF_AT = "keydiff.at"
SPEC = "spec"  # the digest of the spec every row was last read under
SNAPSHOT_SPEC = "snapshot.spec"  # the spec the snapshot in progress reads under
RECONCILE_AT = "reconcile.at"


class DatabaseUnavailable(RetryableError, reason="source_unavailable"):
    """The database did not answer (down, restarting, network): retried, never a config error."""


@dataclass(frozen=True)
class SqlTable:
    """What to read: ``table`` (``schema.name`` allowed) or ``query``, and how rows become documents."""

    url: str
    key: str
    version: str
    rows: RowFormat
    table: str | None = None
    query: str | None = None
    #: Seconds (timestamp cursors) or units (integer cursors) re-read below the highest cursor.
    lookback: float = 60.0
    #: Seconds between key diffs (hard deletes); 0: every pass; None: never.
    key_diff_every_s: float | None = 0.0
    #: Seconds between reconcile passes (every row read again, digests compared), besides
    #: the first pass of each source (every ``index`` run, a daemon's start); None: never
    #: (a changed spec is still read again in full).
    reconcile_every_s: float | None = 3600.0
    page_size: int = 500

    def __post_init__(self) -> None:
        if (self.table is None) == (self.query is None):
            raise ConfigError("give a --table or a --query (one of them)")
        if self.lookback < 0 or self.page_size < 1:
            raise ConfigError("--lookback must be >= 0 and the page size >= 1")

    def spec_digest(self, max_bytes: int) -> str:
        """What decides each row's document: when it changes, every row is read again."""
        rows = self.rows
        spec = [self.table, self.query, self.key, self.version, rows.template, list(rows.metadata),
                rows.deleted_column, max_bytes]  # fmt: skip
        return hashlib.sha256(json.dumps(spec).encode("utf-8")).hexdigest()[:32]


# --------------------------------------------------------------------------- the relation


class _Relation:
    """The table or query as SQLAlchemy columns, and the few statements a pass runs."""

    def __init__(self, engine: sa.Engine, config: SqlTable) -> None:
        source = _from_clause(engine, config)
        available = [c.name for c in source.columns]
        needed = (config.key, config.version, *config.rows.columns())
        where = f"table {config.table!r}" if config.table else "the query"
        config.rows.check_columns(available, where, also=(config.key, config.version))
        self.key = source.columns[config.key]
        self.cursor = source.columns[config.version]
        self.selected = [source.columns[name] for name in dict.fromkeys(needed)]
        self.deleted = source.columns[config.rows.deleted_column] if config.rows.deleted_column else None
        self.source = source

    def snapshot_page(self, after: object, limit: int) -> sa.Select[Any]:
        query = sa.select(*self.selected).order_by(self.key).limit(limit)
        return query if after is None else query.where(self.key > after)

    def remaining(self, after: object) -> sa.Select[Any]:
        query = sa.select(sa.func.count()).select_from(self.source)
        return query if after is None else query.where(self.key > after)

    def since(self, start: object, last: tuple[object, object] | None, limit: int) -> sa.Select[Any]:
        """Rows with cursor >= ``start``, after ``last`` (cursor, key), in (cursor, key) order."""
        query = sa.select(*self.selected).where(self.cursor.is_not(None))
        if last is not None:
            cursor, key = last
            query = query.where(sa.or_(self.cursor > cursor, sa.and_(self.cursor == cursor, self.key > key)))
        elif start is not None:
            query = query.where(self.cursor >= start)
        return query.order_by(self.cursor, self.key).limit(limit)

    def max_cursor(self) -> sa.Select[Any]:
        return sa.select(sa.func.max(self.cursor)).select_from(self.source)

    def keys(self) -> sa.Select[Any]:
        return sa.select(self.key, *([self.deleted] if self.deleted is not None else []))

    def rows_with_keys(self, keys: Sequence[object]) -> sa.Select[Any]:
        return sa.select(*self.selected).where(self.key.in_(keys)).order_by(self.key)


def _from_clause(engine: sa.Engine, config: SqlTable) -> sa.FromClause:
    if config.table is not None:
        schema, _, name = config.table.rpartition(".")
        try:
            return sa.Table(name, sa.MetaData(), schema=schema or None, autoload_with=engine)
        except sa_exc.NoSuchTableError:
            raise ConfigError(f"table {config.table!r} does not exist in {_shown_url(engine.url)}") from None
    assert config.query is not None
    probe = sa.text(f"SELECT * FROM ({config.query}) AS embedstream_probe LIMIT 0")  # noqa: S608 -- the operator's own query
    with engine.connect() as connection:
        names = list(connection.execute(probe).keys())
    return sa.text(config.query).columns(*(sa.column(n) for n in names)).subquery("embedstream_rows")


def _shown_url(url: sa.URL) -> str:
    """The URL without its password; a SQLite file by its absolute path."""
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        url = url.set(database=str(Path(url.database).resolve()))
    return url.render_as_string(hide_password=True)


# --------------------------------------------------------------------------- the source


class SqlSource:
    """One table or query of one database as a :class:`pipeline.sources.Source`."""

    def __init__(self, config: SqlTable, checkpoint: Path, *, name: str, max_bytes: int = 2_000_000) -> None:
        self.config = config
        self.max_bytes = max_bytes
        self._name = name
        try:
            self._engine = sa.create_engine(config.url, pool_pre_ping=True)
        except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError, ModuleNotFoundError) as exc:
            msg = f"--url: {exc} (a SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db)"
            raise ConfigError(msg) from exc
        self._relation: _Relation | None = None
        self._states = KeyStates(checkpoint)
        self._docs = Documents(name, self._states)
        self._seen: set[str] | None = None  # the table's live keys, after a key diff
        self._visited: set[str] = set()  # rows read this pass: the look-back re-reads some
        self._first_pass = True

    @property
    def name(self) -> str:
        return self._name

    @property
    def identity(self) -> str:
        what = f"table {self.config.table}" if self.config.table else f"query {self.config.query}"
        return f"sql:{_shown_url(self._engine.url)} {what}"

    def changes(self, report: PassReport) -> Iterator[Change]:
        self._docs.begin_pass()
        self._seen = None
        self._visited = set()
        first, self._first_pass = self._first_pass, False
        spec = self.config.spec_digest(self.max_bytes)
        snapshot = self._states.position(SNAPSHOT_DONE) is None
        if not snapshot and self._states.position(SPEC) != spec:
            # Read all again below; the cursor restarts at the relation's own highest value
            # (a --query's cursor may not even have the table's type).
            highest = self._scalar(self.relation.max_cursor())
            if highest is not None:
                self._states.record({}, {CURSOR: encode_value(highest)})
        if snapshot:
            yield from self._snapshot(report, spec)
        yield from self._incremental(report)
        if not snapshot and self._reconcile_due(spec, first=first):
            yield from self._reconcile(report, spec)
            return
        yield from self._retry(report)
        if self._key_diff_due():
            yield from self._key_diff(report)

    def reserve(self, changes: Sequence[Change]) -> None:
        self._docs.reserve(changes)

    def commit(self, changes: Sequence[Change]) -> None:
        self._docs.commit(changes)
        crash_point("source.sql.after_checkpoint")

    def orphans(self, indexed: Mapping[str, int]) -> list[Change]:
        """Deletions for documents the index holds but the table does not (known only
        after a key diff in this pass): a lost checkpoint, rows deleted meanwhile. Those this
        pass already deletes are left out: counted twice, they would trip the mass-delete check."""
        if self._seen is None:
            return []
        seen, docs = self._seen, self._docs
        gone = [(d, v) for d, v in sorted(indexed.items()) if d not in seen and not docs.deleted_in_pass(d)]
        return [self._docs.delete(doc_id, version + 1, force=True) for doc_id, version in gone]

    def estimate(self) -> int | None:
        """Rows the snapshot has left (None once it is done: a poll's size is unknown)."""
        if self._states.position(SNAPSHOT_DONE) is not None:
            return None
        after = decode_value(self._states.position(SNAPSHOT_AFTER))
        return int(self._scalar(self.relation.remaining(after)) or 0)

    def close(self) -> None:
        self._states.close()
        self._engine.dispose()

    @property
    def relation(self) -> _Relation:
        if self._relation is None:
            with self._translated("read the table's columns"):
                self._relation = _Relation(self._engine, self.config)
        return self._relation

    # -- phases

    def _snapshot(self, report: PassReport, spec: str) -> Iterator[Change]:
        relation, key = self.relation, self.config.key
        if self._states.position(CURSOR) is None:
            # Rows changed while the snapshot runs have a cursor above this: phase 2 sees them.
            highest = self._scalar(relation.max_cursor())
            if highest is not None:
                self._states.record({}, {CURSOR: encode_value(highest)})
        after = decode_value(self._states.position(SNAPSHOT_AFTER))
        if after is None or self._states.position(SNAPSHOT_SPEC) is None:
            # Resumed under another spec (or one not recorded): the next pass reads all again.
            self._states.record({}, {SNAPSHOT_SPEC: spec if after is None else ""})
        read_under = self._states.position(SNAPSHOT_SPEC) or ""
        while True:
            rows = self._rows(relation.snapshot_page(after, self.config.page_size))
            for row in rows:
                yield self._row_change(row, report, {SNAPSHOT_AFTER: encode_value(row[key])})
            if len(rows) < self.config.page_size:
                break
            after = rows[-1][key]
        done = {SNAPSHOT_DONE: "1", SPEC: read_under, RECONCILE_AT: repr(time.time())}
        yield Change(None, "", Checkpointed(None, done))

    def _incremental(self, report: PassReport) -> Iterator[Change]:
        highest = decode_value(self._states.position(CURSOR))
        start = None if highest is None else minus_lookback(highest, self.config.lookback)
        last: tuple[object, object] | None = None
        while True:
            rows = self._rows(self.relation.since(start, last, self.config.page_size))
            for row in rows:
                cursor = row[self.config.version]
                # The look-back re-reads rows below the highest cursor; it never moves down.
                moved = highest is None or cursor > highest
                yield self._row_change(row, report, {CURSOR: encode_value(cursor)} if moved else {})
                highest = cursor if moved else highest
            if len(rows) < self.config.page_size:
                return
            last = (rows[-1][self.config.version], rows[-1][self.config.key])

    def _reconcile(self, report: PassReport, spec: str) -> Iterator[Change]:
        """Every row again, in key order (digests decide), then the key diff's deletions."""
        relation, key, page = self.relation, self.config.key, self.config.page_size
        present: set[str] = set()
        after = None
        while True:
            rows = self._rows(relation.snapshot_page(after, page))
            for row in rows:
                doc_id = str(row[key])
                if not self.config.rows.is_deleted(row):
                    present.add(doc_id)
                if doc_id not in self._visited:
                    yield self._row_change(row, report, {})
            if len(rows) < page:
                break
            after = rows[-1][key]
        for doc_id in sorted(self._docs.live_ids() - present):
            yield self._docs.delete(doc_id, 0)  # numbered above every version it may have
        now = repr(time.time())
        yield Change(None, "", Checkpointed(None, {SPEC: spec, RECONCILE_AT: now, KEY_DIFF_AT: now}))
        self._seen = present

    def _reconcile_due(self, spec: str, *, first: bool) -> bool:
        if self._states.position(SPEC) != spec:
            return True  # rows were read under another --text, --metadata, --query or limit
        every = self.config.reconcile_every_s
        if every is None:
            return False
        last = self._states.position(RECONCILE_AT)
        return first or every == 0 or last is None or time.time() - float(last) >= every

    def _retry(self, report: PassReport) -> Iterator[Change]:
        """Rows published but never recorded (dead-lettered, or a crash in between): read
        again by key each pass; those gone from the table are deleted (they may have points)."""
        pending = sorted(self._states.unsettled() - self._visited)
        if not pending:
            return
        values = list(self._key_values(pending).values())
        found: set[str] = set()
        for start in range(0, len(values), self.config.page_size):
            for row in self._rows(
                self.relation.rows_with_keys(values[start : start + self.config.page_size])
            ):
                found.add(str(row[self.config.key]))
                yield self._row_change(row, report, {})
        for doc_id in pending:
            if doc_id not in found:
                yield self._docs.delete(doc_id, 0)

    def _key_values(self, doc_ids: Sequence[str]) -> dict[str, object]:
        """doc_id -> the key column's value (by its type, else by reading the keys)."""
        try:
            kind: type | None = self.relation.key.type.python_type
        except NotImplementedError:  # a query's columns have no type
            kind = None
        if kind in (int, str, uuid.UUID):
            assert kind is not None
            values: dict[str, object] = {}
            for doc_id in doc_ids:
                with contextlib.suppress(ValueError):
                    values[doc_id] = kind(doc_id)
            return values
        wanted, key = set(doc_ids), self.config.key
        return {str(r[key]): r[key] for r in self._rows(self.relation.keys()) if str(r[key]) in wanted}

    def _key_diff(self, report: PassReport) -> Iterator[Change]:
        present: dict[str, object] = {}
        for row in self._rows(self.relation.keys()):
            if not self.config.rows.is_deleted(row):
                present[str(row[self.config.key])] = row[self.config.key]
        live = self._docs.live_ids()  # one query, not one per row of the table
        unsettled = self._states.unsettled()  # published, never recorded: read them again
        for doc_id in sorted(live - present.keys()):
            yield self._docs.delete(doc_id, 0)  # numbered above every version it may have
        missing = [
            raw
            for doc_id, raw in present.items()
            if (doc_id not in live or doc_id in unsettled) and doc_id not in self._visited
        ]
        page = self.config.page_size
        for start in range(0, len(missing), page):
            for row in self._rows(self.relation.rows_with_keys(missing[start : start + page])):
                yield self._row_change(row, report, {})
        yield Change(None, "", Checkpointed(None, {KEY_DIFF_AT: repr(time.time())}))
        self._seen = set(present)

    def _key_diff_due(self) -> bool:
        every = self.config.key_diff_every_s
        if every is None:
            return False
        last = self._states.position(KEY_DIFF_AT)
        return every == 0 or last is None or time.time() - float(last) >= every

    # -- one row

    def _row_change(self, row: Mapping[str, object], report: PassReport, positions: dict[str, str]) -> Change:
        doc_id = str(row[self.config.key])
        natural = natural_version(row[self.config.version])
        counted = doc_id in self._visited
        self._visited.add(doc_id)
        document = self.config.rows.document(row, self.max_bytes, report, f"row {doc_id}")
        if document is None:
            # Deleted, or unindexable now: it loses its points (read again by the next key diff).
            return self._docs.delete(doc_id, natural, positions)
        text, metadata = document
        change = self._docs.upsert(doc_id, text, metadata, natural, positions)
        if change.event is None and not counted:
            report.unchanged += 1
        return change

    # -- database access

    def _rows(self, statement: sa.Select[Any]) -> list[dict[str, Any]]:
        with self._translated("read rows"), self._engine.connect() as connection:
            return [dict(row) for row in connection.execute(statement).mappings()]

    def _scalar(self, statement: sa.Select[Any]) -> Any:
        with self._translated("read rows"), self._engine.connect() as connection:
            return connection.execute(statement).scalar()

    @contextlib.contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        """SQLAlchemy errors become ours: a lost connection is retryable, a bad query is not."""
        try:
            yield
        except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError) as exc:
            raise DatabaseUnavailable(f"{self.identity}: could not {action}: {_first_line(exc)}") from exc
        except sa_exc.SQLAlchemyError as exc:
            raise ConfigError(f"{self.identity}: could not {action}: {_first_line(exc)}") from exc


def _first_line(exc: sa_exc.SQLAlchemyError) -> str:
    cause = getattr(exc, "orig", None) or exc
    return str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
