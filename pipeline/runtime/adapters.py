"""Builders that turn settings into adapters; shared by the embedded runner and daemons."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from pipeline.config.settings import Settings
from pipeline.core.chunking import Chunker, ChunkerConfig
from pipeline.core.errors import ConfigError
from pipeline.encoding import Encoder
from pipeline.encoding.cache import EmbeddingCache, SqliteEmbeddingCache
from pipeline.encoding.shared_cache import CachePoint, SharedEmbeddingCache, TieredEmbeddingCache
from pipeline.encoding.transformer import SentenceTransformerEncoder
from pipeline.runtime.topology import Topology
from pipeline.store import PointWrite, VectorStore

if TYPE_CHECKING:
    from pipeline.bus.kafka import KafkaBus, KafkaTimeouts
    from pipeline.store.server import ServerStore

#: Chosen by ops/bench/chunking.py (README, "Chunking defaults").
DEFAULT_CHUNK_TOKENS = 200


def open_store(settings: Settings) -> VectorStore:
    if settings.store.url:
        from pipeline.store.server import ServerStore

        return ServerStore.from_settings(settings.store)
    from pipeline.store.edge import EdgeStore

    return EdgeStore(settings.qdrant_dir)


def kafka_bus(settings: Settings, client: str, timeouts: KafkaTimeouts | None = None) -> KafkaBus:
    """The Kafka bus of ``client`` (its client id), sized so any accepted document fits."""
    from pipeline.bus.kafka import KafkaBus

    limit = Topology(settings).message_limit
    return KafkaBus(settings.kafka, client_id=client, timeouts=timeouts, max_message_bytes=limit)


def make_encoder(settings: Settings) -> Encoder:
    # The state dir holds the ONNX export that serves small calls without importing torch.
    return SentenceTransformerEncoder(settings.model, state_dir=settings.state_dir)


def check_index_dims(settings: Settings) -> None:
    """index.dims larger than the model's vectors is refused before anything is encoded."""
    wanted = settings.index.dims
    if wanted is None:
        return
    from pipeline.encoding.model_files import output_dims, resolve_model_path

    full = output_dims(resolve_model_path(settings.model.name))
    if full is not None and wanted > full:
        model = settings.model.name
        msg = f"index.dims={wanted} exceeds the {full} dimensions of model {model!r}; use at most {full}"
        raise ConfigError(msg)


def chunk_tokens(encoder: Encoder, settings: Settings) -> int:
    """Tokens per chunk: the configured size, else the default within what the model reads."""
    return settings.chunking.max_tokens or min(DEFAULT_CHUNK_TOKENS, encoder.max_tokens - 2)


def make_chunker(encoder: Encoder, settings: Settings) -> Chunker:
    # Two positions go to the model's special tokens ([CLS], [SEP]).
    room = encoder.max_tokens - 2
    size = chunk_tokens(encoder, settings)
    if size > room:
        msg = f"chunking.max_tokens={size} exceeds what the model reads ({room})"
        raise ConfigError(msg)
    try:
        config = ChunkerConfig(size, settings.chunking.overlap_tokens)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return Chunker(encoder, config)


def open_cache(settings: Settings, on_failure: Callable[[str], None] | None = None) -> EmbeddingCache:
    """The host's SQLite cache; with ``cache.shared``, in front of the cache every host shares
    in the Qdrant server of ``store.url`` (``on_failure(kind)`` hears its failures)."""
    local = SqliteEmbeddingCache(settings.cache_path)
    if not settings.cache.shared:
        return local
    if not settings.store.url:
        local.close()
        msg = (
            "cache.shared=true needs store.url: the shared embedding cache lives in the Qdrant "
            "server every host uses; set store.url (EMBEDSTREAM_STORE__URL), or unset cache.shared"
        )
        raise ConfigError(msg)
    from pipeline.store.server import ServerStore

    collections = _ServerCacheCollections(ServerStore.from_settings(settings.store))
    shared = SharedEmbeddingCache(collections, settings.cache.collection_prefix)
    return TieredEmbeddingCache(local, shared, on_failure=on_failure)


class _ServerCacheCollections:
    """The shared embedding cache's :class:`CacheCollections` on the Qdrant server adapter."""

    def __init__(self, store: ServerStore) -> None:
        self._store = store

    def names(self) -> list[str]:
        return self._store.collections()

    def create(self, name: str, dims: int) -> None:
        self._store.create_cache_collection(name, dims)

    def write(self, name: str, points: Mapping[str, CachePoint]) -> None:
        self._store.upsert(name, [PointWrite(i, vector, payload) for i, (vector, payload) in points.items()])

    def read(self, name: str, ids: Sequence[str]) -> dict[str, CachePoint]:
        return self._store.retrieve_points(name, ids)

    def close(self) -> None:
        self._store.close()
