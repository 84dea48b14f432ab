"""The embedded default: source, embed and sink stages in one process over an in-process bus.

A short binding of :class:`pipeline.runtime.Runtime`: the stage objects and the worker
loop are exactly those the Kafka daemons run; only the transport (:class:`InMemoryBus`)
and the store (embedded Qdrant engine, unless a server URL is configured) differ.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pipeline.bus import Outgoing
from pipeline.bus.memory import InMemoryBus
from pipeline.cache import EmbeddingCache
from pipeline.dlq import LocalDeadLetters
from pipeline.encoder import Encoder
from pipeline.errors import ConfigError
from pipeline.events import ChangeEvent
from pipeline.index import DocStates, IndexVersion, live_version, versions
from pipeline.observe import NullObserver, Observer, Observers, RunStats
from pipeline.runtime import Runtime
from pipeline.search import SearchResult, search_documents
from pipeline.settings import IndexSettings, Settings
from pipeline.store import VectorStore

log = logging.getLogger(__name__)


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
        self.stats = RunStats()
        self.progress = ProgressHook()
        members: list[Observer] = [self.stats, self.progress, *([observer] if observer else [])]
        self.runtime = Runtime(settings, Observers(*members), encoder=encoder, cache=cache, store=store)
        self.store: VectorStore = self.runtime.store  # opens it: fails fast if another process owns it
        try:
            self._lock = threading.RLock()
            self._dead = LocalDeadLetters(settings.state_dir / "dlq.jsonl")
            self._build_workers()
        except BaseException:
            self.runtime.close()
            raise

    @property
    def encoder(self) -> Encoder:
        return self.runtime.encoder

    def _build_workers(self) -> None:
        runtime, settings = self.runtime, self.settings
        live = live_version(self.store, settings.index.name)
        if live is not None:
            check_compatible(live, settings.index, self.encoder.fingerprint)
        self.version_number = live.version if live else 1
        self.bus = InMemoryBus()
        self.topics = runtime.topics
        embed, self._sink = runtime.embed_stage(self.version_number), runtime.sink_stage(self.version_number)
        producer = self.bus.producer()
        self._embed = runtime.worker(
            embed, self.bus.consumer("embed", [self.topics.changes]), producer, poll_timeout_s=0
        )
        vectors = runtime.input_topic(self._sink, self.version_number)
        self._sink_worker = runtime.worker(
            self._sink, self.bus.consumer("sink", [vectors]), producer, poll_timeout_s=0
        )
        self._dead_seen = 0

    def process(self, events: Sequence[ChangeEvent]) -> set[str]:
        """Index ``events``; returns once every one is durably in the store or dead-lettered,
        with the keys of those dead-lettered (their sources must not checkpoint them)."""
        producer = self.bus.producer()
        producer.send([Outgoing(self.topics.changes, e.key, e.to_bytes()) for e in events])
        while self._embed.run_batch():
            self._drain_sink()
        self._drain_sink()
        letters = self.bus.records(self.topics.dlq)[self._dead_seen :]
        self._dead_seen += len(letters)
        self._dead.append(letters)
        self.bus.trim()
        return {r.key or "" for r in letters}

    def _drain_sink(self) -> None:
        while True:
            with self._lock:
                if not self._sink_worker.run_batch():
                    return

    def indexed(self, source: str) -> dict[str, int]:
        """doc_id -> version of the live documents of ``source`` in the index being written."""
        with self._lock:
            version = self._sink.version
            if version is None:
                found = versions(self.store, self.settings.index.name)
                version = next((v for v in found if v.version == self.version_number), None)
            return DocStates(self.store, version).live(source) if version is not None else {}

    def dead_letters(self) -> list[dict[str, str]]:
        """This process's dead letters (the local log keeps every run's)."""
        letters = []
        for record in self.bus.records(self.topics.dlq):
            headers = {k: v.decode("utf-8", "replace") for k, v in record.headers}
            letters.append({"key": record.key or "", **headers})
        return letters

    def search(self, query: str, k: int = 10, filters: Mapping[str, str] | None = None) -> list[SearchResult]:
        with self._lock:
            live = live_version(self.store, self.settings.index.name)
            return search_documents(self.store, live, self.encoder, query, k, filters)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return index_status(self.store, self.settings.index.name)

    def close(self) -> None:
        with self._lock:
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


def check_compatible(live: IndexVersion, index: IndexSettings, fingerprint: str) -> None:
    """An existing index version is never written with another model or storage spec."""
    wanted = {
        "model": fingerprint,
        "dims": index.dims or live.full_dims,
        "datatype": index.datatype,
        "quantization": index.quantization,
    }
    held = {
        "model": live.fingerprint,
        "dims": live.dims,
        "datatype": live.datatype,
        "quantization": live.quantization,
    }
    changed = [
        f"{k}: index has {held[k]}, settings ask for {wanted[k]}" for k in wanted if wanted[k] != held[k]
    ]
    if changed:
        msg = (
            f"index {live.name!r} ({live.collection}) cannot change in place: " + "; ".join(changed) + ". "
            "Build a new index version with these settings (`embedstream migrate start`), or use another "
            "index name (--index), or restore the previous settings"
        )
        raise ConfigError(msg)
