"""Index versions, expressed over the ``VectorStore`` port.

An index version is collection ``<name>__v<N>`` plus a companion ``<name>__v<N>__docs``
that records, per document, the version and chunk point ids the index reflects (and a
tombstone after a deletion; :mod:`pipeline.versions.doc_states`), the version's own spec
(immutable once written) and its lifecycle (when the alias came and went, which version it
replaced, which sources were replayed into it). Keeping this in Qdrant itself, not beside
it, means whatever store holds the points also holds the truth about them. Kafka workers
that cannot reach the store read the same spec from the control topic
(:mod:`pipeline.runtime.registry`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config.settings import IndexSettings, ModelSettings
from pipeline.core.errors import ConfigError
from pipeline.core.events import Matrix, normalize_rows
from pipeline.core.faults import crash_point
from pipeline.core.hashing import doc_state_id
from pipeline.store import CollectionSpec, Datatype, PointWrite, Quantization, VectorStore
from pipeline.store.payload import DOC_KEY

_SPEC_KEY = "__spec__"
_LIFECYCLE_KEY = "__lifecycle__"
#: The vector of every point in a docs collection: one is required, and it is never searched.
DOCS_VECTOR = (1.0,)
#: uint8 storage codes each component x of a unit vector as round(x * 127 / r) + 128, clipped
#: to 1..255, with r = min(1, UINT8_SIGMAS / sqrt(dims)): a component of a d-dimensional unit
#: vector has a spread near 1/sqrt(d), so r leaves room for outliers of 8 times that while
#: keeping 3-4 times the resolution of r = 1 at 384 dimensions.
UINT8_SIGMAS = 8.0


def uint8_scale(dims: int) -> float:
    """Code steps per unit of a component (see :data:`UINT8_SIGMAS`)."""
    return 127 / min(1.0, UINT8_SIGMAS / math.sqrt(dims))


@dataclass(frozen=True)
class IndexVersion:
    """One version of an index: everything that decides what its points are.

    The fields after ``rescore`` came later; a spec stored without them reads back with
    their defaults (empty model, chunking 0 = not recorded, vectors of its own).
    """

    name: str
    version: int
    fingerprint: str
    full_dims: int
    dims: int
    datatype: Datatype
    quantization: Quantization
    oversampling: float
    rescore: bool
    #: The model as configured (a resolved directory, or a bundled name) and the settings
    #: its fingerprint covers, so any process can load the same encoder for this version.
    model: str = ""
    query_prefix: str = ""
    document_prefix: str = ""
    max_seq_length: int | None = None
    #: The chunker the version's points were cut with (0: not recorded).
    chunk_tokens: int = 0
    overlap_tokens: int = 0
    #: The version whose vectors topic feeds this one (0: its own). A rebuild for the same
    #: model with another datatype or quantization reads an existing vectors log: no encoding.
    vectors_from: int = 0
    created_at: float = 0.0

    @property
    def collection(self) -> str:
        return f"{self.name}__v{self.version}"

    @property
    def docs_collection(self) -> str:
        return f"{self.collection}__docs"

    @property
    def label(self) -> str:
        """``name@vN``, as the CLI takes it."""
        return f"{self.name}@v{self.version}"

    @property
    def vectors_version(self) -> int:
        """The version number of the vectors topic this version's sink reads."""
        return self.vectors_from or self.version

    @property
    def spec(self) -> CollectionSpec:
        return CollectionSpec(self.dims, self.datatype, self.quantization)

    def model_settings(self, base: ModelSettings) -> ModelSettings:
        """``base`` (device, token budget: local choices) with this version's model."""
        return base.model_copy(
            update={
                "name": self.model,
                "query_prefix": self.query_prefix,
                "document_prefix": self.document_prefix,
                "max_seq_length": self.max_seq_length,
            }
        )

    def to_storage(self, matrix: Matrix) -> Matrix:
        """Matryoshka truncation + renormalization, then uint8 codes if the datatype says
        so (float16 and the quantization index are Qdrant's to apply)."""
        stored = matrix
        if matrix.shape[1] != self.dims:
            stored = normalize_rows(matrix[:, : self.dims])
        if self.datatype == "uint8":
            scaled = np.rint(stored * uint8_scale(self.dims))
            codes: Matrix = (np.clip(scaled, -127, 127) + 128).astype(np.float32)
            return codes
        return stored

    def similarity(self, score: float) -> float:
        """The store's score as a cosine similarity (higher is better): uint8 collections
        answer a Euclidean distance between codes, and on unit vectors |a - b|^2 = 2 - 2 cos."""
        if self.spec.distance == "euclid":
            return 1.0 - (score / uint8_scale(self.dims)) ** 2 / 2
        return score

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> IndexVersion:
        """A stored spec; keys this build does not know are ignored (a newer writer)."""
        return cls(**_known_fields(cls, raw))

    @classmethod
    def plan(
        cls,
        settings: IndexSettings,
        version: int,
        fingerprint: str,
        full_dims: int,
        *,
        model: ModelSettings | None = None,
        chunking: tuple[int, int] = (0, 0),
        vectors_from: int = 0,
    ) -> IndexVersion:
        """The version ``settings`` describe for a model of ``fingerprint`` and ``full_dims``;
        ``model`` and ``chunking`` (tokens, overlap) are recorded when given."""
        dims = settings.dims or full_dims
        if dims > full_dims:
            raise ConfigError(f"index.dims={dims} exceeds the model's {full_dims} dimensions")
        recorded = {} if model is None else _model_fields(model)
        return cls(
            settings.name, version, fingerprint, full_dims, dims, settings.datatype,
            settings.quantization, settings.oversampling, settings.rescore, **recorded,
            chunk_tokens=chunking[0], overlap_tokens=chunking[1], vectors_from=vectors_from,
            created_at=time.time(),
        )  # fmt: skip


def _model_fields(model: ModelSettings) -> dict[str, Any]:
    return {
        "model": resolved_model_name(model.name),
        "query_prefix": model.query_prefix,
        "document_prefix": model.document_prefix,
        "max_seq_length": model.max_seq_length,
    }


def resolved_model_name(name: str) -> str:
    """A model directory as an absolute path (another process may run elsewhere), else as is."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


def create_version(store: VectorStore, version: IndexVersion) -> None:
    """Create both collections, then record the spec, then point the alias if it points nowhere.

    Every step is idempotent, and the spec is written last among the collection steps: a
    version is "known" (:func:`read_version`) only once it is complete, so a fault at any
    step is retried from that step, and two sinks creating the same version both succeed.
    """
    store.create_collection(version.collection, version.spec)
    crash_point("index.create_version")
    store.create_collection(version.docs_collection, CollectionSpec(dims=1))
    payload = {DOC_KEY: _SPEC_KEY, "spec": version.to_json()}
    store.upsert(version.docs_collection, [PointWrite(doc_state_id(_SPEC_KEY), DOCS_VECTOR, payload)])
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
    return IndexVersion.from_json(payload["spec"]) if payload else None


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


def find_version(store: VectorStore, name: str, number: int) -> IndexVersion | None:
    return read_version(store, f"{name}__v{number}")


def drop_version(store: VectorStore, version: IndexVersion) -> None:
    """Remove both collections; the docs collection (the spec) last, so a drop that dies
    half-way leaves a version that is still known and can be dropped again."""
    store.drop_collection(version.collection)
    store.drop_collection(version.docs_collection)


@dataclass(frozen=True)
class Lifecycle:
    """What happened to a version since it was created (mutable, unlike its spec)."""

    live_since: float | None = None  # when the alias last moved to it
    unaliased_at: float | None = None  # when the alias last moved away from it
    promoted_from: int | None = None  # the version the alias left for it: rollback's target
    backfilled: tuple[str, ...] = ()  # embedded mode: sources replayed into it in full


def read_lifecycle(store: VectorStore, version: IndexVersion) -> Lifecycle:
    found = store.retrieve(version.docs_collection, [doc_state_id(_LIFECYCLE_KEY)])
    payload = next(iter(found.values()), None)
    if payload is None:
        return Lifecycle()
    raw = dict(payload.get("lifecycle") or {})
    raw["backfilled"] = tuple(raw.get("backfilled") or ())
    return Lifecycle(**_known_fields(Lifecycle, raw))


def _known_fields(cls: type, raw: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``raw`` that ``cls`` has fields for (a newer writer may add more)."""
    known = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in raw.items() if k in known}


def write_lifecycle(store: VectorStore, version: IndexVersion, lifecycle: Lifecycle) -> None:
    payload = {DOC_KEY: _LIFECYCLE_KEY, "lifecycle": asdict(lifecycle)}
    store.upsert(version.docs_collection, [PointWrite(doc_state_id(_LIFECYCLE_KEY), DOCS_VECTOR, payload)])
    store.flush()
