"""A connector's checkpoint in SQLite: what it last emitted per document, plus positions.

Per document: the last version emitted (tombstones kept, so a re-created row outranks its
deletion), and the content and metadata hashes, so a row read again (a cursor look-back, a
restarted snapshot, the same JSON line twice) emits nothing unless it changed. Positions
are named strings (snapshot key, cursor). Each commit is one SQLite transaction: a
``kill -9`` leaves the old or the new checkpoint, and a commit costs what changed, not a
rewrite of every key (a JSON file would be rewritten per slice of a million-row table).

:class:`Documents` turns "this document now reads X" into a :class:`Change` with a
source-owned version (:func:`pipeline.sources.next_version`); the runner hands the
delivered ones back to :meth:`Documents.commit`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import JsonValue

from pipeline.core.errors import ConfigError
from pipeline.core.events import ChangeEvent
from pipeline.core.hashing import content_hash
from pipeline.core.planner import metadata_hash
from pipeline.sources import Change, next_version

__all__ = ["Checkpointed", "Documents", "KeyState", "KeyStates"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    doc_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    meta_hash TEXT NOT NULL,
    deleted INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS positions (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reserved (doc_id TEXT PRIMARY KEY, version INTEGER NOT NULL) WITHOUT ROWID;
"""
# Versions handed to the runner before publishing; cleared once a state at or above commits.
_RESERVE = """
INSERT INTO reserved (doc_id, version) VALUES (?, ?)
ON CONFLICT (doc_id) DO UPDATE SET version = max(version, excluded.version)
"""
_SETTLE = "DELETE FROM reserved WHERE doc_id = ? AND version <= ?"
# A state never replaces a newer one: two passes (or a late commit) cannot regress a document.
_PUT_STATE = """
INSERT INTO docs (doc_id, version, content_hash, meta_hash, deleted) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (doc_id) DO UPDATE SET
    version = excluded.version, content_hash = excluded.content_hash,
    meta_hash = excluded.meta_hash, deleted = excluded.deleted
WHERE excluded.version >= docs.version
"""
_PUT_POSITION = """
INSERT INTO positions (name, value) VALUES (?, ?)
ON CONFLICT (name) DO UPDATE SET value = excluded.value
"""


@dataclass(frozen=True)
class KeyState:
    """What a source last emitted for one document; a tombstone keeps only its version."""

    version: int
    content_hash: str = ""
    meta_hash: str = ""
    deleted: bool = False

    @classmethod
    def tombstone(cls, version: int) -> KeyState:
        return cls(version, deleted=True)


@dataclass(frozen=True)
class Checkpointed:
    """A :class:`Change`'s state: the document's new state (None: unchanged) and the
    positions that move once it is delivered (e.g. the snapshot's last key)."""

    state: KeyState | None = None
    positions: Mapping[str, str] = field(default_factory=dict)


class KeyStates:
    """The SQLite file; opened once per source, used from one thread at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # check_same_thread off: a daemon may build the source in one thread and run it in another.
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            msg = f"checkpoint {path} is unreadable ({exc}); delete it: the source is then read again in full"
            raise ConfigError(msg) from exc

    def get(self, doc_id: str) -> KeyState | None:
        row = self._db.execute(
            "SELECT version, content_hash, meta_hash, deleted FROM docs WHERE doc_id = ?", (doc_id,)
        ).fetchone()
        return None if row is None else KeyState(row[0], row[1], row[2], bool(row[3]))

    def live_ids(self) -> set[str]:
        return {row[0] for row in self._db.execute("SELECT doc_id FROM docs WHERE deleted = 0")}

    def reserved(self, doc_id: str) -> int | None:
        row = self._db.execute("SELECT version FROM reserved WHERE doc_id = ?", (doc_id,)).fetchone()
        return None if row is None else int(row[0])

    def unsettled(self) -> set[str]:
        """Documents published at a version never committed (a crash in between)."""
        return {row[0] for row in self._db.execute("SELECT doc_id FROM reserved")}

    def reserve(self, versions: Mapping[str, int]) -> None:
        """One transaction, durable before the events are published."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(_RESERVE, list(versions.items()))

    def position(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM positions WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def record(self, states: Mapping[str, KeyState], positions: Mapping[str, str]) -> None:
        """One transaction: every state (unless a newer one is recorded) and position."""
        rows = [(k, s.version, s.content_hash, s.meta_hash, int(s.deleted)) for k, s in states.items()]
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(_PUT_STATE, rows)
            self._db.executemany(_SETTLE, [(k, s.version) for k, s in states.items()])
            self._db.executemany(_PUT_POSITION, list(positions.items()))

    def close(self) -> None:
        self._db.close()


class Documents:
    """Decides each document's change against the checkpoint and what this pass already
    emitted (a row read twice in one pass, a key repeated in one JSON lines file)."""

    def __init__(self, source: str, states: KeyStates) -> None:
        self.source = source
        self.states = states
        self._emitted: dict[str, KeyState] = {}

    def begin_pass(self) -> None:
        """Forget what the last pass emitted: what was delivered is in the checkpoint now."""
        self._emitted.clear()

    def last(self, doc_id: str) -> KeyState | None:
        return self._emitted.get(doc_id) or self.states.get(doc_id)

    def floor(self, doc_id: str, last: KeyState | None) -> int | None:
        """The highest version of ``doc_id`` that may have reached the index: the last
        emitted or committed, or one reserved and published before a crash."""
        known = [v for v in (last.version if last else None, self.states.reserved(doc_id)) if v is not None]
        return max(known) if known else None

    def unsettled(self, doc_id: str, last: KeyState | None) -> bool:
        """Published above what is recorded: the index may hold another text or a ghost."""
        reserved = self.states.reserved(doc_id)
        return reserved is not None and (last is None or reserved > last.version)

    def live_ids(self) -> set[str]:
        """Documents live in the checkpoint or emitted live by this pass, and those published
        but never recorded (a crash in between: they may have points)."""
        live = self.states.live_ids() | self.states.unsettled()
        for doc_id, state in self._emitted.items():
            (live.discard if state.deleted else live.add)(doc_id)
        return live

    def deleted_in_pass(self, doc_id: str) -> bool:
        """This pass emitted the document's deletion (it may not be delivered yet)."""
        state = self._emitted.get(doc_id)
        return state is not None and state.deleted

    def upsert(
        self,
        doc_id: str,
        text: str,
        metadata: dict[str, JsonValue],
        natural: int,
        positions: Mapping[str, str] | None = None,
    ) -> Change:
        """An upsert, or (same text and metadata as last emitted) only the positions."""
        last = self.last(doc_id)
        digest, meta = content_hash(text), metadata_hash(metadata)
        same = last is not None and not last.deleted and (last.content_hash, last.meta_hash) == (digest, meta)
        if same and not self.unsettled(doc_id, last):
            return Change(None, doc_id, Checkpointed(None, positions or {}))
        state = KeyState(next_version(natural, self.floor(doc_id, last)), digest, meta)
        event = ChangeEvent(
            source=self.source, doc_id=doc_id, op="upsert", text=text, metadata=metadata,
            version=state.version, content_hash=digest,
        )  # fmt: skip
        return self._emitting(Change(event, doc_id, Checkpointed(state, positions or {})))

    def delete(
        self, doc_id: str, natural: int, positions: Mapping[str, str] | None = None, *, force: bool = False
    ) -> Change:
        """A deletion, unless this source never emitted the document or already deleted it;
        ``force``: in any case (the index holds it: a lost checkpoint, a dead-lettered delete)."""
        last = self.last(doc_id)
        if not force and (last is None or last.deleted) and not self.unsettled(doc_id, last):
            return Change(None, doc_id, Checkpointed(None, positions or {}))
        state = KeyState.tombstone(next_version(natural, self.floor(doc_id, last)))
        event = ChangeEvent(source=self.source, doc_id=doc_id, op="delete", version=state.version)
        return self._emitting(Change(event, doc_id, Checkpointed(state, positions or {})))

    def reserve(self, changes: Iterable[Change]) -> None:
        """Note the versions about to be published, durably, before they are."""
        versions: dict[str, int] = {}
        for change in changes:
            if change.event is not None:
                versions[change.doc_id] = max(change.event.version, versions.get(change.doc_id, 0))
        if versions:
            self.states.reserve(versions)

    def commit(self, changes: Iterable[Change]) -> None:
        """Record delivered changes: states and positions, in one transaction."""
        states: dict[str, KeyState] = {}
        positions: dict[str, str] = {}
        for change in changes:
            if isinstance(change.state, Checkpointed):
                if change.state.state is not None:
                    states[change.doc_id] = change.state.state
                positions.update(change.state.positions)
        if states or positions:
            self.states.record(states, positions)

    def _emitting(self, change: Change) -> Change:
        assert isinstance(change.state, Checkpointed)
        assert change.state.state is not None
        self._emitted[change.doc_id] = change.state.state
        return change
