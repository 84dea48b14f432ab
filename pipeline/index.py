"""Index versions and per-document bookkeeping, expressed over the ``VectorStore`` port.

An index version is collection ``<name>__v<N>`` plus a companion ``<name>__v<N>__docs``
that records, per document, the version and chunk point ids the index reflects (and a
tombstone after a deletion), and the version's own spec. Keeping this in Qdrant itself,
not beside it, means whatever store holds the points also holds the truth about them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from pipeline.errors import ConfigError
from pipeline.events import Matrix, split_key
from pipeline.faults import crash_point
from pipeline.hashing import doc_state_id
from pipeline.planner import DocState
from pipeline.settings import IndexSettings
from pipeline.store import DOC_KEY, VERSION, CollectionSpec, PointWrite, VectorStore

_SPEC_KEY = "__spec__"
_UNIT = (1.0,)  # the docs collection needs a vector; it is never searched


@dataclass(frozen=True)
class IndexVersion:
    name: str
    version: int
    fingerprint: str
    full_dims: int
    dims: int
    datatype: Literal["float32", "float16"]
    quantization: Literal["none", "int8", "binary"]
    oversampling: float
    rescore: bool

    @property
    def collection(self) -> str:
        return f"{self.name}__v{self.version}"

    @property
    def docs_collection(self) -> str:
        return f"{self.collection}__docs"

    @property
    def spec(self) -> CollectionSpec:
        return CollectionSpec(self.dims, self.datatype, self.quantization)

    def to_storage(self, matrix: Matrix) -> Matrix:
        """Matryoshka truncation + renormalization; the datatype is Qdrant's to apply."""
        if matrix.shape[1] == self.dims:
            return matrix
        cut = matrix[:, : self.dims]
        norms = np.linalg.norm(cut, axis=1, keepdims=True)
        normalized: Matrix = (cut / np.maximum(norms, 1e-12)).astype(np.float32)
        return normalized

    @classmethod
    def plan(cls, settings: IndexSettings, version: int, fingerprint: str, full_dims: int) -> IndexVersion:
        dims = settings.dims or full_dims
        if dims > full_dims:
            raise ConfigError(f"index.dims={dims} exceeds the model's {full_dims} dimensions")
        return cls(
            settings.name, version, fingerprint, full_dims, dims, settings.datatype,
            settings.quantization, settings.oversampling, settings.rescore,
        )  # fmt: skip


def create_version(store: VectorStore, version: IndexVersion) -> None:
    """Create both collections, then record the spec, then point the alias if it points nowhere.

    Every step is idempotent, and the spec is written last among the collection steps: a
    version is "known" (:func:`read_version`) only once it is complete, so a fault at any
    step is retried from that step, and two sinks creating the same version both succeed.
    """
    store.create_collection(version.collection, version.spec)
    crash_point("index.create_version")
    store.create_collection(version.docs_collection, CollectionSpec(dims=1))
    payload = {DOC_KEY: _SPEC_KEY, "spec": asdict(version)}
    store.upsert(version.docs_collection, [PointWrite(doc_state_id(_SPEC_KEY), _UNIT, payload)])
    store.flush()
    ensure_alias(store, version)


def ensure_alias(store: VectorStore, version: IndexVersion) -> None:
    """Serve ``version`` through the alias if the alias points nowhere yet."""
    if store.get_alias(version.name) is None:
        store.set_alias(version.name, version.collection)


def read_version(store: VectorStore, collection: str) -> IndexVersion | None:
    docs = f"{collection}__docs"
    if docs not in store.collections():
        return None
    found = store.retrieve(docs, [doc_state_id(_SPEC_KEY)])
    payload = next(iter(found.values()), None)
    return IndexVersion(**payload["spec"]) if payload else None


def live_version(store: VectorStore, name: str) -> IndexVersion | None:
    collection = store.get_alias(name)
    return read_version(store, collection) if collection else None


def versions(store: VectorStore, name: str) -> list[IndexVersion]:
    found = []
    for collection in store.collections():
        if collection.startswith(f"{name}__v") and not collection.endswith("__docs"):
            version = read_version(store, collection)
            if version is not None:
                found.append(version)
    return sorted(found, key=lambda v: v.version)


class DocStates:
    """Read and write :class:`DocState` records of one index version."""

    def __init__(self, store: VectorStore, version: IndexVersion) -> None:
        self._store = store
        self._collection = version.docs_collection

    def get(self, keys: Sequence[str]) -> dict[str, DocState]:
        ids = {doc_state_id(k): k for k in keys}
        found = self._store.retrieve(self._collection, list(ids))
        return {ids[i]: _state(p) for i, p in found.items() if i in ids}

    def put(self, states: Mapping[str, DocState]) -> None:
        """Record states, never over a newer recorded version (a fenced-out writer loses)."""
        points = [PointWrite(doc_state_id(key), _UNIT, _record(key, s)) for key, s in states.items()]
        self._store.upsert(self._collection, points, guarded=True)

    def live_count(self, source: str | None = None) -> int:
        filters: dict[str, str] = {"status": "live"}
        if source is not None:
            filters["source"] = source
        return self._store.count(self._collection, filters)

    def live(self, source: str) -> dict[str, int]:
        """doc_id -> indexed version of every live document of ``source``."""
        found = self._store.scroll(self._collection, {"status": "live", "source": source})
        return {str(p["doc_id"]): int(p[VERSION]) for _, p in found if "doc_id" in p}


def _record(key: str, state: DocState) -> dict[str, Any]:
    source, doc_id = split_key(key)
    return {DOC_KEY: key, "source": source, "doc_id": doc_id, "status": _status(state), **asdict(state)}


def _status(state: DocState) -> str:
    # A keyword, not a bool: the embedded engine does not match boolean payload values.
    return "deleted" if state.deleted else "live"


def _state(payload: dict[str, Any]) -> DocState:
    return DocState(
        version=int(payload["version"]),
        content_hash=str(payload["content_hash"]),
        meta_hash=str(payload["meta_hash"]),
        point_ids=tuple(payload["point_ids"]),
        deleted=bool(payload["deleted"]),
    )
