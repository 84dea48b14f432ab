"""The embedded default: source, embed and sink stages in one process over an in-process bus.

A short binding of :class:`pipeline.runtime.Runtime`: the stage objects and the worker
loop are exactly those the Kafka daemons run; only the transport (:class:`InMemoryBus`)
and the store (embedded Qdrant engine, unless a server URL is configured) differ.

Every version of the index in the store is fed (:mod:`pipeline.runtime.lanes`): during a migration
each change reaches the live version and the one being built, each with its own model.
The live version's lane reports to :attr:`EmbeddedPipeline.stats` (what ``index`` prints).

Sources that cannot be read again (JSON lines: stdin is consumed, yesterday's file is
gone) have their last delivered change per document kept in a :class:`ChangeLog`, the
embedded stand-in of Kafka's compacted changes topic: a new version is backfilled from it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.bus import Outgoing
from pipeline.bus.dead_letters import LocalDeadLetters
from pipeline.bus.memory import InMemoryBus
from pipeline.config.settings import IndexSettings, Settings
from pipeline.core.errors import ConfigError
from pipeline.core.events import ChangeEvent
from pipeline.encoding import Encoder
from pipeline.encoding.cache import EmbeddingCache
from pipeline.observability import NullObserver, Observer, Observers, RunStats, VersionedObserver, for_version
from pipeline.runtime import Runtime
from pipeline.runtime.adapters import check_index_dims
from pipeline.runtime.lanes import Lane, backfill_topic, build_lane
from pipeline.runtime.models import effective_chunking
from pipeline.sources import SourceBindings
from pipeline.store import VectorStore
from pipeline.store.payload import VERSION
from pipeline.versions.doc_states import DocStates
from pipeline.versions.search import SearchResult, search_documents
from pipeline.versions.spec import IndexVersion, find_version, live_version, versions

log = logging.getLogger(__name__)

#: Identity kinds (:attr:`pipeline.sources.Source.identity`) of sources that cannot be read
#: again for a new version's backfill: their changes are kept in the :class:`ChangeLog`.
UNREPLAYABLE = ("jsonl:",)
_LOG_SCHEMA = """
CREATE TABLE IF NOT EXISTS changes (
    key TEXT PRIMARY KEY, source TEXT NOT NULL, version INTEGER NOT NULL, event BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS changes_by_source ON changes (source, key);
"""
# Compaction: the latest change per document (tombstones too) replaces an older one only.
_KEEP = """
INSERT INTO changes (key, source, version, event) VALUES (?, ?, ?, ?)
ON CONFLICT (key) DO UPDATE SET version = excluded.version, event = excluded.event
WHERE excluded.version >= changes.version
"""


class ChangeLog:
    """The last delivered change per document of the sources that cannot be read again
    (``index_home/changes.sqlite``), written once a change is durably indexed."""

    def __init__(self, home: Path) -> None:
        self._home = home
        self._kept: dict[str, bool] = {}  # source name -> its changes are kept
        self._db: sqlite3.Connection | None = None

    def keeps(self, source: str) -> bool:
        """Whether ``source`` is bound (in this index) to an identity that cannot be replayed."""
        if source not in self._kept:
            identity = SourceBindings.of(self._home).names().get(source, "")
            self._kept[source] = identity.startswith(UNREPLAYABLE)
        return self._kept[source]

    def keep(self, events: Sequence[ChangeEvent]) -> None:
        rows = [(e.key, e.source, e.version, e.to_bytes()) for e in events if self.keeps(e.source)]
        if rows:
            db = self._open()
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.executemany(_KEEP, rows)

    def replay(self, source: str, page: int = 500) -> Iterator[list[ChangeEvent]]:
        """The source's kept changes in key order, a page at a time."""
        db, after = self._open(), ""
        while True:
            found = db.execute(
                "SELECT key, event FROM changes WHERE source = ? AND key > ? ORDER BY key LIMIT ?",
                (source, after, page),
            ).fetchall()
            if not found:
                return
            yield [ChangeEvent.from_bytes(bytes(raw)) for _, raw in found]
            after = found[-1][0]

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            self._home.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self._home / "changes.sqlite", isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_LOG_SCHEMA)
            self._db = db
        return self._db


class ProgressHook(NullObserver):
    """Lets a progress bar hear how far the embed batch in flight has encoded."""

    def __init__(self) -> None:
        self.on_encoding: Callable[[int, int], None] | None = None

    def encoding(self, done: int, total: int) -> None:
        if self.on_encoding is not None:
            self.on_encoding(done, total)


class EmbeddedPipeline:
    """The runtime over an in-process bus, owning the store for its lifetime.

    ``search`` and ``status`` are safe from other threads (the watcher's HTTP endpoint).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        encoder: Encoder | None = None,
        cache: EmbeddingCache | None = None,
        store: VectorStore | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.settings = settings
        self.progress = ProgressHook()
        self._external: list[Observer] = [observer] if observer else []
        self._stats: dict[int, RunStats] = {}  # per version: they outlive lane rebuilds
        self._letters: list[dict[str, str]] = []
        members: list[Observer] = [self.progress, *self._external]
        self.runtime = Runtime(settings, Observers(*members), encoder=encoder, cache=cache, store=store)
        self.store: VectorStore = self.runtime.store  # opens it: fails fast if another process owns it
        try:
            self._lock = threading.RLock()
            self._dead = LocalDeadLetters(settings.state_dir / "dlq.jsonl")
            self.changelog = ChangeLog(settings.index_home)
            self._build_workers()
        except BaseException:
            self.runtime.close()
            raise

    @property
    def encoder(self) -> Encoder:
        return self.runtime.encoder

    @property
    def stats(self) -> RunStats:
        """Totals of the live version's lane (the version ``index`` reports on)."""
        return self.version_stats(self.version_number)

    def _build_workers(self) -> None:
        settings = self.settings
        check_index_dims(settings)
        found = versions(self.store, settings.index.name)
        alias = self.store.get_alias(settings.index.name)
        live = next((v for v in found if v.collection == alias), None)
        chunking = effective_chunking(self.encoder, settings)
        # Chunking left at its defaults follows each version's recorded chunker (a default
        # that changed between releases must not lock an existing index out); set, it must match.
        compared = chunking if settings.chunking.model_fields_set else None
        check_matches_a_version(found, live, settings.index, self.encoder.fingerprint, compared)
        self.version_number = live.version if live else (found[-1].version if found else 1)
        self.bus = InMemoryBus()
        self.topics = self.runtime.topics
        self._dead_seen = 0
        specs: dict[int, IndexVersion | None] = {v.version: v for v in found} or {1: None}
        self._lanes: dict[int, Lane] = {
            n: build_lane(self.runtime, self.bus, n, spec, self._observer_for(n)) for n, spec in specs.items()
        }
        self._sink = self._lanes[self.version_number].sink_stage

    def _observer_for(self, number: int) -> Observer:
        stats = self.version_stats(number)
        if number != self.version_number:
            # A building (or retired) version: counted apart from the summary; seen only by
            # the observers that tell versions apart (Prometheus: index_version="docs@vN").
            versioned = (o for o in self._external if isinstance(o, VersionedObserver))
            return Observers(stats, *(for_version(o, number) for o in versioned))
        return Observers(stats, self.progress, *(for_version(o, number) for o in self._external))

    def refresh_versions(self) -> None:
        """Feed the versions the store holds now (after ``migrate start``, ``promote``,
        ``rollback`` or ``gc``); call between passes, when nothing is in flight."""
        with self._lock:
            self._build_workers()

    def locked(self) -> threading.RLock:
        """Hold while touching the store from outside (a migration step, a backfill's
        bookkeeping): the watcher's searches run on other threads."""
        return self._lock

    @property
    def versions_fed(self) -> list[int]:
        return sorted(self._lanes)

    def version_stats(self, number: int) -> RunStats:
        return self._stats.setdefault(number, RunStats())

    def process(self, events: Sequence[ChangeEvent]) -> set[str]:
        """Index ``events`` into every version; returns once every one is durably in the
        store or dead-lettered, with the keys of those dead-lettered (their sources must
        not checkpoint them)."""
        producer = self.bus.producer()
        producer.send([Outgoing(self.topics.changes, e.key, e.to_bytes()) for e in events])
        for lane in self._lanes.values():
            lane.drain(self._lock)
        failed = self._collect_letters()
        self.changelog.keep([e for e in events if e.key not in failed])
        return failed

    def backfill(self, number: int, events: Sequence[ChangeEvent]) -> set[str]:
        """Replay ``events`` into version ``number`` alone (a source's current documents)."""
        topic = backfill_topic(self.runtime, number)
        self.bus.producer().send([Outgoing(topic, e.key, e.to_bytes()) for e in events])
        self._lanes[number].drain(self._lock)
        return self._collect_letters()

    def _collect_letters(self) -> set[str]:
        letters = self.bus.records(self.topics.dlq)[self._dead_seen :]
        self._dead_seen += len(letters)
        self._dead.append(letters)
        for record in letters:
            headers = {k: v.decode("utf-8", "replace") for k, v in record.headers}
            self._letters.append({"key": record.key or "", **headers})
        self.bus.trim()
        return {r.key or "" for r in letters}

    def indexed(self, source: str, *, points: bool = False) -> dict[str, int]:
        """doc_id -> version of the live documents of ``source`` in the index being written;
        with ``points``, also of documents that have points but no live state (a crash
        between a write and its state record, a lost checkpoint): one scroll of the source's
        points, at their highest version, so a deletion is numbered above all of them."""
        with self._lock:
            version = self._sink.version
            if version is None:
                version = find_version(self.store, self.settings.index.name, self.version_number)
            if version is None:
                return {}
            found = DocStates(self.store, version).live(source)
            if points:
                for _, payload in self.store.scroll(version.collection, {"source": source}):
                    doc_id, at = str(payload.get("doc_id", "")), int(payload.get(VERSION, 0))
                    if doc_id and at > found.get(doc_id, -1):
                        found[doc_id] = at
            return found

    def dead_letters(self) -> list[dict[str, str]]:
        """This process's dead letters (the local log keeps every run's)."""
        return list(self._letters)

    def search(self, query: str, k: int = 10, filters: Mapping[str, str] | None = None) -> list[SearchResult]:
        """Through the alias, encoded by the live version's own model (a promote or a
        rollback takes effect for the next query, whatever model.name says)."""
        with self._lock:
            live = live_version(self.store, self.settings.index.name)
            encoder = self.runtime.encoders.for_version(live) if live is not None else self.encoder
            return search_documents(self.store, live, encoder, query, k, filters)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return index_status(self.store, self.settings.index.name)

    def close(self) -> None:
        with self._lock:
            self.changelog.close()
            self.runtime.close()

    def __enter__(self) -> EmbeddedPipeline:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def index_status(store: VectorStore, name: str) -> dict[str, Any]:
    live = store.get_alias(name)
    return {
        "alias": name,
        "live": live,
        "versions": [_version_status(store, v, live) for v in versions(store, name)],
    }


def _version_status(store: VectorStore, version: IndexVersion, live: str | None) -> dict[str, Any]:
    return {
        "collection": version.collection,
        "live": version.collection == live,
        "model": version.fingerprint,
        "dims": version.dims,
        "datatype": version.datatype,
        "quantization": version.quantization,
        "documents": DocStates(store, version).live_count(),
        "points": store.count(version.collection),
    }


def check_matches_a_version(
    found: Sequence[IndexVersion],
    live: IndexVersion | None,
    index: IndexSettings,
    fingerprint: str,
    chunking: tuple[int, int] | None,
) -> None:
    """The settings describe one of the index's versions (during a migration, the live one
    or the one being built; all are fed anyway); else a ConfigError names what differs
    from the live version, and how to build a new one."""
    if not found or any(not _differences(v, index, fingerprint, chunking) for v in found):
        return
    held = live or found[-1]
    msg = (
        f"index {held.name!r} ({held.collection}) cannot change in place: "
        + "; ".join(_differences(held, index, fingerprint, chunking))
        + ". Build a new index version with these settings (`embedstream migrate start`), or use "
        "another index name (--index), or restore the previous settings"
    )
    raise ConfigError(msg)


def _differences(
    version: IndexVersion, index: IndexSettings, fingerprint: str, chunking: tuple[int, int] | None
) -> list[str]:
    """What the settings would change in ``version``: never its model, chunker or storage."""
    wanted: dict[str, object] = {
        "model": fingerprint,
        "dims": index.dims or version.full_dims,
        "datatype": index.datatype,
        "quantization": index.quantization,
    }
    held: dict[str, object] = {
        "model": version.fingerprint,
        "dims": version.dims,
        "datatype": version.datatype,
        "quantization": version.quantization,
    }
    if version.chunk_tokens and chunking is not None:  # versions record their chunker since migrations
        wanted["chunking"] = f"{chunking[0]}/{chunking[1]} tokens/overlap"
        held["chunking"] = f"{version.chunk_tokens}/{version.overlap_tokens} tokens/overlap"
    return [f"{k}: index has {held[k]}, settings ask for {wanted[k]}" for k in wanted if wanted[k] != held[k]]
