"""The embedding cache shared by every host: collections in the deployment's Qdrant server,
behind each host's SQLite file (DESIGN §3 invariant 4 across hosts).

:class:`SharedEmbeddingCache` keeps each vector as a point of a cache collection: the
point id is the UUIDv5 of (model fingerprint, chunk hash), so every host writes the same
point for the same chunk and a rewrite is idempotent; the vector is the full-dimension
float32 encoding, kept exactly (the collection compares by dot product, which Qdrant never
rescales); the payload holds the fingerprint and the hash, and a lookup checks both.
Qdrant collections have one vector size, so there is one collection per dimension,
``<prefix>__<dims>``; which one holds a fingerprint is learnt from its first write, else
looked up once in each of them.

:class:`TieredEmbeddingCache` puts the local cache first: reads ask the local tier, then
the shared tier for what it lacks, and keep the shared tier's answers locally; writes go to
both. The shared tier is an optimisation, never a dependency: when it fails (the server is
down, slow or refuses) the lookup answers what the local tier has, so the embed stage
encodes the rest, and a failed write is dropped; both are logged and counted, and the
shared tier is left alone for ``pause_s`` so an outage does not cost a timeout per batch.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from pipeline.core.errors import EmbedstreamError
from pipeline.encoding.cache import EmbeddingCache, Vector

log = logging.getLogger(__name__)

#: The UUIDv5 namespace of cache point ids (fixed forever: changing it orphans every cache).
CACHE_NAMESPACE = uuid.UUID("5b0f1e4e-7a43-5d2c-9a57-3c1f6f0e8b21")
DEFAULT_PREFIX = "embedstream_cache"
FINGERPRINT = "fingerprint"
CHUNK_HASH = "chunk_hash"
#: Ids per lookup request, and points per write request (the server adapter also bounds
#: a write by its size in bytes).
READ_BATCH = 500
WRITE_BATCH = 256
#: How long the shared tier is left alone after it failed.
PAUSE_S = 30.0

#: A cache point as the server keeps it: the vector, and the payload naming its key.
CachePoint = tuple[list[float], dict[str, Any]]


class CacheCollections(Protocol):
    """What the shared tier needs of the Qdrant server: its collections, read by point id.

    The runtime binds it to the server adapter; errors are the pipeline's error tree.
    """

    def names(self) -> list[str]: ...

    def create(self, name: str, dims: int) -> None:
        """Create the cache collection ``name`` if missing; idempotent, and safe when
        several hosts create it at once."""

    def write(self, name: str, points: Mapping[str, CachePoint]) -> None:
        """Upsert points by id (acknowledged before returning)."""

    def read(self, name: str, ids: Sequence[str]) -> dict[str, CachePoint]:
        """The points of ``ids`` that exist."""

    def close(self) -> None: ...


def cache_point_id(fingerprint: str, chunk_hash: str) -> str:
    """The point id of a chunk's vector for a model: the same on every host."""
    return str(uuid.uuid5(CACHE_NAMESPACE, f"{fingerprint}\0{chunk_hash}"))


def cache_collection(prefix: str, dims: int) -> str:
    return f"{prefix}__{dims}"


class SharedEmbeddingCache:
    """The embedding cache as Qdrant collections (an :class:`EmbeddingCache`)."""

    def __init__(self, collections: CacheCollections, prefix: str = DEFAULT_PREFIX) -> None:
        self._collections = collections
        self._prefix = prefix
        self._lock = threading.Lock()
        self._home: dict[str, str] = {}  # fingerprint -> the collection known to hold it
        self._created: set[str] = set()

    def get_many(self, fingerprint: str, hashes: Sequence[str]) -> dict[str, Vector]:
        wanted = {cache_point_id(fingerprint, h): h for h in dict.fromkeys(hashes)}
        if not wanted:
            return {}
        with self._lock:
            home = self._home.get(fingerprint)
        found: dict[str, Vector] = {}
        for name in [home] if home else self._candidates():
            found.update(self._read(name, fingerprint, wanted))
            if found:
                with self._lock:
                    self._home[fingerprint] = name
                break
        return found

    def put_many(self, fingerprint: str, vectors: Mapping[str, Vector]) -> None:
        by_dims: dict[int, dict[str, CachePoint]] = {}
        for chunk_hash, vector in vectors.items():
            values = np.asarray(vector, dtype=np.float32).reshape(-1)
            payload = {FINGERPRINT: fingerprint, CHUNK_HASH: chunk_hash}
            by_dims.setdefault(values.size, {})[cache_point_id(fingerprint, chunk_hash)] = (
                values.tolist(),
                payload,
            )
        for dims, points in by_dims.items():
            name = cache_collection(self._prefix, dims)
            self._ensure(name, dims)
            items = list(points.items())
            for offset in range(0, len(items), WRITE_BATCH):
                self._collections.write(name, dict(items[offset : offset + WRITE_BATCH]))
            with self._lock:
                self._home[fingerprint] = name

    def forget(self) -> None:
        """Forget which collections exist and hold what (after a failure: one may be gone)."""
        with self._lock:
            self._home.clear()
            self._created.clear()

    def close(self) -> None:
        self._collections.close()

    def _candidates(self) -> list[str]:
        """This deployment's cache collections, by dimension."""
        head = f"{self._prefix}__"
        return sorted(n for n in self._collections.names() if n.startswith(head) and n[len(head) :].isdigit())

    def _read(self, name: str, fingerprint: str, wanted: Mapping[str, str]) -> dict[str, Vector]:
        dims = int(name.rsplit("__", 1)[1])
        ids = list(wanted)
        found: dict[str, Vector] = {}
        for offset in range(0, len(ids), READ_BATCH):
            for point_id, (vector, payload) in self._collections.read(
                name, ids[offset : offset + READ_BATCH]
            ).items():
                chunk_hash = wanted.get(point_id)
                # The id says which key it is; the payload must say so too, and the vector fit.
                if (
                    chunk_hash is None
                    or payload.get(FINGERPRINT) != fingerprint
                    or payload.get(CHUNK_HASH) != chunk_hash
                    or len(vector) != dims
                ):
                    log.warning(
                        "shared embedding cache: point %s of %s is not the key it claims", point_id, name
                    )
                    continue
                found[chunk_hash] = np.asarray(vector, dtype=np.float32)
        return found

    def _ensure(self, name: str, dims: int) -> None:
        with self._lock:
            if name in self._created:
                return
        self._collections.create(name, dims)
        with self._lock:
            self._created.add(name)


class TieredEmbeddingCache:
    """The local cache first, the shared one behind it (an :class:`EmbeddingCache`).

    ``on_failure(kind)`` hears each failure of the shared tier (``shared_cache_read``,
    ``shared_cache_write``), e.g. to count it in metrics; :attr:`counts` counts them too,
    with the shared tier's hits and what was skipped while it was left alone.
    """

    def __init__(
        self,
        local: EmbeddingCache,
        shared: SharedEmbeddingCache,
        *,
        pause_s: float = PAUSE_S,
        on_failure: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._local = local
        self._shared = shared
        self._pause_s = pause_s
        self._on_failure = on_failure
        self._clock = clock
        self._lock = threading.Lock()
        self._resume_at: float | None = None
        self._failing = False
        self.counts: Counter[str] = Counter()

    def get_many(self, fingerprint: str, hashes: Sequence[str]) -> dict[str, Vector]:
        found = self._local.get_many(fingerprint, hashes)
        missing = [h for h in dict.fromkeys(hashes) if h not in found]
        if not missing:
            return found
        if self._paused():
            self._count("shared_read_skipped", len(missing))
            return found
        try:
            remote = self._shared.get_many(fingerprint, missing)
        except EmbedstreamError as exc:
            self._failed("shared_cache_read", exc, len(missing))
            return found
        self._recovered()
        if remote:
            self._count("shared_hits", len(remote))
            self._local.put_many(fingerprint, remote)  # the next lookup stays on this host
        return {**found, **remote}

    def put_many(self, fingerprint: str, vectors: Mapping[str, Vector]) -> None:
        if not vectors:
            return
        self._local.put_many(fingerprint, vectors)
        if self._paused():
            self._count("shared_write_skipped", len(vectors))
            return
        try:
            self._shared.put_many(fingerprint, vectors)
        except EmbedstreamError as exc:
            self._failed("shared_cache_write", exc, len(vectors))
            return
        self._recovered()

    def close(self) -> None:
        try:
            self._shared.close()
        finally:
            self._local.close()

    def _paused(self) -> bool:
        with self._lock:
            if self._resume_at is None:
                return False
            if self._clock() < self._resume_at:
                return True
            self._resume_at = None
            return False

    def _failed(self, kind: str, exc: EmbedstreamError, chunks: int) -> None:
        with self._lock:
            self._resume_at = self._clock() + self._pause_s
            self._failing = True
            self.counts[kind] += 1
        what = "lookup" if kind == "shared_cache_read" else "write"
        log.warning(
            "shared embedding cache %s failed (%s chunks), left alone for %.0fs: %s: %s",
            what, chunks, self._pause_s, type(exc).__name__, exc,
            extra={"kind": kind, "chunks": chunks},
        )  # fmt: skip
        self._shared.forget()  # a collection may have gone with the failure
        if self._on_failure is not None:
            self._on_failure(kind)

    def _recovered(self) -> None:
        with self._lock:
            was_failing, self._failing = self._failing, False
        if was_failing:
            log.info("shared embedding cache answers again")

    def _count(self, key: str, n: int) -> None:
        with self._lock:
            self.counts[key] += n
