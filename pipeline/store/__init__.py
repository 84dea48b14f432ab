"""The ``VectorStore`` port: collections of points, aliases, search.

Adapters: :mod:`pipeline.store.edge` (embedded Qdrant engine on local disk) and
:mod:`pipeline.store.server` (a Qdrant server through ``qdrant-client``). Only they import
Qdrant libraries; they translate its errors into :mod:`pipeline.core.errors` types.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Scalar = str | int | bool
Scrolled = tuple[str, dict[str, Any]]  # a point's id and payload
SCROLL_PAGE = 1000  # points per scroll request

Datatype = Literal["float32", "float16", "uint8"]
Quantization = Literal["none", "int8", "binary", "product"]


@dataclass(frozen=True)
class CollectionSpec:
    """A collection's vectors: size, storage datatype, quantization index.

    ``uint8`` vectors are integer codes 0..255 (the index version encodes them), and the
    collection compares them by Euclidean distance: a shift of every component by the same
    offset leaves distances unchanged, so on unit vectors the ranking is the cosine's, where
    a cosine of shifted codes would not be. ``product`` quantization compresses x16.
    """

    dims: int
    datatype: Datatype = "float32"
    quantization: Quantization = "none"

    @property
    def distance(self) -> Literal["cosine", "euclid"]:
        return "euclid" if self.datatype == "uint8" else "cosine"


@dataclass(frozen=True)
class PointWrite:
    id: str
    vector: Sequence[float]
    payload: dict[str, Any]


@dataclass(frozen=True)
class Sweep:
    """A document's points written at or below ``version``, except ``keep``.

    What a write of that version supersedes: deleting it after writing the current chunks
    leaves exactly the current chunks, whatever earlier (or crashed) attempts wrote, and
    never a point a newer version wrote.
    """

    doc_key: str
    version: int
    keep: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True)
class SearchOptions:
    limit: int = 10
    filters: Mapping[str, Scalar] | None = None
    oversampling: float | None = None
    rescore: bool | None = None


class VectorStore(Protocol):
    def collections(self) -> list[str]: ...

    def create_collection(self, name: str, spec: CollectionSpec) -> None:
        """Create ``name`` if missing (idempotent)."""

    def drop_collection(self, name: str) -> None: ...

    def upsert(self, name: str, points: Sequence[PointWrite], *, guarded: bool = False) -> None:
        """Write points. ``guarded``: a stored point whose payload ``version`` is higher than
        the new point's is left as it is, atomically per point, so a writer that lost its
        partition cannot regress what a newer writer stored."""

    def set_payload(self, name: str, ids: Sequence[str], payload: dict[str, Any]) -> None:
        """Merge ``payload`` into the points ``ids`` (no vector write), guarded like
        :meth:`upsert` by ``payload[VERSION]``."""

    def delete(self, name: str, ids: Sequence[str]) -> None: ...

    def sweep(self, name: str, sweeps: Sequence[Sweep]) -> int:
        """Delete what each sweep selects (by payload, not by remembered ids); returns how many."""

    def retrieve(self, name: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Payloads of the ids that exist."""

    def retrieve_vectors(self, name: str, ids: Sequence[str]) -> dict[str, list[float]]:
        """Stored vectors (in the collection's datatype, as floats) of the ids that exist."""

    def search(self, name: str, vector: Sequence[float], options: SearchOptions) -> list[Hit]: ...

    def count(self, name: str, filters: Mapping[str, Scalar] | None = None) -> int: ...

    def scroll(self, name: str, filters: Mapping[str, Scalar] | None = None) -> list[Scrolled]:
        """Every point (id, payload) matching ``filters``."""

    def get_alias(self, alias: str) -> str | None: ...

    def set_alias(self, alias: str, collection: str) -> None:
        """Point ``alias`` at ``collection`` in one atomic step."""

    def flush(self) -> None:
        """Make every acknowledged write durable before offsets are committed."""

    def close(self) -> None: ...


def scroll_pages(page: Callable[[Any], tuple[Sequence[Any], Any]]) -> list[Scrolled]:
    """Every point of a paged scroll: ``page(offset)`` answers records (each with ``id`` and
    ``payload``) and the next page's offset, None after the last one."""
    found: list[Scrolled] = []
    offset: Any = None
    while True:
        records, offset = page(offset)
        found.extend((str(r.id), dict(r.payload or {})) for r in records)
        if offset is None:
            return found
