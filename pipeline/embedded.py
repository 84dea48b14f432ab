"""The embedded default: source, embed and sink stages in one process over an in-process bus.

The stage objects and the worker loop are exactly those the Kafka daemons run; only the
transport (:class:`InMemoryBus`) and the store (embedded Qdrant engine, unless a server URL
is configured) differ.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.bus import Outgoing
from pipeline.bus.memory import InMemoryBus
from pipeline.cache import EmbeddingCache
from pipeline.components import make_chunker, make_encoder, open_cache, open_store
from pipeline.encoder import Encoder
from pipeline.errors import ConfigError
from pipeline.events import ChangeEvent
from pipeline.index import DocStates, IndexVersion, live_version, versions
from pipeline.observe import Observer, Observers, RunStats
from pipeline.settings import Settings
from pipeline.stages.embed import EmbedStage
from pipeline.stages.sink import SinkStage
from pipeline.store import Scalar, SearchOptions, VectorStore
from pipeline.topics import Topics
from pipeline.worker import Worker

log = logging.getLogger(__name__)

_TOP_LEVEL_FIELDS = {"doc_id", "source", "doc_key"}


@dataclass(frozen=True)
class SearchResult:
    doc_id: str
    source: str
    score: float
    text: str
    metadata: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {"doc_id": self.doc_id, "score": self.score, "text": self.text, "metadata": self.metadata}


class EmbeddedPipeline:
    """Owns the store for its lifetime; ``search`` and ``status`` are safe from other threads."""

    def __init__(
        self,
        settings: Settings,
        *,
        encoder: Encoder | None = None,
        cache: EmbeddingCache | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.settings = settings
        self.stats = RunStats()
        self._observer: Observer = Observers(self.stats, observer) if observer else self.stats
        self.store: VectorStore = open_store(settings)
        try:
            self.encoder = encoder or make_encoder(settings)
            self._cache = cache or open_cache(settings)
            self._lock = threading.RLock()
            self._build_workers()
        except BaseException:
            self.store.close()
            raise

    def _build_workers(self) -> None:
        settings, topics = self.settings, Topics(self.settings.kafka.topic_prefix)
        live = live_version(self.store, settings.index.name)
        if live is not None and live.fingerprint != self.encoder.fingerprint:
            msg = (
                f"index {settings.index.name!r} ({live.collection}) was built with model {live.fingerprint}, "
                f"but this run uses {self.encoder.fingerprint}; choose another index.name, or remove "
                f"{settings.state_dir} to rebuild it"
            )
            raise ConfigError(msg)
        number = live.version if live else 1
        self.bus = InMemoryBus()
        self.topics = topics
        vectors = topics.vectors(settings.index.name, number)
        chunker = make_chunker(self.encoder, settings)
        embed = EmbedStage(
            self.encoder, self._cache, chunker, settings.limits, vectors, topics.dlq, self._observer
        )
        self._sink = SinkStage(self.store, settings.index, number, topics.dlq, self._observer)
        batch = settings.kafka.batch_max_records
        self._embed = Worker(
            self.bus.consumer("embed", [topics.changes]), self.bus.producer(), embed,
            self._observer, max_records=batch, poll_timeout_s=0,
        )  # fmt: skip
        self._sink_worker = Worker(
            self.bus.consumer("sink", [vectors]), self.bus.producer(), self._sink,
            self._observer, max_records=batch, poll_timeout_s=0,
        )  # fmt: skip

    def process(self, events: Sequence[ChangeEvent]) -> None:
        """Index ``events`` and return once every one is durably in the store (or the DLQ)."""
        producer = self.bus.producer()
        producer.send([Outgoing(self.topics.changes, e.key, e.to_bytes()) for e in events])
        while self._embed.run_batch():
            self._drain_sink()
        self._drain_sink()
        self.bus.trim()

    def _drain_sink(self) -> None:
        while True:
            with self._lock:
                if not self._sink_worker.run_batch():
                    return

    def dead_letters(self) -> list[dict[str, str]]:
        letters = []
        for record in self.bus.records(self.topics.dlq):
            headers = {k: v.decode("utf-8", "replace") for k, v in record.headers}
            letters.append({"key": record.key or "", **headers})
        return letters

    def search(self, query: str, k: int = 10, filters: Mapping[str, str] | None = None) -> list[SearchResult]:
        with self._lock:
            version = live_version(self.store, self.settings.index.name)
            if version is None:
                return []
            vector = version.to_storage(self.encoder.encode_queries([query]))[0]
            options = SearchOptions(
                limit=k * 4, filters=payload_filters(filters or {}),
                oversampling=version.oversampling, rescore=version.rescore,
            )  # fmt: skip
            hits = self.store.search(version.collection, vector.tolist(), options)
        best: dict[str, SearchResult] = {}
        for hit in hits:  # one result per document: its best chunk
            key = str(hit.payload.get("doc_key"))
            if key not in best:
                best[key] = SearchResult(
                    str(hit.payload.get("doc_id")), str(hit.payload.get("source")), hit.score,
                    str(hit.payload.get("text", "")), dict(hit.payload.get("metadata") or {}),
                )  # fmt: skip
        return list(best.values())[:k]

    def status(self) -> dict[str, Any]:
        with self._lock:
            return index_status(self.store, self.settings.index.name)

    def close(self) -> None:
        with self._lock:
            self._cache.close()
            self.store.close()

    def __enter__(self) -> EmbeddedPipeline:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def payload_filters(filters: Mapping[str, str]) -> dict[str, Scalar]:
    """``--filter ext=.md`` means ``metadata.ext``; doc_id/source/doc_key are top-level."""
    parsed: dict[str, Scalar] = {}
    for key, raw in filters.items():
        field = key if key in _TOP_LEVEL_FIELDS or key.startswith("metadata.") else f"metadata.{key}"
        parsed[field] = int(raw) if raw.lstrip("-").isdigit() else raw
    return parsed


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
